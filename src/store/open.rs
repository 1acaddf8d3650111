//! Opening the database: create or migrate it, check it for corruption
//! (full or structural check by size, forced by the marker a corrupt
//! commit left), move a corrupt file aside and start a fresh one. Also the
//! two values the writer restores from `meta` (`next_seq`, `store_id`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};
use tracing::{error, info};

use super::{schema, StoreError, FULL_CHECK_LIMIT};
use crate::config::{StoreConfig, Synchronous};
use crate::reading::now_ms;

/// Open the database, check it, move it aside if it is corrupt, migrate it.
pub(crate) fn open_checked(path: &Path, config: &StoreConfig) -> Result<Connection, StoreError> {
    open_checked_with_limit(path, config, FULL_CHECK_LIMIT)
}

/// [`open_checked`] with the size up to which the full check runs (tests).
pub(crate) fn open_checked_with_limit(
    path: &Path,
    config: &StoreConfig,
    full_check_limit: u64,
) -> Result<Connection, StoreError> {
    match open_and_check(path, config, full_check_limit) {
        Ok(conn) => Ok(conn),
        Err(Opened::Corrupt(why)) => {
            let aside = move_aside(path)?;
            error!(
                path = %path.display(),
                moved_to = %aside.display(),
                reason = %why,
                "database is corrupt; moved it aside and started a fresh one"
            );
            let _ = std::fs::remove_file(super::check_marker(path));
            open_and_check(path, config, full_check_limit).map_err(|e| match e {
                Opened::Corrupt(why) => {
                    StoreError::Fatal(format!("a fresh database is corrupt too: {why}"))
                }
                Opened::Error(e) => e,
            })
        }
        Err(Opened::Error(e)) => Err(e),
    }
}

enum Opened {
    Corrupt(String),
    Error(StoreError),
}

impl From<rusqlite::Error> for Opened {
    fn from(e: rusqlite::Error) -> Self {
        if is_corruption(&e) {
            Opened::Corrupt(e.to_string())
        } else {
            Opened::Error(StoreError::Sqlite(e))
        }
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn open_and_check(
    path: &Path,
    config: &StoreConfig,
    full_check_limit: u64,
) -> Result<Connection, Opened> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Opened::Error(StoreError::Fatal(format!(
            "cannot switch `{}` to WAL mode (got `{mode}`)",
            path.display()
        ))));
    }
    let sync = match config.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync};
         PRAGMA wal_autocheckpoint=1000;
         PRAGMA journal_size_limit={};
         PRAGMA foreign_keys=OFF;",
        4 << 20
    ))?;
    let marker = super::check_marker(path);
    let forced = marker.exists();
    if size > 0 {
        if size <= full_check_limit || forced {
            // Every page is read once: a small cache is enough, and the
            // default one would stay filled (idle RSS) after the check.
            conn.execute_batch("PRAGMA cache_size=-256")?;
            let verdict: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            conn.execute_batch("PRAGMA shrink_memory; PRAGMA cache_size=-2000")?;
            if verdict != "ok" {
                return Err(Opened::Corrupt(verdict));
            }
        } else {
            // Too large to read whole at start on an SD card: read the
            // schema and both ends of the queue, which touches the pages a
            // torn write most likely hit.
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
            for order in ["ASC", "DESC"] {
                conn.query_row(
                    &format!(
                        "SELECT count(*) FROM (SELECT vals FROM readings
                         ORDER BY bucket {order}, source {order}, ts {order}, seq {order} LIMIT 1)"
                    ),
                    [],
                    |r| r.get::<_, i64>(0),
                )?;
            }
        }
    }
    schema::migrate(&mut conn).map_err(|e| match e {
        StoreError::Sqlite(e) => Opened::from(e),
        other => Opened::Error(other),
    })?;
    if forced {
        info!(path = %path.display(), "full check after a corrupt commit: the database is intact");
        let _ = std::fs::remove_file(&marker);
    }
    Ok(conn)
}

/// Rename a corrupt database (and its WAL and shared-memory files) to
/// `gateway.db.corrupt-<UTC time>`.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = crate::reading::format_timestamp(now_ms())
        .replace([':', '-'], "")
        .replace(".000", "");
    let name = path
        .file_name()
        .map_or("gateway.db".into(), |n| n.to_string_lossy().into_owned());
    let aside = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    let io = |source| StoreError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::rename(path, &aside).map_err(io)?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            std::fs::rename(&side, format!("{}{suffix}", aside.display())).map_err(io)?;
        }
    }
    Ok(aside)
}

/// The seq the next reading gets (meta `next_seq`).
pub(super) fn load_next_seq(conn: &Connection) -> Result<i64, StoreError> {
    let text = next_seq_text(conn)?;
    text.parse()
        .map_err(|_| StoreError::Fatal(format!("bad next_seq `{text}` in the database")))
}

/// `meta.next_seq` as stored.
pub(super) fn next_seq_text(conn: &Connection) -> Result<String, rusqlite::Error> {
    conn.query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
        r.get(0)
    })
}

pub(crate) fn store_id(conn: &Connection) -> Result<u32, StoreError> {
    let hex: String = conn.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
        r.get(0)
    })?;
    u32::from_str_radix(&hex, 16)
        .map_err(|_| StoreError::Fatal(format!("bad store id `{hex}` in the database")))
}
