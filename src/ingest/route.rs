//! MQTT routing, pure: topic patterns with named segments
//! (`sensors/{device}/{source}`), matching a topic against them, and turning
//! one message (topic + payload) into readings or a rejection with a stable
//! reason. No I/O, no clock: the receive time is passed in.
//!
//! Rules:
//! - a route's topic is an MQTT filter in which a whole segment may be
//!   `{name}`: it subscribes as `+` and its value is available to `bucket`,
//!   `data_source`, `field` and `metadata`;
//! - the first route (in config order) whose filter matches wins; wildcards
//!   at the first level do not match topics starting with `$` (MQTT 4.7.2);
//! - a value taken from a segment goes through the route's name → id map if
//!   it has one; a name not in the map, or a bucket that is not one of
//!   `[[buckets]]`, rejects the message (`unknown_data_source`,
//!   `unknown_bucket`);
//! - the data source comes from the route when it names one, else from a
//!   point payload's `dataSourceId`, else the message is `no_data_source`;
//! - a topic matching one of the route's `skip_topics`, and a retained
//!   message (one the broker resends on subscribe) unless the route says
//!   `retained = "store"`, is skipped whole and counted (`Routed::skipped`),
//!   never silently;
//! - a multi-line payload may be partly good: each bad line is a rejection
//!   of its own (`Routed::bad_lines`) and the good lines are readings.
//!
//! Speed (`cargo bench --bench payloads`): a message's topic is split once
//! for every route and skip glob ([`SplitTopic`]); what a route can decide
//! before any message (where each topic-derived value sits in the topic,
//! its decode options, whether a fixed bucket is known) is decided when the
//! router is built (`Compiled`), so that routing allocates nothing beyond
//! the readings.

use std::collections::HashSet;

use crate::config::payload::Retained;
pub use crate::config::Source;
use crate::config::{MqttConfig, MqttRoute, UnmappedSources};
use crate::ingest::decode::document::Ignored;
use crate::ingest::decode::message::decode_message;
use crate::ingest::decode::{DecodeOptions, DEFAULT_FIELD};
use crate::reading::{is_object_id, Name, Origin, Reading};
pub use crate::topic::TopicPattern;
use crate::topic::{Capture, SplitTopic};

/// Why a message did not become readings: a stable reason (metric label,
/// rejects table) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

impl Rejection {
    fn new(reason: &'static str, detail: String) -> Rejection {
        Rejection { reason, detail }
    }
}

/// Reasons produced by routing (decode reasons come from
/// [`decode::DecodeError::REASONS`]).
pub const ROUTE_REASONS: [&str; 4] = [
    "no_route",
    "unknown_bucket",
    "unknown_data_source",
    "no_data_source",
];

/// Why a whole message was skipped (counted, not a reject).
/// (`duplicate` is decided by the MQTT input: a second copy of a message
/// matching two subscriptions.)
pub const SKIP_REASONS: [&str; 3] = ["retained", "skip_topic", "duplicate"];

/// What one message became.
#[derive(Debug, Default)]
pub struct Routed {
    pub readings: Vec<Reading>,
    /// Lines refused on their own: why, and that line's text.
    pub bad_lines: Vec<(Rejection, String)>,
    /// Skipped whole and counted: one of [`SKIP_REASONS`].
    pub skipped: Option<&'static str>,
    /// Parts of payloads set aside (arrays, dropped text), counted.
    pub ignored: Ignored,
}

/// The routes of one `[mqtt]` section and the buckets they may name.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<MqttRoute>,
    /// What each route (same index) decides before any message.
    compiled: Vec<Compiled>,
    buckets: HashSet<String>,
}

/// What a route decides once instead of per message: where each value
/// taken from the topic sits in it, the decode options, and whether a
/// fixed bucket is one of `[[buckets]]`.
#[derive(Debug, Clone)]
struct Compiled {
    /// The pattern's first level when literal ([`TopicPattern::first_literal`]).
    first: Option<Box<str>>,
    bucket: Part,
    /// The route's bucket is fixed and one of `[[buckets]]`.
    fixed_bucket_known: bool,
    data_source: Option<Part>,
    field: Option<Part>,
    metadata: Vec<(Name, Part)>,
    /// A fixed bucket's and data source's ids as the readings hold them,
    /// made once (copied into each reading rather than built again).
    fixed_bucket: Option<Name>,
    fixed_source: Option<Name>,
    /// With `scalar_field` set when the field is fixed (a field taken
    /// from the topic is set per message).
    opts: DecodeOptions,
}

