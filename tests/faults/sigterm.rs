//! Scenario 6: SIGTERM while MQTT publishes at full speed and dakkio is
//! slow (so readings are queued and a delivery is in flight at the
//! signal). The gateway must exit with status 0 within the stop deadline
//! systemd gives it (`TimeoutStopSec` of the shipped unit; the uplink's own
//! share is `app::STOP_UPLINK_DEADLINE`), losing nothing: after a restart
//! everything the broker acknowledged is delivered.

use std::time::{Duration, Instant};

use dakkio_gateway::app::STOP_UPLINK_DEADLINE;
use testkit::standin::Script;

use crate::support::gateway::Gateway;
use crate::support::mosquitto::Mosquitto;
use testkit::faults::tally;
use testkit::faults::{self, MqttProducer, Upstream, B1, B2};

/// `TimeoutStopSec=` of `systemd/dakkio-gateway.service`: after it systemd
/// sends SIGKILL.
fn unit_stop_timeout() -> Duration {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/dakkio-gateway.service"
    ))
    .expect("the unit file");
    let value = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("TimeoutStopSec="))
        .expect("the unit sets TimeoutStopSec");
    let secs = value
        .trim()
        .trim_end_matches('s')
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("TimeoutStopSec={value}: expected seconds"));
    Duration::from_secs(secs)
}

#[test]
fn sigterm_under_full_load_exits_in_time_and_loses_nothing() {
    let _exclusive = crate::support::exclusive();
    let stop_timeout = unit_stop_timeout();
    assert!(
        STOP_UPLINK_DEADLINE < stop_timeout,
        "the uplink's last attempt ({STOP_UPLINK_DEADLINE:?}) must fit in TimeoutStopSec \
         ({stop_timeout:?})"
    );
    let broker = Mosquitto::start();
    let up = Upstream::start(&[B1, B2]);
    let dir = tempfile::tempdir().unwrap();
    let config = faults::gateway_config(
        &up.url(),
        &[B1, B2],
        "",
        &faults::mqtt_input(broker.port, "gw-faults-sigterm", &[B1, B2]),
    );
    let mut g = Gateway::start(dir.path(), &config);
    faults::wait_ready_and_subscribed(&g);
    // The long variant stops and restarts under load again and again.
    let rounds = if tally::long() { 20 } else { 1 };
    let mut accepted = std::collections::BTreeSet::new();
    for round in 0..rounds {
        let first = accepted.len() as u64;
        accepted.extend(sigterm_round(&mut g, &up, broker.port, first, stop_timeout));
        eprintln!("6 sigterm: round {round} done");
    }
    let last = *accepted.last().unwrap();
    let t = faults::settle(
        "6 sigterm under full load",
        &g,
        &up,
        &accepted,
        &[last - 1, last],
        Duration::from_secs(120),
    );
    t.assert_no_loss();
    assert!(g.terminate().success());
}

