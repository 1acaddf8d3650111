//! The local dakkio API over real HTTP on loopback with a real SQLite store:
//! the authorisation matrix, key lifecycle, canary key, ingest → query,
//! pagination, aggregations, downsampling, validation, limits, throttling,
//! TLS and dakkio's documented curl examples. In-process (`Api::serve` on
//! `127.0.0.1:0`) except where the binary's logs are needed.

use std::sync::Arc;
use std::time::Duration;

use dakkio_gateway::api::Api;
use dakkio_gateway::config::{self, key_sha256};
use dakkio_gateway::store::{self, StoreHandle, WriterThread};
use dakkio_gateway::telemetry::Health;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::gateway::Gateway;
use crate::support::EVENT_TIMEOUT;

const A: &str = "507f1f77bcf86cd799439011";
const B: &str = "507f1f77bcf86cd7994390bb";
const UNKNOWN: &str = "507f1f77bcf86cd7994390ff";
const SRC: &str = "507f1f77bcf86cd799439012";
const SRC2: &str = "507f1f77bcf86cd799439013";
const ADMIN: &str = "dakkio_a_TestAdminKey0123456789abcdefXYZ";

fn hex(h: [u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An API on `127.0.0.1:0` over a store in a temp dir.
struct Local {
    url: String,
    http: reqwest::Client,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    store: Option<StoreHandle>,
    writer: Option<WriterThread>,
    dir: tempfile::TempDir,
}

impl Local {
    async fn start(extra_api: &str) -> Local {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[gateway]\nid = \"t\"\ndata_dir = \"{}\"\n\
             [[buckets]]\nid = \"{A}\"\nname = \"a\"\n\
             [[buckets]]\nid = \"{B}\"\nname = \"b\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\nadmin_key_sha256 = \"{}\"\n{extra_api}\n",
            dir.path().join("data").display(),
            hex(key_sha256(ADMIN))
        );
        let cfg = config::parse(&text, &dir.path().join("g.toml"), &config::ProcessEnv)
            .unwrap_or_else(|e| panic!("{e}"));
        let (sc, dd) = (cfg.store.clone(), cfg.gateway.data_dir.clone());
        let (store, writer) = tokio::task::spawn_blocking(move || store::open(&sc, &dd))
            .await
            .unwrap()
            .unwrap();
        let api = Api::new(Arc::new(cfg), store.clone(), Health::default(), None)
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move { api.serve(listener, c).await.unwrap() });
        Local {
            url,
            http: reqwest::Client::new(),
            cancel,
            task: Some(task),
            store: Some(store),
            writer: Some(writer),
            dir,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let r = self.raw(method, path, key, body).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut rb = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.url),
        );
        if let Some(k) = key {
            rb = rb.header("X-API-Key", k);
        }
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        rb.send().await.unwrap()
    }

    async fn create_key(&self, bucket: &str, kind: &str) -> (String, String) {
        let (s, v) = self
            .call(
                "POST",
                &format!("/api/buckets/{bucket}/keys"),
                Some(ADMIN),
                Some(json!({"type": kind, "name": format!("{kind} key")})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        (
            v["apiKey"]["_id"].as_str().unwrap().to_owned(),
            v["apiKey"]["key"].as_str().unwrap().to_owned(),
        )
    }

    async fn batch(&self, bucket: &str, points: Vec<Value>) {
        for chunk in points.chunks(1000) {
            let (s, v) = self
                .call(
                    "POST",
                    "/api/data/batch",
                    Some(ADMIN),
                    Some(json!({"bucketId": bucket, "dataPoints": chunk})),
                )
                .await;
            assert_eq!(s, 201, "{v}");
        }
    }

    async fn query(&self, body: Value) -> Value {
        let (s, v) = self
            .call("POST", "/api/data/query", Some(ADMIN), Some(body))
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    fn db_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for suffix in ["", "-wal"] {
            let p = format!(
                "{}{suffix}",
                self.dir
                    .path()
                    .join("data")
                    .join(store::FILE_NAME)
                    .display()
            );
            out.extend(std::fs::read(p).unwrap_or_default());
        }
        out
    }

    async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        drop(self.store.take());
        if let Some(w) = self.writer.take() {
            tokio::task::spawn_blocking(move || w.join())
                .await
                .unwrap()
                .unwrap();
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Equal as JSON, numbers compared by value.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_json(v, w))
        }
        _ => a == b,
    }
}

fn err(kind: &str, message: &str) -> Value {
    json!({"error": kind, "message": message})
}

// ------------------------------------------------------------- the matrix

#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    NoKey,
    Malformed,
    Deleted,
    Admin,
    WriteA,
    ReadA,
    WriteB,
    ReadB,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ep {
    Ingest,
    Batch,
    Query,
    ListBuckets,
    CreateBucket,
    GetBucket,
    DeleteBucket,
    Sources,
    CreateSource,
    ListKeys,
    CreateKey,
    DeleteKey,
    Overview,
    BucketAnalytics,
    Health,
    Metrics,
}

const EPS: &[Ep] = &[
    Ep::Ingest,
    Ep::Batch,
    Ep::Query,
    Ep::ListBuckets,
    Ep::CreateBucket,
    Ep::GetBucket,
    Ep::DeleteBucket,
    Ep::Sources,
    Ep::CreateSource,
    Ep::ListKeys,
    Ep::CreateKey,
    Ep::DeleteKey,
    Ep::Overview,
    Ep::BucketAnalytics,
    Ep::Health,
    Ep::Metrics,
];

const CALLERS: &[Caller] = &[
    Caller::NoKey,
    Caller::Malformed,
    Caller::Deleted,
    Caller::Admin,
    Caller::WriteA,
    Caller::ReadA,
    Caller::WriteB,
    Caller::ReadB,
];

fn request(ep: Ep, bucket: &str) -> (&'static str, String, Option<Value>) {
    let point = json!({"dataSourceId": SRC, "values": {"t": 1.5}});
    match ep {
        Ep::Ingest => (
            "POST",
            "/api/data".into(),
            Some(json!({"bucketId": bucket, "dataSourceId": SRC, "values": {"t": 1.5}})),
        ),
        Ep::Batch => (
            "POST",
            "/api/data/batch".into(),
            Some(json!({"bucketId": bucket, "dataPoints": [point.clone(), point]})),
        ),
        Ep::Query => (
            "POST",
            "/api/data/query".into(),
            Some(json!({"bucketId": bucket, "filters": {"limit": 1}})),
        ),
        Ep::ListBuckets => ("GET", "/api/buckets".into(), None),
        Ep::CreateBucket => ("POST", "/api/buckets".into(), Some(json!({"name": "x"}))),
        Ep::GetBucket => ("GET", format!("/api/buckets/{bucket}"), None),
        Ep::DeleteBucket => ("DELETE", format!("/api/buckets/{bucket}"), None),
        Ep::Sources => ("GET", format!("/api/buckets/{bucket}/sources"), None),
        Ep::CreateSource => (
            "POST",
            format!("/api/buckets/{bucket}/sources"),
            Some(json!({"name": "matrix", "schema": {"t": {"type": "number"}}})),
        ),
        Ep::ListKeys => ("GET", format!("/api/buckets/{bucket}/keys"), None),
        Ep::CreateKey => (
            "POST",
            format!("/api/buckets/{bucket}/keys"),
            Some(json!({"type": "read", "label": "matrix"})),
        ),
        Ep::DeleteKey => (
            "DELETE",
            format!("/api/buckets/{bucket}/keys/aaaaaaaaaaaaaaaaaaaaaaaa"),
            None,
        ),
        Ep::Overview => ("GET", "/api/analytics/overview".into(), None),
        Ep::BucketAnalytics => (
            "GET",
            format!("/api/analytics/buckets/{bucket}?period=24h"),
            None,
        ),
        Ep::Health => ("GET", "/health".into(), None),
        Ep::Metrics => ("GET", "/metrics".into(), None),
    }
}

