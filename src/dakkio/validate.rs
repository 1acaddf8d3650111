//! dakkio's ingest bodies (`POST /api/data/batch`, `POST /api/data`) and
//! their validation the way dakkio does it (its validator texts are Zod's),
//! without building a `serde_json::Value` tree per point: bodies are walked
//! through borrowed [`RawValue`]s and only the fields that need checking are
//! decoded. Pure functions, no I/O. The local API and the test stand-in both
//! judge bodies here, so they cannot drift apart.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

use super::messages::INVALID_JSON;
use crate::reading::{is_object_id, parse_timestamp};

/// dakkio's documented maximum number of points in one batch.
pub const MAX_BATCH_POINTS: usize = 1000;

/// One entry of a 400's `details`: a Zod issue.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub path: Vec<Value>,
    pub message: String,
}

/// Why a body was refused before any bucket or key check.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// 400 `Invalid request parameters` with `details`.
    Schema(Vec<Issue>),
    /// 400 with a message and no `details` (dakkio answers `Invalid bucket ID
    /// format` this way, so it is checked after the schema, in the handler).
    Message(&'static str),
}

/// One point that passed the schema, still borrowing from the body.
#[derive(Debug)]
pub struct PointIn<'a> {
    pub data_source_id: Cow<'a, str>,
    /// As sent, and parsed to Unix milliseconds.
    pub timestamp: Option<(Cow<'a, str>, i64)>,
    pub values: &'a RawValue,
    pub metadata: Option<&'a RawValue>,
    /// `metadata.readingId` when it is an integer (or a string of one): the
    /// gateway's stable reading id, used for the per-bucket order checks.
    pub reading_id: Option<i64>,
}

/// A body that passed the schema (the bucket id format is not checked yet).
#[derive(Debug)]
pub struct Parsed<'a> {
    pub bucket_id: Cow<'a, str>,
    pub points: Vec<PointIn<'a>>,
    /// Where point issues are rooted: `["body","dataPoints",i]` for a batch,
    /// `["body"]` for the single-point endpoint.
    pub batch: bool,
}

impl Parsed<'_> {
    /// `details` path prefix of point `i`.
    pub fn point_path(&self, i: usize) -> Vec<Value> {
        if self.batch {
            vec!["body".into(), "dataPoints".into(), i.into()]
        } else {
            vec!["body".into()]
        }
    }
}

/// Result of parsing: the bucket id when one could be read (scripts filtered
/// by bucket need it even when the body is otherwise invalid), the number of
/// points the body claimed, and the verdict.
pub struct Outcome<'a> {
    pub bucket_hint: Option<String>,
    pub points: usize,
    pub result: Result<Parsed<'a>, Rejection>,
}

/// A JSON member that records presence and keeps `null` distinct from
/// "missing" (Zod reports `received null` vs `received undefined`), which a
/// plain `Option<&RawValue>` would conflate.
#[derive(Default)]
struct Field<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|r| Field(Some(r)))
    }
}

#[derive(Deserialize)]
struct RawBatch<'a> {
    #[serde(rename = "bucketId", default, borrow)]
    bucket_id: Field<'a>,
    #[serde(rename = "dataPoints", default, borrow)]
    data_points: DataPoints<'a>,
}

/// `dataPoints` decoded in the same pass as the rest of the body: one scan
/// of the text, whatever its elements turn out to be.
#[derive(Default)]
enum DataPoints<'a> {
    #[default]
    Missing,
    /// The elements, and how many there were (elements past
    /// [`MAX_BATCH_POINTS`] are counted, not kept).
    Array(Vec<Element<'a>>, usize),
    Other(&'static str),
}

/// One `dataPoints` element: an object's members, or the kind of non-object.
enum Element<'a> {
    Object(RawPoint<'a>),
    Other(&'static str),
}

#[derive(Default)]
struct RawPoint<'a> {
    bucket_id: Field<'a>,
    data_source_id: Field<'a>,
    timestamp: Field<'a>,
    values: Field<'a>,
    metadata: Field<'a>,
}

#[derive(Deserialize)]
struct RawMeta<'a> {
    #[serde(rename = "readingId", default, borrow)]
    reading_id: Field<'a>,
}

