//! Store tests on real SQLite files in temporary directories.

use std::time::Duration;

use super::*;
use crate::config::{OnFull, StoreConfig};
use crate::reading::{now_ms, Origin, Reading, Value};

pub(crate) const B1: &str = "507f1f77bcf86cd799439011";
pub(crate) const B2: &str = "507f1f77bcf86cd799439021";
pub(crate) const S1: &str = "507f1f77bcf86cd799439012";

pub(crate) fn reading(bucket: &str, ts: i64, v: f64) -> Reading {
    let mut values = crate::reading::Values::new();
    values.insert("temperature".into(), Value::Number(v));
    values.insert("humidity".into(), Value::Number(40.0 + v / 10.0));
    values.insert("pressure".into(), Value::Number(1013.25));
    Reading {
        bucket_id: bucket.into(),
        data_source_id: S1.into(),
        timestamp_ms: ts,
        values,
        metadata: Default::default(),
        origin: Origin::Mqtt,
        receive_time: false,
    }
}

fn config() -> StoreConfig {
    StoreConfig {
        commit_max_delay: Duration::from_millis(5),
        ..StoreConfig::default()
    }
}

pub(crate) async fn stop(handle: StoreHandle, writer: WriterThread) {
    drop(handle);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
}

/// Mark the bucket's readings up to `seq` delivered (but `dead`) and wait
/// for the commit.
async fn mark(h: &StoreHandle, bucket: &str, seq: i64, dead: Vec<DeadLetter>) -> MarkOutcome {
    h.mark_delivered(bucket, seq, dead)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap()
}

/// Mark everything queued in the bucket delivered.
async fn deliver_all(h: &StoreHandle, bucket: &str) {
    let queued = h.reader().claim(bucket, 0, usize::MAX >> 1).await.unwrap();
    mark(h, bucket, queued.last().unwrap().seq, vec![]).await;
}

pub(crate) async fn assert_balanced(h: &StoreHandle) -> StoreStats {
    let stats = h.reader().stats().await.unwrap();
    for b in &stats.buckets {
        assert!(b.ledger_balances(), "ledger does not balance: {b:?}");
    }
    assert_kept(h).await;
    stats
}

/// The ledger's `kept` counter (what the API reports as a bucket's data
/// points) is the number of rows, table and inbox.
pub(crate) async fn assert_kept(h: &StoreHandle) {
    let mirror = h.reader().mirror().clone();
    type PerBucket = Vec<(String, i64)>;
    let (counted, rows): (PerBucket, PerBucket) = h
        .reader()
        .with(move |c| {
            // The mirror is read under the same read transaction as the
            // table: the writer empties it only after a move's commit.
            c.execute_batch("BEGIN")?;
            let m = mirror.read().unwrap_or_else(|p| p.into_inner());
            let all = |sql: &str| -> rusqlite::Result<Vec<(String, i64, i64)>> {
                c.prepare(sql)?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            };
            let kept = all(
                "SELECT b.bucket_id, b.id, coalesce(l.value, 0) FROM buckets b
                 LEFT JOIN ledger l ON l.bucket = b.id AND l.name = 'kept' ORDER BY b.id",
            )?;
            let rows = all(
                "SELECT b.bucket_id, b.id, (SELECT count(*) FROM readings r WHERE r.bucket = b.id)
                 FROM buckets b ORDER BY b.id",
            )?;
            let inbox = |key: i64| m.bucket(key).map_or(0, |b| b.rows.len() as i64);
            let out = (
                kept.into_iter()
                    .map(|(id, key, n)| (id, n + inbox(key)))
                    .collect(),
                rows.into_iter()
                    .map(|(id, key, n)| (id, n + inbox(key)))
                    .collect(),
            );
            drop(m);
            c.execute_batch("COMMIT")?;
            Ok(out)
        })
        .await
        .unwrap();
    assert_eq!(counted, rows, "the kept counter against the rows");
}

