//! The uplink: forwards every queued reading to dakkio, in order per
//! bucket, through outages of minutes or days, within the monthly call
//! budget.
//!
//! # Design
//!
//! **One forwarder per bucket** (`forwarder.rs`), each with at most one
//! request in flight: order per bucket holds, and one bucket failing (bad
//! key, poison points, rate limit) never slows another. Buckets without a
//! key get a forwarder too; it waits until [`UplinkHandle::set_key`] gives
//! it one (the config-reload hook), while the readings keep queueing.
//!
//! **Position.** A forwarder starts at the store's delivery cursor and
//! keeps its read position in memory: it claims readings after the last
//! one it handed to a request (`Reader::claim`), so the next batch can be
//! read while the current request is in flight. New data is awaited on the
//! store's commit counter (`WriterStatus::commits`), with a slow recheck
//! for readings that another process (the `dead-letters retry` command)
//! appended. A partial batch waits at most `uplink.max_batch_age`.
//!
//! **Delivered only after a 2xx.** The mark (`StoreHandle::mark_delivered`:
//! move the cursor, count, dead letters — one transaction) is submitted
//! after the answer and is pipelined: the forwarder goes on with the next
//! batch while the writer commits marks in groups, and awaits them in order
//! (at most [`MAX_MARKS_IN_FLIGHT`] outstanding). Marks commit in their
//! order: one submitted behind an uncommitted mark names it
//! (`mark_delivered_after`) and the store refuses it until that one has
//! committed, so a refused mark (the disk is full) is never passed by a
//! later one that fitted, which would move the cursor past its dead
//! letters. Refused marks are submitted again, in order, with backoff;
//! delivery goes on meanwhile until the bound is reached. A crash between
//! a 2xx and its commit resends those batches; every point carries
//! `metadata.readingId` so the duplicates can be recognised (at least
//! once).
//!
//! **Answers** are classified in one function (`classify.rs`):
//! 2xx delivered · 400 split in halves (or around the index dakkio's
//! `details` name) until single points are isolated, which become dead
//! letters with the server's `message` and `details` · 413 halve the
//! bucket's batch size · 401/403/404 pause the bucket (ERROR once with what
//! to fix, health `bucket:<name>` degraded, `dakkio_uplink_paused` 1),
//! retry every `uplink.paused_retry` and at once on
//! [`UplinkHandle::resume`]/[`UplinkHandle::set_key`] · 429 wait for
//! `Retry-After`/`X-RateLimit-Reset` (`retry_after.rs`, clamped 1 s..24 h) ·
//! everything else transient: full-jitter exponential backoff
//! (`backoff.rs`), never giving up.
//!
//! **Budget.** With `uplink.max_calls_per_month` every request reserves a
//! slot in a shared [`budget::Budget`] first (`budget.rs`).
//!
//! **Stopping.** The cancel token means "stop after the in-flight request
//! and its mark". When the supervisor's inputs have stopped (the drain
//! signal, [`Uplink::with_drain`]) each forwarder sends what is queued
//! without waiting for fuller batches and exits once caught up, or at once
//! if it is waiting out a failure (the data stays queued).

pub mod backoff;
pub mod budget;
pub mod classify;
pub mod client;
mod forwarder;
pub mod retry_after;
mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::{Bucket, Config, UplinkConfig};
use crate::secret::Secret;
use crate::store::StoreHandle;
use crate::telemetry::Health;

pub use budget::{Clock, OffsetClock, SystemClock};
pub use client::{Client, ClientError};
pub use forwarder::MAX_REQUEST_BYTES;
pub use status::{delivered_on_day_of, UplinkStatus};

/// Marks submitted but not yet awaited, per forwarder.
pub const MAX_MARKS_IN_FLIGHT: usize = 64;

/// Test-only switch, read at start: hold forever before submitting the mark
/// of the N-th successful request (1-based, counted across buckets), after
/// every earlier mark has committed. The crash test SIGKILLs the gateway
/// there. Only in builds with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
pub const HOLD_BEFORE_MARK_ENV: &str = "DAKKIO_GATEWAY_TEST_HOLD_BEFORE_MARK";

/// What a forwarder is told from outside.
#[derive(Debug, Clone, Default)]
struct Control {
    key: Option<Secret>,
    /// Bumped by `resume`: a paused bucket tries again at once.
    generation: u64,
}

/// Talks to the running forwarders (the config-reload work calls it).
#[derive(Debug, Clone, Default)]
pub struct UplinkHandle {
    controls: BTreeMap<String, watch::Sender<Control>>,
}

impl UplinkHandle {
    /// A paused bucket (or one backing off) tries again now. False for an
    /// unknown bucket.
    pub fn resume(&self, bucket_id: &str) -> bool {
        self.controls.get(bucket_id).is_some_and(|tx| {
            tx.send_modify(|c| c.generation += 1);
            true
        })
    }

