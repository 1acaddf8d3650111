//! The poll task: owns rumqttc's `EventLoop` and only moves packets.
//! Publishes go to the commit task over a bounded channel, tagged with the
//! connection epoch (a payload over `max_packet_size` is cut to the
//! reject's first bytes on the way, see "Large messages" in `mod.rs`);
//! ConnAcks and connection errors bump the epoch (under the lock the commit
//! task holds while queueing an ack, see `commit.rs`); every ConnAck
//! re-subscribes; a connection error waits a backoff before the next poll
//! reconnects. What to log about connects and losses, a lost broker
//! session and a client id taken over by another client is decided by
//! [`Watch`] (`watch.rs`). It never awaits an ack (awaiting one beside
//! `poll` deadlocks on a redelivery burst) and never waits for anything but
//! room in the channel and its share of the byte budget
//! ([`MAX_INFLIGHT_BYTES`](super::MAX_INFLIGHT_BYTES)), both given back by
//! commits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, StateError, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::watch::{Close, Watch};
use super::{charge, Incoming, Shared, FILTERS_STATE, HEALTH_PART};
use crate::reading::now_ms;
use crate::store::{StoreHandle, REJECT_RAW_LIMIT};
use crate::telemetry::Health;

/// Polls the event loop; see the module doc.
pub(super) struct PollTask {
    pub(super) eventloop: EventLoop,
    pub(super) client: AsyncClient,
    pub(super) tx: mpsc::Sender<Incoming>,
    pub(super) shared: Arc<Shared>,
    pub(super) filters: Vec<SubscribeFilter>,
    /// Filters subscribed by an earlier start, no longer routed.
    pub(super) stale: Vec<String>,
    /// Whether `current` was recorded in the store (after a SubAck).
    pub(super) recorded: bool,
    /// Unsubscribed, awaiting the broker's UNSUBACKs.
    pub(super) unsubscribing: Vec<String>,
    pub(super) unsubacks: usize,
    pub(super) current: Vec<String>,
    pub(super) store: StoreHandle,
    pub(super) health: Health,
    pub(super) address: String,
    pub(super) max_delay: Duration,
    /// Between a ConnAck and the next connection error.
    pub(super) connected: Arc<AtomicBool>,
    /// What the connection's history means (logging, takeovers).
    pub(super) watch: Watch,
    pub(super) client_id: String,
    /// `mqtt.max_packet_size`: larger payloads are cut to the reject's size.
    pub(super) max_payload: usize,
    /// How many subscriptions match a topic (copies a broker may send).
    pub(super) copies: crate::topic::Subscriptions,
    /// Retained messages matching several subscriptions received on this
    /// connection (a hash of topic and payload): the broker sends a retained
    /// message once per matching subscription, so a second one is a copy.
    pub(super) retained_seen: std::collections::HashSet<u64>,
}

impl PollTask {
    fn backoff(&self) -> backon::ExponentialBackoff {
        // backon's jitter adds up to one delay again, so cap at half.
        crate::retry::exponential(Duration::from_millis(100), self.max_delay / 2)
            .with_jitter()
            .build()
    }

