//! MQTT payloads and serial lines → [`Decoded`] points, or a typed
//! [`DecodeError`]. Pure: no I/O, no clock, no routing.
//!
//! # Formats
//!
//! MQTT payloads ([`PayloadFormat`], [`decode_payload`]):
//!
//! - `json`: an object of values; nested objects are flattened with `.`
//!   (`{"a":{"b":1}}` → `a.b`). A top-level `timestamp`, `ts` or `time` is the
//!   device timestamp, not a value.
//! - `point`: dakkio's point shape `{"timestamp", "values", "metadata",
//!   "dataSourceId"}` (`ts`/`time` accepted too); other top-level keys (such as
//!   `bucketId`) are ignored, routing decides buckets.
//! - `scalar`: a bare value (`21.5`, `true`, `"text"`), named by
//!   [`DecodeOptions::scalar_field`].
//! - `influx`: InfluxDB line protocol, one point per line.
//! - `auto`: an object with a `values` object is a point, any other object is
//!   `json`, a bare number or boolean is a scalar, anything else is tried as
//!   line protocol.
//!
//! MQTT routes read their payloads through [`message::decode_message`]
//! instead, which adds what real devices need on top of these grammars:
//! paths, device time formats and zones ([`time`]), states, arrays that
//! never reject, and multi-line payloads taken line by line (`document.rs`,
//! `message.rs`; their module docs state the rules that differ from the
//! ones below).
//!
//! Serial lines ([`LineFormat`], [`LineDecoder`]): JSON (either object shape),
//! CSV with configured columns (and a named time column with its format),
//! key/value pairs, a bare number, line protocol, free text (`text.rs`:
//! `Humidity: 58.00 %  Temperature: 22.40 C`) or NMEA 0183 (`nmea.rs`).
//! Every line is decoded with the time it arrived (it dates a time of day;
//! `linetime.rs`). Specific to lines:
//!
//! - a blank line, or a CSV line equal to the column names (a device printing
//!   its header again after a re-plug), is skipped (`Ok(None)`), not an error;
//! - control characters (tab aside) are refused as `control_character`:
//!   noise from a wrong baud rate is often valid UTF-8 full of them;
//! - a CSV line must have exactly one cell per column (`invalid_csv`), so the
//!   tail of a line cut at connect time is not read into the wrong columns;
//!   cells may be quoted (`""` escapes a quote) and are then read like any
//!   other cell;
//! - a quoted key/value value (`name="room a"`) is always text.
//!
//! # Rules shared by every format (the invariants)
//!
//! - A payload or line is accepted or rejected **as a whole**: a message with
//!   one bad line of line protocol is rejected entirely (and kept in the
//!   rejects table, so it can be inspected and replayed), never half-stored.
//! - Every point produced has at least one finite number (unless
//!   [`DecodeOptions::require_number`] is turned off): booleans and strings
//!   alone are not a reading. No `Value::Number` is ever NaN or infinite: NaN,
//!   `inf` and numbers overflowing `f64` are `non_finite` errors, not dropped.
//! - Keys named `timestamp`, `ts` or `time` are the device timestamp: ISO-8601
//!   with an offset, or Unix seconds / milliseconds (number or numeric
//!   string); an unparsable one is `bad_timestamp`, never ignored.
//! - JSON `null` values are skipped (they carry nothing, so nothing is lost);
//!   JSON arrays are rejected as `unsupported_value`, because their meaning
//!   (a series? a vector?) cannot be guessed and skipping them would drop
//!   data silently. Empty CSV cells and empty key/value values are skipped
//!   like nulls. A point's `metadata` is free-form and kept as sent. When
//!   flattening makes two keys equal (`{"a.b":1,"a":{"b":2}}`) the last wins.
//! - Limits are checked before any parsing: `max_payload` first (on the raw
//!   bytes), then nesting depth by a linear byte scan, so a depth-10 000
//!   payload is refused without recursion (serde_json's own limit of 128 is a
//!   second guard).
//! - Text values stay `Value::Text`: a serial line's text field can select the
//!   data source at routing time.
//! - Each error has a stable [`DecodeError::reason`] (a metric label and the
//!   rejects table's reason column); its message is lowercase and quotes a
//!   short, escaped piece of the bad input.
//!
//! # Layout
//!
//! This file holds what every format shares (options, [`Decoded`],
//! [`DecodeError`] and its reasons, the limit checks, numbers, timestamps and
//! [`decode_payload`]); each grammar has its own file with its tests:
//! `scalar`, `json` (objects and dakkio's point shape), `influx` (line
//! protocol), `line` ([`LineDecoder`], dispatching serial lines), `csv` and
//! `kv`; `time` (device time formats, shared by MQTT and serial),
//! `document` (JSON by path, states, arrays; read in one pass by `stream`,
//! with `scan` as its byte scanner) and `message` (an MQTT
//! message, format dispatch, line by line).
//!
//! Speed: JSON is deserialised straight into the flattened map with a reused
//! key buffer (no intermediate `serde_json::Value` except for `metadata`), and
//! text formats borrow from the input until a value is stored.

