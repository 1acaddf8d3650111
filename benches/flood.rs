//! Flood benchmark (issue 12, point 5): the uplink's deliveries per second
//! for every bucket while a read key of one bucket keeps sending
//! aggregations to the local API, beside the same drain without the flood
//! measured in the same run. Three buckets of `FLOOD_BENCH_N` queued
//! readings each (default 50,000); bucket A also holds `FLOOD_BENCH_HISTORY`
//! delivered readings (default 200,000) for the aggregations to read.
//! `FLOOD_BENCH_CLIENTS` (default 16) clients send `avg` by minute over all
//! of A's data, each hanging up after 2 s, without pause. Medians of
//! `FLOOD_BENCH_RUNS` runs (default 3).
//!
//! Run: `cargo bench --bench flood`
//! Quick check: `FLOOD_BENCH_N=5000 FLOOD_BENCH_HISTORY=20000 FLOOD_BENCH_RUNS=1 cargo bench --bench flood`
//!
//! Each bucket's rate is its queue over the time until its queue is empty
//! (watched through a connection of its own, outside the gateway's read
//! pool); the figure kept is the slowest bucket's.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dakkio_gateway::api::Api;
use dakkio_gateway::config::{self, key_sha256, ProcessEnv};
use dakkio_gateway::reading::{Origin, Reading, Value, Values};
use dakkio_gateway::store::{self, StoreHandle};
use dakkio_gateway::telemetry::Health;
use dakkio_gateway::uplink::Uplink;
use testkit::standin::{RecordMode, Standin};
use tokio_util::sync::CancellationToken;

const BUCKETS: [&str; 3] = [
    "507f1f77bcf86cd799439011",
    "507f1f77bcf86cd799439021",
    "507f1f77bcf86cd799439031",
];
const SRC: &str = "507f1f77bcf86cd799439012";
/// One write key per bucket (the stand-in knows a key for one bucket).
const KEYS: [&str; 3] = [
    "dakkio_w_floodbenchfloodbenchfloodbenchA",
    "dakkio_w_floodbenchfloodbenchfloodbenchB",
    "dakkio_w_floodbenchfloodbenchfloodbenchC",
];
const ADMIN: &str = "dakkio_a_FloodBenchAdmin0123456789abcdefXYZ";

