//! `rejects list | show | replay | purge` and `try` from the outside: the
//! real binary, a real mosquitto, socat ptys, the SQLite file.
//!
//! The replay test runs beside the running daemon on purpose: the command
//! writes the same database, and the daemon must keep storing afterwards
//! (its writer rereads its sequence in every transaction; a reused
//! sequence would fail its next commit and stop it).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::gateway::Gateway;
use crate::support::mosquitto::{self, Mosquitto};
use crate::support::pty::PtyPair;
use crate::support::EVENT_TIMEOUT;

const B: &str = "507f1f77bcf86cd799439011";
const S1: &str = "507f1f77bcf86cd799439012";
const S2: &str = "507f1f77bcf86cd799439013";

fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(crate::support::binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `(id, origin, reason)` of the kept rejects, oldest first.
fn kept(db: &Path) -> Vec<(i64, String, String)> {
    let c = dakkio_gateway::store::inspect(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut st = c
        .prepare("SELECT id, origin, reason FROM rejects ORDER BY id")
        .unwrap();
    let out = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    out
}

fn wait_kept(db: &Path, n: usize) -> Vec<(i64, String, String)> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if db.exists() {
            let k = kept(db);
            if k.len() >= n {
                return k;
            }
        }
        assert!(Instant::now() < deadline, "fewer than {n} rejects kept");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `(source, ts, values)` of every stored reading, in arrival order.
fn readings(db: &Path) -> Vec<(String, i64, serde_json::Value)> {
    let c = dakkio_gateway::store::inspect(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut st = c
        .prepare(
            "SELECT s.source_id, r.ts, r.vals FROM readings r JOIN sources s ON s.id = r.source \
             ORDER BY r.seq",
        )
        .unwrap();
    let out = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                serde_json::from_str(&r.get::<_, String>(2)?).unwrap(),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    out
}

fn wait_readings(db: &Path, n: usize) -> Vec<(String, i64, serde_json::Value)> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let r = readings(db);
        if r.len() >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "readings {r:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mqtt_config(port: u16, routes: &str) -> String {
    format!(
        "[store]\ncommit_max_delay = \"5ms\"\n[[buckets]]\nid = \"{B}\"\nname = \"barn\"\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"rejects-test\"\n\
         keepalive = \"5s\"\nreconnect_max_delay = \"1s\"\n{routes}"
    )
}

const ROUTE_SENSORS: &str =
    "[[mqtt.routes]]\ntopic = \"sensors/{device}\"\nbucket = \"507f1f77bcf86cd799439011\"\ndata_source = \"507f1f77bcf86cd799439012\"\n";
/// A route whose payloads must name their data source (they do not).
const ROUTE_CELLAR: &str =
    "[[mqtt.routes]]\ntopic = \"cellar/{device}\"\nbucket = \"507f1f77bcf86cd799439011\"\n";

/// A message on a topic no route matched is kept as `no_route`; after a
/// route is added, `rejects replay` stores it (at its receive time) and
/// takes it out of the rejected counts, beside the running daemon, which
/// keeps storing afterwards. A reject the fix does not cure stays.
#[test]
fn replay_after_a_config_fix_stores_what_now_decodes_and_the_ledger_balances() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let g = Gateway::start(
        dir.path(),
        &mqtt_config(broker.port, &format!("{ROUTE_SENSORS}{ROUTE_CELLAR}")),
    );
    g.wait_ready();
    assert!(
        g.wait_for_log("mqtt subscriptions active", EVENT_TIMEOUT)
            .is_some(),
        "{}",
        g.log_text()
    );
    mosquitto::publish(
        broker.port,
        vec![
            ("sensors/kitchen".into(), b"{\"t\": 21.5}".to_vec()),
            ("sensors/kitchen".into(), b"hello world".to_vec()),
            ("cellar/shelf".into(), b"{\"values\":{\"t\":7}}".to_vec()),
        ],
        None,
    );
    wait_readings(&g.db_path(), 1);
    let k = wait_kept(&g.db_path(), 2);
    let reasons: Vec<&str> = k.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(
        reasons,
        ["invalid_line_protocol", "no_data_source"],
        "{k:?}"
    );
    let stats = g.stats();
    assert_eq!(stats.bucket(B).unwrap().accepted, 1);
    assert_eq!(stats.rejected_by_reason["no_data_source"], 1);

    // Nothing is cured yet: a replay keeps both and says why.
    let o = cli(&g.config_path, &["rejects", "replay", "--all"]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    assert!(text.contains("0 reject(s) replayed"), "{text}");
    assert!(text.contains("still rejected: no_data_source"), "{text}");
    assert_eq!(kept(&g.db_path()).len(), 2);

    // The fix: the cellar's readings get a data source. Written to a copy
    // of the config the command reads (the daemon keeps its own).
    let fixed = dir.path().join("fixed.toml");
    let cellar = format!("{ROUTE_CELLAR}data_source = \"{S2}\"\n");
    std::fs::write(
        &fixed,
        format!(
            "[gateway]\ndata_dir = \"{}\"\n{}",
            g.db_path().parent().unwrap().display(),
            mqtt_config(broker.port, &format!("{ROUTE_SENSORS}{cellar}"))
        ),
    )
    .unwrap();
    let kept_at: i64 = dakkio_gateway::store::inspect(g.db_path())
        .unwrap()
        .query_row(
            "SELECT at FROM rejects WHERE reason = 'no_data_source'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let o = cli(&fixed, &["rejects", "replay", "--all", "--dry-run"]);
    assert!(
        stdout(&o).contains("1 reject(s) would be replayed, 1 kept"),
        "{o:?}"
    );
    assert_eq!(kept(&g.db_path()).len(), 2, "a dry run changes nothing");
    let o = cli(&fixed, &["rejects", "replay", "--all"]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    assert!(
        text.contains("1 reject(s) replayed into the queue (1 reading(s)), 1 kept"),
        "{text}"
    );
    let r = readings(&g.db_path());
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[1].0, S2);
    assert_eq!(r[1].2, serde_json::json!({"t": 7.0}));
    // Stamped with its receive time (when the reject was kept).
    let c = dakkio_gateway::store::inspect(g.db_path()).unwrap();
    assert_eq!(r[1].1, kept_at);
    drop(c);
    let left = kept(&g.db_path());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].2, "invalid_line_protocol");

    // The ledger: it left the rejects and entered the stored readings.
    let stats = g.stats();
    assert_eq!(stats.bucket(B).unwrap().accepted, 2);
    assert_eq!(stats.rejected_by_reason["no_data_source"], 0);
    assert_eq!(stats.rejected_by_reason["invalid_line_protocol"], 1);
    assert_eq!(stats.rejects_replayed, 1);
    let q = cli(&g.config_path, &["queue", "stats"]);
    assert!(stdout(&q).contains("1 replayed into the queue"), "{q:?}");

    // A second replay finds nothing more to do (no double store).
    let o = cli(&fixed, &["rejects", "replay", "--all"]);
    assert!(stdout(&o).contains("0 reject(s) replayed"), "{o:?}");

    // The daemon still stores: its next reading takes a fresh sequence.
    // That sequence may come from the daemon's own reservation, below the
    // replayed reading's (a command beside the daemon writes above it), so
    // the reading is found by its value, not by its place in seq order.
    mosquitto::publish(
        broker.port,
        vec![("sensors/kitchen".into(), b"{\"t\": 22}".to_vec())],
        None,
    );
    let r = wait_readings(&g.db_path(), 3);
    assert!(
        r.iter()
            .any(|(_, _, v)| *v == serde_json::json!({"t": 22.0})),
        "{r:?}"
    );
    assert!(!g.log_text().contains("storage failed"), "{}", g.log_text());
}

/// A serial port configured with the wrong format keeps its lines as
/// rejects; `list` (filtered), `show`, `purge` (refusing to run without a
/// selection) and a `replay` after the format is fixed, with the daemon
/// stopped.
#[test]
fn list_show_purge_and_replay_serial_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let mut pty = PtyPair::open(dir.path(), "dht");
    let dev = pty.dev.clone();
    let port = |format: &str| {
        format!(
            "[store]\ncommit_max_delay = \"5ms\"\n[[buckets]]\nid = \"{B}\"\nname = \"barn\"\n\
             [[serial]]\npath = \"{}\"\nline = {{ format = \"{format}\" }}\nbucket = \"barn\"\n\
             data_source = \"{S1}\"\n",
            dev.display()
        )
    };
    let mut g = Gateway::start(dir.path(), &port("kv"));
    g.wait_ready();
    assert!(g.wait_for_log("serial port open", EVENT_TIMEOUT).is_some());
    pty.write(b"Humidity: 58.00 %  Temperature: 22.40 C\nt=NaN\nt=\xff\n");
    let k = wait_kept(&g.db_path(), 3);
    let reasons: Vec<&str> = k.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(reasons, ["invalid_kv", "non_finite", "invalid_utf8"]);
    let origin = format!("serial:{}", pty.dev.display());
    assert!(k.iter().all(|r| r.1 == origin));

    let o = cli(&g.config_path, &["rejects", "list"]);
    let text = stdout(&o);
    for (id, _, reason) in &k {
        assert!(text.contains(&format!("{id:>6}  ")), "{text}");
        assert!(text.contains(reason.as_str()), "{text}");
    }
    let o = cli(
        &g.config_path,
        &["rejects", "list", "--reason", "non_finite"],
    );
    let text = stdout(&o);
    assert!(
        text.contains("t=NaN") && !text.contains("Humidity"),
        "{text}"
    );
    let o = cli(&g.config_path, &["rejects", "list", "--origin", "mqtt:"]);
    assert_eq!(stdout(&o).trim(), "no rejects kept");

    let o = cli(&g.config_path, &["rejects", "show", &k[0].0.to_string()]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    assert!(text.contains("reason   invalid_kv"), "{text}");
    assert!(text.contains(&format!("origin   {origin}")), "{text}");
    assert!(
        text.contains("Humidity: 58.00 %  Temperature: 22.40 C"),
        "{text}"
    );
    assert!(text.contains("still rejected: invalid_kv"), "{text}");
    assert!(
        text.contains("format = \\\"text\\\"") || text.contains("format = \"text\""),
        "{text}"
    );
    let o = cli(&g.config_path, &["rejects", "show", &k[2].0.to_string()]);
    assert!(stdout(&o).contains("hex      74 3d ff"), "{o:?}");
    let o = cli(&g.config_path, &["rejects", "show", "999999"]);
    assert_eq!(o.status.code(), Some(1));

    // Purge needs a selection; then only what it names goes.
    let o = cli(&g.config_path, &["rejects", "purge"]);
    assert_eq!(o.status.code(), Some(2));
    let o = cli(
        &g.config_path,
        &["rejects", "purge", "--all", "--reason", "invalid_utf8"],
    );
    assert!(stdout(&o).contains("1 reject(s) deleted"), "{o:?}");
    assert_eq!(kept(&g.db_path()).len(), 2);
    assert_eq!(
        g.stats().rejected_by_reason["invalid_utf8"],
        1,
        "still counted"
    );

    // Fix the format (the daemon stopped: the command needs none) and replay.
    assert!(g.terminate().success());
    std::fs::write(
        &g.config_path,
        format!(
            "[gateway]\ndata_dir = \"{}\"\n{}",
            g.db_path().parent().unwrap().display(),
            port("text")
        ),
    )
    .unwrap();
    let o = cli(
        &g.config_path,
        &[
            "rejects",
            "replay",
            &k[0].0.to_string(),
            &k[1].0.to_string(),
        ],
    );
    let text = stdout(&o);
    assert!(
        text.contains("1 reject(s) replayed into the queue (1 reading(s)), 1 kept"),
        "{text}"
    );
    assert!(text.contains("still rejected: non_finite"), "{text}");
    let r = readings(&g.db_path());
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, S1);
    assert_eq!(
        r[0].2,
        serde_json::json!({"humidity": 58.0, "temperature": 22.4})
    );
    let o = cli(&g.config_path, &["rejects", "purge", &k[1].0.to_string()]);
    assert!(stdout(&o).contains("1 reject(s) deleted"), "{o:?}");
    assert!(kept(&g.db_path()).is_empty());
}

