//! `GET /api/analytics/buckets/:bucketId?period=24h|7d|30d|90d` (any key of
//! the bucket) and `GET /api/analytics/overview` (admin), from local data.
//! The overview's `usage` counts the uplink's calls to dakkio this month
//! against `uplink.max_calls_per_month`, and its `plan` shows the limits
//! this gateway applies (buckets, data sources, retention, calls).

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Request, State as AxState};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{
    admin, authenticate, bounded_query, bucket_for, json_number, opt_ts, query_slot, ts, AppState,
};
use crate::api::error::{ApiError, Issue};
use crate::api::ClientAddr;
use crate::config::units::format_size;
use crate::reading::now_ms;
use crate::store::{Acc, Interval, SeriesFilter};

const PERIODS: &[(&str, i64)] = &[("24h", 1), ("7d", 7), ("30d", 30), ("90d", 90)];

fn period(uri: &axum::http::Uri) -> Result<(&'static str, i64), ApiError> {
    let pairs: Vec<(String, String)> = axum::extract::Query::try_from_uri(uri)
        .map(|q: axum::extract::Query<Vec<(String, String)>>| q.0)
        .unwrap_or_default();
    let Some((_, p)) = pairs.into_iter().find(|(k, _)| k == "period") else {
        return Ok(("7d", 7));
    };
    PERIODS
        .iter()
        .find(|(n, _)| *n == p)
        .copied()
        .ok_or_else(|| {
            ApiError::Validation(vec![Issue {
                path: vec!["query".into(), "period".into()],
                message: format!(
                    "Invalid enum value. Expected '24h' | '7d' | '30d' | '90d', received '{p}'"
                ),
            }])
        })
}

pub(crate) async fn bucket(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, req.headers(), req.extensions().get::<ClientAddr>())?;
    let (name, days) = period(req.uri())?;
    let bucket = bucket_for(&state, &who, &id)?;
    let now = now_ms();
    let start = now - days * 86_400_000;
    let _slot = query_slot(&state).await?;
    let reader = state.store.reader();
    let all = SeriesFilter {
        bucket_id: bucket.id.clone(),
        ..SeriesFilter::default()
    };
    let in_period = SeriesFilter {
        start_ms: Some(start),
        end_ms: Some(now + 1),
        ..all.clone()
    };
    let total = reader
        .count_per_bucket()
        .await?
        .get(&bucket.id)
        .copied()
        .unwrap_or(0);
    // One group per data source over the whole period.
    let interval = Interval::Fixed(days * 86_400_000 + 86_400_000);
    let groups = bounded_query(&state, |stop| async {
        Ok(reader
            .aggregate_until(in_period.clone(), interval, stop)
            .await?)
    })
    .await?;
    let sources = reader.sources(&bucket.id).await?;
    // The period spans two groups of the fixed interval (they are aligned
    // to the epoch): merge each source's groups, indexed by source so the
    // cost stays linear in the number of data sources.
    let mut merged: HashMap<&str, (u64, BTreeMap<&str, Acc>)> = HashMap::new();
    for g in &groups {
        let (count, fields) = merged.entry(g.data_source_id.as_str()).or_default();
        *count += g.count;
        for (f, acc) in &g.fields {
            fields
                .entry(f.as_str())
                .and_modify(|a| a.merge(acc))
                .or_insert(*acc);
        }
    }
    let declared = state.config.declared_sources(&bucket.id);
    let mut in_period_count = 0u64;
    let mut stats = Vec::new();
    for s in &sources {
        let (mut avg, mut min, mut max) = (Map::new(), Map::new(), Map::new());
        let count = match merged.get(s.data_source_id.as_str()) {
            Some((count, fields)) => {
                for (f, acc) in fields {
                    avg.insert((*f).to_owned(), json_number(acc.avg()));
                    min.insert((*f).to_owned(), json_number(acc.min));
                    max.insert((*f).to_owned(), json_number(acc.max));
                }
                *count
            }
            None => 0,
        };
        in_period_count += count;
        let name = s
            .profile
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .and_then(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
            .or_else(|| declared.get(&s.data_source_id).cloned())
            .unwrap_or_else(|| s.data_source_id.clone());
        stats.push(json!({
            "_id": s.data_source_id,
            "name": name,
            "dataPointCount": count,
            "lastDataPoint": opt_ts(s.last_ms),
            "avgValues": avg,
            "minValues": min,
            "maxValues": max,
        }));
    }
    let per_hour: Vec<Value> = reader
        .count_per_hour(in_period)
        .await?
        .into_iter()
        .map(|(h, n)| json!({"hour": ts(h), "count": n}))
        .collect();
    Ok(Json(json!({"analytics": {
        "bucket": {"_id": bucket.id, "name": bucket.name},
        "period": name,
        "summary": {
            "totalDataPoints": total,
            "dataPointsInPeriod": in_period_count,
            // Rounded, as dakkio's example (12,605 in 7 days → 1801).
            "avgDataPointsPerDay": (in_period_count as f64 / days as f64).round() as u64,
            "dataSources": sources.len(),
            "activeAlerts": 0,
        },
        "dataSourceStats": stats,
        "ingestionRate": {"dataPointsPerHour": per_hour},
        "alertActivity": {"totalTriggered": 0, "byRule": []},
    }}))
    .into_response())
}

