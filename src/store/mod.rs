//! The store: one SQLite database that holds the queue, the local history,
//! dead letters, rejects, issued API keys and the ledger.
//!
//! # Design
//!
//! **One writer.** A dedicated thread owns the only writing connection
//! (`writer.rs`). Everything that changes the database is a `Command` sent
//! to it over a bounded channel (the bound is the backpressure on ingest).
//! Reads (uplink claims, local queries, stats) use a small pool of separate
//! connections (`Reader`); WAL mode lets them run beside the writer.
//!
//! **Group commit.** The writer collects commands into a group, runs them
//! all in one transaction (or one journal append, see "The inbox"),
//! commits, and only then answers each sender. With `synchronous=FULL` a
//! commit is on disk when it returns, so *accepted means durable*: MQTT acknowledges a message, and the local API answers
//! 201, only after that answer.
//!
//! **Commit policy (SD-card wear).** Every commit is an fsync and whole
//! 4 KiB pages written (a leaf per data source touched, the queue index,
//! the ledger, meta), however few readings it holds: at 20 readings/s,
//! commits every 100 ms wrote 10 KB per reading. So a group waits for
//! company while nobody needs it, and closes (`policy.rs`) at the first of:
//! `commit_max_readings` readings (large); a **hurry** from an input short
//! of in-flight room (a local API client waiting for its 201: every
//! `append`; the MQTT input when the broker's window is full of messages
//! waiting for this commit, inferred from a silence much longer than the
//! recent gaps, `ingest/mqtt/pace.rs`, or near its own bounds; a serial
//! port's pipeline three-quarters full; the uplink when its delivery marks
//! in flight reach their bound; anything a CLI command or a request waits
//! on), after which the group takes what is queued and commits; a **want**
//! from a caught-up bucket's uplink (its last claim emptied the queue: a
//! group holding the readings its next batch lacks closes, so forwarding
//! does not wait for the deadline); or `commit_max_delay` (1 s) after its
//! first command. Light traffic thus commits about once a second; a burst
//! commits as fast as the disk allows, in groups of what arrived during the
//! previous commit. Bytes written per day are measured (`wear.rs`) and
//! shown by `queue stats`.
//!
//! **The inbox: each reading written about once** (`inbox/`). A commit
//! of 20 readings into the table rewrites a leaf per data source, the
//! queue index's leaf, the ledger's and meta's pages: ~3 KB per reading.
//! So a group of appends, delivery marks without dead letters, counters
//! and state values goes to the inbox instead: its entries are appended
//! to a preallocated journal file (`gateway.inbox`, records with CRC-32C
//! and an epoch) with one `fdatasync` — each group starts on a 4 KiB page
//! of its own, so a small group writes one page and never rewrites one an
//! earlier group wrote — and shown in a mirror in memory; the senders are answered after the
//! sync (accepted still means durable). Every `store.inbox_readings`
//! (20,000) readings, when the journal is ¾ full, at stop, and before any
//! command that must write the database directly (a new bucket or data
//! source, a reject, dead letters, keys, …), one transaction moves the
//! inbox into `readings` in series order — each page written once per
//! move, in slices between groups (`inbox/drain.rs`) — applies the marks, counters and state, reserves the next range
//! of seqs and records the journal's epoch as moved; the mirror is cleared
//! under the same hold of its lock; then the journal starts a new epoch.
//! Readers see the union: claims merge the mirror by seq, stats and
//! counters add it, local queries run over the table and a copy of the
//! mirror's rows, each read taking its SQLite snapshot under the mirror's
//! read lock (`reader::consistent`). A crash replays the journal at the
//! next start (once: its epoch is recorded as moved in the move's own
//! transaction). Inbox seqs come from a range reserved in `meta.next_seq`,
//! so a command writing the database beside the daemon takes seqs above
//! them; one process owns the journal (`flock`), any other writes
//! directly. While the store uses more than half of `max_size` (or, with
//! `on_full = "reject"`, a bucket more than half its share), groups go to
//! the database directly, where the budget decides on each of them.
//!
//! **Queue without per-row updates.** Readings get a never-reused `seq`
//! (arrival order; the counter lives in `meta.next_seq` and moves in the
//! same transaction). The table is clustered by series (bucket, data
//! source, time), so local queries read a time range in one sweep; the
//! queue is read in seq order through the `(bucket, seq)` index. Each
//! bucket has a delivery cursor
//! `buckets.delivered_seq`: every reading of the bucket at or below it has
//! been delivered or dead-lettered. Marking a batch delivered is one UPDATE of
//! the cursor (SD cards wear), not an UPDATE per row. Rows at or below the
//! cursor are the history kept for local queries until `retention` prunes
//! them.
//!
//! **Retention never stalls a commit.** A retention pass starts every
//! minute (the first 10 s after start). It visits the data sources in id
//! order and finds each one's due rows through the series key
//! `(bucket, source, ts < cutoff)`, so a pass costs one index seek per data
//! source plus the rows that are due, however long the history. (Planned
//! through the queue index, as it first was, each data source's DELETE
//! walked the bucket's whole delivered history: 30 s per pass with 1,000
//! sources over 300k rows, and no commit meanwhile.) The rows are deleted
//! by the same range of the series key, a chunk at a time (the chunk ends
//! at its 2,000th row's time); `make_room` removes delivered history the
//! same way, oldest first by each data source's oldest delivered reading.
//! Since schema 4 the queue index `readings_queue` holds only the rows
//! that were undelivered when inserted (`queued = 1`): a move of live
//! traffic, already delivered from the inbox, writes no index entry (a
//! fifth of what a move wrote). Every row above its bucket's cursor is
//! queued, so the queue is read through that index with `queued = 1`
//! named; delivered history never goes through it. The pass runs in slices
//! of at most 25 ms or 2,000 rows, each its own transaction; one slice runs
//! after every group and more while the queue is empty, so a commit waits
//! for one slice at most, a pass always progresses under steady ingest, and
//! a stop waits for none (the pass is abandoned and resumes from the start
//! next time). `/health` reports the writer late when one transaction runs
//! past 2 s.
//!
//! **Ledger.** Counters per bucket, changed in the same transaction as the
//! rows they count: `accepted`, `delivered`, `dead_lettered`, `dropped` (and
//! `dropped:<reason>`); bucket 0 holds `rejected:<reason>`. The invariant
//! `accepted = delivered + queued + dead_lettered + dropped` holds at every
//! commit, with `queued` = rows above the cursor. Delivery marks count the
//! rows that still exist in the marked range, so a row dropped while its
//! batch was in flight is counted once, as dropped.
//!
//! **Bounded.** Pages in use (`page_count - freelist_count`) are kept below
//! `max_size` minus a headroom for the WAL. Everything a group adds counts
//! against that budget: readings (at the bytes per reading learnt from
//! commits), rejects and dead letters. Before a group would pass it, room
//! is made in this order, each oldest first: rejects (kept only for
//! inspection; already counted by reason; `rejects_evicted` at bucket 0),
//! then delivered history (safe upstream), then dead letters (they exist
//! nowhere else, so after the history, and never for bad input alone;
//! still counted as `dead_lettered`, so the ledger invariant holds; the
//! eviction is counted per bucket as `dead_letter_evicted`, WARN); then,
//! for a group with readings, with `on_full = "drop_oldest"`, the oldest
//! undelivered readings of the bucket using most for its fair share
//! (counted as `dropped:store_full`, WARN); with `on_full = "reject"`, the
//! new readings are refused with [`StoreError::Full`] and never
//! acknowledged — per bucket, once its share is full (a reservation), so
//! one bucket neither erases nor blocks another (`budget.rs`, "Fair
//! shares"; each bucket's undelivered bytes are the ledger's `queued_bytes`). A reject
//! keeps at most [`REJECT_ORIGIN_LIMIT`], [`REJECT_DETAIL_LIMIT`] and
//! [`REJECT_RAW_LIMIT`] bytes, and at most `max_rejects` rows. Freed pages
//! are reused, so the file does not grow past the budget. The headroom
//! exists because in WAL mode SQLite cannot even DELETE on a full disk.
//!
//! **Data sources per bucket.** Data sources are never removed, and each is
//! a step of every retention pass, so a bucket holds at most
//! `max_sources_per_bucket`. The writer (`apply.rs`) checks each append
//! before storing any of it, counting a bucket's sources only when a new
//! one appears (rare).
//! A reading that would create one more is *kept aside, not refused*, when it
//! comes from MQTT or serial: it becomes a reject `too_many_sources`
//! (counted) in the same transaction, and the rest of the command is stored,
//! so an input acknowledges the whole batch and never retries a refusal, and
//! good readings of the same batch are not lost. A command from the local API
//! is refused whole with [`StoreError::SourceLimit`] (nothing stored, a 400:
//! the client still holds its data and is told why). A source's row keeps
//! when it was first known (`created_at`, dakkio's `createdAt`) and, for one
//! created through the local API ([`Command::CreateSource`], within the same
//! cap), what it was created with (`profile`, JSON); a bucket's row keeps
//! its `created_at` (rows for the configured buckets are made at start).
//!
//! **Disk full and I/O errors.** `SQLITE_FULL` rolls the group back and
//! answers [`StoreError::DiskFull`]: nothing is acknowledged, the inputs keep
//! their data (MQTT at the broker, serial in memory, the API client gets 503)
//! and retry; the writer keeps trying and ingest resumes when space returns.
//! Any other I/O error during a commit is fatal: the writer stops and the
//! process exits non-zero, so systemd restarts it on a fresh connection.
//!
//! **Crash and corruption.** WAL with `synchronous=FULL` survives a crash or
//! power cut at any moment with every reported commit present. At open, the
//! file is checked (`PRAGMA quick_check` for databases up to
//! [`FULL_CHECK_LIMIT`], a structural read above, so that start-up does not
//! read a whole large file from the SD card); a corrupt file is moved aside
//! with a timestamped name, an ERROR is logged and a fresh database is
//! created. A commit that meets corruption the cheap check missed leaves a
//! marker and exits; the restart then runs the full check and moves the file
//! aside — one restart, never a crash loop.
//!
//! # Files
//!
//! One private file per role; this file holds the types, the handle and
//! [`open`].
//!
//! | file | role |
//! |---|---|
//! | `open.rs` | open, check, move a corrupt file aside, migrate (`schema.rs`) |
//! | `writer.rs` | the writer thread: group collection, one transaction per group, answers after the commit |
//! | `policy.rs` | the commit policy: when a group closes; the hurry and want signals |
//! | `wear.rs` | bytes written per day, from `/proc/self/io` |
//! | `apply.rs` | the SQL of each command and every ledger change |
//! | `budget.rs` | the size budget (`make_room`) and the `on_full` policy |
//! | `retention.rs` | retention passes in slices between groups |
//! | `reader.rs`, `query.rs` | read connections: claims, stats, local queries |
//! | `alerts.rs` | alert rules and their notification queue (schema version 3) |
//!
//! **Commit observer.** One [`CommitObserver`] may be installed
//! ([`StoreHandle::set_commit_observer`], the alert evaluator). After a
//! group has committed, and before its senders are answered, the writer
//! hands it the readings of that group's appends (not those diverted as
//! rejects, nothing of a group that rolled back). The writer keeps a
//! group's readings for it only while [`CommitObserver::wants`] says so
//! (no rule at all: nothing is kept); the observer must be cheap and never
//! block (it runs on the writer thread).