/// Kind names for the scalar cases of the visitors below.
macro_rules! visit_scalars_as_kind {
    ($wrap:path) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($wrap("boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($wrap("number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($wrap("number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($wrap("number"))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($wrap("string"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($wrap("null"))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($wrap("null"))
        }
    };
}

impl<'de: 'a, 'a> Deserialize<'de> for DataPoints<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = DataPoints<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            visit_scalars_as_kind!(DataPoints::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let cap = seq.size_hint().unwrap_or(0).min(MAX_BATCH_POINTS);
                let mut elements = Vec::with_capacity(cap);
                let mut n = 0;
                while n < MAX_BATCH_POINTS {
                    match seq.next_element::<Element<'a>>()? {
                        Some(e) => elements.push(e),
                        None => return Ok(DataPoints::Array(elements, n)),
                    }
                    n += 1;
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(DataPoints::Array(elements, n))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(DataPoints::Other("object"))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Member names of a point, matched without allocating.
enum Member {
    BucketId,
    DataSourceId,
    Timestamp,
    Values,
    Metadata,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Member, E> {
                Ok(match s {
                    "bucketId" => Member::BucketId,
                    "dataSourceId" => Member::DataSourceId,
                    "timestamp" => Member::Timestamp,
                    "values" => Member::Values,
                    "metadata" => Member::Metadata,
                    _ => Member::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Element<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Element<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            visit_scalars_as_kind!(Element::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Element::Other("array"))
            }
            // Repeated members: the last wins, as with `JSON.parse`.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut p = RawPoint::default();
                while let Some(member) = map.next_key::<Member>()? {
                    match member {
                        Member::BucketId => p.bucket_id = map.next_value()?,
                        Member::DataSourceId => p.data_source_id = map.next_value()?,
                        Member::Timestamp => p.timestamp = map.next_value()?,
                        Member::Values => p.values = map.next_value()?,
                        Member::Metadata => p.metadata = map.next_value()?,
                        Member::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Element::Object(p))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Zod's name for the JSON type of a raw value.
pub fn kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

fn kind_of(field: &Field<'_>) -> &'static str {
    field.0.map_or("undefined", kind)
}

fn expected(want: &str, field: &Field<'_>) -> String {
    format!("Expected {want}, received {}", kind_of(field))
}

/// A JSON string, borrowed unless it contains escapes.
fn json_str(raw: &RawValue) -> Cow<'_, str> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(serde_json::from_str::<String>(raw.get()).unwrap_or_default()),
    }
}

fn string_field<'a>(field: &Field<'a>) -> Option<Cow<'a, str>> {
    match field.0 {
        Some(raw) if kind(raw) == "string" => Some(json_str(raw)),
        _ => None,
    }
}

/// The body as text if it is a JSON object, else why not. An empty body is
/// `{}`, as Express's JSON parser makes it. Checking the first byte keeps
/// the common case to one pass over the text (and stops serde from reading
/// an array positionally as a struct).
fn object_text(body: &[u8]) -> Result<&str, Rejection> {
    let text = std::str::from_utf8(body).map_err(|_| Rejection::Message(INVALID_JSON))?;
    if text.trim().is_empty() {
        return Ok("{}");
    }
    if text.trim_start().starts_with('{') {
        return Ok(text);
    }
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|_| Rejection::Message(INVALID_JSON))?;
    Err(Rejection::Schema(vec![Issue {
        path: vec!["body".into()],
        message: format!("Expected object, received {}", kind(raw)),
    }]))
}

/// Where a point's issues are rooted.
#[derive(Clone, Copy)]
enum Root {
    /// `["body","dataPoints",i]`
    Batch(usize),
    /// `["body"]` (the single-point endpoint)
    Single,
}

impl Root {
    fn path(self) -> Vec<Value> {
        match self {
            Root::Batch(i) => vec!["body".into(), "dataPoints".into(), i.into()],
            Root::Single => vec!["body".into()],
        }
    }

    fn issue(self, field: &str, message: impl Into<String>) -> Issue {
        let mut path = self.path();
        if !field.is_empty() {
            path.push(field.into());
        }
        Issue {
            path,
            message: message.into(),
        }
    }
}

fn body_issue(field: &str, message: impl Into<String>) -> Issue {
    Issue {
        path: vec!["body".into(), field.into()],
        message: message.into(),
    }
}

/// Validate a `POST /api/data/batch` body.
pub fn parse_batch(body: &[u8]) -> Outcome<'_> {
    let mut out = Outcome {
        bucket_hint: None,
        points: 0,
        result: Err(Rejection::Message(INVALID_JSON)),
    };
    let batch: RawBatch<'_> = match object_text(body) {
        Err(e) => {
            out.result = Err(e);
            return out;
        }
        Ok(text) => match serde_json::from_str(text) {
            Ok(b) => b,
            // Syntax errors, or a repeated top-level member.
            Err(_) => return out,
        },
    };
    let mut issues = Vec::new();
    let bucket_id = string_field(&batch.bucket_id);
    out.bucket_hint = bucket_id.as_deref().map(str::to_owned);
    if bucket_id.is_none() {
        issues.push(body_issue("bucketId", expected("string", &batch.bucket_id)));
    }
    let mut points = Vec::new();
    match batch.data_points {
        DataPoints::Missing => issues.push(body_issue(
            "dataPoints",
            "Expected array, received undefined",
        )),
        DataPoints::Other(kind) => issues.push(body_issue(
            "dataPoints",
            format!("Expected array, received {kind}"),
        )),
        DataPoints::Array(_, 0) => issues.push(body_issue(
            "dataPoints",
            "Array must contain at least 1 element(s)",
        )),
        DataPoints::Array(_, n) if n > MAX_BATCH_POINTS => {
            out.points = n;
            // Zod would also list element issues; the size alone is the
            // answer that matters and is cheap to give.
            issues.push(body_issue(
                "dataPoints",
                format!("Array must contain at most {MAX_BATCH_POINTS} element(s)"),
            ));
        }
        DataPoints::Array(elements, n) => {
            out.points = n;
            points.reserve(n);
            for (i, element) in elements.into_iter().enumerate() {
                match element {
                    Element::Object(p) => {
                        if let Some(p) = check_point(p, Root::Batch(i), &mut issues) {
                            points.push(p);
                        }
                    }
                    Element::Other(kind) => issues.push(
                        Root::Batch(i).issue("", format!("Expected object, received {kind}")),
                    ),
                }
            }
        }
    }
    out.result = match (issues.is_empty(), bucket_id) {
        (true, Some(bucket_id)) => Ok(Parsed {
            bucket_id,
            points,
            batch: true,
        }),
        _ => Err(Rejection::Schema(issues)),
    };
    out
}

/// Validate a `POST /api/data` (single point) body.
pub fn parse_single(body: &[u8]) -> Outcome<'_> {
    let mut out = Outcome {
        bucket_hint: None,
        points: 0,
        result: Err(Rejection::Message(INVALID_JSON)),
    };
    let point = match object_text(body) {
        Err(e) => {
            out.result = Err(e);
            return out;
        }
        Ok(text) => match serde_json::from_str::<Element<'_>>(text) {
            Ok(Element::Object(p)) => p,
            _ => return out,
        },
    };
    out.points = 1;
    let mut issues = Vec::new();
    let bucket_id = string_field(&point.bucket_id);
    out.bucket_hint = bucket_id.as_deref().map(str::to_owned);
    if bucket_id.is_none() {
        issues.push(body_issue("bucketId", expected("string", &point.bucket_id)));
    }
    let checked = check_point(point, Root::Single, &mut issues);
    out.result = match (issues.is_empty(), bucket_id, checked) {
        (true, Some(bucket_id), Some(p)) => Ok(Parsed {
            bucket_id,
            points: vec![p],
            batch: false,
        }),
        _ => Err(Rejection::Schema(issues)),
    };
    out
}

