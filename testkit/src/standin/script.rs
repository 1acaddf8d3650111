//! The knobs a test turns: scripted answers (faults) and poison rules.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

/// One scripted behaviour, consumed by one request (or repeated while sticky).
#[derive(Debug, Clone)]
pub enum Script {
    /// Answer this instead of processing the request (no quota is spent).
    Respond(Reply),
    /// Wait, then process the request normally.
    Delay(Duration),
    /// Never answer: the request hangs until the client gives up or the
    /// stand-in stops (then the connection is closed).
    Stall,
    /// Process the request (its points are accepted and recorded), then
    /// never answer: dakkio has the points, the client never hears so —
    /// the state a crash between dakkio's 2xx and the client's bookkeeping
    /// leaves.
    AcceptThenStall,
    /// Close the connection without a response (FIN).
    DropConnection,
    /// Reset the connection without a response (RST via `SO_LINGER` 0).
    ResetConnection,
}

impl Script {
    /// [`Reply::new`]`(status)` with dakkio's (or a proxy's) usual body.
    pub fn respond(status: u16) -> Script {
        Script::Respond(Reply::new(status))
    }
}

impl From<Reply> for Script {
    fn from(reply: Reply) -> Script {
        Script::Respond(reply)
    }
}

/// A scripted HTTP answer.
///
/// Without [`Reply::json`]/[`Reply::body`] the body is the one the real
/// service would plausibly send for the status: dakkio's error JSON for 4xx
/// and 500 (for 429 with the current quota's reset time), and an HTML page
/// from the load balancer for 502/503/504 — a client must not assume error
/// bodies are JSON. Rate-limit headers are added unless [`Reply::header`]
/// sets the same name or [`Reply::without_rate_limit_headers`] is used.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// `(content type, body)`; `None` = the default body for `status`.
    pub body: Option<(String, Bytes)>,
    pub rate_limit_headers: bool,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: None,
            rate_limit_headers: true,
        }
    }

    /// Add a header (replacing a default rate-limit header of that name).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// `Retry-After` in seconds or as an HTTP-date, as given.
    pub fn retry_after(self, value: impl Into<String>) -> Reply {
        self.header("Retry-After", value)
    }

    pub fn json(mut self, body: Value) -> Reply {
        self.body = Some((
            "application/json; charset=utf-8".into(),
            body.to_string().into(),
        ));
        self
    }

    pub fn body(mut self, content_type: impl Into<String>, body: impl Into<Bytes>) -> Reply {
        self.body = Some((content_type.into(), body.into()));
        self
    }

    pub fn without_rate_limit_headers(mut self) -> Reply {
        self.rate_limit_headers = false;
        self
    }
}

/// A point as a poison rule sees it (only built while a rule is registered
/// or in [`super::RecordMode::Full`]).
#[derive(Debug)]
pub struct PointView<'a> {
    /// Index in the batch's `dataPoints` (0 for `POST /api/data`).
    pub index: usize,
    pub bucket_id: &'a str,
    pub data_source_id: &'a str,
    pub timestamp: Option<&'a str>,
    pub values: &'a Map<String, Value>,
    pub metadata: Option<&'a Map<String, Value>>,
}

/// What a poison rule reports: the field of `values` it refuses and why.
/// It becomes a `details` entry with path
/// `["body","dataPoints",i,"values",field]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    pub field: String,
    pub message: String,
}

impl SchemaViolation {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SchemaViolation {
        SchemaViolation {
            field: field.into(),
            message: message.into(),
        }
    }
}

type RuleFn = dyn Fn(&PointView<'_>) -> Option<SchemaViolation> + Send + Sync;

/// A registered poison rule; cheap to clone.
#[derive(Clone)]
pub(crate) struct PoisonRule(pub Arc<RuleFn>);

impl fmt::Debug for PoisonRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PoisonRule(..)")
    }
}
