//! What a route reads out of a payload: where the values are, where the
//! device time is and how it is written, which fields go to metadata, which
//! are ignored or renamed, what arrays, states and other text become, and
//! whether retained messages are stored. Plain data and its validation;
//! `ingest::decode::document` applies it.
//!
//! # Paths
//!
//! Dotted paths everywhere (`uplink_message.decoded_payload`,
//! `rxInfo.0.rssi`): the same names the values are stored under once nested
//! objects are flattened with `.`, so a path and a stored value name read
//! alike, and they fit in TOML without quoting. A number is an index into an
//! array. `""` is the whole payload. (A key that itself contains `.` cannot be
//! addressed; none of the supported ecosystems sends one.)
//!
//! Invariants of a validated [`PayloadSpec`]: no path has an empty segment;
//! `ignore` and `rename` name value names (relative to `values`), the other
//! paths start at the payload's root; no rename target is given twice; the
//! time path is not also a metadata path.

use std::collections::BTreeMap;

use super::timefmt::{TimeFormat, TimeZone};

/// A dotted path into a JSON document (`a.b.0.c`); empty: the root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(pub Vec<String>);

impl FieldPath {
    /// Parse `a.b.0`; the error completes "`key` …".
    pub fn parse(s: &str) -> Result<FieldPath, String> {
        let t = s.trim();
        if t.is_empty() {
            return Ok(FieldPath::default());
        }
        let segs: Vec<String> = t.split('.').map(str::to_owned).collect();
        if segs.iter().any(String::is_empty) {
            return Err(format!(
                "is a path into nothing: `{s}` has an empty segment; write dotted paths like \
                 `uplink_message.decoded_payload` (`\"\"` is the whole payload)"
            ));
        }
        Ok(FieldPath(segs))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as written (`a.b`).
    pub fn dotted(&self) -> String {
        self.0.join(".")
    }
}

/// What arrays in a payload become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arrays {
    /// Skipped, counted in `dakkio_mqtt_arrays_ignored_total`.
    #[default]
    Ignore,
    /// Each element a value named by its index (`by_minute.0`).
    Flatten,
}

/// What text that is not a state becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextPolicy {
    /// A text value.
    #[default]
    Value,
    /// A metadata field of the reading.
    Metadata,
    /// Dropped (counted with the arrays: nothing silent).
    Ignore,
}

/// What a retained message (one the broker resends on subscribe) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retained {
    /// Counted in `dakkio_mqtt_messages_skipped_total{reason="retained"}`.
    #[default]
    Skip,
    Store,
}

/// The states every route knows (case-insensitive): 1 and 0.
pub const DEFAULT_STATES: [(&str, f64); 8] = [
    ("on", 1.0),
    ("off", 0.0),
    ("true", 1.0),
    ("false", 0.0),
    ("open", 1.0),
    ("closed", 0.0),
    ("yes", 1.0),
    ("no", 0.0),
];

/// A route's payload reading, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadSpec {
    /// The object whose leaves become values (root by default).
    pub values: FieldPath,
    /// The device time; `None`: a `timestamp`, `ts` or `time` key beside
    /// the values.
    pub time: Option<FieldPath>,
    pub time_format: TimeFormat,
    pub time_zone: TimeZone,
    /// Metadata key → path from the root.
    pub metadata_fields: Vec<(String, FieldPath)>,
    /// Value names (and everything below them) that are not stored.
    pub ignore: Vec<String>,
    /// Value name → stored name.
    pub rename: BTreeMap<String, String>,
    pub arrays: Arrays,
    /// Text → number, matched ignoring case; the defaults plus the route's.
    pub states: Vec<(String, f64)>,
    pub text: TextPolicy,
    /// What the decoder derives from the fields above once (the paths
    /// compiled into a lookup); not part of the spec's meaning.
    pub derived: Derived,
}

/// What a decoder derives from a spec once, kept with it: built on first
/// use, empty again in a clone, equal to any other, opaque here (config
/// stays plain data). A spec is not changed after its first decode (a
/// route's never is; the decoder checks it in debug builds).
#[derive(Default)]
pub struct Derived(std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>);

impl Derived {
    /// The value, made by `make` on first use. One type per spec.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> &T {
        self.0
            .get_or_init(|| Box::new(make()))
            .downcast_ref()
            .expect("one derived type per spec")
    }
}

