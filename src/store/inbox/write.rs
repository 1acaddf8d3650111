//! The writer's side of the inbox: which groups go to the journal instead
//! of a transaction, how a group is appended, and the move into SQLite.
//!
//! **A group goes to the inbox** when every command in it is an append, a
//! delivery mark without dead letters, counters or a ping; every reading's
//! bucket and data source already have their keys (made durable by an
//! earlier transaction); no reading waits for a trusted clock; and the
//! store uses less than half of its budget (above that, the budget and the
//! fair shares decide on every group in SQLite, as before). Anything else
//! moves the inbox first and then runs as a transaction: a direct write
//! never has a seq below an inbox row, and sees the inbox's marks.
//!
//! **Seqs** of inbox rows come from a range reserved in `meta.next_seq`
//! (by the move, or a small transaction when the inbox is empty), so a
//! command writing the database beside the daemon (`rejects replay`) takes
//! seqs above them.
//!
//! **The move** inserts the rows in series order, applies the marks and
//! counters, bumps the ledger, reserves the next range and records the
//! journal's epoch as moved (`meta.inbox_moved_epoch`), in one
//! transaction; it commits and the mirror is cleared under one hold of the
//! mirror's write lock; then the journal starts a new epoch. A crash
//! before the commit replays the journal at the next start; after it, the
//! epoch is known as moved and the journal is ignored.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rusqlite::{params, OptionalExtension};
use tracing::{info, warn};

use super::journal::{Entry, Journal, JournalError, JournalRow};
use super::mirror::{exact_json, MirrorRow};
use crate::store::apply::rows_between;
use crate::store::open::next_seq_text;
use crate::store::writer::{classify, Outcome, Writer};
use crate::store::{mark_gate, Appended, Command, MarkGate, MarkOutcome, StoreError};

use super::snapshot::{moved_epoch, JOURNAL_NAME};

/// The inbox as the writer holds it.
pub(crate) struct InboxState {
    pub(super) journal: Journal,
    /// An exclusive `flock` on `<journal>.lock`: one process owns the
    /// inbox; a command run beside the daemon writes directly.
    _lock: File,
    /// `PRAGMA data_version` when last looked at (`others_took_seqs`).
    data_version: i64,
    pub(super) max_rows: usize,
    /// `meta.next_seq` as last written: inbox seqs stay below it.
    pub(super) reserved_end: i64,
    /// A move is under way, one slice between groups (`drain.rs`).
    pub(super) draining: bool,
    /// The move's open transaction and what its slices did so far.
    pub(super) moving: Option<super::drain::Moving>,
}

/// Bytes of journal capacity per configured inbox reading: a sync takes a
/// page of its own, so at 20 readings/s (a group a second) a reading takes
/// ~205 B; with 320 the move is due by its readings before the journal is
/// three-quarters full down to ~15 readings a second.
const JOURNAL_BYTES_PER_READING: u64 = 320;

fn journal_capacity(rows: usize) -> u64 {
    (rows as u64 * JOURNAL_BYTES_PER_READING).clamp(1 << 20, 64 << 20)
}

/// Take the inbox lock, or `None` when another process has it.
fn lock(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::fd::AsRawFd;
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(f));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

pub(super) fn io_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Fatal(format!("inbox journal: {e}"))
}

impl InboxState {
    /// `meta.next_seq` as the inbox last reserved it (0: none yet).
    pub(crate) fn reserved_end(&self) -> i64 {
        self.reserved_end
    }
}

impl Writer {
    /// Open the inbox at start (after the schema is current): take the
    /// lock, replay what a crash left in the journal, start a new epoch.
    pub(crate) fn open_inbox(&mut self, db: &Path) -> Result<(), StoreError> {
        if self.config.inbox_readings == 0 {
            return Ok(());
        }
        if let Err(e) = self.open_journal(db) {
            // Without a journal every group is a transaction, as with
            // `inbox_readings = 0`; what an old journal holds stays for a
            // later start (its epoch is not recorded as moved).
            self.inbox = None;
            self.mirror
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            warn!(
                error = %e,
                "the inbox journal cannot be used; every group is written to the database directly"
            );
        }
        Ok(())
    }

