//! A route's payload read by its [`PayloadSpec`]: JSON documents by path
//! (values object, device time, metadata fields, ignores, renames, arrays,
//! states, text) and bare values as states. Pure; the receive time is
//! passed in for times of day.
//!
//! Rules (beyond those of `mod.rs`):
//! - every leaf below the values object is a value named by its dotted
//!   path from there (then renamed); `null` is skipped;
//! - booleans and state words (`ON`, `off`, `open`, … and the route's
//!   `states`, any case) are numbers 1/0; other text follows `text`
//!   (a text value, a metadata field, or dropped and counted);
//! - arrays are never a reason to refuse a payload: ignored and counted
//!   (`arrays = "ignore"`, the default) or flattened with an index
//!   (`arrays = "flatten"`: `by_minute.0`);
//! - the device time is read from the `time` path with `time_format` and
//!   `time_zone`; without a path, from a `timestamp`, `ts` or `time` key
//!   beside the values; a path that is absent means the receive time, one
//!   that is present but unreadable is `bad_timestamp`;
//! - a point with no number, state or kept text is `no_numeric_value`
//!   ("nothing usable").

use serde_json::Value as J;

pub use crate::config::payload::{Arrays, FieldPath, PayloadSpec, TextPolicy};

use super::json::{check_depth, json_error_for};
use super::time::TimeSpec;
use super::{parse_number, snippet, DecodeError, DecodeOptions, Decoded, Value};

/// What a document decode set aside without refusing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ignored {
    /// Arrays skipped (`arrays = "ignore"`).
    pub arrays: u32,
    /// Text values dropped (`text = "ignore"`).
    pub text: u32,
}

impl Ignored {
    pub fn add(&mut self, other: Ignored) {
        self.arrays += other.arrays;
        self.text += other.text;
    }
}

/// The element at a dotted path (numbers index arrays).
pub fn lookup<'a>(root: &'a J, path: &FieldPath) -> Option<&'a J> {
    lookup_in(root, &path.0)
}

