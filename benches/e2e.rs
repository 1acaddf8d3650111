//! End to end: mosquitto + the gateway binary + the dakkio stand-in, all on
//! loopback (docs/performance.md, issue 8).
//!
//! Each run starts a private mosquitto (`common::broker`, `testkit::mosquitto`) and an in-process
//! dakkio stand-in (`RecordMode::Full`: every accepted point is kept); each
//! phase below runs the real gateway binary (release when run by `cargo
//! bench`) as a fresh child process on a fresh store, with a generated
//! config in a temp dir: one bucket; uplink to the stand-in with the
//! default batching (`batch_size` 100, `max_batch_age` 5 s; e.g.
//! `DAKKIO_E2E_BATCH_SIZE=100`, `DAKKIO_E2E_MAX_BATCH_AGE=100ms` override
//! them; `DAKKIO_E2E_COMMIT_MAX_DELAY=1s` sets `store.commit_max_delay`,
//! `DAKKIO_E2E_INBOX_READINGS=5000` sets `store.inbox_readings`;
//! `DAKKIO_E2E_GATEWAY_ENV="MALLOC_ARENA_MAX=2 K=V"` adds variables to the
//! gateways' environment only, e.g. an allocator setting or a heap
//! profiler's preload, without them reaching this harness;
//! `DAKKIO_E2E_GATEWAY_BIN=<path>` runs another build of the gateway, e.g.
//! the previous release, against this run's reference);
//! MQTT route `e2e/{device}/{source}` over 8 devices and 4 data
//! sources; store defaults (`synchronous = "full"`). A rumqttc publisher in
//! this process publishes QoS 1 messages `{"n": <unique id>, "pub_us":
//! <publish time, Unix µs>}` with up to 1000 in flight. The phases:
//!
//! 1. **throughput**: N messages (`DAKKIO_E2E_N`, default 200,000) as fast
//!    as the broker takes them. The figure is the points the stand-in had
//!    accepted by the request that brought its count to N − `batch_size`
//!    or more, divided by the time from the first publish to that request
//!    (`RequestRecord::at`): everything but the last partial batch. That
//!    batch (fewer than `batch_size` points: the uplink's batches are not
//!    aligned on N) waits `max_batch_age` (5 s) by design, as it would on
//!    a gateway once its input stops; counting it made the figure measure
//!    the batching timer, not the gateway (25 k against 62 k readings/s
//!    from one run to the next, depending on whether a remainder was left).
//!    Shortening `max_batch_age` for the bench would measure another
//!    configuration, and a stop signal to flush it would measure the
//!    shutdown. The tail is still waited for (every point is checked) and
//!    reported beside: its points and how long they waited after the rest.
//! 2. **latency**: `DAKKIO_E2E_RATE` msg/s (default 1000) for
//!    `DAKKIO_E2E_LATENCY_SECS` (default 20). A point's latency is the
//!    instant the stand-in accepted the request carrying it
//!    (`RequestRecord::at`, logged after reading and validating the body,
//!    just before the 201; found through `AcceptedPoint::request`) minus
//!    its `pub_us` (same clock: the publisher runs in this process); p50,
//!    p99 and max over all of them, and the requests per second it cost.
//! 3. **resources** of each phase's gateway, stopped with SIGTERM once its
//!    queue is empty. A fresh gateway per phase means nothing one phase
//!    left (a checkpoint, pruning) is counted in the other. Over its whole
//!    life, start-up and the final checkpoint at shutdown included, from
//!    `wait4`'s rusage: CPU per reading (user + system) and bytes written
//!    to disk per reading (`ru_oublock` × 512, the same accounting as
//!    `/proc/<pid>/io` `write_bytes`: what reached the block layer — WAL,
//!    checkpoints into the database file). Peak RSS is `VmHWM` from
//!    `/proc/<pid>/status` just before the SIGTERM (not `ru_maxrss`, which
//!    on Linux inherits the forking harness's high-water mark). Beside
//!    them, over the phase: mosquitto's `write_bytes` (its persistence
//!    snapshots, every 10 s) for the end-to-end figure, and the CPU of
//!    mosquitto and of this process (publisher + stand-in). If the
//!    gateway's written bytes are 0 (a filesystem that does not account
//!    them, e.g. tmpfs), the size of its store's files at exit is reported
//!    instead and the table says so.
//!    **Lost** = published ids never accepted upstream; **duplicates** =
//!    accepted copies of an id beyond the first. Any loss fails the bench.
//! 4. **reference**, same run and broker: a bare rumqttc subscriber that only
//!    counts (auto acks) receiving N messages from the same publisher; and
//!    the publisher's own pace in phase 1 (first publish → last PUBACK from
//!    the broker; when it is close to the throughput, the publisher is the
//!    limit, not the gateway).
//!
//! Medians of `DAKKIO_E2E_RUNS` runs (default 3) are printed as one
//! markdown table with the targets. A release run takes about 2 minutes:
//! `cargo bench --bench e2e`. Quick check in debug (the defaults shrink to
//! N = 2000, 1 run, 3 s of latency when not run by `cargo bench`):
//! `cargo test --bench e2e`. `DAKKIO_E2E_LOG=1` echoes the gateway's log.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dakkio_gateway::store;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use testkit::standin::{RecordMode, RequestRecord, Standin};

