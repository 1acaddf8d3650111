//! Read-side access: a small pool of connections that never write, used on
//! the blocking thread pool so that no async worker waits on SQLite (the
//! local API's reads use their own low-priority threads instead, see
//! `query_pool.rs` and [`Reader::on_query_thread`]). Reads
//! are kept short (one statement or a few) so they never hold back WAL
//! checkpoints for long.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::inbox::mirror::{Mirror, SharedMirror};
use super::query_pool::QueryPool;
use super::{ApiKeyRow, StoreError};
use crate::reading::Origin;

/// Query threads when the API did not say (`api.max_parallel_queries`'s
/// default).
const DEFAULT_QUERY_THREADS: usize = 2;

/// Idle read connections kept open.
const POOL_MAX_IDLE: usize = 4;

#[derive(Clone)]
pub struct Reader {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    store_id: u32,
    pool: Mutex<Vec<Connection>>,
    /// The local API's low-priority query threads, started on first use
    /// (see `query_pool.rs`).
    queries: OnceLock<Result<QueryPool, String>>,
    /// The inbox in memory (`inbox/mirror.rs`): readings the journal holds
    /// and `readings` does not have yet.
    mirror: SharedMirror,
    /// Another process owns the store: the mirror is read again from the
    /// journal before each statistics read.
    external: bool,
}

/// A queued reading as the uplink needs it: the JSON of values and metadata
/// is passed through as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedReading {
    pub seq: i64,
    pub data_source_id: String,
    pub timestamp_ms: i64,
    pub origin: Option<Origin>,
    /// A JSON object.
    pub values_json: String,
    /// A JSON object, or `None` when the reading has no metadata.
    pub metadata_json: Option<String>,
}