/// What each cell must answer: the status, and the exact error body or the
/// member a success body must have.
enum Want {
    Ok(u16, &'static str),
    Err(u16, Value),
}

fn expected(ep: Ep, caller: Caller, bucket: &str) -> Want {
    use Caller::*;
    // `/health`'s status is open; a key that is given must be valid.
    if matches!(ep, Ep::Health) && !matches!(caller, Malformed | Deleted) {
        return Want::Ok(200, "status");
    }
    if matches!(caller, NoKey | Malformed | Deleted) {
        return Want::Err(401, err("Unauthorized", "Invalid or missing API key"));
    }
    // `/metrics` needs a key by default (`api.metrics_auth = "key"`).
    if matches!(ep, Ep::Metrics) {
        return Want::Ok(200, "");
    }
    let key_bucket = match caller {
        WriteA | ReadA => Some(A),
        WriteB | ReadB => Some(B),
        _ => None,
    };
    let admin_only = |msg: &'static str| -> Option<Want> {
        (caller != Admin).then(|| Want::Err(403, err("Forbidden", msg)))
    };
    let forbidden = match ep {
        Ep::Ingest | Ep::Batch => matches!(caller, ReadA | ReadB).then(|| {
            Want::Err(
                403,
                err("Forbidden", "Only Admin and Write keys can ingest data"),
            )
        }),
        Ep::CreateSource => matches!(caller, ReadA | ReadB).then(|| {
            Want::Err(
                403,
                err(
                    "Forbidden",
                    "Only Admin and Write keys can create data sources",
                ),
            )
        }),
        Ep::ListBuckets => admin_only("Only Admin keys can list buckets"),
        Ep::CreateBucket => admin_only("Only Admin keys can create buckets"),
        Ep::GetBucket => admin_only("Only Admin keys can access bucket details"),
        Ep::DeleteBucket => admin_only("Only Admin keys can delete buckets"),
        Ep::ListKeys => admin_only("Only Admin keys can list API keys"),
        Ep::CreateKey => admin_only("Only Admin keys can create API keys"),
        Ep::DeleteKey => admin_only("Only Admin keys can delete API keys"),
        Ep::Overview => admin_only("Only Admin keys can access organization analytics"),
        _ => None,
    };
    if let Some(w) = forbidden {
        return w;
    }
    let managed = err(
        "Forbidden",
        "Buckets are managed in dakkio; this gateway serves the buckets listed in its \
         configuration (`[[buckets]]`)",
    );
    match ep {
        Ep::ListBuckets => return Want::Ok(200, "buckets"),
        Ep::Overview => return Want::Ok(200, "overview"),
        Ep::CreateBucket => return Want::Err(403, managed),
        _ => {}
    }
    if key_bucket.is_some_and(|k| k != bucket) {
        return Want::Err(
            403,
            err("Forbidden", "API key does not have access to this bucket"),
        );
    }
    if bucket == UNKNOWN {
        return Want::Err(404, err("Not Found", "Bucket not found"));
    }
    match ep {
        Ep::Ingest => Want::Ok(201, "dataPoint"),
        Ep::Batch => Want::Ok(201, "dataPointIds"),
        Ep::Query => Want::Ok(200, "data"),
        Ep::GetBucket => Want::Ok(200, "bucket"),
        Ep::DeleteBucket => Want::Err(403, managed),
        Ep::Sources => Want::Ok(200, "dataSources"),
        Ep::CreateSource => Want::Ok(201, "dataSource"),
        Ep::ListKeys => Want::Ok(200, "apiKeys"),
        Ep::CreateKey => Want::Ok(201, "apiKey"),
        Ep::DeleteKey => Want::Err(404, err("Not Found", "API key not found")),
        Ep::BucketAnalytics => Want::Ok(200, "analytics"),
        _ => unreachable!("{ep:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorisation_matrix_every_endpoint_key_and_bucket() {
    let mut api = Local::start("auth_failures_per_minute = 1000000").await;
    let (_, write_a) = api.create_key(A, "write").await;
    let (_, read_a) = api.create_key(A, "read").await;
    let (_, write_b) = api.create_key(B, "write").await;
    let (_, read_b) = api.create_key(B, "read").await;
    let (deleted_id, deleted) = api.create_key(A, "write").await;
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/api/buckets/{A}/keys/{deleted_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let key_of = |c: Caller| -> Option<String> {
        match c {
            Caller::NoKey => None,
            Caller::Malformed => Some("not-a-dakkio-key".into()),
            Caller::Deleted => Some(deleted.clone()),
            Caller::Admin => Some(ADMIN.into()),
            Caller::WriteA => Some(write_a.clone()),
            Caller::ReadA => Some(read_a.clone()),
            Caller::WriteB => Some(write_b.clone()),
            Caller::ReadB => Some(read_b.clone()),
        }
    };
    let mut cells = 0;
    let mut failures = Vec::new();
    for &ep in EPS {
        for &caller in CALLERS {
            for bucket in [A, B, UNKNOWN] {
                let (method, path, body) = request(ep, bucket);
                let key = key_of(caller);
                let (status, got) = api.call(method, &path, key.as_deref(), body).await;
                cells += 1;
                let ok = match expected(ep, caller, bucket) {
                    Want::Err(s, body) => status == s && got == body,
                    Want::Ok(s, member) => {
                        status == s && (member.is_empty() || !got[member].is_null())
                    }
                };
                if !ok {
                    failures.push(format!("{ep:?} {caller:?} {bucket}: {status} {got}"));
                }
            }
        }
    }
    assert_eq!(cells, EPS.len() * CALLERS.len() * 3);
    assert!(
        failures.is_empty(),
        "{} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    api.stop().await;
}

// ------------------------------------------------------------- keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lifecycle_plaintext_once_hash_only_and_deleted_means_401() {
    let mut api = Local::start("").await;
    let resp = api
        .raw(
            "POST",
            &format!("/api/buckets/{A}/keys"),
            Some(ADMIN),
            Some(json!({"name": "Living Room Sensor", "type": "write"})),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let v: Value = resp.json().await.unwrap();
    let key = v["apiKey"]["key"].as_str().unwrap().to_owned();
    let id = v["apiKey"]["_id"].as_str().unwrap().to_owned();
    assert_eq!(v["message"], "API key created successfully");
    assert!(key.starts_with("dakkio_w_") && key.len() >= 9 + 32, "{key}");
    assert!(key[9..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(id.len(), 24);

    // Works, for its bucket only.
    let (s, v) = api
        .call(
            "POST",
            "/api/data",
            Some(&key),
            Some(json!({"bucketId": A, "dataSourceId": SRC, "values": {"t": 1}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // Listed by prefix only, with lastUsedAt, never the key.
    let (s, list) = api
        .call("GET", &format!("/api/buckets/{A}/keys"), Some(ADMIN), None)
        .await;
    assert_eq!(s, 200);
    let text = list.to_string();
    assert!(!text.contains(&key), "{text}");
    let k = &list["apiKeys"][0];
    assert_eq!(k["keyPrefix"], format!("{}...", &key[..13]));
    assert_eq!(k["name"], "Living Room Sensor");
    assert_eq!(k["type"], "write");
    assert!(k["lastUsedAt"].is_string(), "{k}");

    // Only the hash is in the database.
    assert!(!contains(&api.db_bytes(), &key));
    assert!(!contains(&api.db_bytes(), &key[13..]));

    // Deleted → the next request is 401.
    let (s, v) = api
        .call(
            "DELETE",
            &format!("/api/buckets/{A}/keys/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"message": "API key deleted successfully",
               "deletedKey": {"_id": id, "name": "Living Room Sensor", "type": "write"}})
    );
    let (s, v) = api
        .call(
            "POST",
            "/api/data/query",
            Some(&key),
            Some(json!({"bucketId": A})),
        )
        .await;
    assert_eq!(
        (s, v),
        (401, err("Unauthorized", "Invalid or missing API key"))
    );
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/api/buckets/{A}/keys/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, 404);
    api.stop().await;
    let db = std::fs::read(api.dir.path().join("data").join(store::FILE_NAME)).unwrap();
    assert!(!contains(&db, &key));
}

/// Issued keys survive a restart (hash in `api_keys`) and `lastUsedAt` is
/// written at stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_restart_and_last_used_is_flushed_at_stop() {
    let mut api = Local::start("").await;
    let (id, key) = api.create_key(A, "read").await;
    let (s, _) = api
        .call(
            "GET",
            &format!("/api/buckets/{A}/sources"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s, 200);
    api.stop().await;
    let reader =
        store::Reader::open_existing(&api.dir.path().join("data").join(store::FILE_NAME)).unwrap();
    let rows = reader.api_keys().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, id);
    assert_eq!(rows[0].hash, key_sha256(&key));
    assert!(rows[0].last_used_at.is_some());
}

/// A canary admin key and an issued key, run through every endpoint of the
/// real binary with debug logging (and once in a query string): neither
/// appears in its logs nor in the database or its WAL.
#[test]
fn canary_keys_never_reach_logs_or_database() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let admin = "dakkio_a_CanaryAdmin7Q2w9E4r6T8y0U1i3O5p";
    let cfg = format!(
        "[[buckets]]\nid = \"{A}\"\nname = \"a\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
         admin_key_env = \"CANARY_ADMIN\"\n"
    );
    let mut g = Gateway::start_with_env(dir.path(), &cfg, &[("CANARY_ADMIN", admin)]);
    g.wait_ready();
    let addr = g.api_addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issued = rt.block_on(async {
        let http = reqwest::Client::new();
        let url = format!("http://{addr}");
        let v: Value = http
            .post(format!("{url}/api/buckets/{A}/keys"))
            .header("X-API-Key", admin)
            .json(&json!({"type": "write", "name": "canary"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let issued = v["apiKey"]["key"].as_str().unwrap().to_owned();
        for key in [admin, issued.as_str()] {
            for &ep in EPS {
                for bucket in [A, UNKNOWN] {
                    let (method, path, body) = request(ep, bucket);
                    let mut rb = http
                        .request(
                            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                            format!("{url}{path}"),
                        )
                        .header("X-API-Key", key);
                    if let Some(b) = body {
                        rb = rb.json(&b);
                    }
                    let s = rb.send().await.unwrap().status();
                    assert!(s.as_u16() < 500, "{ep:?}: {s}");
                }
            }
            // In a query string: refused, and the query is not logged.
            let s = http
                .get(format!("{url}/health?apiKey={key}"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(s.as_u16(), 400);
        }
        issued
    });
    let status = g.terminate();
    assert!(status.success(), "{}", g.log_text());
    let log = g.log_text();
    assert!(
        log.contains("api request"),
        "debug access log expected:\n{log}"
    );
    for key in [admin, issued.as_str()] {
        assert!(!log.contains(key), "a key reached the log");
        assert!(!log.contains(&key[13..]), "a key's tail reached the log");
        let mut db = std::fs::read(g.db_path()).unwrap();
        db.extend(std::fs::read(format!("{}-wal", g.db_path().display())).unwrap_or_default());
        assert!(!contains(&db, key), "a key reached the database");
        assert!(!contains(&db, &key[13..]));
    }
}

// ------------------------------------------------------------- data

fn minute_points(n: usize, start: &str) -> Vec<Value> {
    let t0 = dakkio_gateway::reading::parse_timestamp(start).unwrap();
    (0..n)
        .map(|i| {
            json!({"dataSourceId": SRC,
                   "timestamp": dakkio_gateway::reading::format_timestamp(t0 + i as i64 * 60_000),
                   "values": {"v": i, "w": 2 * i, "label": "x"},
                   "metadata": {"i": i}})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_then_query_round_trip_and_pagination() {
    let mut api = Local::start("").await;
    let points = minute_points(180, "2024-01-15T00:00:00Z");
    // Sent out of order: the answer is ordered by timestamp.
    let mut shuffled = points.clone();
    shuffled.reverse();
    api.batch(A, shuffled).await;
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let v = api
            .query(
                json!({"bucketId": A, "filters": {"limit": 50, "offset": offset,
                "dataSourceId": SRC}}),
            )
            .await;
        let page = v["data"].as_array().unwrap().clone();
        assert_eq!(v["metadata"]["total"], 180);
        assert_eq!(v["metadata"]["count"], page.len());
        assert_eq!(v["metadata"]["hasMore"], offset + page.len() < 180);
        assert!(v["metadata"].get("downsamplingApplied").is_none());
        seen.extend(page);
        offset += 50;
        if offset >= 180 {
            break;
        }
    }
    assert_eq!(seen.len(), 180);
    for (got, want) in seen.iter().zip(&points) {
        assert_eq!(got["timestamp"], want["timestamp"]);
        // Values are stored as f64 (`reading::Value`): 65 comes back as 65.0.
        assert!(same_json(&got["values"], &want["values"]), "{got} {want}");
        assert_eq!(got["metadata"], want["metadata"]);
        assert_eq!(got["bucketId"], A);
        assert_eq!(got["dataSourceId"], SRC);
        assert_eq!(got["_id"].as_str().unwrap().len(), 24);
    }
    // Time filters: start inclusive, end exclusive.
    let v = api
        .query(
            json!({"bucketId": A, "filters": {"startTime": "2024-01-15T01:00:00Z",
            "endTime": "2024-01-15T02:00:00Z", "limit": 1000}}),
        )
        .await;
    assert_eq!(v["metadata"]["total"], 60);
    assert_eq!(v["data"][0]["values"]["v"].as_f64(), Some(60.0));
    // Another data source id: nothing.
    let v = api
        .query(json!({"bucketId": A, "filters": {"dataSourceIds": [SRC2]}}))
        .await;
    assert_eq!(
        v,
        json!({"data": [], "metadata": {"count": 0, "total": 0, "limit": 100,
        "offset": 0, "hasMore": false}})
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregation_matches_values_computed_by_hand() {
    let mut api = Local::start("").await;
    // v = i for minute i of 2024-01-15 00:00..03:00 (a Monday).
    api.batch(A, minute_points(180, "2024-01-15T00:00:00Z"))
        .await;
    for (func, top_level) in [
        ("avg", true),
        ("min", false),
        ("max", true),
        ("sum", false),
        ("count", true),
    ] {
        let body = if top_level {
            json!({"bucketId": A, "aggregation": func, "groupBy": "hour"})
        } else {
            json!({"bucketId": A, "filters": {"aggregation": func, "groupBy": "hour"}})
        };
        let v = api.query(body).await;
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 3, "{v}");
        assert_eq!(v["metadata"]["aggregation"], func);
        for (h, item) in data.iter().enumerate() {
            let h = h as f64;
            let first = 60.0 * h;
            let want = match func {
                "avg" => first + 29.5,
                "min" => first,
                "max" => first + 59.0,
                "sum" => 60.0 * first + 1770.0,
                _ => 60.0,
            };
            assert_eq!(
                item["values"]["v"].as_f64().unwrap(),
                want,
                "{func} hour {h}"
            );
            assert_eq!(
                item["values"]["w"].as_f64().unwrap(),
                if func == "count" { 60.0 } else { 2.0 * want }
            );
            assert!(
                item["values"].get("label").is_none(),
                "strings are not aggregated"
            );
            assert_eq!(item["count"], 60);
            assert_eq!(item["dataSourceId"], SRC);
            assert_eq!(item["timestamp"], format!("2024-01-15T0{h}:00:00.000Z"));
        }
    }
    for (group, start, n) in [
        ("minute", "2024-01-15T00:00:00.000Z", 180),
        ("day", "2024-01-15T00:00:00.000Z", 1),
        ("week", "2024-01-15T00:00:00.000Z", 1),
        ("month", "2024-01-01T00:00:00.000Z", 1),
    ] {
        let v = api
            .query(json!({"bucketId": A, "aggregation": "avg", "groupBy": group}))
            .await;
        assert_eq!(v["data"].as_array().unwrap().len(), n, "{group}");
        assert_eq!(v["data"][0]["timestamp"], start, "{group}");
        if n == 1 {
            assert_eq!(v["data"][0]["values"]["v"].as_f64().unwrap(), 89.5);
        }
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaged_queries_over_500_points_are_downsampled() {
    let mut api = Local::start("").await;
    api.batch(A, minute_points(1200, "2024-01-15T00:00:00Z"))
        .await;
    let v = api.query(json!({"bucketId": A})).await;
    assert_eq!(
        v["metadata"]["downsamplingApplied"], true,
        "{}",
        v["metadata"]
    );
    let data = v["data"].as_array().unwrap();
    assert!(data.len() <= 500 && data.len() >= 200, "{}", data.len());
    // 1200 minutes / 500 → 5 min steps; the first group averages v = 0..4.
    assert_eq!(v["metadata"]["groupBy"], "5m");
    assert_eq!(data[0]["values"]["v"].as_f64().unwrap(), 2.0);
    // Paged or opted out: raw points, no flag.
    let v = api
        .query(json!({"bucketId": A, "filters": {"limit": 1000}}))
        .await;
    assert!(v["metadata"].get("downsamplingApplied").is_none());
    assert_eq!(v["data"].as_array().unwrap().len(), 1000);
    let v = api
        .query(json!({"bucketId": A, "filters": {"downsampling": false}}))
        .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 100);
    // At most 500 in range: raw.
    let v = api
        .query(json!({"bucketId": A, "filters": {"endTime": "2024-01-15T08:00:00Z"}}))
        .await;
    assert!(v["metadata"].get("downsamplingApplied").is_none());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_have_details_and_oversized_bodies_get_413() {
    let mut api = Local::start("body_limit = \"64KiB\"").await;
    let (s, v) = api
        .call(
            "POST",
            "/api/data/batch",
            Some(ADMIN),
            Some(json!({"bucketId": A, "dataPoints": [
                {"dataSourceId": SRC, "values": {"t": 1}},
                {"values": {"t": {"nested": 1}}, "timestamp": "yesterday"},
            ]})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        v,
        json!({"error": "Validation Error", "message": "Invalid request parameters", "details": [
            {"path": ["body", "dataPoints", 1, "dataSourceId"], "message": "Expected string, received undefined"},
            {"path": ["body", "dataPoints", 1, "timestamp"], "message": "Invalid datetime"},
        ]})
    );
    let (s, v) = api
        .call(
            "POST",
            "/api/data",
            Some(ADMIN),
            Some(json!({"dataSourceId": SRC, "values": {"t": [1]}})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["details"][0],
        json!({"path": ["body", "bucketId"], "message": "Expected string, received undefined"})
    );
    let (s, v) = api
        .call(
            "POST",
            "/api/data",
            Some(ADMIN),
            Some(json!({"bucketId": A, "dataSourceId": SRC, "values": {"t": [1]}})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["details"][0]["path"], json!(["body", "values", "t"]));
    let (s, v) = api
        .call(
            "POST",
            "/api/data",
            Some(ADMIN),
            Some(json!({"bucketId": "nope", "dataSourceId": SRC, "values": {"t": 1}})),
        )
        .await;
    assert_eq!(
        (s, v),
        (400, err("Validation Error", "Invalid bucket ID format"))
    );
    let (s, v) = api
        .call(
            "POST",
            "/api/data/query",
            Some(ADMIN),
            Some(json!({"bucketId": A, "filters": {"limit": 0}})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["details"][0]["message"],
        "Number must be greater than or equal to 1"
    );
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/buckets/{A}/keys"),
            Some(ADMIN),
            Some(json!({"type": "admin"})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["details"].as_array().unwrap().len(), 2, "{v}");
    let (s, v) = api
        .call(
            "GET",
            &format!("/api/analytics/buckets/{A}?period=1y"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["details"][0]["path"], json!(["query", "period"]));
    let over = json!({"bucketId": A, "dataPoints":
        vec![json!({"dataSourceId": SRC, "values": {"t": 1}}); 1001]});
    let mut api2 = Local::start("").await;
    let (s, v) = api2
        .call("POST", "/api/data/batch", Some(ADMIN), Some(over))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["details"][0]["message"],
        "Array must contain at most 1000 element(s)"
    );
    api2.stop().await;

    // 413, declared or streamed, and nothing accepted.
    let big = json!({"bucketId": A, "dataPoints":
        vec![json!({"dataSourceId": SRC, "values": {"t": 1, "padding": "x".repeat(200)}}); 400]});
    let (s, v) = api
        .call("POST", "/api/data/batch", Some(ADMIN), Some(big.clone()))
        .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"], "Payload Too Large");
    // Chunked, no Content-Length: the limit applies while reading.
    let status = chunked_post(
        &api.url,
        "/api/data/batch",
        ADMIN,
        big.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 413);
    let v = api
        .query(json!({"bucketId": A, "filters": {"limit": 1}}))
        .await;
    assert_eq!(v["metadata"]["total"], 0);
    api.stop().await;
}

/// POST `body` with `Transfer-Encoding: chunked` over a raw connection;
/// the status code of the answer.
async fn chunked_post(url: &str, path: &str, key: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(8192) {
        // The server may answer and close before everything is sent.
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
            || s.write_all(chunk).await.is_err()
            || s.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_throttled_per_address_with_retry_after() {
    let mut api = Local::start("auth_failures_per_minute = 3").await;
    for _ in 0..3 {
        let (s, _) = api
            .call("GET", "/api/buckets", Some("dakkio_a_wrong"), None)
            .await;
        assert_eq!(s, 401);
    }
    // Bad keys from this address are refused with 429 until the window ends.
    let r = api
        .raw("GET", "/api/buckets", Some("dakkio_a_wrong"), None)
        .await;
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "Too Many Requests");
    // Not dakkio's quota wording: this is about failed authentications.
    let message = v["message"].as_str().unwrap();
    assert!(
        message.starts_with("Too many failed authentication attempts from this address"),
        "{message}"
    );
    assert!(!message.contains("Rate limit exceeded"), "{message}");
    // No key at all is a failure too.
    let (s, _) = api.call("GET", "/api/buckets", None, None).await;
    assert_eq!(s, 429);
    // /health needs no key and is never throttled.
    let (s, _) = api.call("GET", "/health", None, None).await;
    assert_eq!(s, 200);
    api.stop().await;
}

/// The throttle counts failures only: ten bad keys a minute from one
/// address (a NAT, a proxy, a misconfigured local process) must not lock out
/// the good clients behind it, the admin key included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_address_still_serves_valid_keys() {
    let mut api = Local::start("").await;
    let (_, write) = api.create_key(A, "write").await;
    let (_, read) = api.create_key(A, "read").await;
    for _ in 0..10 {
        let (s, _) = api
            .call("GET", "/api/buckets", Some("dakkio_a_wrong"), None)
            .await;
        assert_eq!(s, 401);
    }
    let (s, _) = api
        .call("GET", "/api/buckets", Some("dakkio_w_wrong"), None)
        .await;
    assert_eq!(s, 429, "the address is throttled for bad keys");
    let (s, v) = api.call("GET", "/api/buckets", Some(ADMIN), None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/api/data",
            Some(&write),
            Some(json!({"bucketId": A, "dataSourceId": SRC, "values": {"t": 1}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/api/data/query",
            Some(&read),
            Some(json!({"bucketId": A, "filters": {}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metadata"]["count"], 1);
    // ... and the bad keys are still refused.
    let (s, _) = api
        .call("GET", "/api/buckets", Some("dakkio_a_wrong"), None)
        .await;
    assert_eq!(s, 429);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mode_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = crate::support::make_cert(dir.path(), "api");
    let mut api = Local::start(&format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        crt.display(),
        key.display()
    ))
    .await;
    let port = api.url.rsplit(':').next().unwrap().to_owned();
    let cert = reqwest::Certificate::from_pem(&std::fs::read(&crt).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .unwrap();
    let r = https
        .post(format!("https://localhost:{port}/api/data"))
        .header("X-API-Key", ADMIN)
        .json(&json!({"bucketId": A, "dataSourceId": SRC, "values": {"t": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // Plain HTTP to the TLS port gets no answer.
    assert!(api
        .http
        .get(format!("{}/health", api.url))
        .send()
        .await
        .is_err());
    // A client that does not trust the certificate is refused.
    assert!(reqwest::Client::builder()
        .build()
        .unwrap()
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .is_err());
    api.stop().await;
}

/// dakkio's documented curl examples, with only the host changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dakkio_curl_examples_work_against_the_gateway() {
    let mut api = Local::start("").await;
    let url = api.url.clone();
    let curl = |args: Vec<String>| -> (u16, Value) {
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (
            code.parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    };
    let key = format!("X-API-Key: {ADMIN}");
    let json_ct = "Content-Type: application/json".to_owned();
    let post = |path: &str, body: &str| {
        vec![
            "-X".into(),
            "POST".into(),
            format!("{url}{path}"),
            "-H".into(),
            key.clone(),
            "-H".into(),
            json_ct.clone(),
            "-d".into(),
            body.to_owned(),
        ]
    };
    let ingest = r#"{
  "bucketId": "507f1f77bcf86cd799439011",
  "dataSourceId": "507f1f77bcf86cd799439012",
  "timestamp": "2024-01-15T10:30:00Z",
  "values": { "temperature": 22.5, "humidity": 65, "pressure": 1013.25 },
  "metadata": { "deviceId": "ESP32-001", "location": "Living Room", "batteryLevel": 85 }
}"#;
    let (s, v) = tokio::task::block_in_place(|| curl(post("/api/data", ingest)));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["message"], "Data point ingested successfully");
    assert_eq!(v["dataPoint"]["timestamp"], "2024-01-15T10:30:00.000Z");
    assert_eq!(v["dataPoint"]["metadata"]["deviceId"], "ESP32-001");
    let minimal = r#"{"bucketId":"507f1f77bcf86cd799439011","dataSourceId":"507f1f77bcf86cd799439012","values":{"temperature":22.5}}"#;
    let (s, _) = tokio::task::block_in_place(|| curl(post("/api/data", minimal)));
    assert_eq!(s, 201);
    let batch = r#"{
  "bucketId": "507f1f77bcf86cd799439011",
  "dataPoints": [
    { "dataSourceId": "507f1f77bcf86cd799439012", "timestamp": "2024-01-15T10:00:00Z",
      "values": { "temperature": 22.0, "humidity": 68 }, "metadata": { "deviceId": "ESP32-001" } },
    { "dataSourceId": "507f1f77bcf86cd799439012", "timestamp": "2024-01-15T10:05:00Z",
      "values": { "temperature": 22.2, "humidity": 67 }, "metadata": { "deviceId": "ESP32-001" } }
  ]
}"#;
    let (s, v) = tokio::task::block_in_place(|| curl(post("/api/data/batch", batch)));
    assert_eq!(s, 201, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("Ba"));
    let (s, v) = tokio::task::block_in_place(|| {
        curl(post(
            "/api/data/query",
            r#"{ "bucketId": "507f1f77bcf86cd799439011", "filters": { "limit": 1 } }"#,
        ))
    });
    assert_eq!(s, 200);
    assert_eq!(v["metadata"]["count"], 1);
    assert_eq!(v["data"][0]["timestamp"], "2024-01-15T10:00:00.000Z");
    let (s, v) = tokio::task::block_in_place(|| {
        curl(post(
            "/api/data/query",
            r#"{"bucketId":"507f1f77bcf86cd799439011","filters":{"startTime":"2024-01-15T00:00:00Z","endTime":"2024-01-16T00:00:00Z","dataSourceIds":["507f1f77bcf86cd799439012"],"limit":100,"offset":0},"aggregation":"avg","groupBy":"hour"}"#,
        ))
    });
    assert_eq!(s, 200);
    assert_eq!(v["data"][0]["timestamp"], "2024-01-15T10:00:00.000Z");
    let (s, v) = tokio::task::block_in_place(|| {
        curl(post(
            "/api/buckets/507f1f77bcf86cd799439011/keys",
            r#"{"name": "Living Room Sensor", "type": "write"}"#,
        ))
    });
    assert_eq!(s, 201);
    assert!(v["apiKey"]["key"]
        .as_str()
        .unwrap()
        .starts_with("dakkio_w_"));
    for path in [
        "/api/buckets",
        "/api/buckets/507f1f77bcf86cd799439011",
        "/api/buckets/507f1f77bcf86cd799439011/sources",
        "/api/buckets/507f1f77bcf86cd799439011/keys",
        "/api/analytics/overview",
        "/api/analytics/buckets/507f1f77bcf86cd799439011?period=7d",
    ] {
        let (s, v) = tokio::task::block_in_place(|| {
            curl(vec![format!("{url}{path}"), "-H".into(), key.clone()])
        });
        assert_eq!(s, 200, "{path}: {v}");
    }
    let (s, v) = tokio::task::block_in_place(|| {
        curl(vec![
            format!("{url}/api/buckets/507f1f77bcf86cd799439011/sources"),
            "-H".into(),
            key.clone(),
        ])
    });
    assert_eq!(s, 200);
    assert_eq!(
        v["dataSources"][0]["schema"]["temperature"]["type"],
        "number"
    );
    let _ = Duration::ZERO;
    api.stop().await;
}

#[test]
fn keys_hash_prints_the_sha256_of_stdin() {
    use std::io::Write;
    let mut child = std::process::Command::new(crate::support::binary())
        .args(["keys", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{ADMIN}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        hex(key_sha256(ADMIN))
    );
    assert!(out.stderr.is_empty());
}

/// The example's `[api]` serves on loopback; without an admin key the log
/// says once that key management needs one.
#[test]
fn without_an_admin_key_the_log_says_key_management_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start(dir.path(), "[api]\nlisten = \"127.0.0.1:0\"\n");
    g.wait_ready();
    assert!(
        g.wait_for_log("no admin key configured", EVENT_TIMEOUT)
            .is_some(),
        "{}",
        g.log_text()
    );
    assert_eq!(g.log_text().matches("no admin key configured").count(), 1);
    assert!(g.terminate().success());
}

/// The store refusing (full with `on_full = "reject"`) is a 503 with
/// nothing accepted; the queue keeps what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_answers_503_and_accepts_nothing() {
    let mut api = Local::start("[store]\nmax_size = \"4MiB\"\non_full = \"reject\"").await;
    let point = json!({"dataSourceId": SRC, "values": {"t": 1, "pad": "p".repeat(900)}});
    let body = json!({"bucketId": A, "dataPoints": vec![point; 1000]});
    let mut accepted = 0;
    let refused = loop {
        let r = api
            .raw("POST", "/api/data/batch", Some(ADMIN), Some(body.clone()))
            .await;
        match r.status().as_u16() {
            201 => accepted += 1000,
            503 => break r,
            s => panic!("unexpected {s}: {}", r.text().await.unwrap()),
        }
        assert!(accepted <= 20_000, "the store never filled");
    };
    assert!(refused.headers().contains_key("retry-after"));
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"], "Service Unavailable");
    assert!(v["message"].as_str().unwrap().contains("full"), "{v}");
    let v = api
        .query(json!({"bucketId": A, "filters": {"limit": 1}}))
        .await;
    assert_eq!(v["metadata"]["total"], accepted);
    api.stop().await;
}

/// `/sources` lists the data sources the configuration names (here a serial
/// port's name map) beside those seen in readings, with the configured names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_from_the_configuration_and_from_readings() {
    let api = Local::start(&format!(
        "\n[[serial]]\npath = \"/dev/ttyUSB-not-opened-here\"\nline = {{ format = \"kv\" }}\n\
         bucket = \"{A}\"\nsource_field = \"sensor\"\nsources = {{ kitchen = \"{SRC2}\" }}\n"
    ))
    .await;
    let (s, _) = api
        .call(
            "POST",
            "/api/data",
            Some(ADMIN),
            Some(json!({"bucketId": A, "dataSourceId": SRC, "values": {"temperature": 21.5}})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, body) = api
        .call(
            "GET",
            &format!("/api/buckets/{A}/sources"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let list = body["dataSources"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    let seen = list.iter().find(|d| d["_id"] == SRC).unwrap();
    assert_eq!(seen["schema"]["temperature"]["type"], "number");
    let declared = list.iter().find(|d| d["_id"] == SRC2).unwrap();
    assert_eq!(declared["name"], "kitchen");
    assert!(declared["lastDataPoint"].is_null());
    // Another bucket's sources are not listed for this one.
    let (_, other) = api
        .call(
            "GET",
            &format!("/api/buckets/{B}/sources"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(other["dataSources"].as_array().unwrap().len(), 0);
}

/// 201 means everything sent is stored: a number beyond a double, a lone
/// surrogate or nesting past serde's limit, in `values` or in `metadata`,
/// in a single point or in one point of a batch, is a 400 with `details`
/// naming the member, and nothing of the request is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_cannot_be_stored_whole_is_a_400_never_a_201_for_less() {
    let mut api = Local::start("").await;
    let deep = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    let bad = [
        ("1e400", "a number outside the range of a 64-bit float"),
        ("\"\\ud800\"", "a string with an unpaired UTF-16 surrogate"),
        (deep.as_str(), "nesting deeper than 128 levels"),
    ];
    let post = |path: &'static str, body: String| {
        let http = api.http.clone();
        let url = format!("{}{path}", api.url);
        async move {
            let r = http
                .post(url)
                .header("X-API-Key", ADMIN)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (
                status,
                serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap(),
            )
        }
    };
    for (value, what) in bad {
        for member in ["values", "metadata"] {
            let point = |v: &str| match member {
                "values" => format!(r#""dataSourceId":"{SRC}","values":{{"t":{v}}}"#),
                _ => format!(r#""dataSourceId":"{SRC}","values":{{"t":1}},"metadata":{{"m":{v}}}"#),
            };
            let single = format!(r#"{{"bucketId":"{A}",{}}}"#, point(value));
            let (s, v) = post("/api/data", single).await;
            assert_eq!(s, 400, "{member} with {what}: {v}");
            assert_eq!(v["details"][0]["path"], json!(["body", member]), "{v}");
            let message = v["details"][0]["message"].as_str().unwrap();
            assert!(message.contains(what), "{message}");

            let batch = format!(
                r#"{{"bucketId":"{A}","dataPoints":[{{{}}},{{{}}},{{{}}}]}}"#,
                point("2"),
                point(value),
                point("3")
            );
            let (s, v) = post("/api/data/batch", batch).await;
            assert_eq!(s, 400, "batch, {member} with {what}: {v}");
            assert_eq!(
                v["details"][0]["path"],
                json!(["body", "dataPoints", 1, member]),
                "{v}"
            );
        }
    }
    let stats = api.store.as_ref().unwrap().reader().stats().await.unwrap();
    assert_eq!(
        stats.bucket(A).map_or(0, |b| b.accepted),
        0,
        "nothing stored"
    );

    // The control: the same bodies with storable values are 201.
    let (s, v) = post(
        "/api/data/batch",
        format!(
            r#"{{"bucketId":"{A}","dataPoints":[{{"dataSourceId":"{SRC}","values":{{"t":1e300,"s":"\ud83d\ude00"}},"metadata":{{"m":{{"n":1}}}}}}]}}"#
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let stats = api.store.as_ref().unwrap().reader().stats().await.unwrap();
    assert_eq!(stats.bucket(A).map(|b| b.accepted), Some(1));
    api.stop().await;
}

/// A connection that pipelines `request` without end and never reads an
/// answer (its receive buffer kept small so the answers back up). The task
/// ends when a write fails, i.e. once the gateway has closed the connection.
async fn stuck_pipeliner(
    addr: std::net::SocketAddr,
    request: String,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let block = request.repeat(64);
    tokio::spawn(async move { while s.write_all(block.as_bytes()).await.is_ok() {} })
}

fn addr_of(api: &Local) -> std::net::SocketAddr {
    api.url.trim_start_matches("http://").parse().unwrap()
}

/// Answered within `EVENT_TIMEOUT` (a connection slot must free up).
async fn health_answered(api: &Local) -> u16 {
    let http = reqwest::Client::builder()
        .timeout(EVENT_TIMEOUT)
        .build()
        .unwrap();
    http.get(format!("{}/health", api.url))
        .send()
        .await
        .expect("a normal client is answered")
        .status()
        .as_u16()
}

/// 64 unauthenticated connections (all of `api.max_connections`) pipeline
/// `GET /health` and never read: each is closed after
/// `api.max_requests_per_connection` answers, and a normal client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_clients_that_never_read_do_not_block_the_api() {
    let mut api = Local::start("max_connections = 64").await;
    let mut stuck = Vec::new();
    for _ in 0..64 {
        let req = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_owned();
        stuck.push(stuck_pipeliner(addr_of(&api), req).await);
    }
    assert_eq!(health_answered(&api).await, 200);
    for t in stuck {
        tokio::time::timeout(EVENT_TIMEOUT, t)
            .await
            .expect("the gateway closes a pipelining connection")
            .unwrap();
    }
    api.stop().await;
}

/// A client that never reads answers too large for the socket buffers holds
/// its connection only for `api.write_timeout`: with one connection slot, a
/// normal client is served once the stuck one is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_after_the_write_timeout() {
    let mut api = Local::start(
        "max_connections = 1\nwrite_timeout = \"1s\"\nmax_requests_per_connection = 1000000000",
    )
    .await;
    let fields: serde_json::Map<String, Value> =
        (0..20).map(|i| (format!("field{i}"), json!(i))).collect();
    let points = (0..1000)
        .map(|i| {
            json!({"dataSourceId": SRC, "timestamp": format!("2024-01-15T10:{:02}:{:02}Z", i / 60, i % 60),
                   "values": fields})
        })
        .collect();
    api.batch(A, points).await;
    // About 0.5 MB per answer: a few fill the kernel's buffers.
    let body = json!({"bucketId": A, "filters": {"limit": 1000}}).to_string();
    let req = format!(
        "POST /api/data/query HTTP/1.1\r\nHost: x\r\nX-API-Key: {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // `batch` above used a pooled connection that holds the only slot.
    api.http = reqwest::Client::new();
    let stuck = stuck_pipeliner(addr_of(&api), req).await;
    assert_eq!(health_answered(&api).await, 200);
    tokio::time::timeout(EVENT_TIMEOUT, stuck)
        .await
        .expect("the gateway closes a connection that never reads")
        .unwrap();
    api.stop().await;
}

/// After `api.max_requests_per_connection` answers the connection is closed
/// (the last answer says `Connection: close`); the rest of the pipeline is
/// not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_serves_at_most_max_requests_per_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut api = Local::start("max_requests_per_connection = 3").await;
    let addr = api.url.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            .repeat(10)
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Until EOF (or a reset once the unread pipeline is discarded).
    while let Ok(n) = tokio::time::timeout(EVENT_TIMEOUT, s.read(&mut buf))
        .await
        .expect("the gateway closes the connection")
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    assert_eq!(
        text.to_ascii_lowercase()
            .matches("connection: close")
            .count(),
        1
    );
    api.stop().await;
}

/// dakkio validates with Zod strict objects: a typo in a filter is a 400
/// naming the key, never an unfiltered answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_query_keys_are_a_400_naming_the_key() {
    let mut api = Local::start("").await;
    api.batch(A, minute_points(3, "2024-01-15T10:00:00Z")).await;
    for (body, path, key) in [
        (
            json!({"bucketId": A, "filters": {"dataSourceID": SRC2}}),
            json!(["body", "filters"]),
            "dataSourceID",
        ),
        (
            json!({"bucketId": A, "filters": {"metadata": {"deviceId": "x"}}}),
            json!(["body", "filters"]),
            "metadata",
        ),
        (
            json!({"bucketId": A, "filters": {}, "sort": "desc"}),
            json!(["body"]),
            "sort",
        ),
    ] {
        let (s, v) = api
            .call("POST", "/api/data/query", Some(ADMIN), Some(body))
            .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"], "Validation Error");
        assert_eq!(v["message"], "Invalid request parameters");
        assert_eq!(v["details"][0]["path"], path, "{v}");
        assert_eq!(
            v["details"][0]["message"],
            format!("Unrecognized key(s) in object: '{key}'"),
            "{v}"
        );
    }
    api.stop().await;
}

/// dakkio answers `65` for 65 (JavaScript numbers); the gateway keeps
/// doubles but answers the same text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_are_answered_as_integers() {
    let mut api = Local::start("").await;
    let r = api
        .raw(
            "POST",
            "/api/data",
            Some(ADMIN),
            Some(
                json!({"bucketId": A, "dataSourceId": SRC, "timestamp": "2024-01-15T10:00:00Z",
                        "values": {"humidity": 65, "t": 22.5, "n": -3}}),
            ),
        )
        .await;
    assert_eq!(r.status().as_u16(), 201);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#""values":{"humidity":65,"n":-3,"t":22.5}"#),
        "{text}"
    );
    for body in [
        json!({"bucketId": A, "filters": {"limit": 10}}),
        json!({"bucketId": A, "aggregation": "max", "groupBy": "hour"}),
    ] {
        let r = api
            .raw("POST", "/api/data/query", Some(ADMIN), Some(body))
            .await;
        assert_eq!(r.status().as_u16(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains(r#""humidity":65,"#), "{text}");
        assert!(text.contains(r#""n":-3,"#), "{text}");
        assert!(!text.contains("65.0"), "{text}");
    }
    api.stop().await;
}

/// `/health`'s status is open; its reasons and parts (broker address, error
/// texts, bucket names) and `/metrics` need a key by default, in
/// `X-API-Key` or as Prometheus's `authorization` sends it; with
/// `metrics_auth = "none"` both are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_details_and_metrics_need_a_key_by_default() {
    let mut api = Local::start("").await;
    let (_, read) = api.create_key(B, "read").await;
    let (s, v) = api.call("GET", "/health", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"status": "ok"}));
    let (s, v) = api.call("GET", "/health", Some(&read), None).await;
    assert_eq!(s, 200);
    assert!(v["parts"].is_object() && v["reasons"].is_array(), "{v}");
    let (s, v) = api.call("GET", "/metrics", None, None).await;
    assert_eq!(s, 401, "{v}");
    let (s, _) = api.call("GET", "/metrics", Some(&read), None).await;
    assert_eq!(s, 200);
    let bearer = api
        .http
        .get(format!("{}/metrics", api.url))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status().as_u16(), 200);
    let bearer = api
        .http
        .get(format!("{}/metrics", api.url))
        .bearer_auth("dakkio_r_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status().as_u16(), 401);
    api.stop().await;

    let mut api = Local::start("metrics_auth = \"none\"").await;
    let (s, v) = api.call("GET", "/health", None, None).await;
    assert_eq!(s, 200);
    assert!(v["parts"].is_object(), "{v}");
    let (s, _) = api.call("GET", "/metrics", None, None).await;
    assert_eq!(s, 200);
    api.stop().await;
}

/// dakkio documents no timestamp range; the gateway takes the last 3650
/// days (dakkio's longest retention) to one day ahead, so that no reading
/// at year 0 or 9999 makes every query scan millennia.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_outside_the_accepted_window_are_a_400() {
    let mut api = Local::start("").await;
    let (s, v) = api
        .call(
            "POST",
            "/api/data",
            Some(ADMIN),
            Some(json!({"bucketId": A, "dataSourceId": SRC,
                        "timestamp": "0001-01-01T00:00:00Z", "values": {"t": 1}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["details"][0]["path"], json!(["body", "timestamp"]), "{v}");
    assert!(
        v["details"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("Timestamp must be within the last 3650 days"),
        "{v}"
    );
    let now = dakkio_gateway::reading::now_ms();
    let (s, v) = api
        .call(
            "POST",
            "/api/data/batch",
            Some(ADMIN),
            Some(json!({"bucketId": A, "dataPoints": [
                {"dataSourceId": SRC, "timestamp": dakkio_gateway::reading::format_timestamp(now),
                 "values": {"t": 1}},
                {"dataSourceId": SRC, "timestamp": "9999-12-31T23:59:59Z", "values": {"t": 2}},
            ]})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["details"][0]["path"],
        json!(["body", "dataPoints", 1, "timestamp"]),
        "{v}"
    );
    // All or nothing: the good point of the batch is not stored either.
    let v = api
        .query(json!({"bucketId": A, "filters": {"limit": 1}}))
        .await;
    assert_eq!(v["metadata"]["total"], 0);
    api.stop().await;
}

/// A query that runs past `api.query_timeout` is stopped with a 503 that
/// says which limit to change; a stopped query ends its store work (the
/// `QueryStop` interrupts SQLite) instead of running on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_past_the_query_timeout_are_stopped_with_a_503() {
    let mut api = Local::start("query_timeout = \"1ms\"").await;
    let t0 = dakkio_gateway::reading::now_ms() - 20 * 86_400_000;
    let points: Vec<Value> = (0..20_000)
        .map(|i| {
            json!({"dataSourceId": SRC,
                   "timestamp": dakkio_gateway::reading::format_timestamp(t0 + i * 86_400),
                   "values": {"v": i}})
        })
        .collect();
    api.batch(A, points).await;
    let (s, v) = api
        .call(
            "POST",
            "/api/data/query",
            Some(ADMIN),
            Some(json!({"bucketId": A, "aggregation": "avg", "groupBy": "minute"})),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("`api.query_timeout`"),
        "{v}"
    );
    // A stopped query ends with an error at once, whatever its size.
    let stop = dakkio_gateway::store::QueryStop::default();
    stop.stop();
    let r = api
        .store
        .as_ref()
        .unwrap()
        .reader()
        .aggregate_until(
            dakkio_gateway::store::SeriesFilter {
                bucket_id: A.into(),
                ..Default::default()
            },
            dakkio_gateway::store::Interval::MINUTE,
            stop,
        )
        .await;
    assert!(r.is_err(), "{r:?}");
    api.stop().await;
}

/// Bucket analytics over a period sum up the whole period: its readings
/// fall in two groups of the store's fixed interval (aligned to the epoch),
/// and avg/min/max once came from the last group only. The period is
/// chosen so that a group boundary lies inside it, readings on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_analytics_cover_the_whole_period() {
    let mut api = Local::start("").await;
    let now = dakkio_gateway::reading::now_ms();
    const DAY: i64 = 86_400_000;
    let (period, boundary) = [("24h", 1), ("7d", 7), ("30d", 30), ("90d", 90)]
        .iter()
        .find_map(|&(name, days)| {
            let size = (days + 1) * DAY;
            let b = now.div_euclid(size) * size;
            (b - DAY / 24 > now - days * DAY && b + DAY / 24 < now).then_some((name, b))
        })
        .expect("a period with a group boundary inside (true on 359 days of 360)");
    let at = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    api.batch(
        A,
        vec![
            json!({"dataSourceId": SRC, "timestamp": at(boundary - 60_000), "values": {"t": 10}}),
            json!({"dataSourceId": SRC, "timestamp": at(boundary - 30_000), "values": {"t": 40}}),
            json!({"dataSourceId": SRC, "timestamp": at(boundary + 60_000), "values": {"t": 25}}),
        ],
    )
    .await;
    let (s, v) = api
        .call(
            "GET",
            &format!("/api/analytics/buckets/{A}?period={period}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let stats = &v["analytics"]["dataSourceStats"][0];
    assert_eq!(stats["dataPointCount"], 3, "{v}");
    assert_eq!(stats["avgValues"]["t"].as_f64(), Some(25.0), "{v}");
    assert_eq!(stats["minValues"]["t"].as_f64(), Some(10.0), "{v}");
    assert_eq!(stats["maxValues"]["t"].as_f64(), Some(40.0), "{v}");
    api.stop().await;
}

/// A point may carry at most 1000 value fields (each later aggregation of
/// its data source pays for every field).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_with_too_many_fields_is_a_400() {
    let mut api = Local::start("").await;
    let values = |n: usize| {
        Value::Object(
            (0..n)
                .map(|i| (format!("f{i}"), json!(i)))
                .collect::<serde_json::Map<_, _>>(),
        )
    };
    let (s, v) = api
        .call(
            "POST",
            "/api/data",
            Some(ADMIN),
            Some(json!({"bucketId": A, "dataSourceId": SRC, "values": values(1001)})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["details"][0]["path"], json!(["body", "values"]));
    assert!(v["details"][0]["message"]
        .as_str()
        .unwrap()
        .contains("Too many fields: 1001"));
    let (s, v) = api
        .call(
            "POST",
            "/api/data",
            Some(ADMIN),
            Some(json!({"bucketId": A, "dataSourceId": SRC, "values": values(1000)})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    api.stop().await;
}

/// An ingest handed to the store waits for its commit, even past
/// `api.request_timeout`: a 408 followed by the commit would make a
/// retrying client store the reading twice. (The store groups commits for
/// `store.commit_max_delay`, here longer than the request timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_slower_than_the_request_timeout_is_answered_after_its_commit() {
    let mut api =
        Local::start("request_timeout = \"1s\"\n[store]\ncommit_max_delay = \"3s\"").await;
    let (s, v) = api
        .call(
            "POST",
            "/api/data",
            Some(ADMIN),
            Some(json!({"bucketId": A, "dataSourceId": SRC, "values": {"t": 1}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/api/data/batch",
            Some(ADMIN),
            Some(json!({"bucketId": A, "dataPoints": [
                {"dataSourceId": SRC, "values": {"t": 2}},
                {"dataSourceId": SRC, "values": {"t": 3}},
            ]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let v = api.query(json!({"bucketId": A, "filters": {}})).await;
    assert_eq!(v["metadata"]["total"], 3, "{v}");
    api.stop().await;
}

/// Request bodies are bounded in total (`api.max_body_bytes_in_flight`), not
/// only one by one: while a body of unknown length holds the whole budget,
/// another request waits briefly and gets 503, and is served once the first
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded_in_total_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut api =
        Local::start("body_limit = \"64KiB\"\nmax_body_bytes_in_flight = \"64KiB\"").await;
    // A chunked body (unknown length: `body_limit` is reserved) that stalls.
    // `Expect: 100-continue`: the gateway answers `100 Continue` once it
    // reads the body, i.e. after the reservation.
    let addr = api.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /api/data HTTP/1.1\r\nHost: x\r\nX-API-Key: {ADMIN}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
             Expect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(EVENT_TIMEOUT, slow.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    slow.write_all(b"2\r\n{\"\r\n").await.unwrap();
    let point = json!({"bucketId": A, "dataSourceId": SRC, "values": {"t": 1}});
    let r = api
        .raw("POST", "/api/data", Some(ADMIN), Some(point.clone()))
        .await;
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("`api.max_body_bytes_in_flight`"),
        "{v}"
    );
    drop(slow);
    // The stalled request ends with its connection; its bytes are free again.
    let mut answered = false;
    for _ in 0..10 {
        let (s, _) = api
            .call("POST", "/api/data", Some(ADMIN), Some(point.clone()))
            .await;
        if s == 201 {
            answered = true;
            break;
        }
        assert_eq!(s, 503);
    }
    assert!(
        answered,
        "the budget is freed when the stalled request ends"
    );
    api.stop().await;
}

/// `store.max_sources_per_bucket`: a request that would add a data source
/// beyond the cap gets a 400 naming the limit and nothing of it is stored;
/// the existing sources keep being accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_source_beyond_the_cap_is_a_400_and_nothing_is_stored() {
    let mut api = Local::start("[store]\nmax_sources_per_bucket = 2\n").await;
    let point = |src: &str, v: i64| json!({"dataSourceId": src, "timestamp": "2024-01-15T00:00:00Z", "values": {"v": v}});
    api.batch(A, vec![point(SRC, 1), point(SRC2, 2)]).await;
    let (s, v) = api
        .call(
            "POST",
            "/api/data/batch",
            Some(ADMIN),
            Some(json!({"bucketId": A, "dataPoints": [point(SRC, 3), point(UNKNOWN, 4)]})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_sources_per_bucket"), "{v}");
    assert!(message.contains('2'), "{v}");
    let total = |v: Value| v["metadata"]["total"].as_u64().unwrap();
    let q = |src: &str| json!({"bucketId": A, "filters": {"dataSourceId": src}});
    assert_eq!(
        total(api.query(q(SRC)).await),
        1,
        "nothing of the 400 stored"
    );
    assert_eq!(total(api.query(q(UNKNOWN)).await), 0);
    api.batch(A, vec![point(SRC, 5), point(SRC2, 6)]).await;
    assert_eq!(total(api.query(q(SRC)).await), 2);
    api.stop().await;
}
