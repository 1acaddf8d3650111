//! The inbox journal: a preallocated, append-only file that is the durability
//! record of fresh readings until they are moved into SQLite.
//!
//! # Layout
//!
//! ```text
//! 0     header copy A   magic "DKINBOX1", version u32, epoch u64, capacity u64,
//!                       CRC-32C of those 28 bytes (all little-endian)
//! 4096  header copy B   the same
//! 8192  record area     `capacity` bytes: records, then zeros (or stale records)
//! ```
//!
//! A record is one `append` call (a group of entries, written and recovered
//! all or nothing): `u32` body length, `u32` CRC-32C of the body, body =
//! epoch `u64`, then per entry a kind byte and its fields as LEB128 varints
//! (signed ones zigzagged; a row's `ts` and `seq` as the difference from the
//! previous row of the record) and strings as length + UTF-8 bytes. The
//! codec (no I/O) is in `journal_record.rs`, the tests in `journal_tests.rs`.
//!
//! **Every sync starts on a page of its own** (format version 2): its
//! records begin at a 4 KiB boundary and end with a *page mark* (a frame of
//! length `u32::MAX` whose CRC field is the CRC-32C of the epoch) that says
//! "continue at the next boundary"; when fewer than 8 bytes are left in the
//! page, the next boundary is implied. So a sync writes only pages no
//! earlier sync wrote: a group of 20 small readings dirties one page, not
//! the 1.35 it did when groups shared pages (each sync rewrote the page the
//! previous one ended in), and a torn write can only damage its own group's
//! pages, never records synced before (issue 15: SD-card wear). The cost is
//! record-area capacity: up to a page per sync. Version 1 files (groups
//! share pages, no marks) are still read, and written the same way until
//! their next epoch, whose header says version 2.
//!
//! # Invariants
//!
//! - The file is preallocated (zeros written in 4 KiB `pwrite`s, never one
//!   big write and never `fallocate`, whose unwritten extents cost a metadata
//!   update at first write), so an append never changes the file's size and
//!   `fdatasync` flushes data pages only.
//! - The valid log is the run of records of the header's epoch from the start
//!   of the record area (following page marks) up to the first record that
//!   is not valid (length 0 or past the end, CRC mismatch, other epoch,
//!   undecodable). A record of an older epoch there is the clean end (what
//!   a reset left); anything else non-zero is a torn tail, counted for the
//!   log. (Version 1 wrote 8 zero bytes after each sync's records instead.)
//! - `reset` starts a new epoch by rewriting the header copies one at a time
//!   (the copy that is not current first, each followed by `fdatasync`): a
//!   torn header write leaves the other copy valid. Old records stay on disk
//!   and are ignored. If the reset does not complete, the old epoch (and its
//!   records) may come back: the caller's move into SQLite must tolerate
//!   seeing those entries again.
//! - A new file is built under `<path>.tmp` and renamed into place (then the
//!   directory is synced), so a crash during creation never leaves a
//!   half-written journal at `path`.
//! - After open, the page cache of the file is dropped (`POSIX_FADV_DONTNEED`):
//!   one big write (or readahead) may have created large folios, and
//!   dirtying one byte of a 2 MiB folio accounts (and writes back) the whole
//!   folio (measured: 100 groups dirty 200 MiB instead of 0.5 MiB).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"DKINBOX1";
/// The format new epochs are written in (1: groups share pages).
const VERSION: u32 = 2;
/// A frame length that is no record: the page mark of version 2.
const PAGE_MARK: u32 = u32::MAX;
const HEADER_LEN: usize = 32;
const PAGE: u64 = 4096;
/// Start of the record area (after the two header pages).
const AREA: u64 = 2 * PAGE;
/// Record frame: body length and body CRC.
const FRAME: u64 = 8;
/// Smallest body: the epoch and one kind byte.
const MIN_BODY: u64 = 9;
/// How much of the record area a scan reads at a time.
const READ_CHUNK: u64 = 256 * 1024;

#[path = "journal_record.rs"]
mod record;
#[cfg(test)]
use record::KIND_ROW;
use record::{decode_body, encode_record, restamp, CRC32C};

