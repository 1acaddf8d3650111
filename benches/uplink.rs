//! Drain benchmark: a store pre-filled with N queued readings (default
//! 1,000,000; `UPLINK_BENCH_N`) drained by the uplink to the dakkio
//! stand-in on loopback (`RecordMode::Counts`). Reports readings/s, peak RSS
//! during the drain and bytes written to disk per delivered reading
//! (`/proc/self/io` `write_bytes`, drain only), as medians of
//! `UPLINK_BENCH_RUNS` runs (default 3), beside a reference measured in the
//! same run: the stand-in's own acceptance rate with a bare reqwest client
//! posting pre-built batches of 100.
//!
//! Run: `cargo bench --bench uplink`
//! Quick check: `UPLINK_BENCH_N=20000 UPLINK_BENCH_RUNS=1 cargo bench --bench uplink`
//!
//! Peak RSS is the whole process's (the stand-in runs in it too, counting
//! points only), reset before each drain through `/proc/self/clear_refs`.

use std::path::Path;
use std::time::{Duration, Instant};

use dakkio_gateway::config::{self, ProcessEnv, StoreConfig};
use dakkio_gateway::reading::{Origin, Reading, Value, Values};
use dakkio_gateway::store;
use dakkio_gateway::telemetry::Health;
use dakkio_gateway::uplink::Uplink;
use testkit::standin::{RecordMode, Standin};
use tokio_util::sync::CancellationToken;

mod common;
use common::proc_field;

const BUCKET: &str = "507f1f77bcf86cd799439011";
const SRC: &str = "507f1f77bcf86cd799439012";
const KEY: &str = "dakkio_w_benchbenchbenchbenchbenchbench";

fn env_n(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn reading(n: i64) -> Reading {
    let mut values = Values::new();
    values.insert(
        "temperature".into(),
        Value::Number(20.0 + (n % 100) as f64 / 10.0),
    );
    values.insert("humidity".into(), Value::Number(50.0 + (n % 7) as f64));
    values.insert("pressure".into(), Value::Number(1013.25));
    Reading {
        bucket_id: BUCKET.into(),
        data_source_id: SRC.into(),
        timestamp_ms: 1_760_000_000_000 + n * 1000,
        values,
        metadata: Default::default(),
        origin: Origin::Mqtt,
        receive_time: false,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn prefill(dir: &Path, n: u64) {
    let (s, w) = store::open(&StoreConfig::default(), dir).unwrap();
    let mut pending = std::collections::VecDeque::new();
    let mut i = 0i64;
    while (i as u64) < n {
        let k = 1000.min(n as i64 - i);
        pending.push_back(s.submit((i..i + k).map(reading).collect()).await.unwrap());
        i += k;
        if pending.len() > 8 {
            pending.pop_front().unwrap().wait().await.unwrap();
        }
    }
    for p in pending {
        p.wait().await.unwrap();
    }
    drop(s);
    tokio::task::spawn_blocking(move || w.join())
        .await
        .unwrap()
        .unwrap();
}

/// One drain: (readings/s, peak RSS KiB, disk bytes per reading).
async fn drain(n: u64) -> (f64, u64, f64) {
    let dir = tempfile::tempdir().unwrap();
    prefill(dir.path(), n).await;
    let standin = Standin::builder()
        .bucket(BUCKET)
        .write_key(BUCKET, KEY)
        .quota(u64::MAX / 2)
        .record(RecordMode::Counts)
        .start()
        .await
        .unwrap();
    let text = format!(
        "[gateway]\nid = \"bench\"\n[uplink]\nurl = \"{}\"\nbatch_size = 1000\n\
         [[buckets]]\nid = \"{BUCKET}\"\nwrite_key = \"{KEY}\"\n",
        standin.url()
    );
    let config = config::parse(&text, Path::new("bench.toml"), &ProcessEnv).unwrap();
    let (store, writer) = store::open(&config.store, dir.path()).unwrap();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let io_before = proc_field("/proc/self/io", "write_bytes:");
    let started = Instant::now();
    let (uplink, _h) = Uplink::new(&config, store.clone(), Health::default()).unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(uplink.run(cancel.clone()));
    assert!(
        standin
            .wait_for_accepted(n, Duration::from_secs(3600))
            .await,
        "drain did not finish"
    );
    // Delivered means marked: wait for the cursor.
    loop {
        let s = store.reader().stats().await.unwrap();
        if s.bucket(BUCKET).is_some_and(|b| b.queued == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    cancel.cancel();
    task.await.unwrap();
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
    let written = proc_field("/proc/self/io", "write_bytes:").saturating_sub(io_before);
    let hwm = proc_field("/proc/self/status", "VmHWM:");
    (n as f64 / secs, hwm, written as f64 / n as f64)
}

/// The stand-in alone: pre-built batches of 100 posted by a bare client.
async fn reference(n: u64) -> f64 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let standin = Standin::builder()
        .bucket(BUCKET)
        .write_key(BUCKET, KEY)
        .quota(u64::MAX / 2)
        .record(RecordMode::Counts)
        .start()
        .await
        .unwrap();
    let client = reqwest::Client::builder().build().unwrap();
    let points: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            serde_json::json!({
                "dataSourceId": SRC,
                "timestamp": "2025-10-09T08:53:20.000Z",
                "values": {"temperature": 20.5, "humidity": 51, "pressure": 1013.25},
                "metadata": {"gatewayId": "bench", "readingId": i},
            })
        })
        .collect();
    let body = bytes::Bytes::from(
        serde_json::json!({"bucketId": BUCKET, "dataPoints": points}).to_string(),
    );
    let url = format!("{}/api/data/batch", standin.url());
    let started = Instant::now();
    for _ in 0..n.div_ceil(100) {
        let r = client
            .post(&url)
            .header("X-API-Key", KEY)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        r.bytes().await.unwrap();
    }
    n.div_ceil(100) as f64 * 100.0 / started.elapsed().as_secs_f64()
}

fn main() {
    let n = env_n("UPLINK_BENCH_N", 1_000_000);
    let runs = env_n("UPLINK_BENCH_RUNS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut rates, mut rss, mut bytes, mut refs) = (vec![], vec![], vec![], vec![]);
    for run in 1..=runs {
        let (rate, hwm, per) = rt.block_on(drain(n));
        let r = rt.block_on(reference(n.min(200_000)));
        println!(
            "run {run}: uplink {rate:.0} readings/s, peak RSS {:.1} MiB, {per:.1} B written/reading; \
             reference (bare client, batches of 100) {r:.0} readings/s",
            hwm as f64 / 1024.0
        );
        rates.push(rate);
        rss.push(hwm as f64 / 1024.0);
        bytes.push(per);
        refs.push(r);
    }
    println!(
        "uplink drain of {n} readings, median of {runs}: {:.0} readings/s (target >= 100000), \
         peak RSS {:.1} MiB (target <= 40), {:.1} bytes written per delivered reading; \
         reference stand-in rate {:.0} readings/s",
        median(rates),
        median(rss),
        median(bytes),
        median(refs)
    );
}
