//! The retry policy for transient failures (5xx, timeouts, connection and
//! TLS errors, 429 without a usable reset time), in one place.
//!
//! The ceiling grows exponentially from `uplink.backoff_min` (default 1 s),
//! doubling per failure, up to `uplink.backoff_max` (default 5 min); it is
//! computed by `backon`'s `ExponentialBuilder` (no attempt limit: a bucket
//! never gives up). Each wait is drawn uniformly from `[0, ceiling]` ("full
//! jitter", so that a fleet of gateways coming back after an outage spreads
//! out), with a floor of [`FLOOR`] so a bucket never spins. A success
//! resets the ceiling.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;

/// The shortest wait between two attempts.
pub const FLOOR: Duration = Duration::from_millis(50);

pub struct Backoff {
    builder: ExponentialBuilder,
    ceilings: Option<backon::ExponentialBackoff>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            builder: ExponentialBuilder::default()
                .with_min_delay(min)
                .with_max_delay(max.max(min))
                .with_factor(2.0)
                .without_max_times(),
            ceilings: None,
        }
    }

    /// The ceiling for the next wait (exposed for tests and metrics).
    fn next_ceiling(&mut self) -> Duration {
        let builder = self.builder;
        self.ceilings
            .get_or_insert_with(|| builder.build())
            .next()
            .unwrap_or(Duration::from_secs(300))
    }

    /// The next wait: full jitter under the current ceiling.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.next_ceiling();
        let jittered = ceiling.mul_f64(rand::rng().random_range(0.0..=1.0));
        jittered.max(FLOOR)
    }

    /// After a success: start again from the minimum.
    pub fn reset(&mut self) {
        self.ceilings = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let c: Vec<u64> = (0..6).map(|_| b.next_ceiling().as_secs()).collect();
        assert_eq!(c, vec![1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.next_ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn waits_are_full_jitter_within_bounds() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let mut below_half = 0;
        for _ in 0..4 {
            b.next_wait();
        }
        for _ in 0..400 {
            let w = b.next_wait();
            assert!(w >= FLOOR && w <= Duration::from_secs(8), "{w:?}");
            if w < Duration::from_secs(4) {
                below_half += 1;
            }
        }
        // uniform on [0, 8 s]: about half below 4 s
        assert!((120..=280).contains(&below_half), "{below_half}");
    }
}
