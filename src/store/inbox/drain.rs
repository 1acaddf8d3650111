//! Moving the inbox into `readings`, in slices of one transaction.
//!
//! A move of 50,000 readings is a few hundred milliseconds here and
//! seconds on a Raspberry Pi: the writer would answer no group meanwhile
//! (MQTT acknowledgements and forwarding would stall). So a due move runs
//! as **slices** between groups (and back to back while no command
//! waits), like a retention pass: each slice inserts the next
//! [`SLICE_ROWS`] readings of the inbox in series order (bucket, data
//! source, time), so each series' rows go into the table together.
//!
//! **One transaction.** The first slice opens a transaction that stays
//! open between slices (groups meanwhile only append to the journal; a
//! retention pass waits); the **last** slice (every row of the mirror
//! inserted) also applies the delivery marks, counters and state values,
//! reserves the next range of seqs, records the journal's epoch as moved
//! and commits — then the mirror is emptied under the same hold of its
//! write lock and the journal starts a new epoch. Readers see the rows in
//! the mirror until that commit, and in the table after it, never both.
//! One commit per move writes each page once into the WAL (and once more
//! at its checkpoint): committing every slice rewrote the queue index's
//! pages, spread over the whole move by the series order, at every slice
//! (a move of 20,000 readings in 10 slices wrote 348 B per reading, in one
//! transaction 219 B; issue 15: SD-card wear). A slice's rows are planned
//! once: the rows present when the plan was made, by their index in their
//! bucket's rows (which only grow until the commit).
//!
//! **Crash mid-move.** Nothing of the move is committed: the journal still
//! holds every row, and the replay at the next start moves them all. (It
//! inserts with `OR IGNORE`: a journal whose reset did not complete after
//! a committed move comes back once more; a seq is never reused, so a row
//! already there is the same row, and only inserted rows are counted.)
//!
//! A move that must finish now (a direct write, `maintain`, stop) runs
//! every slice in a row. A slice that fails rolls the whole move back.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::params;

use super::snapshot::MOVED_EPOCH;
use super::write::{io_err, next_beside};
use crate::store::apply::{bump, rows_between, set_meta};
use crate::store::open::next_seq_text;
use crate::store::writer::{classify, Writer};
use crate::store::StoreError;

/// Readings one slice moves: ~25 ms here. Each slice rewrites the tail
/// page of every series it touches, so smaller slices write more.
pub(crate) const SLICE_ROWS: usize = 5_000;

/// A move under way: its transaction is open on the writer's connection.
#[derive(Default)]
pub(crate) struct Moving {
    /// Per bucket, the rows of the mirror planned so far (a prefix).
    planned: HashMap<i64, usize>,
    /// `(bucket, index in its rows)` in series order, from `next` on not
    /// inserted yet.
    plan: Vec<(i64, usize)>,
    next: usize,
    /// Per bucket, readings inserted and their queued bytes.
    accepted: HashMap<i64, (i64, i64)>,
    /// Per bucket, those of them inserted delivered (not queued: the
    /// marks count them, as the queue index does not hold them).
    delivered: HashMap<i64, (i64, i64)>,
    /// Above every seq inserted.
    top: i64,
}

/// What one slice did.
struct Sliced {
    /// Everything was moved and committed (the last slice).
    last: bool,
    rows: usize,
    next_seq: i64,
}

impl Writer {
    /// Whether a move is under way (a slice runs between groups).
    pub(crate) fn draining(&self) -> bool {
        self.inbox.as_ref().is_some_and(|i| i.draining)
    }

    /// One slice of the move under way. A full disk stops the move and
    /// starts a disk-full episode (the journal keeps everything it holds;
    /// until a move succeeds, groups go the direct way and are refused,
    /// so nothing more is acknowledged: the broker keeps it).
    pub(crate) fn drain_slice(&mut self) -> Result<(), StoreError> {
        match self.slice(self.slice_rows(), true) {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() => {
                if let Some(inbox) = self.inbox.as_mut() {
                    inbox.draining = false;
                }
                self.failed(Vec::new(), e)
            }
            Err(e) => Err(e),
        }
    }

    /// Move everything the inbox holds into SQLite now.
    pub(crate) fn move_inbox(&mut self) -> Result<(), StoreError> {
        while self.inbox_pending() {
            self.slice(self.slice_rows(), true)?;
        }
        Ok(())
    }

