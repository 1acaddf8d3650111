//! One MQTT message → points, by the route's format and [`PayloadSpec`].
//! Where `decode_payload` is all or nothing, a message here may be partly
//! good: each line of a line-protocol payload stands alone (good lines are
//! points, bad lines are rejected one by one, with their own text).
//!
//! Format dispatch:
//! - `point`: dakkio's point shape (as `decode_payload`);
//! - `json`: a document read by the spec (`document.rs`);
//! - `scalar`: a bare value or state word;
//! - `influx`: line protocol, line by line;
//! - `auto`: an object with a `values` object is a point (unless the route
//!   reads paths; told in the same single pass that reads a document,
//!   `stream::decode_auto_object`), other JSON objects and arrays are
//!   documents, a quoted
//!   string or one bare word/number (`on`, `21.5`) is a scalar, anything
//!   else is line protocol.

use super::document::{self, Ignored, PayloadSpec};
use super::influx::influx_line;
use super::json::{decode_json, Shape};
use super::stream::{self, Walked};
use super::{check_input, DecodeError, DecodeOptions, Decoded, PayloadFormat};

/// What one message decoded into.
#[derive(Debug, Default)]
pub struct MessageDecoded {
    pub points: Points,
    /// Lines refused on their own (the rest of the message is kept).
    pub bad_lines: Vec<(DecodeError, String)>,
    pub ignored: Ignored,
}

/// The points of one message: most messages have one, kept without a
/// `Vec` of its own; a slice either way.
#[derive(Debug)]
pub enum Points {
    One(Decoded),
    Many(Vec<Decoded>),
}

impl Default for Points {
    fn default() -> Self {
        Points::Many(Vec::new())
    }
}

impl Points {
    /// Add one point: the first needs no `Vec`, the second makes one.
    fn push(&mut self, d: Decoded) {
        match self {
            Points::Many(v) if v.is_empty() => *self = Points::One(d),
            Points::Many(v) => v.push(d),
            Points::One(_) => {
                let Points::One(first) = std::mem::take(self) else {
                    unreachable!("matched One")
                };
                let mut v = Vec::with_capacity(4);
                v.push(first);
                v.push(d);
                *self = Points::Many(v);
            }
        }
    }
}

impl std::ops::Deref for Points {
    type Target = [Decoded];

    fn deref(&self) -> &[Decoded] {
        match self {
            Points::One(d) => std::slice::from_ref(d),
            Points::Many(v) => v,
        }
    }
}

impl IntoIterator for Points {
    type Item = Decoded;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Decoded>, std::vec::IntoIter<Decoded>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Points::One(d) => Some(d).into_iter().chain(Vec::new()),
            Points::Many(v) => None.into_iter().chain(v),
        }
    }
}

/// Decode one message. `Err` refuses it whole (nothing in it was usable
/// or it failed a limit); `Ok` may still carry bad lines.
pub fn decode_message(
    payload: &[u8],
    format: PayloadFormat,
    spec: &PayloadSpec,
    field: &str,
    opts: &DecodeOptions,
    received_ms: i64,
) -> Result<MessageDecoded, DecodeError> {
    let text = check_input(payload, opts)?;
    let trimmed = text.trim_ascii();
    let single = |r: Result<(Decoded, Ignored), DecodeError>| {
        r.map(|(d, ignored)| MessageDecoded {
            points: Points::One(d),
            bad_lines: Vec::new(),
            ignored,
        })
    };
    match format {
        PayloadFormat::Point => Ok(MessageDecoded {
            points: Points::One(decode_json(trimmed, Shape::Point, opts)?),
            ..MessageDecoded::default()
        }),
        PayloadFormat::Json => single(document::decode_document(trimmed, spec, opts, received_ms)),
        PayloadFormat::Scalar => single(document::decode_bare(trimmed, spec, field, opts)),
        PayloadFormat::Influx => lines(text, opts),
        PayloadFormat::Auto => match trimmed.as_bytes()[0] {
            b'{' => match stream::decode_auto_object(trimmed, spec, opts, received_ms)? {
                Walked::Point => Ok(MessageDecoded {
                    points: Points::One(decode_json(trimmed, Shape::Point, opts)?),
                    ..MessageDecoded::default()
                }),
                Walked::Document(r) => single(r),
            },
            b'[' => single(document::decode_document(trimmed, spec, opts, received_ms)),
            b'"' => single(document::decode_bare(trimmed, spec, field, opts)),
            _ if document::is_bare(trimmed) => {
                single(document::decode_bare(trimmed, spec, field, opts))
            }
            _ => lines(text, opts),
        },
    }
}

