//! dakkio's error envelope texts, written once (dakkio-api.md §1.4): the
//! `error` categories and the `message`s dakkio documents, plus the few the
//! gateway and its test stand-in chose where dakkio's docs are silent (each
//! marked). The local API answers with them, the stand-in answers with them
//! and the uplink recognises them; changing one here changes all three.
//!
//! Error body shape: `{"error": <category>, "message": <text>, "details": […]}`
//! (`details` only with [`INVALID_PARAMETERS`]).

// ---- `error` categories ----

pub const VALIDATION_ERROR: &str = "Validation Error";
pub const UNAUTHORIZED: &str = "Unauthorized";
pub const FORBIDDEN: &str = "Forbidden";
pub const NOT_FOUND: &str = "Not Found";
pub const TOO_MANY_REQUESTS: &str = "Too Many Requests";
/// Not documented by dakkio (its docs never mention a body limit).
pub const PAYLOAD_TOO_LARGE: &str = "Payload Too Large";

// ---- `message`s ----

/// 400 with `details` (Zod issues).
pub const INVALID_PARAMETERS: &str = "Invalid request parameters";
/// 400 without `details`.
pub const INVALID_BUCKET_ID: &str = "Invalid bucket ID format";
/// 400 from the body parser (Express's), before authentication.
pub const INVALID_JSON: &str = "Invalid JSON in request body";
/// 401: no key, or one dakkio does not know.
pub const INVALID_KEY: &str = "Invalid or missing API key";
/// 403: a bucket key used on another bucket.
pub const NO_BUCKET_ACCESS: &str = "API key does not have access to this bucket";
/// 403: a read key on an ingest endpoint. Not documented by dakkio (it
/// documents the 403 only); worded like its other `Only Admin keys …` texts.
pub const INGEST_FORBIDDEN: &str = "Only Admin and Write keys can ingest data";
/// 403: a read key creating a data source. Not documented by dakkio (it
/// documents the scope only); worded like [`INGEST_FORBIDDEN`].
pub const SOURCE_CREATE_FORBIDDEN: &str = "Only Admin and Write keys can create data sources";
pub const BUCKET_NOT_FOUND: &str = "Bucket not found";
pub const KEY_NOT_FOUND: &str = "API key not found";
/// 404 for a path no route serves. Not documented by dakkio.
pub const ROUTE_NOT_FOUND: &str = "Route not found";

/// 429 when the month's calls are used up; `resets_at` is ISO-8601 UTC
/// (`2024-01-15T10:30:00Z`).
pub fn rate_limit_exceeded(resets_at: &str) -> String {
    format!("Rate limit exceeded. Resets at {resets_at}")
}

// ---- 201 answers ----

/// `POST /api/data/batch`: `{"message": …, "count": N}`.
pub const BATCH_INGESTED: &str = "Batch ingested successfully";
/// `POST /api/buckets/:id/sources`: `{"message": …, "dataSource": {…}}`
/// (dakkio's answer is not documented; worded like its other 201s).
pub const SOURCE_CREATED: &str = "Data source created successfully";
/// `POST /api/data`: `{"message": …, "dataPoint": {…}}`.
pub const POINT_INGESTED: &str = "Data point ingested successfully";

// ---- alert rules (dakkio-api.md §2.7) ----

/// `POST /api/alerts` 201 (documented).
pub const ALERT_CREATED: &str = "Alert rule created successfully";
/// The gateway's own endpoints (dakkio documents none): update, delete,
/// pause, resume.
pub const ALERT_UPDATED: &str = "Alert rule updated successfully";
pub const ALERT_DELETED: &str = "Alert rule deleted successfully";
pub const ALERT_PAUSED: &str = "Alert rule paused";
pub const ALERT_RESUMED: &str = "Alert rule resumed";
/// 404 for an unknown rule id. Not documented by dakkio.
pub const ALERT_NOT_FOUND: &str = "Alert rule not found";
/// 400 for a malformed rule id. Not documented by dakkio.
pub const INVALID_ALERT_ID: &str = "Invalid alert rule ID format";
/// 403: a read key creating or changing a rule. Not documented by dakkio
/// (it documents read ❌); worded like its `Only Admin keys …` texts.
pub const ALERTS_FORBIDDEN: &str = "Only Admin and Write keys can manage alert rules";