/// A [`Source`] resolved against the route's topic pattern.
#[derive(Debug, Clone)]
enum Part {
    Fixed(String),
    At(Capture),
    /// A segment the topic does not capture: empty, as `Source::resolve`.
    Missing,
}

impl Part {
    fn new(source: &Source, pattern: &TopicPattern) -> Part {
        match source {
            Source::Fixed(s) => Part::Fixed(s.clone()),
            Source::Segment(n) => pattern.capture(n).map_or(Part::Missing, Part::At),
        }
    }

    fn get<'a>(&'a self, topic: &SplitTopic<'a>) -> &'a str {
        match self {
            Part::Fixed(s) => s,
            Part::At(c) => topic.get(*c),
            Part::Missing => "",
        }
    }
}

impl Router {
    pub fn new(config: &MqttConfig, buckets: impl IntoIterator<Item = String>) -> Router {
        let buckets: HashSet<String> = buckets.into_iter().collect();
        let compiled = config
            .routes
            .iter()
            .map(|r| Compiled {
                first: r.topic.first_literal().map(Box::from),
                bucket: Part::new(&r.bucket, &r.topic),
                fixed_bucket_known: matches!(&r.bucket, Source::Fixed(id) if buckets.contains(id)),
                data_source: r.data_source.as_ref().map(|s| Part::new(s, &r.topic)),
                field: r.field.as_ref().map(|s| Part::new(s, &r.topic)),
                metadata: r
                    .metadata
                    .iter()
                    .map(|(k, s)| (Name::new(k), Part::new(s, &r.topic)))
                    .collect(),
                fixed_bucket: match &r.bucket {
                    Source::Fixed(id) => Some(Name::new(id)),
                    Source::Segment(_) => None,
                },
                fixed_source: match &r.data_source {
                    Some(Source::Fixed(id)) => Some(Name::new(id)),
                    _ => None,
                },
                opts: DecodeOptions {
                    max_payload: config.max_packet_size,
                    scalar_field: match &r.field {
                        Some(Source::Fixed(f)) => Some(f.clone()),
                        _ => None,
                    },
                    metadata_room: r.metadata.len(),
                    ..DecodeOptions::default()
                },
            })
            .collect();
        Router {
            routes: config.routes.clone(),
            compiled,
            buckets,
        }
    }

    pub fn routes(&self) -> &[MqttRoute] {
        &self.routes
    }

    /// Turn one message into readings stamped `received_ms` where the
    /// device gave no time (a test helper: bad lines and skips folded in).
    pub fn readings(
        &self,
        topic: &str,
        payload: &[u8],
        received_ms: i64,
    ) -> Result<Vec<Reading>, Rejection> {
        let mut r = self.route(topic, payload, false, received_ms)?;
        if r.readings.is_empty() && !r.bad_lines.is_empty() {
            return Err(r.bad_lines.swap_remove(0).0);
        }
        Ok(r.readings)
    }

