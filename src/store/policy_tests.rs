//! The commit policy against a real writer (`policy.rs`): with a deadline
//! of an hour, only the signals can make a group commit, so each test
//! hangs (and its timeout fails it) when its signal is ignored.

use std::time::Duration;

use super::tests::{reading, B1, B2};
use super::*;
use crate::config::StoreConfig;

/// Far beyond any test's timeout: only a signal commits a group.
fn config() -> StoreConfig {
    StoreConfig {
        commit_max_delay: Duration::from_secs(3600),
        ..StoreConfig::default()
    }
}

/// Whatever a signal must achieve, it must not need the deadline.
const SIGNAL: Duration = Duration::from_secs(60);

async fn stop(handle: StoreHandle, writer: WriterThread) {
    drop(handle);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_client_waiting_for_its_answer_is_committed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    let appended = tokio::time::timeout(SIGNAL, h.append(vec![reading(B1, 1, 1.0)]))
        .await
        .expect("append() hurries its commit")
        .unwrap();
    assert_eq!(appended.count, 1);
    stop(h, w).await;
}

#[tokio::test]
async fn light_traffic_waits_and_a_hurry_commits_everything_submitted_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    let a = h.submit(vec![reading(B1, 1, 1.0)]).await.unwrap();
    let b = h.submit(vec![reading(B2, 2, 2.0)]).await.unwrap();
    // Nothing asks for the commit: it waits (for the deadline).
    let mut a = Box::pin(a.wait());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut a)
            .await
            .is_err(),
        "a group of light traffic committed without a signal"
    );
    h.hurry(crate::store::Hurry::Api);
    let (a, b) = tokio::time::timeout(SIGNAL, async { (a.await, b.wait().await) })
        .await
        .expect("a hurry commits the open group");
    assert_eq!(a.unwrap().count + b.unwrap().count, 2);
    stop(h, w).await;
}

#[tokio::test]
async fn a_caught_up_uplinks_batch_is_committed_without_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    h.want_readings(B1, Some(3));
    let mut pending = Vec::new();
    for i in 0..3 {
        pending.push(h.submit(vec![reading(B1, i, i as f64)]).await.unwrap());
    }
    tokio::time::timeout(SIGNAL, async {
        for p in pending {
            p.wait().await.unwrap();
        }
    })
    .await
    .expect("the bucket's batch is in the group: it commits");
    stop(h, w).await;
}

#[tokio::test]
async fn a_large_group_commits_without_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        commit_max_readings: 10,
        ..config()
    };
    let (h, w) = open(&cfg, dir.path()).unwrap();
    let batch: Vec<_> = (0..10).map(|i| reading(B1, i, i as f64)).collect();
    let p = h.submit(batch).await.unwrap();
    tokio::time::timeout(SIGNAL, p.wait())
        .await
        .expect("a group of commit_max_readings commits")
        .unwrap();
    stop(h, w).await;
}

#[tokio::test]
async fn queue_stats_read_the_bytes_written_per_day_the_writer_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    assert_eq!(
        h.reader().stats().await.unwrap().written_bytes_per_day,
        None
    );
    let p = h
        .set_state(vec![(wear::STATE_KEY.into(), "123456".into())])
        .await
        .unwrap();
    h.hurry(crate::store::Hurry::Api);
    p.wait().await.unwrap();
    assert_eq!(
        h.reader().stats().await.unwrap().written_bytes_per_day,
        Some(123_456)
    );
    stop(h, w).await;
}

#[tokio::test]
async fn a_busy_group_commits_without_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = open(&config(), dir.path()).unwrap();
    let batch: Vec<_> = (0..policy::BUSY_GROUP as i64)
        .map(|i| reading(B1, i, i as f64))
        .collect();
    let p = h.submit(batch).await.unwrap();
    tokio::time::timeout(SIGNAL, p.wait())
        .await
        .expect("a busy group commits after the short delay")
        .unwrap();
    stop(h, w).await;
}
