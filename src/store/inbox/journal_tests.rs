//! Tests of the inbox journal file: round trips, recovery after torn writes
//! and damaged headers, garbage, resets, and the pages an append dirties.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tempfile::TempDir;

const CAP: u64 = 64 * 1024;
const TYPICAL_VALS: &str = r#"{"n":12345,"pub_us":1765000000123456}"#;

fn row(i: i64) -> Entry {
    Entry::Row(JournalRow {
        bucket: 1,
        source: 2 + i % 3,
        ts: 1_765_000_000_000 + i * 10,
        seq: 12_345 + i,
        origin: 0,
        vals: format!(r#"{{"n":{i},"pub_us":1765000000123456}}"#),
        meta: None,
    })
}

fn rows(from: i64, n: i64) -> Vec<Entry> {
    (from..from + n).map(row).collect()
}

fn fresh(cap: u64) -> (TempDir, PathBuf, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbox.journal");
    let (journal, recovered) = Journal::open(&path, cap).unwrap();
    assert_eq!(
        recovered,
        Recovered {
            epoch: 1,
            entries: vec![],
            torn_bytes: 0
        }
    );
    (dir, path, journal)
}

fn reopen(path: &Path) -> (Journal, Recovered) {
    Journal::open(path, CAP).unwrap()
}

/// Append and sync one group.
fn put(journal: &mut Journal, entries: &[Entry]) {
    journal.append(entries).unwrap();
    journal.sync().unwrap();
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

#[test]
fn every_entry_kind_round_trips() {
    let (_dir, path, mut journal) = fresh(CAP);
    let first = vec![
        Entry::Row(JournalRow {
            bucket: 0,
            source: 0,
            ts: 0,
            seq: 0,
            origin: 0,
            vals: String::new(),
            meta: None,
        }),
        Entry::Row(JournalRow {
            bucket: i64::MIN,
            source: i64::MAX,
            ts: i64::MIN,
            seq: -1,
            origin: i64::MIN,
            vals: r#"{"température":"21 °C 🌡"}"#.into(),
            meta: Some(String::new()),
        }),
        Entry::Row(JournalRow {
            bucket: -7,
            source: 3,
            ts: i64::MAX,
            seq: i64::MIN,
            origin: 1,
            vals: TYPICAL_VALS.into(),
            meta: Some(r#"{"topic":"капля/1"}"#.into()),
        }),
        Entry::Mark {
            bucket: 0,
            up_to: i64::MAX,
        },
        Entry::Count {
            bucket: 1,
            name: String::new(),
            delta: i64::MIN,
        },
    ];
    let second = vec![
        Entry::Mark {
            bucket: -1,
            up_to: -42,
        },
        Entry::Count {
            bucket: i64::MAX,
            name: "rejected_ünï".into(),
            delta: -5,
        },
    ];
    journal.append(&first).unwrap();
    journal.append(&second).unwrap();
    journal.sync().unwrap();
    let all: Vec<Entry> = first.into_iter().chain(second).collect();
    let scanned = Journal::scan(&path).unwrap().unwrap();
    assert_eq!(scanned.entries, all);
    drop(journal);
    let (_, recovered) = reopen(&path);
    assert_eq!(
        recovered,
        Recovered {
            epoch: 1,
            entries: all,
            torn_bytes: 0
        }
    );
}

#[test]
fn reopen_sees_synced_groups_in_order_and_appends_after_them() {
    let (_dir, path, mut journal) = fresh(CAP);
    let mut expected = Vec::new();
    let mut next = 0;
    for n in 1..=10 {
        put(&mut journal, &rows(next, n));
        expected.extend(rows(next, n));
        next += n;
    }
    let used = journal.used();
    drop(journal);
    let (mut journal, recovered) = reopen(&path);
    assert_eq!(recovered.entries, expected);
    assert_eq!(recovered.torn_bytes, 0);
    assert_eq!(journal.used(), used);
    put(&mut journal, &rows(next, 3));
    expected.extend(rows(next, 3));
    drop(journal);
    assert_eq!(reopen(&path).1.entries, expected);
}

#[test]
fn pending_without_sync_is_not_recovered() {
    let (_dir, path, mut journal) = fresh(CAP);
    put(&mut journal, &rows(0, 2));
    journal.append(&rows(2, 5)).unwrap();
    assert!(journal.used() > 0);
    drop(journal);
    let (_, recovered) = reopen(&path);
    assert_eq!(recovered.entries, rows(0, 2));
    assert_eq!(recovered.torn_bytes, 0);
}

#[test]
fn discard_pending_forgets_the_group() {
    let (_dir, path, mut journal) = fresh(CAP);
    put(&mut journal, &rows(0, 2));
    let used = journal.used();
    journal.append(&rows(100, 4)).unwrap();
    assert!(journal.used() > used);
    journal.discard_pending();
    assert_eq!(journal.used(), used);
    journal.sync().unwrap(); // nothing pending: no-op
    put(&mut journal, &rows(2, 1));
    drop(journal);
    let mut expected = rows(0, 2);
    expected.extend(rows(2, 1));
    assert_eq!(reopen(&path).1.entries, expected);
}

#[test]
fn full_adds_nothing_and_leaves_the_journal_usable() {
    let (_dir, path, mut journal) = fresh(4096);
    let too_big = rows(0, 5_000); // compressed too
    match journal.append(&too_big) {
        Err(JournalError::Full { need, room }) => assert!(need > room && room == 4096 - FRAME),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(journal.used(), 0);
    let mut synced = Vec::new();
    let mut i = 0;
    let (need, room) = loop {
        let used = journal.used();
        match journal.append(&[Entry::Mark {
            bucket: 1,
            up_to: i,
        }]) {
            Ok(()) => {
                // A sync takes the rest of its page: a few per page.
                if i % 25 == 24 {
                    journal.sync().unwrap();
                }
                synced.push(Entry::Mark {
                    bucket: 1,
                    up_to: i,
                });
                i += 1;
            }
            Err(JournalError::Full { need, room }) => {
                assert_eq!(journal.used(), used, "a refused append adds nothing");
                break (need, room);
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(need > room);
    assert_eq!(room, journal.room());
    journal.sync().unwrap();
    drop(journal);
    let (mut journal, recovered) = Journal::open(&path, 4096).unwrap();
    assert_eq!(recovered.entries, synced);
    assert_eq!(recovered.torn_bytes, 0);
    journal.reset().unwrap();
    put(&mut journal, &rows(0, 1));
    drop(journal);
    assert_eq!(Journal::open(&path, 4096).unwrap().1.entries, rows(0, 1));
}

#[test]
fn reset_ignores_the_old_records_beyond_the_new_tail() {
    let (_dir, path, mut journal) = fresh(CAP);
    for g in 0..5 {
        put(&mut journal, &rows(g * 20, 20));
    }
    journal.reset().unwrap();
    assert_eq!((journal.epoch(), journal.used()), (2, 0));
    drop(journal);
    // Nothing written in the new epoch: the old records are not read back.
    let (mut journal, recovered) = reopen(&path);
    assert_eq!(
        recovered,
        Recovered {
            epoch: 2,
            entries: vec![],
            torn_bytes: 0
        }
    );
    let mark = Entry::Mark {
        bucket: 3,
        up_to: 99,
    };
    put(&mut journal, std::slice::from_ref(&mark));
    drop(journal);
    let (journal, recovered) = reopen(&path);
    assert_eq!(
        recovered,
        Recovered {
            epoch: 2,
            entries: vec![mark],
            torn_bytes: 0
        }
    );
    assert_eq!(journal.epoch(), 2);
}

#[test]
fn pending_records_move_to_the_new_epoch_on_reset() {
    let (_dir, path, mut journal) = fresh(CAP);
    put(&mut journal, &rows(0, 3));
    journal.append(&rows(3, 2)).unwrap();
    journal.reset().unwrap();
    journal.sync().unwrap();
    drop(journal);
    let (_, recovered) = reopen(&path);
    assert_eq!((recovered.epoch, recovered.entries), (2, rows(3, 2)));
}

#[test]
fn a_reset_torn_after_its_first_header_copy_starts_the_new_epoch() {
    let (_dir, path, mut journal) = fresh(CAP);
    put(&mut journal, &rows(0, 3));
    drop(journal);
    patch(
        &path,
        0,
        &encode_header(Header {
            epoch: 2,
            capacity: CAP,
            version: VERSION,
        }),
    );
    let (mut journal, recovered) = reopen(&path);
    assert_eq!(
        recovered,
        Recovered {
            epoch: 2,
            entries: vec![],
            torn_bytes: 0
        }
    );
    put(&mut journal, &rows(10, 1));
    drop(journal);
    assert_eq!(reopen(&path).1.entries, rows(10, 1));
}

#[test]
fn a_flipped_byte_in_the_last_record_keeps_the_earlier_ones() {
    let (_dir, path, mut journal) = fresh(CAP);
    put(&mut journal, &rows(0, 2));
    put(&mut journal, &rows(2, 2));
    let good = journal.used();
    put(&mut journal, &rows(4, 2));
    drop(journal);
    let file = std::fs::read(&path).unwrap();
    let at = AREA + good + 20;
    patch(&path, at, &[file[at as usize] ^ 0x40]);
    let (mut journal, recovered) = reopen(&path);
    assert_eq!(recovered.entries, rows(0, 4));
    assert!(recovered.torn_bytes > 0);
    assert_eq!(journal.used(), good);
    // The next group overwrites the torn one.
    put(&mut journal, &rows(50, 1));
    drop(journal);
    let (_, recovered) = reopen(&path);
    let mut expected = rows(0, 4);
    expected.extend(rows(50, 1));
    assert_eq!((recovered.entries, recovered.torn_bytes), (expected, 0));
}

#[test]
fn a_truncated_last_record_keeps_the_earlier_ones_and_the_file_is_grown_back() {
    let (_dir, path, mut journal) = fresh(CAP);
    put(&mut journal, &rows(0, 3));
    let good = journal.used();
    put(&mut journal, &rows(3, 3));
    drop(journal);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(AREA + good + 30).unwrap();
    drop(file);
    let (journal, recovered) = reopen(&path);
    assert_eq!(recovered.entries, rows(0, 3));
    assert!(recovered.torn_bytes > 0);
    assert_eq!(journal.used(), good);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), AREA + CAP);
}

#[test]
fn a_damaged_header_copy_a_leaves_copy_b() {
    let (_dir, path, mut journal) = fresh(CAP);
    put(&mut journal, &rows(0, 3));
    journal.reset().unwrap();
    put(&mut journal, &rows(3, 2));
    drop(journal);
    patch(&path, 0, &[0xAB; HEADER_LEN]);
    let recovered = Journal::scan(&path).unwrap().unwrap();
    assert_eq!((recovered.epoch, recovered.entries), (2, rows(3, 2)));
    let (mut journal, recovered) = reopen(&path);
    assert_eq!((recovered.epoch, recovered.entries), (2, rows(3, 2)));
    // The next reset rewrites copy A first, then B: both valid again.
    journal.reset().unwrap();
    drop(journal);
    let bytes = std::fs::read(&path).unwrap();
    for copy in 0..2 {
        let at = copy * PAGE as usize;
        let header = decode_header(bytes[at..at + HEADER_LEN].try_into().unwrap());
        assert_eq!(
            header,
            Ok(Some(Header {
                epoch: 3,
                capacity: CAP,
                version: VERSION,
            }))
        );
    }
}

#[test]
fn no_valid_header_is_corrupt_naming_the_path() {
    let (_dir, path, journal) = fresh(CAP);
    drop(journal);
    patch(&path, 0, &[0xAB; HEADER_LEN]);
    patch(&path, PAGE, &[0; HEADER_LEN]);
    for result in [
        Journal::open(&path, CAP).map(|_| ()),
        Journal::scan(&path).map(|_| ()),
    ] {
        match result {
            Err(JournalError::Corrupt(msg)) => {
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                assert!(msg.contains("header"), "{msg}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    let other = path.with_file_name("notes.txt");
    std::fs::write(&other, "hello").unwrap();
    assert!(matches!(
        Journal::open(&other, CAP),
        Err(JournalError::Corrupt(_))
    ));
}

#[test]
fn random_garbage_in_the_record_area_stops_the_scan_cleanly() {
    for seed in 0..16u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (_dir, path, mut journal) = fresh(CAP);
        let keep = seed % 2 == 0;
        if keep {
            put(&mut journal, &rows(0, 2));
        }
        let tail = journal.used();
        drop(journal);
        let mut garbage = vec![0u8; rng.random_range(1..=16 * 1024)];
        rng.fill_bytes(&mut garbage);
        garbage[0] |= 1; // a non-zero length byte: garbage, not a clean end
        patch(&path, AREA + tail, &garbage);
        let (journal, recovered) = reopen(&path);
        let expected = if keep { rows(0, 2) } else { vec![] };
        assert_eq!(recovered.entries, expected, "seed {seed}");
        assert!(recovered.torn_bytes > 0, "seed {seed}");
        assert_eq!(journal.used(), tail, "seed {seed}");
    }
}

#[test]
fn a_record_with_a_valid_crc_and_a_garbage_body_stops_the_scan() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20_000 {
        let mut body = vec![0u8; rng.random_range(0..48)];
        rng.fill_bytes(&mut body);
        if let Some(b) = body.first_mut() {
            *b = rng.random_range(0..5); // mostly known kinds: reach the field decoders
        }
        let _ = decode_body(&body, 1); // must not panic
        let _ = decode_body(&body, 2);
    }
    let (_dir, path, mut journal) = fresh(CAP);
    put(&mut journal, &rows(0, 1));
    let tail = journal.used();
    drop(journal);
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend([KIND_ROW, 0xff, 0xff]); // a varint that runs off the end
    let mut record = (body.len() as u32).to_le_bytes().to_vec();
    record.extend(CRC32C.checksum(&body).to_le_bytes());
    record.extend(&body);
    patch(&path, AREA + tail, &record);
    let (journal, recovered) = reopen(&path);
    assert_eq!(recovered.entries, rows(0, 1));
    assert!(recovered.torn_bytes > 0);
    assert_eq!(journal.used(), tail);
}

#[test]
fn scan_sees_what_an_open_journal_synced() {
    let (dir, path, mut journal) = fresh(CAP);
    assert_eq!(Journal::scan(&dir.path().join("missing")).unwrap(), None);
    put(&mut journal, &rows(0, 3));
    journal.append(&rows(3, 3)).unwrap();
    let recovered = Journal::scan(&path).unwrap().unwrap();
    assert_eq!(
        recovered,
        Recovered {
            epoch: 1,
            entries: rows(0, 3),
            torn_bytes: 0
        }
    );
    journal.sync().unwrap();
    assert_eq!(Journal::scan(&path).unwrap().unwrap().entries, rows(0, 6));
}

#[test]
fn a_new_file_is_preallocated_and_an_old_one_keeps_or_grows_its_capacity() {
    let (dir, path, mut journal) = fresh(CAP);
    assert_eq!(
        (journal.capacity(), journal.room(), journal.used()),
        (CAP, CAP - FRAME, 0)
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), AREA + CAP);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["inbox.journal"], "no temporary file left behind");
    put(&mut journal, &rows(0, 2));
    drop(journal);
    let (journal, recovered) = Journal::open(&path, 3 * CAP).unwrap();
    assert_eq!(recovered.entries, rows(0, 2));
    assert_eq!(journal.capacity(), 3 * CAP);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), AREA + 3 * CAP);
    drop(journal);
    let (journal, recovered) = Journal::open(&path, CAP).unwrap();
    assert_eq!(
        (journal.capacity(), recovered.entries),
        (3 * CAP, rows(0, 2))
    );
}

#[test]
fn a_typical_reading_costs_a_few_bytes_beyond_its_values() {
    let (_dir, _path, mut journal) = fresh(CAP);
    let typical = |i: i64| {
        Entry::Row(JournalRow {
            bucket: 1,
            source: 2,
            ts: 1_765_000_000_123 + i * 100,
            seq: 12_345 + i,
            origin: 0,
            vals: TYPICAL_VALS.into(),
            meta: None,
        })
    };
    journal.append(&[typical(0)]).unwrap();
    let single = journal.used();
    journal.discard_pending();
    journal
        .append(&(0..20).map(typical).collect::<Vec<_>>())
        .unwrap();
    let group = journal.used();
    let vals = TYPICAL_VALS.len() as u64;
    // One row alone (too small to compress): frame 8 + epoch 8, codec 1,
    // kind 1, bucket 1, source 1, ts 6, seq 3, origin 1, vals length 1,
    // meta 1, then the values.
    assert_eq!(single, 17 + 15 + vals);
    // In a group of 20, ts and seq are differences (2 and 1 bytes): 9 bytes
    // + vals per row after the first — before compression, which the same
    // values repeated make much smaller.
    assert!(group < (17 + (15 + vals) + 19 * (9 + vals)) / 4, "{group}");
}

#[test]
fn a_group_of_real_looking_readings_is_compressed_and_read_back() {
    let (_dir, path, mut journal) = fresh(CAP);
    // What the wear bench publishes: a counter, a microsecond time, the
    // device in the metadata; 100 readings over 32 data sources.
    let group: Vec<Entry> = (0..100i64)
        .map(|i| {
            Entry::Row(JournalRow {
                bucket: 1,
                source: 2 + i % 32,
                ts: 1_765_000_000_123 + i,
                seq: 40_000 + i,
                origin: 0,
                vals: format!(
                    r#"{{"n":{},"pub_us":{}}}"#,
                    7_000 + i,
                    1_765_000_000_123_456 + i * 997
                ),
                meta: Some(format!(r#"{{"deviceId":"dev{}"}}"#, i % 8)),
            })
        })
        .collect();
    let mut plain = Vec::new();
    record::encode_record(1, &group, &mut plain, false);
    put(&mut journal, &group);
    let mut packed = Vec::new();
    record::encode_record(1, &group, &mut packed, true);
    assert!(
        packed.len() * 2 < plain.len(),
        "{} bytes compressed, {} plain",
        packed.len(),
        plain.len()
    );
    drop(journal);
    assert_eq!(reopen(&path).1.entries, group);
}

/// Bytes this thread has dirtied in the page cache (`/proc/thread-self/io`:
/// per thread, so tests running in parallel do not count).
fn write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/thread-self/io").ok()?;
    let line = io.lines().find(|l| l.starts_with("write_bytes:"))?;
    line["write_bytes:".len()..].trim().parse().ok()
}

#[test]
fn a_small_group_dirties_one_page_of_its_own() {
    if write_bytes().is_none() {
        eprintln!("skipped: no /proc/thread-self/io");
        return;
    }
    let cap = 4 << 20;
    let (_dir, path, mut journal) = fresh(cap);
    put(&mut journal, &rows(0, 20));
    drop(journal);
    // Rewrite the file in one big write (same bytes): the page cache now
    // holds large folios of it. The open must drop them, or every group
    // would dirty (and write back) a whole folio, up to 2 MiB.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, AREA + cap);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    drop_page_cache(&file); // else the write reuses the small folios cached
    file.write_all_at(&bytes, 0).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let (mut journal, _) = Journal::open(&path, cap).unwrap();
    let before = write_bytes().unwrap();
    for g in 1..=100 {
        put(&mut journal, &rows(g * 20, 20));
    }
    let dirtied = write_bytes().unwrap() - before;
    eprintln!("100 groups of 20 rows dirtied {dirtied} bytes");
    // A page per group (20 rows are ~1.3 KiB): groups that shared pages
    // dirtied ~1.35 each (the page the previous one ended in, again).
    assert!(dirtied <= 100 * 4096, "100 groups dirtied {dirtied} bytes");
    drop(journal);
    assert_eq!(reopen(&path).1.entries.len(), 101 * 20);
}

#[test]
fn every_sync_starts_at_a_page_boundary_and_the_marks_are_followed() {
    let (_dir, path, mut journal) = fresh(CAP);
    let mut expected = Vec::new();
    // Groups of every size around a page: ending mid-page (a mark), in
    // the last 8 bytes of a page (no room for a mark: implied), exactly
    // at a boundary, across several pages.
    for (g, n) in [1, 3, 60, 61, 62, 63, 64, 65, 130, 1, 2]
        .into_iter()
        .enumerate()
    {
        let group = rows(g as i64 * 1000, n);
        put(&mut journal, &group);
        expected.extend(group);
        assert_eq!(journal.used() % PAGE, 0, "group {g} of {n} rows");
    }
    // One group that ends 1 to 7 bytes short of a boundary (no room for
    // a mark), found by trying state values of growing size.
    let mut short = false;
    for extra in 0..PAGE as i64 {
        // Letters that do not compress: the record grows a byte a step.
        let mut rng = StdRng::seed_from_u64(3);
        let value = (0..extra)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect();
        let group = [Entry::State {
            key: "k".into(),
            value,
        }];
        let mut probe = Vec::new();
        record::encode_record(1, &group, &mut probe, true);
        let left = PAGE - probe.len() as u64 % PAGE;
        if (1..FRAME).contains(&left) {
            put(&mut journal, &group);
            expected.extend(group);
            short = true;
            break;
        }
    }
    assert!(short);
    put(&mut journal, &rows(9000, 2));
    expected.extend(rows(9000, 2));
    let before = journal.used();
    drop(journal);
    let (journal, recovered) = reopen(&path);
    assert_eq!(recovered.entries, expected);
    assert_eq!(recovered.torn_bytes, 0);
    assert_eq!(journal.used(), before, "the scan ends where the writer did");
}

#[test]
fn a_version_1_journal_is_read_and_its_next_epoch_is_version_2() {
    let (_dir, path, mut journal) = fresh(CAP);
    // What the previous release left: groups sharing pages, a version 1
    // header.
    journal.version = 1;
    journal.write_both_headers().unwrap();
    for g in 0..5 {
        put(&mut journal, &rows(g * 10, 10));
    }
    assert_ne!(journal.used() % PAGE, 0, "version 1 groups share pages");
    drop(journal);
    let (mut journal, recovered) = reopen(&path);
    assert_eq!((recovered.entries, journal.version), (rows(0, 50), 1));
    put(&mut journal, &rows(50, 3));
    drop(journal);
    let (mut journal, recovered) = reopen(&path);
    assert_eq!(recovered.entries, rows(0, 53));
    journal.reset().unwrap();
    put(&mut journal, &rows(100, 3));
    assert_eq!(journal.used(), PAGE);
    drop(journal);
    let (journal, recovered) = reopen(&path);
    assert_eq!(
        (recovered.entries, journal.version),
        (rows(100, 3), VERSION)
    );
}