    fn open_journal(&mut self, db: &Path) -> Result<(), StoreError> {
        let path = db.with_file_name(JOURNAL_NAME);
        let Some(lock) = lock(&path).map_err(io_err)? else {
            info!(
                journal = %path.display(),
                "another process owns the inbox; this one writes the database directly"
            );
            return Ok(());
        };
        let capacity = journal_capacity(self.config.inbox_readings);
        let (journal, recovered) = Journal::open(&path, capacity).map_err(io_err)?;
        if recovered.torn_bytes > 0 {
            warn!(
                journal = %path.display(),
                bytes = recovered.torn_bytes,
                "the inbox journal ends in a torn record (a write cut by a crash); \
                 its readings were never acknowledged and are ignored"
            );
        }
        let moved = moved_epoch(&self.conn)?;
        self.inbox = Some(InboxState {
            journal,
            _lock: lock,
            data_version: data_version(&self.conn)?,
            max_rows: self.config.inbox_readings,
            reserved_end: 0,
            draining: false,
            moving: None,
        });
        if recovered.epoch > moved && !recovered.entries.is_empty() {
            let n = recovered.entries.len();
            self.refill(recovered.entries)?;
            self.move_replayed()?;
            info!(
                entries = n,
                "inbox: moved what the journal held at start into the database"
            );
        } else if let Some(inbox) = self.inbox.as_mut() {
            inbox.journal.reset().map_err(io_err)?;
        }
        if let Some(inbox) = self.inbox.as_ref() {
            info!(
                journal = %path.display(),
                capacity = inbox.journal.capacity(),
                readings = inbox.max_rows,
                "inbox ready"
            );
        }
        Ok(())
    }

    /// Put a journal's entries back into the mirror (at start).
    fn refill(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let top = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Row(r) => Some(r.seq + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        self.next_seq = self.next_seq.max(top);
        let mut m = self.mirror.write().unwrap_or_else(|p| p.into_inner());
        super::snapshot::fill(&self.conn, &mut m, entries)?;
        Ok(())
    }

    /// Whether the inbox is on and holds anything.
    pub(crate) fn inbox_pending(&self) -> bool {
        self.inbox.as_ref().is_some_and(|i| i.journal.used() > 0)
    }

    /// Run `group` through the inbox if it can go there (module doc);
    /// otherwise hand it back. On an error before anything was answered,
    /// the group comes back with it.
    #[allow(clippy::type_complexity)]
    pub(crate) fn try_inbox(
        &mut self,
        group: Vec<Command>,
    ) -> Result<Option<Vec<Command>>, (Vec<Command>, StoreError)> {
        if self.inbox.is_none() {
            return Ok(Some(group));
        }
        // Another process (`dead-letters retry`, `rejects replay` beside
        // the daemon) may commit readings with seqs above this inbox's
        // range at any time. The forwarder claims readings in seq order,
        // and its marks deliver every seq up to theirs: were the inbox to
        // go on giving seqs from below theirs, those readings would appear
        // behind the forwarder's claim cursor, never sent and then counted
        // as delivered. So the inbox group runs under the database's write
        // lock (a transaction that writes nothing, or the move under way):
        // no commit of another process can fall between the check below
        // and the group's rows becoming visible, and after one the inbox
        // starts a new range above theirs.
        let mut tries = 0;
        let began = loop {
            match self.make_inbox_room(&group) {
                Ok(true) => {}
                Ok(false) => return Ok(Some(group)),
                Err(e) => return Err((group, e)),
            }
            let began = self.conn.is_autocommit();
            if began && self.conn.execute_batch("BEGIN IMMEDIATE").is_err() {
                // Held long by another process: the group goes the direct
                // way, which waits for it as before.
                return Ok(Some(group));
            }
            match self.others_took_seqs() {
                Ok(false) => break began,
                // Their readings lie above this range: start a new one
                // (or, should they keep writing, go the direct way).
                Ok(true) => {
                    self.end_hold(began);
                    self.inbox.as_mut().expect("checked").reserved_end = 0;
                    tries += 1;
                    if tries == 3 {
                        return Ok(Some(group));
                    }
                }
                Err(e) => {
                    self.end_hold(began);
                    return Err((group, e));
                }
            }
        };
        let r = self.inbox_group(group).map_err(|e| (Vec::new(), e));
        self.end_hold(began);
        r
    }

    /// End the transaction `try_inbox` began only to hold the write lock
    /// (it wrote nothing).
    fn end_hold(&mut self, began: bool) {
        if began {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                warn!(error = %e, "cannot end the inbox's hold of the write lock");
            }
        }
    }

