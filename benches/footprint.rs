//! Start-up and idle footprint (`cargo bench --bench footprint`).
//!
//! With a store of `FOOTPRINT_READINGS` readings (default 10,000,000, about
//! 1 GiB on disk; generated once by bulk insert and reused), starts the
//! gateway binary `FOOTPRINT_RUNS` times (default 5) with a notify socket
//! playing systemd, and measures:
//! - the time from spawning the process to `READY=1` (store open and
//!   checked, every part running);
//! - the idle RSS 5 s after READY with nothing arriving (no MQTT, no serial,
//!   the local API on loopback, a bucket without a key);
//! - idle wake-ups: context switches of all its threads per second, and its
//!   CPU time, over a 10 s window.
//!
//! Reference in the same run: spawning `/bin/true` until it exits (the
//! process-start floor of this machine). Medians are printed.
//! `FOOTPRINT_GATEWAY=<path>` measures another build of the gateway (the
//! shipped `dist` one: most of an idle gateway's RSS is its code).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dakkio_gateway::config;
use dakkio_gateway::store;

mod common;
use common::{generate, BUCKET};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Context switches per thread id, and CPU ticks, of a process.
fn activity(pid: u32) -> (std::collections::HashMap<String, u64>, u64) {
    let mut switches = std::collections::HashMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let n: u64 = status
                .lines()
                .filter_map(|line| {
                    line.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum();
            switches.insert(t.file_name().to_string_lossy().into_owned(), n);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat (12 and 13 after the name).
    let ticks = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    (switches, ticks)
}

/// Switches between two samples: the growth of threads seen in both, plus
/// every switch of threads started in between (threads that ended are lost,
/// so this is a lower bound when the blocking pool shrinks).
fn switches_between(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> u64 {
    after
        .iter()
        .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n = env_usize("FOOTPRINT_READINGS", 10_000_000);
    let runs = env_usize("FOOTPRINT_RUNS", 5);
    let dir = std::env::var_os("FOOTPRINT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/footprint"));
    std::fs::create_dir_all(&dir).unwrap();
    let data_dir = dir.join(format!("data-{n}"));
    let config_path = dir.join("gateway.toml");
    let text = format!(
        "[gateway]\nid = \"footprint\"\ndata_dir = \"{}\"\n\
         [store]\nmax_size = \"64GiB\"\nretention = \"3650d\"\n\
         [[buckets]]\nid = \"{BUCKET}\"\nname = \"bench\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\n",
        data_dir.display()
    );
    std::fs::write(&config_path, &text).unwrap();
    let cfg =
        config::parse(&text, &config_path, &config::ProcessEnv).unwrap_or_else(|e| panic!("{e}"));
    generate(&cfg, n);
    let db = data_dir.join(store::FILE_NAME);
    let db_bytes = std::fs::metadata(&db).unwrap().len();
    println!(
        "footprint: store of {n} readings, {:.2} GiB, {runs} starts of {}",
        db_bytes as f64 / (1u64 << 30) as f64,
        gateway_binary().display()
    );

    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let (mut ready, mut rss, mut wakeups, mut cpu, mut reference) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let t = Instant::now();
        Command::new("/bin/true").status().unwrap();
        reference.push(t.elapsed().as_secs_f64() * 1000.0);

        let sock_path = dir.join(format!("notify-{run}.sock"));
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let t = Instant::now();
        let mut child = spawn(&config_path, &sock_path);
        let mut buf = [0u8; 4096];
        loop {
            let got = sock.recv(&mut buf).expect("READY=1 from the gateway");
            if String::from_utf8_lossy(&buf[..got]).contains("READY=1") {
                break;
            }
        }
        let ready_ms = t.elapsed().as_secs_f64() * 1000.0;
        // Let start-up work (connections, first maintenance) settle.
        std::thread::sleep(Duration::from_secs(5));
        let pid = child.id();
        let rss_mib = rss_kib(pid) as f64 / 1024.0;
        let (s0, c0) = activity(pid);
        let window = Duration::from_secs(10);
        std::thread::sleep(window);
        let (s1, c1) = activity(pid);
        let per_sec = switches_between(&s0, &s1) as f64 / window.as_secs_f64();
        let cpu_pct = (c1 - c0) as f64 / ticks_per_sec / window.as_secs_f64() * 100.0;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "the gateway did not stop cleanly: {status}"
        );
        println!(
            "run {run}: READY after {ready_ms:.0} ms; idle RSS {rss_mib:.1} MiB; \
             {per_sec:.1} wake-ups/s; idle CPU {cpu_pct:.2} %; (/bin/true {:.1} ms)",
            reference[run]
        );
        ready.push(ready_ms);
        rss.push(rss_mib);
        wakeups.push(per_sec);
        cpu.push(cpu_pct);
        let _ = std::fs::remove_file(&sock_path);
    }
    println!(
        "medians: start to READY {:.0} ms (target <= 300) with a {:.2} GiB store; \
         idle RSS {:.1} MiB (target <= 12); {:.1} wake-ups/s and {:.2} % CPU idle; \
         reference: spawning /bin/true {:.1} ms",
        median(ready),
        db_bytes as f64 / (1u64 << 30) as f64,
        median(rss),
        median(wakeups),
        median(cpu),
        median(reference)
    );
}

/// The gateway binary measured: `FOOTPRINT_GATEWAY`, e.g. the shipped
/// build (`cargo build --profile dist`, then
/// `FOOTPRINT_GATEWAY=target/dist/dakkio-gateway`), else this bench's own
/// build (optimised for speed, not stripped: its resident code is larger).
fn gateway_binary() -> PathBuf {
    std::env::var_os("FOOTPRINT_GATEWAY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_dakkio-gateway")),
        PathBuf::from,
    )
}

fn spawn(config: &Path, notify: &Path) -> std::process::Child {
    Command::new(gateway_binary())
        // A synchronised clock whatever the kernel says (see src/clock/).
        .env("DAKKIO_GATEWAY_TEST_CLOCK_FILE", "synced")
        .args(["run", "--config"])
        .arg(config)
        .env("NOTIFY_SOCKET", notify)
        .env("RUST_LOG", "warn")
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway")
}
