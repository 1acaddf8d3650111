//! `dakkio-gateway reload --pid PID`, the unit's `ExecReload`, against the
//! real binary: it returns once the gateway has written the reload's
//! outcome (after applying it), exit 0 for a change applied, exit 1 for a
//! refused file; outside systemd it says what to do instead.

use std::process::Command;

use crate::support::gateway::Gateway;
use crate::support::{binary, EVENT_TIMEOUT};

const A: &str = "507f1f77bcf86cd799439011";

fn reload(pid: i32, run_dir: Option<&std::path::Path>) -> std::process::Output {
    let mut c = Command::new(binary());
    c.args(["reload", "--pid", &pid.to_string(), "--timeout", "30s"]);
    c.env_remove("RUNTIME_DIRECTORY");
    if let Some(d) = run_dir {
        c.env("RUNTIME_DIRECTORY", d);
    }
    c.output().unwrap()
}

#[test]
fn reload_returns_once_applied_and_fails_on_a_refused_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let mut g = Gateway::start_with_env(
        dir.path(),
        &format!("[[buckets]]\nid = \"{A}\"\nname = \"barn\"\n"),
        &[("RUNTIME_DIRECTORY", run.to_str().unwrap())],
    );
    g.wait_ready();
    g.wait_for_log("watching the configuration", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    let outcome = || std::fs::read_to_string(run.join("reload")).unwrap_or_default();
    let cfg = std::fs::read_to_string(&g.config_path).unwrap();

    // A change: applied by the time the command returns.
    std::fs::write(
        &g.config_path,
        cfg.replace("name = \"barn\"", "name = \"shed\""),
    )
    .unwrap();
    let out = reload(g.pid(), Some(&run));
    assert!(out.status.success(), "{out:?}\n{}", g.log_text());
    let written = outcome();
    assert!(written.starts_with(&format!("{} ", g.pid())), "{written}");
    assert!(
        written.ends_with(" applied\n") || written.ends_with(" unchanged\n"),
        "{written}"
    );
    assert!(g
        .wait_for_log("configuration reloaded", EVENT_TIMEOUT)
        .is_some());

    // An invalid file: refused, exit 1, the gateway runs on.
    std::fs::write(
        &g.config_path,
        format!("{cfg}\n[store]\nmax_size = \"1KiB\"\n"),
    )
    .unwrap();
    let out = reload(g.pid(), Some(&run));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(outcome().ends_with(" refused\n"), "{}", outcome());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("configuration refused"), "{stderr}");
    // The reason is the gateway's to log, once; not repeated here.
    assert!(!stderr.contains("max_size"), "{stderr}");

    // Outside systemd: no runtime directory, a hint instead of a wait.
    let out = reload(g.pid(), None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kill -HUP"));
    assert!(g.terminate().success(), "{}", g.log_text());
}
