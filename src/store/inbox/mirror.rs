//! The inbox in memory: what the journal holds and SQLite does not have
//! yet, for the readers (the uplink's claims, stats, local queries).
//!
//! Invariants, kept by the writer (the only one that changes it):
//! - every row's seq is above every seq of its bucket in `readings`
//!   (a command that must write SQLite directly moves the inbox first);
//! - a bucket's rows are in seq order;
//! - `cursor`/`delivered` say what delivery marks did since the last
//!   move: the bucket's effective cursor is `max(buckets.delivered_seq,
//!   cursor)`, and `delivered` counts the readings (in `readings` or here)
//!   in `(buckets.delivered_seq, cursor]`, `delivered_bytes` their queued
//!   bytes, so that the ledger read with the mirror balances exactly;
//! - it changes only under its write lock, and a move's commit and the
//!   clearing of the mirror happen under one hold of that lock: a reader
//!   that starts its SQLite snapshot while holding the read lock sees
//!   every row exactly once, in `readings` or here
//!   ([`super::super::reader`]'s `consistent`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::super::budget::ROW_OVERHEAD;

/// Scratch capacity [`exact_json`] keeps between calls (a larger reading's
/// buffer is dropped after it).
const SCRATCH_KEPT: usize = 16 << 10;

/// `value` as JSON in a `String` of exactly its length, for a row the
/// mirror keeps: `serde_json::to_string` starts at 128 bytes, three times
/// a typical reading's values, and a mirror row holds its strings until
/// the move (at 20,000 rows with values and metadata that slack was about
/// 5 MiB of the daemon's peak; docs/performance.md).
pub(crate) fn exact_json<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        let written = serde_json::to_writer(&mut *buf, value);
        // serde_json writes UTF-8: `Borrowed`, copied once at its length.
        let out = written.map(|()| String::from_utf8_lossy(&buf).into_owned());
        if buf.capacity() > SCRATCH_KEPT {
            *buf = Vec::new();
        }
        out
    })
}

/// A reading in the inbox.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MirrorRow {
    pub seq: i64,
    /// `sources.id`.
    pub source: i64,
    pub source_id: Arc<str>,
    pub ts: i64,
    /// `reading::Origin::code`.
    pub origin: i64,
    /// The JSON object of values, as `readings.vals` keeps it.
    pub vals: String,
    pub meta: Option<String>,
}

impl MirrorRow {
    /// A journal's row, with its data source's name.
    pub fn from_journal(r: super::journal::JournalRow, source_id: Arc<str>) -> MirrorRow {
        MirrorRow {
            seq: r.seq,
            source: r.source,
            source_id,
            ts: r.ts,
            origin: r.origin,
            vals: r.vals,
            meta: r.meta,
        }
    }

    /// Its queued bytes, as `budget::ROW_BYTES_SQL` counts a row.
    pub fn bytes(&self) -> i64 {
        (self.vals.len() + self.meta.as_ref().map_or(0, String::len)) as i64 + ROW_OVERHEAD
    }
}

/// One bucket's part of the inbox.
#[derive(Debug, Default, Clone)]
pub(crate) struct BucketInbox {
    pub rows: Vec<MirrorRow>,
    /// The delivery cursor as marks since the last move left it (0: no
    /// mark yet).
    pub cursor: i64,
    /// Readings those marks delivered.
    pub delivered: i64,
    /// Their queued bytes.
    pub delivered_bytes: i64,
    /// Queued bytes of `rows`.
    pub bytes: i64,
}

impl BucketInbox {
    /// Rows with a seq above `after`, in order.
    pub fn after(&self, after: i64) -> &[MirrorRow] {
        let at = self.rows.partition_point(|r| r.seq <= after);
        &self.rows[at..]
    }
}

/// What the readers see of the inbox.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    /// Bumped by every move (a reader's copy of older rows is stale).
    pub generation: u64,
    /// By `buckets.id`.
    pub buckets: BTreeMap<i64, BucketInbox>,
    /// Ledger deltas `(bucket, name)` not in SQLite yet.
    pub counters: BTreeMap<(i64, String), i64>,
    /// State values (`meta`) not in SQLite yet, the last one per key.
    pub state: BTreeMap<String, String>,
    rows: usize,
}

