//! The commit policy: when the writer closes a group (see "Group commit" in
//! the module doc of `store`).
//!
//! A commit costs an fsync and whole pages written to the SD card, however
//! few readings it holds, so a group waits for company as long as nobody
//! needs it. It closes at the first of:
//!
//! 1. **large**: it holds `commit_max_readings` readings;
//! 2. **an input is short of room**: someone called
//!    [`StoreHandle::hurry`](super::StoreHandle::hurry) — a local API client
//!    waiting for its 201 (every `append`), the MQTT input when the broker
//!    has stopped sending because its in-flight window is full of messages
//!    waiting for this commit (`ingest/mqtt/pace.rs`) or its own bounds
//!    fill, the uplink when its delivery marks in flight reach their bound;
//!    the group then takes whatever is already queued and commits;
//! 3. **an output waits**: a bucket whose uplink has caught up (its last
//!    claim found the queue empty) set how many readings it lacks for a
//!    batch ([`Signals::want`]); a group holding that many readings of the
//!    bucket closes, so forwarding latency stays one batch fill;
//! 4. **busy**: it holds [`BUSY_GROUP`] readings and its first command has
//!    waited [`BUSY_DELAY`] (or `commit_max_delay` if shorter): such a
//!    group already spreads its pages over enough readings, so waiting
//!    longer would buy little wear and cost latency (and, at thousands of
//!    messages a second, lets more committed messages wait for their ack:
//!    duplicates after a crash);
//! 5. **the deadline**: its first command has waited `commit_max_delay`
//!    (1 s by default): light traffic commits about once a second.
//!
//! Invariants: a hurry never loses or reorders a command (it only ends the
//! wait; the commands already in the channel join the group, the others
//! the next one); a hurry that arrives while no group is open makes the
//! next group close after the commands queued with it (one early commit,
//! never a late one); no signal makes a group wait longer than the
//! deadline.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::Command;

/// A group this large is busy traffic (see rule 4): 64 readings spread a
/// commit's ~7 pages (4 data sources, index, ledger, meta) to ~450 B each.
pub(super) const BUSY_GROUP: usize = 64;
/// How long a busy group waits at most.
pub(super) const BUSY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a group closed: the `reason` label of
/// `dakkio_store_group_commits_total`, one of the rules above. Each group
/// is one sync of the journal or the database (wear); an operator sees
/// which rule makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    Large,
    Hurry,
    Batch,
    Busy,
    Deadline,
}

impl Closed {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Closed::Large => "large",
            Closed::Hurry => "hurry",
            Closed::Batch => "batch",
            Closed::Busy => "busy",
            Closed::Deadline => "deadline",
        }
    }
}

/// Who hurried a commit (rule 2): the `by` label of
/// `dakkio_store_hurries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hurry {
    /// A local API client waits for its 201.
    Api,
    /// A command a client waits on (a key, a CLI command, a ping).
    Command,
    /// The broker looks stalled on its in-flight window (`ingest/mqtt/pace.rs`).
    MqttWindow,
    /// The MQTT input's own bounds of messages in flight fill.
    MqttRoom,
    /// The MQTT input stops.
    MqttStop,
    /// A serial port's lines in flight fill.
    SerialRoom,
    /// The uplink's delivery marks in flight reach their bound.
    UplinkMarks,
    /// The uplink stops and settles its marks.
    UplinkStop,
}

impl Hurry {
    pub fn as_str(self) -> &'static str {
        match self {
            Hurry::Api => "api",
            Hurry::Command => "command",
            Hurry::MqttWindow => "mqtt_window",
            Hurry::MqttRoom => "mqtt_room",
            Hurry::MqttStop => "mqtt_stop",
            Hurry::SerialRoom => "serial_room",
            Hurry::UplinkMarks => "uplink_marks",
            Hurry::UplinkStop => "uplink_stop",
        }
    }
}

/// What the inputs and the uplink tell the writer, shared by every
/// [`StoreHandle`](super::StoreHandle) and the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Close the open group now (a permit is kept if none is open).
    pub(crate) hurry: Notify,
    /// Bucket id → readings its caught-up uplink lacks for a batch.
    wants: Mutex<HashMap<String, usize>>,
}

impl Signals {
    /// Set (`Some(n)`, n ≥ 1) or clear what `bucket`'s uplink waits for.
    pub(crate) fn want(&self, bucket: &str, readings: Option<usize>) {
        let mut w = self.wants.lock().unwrap_or_else(|p| p.into_inner());
        match readings {
            Some(n) => {
                w.insert(bucket.to_owned(), n.max(1));
            }
            None => {
                w.remove(bucket);
            }
        }
    }

    fn wanted(&self, bucket: &str) -> Option<usize> {
        let w = self.wants.lock().unwrap_or_else(|p| p.into_inner());
        w.get(bucket).copied()
    }
}

/// The group being collected, as the policy sees it.
pub(super) struct GroupPolicy<'a> {
    max_readings: usize,
    signals: &'a Signals,
    readings: usize,
    per_bucket: HashMap<String, usize>,
    /// An uplink that waits has its batch in this group.
    batch_filled: bool,
}