/// `try --topic`: what the running configuration makes of a message,
/// without a daemon or a broker.
#[test]
fn try_an_mqtt_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\ndata_dir = \"{}\"\n{}",
            dir.path().display(),
            mqtt_config(1883, ROUTE_SENSORS)
        ),
    )
    .unwrap();
    let o = cli(
        &cfg,
        &[
            "try",
            "--topic",
            "sensors/kitchen",
            r#"{"t": 21.5, "ts": 1705314600}"#,
        ],
    );
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(text.contains("1 reading(s)"), "{text}");
    assert!(text.contains(&format!("bucket {B} (barn)")), "{text}");
    assert!(text.contains(&format!("data source {S1}")), "{text}");
    assert!(
        text.contains("time        2024-01-15T10:30:00.000Z"),
        "{text}"
    );
    assert!(text.contains("\"t\": 21.5"), "{text}");
    // No route: the reason and a hint, exit 1.
    let o = cli(&cfg, &["try", "--topic", "attic/x", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains("rejected: no_route"), "{text}");
    assert!(text.contains("hint: add a `[[mqtt.routes]]`"), "{text}");
    // The payload from stdin.
    let mut child = Command::new(crate::support::binary())
        .args(["try", "--topic", "sensors/kitchen", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"42").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(stdout(&o).contains("\"value\": 42.0"), "{o:?}");
    // Neither --topic nor --port: usage.
    let o = cli(&cfg, &["try", "1"]);
    assert_eq!(o.status.code(), Some(2));
}
