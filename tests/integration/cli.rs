//! The daemon's life cycle from the outside: start on the example config,
//! say what it waits for, stop cleanly on SIGTERM, exit codes.

use std::process::Command;

use crate::support::gateway::Gateway;
use crate::support::EVENT_TIMEOUT;

#[test]
fn starts_on_the_example_config_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
            .unwrap();
    let mut g = Gateway::start(dir.path(), &example);
    g.wait_ready();
    assert!(
        g.log_text().contains("has no write key yet"),
        "{}",
        g.log_text()
    );
    let status = g.terminate();
    assert!(status.success(), "exit {status:?}\n{}", g.log_text());
    assert!(g.wait_for_log("stopped cleanly", EVENT_TIMEOUT).is_some());
    // A clean stop leaves a checkpointed database and no WAL behind.
    assert!(g.db_path().exists());
    let wal = std::fs::metadata(format!("{}-wal", g.db_path().display()));
    assert!(wal.map(|m| m.len() == 0).unwrap_or(true));
}

#[test]
fn usage_errors_exit_2_and_runtime_failures_exit_1() {
    let out = Command::new(crate::support::binary())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // A data directory that cannot be created is a runtime failure.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        format!("[gateway]\ndata_dir = \"{}/sub\"\n", blocker.display()),
    )
    .unwrap();
    let out = Command::new(crate::support::binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot use the data directory"), "{err}");
}

#[test]
fn queue_stats_reads_beside_a_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start(
        dir.path(),
        "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\nname = \"barn\"\n",
    );
    g.wait_ready();
    let out = Command::new(crate::support::binary())
        .args(["queue", "stats", "--config"])
        .arg(&g.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("barn"), "{text}");
    assert!(text.contains("database"), "{text}");
    let json = Command::new(crate::support::binary())
        .args(["queue", "stats", "--json", "--config"])
        .arg(&g.config_path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v["used_bytes"].as_u64().unwrap() > 0);
    assert!(g.terminate().success());
}

/// Under systemd: READY=1 once running, STATUS= with the queue and degraded
/// parts, WATCHDOG=1 fed while the store writer answers, STOPPING=1 on
/// SIGTERM. A Unix datagram socket plays the service manager.
#[test]
fn tells_systemd_ready_status_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    let mut g = Gateway::start_with_env(
        dir.path(),
        "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\nname = \"barn\"\n",
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            // 300 ms: the gateway pings its writer every 100 ms.
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    // Wait for three watchdog pings (each proves a writer round trip).
    while seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() < 3 {
        let n = crate::support::recv_notification(&sock, &mut buf)
            .expect("a notification from the gateway");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen[0].contains("READY=1"), "{seen:?}");
    let status = seen
        .iter()
        .find(|m| m.starts_with("STATUS="))
        .expect("a STATUS= line");
    assert!(status.contains("0 readings queued"), "{status}");
    assert!(g.terminate().success());
    loop {
        let n = crate::support::recv_notification(&sock, &mut buf).expect("STOPPING=1 before exit");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
}

/// `STATUS=` follows the queue without a poll: with no watchdog (pings
/// every 30 s), a reading accepted through the local API shows in the
/// line within moments, computed when the writer commits it. (That an
/// idle gateway does not wake for it is `cargo bench --bench footprint`'s
/// wake-up figure.)
#[test]
fn status_line_follows_the_queue_when_a_group_commits() {
    use std::os::unix::net::UnixDatagram;
    const ADMIN: &str = "dakkio_a_StatusLineAdminKey0123456789abcdef";
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // Well under the 30 s between pings, which would also recompute it.
    sock.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    let g = Gateway::start_with_env(
        dir.path(),
        "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\nname = \"barn\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\nadmin_key_env = \"STATUS_LINE_ADMIN\"\n",
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("STATUS_LINE_ADMIN", ADMIN),
        ],
    );
    let mut buf = [0u8; 4096];
    let mut next_status = || loop {
        let n =
            crate::support::recv_notification(&sock, &mut buf).expect("a STATUS= line within 15 s");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if let Some(line) = m.lines().find_map(|l| l.strip_prefix("STATUS=")) {
            return line.to_owned();
        }
    };
    let first = next_status();
    assert!(first.contains("0 readings queued"), "{first}");
    let addr = g.api_addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let post = |t: f64| {
        rt.block_on(async {
            reqwest::Client::new()
                .post(format!("http://{addr}/api/data"))
                .header("X-API-Key", ADMIN)
                .json(&serde_json::json!({
                    "bucketId": "507f1f77bcf86cd799439011",
                    "dataSourceId": "507f1f77bcf86cd799439012",
                    "values": {"t": t}
                }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // The bucket has no write key: readings stay queued. The first may
    // also be seen by a recomputation for the parts' start-up conditions;
    // the second comes when nothing else changes.
    for n in 1..=2 {
        assert_eq!(post(21.5), 201, "{}", g.log_text());
        let mut line = next_status();
        while !line.contains(&format!("{n} readings queued")) {
            assert!(
                line.contains(&format!("{} readings queued", n - 1)),
                "{line}"
            );
            line = next_status();
        }
    }
}

/// `queue stats | head -1`: the reader is gone before the command writes.
/// The command must end cleanly (exit 0, no panic), as `println!` did not:
/// it panicked on EPIPE with exit 101.
#[test]
fn queue_stats_into_a_closed_pipe_exits_cleanly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start(
        dir.path(),
        "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\nname = \"barn\"\n",
    );
    g.wait_ready();
    for args in [&["queue", "stats"][..], &["queue", "stats", "--json"]] {
        // A pipe whose read end is closed before the command starts: its
        // first write fails with EPIPE (Rust ignores SIGPIPE).
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just opened by pipe() and are owned
        // by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(read);
        let out = Command::new(crate::support::binary())
            .args(args)
            .arg("--config")
            .arg(&g.config_path)
            .stdout(std::process::Stdio::from(write))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
    // The same output into a pipe that is read still works.
    let out = Command::new(crate::support::binary())
        .args(["queue", "stats", "--config"])
        .arg(&g.config_path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("barn"));
    assert!(g.terminate().success());
}
