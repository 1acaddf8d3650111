//! The size budget: pages in use are kept below `max_size` minus the
//! headroom. Before a group, [`TxCtx::make_room`] frees room inside the
//! group's own transaction for what the group adds (readings, rejects,
//! dead letters), oldest first in this order: kept rejects (diagnostics,
//! already counted by reason), delivered history (safe upstream), dead
//! letters (counted as `dead_letter_evicted`; they exist only here, so they
//! go after the history, and never for bad input alone); then, for a group
//! with readings, per `store.on_full` the oldest undelivered readings
//! (counted as `dropped:store_full`) or a refusal ([`StoreError::Full`]).

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

/// Rejects or dead letters removed per statement when making room: a few
/// hundred kilobytes at most, so little more than needed goes.
const EVICT_CHUNK: i64 = 256;

impl TxCtx<'_> {
    pub(super) fn used(&self, tx: &Transaction) -> Result<u64, rusqlite::Error> {
        used_bytes(tx, self.page_size)
    }

    fn budget(&self) -> u64 {
        self.config.max_size - super::headroom(self.config.max_size)
    }

    /// Free pages until `need` more bytes fit in the budget: rejects, then
    /// delivered history, each oldest first; then, when the group brings
    /// `readings` or `dead_letters`, the oldest dead letters; then, only
    /// when it brings `readings`, the `on_full` policy. `Ok(Err(Full))`
    /// when the policy is `reject` and nothing else is left to remove. A
    /// group that cannot go further is let through (it is small, and its
    /// rows are the first candidates for the next eviction).
    pub(super) fn make_room(
        &mut self,
        tx: &Transaction,
        need: u64,
        readings: bool,
        dead_letters: bool,
    ) -> Result<Result<(), StoreError>, rusqlite::Error> {
        let budget = self.budget();
        let fits = |used: u64| used + need <= budget;
        if fits(self.used(tx)?) {
            *self.warned_full = false;
            return Ok(Ok(()));
        }
        // Rejects go first: kept only for inspection, already counted.
        let mut rejects = 0i64;
        loop {
            let n = tx
                .prepare_cached(
                    "DELETE FROM rejects WHERE id IN (SELECT id FROM rejects ORDER BY id LIMIT ?1)",
                )?
                .execute([EVICT_CHUNK])? as i64;
            rejects += n;
            if n == 0 || fits(self.used(tx)?) {
                break;
            }
        }
        if rejects > 0 {
            bump(tx, 0, "rejects_evicted", rejects)?;
            info!(
                rejects,
                "store near its size limit: removed the oldest kept rejects (still counted by reason)"
            );
            if fits(self.used(tx)?) {
                return Ok(Ok(()));
            }
        }
        // Then delivered history: it is already safe upstream.
        let cursors: Vec<(i64, i64)> = tx
            .prepare_cached("SELECT id, delivered_seq FROM buckets")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut history = 0;
        while let Some((bucket, cursor)) = oldest_bucket(tx, &cursors, true)? {
            let n = tx
                .prepare_cached(
                    "DELETE FROM readings INDEXED BY readings_queue WHERE bucket = ?1 AND seq IN (
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
        if fits(self.used(tx)?) || !(readings || dead_letters) {
            // Bad input alone never costs a dead letter or a reading.
            return Ok(Ok(()));
        }
        // Then dead letters, oldest first: after the history, because a
        // dead letter exists nowhere else (dakkio refused it) and can be
        // retried. They stay counted as `dead_lettered` (the ledger still
        // balances); the eviction is counted beside it, per bucket.
        let mut evicted: HashMap<i64, i64> = HashMap::new();
        loop {
            let oldest: Vec<(i64, i64)> = tx
                .prepare_cached("SELECT id, bucket FROM dead_letters ORDER BY id LIMIT ?1")?
                .query_map([EVICT_CHUNK], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let Some(&(last, _)) = oldest.last() else {
                break;
            };
            tx.prepare_cached("DELETE FROM dead_letters WHERE id <= ?1")?
                .execute([last])?;
            for (_, bucket) in &oldest {
                *evicted.entry(*bucket).or_default() += 1;
            }
            if fits(self.used(tx)?) {
                break;
            }
        }
        if !evicted.is_empty() {
            let mut total = 0;
            for (bucket, n) in &evicted {
                bump(tx, *bucket, "dead_letter_evicted", *n)?;
                total += n;
            }
            warn!(
                dead_letters = total,
                max_size = self.config.max_size,
                "store near its size limit: removed the oldest dead letters \
                 (still counted as dead-lettered; `dead-letters list` shows what is left)"
            );
            if fits(self.used(tx)?) {
                return Ok(Ok(()));
            }
        }
        if fits(self.used(tx)?) || !readings {
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
                    "DELETE FROM readings INDEXED BY readings_queue WHERE bucket = ?1 AND seq IN (
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
