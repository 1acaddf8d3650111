//! What the gateway writes to its disk per day, for comparison with the SD
//! card's endurance: `write_bytes` of `/proc/self/io` (bytes this process
//! sent to the block layer: the WAL, checkpoints, the database file),
//! sampled by the writer thread after its commits, at most once a
//! [`SAMPLE_EVERY`], over a window of up to [`WINDOW`].
//!
//! The writer publishes the rate as the gauge
//! `dakkio_store_written_bytes_per_day` and, every [`PERSIST_EVERY`],
//! stores it in meta [`STATE_KEY`] inside a group's transaction (no commit
//! of its own) for `queue stats`. Almost everything the process writes is
//! the store's: logs go to journald over a socket, which `write_bytes`
//! does not count. Where `/proc/self/io` is missing (not Linux, a hardened
//! `/proc`) nothing is reported.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The meta key `queue stats` reads.
pub(crate) const STATE_KEY: &str = "store:written_bytes_per_day";
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// The rate is over the last day at most.
pub(super) const WINDOW: Duration = Duration::from_secs(86_400);
pub(super) const PERSIST_EVERY: Duration = Duration::from_secs(600);

/// `write_bytes` of this process, if the kernel reports it.
pub(super) fn process_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Samples of a monotonic byte counter and the rate over them.
#[derive(Debug)]
pub(super) struct WearMeter {
    samples: VecDeque<(Instant, u64)>,
    last_persist: Option<Instant>,
}

impl WearMeter {
    pub(super) fn new(now: Instant, bytes: Option<u64>) -> WearMeter {
        let mut samples = VecDeque::new();
        if let Some(b) = bytes {
            samples.push_back((now, b));
        }
        WearMeter {
            samples,
            last_persist: None,
        }
    }

    /// Whether a new sample is due at `now`.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.samples
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= SAMPLE_EVERY)
    }

    pub(super) fn sample(&mut self, now: Instant, bytes: u64) {
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per day over the samples, once they span a sample interval.
    pub(super) fn per_day(&self) -> Option<u64> {
        let (t0, b0) = *self.samples.front()?;
        let (t1, b1) = *self.samples.back()?;
        let span = t1.saturating_duration_since(t0);
        if span < SAMPLE_EVERY {
            return None;
        }
        let per_s = b1.saturating_sub(b0) as f64 / span.as_secs_f64();
        Some((per_s * 86_400.0) as u64)
    }

    /// The value to persist now, if it is time to.
    pub(super) fn due_for_persisting(&mut self, now: Instant) -> Option<u64> {
        if self
            .last_persist
            .is_some_and(|t| now.saturating_duration_since(t) < PERSIST_EVERY)
        {
            return None;
        }
        let v = self.per_day()?;
        self.last_persist = Some(now);
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_bytes_over_the_window_scaled_to_a_day() {
        let t0 = Instant::now();
        let mut m = WearMeter::new(t0, Some(1000));
        assert_eq!(m.per_day(), None, "one sample is no rate");
        assert!(!m.due(t0 + Duration::from_secs(59)));
        assert!(m.due(t0 + SAMPLE_EVERY));
        m.sample(t0 + SAMPLE_EVERY, 1000 + 60 * 500);
        assert_eq!(m.per_day(), Some(500 * 86_400));
    }

    #[test]
    fn old_samples_leave_the_window() {
        let t0 = Instant::now();
        let mut m = WearMeter::new(t0, Some(0));
        // A burst on the first day, nothing on the second.
        m.sample(t0 + Duration::from_secs(3600), 86_400_000);
        for h in 2..=49u64 {
            m.sample(t0 + Duration::from_secs(3600 * h), 86_400_000);
        }
        assert_eq!(m.per_day(), Some(0), "the burst has left the window");
    }

    #[test]
    fn persisted_at_most_every_interval() {
        let t0 = Instant::now();
        let mut m = WearMeter::new(t0, Some(0));
        m.sample(t0 + SAMPLE_EVERY, 60);
        assert_eq!(m.due_for_persisting(t0 + SAMPLE_EVERY), Some(86_400));
        assert_eq!(m.due_for_persisting(t0 + SAMPLE_EVERY * 2), None);
        assert!(m
            .due_for_persisting(t0 + SAMPLE_EVERY + PERSIST_EVERY)
            .is_some());
    }

    #[test]
    fn this_process_reports_its_writes_on_linux() {
        if std::path::Path::new("/proc/self/io").exists() {
            assert!(process_write_bytes().is_some());
        }
    }
}
