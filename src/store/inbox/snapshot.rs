//! The inbox as another process sees it: `queue stats` and the other
//! commands read the journal file the daemon writes, so that what they
//! print includes the readings not yet moved into the database.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::journal::{Entry, Journal};
use super::mirror::{Mirror, MirrorRow};
use crate::store::apply::rows_between;

/// `meta` key: the last journal epoch whose entries are in SQLite.
pub(crate) const MOVED_EPOCH: &str = "inbox_moved_epoch";
/// The journal's name inside `data_dir`.
pub(crate) const JOURNAL_NAME: &str = "gateway.inbox";

/// The last journal epoch moved into the database.
pub(crate) fn moved_epoch(conn: &Connection) -> Result<u64, rusqlite::Error> {
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [MOVED_EPOCH],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Data source names by key.
pub(crate) fn source_names(conn: &Connection) -> Result<HashMap<i64, Arc<str>>, rusqlite::Error> {
    conn.prepare("SELECT id, source_id FROM sources")?
        .query_map([], |r| Ok((r.get(0)?, Arc::from(r.get::<_, String>(1)?))))?
        .collect()
}

/// Fill `m` with journal entries (their marks counted against `conn`'s
/// rows and the entries' own).
pub(crate) fn fill(
    conn: &Connection,
    m: &mut Mirror,
    entries: Vec<Entry>,
) -> Result<(), rusqlite::Error> {
    let names = source_names(conn)?;
    let mut marks: Vec<(i64, i64)> = Vec::new();
    for e in entries {
        match e {
            Entry::Row(r) => {
                let source_id = names.get(&r.source).cloned().unwrap_or_else(|| "".into());
                m.push(r.bucket, MirrorRow::from_journal(r, source_id));
            }
            Entry::Mark { bucket, up_to } => marks.push((bucket, up_to)),
            Entry::Count {
                bucket,
                name,
                delta,
            } => m.count(bucket, &name, delta),
            Entry::State { key, value } => {
                m.state.insert(key, value);
            }
        }
    }
    for (bucket, up_to) in marks {
        let sql_cursor: i64 = conn
            .prepare_cached("SELECT delivered_seq FROM buckets WHERE id = ?1")?
            .query_row([bucket], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let cursor = m.bucket(bucket).map_or(0, |b| b.cursor).max(sql_cursor);
        if up_to <= cursor {
            continue;
        }
        let (n, bytes) = rows_between(conn, bucket, cursor, up_to)?;
        let (mn, mbytes) = m.present(bucket, cursor, up_to);
        m.mark(bucket, up_to, n + mn, bytes + mbytes);
    }
    Ok(())
}

/// What the journal beside `db` holds that the database does not have,
/// read without writing anything (another process may own it).
pub(crate) fn load(conn: &Connection, db: &Path) -> Result<Mirror, rusqlite::Error> {
    let mut m = Mirror::default();
    let path = db.with_file_name(JOURNAL_NAME);
    let Ok(Some(found)) = Journal::scan(&path) else {
        return Ok(m);
    };
    // The snapshot and the journal may disagree for a moment (a move in
    // between): the epoch says which one holds the entries.
    let tx = conn.unchecked_transaction()?;
    if found.epoch > moved_epoch(&tx)? {
        fill(&tx, &mut m, found.entries)?;
    }
    Ok(m)
}

/// A connection on the database at `db` on which `readings` also holds
/// the rows of the inbox's journal (a temporary view over the table and a
/// temporary copy of the journal's rows): for tools and tests that look at
/// what is stored while the daemon runs, or after a crash, with SQL.
pub fn inspect(db: impl AsRef<Path>) -> Result<Connection, crate::store::StoreError> {
    let db = db.as_ref();
    let conn = Connection::open(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let m = load(&conn, db)?;
    conn.execute_batch(
        "PRAGMA temp_store = MEMORY;
         CREATE TEMP TABLE inbox_rows (bucket, source, ts, seq, origin, vals, meta);
         CREATE TEMP VIEW readings AS
           SELECT bucket, source, ts, seq, origin, vals, meta FROM main.readings
           UNION ALL
           SELECT bucket, source, ts, seq, origin, vals, meta FROM temp.inbox_rows;",
    )?;
    {
        let mut st = conn.prepare(
            "INSERT INTO temp.inbox_rows (bucket, source, ts, seq, origin, vals, meta)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (b, inbox) in &m.buckets {
            for r in &inbox.rows {
                st.execute(params![b, r.source, r.ts, r.seq, r.origin, r.vals, r.meta])?;
            }
        }
    }
    Ok(conn)
}
