//! The commit task: reads publishes from the poll task in batches, routes
//! and decodes them (`route.rs`), submits readings and rejects to the store
//! without waiting, and acknowledges each message once the
//! [`Ledger`](super::ledger::Ledger) says so. It owns the ledger and feeds it
//! every event; it decides nothing about acks itself (see `ledger.rs`).
//!
//! Invariants kept here, around the ledger:
//! - a batch's outcome is awaited in arrival order (the FIFO's front), so
//!   its payloads are dropped as soon as it has committed;
//! - a refused batch is submitted again with backoff, and no new message
//!   is read meanwhile (the broker keeps them);
//! - an ack is handed to rumqttc with `try_ack`, never awaited, under the
//!   epoch lock the poll task takes to bump the epoch, so no connection can
//!   start between the ledger's epoch check and the ack;
//! - at most [`MAX_OUTSTANDING`] messages wait for their commit, holding
//!   at most [`MAX_INFLIGHT_BYTES`](super::MAX_INFLIGHT_BYTES) (each
//!   message's share is given back when its batch is dropped);
//! - once a burst has drained, the allocator's free memory is given back
//!   (`crate::memory`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::ledger::{Ack, BatchId, Delivery, Ledger};
use super::pace::Pace;
use super::{
    Incoming, RateLimit, Shared, BATCH, MAX_INFLIGHT_BYTES, MAX_OUTSTANDING, REJECT_LOG_INTERVAL,
    STOP_DEADLINE, TRIM_AFTER,
};
use crate::ingest::decode::document::Ignored;
use crate::ingest::decode::DecodeError;
use crate::ingest::route::{Rejection, Routed, Router};
use crate::store::{
    truncate_str, Reject, StoreError, StoreHandle, REJECT_DETAIL_LIMIT, REJECT_ORIGIN_LIMIT,
    REJECT_RAW_LIMIT,
};

/// How soon acks waiting for room in the request channel are tried again.
const ACK_RETRY: Duration = Duration::from_millis(2);

type Settle = Pin<Box<dyn Future<Output = Settled> + Send>>;

/// The outcome of a batch's store commands.
struct Settled {
    readings: Result<usize, StoreError>,
    rejects: Result<(), StoreError>,
}

/// A batch of messages submitted together, in arrival order.
struct Entry {
    id: BatchId,
    msgs: Vec<Incoming>,
    /// The commit outcome, while not yet known.
    wait: Option<Settle>,
    /// Parts refused by the store, to submit again.
    retry_readings: bool,
    retry_rejects: bool,
    /// When its parts were last submitted (`CommitTask::submissions`).
    submitted: u64,
}

pub(super) struct CommitTask {
    rx: mpsc::Receiver<Incoming>,
    client: AsyncClient,
    /// The epoch, and where the unacknowledged count is published.
    shared: Arc<Shared>,
    router: Router,
    /// `mqtt.max_packet_size`, for the `too_large` detail.
    max_payload: usize,
    store: StoreHandle,
    ledger: Ledger,
    /// Batches submitted, outcome not yet handled, in arrival order.
    fifo: VecDeque<Entry>,
    rejects_logged: RateLimit,
    /// Submissions so far, to order an entry's attempt against a recovery.
    submissions: u64,
    /// The submission whose commit ended the last refusal: a refusal of an
    /// earlier submission belongs to that episode and is not a new one
    /// (after a full disk, the FIFO holds many entries refused before the
    /// space came back; each must not log its own WARN/INFO pair).
    resumed_at: u64,
    /// The most bytes in flight seen since the last trim.
    peak_bytes: usize,
    /// When to hurry the store's commit (`pace.rs`).
    pace: Pace,
}

/// Await the front entry's commit outcome; pending when there is none to
/// await (empty, or waiting for a retry).
async fn front_outcome(fifo: &mut VecDeque<Entry>) -> Settled {
    match fifo.front_mut().and_then(|e| e.wait.as_mut()) {
        Some(wait) => wait.await,
        None => std::future::pending().await,
    }
}

