//! InfluxDB line protocol (`influx`), for MQTT payloads (one point per
//! line, all lines or none) and serial lines: escaping, field types and the
//! timestamp precision.

use std::borrow::Cow;

use super::*;

/// Every non-blank line not starting with `#` is one point. Line ends are
/// `\n` or `\r\n`; string fields therefore cannot contain newlines.
pub(super) fn decode_influx(text: &str, opts: &DecodeOptions) -> Result<Vec<Decoded>, DecodeError> {
    let mut out = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(influx_line(line, opts)?);
    }
    if out.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(out)
}

/// Characters a backslash escapes in measurements, tag keys/values and field
/// keys (the spec lists `,` and space for measurements; `=` too elsewhere —
/// accepting `\=` in a measurement is harmless).
const INFLUX_ESCAPABLE: &[u8] = b", =";

/// A cursor over one line of line protocol.
struct LineCursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> LineCursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn err(&self, detail: &'static str) -> DecodeError {
        DecodeError::InvalidLineProtocol {
            detail,
            snippet: snippet(self.s),
        }
    }

    /// Up to the first unescaped byte of `stops` (or the end), unescaped.
    /// `stops` is a closure rather than a slice: `<[u8]>::contains` is a
    /// `memchr` call per byte, most of line protocol's parsing time.
    #[inline]
    fn escaped_until(&mut self, stops: impl Fn(u8) -> bool) -> Cow<'a, str> {
        let b = self.s.as_bytes();
        let start = self.i;
        let mut has_escape = false;
        while self.i < b.len() && !stops(b[self.i]) {
            if b[self.i] == b'\\'
                && b.get(self.i + 1)
                    .is_some_and(|c| INFLUX_ESCAPABLE.contains(c))
            {
                has_escape = true;
                self.i += 1;
            }
            self.i += 1;
        }
        let raw = &self.s[start..self.i];
        if !has_escape {
            return Cow::Borrowed(raw);
        }
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\'
                && chars
                    .peek()
                    .is_some_and(|n| n.is_ascii() && INFLUX_ESCAPABLE.contains(&(*n as u8)))
            {
                continue;
            }
            out.push(c);
        }
        Cow::Owned(out)
    }

    /// A quoted string field value; the cursor is on the opening quote.
    /// `\"` and `\\` are escapes, any other backslash is literal.
    fn quoted(&mut self) -> Result<String, DecodeError> {
        let b = self.s.as_bytes();
        self.i += 1;
        let mut out = String::new();
        let mut run = self.i;
        while self.i < b.len() {
            match b[self.i] {
                b'\\' if matches!(b.get(self.i + 1), Some(b'"' | b'\\')) => {
                    out.push_str(&self.s[run..self.i]);
                    run = self.i + 1;
                    self.i += 2;
                }
                b'"' => {
                    out.push_str(&self.s[run..self.i]);
                    self.i += 1;
                    return Ok(out);
                }
                _ => self.i += 1,
            }
        }
        Err(self.err("unterminated string field"))
    }

    fn skip_spaces(&mut self) -> bool {
        let start = self.i;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
        self.i > start
    }
}

pub(super) fn influx_line(line: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let mut cur = LineCursor { s: line, i: 0 };
    let mut point = DecodedPoint::default();

    let measurement = cur.escaped_until(|c| matches!(c, b',' | b' '));
    if measurement.is_empty() {
        return Err(cur.err("missing measurement"));
    }
    while cur.peek() == Some(b',') {
        cur.i += 1;
        let key = cur.escaped_until(|c| matches!(c, b'=' | b',' | b' '));
        if cur.peek() != Some(b'=') {
            return Err(cur.err("tag without `=`"));
        }
        cur.i += 1;
        let value = cur.escaped_until(|c| matches!(c, b',' | b' '));
        if key.is_empty() || value.is_empty() {
            return Err(cur.err("empty tag key or value"));
        }
        point.metadata.insert(
            key.as_ref().into(),
            serde_json::Value::String(value.into_owned()),
        );
    }
    // The measurement wins over a tag of the same name: it is documented
    // to be there.
    point.metadata.insert(
        "measurement".into(),
        serde_json::Value::String(measurement.into_owned()),
    );

    if !cur.skip_spaces() || cur.peek().is_none() {
        return Err(cur.err("missing fields"));
    }
    loop {
        let key = cur.escaped_until(|c| matches!(c, b'=' | b',' | b' '));
        if cur.peek() != Some(b'=') {
            return Err(cur.err("field without `=`"));
        }
        if key.is_empty() {
            return Err(cur.err("empty field key"));
        }
        cur.i += 1;
        let value = if cur.peek() == Some(b'"') {
            Value::Text(cur.quoted()?)
        } else {
            let start = cur.i;
            while !matches!(cur.peek(), None | Some(b',' | b' ' | b'\t')) {
                cur.i += 1;
            }
            influx_field(&line[start..cur.i], &key)
                .map_err(|e| e.unwrap_or_else(|| cur.err("bad field value")))?
        };
        point.values.insert(key.as_ref().into(), value);
        match cur.peek() {
            Some(b',') => cur.i += 1,
            _ => break,
        }
    }

    if cur.skip_spaces() && cur.peek().is_some() {
        let start = cur.i;
        while !matches!(cur.peek(), None | Some(b' ' | b'\t')) {
            cur.i += 1;
        }
        let ts = &line[start..cur.i];
        point.timestamp_ms = Some(influx_timestamp(ts, opts.influx_precision)?);
        cur.skip_spaces();
        if cur.peek().is_some() {
            return Err(cur.err("unexpected text after the timestamp"));
        }
    } else if cur.peek().is_some() {
        return Err(cur.err("unexpected text after the fields"));
    }
    finish(point.into(), line, opts)
}

