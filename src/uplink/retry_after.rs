//! When may a refused request (429) be tried again: `Retry-After` (seconds
//! or an HTTP-date) or `X-RateLimit-Reset` (Unix seconds), clamped so that a
//! wrong clock or a garbage header can neither hammer dakkio nor park a
//! bucket for a month.
//!
//! Rules (documented in the README's "Delivery" section):
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
