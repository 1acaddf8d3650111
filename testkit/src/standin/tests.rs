//! The stand-in exercised over loopback with a real HTTP client (reqwest),
//! the way the gateway's uplink will talk to it.

use std::error::Error as _;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use super::*;

const BUCKET: &str = "507f1f77bcf86cd799439011";
const OTHER: &str = "507f1f77bcf86cd799439099";
const MISSING: &str = "507f1f77bcf86cd7994390ff";
const SRC: &str = "507f1f77bcf86cd799439012";
const ADMIN: &str = "dakkio_a_adminadminadminadminadminadmin0";
const WRITE: &str = "dakkio_w_writewritewritewritewritewrite0";
const WRITE_OTHER: &str = "dakkio_w_otherotherotherotherotherother0";
const READ: &str = "dakkio_r_readreadreadreadreadreadreadrea0";
const WAIT: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    // reqwest's rustls backend wants a process-wide provider even for plain
    // http; another test may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

fn builder() -> StandinBuilder {
    Standin::builder()
        .bucket(BUCKET)
        .bucket(OTHER)
        .admin_key(ADMIN)
        .write_key(BUCKET, WRITE)
        .write_key(OTHER, WRITE_OTHER)
        .read_key(BUCKET, READ)
}

async fn standin() -> Standin {
    builder().start().await.unwrap()
}

/// `n` points with reading ids `first..first+n`.
fn batch(bucket: &str, n: usize, first: i64) -> Value {
    let points: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "dataSourceId": SRC,
                "timestamp": "2024-01-15T10:30:00.000Z",
                "values": {"temperature": 20.5, "humidity": 60},
                "metadata": {"gatewayId": "gw-1", "readingId": first + i as i64},
            })
        })
        .collect();
    json!({"bucketId": bucket, "dataPoints": points})
}

struct Answered {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Answered {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn has_rate_limit_headers(&self) -> bool {
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ]
        .iter()
        .all(|h| self.header(h).is_some_and(|v| v.parse::<u64>().is_ok()))
    }
}

async fn send(
    c: &reqwest::Client,
    url: String,
    key: Option<&str>,
    body: &Value,
) -> reqwest::Result<Answered> {
    let mut req = c.post(url).json(body);
    if let Some(key) = key {
        req = req.header("X-API-Key", key);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await?;
    Ok(Answered {
        status,
        headers,
        text,
    })
}

async fn post(c: &reqwest::Client, s: &Standin, key: Option<&str>, body: &Value) -> Answered {
    send(c, format!("{}/api/data/batch", s.url()), key, body)
        .await
        .unwrap()
}

fn is_io_error(e: &reqwest::Error, kind: std::io::ErrorKind) -> bool {
    let mut source = e.source();
    while let Some(err) = source {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        source = err.source();
    }
    false
}

#[tokio::test]
async fn auth_follows_dakkio_key_types() {
    let s = standin().await;
    let c = client();
    let body = batch(BUCKET, 2, 1);

    let none = post(&c, &s, None, &body).await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.json(),
        json!({"error": "Unauthorized", "message": "Invalid or missing API key"})
    );
    assert!(none.has_rate_limit_headers());
    assert_eq!(post(&c, &s, Some("dakkio_w_nope"), &body).await.status, 401);

    let read = post(&c, &s, Some(READ), &body).await;
    assert_eq!(
        (read.status, read.json()["error"].clone()),
        (403, json!("Forbidden"))
    );

    let wrong = post(&c, &s, Some(WRITE_OTHER), &body).await;
    assert_eq!(wrong.status, 403);
    assert_eq!(
        wrong.json(),
        json!({"error": "Forbidden", "message": "API key does not have access to this bucket"})
    );

    let missing = post(&c, &s, Some(ADMIN), &batch(MISSING, 1, 1)).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json(),
        json!({"error": "Not Found", "message": "Bucket not found"})
    );

    let ok = post(&c, &s, Some(WRITE), &body).await;
    assert_eq!(ok.status, 201);
    assert!(ok.json()["message"].as_str().unwrap().starts_with("Batch"));
    assert_eq!(ok.json()["count"], 2);
    assert_eq!(
        post(&c, &s, Some(ADMIN), &batch(OTHER, 1, 1)).await.status,
        201
    );

    // Keys change at runtime, effective on the next request.
    assert!(s.remove_key(WRITE));
    assert_eq!(post(&c, &s, Some(WRITE), &body).await.status, 401);
    s.add_write_key(BUCKET, WRITE);
    assert_eq!(post(&c, &s, Some(WRITE), &body).await.status, 201);

    assert_eq!(s.accepted_count(), 5);
    assert_eq!(s.accepted_points(BUCKET).len(), 4);
    // The request log shows key prefixes, never keys.
    let log = s.requests();
    assert_eq!(log.len(), 9);
    assert_eq!(log[0].key_prefix, None);
    assert_eq!(log[5].key_prefix.as_deref(), Some("dakkio_w_wri"));
    let printed = format!("{log:?} {s:?}");
    for key in [ADMIN, WRITE, WRITE_OTHER, READ] {
        assert!(!printed.contains(key));
    }
}

