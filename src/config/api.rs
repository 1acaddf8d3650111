//! `[api]`: the local dakkio API — where it listens, TLS, request limits,
//! the admin key (kept only as a SHA-256 hash), `/metrics` access and
//! failed-auth throttling.
//!
//! Invariants enforced here:
//! - listening beyond loopback without TLS is refused unless the operator
//!   sets `allow_insecure_plaintext = true`;
//! - the admin key is hashed as soon as it is read; the plaintext never
//!   leaves this function (and is never in `ApiConfig`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::secrets::{self, Lookup};
use super::{Bucket, Ctx};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    enabled: Option<bool>,
    listen: Option<Spanned<String>>,
    tls_cert_file: Option<Spanned<String>>,
    tls_key_file: Option<Spanned<String>>,
    allow_insecure_plaintext: Option<bool>,
    body_limit: Option<Spanned<String>>,
    max_body_bytes_in_flight: Option<Spanned<String>>,
    max_answer_bytes: Option<Spanned<String>>,
    max_answer_bytes_in_flight: Option<Spanned<String>>,
    header_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    write_timeout: Option<Spanned<String>>,
    query_timeout: Option<Spanned<String>>,
    max_parallel_queries: Option<Spanned<i64>>,
    max_requests_per_connection: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_fields_per_point: Option<Spanned<i64>>,
    admin_key_env: Option<Spanned<String>>,
    admin_key_file: Option<Spanned<String>>,
    admin_key_sha256: Option<Spanned<String>>,
    metrics_auth: Option<MetricsAuth>,
    auth_failures_per_minute: Option<Spanned<i64>>,
    auth_throttle_clients: Option<Spanned<i64>>,
    status_page: Option<Spanned<bool>>,
}

/// Who may read `/metrics` and the details of `/health` (its `status` is
/// always open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsAuth {
    /// Anyone who can reach the listener.
    None,
    /// Any valid key (admin, write or read) in `X-API-Key` (the default:
    /// they show the broker address, error texts, bucket names and queue
    /// depths).
    Key,
}

/// The admin key, as a hash only.
#[derive(Clone, PartialEq)]
pub struct AdminKey {
    pub sha256: [u8; 32],
    /// For messages: `environment variable `X``, `file `…``, `admin_key_sha256`.
    pub source: String,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminKey(sha256 from {})", self.source)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub tls: Option<ApiTls>,
    /// Request bodies above this get 413.
    pub body_limit: usize,
    /// Bytes of request bodies being received and handled at once (a body
    /// of unknown length counts as `body_limit`); beyond it a request waits
    /// briefly, then gets 503.
    pub max_body_bytes_in_flight: usize,
    /// Bytes of one query answer: a page stops early (with `hasMore` and
    /// `count` saying where the next one starts) once it holds this much;
    /// one reading is always answered, whatever its size.
    pub max_answer_bytes: usize,
    /// Value fields of one ingested point (dakkio-like bound; aggregation
    /// and storage are linear in it); beyond it the request gets 400.
    pub max_fields_per_point: usize,
    /// Bytes of answers built and not yet handed to the socket, all
    /// connections together (a client that never reads holds its answer
    /// until `write_timeout`); beyond it an answer waits briefly, then the
    /// request gets 503.
    pub max_answer_bytes_in_flight: usize,
    /// Time to receive a request's headers.
    pub header_timeout: Duration,
    /// Time to receive the body and answer.
    pub request_timeout: Duration,
    /// A connection whose client reads nothing of an answer for this long
    /// is closed (pipelining without reading would hold it for good).
    pub write_timeout: Duration,
    /// Requests served on one connection; the last answer says
    /// `Connection: close`.
    pub max_requests_per_connection: u64,
    /// A query (raw page or aggregation) running longer is stopped: 503.
    pub query_timeout: Duration,
    /// Queries run at once; more wait (within `request_timeout`), so the
    /// store's read threads always have room for the uplink's claims.
    pub max_parallel_queries: usize,
    /// Open connections beyond this wait in the kernel's backlog.
    pub max_connections: usize,
    /// `None`: key management and admin endpoints answer 401.
    pub admin_key: Option<AdminKey>,
    pub metrics_auth: MetricsAuth,
    /// Failed authentications per client address per minute before 429.
    pub auth_failures_per_minute: u32,
    /// Client addresses tracked for throttling (bounded memory).
    pub auth_throttle_clients: usize,
    /// `GET /` serves the status page (its JSON, `GET /api/status`, is
    /// served either way).
    pub status_page: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            body_limit: 2 << 20,
            max_body_bytes_in_flight: 8 << 20,
            max_answer_bytes: 4 << 20,
            max_fields_per_point: 1000,
            max_answer_bytes_in_flight: 16 << 20,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_requests_per_connection: 100,
            query_timeout: Duration::from_secs(10),
            max_parallel_queries: 2,
            max_connections: 64,
            admin_key: None,
            metrics_auth: MetricsAuth::Key,
            auth_failures_per_minute: 10,
            auth_throttle_clients: 4096,
            status_page: true,
        }
    }
}

