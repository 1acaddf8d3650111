//! Alert rules (dakkio-api.md §2.7): `POST /api/alerts` (admin, write),
//! `GET /api/buckets/:bucketId/alerts` (every key type), and the gateway's
//! own `GET|PUT|PATCH|DELETE /api/alerts/:alertId` and
//! `POST /api/alerts/:alertId/pause|resume` (read: get only), with dakkio's
//! envelopes (`{"message", "alertRule"}`, `{"alertRules": […]}`) and the
//! check order of `api/mod.rs`. A condition the parser does not understand,
//! and a `webhookUrl` outside `alerts.allow`, are 400s whose `details` say
//! why.

use axum::extract::{Path, Request, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{authenticate, bucket_for, opt_ts, read_body, ts, AppState};
use crate::alerts::{self, condition, AlertsHandle, NewRule};
use crate::api::auth::Principal;
use crate::api::error::{ApiError, Issue};
use crate::api::ClientAddr;
use crate::dakkio::messages::{
    ALERTS_FORBIDDEN, ALERT_CREATED, ALERT_DELETED, ALERT_NOT_FOUND, ALERT_PAUSED, ALERT_RESUMED,
    ALERT_UPDATED, INVALID_ALERT_ID, INVALID_JSON,
};
use crate::reading::is_object_id;
use crate::store::AlertRuleRow;

/// dakkio's default `cooldownMinutes`.
pub const DEFAULT_COOLDOWN_MINUTES: f64 = 5.0;
/// The longest cooldown accepted (a week).
pub const MAX_COOLDOWN_MINUTES: f64 = 10_080.0;

fn shown(r: &AlertRuleRow) -> Value {
    let parsed = condition::parse(&r.condition).map_or(Value::Null, |c| c.to_json());
    json!({
        "_id": r.id,
        "bucketId": r.bucket_id,
        "dataSourceId": r.data_source_id,
        "name": r.name,
        "condition": r.condition,
        "parsedCondition": parsed,
        "webhookUrl": r.webhook_url,
        "status": r.status,
        "cooldownMinutes": super::json_number(r.cooldown_minutes),
        "lastTriggeredAt": opt_ts(r.last_triggered_at),
        "triggerCount": r.trigger_count,
        "createdAt": ts(r.created_at),
        "updatedAt": ts(r.updated_at),
    })
}

fn handle(state: &AppState) -> Result<&AlertsHandle, ApiError> {
    state
        .alerts
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("The alert engine is not running; see the log".into()))
}

fn writer(state: &AppState, req: &Request) -> Result<Principal, ApiError> {
    let who = authenticate(state, req.headers(), req.extensions().get::<ClientAddr>())?;
    if who.can_write() {
        Ok(who)
    } else {
        Err(ApiError::Forbidden(ALERTS_FORBIDDEN))
    }
}

pub(crate) async fn create(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = writer(&state, &req)?;
    let alerts = handle(&state)?;
    let (parts, body) = req.into_parts();
    let body = read_body(&state, &parts.headers, body).await?;
    let doc = object(&body)?;
    let fields = Fields::parse(&doc, true, alerts.config())?;
    let bucket_id = fields.bucket_id.clone().unwrap_or_default();
    let bucket = bucket_for(&state, &who, &bucket_id)?;
    let max = alerts.config().max_rules;
    if alerts.count() >= max {
        return Err(ApiError::BadRequest(format!(
            "This gateway keeps at most {max} alert rules (`alerts.max_rules`); delete one first"
        )));
    }
    let rule = NewRule {
        bucket_id: bucket.id.clone(),
        data_source_id: fields
            .data_source_id
            .unwrap_or_default()
            .to_ascii_lowercase(),
        name: fields.name.unwrap_or_default(),
        condition_text: fields.condition_text.unwrap_or_default(),
        condition: fields.condition.expect("required on create"),
        webhook_url: fields.webhook_url.unwrap_or_default(),
        cooldown_minutes: fields.cooldown.unwrap_or(DEFAULT_COOLDOWN_MINUTES),
    };
    let row = alerts.put(None, rule, "active").await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"message": ALERT_CREATED, "alertRule": shown(&row)})),
    )
        .into_response())
}

pub(crate) async fn list(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, req.headers(), req.extensions().get::<ClientAddr>())?;
    let bucket = bucket_for(&state, &who, &id)?;
    let alerts = handle(&state)?;
    let rules: Vec<Value> = alerts.list(&bucket.id).iter().map(shown).collect();
    Ok(Json(json!({"alertRules": rules})).into_response())
}

