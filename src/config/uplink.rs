//! `[uplink]`: forwarding to dakkio — where, in what batches, with which
//! timeouts, trust roots and retry bounds, and an optional monthly call
//! budget.
//!
//! `url` must carry a scheme. Plain `http://` is accepted only for a
//! loopback host (`localhost`, `127.0.0.0/8`, `::1`: tests, a local relay)
//! or with `allow_insecure_http = true`, because the write keys travel in a
//! header.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Bucket, Ctx};

/// dakkio's limit on points per batch request.
pub const MAX_BATCH_SIZE: usize = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUplink {
    url: Option<Spanned<String>>,
    allow_insecure_http: Option<bool>,
    batch_size: Option<Spanned<i64>>,
    max_request_points: Option<Spanned<i64>>,
    max_batch_age: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    backoff_min: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
    paused_retry: Option<Spanned<String>>,
    max_calls_per_month: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UplinkConfig {
    /// Base URL, without a trailing slash (`https://api.dakkio.io`).
    pub url: String,
    /// A batch goes out as soon as this many readings are queued (1..=1000);
    /// a request carries everything queued, up to `max_request_points`.
    pub batch_size: usize,
    /// Points per request at most (1..=1000, dakkio's limit): a backlog
    /// drains in requests of this size.
    pub max_request_points: usize,
    /// How long a partial batch waits for more readings before it is sent.
    pub max_batch_age: Duration,
    pub connect_timeout: Duration,
    /// The whole request, answer included.
    pub request_timeout: Duration,
    /// Extra PEM trust roots beside the built-in webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Exponential backoff bounds for 5xx, timeouts and connection errors
    /// (full jitter between zero and the current ceiling).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often a paused bucket (key or bucket refused) is tried again.
    pub paused_retry: Duration,
    /// The plan's monthly API-call budget; the uplink paces itself to it.
    pub max_calls_per_month: Option<u64>,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            url: "https://api.dakkio.io".into(),
            batch_size: 100,
            max_request_points: MAX_BATCH_SIZE,
            max_batch_age: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            ca_file: None,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            paused_retry: Duration::from_secs(300),
            max_calls_per_month: None,
        }
    }
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl RawUplink {
    pub(crate) fn validate(self, ctx: &mut Ctx, _buckets: &[Bucket]) -> UplinkConfig {
        let d = UplinkConfig::default();
        let url = match &self.url {
            None => d.url.clone(),
            Some(v) => {
                let raw = v.get_ref().trim();
                match check_url(raw, self.allow_insecure_http.unwrap_or(false)) {
                    Ok(u) => u,
                    Err(why) => {
                        ctx.error(Some(v.span()), "uplink.url", why);
                        d.url.clone()
                    }
                }
            }
        };
        let batch_size = ctx.int_in(
            "uplink.batch_size",
            &self.batch_size,
            1..=MAX_BATCH_SIZE as i64,
            d.batch_size as i64,
        ) as usize;
        let max_request_points = ctx.int_in(
            "uplink.max_request_points",
            &self.max_request_points,
            1..=MAX_BATCH_SIZE as i64,
            d.max_request_points as i64,
        ) as usize;
        let max_batch_age = ctx.duration(
            "uplink.max_batch_age",
            &self.max_batch_age,
            d.max_batch_age,
            "5s",
        );
        let positive =
            |ctx: &mut Ctx, key: &str, v: &Option<Spanned<String>>, def: Duration, ex: &str| {
                let got = ctx.duration(key, v, def, ex);
                if got.is_zero() {
                    ctx.error(
                        v.as_ref().map(|s| s.span()),
                        key,
                        format!("`{key}` must be longer than zero, e.g. `{ex}`"),
                    );
                    return def;
                }
                got
            };
        let connect_timeout = positive(
            ctx,
            "uplink.connect_timeout",
            &self.connect_timeout,
            d.connect_timeout,
            "10s",
        );
        let request_timeout = positive(
            ctx,
            "uplink.request_timeout",
            &self.request_timeout,
            d.request_timeout,
            "30s",
        );
        let backoff_min = positive(
            ctx,
            "uplink.backoff_min",
            &self.backoff_min,
            d.backoff_min,
            "1s",
        );
        let backoff_max = positive(
            ctx,
            "uplink.backoff_max",
            &self.backoff_max,
            d.backoff_max,
            "5m",
        );
        if backoff_max < backoff_min {
            ctx.error(
                self.backoff_max.as_ref().map(|s| s.span()),
                "uplink.backoff_max",
                "`uplink.backoff_max` must not be shorter than `uplink.backoff_min`, e.g. \
                 `backoff_min = \"1s\"` with `backoff_max = \"5m\"`",
            );
        }
        let paused_retry = positive(
            ctx,
            "uplink.paused_retry",
            &self.paused_retry,
            d.paused_retry,
            "5m",
        );
        let ca_file = self.ca_file.as_ref().and_then(|v| {
            let path = ctx.relative_to_config(std::path::Path::new(v.get_ref().trim()));
            match check_ca_file(&path) {
                Ok(()) => Some(path),
                Err(why) => {
                    ctx.error(Some(v.span()), "uplink.ca_file", why);
                    None
                }
            }
        });
        let max_calls_per_month = self.max_calls_per_month.as_ref().map(|_| {
            ctx.int_in(
                "uplink.max_calls_per_month",
                &self.max_calls_per_month,
                1..=1_000_000_000,
                10_000,
            ) as u64
        });
        UplinkConfig {
            url,
            batch_size,
            max_request_points,
            max_batch_age,
            connect_timeout,
            request_timeout,
            ca_file,
            backoff_min,
            backoff_max,
            paused_retry,
            max_calls_per_month,
        }
    }
}

