//! The retry policy for transient failures (5xx, timeouts, connection and
//! TLS errors, 429 without a usable reset time), in one place.
//!
//! The ceiling grows exponentially from `uplink.backoff_min` (default 1 s),
//! doubling per failure, up to `uplink.backoff_max` (default 5 min); it is
//! computed by `backon`'s `ExponentialBuilder`, set up in [`crate::retry`]
//! (no attempt limit: a bucket never gives up). Each wait is drawn uniformly from `[0, ceiling]` ("full
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
            builder: crate::retry::exponential(min, max.max(min)),
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
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Ceilings start at `min`, double, stay within [min, cap] and reach
        /// the cap; every wait lies in [FLOOR, max(ceiling, FLOOR)] for its
        /// attempt (full jitter); a reset starts again from `min`.
        #[test]
        fn delays_stay_within_bounds(
            min_ms in 1u64..=60_000,
            max_ms in 0u64..=3_600_000,
            attempts in 1usize..=40,
            reset_at in 0usize..40,
        ) {
            let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(max_ms));
            let cap = max.max(min);
            let mut ceilings = Backoff::new(min, max);
            let mut waits = Backoff::new(min, max);
            let mut prev = Duration::ZERO;
            for k in 0..attempts {
                if k == reset_at {
                    ceilings.reset();
                    waits.reset();
                    prev = Duration::ZERO;
                }
                let c = ceilings.next_ceiling();
                prop_assert!(c >= min && c <= cap, "ceiling {:?} outside [{:?}, {:?}]", c, min, cap);
                prop_assert!(c >= prev, "ceiling went down: {:?} after {:?}", c, prev);
                if prev.is_zero() {
                    prop_assert_eq!(c, min);
                } else {
                    // Doubling (within float rounding), until the cap.
                    let doubled = prev.saturating_mul(2).min(cap);
                    let diff = doubled.abs_diff(c);
                    prop_assert!(diff <= doubled / 100 + Duration::from_millis(1),
                        "ceiling {:?} after {:?}, expected {:?}", c, prev, doubled);
                }
                prev = c;
                let w = waits.next_wait();
                prop_assert!(w >= FLOOR && w <= c.max(FLOOR), "wait {:?} under ceiling {:?}", w, c);
            }
            // 2^22 ms > the largest cap: 23 failures in a row reach it.
            let since_reset = if reset_at < attempts { attempts - reset_at } else { attempts };
            if since_reset >= 23 {
                prop_assert_eq!(prev, cap, "the cap is reached");
            }
        }
    }

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
