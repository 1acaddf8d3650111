//! `[mqtt]` and `[[mqtt.routes]]`: the MQTT input — the broker connection
//! and the routes that turn a topic into a bucket, a data source and
//! metadata.
//!
//! Invariants of a validated [`MqttConfig`]:
//! - every fixed bucket id of a route is one of `[[buckets]]`; ids taken from
//!   topic segments can only be checked per message (`unknown_bucket`);
//! - every `{name}` placeholder used by `bucket`, `data_source`, `field` or
//!   `metadata` is a named segment of the route's `topic`;
//! - the password is resolved (env, file under `$CREDENTIALS_DIRECTORY`, or
//!   inline) into a [`Secret`]; TLS files are readable.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::payload::{PayloadSpec, Retained};
use super::secrets::{self, Lookup};
use super::PayloadFormat;
use super::{Bucket, Ctx};
use crate::reading::is_object_id;
use crate::secret::Secret;
use crate::topic::{TopicGlob, TopicPattern};

/// Where a routed value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Fixed(String),
    /// The value of the named topic segment.
    Segment(String),
}

impl Source {
    /// `"{device}"` is a segment, anything else is fixed text.
    pub fn parse(s: &str) -> Source {
        let t = s.trim();
        match t.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            Some(name)
                if !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                Source::Segment(name.to_owned())
            }
            _ => Source::Fixed(s.to_owned()),
        }
    }

    /// The value for one message: the fixed text, or the named segment
    /// of the topic (empty if the topic did not capture it).
    pub fn resolve<'a>(&'a self, captures: &[(&str, &'a str)]) -> &'a str {
        match self {
            Source::Fixed(s) => s,
            Source::Segment(n) => captures
                .iter()
                .find(|(name, _)| name == n)
                .map_or("", |(_, v)| v),
        }
    }
}

pub const DEFAULT_PORT: u16 = 1883;
pub const DEFAULT_TLS_PORT: u16 = 8883;
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_PACKET_SIZE: u64 = 256 * 1024;
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
    host: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    keepalive: Option<Spanned<String>>,
    max_packet_size: Option<Spanned<String>>,
    clean_session: Option<bool>,
    reconnect_max_delay: Option<Spanned<String>>,
    tls: Option<RawTls>,
    shared_group: Option<Spanned<String>>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<Spanned<String>>,
    client_cert_file: Option<Spanned<String>>,
    client_key_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// Required unless a `preset` gives it.
    pub(crate) topic: Option<Spanned<String>>,
    qos: Option<Spanned<i64>>,
    pub(crate) bucket: Spanned<String>,
    #[serde(default)]
    buckets: BTreeMap<String, Spanned<String>>,
    pub(crate) data_source: Option<Spanned<String>>,
    #[serde(default)]
    data_sources: BTreeMap<String, Spanned<String>>,
    unmapped_sources: Option<Spanned<UnmappedSources>>,
    pub(crate) format: Option<Spanned<PayloadFormat>>,
    pub(crate) field: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) metadata: BTreeMap<String, Spanned<String>>,
    // What the route reads out of a payload (`payload.rs`, `presets.rs`).
    pub(crate) preset: Option<Spanned<String>>,
    pub(crate) values: Option<Spanned<String>>,
    pub(crate) time: Option<Spanned<String>>,
    pub(crate) time_format: Option<Spanned<String>>,
    pub(crate) time_zone: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) metadata_fields: BTreeMap<String, Spanned<String>>,
    pub(crate) ignore: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) rename: BTreeMap<String, Spanned<String>>,
    pub(crate) arrays: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) states: BTreeMap<String, Spanned<f64>>,
    pub(crate) text: Option<Spanned<String>>,
    pub(crate) retained: Option<Spanned<String>>,
    pub(crate) skip_topics: Option<Spanned<Vec<String>>>,
}

