//! The inbox journal's record codec: a group of entries to one record
//! (frame, epoch, entries as varints) and back, without I/O. Decoding never
//! panics on malformed bytes: it returns `None` and the scan stops there.
//!
//! Format version 2 puts a codec byte after the epoch: [`PLAIN`] (the
//! entries follow) or [`LZ4`] (an LZ4 block of the entries, its size
//! first), whichever is smaller. A record of 100 readings with JSON values
//! and metadata shrinks about 3×; a single small reading stays plain.
//! Version 1 bodies are the entries right after the epoch.

use super::{Entry, JournalRow, FRAME};

pub(super) const KIND_ROW: u8 = 1;
const KIND_MARK: u8 = 2;
const KIND_COUNT: u8 = 3;
const KIND_STATE: u8 = 4;

/// Version 2 codec bytes.
const PLAIN: u8 = 0;
const LZ4: u8 = 1;
/// Entries shorter than this are not worth compressing.
const COMPRESS_FROM: usize = 128;
/// Nor longer: a group of large readings (megabytes of API points) is
/// written as it is rather than held a second time, compressed.
const COMPRESS_UP_TO: usize = 1 << 20;
/// A decoded record's entries at most (an LZ4 size field beyond it is
/// damage that the CRC did not catch, not an allocation to make).
const MAX_ENTRIES_BYTES: usize = 256 << 20;

/// CRC-32C (Castagnoli) of record bodies and header copies.
pub(super) const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Give every record of `pending` the epoch `epoch` (and its new CRC).
pub(super) fn restamp(pending: &mut [u8], epoch: u64) {
    let mut pos = 0;
    while pos < pending.len() {
        let len = u32::from_le_bytes(pending[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let body = &mut pending[pos + 8..pos + 8 + len];
        body[..8].copy_from_slice(&epoch.to_le_bytes());
        let crc = CRC32C.checksum(body);
        pending[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos += 8 + len;
    }
}

fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Append one record (frame + body) holding `entries` to `out`, with the
/// codec byte of format version 2 when `v2`.
pub(super) fn encode_record(epoch: u64, entries: &[Entry], out: &mut Vec<u8>, v2: bool) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME as usize]);
    out.extend_from_slice(&epoch.to_le_bytes());
    if v2 {
        let codec = out.len();
        out.push(PLAIN);
        encode_entries(entries, out);
        let plain = &out[codec + 1..];
        let packed = (COMPRESS_FROM..=COMPRESS_UP_TO)
            .contains(&plain.len())
            .then(|| lz4_flex::block::compress_prepend_size(plain))
            .filter(|p| p.len() < plain.len());
        if let Some(p) = packed {
            out.truncate(codec);
            out.push(LZ4);
            out.extend_from_slice(&p);
        }
    } else {
        encode_entries(entries, out);
    }
    // Checked against u32::MAX by `append`.
    let len = (out.len() - start - FRAME as usize) as u32;
    let crc = CRC32C.checksum(&out[start + FRAME as usize..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The entries as varints and strings.
fn encode_entries(entries: &[Entry], out: &mut Vec<u8>) {
    let (mut ts, mut seq) = (0i64, 0i64);
    for entry in entries {
        match entry {
            Entry::Row(r) => {
                out.push(KIND_ROW);
                put_i64(out, r.bucket);
                put_i64(out, r.source);
                put_i64(out, r.ts.wrapping_sub(ts));
                put_i64(out, r.seq.wrapping_sub(seq));
                put_i64(out, r.origin);
                put_str(out, &r.vals);
                match &r.meta {
                    None => put_u64(out, 0),
                    Some(m) => {
                        put_u64(out, m.len() as u64 + 1);
                        out.extend_from_slice(m.as_bytes());
                    }
                }
                (ts, seq) = (r.ts, r.seq);
            }
            Entry::Mark { bucket, up_to } => {
                out.push(KIND_MARK);
                put_i64(out, *bucket);
                put_i64(out, *up_to);
            }
            Entry::Count {
                bucket,
                name,
                delta,
            } => {
                out.push(KIND_COUNT);
                put_i64(out, *bucket);
                put_str(out, name);
                put_i64(out, *delta);
            }
            Entry::State { key, value } => {
                out.push(KIND_STATE);
                put_str(out, key);
                put_str(out, value);
            }
        }
    }
}

/// Reads a record body; every method returns `None` on malformed input.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn i64(&mut self) -> Option<i64> {
        let v = self.u64()?;
        Some((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn bytes(&mut self, len: u64) -> Option<&'a [u8]> {
        let len = usize::try_from(len).ok()?;
        if len > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(head)
    }

    fn string(&mut self, len: u64) -> Option<String> {
        String::from_utf8(self.bytes(len)?.to_vec()).ok()
    }
}

/// The entries of a record body (after the epoch) of format `version`;
/// `None` if malformed.
pub(super) fn decode_body(body: &[u8], version: u32) -> Option<Vec<Entry>> {
    if version < 2 {
        return decode_entries(body);
    }
    let (&codec, rest) = body.split_first()?;
    match codec {
        PLAIN => decode_entries(rest),
        LZ4 => {
            let (size, _) = lz4_flex::block::uncompressed_size(rest).ok()?;
            if size > MAX_ENTRIES_BYTES {
                return None;
            }
            decode_entries(&lz4_flex::block::decompress_size_prepended(rest).ok()?)
        }
        _ => None,
    }
}

fn decode_entries(body: &[u8]) -> Option<Vec<Entry>> {
    let mut r = Reader { bytes: body };
    let mut entries = Vec::new();
    let (mut ts, mut seq) = (0i64, 0i64);
    while !r.bytes.is_empty() {
        let entry = match r.byte()? {
            KIND_ROW => {
                let bucket = r.i64()?;
                let source = r.i64()?;
                ts = ts.wrapping_add(r.i64()?);
                seq = seq.wrapping_add(r.i64()?);
                let origin = r.i64()?;
                let len = r.u64()?;
                let vals = r.string(len)?;
                let meta = match r.u64()? {
                    0 => None,
                    n => Some(r.string(n - 1)?),
                };
                Entry::Row(JournalRow {
                    bucket,
                    source,
                    ts,
                    seq,
                    origin,
                    vals,
                    meta,
                })
            }
            KIND_MARK => Entry::Mark {
                bucket: r.i64()?,
                up_to: r.i64()?,
            },
            KIND_COUNT => {
                let bucket = r.i64()?;
                let len = r.u64()?;
                let name = r.string(len)?;
                Entry::Count {
                    bucket,
                    name,
                    delta: r.i64()?,
                }
            }
            KIND_STATE => {
                let len = r.u64()?;
                let key = r.string(len)?;
                let len = r.u64()?;
                Entry::State {
                    key,
                    value: r.string(len)?,
                }
            }
            _ => return None,
        };
        entries.push(entry);
    }
    Some(entries)
}
