//! The writer thread: the only connection that writes. Its loop collects
//! commands into groups, runs each group in one transaction (the SQL is in
//! `apply.rs`, the size budget in `budget.rs`), answers every sender only
//! after the commit, and runs retention slices (`retention.rs`) between
//! groups. See the module doc of `store` for the protocol.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::{Connection, ErrorCode};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::apply::{bump, TxCtx};
use super::open::load_next_seq;
use super::policy::{GroupPolicy, Signals};
use super::retention::{PrunePass, FIRST_MAINTENANCE, MAINTENANCE_EVERY};
use super::wear::{process_write_bytes, WearMeter};
use super::{Appended, Command, MarkOutcome, StoreError, WriterStatus};
use crate::config::StoreConfig;

pub(crate) struct Writer {
    pub(super) conn: Connection,
    pub(super) config: StoreConfig,
    pub(super) store_id: u32,
    pub(super) status: watch::Sender<WriterStatus>,
    /// bucket id (hex) → buckets.id; cleared when a transaction rolls back.
    pub(super) buckets: HashMap<String, i64>,
    /// (buckets.id, data source id) → sources.id; cleared likewise.
    pub(super) sources: HashMap<(i64, String), i64>,
    pub(super) page_size: u64,
    /// The seq the next reading gets; persisted in meta `next_seq` by the
    /// transaction that uses it, restored from there after a rollback.
    pub(super) next_seq: i64,
    /// Bytes of pages one reading takes, learnt from commits.
    pub(super) bytes_per_reading: f64,
    pub(super) commits: u64,
    pub(super) disk_full_since: Option<Instant>,
    pub(super) warned_full: bool,
    /// Fair shares of the budget between buckets (`budget.rs`).
    pub(super) fair: super::budget::Fairness,
    /// Since when the writer has been in a transaction; read by `/health`.
    pub(super) busy: Arc<super::Busy>,
    /// The retention pass in progress, if any.
    pub(super) pass: Option<PrunePass>,
    /// `maintain()` callers, answered when the pass ends.
    pub(super) pass_waiters: Vec<super::Reply<()>>,
    /// Holds receive-time readings while the clock is not synchronised.
    pub(super) clock: Arc<super::ClockGate>,
    /// The commit observer (alerts), if one is installed.
    pub(super) observer: super::ObserverSlot,
    /// The current group's appended readings, kept for the observer.
    pub(super) committed: Vec<Vec<crate::reading::Reading>>,
    /// Hurries and the uplinks' wants (`policy.rs`).
    pub(super) signals: Arc<Signals>,
    /// Bytes this process writes per day (`wear.rs`).
    pub(super) wear: WearMeter,
    /// The inbox in memory, shared with the readers.
    pub(super) mirror: super::inbox::mirror::SharedMirror,
    /// The inbox's journal, when this process owns it (`inbox/write.rs`).
    pub(super) inbox: Option<super::inbox::write::InboxState>,
    /// Bytes of pages in use after the last commit.
    pub(super) used_now: u64,
}

/// What a group adds, for the size budget.
#[derive(Debug, Clone, Copy)]
struct Incoming {
    readings: usize,
    /// Rows copied into dead letters (each about a reading).
    dead_letters: usize,
    /// Rejects' bytes.
    other_bytes: u64,
}

/// What the size budget allows a group's appends.
#[derive(Debug, Default)]
pub(super) struct Room {
    /// The store is full (`on_full = "reject"`): every append is refused.
    full: Option<StoreError>,
    /// Buckets whose share is full (`on_full = "reject"`): their appends
    /// are refused, the others' go in.
    over_share: HashSet<String>,
}

impl Room {
    /// Why an append of `readings` is refused, if it is.
    pub(super) fn refuses(&self, readings: &[crate::reading::Reading]) -> Option<&StoreError> {
        if let Some(e) = &self.full {
            return Some(e);
        }
        readings
            .iter()
            .any(|r| self.over_share.contains(r.bucket_id.as_str()))
            .then_some(&StoreError::Full)
    }
}

