//! One bucket's delivery loop: gather a batch, pace it to the budget, send
//! it, act on the answer (see the module doc of `uplink` for the design).
//!
//! One role, one loop: about 750 lines of forwarder (batching by points and
//! bytes, pacing, splitting on 400, 413, pauses, marks), then its tests.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::budget;
use super::classify::{classify, Action};
use super::client::BodyBuilder;
use super::{Control, Shared, MAX_MARKS_IN_FLIGHT};
use crate::config::Bucket;
use crate::config::MAX_BATCH_SIZE;
use crate::secret::Secret;
use crate::store::{DeadLetter, MarkOutcome, Pending, QueuedReading, StoreError, WriterStatus};
use crate::telemetry::{Part, UplinkMode};

/// How often an idle forwarder looks for readings that arrived without a
/// commit of this process's writer (another process appended them).
const RECHECK: Duration = Duration::from_secs(2);
/// The most one request body holds. A request is cut by bytes as well as
/// by points, so a backlog of large readings goes out in several requests
/// instead of one allocation the size of the backlog. A point larger than
/// this alone is dead-lettered without being sent (dakkio would refuse it
/// with 413, and the gateway would retry it forever).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Once a bucket has sent this much and caught up, freed memory goes back
/// to the system: a burst of large readings must not leave the daemon at
/// its peak size for months.
const TRIM_AFTER: usize = 32 << 20;
/// Claimed, unsent readings held per bucket, in bytes of JSON: a request
/// being built and the next one read ahead while it is in flight.
const BUF_BYTES: usize = 2 * MAX_REQUEST_BYTES;

/// How often `uplink:ratelimit_remaining` is written to the store at most.
const REMAINING_STATE_EVERY: Duration = Duration::from_secs(60);

/// Why a forwarder stops.
#[derive(Debug)]
enum Stop {
    /// The cancel token: stop after the in-flight request.
    Cancelled,
    /// Inputs stopped and the queue is delivered (or cannot be now).
    Drained,
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        Stop::Store(e)
    }
}

/// How a wait ended.
enum Woken {
    Elapsed,
    /// `resume` or a new key.
    Control,
}

pub(crate) struct Forwarder {
    shared: Arc<Shared>,
    bucket: Bucket,
    control: watch::Receiver<Control>,
    /// The `UplinkHandle` is gone (the supervisor does not keep it): no
    /// resume or new key will come, which must not stop delivery.
    control_gone: bool,
    draining: CancellationToken,
    status: watch::Receiver<WriterStatus>,
    body: BodyBuilder,
    /// Claimed, not yet sent, in seq order.
    buf: VecDeque<QueuedReading>,
    /// Bytes of JSON in `buf` (bounded by [`BUF_BYTES`] plus one reading).
    buf_bytes: usize,
    /// What this bucket last told the store it lacks for a batch (`None`:
    /// a backlog; see `top_up`).
    wanted: Option<usize>,
    /// The last claim found nothing more committed, after bringing this
    /// many readings.
    caught_up: Option<usize>,
    /// Bytes of JSON sent since memory was last given back.
    sent_since_trim: usize,
    /// The seq of the last reading handed to a request (or the cursor).
    after: i64,
    /// Points per request allowed by dakkio (halved on 413).
    cap: usize,
    backoff: Backoff,
    marks: VecDeque<InFlightMark>,
    /// Set while the front mark is refused (the disk is full).
    marks_retry: Option<MarkRetry>,
    /// The run's stop token (set by `run`), for waits inside `settle`.
    stop: CancellationToken,
    paused: bool,
    failing: bool,
    rate_limited: bool,
    pacing: bool,
    pacing_ms_written: Option<u64>,
}

impl Forwarder {
    pub fn new(
        shared: Arc<Shared>,
        bucket: Bucket,
        control: watch::Receiver<Control>,
        draining: CancellationToken,
    ) -> Forwarder {
        let body = BodyBuilder::new(&bucket.id, &shared.gateway_id, shared.store.store_id());
        let backoff = Backoff::new(shared.config.backoff_min, shared.config.backoff_max);
        let status = shared.store.status();
        Forwarder {
            shared,
            bucket,
            control,
            control_gone: false,
            draining,
            status,
            body,
            buf: VecDeque::new(),
            buf_bytes: 0,
            wanted: None,
            caught_up: None,
            sent_since_trim: 0,
            after: 0,
            cap: MAX_BATCH_SIZE,
            backoff,
            marks: VecDeque::new(),
            marks_retry: None,
            stop: CancellationToken::new(),
            paused: false,
            failing: false,
            rate_limited: false,
            pacing: false,
            pacing_ms_written: None,
        }
    }

