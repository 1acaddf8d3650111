//! Configuration: TOML text → `Raw…` structs (serde, unknown keys refused)
//! → validated [`Config`] with typed values.
//!
//! Invariants:
//! - every problem found is reported, not just the first, and each one names
//!   the file, line and column, the key path, the bad value and an example of
//!   a good one ([`Problem`]);
//! - secrets are resolved here (env, file under `$CREDENTIALS_DIRECTORY`, or
//!   inline; one lookup in `secrets.rs`) into [`crate::secret::Secret`], whose
//!   `Debug` never shows the value; key and config files are read only if
//!   they are small regular files, never blocking;
//! - no message shows a key: key-shaped text is masked in every problem and
//!   warning, and a key pasted where a name, path or id belongs is refused;
//! - a `Config` that exists is valid: the rest of the gateway never re-checks;
//! - plain data: this module imports nothing from `ingest`, `uplink`, `api`
//!   or `store`, only modules that import nothing above them (`reading`,
//!   `secret`, `tls`, `topic`); the input formats a config names live in
//!   `formats.rs` and the decoders re-export them.
//!
//! Each section lives in its own file with its raw and validated types; this
//! file holds the document, the error type and the shared value parsers.

mod alerts;
mod api;
mod buckets;
mod clock;
mod context;
pub mod formats;
mod gateway;
mod modbus;
mod mqtt;
pub mod payload;
pub mod presets;
mod secrets;
mod serial;
mod store;
pub mod timefmt;
pub mod units;
mod uplink;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use alerts::{AlertsConfig, AllowEntry};
pub use api::{key_sha256, AdminKey, ApiConfig, ApiTls, MetricsAuth};
pub use buckets::{Bucket, BucketKeyState, StoreShare};
pub use clock::{ClockConfig, EarlierBoot};
pub use context::{Ctx, Problem};
pub use formats::{InfluxPrecision, LineFormat, PayloadFormat};
pub use gateway::{GatewayConfig, LogConfig};
pub use modbus::{
    DataType, Function as ModbusFunction, ModbusBus, ModbusDevice, ModbusTransport, Order,
    Register as ModbusRegister,
};
pub use mqtt::{MqttConfig, MqttRoute, MqttTls, Source, UnmappedSources};
pub use serial::{FlowControl, Parity, Poll, SerialConfig, SerialSource, DEFAULT_MAX_LINE};
pub use store::{OnFull, StoreConfig, Synchronous};
pub use uplink::{UplinkConfig, MAX_BATCH_SIZE};

/// The default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/dakkio-gateway/gateway.toml";

/// The annotated example configuration, also the quick start's embedded
/// defaults (`dakkio-gateway config example` prints it).
pub const EXAMPLE: &str = include_str!("../../config/gateway.toml");

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (named in later reload errors).
    pub path: PathBuf,
    pub gateway: GatewayConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub buckets: Vec<Bucket>,
    pub uplink: UplinkConfig,
    pub api: ApiConfig,
    /// Absent when the file has no `[mqtt]` table.
    pub mqtt: Option<MqttConfig>,
    pub serial: Vec<SerialConfig>,
    /// `[alerts]`: where alert notifications may go.
    pub alerts: AlertsConfig,
    /// `[[modbus]]` buses (RTU over a serial device, or TCP).
    pub modbus: Vec<ModbusBus>,
    pub clock: ClockConfig,
    /// Files the secrets were read from (key files, the MQTT password
    /// file): the live reload watches them. Paths only, never contents.
    pub secret_files: Vec<PathBuf>,
    /// Things worth a WARN at start that do not stop the gateway (an inline
    /// key in a world-readable file, …). Never contains a secret.
    pub warnings: Vec<String>,
}

impl Config {
    pub fn bucket(&self, id: &str) -> Option<&Bucket> {
        self.buckets.iter().find(|b| b.id == id)
    }

