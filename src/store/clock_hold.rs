//! Readings waiting for a trusted clock: the `clock_hold` table.
//!
//! # Design
//!
//! A reading stamped with the gateway's receive time (`Reading::receive_time`)
//! while the system clock is not synchronised ([`crate::clock`]) is appended
//! as usual — accepted, counted, queued — and, in the same transaction, gets
//! a row here: its bucket and seq, the boot id, and the boot time
//! (`CLOCK_BOOTTIME`, ms) at which it was received. Then:
//!
//! - **held back**: the uplink's claim stops before the lowest held seq of a
//!   bucket (`claim` in `reader.rs`), so order per bucket is kept and no
//!   wrong time leaves the gateway; the readings count as queued, so the
//!   ledger `accepted = delivered + queued + dead_lettered + dropped` holds
//!   throughout;
//! - **re-stamped** once the clock is synchronised, for holds of this boot:
//!   `ts = synced wall − (boot now − boot at receipt)` ([`restamp`]); the
//!   hold rows go in the same transaction, and the claims resume;
//! - **earlier boots** that never saw a synchronised clock cannot be
//!   re-stamped (their boot clock is gone): after `[clock].earlier_boot_wait`
//!   they are either forwarded with their time as it was and metadata
//!   `timeEstimated: true`, or kept aside as dead letters (status 0, message
//!   saying why; `dead-letters retry` forwards them later) — `[clock]
//!   .earlier_boot` ([`release_other_boots`]).
//!
//! Crash safety: the hold row commits with its reading, and a re-stamp or
//! release is one transaction, so a restart in between keeps every hold (the
//! boot id and boot time survive a restart of the process, not of the
//! machine — which is exactly the earlier-boot case).
//!
//! The table is created by [`ensure`] when the writer opens the database
//! (not a numbered migration: it is independent of the others, and an older
//! database simply has none). Readers that find no table count no holds.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::clock::ClockSource;

/// Create the table if this database has none yet.
pub(crate) fn ensure(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS clock_hold (
            bucket  INTEGER NOT NULL,
            seq     INTEGER NOT NULL,
            boot_id TEXT NOT NULL,
            boot_ms INTEGER NOT NULL,   -- CLOCK_BOOTTIME at receipt
            PRIMARY KEY (bucket, seq)
        ) WITHOUT ROWID;",
    )
}

/// The writer's view of the clock, shared with the clock-trust task (which
/// is woken through `held` when a first reading is held).
#[derive(Debug)]
pub struct ClockGate {
    source: Arc<dyn ClockSource>,
    boot_id: String,
    /// Notified when the writer holds readings.
    pub held: tokio::sync::Notify,
    /// `[clock] hold_unsynced` (set by the supervisor; on until then).
    enabled: std::sync::atomic::AtomicBool,
}

/// The clock at the moment readings were appended unsynchronised.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unsynced {
    boot_ms: i64,
    wall_ms: i64,
}