impl QueuedReading {
    /// Bytes of JSON the reading carries (values and metadata).
    pub fn json_len(&self) -> usize {
        self.values_json.len() + self.metadata_json.as_ref().map_or(0, String::len)
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BucketStats {
    pub bucket_id: String,
    pub accepted: i64,
    pub delivered: i64,
    pub dead_lettered: i64,
    /// Dead letters removed to keep the store inside `max_size` (still
    /// counted in `dead_lettered`; no longer listed).
    pub dead_letters_evicted: i64,
    pub dropped: i64,
    /// `reason → count` for dropped readings.
    pub dropped_by_reason: BTreeMap<String, i64>,
    /// Rows above the delivery cursor, counted (not derived).
    pub queued: i64,
    /// Bytes of the queued readings as the fair shares count them (the
    /// ledger's `queued_bytes`).
    pub queued_bytes: i64,
    /// Timestamp of the oldest queued reading (Unix ms).
    pub oldest_queued_ms: Option<i64>,
    pub delivered_seq: i64,
    /// Queued readings held until the system clock is synchronised (part
    /// of `queued`; `clock_hold.rs`).
    pub held_for_clock: i64,
}

impl BucketStats {
    /// `accepted = delivered + queued + dead_lettered + dropped`.
    pub fn ledger_balances(&self) -> bool {
        self.accepted == self.delivered + self.queued + self.dead_lettered + self.dropped
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StoreStats {
    pub buckets: Vec<BucketStats>,
    /// `reason → count` of rejected inputs since the database was created.
    pub rejected_by_reason: BTreeMap<String, i64>,
    pub rejects_kept: i64,
    /// Kept rejects removed to keep the store inside `max_size` (they stay
    /// counted by reason).
    pub rejects_evicted: i64,
    /// Rejects moved into the queue by `rejects replay` (taken out of
    /// `rejected_by_reason` and counted as accepted readings).
    pub rejects_replayed: i64,
    pub dead_letters_kept: i64,
    /// Size of the database file and of its WAL.
    pub file_bytes: u64,
    pub wal_bytes: u64,
    /// Bytes in pages in use (what `store.max_size` bounds).
    pub used_bytes: u64,
    /// Bytes the gateway writes to its disk per day (`/proc/self/io`, over
    /// up to the last day), as its writer last stored it; `None` until it
    /// has run a few minutes.
    pub written_bytes_per_day: Option<u64>,
}

impl StoreStats {
    pub fn bucket(&self, bucket_id: &str) -> Option<&BucketStats> {
        self.buckets.iter().find(|b| b.bucket_id == bucket_id)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetterRow {
    pub id: i64,
    pub seq: i64,
    pub bucket_id: String,
    pub data_source_id: String,
    pub timestamp_ms: i64,
    pub values_json: String,
    pub status: u16,
    pub message: String,
    pub details: Option<String>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RejectRow {
    pub id: i64,
    pub at_ms: i64,
    pub origin: String,
    pub reason: String,
    pub detail: String,
    pub raw: Vec<u8>,
}

impl Reader {
    pub fn new(path: PathBuf, store_id: u32) -> Reader {
        Reader::with_mirror(path, store_id, SharedMirror::default())
    }

    pub(crate) fn with_mirror(path: PathBuf, store_id: u32, mirror: SharedMirror) -> Reader {
        Reader::build(path, store_id, mirror, false)
    }

    fn build(path: PathBuf, store_id: u32, mirror: SharedMirror, external: bool) -> Reader {
        Reader {
            inner: Arc::new(Inner {
                path,
                store_id,
                pool: Mutex::new(Vec::new()),
                queries: OnceLock::new(),
                mirror,
                external,
            }),
        }
    }

    /// For a reader of another process's store: read the journal again.
    fn refresh_external(&self) -> Result<(), StoreError> {
        if !self.inner.external {
            return Ok(());
        }
        let path = self.inner.path.clone();
        let mut fresh = self.with_blocking(move |c| super::inbox::snapshot::load(c, &path))?;
        let mut m = self.inner.mirror.write().unwrap_or_else(|p| p.into_inner());
        // Copies of the old one are stale.
        fresh.generation = m.generation + 1;
        *m = fresh;
        Ok(())
    }

    /// The inbox in memory, shared with the writer.
    #[allow(dead_code)] // read by claims and queries (issue 15, in progress)
    pub(crate) fn mirror(&self) -> &SharedMirror {
        &self.inner.mirror
    }

    /// A reader for a database some other process writes (`queue stats`).
    pub fn open_existing(path: &Path) -> Result<Reader, StoreError> {
        let conn = open_read(path)?;
        let store_id = super::open::store_id(&conn)?;
        // What the daemon's inbox holds, from its journal.
        let inbox = super::inbox::snapshot::load(&conn, path)?;
        let mirror = Arc::new(std::sync::RwLock::new(inbox));
        let r = Reader::build(path.to_owned(), store_id, mirror, true);
        r.inner.pool.lock().expect("pool lock").push(conn);
        Ok(r)
    }

    pub fn store_id(&self) -> u32 {
        self.inner.store_id
    }

    /// Run `f` on a pooled connection on the blocking pool.
    pub async fn with<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, rusqlite::Error> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.with_blocking(f))
            .await
            .map_err(|e| StoreError::Fatal(format!("a store read panicked: {e}")))?
    }

    /// Start the local API's query threads with `threads` threads (the
    /// API calls this with `api.max_parallel_queries`); a no-op once they
    /// run (the first size stays until restart). Without it they start
    /// with 2 on first use.
    pub fn start_query_threads(&self, threads: usize) {
        self.inner
            .queries
            .get_or_init(|| QueryPool::new(threads).map_err(|e| e.to_string()));
    }

    /// Run `f` on one of the local API's low-priority query threads (see
    /// `query_pool.rs`). For the API's read paths only: the uplink and the
    /// other subsystems use [`Reader::with`].
    pub async fn on_query_thread<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Reader) -> Result<R, StoreError> + Send + 'static,
    {
        self.start_query_threads(DEFAULT_QUERY_THREADS);
        let pool = match self.inner.queries.get() {
            Some(Ok(pool)) => pool,
            Some(Err(e)) => return Err(StoreError::Fatal(e.clone())),
            None => unreachable!("started above"),
        };
        let this = self.clone();
        pool.run(move || f(&this)).await
    }

    /// Like [`Reader::with`], on a query thread ([`Reader::on_query_thread`]).
    pub async fn query<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, rusqlite::Error> + Send + 'static,
    {
        self.on_query_thread(move |r| r.with_blocking(f)).await
    }

    /// Run `f` on a pooled connection, blocking the caller.
    pub fn with_blocking<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, rusqlite::Error>,
    ) -> Result<R, StoreError> {
        let pooled = self.inner.pool.lock().expect("pool lock").pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_read(&self.inner.path)?,
        };
        let result = f(&conn).map_err(StoreError::from);
        let mut pool = self.inner.pool.lock().expect("pool lock");
        if pool.len() < POOL_MAX_IDLE {
            pool.push(conn);
        }
        result
    }

    /// The bucket's delivery cursor (0 when it has no readings yet).
    pub async fn cursor(&self, bucket_id: &str) -> Result<i64, StoreError> {
        let bucket_id = bucket_id.to_owned();
        let mirror = self.inner.mirror.clone();
        self.with(move |c| {
            let (tx, marks) = consistent(c, &mirror, |m| {
                m.buckets
                    .iter()
                    .map(|(k, b)| (*k, b.cursor))
                    .collect::<BTreeMap<i64, i64>>()
            })?;
            let row: Option<(i64, i64)> = tx
                .prepare_cached("SELECT id, delivered_seq FROM buckets WHERE bucket_id = ?1")?
                .query_row([bucket_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(row.map_or(0, |(k, cursor)| {
                cursor.max(marks.get(&k).copied().unwrap_or(0))
            }))
        })
        .await
    }

    /// Up to `max` readings of the bucket after `after_seq`, oldest first.
    pub async fn claim(
        &self,
        bucket_id: &str,
        after_seq: i64,
        max: usize,
    ) -> Result<Vec<QueuedReading>, StoreError> {
        self.claim_bytes(bucket_id, after_seq, max, usize::MAX)
            .await
    }

    /// Like [`Reader::claim`], and stops once the readings taken hold
    /// `max_bytes` of JSON (the one that crosses the bound is included, so
    /// a claim always makes progress): memory follows bytes, not counts.
    pub async fn claim_bytes(
        &self,
        bucket_id: &str,
        after_seq: i64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<QueuedReading>, StoreError> {
        let bucket_id = bucket_id.to_owned();
        let mirror = self.inner.mirror.clone();
        self.with(move |c| claim(c, &mirror, &bucket_id, after_seq, max, max_bytes))
            .await
    }

    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.refresh_external())
            .await
            .map_err(|e| StoreError::Fatal(format!("a store read panicked: {e}")))??;
        let path = self.inner.path.clone();
        let mirror = self.inner.mirror.clone();
        self.with(move |c| stats(c, &mirror, &path)).await
    }

    pub fn stats_blocking(&self) -> Result<StoreStats, StoreError> {
        self.refresh_external()?;
        let path = self.inner.path.clone();
        let mirror = self.inner.mirror.clone();
        self.with_blocking(move |c| stats(c, &mirror, &path))
    }

    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.with(move |c| dead_letters(c, limit)).await
    }

    pub fn dead_letters_blocking(&self, limit: usize) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.with_blocking(move |c| dead_letters(c, limit))
    }

    /// The newest kept rejects, newest first.
    pub async fn rejects(&self, limit: usize) -> Result<Vec<RejectRow>, StoreError> {
        self.with(move |c| rejects(c, limit)).await
    }

    pub fn rejects_blocking(&self, limit: usize) -> Result<Vec<RejectRow>, StoreError> {
        self.with_blocking(move |c| rejects(c, limit))
    }

    /// Readings held for a synchronised clock, all buckets: the clock's
    /// watch asks it every 10 s while the clock is unsynchronised, so it
    /// reads the small `clock_hold` table only (a whole [`Reader::stats`]
    /// counted a 10M-reading queue through its index: 40,000 page reads
    /// each time on an idle gateway).
    pub async fn held_for_clock(&self) -> Result<i64, StoreError> {
        self.with(|c| c.query_row("SELECT count(*) FROM clock_hold", [], |r| r.get(0)))
            .await
    }

    /// Readings queued in all buckets, from the ledger (cheap: no row count).
    pub async fn queued_total(&self) -> Result<i64, StoreError> {
        let mirror = self.inner.mirror.clone();
        self.with(move |c| {
            let (tx, inbox) = consistent(c, &mirror, |m| {
                m.buckets
                    .values()
                    .map(|b| b.rows.len() as i64 - b.delivered)
                    .sum::<i64>()
            })?;
            let ledger: i64 = tx.query_row(
                "SELECT coalesce(sum(CASE name WHEN 'accepted' THEN value
                     WHEN 'delivered' THEN -value WHEN 'dead_lettered' THEN -value
                     WHEN 'dropped' THEN -value ELSE 0 END), 0)
                 FROM ledger WHERE bucket > 0",
                [],
                |r| r.get(0),
            )?;
            Ok(ledger + inbox)
        })
        .await
    }

    /// Global counters whose names start with `prefix` (see
    /// `StoreHandle::add_counters`).
    pub fn counters_blocking(&self, prefix: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        let pattern = format!("{}%", prefix.replace('%', ""));
        let mirror = self.inner.mirror.clone();
        let prefix = prefix.to_owned();
        self.with_blocking(move |c| {
            let (tx, inbox) = consistent(c, &mirror, |m| {
                m.counters
                    .iter()
                    .filter(|((b, name), _)| *b == 0 && name.starts_with(&prefix))
                    .map(|((_, name), v)| (name.clone(), *v))
                    .collect::<Vec<_>>()
            })?;
            let mut out: BTreeMap<String, i64> = tx
                .prepare("SELECT name, value FROM ledger WHERE bucket = 0 AND name LIKE ?1")?
                .query_map([pattern], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (name, v) in inbox {
                *out.entry(name).or_default() += v;
            }
            Ok(out)
        })
    }

    /// State values whose keys start with `prefix` (see `StoreHandle::set_state`).
    pub fn state_blocking(&self, prefix: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let pattern = format!("{}%", prefix.replace('%', ""));
        let mirror = self.inner.mirror.clone();
        let prefix = prefix.to_owned();
        self.with_blocking(move |c| {
            let (tx, inbox) = consistent(c, &mirror, |m| {
                m.state
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            })?;
            let mut out: BTreeMap<String, String> = tx
                .prepare("SELECT key, value FROM meta WHERE key LIKE ?1")?
                .query_map([pattern], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            out.extend(inbox);
            Ok(out)
        })
    }

    /// Every alert rule, oldest first.
    pub async fn alert_rules(&self) -> Result<Vec<super::AlertRuleRow>, StoreError> {
        self.with(super::alerts::rules).await
    }

    /// Pending alert notifications due at `now` (Unix ms), oldest first.
    pub async fn due_alert_deliveries(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<super::DeliveryRow>, StoreError> {
        self.with(move |c| super::alerts::due(c, now, limit)).await
    }

    /// When the next pending alert notification is due, if any.
    pub async fn next_alert_delivery(&self) -> Result<Option<i64>, StoreError> {
        self.with(super::alerts::next_due).await
    }

    /// The newest failed alert notifications, newest first.
    pub fn failed_alert_deliveries_blocking(
        &self,
        limit: usize,
    ) -> Result<Vec<super::DeliveryRow>, StoreError> {
        self.with_blocking(move |c| super::alerts::failed(c, limit))
    }

    pub async fn alert_stats(&self) -> Result<super::AlertStats, StoreError> {
        self.with(super::alerts::stats).await
    }

    pub fn alert_stats_blocking(&self) -> Result<super::AlertStats, StoreError> {
        self.with_blocking(super::alerts::stats)
    }

    /// The newest reading time of a data source in the store.
    pub async fn last_reading_ms(
        &self,
        bucket_id: &str,
        source_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let (b, s) = (bucket_id.to_owned(), source_id.to_owned());
        let mirror = self.mirror().clone();
        self.with(move |c| super::alerts::last_reading(c, &mirror, &b, &s))
            .await
    }

    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        self.with(|c| {
            c.prepare(
                "SELECT id, bucket_id, kind, name, hash, prefix, created_at, last_used_at
                 FROM api_keys ORDER BY created_at, id",
            )?
            .query_map([], |r| {
                let hash: Vec<u8> = r.get(4)?;
                let mut h = [0u8; 32];
                if hash.len() == 32 {
                    h.copy_from_slice(&hash);
                }
                Ok(ApiKeyRow {
                    id: r.get(0)?,
                    bucket_id: r.get(1)?,
                    kind: r.get(2)?,
                    name: r.get(3)?,
                    hash: h,
                    prefix: r.get(5)?,
                    created_at: r.get(6)?,
                    last_used_at: r.get(7)?,
                })
            })?
            .collect()
        })
        .await
    }
}

/// Begin a read transaction on `conn` whose snapshot agrees with the
/// inbox's mirror, and take what `copy` wants of the mirror: the snapshot
/// is fixed (first read) while the mirror's read lock is held, and the
/// writer commits a move and clears the mirror under one hold of its write
/// lock, so every reading is seen once, in `readings` or in the copy. The
/// lock is released before the caller's statements run (the writer never
/// waits for a query). End the transaction by dropping it.
pub(crate) fn consistent<'c, T>(
    conn: &'c Connection,
    mirror: &SharedMirror,
    copy: impl FnOnce(&Mirror) -> T,
) -> Result<(rusqlite::Transaction<'c>, T), rusqlite::Error> {
    let guard = mirror.read().unwrap_or_else(|p| p.into_inner());
    let tx = conn.unchecked_transaction()?;
    tx.query_row("SELECT count(*) FROM meta", [], |_| Ok(()))?;
    let copied = copy(&guard);
    drop(guard);
    Ok((tx, copied))
}

