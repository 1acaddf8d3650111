//! `POST /api/data/query`: raw pages, aggregations and automatic
//! downsampling over the local history, in dakkio's shapes.

use axum::extract::{Request, State as AxState};
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
use crate::dakkio::messages::INVALID_JSON;
use crate::reading::{is_object_id, parse_timestamp, Values};
use crate::store::{AggGroup, Interval, QueryStop, SeriesFilter};

/// Above this many points in range, an unpaged query is averaged.
pub const DOWNSAMPLE_THRESHOLD: i64 = 500;
const RAW_LIMIT_DEFAULT: usize = 100;
const AGG_LIMIT_DEFAULT: usize = 1000;
const LIMIT_MAX: i64 = 1000;

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
///
/// Every page is bounded twice: by `limit` (items) and by
/// `api.max_answer_bytes` (a page of large readings stops early, with
/// `count` short of `limit` and `hasMore`; the next page starts at
/// `offset + count`).
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
    let max_bytes = state.config.api.max_answer_bytes;
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
            max_bytes,
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
    // Downsampling is off once the client asks for raw pages (`limit`) or
    // when every data source queried was created with `downsampling:
    // false`; an `offset` alone follows a downsampled answer's `hasMore`.
    if q.limit.is_none() && q.downsampling && !reader.downsampling_off(filter.clone()).await? {
        let (total, extent) = reader
            .query_extent_until(filter.clone(), stop.clone())
            .await?;
        if let (true, Some((lo, hi))) = (total > DOWNSAMPLE_THRESHOLD, extent) {
            let span = q.end.unwrap_or(hi + 1) - q.start.unwrap_or(lo);
            // About 500 groups in all, whatever the number of data sources
            // (dakkio: "aiming for about 500 output points"): each source
            // touches at most 500/n + 2 intervals, so up to 250 sources the
            // whole range fits one page of 1000; beyond, `hasMore` is
            // followed with `offset` alone.
            let sources = reader
                .sources_in_range_until(filter.clone(), stop.clone())
                .await?
                .max(1) as i64;
            let step = downsampling_step(span, sources);
            let groups = reader
                .aggregate_until(filter, Interval::Fixed(step), stop)
                .await?;
            let out = groups_page(
                &groups,
                Func::Avg,
                AGG_LIMIT_DEFAULT,
                q.offset.unwrap_or(0),
                max_bytes,
            );
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
        .query_points_until(filter, limit, offset, max_bytes, stop)
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

/// The automatic downsampling interval for `sources` data sources over
/// `span` ms: about [`DOWNSAMPLE_THRESHOLD`] groups in all.
fn downsampling_step(span: i64, sources: i64) -> i64 {
    nice_step(span.saturating_mul(sources) / DOWNSAMPLE_THRESHOLD + 1)
}

/// Bytes of an aggregated item in an answer (an estimate from its parts).
fn group_bytes(g: &AggGroup) -> usize {
    120 + g.data_source_id.len()
        + g.fields
            .iter()
            .map(|(name, _)| name.len() + 28)
            .sum::<usize>()
}

/// The page `offset..offset+limit` of `groups`, cut short once it holds
/// `max_bytes` (one group always fits).
fn groups_page(
    groups: &[AggGroup],
    func: Func,
    limit: usize,
    offset: usize,
    max_bytes: usize,
) -> (Vec<Item<'static>>, Meta) {
    let total = groups.len();
    let mut bytes = 0usize;
    let mut data: Vec<Item<'static>> = Vec::new();
    for g in groups.iter().skip(offset).take(limit) {
        bytes = bytes.saturating_add(group_bytes(g));
        if bytes > max_bytes && !data.is_empty() {
            break;
        }
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
        data.push(Item::Group(GroupOut {
            timestamp: ts(g.start_ms),
            data_source_id: g.data_source_id.clone(),
            values,
            count: g.count,
        }));
    }
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
    fn downsampling_aims_at_500_groups_in_all() {
        let day = 86_400_000;
        // One source over a day: 500 groups would be 172.8 s; 5 min is the
        // next round step (288 groups).
        assert_eq!(downsampling_step(day, 1), 300_000);
        // Three sources: 10 min, 144 groups each, 432 in all.
        assert_eq!(downsampling_step(day, 3), 600_000);
        // Up to 250 sources, every source's groups fit one page of 1000
        // (a range touches at most ceil(span / step) + 1 intervals).
        for n in [1, 2, 3, 7, 50, 249, 250] {
            for span in [600_000, day + 1, 30 * day - 7, 3650 * day] {
                let step = downsampling_step(span, n);
                let per_source = (span + step - 1) / step + 1;
                assert!(n * per_source <= 1000, "{n} sources over {span} ms");
            }
        }
    }

    #[test]
    fn downsampling_steps_are_round() {
        assert_eq!(nice_step(1), 1000);
        assert_eq!(nice_step(172_801), 300_000);
        assert_eq!(nice_step(86_400_000 * 9), 86_400_000 * 10);
    }
}