impl<'a> GroupPolicy<'a> {
    pub(super) fn new(max_readings: usize, signals: &'a Signals) -> GroupPolicy<'a> {
        GroupPolicy {
            max_readings,
            signals,
            readings: 0,
            per_bucket: HashMap::new(),
            batch_filled: false,
        }
    }

    pub(super) fn add(&mut self, cmd: &Command) {
        let Command::Append(readings, _) = cmd else {
            return;
        };
        self.readings += readings.len();
        let mut touched: Vec<&str> = Vec::new();
        for r in readings {
            // No allocation per reading: the bucket's key is made once.
            match self.per_bucket.get_mut(r.bucket_id.as_str()) {
                Some(n) => *n += 1,
                None => {
                    self.per_bucket.insert(r.bucket_id.to_string(), 1);
                }
            }
            if !touched.contains(&r.bucket_id.as_str()) {
                touched.push(&r.bucket_id);
            }
        }
        for b in touched {
            if let Some(want) = self.signals.wanted(b) {
                if self.per_bucket.get(b).copied().unwrap_or(0) >= want {
                    self.batch_filled = true;
                }
            }
        }
    }

    /// Large, or an output's batch is in: close without waiting further.
    /// A waiting output closes only a group below [`BUSY_GROUP`]: a busy
    /// group closes after [`BUSY_DELAY`] anyway, and closing it at every
    /// filled batch made hundreds of small commits a second at full speed
    /// (the e2e bench: 3.3× the bytes written per reading, half the
    /// throughput).
    pub(super) fn close_now(&self) -> Option<Closed> {
        if self.readings >= self.max_readings {
            Some(Closed::Large)
        } else if self.batch_filled && self.readings < BUSY_GROUP {
            Some(Closed::Batch)
        } else {
            None
        }
    }

    /// Why a group that stopped waiting closed: a hurry, the busy delay or
    /// the deadline (`past_deadline`).
    pub(super) fn closed_by_time(&self, hurried: bool, past_deadline: bool) -> Closed {
        if hurried {
            Closed::Hurry
        } else if past_deadline || self.readings < BUSY_GROUP {
            Closed::Deadline
        } else {
            Closed::Busy
        }
    }

    /// When the group closes if no signal comes: `busy` for a busy group,
    /// else `deadline`.
    pub(super) fn closes_at<T: Ord + Copy>(&self, busy: T, deadline: T) -> T {
        if self.readings >= BUSY_GROUP {
            busy.min(deadline)
        } else {
            deadline
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Metadata, Origin, Reading, Values};

    fn append(bucket: &str, n: usize) -> Command {
        let r = Reading {
            bucket_id: bucket.into(),
            data_source_id: "s".into(),
            timestamp_ms: 0,
            values: Values::default(),
            metadata: Metadata::default(),
            origin: Origin::Api,
            receive_time: false,
        };
        Command::Append(vec![r; n], tokio::sync::oneshot::channel().0)
    }

    #[test]
    fn a_group_closes_when_large() {
        let s = Signals::default();
        let mut p = GroupPolicy::new(10, &s);
        p.add(&append("a", 9));
        assert!(p.close_now().is_none());
        p.add(&append("a", 1));
        assert_eq!(p.close_now(), Some(Closed::Large));
    }

    #[test]
    fn a_waiting_uplink_closes_the_group_at_its_batch_and_only_for_its_bucket() {
        let s = Signals::default();
        s.want("a", Some(3));
        let mut p = GroupPolicy::new(1000, &s);
        p.add(&append("b", 50));
        assert!(
            p.close_now().is_none(),
            "another bucket's readings do not fill a's batch"
        );
        p.add(&append("a", 2));
        assert!(p.close_now().is_none());
        p.add(&append("a", 1));
        assert_eq!(p.close_now(), Some(Closed::Batch));
    }

    #[test]
    fn a_cleared_want_no_longer_closes_groups() {
        let s = Signals::default();
        s.want("a", Some(1));
        s.want("a", None);
        let mut p = GroupPolicy::new(1000, &s);
        p.add(&append("a", 500));
        assert!(p.close_now().is_none());
    }

    #[test]
    fn a_busy_group_closes_at_the_shorter_delay() {
        let s = Signals::default();
        let mut p = GroupPolicy::new(1000, &s);
        p.add(&append("a", BUSY_GROUP - 1));
        assert_eq!(
            p.closes_at(1, 10),
            10,
            "light traffic waits for the deadline"
        );
        p.add(&append("a", 1));
        assert_eq!(p.closes_at(1, 10), 1);
        assert_eq!(p.closes_at(20, 10), 10, "never later than the deadline");
    }

    #[test]
    fn other_commands_do_not_count() {
        let s = Signals::default();
        let mut p = GroupPolicy::new(1, &s);
        p.add(&Command::Ping(tokio::sync::oneshot::channel().0));
        assert!(p.close_now().is_none());
    }
}