impl Clone for Derived {
    fn clone(&self) -> Self {
        Derived::default()
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

impl Default for PayloadSpec {
    fn default() -> Self {
        PayloadSpec {
            values: FieldPath::default(),
            time: None,
            time_format: TimeFormat::Auto,
            time_zone: TimeZone::UTC,
            metadata_fields: Vec::new(),
            ignore: Vec::new(),
            rename: BTreeMap::new(),
            arrays: Arrays::Ignore,
            states: DEFAULT_STATES
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            text: TextPolicy::Value,
            derived: Derived::default(),
        }
    }
}

impl PayloadSpec {
    /// Whether anything beyond the defaults reads the payload by path
    /// (which only JSON payloads have).
    pub fn uses_paths(&self) -> bool {
        !self.values.is_root() || self.time.is_some() || !self.metadata_fields.is_empty()
    }

    /// The number for a state word, if it is one.
    pub fn state(&self, text: &str) -> Option<f64> {
        // Nothing to trim when both ends are printable ASCII (nearly every
        // text value): `trim` reads the ends as characters.
        let b = text.as_bytes();
        let plain = |c: Option<&u8>| c.is_some_and(|&c| c > b' ' && c < 0x7f);
        let t = if plain(b.first()) && plain(b.last()) {
            text
        } else {
            text.trim()
        };
        self.states
            .iter()
            .rev() // the route's own entries come last and win
            .find(|(k, _)| k.eq_ignore_ascii_case(t))
            .map(|(_, v)| *v)
    }

    /// Whether a value name is ignored (itself or a parent object).
    pub fn ignores(&self, name: &str) -> bool {
        let n = name.as_bytes();
        self.ignore.iter().any(|i| {
            let i = i.as_bytes();
            // Length and the byte after the prefix before comparing the
            // text (in line: names are short): most names are no entry's.
            n.len() >= i.len()
                && (n.len() == i.len() || n[i.len()] == b'.')
                && n.iter().zip(i).all(|(a, b)| a == b)
        })
    }
}

pub(crate) fn parse_arrays(s: &str) -> Result<Arrays, String> {
    match s.trim() {
        "ignore" => Ok(Arrays::Ignore),
        "flatten" => Ok(Arrays::Flatten),
        other => Err(format!("must be `ignore` or `flatten`; got `{other}`")),
    }
}

pub(crate) fn parse_text(s: &str) -> Result<TextPolicy, String> {
    match s.trim() {
        "value" => Ok(TextPolicy::Value),
        "metadata" => Ok(TextPolicy::Metadata),
        "ignore" => Ok(TextPolicy::Ignore),
        other => Err(format!(
            "must be `value`, `metadata` or `ignore`; got `{other}`"
        )),
    }
}

pub(crate) fn parse_retained(s: &str) -> Result<Retained, String> {
    match s.trim() {
        "skip" => Ok(Retained::Skip),
        "store" => Ok(Retained::Store),
        other => Err(format!("must be `skip` or `store`; got `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_states_and_ignores() {
        assert_eq!(
            FieldPath::parse("a.b.0").unwrap().0,
            ["a", "b", "0"].map(String::from)
        );
        assert!(FieldPath::parse("").unwrap().is_root());
        for bad in ["a..b", ".a", "a."] {
            let e = FieldPath::parse(bad).unwrap_err();
            assert!(e.contains("path into nothing"), "{e}");
        }
        let mut s = PayloadSpec::default();
        assert_eq!(s.state("ON"), Some(1.0));
        assert_eq!(s.state(" Closed "), Some(0.0));
        assert_eq!(s.state("single"), None);
        s.states.push(("on".into(), 2.0));
        assert_eq!(s.state("on"), Some(2.0), "a route's entry wins");
        s.ignore = vec!["wifi".into()];
        assert!(s.ignores("wifi") && s.ignores("wifi.rssi"));
        assert!(!s.ignores("wifis") && !s.ignores("w"));
    }
}

// ---------------------------------------------------------------------------
// Validation of a route's payload keys (`mqtt.rs` calls these).

use toml::Spanned;

use super::context::closest;
use super::mqtt::RawRoute;
use super::presets::{self, Preset};
use super::{Ctx, PayloadFormat};
use crate::topic::TopicGlob;

/// Fill the keys the route leaves out from its `preset`. `None` when the
/// preset is unknown (reported); `Some(None)` without a preset.
pub(crate) fn apply_preset(
    r: &mut RawRoute,
    key: &str,
    ctx: &mut Ctx,
) -> Option<Option<&'static Preset>> {
    let Some(name) = r.preset.clone() else {
        return Some(None);
    };
    let Some(p) = presets::preset(name.get_ref()) else {
        let names = presets::names();
        let hint = closest(name.get_ref(), &names)
            .map(|c| format!("did you mean `{c}`? "))
            .unwrap_or_default();
        ctx.error(
            Some(name.span()),
            &format!("{key}.preset"),
            format!(
                "`{key}.preset` `{}` is not a preset; {hint}one of {}",
                name.get_ref(),
                names.join(", ")
            ),
        );
        return None;
    };
    let at = name.span();
    let text = |s: &str| Some(Spanned::new(at.clone(), s.to_owned()));
    if r.topic.is_none() {
        r.topic = text(p.topic);
    }
    if r.data_source.is_none() {
        if let Some(d) = p.data_source {
            r.data_source = text(d);
        }
    }
    if r.format.is_none() {
        r.format = Some(Spanned::new(at.clone(), p.format));
    }
    if r.field.is_none() {
        if let Some(f) = p.field {
            r.field = text(f);
        }
    }
    for (k, v) in p.metadata {
        r.metadata
            .entry((*k).to_owned())
            .or_insert_with(|| Spanned::new(at.clone(), (*v).to_owned()));
    }
    if r.values.is_none() && !p.values.is_empty() {
        r.values = text(p.values);
    }
    if r.time.is_none() {
        if let Some(t) = p.time {
            r.time = text(t);
        }
    }
    if r.time_format.is_none() {
        r.time_format = text(&p.time_format.to_string());
    }
    if r.time_zone.is_none() {
        r.time_zone = text(&match p.time_zone {
            super::timefmt::TimeZone::Local => "local".to_owned(),
            super::timefmt::TimeZone::Fixed(0) => "UTC".to_owned(),
            super::timefmt::TimeZone::Fixed(s) => {
                format!(
                    "{}{:02}:{:02}",
                    if s < 0 { '-' } else { '+' },
                    s.abs() / 3600,
                    s.abs() / 60 % 60
                )
            }
        });
    }
    for (k, v) in p.metadata_fields {
        r.metadata_fields
            .entry((*k).to_owned())
            .or_insert_with(|| Spanned::new(at.clone(), (*v).to_owned()));
    }
    if r.ignore.is_none() {
        r.ignore = Some(Spanned::new(
            at.clone(),
            p.ignore.iter().map(|s| (*s).to_owned()).collect(),
        ));
    }
    for (k, v) in p.states {
        r.states
            .entry((*k).to_owned())
            .or_insert_with(|| Spanned::new(at.clone(), *v));
    }
    if r.text.is_none() {
        r.text = text(match p.text {
            TextPolicy::Value => "value",
            TextPolicy::Metadata => "metadata",
            TextPolicy::Ignore => "ignore",
        });
    }
    if r.skip_topics.is_none() {
        r.skip_topics = Some(Spanned::new(
            at,
            p.skip_topics.iter().map(|s| (*s).to_owned()).collect(),
        ));
    }
    Some(Some(p))
}

/// The route's [`PayloadSpec`], or `None` after reporting its problems.
pub(crate) fn validate(
    r: &RawRoute,
    key: &str,
    format: PayloadFormat,
    ctx: &mut Ctx,
) -> Option<PayloadSpec> {
    let mut ok = true;
    let mut spec = PayloadSpec::default();
    let from_preset =
        |span: &std::ops::Range<usize>| r.preset.as_ref().is_some_and(|p| p.span() == *span);
    let mut parse_path = |v: &Spanned<String>, name: &str, ctx: &mut Ctx| -> Option<FieldPath> {
        match FieldPath::parse(v.get_ref()) {
            Ok(p) => Some(p),
            Err(why) => {
                ctx.error(
                    Some(v.span()),
                    &format!("{key}.{name}"),
                    format!("`{key}.{name}` {why}"),
                );
                ok = false;
                None
            }
        }
    };
    if let Some(v) = &r.values {
        spec.values = parse_path(v, "values", ctx).unwrap_or_default();
    }
    if let Some(v) = &r.time {
        spec.time = parse_path(v, "time", ctx).filter(|p| !p.is_root());
    }
    let mut metadata_fields = Vec::new();
    for (k, v) in &r.metadata_fields {
        if let Some(p) = parse_path(v, &format!("metadata_fields.{k}"), ctx) {
            metadata_fields.push((k.clone(), p));
        }
    }
    let mut one = |v: &Option<Spanned<String>>,
                   name: &str,
                   ctx: &mut Ctx,
                   f: &dyn Fn(&str) -> Result<(), String>| {
        if let Some(v) = v {
            if let Err(why) = f(v.get_ref()) {
                ctx.error(
                    Some(v.span()),
                    &format!("{key}.{name}"),
                    format!("`{key}.{name}` {why}"),
                );
                ok = false;
            }
        }
    };
    let time_format = r
        .time_format
        .as_ref()
        .and_then(|v| v.get_ref().parse().ok());
    let time_zone = r.time_zone.as_ref().and_then(|v| v.get_ref().parse().ok());
    let arrays = r
        .arrays
        .as_ref()
        .and_then(|v| parse_arrays(v.get_ref()).ok());
    let text = r.text.as_ref().and_then(|v| parse_text(v.get_ref()).ok());
    one(&r.time_format, "time_format", ctx, &|s| {
        s.parse::<TimeFormat>().map(drop)
    });
    one(&r.time_zone, "time_zone", ctx, &|s| {
        s.parse::<TimeZone>().map(drop)
    });
    one(&r.arrays, "arrays", ctx, &|s| parse_arrays(s).map(drop));
    one(&r.text, "text", ctx, &|s| parse_text(s).map(drop));
    spec.time_format = time_format.unwrap_or_default();
    spec.time_zone = time_zone.unwrap_or(TimeZone::UTC);
    spec.arrays = arrays.unwrap_or_default();
    spec.text = text.unwrap_or_default();

    // A Unix time has no zone: both written by hand contradict each other.
    if let (Some(tz), Some(tf)) = (&r.time_zone, &r.time_format) {
        let unix = matches!(
            spec.time_format,
            TimeFormat::UnixS | TimeFormat::UnixMs | TimeFormat::UnixUs | TimeFormat::UnixNs
        );
        if unix && !from_preset(&tz.span()) {
            ctx.error(
                Some(tz.span()),
                &format!("{key}.time_zone"),
                format!(
                    "`{key}.time_zone` conflicts with `time_format = \"{}\"`: a Unix time has no \
                     zone; drop `time_zone` or use `iso8601`/`hhmmss`",
                    tf.get_ref()
                ),
            );
            ok = false;
        }
    }
    if let Some(t) = &spec.time {
        if let Some((k, _)) = metadata_fields.iter().find(|(_, p)| p == t) {
            ctx.error(
                r.metadata_fields.get(k).map(|v| v.span()),
                &format!("{key}.metadata_fields.{k}"),
                format!(
                    "`{key}.metadata_fields.{k}` is ambiguous: `{}` is already the route's `time`",
                    t.dotted()
                ),
            );
            ok = false;
        }
    }
    spec.metadata_fields = metadata_fields;
    if let Some(ig) = &r.ignore {
        for name in ig.get_ref() {
            if FieldPath::parse(name).map_or(true, |p| p.is_root()) {
                ctx.error(
                    Some(ig.span()),
                    &format!("{key}.ignore"),
                    format!("`{key}.ignore` has `{name}`, a path into nothing; name a value like `linkquality` or `wifi.rssi`"),
                );
                ok = false;
            }
        }
        spec.ignore = ig.get_ref().clone();
    }
    let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
    for (from, to) in &r.rename {
        let t = to.get_ref().trim();
        if t.is_empty() {
            ctx.error(
                Some(to.span()),
                &format!("{key}.rename.{from}"),
                format!("`{key}.rename.{from}` must name the stored value, e.g. `temperature`"),
            );
            ok = false;
        } else if let Some(other) = targets.insert(t, from) {
            ctx.error(
                Some(to.span()),
                &format!("{key}.rename.{from}"),
                format!("`{key}.rename` is ambiguous: both `{other}` and `{from}` become `{t}`"),
            );
            ok = false;
        }
        spec.rename.insert(from.clone(), t.to_owned());
    }
    for (word, n) in &r.states {
        if word.trim().is_empty() || !n.get_ref().is_finite() {
            ctx.error(Some(n.span()), &format!("{key}.states"), format!("`{key}.states` maps words to numbers, e.g. `{{ LOCK = 1, UNLOCK = 0 }}`; got `{word}`"));
            ok = false;
        }
        spec.states.push((word.trim().to_owned(), *n.get_ref()));
    }

    // Paths read JSON documents; other formats have none.
    if spec.uses_paths()
        && matches!(
            format,
            PayloadFormat::Scalar | PayloadFormat::Influx | PayloadFormat::Point
        )
    {
        let fmt = r.format.as_ref().expect("a non-default format was given");
        let (span, name) = if from_preset(&fmt.span()) {
            let v = r
                .values
                .as_ref()
                .or(r.time.as_ref())
                .or(r.metadata_fields.values().next());
            (
                v.map(|v| v.span()),
                if r.values.is_some() {
                    "values"
                } else if r.time.is_some() {
                    "time"
                } else {
                    "metadata_fields"
                },
            )
        } else {
            (Some(fmt.span()), "format")
        };
        let preset = r
            .preset
            .as_ref()
            .map(|p| format!(" (preset `{}`)", p.get_ref()))
            .unwrap_or_default();
        ctx.error(
            span,
            &format!("{key}.{name}"),
            format!(
                "`{key}` is a path into nothing: `values`, `time` and `metadata_fields` read JSON \
                 documents, but the route's `format` is `{}`{preset}; use `format = \"json\"` or \
                 drop the paths",
                format_name(format)
            ),
        );
        ok = false;
    }
    ok.then_some(spec)
}

fn format_name(f: PayloadFormat) -> &'static str {
    match f {
        PayloadFormat::Auto => "auto",
        PayloadFormat::Json => "json",
        PayloadFormat::Point => "point",
        PayloadFormat::Scalar => "scalar",
        PayloadFormat::Influx => "influx",
    }
}

pub(crate) fn retained(r: &RawRoute, key: &str, ctx: &mut Ctx) -> Option<Retained> {
    match &r.retained {
        None => Some(Retained::Skip),
        Some(v) => match parse_retained(v.get_ref()) {
            Ok(x) => Some(x),
            Err(why) => {
                ctx.error(
                    Some(v.span()),
                    &format!("{key}.retained"),
                    format!("`{key}.retained` {why}"),
                );
                None
            }
        },
    }
}

pub(crate) fn skip_topics(r: &RawRoute, key: &str, ctx: &mut Ctx) -> Option<Vec<TopicGlob>> {
    let Some(list) = &r.skip_topics else {
        return Some(Vec::new());
    };
    let mut ok = true;
    let globs = list
        .get_ref()
        .iter()
        .filter_map(|s| match TopicGlob::parse(s) {
            Ok(g) => Some(g),
            Err(why) => {
                ctx.error(
                    Some(list.span()),
                    &format!("{key}.skip_topics"),
                    format!(
                        "`{key}.skip_topics` {why}, e.g. `zigbee2mqtt/#/availability`; got `{s}`"
                    ),
                );
                ok = false;
                None
            }
        })
        .collect();
    ok.then_some(globs)
}

#[cfg(test)]
mod config_tests {
    use std::path::Path;

    use crate::config::tests::FakeEnv;
    use crate::config::{parse, Config, Problem};

    use super::*;

    const HEAD: &str = "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\n[mqtt]\n";

    fn ok(text: &str) -> Config {
        parse(
            &format!("{HEAD}{text}"),
            Path::new("/etc/g.toml"),
            &FakeEnv(Default::default()),
        )
        .unwrap()
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse(
            &format!("{HEAD}{text}"),
            Path::new("/etc/g.toml"),
            &FakeEnv(Default::default()),
        )
        .expect_err("refused")
        .problems
    }

    #[test]
    fn a_preset_fills_what_the_route_leaves_out() {
        let c = ok(r#"
[[mqtt.routes]]
preset = "zigbee2mqtt"
bucket = "507f1f77bcf86cd799439011"
[[mqtt.routes]]
preset = "ttn_v3"
bucket = "507f1f77bcf86cd799439011"
data_source = "507f1f77bcf86cd799439012"
values = "uplink_message.decoded_payload.sensors"
[mqtt.routes.metadata_fields]
rssi = "uplink_message.rx_metadata.1.rssi"
"#);
        let m = c.mqtt.unwrap();
        let z = &m.routes[0];
        assert_eq!(z.preset, Some("zigbee2mqtt"));
        assert_eq!(z.topic.filter(), "zigbee2mqtt/#");
        assert_eq!(
            z.data_source,
            Some(crate::config::Source::Segment("device".into()))
        );
        assert!(z
            .skip_topics
            .iter()
            .any(|g| g.matches("zigbee2mqtt/bridge/state")));
        assert_eq!(z.retained, Retained::Skip);
        let t = &m.routes[1];
        // Explicit keys win over the preset's.
        assert_eq!(
            t.payload.values.dotted(),
            "uplink_message.decoded_payload.sensors"
        );
        let rssi = t
            .payload
            .metadata_fields
            .iter()
            .find(|(k, _)| k == "rssi")
            .unwrap();
        assert_eq!(rssi.1.dotted(), "uplink_message.rx_metadata.1.rssi");
        assert_eq!(t.payload.time.as_ref().unwrap().dotted(), "received_at");
        assert_eq!(t.payload.time_format, TimeFormat::Iso8601);
    }

    #[test]
    fn every_preset_is_valid_on_its_own() {
        for p in super::presets::PRESETS {
            let c = ok(&format!(
                "[[mqtt.routes]]\npreset = \"{}\"\nbucket = \"507f1f77bcf86cd799439011\"\n\
                 data_source = \"507f1f77bcf86cd799439012\"\n",
                p.name
            ));
            assert_eq!(c.mqtt.unwrap().routes[0].preset, Some(p.name));
        }
    }

    #[test]
    fn conflicting_or_ambiguous_keys_are_refused_with_file_line_and_key() {
        let route = "[[mqtt.routes]]\nbucket = \"507f1f77bcf86cd799439011\"\n";
        let cases: [(&str, &str, usize, &str); 8] = [
            ("preset = \"zigbe2mqtt\"\n", "mqtt.routes[0].preset", 6, "did you mean `zigbee2mqtt`"),
            (
                "preset = \"ttn_v3\"\nformat = \"influx\"\n",
                "mqtt.routes[0].format",
                7,
                "path into nothing",
            ),
            (
                "topic = \"a/+\"\ntime = \"ts\"\ntime_format = \"unix_s\"\ntime_zone = \"+01:00\"\n",
                "mqtt.routes[0].time_zone",
                9,
                "a Unix time has no zone",
            ),
            ("topic = \"a/+\"\nvalues = \"a..b\"\n", "mqtt.routes[0].values", 7, "path into nothing"),
            (
                "topic = \"a/+\"\ntime = \"t\"\nmetadata_fields = { at = \"t\" }\n",
                "mqtt.routes[0].metadata_fields.at",
                8,
                "ambiguous",
            ),
            (
                "topic = \"a/+\"\nrename = { a = \"x\", b = \"x\" }\n",
                "mqtt.routes[0].rename.b",
                7,
                "ambiguous",
            ),
            ("topic = \"a/+\"\narrays = \"explode\"\n", "mqtt.routes[0].arrays", 7, "`flatten`"),
            ("topic = \"a/+\"\nretained = \"keep\"\n", "mqtt.routes[0].retained", 7, "`store`"),
        ];
        for (text, key, line, words) in cases {
            let p = problems(&format!("{route}{text}"));
            let hit = p
                .iter()
                .find(|p| p.key == key)
                .unwrap_or_else(|| panic!("{key}: {p:#?}"));
            assert_eq!(hit.line, Some(line), "{key}: {hit:?}");
            assert!(hit.message.contains(words), "{}", hit.message);
        }
        let p = problems("shared_group = \"a/b\"\n");
        assert_eq!(p[0].key, "mqtt.shared_group");
        let p = problems("[[mqtt.routes]]\nbucket = \"507f1f77bcf86cd799439011\"\n");
        assert_eq!(p[0].key, "mqtt.routes[0].topic");
    }

    #[test]
    fn shared_group_and_overlap_warning() {
        let c = ok(r#"shared_group = "barn"
[[mqtt.routes]]
topic = "a/+/c"
bucket = "507f1f77bcf86cd799439011"
[[mqtt.routes]]
topic = "a/b/+"
bucket = "507f1f77bcf86cd799439011"
"#);
        assert_eq!(
            c.mqtt.as_ref().unwrap().shared_group.as_deref(),
            Some("barn")
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("`a/+/c` and `a/b/+` overlap") && w.contains("shared_group")),
            "{:?}",
            c.warnings
        );
    }
}