fn open_read(path: &Path) -> Result<Connection, StoreError> {
    // Read-write without create, then query_only: a plain read-only
    // connection cannot open a WAL database whose -shm file is gone.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch("PRAGMA query_only=1;")?;
    Ok(conn)
}

fn claim(
    c: &Connection,
    mirror: &SharedMirror,
    bucket_id: &str,
    after_seq: i64,
    max: usize,
    max_bytes: usize,
) -> Result<Vec<QueuedReading>, rusqlite::Error> {
    let Some(bucket): Option<i64> = c
        .prepare_cached("SELECT id FROM buckets WHERE bucket_id = ?1")?
        .query_row([bucket_id], |r| r.get(0))
        .optional()?
    else {
        return Ok(Vec::new());
    };
    // The inbox's rows of the bucket, at most a claim's worth.
    let (tx, inbox) = consistent(c, mirror, |m| {
        let mut bytes = 0usize;
        let mut out = Vec::new();
        if let Some(b) = m.bucket(bucket) {
            for r in b.after(after_seq).iter().take(max) {
                bytes += r.vals.len() + r.meta.as_ref().map_or(0, String::len);
                out.push(QueuedReading {
                    seq: r.seq,
                    data_source_id: r.source_id.to_string(),
                    timestamp_ms: r.ts,
                    origin: Origin::from_code(r.origin),
                    values_json: r.vals.clone(),
                    metadata_json: r.meta.clone(),
                });
                if bytes >= max_bytes {
                    break;
                }
            }
        }
        out
    })?;
    // Held for a trusted clock (clock_hold.rs): stop before the first.
    let held: i64 = tx
        .prepare_cached(
            "SELECT coalesce(min(seq), 9223372036854775807) FROM clock_hold WHERE bucket = ?1",
        )?
        .query_row([bucket], |r| r.get(0))?;
    let mut st = tx.prepare_cached(
        "SELECT r.seq, s.source_id, r.ts, r.origin, r.vals, r.meta
         FROM readings r JOIN sources s ON s.id = r.source
         WHERE r.bucket = ?1 AND r.seq > ?2 AND r.seq < ?4 AND r.queued = 1
         ORDER BY r.seq LIMIT ?3",
    )?;
    let rows = st.query_map(params![bucket, after_seq, max as i64, held], |r| {
        Ok(QueuedReading {
            seq: r.get(0)?,
            data_source_id: r.get(1)?,
            timestamp_ms: r.get(2)?,
            origin: Origin::from_code(r.get(3)?),
            values_json: r.get(4)?,
            metadata_json: r.get(5)?,
        })
    })?;
    // Inbox seqs are above the table's, but a command run beside the
    // daemon writes above the inbox's reserved range: merge by seq, so the
    // cursor never passes a reading not yet sent. Rows are read one at a
    // time: memory follows the byte bound, not the count.
    let mut inbox = inbox.into_iter().filter(|r| r.seq < held).peekable();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut take = |row: QueuedReading, out: &mut Vec<QueuedReading>| {
        bytes += row.json_len();
        out.push(row);
        out.len() >= max || bytes >= max_bytes
    };
    for row in rows {
        let row = row?;
        while let Some(m) = inbox.next_if(|m| m.seq < row.seq) {
            if take(m, &mut out) {
                return Ok(out);
            }
        }
        if take(row, &mut out) {
            return Ok(out);
        }
    }
    for m in inbox {
        if take(m, &mut out) {
            break;
        }
    }
    Ok(out)
}

