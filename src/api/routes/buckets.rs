//! `GET /api/buckets`, `GET /api/buckets/:id` (admin; the configured
//! buckets with stats), `POST`/`DELETE` (refused: buckets are managed in
//! dakkio) and `GET /api/buckets/:bucketId/sources` (any key of the bucket).

use axum::extract::{Path, Request, State as AxState};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{admin, authenticate, bucket_for, opt_ts, pagination, query_slot, AppState};
use crate::api::error::{ApiError, BUCKETS_MANAGED_UPSTREAM};
use crate::api::ClientAddr;
use crate::config::Bucket;

fn bucket_json(b: &Bucket) -> Value {
    json!({"_id": b.id, "name": b.name, "description": "", "status": "active"})
}

pub(crate) async fn list(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    admin(&state, &req, "Only Admin keys can list buckets")?;
    let (limit, offset) = pagination(req.uri())?;
    let all = &state.config.buckets;
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(bucket_json)
        .collect();
    let count = page.len();
    Ok(Json(json!({
        "buckets": page,
        "pagination": {"limit": limit, "offset": offset, "total": all.len(),
                        "hasMore": offset + count < all.len()},
    }))
    .into_response())
}

pub(crate) async fn create(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    admin(&state, &req, "Only Admin keys can create buckets")?;
    Err(ApiError::Forbidden(BUCKETS_MANAGED_UPSTREAM))
}

pub(crate) async fn remove(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = admin(&state, &req, "Only Admin keys can delete buckets")?;
    bucket_for(&state, &who, &id)?;
    Err(ApiError::Forbidden(BUCKETS_MANAGED_UPSTREAM))
}

pub(crate) async fn get(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = admin(&state, &req, "Only Admin keys can access bucket details")?;
    let bucket = bucket_for(&state, &who, &id)?;
    let _slot = query_slot(&state).await?;
    let reader = state.store.reader();
    let sources = reader.sources(&bucket.id).await?;
    let points = reader.count_per_bucket().await?;
    let stats = reader.stats().await?;
    let q = stats.bucket(&bucket.id).cloned().unwrap_or_default();
    let mut b = bucket_json(bucket);
    b["stats"] = json!({
        "dataSourceCount": sources.len(),
        "dataPointCount": points.get(&bucket.id).copied().unwrap_or(0),
        "apiKeyCount": state.keys.list(&bucket.id).len(),
    });
    b["queue"] = json!({
        "queued": q.queued,
        "oldestQueuedAt": opt_ts(q.oldest_queued_ms),
        "accepted": q.accepted,
        "delivered": q.delivered,
        "deadLettered": q.dead_lettered,
        "dropped": q.dropped,
        "uplinkKey": if bucket.write_key().is_some() { "configured" } else { "missing" },
    });
    Ok(Json(json!({"bucket": b})).into_response())
}

pub(crate) async fn sources(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, req.headers(), req.extensions().get::<ClientAddr>())?;
    let bucket = bucket_for(&state, &who, &id)?;
    // Sources seen in readings (with their fields), then those the
    // configuration names (MQTT routes, serial ports) that sent nothing yet.
    let mut declared = state.config.declared_sources(&bucket.id);
    let _slot = query_slot(&state).await?;
    let mut list: Vec<Value> = state
        .store
        .reader()
        .sources(&bucket.id)
        .await?
        .into_iter()
        .map(|s| {
            let schema: Map<String, Value> = s
                .fields
                .into_iter()
                .map(|(k, t)| (k, json!({"type": t})))
                .collect();
            let name = declared
                .remove(&s.data_source_id)
                .unwrap_or_else(|| s.data_source_id.clone());
            json!({
                "_id": s.data_source_id,
                "name": name,
                "type": "sensor",
                "schema": schema,
                "status": "active",
                "lastDataPoint": opt_ts(s.last_ms),
            })
        })
        .collect();
    list.extend(declared.into_iter().map(|(id, name)| {
        json!({
            "_id": id,
            "name": name,
            "type": "sensor",
            "schema": {},
            "status": "active",
            "lastDataPoint": null,
        })
    }));
    Ok(Json(json!({"dataSources": list})).into_response())
}
