//! The status page (`GET /`) and its JSON (`GET /api/status`).
//!
//! In-process over real HTTP: the scope rules of `/api/status` (admin sees
//! every bucket and the rejects; a bucket's read or write key sees that
//! bucket only, not even another bucket's name or serial port), the page's
//! headers (Content-Security-Policy, nosniff) and `api.status_page = false`.
//!
//! In a real browser (Chromium and chromedriver from the distribution's
//! packages, driven over WebDriver): a gateway binary with mosquitto and
//! the dakkio stand-in; the page shows a sensor's values and plot, a
//! rejected payload holding `<script>` as text without running it, a
//! bucket paused after the stand-in answered 401, and a read key sees only
//! its bucket. Screenshots at desktop and phone width go to
//! `target/test-artefacts/status-*.png`.

mod webdriver;

use std::path::PathBuf;
use std::sync::Arc;

use dakkio_gateway::api::Api;
use dakkio_gateway::config::{self, key_sha256};
use dakkio_gateway::reading::{Origin, Reading, Value as RValue, Values};
use dakkio_gateway::store::{self, Reject};
use dakkio_gateway::telemetry::{Health, Part, UplinkMode};
use serde_json::{json, Value};
use testkit::standin::Standin;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::gateway::Gateway;
use crate::support::mosquitto::{self, Mosquitto};
use crate::support::EVENT_TIMEOUT;

const A: &str = "507f1f77bcf86cd7994390a1";
const B: &str = "507f1f77bcf86cd7994390b2";
const SRC: &str = "507f1f77bcf86cd799439012";
const SRC_B: &str = "507f1f77bcf86cd799439013";
const ADMIN: &str = "dakkio_a_StatusPageAdmin0123456789abcdef";
const KEY_A: &str = "dakkio_w_StatusPageWriteA0123456789abcd";
/// A write key the stand-in does not know: dakkio answers 401.
const KEY_B_UNKNOWN: &str = "dakkio_w_StatusPageUnknownB0123456789ab";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";
/// A payload that would run if the page ever wrote markup.
const XSS: &str = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">";