/// Check one point's members, appending Zod-style issues under `root`.
fn check_point<'a>(p: RawPoint<'a>, root: Root, issues: &mut Vec<Issue>) -> Option<PointIn<'a>> {
    let before = issues.len();
    let data_source_id = string_field(&p.data_source_id);
    match &data_source_id {
        None => issues.push(root.issue("dataSourceId", expected("string", &p.data_source_id))),
        Some(id) if !is_object_id(id) => {
            issues.push(root.issue("dataSourceId", "Invalid data source ID format"))
        }
        Some(_) => {}
    }
    let mut timestamp = None;
    if p.timestamp.0.is_some() {
        match string_field(&p.timestamp) {
            None => issues.push(root.issue("timestamp", expected("string", &p.timestamp))),
            Some(text) => match parse_timestamp(&text) {
                Some(ms) => timestamp = Some((text, ms)),
                None => issues.push(root.issue("timestamp", "Invalid datetime")),
            },
        }
    }
    let values = match p.values.0 {
        Some(raw) if kind(raw) == "object" => Some(raw),
        _ => {
            issues.push(root.issue("values", expected("object", &p.values)));
            None
        }
    };
    let metadata = match p.metadata.0 {
        None => None,
        Some(raw) if kind(raw) == "object" => Some(raw),
        Some(_) => {
            issues.push(root.issue("metadata", expected("object", &p.metadata)));
            None
        }
    };
    if issues.len() != before {
        return None;
    }
    Some(PointIn {
        data_source_id: data_source_id?,
        timestamp,
        values: values?,
        metadata,
        reading_id: metadata.and_then(reading_id),
    })
}

