//! The clock alert rules run on: durations, silences and cooldowns are
//! measured with it. [`SystemClock`] in the daemon; [`OffsetClock`] (the
//! system clock plus an offset a test moves forward) in unit tests and,
//! with the `fault-injection` feature, when the integration tests ask for
//! it, so that "no data for 30 minutes" is tested without waiting.

use std::sync::atomic::{AtomicI64, Ordering};

/// Unix milliseconds, now.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::reading::now_ms()
    }
}

/// The wall clock plus an offset moved by [`OffsetClock::advance`].
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
}

impl OffsetClock {
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        crate::reading::now_ms() + self.offset_ms.load(Ordering::SeqCst)
    }
}

/// The test-only switch: with `1`, the alert clock is an [`OffsetClock`]
/// that `POST /api/_test/alerts/clock` (admin key) moves forward. Only in
/// builds with the `fault-injection` feature; logged at WARN when set.
#[cfg(feature = "fault-injection")]
pub const TEST_CLOCK_ENV: &str = "DAKKIO_GATEWAY_TEST_ALERT_CLOCK";
