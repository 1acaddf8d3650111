//! Edge alerts end to end: the real gateway binary, rules created over real
//! HTTP on its local API, readings ingested through it, a webhook receiver
//! started here (axum on loopback), a real mosquitto for the MQTT target.
//! Time for duration and no-data rules is moved with the test clock
//! (`DAKKIO_GATEWAY_TEST_ALERT_CLOCK`, `POST /api/_test/alerts/clock`), never
//! waited for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dakkio_gateway::config::key_sha256;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::support::gateway::Gateway;
use crate::support::mosquitto::Mosquitto;
use crate::support::EVENT_TIMEOUT;

const A: &str = "507f1f77bcf86cd799439011";
const ADMIN: &str = "dakkio_a_AlertsTestAdminKey0123456789abcXYZ";
const CLOCK_ENV: (&str, &str) = ("DAKKIO_GATEWAY_TEST_ALERT_CLOCK", "1");
const MIN: i64 = 60_000;

/// A data source id per test case.
fn src(n: usize) -> String {
    format!("507f1f77bcf86cd7994{n:05x}")
}

fn hex(h: [u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn rt() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A webhook receiver: records every POST body with its path.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    changed: Arc<Notify>,
}

impl Receiver {
    async fn serve(&self, listener: tokio::net::TcpListener) {
        let this = self.clone();
        let app =
            axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
                let this = this.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    this.got.lock().unwrap().push((uri.path().to_owned(), v));
                    this.changed.notify_waiters();
                    "ok"
                }
            });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }

    async fn start() -> (Receiver, SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let r = Receiver::default();
        r.serve(l).await;
        (r, addr)
    }

    /// Wait until `n` bodies have arrived; all of them, in arrival order.
    async fn wait_for(&self, n: usize) -> Vec<(String, Value)> {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let notified = self.changed.notified();
            {
                let got = self.got.lock().unwrap();
                if got.len() >= n {
                    return got.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "the receiver got {} of {n} notifications: {:?}",
                    self.got.lock().unwrap().len(),
                    self.got.lock().unwrap()
                );
            }
        }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

/// The gateway and a client for its local API.
struct Gw {
    g: Gateway,
    url: String,
    http: reqwest::Client,
}

fn config(uplink: &str, alerts: &str, extra: &str) -> String {
    format!(
        "[[buckets]]\nid = \"{A}\"\nname = \"barn\"\nwrite_key = \"dakkio_w_{}\"\n\
         [uplink]\nurl = \"{uplink}\"\nbackoff_max = \"1s\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\nadmin_key_sha256 = \"{}\"\nmetrics_auth = \"none\"\n\
         [alerts]\nretry_max_delay = \"1s\"\n{alerts}\n{extra}\n",
        &A[12..],
        hex(key_sha256(ADMIN))
    )
}

/// An uplink address where nothing listens (the internet is down).
fn dead_uplink() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

impl Gw {
    fn start(dir: &std::path::Path, text: &str) -> Gw {
        let g = Gateway::start_with_env(dir, text, &[CLOCK_ENV]);
        g.wait_ready();
        Gw::attach(g)
    }

    fn attach(g: Gateway) -> Gw {
        let addr = g.api_addr();
        Gw {
            g,
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.url),
            )
            .header("X-API-Key", key);
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn rule(&self, source: &str, condition: &str, url: &str, cooldown: f64) -> Value {
        let (s, v) = self
            .call(
                "POST",
                "/api/alerts",
                ADMIN,
                Some(json!({
                    "bucketId": A, "dataSourceId": source, "name": condition,
                    "condition": condition, "webhookUrl": url, "cooldownMinutes": cooldown,
                })),
            )
            .await;
        assert_eq!(s, 201, "{condition}: {v}");
        assert_eq!(v["message"], "Alert rule created successfully");
        v["alertRule"].clone()
    }

