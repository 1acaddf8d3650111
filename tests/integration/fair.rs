//! Fair shares of the store through the real binary over HTTP: a write key
//! of bucket A that floods the local ingest API neither erases bucket B's
//! undelivered readings (`drop_oldest`) nor blocks B (`reject`).

use dakkio_gateway::config::key_sha256;
use serde_json::{json, Value};

use crate::support::gateway::Gateway;

const A: &str = "507f1f77bcf86cd799439011";
const B: &str = "507f1f77bcf86cd7994390bb";
const SRC: &str = "507f1f77bcf86cd799439012";
const ADMIN: &str = "dakkio_a_FairAdminKey0123456789abcdefXYZ";

fn hex(b: [u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Two buckets without write keys upstream (their readings stay queued),
/// a 4 MiB store, an admin key for the local API.
fn start(dir: &std::path::Path, on_full: &str, share_a: &str) -> (Gateway, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = format!(
        "[store]\nmax_size = \"4MiB\"\non_full = \"{on_full}\"\ncommit_max_delay = \"5ms\"\n\
         [[buckets]]\nid = \"{A}\"\nname = \"a\"\n{share_a}\n\
         [[buckets]]\nid = \"{B}\"\nname = \"b\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\nadmin_key_sha256 = \"{}\"\n",
        hex(key_sha256(ADMIN))
    );
    let g = Gateway::start(dir, &cfg);
    g.wait_ready();
    let addr = g.api_addr();
    (g, format!("http://{addr}"))
}

async fn write_key(http: &reqwest::Client, url: &str, bucket: &str) -> String {
    let v: Value = http
        .post(format!("{url}/api/buckets/{bucket}/keys"))
        .header("X-API-Key", ADMIN)
        .json(&json!({"type": "write", "name": "fair"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["apiKey"]["key"].as_str().unwrap().to_owned()
}

/// POST `n` points of about 600 bytes each to the bucket.
async fn post(http: &reqwest::Client, url: &str, key: &str, bucket: &str, n: usize) -> u16 {
    let point = json!({"dataSourceId": SRC, "values": {"t": 1, "pad": "p".repeat(500)}});
    http.post(format!("{url}/api/data/batch"))
        .header("X-API-Key", key)
        .json(&json!({"bucketId": bucket, "dataPoints": vec![point; n]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_through_one_buckets_key_never_drops_another_buckets_readings() {
    let dir = tempfile::tempdir().unwrap();
    let (mut g, url) = start(dir.path(), "drop_oldest", "");
    let http = reqwest::Client::new();
    let (ka, kb) = (
        write_key(&http, &url, A).await,
        write_key(&http, &url, B).await,
    );
    assert_eq!(post(&http, &url, &kb, B, 500).await, 201);
    // A floods: 30,000 points of ~600 bytes in a 4 MiB store.
    for _ in 0..30 {
        assert_eq!(post(&http, &url, &ka, A, 1000).await, 201);
    }
    assert!(g.terminate().success(), "{}", g.log_text());
    let stats = g.stats();
    let (a, b) = (stats.bucket(A).unwrap(), stats.bucket(B).unwrap());
    assert!(a.dropped > 0, "the store never filled: {a:?}");
    assert_eq!(a.dropped_by_reason["store_full"], a.dropped);
    assert_eq!((b.queued, b.dropped), (500, 0), "{b:?}");
    assert!(a.ledger_balances() && b.ledger_balances());
    assert!(g
        .log_text()
        .contains("dropped the oldest undelivered readings"));
}

/// With `reject`, A (given 25 % by `store_share`) is refused once its share
/// is full; B is not, and stores far more than A could.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_at_its_share_is_refused_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut g, url) = start(dir.path(), "reject", "store_share = \"25%\"");
    let http = reqwest::Client::new();
    let (ka, kb) = (
        write_key(&http, &url, A).await,
        write_key(&http, &url, B).await,
    );
    assert_eq!(post(&http, &url, &kb, B, 500).await, 201);
    let mut a = 0;
    loop {
        match post(&http, &url, &ka, A, 500).await {
            201 => a += 500,
            503 => break,
            s => panic!("unexpected {s}"),
        }
        assert!(a <= 20_000, "A was never refused");
    }
    let mut b = 500;
    while b < 2 * a {
        assert_eq!(
            post(&http, &url, &kb, B, 500).await,
            201,
            "B refused at {b}"
        );
        b += 500;
    }
    assert_eq!(post(&http, &url, &ka, A, 1).await, 503);
    assert!(g.terminate().success(), "{}", g.log_text());
    let stats = g.stats();
    assert_eq!(stats.bucket(A).unwrap().queued, a as i64);
    assert_eq!(stats.bucket(B).unwrap().queued, b as i64);
    assert!(stats.buckets.iter().all(|b| b.dropped == 0));
    assert!(g.log_text().contains("fill its share of the store"));
}