mod common;
use common::{cpu_us, proc_field, BUCKET, SOURCES};
use testkit::mosquitto::Mosquitto as Broker;

const KEY: &str = "dakkio_w_e2ebenche2ebenche2ebenche2ebench";
const DEVICES: u64 = 8;
/// QoS 1 messages in flight from the publisher (and the request channel).
const PUBLISH_WINDOW: u16 = 1000;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

// ---------------------------------------------------------------- /proc

fn write_bytes(pid: u32) -> u64 {
    proc_field(&format!("/proc/{pid}/io"), "write_bytes:")
}

/// Size of every file in a directory (the store's database, WAL, shm).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The broker's and this process's counters at one instant.
#[derive(Clone, Copy)]
struct Sample {
    broker_cpu_us: u64,
    broker_written: u64,
    /// This process: the publisher and the stand-in.
    harness_cpu_us: u64,
}

impl Sample {
    fn now(broker: &Broker) -> Sample {
        Sample {
            broker_cpu_us: cpu_us(broker.pid()),
            broker_written: write_bytes(broker.pid()),
            harness_cpu_us: cpu_us(std::process::id()),
        }
    }
}

/// A gateway's whole life, from `wait4` once it has exited.
struct Life {
    cpu_us: u64,
    /// Bytes written to the block layer (`ru_oublock` × 512, the same
    /// accounting as `/proc/<pid>/io` `write_bytes`).
    written: u64,
    /// `VmHWM` just before SIGTERM.
    peak_rss_kib: u64,
    /// Size of the store's files at exit (the fallback when `written` is 0).
    store_bytes: u64,
}

/// Per reading, for one phase.
struct Cost {
    cpu_us: f64,
    broker_cpu_us: f64,
    harness_cpu_us: f64,
    gw_bytes: f64,
    broker_bytes: f64,
    /// True when `write_bytes` was 0 and the store's file size stands in.
    file_growth: bool,
    peak_rss_mib: f64,
}

impl Cost {
    fn of(life: &Life, before: &Sample, after: &Sample, n: u64) -> Cost {
        let n = n.max(1) as f64;
        let file_growth = life.written == 0;
        let gw = if file_growth {
            life.store_bytes
        } else {
            life.written
        };
        Cost {
            cpu_us: life.cpu_us as f64 / n,
            broker_cpu_us: (after.broker_cpu_us - before.broker_cpu_us) as f64 / n,
            harness_cpu_us: (after.harness_cpu_us - before.harness_cpu_us) as f64 / n,
            gw_bytes: gw as f64 / n,
            broker_bytes: (after.broker_written - before.broker_written) as f64 / n,
            file_growth,
            peak_rss_mib: life.peak_rss_kib as f64 / 1024.0,
        }
    }
}

