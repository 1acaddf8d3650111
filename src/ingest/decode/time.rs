//! Device times → Unix milliseconds, by a configured [`TimeFormat`] and
//! [`TimeZone`] ([`TimeSpec`]). Shared by MQTT routes and serial ports.
//! Pure except for `local`, which asks the C library for the gateway zone's
//! offset at that date (daylight saving included).
//!
//! Rules:
//! - ISO-8601: `YYYY-MM-DD` then `T` or a space, `hh:mm`, optional `:ss`
//!   and fraction, optional `Z`/`±hh:mm`/`±hhmm`/`±hh`; without an offset
//!   the time is in the zone. Fractions beyond milliseconds are truncated.
//! - Unix numbers: the unit is the format's; `auto` tells them apart by
//!   size (below 1e11 seconds, below 1e14 ms, below 1e17 µs, else ns: each
//!   boundary is past the year 5000 in the smaller unit and before 1974 in
//!   the larger). Numeric text is read the same way.
//! - `hhmmss` (`hhmmss`, `hhmmss.sss`, `hh:mm:ss`): the time of day in the
//!   zone, on whichever of the receive date, the day before or the day after
//!   is nearest to the receive time, so a fix stamped 23:59:59 and received
//!   at 00:00:01 belongs to the day before.
//! - Results outside 1970-01-01 … 9999-12-31 are `bad_timestamp`; a local
//!   time that does not exist (inside a spring-forward gap) is read as the C
//!   library normalises it (one hour later).
//! - Local wall times are converted with the zone's offset cached per wall
//!   hour (one `mktime` per hour instead of per message): an hour is cached
//!   only when the offset is the same at every hour from 3 h before to 3 h
//!   after it, so no daylight-saving change (nor an ambiguous or missing
//!   wall time) is near; hours near a change take `mktime` every time. A
//!   change of the machine's zone file is seen at the next wall hour.

pub use crate::config::timefmt::{TimeFormat, TimeZone};

use super::{snippet, DecodeError, MAX_TIMESTAMP_MS};

/// How one device time field is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeSpec {
    pub format: TimeFormat,
    pub zone: TimeZone,
}

impl TimeSpec {
    fn expected(&self) -> &'static str {
        match self.format {
            TimeFormat::Auto => "ISO-8601 like `2024-01-15T10:30:00Z` or Unix seconds/milliseconds",
            TimeFormat::Iso8601 => "ISO-8601 like `2024-01-15T10:30:00Z` or `2024-01-15T10:30:00`",
            TimeFormat::UnixS => "Unix seconds",
            TimeFormat::UnixMs => "Unix milliseconds",
            TimeFormat::UnixUs => "Unix microseconds",
            TimeFormat::UnixNs => "Unix nanoseconds",
            TimeFormat::Hhmmss => "a time of day `hhmmss`, `hhmmss.sss` or `hh:mm:ss`",
        }
    }

    fn bad(&self, value: &str) -> DecodeError {
        DecodeError::BadTimestamp {
            value: snippet(value),
            expected: self.expected(),
        }
    }

    /// A time given as text.
    pub fn from_text(&self, s: &str, received_ms: i64) -> Result<i64, DecodeError> {
        let t = s.trim();
        let ms = match self.format {
            TimeFormat::Auto => iso(t, self.zone)
                .or_else(|| t.parse::<f64>().ok().and_then(|n| unix(n, auto_unit(n)))),
            TimeFormat::Iso8601 => iso(t, self.zone),
            TimeFormat::Hhmmss => time_of_day(t, self.zone, received_ms),
            f => t.parse::<f64>().ok().and_then(|n| unix(n, unit_of(f))),
        };
        ms.filter(|ms| (0..=MAX_TIMESTAMP_MS).contains(ms))
            .ok_or_else(|| self.bad(t))
    }

    /// A time given as a JSON number (or any number).
    pub fn from_number(&self, n: f64, received_ms: i64) -> Result<i64, DecodeError> {
        let ms = match self.format {
            TimeFormat::Auto => unix(n, auto_unit(n)),
            TimeFormat::Iso8601 => None,
            // `123456` as a number: read its digits.
            TimeFormat::Hhmmss => time_of_day(&format_hhmmss(n), self.zone, received_ms),
            f => unix(n, unit_of(f)),
        };
        ms.filter(|ms| (0..=MAX_TIMESTAMP_MS).contains(ms))
            .ok_or_else(|| self.bad(&n.to_string()))
    }
}

