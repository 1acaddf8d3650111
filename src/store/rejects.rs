//! Kept rejects after the fact: select them (by id, reason, origin), purge
//! them, and replay them — move the ones that decode under the current
//! configuration into the queue.
//!
//! Ledger: a reject is counted once under `rejected` and
//! `rejected:<reason>` (bucket 0) when it is kept. A **replay** takes it
//! out of both and adds `rejects_replayed`, in the same transaction that
//! deletes its row and appends its readings (counted `accepted` like any
//! other), so a replayed input is counted once, as stored; a reject that
//! is gone by then (purged, evicted for room, replayed by someone else) is
//! left alone and its readings are not stored. A **purge** deletes rows
//! only: what was rejected stays counted (like `dead-letters purge`).
//!
//! Who decodes: the caller (the CLI runs the current configuration's
//! decoders); the store only moves rows, so a replay and the daemon can
//! write the same database: every write transaction begins IMMEDIATE and
//! the writer reloads `next_seq` inside it (see `writer.rs`).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::apply::{bump, TxCtx};
use super::{Reader, RejectRow, StoreError};
use crate::reading::Reading;

/// Which kept rejects a command applies to; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectFilter {
    /// These ids only.
    pub ids: Option<Vec<i64>>,
    /// This reason only (`invalid_json`).
    pub reason: Option<String>,
    /// Origins starting with this (`mqtt:`, `serial:/dev/ttyUSB0`).
    pub origin: Option<String>,
}

impl RejectFilter {
    /// Every kept reject.
    pub fn all() -> RejectFilter {
        RejectFilter::default()
    }

    fn is_everything(&self) -> bool {
        *self == RejectFilter::default()
    }

    /// The matching ids, oldest first.
    fn ids(&self, c: &Connection) -> Result<Vec<i64>, rusqlite::Error> {
        let mut st = c.prepare_cached(
            "SELECT id FROM rejects
             WHERE (?1 IS NULL OR reason = ?1)
               AND (?2 IS NULL OR substr(origin, 1, length(?2)) = ?2)
             ORDER BY id",
        )?;
        let found: Vec<i64> = st
            .query_map(params![self.reason, self.origin], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(match &self.ids {
            None => found,
            Some(ids) => found.into_iter().filter(|id| ids.contains(id)).collect(),
        })
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Rejects moved into the queue.
    pub ids: Vec<i64>,
    /// Readings stored for them.
    pub readings: usize,
}

fn row(r: &rusqlite::Row<'_>) -> Result<RejectRow, rusqlite::Error> {
    Ok(RejectRow {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        origin: r.get(2)?,
        reason: r.get(3)?,
        detail: r.get(4)?,
        raw: r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
    })
}

impl Reader {
    /// The kept rejects matching `filter`, newest first, at most `limit`.
    pub fn rejects_matching_blocking(
        &self,
        filter: &RejectFilter,
        limit: usize,
    ) -> Result<Vec<RejectRow>, StoreError> {
        let filter = filter.clone();
        self.with_blocking(move |c| {
            let mut ids = filter.ids(c)?;
            ids.reverse();
            ids.truncate(limit);
            let mut st = c.prepare_cached(
                "SELECT id, at, origin, reason, detail, raw FROM rejects WHERE id = ?1",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(r) = st.query_row([id], row).optional()? {
                    out.push(r);
                }
            }
            Ok(out)
        })
    }
}

/// Delete the matching rejects; their counts stay.
pub(super) fn purge(tx: &Transaction, filter: &RejectFilter) -> Result<usize, rusqlite::Error> {
    if filter.is_everything() {
        return tx.execute("DELETE FROM rejects", []);
    }
    let mut n = 0;
    let mut st = tx.prepare_cached("DELETE FROM rejects WHERE id = ?1")?;
    for id in filter.ids(tx)? {
        n += st.execute([id])?;
    }
    Ok(n)
}

impl TxCtx<'_> {
    /// Move each reject that still exists into the queue as its readings
    /// (see the module doc for the ledger).
    pub(super) fn replay_rejects(
        &mut self,
        tx: &Transaction,
        items: &[(i64, Vec<Reading>)],
        accepted: &mut HashMap<i64, i64>,
    ) -> Result<Result<Replayed, StoreError>, rusqlite::Error> {
        let mut out = Replayed::default();
        for (id, readings) in items {
            let reason: Option<String> = tx
                .prepare_cached("SELECT reason FROM rejects WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?;
            let Some(reason) = reason else {
                continue;
            };
            // Readings from MQTT or serial are never refused by the source
            // cap (an over-cap one becomes a reject again), so nothing of
            // this transaction is left half done.
            if let Err(e) = self.append(tx, readings, accepted)? {
                return Ok(Err(e));
            }
            tx.prepare_cached("DELETE FROM rejects WHERE id = ?1")?
                .execute([id])?;
            bump(tx, 0, "rejected", -1)?;
            bump(tx, 0, &format!("rejected:{reason}"), -1)?;
            bump(tx, 0, "rejects_replayed", 1)?;
            out.ids.push(*id);
            out.readings += readings.len();
        }
        Ok(Ok(out))
    }
}
