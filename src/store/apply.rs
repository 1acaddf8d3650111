//! The SQL of each command, run inside the group's transaction: append
//! readings (seq, interned bucket and data source keys), keep a reject,
//! mark a delivery (move the cursor, copy refused points to dead letters),
//! retry or purge dead letters, API keys, counters and state. Every ledger
//! change is made here, in the same transaction as the rows it counts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use rusqlite::{params, ErrorCode, OptionalExtension, Transaction};

use super::writer::{copy_error, Outcome};
use super::{
    mark_gate, truncate_str, Appended, Command, MarkGate, MarkOutcome, NewSource, StoreError,
    REJECT_DETAIL_LIMIT, REJECT_ORIGIN_LIMIT, REJECT_RAW_LIMIT,
};
use crate::config::StoreConfig;
use crate::reading::{now_ms, Origin, Reading};

/// Add `delta` to a ledger counter of `bucket` (0 = global).
pub(super) fn bump(
    tx: &rusqlite::Connection,
    bucket: i64,
    name: &str,
    delta: i64,
) -> Result<(), rusqlite::Error> {
    if delta == 0 {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO ledger (bucket, name, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (bucket, name) DO UPDATE SET value = value + excluded.value",
    )?
    .execute(params![bucket, name, delta])?;
    Ok(())
}

/// The bucket's rows with a seq in `(after, up_to]` and their queued
/// bytes: what a delivery mark to `up_to` takes out of the queue. With
/// `after` the delivery cursor, every such row is queued (`schema.rs`,
/// migration 4); a move counts the rows it inserts delivered itself.
pub(super) fn rows_between(
    conn: &rusqlite::Connection,
    bucket: i64,
    after: i64,
    up_to: i64,
) -> Result<(i64, i64), rusqlite::Error> {
    conn.prepare_cached(&format!(
        "SELECT count(*), coalesce(sum({}), 0) FROM readings
         WHERE bucket = ?1 AND seq > ?2 AND seq <= ?3 AND queued = 1",
        super::budget::ROW_BYTES_SQL
    ))?
    .query_row(params![bucket, after, up_to], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
}

/// Set a small state value (`meta`).
pub(super) fn set_meta(
    conn: &rusqlite::Connection,
    key: &str,
    value: &str,
) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// What the transaction needs besides the connection.
pub(super) struct TxCtx<'a> {
    pub(super) store_id: u32,
    pub(super) next_seq: &'a mut i64,
    pub(super) buckets: &'a mut HashMap<String, i64>,
    pub(super) sources: &'a mut HashMap<(i64, String), i64>,
    pub(super) config: &'a StoreConfig,
    pub(super) page_size: u64,
    pub(super) warned_full: &'a mut bool,
    pub(super) clock: &'a super::ClockGate,
    /// Appended readings kept for the commit observer (`None`: none wanted).
    pub(super) committed: Option<&'a mut Vec<Vec<Reading>>>,
    /// Fair shares: `queued_bytes` bookkeeping (see `budget.rs`).
    pub(super) fair: &'a mut super::budget::Fairness,
}

pub(super) type Step = Result<Outcome, (Outcome, rusqlite::Error)>;

impl TxCtx<'_> {
    fn bucket_key(&mut self, tx: &Transaction, bucket_id: &str) -> Result<i64, rusqlite::Error> {
        if let Some(k) = self.buckets.get(bucket_id) {
            return Ok(*k);
        }
        let existing: Option<i64> = tx
            .prepare_cached("SELECT id FROM buckets WHERE bucket_id = ?1")?
            .query_row([bucket_id], |r| r.get(0))
            .optional()?;
        let k = match existing {
            Some(k) => k,
            None => {
                tx.prepare_cached("INSERT INTO buckets (bucket_id, created_at) VALUES (?1, ?2)")?
                    .execute(params![bucket_id, now_ms()])?;
                tx.last_insert_rowid()
            }
        };
        self.buckets.insert(bucket_id.to_owned(), k);
        Ok(k)
    }

    fn source_key(
        &mut self,
        tx: &Transaction,
        bucket: i64,
        source_id: &str,
    ) -> Result<i64, rusqlite::Error> {
        if let Some(k) = self.sources.get(&(bucket, source_id.to_owned())) {
            return Ok(*k);
        }
        let existing: Option<i64> = tx
            .prepare_cached("SELECT id FROM sources WHERE bucket = ?1 AND source_id = ?2")?
            .query_row(params![bucket, source_id], |r| r.get(0))
            .optional()?;
        let k = match existing {
            Some(k) => k,
            None => {
                tx.prepare_cached(
                    "INSERT INTO sources (bucket, source_id, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?3)",
                )?
                .execute(params![bucket, source_id, now_ms()])?;
                tx.last_insert_rowid()
            }
        };
        self.sources.insert((bucket, source_id.to_owned()), k);
        Ok(k)
    }

    // The error carries the reply sender back so the caller can answer it;
    // this is internal and on the cold path.
    #[allow(clippy::result_large_err)]
    pub(super) fn apply(
        &mut self,
        tx: &Transaction,
        cmd: Command,
        room: &super::writer::Room,
        accepted: &mut HashMap<i64, i64>,
    ) -> Step {
        match cmd {
            Command::Append(readings, reply) => {
                if let Some(e) = room.refuses(&readings) {
                    return Ok(Outcome::Appended(reply, Err(copy_error(e))));
                }
                match self.append(tx, &readings, accepted) {
                    Ok(a) => {
                        if let Ok(appended) = &a {
                            self.keep_committed(readings, appended.count);
                        }
                        Ok(Outcome::Appended(reply, a))
                    }
                    Err(e) => Err((Outcome::Appended(reply, Err(StoreError::Closed)), e)),
                }
            }
            Command::Reject(r, reply) => match self.reject(tx, &r) {
                Ok(()) => Ok(Outcome::Unit(reply, Ok(()))),
                Err(e) => Err((Outcome::Unit(reply, Err(StoreError::Closed)), e)),
            },
            Command::MarkDelivered {
                bucket_id,
                up_to_seq,
                after,
                dead,
                reply,
            } => match self.mark(tx, &bucket_id, after, up_to_seq, &dead) {
                Ok(m) => Ok(Outcome::Marked(reply, m)),
                Err(e) => Err((Outcome::Marked(reply, Err(StoreError::Closed)), e)),
            },
            Command::RetryDeadLetters(ids, reply) => {
                match retry_dead(tx, ids.as_deref(), self.next_seq, self.fair) {
                    Ok(n) => Ok(Outcome::Count(reply, Ok(n))),
                    Err(e) => Err((Outcome::Count(reply, Err(StoreError::Closed)), e)),
                }
            }
            Command::PurgeDeadLetters(reply) => match tx.execute("DELETE FROM dead_letters", []) {
                Ok(n) => Ok(Outcome::Count(reply, Ok(n))),
                Err(e) => Err((Outcome::Count(reply, Err(StoreError::Closed)), e)),
            },
            Command::ReplayRejects(items, reply) => {
                let all: Vec<_> = items.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
                if let Some(e) = room.refuses(&all) {
                    return Ok(Outcome::Replayed(reply, Err(copy_error(e))));
                }
                match self.replay_rejects(tx, &items, accepted) {
                    Ok(r) => Ok(Outcome::Replayed(reply, r)),
                    Err(e) => Err((Outcome::Replayed(reply, Err(StoreError::Closed)), e)),
                }
            }
            Command::PurgeRejects(filter, reply) => match super::rejects::purge(tx, &filter) {
                Ok(n) => Ok(Outcome::Count(reply, Ok(n))),
                Err(e) => Err((Outcome::Count(reply, Err(StoreError::Closed)), e)),
            },
            Command::InsertApiKey(row, reply) => {
                let r = tx.execute(
                    "INSERT INTO api_keys (id, bucket_id, kind, name, hash, prefix, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        row.id,
                        row.bucket_id,
                        row.kind,
                        row.name,
                        &row.hash[..],
                        row.prefix,
                        row.created_at
                    ],
                );
                match r {
                    Ok(_) => Ok(Outcome::Unit(reply, Ok(()))),
                    Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => Ok(
                        Outcome::Unit(reply, Err(StoreError::Invalid("duplicate key".into()))),
                    ),
                    Err(e) => Err((Outcome::Unit(reply, Err(StoreError::Closed)), e)),
                }
            }
            Command::DeleteApiKey(id, reply) => {
                match tx.execute("DELETE FROM api_keys WHERE id = ?1", [id]) {
                    Ok(n) => Ok(Outcome::Bool(reply, Ok(n > 0))),
                    Err(e) => Err((Outcome::Bool(reply, Err(StoreError::Closed)), e)),
                }
            }
            Command::TouchApiKeys(used, reply) => {
                let r = (|| {
                    let mut st = tx.prepare_cached(
                        "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?2)
                         WHERE id = ?1",
                    )?;
                    for (id, at) in &used {
                        st.execute(params![id, at])?;
                    }
                    Ok(())
                })();
                match r {
                    Ok(()) => Ok(Outcome::Unit(reply, Ok(()))),
                    Err(e) => Err((Outcome::Unit(reply, Err(StoreError::Closed)), e)),
                }
            }
            Command::Counters(deltas, reply) => {
                let r = deltas
                    .iter()
                    .try_for_each(|(name, delta)| bump(tx, 0, name, *delta));
                match r {
                    Ok(()) => Ok(Outcome::Unit(reply, Ok(()))),
                    Err(e) => Err((Outcome::Unit(reply, Err(StoreError::Closed)), e)),
                }
            }
            Command::SetState(values, reply) => {
                let r = values.iter().try_for_each(|(k, v)| set_meta(tx, k, v));
                match r {
                    Ok(()) => Ok(Outcome::Unit(reply, Ok(()))),
                    Err(e) => Err((Outcome::Unit(reply, Err(StoreError::Closed)), e)),
                }
            }
            Command::Ping(reply) => Ok(Outcome::Unit(reply, Ok(()))),
            Command::Clock(op, reply) => match super::clock_hold::apply(tx, &op) {
                Ok(n) => Ok(Outcome::Count(reply, Ok(n))),
                Err(e) => Err((Outcome::Count(reply, Err(StoreError::Closed)), e)),
            },
            Command::Alerts(op, reply) => match super::alerts::apply(tx, &op, now_ms()) {
                Ok(n) => Ok(Outcome::Count(reply, Ok(n))),
                Err(e) => Err((Outcome::Count(reply, Err(StoreError::Closed)), e)),
            },
            Command::CreateSource(source, reply) => match self.create_source(tx, &source) {
                Ok(r) => Ok(Outcome::Unit(reply, r)),
                Err(e) => Err((Outcome::Unit(reply, Err(StoreError::Closed)), e)),
            },
            Command::EnsureBuckets(ids, reply) => {
                let r = ids
                    .iter()
                    .try_for_each(|id| self.bucket_key(tx, id).map(drop));
                match r {
                    Ok(()) => Ok(Outcome::Unit(reply, Ok(()))),
                    Err(e) => Err((Outcome::Unit(reply, Err(StoreError::Closed)), e)),
                }
            }
            // Taken out of the group by the run loop (a pass runs in
            // slices of its own, never inside a group).
            Command::Maintain(reply) => Ok(Outcome::Unit(reply, Ok(()))),
        }
    }

    /// Hand an append's stored readings to the commit observer's list
    /// (moved, not copied). Readings diverted as rejects (their data
    /// source over the cap: not in `sources`) are left out; that check
    /// runs only when some were diverted.
    fn keep_committed(&mut self, mut readings: Vec<Reading>, stored: usize) {
        let Some(list) = self.committed.as_deref_mut() else {
            return;
        };
        if stored != readings.len() {
            let (buckets, sources) = (&*self.buckets, &*self.sources);
            readings.retain(|r| {
                buckets
                    .get(r.bucket_id.as_str())
                    .is_some_and(|b| sources.contains_key(&(*b, r.data_source_id.to_string())))
            });
        }
        if !readings.is_empty() {
            list.push(readings);
        }
    }

    /// The data source's key, `None` when it is not in the store yet.
    fn known_source(
        &mut self,
        tx: &Transaction,
        bucket: i64,
        source_id: &str,
    ) -> Result<Option<i64>, rusqlite::Error> {
        if let Some(k) = self.sources.get(&(bucket, source_id.to_owned())) {
            return Ok(Some(*k));
        }
        let k: Option<i64> = tx
            .prepare_cached("SELECT id FROM sources WHERE bucket = ?1 AND source_id = ?2")?
            .query_row(params![bucket, source_id], |r| r.get(0))
            .optional()?;
        if let Some(k) = k {
            self.sources.insert((bucket, source_id.to_owned()), k);
        }
        Ok(k)
    }

    /// Data sources of a bucket in the store. Counted only when a new one
    /// is about to be added (rare), through the `(bucket, source_id)` key.
    /// A data source created through the local API, with its profile;
    /// within `store.max_sources_per_bucket`.
    fn create_source(
        &mut self,
        tx: &Transaction,
        s: &NewSource,
    ) -> Result<Result<(), StoreError>, rusqlite::Error> {
        let bucket = self.bucket_key(tx, &s.bucket_id)?;
        let limit = self.config.max_sources_per_bucket;
        if Self::source_count(tx, bucket)? >= limit {
            return Ok(Err(StoreError::SourceLimit {
                bucket: s.bucket_id.clone(),
                limit,
            }));
        }
        tx.prepare_cached(
            "INSERT INTO sources (bucket, source_id, created_at, updated_at, profile)
             VALUES (?1, ?2, ?3, ?3, ?4)",
        )?
        .execute(params![bucket, s.source_id, s.at_ms, s.profile_json])?;
        let k = tx.last_insert_rowid();
        self.sources.insert((bucket, s.source_id.clone()), k);
        Ok(Ok(()))
    }

    fn source_count(tx: &Transaction, bucket: i64) -> Result<u64, rusqlite::Error> {
        tx.prepare_cached("SELECT count(*) FROM sources WHERE bucket = ?1")?
            .query_row([bucket], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }

    /// `store.max_sources_per_bucket` for one append (see the module doc of
    /// `store`): a command from the local API that would add data sources
    /// beyond the cap is refused whole ([`StoreError::SourceLimit`], nothing
    /// stored); from any other input, only the readings of the sources
    /// beyond the cap are kept aside as rejects `too_many_sources`, and the
    /// rest is stored.
    fn over_cap(
        &mut self,
        tx: &Transaction,
        readings: &[Reading],
    ) -> Result<(Option<StoreError>, Vec<bool>), rusqlite::Error> {
        let limit = self.config.max_sources_per_bucket;
        let mut diverted = vec![false; readings.len()];
        // bucket key → (sources in the store, new ids admitted so far).
        let mut fresh: HashMap<i64, (u64, HashSet<&str>)> = HashMap::new();
        for (i, r) in readings.iter().enumerate() {
            let bucket = self.bucket_key(tx, &r.bucket_id)?;
            if self.known_source(tx, bucket, &r.data_source_id)?.is_some() {
                continue;
            }
            let (count, new) = match fresh.entry(bucket) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert((Self::source_count(tx, bucket)?, HashSet::new()))
                }
            };
            if new.contains(r.data_source_id.as_str()) {
                continue;
            }
            if *count + new.len() as u64 >= limit {
                if r.origin == Origin::Api {
                    let refused = StoreError::SourceLimit {
                        bucket: r.bucket_id.to_string(),
                        limit,
                    };
                    return Ok((Some(refused), diverted));
                }
                diverted[i] = true;
                continue;
            }
            new.insert(r.data_source_id.as_str());
        }
        Ok((None, diverted))
    }

    pub(super) fn append(
        &mut self,
        tx: &Transaction,
        readings: &[Reading],
        accepted: &mut HashMap<i64, i64>,
    ) -> Result<Result<Appended, StoreError>, rusqlite::Error> {
        let (refused, diverted) = self.over_cap(tx, readings)?;
        if let Some(e) = refused {
            return Ok(Err(e));
        }
        let mut first_seq = 0;
        let mut count = 0;
        // Receive-time readings wait for a trusted clock (`clock_hold.rs`).
        let unsynced = if readings.iter().any(|r| r.receive_time) {
            self.clock.unsynced()
        } else {
            None
        };
        for (r, diverted) in readings.iter().zip(diverted) {
            if diverted {
                self.too_many_sources(tx, r)?;
                continue;
            }
            let bucket = self.bucket_key(tx, &r.bucket_id)?;
            let source = self.source_key(tx, bucket, &r.data_source_id)?;
            let vals = serde_json::to_string(&r.values).unwrap_or_else(|_| "{}".into());
            let meta = if r.metadata.is_empty() {
                None
            } else {
                serde_json::to_string(&r.metadata).ok()
            };
            let seq = *self.next_seq;
            tx.prepare_cached(
                "INSERT INTO readings (bucket, source, ts, seq, origin, vals, meta, queued)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1)",
            )?
            .execute(params![
                bucket,
                source,
                r.timestamp_ms,
                seq,
                r.origin.code(),
                vals,
                meta
            ])?;
            *self.next_seq += 1;
            if let (true, Some(now)) = (r.receive_time, unsynced) {
                self.clock.hold(tx, now, bucket, seq, r.timestamp_ms)?;
            }
            let bytes = vals.len() + meta.as_ref().map_or(0, String::len);
            self.fair
                .added(bucket, bytes as i64 + super::budget::ROW_OVERHEAD);
            if count == 0 {
                first_seq = seq;
            }
            count += 1;
            *accepted.entry(bucket).or_default() += 1;
        }
        Ok(Ok(Appended {
            first_seq,
            count,
            store_id: self.store_id,
        }))
    }

    /// Keep a reading beyond `store.max_sources_per_bucket` as a reject.
    fn too_many_sources(&mut self, tx: &Transaction, r: &Reading) -> Result<(), rusqlite::Error> {
        let limit = self.config.max_sources_per_bucket;
        metrics::counter!(
            "dakkio_readings_rejected_total",
            "source" => r.origin.as_str(),
            "reason" => "too_many_sources"
        )
        .increment(1);
        // At most one line a minute, with the count of those not logged.
        static LAST_WARN_MS: AtomicI64 = AtomicI64::new(i64::MIN);
        static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
        let now = now_ms();
        let last = LAST_WARN_MS.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 60_000 {
            LAST_WARN_MS.store(now, Ordering::Relaxed);
            let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
            tracing::warn!(
                bucket = %r.bucket_id,
                data_source = %r.data_source_id,
                limit,
                suppressed,
                "a reading for one data source more than `store.max_sources_per_bucket` \
                 kept in rejects as `too_many_sources`"
            );
        } else {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        }
        let raw = serde_json::json!({
            "bucketId": r.bucket_id,
            "dataSourceId": r.data_source_id,
            "timestamp": r.timestamp_ms,
            "values": r.values,
        });
        self.reject(
            tx,
            &super::Reject {
                origin: r.origin.as_str().to_owned(),
                reason: "too_many_sources".into(),
                detail: format!(
                    "data source {} would be one more than the {limit} of bucket {} \
                     (`store.max_sources_per_bucket`)",
                    r.data_source_id, r.bucket_id
                ),
                raw: raw.to_string().into_bytes(),
            },
        )
    }

    fn reject(&mut self, tx: &Transaction, r: &super::Reject) -> Result<(), rusqlite::Error> {
        // Bounded whatever the caller passed (a topic can be 64 KiB).
        let raw = &r.raw[..r.raw.len().min(REJECT_RAW_LIMIT)];
        let origin = truncate_str(&r.origin, REJECT_ORIGIN_LIMIT);
        let detail = truncate_str(&r.detail, REJECT_DETAIL_LIMIT);
        tx.prepare_cached(
            "INSERT INTO rejects (at, origin, reason, detail, raw) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![now_ms(), origin, r.reason, detail, raw])?;
        bump(tx, 0, "rejected", 1)?;
        bump(tx, 0, &format!("rejected:{}", r.reason), 1)?;
        // Keep only the newest `max_rejects` (a cheap range delete).
        tx.prepare_cached("DELETE FROM rejects WHERE id <= (SELECT max(id) FROM rejects) - ?1")?
            .execute([self.config.max_rejects as i64])?;
        Ok(())
    }

    fn mark(
        &mut self,
        tx: &Transaction,
        bucket_id: &str,
        after: Option<i64>,
        up_to: i64,
        dead: &[super::DeadLetter],
    ) -> Result<Result<MarkOutcome, StoreError>, rusqlite::Error> {
        let bucket = self.bucket_key(tx, bucket_id)?;
        let cursor: i64 = tx
            .prepare_cached("SELECT delivered_seq FROM buckets WHERE id = ?1")?
            .query_row([bucket], |r| r.get(0))?;
        match mark_gate(cursor, after, up_to) {
            MarkGate::Done => return Ok(Ok(MarkOutcome::default())),
            MarkGate::Behind(after) => return Ok(Err(StoreError::MarkBehind { after })),
            MarkGate::Apply => {}
        }
        // The rows still there, and their bytes: they leave the queue.
        let (present, bytes) = rows_between(tx, bucket, cursor, up_to)?;
        *self.fair.queued_bytes.entry(bucket).or_default() -= bytes;
        let mut dead_n = 0i64;
        let now = now_ms();
        for d in dead.iter().filter(|d| d.seq > cursor && d.seq <= up_to) {
            dead_n += tx
                .prepare_cached(
                    "INSERT INTO dead_letters
                       (seq, bucket, source, ts, origin, vals, meta, status, message, details, at)
                     SELECT seq, bucket, source, ts, origin, vals, meta, ?3, ?4, ?5, ?6
                     FROM readings WHERE seq = ?1 AND bucket = ?2 AND queued = 1",
                )?
                .execute(params![d.seq, bucket, d.status, d.message, d.details, now])?
                as i64;
        }
        tx.prepare_cached("UPDATE buckets SET delivered_seq = ?2 WHERE id = ?1")?
            .execute(params![bucket, up_to])?;
        let delivered = present - dead_n;
        bump(tx, bucket, "delivered", delivered)?;
        bump(tx, bucket, "dead_lettered", dead_n)?;
        Ok(Ok(MarkOutcome {
            delivered: delivered as u64,
            dead_lettered: dead_n as u64,
        }))
    }
}

