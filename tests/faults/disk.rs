//! Scenario 4: the disk under the store fills up during ingest, end to end
//! (QoS 1 publisher → mosquitto → gateway → dakkio stand-in). The data
//! directory is a small loop-mounted ext4 (a real block file system with
//! delayed allocation, unlike the tmpfs of the store-level test in
//! `tests/integration/store.rs`); a filler file takes its free space while
//! the publisher keeps going. The gateway must commit nothing it cannot
//! write and acknowledge nothing it has not committed (the broker keeps the
//! rest), say so once, resume by itself when the filler is deleted, and end
//! with loss 0 and an intact database.

use std::time::Duration;

use crate::plumbing::{integrity, privileged, LoopDisk, Placement, Rig};
use crate::support;
use crate::tally;

#[test]
fn a_full_disk_during_ingest_loses_nothing_and_ingest_resumes_by_itself() {
    if !privileged("disk full", "mounting a loop ext4") {
        return;
    }
    let _x = support::exclusive();
    let disk = LoopDisk::create(64);
    // Delivered history is kept for local queries (`retention`), so the
    // store grows with ingest whether or not dakkio is reachable.
    let mut rig = Rig::start(&Placement::loopback(), &disk.mount, "", &[]);
    rig.pad = 200;
    let (step, rounds) = if tally::long() {
        (20_000, 10)
    } else {
        (5_000, 2)
    };

    rig.publish(step);
    assert!(rig.wait_delivered(Duration::from_secs(60)));
    // Leave less than one step's worth of space.
    let filler = disk.fill("filler", 512 << 10);
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
    let stats = rig.gateway.stats();
    let stored: i64 = stats.buckets.iter().map(|b| b.accepted).sum();
    assert!(
        (stored as u64) < rig.accepted.len() as u64,
        "the disk is full, yet {stored} of {} are stored",
        rig.accepted.len()
    );

    std::fs::remove_file(&filler).unwrap();
    rig.expect_log("disk space is back; ingest resumed");
    rig.expect_log("the store accepts readings again; mqtt ingest resumed");
    rig.publish(step);
    rig.finish("4 full disk", Duration::from_secs(90));
    assert_eq!(
        rig.log_count("disk is full: nothing can be committed"),
        1,
        "one ERROR per episode"
    );
    assert_eq!(rig.log_count("disk space is back"), 1);
    // MQTT ingest: one WARN and one INFO for the episode, although many
    // batches in flight were refused before the space came back.
    assert_eq!(rig.log_count("the store refuses readings"), 1);
    assert_eq!(rig.log_count("the store accepts readings again"), 1);

    let db = rig.gateway.db_path();
    rig.gateway.terminate();
    assert_eq!(integrity(&db), "ok");
}
