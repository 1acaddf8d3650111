//! Alert rules and their notification queue in the store (schema version 3:
//! `alert_rules`, `alert_deliveries`).
//!
//! - A rule row is written on create/update/pause (never per reading); a
//!   firing updates its `last_triggered_at` and `trigger_count` in the
//!   *same transaction* that queues its notifications, so a rule never
//!   shows a firing whose notifications were not queued, or the reverse.
//! - A notification (`alert_deliveries`) is durable like a reading: it
//!   stays `pending` until delivered (then deleted and counted
//!   `alerts:delivered`) or given up (`failed`, with the reason, counted
//!   `alerts:failed` and `alerts:failed:<reason>`). At most `max_pending`
//!   wait: beyond, the oldest is given up as `queue_full`. At most
//!   [`FAILED_KEPT`] failed rows are kept for inspection (their counts stay).
//! - Counters live in the ledger's bucket 0 (`alerts:fired`, …), so `queue
//!   stats` reads them from another process.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::apply::bump;
use super::inbox::mirror::SharedMirror;
use super::query::inbox::with_bucket_rows;

/// Failed notifications kept for inspection (the oldest are removed).
pub const FAILED_KEPT: i64 = 1000;

/// One alert rule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleRow {
    pub id: String,
    pub bucket_id: String,
    pub data_source_id: String,
    pub name: String,
    /// The sentence as the client sent it (parsed again at load).
    pub condition: String,
    pub webhook_url: String,
    pub cooldown_minutes: f64,
    /// `active` or `paused`.
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_triggered_at: Option<i64>,
    pub trigger_count: i64,
}

/// A notification to queue with a firing.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// `webhook` or `mqtt`.
    pub target: String,
    /// The URL, or the MQTT topic.
    pub destination: String,
    /// The JSON body (dakkio's `alert.triggered` payload).
    pub payload: String,
}

/// A queued notification.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub rule_id: String,
    pub target: String,
    pub destination: String,
    pub payload: String,
    pub created_at: i64,
    pub attempts: i64,
    pub next_at: i64,
    /// `pending` or `failed`.
    pub status: String,
    pub reason: Option<String>,
}

/// Alert counts for `queue stats`, `/health` and metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AlertStats {
    pub rules: i64,
    pub rules_active: i64,
    pub fired: i64,
    /// Firings the evaluator could not hand over (its queue was full).
    pub firings_dropped: i64,
    pub delivered: i64,
    pub failed: i64,
    pub failed_by_reason: std::collections::BTreeMap<String, i64>,
    pub pending: i64,
}

/// A change to the alert tables (one store command).
#[derive(Debug, Clone, PartialEq)]
pub enum AlertOp {
    /// Create or update a rule (its firing history is kept on update).
    PutRule(AlertRuleRow),
    /// Remove a rule; answers 1 when it existed. Its queued
    /// notifications are still delivered.
    DeleteRule(String),
    /// A rule fired at `at`: record it and queue its notifications.
    Fired {
        rule_id: String,
        at: i64,
        deliveries: Vec<NewDelivery>,
        max_pending: usize,
    },
    /// A notification was delivered.
    Delivered(i64),
    /// An attempt failed; try again at `next_at`.
    Retry {
        id: i64,
        next_at: i64,
        error: String,
    },
    /// Give a notification up (`reason`: `expired`, `refused`, `not_allowed`, …).
    GiveUp { id: i64, reason: String },
}

