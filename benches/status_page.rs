//! What the status page costs the gateway (`cargo bench --bench status_page`).
//!
//! The gateway binary with one bucket of 10 data sources that have sent
//! a reading every second for the last hour (36,000 readings, 3 fields,
//! ingested through `POST /api/data/batch` and delivered to the dakkio
//! stand-in), the admin key, and the page's requests over loopback as the
//! browser sends them. CPU is the gateway process's own (utime + stime from
//! `/proc`), over many repetitions, minus its idle CPU over the same time
//! (measured in the same run, before):
//! - **refresh**: what the page does every 5 s once loaded: `GET
//!   /api/status` and `POST /api/data/query` for the newest minutes
//!   (per-minute averages since the start of the last group);
//! - **first load**: `GET /`, its script and style, `GET /api/status` and
//!   the whole hour of per-minute averages for the 10 sources;
//! - reference: `GET /health` with a key (the cheapest authenticated
//!   request) and the idle process.
//!
//! `STATUS_BENCH_RUNS` runs (default 3) of `STATUS_BENCH_REFRESHES`
//! refreshes (default 400); medians of the runs are printed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::gateway::Gateway;
use testkit::standin::{RecordMode, Standin};

mod common;
use common::cpu_us;

const BUCKET: &str = "507f1f77bcf86cd799439011";
const ADMIN: &str = "dakkio_a_StatusBenchAdmin0123456789abcdef";
const WRITE: &str = "dakkio_w_StatusBenchWrite0123456789abcdef";
const SOURCES: usize = 10;
const HOUR_MS: i64 = 3_600_000;

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

fn source(i: usize) -> String {
    format!("507f1f77bcf86cd7994390{:02x}", 0xa0 + i)
}

fn iso(ms: i64) -> String {
    dakkio_gateway::reading::format_timestamp(ms)
}

struct Page {
    http: reqwest::Client,
    base: String,
}

impl Page {
    async fn get(&self, path: &str, key: bool) -> usize {
        let mut rb = self.http.get(format!("{}{path}", self.base));
        if key {
            rb = rb.header("X-API-Key", ADMIN);
        }
        let r = rb.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.bytes().await.unwrap().len()
    }