/// Publish ids from `first` at full speed with a slow dakkio, SIGTERM,
/// check the stop, restart; returns the ids the broker accepted.
fn sigterm_round(
    g: &mut Gateway,
    up: &Upstream,
    port: u16,
    first: u64,
    stop_timeout: Duration,
) -> std::collections::BTreeSet<u64> {
    // A slow dakkio: every request takes 1 s, so the queue grows beyond
    // what the uplink can deliver within its stop deadline and a delivery
    // is in flight when the signal comes.
    up.standin
        .set_sticky(Some(Script::Delay(Duration::from_secs(1))));
    let producer = MqttProducer::start_from(port, faults::mqtt_topics(2), None, 2000, first);
    let load = 10_000;
    producer.wait_published(first + load, Duration::from_secs(120));
    let queued = g.stats().buckets.iter().map(|b| b.queued).sum::<i64>();

    // The producer stops with the signal (after its current chunk): what
    // it publishes meanwhile waits at the broker, whose queue for the
    // gateway's session is bounded (`max_queued_messages`; beyond it
    // mosquitto drops, which no gateway can prevent).
    let signalled = Instant::now();
    let producer = producer.stopping();
    let status = g.terminate();
    let took = signalled.elapsed();
    eprintln!(
        "6 sigterm: {} published, {queued} queued at the signal; exit {status:?} after {took:?} \
         (uplink deadline {STOP_UPLINK_DEADLINE:?}, TimeoutStopSec {stop_timeout:?})",
        producer.published()
    );
    assert!(status.success(), "{status:?}\n{}", g.log_text());
    assert!(
        took < stop_timeout,
        "stopping took {took:?}, systemd would SIGKILL after {stop_timeout:?}"
    );
    let log = g.log_text();
    let order = [
        "stopping: inputs first",
        "mqtt input stopped",
        "inputs stopped; last delivery attempt",
        "store closed; stopped cleanly",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|m| log.find(m).unwrap_or_else(|| panic!("no `{m}` in\n{log}")))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "stop order: {log}");
    assert!(queued > 0, "the signal must find readings queued");

    // The broker kept what arrived while the gateway was down.
    up.standin.set_sticky(None);
    g.restart();
    g.wait_ready();
    producer.stop()
}

/// A restarted gateway whose persistent session has a large backlog at the
/// broker drains it all. Found by this suite: with 90,000 messages queued
/// (below the broker's `max_queued_messages`; the operator manual recommends
/// 100,000) the gateway used to take 78,000–83,000, then stop sending
/// keepalives (the broker disconnected it after 1.5 × keepalive), never log
/// the loss and never reconnect.
///
/// Why (rumqttc 0.25.1 `EventLoop::select`): mosquitto resends the whole
/// queue at once on session resume; each select either reads up to 10
/// incoming packets (`max_readb_count`, hard-coded) or sends one request,
/// so the PUBACKs fall behind about 10 to 1 and filled rumqttc's request
/// channel. A blocked ack then held its batch in the commit FIFO, the FIFO
/// filled, the commit task stopped reading, the poll task blocked handing
/// over a publish, and the event loop that would send those acks (and the
/// pings) was never polled again. Fixed by the commit task's ack queue
/// (`ingest::mqtt`): a waiting ack holds no publish, so reading and polling
/// go on. `DAKKIO_FAULTS_QUEUED` sets the backlog (90,000 by default; keep
/// it above the old wedge point, about 70,000).
#[test]
fn restart_with_a_large_broker_backlog_drains() {
    let _exclusive = crate::support::exclusive();
    let queued: u64 = std::env::var("DAKKIO_FAULTS_QUEUED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90_000);
    let broker = Mosquitto::start();
    let up = Upstream::start(&[B1]);
    let dir = tempfile::tempdir().unwrap();
    let config = faults::gateway_config(
        &up.url(),
        &[B1],
        "",
        &faults::mqtt_input(broker.port, "gw-faults-backlog", &[B1]),
    );
    let mut g = Gateway::start(dir.path(), &config);
    faults::wait_ready_and_subscribed(&g);
    assert!(g.terminate().success());
    let backlog: Vec<(String, Vec<u8>)> = (0..queued)
        .map(|n| {
            (
                "faults/one".to_owned(),
                format!(r#"{{"n":{n}}}"#).into_bytes(),
            )
        })
        .collect();
    assert_eq!(
        crate::support::mosquitto::publish(broker.port, backlog, None) as u64,
        queued
    );
    let accepted: std::collections::BTreeSet<u64> = (0..queued).collect();
    g.restart();
    faults::wait_ready_and_subscribed(&g);
    let t = faults::settle(
        "restart with a large broker backlog",
        &g,
        &up,
        &accepted,
        &[*accepted.last().unwrap()],
        Duration::from_secs(60),
    );
    eprintln!("{}\n{t}", testkit::faults::tally::Tally::header());
    t.assert_no_loss();
}
