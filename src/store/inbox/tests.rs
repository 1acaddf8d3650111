//! The inbox through the store's handle, on real files: appends are
//! durable in the journal and visible before any move, a move puts them in
//! `readings` once, a crash image replays, a direct command moves first,
//! and a second process beside the owner writes directly above the inbox's
//! seqs.

use std::path::Path;
use std::time::Duration;

use crate::config::StoreConfig;
use crate::store::tests::{assert_balanced, reading, stop, B1, B2};
use crate::store::{open, StoreHandle, FILE_NAME};

fn config(rows: usize) -> StoreConfig {
    StoreConfig {
        commit_max_delay: Duration::from_millis(5),
        inbox_readings: rows,
        ..StoreConfig::default()
    }
}

/// Rows in the `readings` table, read from the file.
fn table_rows(dir: &Path) -> i64 {
    let c = rusqlite::Connection::open(dir.join(FILE_NAME)).unwrap();
    c.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap()
}

async fn append(h: &StoreHandle, bucket: &str, from: i64, n: i64) {
    for i in from..from + n {
        h.append(vec![reading(bucket, 1_000 + i, i as f64)])
            .await
            .unwrap();
    }
}

/// The files a power cut would leave now: the journal first (an older
/// journal beside a newer database is a state a crash can leave, the
/// reverse is not).
fn crash_image(from: &Path, to: &Path) {
    for name in ["gateway.inbox", "gateway.db", "gateway.db-wal"] {
        let file = from.join(name);
        if file.exists() {
            std::fs::copy(file, to.join(name)).unwrap();
        }
    }
}

#[tokio::test]
async fn appends_wait_in_the_inbox_and_are_claimed_counted_and_marked_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(1000), dir.path()).unwrap();
    // The first reading of a new data source makes its key: a transaction.
    append(&h, B1, 0, 50).await;
    let in_table = table_rows(dir.path());
    assert!(in_table < 50, "{in_table} of 50 readings went to the table");
    assert_eq!(
        h.reader().mirror().read().unwrap().rows() as i64,
        50 - in_table
    );
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.bucket(B1).unwrap().accepted, 50);
    assert_eq!(stats.bucket(B1).unwrap().queued, 50);
    let claimed = h.reader().claim(B1, 0, 1000).await.unwrap();
    assert_eq!(claimed.len(), 50);
    assert!(claimed.windows(2).all(|p| p[1].seq > p[0].seq));
    let up_to = claimed[29].seq;
    let m = h
        .mark_delivered(B1, up_to, vec![])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(m.delivered, 30);
    assert_eq!(h.reader().cursor(B1).await.unwrap(), up_to);
    let stats = assert_balanced(&h).await;
    let b = stats.bucket(B1).unwrap();
    assert_eq!((b.delivered, b.queued, b.delivered_seq), (30, 20, up_to));
    let rest = h.reader().claim(B1, up_to, 1000).await.unwrap();
    assert_eq!(rest.len(), 20);
    assert_eq!(rest[0].seq, claimed[30].seq);
    // Nothing more reached the table: marks wait in the inbox too.
    assert_eq!(table_rows(dir.path()), in_table);
    stop(h, w).await;
    // A clean stop moves everything.
    assert_eq!(table_rows(dir.path()), 50);
    let (h, w) = open(&config(1000), dir.path()).unwrap();
    let stats = assert_balanced(&h).await;
    let b = stats.bucket(B1).unwrap();
    assert_eq!((b.accepted, b.delivered, b.queued), (50, 30, 20));
    assert_eq!(h.reader().claim(B1, up_to, 1000).await.unwrap(), rest);
    stop(h, w).await;
}

