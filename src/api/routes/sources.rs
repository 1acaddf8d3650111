//! `GET /api/buckets/:bucketId/sources` (any key of the bucket) and
//! `POST /api/buckets/:bucketId/sources` (admin or write key): data sources
//! in dakkio's shape (`_id`, `name`, `type`, `description`, `schema`,
//! `status`, `createdAt`, `updatedAt`).
//!
//! A created source gets a new 24-hex id, and what it was created with
//! (name, type, description, schema, downsampling) is kept in the store;
//! devices then ingest with its id. Sources first seen in readings are
//! listed too, with their fields' types as their schema and, as name, the
//! one the configuration gives them (MQTT routes, serial ports) or their
//! id. Creating counts against `store.max_sources_per_bucket` (400 beyond).

use axum::extract::{Path, Request, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{authenticate, bucket_for, opt_ts, query_slot, read_body, ts, AppState};
use crate::api::error::{ApiError, Issue};
use crate::api::ClientAddr;
use crate::dakkio::messages::{INVALID_JSON, SOURCE_CREATED, SOURCE_CREATE_FORBIDDEN};
use crate::reading::now_ms;
use crate::store::{NewSource, SourceSummary};

/// Fields a created source's `schema` may describe (as a point's values).
const MAX_SCHEMA_FIELDS: usize = super::ingest::MAX_FIELDS_PER_POINT;
const NAME_MAX: usize = 100;
const TEXT_MAX: usize = 1000;
const FIELD_TYPES: &[&str] = &["number", "string", "boolean"];

pub(crate) async fn list(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, req.headers(), req.extensions().get::<ClientAddr>())?;
    let bucket = bucket_for(&state, &who, &id)?;
    // Sources in the store (created here or seen in readings), then those
    // the configuration names that sent nothing yet.
    let mut declared = state.config.declared_sources(&bucket.id);
    let _slot = query_slot(&state).await?;
    let mut list: Vec<Value> = state
        .store
        .reader()
        .sources(&bucket.id)
        .await?
        .into_iter()
        .map(|s| {
            let name = declared.remove(&s.data_source_id);
            source_json(&bucket.id, s, name)
        })
        .collect();
    list.extend(declared.into_iter().map(|(id, name)| {
        json!({
            "_id": id,
            "bucketId": bucket.id,
            "name": name,
            "type": "sensor",
            "schema": {},
            "status": "active",
            "lastDataPoint": null,
            "createdAt": null,
            "updatedAt": null,
        })
    }));
    Ok(Json(json!({"dataSources": list})).into_response())
}

/// A stored source as dakkio shows it: its created profile when it has
/// one, else what its readings say.
fn source_json(bucket_id: &str, s: SourceSummary, declared_name: Option<String>) -> Value {
    let profile: Map<String, Value> = s
        .profile
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    let seen: Map<String, Value> = s
        .fields
        .into_iter()
        .map(|(k, t)| (k, json!({"type": t})))
        .collect();
    let mut out = json!({
        "_id": s.data_source_id,
        "bucketId": bucket_id,
        "name": profile.get("name").cloned()
            .or(declared_name.map(Value::from))
            .unwrap_or_else(|| Value::from(s.data_source_id.clone())),
        "type": profile.get("type").cloned().unwrap_or_else(|| "sensor".into()),
        "schema": profile.get("schema").cloned().unwrap_or(Value::Object(seen)),
        "status": "active",
        "lastDataPoint": opt_ts(s.last_ms),
        "createdAt": opt_ts(s.created_at),
        "updatedAt": opt_ts(s.updated_at),
    });
    for key in ["description", "downsampling"] {
        if let Some(v) = profile.get(key) {
            out[key] = v.clone();
        }
    }
    out
}