/// The answer for one command, sent only after the group committed.
pub(super) enum Outcome {
    Appended(super::Reply<Appended>, Result<Appended, StoreError>),
    Unit(super::Reply<()>, Result<(), StoreError>),
    Marked(super::Reply<MarkOutcome>, Result<MarkOutcome, StoreError>),
    Count(super::Reply<usize>, Result<usize, StoreError>),
    Bool(super::Reply<bool>, Result<bool, StoreError>),
    Replayed(
        super::Reply<super::Replayed>,
        Result<super::Replayed, StoreError>,
    ),
}

impl Outcome {
    pub(super) fn send(self) {
        // A sender that went away (a cancelled request) is not an error.
        match self {
            Outcome::Appended(tx, r) => drop(tx.send(r)),
            Outcome::Unit(tx, r) => drop(tx.send(r)),
            Outcome::Marked(tx, r) => drop(tx.send(r)),
            Outcome::Count(tx, r) => drop(tx.send(r)),
            Outcome::Bool(tx, r) => drop(tx.send(r)),
            Outcome::Replayed(tx, r) => drop(tx.send(r)),
        }
    }

    /// Replace the result with `err` (the transaction rolled back).
    pub(super) fn fail(self, err: impl Fn() -> StoreError) -> Outcome {
        match self {
            Outcome::Appended(tx, _) => Outcome::Appended(tx, Err(err())),
            Outcome::Unit(tx, _) => Outcome::Unit(tx, Err(err())),
            Outcome::Marked(tx, _) => Outcome::Marked(tx, Err(err())),
            Outcome::Count(tx, _) => Outcome::Count(tx, Err(err())),
            Outcome::Bool(tx, _) => Outcome::Bool(tx, Err(err())),
            Outcome::Replayed(tx, _) => Outcome::Replayed(tx, Err(err())),
        }
    }
}

pub(super) fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Full => StoreError::Full,
        StoreError::DiskFull => StoreError::DiskFull,
        StoreError::Corrupt(why) => StoreError::Corrupt(why.clone()),
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Fatal(other.to_string()),
    }
}