#[tokio::test]
async fn group_commit_reports_every_reading_in_few_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    let mut pending = Vec::new();
    for i in 0..2000 {
        pending.push(
            h.submit(vec![reading(B1, 1000 + i, i as f64)])
                .await
                .unwrap(),
        );
    }
    let mut seqs = Vec::new();
    for p in pending {
        let a = p.wait().await.unwrap();
        assert_eq!(a.count, 1);
        seqs.push(a.first_seq);
    }
    // In submission order, contiguous.
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let commits = h.status().borrow().commits;
    assert!(
        (2..=200).contains(&commits),
        "2000 readings took {commits} commits"
    );
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.bucket(B1).unwrap().accepted, 2000);
    assert_eq!(stats.bucket(B1).unwrap().queued, 2000);
    stop(h, w).await;
}

#[tokio::test]
async fn claims_in_order_and_the_cursor_marks_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    let batch: Vec<Reading> = (0..10).map(|i| reading(B1, 1000 + i, i as f64)).collect();
    let a = h.append(batch).await.unwrap();
    h.append(vec![reading(B2, 5, 1.0)]).await.unwrap();

    let r = h.reader();
    assert_eq!(r.cursor(B1).await.unwrap(), 0);
    let first = r.claim(B1, 0, 4).await.unwrap();
    assert_eq!(first.len(), 4);
    assert_eq!(first[0].seq, a.first_seq);
    assert_eq!(first[0].data_source_id, S1);
    assert!(first[0].values_json.contains("\"temperature\":0.0"));
    let rest = r.claim(B1, first[3].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 6);

    let m = mark(&h, B1, first[3].seq, vec![]).await;
    assert_eq!(m.delivered, 4);
    assert_eq!(r.cursor(B1).await.unwrap(), first[3].seq);
    // A repeated or stale mark changes nothing.
    let again = mark(&h, B1, first[1].seq, vec![]).await;
    assert_eq!(again, MarkOutcome::default());

    let stats = assert_balanced(&h).await;
    let b1 = stats.bucket(B1).unwrap();
    assert_eq!((b1.delivered, b1.queued), (4, 6));
    assert_eq!(b1.oldest_queued_ms, Some(1004));
    assert_eq!(stats.bucket(B2).unwrap().queued, 1);

    let ids: Vec<String> = a.ids().collect();
    assert_eq!(ids.len(), 10);
    assert!(crate::reading::is_object_id(&ids[0]));
    assert_eq!(
        seq_from_reading_id(h.store_id(), &ids[3]),
        Some(a.first_seq + 3)
    );
    stop(h, w).await;
}

#[tokio::test]
async fn dead_letters_are_counted_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    let a = h
        .append((0..5).map(|i| reading(B1, i, i as f64)).collect())
        .await
        .unwrap();
    let bad = a.first_seq + 2;
    let dead = vec![DeadLetter {
        seq: bad,
        status: 400,
        message: "Invalid request parameters".into(),
        details: Some("[{\"path\":[\"body\",\"dataPoints\",2]}]".into()),
    }];
    let m = mark(&h, B1, a.first_seq + 4, dead).await;
    assert_eq!((m.delivered, m.dead_lettered), (4, 1));
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.bucket(B1).unwrap().dead_lettered, 1);
    let dl = h.reader().dead_letters(10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].seq, bad);
    assert_eq!(dl[0].message, "Invalid request parameters");

    assert_eq!(h.retry_dead_letters(None).await.unwrap(), 1);
    let stats = assert_balanced(&h).await;
    let b = stats.bucket(B1).unwrap();
    assert_eq!((b.dead_lettered, b.queued, b.accepted), (0, 1, 5));
    let again = h.reader().claim(B1, a.first_seq + 4, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].origin, Some(Origin::Retry));
    assert_eq!(again[0].timestamp_ms, 2);
    stop(h, w).await;
}

