//! Scenario 4: the disk under the store fills up during ingest, end to end
//! (QoS 1 publisher → mosquitto → gateway → dakkio stand-in). The data
//! directory is a small loop-mounted ext4 (a real block file system with
//! delayed allocation, unlike the tmpfs of the store-level test in
//! `tests/integration/store.rs`); a filler file takes its free space while
//! the publisher keeps going. The gateway must commit nothing it cannot
//! write and acknowledge nothing it has not committed (the broker keeps the
//! rest), say so once, resume by itself when the filler is deleted, and end
//! with loss 0 and an intact database. Points dakkio refuses meanwhile are
//! dead letters whatever the order their marks could be committed in, and
//! `dead-letters retry`, run beside the daemon while ingest goes on, puts
//! them back without stranding the daemon's next readings.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dakkio_gateway::store::BucketStats;
use testkit::standin::{SchemaViolation, Script};

use crate::support;
use testkit::faults::tally;
use testkit::faults::{integrity, privileged, LoopDisk, Placement, Rig, FIELD};

#[test]
fn a_full_disk_during_ingest_loses_nothing_and_ingest_resumes_by_itself() {
    if !privileged("disk full", "mounting a loop ext4") {
        return;
    }
    let _x = support::exclusive();
    // The long run ingests more than 64 MiB of history.
    let disk = LoopDisk::create(if tally::long() { 256 } else { 64 });
    // Delivered history is kept for local queries (`retention`), so the
    // store grows with ingest whether or not dakkio is reachable. Small
    // batches: many delivery marks while the disk is full. A small inbox:
    // its journal is preallocated and keeps accepting on a full disk (it
    // is durable there), so the database must be needed — moves of 1,000
    // readings — for the full disk to show.
    let mut rig = Rig::start_with(
        &Placement::loopback(),
        &disk.mount,
        "batch_size = 10\nmax_request_points = 10",
        "[store]\ninbox_readings = 1000\n",
        &[],
    );
    rig.pad = 200;
    let (step, rounds) = if tally::long() {
        (20_000, 10)
    } else {
        (5_000, 2)
    };

    rig.publish(step);
    assert!(rig.wait_delivered(Duration::from_secs(60)));
    // A backlog: dakkio refuses for a while. When it is back, it refuses
    // some points of the backlog for good (400): their delivery marks carry
    // dead letters, which go to the database (refused while the disk is
    // full), while marks without any may still fit. Marks must commit in
    // order all the same, or the cursor passes the dead letters: those
    // readings would count as delivered, never sent.
    rig.up.standin.set_sticky(Some(Script::respond(503)));
    let backlog = rig.accepted.len() as u64..rig.accepted.len() as u64 + 3_000;
    let poisoned: BTreeSet<u64> = backlog.clone().step_by(97).collect();
    let poison = poisoned.clone();
    rig.up.standin.poison(move |p| {
        let id = p.values.get(FIELD).and_then(|v| v.as_f64())?;
        poison
            .contains(&(id as u64))
            .then(|| SchemaViolation::new(FIELD, "Value does not match the data source schema"))
    });
    rig.publish(backlog.end - backlog.start);
    rig.expect_log("dakkio delivery failing");
    // All of it stored before the disk fills (no event for that: the
    // store's statistics, with a deadline).
    let backlog_stored = wait_ledger(
        &rig,
        Duration::from_secs(30),
        |b| b.accepted,
        |n| n >= rig.accepted.len() as u64,
    );
    assert!(backlog_stored, "the backlog was never stored");

    // Leave almost nothing.
    let filler = disk.fill("filler", 64 << 10);
    for _ in 0..rounds {
        rig.publish(step);
    }
    rig.expect_log_within(
        "disk is full: nothing can be committed",
        Duration::from_secs(60),
    );
    rig.expect_log("mqtt messages are not acknowledged (the broker keeps them)");
    // While full, the store holds fewer readings than the broker accepted:
    // the rest are unacknowledged at the broker, not lost.
    let stored = ledger_sum(&rig, |b| b.accepted);
    assert!(
        stored < rig.accepted.len() as u64,
        "the disk is full, yet {stored} of {} are stored",
        rig.accepted.len()
    );
    // dakkio is back while the disk is still full: the backlog (300
    // batches) goes out, but its delivery marks may not commit. The
    // forwarder keeps delivering while up to 64 marks wait (more when a
    // small mark still fits on the disk — that depends on the WAL, so it
    // is not asserted), then pauses until they commit; it must neither
    // stop nor lose track (checked below, once space is back).
    let requests = rig.up.standin.request_count();
    rig.up.standin.set_sticky(None);
    rig.expect_log("dakkio delivery working again");
    assert!(
        rig.up.rt.block_on(
            rig.up
                .standin
                .wait_for_requests(requests + 50, Duration::from_secs(30))
        ),
        "{} requests after dakkio came back",
        rig.up.standin.request_count() - requests
    );

    std::fs::remove_file(&filler).unwrap();
    rig.expect_log("disk space is back; ingest resumed");
    rig.expect_log("the store accepts readings again; mqtt ingest resumed");
    rig.publish(step);
    // Every refused point is a dead letter (no event for that: the store's
    // statistics, with a deadline). Then dakkio is fixed and they are put
    // back by the command, run beside the daemon while MQTT ingest goes on:
    // the scenario ends with everything delivered.
    let all_dead = wait_ledger(
        &rig,
        Duration::from_secs(60),
        |b| b.dead_lettered,
        |n| n == poisoned.len() as u64,
    );
    assert!(
        all_dead,
        "{} dead letters, {} points refused",
        ledger_sum(&rig, |b| b.dead_lettered),
        poisoned.len()
    );
    rig.up.standin.clear_poison();
    support::cli_ok(
        &rig.gateway.config_path,
        &["dead-letters", "retry", "--all"],
    );
    rig.publish(step);
    rig.finish("4 full disk", Duration::from_secs(90));
    // One ERROR per episode and one INFO at its end, not one per retry.
    // A nearly full disk can give a few episodes: a small commit (a
    // delivery mark) still fits, the writer calls the space back, and the
    // next group does not fit.
    let full = rig.log_count("disk is full: nothing can be committed");
    let back = rig.log_count("disk space is back");
    assert!(
        full >= 1 && full == back && full <= 5,
        "{full} `disk is full` ERRORs, {back} `disk space is back` INFOs"
    );
    // MQTT ingest follows the store's episodes, although many batches in
    // flight were refused before the space came back.
    let refused = rig.log_count("the store refuses readings");
    let resumed = rig.log_count("the store accepts readings again");
    assert!(
        refused >= 1 && refused == resumed && refused <= full,
        "{refused} mqtt refusal WARNs, {resumed} INFOs, {full} store episodes"
    );
    assert_eq!(rig.log_count("forwarder stopped"), 0);
    eprintln!(
        "disk: {} delivery marks refused and retried while full",
        rig.log_count("delivery mark refused")
    );

    let db = rig.gateway.db_path();
    rig.gateway.terminate();
    assert_eq!(integrity(&db), "ok");
}

/// A ledger counter summed over the buckets (negative counts as 0).
fn ledger_sum(rig: &Rig, field: fn(&BucketStats) -> i64) -> u64 {
    rig.gateway
        .stats()
        .buckets
        .iter()
        .map(|b| field(b).max(0) as u64)
        .sum()
}

/// Poll the ledger (no event tells when the store counted something)
/// until `done` holds for `field`'s sum, or `timeout` passes (false).
fn wait_ledger(
    rig: &Rig,
    timeout: Duration,
    field: fn(&BucketStats) -> i64,
    done: impl Fn(u64) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while !done(ledger_sum(rig, field)) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}