/// What the writer shares with the handles and the rest of the process:
/// its status, the busy flag, the clock gate, the commit policy's signals,
/// the fair shares and the commit observer.
pub(crate) struct Links {
    pub(crate) status: watch::Sender<WriterStatus>,
    pub(crate) busy: Arc<super::Busy>,
    pub(crate) clock: Arc<super::ClockGate>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) shares: super::budget::SharedShares,
    pub(crate) observer: super::ObserverSlot,
    /// The inbox in memory, shared with the readers.
    pub(crate) mirror: super::inbox::mirror::SharedMirror,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        config: StoreConfig,
        store_id: u32,
        links: Links,
    ) -> Result<Writer, StoreError> {
        let Links {
            status,
            busy,
            clock,
            signals,
            shares,
            observer,
            mirror,
        } = links;
        let mut conn = conn;
        super::budget::init_queued_bytes(&mut conn)?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let next_seq = load_next_seq(&conn)?;
        let w = Writer {
            conn,
            config,
            store_id,
            status,
            buckets: HashMap::new(),
            sources: HashMap::new(),
            page_size: page_size as u64,
            next_seq,
            bytes_per_reading: 150.0,
            commits: 0,
            disk_full_since: None,
            warned_full: false,
            fair: super::budget::Fairness::new(shares),
            busy,
            pass: None,
            pass_waiters: Vec::new(),
            clock,
            observer,
            committed: Vec::new(),
            signals,
            wear: WearMeter::new(Instant::now(), process_write_bytes()),
            mirror,
            inbox: None,
            used_now: 0,
        };
        let mut w = w;
        let used = w.used_bytes(&w.conn)?;
        w.used_now = used;
        if let Some(db) = w.conn.path().map(std::path::PathBuf::from) {
            w.open_inbox(&db)?;
        }
        let used = w.used_bytes(&w.conn)?;
        w.status.send_replace(WriterStatus {
            used_bytes: used,
            ..WriterStatus::default()
        });
        Ok(w)
    }

    /// The thread body: groups until every sender is gone, then a final
    /// checkpoint. Returns an error only for a fatal storage failure.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Command>) -> Result<(), StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| StoreError::Fatal(format!("cannot start the writer's timer: {e}")))?;
        let result = rt.block_on(async {
            let mut next_maintenance = tokio::time::Instant::now() + FIRST_MAINTENANCE;
            loop {
                // Commands first: a retention pass runs one short slice
                // at a time, between groups and while the queue is empty.
                let pass_running = self.pass.is_some();
                let draining = self.draining();
                let first = tokio::select! {
                    biased;
                    c = rx.recv() => c,
                    _ = std::future::ready(()), if draining => {
                        self.drain_slice()?;
                        continue;
                    }
                    _ = std::future::ready(()), if pass_running => {
                        if self.prune_slice()? {
                            next_maintenance = tokio::time::Instant::now() + MAINTENANCE_EVERY;
                        }
                        continue;
                    }
                    _ = tokio::time::sleep_until(next_maintenance), if !pass_running => {
                        self.start_pass();
                        continue;
                    }
                };
                let Some(first) = first else { return Ok(()) };
                let group = self.collect(first, &mut rx).await;
                // An explicit `maintain()` starts a pass now (with a fresh
                // cutoff) and is answered when it ends; it runs in slices
                // like the periodic one.
                let (asks, group): (Vec<Command>, Vec<Command>) = group
                    .into_iter()
                    .partition(|c| matches!(c, Command::Maintain(_)));
                if !asks.is_empty() {
                    // History the inbox's marks delivered becomes prunable.
                    if let Err(e) = self.move_inbox() {
                        if !e.is_transient() {
                            return Err(e);
                        }
                    }
                    self.start_pass();
                }
                for ask in asks {
                    if let Command::Maintain(reply) = ask {
                        self.pass_waiters.push(reply);
                    }
                }
                if !group.is_empty() {
                    self.execute(group)?;
                }
                // A move under way takes one slice after every group
                // (ingest never waits for a whole move).
                if self.draining() {
                    self.drain_slice()?;
                }
                // A slice after every group too, so that steady ingest
                // cannot starve a pass: a commit waits for one slice at
                // most, and a pass always progresses.
                if self.pass.is_some() && self.prune_slice()? {
                    next_maintenance = tokio::time::Instant::now() + MAINTENANCE_EVERY;
                }
                // Under steady ingest the queue is never empty when the
                // select above runs, so its timer branch would never win
                // (the pass never started at 100 readings/s): start a due
                // pass here as well.
                if self.pass.is_none() && tokio::time::Instant::now() >= next_maintenance {
                    self.start_pass();
                }
            }
        });
        if result.is_ok() {
            // Everything into the database: the journal is left empty.
            if let Err(e) = self.close_inbox() {
                warn!(error = %e, "the inbox could not be moved at stop; it is replayed at next start");
            }
            // Leave a small, fully checkpointed file behind.
            if let Err(e) = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            {
                warn!(error = %e, "final checkpoint failed; the WAL is replayed at next start");
            }
        }
        result
    }

    /// Gather a group until the commit policy closes it (`policy.rs`):
    /// `commit_max_readings` readings, a waiting uplink's batch, a hurry
    /// (then with whatever is already queued), or `commit_max_delay` after
    /// the first command.
    async fn collect(&self, first: Command, rx: &mut mpsc::Receiver<Command>) -> Vec<Command> {
        let opened = tokio::time::Instant::now();
        let deadline = opened + self.config.commit_max_delay;
        let busy = opened + super::policy::BUSY_DELAY;
        let mut policy = GroupPolicy::new(self.config.commit_max_readings, &self.signals);
        policy.add(&first);
        let mut group = vec![first];
        let mut hurried = false;
        let why = loop {
            if let Some(why) = policy.close_now() {
                break why;
            }
            let next = match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if hurried || self.config.commit_max_delay.is_zero() {
                        None
                    } else {
                        tokio::select! {
                            biased;
                            c = rx.recv() => c,
                            _ = self.signals.hurry.notified() => {
                                // Take what is queued already, then commit.
                                hurried = true;
                                continue;
                            }
                            _ = tokio::time::sleep_until(policy.closes_at(busy, deadline)) => None,
                        }
                    }
                }
            };
            let Some(c) = next else {
                break policy.closed_by_time(hurried, tokio::time::Instant::now() >= deadline);
            };
            policy.add(&c);
            group.push(c);
        };
        metrics::counter!("dakkio_store_group_commits_total", "reason" => why.as_str())
            .increment(1);
        group
    }

    /// Run a group in one transaction and answer every command.
    fn execute(&mut self, group: Vec<Command>) -> Result<(), StoreError> {
        // The inbox when the group can go there; otherwise the inbox is
        // moved first (a direct write comes after every inbox row).
        let group = match self.try_inbox(group) {
            Ok(None) => return Ok(()),
            Ok(Some(group)) => group,
            Err((group, e)) => return self.failed(fail_all(group), e),
        };
        if self.inbox_pending() {
            tracing::debug!(
                commands = ?group.iter().map(Command::kind).collect::<Vec<_>>(),
                "a direct write moves the inbox first"
            );
        }
        if let Err(e) = self.move_inbox() {
            return self.failed(fail_all(group), e);
        }
        let incoming = Incoming {
            readings: group.iter().map(Command::readings).sum(),
            dead_letters: group.iter().map(Command::dead_letters).sum(),
            other_bytes: group.iter().map(Command::other_bytes).sum(),
        };
        self.busy.enter();
        let result = self.transaction(group, incoming);
        self.busy.leave();
        match result {
            Ok(outcomes) => {
                self.commits += 1;
                if let Some(since) = self.disk_full_since.take() {
                    info!(
                        paused_for = ?since.elapsed(),
                        "disk space is back; ingest resumed"
                    );
                }
                let used = self.used_bytes(&self.conn).unwrap_or(0);
                self.status.send_modify(|s| {
                    s.disk_full = false;
                    s.used_bytes = used;
                    s.commits = self.commits;
                });
                // The observer before the answers: once a sender has its
                // answer, the readings have been evaluated (an input that
                // stops after its last commit leaves no firing undecided).
                if !self.committed.is_empty() {
                    if let Some(observer) = self.observer.get() {
                        for readings in &self.committed {
                            observer.committed(readings);
                        }
                    }
                    self.committed.clear();
                }
                outcomes.into_iter().for_each(Outcome::send);
                self.sample_wear();
                Ok(())
            }
            Err((outcomes, e)) => self.failed(outcomes, e),
        }
    }

    /// A group failed with `e`: tell every sender, and stop on a fatal
    /// error (a full disk is waited out).
    pub(super) fn failed(
        &mut self,
        outcomes: Vec<Outcome>,
        e: StoreError,
    ) -> Result<(), StoreError> {
        self.committed.clear();
        self.buckets.clear();
        self.sources.clear();
        if let Ok(n) = load_next_seq(&self.conn) {
            self.next_seq = self.next_seq.max(n);
        }
        let fatal = !matches!(e, StoreError::DiskFull);
        if matches!(e, StoreError::DiskFull) {
            if self.disk_full_since.is_none() {
                error!(
                    "disk is full: nothing can be committed; readings are not \
                     acknowledged and stay with their senders until space is freed"
                );
                self.disk_full_since = Some(Instant::now());
            }
            self.status.send_modify(|s| s.disk_full = true);
        }
        for o in outcomes {
            o.fail(|| copy_error(&e)).send();
        }
        if fatal {
            if matches!(e, StoreError::Corrupt(_)) {
                if let Some(db) = self.conn.path() {
                    let marker = super::check_marker(Path::new(db));
                    if let Err(io) = std::fs::write(&marker, b"") {
                        error!(error = %io, "cannot leave the full-check marker");
                    }
                }
            }
            error!(error = %e, "storage failed during a commit; stopping");
            return Err(e);
        }
        Ok(())
    }

    /// The transaction of one group. On failure every outcome is returned so
    /// that its sender can be told.
    #[allow(clippy::type_complexity)]
    fn transaction(
        &mut self,
        group: Vec<Command>,
        incoming: Incoming,
    ) -> Result<Vec<Outcome>, (Vec<Outcome>, StoreError)> {
        let mut outcomes = Vec::with_capacity(group.len());
        // `meta.next_seq` as this writer's inbox reserved it, if it did.
        let reserved = self.inbox.as_ref().map(|i| i.reserved_end());
        // Split borrows: the transaction borrows the connection, the rest of
        // the writer's state is used beside it.
        let Writer {
            conn,
            config,
            store_id,
            buckets,
            sources,
            page_size,
            next_seq,
            bytes_per_reading,
            warned_full,
            clock,
            observer,
            committed,
            wear,
            fair,
            ..
        } = self;
        fair.rolled_back();
        let group_buckets: HashSet<String> = group
            .iter()
            .flat_map(|c| match c {
                Command::Append(r, _) => r.iter().map(|r| r.bucket_id.to_string()).collect(),
                Command::ReplayRejects(items, _) => items
                    .iter()
                    .flat_map(|(_, r)| r.iter().map(|r| r.bucket_id.to_string()))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        let keep = observer.get().is_some_and(|o| o.wants());
        let mut ctx = TxCtx {
            clock,
            store_id: *store_id,
            next_seq,
            buckets,
            sources,
            config,
            page_size: *page_size,
            warned_full,
            committed: keep.then_some(committed),
            fair,
        };
        // IMMEDIATE: the write lock is taken at BEGIN (waiting up to the
        // busy timeout), so nothing read below can be changed by another
        // writer before this transaction writes. Another writer exists
        // while a command (`rejects replay`, `dead-letters retry`) runs
        // beside the daemon: hence `next_seq` is read again here, not
        // trusted from memory (a seq reused in a bucket fails the commit
        // as a constraint violation, which is fatal; the integration test
        // `rejects::replay_after_a_config_fix_…` stops storing without it).
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return Err((fail_all(group), classify(e))),
        };
        match load_next_seq(&tx) {
            // The inbox's own reservation: the seqs below it are this
            // writer's to give, in order (no gap for a direct write).
            Ok(n) if Some(n) == reserved => {}
            Ok(n) => *ctx.next_seq = (*ctx.next_seq).max(n),
            Err(e) => return Err((fail_all(group), e)),
        }
        let seq_before = *ctx.next_seq;
        let mut room = Room::default();
        let need = ((incoming.readings + incoming.dead_letters) as f64 * *bytes_per_reading) as u64
            + incoming.other_bytes;
        if need > 0 {
            match ctx.make_room(&tx, need, incoming.readings > 0, incoming.dead_letters > 0) {
                Ok(r) => room.full = r.err(),
                Err(e) => return Err((fail_all(group), classify(e))),
            }
        }
        if room.full.is_none() && !group_buckets.is_empty() {
            let names = group_buckets.iter().map(String::as_str).collect();
            match ctx.over_share(&tx, &names) {
                Ok(over) => room.over_share = over,
                Err(e) => return Err((fail_all(group), classify(e))),
            }
        }
        let used_before = ctx.used(&tx).unwrap_or(0);
        let mut accepted: HashMap<i64, i64> = HashMap::new();
        let mut iter = group.into_iter();
        while let Some(cmd) = iter.next() {
            let step = ctx.apply(&tx, cmd, &room, &mut accepted);
            match step {
                Ok(o) => outcomes.push(o),
                Err((o, e)) => {
                    outcomes.push(o);
                    outcomes.extend(fail_all(iter.collect()));
                    return Err((outcomes, classify(e)));
                }
            }
        }
        for (bucket, n) in &accepted {
            let counted = bump(&tx, *bucket, "accepted", *n)
                .and_then(|()| bump(&tx, *bucket, super::budget::KEPT, *n));
            if let Err(e) = counted {
                return Err((outcomes, classify(e)));
            }
        }
        if let Err(e) = ctx.fair.flush(&tx) {
            return Err((outcomes, classify(e)));
        }
        if *ctx.next_seq != seq_before {
            // Never below the inbox's reservation.
            let meta = (*ctx.next_seq).max(reserved.unwrap_or(0));
            if let Err(e) = tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [meta.to_string()],
            ) {
                return Err((outcomes, classify(e)));
            }
        }
        // For `queue stats`, in this transaction: no commit of its own.
        if let Some(per_day) = wear.due_for_persisting(Instant::now()) {
            if let Err(e) =
                super::apply::set_meta(&tx, super::wear::STATE_KEY, &per_day.to_string())
            {
                return Err((outcomes, classify(e)));
            }
        }
        let used_after = ctx.used(&tx).unwrap_or(used_before);
        if let Err(e) = tx.commit() {
            return Err((outcomes, classify(e)));
        }
        ctx.fair.learn(used_after.saturating_sub(used_before));
        let appended: i64 = accepted.values().sum();
        if appended >= 100 && used_after > used_before {
            let observed = (used_after - used_before) as f64 / appended as f64;
            *bytes_per_reading = (*bytes_per_reading * 0.7 + observed * 0.3).clamp(40.0, 4096.0);
        }
        Ok(outcomes)
    }

    /// Sample the bytes this process wrote, now and then (`wear.rs`).
    pub(super) fn sample_wear(&mut self) {
        let now = Instant::now();
        if self.wear.due(now) {
            if let Some(bytes) = process_write_bytes() {
                self.wear.sample(now, bytes);
                if let Some(v) = self.wear.per_day() {
                    metrics::gauge!("dakkio_store_written_bytes_per_day").set(v as f64);
                }
            }
        }
    }

    pub(super) fn used_bytes(&self, conn: &Connection) -> Result<u64, rusqlite::Error> {
        used_bytes(conn, self.page_size)
    }
}