/// Marks commit in their order. A mark that names an earlier one not yet
/// committed is refused (`MarkBehind`, transient) without harm to its
/// group, through the inbox (no dead letters) as through the database
/// (dead letters, or no inbox); after the earlier one it applies. Before,
/// a full disk that refused a mark with dead letters and let the next mark
/// through moved the cursor past them: those readings counted as delivered
/// and were never sent.
#[tokio::test]
async fn a_mark_behind_an_uncommitted_one_waits_for_it() {
    for inbox_readings in [0, StoreConfig::default().inbox_readings] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            inbox_readings,
            ..config()
        };
        let (h, w) = open(&cfg, dir.path()).unwrap();
        let f = h
            .append((0..10).map(|i| reading(B1, i, i as f64)).collect())
            .await
            .unwrap()
            .first_seq;
        let dead = |seq: i64| DeadLetter {
            seq,
            status: 400,
            message: "Invalid request parameters".into(),
            details: None,
        };
        let submit = |after: Option<i64>, up_to: i64, dl: Vec<DeadLetter>| {
            let h = h.clone();
            async move {
                h.mark_delivered_after(B1, after, up_to, dl)
                    .await
                    .unwrap()
                    .wait()
                    .await
            }
        };
        // The second and third marks before the first: refused, nothing moves.
        let second = submit(Some(f + 4), f + 6, vec![]).await;
        assert!(
            matches!(second, Err(StoreError::MarkBehind { after }) if after == f + 4),
            "{second:?}"
        );
        let third = submit(Some(f + 6), f + 9, vec![dead(f + 8)]).await;
        assert!(
            third.as_ref().is_err_and(StoreError::is_transient),
            "{third:?}"
        );
        let b = assert_balanced(&h).await.bucket(B1).unwrap().clone();
        assert_eq!((b.delivered, b.dead_lettered, b.queued), (0, 0, 10));
        // In order: each applies, with its dead letters.
        let first = submit(None, f + 4, vec![dead(f + 2)]).await.unwrap();
        assert_eq!((first.delivered, first.dead_lettered), (4, 1));
        let second = submit(Some(f + 4), f + 6, vec![]).await.unwrap();
        assert_eq!(second.delivered, 2);
        let third = submit(Some(f + 6), f + 9, vec![dead(f + 8)]).await.unwrap();
        assert_eq!((third.delivered, third.dead_lettered), (2, 1));
        // A mark submitted again after its commit changes nothing.
        let again = submit(None, f + 4, vec![dead(f + 2)]).await.unwrap();
        assert_eq!(again, MarkOutcome::default());
        let b = assert_balanced(&h).await.bucket(B1).unwrap().clone();
        assert_eq!((b.delivered, b.dead_lettered, b.queued), (8, 2, 0));
        let seqs: Vec<i64> = h
            .reader()
            .dead_letters(10)
            .await
            .unwrap()
            .iter()
            .map(|d| d.seq)
            .collect();
        assert_eq!(seqs, [f + 2, f + 8], "inbox_readings = {inbox_readings}");
        stop(h, w).await;
    }
}

#[tokio::test]
async fn rejects_are_kept_bounded_and_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_rejects: 3,
        ..config()
    };
    let (h, w) = open(&cfg, dir.path()).unwrap();
    for i in 0..5 {
        h.submit_reject(Reject {
            origin: "mqtt:sensors/x".into(),
            reason: if i % 2 == 0 { "invalid_json" } else { "empty" }.into(),
            detail: "bad".into(),
            raw: vec![b'x'; 5000],
        })
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    }
    let stats = h.reader().stats().await.unwrap();
    assert_eq!(stats.rejected_by_reason["invalid_json"], 3);
    assert_eq!(stats.rejected_by_reason["empty"], 2);
    assert_eq!(stats.rejects_kept, 3);
    let kept = h.reader().rejects(10).await.unwrap();
    assert_eq!(kept[0].raw.len(), REJECT_RAW_LIMIT);
    stop(h, w).await;
}

fn small(on_full: OnFull) -> StoreConfig {
    StoreConfig {
        max_size: 4 << 20,
        on_full,
        ..config()
    }
}

async fn fill(h: &StoreHandle, bucket: &str, batches: usize) -> Result<usize, StoreError> {
    let mut n = 0;
    for b in 0..batches {
        let batch: Vec<Reading> = (0..1000)
            .map(|i| reading(bucket, (b * 1000 + i) as i64, i as f64))
            .collect();
        h.append(batch).await?;
        n += 1000;
    }
    Ok(n)
}