/// TLS to the broker (rustls, ring provider).
#[derive(Debug, Clone, PartialEq)]
pub struct MqttTls {
    /// PEM CA certificates; `None`: the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key, for brokers that require them.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// What a route with a `data_sources` map does with a topic segment that
/// is not one of the map's names but is itself a 24-hex id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnmappedSources {
    /// Use the id as a data source (each new one becomes a data source).
    #[default]
    Accept,
    /// Reject the message as `unmapped_source`: only mapped names count.
    Reject,
}

/// One `[[mqtt.routes]]` entry, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttRoute {
    pub topic: TopicPattern,
    /// 0, 1 or 2; QoS 1 and 2 are acknowledged only after the commit.
    pub qos: u8,
    /// A fixed bucket id, or a topic segment (through `buckets` if given).
    pub bucket: Source,
    /// Segment value → bucket id.
    pub buckets: BTreeMap<String, String>,
    /// `None`: the payload's `dataSourceId` (point format) must give it.
    pub data_source: Option<Source>,
    /// Segment value → data source id.
    pub data_sources: BTreeMap<String, String>,
    /// `Reject` only with a non-empty `data_sources` map (checked).
    pub unmapped_sources: UnmappedSources,
    pub format: PayloadFormat,
    /// The name of a scalar payload's value (`value` by default).
    pub field: Option<Source>,
    /// Metadata key → fixed text or segment value, added to every point.
    pub metadata: Vec<(String, Source)>,
    /// What is read out of the payload (paths, time, states, arrays).
    pub payload: PayloadSpec,
    /// Retained messages: skipped (counted) unless `store`.
    pub retained: Retained,
    /// Topics matched by the filter that are counted and skipped.
    pub skip_topics: Vec<TopicGlob>,
    /// The preset the route started from, if any.
    pub preset: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// `None`: the gateway id (`gateway.id`).
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keepalive: Duration,
    /// Payloads above this are rejected as `too_large`.
    pub max_packet_size: usize,
    pub clean_session: bool,
    /// Reconnect delays grow exponentially (with full jitter) up to this.
    pub reconnect_max_delay: Duration,
    pub tls: Option<MqttTls>,
    pub routes: Vec<MqttRoute>,
    /// `Some(group)`: every route is subscribed as `$share/<group>/<filter>`,
    /// so gateways in the same group split the broker's messages.
    pub shared_group: Option<String>,
    /// The password is written in the config file itself (`password`).
    pub(crate) password_inline: bool,
}

impl MqttConfig {
    /// The MQTT client id: `client_id`, else the gateway id.
    pub fn client_id_or<'a>(&'a self, gateway_id: &'a str) -> &'a str {
        self.client_id.as_deref().unwrap_or(gateway_id)
    }

    /// A config for tests and benchmarks: a broker on `host:port`, no routes.
    pub fn new(host: &str, port: u16) -> MqttConfig {
        MqttConfig {
            host: host.to_owned(),
            port,
            client_id: None,
            username: None,
            password: None,
            keepalive: DEFAULT_KEEPALIVE,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE as usize,
            clean_session: false,
            reconnect_max_delay: DEFAULT_RECONNECT_MAX,
            tls: None,
            routes: Vec::new(),
            shared_group: None,
            password_inline: false,
        }
    }
}

