//! The one place a `backon` exponential backoff is set up: a delay that
//! starts at `min`, doubles per failure, stops growing at `max` and never
//! gives up (a gateway retries for as long as it runs). Callers add jitter
//! (`with_jitter`) or draw their own (the uplink's full jitter) and build.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Delays from `min`, doubling, capped at `max`, without an attempt limit.
pub fn exponential(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn doubles_up_to_the_cap_and_never_ends() {
        let ms = |n| Duration::from_millis(n);
        let delays: Vec<_> = exponential(ms(100), ms(500))
            .build()
            .take(6)
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 500, 500, 500]);
        assert_eq!(exponential(ms(1), ms(2)).build().take(1000).count(), 1000);
    }
}
