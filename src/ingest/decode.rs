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
//! Serial lines ([`LineFormat`], [`LineDecoder`]): JSON (either object shape),
//! CSV with configured columns, key/value pairs, a bare number, or line
//! protocol. Specific to lines:
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
//! Speed: JSON is deserialised straight into the flattened map with a reused
//! key buffer (no intermediate `serde_json::Value` except for `metadata`), and
//! text formats borrow from the input until a value is stored.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

pub use crate::config::formats::{InfluxPrecision, LineFormat, PayloadFormat};
use crate::reading::{
    parse_timestamp, timestamp_from_number, DecodedPoint, Metadata, Value, Values,
};

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
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_depth: DEFAULT_MAX_DEPTH,
            scalar_field: Some(DEFAULT_FIELD.to_owned()),
            influx_precision: InfluxPrecision::Ns,
            require_number: true,
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
        }
    }

    /// Every reason [`reason`](DecodeError::reason) can return, e.g. to
    /// pre-register metric label values.
    pub const REASONS: [&'static str; 13] = [
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
    std::str::from_utf8(bytes).map_err(|e| DecodeError::invalid_utf8(bytes, e.valid_up_to()))
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

// ---------------------------------------------------------------------------
// Scalar

fn decode_scalar(text: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let field = opts.scalar_field_name();
    let value = if text.starts_with('"') {
        // A JSON string: unescape it properly.
        let s: String = serde_json::from_str(text).map_err(|e| json_syntax_error(e, text))?;
        Value::Text(s)
    } else {
        text_value(text, field)?
    };
    let mut point = DecodedPoint::default();
    point.values.insert(field.to_owned(), value);
    finish(point.into(), text, opts)
}

// ---------------------------------------------------------------------------
// JSON objects

/// Which object shape a JSON payload is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Json,
    Point,
    /// `Point` when there is a `values` object, `Json` otherwise.
    Auto,
}

/// Deepest `{`/`[` nesting, by a linear scan that honours strings, stopping
/// as soon as `max` is exceeded. Runs before the recursive parser so that a
/// hostile payload never reaches it.
fn check_depth(text: &str, max: usize) -> Result<(), DecodeError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(DecodeError::TooDeep {
                        max,
                        snippet: snippet_at(text, i),
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// State shared by the visitors of one JSON document.
struct JsonCtx {
    /// The flattened key of the value being read (`a.b.c`), reused for every
    /// key so that only stored keys allocate.
    key: String,
    /// The decode error behind a visitor's failure: serde can only carry a
    /// string, so the typed error waits here.
    fail: Option<DecodeError>,
}

impl JsonCtx {
    fn fail<E: de::Error>(&mut self, err: DecodeError) -> E {
        self.fail = Some(err);
        E::custom("decode error")
    }
}

/// What the top-level visitor collected, before the shape is decided.
#[derive(Default)]
struct TopParts {
    timestamp: Option<i64>,
    /// Values of the `json` shape (every other key, flattened).
    values: Values,
    /// Values of the `values` object (point shape).
    point_values: Values,
    values_is_object: bool,
    metadata: Option<serde_json::Value>,
    data_source_id: Option<serde_json::Value>,
}

fn decode_json(text: &str, shape: Shape, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    check_depth(text, opts.max_depth)?;
    if !text.starts_with('{') && serde_json::from_str::<IgnoredAny>(text).is_ok() {
        // Valid JSON of the wrong shape (`21.5`, `[…]`): say so, quoting it.
        return Err(DecodeError::UnsupportedValue {
            detail: "expected a json object",
            near: snippet(text),
        });
    }
    let mut ctx = JsonCtx {
        key: String::with_capacity(32),
        fail: None,
    };
    let mut parts = TopParts::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = TopSeed {
        ctx: &mut ctx,
        shape,
        parts: &mut parts,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Err(e) = parsed {
        return Err(match ctx.fail.take() {
            Some(fail) => fail,
            None => json_error(e, text, &ctx.key, opts.max_depth),
        });
    }

    let is_point = shape == Shape::Point || (shape == Shape::Auto && parts.values_is_object);
    let mut decoded = Decoded::default();
    decoded.point.timestamp_ms = parts.timestamp;
    if is_point {
        decoded.point.values = parts.point_values;
        decoded.point.metadata = match parts.metadata {
            None | Some(serde_json::Value::Null) => Metadata::new(),
            Some(serde_json::Value::Object(m)) => m,
            Some(other) => {
                return Err(DecodeError::UnsupportedValue {
                    detail: "`metadata` must be an object",
                    near: snippet(&other.to_string()),
                })
            }
        };
        decoded.data_source_id = match parts.data_source_id {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => {
                return Err(DecodeError::UnsupportedValue {
                    detail: "`dataSourceId` must be a string",
                    near: snippet(&other.to_string()),
                })
            }
        };
    } else {
        // A plain object that happens to have `metadata` or `dataSourceId`
        // keys: they are values like any other.
        let mut values = parts.values;
        let mut key = String::new();
        for (name, v) in [
            ("metadata", parts.metadata),
            ("dataSourceId", parts.data_source_id),
        ] {
            if let Some(v) = v {
                key.clear();
                key.push_str(name);
                flatten_value(&mut key, v, &mut values)?;
            }
        }
        decoded.point.values = values;
    }
    finish(decoded, text, opts)
}

/// Map a serde_json failure that no visitor explained to a reason.
fn json_error(e: serde_json::Error, text: &str, key: &str, max_depth: usize) -> DecodeError {
    let msg = e.to_string();
    // serde_json classifies these as syntax errors; they have reasons of
    // their own. (Covered by tests, in case serde_json rewords them.)
    if msg.starts_with("number out of range") {
        return DecodeError::non_finite(key, number_around(text, json_offset(text, &e)));
    }
    if msg.starts_with("recursion limit exceeded") {
        return DecodeError::TooDeep {
            max: max_depth.min(127),
            snippet: snippet_at(text, json_offset(text, &e)),
        };
    }
    // `NaN` and `Infinity` are what Python's json.dumps and several
    // Arduino libraries print for non-finite floats: name the real problem
    // where a value was expected (`-Infinity` fails as a number).
    if msg.starts_with("expected value") || msg.starts_with("invalid number") {
        let off = json_offset(text, &e);
        let start = text[..off].trim_end_matches(['-', '+']).len();
        let at = text[start..].trim_start_matches(['-', '+']);
        for token in ["NaN", "Infinity", "inf"] {
            if at.starts_with(token) {
                return DecodeError::non_finite(key, token);
            }
        }
    }
    json_syntax_error(e, text)
}

/// The number token around byte `off` (for `1e400`-style overflows).
fn number_around(text: &str, off: usize) -> &str {
    let numeric = |b: u8| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-');
    let b = text.as_bytes();
    let (mut start, mut end) = (off.min(b.len()), off.min(b.len()));
    while start > 0 && numeric(b[start - 1]) {
        start -= 1;
    }
    while end < b.len() && numeric(b[end]) {
        end += 1;
    }
    &text[start..end]
}

fn json_syntax_error(e: serde_json::Error, text: &str) -> DecodeError {
    let off = json_offset(text, &e);
    // serde_json appends " at line L column C"; the snippet says where.
    let msg = e.to_string();
    let detail = match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg,
    };
    DecodeError::InvalidJson {
        detail,
        snippet: snippet_at(text, off),
    }
}

/// Byte offset of a serde_json error (its line and column are 1-based; the
/// column counts bytes and points at the offending byte or just past it).
fn json_offset(text: &str, e: &serde_json::Error) -> usize {
    let mut line_start = 0;
    for _ in 1..e.line() {
        match text[line_start..].find('\n') {
            Some(i) => line_start += i + 1,
            None => break,
        }
    }
    let mut off = (line_start + e.column().saturating_sub(1)).min(text.len());
    while !text.is_char_boundary(off) {
        off -= 1;
    }
    off
}

/// Flatten an already parsed JSON value under `key` (only used for the rare
/// `metadata`/`dataSourceId` keys of a plain object). Depth is bounded by
/// [`check_depth`].
fn flatten_value(
    key: &mut String,
    v: serde_json::Value,
    out: &mut Values,
) -> Result<(), DecodeError> {
    use serde_json::Value as J;
    match v {
        J::Null => {}
        J::Bool(b) => {
            out.insert(key.clone(), Value::Bool(b));
        }
        J::Number(n) => {
            let n = n.as_f64().filter(|n| n.is_finite());
            let n = n.ok_or_else(|| DecodeError::non_finite(key, "?"))?;
            out.insert(key.clone(), Value::Number(n));
        }
        J::String(s) => {
            out.insert(key.clone(), Value::Text(s));
        }
        J::Array(_) => return Err(unsupported_array(key)),
        J::Object(map) => {
            let base = key.len();
            for (k, v) in map {
                key.push('.');
                key.push_str(&k);
                flatten_value(key, v, out)?;
                key.truncate(base);
            }
        }
    }
    Ok(())
}

fn unsupported_array(key: &str) -> DecodeError {
    DecodeError::UnsupportedValue {
        detail: "arrays are not supported; use an object or separate keys",
        near: snippet(key),
    }
}

/// Reads a map key, appending it to the key buffer (after a `.` when nested).
struct KeySeed<'a> {
    key: &'a mut String,
    dot: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.dot {
            self.key.push('.');
        }
        self.key.push_str(v);
        Ok(())
    }
}

