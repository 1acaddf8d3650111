//! The inbox's part of the local API's reads (issue 15): readings the
//! inbox holds in memory (`inbox/mirror.rs`) and `readings` does not have
//! yet are added to what the statements over `readings` answer, each
//! reading exactly once, as if it were stored.
//!
//! Every read path takes the same steps:
//! - it resolves its keys (bucket, data sources) from SQLite first;
//! - when the mirror holds no row of the bucket, it runs its statements on
//!   `readings` as before, with nothing more to pay. Nothing is missed or
//!   counted twice: a reading not in the mirror at that look was either in
//!   `readings` already or arrived after it (then it is seen at most once,
//!   in `readings`, or not at all, like any reading newer than the query);
//! - otherwise it begins a read transaction consistent with the mirror
//!   ([`consistent`]: the SQLite snapshot is fixed under the mirror's read
//!   lock, and the writer commits a move and clears the mirror under one
//!   hold of its write lock), copies what it needs of the rows it covers
//!   (its sources, its time range; under the lock, which is then released),
//!   runs its statements unchanged on that transaction and combines the two
//!   answers in Rust in the order the statements use: `(ts, seq)` for
//!   pages, `(ts DESC, seq DESC)` for the newest readings;
//! - aggregations, a statement per day (each its own snapshot, so that a
//!   WAL checkpoint is never held back long), take one consistent
//!   transaction per statement and re-copy when a move happened in between
//!   (the mirror's `generation`) or rows arrived (the bucket's row count).
//!
//! The statements over `readings` stay exactly what they were, so their
//! index use (the series key `(bucket, source, ts, seq)`, the min/max and
//! count shortcuts) is unchanged. A TEMP table joined by a `UNION ALL` view
//! was the other way; it was not taken: reader connections are
//! `query_only`, a compound view loses the min/max shortcut and the
//! index-ordered `LIMIT`, and copying rows into SQLite costs more than
//! merging them.

use std::collections::HashSet;
use std::sync::RwLockReadGuard;

use rusqlite::Connection;

use super::Scope;
use crate::store::inbox::mirror::{Mirror, MirrorRow, SharedMirror};
use crate::store::reader::consistent;

fn read(mirror: &SharedMirror) -> RwLockReadGuard<'_, Mirror> {
    mirror.read().unwrap_or_else(|p| p.into_inner())
}

/// Whether the mirror holds rows of `bucket` (a look, no transaction).
pub(in crate::store) fn has_rows(mirror: &SharedMirror, bucket: i64) -> bool {
    read(mirror)
        .bucket(bucket)
        .is_some_and(|b| !b.rows.is_empty())
}

/// Run `f` on `c` with what `copy` takes of the mirror, consistently
/// (module doc); when `needed` says the mirror holds nothing for this read,
/// `f` runs on `c` as it is and gets `None`.
pub(in crate::store) fn with_inbox<T, R>(
    c: &Connection,
    mirror: &SharedMirror,
    needed: impl Fn(&Mirror) -> bool,
    copy: impl FnOnce(&Mirror) -> T,
    f: impl FnOnce(&Connection, Option<T>) -> Result<R, rusqlite::Error>,
) -> Result<R, rusqlite::Error> {
    if !needed(&read(mirror)) {
        return f(c, None);
    }
    let (tx, copied) = consistent(c, mirror, |m| needed(m).then(|| copy(m)))?;
    let r = f(&tx, copied);
    // A read: ending it by rollback changes nothing.
    drop(tx);
    r
}

/// [`with_inbox`] for one bucket: `copy` gets the bucket's rows (seq
/// order), `f` gets `None` when there were none.
pub(in crate::store) fn with_bucket_rows<T, R>(
    c: &Connection,
    mirror: &SharedMirror,
    bucket: i64,
    copy: impl FnOnce(&[MirrorRow]) -> T,
    f: impl FnOnce(&Connection, Option<T>) -> Result<R, rusqlite::Error>,
) -> Result<R, rusqlite::Error> {
    with_inbox(
        c,
        mirror,
        |m| m.bucket(bucket).is_some_and(|b| !b.rows.is_empty()),
        |m| copy(m.bucket(bucket).map_or(&[][..], |b| &b.rows[..])),
        f,
    )
}

/// Which inbox rows a query covers: its data sources and time range.
pub(super) struct Covers {
    keys: HashSet<i64>,
    start: i64,
    end: i64,
}

impl Covers {
    pub fn of(scope: &Scope) -> Covers {
        Covers::range(scope, scope.start, scope.end)
    }

