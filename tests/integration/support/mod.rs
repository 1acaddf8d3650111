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
