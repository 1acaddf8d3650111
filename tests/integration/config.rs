//! Configuration fixtures: every valid file passes `check`; every invalid
//! one is refused with exit code 2 and the message its header expects
//! (file, line, key, text).

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn check(path: &Path) -> (i32, String, String) {
    let out = Command::new(crate::support::binary())
        .args(["check", "--config"])
        .arg(path)
        .env_remove("DAKKIO_GATEWAY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn header(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# {name}:")))
        .unwrap_or_else(|| panic!("fixture lacks `# {name}:`"))
        .trim()
        .to_owned()
}

#[test]
fn valid_fixtures_pass_check() {
    for f in fixtures("valid") {
        let (code, out, err) = check(&f);
        assert_eq!(code, 0, "{}: {err}", f.display());
        assert!(out.contains(": ok"), "{out}");
    }
}

#[test]
fn the_shipped_example_passes_check() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let (code, out, err) = check(&example);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("NO KEY YET"), "{out}");
    // `config example` prints exactly the shipped file.
    let printed = Command::new(crate::support::binary())
        .args(["config", "example"])
        .output()
        .unwrap();
    assert_eq!(printed.stdout, std::fs::read(&example).unwrap());
}

#[test]
fn invalid_fixtures_name_file_line_and_key() {
    for f in fixtures("invalid") {
        let text = std::fs::read_to_string(&f).unwrap();
        let line = header(&text, "expect-line");
        let key = header(&text, "expect-key");
        let expect = header(&text, "expect");
        let (code, _, err) = check(&f);
        let name = f.display();
        assert_eq!(code, 2, "{name} was accepted:\n{err}");
        assert!(
            err.contains(&format!("{name}:{line}:")),
            "{name}: no line {line} in:\n{err}"
        );
        if !key.is_empty() {
            assert!(
                err.contains(&format!("`{key}`")),
                "{name}: key `{key}` not named in:\n{err}"
            );
        }
        assert!(err.contains(&expect), "{name}: `{expect}` not in:\n{err}");
        assert!(
            !err.contains("0123456789abcdefghij"),
            "{name}: a key was shown:\n{err}"
        );
    }
}

#[test]
fn a_missing_file_says_how_to_start() {
    let (code, _, err) = check(Path::new("/nonexistent/gateway.toml"));
    assert_eq!(code, 2);
    assert!(err.contains("config example"), "{err}");
}

/// A FIFO where a key file belongs used to hang `check` (and `run`, and a
/// reload) waiting for a writer. Now `check` answers at once: the admin
/// key file is refused (exit 2) with a message naming the file. The limit
/// on the wait only keeps a regression from hanging the suite; it is not a
/// measure of speed.
#[test]
fn check_refuses_a_fifo_as_a_key_file_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("admin.key");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\nwrite_key_file = \"admin.key\"\n\
         [api]\nadmin_key_file = \"admin.key\"\n",
    )
    .unwrap();
    let child = Command::new(crate::support::binary())
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("DAKKIO_GATEWAY_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill has no memory preconditions; `pid` is our child,
            // not yet reaped (its waiter has not returned).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("`check` is still waiting on the FIFO");
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "`api.admin_key_file`: file `{}` cannot be read: it is a FIFO, not a regular file",
            fifo.display()
        )),
        "{err}"
    );
}

/// A key file swapped for a FIFO under a running gateway used to wedge the
/// reload (blocked opening it) and with it SIGTERM. Now the reload refuses
/// the file at once, naming it, the gateway keeps running on its previous
/// configuration, and SIGTERM stops it cleanly.
#[test]
fn a_fifo_swapped_in_for_a_key_file_neither_wedges_reload_nor_sigterm() {
    use crate::support::gateway::Gateway;
    use crate::support::EVENT_TIMEOUT;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("admin.key");
    std::fs::write(&key, "dakkio_a_FifoSwapAdmin0123456789abcdefgh\n").unwrap();
    let body = format!(
        "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\nwrite_key_env = \"UNSET_FIFO_KEY\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\nadmin_key_file = \"{}\"\n",
        key.display()
    );
    let mut g = Gateway::start(dir.path(), &body);
    g.wait_ready();
    // The watch starts after `gateway running`: a swap before it is unseen.
    g.wait_for_log("watching the configuration for changes", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("no watch:\n{}", g.log_text()));

    std::fs::remove_file(&key).unwrap();
    let made = Command::new("mkfifo").arg(&key).status().unwrap();
    assert!(made.success());
    let refused = g
        .wait_for_log("configuration not reloaded", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("no refused reload:\n{}", g.log_text()));
    assert!(
        refused.contains("it is a FIFO, not a regular file"),
        "{refused}"
    );
    assert!(!g.log_text().contains("FifoSwapAdmin"), "{}", g.log_text());

    // SAFETY: signalling our own child process.
    unsafe { libc::kill(g.pid(), libc::SIGTERM) };
    let status = g
        .wait_exit(EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("SIGTERM did not stop the gateway:\n{}", g.log_text()));
    assert!(status.success(), "{status:?}\n{}", g.log_text());
}