    fn part(&self) -> Part {
        Part::Bucket(self.bucket.name.clone())
    }

    /// How many queued readings make a batch go out at once: the
    /// configured `batch_size`, or a full request while the budget sets
    /// the pace; never above a request's size.
    fn trigger(&self) -> usize {
        let want = if self.pacing {
            MAX_BATCH_SIZE
        } else {
            self.shared.config.batch_size
        };
        want.min(self.request_max())
    }

    /// Points per request: whatever is queued, up to
    /// `max_request_points` (or what 413 left). A backlog after an outage
    /// drains in full requests (fewer calls) while live traffic goes out at
    /// `trigger()` (latency).
    fn request_max(&self) -> usize {
        self.shared.config.max_request_points.min(self.cap).max(1)
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        self.stop = cancel.clone();
        metrics::gauge!("dakkio_uplink_paused", "bucket" => self.bucket.name.clone()).set(0.0);
        self.report(UplinkMode::Delivering, None);
        let result = self.run_inner(&cancel).await;
        let flushed = self.flush_marks().await;
        match (result, flushed) {
            (Err(Stop::Store(e)), _) | (_, Err(Stop::Store(e))) => {
                error!(bucket = %self.bucket.name, error = %e, "forwarder stopped: the store failed")
            }
            _ => debug!(bucket = %self.bucket.name, "forwarder stopped"),
        }
    }

    async fn run_inner(&mut self, cancel: &CancellationToken) -> Result<(), Stop> {
        self.after = self.shared.store.reader().cursor(&self.bucket.id).await?;
        loop {
            // Draining goes on until caught up (`gather` ends it).
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            self.wait_for_key(cancel).await?;
            self.gather(cancel).await?;
            if self.buf.is_empty() {
                continue;
            }
            let mut batch: Vec<QueuedReading> = Vec::new();
            self.take_into(&mut batch, self.request_max());
            self.after = batch.last().map_or(self.after, |p| p.seq);
            if let [only] = batch.as_slice() {
                let bytes = self.body.point_bytes(only);
                if bytes > MAX_REQUEST_BYTES {
                    self.oversized(only, bytes).await?;
                    continue;
                }
            }
            self.pace(cancel).await?;
            // The wait may have let more readings in: fill up (pacing sends
            // fuller batches). `buf` continues right after `batch`.
            let room = self.request_max().saturating_sub(batch.len());
            if room > 0 {
                self.top_up(room).await?;
                self.take_into(&mut batch, self.request_max());
                self.after = batch.last().map_or(self.after, |p| p.seq);
            }
            self.sent_since_trim += batch.iter().map(QueuedReading::json_len).sum::<usize>();
            self.deliver(batch, cancel).await?;
            if self.buf.is_empty() && self.sent_since_trim >= TRIM_AFTER {
                self.sent_since_trim = 0;
                crate::memory::give_memory_back();
            }
        }
    }

    /// A bucket without a key waits for one (its readings keep queueing).
    async fn wait_for_key(&mut self, cancel: &CancellationToken) -> Result<(), Stop> {
        let missing = self.control.borrow().key.is_none();
        if missing {
            self.report(UplinkMode::NoKey, None);
        }
        while self.control.borrow().key.is_none() {
            tokio::select! {
                r = self.control.changed(), if !self.control_gone => self.control_gone = r.is_err(),
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                _ = self.draining.cancelled() => return Err(Stop::Drained),
            }
        }
        if missing {
            self.report(UplinkMode::Delivering, None);
        }
        Ok(())
    }

    /// What the status page shows for this bucket (set on changes only).
    fn report(&self, mode: UplinkMode, reason: Option<String>) {
        self.shared.health.set_uplink(&self.part(), mode, reason);
    }

    fn key(&self) -> Option<Secret> {
        self.control.borrow().key.clone()
    }

    /// Claim readings after the buffered ones until `buf` holds `want`,
    /// or [`BUF_BYTES`] of JSON.
    async fn top_up(&mut self, want: usize) -> Result<(), StoreError> {
        if self.buf.len() >= want || self.buf_bytes >= BUF_BYTES {
            return Ok(());
        }
        let after = self.buf.back().map_or(self.after, |p| p.seq);
        let asked = want - self.buf.len();
        let more = self
            .shared
            .store
            .reader()
            .claim_bytes(&self.bucket.id, after, asked, BUF_BYTES - self.buf_bytes)
            .await?;
        let caught_up = more.len() < asked;
        self.caught_up = caught_up.then_some(more.len());
        self.buf_bytes += more.iter().map(QueuedReading::json_len).sum::<usize>();
        self.buf.extend(more);
        // Caught up: tell the store how many readings the next batch lacks,
        // so that their commit does not wait for the commit window
        // (`store/policy.rs`); with a backlog there is no hurry.
        // A buffer already holding a batch (it is about to go) waits for
        // the next one: what lacks is counted past the whole batches, never
        // 1 (that made every small append a commit while a batch was sent).
        let lacking = (caught_up && self.buf_bytes < MAX_REQUEST_BYTES).then(|| {
            let trigger = self.trigger().max(1);
            trigger - self.buf.len() % trigger
        });
        if lacking != self.wanted {
            self.wanted = lacking;
            self.shared.store.want_readings(&self.bucket.id, lacking);
        }
        Ok(())
    }

