//! `GET /api/buckets`, `GET /api/buckets/:id` (admin; the configured
//! buckets with stats) and `POST`/`DELETE` (refused: buckets are managed in
//! dakkio). A bucket's `createdAt` is when this gateway's store first knew
//! it (`updatedAt` the same: the configuration, not the API, changes it);
//! `organizationId` is the gateway's (see [`super::organization_id`]).

use axum::extract::{Path, Request, State as AxState};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::{admin, bucket_for, opt_ts, organization_id, pagination, query_slot, AppState};
use crate::api::error::{ApiError, BUCKETS_MANAGED_UPSTREAM};
use crate::api::State;
use crate::config::Bucket;

fn bucket_json(state: &State, b: &Bucket, created: &BTreeMap<String, i64>) -> Value {
    let at = opt_ts(created.get(&b.id).copied());
    json!({
        "_id": b.id,
        "name": b.name,
        "description": "",
        "status": "active",
        "organizationId": organization_id(&state.config.gateway.id),
        "createdAt": at,
        "updatedAt": at,
    })
}

pub(crate) async fn list(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    admin(&state, &req, "Only Admin keys can list buckets")?;
    let (limit, offset) = pagination(req.uri())?;
    let all = &state.config.buckets;
    let created = {
        let _slot = query_slot(&state).await?;
        state.store.reader().bucket_created().await?
    };
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|b| bucket_json(&state, b, &created))
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
    let created = reader.bucket_created().await?;
    let q = stats.bucket(&bucket.id).cloned().unwrap_or_default();
    let mut b = bucket_json(&state, bucket, &created);
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