mod csv;
#[cfg(test)]
mod differential;
pub mod document;
mod influx;
mod json;
mod kv;
mod line;
mod linetime;
pub mod message;
mod nmea;
mod paths;
mod scalar;
mod scan;
mod skip;
mod stream;
#[cfg(test)]
mod test_support;
mod text;
pub mod time;

use std::fmt;

pub use crate::config::formats::{InfluxPrecision, LineFormat, PayloadFormat};
pub use line::{decode_line, LineDecoder};

use crate::reading::{
    parse_timestamp, timestamp_from_number, DecodedPoint, Metadata, Value, Values,
};
use influx::decode_influx;
use json::{check_depth, decode_json, Shape};
use scalar::decode_scalar;

pub const DEFAULT_MAX_PAYLOAD: usize = 256 * 1024;
pub const DEFAULT_MAX_DEPTH: usize = 32;
pub use crate::config::formats::DEFAULT_FIELD;

/// Keys that carry the device timestamp rather than a value.
pub const TIMESTAMP_KEYS: [&str; 3] = ["timestamp", "ts", "time"];

/// 9999-12-31T23:59:59.999Z: later device timestamps are bad input.
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Characters of bad input quoted in an error message.
const SNIPPET_CHARS: usize = 40;

/// Limits and choices applied by every decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// Larger payloads (or lines) are `too_large`, checked before anything else.
    pub max_payload: usize,
    /// Deepest allowed nesting of JSON objects/arrays (`{}` is depth 1).
    pub max_depth: usize,
    /// Name of the value of a `scalar` payload; `None` means `value`.
    pub scalar_field: Option<String>,
    /// Unit of line-protocol timestamps.
    pub influx_precision: InfluxPrecision,
    /// Reject points without a number (`no_numeric_value`). On by default;
    /// turn off for devices that only report states such as `door=open`.
    pub require_number: bool,
    /// Metadata fields the caller adds to each decoded point (a route's
    /// topic fields): room is made for them when the map is built, so
    /// that it is allocated once.
    pub metadata_room: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_depth: DEFAULT_MAX_DEPTH,
            scalar_field: Some(DEFAULT_FIELD.to_owned()),
            influx_precision: InfluxPrecision::Ns,
            require_number: true,
            metadata_room: 0,
        }
    }
}

impl DecodeOptions {
    fn scalar_field_name(&self) -> &str {
        self.scalar_field.as_deref().unwrap_or(DEFAULT_FIELD)
    }
}

/// One decoded point and what the payload said about its routing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    pub point: DecodedPoint,
    /// `dataSourceId` of a point-shaped payload, as sent (not validated:
    /// routing decides whether to honour it and checks its form).
    pub data_source_id: Option<String>,
}

impl From<DecodedPoint> for Decoded {
    fn from(point: DecodedPoint) -> Self {
        Decoded {
            point,
            data_source_id: None,
        }
    }
}