mod alerts;
mod apply;
mod budget;
mod clock_hold;
mod inbox;
mod latest;
mod open;
mod policy;
mod query;
mod query_pool;
mod reader;
mod rejects;
mod retention;
mod schema;
mod wear;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::StoreConfig;
use crate::reading::Reading;

pub use alerts::{AlertOp, AlertRuleRow, AlertStats, DeliveryRow, NewDelivery};
pub use budget::{fractions, ShareTable};
pub use clock_hold::{ClockGate, ClockOp};
pub use inbox::snapshot::inspect;
pub use latest::LatestReading;
pub use policy::Hurry;
pub use query::{Acc, AggGroup, Interval, PointRow, QueryStop, SeriesFilter, SourceSummary};
pub use reader::{BucketStats, DeadLetterRow, QueuedReading, Reader, RejectRow, StoreStats};
pub use rejects::{RejectFilter, Replayed};
pub use schema::VERSION as SCHEMA_VERSION;

/// The database file's name inside `data_dir`.
pub const FILE_NAME: &str = "gateway.db";

/// Databases up to this size get a full `PRAGMA quick_check` at open; larger
/// ones a structural check, unless a commit found corruption last time
/// (then `<file>.check-needed` exists and forces the full check).
///
/// 64 MiB: the full check of a 0.23 GiB store took 370 ms here (and would
/// take seconds reading an SD card); 64 MiB keeps start-up near 100 ms.
pub const FULL_CHECK_LIMIT: u64 = 64 << 20;

