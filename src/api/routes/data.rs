//! `POST /api/data`, `POST /api/data/batch` (into the store's queue, 201
//! after the commit) and `POST /api/data/query` (pages, aggregations,
//! automatic downsampling).

use axum::extract::{Request, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value as Json_};

use super::{
    authenticate, bounded_query, bucket_for, json_number, json_values, query_slot, read_body, ts,
    AppState,
};
use crate::api::error::{ApiError, Issue};
use crate::api::ClientAddr;
use crate::api::State;
use crate::config::Bucket;
use crate::dakkio::messages::{BATCH_INGESTED, INGEST_FORBIDDEN, INVALID_JSON, POINT_INGESTED};
use crate::dakkio::validate::{self, Parsed, Rejection};
use crate::reading::{is_object_id, now_ms, parse_timestamp, Origin, Reading, Value, Values};
use crate::store::{AggGroup, Interval, QueryStop, SeriesFilter};

/// Value fields one point may carry. A sensor reading has a handful; the
/// bound keeps one point from making every later aggregation of its data
/// source slow (dakkio documents no limit).
pub const MAX_FIELDS_PER_POINT: usize = 1000;

/// Above this many points in range, an unpaged query is averaged.
pub const DOWNSAMPLE_THRESHOLD: i64 = 500;
const RAW_LIMIT_DEFAULT: usize = 100;
const AGG_LIMIT_DEFAULT: usize = 1000;
const LIMIT_MAX: i64 = 1000;

pub(crate) async fn ingest_one(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    ingest(state, req, false).await
}

pub(crate) async fn ingest_batch(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    ingest(state, req, true).await
}

async fn ingest(state: AppState, req: Request, batch: bool) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let who = authenticate(&state, &parts.headers, parts.extensions.get::<ClientAddr>())?;
    if !who.can_write() {
        return Err(ApiError::Forbidden(INGEST_FORBIDDEN));
    }
    // `api.request_timeout` bounds receiving the body (a slow client); once
    // the readings are handed to the store the commit is awaited whatever
    // it takes: answering 408 and committing afterwards would make a
    // retrying client store them twice.
    let body = tokio::time::timeout(
        state.config.api.request_timeout,
        read_body(&state, &parts.headers, body),
    )
    .await
    .map_err(|_| ApiError::Timeout)??;
    let outcome = if batch {
        validate::parse_batch(&body)
    } else {
        validate::parse_single(&body)
    };
    let parsed = match outcome.result {
        Ok(p) => p,
        Err(Rejection::Schema(issues)) => return Err(ApiError::Validation(issues)),
        Err(Rejection::Message(m)) => return Err(ApiError::BadRequest(m.into())),
    };
    let now = now_ms();
    let mut readings = to_readings(&parsed, now).map_err(ApiError::Validation)?;
    timestamps_in_window(&parsed, &readings, now)?;
    let bucket = bucket_for(&state, &who, &parsed.bucket_id)?;
    for r in &mut readings {
        r.bucket_id.clone_from(&bucket.id);
    }
    let n = readings.len();
    let echo = if batch {
        None
    } else {
        readings.first().cloned()
    };
    let appended = state.store.append(readings).await?;
    metrics::counter!("dakkio_readings_accepted_total", "source" => "api").increment(n as u64);
    let ids: Vec<String> = appended.ids().collect();
    let created = ts(now_ms());
    let body = match echo {
        None => json!({
            "message": BATCH_INGESTED,
            "count": n,
            "dataPointIds": ids,
        }),
        Some(r) => {
            let mut point = json!({
                "_id": ids.first().cloned().unwrap_or_default(),
                "bucketId": r.bucket_id,
                "dataSourceId": r.data_source_id,
                "timestamp": ts(r.timestamp_ms),
                "values": json_values(&r.values),
                "createdAt": created,
            });
            if !r.metadata.is_empty() {
                point["metadata"] = Json_::Object(r.metadata);
            }
            json!({"message": POINT_INGESTED, "dataPoint": point})
        }
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// How far back an ingested `timestamp` may lie: 3650 days, dakkio's
/// longest bucket retention (`retentionDays` 1–3650), so nothing is taken
/// that no bucket would keep. dakkio documents no range; a bound is needed
/// because query and aggregation work follows the data's time extent
/// (a reading at year 0 and one at 9999 made every aggregation scan ten
/// millennia).
pub(crate) const TIMESTAMP_PAST_MS: i64 = 3650 * 86_400_000;
/// How far ahead of the gateway's clock a `timestamp` may lie (clock skew
/// of devices).
pub(crate) const TIMESTAMP_FUTURE_MS: i64 = 86_400_000;
const TIMESTAMP_RANGE: &str = "Timestamp must be within the last 3650 days (the longest \
                               retention) and at most 1 day ahead of the gateway's clock";

/// The gateway's own bound on ingested timestamps (dakkio documents none;
/// [`to_readings`] is dakkio's validation and stays without it): every
/// reading within [`TIMESTAMP_PAST_MS`] before `now` to
/// [`TIMESTAMP_FUTURE_MS`] after it, else a 400 naming each point.
fn timestamps_in_window(
    parsed: &Parsed<'_>,
    readings: &[Reading],
    now: i64,
) -> Result<(), ApiError> {
    let window = now - TIMESTAMP_PAST_MS..=now + TIMESTAMP_FUTURE_MS;
    let issues: Vec<Issue> = readings
        .iter()
        .enumerate()
        .filter(|(_, r)| !window.contains(&r.timestamp_ms))
        .map(|(i, _)| {
            let mut path = parsed.point_path(i);
            path.push("timestamp".into());
            Issue {
                path,
                message: TIMESTAMP_RANGE.into(),
            }
        })
        .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(issues))
    }
}

