//! SD-card wear (issue 15): what the gateway writes to its disk per reading
//! at everyday rates, how often it syncs, and what that costs in latency.
//!
//! Each measurement starts a private mosquitto (`common::broker`: the
//! operator manual's broker settings, `max_inflight_messages` 2000), the
//! dakkio stand-in (`RecordMode::Full`) and the gateway binary on a fresh
//! store with the **default config** (one bucket, MQTT route
//! `wear/{device}/{source}` over 8 devices × 4 data sources; uplink and
//! store defaults). When `strace` is installed the gateway runs under
//! `strace -f -ttt --seccomp-bpf -e trace=fsync,fdatasync` (only those two
//! calls stop the process, so the cost is per sync, not per syscall). A
//! rumqttc publisher in this process then publishes QoS 1 messages
//! `{"n": <id>, "pub_us": <publish time>}` at a fixed rate for
//! `DAKKIO_WEAR_SECS` seconds, round-robin over the 32 topics.
//!
//! Before the measured window, the bench publishes one message per topic
//! (the data sources are made: a one-time cost) and then, when the window
//! holds fewer readings than a move (`store.inbox_readings`, 20,000), as
//! many more as make the inbox nearly full at the stop, as fast as they go;
//! it waits for their delivery and for the first maintenance pass (10 s
//! after start, which checkpoints the sources' creation). So the window is
//! steady running, and the stop moves a full-size inbox, as steady running
//! does every 20,000 readings.
//!
//! Figures, per rate:
//! - **bytes per reading, steady**: the gateway's `write_bytes` from
//!   `/proc/<pid>/io` (what reached the block layer: journal, WAL,
//!   checkpoints, database file). When the stop moves a full-size inbox
//!   (20 msg/s): the window's bytes (first publish until every reading is
//!   delivered and marked) per window reading, plus the stop's bytes (the
//!   move and its checkpoint) per reading moved — each reading's share of
//!   a move. When the window runs its own moves (1000 msg/s): window plus
//!   stop bytes, per window reading. × rate × 86,400 gives **bytes per
//!   day**. The window's own figure is shown too.
//! - **fsyncs/s**: `fsync` + `fdatasync` calls (strace, with their times)
//!   in the window per second, plus the stop's spread the same way as its
//!   bytes (start-up is not counted).
//! - **MQTT ack p99**: a message's acknowledgement waits for its commit, and
//!   the commit is what this bench can see from outside: a thread scrapes
//!   the gateway's `dakkio_readings_accepted_total{source="mqtt"}` (counted
//!   when a commit — a journal sync or a transaction — is reported) from
//!   `/metrics` every 5 ms, and message `i` (one publisher, one connection,
//!   so the gateway receives and commits in publish order) counts as
//!   acknowledged at the first scrape that finds more than `i`. Add up to
//!   5 ms of polling granularity; the PUBACK itself follows the commit at
//!   once. (The reference binary is scraped the same way.)
//! - **publish → accepted upstream p99**: the instant the stand-in accepted
//!   the request carrying a point minus the point's `pub_us`.
//!
//! A last phase measures **ingest with mosquitto's default window**
//! (`max_inflight_messages 20`): `DAKKIO_WEAR_WINDOW_N` messages (default
//! 20,000) published as fast as the broker takes them; messages/s from the
//! first publish until the ledger has accepted them all.
//!
//! `DAKKIO_WEAR_REFERENCE=<path to another gateway binary>` measures that
//! binary too, before the current one in every run, on the same broker
//! settings and machine: the before/after table of docs/performance.md.
//! Medians of `DAKKIO_WEAR_RUNS` runs (default 3). Rates with
//! `DAKKIO_WEAR_RATES` (default `20,1000`). `cargo bench --bench wear`
//! (release); `cargo test --bench wear` is a quick debug check (3 s, one
//! run). `DAKKIO_WEAR_LOG=1` echoes the gateway's log (`DAKKIO_WEAR_RUST_LOG`
//! sets its filter);
//! `DAKKIO_WEAR_TRACE=<dir>` keeps each run's strace there, with every sync
//! and write, its time and its file (where the bytes go).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dakkio_gateway::store;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use testkit::mosquitto::{Mosquitto, Settings};
use testkit::standin::{RecordMode, Standin};