    async fn ingest(&self, points: Vec<(String, Value)>) {
        let points: Vec<Value> = points
            .into_iter()
            .map(|(s, values)| json!({"dataSourceId": s, "values": values}))
            .collect();
        let (s, v) = self
            .call(
                "POST",
                "/api/data/batch",
                ADMIN,
                Some(json!({"bucketId": A, "dataPoints": points})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }

    async fn advance(&self, ms: i64) -> u64 {
        let (s, v) = self
            .call(
                "POST",
                "/api/_test/alerts/clock",
                ADMIN,
                Some(json!({"advanceMs": ms})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["fired"].as_u64().unwrap()
    }

    async fn health(&self) -> Value {
        self.call("GET", "/health", ADMIN, None).await.1
    }
}

/// Every documented phrasing (and the symbols): a rule per data source, a
/// reading that does not meet it, then one that does, in one batch. Each
/// rule's first (and only) notification carries the reading that met it.
/// The uplink is down meanwhile: the readings stay queued.
#[test]
fn each_documented_phrasing_fires_on_the_right_reading_and_not_others() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (rx, addr) = rt.block_on(Receiver::start());
    let gw = Gw::start(
        dir.path(),
        &config(&dead_uplink(), "allow = [\"127.0.0.1\"]", ""),
    );
    // (condition, field, value that does not meet it, value that does)
    let cases: &[(&str, &str, Value, Value)] = &[
        (
            "temperature is greater than 30",
            "temperature",
            json!(30),
            json!(30.5),
        ),
        (
            "temperature exceeds 30",
            "temperature",
            json!(29),
            json!(31),
        ),
        (
            "temperature is less than 5",
            "temperature",
            json!(5),
            json!(4.9),
        ),
        (
            "temperature drops below 5",
            "temperature",
            json!(6),
            json!(4),
        ),
        ("level equals 3", "level", json!(2), json!(3)),
        ("level is not equal to 3", "level", json!(3), json!(4)),
        (
            "humidity exceeds 80 percent",
            "humidity",
            json!(80),
            json!(81),
        ),
        ("humidity > 80", "humidity", json!(80), json!(81)),
        ("humidity >= 80", "humidity", json!(79.9), json!(80)),
        ("humidity < 20", "humidity", json!(20), json!(19)),
        ("humidity <= 20", "humidity", json!(21), json!(20)),
        ("level == 7", "level", json!(6), json!(7)),
        ("level != 7", "level", json!(7), json!(8)),
        (
            "door equals \"open\"",
            "door",
            json!("closed"),
            json!("open"),
        ),
    ];
    rt.block_on(async {
        let first = gw
            .rule(&src(0), cases[0].0, &format!("http://{addr}/hook/0"), 0.0)
            .await;
        assert_eq!(
            first["parsedCondition"],
            json!({"field": "temperature", "operator": "gt", "value": 30})
        );
        assert_eq!(first["status"], "active");
        assert_eq!(first["lastTriggeredAt"], Value::Null);
        for (i, (cond, ..)) in cases.iter().enumerate().skip(1) {
            gw.rule(&src(i), cond, &format!("http://{addr}/hook/{i}"), 0.0)
                .await;
        }
        let mut points = Vec::new();
        let values = |field: &str, v: &Value| {
            let mut m = serde_json::Map::new();
            m.insert(field.to_owned(), v.clone());
            Value::Object(m)
        };
        for (i, (_, field, no, yes)) in cases.iter().enumerate() {
            let mut before = values(field, no);
            before["other"] = json!(1);
            points.push((src(i), before));
            points.push((src(i), values(field, yes)));
        }
        gw.ingest(points).await;
        let got = rx.wait_for(cases.len()).await;
        for (i, (cond, field, _, yes)) in cases.iter().enumerate() {
            let path = format!("/hook/{i}");
            let first = got
                .iter()
                .find(|(p, _)| *p == path)
                .unwrap_or_else(|| panic!("{cond}: no notification in {got:?}"));
            let data = &first.1["data"];
            assert_eq!(first.1["event"], "alert.triggered", "{cond}");
            assert_eq!(
                data["currentValue"], *yes,
                "{cond}: fired on the wrong reading"
            );
            assert_eq!(data["dataPoint"]["values"][field], *yes, "{cond}");
            assert_eq!(data["condition"], *cond);
            assert_eq!(data["dataSourceId"], src(i));
            assert_eq!(first.1["bucketId"], A);
        }
        assert_eq!(got[0].1["data"]["operator"], ">");
        assert_eq!(got[0].1["data"]["threshold"], 30);
        // The list shows when each rule last fired.
        let (s, list) = gw
            .call("GET", &format!("/api/buckets/{A}/alerts"), ADMIN, None)
            .await;
        assert_eq!(s, 200);
        let rules = list["alertRules"].as_array().unwrap();
        assert_eq!(rules.len(), cases.len());
        assert!(
            rules.iter().all(|r| r["lastTriggeredAt"].is_string()),
            "{list}"
        );
    });
    // Nothing reached dakkio: the readings are all still queued.
    let stats = gw.g.stats();
    assert_eq!(stats.bucket(A).unwrap().queued, 2 * cases.len() as i64);
    assert_eq!(stats.bucket(A).unwrap().delivered, 0);
}

/// "… for 5 minutes" fires once the condition has held five minutes of the
/// test clock, not before; "no data received for 30 minutes" once the data
/// source has been silent 30 minutes, once per silence.
#[test]
fn duration_and_no_data_rules_fire_on_time_by_the_test_clock() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (rx, addr) = rt.block_on(Receiver::start());
    let gw = Gw::start(
        dir.path(),
        &config(&dead_uplink(), "allow = [\"127.0.0.1\"]", ""),
    );
    rt.block_on(async {
        let hold = gw
            .rule(
                &src(1),
                "temperature > 30 for 5 minutes",
                &format!("http://{addr}/hold"),
                0.0,
            )
            .await;
        assert_eq!(hold["parsedCondition"]["forSeconds"], 300);
        gw.rule(
            &src(2),
            "no data received for 30 minutes",
            &format!("http://{addr}/silence"),
            0.0,
        )
        .await;
        gw.ingest(vec![
            (src(1), json!({"temperature": 31})),
            (src(2), json!({"temperature": 10})),
        ])
        .await;
        assert_eq!(gw.advance(4 * MIN).await, 0, "fired before 5 minutes");
        assert_eq!(gw.advance(MIN).await, 1, "did not fire at 5 minutes");
        let got = rx.wait_for(1).await;
        assert_eq!(got[0].0, "/hold");
        assert_eq!(got[0].1["data"]["currentValue"], 31);
        assert_eq!(gw.advance(24 * MIN).await, 0, "silence fired early");
        assert_eq!(
            gw.advance(MIN).await,
            1,
            "silence did not fire at 30 minutes"
        );
        let got = rx.wait_for(2).await;
        assert_eq!(got[1].0, "/silence");
        assert_eq!(got[1].1["data"]["operator"], "no_data");
        assert_eq!(got[1].1["data"]["threshold"], 1800);
        assert_eq!(got[1].1["data"]["dataPoint"], Value::Null);
        // Once per silence; a reading re-arms it.
        assert_eq!(gw.advance(60 * MIN).await, 0);
        gw.ingest(vec![(src(2), json!({"temperature": 10}))]).await;
        assert_eq!(gw.advance(30 * MIN).await, 1);
        rx.wait_for(3).await;
    });
}

/// A rule with a 10 minute cooldown fires on the first hot reading, not
/// on the next one, and again once the cooldown has passed.
#[test]
fn cooldown_holds() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (rx, addr) = rt.block_on(Receiver::start());
    let gw = Gw::start(
        dir.path(),
        &config(&dead_uplink(), "allow = [\"127.0.0.1\"]", ""),
    );
    rt.block_on(async {
        gw.rule(
            &src(3),
            "temperature > 30",
            &format!("http://{addr}/c"),
            10.0,
        )
        .await;
        gw.ingest(vec![(src(3), json!({"temperature": 31}))]).await;
        rx.wait_for(1).await;
        gw.ingest(vec![(src(3), json!({"temperature": 32}))]).await;
        assert_eq!(gw.advance(10 * MIN).await, 0);
        gw.ingest(vec![(src(3), json!({"temperature": 33}))]).await;
        let got = rx.wait_for(2).await;
        assert_eq!(got[0].1["data"]["currentValue"], 31);
        assert_eq!(
            got[1].1["data"]["currentValue"], 33,
            "the reading inside the cooldown fired"
        );
    });
}

/// The dakkio stand-in is down (stopped after start): the rule still fires
/// on the local network, and the reading waits in the queue.
#[test]
fn a_rule_fires_while_the_uplink_is_partitioned() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (rx, addr) = rt.block_on(Receiver::start());
    let standin = rt.block_on(async {
        let mut b = testkit::standin::Standin::builder();
        b = b.bucket(A).write_key(A, format!("dakkio_w_{}", &A[12..]));
        let s = b.start().await.unwrap();
        s.stop().await;
        s
    });
    let gw = Gw::start(
        dir.path(),
        &config(&standin.url(), "allow = [\"127.0.0.1\"]", ""),
    );
    rt.block_on(async {
        gw.rule(
            &src(4),
            "temperature exceeds 30",
            &format!("http://{addr}/p"),
            5.0,
        )
        .await;
        gw.ingest(vec![(src(4), json!({"temperature": 35}))]).await;
        let got = rx.wait_for(1).await;
        assert_eq!(got[0].1["data"]["currentValue"], 35);
    });
    assert_eq!(standin.accepted_count(), 0);
    assert_eq!(gw.g.stats().bucket(A).unwrap().queued, 1);
}

