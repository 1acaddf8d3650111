//! The MQTT input: subscribe to the routes' filters, turn each message into
//! readings, and acknowledge it only once those readings have committed.
//!
//! # Design (acknowledge after commit)
//!
//! Two tasks, joined by a bounded channel:
//!
//! - the **poll task** owns rumqttc's `EventLoop` and does nothing but poll
//!   it: publishes go into the channel tagged with the connection *epoch*;
//!   on every ConnAck it re-subscribes (a persistent session keeps the
//!   subscriptions, but a broker that lost its state would otherwise deliver
//!   nothing); on a connection error it bumps the epoch and waits an
//!   exponential backoff with jitter (backon's `ExponentialBuilder`, used as
//!   an iterator of delays because the event loop drives the retries) before
//!   polling again, which reconnects. It never awaits an ack: awaiting
//!   `AsyncClient::ack` beside `poll` deadlocks when the broker resends a
//!   burst after a reconnect.
//! - the **commit task** reads publishes in batches, routes and decodes them
//!   (`route.rs`), submits the readings (one `StoreHandle::submit` per batch)
//!   and the rejects (`submit_reject`) without waiting, and keeps a FIFO of
//!   (batch, pending commit). Many batches share one group commit. When the
//!   front batch's commit is reported it moves the batch's acks, in arrival
//!   order, to the *ack queue* (epoch, packet id, QoS: 16 bytes each, no
//!   payload) and drops the batch; the ack queue is handed to rumqttc with
//!   `try_ack`, never blocking. When rumqttc's request channel is full the
//!   rest of the queue waits and is retried every few milliseconds, while
//!   batches keep being read, committed and dropped: a waiting ack never
//!   holds a publish, so the poll task is never stuck behind it and keeps
//!   polling the event loop, which sends those acks and the keepalive pings.
//!
//! Why the ack queue: rumqttc's `EventLoop::select` reads up to 10 incoming
//! packets per turn but sends only one request, so while a broker resends a
//! large session backlog at once the acks fall behind about 10 to 1. If a
//! blocked ack held its batch in the FIFO, the FIFO would fill, the commit
//! task would stop reading, the poll task would block handing over a
//! publish, and the event loop that sends the acks and pings would never be
//! polled again: the connection died without the gateway noticing
//! (`sigterm::restart_with_a_large_broker_backlog_drains` in the fault
//! suite reproduced it with 90,000 messages queued).
//!
//! Invariants:
//! - a QoS 1/2 message is acknowledged only after every reading it produced
//!   (or its reject row) has committed, and in the order messages arrived;
//! - an ack is sent only if the message arrived on the current connection
//!   (same epoch, checked under the lock the poll task takes to bump it).
//!   Acks already queued when the connection drops are discarded by rumqttc
//!   itself (`EventLoop::clean`); the broker redelivers those messages, so a
//!   stale ack is dropped rather than risk acknowledging an unrelated
//!   delivery that reuses the packet id;
//! - when the store refuses (`store.on_full = "reject"`, disk full) nothing
//!   is acknowledged: the batch is submitted again with backoff and no new
//!   message is read meanwhile (the broker keeps them);
//! - a message that can never become a reading (bad payload, no route,
//!   unknown bucket) is kept in rejects and then acknowledged, so it is not
//!   redelivered forever;
//! - memory is bounded by [`MAX_OUTSTANDING`] messages in the FIFO plus the
//!   channel; beyond that the poll task waits (for a commit, never for an
//!   ack), TCP pushes back on the broker. The ack queue and the request
//!   channel (`REQUESTS`) hold one entry per message the broker has sent
//!   on this connection and not yet had acknowledged, which the broker
//!   bounds per session (mosquitto: `max_inflight_messages`, and on a session
//!   resume the queued backlog, `max_queued_messages`: 100,000 messages are
//!   at most 2 MiB of ack queue, given back once it drains). Acks of an
//!   earlier connection are dropped on the next retry (always at the
//!   queue's front: epochs only grow).
//!
//! At-least-once: a crash between commit and ack, or a connection drop, makes
//! the broker redeliver; duplicates are bounded by the messages in flight
//! (the broker's `max_inflight_messages`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, MqttConfig, MqttTls};
use crate::ingest::route::{Rejection, Router};
use crate::reading::now_ms;
use crate::store::{Reject, StoreError, StoreHandle, REJECT_RAW_LIMIT};
use crate::telemetry::Health;