/// Reads any JSON value into `out` under the key in `ctx.key`, flattening
/// objects.
struct FlattenSeed<'a> {
    ctx: &'a mut JsonCtx,
    out: &'a mut Values,
}

impl FlattenSeed<'_> {
    fn insert<E>(self, v: Value) -> Result<(), E> {
        self.out.insert(self.ctx.key.clone(), v);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for FlattenSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FlattenSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, boolean, string or object")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.insert(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.insert(Value::Number(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.insert(Value::Number(v as f64))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if !v.is_finite() {
            // serde_json never produces these; other callers might.
            let err = DecodeError::non_finite(&self.ctx.key, &v.to_string());
            return Err(self.ctx.fail(err));
        }
        self.insert(Value::Number(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.insert(Value::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.insert(Value::Text(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(()) // null: nothing measured, nothing lost
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        let err = unsupported_array(&self.ctx.key);
        Err(self.ctx.fail(err))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let base = self.ctx.key.len();
        while let Some(()) = map.next_key_seed(KeySeed {
            key: &mut self.ctx.key,
            dot: true,
        })? {
            map.next_value_seed(FlattenSeed {
                ctx: &mut *self.ctx,
                out: &mut *self.out,
            })?;
            self.ctx.key.truncate(base);
        }
        Ok(())
    }
}

/// Reads a device timestamp value (string, number or null).
struct TimestampSeed<'a> {
    ctx: &'a mut JsonCtx,
}

impl<'de> DeserializeSeed<'de> for TimestampSeed<'_> {
    type Value = Option<i64>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl TimestampSeed<'_> {
    fn number<E: de::Error>(self, n: f64) -> Result<Option<i64>, E> {
        match timestamp_number(n) {
            Some(ms) => Ok(Some(ms)),
            None => Err(self.ctx.fail(DecodeError::bad_timestamp(&n.to_string()))),
        }
    }

    fn other<E: de::Error>(self, what: &str) -> Result<Option<i64>, E> {
        Err(self.ctx.fail(DecodeError::bad_timestamp(what)))
    }
}

impl<'de> Visitor<'de> for TimestampSeed<'_> {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a timestamp")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<i64>, E> {
        self.number(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<i64>, E> {
        self.number(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<i64>, E> {
        self.number(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<i64>, E> {
        match timestamp_text(v) {
            Ok(ms) => Ok(Some(ms)),
            Err(err) => Err(self.ctx.fail(err)),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<i64>, E> {
        Ok(None) // null: the receive time will be used
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<i64>, E> {
        self.other(if v { "true" } else { "false" })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Option<i64>, A::Error> {
        self.other("[…]")
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Option<i64>, A::Error> {
        self.other("{…}")
    }
}

/// The `values` member of a point (or of an `auto` payload, where a
/// non-object `values` is just a value of the `json` shape).
struct ValuesSeed<'a> {
    ctx: &'a mut JsonCtx,
    parts: &'a mut TopParts,
    strict: bool,
}

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Forward a non-object `values` to the `json`-shape values (`auto`), or
/// fail (`point`, where `values` must be an object).
macro_rules! plain_or_fail {
    ($self:ident, $method:ident $(, $arg:ident)?) => {{
        if $self.strict {
            let err = DecodeError::UnsupportedValue {
                detail: "`values` must be an object",
                near: "values".to_owned(),
            };
            return Err($self.ctx.fail(err));
        }
        FlattenSeed {
            ctx: $self.ctx,
            out: &mut $self.parts.values,
        }
        .$method($($arg)?)
    }};
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.parts.values_is_object = true;
        self.ctx.key.clear();
        while let Some(()) = map.next_key_seed(KeySeed {
            key: &mut self.ctx.key,
            dot: false,
        })? {
            map.next_value_seed(FlattenSeed {
                ctx: &mut *self.ctx,
                out: &mut self.parts.point_values,
            })?;
            self.ctx.key.clear();
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        plain_or_fail!(self, visit_bool, v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        plain_or_fail!(self, visit_i64, v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        plain_or_fail!(self, visit_u64, v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        plain_or_fail!(self, visit_f64, v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        plain_or_fail!(self, visit_str, v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        plain_or_fail!(self, visit_unit)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        plain_or_fail!(self, visit_seq, seq)
    }
}

/// The top-level object: sorts keys into timestamp, point members and
/// plain values.
struct TopSeed<'a> {
    ctx: &'a mut JsonCtx,
    shape: Shape,
    parts: &'a mut TopParts,
}

/// What a top-level key is, given the shape.
#[derive(Clone, Copy)]
enum TopKey {
    Timestamp,
    Values,
    Metadata,
    DataSourceId,
    Ignored,
    Plain,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl TopSeed<'_> {
    fn not_object<E: de::Error>(self, what: &str) -> Result<(), E> {
        let err = DecodeError::UnsupportedValue {
            detail: "expected a json object",
            near: snippet(what),
        };
        Err(self.ctx.fail(err))
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a json object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let structured = self.shape != Shape::Json;
        self.ctx.key.clear();
        while let Some(()) = map.next_key_seed(KeySeed {
            key: &mut self.ctx.key,
            dot: false,
        })? {
            let kind = match self.ctx.key.as_str() {
                k if is_timestamp_key(k) => TopKey::Timestamp,
                "values" if structured => TopKey::Values,
                "metadata" if structured => TopKey::Metadata,
                "dataSourceId" if structured => TopKey::DataSourceId,
                _ if self.shape == Shape::Point => TopKey::Ignored,
                _ => TopKey::Plain,
            };
            match kind {
                TopKey::Timestamp => {
                    self.parts.timestamp = map.next_value_seed(TimestampSeed {
                        ctx: &mut *self.ctx,
                    })?;
                }
                TopKey::Values => map.next_value_seed(ValuesSeed {
                    ctx: &mut *self.ctx,
                    parts: &mut *self.parts,
                    strict: self.shape == Shape::Point,
                })?,
                TopKey::Metadata => self.parts.metadata = Some(map.next_value()?),
                TopKey::DataSourceId => self.parts.data_source_id = Some(map.next_value()?),
                TopKey::Ignored => {
                    map.next_value::<IgnoredAny>()?;
                }
                TopKey::Plain => map.next_value_seed(FlattenSeed {
                    ctx: &mut *self.ctx,
                    out: &mut self.parts.values,
                })?,
            }
            self.ctx.key.clear();
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.not_object(if v { "true" } else { "false" })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.not_object(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.not_object(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.not_object(&v.to_string())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.not_object(v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_object("null")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.not_object("[…]")
    }
}

// ---------------------------------------------------------------------------
// InfluxDB line protocol

/// Every non-blank line not starting with `#` is one point. Line ends are
/// `\n` or `\r\n`; string fields therefore cannot contain newlines.
fn decode_influx(text: &str, opts: &DecodeOptions) -> Result<Vec<Decoded>, DecodeError> {
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
    fn escaped_until(&mut self, stops: &[u8]) -> Cow<'a, str> {
        let b = self.s.as_bytes();
        let start = self.i;
        let mut has_escape = false;
        while self.i < b.len() && !stops.contains(&b[self.i]) {
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

fn influx_line(line: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let mut cur = LineCursor { s: line, i: 0 };
    let mut point = DecodedPoint::default();

    let measurement = cur.escaped_until(b", ");
    if measurement.is_empty() {
        return Err(cur.err("missing measurement"));
    }
    while cur.peek() == Some(b',') {
        cur.i += 1;
        let key = cur.escaped_until(b"=, ");
        if cur.peek() != Some(b'=') {
            return Err(cur.err("tag without `=`"));
        }
        cur.i += 1;
        let value = cur.escaped_until(b", ");
        if key.is_empty() || value.is_empty() {
            return Err(cur.err("empty tag key or value"));
        }
        point.metadata.insert(
            key.into_owned(),
            serde_json::Value::String(value.into_owned()),
        );
    }
    // The measurement wins over a tag of the same name: it is documented
    // to be there.
    point.metadata.insert(
        "measurement".to_owned(),
        serde_json::Value::String(measurement.into_owned()),
    );

    if !cur.skip_spaces() || cur.peek().is_none() {
        return Err(cur.err("missing fields"));
    }
    loop {
        let key = cur.escaped_until(b"=, ");
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
        point.values.insert(key.into_owned(), value);
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
    let n: i64 = ts.parse().map_err(|_| bad())?;
    let ms = match precision {
        InfluxPrecision::Ns => Some(n.div_euclid(1_000_000)),
        InfluxPrecision::Us => Some(n.div_euclid(1_000)),
        InfluxPrecision::Ms => Some(n),
        InfluxPrecision::S => n.checked_mul(1000),
    };
    ms.filter(|ms| (0..=MAX_TIMESTAMP_MS).contains(ms))
        .ok_or_else(bad)
}

// ---------------------------------------------------------------------------
// Serial lines

/// Decodes the lines of one serial port. It only keeps the `skip_header`
/// state; call [`reset`](LineDecoder::reset) whenever the framer is reset.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    format: LineFormat,
    opts: DecodeOptions,
    /// The next non-blank line is the first since (re)connecting.
    first_line: bool,
}

impl LineDecoder {
    pub fn new(format: LineFormat, opts: DecodeOptions) -> Self {
        LineDecoder {
            format,
            opts,
            first_line: true,
        }
    }

    pub fn format(&self) -> &LineFormat {
        &self.format
    }

    /// The device was re-plugged: the next line is a first line again.
    pub fn reset(&mut self) {
        self.first_line = true;
    }

    /// The framer discarded an overlong line: it is a line like any other,
    /// so it can be the first one. Returns `true` when it was the header
    /// `skip_header` skips (nothing to report, as for a first line that is
    /// too long in [`decode_bytes`](LineDecoder::decode_bytes)).
    pub fn overlong(&mut self) -> bool {
        std::mem::take(&mut self.first_line)
            && matches!(
                self.format,
                LineFormat::Csv {
                    skip_header: true,
                    ..
                }
            )
    }

    /// A framed line as bytes. A blank line, and with `skip_header` the
    /// first non-blank line whatever it holds (too long, not UTF-8: often
    /// the noise of a connect), are skipped before anything else; then the
    /// size and UTF-8 (`invalid_utf8`) are checked.
    pub fn decode_bytes(&mut self, line: &[u8]) -> Result<Option<Decoded>, DecodeError> {
        if line.trim_ascii().is_empty() {
            return Ok(None);
        }
        if std::mem::take(&mut self.first_line) {
            if let LineFormat::Csv {
                skip_header: true, ..
            } = self.format
            {
                return Ok(None);
            }
        }
        if line.len() > self.opts.max_payload {
            return Err(DecodeError::TooLarge {
                len: line.len(),
                max: self.opts.max_payload,
            });
        }
        let text = std::str::from_utf8(line)
            .map_err(|e| DecodeError::invalid_utf8(line, e.valid_up_to()))?;
        decode_line(text, &self.format, &self.opts)
    }

    /// `Ok(None)`: a line that carries no reading and is not an error (a
    /// blank line, a header). The same rules as
    /// [`decode_bytes`](LineDecoder::decode_bytes).
    pub fn decode(&mut self, line: &str) -> Result<Option<Decoded>, DecodeError> {
        self.decode_bytes(line.as_bytes())
    }
}

/// Decode one serial line (without the `skip_header` first-line rule, which
/// needs [`LineDecoder`]'s state). `Ok(None)` for blank lines and CSV header
/// lines.
pub fn decode_line(
    line: &str,
    format: &LineFormat,
    opts: &DecodeOptions,
) -> Result<Option<Decoded>, DecodeError> {
    if line.len() > opts.max_payload {
        return Err(DecodeError::TooLarge {
            len: line.len(),
            max: opts.max_payload,
        });
    }
    if line.trim_ascii().is_empty() {
        return Ok(None);
    }
    let line = match format {
        // Tabs are cells there: trailing empty cells must survive.
        LineFormat::Csv {
            delimiter: '\t', ..
        } => line.trim_matches([' ', '\r', '\n']),
        _ => line.trim_ascii(),
    };
    // Noise from a wrong baud rate is often valid UTF-8 full of control
    // bytes; no format uses them (tabs aside), so refuse them all alike.
    if let Some(offset) = line
        .bytes()
        .position(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(DecodeError::ControlCharacter {
            offset,
            snippet: snippet(line),
        });
    }
    match format {
        LineFormat::Json {} => {
            if !line.starts_with('{') {
                return Err(DecodeError::UnsupportedValue {
                    detail: "a json line must be an object",
                    near: snippet(line),
                });
            }
            decode_json(line, Shape::Auto, opts).map(Some)
        }
        LineFormat::Csv {
            columns, delimiter, ..
        } => {
            // `validate` refuses other delimiters; never split inside a
            // multi-byte character if it was skipped.
            let Some(delimiter) = u8::try_from(*delimiter).ok().filter(u8::is_ascii) else {
                return Err(DecodeError::InvalidCsv {
                    detail: "the configured delimiter is not an ascii character".to_owned(),
                    snippet: snippet(line),
                });
            };
            decode_csv(line, columns, delimiter, opts)
        }
        LineFormat::Kv {} => decode_kv(line, opts).map(Some),
        LineFormat::Number { field } => {
            let n = parse_number(line, field)?.ok_or_else(|| DecodeError::NoNumericValue {
                snippet: snippet(line),
            })?;
            let mut point = DecodedPoint::default();
            point.values.insert(field.clone(), Value::Number(n));
            Ok(Some(point.into()))
        }
        LineFormat::Influx {} => influx_line(line, opts).map(Some),
    }
}

/// The cells of one CSV line, borrowed unless a quoted cell holds `""`.
/// Cells are trimmed; a quoted cell keeps its inner spaces.
struct CsvCells<'a> {
    line: &'a str,
    pos: usize,
    delimiter: u8,
    done: bool,
}

impl<'a> CsvCells<'a> {
    fn new(line: &'a str, delimiter: u8) -> Self {
        CsvCells {
            line,
            pos: 0,
            delimiter,
            done: false,
        }
    }

    fn error(&self, detail: &str) -> DecodeError {
        DecodeError::InvalidCsv {
            detail: detail.to_owned(),
            snippet: snippet(self.line),
        }
    }
}

impl<'a> Iterator for CsvCells<'a> {
    type Item = Result<Cow<'a, str>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let b = self.line.as_bytes();
        let is_space = |c: u8| c == b' ' || (c == b'\t' && self.delimiter != b'\t');
        let mut i = self.pos;
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let cell = if b.get(i) == Some(&b'"') {
            // Quoted: `""` is a quote, the delimiter is literal.
            let mut out = Cow::Borrowed("");
            let mut run = i + 1;
            let mut j = i + 1;
            loop {
                match b.get(j) {
                    None => {
                        self.done = true;
                        return Some(Err(self.error("unterminated quoted cell")));
                    }
                    Some(b'"') if b.get(j + 1) == Some(&b'"') => {
                        out.to_mut().push_str(&self.line[run..=j]);
                        run = j + 2;
                        j += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => j += 1,
                }
            }
            if run == i + 1 {
                out = Cow::Borrowed(&self.line[run..j]);
            } else {
                out.to_mut().push_str(&self.line[run..j]);
            }
            i = j + 1;
            while i < b.len() && is_space(b[i]) {
                i += 1;
            }
            if i < b.len() && b[i] != self.delimiter {
                self.done = true;
                return Some(Err(self.error("text after a closing quote")));
            }
            out
        } else {
            let start = i;
            while i < b.len() && b[i] != self.delimiter {
                i += 1;
            }
            Cow::Borrowed(self.line[start..i].trim_ascii())
        };
        if i < b.len() {
            self.pos = i + 1; // past the delimiter
        } else {
            self.done = true;
        }
        Some(Ok(cell))
    }
}

fn decode_csv(
    line: &str,
    columns: &[String],
    delimiter: u8,
    opts: &DecodeOptions,
) -> Result<Option<Decoded>, DecodeError> {
    let count = CsvCells::new(line, delimiter).count();
    if count != columns.len() {
        // A partial line (the start of a line lost at connect time) must not
        // be read with its cells shifted into the wrong columns.
        return Err(DecodeError::InvalidCsv {
            detail: format!(
                "{count} {} for {} {}",
                if count == 1 { "cell" } else { "cells" },
                columns.len(),
                if columns.len() == 1 {
                    "column"
                } else {
                    "columns"
                },
            ),
            snippet: snippet(line),
        });
    }
    if is_header(line, columns, delimiter) {
        return Ok(None);
    }
    let mut point = DecodedPoint::default();
    for (cell, column) in CsvCells::new(line, delimiter).zip(columns) {
        let cell = cell?;
        if cell.is_empty() || column.is_empty() {
            continue;
        }
        if is_timestamp_key(column) {
            point.timestamp_ms = Some(timestamp_text(&cell)?);
            continue;
        }
        let value = text_value(&cell, column)?;
        point.values.insert(column.clone(), value);
    }
    finish(point.into(), line, opts).map(Some)
}

/// A line whose cells are the column names (ASCII case-insensitively;
/// ignored columns match anything): the device's header.
fn is_header(line: &str, columns: &[String], delimiter: u8) -> bool {
    CsvCells::new(line, delimiter)
        .zip(columns)
        .all(|(cell, column)| match cell {
            Ok(cell) => column.is_empty() || cell.eq_ignore_ascii_case(column),
            Err(_) => false,
        })
}

/// Separators between key/value pairs.
fn is_kv_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b',' | b';')
}

/// Does `rest` start with `key=` or `key:`?
fn starts_kv_pair(rest: &[u8]) -> bool {
    if !rest
        .first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        return false;
    }
    rest.iter()
        .find(|&&c| matches!(c, b'=' | b':') || is_kv_separator(c))
        .is_some_and(|c| matches!(c, b'=' | b':'))
}

/// `t=21.5 h=40`, `t:21.5,h:40`, `t = 21.5; h = 40`, `name="room a"`.
/// A quoted value is always text; an empty value is skipped.
fn decode_kv(line: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let b = line.as_bytes();
    let err = |detail| DecodeError::InvalidKv {
        detail,
        snippet: snippet(line),
    };
    let skip_blanks = |mut i: usize| {
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        i
    };
    let mut point = DecodedPoint::default();
    let mut i = 0;
    loop {
        while i < b.len() && is_kv_separator(b[i]) {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !matches!(b[i], b'=' | b':') && !is_kv_separator(b[i]) {
            i += 1;
        }
        let key = &line[start..i];
        i = skip_blanks(i);
        if !matches!(b.get(i), Some(b'=' | b':')) {
            return Err(err("expected `=` or `:` after a key"));
        }
        if key.is_empty() {
            return Err(err("empty key"));
        }
        i += 1;
        let after_blanks = skip_blanks(i);
        // `t: 21.5` has blanks before its value, but in `e= h=40` the
        // blank ends an empty value: a `key=`/`key:` token is the next pair
        // (keys start with a letter or `_`, so a timestamp value is not one).
        if after_blanks == i || !starts_kv_pair(&b[after_blanks..]) {
            i = after_blanks;
        }
        if b.get(i) == Some(&b'"') {
            let end = line[i + 1..]
                .find('"')
                .ok_or_else(|| err("unterminated quoted value"))?;
            let text = &line[i + 1..i + 1 + end];
            i += end + 2;
            if i < b.len() && !is_kv_separator(b[i]) {
                return Err(err("text after a closing quote"));
            }
            if is_timestamp_key(key) {
                point.timestamp_ms = Some(timestamp_text(text)?);
            } else {
                point
                    .values
                    .insert(key.to_owned(), Value::Text(text.to_owned()));
            }
            continue;
        }
        let start = i;
        while i < b.len() && !is_kv_separator(b[i]) {
            i += 1;
        }
        let value = &line[start..i];
        if value.is_empty() {
            continue;
        }
        if is_timestamp_key(key) {
            point.timestamp_ms = Some(timestamp_text(value)?);
        } else {
            point.values.insert(key.to_owned(), text_value(value, key)?);
        }
    }
    finish(point.into(), line, opts)
}

#[cfg(test)]
mod tests {
    /// Found by fuzzing (`fuzz/regressions/serial_line/`): with
    /// `skip_header`, a first line too long (or not UTF-8) was refused
    /// without counting as the first line, so the next line — a reading —
    /// was skipped silently as the header; and `decode` and `decode_bytes`
    /// disagreed on it.
    #[test]
    fn fuzz_skip_header_skips_a_first_line_that_is_too_long_or_not_utf8() {
        use super::{DecodeOptions, LineDecoder, LineFormat};
        let format = LineFormat::Csv {
            columns: vec!["t".into()],
            skip_header: true,
            delimiter: ',',
        };
        let opts = DecodeOptions {
            max_payload: 64,
            ..Default::default()
        };
        for first in [vec![b'X'; 94], b"\xff\xfe garbage".to_vec()] {
            let mut dec = LineDecoder::new(format.clone(), opts.clone());
            assert_eq!(dec.decode_bytes(&first), Ok(None));
            assert!(
                dec.decode_bytes(b"21.5").unwrap().is_some(),
                "reading skipped"
            );
            // Later lines get the checks.
            assert!(dec.decode_bytes(&first).is_err());
        }
        let mut by_text = LineDecoder::new(format.clone(), opts.clone());
        let mut by_bytes = LineDecoder::new(format, opts);
        let long = "X".repeat(94);
        assert_eq!(
            by_text.decode(&long),
            by_bytes.decode_bytes(long.as_bytes())
        );
    }

    /// Found by fuzzing (`fuzz/regressions/mqtt_payload/`): JSON numbers
    /// must be read to the nearest double (serde_json's default parser can
    /// be one ulp off: `-3e23` became `-2.9999999999999997e23`), like the
    /// other formats and like dakkio.
    #[test]
    fn fuzz_json_numbers_are_parsed_to_the_nearest_double() {
        use crate::reading::Value;
        for text in [
            "-3e23",
            "3.333333333333333e43",
            "1333333333333333333333333333333333333333333333333330",
        ] {
            let payload = format!("{{\"t\":{text}}}");
            let d = super::decode_payload(
                payload.as_bytes(),
                super::PayloadFormat::Json,
                &Default::default(),
            )
            .unwrap();
            let want: f64 = text.parse().unwrap();
            assert_eq!(d[0].point.values["t"], Value::Number(want), "{text}");
        }
    }

    use super::*;

    fn opts() -> DecodeOptions {
        DecodeOptions::default()
    }

    fn one(payload: &str, format: PayloadFormat) -> Decoded {
        let mut all = decode_payload(payload.as_bytes(), format, &opts())
            .unwrap_or_else(|e| panic!("{payload:?}: {e}"));
        assert_eq!(all.len(), 1, "{payload:?}");
        all.pop().unwrap()
    }

    fn reason(payload: &[u8], format: PayloadFormat) -> &'static str {
        match decode_payload(payload, format, &opts()) {
            Ok(d) => panic!("{:?} decoded: {d:?}", String::from_utf8_lossy(payload)),
            Err(e) => {
                check_message(&e);
                e.reason()
            }
        }
    }

    fn err(payload: &str, format: PayloadFormat) -> DecodeError {
        decode_payload(payload.as_bytes(), format, &opts()).unwrap_err()
    }

    /// House style for every error message: lowercase start, one line,
    /// short whatever the input.
    fn check_message(e: &DecodeError) {
        let msg = e.to_string();
        assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
        assert!(!msg.contains('\n'), "{msg:?}");
        assert!(msg.chars().count() < 400, "{msg}");
        assert!(DecodeError::REASONS.contains(&e.reason()));
    }

    fn num(d: &Decoded, k: &str) -> f64 {
        match d.point.values.get(k) {
            Some(Value::Number(n)) => *n,
            other => panic!("{k}: {other:?} in {:?}", d.point.values),
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    const TS: i64 = 1_705_314_600_000; // 2024-01-15T10:30:00Z

    #[test]
    fn json_object_flattened() {
        let d = one(
            r#"{"t": 21.5, "n": -3, "big": 18446744073709551615, "ok": true, "room": "a",
                "env": {"h": 40, "deep": {"x": 1e3}}, "gone": null, "ts": "2024-01-15T10:30:00Z"}"#,
            PayloadFormat::Json,
        );
        assert_eq!(num(&d, "t"), 21.5);
        assert_eq!(num(&d, "n"), -3.0);
        assert_eq!(num(&d, "big"), u64::MAX as f64);
        assert_eq!(num(&d, "env.h"), 40.0);
        assert_eq!(num(&d, "env.deep.x"), 1000.0);
        assert_eq!(d.point.values["ok"], Value::Bool(true));
        assert_eq!(d.point.values["room"], text("a"));
        assert!(!d.point.values.contains_key("gone"), "null is skipped");
        assert!(
            !d.point.values.contains_key("ts"),
            "timestamp is not a value"
        );
        assert_eq!(d.point.values.len(), 7);
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert!(d.point.metadata.is_empty());
        assert_eq!(d.data_source_id, None);
    }

    #[test]
    fn json_timestamp_keys_and_forms() {
        for (p, want) in [
            (
                r#"{"v":1,"timestamp":"2024-01-15T12:30:00+02:00"}"#,
                Some(TS),
            ),
            (r#"{"v":1,"ts":1705314600}"#, Some(TS)),
            (r#"{"v":1,"time":1705314600000}"#, Some(TS)),
            (r#"{"v":1,"ts":1705314600.25}"#, Some(TS + 250)),
            (r#"{"v":1,"ts":"1705314600"}"#, Some(TS)),
            (r#"{"v":1,"ts":null}"#, None),
            (r#"{"v":1}"#, None),
        ] {
            assert_eq!(one(p, PayloadFormat::Json).point.timestamp_ms, want, "{p}");
        }
        for p in [
            r#"{"v":1,"ts":"yesterday"}"#,
            r#"{"v":1,"ts":-5}"#,
            r#"{"v":1,"ts":true}"#,
            r#"{"v":1,"ts":[1]}"#,
            r#"{"v":1,"ts":{"s":1}}"#,
            r#"{"v":1,"time":"10000-01-01T00:00:00Z"}"#,
            r#"{"v":1,"ts":1e300}"#,
        ] {
            assert_eq!(
                reason(p.as_bytes(), PayloadFormat::Json),
                "bad_timestamp",
                "{p}"
            );
        }
        let e = err(r#"{"v":1,"ts":"yesterday"}"#, PayloadFormat::Json);
        assert!(e.to_string().contains("`yesterday`"), "{e}");
    }

    #[test]
    fn json_with_values_key_is_plain_in_json_format() {
        let d = one(
            r#"{"values":{"t":1},"metadata":{"m":"x"},"dataSourceId":"abc"}"#,
            PayloadFormat::Json,
        );
        assert_eq!(num(&d, "values.t"), 1.0);
        assert_eq!(d.point.values["metadata.m"], text("x"));
        assert_eq!(d.point.values["dataSourceId"], text("abc"));
        assert_eq!(d.data_source_id, None);
    }

    #[test]
    fn point_shape() {
        let p = r#"{"bucketId":"507f1f77bcf86cd799439011","dataSourceId":"507f1f77bcf86cd799439012",
                    "timestamp":"2024-01-15T10:30:00Z",
                    "values":{"temperature":22.5,"humidity":65,"room":{"n":3},"gone":null},
                    "metadata":{"deviceId":"ESP32-001","nested":{"a":[1,2]}}}"#;
        for format in [PayloadFormat::Point, PayloadFormat::Auto] {
            let d = one(p, format);
            assert_eq!(d.point.timestamp_ms, Some(TS));
            assert_eq!(num(&d, "temperature"), 22.5);
            assert_eq!(num(&d, "humidity"), 65.0);
            assert_eq!(num(&d, "room.n"), 3.0);
            assert_eq!(d.point.values.len(), 3);
            assert_eq!(d.point.metadata["deviceId"], "ESP32-001");
            // Metadata is free-form context: kept as sent, arrays included.
            assert_eq!(d.point.metadata["nested"]["a"][1], 2);
            assert_eq!(
                d.data_source_id.as_deref(),
                Some("507f1f77bcf86cd799439012")
            );
        }
        let d = one(
            r#"{"ts":1705314600,"values":{"t":1}}"#,
            PayloadFormat::Point,
        );
        assert_eq!(d.point.timestamp_ms, Some(TS));
        let d = one(
            r#"{"time":"2024-01-15T10:30:00Z","values":{"t":1},"metadata":null}"#,
            PayloadFormat::Point,
        );
        assert_eq!(d.point.timestamp_ms, Some(TS));
    }

    #[test]
    fn point_shape_errors() {
        for (p, want) in [
            (r#"{"values":5}"#, "unsupported_value"),
            (r#"{"values":{"t":1},"metadata":[1]}"#, "unsupported_value"),
            (
                r#"{"values":{"t":1},"dataSourceId":7}"#,
                "unsupported_value",
            ),
            (r#"{"values":{"t":[1,2]}}"#, "unsupported_value"),
            (r#"{"t":1}"#, "no_numeric_value"),
            (r#"{"values":{"on":true,"s":"x"}}"#, "no_numeric_value"),
            (r#"{"values":{"t":1},"timestamp":"nope"}"#, "bad_timestamp"),
            (r#"[{"values":{"t":1}}]"#, "unsupported_value"),
            (r#"21.5"#, "unsupported_value"),
        ] {
            assert_eq!(reason(p.as_bytes(), PayloadFormat::Point), want, "{p}");
        }
    }

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
    fn scalar() {
        assert_eq!(num(&one("21.5", PayloadFormat::Scalar), "value"), 21.5);
        let o = DecodeOptions {
            scalar_field: Some("temperature".into()),
            ..opts()
        };
        let d = decode_payload(b" -3 \r\n", PayloadFormat::Scalar, &o).unwrap();
        assert_eq!(d[0].point.values["temperature"], Value::Number(-3.0));
        let o = DecodeOptions {
            scalar_field: None,
            ..opts()
        };
        assert!(decode_payload(b"1", PayloadFormat::Scalar, &o).unwrap()[0]
            .point
            .values
            .contains_key("value"));
        // Booleans and text alone are not readings unless allowed.
        assert_eq!(reason(b"true", PayloadFormat::Scalar), "no_numeric_value");
        assert_eq!(reason(b"on", PayloadFormat::Scalar), "no_numeric_value");
        let lax = DecodeOptions {
            require_number: false,
            ..opts()
        };
        let d = decode_payload(b"TRUE", PayloadFormat::Scalar, &lax).unwrap();
        assert_eq!(d[0].point.values["value"], Value::Bool(true));
        let d = decode_payload(br#""open \"now\"""#, PayloadFormat::Scalar, &lax).unwrap();
        assert_eq!(d[0].point.values["value"], text("open \"now\""));
        let d = decode_payload(b"open", PayloadFormat::Scalar, &lax).unwrap();
        assert_eq!(d[0].point.values["value"], text("open"));
        for bad in ["NaN", "nan", "inf", "+Infinity", "1e400", "-1e999"] {
            assert_eq!(
                reason(bad.as_bytes(), PayloadFormat::Scalar),
                "non_finite",
                "{bad}"
            );
        }
        assert_eq!(
            reason(b"\"unterminated", PayloadFormat::Scalar),
            "invalid_json"
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

    #[test]
    fn invalid_json() {
        for p in [
            "{",
            r#"{"t":1,}"#,
            r#"{"t":1} trailing"#,
            r#"{'t':1}"#,
            r#"{"t":01}"#,
            "{\"t\":\"a\u{1}\"}",
        ] {
            assert_eq!(
                reason(p.as_bytes(), PayloadFormat::Json),
                "invalid_json",
                "{p}"
            );
        }
        let e = err(
            r#"{"temperature": 21.5, "humidity": oops}"#,
            PayloadFormat::Json,
        );
        let msg = e.to_string();
        assert!(msg.starts_with("invalid json (expected value): `"), "{msg}");
        assert!(
            msg.contains("oops"),
            "the snippet points at the error: {msg}"
        );
        assert!(!msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn non_finite_json() {
        // Python's json.dumps and some Arduino libraries print these.
        for p in [
            r#"{"t": NaN}"#,
            r#"{"t": Infinity}"#,
            r#"{"t": -Infinity}"#,
            r#"{"a":{"t": NaN}}"#,
            r#"{"t": 1e400}"#,
            r#"{"t": -1e400}"#,
            r#"{"values":{"t":1e999}}"#,
        ] {
            assert_eq!(
                reason(p.as_bytes(), PayloadFormat::Auto),
                "non_finite",
                "{p}"
            );
        }
        let e = err(r#"{"env":{"t": NaN}}"#, PayloadFormat::Json);
        assert_eq!(
            e,
            DecodeError::NonFinite {
                field: "env.t".into(),
                value: "NaN".into()
            }
        );
        let e = err(r#"{"t": 1e400}"#, PayloadFormat::Json);
        assert!(
            matches!(&e, DecodeError::NonFinite { field, .. } if field == "t"),
            "{e:?}"
        );
    }

    #[test]
    fn no_numeric_value_json() {
        for p in [
            r#"{}"#,
            r#"{"on":true}"#,
            r#"{"s":"21.5"}"#,
            r#"{"a":{},"b":null,"ts":1705314600}"#,
        ] {
            assert_eq!(
                reason(p.as_bytes(), PayloadFormat::Json),
                "no_numeric_value",
                "{p}"
            );
        }
        let lax = DecodeOptions {
            require_number: false,
            ..opts()
        };
        assert!(decode_payload(br#"{"on":true}"#, PayloadFormat::Json, &lax).is_ok());
    }

    #[test]
    fn arrays_rejected_with_their_key() {
        let e = err(r#"{"t":1,"a":{"list":[1,2]}}"#, PayloadFormat::Json);
        assert_eq!(e.reason(), "unsupported_value");
        assert!(e.to_string().contains("`a.list`"), "{e}");
        assert_eq!(
            reason(b"{\"t\":1,\"x\":[]}", PayloadFormat::Auto),
            "unsupported_value"
        );
        assert_eq!(reason(b"[1]", PayloadFormat::Json), "unsupported_value");
    }

    #[test]
    fn too_deep() {
        let nest = |depth: usize, open: &str, close: &str, inner: &str| {
            format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
        };
        // Depth 32 is allowed, 33 is not.
        let ok = format!("{{\"t\":1,\"x\":{}}}", nest(31, "{\"a\":", "}", "1"));
        assert!(decode_payload(ok.as_bytes(), PayloadFormat::Json, &opts()).is_ok());
        let deep = format!("{{\"t\":1,\"x\":{}}}", nest(32, "{\"a\":", "}", "1"));
        assert_eq!(reason(deep.as_bytes(), PayloadFormat::Json), "too_deep");
        // Depth 10 000, objects and arrays, every format that parses JSON:
        // an error, never a stack overflow.
        for p in [
            nest(10_000, "{\"a\":", "}", "1"),
            nest(10_000, "[", "]", "1"),
            format!("{{\"values\":{}}}", nest(10_000, "{\"a\":", "}", "1")),
            nest(10_000, "{\"a\":", "", ""), // unterminated as well
        ] {
            for f in [
                PayloadFormat::Auto,
                PayloadFormat::Json,
                PayloadFormat::Point,
            ] {
                assert_eq!(reason(p.as_bytes(), f), "too_deep");
            }
        }
        // Brackets inside strings do not count.
        let s = format!("{{\"t\":1,\"s\":\"{}\"}}", "{[".repeat(1000));
        assert!(decode_payload(s.as_bytes(), PayloadFormat::Json, &opts()).is_ok());
        let s = format!("{{\"t\":1,\"s\\\"{}\":2}}", "{".repeat(100));
        assert!(decode_payload(s.as_bytes(), PayloadFormat::Json, &opts()).is_ok());
        // Metadata depth counts too.
        let p = format!(
            "{{\"values\":{{\"t\":1}},\"metadata\":{}}}",
            nest(40, "{\"a\":", "}", "1")
        );
        assert_eq!(reason(p.as_bytes(), PayloadFormat::Point), "too_deep");
        // A max_depth above serde_json's own limit still ends in `too_deep`.
        let o = DecodeOptions {
            max_depth: 1000,
            ..opts()
        };
        let p = nest(500, "{\"a\":", "}", "1");
        assert_eq!(
            decode_payload(p.as_bytes(), PayloadFormat::Json, &o)
                .unwrap_err()
                .reason(),
            "too_deep"
        );
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
    fn messages_quote_a_short_escaped_piece() {
        let long = format!("{{\"t\": {}oops}}", "1".repeat(10_000));
        let e = err(&long, PayloadFormat::Json);
        check_message(&e);
        let line = format!("m v={}", "x".repeat(10_000));
        let e = err(&line, PayloadFormat::Influx);
        check_message(&e);
        assert!(e.to_string().contains('…'), "{e}");
        let e = decode_line("t=1\u{0}\u{7}", &LineFormat::Kv {}, &opts()).unwrap_err();
        check_message(&e);
        assert!(
            e.to_string().contains(r"\0"),
            "control characters are escaped: {e}"
        );
    }

    // -- serial lines ------------------------------------------------------

    fn csv(columns: &[&str]) -> LineFormat {
        LineFormat::Csv {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            skip_header: false,
            delimiter: ',',
        }
    }

    fn line(s: &str, format: &LineFormat) -> Decoded {
        decode_line(s, format, &opts())
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .unwrap_or_else(|| panic!("{s:?} skipped"))
    }

    fn line_reason(s: &str, format: &LineFormat) -> &'static str {
        match decode_line(s, format, &opts()) {
            Ok(d) => panic!("{s:?} decoded: {d:?}"),
            Err(e) => {
                check_message(&e);
                e.reason()
            }
        }
    }

    #[test]
    fn json_lines() {
        let d = line(r#"{"t":21.5,"sensor":"kitchen"}"#, &LineFormat::Json {});
        assert_eq!(num(&d, "t"), 21.5);
        assert_eq!(d.point.values["sensor"], text("kitchen"));
        let d = line(
            r#" {"dataSourceId":"x","values":{"t":1},"ts":1705314600} "#,
            &LineFormat::Json {},
        );
        assert_eq!(d.data_source_id.as_deref(), Some("x"));
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(
            line_reason("21.5", &LineFormat::Json {}),
            "unsupported_value"
        );
        assert_eq!(
            line_reason(r#"{"t":1"#, &LineFormat::Json {}),
            "invalid_json"
        );
        assert_eq!(
            line_reason(r#"{"t":NaN}"#, &LineFormat::Json {}),
            "non_finite"
        );
        assert_eq!(
            line_reason(r#"{"s":"x"}"#, &LineFormat::Json {}),
            "no_numeric_value"
        );
        let deep = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert_eq!(line_reason(&deep, &LineFormat::Json {}), "too_deep");
    }

    #[test]
    fn csv_lines() {
        let f = csv(&["ts", "temperature", "humidity", "sensor"]);
        let d = line("1705314600, 21.5 ,-3,kitchen", &f);
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(num(&d, "temperature"), 21.5);
        assert_eq!(num(&d, "humidity"), -3.0);
        assert_eq!(d.point.values["sensor"], text("kitchen"));
        // Empty cells are skipped; ISO timestamps; 1e3; quoted cells.
        let d = line("2024-01-15T10:30:00Z,1e3,,\"room \"\"a\"\", east\"", &f);
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(num(&d, "temperature"), 1000.0);
        assert!(!d.point.values.contains_key("humidity"));
        assert_eq!(d.point.values["sensor"], text("room \"a\", east"));
        let d = line(",20,,", &f);
        assert_eq!(d.point.timestamp_ms, None);
        // Booleans are booleans; a quoted number is a number.
        let d = line(r#","20","true","x""#, &f);
        assert_eq!(num(&d, "temperature"), 20.0);
        assert_eq!(d.point.values["humidity"], Value::Bool(true));
        // An ignored column.
        let d = line("junk,7", &csv(&["", "t"]));
        assert_eq!(d.point.values.len(), 1);
        assert_eq!(num(&d, "t"), 7.0);
        // Other delimiters.
        let semi = LineFormat::Csv {
            columns: vec!["t".into(), "h".into()],
            skip_header: false,
            delimiter: ';',
        };
        let d = line("21,5;40", &semi);
        assert_eq!(d.point.values["t"], text("21,5"));
        assert_eq!(num(&d, "h"), 40.0);
        let tab = LineFormat::Csv {
            columns: vec!["t".into(), "h".into()],
            skip_header: false,
            delimiter: '\t',
        };
        let d = line(
            "21.5\t\t",
            &LineFormat::Csv {
                columns: vec!["t".into(), "h".into(), "x".into()],
                skip_header: false,
                delimiter: '\t',
            },
        );
        assert_eq!(d.point.values.len(), 1);
        assert_eq!(num(&line(" 1 \t 2 ", &tab), "h"), 2.0);
    }

    #[test]
    fn csv_errors() {
        let f = csv(&["ts", "t", "h"]);
        for (s, want) in [
            ("1705314600,21.5", "invalid_csv"),
            ("1705314600,21.5,40,7", "invalid_csv"),
            (",\"21.5,40", "invalid_csv"),
            (",\"21.5\"x,40", "invalid_csv"),
            ("yesterday,21.5,40", "bad_timestamp"),
            (",NaN,40", "non_finite"),
            (",21.5,inf", "non_finite"),
            (",1e400,1", "non_finite"),
            (",ok,high", "no_numeric_value"),
            (",,", "no_numeric_value"),
            ("1705314600,\u{0}21,3", "control_character"),
        ] {
            assert_eq!(line_reason(s, &f), want, "{s}");
        }
        let e = decode_line("1,2", &f, &opts()).unwrap_err();
        assert!(e.to_string().contains("2 cells for 3 columns"), "{e}");
        let e = decode_line("1", &csv(&["a", "b"]), &opts()).unwrap_err();
        assert!(e.to_string().contains("1 cell for 2 columns"), "{e}");
    }

    #[test]
    fn csv_header_lines_are_skipped() {
        let f = csv(&["ts", "temperature", "humidity"]);
        let o = opts();
        assert_eq!(decode_line("ts,temperature,humidity", &f, &o), Ok(None));
        assert_eq!(
            decode_line(" TS , Temperature,\"humidity\"\r", &f, &o),
            Ok(None)
        );
        // A re-plugged device printing its header again mid-stream.
        let mut dec = LineDecoder::new(f.clone(), o.clone());
        let got: Vec<_> = [
            "ts,temperature,humidity",
            ",1,2",
            "ts,temperature,humidity",
            ",3,4",
        ]
        .iter()
        .map(|l| dec.decode(l).unwrap().map(|d| num(&d, "temperature")))
        .collect();
        assert_eq!(got, [None, Some(1.0), None, Some(3.0)]);
        // A header that differs from the column names is bad input, unless
        // `skip_header` drops the first line after each (re)connect.
        assert_eq!(line_reason("time,temp,hum", &f), "bad_timestamp");
        let f = LineFormat::Csv {
            columns: vec!["ts".into(), "t".into(), "h".into()],
            skip_header: true,
            delimiter: ',',
        };
        let mut dec = LineDecoder::new(f, o);
        assert_eq!(
            dec.decode("   "),
            Ok(None),
            "blank lines are not the first line"
        );
        assert_eq!(dec.decode("time,temp,hum"), Ok(None));
        assert_eq!(num(&dec.decode(",1,2").unwrap().unwrap(), "t"), 1.0);
        assert_eq!(
            dec.decode("time,temp,hum").unwrap_err().reason(),
            "bad_timestamp"
        );
        dec.reset();
        assert_eq!(dec.decode("time,temp,hum"), Ok(None));
        assert!(dec.decode(",5,6").unwrap().is_some());
    }

    #[test]
    fn kv_lines() {
        for s in [
            "t=21.5 h=40",
            "t:21.5,h:40",
            "t=21.5;h=40",
            "  t = 21.5 ; h = 40  ",
            "t: 21.5, h: 40",
            "t=21.5\th=40,,",
        ] {
            let d = line(s, &LineFormat::Kv {});
            assert_eq!(num(&d, "t"), 21.5, "{s}");
            assert_eq!(num(&d, "h"), 40.0, "{s}");
            assert_eq!(d.point.values.len(), 2, "{s}");
        }
        let d = line(
            r#"ts=2024-01-15T10:30:00Z sensor=kitchen name="room a, east" n=-3 big=1e3 on=true e= x=21.5C"#,
            &LineFormat::Kv {},
        );
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(d.point.values["sensor"], text("kitchen"));
        assert_eq!(d.point.values["name"], text("room a, east"));
        assert_eq!(num(&d, "n"), -3.0);
        assert_eq!(num(&d, "big"), 1000.0);
        assert_eq!(d.point.values["on"], Value::Bool(true));
        assert!(
            !d.point.values.contains_key("e"),
            "empty values are skipped"
        );
        assert_eq!(d.point.values["x"], text("21.5C"));
        // A quoted value is text even when it looks like a number.
        assert_eq!(
            line(r#"t=1 id="42""#, &LineFormat::Kv {}).point.values["id"],
            text("42")
        );
        assert_eq!(
            line("time:1705314600 t:1", &LineFormat::Kv {})
                .point
                .timestamp_ms,
            Some(TS)
        );
        // Blanks after `=`/`:` are allowed, but an empty value does not
        // swallow the next pair; a timestamp value is not a key.
        for s in ["e= h=40", "e: h:40", "Temperature: 21.5, Humidity: 40 e="] {
            let d = line(s, &LineFormat::Kv {});
            assert!(!d.point.values.contains_key("e"), "{s}");
            assert_eq!(
                d.point.values.len(),
                if s.starts_with('T') { 2 } else { 1 },
                "{s}"
            );
        }
        let d = line("ts: 2024-01-15T10:30:00Z t: 1", &LineFormat::Kv {});
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(num(&d, "t"), 1.0);
    }

    #[test]
    fn kv_errors() {
        for (s, want) in [
            ("hello world", "invalid_kv"),
            ("t=1 h", "invalid_kv"),
            ("=1", "invalid_kv"),
            (":1 t=2", "invalid_kv"),
            (r#"t=1 s="open"#, "invalid_kv"),
            (r#"t=1 s="a"b"#, "invalid_kv"),
            ("t=NaN", "non_finite"),
            ("t=1 h=-inf", "non_finite"),
            ("t=1e999", "non_finite"),
            ("s=on", "no_numeric_value"),
            ("ts=soon t=1", "bad_timestamp"),
            ("t=1\u{1b}[0m", "control_character"),
        ] {
            assert_eq!(line_reason(s, &LineFormat::Kv {}), want, "{s}");
        }
    }

    #[test]
    fn number_lines() {
        let f = LineFormat::Number {
            field: "temperature".into(),
        };
        for (s, n) in [
            ("21.5", 21.5),
            ("-3", -3.0),
            ("1e3", 1000.0),
            (" +.5 ", 0.5),
        ] {
            assert_eq!(num(&line(s, &f), "temperature"), n, "{s}");
        }
        for (s, want) in [
            ("NaN", "non_finite"),
            ("inf", "non_finite"),
            ("-infinity", "non_finite"),
            ("1e400", "non_finite"),
            ("21.5C", "no_numeric_value"),
            ("true", "no_numeric_value"),
            ("1 2", "no_numeric_value"),
            ("\u{0}", "control_character"),
        ] {
            assert_eq!(line_reason(s, &f), want, "{s}");
        }
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

    #[test]
    fn line_limits_and_bytes() {
        let o = DecodeOptions {
            max_payload: 8,
            ..opts()
        };
        let mut dec = LineDecoder::new(LineFormat::Kv {}, o.clone());
        assert!(dec.decode_bytes(b"t=123456").unwrap().is_some());
        assert_eq!(
            dec.decode_bytes(b"t=1234567").unwrap_err().reason(),
            "too_large"
        );
        assert_eq!(
            decode_line("t=1234567", &LineFormat::Kv {}, &o)
                .unwrap_err()
                .reason(),
            "too_large"
        );
        assert_eq!(
            dec.decode_bytes(b"t=\xff").unwrap_err().reason(),
            "invalid_utf8"
        );
        assert_eq!(dec.decode_bytes(b"").unwrap(), None);
        assert_eq!(dec.decode_bytes(b" \t ").unwrap(), None);
        assert_eq!(dec.format(), &LineFormat::Kv {});
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
                decode_line("t", &kv, &opts()).unwrap_err(),
                "invalid key/value pairs (expected `=` or `:` after a key), e.g. `t=21.5 h=40`: `t`",
            ),
            (
                decode_line("t=1\u{0}", &kv, &opts()).unwrap_err(),
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
        let errors = [
            err("", PayloadFormat::Auto),
            decode_payload(&[b' '; 300_000], PayloadFormat::Auto, &opts()).unwrap_err(),
            decode_payload(b"\xff", PayloadFormat::Auto, &opts()).unwrap_err(),
            decode_line("t=\u{0}", &kv, &opts()).unwrap_err(),
            err("{", PayloadFormat::Auto),
            err(&"[".repeat(100), PayloadFormat::Auto),
            err("{\"on\":true}", PayloadFormat::Auto),
            err("{\"t\":NaN}", PayloadFormat::Auto),
            err("{\"t\":1,\"ts\":\"x\"}", PayloadFormat::Auto),
            err("m", PayloadFormat::Influx),
            decode_line("1", &csv(&["a", "b"]), &opts()).unwrap_err(),
            decode_line("t", &kv, &opts()).unwrap_err(),
            err("{\"t\":[1]}", PayloadFormat::Auto),
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
            "m,a=b ",
            "\"x\"",
        ];
        let line_formats = [
            LineFormat::Json {},
            LineFormat::Kv {},
            LineFormat::Influx {},
            LineFormat::Number { field: "v".into() },
            csv(&["ts", "t", "s"]),
            LineFormat::Csv {
                columns: vec!["a".into(), "b".into()],
                skip_header: false,
                delimiter: '\t',
            },
            LineFormat::Csv {
                columns: vec!["a".into()],
                skip_header: false,
                delimiter: '€', // unvalidated: must not panic either
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
                let r = decode_line(&input, format, &opts());
                check(r.map(|d| d.into_iter().collect()), &input);
            }
        }
    }
}