/// The webhook receiver is down when the rule fires; the notification is
/// retried (durably queued) and arrives once the receiver is back.
#[test]
fn a_webhook_receiver_down_then_back_receives_the_firing() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = Gw::start(
        dir.path(),
        &config(&dead_uplink(), "allow = [\"127.0.0.1\"]", ""),
    );
    let rx = Receiver::default();
    rt.block_on(async {
        gw.rule(
            &src(5),
            "temperature is greater than 30",
            &format!("http://127.0.0.1:{port}/late"),
            5.0,
        )
        .await;
        gw.ingest(vec![(src(5), json!({"temperature": 40}))]).await;
    });
    gw.g.wait_for_log("alert notification failed; will retry", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("no failed attempt:\n{}", gw.g.log_text()));
    assert_eq!(
        rt.block_on(gw.health())["alerts"]["notificationsPending"],
        1
    );
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        rx.serve(l).await;
        let got = rx.wait_for(1).await;
        assert_eq!(got[0].0, "/late");
        assert_eq!(got[0].1["data"]["currentValue"], 40);
    });
    gw.g.wait_for_log("alert notification delivered", EVENT_TIMEOUT)
        .expect("delivery recorded");
    let health = rt.block_on(gw.health());
    assert_eq!(health["alerts"]["notificationsDelivered"], 1, "{health}");
    assert_eq!(health["alerts"]["notificationsPending"], 0, "{health}");
    assert_eq!(rx.count(), 1);
}