#[tokio::test]
async fn drop_oldest_removes_history_first_then_the_oldest_queued() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(OnFull::DropOldest);
    let budget = cfg.max_size - headroom(cfg.max_size);
    let (h, w) = open(&cfg, dir.path()).unwrap();
    // 5,000 delivered readings of history, then far more than fits.
    fill(&h, B2, 5).await.unwrap();
    deliver_all(&h, B2).await;
    fill(&h, B1, 60).await.unwrap();

    let stats = assert_balanced(&h).await;
    let b1 = stats.bucket(B1).unwrap();
    assert!(b1.dropped > 0, "nothing was dropped: {b1:?}");
    assert_eq!(b1.dropped_by_reason["store_full"], b1.dropped);
    assert!(b1.queued > 10_000, "{b1:?}");
    // The history went first and is not counted as dropped.
    let b2 = stats.bucket(B2).unwrap();
    assert_eq!((b2.dropped, b2.delivered), (0, 5000));
    assert!(h.reader().claim(B2, 0, 10).await.unwrap().is_empty());
    assert!(
        stats.used_bytes <= budget,
        "{} > {budget}",
        stats.used_bytes
    );
    // The newest readings are the ones kept.
    let newest = h.reader().claim(B1, 0, 1).await.unwrap();
    assert!(newest[0].timestamp_ms > 1000);
    stop(h, w).await;
    let file = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
    assert!(file <= cfg.max_size, "file {file} > max_size");
}

/// Rows of `bucket` at or below its delivery cursor (the kept history).
async fn history_rows(h: &StoreHandle, bucket: &str) -> i64 {
    let bucket = bucket.to_owned();
    h.reader()
        .with(move |c| {
            c.query_row(
                "SELECT count(*) FROM readings r JOIN buckets b ON b.id = r.bucket
                 WHERE b.bucket_id = ?1 AND r.seq <= b.delivered_seq",
                [bucket],
                |r| r.get(0),
            )
        })
        .await
        .unwrap()
}

/// Rejects with 64 KiB topics (the soak's case: 1,500 of them took a
/// 64 MiB store to 95 MiB and then cost undelivered readings): what is kept
/// is truncated, counted against the budget and removed first, so the file
/// stays within `max_size` and no reading is dropped for them.
#[tokio::test]
async fn rejects_are_truncated_and_removed_first_to_stay_in_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(OnFull::DropOldest);
    let budget = cfg.max_size - headroom(cfg.max_size);
    let (h, w) = open(&cfg, dir.path()).unwrap();
    let topic = format!("mqtt:{}", "t/".repeat(32 << 10));
    let total = 3000;
    for _ in 0..total / 100 {
        let mut pending = Vec::new();
        for _ in 0..100 {
            let reject = Reject {
                origin: topic.clone(),
                reason: "too_large".into(),
                detail: "x".repeat(8 << 10),
                raw: vec![b'x'; 8 << 10],
            };
            pending.push(h.submit_reject(reject).await.unwrap());
        }
        for p in pending {
            p.wait().await.unwrap();
        }
    }
    let stats = h.reader().stats().await.unwrap();
    assert_eq!(stats.rejected_by_reason["too_large"], total);
    assert!(stats.rejects_evicted > 0, "{stats:?}");
    assert_eq!(stats.rejects_kept + stats.rejects_evicted, total);
    assert!(
        stats.used_bytes <= budget,
        "{} > {budget}",
        stats.used_bytes
    );
    let kept = h.reader().rejects(10_000).await.unwrap();
    assert!(kept.iter().all(|r| r.origin.len() <= REJECT_ORIGIN_LIMIT
        && r.detail.len() <= REJECT_DETAIL_LIMIT
        && r.raw.len() <= REJECT_RAW_LIMIT));
    // The newest are the ones kept.
    assert_eq!(kept.last().unwrap().id, stats.rejects_evicted + 1);
    // Readings that fit once the rejects go cost no reading.
    fill(&h, B1, 2).await.unwrap();
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.bucket(B1).unwrap().dropped, 0);
    stop(h, w).await;
    let file = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
    assert!(file <= cfg.max_size, "file {file} > max_size");
}