/// Why a payload or line was refused. [`reason`](DecodeError::reason) is
/// the stable label; the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("invalid utf-8 at byte {offset}: `{snippet}`")]
    InvalidUtf8 { offset: usize, snippet: String },
    #[error("control character at byte {offset}: `{snippet}`")]
    ControlCharacter { offset: usize, snippet: String },
    #[error("invalid json ({detail}): `{snippet}`")]
    InvalidJson { detail: String, snippet: String },
    #[error("nesting deeper than {max} levels: `{snippet}`")]
    TooDeep { max: usize, snippet: String },
    #[error("no numeric value in `{snippet}`")]
    NoNumericValue { snippet: String },
    #[error("non-finite number for `{field}`: `{value}`")]
    NonFinite { field: String, value: String },
    #[error("bad timestamp `{value}`: expected {expected}")]
    BadTimestamp {
        value: String,
        expected: &'static str,
    },
    #[error("invalid line protocol ({detail}): `{snippet}`")]
    InvalidLineProtocol {
        detail: &'static str,
        snippet: String,
    },
    #[error("invalid csv ({detail}): `{snippet}`")]
    InvalidCsv { detail: String, snippet: String },
    #[error("invalid key/value pairs ({detail}), e.g. `t=21.5 h=40`: `{snippet}`")]
    InvalidKv {
        detail: &'static str,
        snippet: String,
    },
    #[error("unsupported value ({detail}): `{near}`")]
    UnsupportedValue { detail: &'static str, near: String },
    #[error("invalid nmea sentence ({detail}): `{snippet}`")]
    InvalidNmea {
        detail: &'static str,
        snippet: String,
    },
    #[error("bad nmea checksum ({detail}): `{snippet}`")]
    BadChecksum { detail: String, snippet: String },
}

impl DecodeError {
    /// Stable snake_case label: a metric label value and the reason stored
    /// with a reject. Never change one; add new ones.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
            DecodeError::ControlCharacter { .. } => "control_character",
            DecodeError::InvalidJson { .. } => "invalid_json",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::NoNumericValue { .. } => "no_numeric_value",
            DecodeError::NonFinite { .. } => "non_finite",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
            DecodeError::InvalidLineProtocol { .. } => "invalid_line_protocol",
            DecodeError::InvalidCsv { .. } => "invalid_csv",
            DecodeError::InvalidKv { .. } => "invalid_kv",
            DecodeError::UnsupportedValue { .. } => "unsupported_value",
            DecodeError::InvalidNmea { .. } => "invalid_nmea",
            DecodeError::BadChecksum { .. } => "bad_checksum",
        }
    }

    /// Every reason [`reason`](DecodeError::reason) can return, e.g. to
    /// pre-register metric label values.
    pub const REASONS: [&'static str; 15] = [
        "empty",
        "too_large",
        "invalid_utf8",
        "control_character",
        "invalid_json",
        "too_deep",
        "no_numeric_value",
        "non_finite",
        "bad_timestamp",
        "invalid_line_protocol",
        "invalid_csv",
        "invalid_kv",
        "unsupported_value",
        "invalid_nmea",
        "bad_checksum",
    ];

    pub(crate) fn invalid_utf8(bytes: &[u8], offset: usize) -> DecodeError {
        let start = offset.saturating_sub(8);
        let end = (offset + 16).min(bytes.len());
        DecodeError::InvalidUtf8 {
            offset,
            snippet: snippet(&String::from_utf8_lossy(&bytes[start..end])),
        }
    }

    fn non_finite(field: &str, value: &str) -> DecodeError {
        DecodeError::NonFinite {
            field: snippet(field),
            value: snippet(value),
        }
    }

    fn bad_timestamp(value: &str) -> DecodeError {
        DecodeError::BadTimestamp {
            value: snippet(value),
            expected: "ISO-8601 like `2024-01-15T10:30:00Z` or Unix seconds/milliseconds",
        }
    }
}

/// A short, printable quote of bad input: at most [`SNIPPET_CHARS`]
/// characters, control characters escaped so logs stay one line.
fn snippet(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(SNIPPET_CHARS + 8));
    for (i, c) in s.chars().enumerate() {
        if i == SNIPPET_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`snippet`] starting a little before byte `offset`.
fn snippet_at(s: &str, offset: usize) -> String {
    let mut start = offset.min(s.len()).saturating_sub(10);
    while !s.is_char_boundary(start) {
        start -= 1;
    }
    snippet(&s[start..])
}