/// The test-only negative control: when set to `1`, messages are
/// acknowledged on receipt, *before* their commit. It exists so that the
/// crash test can prove it detects loss. Only in builds with the
/// `fault-injection` feature (the tests'; never a package's); logged at
/// ERROR when set.
#[cfg(feature = "fault-injection")]
pub const ACK_BEFORE_COMMIT_ENV: &str = "DAKKIO_GATEWAY_TEST_ACK_BEFORE_COMMIT";

/// Messages between the poll task and the commit task.
const CHANNEL: usize = 1024;
/// Store state key: the filters subscribed at the last start (JSON array).
const FILTERS_STATE: &str = "mqtt:filters";
/// Messages read into one store submit at most.
const BATCH: usize = 512;
/// Messages held in the FIFO (submitted, not yet acknowledged) at most.
pub const MAX_OUTSTANDING: usize = 4096;
/// rumqttc's request channel: acks and subscribes. Allocated lazily; acks
/// beyond it wait, much smaller, in the commit task's ack queue, so it need
/// not cover a backlog (a `Request` is ten times an ack queue entry). Not
/// smaller: at 8,192, acks waited for room so often at full speed that the
/// end-to-end bench fell from 49,000 to 22,000 readings/s.
const REQUESTS: usize = 65_536;
/// Ack queue capacity kept once it is empty again (16 bytes each).
const ACKS_KEPT: usize = 4096;
/// How soon acks waiting for room in the request channel are tried again.
const ACK_RETRY: Duration = Duration::from_millis(2);
/// Room above `max_packet_size` for the topic and the fixed header, so that
/// a payload just over the limit is rejected as `too_large` (bad input)
/// instead of failing the connection.
const PACKET_OVERHEAD: usize = 65_536 + 16;
/// How long a stop waits for outstanding commits before leaving them to
/// redelivery.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// At most one WARN per this interval about bad messages.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The health board's name for this part.
pub const HEALTH_PART: &str = "mqtt";

/// One publish as handed from the poll task to the commit task.
struct Incoming {
    epoch: u64,
    received_ms: i64,
    publish: Publish,
    acked: bool,
}

/// The MQTT input part.
pub struct MqttInput {
    config: MqttConfig,
    client_id: String,
    router: Router,
    store: StoreHandle,
    health: Health,
    ack_before_commit: bool,
}

impl MqttInput {
    /// Build the part from the `[mqtt]` section (`None` when absent).
    pub fn new(config: &Config, store: StoreHandle, health: Health) -> Option<MqttInput> {
        let mqtt = config.mqtt.as_ref()?;
        Some(Self::from_parts(
            mqtt.clone(),
            mqtt.client_id_or(&config.gateway.id).to_owned(),
            config.buckets.iter().map(|b| b.id.clone()),
            store,
            health,
        ))
    }