    /// Route and decode one message. `Err`: the whole message is refused.
    pub fn route(
        &self,
        topic: &str,
        payload: &[u8],
        retained: bool,
        received_ms: i64,
    ) -> Result<Routed, Rejection> {
        // Split once for every route's pattern and skip globs.
        let split = SplitTopic::new(topic);
        // A route whose first level is literal and not the topic's is
        // ruled out by one comparison (most of them, with presets).
        let first = split.levels()[0];
        let Some((route, c)) = self.routes.iter().zip(&self.compiled).find(|(r, c)| {
            c.first.as_deref().is_none_or(|f| f == first) && r.topic.is_match(&split)
        }) else {
            return Err(Rejection::new(
                "no_route",
                format!("no `[[mqtt.routes]]` topic matches `{}`", short(topic)),
            ));
        };
        if route.skip_topics.iter().any(|g| g.matches_split(&split)) {
            return Ok(Routed {
                skipped: Some("skip_topic"),
                ..Routed::default()
            });
        }
        if retained && route.retained == Retained::Skip {
            return Ok(Routed {
                skipped: Some("retained"),
                ..Routed::default()
            });
        }
        let bucket_value = c.bucket.get(&split);
        let (bucket_id, known) = match &route.bucket {
            Source::Segment(_) => {
                let id = match route.buckets.get(bucket_value) {
                    Some(id) => id.as_str(),
                    None if route.buckets.is_empty() => bucket_value,
                    None => {
                        return Err(Rejection::new(
                            "unknown_bucket",
                            format!(
                                "topic segment `{}` is not in the route's `buckets` map",
                                short(bucket_value)
                            ),
                        ))
                    }
                };
                (id, self.buckets.contains(id))
            }
            Source::Fixed(id) => (id.as_str(), c.fixed_bucket_known),
        };
        if !known {
            return Err(Rejection::new(
                "unknown_bucket",
                format!("`{}` is not one of the `[[buckets]]`", short(bucket_id)),
            ));
        }
        let route_source = match (&route.data_source, &c.data_source) {
            (None, _) | (_, None) => None,
            (Some(Source::Fixed(_)), Some(p)) => Some(p.get(&split)),
            (Some(Source::Segment(_)), Some(p)) => {
                let v = p.get(&split);
                match route.data_sources.get(v) {
                    Some(id) => Some(id.as_str()),
                    None if route.unmapped_sources == UnmappedSources::Reject => {
                        return Err(Rejection::new(
                            "unmapped_source",
                            format!(
                                "topic segment `{}` is not in the route's `data_sources` map \
                                 (`unmapped_sources = \"reject\"`)",
                                short(v)
                            ),
                        ))
                    }
                    None if is_object_id(v) => Some(v),
                    None => {
                        return Err(Rejection::new(
                            "unknown_data_source",
                            format!(
                                "topic segment `{}` is neither a data source id nor in the \
                                 route's `data_sources` map",
                                short(v)
                            ),
                        ))
                    }
                }
            }
        };
        let field = c.field.as_ref().map_or(DEFAULT_FIELD, |f| f.get(&split));
        let per_message;
        let opts = match &c.field {
            Some(Part::At(_) | Part::Missing) => {
                per_message = DecodeOptions {
                    scalar_field: Some(field.to_owned()),
                    ..c.opts.clone()
                };
                &per_message
            }
            _ => &c.opts,
        };
        let decoded = decode_message(
            payload,
            route.format,
            &route.payload,
            field,
            opts,
            received_ms,
        )
        .map_err(|e| Rejection::new(e.reason(), e.to_string()))?;
        let mut out = Vec::with_capacity(decoded.points.len());
        for d in decoded.points {
            let source = match (route_source, d.data_source_id.as_deref()) {
                (Some(s), _) => c.fixed_source.clone().unwrap_or_else(|| s.into()),
                (None, Some(s)) if is_object_id(s) => s.to_ascii_lowercase().into(),
                (None, Some(s)) => {
                    return Err(Rejection::new(
                        "unknown_data_source",
                        format!("payload `dataSourceId` `{}` is not a 24-hex id", short(s)),
                    ))
                }
                (None, None) => {
                    return Err(Rejection::new(
                        "no_data_source",
                        "the route names no `data_source` and the payload has no \
                         `dataSourceId`"
                            .into(),
                    ))
                }
            };
            let mut point = d.point;
            point.metadata.reserve(c.metadata.len());
            for (key, value) in &c.metadata {
                point.metadata.insert(
                    key.clone(),
                    serde_json::Value::String(value.get(&split).to_owned()),
                );
            }
            // `DecodedPoint::into_reading`, without copying the source id
            // a second time.
            out.push(Reading {
                bucket_id: match &c.fixed_bucket {
                    Some(b) => b.clone(),
                    None => bucket_id.into(),
                },
                data_source_id: source,
                timestamp_ms: point.timestamp_ms.unwrap_or(received_ms),
                values: point.values,
                metadata: point.metadata,
                origin: Origin::Mqtt,
                receive_time: point.timestamp_ms.is_none(),
            });
        }
        // Nearly always none: not collected then (the call for an empty
        // list returned a vector that was read back in one load before
        // its three words were stored).
        let bad_lines = if decoded.bad_lines.is_empty() {
            Vec::new()
        } else {
            decoded
                .bad_lines
                .into_iter()
                .map(|(e, line)| (Rejection::new(e.reason(), e.to_string()), line))
                .collect()
        };
        Ok(Routed {
            readings: out,
            bad_lines,
            skipped: None,
            ignored: decoded.ignored,
        })
    }
}