/// Milliseconds per unit.
fn unit_of(f: TimeFormat) -> f64 {
    match f {
        TimeFormat::UnixS => 1000.0,
        TimeFormat::UnixUs => 1e-3,
        TimeFormat::UnixNs => 1e-6,
        _ => 1.0,
    }
}

fn auto_unit(n: f64) -> f64 {
    let a = n.abs();
    if a < 1e11 {
        1000.0
    } else if a < 1e14 {
        1.0
    } else if a < 1e17 {
        1e-3
    } else {
        1e-6
    }
}

fn unix(n: f64, ms_per_unit: f64) -> Option<i64> {
    let ms = (n * ms_per_unit).floor();
    (ms.is_finite() && (0.0..=MAX_TIMESTAMP_MS as f64).contains(&ms)).then_some(ms as i64)
}

fn format_hhmmss(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{:06}", n as i64)
    } else {
        format!("{n:010.3}")
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's
/// `days_from_civil`).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A wall-clock time without zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Naive {
    y: i64,
    mo: u32,
    d: u32,
    h: u32,
    mi: u32,
    s: u32,
    ms: u32,
}

impl Naive {
    /// Milliseconds since the epoch if this wall time were UTC.
    fn as_utc_ms(&self) -> i64 {
        let days = days_from_civil(self.y, self.mo, self.d);
        ((days * 86_400) + (self.h * 3600 + self.mi * 60 + self.s) as i64) * 1000 + self.ms as i64
    }

    fn in_zone(&self, zone: TimeZone) -> Option<i64> {
        match zone {
            TimeZone::Fixed(off) => Some(self.as_utc_ms() - off as i64 * 1000),
            TimeZone::Local => LOCAL_HOUR
                .with(|c| cached_local_to_utc_s(c, self, local_offset_s, local_to_utc_s))
                .map(|s| s * 1000 + self.ms as i64),
        }
    }
}

/// Read `n` ASCII digits at `*i`.
fn digits(b: &[u8], i: &mut usize, n: usize) -> Option<u32> {
    let part = b.get(*i..*i + n)?;
    let mut v = 0u32;
    for &c in part {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    *i += n;
    Some(v)
}

/// A fraction of a second after `.` or `,` → milliseconds (truncated).
fn fraction(b: &[u8], i: &mut usize) -> Option<u32> {
    if !matches!(b.get(*i), Some(b'.' | b',')) {
        return Some(0);
    }
    *i += 1;
    let start = *i;
    let mut ms = 0u32;
    while let Some(c) = b.get(*i).filter(|c| c.is_ascii_digit()) {
        if *i - start < 3 {
            ms = ms * 10 + (c - b'0') as u32;
        }
        *i += 1;
    }
    let n = *i - start;
    if n == 0 {
        return None;
    }
    for _ in n..3 {
        ms *= 10;
    }
    Some(ms)
}

fn iso(s: &str, zone: TimeZone) -> Option<i64> {
    let b = s.as_bytes();
    let mut i = 0;
    let y = digits(b, &mut i, 4)? as i64;
    (b.get(i) == Some(&b'-')).then_some(())?;
    i += 1;
    let mo = digits(b, &mut i, 2)?;
    (b.get(i) == Some(&b'-')).then_some(())?;
    i += 1;
    let d = digits(b, &mut i, 2)?;
    matches!(b.get(i), Some(b'T' | b't' | b' ')).then_some(())?;
    i += 1;
    let h = digits(b, &mut i, 2)?;
    (b.get(i) == Some(&b':')).then_some(())?;
    i += 1;
    let mi = digits(b, &mut i, 2)?;
    let sec = if b.get(i) == Some(&b':') {
        i += 1;
        digits(b, &mut i, 2)?
    } else {
        0
    };
    let ms = fraction(b, &mut i)?;
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) || h > 23 || mi > 59 {
        return None;
    }
    // A leap second reads as the last millisecond of its minute.
    let (sec, ms) = if sec == 60 { (59, 999) } else { (sec, ms) };
    if sec > 59 {
        return None;
    }
    let naive = Naive {
        y,
        mo,
        d,
        h,
        mi,
        s: sec,
        ms,
    };
    let rest = &s[i..];
    match rest {
        "" => naive.in_zone(zone),
        "Z" | "z" => Some(naive.as_utc_ms()),
        _ => Some(naive.as_utc_ms() - parse_offset(rest)? as i64 * 1000),
    }
}

