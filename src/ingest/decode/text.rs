//! Free-text serial lines as firmware prints them for people:
//! `Humidity: 58.00%  Temperature: 22.40°C 72.32°F  Heat index: 22.08°C 71.74°F`
//! (Adafruit's DHT tester), `Temperature = 22.40 *C` (BMP280 examples),
//! `$,winddir=113,windspeedmph=0.0,…,#` (SparkFun's weather shield).
//!
//! Rules, in the order the reader applies them:
//! - words are separated by blanks, `,`, `;` and `|`; a word made only of
//!   punctuation (`$`, `#`, `--`) is ignored;
//! - a **name** is the words before a `:` or `=` (`Heat index:` →
//!   `heat_index`), or before a number when no separator is printed
//!   (`Temp 22.4`): lowercased, every run of characters other than letters,
//!   digits, `.` and `-` becomes one `_`;
//! - a **value** is the number after the name; a **unit** is what follows
//!   the number in the same word (`58.00%`, `22.40°C`) or the next word
//!   when it looks like a unit (a known unit such as `C`, `hPa`, `m/s`, or
//!   a word starting with a symbol such as `%`, `°`, `*`) and is not itself
//!   a name (`C Heat index:` — `C` is the unit). Units are not stored: the
//!   data source describes them;
//! - a further number right after a value belongs to the same name, named
//!   by its unit (`Temperature: 22.40°C 72.32°F` → `temperature` and
//!   `temperature_f`), or numbered (`_2`, `_3`) without one; a number with
//!   no name before it is `value`;
//! - a value that is not a number is one word of text (`Status: OK`);
//!   `nan` and `inf` are `non_finite` (a sensor that failed), never skipped;
//! - names `timestamp`, `ts` and `time` are the reading's time (`auto`
//!   rules of [`TimeFormat`]: ISO-8601, Unix after 2000, or `hh:mm:ss`);
//! - when two values get the same name the last wins; words that end the
//!   line without a value are ignored. A line without any number is
//!   `no_numeric_value` (`Failed to read from DHT sensor!`).

use super::linetime::parse_time;
use super::*;
use crate::config::formats::{TimeFormat, TimeZone};

/// Units recognised as a separate word after a number.
const UNITS: [&str; 52] = [
    "C", "F", "K", "V", "mV", "uV", "A", "mA", "uA", "W", "mW", "kW", "Wh", "kWh", "VA", "Pa",
    "hPa", "kPa", "mbar", "bar", "psi", "inHg", "mmHg", "mm", "cm", "m", "km", "in", "ft", "mph",
    "kn", "kt", "knots", "kmh", "lux", "lx", "ppm", "ppb", "dB", "dBm", "dBA", "Hz", "kHz", "rpm",
    "deg", "s", "ms", "g", "kg", "l", "L", "ml",
];

/// Does `w` look like a unit printed after a number?
fn is_unit(w: &str) -> bool {
    UNITS.contains(&w)
        || w.contains('/')
        || w.starts_with(|c: char| !c.is_alphanumeric() && c != '-' && c != '+' && c != '.')
}

/// One word, with the separator that ended the name it belongs to split off.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok<'a> {
    Word(&'a str),
    /// `:` or `=` after a name.
    Sep,
}

fn tokens(line: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    for word in line
        .split([' ', '\t', ',', ';', '|'])
        .filter(|w| !w.is_empty())
    {
        let mut rest = word;
        loop {
            // `name=value`, `name:` and `Time:12:30:05` split at their first
            // `=` or name-ending `:`; `12:30:05` stays one word.
            let cut = rest.find(['=', ':']).filter(|&i| {
                rest.as_bytes()[i] == b'='
                    || (rest[..i].chars().any(char::is_alphabetic) && !looks_numeric(&rest[..i]))
            });
            match cut {
                Some(i) => {
                    if i > 0 {
                        out.push(Tok::Word(&rest[..i]));
                    }
                    out.push(Tok::Sep);
                    rest = &rest[i + 1..];
                    if rest.is_empty() {
                        break;
                    }
                }
                None => {
                    if rest.chars().any(char::is_alphanumeric) {
                        out.push(Tok::Word(rest));
                    }
                    break;
                }
            }
        }
    }
    out
}

/// Does `w` start with a number (`21`, `-3.5`, `.5`, `58.00%`)?
fn looks_numeric(w: &str) -> bool {
    let b = w.trim_start_matches(['+', '-']).as_bytes();
    match b {
        [d, ..] if d.is_ascii_digit() => true,
        [b'.', d, ..] => d.is_ascii_digit(),
        _ => false,
    }
}

