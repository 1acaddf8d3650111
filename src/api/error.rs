//! The one place where local API errors become HTTP answers: a status and
//! dakkio's error body `{"error": "<type>", "message": "…", "details": […]}`
//! (`details` only on schema validation, as dakkio does). Messages dakkio
//! documents are used verbatim (dakkio-api.md §1.4).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub use crate::dakkio::messages::{
    BUCKET_NOT_FOUND, INVALID_BUCKET_ID, INVALID_KEY, INVALID_PARAMETERS, KEY_NOT_FOUND,
    NO_BUCKET_ACCESS,
};
use crate::dakkio::messages::{
    FORBIDDEN, NOT_FOUND, PAYLOAD_TOO_LARGE, TOO_MANY_REQUESTS, UNAUTHORIZED, VALIDATION_ERROR,
};
pub use crate::dakkio::Issue;

pub const KEY_IN_URL: &str = "API keys are accepted only in the X-API-Key header, never in \
                              the URL; remove the key from the query string (it may now be \
                              in proxy or browser logs: consider replacing it)";
pub const BUCKETS_MANAGED_UPSTREAM: &str = "Buckets are managed in dakkio; this gateway serves \
                                            the buckets listed in its configuration \
                                            (`[[buckets]]`)";

#[derive(Debug)]
pub enum ApiError {
    /// 401: no key, an unknown key, a malformed or deleted key.
    Unauthorized,
    /// 403 with dakkio's message for the endpoint (wrong key type).
    Forbidden(&'static str),
    /// 403: a bucket key used on another bucket.
    NoBucketAccess,
    /// 404 with a message (`Bucket not found`, `API key not found`, …).
    NotFound(&'static str),
    /// 400 `Invalid request parameters` with Zod-like `details`.
    Validation(Vec<Issue>),
    /// 400 with a message and no `details`.
    BadRequest(String),
    /// 413: the body is larger than `api.body_limit`.
    TooLarge(usize),
    /// 429 after too many failed authentications from one address.
    Throttled {
        retry_after_secs: u64,
        resets_at: String,
    },
    /// 408: the request took longer than `api.request_timeout`.
    Timeout,
    /// 503: the store refused the readings (full, disk full, stopping);
    /// nothing was accepted.
    Unavailable(String),
    /// 500: a store read failed. The message is for people, never a secret.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::NoBucketAccess => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Validation(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A single schema issue at `path` (e.g. `["body","bucketId"]`).
    pub fn issue(path: &[&str], message: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![Issue {
            path: path.iter().map(|p| Value::from(*p)).collect(),
            message: message.into(),
        }])
    }

    pub fn body(&self) -> Value {
        let (kind, message) = match self {
            ApiError::Unauthorized => (UNAUTHORIZED, INVALID_KEY.to_owned()),
            ApiError::Forbidden(m) => (FORBIDDEN, (*m).to_owned()),
            ApiError::NoBucketAccess => (FORBIDDEN, NO_BUCKET_ACCESS.to_owned()),
            ApiError::NotFound(m) => (NOT_FOUND, (*m).to_owned()),
            ApiError::Validation(issues) => {
                let details: Vec<Value> = issues
                    .iter()
                    .map(|i| json!({"path": i.path, "message": i.message}))
                    .collect();
                return json!({
                    "error": VALIDATION_ERROR,
                    "message": INVALID_PARAMETERS,
                    "details": details,
                });
            }
            ApiError::BadRequest(m) => (VALIDATION_ERROR, m.clone()),
            ApiError::TooLarge(limit) => (
                PAYLOAD_TOO_LARGE,
                format!(
                    "Request body is larger than {limit} bytes (`api.body_limit`); send fewer \
                     points per request"
                ),
            ),
            // Not dakkio's quota wording ("Rate limit exceeded"): a client
            // must not take this for its monthly plan being used up.
            ApiError::Throttled { resets_at, .. } => (
                TOO_MANY_REQUESTS,
                format!(
                    "Too many failed authentication attempts from this address; \
                     retry after {resets_at} with a valid X-API-Key"
                ),
            ),
            ApiError::Timeout => (
                "Request Timeout",
                "The request was not completed within `api.request_timeout`".to_owned(),
            ),
            ApiError::Unavailable(m) => ("Service Unavailable", m.clone()),
            ApiError::Internal(m) => ("Internal Server Error", m.clone()),
        };
        json!({"error": kind, "message": message})
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::StoreError;
        match e {
            StoreError::Full | StoreError::DiskFull | StoreError::Closed => {
                ApiError::Unavailable(format!("The gateway cannot store data right now: {e}"))
            }
            other => {
                tracing::error!(error = %other, "local API store read failed");
                ApiError::Internal("The gateway's store failed; see its log".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        match &self {
            ApiError::Throttled {
                retry_after_secs, ..
            } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::Unavailable(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        resp
    }
}