    /// At stop: move what is left and give the reserved seqs back, so the
    /// next start continues where this one ended.
    pub(crate) fn close_inbox(&mut self) -> Result<(), StoreError> {
        if self.inbox.is_none() {
            return Ok(());
        }
        while self.inbox_pending() {
            self.slice(self.slice_rows(), false)?;
        }
        let ours = self.inbox.as_ref().map_or(0, |i| i.reserved_end);
        let next = self.next_seq;
        self.conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'next_seq' AND value = ?2",
            [next.to_string(), ours.to_string()],
        )?;
        Ok(())
    }

    /// Readings per slice: a tenth of the inbox, at most [`SLICE_ROWS`].
    fn slice_rows(&self) -> usize {
        self.inbox
            .as_ref()
            .map_or(SLICE_ROWS, |i| (i.max_rows / 10).clamp(1, SLICE_ROWS))
    }

    /// One slice of at most `limit` readings; the last one (nothing left
    /// after it) reserves the next seqs when `reserve`.
    fn slice(&mut self, limit: usize, reserve: bool) -> Result<(), StoreError> {
        self.slice_replaying(limit, reserve, false)
    }

    /// The journal's entries at start, whatever an earlier slice moved.
    pub(crate) fn move_replayed(&mut self) -> Result<(), StoreError> {
        while self.inbox_pending() {
            self.slice_replaying(usize::MAX, true, true)?;
        }
        Ok(())
    }

    fn slice_replaying(
        &mut self,
        limit: usize,
        reserve: bool,
        replay: bool,
    ) -> Result<(), StoreError> {
        if !self.inbox_pending() {
            if let Some(inbox) = self.inbox.as_mut() {
                inbox.draining = false;
            }
            return Ok(());
        }
        let started = Instant::now();
        let span = if reserve { self.reserve_span() } else { 0 };
        self.busy.enter();
        let result = self.slice_step(limit, span, replay);
        self.busy.leave();
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                self.abort_move();
                return Err(classify(e));
            }
        };
        if done.last {
            self.next_seq = done.next_seq;
            let inbox = self.inbox.as_mut().expect("pending");
            inbox.reserved_end = if reserve { done.next_seq + span } else { 0 };
            inbox.draining = false;
            inbox.journal.reset().map_err(io_err)?;
            metrics::counter!("dakkio_store_inbox_moves_total").increment(1);
        }
        #[cfg(test)]
        if !done.last {
            if let Some(db) = self.conn.path() {
                hook::after_slice(std::path::Path::new(db));
            }
        }
        self.after_commit();
        tracing::debug!(rows = done.rows, took = ?started.elapsed(), last = done.last, "inbox slice moved into the database");
        Ok(())
    }

    /// Whether a move's transaction is open (nothing else may write).
    pub(crate) fn moving(&self) -> bool {
        self.inbox.as_ref().is_some_and(|i| i.moving.is_some())
    }

    /// Roll the move under way back: the journal and the mirror still hold
    /// everything; the caches may name rows that rolled back.
    fn abort_move(&mut self) {
        if let Some(inbox) = self.inbox.as_mut() {
            inbox.moving = None;
        }
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rolling a failed move back failed");
            }
        }
        self.buckets.clear();
        self.sources.clear();
        self.fair.rolled_back();
    }

    /// Insert the next `limit` rows of the plan (the move's transaction is
    /// opened by the first slice); the last slice applies the rest and
    /// commits, and empties the mirror under the same hold of its lock.
    fn slice_step(
        &mut self,
        limit: usize,
        span: i64,
        replay: bool,
    ) -> Result<Sliced, rusqlite::Error> {
        let mirror = self.mirror.clone();
        if !self.moving() {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.inbox.as_mut().expect("pending").moving = Some(Moving::default());
        }
        // The writer is the only one that changes the mirror: it stays as
        // read here until the commit below.
        let m = mirror.read().unwrap_or_else(|p| p.into_inner());
        let mut mv = self
            .inbox
            .as_mut()
            .and_then(|i| i.moving.take())
            .expect("a move is open");
        if mv.next == mv.plan.len() {
            plan(&mut mv, &m);
        }
        let to = mv.plan.len().min(mv.next.saturating_add(limit));
        {
            let mut st = self.conn.prepare_cached(if replay {
                "INSERT OR IGNORE INTO readings (bucket, source, ts, seq, origin, vals, meta, queued)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            } else {
                "INSERT INTO readings (bucket, source, ts, seq, origin, vals, meta, queued)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            })?;
            for &(b, i) in &mv.plan[mv.next..to] {
                let inbox = &m.buckets[&b];
                let r = &inbox.rows[i];
                // Delivered already (the mirror's marks only grow until
                // the commit applies them): no queue index entry.
                let delivered = r.seq <= inbox.cursor;
                let queued = (!delivered).then_some(1);
                let n = st.execute(params![
                    b, r.source, r.ts, r.seq, r.origin, r.vals, r.meta, queued
                ])?;
                let e = mv.accepted.entry(b).or_default();
                e.0 += n as i64;
                e.1 += n as i64 * r.bytes();
                if delivered {
                    let d = mv.delivered.entry(b).or_default();
                    d.0 += n as i64;
                    d.1 += n as i64 * r.bytes();
                }
                mv.top = mv.top.max(r.seq + 1);
            }
        }
        let rows = to - mv.next;
        mv.next = to;
        let last = mv.next == mv.plan.len()
            && m.buckets
                .iter()
                .all(|(b, i)| mv.planned.get(b).copied().unwrap_or(0) == i.rows.len());
        if !last {
            self.inbox.as_mut().expect("pending").moving = Some(mv);
            return Ok(Sliced {
                last: false,
                rows,
                next_seq: self.next_seq,
            });
        }
        // The last slice: the rest of the move, then the commit.
        let next = {
            let tx = &self.conn;
            for (b, (n, bytes)) in &mv.accepted {
                bump(tx, *b, "accepted", *n)?;
                self.fair.added(*b, *bytes);
            }
            // Marks, once every reading is in the table.
            for (bucket, inbox) in m.buckets.iter().filter(|(_, i)| i.cursor > 0) {
                let (bucket, up_to) = (*bucket, inbox.cursor);
                let cursor: i64 = tx
                    .prepare_cached("SELECT delivered_seq FROM buckets WHERE id = ?1")?
                    .query_row([bucket], |r| r.get(0))?;
                if up_to <= cursor {
                    continue;
                }
                let (queued, queued_bytes) = rows_between(tx, bucket, cursor, up_to)?;
                let (moved, moved_bytes) = mv.delivered.get(&bucket).copied().unwrap_or((0, 0));
                let (present, bytes) = (queued + moved, queued_bytes + moved_bytes);
                *self.fair.queued_bytes.entry(bucket).or_default() -= bytes;
                tx.prepare_cached("UPDATE buckets SET delivered_seq = ?2 WHERE id = ?1")?
                    .execute(params![bucket, up_to])?;
                bump(tx, bucket, "delivered", present)?;
            }
            let ours = self.inbox.as_ref().map(|i| i.reserved_end);
            let epoch = self.inbox.as_ref().map_or(0, |i| i.journal.epoch());
            for ((bucket, name), delta) in &m.counters {
                bump(tx, *bucket, name, *delta)?;
            }
            for (key, value) in &m.state {
                set_meta(tx, key, value)?;
            }
            let meta: i64 = next_seq_text(tx)?.parse().unwrap_or(0);
            let next = next_beside(self.next_seq, ours, meta).max(mv.top);
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [(next + span).to_string()],
            )?;
            set_meta(tx, MOVED_EPOCH, &epoch.to_string())?;
            self.fair.flush(tx)?;
            next
        };
        drop(m);
        let mut m = mirror.write().unwrap_or_else(|p| p.into_inner());
        self.conn.execute_batch("COMMIT")?;
        m.clear();
        Ok(Sliced {
            last: true,
            rows,
            next_seq: next,
        })
    }
}