    /// True when `buf` holds a batch's worth: `trigger` points, or a full
    /// request's bytes — or, not pacing, the commit just claimed brought
    /// half a batch or more and was all there is: busy traffic, where each
    /// group commit brings about a batch (the store closes a busy group
    /// after 100 ms, about as long as 100 readings take at 1000 msg/s).
    /// Waiting there for the few a commit lacked made the store close a
    /// group of those few at once (a journal page for a handful of
    /// readings: a third of all commits in some runs of the wear bench).
    /// Light traffic (commits of a few readings) still fills its batches.
    fn batch_ready(&self, trigger: usize) -> bool {
        self.buf.len() >= trigger
            || self.buf_bytes >= MAX_REQUEST_BYTES
            || (!self.pacing && self.caught_up.is_some_and(|n| n * 2 >= trigger))
    }

    /// Move readings from the front of `buf` into `batch` while it holds
    /// fewer than `max` points and its body stays within
    /// [`MAX_REQUEST_BYTES`] (one point always fits an empty batch).
    fn take_into(&mut self, batch: &mut Vec<QueuedReading>, max: usize) {
        let mut bytes: usize = batch.iter().map(|p| self.body.point_bytes(p)).sum();
        while batch.len() < max {
            let Some(next) = self.buf.front() else { break };
            let size = self.body.point_bytes(next);
            if !batch.is_empty() && bytes + size > MAX_REQUEST_BYTES {
                break;
            }
            bytes += size;
            let p = self.buf.pop_front().expect("front was just seen");
            self.buf_bytes -= p.json_len();
            batch.push(p);
        }
        if self.buf.is_empty() && self.buf.capacity() > 4 * MAX_BATCH_SIZE {
            // Give a backlog's buffer back once it has drained.
            self.buf = VecDeque::new();
        }
    }

