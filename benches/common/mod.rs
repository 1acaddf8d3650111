//! Shared by the benches: a store filled with `n` readings of 1 Hz data from
//! four data sources of one bucket, by direct bulk insert into the schema
//! `store::open` creates (fast: the store's own writer is measured
//! elsewhere), reused across runs while it holds exactly `n` readings; and
//! [`broker`], a private mosquitto on loopback (`mqtt` and `e2e` benches).

#![allow(dead_code)]

use std::time::Instant;

use dakkio_gateway::config;
use dakkio_gateway::store;
use rand::Rng;
use testkit::mosquitto::{Mosquitto, Settings};

/// A private mosquitto on a free loopback port, set up as the README's
/// "Broker settings" tell operators, except `max_queued_messages`, raised so
/// that a benchmark's burst of N messages queued for a slower subscriber is
/// never dropped by the broker (that would read as readings lost).
pub fn broker() -> Mosquitto {
    Mosquitto::start_with(Settings {
        max_queued_messages: 10_000_000,
        autosave_interval: 10,
        ..Settings::default()
    })
}

pub const BUCKET: &str = "507f1f77bcf86cd799439011";
pub const SOURCES: [&str; 4] = [
    "507f1f77bcf86cd7994390a1",
    "507f1f77bcf86cd7994390a2",
    "507f1f77bcf86cd7994390a3",
    "507f1f77bcf86cd7994390a4",
];
/// 2024-01-01T00:00:00Z
pub const T0: i64 = 1_704_067_200_000;
pub const DAY: i64 = 86_400_000;

/// Fill the database with `n` readings by direct bulk insert (unless it
/// already holds them).
pub fn generate(cfg: &config::Config, n: usize) {
    let path = cfg.gateway.data_dir.join(store::FILE_NAME);
    if path.exists() {
        if let Ok(r) = store::Reader::open_existing(&path) {
            if r.stats_blocking()
                .ok()
                .and_then(|s| s.bucket(BUCKET).map(|b| b.accepted))
                == Some(n as i64)
            {
                println!("reusing {} ({n} readings)", path.display());
                return;
            }
        }
        std::fs::remove_dir_all(&cfg.gateway.data_dir).unwrap();
    }
    // Schema by the store itself, then closed.
    let (h, w) = store::open(&cfg.store, &cfg.gateway.data_dir).unwrap();
    drop(h);
    w.join().unwrap();
    let started = Instant::now();
    let mut c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; PRAGMA cache_size=-262144;")
        .unwrap();
    let tx = c.transaction().unwrap();
    tx.execute("INSERT INTO buckets (bucket_id) VALUES (?1)", [BUCKET])
        .unwrap();
    let bucket = tx.last_insert_rowid();
    let mut keys = Vec::new();
    for s in SOURCES {
        tx.execute(
            "INSERT INTO sources (bucket, source_id) VALUES (?1, ?2)",
            rusqlite::params![bucket, s],
        )
        .unwrap();
        keys.push(tx.last_insert_rowid());
    }
    tx.commit().unwrap();
    let mut done = 0usize;
    let mut rng = rand::rng();
    while done < n {
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO readings (bucket, source, ts, seq, origin, vals, meta, queued) VALUES (?1, ?2, ?3, ?5, 3, ?4, NULL, 1)",
                )
                .unwrap();
            let end = (done + 200_000).min(n);
            for i in done..end {
                let s = i % SOURCES.len();
                let ts = T0 + (i / SOURCES.len()) as i64 * 1000;
                let vals = format!(
                    r#"{{"humidity":{:.1},"pressure":{:.2},"temperature":{:.2}}}"#,
                    rng.random_range(30.0..90.0),
                    rng.random_range(990.0..1030.0),
                    rng.random_range(-10.0..35.0)
                );
                st.execute(rusqlite::params![bucket, keys[s], ts, vals, i as i64 + 1])
                    .unwrap();
            }
            done = end;
        }
        tx.commit().unwrap();
    }
    // Undelivered (`queued`, in the queue index), and counted as the
    // store counts them.
    for name in ["accepted", "kept"] {
        c.execute(
            "INSERT INTO ledger (bucket, name, value) VALUES (?1, ?2, ?3)",
            rusqlite::params![bucket, name, n as i64],
        )
        .unwrap();
    }
    // The writer takes the next seq from here.
    c.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
        [(n as i64 + 1).to_string()],
    )
    .unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    println!(
        "generated {n} readings by direct bulk insert in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The first number after `key` in a `/proc` file (`VmHWM:` in `status`,
/// `write_bytes:` in `io`); 0 when absent.
pub fn proc_field(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in µs.
pub fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the name).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / hz
}

/// Until `bucket`'s queue in the store at `path` is empty: every delivery
/// mark committed (a bench: polling with a deadline is fine here). This
/// build's reader, which reads the inbox's journal too; plain SQL for a
/// store of an older schema (a reference build may be an older release,
/// without an inbox): rows above the delivery cursor.
pub fn wait_delivered(path: &std::path::Path, bucket: &str) {
    let reader = store::Reader::open_existing(path).expect("open the gateway's store");
    let plain =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the gateway's store");
    plain
        .busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let queued = match reader.stats_blocking() {
            Ok(stats) => stats.bucket(bucket).map_or(1, |b| b.queued),
            Err(_) => plain
                .query_row(
                    "SELECT count(*) FROM readings r JOIN buckets b ON b.id = r.bucket
                     WHERE b.bucket_id = ?1 AND r.seq > b.delivered_seq",
                    [bucket],
                    |r| r.get(0),
                )
                .expect("store stats"),
        };
        if queued == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the queue never emptied");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