pub(crate) async fn create(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let who = authenticate(&state, &parts.headers, parts.extensions.get::<ClientAddr>())?;
    if !who.can_write() {
        return Err(ApiError::Forbidden(SOURCE_CREATE_FORBIDDEN));
    }
    let body = read_body(&state, &parts.headers, body).await?;
    let profile = parse_source(&body)?;
    let bucket = bucket_for(&state, &who, &id)?;
    let source_id = new_id();
    let at = now_ms();
    state
        .store
        .create_source(NewSource {
            bucket_id: bucket.id.clone(),
            source_id: source_id.clone(),
            profile_json: Value::Object(profile.clone()).to_string(),
            at_ms: at,
        })
        .await?;
    let mut source = json!({
        "_id": source_id,
        "bucketId": bucket.id,
        "status": "active",
        "createdAt": ts(at),
        "updatedAt": ts(at),
    });
    for (k, v) in profile {
        source[k] = v;
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"message": SOURCE_CREATED, "dataSource": source})),
    )
        .into_response())
}

/// A new 24-hex id, as dakkio's (ObjectId-shaped, random).
fn new_id() -> String {
    let bytes: [u8; 12] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind(v: Option<&Value>) -> &'static str {
    match v {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

fn issue(path: &[&str], message: impl Into<String>) -> Issue {
    Issue {
        path: path.iter().map(|p| Value::from(*p)).collect(),
        message: message.into(),
    }
}

/// A string field of at most `max` characters (at least one when `min_one`).
fn text(
    map: &Map<String, Value>,
    field: &str,
    max: usize,
    min_one: bool,
    path: &[&str],
    issues: &mut Vec<Issue>,
) -> Option<String> {
    let mut p = path.to_vec();
    p.push(field);
    match map.get(field) {
        None if !min_one => None,
        Some(Value::String(s)) if min_one && s.trim().is_empty() => {
            issues.push(issue(&p, "String must contain at least 1 character(s)"));
            None
        }
        Some(Value::String(s)) if s.chars().count() > max => {
            issues.push(issue(
                &p,
                format!("String must contain at most {max} character(s)"),
            ));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        other => {
            issues.push(issue(
                &p,
                format!("Expected string, received {}", kind(other)),
            ));
            None
        }
    }
}

fn unknown_keys(map: &Map<String, Value>, known: &[&str], path: &[&str], issues: &mut Vec<Issue>) {
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| format!("'{k}'"))
        .collect();
    if !unknown.is_empty() {
        issues.push(issue(
            path,
            format!("Unrecognized key(s) in object: {}", unknown.join(", ")),
        ));
    }
}

/// The validated body of `POST …/sources` as the profile to keep: `name`,
/// `type` (default `sensor`), `description`, `schema` (each field as
/// `{type, unit?, description?}`; the shorthand `"field": "number"` is
/// accepted), `downsampling` (default true).
pub(crate) fn parse_source(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let doc: Value = std::str::from_utf8(body)
        .ok()
        .and_then(|t| serde_json::from_str(t).ok())
        .ok_or_else(|| ApiError::BadRequest(INVALID_JSON.into()))?;
    let mut issues = Vec::new();
    let Value::Object(top) = &doc else {
        return Err(ApiError::Validation(vec![issue(
            &["body"],
            format!("Expected object, received {}", kind(Some(&doc))),
        )]));
    };
    let mut out = Map::new();
    let body = ["body"];
    if let Some(name) = text(top, "name", NAME_MAX, true, &body, &mut issues) {
        out.insert("name".into(), name.into());
    }
    let ty = if top.contains_key("type") {
        text(top, "type", NAME_MAX, true, &body, &mut issues)
    } else {
        Some("sensor".into())
    };
    if let Some(ty) = ty {
        out.insert("type".into(), ty.into());
    }
    if let Some(d) = text(top, "description", TEXT_MAX, false, &body, &mut issues) {
        out.insert("description".into(), d.into());
    }
    match top.get("schema") {
        Some(Value::Object(fields)) if fields.len() > MAX_SCHEMA_FIELDS => issues.push(issue(
            &["body", "schema"],
            format!(
                "Too many fields: {} (at most {MAX_SCHEMA_FIELDS})",
                fields.len()
            ),
        )),
        Some(Value::Object(fields)) => {
            let mut schema = Map::new();
            for (name, spec) in fields {
                let path = ["body", "schema", name.as_str()];
                let enum_msg = |got: &str| {
                    format!(
                        "Invalid enum value. Expected 'number' | 'string' | 'boolean', \
                         received '{got}'"
                    )
                };
                match spec {
                    Value::String(t) if FIELD_TYPES.contains(&t.as_str()) => {
                        schema.insert(name.clone(), json!({"type": t}));
                    }
                    Value::String(t) => issues.push(issue(&path, enum_msg(t))),
                    Value::Object(m) => {
                        unknown_keys(m, &["type", "unit", "description"], &path, &mut issues);
                        let mut field = Map::new();
                        let mut tpath = path.to_vec();
                        tpath.push("type");
                        match m.get("type") {
                            Some(Value::String(t)) if FIELD_TYPES.contains(&t.as_str()) => {
                                field.insert("type".into(), t.clone().into());
                            }
                            Some(Value::String(t)) => issues.push(issue(&tpath, enum_msg(t))),
                            other => issues.push(issue(
                                &tpath,
                                format!(
                                    "Expected 'number' | 'string' | 'boolean', received {}",
                                    kind(other)
                                ),
                            )),
                        }
                        for key in ["unit", "description"] {
                            if let Some(v) = text(m, key, TEXT_MAX, false, &path, &mut issues) {
                                field.insert(key.into(), v.into());
                            }
                        }
                        schema.insert(name.clone(), Value::Object(field));
                    }
                    other => issues.push(issue(
                        &path,
                        format!("Expected object, received {}", kind(Some(other))),
                    )),
                }
            }
            out.insert("schema".into(), Value::Object(schema));
        }
        other => issues.push(issue(
            &["body", "schema"],
            format!("Expected object, received {}", kind(other)),
        )),
    }
    match top.get("downsampling") {
        None => {
            out.insert("downsampling".into(), true.into());
        }
        Some(Value::Bool(b)) => {
            out.insert("downsampling".into(), (*b).into());
        }
        other => issues.push(issue(
            &["body", "downsampling"],
            format!("Expected boolean, received {}", kind(other)),
        )),
    }
    unknown_keys(
        top,
        &["name", "type", "description", "schema", "downsampling"],
        &body,
        &mut issues,
    );
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::Validation(issues))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(body: Value) -> Vec<String> {
        match parse_source(body.to_string().as_bytes()) {
            Err(ApiError::Validation(i)) => i
                .into_iter()
                .map(|i| format!("{} {}", Value::Array(i.path), i.message))
                .collect(),
            other => panic!("expected issues, got {other:?}"),
        }
    }

    #[test]
    fn a_source_body_is_validated_like_zod_and_defaults_filled() {
        let p = parse_source(
            json!({"name": "Temperature Sensor", "schema": {
                "temperature": {"type": "number", "unit": "celsius"},
                "ok": "boolean"}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(p),
            json!({"name": "Temperature Sensor", "type": "sensor", "downsampling": true,
                   "schema": {"temperature": {"type": "number", "unit": "celsius"},
                              "ok": {"type": "boolean"}}})
        );
        assert_eq!(
            messages(json!({"name": "", "schema": {"t": {"type": "int"}, "u": 3},
                            "downsampling": "no", "color": 1})),
            [
                r#"["body","name"] String must contain at least 1 character(s)"#,
                r#"["body","schema","t","type"] Invalid enum value. Expected 'number' | 'string' | 'boolean', received 'int'"#,
                r#"["body","schema","u"] Expected object, received number"#,
                r#"["body","downsampling"] Expected boolean, received string"#,
                r#"["body"] Unrecognized key(s) in object: 'color'"#,
            ]
        );
        assert_eq!(
            messages(json!({})),
            [
                r#"["body","name"] Expected string, received undefined"#,
                r#"["body","schema"] Expected object, received undefined"#,
            ]
        );
        assert!(new_id().len() == 24 && crate::reading::is_object_id(&new_id()));
    }
}