    pub fn from_parts(
        config: MqttConfig,
        client_id: String,
        buckets: impl IntoIterator<Item = String>,
        store: StoreHandle,
        health: Health,
    ) -> MqttInput {
        #[cfg(feature = "fault-injection")]
        let ack_before_commit = {
            let on = std::env::var(ACK_BEFORE_COMMIT_ENV).is_ok_and(|v| v == "1");
            if on {
                error!(
                    env = ACK_BEFORE_COMMIT_ENV,
                    "test-only switch set: MQTT messages are acknowledged before their commit \
                     and can be lost on a crash; never use this in production"
                );
            }
            on
        };
        #[cfg(not(feature = "fault-injection"))]
        let ack_before_commit = false;
        MqttInput {
            router: Router::new(&config, buckets),
            config,
            client_id,
            store,
            health,
            ack_before_commit,
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let options = match self.options() {
            Ok(o) => o,
            Err(e) => {
                error!(error = %format!("{e:#}"), "cannot set up the MQTT connection; MQTT input disabled");
                self.health
                    .set_degraded(HEALTH_PART, format!("cannot set up TLS: {e}"));
                return;
            }
        };
        let address = format!("{}:{}", self.config.host, self.config.port);
        self.health.set_degraded(
            HEALTH_PART,
            format!("connecting to the broker at {address}"),
        );
        metrics::gauge!("dakkio_mqtt_connected").set(0.0);
        let (client, eventloop) = AsyncClient::new(options, REQUESTS);
        let (tx, rx) = mpsc::channel(CHANNEL);
        let epoch = Arc::new(Mutex::new(0u64));
        let stop_poll = CancellationToken::new();
        let connected = Arc::new(AtomicBool::new(false));
        let filters: Vec<SubscribeFilter> = self
            .config
            .routes
            .iter()
            .map(|r| SubscribeFilter::new(r.topic.filter().to_owned(), qos(r.qos)))
            .collect();
        info!(
            broker = %address,
            client_id = %self.client_id,
            routes = filters.len(),
            "mqtt input starting"
        );
        // A persistent session keeps the subscriptions of routes removed
        // since the last start: unsubscribe them once subscribed.
        let current: Vec<String> = filters.iter().map(|f| f.path.clone()).collect();
        let reader = self.store.reader().clone();
        let previous: Vec<String> =
            tokio::task::spawn_blocking(move || reader.state_blocking(FILTERS_STATE))
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|m| m.get(FILTERS_STATE).cloned())
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or_default();
        let stale: Vec<String> = previous
            .into_iter()
            .filter(|p| !current.contains(p))
            .collect();
        let poll = PollTask {
            eventloop,
            client: client.clone(),
            tx,
            epoch: epoch.clone(),
            filters,
            stale,
            recorded: false,
            unsubscribing: Vec::new(),
            unsubacks: 0,
            current,
            store: self.store.clone(),
            health: self.health.clone(),
            address,
            max_delay: self.config.reconnect_max_delay,
            connected: connected.clone(),
        };
        let poll_handle = tokio::spawn(poll.run(stop_poll.clone()));
        let commit = CommitTask {
            rx,
            client: client.clone(),
            epoch,
            router: self.router,
            store: self.store,
            ack_before_commit: self.ack_before_commit,
            fifo: VecDeque::new(),
            outstanding: 0,
            acks: VecDeque::new(),
            rejects_logged: RateLimit::new(),
            submissions: 0,
            resumed_at: 0,
        };
        commit.run(cancel).await;
        // Every ack is queued; a DISCONNECT behind them flushes them and
        // ends the poll task. If the broker is away, the stop token does.
        let _ = client.try_disconnect();
        let mut poll_handle = poll_handle;
        if !connected.load(Ordering::Relaxed) {
            stop_poll.cancel();
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut poll_handle)
            .await
            .is_err()
        {
            stop_poll.cancel();
            let _ = poll_handle.await;
        }
        metrics::gauge!("dakkio_mqtt_connected").set(0.0);
        info!("mqtt input stopped");
    }

    fn options(&self) -> anyhow::Result<MqttOptions> {
        let c = &self.config;
        let mut o = MqttOptions::new(self.client_id.clone(), c.host.clone(), c.port);
        o.set_keep_alive(c.keepalive)
            .set_clean_session(c.clean_session)
            .set_manual_acks(true)
            .set_max_packet_size(c.max_packet_size + PACKET_OVERHEAD, 64 * 1024);
        if let Some(user) = &c.username {
            let pw = c.password.as_ref().map_or("", |p| p.expose());
            o.set_credentials(user.clone(), pw.to_owned());
        }
        if let Some(tls) = &c.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls_config(tls)?),
            )));
        }
        Ok(o)
    }
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// A rustls client config with the ring provider: the CA file's
/// certificates (else the webpki roots) and an optional client certificate.
fn tls_config(tls: &MqttTls) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading `mqtt.tls.ca_file` `{}`", path.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("parsing `{}`", path.display()))?)
                    .with_context(|| format!("a certificate in `{}`", path.display()))?;
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "`mqtt.tls.ca_file` `{}` holds no PEM certificate",
                path.display()
            );
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match &tls.client_auth {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| {
                    format!("reading `mqtt.tls.client_cert_file` `{}`", cert.display())
                })?;
            let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
                format!("reading `mqtt.tls.client_key_file` `{}`", key.display())
            })?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    })
}