/// The readings of a body that passed the schema, each point whole (its
/// `values` and its `metadata` exactly as sent), with an empty bucket id for
/// the caller to fill; or every issue found. Batches are all or nothing: a
/// point that cannot be stored whole fails the request, it is never skipped.
pub(crate) fn to_readings(parsed: &Parsed<'_>, received: i64) -> Result<Vec<Reading>, Vec<Issue>> {
    let mut issues = Vec::new();
    let mut readings = Vec::with_capacity(parsed.points.len());
    for (i, p) in parsed.points.iter().enumerate() {
        let root = parsed.point_path(i);
        let values = to_values(p.values.get(), &root, &mut issues);
        let metadata = match p.metadata {
            None => Some(Map::new()),
            Some(m) => match serde_json::from_str::<Map<String, Json_>>(m.get()) {
                Ok(map) => Some(map),
                Err(e) => {
                    issues.push(unreadable(&root, "metadata", &e));
                    None
                }
            },
        };
        let (Some(values), Some(metadata)) = (values, metadata) else {
            continue;
        };
        readings.push(Reading {
            bucket_id: String::new(),
            data_source_id: p.data_source_id.to_ascii_lowercase(),
            timestamp_ms: p.timestamp.as_ref().map_or(received, |(_, ms)| *ms),
            values,
            metadata,
            origin: Origin::Api,
        });
    }
    if issues.is_empty() {
        Ok(readings)
    } else {
        Err(issues)
    }
}

/// A point's `values` as the gateway stores them: numbers, strings and
/// booleans (dakkio's schema types); anything else is a schema issue.
pub(crate) fn to_values(raw: &str, root: &[Json_], issues: &mut Vec<Issue>) -> Option<Values> {
    let map: Map<String, Json_> = match serde_json::from_str(raw) {
        Ok(map) => map,
        Err(e) => {
            issues.push(unreadable(root, "values", &e));
            return None;
        }
    };
    if map.len() > MAX_FIELDS_PER_POINT {
        let mut path = root.to_vec();
        path.push("values".into());
        issues.push(Issue {
            path,
            message: format!(
                "Too many fields: {} (at most {MAX_FIELDS_PER_POINT} per point)",
                map.len()
            ),
        });
        return None;
    }
    let mut out = Values::new();
    let before = issues.len();
    for (k, v) in map {
        let value = match v {
            Json_::Number(n) => n.as_f64().map(Value::Number),
            Json_::Bool(b) => Some(Value::Bool(b)),
            Json_::String(s) => Some(Value::Text(s)),
            _ => None,
        };
        match value {
            Some(x) => {
                out.insert(k, x);
            }
            None => {
                let mut path = root.to_vec();
                path.push("values".into());
                path.push(k.into());
                issues.push(Issue {
                    path,
                    message: "Expected number, string or boolean".into(),
                });
            }
        }
    }
    (issues.len() == before).then_some(out)
}