/// Dead letters are inside the budget: removed oldest first, after the
/// delivered history (safe upstream) and before any queued reading,
/// counted per bucket as evicted while staying counted as dead-lettered
/// (the ledger keeps balancing). Bad input alone never evicts one.
#[tokio::test]
async fn dead_letters_go_after_history_and_their_eviction_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(OnFull::DropOldest);
    let (h, w) = open(&cfg, dir.path()).unwrap();
    // 3,000 dead letters in B1, 5,000 readings of history in B2.
    fill(&h, B1, 3).await.unwrap();
    let queued = h.reader().claim(B1, 0, 10_000).await.unwrap();
    let dead: Vec<DeadLetter> = queued
        .iter()
        .map(|q| DeadLetter {
            seq: q.seq,
            status: 400,
            message: "Invalid request parameters".into(),
            details: None,
        })
        .collect();
    let m = mark(&h, B1, queued.last().unwrap().seq, dead).await;
    assert_eq!(m.dead_lettered, 3000);
    fill(&h, B2, 5).await.unwrap();
    deliver_all(&h, B2).await;
    assert_eq!(history_rows(&h, B2).await, 5000);
    // A flood of bad input never costs a dead letter.
    for _ in 0..30 {
        let mut pending = Vec::new();
        for _ in 0..100 {
            let reject = Reject {
                origin: "mqtt:x".into(),
                reason: "invalid_json".into(),
                detail: "bad".into(),
                raw: vec![b'x'; REJECT_RAW_LIMIT],
            };
            pending.push(h.submit_reject(reject).await.unwrap());
        }
        for p in pending {
            p.wait().await.unwrap();
        }
    }
    let stats = h.reader().stats().await.unwrap();
    assert_eq!(stats.dead_letters_kept, 3000, "{stats:?}");
    assert_eq!(stats.bucket(B1).unwrap().dead_letters_evicted, 0);

    // New readings until room is first made: only dead letters went.
    let mut batches = 0;
    let first = loop {
        let stats = h.reader().stats().await.unwrap();
        if stats.bucket(B1).unwrap().dead_letters_evicted > 0 {
            break stats;
        }
        assert!(batches < 60, "no dead letter was ever evicted: {stats:?}");
        fill(&h, B1, 1).await.unwrap();
        batches += 1;
    };
    let b1 = first.bucket(B1).unwrap();
    assert!(first.dead_letters_kept > 0, "{first:?}");
    assert_eq!(first.dead_letters_kept + b1.dead_letters_evicted, 3000);
    assert_eq!(history_rows(&h, B2).await, 0, "history goes first");
    assert_eq!(history_rows(&h, B1).await, 0, "history goes first");
    assert_eq!(b1.dropped, 0, "dead letters go before queued readings");
    // Oldest first: what is left are the newest.
    let left = h.reader().dead_letters(10_000).await.unwrap();
    let oldest_left = left.iter().map(|d| d.id).min().unwrap();
    assert_eq!(oldest_left, b1.dead_letters_evicted + 1);

    // Far more than fits: every dead letter goes, then the oldest queued
    // readings; all of it accounted for.
    fill(&h, B1, 60).await.unwrap();
    let stats = assert_balanced(&h).await;
    let b1 = stats.bucket(B1).unwrap();
    assert_eq!(b1.dead_lettered, 3000);
    assert_eq!(stats.dead_letters_kept + b1.dead_letters_evicted, 3000);
    assert_eq!(stats.dead_letters_kept, 0);
    assert!(b1.dropped > 0, "{b1:?}");
    assert_eq!(history_rows(&h, B2).await, 0);
    stop(h, w).await;
    let file = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
    assert!(file <= cfg.max_size, "file {file} > max_size");
}