// ---------------------------------------------------------------- gateway

/// The gateway binary: this build's, or `DAKKIO_E2E_GATEWAY_BIN`.
fn gateway_bin() -> PathBuf {
    std::env::var_os("DAKKIO_E2E_GATEWAY_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_dakkio-gateway").into(),
        PathBuf::from,
    )
}

/// `DAKKIO_E2E_GATEWAY_ENV`: `K=V` pairs separated by whitespace, for the
/// gateway's environment only.
fn gateway_env() -> Vec<(String, String)> {
    let v = std::env::var("DAKKIO_E2E_GATEWAY_ENV").unwrap_or_default();
    v.split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("DAKKIO_E2E_GATEWAY_ENV: {kv:?} is not K=V"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The gateway binary in a child process, its stderr collected.
struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Gateway {
    fn start(id: &str, broker: u16, standin: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut batch = String::new();
        if let Ok(v) = std::env::var("DAKKIO_E2E_BATCH_SIZE") {
            batch += &format!("batch_size = {v}\n");
        }
        if let Ok(v) = std::env::var("DAKKIO_E2E_MAX_BATCH_AGE") {
            batch += &format!("max_batch_age = \"{v}\"\n");
        }
        let mut store = String::new();
        if let Ok(v) = std::env::var("DAKKIO_E2E_COMMIT_MAX_DELAY") {
            store += &format!("commit_max_delay = \"{v}\"\n");
        }
        if let Ok(v) = std::env::var("DAKKIO_E2E_INBOX_READINGS") {
            store += &format!("inbox_readings = {v}\n");
        }
        if !store.is_empty() {
            store = format!("[store]\n{store}");
        }
        let config = format!(
            r#"[gateway]
id = "{id}"
data_dir = "{data}"
[[buckets]]
id = "{BUCKET}"
name = "e2e"
write_key_env = "DAKKIO_E2E_WRITE_KEY"
{store}[uplink]
url = "{standin}"
{batch}[api]
listen = "127.0.0.1:0"
[mqtt]
host = "127.0.0.1"
port = {broker}
[[mqtt.routes]]
topic = "e2e/{{device}}/{{source}}"
bucket = "{BUCKET}"
data_source = "{{source}}"
metadata = {{ deviceId = "{{device}}" }}
"#,
            data = data_dir.display()
        );
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(gateway_bin())
            // A synchronised clock whatever the kernel says (see src/clock/).
            .env("DAKKIO_GATEWAY_TEST_CLOCK_FILE", "synced")
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn,dakkio_gateway=info")
            .env("DAKKIO_E2E_WRITE_KEY", KEY)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .envs(gateway_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway binary");
        let stderr = child.stderr.take().unwrap();
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = log.clone();
        let echo = std::env::var_os("DAKKIO_E2E_LOG").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("gateway: {line}");
                }
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
            sink.0.lock().unwrap().push("<exited>".into());
            sink.1.notify_all();
        });
        let g = Gateway { child, dir, log };
        g.wait_for_log("mqtt subscriptions active", Duration::from_secs(60));
        g
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.0.lock().unwrap();
        loop {
            if lines.iter().any(|l| l.contains(needle)) {
                return;
            }
            let now = Instant::now();
            if now >= deadline || lines.last().is_some_and(|l| l == "<exited>") {
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                panic!("the gateway never logged {needle:?}; its last lines:\n{tail}");
            }
            lines = self.log.1.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Until the store's queue is empty: every delivery mark committed (a
    /// bench, not a test: polling with a deadline is fine here).
    fn wait_delivered(&self) {
        common::wait_delivered(&self.data_dir().join(store::FILE_NAME), BUCKET);
    }

    /// SIGTERM, wait for a clean exit (the store closed, its WAL
    /// checkpointed) and return what the process used over its life.
    fn stop(self) -> Life {
        let pid = self.pid() as libc::pid_t;
        // Not `ru_maxrss`: Linux carries the forking process's high-water
        // mark over the exec into it (this harness, holding every accepted
        // point, would be measured).
        let peak_rss_kib = proc_field(&format!("/proc/{pid}/status"), "VmHWM:");
        // SAFETY: kill with a child's pid and a valid signal.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid; wait4 fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: our own child; the pointers are to live locals.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid {
                break;
            }
            assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
            assert!(
                Instant::now() < deadline,
                "the gateway did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the gateway did not exit cleanly (wait status {status:#x})"
        );
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Life {
            cpu_us: tv(ru.ru_utime) + tv(ru.ru_stime),
            written: ru.ru_oublock as u64 * 512,
            peak_rss_kib,
            store_bytes: dir_bytes(&self.data_dir()),
        }
    }
}

impl Drop for Gateway {
    /// A bench that panics must not leave a gateway running. (After `stop`
    /// the child is reaped already: `try_wait` fails and nothing happens.)
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

// ---------------------------------------------------------------- publisher

/// Publish ids `first..first + n` as QoS 1 to `prefix/dev<d>/<source>`,
/// as fast as possible (`rate` None) or at `rate` msg/s. Returns the
/// instant of the first publish and of the last PUBACK.
async fn publish(
    port: u16,
    prefix: &str,
    first: u64,
    n: u64,
    rate: Option<f64>,
) -> (Instant, Instant) {
    let mut o = MqttOptions::new(format!("e2e-pub-{prefix}-{first}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(PUBLISH_WINDOW);
    let (client, mut ev) = AsyncClient::new(o, PUBLISH_WINDOW as usize);
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let acks = tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        let mut got = 0;
        while got < n {
            match ev.poll().await.expect("publisher connection") {
                Event::Incoming(Packet::ConnAck(_)) => {
                    if let Some(tx) = connected_tx.take() {
                        tx.send(()).ok();
                    }
                }
                Event::Incoming(Packet::PubAck(_)) => got += 1,
                _ => {}
            }
        }
        Instant::now()
    });
    // The clock starts once connected.
    connected.await.expect("publisher connected");
    let started = Instant::now();
    let topics: Vec<String> = (0..DEVICES * SOURCES.len() as u64)
        .map(|k| {
            format!(
                "{prefix}/dev{}/{}",
                k % DEVICES,
                SOURCES[(k / DEVICES) as usize]
            )
        })
        .collect();
    for i in 0..n {
        if let Some(rate) = rate {
            let at = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let id = first + i;
        let payload = format!(r#"{{"n":{id},"pub_us":{}}}"#, unix_us(SystemTime::now()));
        client
            .publish(
                &topics[(id % topics.len() as u64) as usize],
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }
    let last_ack = acks.await.unwrap();
    client.disconnect().await.ok();
    (started, last_ack)
}

/// The reference: a bare rumqttc subscriber that only counts (auto acks),
/// fed by the same publisher on the same broker. Messages/s from the first
/// publish to the last message received.
async fn reference(port: u16, n: u64) -> f64 {
    let mut o = MqttOptions::new("e2e-ref", "127.0.0.1", port);
    o.set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 1000);
    client.subscribe("ref/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.expect("reference subscriber") {
            break;
        }
    }
    let counter = tokio::spawn(async move {
        let mut got = 0;
        let mut last = Instant::now();
        while got < n {
            if let Event::Incoming(Packet::Publish(_)) =
                ev.poll().await.expect("reference subscriber")
            {
                got += 1;
                last = Instant::now();
            }
        }
        last
    });
    let (started, _) = publish(port, "ref", 0, n, None).await;
    let last = counter.await.unwrap();
    client.disconnect().await.ok();
    n as f64 / (last - started).as_secs_f64()
}

// ---------------------------------------------------------------- one run

struct Run {
    /// Readings/s up to the last partial batch (module doc, phase 1).
    rate: f64,
    /// Points of the last partial batch and how long after the rest they
    /// were accepted (`max_batch_age` when a remainder was left).
    tail_points: u64,
    tail_s: f64,
    publisher_rate: f64,
    reference_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Requests upstream per second in the paced phase (the API-call cost).
    calls_per_s: f64,
    fast: Cost,
    paced: Cost,
    lost: u64,
    duplicates: u64,
    first_lost: Vec<u64>,
}

/// The uplink's `batch_size` the gateways run with.
fn batch_size() -> u64 {
    env_u64("DAKKIO_E2E_BATCH_SIZE", 100)
}

/// Phase 1 up to its last partial batch (module doc).
struct Body {
    /// Points accepted by the request that brought the count to
    /// `n - batch` or more.
    points: u64,
    /// From the first publish to that request.
    secs: f64,
    /// From that request to the last one.
    tail_secs: f64,
}

impl Body {
    fn of(requests: &[RequestRecord], n: u64, batch: u64, t0: SystemTime) -> Body {
        let since = |at: SystemTime| at.duration_since(t0).unwrap_or_default().as_secs_f64();
        let accepted = requests
            .iter()
            .filter(|r| r.status().is_some_and(|s| (200..300).contains(&s)));
        let mut points = 0u64;
        let mut body = None;
        let mut last = 0.0;
        for r in accepted {
            points += r.points as u64;
            last = since(r.at);
            if body.is_none() && points >= n.saturating_sub(batch).max(1) {
                body = Some((points, last));
            }
        }
        let (points, secs) = body.expect("the stand-in accepted every point");
        Body {
            points,
            secs,
            tail_secs: last - secs,
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn one_run(rt: &tokio::runtime::Runtime, n: u64, rate: f64, secs: u64) -> Run {
    let broker = common::broker();
    let standin = rt.block_on(async {
        Standin::builder()
            .bucket(BUCKET)
            .write_key(BUCKET, KEY)
            .quota(u64::MAX / 2)
            .record(RecordMode::Full)
            .start()
            .await
            .unwrap()
    });
    let m = (rate * secs as f64).round() as u64;

    // 1. Throughput, on a fresh gateway and store.
    let gw = Gateway::start("e2e-gw-fast", broker.port, &standin.url());
    let before = Sample::now(&broker);
    let (t0, acked) = rt.block_on(publish(broker.port, "e2e", 0, n, None));
    // The first publish on the stand-in's clock (`RequestRecord::at`).
    let t0_wall = SystemTime::now() - t0.elapsed();
    let all_in = rt.block_on(standin.wait_for_accepted(n, Duration::from_secs(600)));
    assert!(all_in, "the stand-in did not get {n} points within 600 s");
    let body = Body::of(&standin.requests(), n, batch_size(), t0_wall);
    gw.wait_delivered();
    let after = Sample::now(&broker);
    let fast = Cost::of(&gw.stop(), &before, &after, n);

    // 2. Latency at a fixed rate, on another fresh gateway and store (so
    // that no checkpoint or pruning left by phase 1 is counted here).
    let gw = Gateway::start("e2e-gw-paced", broker.port, &standin.url());
    let requests_before = standin.request_count();
    let before = Sample::now(&broker);
    let (paced_start, _) = rt.block_on(publish(broker.port, "e2e", n, m, Some(rate)));
    let all_in = rt.block_on(standin.wait_for_accepted(n + m, Duration::from_secs(120 + secs)));
    assert!(all_in, "the stand-in did not get the paced points in time");
    gw.wait_delivered();
    let after = Sample::now(&broker);
    let calls_per_s =
        (standin.request_count() - requests_before) as f64 / paced_start.elapsed().as_secs_f64();
    let paced = Cost::of(&gw.stop(), &before, &after, m);

    // 3. Ids and latencies, from every point the stand-in accepted.
    let requests = standin.requests();
    let mut seen = vec![0u32; (n + m) as usize];
    let mut latencies = Vec::with_capacity(m as usize);
    let mut strays = 0u64;
    for p in standin.all_accepted_points() {
        let id = p.values.get("n").and_then(|v| v.as_f64());
        let Some(id) = id.filter(|&v| v >= 0.0 && v < (n + m) as f64) else {
            strays += 1;
            continue;
        };
        let id = id as u64;
        seen[id as usize] += 1;
        if id >= n && seen[id as usize] == 1 {
            let published = p
                .values
                .get("pub_us")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0) as i64;
            let arrived = unix_us(requests[(p.request - 1) as usize].at);
            latencies.push((arrived - published) as f64 / 1000.0);
        }
    }
    assert_eq!(strays, 0, "points without a known id reached the stand-in");
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let lost_ids: Vec<u64> = (0..n + m).filter(|&i| seen[i as usize] == 0).collect();
    let duplicates = seen.iter().map(|&c| c.saturating_sub(1) as u64).sum();

    // 4. The reference on the same broker.
    let reference_rate = rt.block_on(reference(broker.port, n));

    Run {
        rate: body.points as f64 / body.secs,
        tail_points: n - body.points,
        tail_s: body.tail_secs,
        publisher_rate: n as f64 / (acked - t0).as_secs_f64(),
        reference_rate,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        calls_per_s,
        fast,
        paced,
        lost: lost_ids.len() as u64,
        duplicates,
        first_lost: lost_ids.into_iter().take(10).collect(),
    }
}

// ---------------------------------------------------------------- report

fn main() {
    // `cargo bench` passes `--bench`; anything else (`cargo test --bench
    // e2e`, a debug build) gets small defaults.
    let full = std::env::args().any(|a| a == "--bench");
    let n = env_u64("DAKKIO_E2E_N", if full { 200_000 } else { 2000 }).max(1);
    let runs = env_u64("DAKKIO_E2E_RUNS", if full { 3 } else { 1 }).max(1);
    let rate = env_u64("DAKKIO_E2E_RATE", 1000).max(1) as f64;
    let secs = env_u64("DAKKIO_E2E_LATENCY_SECS", if full { 20 } else { 3 }).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let batching = format!(
        "uplink batch_size {}, max_batch_age {}",
        std::env::var("DAKKIO_E2E_BATCH_SIZE").unwrap_or_else(|_| "100 (default)".into()),
        std::env::var("DAKKIO_E2E_MAX_BATCH_AGE").unwrap_or_else(|_| "5s (default)".into()),
    );
    println!(
        "e2e: {n} messages as fast as possible, then {rate:.0} msg/s for {secs} s; {runs} run(s); \
         {batching}; gateway {}",
        gateway_bin().display()
    );
    let mut all = Vec::new();
    for run in 1..=runs {
        let r = one_run(&rt, n, rate, secs);
        println!(
            "run {run}: {:.0} readings/s end to end (then {} points of a last partial batch {:.1} s later; \
             publisher {:.0} msg/s to the last PUBACK, bare subscriber {:.0} msg/s); latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms ({:.1} requests/s \
             upstream); peak RSS {:.1} MiB fast, {:.1} paced; CPU µs/reading gateway {:.1} fast {:.1} paced, broker \
             {:.1} / {:.1}, harness {:.1} / {:.1}; written B/reading gateway {:.0} fast {:.0} paced, \
             broker {:.0} / {:.0}{}; lost {} duplicates {}",
            r.rate,
            r.tail_points,
            r.tail_s,
            r.publisher_rate,
            r.reference_rate,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.calls_per_s,
            r.fast.peak_rss_mib,
            r.paced.peak_rss_mib,
            r.fast.cpu_us,
            r.paced.cpu_us,
            r.fast.broker_cpu_us,
            r.paced.broker_cpu_us,
            r.fast.harness_cpu_us,
            r.paced.harness_cpu_us,
            r.fast.gw_bytes,
            r.paced.gw_bytes,
            r.fast.broker_bytes,
            r.paced.broker_bytes,
            if r.fast.file_growth || r.paced.file_growth {
                " (gateway: store file growth)"
            } else {
                ""
            },
            r.lost,
            r.duplicates
        );
        all.push(r);
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
    let lost: u64 = all.iter().map(|r| r.lost).sum();
    let duplicates: u64 = all.iter().map(|r| r.duplicates).sum();
    let growth = all
        .iter()
        .any(|r| r.fast.file_growth || r.paced.file_growth);
    let disk = if growth {
        "gateway: size of its store's files at exit, write_bytes was 0 on this filesystem"
    } else {
        "write_bytes accounting; the gateway over its life, start and final checkpoint included"
    };
    let rows = [
        (
            "throughput, first publish → stand-in, up to the last partial batch (which waits \
             max_batch_age)"
                .to_string(),
            format!(
                "**{:.0} readings/s** (ratio to the reference {:.2}; tail: {} points, {:.1} s later)",
                med(&|r| r.rate),
                med(&|r| r.rate / r.reference_rate),
                all.iter().map(|r| r.tail_points).max().unwrap_or(0),
                med(&|r| r.tail_s)
            ),
            format!(
                "bare rumqttc subscriber, same publisher and broker: {:.0} msg/s; publisher's \
                 pace in the same phase (first publish → last PUBACK): {:.0} msg/s",
                med(&|r| r.reference_rate),
                med(&|r| r.publisher_rate)
            ),
            "≥ 40,000/s",
        ),
        (
            format!("latency publish → stand-in at {rate:.0} msg/s, {batching}"),
            format!(
                "p50 {:.0} ms, **p99 {:.0} ms**, max {:.0} ms ({:.1} requests/s upstream)",
                med(&|r| r.p50_ms),
                med(&|r| r.p99_ms),
                med(&|r| r.max_ms),
                med(&|r| r.calls_per_s)
            ),
            "—".to_string(),
            "p99 ≤ 250 ms",
        ),
        (
            "gateway peak RSS (VmHWM at the end of the phase)".to_string(),
            format!(
                "**{:.1} MiB** at full speed, {:.1} MiB at {rate:.0} msg/s",
                med(&|r| r.fast.peak_rss_mib),
                med(&|r| r.paced.peak_rss_mib)
            ),
            "—".to_string(),
            "≤ 40 MiB",
        ),
        (
            "CPU per reading (utime + stime)".to_string(),
            format!(
                "gateway **{:.1} µs** at full speed, {:.1} µs at {rate:.0} msg/s",
                med(&|r| r.fast.cpu_us),
                med(&|r| r.paced.cpu_us)
            ),
            format!(
                "mosquitto {:.1} / {:.1} µs; this harness (publisher + stand-in) {:.1} / {:.1} µs",
                med(&|r| r.fast.broker_cpu_us),
                med(&|r| r.paced.broker_cpu_us),
                med(&|r| r.fast.harness_cpu_us),
                med(&|r| r.paced.harness_cpu_us)
            ),
            "—",
        ),
        (
            format!("bytes written to disk per reading ({disk}), gateway + broker"),
            format!(
                "**{:.0} B** at full speed ({:.0} + {:.0}), {:.0} B at {rate:.0} msg/s ({:.0} + {:.0})",
                med(&|r| r.fast.gw_bytes + r.fast.broker_bytes),
                med(&|r| r.fast.gw_bytes),
                med(&|r| r.fast.broker_bytes),
                med(&|r| r.paced.gw_bytes + r.paced.broker_bytes),
                med(&|r| r.paced.gw_bytes),
                med(&|r| r.paced.broker_bytes)
            ),
            "—".to_string(),
            "≤ 400 B",
        ),
        (
            "readings lost / duplicated upstream (all runs, by publisher id)".to_string(),
            format!("**{lost}** / {duplicates}"),
            "—".to_string(),
            "0 / —",
        ),
    ];
    println!();
    println!(
        "| end to end: {n} msgs, then {rate:.0} msg/s for {secs} s; median of {runs} | figure | \
         reference in the same run | target |"
    );
    println!("|---|---|---|---|");
    for (what, figure, reference, target) in rows {
        println!("| {what} | {figure} | {reference} | {target} |");
    }
    if lost > 0 {
        let first: Vec<_> = all.iter().flat_map(|r| r.first_lost.iter()).collect();
        eprintln!("READINGS LOST: {lost} (first ids: {first:?})");
        std::process::exit(1);
    }
}
