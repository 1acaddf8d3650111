//! The local API's reads see the inbox's readings exactly once: a store
//! whose newest readings are in the mirror answers every read path as a
//! store holding all of them in `readings` does, and still does after a
//! move; without the mirror's rows the answers differ (the control).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What a move adds to the ledger's `kept` counter, per row it inserts.
const KEPT_PLUS_ONE: &str = "INSERT INTO ledger (bucket, name, value) VALUES (?1, 'kept', 1)
     ON CONFLICT (bucket, name) DO UPDATE SET value = value + 1";

use rusqlite::{params, Connection};

use crate::config::StoreConfig;
use crate::reading::{Origin, Reading, Value, Values};
use crate::store::inbox::mirror::MirrorRow;
use crate::store::tests::{B1, B2};
use crate::store::{Interval, QueryStop, Reader, SeriesFilter, StoreHandle, WriterThread};

const SA: &str = "5a0000000000000000000001";
const SB: &str = "5a0000000000000000000002";
/// Has readings only in the inbox.
const SC: &str = "5a0000000000000000000003";
/// 2024-01-01T00:00:00Z
const T0: i64 = 1_704_067_200_000;
const MIN: i64 = 60_000;

/// Values a sum adds up exactly in any order (multiples of 1/4), a text
/// and a flag, and metadata on some.
fn reading(bucket: &str, source: &str, ts: i64, i: i64) -> Reading {
    let mut values = Values::new();
    values.insert("temperature".into(), Value::Number(i as f64 * 0.25));
    values.insert("humidity".into(), Value::Number(((i * 7) % 40) as f64));
    if i % 3 == 0 {
        values.insert("state".into(), Value::Text(format!("s{}", i % 5)));
    }
    if i % 4 == 1 {
        values.insert("ok".into(), Value::Bool(i % 8 == 1));
    }
    let mut metadata = crate::reading::Metadata::new();
    if i % 5 == 0 {
        metadata.insert("n".into(), serde_json::json!(i));
    }
    Reading {
        bucket_id: bucket.into(),
        data_source_id: source.into(),
        timestamp_ms: ts,
        values,
        metadata,
        origin: Origin::Mqtt,
        receive_time: false,
    }
}

/// Stored in both stores: three days of two sources in B1, a few in B2.
fn stored_part() -> Vec<Vec<Reading>> {
    let mut b1 = Vec::new();
    for i in 0..120 {
        let source = if i % 3 == 0 { SB } else { SA };
        b1.push(reading(B1, source, T0 + i * 37 * MIN, i));
    }
    let b2 = (0..10)
        .map(|i| reading(B2, SA, T0 + i * 90 * MIN, 500 + i))
        .collect();
    vec![b1, b2]
}

/// The inbox's part: late arrivals older than everything stored, readings
/// at the very timestamps of stored ones (arrival breaks the tie), new
/// ones, a new field, a source with no stored reading, and B2 too.
fn inbox_part() -> Vec<Vec<Reading>> {
    let mut b1 = Vec::new();
    for i in 0..20 {
        b1.push(reading(B1, SA, T0 - (i + 1) * 13 * MIN, 200 + i));
    }
    for i in 0..30 {
        b1.push(reading(B1, SA, T0 + i * 4 * 37 * MIN, 300 + i));
    }
    for i in 0..40 {
        let source = [SA, SB, SC][i as usize % 3];
        let mut r = reading(B1, source, T0 + 120 * 37 * MIN + i * 11 * MIN, 400 + i);
        r.values
            .insert("co2".into(), Value::Number(400.0 + i as f64));
        b1.push(r);
    }
    let b2 = (0..5)
        .map(|i| reading(B2, SA, T0 + i * 45 * MIN, 600 + i))
        .collect();
    vec![b1, b2]
}

fn config() -> StoreConfig {
    StoreConfig {
        commit_max_delay: Duration::from_millis(5),
        ..StoreConfig::default()
    }
}

async fn append_all(h: &StoreHandle, batches: Vec<Vec<Reading>>) {
    for b in batches {
        h.append(b).await.unwrap();
    }
}

async fn stop(h: StoreHandle, w: WriterThread) {
    drop(h);
    tokio::task::spawn_blocking(move || w.join())
        .await
        .unwrap()
        .unwrap();
}