fn stats(
    c: &Connection,
    mirror: &SharedMirror,
    path: &Path,
) -> Result<StoreStats, rusqlite::Error> {
    let mut out = StoreStats::default();
    let (tx, inbox) = consistent(c, mirror, InboxSummary::of)?;
    let c: &Connection = &tx;
    let buckets: Vec<(i64, String, i64)> = c
        .prepare("SELECT id, bucket_id, delivered_seq FROM buckets ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut ledger = c.prepare("SELECT name, value FROM ledger WHERE bucket = ?1")?;
    for (key, bucket_id, cursor) in buckets {
        let mut b = BucketStats {
            bucket_id,
            delivered_seq: cursor,
            ..BucketStats::default()
        };
        let rows =
            ledger.query_map([key], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (name, value) = row?;
            match name.as_str() {
                "accepted" => b.accepted = value,
                "delivered" => b.delivered = value,
                "dead_lettered" => b.dead_lettered = value,
                "dead_letter_evicted" => b.dead_letters_evicted = value,
                "dropped" => b.dropped = value,
                "queued_bytes" => b.queued_bytes = value,
                other => {
                    if let Some(reason) = other.strip_prefix("dropped:") {
                        b.dropped_by_reason.insert(reason.to_owned(), value);
                    }
                }
            }
        }
        // With the inbox: its rows are accepted, its marks delivered.
        let mine = inbox.buckets.get(&key).cloned().unwrap_or_default();
        let cursor = cursor.max(mine.cursor);
        b.delivered_seq = cursor;
        b.accepted += mine.rows.len() as i64;
        b.delivered += mine.delivered;
        b.queued_bytes += mine.bytes - mine.delivered_bytes;
        let above: Vec<&(i64, i64)> = mine.rows.iter().filter(|(seq, _)| *seq > cursor).collect();
        b.queued = c
            .prepare_cached(
                "SELECT count(*) FROM readings WHERE bucket = ?1 AND seq > ?2 AND queued = 1",
            )?
            .query_row(params![key, cursor], |r| r.get::<_, i64>(0))?
            + above.len() as i64;
        b.oldest_queued_ms = c
            .prepare_cached(
                "SELECT ts FROM readings WHERE bucket = ?1 AND seq > ?2 AND queued = 1
                 ORDER BY seq LIMIT 1",
            )?
            .query_row(params![key, cursor], |r| r.get(0))
            .optional()?
            .or(above.first().map(|(_, ts)| *ts));
        b.held_for_clock = super::clock_hold::count(c, key);
        out.buckets.push(b);
    }
    let rows = ledger.query_map([0], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (name, value) = row?;
        let value = value + inbox.counters.get(&name).copied().unwrap_or(0);
        if let Some(reason) = name.strip_prefix("rejected:") {
            out.rejected_by_reason.insert(reason.to_owned(), value);
        } else if name == "rejects_evicted" {
            out.rejects_evicted = value;
        } else if name == "rejects_replayed" {
            out.rejects_replayed = value;
        }
    }
    out.rejects_kept = c.query_row("SELECT count(*) FROM rejects", [], |r| r.get(0))?;
    out.dead_letters_kept = c.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
    let page_size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    out.used_bytes = super::writer::used_bytes(c, page_size as u64)?;
    out.written_bytes_per_day = c
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [super::wear::STATE_KEY],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok())
        .or(inbox.written_per_day);
    if inbox.written_per_day.is_some() {
        out.written_bytes_per_day = inbox.written_per_day;
    }
    out.file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    out.wal_bytes = std::fs::metadata(format!("{}-wal", path.display()))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(out)
}