/// Polls the event loop; see the module doc.
struct PollTask {
    eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::Sender<Incoming>,
    epoch: Arc<Mutex<u64>>,
    filters: Vec<SubscribeFilter>,
    /// Filters subscribed by an earlier start, no longer routed.
    stale: Vec<String>,
    /// Whether `current` was recorded in the store (after a SubAck).
    recorded: bool,
    /// Unsubscribed, awaiting the broker's UNSUBACKs.
    unsubscribing: Vec<String>,
    unsubacks: usize,
    current: Vec<String>,
    store: StoreHandle,
    health: Health,
    address: String,
    max_delay: Duration,
    /// Between a ConnAck and the next connection error.
    connected: Arc<AtomicBool>,
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
        *self.epoch.lock().expect("epoch lock") += 1;
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

    async fn run(mut self, stop: CancellationToken) {
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
                    let epoch = *self.epoch.lock().expect("epoch lock");
                    let incoming = Incoming {
                        epoch,
                        received_ms: now_ms(),
                        publish,
                        acked: false,
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

type Settle = Pin<Box<dyn Future<Output = Settled> + Send>>;

/// The outcome of a batch's store commands.
struct Settled {
    readings: Result<usize, StoreError>,
    rejects: Result<(), StoreError>,
}

/// A batch of messages submitted together, in arrival order.
struct Entry {
    msgs: Vec<Incoming>,
    /// The commit outcome, while not yet known.
    wait: Option<Settle>,
    /// Parts refused by the store, to submit again.
    retry_readings: bool,
    retry_rejects: bool,
    /// Known and committed: its acks may go to the ack queue.
    committed: bool,
    /// When its parts were last submitted (`CommitTask::submissions`).
    submitted: u64,
}

struct CommitTask {
    rx: mpsc::Receiver<Incoming>,
    client: AsyncClient,
    epoch: Arc<Mutex<u64>>,
    router: Router,
    store: StoreHandle,
    ack_before_commit: bool,
    fifo: VecDeque<Entry>,
    /// Messages in the FIFO.
    outstanding: usize,
    /// Acks of committed messages, in arrival order, waiting for room in
    /// rumqttc's request channel (see the module doc).
    acks: VecDeque<PendingAck>,
    rejects_logged: RateLimit,
    /// Submissions so far, to order an entry's attempt against a recovery.
    submissions: u64,
    /// The submission whose commit ended the last refusal: a refusal of an
    /// earlier submission belongs to that episode and is not a new one
    /// (after a full disk, the FIFO holds many entries refused before the
    /// space came back; each must not log its own WARN/INFO pair).
    resumed_at: u64,
}

/// Await the front entry's commit outcome; pending when there is none to
/// await (empty, already known, or waiting for a retry).
async fn front_outcome(fifo: &mut VecDeque<Entry>) -> Settled {
    match fifo.front_mut().and_then(|e| e.wait.as_mut()) {
        Some(wait) => wait.await,
        None => std::future::pending().await,
    }
}

impl CommitTask {
    async fn run(mut self, cancel: CancellationToken) {
        let mut stopping = false;
        let mut stop_deadline = None;
        let mut retry: Option<(Instant, backon::ExponentialBackoff)> = None;
        let mut buf = Vec::with_capacity(BATCH);
        let mut store_refusing = false;
        loop {
            let ack_blocked = self.ack_front();
            if stopping && self.fifo.is_empty() && self.acks.is_empty() {
                break;
            }
            let can_read = !stopping && retry.is_none() && self.outstanding < MAX_OUTSTANDING;
            let retry_at = retry.as_ref().map(|(at, _)| *at);
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if !stopping => {
                    stopping = true;
                    stop_deadline = Some(tokio::time::Instant::now() + STOP_DEADLINE);
                    // The poll task must never wait on us from here on.
                    self.rx.close();
                }
                _ = tokio::time::sleep_until(stop_deadline.unwrap_or_else(far_future)), if stop_deadline.is_some() => {
                    warn!(
                        messages = self.outstanding,
                        "stop deadline reached with mqtt messages not yet committed; \
                         they stay unacknowledged at the broker and are redelivered"
                    );
                    break;
                }
                settled = front_outcome(&mut self.fifo) => {
                    let entry = self.fifo.front_mut().expect("front");
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
                            entry.committed = true;
                            if store_refusing {
                                store_refusing = false;
                                self.resumed_at = submitted;
                                info!("the store accepts readings again; mqtt ingest resumed");
                            }
                            retry = None;
                        }
                        Some(e) => {
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
                                None => backon::ExponentialBuilder::default()
                                    .with_min_delay(Duration::from_millis(100))
                                    .with_max_delay(Duration::from_secs(5))
                                    .with_jitter()
                                    .without_max_times()
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
                }
                _ = tokio::time::sleep(ACK_RETRY), if ack_blocked => {}
                n = self.rx.recv_many(&mut buf, BATCH), if can_read => {
                    if n == 0 {
                        stopping = true;
                        continue;
                    }
                    if !self.submit(std::mem::take(&mut buf)).await {
                        return;
                    }
                    buf = Vec::with_capacity(BATCH);
                }
            }
        }
        self.ack_front();
    }

    /// Route a batch, submit its readings and rejects, and queue it.
    /// False when the store has stopped.
    async fn submit(&mut self, mut msgs: Vec<Incoming>) -> bool {
        if self.ack_before_commit {
            for m in &mut msgs {
                m.acked =
                    try_ack(&self.client, &self.epoch, &PendingAck::of(m)) != AckResult::Blocked;
            }
        }
        let (readings, rejects) = self.route(&msgs, true);
        let wait = match submit_parts(&self.store, readings, rejects).await {
            Some(w) => w,
            None => return false,
        };
        self.outstanding += msgs.len();
        self.submissions += 1;
        self.fifo.push_back(Entry {
            submitted: self.submissions,
            msgs,
            wait: Some(wait),
            retry_readings: false,
            retry_rejects: false,
            committed: false,
        });
        true
    }

    /// Submit the refused parts of the front entry again.
    async fn resubmit_front(&mut self) -> bool {
        let Some(entry) = self.fifo.pop_front() else {
            return true;
        };
        let (readings, rejects) = self.route(&entry.msgs, false);
        self.fifo.push_front(entry);
        let entry = self.fifo.front().expect("front");
        let readings = if entry.retry_readings {
            readings
        } else {
            Vec::new()
        };
        let rejects = if entry.retry_rejects {
            rejects
        } else {
            Vec::new()
        };
        let Some(wait) = submit_parts(&self.store, readings, rejects).await else {
            return false;
        };
        self.submissions += 1;
        let entry = self.fifo.front_mut().expect("front");
        entry.retry_readings = false;
        entry.retry_rejects = false;
        entry.wait = Some(wait);
        entry.submitted = self.submissions;
        true
    }

    fn route(
        &mut self,
        msgs: &[Incoming],
        count: bool,
    ) -> (Vec<crate::reading::Reading>, Vec<Reject>) {
        let mut readings = Vec::with_capacity(msgs.len());
        let mut rejects = Vec::new();
        for m in msgs {
            let p = &m.publish;
            match self.router.readings(&p.topic, &p.payload, m.received_ms) {
                Ok(r) => readings.extend(r),
                Err(Rejection { reason, detail }) => {
                    if count {
                        metrics::counter!(
                            "dakkio_readings_rejected_total",
                            "source" => "mqtt",
                            "reason" => reason
                        )
                        .increment(1);
                        debug!(topic = %p.topic, reason, detail = %detail, "mqtt message rejected");
                        if let Some(suppressed) = self.rejects_logged.allow() {
                            warn!(topic = %p.topic, reason, detail = %detail, suppressed, "bad mqtt message kept in rejects (`queue stats` counts them by reason)");
                        }
                    }
                    let raw_len = p.payload.len().min(REJECT_RAW_LIMIT);
                    rejects.push(Reject {
                        origin: format!("mqtt:{}", p.topic),
                        reason: reason.to_owned(),
                        detail,
                        raw: p.payload[..raw_len].to_vec(),
                    });
                }
            }
        }
        (readings, rejects)
    }

    /// Move the committed entries at the front to the ack queue, in order,
    /// and hand the ack queue to rumqttc. True when acks wait for room in
    /// rumqttc's request channel.
    fn ack_front(&mut self) -> bool {
        while self.fifo.front().is_some_and(|e| e.committed) {
            let entry = self.fifo.pop_front().expect("front");
            self.outstanding -= entry.msgs.len();
            self.acks.extend(
                entry
                    .msgs
                    .iter()
                    .filter(|m| !m.acked && m.publish.qos != QoS::AtMostOnce)
                    .map(PendingAck::of),
            );
        }
        while let Some(ack) = self.acks.front() {
            if try_ack(&self.client, &self.epoch, ack) == AckResult::Blocked {
                return true;
            }
            self.acks.pop_front();
        }
        if self.acks.capacity() > ACKS_KEPT {
            // A drained backlog gives its memory back.
            self.acks.shrink_to(ACKS_KEPT);
        }
        false
    }
}

/// Submit readings and rejects without waiting; the returned future
/// resolves once all of them have committed (or been refused). `None` when
/// the store has stopped.
async fn submit_parts(
    store: &StoreHandle,
    readings: Vec<crate::reading::Reading>,
    rejects: Vec<Reject>,
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
    let mut pending_rejects = Vec::with_capacity(rejects.len());
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

#[derive(Debug, PartialEq, Eq)]
enum AckResult {
    Sent,
    /// From an earlier connection: dropped, the broker redelivers it.
    Stale,
    Blocked,
}

/// What acknowledging a message needs, without its topic and payload.
#[derive(Debug, Clone, Copy)]
struct PendingAck {
    epoch: u64,
    pkid: u16,
    qos: QoS,
}

impl PendingAck {
    fn of(m: &Incoming) -> PendingAck {
        PendingAck {
            epoch: m.epoch,
            pkid: m.publish.pkid,
            qos: m.publish.qos,
        }
    }
}

fn try_ack(client: &AsyncClient, epoch: &Mutex<u64>, m: &PendingAck) -> AckResult {
    if m.qos == QoS::AtMostOnce {
        return AckResult::Sent;
    }
    // Held while queueing, so the poll task cannot bump the epoch between
    // the check and the ack.
    let current = epoch.lock().expect("epoch lock");
    if *current != m.epoch {
        metrics::counter!("dakkio_mqtt_stale_acks_total").increment(1);
        return AckResult::Stale;
    }
    // rumqttc builds the ack from the QoS and packet id only; an empty
    // topic and payload allocate nothing.
    let mut publish = Publish::new(String::new(), m.qos, Vec::new());
    publish.pkid = m.pkid;
    match client.try_ack(&publish) {
        Ok(()) => AckResult::Sent,
        // Full (or, only while stopping, the event loop already gone: the
        // stop deadline ends the wait and the broker redelivers).
        Err(ClientError::TryRequest(_)) => AckResult::Blocked,
        Err(_) => AckResult::Blocked,
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// At most one log line per [`REJECT_LOG_INTERVAL`], counting the rest.
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    fn new() -> RateLimit {
        RateLimit {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < REJECT_LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}