    /// The scope's sources over `[start, end)`.
    pub fn range(scope: &Scope, start: i64, end: i64) -> Covers {
        Covers {
            keys: scope.sources.iter().map(|(k, _)| *k).collect(),
            start,
            end,
        }
    }

    pub fn has(&self, r: &MirrorRow) -> bool {
        r.ts >= self.start && r.ts < self.end && self.keys.contains(&r.source)
    }
}

/// The covered rows, copied, in `(ts, seq)` order (a page's order).
pub(super) fn sorted(rows: &[MirrorRow], covers: &Covers) -> Vec<MirrorRow> {
    let mut out: Vec<MirrorRow> = rows.iter().filter(|r| covers.has(r)).cloned().collect();
    out.sort_by_key(|r| (r.ts, r.seq));
    out
}

/// How many rows are covered and their first and last timestamps.
pub(super) fn extent(rows: &[MirrorRow], covers: &Covers) -> (i64, Option<(i64, i64)>) {
    rows.iter()
        .filter(|r| covers.has(r))
        .fold((0, None), |(n, span), r| {
            let span = match span {
                None => (r.ts, r.ts),
                Some((lo, hi)) => (r.ts.min(lo), r.ts.max(hi)),
            };
            (n + 1, Some(span))
        })
}

/// The union of two optional `(first, last)` spans.
pub(super) fn union(a: Option<(i64, i64)>, b: Option<(i64, i64)>) -> Option<(i64, i64)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (x, None) | (None, x) => x,
    }
}

/// Where the page statement over `readings` starts for the page
/// `offset..offset+limit` of its union with `inbox`: `(LIMIT, OFFSET)`.
///
/// No more than `inbox.len()` rows before the merged position `offset` can
/// be inbox rows, so the statement starts at `s0 = offset - inbox.len()`
/// (every `readings` row before it is before `offset`) and needs at most
/// `inbox.len() + limit` rows (read lazily: it steps no more than [`page`]
/// uses). With an empty inbox this is the page itself.
pub(super) fn window(inbox: &[MirrorRow], limit: usize, offset: usize) -> (i64, i64) {
    (
        limit.saturating_add(inbox.len()) as i64,
        offset.saturating_sub(inbox.len()) as i64,
    )
}

