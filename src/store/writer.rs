//! The writer thread: the only connection that writes. It collects commands
//! into groups, runs each group in one transaction, answers after the commit,
//! keeps the database inside its size budget and prunes old history.
//! See the module doc of `store` for the protocol.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Transaction};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::{
    schema, Appended, Command, MarkOutcome, StoreError, WriterStatus, FULL_CHECK_LIMIT,
    REJECT_RAW_LIMIT,
};
use crate::config::{OnFull, StoreConfig, Synchronous};
use crate::reading::{now_ms, Origin, Reading};

/// How often a retention pass starts.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);
/// The first pass after start: soon, so a gateway that was off for a while
/// sheds its expired history early, but not in the middle of start-up.
const FIRST_MAINTENANCE: Duration = Duration::from_secs(10);
/// Rows deleted per statement when pruning or making room: small enough to
/// keep a group's latency low, large enough to free whole pages.
const PRUNE_CHUNK: i64 = 2000;
/// The longest a pruning slice holds the writer. A pass is cut into slices
/// of its own transactions, and commands waiting in the queue run between
/// two slices, so a commit waits for at most one slice.
const PRUNE_SLICE: Duration = Duration::from_millis(25);
/// Data sources read per step of a slice.
const PRUNE_SOURCES_PER_STEP: i64 = 64;

/// Open the database, check it, move it aside if it is corrupt, migrate it.
pub(crate) fn open_checked(path: &Path, config: &StoreConfig) -> Result<Connection, StoreError> {
    open_checked_with_limit(path, config, FULL_CHECK_LIMIT)
}

/// [`open_checked`] with the size up to which the full check runs (tests).
pub(crate) fn open_checked_with_limit(
    path: &Path,
    config: &StoreConfig,
    full_check_limit: u64,
) -> Result<Connection, StoreError> {
    match open_and_check(path, config, full_check_limit) {
        Ok(conn) => Ok(conn),
        Err(Opened::Corrupt(why)) => {
            let aside = move_aside(path)?;
            error!(
                path = %path.display(),
                moved_to = %aside.display(),
                reason = %why,
                "database is corrupt; moved it aside and started a fresh one"
            );
            let _ = std::fs::remove_file(super::check_marker(path));
            open_and_check(path, config, full_check_limit).map_err(|e| match e {
                Opened::Corrupt(why) => {
                    StoreError::Fatal(format!("a fresh database is corrupt too: {why}"))
                }
                Opened::Error(e) => e,
            })
        }
        Err(Opened::Error(e)) => Err(e),
    }
}

enum Opened {
    Corrupt(String),
    Error(StoreError),
}

impl From<rusqlite::Error> for Opened {
    fn from(e: rusqlite::Error) -> Self {
        if is_corruption(&e) {
            Opened::Corrupt(e.to_string())
        } else {
            Opened::Error(StoreError::Sqlite(e))
        }
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn open_and_check(
    path: &Path,
    config: &StoreConfig,
    full_check_limit: u64,
) -> Result<Connection, Opened> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Opened::Error(StoreError::Fatal(format!(
            "cannot switch `{}` to WAL mode (got `{mode}`)",
            path.display()
        ))));
    }
    let sync = match config.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync};
         PRAGMA wal_autocheckpoint=1000;
         PRAGMA journal_size_limit={};
         PRAGMA foreign_keys=OFF;",
        4 << 20
    ))?;
    let marker = super::check_marker(path);
    let forced = marker.exists();
    if size > 0 {
        if size <= full_check_limit || forced {
            // Every page is read once: a small cache is enough, and the
            // default one would stay filled (idle RSS) after the check.
            conn.execute_batch("PRAGMA cache_size=-256")?;
            let verdict: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            conn.execute_batch("PRAGMA shrink_memory; PRAGMA cache_size=-2000")?;
            if verdict != "ok" {
                return Err(Opened::Corrupt(verdict));
            }
        } else {
            // Too large to read whole at start on an SD card: read the
            // schema and both ends of the queue, which touches the pages a
            // torn write most likely hit.
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
            for order in ["ASC", "DESC"] {
                conn.query_row(
                    &format!(
                        "SELECT count(*) FROM (SELECT vals FROM readings
                         ORDER BY bucket {order}, source {order}, ts {order}, seq {order} LIMIT 1)"
                    ),
                    [],
                    |r| r.get::<_, i64>(0),
                )?;
            }
        }
    }
    schema::migrate(&mut conn).map_err(|e| match e {
        StoreError::Sqlite(e) => Opened::from(e),
        other => Opened::Error(other),
    })?;
    if forced {
        info!(path = %path.display(), "full check after a corrupt commit: the database is intact");
        let _ = std::fs::remove_file(&marker);
    }
    Ok(conn)
}

