//! Device times on serial lines, on top of [`super::time`] (the one parser
//! of time formats and zones): the serial `auto` rule, and NMEA's dates.
//!
//! Invariants:
//! - in `auto` a number is never read as a date before 2000 (a `time`
//!   column holding `123519` is refused with a hint, not stored in 1970),
//!   and `hh:mm:ss` is a time of day; otherwise `auto` is `time.rs`'s;
//! - a time of day lands on the date nearest to its reference time (a fix
//!   at 23:59:59 received at 00:00:01 belongs to the day before).

use super::time::{days_from_civil, TimeSpec};
use super::{snippet, DecodeError};
use crate::config::formats::{TimeFormat, TimeZone};

const DAY_MS: i64 = 86_400_000;
/// 2000-01-01T00:00:00Z: `auto` refuses numeric times before it.
const Y2000_MS: i64 = 946_684_800_000;

/// Read a device time written as `format` in `zone`; `received_ms` dates a
/// time of day.
pub(super) fn parse_time(
    text: &str,
    format: TimeFormat,
    zone: TimeZone,
    received_ms: i64,
) -> Result<i64, DecodeError> {
    let s = text.trim();
    if format != TimeFormat::Auto {
        return TimeSpec { format, zone }.from_text(s, received_ms);
    }
    if s.contains(':') && !s.contains('-') {
        return TimeSpec {
            format: TimeFormat::Hhmmss,
            zone,
        }
        .from_text(s, received_ms);
    }
    let ms = TimeSpec { format, zone }.from_text(s, received_ms)?;
    if ms < Y2000_MS && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(DecodeError::BadTimestamp {
            value: snippet(s),
            expected: "a date after 2000 (ISO-8601 or Unix seconds/milliseconds); \
                       for a time of day like `123519` set `time_format = \"hhmmss\"`",
        });
    }
    Ok(ms)
}

/// A UTC time of day (`hhmmss.ss`, as NMEA writes it) on the date nearest
/// to `reference_ms`; `None` when it is not one.
pub(super) fn utc_time_of_day(s: &str, reference_ms: i64) -> Option<i64> {
    TimeSpec {
        format: TimeFormat::Hhmmss,
        zone: TimeZone::UTC,
    }
    .from_text(s, reference_ms)
    .ok()
}

/// Milliseconds of a UTC date given as day, month and two-digit year (NMEA's
/// `ddmmyy`: years 80–99 are 1980–1999, the rest 2000–2079).
pub(super) fn date_ddmmyy(s: &str) -> Option<i64> {
    if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| s[i..i + 2].parse::<u32>().ok();
    let (d, m, y) = (n(0)?, n(2)?, n(4)?);
    let year = if y >= 80 { 1900 + y } else { 2000 + y };
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    // Validates the day of the month (no 31 April).
    time::Date::from_calendar_date(year as i32, month, u8::try_from(d).ok()?).ok()?;
    Some(days_from_civil(i64::from(year), m, d) * DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-15T10:30:00Z
    const RX: i64 = 1_705_314_600_000;
    const DAY0: i64 = 1_705_276_800_000; // 2024-01-15T00:00:00Z
    const UTC: TimeZone = TimeZone::UTC;

    #[test]
    fn auto_refuses_small_numbers_and_reads_times_of_day() {
        let e = parse_time("123519", TimeFormat::Auto, UTC, RX).unwrap_err();
        assert_eq!(e.reason(), "bad_timestamp");
        assert!(e.to_string().contains("time_format = \"hhmmss\""), "{e}");
        assert_eq!(parse_time("1705314600", TimeFormat::Auto, UTC, RX), Ok(RX));
        assert_eq!(
            parse_time("2024-01-15T10:30:00Z", TimeFormat::Auto, UTC, RX),
            Ok(RX)
        );
        assert_eq!(
            parse_time("12:35:19", TimeFormat::Auto, UTC, RX),
            Ok(DAY0 + (12 * 3600 + 35 * 60 + 19) * 1000)
        );
        assert!(parse_time("25:00:00", TimeFormat::Auto, UTC, RX).is_err());
        // A fixed zone moves a time of day.
        assert_eq!(
            parse_time("13:35:19", TimeFormat::Hhmmss, TimeZone::Fixed(3600), RX),
            Ok(DAY0 + (12 * 3600 + 35 * 60 + 19) * 1000)
        );
    }

    #[test]
    fn nmea_times_and_dates() {
        let late = "235959";
        // Received just after midnight: the fix is from the day before.
        assert_eq!(utc_time_of_day(late, DAY0 + 1000), Some(DAY0 - 1000));
        assert_eq!(utc_time_of_day("000001", DAY0 - 1000), Some(DAY0 + 1000));
        assert_eq!(utc_time_of_day("1235", RX), None);
        assert_eq!(date_ddmmyy("150124"), Some(DAY0));
        assert_eq!(date_ddmmyy("230394"), Some(764_380_800_000));
        assert_eq!(date_ddmmyy("320124"), None);
        assert_eq!(date_ddmmyy("310424"), None);
        assert_eq!(date_ddmmyy("15012"), None);
    }
}