// ---------------------------------------------------------------------------
// Payloads

/// Decode one MQTT payload. Most formats yield one point; line protocol
/// yields one per line. On error nothing of the payload is kept.
pub fn decode_payload(
    payload: &[u8],
    format: PayloadFormat,
    opts: &DecodeOptions,
) -> Result<Vec<Decoded>, DecodeError> {
    let text = check_input(payload, opts)?;
    let trimmed = text.trim_ascii();
    match format {
        PayloadFormat::Json => Ok(vec![decode_json(trimmed, Shape::Json, opts)?]),
        PayloadFormat::Point => Ok(vec![decode_json(trimmed, Shape::Point, opts)?]),
        PayloadFormat::Scalar => Ok(vec![decode_scalar(trimmed, opts)?]),
        PayloadFormat::Influx => decode_influx(text, opts),
        PayloadFormat::Auto => match trimmed.as_bytes()[0] {
            b'{' => Ok(vec![decode_json(trimmed, Shape::Auto, opts)?]),
            b'[' => {
                // Limits first, so that the reason does not depend on shape.
                check_depth(trimmed, opts.max_depth)?;
                Err(DecodeError::UnsupportedValue {
                    detail: "a json array is not a reading; send one object per message",
                    near: snippet(trimmed),
                })
            }
            b'"' => Ok(vec![decode_scalar(trimmed, opts)?]),
            _ if is_scalar(trimmed) => Ok(vec![decode_scalar(trimmed, opts)?]),
            _ => decode_influx(text, opts),
        },
    }
}

/// The checks every input gets, in this order: size, emptiness, UTF-8.
fn check_input<'a>(bytes: &'a [u8], opts: &DecodeOptions) -> Result<&'a str, DecodeError> {
    if bytes.len() > opts.max_payload {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: opts.max_payload,
        });
    }
    if bytes.trim_ascii().is_empty() {
        return Err(DecodeError::Empty);
    }
    if all_ascii(bytes) {
        // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).map_err(|e| DecodeError::invalid_utf8(bytes, e.valid_up_to()))
}

/// Whether every byte is ASCII (nearly every payload): the bytes OR-ed
/// together 32 lanes at a time (which the compiler vectorises) and the
/// lanes folded once at the end; `from_utf8` reads such text about a byte
/// per cycle (7 % of an 882-byte TTN uplink's routing), and folding the
/// lanes of every 32-byte chunk cost as much again as the loads.
fn all_ascii(bytes: &[u8]) -> bool {
    let mut lanes = [0u8; 32];
    let mut chunks = bytes.chunks_exact(32);
    for c in &mut chunks {
        for (l, &b) in lanes.iter_mut().zip(c) {
            *l |= b;
        }
    }
    for (l, &b) in lanes.iter_mut().zip(chunks.remainder()) {
        *l |= b;
    }
    lanes.iter().fold(0u8, |a, &b| a | b) < 0x80
}

/// Would `s` decode as a scalar (a number, possibly non-finite, or a boolean)?
fn is_scalar(s: &str) -> bool {
    parse_bool(s).is_some() || !matches!(parse_number(s, ""), Ok(None))
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// A number as devices print it (`21.5`, `-3`, `1e3`, `+.5`): `Ok(None)` when
/// `s` is not a number at all, `non_finite` for NaN, infinities and numbers
/// beyond `f64` (`1e400`), so that they are rejected rather than read as text.
fn parse_number(s: &str, field: &str) -> Result<Option<f64>, DecodeError> {
    let Some(&first) = s.as_bytes().first() else {
        return Ok(None);
    };
    // Cheap pre-filter: most text cells start with a letter other than the
    // `i`/`n` of `inf`/`nan`, and need no float parse attempt.
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.' | b'i' | b'I' | b'n' | b'N'))
    {
        return Ok(None);
    }
    // Plain decimals (most values) without `parse`'s general path: the
    // same double (`scan::fast_float` declines what it cannot read
    // exactly).
    if let Some(f) = scan::fast_float(s) {
        return Ok(Some(f));
    }
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(Some(n)),
        Ok(_) => Err(DecodeError::non_finite(field, s)),
        Err(_) => Ok(None),
    }
}

