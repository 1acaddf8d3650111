//! The size budget: pages in use are kept below `max_size` minus the
//! headroom. Before a group, [`TxCtx::make_room`] frees room inside the
//! group's own transaction for what the group adds (readings, rejects,
//! dead letters), oldest first in this order: kept rejects (diagnostics,
//! already counted by reason), delivered history (safe upstream), dead
//! letters (counted as `dead_letter_evicted`; they exist only here, so they
//! go after the history, and never for bad input alone); then, for a group
//! with readings, per `store.on_full` the oldest undelivered readings
//! (counted as `dropped:store_full`) or a refusal ([`StoreError::Full`]).
//!
//! # Fair shares
//!
//! Undelivered readings are shared out between buckets, so that a key of
//! one bucket can neither erase nor block another bucket's data. Each
//! bucket has a share of the budget: its `store_share` (a percentage or a
//! size), or an equal part of what the explicit shares leave ([`fractions`]).
//! A bucket's use is the bytes of its undelivered readings (values and
//! metadata as stored plus [`ROW_OVERHEAD`]), kept exact in the ledger
//! (`queued_bytes`, per bucket, changed in the same transaction as the rows:
//! append, delivery mark, drop, dead-letter retry) so that no decision
//! needs a scan.
//!
//! - `drop_oldest`: a bucket may borrow space nobody else uses. When room
//!   must come from undelivered readings, it comes from the bucket that
//!   uses most *relative to its share* (max-min fairness), oldest first, a
//!   few hundred rows at a time. A bucket within its share loses nothing
//!   while another is above its own.
//! - `reject`: nothing accepted is ever dropped, so a share is a
//!   reservation: a bucket's readings are refused once its use (in pages,
//!   estimated from the bytes with the pages-per-byte ratio learnt from
//!   commits) reaches its share, even while the store has room; the other
//!   buckets' shares stay free for them.
//!
//! Buckets the store holds but the configuration no longer names have no
//! share: their readings go first. Shares change on reload
//! ([`super::StoreHandle::set_shares`]); without any (tools, tests) every
//! bucket in the store gets an equal share.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tracing::{info, warn};

use super::apply::{bump, TxCtx};
use super::retention::prune_source;
use super::writer::used_bytes;
use super::StoreError;
use crate::config::{OnFull, StoreShare};
use crate::reading::now_ms;

/// Bytes a reading row takes besides its values and metadata text: the
/// key columns, the origin, the record headers and its queue index entry.
pub(super) const ROW_OVERHEAD: i64 = 48;

/// The bytes of a reading row as counted in `queued_bytes`, in SQL.
pub(super) const ROW_BYTES_SQL: &str = "(octet_length(vals) + ifnull(octet_length(meta), 0) + 48)";

/// The ledger counter of a bucket's undelivered bytes.
pub(super) const QUEUED_BYTES: &str = "queued_bytes";

/// Bucket id → configured share (`None`: an equal part of the rest).
pub type ShareTable = Vec<(String, Option<StoreShare>)>;

/// The shares, set by the application (and on reload), read by the writer.
pub(crate) type SharedShares = Arc<RwLock<Arc<ShareTable>>>;

/// The writer's state for fair shares.
pub(crate) struct Fairness {
    pub(super) shares: SharedShares,
    /// Pages (bytes) per byte of `queued_bytes`, learnt from commits.
    pub(super) pages_per_byte: f64,
    /// `queued_bytes` changes of the open transaction, per bucket key.
    pub(super) queued_bytes: HashMap<i64, i64>,
    /// `queued_bytes` appended by the open transaction (for the ratio).
    pub(super) appended_bytes: i64,
}

impl Fairness {
    pub(super) fn new(shares: SharedShares) -> Fairness {
        Fairness {
            shares,
            pages_per_byte: 1.5,
            queued_bytes: HashMap::new(),
            appended_bytes: 0,
        }
    }

    /// Note a reading appended (or put back) in the open transaction.
    pub(super) fn added(&mut self, bucket: i64, bytes: i64) {
        *self.queued_bytes.entry(bucket).or_default() += bytes;
        self.appended_bytes += bytes;
    }