/// The page `offset..offset+limit` (of `(ts, seq)` order) of the union of
/// `readings` and `inbox` (sorted, see [`sorted`]), cut once it holds
/// `max_bytes` as [`super::PointRow::json_len`] counts them (the first row
/// always comes). `rows` is the page statement run with [`window`]; `key`
/// reads a row's `(ts, seq)`, `point` the whole row (only for rows kept).
///
/// When the statement starts at `s0 > 0`, the inbox rows before its first
/// row are before `offset` (see [`window`]), so the merge starts at the
/// known position `s0 + k`, `k` being their number.
pub(super) fn page(
    inbox: &[MirrorRow],
    limit: usize,
    offset: usize,
    max_bytes: usize,
    rows: &mut rusqlite::Rows<'_>,
    key: impl Fn(&rusqlite::Row<'_>) -> Result<Key, rusqlite::Error>,
    point: impl Fn(&rusqlite::Row<'_>) -> Result<super::PointRow, rusqlite::Error>,
) -> Result<Vec<super::PointRow>, rusqlite::Error> {
    let s0 = offset.saturating_sub(inbox.len());
    let mut p = Pager {
        skip: offset,
        limit,
        max_bytes,
        bytes: 0,
        out: Vec::new(),
    };
    let mut next = 0usize;
    let mut first = true;
    while let Some(r) = rows.next()? {
        let at = key(r)?;
        if first {
            first = false;
            if s0 > 0 {
                next = inbox.partition_point(|i| (i.ts, i.seq) < at);
                p.skip = offset - (s0 + next);
            }
        }
        while let Some(i) = inbox.get(next).filter(|i| (i.ts, i.seq) < at) {
            next += 1;
            if p.take(|| Ok(inbox_point(i)))? == Step::Stop {
                return Ok(p.out);
            }
        }
        if p.take(|| point(r))? == Step::Stop {
            return Ok(p.out);
        }
    }
    if first && s0 > 0 {
        // `readings` has no row at `s0`: the page is past the end.
        return Ok(p.out);
    }
    for i in &inbox[next..] {
        if p.take(|| Ok(inbox_point(i)))? == Step::Stop {
            break;
        }
    }
    Ok(p.out)
}

/// A row's place in a page: `(ts, seq)`.
pub(super) type Key = (i64, i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    More,
    Stop,
}

fn inbox_point(r: &MirrorRow) -> super::PointRow {
    super::PointRow {
        seq: r.seq,
        data_source_id: r.source_id.to_string(),
        timestamp_ms: r.ts,
        values_json: r.vals.clone(),
        metadata_json: r.meta.clone(),
    }
}

struct Pager {
    skip: usize,
    limit: usize,
    max_bytes: usize,
    bytes: usize,
    out: Vec<super::PointRow>,
}

impl Pager {
    /// The next row in merged order: passed over while before the page,
    /// then kept until the page is full.
    fn take(
        &mut self,
        row: impl FnOnce() -> Result<super::PointRow, rusqlite::Error>,
    ) -> Result<Step, rusqlite::Error> {
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(Step::More);
        }
        if self.out.len() >= self.limit {
            return Ok(Step::Stop);
        }
        let row = row()?;
        self.bytes = self.bytes.saturating_add(row.json_len());
        if self.bytes > self.max_bytes && !self.out.is_empty() {
            return Ok(Step::Stop);
        }
        self.out.push(row);
        Ok(if self.out.len() >= self.limit {
            Step::Stop
        } else {
            Step::More
        })
    }
}

/// The newest `n` covered rows of each source, newest first by
/// `(ts, seq)`: `(source, [(ts, seq, vals)])`.
pub(super) fn newest_per_source(
    rows: &[MirrorRow],
    covers: &Covers,
    n: usize,
) -> std::collections::HashMap<i64, Vec<(i64, i64, String)>> {
    let mut by: std::collections::HashMap<i64, Vec<&MirrorRow>> = Default::default();
    for r in rows.iter().filter(|r| covers.has(r)) {
        by.entry(r.source).or_default().push(r);
    }
    by.into_iter()
        .map(|(source, mut rs)| {
            rs.sort_unstable_by_key(|r| std::cmp::Reverse((r.ts, r.seq)));
            rs.truncate(n);
            let rs = rs.iter().map(|r| (r.ts, r.seq, r.vals.clone())).collect();
            (source, rs)
        })
        .collect()
}

/// Merge two lists in `(ts DESC, seq DESC)` order, keeping the first `n`.
pub(super) fn merge_newest(
    a: Vec<(i64, i64, String)>,
    b: Vec<(i64, i64, String)>,
    n: usize,
) -> Vec<(i64, i64, String)> {
    let mut out: Vec<_> = a.into_iter().chain(b).collect();
    out.sort_by_key(|r| std::cmp::Reverse((r.0, r.1)));
    out.truncate(n);
    out
}

/// An aggregation's copy of the inbox rows it covers, brought up to date
/// before each of its statements: copied again after a move (the mirror's
/// `generation` changed), extended by the rows that arrived since (a
/// bucket's rows only grow between moves).
#[derive(Default)]
pub(super) struct RangeCopy {
    /// The generation and the bucket's row count the copy is at.
    at: Option<(u64, usize)>,
    /// The covered rows, by `ts` once `sorted`.
    rows: Vec<MirrorRow>,
    sorted: bool,
}

impl RangeCopy {
    /// Bring the copy up to `m` (called under the mirror's read lock, so
    /// it only copies; sorting waits for [`RangeCopy::within`]).
    pub fn refresh(&mut self, m: &Mirror, bucket: i64, covers: &Covers) {
        let all = m.bucket(bucket).map_or(&[][..], |b| &b.rows[..]);
        let from = match self.at {
            Some((generation, n)) if generation == m.generation && n <= all.len() => n,
            _ => {
                self.rows.clear();
                0
            }
        };
        let before = self.rows.len();
        self.rows
            .extend(all[from..].iter().filter(|r| covers.has(r)).cloned());
        self.sorted &= self.rows.len() == before;
        self.at = Some((m.generation, all.len()));
    }

    /// The copied rows with a `ts` in `[start, end)`.
    pub fn within(&mut self, start: i64, end: i64) -> &[MirrorRow] {
        if !self.sorted {
            // Mostly in order already (rows arrive roughly by time): the
            // stable sort runs in about linear time.
            self.rows.sort_by_key(|r| r.ts);
            self.sorted = true;
        }
        let a = self.rows.partition_point(|r| r.ts < start);
        let b = self.rows.partition_point(|r| r.ts < end);
        &self.rows[a..b]
    }
}
