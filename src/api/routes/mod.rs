//! The router, the per-request layers (key-in-URL refusal, timeout, access
//! log, request metrics) and the helpers every handler uses to authenticate
//! and to check its bucket in the documented order (see `api/mod.rs`).

mod alerts;
mod analytics;
mod buckets;
pub(crate) mod ingest;
pub(crate) mod keys;
mod ops;
mod page;
pub(crate) mod query;
pub(crate) mod sources;
mod status;

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tracing::debug;

use super::auth::Principal;
use super::error::{ApiError, BUCKET_NOT_FOUND, INVALID_BUCKET_ID, KEY_IN_URL};
use super::{ClientAddr, State};
use crate::config::Bucket;
use crate::dakkio::messages::{NOT_FOUND, ROUTE_NOT_FOUND};
use crate::reading::{format_timestamp, is_object_id, now_ms};
use crate::store::QueryStop;

pub(crate) type AppState = Arc<State>;

pub(crate) fn router(state: AppState) -> Router {
    let page = if state.config.api.status_page {
        page::routes()
    } else {
        Router::new()
    };
    let routes = Router::new()
        .route("/api/data", post(ingest::ingest_one))
        .route("/api/data/batch", post(ingest::ingest_batch))
        .route("/api/data/query", post(query::query))
        .route("/api/buckets", get(buckets::list).post(buckets::create))
        .route(
            "/api/buckets/{bucket_id}",
            get(buckets::get).delete(buckets::remove),
        )
        .route(
            "/api/buckets/{bucket_id}/sources",
            get(sources::list).post(sources::create),
        )
        .route(
            "/api/buckets/{bucket_id}/keys",
            get(keys::list).post(keys::create),
        )
        .route(
            "/api/buckets/{bucket_id}/keys/{key_id}",
            delete(keys::remove),
        )
        .route("/api/analytics/overview", get(analytics::overview))
        .route("/api/analytics/buckets/{bucket_id}", get(analytics::bucket))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/api/status", get(status::status))
        .merge(page)
        .route("/api/alerts", post(alerts::create))
        .route("/api/buckets/{bucket_id}/alerts", get(alerts::list))
        .route(
            "/api/alerts/{alert_id}",
            get(alerts::get)
                .put(alerts::update)
                .patch(alerts::update)
                .delete(alerts::remove),
        )
        .route("/api/alerts/{alert_id}/pause", post(alerts::pause))
        .route("/api/alerts/{alert_id}/resume", post(alerts::resume));
    #[cfg(feature = "fault-injection")]
    let routes = routes.route("/api/_test/alerts/clock", post(alerts::advance_clock));
    routes
        // A route layer: it runs after routing, so the route is known for
        // the metrics label (unmatched paths only get the JSON 404).
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": NOT_FOUND, "message": ROUTE_NOT_FOUND})),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({
            "error": "Method Not Allowed",
            "message": "This method is not supported on this path"
        })),
    )
        .into_response()
}

/// Query parameter names that look like a key.
const KEY_PARAMS: &[&str] = &[
    "apikey",
    "api_key",
    "api-key",
    "x-api-key",
    "x_api_key",
    "key",
    "token",
    "access_token",
];