/// A second connection on a store's file, for what the writer would do.
fn side(dir: &Path) -> Connection {
    let c = Connection::open(dir.join(crate::store::FILE_NAME)).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// A stored row by names: (bucket_id, source_id, ts, seq, origin, vals, meta).
type Row = (String, String, i64, i64, i64, String, Option<String>);

fn rows_above(c: &Connection, seqs: &BTreeMap<String, i64>) -> Vec<Row> {
    let mut st = c
        .prepare(
            "SELECT b.bucket_id, s.source_id, r.ts, r.seq, r.origin, r.vals, r.meta
             FROM readings r JOIN buckets b ON b.id = r.bucket JOIN sources s ON s.id = r.source
             ORDER BY r.bucket, r.seq",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .filter(|r: &Row| r.3 > seqs.get(&r.0).copied().unwrap_or(0))
    .collect()
}

/// The highest stored seq of each bucket.
fn top_seqs(c: &Connection) -> BTreeMap<String, i64> {
    c.prepare(
        "SELECT b.bucket_id, (SELECT max(seq) FROM readings r WHERE r.bucket = b.id)
         FROM buckets b",
    )
    .unwrap()
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn key_of(c: &Connection, bucket_id: &str, source_id: &str) -> (i64, i64) {
    c.query_row(
        "SELECT b.id, s.id FROM buckets b JOIN sources s ON s.bucket = b.id
         WHERE b.bucket_id = ?1 AND s.source_id = ?2",
        params![bucket_id, source_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// Every read path's answer, labelled by path and case.
async fn answers(r: &Reader) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let f = |sources: Option<&[&str]>, start: Option<i64>, end: Option<i64>| SeriesFilter {
        bucket_id: B1.into(),
        sources: sources.map(|s| s.iter().map(|x| x.to_string()).collect()),
        start_ms: start,
        end_ms: end,
    };
    let last_stored = T0 + 119 * 37 * MIN;
    let filters = vec![
        ("all", f(None, None, None)),
        ("sa", f(Some(&[SA]), None, None)),
        ("sa-sc", f(Some(&[SA, SC]), None, None)),
        ("sc", f(Some(&[SC]), None, None)),
        (
            "middle",
            f(None, Some(T0 + 10 * 37 * MIN), Some(T0 + 70 * 37 * MIN)),
        ),
        ("before", f(None, None, Some(T0))),
        ("after", f(None, Some(last_stored + 1), None)),
        (
            "b2",
            SeriesFilter {
                bucket_id: B2.into(),
                ..SeriesFilter::default()
            },
        ),
        (
            "unknown",
            SeriesFilter {
                bucket_id: "5a00000000000000000000ff".into(),
                ..SeriesFilter::default()
            },
        ),
    ];
    for (name, filter) in &filters {
        let (total, all) = r.query_points(filter.clone(), 10_000, 0).await.unwrap();
        out.push((format!("points {name}"), format!("{total} {all:?}")));
        // Page through in 7s: the pages join up to the whole answer.
        let mut paged = Vec::new();
        let mut offset = 0;
        loop {
            let (t, page) = r.query_points(filter.clone(), 7, offset).await.unwrap();
            assert_eq!(t, total, "{name}: total changes between pages");
            if page.is_empty() {
                break;
            }
            offset += page.len();
            paged.extend(page);
        }
        assert_eq!(paged, all, "{name}: pages of 7");
        for (limit, offset) in [
            (0, 0),
            (5, 3),
            (3, 25),
            (10, (total as usize).saturating_sub(2)),
        ] {
            let (_, page) = r.query_points(filter.clone(), limit, offset).await.unwrap();
            out.push((
                format!("points {name} {limit}@{offset}"),
                format!("{page:?}"),
            ));
        }
        // Cut by bytes: the first row always, then while under the bound.
        for max_bytes in [1, 2_000] {
            let (_, page) = r
                .query_points_until(filter.clone(), 100, 1, max_bytes, QueryStop::default())
                .await
                .unwrap();
            out.push((
                format!("points {name} {max_bytes} bytes"),
                format!("{page:?}"),
            ));
        }
        let extent = r.query_extent(filter.clone()).await.unwrap();
        out.push((format!("extent {name}"), format!("{extent:?}")));
        let n = r
            .sources_in_range_until(filter.clone(), QueryStop::default())
            .await
            .unwrap();
        out.push((format!("in range {name}"), n.to_string()));
        for (iname, interval) in [
            ("minute", Interval::MINUTE),
            ("hour", Interval::HOUR),
            ("day", Interval::DAY),
            ("week", Interval::Week),
            ("month", Interval::Month),
            ("17min", Interval::Fixed(17 * MIN)),
        ] {
            let groups = r.aggregate(filter.clone(), interval).await.unwrap();
            out.push((format!("aggregate {name} {iname}"), format!("{groups:?}")));
        }
        let hours = r.count_per_hour(filter.clone()).await.unwrap();
        out.push((format!("per hour {name}"), format!("{hours:?}")));
    }
    out.push((
        "per bucket".into(),
        format!("{:?}", r.count_per_bucket().await.unwrap()),
    ));
    for b in [B1, B2] {
        out.push((
            format!("sources {b}"),
            format!("{:?}", r.sources(b).await.unwrap()),
        ));
        out.push((
            format!("latest {b}"),
            format!("{:?}", r.latest_readings(b).await.unwrap()),
        ));
        for s in [SA, SB, SC] {
            out.push((
                format!("last reading {b} {s}"),
                format!("{:?}", r.last_reading_ms(b, s).await.unwrap()),
            ));
        }
    }
    out
}

fn assert_same(got: &[(String, String)], want: &[(String, String)], when: &str) {
    assert_eq!(got.len(), want.len());
    for ((label, g), (_, w)) in got.iter().zip(want) {
        assert_eq!(g, w, "{when}: {label}");
    }
}

/// Store A holds the stored part and has the inbox part in its mirror (as
/// the writer would, with the keys and seqs store B gave them); store B
/// has both parts in `readings`. Every read path answers the same; after a
/// move (rows inserted, mirror cleared under its write lock) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_path_sees_the_inbox_once() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, wa) = crate::store::open(&config(), dir_a.path()).unwrap();
    // Store B writes everything into `readings` (no inbox).
    let (b, wb) = crate::store::open(
        &StoreConfig {
            inbox_readings: 0,
            ..config()
        },
        dir_b.path(),
    )
    .unwrap();
    append_all(&a, stored_part()).await;
    append_all(&b, stored_part()).await;
    let side_b = side(dir_b.path());
    let stored_seqs = top_seqs(&side_b);
    append_all(&b, inbox_part()).await;
    let fresh = rows_above(&side_b, &stored_seqs);
    assert_eq!(fresh.len(), 95);

    // Store A learns source SC as the writer would (a `sources` row, no
    // reading), and every source takes store B's times so that the
    // summaries compare.
    let side_a = side(dir_a.path());
    let (b1_key, _) = key_of(&side_a, B1, SA);
    side_a
        .execute(
            "INSERT INTO sources (bucket, source_id) VALUES (?1, ?2)",
            params![b1_key, SC],
        )
        .unwrap();
    let times: Vec<(String, String, i64, i64)> = side_b
        .prepare(
            "SELECT b.bucket_id, s.source_id, s.created_at, s.updated_at
             FROM sources s JOIN buckets b ON b.id = s.bucket",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (bucket_id, source_id, created, updated) in times {
        let (_, source) = key_of(&side_a, &bucket_id, &source_id);
        side_a
            .execute(
                "UPDATE sources SET created_at = ?2, updated_at = ?3 WHERE id = ?1",
                params![source, created, updated],
            )
            .unwrap();
    }
    assert_eq!(
        top_seqs(&side_a),
        stored_seqs,
        "both stores gave the same seqs"
    );

    let want = answers(b.reader()).await;
    let before = answers(a.reader()).await;

    {
        let mut m = a.reader().mirror().write().unwrap();
        for (bucket_id, source_id, ts, seq, origin, vals, meta) in &fresh {
            let (bucket, source) = key_of(&side_a, bucket_id, source_id);
            m.push(
                bucket,
                MirrorRow {
                    seq: *seq,
                    source,
                    source_id: Arc::from(source_id.as_str()),
                    ts: *ts,
                    origin: *origin,
                    vals: vals.clone(),
                    meta: meta.clone(),
                },
            );
        }
    }
    let got = answers(a.reader()).await;
    assert_same(&got, &want, "inbox in the mirror");

    // The control: without the mirror's rows every kind of read answers
    // differently somewhere.
    for kind in [
        "points",
        "extent",
        "in range",
        "aggregate",
        "per hour",
        "per bucket",
        "sources",
        "latest",
        "last reading",
    ] {
        assert!(
            before
                .iter()
                .zip(&want)
                .any(|((l, x), (_, y))| l.starts_with(kind) && x != y),
            "the inbox's rows change no `{kind}` answer: the test proves nothing there"
        );
    }

    // A move: the rows go into `readings` and the mirror is cleared under
    // one hold of its write lock (what the writer does).
    {
        let mut m = a.reader().mirror().write().unwrap();
        let tx = side_a.unchecked_transaction().unwrap();
        for (bucket_id, source_id, ts, seq, origin, vals, meta) in &fresh {
            let (bucket, source) = key_of(&tx, bucket_id, source_id);
            tx.execute(
                "INSERT INTO readings (bucket, source, ts, seq, origin, vals, meta, queued)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1)",
                params![bucket, source, ts, seq, origin, vals, meta],
            )
            .unwrap();
            tx.execute(KEPT_PLUS_ONE, [bucket]).unwrap();
        }
        tx.commit().unwrap();
        m.clear();
    }
    let moved = answers(a.reader()).await;
    assert_same(&moved, &want, "after the move");

    drop((side_a, side_b));
    stop(a, wa).await;
    stop(b, wb).await;
}

/// While moves carry the mirror's rows into `readings` on another thread
/// (as the writer does: the commit and the clearing under one hold of the
/// mirror's write lock), at moments nothing here controls, every count a
/// read path gives is exact: no reading is counted twice (in the copy of
/// the mirror and in the snapshot) or missed (in neither). Readings arrive
/// only between reads, so the right count is known; they are scattered
/// over six weeks, so an aggregation's day statements each have some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_while_moves_happen() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = crate::store::open(&config(), dir.path()).unwrap();
    h.append(vec![reading(B1, SA, T0, 0)]).await.unwrap();
    let conn = side(dir.path());
    // A test's moves need no durability.
    conn.execute_batch("PRAGMA synchronous=OFF").unwrap();
    let (bucket, source) = key_of(&conn, B1, SA);
    let mut seq = top_seqs(&conn)[B1];
    let mirror = h.reader().mirror().clone();
    // The mover moves once per round, after a delay the round chooses, so
    // that the move lands anywhere in the reads.
    let (go, orders) = std::sync::mpsc::channel::<Duration>();
    let mover = {
        let mirror = mirror.clone();
        std::thread::spawn(move || {
            let mut moves = 0;
            for delay in orders {
                // Pacing only: what is asserted does not depend on it.
                std::thread::sleep(delay);
                let mut m = mirror.write().unwrap();
                let tx = conn.unchecked_transaction().unwrap();
                for r in m.bucket(bucket).map_or(&[][..], |b| &b.rows[..]) {
                    tx.execute(
                        "INSERT INTO readings (bucket, source, ts, seq, origin, vals, meta, queued)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, 1)",
                        params![bucket, r.source, r.ts, r.seq, r.origin, r.vals],
                    )
                    .unwrap();
                    tx.execute(KEPT_PLUS_ONE, [bucket]).unwrap();
                }
                tx.commit().unwrap();
                m.clear();
                moves += 1;
            }
            moves
        })
    };
    let r = h.reader();
    let all = SeriesFilter {
        bucket_id: B1.into(),
        ..SeriesFilter::default()
    };
    let mut accepted = 1;
    for round in 0..120u64 {
        {
            let mut m = mirror.write().unwrap();
            for _ in 0..30 {
                seq += 1;
                m.push(
                    bucket,
                    MirrorRow {
                        seq,
                        source,
                        source_id: Arc::from(SA),
                        ts: T0 + (seq * 7919 % 1000) * 60 * MIN,
                        origin: 0,
                        vals: format!("{{\"v\":{seq}}}"),
                        meta: None,
                    },
                );
            }
            accepted += 30;
        }
        go.send(Duration::from_micros(round * 389 % 4000)).unwrap();
        // Each read path in turn is the first after the arrival (when the
        // move most likely lands).
        for k in 0..5 {
            let (what, n) = match (round as usize + k) % 5 {
                0 => ("points", r.query_points(all.clone(), 1, 0).await.unwrap().0),
                1 => ("extent", r.query_extent(all.clone()).await.unwrap().0),
                2 => {
                    let groups = r.aggregate(all.clone(), Interval::DAY).await.unwrap();
                    ("aggregate", groups.iter().map(|g| g.count as i64).sum())
                }
                3 => {
                    let hours = r.count_per_hour(all.clone()).await.unwrap();
                    ("per hour", hours.iter().map(|(_, n)| n).sum())
                }
                _ => ("per bucket", r.count_per_bucket().await.unwrap()[B1]),
            };
            assert_eq!(n, accepted, "{what} in round {round}");
        }
    }
    drop(go);
    assert_eq!(mover.join().unwrap(), 120);
    stop(h, w).await;
}