/// [`lookup`] of a path's segments.
pub(super) fn lookup_in<'a>(root: &'a J, segs: &[String]) -> Option<&'a J> {
    let mut v = root;
    for seg in segs {
        v = match v {
            J::Object(m) => m.get(seg)?,
            J::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Decode a JSON document (an object or an array at the top), in one pass
/// that follows the spec's paths (`stream.rs`); the same result as
/// [`decode_root`] of the parsed tree.
pub fn decode_document(
    text: &str,
    spec: &PayloadSpec,
    opts: &DecodeOptions,
    received_ms: i64,
) -> Result<(Decoded, Ignored), DecodeError> {
    super::stream::decode_document(text, spec, opts, received_ms)
}

/// Parse a JSON document after the depth check.
pub fn parse(text: &str, opts: &DecodeOptions) -> Result<J, DecodeError> {
    check_depth(text, opts.max_depth)?;
    serde_json::from_str(text).map_err(|e| json_error_for(e, text, opts))
}

/// [`decode_document`] of an already parsed document (`text` is quoted in
/// errors).
pub fn decode_root(
    root: &J,
    text: &str,
    spec: &PayloadSpec,
    opts: &DecodeOptions,
    received_ms: i64,
) -> Result<(Decoded, Ignored), DecodeError> {
    let time_spec = TimeSpec {
        format: spec.time_format,
        zone: spec.time_zone,
    };
    let mut out = Decoded::default();
    let mut ignored = Ignored::default();

    // The device time.
    let mut time_key: Option<&str> = None;
    if let Some(t) = spec.time.as_ref().and_then(|path| lookup(root, path)) {
        out.point.timestamp_ms = read_time(t, &time_spec, received_ms)?;
    }

    let Some(values) = lookup(root, &spec.values) else {
        return Err(DecodeError::NoNumericValue {
            snippet: format!("nothing at `{}`", spec.values.dotted()),
        });
    };
    if spec.time.is_none() {
        if let J::Object(m) = values {
            for k in super::TIMESTAMP_KEYS {
                if let Some(t) = m.get(k) {
                    out.point.timestamp_ms = read_time(t, &time_spec, received_ms)?;
                    time_key = Some(k);
                }
            }
        }
    }

    // Paths that are not values although they sit below the values object.
    let skip_paths: Vec<&FieldPath> = spec
        .time
        .iter()
        .chain(spec.metadata_fields.iter().map(|(_, p)| p))
        .filter(|p| p.0.len() > spec.values.0.len() && p.0.starts_with(&spec.values.0))
        .collect();
    let skip_names: Vec<String> = skip_paths
        .iter()
        .map(|p| p.0[spec.values.0.len()..].join("."))
        .collect();

    let mut walker = Walker {
        spec,
        skip: &skip_names,
        time_key,
        out: &mut out,
        ignored: &mut ignored,
        key: String::with_capacity(32),
    };
    match values {
        J::Object(_) | J::Array(_) => walker.walk(values)?,
        leaf => {
            // A path straight to a single value: named by its last segment.
            walker.key = spec.values.0.last().cloned().unwrap_or_else(|| {
                opts.scalar_field
                    .clone()
                    .unwrap_or_else(|| super::DEFAULT_FIELD.to_owned())
            });
            walker.leaf(leaf)?;
        }
    }

    for (key, path) in &spec.metadata_fields {
        match lookup(root, path) {
            None | Some(J::Null) => {}
            Some(v) => {
                out.point.metadata.insert(key.into(), v.clone());
            }
        }
    }
    usable(out, ignored, text)
}

/// The "nothing usable" rule.
pub(super) fn usable(
    out: Decoded,
    ignored: Ignored,
    input: &str,
) -> Result<(Decoded, Ignored), DecodeError> {
    if out.point.values.is_empty() {
        return Err(DecodeError::NoNumericValue {
            snippet: snippet(input),
        });
    }
    Ok((out, ignored))
}

pub(super) fn read_time(
    t: &J,
    spec: &TimeSpec,
    received_ms: i64,
) -> Result<Option<i64>, DecodeError> {
    match t {
        J::Null => Ok(None),
        J::String(s) => spec.from_text(s, received_ms).map(Some),
        J::Number(n) => spec
            .from_number(n.as_f64().unwrap_or(f64::NAN), received_ms)
            .map(Some),
        other => Err(DecodeError::BadTimestamp {
            value: snippet(&other.to_string()),
            expected: "a string or a number",
        }),
    }
}

pub(super) struct Walker<'a> {
    pub(super) spec: &'a PayloadSpec,
    /// Value names that are the time or metadata paths.
    pub(super) skip: &'a [String],
    /// The default time key found beside the values.
    pub(super) time_key: Option<&'a str>,
    pub(super) out: &'a mut Decoded,
    pub(super) ignored: &'a mut Ignored,
    pub(super) key: String,
}

impl Walker<'_> {
    fn walk(&mut self, v: &J) -> Result<(), DecodeError> {
        let base = self.key.len();
        match v {
            J::Object(m) => {
                for (k, child) in m {
                    if base == 0 && self.time_key == Some(k.as_str()) {
                        continue;
                    }
                    if base > 0 {
                        self.key.push('.');
                    }
                    self.key.push_str(k);
                    self.child(child)?;
                    self.key.truncate(base);
                }
            }
            J::Array(a) => match self.spec.arrays {
                Arrays::Ignore => self.ignored.arrays += 1,
                Arrays::Flatten => {
                    for (i, child) in a.iter().enumerate() {
                        if base > 0 {
                            self.key.push('.');
                        }
                        self.key.push_str(&i.to_string());
                        self.child(child)?;
                        self.key.truncate(base);
                    }
                }
            },
            leaf => self.leaf(leaf)?,
        }
        Ok(())
    }

    pub(super) fn child(&mut self, v: &J) -> Result<(), DecodeError> {
        if self.spec.ignores(&self.key) || self.skip.contains(&self.key) {
            return Ok(());
        }
        match v {
            J::Object(_) => self.walk(v),
            J::Array(_) if self.spec.arrays == Arrays::Ignore => {
                self.ignored.arrays += 1;
                Ok(())
            }
            J::Array(_) => self.walk(v),
            leaf => self.leaf(leaf),
        }
    }

    /// The stored name of the current value (renamed or not).
    fn name(&self) -> &str {
        self.spec.rename.get(&self.key).unwrap_or(&self.key)
    }

    pub(super) fn leaf(&mut self, v: &J) -> Result<(), DecodeError> {
        let value = match v {
            J::Null => return Ok(()),
            J::Bool(b) => Value::Number(if *b { 1.0 } else { 0.0 }),
            J::Number(n) => match n.as_f64().filter(|f| f.is_finite()) {
                Some(f) => Value::Number(f),
                None => {
                    return Err(DecodeError::NonFinite {
                        field: snippet(&self.key),
                        value: snippet(&n.to_string()),
                    })
                }
            },
            J::String(s) => match self.spec.state(s) {
                Some(n) => Value::Number(n),
                None => match self.spec.text {
                    TextPolicy::Value => Value::Text(s.clone()),
                    TextPolicy::Metadata => {
                        let name = self.name().into();
                        self.out.point.metadata.insert(name, J::String(s.clone()));
                        return Ok(());
                    }
                    TextPolicy::Ignore => {
                        self.ignored.text += 1;
                        return Ok(());
                    }
                },
            },
            J::Array(_) | J::Object(_) => return self.walk(v),
        };
        let name = self.name().into();
        self.out.point.values.insert(name, value);
        Ok(())
    }
}

