//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod gateway;
pub mod mosquitto;

use std::time::Duration;

/// Generous upper bound for events that normally take milliseconds; tests
/// await the event and only fail when this passes.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway binary built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dakkio-gateway")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
