//! When may a refused request (429) be tried again: `Retry-After` (seconds
//! or an HTTP-date) or `X-RateLimit-Reset` (Unix seconds), clamped so that a
//! wrong clock or a garbage header can neither hammer dakkio nor park a
//! bucket for a month.
//!
//! Rules (documented in docs/operator-manual.md, "Delivery"):
//! - `Retry-After` wins over `X-RateLimit-Reset` when both are usable;
//! - `X-RateLimit-Reset` below 10^9 is read as seconds from now (some
//!   services send a delta), otherwise as Unix seconds;
//! - a moment in the past, zero, or an unparsable value → `None` (the caller
//!   backs off exponentially instead);
//! - the result is at least [`MIN_WAIT`] and at most [`MAX_WAIT`]; after
//!   `MAX_WAIT` the bucket simply asks again (one call).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const MIN_WAIT: Duration = Duration::from_secs(1);
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The wait the server asked for, clamped, or `None` when neither header
/// gives a usable future moment.
pub fn wait_from_headers(
    retry_after: Option<&str>,
    rate_limit_reset: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    retry_after
        .and_then(|v| parse_retry_after(v, now))
        .or_else(|| rate_limit_reset.and_then(|v| parse_reset(v, now)))
        .map(|d| d.clamp(MIN_WAIT, MAX_WAIT))
}

fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return (secs > 0).then(|| Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

fn parse_reset(v: &str, now: SystemTime) -> Option<Duration> {
    let n: f64 = v.trim().parse().ok()?;
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    if n < 1e9 {
        return Some(Duration::from_secs_f64(n.min(1e9)));
    }
    let at = UNIX_EPOCH.checked_add(Duration::from_secs_f64(n.min(1e12)))?;
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A positive `Retry-After` in seconds is honoured, clamped to
        /// [MIN_WAIT, MAX_WAIT], and wins over any reset header.
        #[test]
        fn retry_after_seconds_are_respected_and_clamped(secs in 1u64..=u64::MAX, reset in any::<u64>()) {
            let reset = reset.to_string();
            let want = Duration::from_secs(secs).clamp(MIN_WAIT, MAX_WAIT);
            prop_assert_eq!(wait_from_headers(Some(&secs.to_string()), Some(&reset), now()), Some(want));
        }

        /// An HTTP-date in the future is waited for (clamped); one in the
        /// past is not a wait.
        #[test]
        fn retry_after_dates(offset in -100_000_000i64..=100_000_000) {
            let at = if offset >= 0 {
                now() + Duration::from_secs(offset as u64)
            } else {
                now() - Duration::from_secs(offset.unsigned_abs())
            };
            let got = wait_from_headers(Some(&httpdate::fmt_http_date(at)), None, now());
            if offset > 0 {
                prop_assert_eq!(got, Some(Duration::from_secs(offset as u64).clamp(MIN_WAIT, MAX_WAIT)));
            } else {
                prop_assert_eq!(got, None);
            }
        }

        /// A reset below 10^9 is a delta, above it a Unix time; either way
        /// the wait is within bounds, and garbage is never a wait.
        #[test]
        fn reset_values_are_clamped(n in 0.0f64..2e12, garbage in "[a-z ,:-]{0,12}") {
            let got = wait_from_headers(None, Some(&n.to_string()), now());
            if let Some(d) = got {
                prop_assert!((MIN_WAIT..=MAX_WAIT).contains(&d));
            }
            if n > 0.0 && n < 1e9 {
                prop_assert_eq!(got, Some(Duration::from_secs_f64(n).clamp(MIN_WAIT, MAX_WAIT)));
            }
            if (1e9..=1_800_000_000.0).contains(&n) {
                prop_assert_eq!(got, None, "a reset in the past is no wait");
            }
            if garbage.trim().parse::<f64>().is_err() {
                prop_assert_eq!(wait_from_headers(Some(&garbage), Some(&garbage), now()), None);
            }
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(
            wait_from_headers(Some("120"), None, now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            wait_from_headers(Some(" 5 "), None, now()),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let at = httpdate::fmt_http_date(now() + Duration::from_secs(90));
        assert_eq!(
            wait_from_headers(Some(&at), None, now()),
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn reset_unix_seconds_and_delta() {
        let reset = (1_800_000_000u64 + 3 * 3600).to_string();
        assert_eq!(
            wait_from_headers(None, Some(&reset), now()),
            Some(Duration::from_secs(3 * 3600))
        );
        assert_eq!(
            wait_from_headers(None, Some("30"), now()),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn retry_after_wins() {
        let reset = (1_800_000_000u64 + 3600).to_string();
        assert_eq!(
            wait_from_headers(Some("7"), Some(&reset), now()),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn garbage_and_past_give_none() {
        for v in ["", "soon", "-5", "0", "NaN", "inf", "Wed, 32 Foo 2020"] {
            assert_eq!(wait_from_headers(Some(v), Some(v), now()), None, "{v:?}");
        }
        let past_date = httpdate::fmt_http_date(now() - Duration::from_secs(60));
        assert_eq!(wait_from_headers(Some(&past_date), None, now()), None);
        assert_eq!(wait_from_headers(None, Some("1700000000"), now()), None);
        // a garbage Retry-After falls back to a usable reset
        let reset = (1_800_000_000u64 + 60).to_string();
        assert_eq!(
            wait_from_headers(Some("later"), Some(&reset), now()),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn clamped() {
        assert_eq!(
            wait_from_headers(None, Some("99999999999"), now()),
            Some(MAX_WAIT)
        );
        assert_eq!(
            wait_from_headers(Some("9999999"), None, now()),
            Some(MAX_WAIT)
        );
        let soon = httpdate::fmt_http_date(now() + Duration::from_millis(300));
        // HTTP dates have whole seconds: 0.3 s rounds to now or the past
        assert!(matches!(
            wait_from_headers(Some(&soon), None, now()),
            None | Some(MIN_WAIT)
        ));
        assert_eq!(wait_from_headers(None, Some("0.2"), now()), Some(MIN_WAIT));
    }
}
