//! Read-only queries for the local API: raw pages, time-bucketed
//! aggregations and the small summaries behind buckets, sources and
//! analytics — over the `readings` table, which holds the queue and the
//! delivered history kept for `store.retention`.
//!
//! Every query resolves the bucket and its data sources to their small
//! integer keys first and then reads with `source IN (…)` and a `ts` range,
//! so that SQLite walks the `readings_series (bucket, source, ts)` index.
//! Reads stay short: long aggregations are cut into time chunks, each its
//! own statement (its own read snapshot), so a WAL checkpoint is never held
//! back for the length of a whole scan.
//!
//! A query can be stopped from the async side ([`QueryStop`]): the local API
//! stops it when its client goes away or its time bound passes, and the
//! blocking work ends at once (SQLite's interrupt, checked between chunks
//! too) instead of running on and holding read threads the uplink needs.
//!
//! All of these run on the local API's query threads (`query_pool.rs`):
//! as many as `api.max_parallel_queries`, at nice 19, so that aggregations
//! get only the CPU the uplink and the store writer leave over.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::inbox::mirror::SharedMirror;
use super::reader::consistent;
use super::{Reader, StoreError};
use crate::reading::{civil_from_days, days_from_civil};

pub(super) mod inbox;
#[cfg(test)]
mod inbox_tests;

use inbox::Covers;

/// Stops a query's blocking work from another thread: [`QueryStop::stop`]
/// interrupts the statements running on the connections the query uses
/// and makes it end with `SQLITE_INTERRUPT` before its next statement. A
/// connection is attached only while the query runs on it, so a stop never
/// reaches a pooled connection that serves someone else afterwards.
#[derive(Clone, Default)]
pub struct QueryStop(Arc<StopInner>);

#[derive(Default)]
struct StopInner {
    stopped: AtomicBool,
    next: AtomicU64,
    running: Mutex<Vec<(u64, rusqlite::InterruptHandle)>>,
}

impl QueryStop {
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        for (_, h) in self.0.running.lock().expect("query stop").iter() {
            h.interrupt();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), rusqlite::Error> {
        if self.is_stopped() {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
                Some("the query was stopped".into()),
            ))
        } else {
            Ok(())
        }
    }

    /// Run `f` on `c` with `c` attached (interruptible by [`QueryStop::stop`]).
    fn run<R>(
        &self,
        c: &Connection,
        f: impl FnOnce(&Connection) -> Result<R, rusqlite::Error>,
    ) -> Result<R, rusqlite::Error> {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        self.0
            .running
            .lock()
            .expect("query stop")
            .push((id, c.get_interrupt_handle()));
        let r = self.check().and_then(|()| f(c));
        self.0
            .running
            .lock()
            .expect("query stop")
            .retain(|(i, _)| *i != id);
        r
    }
}

/// Time chunk of one aggregation statement.
const CHUNK_MS: i64 = 86_400_000;

/// Which readings a query covers. Times are Unix ms, start inclusive, end
/// exclusive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesFilter {
    pub bucket_id: String,
    /// `None`: every data source of the bucket.
    pub sources: Option<Vec<String>>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

/// One stored reading, values and metadata as stored JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRow {
    pub seq: i64,
    pub data_source_id: String,
    pub timestamp_ms: i64,
    pub values_json: String,
    pub metadata_json: Option<String>,
}

impl PointRow {
    /// Bytes of an answer item for this row: its JSON plus the fields
    /// around it (ids, timestamp, names).
    pub fn json_len(&self) -> usize {
        self.values_json.len() + self.metadata_json.as_ref().map_or(0, String::len) + 160
    }
}

/// Group boundaries of an aggregation (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    /// Fixed length in ms (minute, hour, day, or a downsampling step).
    Fixed(i64),
    /// ISO weeks, starting Monday 00:00 UTC.
    Week,
    /// Calendar months, starting on the 1st 00:00 UTC.
    Month,
}