/// `metadata.readingId` as an integer, if it is one (number, digit string or
/// the gateway's 24-hex id).
fn reading_id(metadata: &RawValue) -> Option<i64> {
    let meta: RawMeta<'_> = serde_json::from_str(metadata.get()).ok()?;
    let raw = meta.reading_id.0?;
    match kind(raw) {
        "number" => raw.get().trim().parse().ok(),
        "string" => parse_reading_id(&json_str(raw)),
        _ => None,
    }
}

/// A `metadata.readingId` as an ordered integer: a string of digits, or the
/// gateway's 24-hex id (`crate::store::reading_id`: 8 hex digits of database
/// id, then the seq in 16), whose seq part orders the readings of one
/// gateway.
pub fn parse_reading_id(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return u64::from_str_radix(&s[8..], 16).ok().map(|v| v as i64);
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SRC: &str = "507f1f77bcf86cd799439012";
    const BUCKET: &str = "507f1f77bcf86cd799439011";

    fn issues(out: Outcome<'_>) -> Vec<(Value, String)> {
        match out.result {
            Err(Rejection::Schema(issues)) => issues
                .into_iter()
                .map(|i| (Value::Array(i.path), i.message))
                .collect(),
            Err(other) => panic!("expected schema issues, got {other:?}"),
            Ok(_) => panic!("expected schema issues, got success"),
        }
    }

    #[test]
    fn accepts_a_good_batch_and_reads_reading_ids() {
        let body = json!({"bucketId": BUCKET, "dataPoints": [
            {"dataSourceId": SRC, "timestamp": "2024-01-15T10:00:00Z", "values": {"t": 1},
             "metadata": {"readingId": 7}},
            {"dataSourceId": SRC, "values": {"t": 2}, "metadata": {"readingId": "8"}},
            {"dataSourceId": SRC, "values": {"t": 3}},
        ]})
        .to_string();
        let out = parse_batch(body.as_bytes());
        assert_eq!(out.bucket_hint.as_deref(), Some(BUCKET));
        let parsed = out.result.unwrap();
        assert_eq!(parsed.points.len(), 3);
        assert_eq!(
            parsed.points[0].timestamp.as_ref().unwrap().1,
            1_705_312_800_000
        );
        let ids: Vec<_> = parsed.points.iter().map(|p| p.reading_id).collect();
        assert_eq!(ids, [Some(7), Some(8), None]);
    }

    #[test]
    fn reports_zod_like_paths_and_messages() {
        let body = json!({"bucketId": 5, "dataPoints": [
            {"dataSourceId": SRC, "values": {"t": 1}},
            "nope",
            {"values": {"t": 1}, "timestamp": "yesterday", "metadata": null},
            {"dataSourceId": "xyz", "values": "22.5"},
        ]})
        .to_string();
        let got = issues(parse_batch(body.as_bytes()));
        let want = vec![
            (
                json!(["body", "bucketId"]),
                "Expected string, received number",
            ),
            (
                json!(["body", "dataPoints", 1]),
                "Expected object, received string",
            ),
            (
                json!(["body", "dataPoints", 2, "dataSourceId"]),
                "Expected string, received undefined",
            ),
            (
                json!(["body", "dataPoints", 2, "timestamp"]),
                "Invalid datetime",
            ),
            (
                json!(["body", "dataPoints", 2, "metadata"]),
                "Expected object, received null",
            ),
            (
                json!(["body", "dataPoints", 3, "dataSourceId"]),
                "Invalid data source ID format",
            ),
            (
                json!(["body", "dataPoints", 3, "values"]),
                "Expected object, received string",
            ),
        ];
        let want: Vec<_> = want.into_iter().map(|(p, m)| (p, m.to_owned())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn array_bounds_and_bad_bodies() {
        let empty = json!({"bucketId": BUCKET, "dataPoints": []}).to_string();
        assert_eq!(
            issues(parse_batch(empty.as_bytes()))[0].1,
            "Array must contain at least 1 element(s)"
        );
        let point = json!({"dataSourceId": SRC, "values": {"t": 1}});
        let big = json!({"bucketId": BUCKET, "dataPoints": vec![point; 1001]}).to_string();
        let out = parse_batch(big.as_bytes());
        assert_eq!(out.points, 1001);
        assert_eq!(
            issues(out)[0],
            (
                json!(["body", "dataPoints"]),
                "Array must contain at most 1000 element(s)".to_owned()
            )
        );
        assert!(matches!(
            parse_batch(b"{not json").result,
            Err(Rejection::Message(INVALID_JSON))
        ));
        assert_eq!(
            issues(parse_batch(b"[1]")),
            vec![(
                json!(["body"]),
                "Expected object, received array".to_owned()
            )]
        );
        // An empty body is `{}` to Express: both required members missing.
        assert_eq!(issues(parse_batch(b"")).len(), 2);
    }

    #[test]
    fn single_point_paths_are_rooted_at_body() {
        let body = json!({"bucketId": BUCKET, "dataSourceId": SRC, "values": [1]}).to_string();
        assert_eq!(
            issues(parse_single(body.as_bytes())),
            vec![(
                json!(["body", "values"]),
                "Expected object, received array".to_owned()
            )]
        );
        let ok = json!({"bucketId": BUCKET, "dataSourceId": SRC, "values": {"t": 1}}).to_string();
        assert_eq!(parse_single(ok.as_bytes()).result.unwrap().points.len(), 1);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let body = format!(
            r#"{{"bucketId":"507f1f77bcf86cd79943901\u0031","dataPoints":[{{"dataSourceId":"{SRC}","values":{{}}}}]}}"#
        );
        let parsed = parse_batch(body.as_bytes()).result.unwrap();
        assert_eq!(parsed.bucket_id, BUCKET);
    }

    #[test]
    fn gateway_ids_order_by_their_seq() {
        let id = crate::store::reading_id(0xdeadbeef, 42);
        assert_eq!(parse_reading_id(&id), Some(42));
        assert_eq!(parse_reading_id("17"), Some(17));
        assert_eq!(parse_reading_id("nope"), None);
    }
}
