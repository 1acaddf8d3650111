//! NMEA 0183 sentences from GPS receivers (`$GPGGA,…*47`): the checksum
//! is verified, positions become signed decimal degrees, and the fix time
//! is the reading's time.
//!
//! Rules:
//! - a line must be `$<address>,<fields>*<two hex digits>`; a wrong or
//!   missing checksum is `bad_checksum` (the line was damaged on the wire,
//!   or cut when the port was opened), anything else malformed is
//!   `invalid_nmea`;
//! - GGA (fix data) gives `latitude`, `longitude` (decimal degrees, south
//!   and west negative), `altitude` (metres above mean sea level),
//!   `satellites`, `hdop` and `fix_quality`; RMC (recommended minimum)
//!   gives `latitude`, `longitude`, `speed_kmh` (converted from knots) and
//!   `course` (degrees true). The metadata names the sentence
//!   (`nmea = "GPGGA"`). Any talker (`GP`, `GN`, `GL`, `GA`, `BD`) is read;
//! - other sentences (GSV, GSA, VTG, TXT …), sentences not listed in
//!   `sentences`, and sentences without a fix (GGA quality 0, RMC status
//!   `V`) are skipped: a receiver prints them every second while it
//!   searches, and they are not errors (counted as skipped lines);
//! - the time: RMC carries date and time; GGA only the time of day, which
//!   is placed on the date of the last valid RMC (or, before one, on the
//!   date the line arrived), on the nearest day (see `linetime`). A GPS
//!   date is preferred to the gateway's clock, which may be wrong at boot.

use super::linetime::{date_ddmmyy, utc_time_of_day};
use super::*;
use crate::config::formats::NmeaSentence;

/// What the decoder remembers between sentences of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NmeaState {
    /// Unix ms of the last valid RMC fix: dates the GGA sentences after it.
    last_rmc_ms: Option<i64>,
}

/// 1 knot in km/h.
const KNOT_KMH: f64 = 1.852;

fn invalid(detail: &'static str, line: &str) -> DecodeError {
    DecodeError::InvalidNmea {
        detail,
        snippet: snippet(line),
    }
}

/// The fields of a sentence once its frame and checksum are checked.
fn fields(line: &str) -> Result<Vec<&str>, DecodeError> {
    let body = line
        .strip_prefix('$')
        .ok_or_else(|| invalid("a sentence starts with `$`", line))?;
    let Some((data, sum)) = body.rsplit_once('*') else {
        return Err(DecodeError::BadChecksum {
            detail: "no `*hh` checksum at the end".into(),
            snippet: snippet(line),
        });
    };
    let want = u8::from_str_radix(sum.trim(), 16)
        .ok()
        .filter(|_| sum.trim().len() == 2)
        .ok_or_else(|| DecodeError::BadChecksum {
            detail: format!("`{}` is not two hex digits", snippet(sum)),
            snippet: snippet(line),
        })?;
    let got = data.bytes().fold(0u8, |acc, b| acc ^ b);
    if got != want {
        return Err(DecodeError::BadChecksum {
            detail: format!("computed {got:02X}, the sentence says {want:02X}"),
            snippet: snippet(line),
        });
    }
    Ok(data.split(',').collect())
}

/// `ddmm.mmmm` (`dddmm.mmmm` for longitude) and its hemisphere → signed
/// decimal degrees. `None` when both fields are empty (no position).
fn degrees(
    value: &str,
    hemisphere: &str,
    max: f64,
    line: &str,
) -> Result<Option<f64>, DecodeError> {
    if value.is_empty() && hemisphere.is_empty() {
        return Ok(None);
    }
    // Degrees and minutes split on the text, not by arithmetic on the
    // float (`4807.038 - 4800` is not exactly 7.038); the result is rounded
    // to 1e-9 degrees (0.1 mm), so the stored number reads as expected.
    let bad = || invalid("a position is written `ddmm.mmmm`", line);
    let int_len = value.find('.').unwrap_or(value.len());
    if int_len < 3 || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let deg: f64 = value[..int_len - 2].parse().map_err(|_| bad())?;
    let min: f64 = value[int_len - 2..].parse().map_err(|_| bad())?;
    let d = ((deg + min / 60.0) * 1e9).round() / 1e9;
    if min >= 60.0 || d > max {
        return Err(invalid("a position is out of range", line));
    }
    let sign = match (hemisphere, max > 90.0) {
        ("N", false) | ("E", true) => 1.0,
        ("S", false) | ("W", true) => -1.0,
        _ => return Err(invalid("a hemisphere must be N/S or E/W", line)),
    };
    Ok(Some(sign * d))
}

/// An optional numeric field.
fn number(field: &str, name: &str, line: &str) -> Result<Option<f64>, DecodeError> {
    if field.is_empty() {
        return Ok(None);
    }
    match parse_number(field, name)? {
        Some(n) => Ok(Some(n)),
        None => Err(invalid("a numeric field holds text", line)),
    }
}