/// Line protocol, each line on its own. A single bad line (the whole
/// message) is an `Err`, as before; with several lines the bad ones are
/// listed and the good ones kept.
fn lines(text: &str, opts: &DecodeOptions) -> Result<MessageDecoded, DecodeError> {
    let mut out = MessageDecoded::default();
    let mut n = 0;
    // Split at each `\n`, eight bytes at a time ([`newline`]); the trim
    // below takes a `\r` before it, as `lines` would.
    let mut rest = text;
    while !rest.is_empty() {
        let (line, next) = match newline(rest.as_bytes()) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = next;
        let t = line.trim_ascii();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        n += 1;
        // One line: what `decode_influx` gives for it, without its `Vec`.
        match influx_line(t, opts) {
            Ok(point) => out.points.push(point),
            Err(e) => out.bad_lines.push((e, t.to_owned())),
        }
    }
    match n {
        0 => Err(DecodeError::Empty),
        1 if out.points.is_empty() => Err(out.bad_lines.pop().expect("one bad line").0),
        _ => Ok(out),
    }
}

/// The index of the first `\n` in `b`, eight bytes at a time in a word
/// (a line is tens of bytes: `str::find` was a byte loop below 16 bytes
/// and a call per search, `position` a byte loop).
fn newline(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut i = 0;
    while let Some(word) = b.get(i..i + 8) {
        let v = u64::from_le_bytes(word.try_into().expect("8 bytes")) ^ (ONES * u64::from(b'\n'));
        // A high bit per zero byte (a `\n`); the lowest is exact.
        let hit = v.wrapping_sub(ONES) & !v & HIGH;
        if hit != 0 {
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..].iter().position(|&c| c == b'\n').map(|p| i + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(p: &str, f: PayloadFormat) -> Result<MessageDecoded, DecodeError> {
        decode_message(
            p.as_bytes(),
            f,
            &PayloadSpec::default(),
            "value",
            &DecodeOptions::default(),
            0,
        )
    }

    /// The word-at-a-time search finds the first newline wherever it
    /// sits (in a word, in the rest, after non-ASCII text, none at all).
    #[test]
    fn newline_finds_the_first() {
        let text = "é€abcdefghijklmnopqrstuvwxyz\r\u{1}\u{8a}";
        for len in 0..=text.len() {
            for at in 0..=len {
                let mut b = text.as_bytes()[..len].to_vec();
                assert_eq!(newline(&b), None, "{len}");
                if at < len {
                    b[at] = b'\n';
                    let want = b.iter().position(|&c| c == b'\n');
                    assert_eq!(newline(&b), want, "{len} {at}");
                    b[len - 1] = b'\n';
                    let want = b.iter().position(|&c| c == b'\n');
                    assert_eq!(newline(&b), want, "{len} {at}");
                }
            }
        }
    }

    #[test]
    fn one_bad_line_does_not_take_the_good_ones_with_it() {
        let p = "cpu,host=a usage=1.5 1705314600000000000\n\
                 mem,host=a used=2\n\
                 syslog,host=a message=\"only text\"\n\
                 disk,host=a free=3i\n\n# comment\n";
        let m = decode(p, PayloadFormat::Influx).unwrap();
        assert_eq!(m.points.len(), 3);
        assert_eq!(m.bad_lines.len(), 1);
        assert_eq!(m.bad_lines[0].0.reason(), "no_numeric_value");
        assert!(m.bad_lines[0].1.starts_with("syslog"));
        // Auto-detected line protocol too.
        let m = decode(p, PayloadFormat::Auto).unwrap();
        assert_eq!((m.points.len(), m.bad_lines.len()), (3, 1));
        // One line, bad: the message is refused as before.
        assert_eq!(
            decode("m", PayloadFormat::Influx).unwrap_err().reason(),
            "invalid_line_protocol"
        );
    }

    /// An `auto` route's object read in one pass gives what the parsed
    /// tree gave: the point shape when the root's last `values` is an
    /// object and the route reads no paths, else the document; errors
    /// in the same order.
    #[test]
    fn auto_objects_as_the_tree_read_them() {
        use super::super::document::FieldPath;
        let tree = |text: &str, spec: &PayloadSpec| -> Result<Vec<Decoded>, DecodeError> {
            let opts = DecodeOptions::default();
            let root = document::parse(text, &opts)?;
            if !spec.uses_paths() && root.get("values").is_some_and(|v| v.is_object()) {
                return Ok(vec![decode_json(text, Shape::Point, &opts)?]);
            }
            document::decode_root(&root, text, spec, &opts, 7).map(|(d, _)| vec![d])
        };
        let docs = [
            r#"{"values":{"t":1},"dataSourceId":"x","timestamp":1705314600}"#,
            // (A key repeated with an object then a leaf is the one case
            // the single pass reads differently: see `stream.rs`.)
            r#"{"values":{},"values":5,"a":1}"#,
            r#"{"values":[5],"values":{"t":2},"a":1}"#,
            r#"{"values":[1],"t":2}"#,
            r#"{"values":{}}"#,
            r#"{"values":{"t":"x"},"meta":{"values":{"a":1}}}"#,
            r#"{"a":{"values":{"t":1}},"b":2}"#,
            r#"{"values":{"t":1}} x"#,
            r#"{"values":{"t":"#,
            r#"{"t":1,"ts":"bad"}"#,
            r#"{"state":"ON","l":[1]}"#,
            r#"{"values":{"t":null}}"#,
        ];
        let specs = [
            PayloadSpec::default(),
            PayloadSpec {
                ignore: vec!["values".into()],
                ..PayloadSpec::default()
            },
            PayloadSpec {
                metadata_fields: vec![("m".into(), FieldPath::parse("a").unwrap())],
                ..PayloadSpec::default()
            },
            PayloadSpec {
                values: FieldPath::parse("values").unwrap(),
                ..PayloadSpec::default()
            },
        ];
        for (i, spec) in specs.iter().enumerate() {
            for text in docs {
                let one = decode_message(
                    text.as_bytes(),
                    PayloadFormat::Auto,
                    spec,
                    "value",
                    &DecodeOptions::default(),
                    7,
                )
                .map(|m| m.points.to_vec());
                assert_eq!(
                    format!("{one:?}"),
                    format!("{:?}", tree(text, spec)),
                    "spec {i}, {text}"
                );
            }
        }
    }

    #[test]
    fn auto_dispatch() {
        let m = decode("on", PayloadFormat::Auto).unwrap();
        assert_eq!(
            m.points[0].point.values["value"],
            crate::reading::Value::Number(1.0)
        );
        let m = decode(
            r#"{"values":{"t":1},"dataSourceId":"x"}"#,
            PayloadFormat::Auto,
        )
        .unwrap();
        assert_eq!(m.points[0].data_source_id.as_deref(), Some("x"));
        let m = decode(r#"{"t":1,"l":[1,2]}"#, PayloadFormat::Auto).unwrap();
        assert_eq!(m.ignored.arrays, 1);
        assert_eq!(
            decode("hello world", PayloadFormat::Auto)
                .unwrap_err()
                .reason(),
            "invalid_line_protocol"
        );
        assert_eq!(
            decode("  ", PayloadFormat::Auto).unwrap_err().reason(),
            "empty"
        );
    }
}