    /// Whether another process took seqs since this writer last looked:
    /// the database changed under another connection (`PRAGMA
    /// data_version`, no I/O) and `meta.next_seq` is no longer what this
    /// inbox reserved.
    fn others_took_seqs(&mut self) -> Result<bool, StoreError> {
        let v = data_version(&self.conn)?;
        let Some(inbox) = self.inbox.as_mut() else {
            return Ok(false);
        };
        if inbox.data_version == v {
            return Ok(false);
        }
        inbox.data_version = v;
        let meta: i64 = next_seq_text(&self.conn)?.parse().unwrap_or(0);
        let theirs = meta != inbox.reserved_end && inbox.reserved_end != 0;
        if theirs {
            info!(
                next_seq = meta,
                "another process wrote readings beside the daemon; the inbox's next readings follow theirs"
            );
        }
        Ok(theirs)
    }

    /// Whether `group` goes to the inbox; makes room for it there first
    /// (a move, or a new range of seqs).
    fn make_inbox_room(&mut self, group: &[Command]) -> Result<bool, StoreError> {
        if !self.inbox_fits(group)? {
            return Ok(false);
        }
        let rows: usize = group.iter().map(Command::readings).sum();
        let est = rows as u64 * JOURNAL_BYTES_PER_READING + 4096;
        let fits = |w: &Writer| {
            w.inbox.as_ref().is_some_and(|i| {
                // Twice the size: a move under way drains it meanwhile.
                // The mirror's bytes are bounded too: the journal's
                // compressed records no longer bound them.
                w.mirror_rows() + rows <= 2 * i.max_rows
                    && w.mirror_bytes() <= i.journal.capacity()
                    && i.journal.room() >= est
                    && w.next_seq + rows as i64 <= i.reserved_end
            })
        };
        if fits(self) {
            return Ok(true);
        }
        if self.inbox_pending() {
            self.move_inbox()?;
        } else {
            self.reserve()?;
        }
        // Still not: larger than an inbox's worth, a transaction of its own.
        let fits = fits(self);
        if !fits {
            tracing::debug!(
                rows,
                "a group larger than the inbox goes to the database directly"
            );
        }
        Ok(fits)
    }

    pub(super) fn mirror_rows(&self) -> usize {
        self.mirror.read().map(|m| m.rows()).unwrap_or(0)
    }

    fn inbox_fits(&mut self, group: &[Command]) -> Result<bool, StoreError> {
        let why = self.inbox_refusal(group)?;
        if let Some(why) = why {
            tracing::debug!(why, "a group goes to the database directly");
        }
        Ok(why.is_none())
    }