#[tokio::test]
async fn validation_errors_carry_zod_like_details() {
    let s = standin().await;
    let c = client();

    let mut body = batch(BUCKET, 5, 1);
    body["dataPoints"][3]["values"] = json!("22.5");
    let bad = post(&c, &s, Some(WRITE), &body).await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json(),
        json!({"error": "Validation Error", "message": "Invalid request parameters",
               "details": [{"path": ["body", "dataPoints", 3, "values"],
                            "message": "Expected object, received string"}]})
    );

    let mut body = batch(BUCKET, 2, 1);
    body["dataPoints"][1]
        .as_object_mut()
        .unwrap()
        .remove("dataSourceId");
    body["dataPoints"][0]["timestamp"] = json!("soon");
    let bad = post(&c, &s, Some(WRITE), &body).await.json();
    assert_eq!(
        bad["details"],
        json!([
            {"path": ["body", "dataPoints", 0, "timestamp"], "message": "Invalid datetime"},
            {"path": ["body", "dataPoints", 1, "dataSourceId"],
             "message": "Expected string, received undefined"},
        ])
    );

    let bad = post(&c, &s, Some(ADMIN), &batch("not-a-bucket", 1, 1)).await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json(),
        json!({"error": "Validation Error", "message": "Invalid bucket ID format"})
    );

    let url = format!("{}/api/data/batch", s.url());
    let text = batch(BUCKET, 1, 1).to_string();
    let resp = c
        .post(&url)
        .header("X-API-Key", WRITE)
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "Content-Type must be application/json");

    let resp = c
        .post(&url)
        .header("X-API-Key", WRITE)
        .header("Content-Type", "application/json")
        .body("{\"bucketId\":")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "Invalid JSON in request body");

    // The single-point endpoint roots its paths at `body`.
    let single = format!("{}/api/data", s.url());
    let bad = send(
        &c,
        single.clone(),
        Some(WRITE),
        &json!({"bucketId": BUCKET, "dataSourceId": SRC}),
    )
    .await
    .unwrap();
    assert_eq!(
        bad.json()["details"],
        json!([{"path": ["body", "values"], "message": "Expected object, received undefined"}])
    );
    let point = json!({"bucketId": BUCKET, "dataSourceId": SRC, "values": {"temperature": 22.5}});
    let ok = send(&c, single, Some(WRITE), &point).await.unwrap();
    assert_eq!(ok.status, 201);
    let created = ok.json();
    assert_eq!(created["message"], "Data point ingested successfully");
    assert!(dakkio_gateway::reading::is_object_id(
        created["dataPoint"]["_id"].as_str().unwrap()
    ));
    assert_eq!(created["dataPoint"]["values"], json!({"temperature": 22.5}));
    assert_eq!(s.accepted_count(), 1);
}

#[tokio::test]
async fn a_batch_holds_at_most_1000_points() {
    let s = standin().await;
    let c = client();
    let ok = post(&c, &s, Some(WRITE), &batch(BUCKET, 1000, 1)).await;
    assert_eq!((ok.status, ok.json()["count"].clone()), (201, json!(1000)));

    let over = post(&c, &s, Some(WRITE), &batch(BUCKET, 1001, 1)).await;
    assert_eq!(over.status, 400);
    assert_eq!(
        over.json()["details"],
        json!([{"path": ["body", "dataPoints"],
                "message": "Array must contain at most 1000 element(s)"}])
    );
    assert_eq!(s.accepted_count(), 1000);
    assert_eq!(s.requests()[1].points, 1001);
}