/// A text value (CSV cell, key/value value) → `Value`: number, boolean or
/// text, in that order.
fn text_value(s: &str, field: &str) -> Result<Value, DecodeError> {
    if let Some(n) = parse_number(s, field)? {
        return Ok(Value::Number(n));
    }
    Ok(match parse_bool(s) {
        Some(b) => Value::Bool(b),
        None => Value::Text(s.to_owned()),
    })
}

fn is_timestamp_key(key: &str) -> bool {
    TIMESTAMP_KEYS.contains(&key)
}

/// A device timestamp from a number: Unix seconds or milliseconds.
fn timestamp_number(n: f64) -> Option<i64> {
    timestamp_from_number(n).filter(|ms| *ms <= MAX_TIMESTAMP_MS)
}

/// A device timestamp from text: ISO-8601, or Unix seconds/ms as digits.
fn timestamp_text(s: &str) -> Result<i64, DecodeError> {
    let s = s.trim();
    parse_timestamp(s)
        .filter(|ms| (0..=MAX_TIMESTAMP_MS).contains(ms))
        .or_else(|| s.parse::<f64>().ok().and_then(timestamp_number))
        .ok_or_else(|| DecodeError::bad_timestamp(s))
}

/// Enforce the "at least one number" rule on a finished point.
fn finish(decoded: Decoded, input: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    if opts.require_number
        && !decoded
            .point
            .values
            .values()
            .any(|v| matches!(v, Value::Number(_)))
    {
        return Err(DecodeError::NoNumericValue {
            snippet: snippet(input),
        });
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn auto_detection() {
        // values object → point
        let d = one(
            r#"{"values":{"t":1},"dataSourceId":"x"}"#,
            PayloadFormat::Auto,
        );
        assert_eq!(d.data_source_id.as_deref(), Some("x"));
        assert_eq!(d.point.values.keys().collect::<Vec<_>>(), ["t"]);
        // other object → json, including a non-object `values`
        let d = one(
            r#"{"values":3,"metadata":{"m":1},"dataSourceId":"x","ts":1705314600}"#,
            PayloadFormat::Auto,
        );
        assert_eq!(num(&d, "values"), 3.0);
        assert_eq!(num(&d, "metadata.m"), 1.0);
        assert_eq!(d.point.values["dataSourceId"], text("x"));
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(d.data_source_id, None);
        // bare scalars
        assert_eq!(num(&one(" 21.5\n", PayloadFormat::Auto), "value"), 21.5);
        assert_eq!(num(&one("-3", PayloadFormat::Auto), "value"), -3.0);
        assert_eq!(num(&one("1e3", PayloadFormat::Auto), "value"), 1000.0);
        // line protocol
        let d = one("weather,room=a t=21.5", PayloadFormat::Auto);
        assert_eq!(num(&d, "t"), 21.5);
        assert_eq!(d.point.metadata["room"], "a");
        // the rest
        assert_eq!(reason(b"true", PayloadFormat::Auto), "no_numeric_value");
        assert_eq!(reason(b"\"text\"", PayloadFormat::Auto), "no_numeric_value");
        assert_eq!(reason(b"[1,2]", PayloadFormat::Auto), "unsupported_value");
        assert_eq!(reason(b"NaN", PayloadFormat::Auto), "non_finite");
        assert_eq!(reason(b"-inf", PayloadFormat::Auto), "non_finite");
        assert_eq!(reason(b"{\"t\":", PayloadFormat::Auto), "invalid_json");
        assert_eq!(
            reason(b"hello world", PayloadFormat::Auto),
            "invalid_line_protocol"
        );
        assert_eq!(
            reason(b"null", PayloadFormat::Auto),
            "invalid_line_protocol"
        );
    }

    #[test]
    fn limits_checked_first() {
        let o = DecodeOptions {
            max_payload: 10 * 1024,
            ..opts()
        };
        let mut big = b"{\"t\":1,\"s\":\"".to_vec();
        big.resize(10 * 1024 - 2, b'x');
        big.extend_from_slice(b"\"}");
        assert_eq!(big.len(), 10 * 1024);
        assert!(
            decode_payload(&big, PayloadFormat::Json, &o).is_ok(),
            "exactly at the limit"
        );
        big.insert(5, b' ');
        let e = decode_payload(&big, PayloadFormat::Json, &o).unwrap_err();
        assert_eq!(
            e,
            DecodeError::TooLarge {
                len: 10 * 1024 + 1,
                max: 10 * 1024
            }
        );
        check_message(&e);
        // Size before anything else: even garbage is `too_large` first.
        let garbage = vec![0xffu8; DEFAULT_MAX_PAYLOAD + 1];
        assert_eq!(reason(&garbage, PayloadFormat::Auto), "too_large");
        // The default limit accepts a 256 KiB payload.
        let mut full = b"{\"t\":1,\"s\":\"".to_vec();
        full.resize(DEFAULT_MAX_PAYLOAD - 2, b'y');
        full.extend_from_slice(b"\"}");
        assert!(decode_payload(&full, PayloadFormat::Auto, &opts()).is_ok());
    }

    #[test]
    fn empty_payloads() {
        for p in [&b""[..], b" ", b"\r\n\t "] {
            for f in [
                PayloadFormat::Auto,
                PayloadFormat::Json,
                PayloadFormat::Influx,
                PayloadFormat::Scalar,
            ] {
                assert_eq!(reason(p, f), "empty");
            }
        }
        // Only comments: nothing to store either.
        assert_eq!(reason(b"# a comment\n\n", PayloadFormat::Influx), "empty");
    }

    #[test]
    fn invalid_utf8() {
        let e = decode_payload(
            b"{\"t\":1,\"s\":\"\xff\xfe\"}",
            PayloadFormat::Auto,
            &opts(),
        )
        .unwrap_err();
        assert_eq!(e.reason(), "invalid_utf8");
        assert!(e.to_string().contains("byte 12"), "{e}");
        check_message(&e);
        assert_eq!(reason(b"t=1 \xc3", PayloadFormat::Influx), "invalid_utf8");
    }

    /// Numbers of line protocol, CSV and key/value text read as `parse`
    /// reads them, whether the fast decimal path takes them or not
    /// (forms JSON refuses, `+1`, `.5`, `1.`, `01`, `inf`, included).
    #[test]
    fn text_numbers_as_parse_reads_them() {
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "75",
            "82.5",
            "-12.25",
            "1e5",
            "1E-5",
            "+1",
            ".5",
            "1.",
            "01",
            "007.50",
            "inf",
            "-inf",
            "nan",
            "NaN",
            "infinity",
            "1e400",
            "1e-400",
            "0.1",
            "9007199254740993",
            "123456789012345678901234",
            "4.9e-324",
            "1_0",
            "1,5",
            "",
            "-",
            "e5",
            "1e",
            "0x1",
        ]
        .map(String::from)
        .into();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            xorshift(&mut x);
            cases.push(format!(
                "{}{}.{}e{}",
                if x & 1 == 1 { "-" } else { "" },
                (x >> 3) % 1_000_000_000,
                (x >> 33) % 10_000,
                ((x >> 50) % 50) as i64 - 25
            ));
            cases.push(((x >> 11) % 100_000).to_string());
        }
        for t in &cases {
            let want = match t.parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(Some(n.to_bits())),
                Ok(_) => Err(()),
                Err(_) => Ok(None),
            };
            // The pre-filter's letters aside (`parse_number` reads text
            // starting with another letter as no number at all).
            if t.starts_with(|c: char| c.is_ascii_alphabetic() && !"iInN".contains(c)) {
                assert_eq!(parse_number(t, "f").unwrap(), None, "{t}");
                continue;
            }
            let got = parse_number(t, "f")
                .map(|n| n.map(f64::to_bits))
                .map_err(|_| ());
            assert_eq!(got, want, "{t}");
        }
    }

    /// The ASCII fast check says "ASCII" exactly when every byte is, at
    /// every position of a non-ASCII byte (in a 32-byte block or the
    /// rest); text that is not ASCII is still read, or refused at the
    /// same byte, by `from_utf8`.
    #[test]
    fn the_ascii_check_agrees_with_utf8_validation() {
        for len in [0, 1, 31, 32, 33, 64, 95, 100] {
            let plain = vec![b'a'; len];
            assert!(all_ascii(&plain), "{len}");
            for at in 0..len {
                let mut b = plain.clone();
                b[at] = 0x80;
                assert!(!all_ascii(&b), "{len} {at}");
                b[at] = 0x7f;
                assert!(all_ascii(&b), "{len} {at}");
            }
        }
        let o = opts();
        for text in [&b"{\"t\":1,\"s\":\"\xc3\xa9\"}"[..], b"{\"t\":1}"] {
            let want = std::str::from_utf8(text).unwrap();
            assert_eq!(check_input(text, &o).unwrap(), want);
        }
        let long = [&[b' '; 40][..], b"\xff"].concat();
        let e = check_input(&long, &o).unwrap_err();
        assert_eq!(e, DecodeError::invalid_utf8(&long, 40));
    }

    #[test]
    fn messages_quote_a_short_escaped_piece() {
        let long = format!("{{\"t\": {}oops}}", "1".repeat(10_000));
        let e = err(&long, PayloadFormat::Json);
        check_message(&e);
        let line = format!("m v={}", "x".repeat(10_000));
        let e = err(&line, PayloadFormat::Influx);
        check_message(&e);
        assert!(e.to_string().contains('…'), "{e}");
        let e = decode_line("t=1\u{0}\u{7}", &LineFormat::Kv {}, &opts(), TS).unwrap_err();
        check_message(&e);
        assert!(
            e.to_string().contains(r"\0"),
            "control characters are escaped: {e}"
        );
    }

    /// The exact wording people see in logs and in the rejects table.
    #[test]
    fn messages_read_well() {
        let kv = LineFormat::Kv {};
        for (e, want) in [
            (
                err(r#"{"temperature": 1e400}"#, PayloadFormat::Json),
                "non-finite number for `temperature`: `1e400`",
            ),
            (
                err(r#"{"t": -Infinity}"#, PayloadFormat::Json),
                "non-finite number for `t`: `Infinity`",
            ),
            (
                err(r#"{"t": 1,}"#, PayloadFormat::Json),
                "invalid json (trailing comma): `{\"t\": 1,}`",
            ),
            (
                err(r#"{"t": 1} inf"#, PayloadFormat::Json),
                "invalid json (trailing characters): `{\"t\": 1} inf`",
            ),
            (
                err("[1]", PayloadFormat::Json),
                "unsupported value (expected a json object): `[1]`",
            ),
            (
                err(r#"{"t":1,"ts":"x"}"#, PayloadFormat::Json),
                "bad timestamp `x`: expected ISO-8601 like `2024-01-15T10:30:00Z` \
                 or Unix seconds/milliseconds",
            ),
            (
                err("m v=1 x", PayloadFormat::Influx),
                "bad timestamp `x`: expected an integer of Unix nanoseconds",
            ),
            (
                decode_line("t", &kv, &opts(), TS).unwrap_err(),
                "invalid key/value pairs (expected `=` or `:` after a key), e.g. `t=21.5 h=40`: `t`",
            ),
            (
                decode_line("t=1\u{0}", &kv, &opts(), TS).unwrap_err(),
                "control character at byte 3: `t=1\\0`",
            ),
        ] {
            assert_eq!(e.to_string(), want);
        }
    }

    /// Every reason is reachable, and each has one spelling.
    #[test]
    fn every_reason_is_produced() {
        let kv = LineFormat::Kv {};
        let nmea = LineFormat::Nmea {
            sentences: vec![crate::config::formats::NmeaSentence::Gga],
        };
        let errors = [
            err("", PayloadFormat::Auto),
            decode_payload(&[b' '; 300_000], PayloadFormat::Auto, &opts()).unwrap_err(),
            decode_payload(b"\xff", PayloadFormat::Auto, &opts()).unwrap_err(),
            decode_line("t=\u{0}", &kv, &opts(), TS).unwrap_err(),
            err("{", PayloadFormat::Auto),
            err(&"[".repeat(100), PayloadFormat::Auto),
            err("{\"on\":true}", PayloadFormat::Auto),
            err("{\"t\":NaN}", PayloadFormat::Auto),
            err("{\"t\":1,\"ts\":\"x\"}", PayloadFormat::Auto),
            err("m", PayloadFormat::Influx),
            decode_line("1", &csv(&["a", "b"]), &opts(), TS).unwrap_err(),
            decode_line("t", &kv, &opts(), TS).unwrap_err(),
            err("{\"t\":[1]}", PayloadFormat::Auto),
            decode_line("GPGGA,1*00", &nmea, &opts(), TS).unwrap_err(),
            decode_line("$GPGGA,1*00", &nmea, &opts(), TS).unwrap_err(),
        ];
        let mut seen: Vec<_> = errors.iter().map(|e| e.reason()).collect();
        seen.sort_unstable();
        seen.dedup();
        let mut all = DecodeError::REASONS.to_vec();
        all.sort_unstable();
        assert_eq!(seen, all);
        for r in all {
            assert!(
                r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{r}"
            );
        }
    }

    /// Random inputs built from the characters the parsers care about
    /// (and multi-byte ones, to catch slicing inside a character): no
    /// panic, and every accepted point keeps the invariants.
    #[test]
    fn random_inputs_never_panic_and_keep_invariants() {
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            "\"",
            "\\",
            ":",
            ",",
            "=",
            " ",
            "\t",
            ";",
            "1",
            ".5",
            "e9",
            "-",
            "NaN",
            "inf",
            "ts",
            "values",
            "metadata",
            "t",
            "é",
            "€",
            "\u{0}",
            "\r",
            "\n",
            "true",
            "#",
            "i",
            "u",
            "2024-01-15T10:30:00Z",
            "1705314600",
            "$GPGGA,",
            "*47",
            ",N,",
            "12:35:19",
            "°C",
            "m,a=b ",
            "\"x\"",
        ];
        let line_formats = [
            LineFormat::Json {},
            LineFormat::Kv {},
            LineFormat::Influx {},
            LineFormat::Number { field: "v".into() },
            LineFormat::Text {},
            LineFormat::Nmea {
                sentences: vec![
                    crate::config::formats::NmeaSentence::Gga,
                    crate::config::formats::NmeaSentence::Rmc,
                ],
            },
            csv(&["ts", "t", "s"]),
            LineFormat::Csv {
                columns: vec!["a".into(), "b".into()],
                skip_header: false,
                delimiter: '\t',
                time_column: None,
                time_format: Default::default(),
                time_zone: Default::default(),
            },
            LineFormat::Csv {
                columns: vec!["a".into()],
                skip_header: false,
                delimiter: '€', // unvalidated: must not panic either,
                time_column: None,
                time_format: Default::default(),
                time_zone: Default::default(),
            },
        ];
        let check = |r: Result<Vec<Decoded>, DecodeError>, input: &str| match r {
            Ok(points) => {
                // A blank line is skipped (`None`); a payload never is.
                assert!(
                    !points.is_empty() || input.trim_ascii().is_empty(),
                    "{input:?}"
                );
                for d in points {
                    assert!(
                        d.point
                            .values
                            .values()
                            .any(|v| matches!(v, Value::Number(_))),
                        "{input:?}"
                    );
                    for v in d.point.values.values() {
                        if let Value::Number(n) = v {
                            assert!(n.is_finite(), "{input:?}");
                        }
                    }
                }
            }
            Err(e) => check_message(&e),
        };
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let n = (next() % 24) as usize;
            let input: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            for format in [
                PayloadFormat::Auto,
                PayloadFormat::Json,
                PayloadFormat::Point,
                PayloadFormat::Scalar,
                PayloadFormat::Influx,
            ] {
                check(decode_payload(input.as_bytes(), format, &opts()), &input);
            }
            for format in &line_formats {
                let r = decode_line(&input, format, &opts(), TS);
                check(r.map(|d| d.into_iter().collect()), &input);
            }
        }
    }
}