use crate::config::timefmt::parse_offset;

fn time_of_day(s: &str, zone: TimeZone, received_ms: i64) -> Option<i64> {
    let b = s.as_bytes();
    let mut i = 0;
    let h = digits(b, &mut i, 2)?;
    let colons = b.get(i) == Some(&b':');
    if colons {
        i += 1;
    }
    let mi = digits(b, &mut i, 2)?;
    if colons {
        (b.get(i) == Some(&b':')).then_some(())?;
        i += 1;
    }
    let sec = digits(b, &mut i, 2)?;
    let ms = fraction(b, &mut i)?;
    if i != b.len() || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let sec = sec.min(59);
    // The receive date in the zone.
    let local_day = match zone {
        TimeZone::Fixed(off) => (received_ms / 1000 + off as i64).div_euclid(86_400),
        TimeZone::Local => {
            let off = local_offset_s(received_ms.div_euclid(1000))?;
            (received_ms / 1000 + off).div_euclid(86_400)
        }
    };
    (-1..=1)
        .filter_map(|delta| {
            let (y, mo, d) = civil_from_days(local_day + delta);
            Naive {
                y,
                mo,
                d,
                h,
                mi,
                s: sec,
                ms,
            }
            .in_zone(zone)
        })
        .min_by_key(|ms| (ms - received_ms).abs())
}

/// A wall hour (`as_utc_ms / 3_600_000`) and, when no offset change is
/// near, the zone's offset during it (`None`: near a change, ask `mktime`).
type HourOffset = std::cell::Cell<Option<(i64, Option<i64>)>>;

thread_local! {
    static LOCAL_HOUR: HourOffset = const { std::cell::Cell::new(None) };
}

/// A local wall time → Unix seconds through the per-hour cache `c`;
/// `offset_at` (the zone's offset at an instant) and `mktime` (the C
/// library's conversion) are parameters so tests can use a synthetic zone.
fn cached_local_to_utc_s(
    c: &HourOffset,
    n: &Naive,
    offset_at: impl Fn(i64) -> Option<i64>,
    mktime: impl Fn(&Naive) -> Option<i64>,
) -> Option<i64> {
    let wall_s = n.as_utc_ms().div_euclid(1000);
    let hour = wall_s.div_euclid(3600);
    let offset = match c.get() {
        Some((h, off)) if h == hour => off,
        _ => {
            let off = steady_offset(hour, &offset_at, &mktime);
            c.set(Some((hour, off)));
            off
        }
    };
    match offset {
        Some(off) => Some(wall_s - off),
        None => mktime(n),
    }
}

/// The offset during wall hour `hour` if it is the same at every hour from
/// 3 h before to 3 h after (no daylight-saving change near), else `None`.
fn steady_offset(
    hour: i64,
    offset_at: &impl Fn(i64) -> Option<i64>,
    mktime: &impl Fn(&Naive) -> Option<i64>,
) -> Option<i64> {
    let wall = hour * 3600;
    let (y, mo, d) = civil_from_days(wall.div_euclid(86_400));
    let h = (wall.rem_euclid(86_400) / 3600) as u32;
    let t = mktime(&Naive {
        y,
        mo,
        d,
        h,
        mi: 0,
        s: 0,
        ms: 0,
    })?;
    let off = offset_at(t)?;
    (wall - t == off && (-3..=4).all(|k| offset_at(t + k * 3600) == Some(off))).then_some(off)
}

/// The gateway zone's offset east of UTC at a Unix time, in seconds.
fn local_offset_s(unix_s: i64) -> Option<i64> {
    let t = libc::time_t::try_from(unix_s).ok()?;
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: `localtime_r` only reads `t` and writes into `tm`, both ours;
    // it is the thread-safe variant.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    (!r.is_null()).then_some(tm.tm_gmtoff as i64)
}