/// The marker a commit that met corruption leaves beside the database.
pub(crate) fn check_marker(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.check-needed", db.display()))
}

/// Room kept between the pages in use and `max_size` for the WAL and for
/// deletes on a nearly full disk.
pub fn headroom(max_size: u64) -> u64 {
    (max_size / 10).clamp(2 << 20, 64 << 20)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is full (`store.max_size`) and `store.on_full = \"reject\"`")]
    Full,
    #[error("the disk is full; ingest resumes when space is freed")]
    DiskFull,
    #[error("the store has stopped")]
    Closed,
    /// A delivery mark that names the mark before it (`after`), refused
    /// because that one is not committed: marks commit in order, or the
    /// earlier one's dead letters would be passed by the cursor.
    #[error("an earlier delivery mark of this bucket (up to seq {after}) is not committed yet")]
    MarkBehind { after: i64 },
    #[error("fatal storage error: {0}")]
    Fatal(String),
    #[error("the database is corrupt ({0}); it gets a full check at the next start")]
    Corrupt(String),
    #[error(
        "the database schema is version {found}, newer than this binary supports \
         ({supported}); upgrade dakkio-gateway or use another `gateway.data_dir`"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("cannot use the data directory `{path}`: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "bucket {bucket} already has its {limit} data sources \
         (`store.max_sources_per_bucket`); nothing was stored"
    )]
    SourceLimit { bucket: String, limit: u64 },
}