pub(crate) type SharedMirror = Arc<RwLock<Mirror>>;

impl Mirror {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Nothing to move.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
            && self.counters.is_empty()
            && self.state.is_empty()
            && self.buckets.values().all(|b| b.cursor == 0)
    }

    pub fn bucket(&self, key: i64) -> Option<&BucketInbox> {
        self.buckets.get(&key)
    }

    pub fn push(&mut self, bucket: i64, row: MirrorRow) {
        let b = self.buckets.entry(bucket).or_default();
        debug_assert!(b.rows.last().is_none_or(|l| l.seq < row.seq));
        b.bytes += row.bytes();
        b.rows.push(row);
        self.rows += 1;
    }

    /// A delivery mark up to `up_to` that found `delivered` readings
    /// (`bytes` queued bytes) in SQLite and here.
    pub fn mark(&mut self, bucket: i64, up_to: i64, delivered: i64, bytes: i64) {
        let b = self.buckets.entry(bucket).or_default();
        b.cursor = b.cursor.max(up_to);
        b.delivered += delivered;
        b.delivered_bytes += bytes;
    }

    pub fn count(&mut self, bucket: i64, name: &str, delta: i64) {
        *self.counters.entry((bucket, name.to_owned())).or_default() += delta;
    }

    /// Everything is in SQLite now.
    pub fn clear(&mut self) {
        self.buckets.clear();
        self.counters.clear();
        self.state.clear();
        self.rows = 0;
        self.generation += 1;
    }

    /// The rows of `bucket` with a seq in `(after, up_to]` and their bytes.
    pub fn present(&self, bucket: i64, after: i64, up_to: i64) -> (i64, i64) {
        let Some(b) = self.buckets.get(&bucket) else {
            return (0, 0);
        };
        b.after(after)
            .iter()
            .take_while(|r| r.seq <= up_to)
            .fold((0, 0), |(n, bytes), r| (n + 1, bytes + r.bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64) -> MirrorRow {
        MirrorRow {
            seq,
            source: 1,
            source_id: Arc::from("s"),
            ts: seq * 1000,
            origin: 0,
            vals: "{\"v\":1}".into(),
            meta: None,
        }
    }

    #[test]
    fn exact_json_is_serde_json_at_its_length() {
        let v = serde_json::json!({"n": 12, "pub_us": 1796563599526123_i64, "s": "é\"x"});
        let s = exact_json(&v).unwrap();
        assert_eq!(s, serde_json::to_string(&v).unwrap());
        assert_eq!(s.capacity(), s.len());
        // A large one, then a small one: the scratch does not keep the
        // large one's bytes in the small one's answer.
        let big: BTreeMap<String, String> = [("k".to_owned(), "x".repeat(100_000))].into();
        assert_eq!(exact_json(&big).unwrap().len(), 100_000 + 8);
        assert_eq!(exact_json(&v).unwrap(), s);
    }

    #[test]
    fn rows_after_a_seq_and_what_a_mark_covers() {
        let mut m = Mirror::default();
        assert!(m.is_empty());
        for s in [5, 6, 9] {
            m.push(1, row(s));
        }
        assert_eq!(m.rows(), 3);
        let b = m.bucket(1).unwrap();
        assert_eq!(b.after(0).len(), 3);
        assert_eq!(b.after(5).iter().map(|r| r.seq).collect::<Vec<_>>(), [6, 9]);
        assert!(b.after(9).is_empty());
        assert_eq!(b.bytes, 3 * row(1).bytes());
        assert_eq!(m.present(1, 5, 8), (1, row(6).bytes()));
        assert_eq!(m.present(2, 0, 100), (0, 0));
        m.mark(1, 6, 2, 10);
        m.mark(1, 5, 0, 0);
        assert_eq!(m.bucket(1).unwrap().cursor, 6);
        m.count(0, "rejected", 2);
        let g = m.generation;
        m.clear();
        assert!(m.is_empty());
        assert_eq!(m.generation, g + 1);
    }
}