#[tokio::test]
async fn reject_refuses_new_readings_until_delivery_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&small(OnFull::Reject), dir.path()).unwrap();
    let err = fill(&h, B1, 60).await.unwrap_err();
    assert!(matches!(err, StoreError::Full), "{err:?}");
    assert!(h.status().borrow().used_bytes > 0);
    let stats = assert_balanced(&h).await;
    let b1 = stats.bucket(B1).unwrap().clone();
    assert_eq!(b1.dropped, 0);
    // Another full group is refused as well (a single reading may still fit).
    let group: Vec<Reading> = (0..1000).map(|i| reading(B1, i, 1.0)).collect();
    assert!(matches!(h.append(group).await, Err(StoreError::Full)));

    // Delivering everything turns the queue into history, which can go.
    deliver_all(&h, B1).await;
    h.append(vec![reading(B1, 1, 1.0)]).await.unwrap();
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.bucket(B1).unwrap().accepted, b1.accepted + 1);
    stop(h, w).await;
}

#[tokio::test]
async fn retention_prunes_only_old_delivered_history() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        retention: Duration::from_secs(3600),
        ..config()
    };
    let (h, w) = open(&cfg, dir.path()).unwrap();
    let now = now_ms();
    let old = now - 2 * 3_600_000;
    let a = h
        .append(vec![
            reading(B1, old, 1.0),
            reading(B1, now, 2.0),
            reading(B1, old, 3.0),
        ])
        .await
        .unwrap();
    // Only the first two are delivered; the third is old but still queued.
    mark(&h, B1, a.first_seq + 1, vec![]).await;
    h.maintain().await.unwrap();
    let left: Vec<i64> = h
        .reader()
        .with(|c| {
            c.prepare("SELECT seq FROM readings ORDER BY seq")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
        .unwrap();
    assert_eq!(left, vec![a.first_seq + 1, a.first_seq + 2]);
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.bucket(B1).unwrap().delivered, 2);
    stop(h, w).await;
}

#[tokio::test]
async fn seqs_are_never_reused_after_everything_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        retention: Duration::from_millis(1),
        ..config()
    };
    let (h, w) = open(&cfg, dir.path()).unwrap();
    let a = h.append(vec![reading(B1, 1, 1.0)]).await.unwrap();
    mark(&h, B1, a.first_seq, vec![]).await;
    h.maintain().await.unwrap();
    stop(h, w).await;
    let (h, w) = open(&cfg, dir.path()).unwrap();
    let b = h.append(vec![reading(B1, 2, 1.0)]).await.unwrap();
    assert!(b.first_seq > a.first_seq);
    assert_eq!(
        h.reader()
            .claim(B1, h.reader().cursor(B1).await.unwrap(), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    stop(h, w).await;
}

#[tokio::test]
async fn a_corrupt_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), vec![0x5a; 64 * 1024]).unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    h.append(vec![reading(B1, 1, 1.0)]).await.unwrap();
    stop(h, w).await;
    let aside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gateway.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(dir.path().join(&aside[0])).unwrap()[0], 0x5a);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    stop(h, w).await;
    let c = rusqlite::Connection::open(dir.path().join(FILE_NAME)).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    match open(&config(), dir.path()) {
        Err(e @ StoreError::SchemaTooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("upgrade dakkio-gateway"))
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

#[tokio::test]
async fn data_survives_reopen_with_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    h.append((0..100).map(|i| reading(B1, i, 0.5)).collect())
        .await
        .unwrap();
    let id = h.store_id();
    stop(h, w).await;
    let (h, w) = open(&config(), dir.path()).unwrap();
    assert_eq!(h.store_id(), id);
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.bucket(B1).unwrap().queued, 100);
    stop(h, w).await;
}

#[tokio::test]
async fn counters_and_state_ride_along_with_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    let c1 = h
        .add_counters(vec![("serial:/dev/ttyUSB0:lines_ok".into(), 3)])
        .await
        .unwrap();
    let c2 = h
        .add_counters(vec![("serial:/dev/ttyUSB0:lines_ok".into(), 2)])
        .await
        .unwrap();
    let s = h
        .set_state(vec![("serial:/dev/ttyUSB0:connected".into(), "yes".into())])
        .await
        .unwrap();
    c1.wait().await.unwrap();
    c2.wait().await.unwrap();
    s.wait().await.unwrap();
    let counters = h.reader().counters_blocking("serial:").unwrap();
    assert_eq!(counters["serial:/dev/ttyUSB0:lines_ok"], 5);
    let state = h.reader().state_blocking("serial:").unwrap();
    assert_eq!(state["serial:/dev/ttyUSB0:connected"], "yes");
    stop(h, w).await;
}