fn check_url(raw: &str, allow_http: bool) -> Result<String, String> {
    let example = "e.g. `https://api.dakkio.io`";
    if !raw.contains("://") {
        return Err(format!(
            "`uplink.url` must include a scheme, {example}; got `{raw}`"
        ));
    }
    let parsed = reqwest::Url::parse(raw)
        .map_err(|e| format!("`uplink.url` is not a valid URL ({e}), {example}; got `{raw}`"))?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http || is_loopback_host(&host) => {}
        "http" => {
            return Err(format!(
                "`uplink.url` uses plain `http://` to `{host}`: write keys would cross the \
                 network unencrypted; use `https://`, {example}, or set \
                 `uplink.allow_insecure_http = true`; got `{raw}`"
            ))
        }
        other => {
            return Err(format!(
                "`uplink.url` must use `https://` (got scheme `{other}`), {example}; got `{raw}`"
            ))
        }
    }
    if host.is_empty() {
        return Err(format!("`uplink.url` has no host, {example}; got `{raw}`"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "`uplink.url` must be a base URL without `?` or `#`, {example}; got `{raw}`"
        ));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// The file must be readable and hold at least one PEM certificate.
fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
    let pem = crate::secret::read_small_file(path, crate::secret::MAX_FILE).map_err(|e| {
        format!(
            "`uplink.ca_file` `{}` cannot be read: {e}; give a PEM file of CA certificates, \
             e.g. `/etc/ssl/certs/my-ca.pem`",
            path.display()
        )
    })?;
    match crate::tls::parse_pem_certs(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err(format!(
            "`uplink.ca_file` `{}` holds no `BEGIN CERTIFICATE` block; give a PEM file of CA \
             certificates",
            path.display()
        )),
        Err(e) => Err(format!(
            "`uplink.ca_file` `{}` is not valid PEM: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            check_url("https://api.dakkio.io/", false).unwrap(),
            "https://api.dakkio.io"
        );
        assert!(check_url("http://127.0.0.1:8080", false).is_ok());
        assert!(check_url("http://[::1]:8080", false).is_ok());
        assert!(check_url("http://localhost:1", false).is_ok());
        let e = check_url("api.dakkio.io", false).unwrap_err();
        assert!(e.contains("must include a scheme"), "{e}");
        let e = check_url("http://api.dakkio.io", false).unwrap_err();
        assert!(e.contains("allow_insecure_http"), "{e}");
        assert!(check_url("http://api.dakkio.io", true).is_ok());
        assert!(check_url("ftp://api.dakkio.io", true).is_err());
        assert!(check_url("https://api.dakkio.io/?x=1", true).is_err());
    }
}