/// The rule `id` if the caller's key reaches its bucket.
fn rule_for(alerts: &AlertsHandle, who: &Principal, id: &str) -> Result<AlertRuleRow, ApiError> {
    if !is_object_id(id) {
        return Err(ApiError::BadRequest(INVALID_ALERT_ID.into()));
    }
    let row = alerts
        .get(&id.to_ascii_lowercase())
        .ok_or(ApiError::NotFound(ALERT_NOT_FOUND))?;
    if !who.has_bucket(&row.bucket_id) {
        return Err(ApiError::NoBucketAccess);
    }
    Ok(row)
}

pub(crate) async fn get(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, req.headers(), req.extensions().get::<ClientAddr>())?;
    let alerts = handle(&state)?;
    let row = rule_for(alerts, &who, &id)?;
    Ok(Json(json!({"alertRule": shown(&row)})).into_response())
}

pub(crate) async fn update(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = writer(&state, &req)?;
    let alerts = handle(&state)?;
    let (parts, body) = req.into_parts();
    let body = read_body(&state, &parts.headers, body).await?;
    let doc = object(&body)?;
    let fields = Fields::parse(&doc, false, alerts.config())?;
    let row = rule_for(alerts, &who, &id)?;
    if fields
        .bucket_id
        .as_deref()
        .is_some_and(|b| !b.eq_ignore_ascii_case(&row.bucket_id))
    {
        return Err(ApiError::issue(
            &["body", "bucketId"],
            "An alert rule cannot move to another bucket; create a new one",
        ));
    }
    let condition = match fields.condition {
        Some(c) => c,
        None => condition::parse(&row.condition).map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    let rule = NewRule {
        bucket_id: row.bucket_id.clone(),
        data_source_id: fields
            .data_source_id
            .map_or_else(|| row.data_source_id.clone(), |s| s.to_ascii_lowercase()),
        name: fields.name.unwrap_or_else(|| row.name.clone()),
        condition_text: fields
            .condition_text
            .unwrap_or_else(|| row.condition.clone()),
        condition,
        webhook_url: fields
            .webhook_url
            .unwrap_or_else(|| row.webhook_url.clone()),
        cooldown_minutes: fields.cooldown.unwrap_or(row.cooldown_minutes),
    };
    let status = fields.status.unwrap_or_else(|| row.status.clone());
    let updated = alerts.put(Some(&row), rule, &status).await?;
    Ok(Json(json!({"message": ALERT_UPDATED, "alertRule": shown(&updated)})).into_response())
}

pub(crate) async fn remove(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = writer(&state, &req)?;
    let alerts = handle(&state)?;
    let row = rule_for(alerts, &who, &id)?;
    alerts
        .delete(&row.id)
        .await?
        .ok_or(ApiError::NotFound(ALERT_NOT_FOUND))?;
    Ok(Json(json!({
        "message": ALERT_DELETED,
        "deletedAlertRule": {"_id": row.id, "name": row.name, "bucketId": row.bucket_id},
    }))
    .into_response())
}

pub(crate) async fn pause(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    set_status(state, id, req, false).await
}

pub(crate) async fn resume(
    AxState(state): AxState<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    set_status(state, id, req, true).await
}

async fn set_status(
    state: AppState,
    id: String,
    req: Request,
    active: bool,
) -> Result<Response, ApiError> {
    let who = writer(&state, &req)?;
    let alerts = handle(&state)?;
    let row = rule_for(alerts, &who, &id)?;
    let row = alerts.set_status(&row, active).await?;
    let message = if active { ALERT_RESUMED } else { ALERT_PAUSED };
    Ok(Json(json!({"message": message, "alertRule": shown(&row)})).into_response())
}

/// Test clock only (`fault-injection` builds with the test switch set):
/// `{"advanceMs": n}` moves the alert clock and evaluates timed rules;
/// answers `{"fired": n}` once their firings are recorded. Admin key.
#[cfg(feature = "fault-injection")]
pub(crate) async fn advance_clock(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    super::admin(&state, &req, "Only Admin keys can move the test clock")?;
    let alerts = handle(&state)?;
    let (parts, body) = req.into_parts();
    let body = read_body(&state, &parts.headers, body).await?;
    let ms = object(&body)?
        .get("advanceMs")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::issue(&["body", "advanceMs"], "Expected number"))?;
    let fired = alerts
        .advance_test_clock(ms)
        .await
        .ok_or_else(|| ApiError::BadRequest("the alert test clock is not enabled".into()))?;
    Ok(Json(json!({"fired": fired})).into_response())
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let doc: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|_| ApiError::BadRequest(INVALID_JSON.into()))?
    };
    match doc {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::issue(&["body"], "Expected object")),
    }
}