    /// Why `group` cannot go to the inbox, if it cannot.
    fn inbox_refusal(&mut self, group: &[Command]) -> Result<Option<&'static str>, StoreError> {
        if self.disk_full_since.is_some() {
            // Until a move succeeds again (the direct way tries one first).
            return Ok(Some("the disk is full"));
        }
        let budget = self.config.max_size - crate::store::headroom(self.config.max_size);
        let inbox_bytes = self.mirror_rows() as f64 * self.bytes_per_reading;
        if self.used_now as f64 + inbox_bytes > budget as f64 / 2.0 {
            return Ok(Some("the store uses more than half its budget"));
        }
        if self.config.on_full == crate::config::OnFull::Reject
            && !self.shares_allow(group, budget)?
        {
            return Ok(Some("a bucket uses more than half its share"));
        }
        let unsynced = self.clock.unsynced().is_some();
        let mut keys = GroupKeys::default();
        for c in group {
            match c {
                Command::Append(readings, _) => {
                    for r in readings {
                        if unsynced && r.receive_time {
                            return Ok(Some("a reading waits for a trusted clock"));
                        }
                        if keys.of(self, r)?.is_none() {
                            return Ok(Some("a new bucket or data source"));
                        }
                    }
                }
                Command::MarkDelivered {
                    bucket_id, dead, ..
                } => {
                    if !dead.is_empty() || self.known_bucket(bucket_id)?.is_none() {
                        return Ok(Some("dead letters"));
                    }
                }
                Command::Counters(..) | Command::SetState(..) | Command::Ping(_) => {}
                _ => return Ok(Some(c.kind())),
            }
        }
        Ok(None)
    }

    /// With `on_full = "reject"` each bucket's share is a reservation
    /// (`budget.rs`): the inbox takes a bucket's readings only while its
    /// undelivered bytes, the inbox's included, stay below half its share.
    fn shares_allow(&self, group: &[Command], budget: u64) -> Result<bool, StoreError> {
        let rows: Vec<(i64, String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT b.id, b.bucket_id, coalesce(l.value, 0)
                 FROM buckets b LEFT JOIN ledger l ON l.bucket = b.id AND l.name = 'queued_bytes'",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let known: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
        let shares = crate::store::budget::fractions(&self.fair.table(), budget, &known);
        let mut incoming: HashMap<&str, f64> = HashMap::new();
        for c in group {
            if let Command::Append(readings, _) = c {
                for r in readings {
                    *incoming.entry(r.bucket_id.as_str()).or_default() += self.bytes_per_reading;
                }
            }
        }
        let m = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        for (key, id, queued) in rows {
            let Some(add) = incoming.get(id.as_str()) else {
                continue;
            };
            let inbox = m.bucket(key).map_or(0, |b| b.bytes - b.delivered_bytes);
            let share = shares.get(&id).copied().unwrap_or(0.0) * budget as f64;
            if (queued + inbox) as f64 + add > share / 2.0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn known_bucket(&mut self, bucket_id: &str) -> Result<Option<i64>, StoreError> {
        if let Some(k) = self.buckets.get(bucket_id) {
            return Ok(Some(*k));
        }
        let k: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM buckets WHERE bucket_id = ?1")?
            .query_row([bucket_id], |r| r.get(0))
            .optional()?;
        if let Some(k) = k {
            self.buckets.insert(bucket_id.to_owned(), k);
        }
        Ok(k)
    }

    fn known_keys(
        &mut self,
        bucket_id: &str,
        source_id: &str,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let Some(b) = self.known_bucket(bucket_id)? else {
            return Ok(None);
        };
        // The cache is keyed by an owned String; a miss allocates once.
        let key = (b, source_id.to_owned());
        if let Some(s) = self.sources.get(&key) {
            return Ok(Some((b, *s)));
        }
        let s: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM sources WHERE bucket = ?1 AND source_id = ?2")?
            .query_row(params![b, source_id], |r| r.get(0))
            .optional()?;
        if let Some(s) = s {
            self.sources.insert(key, s);
            return Ok(Some((b, s)));
        }
        Ok(None)
    }

    /// Reserve seqs for the inbox in `meta.next_seq` (the inbox is empty).
    fn reserve(&mut self) -> Result<(), StoreError> {
        let span = self.reserve_span();
        let (next_seq, ours) = (self.next_seq, self.inbox.as_ref().map(|i| i.reserved_end));
        self.busy.enter();
        let r = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let meta: i64 = next_seq_text(&tx)?.parse().unwrap_or(0);
            let next = next_beside(next_seq, ours, meta);
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [(next + span).to_string()],
            )?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(next)
        })();
        self.busy.leave();
        let next = r.map_err(classify)?;
        self.next_seq = next;
        if let Some(inbox) = self.inbox.as_mut() {
            inbox.reserved_end = next + span;
        }
        Ok(())
    }

    pub(super) fn reserve_span(&self) -> i64 {
        self.inbox.as_ref().map_or(0, |i| 2 * i.max_rows as i64) + 10_000
    }

    /// Append a group to the journal, sync it, then show it in the mirror
    /// and answer its senders. A group the journal has no room for comes
    /// back untouched (it then goes to SQLite).
    fn inbox_group(&mut self, group: Vec<Command>) -> Result<Option<Vec<Command>>, StoreError> {
        let keep = self.observer.get().is_some_and(|o| o.wants());
        let seq_before = self.next_seq;
        // What to write, from the commands (not consumed yet).
        let mut entries = Vec::new();
        let mut names: HashMap<i64, Arc<str>> = HashMap::new();
        let mut steps = Vec::with_capacity(group.len());
        let mut marked_to: HashMap<i64, i64> = HashMap::new();
        let mut keys = GroupKeys::default();
        for c in &group {
            match c {
                Command::Append(readings, _) => {
                    steps.push(Step::Appended(self.next_seq, readings.len()));
                    for r in readings {
                        let (bucket, source) = keys.of(self, r)?.expect("checked by inbox_fits");
                        names
                            .entry(source)
                            .or_insert_with(|| Arc::from(r.data_source_id.as_str()));
                        let vals = exact_json(&r.values).unwrap_or_else(|_| "{}".into());
                        let meta = if r.metadata.is_empty() {
                            None
                        } else {
                            exact_json(&r.metadata).ok()
                        };
                        entries.push(Entry::Row(JournalRow {
                            bucket,
                            source,
                            ts: r.timestamp_ms,
                            seq: self.next_seq,
                            origin: r.origin.code(),
                            vals,
                            meta,
                        }));
                        self.next_seq += 1;
                    }
                }
                Command::MarkDelivered {
                    bucket_id,
                    up_to_seq,
                    after,
                    ..
                } => {
                    let bucket = self
                        .known_bucket(bucket_id)?
                        .expect("checked by inbox_fits");
                    let cursor = self
                        .effective_cursor(bucket)?
                        .max(marked_to.get(&bucket).copied().unwrap_or(0));
                    match mark_gate(cursor, *after, *up_to_seq) {
                        MarkGate::Done => {
                            steps.push(Step::Marked(bucket, 0, 0, 0));
                            continue;
                        }
                        MarkGate::Behind(after) => {
                            steps.push(Step::Behind(after));
                            continue;
                        }
                        MarkGate::Apply => {}
                    }
                    let (n, bytes) = self.marked(bucket, cursor, *up_to_seq, &entries)?;
                    entries.push(Entry::Mark {
                        bucket,
                        up_to: *up_to_seq,
                    });
                    marked_to.insert(bucket, *up_to_seq);
                    steps.push(Step::Marked(bucket, *up_to_seq, n, bytes));
                }
                Command::Counters(deltas, _) => {
                    for (name, delta) in deltas {
                        entries.push(Entry::Count {
                            bucket: 0,
                            name: name.clone(),
                            delta: *delta,
                        });
                    }
                    steps.push(Step::Unit);
                }
                Command::SetState(values, _) => {
                    for (key, value) in values {
                        entries.push(Entry::State {
                            key: key.clone(),
                            value: value.clone(),
                        });
                    }
                    steps.push(Step::Unit);
                }
                Command::Ping(_) => steps.push(Step::Unit),
                _ => unreachable!("checked by inbox_fits"),
            }
        }
        // For `queue stats`, with the group: no write of its own.
        if let Some(per_day) = self.wear.due_for_persisting(Instant::now()) {
            entries.push(Entry::State {
                key: crate::store::wear::STATE_KEY.to_owned(),
                value: per_day.to_string(),
            });
        }
        let inbox = self.inbox.as_mut().expect("checked");
        match inbox.journal.append(&entries) {
            Ok(()) => {}
            Err(JournalError::Full { .. }) => {
                // Larger than the journal's room: a transaction of its own.
                self.next_seq = seq_before;
                return Ok(Some(group));
            }
            Err(e) => {
                self.next_seq = seq_before;
                return Err(io_err(e));
            }
        }
        self.busy.enter();
        let synced = inbox.journal.sync();
        self.busy.leave();
        if let Err(e) = synced {
            inbox.journal.discard_pending();
            self.next_seq = seq_before;
            let err = io_err(e);
            for o in crate::store::writer::fail_all(group) {
                o.fail(|| StoreError::Fatal(err.to_string())).send();
            }
            tracing::error!(error = %err, "the inbox journal failed; stopping");
            return Err(err);
        }
        {
            let mut m = self.mirror.write().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                match e {
                    Entry::Row(j) => {
                        let name = names.get(&j.source).cloned().unwrap_or_else(|| "".into());
                        m.push(j.bucket, MirrorRow::from_journal(j, name));
                    }
                    Entry::Count {
                        bucket,
                        name,
                        delta,
                    } => m.count(bucket, &name, delta),
                    Entry::State { key, value } => {
                        m.state.insert(key, value);
                    }
                    Entry::Mark { .. } => {}
                }
            }
            for step in &steps {
                if let Step::Marked(bucket, up_to, n, bytes) = *step {
                    if up_to > 0 {
                        m.mark(bucket, up_to, n, bytes);
                    }
                }
            }
        }
        self.after_commit();
        self.sample_wear();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut committed = Vec::new();
        for (c, step) in group.into_iter().zip(steps) {
            match (c, step) {
                (Command::Append(readings, reply), Step::Appended(first_seq, count)) => {
                    outcomes.push(Outcome::Appended(
                        reply,
                        Ok(Appended {
                            first_seq,
                            count,
                            store_id: self.store_id,
                        }),
                    ));
                    if keep && !readings.is_empty() {
                        committed.push(readings);
                    }
                }
                (Command::MarkDelivered { reply, .. }, Step::Marked(_, _, n, _)) => {
                    outcomes.push(Outcome::Marked(
                        reply,
                        Ok(MarkOutcome {
                            delivered: n as u64,
                            dead_lettered: 0,
                        }),
                    ));
                }
                (Command::MarkDelivered { reply, .. }, Step::Behind(after)) => {
                    outcomes.push(Outcome::Marked(
                        reply,
                        Err(StoreError::MarkBehind { after }),
                    ));
                }
                (Command::Counters(_, reply), _)
                | (Command::SetState(_, reply), _)
                | (Command::Ping(reply), _) => outcomes.push(Outcome::Unit(reply, Ok(()))),
                _ => unreachable!("one step per command"),
            }
        }
        if !committed.is_empty() {
            if let Some(observer) = self.observer.get() {
                for readings in &committed {
                    observer.committed(readings);
                }
            }
        }
        outcomes.into_iter().for_each(Outcome::send);
        if self.move_due() {
            // In slices between the next groups (`drain.rs`).
            if let Some(inbox) = self.inbox.as_mut() {
                inbox.draining = true;
            }
        }
        Ok(None)
    }

    /// The bucket's cursor with the inbox's marks.
    fn effective_cursor(&self, bucket: i64) -> Result<i64, StoreError> {
        let sql: i64 = self
            .conn
            .prepare_cached("SELECT delivered_seq FROM buckets WHERE id = ?1")?
            .query_row([bucket], |r| r.get(0))?;
        let m = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        Ok(sql.max(m.bucket(bucket).map_or(0, |b| b.cursor)))
    }

    /// Readings (and their queued bytes) a mark from `cursor` up to
    /// `up_to` delivers: in SQLite, in the mirror, or among the group's own
    /// new rows (`entries`).
    fn marked(
        &self,
        bucket: i64,
        cursor: i64,
        up_to: i64,
        entries: &[Entry],
    ) -> Result<(i64, i64), StoreError> {
        let (n, bytes) = rows_between(&self.conn, bucket, cursor, up_to)?;
        let (mn, mbytes) = self
            .mirror
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .present(bucket, cursor, up_to);
        let (gn, gbytes) = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Row(r) if r.bucket == bucket && r.seq > cursor && r.seq <= up_to => Some(r),
                _ => None,
            })
            .fold((0, 0), |(n, s), r| {
                let b = (r.vals.len() + r.meta.as_ref().map_or(0, String::len)) as i64
                    + crate::store::budget::ROW_OVERHEAD;
                (n + 1, s + b)
            });
        Ok((n + mn + gn, bytes + mbytes + gbytes))
    }

    pub(super) fn move_due(&self) -> bool {
        let Some(inbox) = self.inbox.as_ref() else {
            return false;
        };
        self.mirror_rows() >= inbox.max_rows
            || inbox.journal.used() * 4 >= inbox.journal.capacity() * 3
            || self.mirror_bytes() * 4 >= inbox.journal.capacity() * 3
    }

    /// Queued bytes of the mirror's rows (what it holds in memory, about).
    pub(super) fn mirror_bytes(&self) -> u64 {
        self.mirror.read().map_or(0, |m| {
            m.buckets.values().map(|b| b.bytes.max(0) as u64).sum()
        })
    }

    /// After a commit or a journal sync: the status and the wear meter.
    pub(crate) fn after_commit(&mut self) {
        self.commits += 1;
        let used = self.used_bytes(&self.conn).unwrap_or(self.used_now);
        self.used_now = used;
        let commits = self.commits;
        self.status.send_modify(|s| {
            s.disk_full = false;
            s.used_bytes = used;
            s.commits = commits;
        });
    }
}

