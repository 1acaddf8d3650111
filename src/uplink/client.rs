//! The HTTP side of the uplink: one reqwest client (rustls with ring,
//! webpki roots plus an optional CA file, HTTP/1.1, no redirects), the
//! batch body built from the stored JSON text, and the answer reduced to
//! what [`super::classify`] needs.
//!
//! Proxies: reqwest reads `HTTPS_PROXY`/`https_proxy`, `ALL_PROXY` and
//! `NO_PROXY` from the environment by itself (hyper-util's `Matcher::
//! from_env`); its `system-proxy` feature only adds the macOS and Windows
//! system settings, so it stays off.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::config::UplinkConfig;
use crate::reading::format_timestamp;
use crate::secret::Secret;
use crate::store::{reading_id, QueuedReading};

/// The most of an answer body read (error bodies are small).
const MAX_ANSWER_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tls setup (`uplink.ca_file`): {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// A request that got no HTTP answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransportError {
    #[error("request timed out")]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("{0}")]
    Other(String),
}

impl TransportError {
    /// The `status` label of `dakkio_uplink_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            TransportError::Timeout => "timeout",
            TransportError::Connect(_) => "connect",
            TransportError::Tls(_) => "tls",
            TransportError::Other(_) => "error",
        }
    }
}

/// An HTTP answer, reduced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub rate_limit_reset: Option<String>,
    pub rate_limit_remaining: Option<u64>,
    /// At most `MAX_ANSWER_BODY` bytes.
    pub body: Bytes,
}

/// dakkio's error body, as far as it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorBody {
    /// `message`, or `HTTP <status>` when the body has none.
    pub message: String,
    /// `details` as JSON text.
    pub details: Option<String>,
    /// The first `dataPoints` index named in `details[].path`.
    pub first_point_index: Option<usize>,
}

impl Answer {
    pub fn error_body(&self) -> ErrorBody {
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(borrow)]
            message: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            details: Option<&'a serde_json::value::RawValue>,
        }
        let raw: Option<Raw> = serde_json::from_slice(&self.body).ok();
        let message = raw
            .as_ref()
            .and_then(|r| r.message.as_deref())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {}", self.status));
        let details = raw
            .as_ref()
            .and_then(|r| r.details)
            .map(|d| d.get().to_owned());
        let first_point_index = details.as_deref().and_then(first_point_index);
        ErrorBody {
            message,
            details,
            first_point_index,
        }
    }
}

/// `details: [{"path": ["body","dataPoints", i, …]}, …]` → the smallest `i`.
fn first_point_index(details: &str) -> Option<usize> {
    let v: Vec<serde_json::Value> = serde_json::from_str(details).ok()?;
    v.iter()
        .filter_map(|d| {
            let p = d.get("path")?.as_array()?;
            let named = p.first()?.as_str()? == "body" && p.get(1)?.as_str()? == "dataPoints";
            named.then(|| p.get(2)?.as_u64()).flatten()
        })
        .min()
        .map(|i| i as usize)
}

/// Make ring the process-wide rustls provider (reqwest is built with
/// `rustls-no-provider` and panics without one). Idempotent.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The uplink's HTTP client for one dakkio base URL.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    batch_url: String,
}

impl Client {
    pub fn new(config: &UplinkConfig) -> Result<Client, ClientError> {
        install_crypto_provider();
        let trust = config
            .ca_file
            .as_deref()
            .map_or(crate::tls::Trust::Webpki, crate::tls::Trust::WebpkiAnd);
        let tls = crate::tls::client_config(trust, None)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(concat!("dakkio-gateway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Client {
            http,
            batch_url: format!("{}/api/data/batch", config.url),
        })
    }

    /// `POST /api/data/batch` with the bucket's write key.
    pub async fn post_batch(&self, key: &Secret, body: Bytes) -> Result<Answer, TransportError> {
        let sent = self
            .http
            .post(&self.batch_url)
            .header("X-API-Key", key.expose())
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await;
        let mut resp = sent.map_err(transport_error)?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut answer = Answer {
            status: resp.status().as_u16(),
            retry_after: header("retry-after"),
            rate_limit_reset: header("x-ratelimit-reset"),
            rate_limit_remaining: header("x-ratelimit-remaining")
                .and_then(|v| v.trim().parse().ok()),
            body: Bytes::new(),
        };
        // Read the body (bounded); a failure here after a 2xx status still
        // counts as the server's answer.
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    let room = MAX_ANSWER_BODY.saturating_sub(body.len());
                    body.extend_from_slice(&c[..c.len().min(room)]);
                    if room <= c.len() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if answer.status / 100 == 2 => {
                    tracing::debug!(error = %e, "answer body cut short after a 2xx status");
                    break;
                }
                Err(e) => return Err(transport_error(e)),
            }
        }
        answer.body = body.into();
        Ok(answer)
    }
}