impl CommitTask {
    pub(super) fn new(
        rx: mpsc::Receiver<Incoming>,
        client: AsyncClient,
        shared: Arc<Shared>,
        router: Router,
        max_payload: usize,
        store: StoreHandle,
        ledger: Ledger,
    ) -> CommitTask {
        CommitTask {
            rx,
            client,
            shared,
            router,
            max_payload,
            store,
            ledger,
            fifo: VecDeque::new(),
            rejects_logged: RateLimit::new(REJECT_LOG_INTERVAL),
            submissions: 0,
            resumed_at: 0,
            peak_bytes: 0,
            pace: Pace::default(),
        }
    }

    pub(super) async fn run(mut self, cancel: CancellationToken) {
        let mut stopping = false;
        let mut stop_deadline = None;
        let mut retry: Option<(Instant, backon::ExponentialBackoff)> = None;
        let mut buf = Vec::with_capacity(BATCH);
        let mut store_refusing = false;
        loop {
            let ack_blocked = self.send_acks();
            if stopping && self.ledger.is_idle() {
                break;
            }
            let can_read =
                !stopping && retry.is_none() && self.ledger.outstanding() < MAX_OUTSTANDING;
            let retry_at = retry.as_ref().map(|(at, _)| *at);
            // Messages wait for a commit the store may hold for company:
            // hurry it once the broker looks stalled on its window (`pace.rs`).
            let hurry_at = self.pace.hurry_at(!self.fifo.is_empty() && retry.is_none());
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if !stopping => {
                    stopping = true;
                    // Nothing more will join the open group.
                    self.store.hurry(crate::store::Hurry::MqttStop);
                    stop_deadline = Some(tokio::time::Instant::now() + STOP_DEADLINE);
                    // The poll task must never wait on us from here on.
                    self.rx.close();
                }
                _ = tokio::time::sleep_until(stop_deadline.unwrap_or_else(far_future)), if stop_deadline.is_some() => {
                    warn!(
                        messages = self.ledger.outstanding(),
                        "stop deadline reached with mqtt messages not yet committed; \
                         they stay unacknowledged at the broker and are redelivered"
                    );
                    break;
                }
                settled = front_outcome(&mut self.fifo) => {
                    let Some(entry) = self.fifo.front_mut() else { continue };
                    entry.wait = None;
                    let submitted = entry.submitted;
                    let mut transient = None;
                    match settled.readings {
                        Ok(n) => {
                            if n > 0 {
                                metrics::counter!("dakkio_readings_accepted_total", "source" => "mqtt").increment(n as u64);
                            }
                        }
                        Err(e) if e.is_transient() => { entry.retry_readings = true; transient = Some(e); }
                        Err(e) => { error!(error = %e, "the store failed; mqtt messages stay unacknowledged"); return; }
                    }
                    match settled.rejects {
                        Ok(()) => {}
                        Err(e) if e.is_transient() => { entry.retry_rejects = true; transient = Some(e); }
                        Err(e) => { error!(error = %e, "the store failed; mqtt messages stay unacknowledged"); return; }
                    }
                    match transient {
                        None => {
                            let id = entry.id;
                            self.ledger.handle_committed(id);
                            // Its payloads are no longer needed.
                            self.fifo.pop_front();
                            self.trim_when_drained();
                            if store_refusing {
                                store_refusing = false;
                                self.resumed_at = submitted;
                                info!("the store accepts readings again; mqtt ingest resumed");
                            }
                            retry = None;
                        }
                        Some(e) => {
                            self.ledger.handle_refused(entry.id);
                            if stopping {
                                break;
                            }
                            let stale = !store_refusing && submitted < self.resumed_at;
                            if stale {
                                debug!(error = %e, "a refusal from before the store recovered; retrying at once");
                            } else if !store_refusing {
                                store_refusing = true;
                                warn!(error = %e, "the store refuses readings; mqtt messages are not acknowledged (the broker keeps them) and are retried");
                            }
                            let mut backoff = match retry.take() {
                                Some((_, b)) => b,
                                None => crate::retry::exponential(
                                    Duration::from_millis(100),
                                    Duration::from_secs(5),
                                )
                                .with_jitter()
                                .build(),
                            };
                            let delay = if stale {
                                Duration::ZERO
                            } else {
                                backoff.next().unwrap_or(Duration::from_secs(10))
                            };
                            retry = Some((Instant::now() + delay, backoff));
                        }
                    }
                }
                _ = tokio::time::sleep_until(retry_at.map_or_else(far_future, tokio::time::Instant::from_std)), if retry_at.is_some() => {
                    if !self.resubmit_front().await {
                        return;
                    }
                    if let Some((at, _)) = retry.as_mut() {
                        // Re-armed only if this attempt is refused too.
                        *at = Instant::now() + Duration::from_secs(3600);
                    }
                    // Nothing is read until the resubmitted front commits,
                    // and after a full disk every message refused in the
                    // episode comes to the front in turn: without a hurry
                    // each waited for the whole commit window (a second),
                    // the broker's queue stood still for as many seconds,
                    // and the keepalive lapsed (a reconnect, duplicates).
                    self.store.hurry(crate::store::Hurry::MqttWindow);
                }
                _ = tokio::time::sleep(ACK_RETRY), if ack_blocked => {}
                _ = tokio::time::sleep_until(hurry_at.map_or_else(far_future, tokio::time::Instant::from_std)), if hurry_at.is_some() => {
                    self.store.hurry(crate::store::Hurry::MqttWindow);
                    self.pace.on_hurried();
                }
                n = self.rx.recv_many(&mut buf, BATCH), if can_read => {
                    if n == 0 {
                        stopping = true;
                        self.store.hurry(crate::store::Hurry::MqttStop);
                        continue;
                    }
                    self.pace.on_arrival(Instant::now());
                    let inflight = self.shared.inflight_bytes();
                    self.peak_bytes = self.peak_bytes.max(inflight);
                    if !self.submit(std::mem::take(&mut buf)).await {
                        return;
                    }
                    // Short of our own room: the poll task stops reading at
                    // these bounds, so do not let them wait for the deadline.
                    if self.ledger.outstanding() >= MAX_OUTSTANDING / 2
                        || inflight >= MAX_INFLIGHT_BYTES / 2
                    {
                        self.store.hurry(crate::store::Hurry::MqttRoom);
                    }
                    buf = Vec::with_capacity(BATCH);
                }
            }
        }
        self.send_acks();
    }

    /// Once a burst of more than [`TRIM_AFTER`] bytes has drained (nothing
    /// waits for its commit, nothing waits in the channel), give the
    /// allocator's free memory back: glibc would keep the burst's peak.
    /// At most one trim per `TRIM_AFTER` bytes received.
    fn trim_when_drained(&mut self) {
        if self.peak_bytes >= TRIM_AFTER && self.fifo.is_empty() && self.rx.is_empty() {
            self.peak_bytes = 0;
            crate::memory::give_memory_back();
        }
    }

    /// Enter a batch in the ledger, route it, submit its readings and
    /// rejects, and queue it. False when the store has stopped.
    async fn submit(&mut self, msgs: Vec<Incoming>) -> bool {
        let deliveries: Vec<Delivery> = msgs.iter().map(Incoming::delivery).collect();
        let id = self.ledger.handle_batch(&deliveries);
        // Under the test-only `OnReceipt` policy the acks go out now,
        // before the commit; otherwise this sends nothing new.
        self.send_acks();
        let (readings, rejects, counters) = route(
            &self.router,
            self.max_payload,
            &mut self.rejects_logged,
            &msgs,
            true,
        );
        let Some(wait) = submit_parts(&self.store, readings, rejects, counters).await else {
            return false;
        };
        self.submissions += 1;
        self.fifo.push_back(Entry {
            id,
            submitted: self.submissions,
            msgs,
            wait: Some(wait),
            retry_readings: false,
            retry_rejects: false,
        });
        true
    }

    /// Submit the refused parts of the front entry again.
    async fn resubmit_front(&mut self) -> bool {
        let Some(mut entry) = self.fifo.pop_front() else {
            return true;
        };
        let (readings, rejects, counters) = route(
            &self.router,
            self.max_payload,
            &mut self.rejects_logged,
            &entry.msgs,
            false,
        );
        let readings = if entry.retry_readings {
            readings
        } else {
            Vec::new()
        };
        // The counters went with the rejects' part.
        let (rejects, counters) = if entry.retry_rejects {
            (rejects, counters)
        } else {
            (Vec::new(), Vec::new())
        };
        let Some(wait) = submit_parts(&self.store, readings, rejects, counters).await else {
            return false;
        };
        self.submissions += 1;
        self.ledger.handle_resubmitted(entry.id);
        entry.retry_readings = false;
        entry.retry_rejects = false;
        entry.wait = Some(wait);
        entry.submitted = self.submissions;
        self.fifo.push_front(entry);
        true
    }

    /// Hand the acks the ledger releases to rumqttc, in order. True when
    /// acks wait for room in rumqttc's request channel.
    fn send_acks(&mut self) -> bool {
        let blocked = loop {
            // Held while queueing, so the poll task cannot bump the epoch
            // between the ledger's check and the ack.
            let current = self.shared.epoch.lock().unwrap_or_else(|p| p.into_inner());
            self.ledger.handle_connection(*current);
            let Some(ack) = self.ledger.next_ack() else {
                break false;
            };
            if !try_ack(&self.client, &ack) {
                break true;
            }
            self.ledger.handle_ack_sent();
        };
        let stale = self.ledger.take_stale();
        if stale > 0 {
            metrics::counter!("dakkio_mqtt_stale_acks_total").increment(stale);
        }
        self.shared
            .unacknowledged
            .store(self.ledger.unacknowledged(), Ordering::Relaxed);
        blocked
    }
}

