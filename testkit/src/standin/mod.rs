//! A local stand-in for the hosted dakkio ingest API, for tests and
//! benchmarks (the real cloud is not reachable from CI machines).
//!
//! It mirrors the project's reconstructed dakkio API specification
//! (`dakkio-api.md`) for the two ingest endpoints the gateway uses —
//! `POST /api/data/batch` and `POST /api/data` — with dakkio's `X-API-Key`
//! key types, error bodies (`{"error","message","details"}` with
//! Zod-style issue paths and texts), rate-limit headers and monthly quota.
//! Every other path is a 404 in dakkio's error shape. Where dakkio's docs are
//! silent (batch response body, partial failure, >1000 points, body limit),
//! it makes the plausible choice and says so below; those choices are what
//! the gateway's uplink is tested against.
//!
//! On top of the faithful behaviour a test can inject faults: scripted
//! answers ([`Script`]), poison rules that make dakkio-like schema validation
//! refuse a point, and taking the whole server down and back up on the same
//! port.
//!
//! # API
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use testkit::standin::{Reply, Script, Standin};
//!
//! let bucket = "507f1f77bcf86cd799439011";
//! let standin = Standin::builder()
//!     .bucket(bucket)
//!     .write_key(bucket, "dakkio_w_0123456789abcdefghijklmnopqrstuv")
//!     .quota(10_000)
//!     .start() // binds 127.0.0.1:0
//!     .await?;
//! let _base = standin.url(); // "http://127.0.0.1:PORT"
//!
//! standin.script(Script::respond(503)); // next request only
//! standin.script(Reply::new(429).retry_after("2")); // the one after
//! standin.script_for(bucket, Script::DropConnection); // next request for `bucket`
//! standin.set_sticky(Some(Script::respond(500))); // every request until cleared
//! standin.set_sticky(None);
//! standin.poison_value("status", serde_json::json!("corrupt"));
//!
//! standin.stop().await; // connections refused from now on
//! standin.restart().await?; // same port, recorded data kept
//! let delivered = standin.wait_for_accepted(1000, Duration::from_secs(10)).await;
//! # let _ = delivered;
//! let _points = standin.accepted_points(bucket);
//! # Ok(()) }
//! ```
//!
//! Works under `#[tokio::test]` (any flavour) and in a plain binary: server
//! tasks run on the runtime that calls [`StandinBuilder::start`].
//!
//! # Order of checks (and what each answers)
//!
//! 1. Scripted behaviour, if one is queued or sticky (before everything;
//!    it stands for the infrastructure failing). Scripts filtered on a bucket
//!    match the body's `bucketId`, so the body is read first.
//! 2. Unknown path or method → 404 `Route not found`.
//! 3. Body over the limit → 413; malformed JSON → 400 `Invalid JSON in
//!    request body` (body-parser level: before auth, no quota spent).
//! 4. Missing/unknown key → 401 `Invalid or missing API key`.
//! 5. Quota used up → 429 `Rate limit exceeded. Resets at <ISO>`; otherwise
//!    the call spends one unit. (Each authenticated request is one call;
//!    scripted answers spend nothing.)
//! 6. Read key → 403 `Only Admin and Write keys can ingest data` (the
//!    local API's text: dakkio documents only the status).
//! 7. `Content-Type` not `application/json` → 400.
//! 8. Schema → 400 `Invalid request parameters` with `details`: `bucketId`
//!    string; `dataPoints` array of 1..=1000 objects (`Array must contain at
//!    most 1000 element(s)`); each with `dataSourceId` (24 hex), `values`
//!    object, optional `timestamp` (ISO-8601, `Invalid datetime`) and
//!    optional `metadata` object. All issues are listed, as Zod does.
//! 9. `bucketId` not 24 hex → 400 `Invalid bucket ID format` (no details).
//! 10. Write key of another bucket → 403 `API key does not have access to
//!     this bucket`; bucket not registered → 404 `Bucket not found`.
//! 11. Poison rules → 400 `Invalid request parameters`, one detail per
//!     offending point at `["body","dataPoints",i,"values",field]`; the whole
//!     batch is refused (all-or-nothing, the gateway's assumption).
//! 12. 201 `{"message":"Batch ingested successfully","count":N}` (batch) or
//!     `{"message":"Data point ingested successfully","dataPoint":{…}}`.
//!
//! Every HTTP answer carries `X-RateLimit-Limit`, `-Remaining` and `-Reset`
//! (Unix seconds; default reset: the start of next month, UTC).
//!
//! # Faults
//!
//! [`Script`]s queue in a FIFO; each request takes the first one that applies
//! to it (unfiltered, or filtered on its bucket). With none queued, a sticky
//! script for the bucket, then the global sticky script, applies to every
//! request until cleared. `Respond` answers a [`Reply`] (any status, headers,
//! body; defaults to dakkio's body for the status, HTML for 502–504);
//! a scripted 2xx records nothing (a server that lost the data — useful as a
//! negative control); `Delay` waits then processes normally; `Stall` never answers (ends when
//! the client disconnects or the stand-in stops); `DropConnection` closes
//! without a response; `ResetConnection` does so with an RST.
//!
//! # Recording
//!
//! [`RecordMode::Full`] (default) keeps every accepted point;
//! [`RecordMode::Counts`] keeps only per-bucket [`BucketStats`] (counts,
//! duplicates and ordering on `metadata.readingId`) — what a benchmark of a
//! million points needs. Both keep the request log ([`RequestRecord`]), which
//! stores at most a 12-character key prefix, never a key. Tests await
//! [`Standin::wait_for_accepted`] / [`Standin::wait_for_requests`] instead of
//! polling.

