//! The MQTT input: subscribe to the routes' filters, turn each message into
//! readings, and acknowledge it only once those readings have committed.
//!
//! # Design (acknowledge after commit)
//!
//! Two tasks joined by a bounded channel, and a pure ledger:
//!
//! - the **poll task** (`poll.rs`) owns rumqttc's `EventLoop` and only moves
//!   packets: publishes go into the channel tagged with the connection
//!   *epoch*; on every ConnAck it bumps the epoch and re-subscribes (a
//!   persistent session keeps the subscriptions, but a broker that lost its
//!   state would otherwise deliver nothing); on a connection error it bumps
//!   the epoch and waits an exponential backoff with jitter before polling
//!   again, which reconnects. It never awaits an ack: awaiting
//!   `AsyncClient::ack` beside `poll` deadlocks when the broker resends a
//!   burst after a reconnect.
//! - the **commit task** (`commit.rs`) reads publishes in batches, routes
//!   and decodes them (`route.rs`), submits the readings (one
//!   `StoreHandle::submit` per batch) and the rejects without waiting, and
//!   awaits the batches' commits in arrival order. Many batches share one
//!   group commit. It hands acks to rumqttc with `try_ack`, never blocking.
//! - the **acknowledgement ledger** (`ledger.rs`, no I/O) decides which ack
//!   goes out when: in arrival order, only after its batch's commit, never
//!   for a refused batch, never on another connection than the message's
//!   (stale acks are dropped: the broker redelivers those). Its module doc
//!   states the invariants; unit and property tests prove them.
//! - the **pace** (`pace.rs`, no I/O) decides when the commit task hurries
//!   the store's group commit, which otherwise waits up to
//!   `store.commit_max_delay` (1 s) for company: when the stream falls
//!   silent for much longer than its recent gaps while messages wait for
//!   their commit, the broker is most likely waiting for acks with its
//!   in-flight window full (mosquitto's default window is 20 messages;
//!   MQTT 3.1.1 does not tell the client), so waiting longer would only
//!   cap ingest at one window per deadline. The commit task also hurries
//!   near its own bounds and at stop.
//! - the **connection watch** (`watch.rs`, no I/O) reads the history of
//!   connects and losses: at most one "lost" line a minute, a WARN when a
//!   reconnect finds the broker's session gone, one ERROR and a growing
//!   delay when another client keeps taking the client id over.
//!
//! Why acks wait in the ledger's queue rather than in the batches: rumqttc's
//! `EventLoop::select` reads up to 10 incoming packets per turn but sends
//! only one request, so while a broker resends a large session backlog at
//! once the acks fall behind about 10 to 1. If a blocked ack held its batch,
//! the FIFO would fill, the commit task would stop reading, the poll task
//! would block handing over a publish, and the event loop that sends the
//! acks and pings would never be polled again: the connection died without
//! the gateway noticing (`sigterm::restart_with_a_large_broker_backlog_drains`
//! in the fault suite reproduced it with 90,000 messages queued). So a
//! committed batch gives its payloads back at once and leaves 16 bytes per
//! ack; acks waiting for room in rumqttc's request channel are retried every
//! few milliseconds while batches keep being read and committed.
//!
//! Invariants (beyond the ledger's):
//! - when the store refuses (`store.on_full = "reject"`, disk full) nothing
//!   is acknowledged: the batch is submitted again with backoff and no new
//!   message is read meanwhile (the broker keeps them);
//! - a message that can never become a reading (bad payload, no route,
//!   unknown bucket) is kept in rejects and then acknowledged, so it is not
//!   redelivered forever;
//! - acks already queued in rumqttc when the connection drops are discarded
//!   by rumqttc itself (`EventLoop::clean`); the epoch is bumped under the
//!   lock the commit task holds while queueing an ack, so no ack of an
//!   earlier connection is queued after that;
//! - memory is bounded in bytes: at most [`MAX_INFLIGHT_BYTES`] of messages
//!   received and not yet committed (the channel, the batches awaiting
//!   their commit and their readings in the store's queue), and in count:
//!   [`MAX_OUTSTANDING`] messages awaiting their commit plus the channel.
//!   Beyond either the poll task waits (for a commit, never for an ack) and
//!   TCP pushes back on the broker, which also stops at its in-flight
//!   window. Once a burst has drained, the allocator's free memory is given
//!   back (`crate::memory`), so the resident size returns to its idle
//!   level. The ledger's ack queue holds one 16-byte entry per message the
//!   broker has sent on this connection and not yet had acknowledged, which
//!   the broker bounds per session (mosquitto: `max_inflight_messages`, and
//!   on a session resume the queued backlog, `max_queued_messages`: 100,000
//!   messages are at most 2 MiB of ack queue, given back once it drains).
//!   rumqttc's request channel holds at most [`REQUESTS`] entries of
//!   `size_of::<rumqttc::Request>()` bytes ([`REQUESTS_MAX_BYTES`], at most
//!   16 MiB, checked at compile time), allocated as it fills and kept
//!   until the client is dropped; acks beyond it wait in the ledger's
//!   queue.
//!
//! # Large messages
//!
//! rumqttc refuses an incoming packet over its limit by failing the
//! connection, before the publish is seen; the broker then redelivers the
//! message on every reconnect, forever, and nothing behind it arrives. So
//! rumqttc's limit is MQTT's largest packet ([`TRANSPORT_LIMIT`], 256 MiB)
//! and `mqtt.max_packet_size` is enforced here: the poll task keeps the
//! first 1 KiB of a larger payload (copied, so the rest is freed at once),
//! and the commit task keeps it in rejects as `too_large`, counts it and
//! acknowledges it like any bad message.
//!
//! The trade-off is memory: a message has to be read whole to be
//! acknowledged (MQTT cannot skip a packet's bytes and the packet id comes
//! before the payload, but rumqttc frames whole packets), so for a moment
//! the gateway holds one message of any size the broker sends, and
//! rumqttc's read buffer keeps that capacity until the connection closes.
//! Nothing else holds it: no channel, batch or reject keeps more than
//! 1 KiB. The bound is the broker's: set mosquitto's `message_size_limit`
//! (the README's broker settings) so that no client can queue a message
//! larger than the gateway's memory allows; the unit's `MemoryMax` would
//! otherwise end the process on a message near its size.
//!
//! # Memory and the keepalive
//!
//! The byte budget ([`MAX_INFLIGHT_BYTES`]) makes the gateway read the
//! broker's stream only as fast as it commits. The broker writes a PINGRESP
//! behind everything it has already sent, up to its in-flight window
//! (`max_inflight_messages` messages): with large messages the gateway
//! reads that PINGRESP only once it has committed the window ahead of it,
//! and rumqttc ends the connection ("Last pingreq isn't acked") when that
//! takes longer than `mqtt.keepalive`; the broker then sends the window
//! again (duplicates, not loss). So `mqtt.keepalive` must exceed the window
//! in bytes divided by the ingest rate (e.g. 2,000 messages of 100 kB at
//! 10 MB/s: 20 s), or the broker's window must be smaller. Small messages
//! never come near it.
//!
//! At-least-once: a crash between commit and ack, or a connection drop, makes
//! the broker redeliver; duplicates are bounded by the messages in flight
//! (the broker's `max_inflight_messages`).