pub(super) fn fail_all(group: Vec<Command>) -> Vec<Outcome> {
    group
        .into_iter()
        .map(|c| match c {
            Command::Append(_, r) => Outcome::Appended(r, Err(StoreError::Closed)),
            Command::Reject(_, r) => Outcome::Unit(r, Err(StoreError::Closed)),
            Command::MarkDelivered { reply, .. } => Outcome::Marked(reply, Err(StoreError::Closed)),
            Command::RetryDeadLetters(_, r)
            | Command::PurgeDeadLetters(r)
            | Command::Clock(_, r)
            | Command::PurgeRejects(_, r) => Outcome::Count(r, Err(StoreError::Closed)),
            Command::ReplayRejects(_, r) => Outcome::Replayed(r, Err(StoreError::Closed)),
            Command::InsertApiKey(_, r)
            | Command::TouchApiKeys(_, r)
            | Command::Counters(_, r)
            | Command::SetState(_, r)
            | Command::Maintain(r)
            | Command::Ping(r)
            | Command::CreateSource(_, r)
            | Command::EnsureBuckets(_, r) => Outcome::Unit(r, Err(StoreError::Closed)),
            Command::DeleteApiKey(_, r) => Outcome::Bool(r, Err(StoreError::Closed)),
            Command::Alerts(_, r) => Outcome::Count(r, Err(StoreError::Closed)),
        })
        .collect()
}

/// SQLITE_FULL is transient (space can come back); everything else that
/// fails a commit is fatal.
pub(super) fn classify(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull,
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Fatal(e.to_string()),
    }
}

pub(crate) fn used_bytes(conn: &Connection, page_size: u64) -> Result<u64, rusqlite::Error> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok((pages - free).max(0) as u64 * page_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_is_its_own_error_disk_full_is_transient() {
        let err = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        assert!(matches!(
            classify(err(rusqlite::ffi::SQLITE_CORRUPT)),
            StoreError::Corrupt(_)
        ));
        assert!(matches!(
            classify(err(rusqlite::ffi::SQLITE_FULL)),
            StoreError::DiskFull
        ));
        assert!(matches!(
            classify(err(rusqlite::ffi::SQLITE_IOERR)),
            StoreError::Fatal(_)
        ));
    }
}
