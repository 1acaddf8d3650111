//! JSON objects, as an MQTT payload (`json`, `point`) or a serial line:
//! flattening nested objects with `.`, dakkio's point shape, the depth
//! limit checked by a byte scan before parsing, and serde visitors that
//! fill the flattened map straight from the text.
//!
//! One grammar, one file: about 660 lines of decoder, then its tests (the
//! JSON shapes devices send are many, and each case is pinned here).

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::*;

/// Which object shape a JSON payload is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Json,
    Point,
    /// `Point` when there is a `values` object, `Json` otherwise.
    Auto,
}

/// Deepest `{`/`[` nesting, by a linear scan that honours strings, stopping
/// as soon as `max` is exceeded. Runs before the recursive parser so that a
/// hostile payload never reaches it.
pub(super) fn check_depth(text: &str, max: usize) -> Result<(), DecodeError> {
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

pub(super) fn decode_json(
    text: &str,
    shape: Shape,
    opts: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
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
            Some(serde_json::Value::Object(m)) => {
                m.into_iter().map(|(k, v)| (k.into(), v)).collect()
            }
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

/// [`json_error`] for a document parsed whole (no key at hand).
pub(super) fn json_error_for(
    e: serde_json::Error,
    text: &str,
    opts: &DecodeOptions,
) -> DecodeError {
    json_error(e, text, "", opts.max_depth)
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

pub(super) fn json_syntax_error(e: serde_json::Error, text: &str) -> DecodeError {
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
            out.insert(key.as_str().into(), Value::Bool(b));
        }
        J::Number(n) => {
            let n = n.as_f64().filter(|n| n.is_finite());
            let n = n.ok_or_else(|| DecodeError::non_finite(key, "?"))?;
            out.insert(key.as_str().into(), Value::Number(n));
        }
        J::String(s) => {
            out.insert(key.as_str().into(), Value::Text(s));
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
        self.out.insert(self.ctx.key.as_str().into(), v);
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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
}