/// A reading as the journal keeps it (`bucket`/`source` are the store's keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalRow {
    pub bucket: i64,
    pub source: i64,
    pub ts: i64,
    pub seq: i64,
    pub origin: i64,
    pub vals: String,
    pub meta: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A reading.
    Row(JournalRow),
    /// A delivery mark: the bucket's cursor moved to `up_to`.
    Mark { bucket: i64, up_to: i64 },
    /// A ledger counter delta.
    Count {
        bucket: i64,
        name: String,
        delta: i64,
    },
    /// A small state value (`meta`), e.g. a serial port's last line time.
    State { key: String, value: String },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    #[error("inbox journal i/o: {0}")]
    Io(#[from] io::Error),
    #[error("inbox journal full: {need} bytes to append, {room} bytes of room")]
    Full { need: u64, room: u64 },
    #[error("inbox journal corrupt: {0}")]
    Corrupt(String),
}

/// What an open or a scan found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub epoch: u64,
    pub entries: Vec<Entry>,
    /// Bytes after the last valid record that were not zero: a torn tail
    /// (a group whose write did not complete), for a log line.
    pub torn_bytes: u64,
}

/// The open journal: the writer's handle (one per file).
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    epoch: u64,
    /// Record area size.
    capacity: u64,
    /// Record bytes written and synced, from the start of the record area.
    tail: u64,
    /// Encoded records appended but not written yet.
    pending: Vec<u8>,
    /// The header copy (0 or 1) written last; `reset` writes the other first.
    current: usize,
    /// The header's format version (a reset writes [`VERSION`]).
    version: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    epoch: u64,
    capacity: u64,
    version: u32,
}

