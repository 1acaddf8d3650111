//! Producers and the upstream shared by the scenarios of part A (kill,
//! upstream, serial, sigterm): the dakkio stand-in on its own runtime, the
//! gateway config they all use, an MQTT producer that publishes numbered
//! readings (`{"n": id}`) until told to stop and knows which ids the broker
//! acknowledged, and the end-of-scenario wait and reckoning.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testkit::standin::{AcceptedPoint, Standin};

use crate::support::gateway::Gateway;
use crate::support::mosquitto;
use crate::support::EVENT_TIMEOUT;
use crate::tally::Tally;

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
    pub fn start(buckets: &[&str]) -> Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let standin = rt.block_on(async {
            let mut b = Standin::builder();
            for id in buckets {
                b = b.bucket(*id).write_key(*id, key(id));
            }
            b.start().await.unwrap()
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
    let mut text = format!(
        "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"{client_id}\"\n\
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
                    let messages: Vec<(String, Vec<u8>)> = (next..next + chunk)
                        .map(|n| {
                            let topic = topics[(n as usize) % topics.len()].clone();
                            (topic, format!(r#"{{"{FIELD}":{n}}}"#).into_bytes())
                        })
                        .collect();
                    let acked = mosquitto::publish(port, messages, rate);
                    assert_eq!(
                        acked as u64, chunk,
                        "the broker acknowledged a partial chunk"
                    );
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
