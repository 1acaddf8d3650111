//! Monthly call budget (`uplink.max_calls_per_month`): dakkio plans count
//! API calls per calendar month (UTC). With a budget set, the uplink spaces
//! its requests — across all buckets, since the quota is the
//! organisation's — so that the remaining calls last until the month ends:
//!
//! `interval = time left in the month / calls left`
//!
//! and a call may go no sooner than `interval` after the previous one. While
//! the interval is longer than `uplink.max_batch_age` the budget, not the
//! data, sets the pace ("pacing"): batches then fill up to dakkio's 1000
//! points instead of `uplink.batch_size`. With no call left the next one
//! waits for the next month.
//!
//! Calls are counted in the store's ledger under `uplink:calls:<YYYY-MM>`
//! (committed with the next group), so a restart keeps counting.

use std::sync::Arc;
use std::time::Duration;

use crate::reading::{civil_from_days, days_from_civil};

/// Wall-clock time in Unix milliseconds; injectable so that month
/// boundaries can be tested.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::reading::now_ms()
    }
}

/// A clock that starts at a chosen wall time and advances with tokio's
/// clock (so it follows `tokio::time::pause`/`advance` in tests).
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    start_ms: i64,
    start: tokio::time::Instant,
}

impl OffsetClock {
    pub fn starting_at(ms: i64) -> OffsetClock {
        OffsetClock {
            start_ms: ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + self.start.elapsed().as_millis() as i64
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// `(year, month)` of a Unix-ms time, UTC.
pub fn month_of(ms: i64) -> (i64, u32) {
    let (y, m, _) = civil_from_days(ms.div_euclid(86_400_000));
    (y, m)
}

/// The ledger counter name for a month: `uplink:calls:2026-11`.
pub fn counter_name(month: (i64, u32)) -> String {
    format!("uplink:calls:{:04}-{:02}", month.0, month.1)
}

/// Unix ms of the first instant of the month after `month`.
pub fn month_end_ms(month: (i64, u32)) -> i64 {
    let (y, m) = if month.1 == 12 {
        (month.0 + 1, 1)
    } else {
        (month.0, month.1 + 1)
    };
    days_from_civil(y, m, 1) * 86_400_000
}

/// The budget's state; shared by the forwarders behind a mutex that is
/// never held across an `.await`.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    month: (i64, u32),
    used: u64,
    /// The earliest moment (Unix ms) the next call may go.
    next_at_ms: i64,
}

/// What [`Budget::reserve`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Wait this long, then send (the call is already counted).
    pub wait: Duration,
    /// The current spacing between calls.
    pub interval: Duration,
    /// Calls left this month after this one.
    pub remaining: u64,
    /// The month the call counts against.
    pub month: (i64, u32),
}

impl Budget {
    /// `used` calls already spent in the month of `now_ms` (from the ledger).
    pub fn new(limit: u64, used: u64, now_ms: i64) -> Budget {
        Budget {
            limit,
            month: month_of(now_ms),
            used,
            next_at_ms: now_ms,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn roll(&mut self, now_ms: i64) {
        let m = month_of(now_ms);
        if m != self.month {
            self.month = m;
            self.used = 0;
            self.next_at_ms = self.next_at_ms.min(now_ms);
        }
    }

    /// The spacing that makes what is left last until the month's end.
    pub fn interval(&mut self, now_ms: i64) -> Duration {
        self.roll(now_ms);
        let left_ms = (month_end_ms(self.month) - now_ms).max(0) as u64;
        let remaining = self.limit.saturating_sub(self.used);
        if remaining == 0 {
            return Duration::from_millis(left_ms);
        }
        Duration::from_millis(left_ms / remaining)
    }

    /// Reserve the next call: when it may go, counted now. With the month's
    /// budget spent the call goes at the start of the next month.
    pub fn reserve(&mut self, now_ms: i64) -> Slot {
        self.roll(now_ms);
        if self.used >= self.limit {
            let start = month_end_ms(self.month);
            let next_month = month_of(start);
            // Counted against the next month, by the caller at send time.
            return Slot {
                wait: Duration::from_millis((start - now_ms).max(0) as u64),
                interval: Duration::from_millis((start - now_ms).max(0) as u64),
                remaining: self.limit.saturating_sub(1),
                month: next_month,
            };
        }
        let interval = self.interval(now_ms);
        let at = self.next_at_ms.max(now_ms);
        self.used += 1;
        self.next_at_ms = at + interval.as_millis() as i64;
        Slot {
            wait: Duration::from_millis((at - now_ms) as u64),
            interval,
            remaining: self.limit - self.used,
            month: self.month,
        }
    }

    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i64, m: u32, d: u32, h: i64) -> i64 {
        days_from_civil(y, m, d) * 86_400_000 + h * 3_600_000
    }

    #[test]
    fn month_arithmetic() {
        assert_eq!(month_of(ms(2026, 11, 30, 23)), (2026, 11));
        assert_eq!(month_end_ms((2026, 11)), ms(2026, 12, 1, 0));
        assert_eq!(month_end_ms((2026, 12)), ms(2027, 1, 1, 0));
        assert_eq!(counter_name((2026, 3)), "uplink:calls:2026-03");
    }

    #[test]
    fn interval_spreads_what_is_left_over_the_time_left() {
        // 10 days left, 1000 calls left → one call per 864 s.
        let now = ms(2026, 11, 21, 0);
        let mut b = Budget::new(10_000, 9_000, now);
        assert_eq!(b.interval(now), Duration::from_secs(864));
        let s1 = b.reserve(now);
        assert_eq!(s1.wait, Duration::ZERO);
        assert_eq!(s1.remaining, 999);
        let s2 = b.reserve(now);
        assert_eq!(s2.wait, Duration::from_secs(864));
        // Idle time is not lost: the next slot never lies in the past.
        let later = now + 10 * 864_000;
        assert_eq!(b.reserve(later).wait, Duration::ZERO);
    }

    #[test]
    fn spent_budget_waits_for_next_month_then_starts_again() {
        let now = ms(2026, 11, 30, 12);
        let mut b = Budget::new(100, 100, now);
        let s = b.reserve(now);
        assert_eq!(s.wait, Duration::from_secs(12 * 3600));
        assert_eq!(s.month, (2026, 12));
        let dec = ms(2026, 12, 1, 0);
        let s = b.reserve(dec);
        assert_eq!(s.wait, Duration::ZERO);
        assert_eq!(s.month, (2026, 12));
        assert_eq!(b.used(), 1);
    }
}
