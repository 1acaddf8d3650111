//! Serial ingest benchmark (harness = false).
//!
//! 1. Decoding throughput per line format on one core: framing + decoding +
//!    routing ([`LineIngest`]) over a buffer of lines fed in 4 KiB chunks
//!    (what one port read delivers), lines/s, median of several runs. The
//!    in-run reference is framing alone over the same bytes.
//! 2. End-to-end CPU for 10 ports × 10 lines/s: the real gateway binary
//!    reading 10 socat pty pairs for a while; its CPU time (utime + stime
//!    from /proc/<pid>/stat) as % of one core, per window (median) and over
//!    the whole run; socat's CPU reported beside it. Target ≤ 1 %.
//!
//! Run (release):
//!   cargo bench --bench serial
//! Sizes: SERIAL_BENCH_LINES (default 200000), SERIAL_BENCH_RUNS (5),
//! SERIAL_BENCH_SECS (20, split into SERIAL_BENCH_WINDOWS = 4 windows),
//! SERIAL_BENCH_E2E=0 skips part 2.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dakkio_gateway::config::{SerialConfig, SerialSource};
use dakkio_gateway::ingest::decode::LineFormat;
use dakkio_gateway::ingest::framing::{Frame, LineFramer};
use dakkio_gateway::ingest::serial::{LineIngest, LineOutcome};
use testkit::pty::PtyPair;

const BUCKET: &str = "507f1f77bcf86cd799439011";
const SOURCE: &str = "507f1f77bcf86cd799439012";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Makes the `i`-th line of a format.
type MakeLine = fn(u64) -> String;

/// A format and a typical line for it (`i` varies the values).
fn formats() -> Vec<(&'static str, LineFormat, MakeLine)> {
    vec![
        (
            "json",
            LineFormat::Json {},
            (|i| {
                format!(
                    "{{\"temperature\":{}.5,\"humidity\":40,\"pressure\":1013.2}}",
                    i % 40
                )
            }) as MakeLine,
        ),
        ("json point", LineFormat::Json {}, |i| {
            format!(
                "{{\"timestamp\":{},\"values\":{{\"temperature\":{}.5,\"humidity\":40}},\
                     \"metadata\":{{\"fw\":\"1.2\"}}}}",
                1_705_314_600 + i,
                i % 40
            )
        }),
        (
            "csv",
            LineFormat::Csv {
                columns: vec![
                    "ts".into(),
                    "temperature".into(),
                    "humidity".into(),
                    "pressure".into(),
                ],
                skip_header: false,
                delimiter: ',',
                time_column: None,
                time_format: Default::default(),
                time_zone: Default::default(),
            },
            |i| format!("{},{}.5,40,1013.2", 1_705_314_600 + i, i % 40),
        ),
        ("kv", LineFormat::Kv {}, |i| {
            format!("temperature={}.5 humidity=40 pressure=1013.2", i % 40)
        }),
        (
            "number",
            LineFormat::Number {
                field: "temperature".into(),
            },
            |i| format!("{}.5", i % 40),
        ),
        ("influx", LineFormat::Influx {}, |i| {
            format!(
                "env,room=a temperature={}.5,humidity=40 {}",
                i % 40,
                1_705_314_600_000_000_000u64 + i
            )
        }),
    ]
}

fn decode_throughput() {
    let lines = env("SERIAL_BENCH_LINES", 200_000);
    let runs = env("SERIAL_BENCH_RUNS", 5).max(1);
    println!("## decoding throughput, one core ({lines} lines, median of {runs} runs)");
    println!(
        "{:<12} {:>14} {:>16} {:>10}",
        "format", "lines/s", "framing only/s", "bytes/line"
    );
    for (name, format, make) in formats() {
        let mut input = Vec::new();
        for i in 0..lines {
            input.extend_from_slice(make(i).as_bytes());
            input.extend_from_slice(b"\r\n");
        }
        let config = SerialConfig::new(
            "/dev/bench",
            format,
            BUCKET,
            SerialSource::Fixed(SOURCE.into()),
        );
        let mut full = Vec::new();
        let mut framing = Vec::new();
        for _ in 0..runs {
            let mut ingest = LineIngest::new(&config);
            let mut ok = 0u64;
            let mut bad = 0u64;
            let t = Instant::now();
            for chunk in input.chunks(4096) {
                ingest.push(chunk, 1_705_314_600_000, |o| match o {
                    LineOutcome::Reading(r) => {
                        ok += 1;
                        std::hint::black_box(r);
                    }
                    LineOutcome::Rejected { .. } | LineOutcome::Skipped => bad += 1,
                });
            }
            full.push(lines as f64 / t.elapsed().as_secs_f64());
            assert_eq!((ok, bad), (lines, 0), "{name}: every line must decode");

            let mut framer = LineFramer::new(b'\n', 4096);
            let mut n = 0u64;
            let t = Instant::now();
            for chunk in input.chunks(4096) {
                framer.push(chunk, |f| {
                    if let Frame::Line(l) = f {
                        n += 1;
                        std::hint::black_box(l);
                    }
                });
            }
            framing.push(lines as f64 / t.elapsed().as_secs_f64());
            std::hint::black_box(n);
        }
        println!(
            "{:<12} {:>14.0} {:>16.0} {:>10}",
            name,
            median(full),
            median(framing),
            input.len() as u64 / lines
        );
    }
}