fn env_n(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn reading(bucket: &str, n: i64) -> Reading {
    let mut values = Values::new();
    values.insert(
        "temperature".into(),
        Value::Number(20.0 + (n % 100) as f64 / 10.0),
    );
    values.insert("humidity".into(), Value::Number(50.0 + (n % 7) as f64));
    Reading {
        bucket_id: bucket.into(),
        data_source_id: SRC.into(),
        timestamp_ms: 1_700_000_000_000 + n * 1000,
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

async fn append(s: &StoreHandle, bucket: &str, from: i64, n: i64) {
    let mut i = from;
    while i < from + n {
        let k = 1000.min(from + n - i);
        s.append((i..i + k).map(|j| reading(bucket, j)).collect())
            .await
            .unwrap();
        i += k;
    }
}

/// History for A (delivered), then `n` queued readings per bucket.
async fn prefill(dir: &Path, n: u64, history: u64) {
    let (s, w) = store::open(&config::StoreConfig::default(), dir).unwrap();
    append(&s, BUCKETS[0], 0, history as i64).await;
    if history > 0 {
        let last = s.reader().stats().await.unwrap().buckets[0].accepted;
        s.mark_delivered(BUCKETS[0], last, vec![])
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
    }
    for b in BUCKETS {
        append(&s, b, history as i64, n as i64).await;
    }
    drop(s);
    tokio::task::spawn_blocking(move || w.join())
        .await
        .unwrap()
        .unwrap();
}

/// One drain; with `flood`, clients send aggregations meanwhile. Returns
/// each bucket's readings/s and the queries answered.
async fn drain(n: u64, history: u64, flood: usize) -> (Vec<f64>, u64) {
    let dir = tempfile::tempdir().unwrap();
    prefill(dir.path(), n, history).await;
    let mut sb = Standin::builder();
    for (b, k) in BUCKETS.iter().zip(KEYS) {
        sb = sb.bucket(*b).write_key(*b, k);
    }
    let standin = sb
        .quota(u64::MAX / 2)
        .record(RecordMode::Counts)
        .start()
        .await
        .unwrap();
    let mut text = format!(
        "[gateway]\nid = \"bench\"\n[uplink]\nurl = \"{}\"\nbatch_size = 1000\n\
         [api]\nlisten = \"127.0.0.1:0\"\nadmin_key_sha256 = \"{}\"\n",
        standin.url(),
        key_sha256(ADMIN)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    for (b, k) in BUCKETS.iter().zip(KEYS) {
        text.push_str(&format!("[[buckets]]\nid = \"{b}\"\nwrite_key = \"{k}\"\n"));
    }
    let config = Arc::new(config::parse(&text, Path::new("bench.toml"), &ProcessEnv).unwrap());
    let (store, writer) = store::open(&config.store, dir.path()).unwrap();
    let cancel = CancellationToken::new();
    let api = Api::new(config.clone(), store.clone(), Health::default(), None)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let api_task = tokio::spawn(api.serve(listener, cancel.clone()));
    let http = reqwest::Client::new();
    let v: serde_json::Value = http
        .post(format!("{url}/api/buckets/{}/keys", BUCKETS[0]))
        .header("X-API-Key", ADMIN)
        .json(&serde_json::json!({"type": "read", "name": "flood"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let read_key = v["apiKey"]["key"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    for _ in 0..flood {
        let (http, url, key) = (http.clone(), url.clone(), read_key.clone());
        let (stop, answered) = (stop.clone(), answered.clone());
        flooders.push(tokio::spawn(async move {
            let body = serde_json::json!({
                "bucketId": BUCKETS[0], "aggregation": "avg", "groupBy": "minute"
            });
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(format!("{url}/api/data/query"))
                    .header("X-API-Key", &key)
                    .timeout(Duration::from_secs(2))
                    .json(&body)
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.bytes().await.is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    if flood > 0 {
        // Let the flood take hold first.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let started = Instant::now();
    let (uplink, _h) = Uplink::new(&config, store.clone(), Health::default()).unwrap();
    let up_cancel = CancellationToken::new();
    let up_task = tokio::spawn(uplink.run(up_cancel.clone()));
    // Each bucket's queue watched through a connection of its own.
    let path = store.path().to_owned();
    let done = tokio::task::spawn_blocking(move || {
        let r = store::Reader::open_existing(&path).unwrap();
        let mut done: Vec<Option<f64>> = vec![None; BUCKETS.len()];
        while done.iter().any(Option::is_none) {
            let s = r.stats_blocking().unwrap();
            for (i, b) in BUCKETS.iter().enumerate() {
                if done[i].is_none() && s.bucket(b).is_some_and(|b| b.queued == 0) {
                    done[i] = Some(started.elapsed().as_secs_f64());
                }
            }
            assert!(started.elapsed() < Duration::from_secs(3600), "no drain");
            std::thread::sleep(Duration::from_millis(20));
        }
        done.into_iter().map(Option::unwrap).collect::<Vec<f64>>()
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.await.unwrap();
    }
    up_cancel.cancel();
    up_task.await.unwrap();
    cancel.cancel();
    let _ = api_task.await;
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
    (
        done.iter().map(|t| n as f64 / t).collect(),
        answered.load(Ordering::Relaxed),
    )
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = env_n("FLOOD_BENCH_N", 50_000);
    let history = env_n("FLOOD_BENCH_HISTORY", 200_000);
    let clients = env_n("FLOOD_BENCH_CLIENTS", 16) as usize;
    let runs = env_n("FLOOD_BENCH_RUNS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut quiet, mut flooded, mut kept) = (vec![], vec![], vec![]);
    for run in 1..=runs {
        let (q, _) = rt.block_on(drain(n, history, 0));
        let (f, answered) = rt.block_on(drain(n, history, clients));
        let (qmin, fmin) = (
            q.iter().copied().fold(f64::MAX, f64::min),
            f.iter().copied().fold(f64::MAX, f64::min),
        );
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "run {run}: deliveries/s per bucket (A / B / C) without flood {}, with {clients} \
             clients flooding A's aggregations {} ({answered} aggregations answered); \
             slowest bucket kept {:.0} %",
            fmt(&q),
            fmt(&f),
            fmin / qmin * 100.0
        );
        quiet.push(qmin);
        flooded.push(fmin);
        kept.push(fmin / qmin);
    }
    println!(
        "flood, {n} queued readings in each of 3 buckets, A with {history} of history, \
         median of {runs}: slowest bucket {:.0} deliveries/s without the flood (reference), \
         {:.0} with {clients} clients flooding aggregations: {:.0} % kept (target >= 90 %)",
        median(quiet),
        median(flooded),
        median(kept) * 100.0
    );
}