    /// Write the transaction's `queued_bytes` changes into the ledger.
    pub(super) fn flush(&mut self, tx: &Connection) -> Result<(), rusqlite::Error> {
        for (bucket, delta) in self.queued_bytes.drain() {
            bump(tx, bucket, QUEUED_BYTES, delta)?;
        }
        Ok(())
    }

    /// After a commit that appended `appended_bytes` and grew the pages in
    /// use by `grown`: learn the ratio (groups of some size only).
    pub(super) fn learn(&mut self, grown: u64) {
        let bytes = std::mem::take(&mut self.appended_bytes);
        if bytes >= 16 << 10 && grown > 0 {
            let observed = grown as f64 / bytes as f64;
            self.pages_per_byte = (self.pages_per_byte * 0.7 + observed * 0.3).clamp(1.0, 4.0);
        }
    }

    /// Forget the changes of a transaction that rolled back.
    pub(super) fn rolled_back(&mut self) {
        self.queued_bytes.clear();
        self.appended_bytes = 0;
    }

    pub(super) fn table(&self) -> Arc<ShareTable> {
        self.shares
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// Each bucket's share as a fraction of the budget. Configured buckets get
/// their `store_share`, the others among them an equal part of the rest;
/// buckets of the store the configuration does not name get 0. Without a
/// configuration (`table` empty), every bucket of `known` gets an equal
/// share.
pub fn fractions(table: &ShareTable, budget: u64, known: &[String]) -> HashMap<String, f64> {
    if table.is_empty() {
        let each = 1.0 / known.len().max(1) as f64;
        return known.iter().map(|b| (b.clone(), each)).collect();
    }
    let explicit: f64 = table
        .iter()
        .filter_map(|(_, s)| s.map(|s| s.fraction(budget)))
        .sum();
    let implicit = table.iter().filter(|(_, s)| s.is_none()).count();
    let rest = if implicit == 0 {
        0.0
    } else {
        (1.0 - explicit).max(0.0) / implicit as f64
    };
    let mut out: HashMap<String, f64> = known.iter().map(|b| (b.clone(), 0.0)).collect();
    for (id, s) in table {
        out.insert(id.clone(), s.map_or(rest, |s| s.fraction(budget)));
    }
    out
}

/// One bucket as the fair-share decisions see it.
#[derive(Debug, Clone)]
struct Use {
    key: i64,
    cursor: i64,
    /// `queued_bytes` (what is left of it as rows are dropped).
    bytes: i64,
    fraction: f64,
    /// No undelivered row left to drop.
    exhausted: bool,
}

impl Use {
    /// Use relative to the share: infinite without a share.
    fn weight(&self) -> f64 {
        if self.fraction <= 0.0 {
            f64::INFINITY
        } else {
            self.bytes as f64 / self.fraction
        }
    }
}

/// The bucket to take room from: the largest use relative to its share
/// (ties: the most bytes).
fn victim(uses: &mut [Use]) -> Option<&mut Use> {
    uses.iter_mut()
        .filter(|u| !u.exhausted && u.bytes > 0)
        .max_by(|a, b| {
            a.weight()
                .partial_cmp(&b.weight())
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.bytes.cmp(&b.bytes))
        })
}

/// The ledger counter of a bucket's rows in `readings` (queued and
/// delivered history): what the local API reports as the bucket's data
/// points, without counting millions of rows (the queue index no longer
/// holds every row; a count through the series key read a 1 GiB store
/// whole). Every insert and delete of rows changes it in the same
/// transaction; it is not part of the balance. Migration 4 counts it once.
pub(super) const KEPT: &str = "kept";

/// Count `queued_bytes` for a store written before the counter existed
/// (once; the meta key `queued_bytes` marks it done). Reads the undelivered
/// rows only, through the queue index.
pub(super) fn init_queued_bytes(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let done: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'queued_bytes'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if done.is_some() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let buckets: Vec<(i64, i64)> = tx
        .prepare("SELECT id, delivered_seq FROM buckets")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (bucket, cursor) in buckets {
        let bytes: i64 = tx.query_row(
            &format!(
                "SELECT coalesce(sum({ROW_BYTES_SQL}), 0) FROM readings
                 WHERE bucket = ?1 AND seq > ?2 AND queued = 1"
            ),
            params![bucket, cursor],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO ledger (bucket, name, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (bucket, name) DO UPDATE SET value = excluded.value",
            params![bucket, QUEUED_BYTES, bytes],
        )?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('queued_bytes', '1')",
        [],
    )?;
    tx.commit()
}

/// Drop up to `limit` of a bucket's oldest undelivered rows; returns the
/// rows and their bytes.
fn drop_oldest(
    tx: &Transaction,
    bucket: i64,
    cursor: i64,
    limit: i64,
) -> Result<(i64, i64), rusqlite::Error> {
    let (last, n, bytes): (Option<i64>, i64, i64) = tx
        .prepare_cached(&format!(
            "SELECT max(seq), count(*), coalesce(sum(b), 0) FROM (
                 SELECT seq, {ROW_BYTES_SQL} AS b FROM readings INDEXED BY readings_queue
                 WHERE bucket = ?1 AND seq > ?2 AND queued = 1 ORDER BY seq LIMIT ?3)"
        ))?
        .query_row(params![bucket, cursor, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let Some(last) = last else { return Ok((0, 0)) };
    let gone = tx
        .prepare_cached(
            "DELETE FROM readings INDEXED BY readings_queue
             WHERE bucket = ?1 AND seq > ?2 AND seq <= ?3 AND queued = 1",
        )?
        .execute(params![bucket, cursor, last])?;
    bump(tx, bucket, QUEUED_BYTES, -bytes)?;
    bump(tx, bucket, KEPT, -(gone as i64))?;
    Ok((n, bytes))
}

/// At most one WARN a minute for readings refused by a bucket's share.
fn warn_share(bucket_id: &str, used: u64, share: u64) {
    static LAST_MS: AtomicI64 = AtomicI64::new(i64::MIN);
    let now = now_ms();
    if now.saturating_sub(LAST_MS.load(Ordering::Relaxed)) >= 60_000 {
        LAST_MS.store(now, Ordering::Relaxed);
        warn!(
            bucket = %bucket_id,
            used_bytes = used,
            share_bytes = share,
            "a bucket's undelivered readings fill its share of the store; refusing its \
             new readings (`store.on_full = \"reject\"`, `buckets[].store_share`) until \
             delivery frees space; other buckets are not affected"
        );
    }
}

/// Delivered readings one data source gives at a time when making room.
const HISTORY_CHUNK: i64 = 512;

/// Rows of a data source looked at for its oldest delivered one: a source
/// whose oldest rows are all undelivered (a backlog) gives no history now.
const HEAD_SCAN: i64 = 1000;

/// A data source's series and its bucket's cursor: `(bucket, source, cursor)`.
type Series = (i64, i64, i64);

/// The time of a data source's oldest delivered reading, through the
/// series key (the queue index holds undelivered rows only).
fn oldest_delivered(
    tx: &Transaction,
    (bucket, source, cursor): Series,
) -> Result<Option<i64>, rusqlite::Error> {
    tx.prepare_cached(
        "SELECT ts FROM (SELECT ts, seq FROM readings WHERE bucket = ?1 AND source = ?2
                         ORDER BY ts LIMIT ?4)
         WHERE seq <= ?3 LIMIT 1",
    )?
    .query_row(params![bucket, source, cursor, HEAD_SCAN], |r| r.get(0))
    .optional()
}

/// Every data source with delivered history, by the time of its oldest
/// delivered reading (oldest on top).
fn history_heads(tx: &Transaction) -> Result<BinaryHeap<Reverse<(i64, Series)>>, rusqlite::Error> {
    let series: Vec<Series> = tx
        .prepare_cached(
            "SELECT s.bucket, s.id, b.delivered_seq FROM sources s JOIN buckets b ON b.id = s.bucket",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut heads = BinaryHeap::with_capacity(series.len());
    for s in series {
        if let Some(ts) = oldest_delivered(tx, s)? {
            heads.push(Reverse((ts, s)));
        }
    }
    Ok(heads)
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

    /// Every bucket of the store with its undelivered bytes and share.
    fn uses(&self, tx: &Transaction) -> Result<Vec<Use>, rusqlite::Error> {
        let rows: Vec<(i64, String, i64, i64)> = tx
            .prepare_cached(
                "SELECT b.id, b.bucket_id, b.delivered_seq, coalesce(l.value, 0)
                 FROM buckets b LEFT JOIN ledger l ON l.bucket = b.id AND l.name = ?1",
            )?
            .query_map([QUEUED_BYTES], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let known: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
        let shares = fractions(&self.fair.table(), self.budget(), &known);
        Ok(rows
            .into_iter()
            .map(|(key, id, cursor, bytes)| Use {
                key,
                cursor,
                bytes: bytes + self.fair.queued_bytes.get(&key).copied().unwrap_or(0),
                fraction: shares.get(&id).copied().unwrap_or(0.0),
                exhausted: false,
            })
            .collect())
    }

    /// With `on_full = "reject"`: the buckets among `group` whose
    /// undelivered readings already fill their share (a reservation, see
    /// "Fair shares"); their readings are refused, the others' go in.
    pub(super) fn over_share(
        &mut self,
        tx: &Transaction,
        group: &HashSet<&str>,
    ) -> Result<HashSet<String>, rusqlite::Error> {
        let mut out = HashSet::new();
        if self.config.on_full != OnFull::Reject || group.is_empty() {
            return Ok(out);
        }
        let rows: Vec<(String, i64)> = tx
            .prepare_cached(
                "SELECT b.bucket_id, coalesce(l.value, 0)
                 FROM buckets b LEFT JOIN ledger l ON l.bucket = b.id AND l.name = ?1",
            )?
            .query_map([QUEUED_BYTES], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut known: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        known.extend(
            group
                .iter()
                .filter(|b| !rows.iter().any(|r| r.0 == **b))
                .map(|b| (*b).to_owned()),
        );
        let budget = self.budget();
        let shares = fractions(&self.fair.table(), budget, &known);
        for (id, bytes) in rows {
            if !group.contains(id.as_str()) {
                continue;
            }
            let used = (bytes as f64 * self.fair.pages_per_byte) as u64;
            let share = (shares.get(&id).copied().unwrap_or(0.0) * budget as f64) as u64;
            if used >= share {
                warn_share(&id, used, share);
                out.insert(id);
            }
        }
        Ok(out)
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
        // Then delivered history: it is already safe upstream. Oldest
        // first by the readings' time: the data source whose oldest
        // delivered reading is oldest gives a chunk, and is looked at again.
        let mut heads = history_heads(tx)?;
        let mut history = 0;
        while let Some(Reverse((_, series))) = heads.pop() {
            let n = prune_source(tx, series, i64::MAX, HISTORY_CHUNK)?;
            history += n;
            if fits(self.used(tx)?) {
                break;
            }
            if n > 0 {
                if let Some(ts) = oldest_delivered(tx, series)? {
                    heads.push(Reverse((ts, series)));
                }
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
        // drop_oldest: the oldest undelivered readings of the bucket that
        // uses most for its share (see "Fair shares" above), a chunk at a
        // time so that the choice is made again as uses change.
        let start_used = self.used(tx)?;
        let mut uses = self.uses(tx)?;
        let mut dropped: HashMap<i64, i64> = HashMap::new();
        let mut freed = 0i64;
        while let Some(v) = victim(&mut uses) {
            let (n, bytes) = drop_oldest(tx, v.key, v.cursor, EVICT_CHUNK)?;
            if n == 0 {
                v.exhausted = true;
                continue;
            }
            v.bytes -= bytes;
            freed += bytes;
            *dropped.entry(v.key).or_default() += n;
            let used = self.used(tx)?;
            // Rows deleted from partly filled pages free no page at once;
            // when the bytes dropped already cover what is needed, the
            // group goes through and the next one finds the pages freed.
            if fits(used)
                || freed as f64 * self.fair.pages_per_byte
                    >= (need + start_used).saturating_sub(budget) as f64 * 2.0
            {
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
            let buckets: Vec<i64> = dropped.keys().copied().collect();
            warn!(
                readings = total,
                buckets = ?buckets,
                max_size = self.config.max_size,
                "store full: dropped the oldest undelivered readings of the bucket(s) using \
                 most for their share (`store.on_full = \"drop_oldest\"`, \
                 `buckets[].store_share`)"
            );
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