/// The issue for a member the schema accepted but that cannot be stored
/// as sent: a number beyond the range of a double (`1e400`), a lone UTF-16
/// surrogate (`"\ud800"`), or nesting deeper than 128 levels.
fn unreadable(root: &[Json_], member: &str, e: &serde_json::Error) -> Issue {
    let mut path = root.to_vec();
    path.push(member.into());
    let what = match e.to_string() {
        m if m.contains("number out of range") => "a number outside the range of a 64-bit float",
        m if m.contains("surrogate") || m.contains("hex escape") => {
            "a string with an unpaired UTF-16 surrogate"
        }
        m if m.contains("recursion limit") => "nesting deeper than 128 levels",
        _ => "a value that cannot be stored",
    };
    Issue {
        path,
        message: format!("Cannot be stored: contains {what}"),
    }
}

// ---------------------------------------------------------------- query

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Avg,
    Min,
    Max,
    Sum,
    Count,
}

const FUNCS: &[(&str, Func)] = &[
    ("avg", Func::Avg),
    ("min", Func::Min),
    ("max", Func::Max),
    ("sum", Func::Sum),
    ("count", Func::Count),
];

const GROUPS: &[(&str, Interval)] = &[
    ("minute", Interval::MINUTE),
    ("hour", Interval::HOUR),
    ("day", Interval::DAY),
    ("week", Interval::Week),
    ("month", Interval::Month),
];

