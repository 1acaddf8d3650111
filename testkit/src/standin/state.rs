//! The stand-in's shared state and the decision for one request: everything
//! dakkio would check, in the order it plausibly checks it, without I/O.
//!
//! The state survives `stop`/`restart` because it lives in the handle, not
//! in the listener task. One `std::sync::Mutex` guards it; it is never held
//! across an `.await` nor while a test's poison rule runs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::record::{key_prefix, AcceptedPoint, Answer, BucketTracker, RecordMode, RequestRecord};
use super::script::{PointView, PoisonRule, Reply, Script};
use dakkio_gateway::dakkio::messages::{
    self as msg, BUCKET_NOT_FOUND, FORBIDDEN, INGEST_FORBIDDEN, INVALID_BUCKET_ID, INVALID_JSON,
    INVALID_KEY, INVALID_PARAMETERS, NOT_FOUND, NO_BUCKET_ACCESS, PAYLOAD_TOO_LARGE,
    ROUTE_NOT_FOUND, TOO_MANY_REQUESTS, UNAUTHORIZED, VALIDATION_ERROR,
};
use dakkio_gateway::dakkio::validate::{Issue, Outcome, Parsed, Rejection};
use dakkio_gateway::reading::{
    civil_from_days, days_from_civil, format_timestamp, is_object_id, new_object_id, now_ms,
};

/// A point's `values` and `metadata` decoded into maps.
type PointMaps = (Map<String, Value>, Option<Map<String, Value>>);

/// What a key may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyScope {
    Admin,
    Write(String),
    Read(String),
}

/// The monthly API-call quota, as the rate-limit headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// `X-RateLimit-Limit`: calls per month.
    pub limit: u64,
    /// `X-RateLimit-Remaining`.
    pub remaining: u64,
    /// `X-RateLimit-Reset`: Unix seconds; at that time `remaining` goes back
    /// to `limit` and the next reset moves to the next month's start.
    pub reset_at: u64,
}

impl Quota {
    pub(crate) fn new(limit: u64) -> Quota {
        Quota {
            limit,
            remaining: limit,
            reset_at: next_month_start(now_secs()),
        }
    }

    fn refresh(&mut self, now: u64) {
        if now >= self.reset_at {
            self.remaining = self.limit;
            self.reset_at = next_month_start(now);
        }
    }

    /// `2024-01-15T10:30:00Z`, the form of the documented 429 message.
    pub(crate) fn reset_iso(&self) -> String {
        let ms = i64::try_from(self.reset_at.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
        format_timestamp(ms).replace(".000Z", "Z")
    }
}

pub(crate) fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// 00:00:00 UTC on the first day of the month after `now` (Unix seconds).
fn next_month_start(now: u64) -> u64 {
    let days = i64::try_from(now / 86_400).unwrap_or(0);
    let (y, m, _) = civil_from_days(days);
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    u64::try_from(days_from_civil(y, m, 1) * 86_400).unwrap_or(0)
}

/// Counters that waiters watch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    pub accepted: u64,
    pub requests: u64,
}

#[derive(Debug)]
pub(crate) struct State {
    pub buckets: HashSet<String>,
    pub keys: HashMap<String, KeyScope>,
    pub quota: Quota,
    pub body_limit: usize,
    /// FIFO of scripted behaviours, each optionally only for one bucket.
    pub scripts: VecDeque<(Option<String>, Script)>,
    pub sticky: Option<Script>,
    pub sticky_for: HashMap<String, Script>,
    pub poison: Vec<PoisonRule>,
    pub mode: RecordMode,
    pub points: Vec<AcceptedPoint>,
    pub buckets_seen: HashMap<String, BucketTracker>,
    pub requests: Vec<RequestRecord>,
    pub accepted: u64,
}