    async fn query(&self, from_ms: i64, to_ms: i64) -> usize {
        let r = self
            .http
            .post(format!("{}/api/data/query", self.base))
            .header("X-API-Key", ADMIN)
            .json(&json!({
                "bucketId": BUCKET,
                "filters": {"startTime": iso(from_ms), "endTime": iso(to_ms), "limit": 1000, "offset": 0},
                "aggregation": "avg",
                "groupBy": "minute",
            }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "query: {}", r.status());
        let v: Value = r.json().await.unwrap();
        v["data"].as_array().map_or(0, Vec::len)
    }

    /// What the page does every 5 s once loaded.
    async fn refresh(&self) -> (usize, usize) {
        let now = dakkio_gateway::reading::now_ms();
        let status = self.get("/api/status", true).await;
        let from = (now - 60_000) / 60_000 * 60_000;
        let groups = self.query(from, now + 60_000).await;
        (status, groups)
    }

    async fn first_load(&self) -> usize {
        let now = dakkio_gateway::reading::now_ms();
        let mut bytes = 0;
        for path in ["/", "/status-page/app.js", "/status-page/app.css"] {
            bytes += self.get(path, false).await;
        }
        bytes += self.get("/api/status", true).await;
        let groups = self.query(now - HOUR_MS, now + 60_000).await;
        assert!(groups >= 60 * SOURCES, "{groups} groups");
        bytes
    }
}

/// CPU µs of `pid` per repetition of `f`, idle rate subtracted.
async fn cpu_per<F, Fut>(pid: u32, idle_us_per_s: f64, n: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (c0, t0) = (cpu_us(pid), Instant::now());
    for _ in 0..n {
        f().await;
    }
    let (c1, dt) = (cpu_us(pid), t0.elapsed());
    ((c1 - c0) as f64 - idle_us_per_s * dt.as_secs_f64()).max(0.0) / n as f64
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runs = env_usize("STATUS_BENCH_RUNS", 3).max(1);
    let refreshes = env_usize("STATUS_BENCH_REFRESHES", 400).max(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let standin = rt.block_on(async {
        Standin::builder()
            .bucket(BUCKET)
            .write_key(BUCKET, WRITE)
            .record(RecordMode::Counts)
            .start()
            .await
            .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[buckets]]\nid = \"{BUCKET}\"\nname = \"bench\"\nwrite_key = \"{WRITE}\"\n\
         [uplink]\nurl = \"{}\"\n\
         [api]\nlisten = \"127.0.0.1:8080\"\nadmin_key_env = \"STATUS_BENCH_ADMIN\"\n",
        standin.url()
    );
    let g = Gateway::start_with_env(dir.path(), &config, &[("STATUS_BENCH_ADMIN", ADMIN)]);
    g.wait_ready();
    let line = g
        .wait_for_log("local API listening", testkit::EVENT_TIMEOUT)
        .expect("the API listens");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .to_owned();
    let pid = g.pid() as u32;
    let page = Page {
        http: reqwest::Client::new(),
        base: format!("http://{addr}"),
    };

    rt.block_on(async {
        // An hour of 1 Hz readings from 10 sources, in time order.
        let now = dakkio_gateway::reading::now_ms();
        let points: Vec<Value> = (0..HOUR_MS / 1000)
            .flat_map(|s| {
                (0..SOURCES).map(move |i| {
                    let x = s as f64 / 60.0 + i as f64;
                    json!({
                        "dataSourceId": source(i),
                        "timestamp": iso(now - HOUR_MS + s * 1000),
                        "values": {"temperature": 20.0 + x.sin(), "humidity": 50.0 + x.cos(), "pressure": 1013.25},
                    })
                })
            })
            .collect();
        let total = points.len();
        for chunk in points.chunks(1000) {
            let r = page
                .http
                .post(format!("{}/api/data/batch", page.base))
                .header("X-API-Key", ADMIN)
                .json(&json!({"bucketId": BUCKET, "dataPoints": chunk}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        assert!(
            standin
                .wait_for_accepted(total as u64, Duration::from_secs(120))
                .await,
            "not delivered"
        );
        println!(
            "status page bench: {SOURCES} data sources, {total} readings in the last hour (delivered), {refreshes} refreshes per run, {runs} runs"
        );
        let (status_bytes, groups) = page.refresh().await;
        let load_bytes = page.first_load().await;
        println!(
            "  answer sizes: /api/status {status_bytes} B, a refresh's query {groups} groups; first load {load_bytes} B + the hour's groups"
        );

        let (mut idle, mut health, mut refresh, mut status_only, mut load) =
            (vec![], vec![], vec![], vec![], vec![]);
        for run in 0..runs {
            // Idle: nothing asks for 5 s.
            let (c0, t0) = (cpu_us(pid), Instant::now());
            tokio::time::sleep(Duration::from_secs(5)).await;
            let idle_rate = (cpu_us(pid) - c0) as f64 / t0.elapsed().as_secs_f64();
            let h = cpu_per(pid, idle_rate, refreshes, || async {
                page.get("/health", true).await;
            })
            .await;
            let s = cpu_per(pid, idle_rate, refreshes, || async {
                page.get("/api/status", true).await;
            })
            .await;
            let r = cpu_per(pid, idle_rate, refreshes, || async {
                page.refresh().await;
            })
            .await;
            let l = cpu_per(pid, idle_rate, (refreshes / 10).max(5), || async {
                page.first_load().await;
            })
            .await;
            println!(
                "  run {}: idle {:.2} ms CPU/s; per request: GET /health {:.3} ms, GET /api/status {:.3} ms, refresh {:.3} ms, first load {:.3} ms",
                run + 1,
                idle_rate / 1000.0,
                h / 1000.0,
                s / 1000.0,
                r / 1000.0,
                l / 1000.0
            );
            idle.push(idle_rate / 1000.0);
            health.push(h / 1000.0);
            status_only.push(s / 1000.0);
            refresh.push(r / 1000.0);
            load.push(l / 1000.0);
        }
        println!("medians of {runs} runs (gateway CPU, idle subtracted):");
        println!("  reference: idle {:.2} ms CPU per s; GET /health with a key {:.3} ms", median(idle), median(health));
        println!("  GET /api/status                     {:.3} ms", median(status_only));
        println!("  refresh (status + newest minutes)   {:.3} ms  (budget 5 ms)", median(refresh));
        println!("  first load (page + status + 1 h)    {:.3} ms", median(load));
    });
}