/// The validated query body.
#[derive(Debug, Default)]
pub(crate) struct QueryIn {
    bucket_id: String,
    sources: Option<Vec<String>>,
    start: Option<i64>,
    end: Option<i64>,
    limit: Option<usize>,
    offset: Option<usize>,
    aggregation: Option<(&'static str, Func)>,
    group_by: Option<(&'static str, Interval)>,
    downsampling: bool,
}

fn kind(v: Option<&Json_>) -> &'static str {
    match v {
        None => "undefined",
        Some(Json_::Null) => "null",
        Some(Json_::Bool(_)) => "boolean",
        Some(Json_::Number(_)) => "number",
        Some(Json_::String(_)) => "string",
        Some(Json_::Array(_)) => "array",
        Some(Json_::Object(_)) => "object",
    }
}

struct Issues(Vec<Issue>);

impl Issues {
    fn push(&mut self, path: &[&str], message: impl Into<String>) {
        self.0.push(Issue {
            path: path.iter().map(|p| Json_::from(*p)).collect(),
            message: message.into(),
        });
    }
}

/// The keys a query body may hold (dakkio-api.md §6).
const TOP_KEYS: &[&str] = &["bucketId", "filters", "aggregation", "groupBy"];
const FILTER_KEYS: &[&str] = &[
    "startTime",
    "endTime",
    "dataSourceId",
    "dataSourceIds",
    "limit",
    "offset",
    "downsampling",
    "aggregation",
    "groupBy",
];

pub(crate) fn parse_query(body: &[u8]) -> Result<QueryIn, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::BadRequest(INVALID_JSON.into()))?;
    let doc: Json_ = if text.trim().is_empty() {
        Json_::Object(Map::new())
    } else {
        serde_json::from_str(text).map_err(|_| ApiError::BadRequest(INVALID_JSON.into()))?
    };
    let mut issues = Issues(Vec::new());
    let Json_::Object(top) = &doc else {
        issues.push(
            &["body"],
            format!("Expected object, received {}", kind(Some(&doc))),
        );
        return Err(ApiError::Validation(issues.0));
    };
    let mut q = QueryIn {
        downsampling: true,
        ..QueryIn::default()
    };
    match top.get("bucketId") {
        Some(Json_::String(s)) => q.bucket_id = s.clone(),
        other => issues.push(
            &["body", "bucketId"],
            format!("Expected string, received {}", kind(other)),
        ),
    }
    let empty = Map::new();
    let filters = match top.get("filters") {
        None => &empty,
        Some(Json_::Object(f)) => f,
        other => {
            issues.push(
                &["body", "filters"],
                format!("Expected object, received {}", kind(other)),
            );
            &empty
        }
    };
    for (field, slot) in [("startTime", &mut q.start), ("endTime", &mut q.end)] {
        match filters.get(field) {
            None => {}
            Some(Json_::String(s)) => match parse_timestamp(s) {
                Some(ms) => *slot = Some(ms),
                None => issues.push(&["body", "filters", field], "Invalid datetime"),
            },
            other => issues.push(
                &["body", "filters", field],
                format!("Expected string, received {}", kind(other)),
            ),
        }
    }
    if let (Some(s), Some(e)) = (q.start, q.end) {
        if e < s {
            issues.push(
                &["body", "filters", "endTime"],
                "endTime must not be before startTime",
            );
        }
    }
    let mut sources = Vec::new();
    let mut source_filter = false;
    match filters.get("dataSourceId") {
        None => {}
        Some(Json_::String(s)) if is_object_id(s) => {
            source_filter = true;
            sources.push(s.to_ascii_lowercase());
        }
        Some(Json_::String(_)) => issues.push(
            &["body", "filters", "dataSourceId"],
            "Invalid data source ID format",
        ),
        other => issues.push(
            &["body", "filters", "dataSourceId"],
            format!("Expected string, received {}", kind(other)),
        ),
    }
    match filters.get("dataSourceIds") {
        None => {}
        Some(Json_::Array(items)) => {
            source_filter = true;
            for (i, item) in items.iter().enumerate() {
                match item {
                    Json_::String(s) if is_object_id(s) => sources.push(s.to_ascii_lowercase()),
                    Json_::String(_) => issues.0.push(Issue {
                        path: vec![
                            "body".into(),
                            "filters".into(),
                            "dataSourceIds".into(),
                            i.into(),
                        ],
                        message: "Invalid data source ID format".into(),
                    }),
                    other => issues.0.push(Issue {
                        path: vec![
                            "body".into(),
                            "filters".into(),
                            "dataSourceIds".into(),
                            i.into(),
                        ],
                        message: format!("Expected string, received {}", kind(Some(other))),
                    }),
                }
            }
        }
        other => issues.push(
            &["body", "filters", "dataSourceIds"],
            format!("Expected array, received {}", kind(other)),
        ),
    }
    if source_filter {
        q.sources = Some(sources);
    }
    for (field, min, slot) in [("limit", 1, &mut q.limit), ("offset", 0, &mut q.offset)] {
        let Some(v) = filters.get(field) else {
            continue;
        };
        let path = ["body", "filters", field];
        match v {
            Json_::Number(n) => match n.as_i64() {
                None => issues.push(&path, "Expected integer, received float"),
                Some(x) if x < min => issues.push(
                    &path,
                    format!("Number must be greater than or equal to {min}"),
                ),
                Some(x) if field == "limit" && x > LIMIT_MAX => issues.push(
                    &path,
                    format!("Number must be less than or equal to {LIMIT_MAX}"),
                ),
                Some(x) => *slot = Some(x as usize),
            },
            other => issues.push(
                &path,
                format!("Expected number, received {}", kind(Some(other))),
            ),
        }
    }
    match filters.get("downsampling") {
        None => {}
        Some(Json_::Bool(b)) => q.downsampling = *b,
        other => issues.push(
            &["body", "filters", "downsampling"],
            format!("Expected boolean, received {}", kind(other)),
        ),
    }
    // `aggregation` and `groupBy` at the top level or inside `filters`.
    for (scope, map) in [("", top), ("filters", filters)] {
        let path = |f: &'static str| -> Vec<&'static str> {
            if scope.is_empty() {
                vec!["body", f]
            } else {
                vec!["body", "filters", f]
            }
        };
        if let Some(v) = map.get("aggregation") {
            match enum_value(v, FUNCS) {
                Ok(f) => q.aggregation = Some(f),
                Err(m) => issues.push(&path("aggregation"), m),
            }
        }
        if let Some(v) = map.get("groupBy") {
            match enum_value(v, GROUPS) {
                Ok(g) => q.group_by = Some(g),
                Err(m) => issues.push(&path("groupBy"), m),
            }
        }
    }
    // Zod strict objects: a typo (`dataSourceID`) or a filter the gateway
    // does not know (`metadata`, `sort`) is refused, never silently ignored
    // (an unfiltered answer would look like a filtered one).
    for (path, map, known) in [
        (&["body"][..], top, TOP_KEYS),
        (&["body", "filters"][..], filters, FILTER_KEYS),
    ] {
        let unknown: Vec<String> = map
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| format!("'{k}'"))
            .collect();
        if !unknown.is_empty() {
            issues.push(
                path,
                format!("Unrecognized key(s) in object: {}", unknown.join(", ")),
            );
        }
    }
    if q.aggregation.is_some() && q.group_by.is_none() && issues.0.is_empty() {
        issues.push(&["body", "groupBy"], "Required");
    }
    if issues.0.is_empty() {
        Ok(q)
    } else {
        Err(ApiError::Validation(issues.0))
    }
}