mod record;
mod script;
mod server;
mod state;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use dakkio_gateway::dakkio::MAX_BATCH_POINTS;
pub use record::{AcceptedPoint, Answer, BucketStats, RecordMode, RequestRecord};
pub use script::{PointView, Reply, SchemaViolation, Script};
pub use state::Quota;

use script::PoisonRule;
use state::{KeyScope, Shared, State};

/// Default body limit: far above a 1000-point batch (~250 KiB), below what a
/// runaway client could send.
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Default monthly quota: dakkio's Pro plan.
pub const DEFAULT_QUOTA: u64 = 1_000_000;

/// Configures a [`Standin`] before it starts.
#[derive(Debug)]
pub struct StandinBuilder {
    addr: SocketAddr,
    buckets: Vec<String>,
    keys: Vec<(String, KeyScope)>,
    quota: u64,
    body_limit: usize,
    mode: RecordMode,
}

impl StandinBuilder {
    /// Register a bucket (24 hex characters).
    pub fn bucket(mut self, id: impl Into<String>) -> Self {
        self.buckets.push(id.into());
        self
    }

    /// An admin key (`dakkio_a_…`): every bucket.
    pub fn admin_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push((key.into(), KeyScope::Admin));
        self
    }

    /// A write key (`dakkio_w_…`) for one bucket. The bucket is not
    /// registered by this (so a key for a missing bucket can be tested).
    pub fn write_key(mut self, bucket: impl Into<String>, key: impl Into<String>) -> Self {
        self.keys.push((key.into(), KeyScope::Write(bucket.into())));
        self
    }

    /// A read key (`dakkio_r_…`) for one bucket; ingest answers it 403.
    pub fn read_key(mut self, bucket: impl Into<String>, key: impl Into<String>) -> Self {
        self.keys.push((key.into(), KeyScope::Read(bucket.into())));
        self
    }

    /// Monthly API-call quota (default [`DEFAULT_QUOTA`]).
    pub fn quota(mut self, calls_per_month: u64) -> Self {
        self.quota = calls_per_month;
        self
    }

    /// Largest accepted request body in bytes (default [`DEFAULT_BODY_LIMIT`]).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    pub fn record(mut self, mode: RecordMode) -> Self {
        self.mode = mode;
        self
    }

    /// Listen address (default `127.0.0.1:0`, a free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Bind and start serving on the current tokio runtime.
    pub async fn start(self) -> io::Result<Standin> {
        let mut state = State::new(self.body_limit, state::Quota::new(self.quota), self.mode);
        state.buckets.extend(self.buckets);
        state.keys.extend(self.keys);
        let listener = server::bind(self.addr)?;
        let addr = listener.local_addr()?;
        let standin = Standin {
            shared: Arc::new(Shared::new(state)),
            addr,
            running: Mutex::new(None),
        };
        standin.serve(listener);
        Ok(standin)
    }
}

