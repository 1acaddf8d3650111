//! `[gateway]` (identity and data directory) and `[log]`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Config, Ctx};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/dakkio-gateway";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    id: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Sent upstream in every point's metadata (`gatewayId`); default: the
    /// hostname.
    pub id: String,
    pub data_dir: PathBuf,
}

impl RawGateway {
    pub(crate) fn validate(self, ctx: &mut Ctx) -> GatewayConfig {
        let id = match self.id {
            Some(v) => {
                let id = v.get_ref().trim().to_owned();
                let ok = !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    ctx.error(
                        Some(v.span()),
                        "gateway.id",
                        format!(
                            "`gateway.id` must be 1 to 64 letters, digits, `-`, `_` or `.`, \
                             e.g. `barn-3`; got `{}`",
                            v.get_ref()
                        ),
                    );
                }
                id
            }
            None => ctx
                .env
                .hostname()
                .unwrap_or_else(|| "dakkio-gateway".into()),
        };
        let data_dir = match self.data_dir {
            Some(v) if v.get_ref().trim().is_empty() => {
                ctx.error(
                    Some(v.span()),
                    "gateway.data_dir",
                    format!("`gateway.data_dir` must not be empty, e.g. `{DEFAULT_DATA_DIR}`"),
                );
                PathBuf::from(DEFAULT_DATA_DIR)
            }
            Some(v) => ctx.relative_to_config(Path::new(v.get_ref())),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };
        GatewayConfig { id, data_dir }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    level: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `dakkio_gateway=debug,info`); `RUST_LOG`
    /// overrides it.
    pub level: String,
}

impl RawLog {
    pub(crate) fn validate(self, ctx: &mut Ctx) -> LogConfig {
        let level = match self.level {
            Some(v) => {
                let s = v.get_ref().trim().to_owned();
                if !is_log_filter(&s) {
                    ctx.error(
                        Some(v.span()),
                        "log.level",
                        format!(
                            "`log.level` must be a level or filter such as `info` or \
                             `dakkio_gateway=debug,info`; got `{s}`"
                        ),
                    );
                }
                s
            }
            None => "info".into(),
        };
        LogConfig { level }
    }
}

/// A WARN for inline keys in a file that others can read.
pub(crate) fn inline_key_warning(path: &Path, config: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let inline: Vec<&str> = config
        .buckets
        .iter()
        .filter(|b| b.key_source_inline)
        .map(|b| b.name.as_str())
        .collect();
    if inline.is_empty() {
        return None;
    }
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o077 == 0 {
        return None;
    }
    Some(format!(
        "`{}` holds inline write keys (buckets: {}) and is readable by group or others \
         (mode {:o}); run `chmod 600` on it, or move the keys to `write_key_file` / \
         `write_key_env`",
        path.display(),
        inline.join(", "),
        mode & 0o777
    ))
}

/// WARNs for secrets others can read: an inline MQTT password in a config
/// file readable by group or others, and a TLS private key file anyone can
/// read. Never contains a secret; files that cannot be examined are left to
/// the checks that read them.
pub(crate) fn readable_secret_warnings(path: &Path, config: &Config) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| Some(std::fs::metadata(p).ok()?.permissions().mode() & 0o777);
    let mut out = Vec::new();
    if config.mqtt.as_ref().is_some_and(|m| m.password_inline) {
        if let Some(mode) = mode(path).filter(|m| m & 0o044 != 0) {
            out.push(format!(
                "`{}` holds the inline `mqtt.password` and is readable by group or others \
                 (mode {mode:o}); run `chmod 600` on it, or move the password to \
                 `password_file` / `password_env`",
                path.display()
            ));
        }
    }
    let keys = [
        config
            .mqtt
            .as_ref()
            .and_then(|m| m.tls.as_ref())
            .and_then(|t| t.client_auth.as_ref())
            .map(|(_, k)| ("mqtt.tls.client_key_file", k)),
        config
            .api
            .tls
            .as_ref()
            .map(|t| ("api.tls_key_file", &t.key_file)),
    ];
    for (key, file) in keys.into_iter().flatten() {
        if let Some(mode) = mode(file).filter(|m| m & 0o004 != 0) {
            out.push(format!(
                "`{key}` `{}` is a private key readable by everyone (mode {mode:o}); run \
                 `chmod 600` on it (or `chmod 640` with the gateway's group)",
                file.display()
            ));
        }
    }
    out
}

/// A `tracing` filter such as `info` or `dakkio_gateway=debug,info`: each
/// directive a level, a module path, or `path=level`. (EnvFilter itself
/// accepts almost any word as a target name, so a typo would pass silently.)
fn is_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    let is_path = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    !s.trim().is_empty()
        && s.split(',').all(|d| match d.trim().split_once('=') {
            Some((target, level)) => is_path(target) && is_level(level),
            None => is_level(d.trim()) || is_path(d.trim()),
        })
}
