//! The fault rig shared by every scenario of the fault suite (`tests/faults`):
//!
//! - [`Upstream`]: the dakkio stand-in on a runtime of its own, so that the
//!   test's thread can drive processes while it serves;
//! - [`gateway_config`] and [`mqtt_input`]: the gateway config every scenario
//!   starts from (fast uplink timings, one route per bucket);
//! - numbered readings (`{"n": id}`, [`FIELD`]): [`publish_numbered`] for a
//!   counted batch, [`MqttProducer`] for a stream until told to stop; both
//!   know exactly which ids the broker acknowledged;
//! - [`Rig`]: publisher → mosquitto → gateway → stand-in in one value, on
//!   loopback or across a network namespace ([`Placement`]);
//! - [`settle`] / [`Rig::finish`] and [`tally::Tally`]: the end-of-scenario
//!   wait and reckoning (loss 0, duplicates counted);
//! - [`host`]: what needs root (namespaces, a loop disk) and libfaketime.

pub mod host;
mod rig;
pub mod tally;

pub use host::{integrity, libfaketime, privileged, LoopDisk, NetNs};
pub use rig::{Placement, Rig};
pub use tally::Tally;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::gateway::Gateway;
use crate::mosquitto;
use crate::standin::{AcceptedPoint, Standin};
use crate::EVENT_TIMEOUT;

pub const B1: &str = "507f1f77bcf86cd799439011";
pub const B2: &str = "507f1f77bcf86cd799439022";
pub const SRC: &str = "507f1f77bcf86cd799439012";

/// The value field every producer numbers its readings in.
pub const FIELD: &str = "n";

pub fn key(bucket: &str) -> String {
    format!("dakkio_w_{}", &bucket[12..])
}

/// The dakkio stand-in, served by a runtime of its own while the test's
/// thread drives processes.
pub struct Upstream {
    // Declared first: dropped (server stopped) before its runtime.
    pub standin: Standin,
    pub rt: tokio::runtime::Runtime,
}

impl Upstream {
    /// On loopback, each bucket with its [`key`].
    pub fn start(buckets: &[&str]) -> Upstream {
        Self::start_on("127.0.0.1", buckets)
    }

    /// Listening on `host` (the host side of a [`NetNs`]).
    pub fn start_on(host: &str, buckets: &[&str]) -> Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let standin = rt.block_on(async {
            let mut b = Standin::builder().bind(format!("{host}:0").parse().unwrap());
            for id in buckets {
                b = b.bucket(*id).write_key(*id, key(id));
            }
            b.start().await.expect("start the stand-in")
        });
        Upstream { standin, rt }
    }

    pub fn url(&self) -> String {
        self.standin.url()
    }

    pub fn points(&self) -> Vec<AcceptedPoint> {
        self.standin.all_accepted_points()
    }

    /// Distinct ids accepted so far (all buckets).
    pub fn ids(&self) -> BTreeSet<u64> {
        ids_of(&self.standin.all_accepted_points())
    }

    /// Requests that named `bucket` so far (faulted ones included).
    pub fn requests_for(&self, bucket: &str) -> usize {
        self.standin
            .requests()
            .iter()
            .filter(|r| r.bucket_id.as_deref() == Some(bucket))
            .count()
    }

    /// Points of `bucket` accepted so far, duplicates included.
    pub fn accepted_for(&self, bucket: &str) -> usize {
        self.standin.accepted_points(bucket).len()
    }

    /// Wait until at least `n` requests have been logged in total.
    pub fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        self.rt.block_on(self.standin.wait_for_requests(n, timeout))
    }

    /// Await (event-driven: the stand-in's progress) until every id of
    /// `accepted` has arrived, or `timeout` passes.
    pub fn wait_delivered(&self, accepted: &BTreeSet<u64>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // The count before the look: a point arriving in between
            // ends the wait below at once instead of being missed.
            let next = self.standin.accepted_count() + 1;
            let seen = self.ids();
            if accepted.is_subset(&seen) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.rt
                .block_on(self.standin.wait_for_accepted(next, deadline - now));
        }
    }
}

pub fn ids_of(points: &[AcceptedPoint]) -> BTreeSet<u64> {
    points
        .iter()
        .filter_map(|p| p.values.get(FIELD)?.as_f64())
        .map(|v| v as u64)
        .collect()
}