/// A wall time in the gateway's zone → Unix seconds (`mktime`, which
/// decides daylight saving from the zone's rules).
fn local_to_utc_s(n: &Naive) -> Option<i64> {
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = i32::try_from(n.y - 1900).ok()?;
    tm.tm_mon = n.mo as i32 - 1;
    tm.tm_mday = n.d as i32;
    tm.tm_hour = n.h as i32;
    tm.tm_min = n.mi as i32;
    tm.tm_sec = n.s as i32;
    tm.tm_isdst = -1;
    // SAFETY: `mktime` reads and normalises the `tm` we own; glibc and musl
    // serialise its zone state internally.
    let t = unsafe { libc::mktime(&mut tm) };
    (t != -1).then_some(t as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RX: i64 = 1_705_314_600_000; // 2024-01-15T10:30:00Z

    fn spec(format: &str, zone: &str) -> TimeSpec {
        TimeSpec {
            format: format.parse().unwrap(),
            zone: zone.parse().unwrap(),
        }
    }

    #[test]
    fn iso_with_and_without_offsets() {
        let s = spec("iso8601", "UTC");
        for t in [
            "2024-01-15T10:30:00Z",
            "2024-01-15T10:30:00.000Z",
            "2024-01-15 10:30:00",
            "2024-01-15T11:30:00+01:00",
            "2024-01-15T11:30:00+0100",
            "2024-01-15T05:30:00-05",
            "2024-01-15T10:30Z",
            " 2024-01-15T10:30:00z ",
        ] {
            assert_eq!(s.from_text(t, 0), Ok(RX), "{t}");
        }
        // Fractions: milliseconds kept, the rest truncated.
        assert_eq!(
            s.from_text("2024-01-15T10:30:00.123456789Z", 0),
            Ok(RX + 123)
        );
        assert_eq!(s.from_text("2024-01-15T10:30:00.5Z", 0), Ok(RX + 500));
        // A naive time is in the zone.
        let berlin_winter = spec("iso8601", "+01:00");
        assert_eq!(berlin_winter.from_text("2024-01-15T11:30:00", 0), Ok(RX));
        for bad in [
            "2024-02-30T10:30:00Z",
            "2024-01-15T24:00:00Z",
            "2024-01-15",
            "15/01/2024 10:30",
            "2024-01-15T10:30:00+25:00",
            "2024-01-15T10:30:00 garbage",
            "1705314600",
        ] {
            let e = s.from_text(bad, 0).unwrap_err();
            assert_eq!(e.reason(), "bad_timestamp", "{bad}");
        }
    }

    #[test]
    fn unix_units() {
        assert_eq!(
            spec("unix_s", "UTC").from_number(1_705_314_600.0, 0),
            Ok(RX)
        );
        assert_eq!(
            spec("unix_s", "UTC").from_text("1705314600.25", 0),
            Ok(RX + 250)
        );
        assert_eq!(spec("unix_ms", "UTC").from_number(RX as f64, 0), Ok(RX));
        assert_eq!(
            spec("unix_us", "UTC").from_number(RX as f64 * 1e3, 0),
            Ok(RX)
        );
        assert_eq!(
            spec("unix_ns", "UTC").from_text("1705314600000000000", 0),
            Ok(RX)
        );
        let auto = TimeSpec::default();
        for n in [1_705_314_600.0, RX as f64, RX as f64 * 1e3, RX as f64 * 1e6] {
            assert_eq!(auto.from_number(n, 0), Ok(RX), "{n}");
        }
        assert_eq!(auto.from_text("2024-01-15T10:30:00Z", 0), Ok(RX));
        assert_eq!(auto.from_text("1705314600", 0), Ok(RX));
        assert!(auto.from_number(-1.0, 0).is_err());
        assert!(spec("unix_ms", "UTC").from_number(1e300, 0).is_err());
        assert!(spec("iso8601", "UTC").from_number(1.0, 0).is_err());
    }

    #[test]
    fn time_of_day_takes_the_nearest_date() {
        let s = spec("hhmmss", "UTC");
        assert_eq!(s.from_text("103000", RX), Ok(RX));
        assert_eq!(s.from_text("10:30:00", RX), Ok(RX));
        assert_eq!(s.from_text("103000.250", RX), Ok(RX + 250));
        assert_eq!(s.from_number(103000.0, RX), Ok(RX));
        // Stamped just before midnight, received just after: the day before.
        let just_after_midnight = RX - (10 * 3600 + 30 * 60) * 1000 + 1000;
        let expected = RX - (10 * 3600 + 30 * 60) * 1000 - 1000;
        assert_eq!(s.from_text("235959", just_after_midnight), Ok(expected));
        // And the other way round.
        assert_eq!(s.from_text("000001", expected), Ok(just_after_midnight));
        // In a zone: 11:30 at +01:00 is 10:30Z.
        assert_eq!(spec("hhmmss", "+01:00").from_text("113000", RX), Ok(RX));
        for bad in ["1030", "253000", "10:3000", "103000x", ""] {
            assert!(s.from_text(bad, RX).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_name_the_expected_format() {
        let e = spec("unix_ms", "UTC").from_text("soon", 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad timestamp `soon`: expected Unix milliseconds"
        );
    }

    /// Whatever the machine's zone, a local wall time read back through
    /// `mktime` is the instant `localtime_r` made it from.
    #[test]
    fn local_zone_round_trips() {
        let t = RX / 1000;
        let off = local_offset_s(t).unwrap();
        let (y, mo, d) = civil_from_days((t + off).div_euclid(86_400));
        let secs = (t + off).rem_euclid(86_400) as u32;
        let n = Naive {
            y,
            mo,
            d,
            h: secs / 3600,
            mi: secs / 60 % 60,
            s: secs % 60,
            ms: 7,
        };
        assert_eq!(n.in_zone(TimeZone::Local), Some(RX + 7));
    }

    /// A synthetic zone with Europe/Paris's 2024 changes (+1 h, +2 h from
    /// 2024-03-31T01:00Z to 2024-10-27T01:00Z) and a reference `mktime`
    /// for it: across both changes, minute by minute, the cached
    /// conversion is the reference's, wherever the cache started.
    #[test]
    fn local_cache_matches_mktime_across_daylight_saving_changes() {
        const SPRING: i64 = 1_711_846_800; // 2024-03-31T01:00:00Z
        const AUTUMN: i64 = 1_729_990_800; // 2024-10-27T01:00:00Z
        let offset_at = |t: i64| {
            Some(if (SPRING..AUTUMN).contains(&t) {
                7200
            } else {
                3600
            })
        };
        // As glibc: a wall time in the gap is read with the offset before
        // it (an hour later), one in the fold as the first (summer) instant.
        let mktime = |n: &Naive| {
            let wall = n.as_utc_ms().div_euclid(1000);
            [7200, 3600]
                .into_iter()
                .find(|&off| offset_at(wall - off) == Some(off))
                .map(|off| wall - off)
                .or(Some(wall - 3600))
        };
        for change in [SPRING, AUTUMN] {
            for start in [-30, 0, 7] {
                let cache = HourOffset::new(None);
                let mut cached_hours = 0;
                for minute in start..(12 * 60) {
                    let wall = change - 6 * 3600 + 3600 + minute * 60 + 17;
                    let (y, mo, d) = civil_from_days(wall.div_euclid(86_400));
                    let secs = wall.rem_euclid(86_400) as u32;
                    let n = Naive {
                        y,
                        mo,
                        d,
                        h: secs / 3600,
                        mi: secs / 60 % 60,
                        s: secs % 60,
                        ms: 0,
                    };
                    assert_eq!(
                        cached_local_to_utc_s(&cache, &n, offset_at, mktime),
                        mktime(&n),
                        "{n:?}"
                    );
                    cached_hours += cache.get().is_some_and(|(_, o)| o.is_some()) as i32;
                }
                // Far from the change the cache is used, near it not.
                assert!(cached_hours > 0);
            }
        }
        // Near a change the hour is not cached; far from it, it is.
        assert_eq!(steady_offset(SPRING / 3600 + 1, &offset_at, &mktime), None);
        assert_eq!(steady_offset(AUTUMN / 3600 + 2, &offset_at, &mktime), None);
        assert_eq!(
            steady_offset(SPRING / 3600 - 24, &offset_at, &mktime),
            Some(3600)
        );
        assert_eq!(
            steady_offset(AUTUMN / 3600 - 24, &offset_at, &mktime),
            Some(7200)
        );
    }

    /// The real zone through the cache: a whole day, hour by hour, equals
    /// `mktime` (whatever the machine's zone).
    #[test]
    fn local_cache_matches_the_c_library() {
        let cache = HourOffset::new(None);
        for k in 0..(3 * 24 * 4) {
            let wall: i64 = 1_711_670_400 + k * 900 + 59; // from 2024-03-29, 15 min steps
            let (y, mo, d) = civil_from_days(wall.div_euclid(86_400));
            let secs = wall.rem_euclid(86_400) as u32;
            let n = Naive {
                y,
                mo,
                d,
                h: secs / 3600,
                mi: secs / 60 % 60,
                s: secs % 60,
                ms: 0,
            };
            assert_eq!(
                cached_local_to_utc_s(&cache, &n, local_offset_s, local_to_utc_s),
                local_to_utc_s(&n)
            );
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1, 0, 59, 365, 11_016, 19_737, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(19_737), (2024, 1, 15));
    }
}