mod commit;
mod ledger;
mod pace;
mod poll;
mod watch;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, MqttOptions, Publish, QoS, SubscribeFilter, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{Config, MqttConfig, MqttTls};
use crate::ingest::route::Router;
use crate::store::StoreHandle;
use crate::telemetry::{Health, Part};

use commit::CommitTask;
use ledger::{AckPolicy, Delivery, Ledger};
use poll::PollTask;
use watch::Watch;

/// The test-only negative control: when set to `1`, messages are
/// acknowledged on receipt, *before* their commit. It exists so that the
/// crash test can prove it detects loss. Only in builds with the
/// `fault-injection` feature (the tests'; never a package's); logged at
/// ERROR when set. Read only by [`ack_policy`].
#[cfg(feature = "fault-injection")]
pub const ACK_BEFORE_COMMIT_ENV: &str = "DAKKIO_GATEWAY_TEST_ACK_BEFORE_COMMIT";

/// The ledger's policy: after the commit, unless the test-only switch
/// `ACK_BEFORE_COMMIT_ENV` is set (`fault-injection` builds only). The
/// whole switch lives here and in [`AckPolicy::OnReceipt`].
fn ack_policy() -> AckPolicy {
    #[cfg(feature = "fault-injection")]
    if std::env::var(ACK_BEFORE_COMMIT_ENV).is_ok_and(|v| v == "1") {
        error!(
            env = ACK_BEFORE_COMMIT_ENV,
            "test-only switch set: MQTT messages are acknowledged before their commit \
             and can be lost on a crash; never use this in production"
        );
        return AckPolicy::OnReceipt;
    }
    AckPolicy::AfterCommit
}

