//! Store ingest benchmark (`cargo bench --bench store`).
//!
//! Commits N readings of three numeric values (default 1,000,000; set
//! `BENCH_READINGS`) and reports readings/s, bytes written to disk per
//! reading (from `/proc/self/io`, checkpoints included: the store is closed,
//! which checkpoints the WAL, before the counter is read) and the peak RSS of
//! the process. Each measurement runs in a child process of its own so that
//! RSS and I/O counters belong to it alone; runs alternate between the
//! variants and the medians of `BENCH_RUNS` (default 3) runs are printed.
//!
//! Variants:
//! - `gateway-full`: the gateway's store, `synchronous=FULL`, groups of 1000;
//! - `bare-full-1000`: the reference — a bare rusqlite insert loop into one
//!   table, FULL, 1000 rows per transaction, in the same run;
//! - `bare-normal-1000`: the same with `synchronous=NORMAL`.
//!
//! The database files go to `BENCH_DIR` (default `target/bench-store`), which
//! must be on a real disk: on tmpfs the write counter reads zero.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dakkio_gateway::config::{StoreConfig, Synchronous};
use dakkio_gateway::reading::{Origin, Reading, Value, Values};
use dakkio_gateway::store;

mod common;
use common::proc_field;

const VARIANTS: [&str; 3] = ["gateway-full", "bare-full-1000", "bare-normal-1000"];

fn main() {
    if let Ok(variant) = std::env::var("BENCH_STORE_CHILD") {
        child(&variant);
        return;
    }
    let n: usize = env_or("BENCH_READINGS", 1_000_000);
    let runs: usize = env_or("BENCH_RUNS", 3);
    let dir =
        PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-store".into()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "store ingest: {n} readings of 3 values, {runs} runs per variant, files in {}",
        dir.display()
    );
    let mut results: Vec<(String, Vec<Sample>)> = VARIANTS
        .iter()
        .map(|v| (v.to_string(), Vec::new()))
        .collect();
    for run in 0..runs {
        for (variant, samples) in results.iter_mut() {
            let run_dir = dir.join(format!("{variant}-{run}"));
            let _ = std::fs::remove_dir_all(&run_dir);
            std::fs::create_dir_all(&run_dir).unwrap();
            let out = Command::new(std::env::current_exe().unwrap())
                .env("BENCH_STORE_CHILD", variant.as_str())
                .env("BENCH_STORE_DIR", &run_dir)
                .env("BENCH_READINGS", n.to_string())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8_lossy(&out.stdout);
            let s = Sample::parse(line.trim());
            eprintln!("  run {run} {variant:<18} {:>10.0} readings/s {:>6.0} B/reading {:>6.1} MiB peak RSS", s.rate, s.bytes_per_reading, s.peak_rss_mib);
            samples.push(s);
            let _ = std::fs::remove_dir_all(&run_dir);
        }
    }
    println!(
        "{:<18} {:>14} {:>14} {:>14}",
        "variant", "readings/s", "bytes/reading", "peak RSS MiB"
    );
    for (variant, samples) in &results {
        println!(
            "{variant:<18} {:>14.0} {:>14.0} {:>14.1}",
            median(samples.iter().map(|s| s.rate)),
            median(samples.iter().map(|s| s.bytes_per_reading)),
            median(samples.iter().map(|s| s.peak_rss_mib)),
        );
    }
}

struct Sample {
    rate: f64,
    bytes_per_reading: f64,
    peak_rss_mib: f64,
}

impl Sample {
    fn parse(s: &str) -> Sample {
        let v: Vec<f64> = s.split(' ').map(|x| x.parse().unwrap()).collect();
        Sample {
            rate: v[0],
            bytes_per_reading: v[1],
            peak_rss_mib: v[2],
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn written() -> u64 {
    proc_field("/proc/self/io", "write_bytes:")
}

fn values(i: usize) -> Values {
    let mut v = Values::new();
    v.insert(
        "temperature".into(),
        Value::Number(20.0 + (i % 100) as f64 / 10.0),
    );
    v.insert("humidity".into(), Value::Number(40.0 + (i % 37) as f64));
    v.insert("pressure".into(), Value::Number(1013.25));
    v
}

const BUCKET: &str = "507f1f77bcf86cd799439011";
const SOURCE: &str = "507f1f77bcf86cd799439012";
const T0: i64 = 1_767_225_600_000;

/// Runs one variant and prints `rate bytes_per_reading peak_rss_mib`.
fn child(variant: &str) {
    let dir = PathBuf::from(std::env::var("BENCH_STORE_DIR").unwrap());
    let n: usize = env_or("BENCH_READINGS", 1_000_000);
    let before = written();
    let elapsed = match variant {
        "gateway-full" => gateway(&dir, n),
        "bare-full-1000" => bare(&dir, n, "FULL"),
        "bare-normal-1000" => bare(&dir, n, "NORMAL"),
        other => panic!("unknown variant {other}"),
    };
    let bytes = written() - before;
    let rss = proc_field("/proc/self/status", "VmHWM:") as f64 / 1024.0;
    println!(
        "{} {} {}",
        n as f64 / elapsed.as_secs_f64(),
        bytes as f64 / n as f64,
        rss
    );
}

fn gateway(dir: &Path, n: usize) -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = StoreConfig {
            synchronous: Synchronous::Full,
            commit_max_readings: 1000,
            ..StoreConfig::default()
        };
        let (h, writer) = store::open(&config, dir).unwrap();
        let start = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        let mut i = 0;
        while i < n {
            let batch: Vec<Reading> = (i..(i + 1000).min(n))
                .map(|k| Reading {
                    bucket_id: BUCKET.into(),
                    data_source_id: SOURCE.into(),
                    timestamp_ms: T0 + k as i64 * 1000,
                    values: values(k),
                    metadata: Default::default(),
                    origin: Origin::Mqtt,
                    receive_time: false,
                })
                .collect();
            i += batch.len();
            pending.push_back(h.submit(batch).await.unwrap());
            if pending.len() > 4 {
                pending.pop_front().unwrap().wait().await.unwrap();
            }
        }
        for p in pending {
            p.wait().await.unwrap();
        }
        let elapsed = start.elapsed();
        let stats = h.reader().stats().await.unwrap();
        assert_eq!(stats.bucket(BUCKET).unwrap().accepted as usize, n);
        drop(h);
        // Closing checkpoints the WAL: its writes count too.
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap()
            .unwrap();
        elapsed
    })
}

fn bare(dir: &Path, n: usize, sync: &str) -> Duration {
    let mut c = rusqlite::Connection::open(dir.join("bare.db")).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};
         CREATE TABLE readings (seq INTEGER PRIMARY KEY, bucket INTEGER, source INTEGER,
                                ts INTEGER, vals TEXT);"
    ))
    .unwrap();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO readings (bucket, source, ts, vals) VALUES (1, 1, ?1, ?2)",
                )
                .unwrap();
            for k in i..(i + 1000).min(n) {
                let vals = serde_json::to_string(&values(k)).unwrap();
                st.execute(rusqlite::params![T0 + k as i64 * 1000, vals])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        i += 1000;
    }
    let elapsed = start.elapsed();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    elapsed
}