/// Run one op inside the group's transaction; the answer is a count
/// (rows affected, or notifications given up to make room).
pub(super) fn apply(tx: &Transaction, op: &AlertOp, now: i64) -> Result<usize, rusqlite::Error> {
    match op {
        AlertOp::PutRule(r) => tx.execute(
            "INSERT INTO alert_rules (id, bucket_id, data_source_id, name, condition,
                 webhook_url, cooldown_minutes, status, created_at, updated_at,
                 last_triggered_at, trigger_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (id) DO UPDATE SET data_source_id = excluded.data_source_id,
                 name = excluded.name, condition = excluded.condition,
                 webhook_url = excluded.webhook_url,
                 cooldown_minutes = excluded.cooldown_minutes, status = excluded.status,
                 updated_at = excluded.updated_at",
            params![
                r.id,
                r.bucket_id,
                r.data_source_id,
                r.name,
                r.condition,
                r.webhook_url,
                r.cooldown_minutes,
                r.status,
                r.created_at,
                r.updated_at,
                r.last_triggered_at,
                r.trigger_count
            ],
        ),
        AlertOp::DeleteRule(id) => tx.execute("DELETE FROM alert_rules WHERE id = ?1", [id]),
        AlertOp::Fired {
            rule_id,
            at,
            deliveries,
            max_pending,
        } => {
            tx.execute(
                "UPDATE alert_rules SET last_triggered_at = ?2, trigger_count = trigger_count + 1
                 WHERE id = ?1",
                params![rule_id, at],
            )?;
            bump(tx, 0, "alerts:fired", 1)?;
            let mut st = tx.prepare_cached(
                "INSERT INTO alert_deliveries (rule_id, target, destination, payload,
                     created_at, attempts, next_at, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?5, 'pending')",
            )?;
            for d in deliveries {
                st.execute(params![rule_id, d.target, d.destination, d.payload, now])?;
            }
            let pending: i64 = tx.query_row(
                "SELECT count(*) FROM alert_deliveries WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )?;
            let over = (pending - *max_pending as i64).max(0);
            if over > 0 {
                let ids: Vec<i64> = tx
                    .prepare(
                        "SELECT id FROM alert_deliveries WHERE status = 'pending'
                         ORDER BY id LIMIT ?1",
                    )?
                    .query_map([over], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for id in &ids {
                    give_up(tx, *id, "queue_full", now)?;
                }
            }
            Ok(over as usize)
        }
        AlertOp::Delivered(id) => {
            let n = tx.execute(
                "DELETE FROM alert_deliveries WHERE id = ?1 AND status = 'pending'",
                [id],
            )?;
            bump(tx, 0, "alerts:delivered", n as i64)?;
            Ok(n)
        }
        AlertOp::Retry { id, next_at, error } => tx.execute(
            "UPDATE alert_deliveries SET attempts = attempts + 1, next_at = ?2, reason = ?3
             WHERE id = ?1 AND status = 'pending'",
            params![id, next_at, super::truncate_str(error, 512)],
        ),
        AlertOp::GiveUp { id, reason } => give_up(tx, *id, reason, now),
    }
}

fn give_up(tx: &Transaction, id: i64, reason: &str, now: i64) -> Result<usize, rusqlite::Error> {
    let n = tx.execute(
        "UPDATE alert_deliveries SET status = 'failed', reason = ?2, next_at = ?3
         WHERE id = ?1 AND status = 'pending'",
        params![id, reason, now],
    )?;
    if n > 0 {
        bump(tx, 0, "alerts:failed", 1)?;
        bump(tx, 0, &format!("alerts:failed:{reason}"), 1)?;
        tx.execute(
            "DELETE FROM alert_deliveries WHERE status = 'failed' AND id NOT IN
                 (SELECT id FROM alert_deliveries WHERE status = 'failed'
                  ORDER BY id DESC LIMIT ?1)",
            [FAILED_KEPT],
        )?;
    }
    Ok(n)
}

pub(super) fn rules(c: &Connection) -> Result<Vec<AlertRuleRow>, rusqlite::Error> {
    c.prepare(
        "SELECT id, bucket_id, data_source_id, name, condition, webhook_url, cooldown_minutes,
                status, created_at, updated_at, last_triggered_at, trigger_count
         FROM alert_rules ORDER BY created_at, id",
    )?
    .query_map([], |r| {
        Ok(AlertRuleRow {
            id: r.get(0)?,
            bucket_id: r.get(1)?,
            data_source_id: r.get(2)?,
            name: r.get(3)?,
            condition: r.get(4)?,
            webhook_url: r.get(5)?,
            cooldown_minutes: r.get(6)?,
            status: r.get(7)?,
            created_at: r.get(8)?,
            updated_at: r.get(9)?,
            last_triggered_at: r.get(10)?,
            trigger_count: r.get(11)?,
        })
    })?
    .collect()
}

fn delivery(r: &rusqlite::Row) -> Result<DeliveryRow, rusqlite::Error> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        rule_id: r.get(1)?,
        target: r.get(2)?,
        destination: r.get(3)?,
        payload: r.get(4)?,
        created_at: r.get(5)?,
        attempts: r.get(6)?,
        next_at: r.get(7)?,
        status: r.get(8)?,
        reason: r.get(9)?,
    })
}