/// Zod's enum check and message.
fn enum_value<T: Copy>(
    v: &Json_,
    options: &[(&'static str, T)],
) -> Result<(&'static str, T), String> {
    let list: Vec<String> = options.iter().map(|(n, _)| format!("'{n}'")).collect();
    match v {
        Json_::String(s) => options
            .iter()
            .find(|(n, _)| n == s)
            .copied()
            .ok_or_else(|| {
                format!(
                    "Invalid enum value. Expected {}, received '{s}'",
                    list.join(" | ")
                )
            }),
        other => Err(format!(
            "Expected {}, received {}",
            list.join(" | "),
            kind(Some(other))
        )),
    }
}

/// A reading's stored `values` for an answer, with integral numbers
/// written as dakkio does (`65`). The store writes doubles (`65.0`): a row
/// with `.0` anywhere is parsed and written again (exact for doubles);
/// others are passed through as stored.
fn stored_values(json: String) -> Result<Box<RawValue>, ApiError> {
    let bad = |_| ApiError::Internal("a stored reading is not valid JSON".into());
    if !json.contains(".0") {
        return RawValue::from_string(json).map_err(bad);
    }
    let values: Values = serde_json::from_str(&json).map_err(bad)?;
    let text = serde_json::to_string(&json_values(&values)).map_err(bad)?;
    RawValue::from_string(text).map_err(bad)
}

#[derive(Serialize)]
struct PointOut<'a> {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "bucketId")]
    bucket_id: &'a str,
    #[serde(rename = "dataSourceId")]
    data_source_id: String,
    timestamp: String,
    values: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct GroupOut {
    timestamp: String,
    #[serde(rename = "dataSourceId")]
    data_source_id: String,
    values: Map<String, Json_>,
    count: u64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Item<'a> {
    Point(PointOut<'a>),
    Group(GroupOut),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    count: usize,
    total: i64,
    limit: usize,
    offset: usize,
    has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregation: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    downsampling_applied: Option<bool>,
}

#[derive(Serialize)]
struct QueryOut<'a> {
    data: Vec<Item<'a>>,
    metadata: Meta,
}

pub(crate) async fn query(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let who = authenticate(&state, &parts.headers, parts.extensions.get::<ClientAddr>())?;
    let body = read_body(&state, &parts.headers, body).await?;
    let q = parse_query(&body)?;
    let bucket = bucket_for(&state, &who, &q.bucket_id)?;
    let _slot = query_slot(&state).await?;
    bounded_query(&state, |stop| answer(&state, bucket, q, stop)).await
}

/// The answer to a valid query of `bucket`; `stop` ends its store work.
async fn answer(
    state: &State,
    bucket: &Bucket,
    q: QueryIn,
    stop: QueryStop,
) -> Result<Response, ApiError> {
    let filter = SeriesFilter {
        bucket_id: bucket.id.clone(),
        sources: q.sources.clone(),
        start_ms: q.start,
        end_ms: q.end,
    };
    let reader = state.store.reader();
    let explicit = q.aggregation.is_some() || q.group_by.is_some();
    if explicit {
        let (fname, func) = q.aggregation.unwrap_or(("avg", Func::Avg));
        let (gname, interval) = q.group_by.unwrap_or(("day", Interval::DAY));
        let groups = reader.aggregate_until(filter, interval, stop).await?;
        let out = groups_page(
            &groups,
            func,
            q.limit.unwrap_or(AGG_LIMIT_DEFAULT),
            q.offset.unwrap_or(0),
        );
        let meta = Meta {
            aggregation: Some(fname),
            group_by: Some(gname.to_owned()),
            ..out.1
        };
        return Ok(Json(QueryOut {
            data: out.0,
            metadata: meta,
        })
        .into_response());
    }
    let paged = q.limit.is_some() || q.offset.is_some();
    if !paged && q.downsampling {
        let (total, extent) = reader
            .query_extent_until(filter.clone(), stop.clone())
            .await?;
        if let (true, Some((lo, hi))) = (total > DOWNSAMPLE_THRESHOLD, extent) {
            let span = q.end.unwrap_or(hi + 1) - q.start.unwrap_or(lo);
            let step = nice_step(span / DOWNSAMPLE_THRESHOLD + 1);
            let groups = reader
                .aggregate_until(filter, Interval::Fixed(step), stop)
                .await?;
            let out = groups_page(&groups, Func::Avg, AGG_LIMIT_DEFAULT, 0);
            let meta = Meta {
                aggregation: Some("avg"),
                group_by: Some(crate::config::units::format_duration(
                    std::time::Duration::from_millis(step as u64),
                )),
                downsampling_applied: Some(true),
                ..out.1
            };
            return Ok(Json(QueryOut {
                data: out.0,
                metadata: meta,
            })
            .into_response());
        }
    }
    let limit = q.limit.unwrap_or(RAW_LIMIT_DEFAULT);
    let offset = q.offset.unwrap_or(0);
    let (total, rows) = reader
        .query_points_until(filter, limit, offset, stop)
        .await?;
    let store_id = state.store.store_id();
    let mut data = Vec::with_capacity(rows.len());
    for r in rows {
        data.push(Item::Point(PointOut {
            id: crate::store::reading_id(store_id, r.seq),
            bucket_id: &bucket.id,
            data_source_id: r.data_source_id,
            timestamp: ts(r.timestamp_ms),
            values: stored_values(r.values_json)?,
            metadata: r.metadata_json.and_then(|m| RawValue::from_string(m).ok()),
        }));
    }
    let count = data.len();
    let meta = Meta {
        count,
        total,
        limit,
        offset,
        has_more: (offset + count) < total as usize,
        aggregation: None,
        group_by: None,
        downsampling_applied: None,
    };
    Ok(Json(QueryOut {
        data,
        metadata: meta,
    })
    .into_response())
}

fn groups_page(
    groups: &[AggGroup],
    func: Func,
    limit: usize,
    offset: usize,
) -> (Vec<Item<'static>>, Meta) {
    let total = groups.len();
    let data: Vec<Item<'static>> = groups
        .iter()
        .skip(offset)
        .take(limit)
        .map(|g| {
            let values = g
                .fields
                .iter()
                .map(|(name, acc)| {
                    let v = match func {
                        Func::Avg => json_number(acc.avg()),
                        Func::Min => json_number(acc.min),
                        Func::Max => json_number(acc.max),
                        Func::Sum => json_number(acc.sum),
                        Func::Count => json!(acc.count),
                    };
                    (name.clone(), v)
                })
                .collect();
            Item::Group(GroupOut {
                timestamp: ts(g.start_ms),
                data_source_id: g.data_source_id.clone(),
                values,
                count: g.count,
            })
        })
        .collect();
    let count = data.len();
    (
        data,
        Meta {
            count,
            total: total as i64,
            limit,
            offset,
            has_more: offset + count < total,
            aggregation: None,
            group_by: None,
            downsampling_applied: None,
        },
    )
}

/// The smallest round interval of at least `ms`.
fn nice_step(ms: i64) -> i64 {
    const S: i64 = 1000;
    const STEPS: &[i64] = &[
        S,
        2 * S,
        5 * S,
        10 * S,
        15 * S,
        30 * S,
        60 * S,
        120 * S,
        300 * S,
        600 * S,
        900 * S,
        1800 * S,
        3600 * S,
        7200 * S,
        10_800 * S,
        21_600 * S,
        43_200 * S,
        86_400 * S,
        172_800 * S,
        604_800 * S,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| *s >= ms)
        .unwrap_or_else(|| ms.div_euclid(86_400_000).saturating_add(1) * 86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/regressions/serial_line/`): serde_json's
    /// default float parser can be one ulp off, so `-3e23` posted to the
    /// local API was stored as `-2.9999999999999997e23`. Values must be the
    /// nearest double, as dakkio's `JSON.parse` reads them.
    #[test]
    fn fuzz_values_are_parsed_to_the_nearest_double() {
        for text in [
            "-3e23",
            "3.333333333333333e43",
            "1333333333333333333333333333333333333333333333333330",
            "0.1",
            "2.2250738585072014e-308",
        ] {
            let mut issues = Vec::new();
            let values = to_values(&format!("{{\"t\":{text}}}"), &[], &mut issues).unwrap();
            let want: f64 = text.parse().unwrap();
            assert_eq!(values["t"], Value::Number(want), "{text}");
        }
    }

    fn issues(body: serde_json::Value) -> Vec<(serde_json::Value, String)> {
        match parse_query(body.to_string().as_bytes()) {
            Err(ApiError::Validation(i)) => i
                .into_iter()
                .map(|i| (serde_json::Value::Array(i.path), i.message))
                .collect(),
            other => panic!("expected issues, got {other:?}"),
        }
    }

    #[test]
    fn query_body_is_validated_like_zod() {
        let got = issues(json!({"filters": {"limit": 5000, "startTime": "soon",
            "dataSourceIds": ["x"]}, "aggregation": "median"}));
        let paths: Vec<String> = got.iter().map(|(p, m)| format!("{p} {m}")).collect();
        assert_eq!(
            paths,
            [
                r#"["body","bucketId"] Expected string, received undefined"#,
                r#"["body","filters","startTime"] Invalid datetime"#,
                r#"["body","filters","dataSourceIds",0] Invalid data source ID format"#,
                r#"["body","filters","limit"] Number must be less than or equal to 1000"#,
                r#"["body","aggregation"] Invalid enum value. Expected 'avg' | 'min' | 'max' | 'sum' | 'count', received 'median'"#,
            ]
        );
        let q = parse_query(
            json!({"bucketId": "b", "filters": {"aggregation": "max", "groupBy": "week"}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(q.aggregation.unwrap().1, Func::Max);
        assert_eq!(q.group_by.unwrap().1, Interval::Week);
        assert_eq!(
            issues(json!({"bucketId": "b", "aggregation": "sum"}))[0].1,
            "Required"
        );
        let got = issues(json!({"bucketId": "b", "sort": "desc",
            "filters": {"dataSourceID": "x", "metadata": {}, "limit": 1}}));
        assert_eq!(
            got,
            [
                (
                    json!(["body"]),
                    "Unrecognized key(s) in object: 'sort'".into()
                ),
                (
                    json!(["body", "filters"]),
                    "Unrecognized key(s) in object: 'dataSourceID', 'metadata'".into()
                ),
            ]
        );
    }

    #[test]
    fn downsampling_steps_are_round() {
        assert_eq!(nice_step(1), 1000);
        assert_eq!(nice_step(172_801), 300_000);
        assert_eq!(nice_step(86_400_000 * 9), 86_400_000 * 10);
    }
}