/// What `stats` needs of the inbox, copied under its lock.
#[derive(Default)]
struct InboxSummary {
    buckets: BTreeMap<i64, BucketSummary>,
    /// Global counters (ledger bucket 0).
    counters: BTreeMap<String, i64>,
    /// The last bytes-written-per-day figure, if newer than the table's.
    written_per_day: Option<u64>,
}

#[derive(Default, Clone)]
struct BucketSummary {
    /// (seq, ts) of every row.
    rows: Vec<(i64, i64)>,
    cursor: i64,
    delivered: i64,
    delivered_bytes: i64,
    bytes: i64,
}

impl InboxSummary {
    fn of(m: &Mirror) -> InboxSummary {
        InboxSummary {
            buckets: m
                .buckets
                .iter()
                .map(|(k, b)| {
                    let s = BucketSummary {
                        rows: b.rows.iter().map(|r| (r.seq, r.ts)).collect(),
                        cursor: b.cursor,
                        delivered: b.delivered,
                        delivered_bytes: b.delivered_bytes,
                        bytes: b.bytes,
                    };
                    (*k, s)
                })
                .collect(),
            counters: m
                .counters
                .iter()
                .filter(|((b, _), _)| *b == 0)
                .map(|((_, n), v)| (n.clone(), *v))
                .collect(),
            written_per_day: m
                .state
                .get(super::wear::STATE_KEY)
                .and_then(|v| v.parse().ok()),
        }
    }
}

