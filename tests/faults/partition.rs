//! Scenario 2: broker restart and network partitions, end to end (QoS 1
//! publisher → mosquitto → gateway → dakkio stand-in). The gateway runs in
//! its own network namespace behind a veth pair; nftables in that
//! namespace drops the broker's port or the stand-in's port (silence, as a
//! cut cable or a dead router gives, not the resets loopback gives). Each
//! outage is logged once (WARN) and its end once (INFO); nothing accepted
//! by the broker is lost.

use std::time::Duration;

use crate::support;
use testkit::faults::tally;
use testkit::faults::{privileged, NetNs, Placement, Rig};

/// How long a partition lasts once the gateway has noticed it.
fn hold() -> Duration {
    if tally::long() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(3)
    }
}

/// Readings per publish step.
fn step() -> u64 {
    if tally::long() {
        20_000
    } else {
        1_000
    }
}

/// For everything to reach the stand-in once the fault is over.
fn delivery_timeout() -> Duration {
    Duration::from_secs(if tally::long() { 300 } else { 60 })
}

#[test]
fn broker_restart_end_to_end_loses_nothing() {
    if !privileged("partition: broker restart", "a network namespace") {
        return;
    }
    let _x = support::exclusive();
    let ns = NetNs::create();
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(&Placement::across(&ns), dir.path(), "", &[]);
    rig.publish(step());
    rig.broker.restart();
    rig.expect_log("mqtt broker connection lost");
    rig.expect_log("mqtt broker connection restored");
    rig.publish(step());
    rig.finish("2a broker restart", delivery_timeout());
    assert_eq!(rig.log_count("mqtt broker connection lost"), 1);
    assert_eq!(rig.log_count("mqtt broker connection restored"), 1);
}

#[test]
fn a_partition_from_the_broker_loses_nothing() {
    if !privileged("partition: broker", "a network namespace") {
        return;
    }
    let _x = support::exclusive();
    let ns = NetNs::create();
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(&Placement::across(&ns), dir.path(), "", &[]);
    rig.publish(step());
    ns.block(rig.broker.port);
    // Published while the gateway cannot hear the broker: the broker keeps
    // them for the gateway's persistent session.
    rig.publish(step());
    // Silence is noticed by the keepalive (5 s, no PINGRESP).
    rig.expect_log("mqtt broker connection lost");
    std::thread::sleep(hold()); // the outage itself, not a synchronisation
    rig.publish(step());
    ns.heal(rig.broker.port);
    rig.expect_log("mqtt broker connection restored");
    rig.publish(step());
    rig.finish("2b broker partition", delivery_timeout());
    assert_eq!(
        rig.log_count("mqtt broker connection lost"),
        1,
        "one WARN per outage, not one per retry"
    );
    assert_eq!(rig.log_count("mqtt broker connection restored"), 1);
    // The uplink never noticed anything.
    assert_eq!(rig.log_count("dakkio delivery failing"), 0);
}

#[test]
fn a_partition_from_dakkio_loses_nothing() {
    if !privileged("partition: uplink", "a network namespace") {
        return;
    }
    let _x = support::exclusive();
    let ns = NetNs::create();
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(&Placement::across(&ns), dir.path(), "", &[]);
    rig.publish(step());
    assert!(
        rig.wait_delivered(delivery_timeout()),
        "the first step never reached the stand-in"
    );
    let port = rig.up.standin.addr().port();
    ns.block(port);
    rig.publish(step());
    // A request that gets no answer times out (2 s) and is retried.
    rig.expect_log("dakkio delivery failing");
    std::thread::sleep(hold()); // the outage itself, not a synchronisation
    rig.publish(step());
    let requests_before_heal = rig.up.standin.request_count();
    ns.heal(port);
    rig.expect_log("dakkio delivery working again");
    rig.publish(step());
    let t = rig.finish("2c uplink partition", delivery_timeout());
    assert_eq!(
        rig.log_count("dakkio delivery failing"),
        1,
        "one WARN per outage, not one per retry"
    );
    assert_eq!(rig.log_count("dakkio delivery working again"), 1);
    // The broker connection never noticed anything.
    assert_eq!(rig.log_count("mqtt broker connection lost"), 0);
    assert!(rig.up.standin.request_count() > requests_before_heal);
    // A batch whose 201 was dropped by the partition is sent again: the
    // duplicates are bounded by what was in flight (one batch).
    assert!(t.duplicates <= 500, "{t}");
}
