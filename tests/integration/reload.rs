//! Live configuration reload of the real gateway binary: the test rewrites
//! its configuration file (by rename, as editors do, or in place) or sends
//! SIGHUP, and awaits the gateway's log lines. Covered: an invalid edit
//! (one ERROR, the old configuration keeps running), a new admin key (no
//! rebind), a new bucket write key in its key file (a refused bucket
//! delivers), a changed
//! MQTT route and a changed serial port (only those restart), a changed
//! uplink endpoint (forwarders restart, nothing lost), SIGHUP, a replaced
//! TLS certificate; and the store is never reopened.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::standin::Standin;

use crate::support::gateway::Gateway;
use crate::support::mosquitto::{self, Mosquitto};
use crate::support::pty::PtyPair;
use crate::support::EVENT_TIMEOUT;

const B: &str = "507f1f77bcf86cd799439011";
const S1: &str = "507f1f77bcf86cd799439012";
const S2: &str = "507f1f77bcf86cd799439013";
const S3: &str = "507f1f77bcf86cd799439014";
const ADMIN1: &str = "dakkio_a_ReloadAdminOne0123456789abcdefgh";
const ADMIN2: &str = "dakkio_a_ReloadAdminTwo0123456789abcdefgh";
const GOOD_KEY: &str = "dakkio_w_ReloadGoodKey0123456789abcdefghij";
const BAD_KEY: &str = "dakkio_w_ReloadWrongKey0123456789abcdefghi";

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Replace the gateway's configuration with `body` (plus the `[gateway]`
/// table the harness adds), the way editors save: a new file renamed over
/// the old one.
fn edit(g: &Gateway, body: &str) {
    let text = format!(
        "[gateway]\nid = \"test-gw\"\ndata_dir = \"{}\"\n{body}",
        g.data_dir.display()
    );
    let tmp = g.dir.join(".gateway.toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &g.config_path).unwrap();
}

/// Log lines that contain `needle`.
fn count(g: &Gateway, needle: &str) -> usize {
    g.log_text().lines().filter(|l| l.contains(needle)).count()
}

/// Wait for the `n`-th log line containing `needle`; returns it.
fn wait_nth(g: &Gateway, needle: &str, n: usize) -> String {
    g.wait_for_nth_log(needle, n, EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("no line {n} with `{needle}`:\n{}", g.log_text()))
}

fn rt() -> tokio::runtime::Runtime {
    install_crypto();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// POST one reading through the local API; the answer's status.
fn post_reading(rt: &tokio::runtime::Runtime, addr: &str, key: &str, n: i64) -> u16 {
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{addr}/api/data"))
            .header("X-API-Key", key)
            .json(&json!({"bucketId": B, "dataSourceId": S1, "values": {"n": n}}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

fn queued(g: &Gateway) -> i64 {
    g.stats().bucket(B).map_or(0, |b| b.queued)
}

fn api_body(admin_env: &str, uplink: &str, bucket_key: &str) -> String {
    let age = if uplink.contains("max_batch_age") {
        ""
    } else {
        "max_batch_age = \"20ms\"\n"
    };
    format!(
        "[uplink]\n{uplink}\n{age}backoff_min = \"20ms\"\n\
         backoff_max = \"200ms\"\npaused_retry = \"1h\"\n\
         [[buckets]]\nid = \"{B}\"\nname = \"barn\"\n{bucket_key}\n\
         [api]\nlisten = \"127.0.0.1:0\"\nadmin_key_env = \"{admin_env}\"\n"
    )
}

/// 1, 3, 6 (SIGHUP), 7: an invalid edit changes nothing and is reported in
/// one ERROR naming file, line and key; the API and ingest keep working; a
/// valid edit with a new admin key applies at once without rebinding; SIGHUP
/// reloads; the store is opened once and the queued readings stay.
#[test]
fn invalid_edit_keeps_running_then_new_admin_key_applies_without_rebind() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("RELOAD_ADMIN1", ADMIN1), ("RELOAD_ADMIN2", ADMIN2)];
    // No uplink URL reachable and no write key: readings stay queued.
    let uplink = "url = \"http://127.0.0.1:9\"";
    let g = Gateway::start_with_env(dir.path(), &api_body("RELOAD_ADMIN1", uplink, ""), &env);
    g.wait_ready();
    g.wait_for_log("watching the configuration", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    let addr = g.api_addr();
    let rt = rt();
    assert_eq!(post_reading(&rt, &addr, ADMIN1, 1), 201);

    // An unknown key on line 13 of the new file.
    edit(
        &g,
        &format!(
            "{}bogus_setting = 1\n",
            api_body("RELOAD_ADMIN2", uplink, "")
        ),
    );
    let err = g
        .wait_for_log("configuration not reloaded", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    assert!(err.contains("ERROR"), "{err}");
    let file_line = format!("{}:17:", g.config_path.display());
    assert!(
        err.contains(&file_line),
        "no file:line `{file_line}` in {err}"
    );
    assert!(err.contains("bogus_setting"), "no key in {err}");
    // `systemctl reload` after the edit meets the same file: refused
    // again, but reported once.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(g.pid(), libc::SIGHUP) };
    g.wait_for_log("the same invalid configuration again", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    // Still the old configuration: the old admin key works, ingest works.
    assert_eq!(post_reading(&rt, &addr, ADMIN1, 2), 201);
    assert_eq!(post_reading(&rt, &addr, ADMIN2, 3), 401);

    // Fix it: the new admin key applies, the old one is refused.
    edit(&g, &api_body("RELOAD_ADMIN2", uplink, ""));
    let ok = wait_nth(&g, "configuration reloaded", 1);
    assert!(ok.contains("api.admin_key"), "{ok}");
    assert!(
        !ok.contains(ADMIN2) && !ok.contains(ADMIN1),
        "a key in {ok}"
    );
    assert_eq!(post_reading(&rt, &addr, ADMIN1, 4), 401);
    assert_eq!(post_reading(&rt, &addr, ADMIN2, 5), 201);

    // SIGHUP takes the same path (nothing changed now).
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(g.pid(), libc::SIGHUP) };
    let hup = wait_nth(&g, "configuration reloaded", 2);
    assert!(hup.contains("SIGHUP"), "{hup}");
    assert_eq!(post_reading(&rt, &addr, ADMIN2, 6), 201);

    let metrics = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("http://{addr}/metrics"))
            .header("X-API-Key", ADMIN2)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    for want in [
        r#"dakkio_config_reloads_total{result="invalid"} 2"#,
        r#"dakkio_config_reloads_total{result="ok"} 2"#,
    ] {
        assert!(metrics.contains(want), "no `{want}` in\n{metrics}");
    }

    // One invalid-file ERROR, one bind, one store open; readings queued.
    assert_eq!(count(&g, "configuration not reloaded"), 1);
    assert_eq!(count(&g, "local API listening"), 1, "{}", g.log_text());
    assert_eq!(count(&g, "store open"), 1);
    assert_eq!(queued(&g), 4);
}

/// 2: a bucket refused by dakkio (wrong key → paused) delivers once its
/// key file holds the right key, without any restart: the key file is
/// watched like the configuration, and the new key un-pauses the bucket.
#[test]
fn new_write_key_in_its_file_unpauses_a_refused_bucket_without_restart() {
    let rt = rt();
    let standin = rt.block_on(async {
        Standin::builder()
            .bucket(B)
            .write_key(B, GOOD_KEY)
            .start()
            .await
            .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let key_file = keys.join("barn.key");
    std::fs::write(&key_file, BAD_KEY).unwrap();
    let body = api_body(
        "RELOAD_ADMIN1",
        &format!("url = \"{}\"", standin.url()),
        &format!("write_key_file = \"{}\"", key_file.display()),
    );
    let g = Gateway::start_with_env(dir.path(), &body, &[("RELOAD_ADMIN1", ADMIN1)]);
    g.wait_ready();
    let addr = g.api_addr();
    for n in 0..5 {
        assert_eq!(post_reading(&rt, &addr, ADMIN1, n), 201);
    }
    g.wait_for_log("bucket paused", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    assert_eq!(standin.accepted_count(), 0);

    // In place, as `echo KEY > file` does.
    std::fs::write(&key_file, GOOD_KEY).unwrap();
    let ok = wait_nth(&g, "configuration reloaded", 1);
    assert!(ok.contains("key:barn"), "{ok}");
    assert!(!ok.contains("uplink"), "the forwarders restarted: {ok}");
    assert!(
        rt.block_on(standin.wait_for_accepted(5, EVENT_TIMEOUT)),
        "{}",
        g.log_text()
    );
    // paused_retry is an hour: only the new key can have woken the bucket.
    assert!(!g.log_text().contains(GOOD_KEY) && !g.log_text().contains(BAD_KEY));
    assert_eq!(count(&g, "store open"), 1);
    assert_eq!(count(&g, "starting dakkio-gateway"), 1);
}

/// 5: an uplink setting (the endpoint) changes → the forwarders restart on
/// it and every queued reading arrives, each once.
#[test]
fn uplink_endpoint_change_restarts_forwarders_and_loses_nothing() {
    let rt = rt();
    let standin = rt.block_on(async {
        Standin::builder()
            .bucket(B)
            .write_key(B, GOOD_KEY)
            .start()
            .await
            .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let env = [("RELOAD_ADMIN1", ADMIN1), ("RELOAD_GOOD", GOOD_KEY)];
    let key = "write_key_env = \"RELOAD_GOOD\"";
    let g = Gateway::start_with_env(
        dir.path(),
        &api_body(
            "RELOAD_ADMIN1",
            "url = \"http://127.0.0.1:9\"\nmax_batch_age = \"1h\"",
            key,
        ),
        &env,
    );
    g.wait_ready();
    let addr = g.api_addr();
    for n in 0..20 {
        assert_eq!(post_reading(&rt, &addr, ADMIN1, n), 201);
    }
    edit(
        &g,
        &api_body(
            "RELOAD_ADMIN1",
            &format!(
                "url = \"{}\"\nbatch_size = 10\nmax_batch_age = \"1h\"",
                standin.url()
            ),
            key,
        ),
    );
    let ok = wait_nth(&g, "configuration reloaded", 1);
    assert!(ok.contains("uplink"), "{ok}");
    // The new forwarders send the 20 queued at once (20 ≥ `batch_size`);
    // with the old settings (100, 1 h) nothing would go for an hour.
    assert!(
        rt.block_on(standin.wait_for_accepted(20, EVENT_TIMEOUT)),
        "{}",
        g.log_text()
    );
    for n in 20..30 {
        assert_eq!(post_reading(&rt, &addr, ADMIN1, n), 201);
    }
    assert!(
        rt.block_on(standin.wait_for_accepted(30, EVENT_TIMEOUT)),
        "{}",
        g.log_text()
    );
    let mut ns: Vec<i64> = standin
        .accepted_points(B)
        .iter()
        .map(|p| p.values["n"].as_f64().unwrap() as i64)
        .collect();
    ns.sort();
    assert_eq!(ns, (0..30).collect::<Vec<_>>());
    // The backlog in one request, then the new readings as soon as 10
    // (the new `batch_size`) were queued.
    let mut per_request = std::collections::BTreeMap::new();
    for p in standin.accepted_points(B) {
        *per_request.entry(p.request).or_insert(0) += 1;
    }
    let sizes: Vec<i32> = per_request.into_values().collect();
    assert_eq!(sizes, vec![20, 10]);
    assert_eq!(count(&g, "store open"), 1);
    assert_eq!(count(&g, "local API listening"), 1);
}

fn sources(db: &Path) -> Vec<String> {
    let c = dakkio_gateway::store::inspect(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut st = c
        .prepare(
            "SELECT s.source_id FROM readings r JOIN sources s ON s.id = r.source ORDER BY r.seq",
        )
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn wait_rows(db: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let s = sources(db);
        if s.len() >= n {
            return s;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 4: a changed MQTT route restarts only the MQTT input (messages on the
/// new topic are stored); a changed serial port restarts only that port.
#[test]
fn changed_route_and_serial_port_restart_only_those_parts() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut pa = PtyPair::open(dir.path(), "a");
    let mut pb = PtyPair::open(dir.path(), "b");
    let (a_dev, b_dev) = (pa.dev.clone(), pb.dev.clone());
    let body = |topic: &str, b_source: &str| {
        format!(
            "[[buckets]]\nid = \"{B}\"\nname = \"barn\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"gw-reload\"\n\
             keepalive = \"5s\"\nreconnect_max_delay = \"1s\"\n\
             [[mqtt.routes]]\ntopic = \"{topic}\"\nbucket = \"{B}\"\ndata_source = \"{S1}\"\n\
             [[serial]]\npath = \"{}\"\nline = {{ format = \"kv\" }}\nbucket = \"barn\"\n\
             data_source = \"{S2}\"\n\
             [[serial]]\npath = \"{}\"\nline = {{ format = \"kv\" }}\nbucket = \"barn\"\n\
             data_source = \"{b_source}\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n",
            broker.port,
            a_dev.display(),
            b_dev.display()
        )
    };
    let g = Gateway::start(dir.path(), &body("old/x", S2));
    g.wait_ready();
    g.wait_for_log("mqtt subscriptions active", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    let a_open = format!("path={}", pa.dev.display());
    let b_open = format!("path={}", pb.dev.display());
    wait_nth(&g, &a_open, 1);
    wait_nth(&g, &b_open, 1);
    let db = g.db_path();
    pa.write(b"t=1\n");
    pb.write(b"t=2\n");
    wait_rows(&db, 2);

    edit(&g, &body("new/x", S3));
    let ok = wait_nth(&g, "configuration reloaded", 1);
    assert!(ok.contains("mqtt"), "{ok}");
    assert!(ok.contains(&format!("serial:{}", pb.dev.display())), "{ok}");
    assert!(
        !ok.contains(&format!("serial:{}", pa.dev.display())),
        "{ok}"
    );
    wait_nth(&g, "mqtt subscriptions active", 2);
    // The persistent session would keep the removed route's subscription.
    let gone = wait_nth(&g, "unsubscribed from topics no longer routed", 1);
    assert!(gone.contains("old/x"), "{gone}");
    let b_reopened = wait_nth(&g, &b_open, 2);
    assert!(b_reopened.contains("serial port open"), "{b_reopened}");
    // Port a was never restarted.
    assert_eq!(
        g.log_text()
            .lines()
            .filter(|l| l.contains("serial port open") && l.contains(&a_open))
            .count(),
        1,
        "{}",
        g.log_text()
    );
    assert_eq!(
        mosquitto::publish(
            broker.port,
            vec![
                ("old/x".into(), br#"{"t":9}"#.to_vec()),
                ("new/x".into(), br#"{"t":3}"#.to_vec())
            ],
            None
        ),
        2
    );
    pb.write(b"t=4\n");
    pa.write(b"t=5\n");
    let s = wait_rows(&db, 5);
    let tail: std::collections::BTreeSet<&str> = s[2..].iter().map(String::as_str).collect();
    assert_eq!(tail, [S1, S2, S3].into_iter().collect(), "{s:?}");
    // old/x (published before new/x) was not delivered at all.
    assert_eq!(g.stats().rejected_by_reason.get("no_route"), None);
    assert_eq!(count(&g, "store open"), 1);
}

fn https_health(rt: &tokio::runtime::Runtime, crt: &Path, port: &str) -> bool {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(crt).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .unwrap();
    rt.block_on(https.get(format!("https://localhost:{port}/health")).send())
        .is_ok_and(|r| r.status().is_success())
}

/// 6: replacing the API's certificate and key files (same names in the
/// configuration) reloads: the API restarts and serves the new certificate.
#[test]
fn replaced_tls_certificate_restarts_the_api() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let (crt1, key1) = crate::support::make_cert(&tls, "one");
    let (crt, key) = (tls.join("api.crt"), tls.join("api.key"));
    std::fs::copy(&crt1, &crt).unwrap();
    std::fs::copy(&key1, &key).unwrap();
    let body = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        crt.display(),
        key.display()
    );
    let g = Gateway::start(dir.path(), &body);
    g.wait_ready();
    let rt = rt();
    let port = g.api_addr().rsplit(':').next().unwrap().to_owned();
    assert!(https_health(&rt, &crt1, &port));

    // Key first, then certificate, each by rename: one debounced reload.
    let (crt2, key2) = crate::support::make_cert(&tls, "two");
    std::fs::rename(&key2, &key).unwrap();
    std::fs::rename(&crt2, &crt).unwrap();
    let ok = wait_nth(&g, "configuration reloaded", 1);
    assert!(ok.contains("api"), "{ok}");
    let port = g.nth_api_addr(2).rsplit(':').next().unwrap().to_owned();
    assert!(https_health(&rt, &crt, &port), "{}", g.log_text());
    assert!(!https_health(&rt, &crt1, &port));
    assert_eq!(count(&g, "store open"), 1);
}

/// Receive sd_notify datagrams until one contains `want` (or the deadline).
fn recv_until(sock: &std::os::unix::net::UnixDatagram, want: &str) -> Vec<String> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(deadline - Instant::now()))
            .unwrap();
        let Ok(n) = crate::support::recv_notification(sock, &mut buf) else {
            break;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.contains(want);
        seen.push(msg);
        if done {
            return seen;
        }
    }
    panic!("no `{want}` from the gateway; got {seen:?}");
}

/// 6: under systemd, SIGHUP is answered with `RELOADING=1` carrying
/// `MONOTONIC_USEC` (what `Type=notify-reload` expects), then `READY=1` —
/// also when the new file is refused.
#[test]
fn sighup_reports_reloading_then_ready_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let g = Gateway::start_with_env(
        dir.path(),
        "[api]\nlisten = \"127.0.0.1:0\"\n",
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    g.wait_ready();
    recv_until(&sock, "READY=1");
    g.wait_for_log("watching the configuration", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(g.pid(), libc::SIGHUP) };
    let reloading = recv_until(&sock, "RELOADING=1");
    let last = reloading.last().unwrap();
    assert!(last.contains("MONOTONIC_USEC="), "{last}");
    recv_until(&sock, "READY=1");
    wait_nth(&g, "configuration reloaded", 1);

    // A refused file: still RELOADING=1 … READY=1, and one ERROR.
    std::fs::write(&g.config_path, "[api\n").unwrap();
    recv_until(&sock, "RELOADING=1");
    recv_until(&sock, "READY=1");
    let err = wait_nth(&g, "configuration not reloaded", 1);
    assert!(
        err.contains(&format!("{}:1:", g.config_path.display())),
        "{err}"
    );
}