/// `nan`, `-inf`, `nan%`, `inf°C`: what firmware prints for a failed
/// sensor (but not a word such as `info`).
fn is_non_finite(w: &str) -> bool {
    let lower = w.trim_start_matches(['+', '-']).to_ascii_lowercase();
    ["infinity", "inf", "nan"].iter().any(|p| {
        lower
            .strip_prefix(p)
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphabetic()))
    })
}

/// A number at the start of `w` and the rest of the word (its unit).
/// `Ok(None)` when `w` does not start with a number; `non_finite` for
/// `nan` and `inf`.
fn leading_number<'a>(w: &'a str, name: &str) -> Result<Option<(f64, &'a str)>, DecodeError> {
    if is_non_finite(w) {
        return Err(DecodeError::NonFinite {
            field: snippet(name),
            value: snippet(w),
        });
    }
    let b = w.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let digits_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - digits_start;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - f;
    }
    if digits == 0 {
        return Ok(None);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let e = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > e {
            i = j;
        }
    }
    match parse_number(&w[..i], name)? {
        Some(n) => Ok(Some((n, &w[i..]))),
        None => Ok(None),
    }
}

/// `Heat index` → `heat_index`; `°F` → `f`.
fn slug<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for w in words {
        for c in w.chars() {
            if c.is_alphanumeric() || c == '.' || c == '-' {
                out.extend(c.to_lowercase());
            } else if !out.ends_with('_') {
                out.push('_');
            }
        }
        if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

pub(super) fn decode_text(
    line: &str,
    received_ms: i64,
    opts: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    let toks = tokens(line);
    let mut point = DecodedPoint::default();
    // The name words seen since the last value.
    let mut pending: Vec<&str> = Vec::new();
    // The name of the last value and how many extra numbers followed it.
    let mut last: Option<(String, usize)> = None;
    let mut i = 0;
    while i < toks.len() {
        let named = match toks[i] {
            Tok::Sep => {
                i += 1;
                true
            }
            Tok::Word(w) => {
                if !looks_numeric(w) {
                    pending.push(w);
                    i += 1;
                    continue;
                }
                !pending.is_empty()
            }
        };
        // Here: a value follows at `i` (after a separator, or a number).
        let name = if named {
            let n = slug(pending.drain(..));
            if n.is_empty() {
                "value".to_owned()
            } else {
                n
            }
        } else {
            String::new()
        };
        let Some(Tok::Word(w)) = toks.get(i).copied() else {
            // `name:` at the end, or `a: : b`: nothing to read.
            continue;
        };
        // `name: next:` — an empty value; the word is the next name.
        if named && toks.get(i + 1) == Some(&Tok::Sep) && !looks_numeric(w) {
            continue;
        }
        i += 1;
        let key = if is_timestamp_key(&name) {
            point.timestamp_ms = Some(parse_time(w, TimeFormat::Auto, TimeZone::UTC, received_ms)?);
            last = None;
            continue;
        } else {
            name
        };
        match leading_number(w, &key)? {
            None => {
                point
                    .values
                    .insert(key.as_str().into(), Value::Text(w.to_owned()));
                last = Some((key, 0));
            }
            Some((n, attached)) => {
                let mut unit = attached;
                if unit.is_empty() {
                    if let Some(Tok::Word(u)) = toks.get(i).copied() {
                        if is_unit(u) && toks.get(i + 1) != Some(&Tok::Sep) {
                            unit = u;
                            i += 1;
                        }
                    }
                }
                let key = if named {
                    last = Some((key.clone(), 1));
                    key
                } else {
                    // An extra number for the last name, or a nameless one.
                    let (base, count) = last.get_or_insert_with(|| ("value".to_owned(), 0));
                    *count += 1;
                    let by_unit = slug([unit]);
                    if *count == 1 {
                        base.clone()
                    } else if !by_unit.is_empty() {
                        format!("{base}_{by_unit}")
                    } else {
                        format!("{base}_{count}")
                    }
                };
                point.values.insert(key.into(), Value::Number(n));
            }
        }
    }
    finish(point.into(), line, opts)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    fn text(s: &str) -> Decoded {
        decode_text(s, TS, &opts()).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn nums(d: &Decoded) -> Vec<(String, f64)> {
        d.point
            .values
            .iter()
            .filter_map(|(k, v)| v.as_f64().map(|n| (k.to_string(), n)))
            .collect()
    }

    fn pairs(p: &[(&str, f64)]) -> Vec<(String, f64)> {
        let mut v: Vec<_> = p.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Adafruit DHT-sensor-library, examples/DHTtester/DHTtester.ino (both
    /// the current `°C` spelling and the older `C`), the spacing,
    /// and the BMP280 example's `=` lines.
    #[test]
    fn firmware_lines() {
        for line in [
            "Humidity: 58.00%  Temperature: 22.40°C 72.32°F  Heat index: 22.08°C 71.74°F",
            "Humidity: 58.00 %  Temperature: 22.40 C 72.32 F  Heat index: 22.08 C 71.74 F",
        ] {
            assert_eq!(
                nums(&text(line)),
                pairs(&[
                    ("humidity", 58.0),
                    ("temperature", 22.4),
                    ("temperature_f", 72.32),
                    ("heat_index", 22.08),
                    ("heat_index_f", 71.74),
                ]),
                "{line}"
            );
        }
        assert_eq!(
            nums(&text("Humidity: 58.00 %  Temperature: 22.40 C")),
            pairs(&[("humidity", 58.0), ("temperature", 22.4)])
        );
        assert_eq!(
            nums(&text("Temperature = 22.40 *C")),
            pairs(&[("temperature", 22.4)])
        );
        assert_eq!(
            nums(&text("Approx altitude = 12.34 m")),
            pairs(&[("approx_altitude", 12.34)])
        );
        let d = text(
            "$,winddir=113,windspeedmph=0.0,windgustmph=0.0,windgustdir=0,windspdmph_avg2m=0.0,\
             winddir_avg2m=113,windgustmph_10m=0.0,windgustdir_10m=0,humidity=47.2,tempf=72.3,\
             rainin=0.00,dailyrainin=0.00,pressure=101217.75,batt_lvl=4.34,light_lvl=0.05,#",
        );
        assert_eq!(d.point.values.len(), 15);
        assert_eq!(num(&d, "winddir"), 113.0);
        assert_eq!(num(&d, "pressure"), 101_217.75);
        assert_eq!(num(&d, "light_lvl"), 0.05);
    }

    #[test]
    fn names_units_and_extras() {
        assert_eq!(
            nums(&text(
                "Temp 22.4C Hum 40% PM2.5: 12 ug/m3 Wind speed: 3.2 m/s V: 3.7 V"
            )),
            pairs(&[
                ("temp", 22.4),
                ("hum", 40.0),
                ("pm2.5", 12.0),
                ("wind_speed", 3.2),
                ("v", 3.7)
            ])
        );
        // A word after the value that is no unit starts the next name.
        assert_eq!(
            nums(&text("Temperature: 22.4 Heat index: 21")),
            pairs(&[("temperature", 22.4), ("heat_index", 21.0)])
        );
        // Nameless numbers, unit-less extras.
        assert_eq!(
            nums(&text("21.5 40")),
            pairs(&[("value", 21.5), ("value_2", 40.0)])
        );
        assert_eq!(
            nums(&text("t: 1 2 3")),
            pairs(&[("t", 1.0), ("t_2", 2.0), ("t_3", 3.0)])
        );
        // Text values, empty values, time.
        let d = text("Status: OK Mode: Temp: -3.5e1 °C time: 12:35:19");
        assert_eq!(d.point.values["status"], Value::Text("OK".into()));
        assert!(!d.point.values.contains_key("mode"));
        assert_eq!(num(&d, "temp"), -35.0);
        assert_eq!(
            d.point.timestamp_ms,
            Some(1_705_276_800_000 + (12 * 3600 + 35 * 60 + 19) * 1000)
        );
        assert_eq!(
            text("ts=2024-01-15T10:30:00Z t=1").point.timestamp_ms,
            Some(TS)
        );
    }

    #[test]
    fn refusals() {
        for (line, want) in [
            ("Failed to read from DHT sensor!", "no_numeric_value"),
            ("Humidity: nan%  Temperature: nan°C", "non_finite"),
            ("Temperature: inf", "non_finite"),
            ("Status: OK", "no_numeric_value"),
            ("time: 123519 t: 1", "bad_timestamp"),
            ("t: 1e400", "non_finite"),
        ] {
            let e = decode_text(line, TS, &opts()).unwrap_err();
            assert_eq!(e.reason(), want, "{line}: {e}");
            check_message(&e);
        }
    }
}