/// What a delivery mark up to `up_to` (submitted behind the mark up to
/// `after`, if any) does against its bucket's cursor: the one rule of the
/// database's path (`apply.rs`) and the inbox's, so that both keep marks
/// in their order.
#[derive(Debug, PartialEq)]
enum MarkGate {
    /// At or below the cursor: committed already, nothing to do.
    Done,
    /// The mark before it is not committed: refused for now.
    Behind(i64),
    /// Applies: moves the cursor from where it is to `up_to`.
    Apply,
}

fn mark_gate(cursor: i64, after: Option<i64>, up_to: i64) -> MarkGate {
    if up_to <= cursor {
        MarkGate::Done
    } else if let Some(after) = after.filter(|&a| a > cursor) {
        MarkGate::Behind(after)
    } else {
        MarkGate::Apply
    }
}

impl StoreError {
    /// Worth trying again later (the data is kept by the caller).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Full | StoreError::DiskFull | StoreError::MarkBehind { .. }
        )
    }
}

/// Where the readings of an append ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The seq of the first reading; the others follow contiguously.
    pub first_seq: i64,
    pub count: usize,
    pub store_id: u32,
}

impl Appended {
    /// The stable ids of the appended readings, in order.
    pub fn ids(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.count as i64).map(move |i| reading_id(self.store_id, self.first_seq + i))
    }
}

/// A reading's stable id: 24 lowercase hex characters (dakkio's id format),
/// the database's random id followed by the seq. Sent upstream in
/// `metadata.readingId` and used as `_id` by the local API.
pub fn reading_id(store_id: u32, seq: i64) -> String {
    format!("{store_id:08x}{:016x}", seq as u64)
}

/// The seq inside a reading id produced by this database, if it is one.
pub fn seq_from_reading_id(store_id: u32, id: &str) -> Option<i64> {
    if id.len() != 24 || !id.is_char_boundary(8) {
        return None;
    }
    let (sid, seq) = id.split_at(8);
    if u32::from_str_radix(sid, 16).ok()? != store_id {
        return None;
    }
    u64::from_str_radix(seq, 16).ok().map(|s| s as i64)
}

/// An input that could not become a reading.
#[derive(Debug, Clone)]
pub struct Reject {
    /// `mqtt:<topic>`, `serial:<path>`, `api`.
    pub origin: String,
    /// A stable snake_case reason (`invalid_json`, `no_route`, …).
    pub reason: String,
    /// A human explanation.
    pub detail: String,
    /// The input, truncated to [`REJECT_RAW_LIMIT`] bytes.
    pub raw: Vec<u8>,
}

/// Bytes of a reject's input kept (the rest is cut).
pub const REJECT_RAW_LIMIT: usize = 1024;
/// Bytes of a reject's origin kept: an MQTT topic can be 64 KiB.
pub const REJECT_ORIGIN_LIMIT: usize = 256;
/// Bytes of a reject's explanation kept (it may quote the input).
pub const REJECT_DETAIL_LIMIT: usize = 1024;

/// `s` cut to at most `max` bytes on a character boundary: what the store
/// keeps of a reject's text, and what a log line should show of it.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A point dakkio refused, with its answer.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub seq: i64,
    pub status: u16,
    pub message: String,
    pub details: Option<String>,
}

/// A key issued by the local API (the hash only).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub id: String,
    pub bucket_id: String,
    /// `write` or `read`.
    pub kind: String,
    pub name: String,
    pub hash: [u8; 32],
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// State the writer publishes for health and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriterStatus {
    pub disk_full: bool,
    /// At the `max_size` budget with `on_full = "reject"`.
    pub full: bool,
    pub used_bytes: u64,
    /// Groups committed since start (watchdog progress).
    pub commits: u64,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Work for the writer thread.