/// A bare payload (`21.5`, `ON`, `"text"`, `on`) as a state-aware scalar
/// named `field`.
pub fn decode_bare(
    text: &str,
    spec: &PayloadSpec,
    field: &str,
    opts: &DecodeOptions,
) -> Result<(Decoded, Ignored), DecodeError> {
    let t = text.trim();
    let owned;
    let word = if t.starts_with('"') {
        owned = serde_json::from_str::<String>(t).map_err(|e| json_error_for(e, t, opts))?;
        owned.as_str()
    } else {
        t
    };
    let mut out = Decoded::default();
    let mut ignored = Ignored::default();
    let value = if let Some(n) = parse_number(word, field)? {
        Some(Value::Number(n))
    } else if let Some(n) = spec.state(word) {
        Some(Value::Number(n))
    } else {
        match spec.text {
            TextPolicy::Value => Some(Value::Text(word.to_owned())),
            TextPolicy::Metadata => {
                out.point
                    .metadata
                    .insert(field.into(), J::String(word.to_owned()));
                None
            }
            TextPolicy::Ignore => {
                ignored.text += 1;
                None
            }
        }
    };
    if let Some(v) = value {
        let name = spec.rename.get(field).map_or(field, String::as_str);
        out.point.values.insert(name.into(), v);
    }
    usable(out, ignored, text)
}

