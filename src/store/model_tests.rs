//! Model test of the store: random sequences of appends (alone or as one
//! group of concurrent submits), deliveries with dead letters, size-budget
//! evictions, crashes and clean reopens, run against a real SQLite file and
//! compared after every step with a plain in-memory model of the queue and
//! the ledger.
//!
//! After every step, per bucket: `accepted = delivered + queued +
//! dead_lettered + dropped` (the store's own ledger), every counter equals
//! the model's, and the queued rows (claimed in order) are exactly the
//! model's queue, in seq order. Evictions (`drop_oldest`) are the one thing
//! the model cannot predict in size (it depends on pages): it learns how
//! many rows a bucket lost from the ledger and checks that they were the
//! bucket's oldest queued rows, and that nothing is dropped by a step that
//! adds nothing.
//!
//! A crash is simulated in-process: the WAL and database files are copied
//! as they are while the writer is running, possibly mid-commit (no clean
//! close, no checkpoint; see `copy_files`), and the copy is opened. Every acknowledged commit must be
//! in it. A clean reopen stops the writer normally first.
//!
//! Cases: `PROPTEST_CASES` (default 32 here; each case writes a real file).

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::tests::{reading, B1, B2};
use super::*;
use crate::config::{OnFull, StoreConfig, Synchronous};