pub(crate) enum Command {
    Append(Vec<Reading>, Reply<Appended>),
    Reject(Reject, Reply<()>),
    MarkDelivered {
        bucket_id: String,
        up_to_seq: i64,
        /// The previous mark's `up_to_seq` while that one is not known to
        /// be committed: this mark applies only once the cursor reached it
        /// (else [`StoreError::MarkBehind`], the group unharmed).
        after: Option<i64>,
        dead: Vec<DeadLetter>,
        reply: Reply<MarkOutcome>,
    },
    RetryDeadLetters(Option<Vec<i64>>, Reply<usize>),
    PurgeDeadLetters(Reply<usize>),
    /// Kept rejects (by id) and the readings each now decodes to
    /// (`rejects.rs`).
    ReplayRejects(Vec<(i64, Vec<Reading>)>, Reply<Replayed>),
    PurgeRejects(RejectFilter, Reply<usize>),
    InsertApiKey(ApiKeyRow, Reply<()>),
    DeleteApiKey(String, Reply<bool>),
    TouchApiKeys(Vec<(String, i64)>, Reply<()>),
    /// Add to global counters (ledger bucket 0), e.g. `serial:/dev/ttyUSB0:lines_ok`.
    Counters(Vec<(String, i64)>, Reply<()>),
    /// Set small state values (meta table), e.g. `uplink:<bucket>:pacing_ms`.
    SetState(Vec<(String, String)>, Reply<()>),
    /// Start a retention pass now; answered when it ends (then a passive
    /// checkpoint has run). The pass runs in slices between groups.
    Maintain(Reply<()>),
    /// Answered once a group passes through the writer (watchdog).
    Ping(Reply<()>),
    /// Re-stamp or release readings held for a trusted clock (`clock_hold.rs`).
    Clock(ClockOp, Reply<usize>),
    /// Alert rules and notifications (`alerts.rs`).
    Alerts(AlertOp, Reply<usize>),
    /// A data source created through the local API; refused with
    /// [`StoreError::SourceLimit`] beyond `store.max_sources_per_bucket`.
    CreateSource(NewSource, Reply<()>),
    /// Rows for the configured buckets (their `createdAt`), made at start.
    EnsureBuckets(Vec<String>, Reply<()>),
}

/// A data source created through the local API.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSource {
    pub bucket_id: String,
    pub source_id: String,
    /// A JSON object: name, type, description, schema, downsampling.
    pub profile_json: String,
    pub at_ms: i64,
}

/// Told about readings once their transaction has committed (see the
/// module doc). Runs on the writer thread: cheap, never blocking.
pub trait CommitObserver: Send + Sync {
    /// Whether the writer should keep a group's readings for
    /// [`CommitObserver::committed`] at all (false: no rule exists).
    fn wants(&self) -> bool;
    /// Readings of one append, committed.
    fn committed(&self, readings: &[Reading]);
}

/// The installed observer, shared by the handles and the writer.
pub(crate) type ObserverSlot = Arc<std::sync::OnceLock<Arc<dyn CommitObserver>>>;

impl Command {
    /// The command's name, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Command::Append(..) => "append",
            Command::Reject(..) => "reject",
            Command::MarkDelivered { .. } => "mark",
            Command::RetryDeadLetters(..) => "retry_dead_letters",
            Command::PurgeDeadLetters(..) => "purge_dead_letters",
            Command::ReplayRejects(..) => "replay_rejects",
            Command::PurgeRejects(..) => "purge_rejects",
            Command::InsertApiKey(..) => "insert_api_key",
            Command::DeleteApiKey(..) => "delete_api_key",
            Command::TouchApiKeys(..) => "touch_api_keys",
            Command::Counters(..) => "counters",
            Command::SetState(..) => "set_state",
            Command::Maintain(..) => "maintain",
            Command::Ping(..) => "ping",
            Command::Clock(..) => "clock",
            Command::Alerts(..) => "alerts",
            Command::CreateSource(..) => "create_source",
            Command::EnsureBuckets(..) => "ensure_buckets",
        }
    }

    fn readings(&self) -> usize {
        match self {
            Command::Append(r, _) => r.len(),
            Command::ReplayRejects(items, _) => items.iter().map(|(_, r)| r.len()).sum(),
            _ => 0,
        }
    }

    /// Bytes this command adds besides readings (counted against the
    /// size budget): a reject's kept text and input; a dead letter is a
    /// copy of a reading, counted as `dead_letters` readings by the caller.
    fn other_bytes(&self) -> u64 {
        match self {
            Command::Reject(r, _) => {
                (r.origin.len().min(REJECT_ORIGIN_LIMIT)
                    + r.reason.len()
                    + r.detail.len().min(REJECT_DETAIL_LIMIT)
                    + r.raw.len().min(REJECT_RAW_LIMIT)
                    + 64) as u64
            }
            _ => 0,
        }
    }

    fn dead_letters(&self) -> usize {
        match self {
            Command::MarkDelivered { dead, .. } => dead.len(),
            _ => 0,
        }
    }
}