/// Whether a trimmed payload is one bare word or value (no whitespace, no
/// `=`), which line protocol can never be.
pub fn is_bare(t: &str) -> bool {
    !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == '=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::timefmt::{TimeFormat, TimeZone};

    const RX: i64 = 1_705_314_600_000;

    fn spec() -> PayloadSpec {
        PayloadSpec::default()
    }

    fn doc(text: &str, s: &PayloadSpec) -> (Decoded, Ignored) {
        decode_document(text, s, &DecodeOptions::default(), 0).unwrap()
    }

    fn num(d: &Decoded, k: &str) -> f64 {
        match &d.point.values[k] {
            Value::Number(n) => *n,
            v => panic!("{k}: {v:?}"),
        }
    }

    #[test]
    fn states_booleans_and_text() {
        let (d, _) = doc(
            r#"{"occupancy":true,"contact":false,"state":"ON","action":"single","battery":97}"#,
            &spec(),
        );
        assert_eq!(num(&d, "occupancy"), 1.0);
        assert_eq!(num(&d, "contact"), 0.0);
        assert_eq!(num(&d, "state"), 1.0);
        assert_eq!(num(&d, "battery"), 97.0);
        assert_eq!(d.point.values["action"], Value::Text("single".into()));
        let mut s = spec();
        s.text = TextPolicy::Metadata;
        let (d, _) = doc(r#"{"action":"single","state":"OFF"}"#, &s);
        assert_eq!(d.point.metadata["action"], "single");
        assert_eq!(num(&d, "state"), 0.0);
        s.text = TextPolicy::Ignore;
        let e = decode_document(r#"{"action":"single"}"#, &s, &DecodeOptions::default(), 0)
            .unwrap_err();
        assert_eq!(e.reason(), "no_numeric_value");
    }

    #[test]
    fn arrays_are_ignored_and_counted_or_flattened() {
        let text = r#"{"apower":12.5,"aenergy":{"total":3.2,"by_minute":[1,2,3]},"tags":["a"]}"#;
        let (d, ig) = doc(text, &spec());
        assert_eq!(num(&d, "aenergy.total"), 3.2);
        assert_eq!(d.point.values.len(), 2);
        assert_eq!(ig.arrays, 2);
        let mut s = spec();
        s.arrays = Arrays::Flatten;
        let (d, ig) = doc(text, &s);
        assert_eq!(num(&d, "aenergy.by_minute.2"), 3.0);
        assert_eq!(d.point.values["tags.0"], Value::Text("a".into()));
        assert_eq!(ig.arrays, 0);
        // An array alone: nothing usable, a reject.
        let e = decode_document("[1,2]", &spec(), &DecodeOptions::default(), 0).unwrap_err();
        assert_eq!(e.reason(), "no_numeric_value");
    }

    #[test]
    fn paths_time_metadata_ignore_rename() {
        let mut s = spec();
        s.values = FieldPath::parse("uplink_message.decoded_payload").unwrap();
        s.time = Some(FieldPath::parse("received_at").unwrap());
        s.time_format = TimeFormat::Iso8601;
        s.metadata_fields = vec![
            (
                "rssi".into(),
                FieldPath::parse("uplink_message.rx_metadata.0.rssi").unwrap(),
            ),
            ("missing".into(), FieldPath::parse("nope.nope").unwrap()),
        ];
        s.ignore = vec!["raw".into()];
        s.rename = [("temp".to_owned(), "temperature".to_owned())].into();
        let text = r#"{"received_at":"2024-01-15T10:30:00.5Z","uplink_message":{
            "decoded_payload":{"temp":21.5,"raw":{"a":1},"ok":true},
            "rx_metadata":[{"rssi":-42}]}}"#;
        let (d, _) = doc(text, &s);
        assert_eq!(d.point.timestamp_ms, Some(RX + 500));
        assert_eq!(num(&d, "temperature"), 21.5);
        assert_eq!(num(&d, "ok"), 1.0);
        assert!(!d.point.values.contains_key("raw.a"));
        assert_eq!(d.point.metadata["rssi"], -42);
        assert!(!d.point.metadata.contains_key("missing"));
        // No values object: nothing usable.
        let e = decode_document(r#"{"x":1}"#, &s, &DecodeOptions::default(), 0).unwrap_err();
        assert_eq!(e.reason(), "no_numeric_value");
        assert!(
            e.to_string().contains("uplink_message.decoded_payload"),
            "{e}"
        );
        // A time present but unreadable refuses the payload.
        let e = decode_document(
            r#"{"received_at":"yesterday","uplink_message":{"decoded_payload":{"t":1}}}"#,
            &s,
            &DecodeOptions::default(),
            0,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "bad_timestamp");
    }

    #[test]
    fn time_inside_the_values_and_naive_local_time() {
        let mut s = spec();
        s.time = Some(FieldPath::parse("Time").unwrap());
        s.time_format = TimeFormat::Iso8601;
        s.time_zone = TimeZone::Fixed(3600);
        let (d, _) = doc(
            r#"{"Time":"2024-01-15T11:30:00","AM2301":{"Temperature":21.5,"Humidity":40}}"#,
            &s,
        );
        assert_eq!(d.point.timestamp_ms, Some(RX));
        assert_eq!(num(&d, "AM2301.Temperature"), 21.5);
        assert!(!d.point.values.contains_key("Time"));
        // Default keys still work, and are not values.
        let (d, _) = doc(r#"{"ts":1705314600,"t":1}"#, &spec());
        assert_eq!(d.point.timestamp_ms, Some(RX));
        assert_eq!(d.point.values.len(), 1);
        let mut s = spec();
        s.time = Some(FieldPath::parse("tst").unwrap());
        s.time_format = TimeFormat::UnixS;
        let (d, _) = doc(r#"{"tst":1705314600,"lat":52.1}"#, &s);
        assert_eq!(d.point.timestamp_ms, Some(RX));
    }

    #[test]
    fn bare_payloads() {
        let s = spec();
        let o = DecodeOptions::default();
        let one = |t: &str| decode_bare(t, &s, "state", &o).unwrap().0;
        assert_eq!(num(&one("on"), "state"), 1.0);
        assert_eq!(num(&one("OFF"), "state"), 0.0);
        assert_eq!(num(&one("21.5"), "state"), 21.5);
        assert_eq!(num(&one("\"ON\""), "state"), 1.0);
        assert_eq!(
            one("idle").point.values["state"],
            Value::Text("idle".into())
        );
        assert_eq!(
            decode_bare("NaN", &s, "v", &o).unwrap_err().reason(),
            "non_finite"
        );
        assert!(is_bare("on") && is_bare("21.5") && !is_bare("m v=1") && !is_bare(""));
    }
}