/// `PRAGMA data_version`: changes when another connection commits (read
/// once per inbox group; no I/O).
fn data_version(conn: &rusqlite::Connection) -> Result<i64, rusqlite::Error> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

/// The next seq given `meta.next_seq` as stored: our own reservation's end
/// (`ours`) is not someone else's seqs; anything else is (a command beside
/// the daemon wrote above it).
pub(super) fn next_beside(next_seq: i64, ours: Option<i64>, meta: i64) -> i64 {
    if Some(meta) == ours {
        next_seq
    } else {
        next_seq.max(meta)
    }
}

/// The keys of a group's data sources, looked up once per source (the
/// writer's caches are keyed by owned strings: a lookup per reading would
/// allocate one).
#[derive(Default)]
struct GroupKeys<'g>(HashMap<(&'g str, &'g str), Option<(i64, i64)>>);

impl<'g> GroupKeys<'g> {
    fn of(
        &mut self,
        w: &mut Writer,
        r: &'g crate::reading::Reading,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let k = (r.bucket_id.as_str(), r.data_source_id.as_str());
        if let Some(found) = self.0.get(&k) {
            return Ok(*found);
        }
        let found = w.known_keys(k.0, k.1)?;
        self.0.insert(k, found);
        Ok(found)
    }
}

/// What a command of an inbox group did, to answer it after the sync.
#[derive(Clone, Copy)]
enum Step {
    /// First seq, count.
    Appended(i64, usize),
    /// Bucket, up to (0: nothing new), readings delivered, their bytes.
    Marked(i64, i64, i64, i64),
    /// A mark whose previous one (up to this seq) is not committed.
    Behind(i64),
    Unit,
}