/// What one delivery mark did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MarkOutcome {
    pub delivered: u64,
    pub dead_lettered: u64,
}

/// A commit that has been submitted; await [`Pending::wait`] for its outcome.
#[must_use = "a reading is durable only once its commit is reported"]
pub struct Pending<T>(oneshot::Receiver<Result<T, StoreError>>);

impl<T> Pending<T> {
    pub async fn wait(self) -> Result<T, StoreError> {
        self.0.await.unwrap_or(Err(StoreError::Closed))
    }

    /// The outcome if it is there already, without waiting.
    pub fn try_take(&mut self) -> Option<Result<T, StoreError>> {
        match self.0.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(StoreError::Closed)),
        }
    }
}

/// Since when the writer thread has been inside a transaction (a group or
/// a pruning slice), on a monotonic clock; zero while it waits. Two atomic
/// stores per transaction, read by `/health` without waking the writer.
#[derive(Debug)]
pub(crate) struct Busy {
    base: std::time::Instant,
    /// Milliseconds since `base` plus one; 0 = idle.
    since: std::sync::atomic::AtomicU64,
}

impl Busy {
    fn new() -> Busy {
        Busy {
            base: std::time::Instant::now(),
            since: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn enter(&self) {
        let ms = self.base.elapsed().as_millis() as u64 + 1;
        self.since.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn leave(&self) {
        self.since.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the current transaction has run, if one is running.
    fn current(&self) -> Option<std::time::Duration> {
        match self.since.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.base
                    .elapsed()
                    .saturating_sub(std::time::Duration::from_millis(ms - 1)),
            ),
        }
    }
}

/// The cheap, cloneable way to talk to the store.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Command>,
    signals: Arc<policy::Signals>,
    reader: Arc<Reader>,
    status: watch::Receiver<WriterStatus>,
    busy: Arc<Busy>,
    store_id: u32,
    path: PathBuf,
    /// The clock the writer holds readings by (`clock_hold.rs`).
    clock: Arc<ClockGate>,
    observer: ObserverSlot,
    shares: budget::SharedShares,
}

impl StoreHandle {
    /// The writer's clock gate: the clock-trust task waits on it and asks
    /// for re-stamps through [`StoreHandle::clock`].
    pub fn clock_gate(&self) -> &Arc<ClockGate> {
        &self.clock
    }

    /// Re-stamp or release held readings; how many were changed.
    pub async fn clock(&self, op: ClockOp) -> Result<usize, StoreError> {
        self.send(|r| Command::Clock(op, r)).await?.wait().await
    }

    /// Set each bucket's share of the store (`buckets[].store_share`; see
    /// "Fair shares" in `budget.rs`): at start and on every reload. Applies
    /// from the next group on.
    pub fn set_shares(&self, table: ShareTable) {
        let table = Arc::new(table);
        match self.shares.write() {
            Ok(mut t) => *t = table,
            Err(p) => *p.into_inner() = table,
        }
    }

