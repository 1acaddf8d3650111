//! `GET /api/status`: what the status page shows, in one answer — each
//! part's condition and last activity, each bucket's uplink, queue and
//! ledger, its data sources' latest values, and the latest rejects.
//!
//! Scope (the same keys as every endpoint, the same check order):
//! - the admin key sees every bucket, every serial port and the rejects;
//! - a bucket's read or write key sees that bucket only: its uplink, queue
//!   and sources, the serial ports and Modbus devices (and their buses)
//!   that feed it, and the parts every
//!   bucket shares (store, MQTT, API); never another bucket's name, nor
//!   the rejects (inputs that did not become readings have no bucket, and
//!   their payloads are whatever anyone sent);
//! - no key: 401 (the page then shows only its key prompt and `/health`).
//!
//! Cost: one `Reader::stats` (ledgers, a count of queued rows per bucket),
//! one ledger read for today's deliveries, one backward index step per data
//! source for the latest values, and at most [`REJECTS_SHOWN`] rejects; the
//! plots use `POST /api/data/query`. Every value from the store goes out as
//! JSON text: the page renders it with `textContent` only.

use std::collections::BTreeMap;

use axum::extract::{Request, State as AxState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{authenticate, opt_ts, query_slot, ts, AppState};
use crate::api::error::ApiError;
use crate::api::{ClientAddr, Principal};
use crate::config::Bucket;
use crate::reading::now_ms;
use crate::store::BucketStats;
use crate::telemetry::{Activity, Condition, Part, UplinkMode};

/// Rejects listed (newest first).
pub const REJECTS_SHOWN: usize = 20;
/// Characters of a reject's payload shown.
pub const PAYLOAD_EXCERPT_CHARS: usize = 240;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusOut {
    gateway: GatewayOut,
    /// `ok` when no part is degraded.
    status: &'static str,
    /// `admin`, or the bucket key's kind (`read`, `write`).
    scope: &'static str,
    parts: Vec<PartOut>,
    store: StoreOut,
    buckets: Vec<BucketOut>,
    /// Admin only (absent for bucket keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    rejects: Option<RejectsOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayOut {
    id: String,
    version: &'static str,
    /// The gateway's clock: ages on the page are computed against it.
    now: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StoreOut {
    /// Bytes in pages in use, what `store.max_size` bounds.
    used_bytes: u64,
    max_bytes: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PartOut {
    /// As `/health` names it: `store`, `mqtt`, `api`, `serial:<path>`.
    name: String,
    /// `store`, `mqtt`, `api`, `uplink`, `serial`, …
    kind: String,
    /// For people: the serial port's `name`, the broker's address.
    label: String,
    /// `ok`, `degraded`, or `unknown` (not reported yet).
    state: &'static str,
    reason: Option<String>,
    last_input_at: serde_json::Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BucketOut {
    #[serde(rename = "_id")]
    id: String,
    name: String,
    uplink: UplinkOut,
    queue: QueueOut,
    /// The newest reading of any of its sources.
    last_reading_at: serde_json::Value,
    data_sources: Vec<SourceOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UplinkOut {
    /// `delivering`, `backing_off`, `rate_limited`, `paused`, `no_key`, or
    /// `starting` (its forwarder has not reported yet).
    state: &'static str,
    reason: Option<String>,
    /// The delay between requests while the monthly call budget sets the
    /// pace; `null` when not pacing.
    pacing_seconds: Option<f64>,
    last_delivery_at: serde_json::Value,
    /// `configured` or `missing`.
    key: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueOut {
    queued: i64,
    oldest_queued_at: serde_json::Value,
    accepted: i64,
    delivered: i64,
    /// Points dakkio accepted since 00:00 UTC.
    delivered_today: i64,
    dead_lettered: i64,
    dropped: i64,
    dropped_by_reason: BTreeMap<String, i64>,
    /// `accepted = delivered + queued + deadLettered + dropped`.
    ledger_balanced: bool,
    /// `accepted - (delivered + queued + deadLettered + dropped)`.
    ledger_difference: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SourceOut {
    #[serde(rename = "_id")]
    id: String,
    name: String,
    last_data_point: serde_json::Value,
    /// The latest reading's values (`null` before the first reading).
    values: Option<Box<RawValue>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RejectsOut {
    /// Since the database was created.
    total_by_reason: BTreeMap<String, i64>,
    latest: Vec<RejectOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RejectOut {
    at: String,
    reason: String,
    /// `mqtt:<topic>`, `serial:<path>`, `api`.
    origin: String,
    detail: String,
    /// The first [`PAYLOAD_EXCERPT_CHARS`] characters (invalid UTF-8
    /// shown as U+FFFD).
    payload_excerpt: String,
    payload_bytes: usize,
}

pub(crate) async fn status(
    AxState(state): AxState<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let who = authenticate(&state, req.headers(), req.extensions().get::<ClientAddr>())?;
    let now = now_ms();
    let config = &state.config;
    let buckets: Vec<&Bucket> = config
        .buckets
        .iter()
        .filter(|b| who.has_bucket(&b.id))
        .collect();
    let _slot = query_slot(&state).await?;
    let reader = state.store.reader();
    let stats = reader.stats().await?;
    let today = {
        reader
            .on_query_thread(move |r| crate::uplink::delivered_on_day_of(r, now))
            .await?
    };
    let board = state.health.board();
    let bucket_of_port = |path: &str| {
        config
            .serial
            .iter()
            .find(|p| p.path == path)
            .map(|p| (p.name.clone(), p.bucket_id.clone()))
    };

    // `degraded` when a part this key may see is: a read key is not told
    // of a problem it cannot see (`/health`'s bare status says it anyway).
    let mut parts = Vec::new();
    let mut degraded = false;
    for (part, (condition, activity)) in &board {
        let bad = matches!(condition, Some(Condition::Degraded(_)));
        let label = match part {
            // Shown with its bucket, not as a part.
            Part::Bucket(name) => {
                degraded |= bad && buckets.iter().any(|b| &b.name == name);
                continue;
            }
            Part::Serial(path) => match bucket_of_port(path) {
                Some((name, bucket)) if who.has_bucket(&bucket) => name,
                Some(_) => continue,
                // A port no longer configured: the admin's business.
                None if who.is_admin() => path.clone(),
                None => continue,
            },
            Part::Modbus(bus) => match config.modbus.iter().find(|b| &b.name == bus) {
                Some(b)
                    if who.is_admin() || b.devices.iter().any(|d| who.has_bucket(&d.bucket_id)) =>
                {
                    b.name.clone()
                }
                Some(_) => continue,
                None if who.is_admin() => bus.clone(),
                None => continue,
            },
            Part::ModbusDevice(bus, dev) => {
                let device = config
                    .modbus
                    .iter()
                    .find(|b| &b.name == bus)
                    .and_then(|b| b.devices.iter().find(|d| &d.name == dev));
                match device {
                    Some(d) if who.has_bucket(&d.bucket_id) => format!("{bus} / {dev}"),
                    Some(_) => continue,
                    None if who.is_admin() => format!("{bus} / {dev}"),
                    None => continue,
                }
            }
            Part::Mqtt => config
                .mqtt
                .as_ref()
                .map(|m| format!("{}:{}", m.host, m.port))
                .unwrap_or_default(),
            _ => String::new(),
        };
        degraded |= bad;
        let name = part.to_string();
        let kind = name.split(':').next().unwrap_or_default().to_owned();
        let (state, reason) = condition_out(condition.as_ref());
        parts.push(PartOut {
            name,
            kind,
            label,
            state,
            reason,
            last_input_at: opt_ts(activity.last_input_ms),
        });
    }

    let mut out_buckets = Vec::with_capacity(buckets.len());
    for b in buckets {
        let part = board.get(&Part::Bucket(b.name.clone()));
        let q = stats.bucket(&b.id).cloned().unwrap_or_default();
        let declared = config.declared_sources(&b.id);
        let latest = reader.latest_readings(&b.id).await?;
        let last_reading = latest.iter().map(|l| l.timestamp_ms).max();
        let mut sources: Vec<SourceOut> = latest
            .into_iter()
            .map(|l| SourceOut {
                name: declared
                    .get(&l.data_source_id)
                    .cloned()
                    .unwrap_or_else(|| l.data_source_id.clone()),
                last_data_point: ts(l.timestamp_ms).into(),
                values: RawValue::from_string(l.values_json).ok(),
                id: l.data_source_id,
            })
            .collect();
        for (id, name) in declared {
            if !sources.iter().any(|s| s.id == id) {
                sources.push(SourceOut {
                    id,
                    name,
                    last_data_point: serde_json::Value::Null,
                    values: None,
                });
            }
        }
        out_buckets.push(BucketOut {
            uplink: uplink_out(b, part),
            queue: queue_out(&q, today.get(&b.name).copied().unwrap_or(0)),
            last_reading_at: opt_ts(last_reading),
            data_sources: sources,
            id: b.id.clone(),
            name: b.name.clone(),
        });
    }

    let rejects = if who.is_admin() {
        let latest = reader
            .rejects(REJECTS_SHOWN)
            .await?
            .into_iter()
            .map(|r| RejectOut {
                at: ts(r.at_ms),
                payload_excerpt: excerpt(&r.raw),
                payload_bytes: r.raw.len(),
                reason: r.reason,
                origin: r.origin,
                detail: r.detail,
            })
            .collect();
        Some(RejectsOut {
            total_by_reason: stats.rejected_by_reason.clone(),
            latest,
        })
    } else {
        None
    };

    let body = StatusOut {
        gateway: GatewayOut {
            id: config.gateway.id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            now: ts(now),
        },
        status: if degraded { "degraded" } else { "ok" },
        scope: scope_name(&who),
        parts,
        store: StoreOut {
            used_bytes: stats.used_bytes,
            max_bytes: config.store.max_size,
        },
        buckets: out_buckets,
        rejects,
    };
    let json = serde_json::to_vec(&body)
        .map_err(|e| ApiError::Internal(format!("cannot write the status: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        json,
    )
        .into_response())
}

fn scope_name(who: &Principal) -> &'static str {
    match who {
        Principal::Admin => "admin",
        Principal::Bucket { kind, .. } => kind.as_str(),
    }
}

fn condition_out(c: Option<&Condition>) -> (&'static str, Option<String>) {
    match c {
        Some(Condition::Ok) => ("ok", None),
        Some(Condition::Degraded(why)) => ("degraded", Some(why.clone())),
        None => ("unknown", None),
    }
}

fn uplink_out(b: &Bucket, part: Option<&(Option<Condition>, Activity)>) -> UplinkOut {
    let activity = part.map(|p| &p.1);
    let (state, reason) = match activity.and_then(|a| a.uplink.as_ref()) {
        None => ("starting", None),
        Some((mode, reason)) => (
            match mode {
                UplinkMode::Delivering => "delivering",
                UplinkMode::BackingOff => "backing_off",
                UplinkMode::RateLimited => "rate_limited",
                UplinkMode::Paused => "paused",
                UplinkMode::NoKey => "no_key",
            },
            reason.clone(),
        ),
    };
    let pacing = activity.map_or(0, |a| a.pacing_ms);
    UplinkOut {
        state,
        reason,
        pacing_seconds: (pacing > 0).then(|| pacing as f64 / 1000.0),
        last_delivery_at: opt_ts(activity.and_then(|a| a.last_delivery_ms)),
        key: if b.write_key().is_some() {
            "configured"
        } else {
            "missing"
        },
    }
}

fn queue_out(q: &BucketStats, delivered_today: i64) -> QueueOut {
    let accounted = q.delivered + q.queued + q.dead_lettered + q.dropped;
    QueueOut {
        queued: q.queued,
        oldest_queued_at: opt_ts(q.oldest_queued_ms),
        accepted: q.accepted,
        delivered: q.delivered,
        delivered_today,
        dead_lettered: q.dead_lettered,
        dropped: q.dropped,
        dropped_by_reason: q.dropped_by_reason.clone(),
        ledger_balanced: q.ledger_balances(),
        ledger_difference: q.accepted - accounted,
    }
}

/// The start of a payload as text, at most [`PAYLOAD_EXCERPT_CHARS`]
/// characters.
fn excerpt(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    match text.char_indices().nth(PAYLOAD_EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_cut_on_characters_and_keep_markup_as_text() {
        assert_eq!(excerpt(b"<script>x</script>"), "<script>x</script>");
        let long = "é".repeat(PAYLOAD_EXCERPT_CHARS + 5);
        let e = excerpt(long.as_bytes());
        assert_eq!(e.chars().count(), PAYLOAD_EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn the_ledger_difference_is_what_is_unaccounted_for() {
        let q = BucketStats {
            accepted: 10,
            delivered: 5,
            queued: 3,
            dead_lettered: 1,
            dropped: 0,
            ..BucketStats::default()
        };
        let out = queue_out(&q, 2);
        assert!(!out.ledger_balanced);
        assert_eq!(out.ledger_difference, 1);
        assert_eq!(out.delivered_today, 2);
    }
}