#[tokio::test]
async fn a_corrupt_commit_forces_the_full_check_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    for b in 0..5 {
        h.append((0..1000).map(|i| reading(B1, b * 1000 + i, 1.0)).collect())
            .await
            .unwrap();
    }
    stop(h, w).await;
    // Garbage over a page in the middle of the file, where the structural
    // check of a large database does not look.
    let db = dir.path().join(FILE_NAME);
    let mut bytes = std::fs::read(&db).unwrap();
    let pages = bytes.len() / 4096;
    let mid = pages / 2 * 4096;
    bytes[mid..mid + 4096].fill(0x5a);
    std::fs::write(&db, bytes).unwrap();

    // The cheap check of a large database misses it …
    drop(open::open_checked_with_limit(&db, &config(), 0).unwrap());
    assert!(
        db.exists(),
        "the structural check was expected to miss this"
    );
    // … so a commit that meets it leaves the marker, which forces the full
    // check at the next start.
    std::fs::write(check_marker(&db), b"").unwrap();
    let conn = open::open_checked_with_limit(&db, &config(), 0).unwrap();
    drop(conn);
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("gateway.db.corrupt-")
        })
        .count();
    assert_eq!(aside, 1, "the corrupt file was not moved aside");
    assert!(!check_marker(&db).exists());
}