/// Percent-decoding (and `+` as a space) repeated until nothing changes
/// (at most four rounds: `%255F` is `%5F` is `_`), as lossy UTF-8.
fn decoded(text: &str) -> String {
    let mut cur = text.replace('+', " ");
    for _ in 0..4 {
        let bytes = cur.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
                (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                    out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                    i += 3;
                }
                (b, _, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        let next = String::from_utf8_lossy(&out).into_owned();
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

/// True when the query string carries something that looks like a key,
/// percent-encoded or not (`dakkio%5Fw_…`, `api%4Bey=…`).
fn key_in_query(query: &str) -> bool {
    query.split(['&', ';']).any(|pair| {
        let pair = decoded(pair).to_ascii_lowercase();
        if pair.contains("dakkio_") {
            return true;
        }
        let name = pair.split('=').next().unwrap_or("").trim();
        KEY_PARAMS.contains(&name)
    })
}

/// The request path as the access log shows it: a segment that could be a
/// key (it holds `dakkio` once decoded, or is longer than an id, or has
/// characters beyond `[A-Za-z0-9._-]`) is written `<redacted>`, so a key
/// pasted into a URL path never reaches a log, DEBUG included. Ids (24
/// hex) and route words stay readable.
pub(crate) fn loggable_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let plain = seg.len() <= 24
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                && !seg.to_ascii_lowercase().contains("dakkio");
            if plain {
                seg
            } else {
                "<redacted>"
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Routes whose handlers bound their own time: an ingest handed to the
/// store must wait for the commit, since a 408 followed by a commit would
/// make a retrying client store the reading twice.
const INGEST_ROUTES: &[&str] = &["/api/data", "/api/data/batch"];

/// Around every request: refuse keys in the URL, bound the time, log
/// without the query string, count by route and status.
async fn guard(AxState(state): AxState<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = loggable_path(req.uri().path());
    let has_query = req.uri().query().is_some();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let resp = if req.uri().query().is_some_and(key_in_query) {
        ApiError::BadRequest(KEY_IN_URL.into()).into_response()
    } else if INGEST_ROUTES.contains(&route.as_str()) {
        // Bounded inside: the body read gets `api.request_timeout`, the
        // commit is awaited (see `ingest::ingest`).
        next.run(req).await
    } else {
        match tokio::time::timeout(state.config.api.request_timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::Timeout.into_response(),
        }
    };
    let resp = super::answer::bound(
        resp,
        &state.answer_bytes,
        state.config.api.max_answer_bytes_in_flight,
    )
    .await;
    let status = resp.status().as_u16();
    metrics::counter!(
        "dakkio_api_requests_total",
        "route" => route,
        "status" => status.to_string()
    )
    .increment(1);
    debug!(
        method = %method,
        path = %path,
        query = if has_query { "<redacted>" } else { "" },
        status,
        ms = started.elapsed().as_millis() as u64,
        client = ?client,
        "api request"
    );
    resp
}

/// Authenticate the request and require an admin key; other keys get 403
/// with dakkio's message for the endpoint (`forbidden`).
pub(crate) fn admin(
    state: &State,
    req: &Request,
    forbidden: &'static str,
) -> Result<Principal, ApiError> {
    let who = authenticate(state, req.headers(), req.extensions().get::<ClientAddr>())?;
    if who.is_admin() {
        Ok(who)
    } else {
        Err(ApiError::Forbidden(forbidden))
    }
}

/// Authenticate the `X-API-Key` header (steps 2–3 of the check order).
///
/// A current key is served even while its address is throttled: the
/// throttle counts failures only, so a NAT, a reverse proxy or a local
/// process that sends bad keys cannot lock out the good clients behind the
/// same address (the admin key included). A bad key from a throttled
/// address gets 429 instead of 401 (and still counts as a failure).
pub(crate) fn authenticate(
    state: &State,
    headers: &HeaderMap,
    client: Option<&ClientAddr>,
) -> Result<Principal, ApiError> {
    authenticate_key(state, api_key_header(headers).unwrap_or(""), client)
}

/// The `X-API-Key` header, trimmed.
pub(crate) fn api_key_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Like [`authenticate`] for a key taken from elsewhere (`/metrics` also
/// accepts `Authorization: Bearer`, what Prometheus's `authorization`
/// setting sends).
pub(crate) fn authenticate_key(
    state: &State,
    key: &str,
    client: Option<&ClientAddr>,
) -> Result<Principal, ApiError> {
    let now = now_ms();
    if let Some(p) = state.keys.authenticate(key, now) {
        return Ok(p);
    }
    let Some(ip) = client.map(|c| c.0) else {
        return Err(ApiError::Unauthorized);
    };
    let mut throttle = state.throttle.lock().expect("throttle");
    let blocked = throttle.blocked_until(ip, now);
    throttle.record_failure(ip, now);
    match blocked {
        Some(until) => Err(ApiError::Throttled {
            retry_after_secs: ((until - now + 999) / 1000).max(1) as u64,
            resets_at: format_timestamp(until),
        }),
        None => Err(ApiError::Unauthorized),
    }
}

/// One of `api.max_parallel_queries` slots, held by every handler that
/// reads the store for its answer (queries, analytics, bucket details and
/// sources), so the store's read threads (8) always have room for the
/// uplink's claims.
pub(crate) async fn query_slot(
    state: &State,
) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    state
        .query_slots
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable("The local API is stopping".into()))
}

/// Run a query's heavy store work (the caller holds a [`query_slot`]) for
/// at most `api.query_timeout` (503 beyond), stopped — its blocking work
/// included — as soon as the request goes away (client gone, 408) or the
/// time is up.
pub(crate) async fn bounded_query<T, F, Fut>(state: &State, work: F) -> Result<T, ApiError>
where
    F: FnOnce(QueryStop) -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    /// Stops the query when the handler's future ends, however it ends.
    struct StopOnDrop(QueryStop);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let stop = QueryStop::default();
    let _stop_on_drop = StopOnDrop(stop.clone());
    let limit = state.config.api.query_timeout;
    match tokio::time::timeout(limit, work(stop)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::Unavailable(format!(
            "The query ran longer than {limit:?} (`api.query_timeout`) and was stopped; ask \
             for a shorter time range, fewer data sources or a coarser `groupBy`"
        ))),
    }
}

/// Steps 5b–7 for a bucket id from a path or body: format, access, existence.
pub(crate) fn bucket_for<'a>(
    state: &'a State,
    who: &Principal,
    bucket_id: &str,
) -> Result<&'a Bucket, ApiError> {
    if !is_object_id(bucket_id) {
        return Err(ApiError::BadRequest(INVALID_BUCKET_ID.into()));
    }
    let id = bucket_id.to_ascii_lowercase();
    if !who.has_bucket(&id) {
        return Err(ApiError::NoBucketAccess);
    }
    state
        .config
        .bucket(&id)
        .ok_or(ApiError::NotFound(BUCKET_NOT_FOUND))
}

