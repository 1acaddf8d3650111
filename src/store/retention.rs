//! Retention: delivered history older than `store.retention` is pruned in
//! passes that never stall a commit. A pass visits the data sources in id
//! order and finds each one's due rows through the series key
//! `(bucket, source, ts < cutoff)`; it runs in slices of at most
//! [`PRUNE_SLICE`] or [`PRUNE_CHUNK`] rows, each its own transaction, and
//! the writer's loop serves waiting commands between two slices. A stop
//! abandons a pass (the next one starts from the beginning).

use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tracing::{debug, error};

use super::writer::{classify, Writer};
use super::StoreError;
use crate::reading::now_ms;

/// How often a retention pass starts.
pub(super) const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);
/// The first pass after start: soon, so a gateway that was off for a while
/// sheds its expired history early, but not in the middle of start-up.
pub(super) const FIRST_MAINTENANCE: Duration = Duration::from_secs(10);
/// Rows deleted per statement when pruning or making room: small enough to
/// keep a group's latency low, large enough to free whole pages.
pub(super) const PRUNE_CHUNK: i64 = 2000;
/// The longest a pruning slice holds the writer. A pass is cut into slices
/// of its own transactions, and commands waiting in the queue run between
/// two slices, so a commit waits for at most one slice.
const PRUNE_SLICE: Duration = Duration::from_millis(25);
/// Data sources read per step of a slice.
const PRUNE_SOURCES_PER_STEP: i64 = 64;

/// A retention pass, resumable between slices: data sources are visited in
/// id order, each through the series key `(bucket, source, ts)`, so a pass
/// costs one index seek per data source plus the rows that are due.
#[derive(Debug)]
pub(super) struct PrunePass {
    /// Readings older than this (Unix ms) and delivered are due.
    cutoff: i64,
    /// Every data source with an id up to this one is done.
    after: i64,
    rows: usize,
    slices: usize,
    started: Instant,
}

impl Writer {
    /// Start a pass with a cutoff of now minus `retention`.
    pub(super) fn start_pass(&mut self) {
        self.pass = Some(PrunePass {
            cutoff: now_ms() - self.config.retention.as_millis() as i64,
            after: 0,
            rows: 0,
            slices: 0,
            started: Instant::now(),
        });
    }

    /// One slice of the retention pass, in its own transaction, for at most
    /// [`PRUNE_SLICE`] or [`PRUNE_CHUNK`] rows. True when the pass ended
    /// (done, or given up on a full disk), then a passive checkpoint.
    pub(super) fn prune_slice(&mut self) -> Result<bool, StoreError> {
        if self.moving() {
            // The move's transaction is open (`inbox/drain.rs`); it runs
            // first and the pass goes on after its commit.
            return Ok(false);
        }
        let Some(mut pass) = self.pass.take() else {
            return Ok(true);
        };
        self.busy.enter();
        let result = (|| {
            // IMMEDIATE, like the writer's groups: a command writing
            // beside the daemon cannot slip in between a read and a write.
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let done = prune_slice(&tx, &mut pass)?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(done)
        })();
        self.busy.leave();
        pass.slices += 1;
        let done = match result {
            Ok(done) => done,
            Err(e) => match classify(e) {
                // Pruning frees space but needs a little to do so; the
                // next pass tries again.
                StoreError::DiskFull => true,
                e => {
                    error!(error = %e, "storage failed while pruning history; stopping");
                    return Err(e);
                }
            },
        };
        if !done {
            self.pass = Some(pass);
            return Ok(false);
        }
        if pass.rows > 0 {
            debug!(
                rows = pass.rows,
                slices = pass.slices,
                took = ?pass.started.elapsed(),
                "pruned delivered history past retention"
            );
        }
        metrics::counter!("dakkio_store_pruned_rows_total").increment(pass.rows as u64);
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            debug!(error = %e, "passive checkpoint failed");
        }
        let used = self.used_bytes(&self.conn).unwrap_or(0);
        self.status.send_modify(|s| s.used_bytes = used);
        for reply in self.pass_waiters.drain(..) {
            let _ = reply.send(Ok(()));
        }
        Ok(true)
    }
}

/// The time of one data source's `?4 + 1`-th oldest row before `?3`:
/// where a chunk of its due rows ends. Through the series key.
const CHUNK_END_SQL: &str = "SELECT ts FROM readings
     WHERE bucket = ?1 AND source = ?2 AND ts < ?3 ORDER BY ts LIMIT 1 OFFSET ?4";

