//! Fair shares on real SQLite files: a flooding bucket loses its own
//! oldest readings (`drop_oldest`) or is refused (`reject`), never the
//! quiet bucket; `queued_bytes` stays exact through every change.

use super::super::tests::{reading, B1, B2};
use super::super::*;
use super::*;
use crate::config::{OnFull, StoreConfig};

fn small(on_full: OnFull) -> StoreConfig {
    StoreConfig {
        max_size: 4 << 20,
        on_full,
        commit_max_delay: std::time::Duration::from_millis(5),
        ..StoreConfig::default()
    }
}

async fn stop(handle: StoreHandle, writer: WriterThread) {
    drop(handle);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
}

fn batch(bucket: &str, from: i64, n: i64) -> Vec<crate::reading::Reading> {
    (from..from + n)
        .map(|i| reading(bucket, i, i as f64))
        .collect()
}

/// `queued_bytes` of each bucket as the ledger holds it, and as a count
/// over the undelivered rows gives it.
async fn queued_bytes(h: &StoreHandle) -> Vec<(String, i64, i64)> {
    h.reader()
        .with(|c| {
            let sql = format!(
                "SELECT b.bucket_id,
                   (SELECT coalesce(sum(value), 0) FROM ledger
                    WHERE bucket = b.id AND name = 'queued_bytes'),
                   (SELECT coalesce(sum({ROW_BYTES_SQL}), 0) FROM readings
                    WHERE bucket = b.id AND seq > b.delivered_seq)
                 FROM buckets b ORDER BY b.id"
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap()
}

async fn assert_exact(h: &StoreHandle) {
    for (bucket, ledger, counted) in queued_bytes(h).await {
        assert_eq!(ledger, counted, "queued_bytes of {bucket}");
    }
}

#[tokio::test]
async fn drop_oldest_takes_room_from_the_flooding_bucket_not_the_quiet_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(OnFull::DropOldest);
    let (h, w) = open(&cfg, dir.path()).unwrap();
    h.set_shares(vec![(B1.into(), None), (B2.into(), None)]);
    h.append(batch(B2, 0, 500)).await.unwrap();
    for b in 0..60 {
        h.append(batch(B1, b * 1000, 1000)).await.unwrap();
    }
    let stats = h.reader().stats().await.unwrap();
    let (b1, b2) = (stats.bucket(B1).unwrap(), stats.bucket(B2).unwrap());
    assert!(b1.dropped > 0, "the store never filled: {b1:?}");
    assert!(b1.ledger_balances() && b2.ledger_balances());
    assert_eq!((b2.queued, b2.dropped), (500, 0), "{b2:?}");
    let budget = cfg.max_size - crate::store::headroom(cfg.max_size);
    assert!(
        stats.used_bytes <= budget,
        "{} > {budget}",
        stats.used_bytes
    );
    assert_exact(&h).await;
    stop(h, w).await;
}

/// Above its share the flooding bucket is the one that loses, and once
/// the other bucket grows past its own share, that one loses in turn: the
/// room goes to whoever uses most for their share.
#[tokio::test]
async fn drop_oldest_takes_from_whoever_uses_most_for_their_share() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&small(OnFull::DropOldest), dir.path()).unwrap();
    // B1 may keep 80 %: B2 borrowing past 20 % is what goes.
    h.set_shares(vec![
        (B1.into(), Some(StoreShare::Percent(80.0))),
        (B2.into(), None),
    ]);
    for b in 0..12 {
        h.append(batch(B1, b * 1000, 1000)).await.unwrap();
    }
    let before = h.reader().stats().await.unwrap().bucket(B1).unwrap().queued;
    for b in 0..40 {
        h.append(batch(B2, b * 1000, 1000)).await.unwrap();
    }
    let stats = h.reader().stats().await.unwrap();
    let (b1, b2) = (stats.bucket(B1).unwrap(), stats.bucket(B2).unwrap());
    assert!(b2.dropped > 0, "{b2:?}");
    assert_eq!(b1.dropped, 0, "B1 holds less than its 80 %: {b1:?}");
    assert_eq!(b1.queued, before);
    assert_exact(&h).await;
    stop(h, w).await;
}