    /// Give a bucket a new write key (or take it away) and try again now.
    pub fn set_key(&self, bucket_id: &str, key: Option<Secret>) -> bool {
        self.controls.get(bucket_id).is_some_and(|tx| {
            tx.send_modify(|c| {
                c.key = key;
                c.generation += 1;
            });
            true
        })
    }

    pub fn buckets(&self) -> impl Iterator<Item = &str> {
        self.controls.keys().map(String::as_str)
    }
}

/// Everything the forwarders share.
pub(crate) struct Shared {
    pub config: UplinkConfig,
    pub gateway_id: String,
    pub store: StoreHandle,
    pub health: Health,
    pub clock: budget::SharedClock,
    pub client: Client,
    pub budget: Option<Mutex<budget::Budget>>,
    pub hold_before_mark: Option<u64>,
    pub successes: std::sync::atomic::AtomicU64,
    /// When `uplink:ratelimit_remaining` was last written.
    pub remaining_written: Mutex<Option<std::time::Instant>>,
}

/// The uplink part: `run` it under the supervisor.
pub struct Uplink {
    config: UplinkConfig,
    gateway_id: String,
    store: StoreHandle,
    health: Health,
    client: Client,
    clock: budget::SharedClock,
    buckets: Vec<(Bucket, watch::Receiver<Control>)>,
    drain: Option<(CancellationToken, TaskTracker)>,
}

impl Uplink {
    /// Build the client and one control channel per configured bucket.
    pub fn new(
        config: &Config,
        store: StoreHandle,
        health: Health,
    ) -> Result<(Uplink, UplinkHandle), ClientError> {
        let client = Client::new(&config.uplink)?;
        let mut handle = UplinkHandle::default();
        let mut buckets = Vec::new();
        for b in &config.buckets {
            let (tx, rx) = watch::channel(Control {
                key: b.write_key().cloned(),
                generation: 0,
            });
            handle.controls.insert(b.id.clone(), tx);
            buckets.push((b.clone(), rx));
        }
        Ok((
            Uplink {
                config: config.uplink.clone(),
                gateway_id: config.gateway.id.clone(),
                store,
                health,
                client,
                clock: Arc::new(SystemClock),
                buckets,
                drain: None,
            },
            handle,
        ))
    }

    /// Use another wall clock (tests of the monthly budget).
    pub fn with_clock(mut self, clock: impl Clock) -> Uplink {
        self.clock = Arc::new(clock);
        self
    }

    /// The "inputs have stopped" signal: once `inputs` is cancelled and
    /// `tracker` (closed) is empty, forwarders deliver what is queued and
    /// exit.
    pub fn with_drain(mut self, inputs: CancellationToken, tracker: TaskTracker) -> Uplink {
        self.drain = Some((inputs, tracker));
        self
    }

    pub async fn run(self, cancel: CancellationToken) {
        let budget = match self.config.max_calls_per_month {
            None => None,
            Some(limit) => {
                let now = self.clock.now_ms();
                let name = budget::counter_name(budget::month_of(now));
                let reader = self.store.reader().clone();
                let used = tokio::task::spawn_blocking(move || reader.counters_blocking(&name))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|m| m.values().sum::<i64>().max(0) as u64)
                    .unwrap_or(0);
                info!(
                    limit,
                    used_this_month = used,
                    "monthly call budget: requests are paced to last the month"
                );
                Some(Mutex::new(budget::Budget::new(limit, used, now)))
            }
        };
        #[cfg(feature = "fault-injection")]
        let hold_before_mark = {
            let n = std::env::var(HOLD_BEFORE_MARK_ENV)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if n.is_some() {
                tracing::warn!(
                    env = HOLD_BEFORE_MARK_ENV,
                    "test switch set: delivery will hold before a mark"
                );
            }
            n
        };
        #[cfg(not(feature = "fault-injection"))]
        let hold_before_mark = None;
        let shared = Arc::new(Shared {
            config: self.config,
            gateway_id: self.gateway_id,
            store: self.store,
            health: self.health,
            clock: self.clock,
            client: self.client,
            budget,
            hold_before_mark,
            successes: Default::default(),
            remaining_written: Mutex::new(None),
        });
        let draining = CancellationToken::new();
        let tasks = TaskTracker::new();
        if let Some((inputs, tracker)) = self.drain {
            let draining = draining.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                tokio::select! {
                    _ = async { inputs.cancelled().await; tracker.wait().await } => draining.cancel(),
                    _ = cancel.cancelled() => {}
                }
            });
        }
        for (bucket, control) in self.buckets {
            let f = forwarder::Forwarder::new(shared.clone(), bucket, control, draining.clone());
            tasks.spawn(f.run(cancel.clone()));
        }
        tasks.close();
        tasks.wait().await;
    }
}