/// Messages between the poll task and the commit task.
const CHANNEL: usize = 1024;
/// Store state key: the filters subscribed at the last start (JSON array).
const FILTERS_STATE: &str = "mqtt:filters";
/// Messages read into one store submit at most.
const BATCH: usize = 512;
/// Messages awaiting their commit (submitted, not yet released by the
/// ledger) at most.
pub const MAX_OUTSTANDING: usize = 4096;
/// Payload bytes received and not yet committed at most: in the channel,
/// in batches awaiting their commit (their readings wait in the store's
/// queue meanwhile). Each message is charged its payload and topic plus
/// [`MESSAGE_OVERHEAD`]; a message larger than the whole budget takes all
/// of it, so it still passes, alone. When the budget is spent the poll
/// task waits for a commit to give bytes back, as it waits for room in the
/// channel (never for an ack). Measured (debug build, the integration
/// test `a_backlog_of_large_messages_drains_inside_the_units_memory_limit`):
/// 400 messages of 400 kB queued at the broker drain inside a 256 MiB
/// cgroup with the resident size peaking at 120 to 155 MiB (payloads, their
/// readings, SQLite's writes, rumqttc's read buffer) and back under 30 MiB
/// after; without the budget the gateway read the whole backlog at once
/// and the cgroup's OOM killer ended it.
pub const MAX_INFLIGHT_BYTES: usize = 32 * 1024 * 1024;
/// What a message costs beyond its payload and topic (`Incoming`, its
/// reading, the ledger's entry), roughly.
const MESSAGE_OVERHEAD: usize = 256;
/// Once more than this many bytes were in flight, the allocator's free
/// memory is given back when the backlog has drained.
const TRIM_AFTER: usize = 4 * 1024 * 1024;
/// rumqttc's request channel: acks and subscribes. Allocated lazily; acks
/// beyond it wait, much smaller, in the ledger's ack queue, so it need
/// not cover a backlog (a `Request` is ten times an ack queue entry). Not
/// smaller: at 8,192, acks waited for room so often at full speed that the
/// end-to-end bench fell from 49,000 to 22,000 readings/s.
const REQUESTS: usize = 65_536;
/// rumqttc's request channel's memory at most, in bytes (its queue grows
/// to [`REQUESTS`] entries and keeps that capacity while the client lives).
pub const REQUESTS_MAX_BYTES: usize = REQUESTS * std::mem::size_of::<rumqttc::Request>();
// The request channel stays a small part of the README's 40 MiB: a rumqttc
// upgrade that grows `Request` must lower `REQUESTS`.
const _: () = assert!(REQUESTS_MAX_BYTES <= 16 * 1024 * 1024);
/// rumqttc's incoming packet limit: MQTT's largest packet (the remaining
/// length field's maximum), so that no message a broker can deliver fails
/// the connection; `max_packet_size` is enforced here instead (see "Large
/// messages" in the module doc).
const TRANSPORT_LIMIT: usize = 268_435_455;
/// How long a stop waits for outstanding commits before leaving them to
/// redelivery.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// At most one WARN per this interval about bad messages.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The health board's name for this part.
pub const HEALTH_PART: &Part = &Part::Mqtt;

/// One publish as handed from the poll task to the commit task.
struct Incoming {
    epoch: u64,
    received_ms: i64,
    publish: Publish,
    /// The payload's length when it was over `max_packet_size`: only its
    /// first bytes are kept, for the reject (see `poll.rs`).
    oversize: Option<usize>,
    /// A second copy of a retained message, sent for another matching
    /// subscription (see `PollTask::is_copy`): skipped, counted.
    duplicate: bool,
    /// Its share of [`MAX_INFLIGHT_BYTES`], given back when it is dropped
    /// (after its batch's commit, or unread at a stop).
    _bytes: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A message's charge against [`MAX_INFLIGHT_BYTES`].
fn charge(publish: &Publish) -> u32 {
    let bytes = publish.payload.len() + publish.topic.len() + MESSAGE_OVERHEAD;
    // MAX_INFLIGHT_BYTES fits in u32.
    bytes.min(MAX_INFLIGHT_BYTES) as u32
}

impl Incoming {
    fn delivery(&self) -> Delivery {
        Delivery {
            epoch: self.epoch,
            pkid: self.publish.pkid,
            qos: self.publish.qos,
        }
    }
}

/// What the poll and commit tasks share.
struct Shared {
    /// The current connection: bumped by the poll task on every ConnAck and
    /// connection error, held by the commit task while it queues an ack.
    epoch: Mutex<u64>,
    /// Messages the commit task has received and not yet acknowledged.
    unacknowledged: AtomicUsize,
    /// The bytes in flight (see [`MAX_INFLIGHT_BYTES`]): the poll task
    /// takes a message's share before handing it over.
    budget: Arc<tokio::sync::Semaphore>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            epoch: Mutex::default(),
            unacknowledged: AtomicUsize::default(),
            budget: Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_BYTES)),
        }
    }
}

