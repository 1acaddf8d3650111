//! Device times on serial lines: a time column or field read with its
//! [`TimeFormat`], and a time of day (`hhmmss`, NMEA's fix time) placed on
//! a date. Pure: the receive time is passed in.
//!
//! Invariants:
//! - a number is never read as a date before 2000 in `auto` (a `time`
//!   column holding `123519` is refused with a hint, not stored in 1970);
//! - a time of day lands on the date of its reference time, moved by one
//!   day when that puts it more than 12 h away (a fix at 23:59:59 received
//!   at 00:00:01 belongs to the day before);
//! - every result lies in 0 ..= 9999-12-31, like every other device time.
//!
//! (Kept small on purpose: the MQTT side's time formats live beside it and
//! the two are meant to become one parser.)

use super::{snippet, timestamp_text, DecodeError, MAX_TIMESTAMP_MS};
use crate::config::formats::TimeFormat;

const DAY_MS: i64 = 86_400_000;
/// 2000-01-01T00:00:00Z: `auto` refuses numeric times before it.
const Y2000_MS: i64 = 946_684_800_000;

/// Read a device time written as `format`; `received_ms` dates a time of day.
pub(super) fn parse_time(
    text: &str,
    format: TimeFormat,
    received_ms: i64,
) -> Result<i64, DecodeError> {
    let s = text.trim();
    let bad = |expected: &'static str| DecodeError::BadTimestamp {
        value: snippet(s),
        expected,
    };
    let unix = |scale: f64, expected| {
        s.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(|n| (n * scale).round())
            .filter(|ms| *ms <= MAX_TIMESTAMP_MS as f64)
            .map(|ms| ms as i64)
            .ok_or_else(|| bad(expected))
    };
    match format {
        TimeFormat::Auto => {
            if s.contains(':') && !s.contains('-') {
                return time_of_day(s)
                    .map(|tod| on_nearest_day(tod, received_ms))
                    .ok_or_else(|| bad("a time of day like `12:35:19`"));
            }
            let ms = timestamp_text(s)?;
            if ms < Y2000_MS && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return Err(bad(
                    "a date after 2000 (ISO-8601 or Unix seconds/milliseconds); \
                     for a time of day like `123519` set `time_format = \"hhmmss\"`",
                ));
            }
            Ok(ms)
        }
        TimeFormat::Iso8601 => crate::reading::parse_timestamp(s)
            .filter(|ms| (0..=MAX_TIMESTAMP_MS).contains(ms))
            .ok_or_else(|| bad("ISO-8601 with an offset, like `2024-01-15T10:30:00Z`")),
        TimeFormat::UnixS => unix(1e3, "Unix seconds"),
        TimeFormat::UnixMs => unix(1.0, "Unix milliseconds"),
        TimeFormat::UnixUs => unix(1e-3, "Unix microseconds"),
        TimeFormat::UnixNs => unix(1e-6, "Unix nanoseconds"),
        TimeFormat::Hhmmss => time_of_day(s)
            .map(|tod| on_nearest_day(tod, received_ms))
            .ok_or_else(|| bad("a time of day `hhmmss` or `hh:mm:ss`, like `123519`")),
    }
}

/// `hhmmss`, `hhmmss.sss`, `hh:mm:ss` or `hh:mm:ss.sss` → milliseconds
/// since midnight.
pub(super) fn time_of_day(s: &str) -> Option<i64> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    let digits: Vec<u8> = match whole.len() {
        6 => whole.bytes().collect(),
        8 if whole.as_bytes()[2] == b':' && whole.as_bytes()[5] == b':' => {
            whole.bytes().filter(|b| *b != b':').collect()
        }
        _ => return None,
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let two = |i: usize| i64::from(digits[i] - b'0') * 10 + i64::from(digits[i + 1] - b'0');
    let (h, m, sec) = (two(0), two(2), two(4));
    // 60: a leap second, as receivers print it.
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let mut ms = (h * 3600 + m * 60 + sec) * 1000;
    if let Some(f) = frac {
        if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let padded = format!("{f:0<3}");
        ms += padded[..3].parse::<i64>().ok()?;
    }
    Some(ms)
}

/// A time of day on the date of `reference_ms`, moved by a day when that
/// is nearer (within 12 h of the reference).
pub(super) fn on_nearest_day(tod_ms: i64, reference_ms: i64) -> i64 {
    let day = reference_ms.div_euclid(DAY_MS);
    let mut t = day * DAY_MS + tod_ms;
    if t - reference_ms > DAY_MS / 2 {
        t -= DAY_MS;
    } else if reference_ms - t > DAY_MS / 2 {
        t += DAY_MS;
    }
    t.clamp(0, MAX_TIMESTAMP_MS)
}

