//! `GET /health` (`status` ok or degraded for anyone; its `reasons`,
//! `parts` and `alerts` (rules, firings, notifications delivered, pending
//! and failed) — broker address, error texts, bucket names, queue depths — only
//! with a valid key unless `api.metrics_auth = "none"`) and `GET /metrics`
//! (Prometheus text: what the parts record, plus store gauges computed at
//! scrape time from `Reader::stats`; a valid key unless
//! `api.metrics_auth = "none"`). Both take the key from `X-API-Key` or
//! `Authorization: Bearer` (what Prometheus's `authorization` setting sends).

use axum::extract::{Request, State as AxState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map};

use super::{api_key_header, authenticate_key, AppState};
use crate::api::error::ApiError;
use crate::api::ClientAddr;
use crate::config::MetricsAuth;
use crate::reading::now_ms;
use crate::telemetry::Condition;

/// `used / max_size` above which the store is reported near full.
const NEAR_FULL: f64 = 0.9;

/// A transaction running this long means commits (and so MQTT acks and
/// 201s) are waiting: `/health` says so.
const WRITER_LATE: std::time::Duration = std::time::Duration::from_secs(2);

/// The key of a `/health` or `/metrics` request: `X-API-Key`, else
/// `Authorization: Bearer <key>`.
fn scrape_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    api_key_header(headers).or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("Bearer "))
            .map(str::trim)
    })
}

/// Whether the request may see details: always with `metrics_auth = "none"`;
/// otherwise with a valid key. A key that is given but not valid is a 401
/// (429 when throttled); no key at all is `Ok(false)`, or a 401 when
/// `key_required`.
fn may_see_details(state: &AppState, req: &Request, key_required: bool) -> Result<bool, ApiError> {
    if state.config.api.metrics_auth == MetricsAuth::None {
        return Ok(true);
    }
    match scrape_key(req.headers()) {
        None if !key_required => Ok(false),
        key => {
            let client = req.extensions().get::<ClientAddr>();
            authenticate_key(state, key.unwrap_or(""), client).map(|_| true)
        }
    }
}

pub(crate) async fn health(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let detailed = may_see_details(&state, &req, false)?;
    let mut parts = Map::new();
    let mut reasons = Vec::new();
    for (name, c) in state.health.snapshot() {
        let v = match &c {
            Condition::Ok => json!({"state": "ok"}),
            Condition::Degraded(why) => {
                reasons.push(format!("{name}: {why}"));
                json!({"state": "degraded", "reason": why})
            }
        };
        parts.insert(name, v);
    }
    let status = state.store.status().borrow().clone();
    let max = state.config.store.max_size;
    if status.disk_full {
        reasons.push("store: the disk is full".into());
    } else if status.full || status.used_bytes as f64 > max as f64 * NEAR_FULL {
        reasons.push(format!(
            "store: near full ({} of {} bytes in use)",
            status.used_bytes, max
        ));
    }
    if let Some(busy) = state.store.writer_busy_for() {
        if busy >= WRITER_LATE {
            reasons.push(format!(
                "store: the writer has been in one transaction for {:.1} s; commits are waiting",
                busy.as_secs_f64()
            ));
        }
    }
    let status = if reasons.is_empty() { "ok" } else { "degraded" };
    Ok(if detailed {
        let mut body = json!({"status": status, "reasons": reasons, "parts": parts});
        if state.alerts.is_some() {
            // Rules, firings and failed notifications (`queue stats` too).
            let s = state.store.reader().alert_stats().await?;
            body["alerts"] = json!({
                "rules": s.rules,
                "rulesActive": s.rules_active,
                "fired": s.fired,
                "firingsDropped": s.firings_dropped,
                "notificationsDelivered": s.delivered,
                "notificationsPending": s.pending,
                "notificationsFailed": s.failed,
                "failedByReason": s.failed_by_reason,
            });
        }
        Json(body)
    } else {
        Json(json!({"status": status}))
    }
    .into_response())
}

pub(crate) async fn metrics(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    may_see_details(&state, &req, true)?;
    let Some(handle) = &state.metrics else {
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            String::new(),
        )
            .into_response());
    };
    let stats = state.store.reader().stats().await?;
    let now = now_ms();
    let label = |id: &str| {
        state
            .config
            .bucket(id)
            .map_or_else(|| id.to_owned(), |b| b.name.clone())
    };
    for b in &stats.buckets {
        let name = label(&b.bucket_id);
        metrics::gauge!("dakkio_store_queued", "bucket" => name.clone()).set(b.queued as f64);
        metrics::gauge!("dakkio_store_queued_bytes", "bucket" => name.clone())
            .set(b.queued_bytes as f64);
        let age = b
            .oldest_queued_ms
            .map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0);
        metrics::gauge!("dakkio_store_oldest_queued_age_seconds", "bucket" => name.clone())
            .set(age);
        metrics::counter!("dakkio_store_accepted_total", "bucket" => name.clone())
            .absolute(b.accepted as u64);
        metrics::counter!("dakkio_store_delivered_total", "bucket" => name.clone())
            .absolute(b.delivered as u64);
        metrics::counter!("dakkio_store_dead_lettered_total", "bucket" => name.clone())
            .absolute(b.dead_lettered as u64);
        for (reason, n) in &b.dropped_by_reason {
            metrics::counter!("dakkio_store_dropped_total", "bucket" => name.clone(), "reason" => reason.clone())
                .absolute(*n as u64);
        }
    }
    for (reason, n) in &stats.rejected_by_reason {
        metrics::counter!("dakkio_store_rejected_total", "reason" => reason.clone())
            .absolute(*n as u64);
    }
    metrics::gauge!("dakkio_store_used_bytes").set(stats.used_bytes as f64);
    metrics::gauge!("dakkio_store_file_bytes").set(stats.file_bytes as f64);
    metrics::gauge!("dakkio_store_wal_bytes").set(stats.wal_bytes as f64);
    // Readings in the inbox journal, not moved into the database yet.
    let inbox = state.store.reader().mirror().read().map_or(0, |m| m.rows());
    metrics::gauge!("dakkio_store_inbox_readings").set(inbox as f64);
    metrics::gauge!("dakkio_store_max_bytes").set(state.config.store.max_size as f64);
    let throttled = state.throttle.lock().expect("throttle").tracked();
    metrics::gauge!("dakkio_api_auth_failure_clients").set(throttled as f64);
    metrics::gauge!("dakkio_store_dead_letters_kept").set(stats.dead_letters_kept as f64);
    if state.alerts.is_some() {
        let a = state.store.reader().alert_stats().await?;
        metrics::gauge!("dakkio_alerts_rules").set(a.rules as f64);
        metrics::gauge!("dakkio_alerts_rules_active").set(a.rules_active as f64);
        metrics::gauge!("dakkio_alerts_notifications_pending").set(a.pending as f64);
        metrics::counter!("dakkio_alerts_fired_stored_total").absolute(a.fired as u64);
        metrics::counter!("dakkio_alerts_notifications_delivered_total")
            .absolute(a.delivered as u64);
        for (reason, n) in &a.failed_by_reason {
            metrics::counter!("dakkio_alerts_notifications_failed_total", "reason" => reason.clone())
                .absolute(*n as u64);
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}
