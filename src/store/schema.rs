//! The database schema and its migrations. `PRAGMA user_version` holds the
//! number of migrations applied; each migration runs in its own transaction,
//! and a binary refuses a database written by a newer one.

use rusqlite::Connection;

use super::StoreError;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    -- Buckets and data sources get small integer ids so that every reading
    -- row stores two bytes instead of 48 characters of hex.
    -- `delivered_seq` is the delivery cursor: every reading of the bucket
    -- with seq <= delivered_seq has been delivered or dead-lettered. One
    -- UPDATE per delivered batch, never one per row.
    CREATE TABLE buckets (
        id            INTEGER PRIMARY KEY,
        bucket_id     TEXT NOT NULL UNIQUE,
        delivered_seq INTEGER NOT NULL DEFAULT 0
    );

    CREATE TABLE sources (
        id        INTEGER PRIMARY KEY,
        bucket    INTEGER NOT NULL REFERENCES buckets(id),
        source_id TEXT NOT NULL,
        UNIQUE (bucket, source_id)
    );

    -- The queue and the history in one table, clustered by series: one
    -- data source's readings over a time range are neighbours on disk, so a
    -- local query reads them in one sweep instead of one lookup per row
    -- (3x faster for a day of 1 Hz data). `seq` is the arrival order, never
    -- reused (the writer takes it from meta `next_seq` in the same
    -- transaction), and the queue is read through `readings_queue`
    -- (since migration 4: undelivered rows only).
    CREATE TABLE readings (
        bucket INTEGER NOT NULL,
        source INTEGER NOT NULL,
        ts     INTEGER NOT NULL,      -- Unix ms, the reading's own time
        seq    INTEGER NOT NULL,
        origin INTEGER NOT NULL,      -- reading::Origin::code
        vals   TEXT NOT NULL,         -- JSON object of values
        meta   TEXT,                  -- JSON object, NULL when empty
        PRIMARY KEY (bucket, source, ts, seq)
    ) WITHOUT ROWID;
    -- The queue per bucket, in arrival order.
    CREATE UNIQUE INDEX readings_queue ON readings (bucket, seq);

    -- Counters that survive restarts, updated in the same transaction as the
    -- rows they count. bucket 0 holds counters not tied to a bucket.
    CREATE TABLE ledger (
        bucket INTEGER NOT NULL,
        name   TEXT NOT NULL,
        value  INTEGER NOT NULL,
        PRIMARY KEY (bucket, name)
    ) WITHOUT ROWID;

    -- Points dakkio refused (400), with its message; a copy of the row.
    CREATE TABLE dead_letters (
        id      INTEGER PRIMARY KEY,
        seq     INTEGER NOT NULL,
        bucket  INTEGER NOT NULL,
        source  INTEGER NOT NULL,
        ts      INTEGER NOT NULL,
        origin  INTEGER NOT NULL,
        vals    TEXT NOT NULL,
        meta    TEXT,
        status  INTEGER NOT NULL,
        message TEXT NOT NULL,
        details TEXT,
        at      INTEGER NOT NULL
    );

    -- Inputs that could not become readings, kept for inspection.
    CREATE TABLE rejects (
        id     INTEGER PRIMARY KEY,
        at     INTEGER NOT NULL,
        origin TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        raw    BLOB
    );

    -- Keys issued by the local API: only a SHA-256 of the key is kept.
    CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY,
        bucket_id    TEXT NOT NULL,
        kind         TEXT NOT NULL,
        name         TEXT NOT NULL,
        hash         BLOB NOT NULL UNIQUE,
        prefix       TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER
    );
    "#,
    // 2: when buckets and data sources were first known (dakkio's
    // `createdAt`/`updatedAt`; rows from before get the migration's time),
    // and what the local API was told about a data source it created
    // (`POST /api/buckets/:id/sources`: name, type, description, schema,
    // downsampling, as JSON).
    r#"
    ALTER TABLE buckets ADD COLUMN created_at INTEGER;
    ALTER TABLE sources ADD COLUMN created_at INTEGER;
    ALTER TABLE sources ADD COLUMN updated_at INTEGER;
    ALTER TABLE sources ADD COLUMN profile TEXT;
    UPDATE buckets SET created_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
    UPDATE sources SET created_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000,
                       updated_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
    "#,
    // 3: edge alert rules and their notification queue (store/alerts.rs).
    // Tables only: a database of version 2 takes it as it is.
    r#"
    CREATE TABLE alert_rules (
        id                TEXT PRIMARY KEY,
        bucket_id         TEXT NOT NULL,
        data_source_id    TEXT NOT NULL,
        name              TEXT NOT NULL,
        condition         TEXT NOT NULL,
        webhook_url       TEXT NOT NULL,
        cooldown_minutes  REAL NOT NULL,
        status            TEXT NOT NULL,       -- active | paused
        created_at        INTEGER NOT NULL,
        updated_at        INTEGER NOT NULL,
        last_triggered_at INTEGER,
        trigger_count     INTEGER NOT NULL DEFAULT 0
    );

    -- Notifications of firings: pending until delivered (then deleted) or
    -- given up (status failed, with the reason).
    CREATE TABLE alert_deliveries (
        id          INTEGER PRIMARY KEY,
        rule_id     TEXT NOT NULL,
        target      TEXT NOT NULL,             -- webhook | mqtt
        destination TEXT NOT NULL,             -- URL or topic
        payload     TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        attempts    INTEGER NOT NULL,
        next_at     INTEGER NOT NULL,
        status      TEXT NOT NULL,             -- pending | failed
        reason      TEXT
    );
    CREATE INDEX alert_deliveries_due ON alert_deliveries (status, next_at);
    "#,
    // 4: the queue index holds the undelivered rows only (issue 15: SD-card
    // wear). A row is in it when `queued` is 1: every row inserted
    // undelivered (a direct write, a move of readings not yet delivered);
    // a row that was delivered before it left the inbox (live traffic:
    // nearly all of it) is inserted with `queued` NULL and never costs an
    // index entry — the entry was a fifth of the bytes a move wrote, twice
    // (WAL and checkpoint). A row keeps `queued` = 1 after its delivery:
    // the queue is read above the delivery cursor, and the entry goes with
    // the row (retention, eviction). Invariant: every row above its
    // bucket's `delivered_seq` has `queued` = 1, so every query of the
    // queue names `queued = 1` (which lets SQLite use the partial index).
    // Delivered history is found through the primary key (series, time).
    // The backlog is marked through the old index, both ways by name and
    // bucket by bucket (`CROSS JOIN` keeps that order): the update must not
    // walk a store of millions of delivered rows.
    r#"
    ALTER TABLE readings ADD COLUMN queued INTEGER;
    UPDATE readings INDEXED BY readings_queue SET queued = 1 WHERE (bucket, seq) IN (
        SELECT r.bucket, r.seq FROM buckets b
        CROSS JOIN readings r INDEXED BY readings_queue
        ON r.bucket = b.id AND r.seq > b.delivered_seq);
    DROP INDEX readings_queue;
    CREATE UNIQUE INDEX readings_queue ON readings (bucket, seq) WHERE queued = 1;
    "#,
];