/// How long a request waits for room under `api.max_body_bytes_in_flight`
/// before it gets 503.
const BODY_BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A request body, holding its share of `api.max_body_bytes_in_flight`
/// until the handler is done with it (what is parsed from it lives as long).
pub(crate) struct BodyBytes<'a> {
    bytes: Bytes,
    _reserved: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for BodyBytes<'_> {
    type Target = Bytes;
    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

/// Read a request body within `api.body_limit` (413 beyond) and, with the
/// bodies of other requests, within `api.max_body_bytes_in_flight`: its
/// declared length (or `api.body_limit` when unknown) is reserved first;
/// with no room after [`BODY_BUDGET_WAIT`] the answer is 503.
pub(crate) async fn read_body<'a>(
    state: &'a State,
    headers: &HeaderMap,
    body: Body,
) -> Result<BodyBytes<'a>, ApiError> {
    let limit = state.config.api.body_limit;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    // Bounded by `body_limit` (at most 256 MiB), so it fits a u32.
    let reserve = declared.map_or(limit, |n| n as usize).max(1) as u32;
    let reserved = match tokio::time::timeout(
        BODY_BUDGET_WAIT,
        state.body_bytes.acquire_many(reserve),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(ApiError::Unavailable("The local API is stopping".into())),
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "The gateway is receiving too many request bodies at once (more than {} \
                 bytes, `api.max_body_bytes_in_flight`); retry shortly",
                state.config.api.max_body_bytes_in_flight
            )))
        }
    };
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return ApiError::TooLarge(limit);
            }
            source = s.source();
        }
        ApiError::BadRequest("The request body could not be read".into())
    })?;
    Ok(BodyBytes {
        bytes,
        _reserved: reserved,
    })
}

/// `?limit=&offset=` of list endpoints (dakkio: default 100, max 1000).
pub(crate) fn pagination(uri: &axum::http::Uri) -> Result<(usize, usize), ApiError> {
    let pairs: Vec<(String, String)> = axum::extract::Query::try_from_uri(uri)
        .map(|q: axum::extract::Query<Vec<(String, String)>>| q.0)
        .unwrap_or_default();
    let mut limit = 100usize;
    let mut offset = 0usize;
    let mut issues = Vec::new();
    for (k, v) in pairs {
        let (slot, min, max) = match k.as_str() {
            "limit" => (&mut limit, 1, 1000),
            "offset" => (&mut offset, 0, usize::MAX),
            _ => continue,
        };
        match v.parse::<usize>() {
            Ok(n) if n < min => {
                issues.push((k, format!("Number must be greater than or equal to {min}")))
            }
            Ok(n) if n > max => {
                issues.push((k, format!("Number must be less than or equal to {max}")))
            }
            Ok(n) => *slot = n,
            Err(_) => issues.push((k, "Expected number, received nan".to_owned())),
        }
    }
    if issues.is_empty() {
        Ok((limit, offset))
    } else {
        Err(ApiError::Validation(
            issues
                .into_iter()
                .map(|(k, m)| super::error::Issue {
                    path: vec!["query".into(), k.into()],
                    message: m,
                })
                .collect(),
        ))
    }
}