/// An unquoted field value. `Err(None)`: not a valid value (the caller
/// builds the error, which quotes the line).
fn influx_field(v: &str, key: &str) -> Result<Value, Option<DecodeError>> {
    match v {
        "" => return Err(None),
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Some(int) = v.strip_suffix('i') {
        // Large integers lose precision beyond 2^53, as every f64 does.
        return int
            .parse::<i64>()
            .map(|n| Value::Number(n as f64))
            .map_err(|_| None);
    }
    if let Some(uint) = v.strip_suffix('u') {
        return uint
            .parse::<u64>()
            .map(|n| Value::Number(n as f64))
            .map_err(|_| None);
    }
    match parse_number(v, key) {
        Ok(Some(n)) => Ok(Value::Number(n)),
        Ok(None) => Err(None),
        Err(e) => Err(Some(e)),
    }
}

fn influx_timestamp(ts: &str, precision: InfluxPrecision) -> Result<i64, DecodeError> {
    let bad = || DecodeError::BadTimestamp {
        value: snippet(ts),
        expected: match precision {
            InfluxPrecision::Ns => "an integer of Unix nanoseconds",
            InfluxPrecision::Us => "an integer of Unix microseconds",
            InfluxPrecision::Ms => "an integer of Unix milliseconds",
            InfluxPrecision::S => "an integer of Unix seconds",
        },
    };
    // At most 19 digits (below 10^19, which a u64 holds) read eight at a
    // time without `parse`'s per-digit checks; then one range check.
    let b = ts.as_bytes();
    let n = match (!b.is_empty() && b.len() <= 19)
        .then(|| digits_value(b))
        .flatten()
    {
        Some(n) => i64::try_from(n).map_err(|_| bad())?,
        None => ts.parse().map_err(|_| bad())?,
    };
    to_ms(n, precision).ok_or_else(bad)
}

/// A timestamp of `precision` units in Unix ms, if in range.
fn to_ms(n: i64, precision: InfluxPrecision) -> Option<i64> {
    let ms = match precision {
        InfluxPrecision::Ns => Some(n.div_euclid(1_000_000)),
        InfluxPrecision::Us => Some(n.div_euclid(1_000)),
        InfluxPrecision::Ms => Some(n),
        InfluxPrecision::S => n.checked_mul(1000),
    };
    ms.filter(|ms| (0..=MAX_TIMESTAMP_MS).contains(ms))
}

/// The value of at most 19 ASCII digits, eight at a time (each word
/// checked to be digits and read in one go: checking byte by byte first
/// was half of a timestamp's time); `None` if any byte is not a digit.
fn digits_value(b: &[u8]) -> Option<u64> {
    const HIGH_NIBBLES: u64 = u64::from_ne_bytes([0xf0; 8]);
    const SIX: u64 = u64::from_ne_bytes([0x06; 8]);
    const THREES: u64 = u64::from_ne_bytes([0x33; 8]);
    let mut n = 0u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        // Every byte is 0x3_ and stays 0x3_ when 6 is added (its low
        // nibble is at most 9). A carry out of a byte (0xfa and above)
        // only makes the next byte fail, beside one that fails already.
        let high = v & HIGH_NIBBLES;
        let high_plus_six = v.wrapping_add(SIX) & HIGH_NIBBLES;
        if high | (high_plus_six >> 4) != THREES {
            return None;
        }
        n = n * 100_000_000 + eight_digits(c.try_into().expect("8 bytes"));
    }
    for &d in chunks.remainder() {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(n)
}

/// Eight ASCII digits (already checked) as their value, in a word: digit
/// pairs, then the pairs' pairs, by multiplications that cannot carry
/// between the lanes they use.
fn eight_digits(b: &[u8; 8]) -> u64 {
    let v = u64::from_le_bytes(*b) - 0x3030_3030_3030_3030;
    // Each even byte: ten times its digit plus the next.
    let v = v * 10 + (v >> 8);
    const LANES: u64 = 0x0000_00ff_0000_00ff;
    // What spills past bit 63 is not needed: wrapping on purpose.
    let hi = (v & LANES).wrapping_mul(100 + (1_000_000 << 32));
    let lo = ((v >> 16) & LANES).wrapping_mul(1 + (10_000 << 32));
    hi.wrapping_add(lo) >> 32
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    /// Digits are told from other bytes eight at a time exactly as byte
    /// by byte: every byte value at every position of a word and of the
    /// rest.
    #[test]
    fn digits_value_checks_every_byte() {
        let digits = b"1465839830100400200";
        for len in 1..=digits.len() {
            let good = &digits[..len];
            let want: u64 = std::str::from_utf8(good).unwrap().parse().unwrap();
            assert_eq!(digits_value(good), Some(want), "{len}");
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut b = good.to_vec();
                    b[at] = byte;
                    let want = b
                        .iter()
                        .all(u8::is_ascii_digit)
                        .then(|| std::str::from_utf8(&b).unwrap().parse::<u64>().unwrap());
                    assert_eq!(digits_value(&b), want, "{len} {at} {byte}");
                }
            }
        }
    }

    #[test]
    fn eight_digits_at_once() {
        for t in [
            "00000000", "12345678", "99999999", "10000001", "00000009", "90000000",
        ] {
            let b: &[u8; 8] = t.as_bytes().try_into().unwrap();
            assert_eq!(eight_digits(b), t.parse::<u64>().unwrap(), "{t}");
        }
    }

    /// The digit fast path reads timestamps as `i64::from_str` does,
    /// overflow and signs included.
    #[test]
    fn timestamps_as_parse_reads_them() {
        let reference = |ts: &str, p: InfluxPrecision| -> Result<i64, ()> {
            let n: i64 = ts.parse().map_err(|_| ())?;
            to_ms(n, p).ok_or(())
        };
        for ts in [
            "1465839830100400200",
            "9223372036854775807",
            "9223372036854775808",
            "9999999999999999999",
            "99999999999999999999",
            "0001465839830100400200",
            "1705314600",
            "1705314600123",
            "1705314600123456",
            "0",
            "+1705314600",
            "-1",
            "",
            "17a",
        ] {
            for p in [
                InfluxPrecision::Ns,
                InfluxPrecision::Us,
                InfluxPrecision::Ms,
                InfluxPrecision::S,
            ] {
                assert_eq!(
                    influx_timestamp(ts, p).map_err(|_| ()),
                    reference(ts, p),
                    "{ts}"
                );
            }
        }
    }

    #[test]
    fn influx_line_protocol() {
        let d = one(
            r#"weather,location=us-midwest,season=summer temperature=82,humidity=71i,count=3u,ok=t,bad=FALSE,note="a \"b\" \\ c, d=e" 1465839830100400200"#,
            PayloadFormat::Influx,
        );
        assert_eq!(num(&d, "temperature"), 82.0);
        assert_eq!(num(&d, "humidity"), 71.0);
        assert_eq!(num(&d, "count"), 3.0);
        assert_eq!(d.point.values["ok"], Value::Bool(true));
        assert_eq!(d.point.values["bad"], Value::Bool(false));
        assert_eq!(d.point.values["note"], text(r#"a "b" \ c, d=e"#));
        assert_eq!(d.point.metadata["measurement"], "weather");
        assert_eq!(d.point.metadata["location"], "us-midwest");
        assert_eq!(d.point.metadata["season"], "summer");
        assert_eq!(d.point.timestamp_ms, Some(1_465_839_830_100));
    }

    #[test]
    fn influx_escaping() {
        let d = one(
            r#"my\ meas\,ure,tag\ key=tag\,val\=ue,t2=a\b field\=key\ x=1,s="back\slash" 1700000000000000000"#,
            PayloadFormat::Influx,
        );
        assert_eq!(d.point.metadata["measurement"], "my meas,ure");
        assert_eq!(d.point.metadata["tag key"], "tag,val=ue");
        // A backslash before anything else is literal.
        assert_eq!(d.point.metadata["t2"], r"a\b");
        assert_eq!(num(&d, "field=key x"), 1.0);
        assert_eq!(d.point.values["s"], text(r"back\slash"));
        assert_eq!(d.point.timestamp_ms, Some(1_700_000_000_000));
        // Spaces, commas and `=` inside a string field; an empty string.
        let d = one(r#"m s="a b,c=d",e="",v=2"#, PayloadFormat::Influx);
        assert_eq!(d.point.values["s"], text("a b,c=d"));
        assert_eq!(d.point.values["e"], text(""));
        assert_eq!(d.point.timestamp_ms, None);
        // The measurement wins over a tag of that name.
        let d = one("m,measurement=x v=1", PayloadFormat::Influx);
        assert_eq!(d.point.metadata["measurement"], "m");
    }

    #[test]
    fn influx_several_lines_and_precision() {
        let p = "# comment\r\ncpu,host=a usage=1.5 1700000000000000000\r\n\n  cpu,host=b usage=2 1700000001000000000  \n";
        let all = decode_payload(p.as_bytes(), PayloadFormat::Influx, &opts()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].point.metadata["host"], "b");
        assert_eq!(all[1].point.timestamp_ms, Some(1_700_000_001_000));
        for (precision, ts, ms) in [
            (
                InfluxPrecision::Ns,
                "1700000000123456789",
                1_700_000_000_123,
            ),
            (InfluxPrecision::Us, "1700000000123456", 1_700_000_000_123),
            (InfluxPrecision::Ms, "1700000000123", 1_700_000_000_123),
            (InfluxPrecision::S, "1700000000", 1_700_000_000_000),
        ] {
            let o = DecodeOptions {
                influx_precision: precision,
                ..opts()
            };
            let d = decode_payload(format!("m v=1 {ts}").as_bytes(), PayloadFormat::Influx, &o)
                .unwrap();
            assert_eq!(d[0].point.timestamp_ms, Some(ms), "{precision:?}");
        }
        // One bad line rejects the whole message: never half-stored.
        let p = "m v=1\nm v=oops\nm v=3";
        assert_eq!(
            reason(p.as_bytes(), PayloadFormat::Influx),
            "invalid_line_protocol"
        );
    }

    #[test]
    fn influx_errors() {
        for (p, want) in [
            ("m", "invalid_line_protocol"),
            ("m ", "invalid_line_protocol"),
            (",t=1 v=1", "invalid_line_protocol"),
            ("m,t v=1", "invalid_line_protocol"),
            ("m,t= v=1", "invalid_line_protocol"),
            ("m v", "invalid_line_protocol"),
            ("m =1", "invalid_line_protocol"),
            ("m v=", "invalid_line_protocol"),
            ("m v=1,", "invalid_line_protocol"),
            ("m v=abc", "invalid_line_protocol"),
            ("m v=1.5i", "invalid_line_protocol"),
            ("m v=-1u", "invalid_line_protocol"),
            ("m v=99999999999999999999i", "invalid_line_protocol"),
            (r#"m s="open"#, "invalid_line_protocol"),
            (r#"m s="a"x"#, "invalid_line_protocol"),
            ("m v=1 123 456", "invalid_line_protocol"),
            ("m v=1 soon", "bad_timestamp"),
            ("m v=1 -5", "bad_timestamp"),
            ("m v=1 1.5", "bad_timestamp"),
            ("m v=1 99999999999999999999", "bad_timestamp"),
            ("m v=NaN", "non_finite"),
            ("m v=nan", "non_finite"),
            ("m v=inf", "non_finite"),
            ("m v=-Infinity", "non_finite"),
            ("m v=1e400", "non_finite"),
            ("m ok=true,s=\"x\"", "no_numeric_value"),
        ] {
            assert_eq!(reason(p.as_bytes(), PayloadFormat::Influx), want, "{p}");
        }
        let e = err("m t=1,h=NaN", PayloadFormat::Influx);
        assert_eq!(
            e,
            DecodeError::NonFinite {
                field: "h".into(),
                value: "NaN".into()
            }
        );
        let o = DecodeOptions {
            influx_precision: InfluxPrecision::S,
            ..opts()
        };
        let e = decode_payload(b"m v=1 99999999999999", PayloadFormat::Influx, &o).unwrap_err();
        assert_eq!(e.reason(), "bad_timestamp");
        assert!(
            e.to_string().contains("unix seconds") || e.to_string().contains("Unix seconds"),
            "{e}"
        );
    }

    #[test]
    fn influx_lines() {
        let d = line(
            "env,room=a t=21.5 1700000000000000000",
            &LineFormat::Influx {},
        );
        assert_eq!(num(&d, "t"), 21.5);
        assert_eq!(d.point.metadata["room"], "a");
        assert_eq!(
            line_reason("env t", &LineFormat::Influx {}),
            "invalid_line_protocol"
        );
    }
}