    fn bump_epoch(&self) {
        *self.shared.epoch.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    /// After the first SubAck: unsubscribe the filters of removed routes
    /// (the persistent session would otherwise keep delivering them, as
    /// `no_route` rejects) and record the current ones for the next start.
    async fn forget_stale_filters(&mut self) {
        if self.recorded {
            return;
        }
        let mut all_sent = true;
        for f in &self.stale {
            if let Err(e) = self.client.try_unsubscribe(f.clone()) {
                debug!(filter = %f, error = %e, "unsubscribe deferred to the next start");
                all_sent = false;
            }
        }
        if all_sent {
            // Said when the broker has confirmed them all (UNSUBACK).
            self.unsubscribing = self.stale.clone();
        } else {
            // Not recorded: the stale filters are tried at the next start.
            return;
        }
        let value = serde_json::to_string(&self.current).unwrap_or_default();
        if self
            .store
            .set_state(vec![(FILTERS_STATE.to_owned(), value)])
            .await
            .is_ok()
        {
            self.recorded = true;
            self.stale.clear();
        }
    }

    /// Whether this retained publish is a further copy of one already
    /// received on this connection: a broker sends a retained message once
    /// per matching subscription when they are made (live messages come
    /// once: MQTT requires one copy and mosquitto 2 sends no more; a second
    /// identical live message is a new message). Only topics matching
    /// several subscriptions are remembered, until the next connection.
    fn is_copy(&mut self, topic: &str, payload: &Bytes) -> bool {
        use std::hash::{Hash, Hasher};
        if self.copies.copies(topic) < 2 {
            return false;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        topic.hash(&mut h);
        payload.hash(&mut h);
        !self.retained_seen.insert(h.finish())
    }

    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut backoff = self.backoff();
        // Whether this connection's lines are logged (see `watch.rs`).
        let mut announce = true;
        // Received and not acknowledged when the last connection dropped.
        let mut unacknowledged_at_loss = 0;
        let mut subscribe_due = false;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                e = self.eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.bump_epoch();
                    self.retained_seen.clear();
                    backoff = self.backoff();
                    let c = self
                        .watch
                        .handle_connack(Instant::now(), ack.session_present);
                    if c.session_lost {
                        metrics::counter!("dakkio_mqtt_sessions_lost_total").increment(1);
                        warn!(
                            broker = %self.address,
                            client_id = %self.client_id,
                            unacknowledged = unacknowledged_at_loss,
                            disconnected_for = ?c.away_for.unwrap_or_default(),
                            "the mqtt broker has no session for this gateway (it lost its \
                             persistence, or the session expired): what it queued for the \
                             gateway while disconnected is gone and cannot be counted; the \
                             `unacknowledged` messages received before are kept; check the \
                             broker's `persistence`, `autosave_interval` and \
                             `persistent_client_expiration`"
                        );
                    }
                    announce = c.log;
                    if !c.log {
                        debug!(broker = %self.address, session_present = ack.session_present, "mqtt reconnected");
                    } else if c.restored {
                        info!(broker = %self.address, session_present = ack.session_present, "mqtt broker connection restored");
                    } else {
                        info!(broker = %self.address, session_present = ack.session_present, "connected to the mqtt broker");
                    }
                    self.connected.store(true, Ordering::Relaxed);
                    self.health.set_ok(HEALTH_PART);
                    metrics::gauge!("dakkio_mqtt_connected").set(1.0);
                    subscribe_due = true;
                }
                Ok(Event::Incoming(Packet::Publish(mut publish))) => {
                    let epoch = *self.shared.epoch.lock().unwrap_or_else(|p| p.into_inner());
                    // Over the limit: only the reject's first bytes are
                    // kept, so the rest is freed here (see the module doc
                    // of `mod.rs` on the transport limit).
                    let duplicate =
                        publish.retain && self.is_copy(&publish.topic, &publish.payload);
                    let len = publish.payload.len();
                    let oversize = (len > self.max_payload).then_some(len);
                    if oversize.is_some() {
                        publish.payload =
                            Bytes::copy_from_slice(&publish.payload[..len.min(REJECT_RAW_LIMIT)]);
                    }
                    // Wait for its share of the byte budget: only commits
                    // give bytes back, never acks (see `MAX_INFLIGHT_BYTES`).
                    let Ok(bytes) = self
                        .shared
                        .budget
                        .clone()
                        .acquire_many_owned(charge(&publish))
                        .await
                    else {
                        // Closed: the commit task has stopped; the message
                        // is left unacknowledged, so redelivered.
                        continue;
                    };
                    let received_ms = now_ms();
                    self.health.input_seen(HEALTH_PART, received_ms);
                    let incoming = Incoming {
                        epoch,
                        received_ms,
                        publish,
                        oversize,
                        duplicate,
                        _bytes: Some(bytes),
                    };
                    // When the commit task has stopped reading (shutdown),
                    // the message is dropped unacknowledged: redelivered.
                    let _ = self.tx.send(incoming).await;
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if !ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        if announce {
                            info!(broker = %self.address, filters = ack.return_codes.len(), "mqtt subscriptions active");
                        } else {
                            debug!(broker = %self.address, filters = ack.return_codes.len(), "mqtt subscribed again");
                        }
                        self.forget_stale_filters().await;
                    } else {
                        error!(
                            broker = %self.address,
                            "the broker refused a subscription (check its ACL for this \
                             user and the `[[mqtt.routes]]` topics)"
                        );
                        self.health
                            .set_degraded(HEALTH_PART, "the broker refused a subscription");
                    }
                }
                Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                    self.unsubacks += 1;
                    if self.unsubacks == self.unsubscribing.len() {
                        info!(
                            broker = %self.address,
                            filters = ?std::mem::take(&mut self.unsubscribing),
                            "unsubscribed from topics no longer routed"
                        );
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    self.bump_epoch();
                    self.retained_seen.clear();
                    if self.connected.swap(false, Ordering::Relaxed) {
                        unacknowledged_at_loss = self.shared.unacknowledged.load(Ordering::Relaxed)
                            + (self.tx.max_capacity() - self.tx.capacity());
                    }
                    metrics::gauge!("dakkio_mqtt_connected").set(0.0);
                    metrics::counter!("dakkio_mqtt_reconnects_total").increment(1);
                    if matches!(e, ConnectionError::RequestsDone) {
                        break;
                    }
                    let lost = self.watch.handle_error(Instant::now(), close_kind(&e));
                    match lost.log {
                        Some(_) if lost.never_connected => {
                            warn!(broker = %self.address, error = %e, "waiting for the mqtt broker");
                        }
                        Some(not_logged) => {
                            warn!(
                                broker = %self.address,
                                error = %e,
                                reconnects_not_logged = not_logged,
                                "mqtt broker connection lost; reconnecting with backoff \
                                 (unacknowledged messages stay at the broker)"
                            );
                        }
                        None => {
                            debug!(broker = %self.address, error = %e, connected = lost.was_connected, "mqtt connection lost or reconnect failed")
                        }
                    }
                    if let Some(closes) = lost.takeover_detected {
                        metrics::counter!("dakkio_mqtt_client_id_conflicts_total").increment(1);
                        error!(
                            broker = %self.address,
                            client_id = %self.client_id,
                            closes,
                            "another client is using client id `{}`: the broker closes this \
                             gateway's connection whenever the other client connects, and \
                             each reconnect throws the other one out (or the broker keeps \
                             closing connections right after accepting them); give every \
                             client its own id (`mqtt.client_id`, by default `gateway.id`); \
                             reconnecting with a growing delay meanwhile",
                            self.client_id
                        );
                    }
                    if lost.min_delay.is_some() {
                        self.health.set_degraded(
                            HEALTH_PART,
                            format!(
                                "another client is using client id `{}` at {}",
                                self.client_id, self.address
                            ),
                        );
                    } else {
                        self.health.set_degraded(
                            HEALTH_PART,
                            format!("broker unreachable at {}: {e}", self.address),
                        );
                    }
                    let delay = backoff.next().unwrap_or(self.max_delay);
                    let delay = lost.min_delay.map_or(delay, |m| delay.max(m));
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
            if subscribe_due && !self.filters.is_empty() {
                match self.client.try_subscribe_many(self.filters.clone()) {
                    Ok(()) => subscribe_due = false,
                    // Full: tried again after the next event.
                    Err(e) => debug!(error = %e, "subscribe deferred"),
                }
            } else {
                subscribe_due = false;
            }
        }
    }
}

/// Whether the broker closed the connection (what a takeover looks like)
/// or something else ended it.
fn close_kind(e: &ConnectionError) -> Close {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let by_peer = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ConnectionReset | UnexpectedEof | BrokenPipe | ConnectionAborted
        )
    };
    match e {
        ConnectionError::MqttState(StateError::ConnectionAborted) => Close::ByPeer,
        ConnectionError::MqttState(StateError::Io(io)) | ConnectionError::Io(io) if by_peer(io) => {
            Close::ByPeer
        }
        _ => Close::Other,
    }
}
