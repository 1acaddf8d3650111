//! `POST /api/data` and `POST /api/data/batch`: dakkio's ingest bodies
//! into the store's queue, answered 201 only after the commit, and only
//! when every point and every metadata member is stored as sent.

use axum::extract::{Request, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value as Json_};

use super::{authenticate, bucket_for, json_values, read_body, ts, AppState};
use crate::api::error::{ApiError, Issue};
use crate::api::ClientAddr;
use crate::dakkio::messages::{BATCH_INGESTED, INGEST_FORBIDDEN, POINT_INGESTED};
use crate::dakkio::validate::{self, Parsed, Rejection};
use crate::reading::{now_ms, Metadata, Origin, Reading, Value, Values};

/// Value fields one point may carry by default (`api.max_fields_per_point`).
/// A sensor reading has a handful; the bound keeps one point from making
/// every later aggregation of its data source slow (dakkio documents no
/// limit).
pub const MAX_FIELDS_PER_POINT: usize = 1000;

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
    let mut readings = to_readings(&parsed, now, state.config.api.max_fields_per_point)
        .map_err(ApiError::Validation)?;
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
                point["metadata"] =
                    Json_::Object(r.metadata.into_iter().map(|(k, v)| (k.into(), v)).collect());
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
pub(crate) fn to_readings(
    parsed: &Parsed<'_>,
    received: i64,
    max_fields: usize,
) -> Result<Vec<Reading>, Vec<Issue>> {
    let mut issues = Vec::new();
    let mut readings = Vec::with_capacity(parsed.points.len());
    for (i, p) in parsed.points.iter().enumerate() {
        let root = parsed.point_path(i);
        let values = to_values(p.values.get(), &root, max_fields, &mut issues);
        let metadata = match p.metadata {
            None => Some(Metadata::new()),
            Some(m) => match serde_json::from_str::<Metadata>(m.get()) {
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
            receive_time: p.timestamp.is_none(),
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
pub(crate) fn to_values(
    raw: &str,
    root: &[Json_],
    max_fields: usize,
    issues: &mut Vec<Issue>,
) -> Option<Values> {
    let map: Map<String, Json_> = match serde_json::from_str(raw) {
        Ok(map) => map,
        Err(e) => {
            issues.push(unreadable(root, "values", &e));
            return None;
        }
    };
    if map.len() > max_fields {
        let mut path = root.to_vec();
        path.push("values".into());
        issues.push(Issue {
            path,
            message: format!(
                "Too many fields: {} (at most {max_fields} per point, `api.max_fields_per_point`)",
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
                out.insert(k.into(), x);
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
            let values = to_values(&format!("{{\"t\":{text}}}"), &[], 1000, &mut issues).unwrap();
            let want: f64 = text.parse().unwrap();
            assert_eq!(values["t"], Value::Number(want), "{text}");
        }
    }

    /// The bound is the configured one (`api.max_fields_per_point`), not a
    /// constant: 3 fields pass a bound of 3, 4 fail it naming the key.
    #[test]
    fn the_fields_bound_is_the_configured_one() {
        let mut issues = Vec::new();
        assert!(to_values(r#"{"a":1,"b":2,"c":3}"#, &[], 3, &mut issues).is_some());
        assert!(issues.is_empty());
        assert!(to_values(r#"{"a":1,"b":2,"c":3,"d":4}"#, &[], 3, &mut issues).is_none());
        assert!(
            issues[0].message.contains("at most 3 per point"),
            "{}",
            issues[0].message
        );
        assert!(issues[0].message.contains("api.max_fields_per_point"));
    }
}
