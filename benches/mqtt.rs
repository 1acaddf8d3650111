//! MQTT ingest throughput: N QoS 1 messages published as fast as possible
//! to a mosquitto on loopback, until all are committed in the gateway's
//! store (`synchronous = "full"`), beside the reference measured in the
//! same run: a bare rumqttc subscriber that only counts (auto acks).
//!
//! - The publisher is `mosquitto_pub -l -q 1 -M 1000` in its own process, so
//!   it is not in this process's CPU figures.
//! - The gateway runs in-process (`dakkio_gateway::app::run`), so its CPU
//!   time (getrusage of this process during the gateway phase; the only
//!   other work here is a store count every 10 ms) and its peak RSS (VmHWM,
//!   read after the first gateway phase, before the reference subscriber
//!   runs) are easy to take. CPU per reading = CPU time / N.
//! - mosquitto is started by `common::broker` (benches cannot use the
//!   `tests/` helpers), with a large in-flight window and queue.
//!
//! `DAKKIO_BENCH_MQTT_MESSAGES` (default 50000) and `DAKKIO_BENCH_RUNS`
//! (default 3) size it. Run: `cargo bench --bench mqtt`.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

mod common;
use testkit::mosquitto::Mosquitto as Broker;

const BUCKET: &str = "507f1f77bcf86cd799439011";
const SOURCE: &str = "507f1f77bcf86cd799439012";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Publish n QoS 1 messages with mosquitto_pub; returns when it has
/// started (it exits once every message is acknowledged by the broker).
fn publish(port: u16, topic: &str, n: usize) -> Child {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-q", "1", "-l", "-M", "1000", "-i"])
        .arg(format!("bench-pub-{}", std::process::id()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = std::io::BufWriter::new(&mut stdin);
        for i in 0..n {
            writeln!(buf, r#"{{"n":{i},"t":21.5,"h":40}}"#).unwrap();
        }
    });
    child
}

fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// (msgs/s, CPU µs per reading)
fn gateway_run(rt: &tokio::runtime::Runtime, broker: &Broker, n: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[gateway]
id = "bench-gw"
data_dir = "{}"
[store]
synchronous = "full"
[[buckets]]
id = "{BUCKET}"
[mqtt]
host = "127.0.0.1"
port = {}
[[mqtt.routes]]
topic = "bench/gw/{{device}}"
bucket = "{BUCKET}"
data_source = "{SOURCE}"
metadata = {{ deviceId = "{{device}}" }}
"#,
        dir.path().join("data").display(),
        broker.port
    );
    let config = dakkio_gateway::config::parse(
        &text,
        &dir.path().join("gateway.toml"),
        &dakkio_gateway::config::ProcessEnv,
    )
    .expect("bench config");
    dakkio_gateway::telemetry::init("warn,dakkio_gateway=info");
    let stop = CancellationToken::new();
    let gateway = rt.spawn(dakkio_gateway::app::run(config, stop.clone()));
    let db = dir.path().join("data").join("gateway.db");
    // Until the persistent session has subscribed (a bench, not a test: a
    // fixed pause is fine here).
    std::thread::sleep(Duration::from_millis(1500));
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut publisher = publish(broker.port, "bench/gw/dev1", n);
    let conn = rusqlite::Connection::open(&db).unwrap();
    loop {
        let count: i64 = conn
            .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
            .unwrap_or(0);
        if count as usize >= n {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "gateway too slow");
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    publisher.wait().ok();
    stop.cancel();
    rt.block_on(gateway).unwrap().unwrap();
    (
        n as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
    )
}

/// The reference: a rumqttc subscriber that only counts (auto acks).
fn reference_run(rt: &tokio::runtime::Runtime, broker: &Broker, n: usize) -> f64 {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let port = broker.port;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let counter = rt.spawn(async move {
        let mut o = MqttOptions::new("bench-ref", "127.0.0.1", port);
        o.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut ev) = AsyncClient::new(o, 1000);
        client
            .subscribe("bench/ref/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut got = 0usize;
        let mut done_at = None;
        while got < n {
            match ev.poll().await.expect("reference subscriber") {
                Event::Incoming(Packet::SubAck(_)) => ready_tx.send(()).unwrap(),
                Event::Incoming(Packet::Publish(_)) => {
                    got += 1;
                    done_at = Some(Instant::now());
                }
                _ => {}
            }
        }
        done_at.unwrap()
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let t0 = Instant::now();
    let mut publisher = publish(broker.port, "bench/ref/dev1", n);
    let done = rt.block_on(counter).unwrap();
    publisher.wait().ok();
    n as f64 / (done - t0).as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less args;
    // keep that cheap.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let n = env_usize(
        "DAKKIO_BENCH_MQTT_MESSAGES",
        if quick { 500 } else { 50_000 },
    );
    let runs = env_usize("DAKKIO_BENCH_RUNS", if quick { 1 } else { 3 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rates = Vec::new();
    let mut refs = Vec::new();
    let mut cpus = Vec::new();
    let mut rss = 0;
    for run in 0..runs {
        let broker = common::broker();
        let (rate, cpu) = gateway_run(&rt, &broker, n);
        if run == 0 {
            rss = peak_rss_kib();
        }
        let reference = reference_run(&rt, &broker, n);
        println!(
            "run {run}: gateway {rate:.0} msg/s ({cpu:.1} µs CPU/reading), \
             bare subscriber {reference:.0} msg/s, ratio {:.0} %",
            100.0 * rate / reference
        );
        rates.push(rate);
        refs.push(reference);
        cpus.push(cpu);
    }
    let (rate, reference) = (median(rates), median(refs));
    println!(
        "mqtt ingest, {n} QoS 1 messages, median of {runs}: gateway {rate:.0} msg/s committed \
         (synchronous=full), bare rumqttc subscriber {reference:.0} msg/s, ratio {:.0} % \
         (target >= 80 %); gateway CPU {:.1} µs/reading (target <= 15); peak RSS {:.1} MiB \
         (target <= 40, in-process: includes this harness)",
        100.0 * rate / reference,
        median(cpus),
        rss as f64 / 1024.0
    );
}