impl RawMqtt {
    pub(crate) fn validate(self, ctx: &mut Ctx, buckets: &[Bucket]) -> MqttConfig {
        let host = match &self.host {
            Some(h) if h.get_ref().trim().is_empty() || h.get_ref().contains('/') => {
                ctx.error(
                    Some(h.span()),
                    "mqtt.host",
                    format!(
                        "`mqtt.host` must be a host name or address without scheme, e.g. \
                         `localhost`; got `{}`",
                        h.get_ref()
                    ),
                );
                String::new()
            }
            Some(h) => h.get_ref().trim().to_owned(),
            None => "localhost".to_owned(),
        };
        let default_port = if self.tls.is_some() {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PORT
        };
        let port = ctx.int_in("mqtt.port", &self.port, 1..=65535, default_port as i64) as u16;
        let client_id = self.client_id.as_ref().and_then(|c| {
            let id = c.get_ref().trim();
            if id.is_empty() || id.len() > 128 || id.contains(['+', '#', '/']) {
                ctx.error(
                    Some(c.span()),
                    "mqtt.client_id",
                    format!(
                        "`mqtt.client_id` must be 1 to 128 characters without `+`, `#` or `/`, \
                         e.g. `barn-3`; got `{}`",
                        c.get_ref()
                    ),
                );
                None
            } else {
                Some(id.to_owned())
            }
        });
        let username = self.username.as_ref().map(|u| u.get_ref().clone());
        let password_inline = self.password_env.is_none() && self.password_file.is_none();
        let password = self.resolve_password(ctx);
        if password.is_some() && username.is_none() {
            ctx.error(
                None,
                "mqtt.username",
                "`mqtt.username` is needed with a password (MQTT sends a password only \
                 with a user name), e.g. `username = \"gateway\"`",
            );
        }
        let keepalive = ctx.duration("mqtt.keepalive", &self.keepalive, DEFAULT_KEEPALIVE, "30s");
        if let Some(k) = &self.keepalive {
            if keepalive < Duration::from_secs(5) || keepalive > Duration::from_secs(65_535) {
                ctx.error(
                    Some(k.span()),
                    "mqtt.keepalive",
                    format!(
                        "`mqtt.keepalive` must be between `5s` and `18h`, e.g. `30s`; got `{}`",
                        k.get_ref()
                    ),
                );
            }
        }
        let max_packet_size = ctx.size(
            "mqtt.max_packet_size",
            &self.max_packet_size,
            DEFAULT_MAX_PACKET_SIZE,
            "256KiB",
        );
        if let Some(m) = &self.max_packet_size {
            if !(1024..=64 << 20).contains(&max_packet_size) {
                ctx.error(
                    Some(m.span()),
                    "mqtt.max_packet_size",
                    format!(
                        "`mqtt.max_packet_size` must be between `1KiB` and `64MiB`, e.g. \
                         `256KiB`; got `{}`",
                        m.get_ref()
                    ),
                );
            }
        }
        let reconnect_max_delay = ctx.duration(
            "mqtt.reconnect_max_delay",
            &self.reconnect_max_delay,
            DEFAULT_RECONNECT_MAX,
            "60s",
        );
        if let Some(r) = &self.reconnect_max_delay {
            if reconnect_max_delay < Duration::from_millis(100) {
                ctx.error(
                    Some(r.span()),
                    "mqtt.reconnect_max_delay",
                    "`mqtt.reconnect_max_delay` must be at least `100ms`, e.g. `60s`",
                );
            }
        }
        let tls = self.tls.as_ref().map(|t| validate_tls(t, ctx));
        if self.routes.is_empty() {
            ctx.warn(
                "`[mqtt]` has no `[[mqtt.routes]]`: the gateway connects to the broker but \
                 subscribes to nothing",
            );
        }
        let shared_group = self.shared_group.as_ref().and_then(|g| {
            let v = g.get_ref().trim();
            if v.is_empty() || v.len() > 64 || v.contains(['/', '+', '#']) {
                ctx.error(
                    Some(g.span()),
                    "mqtt.shared_group",
                    format!(
                        "`mqtt.shared_group` must be 1 to 64 characters without `/`, `+` or `#`, \
                         e.g. `barn-gateways`; got `{}`",
                        g.get_ref()
                    ),
                );
                None
            } else {
                Some(v.to_owned())
            }
        });
        let routes: Vec<MqttRoute> = self
            .routes
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| validate_route(r, i, ctx, buckets))
            .collect();
        // Filters that overlap partly are both subscribed: a broker sends
        // a retained message per subscription, and the second is dropped.
        let wanted: Vec<(String, u8)> = routes
            .iter()
            .map(|r| (r.topic.filter().to_owned(), r.qos))
            .collect();
        let subscribed: Vec<String> = crate::topic::subscriptions(&wanted)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        for (a, b) in crate::topic::Subscriptions::partial_overlaps(&subscribed) {
            ctx.warn(format!(
                "`[[mqtt.routes]]` topics `{a}` and `{b}` overlap: a retained message matching \
                 both arrives once per subscription; the second copy is skipped and counted as \
                 `duplicate`{}",
                if shared_group.is_some() {
                    ", except with `mqtt.shared_group`, where the copies can reach two \
                     gateways: make the topics disjoint"
                } else {
                    ""
                }
            ));
        }
        MqttConfig {
            host,
            port,
            client_id,
            username,
            password,
            keepalive,
            max_packet_size: max_packet_size as usize,
            clean_session: self.clean_session.unwrap_or(false),
            reconnect_max_delay,
            tls,
            routes,
            shared_group,
            password_inline: password_inline && self.password.is_some(),
        }
    }

    fn resolve_password(&self, ctx: &mut Ctx) -> Option<Secret> {
        let one = secrets::at_most_one(
            [&self.password_env, &self.password_file, &self.password],
            "mqtt.password",
            "`mqtt` gives more than one of `password_env`, `password_file` and \
             `password`; keep one"
                .into(),
            ctx,
        );
        if !one {
            return None;
        }
        if let Some(var) = &self.password_env {
            let name = var.get_ref().trim();
            return match secrets::from_env(name, ctx) {
                Lookup::Found(v) => Some(Secret::new(v)),
                Lookup::Unset | Lookup::Empty | Lookup::Unreadable(_) => {
                    ctx.error(
                        Some(var.span()),
                        "mqtt.password_env",
                        format!(
                            "`mqtt.password_env` names the environment variable `{name}`, \
                             which is not set (or empty)"
                        ),
                    );
                    None
                }
            };
        }
        if let Some(file) = &self.password_file {
            let (path, found) = secrets::from_file(file.get_ref(), ctx);
            return match found {
                Lookup::Found(v) => Some(Secret::new(v.trim_end_matches(['\r', '\n']))),
                Lookup::Unset | Lookup::Empty => {
                    ctx.error(
                        Some(file.span()),
                        "mqtt.password_file",
                        format!("`mqtt.password_file` `{}` is empty", path.display()),
                    );
                    None
                }
                Lookup::Unreadable(e) => {
                    ctx.error(
                        Some(file.span()),
                        "mqtt.password_file",
                        format!(
                            "`mqtt.password_file` `{}` cannot be read: {e}",
                            path.display()
                        ),
                    );
                    None
                }
            };
        }
        self.password
            .as_ref()
            .map(|p| Secret::new(p.get_ref().clone()))
    }
}

