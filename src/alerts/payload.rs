//! The notification body: dakkio's `alert.triggered` webhook payload
//! (dakkio-api.md §2.8), the same for the webhook and the MQTT topic.
//!
//! Where dakkio's example leaves a choice: `webhookId` is the alert rule's
//! id (a rule's `webhookUrl` has no id of its own); `operator` is the
//! symbol (`>`), as in dakkio's payload, while `parsedCondition` keeps the
//! code (`gt`); a no-data firing has `operator: "no_data"`, `threshold`
//! the silence in seconds, `currentValue` and `dataPoint` null. The
//! gateway adds `gatewayId` so a receiver can tell sites apart.

use serde_json::{json, Value as Json};

use super::condition::Condition;
use super::eval::Firing;
use crate::api::routes::{json_values, ts};
use crate::reading::Value;
use crate::store::AlertRuleRow;

pub fn build(
    rule: &AlertRuleRow,
    condition: Option<&Condition>,
    firing: &Firing,
    data_source_name: &str,
    gateway_id: &str,
) -> Json {
    let (operator, threshold) = match condition {
        Some(Condition::Threshold { op, value, .. }) => (json!(op.symbol()), value.to_json()),
        Some(Condition::NoData { silence }) => (json!("no_data"), json!(silence.as_secs())),
        None => (Json::Null, Json::Null),
    };
    let current = match &firing.current {
        Some(Value::Number(n)) => crate::api::routes::json_number(*n),
        Some(Value::Bool(b)) => Json::Bool(*b),
        Some(Value::Text(t)) => Json::String(t.clone()),
        None => Json::Null,
    };
    let point = firing.point.as_ref().map_or(Json::Null, |p| {
        let mut v = json!({"timestamp": ts(p.timestamp_ms), "values": json_values(&p.values)});
        if !p.metadata.is_empty() {
            v["metadata"] = Json::Object(
                p.metadata
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            );
        }
        v
    });
    json!({
        "event": "alert.triggered",
        "timestamp": ts(firing.at),
        "webhookId": rule.id,
        "bucketId": rule.bucket_id,
        "gatewayId": gateway_id,
        "data": {
            "alertId": rule.id,
            "alertName": rule.name,
            "dataSourceId": rule.data_source_id,
            "dataSourceName": data_source_name,
            "condition": rule.condition,
            "currentValue": current,
            "threshold": threshold,
            "operator": operator,
            "triggeredAt": ts(firing.at),
            "dataPoint": point,
        }
    })
}