impl State {
    pub(crate) fn new(body_limit: usize, quota: Quota, mode: RecordMode) -> State {
        State {
            buckets: HashSet::new(),
            keys: HashMap::new(),
            quota,
            body_limit,
            scripts: VecDeque::new(),
            sticky: None,
            sticky_for: HashMap::new(),
            poison: Vec::new(),
            mode,
            points: Vec::new(),
            buckets_seen: HashMap::new(),
            requests: Vec::new(),
            accepted: 0,
        }
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub progress: watch::Sender<Progress>,
}

/// Which endpoint a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Batch,
    Single,
}

/// Why the body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    TooLarge,
    /// The client went away mid-body.
    Broken,
}

/// What the handler knows about a request before deciding.
pub(crate) struct RequestCtx {
    pub method: String,
    pub path: String,
    pub route: Option<Route>,
    pub key: Option<String>,
    pub json_content_type: bool,
    pub bucket_hint: Option<String>,
    pub points: usize,
    pub scripted: bool,
}

/// An answer ready for the wire.
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: String,
    pub body: Bytes,
}

impl Shared {
    pub(crate) fn new(state: State) -> Shared {
        Shared {
            state: Mutex::new(state),
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// The lock, recovered if a panicking test thread poisoned it: the data
    /// is counters and logs, never left half-updated across a panic point.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first queued script for this request (unfiltered, or filtered on
    /// its bucket), else the bucket's sticky script, else the global one.
    pub(crate) fn next_script(&self, bucket: Option<&str>) -> Option<Script> {
        let mut st = self.lock();
        let pos = st
            .scripts
            .iter()
            .position(|(only, _)| only.as_deref().is_none_or(|b| Some(b) == bucket));
        if let Some(pos) = pos {
            return st.scripts.remove(pos).map(|(_, s)| s);
        }
        if let Some(s) = bucket.and_then(|b| st.sticky_for.get(b)) {
            return Some(s.clone());
        }
        st.sticky.clone()
    }

    /// Log a request that got no HTTP answer (scripted stall/drop/reset).
    pub(crate) fn log_fault(&self, ctx: &RequestCtx, answer: Answer) {
        let mut st = self.lock();
        log_request(&mut st, ctx, answer, None);
        drop(st);
        self.progress.send_modify(|p| p.requests += 1);
    }

    /// Answer a scripted [`Reply`]; spends no quota.
    pub(crate) fn scripted_reply(&self, ctx: &RequestCtx, reply: Reply) -> Response {
        let mut st = self.lock();
        st.quota.refresh(now_secs());
        let quota = st.quota;
        let (content_type, body) = match reply.body {
            Some(b) => b,
            None => default_body(reply.status, &quota),
        };
        let message = if reply.status >= 300 {
            message_of(&body)
        } else {
            None
        };
        log_request(&mut st, ctx, Answer::Status(reply.status), message);
        drop(st);
        self.progress.send_modify(|p| p.requests += 1);
        let mut headers = Vec::new();
        if reply.rate_limit_headers {
            headers = rate_limit_headers(&quota);
            headers.retain(|(name, _)| {
                !reply
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(name))
            });
        }
        headers.extend(reply.headers);
        Response {
            status: reply.status,
            headers,
            content_type,
            body,
        }
    }

    /// Decide a request the way dakkio would. Order: route → body size →
    /// JSON syntax (both body-parser level, before auth, no quota spent) →
    /// key (401) → quota (429; every authenticated call spends one) → key
    /// type (403) → `Content-Type` → schema (400 with details) → bucket id
    /// format → bucket access (403) → bucket exists (404) → poison rules
    /// (400 with details) → 201.
    pub(crate) fn process(
        &self,
        ctx: RequestCtx,
        body: Result<&Bytes, BodyError>,
        outcome: Option<Outcome<'_>>,
    ) -> Response {
        let now = now_secs();
        let mut st = self.lock();
        st.quota.refresh(now);
        let Some(route) = ctx.route else {
            let quota = st.quota;
            return self.finish(
                st,
                &ctx,
                error(404, NOT_FOUND, ROUTE_NOT_FOUND, None),
                &quota,
            );
        };
        match body {
            Err(BodyError::TooLarge) => {
                let msg = format!("Request body exceeds {} bytes", st.body_limit);
                let quota = st.quota;
                return self.finish(st, &ctx, error(413, PAYLOAD_TOO_LARGE, &msg, None), &quota);
            }
            Err(BodyError::Broken) => {
                let quota = st.quota;
                return self.finish(
                    st,
                    &ctx,
                    error(400, VALIDATION_ERROR, INVALID_JSON, None),
                    &quota,
                );
            }
            Ok(_) => {}
        }
        let Some(outcome) = outcome else {
            unreachable!("a routed request with a body is always parsed")
        };
        if let Err(Rejection::Message(INVALID_JSON)) = &outcome.result {
            let quota = st.quota;
            return self.finish(
                st,
                &ctx,
                error(400, VALIDATION_ERROR, INVALID_JSON, None),
                &quota,
            );
        }
        let scope = match ctx.key.as_deref().and_then(|k| st.keys.get(k)) {
            Some(scope) => scope.clone(),
            None => {
                let quota = st.quota;
                let e = error(401, UNAUTHORIZED, INVALID_KEY, None);
                return self.finish(st, &ctx, e, &quota);
            }
        };
        if st.quota.remaining == 0 {
            let quota = st.quota;
            let msg = msg::rate_limit_exceeded(&quota.reset_iso());
            return self.finish(st, &ctx, error(429, TOO_MANY_REQUESTS, &msg, None), &quota);
        }
        st.quota.remaining -= 1;
        let quota = st.quota;
        if let KeyScope::Read(_) = scope {
            let e = error(403, FORBIDDEN, INGEST_FORBIDDEN, None);
            return self.finish(st, &ctx, e, &quota);
        }
        if !ctx.json_content_type {
            let e = error(
                400,
                VALIDATION_ERROR,
                "Content-Type must be application/json",
                None,
            );
            return self.finish(st, &ctx, e, &quota);
        }
        let parsed = match outcome.result {
            Ok(parsed) => parsed,
            Err(Rejection::Schema(issues)) => {
                let e = error(400, VALIDATION_ERROR, INVALID_PARAMETERS, Some(&issues));
                return self.finish(st, &ctx, e, &quota);
            }
            Err(Rejection::Message(msg)) => {
                return self.finish(st, &ctx, error(400, VALIDATION_ERROR, msg, None), &quota);
            }
        };
        let bucket = parsed.bucket_id.as_ref();
        if !is_object_id(bucket) {
            let e = error(400, VALIDATION_ERROR, INVALID_BUCKET_ID, None);
            return self.finish(st, &ctx, e, &quota);
        }
        if matches!(&scope, KeyScope::Write(b) if b != bucket) {
            let e = error(403, FORBIDDEN, NO_BUCKET_ACCESS, None);
            return self.finish(st, &ctx, e, &quota);
        }
        if !st.buckets.contains(bucket) {
            return self.finish(
                st,
                &ctx,
                error(404, NOT_FOUND, BUCKET_NOT_FOUND, None),
                &quota,
            );
        }
        let rules = st.poison.clone();
        let mode = st.mode;
        drop(st);

        // Maps of values/metadata are only built when someone needs them.
        let maps: Vec<PointMaps> = if mode == RecordMode::Full || !rules.is_empty() {
            parsed
                .points
                .iter()
                .map(|p| {
                    let values = serde_json::from_str(p.values.get()).unwrap_or_default();
                    let meta = p
                        .metadata
                        .map(|m| serde_json::from_str(m.get()).unwrap_or_default());
                    (values, meta)
                })
                .collect()
        } else {
            Vec::new()
        };
        if !rules.is_empty() {
            let issues = poison_issues(&parsed, &maps, &rules);
            if !issues.is_empty() {
                let e = error(400, VALIDATION_ERROR, INVALID_PARAMETERS, Some(&issues));
                return self.finish(self.lock(), &ctx, e, &quota);
            }
        }
        self.accept(route, &ctx, parsed, maps, &quota)
    }

    fn accept(
        &self,
        route: Route,
        ctx: &RequestCtx,
        parsed: Parsed<'_>,
        maps: Vec<PointMaps>,
        quota: &Quota,
    ) -> Response {
        let arrival = now_ms();
        let n = parsed.points.len();
        let bucket = parsed.bucket_id.as_ref();
        let body = match route {
            Route::Batch => json!({"message": msg::BATCH_INGESTED, "count": n}),
            Route::Single => {
                let p = &parsed.points[0];
                let ms = p.timestamp.as_ref().map_or(arrival, |t| t.1);
                let (values, metadata) = maps.first().cloned().unwrap_or_else(|| {
                    let v = serde_json::from_str(p.values.get()).unwrap_or_default();
                    let m = p
                        .metadata
                        .map(|m| serde_json::from_str(m.get()).unwrap_or_default());
                    (v, m)
                });
                json!({"message": msg::POINT_INGESTED, "dataPoint": {
                    "_id": new_object_id(),
                    "bucketId": bucket,
                    "dataSourceId": p.data_source_id,
                    "timestamp": format_timestamp(ms),
                    "values": values,
                    "metadata": metadata.unwrap_or_default(),
                    "createdAt": format_timestamp(arrival),
                }})
            }
        };
        let mut st = self.lock();
        let seq = st.requests.len() as u64 + 1;
        let tracker = match st.buckets_seen.get_mut(bucket) {
            Some(t) => t,
            None => st.buckets_seen.entry(bucket.to_owned()).or_default(),
        };
        for p in &parsed.points {
            tracker.record(p.reading_id);
        }
        if st.mode == RecordMode::Full {
            st.points.reserve(n);
            for (p, (values, metadata)) in parsed.points.iter().zip(maps) {
                st.points.push(AcceptedPoint {
                    request: seq,
                    bucket_id: bucket.to_owned(),
                    data_source_id: p.data_source_id.to_string(),
                    timestamp: p.timestamp.as_ref().map(|t| t.0.to_string()),
                    timestamp_ms: p.timestamp.as_ref().map_or(arrival, |t| t.1),
                    values,
                    metadata,
                });
            }
        }
        st.accepted += n as u64;
        let resp = Response {
            status: 201,
            headers: Vec::new(),
            content_type: "application/json; charset=utf-8".into(),
            body: body.to_string().into(),
        };
        let accepted = n as u64;
        self.finish_with(st, ctx, resp, quota, accepted)
    }

    fn finish(
        &self,
        st: MutexGuard<'_, State>,
        ctx: &RequestCtx,
        resp: Response,
        quota: &Quota,
    ) -> Response {
        self.finish_with(st, ctx, resp, quota, 0)
    }

    /// Log the request, add the rate-limit headers and wake waiters.
    fn finish_with(
        &self,
        mut st: MutexGuard<'_, State>,
        ctx: &RequestCtx,
        mut resp: Response,
        quota: &Quota,
        accepted: u64,
    ) -> Response {
        let message = if resp.status >= 300 {
            message_of(&resp.body)
        } else {
            None
        };
        log_request(&mut st, ctx, Answer::Status(resp.status), message);
        drop(st);
        self.progress.send_modify(|p| {
            p.requests += 1;
            p.accepted += accepted;
        });
        tracing::debug!(
            path = %ctx.path,
            bucket = ctx.bucket_hint.as_deref().unwrap_or("-"),
            status = resp.status,
            points = ctx.points,
            "stand-in answered"
        );
        resp.headers.extend(rate_limit_headers(quota));
        resp
    }
}

fn log_request(st: &mut State, ctx: &RequestCtx, answer: Answer, message: Option<String>) {
    let seq = st.requests.len() as u64 + 1;
    st.requests.push(RequestRecord {
        seq,
        at: SystemTime::now(),
        method: ctx.method.clone(),
        path: ctx.path.clone(),
        bucket_id: ctx.bucket_hint.clone(),
        key_prefix: ctx.key.as_deref().map(key_prefix),
        points: ctx.points,
        answer,
        scripted: ctx.scripted,
        message,
    });
}

fn poison_issues(parsed: &Parsed<'_>, maps: &[PointMaps], rules: &[PoisonRule]) -> Vec<Issue> {
    let mut issues = Vec::new();
    for (i, (p, (values, metadata))) in parsed.points.iter().zip(maps).enumerate() {
        let view = PointView {
            index: i,
            bucket_id: &parsed.bucket_id,
            data_source_id: &p.data_source_id,
            timestamp: p.timestamp.as_ref().map(|t| t.0.as_ref()),
            values,
            metadata: metadata.as_ref(),
        };
        for rule in rules {
            if let Some(v) = (rule.0)(&view) {
                let mut path = parsed.point_path(i);
                path.push("values".into());
                if !v.field.is_empty() {
                    path.push(v.field.into());
                }
                issues.push(Issue {
                    path,
                    message: v.message,
                });
            }
        }
    }
    issues
}

/// dakkio's error body.
fn error(status: u16, error: &str, message: &str, details: Option<&[Issue]>) -> Response {
    let mut body = json!({"error": error, "message": message});
    if let Some(details) = details {
        body["details"] = details
            .iter()
            .map(|i| json!({"path": i.path, "message": i.message}))
            .collect();
    }
    Response {
        status,
        headers: Vec::new(),
        content_type: "application/json; charset=utf-8".into(),
        body: body.to_string().into(),
    }
}

fn message_of(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("message")?.as_str().map(str::to_owned)
}

pub(crate) fn rate_limit_headers(quota: &Quota) -> Vec<(String, String)> {
    vec![
        ("X-RateLimit-Limit".into(), quota.limit.to_string()),
        ("X-RateLimit-Remaining".into(), quota.remaining.to_string()),
        ("X-RateLimit-Reset".into(), quota.reset_at.to_string()),
    ]
}

/// The body a scripted status gets when the test gives none.
fn default_body(status: u16, quota: &Quota) -> (String, Bytes) {
    let json = |error: &str, message: &str| {
        let body = json!({"error": error, "message": message}).to_string();
        (
            "application/json; charset=utf-8".to_owned(),
            Bytes::from(body),
        )
    };
    let reason = http_reason(status);
    match status {
        400 => json(VALIDATION_ERROR, INVALID_PARAMETERS),
        401 => json(UNAUTHORIZED, INVALID_KEY),
        403 => json(FORBIDDEN, NO_BUCKET_ACCESS),
        404 => json(NOT_FOUND, BUCKET_NOT_FOUND),
        413 => json(PAYLOAD_TOO_LARGE, "Request entity too large"),
        429 => json(
            TOO_MANY_REQUESTS,
            &msg::rate_limit_exceeded(&quota.reset_iso()),
        ),
        500 => json("Internal Server Error", "Internal server error"),
        // What a load balancer in front of the API sends: HTML, not JSON.
        502..=504 => {
            let html = format!(
                "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n\
                 <center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
            );
            ("text/html".to_owned(), Bytes::from(html))
        }
        _ if status >= 400 => json(reason, reason),
        _ => json_ok(),
    }
}

fn json_ok() -> (String, Bytes) {
    let body = json!({"message": msg::BATCH_INGESTED}).to_string();
    (
        "application/json; charset=utf-8".to_owned(),
        Bytes::from(body),
    )
}

fn http_reason(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_month_start_rolls_over_years() {
        // 2024-01-15T10:30:00Z → 2024-02-01T00:00:00Z
        assert_eq!(next_month_start(1_705_314_600), 1_706_745_600);
        // 2024-12-31T23:59:59Z → 2025-01-01T00:00:00Z
        assert_eq!(next_month_start(1_735_689_599), 1_735_689_600);
    }

    #[test]
    fn quota_refreshes_at_reset_time() {
        let mut q = Quota {
            limit: 10,
            remaining: 0,
            reset_at: 1_705_314_600,
        };
        q.refresh(1_705_314_599);
        assert_eq!(q.remaining, 0);
        q.refresh(1_705_314_600);
        assert_eq!(q.remaining, 10);
        assert_eq!(q.reset_at, 1_706_745_600);
        assert_eq!(q.reset_iso(), "2024-02-01T00:00:00Z");
    }
}