fn transport_error(e: reqwest::Error) -> TransportError {
    let chain = error_chain(&e);
    if e.is_timeout() {
        TransportError::Timeout
    } else if chain.contains("certificate")
        || chain.contains("tls")
        || chain.contains("TLS")
        || chain.contains("handshake")
    {
        TransportError::Tls(chain)
    } else if e.is_connect() {
        TransportError::Connect(chain)
    } else {
        TransportError::Other(chain)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

/// Builds batch bodies for one bucket: `{"bucketId":…,"dataPoints":[…]}`
/// with each point's stored `values` and `metadata` JSON passed through as
/// text (never re-parsed), plus `metadata.gatewayId` and
/// `metadata.readingId`.
/// Bytes of a body point beyond its JSON and the gateway metadata tail:
/// `{"dataSourceId":"<24>","timestamp":"<24>","values":,"metadata":{,<id>"}}`.
const POINT_OVERHEAD: usize = 160;

#[derive(Debug, Clone)]
pub struct BodyBuilder {
    /// `{"bucketId":"…","dataPoints":[`
    head: String,
    /// `"gatewayId":"…","readingId":"`
    meta_tail: String,
    store_id: u32,
}

impl BodyBuilder {
    pub fn new(bucket_id: &str, gateway_id: &str, store_id: u32) -> BodyBuilder {
        let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
        BodyBuilder {
            head: format!("{{\"bucketId\":{},\"dataPoints\":[", q(bucket_id)),
            meta_tail: format!("\"gatewayId\":{},\"readingId\":\"", q(gateway_id)),
            store_id,
        }
    }

    /// Bytes a point takes in a request body, at most (its JSON plus the
    /// id, timestamp, gateway and reading ids around it).
    pub fn point_bytes(&self, p: &QueuedReading) -> usize {
        p.json_len() + self.meta_tail.len() + POINT_OVERHEAD
    }

    pub fn body(&self, points: &[QueuedReading]) -> Bytes {
        // Sized from every point, not from the first one times the count:
        // one large point ahead of small ones once asked for gigabytes.
        let size: usize = points.iter().map(|p| self.point_bytes(p)).sum();
        let mut out = String::with_capacity(self.head.len() + size + 2);
        out.push_str(&self.head);
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"dataSourceId\":\"");
            // Validated 24-hex ids: no escaping needed.
            out.push_str(&p.data_source_id);
            out.push_str("\",\"timestamp\":\"");
            out.push_str(&format_timestamp(p.timestamp_ms));
            out.push_str("\",\"values\":");
            out.push_str(&p.values_json);
            out.push_str(",\"metadata\":{");
            if let Some(inner) = p
                .metadata_json
                .as_deref()
                .map(str::trim)
                .and_then(|m| m.strip_prefix('{'))
                .and_then(|m| m.strip_suffix('}'))
                .map(str::trim)
                .filter(|m| !m.is_empty())
            {
                // The gateway's fields come last: with duplicate keys JSON
                // parsers keep the last one, so they cannot be spoofed.
                out.push_str(inner);
                out.push(',');
            }
            out.push_str(&self.meta_tail);
            out.push_str(&reading_id(self.store_id, p.seq));
            out.push_str("\"}}");
        }
        out.push_str("]}");
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(seq: i64, meta: Option<&str>) -> QueuedReading {
        QueuedReading {
            seq,
            data_source_id: "507f1f77bcf86cd799439012".into(),
            timestamp_ms: 1_705_314_600_000,
            origin: None,
            values_json: r#"{"temperature":22.5}"#.into(),
            metadata_json: meta.map(str::to_owned),
        }
    }

    #[test]
    fn body_is_valid_json_with_gateway_metadata() {
        let b = BodyBuilder::new("507f1f77bcf86cd799439011", "barn-3", 0xabcd);
        let body = b.body(&[
            point(1, None),
            point(2, Some(r#"{"deviceId":"ESP32-001"}"#)),
            point(3, Some("{}")),
            point(4, Some(r#" { "gatewayId" : "spoof" } "#)),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["bucketId"], "507f1f77bcf86cd799439011");
        let pts = v["dataPoints"].as_array().unwrap();
        assert_eq!(pts.len(), 4);
        assert_eq!(pts[0]["timestamp"], "2024-01-15T10:30:00.000Z");
        assert_eq!(pts[0]["values"]["temperature"], 22.5);
        assert_eq!(pts[0]["metadata"]["gatewayId"], "barn-3");
        assert_eq!(pts[0]["metadata"]["readingId"], reading_id(0xabcd, 1));
        assert_eq!(pts[1]["metadata"]["deviceId"], "ESP32-001");
        assert_eq!(pts[2]["metadata"]["readingId"], reading_id(0xabcd, 3));
        // serde_json keeps the last duplicate, as JavaScript does
        assert_eq!(pts[3]["metadata"]["gatewayId"], "barn-3");
    }

    #[test]
    fn point_index_from_details() {
        assert_eq!(
            first_point_index(
                r#"[{"path":["body","dataPoints",9,"values","x"]},{"path":["body","dataPoints",3]}]"#
            ),
            Some(3)
        );
        assert_eq!(first_point_index(r#"[{"path":["body","bucketId"]}]"#), None);
        assert_eq!(first_point_index("nope"), None);
    }

    #[test]
    fn client_builds_with_ring() {
        let c = Client::new(&UplinkConfig::default());
        assert!(c.is_ok());
    }
}
