//! The poll task: owns rumqttc's `EventLoop` and only moves packets.
//! Publishes go to the commit task over a bounded channel, tagged with the
//! connection epoch; ConnAcks and connection errors bump the epoch (under
//! the lock the commit task holds while queueing an ack, see `commit.rs`);
//! every ConnAck re-subscribes; a connection error waits a backoff before
//! the next poll reconnects. It never awaits an ack (awaiting one beside
//! `poll` deadlocks on a redelivery burst) and never waits for anything but
//! room in the channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use rumqttc::{
    AsyncClient, Event, EventLoop, Outgoing, Packet, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Incoming, Shared, FILTERS_STATE, HEALTH_PART};
use crate::reading::now_ms;
use crate::store::StoreHandle;
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
}

impl PollTask {
    fn backoff(&self) -> backon::ExponentialBackoff {
        // backon's jitter adds up to one delay again, so cap at half.
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.max_delay / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
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

    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut backoff = self.backoff();
        let mut ever_connected = false;
        // True while the broker is away and that has been said once.
        let mut away = false;
        let mut subscribe_due = false;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                e = self.eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.bump_epoch();
                    backoff = self.backoff();
                    if away {
                        info!(broker = %self.address, session_present = ack.session_present, "mqtt broker connection restored");
                    } else {
                        info!(broker = %self.address, session_present = ack.session_present, "connected to the mqtt broker");
                    }
                    away = false;
                    ever_connected = true;
                    self.connected.store(true, Ordering::Relaxed);
                    self.health.set_ok(HEALTH_PART);
                    metrics::gauge!("dakkio_mqtt_connected").set(1.0);
                    subscribe_due = true;
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let epoch = *self.shared.epoch.lock().unwrap_or_else(|p| p.into_inner());
                    let incoming = Incoming {
                        epoch,
                        received_ms: now_ms(),
                        publish,
                        oversize: None,
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
                        info!(broker = %self.address, filters = ack.return_codes.len(), "mqtt subscriptions active");
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
                    self.connected.store(false, Ordering::Relaxed);
                    metrics::gauge!("dakkio_mqtt_connected").set(0.0);
                    metrics::counter!("dakkio_mqtt_reconnects_total").increment(1);
                    if matches!(e, rumqttc::ConnectionError::RequestsDone) {
                        break;
                    }
                    if !away {
                        away = true;
                        if ever_connected {
                            warn!(broker = %self.address, error = %e, "mqtt broker connection lost; reconnecting with backoff (unacknowledged messages stay at the broker)");
                        } else {
                            warn!(broker = %self.address, error = %e, "waiting for the mqtt broker");
                        }
                    } else {
                        debug!(broker = %self.address, error = %e, "mqtt reconnect failed");
                    }
                    self.health.set_degraded(
                        HEALTH_PART,
                        format!("broker unreachable at {}: {e}", self.address),
                    );
                    let delay = backoff.next().unwrap_or(self.max_delay);
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