/// The body's fields, validated (Zod-like issues).
#[derive(Default)]
struct Fields {
    bucket_id: Option<String>,
    data_source_id: Option<String>,
    name: Option<String>,
    condition_text: Option<String>,
    condition: Option<condition::Condition>,
    webhook_url: Option<String>,
    cooldown: Option<f64>,
    status: Option<String>,
}

fn kind_of(v: Option<&Value>) -> &'static str {
    match v {
        None => "undefined",
        Some(Value::String(_)) => "string",
        Some(Value::Number(_)) => "number",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Null) => "null",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

impl Fields {
    /// `create`: every required field must be there; otherwise (update)
    /// only the fields present are checked.
    fn parse(
        m: &Map<String, Value>,
        create: bool,
        cfg: &crate::config::AlertsConfig,
    ) -> Result<Fields, ApiError> {
        let mut issues = Vec::new();
        let mut push = |field: &str, message: String| {
            issues.push(Issue {
                path: vec!["body".into(), field.into()],
                message,
            })
        };
        let string =
            |field: &str, max: usize, push: &mut dyn FnMut(&str, String)| match m.get(field) {
                None if !create => None,
                Some(Value::String(s)) if s.trim().is_empty() => {
                    push(field, "String must contain at least 1 character(s)".into());
                    None
                }
                Some(Value::String(s)) if s.chars().count() > max => {
                    push(
                        field,
                        format!("String must contain at most {max} character(s)"),
                    );
                    None
                }
                Some(Value::String(s)) => Some(s.trim().to_owned()),
                other => {
                    push(
                        field,
                        format!("Expected string, received {}", kind_of(other)),
                    );
                    None
                }
            };
        let mut f = Fields {
            bucket_id: string("bucketId", 100, &mut push),
            data_source_id: string("dataSourceId", 100, &mut push),
            name: string("name", 100, &mut push),
            ..Fields::default()
        };
        // The legacy guide's `naturalLanguageQuery` is the same field.
        let cond_field = if !m.contains_key("condition") && m.contains_key("naturalLanguageQuery") {
            "naturalLanguageQuery"
        } else {
            "condition"
        };
        f.condition_text = string(cond_field, condition::MAX_LEN, &mut push);
        f.webhook_url = string("webhookUrl", 2048, &mut push);
        if let Some(id) = &f.data_source_id {
            if !is_object_id(id) {
                push("dataSourceId", "Invalid data source ID format".into());
            }
        }
        if let Some(text) = &f.condition_text {
            match condition::parse(text) {
                Ok(c) => f.condition = Some(c),
                Err(e) => push(cond_field, format!("Condition not understood: {e}")),
            }
        }
        if let Some(url) = &f.webhook_url {
            if let Err(why) = alerts::check_url(url, cfg) {
                push("webhookUrl", why);
            }
        }
        match m.get("cooldownMinutes") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x < 0.0 => push(
                    "cooldownMinutes",
                    "Number must be greater than or equal to 0".into(),
                ),
                Some(x) if x > MAX_COOLDOWN_MINUTES => push(
                    "cooldownMinutes",
                    format!("Number must be less than or equal to {MAX_COOLDOWN_MINUTES}"),
                ),
                Some(x) => f.cooldown = Some(x),
                None => push("cooldownMinutes", "Expected number".into()),
            },
            other => push(
                "cooldownMinutes",
                format!("Expected number, received {}", kind_of(other)),
            ),
        }
        if !create {
            match m.get("status") {
                None => {}
                Some(Value::String(s)) if s == "active" || s == "paused" => {
                    f.status = Some(s.clone())
                }
                Some(other) => push(
                    "status",
                    format!(
                        "Invalid enum value. Expected 'active' | 'paused', received {}",
                        other
                    ),
                ),
            }
        }
        if issues.is_empty() {
            if let Some(b) = &f.bucket_id {
                if !is_object_id(b) {
                    return Err(ApiError::BadRequest(
                        crate::api::error::INVALID_BUCKET_ID.into(),
                    ));
                }
            }
            Ok(f)
        } else {
            Err(ApiError::Validation(issues))
        }
    }
}
