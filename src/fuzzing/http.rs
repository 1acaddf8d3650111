//! The `api_requests` fuzz target's harness: the local API's real router
//! (the guard, authentication, body limits, the handlers and the answer
//! budget) over a real SQLite store in a temporary directory, called
//! without a socket. The invariants are the daemon's promises to a client:
//!
//! - **201 ⇒ everything sent is stored exactly**: every point of an ingest
//!   answered 201 is in the store under the id the answer gave, with the
//!   sent data source, timestamp (as the gateway reads it, to the
//!   millisecond), values and metadata (numbers compared as doubles);
//! - no request, whatever its body or query string, panics or gets a 5xx;
//! - a query answered 200 is a page whose `count` is its length.
//!
//! One store serves the whole fuzzing process (opened on first use).

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::Value;
use tower_service::Service;

use crate::reading::parse_timestamp;
use crate::store::{seq_from_reading_id, StoreHandle, WriterThread};

const ADMIN: &str = "dakkio_a_FuzzAdminKey0123456789abcdefXYZ";
const BUCKET: &str = "65a1b2c3d4e5f6a7b8c9d0e1";

struct Harness {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    store: StoreHandle,
    _writer: WriterThread,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dakkio-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz data dir");
        let hash: String = crate::config::key_sha256(ADMIN)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let text = format!(
            "[gateway]\nid = \"fuzz\"\ndata_dir = \"{}\"\n\
             [[buckets]]\nid = \"{BUCKET}\"\nname = \"fuzz\"\n\
             [store]\nsynchronous = \"normal\"\ncommit_max_delay = \"1ms\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\nadmin_key_sha256 = \"{hash}\"\n\
             body_limit = \"64KiB\"\nmax_body_bytes_in_flight = \"64KiB\"\n",
            dir.join("data").display()
        );
        let config = crate::config::parse(&text, &dir.join("g.toml"), &crate::config::ProcessEnv)
            .expect("the fuzz harness config parses");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (store, writer) =
            crate::store::open(&config.store, &config.gateway.data_dir).expect("fuzz store");
        let api = rt
            .block_on(crate::api::Api::new(
                std::sync::Arc::new(config),
                store.clone(),
                crate::telemetry::Health::default(),
                None,
            ))
            .expect("fuzz api");
        Harness {
            app: api.router(),
            rt,
            store,
            _writer: writer,
        }
    })
}

/// A query string from fuzz bytes: printable ASCII kept (so `&`, `=`, `%`
/// and `+` reach the parsers), anything else percent-encoded.
fn query_string(bytes: &[u8]) -> String {
    let mut q = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'#' {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    q
}

/// Equal as JSON, numbers compared as doubles (the store keeps doubles).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => a == b,
    }
}

/// The stored row of reading `id`: data source, timestamp, values, metadata.
fn stored(h: &Harness, id: &str) -> (String, i64, Value, Value) {
    let seq = seq_from_reading_id(h.store.store_id(), id)
        .unwrap_or_else(|| panic!("201 with an id that is not this store's: {id}"));
    // In the inbox (not moved into the table yet) or in the table.
    let in_inbox = h.store.reader().mirror().read().ok().and_then(|m| {
        m.buckets
            .values()
            .flat_map(|b| b.rows.iter())
            .find(|r| r.seq == seq)
            .map(|r| {
                (
                    r.source_id.to_string(),
                    r.ts,
                    r.vals.clone(),
                    r.meta.clone(),
                )
            })
    });
    let row = match in_inbox {
        Some(row) => row,
        None => {
            h.rt.block_on(h.store.reader().with(move |c| {
                c.query_row(
                    "SELECT s.source_id, r.ts, r.vals, r.meta FROM readings r
                 JOIN sources s ON s.id = r.source
                 WHERE r.bucket = (SELECT id FROM buckets WHERE bucket_id = ?1) AND r.seq = ?2",
                    rusqlite::params![BUCKET, seq],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ))
                    },
                )
            }))
            .unwrap_or_else(|e| panic!("a point answered 201 is not stored ({id}): {e}"))
        }
    };
    let values = serde_json::from_str(&row.2).expect("stored values are JSON");
    let meta = row
        .3
        .map(|m| serde_json::from_str(&m).expect("stored metadata is JSON"))
        .unwrap_or_else(|| Value::Object(Default::default()));
    (row.0, row.1, values, meta)
}