#[tokio::test]
async fn reject_refuses_only_the_bucket_at_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&small(OnFull::Reject), dir.path()).unwrap();
    h.set_shares(vec![
        (B1.into(), Some(StoreShare::Percent(25.0))),
        (B2.into(), None),
    ]);
    h.append(batch(B2, 0, 500)).await.unwrap();
    let mut b1 = 0;
    loop {
        match h.append(batch(B1, b1, 1000)).await {
            Ok(_) => b1 += 1000,
            Err(StoreError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(b1 < 100_000, "B1 was never refused");
    }
    // B2 (75 %) goes on: three times what B1 (25 %) could store, roughly.
    let mut b2 = 500;
    while b2 < 2 * b1 {
        h.append(batch(B2, b2, 1000)).await.unwrap();
        b2 += 1000;
    }
    assert!(matches!(
        h.append(batch(B1, b1, 1)).await,
        Err(StoreError::Full)
    ));
    let stats = h.reader().stats().await.unwrap();
    for b in &stats.buckets {
        assert_eq!(b.dropped, 0);
        assert!(b.ledger_balances());
    }
    assert_eq!(stats.bucket(B2).unwrap().queued, b2);
    // Delivery frees B1's share.
    let queued = h.reader().claim(B1, 0, 100_000).await.unwrap();
    h.mark_delivered(B1, queued.last().unwrap().seq, vec![])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    h.append(batch(B1, b1, 1000)).await.unwrap();
    assert_exact(&h).await;
    stop(h, w).await;
}

/// The counter follows appends, delivery marks (with dead letters), drops
/// and dead-letter retries, and is counted once for a store written before
/// it existed.
#[tokio::test]
async fn queued_bytes_is_exact_and_counted_for_an_older_store() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&small(OnFull::DropOldest), dir.path()).unwrap();
    let mut r = reading(B1, 1, 1.0);
    r.metadata.insert("note".into(), "ünïcode".into());
    h.append(vec![r]).await.unwrap();
    h.append(batch(B1, 2, 999)).await.unwrap();
    h.append(batch(B2, 0, 300)).await.unwrap();
    assert_exact(&h).await;
    let q = h.reader().claim(B1, 0, 10).await.unwrap();
    let dead = vec![DeadLetter {
        seq: q[3].seq,
        status: 400,
        message: "bad".into(),
        details: None,
    }];
    h.mark_delivered(B1, q[9].seq, dead)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_exact(&h).await;
    assert_eq!(h.retry_dead_letters(None).await.unwrap(), 1);
    assert_exact(&h).await;
    for b in 0..40 {
        h.append(batch(B2, 1000 + b * 1000, 1000)).await.unwrap();
    }
    assert!(
        h.reader()
            .stats()
            .await
            .unwrap()
            .bucket(B2)
            .unwrap()
            .dropped
            > 0
    );
    assert_exact(&h).await;
    let expected = queued_bytes(&h).await;
    stop(h, w).await;

    // As a store of an older version: no counter, no marker.
    let db = dir.path().join(FILE_NAME);
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "DELETE FROM ledger WHERE name = 'queued_bytes';
         DELETE FROM meta WHERE key = 'queued_bytes';",
    )
    .unwrap();
    drop(c);
    let (h, w) = open(&small(OnFull::DropOldest), dir.path()).unwrap();
    assert_eq!(queued_bytes(&h).await, expected);
    stop(h, w).await;
}

#[test]
fn shares_split_what_explicit_ones_leave_and_unknown_buckets_get_none() {
    let known = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let f = fractions(&vec![], 1000, &known(&["a", "b", "c", "d"]));
    assert_eq!(f["a"], 0.25);
    let table = vec![
        ("a".to_owned(), Some(StoreShare::Percent(40.0))),
        ("b".to_owned(), Some(StoreShare::Bytes(100))),
        ("c".to_owned(), None),
        ("d".to_owned(), None),
    ];
    let f = fractions(&table, 1000, &known(&["a", "old"]));
    assert_eq!(f["a"], 0.4);
    assert_eq!(f["b"], 0.1);
    assert!((f["c"] - 0.25).abs() < 1e-9 && (f["d"] - 0.25).abs() < 1e-9);
    assert_eq!(f["old"], 0.0);
}

#[test]
fn the_victim_is_the_largest_use_for_its_share() {
    let u = |key, bytes, fraction| Use {
        key,
        cursor: 0,
        bytes,
        fraction,
        exhausted: false,
    };
    let mut uses = vec![u(1, 900, 0.8), u(2, 300, 0.2), u(3, 0, 0.0)];
    assert_eq!(victim(&mut uses).unwrap().key, 2);
    uses.push(u(4, 10, 0.0));
    assert_eq!(victim(&mut uses).unwrap().key, 4, "no share: first to go");
    uses.retain(|u| u.key != 4);
    uses[1].exhausted = true;
    assert_eq!(victim(&mut uses).unwrap().key, 1);
}
