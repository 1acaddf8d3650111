//! The size budget: pages in use are kept below `max_size` minus the
//! headroom. Before a group that adds readings, [`TxCtx::make_room`] frees
//! room inside the group's own transaction: delivered history oldest first,
//! then per `store.on_full` the oldest undelivered readings (counted as
//! `dropped:store_full`) or a refusal ([`StoreError::Full`]).

use std::collections::HashMap;

use rusqlite::{params, Transaction};
use tracing::{info, warn};

use super::apply::{bump, TxCtx};
use super::retention::PRUNE_CHUNK;
use super::writer::used_bytes;
use super::StoreError;
use crate::config::OnFull;

/// The bucket (and its cursor) whose oldest delivered (`delivered`) or
/// undelivered row is the oldest of all, through the queue index.
fn oldest_bucket(
    tx: &Transaction,
    cursors: &[(i64, i64)],
    delivered: bool,
) -> Result<Option<(i64, i64)>, rusqlite::Error> {
    let sql = if delivered {
        "SELECT min(seq) FROM readings WHERE bucket = ?1 AND seq <= ?2"
    } else {
        "SELECT min(seq) FROM readings WHERE bucket = ?1 AND seq > ?2"
    };
    let mut best: Option<(i64, i64, i64)> = None;
    for &(bucket, cursor) in cursors {
        let first: Option<i64> = tx
            .prepare_cached(sql)?
            .query_row(params![bucket, cursor], |r| r.get(0))?;
        if let Some(seq) = first {
            if best.is_none_or(|(s, _, _)| seq < s) {
                best = Some((seq, bucket, cursor));
            }
        }
    }
    Ok(best.map(|(_, b, c)| (b, c)))
}

impl TxCtx<'_> {
    pub(super) fn used(&self, tx: &Transaction) -> Result<u64, rusqlite::Error> {
        used_bytes(tx, self.page_size)
    }

    fn budget(&self) -> u64 {
        self.config.max_size - super::headroom(self.config.max_size)
    }

    /// Free pages until `need` more bytes fit in the budget. `Ok(Err(Full))`
    /// when the policy is `reject` and there is no delivered history left.
    pub(super) fn make_room(
        &mut self,
        tx: &Transaction,
        need: u64,
    ) -> Result<Result<(), StoreError>, rusqlite::Error> {
        let budget = self.budget();
        let fits = |used: u64| used + need <= budget;
        if fits(self.used(tx)?) {
            *self.warned_full = false;
            return Ok(Ok(()));
        }
        // Delivered history goes first: it is already safe upstream.
        let cursors: Vec<(i64, i64)> = tx
            .prepare_cached("SELECT id, delivered_seq FROM buckets")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut history = 0;
        while let Some((bucket, cursor)) = oldest_bucket(tx, &cursors, true)? {
            let n = tx
                .prepare_cached(
                    "DELETE FROM readings WHERE bucket = ?1 AND seq IN (
                         SELECT seq FROM readings WHERE bucket = ?1 AND seq <= ?2
                         ORDER BY seq LIMIT ?3)",
                )?
                .execute(params![bucket, cursor, PRUNE_CHUNK])?;
            history += n;
            if n == 0 || fits(self.used(tx)?) {
                break;
            }
        }
        if history > 0 {
            info!(
                rows = history,
                "store near its size limit: removed delivered history"
            );
        }
        if fits(self.used(tx)?) {
            return Ok(Ok(()));
        }
        if self.config.on_full == OnFull::Reject {
            if !*self.warned_full {
                warn!(
                    max_size = self.config.max_size,
                    "store is full of undelivered readings; refusing new readings \
                     (`store.on_full = \"reject\"`) until delivery frees space"
                );
                *self.warned_full = true;
            }
            return Ok(Err(StoreError::Full));
        }
        // drop_oldest: the oldest undelivered readings, counted per bucket.
        let mut dropped: HashMap<i64, i64> = HashMap::new();
        while let Some((bucket, cursor)) = oldest_bucket(tx, &cursors, false)? {
            let n = tx
                .prepare_cached(
                    "DELETE FROM readings WHERE bucket = ?1 AND seq IN (
                         SELECT seq FROM readings WHERE bucket = ?1 AND seq > ?2
                         ORDER BY seq LIMIT ?3)",
                )?
                .execute(params![bucket, cursor, PRUNE_CHUNK])?;
            *dropped.entry(bucket).or_default() += n as i64;
            if n == 0 || fits(self.used(tx)?) {
                break;
            }
        }
        let mut total = 0;
        for (bucket, n) in &dropped {
            bump(tx, *bucket, "dropped", *n)?;
            bump(tx, *bucket, "dropped:store_full", *n)?;
            total += n;
        }
        if total > 0 {
            warn!(
                readings = total,
                max_size = self.config.max_size,
                "store full: dropped the oldest undelivered readings (`store.on_full = \"drop_oldest\"`)"
            );
        }
        Ok(Ok(()))
    }
}
