//! `GET|POST /api/buckets/:bucketId/keys`, `DELETE
//! /api/buckets/:bucketId/keys/:keyId` (admin only): issue write and read
//! keys; the plaintext is in the 201 answer (`Cache-Control: no-store`) and
//! nowhere else.

use axum::extract::{Path, Request, State as AxState};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{admin, authenticate, bucket_for, opt_ts, read_body, ts, AppState};
use crate::api::auth::{generate_key, KeyEntry, KeyKind};
use crate::api::error::{ApiError, Issue, KEY_NOT_FOUND};
use crate::api::ClientAddr;
use crate::reading::{new_object_id, now_ms};

fn listed(e: &KeyEntry) -> Value {
    json!({
        "_id": e.id,
        "name": e.name,
        "type": e.kind.as_str(),
        "keyPrefix": format!("{}...", e.prefix),
        "bucketId": e.bucket_id,
        "createdAt": ts(e.created_at),
        "lastUsedAt": opt_ts(e.last_used_at()),
    })
}

pub(crate) async fn list(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = admin(&state, &req, "Only Admin keys can list API keys")?;
    let bucket = bucket_for(&state, &who, &id)?;
    let keys: Vec<Value> = state
        .keys
        .list(&bucket.id)
        .iter()
        .map(|e| listed(e))
        .collect();
    Ok(Json(json!({"apiKeys": keys})).into_response())
}

pub(crate) async fn create(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let who = authenticate(&state, &parts.headers, parts.extensions.get::<ClientAddr>())?;
    if !who.is_admin() {
        return Err(ApiError::Forbidden("Only Admin keys can create API keys"));
    }
    let body = read_body(&state, &parts.headers, body).await?;
    let (kind, name) = parse_create(&body)?;
    let bucket = bucket_for(&state, &who, &id)?;
    let key = generate_key(kind);
    let entry = KeyEntry::issue(
        new_object_id(),
        bucket.id.clone(),
        kind,
        name,
        &key,
        now_ms(),
    );
    state.store.insert_api_key(entry.to_row()).await?;
    let mut out = listed(&entry);
    out["key"] = key.into();
    state.keys.insert(entry);
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({"message": "API key created successfully", "apiKey": out})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `type` (`write` | `read`) and `name` (or the guide's `label`).
pub(crate) fn parse_create(body: &[u8]) -> Result<(KeyKind, String), ApiError> {
    let doc: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|_| ApiError::BadRequest(crate::dakkio::messages::INVALID_JSON.into()))?
    };
    let Value::Object(m) = doc else {
        return Err(ApiError::issue(&["body"], "Expected object"));
    };
    let mut issues = Vec::new();
    let mut push = |field: &str, message: String| {
        issues.push(Issue {
            path: vec!["body".into(), field.into()],
            message,
        })
    };
    let kind_of = |v: Option<&Value>| match v {
        None => "undefined",
        Some(Value::String(_)) => "string",
        Some(Value::Number(_)) => "number",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Null) => "null",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    };
    let name_field = if m.contains_key("name") {
        "name"
    } else {
        "label"
    };
    let name = match m.get(name_field) {
        Some(Value::String(s)) if s.trim().is_empty() => {
            push("name", "String must contain at least 1 character(s)".into());
            None
        }
        Some(Value::String(s)) if s.chars().count() > 100 => {
            push(
                name_field,
                "String must contain at most 100 character(s)".into(),
            );
            None
        }
        Some(Value::String(s)) => Some(s.trim().to_owned()),
        other => {
            push(
                "name",
                format!("Expected string, received {}", kind_of(other)),
            );
            None
        }
    };
    let kind = match m.get("type") {
        Some(Value::String(s)) => match KeyKind::parse(s) {
            Some(k) => Some(k),
            None => {
                push(
                    "type",
                    format!("Invalid enum value. Expected 'write' | 'read', received '{s}'"),
                );
                None
            }
        },
        other => {
            push(
                "type",
                format!("Expected 'write' | 'read', received {}", kind_of(other)),
            );
            None
        }
    };
    match (kind, name) {
        (Some(k), Some(n)) if issues.is_empty() => Ok((k, n)),
        _ => Err(ApiError::Validation(issues)),
    }
}

pub(crate) async fn remove(
    AxState(state): AxState<AppState>,
    Path((id, key_id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = admin(&state, &req, "Only Admin keys can delete API keys")?;
    let bucket = bucket_for(&state, &who, &id)?;
    // Out of the table first: the key is refused from the next request on,
    // even while the delete commits.
    let Some(entry) = state.keys.remove(&bucket.id, &key_id) else {
        return Err(ApiError::NotFound(KEY_NOT_FOUND));
    };
    if let Err(e) = state.store.delete_api_key(&entry.id).await {
        // Keep the memory and the database in agreement.
        state
            .keys
            .insert(KeyEntry::from_row(&entry.to_row()).expect("a valid kind"));
        return Err(e.into());
    }
    Ok(Json(json!({
        "message": "API key deleted successfully",
        "deletedKey": {"_id": entry.id, "name": entry.name, "type": entry.kind.as_str()},
    }))
    .into_response())
}