/// A gateway config: fast uplink timings towards `url`, one `[[buckets]]`
/// per id (named `one`, `two`, … for serial ports), `inputs` appended.
pub fn gateway_config(url: &str, buckets: &[&str], uplink_extra: &str, inputs: &str) -> String {
    let mut text =
        format!("[gateway]\nid = \"gw-faults\"\n\n[uplink]\nurl = \"{url}\"\n{uplink_extra}\n");
    for (k, v) in [
        ("batch_size", "500"),
        ("max_batch_age", "\"50ms\""),
        ("backoff_min", "\"20ms\""),
        ("backoff_max", "\"500ms\""),
        ("connect_timeout", "\"1s\""),
        ("request_timeout", "\"2s\""),
    ] {
        if !uplink_extra.contains(k) {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    for (i, id) in buckets.iter().enumerate() {
        text.push_str(&format!(
            "\n[[buckets]]\nid = \"{id}\"\nname = \"{}\"\nwrite_key = \"{}\"\n",
            bucket_name(i),
            key(id)
        ));
    }
    text.push('\n');
    text.push_str(inputs);
    text
}

pub fn bucket_name(i: usize) -> &'static str {
    ["one", "two", "three"][i]
}

/// `[mqtt]` with one route per bucket: topic `faults/<bucket name>`.
pub fn mqtt_input(port: u16, client_id: &str, buckets: &[&str]) -> String {
    mqtt_input_at("127.0.0.1", port, client_id, buckets)
}

/// [`mqtt_input`] for a broker listening on `host`.
pub fn mqtt_input_at(host: &str, port: u16, client_id: &str, buckets: &[&str]) -> String {
    let mut text = format!(
        "[mqtt]\nhost = \"{host}\"\nport = {port}\nclient_id = \"{client_id}\"\n\
         keepalive = \"5s\"\nreconnect_max_delay = \"1s\"\n"
    );
    for (i, id) in buckets.iter().enumerate() {
        text.push_str(&format!(
            "\n[[mqtt.routes]]\ntopic = \"faults/{}\"\nbucket = \"{id}\"\ndata_source = \"{SRC}\"\n",
            bucket_name(i)
        ));
    }
    text
}

/// The topics of [`mqtt_input`]'s routes.
pub fn mqtt_topics(buckets: usize) -> Vec<String> {
    (0..buckets)
        .map(|i| format!("faults/{}", bucket_name(i)))
        .collect()
}

pub fn wait_ready_and_subscribed(g: &Gateway) {
    g.wait_ready();
    if g.wait_for_log("mqtt subscriptions active", EVENT_TIMEOUT)
        .is_none()
    {
        panic!("the gateway did not subscribe:\n{}", g.log_text());
    }
}

/// The body of numbered reading `n`: `{"n": n}`, with `pad` bytes of
/// padding when asked (to fill a disk faster).
pub fn numbered(n: u64, pad: usize) -> Vec<u8> {
    if pad == 0 {
        format!(r#"{{"{FIELD}":{n}}}"#).into_bytes()
    } else {
        format!(r#"{{"{FIELD}":{n},"pad":"{}"}}"#, "x".repeat(pad)).into_bytes()
    }
}

/// Publish ids `ids` with QoS 1 to a broker on `host:port`, round-robin over
/// `topics` (at most `rate` per second when given), and assert that the
/// broker acknowledged every one.
pub fn publish_numbered(
    host: &str,
    port: u16,
    topics: &[String],
    ids: std::ops::Range<u64>,
    pad: usize,
    rate: Option<u32>,
) {
    let count = ids.end - ids.start;
    let messages = ids
        .map(|n| {
            (
                topics[(n as usize) % topics.len()].clone(),
                numbered(n, pad),
            )
        })
        .collect();
    let acked = mosquitto::publish_to(host, port, messages, rate);
    assert_eq!(
        acked as u64, count,
        "the broker acknowledged only {acked} of {count}"
    );
}

/// Publishes `{"n": id}` with QoS 1, ids 0, 1, 2, … spread round-robin over
/// `topics`, in chunks (one broker connection each) until stopped. Every
/// chunk must be acknowledged in full by the broker, so the accepted ids
/// are exactly `first..published`.
pub struct MqttProducer {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
    thread: Option<JoinHandle<u64>>,
    first: u64,
}

impl MqttProducer {
    /// `rate` per second (`None`: as fast as the broker takes them).
    pub fn start(port: u16, topics: Vec<String>, rate: Option<u32>, chunk: u64) -> MqttProducer {
        Self::start_from(port, topics, rate, chunk, 0)
    }

    /// Like [`MqttProducer::start`], numbering from `first`.
    pub fn start_from(
        port: u16,
        topics: Vec<String>,
        rate: Option<u32>,
        chunk: u64,
        first: u64,
    ) -> MqttProducer {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(first));
        let thread = {
            let (stop, published) = (stop.clone(), published.clone());
            std::thread::spawn(move || {
                let mut next = first;
                while !stop.load(Ordering::Relaxed) {
                    publish_numbered("127.0.0.1", port, &topics, next..next + chunk, 0, rate);
                    next += chunk;
                    published.store(next, Ordering::Relaxed);
                }
                next
            })
        };
        MqttProducer {
            stop,
            published,
            thread: Some(thread),
            first,
        }
    }

    /// One past the last id acknowledged by the broker so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Wait (blocking) until at least `n` ids are acknowledged.
    pub fn wait_published(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.published() < n {
            assert!(
                Instant::now() < deadline,
                "the producer is stuck at {}",
                self.published()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ask the producer to stop after its current chunk, without waiting.
    pub fn stopping(self) -> MqttProducer {
        self.stop.store(true, Ordering::Relaxed);
        self
    }

    /// Finish the current chunk and return every id the broker accepted.
    pub fn stop(mut self) -> BTreeSet<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let n = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("the producer panicked");
        (self.first..n).collect()
    }
}

impl Drop for MqttProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Wait until nothing is queued and either every id in `accepted` is
/// upstream or accounted for by the gateway's ledger (dead-lettered or
/// dropped), or every id of `last` is upstream (the inputs are ordered:
/// nothing more will come — what is missing then is lost); or until
/// `timeout` passes. Then reckon. Store statistics are polled (nothing
/// announces "all delivered"), every 200 ms because the upstream record is
/// large in the long variants.
pub fn settle(
    scenario: &str,
    g: &Gateway,
    up: &Upstream,
    accepted: &BTreeSet<u64>,
    last: &[u64],
    timeout: Duration,
) -> Tally {
    let deadline = Instant::now() + timeout;
    loop {
        let points = up.points();
        let t = Tally::reckon(scenario, accepted, FIELD, &points, &g.stats().buckets);
        let ends_arrived = || {
            let ids = ids_of(&points);
            last.iter().all(|id| ids.contains(id))
        };
        if (t.queued == 0 && (t.lost == 0 || ends_arrived())) || Instant::now() >= deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
