//! What the stand-in remembers: accepted points (in full mode), per-bucket
//! counters with order checks on the gateway's `metadata.readingId`, and a
//! log of every request. Keys never appear here, only a short prefix.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Map, Value};

use dakkio_gateway::dakkio::parse_reading_id;

/// How much of each accepted point is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordMode {
    /// Keep every accepted point ([`AcceptedPoint`]) plus the counters.
    #[default]
    Full,
    /// Keep only counters and order checks per bucket: no per-point
    /// allocation, for benchmarks that push millions of points.
    Counts,
}

/// One point the stand-in answered 2xx for, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedPoint {
    /// [`RequestRecord::seq`] of the request that carried it.
    pub request: u64,
    pub bucket_id: String,
    pub data_source_id: String,
    /// The timestamp as sent, if any.
    pub timestamp: Option<String>,
    /// The sent timestamp in Unix milliseconds, or the arrival time.
    pub timestamp_ms: i64,
    pub values: Map<String, Value>,
    pub metadata: Option<Map<String, Value>>,
}

impl AcceptedPoint {
    /// `metadata.readingId` as an integer (see `parse_reading_id`).
    pub fn reading_id(&self) -> Option<i64> {
        match self.metadata.as_ref()?.get("readingId")? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => parse_reading_id(s),
            _ => None,
        }
    }
}

/// Counters for one bucket, kept in every [`RecordMode`].
///
/// Order is judged on `metadata.readingId` (integers, digit strings, or the
/// gateway's 24-hex ids),
/// the gateway's stable per-reading id. A point whose id was seen before is a
/// duplicate (an at-least-once redelivery); a new id below the highest seen is
/// out of order (a gap filled late — a delivery-order bug unless the gap was a
/// point dead-lettered and retried).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketStats {
    /// Points accepted, duplicates included.
    pub accepted: u64,
    /// Distinct reading ids accepted.
    pub distinct: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Accepted points with no usable `metadata.readingId`.
    pub without_reading_id: u64,
    pub max_reading_id: Option<i64>,
}

/// [`BucketStats`] plus the set of reading ids seen, stored as disjoint
/// inclusive ranges: ids from one gateway are nearly contiguous, so this
/// stays a handful of entries even for millions of points.
#[derive(Debug, Default)]
pub(crate) struct BucketTracker {
    pub stats: BucketStats,
    seen: BTreeMap<i64, i64>,
}

impl BucketTracker {
    pub fn record(&mut self, reading_id: Option<i64>) {
        self.stats.accepted += 1;
        let Some(id) = reading_id else {
            self.stats.without_reading_id += 1;
            return;
        };
        if !self.insert(id) {
            self.stats.duplicates += 1;
            return;
        }
        self.stats.distinct += 1;
        match self.stats.max_reading_id {
            Some(max) if id < max => self.stats.out_of_order += 1,
            _ => self.stats.max_reading_id = Some(id),
        }
    }

    /// Add `id` to the range set; false if it was already there.
    fn insert(&mut self, id: i64) -> bool {
        let left = self.seen.range(..=id).next_back().map(|(&s, &e)| (s, e));
        if let Some((_, end)) = left {
            if end >= id {
                return false;
            }
        }
        let right_end = id.checked_add(1).and_then(|next| self.seen.remove(&next));
        let end = right_end.unwrap_or(id);
        match left {
            Some((start, left_end)) if left_end.checked_add(1) == Some(id) => {
                self.seen.insert(start, end);
            }
            _ => {
                self.seen.insert(id, end);
            }
        }
        true
    }

    #[cfg(test)]
    fn ranges(&self) -> Vec<(i64, i64)> {
        self.seen.iter().map(|(&s, &e)| (s, e)).collect()
    }
}

/// How the stand-in dealt with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP response with this status.
    Status(u16),
    /// Scripted: the connection was closed without a response.
    Dropped,
    /// Scripted: the connection was reset (RST, `SO_LINGER` 0).
    Reset,
    /// Scripted: never answered (recorded when the stall began).
    Stalled,
}

/// One request, as the request log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// 1-based arrival number, across restarts.
    pub seq: u64,
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    /// The body's `bucketId` when it could be read.
    pub bucket_id: Option<String>,
    /// At most the first 12 characters (and at most half) of the key sent.
    pub key_prefix: Option<String>,
    /// Points in the body (0 if it could not be parsed).
    pub points: usize,
    pub answer: Answer,
    /// True when a scripted or sticky behaviour decided the answer.
    pub scripted: bool,
    /// The error body's `message` for non-2xx answers.
    pub message: Option<String>,
}

impl RequestRecord {
    pub fn status(&self) -> Option<u16> {
        match self.answer {
            Answer::Status(s) => Some(s),
            _ => None,
        }
    }
}

/// The part of a key that may be shown: dakkio lists keys by a 12-character
/// prefix; never more than half of whatever was sent.
pub(crate) fn key_prefix(key: &str) -> String {
    let n = 12.min(key.chars().count() / 2);
    key.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_duplicates_and_reordering() {
        let mut t = BucketTracker::default();
        for id in [1, 2, 3, 5, 4, 3, 9, 10, 8] {
            t.record(Some(id));
        }
        t.record(None);
        assert_eq!(
            t.stats,
            BucketStats {
                accepted: 10,
                distinct: 8,
                duplicates: 1,
                out_of_order: 2,
                without_reading_id: 1,
                max_reading_id: Some(10),
            }
        );
        assert_eq!(t.ranges(), vec![(1, 5), (8, 10)]);
    }

    #[test]
    fn tracker_merges_ranges_both_sides() {
        let mut t = BucketTracker::default();
        for id in [10, 12, 11, i64::MAX, i64::MIN] {
            t.record(Some(id));
        }
        assert_eq!(
            t.ranges(),
            vec![(i64::MIN, i64::MIN), (10, 12), (i64::MAX, i64::MAX)]
        );
    }

    #[test]
    fn key_prefix_never_shows_a_whole_key() {
        assert_eq!(
            key_prefix("dakkio_w_abcdefghijklmnopqrstuvwxyz012345"),
            "dakkio_w_abc"
        );
        assert_eq!(key_prefix("short"), "sh");
        assert_eq!(key_prefix(""), "");
    }
}