/// The schema version this binary writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring the database to [`VERSION`], one transaction per migration.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        if i == 0 {
            let store_id = rand::random::<u32>();
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('store_id', ?1), ('next_seq', '1')",
                [format!("{store_id:08x}")],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-3 store with bucket 1 delivered up to seq 3 of 1..=5 and
    /// bucket 2 (seqs 6..=8) not delivered at all.
    fn version_3() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            "INSERT INTO meta (key, value) VALUES ('store_id', '00000001'), ('next_seq', '9');
             INSERT INTO buckets (id, bucket_id, delivered_seq) VALUES (1, 'a', 3), (2, 'b', 0);
             INSERT INTO sources (id, bucket, source_id) VALUES (1, 1, 's'), (2, 2, 's');",
        )
        .unwrap();
        for seq in 1..=8i64 {
            let bucket = if seq <= 5 { 1 } else { 2 };
            conn.execute(
                "INSERT INTO readings (bucket, source, ts, seq, origin, vals)
                 VALUES (?1, ?1, ?2, ?2, 0, '{}')",
                [bucket, seq],
            )
            .unwrap();
        }
        conn
    }

    #[test]
    fn migration_4_keeps_exactly_the_undelivered_rows_in_the_queue_index() {
        let mut conn = version_3();
        // The backlog is found and marked through the old index, by key:
        // no step of the update walks the table.
        let plan: Vec<String> = {
            let sql = MIGRATIONS[3];
            let update = &sql[sql.find("UPDATE").unwrap()..];
            let update = &update[..update.find(';').unwrap()];
            let probe = Connection::open_in_memory().unwrap();
            for sql in &MIGRATIONS[..3] {
                probe.execute_batch(sql).unwrap();
            }
            probe
                .execute_batch("ALTER TABLE readings ADD COLUMN queued INTEGER")
                .unwrap();
            let mut st = probe
                .prepare(&format!("EXPLAIN QUERY PLAN {update}"))
                .unwrap();
            st.query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert!(
            plan.iter()
                .all(|l| !l.starts_with("SCAN r") && !l.starts_with("SCAN readings")),
            "{plan:?}"
        );
        assert!(
            plan.iter().any(|l| l.contains("readings_queue")),
            "{plan:?}"
        );
        migrate(&mut conn).unwrap();
        let queued: Vec<(i64, i64)> = conn
            .prepare(
                "SELECT bucket, seq FROM readings INDEXED BY readings_queue
                 WHERE bucket IN (1, 2) AND seq > 0 AND queued = 1 ORDER BY bucket, seq",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(queued, vec![(1, 4), (1, 5), (2, 6), (2, 7), (2, 8)]);
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 8, "delivered history stays, out of the index");
    }
}