fn rejects(c: &Connection, limit: usize) -> Result<Vec<RejectRow>, rusqlite::Error> {
    c.prepare("SELECT id, at, origin, reason, detail, raw FROM rejects ORDER BY id DESC LIMIT ?1")?
        .query_map([limit as i64], |r| {
            Ok(RejectRow {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                origin: r.get(2)?,
                reason: r.get(3)?,
                detail: r.get(4)?,
                raw: r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
            })
        })?
        .collect()
}

fn dead_letters(c: &Connection, limit: usize) -> Result<Vec<DeadLetterRow>, rusqlite::Error> {
    c.prepare(
        "SELECT d.id, d.seq, b.bucket_id, s.source_id, d.ts, d.vals, d.status, d.message,
                d.details, d.at
         FROM dead_letters d JOIN buckets b ON b.id = d.bucket JOIN sources s ON s.id = d.source
         ORDER BY d.id LIMIT ?1",
    )?
    .query_map([limit as i64], |r| {
        Ok(DeadLetterRow {
            id: r.get(0)?,
            seq: r.get(1)?,
            bucket_id: r.get(2)?,
            data_source_id: r.get(3)?,
            timestamp_ms: r.get(4)?,
            values_json: r.get(5)?,
            status: r.get(6)?,
            message: r.get(7)?,
            details: r.get(8)?,
            at_ms: r.get(9)?,
        })
    })?
    .collect()
}
