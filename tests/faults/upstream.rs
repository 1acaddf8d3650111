//! Scenario 3: dakkio misbehaving for the whole run while readings keep
//! arriving over MQTT into two buckets. A schedule of faults repeats —
//! 500, 503, a stall beyond the client's `request_timeout`, connection
//! resets and drops, 429 with an `X-RateLimit-Reset` in the future for one
//! bucket — and one poisoned point makes dakkio answer 400 for any batch
//! that holds it. At the end: everything delivered, the poisoned point
//! dead-lettered (not lost), loss 0.
//!
//! Each fault phase lasts until it has hit a few requests (awaited on the
//! stand-in's request log), not a fixed time. The 429's reset is "far" only
//! as far as CI can wait: [`RESET_AFTER`] (the gateway honours any reset up
//! to its 24 h clamp, `uplink::retry_after::MAX_WAIT`; the integration test
//! `rate_limit_hours_away_stops_one_bucket_only` covers hours). What is
//! checked here is the behaviour: the bucket spends no call until the
//! reset while the other bucket keeps delivering, then resumes by itself.

use std::time::{Duration, Instant};

use testkit::standin::{Reply, SchemaViolation, Script};

use crate::support::gateway::Gateway;
use crate::support::mosquitto::Mosquitto;
use crate::support::EVENT_TIMEOUT;
use testkit::faults::tally;
use testkit::faults::{self, MqttProducer, Upstream, B1, B2, FIELD};

/// The id of the one point dakkio refuses (400).
const POISON: u64 = 777;

/// How far ahead the 429's `X-RateLimit-Reset` lies.
const RESET_AFTER: Duration = Duration::from_secs(5);

/// The client timeout configured for this scenario; a stall outlasts it.
const REQUEST_TIMEOUT: &str = "1s";

fn run_for() -> Duration {
    if tally::long() {
        Duration::from_secs(300)
    } else {
        Duration::ZERO // one round of the schedule
    }
}

/// Apply `fault` to every request until `hits` more requests have been
/// logged, then lift it.
fn phase(up: &Upstream, name: &str, fault: Script, hits: u64) {
    let before = up.standin.request_count();
    up.standin.set_sticky(Some(fault));
    let hit = up.wait_for_requests(before + hits, EVENT_TIMEOUT);
    up.standin.set_sticky(None);
    assert!(hit, "{name}: the fault never met {hits} requests");
}

/// 429 for bucket one with a reset [`RESET_AFTER`] away: it must wait,
/// spending no calls, while bucket two delivers; then resume by itself.
fn rate_limit_phase(up: &Upstream) {
    let reset = dakkio_gateway::reading::now_ms() / 1000 + RESET_AFTER.as_secs() as i64;
    up.standin.script_for(
        B1,
        Reply::new(429).header("X-RateLimit-Reset", reset.to_string()),
    );
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while up.standin.pending_scripts() > 0 {
        assert!(Instant::now() < deadline, "bucket one never asked");
        std::thread::sleep(Duration::from_millis(10));
    }
    let limited_at = Instant::now();
    let b1_calls = up.requests_for(B1);
    let b2_points = up.accepted_for(B2);
    // Bucket two keeps flowing meanwhile (the producer feeds it).
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while up.accepted_for(B2) < b2_points + 200 {
        assert!(Instant::now() < deadline, "bucket two stalled too");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Bucket one resumes on its own once the reset has passed.
    let deadline = Instant::now() + RESET_AFTER + EVENT_TIMEOUT;
    while up.requests_for(B1) == b1_calls {
        assert!(Instant::now() < deadline, "bucket one never resumed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = limited_at.elapsed();
    // The next call of bucket one comes at the reset time, not before.
    let b1: Vec<_> = up
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.bucket_id.as_deref() == Some(B1))
        .collect();
    let limited = b1
        .iter()
        .rposition(|r| r.status() == Some(429))
        .expect("the 429 is in the request log");
    let next = b1.get(limited + 1).expect("bucket one asked again").at;
    let reset_at = std::time::UNIX_EPOCH + Duration::from_secs(reset as u64);
    assert!(
        next + Duration::from_millis(50) >= reset_at,
        "bucket one asked again {:?} before the reset",
        reset_at.duration_since(next).unwrap_or_default()
    );
    eprintln!("429: bucket one waited {waited:?} with no call; bucket two delivered meanwhile");
}

fn one_round(up: &Upstream) {
    rate_limit_phase(up);
    phase(up, "500", Script::respond(500), 4);
    phase(up, "503", Script::respond(503), 4);
    // Each stalled request ends at the client's timeout.
    phase(up, "stall", Script::Stall, 2);
    phase(up, "reset", Script::ResetConnection, 4);
    phase(up, "drop", Script::DropConnection, 4);
    phase(up, "502", Script::respond(502), 2);
}

#[test]
fn upstream_faults_over_the_run_lose_nothing_and_dead_letter_the_poison() {
    let _exclusive = crate::support::exclusive();
    let broker = Mosquitto::start();
    let up = Upstream::start(&[B1, B2]);
    up.standin.poison(|p| {
        (p.values.get(FIELD).and_then(|v| v.as_f64()) == Some(POISON as f64))
            .then(|| SchemaViolation::new(FIELD, "Value does not match the data source schema"))
    });
    let dir = tempfile::tempdir().unwrap();
    let config = faults::gateway_config(
        &up.url(),
        &[B1, B2],
        &format!("batch_size = 200\nrequest_timeout = \"{REQUEST_TIMEOUT}\""),
        &faults::mqtt_input(broker.port, "gw-faults-upstream", &[B1, B2]),
    );
    let mut g = Gateway::start(dir.path(), &config);
    faults::wait_ready_and_subscribed(&g);
    let producer = MqttProducer::start(broker.port, faults::mqtt_topics(2), Some(1000), 500);
    let started = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || started.elapsed() < run_for() {
        one_round(&up);
        rounds += 1;
    }
    let accepted = producer.stop();
    let last = *accepted.last().unwrap();
    let t = faults::settle(
        "3 dakkio faults",
        &g,
        &up,
        &accepted,
        &[last - 1, last],
        Duration::from_secs(120),
    );
    eprintln!(
        "3 dakkio faults: {rounds} round(s) in {:?}, {} requests",
        started.elapsed(),
        up.standin.request_count()
    );
    t.assert_no_loss();
    assert_eq!(t.dead_lettered, 1, "the poisoned point is dead-lettered");
    assert_eq!(t.missing_sample, vec![POISON]);
    let log = g.log_text();
    assert!(
        log.contains("kept in dead letters"),
        "the dead letter is logged"
    );
    // One WARN per failure stretch, not one per retry.
    let warns = log.matches("dakkio delivery failing").count();
    let recovered = log.matches("dakkio delivery working again").count();
    assert!(
        warns <= recovered + 2,
        "{warns} failure warnings for {recovered} recoveries"
    );
    assert!(g.terminate().success());
}