mod common;
use common::{proc_field, BUCKET, SOURCES};

const KEY: &str = "dakkio_w_wearbenchwearbenchwearbenchwear";
const DEVICES: u64 = 8;

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
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

fn strace_available() -> bool {
    std::env::var("DAKKIO_WEAR_STRACE").as_deref() != Ok("0")
        && Command::new("strace")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------- gateway

/// The gateway binary in a child process (under strace when available).
struct Gateway {
    child: Child,
    /// The gateway's own pid (the child is strace when traced).
    pid: u32,
    dir: tempfile::TempDir,
    strace_out: Option<PathBuf>,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Gateway {
    fn start(binary: &Path, broker: u16, standin: &str, traced: bool) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let config = format!(
            r#"[gateway]
id = "wear-gw"
data_dir = "{data}"
[[buckets]]
id = "{BUCKET}"
name = "wear"
write_key_env = "DAKKIO_WEAR_WRITE_KEY"
[uplink]
url = "{standin}"
[api]
listen = "127.0.0.1:0"
metrics_auth = "none"
[mqtt]
host = "127.0.0.1"
port = {broker}
[[mqtt.routes]]
topic = "wear/{{device}}/{{source}}"
bucket = "{BUCKET}"
data_source = "{{source}}"
metadata = {{ deviceId = "{{device}}" }}
"#,
            data = data_dir.display()
        );
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        let strace_out = traced.then(|| dir.path().join("strace.txt"));
        let mut cmd = match &strace_out {
            Some(out) => {
                let mut c = Command::new("strace");
                // Every sync with its Unix time (the window's are counted);
                // DAKKIO_WEAR_TRACE=<dir>: also every write, with its file,
                // kept there (where the bytes go).
                let trace = std::env::var_os("DAKKIO_WEAR_TRACE").is_some();
                c.args(["-f", "-ttt", "--seccomp-bpf", "-e"]);
                c.arg(if trace {
                    "trace=fsync,fdatasync,pwrite64,write"
                } else {
                    "trace=fsync,fdatasync"
                });
                if trace {
                    c.arg("-y");
                }
                c.arg("-o").arg(out).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let mut child = cmd
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("DAKKIO_WEAR_RUST_LOG")
                    .unwrap_or_else(|_| "warn,dakkio_gateway=info".into()),
            )
            .env("DAKKIO_WEAR_WRITE_KEY", KEY)
            // This machine's kernel may report its clock unsynchronised:
            // receive-time readings would wait for it (clock trust).
            .env("DAKKIO_GATEWAY_TEST_CLOCK_FILE", "synced")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway binary");
        let stderr = child.stderr.take().unwrap();
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = log.clone();
        let echo = std::env::var_os("DAKKIO_WEAR_LOG").is_some();
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
        let pid = if traced {
            traced_child(child.id(), binary)
        } else {
            child.id()
        };
        let g = Gateway {
            child,
            pid,
            dir,
            strace_out,
            log,
        };
        g.wait_for_log("mqtt subscriptions active", Duration::from_secs(60));
        g.wait_for_log("local API listening", Duration::from_secs(60));
        g
    }

    /// The local API's address, from its start-up line.
    fn api(&self) -> String {
        let lines = self.log.0.lock().unwrap();
        lines
            .iter()
            .find_map(|l| {
                let rest = l.split("local API listening addr=").nth(1)?;
                Some(rest.split_whitespace().next()?.to_owned())
            })
            .expect("the gateway logged its API address")
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("data").join(store::FILE_NAME)
    }

    fn write_bytes(&self) -> u64 {
        proc_field(&format!("/proc/{}/io", self.pid), "write_bytes:")
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

    /// Until the store's queue is empty (a bench: polling is fine here).
    fn wait_delivered(&self) {
        common::wait_delivered(&self.db(), BUCKET);
    }

    /// SIGTERM, wait for a clean exit; the Unix times (s) of the syncs
    /// strace saw.
    /// Also the last `write_bytes` seen before the gateway exited (read
    /// every millisecond while it stops: its stop moves the inbox into the
    /// database and checkpoints, which steady running would do later).
    fn stop(mut self) -> (Option<Vec<f64>>, u64) {
        // SAFETY: kill with our gateway's pid and a valid signal.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last_written = self.write_bytes();
        let status = loop {
            let w = self.write_bytes();
            if w > 0 {
                last_written = last_written.max(w);
            }
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not stop within 60 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(
            status.success(),
            "the gateway did not exit cleanly: {status}"
        );
        if let (Some(out), Some(dir)) = (&self.strace_out, std::env::var_os("DAKKIO_WEAR_TRACE")) {
            let n = std::fs::read_dir(&dir).map_or(0, |d| d.count());
            let _ = std::fs::copy(out, Path::new(&dir).join(format!("trace-{n}.txt")));
        }
        // `<pid> <unix time> fdatasync(14) = 0` (a call another thread
        // interrupted ends `<unfinished ...>`; its `resumed` line is not
        // another call).
        let syncs = self
            .strace_out
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|out| {
                out.lines()
                    .filter_map(|l| {
                        let mut f = l.split_whitespace();
                        let (_pid, at, call) = (f.next()?, f.next()?, f.next()?);
                        (call.starts_with("fsync(") || call.starts_with("fdatasync("))
                            .then(|| at.parse::<f64>().ok())?
                    })
                    .collect()
            });
        (syncs, last_written)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// The pid of strace's traced child: the child running `binary`. (strace
/// forks short-lived children of its own at start to probe the kernel's
/// ptrace and seccomp features; taking the first child seen sent the
/// SIGTERM to one of those now and then, and the gateway never stopped.)
fn traced_child(strace: u32, binary: &Path) -> u32 {
    let want = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_owned());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap_or_default();
        for pid in children.split_whitespace() {
            if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == want) {
                return pid.parse().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "strace never started the gateway"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls the gateway's count of acknowledged readings
/// (`dakkio_readings_accepted_total{source="mqtt"}` on `/metrics`, counted
/// once their commit is reported: a journal sync or a transaction) every
/// 5 ms and records the instant each new count was first seen. (The
/// ledger's `accepted` in the database moves only when the inbox is moved.)
struct AcceptedWatch {
    stop: Arc<AtomicBool>,
    /// The last count seen.
    last: Arc<AtomicU64>,
    join: std::thread::JoinHandle<Vec<(u64, Instant)>>,
}

/// The counter's value in one scrape of `/metrics` at `addr`.
fn scrape_accepted(addr: &str) -> Option<u64> {
    scrape(addr, "dakkio_readings_accepted_total{", "source=\"mqtt\"").map(|v| v as u64)
}

/// The first sample in one scrape of `/metrics` at `addr` whose line starts
/// with `prefix` and contains `label`.
fn scrape(addr: &str, prefix: &str, label: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(prefix) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// Why the gateway's groups committed: `dakkio_store_group_commits_total`
/// per `reason`, and who hurried them (`dakkio_store_hurries_total`, as
/// `by <who>`), in one scrape (empty for a build without the counters).
fn scrape_commit_reasons(addr: &str) -> Vec<(String, f64)> {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return Vec::new();
    };
    let _ = s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes());
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter_map(|l| {
            let (reason, value) =
                if let Some(r) = l.strip_prefix("dakkio_store_group_commits_total{reason=\"") {
                    let (reason, value) = r.split_once("\"} ")?;
                    (reason.to_owned(), value)
                } else {
                    let r = l.strip_prefix("dakkio_store_hurries_total{by=\"")?;
                    let (by, value) = r.split_once("\"} ")?;
                    (format!("by {by}"), value)
                };
            Some((reason, value.trim().parse().ok()?))
        })
        .collect()
}

/// `after - before` per reason, as `reason n, …` (largest first).
fn reasons_delta(before: &[(String, f64)], after: &[(String, f64)]) -> String {
    let mut d: Vec<(String, f64)> = after
        .iter()
        .map(|(r, v)| {
            let b = before.iter().find(|(k, _)| k == r).map_or(0.0, |(_, v)| *v);
            (r.clone(), v - b)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    d.sort_by(|a, b| b.1.total_cmp(&a.1));
    d.iter()
        .map(|(r, v)| format!("{r} {v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl AcceptedWatch {
    fn start(api: String) -> AcceptedWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let last_seen = Arc::new(AtomicU64::new(0));
        let last_shared = last_seen.clone();
        let join = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut last = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let n = scrape_accepted(&api).unwrap_or(last);
                if n > last {
                    last = n;
                    seen.push((last, Instant::now()));
                    last_shared.store(last, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        AcceptedWatch {
            stop,
            last: last_seen,
            join,
        }
    }

    fn finish(self) -> Vec<(u64, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        self.join.join().unwrap()
    }
}

// ---------------------------------------------------------------- publisher

/// Publish ids `0..n` as QoS 1 to `wear/dev<d>/<source>`, at `rate` msg/s
/// or as fast as possible, as `{"<field>": id, "pub_us": …}` (`n` for the
/// measured messages). Returns each id's publish instant.
async fn publish(port: u16, n: u64, rate: Option<f64>, field: &str) -> Vec<Instant> {
    let window = 1000;
    let mut o = MqttOptions::new(format!("wear-pub-{field}-{n}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(window);
    let (client, mut ev) = AsyncClient::new(o, window as usize);
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
    });
    connected.await.expect("publisher connected");
    let topics: Vec<String> = (0..DEVICES * SOURCES.len() as u64)
        .map(|k| {
            format!(
                "wear/dev{}/{}",
                k % DEVICES,
                SOURCES[(k / DEVICES) as usize]
            )
        })
        .collect();
    let started = Instant::now();
    let mut at = Vec::with_capacity(n as usize);
    for id in 0..n {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(id as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let payload = format!(
            r#"{{"{field}":{id},"pub_us":{}}}"#,
            unix_us(SystemTime::now())
        );
        at.push(Instant::now());
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
    acks.await.unwrap();
    client.disconnect().await.ok();
    at
}

// ---------------------------------------------------------------- phases

struct Figures {
    /// Steady running: the window's bytes per reading plus each reading's
    /// share of a full-size move (see the module doc).
    bytes_steady: f64,
    /// The window's own bytes per reading (journal, marks, what the
    /// window's moves wrote).
    bytes_window: f64,
    /// Syncs per second of steady running, the same way.
    fsyncs_per_s: f64,
    ack_p99_ms: f64,
    upstream_p99_ms: f64,
    /// The window's group commits by reason (`dakkio_store_group_commits_total`).
    commits: String,
}

/// `store.inbox_readings`' default: a move is due at this many readings.
const INBOX_READINGS: u64 = 20_000;
/// Messages before the window: one per topic (the data sources are made).
const WARM_UP: u64 = 32;

fn paced(rt: &tokio::runtime::Runtime, binary: &Path, rate: f64, secs: u64) -> Figures {
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
    let n = (rate * secs as f64).round().max(1.0) as u64;
    let gw = Gateway::start(binary, broker.port, &standin.url(), strace_available());
    let gw_started = Instant::now();
    // Before the window: a reading per topic, then as many as make the
    // stop's move a full-size one (fewer than a move's worth in all, so
    // that none runs before the stop), as fast as they go.
    let prefill = INBOX_READINGS.saturating_sub(n + WARM_UP + 2_000);
    let before = WARM_UP + prefill;
    rt.block_on(publish(broker.port, before, None, "w"));
    assert!(
        rt.block_on(standin.wait_for_accepted(before, Duration::from_secs(120))),
        "the stand-in did not get the {before} warm-up points in time"
    );
    gw.wait_delivered();
    // The first maintenance pass (10 s after start) checkpoints what
    // making the data sources wrote: once per store, not per day.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(gw_started.elapsed()));
    let api = gw.api();
    let base = scrape_accepted(&api).expect("scrape /metrics");
    assert_eq!(base, before, "the warm-up was not all accepted");
    let reasons_before = scrape_commit_reasons(&api);
    let watch = AcceptedWatch::start(api.clone());
    let written_before = gw.write_bytes();
    let started = Instant::now();
    let window_from = unix_us(SystemTime::now()) as f64 / 1e6;
    let published = rt.block_on(publish(broker.port, n, Some(rate), "n"));
    assert!(
        rt.block_on(standin.wait_for_accepted(before + n, Duration::from_secs(120 + secs))),
        "the stand-in did not get {n} points in time"
    );
    gw.wait_delivered();
    let window = started.elapsed();
    let window_to = unix_us(SystemTime::now()) as f64 / 1e6;
    let written = gw.write_bytes() - written_before;
    // What the stop will move (the inbox; 0 for a build without one).
    let at_stop = scrape(&api, "dakkio_store_inbox_readings", "").unwrap_or(0.0);
    let commits = reasons_delta(&reasons_before, &scrape_commit_reasons(&api));
    let seen = watch.finish();
    let (syncs, written_through_stop) = gw.stop();
    let stop_bytes = written_through_stop.saturating_sub(written_before + written) as f64;

    // Ack: message i is committed at the first count above base + i.
    let mut acks = Vec::with_capacity(n as usize);
    let mut k = 0;
    for (i, at) in published.iter().enumerate() {
        while k < seen.len() && seen[k].0 <= base + i as u64 {
            k += 1;
        }
        if let Some((_, t)) = seen.get(k) {
            acks.push(t.saturating_duration_since(*at).as_secs_f64() * 1000.0);
        }
    }
    acks.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(acks.len() as u64, n, "not every message was seen accepted");

    let requests = standin.requests();
    let mut first = vec![false; n as usize];
    let mut upstream = Vec::with_capacity(n as usize);
    for p in standin.all_accepted_points() {
        let Some(id) = p.values.get("n").and_then(|v| v.as_f64()) else {
            continue; // a warm-up point
        };
        assert!(id >= 0.0 && id < n as f64, "a point with an unknown id");
        if std::mem::replace(&mut first[id as usize], true) {
            continue;
        }
        let pub_us = p
            .values
            .get("pub_us")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0) as i64;
        let arrived = unix_us(requests[(p.request - 1) as usize].at);
        upstream.push((arrived - pub_us) as f64 / 1000.0);
    }
    assert!(first.iter().all(|&f| f), "readings lost upstream");
    upstream.sort_by(|a, b| a.partial_cmp(b).unwrap());

    let (in_window, after) = syncs.as_ref().map_or((f64::NAN, f64::NAN), |t| {
        let inside = t
            .iter()
            .filter(|&&t| t >= window_from && t <= window_to)
            .count();
        let after = t.iter().filter(|&&t| t > window_to).count();
        (inside as f64, after as f64)
    });
    let n = n as f64;
    let (bytes_steady, fsyncs_per_s) = if at_stop > n {
        // The stop moves a full-size inbox: each reading's share of it.
        (
            written as f64 / n + stop_bytes / at_stop,
            in_window / window.as_secs_f64() + after * rate / at_stop,
        )
    } else {
        // The window's own moves, and the stop's of what they left.
        (
            (written as f64 + stop_bytes) / n,
            (in_window + after) / window.as_secs_f64(),
        )
    };
    Figures {
        bytes_steady,
        bytes_window: written as f64 / n,
        fsyncs_per_s,
        ack_p99_ms: percentile(&acks, 0.99),
        upstream_p99_ms: percentile(&upstream, 0.99),
        commits,
    }
}

/// Messages/s ingested (committed) through a broker with mosquitto's
/// default in-flight window of 20.
fn small_window(rt: &tokio::runtime::Runtime, binary: &Path, n: u64) -> f64 {
    let broker = Mosquitto::start_with(Settings {
        max_queued_messages: 10_000_000,
        autosave_interval: 10,
        max_inflight_messages: 20,
        ..Settings::default()
    });
    let standin = rt.block_on(async {
        Standin::builder()
            .bucket(BUCKET)
            .write_key(BUCKET, KEY)
            .quota(u64::MAX / 2)
            .start()
            .await
            .unwrap()
    });
    let gw = Gateway::start(binary, broker.port, &standin.url(), false);
    let watch = AcceptedWatch::start(gw.api());
    let published = rt.block_on(publish(broker.port, n, None, "n"));
    let deadline = Instant::now() + Duration::from_secs(600);
    let all_in = loop {
        if watch.last.load(Ordering::Relaxed) >= n {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        all_in,
        "the gateway did not ingest {n} messages within 600 s"
    );
    let seen = watch.finish();
    let done = seen
        .iter()
        .find(|(c, _)| *c >= n)
        .map(|(_, t)| *t)
        .expect("the watch saw every message accepted");
    gw.stop();
    n as f64 / (done - published[0]).as_secs_f64()
}

// ---------------------------------------------------------------- report

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let secs = env_u64("DAKKIO_WEAR_SECS", if full { 60 } else { 3 }).max(1);
    let runs = env_u64("DAKKIO_WEAR_RUNS", if full { 3 } else { 1 }).max(1);
    let window_n = env_u64("DAKKIO_WEAR_WINDOW_N", if full { 20_000 } else { 2000 }).max(1);
    let rates: Vec<f64> = std::env::var("DAKKIO_WEAR_RATES")
        .unwrap_or_else(|_| "20,1000".into())
        .split(',')
        .map(|r| {
            r.trim()
                .parse()
                .expect("DAKKIO_WEAR_RATES: numbers, e.g. 20,1000")
        })
        .collect();
    let current = PathBuf::from(env!("CARGO_BIN_EXE_dakkio-gateway"));
    let mut binaries = Vec::new();
    if let Some(reference) = std::env::var_os("DAKKIO_WEAR_REFERENCE") {
        binaries.push(("reference", PathBuf::from(reference)));
    }
    binaries.push(("this build", current));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "wear: {rates:?} msg/s for {secs} s each, {runs} run(s); fsyncs counted: {}",
        if strace_available() {
            "strace"
        } else {
            "no (strace missing, or DAKKIO_WEAR_STRACE=0)"
        }
    );
    // results[binary][rate] = figures per run; windows[binary] = msg/s.
    let mut results: Vec<Vec<Vec<Figures>>> = binaries
        .iter()
        .map(|_| rates.iter().map(|_| Vec::new()).collect())
        .collect();
    let mut windows: Vec<Vec<f64>> = binaries.iter().map(|_| Vec::new()).collect();
    for run in 1..=runs {
        for (b, (name, binary)) in binaries.iter().enumerate() {
            for (r, &rate) in rates.iter().enumerate() {
                let f = paced(&rt, binary, rate, secs);
                println!(
                    "run {run} {name} {rate} msg/s: {:.0} B/reading steady ({:.0} B in the \
                     window), {:.2} fsyncs/s, ack p99 {:.0} ms, publish→upstream p99 {:.0} ms; \
                     group commits in the window: {}",
                    f.bytes_steady,
                    f.bytes_window,
                    f.fsyncs_per_s,
                    f.ack_p99_ms,
                    f.upstream_p99_ms,
                    if f.commits.is_empty() {
                        "not counted"
                    } else {
                        &f.commits
                    }
                );
                results[b][r].push(f);
            }
            let w = small_window(&rt, binary, window_n);
            println!("run {run} {name}: {w:.0} msg/s through max_inflight_messages 20");
            windows[b].push(w);
        }
    }
    println!();
    println!(
        "| build | rate | bytes/reading, steady | bytes/day | bytes/reading in the window \
         | fsyncs/s | MQTT ack p99 | publish → upstream p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (b, (name, _)) in binaries.iter().enumerate() {
        for (r, &rate) in rates.iter().enumerate() {
            let med = |f: &dyn Fn(&Figures) -> f64| {
                median(&results[b][r].iter().map(f).collect::<Vec<_>>())
            };
            let bpr = med(&|f| f.bytes_steady);
            println!(
                "| {name} | {rate} msg/s | {bpr:.0} B | {:.1} GB | {:.0} B | {:.2} | {:.0} ms | \
                 {:.0} ms |",
                bpr * rate * 86_400.0 / 1e9,
                med(&|f| f.bytes_window),
                med(&|f| f.fsyncs_per_s),
                med(&|f| f.ack_p99_ms),
                med(&|f| f.upstream_p99_ms),
            );
        }
    }
    for (b, (name, _)) in binaries.iter().enumerate() {
        println!(
            "\n{name}: {:.0} msg/s ingested through mosquitto's default window \
             (max_inflight_messages 20), median of {runs}",
            median(&windows[b])
        );
    }
}