/// The tasks of one listening period.
struct Running {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// A running (or stopped) stand-in. Dropping it stops the server; recorded
/// data lives as long as the handle.
pub struct Standin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

impl fmt::Debug for Standin {
    // Keys are deliberately absent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Standin")
            .field("addr", &self.addr)
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

impl Standin {
    pub fn builder() -> StandinBuilder {
        StandinBuilder {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            buckets: Vec::new(),
            keys: Vec::new(),
            quota: DEFAULT_QUOTA,
            body_limit: DEFAULT_BODY_LIMIT,
            mode: RecordMode::Full,
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_running(&self) -> bool {
        self.running_slot().is_some()
    }

    fn running_slot(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let running = Running {
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        server::spawn(
            listener,
            self.shared.clone(),
            running.cancel.clone(),
            &running.tracker,
        );
        *self.running_slot() = Some(running);
    }

    /// Take the server down: the listener closes (new connections are
    /// refused) and open connections, stalled requests included, are closed.
    /// Returns once every server task has ended. No-op when stopped.
    pub async fn stop(&self) {
        let Some(running) = self.running_slot().take() else {
            return;
        };
        running.cancel.cancel();
        running.tracker.close();
        running.tracker.wait().await;
    }

    /// Listen again on the same address. No-op when running. Fails if the
    /// port was taken by someone else meanwhile.
    pub async fn restart(&self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let listener = server::bind(self.addr)?;
        self.serve(listener);
        Ok(())
    }

    // ---- keys and buckets (take effect on the next request) ----

    pub fn add_bucket(&self, id: impl Into<String>) {
        self.shared.lock().buckets.insert(id.into());
    }

    pub fn remove_bucket(&self, id: &str) -> bool {
        self.shared.lock().buckets.remove(id)
    }

    pub fn add_admin_key(&self, key: impl Into<String>) {
        self.shared.lock().keys.insert(key.into(), KeyScope::Admin);
    }

    pub fn add_write_key(&self, bucket: impl Into<String>, key: impl Into<String>) {
        let scope = KeyScope::Write(bucket.into());
        self.shared.lock().keys.insert(key.into(), scope);
    }

    pub fn add_read_key(&self, bucket: impl Into<String>, key: impl Into<String>) {
        let scope = KeyScope::Read(bucket.into());
        self.shared.lock().keys.insert(key.into(), scope);
    }

    /// Delete a key: its next request gets 401. False if it was unknown.
    pub fn remove_key(&self, key: &str) -> bool {
        self.shared.lock().keys.remove(key).is_some()
    }

    // ---- quota and limits ----

    pub fn quota(&self) -> Quota {
        self.shared.lock().quota
    }

    /// New monthly limit; `remaining` starts again at `limit`.
    pub fn set_quota(&self, limit: u64) {
        let mut st = self.shared.lock();
        st.quota.limit = limit;
        st.quota.remaining = limit;
    }

    pub fn set_quota_remaining(&self, remaining: u64) {
        self.shared.lock().quota.remaining = remaining;
    }

    /// When the quota resets (Unix seconds), as `X-RateLimit-Reset` reports.
    pub fn set_quota_reset(&self, unix_secs: u64) {
        self.shared.lock().quota.reset_at = unix_secs;
    }

    pub fn set_body_limit(&self, bytes: usize) {
        self.shared.lock().body_limit = bytes;
    }

    // ---- faults ----

    /// Queue a behaviour for the next request that has none queued before it.
    pub fn script(&self, script: impl Into<Script>) {
        self.shared.lock().scripts.push_back((None, script.into()));
    }

    /// Queue a behaviour for the next request whose body names `bucket`.
    pub fn script_for(&self, bucket: impl Into<String>, script: impl Into<Script>) {
        let entry = (Some(bucket.into()), script.into());
        self.shared.lock().scripts.push_back(entry);
    }

    /// Scripts still queued.
    pub fn pending_scripts(&self) -> usize {
        self.shared.lock().scripts.len()
    }

    pub fn clear_scripts(&self) {
        self.shared.lock().scripts.clear();
    }

    /// Apply `script` to every request (with no queued script) until
    /// `set_sticky(None)`.
    pub fn set_sticky(&self, script: Option<Script>) {
        self.shared.lock().sticky = script;
    }

    /// Like [`Standin::set_sticky`], only for requests naming `bucket`; takes
    /// precedence over the global sticky script.
    pub fn set_sticky_for(&self, bucket: impl Into<String>, script: Option<Script>) {
        let bucket = bucket.into();
        let mut st = self.shared.lock();
        match script {
            Some(s) => {
                st.sticky_for.insert(bucket, s);
            }
            None => {
                st.sticky_for.remove(&bucket);
            }
        }
    }

    /// Refuse every batch holding a point for which `rule` returns a
    /// violation (400, details naming each offending index), as dakkio does
    /// when a point does not fit its data source's schema. Rules add up.
    pub fn poison<F>(&self, rule: F)
    where
        F: Fn(&PointView<'_>) -> Option<SchemaViolation> + Send + Sync + 'static,
    {
        self.shared.lock().poison.push(PoisonRule(Arc::new(rule)));
    }

    /// Poison every point whose `values[field] == value`.
    pub fn poison_value(&self, field: impl Into<String>, value: Value) {
        let field = field.into();
        self.poison(move |p| {
            (p.values.get(&field) == Some(&value)).then(|| {
                SchemaViolation::new(field.clone(), "Value does not match the data source schema")
            })
        });
    }

    pub fn clear_poison(&self) {
        self.shared.lock().poison.clear();
    }

    // ---- recording ----

    /// Points accepted (2xx) so far, duplicates included, all buckets.
    pub fn accepted_count(&self) -> u64 {
        self.shared.lock().accepted
    }

    /// Accepted points of one bucket in arrival order (empty in
    /// [`RecordMode::Counts`]).
    pub fn accepted_points(&self, bucket: &str) -> Vec<AcceptedPoint> {
        let st = self.shared.lock();
        st.points
            .iter()
            .filter(|p| p.bucket_id == bucket)
            .cloned()
            .collect()
    }

    /// Every accepted point in arrival order (empty in [`RecordMode::Counts`]).
    pub fn all_accepted_points(&self) -> Vec<AcceptedPoint> {
        self.shared.lock().points.clone()
    }

    /// Counters and order checks for one bucket (`None` if nothing accepted).
    pub fn bucket_stats(&self, bucket: &str) -> Option<BucketStats> {
        let st = self.shared.lock();
        st.buckets_seen.get(bucket).map(|t| t.stats.clone())
    }

    /// The request log, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    pub fn request_count(&self) -> u64 {
        self.shared.progress.borrow().requests
    }

    /// Wait until at least `n` points have been accepted in total. False on
    /// timeout.
    pub async fn wait_for_accepted(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.shared.progress.subscribe();
        let result = tokio::time::timeout(timeout, rx.wait_for(|p| p.accepted >= n)).await;
        matches!(result, Ok(Ok(_)))
    }

    /// Wait until at least `n` requests have been logged (stalled, dropped
    /// and reset ones included). False on timeout.
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.shared.progress.subscribe();
        let result = tokio::time::timeout(timeout, rx.wait_for(|p| p.requests >= n)).await;
        matches!(result, Ok(Ok(_)))
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        if let Some(running) = self.running_slot().take() {
            running.cancel.cancel();
        }
    }
}