/// Plan the mirror's rows not planned yet, in series order.
fn plan(mv: &mut Moving, m: &super::mirror::Mirror) {
    let mut keyed: Vec<((i64, i64, i64, i64), usize)> = Vec::new();
    for (b, inbox) in &m.buckets {
        let from = mv.planned.get(b).copied().unwrap_or(0);
        for (i, r) in inbox.rows.iter().enumerate().skip(from) {
            keyed.push(((*b, r.source, r.ts, r.seq), i));
        }
        mv.planned.insert(*b, inbox.rows.len());
    }
    keyed.sort_unstable_by_key(|(k, _)| *k);
    mv.plan = keyed.into_iter().map(|((b, ..), i)| (b, i)).collect();
    mv.next = 0;
}

/// Tests: a function run on the writer's thread after every slice that
/// leaves the move's transaction open (a crash image taken there is a
/// power cut in the middle of a move), per database path.
#[cfg(test)]
pub(crate) mod hook {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    type Hook = Box<dyn FnMut() + Send>;
    static AFTER_SLICE: Mutex<Vec<(PathBuf, Hook)>> = Mutex::new(Vec::new());

    pub(crate) fn set(db: &Path, f: impl FnMut() + Send + 'static) {
        let mut hooks = AFTER_SLICE.lock().unwrap();
        hooks.retain(|(p, _)| p != db);
        hooks.push((db.to_owned(), Box::new(f)));
    }

    pub(crate) fn clear(db: &Path) {
        AFTER_SLICE.lock().unwrap().retain(|(p, _)| p != db);
    }

    pub(super) fn after_slice(db: &Path) {
        let mut hooks = AFTER_SLICE.lock().unwrap();
        for (p, f) in hooks.iter_mut() {
            if p == db {
                f();
            }
        }
    }
}