const BUCKETS: [&str; 2] = [B1, B2];

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` readings to a bucket and wait for the commit.
    Insert { bucket: usize, n: usize },
    /// Submit several appends at once (one group commit), then wait for all.
    Group { sizes: Vec<(usize, usize)> },
    /// Claim up to `k` readings and mark them delivered, the ones whose bit
    /// is set in `dead` as dead letters; with `fill_between`, a burst that
    /// forces evictions lands between the claim and the mark (a batch in
    /// flight while its rows are dropped).
    Deliver {
        bucket: usize,
        k: usize,
        dead: u64,
        fill_between: bool,
    },
    /// Enough readings to pass the size budget: `drop_oldest` evicts.
    Fill { bucket: usize },
    /// Submit `in_flight` appends without waiting, copy the files as they
    /// are at that moment and continue on the copy: acknowledged readings
    /// are all there, and of the unacknowledged ones a prefix (whole groups,
    /// in submission order) or none.
    Crash { in_flight: Vec<(usize, usize)> },
    /// Stop cleanly and open again.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 1..40usize).prop_map(|(bucket, n)| Op::Insert { bucket, n }),
        2 => proptest::collection::vec((0..2usize, 1..20usize), 2..6)
            .prop_map(|sizes| Op::Group { sizes }),
        6 => (0..2usize, 0..60usize, any::<u64>(), proptest::bool::weighted(0.1)).prop_map(
            |(bucket, k, dead, fill_between)| Op::Deliver { bucket, k, dead, fill_between }
        ),
        1 => (0..2usize).prop_map(|bucket| Op::Fill { bucket }),
        2 => proptest::collection::vec((0..2usize, 1..20usize), 0..4)
            .prop_map(|in_flight| Op::Crash { in_flight }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Ledger {
    accepted: i64,
    delivered: i64,
    dead_lettered: i64,
    dropped: i64,
}

#[derive(Debug, Default)]
struct Model {
    queue: [VecDeque<i64>; 2],
    ledger: [Ledger; 2],
    /// The highest seq handed out: seqs are never reused.
    max_seq: i64,
}

fn config() -> StoreConfig {
    StoreConfig {
        // The smallest store allowed (`MIN_MAX_SIZE`), so a few thousand readings reach the
        // budget (2 MiB of pages after the headroom).
        max_size: 4 << 20,
        on_full: OnFull::DropOldest,
        // A crash here is a process crash (files as the OS has them), for
        // which NORMAL is as safe as FULL; it saves the fsyncs.
        synchronous: Synchronous::Normal,
        commit_max_delay: Duration::from_millis(1),
        ..StoreConfig::default()
    }
}

struct Store {
    dir: tempfile::TempDir,
    handle: StoreHandle,
    writer: WriterThread,
}

impl Store {
    fn open_in(dir: tempfile::TempDir) -> Store {
        let (handle, writer) = open(&config(), dir.path()).expect("open");
        Store {
            dir,
            handle,
            writer,
        }
    }

    async fn stop(self) -> tempfile::TempDir {
        let Store {
            dir,
            handle,
            writer,
        } = self;
        drop(handle);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap()
            .expect("clean stop");
        dir
    }
}

/// The files as a crash would leave them, while the writer keeps going.
/// Two copies are not one instant: between them a checkpoint could write
/// pages into the database and restart the WAL, giving a pair no crash can
/// produce. An open read transaction keeps the WAL from being restarted,
/// and checkpoints from copying frames newer than its snapshot; so copying
/// the WAL first, then the database, gives the database plus a WAL that
/// holds every page the database copy may have gained — a state a crash
/// right after the WAL copy would leave.
fn copy_files(from: &Path, to: &Path) {
    // The inbox's journal first: an older journal beside a newer database
    // is a state a crash can leave (the journal is reset only after the
    // move committed), a newer one beside an older database is not.
    let journal = from.join(crate::store::inbox::snapshot::JOURNAL_NAME);
    if journal.exists() {
        std::fs::copy(
            &journal,
            to.join(crate::store::inbox::snapshot::JOURNAL_NAME),
        )
        .unwrap();
    }
    let db = from.join(FILE_NAME);
    let snapshot =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    snapshot.execute_batch("BEGIN").unwrap();
    let _: i64 = snapshot
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    for suffix in ["-wal", ""] {
        let src = from.join(format!("{FILE_NAME}{suffix}"));
        if src.exists() {
            std::fs::copy(&src, to.join(format!("{FILE_NAME}{suffix}"))).unwrap();
        }
    }
    snapshot.execute_batch("COMMIT").unwrap();
}

fn batch(bucket: usize, n: usize, big: bool) -> Vec<Reading> {
    (0..n)
        .map(|i| {
            let mut r = reading(BUCKETS[bucket], 1_700_000_000_000 + i as i64, i as f64);
            if big {
                r.values
                    .insert("note".into(), crate::reading::Value::Text("x".repeat(300)));
            }
            r
        })
        .collect()
}

fn record_append(model: &mut Model, bucket: usize, a: &Appended) -> Result<(), TestCaseError> {
    prop_assert!(
        a.first_seq > model.max_seq,
        "seq {} reused (max so far {})",
        a.first_seq,
        model.max_seq
    );
    for i in 0..a.count as i64 {
        model.queue[bucket].push_back(a.first_seq + i);
    }
    model.ledger[bucket].accepted += a.count as i64;
    model.max_seq = a.first_seq + a.count as i64 - 1;
    Ok(())
}

async fn fill(store: &Store, model: &mut Model, bucket: usize) -> Result<(), TestCaseError> {
    for _ in 0..3 {
        let a = store
            .handle
            .append(batch(bucket, 1000, true))
            .await
            .unwrap();
        record_append(model, bucket, &a)?;
    }
    Ok(())
}

/// What the store says, per bucket: (ledger, cursor, queued seqs in order).
async fn observe(h: &StoreHandle) -> Vec<(Ledger, i64, Vec<i64>)> {
    let stats = h.reader().stats().await.unwrap();
    let mut out = Vec::new();
    for b in BUCKETS {
        let cursor = h.reader().cursor(b).await.unwrap();
        let queued = h.reader().claim(b, cursor, usize::MAX >> 1).await.unwrap();
        let ledger = stats.bucket(b).map_or_else(Ledger::default, |s| {
            assert!(s.ledger_balances(), "ledger does not balance: {s:?}");
            assert_eq!(s.queued as usize, queued.len(), "queued count vs rows");
            Ledger {
                accepted: s.accepted,
                delivered: s.delivered,
                dead_lettered: s.dead_lettered,
                dropped: s.dropped,
            }
        });
        out.push((ledger, cursor, queued.iter().map(|q| q.seq).collect()));
    }
    out
}

/// Compare store and model; drops are learnt (`may_drop`: the step added
/// readings, so the budget may have evicted some).
async fn check(h: &StoreHandle, model: &mut Model, may_drop: bool) -> Result<(), TestCaseError> {
    crate::store::tests::assert_kept(h).await;
    for (i, (ledger, _cursor, queued)) in observe(h).await.into_iter().enumerate() {
        let lost = ledger.dropped - model.ledger[i].dropped;
        prop_assert!(lost >= 0, "dropped went down");
        prop_assert!(
            may_drop || lost == 0,
            "{lost} dropped by a step that added nothing"
        );
        // Eviction takes the oldest queued rows of the bucket.
        let evicted: Vec<i64> = model.queue[i].drain(..lost as usize).collect();
        prop_assert_eq!(evicted.len() as i64, lost, "more dropped than queued");
        model.ledger[i].dropped = ledger.dropped;
        prop_assert_eq!(&ledger, &model.ledger[i], "ledger of bucket {}", i);
        let want: Vec<i64> = model.queue[i].iter().copied().collect();
        prop_assert_eq!(queued, want, "queued rows of bucket {}", i);
    }
    Ok(())
}

async fn run_case(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut store = Store::open_in(tempfile::tempdir().unwrap());
    let mut model = Model::default();
    for op in ops {
        let mut may_drop = false;
        match op {
            Op::Insert { bucket, n } => {
                let a = store.handle.append(batch(bucket, n, false)).await.unwrap();
                record_append(&mut model, bucket, &a)?;
                may_drop = true;
            }
            Op::Group { sizes } => {
                let mut pending = Vec::new();
                for (bucket, n) in &sizes {
                    pending.push(
                        store
                            .handle
                            .submit(batch(*bucket, *n, false))
                            .await
                            .unwrap(),
                    );
                }
                for ((bucket, _), p) in sizes.iter().zip(pending) {
                    let a = p.wait().await.unwrap();
                    record_append(&mut model, *bucket, &a)?;
                }
                may_drop = true;
            }
            Op::Deliver {
                bucket,
                k,
                dead,
                fill_between,
            } => {
                let b = BUCKETS[bucket];
                let cursor = store.handle.reader().cursor(b).await.unwrap();
                let claimed = store.handle.reader().claim(b, cursor, k).await.unwrap();
                let seqs: Vec<i64> = claimed.iter().map(|q| q.seq).collect();
                let want: Vec<i64> = model.queue[bucket].iter().take(k).copied().collect();
                prop_assert_eq!(&seqs, &want, "claim order");
                if fill_between {
                    fill(&store, &mut model, bucket).await?;
                    check(&store.handle, &mut model, true).await?;
                    may_drop = true;
                }
                let Some(&last) = seqs.last() else {
                    continue;
                };
                let dead: Vec<DeadLetter> = seqs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| dead >> (i % 64) & 1 == 1)
                    .map(|(_, &seq)| DeadLetter {
                        seq,
                        status: 400,
                        message: "Invalid request parameters".into(),
                        details: None,
                    })
                    .collect();
                let dead_seqs: Vec<i64> = dead.iter().map(|d| d.seq).collect();
                let outcome = store
                    .handle
                    .mark_delivered(b, last, dead)
                    .await
                    .unwrap()
                    .wait()
                    .await
                    .unwrap();
                // Rows dropped while in flight are counted once, as dropped.
                let mut expect = MarkOutcome::default();
                while model.queue[bucket].front().is_some_and(|&s| s <= last) {
                    let s = model.queue[bucket].pop_front().unwrap();
                    if dead_seqs.contains(&s) {
                        expect.dead_lettered += 1;
                    } else {
                        expect.delivered += 1;
                    }
                }
                prop_assert_eq!(outcome, expect, "mark outcome");
                model.ledger[bucket].delivered += expect.delivered as i64;
                model.ledger[bucket].dead_lettered += expect.dead_lettered as i64;
                // Kept dead letters plus those evicted to make room.
                let dl = store.handle.reader().dead_letters(100_000).await.unwrap();
                let evicted: i64 = store
                    .handle
                    .reader()
                    .stats()
                    .await
                    .unwrap()
                    .buckets
                    .iter()
                    .map(|b| b.dead_letters_evicted)
                    .sum();
                prop_assert_eq!(
                    dl.len() as i64 + evicted,
                    model.ledger.iter().map(|l| l.dead_lettered).sum::<i64>()
                );
            }
            Op::Fill { bucket } => {
                fill(&store, &mut model, bucket).await?;
                may_drop = true;
            }
            Op::Crash { in_flight } => {
                let mut pending = Vec::new();
                for (bucket, n) in &in_flight {
                    pending.push(
                        store
                            .handle
                            .submit(batch(*bucket, *n, false))
                            .await
                            .unwrap(),
                    );
                }
                let copy = tempfile::tempdir().unwrap();
                copy_files(store.dir.path(), copy.path());
                let old = std::mem::replace(&mut store, Store::open_in(copy));
                for p in pending {
                    p.wait().await.unwrap(); // in the old store, which is discarded
                }
                old.stop().await;
                // Which prefix of the unacknowledged appends survived: the
                // accepted counters say how many readings; they must be whole
                // appends, in order, with the next seqs.
                let seen: Vec<i64> = observe(&store.handle)
                    .await
                    .iter()
                    .map(|o| o.0.accepted)
                    .collect();
                let mut extra: Vec<i64> =
                    (0..2).map(|i| seen[i] - model.ledger[i].accepted).collect();
                // The survivors' seqs continue the old process's: from its
                // next seq on, contiguous. A process that started after a
                // crash starts above the inbox's reserved range (seqs are
                // never reused, not necessarily contiguous), so the first
                // survivor's seq is read from the store.
                let mut next = model.max_seq + 1;
                let mut firsts = Vec::new();
                for b in BUCKETS {
                    let r = store
                        .handle
                        .reader()
                        .claim(b, model.max_seq, 1)
                        .await
                        .unwrap();
                    firsts.extend(r.first().map(|r| r.seq));
                }
                if let Some(first) = firsts.into_iter().min() {
                    next = first;
                }
                for (bucket, n) in &in_flight {
                    if extra[*bucket] < *n as i64 {
                        break;
                    }
                    extra[*bucket] -= *n as i64;
                    let a = Appended {
                        first_seq: next,
                        count: *n,
                        store_id: 0,
                    };
                    next += *n as i64;
                    record_append(&mut model, *bucket, &a)?;
                }
                prop_assert_eq!(extra, vec![0, 0], "a partial append survived the crash");
                may_drop = !in_flight.is_empty();
            }
            Op::Reopen => {
                let dir = store.stop().await;
                store = Store::open_in(dir);
            }
        }
        check(&store.handle, &mut model, may_drop).await?;
    }
    // The queue is delivered in seq order to the end.
    for (i, b) in BUCKETS.iter().enumerate() {
        let cursor = store.handle.reader().cursor(b).await.unwrap();
        let rest = store
            .handle
            .reader()
            .claim(b, cursor, usize::MAX >> 1)
            .await
            .unwrap();
        prop_assert!(rest.windows(2).all(|w| w[0].seq < w[1].seq));
        prop_assert_eq!(rest.len(), model.queue[i].len());
    }
    store.stop().await;
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_store_matches_its_model(ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_case(ops))?;
    }
}