impl Interval {
    pub const MINUTE: Interval = Interval::Fixed(60_000);
    pub const HOUR: Interval = Interval::Fixed(3_600_000);
    pub const DAY: Interval = Interval::Fixed(86_400_000);

    /// The start of the group holding `ts`.
    pub fn start(self, ts: i64) -> i64 {
        match self {
            Interval::Fixed(ms) => ts.div_euclid(ms) * ms,
            Interval::Week => {
                let days = ts.div_euclid(86_400_000);
                // 1970-01-01 was a Thursday: Monday-based weekday.
                let weekday = (days + 3).rem_euclid(7);
                (days - weekday) * 86_400_000
            }
            Interval::Month => {
                let (y, m, _) = civil_from_days(ts.div_euclid(86_400_000));
                days_from_civil(y, m, 1) * 86_400_000
            }
        }
    }
}

/// Running count, sum, min and max of one numeric field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Acc {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Acc {
    fn new(v: f64) -> Acc {
        Acc {
            count: 1,
            sum: v,
            min: v,
            max: v,
        }
    }

    fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Acc) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// One group of an aggregation: a data source over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct AggGroup {
    pub start_ms: i64,
    pub data_source_id: String,
    /// Readings in the group.
    pub count: u64,
    /// Numeric fields only; a field absent from some readings counts only
    /// the readings that have it.
    pub fields: Vec<(String, Acc)>,
}

/// What the gateway knows about one data source of a bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSummary {
    pub data_source_id: String,
    pub last_ms: Option<i64>,
    /// Field → `number` | `string` | `boolean`, from the latest readings.
    pub fields: BTreeMap<String, &'static str>,
    /// When the gateway first knew it (Unix ms; `None` only in a database
    /// not migrated through version 2).
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
    /// What the local API was told when it created the source (a JSON
    /// object: name, type, description, schema, downsampling).
    pub profile: Option<String>,
}

/// Readings of the last sample used to describe a source's fields.
const FIELD_SAMPLE: i64 = 50;

impl Reader {
    /// How many readings match, and the page `offset..offset+limit` of them
    /// ordered by timestamp (then arrival).
    pub async fn query_points(
        &self,
        filter: SeriesFilter,
        limit: usize,
        offset: usize,
    ) -> Result<(i64, Vec<PointRow>), StoreError> {
        self.query_points_until(filter, limit, offset, usize::MAX, QueryStop::default())
            .await
    }

    /// [`Reader::query_points`] that `stop` can end early, and that stops
    /// reading rows once they hold `max_bytes` of JSON (values and
    /// metadata; the first row is always read): a page of large readings is
    /// cut short instead of being loaded whole.
    pub async fn query_points_until(
        &self,
        filter: SeriesFilter,
        limit: usize,
        offset: usize,
        max_bytes: usize,
        stop: QueryStop,
    ) -> Result<(i64, Vec<PointRow>), StoreError> {
        let mirror = self.mirror().clone();
        self.query(move |c| {
            stop.run(c, |c| {
                let Some(scope) = Scope::resolve(c, &filter)? else {
                    return Ok((0, Vec::new()));
                };
                let covers = Covers::of(&scope);
                inbox::with_bucket_rows(
                    c,
                    &mirror,
                    scope.bucket,
                    |rows| inbox::sorted(rows, &covers),
                    |c, copied| {
                        let copied = copied.unwrap_or_default();
                        let total = scope.count(c)? + copied.len() as i64;
                        let sql = format!(
                            "SELECT r.seq, r.source, r.ts, r.vals, r.meta FROM readings r
                             WHERE {} ORDER BY r.ts, r.seq LIMIT ?4 OFFSET ?5",
                            scope.where_clause()
                        );
                        let mut st = c.prepare_cached(&sql)?;
                        let names = scope.names();
                        let (sql_limit, sql_offset) = inbox::window(&copied, limit, offset);
                        let mut rows = st.query(params![
                            scope.bucket,
                            scope.start,
                            scope.end,
                            sql_limit,
                            sql_offset
                        ])?;
                        let page = inbox::page(
                            &copied,
                            limit,
                            offset,
                            max_bytes,
                            &mut rows,
                            |r| Ok((r.get(2)?, r.get(0)?)),
                            |r| {
                                let source: i64 = r.get(1)?;
                                Ok(PointRow {
                                    seq: r.get(0)?,
                                    data_source_id: names
                                        .get(&source)
                                        .copied()
                                        .unwrap_or("")
                                        .to_owned(),
                                    timestamp_ms: r.get(2)?,
                                    values_json: r.get(3)?,
                                    metadata_json: r.get(4)?,
                                })
                            },
                        )?;
                        Ok((total, page))
                    },
                )
            })
        })
        .await
    }