impl ClockGate {
    pub fn new(source: Arc<dyn ClockSource>) -> Self {
        let boot_id = source.boot_id();
        ClockGate {
            source,
            boot_id,
            held: tokio::sync::Notify::new(),
            enabled: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// `[clock] hold_unsynced`: off, nothing is held (what is already held
    /// still waits for its re-stamp).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn source(&self) -> &Arc<dyn ClockSource> {
        &self.source
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// `Some` when readings stamped now with the receive time must be held.
    pub(super) fn unsynced(&self) -> Option<Unsynced> {
        if !self.enabled.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        (!self.source.status().synced).then(|| Unsynced {
            boot_ms: self.source.boot_ms(),
            wall_ms: self.source.wall_ms(),
        })
    }

    /// Hold the reading just inserted as (`bucket`, `seq`), received at
    /// wall time `ts` (its timestamp).
    pub(super) fn hold(
        &self,
        tx: &Transaction,
        now: Unsynced,
        bucket: i64,
        seq: i64,
        ts: i64,
    ) -> rusqlite::Result<()> {
        // The boot time at receipt: the wall clock and the boot clock run
        // together between receipt and now (milliseconds apart).
        let boot_ms = now.boot_ms - (now.wall_ms - ts).max(0);
        tx.prepare_cached(
            "INSERT OR REPLACE INTO clock_hold (bucket, seq, boot_id, boot_ms) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![bucket, seq, self.boot_id, boot_ms])?;
        self.held.notify_one();
        Ok(())
    }
}

/// What the clock-trust task asks the writer to do.
#[derive(Debug, Clone)]
pub enum ClockOp {
    /// Re-stamp the holds of `boot_id` with the synchronised clock.
    Restamp {
        boot_id: String,
        boot_ms: i64,
        wall_ms: i64,
    },
    /// Release the holds of every other boot: forward them marked
    /// `timeEstimated`, or (`keep`) move them to dead letters.
    ReleaseOtherBoots { boot_id: String, keep: bool },
}

pub(super) fn apply(tx: &Transaction, op: &ClockOp) -> rusqlite::Result<usize> {
    match op {
        ClockOp::Restamp {
            boot_id,
            boot_ms,
            wall_ms,
        } => restamp(tx, boot_id, *boot_ms, *wall_ms),
        ClockOp::ReleaseOtherBoots { boot_id, keep } => release_other_boots(tx, boot_id, *keep),
    }
}

/// `ts = wall_ms − (boot_ms − boot at receipt)` for every hold of `boot_id`.
/// A held reading is undelivered (the cursor never passes it), so it is in
/// the queue index: every statement here finds it there (`queued = 1`).
pub(super) fn restamp(
    tx: &Transaction,
    boot_id: &str,
    boot_ms: i64,
    wall_ms: i64,
) -> rusqlite::Result<usize> {
    let n = tx
        .prepare_cached(
            "UPDATE readings SET ts = ?3 - (?2 - h.boot_ms)
             FROM clock_hold h
             WHERE h.boot_id = ?1 AND readings.bucket = h.bucket AND readings.seq = h.seq
               AND readings.queued = 1",
        )?
        .execute(params![boot_id, boot_ms, wall_ms])?;
    tx.prepare_cached("DELETE FROM clock_hold WHERE boot_id = ?1")?
        .execute([boot_id])?;
    Ok(n)
}

/// Bytes (as the fair-share budget counts them) of the held rows of other
/// boots, per bucket key.
fn held_bytes(tx: &Transaction, boot_id: &str) -> rusqlite::Result<Vec<(i64, i64)>> {
    tx.prepare_cached(&format!(
        "SELECT h.bucket, coalesce(sum({}), 0) FROM clock_hold h
         JOIN readings ON readings.bucket = h.bucket AND readings.seq = h.seq
                       AND readings.queued = 1
         WHERE h.boot_id <> ?1 GROUP BY h.bucket",
        super::budget::ROW_BYTES_SQL
    ))?
    .query_map([boot_id], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

/// Release the holds of boots other than `boot_id`. The queued-bytes
/// counter of the fair shares (`budget.rs`) follows the rows: removed when
/// they become dead letters, adjusted when their metadata grows.
pub(super) fn release_other_boots(
    tx: &Transaction,
    boot_id: &str,
    keep: bool,
) -> rusqlite::Result<usize> {
    let before = held_bytes(tx, boot_id)?;
    let n = if keep {
        let now = crate::reading::now_ms();
        let n = tx
            .prepare_cached(
                "INSERT INTO dead_letters
                   (seq, bucket, source, ts, origin, vals, meta, status, message, details, at)
                 SELECT r.seq, r.bucket, r.source, r.ts, r.origin, r.vals, r.meta, 0, ?2, NULL, ?3
                 FROM readings r JOIN clock_hold h ON r.bucket = h.bucket AND r.seq = h.seq
                 WHERE h.boot_id <> ?1 AND r.queued = 1",
            )?
            .execute(params![boot_id, KEPT_MESSAGE, now])?;
        let per_bucket: Vec<(i64, i64)> = tx
            .prepare_cached(
                "SELECT h.bucket, count(*) FROM clock_hold h
                 JOIN readings r ON r.bucket = h.bucket AND r.seq = h.seq AND r.queued = 1
                 WHERE h.boot_id <> ?1 GROUP BY h.bucket",
            )?
            .query_map([boot_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        tx.prepare_cached(
            "DELETE FROM readings WHERE queued = 1 AND EXISTS (SELECT 1 FROM clock_hold h
               WHERE h.boot_id <> ?1 AND h.bucket = readings.bucket AND h.seq = readings.seq)",
        )?
        .execute([boot_id])?;
        for (bucket, k) in per_bucket {
            super::apply::bump(tx, bucket, "dead_lettered", k)?;
        }
        for (bucket, bytes) in &before {
            super::apply::bump(tx, *bucket, super::budget::QUEUED_BYTES, -bytes)?;
        }
        n
    } else {
        let n = tx.prepare_cached(
            "UPDATE readings SET meta = json_set(coalesce(meta, '{}'), '$.timeEstimated', json('true'))
             FROM clock_hold h
             WHERE h.boot_id <> ?1 AND readings.bucket = h.bucket AND readings.seq = h.seq
               AND readings.queued = 1",
        )?
        .execute([boot_id])?;
        let after = held_bytes(tx, boot_id)?;
        for ((bucket, was), (_, is)) in before.iter().zip(&after) {
            super::apply::bump(tx, *bucket, super::budget::QUEUED_BYTES, is - was)?;
        }
        n
    };
    tx.prepare_cached("DELETE FROM clock_hold WHERE boot_id <> ?1")?
        .execute([boot_id])?;
    Ok(n)
}

/// The dead-letter message of a reading kept because its time is unknown.
pub const KEPT_MESSAGE: &str = "time unknown: received before the system clock was synchronised, \
     on an earlier boot that never synchronised it (`[clock] earlier_boot = \"keep\"`)";

/// Held readings of a bucket key (any connection; 0 when the table does
/// not exist yet).
pub(super) fn count(c: &Connection, bucket: i64) -> i64 {
    c.prepare_cached("SELECT count(*) FROM clock_hold WHERE bucket = ?1")
        .and_then(|mut st| st.query_row([bucket], |r| r.get(0)).optional())
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::clock::ClockStatus;
    use crate::config::StoreConfig;
    use crate::reading::{Origin, Reading, Value};
    use crate::store::{open_with_clock, StoreHandle, WriterThread};

    const B: &str = "507f1f77bcf86cd799439011";
    const S: &str = "507f1f77bcf86cd799439012";

    /// A clock the test sets by hand.
    #[derive(Debug)]
    struct Fake {
        synced: AtomicBool,
        boot: Mutex<String>,
        boot_ms: AtomicI64,
        wall_ms: AtomicI64,
    }

    impl Fake {
        fn new(boot: &str, boot_ms: i64, wall_ms: i64) -> Arc<Fake> {
            Arc::new(Fake {
                synced: AtomicBool::new(false),
                boot: Mutex::new(boot.into()),
                boot_ms: AtomicI64::new(boot_ms),
                wall_ms: AtomicI64::new(wall_ms),
            })
        }
        fn set(&self, synced: bool, boot_ms: i64, wall_ms: i64) {
            self.synced.store(synced, Ordering::SeqCst);
            self.boot_ms.store(boot_ms, Ordering::SeqCst);
            self.wall_ms.store(wall_ms, Ordering::SeqCst);
        }
    }

    impl ClockSource for Fake {
        fn status(&self) -> ClockStatus {
            ClockStatus {
                synced: self.synced.load(Ordering::SeqCst),
                maxerror_us: 0,
            }
        }
        fn boot_id(&self) -> String {
            self.boot.lock().unwrap().clone()
        }
        fn boot_ms(&self) -> i64 {
            self.boot_ms.load(Ordering::SeqCst)
        }
        fn wall_ms(&self) -> i64 {
            self.wall_ms.load(Ordering::SeqCst)
        }
    }

    fn reading(ts: i64, receive_time: bool, n: i64) -> Reading {
        Reading {
            bucket_id: B.into(),
            data_source_id: S.into(),
            timestamp_ms: ts,
            values: [("n".into(), Value::Number(n as f64))].into(),
            metadata: Default::default(),
            origin: Origin::Modbus,
            receive_time,
        }
    }

    fn open(dir: &std::path::Path, clock: Arc<Fake>) -> (StoreHandle, WriterThread) {
        open_with_clock(&StoreConfig::default(), dir, clock).unwrap()
    }

    async fn close(h: StoreHandle, w: WriterThread) {
        drop(h);
        tokio::task::spawn_blocking(move || w.join())
            .await
            .unwrap()
            .unwrap();
    }

    /// (timestamp, n, metadata) of what a forwarder would claim now.
    async fn claimable(h: &StoreHandle) -> Vec<(i64, f64, Option<String>)> {
        h.reader()
            .claim(B, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|q| {
                let v: serde_json::Value = serde_json::from_str(&q.values_json).unwrap();
                (q.timestamp_ms, v["n"].as_f64().unwrap(), q.metadata_json)
            })
            .collect()
    }

    async fn bucket(h: &StoreHandle) -> crate::store::BucketStats {
        let s = h.reader().stats().await.unwrap();
        let b = s.bucket(B).unwrap().clone();
        assert!(b.ledger_balances(), "{b:?}");
        b
    }

    /// Received at boot 10 s / wall "1970" (the clock not yet set),
    /// held across a restart, re-stamped with the synchronised clock:
    /// wall = synced wall − elapsed boot time. A device timestamp is kept.
    #[tokio::test]
    async fn held_across_a_restart_then_restamped() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Fake::new("boot-a", 10_000, 5_000);
        let (h, w) = open(dir.path(), clock.clone());
        h.append(vec![
            reading(5_000, true, 1),
            reading(1_700_000_000_000, false, 2),
        ])
        .await
        .unwrap();
        clock.set(false, 10_500, 5_500);
        h.append(vec![reading(5_500, true, 3)]).await.unwrap();
        assert!(
            claimable(&h).await.is_empty(),
            "nothing leaves before the first hold"
        );
        let b = bucket(&h).await;
        assert_eq!((b.queued, b.held_for_clock, b.accepted), (3, 2, 3));
        close(h, w).await;

        // The process restarts (same boot): the holds are still there.
        clock.set(false, 12_000, 7_000);
        let (h, w) = open(dir.path(), clock.clone());
        assert_eq!(bucket(&h).await.held_for_clock, 2);
        assert!(claimable(&h).await.is_empty());
        // NTP sets the clock: boot 20 s is 2023-11-14T22:13:20Z.
        let synced = 1_700_000_000_000;
        clock.set(true, 20_000, synced);
        let op = ClockOp::Restamp {
            boot_id: "boot-a".into(),
            boot_ms: 20_000,
            wall_ms: synced,
        };
        assert_eq!(h.clock(op).await.unwrap(), 2);
        let got = claimable(&h).await;
        assert_eq!(
            got,
            vec![
                (synced - 10_000, 1.0, None),
                (1_700_000_000_000, 2.0, None),
                (synced - 9_500, 3.0, None),
            ]
        );
        let b = bucket(&h).await;
        assert_eq!((b.queued, b.held_for_clock), (3, 0));
        // Synchronised now: nothing new is held.
        h.append(vec![reading(synced + 1, true, 4)]).await.unwrap();
        assert_eq!(bucket(&h).await.held_for_clock, 0);
        close(h, w).await;
    }

    /// Holds of an earlier boot that never synchronised: forwarded with
    /// `timeEstimated`, or kept as dead letters; the ledger balances.
    #[tokio::test]
    async fn earlier_boots_are_forwarded_estimated_or_kept() {
        for keep in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let clock = Fake::new("boot-a", 10_000, 5_000);
            let (h, w) = open(dir.path(), clock.clone());
            h.append(vec![reading(5_000, true, 1), reading(5_001, true, 2)])
                .await
                .unwrap();
            close(h, w).await;
            // A new boot: its own id; the old boot's holds cannot be re-stamped.
            *clock.boot.lock().unwrap() = "boot-b".into();
            clock.set(true, 3_000, 1_700_000_000_000);
            let (h, w) = open(dir.path(), clock.clone());
            let restamp = ClockOp::Restamp {
                boot_id: "boot-b".into(),
                boot_ms: 3_000,
                wall_ms: 1_700_000_000_000,
            };
            assert_eq!(h.clock(restamp).await.unwrap(), 0);
            assert_eq!(bucket(&h).await.held_for_clock, 2);
            let release = ClockOp::ReleaseOtherBoots {
                boot_id: "boot-b".into(),
                keep,
            };
            assert_eq!(h.clock(release).await.unwrap(), 2);
            let b = bucket(&h).await;
            assert_eq!(b.held_for_clock, 0);
            if keep {
                assert_eq!((b.queued, b.dead_lettered), (0, 2), "{b:?}");
                let dead = h.reader().dead_letters(10).await.unwrap();
                assert_eq!(dead.len(), 2);
                assert_eq!(dead[0].message, KEPT_MESSAGE);
            } else {
                let got = claimable(&h).await;
                assert_eq!(got.len(), 2);
                for (ts, _, meta) in got {
                    assert!(ts == 5_000 || ts == 5_001, "the time is left as it was");
                    let meta: serde_json::Value = serde_json::from_str(&meta.unwrap()).unwrap();
                    assert_eq!(meta["timeEstimated"], serde_json::json!(true));
                }
            }
            close(h, w).await;
        }
    }

    /// `[clock] hold_unsynced = false`: nothing is held.
    #[tokio::test]
    async fn disabled_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Fake::new("boot-a", 10_000, 5_000);
        let (h, w) = open(dir.path(), clock);
        h.clock_gate().set_enabled(false);
        h.append(vec![reading(5_000, true, 1)]).await.unwrap();
        assert_eq!(bucket(&h).await.held_for_clock, 0);
        assert_eq!(claimable(&h).await.len(), 1);
        close(h, w).await;
    }
}