#[tokio::test]
async fn a_poison_point_fails_the_whole_batch_and_is_named() {
    let s = standin().await;
    let c = client();
    s.poison_value("status", json!("corrupt"));

    let mut body = batch(BUCKET, 1000, 1);
    body["dataPoints"][617]["values"]["status"] = json!("corrupt");
    let bad = post(&c, &s, Some(WRITE), &body).await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json(),
        json!({"error": "Validation Error", "message": "Invalid request parameters",
               "details": [{"path": ["body", "dataPoints", 617, "values", "status"],
                            "message": "Value does not match the data source schema"}]})
    );
    assert_eq!(s.accepted_count(), 0);

    // Without the bad point the rest goes through.
    body["dataPoints"].as_array_mut().unwrap().remove(617);
    assert_eq!(post(&c, &s, Some(WRITE), &body).await.status, 201);
    assert_eq!(s.accepted_count(), 999);

    // A closure rule sees the point; rules add up.
    s.poison(|p| {
        let t = p.values.get("temperature")?.as_f64()?;
        (t > 100.0).then(|| {
            SchemaViolation::new("temperature", "Number must be less than or equal to 100")
        })
    });
    let mut body = batch(BUCKET, 3, 2000);
    body["dataPoints"][2]["values"]["temperature"] = json!(150);
    let bad = post(&c, &s, Some(WRITE), &body).await.json();
    assert_eq!(
        bad["details"][0]["path"],
        json!(["body", "dataPoints", 2, "values", "temperature"])
    );
    s.clear_poison();
    assert_eq!(post(&c, &s, Some(WRITE), &body).await.status, 201);
}

#[tokio::test]
async fn scripted_replies_come_first_in_order() {
    let s = standin().await;
    let c = client();
    let body = batch(BUCKET, 1, 1);
    let far_future = "4102444800"; // 2100-01-01

    s.script(Script::respond(503));
    s.script(Reply::new(429).retry_after("2"));
    s.script(Reply::new(429).header("X-RateLimit-Reset", far_future));
    s.script(Reply::new(500).json(json!({"error": "Internal Server Error", "message": "boom"})));
    s.script(Script::respond(413));
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
    s.script(Reply::new(503).retry_after(date.clone()));
    assert_eq!(s.pending_scripts(), 6);
    let remaining = s.quota().remaining;

    let a = post(&c, &s, Some(WRITE), &body).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("content-type"), Some("text/html"));
    assert!(a.text.contains("503 Service Unavailable"));

    let b = post(&c, &s, Some(WRITE), &body).await;
    assert_eq!((b.status, b.header("retry-after")), (429, Some("2")));
    assert!(b.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("Rate limit exceeded. Resets at "));

    let d = post(&c, &s, Some(WRITE), &body).await;
    assert_eq!(d.status, 429);
    assert_eq!(d.headers.get_all("x-ratelimit-reset").iter().count(), 1);
    assert_eq!(d.header("x-ratelimit-reset"), Some(far_future));

    let e = post(&c, &s, Some(WRITE), &body).await;
    assert_eq!(
        (e.status, e.json()["message"].clone()),
        (500, json!("boom"))
    );
    assert_eq!(post(&c, &s, Some(WRITE), &body).await.status, 413);
    let f = post(&c, &s, Some(WRITE), &body).await;
    assert_eq!(
        (f.status, f.header("retry-after")),
        (503, Some(date.as_str()))
    );

    // Queue empty: normal processing; scripted answers spent no quota.
    assert_eq!(post(&c, &s, Some(WRITE), &body).await.status, 201);
    assert_eq!(s.quota().remaining, remaining - 1);
    let log = s.requests();
    assert!(log[..6].iter().all(|r| r.scripted));
    assert_eq!(log[4].message.as_deref(), Some("Request entity too large"));
    assert!(!log[6].scripted);

    // A bucket-filtered script waits for its bucket.
    s.script_for(OTHER, Script::respond(502));
    assert_eq!(post(&c, &s, Some(WRITE), &body).await.status, 201);
    assert_eq!(s.pending_scripts(), 1);
    assert_eq!(
        post(&c, &s, Some(ADMIN), &batch(OTHER, 1, 1)).await.status,
        502
    );
    assert_eq!(s.pending_scripts(), 0);
}

#[tokio::test]
async fn sticky_scripts_repeat_until_cleared() {
    let s = standin().await;
    let c = client();
    s.set_sticky(Some(Script::respond(503)));
    for _ in 0..3 {
        assert_eq!(
            post(&c, &s, Some(WRITE), &batch(BUCKET, 1, 1)).await.status,
            503
        );
    }
    s.set_sticky_for(BUCKET, Some(Script::respond(500)));
    assert_eq!(
        post(&c, &s, Some(WRITE), &batch(BUCKET, 1, 1)).await.status,
        500
    );
    assert_eq!(
        post(&c, &s, Some(ADMIN), &batch(OTHER, 1, 1)).await.status,
        503
    );
    // A queued script still goes first.
    s.script(Script::respond(404));
    assert_eq!(
        post(&c, &s, Some(WRITE), &batch(BUCKET, 1, 1)).await.status,
        404
    );
    s.set_sticky(None);
    s.set_sticky_for(BUCKET, None);
    assert_eq!(
        post(&c, &s, Some(WRITE), &batch(BUCKET, 1, 1)).await.status,
        201
    );
    assert_eq!(s.accepted_count(), 1);
}

