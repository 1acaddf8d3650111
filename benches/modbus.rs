//! Modbus polling cost (harness = false): the real gateway binary polling
//! 10 devices × 20 registers every second from pymodbus's RTU server on a
//! socat pty pair, beside the same gateway with no Modbus bus (the in-run
//! reference) over the same window.
//!
//! Per run and configuration: the gateway's CPU time (utime + stime of
//! /proc/<pid>/stat) as % of one core; its context switches per second
//! (voluntary + involuntary, every thread, /proc/<pid>/task/*/status);
//! and, sampling those counters every 5 ms, the **wake-up bursts**: runs
//! of samples in which a counter moved, separated by at least 200 ms of
//! quiet. With polls once a second, bursts/s ≈ 1 over the reference's
//! means the gateway wakes only to poll (and commit what it read), never
//! between polls. Figures are medians over the runs.
//!
//! Run (release): cargo bench --bench modbus
//! Sizes: MODBUS_BENCH_RUNS (3), MODBUS_BENCH_SECS (30).
//! Needs python3 with pymodbus (scripts/test.sh installs it) and socat.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::modbus::ModbusSlave;
use testkit::pty::PtyPair;

const BUCKET: &str = "507f1f77bcf86cd799439011";
const DEVICES: u8 = 10;

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

/// Context switches summed over every thread of `pid`.
fn switches(pid: u32) -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            total += status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum()
}

struct Sample {
    cpu_pct: f64,
    switches_per_sec: f64,
    bursts_per_sec: f64,
    longest_burst_ms: f64,
}

/// Watch `pid` for `window`.
fn measure(pid: u32, window: Duration) -> Sample {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (c0, s0, t0) = (cpu_ticks(pid), switches(pid), Instant::now());
    let mut last = s0;
    let mut bursts = 0u32;
    let mut burst: Option<(Instant, Instant)> = None;
    let mut longest = Duration::ZERO;
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        let s = switches(pid);
        if s != last {
            last = s;
            burst = match burst {
                Some((start, end)) if now - end < Duration::from_millis(200) => Some((start, now)),
                Some((start, end)) => {
                    longest = longest.max(end - start);
                    bursts += 1;
                    Some((now, now))
                }
                None => Some((now, now)),
            };
        }
    }
    if let Some((start, end)) = burst {
        longest = longest.max(end - start);
        bursts += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    Sample {
        cpu_pct: (cpu_ticks(pid) - c0) as f64 / hz / secs * 100.0,
        switches_per_sec: (switches(pid) - s0) as f64 / secs,
        bursts_per_sec: f64::from(bursts) / secs,
        longest_burst_ms: longest.as_secs_f64() * 1000.0,
    }
}

fn spawn(dir: &Path, body: &str) -> Child {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\n\
             [[buckets]]\nid = \"{BUCKET}\"\nname = \"bench\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n{body}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_dakkio-gateway"))
        // A synchronised clock whatever the kernel says (see src/clock/).
        .env("DAKKIO_GATEWAY_TEST_CLOCK_FILE", "synced")
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway")
}

fn stop(mut child: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the gateway did not stop cleanly: {status}"
    );
}

/// Readings the store holds (to check that the polls answered).
fn readings(dir: &Path) -> i64 {
    let c = rusqlite::Connection::open(dir.join("data").join(dakkio_gateway::store::FILE_NAME))
        .unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap_or(0)
}

/// 20 values per device in 30 registers: 10 u16, 5 i32, 5 f32 (one
/// request per device).
fn bus(path: &Path) -> String {
    let mut out = format!(
        "[[modbus]]\npath = \"{}\"\nname = \"bench\"\nbaud_rate = 115200\nbucket = \"bench\"\ntimeout = \"500ms\"\n",
        path.display()
    );
    for unit in 1..=DEVICES {
        out.push_str(&format!(
            "[[modbus.devices]]\nunit = {unit}\ndata_source = \"507f1f77bcf86cd7994390{unit:02x}\"\nevery = \"1s\"\n"
        ));
        let mut address = 0;
        for (n, ty) in (0..20).map(|i| {
            (
                i,
                if i < 10 {
                    "u16"
                } else if i < 15 {
                    "i32"
                } else {
                    "f32"
                },
            )
        }) {
            out.push_str(&format!(
                "[[modbus.devices.registers]]\nname = \"v{n}\"\nfunction = \"holding\"\naddress = {address}\ntype = \"{ty}\"\n"
            ));
            address += if ty == "u16" { 1 } else { 2 };
        }
    }
    out
}

fn main() {
    let runs = env("MODBUS_BENCH_RUNS", 3);
    let window = Duration::from_secs(env("MODBUS_BENCH_SECS", 30));
    testkit::modbus::require_pymodbus();
    let root = tempfile::tempdir().unwrap();
    let words: Vec<u16> = (0..30).map(|i| 1000 + i).collect();
    let units: serde_json::Map<String, serde_json::Value> = (1..=DEVICES)
        .map(|u| (u.to_string(), json!({ "hr": words })))
        .collect();
    let spec = json!({ "units": units });
    let (mut idle, mut polled) = (Vec::new(), Vec::new());
    println!(
        "modbus: {DEVICES} devices x 20 registers every 1 s over RTU (pymodbus on a pty), \
         {runs} runs of {} s",
        window.as_secs()
    );
    for run in 0..runs {
        // Reference: the same gateway without a bus.
        let dir = root.path().join(format!("idle-{run}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = spawn(&dir, "");
        std::thread::sleep(Duration::from_secs(3));
        let s = measure(child.id(), window);
        stop(child);
        println!(
            "run {run} reference (no bus): CPU {:.3} %, {:.1} switches/s, {:.2} wake-up bursts/s",
            s.cpu_pct, s.switches_per_sec, s.bursts_per_sec
        );
        idle.push(s);

        let dir = root.path().join(format!("modbus-{run}"));
        std::fs::create_dir_all(&dir).unwrap();
        let pty = PtyPair::open(&dir, "rs485");
        let slave = ModbusSlave::rtu(&pty.host, &spec, &dir);
        let child = spawn(&dir, &bus(&pty.dev));
        std::thread::sleep(Duration::from_secs(3));
        let before = readings(&dir);
        let s = measure(child.id(), window);
        let polled_readings = readings(&dir) - before;
        stop(child);
        slave.stop();
        drop(pty);
        let expected = window.as_secs() as i64 * i64::from(DEVICES);
        assert!(
            polled_readings >= expected * 9 / 10,
            "only {polled_readings} readings in the window, expected about {expected}"
        );
        println!(
            "run {run} modbus: CPU {:.3} %, {:.1} switches/s, {:.2} wake-up bursts/s \
             (longest {:.0} ms), {polled_readings} readings",
            s.cpu_pct, s.switches_per_sec, s.bursts_per_sec, s.longest_burst_ms
        );
        polled.push(s);
    }
    let m = |v: &Vec<Sample>, f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    println!(
        "medians: modbus CPU {:.3} % of one core (target <= 1 %), {:.1} switches/s, \
         {:.2} wake-up bursts/s, longest burst {:.0} ms; reference without a bus: CPU {:.3} %, \
         {:.1} switches/s, {:.2} bursts/s",
        m(&polled, |s| s.cpu_pct),
        m(&polled, |s| s.switches_per_sec),
        m(&polled, |s| s.bursts_per_sec),
        m(&polled, |s| s.longest_burst_ms),
        m(&idle, |s| s.cpu_pct),
        m(&idle, |s| s.switches_per_sec),
        m(&idle, |s| s.bursts_per_sec),
    );
}