/// One sent point against its stored row.
fn check_point(h: &Harness, sent: &Value, id: &str) {
    let (source, ts, values, meta) = stored(h, id);
    let sent_source = sent["dataSourceId"]
        .as_str()
        .expect("a 201 point has a source");
    assert!(
        source.eq_ignore_ascii_case(sent_source),
        "data source {sent_source} stored as {source}"
    );
    if let Some(t) = sent.get("timestamp").and_then(Value::as_str) {
        assert_eq!(parse_timestamp(t), Some(ts), "timestamp {t} stored as {ts}");
    }
    assert!(
        same(&sent["values"], &values),
        "values {} stored as {values}",
        sent["values"]
    );
    let sent_meta = match sent.get("metadata") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(m) => m.clone(),
    };
    assert!(
        same(&sent_meta, &meta),
        "metadata {sent_meta} stored as {meta}"
    );
}

/// The router's answer: status and JSON body.
fn send(h: &Harness, req: Request<Body>) -> (u16, Value) {
    h.rt.block_on(async {
        let resp = h.app.clone().call(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("answer body")
            .to_bytes();
        let answer = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!("an answer is not JSON: {}", String::from_utf8_lossy(&bytes))
        });
        (status, answer)
    })
}

/// `api_requests`: byte 0 picks the request (`POST /api/data`,
/// `/api/data/batch`, `/api/data/query`, `GET /api/analytics/buckets/:id?…`,
/// `GET /api/buckets?…`, `POST /api/buckets/:id/sources`); the rest is the
/// body or the query string.
pub fn check_api_request(data: &[u8]) {
    let h = harness();
    let rest = data.get(1..).unwrap_or_default().to_vec();
    let (method, uri, body) = match data.first().copied().unwrap_or(0) % 6 {
        0 => (Method::POST, "/api/data".to_owned(), rest),
        1 => (Method::POST, "/api/data/batch".to_owned(), rest),
        2 => (Method::POST, "/api/data/query".to_owned(), rest),
        3 => (
            Method::GET,
            format!("/api/analytics/buckets/{BUCKET}?{}", query_string(&rest)),
            Vec::new(),
        ),
        4 => (
            Method::GET,
            format!("/api/buckets?{}", query_string(&rest)),
            Vec::new(),
        ),
        _ => (Method::POST, format!("/api/buckets/{BUCKET}/sources"), rest),
    };
    let Ok(req) = Request::builder()
        .method(method)
        .uri(&uri)
        .header("x-api-key", ADMIN)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Body::from(body.clone()))
    else {
        return;
    };
    let (status, answer) = send(h, req);
    assert!(status < 500, "{uri}: {status} {answer}");
    match (uri.as_str(), status) {
        ("/api/data", 201) => {
            let sent: Value = serde_json::from_slice(&body).expect("a 201 body is JSON");
            let id = answer["dataPoint"]["_id"].as_str().expect("an id");
            check_point(h, &sent, id);
        }
        ("/api/data/batch", 201) => {
            let sent: Value = serde_json::from_slice(&body).expect("a 201 body is JSON");
            let points = sent["dataPoints"].as_array().expect("points");
            let ids = answer["dataPointIds"].as_array().expect("ids");
            assert_eq!(points.len(), ids.len(), "one id per point sent");
            assert_eq!(answer["count"].as_u64(), Some(points.len() as u64));
            for (p, id) in points.iter().zip(ids) {
                check_point(h, p, id.as_str().expect("id"));
            }
        }
        ("/api/data/query", 200) => {
            let n = answer["data"].as_array().expect("data").len();
            assert_eq!(answer["metadata"]["count"].as_u64(), Some(n as u64));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The check compares with the store for real: a point stored as sent
    /// passes, and the same id against anything else sent fails.
    #[test]
    fn a_201_is_compared_with_what_the_store_holds() {
        let h = harness();
        let sent = json!({"bucketId": BUCKET, "dataSourceId": "65a1b2c3d4e5f6a7b8c9d0e2",
            "timestamp": "2024-01-15T10:30:00.250Z",
            "values": {"t": 22.5, "n": 65, "s": "x"}, "metadata": {"d": [1, "a"]}});
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/data")
            .header("x-api-key", ADMIN)
            .header("content-type", "application/json")
            .body(Body::from(sent.to_string()))
            .unwrap();
        let (status, answer) = send(h, req);
        assert_eq!(status, 201, "{answer}");
        let id = answer["dataPoint"]["_id"].as_str().unwrap();
        check_point(h, &sent, id);
        for (field, other) in [
            ("values", json!({"t": 22.5, "n": 65, "s": "y"})),
            ("values", json!({"t": 22.5, "n": 65})),
            ("metadata", json!({"d": [1, "b"]})),
            ("timestamp", json!("2024-01-15T10:30:00.251Z")),
            ("dataSourceId", json!("65a1b2c3d4e5f6a7b8c9d0e3")),
        ] {
            let mut altered = sent.clone();
            altered[field] = other;
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_point(h, &altered, id)
            }));
            assert!(caught.is_err(), "a different {field} passed the check");
        }
    }
}