#[tokio::test]
async fn delay_then_normal_processing() {
    let s = standin().await;
    let c = client();
    s.script(Script::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(
        post(&c, &s, Some(WRITE), &batch(BUCKET, 4, 1)).await.status,
        201
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.accepted_count(), 4);
}

#[tokio::test]
async fn stall_until_the_client_gives_up_or_the_standin_stops() {
    let s = standin().await;
    let c = client();
    let url = format!("{}/api/data/batch", s.url());
    let body = batch(BUCKET, 1, 1);

    s.script(Script::Stall);
    let err = c
        .post(&url)
        .timeout(Duration::from_millis(300))
        .header("X-API-Key", WRITE)
        .json(&body)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(s.requests()[0].answer, Answer::Stalled);
    assert_eq!(post(&c, &s, Some(WRITE), &body).await.status, 201);

    // A stall without a client timeout ends when the stand-in stops.
    s.script(Script::Stall);
    let pending = tokio::spawn(async move { send(&c, url, Some(WRITE), &body).await });
    assert!(s.wait_for_requests(3, WAIT).await);
    s.stop().await;
    assert!(pending.await.unwrap().is_err());
}

#[tokio::test]
async fn dropped_and_reset_connections_get_no_answer() {
    let s = standin().await;
    let c = client();
    let body = batch(BUCKET, 1, 1);
    let url = format!("{}/api/data/batch", s.url());

    s.script(Script::DropConnection);
    let err = send(&c, url.clone(), Some(WRITE), &body)
        .await
        .err()
        .unwrap();
    assert!(!err.is_timeout(), "{err:?}");

    s.script(Script::ResetConnection);
    let err = send(&c, url, Some(WRITE), &body).await.err().unwrap();
    assert!(
        is_io_error(&err, std::io::ErrorKind::ConnectionReset),
        "{err:?}"
    );

    let answers: Vec<_> = s.requests().iter().map(|r| r.answer).collect();
    assert_eq!(answers, [Answer::Dropped, Answer::Reset]);
    assert_eq!(s.accepted_count(), 0);
    assert_eq!(post(&c, &s, Some(WRITE), &body).await.status, 201);
}

#[tokio::test]
async fn quota_runs_out_with_429_and_headers() {
    let s = builder().quota(3).start().await.unwrap();
    let c = client();
    let body = batch(BUCKET, 1, 1);
    for left in ["2", "1", "0"] {
        let ok = post(&c, &s, Some(WRITE), &body).await;
        assert_eq!(ok.status, 201);
        assert_eq!(ok.header("x-ratelimit-remaining"), Some(left));
        assert_eq!(ok.header("x-ratelimit-limit"), Some("3"));
    }
    // Unauthenticated calls are not the organisation's: no quota involved.
    assert_eq!(post(&c, &s, None, &body).await.status, 401);

    let quota = s.quota();
    let over = post(&c, &s, Some(WRITE), &body).await;
    assert_eq!(over.status, 429);
    assert_eq!(
        over.json(),
        json!({"error": "Too Many Requests",
               "message": format!("Rate limit exceeded. Resets at {}", quota.reset_iso())})
    );
    assert_eq!(over.header("x-ratelimit-remaining"), Some("0"));
    let reset = quota.reset_at.to_string();
    assert_eq!(over.header("x-ratelimit-reset"), Some(reset.as_str()));
    assert!(quota.reset_at > state::now_secs());

    s.set_quota_remaining(1);
    assert_eq!(post(&c, &s, Some(WRITE), &body).await.status, 201);
    assert_eq!(s.accepted_count(), 4);
}

#[tokio::test]
async fn stop_and_restart_on_the_same_port_keeps_the_record() {
    let s = standin().await;
    // No connection reuse: each request shows the server's current state.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = s.url();
    assert_eq!(
        post(&c, &s, Some(WRITE), &batch(BUCKET, 2, 1)).await.status,
        201
    );

    s.stop().await;
    assert!(!s.is_running());
    let err = send(
        &c,
        format!("{url}/api/data/batch"),
        Some(WRITE),
        &batch(BUCKET, 1, 3),
    )
    .await
    .err()
    .unwrap();
    assert!(err.is_connect(), "{err:?}");

    s.restart().await.unwrap();
    assert_eq!(s.url(), url);
    assert_eq!(
        post(&c, &s, Some(WRITE), &batch(BUCKET, 1, 3)).await.status,
        201
    );
    let ids: Vec<_> = s
        .accepted_points(BUCKET)
        .iter()
        .map(|p| p.reading_id())
        .collect();
    assert_eq!(ids, [Some(1), Some(2), Some(3)]);
}

#[tokio::test]
async fn wait_for_accepted_wakes_on_arrival() {
    let s = standin().await;
    let url = format!("{}/api/data/batch", s.url());
    let sender = tokio::spawn(async move {
        let c = client();
        for i in 0..3 {
            let a = send(&c, url.clone(), Some(WRITE), &batch(BUCKET, 10, i * 10))
                .await
                .unwrap();
            assert_eq!(a.status, 201);
        }
    });
    assert!(s.wait_for_accepted(30, WAIT).await);
    sender.await.unwrap();
    assert!(!s.wait_for_accepted(31, Duration::from_millis(50)).await);
    assert!(s.wait_for_requests(3, Duration::ZERO).await);
}

#[tokio::test]
async fn counts_mode_tracks_order_without_keeping_points() {
    let s = builder().record(RecordMode::Counts).start().await.unwrap();
    let c = client();
    for (n, first) in [(5, 1), (3, 3), (1, 7), (1, 6)] {
        assert_eq!(
            post(&c, &s, Some(WRITE), &batch(BUCKET, n, first))
                .await
                .status,
            201
        );
    }
    assert_eq!(
        s.bucket_stats(BUCKET),
        Some(BucketStats {
            accepted: 10,
            distinct: 7,
            duplicates: 3,
            out_of_order: 1,
            without_reading_id: 0,
            max_reading_id: Some(7),
        })
    );
    assert!(s.accepted_points(BUCKET).is_empty());
    assert_eq!(s.accepted_count(), 10);
    assert_eq!(s.bucket_stats(OTHER), None);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let s = builder().body_limit(300).start().await.unwrap();
    let c = client();
    let big = post(&c, &s, Some(WRITE), &batch(BUCKET, 5, 1)).await;
    assert_eq!(big.status, 413);
    assert_eq!(big.json()["error"], "Payload Too Large");
    assert!(big.has_rate_limit_headers());
    s.set_body_limit(DEFAULT_BODY_LIMIT);
    assert_eq!(
        post(&c, &s, Some(WRITE), &batch(BUCKET, 5, 1)).await.status,
        201
    );
}

#[tokio::test]
async fn other_routes_are_404_in_dakkio_shape() {
    let s = standin().await;
    let c = client();
    for (method, path) in [
        (reqwest::Method::GET, "/api/buckets"),
        (reqwest::Method::GET, "/api/data/batch"),
        (reqwest::Method::POST, "/api/data/query"),
    ] {
        let resp = c
            .request(method, format!("{}{path}", s.url()))
            .header("X-API-Key", ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert!(resp.headers().contains_key("x-ratelimit-remaining"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": "Not Found", "message": "Route not found"})
        );
    }
}

/// Throughput on loopback in Counts mode: `cargo test -p testkit --lib standin::tests::throughput
/// -- --ignored --nocapture` (debug builds are several times slower than release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let s = builder().record(RecordMode::Counts).start().await.unwrap();
    let url = format!("{}/api/data/batch", s.url());
    let per_batch = 1000;
    let batches_per_client = 50;
    let clients = 4;
    // Bodies are built before the clock starts: only the stand-in is measured.
    let bodies: Vec<Vec<u8>> = (0..batches_per_client)
        .map(|i| serde_json::to_vec(&batch(BUCKET, per_batch, (i * per_batch) as i64)).unwrap())
        .collect();
    let bodies = std::sync::Arc::new(bodies);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, bodies) = (url.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            for body in bodies.iter() {
                let resp = c
                    .post(&url)
                    .header("X-API-Key", WRITE)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = (per_batch * batches_per_client * clients) as f64;
    let secs = started.elapsed().as_secs_f64();
    println!("{total} points in {secs:.2}s: {:.0} points/s", total / secs);
    assert_eq!(s.accepted_count(), total as u64);
}