impl Shared {
    /// Bytes in flight now.
    fn inflight_bytes(&self) -> usize {
        MAX_INFLIGHT_BYTES - self.budget.available_permits()
    }
}

/// At most one log line per interval, counting the rest.
struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    fn new(interval: Duration) -> RateLimit {
        RateLimit {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
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

/// The MQTT input part.
pub struct MqttInput {
    config: MqttConfig,
    client_id: String,
    router: Router,
    store: StoreHandle,
    health: Health,
    ack_policy: AckPolicy,
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
        MqttInput {
            router: Router::new(&config, buckets),
            config,
            client_id,
            store,
            health,
            ack_policy: ack_policy(),
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
        let shared = Arc::new(Shared::default());
        let budget = shared.budget.clone();
        let stop_poll = CancellationToken::new();
        let connected = Arc::new(AtomicBool::new(false));
        let filters = subscribe_filters(&self.config);
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
        // Subscriptions recorded by an earlier run: the broker should hold
        // a session for this client id.
        let had_session = !previous.is_empty();
        let stale: Vec<String> = previous
            .into_iter()
            .filter(|p| !current.contains(p))
            .collect();
        let poll = PollTask {
            eventloop,
            client: client.clone(),
            tx,
            shared: shared.clone(),
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
            watch: Watch::new(!self.config.clean_session, had_session),
            client_id: self.client_id.clone(),
            max_payload: self.config.max_packet_size,
            copies: crate::topic::Subscriptions::new(&plain_filters(&self.config)),
            retained_seen: Default::default(),
        };
        let poll_handle = tokio::spawn(poll.run(stop_poll.clone()));
        let commit = CommitTask::new(
            rx,
            client.clone(),
            shared,
            self.router,
            self.config.max_packet_size,
            self.store,
            Ledger::new(self.ack_policy),
        );
        commit.run(cancel).await;
        // A poll task waiting for bytes must not wait for a reader gone.
        budget.close();
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
            .set_max_packet_size(TRANSPORT_LIMIT, 64 * 1024);
        if let Some(user) = &c.username {
            let pw = c.password.as_ref().map_or("", |p| p.expose());
            o.set_credentials(user.clone(), pw.to_owned());
        }
        if let Some(tls) = &c.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls_config(tls).map_err(|e| anyhow::Error::new(e).context("`mqtt.tls`"))?),
            )));
        }
        Ok(o)
    }
}

/// What to subscribe: the routes' filters made disjoint (a broker sends one
/// copy per matching subscription, and each would be stored; see
/// `crate::topic::subscriptions`), as shared subscriptions
/// (`$share/<group>/<filter>`) when `mqtt.shared_group` is set, so that
/// gateways of one group split the messages between them.
fn subscribe_filters(config: &MqttConfig) -> Vec<SubscribeFilter> {
    subscriptions(config)
        .into_iter()
        .map(|(f, q)| {
            let path = match &config.shared_group {
                Some(g) => format!("$share/{g}/{f}"),
                None => f,
            };
            SubscribeFilter::new(path, qos(q))
        })
        .collect()
}

fn subscriptions(config: &MqttConfig) -> Vec<(String, u8)> {
    let wanted: Vec<(String, u8)> = config
        .routes
        .iter()
        .map(|r| (r.topic.filter().to_owned(), r.qos))
        .collect();
    crate::topic::subscriptions(&wanted)
}

/// The subscribed filters without the `$share/<group>/` prefix.
fn plain_filters(config: &MqttConfig) -> Vec<String> {
    subscriptions(config).into_iter().map(|(f, _)| f).collect()
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// A rustls client config: the CA file's certificates (else the webpki
/// roots) and an optional client certificate.
fn tls_config(tls: &MqttTls) -> Result<rustls::ClientConfig, crate::tls::TlsError> {
    let trust = tls
        .ca_file
        .as_deref()
        .map_or(crate::tls::Trust::Webpki, crate::tls::Trust::Only);
    let auth = tls
        .client_auth
        .as_ref()
        .map(|(c, k)| (c.as_path(), k.as_path()));
    crate::tls::client_config(trust, auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message larger than the whole budget takes all of it (so it still
    /// passes, alone); others are charged their payload, topic and overhead.
    #[test]
    fn a_message_is_charged_its_bytes_up_to_the_whole_budget() {
        let small = Publish::new("a/b", QoS::AtLeastOnce, vec![0u8; 1000]);
        assert_eq!(charge(&small) as usize, 1000 + 3 + MESSAGE_OVERHEAD);
        let huge = Publish::new("a/b", QoS::AtLeastOnce, vec![0u8; MAX_INFLIGHT_BYTES + 1]);
        assert_eq!(charge(&huge) as usize, MAX_INFLIGHT_BYTES);
    }
}