    /// The data sources this configuration names for a bucket (data source
    /// id → a name for people): fixed ids and name maps of MQTT routes and
    /// serial ports and Modbus devices. Sources taken from a topic segment without a map, or
    /// from the payload, are known only once readings arrive.
    pub fn declared_sources(&self, bucket_id: &str) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        for r in self.mqtt.iter().flat_map(|m| &m.routes) {
            let routes_here = match &r.bucket {
                Source::Fixed(id) => id == bucket_id,
                Source::Segment(_) => r.buckets.values().any(|id| id == bucket_id),
            };
            if !routes_here {
                continue;
            }
            match &r.data_source {
                Some(Source::Fixed(id)) => {
                    out.entry(id.clone()).or_insert_with(|| id.clone());
                }
                Some(Source::Segment(_)) => {
                    for (name, id) in &r.data_sources {
                        out.insert(id.clone(), name.clone());
                    }
                }
                None => {}
            }
        }
        for p in self.serial.iter().filter(|p| p.bucket_id == bucket_id) {
            match &p.source {
                SerialSource::Fixed(id) => {
                    out.insert(id.clone(), p.name.clone());
                }
                SerialSource::ByField { map, .. } => {
                    for (name, id) in map {
                        out.insert(id.clone(), name.clone());
                    }
                }
            }
        }
        for d in self
            .modbus
            .iter()
            .flat_map(|b| &b.devices)
            .filter(|d| d.bucket_id == bucket_id)
        {
            out.insert(d.data_source_id.clone(), d.name.clone());
        }
        out
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn single(file: &Path, message: String) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            problems: vec![Problem {
                file: file.to_owned(),
                line: None,
                column: None,
                key: String::new(),
                message,
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration `{}` ({n} problem{})",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    gateway: gateway::RawGateway,
    #[serde(default)]
    log: gateway::RawLog,
    #[serde(default)]
    store: store::RawStore,
    #[serde(default)]
    buckets: Vec<buckets::RawBucket>,
    #[serde(default)]
    uplink: uplink::RawUplink,
    #[serde(default)]
    api: api::RawApi,
    mqtt: Option<mqtt::RawMqtt>,
    #[serde(default)]
    serial: Vec<serial::RawSerial>,
    #[serde(default)]
    alerts: alerts::RawAlerts,
    #[serde(default)]
    modbus: Vec<modbus::RawModbus>,
    #[serde(default)]
    clock: clock::RawClock,
}

/// Where secrets and defaults come from: the process environment in
/// production, a fixed map in tests.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn hostname(&self) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn hostname(&self) -> Option<String> {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname writes a
        // NUL-terminated name into it (truncated if too long).
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
        (!name.is_empty()).then_some(name)
    }
}

/// Read and validate the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = crate::secret::read_small_text(path, crate::secret::MAX_FILE).map_err(|e| {
        let hint = if e.is_not_found() {
            "; `dakkio-gateway config example` prints a commented example to start from"
        } else {
            ""
        };
        ConfigError::single(path, format!("cannot read the file: {e}{hint}"))
    })?;
    let mut config = parse(&text, path, &ProcessEnv)?;
    if let Some(w) = gateway::inline_key_warning(path, &config) {
        config.warnings.push(w);
    }
    let more = gateway::readable_secret_warnings(path, &config);
    config.warnings.extend(
        more.iter()
            .map(|w| crate::secret::mask_keys(w).into_owned()),
    );
    Ok(config)
}

/// Parse and validate configuration text; `file` is used in messages and to
/// resolve relative paths.
pub fn parse(text: &str, file: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
    let mut ctx = Ctx::new(file, text, env);
    let raw: RawConfig = match deserialize(text) {
        Ok(raw) => raw,
        Err(problem) => {
            ctx.push_problem(problem);
            return Err(ctx.into_error());
        }
    };
    let gateway = raw.gateway.validate(&mut ctx);
    let log = raw.log.validate(&mut ctx);
    let store = raw.store.validate(&mut ctx);
    let raw_buckets = raw.buckets;
    let buckets = buckets::validate_all(&raw_buckets, &mut ctx);
    buckets::check_shares(&raw_buckets, &buckets, store.max_size, &mut ctx);
    let uplink = raw.uplink.validate(&mut ctx, &buckets);
    let api = raw.api.validate(&mut ctx, &buckets);
    let mqtt = raw.mqtt.map(|m| m.validate(&mut ctx, &buckets));
    let serial = serial::validate_all(raw.serial, &mut ctx, &buckets);
    let alerts = raw.alerts.validate(&mut ctx, mqtt.is_some());
    let modbus = modbus::validate_all(raw.modbus, &mut ctx, &buckets);
    let clock = raw.clock.validate(&mut ctx);
    let warnings = std::mem::take(&mut ctx.warnings);
    let secret_files = ctx.secret_files.take();
    if ctx.has_problems() {
        return Err(ctx.into_error());
    }
    Ok(Config {
        path: file.to_owned(),
        gateway,
        log,
        store,
        buckets,
        uplink,
        api,
        mqtt,
        serial,
        alerts,
        modbus,
        clock,
        secret_files,
        warnings,
    })
}

/// The dotted key a syntax error points at (`uplink.batch_size` for a
/// duplicate key), from the key under the span and the table header above
/// it; `None` when the span is not on a key.
fn key_at(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    let key = text.get(span.clone())?.trim().trim_matches('"');
    let bare = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    };
    if !bare(key) {
        return None;
    }
    let table = text[..span.start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match table {
        Some(t) if bare(&t) => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

/// Deserialise with the key path tracked, turning serde's messages into a
/// [`Problem`] with a did-you-mean for unknown keys.
fn deserialize(text: &str) -> Result<RawConfig, context::RawProblem> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| context::RawProblem {
        key: e
            .span()
            .and_then(|span| key_at(text, span))
            .unwrap_or_default(),
        span: e.span(),
        message: context::describe_serde_message(e.message()),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` values add a private inner field to the path.
        let path = e
            .path()
            .to_string()
            .split(".$__serde_spanned")
            .next()
            .unwrap_or_default()
            .to_owned();
        let inner = e.into_inner();
        context::RawProblem {
            span: inner.span(),
            key: if path == "." { String::new() } else { path },
            message: context::describe_serde_message(inner.message()),
        }
    })
}

#[cfg(test)]
mod tests;
