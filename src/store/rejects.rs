//! Kept rejects after the fact: select them (by id, reason, origin), purge
//! them, and replay them — move the ones that decode under the current
//! configuration into the queue.
//!
//! Ledger: a reject is counted once under `rejected` and
//! `rejected:<reason>` (bucket 0) when it is kept. A **replay** takes it
//! out of both and adds `rejects_replayed`, in the same transaction that
//! deletes its row and appends its readings (counted `accepted` like any
//! other), so a replayed input is counted once, as stored; a reject that
//! is gone by then (purged, evicted for room, replayed by someone else) is
//! left alone and its readings are not stored. A **purge** deletes rows
//! only: what was rejected stays counted (like `dead-letters purge`).
//!
//! Who decodes: the caller (the CLI runs the current configuration's
//! decoders); the store only moves rows, so a replay and the daemon can
//! write the same database: every write transaction begins IMMEDIATE and
//! the writer reloads `next_seq` inside it (see `writer.rs`).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::apply::{bump, TxCtx};
use super::{Reader, RejectRow, StoreError};
use crate::reading::Reading;

/// Which kept rejects a command applies to; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectFilter {
    /// These ids only.
    pub ids: Option<Vec<i64>>,
    /// This reason only (`invalid_json`).
    pub reason: Option<String>,
    /// Origins starting with this (`mqtt:`, `serial:/dev/ttyUSB0`).
    pub origin: Option<String>,
}

impl RejectFilter {
    /// Every kept reject.
    pub fn all() -> RejectFilter {
        RejectFilter::default()
    }

    fn is_everything(&self) -> bool {
        *self == RejectFilter::default()
    }