/// Rename a corrupt database (and its WAL and shared-memory files) to
/// `gateway.db.corrupt-<UTC time>`.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = crate::reading::format_timestamp(now_ms())
        .replace([':', '-'], "")
        .replace(".000", "");
    let name = path
        .file_name()
        .map_or("gateway.db".into(), |n| n.to_string_lossy().into_owned());
    let aside = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    let io = |source| StoreError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::rename(path, &aside).map_err(io)?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            std::fs::rename(&side, format!("{}{suffix}", aside.display())).map_err(io)?;
        }
    }
    Ok(aside)
}

/// The seq the next reading gets (meta `next_seq`).
fn load_next_seq(conn: &Connection) -> Result<i64, StoreError> {
    let text: String =
        conn.query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
            r.get(0)
        })?;
    text.parse()
        .map_err(|_| StoreError::Fatal(format!("bad next_seq `{text}` in the database")))
}

pub(crate) fn store_id(conn: &Connection) -> Result<u32, StoreError> {
    let hex: String = conn.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
        r.get(0)
    })?;
    u32::from_str_radix(&hex, 16)
        .map_err(|_| StoreError::Fatal(format!("bad store id `{hex}` in the database")))
}

pub(crate) struct Writer {
    conn: Connection,
    config: StoreConfig,
    store_id: u32,
    status: watch::Sender<WriterStatus>,
    /// bucket id (hex) → buckets.id; cleared when a transaction rolls back.
    buckets: HashMap<String, i64>,
    /// (buckets.id, data source id) → sources.id; cleared likewise.
    sources: HashMap<(i64, String), i64>,
    page_size: u64,
    /// The seq the next reading gets; persisted in meta `next_seq` by the
    /// transaction that uses it, restored from there after a rollback.
    next_seq: i64,
    /// Bytes of pages one reading takes, learnt from commits.
    bytes_per_reading: f64,
    commits: u64,
    disk_full_since: Option<Instant>,
    warned_full: bool,
    /// Since when the writer has been in a transaction; read by `/health`.
    busy: Arc<super::Busy>,
    /// The retention pass in progress, if any.
    pass: Option<PrunePass>,
    /// `maintain()` callers, answered when the pass ends.
    pass_waiters: Vec<super::Reply<()>>,
}

/// A retention pass, resumable between slices: data sources are visited in
/// id order, each through the series key `(bucket, source, ts)`, so a pass
/// costs one index seek per data source plus the rows that are due.
#[derive(Debug)]
struct PrunePass {
    /// Readings older than this (Unix ms) and delivered are due.
    cutoff: i64,
    /// Every data source with an id up to this one is done.
    after: i64,
    rows: usize,
    slices: usize,
    started: Instant,
}

/// The answer for one command, sent only after the group committed.
enum Outcome {
    Appended(super::Reply<Appended>, Result<Appended, StoreError>),
    Unit(super::Reply<()>, Result<(), StoreError>),
    Marked(super::Reply<MarkOutcome>, Result<MarkOutcome, StoreError>),
    Count(super::Reply<usize>, Result<usize, StoreError>),
    Bool(super::Reply<bool>, Result<bool, StoreError>),
}

