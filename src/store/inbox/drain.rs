//! Moving the inbox into `readings`, in slices.
//!
//! A move of 50,000 readings is a few hundred milliseconds here and
//! seconds on a Raspberry Pi: the writer would answer no group meanwhile
//! (MQTT acknowledgements and forwarding would stall). So a due move runs
//! as **slices** between groups, like a retention pass: each slice is one
//! transaction that moves the next [`SLICE_ROWS`] readings of the inbox
//! in series order (bucket, data source, time) — so each series' rows go
//! into the table together, its pages written once — and drops them from
//! the mirror under the same hold of its write lock. The **last** slice
//! (the mirror holds no more than a slice) also applies the delivery
//! marks, counters and state values, reserves the next range of seqs and
//! records the journal's epoch as moved; then the journal starts a new
//! epoch. Groups keep going to the journal while slices run.
//!
//! **Crash mid-move.** The journal still holds the rows earlier slices
//! moved: the replay at the next start inserts with `OR IGNORE` (a seq is
//! never reused, so a row already there is the same row) and counts only
//! what it inserted; marks, counters and state were not applied yet (only
//! the last slice does, with the epoch).
//!
//! A move that must finish now (a direct write, `maintain`, stop) runs
//! every slice in a row.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::params;

use super::mirror::MirrorRow;
use super::snapshot::MOVED_EPOCH;
use super::write::{io_err, next_beside};
use crate::store::apply::{bump, rows_between, set_meta};
use crate::store::open::next_seq_text;
use crate::store::writer::{classify, Writer};
use crate::store::StoreError;

/// Readings one slice moves: ~25 ms here. Each slice rewrites the tail
/// page of every series it touches, so smaller slices write more.
pub(crate) const SLICE_ROWS: usize = 5_000;

/// What one slice did, to apply to the mirror after its commit.
struct Sliced {
    /// Everything was moved (the last slice).
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
        let result = self.slice_transaction(limit, span, replay);
        self.busy.leave();
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                // The journal still holds everything; the caches may name
                // rows that rolled back.
                self.buckets.clear();
                self.sources.clear();
                self.fair.rolled_back();
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
        self.after_commit();
        tracing::debug!(rows = done.rows, took = ?started.elapsed(), last = done.last, "inbox slice moved into the database");
        Ok(())
    }

    /// The slice's transaction; commits and updates the mirror under one
    /// hold of its write lock.
    fn slice_transaction(
        &mut self,
        limit: usize,
        span: i64,
        replay: bool,
    ) -> Result<Sliced, rusqlite::Error> {
        let mirror = self.mirror.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // The writer is the only one that changes the mirror: it stays as
        // read here until the commit below.
        let m = mirror.read().unwrap_or_else(|p| p.into_inner());
        let last = m.rows() <= limit;
        let mut rows: Vec<(i64, &MirrorRow)> = m
            .buckets
            .iter()
            .flat_map(|(b, inbox)| inbox.rows.iter().map(move |r| (*b, r)))
            .collect();
        rows.sort_unstable_by_key(|(b, r)| (*b, r.source, r.ts, r.seq));
        rows.truncate(limit);
        let mut accepted: HashMap<i64, (i64, i64)> = HashMap::new();
        {
            let mut st = tx.prepare_cached(if replay {
                "INSERT OR IGNORE INTO readings (bucket, source, ts, seq, origin, vals, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            } else {
                "INSERT INTO readings (bucket, source, ts, seq, origin, vals, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            })?;
            for (b, r) in &rows {
                let n = st.execute(params![b, r.source, r.ts, r.seq, r.origin, r.vals, r.meta])?;
                let e = accepted.entry(*b).or_default();
                e.0 += n as i64;
                e.1 += n as i64 * r.bytes();
            }
        }
        let moved_rows: Vec<(i64, i64)> = if last {
            Vec::new()
        } else {
            rows.iter().map(|(b, r)| (*b, r.seq)).collect()
        };
        let moved = rows.len();
        let top = rows.iter().map(|(_, r)| r.seq + 1).max().unwrap_or(0);
        drop(rows);
        for (b, (n, bytes)) in &accepted {
            bump(&tx, *b, "accepted", *n)?;
            self.fair.added(*b, *bytes);
        }
        // Marks, once every reading is in the table (the last slice).
        let marks: Vec<(i64, i64)> = if last {
            m.buckets
                .iter()
                .filter(|(_, i)| i.cursor > 0)
                .map(|(b, i)| (*b, i.cursor))
                .collect()
        } else {
            Vec::new()
        };
        for (bucket, up_to) in marks {
            let cursor: i64 = tx
                .prepare_cached("SELECT delivered_seq FROM buckets WHERE id = ?1")?
                .query_row([bucket], |r| r.get(0))?;
            if up_to <= cursor {
                continue;
            }
            let (present, bytes) = rows_between(&tx, bucket, cursor, up_to)?;
            *self.fair.queued_bytes.entry(bucket).or_default() -= bytes;
            tx.prepare_cached("UPDATE buckets SET delivered_seq = ?2 WHERE id = ?1")?
                .execute(params![bucket, up_to])?;
            bump(&tx, bucket, "delivered", present)?;
        }
        let ours = self.inbox.as_ref().map(|i| i.reserved_end);
        let epoch = self.inbox.as_ref().map_or(0, |i| i.journal.epoch());
        let mut next = self.next_seq;
        if last {
            for ((bucket, name), delta) in &m.counters {
                bump(&tx, *bucket, name, *delta)?;
            }
            for (key, value) in &m.state {
                set_meta(&tx, key, value)?;
            }
            let meta: i64 = next_seq_text(&tx)?.parse().unwrap_or(0);
            next = next_beside(self.next_seq, ours, meta).max(top);
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [(next + span).to_string()],
            )?;
            set_meta(&tx, MOVED_EPOCH, &epoch.to_string())?;
        }
        drop(m);
        self.fair.flush(&tx)?;
        let mut m = mirror.write().unwrap_or_else(|p| p.into_inner());
        tx.commit()?;
        if last {
            m.clear();
        } else {
            m.remove(&moved_rows);
        }
        Ok(Sliced {
            last,
            rows: moved,
            next_seq: next,
        })
    }
}