/// The delivered rows of one data source before a time: a range of the
/// series key (`bucket, source, ts`), never the queue index. The unary `+`
/// on `seq` keeps SQLite from planning the search through `readings_queue
/// (bucket, seq)` (which would visit the bucket's whole queue for every
/// data source); since migration 4 that index holds undelivered rows only,
/// and delivered history is found and deleted through the primary key
/// alone. (Until then each row was deleted by its queue key, by name:
/// SQLite 3.54 planned a `DELETE … WHERE seq IN (…)` as a walk of the
/// bucket's whole primary key with a bloom filter of the list, 44 ms per
/// data source at 500,000 rows.)
const PRUNE_BEFORE_SQL: &str = "DELETE FROM readings
     WHERE bucket = ?1 AND source = ?2 AND ts < ?3 AND +seq <= ?4";

/// Delete the delivered rows of one data source older than `cutoff`, about
/// `limit` of them (the rows of its `limit`-th oldest row's millisecond
/// all go together); `i64::MAX` as `cutoff` takes its oldest. The bucket's
/// `kept` counter follows, in the same transaction.
pub(super) fn prune_source(
    conn: &Connection,
    series: (i64, i64, i64),
    cutoff: i64,
    limit: i64,
) -> Result<usize, rusqlite::Error> {
    let n = delete_due(conn, series, cutoff, limit)?;
    super::apply::bump(conn, series.0, super::budget::KEPT, -(n as i64))?;
    Ok(n)
}

/// The deletes of [`prune_source`].
fn delete_due(
    conn: &Connection,
    (bucket, source, cursor): (i64, i64, i64),
    cutoff: i64,
    limit: i64,
) -> Result<usize, rusqlite::Error> {
    let end: Option<i64> = conn
        .prepare_cached(CHUNK_END_SQL)?
        .query_row(params![bucket, source, cutoff, limit.max(1) - 1], |r| {
            r.get(0)
        })
        .optional()?;
    let mut st = conn.prepare_cached(PRUNE_BEFORE_SQL)?;
    match end {
        // `ts <= end`: the chunk, whatever its last millisecond holds.
        Some(end) => {
            let n = st.execute(params![bucket, source, end.saturating_add(1), cursor])?;
            if n > 0 {
                return Ok(n);
            }
            // The chunk was all undelivered (a backlog older than the
            // cutoff): the delivered rows after it, at once.
            st.execute(params![bucket, source, cutoff, cursor])
        }
        None => st.execute(params![bucket, source, cutoff, cursor]),
    }
}

/// The data sources after `after`, in id order, with their bucket's cursor.
fn sources_after(conn: &Connection, after: i64) -> Result<Vec<(i64, i64, i64)>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT s.bucket, s.id, b.delivered_seq FROM sources s JOIN buckets b ON b.id = s.bucket
         WHERE s.id > ?1 ORDER BY s.id LIMIT ?2",
    )?
    .query_map(params![after, PRUNE_SOURCES_PER_STEP], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?
    .collect()
}