    /// Fill `buf` to a batch: return when it holds `trigger()` readings
    /// (claiming up to `request_max()`), or when the first has waited
    /// `max_batch_age`, or (draining) at once.
    async fn gather(&mut self, cancel: &CancellationToken) -> Result<(), Stop> {
        let (trigger, target) = (self.trigger(), self.request_max());
        self.top_up(target).await?;
        if self.batch_ready(trigger) {
            return Ok(());
        }
        if self.draining.is_cancelled() {
            return if self.buf.is_empty() {
                Err(Stop::Drained)
            } else {
                Ok(())
            };
        }
        let mut deadline =
            (!self.buf.is_empty()).then(|| Instant::now() + self.shared.config.max_batch_age);
        loop {
            let recheck = Instant::now() + RECHECK;
            let recheck = self.mark_retry_at().map_or(recheck, |at| at.min(recheck));
            let until = deadline.map_or(recheck, |d| d.min(recheck));
            tokio::select! {
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                _ = self.draining.cancelled() => {
                    // Inputs stopped: whatever is queued goes now.
                    self.top_up(target).await?;
                    return if self.buf.is_empty() { Err(Stop::Drained) } else { Ok(()) };
                }
                r = self.status.changed() => {
                    if r.is_err() {
                        return Err(Stop::Store(StoreError::Closed));
                    }
                }
                _ = tokio::time::sleep_until(until) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(());
                    }
                }
            }
            // Refused marks are submitted again while idle too.
            self.poll_marks().await?;
            self.top_up(target).await?;
            if self.batch_ready(trigger) {
                return Ok(());
            }
            if deadline.is_none() && !self.buf.is_empty() {
                deadline = Some(Instant::now() + self.shared.config.max_batch_age);
            }
        }
    }

    /// Reserve a call in the monthly budget and wait for its slot.
    async fn pace(&mut self, cancel: &CancellationToken) -> Result<(), Stop> {
        let Some(b) = &self.shared.budget else {
            return Ok(());
        };
        let now = self.shared.clock.now_ms();
        let slot = b.lock().expect("budget lock").reserve(now);
        // Counted when reserved: a call never goes uncounted.
        // Committed with the next group; nothing waits for it.
        drop(
            self.shared
                .store
                .add_counters(vec![(budget::counter_name(slot.month), 1)])
                .await?,
        );
        metrics::gauge!("dakkio_uplink_budget_remaining").set(slot.remaining as f64);
        let pacing = slot.interval >= self.shared.config.max_batch_age;
        if pacing != self.pacing {
            self.pacing = pacing;
            if pacing {
                info!(
                    bucket = %self.bucket.name,
                    interval_s = slot.interval.as_secs_f64(),
                    remaining = slot.remaining,
                    "pacing requests to the monthly call budget; batches fill up to 1000 points"
                );
            } else {
                info!(bucket = %self.bucket.name, "pacing ended: the call budget is no longer the limit");
            }
        }
        let ms = if pacing {
            slot.interval.as_millis() as u64
        } else {
            0
        };
        let changed = match self.pacing_ms_written {
            None => true,
            Some(old) => old.abs_diff(ms) * 5 > old.max(1) || (old == 0) != (ms == 0),
        };
        if changed {
            self.pacing_ms_written = Some(ms);
            self.shared.health.set_pacing(&self.part(), ms);
            metrics::gauge!("dakkio_uplink_pacing_seconds", "bucket" => self.bucket.name.clone())
                .set(ms as f64 / 1000.0);
            drop(
                self.shared
                    .store
                    .set_state(vec![(
                        super::status::pacing_key(&self.bucket.name),
                        ms.to_string(),
                    )])
                    .await?,
            );
        }
        if !slot.wait.is_zero() {
            debug!(bucket = %self.bucket.name, wait_ms = slot.wait.as_millis() as u64, "waiting for the call budget");
            self.sleep(slot.wait, cancel, false).await?;
        }
        Ok(())
    }

    /// Sleep `d`; a stop request ends it early with `Err`, a control
    /// change (when `wake_on_control`) with `Woken::Control`.
    async fn sleep(
        &mut self,
        d: Duration,
        cancel: &CancellationToken,
        wake_on_control: bool,
    ) -> Result<Woken, Stop> {
        let timer = tokio::time::sleep(d);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                _ = &mut timer => return Ok(Woken::Elapsed),
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                _ = self.draining.cancelled() => return Err(Stop::Drained),
                r = self.control.changed(), if wake_on_control && !self.control_gone => {
                    if r.is_err() {
                        // A dropped handle is not a stop request: sleep on.
                        self.control_gone = true;
                        continue;
                    }
                    return Ok(Woken::Control);
                }
            }
        }
    }

    /// Send `batch` until every point is delivered or dead-lettered.
    async fn deliver(
        &mut self,
        batch: Vec<QueuedReading>,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let name = self.bucket.name.clone();
        let mut stack = Vec::with_capacity(8);
        stack.push(0..batch.len());
        let mut first = true;
        while let Some(range) = stack.pop() {
            loop {
                let Some(key) = self.key() else {
                    self.wait_for_key(cancel).await?;
                    continue;
                };
                if !first {
                    self.pace(cancel).await?;
                }
                let slice = &batch[range.clone()];
                let body = self.body.body(slice);
                let client = self.shared.client.clone();
                // Read the next batch while this request is in flight.
                let prefetch = if first { self.request_max() } else { 0 };
                first = false;
                let (outcome, fetched) =
                    tokio::join!(client.post_batch(&key, body), self.top_up(prefetch));
                fetched?;
                let label = match &outcome {
                    Ok(a) => a.status.to_string(),
                    Err(e) => e.label().to_owned(),
                };
                metrics::counter!("dakkio_uplink_requests_total", "bucket" => name.clone(), "status" => label)
                    .increment(1);
                if let Ok(a) = &outcome {
                    if let Some(rem) = a.rate_limit_remaining {
                        self.record_remaining(rem).await?;
                    }
                }
                let now =
                    UNIX_EPOCH + Duration::from_millis(self.shared.clock.now_ms().max(0) as u64);
                match classify(&outcome, now) {
                    Action::Delivered => {
                        self.recovered();
                        metrics::counter!("dakkio_uplink_delivered_total", "bucket" => name.clone())
                            .increment(slice.len() as u64);
                        // For the status page: when, and how many today (a
                        // counter committed with the next group; nothing waits).
                        let at = self.shared.clock.now_ms();
                        self.shared.health.delivered(&self.part(), at);
                        drop(
                            self.shared
                                .store
                                .add_counters(vec![(
                                    super::status::delivered_key(at, &name),
                                    slice.len() as i64,
                                )])
                                .await?,
                        );
                        let last = slice.last().map_or(0, |p| p.seq);
                        self.mark(last, Vec::new()).await?;
                        break;
                    }
                    Action::Split {
                        status,
                        message,
                        details,
                        bad_index,
                    } => {
                        self.recovered();
                        if refused(&mut stack, range.clone(), bad_index).is_some() {
                            self.dead_letter(&slice[0], status, message, details)
                                .await?;
                        } else {
                            debug!(bucket = %name, points = range.len(), "batch refused (400): splitting");
                        }
                        break;
                    }
                    Action::Shrink => {
                        self.recovered();
                        let old = self.cap;
                        self.cap = (range.len() / 2).clamp(1, old);
                        warn!(bucket = %name, from = old, to = self.cap,
                            "dakkio refused the request as too large (413); halving the batch size");
                        if refused(&mut stack, range.clone(), None).is_some() {
                            let msg = "the point alone is larger than dakkio accepts".to_owned();
                            self.dead_letter(&slice[0], 413, msg, None).await?;
                        }
                        break;
                    }
                    Action::Pause { status, fix } => {
                        self.pause(status, fix, cancel).await?;
                    }
                    Action::WaitFor(d) => {
                        if !self.rate_limited {
                            self.rate_limited = true;
                            self.report(
                                UplinkMode::RateLimited,
                                Some(format!("dakkio answered 429; waiting {} s", d.as_secs())),
                            );
                            warn!(bucket = %name, wait_s = d.as_secs(),
                                "rate limited by dakkio (429); waiting until the reset time");
                        }
                        self.wait_retry(d, cancel).await?;
                    }
                    Action::Backoff { reason } => {
                        let d = self.backoff.next_wait();
                        if !self.failing {
                            self.failing = true;
                            self.report(UplinkMode::BackingOff, Some(reason.clone()));
                            warn!(bucket = %name, reason = %reason, "dakkio delivery failing; retrying with backoff");
                            self.shared
                                .health
                                .set_degraded(&self.part(), format!("delivery failing: {reason}"));
                        } else {
                            debug!(bucket = %name, reason = %reason, wait_ms = d.as_millis() as u64, "retrying after backoff");
                        }
                        self.wait_retry(d, cancel).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn wait_retry(&mut self, d: Duration, cancel: &CancellationToken) -> Result<(), Stop> {
        let g =
            metrics::gauge!("dakkio_uplink_backoff_seconds", "bucket" => self.bucket.name.clone());
        g.set(d.as_secs_f64());
        let r = self.sleep(d, cancel, true).await;
        g.set(0.0);
        r.map(|_| ())
    }

    /// After an answer that was not a failure: clear failure states once.
    fn recovered(&mut self) {
        self.backoff.reset();
        if self.failing || self.paused || self.rate_limited {
            info!(bucket = %self.bucket.name, "dakkio delivery working again");
            self.report(UplinkMode::Delivering, None);
            self.shared.health.set_ok(&self.part());
        }
        if self.paused {
            metrics::gauge!("dakkio_uplink_paused", "bucket" => self.bucket.name.clone()).set(0.0);
        }
        self.failing = false;
        self.paused = false;
        self.rate_limited = false;
    }

    async fn pause(
        &mut self,
        status: u16,
        fix: &'static str,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        if !self.paused {
            self.paused = true;
            self.report(
                UplinkMode::Paused,
                Some(format!("dakkio answered {status}: {fix}")),
            );
            error!(
                bucket = %self.bucket.name,
                id = %self.bucket.id,
                status,
                retry_every_s = self.shared.config.paused_retry.as_secs(),
                "bucket paused, its readings keep queueing: {fix}"
            );
            self.shared
                .health
                .set_degraded(&self.part(), format!("paused: dakkio answered {status}"));
            metrics::gauge!("dakkio_uplink_paused", "bucket" => self.bucket.name.clone()).set(1.0);
        }
        let d = self.shared.config.paused_retry;
        self.sleep(d, cancel, true).await.map(|_| ())
    }

    async fn dead_letter(
        &mut self,
        point: &QueuedReading,
        status: u16,
        message: String,
        details: Option<String>,
    ) -> Result<(), Stop> {
        warn!(
            bucket = %self.bucket.name,
            seq = point.seq,
            status,
            message = %message,
            "dakkio refused a point; kept in dead letters (`dakkio-gateway dead-letters list`)"
        );
        metrics::counter!("dakkio_uplink_dead_lettered_total", "bucket" => self.bucket.name.clone())
            .increment(1);
        let dead = vec![DeadLetter {
            seq: point.seq,
            status,
            message,
            details,
        }];
        self.mark(point.seq, dead).await
    }

    /// A point that alone is larger than a request may be: kept in dead
    /// letters with the reason, never sent (and so never retried).
    async fn oversized(&mut self, point: &QueuedReading, bytes: usize) -> Result<(), Stop> {
        warn!(
            bucket = %self.bucket.name,
            seq = point.seq,
            bytes,
            limit = MAX_REQUEST_BYTES,
            "a reading is larger than one request may be; kept in dead letters without sending"
        );
        metrics::counter!("dakkio_uplink_dead_lettered_total", "bucket" => self.bucket.name.clone())
            .increment(1);
        let message = format!(
            "not sent: the point takes {bytes} bytes, more than the {MAX_REQUEST_BYTES} bytes \
             the gateway sends in one request"
        );
        let dead = vec![DeadLetter {
            seq: point.seq,
            status: 413,
            message,
            details: None,
        }];
        self.mark(point.seq, dead).await
    }

    async fn record_remaining(&mut self, remaining: u64) -> Result<(), Stop> {
        metrics::gauge!("dakkio_uplink_quota_remaining").set(remaining as f64);
        let due = {
            let mut last = self.shared.remaining_written.lock().expect("lock");
            let due = last.is_none_or(|t| t.elapsed() >= REMAINING_STATE_EVERY);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            drop(
                self.shared
                    .store
                    .set_state(vec![(
                        super::status::RATELIMIT_REMAINING_KEY.into(),
                        remaining.to_string(),
                    )])
                    .await?,
            );
        }
        Ok(())
    }

    /// Submit a delivery mark; keep at most `MAX_MARKS_IN_FLIGHT` pending.
    async fn mark(&mut self, up_to: i64, dead: Vec<DeadLetter>) -> Result<(), Stop> {
        if let Some(n) = self.shared.hold_before_mark {
            let k = self.shared.successes.fetch_add(1, Ordering::SeqCst) + 1;
            if k == n {
                self.flush_marks().await?;
                warn!(bucket = %self.bucket.name, up_to, "test switch: holding before the mark");
                std::future::pending::<()>().await;
            }
        }
        // A mark behind others not yet committed names the last of them:
        // the store applies it only after that one (marks commit in order).
        let after = self.marks.back().map(|m| m.up_to);
        let p = self
            .shared
            .store
            .mark_delivered_after(&self.bucket.id, after, up_to, dead.clone())
            .await?;
        self.marks.push_back(InFlightMark {
            up_to,
            dead,
            pending: Some(p),
        });
        self.poll_marks().await?;
        while self.marks.len() > MAX_MARKS_IN_FLIGHT {
            // Out of room for marks: do not wait for the commit window.
            self.shared.store.hurry(crate::store::Hurry::UplinkMarks);
            self.settle_front().await?;
        }
        Ok(())
    }

    /// Settle the marks committed since, without waiting. Only marks not
    /// yet committed count against the bound (the deque used to stay full
    /// of committed marks, and every new one hurried a commit: at 1000
    /// msg/s, 40 % of all commits, each a journal page). A refused front
    /// mark (the disk is full) does not stop delivery: the marks are
    /// submitted again when its retry is due, and delivery goes on until
    /// `MAX_MARKS_IN_FLIGHT` wait.
    async fn poll_marks(&mut self) -> Result<(), Stop> {
        while let Some(front) = self.marks.front_mut() {
            let Some(pending) = front.pending.as_mut() else {
                break;
            };
            let Some(outcome) = pending.try_take() else {
                break;
            };
            front.pending = None;
            self.settled(outcome)?;
        }
        if self.mark_retry_at().is_some_and(|at| Instant::now() >= at) {
            self.resubmit_marks().await?;
        }
        Ok(())
    }

    /// When the refused front mark is to be submitted again (`None`: no
    /// mark is refused, or its new answer is awaited).
    fn mark_retry_at(&self) -> Option<Instant> {
        let refused = self.marks.front().is_some_and(|m| m.pending.is_none());
        self.marks_retry.filter(|_| refused).map(|r| r.at)
    }

    /// The front mark's outcome: committed (popped), or refused for now
    /// (kept, to be submitted again with those after it).
    fn settled(&mut self, outcome: Result<MarkOutcome, StoreError>) -> Result<(), Stop> {
        match outcome {
            Ok(_) => {
                self.marks.pop_front();
                self.marks_retry = None;
                Ok(())
            }
            Err(e) if e.is_transient() => {
                // A first refusal; after one, the next retry is set
                // already (`resubmit_marks`).
                if self.marks_retry.is_none() {
                    self.marks_retry = Some(MarkRetry {
                        at: Instant::now() + MARK_RETRY_MIN,
                        wait: MARK_RETRY_MIN,
                    });
                }
                debug!(bucket = %self.bucket.name, up_to = self.marks.front().map(|m| m.up_to),
                    waiting = self.marks.len(), error = %e, "delivery mark refused; retrying");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Submit every waiting mark again, in order: the front one alone (all
    /// before it committed), each later one after the one before it. Those
    /// still pending were submitted after the refused front and are
    /// refused too (`MarkBehind`), so their old answers are dropped.
    async fn resubmit_marks(&mut self) -> Result<(), Stop> {
        let wait = self
            .marks_retry
            .map_or(MARK_RETRY_MIN, |r| (r.wait * 2).min(MARK_RETRY_MAX));
        self.marks_retry = Some(MarkRetry {
            at: Instant::now() + wait,
            wait,
        });
        let mut after = None;
        for i in 0..self.marks.len() {
            let (up_to, dead) = (self.marks[i].up_to, self.marks[i].dead.clone());
            let p = self
                .shared
                .store
                .mark_delivered_after(&self.bucket.id, after, up_to, dead)
                .await?;
            self.marks[i].pending = Some(p);
            after = Some(up_to);
        }
        Ok(())
    }

    /// Wait until the front mark is committed, submitting the marks again
    /// while the store refuses it for now (the disk is full): a full disk
    /// pauses delivery instead of stopping the forwarder. Stopping gives
    /// up: those readings stay queued and are sent again after the restart
    /// (duplicates, not loss).
    async fn settle_front(&mut self) -> Result<(), Stop> {
        let before = self.marks.len();
        while self.marks.len() == before {
            let Some(front) = self.marks.front_mut() else {
                return Ok(());
            };
            if let Some(pending) = front.pending.take() {
                let outcome = pending.wait().await;
                self.settled(outcome)?;
                continue;
            }
            if self.stop.is_cancelled() || self.draining.is_cancelled() {
                warn!(bucket = %self.bucket.name, waiting = self.marks.len(),
                    "delivery marks not committed at stop; those readings stay queued and are sent again after the restart");
                return Err(Stop::Cancelled);
            }
            let at = self.marks_retry.map_or_else(Instant::now, |r| r.at);
            let (stop, draining) = (self.stop.clone(), self.draining.clone());
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = stop.cancelled() => {}
                _ = draining.cancelled() => {}
            }
            self.resubmit_marks().await?;
            self.shared.store.hurry(crate::store::Hurry::UplinkMarks);
        }
        Ok(())
    }

    async fn flush_marks(&mut self) -> Result<(), Stop> {
        if !self.marks.is_empty() {
            self.shared.store.hurry(crate::store::Hurry::UplinkStop);
        }
        while !self.marks.is_empty() {
            self.settle_front().await?;
        }
        Ok(())
    }
}

/// The first wait before refused delivery marks are submitted again; it
/// doubles up to [`MARK_RETRY_MAX`] while they stay refused.
const MARK_RETRY_MIN: Duration = Duration::from_millis(100);
const MARK_RETRY_MAX: Duration = Duration::from_secs(5);

/// When refused delivery marks are submitted again.
#[derive(Clone, Copy)]
struct MarkRetry {
    at: Instant,
    wait: Duration,
}

/// A delivery mark submitted to the store, kept until it is committed so
/// that a transient refusal can be submitted again.
struct InFlightMark {
    up_to: i64,
    dead: Vec<DeadLetter>,
    /// `None`: refused, waiting to be submitted again.
    pending: Option<Pending<MarkOutcome>>,
}

/// A request for `range` (of the batch whose pending ranges are `stack`)
/// was refused: a single point is the culprit and is returned, to be
/// dead-lettered; a larger range is split (see [`split`]) and sent again
/// piece by piece. `deliver` pops `stack` until it is empty, so every point
/// ends up delivered or dead-lettered exactly once (property-tested below).
fn refused(
    stack: &mut Vec<std::ops::Range<usize>>,
    range: std::ops::Range<usize>,
    bad: Option<usize>,
) -> Option<usize> {
    if range.len() == 1 {
        Some(range.start)
    } else {
        split(stack, range, bad);
        None
    }
}

/// Push the pieces of a refused `range` on the stack so that they are
/// sent left to right: around `bad` (an index into the batch the request
/// covered) when it lies inside, else in halves.
fn split(
    stack: &mut Vec<std::ops::Range<usize>>,
    range: std::ops::Range<usize>,
    bad: Option<usize>,
) {
    let pieces: Vec<std::ops::Range<usize>> = match bad.map(|i| range.start + i) {
        Some(b) if b < range.end => vec![range.start..b, b..b + 1, b + 1..range.end],
        _ => {
            let mid = range.start + range.len() / 2;
            vec![range.start..mid, mid..range.end]
        }
    };
    stack.extend(pieces.into_iter().rev().filter(|r| !r.is_empty()));
}

#[cfg(test)]
mod tests {
    use super::{refused, split};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// What dakkio names in a refusal's `details` (as `bad_index`).
    #[derive(Debug, Clone, Copy)]
    enum Hint {
        /// No usable details: plain halving.
        None,
        /// The first invalid point of the request (what dakkio does).
        First,
        /// Some invalid point of the request, chosen by the seed.
        AnyBad(usize),
        /// Any index at all, even a valid point or out of range: a wrong
        /// server must not make the gateway lose or repeat points.
        Wrong(usize),
    }

    struct Run {
        delivered: Vec<usize>,
        dead: Vec<usize>,
        requests: usize,
    }

    /// `deliver`'s loop against a server that refuses (400) every request
    /// holding a point of `bad`.
    fn deliver(n: usize, bad: &BTreeSet<usize>, hint: Hint) -> Run {
        let mut run = Run {
            delivered: Vec::new(),
            dead: Vec::new(),
            requests: 0,
        };
        let mut stack = Vec::new();
        stack.push(0..n);
        while let Some(range) = stack.pop() {
            run.requests += 1;
            assert!(run.requests <= 2 * n, "no progress");
            let in_range: Vec<usize> = bad.range(range.clone()).copied().collect();
            if in_range.is_empty() {
                run.delivered.extend(range);
                continue;
            }
            let index = match hint {
                Hint::None => None,
                Hint::First => Some(in_range[0] - range.start),
                Hint::AnyBad(seed) => Some(in_range[seed % in_range.len()] - range.start),
                Hint::Wrong(seed) => Some(seed % (range.len() + 3)),
            };
            if let Some(i) = refused(&mut stack, range.clone(), index) {
                run.dead.push(i);
            }
        }
        run
    }

    fn batch_and_bad() -> impl Strategy<Value = (usize, BTreeSet<usize>)> {
        (1usize..=600).prop_flat_map(|n| {
            let bad = prop_oneof![
                2 => proptest::collection::btree_set(0..n, 0..=4.min(n)),
                1 => proptest::collection::btree_set(0..n, 0..=n),
            ];
            (Just(n), bad)
        })
    }

    fn hint() -> impl Strategy<Value = Hint> {
        prop_oneof![
            Just(Hint::None),
            Just(Hint::First),
            any::<usize>().prop_map(Hint::AnyBad),
            any::<usize>().prop_map(Hint::Wrong),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// For any batch and any set of bad points: delivered + dead-lettered
        /// = the input, each point exactly once, delivered in seq order,
        /// dead letters exactly the bad points; and few requests.
        #[test]
        fn splitting_delivers_or_dead_letters_every_point_once(
            (n, bad) in batch_and_bad(),
            hint in hint(),
        ) {
            let run = deliver(n, &bad, hint);
            let dead: BTreeSet<usize> = run.dead.iter().copied().collect();
            prop_assert_eq!(dead.len(), run.dead.len(), "a point dead-lettered twice");
            prop_assert_eq!(&dead, &bad);
            prop_assert!(run.delivered.windows(2).all(|w| w[0] < w[1]),
                "delivered out of order or twice: {:?}", run.delivered);
            let mut all: Vec<usize> = run.delivered.iter().chain(&run.dead).copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..n).collect::<Vec<_>>());

            let b = bad.len();
            let log2 = usize::BITS - (n - 1).leading_zeros(); // ceil(log2 n)
            let bound = match hint {
                Hint::None | Hint::First => 2 * b * log2 as usize + 1,
                Hint::AnyBad(_) => 3 * b + 1,
                // Each refused range splits into at least two pieces.
                Hint::Wrong(_) => 2 * n - 1,
            };
            prop_assert!(run.requests <= bound,
                "{} requests for {} points with {} bad ({:?}); bound {}",
                run.requests, n, b, hint, bound);
        }
    }

    #[test]
    fn split_in_halves_left_first() {
        let mut s = Vec::new();
        split(&mut s, 0..10, None);
        assert_eq!(s.pop(), Some(0..5));
        assert_eq!(s.pop(), Some(5..10));
    }

    #[test]
    fn split_around_a_named_point() {
        let mut s = Vec::new();
        split(&mut s, 100..200, Some(17));
        assert_eq!(s, vec![118..200, 117..118, 100..117]);
        let mut s = Vec::new();
        split(&mut s, 0..10, Some(0));
        assert_eq!(s, vec![1..10, 0..1]);
        let mut s = Vec::new();
        split(&mut s, 0..10, Some(99)); // out of range: halves
        assert_eq!(s, vec![5..10, 0..5]);
    }
}