fn hex(h: [u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn reading(bucket: &str, source: &str, ts: i64, t: f64) -> Reading {
    let mut values = Values::new();
    values.insert("temperature".into(), RValue::Number(t));
    Reading {
        bucket_id: bucket.into(),
        data_source_id: source.into(),
        timestamp_ms: ts,
        values,
        metadata: Default::default(),
        origin: Origin::Mqtt,
        receive_time: false,
    }
}

/// An API on `127.0.0.1:0` over a store with readings in both buckets, a
/// reject, a serial port of bucket B on the health board and B paused.
struct Local {
    url: String,
    http: reqwest::Client,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Local {
    async fn start(extra_api: &str) -> Local {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[gateway]\nid = \"status-test\"\ndata_dir = \"{}\"\n\
             [[buckets]]\nid = \"{A}\"\nname = \"house\"\n\
             [[buckets]]\nid = \"{B}\"\nname = \"barn\"\n\
             [[serial]]\npath = \"/dev/ttyBARN\"\nname = \"barn-station\"\n\
             line = {{ format = \"number\", field = \"t\" }}\nbucket = \"barn\"\n\
             data_source = \"{SRC_B}\"\n\
             [[modbus]]\naddress = \"127.0.0.1:1502\"\nname = \"plant-room\"\nbucket = \"barn\"\n\
             [[modbus.devices]]\nunit = 1\nname = \"meter\"\ndata_source = \"{SRC_B}\"\n\
             [[modbus.devices.registers]]\nname = \"power\"\nfunction = \"holding\"\naddress = 0\n\
             [api]\nlisten = \"127.0.0.1:0\"\nadmin_key_sha256 = \"{}\"\n{extra_api}\n",
            dir.path().join("data").display(),
            hex(key_sha256(ADMIN))
        );
        let cfg = config::parse(&text, &dir.path().join("g.toml"), &config::ProcessEnv)
            .unwrap_or_else(|e| panic!("{e}"));
        let (sc, dd) = (cfg.store.clone(), cfg.gateway.data_dir.clone());
        let (store, _writer) = tokio::task::spawn_blocking(move || store::open(&sc, &dd))
            .await
            .unwrap()
            .unwrap();
        let now = dakkio_gateway::reading::now_ms();
        store
            .append(vec![
                reading(A, SRC, now - 60_000, 20.5),
                reading(A, SRC, now - 1_000, 21.25),
                reading(B, SRC_B, now - 2_000, 7.0),
            ])
            .await
            .unwrap();
        store
            .submit_reject(Reject {
                origin: "serial:/dev/ttyBARN".into(),
                reason: "bad_value".into(),
                detail: "not a number".into(),
                raw: XSS.as_bytes().to_vec(),
            })
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        let health = Health::default();
        health.set_ok(&Part::Mqtt);
        health.set_degraded(
            &Part::Serial("/dev/ttyBARN".into()),
            "device not available: gone",
        );
        health.input_seen(&Part::Serial("/dev/ttyBARN".into()), now - 5_000);
        health.set_ok(&Part::Modbus("plant-room".into()));
        health.set_ok(&Part::ModbusDevice("plant-room".into(), "meter".into()));
        health.input_seen(
            &Part::ModbusDevice("plant-room".into(), "meter".into()),
            now - 4_000,
        );
        health.set_uplink(
            &Part::Bucket("barn".into()),
            UplinkMode::Paused,
            Some("dakkio answered 401: set a key".into()),
        );
        health.set_uplink(&Part::Bucket("house".into()), UplinkMode::Delivering, None);
        health.delivered(&Part::Bucket("house".into()), now - 3_000);
        let api = Api::new(Arc::new(cfg), store, health, None).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move { api.serve(listener, c).await.unwrap() });
        Local {
            url,
            http: reqwest::Client::new(),
            cancel,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut rb = self.http.get(format!("{}{path}", self.url));
        if let Some(k) = key {
            rb = rb.header("X-API-Key", k);
        }
        rb.send().await.unwrap()
    }

    async fn status(&self, key: Option<&str>) -> (u16, String) {
        let r = self.get("/api/status", key).await;
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A new key of `kind` for bucket A, issued with the admin key.
    async fn issue(&self, kind: &str) -> String {
        let r = self
            .http
            .post(format!("{}/api/buckets/{A}/keys", self.url))
            .header("X-API-Key", ADMIN)
            .json(&json!({"name": format!("status {kind}"), "type": kind}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        v["apiKey"]["key"].as_str().unwrap().to_owned()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_json_shows_the_admin_everything() {
    let api = Local::start("").await;
    let (code, body) = api.status(Some(ADMIN)).await;
    assert_eq!(code, 200, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["scope"], "admin");
    assert_eq!(s["gateway"]["id"], "status-test");
    assert_eq!(s["status"], "degraded", "the serial port is degraded");
    let ids: Vec<&str> = s["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [A, B]);
    let house = &s["buckets"][0];
    assert_eq!(house["uplink"]["state"], "delivering");
    assert!(house["uplink"]["lastDeliveryAt"].is_string());
    assert_eq!(house["queue"]["queued"], 2);
    assert_eq!(house["queue"]["accepted"], 2);
    assert_eq!(house["queue"]["ledgerBalanced"], true);
    assert!(house["queue"]["oldestQueuedAt"].is_string());
    let src = &house["dataSources"][0];
    assert_eq!(src["_id"], SRC);
    assert_eq!(src["values"]["temperature"], 21.25, "the newest reading");
    let barn = &s["buckets"][1];
    assert_eq!(barn["uplink"]["state"], "paused");
    assert!(barn["uplink"]["reason"].as_str().unwrap().contains("401"));
    let port = s["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "serial:/dev/ttyBARN")
        .unwrap_or_else(|| panic!("no serial part in {body}"));
    assert_eq!(port["label"], "barn-station");
    let meter = s["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "modbus:plant-room/meter")
        .unwrap_or_else(|| panic!("no modbus device in {body}"));
    assert_eq!(meter["kind"], "modbus");
    assert!(meter["lastInputAt"].is_string());
    assert_eq!(port["state"], "degraded");
    assert!(port["lastInputAt"].is_string());
    let rejects = &s["rejects"];
    assert_eq!(rejects["totalByReason"]["bad_value"], 1);
    let r = &rejects["latest"][0];
    assert_eq!(r["payloadExcerpt"], XSS, "kept as text, as sent");
    assert_eq!(r["origin"], "serial:/dev/ttyBARN");
    assert_eq!(r["reason"], "bad_value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_key_sees_its_bucket_only() {
    let api = Local::start("").await;
    for kind in ["read", "write"] {
        let key = api.issue(kind).await;
        let (code, body) = api.status(Some(&key)).await;
        assert_eq!(code, 200, "{body}");
        let s: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(s["scope"], kind);
        assert_eq!(s["status"], "ok", "B's problems are not A's");
        assert_eq!(s["buckets"].as_array().unwrap().len(), 1);
        assert_eq!(s["buckets"][0]["_id"], A);
        assert!(s.get("rejects").is_none(), "rejects are the admin's");
        // Nothing of bucket B: not its id, name, source, serial port or reason.
        for secret in [
            B,
            "barn",
            SRC_B,
            "ttyBARN",
            "plant-room",
            "meter",
            "bad_value",
            "__pwned",
        ] {
            assert!(!body.contains(secret), "{kind} key sees `{secret}`: {body}");
        }
        let parts: Vec<&str> = s["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(parts.contains(&"mqtt"), "{parts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_json_needs_a_key_in_the_header() {
    let api = Local::start("").await;
    assert_eq!(api.status(None).await.0, 401);
    assert_eq!(
        api.status(Some("dakkio_r_NotAKeyOfThisGateway0000"))
            .await
            .0,
        401
    );
    let r = api.get(&format!("/api/status?apiKey={ADMIN}"), None).await;
    assert_eq!(r.status(), 400, "a key in the URL is refused");
    let r = api.get("/api/status", Some(ADMIN)).await;
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_a_strict_policy() {
    let api = Local::start("").await;
    for (path, kind, needle) in [
        (
            "/",
            "text/html",
            "<script src=\"/status-page/app.js\" defer></script>",
        ),
        ("/status-page/app.js", "text/javascript", "sessionStorage"),
        ("/status-page/app.css", "text/css", ".card"),
    ] {
        let r = api.get(path, None).await;
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains(needle), "{path}");
        assert!(!body.contains(ADMIN));
    }
    let r = api.get(&format!("/?x-api-key={ADMIN}"), None).await;
    assert_eq!(r.status(), 400, "a key in the page's URL is refused too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_can_be_turned_off() {
    let api = Local::start("status_page = false").await;
    for path in ["/", "/status-page/app.js", "/status-page/app.css"] {
        assert_eq!(api.get(path, None).await.status(), 404, "{path}");
    }
    assert_eq!(api.status(Some(ADMIN)).await.0, 200, "the JSON stays");
}

// ---- in a real browser ------------------------------------------------------

fn artefacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn point(ts_ms: i64, t: f64, h: f64) -> Vec<u8> {
    let at = dakkio_gateway::reading::format_timestamp(ts_ms);
    format!(r#"{{"timestamp":"{at}","values":{{"temperature":{t},"humidity":{h}}}}}"#).into_bytes()
}

/// The acceptance run of issue 18 in Chromium.
#[test]
fn the_page_in_a_browser_shows_plots_rejects_as_text_pauses_and_scopes() {
    let (browser, driver_bin) = webdriver::locate().unwrap_or_else(|e| panic!("{e}"));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let standin = rt.block_on(async {
        Standin::builder()
            .bucket(A)
            .bucket(B)
            .write_key(A, KEY_A)
            .start()
            .await
            .unwrap()
    });
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[gateway]
id = "barn-gateway"

[[buckets]]
id = "{A}"
name = "house"
write_key = "{KEY_A}"

[[buckets]]
id = "{B}"
name = "stables"
write_key = "{KEY_B_UNKNOWN}"

[uplink]
url = "{url}"
max_batch_age = "100ms"
backoff_min = "50ms"
backoff_max = "500ms"
paused_retry = "1h"

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "gw-status-page"

[[mqtt.routes]]
topic = "house/{{source}}"
bucket = "{A}"
data_source = "{{source}}"
format = "point"
[mqtt.routes.data_sources]
kitchen = "{SRC}"

[[mqtt.routes]]
topic = "stables/{{source}}"
bucket = "{B}"
data_source = "{{source}}"
format = "point"
[mqtt.routes.data_sources]
stall = "{SRC_B}"

[api]
listen = "127.0.0.1:8080"
admin_key_env = "STATUS_PAGE_ADMIN"
"#,
        url = standin.url(),
        port = broker.port,
    );
    let g = Gateway::start_with_env(dir.path(), &config, &[("STATUS_PAGE_ADMIN", ADMIN)]);
    g.wait_ready();
    assert!(
        g.wait_for_log("mqtt subscriptions active", EVENT_TIMEOUT)
            .is_some(),
        "{}",
        g.log_text()
    );
    let addr = g.api_addr();
    let base = format!("http://{addr}");

    // 45 minutes of the kitchen sensor, one reading a minute; one for the
    // stables; a payload that is not JSON, with markup in it.
    let now = dakkio_gateway::reading::now_ms();
    let mut msgs: Vec<(String, Vec<u8>)> = (0..45)
        .map(|i| {
            let t = 19.0 + (i as f64 / 6.0).sin() * 2.0;
            (
                "house/kitchen".to_owned(),
                point(now - (45 - i) * 60_000, t, 40.0 + i as f64 / 10.0),
            )
        })
        .collect();
    msgs.push(("house/kitchen".into(), point(now - 1_000, 21.5, 44.5)));
    msgs.push(("stables/stall".into(), point(now - 2_000, 9.0, 80.0)));
    msgs.push(("house/kitchen".into(), XSS.as_bytes().to_vec()));
    assert_eq!(mosquitto::publish(broker.port, msgs, None), 48);
    assert!(
        rt.block_on(standin.wait_for_accepted(46, EVENT_TIMEOUT)),
        "the house bucket was not delivered:\n{}",
        g.log_text()
    );
    assert!(
        g.wait_for_log("bucket paused", EVENT_TIMEOUT).is_some(),
        "the stables bucket was not paused:\n{}",
        g.log_text()
    );

    let driver = webdriver::Driver::start(&driver_bin);
    let profile = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let read_key = {
            let r = http
                .post(format!("{base}/api/buckets/{A}/keys"))
                .header("X-API-Key", ADMIN)
                .json(&json!({"name": "barn laptop", "type": "read"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            v["apiKey"]["key"].as_str().unwrap().to_owned()
        };
        let page = driver.session(&browser, profile.path()).await;
        page.set_window(1280, 900).await;
        page.goto(&format!("{base}/")).await;

        // Without a key: the prompt and /health only.
        let health = page
            .wait_for("document.getElementById('health').textContent !== '…' && document.getElementById('health').textContent", EVENT_TIMEOUT)
            .await;
        assert!(health == "ok" || health == "degraded", "{health}");
        let shown = page
            .execute(
                "return [document.getElementById('login').hidden, document.getElementById('dash').hidden, document.body.innerText]",
                vec![],
            )
            .await;
        assert_eq!(shown[0], false, "the key prompt is shown");
        assert_eq!(shown[1], true, "nothing else is shown");
        assert!(!shown[2].as_str().unwrap().contains("kitchen"));

        // The admin key.
        page.type_into("#key", ADMIN).await;
        page.click("#key-form button[type=submit]").await;
        let paused = page
            .wait_for(
                &format!("(document.querySelector('[data-uplink=\"{B}\"] .uplink-state') || {{}}).textContent === 'paused'"),
                EVENT_TIMEOUT,
            )
            .await;
        assert_eq!(paused, true, "the stables bucket is not shown paused");
        let reason = page
            .execute(&format!("return document.querySelector('[data-uplink=\"{B}\"] .reason').textContent"), vec![])
            .await;
        assert!(reason.as_str().unwrap().contains("401"), "{reason}");
        let delivering = page
            .execute(&format!("return document.querySelector('[data-uplink=\"{A}\"] .uplink-state').textContent"), vec![])
            .await;
        assert_eq!(delivering, "delivering");

        // The kitchen sensor's latest values and its plot.
        let source = format!("[data-source-id=\"{SRC}\"]");
        let count = format!(
            "(() => {{ const p = document.querySelector('{source} .plot[data-field=\"temperature\"] polyline'); \
             return p ? p.getAttribute('points').trim().split(/\\s+/).length : 0; }})()"
        );
        page.wait_for(&format!("{count} >= 40"), EVENT_TIMEOUT).await;
        let plotted = page.execute(&format!("return {count}"), vec![]).await;
        if plotted.as_u64().unwrap_or(0) < 40 {
            let seen = page
                .execute(
                    "return document.getElementById('error').textContent + ' | ' + \
                     document.getElementById('sources').innerText",
                    vec![],
                )
                .await;
            panic!("points plotted: {plotted}; the page shows: {seen}");
        }
        let latest = page
            .execute(&format!("return document.querySelector('{source} .value[data-field=\"temperature\"] b').textContent"), vec![])
            .await;
        assert_eq!(latest, "21.5");
        assert_eq!(
            page.execute(&format!("return !!document.querySelector('{source} .plot[data-field=\"humidity\"] polyline')"), vec![]).await,
            true
        );

        // The rejected payload: shown as text, not run.
        let payload = page
            .wait_for("(document.querySelector('.reject td.payload code') || {}).textContent", EVENT_TIMEOUT)
            .await;
        assert_eq!(payload, XSS);
        let safe = page
            .execute(
                "return [window.__pwned === undefined, document.scripts.length, document.images.length, document.documentElement.dataset.cspViolations || '0']",
                vec![],
            )
            .await;
        assert_eq!(safe, json!([true, 1, 0, "0"]), "the payload ran or the policy was violated");

        // The key is in this tab's session storage only, never in the URL.
        let kept = page
            .execute("return [location.href, sessionStorage.length, localStorage.length, document.cookie]", vec![])
            .await;
        assert_eq!(kept[0], format!("{base}/"));
        assert_eq!(kept[1], 1);
        assert_eq!(kept[2], 0);
        assert_eq!(kept[3], "");

        // Screenshots: desktop, then phone width (each of the whole page).
        let dir = artefacts();
        for (name, width) in [("desktop", 1280u32), ("phone", 390)] {
            page.set_window(width, 900).await;
            let height = page
                .execute("return document.documentElement.scrollHeight", vec![])
                .await
                .as_u64()
                .unwrap_or(900)
                .clamp(600, 4000) as u32;
            page.set_window(width, height + 120).await;
            // A refresh after the resize, so the screenshot shows laid-out data.
            let before = page.execute("return document.documentElement.dataset.refreshed", vec![]).await;
            page.wait_for(&format!("document.documentElement.dataset.refreshed !== {before}"), EVENT_TIMEOUT).await;
            let png = page.screenshot().await;
            assert!(png.starts_with(b"\x89PNG"), "not a PNG");
            std::fs::write(dir.join(format!("status-{name}.png")), png).unwrap();
        }
        let overflow = page
            .execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![])
            .await;
        assert_eq!(overflow, true, "the page is wider than a phone");

        // The read key: its bucket only.
        page.set_window(1280, 900).await;
        page.click("#forget").await;
        page.wait_for("!document.getElementById('login').hidden", EVENT_TIMEOUT).await;
        assert_eq!(page.execute("return sessionStorage.length", vec![]).await, 0);
        page.type_into("#key", &read_key).await;
        page.click("#key-form button[type=submit]").await;
        let scoped = page
            .wait_for(
                "document.getElementById('updated').textContent.includes('read key') && document.querySelectorAll('[data-source-id] .plot polyline').length > 0",
                EVENT_TIMEOUT,
            )
            .await;
        assert_eq!(scoped, true, "the read key's view did not load");
        let seen = page
            .execute(
                "return [document.body.innerText, document.querySelectorAll('[data-bucket]').length, document.getElementById('rejects-section').hidden]",
                vec![],
            )
            .await;
        let text = seen[0].as_str().unwrap();
        for hidden in [B, "stables", SRC_B, "<script>"] {
            assert!(!text.contains(hidden), "the read key sees `{hidden}`");
        }
        assert!(text.contains("house") && text.contains("kitchen"));
        assert_eq!(seen[1], 1);
        assert_eq!(seen[2], true, "rejects are hidden from a read key");
        page.quit().await;
    });
    drop(driver);
    // Keys never reach the log.
    let log = g.log_text();
    assert!(!log.contains(ADMIN) && !log.contains(KEY_A));
}