/// CPU ticks (user + system) of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(p) = stat.rfind(')') else { return 0 };
    let f: Vec<&str> = stat[p + 2..].split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn end_to_end() {
    let secs = env("SERIAL_BENCH_SECS", 20).max(1);
    let windows = env("SERIAL_BENCH_WINDOWS", 4).max(1);
    let ports = 10;
    let per_second = 10;
    println!(
        "\n## end-to-end: {ports} ports × {per_second} lines/s for {secs} s (gateway binary, socat ptys)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut pairs: Vec<PtyPair> = (0..ports)
        .map(|i| PtyPair::open(dir.path(), &format!("port{i}")))
        .collect();
    let mut cfg = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\n{}[[buckets]]\nid = \"{BUCKET}\"\n",
        dir.path().join("data").display(),
        std::env::var("SERIAL_BENCH_STORE").map_or(String::new(), |s| format!("[store]\n{s}\n"))
    );
    for (i, p) in pairs.iter().enumerate() {
        cfg += &format!(
            "[[serial]]\npath = \"{}\"\nline = {{ format = \"kv\" }}\nbucket = \"{BUCKET}\"\n\
             data_source = \"507f1f77bcf86cd7994{i:05x}\"\n",
            p.dev.display()
        );
    }
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, cfg).unwrap();
    let mut gw = Command::new(env!("CARGO_BIN_EXE_dakkio-gateway"))
        // A synchronised clock whatever the kernel says (see src/clock/).
        .env("DAKKIO_GATEWAY_TEST_CLOCK_FILE", "synced")
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = gw.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("serial port open") {
                tx.send(()).ok();
            }
        }
    });
    for _ in 0..ports {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("every port opens");
    }
    let mut writers: Vec<std::fs::File> = pairs
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p.host)
                .unwrap()
        })
        .collect();
    let hz = ticks_per_second();
    let tick = Duration::from_millis(1000 / per_second);
    let window = Duration::from_secs_f64(secs as f64 / windows as f64);
    let (gw0, socat0) = (cpu_ticks(gw.id()), socat_ticks(&pairs));
    let start = Instant::now();
    let mut next = start;
    let mut n = 0u64;
    let mut shares = Vec::new();
    let mut w_start = (start, cpu_ticks(gw.id()));
    while start.elapsed() < Duration::from_secs(secs) {
        for w in writers.iter_mut() {
            w.write_all(format!("n={n} t=21.5 h=40\n").as_bytes())
                .unwrap();
        }
        n += 1;
        next += tick;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        if w_start.0.elapsed() >= window {
            let t = cpu_ticks(gw.id());
            shares.push((t - w_start.1) as f64 / hz / w_start.0.elapsed().as_secs_f64() * 100.0);
            w_start = (Instant::now(), t);
        }
    }
    if w_start.0.elapsed() >= window / 2 {
        let t = cpu_ticks(gw.id());
        shares.push((t - w_start.1) as f64 / hz / w_start.0.elapsed().as_secs_f64() * 100.0);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let gw_total = (cpu_ticks(gw.id()) - gw0) as f64 / hz / elapsed * 100.0;
    let socat_total = (socat_ticks(&pairs) - socat0) as f64 / hz / elapsed * 100.0;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(gw.id() as i32, libc::SIGTERM) };
    let status = gw.wait().unwrap();
    logs.join().ok();
    let stored = rusqlite_count(&dir.path().join("data").join("gateway.db"));
    println!(
        "gateway CPU: median {:.2} % of one core over {} windows, {:.2} % overall (target ≤ 1 %)",
        median(shares.clone()),
        shares.len(),
        gw_total
    );
    println!(
        "socat CPU (the simulated devices, {ports} processes): {socat_total:.2} % of one core"
    );
    println!(
        "lines written {}, readings stored {stored}, gateway exit {status}",
        n * ports as u64
    );
    for p in pairs.iter_mut() {
        p.unplug();
    }
}

fn socat_ticks(pairs: &[PtyPair]) -> u64 {
    pairs.iter().filter_map(PtyPair::pid).map(cpu_ticks).sum()
}

fn rusqlite_count(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row("SELECT count(*) FROM readings", [], |r| r.get(0)))
        .unwrap_or(-1)
}

fn main() {
    decode_throughput();
    if env("SERIAL_BENCH_E2E", 1) != 0 {
        end_to_end();
    }
}