/// Put dead letters back into the queue as new readings.
fn retry_dead(
    tx: &Transaction,
    ids: Option<&[i64]>,
    next_seq: &mut i64,
    fair: &mut super::budget::Fairness,
) -> Result<usize, rusqlite::Error> {
    let bytes = super::budget::ROW_BYTES_SQL;
    let selected: Vec<(i64, i64, i64)> = match ids {
        None => tx
            .prepare(&format!(
                "SELECT id, bucket, {bytes} FROM dead_letters ORDER BY id"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?,
        Some(ids) => {
            let mut out = Vec::new();
            let mut st = tx.prepare(&format!(
                "SELECT id, bucket, {bytes} FROM dead_letters WHERE id = ?1"
            ))?;
            for id in ids {
                if let Some(row) = st
                    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?
                {
                    out.push(row);
                }
            }
            out
        }
    };
    for (id, bucket, bytes) in &selected {
        fair.added(*bucket, *bytes);
        tx.execute(
            "INSERT INTO readings (bucket, source, ts, seq, origin, vals, meta, queued)
             SELECT bucket, source, ts, ?3, ?2, vals, meta, 1 FROM dead_letters WHERE id = ?1",
            params![id, Origin::Retry.code(), *next_seq],
        )?;
        *next_seq += 1;
        tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
        bump(tx, *bucket, "dead_lettered", -1)?;
        bump(tx, *bucket, super::budget::KEPT, 1)?;
    }
    Ok(selected.len())
}