/// SHA-256 of a key, as stored and compared.
pub fn key_sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl RawApi {
    pub(crate) fn validate(self, ctx: &mut Ctx, _buckets: &[Bucket]) -> ApiConfig {
        let d = ApiConfig::default();
        let listen = match &self.listen {
            None => d.listen,
            Some(v) => match v.get_ref().trim().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    ctx.error(
                        Some(v.span()),
                        "api.listen",
                        format!(
                            "`api.listen` must be an address and port, e.g. `127.0.0.1:8080` \
                             or `[::1]:8080`; got `{}`",
                            v.get_ref()
                        ),
                    );
                    d.listen
                }
            },
        };
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(c), Some(k)) => Some(ApiTls {
                cert_file: ctx.relative_to_config(std::path::Path::new(c.get_ref().trim())),
                key_file: ctx.relative_to_config(std::path::Path::new(k.get_ref().trim())),
            }),
            (None, None) => None,
            (Some(c), None) | (None, Some(c)) => {
                ctx.error(
                    Some(c.span()),
                    "api.tls_cert_file",
                    "`api.tls_cert_file` and `api.tls_key_file` go together: give both \
                     (PEM files), e.g. `tls_cert_file = \"api.crt\"` and \
                     `tls_key_file = \"api.key\"`",
                );
                None
            }
        };
        let enabled = self.enabled.unwrap_or(d.enabled);
        if enabled
            && tls.is_none()
            && !listen.ip().is_loopback()
            && !self.allow_insecure_plaintext.unwrap_or(false)
        {
            ctx.error(
                self.listen.as_ref().map(|v| v.span()),
                "api.listen",
                format!(
                    "`api.listen` = `{listen}` is reachable beyond this machine, so keys would \
                     travel in clear text: set `api.tls_cert_file` and `api.tls_key_file`, \
                     listen on `127.0.0.1:8080`, or set `api.allow_insecure_plaintext = true` \
                     if the network is trusted"
                ),
            );
        }
        let body_limit = ctx.size(
            "api.body_limit",
            &self.body_limit,
            d.body_limit as u64,
            "2MiB",
        );
        if !(1024..=(256 << 20)).contains(&body_limit) {
            ctx.error(
                self.body_limit.as_ref().map(|v| v.span()),
                "api.body_limit",
                "`api.body_limit` must be between 1KiB and 256MiB, e.g. `2MiB`",
            );
        }
        let max_body_bytes_in_flight = ctx.size(
            "api.max_body_bytes_in_flight",
            &self.max_body_bytes_in_flight,
            d.max_body_bytes_in_flight as u64,
            "8MiB",
        );
        if max_body_bytes_in_flight < body_limit || max_body_bytes_in_flight > (1 << 30) {
            ctx.error(
                self.max_body_bytes_in_flight.as_ref().map(|v| v.span()),
                "api.max_body_bytes_in_flight",
                format!(
                    "`api.max_body_bytes_in_flight` must be at least `api.body_limit` \
                     ({body_limit} bytes) and at most 1GiB, e.g. `8MiB`"
                ),
            );
        }
        let max_answer_bytes = ctx.size(
            "api.max_answer_bytes",
            &self.max_answer_bytes,
            d.max_answer_bytes as u64,
            "4MiB",
        );
        if !((64 << 10)..=(256 << 20)).contains(&max_answer_bytes) {
            ctx.error(
                self.max_answer_bytes.as_ref().map(|v| v.span()),
                "api.max_answer_bytes",
                "`api.max_answer_bytes` must be between 64KiB and 256MiB, e.g. `4MiB`",
            );
        }
        let max_answer_bytes_in_flight = ctx.size(
            "api.max_answer_bytes_in_flight",
            &self.max_answer_bytes_in_flight,
            d.max_answer_bytes_in_flight as u64,
            "16MiB",
        );
        if max_answer_bytes_in_flight < max_answer_bytes || max_answer_bytes_in_flight > (1 << 30) {
            ctx.error(
                self.max_answer_bytes_in_flight.as_ref().map(|v| v.span()),
                "api.max_answer_bytes_in_flight",
                format!(
                    "`api.max_answer_bytes_in_flight` must be at least `api.max_answer_bytes` \
                     ({max_answer_bytes} bytes) and at most 1GiB, e.g. `16MiB`"
                ),
            );
        }
        let header_timeout = ctx.duration(
            "api.header_timeout",
            &self.header_timeout,
            d.header_timeout,
            "10s",
        );
        let request_timeout = ctx.duration(
            "api.request_timeout",
            &self.request_timeout,
            d.request_timeout,
            "30s",
        );
        let write_timeout = ctx.duration(
            "api.write_timeout",
            &self.write_timeout,
            d.write_timeout,
            "10s",
        );
        let query_timeout = ctx.duration(
            "api.query_timeout",
            &self.query_timeout,
            d.query_timeout,
            "10s",
        );
        for (key, v, raw) in [
            ("api.query_timeout", query_timeout, &self.query_timeout),
            ("api.header_timeout", header_timeout, &self.header_timeout),
            ("api.write_timeout", write_timeout, &self.write_timeout),
            (
                "api.request_timeout",
                request_timeout,
                &self.request_timeout,
            ),
        ] {
            if v.is_zero() {
                ctx.error(
                    raw.as_ref().map(|r| r.span()),
                    key,
                    format!("`{key}` must be more than zero, e.g. `10s`"),
                );
            }
        }
        let max_connections = ctx.int_in(
            "api.max_connections",
            &self.max_connections,
            1..=100_000,
            d.max_connections as i64,
        ) as usize;
        let admin_key = self.admin_key(ctx);
        let status_page = self
            .status_page
            .as_ref()
            .map_or(d.status_page, |v| *v.get_ref());
        if !enabled && self.status_page.as_ref().is_some_and(|v| *v.get_ref()) {
            ctx.warn(
                "`api.status_page = true` has no effect while `api.enabled = false`: the status \
                 page is served by the local API"
                    .to_owned(),
            );
        }
        ApiConfig {
            enabled,
            listen,
            tls,
            body_limit: body_limit as usize,
            max_body_bytes_in_flight: max_body_bytes_in_flight as usize,
            max_answer_bytes: max_answer_bytes as usize,
            max_answer_bytes_in_flight: max_answer_bytes_in_flight as usize,
            max_fields_per_point: ctx.int_in(
                "api.max_fields_per_point",
                &self.max_fields_per_point,
                1..=100_000,
                d.max_fields_per_point as i64,
            ) as usize,
            header_timeout,
            request_timeout,
            write_timeout,
            max_requests_per_connection: ctx.int_in(
                "api.max_requests_per_connection",
                &self.max_requests_per_connection,
                1..=1_000_000_000,
                d.max_requests_per_connection as i64,
            ) as u64,
            query_timeout,
            max_parallel_queries: ctx.int_in(
                "api.max_parallel_queries",
                &self.max_parallel_queries,
                1..=4,
                d.max_parallel_queries as i64,
            ) as usize,
            max_connections,
            admin_key,
            metrics_auth: self.metrics_auth.unwrap_or(d.metrics_auth),
            auth_failures_per_minute: ctx.int_in(
                "api.auth_failures_per_minute",
                &self.auth_failures_per_minute,
                1..=1_000_000,
                d.auth_failures_per_minute as i64,
            ) as u32,
            auth_throttle_clients: ctx.int_in(
                "api.auth_throttle_clients",
                &self.auth_throttle_clients,
                16..=1_000_000,
                d.auth_throttle_clients as i64,
            ) as usize,
            status_page,
        }
    }

    fn admin_key(&self, ctx: &mut Ctx) -> Option<AdminKey> {
        let one = secrets::at_most_one(
            [
                &self.admin_key_env,
                &self.admin_key_file,
                &self.admin_key_sha256,
            ],
            "api.admin_key",
            "`[api]` gives more than one of `admin_key_env`, `admin_key_file` and \
             `admin_key_sha256`; keep one"
                .into(),
            ctx,
        );
        if !one {
            return None;
        }
        if let Some(h) = &self.admin_key_sha256 {
            let text = h.get_ref().trim().to_ascii_lowercase();
            let mut out = [0u8; 32];
            let ok = text.len() == 64
                && text.bytes().all(|b| b.is_ascii_hexdigit())
                && (0..32).all(|i| match u8::from_str_radix(&text[2 * i..2 * i + 2], 16) {
                    Ok(b) => {
                        out[i] = b;
                        true
                    }
                    Err(_) => false,
                });
            if !ok {
                ctx.error(
                    Some(h.span()),
                    "api.admin_key_sha256",
                    "`api.admin_key_sha256` must be 64 hexadecimal characters, as printed by \
                     `echo -n \"$KEY\" | dakkio-gateway keys hash` (the value is not shown)",
                );
                return None;
            }
            return Some(AdminKey {
                sha256: out,
                source: "`api.admin_key_sha256`".into(),
            });
        }
        let (value, source, field, span) = if let Some(var) = &self.admin_key_env {
            let name = var.get_ref().trim();
            if crate::secret::looks_like_key(name) {
                ctx.error(
                    Some(var.span()),
                    "api.admin_key_env",
                    "`api.admin_key_env` holds what looks like a dakkio key, pasted where the \
                     name of an environment variable was expected (the key is not shown); name \
                     the variable that holds the key, e.g. \
                     `admin_key_env = \"DAKKIO_ADMIN_KEY\"`",
                );
                return None;
            }
            let source = format!("environment variable `{name}`");
            match secrets::from_env(name, ctx) {
                Lookup::Found(v) => (v, source, "admin_key_env", var.span()),
                Lookup::Unset | Lookup::Empty | Lookup::Unreadable(_) => {
                    ctx.warn(format!(
                        "`api.admin_key_env`: {source} is not set; key management and admin \
                         endpoints of the local API are unavailable"
                    ));
                    return None;
                }
            }
        } else if let Some(file) = &self.admin_key_file {
            let (path, found) = secrets::from_file(file.get_ref(), ctx);
            let source = format!("file `{}`", path.display());
            match found {
                Lookup::Found(v) => (v, source, "admin_key_file", file.span()),
                Lookup::Unreadable(e) => {
                    ctx.error(
                        Some(file.span()),
                        "api.admin_key_file",
                        format!(
                            "`api.admin_key_file`: {source} cannot be read: {e}; it must hold \
                             the admin key (`dakkio_a_…`)"
                        ),
                    );
                    return None;
                }
                Lookup::Unset | Lookup::Empty => {
                    ctx.error(
                        Some(file.span()),
                        "api.admin_key_file",
                        format!(
                            "`api.admin_key_file`: {source} cannot be read or is empty; it \
                             must hold the admin key (`dakkio_a_…`)"
                        ),
                    );
                    return None;
                }
            }
        } else {
            return None;
        };
        let v = value.trim();
        let well_formed = v
            .strip_prefix("dakkio_a_")
            .is_some_and(|t| !t.is_empty() && t.bytes().all(|c| c.is_ascii_alphanumeric()));
        if !well_formed {
            ctx.error(
                Some(span),
                &format!("api.{field}"),
                format!(
                    "`api.{field}` ({source}) is not an admin key: expected `dakkio_a_` \
                     followed by letters and digits (the value is not shown)"
                ),
            );
            return None;
        }
        Some(AdminKey {
            sha256: key_sha256(v),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use crate::config::tests::FakeEnv;
    use crate::config::{parse, Problem};

    use super::*;

    fn api(text: &str, env: &[(&str, &str)]) -> Result<ApiConfig, Vec<Problem>> {
        let env = FakeEnv(
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        );
        parse(text, Path::new("/etc/g.toml"), &env)
            .map(|c| c.api)
            .map_err(|e| e.problems)
    }

    #[test]
    fn defaults() {
        assert_eq!(api("", &[]).unwrap(), ApiConfig::default());
    }

    #[test]
    fn admin_key_is_hashed_from_env_or_given_as_hash() {
        let key = "dakkio_a_0123456789abcdefABCDEF";
        let c = api("[api]\nadmin_key_env = \"ADMIN\"\n", &[("ADMIN", key)]).unwrap();
        let h = c.admin_key.unwrap();
        assert_eq!(h.sha256, key_sha256(key));
        assert!(!format!("{h:?}").contains(key));
        let hex: String = key_sha256(key).iter().map(|b| format!("{b:02x}")).collect();
        let c = api(&format!("[api]\nadmin_key_sha256 = \"{hex}\"\n"), &[]).unwrap();
        assert_eq!(c.admin_key.unwrap().sha256, key_sha256(key));
    }

    #[test]
    fn refuses_bad_admin_keys_and_plaintext_beyond_loopback() {
        let p = api(
            "[api]\nadmin_key_env = \"ADMIN\"\n",
            &[("ADMIN", "dakkio_w_abc")],
        )
        .unwrap_err();
        assert!(p[0].message.contains("is not an admin key"), "{p:?}");
        assert!(!p[0].message.contains("dakkio_w_abc"));
        let p = api("[api]\nadmin_key_sha256 = \"abc\"\n", &[]).unwrap_err();
        assert!(p[0].message.contains("64 hexadecimal"), "{p:?}");
        let p = api("[api]\nlisten = \"0.0.0.0:8080\"\n", &[]).unwrap_err();
        assert_eq!(p[0].line, Some(2));
        assert!(p[0].message.contains("allow_insecure_plaintext"), "{p:?}");
        assert!(api(
            "[api]\nlisten = \"0.0.0.0:8080\"\nallow_insecure_plaintext = true\n",
            &[]
        )
        .is_ok());
        let p = api("[api]\nlisten = \"localhost\"\n", &[]).unwrap_err();
        assert!(p[0].message.contains("127.0.0.1:8080"), "{p:?}");
        let p = api("[api]\ntls_cert_file = \"a.crt\"\n", &[]).unwrap_err();
        assert!(p[0].message.contains("go together"), "{p:?}");
    }

    #[test]
    fn status_page_is_on_by_default_and_must_be_a_boolean() {
        assert!(api("", &[]).unwrap().status_page);
        assert!(
            !api("[api]\nstatus_page = false\n", &[])
                .unwrap()
                .status_page
        );
        let p = api("[api]\nstatus_page = \"yes\"\n", &[]).unwrap_err();
        assert_eq!(p[0].line, Some(2), "{p:?}");
        assert!(p[0].message.contains("status_page"), "{p:?}");
    }
}