/// With `alerts.mqtt_topic`, a firing is also published on the broker.
#[test]
fn the_mqtt_target_receives_the_firing_through_mosquitto() {
    let broker = Mosquitto::start();
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (rx, addr) = rt.block_on(Receiver::start());
    let mqtt = format!(
        "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"alerts-gw\"\n\
         [[mqtt.routes]]\ntopic = \"unused/data\"\nbucket = \"{A}\"\ndata_source = \"{}\"\n",
        broker.port,
        src(6)
    );
    let gw = Gw::start(
        dir.path(),
        &config(
            &dead_uplink(),
            "allow = [\"127.0.0.1\"]\nmqtt_topic = \"site/alerts\"",
            &mqtt,
        ),
    );
    let (msg_tx, mut msg_rx) = tokio::sync::mpsc::unbounded_channel();
    rt.block_on(async {
        let mut o = rumqttc::MqttOptions::new("alerts-listener", "127.0.0.1", broker.port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = rumqttc::AsyncClient::new(o, 10);
        client
            .subscribe("site/alerts", rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        let (sub_tx, sub_rx) = tokio::sync::oneshot::channel();
        let mut sub_tx = Some(sub_tx);
        tokio::spawn(async move {
            let _client = client;
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_))) => {
                        if let Some(t) = sub_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                        let _ = msg_tx.send(p.payload.to_vec());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(EVENT_TIMEOUT, sub_rx)
            .await
            .expect("subscribed")
            .unwrap();
        let rule = gw
            .rule(
                &src(6),
                "temperature drops below 2",
                &format!("http://{addr}/m"),
                5.0,
            )
            .await;
        gw.ingest(vec![(src(6), json!({"temperature": 1.5}))]).await;
        let payload = tokio::time::timeout(EVENT_TIMEOUT, msg_rx.recv())
            .await
            .expect("an MQTT notification")
            .unwrap();
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["event"], "alert.triggered");
        assert_eq!(v["data"]["alertId"], rule["_id"]);
        assert_eq!(v["data"]["currentValue"], 1.5);
        rx.wait_for(1).await;
    });
}

/// Rules, their status and `lastTriggeredAt` survive a restart, and they
/// fire after it.
#[test]
fn rules_survive_a_restart() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (rx, addr) = rt.block_on(Receiver::start());
    let gw = Gw::start(
        dir.path(),
        &config(&dead_uplink(), "allow = [\"127.0.0.1\"]", ""),
    );
    let (fired, paused) = rt.block_on(async {
        let fired = gw
            .rule(
                &src(7),
                "temperature > 30",
                &format!("http://{addr}/r"),
                0.0,
            )
            .await;
        let paused = gw
            .rule(&src(7), "temperature < 0", &format!("http://{addr}/q"), 0.0)
            .await;
        let id = paused["_id"].as_str().unwrap();
        let (s, v) = gw
            .call("POST", &format!("/api/alerts/{id}/pause"), ADMIN, None)
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["alertRule"]["status"], "paused");
        gw.ingest(vec![(src(7), json!({"temperature": 31}))]).await;
        rx.wait_for(1).await;
        // Logged once the delivery is recorded: not sent again after the restart.
        gw.g.wait_for_log("alert notification delivered", EVENT_TIMEOUT)
            .expect("delivery recorded");
        let (_, v) = gw
            .call(
                "GET",
                &format!("/api/alerts/{}", fired["_id"].as_str().unwrap()),
                ADMIN,
                None,
            )
            .await;
        (v["alertRule"].clone(), paused)
    });
    assert!(fired["lastTriggeredAt"].is_string(), "{fired}");
    let Gw { mut g, .. } = gw;
    assert!(g.terminate().success());
    g.restart();
    g.wait_ready();
    let gw = Gw::attach(g);
    rt.block_on(async {
        let (s, list) = gw
            .call("GET", &format!("/api/buckets/{A}/alerts"), ADMIN, None)
            .await;
        assert_eq!(s, 200);
        let rules = list["alertRules"].as_array().unwrap();
        assert_eq!(rules.len(), 2, "{list}");
        let by_id = |id: &Value| rules.iter().find(|r| r["_id"] == *id).unwrap().clone();
        assert_eq!(
            by_id(&fired["_id"])["lastTriggeredAt"],
            fired["lastTriggeredAt"]
        );
        assert_eq!(by_id(&fired["_id"])["condition"], "temperature > 30");
        assert_eq!(by_id(&paused["_id"])["status"], "paused");
        gw.ingest(vec![(src(7), json!({"temperature": -5}))]).await;
        gw.ingest(vec![(src(7), json!({"temperature": 35}))]).await;
        let got = rx.wait_for(2).await;
        assert_eq!(got[1].0, "/r", "the paused rule fired: {got:?}");
        assert_eq!(got[1].1["data"]["currentValue"], 35);
    });
}

