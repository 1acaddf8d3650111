//! `GET /health` (no key: ok or degraded with reasons, never a secret) and
//! `GET /metrics` (Prometheus text: what the parts record, plus store gauges
//! computed at scrape time from `Reader::stats`).

use axum::extract::{Request, State as AxState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map};

use super::{authenticate, AppState};
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

pub(crate) async fn health(AxState(state): AxState<AppState>) -> Response {
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
    let ok = reasons.is_empty();
    Json(json!({
        "status": if ok { "ok" } else { "degraded" },
        "reasons": reasons,
        "parts": parts,
    }))
    .into_response()
}

pub(crate) async fn metrics(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    if state.config.api.metrics_auth == MetricsAuth::Key {
        authenticate(&state, req.headers(), req.extensions().get::<ClientAddr>())?;
    }
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
    metrics::gauge!("dakkio_store_max_bytes").set(state.config.store.max_size as f64);
    let throttled = state.throttle.lock().expect("throttle").tracked();
    metrics::gauge!("dakkio_api_auth_failure_clients").set(throttled as f64);
    metrics::gauge!("dakkio_store_dead_letters_kept").set(stats.dead_letters_kept as f64);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}