/// Add `sources` × `per_source` delivered readings, older than any
/// retention, straight into the database file of a closed store (months of
/// history built in seconds), with the ledger and cursor to match.
pub(crate) fn add_history(dir: &std::path::Path, sources: i64, per_source: i64) {
    let mut c = rusqlite::Connection::open(dir.join(FILE_NAME)).unwrap();
    let tx = c.transaction().unwrap();
    let bucket: i64 = tx
        .query_row("SELECT id FROM buckets WHERE bucket_id = ?1", [B1], |r| {
            r.get(0)
        })
        .unwrap();
    let next: i64 = tx
        .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap()
        .parse()
        .unwrap();
    let n = sources * per_source;
    {
        let mut src = tx
            .prepare("INSERT INTO sources (bucket, source_id) VALUES (?1, ?2)")
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..sources {
            src.execute(rusqlite::params![bucket, format!("{i:024x}")])
                .unwrap();
            ids.push(tx.last_insert_rowid());
        }
        let mut row = tx
            .prepare(
                "INSERT INTO readings (bucket, source, ts, seq, origin, vals)
                 VALUES (?1, ?2, ?3, ?4, 0, '{\"temperature\":21.5}')",
            )
            .unwrap();
        for k in 0..n {
            let seq = next + k;
            row.execute(rusqlite::params![
                bucket,
                ids[(k % sources) as usize],
                1_000 + k,
                seq
            ])
            .unwrap();
        }
    }
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
        [(next + n).to_string()],
    )
    .unwrap();
    tx.execute(
        "UPDATE buckets SET delivered_seq = ?1 WHERE id = ?2",
        rusqlite::params![next + n - 1, bucket],
    )
    .unwrap();
    for name in ["accepted", "delivered", "kept"] {
        tx.execute(
            "INSERT INTO ledger (bucket, name, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (bucket, name) DO UPDATE SET value = value + excluded.value",
            rusqlite::params![bucket, name, n],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Months of history never hold up a commit: while a retention pass over
/// 100,000 due rows runs, commits keep being answered between its slices
/// (before, the whole pass ran inside one group and every commit behind it
/// waited for all of it), and the pass removes exactly the due rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_answered_between_the_slices_of_a_retention_pass() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        retention: Duration::from_secs(3600),
        // Appends written to the database directly: the pass and the
        // groups take turns on the one connection.
        inbox_readings: 0,
        ..config()
    };
    let (h, w) = open(&cfg, dir.path()).unwrap();
    let first = h.append(vec![reading(B1, now_ms(), 1.0)]).await.unwrap();
    mark(&h, B1, first.first_seq, vec![]).await;
    stop(h, w).await;
    add_history(dir.path(), 200, 500);

    let (h, w) = open(&cfg, dir.path()).unwrap();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let maintainer = h.clone();
    tokio::spawn(async move {
        maintainer.maintain().await.unwrap();
        let _ = done_tx.send(());
    });
    let mut during = 0;
    loop {
        h.append(vec![reading(B1, now_ms(), 2.0)]).await.unwrap();
        if done_rx.try_recv().is_ok() {
            break;
        }
        during += 1;
        assert!(during < 100_000, "the pass never ends");
    }
    assert!(
        during >= 5,
        "only {during} commits were answered while the pass ran"
    );
    let left: i64 = h
        .reader()
        .with(|c| c.query_row("SELECT count(*) FROM readings", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(left, 1 + during as i64 + 1, "exactly the due rows are gone");
    assert_balanced(&h).await;
    stop(h, w).await;
}

#[tokio::test]
async fn sources_beyond_the_cap_are_rejects_from_inputs_and_refused_from_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        max_sources_per_bucket: 3,
        ..config()
    };
    let (h, w) = open(&cfg, dir.path()).unwrap();
    let src = |i: u8| format!("507f1f77bcf86cd7994390{i:02x}");
    let from = |origin: Origin, s: &str, ts: i64| Reading {
        data_source_id: s.into(),
        origin,
        ..reading(B1, ts, 1.0)
    };
    // One MQTT command: three new sources fit, the fourth is kept aside,
    // the readings of admitted sources (also after it) are stored.
    let batch = vec![
        from(Origin::Mqtt, &src(1), 1),
        from(Origin::Mqtt, &src(2), 2),
        from(Origin::Mqtt, &src(3), 3),
        from(Origin::Mqtt, &src(4), 4),
        from(Origin::Mqtt, &src(1), 5),
    ];
    let a = h.submit(batch).await.unwrap().wait().await.unwrap();
    assert_eq!(a.count, 4);
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.rejected_by_reason["too_many_sources"], 1);
    let kept = h.reader().rejects(10).await.unwrap();
    assert_eq!(kept[0].reason, "too_many_sources");
    assert!(kept[0].detail.contains(&src(4)), "{}", kept[0].detail);
    // Existing sources keep flowing; a serial line for a new one is a reject.
    let a = h
        .submit(vec![
            from(Origin::Serial, &src(5), 6),
            from(Origin::Serial, &src(2), 7),
        ])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(a.count, 1);
    // The API: a request naming a new source is refused whole.
    let e = h
        .submit(vec![
            from(Origin::Api, &src(3), 8),
            from(Origin::Api, &src(6), 9),
        ])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::SourceLimit { bucket, limit: 3 } if bucket == B1),
        "{e}"
    );
    assert!(!e.is_transient());
    let queued = h.reader().claim(B1, 0, 100).await.unwrap();
    assert_eq!(queued.len(), 5, "nothing of the refused request is stored");
    assert!(queued.iter().all(|r| r.timestamp_ms != 8));
    let a = h
        .submit(vec![from(Origin::Api, &src(3), 10)])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(a.count, 1);
    // Another bucket has a cap of its own.
    let a = h
        .submit(vec![Reading {
            bucket_id: B2.into(),
            ..from(Origin::Api, &src(9), 11)
        }])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(a.count, 1);
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.rejected_by_reason["too_many_sources"], 2);
    stop(h, w).await;
}

#[test]
fn truncation_keeps_whole_characters() {
    assert_eq!(truncate_str("abc", 5), "abc");
    assert_eq!(truncate_str("abcdef", 3), "abc");
    // `é` is two bytes: a cut inside it backs off to the boundary.
    assert_eq!(truncate_str("aé", 2), "a");
    assert_eq!(truncate_str("", 0), "");
}