/// One slice of a pass: data sources from `pass.after` on, until the slice
/// deleted [`PRUNE_CHUNK`] rows or ran for [`PRUNE_SLICE`]. True when every
/// data source has been visited.
fn prune_slice(conn: &Connection, pass: &mut PrunePass) -> Result<bool, rusqlite::Error> {
    let deadline = Instant::now() + PRUNE_SLICE;
    let mut deleted = 0usize;
    loop {
        let series = sources_after(conn, pass.after)?;
        if series.is_empty() {
            return Ok(true);
        }
        for s in series {
            let budget = PRUNE_CHUNK - deleted as i64;
            let n = prune_source(conn, s, pass.cutoff, budget)?;
            deleted += n;
            pass.rows += n;
            if n as i64 >= budget {
                // Possibly more due here: this source again next slice.
                return Ok(false);
            }
            pass.after = s.1;
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema;

    /// A store with `sources` data sources in one bucket, `per_source`
    /// delivered readings each at `ts`, and `queued` undelivered old ones on
    /// source 1; rows inserted directly (months of history in a second).
    fn history(sources: i64, per_source: i64, ts: i64, queued: i64) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::migrate(&mut conn).unwrap();
        let delivered = sources * per_source;
        conn.execute(
            "INSERT INTO buckets (id, bucket_id, delivered_seq) VALUES (1, 'b', ?1)",
            [delivered],
        )
        .unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut src = tx
                .prepare("INSERT INTO sources (id, bucket, source_id) VALUES (?1, 1, ?2)")
                .unwrap();
            for id in 1..=sources {
                src.execute(params![id, format!("s{id}")]).unwrap();
            }
            // Delivered rows as a move inserts them: out of the queue index.
            let mut row = tx
                .prepare(
                    "INSERT INTO readings (bucket, source, ts, seq, origin, vals, queued)
                     VALUES (1, ?1, ?2, ?3, 0, '{\"t\":1}', ?4)",
                )
                .unwrap();
            for seq in 1..=delivered + queued {
                let source = if seq > delivered {
                    1
                } else {
                    (seq - 1) % sources + 1
                };
                let queued = (seq > delivered).then_some(1);
                row.execute(params![source, ts + seq, seq, queued]).unwrap();
            }
        }
        tx.commit().unwrap();
        conn
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
            .unwrap()
    }

    /// The lines of SQLite's plan for a prune statement `sql` (four
    /// parameters).
    fn plan_of(conn: &Connection, sql: &str) -> Vec<String> {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params![1, 1, 5_000, 10_000], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The regression behind multi-second stalls: planned through
    /// `readings_queue (bucket, seq)`, each data source's prune walked the
    /// bucket's whole delivered history. Both statements of a prune go
    /// through the series key, and nothing of it through the queue index.
    #[test]
    fn pruning_finds_due_rows_through_the_series_key() {
        // No ANALYZE, as in the field: the gateway never runs it.
        let conn = history(50, 200, 1_000, 10);
        for sql in [CHUNK_END_SQL, PRUNE_BEFORE_SQL] {
            let plan = plan_of(&conn, sql);
            assert!(
                plan.iter()
                    .any(|l| l.contains("PRIMARY KEY (bucket=? AND source=? AND ts<?)")),
                "{sql}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|l| l.contains("readings_queue")),
                "{sql}: {plan:?}"
            );
        }
    }

    /// Since migration 4 the queue index holds the undelivered rows only:
    /// a prune of delivered history touches none of its pages.
    #[test]
    fn the_queue_index_holds_only_undelivered_rows() {
        let conn = history(3, 1500, 1_000, 7);
        let entries: i64 = conn
            .query_row(
                "SELECT count(*) FROM readings INDEXED BY readings_queue
                 WHERE bucket = 1 AND seq > 0 AND queued = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(entries, 7);
    }

    /// A pass resumes where its last slice stopped: no data source is
    /// skipped, none is pruned past the cursor, and a slice never deletes
    /// more than one chunk.
    #[test]
    fn a_pass_in_slices_prunes_exactly_the_due_rows() {
        // 3 sources × 1500 delivered rows (due), 7 queued rows (old, kept).
        let mut conn = history(3, 1500, 1_000, 7);
        let mut pass = PrunePass {
            cutoff: 1_000_000,
            after: 0,
            rows: 0,
            slices: 0,
            started: Instant::now(),
        };
        let mut slices = 0;
        loop {
            let before = rows(&conn);
            let tx = conn.transaction().unwrap();
            let done = prune_slice(&tx, &mut pass).unwrap();
            tx.commit().unwrap();
            slices += 1;
            assert!(before - rows(&conn) <= PRUNE_CHUNK, "one chunk per slice");
            if done {
                break;
            }
            assert!(slices < 100, "the pass does not end");
        }
        assert!(slices >= 3, "4500 rows in chunks of 2000: {slices} slices");
        assert_eq!(pass.rows, 4500);
        assert_eq!(rows(&conn), 7, "only the undelivered rows are left");
    }

    /// Rows not yet due (newer than the cutoff) stay, on every source.
    #[test]
    fn rows_newer_than_the_cutoff_stay() {
        let mut conn = history(4, 100, 1_000, 0);
        let mut pass = PrunePass {
            cutoff: 1_000 + 201, // seqs 1..=200 are due
            after: 0,
            rows: 0,
            slices: 0,
            started: Instant::now(),
        };
        let tx = conn.transaction().unwrap();
        while !prune_slice(&tx, &mut pass).unwrap() {}
        tx.commit().unwrap();
        assert_eq!(pass.rows, 200);
        assert_eq!(rows(&conn), 200);
        let oldest: i64 = conn
            .query_row("SELECT min(seq) FROM readings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(oldest, 201);
    }
}
