//! How a device writes its time: the format (`time_format`) and the zone of
//! times written without an offset (`time_zone`). Plain data parsed from
//! config strings; `ingest::decode::time` reads times with them. Shared by
//! MQTT routes and serial ports (one grammar for both).
//!
//! Zones are `UTC`, a fixed offset (`+01:00`, `-0530`) or `local`: the
//! gateway's own zone with its daylight-saving rules, as the C library
//! reads it (`TZ`, else `/etc/localtime`). No IANA database is bundled: a
//! naive device clock is almost always set to the zone of the site it is
//! in, which is the gateway's, and the system's tzdata package keeps those
//! rules current without a gateway upgrade (a bundled database would add
//! about 100 kB and age with the binary).

use std::fmt;
use std::str::FromStr;

/// The format of a device time value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeFormat {
    /// ISO-8601 text, or a number of Unix seconds/ms/µs/ns told apart by
    /// size (see `ingest::decode::time`).
    #[default]
    Auto,
    /// `2024-01-15T10:30:00Z`, `…+01:00`, or without an offset (then in
    /// `time_zone`); a space may stand for the `T`.
    Iso8601,
    UnixS,
    UnixMs,
    UnixUs,
    UnixNs,
    /// `hhmmss`, `hhmmss.sss` or `hh:mm:ss` in `time_zone`, on the date
    /// (in that zone) nearest to the receive time.
    Hhmmss,
}

impl TimeFormat {
    /// Every spelling accepted in a config, for messages.
    pub const NAMES: [&'static str; 7] = [
        "auto", "iso8601", "unix_s", "unix_ms", "unix_us", "unix_ns", "hhmmss",
    ];
}

impl FromStr for TimeFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<TimeFormat, String> {
        Ok(match s.trim() {
            "auto" => TimeFormat::Auto,
            "iso8601" | "rfc3339" => TimeFormat::Iso8601,
            "unix_s" | "unix" => TimeFormat::UnixS,
            "unix_ms" => TimeFormat::UnixMs,
            "unix_us" => TimeFormat::UnixUs,
            "unix_ns" => TimeFormat::UnixNs,
            "hhmmss" => TimeFormat::Hhmmss,
            other => {
                return Err(format!(
                    "must be one of {}; got `{other}`",
                    TimeFormat::NAMES.map(|n| format!("`{n}`")).join(", ")
                ))
            }
        })
    }
}

impl fmt::Display for TimeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = match self {
            TimeFormat::Auto => 0,
            TimeFormat::Iso8601 => 1,
            TimeFormat::UnixS => 2,
            TimeFormat::UnixMs => 3,
            TimeFormat::UnixUs => 4,
            TimeFormat::UnixNs => 5,
            TimeFormat::Hhmmss => 6,
        };
        f.write_str(TimeFormat::NAMES[i])
    }
}

/// The zone of device times written without an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeZone {
    /// A fixed offset east of UTC, in seconds (`UTC` is 0).
    Fixed(i32),
    /// The gateway's own zone, daylight saving included.
    #[default]
    Local,
}

impl TimeZone {
    pub const UTC: TimeZone = TimeZone::Fixed(0);
}

impl FromStr for TimeZone {
    type Err = String;

    fn from_str(s: &str) -> Result<TimeZone, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" || t.eq_ignore_ascii_case("gmt") {
            return Ok(TimeZone::UTC);
        }
        if t.eq_ignore_ascii_case("local") {
            return Ok(TimeZone::Local);
        }
        parse_offset(t).map(TimeZone::Fixed).ok_or_else(|| {
            format!(
                "must be `UTC`, `local` (the gateway's zone, daylight saving included) or an \
                 offset like `+01:00`; got `{t}` (named zones such as `Europe/Berlin` are \
                 `local` on a gateway set to that zone)"
            )
        })
    }
}

/// `+01:00`, `-0530`, `+02` → seconds east of UTC (at most ±18 hours).
pub fn parse_offset(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = |r: &[u8]| -> Option<i32> {
        if r.len() == 2 && r.iter().all(u8::is_ascii_digit) {
            Some(((r[0] - b'0') * 10 + (r[1] - b'0')) as i32)
        } else {
            None
        }
    };
    let rest = &b[1..];
    let (h, m) = match rest.len() {
        2 => (digits(rest)?, 0),
        4 => (digits(&rest[..2])?, digits(&rest[2..])?),
        5 if rest[2] == b':' => (digits(&rest[..2])?, digits(&rest[3..])?),
        _ => return None,
    };
    (h <= 18 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_zones_parse() {
        for n in TimeFormat::NAMES {
            let f: TimeFormat = n.parse().unwrap();
            assert_eq!(f.to_string(), n);
        }
        assert!("unix_minutes".parse::<TimeFormat>().is_err());
        assert_eq!("UTC".parse(), Ok(TimeZone::UTC));
        assert_eq!("local".parse(), Ok(TimeZone::Local));
        assert_eq!("+01:00".parse(), Ok(TimeZone::Fixed(3600)));
        assert_eq!("-0530".parse(), Ok(TimeZone::Fixed(-19800)));
        assert_eq!("+02".parse(), Ok(TimeZone::Fixed(7200)));
        for bad in ["Europe/Berlin", "+1", "+25:00", "01:00", "+01:60"] {
            let e = bad.parse::<TimeZone>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