#[tokio::test]
async fn the_inbox_moves_when_it_holds_its_readings_and_every_reading_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(100), dir.path()).unwrap();
    append(&h, B1, 0, 250).await;
    let in_table = table_rows(dir.path());
    assert!(
        (200..250).contains(&in_table),
        "{in_table} rows in the table"
    );
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.bucket(B1).unwrap().accepted, 250);
    let all = h.reader().claim(B1, 0, 1000).await.unwrap();
    let mut seqs: Vec<i64> = all.iter().map(|r| r.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), 250);
    stop(h, w).await;
    assert_eq!(table_rows(dir.path()), 250);
}

#[tokio::test]
async fn a_crash_image_replays_the_journal_once() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(1000), dir.path()).unwrap();
    append(&h, B1, 0, 40).await;
    let claimed = h.reader().claim(B1, 0, 1000).await.unwrap();
    h.mark_delivered(B1, claimed[9].seq, vec![])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    // What a power cut now leaves: the files as they are (the writer is
    // idle: every append and the mark were answered).
    crash_image(dir.path(), image.path());
    stop(h, w).await;
    assert!(table_rows(image.path()) < 40);
    for round in 0..2 {
        let (h, w) = open(&config(1000), image.path()).unwrap();
        let stats = assert_balanced(&h).await;
        let b = stats.bucket(B1).unwrap();
        assert_eq!(
            (b.accepted, b.delivered, b.queued),
            (40, 10, 30),
            "round {round}"
        );
        let cursor = h.reader().cursor(B1).await.unwrap();
        assert_eq!(cursor, claimed[9].seq, "round {round}");
        let again = h.reader().claim(B1, cursor, 1000).await.unwrap();
        assert!(again == claimed[10..], "round {round}: the rest differs");
        stop(h, w).await;
        assert_eq!(table_rows(image.path()), 40);
    }
}

#[tokio::test]
async fn a_direct_command_moves_the_inbox_first() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(1000), dir.path()).unwrap();
    append(&h, B1, 0, 20).await;
    assert!(table_rows(dir.path()) < 20);
    // A reading of a new bucket needs its key: a transaction.
    append(&h, B2, 100, 1).await;
    assert_eq!(table_rows(dir.path()), 21);
    let b1 = h.reader().claim(B1, 0, 1000).await.unwrap();
    let b2 = h.reader().claim(B2, 0, 1000).await.unwrap();
    assert!(b2[0].seq > b1.last().unwrap().seq);
    assert_balanced(&h).await;
    stop(h, w).await;
}

#[tokio::test]
async fn a_second_process_writes_directly_above_the_inbox_and_claims_stay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(1000), dir.path()).unwrap();
    append(&h, B1, 0, 10).await;
    // Another writer on the same files (a command run beside the daemon).
    let (h2, w2) = open(&config(1000), dir.path()).unwrap();
    append(&h2, B1, 500, 5).await;
    stop(h2, w2).await;
    append(&h, B1, 20, 10).await;
    let claimed = h.reader().claim(B1, 0, 1000).await.unwrap();
    assert_eq!(claimed.len(), 25);
    assert!(claimed.windows(2).all(|p| p[1].seq > p[0].seq));
    // The owner's later readings come after the other process's in seq
    // order only if they were given seqs above them; either way none is
    // skipped by a cursor moved to the batch's last seq.
    let first = &claimed[..12];
    let m = h
        .mark_delivered(B1, first.last().unwrap().seq, vec![])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(m.delivered, 12);
    let rest = h
        .reader()
        .claim(B1, first.last().unwrap().seq, 1000)
        .await
        .unwrap();
    assert_eq!(rest, claimed[12..]);
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.bucket(B1).unwrap().accepted, 25);
    stop(h, w).await;
    assert_eq!(table_rows(dir.path()), 25);
}