/// Outbound requests only where `alerts.allow` says: a URL outside it is a
/// 400 naming `webhookUrl`, at create and at update; so is a condition the
/// parser does not understand; a read key may list but not create.
#[test]
fn a_url_outside_the_allow_list_is_refused_with_400() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(
        dir.path(),
        &config(
            &dead_uplink(),
            "allow = [\"127.0.0.1:9\", \"siren.local\"]",
            "",
        ),
    );
    rt.block_on(async {
        let body = |url: &str, cond: &str| {
            json!({"bucketId": A, "dataSourceId": src(8), "name": "n",
                   "condition": cond, "webhookUrl": url})
        };
        for url in [
            "http://192.168.1.10/hook",
            "http://127.0.0.1:8080/hook",
            "http://siren.local.evil.example/",
            "ftp://siren.local/",
        ] {
            let (s, v) = gw
                .call("POST", "/api/alerts", ADMIN, Some(body(url, "t > 1")))
                .await;
            assert_eq!(s, 400, "{url}: {v}");
            assert_eq!(v["error"], "Validation Error");
            assert_eq!(
                v["details"][0]["path"],
                json!(["body", "webhookUrl"]),
                "{v}"
            );
        }
        let (s, v) = gw
            .call(
                "POST",
                "/api/alerts",
                ADMIN,
                Some(body("http://127.0.0.1:9/", "t is greater than hot")),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["details"][0]["path"], json!(["body", "condition"]));
        let msg = v["details"][0]["message"].as_str().unwrap();
        assert!(
            msg.contains("field `t`") && msg.contains("not understood: `hot`"),
            "{msg}"
        );
        let (s, v) = gw
            .call(
                "POST",
                "/api/alerts",
                ADMIN,
                Some(body("http://siren.local/x", "t > 1")),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let id = v["alertRule"]["_id"].as_str().unwrap().to_owned();
        assert_eq!(v["alertRule"]["cooldownMinutes"], 5);
        let (s, v) = gw
            .call(
                "PATCH",
                &format!("/api/alerts/{id}"),
                ADMIN,
                Some(json!({"webhookUrl": "http://10.0.0.1/"})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["details"][0]["path"], json!(["body", "webhookUrl"]));
        // A read key lists but does not create.
        let (s, v) = gw
            .call(
                "POST",
                &format!("/api/buckets/{A}/keys"),
                ADMIN,
                Some(json!({"type": "read", "name": "r"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let read = v["apiKey"]["key"].as_str().unwrap().to_owned();
        let (s, v) = gw
            .call(
                "POST",
                "/api/alerts",
                &read,
                Some(body("http://siren.local/x", "t > 1")),
            )
            .await;
        assert_eq!(s, 403, "{v}");
        let (s, v) = gw
            .call("GET", &format!("/api/buckets/{A}/alerts"), &read, None)
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["alertRules"].as_array().unwrap().len(), 1);
        let (s, _) = gw
            .call("DELETE", &format!("/api/alerts/{id}"), &read, None)
            .await;
        assert_eq!(s, 403);
        let (s, v) = gw
            .call("DELETE", &format!("/api/alerts/{id}"), ADMIN, None)
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, _) = gw
            .call("GET", &format!("/api/alerts/{id}"), ADMIN, None)
            .await;
        assert_eq!(s, 404);
    });
    // With no `alerts.allow` at all, nothing is allowed.
    let dir2 = tempfile::tempdir().unwrap();
    let gw2 = Gw::start(dir2.path(), &config(&dead_uplink(), "", ""));
    rt.block_on(async {
        let (s, v) = gw2
            .call(
                "POST",
                "/api/alerts",
                ADMIN,
                Some(json!({"bucketId": A, "dataSourceId": src(8), "name": "n",
                            "condition": "t > 1", "webhookUrl": "http://127.0.0.1/"})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(v["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("alerts.allow"));
    });
}