/// Milliseconds of a UTC date given as day, month and two-digit year (NMEA's
/// `ddmmyy`: years 80–99 are 1980–1999, the rest 2000–2079).
pub(super) fn date_ddmmyy(s: &str) -> Option<i64> {
    if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| s[i..i + 2].parse::<u32>().ok();
    let (d, m, y) = (n(0)?, n(2)?, n(4)?);
    let year = if y >= 80 { 1900 + y } else { 2000 + y } as i32;
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date = time::Date::from_calendar_date(year, month, u8::try_from(d).ok()?).ok()?;
    // 2 440 588 is the Julian day of 1970-01-01.
    Some(i64::from(date.to_julian_day() - 2_440_588) * DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-15T10:30:00Z
    const RX: i64 = 1_705_314_600_000;
    const DAY0: i64 = 1_705_276_800_000; // 2024-01-15T00:00:00Z

    #[test]
    fn auto_refuses_small_numbers_and_reads_times_of_day() {
        let e = parse_time("123519", TimeFormat::Auto, RX).unwrap_err();
        assert_eq!(e.reason(), "bad_timestamp");
        assert!(e.to_string().contains("time_format = \"hhmmss\""), "{e}");
        assert_eq!(parse_time("1705314600", TimeFormat::Auto, RX), Ok(RX));
        assert_eq!(
            parse_time("2024-01-15T10:30:00Z", TimeFormat::Auto, RX),
            Ok(RX)
        );
        assert_eq!(
            parse_time("12:35:19", TimeFormat::Auto, RX),
            Ok(DAY0 + (12 * 3600 + 35 * 60 + 19) * 1000)
        );
        assert!(parse_time("25:00:00", TimeFormat::Auto, RX).is_err());
    }

    #[test]
    fn explicit_formats() {
        let tod = DAY0 + (12 * 3600 + 35 * 60 + 19) * 1000;
        assert_eq!(parse_time("123519", TimeFormat::Hhmmss, RX), Ok(tod));
        assert_eq!(
            parse_time("123519.50", TimeFormat::Hhmmss, RX),
            Ok(tod + 500)
        );
        assert_eq!(parse_time("12:35:19", TimeFormat::Hhmmss, RX), Ok(tod));
        assert_eq!(parse_time("1705314600", TimeFormat::UnixS, RX), Ok(RX));
        assert_eq!(parse_time("1705314600000", TimeFormat::UnixMs, RX), Ok(RX));
        assert_eq!(
            parse_time("1705314600000000", TimeFormat::UnixUs, RX),
            Ok(RX)
        );
        assert_eq!(
            parse_time("1705314600000000000", TimeFormat::UnixNs, RX),
            Ok(RX)
        );
        assert_eq!(
            parse_time("2024-01-15T11:30:00+01:00", TimeFormat::Iso8601, RX),
            Ok(RX)
        );
        for (s, f) in [
            ("1235", TimeFormat::Hhmmss),
            ("12:35", TimeFormat::Hhmmss),
            ("126019", TimeFormat::Hhmmss),
            ("1705314600", TimeFormat::Iso8601),
            ("-1", TimeFormat::UnixS),
            ("soon", TimeFormat::UnixMs),
        ] {
            assert_eq!(
                parse_time(s, f, RX).unwrap_err().reason(),
                "bad_timestamp",
                "{s}"
            );
        }
    }

    #[test]
    fn a_time_of_day_lands_on_the_nearest_day() {
        let late = (23 * 3600 + 59 * 60 + 59) * 1000;
        // Received just after midnight: the fix is from the day before.
        assert_eq!(on_nearest_day(late, DAY0 + 1000), DAY0 - 1000);
        // Received just before midnight, stamped just after: the next day.
        assert_eq!(on_nearest_day(1000, DAY0 - 1000), DAY0 + 1000);
        assert_eq!(on_nearest_day(1000, DAY0 + 5000), DAY0 + 1000);
    }

    #[test]
    fn nmea_dates() {
        assert_eq!(date_ddmmyy("150124"), Some(DAY0));
        assert_eq!(date_ddmmyy("230394"), Some(764_380_800_000));
        assert_eq!(date_ddmmyy("320124"), None);
        assert_eq!(date_ddmmyy("15012"), None);
    }
}
