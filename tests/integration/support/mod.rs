//! Helpers shared by the integration tests (and, through `#[path]`, the
//! fault suite): the shared test support lives in `testkit/`; this module
//! names it the way the tests use it and adds what only needs `env!`.

#![allow(unused_imports)]

pub use testkit::{
    cgroup_oom_kills, cgroup_peak, exclusive, gateway, is_root, make_cert, memory_cgroup, modbus,
    mosquitto, pty, recv_notification, remove_cgroup, EVENT_TIMEOUT,
};

/// The gateway binary built for these tests.
#[allow(dead_code)]
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dakkio-gateway")
}

/// Run the gateway's command `args` on the config file `config` (as
/// `--config`); panics with its stderr unless it succeeds; its stdout.
#[allow(dead_code)]
pub fn cli_ok(config: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