    /// The matching ids, oldest first.
    fn ids(&self, c: &Connection) -> Result<Vec<i64>, rusqlite::Error> {
        let mut st = c.prepare_cached(
            "SELECT id FROM rejects
             WHERE (?1 IS NULL OR reason = ?1)
               AND (?2 IS NULL OR substr(origin, 1, length(?2)) = ?2)
             ORDER BY id",
        )?;
        let found: Vec<i64> = st
            .query_map(params![self.reason, self.origin], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(match &self.ids {
            None => found,
            Some(ids) => found.into_iter().filter(|id| ids.contains(id)).collect(),
        })
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Rejects moved into the queue.
    pub ids: Vec<i64>,
    /// Readings stored for them.
    pub readings: usize,
}

fn row(r: &rusqlite::Row<'_>) -> Result<RejectRow, rusqlite::Error> {
    Ok(RejectRow {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        origin: r.get(2)?,
        reason: r.get(3)?,
        detail: r.get(4)?,
        raw: r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
    })
}

impl Reader {
    /// The kept rejects matching `filter`, newest first, at most `limit`.
    pub fn rejects_matching_blocking(
        &self,
        filter: &RejectFilter,
        limit: usize,
    ) -> Result<Vec<RejectRow>, StoreError> {
        let filter = filter.clone();
        self.with_blocking(move |c| {
            let mut ids = filter.ids(c)?;
            ids.reverse();
            ids.truncate(limit);
            let mut st = c.prepare_cached(
                "SELECT id, at, origin, reason, detail, raw FROM rejects WHERE id = ?1",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(r) = st.query_row([id], row).optional()? {
                    out.push(r);
                }
            }
            Ok(out)
        })
    }
}

/// Delete the matching rejects; their counts stay.
pub(super) fn purge(tx: &Transaction, filter: &RejectFilter) -> Result<usize, rusqlite::Error> {
    if filter.is_everything() {
        return tx.execute("DELETE FROM rejects", []);
    }
    let mut n = 0;
    let mut st = tx.prepare_cached("DELETE FROM rejects WHERE id = ?1")?;
    for id in filter.ids(tx)? {
        n += st.execute([id])?;
    }
    Ok(n)
}

impl TxCtx<'_> {
    /// Move each reject that still exists into the queue as its readings
    /// (see the module doc for the ledger).
    pub(super) fn replay_rejects(
        &mut self,
        tx: &Transaction,
        items: &[(i64, Vec<Reading>)],
        accepted: &mut HashMap<i64, i64>,
    ) -> Result<Result<Replayed, StoreError>, rusqlite::Error> {
        let mut out = Replayed::default();
        for (id, readings) in items {
            let reason: Option<String> = tx
                .prepare_cached("SELECT reason FROM rejects WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?;
            let Some(reason) = reason else {
                continue;
            };
            // Readings from MQTT or serial are never refused by the source
            // cap (an over-cap one becomes a reject again), so nothing of
            // this transaction is left half done.
            if let Err(e) = self.append(tx, readings, accepted)? {
                return Ok(Err(e));
            }
            tx.prepare_cached("DELETE FROM rejects WHERE id = ?1")?
                .execute([id])?;
            bump(tx, 0, "rejected", -1)?;
            bump(tx, 0, &format!("rejected:{reason}"), -1)?;
            bump(tx, 0, "rejects_replayed", 1)?;
            out.ids.push(*id);
            out.readings += readings.len();
        }
        Ok(Ok(out))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{open, Reject, StoreHandle};
    use super::*;
    use crate::config::StoreConfig;
    use crate::reading::{Origin, Value};

    const B: &str = "507f1f77bcf86cd799439011";
    const S: &str = "507f1f77bcf86cd799439012";

    fn reading(t: f64) -> Reading {
        Reading {
            bucket_id: B.into(),
            data_source_id: S.into(),
            timestamp_ms: 1_700_000_000_000,
            values: [("t".into(), Value::Number(t))].into(),
            metadata: Default::default(),
            origin: Origin::Mqtt,
            receive_time: false,
        }
    }

    async fn keep(h: &StoreHandle, origin: &str, reason: &str) {
        h.submit_reject(Reject {
            origin: origin.into(),
            reason: reason.into(),
            detail: "bad".into(),
            raw: b"x".to_vec(),
        })
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    }

    /// Replay moves a reject out of the counts and into the queue once;
    /// a reject already gone stores nothing; purge keeps the counts.
    #[tokio::test]
    async fn replay_moves_the_count_purge_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            commit_max_delay: Duration::from_millis(5),
            ..StoreConfig::default()
        };
        let (h, w) = open(&cfg, dir.path()).unwrap();
        keep(&h, "mqtt:a/1", "no_route").await;
        keep(&h, "mqtt:a/2", "no_route").await;
        keep(&h, "serial:/dev/ttyUSB0", "invalid_kv").await;
        let r = h.reader();
        let all = r
            .rejects_matching_blocking(&RejectFilter::all(), 10)
            .unwrap();
        let ids: Vec<i64> = all.iter().rev().map(|r| r.id).collect();
        let by_origin = RejectFilter {
            origin: Some("mqtt:".into()),
            ..RejectFilter::default()
        };
        assert_eq!(
            r.rejects_matching_blocking(&by_origin, 10).unwrap().len(),
            2
        );
        let by_reason = RejectFilter {
            reason: Some("invalid_kv".into()),
            ids: Some(vec![ids[2], 999]),
            ..RejectFilter::default()
        };
        assert_eq!(
            r.rejects_matching_blocking(&by_reason, 10).unwrap()[0].id,
            ids[2]
        );

        let done = h
            .replay_rejects(vec![
                (ids[0], vec![reading(1.0), reading(2.0)]),
                (999, vec![reading(3.0)]),
            ])
            .await
            .unwrap();
        assert_eq!(
            done,
            Replayed {
                ids: vec![ids[0]],
                readings: 2
            }
        );
        // Again: it is gone, nothing is stored twice.
        let again = h
            .replay_rejects(vec![(ids[0], vec![reading(1.0)])])
            .await
            .unwrap();
        assert_eq!(again, Replayed::default());
        let stats = r.stats().await.unwrap();
        assert_eq!(stats.bucket(B).unwrap().accepted, 2);
        assert_eq!(stats.bucket(B).unwrap().queued, 2);
        assert_eq!(stats.rejected_by_reason["no_route"], 1);
        assert_eq!(stats.rejects_replayed, 1);
        assert_eq!(stats.rejects_kept, 2);

        assert_eq!(h.purge_rejects(by_origin).await.unwrap(), 1);
        assert_eq!(h.purge_rejects(RejectFilter::all()).await.unwrap(), 1);
        let stats = r.stats().await.unwrap();
        assert_eq!(stats.rejects_kept, 0);
        assert_eq!(stats.rejected_by_reason["no_route"], 1);
        assert_eq!(stats.rejected_by_reason["invalid_kv"], 1);
        drop(h);
        tokio::task::spawn_blocking(move || w.join())
            .await
            .unwrap()
            .unwrap();
    }
}