impl Outcome {
    fn send(self) {
        // A sender that went away (a cancelled request) is not an error.
        match self {
            Outcome::Appended(tx, r) => drop(tx.send(r)),
            Outcome::Unit(tx, r) => drop(tx.send(r)),
            Outcome::Marked(tx, r) => drop(tx.send(r)),
            Outcome::Count(tx, r) => drop(tx.send(r)),
            Outcome::Bool(tx, r) => drop(tx.send(r)),
        }
    }

    /// Replace the result with `err` (the transaction rolled back).
    fn fail(self, err: impl Fn() -> StoreError) -> Outcome {
        match self {
            Outcome::Appended(tx, _) => Outcome::Appended(tx, Err(err())),
            Outcome::Unit(tx, _) => Outcome::Unit(tx, Err(err())),
            Outcome::Marked(tx, _) => Outcome::Marked(tx, Err(err())),
            Outcome::Count(tx, _) => Outcome::Count(tx, Err(err())),
            Outcome::Bool(tx, _) => Outcome::Bool(tx, Err(err())),
        }
    }
}

fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Full => StoreError::Full,
        StoreError::DiskFull => StoreError::DiskFull,
        StoreError::Corrupt(why) => StoreError::Corrupt(why.clone()),
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Fatal(other.to_string()),
    }
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        config: StoreConfig,
        store_id: u32,
        status: watch::Sender<WriterStatus>,
        busy: Arc<super::Busy>,
    ) -> Result<Writer, StoreError> {
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
            busy,
            pass: None,
            pass_waiters: Vec::new(),
        };
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
                let first = tokio::select! {
                    biased;
                    c = rx.recv() => c,
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

    /// Gather a group: up to `commit_max_readings` readings, or until the
    /// first command has waited `commit_max_delay`.
    async fn collect(&self, first: Command, rx: &mut mpsc::Receiver<Command>) -> Vec<Command> {
        let deadline = tokio::time::Instant::now() + self.config.commit_max_delay;
        let mut readings = first.readings();
        let mut group = vec![first];
        while readings < self.config.commit_max_readings {
            let next = match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if self.config.commit_max_delay.is_zero() {
                        None
                    } else {
                        tokio::select! {
                            c = rx.recv() => c,
                            _ = tokio::time::sleep_until(deadline) => None,
                        }
                    }
                }
            };
            let Some(c) = next else { break };
            readings += c.readings();
            group.push(c);
        }
        group
    }

    /// Run a group in one transaction and answer every command.
    fn execute(&mut self, group: Vec<Command>) -> Result<(), StoreError> {
        let incoming: usize = group.iter().map(Command::readings).sum();
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
                outcomes.into_iter().for_each(Outcome::send);
                Ok(())
            }
            Err((outcomes, e)) => {
                self.buckets.clear();
                self.sources.clear();
                if let Ok(n) = load_next_seq(&self.conn) {
                    self.next_seq = n;
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
        }
    }

    /// The transaction of one group. On failure every outcome is returned so
    /// that its sender can be told.
    #[allow(clippy::type_complexity)]
    fn transaction(
        &mut self,
        group: Vec<Command>,
        incoming: usize,
    ) -> Result<Vec<Outcome>, (Vec<Outcome>, StoreError)> {
        let mut outcomes = Vec::with_capacity(group.len());
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
            ..
        } = self;
        let seq_before = *next_seq;
        let mut ctx = TxCtx {
            store_id: *store_id,
            next_seq,
            buckets,
            sources,
            config,
            page_size: *page_size,
            warned_full,
        };
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => return Err((fail_all(group), classify(e))),
        };
        let mut room = Ok(());
        if incoming > 0 {
            let need = (incoming as f64 * *bytes_per_reading) as u64;
            match ctx.make_room(&tx, need) {
                Ok(r) => room = r,
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
            if let Err(e) = bump(&tx, *bucket, "accepted", *n) {
                return Err((outcomes, classify(e)));
            }
        }
        if *ctx.next_seq != seq_before {
            if let Err(e) = tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
                [ctx.next_seq.to_string()],
            ) {
                return Err((outcomes, classify(e)));
            }
        }
        let used_after = ctx.used(&tx).unwrap_or(used_before);
        if let Err(e) = tx.commit() {
            return Err((outcomes, classify(e)));
        }
        let appended: i64 = accepted.values().sum();
        if appended >= 100 && used_after > used_before {
            let observed = (used_after - used_before) as f64 / appended as f64;
            *bytes_per_reading = (*bytes_per_reading * 0.7 + observed * 0.3).clamp(40.0, 4096.0);
        }
        Ok(outcomes)
    }

    fn used_bytes(&self, conn: &Connection) -> Result<u64, rusqlite::Error> {
        used_bytes(conn, self.page_size)
    }

    fn start_pass(&mut self) {
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
    fn prune_slice(&mut self) -> Result<bool, StoreError> {
        let Some(mut pass) = self.pass.take() else {
            return Ok(true);
        };
        self.busy.enter();
        let result = (|| {
            let tx = self.conn.transaction()?;
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

fn fail_all(group: Vec<Command>) -> Vec<Outcome> {
    group
        .into_iter()
        .map(|c| match c {
            Command::Append(_, r) => Outcome::Appended(r, Err(StoreError::Closed)),
            Command::Reject(_, r) => Outcome::Unit(r, Err(StoreError::Closed)),
            Command::MarkDelivered { reply, .. } => Outcome::Marked(reply, Err(StoreError::Closed)),
            Command::RetryDeadLetters(_, r) | Command::PurgeDeadLetters(r) => {
                Outcome::Count(r, Err(StoreError::Closed))
            }
            Command::InsertApiKey(_, r)
            | Command::TouchApiKeys(_, r)
            | Command::Counters(_, r)
            | Command::SetState(_, r)
            | Command::Maintain(r)
            | Command::Ping(r) => Outcome::Unit(r, Err(StoreError::Closed)),
            Command::DeleteApiKey(_, r) => Outcome::Bool(r, Err(StoreError::Closed)),
        })
        .collect()
}

/// SQLITE_FULL is transient (space can come back); everything else that
/// fails a commit is fatal.
fn classify(e: rusqlite::Error) -> StoreError {
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

fn bump(tx: &Transaction, bucket: i64, name: &str, delta: i64) -> Result<(), rusqlite::Error> {
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

/// Up to `limit` delivered rows of one data source older than `cutoff`:
/// found through the series key (`bucket, source, ts`), never through the
/// queue index. The unary `+` on `seq` keeps SQLite from planning the
/// search through `readings_queue (bucket, seq)`, which would visit the
/// bucket's whole delivered history for every data source (seconds per
/// pass with months of history, and nothing commits meanwhile). Each row
/// found is then deleted by its `(bucket, seq)` key.
const PRUNE_SOURCE_SQL: &str = "DELETE FROM readings WHERE bucket = ?1 AND seq IN (
     SELECT seq FROM readings
     WHERE bucket = ?1 AND source = ?2 AND ts < ?3 AND +seq <= ?4
     LIMIT ?5)";

/// Delete the due rows of one data source, at most `limit`.
fn prune_source(
    conn: &Connection,
    (bucket, source, cursor): (i64, i64, i64),
    cutoff: i64,
    limit: i64,
) -> Result<usize, rusqlite::Error> {
    conn.prepare_cached(PRUNE_SOURCE_SQL)?
        .execute(params![bucket, source, cutoff, cursor, limit])
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
            if n as i64 == budget {
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

/// The bucket (and its cursor) whose oldest delivered (`delivered`) or
/// undelivered row is the oldest of all, through the queue index.
fn oldest_bucket(
    tx: &Transaction,
    cursors: &[(i64, i64)],
    delivered: bool,
) -> Result<Option<(i64, i64)>, rusqlite::Error> {
    let sql = if delivered {
        "SELECT min(seq) FROM readings WHERE bucket = ?1 AND seq <= ?2"
    } else {
        "SELECT min(seq) FROM readings WHERE bucket = ?1 AND seq > ?2"
    };
    let mut best: Option<(i64, i64, i64)> = None;
    for &(bucket, cursor) in cursors {
        let first: Option<i64> = tx
            .prepare_cached(sql)?
            .query_row(params![bucket, cursor], |r| r.get(0))?;
        if let Some(seq) = first {
            if best.is_none_or(|(s, _, _)| seq < s) {
                best = Some((seq, bucket, cursor));
            }
        }
    }
    Ok(best.map(|(_, b, c)| (b, c)))
}

/// What the transaction needs besides the connection.
struct TxCtx<'a> {
    store_id: u32,
    next_seq: &'a mut i64,
    buckets: &'a mut HashMap<String, i64>,
    sources: &'a mut HashMap<(i64, String), i64>,
    config: &'a StoreConfig,
    page_size: u64,
    warned_full: &'a mut bool,
}

type Step = Result<Outcome, (Outcome, rusqlite::Error)>;

impl TxCtx<'_> {
    fn used(&self, tx: &Transaction) -> Result<u64, rusqlite::Error> {
        used_bytes(tx, self.page_size)
    }

    fn budget(&self) -> u64 {
        self.config.max_size - super::headroom(self.config.max_size)
    }

    /// Free pages until `need` more bytes fit in the budget. `Ok(Err(Full))`
    /// when the policy is `reject` and there is no delivered history left.
    fn make_room(
        &mut self,
        tx: &Transaction,
        need: u64,
    ) -> Result<Result<(), StoreError>, rusqlite::Error> {
        let budget = self.budget();
        let fits = |used: u64| used + need <= budget;
        if fits(self.used(tx)?) {
            *self.warned_full = false;
            return Ok(Ok(()));
        }
        // Delivered history goes first: it is already safe upstream.
        let cursors: Vec<(i64, i64)> = tx
            .prepare_cached("SELECT id, delivered_seq FROM buckets")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut history = 0;
        while let Some((bucket, cursor)) = oldest_bucket(tx, &cursors, true)? {
            let n = tx
                .prepare_cached(
                    "DELETE FROM readings WHERE bucket = ?1 AND seq IN (
                         SELECT seq FROM readings WHERE bucket = ?1 AND seq <= ?2
                         ORDER BY seq LIMIT ?3)",
                )?
                .execute(params![bucket, cursor, PRUNE_CHUNK])?;
            history += n;
            if n == 0 || fits(self.used(tx)?) {
                break;
            }
        }
        if history > 0 {
            info!(
                rows = history,
                "store near its size limit: removed delivered history"
            );
        }
        if fits(self.used(tx)?) {
            return Ok(Ok(()));
        }
        if self.config.on_full == OnFull::Reject {
            if !*self.warned_full {
                warn!(
                    max_size = self.config.max_size,
                    "store is full of undelivered readings; refusing new readings \
                     (`store.on_full = \"reject\"`) until delivery frees space"
                );
                *self.warned_full = true;
            }
            return Ok(Err(StoreError::Full));
        }
        // drop_oldest: the oldest undelivered readings, counted per bucket.
        let mut dropped: HashMap<i64, i64> = HashMap::new();
        while let Some((bucket, cursor)) = oldest_bucket(tx, &cursors, false)? {
            let n = tx
                .prepare_cached(
                    "DELETE FROM readings WHERE bucket = ?1 AND seq IN (
                         SELECT seq FROM readings WHERE bucket = ?1 AND seq > ?2
                         ORDER BY seq LIMIT ?3)",
                )?
                .execute(params![bucket, cursor, PRUNE_CHUNK])?;
            *dropped.entry(bucket).or_default() += n as i64;
            if n == 0 || fits(self.used(tx)?) {
                break;
            }
        }
        let mut total = 0;
        for (bucket, n) in &dropped {
            bump(tx, *bucket, "dropped", *n)?;
            bump(tx, *bucket, "dropped:store_full", *n)?;
            total += n;
        }
        if total > 0 {
            warn!(
                readings = total,
                max_size = self.config.max_size,
                "store full: dropped the oldest undelivered readings (`store.on_full = \"drop_oldest\"`)"
            );
        }
        Ok(Ok(()))
    }

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
                tx.prepare_cached("INSERT INTO buckets (bucket_id) VALUES (?1)")?
                    .execute([bucket_id])?;
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
                tx.prepare_cached("INSERT INTO sources (bucket, source_id) VALUES (?1, ?2)")?
                    .execute(params![bucket, source_id])?;
                tx.last_insert_rowid()
            }
        };
        self.sources.insert((bucket, source_id.to_owned()), k);
        Ok(k)
    }

    // The error carries the reply sender back so the caller can answer it;
    // this is internal and on the cold path.
    #[allow(clippy::result_large_err)]
    fn apply(
        &mut self,
        tx: &Transaction,
        cmd: Command,
        room: &Result<(), StoreError>,
        accepted: &mut HashMap<i64, i64>,
    ) -> Step {
        match cmd {
            Command::Append(readings, reply) => {
                if let Err(e) = room {
                    return Ok(Outcome::Appended(reply, Err(copy_error(e))));
                }
                match self.append(tx, &readings, accepted) {
                    Ok(a) => Ok(Outcome::Appended(reply, a)),
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
                dead,
                reply,
            } => match self.mark(tx, &bucket_id, up_to_seq, &dead) {
                Ok(m) => Ok(Outcome::Marked(reply, Ok(m))),
                Err(e) => Err((Outcome::Marked(reply, Err(StoreError::Closed)), e)),
            },
            Command::RetryDeadLetters(ids, reply) => {
                match retry_dead(tx, ids.as_deref(), self.next_seq) {
                    Ok(n) => Ok(Outcome::Count(reply, Ok(n))),
                    Err(e) => Err((Outcome::Count(reply, Err(StoreError::Closed)), e)),
                }
            }
            Command::PurgeDeadLetters(reply) => match tx.execute("DELETE FROM dead_letters", []) {
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
                let r = values.iter().try_for_each(|(k, v)| {
                    tx.prepare_cached(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )?
                    .execute(params![k, v])
                    .map(|_| ())
                });
                match r {
                    Ok(()) => Ok(Outcome::Unit(reply, Ok(()))),
                    Err(e) => Err((Outcome::Unit(reply, Err(StoreError::Closed)), e)),
                }
            }
            Command::Ping(reply) => Ok(Outcome::Unit(reply, Ok(()))),
            // Taken out of the group by the run loop (a pass runs in
            // slices of its own, never inside a group).
            Command::Maintain(reply) => Ok(Outcome::Unit(reply, Ok(()))),
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
                        bucket: r.bucket_id.clone(),
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

    fn append(
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
                "INSERT INTO readings (bucket, source, ts, seq, origin, vals, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
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
        let raw = &r.raw[..r.raw.len().min(REJECT_RAW_LIMIT)];
        tx.prepare_cached(
            "INSERT INTO rejects (at, origin, reason, detail, raw) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![now_ms(), r.origin, r.reason, r.detail, raw])?;
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
        up_to: i64,
        dead: &[super::DeadLetter],
    ) -> Result<MarkOutcome, rusqlite::Error> {
        let bucket = self.bucket_key(tx, bucket_id)?;
        let cursor: i64 = tx
            .prepare_cached("SELECT delivered_seq FROM buckets WHERE id = ?1")?
            .query_row([bucket], |r| r.get(0))?;
        if up_to <= cursor {
            return Ok(MarkOutcome::default());
        }
        let present: i64 = tx
            .prepare_cached(
                "SELECT count(*) FROM readings WHERE bucket = ?1 AND seq > ?2 AND seq <= ?3",
            )?
            .query_row(params![bucket, cursor, up_to], |r| r.get(0))?;
        let mut dead_n = 0i64;
        let now = now_ms();
        for d in dead.iter().filter(|d| d.seq > cursor && d.seq <= up_to) {
            dead_n += tx
                .prepare_cached(
                    "INSERT INTO dead_letters
                       (seq, bucket, source, ts, origin, vals, meta, status, message, details, at)
                     SELECT seq, bucket, source, ts, origin, vals, meta, ?3, ?4, ?5, ?6
                     FROM readings WHERE seq = ?1 AND bucket = ?2",
                )?
                .execute(params![d.seq, bucket, d.status, d.message, d.details, now])?
                as i64;
        }
        tx.prepare_cached("UPDATE buckets SET delivered_seq = ?2 WHERE id = ?1")?
            .execute(params![bucket, up_to])?;
        let delivered = present - dead_n;
        bump(tx, bucket, "delivered", delivered)?;
        bump(tx, bucket, "dead_lettered", dead_n)?;
        Ok(MarkOutcome {
            delivered: delivered as u64,
            dead_lettered: dead_n as u64,
        })
    }
}

/// Put dead letters back into the queue as new readings.
fn retry_dead(
    tx: &Transaction,
    ids: Option<&[i64]>,
    next_seq: &mut i64,
) -> Result<usize, rusqlite::Error> {
    let selected: Vec<(i64, i64)> = match ids {
        None => tx
            .prepare("SELECT id, bucket FROM dead_letters ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?,
        Some(ids) => {
            let mut out = Vec::new();
            let mut st = tx.prepare("SELECT id, bucket FROM dead_letters WHERE id = ?1")?;
            for id in ids {
                if let Some(row) = st
                    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?
                {
                    out.push(row);
                }
            }
            out
        }
    };
    for (id, bucket) in &selected {
        tx.execute(
            "INSERT INTO readings (bucket, source, ts, seq, origin, vals, meta)
             SELECT bucket, source, ts, ?3, ?2, vals, meta FROM dead_letters WHERE id = ?1",
            params![id, Origin::Retry.code(), *next_seq],
        )?;
        *next_seq += 1;
        tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
        bump(tx, *bucket, "dead_lettered", -1)?;
    }
    Ok(selected.len())
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
            let mut row = tx
                .prepare(
                    "INSERT INTO readings (bucket, source, ts, seq, origin, vals)
                     VALUES (1, ?1, ?2, ?3, 0, '{\"t\":1}')",
                )
                .unwrap();
            for seq in 1..=delivered + queued {
                let source = if seq > delivered {
                    1
                } else {
                    (seq - 1) % sources + 1
                };
                row.execute(params![source, ts + seq, seq]).unwrap();
            }
        }
        tx.commit().unwrap();
        conn
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
            .unwrap()
    }

    /// The regression behind multi-second stalls: planned through
    /// `readings_queue (bucket, seq)`, each data source's prune walked the
    /// bucket's whole delivered history. It must go through the series key.
    #[test]
    fn pruning_finds_due_rows_through_the_series_key() {
        // No ANALYZE, as in the field: the gateway never runs it.
        let conn = history(50, 200, 1_000, 10);
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {PRUNE_SOURCE_SQL}"))
            .unwrap()
            .query_map(params![1, 1, 5_000, 10_000, 2000], |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let search = plan
            .iter()
            .find(|l| l.contains("ts<?"))
            .unwrap_or_else(|| panic!("no range search on ts in {plan:?}"));
        assert!(
            search.contains("PRIMARY KEY (bucket=? AND source=? AND ts<?)"),
            "{plan:?}"
        );
        // The same statement without the unary `+` shows the trap.
        let naive = PRUNE_SOURCE_SQL.replace("+seq", "seq");
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {naive}"))
            .unwrap()
            .query_map(params![1, 1, 5_000, 10_000, 2000], |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|l| l.contains("readings_queue (bucket=? AND seq<?)")),
            "the control no longer shows the queue-index plan: {plan:?}"
        );
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