/// Largest magnitude below which every integer is exact in a double (2^53).
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

/// A number as dakkio (JavaScript) writes it in an answer: an integral value
/// within ±2^53 without a fraction (`65`, not `65.0`), others as doubles.
/// Readings keep numbers as doubles (and the store and the uplink write
/// `65.0`, which a JSON parser reads as the same number); only answers of
/// the local API are shaped here.
pub(crate) fn json_number(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() <= EXACT_INTEGERS {
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Value::from(n)
    }
}

/// A reading's values as an answer shows them (see [`json_number`]).
pub(crate) fn json_values(values: &crate::reading::Values) -> serde_json::Value {
    use crate::reading::Value;
    values
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Number(n) => json_number(*n),
                Value::Bool(b) => serde_json::Value::Bool(*b),
                Value::Text(t) => serde_json::Value::String(t.clone()),
            };
            (k.to_string(), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The organisation id the local API shows (`organizationId` on buckets,
/// `_id` in the overview): 24 hex derived from `gateway.id`, stable across
/// restarts (dakkio's own id is not known to the gateway).
pub(crate) fn organization_id(gateway_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("dakkio-gateway organization {gateway_id}").as_bytes());
    h[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Timestamps as the API shows them.
pub(crate) fn ts(ms: i64) -> String {
    format_timestamp(ms)
}

pub(crate) fn opt_ts(ms: Option<i64>) -> serde_json::Value {
    ms.map_or(serde_json::Value::Null, |m| ts(m).into())
}

#[cfg(test)]
mod tests {
    use super::key_in_query;

    #[test]
    fn keys_in_query_strings_are_spotted() {
        assert!(key_in_query("apiKey=abc"));
        assert!(key_in_query("period=7d&x-api-key=abc"));
        assert!(key_in_query("foo=dakkio_w_abc"));
        assert!(key_in_query("foo=DAKKIO_W_abc"));
        assert!(!key_in_query("period=7d&limit=10"));
        // Percent-encoded, once or twice, in the value or the name.
        assert!(key_in_query("foo=dakkio%5Fw_abc"));
        assert!(key_in_query("foo=%64akkio_r_abc"));
        assert!(key_in_query("foo=dakkio%255Fw_abc"));
        assert!(key_in_query("api%4Bey=abc"));
        assert!(key_in_query("period=7d&x%2Dapi%2Dkey=abc"));
        assert!(key_in_query("a=1;token=abc"));
        assert!(!key_in_query("period=7d&note=%E2%82%AC%ZZ"));
    }

    #[test]
    fn key_shaped_path_segments_are_redacted() {
        use super::loggable_path;
        assert_eq!(
            loggable_path("/api/buckets/507f1f77bcf86cd799439011/keys"),
            "/api/buckets/507f1f77bcf86cd799439011/keys"
        );
        for path in [
            "/api/buckets/dakkio_w_abc/keys",
            "/api/dakkio%5Fa_x",
            "/x/DAKKIO_R_abc",
            "/api/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
            "/api/a%20b",
        ] {
            let logged = loggable_path(path);
            assert!(logged.contains("<redacted>"), "{path} → {logged}");
            assert!(!logged.to_ascii_lowercase().contains("dakkio"), "{logged}");
        }
        assert_eq!(loggable_path("/health"), "/health");
    }

    #[test]
    fn integral_numbers_are_answered_without_a_fraction() {
        for (n, text) in [
            (65.0, "65"),
            (22.5, "22.5"),
            (-0.0, "0"),
            (-3.0, "-3"),
            (9_007_199_254_740_992.0, "9007199254740992"),
            (1e300, "1e+300"),
        ] {
            assert_eq!(super::json_number(n).to_string(), text);
        }
    }
}
