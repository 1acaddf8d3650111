//! Retention maintenance under months of history (docs/performance.md,
//! issue "months without a restart"): does a retention pass hold up
//! commits, or the watchdog?
//!
//! 1. A store with `SOURCES` data sources and `ROWS` delivered readings is
//!    built by direct bulk insert (seconds); `DUE` of them are older than
//!    the 30-day retention, the rest are recent history.
//! 2. Reference, in the same run: the statement the writer ran until this
//!    fix (one DELETE per data source, planned through the queue index) is
//!    timed over every data source of a copy of that store — the time
//!    during which, before, nothing could commit.
//! 3. The release binary runs on the store with a fake `NOTIFY_SOCKET` and
//!    `WATCHDOG_USEC=3s` (pings every second); readings arrive through the
//!    local API at `RATE`/s, each answered 201 only after its commit, for
//!    `SECS` seconds. The first retention pass starts 10 s after start.
//!    Printed: the pass (rows, slices, time), the commit latency (request
//!    to 201) before and during the pass, and the longest gap between
//!    watchdog pings.
//!
//! 4. Every 10 s: RSS, open file descriptors and the WAL's size; at the
//!    end, the RSS slope over the run (after its first minute) — run it
//!    long for a soak: `DAKKIO_MAINT_SECS=1800 DAKKIO_MAINT_RATE=500`.
//!
//! `cargo bench --bench maintenance`; sizes via `DAKKIO_MAINT_SOURCES`
//! (1000), `DAKKIO_MAINT_ROWS` (300000), `DAKKIO_MAINT_DUE` (30000),
//! `DAKKIO_MAINT_RATE` (100), `DAKKIO_MAINT_SECS` (30),
//! `DAKKIO_MAINT_REFERENCE=0` to skip the reference.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod common;

use dakkio_gateway::config::{self, key_sha256};
use dakkio_gateway::reading::now_ms;
use dakkio_gateway::store;

const BUCKET: &str = "507f1f77bcf86cd799439011";
const ADMIN: &str = "dakkio_a_MaintenanceBenchAdminKey0123456789";
const DAY: i64 = 86_400_000;

/// The gateway's log lines with their arrival times, and a condition
/// variable to await new ones.
type LogBook = (Mutex<Vec<(Instant, String)>>, Condvar);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn source_id(i: u64) -> String {
    format!("{:024x}", 0x65a0_0000_0000_0000_0000_0000u128 + i as u128)
}