    /// How many readings match, and the first and last timestamps.
    pub async fn query_extent(
        &self,
        filter: SeriesFilter,
    ) -> Result<(i64, Option<(i64, i64)>), StoreError> {
        self.query_extent_until(filter, QueryStop::default()).await
    }

    /// [`Reader::query_extent`] that `stop` can end early.
    pub async fn query_extent_until(
        &self,
        filter: SeriesFilter,
        stop: QueryStop,
    ) -> Result<(i64, Option<(i64, i64)>), StoreError> {
        let mirror = self.mirror().clone();
        self.query(move |c| {
            stop.run(c, |c| {
                let Some(scope) = Scope::resolve(c, &filter)? else {
                    return Ok((0, None));
                };
                let covers = Covers::of(&scope);
                inbox::with_bucket_rows(
                    c,
                    &mirror,
                    scope.bucket,
                    |rows| inbox::extent(rows, &covers),
                    |c, copied| {
                        let (n, in_inbox) = copied.unwrap_or_default();
                        let stored = scope.count(c)?;
                        let span = if stored == 0 {
                            None
                        } else {
                            scope.extent(c, scope.start, scope.end)?
                        };
                        Ok((stored + n, inbox::union(span, in_inbox)))
                    },
                )
            })
        })
        .await
    }

    /// True when every data source the filter covers was created through
    /// the local API with `downsampling: false` (dakkio: such a source's
    /// queries are never averaged on their own).
    pub async fn downsampling_off(&self, filter: SeriesFilter) -> Result<bool, StoreError> {
        self.query(move |c| {
            let Some(scope) = Scope::resolve(c, &filter)? else {
                return Ok(false);
            };
            let mut st = c.prepare_cached(
                "SELECT coalesce(json_extract(profile, '$.downsampling') = 0, 0)
                 FROM sources WHERE id = ?1",
            )?;
            for (key, _) in &scope.sources {
                if !st.query_row([key], |r| r.get::<_, bool>(0))? {
                    return Ok(false);
                }
            }
            Ok(!scope.sources.is_empty())
        })
        .await
    }

