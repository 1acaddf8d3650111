//! The latest reading of each data source of a bucket, for the status
//! page: one backward step on the readings' primary key
//! `(bucket, source, ts, seq)` per source, so the cost is the number of
//! sources, not of readings; readings still in the inbox count too
//! (`query/inbox.rs`).

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};

use super::inbox::mirror::MirrorRow;
use super::query::inbox::with_bucket_rows;
use super::{Reader, StoreError};

/// One data source's newest reading (by its own timestamp, then arrival).
#[derive(Debug, Clone, PartialEq)]
pub struct LatestReading {
    pub data_source_id: String,
    pub timestamp_ms: i64,
    /// A JSON object, as stored.
    pub values_json: String,
}

impl Reader {
    /// The newest reading of every data source the bucket has readings
    /// of (sources whose readings were all pruned are left out), sorted by
    /// data source id.
    pub async fn latest_readings(&self, bucket_id: &str) -> Result<Vec<LatestReading>, StoreError> {
        let bucket_id = bucket_id.to_owned();
        let mirror = self.mirror().clone();
        self.query(move |c| {
            let Some(bucket) = c
                .prepare_cached("SELECT id FROM buckets WHERE bucket_id = ?1")?
                .query_row([&bucket_id], |r| r.get::<_, i64>(0))
                .optional()?
            else {
                return Ok(Vec::new());
            };
            let sources: Vec<(i64, String)> = c
                .prepare_cached(
                    "SELECT id, source_id FROM sources WHERE bucket = ?1 ORDER BY source_id",
                )?
                .query_map([bucket], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            with_bucket_rows(c, &mirror, bucket, newest_in_inbox, |c, in_inbox| {
                let in_inbox = in_inbox.unwrap_or_default();
                let mut newest = c.prepare_cached(
                    "SELECT ts, seq, vals FROM readings WHERE bucket = ?1 AND source = ?2
                     ORDER BY ts DESC, seq DESC LIMIT 1",
                )?;
                let mut out = Vec::with_capacity(sources.len());
                for (key, id) in sources {
                    let stored: Option<(i64, i64, String)> = newest
                        .query_row(params![bucket, key], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                        .optional()?;
                    // The inbox's newest wins when it is newer by
                    // `(ts, seq)`, as the statement's order would have it.
                    let fresh = in_inbox.get(&key);
                    let pick = match (stored, fresh) {
                        (Some(s), Some(f)) if (f.0, f.1) > (s.0, s.1) => Some(f.clone()),
                        (None, Some(f)) => Some(f.clone()),
                        (s, _) => s,
                    };
                    if let Some((ts, _, vals)) = pick {
                        out.push(LatestReading {
                            data_source_id: id,
                            timestamp_ms: ts,
                            values_json: vals,
                        });
                    }
                }
                Ok(out)
            })
        })
        .await
    }
}

/// The newest inbox row of each source: `source → (ts, seq, vals)`.
fn newest_in_inbox(rows: &[MirrorRow]) -> HashMap<i64, (i64, i64, String)> {
    let mut newest: HashMap<i64, &MirrorRow> = HashMap::new();
    for r in rows {
        let e = newest.entry(r.source).or_insert(r);
        if (r.ts, r.seq) > (e.ts, e.seq) {
            *e = r;
        }
    }
    newest
        .into_iter()
        .map(|(k, r)| (k, (r.ts, r.seq, r.vals.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::StoreConfig;
    use crate::store::tests::{reading, B1, B2};

    /// The newest by timestamp wins (not the last to arrive); each source
    /// is reported once; another bucket's readings stay out.
    #[tokio::test]
    async fn each_source_reports_its_newest_reading() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            commit_max_delay: Duration::from_millis(5),
            ..StoreConfig::default()
        };
        let (h, writer) = crate::store::open(&cfg, dir.path()).unwrap();
        let mut other = reading(B1, 1_500, 7.0);
        other.data_source_id = "507f1f77bcf86cd799439099".into();
        let batch = vec![
            reading(B1, 2_000, 2.0),
            reading(B1, 3_000, 3.0),
            reading(B1, 1_000, 1.0), // late arrival, older
            other,
            reading(B2, 9_000, 9.0),
        ];
        h.append(batch).await.unwrap();
        let latest = h.reader().latest_readings(B1).await.unwrap();
        assert_eq!(latest.len(), 2, "{latest:?}");
        assert_eq!(latest[0].data_source_id, crate::store::tests::S1);
        assert_eq!(latest[0].timestamp_ms, 3_000);
        assert!(
            latest[0].values_json.contains("\"temperature\":3"),
            "{latest:?}"
        );
        assert_eq!(latest[1].timestamp_ms, 1_500);
        assert!(h
            .reader()
            .latest_readings("507f1f77bcf86cd7994390ff")
            .await
            .unwrap()
            .is_empty());
        drop(h);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap()
            .unwrap();
    }
}
