//! Scenario 1: SIGKILL of the gateway every ~2 s while it ingests (MQTT
//! QoS 1 from a real mosquitto) and forwards (to the dakkio stand-in), with
//! a restart after every kill; then drain and reckon end to end — every id
//! the broker acknowledged to the producer must reach the stand-in (or sit
//! in the ledger). Kills land at every stage: in a group-commit window,
//! between a delivery's 2xx and its mark, during a broker redelivery burst.
//!
//! The negative control runs the same harness with the test switch that
//! acknowledges MQTT messages before their commit: the harness must report
//! loss, or it proves nothing.
//!
//! `tests/integration/mqtt.rs` has the store-only crash run; this one goes
//! through forwarding as well.

use std::time::{Duration, Instant};

use dakkio_gateway::ingest::mqtt::ACK_BEFORE_COMMIT_ENV;

use crate::support::gateway::Gateway;
use crate::support::mosquitto::{Mosquitto, MAX_INFLIGHT};
use testkit::faults::tally::{self, Tally};
use testkit::faults::{self, MqttProducer, Upstream, B1, B2};

/// How long the producer publishes while the kills go on.
fn run_for() -> Duration {
    if tally::long() {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(12)
    }
}

const RATE: u32 = 2000;

/// Publish for [`run_for`] at [`RATE`]/s while killing the gateway every
/// ~2 s; then drain and reckon. Returns the tally and the number of kills.
fn crash_run(scenario: &str, client_id: &str, env: &[(&str, &str)]) -> (Tally, usize) {
    let broker = Mosquitto::start();
    let up = Upstream::start(&[B1, B2]);
    let dir = tempfile::tempdir().unwrap();
    let config = faults::gateway_config(
        &up.url(),
        &[B1, B2],
        "",
        &faults::mqtt_input(broker.port, client_id, &[B1, B2]),
    );
    let mut g = Gateway::start_with_env(dir.path(), &config, env);
    faults::wait_ready_and_subscribed(&g);
    let producer = MqttProducer::start(broker.port, faults::mqtt_topics(2), Some(RATE), 1000);
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < run_for() {
        // The workload: a crash every ~2 s (not a synchronisation).
        std::thread::sleep(Duration::from_millis(1700 + (kills * 137 % 600) as u64));
        g.kill();
        kills += 1;
        g.restart();
        g.wait_ready();
    }
    let accepted = producer.stop();
    let last = *accepted.last().expect("something was published");
    // The broker delivers in order: once the last two ids (one per
    // bucket) are upstream and nothing is queued, nothing more will come.
    let t = faults::settle(
        scenario,
        &g,
        &up,
        &accepted,
        &[last - 1, last],
        Duration::from_secs(120),
    );
    assert!(g.terminate().success(), "{}", g.log_text());
    assert_eq!(testkit::faults::integrity(&g.db_path()), "ok");
    eprintln!(
        "{scenario}: {kills} kills in {:?}, {} requests upstream",
        started.elapsed(),
        up.standin.request_count()
    );
    (t, kills)
}

#[test]
fn sigkill_every_two_seconds_during_ingest_and_forwarding_loses_nothing() {
    let _exclusive = crate::support::exclusive();
    let (t, kills) = crash_run("1 sigkill every ~2 s", "gw-faults-kill", &[]);
    assert!(kills >= 3, "the run must crash the gateway a few times");
    t.assert_no_loss();
    // Duplicates come from a kill between a 2xx and its mark (one batch
    // per bucket) and from the broker redelivering unacknowledged
    // messages (its in-flight window).
    let bound = (kills * (MAX_INFLIGHT + 2 * 1000)) as u64;
    assert!(
        t.duplicates <= bound,
        "{} duplicates exceed {bound} for {kills} kills",
        t.duplicates
    );
}

#[test]
fn negative_control_ack_before_commit_is_reported_as_loss() {
    let _exclusive = crate::support::exclusive();
    let (t, kills) = crash_run(
        "1 negative control (ack before commit)",
        "gw-faults-negative",
        &[(ACK_BEFORE_COMMIT_ENV, "1")],
    );
    assert!(kills >= 3);
    eprintln!("{}\n{t}", Tally::header());
    assert!(
        t.lost > 0,
        "acking before the commit must lose messages on SIGKILL and the tally must see it \
         ({kills} kills): {t}"
    );
    assert!(t.ledger_balances, "the ledger itself still balances");
}