    /// How many of the filter's data sources have a reading in its time
    /// range (one index seek per source).
    pub async fn sources_in_range_until(
        &self,
        filter: SeriesFilter,
        stop: QueryStop,
    ) -> Result<usize, StoreError> {
        let mirror = self.mirror().clone();
        self.query(move |c| {
            stop.run(c, |c| {
                let Some(scope) = Scope::resolve(c, &filter)? else {
                    return Ok(0);
                };
                let covers = Covers::of(&scope);
                inbox::with_bucket_rows(
                    c,
                    &mirror,
                    scope.bucket,
                    |rows| {
                        rows.iter()
                            .filter(|r| covers.has(r))
                            .map(|r| r.source)
                            .collect::<HashSet<i64>>()
                    },
                    |c, in_inbox| {
                        let in_inbox = in_inbox.unwrap_or_default();
                        let mut st = c.prepare_cached(
                            "SELECT EXISTS (SELECT 1 FROM readings
                             WHERE bucket = ?1 AND source = ?2 AND ts >= ?3 AND ts < ?4)",
                        )?;
                        let mut n = 0;
                        for (key, _) in &scope.sources {
                            if in_inbox.contains(key)
                                || st.query_row(
                                    params![scope.bucket, key, scope.start, scope.end],
                                    |r| r.get::<_, bool>(0),
                                )?
                            {
                                n += 1;
                            }
                        }
                        Ok(n)
                    },
                )
            })
        })
        .await
    }

    /// Count, sum, min and max of every numeric field per data source and
    /// interval, ordered by group start then data source id.
    pub async fn aggregate(
        &self,
        filter: SeriesFilter,
        interval: Interval,
    ) -> Result<Vec<AggGroup>, StoreError> {
        self.aggregate_until(filter, interval, QueryStop::default())
            .await
    }

    /// [`Reader::aggregate`] that `stop` can end early.
    pub async fn aggregate_until(
        &self,
        filter: SeriesFilter,
        interval: Interval,
        stop: QueryStop,
    ) -> Result<Vec<AggGroup>, StoreError> {
        self.on_query_thread(move |this| aggregate(this, &filter, interval, &stop))
            .await
    }

    /// Readings per hour (group start → count) over the filter.
    pub async fn count_per_hour(
        &self,
        filter: SeriesFilter,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let mirror = self.mirror().clone();
        self.query(move |c| {
            let Some(scope) = Scope::resolve(c, &filter)? else {
                return Ok(Vec::new());
            };
            let covers = Covers::of(&scope);
            inbox::with_bucket_rows(
                c,
                &mirror,
                scope.bucket,
                |rows| {
                    let mut hours = BTreeMap::<i64, i64>::new();
                    for r in rows.iter().filter(|r| covers.has(r)) {
                        // SQLite's integer division: toward zero.
                        *hours.entry((r.ts / 3_600_000) * 3_600_000).or_default() += 1;
                    }
                    hours
                },
                |c, in_inbox| {
                    let sql = format!(
                        "SELECT (r.ts / 3600000) * 3600000 AS h, count(*) FROM readings r
                         WHERE {} GROUP BY h ORDER BY h",
                        scope.where_clause()
                    );
                    let mut st = c.prepare_cached(&sql)?;
                    let stored = st
                        .query_map(params![scope.bucket, scope.start, scope.end], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?;
                    let Some(mut hours) = in_inbox else {
                        return stored.collect();
                    };
                    for row in stored {
                        let (h, n) = row?;
                        *hours.entry(h).or_default() += n;
                    }
                    Ok(hours.into_iter().collect())
                },
            )
        })
        .await
    }

    /// When each bucket the store knows was first known (Unix ms).
    pub async fn bucket_created(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        self.query(|c| {
            c.prepare("SELECT bucket_id, created_at FROM buckets WHERE created_at IS NOT NULL")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }

    /// Readings kept per bucket id (queued and delivered history): the
    /// ledger's `kept` counter (`budget::KEPT`) plus the inbox, no count of
    /// rows.
    pub async fn count_per_bucket(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let mirror = self.mirror().clone();
        self.query(move |c| {
            inbox::with_inbox(
                c,
                &mirror,
                |m| m.rows() > 0,
                |m| {
                    m.buckets
                        .iter()
                        .map(|(k, b)| (*k, b.rows.len() as i64))
                        .collect::<HashMap<i64, i64>>()
                },
                |c, in_inbox| {
                    let in_inbox = in_inbox.unwrap_or_default();
                    c.prepare(
                        "SELECT b.id, b.bucket_id, coalesce(l.value, 0)
                         FROM buckets b LEFT JOIN ledger l ON l.bucket = b.id AND l.name = ?1",
                    )?
                    .query_map([super::budget::KEPT], |r| {
                        let key: i64 = r.get(0)?;
                        let n: i64 = r.get(2)?;
                        Ok((r.get(1)?, n + in_inbox.get(&key).copied().unwrap_or(0)))
                    })?
                    .collect()
                },
            )
        })
        .await
    }

    /// The data sources seen in a bucket, with the fields of their latest
    /// readings.
    pub async fn sources(&self, bucket_id: &str) -> Result<Vec<SourceSummary>, StoreError> {
        let filter = SeriesFilter {
            bucket_id: bucket_id.to_owned(),
            ..SeriesFilter::default()
        };
        let mirror = self.mirror().clone();
        self.query(move |c| {
            let Some(scope) = Scope::resolve(c, &filter)? else {
                return Ok(Vec::new());
            };
            let covers = Covers::of(&scope);
            inbox::with_bucket_rows(
                c,
                &mirror,
                scope.bucket,
                |rows| inbox::newest_per_source(rows, &covers, FIELD_SAMPLE as usize),
                |c, in_inbox| {
                    let mut in_inbox = in_inbox.unwrap_or_default();
                    // Newest first in the primary key's order (ties on `ts`
                    // by arrival), the order the inbox's rows merge in.
                    let mut newest = c.prepare_cached(
                        "SELECT ts, seq, vals FROM readings WHERE bucket = ?1 AND source = ?2
                         ORDER BY ts DESC, seq DESC LIMIT ?3",
                    )?;
                    let mut profile = c.prepare_cached(
                        "SELECT created_at, updated_at, profile FROM sources WHERE id = ?1",
                    )?;
                    let mut out = Vec::new();
                    for (key, name) in &scope.sources {
                        let (created_at, updated_at, profile) =
                            profile.query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                        let stored: Vec<(i64, i64, String)> = newest
                            .query_map(params![scope.bucket, key, FIELD_SAMPLE], |r| {
                                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                            })?
                            .collect::<Result<_, _>>()?;
                        let sample = match in_inbox.remove(key) {
                            Some(fresh) => {
                                inbox::merge_newest(stored, fresh, FIELD_SAMPLE as usize)
                            }
                            None => stored,
                        };
                        let mut summary = SourceSummary {
                            data_source_id: name.clone(),
                            last_ms: None,
                            fields: BTreeMap::new(),
                            created_at,
                            updated_at,
                            profile,
                        };
                        for (ts, _, vals) in sample {
                            summary.last_ms = Some(summary.last_ms.map_or(ts, |l: i64| l.max(ts)));
                            if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&vals) {
                                for (k, v) in m {
                                    let kind = match v {
                                        serde_json::Value::Number(_) => "number",
                                        serde_json::Value::Bool(_) => "boolean",
                                        _ => "string",
                                    };
                                    summary.fields.entry(k).or_insert(kind);
                                }
                            }
                        }
                        out.push(summary);
                    }
                    Ok(out)
                },
            )
        })
        .await
    }
}

/// A filter resolved to integer keys.
struct Scope {
    bucket: i64,
    /// (key, data source id), ordered by id.
    sources: Vec<(i64, String)>,
    start: i64,
    end: i64,
}

impl Scope {
    /// `None` when the bucket has no readings or none of the sources exist.
    fn resolve(c: &Connection, f: &SeriesFilter) -> Result<Option<Scope>, rusqlite::Error> {
        let Some(bucket) = c
            .prepare_cached("SELECT id FROM buckets WHERE bucket_id = ?1")?
            .query_row([&f.bucket_id], |r| r.get::<_, i64>(0))
            .optional()?
        else {
            return Ok(None);
        };
        let mut sources: Vec<(i64, String)> = c
            .prepare_cached(
                "SELECT id, source_id FROM sources WHERE bucket = ?1 ORDER BY source_id",
            )?
            .query_map([bucket], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if let Some(wanted) = &f.sources {
            sources.retain(|(_, id)| wanted.iter().any(|w| w == id));
        }
        if sources.is_empty() {
            return Ok(None);
        }
        Ok(Some(Scope {
            bucket,
            sources,
            start: f.start_ms.unwrap_or(i64::MIN),
            end: f.end_ms.unwrap_or(i64::MAX),
        }))
    }

    /// Parameters ?1 bucket, ?2 start, ?3 end. The source keys are integers
    /// read from the database, written into the text (no injection).
    fn where_clause(&self) -> String {
        let keys: Vec<String> = self.sources.iter().map(|(k, _)| k.to_string()).collect();
        if keys.len() == 1 {
            format!(
                "r.bucket = ?1 AND r.source = {} AND r.ts >= ?2 AND r.ts < ?3",
                keys[0]
            )
        } else {
            format!(
                "r.bucket = ?1 AND r.source IN ({}) AND r.ts >= ?2 AND r.ts < ?3",
                keys.join(",")
            )
        }
    }

    fn count(&self, c: &Connection) -> Result<i64, rusqlite::Error> {
        let sql = format!(
            "SELECT count(*) FROM readings r WHERE {}",
            self.where_clause()
        );
        c.prepare_cached(&sql)?
            .query_row(params![self.bucket, self.start, self.end], |r| r.get(0))
    }

    /// The first and last timestamps in `readings` over `[start, end)`.
    fn extent(
        &self,
        c: &Connection,
        start: i64,
        end: i64,
    ) -> Result<Option<(i64, i64)>, rusqlite::Error> {
        let sql = format!(
            "SELECT min(r.ts), max(r.ts) FROM readings r WHERE {}",
            self.where_clause()
        );
        let span: (Option<i64>, Option<i64>) = c
            .prepare_cached(&sql)?
            .query_row(params![self.bucket, start, end], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok(match span {
            (Some(lo), Some(hi)) => Some((lo, hi)),
            _ => None,
        })
    }

    /// Source key → its id, for naming groups (a map: a bucket can have
    /// tens of thousands of data sources).
    fn names(&self) -> HashMap<i64, &str> {
        self.sources.iter().map(|(k, n)| (*k, n.as_str())).collect()
    }
}

/// The accumulator of field `name` in `accs`, added with `v` when missing.
/// Readings of one source nearly always list their fields in the same
/// order, so position `hint` is tried first: a group costs O(fields) per
/// row instead of O(fields²) (40,000 fields once took 8 s per query).
fn acc_at<'a>(accs: &'a mut [(String, Acc)], hint: usize, name: &str) -> Option<&'a mut Acc> {
    if accs.get(hint).is_some_and(|(n, _)| n == name) {
        return accs.get_mut(hint).map(|(_, a)| a);
    }
    accs.iter_mut().find(|(n, _)| n == name).map(|(_, a)| a)
}

/// (group start, source key)
type GroupKey = (i64, i64);
/// (readings, per-field accumulators)
type Group = (u64, Vec<(String, Acc)>);
type Groups = HashMap<GroupKey, Group>;

/// Ranges longer than this are aggregated in parallel slices.
const PARALLEL_ABOVE_MS: i64 = 2 * 3_600_000;

/// Aggregate over the filter. A long range is cut into slices that are
/// folded in parallel on separate read connections and then merged: SQLite
/// spends about 0.4 µs fetching each row through the series index, so one
/// day of 1 Hz data is ~35 ms on one core; a Raspberry Pi 3/4/5 has four.
fn aggregate(
    reader: &Reader,
    f: &SeriesFilter,
    interval: Interval,
    stop: &QueryStop,
) -> Result<Vec<AggGroup>, StoreError> {
    let mirror = reader.mirror();
    let prepared = reader.with_blocking(|c| {
        stop.run(c, |c| {
            let Some(scope) = Scope::resolve(c, f)? else {
                return Ok(None);
            };
            // Open-ended ranges are narrowed to the data's own extent (the
            // inbox's included) so that the chunks below cover real time only.
            let covers = Covers::of(&scope);
            let extent = inbox::with_bucket_rows(
                c,
                mirror,
                scope.bucket,
                |rows| inbox::extent(rows, &covers).1,
                |c, in_inbox| {
                    Ok(inbox::union(
                        scope.extent(c, scope.start, scope.end)?,
                        in_inbox.flatten(),
                    ))
                },
            )?;
            Ok(extent.map(|(lo, hi)| (scope, lo, hi.saturating_add(1))))
        })
    })?;
    let Some((scope, lo, hi)) = prepared else {
        return Ok(Vec::new());
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let slices = if hi - lo > PARALLEL_ABOVE_MS && threads > 1 {
        threads as i64
    } else {
        1
    };
    let width = (hi - lo + slices - 1) / slices;
    let bounds: Vec<(i64, i64)> = (0..slices)
        .map(|i| (lo + i * width, (lo + (i + 1) * width).min(hi)))
        .filter(|(a, b)| a < b)
        .collect();
    let partials: Vec<Result<Groups, StoreError>> = if bounds.len() == 1 {
        vec![reader.with_blocking(|c| {
            stop.run(c, |c| {
                fold_range(c, mirror, &scope, bounds[0], interval, stop)
            })
        })]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = bounds
                .iter()
                .map(|&b| {
                    let scope = &scope;
                    s.spawn(move || {
                        reader.with_blocking(|c| {
                            stop.run(c, |c| fold_range(c, mirror, scope, b, interval, stop))
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(StoreError::Fatal("an aggregation slice panicked".into()))
                    })
                })
                .collect()
        })
    };
    let mut groups: Groups = HashMap::new();
    for partial in partials {
        for (key, group) in partial? {
            merge_group(&mut groups, key, group);
        }
    }
    let names = scope.names();
    let mut out: Vec<AggGroup> = groups
        .into_iter()
        .map(|((start, source), (count, fields))| AggGroup {
            start_ms: start,
            data_source_id: names.get(&source).copied().unwrap_or("").to_owned(),
            count,
            fields,
        })
        .collect();
    out.sort_by(|a, b| (a.start_ms, &a.data_source_id).cmp(&(b.start_ms, &b.data_source_id)));
    for g in &mut out {
        g.fields.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(out)
}

/// Add a partial group into `groups` (a group can span two slices or two
/// passes of the current-group cache).
fn merge_group(groups: &mut Groups, key: GroupKey, (count, fields): Group) {
    let entry = groups.entry(key).or_insert_with(|| (0, Vec::new()));
    entry.0 += count;
    for (i, (name, acc)) in fields.into_iter().enumerate() {
        match acc_at(&mut entry.1, i, &name) {
            Some(a) => a.merge(&acc),
            None => entry.1.push((name, acc)),
        }
    }
}

/// Fold the readings of `[start, end)` into groups, a day per statement so
/// that no read holds back WAL checkpoints for long. The inbox's rows of a
/// day are folded with that day's statement, in a transaction consistent
/// with the copy they come from (`query/inbox.rs`).
fn fold_range(
    c: &Connection,
    mirror: &SharedMirror,
    scope: &Scope,
    (start, end): (i64, i64),
    interval: Interval,
    stop: &QueryStop,
) -> Result<Groups, rusqlite::Error> {
    let mut groups: Groups = HashMap::new();
    let sql = format!(
        "SELECT r.source, r.ts, r.vals FROM readings r WHERE {}",
        scope.where_clause()
    );
    // Rows come in (source, ts) order: fold into the current group and touch
    // the map only when the group changes.
    let mut current: Option<(GroupKey, Group)> = None;
    let mut fold = |source: i64, ts: i64, vals: &str| {
        let key = (interval.start(ts), source);
        if current.as_ref().is_none_or(|(k, _)| *k != key) {
            if let Some((k, g)) = current.take() {
                merge_group(&mut groups, k, g);
            }
            current = Some((key, groups.remove(&key).unwrap_or_default()));
        }
        let (_, entry) = current.as_mut().expect("set above");
        entry.0 += 1;
        let _ = fold_numbers(vals, &mut entry.1);
    };
    let covers = Covers::range(scope, start, end);
    let mut copy = inbox::RangeCopy::default();
    let mut chunk_start = start;
    while chunk_start < end {
        // Empty chunks run no SQLite steps to interrupt: check here too.
        stop.check()?;
        let chunk_end = chunk_start.saturating_add(CHUNK_MS).min(end);
        let tx = if inbox::has_rows(mirror, scope.bucket) {
            let (tx, ()) = consistent(c, mirror, |m| copy.refresh(m, scope.bucket, &covers))?;
            Some(tx)
        } else {
            copy = inbox::RangeCopy::default();
            None
        };
        {
            let c: &Connection = tx.as_deref().unwrap_or(c);
            let mut st = c.prepare_cached(&sql)?;
            let mut rows = st.query(params![scope.bucket, chunk_start, chunk_end])?;
            while let Some(r) = rows.next()? {
                fold(r.get(0)?, r.get(1)?, r.get_ref(2)?.as_str()?);
            }
        }
        drop(tx);
        for r in copy.within(chunk_start, chunk_end) {
            fold(r.source, r.ts, &r.vals);
        }
        chunk_start = chunk_end;
    }
    if let Some((k, g)) = current {
        merge_group(&mut groups, k, g);
    }
    Ok(groups)
}

/// Add the numeric members of a JSON object to `accs` without building a
/// value tree (keys borrowed when they have no escapes).
fn fold_numbers(json: &str, accs: &mut Vec<(String, Acc)>) -> Result<(), serde_json::Error> {
    struct Fold<'v>(&'v mut Vec<(String, Acc)>);
    impl<'de> Visitor<'de> for Fold<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut i = 0;
            while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                let Num(v) = map.next_value()?;
                if let Some(v) = v {
                    match acc_at(self.0, i, &k) {
                        Some(acc) => acc.add(v),
                        None => self.0.push((k.into_owned(), Acc::new(v))),
                    }
                    i += 1;
                }
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_map(Fold(accs))
}

#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// A JSON value read as a number when it is one.
struct Num(Option<f64>);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(Some(v as f64)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Num, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Num(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Num, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Num(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::parse_timestamp;

    #[test]
    fn interval_boundaries_are_utc() {
        let t = parse_timestamp("2024-01-17T13:45:12.345Z").unwrap();
        let at = |s| parse_timestamp(s).unwrap();
        assert_eq!(Interval::MINUTE.start(t), at("2024-01-17T13:45:00Z"));
        assert_eq!(Interval::HOUR.start(t), at("2024-01-17T13:00:00Z"));
        assert_eq!(Interval::DAY.start(t), at("2024-01-17T00:00:00Z"));
        // 2024-01-15 was a Monday.
        assert_eq!(Interval::Week.start(t), at("2024-01-15T00:00:00Z"));
        assert_eq!(Interval::Month.start(t), at("2024-01-01T00:00:00Z"));
        assert_eq!(
            Interval::Week.start(at("2024-01-14T23:59:59Z")),
            at("2024-01-08T00:00:00Z")
        );
    }

    #[test]
    fn folds_numbers_only() {
        let mut accs = Vec::new();
        fold_numbers(r#"{"a":1,"b":"x","c":true,"d":2.5,"e\u0041":3}"#, &mut accs).unwrap();
        fold_numbers(r#"{"a":3,"d":-1}"#, &mut accs).unwrap();
        let names: Vec<&str> = accs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "d", "eA"]);
        assert_eq!(accs[0].1.avg(), 2.0);
        assert_eq!(accs[1].1.min, -1.0);
        assert_eq!(accs[1].1.max, 2.5);
        assert_eq!(accs[2].1.count, 1);
    }
}
