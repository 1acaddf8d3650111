//! Scenario 7: the wall clock jumps forward a day and back an hour and a
//! day while dakkio refuses (503, then 429 with `Retry-After`), so that the
//! uplink is in its retries; end to end (QoS 1 publisher → mosquitto →
//! gateway → dakkio stand-in).
//!
//! The gateway runs under libfaketime with its offset in a file the test
//! rewrites (`FAKETIME_TIMESTAMP_FILE`, `FAKETIME_NO_CACHE=1`). We test the
//! realistic case: the wall clock jumps (NTP after a boot without RTC, an
//! operator's `date -s`) and the monotonic clock does not
//! (`DONT_FAKE_MONOTONIC=1`) — Linux never steps CLOCK_MONOTONIC, and
//! tokio's timers run on it. Retries must go on at sane gaps (no wait of a
//! day, no tight loop), everything is delivered once dakkio recovers, and
//! the readings carry the gateway's (jumped) wall clock, which proves the
//! jumps reached the process.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use testkit::standin::{Reply, Script};

use crate::support;
use testkit::faults::tally;
use testkit::faults::{libfaketime, Placement, Rig};

const DAY_MS: i64 = 24 * 3600 * 1000;
const HOUR_MS: i64 = 3600 * 1000;

fn set_offset(file: &Path, offset: &str) {
    // Written whole and renamed, so the gateway never reads half a line.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset}\n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn real_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Await `more` further requests at the stand-in (retries go on).
fn await_retries(rig: &Rig, more: u64, what: &str) {
    let want = rig.up.standin.request_count() + more;
    assert!(
        rig.up.rt.block_on(
            rig.up
                .standin
                .wait_for_requests(want, Duration::from_secs(30))
        ),
        "{what}: the uplink stopped retrying (wanted {more} more requests within 30 s); log:\n{}",
        rig.gateway.log_text()
    );
}

/// The gateway's timestamps of the readings with ids in `ids`.
fn stamps(rig: &Rig, ids: std::ops::Range<u64>) -> Vec<i64> {
    rig.up
        .standin
        .all_accepted_points()
        .iter()
        .filter(|p| {
            p.values
                .get("n")
                .and_then(|v| v.as_f64())
                .is_some_and(|n| ids.contains(&(n as u64)))
        })
        .map(|p| p.timestamp_ms)
        .collect()
}

#[test]
fn wall_clock_jumps_during_retries_neither_park_nor_spin_the_uplink() {
    let _x = support::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("faketime.offset");
    set_offset(&offset, "+0");
    let lib = libfaketime();
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ];
    let mut rig = Rig::start(&Placement::loopback(), dir.path(), "", &env);
    let step = if tally::long() { 5_000 } else { 500 };
    // Retries under each clock: a few in CI, many in the long run.
    let retries = if tally::long() { 60 } else { 4 };

    rig.publish(step);
    assert!(rig.wait_delivered(Duration::from_secs(60)));

    // dakkio goes away: the uplink backs off (100 ms .. 1 s).
    rig.up.standin.set_sticky(Some(Script::respond(503)));
    let first_refused = rig.up.standin.request_count() + 1;
    let refused_from = SystemTime::now();
    rig.publish(step);
    rig.expect_log("dakkio delivery failing");

    // A day forward.
    set_offset(&offset, "+1d");
    let ahead = rig.accepted.len() as u64;
    rig.publish(step);
    await_retries(&rig, retries, "clock +1 day");

    // dakkio rate-limits; the clock goes back an hour behind the truth.
    rig.up
        .standin
        .set_sticky(Some(Reply::new(429).retry_after("1").into()));
    set_offset(&offset, "-1h");
    let behind = rig.accepted.len() as u64;
    rig.publish(step);
    await_retries(&rig, retries, "clock -1 hour");

    let last_refused = rig.up.standin.request_count();
    let refused_for = refused_from.elapsed().unwrap();
    rig.up.standin.set_sticky(None);
    rig.expect_log("dakkio delivery working again");
    set_offset(&offset, "+0");
    rig.publish(step);
    rig.finish("7 clock jumps", Duration::from_secs(60));

    // Sane gaps between the refused attempts, measured on the test's own
    // (true) clock: never more than a few backoff_max (1 s) or
    // Retry-After (1 s) apart, and no tight loop.
    let refused: Vec<_> = rig
        .up
        .standin
        .requests()
        .into_iter()
        .filter(|r| (first_refused..=last_refused).contains(&r.seq))
        .collect();
    let longest = refused
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).unwrap_or_default())
        .max()
        .unwrap_or_default();
    assert!(
        longest <= Duration::from_secs(5),
        "a retry waited {longest:?} (backoff_max and Retry-After are 1 s)"
    );
    let per_s = refused.len() as f64 / refused_for.as_secs_f64();
    assert!(
        per_s <= 20.0,
        "{} attempts in {refused_for:?}: a tight loop",
        refused.len()
    );
    eprintln!(
        "clock: {} refused attempts in {refused_for:.1?}, longest gap {longest:.1?}",
        refused.len()
    );

    // The jumps reached the gateway: its timestamps moved with them.
    let now = real_now_ms();
    for (ids, want, what) in [
        (ahead..ahead + step, now + DAY_MS, "+1 day"),
        (behind..behind + step, now - HOUR_MS, "-1 hour"),
    ] {
        let got = stamps(&rig, ids);
        assert!(!got.is_empty());
        assert!(
            got.iter().all(|t| (t - want).abs() < 10 * 60 * 1000),
            "readings stamped under the {what} clock: {:?}.. (want about {want})",
            &got[..got.len().min(3)]
        );
    }
}