/// Ledger counters (bucket 0) of messages skipped whole, by reason
/// (`mqtt:skipped:retained`), and of payload parts set aside.
pub(super) fn skip_counter(reason: &str) -> String {
    format!("mqtt:skipped:{reason}")
}

/// Turn messages into readings, rejects and counters (counting and logging
/// the rejects and skips when `count`: not again on a retry, whose counters
/// are dropped since the first submission's already committed with it).
fn route(
    router: &Router,
    max_payload: usize,
    rejects_logged: &mut RateLimit,
    msgs: &[Incoming],
    count: bool,
) -> (
    Vec<crate::reading::Reading>,
    Vec<Reject>,
    Vec<(String, i64)>,
) {
    let mut readings = Vec::with_capacity(msgs.len());
    let mut rejects = Vec::new();
    let mut skipped: Vec<(&'static str, i64)> = Vec::new();
    let mut ignored = Ignored::default();
    let mut reject = |p: &Publish, Rejection { reason, detail }: Rejection, raw: &[u8]| {
        if count {
            metrics::counter!(
                "dakkio_readings_rejected_total",
                "source" => "mqtt",
                "reason" => reason
            )
            .increment(1);
            // A topic can be 64 KiB: log what the store keeps of it.
            let topic = truncate_str(&p.topic, REJECT_ORIGIN_LIMIT);
            let shown = truncate_str(&detail, REJECT_DETAIL_LIMIT);
            debug!(topic, reason, detail = shown, "mqtt message rejected");
            if let Some(suppressed) = rejects_logged.allow() {
                warn!(
                    topic,
                    reason,
                    detail = shown,
                    suppressed,
                    "bad mqtt message kept in rejects (`queue stats` counts them by reason)"
                );
            }
        }
        let raw_len = raw.len().min(REJECT_RAW_LIMIT);
        rejects.push(Reject {
            origin: format!("mqtt:{}", truncate_str(&p.topic, REJECT_ORIGIN_LIMIT)),
            reason: reason.to_owned(),
            detail,
            raw: raw[..raw_len].to_vec(),
        });
    };
    for m in msgs {
        let p = &m.publish;
        let outcome = match m.oversize {
            // Only its first bytes were kept (see `poll.rs`).
            Some(len) => Err(Rejection {
                reason: "too_large",
                detail: DecodeError::TooLarge {
                    len,
                    max: max_payload,
                }
                .to_string(),
            }),
            None if m.duplicate => Ok(Routed {
                skipped: Some("duplicate"),
                ..Routed::default()
            }),
            None => router.route(&p.topic, &p.payload, p.retain, m.received_ms),
        };
        match outcome {
            Ok(routed) => {
                readings.extend(routed.readings);
                for (rejection, line) in routed.bad_lines {
                    reject(p, rejection, line.as_bytes());
                }
                if let Some(reason) = routed.skipped {
                    match skipped.iter_mut().find(|(r, _)| *r == reason) {
                        Some((_, n)) => *n += 1,
                        None => skipped.push((reason, 1)),
                    }
                    if count {
                        metrics::counter!("dakkio_mqtt_messages_skipped_total", "reason" => reason)
                            .increment(1);
                        debug!(
                            topic = truncate_str(&p.topic, REJECT_ORIGIN_LIMIT),
                            reason, "mqtt message skipped"
                        );
                    }
                }
                ignored.add(routed.ignored);
            }
            Err(rejection) => reject(p, rejection, &p.payload),
        }
    }
    if count {
        if ignored.arrays > 0 {
            metrics::counter!("dakkio_mqtt_ignored_total", "reason" => "array")
                .increment(ignored.arrays as u64);
        }
        if ignored.text > 0 {
            metrics::counter!("dakkio_mqtt_ignored_total", "reason" => "text")
                .increment(ignored.text as u64);
        }
    }
    let mut counters: Vec<(String, i64)> = skipped
        .into_iter()
        .map(|(r, n)| (skip_counter(r), n))
        .collect();
    if ignored.arrays > 0 {
        counters.push(("mqtt:ignored:array".into(), ignored.arrays as i64));
    }
    if ignored.text > 0 {
        counters.push(("mqtt:ignored:text".into(), ignored.text as i64));
    }
    (readings, rejects, counters)
}

/// Submit readings and rejects without waiting; the returned future
/// resolves once all of them have committed (or been refused). `None` when
/// the store has stopped.
async fn submit_parts(
    store: &StoreHandle,
    readings: Vec<crate::reading::Reading>,
    rejects: Vec<Reject>,
    counters: Vec<(String, i64)>,
) -> Option<Settle> {
    let readings = if !readings.is_empty() {
        match store.submit(readings).await {
            Ok(p) => Some(p),
            Err(e) => {
                error!(error = %e, "the store has stopped; mqtt input stops");
                return None;
            }
        }
    } else {
        None
    };
    let mut pending_rejects = Vec::with_capacity(rejects.len() + 1);
    // Skips are counted in the ledger with the batch, and awaited like a
    // reject: the messages are acknowledged only once they are counted.
    if !counters.is_empty() {
        match store.add_counters(counters).await {
            Ok(p) => pending_rejects.push(p),
            Err(e) => {
                error!(error = %e, "the store has stopped; mqtt input stops");
                return None;
            }
        }
    }
    for r in rejects {
        match store.submit_reject(r).await {
            Ok(p) => pending_rejects.push(p),
            Err(e) => {
                error!(error = %e, "the store has stopped; mqtt input stops");
                return None;
            }
        }
    }
    Some(Box::pin(async move {
        let readings = match readings {
            Some(p) => p.wait().await.map(|a| a.count),
            None => Ok(0),
        };
        let mut rejects = Ok(());
        for p in pending_rejects {
            if let Err(e) = p.wait().await {
                rejects = Err(e);
            }
        }
        Settled { readings, rejects }
    }))
}

/// Queue one ack in rumqttc's request channel without waiting. False when
/// it is full (or, only while stopping, the event loop is gone: the stop
/// deadline ends the wait and the broker redelivers).
fn try_ack(client: &AsyncClient, ack: &Ack) -> bool {
    // rumqttc builds the ack from the QoS and packet id only; an empty
    // topic and payload allocate nothing.
    let mut publish = Publish::new(String::new(), ack.qos, Vec::new());
    publish.pkid = ack.pkid;
    debug_assert!(ack.qos != QoS::AtMostOnce);
    client.try_ack(&publish).is_ok()
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}
