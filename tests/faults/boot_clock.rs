//! Scenario 11: boot without a clock. A Raspberry Pi comes back from a
//! power cut with the time fake-hwclock saved, a day behind, and no NTP
//! yet. Readings stamped with the receive time are held (none reaches
//! dakkio with the wrong day), survive a restart of the gateway, and are
//! re-stamped and delivered once the clock is synchronised — each within
//! seconds of its true receive time. The ledger balances throughout.
//!
//! The wall clock is moved with libfaketime (boot time is not:
//! `DONT_FAKE_MONOTONIC=1`, as the kernel never steps `CLOCK_BOOTTIME`),
//! and the kernel's synchronisation status is played by the test clock
//! file (`DAKKIO_GATEWAY_TEST_CLOCK_FILE`, fault-injection builds only).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support;
use crate::support::EVENT_TIMEOUT;
use testkit::faults::{libfaketime, Placement, Rig, B1};

const DAY_MS: i64 = 24 * 3600 * 1000;

fn write(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn real_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Wait until the store holds `n` readings for the clock; the ledger must
/// balance at every look.
fn wait_held(rig: &Rig, n: i64) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let s = rig.gateway.stats();
        let b = s.bucket(B1).cloned().unwrap_or_default();
        assert!(b.ledger_balances(), "{b:?}");
        if b.held_for_clock >= n {
            assert_eq!(b.queued, b.accepted, "nothing delivered while held: {b:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "held {b:?}\n{}",
            rig.gateway.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn boot_without_clock_holds_then_restamps() {
    let _x = support::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("faketime.offset");
    let clock = dir.path().join("clock");
    write(&offset, "-1d");
    write(&clock, "unsynced");
    let lib = libfaketime();
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("DONT_FAKE_MONOTONIC", "1"),
        ("DAKKIO_GATEWAY_TEST_CLOCK_FILE", clock.to_str().unwrap()),
    ];
    let mut rig = Rig::start(&Placement::loopback(), dir.path(), "", &env);
    rig.expect_log("system clock not synchronised");

    let first = real_now_ms();
    rig.publish(300);
    wait_held(&rig, 300);
    assert_eq!(
        rig.up.standin.accepted_count(),
        0,
        "a wrong time left the gateway"
    );

    // The gateway restarts before NTP answers: the holds are kept.
    rig.gateway.terminate();
    rig.gateway.restart();
    rig.gateway.wait_ready();
    rig.expect_log("mqtt subscriptions active");
    rig.publish(200);
    wait_held(&rig, 500);
    let last = real_now_ms();
    assert_eq!(rig.up.standin.accepted_count(), 0);

    // NTP sets the clock.
    write(&offset, "+0");
    write(&clock, "synced");
    rig.expect_log("held readings re-stamped");
    rig.finish("11 boot without clock", Duration::from_secs(60));
    let points = rig.up.standin.accepted_points(B1);
    assert_eq!(points.len(), 500);
    for p in &points {
        assert!(
            p.timestamp_ms >= first - 5_000 && p.timestamp_ms <= last + 5_000,
            "re-stamped to {} (received between {first} and {last}; a day off would be {})",
            p.timestamp_ms,
            first - DAY_MS
        );
    }
    // The marks follow dakkio's answers: wait for the queue to empty.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let b = rig.gateway.stats().bucket(B1).cloned().unwrap();
        assert!(b.ledger_balances(), "{b:?}");
        assert_eq!(b.held_for_clock, 0, "{b:?}");
        if b.queued == 0 {
            assert_eq!(b.delivered, 500, "{b:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{b:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
