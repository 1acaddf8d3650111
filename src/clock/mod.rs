//! Whether the system clock can be trusted, and the monotonic boot clock
//! that readings are held on until it can.
//!
//! A Raspberry Pi has no real-time clock: after a power cut it starts with
//! the time fake-hwclock saved (or 1970) until NTP answers. The kernel
//! knows: systemd-timesyncd and chrony clear `STA_UNSYNC` in the NTP status
//! (`adjtimex`) once they have set the clock, and keep `maxerror` below
//! 16 s; `adjtimex` returns `TIME_ERROR` while the clock is unsynchronised.
//! [`SystemClock`] reads exactly that, with `CLOCK_BOOTTIME` (which counts
//! suspend and is never stepped) and the kernel's boot id
//! (`/proc/sys/kernel/random/boot_id`, new at every boot).
//!
//! Everything goes through [`ClockSource`] so tests can play a clock that
//! is not synchronised yet: [`FileClock`], chosen by [`system`] only in
//! builds with the `fault-injection` feature (the tests') when
//! [`TEST_CLOCK_FILE_ENV`] names a file.

use std::sync::Arc;

pub mod trust;

/// What the kernel says about the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockStatus {
    /// Set by an NTP client (timesyncd, chrony) and still within bounds.
    pub synced: bool,
    /// The kernel's `maxerror`, µs (-1 when unknown).
    pub maxerror_us: i64,
}

/// `maxerror` at or above this (16 s, the kernel's NTP_PHASE_LIMIT) means
/// nobody has disciplined the clock for a long time.
pub const MAX_ERROR_US: i64 = 16_000_000;

/// The clock as the store's writer and the clock-trust task see it.
pub trait ClockSource: Send + Sync + std::fmt::Debug {
    fn status(&self) -> ClockStatus;
    /// This boot's id (changes at every boot).
    fn boot_id(&self) -> String;
    /// Milliseconds since boot (`CLOCK_BOOTTIME`).
    fn boot_ms(&self) -> i64;
    /// The wall clock, Unix ms.
    fn wall_ms(&self) -> i64 {
        crate::reading::now_ms()
    }
}

/// The real clock: `adjtimex`, `CLOCK_BOOTTIME`, the kernel's boot id.
#[derive(Debug, Default)]
pub struct SystemClock;

impl ClockSource for SystemClock {
    fn status(&self) -> ClockStatus {
        // SAFETY: an all-zero timex is a valid argument; `modes = 0` only
        // reads the kernel's NTP state.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        // SAFETY: `tx` is a valid, exclusively borrowed timex.
        let state = unsafe { libc::adjtimex(&mut tx) };
        if state < 0 {
            // No way to ask (a sandbox that forbids it): trust the clock,
            // as the gateway did before it could tell.
            return ClockStatus {
                synced: true,
                maxerror_us: -1,
            };
        }
        let maxerror_us = tx.maxerror as i64;
        let synced = state != libc::TIME_ERROR
            && tx.status & libc::STA_UNSYNC == 0
            && maxerror_us < MAX_ERROR_US;
        ClockStatus {
            synced,
            maxerror_us,
        }
    }

    fn boot_id(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    fn boot_ms(&self) -> i64 {
        // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `ts` is a valid, exclusively borrowed timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        ts.tv_sec as i64 * 1000 + ts.tv_nsec as i64 / 1_000_000
    }
}

/// The test-only clock: a file whose first word is `synced` or `unsynced`
/// (read at every call, so a test flips it while the gateway runs),
/// optionally followed by `boot=<id>` to pretend another boot; a value
/// without `/` is the content itself (`synced`). Boot time
/// and wall time are the real ones (a test moves the wall clock with
/// libfaketime).
#[cfg(any(test, feature = "fault-injection"))]
pub const TEST_CLOCK_FILE_ENV: &str = "DAKKIO_GATEWAY_TEST_CLOCK_FILE";

#[cfg(any(test, feature = "fault-injection"))]
#[derive(Debug)]
pub struct FileClock {
    pub path: std::path::PathBuf,
}

#[cfg(any(test, feature = "fault-injection"))]
impl FileClock {
    fn words(&self) -> Vec<String> {
        // A value without a `/` is the content itself (`synced`), for
        // processes that need no flip.
        let text = match self.path.to_str() {
            Some(s) if !s.contains('/') => s.to_owned(),
            _ => std::fs::read_to_string(&self.path).unwrap_or_default(),
        };
        text.split_whitespace().map(str::to_owned).collect()
    }
}

#[cfg(any(test, feature = "fault-injection"))]
impl ClockSource for FileClock {
    fn status(&self) -> ClockStatus {
        ClockStatus {
            synced: self.words().first().is_some_and(|w| w == "synced"),
            maxerror_us: -1,
        }
    }

    fn boot_id(&self) -> String {
        self.words()
            .iter()
            .find_map(|w| w.strip_prefix("boot=").map(str::to_owned))
            .unwrap_or_else(|| SystemClock.boot_id())
    }

    fn boot_ms(&self) -> i64 {
        SystemClock.boot_ms()
    }
}

/// The clock the gateway runs on: the system's, or (test builds only) the
/// file named by [`TEST_CLOCK_FILE_ENV`].
pub fn system() -> Arc<dyn ClockSource> {
    #[cfg(feature = "fault-injection")]
    if let Some(path) = std::env::var_os(TEST_CLOCK_FILE_ENV) {
        tracing::warn!(
            env = TEST_CLOCK_FILE_ENV,
            "test-only clock: synchronisation is read from a file; never use this in production"
        );
        return Arc::new(FileClock { path: path.into() });
    }
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_answers() {
        let c = SystemClock;
        // Whatever the machine's NTP state, the calls work and agree.
        let s = c.status();
        if s.synced {
            assert!(s.maxerror_us < MAX_ERROR_US);
        }
        assert_eq!(c.boot_id().len(), 36, "{}", c.boot_id());
        let (a, b) = (c.boot_ms(), c.boot_ms());
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn the_file_clock_is_flipped_by_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock");
        let c = FileClock { path: path.clone() };
        assert!(!c.status().synced, "no file: not synchronised");
        std::fs::write(&path, "unsynced boot=earlier\n").unwrap();
        assert!(!c.status().synced);
        assert_eq!(c.boot_id(), "earlier");
        std::fs::write(&path, "synced\n").unwrap();
        assert!(c.status().synced);
        assert_eq!(c.boot_id(), SystemClock.boot_id());
    }
}