/// Bucket, sources and history straight into the schema the store created.
fn build(path: &Path, sources: u64, rows: u64, due: u64) {
    let started = Instant::now();
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; PRAGMA cache_size=-262144;")
        .unwrap();
    let tx = c.transaction().unwrap();
    tx.execute("INSERT INTO buckets (bucket_id) VALUES (?1)", [BUCKET])
        .unwrap();
    let bucket = tx.last_insert_rowid();
    let mut keys = Vec::new();
    for i in 0..sources {
        tx.execute(
            "INSERT INTO sources (bucket, source_id) VALUES (?1, ?2)",
            rusqlite::params![bucket, source_id(i)],
        )
        .unwrap();
        keys.push(tx.last_insert_rowid());
    }
    let now = now_ms();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO readings (bucket, source, ts, seq, origin, vals, meta)
                 VALUES (?1, ?2, ?3, ?4, 3, '{\"temperature\":21.5,\"humidity\":48.1}', NULL)",
            )
            .unwrap();
        for k in 0..rows {
            // The first `due` readings are 31 to 61 days old, the rest
            // spread over the last 29 days.
            let ts = if k < due {
                now - 31 * DAY - (k as i64 * 30 * DAY / due.max(1) as i64)
            } else {
                now - 29 * DAY + (k - due) as i64 * 29 * DAY / (rows - due).max(1) as i64
            };
            st.execute(rusqlite::params![
                bucket,
                keys[(k % sources) as usize],
                ts,
                k as i64 + 1
            ])
            .unwrap();
        }
    }
    for name in ["accepted", "delivered", "kept"] {
        tx.execute(
            "INSERT INTO ledger (bucket, name, value) VALUES (?1, ?2, ?3)",
            rusqlite::params![bucket, name, rows as i64],
        )
        .unwrap();
    }
    tx.execute(
        "UPDATE buckets SET delivered_seq = ?1 WHERE id = ?2",
        rusqlite::params![rows as i64, bucket],
    )
    .unwrap();
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
        [(rows + 1).to_string()],
    )
    .unwrap();
    tx.commit().unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    println!(
        "built {sources} sources, {rows} delivered readings ({due} due) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The pass as the writer ran it before: one DELETE per data source through
/// the queue index, all in one transaction. Seconds for every data source.
fn reference(path: &Path, copy: &Path) -> f64 {
    std::fs::copy(path, copy).unwrap();
    let mut c = rusqlite::Connection::open(copy).unwrap();
    let cutoff = now_ms() - 30 * DAY;
    let started = Instant::now();
    let tx = c.transaction().unwrap();
    let series: Vec<(i64, i64, i64)> = tx
        .prepare(
            "SELECT s.bucket, s.id, b.delivered_seq FROM sources s JOIN buckets b ON b.id = s.bucket",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut deleted = 0;
    for (bucket, source, cursor) in series {
        deleted += tx
            .prepare_cached(
                "DELETE FROM readings WHERE bucket = ?1 AND seq IN (
                     SELECT seq FROM readings
                     WHERE bucket = ?1 AND source = ?2 AND ts < ?3 AND seq <= ?4
                     LIMIT 2000)",
            )
            .unwrap()
            .execute(rusqlite::params![bucket, source, cutoff, cursor])
            .unwrap();
    }
    tx.commit().unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!("reference: the former pass statement over every data source: {secs:.2} s ({deleted} rows), nothing commits meanwhile");
    secs
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sources = env("DAKKIO_MAINT_SOURCES", 1000);
    let rows = env("DAKKIO_MAINT_ROWS", 300_000);
    let due = env("DAKKIO_MAINT_DUE", 30_000).min(rows);
    let rate = env("DAKKIO_MAINT_RATE", 100);
    let secs = env("DAKKIO_MAINT_SECS", 30);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let text = format!(
        "[gateway]\nid = \"maint\"\ndata_dir = \"{}\"\n\
         [[buckets]]\nid = \"{BUCKET}\"\nname = \"m\"\n\
         [store]\nretention = \"30d\"\nmax_size = \"4GiB\"\n\
         [uplink]\nurl = \"http://127.0.0.1:9\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\nadmin_key_sha256 = \"{}\"\n",
        data.display(),
        key_sha256(ADMIN)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, &text).unwrap();
    let cfg = config::parse(&text, &config_path, &config::ProcessEnv).unwrap();
    let (h, w) = store::open(&cfg.store, &data).unwrap();
    drop(h);
    w.join().unwrap();
    let db = data.join(store::FILE_NAME);
    build(&db, sources, rows, due);
    if env("DAKKIO_MAINT_REFERENCE", 1) != 0 {
        reference(&db, &dir.path().join("copy.db"));
        let _ = std::fs::remove_file(dir.path().join("copy.db"));
    }

    // The watchdog: every datagram from the gateway, with its arrival time.
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let pings: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = pings.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                seen.lock().unwrap().push(Instant::now());
            }
        }
    });

    let mut child = Command::new(env!("CARGO_BIN_EXE_dakkio-gateway"))
        // A synchronised clock whatever the kernel says (see src/clock/).
        .env("DAKKIO_GATEWAY_TEST_CLOCK_FILE", "synced")
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .env(
            "RUST_LOG",
            "warn,dakkio_gateway=info,dakkio_gateway::store=debug",
        )
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "3000000")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway binary");
    let started = Instant::now();
    let log: Arc<LogBook> = Arc::default();
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.0.lock().unwrap().push((Instant::now(), line));
            sink.1.notify_all();
        }
    });
    let addr = {
        let mut lines = log.0.lock().unwrap();
        loop {
            if let Some(a) = lines.iter().find_map(|(_, l)| {
                l.contains("local API listening")
                    .then(|| l.split("addr=").nth(1)?.split_whitespace().next())
                    .flatten()
                    .map(str::to_owned)
            }) {
                break a;
            }
            let (l, t) = log.1.wait_timeout(lines, Duration::from_secs(60)).unwrap();
            assert!(!t.timed_out(), "the gateway did not start");
            lines = l;
        }
    };
    let ready = started.elapsed();
    println!("gateway ready in {ready:?} on {addr}; {rate} readings/s for {secs} s");

    // Samples of the process every 10 s.
    let pid = child.id();
    let wal = db.with_extension("db-wal");
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let keep = sampling.clone();
    let sampler = std::thread::spawn(move || {
        let mut out: Vec<(f64, u64, usize, u64)> = Vec::new();
        let t0 = Instant::now();
        while keep.load(std::sync::atomic::Ordering::Relaxed) {
            let rss = common::proc_field(&format!("/proc/{pid}/status"), "VmRSS:");
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
            let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
            let at = t0.elapsed().as_secs_f64();
            println!(
                "sample t={at:.0}s rss={rss}KiB fds={fds} wal={:.1}MiB",
                wal_bytes as f64 / 1048576.0
            );
            out.push((at, rss, fds, wal_bytes));
            for _ in 0..100 {
                if !keep.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        out
    });

    // The load: one reading per request, round robin over the sources.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let samples: Vec<(Instant, f64, u16)> = rt.block_on(async move {
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/api/data");
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        let mut tasks = Vec::new();
        let end = Instant::now() + Duration::from_secs(secs);
        let mut i = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            let body = format!(
                r#"{{"bucketId":"{BUCKET}","dataSourceId":"{}","values":{{"temperature":{}}}}}"#,
                source_id(i % sources),
                20 + i % 10
            );
            i += 1;
            let (http, url) = (http.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let status = http
                    .post(url)
                    .header("X-API-Key", ADMIN)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                (t, t.elapsed().as_secs_f64() * 1000.0, status)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });

    // The pass, from the writer's own log line.
    let pass = log
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|(_, l)| l.contains("pruned delivered history past retention"))
        .cloned();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let series = sampler.join().unwrap();
    // SAFETY: kill has no memory effects; the pid is our child's.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let stop_started = Instant::now();
    let _ = child.wait();
    let stop_took = stop_started.elapsed();

    let failed = samples.iter().filter(|s| s.2 != 201).count();
    let (pass_at, pass_line) = match &pass {
        Some((at, line)) => (Some(*at), line.as_str()),
        None => (None, "no pass finished within the run"),
    };
    println!("pass: {pass_line}");
    if pass.is_none() {
        for (_, l) in log.0.lock().unwrap().iter().rev().take(15).rev() {
            println!("  gateway: {l}");
        }
    }
    let took_ms = pass_line
        .split("took=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("?");
    let window = pass_at.map(|end| {
        // The pass ran from 10 s after start to its log line.
        (started + Duration::from_secs(10), end)
    });
    let mut before: Vec<f64> = Vec::new();
    let mut during: Vec<f64> = Vec::new();
    for (t, ms, _) in &samples {
        match window {
            Some((a, b)) if *t >= a && *t <= b => during.push(*ms),
            Some((a, _)) if *t < a => before.push(*ms),
            _ => {}
        }
    }
    let mut all: Vec<f64> = samples.iter().map(|s| s.1).collect();
    for v in [&mut before, &mut during, &mut all] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    let pings = pings.lock().unwrap();
    let gap = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "commit latency (request → 201), ms: before the pass p50 {:.1} p99 {:.1} (n={}); \
         during the pass p50 {:.1} p99 {:.1} max {:.1} (n={}); whole run p99 {:.1} max {:.1} (n={}, {failed} not 201)",
        percentile(&before, 0.5),
        percentile(&before, 0.99),
        before.len(),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during.last().copied().unwrap_or(f64::NAN),
        during.len(),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN),
        all.len(),
    );
    println!(
        "watchdog: {} pings, longest gap {:.2} s (WATCHDOG_USEC = 3 s)",
        pings.len(),
        gap.as_secs_f64()
    );
    // RSS slope by least squares over the samples after the first minute.
    let late: Vec<(f64, f64)> = series
        .iter()
        .filter(|s| s.0 >= 60.0)
        .map(|s| (s.0 / 3600.0, s.1 as f64 / 1024.0))
        .collect();
    let slope = if late.len() >= 3 {
        let n = late.len() as f64;
        let (sx, sy) = late.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
        let (mx, my) = (sx / n, sy / n);
        let (num, den) = late.iter().fold((0.0, 0.0), |a, p| {
            (a.0 + (p.0 - mx) * (p.1 - my), a.1 + (p.0 - mx) * (p.0 - mx))
        });
        format!("{:.2} MiB/hour", num / den)
    } else {
        "n/a (run longer than 90 s)".into()
    };
    let max = |f: fn(&(f64, u64, usize, u64)) -> u64| series.iter().map(f).max().unwrap_or(0);
    println!(
        "process: RSS max {:.1} MiB, slope {slope}; fds max {}; WAL max {:.1} MiB; stop took {stop_took:?}",
        max(|s| s.1) as f64 / 1024.0,
        max(|s| s.2 as u64),
        max(|s| s.3) as f64 / 1048576.0,
    );
    println!(
        "RESULT maintenance sources={sources} rows={rows} due={due} pass_took={took_ms} \
         commit_p99_ms={:.1} commit_max_ms={:.1} watchdog_gap_s={:.2}",
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN),
        gap.as_secs_f64()
    );
}
