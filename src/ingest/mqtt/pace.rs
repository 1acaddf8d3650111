//! When the MQTT input hurries the store's commit (no I/O; fed by the
//! commit task, tested event by event below).
//!
//! The store waits up to `store.commit_max_delay` (1 s) for company before
//! it commits, which is right while messages trickle in, and wrong when the
//! broker has stopped sending because its in-flight window
//! (`max_inflight_messages`, 20 in mosquitto's default config) is full of
//! messages that wait for this very commit: ingest would fall to one window
//! per second. MQTT 3.1.1 does not tell a client the broker's window, so
//! the input infers a stall from the stream's own rhythm: a silence much
//! longer than the recent gaps between arrivals, while messages wait for
//! their commit, means the broker is waiting for acks; the input then
//! hurries the commit.
//!
//! - Gaps are smoothed (EWMA, weight 1/4); a gap counts as at most
//!   [`GAP_CAP`], so an idle hour does not blind the detector afterwards.
//! - The silence that means a stall is [`STALL_FACTOR`] × the smoothed gap,
//!   at least [`STALL_FLOOR`]. At a steady 20 msg/s that is 800 ms: no
//!   hurry, one commit a second. At 1000 msg/s it is 16 ms, above the
//!   scheduling hiccups of a busy machine (with 6 gaps, hiccups hurried a
//!   commit every few milliseconds and doubled the bytes written per
//!   reading). Behind a window of 20 at full speed, the window arrives
//!   within a millisecond and the silence after it is detected after 2 ms.
//! - At most one hurry per silence: the next arrival re-arms it.

use std::time::{Duration, Instant};

/// Gaps longer than this count as this long.
pub(super) const GAP_CAP: Duration = Duration::from_millis(50);
/// A silence this many smoothed gaps long is a stall.
pub(super) const STALL_FACTOR: u32 = 16;
/// … and at least this long (scheduling noise is shorter).
pub(super) const STALL_FLOOR: Duration = Duration::from_millis(2);

#[derive(Debug, Default)]
pub(super) struct Pace {
    last_arrival: Option<Instant>,
    gap: Option<Duration>,
    hurried: bool,
}

impl Pace {
    /// Messages arrived at `now`.
    pub(super) fn on_arrival(&mut self, now: Instant) {
        if let Some(last) = self.last_arrival {
            let g = now.saturating_duration_since(last).min(GAP_CAP);
            self.gap = Some(match self.gap {
                Some(avg) => (avg * 3 + g) / 4,
                None => g,
            });
        }
        self.last_arrival = Some(now);
        self.hurried = false;
    }

    /// When to hurry the commit if nothing arrives before, given that
    /// messages wait for their commit (`waiting`); `None`: not now.
    pub(super) fn hurry_at(&self, waiting: bool) -> Option<Instant> {
        if !waiting || self.hurried {
            return None;
        }
        let last = self.last_arrival?;
        let gap = self.gap.unwrap_or(GAP_CAP);
        Some(last + (gap * STALL_FACTOR).max(STALL_FLOOR))
    }

    /// The commit was hurried (for this silence).
    pub(super) fn on_hurried(&mut self) {
        self.hurried = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_steady_trickle_never_hurries_within_its_gaps() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        for i in 0..40 {
            p.on_arrival(t0 + ms(50 * i));
        }
        let at = p.hurry_at(true).unwrap();
        assert!(
            at >= t0 + ms(50 * 39) + ms(300),
            "20 msg/s: a stall is a silence of 300 ms"
        );
    }

    #[test]
    fn a_burst_then_silence_hurries_after_the_floor() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        for i in 0..20 {
            p.on_arrival(t0 + Duration::from_micros(10 * i));
        }
        let last = t0 + Duration::from_micros(190);
        let at = p.hurry_at(true).unwrap();
        assert!(
            at <= last + ms(3),
            "a stalled window is noticed within a few ms"
        );
        assert!(at >= last + STALL_FLOOR);
    }

    #[test]
    fn nothing_waiting_or_already_hurried_means_no_hurry() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        p.on_arrival(t0);
        p.on_arrival(t0 + ms(1));
        assert_eq!(p.hurry_at(false), None);
        p.on_hurried();
        assert_eq!(p.hurry_at(true), None);
        p.on_arrival(t0 + ms(2));
        assert!(p.hurry_at(true).is_some(), "the next arrival re-arms it");
    }

    #[test]
    fn an_idle_hour_does_not_blind_the_detector() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        p.on_arrival(t0);
        p.on_arrival(t0 + Duration::from_secs(3600));
        let last = t0 + Duration::from_secs(3600);
        assert!(p.hurry_at(true).unwrap() <= last + GAP_CAP * STALL_FACTOR);
    }
}