/// One sentence → a point, or `Ok(None)` for a sentence that is skipped.
pub(super) fn decode_nmea(
    line: &str,
    sentences: &[NmeaSentence],
    received_ms: i64,
    state: &mut NmeaState,
) -> Result<Option<Decoded>, DecodeError> {
    let f = fields(line)?;
    let address = f[0];
    if address.len() != 5 || !address.bytes().all(|b| b.is_ascii_alphanumeric()) {
        // Proprietary sentences (`$PUBX`, `$PMTK…`) and the like.
        return Ok(None);
    }
    let kind = match &address[2..] {
        "GGA" => NmeaSentence::Gga,
        "RMC" => NmeaSentence::Rmc,
        _ => return Ok(None),
    };
    let get = |i: usize| f.get(i).copied().unwrap_or("");
    let mut point = DecodedPoint::default();
    match kind {
        NmeaSentence::Gga => {
            if f.len() < 10 {
                return Err(invalid("a GGA sentence has at least 9 fields", line));
            }
            let quality = number(get(6), "fix_quality", line)?;
            if quality.is_none_or(|q| q == 0.0) {
                return Ok(None);
            }
            if !sentences.contains(&kind) {
                return Ok(None);
            }
            if !get(1).is_empty() {
                let reference = state.last_rmc_ms.unwrap_or(received_ms);
                point.timestamp_ms = Some(
                    utc_time_of_day(get(1), reference)
                        .ok_or_else(|| invalid("the fix time is written `hhmmss.ss`", line))?,
                );
            }
            let values = &mut point.values;
            if let Some(lat) = degrees(get(2), get(3), 90.0, line)? {
                values.insert("latitude".into(), Value::Number(lat));
            }
            if let Some(lon) = degrees(get(4), get(5), 180.0, line)? {
                values.insert("longitude".into(), Value::Number(lon));
            }
            for (i, name) in [(9, "altitude"), (7, "satellites"), (8, "hdop")] {
                if let Some(n) = number(get(i), name, line)? {
                    values.insert(name.into(), Value::Number(n));
                }
            }
            values.insert("fix_quality".into(), Value::Number(quality.unwrap_or(0.0)));
        }
        NmeaSentence::Rmc => {
            if f.len() < 10 {
                return Err(invalid("an RMC sentence has at least 9 fields", line));
            }
            if get(2) != "A" {
                return Ok(None);
            }
            let day =
                date_ddmmyy(get(9)).ok_or_else(|| invalid("the date is written `ddmmyy`", line))?;
            // The time of day on that date (noon is never a day away).
            let ms = utc_time_of_day(get(1), day + 43_200_000)
                .ok_or_else(|| invalid("the fix time is written `hhmmss.ss`", line))?;
            if !(0..=MAX_TIMESTAMP_MS).contains(&ms) {
                return Err(invalid("the date is out of range", line));
            }
            state.last_rmc_ms = Some(ms);
            if !sentences.contains(&kind) {
                return Ok(None);
            }
            point.timestamp_ms = Some(ms);
            let values = &mut point.values;
            if let Some(lat) = degrees(get(3), get(4), 90.0, line)? {
                values.insert("latitude".into(), Value::Number(lat));
            }
            if let Some(lon) = degrees(get(5), get(6), 180.0, line)? {
                values.insert("longitude".into(), Value::Number(lon));
            }
            if let Some(knots) = number(get(7), "speed_kmh", line)? {
                values.insert("speed_kmh".into(), Value::Number(knots * KNOT_KMH));
            }
            if let Some(course) = number(get(8), "course", line)? {
                values.insert("course".into(), Value::Number(course));
            }
        }
    }
    point
        .metadata
        .insert("nmea".into(), serde_json::Value::String(address.to_owned()));
    Ok(Some(point.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [NmeaSentence; 2] = [NmeaSentence::Gga, NmeaSentence::Rmc];
    /// 2024-01-15T10:30:00Z
    const RX: i64 = 1_705_314_600_000;

    fn with_sum(body: &str) -> String {
        let sum = body.bytes().fold(0u8, |a, b| a ^ b);
        format!("${body}*{sum:02X}")
    }

    fn decode(line: &str, state: &mut NmeaState) -> Result<Option<Decoded>, DecodeError> {
        decode_nmea(line, &BOTH, RX, state)
    }

    fn num(d: &Decoded, k: &str) -> f64 {
        d.point.values[k].as_f64().unwrap_or_else(|| panic!("{k}"))
    }

    /// The classic examples (gpsinformation.org, "NMEA data" by Dale
    /// DePriest; the same lines in most receiver manuals).
    #[test]
    fn gga_and_rmc() {
        let mut st = NmeaState::default();
        let rmc = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A";
        let d = decode(rmc, &mut st).unwrap().unwrap();
        // 1994-03-23T12:35:19Z
        assert_eq!(d.point.timestamp_ms, Some(764_426_119_000));
        assert!((num(&d, "latitude") - 48.1173).abs() < 1e-9);
        assert!((num(&d, "longitude") - 11.516_666_666).abs() < 1e-6);
        assert!((num(&d, "speed_kmh") - 22.4 * 1.852).abs() < 1e-9);
        assert_eq!(num(&d, "course"), 84.4);
        assert_eq!(d.point.metadata["nmea"], "GPRMC");
        // GGA after it: dated by the RMC, not by the receive time.
        let gga = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        let d = decode(gga, &mut st).unwrap().unwrap();
        assert_eq!(d.point.timestamp_ms, Some(764_426_119_000));
        assert_eq!(num(&d, "altitude"), 545.4);
        assert_eq!(num(&d, "satellites"), 8.0);
        assert_eq!(num(&d, "hdop"), 0.9);
        assert_eq!(num(&d, "fix_quality"), 1.0);
        // GGA alone: the date the line arrived.
        let d = decode(gga, &mut NmeaState::default()).unwrap().unwrap();
        assert_eq!(
            d.point.timestamp_ms,
            Some(1_705_276_800_000 + (12 * 3600 + 35 * 60 + 19) * 1000)
        );
    }

    #[test]
    fn south_and_west_are_negative() {
        let line =
            "$GPGGA,185312.000,4524.2243,N,07327.6925,W,2,8,0.99,29.4,M,-31.9,M,0000,0000*59";
        let d = decode(line, &mut NmeaState::default()).unwrap().unwrap();
        assert!((num(&d, "longitude") + (73.0 + 27.6925 / 60.0)).abs() < 1e-9);
        assert!(num(&d, "latitude") > 45.0);
        let s = with_sum("GNRMC,000512.00,A,3351.000,S,15112.000,E,0.0,,150124,,,A");
        let d = decode(&s, &mut NmeaState::default()).unwrap().unwrap();
        assert_eq!(num(&d, "latitude"), -(33.0 + 51.0 / 60.0));
        assert!(!d.point.values.contains_key("course"));
        assert_eq!(d.point.timestamp_ms, Some(1_705_276_800_000 + 312_000));
    }

    #[test]
    fn skipped_sentences() {
        let mut st = NmeaState::default();
        for line in [
            "$GPVTG,353.67,T,353.86,M,1.43,N,2.65,K,A*2B".to_owned(),
            "$GPGGA,132411.60,5231.91297,N,00516.97745,E,0,00,2.3,5.7,M,46.6,M,,*63".to_owned(),
            with_sum("GPRMC,123519,V,,,,,,,230394,,"),
            with_sum("GPGGA,,,,,,0,00,99.99,,,,,,"),
            with_sum("PUBX,00,081350.00"),
        ] {
            assert_eq!(decode(&line, &mut st), Ok(None), "{line}");
        }
        // Only RMC: GGA skipped, RMC still dates later sentences.
        let only = [NmeaSentence::Rmc];
        let gga = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        assert_eq!(decode_nmea(gga, &only, RX, &mut st), Ok(None));
        let rmc = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A";
        assert_eq!(
            decode_nmea(rmc, &[NmeaSentence::Gga], RX, &mut st),
            Ok(None)
        );
        assert_eq!(st.last_rmc_ms, Some(764_426_119_000));
    }

    #[test]
    fn errors() {
        let mut st = NmeaState::default();
        for (line, want) in [
            (
                "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48".to_owned(),
                "bad_checksum",
            ),
            (
                "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,".to_owned(),
                "bad_checksum",
            ),
            (
                "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*4".to_owned(),
                "bad_checksum",
            ),
            // Cut at connect time: the `$` is gone.
            (
                "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47".to_owned(),
                "invalid_nmea",
            ),
            (
                with_sum("GPGGA,123519,4807.038,X,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
                "invalid_nmea",
            ),
            (
                with_sum("GPGGA,123519,4867.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
                "invalid_nmea",
            ),
            (
                with_sum("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,high,M,46.9,M,,"),
                "invalid_nmea",
            ),
            (
                with_sum("GPGGA,123519,4807.038,N,01131.000,E,1,08"),
                "invalid_nmea",
            ),
            (
                with_sum("GPGGA,1235,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
                "invalid_nmea",
            ),
            (
                with_sum("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,320394,003.1,W"),
                "invalid_nmea",
            ),
            (
                with_sum("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,NaN,M,46.9,M,,"),
                "non_finite",
            ),
        ] {
            let e = decode(&line, &mut st).unwrap_err();
            assert_eq!(e.reason(), want, "{line}: {e}");
            super::super::test_support::check_message(&e);
        }
    }
}