    async fn send<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<Pending<T>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Pending(rx))
    }

    /// Send, hurry the commit and wait for it: for commands a client waits
    /// on (an API request, a CLI command).
    async fn send_hurried<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, StoreError> {
        let pending = self.send(make).await?;
        self.hurry(Hurry::Command);
        pending.wait().await
    }

    /// Queue readings for the next group commit; the returned [`Pending`]
    /// resolves once they are durable. Waits while the writer is saturated.
    pub async fn submit(&self, readings: Vec<Reading>) -> Result<Pending<Appended>, StoreError> {
        self.send(|r| Command::Append(readings, r)).await
    }

    /// Append and wait for the commit, which is hurried: the caller (a
    /// local API client waiting for its 201) is short of room by definition.
    pub async fn append(&self, readings: Vec<Reading>) -> Result<Appended, StoreError> {
        let pending = self.submit(readings).await?;
        self.hurry(Hurry::Api);
        pending.wait().await
    }

    /// Ask the writer to commit the open group now, with whatever is queued
    /// already (everything submitted before this call is): an input is short
    /// of in-flight room (see `policy.rs`). Cheap; never waits.
    pub fn hurry(&self, by: Hurry) {
        metrics::counter!("dakkio_store_hurries_total", "by" => by.as_str()).increment(1);
        self.signals.hurry.notify_one();
    }

    /// The uplink of `bucket` has caught up and lacks `readings` for its next
    /// batch (`Some`), or has a backlog again (`None`): a group holding that
    /// many of the bucket's readings commits without waiting for the
    /// deadline, so forwarding does not wait for the commit window.
    pub fn want_readings(&self, bucket: &str, readings: Option<usize>) {
        self.signals.want(bucket, readings);
    }

    /// Keep a bad input aside (counted under `rejected:<reason>`).
    pub async fn submit_reject(&self, reject: Reject) -> Result<Pending<()>, StoreError> {
        self.send(|r| Command::Reject(reject, r)).await
    }

    /// Record that dakkio accepted the bucket's readings up to `up_to_seq`,
    /// except `dead`, which it refused.
    pub async fn mark_delivered(
        &self,
        bucket_id: &str,
        up_to_seq: i64,
        dead: Vec<DeadLetter>,
    ) -> Result<Pending<MarkOutcome>, StoreError> {
        self.mark_delivered_after(bucket_id, None, up_to_seq, dead)
            .await
    }

    /// [`mark_delivered`](Self::mark_delivered) for a mark submitted while
    /// the previous one (up to `after`) may not be committed yet: it applies
    /// only after that one, else it is answered
    /// [`StoreError::MarkBehind`] (transient: submit both again, in order).
    /// Marks so commit in their order even when a full disk refuses one
    /// group and lets the next through (a mark without dead letters fits
    /// the preallocated inbox journal), which would otherwise move the
    /// cursor past the refused mark's dead letters.
    pub async fn mark_delivered_after(
        &self,
        bucket_id: &str,
        after: Option<i64>,
        up_to_seq: i64,
        dead: Vec<DeadLetter>,
    ) -> Result<Pending<MarkOutcome>, StoreError> {
        let bucket_id = bucket_id.to_owned();
        self.send(|reply| Command::MarkDelivered {
            bucket_id,
            up_to_seq,
            after,
            dead,
            reply,
        })
        .await
    }

    /// Put dead letters back into the queue (all when `ids` is `None`).
    pub async fn retry_dead_letters(&self, ids: Option<Vec<i64>>) -> Result<usize, StoreError> {
        self.send_hurried(|r| Command::RetryDeadLetters(ids, r))
            .await
    }

    pub async fn purge_dead_letters(&self) -> Result<usize, StoreError> {
        self.send_hurried(Command::PurgeDeadLetters).await
    }

    /// Move kept rejects into the queue as the readings each now decodes
    /// to, in one transaction (a reject already gone is skipped).
    pub async fn replay_rejects(
        &self,
        items: Vec<(i64, Vec<Reading>)>,
    ) -> Result<Replayed, StoreError> {
        self.send(|r| Command::ReplayRejects(items, r))
            .await?
            .wait()
            .await
    }

    /// Delete the kept rejects matching `filter` (they stay counted).
    pub async fn purge_rejects(&self, filter: RejectFilter) -> Result<usize, StoreError> {
        self.send(|r| Command::PurgeRejects(filter, r))
            .await?
            .wait()
            .await
    }

    pub async fn insert_api_key(&self, row: ApiKeyRow) -> Result<(), StoreError> {
        self.send_hurried(|r| Command::InsertApiKey(row, r)).await
    }

    /// Delete an issued key; false when no key has that id.
    pub async fn delete_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.send_hurried(|r| Command::DeleteApiKey(id, r)).await
    }

    /// Record `lastUsedAt` for keys, in one transaction (batched by caller).
    pub async fn touch_api_keys(&self, used: Vec<(String, i64)>) -> Result<(), StoreError> {
        self.send(|r| Command::TouchApiKeys(used, r))
            .await?
            .wait()
            .await
    }

    /// Add to global counters kept in the ledger (bucket 0), committed with
    /// the next group: no extra transaction, no extra fsync. Use names of
    /// the form `part:instance:counter`.
    pub async fn add_counters(
        &self,
        deltas: Vec<(String, i64)>,
    ) -> Result<Pending<()>, StoreError> {
        self.send(|r| Command::Counters(deltas, r)).await
    }

    /// Set small state values that other processes (`queue stats`) read,
    /// committed with the next group. Write them on change or seldom: each
    /// is a row update.
    pub async fn set_state(
        &self,
        values: Vec<(String, String)>,
    ) -> Result<Pending<()>, StoreError> {
        self.send(|r| Command::SetState(values, r)).await
    }

    /// Answered once the writer has run a group: proof that it is not
    /// wedged (the systemd watchdog is fed only then). Writes nothing.
    /// Record a data source created through the local API.
    pub async fn create_source(&self, source: NewSource) -> Result<(), StoreError> {
        self.send(|r| Command::CreateSource(source, r))
            .await?
            .wait()
            .await
    }

    /// Make sure each bucket has its row (and so its `createdAt`).
    pub async fn ensure_buckets(&self, bucket_ids: Vec<String>) -> Result<(), StoreError> {
        self.send(|r| Command::EnsureBuckets(bucket_ids, r))
            .await?
            .wait()
            .await
    }

    /// Answered once a group passes through the writer (the watchdog's
    /// liveness check). Hurried: a ping must not wait for the commit
    /// deadline, which may be longer than the watchdog allows (it asks
    /// once per third of the watchdog period: at most one early commit).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.send_hurried(Command::Ping).await
    }

    /// Run a retention pass now (in slices, between groups) and a passive
    /// checkpoint; returns when the pass has ended.
    pub async fn maintain(&self) -> Result<(), StoreError> {
        self.send(Command::Maintain).await?.wait().await
    }

    /// Read-side access (claims, queries, stats).
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    pub fn status(&self) -> watch::Receiver<WriterStatus> {
        self.status.clone()
    }

    pub fn store_id(&self) -> u32 {
        self.store_id
    }

    /// How long the writer has been inside its current transaction, if it
    /// is in one. Groups and pruning slices take milliseconds; seconds mean
    /// commits are waiting (a slow or failing disk).
    pub fn writer_busy_for(&self) -> Option<std::time::Duration> {
        self.busy.current()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Install the commit observer (once per store; false if one is set).
    pub fn set_commit_observer(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Change alert rules or notifications (`store/alerts.rs`); answers a
    /// count (rows affected, or notifications given up to make room).
    pub async fn alerts(&self, op: AlertOp) -> Result<usize, StoreError> {
        self.send(|r| Command::Alerts(op, r)).await?.wait().await
    }
}

/// The writer thread; join it after every [`StoreHandle`] is dropped to
/// have the last group committed and the database checkpointed and closed.
pub struct WriterThread {
    join: std::thread::JoinHandle<Result<(), StoreError>>,
}

impl WriterThread {
    /// Wait (blocking) for the writer to finish; call from a blocking
    /// context once every handle is dropped.
    pub fn join(self) -> Result<(), StoreError> {
        self.join
            .join()
            .unwrap_or_else(|_| Err(StoreError::Fatal("the store writer panicked".into())))
    }

    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

/// Open (creating, migrating, checking) the database in `data_dir` and start
/// its writer thread.
pub fn open(
    config: &StoreConfig,
    data_dir: &Path,
) -> Result<(StoreHandle, WriterThread), StoreError> {
    open_with_clock(config, data_dir, crate::clock::system())
}

/// [`open`] with the clock the writer holds receive-time readings by
/// (tests play an unsynchronised one).
pub fn open_with_clock(
    config: &StoreConfig,
    data_dir: &Path,
    clock: Arc<dyn crate::clock::ClockSource>,
) -> Result<(StoreHandle, WriterThread), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(FILE_NAME);
    let conn = open::open_checked(&path, config)?;
    let store_id = open::store_id(&conn)?;
    let mirror = inbox::mirror::SharedMirror::default();
    let reader = Arc::new(Reader::with_mirror(path.clone(), store_id, mirror.clone()));
    let (tx, rx) = mpsc::channel(1024);
    let (status_tx, status) = watch::channel(WriterStatus::default());
    let busy = Arc::new(Busy::new());
    clock_hold::ensure(&conn)?;
    let clock = Arc::new(ClockGate::new(clock));
    let signals = Arc::new(policy::Signals::default());
    let shares = budget::SharedShares::default();
    let observer = ObserverSlot::default();
    let writer = writer::Writer::new(
        conn,
        config.clone(),
        store_id,
        writer::Links {
            status: status_tx,
            busy: busy.clone(),
            clock: clock.clone(),
            signals: signals.clone(),
            shares: shares.clone(),
            observer: observer.clone(),
            mirror,
        },
    )?;
    let join = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StoreError::Fatal(format!("cannot start the store writer: {e}")))?;
    Ok((
        StoreHandle {
            tx,
            signals,
            reader,
            status,
            busy,
            store_id,
            path,
            clock,
            observer,
            shares,
        },
        WriterThread { join },
    ))
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
pub(crate) mod tests;