#[tokio::test]
async fn a_crash_in_the_middle_of_a_move_in_slices_leaves_nothing_of_it_and_replays_it_once() {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(FILE_NAME);
    let (h, w) = open(&config(100), dir.path()).unwrap();
    append(&h, B1, 0, 1).await;
    // Crash images taken on the writer's thread between two slices of a
    // move (its transaction open), with the appends answered by then.
    let answered = Arc::new(AtomicI64::new(1));
    let images: Arc<Mutex<Vec<(i64, tempfile::TempDir)>>> = Arc::default();
    {
        let (answered, images, from) = (answered.clone(), images.clone(), dir.path().to_owned());
        let mut calls = 0;
        super::drain::hook::set(&db, move || {
            calls += 1;
            if calls % 3 == 1 {
                let image = tempfile::tempdir().unwrap();
                crash_image(&from, image.path());
                let n = answered.load(Ordering::SeqCst);
                images.lock().unwrap().push((n, image));
            }
        });
    }
    // Moves start at 100 readings and run 10 at a time.
    for i in 1..260 {
        append(&h, B1, i, 1).await;
        answered.store(i + 1, Ordering::SeqCst);
    }
    stop(h, w).await;
    super::drain::hook::clear(&db);
    let images = std::mem::take(&mut *images.lock().unwrap());
    assert!(images.len() >= 4, "{} images mid-move", images.len());
    for (n, image) in &images {
        // A move is one transaction: its epoch is not recorded as moved,
        // and none of the journal's rows is in the table (the slices
        // already inserted are not committed), whatever the WAL holds.
        {
            let c = rusqlite::Connection::open(image.path().join(FILE_NAME)).unwrap();
            let found = super::journal::Journal::scan(&image.path().join("gateway.inbox"))
                .unwrap()
                .unwrap();
            assert!(found.epoch > super::snapshot::moved_epoch(&c).unwrap());
            let mut rows = found.entries.iter().filter_map(|e| match e {
                super::journal::Entry::Row(r) => Some(r.seq),
                _ => None,
            });
            assert!(
                !rows.any(|seq| c
                    .query_row("SELECT count(*) FROM readings WHERE seq = ?1", [seq], |r| {
                        r.get::<_, i64>(0)
                    })
                    .unwrap()
                    > 0),
                "image after {n}: rows of an uncommitted move are in the table"
            );
        }
        // Every answered reading comes back once (the one in flight when
        // the image was taken may too).
        let (h, w) = open(&config(100), image.path()).unwrap();
        let stats = assert_balanced(&h).await;
        let accepted = stats.bucket(B1).unwrap().accepted;
        assert!(
            (*n..=n + 1).contains(&accepted),
            "image after {n}: {accepted}"
        );
        let all = h.reader().claim(B1, 0, 10_000).await.unwrap();
        assert_eq!(all.len() as i64, accepted, "image after {n}");
        stop(h, w).await;
        assert_eq!(table_rows(image.path()), accepted);
    }
}

#[tokio::test]
async fn the_inbox_holds_no_more_bytes_than_its_journal_however_well_they_compress() {
    let dir = tempfile::tempdir().unwrap();
    // 1,000 readings: a journal of 1 MiB (its smallest).
    let (h, w) = open(&config(1000), dir.path()).unwrap();
    append(&h, B1, 0, 1).await;
    // 64 KiB of one letter: a record of a few hundred bytes compressed.
    let big = |i: i64| {
        let mut r = reading(B1, 10_000 + i, i as f64);
        r.metadata
            .insert("note".into(), "x".repeat(64 << 10).into());
        r
    };
    let mut most = 0;
    for i in 0..100 {
        h.append(vec![big(i)]).await.unwrap();
        let m = h.reader().mirror().read().unwrap();
        let bytes: i64 = m.buckets.values().map(|b| b.bytes).sum();
        most = most.max(bytes);
    }
    // At most the journal's capacity and one reading more (the group that
    // found room), not the 6.4 MiB appended.
    assert!(
        most <= (1 << 20) + (65 << 10),
        "the inbox held {most} bytes"
    );
    assert!(table_rows(dir.path()) > 0, "no move ran");
    let stats = assert_balanced(&h).await;
    assert_eq!(stats.bucket(B1).unwrap().accepted, 101);
    stop(h, w).await;
    assert_eq!(table_rows(dir.path()), 101);
}