pub(crate) async fn overview(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    admin(
        &state,
        &req,
        "Only Admin keys can access organization analytics",
    )?;
    let _slot = query_slot(&state).await?;
    let reader = state.store.reader();
    let counts = reader.count_per_bucket().await?;
    let stats = reader.stats().await?;
    let now = now_ms();
    let mut sources = 0usize;
    let mut last_day = 0i64;
    let mut last_ingestion: Option<i64> = None;
    for b in &state.config.buckets {
        let s = reader.sources(&b.id).await?;
        sources += s.len();
        last_ingestion = s
            .iter()
            .filter_map(|x| x.last_ms)
            .chain(last_ingestion)
            .max();
        last_day += reader
            .count_per_hour(SeriesFilter {
                bucket_id: b.id.clone(),
                sources: None,
                start_ms: Some(now - 86_400_000),
                end_ms: Some(now + 1),
            })
            .await?
            .iter()
            .map(|(_, n)| n)
            .sum::<i64>();
    }
    let points: i64 = state
        .config
        .buckets
        .iter()
        .filter_map(|b| counts.get(&b.id))
        .sum();
    let queued: i64 = stats.buckets.iter().map(|b| b.queued).sum();
    // The uplink's calls to dakkio this month (what the plan's quota
    // counts from this gateway), against `uplink.max_calls_per_month`.
    let month = crate::uplink::budget::counter_name(crate::uplink::budget::month_of(now));
    let calls = {
        let name = month.clone();
        reader
            .on_query_thread(move |r| r.counters_blocking(&name))
            .await?
            .get(&month)
            .copied()
            .unwrap_or(0)
    };
    let calls_limit = state.config.uplink.max_calls_per_month;
    let percentage = calls_limit
        .filter(|l| *l > 0)
        .map(|l| json_number((calls as f64 * 1000.0 / l as f64).round() / 10.0));
    Ok(Json(json!({"overview": {
        "organization": {
            "_id": super::organization_id(&state.config.gateway.id),
            "name": state.config.gateway.id,
        },
        "totals": {
            "buckets": state.config.buckets.len(),
            "dataSources": sources,
            "dataPoints": points,
            "alertRules": 0,
            "apiKeys": state.keys.count(),
        },
        "usage": {
            "apiCallsThisMonth": calls,
            "apiCallsLimit": calls_limit,
            "apiCallsPercentage": percentage,
            "storageUsedBytes": stats.used_bytes,
            "storageUsedFormatted": format_size(stats.used_bytes),
            "storageLimitBytes": state.config.store.max_size,
            "queuedDataPoints": queued,
        },
        // The limits this gateway applies (its configuration), in dakkio's
        // plan shape; dakkio's own plan is not known here.
        "plan": {
            "name": "Gateway",
            "maxBuckets": state.config.buckets.len(),
            "maxDataSources": state.config.store.max_sources_per_bucket,
            "maxRetentionDays": state.config.store.retention.as_secs() / 86_400,
            "maxApiCalls": calls_limit,
        },
        "recentActivity": {
            "lastDataIngestion": opt_ts(last_ingestion),
            "lastAlertTriggered": null,
            "dataPointsLast24h": last_day,
            "alertsTriggeredLast24h": 0,
        },
    }}))
    .into_response())
}