fn validate_tls(t: &RawTls, ctx: &mut Ctx) -> MqttTls {
    let mut file = |v: &Option<Spanned<String>>, key: &str| -> Option<PathBuf> {
        let v = v.as_ref()?;
        let path = secrets::credential_path(Path::new(v.get_ref().trim()), ctx);
        // Checked, not read: `check` may run as a user who cannot read it.
        if let Err(e) = crate::secret::regular_file(&path) {
            ctx.error(
                Some(v.span()),
                key,
                format!("`{key}` `{}` cannot be read: {e}", path.display()),
            );
        }
        Some(path)
    };
    let ca_file = file(&t.ca_file, "mqtt.tls.ca_file");
    let cert = file(&t.client_cert_file, "mqtt.tls.client_cert_file");
    let key = file(&t.client_key_file, "mqtt.tls.client_key_file");
    let client_auth = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            ctx.error(
                None,
                "mqtt.tls",
                "`mqtt.tls` needs both `client_cert_file` and `client_key_file` for a \
                 client certificate, or neither",
            );
            None
        }
    };
    MqttTls {
        ca_file,
        client_auth,
    }
}

fn validate_route(
    mut r: RawRoute,
    i: usize,
    ctx: &mut Ctx,
    buckets: &[Bucket],
) -> Option<MqttRoute> {
    let key = format!("mqtt.routes[{i}]");
    let preset = super::payload::apply_preset(&mut r, &key, ctx)?;
    let Some(topic_raw) = r.topic.clone() else {
        ctx.error(
            None,
            &format!("{key}.topic"),
            format!(
                "`{key}` needs a `topic`, e.g. `sensors/{{device}}`, or a `preset` that gives one \
                 (one of {})",
                super::presets::names().join(", ")
            ),
        );
        return None;
    };
    let r_topic = &topic_raw;
    let topic = match TopicPattern::parse(r_topic.get_ref()) {
        Ok(t) => t,
        Err(why) => {
            ctx.error(
                Some(r_topic.span()),
                &format!("{key}.topic"),
                format!(
                    "`{key}.topic` {why}, e.g. `sensors/{{device}}/{{source}}` or \
                     `sensors/+/temperature`; got `{}`",
                    r_topic.get_ref()
                ),
            );
            return None;
        }
    };
    let qos = ctx.int_in(&format!("{key}.qos"), &r.qos, 0..=2, 1) as u8;
    let names: HashSet<&str> = topic.names().collect();
    let mut ok = true;
    let mut source = |v: &Spanned<String>, field: &str, ctx: &mut Ctx| -> Option<Source> {
        let s = Source::parse(v.get_ref());
        if let Source::Segment(name) = &s {
            if !names.contains(name.as_str()) {
                ctx.error(
                    Some(v.span()),
                    &format!("{key}.{field}"),
                    format!(
                        "`{key}.{field}` uses `{{{name}}}`, which is not a named segment of \
                         the topic `{}`; name a segment like `sensors/{{{name}}}/…`",
                        r_topic.get_ref()
                    ),
                );
                ok = false;
                return None;
            }
        }
        Some(s)
    };
    let bucket = source(&r.bucket, "bucket", ctx);
    let data_source = r
        .data_source
        .as_ref()
        .and_then(|v| source(v, "data_source", ctx));
    let field = r.field.as_ref().and_then(|v| source(v, "field", ctx));
    let metadata: Vec<(String, Source)> = r
        .metadata
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), source(v, &format!("metadata.{k}"), ctx)?)))
        .collect();
    let known = |id: &str| buckets.iter().any(|b| b.id == id);
    let bucket_example = buckets
        .first()
        .map_or("507f1f77bcf86cd799439011", |b| b.id.as_str());
    let mut check_bucket = |v: &Spanned<String>, path: &str, ctx: &mut Ctx| -> String {
        let id = v.get_ref().trim().to_ascii_lowercase();
        if !known(&id) {
            ctx.error(
                Some(v.span()),
                path,
                format!(
                    "`{path}` must be the id of one of the `[[buckets]]`, e.g. \
                     `{bucket_example}`; got `{}`",
                    v.get_ref()
                ),
            );
            ok = false;
        }
        id
    };
    if let Some(Source::Fixed(_)) = &bucket {
        check_bucket(&r.bucket, &format!("{key}.bucket"), ctx);
    }
    let bucket_map: BTreeMap<String, String> = r
        .buckets
        .iter()
        .map(|(name, v)| {
            (
                name.clone(),
                check_bucket(v, &format!("{key}.buckets.{name}"), ctx),
            )
        })
        .collect();
    let mut check_source = |v: &Spanned<String>, path: &str, ctx: &mut Ctx| -> String {
        let id = v.get_ref().trim().to_ascii_lowercase();
        if !is_object_id(&id) {
            ctx.error(
                Some(v.span()),
                path,
                format!(
                    "`{path}` must be dakkio's 24-hex data source id, e.g. \
                     `507f1f77bcf86cd799439012`; got `{}`",
                    v.get_ref()
                ),
            );
            ok = false;
        }
        id
    };
    let data_source = match data_source {
        Some(Source::Fixed(_)) => Some(Source::Fixed(check_source(
            r.data_source.as_ref().expect("given"),
            &format!("{key}.data_source"),
            ctx,
        ))),
        other => other,
    };
    let data_sources: BTreeMap<String, String> = r
        .data_sources
        .iter()
        .map(|(name, v)| {
            (
                name.clone(),
                check_source(v, &format!("{key}.data_sources.{name}"), ctx),
            )
        })
        .collect();
    let unmapped_sources = match &r.unmapped_sources {
        None => UnmappedSources::Accept,
        Some(v) => {
            let segment = matches!(data_source, Some(Source::Segment(_)));
            if *v.get_ref() == UnmappedSources::Reject && (data_sources.is_empty() || !segment) {
                ctx.error(
                    Some(v.span()),
                    &format!("{key}.unmapped_sources"),
                    format!(
                        "`{key}.unmapped_sources = \"reject\"` needs `data_source = \"{{name}}\"` \
                         from a topic segment and a `[mqtt.routes.data_sources]` table of names to ids \
                         in that route; without them nothing could be accepted"
                    ),
                );
                ok = false;
            }
            *v.get_ref()
        }
    };
    let bucket = match bucket? {
        Source::Fixed(id) => Source::Fixed(id.trim().to_ascii_lowercase()),
        s => s,
    };
    let format = r.format.as_ref().map(|f| *f.get_ref()).unwrap_or_default();
    let payload = super::payload::validate(&r, &key, format, ctx);
    let retained = super::payload::retained(&r, &key, ctx);
    let skip_topics = super::payload::skip_topics(&r, &key, ctx);
    let (payload, retained, skip_topics) = (payload?, retained?, skip_topics?);
    ok.then_some(MqttRoute {
        topic,
        qos,
        bucket,
        buckets: bucket_map,
        data_source,
        data_sources,
        unmapped_sources,
        format,
        field,
        metadata,
        payload,
        retained,
        skip_topics,
        preset: preset.map(|p| p.name),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::tests::FakeEnv;
    use crate::config::{parse, Problem};

    use super::*;

    const BUCKETS: &str = "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\n";

    fn ok(text: &str, env: &[(&str, &str)]) -> MqttConfig {
        let env = FakeEnv(
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        parse(&format!("{BUCKETS}{text}"), Path::new("/etc/g.toml"), &env)
            .unwrap()
            .mqtt
            .unwrap()
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse(
            &format!("{BUCKETS}{text}"),
            Path::new("/etc/g.toml"),
            &FakeEnv(Default::default()),
        )
        .expect_err("refused")
        .problems
    }

    #[test]
    fn defaults() {
        let c = ok("[mqtt]\n", &[]);
        assert_eq!(c.host, "localhost");
        assert_eq!(c.port, 1883);
        assert_eq!(c.max_packet_size, 256 * 1024);
        assert!(!c.clean_session);
        assert_eq!(c.keepalive, Duration::from_secs(30));
        assert_eq!(c.client_id_or("gw-1"), "gw-1");
        assert!(c.password.is_none() && c.tls.is_none());
    }

    #[test]
    fn routes_with_segments_and_maps() {
        let c = ok(
            r#"
[mqtt]
host = "broker.lan"
username = "gw"
password_env = "MQTT_PW"
[[mqtt.routes]]
topic = "sensors/{device}/{source}"
bucket = "507f1f77bcf86cd799439011"
data_source = "{source}"
format = "json"
metadata = { deviceId = "{device}", site = "barn" }
[mqtt.routes.data_sources]
livingroom = "507f1f77bcf86cd799439012"
"#,
            &[("MQTT_PW", "hunter2")],
        );
        assert_eq!(c.password.as_ref().unwrap().expose(), "hunter2");
        let r = &c.routes[0];
        assert_eq!(r.qos, 1);
        assert_eq!(r.topic.filter(), "sensors/+/+");
        assert_eq!(r.data_source, Some(Source::Segment("source".into())));
        assert_eq!(r.data_sources["livingroom"], "507f1f77bcf86cd799439012");
        assert_eq!(
            r.metadata,
            vec![
                ("deviceId".to_owned(), Source::Segment("device".into())),
                ("site".to_owned(), Source::Fixed("barn".into())),
            ]
        );
        assert_eq!(r.format, PayloadFormat::Json);
    }

    #[test]
    fn bad_routes_name_the_key() {
        let p = problems(
            r#"
[mqtt]
[[mqtt.routes]]
topic = "a/#/b"
bucket = "507f1f77bcf86cd799439011"
[[mqtt.routes]]
topic = "a/{x}"
bucket = "aaaaaaaaaaaaaaaaaaaaaaaa"
data_source = "{y}"
qos = 3
"#,
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"mqtt.routes[0].topic"), "{p:#?}");
        assert!(keys.contains(&"mqtt.routes[1].bucket"), "{p:#?}");
        assert!(keys.contains(&"mqtt.routes[1].data_source"), "{p:#?}");
        assert!(keys.contains(&"mqtt.routes[1].qos"), "{p:#?}");
        let b = p.iter().find(|p| p.key == "mqtt.routes[1].bucket").unwrap();
        assert!(
            b.message.contains("one of the `[[buckets]]`"),
            "{}",
            b.message
        );
        assert_eq!(b.line, Some(10));
    }

    #[test]
    fn password_sources() {
        let p = problems("[mqtt]\nusername = \"u\"\npassword_env = \"NOPE\"\n");
        assert!(p[0].message.contains("`NOPE`"), "{}", p[0].message);
        let p = problems("[mqtt]\nusername = \"u\"\npassword = \"a\"\npassword_env = \"B\"\n");
        assert!(p[0].message.contains("more than one"), "{}", p[0].message);
        let p = problems("[mqtt]\npassword = \"a\"\n");
        assert_eq!(p[0].key, "mqtt.username");
        let shown = format!(
            "{:?}",
            ok("[mqtt]\nusername = \"u\"\npassword = \"s3cr3t\"\n", &[])
        );
        assert!(!shown.contains("s3cr3t"));
    }

    #[test]
    fn unmapped_sources_needs_a_map() {
        let c = ok(
            r#"
[mqtt]
[[mqtt.routes]]
topic = "sensors/{source}"
bucket = "507f1f77bcf86cd799439011"
data_source = "{source}"
unmapped_sources = "reject"
[mqtt.routes.data_sources]
livingroom = "507f1f77bcf86cd799439012"
[[mqtt.routes]]
topic = "other/{source}"
bucket = "507f1f77bcf86cd799439011"
data_source = "{source}"
"#,
            &[],
        );
        assert_eq!(c.routes[0].unmapped_sources, UnmappedSources::Reject);
        assert_eq!(c.routes[1].unmapped_sources, UnmappedSources::Accept);
        let p = problems(
            r#"
[mqtt]
[[mqtt.routes]]
topic = "sensors/{source}"
bucket = "507f1f77bcf86cd799439011"
data_source = "{source}"
unmapped_sources = "reject"
"#,
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_eq!(p[0].key, "mqtt.routes[0].unmapped_sources");
        assert_eq!(p[0].line, Some(9));
        assert!(p[0].message.contains("data_sources"), "{}", p[0].message);
        let p = problems(
            "[mqtt]\n[[mqtt.routes]]\ntopic = \"s/{source}\"\n\
             bucket = \"507f1f77bcf86cd799439011\"\ndata_source = \"{source}\"\n\
             unmapped_sources = \"drop\"\n",
        );
        assert!(p[0].message.contains("accept"), "{p:#?}");
    }

    #[test]
    fn sizes_and_unknown_keys() {
        let p = problems("[mqtt]\nmax_packet_size = \"12\"\n");
        assert_eq!(p[0].key, "mqtt.max_packet_size");
        let p = problems("[mqtt]\nclean_sesion = true\n");
        assert!(
            p[0].message.contains("did you mean `clean_session`"),
            "{}",
            p[0].message
        );
    }
}