/// At most 80 characters of a topic or value, for messages.
fn short(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ingest::decode::PayloadFormat;
    use crate::reading::Value;

    const B: &str = "507f1f77bcf86cd799439011";
    const B2: &str = "507f1f77bcf86cd799439099";
    const S: &str = "507f1f77bcf86cd799439012";

    fn route(topic: &str, bucket: &str, source: Option<&str>) -> MqttRoute {
        MqttRoute {
            topic: TopicPattern::parse(topic).unwrap(),
            qos: 1,
            bucket: Source::parse(bucket),
            buckets: BTreeMap::new(),
            data_source: source.map(Source::parse),
            data_sources: BTreeMap::new(),
            unmapped_sources: UnmappedSources::Accept,
            format: PayloadFormat::Auto,
            field: None,
            metadata: Vec::new(),
            payload: Default::default(),
            retained: Retained::Skip,
            skip_topics: Vec::new(),
            preset: None,
        }
    }

    fn router(routes: Vec<MqttRoute>) -> Router {
        let mut c = MqttConfig::new("localhost", 1883);
        c.routes = routes;
        Router::new(&c, [B.to_owned(), B2.to_owned()])
    }

    #[test]
    fn sources() {
        assert_eq!(Source::parse("{device}"), Source::Segment("device".into()));
        assert_eq!(Source::parse(B), Source::Fixed(B.into()));
        assert_eq!(Source::parse("{a b}"), Source::Fixed("{a b}".into()));
    }

    #[test]
    fn fixed_and_segment_routes() {
        let mut r1 = route("sensors/{device}/{source}", B, Some("{source}"));
        r1.data_sources.insert("livingroom".into(), S.into());
        r1.metadata = vec![("deviceId".into(), Source::Segment("device".into()))];
        let mut r2 = route("scalar/{bucket}/{field}", "{bucket}", Some(S));
        r2.field = Some(Source::Segment("field".into()));
        r2.format = PayloadFormat::Scalar;
        let r = router(vec![r1, r2]);

        let got = r
            .readings("sensors/d7/livingroom", br#"{"t":21.5}"#, 1000)
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].bucket_id, B);
        assert_eq!(got[0].data_source_id, S);
        assert_eq!(got[0].timestamp_ms, 1000);
        assert_eq!(got[0].values["t"], Value::Number(21.5));
        assert_eq!(got[0].metadata["deviceId"], "d7");

        // A segment that is already an id needs no map entry.
        let got = r.readings(&format!("sensors/d7/{S}"), b"1", 5).unwrap();
        assert_eq!(got[0].values["value"], Value::Number(1.0));

        let got = r
            .readings(&format!("scalar/{B2}/humidity"), b"40", 5)
            .unwrap();
        assert_eq!(got[0].bucket_id, B2);
        assert_eq!(got[0].values["humidity"], Value::Number(40.0));
    }

    #[test]
    fn unmapped_sources_reject_ids_outside_the_map() {
        const OTHER: &str = "507f1f77bcf86cd7994390aa";
        let mut r1 = route("sensors/{source}", B, Some("{source}"));
        r1.data_sources.insert("livingroom".into(), S.into());
        r1.unmapped_sources = UnmappedSources::Reject;
        let r = router(vec![r1]);
        let got = r.readings("sensors/livingroom", b"1", 0).unwrap();
        assert_eq!(got[0].data_source_id, S);
        // A 24-hex segment is not enough: it must be one of the map's names,
        // even when it is the id a name maps to.
        for seg in [OTHER, S, "kitchen"] {
            let e = r.readings(&format!("sensors/{seg}"), b"1", 0).unwrap_err();
            assert_eq!(e.reason, "unmapped_source", "{seg}");
        }
    }

    #[test]
    fn rejections_have_reasons() {
        let mut r1 = route("sensors/{device}/{source}", B, Some("{source}"));
        r1.data_sources.insert("livingroom".into(), S.into());
        let r2 = route("b/{bucket}", "{bucket}", Some(S));
        let r3 = route("p/+", B, None);
        let r = router(vec![r1, r2, r3]);
        let reason = |t: &str, p: &[u8]| r.readings(t, p, 0).unwrap_err().reason;
        assert_eq!(reason("nowhere", b"1"), "no_route");
        assert_eq!(reason("sensors/d/kitchen", b"1"), "unknown_data_source");
        assert_eq!(reason("b/aaaaaaaaaaaaaaaaaaaaaaaa", b"1"), "unknown_bucket");
        assert_eq!(reason("p/x", b"1"), "no_data_source");
        assert_eq!(reason("sensors/d/livingroom", b""), "empty");
        assert_eq!(reason("sensors/d/livingroom", b"{"), "invalid_json");
        // Nothing usable (text is a value now, so only nulls and arrays).
        assert_eq!(
            reason("sensors/d/livingroom", br#"{"t":null,"l":[1]}"#),
            "no_numeric_value"
        );
        let big = vec![b'1'; 256 * 1024 + 1];
        assert_eq!(reason("sensors/d/livingroom", &big), "too_large");
        // A point payload can name its data source.
        let body = format!(r#"{{"values":{{"t":1}},"dataSourceId":"{S}","timestamp":1700000000}}"#);
        let got = r.readings("p/x", body.as_bytes(), 0).unwrap();
        assert_eq!(got[0].data_source_id, S);
        assert_eq!(got[0].timestamp_ms, 1_700_000_000_000);
    }

    #[test]
    fn first_matching_route_wins() {
        let r = router(vec![route("a/b", B, Some(S)), route("a/+", B2, Some(S))]);
        assert_eq!(r.readings("a/b", b"1", 0).unwrap()[0].bucket_id, B);
        assert_eq!(r.readings("a/c", b"1", 0).unwrap()[0].bucket_id, B2);
    }

    #[test]
    fn retained_and_skipped_topics_are_counted_skips() {
        let mut r1 = route("z/{device#}", B, Some(S));
        r1.skip_topics = vec![crate::topic::TopicGlob::parse("z/#/availability").unwrap()];
        let mut r2 = route("keep/+", B, Some(S));
        r2.retained = Retained::Store;
        let r = router(vec![r1, r2]);
        let got = r
            .route("z/kitchen/plug", b"{\"state\":\"ON\"}", false, 0)
            .unwrap();
        assert_eq!(got.readings[0].values["state"], Value::Number(1.0));
        let got = r.route("z/kitchen/plug", b"{\"t\":1}", true, 0).unwrap();
        assert_eq!((got.readings.len(), got.skipped), (0, Some("retained")));
        let got = r
            .route("z/kitchen/plug/availability", b"online", false, 0)
            .unwrap();
        assert_eq!((got.readings.len(), got.skipped), (0, Some("skip_topic")));
        let got = r.route("keep/a", b"1", true, 0).unwrap();
        assert_eq!((got.readings.len(), got.skipped), (1, None));
    }

    #[test]
    fn bad_lines_are_rejected_one_by_one() {
        let r = router(vec![route("t/+", B, Some(S))]);
        let got = r
            .route("t/a", b"m v=1\nm only=\"text\"\nm v=2\n", false, 0)
            .unwrap();
        assert_eq!(got.readings.len(), 2);
        assert_eq!(got.bad_lines.len(), 1);
        assert_eq!(got.bad_lines[0].0.reason, "no_numeric_value");
        assert_eq!(got.bad_lines[0].1, "m only=\"text\"");
        // A bare state is a reading, not `invalid_line_protocol`.
        let got = r.route("t/a", b"on", false, 0).unwrap();
        assert_eq!(got.readings[0].values["value"], Value::Number(1.0));
    }
}