const DELIVERY_COLUMNS: &str =
    "id, rule_id, target, destination, payload, created_at, attempts, next_at, status, reason";

/// Pending notifications due at `now`, oldest first.
pub(super) fn due(
    c: &Connection,
    now: i64,
    limit: usize,
) -> Result<Vec<DeliveryRow>, rusqlite::Error> {
    c.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries
         WHERE status = 'pending' AND next_at <= ?1 ORDER BY id LIMIT ?2"
    ))?
    .query_map(params![now, limit as i64], delivery)?
    .collect()
}

/// When the next pending notification is due.
pub(super) fn next_due(c: &Connection) -> Result<Option<i64>, rusqlite::Error> {
    c.query_row(
        "SELECT min(next_at) FROM alert_deliveries WHERE status = 'pending'",
        [],
        |r| r.get(0),
    )
}

/// The newest failed notifications, newest first.
pub(super) fn failed(c: &Connection, limit: usize) -> Result<Vec<DeliveryRow>, rusqlite::Error> {
    c.prepare(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries
         WHERE status = 'failed' ORDER BY id DESC LIMIT ?1"
    ))?
    .query_map([limit as i64], delivery)?
    .collect()
}

pub(super) fn stats(c: &Connection) -> Result<AlertStats, rusqlite::Error> {
    let mut s = AlertStats::default();
    (s.rules, s.rules_active) = c.query_row(
        "SELECT count(*), coalesce(sum(status = 'active'), 0) FROM alert_rules",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    s.pending = c.query_row(
        "SELECT count(*) FROM alert_deliveries WHERE status = 'pending'",
        [],
        |r| r.get(0),
    )?;
    let rows: Vec<(String, i64)> = c
        .prepare("SELECT name, value FROM ledger WHERE bucket = 0 AND name LIKE 'alerts:%'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (name, value) in rows {
        match name.as_str() {
            "alerts:fired" => s.fired = value,
            "alerts:delivered" => s.delivered = value,
            "alerts:failed" => s.failed = value,
            "alerts:firings_dropped" => s.firings_dropped = value,
            other => {
                if let Some(reason) = other.strip_prefix("alerts:failed:") {
                    s.failed_by_reason.insert(reason.to_owned(), value);
                }
            }
        }
    }
    Ok(s)
}

/// The newest reading time of a data source in the store, the inbox's
/// readings included (the start of a no-data rule's silence after a
/// restart).
pub(super) fn last_reading(
    c: &Connection,
    mirror: &SharedMirror,
    bucket_id: &str,
    source_id: &str,
) -> Result<Option<i64>, rusqlite::Error> {
    let key: Option<(i64, i64)> = c
        .prepare_cached(
            "SELECT b.id, s.id FROM buckets b JOIN sources s ON s.bucket = b.id
             WHERE b.bucket_id = ?1 AND s.source_id = ?2",
        )?
        .query_row(params![bucket_id, source_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((bucket, source)) = key else {
        return Ok(None);
    };
    with_bucket_rows(
        c,
        mirror,
        bucket,
        |rows| {
            rows.iter()
                .filter(|r| r.source == source)
                .map(|r| r.ts)
                .max()
        },
        |c, in_inbox| {
            // One seek to the end of the series (the primary key's prefix).
            let stored: Option<i64> = c
                .prepare_cached("SELECT max(ts) FROM readings WHERE bucket = ?1 AND source = ?2")?
                .query_row(params![bucket, source], |r| r.get(0))?;
            Ok(stored.max(in_inbox.flatten()))
        },
    )
}