impl Journal {
    /// Open or create the journal at `path`. A new file gets a record area of
    /// `capacity` bytes; an existing one keeps its own capacity, or is grown
    /// with zero pages when smaller than `capacity`.
    pub fn open(path: &Path, capacity: u64) -> Result<(Journal, Recovered), JournalError> {
        let len = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        if len == 0 {
            return Self::create(path, capacity);
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let (header, current) = read_headers(&file, path)?;
        let (recovered, tail) = scan_records(&file, len, header)?;
        let mut journal = Journal {
            file,
            epoch: header.epoch,
            capacity: header.capacity,
            tail,
            pending: Vec::new(),
            current,
            version: header.version,
        };
        let want = capacity.max(header.capacity);
        if len < AREA + want {
            write_zeros(&journal.file, len, AREA + want)?;
            journal.file.sync_all()?;
        }
        if want > header.capacity {
            journal.capacity = want;
            journal.write_both_headers()?;
        }
        drop_page_cache(&journal.file);
        Ok((journal, recovered))
    }

    /// Read-only scan of a journal another process may be writing (a
    /// snapshot: a group being written shows as a torn tail). Missing or
    /// empty file: `None`.
    pub fn scan(path: &Path) -> Result<Option<Recovered>, JournalError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(None);
        }
        let (header, _) = read_headers(&file, path)?;
        Ok(Some(scan_records(&file, len, header)?.0))
    }

    /// Encode `entries` as one record into the pending buffer (written by
    /// the next `sync`). `Full` when it would not fit; nothing is added then.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), JournalError> {
        if entries.is_empty() {
            return Ok(());
        }
        let room = self.room();
        let start = self.pending.len();
        encode_record(self.epoch, entries, &mut self.pending, self.version >= 2);
        let need = (self.pending.len() - start) as u64;
        if need > room || need - FRAME > u64::from(u32::MAX) {
            self.pending.truncate(start);
            return Err(JournalError::Full { need, room });
        }
        Ok(())
    }

    /// Write the pending records at the tail with one `pwrite` (followed by
    /// the zero terminator), then `fdatasync`. On error nothing advances: the
    /// caller retries or calls `discard_pending`.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.pending.len();
        let end = self.tail + n as u64;
        let next = if self.version >= 2 {
            // The page mark when it fits in the page; the next sync starts
            // at the next boundary either way.
            let boundary = end.div_ceil(PAGE) * PAGE;
            if boundary - end >= FRAME {
                self.pending.extend_from_slice(&PAGE_MARK.to_le_bytes());
                self.pending
                    .extend_from_slice(&CRC32C.checksum(&self.epoch.to_le_bytes()).to_le_bytes());
            }
            boundary.min(self.capacity)
        } else {
            let terminator = (self.capacity - end).min(FRAME) as usize;
            self.pending.resize(n + terminator, 0);
            end
        };
        let written = self.file.write_all_at(&self.pending, AREA + self.tail);
        self.pending.truncate(n);
        written?;
        self.file.sync_data()?;
        self.tail = next;
        self.pending.clear();
        Ok(())
    }

    /// Forget what was appended but not synced (a group that failed).
    pub fn discard_pending(&mut self) {
        self.pending.clear();
    }

    /// Start a new epoch: the records written so far are dropped (call it
    /// only once everything synced has been moved out). Pending records are
    /// kept and move to the new epoch.
    pub fn reset(&mut self) -> Result<(), JournalError> {
        let epoch = self.epoch + 1;
        let header = Header {
            epoch,
            capacity: self.capacity,
            version: VERSION,
        };
        let first = 1 - self.current;
        write_header(&self.file, first, header)?;
        self.file.sync_data()?;
        // Copy `first` now names the new epoch: so does the journal.
        self.epoch = epoch;
        self.tail = 0;
        self.current = first;
        self.version = VERSION;
        restamp(&mut self.pending, epoch);
        write_header(&self.file, 1 - first, header)?;
        self.file.sync_data()?;
        self.current = 1 - first;
        Ok(())
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Record bytes written plus pending.
    pub fn used(&self) -> u64 {
        self.tail + self.pending.len() as u64
    }

    /// Size of the record area.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// What `append` may still add (room for the page mark kept aside).
    pub fn room(&self) -> u64 {
        let mark = if self.version >= 2 { FRAME } else { 0 };
        self.capacity.saturating_sub(self.used() + mark)
    }

    fn create(path: &Path, capacity: u64) -> Result<(Journal, Recovered), JournalError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        if let Err(e) = write_zeros(&file, 0, AREA + capacity) {
            // A full disk: leave nothing behind that takes its space.
            drop(file);
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        let mut journal = Journal {
            file,
            epoch: 1,
            capacity,
            tail: 0,
            pending: Vec::new(),
            current: 1,
            version: VERSION,
        };
        journal.write_both_headers()?;
        std::fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
        drop_page_cache(&journal.file);
        let recovered = Recovered {
            epoch: journal.epoch,
            entries: Vec::new(),
            torn_bytes: 0,
        };
        Ok((journal, recovered))
    }

    /// Write both header copies with the journal's epoch and capacity, the
    /// one that is not current first, each followed by `fdatasync`.
    fn write_both_headers(&mut self) -> Result<(), JournalError> {
        let header = Header {
            epoch: self.epoch,
            capacity: self.capacity,
            version: self.version,
        };
        for copy in [1 - self.current, self.current] {
            write_header(&self.file, copy, header)?;
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// Write zeros over `[from, to)` in pwrites that never cross a 4 KiB page.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = [0u8; PAGE as usize];
    let mut at = from;
    while at < to {
        let end = ((at / PAGE + 1) * PAGE).min(to);
        file.write_all_at(&zeros[..(end - at) as usize], at)?;
        at = end;
    }
    Ok(())
}

/// Let later appends allocate small page-cache folios (see the module doc).
fn drop_page_cache(file: &File) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a file descriptor we own; advisory only,
        // so a failure changes nothing but the page-cache accounting.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = file;
}

fn encode_header(h: Header) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&h.version.to_le_bytes());
    b[12..20].copy_from_slice(&h.epoch.to_le_bytes());
    b[20..28].copy_from_slice(&h.capacity.to_le_bytes());
    let crc = CRC32C.checksum(&b[..28]);
    b[28..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn write_header(file: &File, copy: usize, h: Header) -> io::Result<()> {
    file.write_all_at(&encode_header(h), copy as u64 * PAGE)
}

/// A header copy: `Ok(None)` when not valid (no magic, CRC mismatch),
/// `Err(version)` for a valid copy of a format this build does not read.
fn decode_header(b: &[u8; HEADER_LEN]) -> Result<Option<Header>, u32> {
    let crc = u32::from_le_bytes(b[28..].try_into().expect("4 bytes"));
    if &b[..8] != MAGIC || CRC32C.checksum(&b[..28]) != crc {
        return Ok(None);
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if !(1..=VERSION).contains(&version) {
        return Err(version);
    }
    Ok(Some(Header {
        epoch: u64::from_le_bytes(b[12..20].try_into().expect("8 bytes")),
        capacity: u64::from_le_bytes(b[20..28].try_into().expect("8 bytes")),
        version,
    }))
}

/// The valid header copy with the highest epoch (ties: the larger capacity,
/// written after its zero pages), and which copy it is.
fn read_headers(file: &File, path: &Path) -> Result<(Header, usize), JournalError> {
    let mut best: Option<(Header, usize)> = None;
    for copy in 0..2 {
        let mut b = [0u8; HEADER_LEN];
        read_at_zero_filled(file, &mut b, copy as u64 * PAGE)?;
        let header = decode_header(&b).map_err(|v| {
            JournalError::Corrupt(format!(
                "{}: journal format version {v} is not supported (this build reads version {VERSION})",
                path.display()
            ))
        })?;
        if let Some(h) = header {
            if best.is_none_or(|(b, _)| (h.epoch, h.capacity) > (b.epoch, b.capacity)) {
                best = Some((h, copy));
            }
        }
    }
    best.ok_or_else(|| {
        JournalError::Corrupt(format!(
            "{}: not an inbox journal, or both header copies are damaged (no valid header at offset 0 or 4096)",
            path.display()
        ))
    })
}

/// `read_exact_at` that reads zeros past the end of the file.
fn read_at_zero_filled(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// The record area, read from the file on demand (bytes past the end of a
/// short file read as zeros).
struct Area<'a> {
    file: &'a File,
    capacity: u64,
    bytes: Vec<u8>,
}

impl Area<'_> {
    /// Make `bytes` cover `[0, min(upto, capacity))`.
    fn fill(&mut self, upto: u64) -> io::Result<()> {
        let have = self.bytes.len() as u64;
        if upto <= have || have >= self.capacity {
            return Ok(());
        }
        let target = upto.max(have + READ_CHUNK).min(self.capacity);
        self.bytes.resize(target as usize, 0);
        read_at_zero_filled(self.file, &mut self.bytes[have as usize..], AREA + have)
    }

    fn slice(&mut self, from: u64, to: u64) -> io::Result<&[u8]> {
        self.fill(to)?;
        Ok(&self.bytes[from as usize..to as usize])
    }
}

/// Scan the records of `header.epoch`; returns what was found and the tail.
fn scan_records(file: &File, file_len: u64, header: Header) -> io::Result<(Recovered, u64)> {
    let capacity = header.capacity;
    let mut area = Area {
        file,
        capacity,
        bytes: Vec::with_capacity(file_len.saturating_sub(AREA).min(READ_CHUNK) as usize),
    };
    let mut entries = Vec::new();
    let mut pos = 0u64;
    let marks = header.version >= 2;
    let mark_crc = CRC32C.checksum(&header.epoch.to_le_bytes());
    let torn_bytes = loop {
        if marks && PAGE - pos % PAGE < FRAME {
            // No frame fits in the rest of the page: the next boundary.
            pos = pos.div_ceil(PAGE) * PAGE;
        }
        if pos + FRAME > capacity {
            break 0;
        }
        let frame = area.slice(pos, pos + FRAME)?;
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        if marks && len == PAGE_MARK {
            if crc != mark_crc {
                break 0; // an older epoch's mark: the clean end after a reset
            }
            pos = (pos / PAGE + 1) * PAGE;
            continue;
        }
        let len = u64::from(len);
        if len == 0 {
            break 0;
        }
        let end = pos + FRAME + len;
        if len < MIN_BODY || end > capacity {
            break torn_extent(&mut area, pos)?;
        }
        let body = area.slice(pos + FRAME, end)?;
        let epoch = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let crc_ok = CRC32C.checksum(body) == crc;
        if crc_ok && epoch < header.epoch {
            break 0; // a stale record of an older epoch: the clean end after a reset
        }
        let decoded = if crc_ok && epoch == header.epoch {
            decode_body(&body[8..], header.version)
        } else {
            None
        };
        match decoded {
            Some(mut group) => entries.append(&mut group),
            None => break nonzero(area.slice(pos, end)?),
        }
        pos = end;
    };
    let recovered = Recovered {
        epoch: header.epoch,
        entries,
        torn_bytes,
    };
    Ok((recovered, pos))
}

/// Non-zero bytes of a tail whose length field is not plausible: up to the
/// next 8 zero bytes (a terminator), at most 64 KiB.
fn torn_extent(area: &mut Area<'_>, pos: u64) -> io::Result<u64> {
    let end = (pos + 64 * 1024).min(area.capacity);
    let bytes = area.slice(pos, end)?;
    let mut count = 0;
    let mut zero_run = 0;
    for &b in bytes {
        if b == 0 {
            zero_run += 1;
            if zero_run == FRAME {
                break;
            }
        } else {
            zero_run = 0;
            count += 1;
        }
    }
    Ok(count)
}

fn nonzero(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b != 0).count() as u64
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
