//! The acknowledgement ledger: which MQTT acks may be sent, and when. Pure
//! state, no I/O and no tokio: the commit task (`commit.rs`) feeds it events
//! one at a time and sends the acks it hands out (the shape of rumqttc's
//! `state.rs`).
//!
//! # Design
//!
//! A QoS 1 PUBACK (QoS 2 PUBREC) transfers ownership: after it the broker
//! deletes its copy. So a message is acknowledged only once everything it
//! produced has committed, and acks go out in the order the messages
//! arrived. The commit task reads messages in *batches* (one store submit
//! each) and tells the ledger what happens to them:
//!
//! - [`Ledger::handle_batch`]: messages read in arrival order and submitted
//!   together; each gets an arrival number (`seq`) and the batch an id;
//! - [`Ledger::handle_committed`]: every reading and reject of the batch has
//!   committed;
//! - [`Ledger::handle_refused`]: the store refused (part of) it (disk full,
//!   `on_full = "reject"`); the batch waits, unacknowledged, to be submitted
//!   again ([`Ledger::handle_resubmitted`]);
//! - [`Ledger::handle_connection`]: acks now go out on connection `epoch`
//!   (the poll task numbers connections: it bumps the epoch on every ConnAck
//!   and every connection error);
//! - [`Ledger::next_ack`] / [`Ledger::handle_ack_sent`]: the next ack to
//!   send, and that it was handed to rumqttc (when rumqttc's request channel
//!   is full the ack stays first in line and is offered again).
//!
//! Batches leave the ledger in arrival order: a committed batch behind an
//! uncommitted one waits, so a later message is never acknowledged before
//! an earlier one. Its acks (16 bytes each, no payload) move to the *ack
//! queue*, which only [`next_ack`](Ledger::next_ack) empties.
//!
//! # Invariants (the property test at the end checks each)
//!
//! 1. acks come out in arrival order;
//! 2. an ack comes out only after its batch's commit;
//! 3. never for a batch whose last outcome was a refusal;
//! 4. never on another connection than the one the message arrived on: a
//!    packet id is reused across connections, so an ack of an earlier
//!    epoch could acknowledge an unrelated delivery. Such acks are dropped
//!    and counted ([`Ledger::take_stale`]); the broker redelivers those
//!    messages (at-least-once: they are committed twice).
//!
//! QoS 0 messages take part in the order and in [`Ledger::outstanding`]
//! but need no ack.
//!
//! The test-only [`AckPolicy::OnReceipt`] (the negative control of the
//! crash test) breaks invariants 2 and 3 on purpose: acks are queued as the
//! batch is read.

use std::collections::VecDeque;

// A plain enum: the ledger needs nothing else from the MQTT client.
pub use rumqttc::QoS as Qos;

/// Ack queue capacity kept once it has drained (a resumed session's
/// backlog can grow it to 100,000 entries).
const ACKS_KEPT: usize = 4096;

/// One received message as the ledger sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The connection it arrived on.
    pub epoch: u64,
    pub pkid: u16,
    pub qos: Qos,
}

/// An ack to send: what rumqttc needs (packet id, QoS) and what the
/// ledger checks (epoch); `seq` is the message's arrival number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub epoch: u64,
    pub pkid: u16,
    pub qos: Qos,
}

/// Identifies a batch across events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(u64);

/// When acks are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPolicy {
    /// After the batch's commit: the product.
    AfterCommit,
    /// On receipt, before the commit. Test-only negative control (see
    /// `mod.rs`): it must lose messages on a crash. Not in packaged builds.
    #[cfg(any(test, feature = "fault-injection"))]
    OnReceipt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchState {
    Submitted,
    Refused,
    Committed,
}

#[derive(Debug)]
struct Batch {
    id: BatchId,
    state: BatchState,
    /// Messages, QoS 0 included.
    messages: usize,
    /// Acks to release at the commit (empty under `OnReceipt`).
    acks: Vec<Ack>,
}

/// See the module doc.
#[derive(Debug)]
pub struct Ledger {
    policy: AckPolicy,
    /// The connection acks go out on.
    epoch: u64,
    /// Batches not yet released, in arrival order.
    batches: VecDeque<Batch>,
    /// Released acks, in arrival order, not yet sent.
    acks: VecDeque<Ack>,
    next_seq: u64,
    next_batch: u64,
    /// Messages in `batches`.
    outstanding: usize,
    /// Acks held in `batches`.
    held: usize,
    /// Acks dropped as stale since the last `take_stale`.
    stale: u64,
}

impl Ledger {
    pub fn new(policy: AckPolicy) -> Ledger {
        Ledger {
            policy,
            epoch: 0,
            batches: VecDeque::new(),
            acks: VecDeque::new(),
            next_seq: 0,
            next_batch: 0,
            outstanding: 0,
            held: 0,
            stale: 0,
        }
    }

    /// Messages read, in arrival order, and submitted as one batch.
    pub fn handle_batch(&mut self, deliveries: &[Delivery]) -> BatchId {
        let id = BatchId(self.next_batch);
        self.next_batch += 1;
        let mut acks = Vec::new();
        for d in deliveries {
            let seq = self.next_seq;
            self.next_seq += 1;
            // A message proves its connection existed.
            self.epoch = self.epoch.max(d.epoch);
            if d.qos == Qos::AtMostOnce {
                continue;
            }
            let ack = Ack {
                seq,
                epoch: d.epoch,
                pkid: d.pkid,
                qos: d.qos,
            };
            match self.policy {
                AckPolicy::AfterCommit => acks.push(ack),
                #[cfg(any(test, feature = "fault-injection"))]
                AckPolicy::OnReceipt => self.acks.push_back(ack),
            }
        }
        self.outstanding += deliveries.len();
        self.held += acks.len();
        self.batches.push_back(Batch {
            id,
            state: BatchState::Submitted,
            messages: deliveries.len(),
            acks,
        });
        id
    }

    /// Every reading and reject of batch `id` has committed. False for an
    /// unknown (already released) batch.
    pub fn handle_committed(&mut self, id: BatchId) -> bool {
        let Some(batch) = self.batch_mut(id) else {
            return false;
        };
        batch.state = BatchState::Committed;
        self.release();
        true
    }

    /// The store refused (part of) batch `id`: nothing of it is
    /// acknowledged until it commits. False for an unknown batch.
    pub fn handle_refused(&mut self, id: BatchId) -> bool {
        match self.batch_mut(id) {
            Some(b) if b.state != BatchState::Committed => {
                b.state = BatchState::Refused;
                true
            }
            _ => false,
        }
    }

    /// Batch `id` was submitted again after a refusal.
    pub fn handle_resubmitted(&mut self, id: BatchId) -> bool {
        match self.batch_mut(id) {
            Some(b) if b.state == BatchState::Refused => {
                b.state = BatchState::Submitted;
                true
            }
            _ => false,
        }
    }

    /// Acks now go out on connection `epoch` (epochs only grow: an older
    /// value is ignored).
    pub fn handle_connection(&mut self, epoch: u64) {
        self.epoch = self.epoch.max(epoch);
    }

    /// The next ack to send, in arrival order, dropping (and counting) acks
    /// of earlier connections on the way. It stays first in line until
    /// [`handle_ack_sent`](Ledger::handle_ack_sent).
    pub fn next_ack(&mut self) -> Option<Ack> {
        while let Some(ack) = self.acks.front() {
            if ack.epoch == self.epoch {
                return Some(*ack);
            }
            self.acks.pop_front();
            self.stale += 1;
        }
        if self.acks.capacity() > ACKS_KEPT {
            // A drained backlog gives its memory back.
            self.acks.shrink_to(ACKS_KEPT);
        }
        None
    }

    /// The ack [`next_ack`](Ledger::next_ack) returned was handed over.
    pub fn handle_ack_sent(&mut self) {
        self.acks.pop_front();
    }

    /// Messages in batches not yet released (the commit task's memory bound).
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Received messages not yet acknowledged, QoS 0 excluded: the broker
    /// still holds them (what a lost session takes away).
    pub fn unacknowledged(&self) -> usize {
        self.acks.len() + self.held
    }

    /// Nothing outstanding and no ack waiting.
    pub fn is_idle(&self) -> bool {
        self.batches.is_empty() && self.acks.is_empty()
    }

    /// Stale acks dropped since the last call.
    pub fn take_stale(&mut self) -> u64 {
        std::mem::take(&mut self.stale)
    }

    fn batch_mut(&mut self, id: BatchId) -> Option<&mut Batch> {
        // Ids grow along the queue.
        let i = self.batches.binary_search_by_key(&id, |b| b.id).ok()?;
        self.batches.get_mut(i)
    }

    /// Move committed batches at the front to the ack queue, in order.
    fn release(&mut self) {
        while self
            .batches
            .front()
            .is_some_and(|b| b.state == BatchState::Committed)
        {
            if let Some(batch) = self.batches.pop_front() {
                self.outstanding -= batch.messages;
                self.held -= batch.acks.len();
                self.acks.extend(batch.acks);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn d(epoch: u64, pkid: u16) -> Delivery {
        Delivery {
            epoch,
            pkid,
            qos: Qos::AtLeastOnce,
        }
    }

    /// Every ack the ledger hands out now (all "sent").
    fn drain(l: &mut Ledger) -> Vec<(u64, u16)> {
        let mut out = Vec::new();
        while let Some(a) = l.next_ack() {
            out.push((a.epoch, a.pkid));
            l.handle_ack_sent();
        }
        out
    }

    #[test]
    fn nothing_is_acknowledged_before_its_commit() {
        let mut l = Ledger::new(AckPolicy::AfterCommit);
        l.handle_connection(1);
        let b = l.handle_batch(&[d(1, 1), d(1, 2)]);
        assert_eq!(l.outstanding(), 2);
        assert_eq!(drain(&mut l), vec![]);
        assert!(l.handle_committed(b));
        assert_eq!(drain(&mut l), vec![(1, 1), (1, 2)]);
        assert_eq!(l.outstanding(), 0);
        assert!(l.is_idle());
        assert!(!l.handle_committed(b), "released: unknown now");
    }

    #[test]
    fn a_later_commit_waits_for_the_earlier_batch() {
        let mut l = Ledger::new(AckPolicy::AfterCommit);
        let b1 = l.handle_batch(&[d(1, 1)]);
        let b2 = l.handle_batch(&[d(1, 2)]);
        l.handle_committed(b2);
        assert_eq!(drain(&mut l), vec![]);
        assert_eq!(l.outstanding(), 2);
        l.handle_committed(b1);
        assert_eq!(drain(&mut l), vec![(1, 1), (1, 2)]);
    }

    #[test]
    fn a_refused_batch_is_acknowledged_only_once_it_commits() {
        let mut l = Ledger::new(AckPolicy::AfterCommit);
        let b1 = l.handle_batch(&[d(1, 1)]);
        let b2 = l.handle_batch(&[d(1, 2)]);
        assert!(l.handle_refused(b1));
        l.handle_committed(b2);
        assert_eq!(drain(&mut l), vec![]);
        assert!(l.handle_resubmitted(b1));
        assert!(!l.handle_resubmitted(b1), "not refused any more");
        assert_eq!(drain(&mut l), vec![]);
        l.handle_committed(b1);
        assert_eq!(drain(&mut l), vec![(1, 1), (1, 2)]);
    }

    #[test]
    fn acks_of_an_earlier_connection_are_dropped_and_counted() {
        let mut l = Ledger::new(AckPolicy::AfterCommit);
        let b1 = l.handle_batch(&[d(1, 7), d(1, 8)]);
        // The connection drops (epoch 2) and comes back (epoch 3); the
        // broker redelivers 7 and 8 with new packet ids.
        l.handle_connection(3);
        let b2 = l.handle_batch(&[d(3, 7), d(3, 1)]);
        l.handle_committed(b1);
        l.handle_committed(b2);
        assert_eq!(drain(&mut l), vec![(3, 7), (3, 1)]);
        assert_eq!(l.take_stale(), 2);
        assert_eq!(l.take_stale(), 0);
    }

    #[test]
    fn a_blocked_ack_stays_first_and_goes_stale_on_reconnect() {
        let mut l = Ledger::new(AckPolicy::AfterCommit);
        let b = l.handle_batch(&[d(1, 1), d(1, 2)]);
        l.handle_committed(b);
        // rumqttc's channel is full: the ack is offered again, not lost.
        assert_eq!(l.next_ack().map(|a| a.pkid), Some(1));
        assert_eq!(l.next_ack().map(|a| a.pkid), Some(1));
        l.handle_ack_sent();
        assert_eq!(l.acks.len(), 1);
        l.handle_connection(2);
        assert_eq!(l.next_ack(), None);
        assert_eq!(l.take_stale(), 1);
        // Epochs only grow.
        l.handle_connection(1);
        let b = l.handle_batch(&[d(2, 3)]);
        l.handle_committed(b);
        assert_eq!(drain(&mut l), vec![(2, 3)]);
    }

    #[test]
    fn qos0_is_ordered_and_counted_but_never_acknowledged() {
        let mut l = Ledger::new(AckPolicy::AfterCommit);
        let q0 = Delivery {
            epoch: 1,
            pkid: 0,
            qos: Qos::AtMostOnce,
        };
        let q2 = Delivery {
            epoch: 1,
            pkid: 9,
            qos: Qos::ExactlyOnce,
        };
        let b = l.handle_batch(&[q0, q2]);
        assert_eq!(l.outstanding(), 2);
        assert_eq!(l.unacknowledged(), 1);
        l.handle_committed(b);
        let a = l.next_ack().unwrap();
        assert_eq!((a.pkid, a.qos, a.seq), (9, Qos::ExactlyOnce, 1));
    }

    #[test]
    fn unacknowledged_counts_pending_and_queued_acks() {
        let mut l = Ledger::new(AckPolicy::AfterCommit);
        let b1 = l.handle_batch(&[d(1, 1), d(1, 2)]);
        l.handle_batch(&[d(1, 3)]);
        l.handle_committed(b1);
        assert_eq!(l.unacknowledged(), 3);
        l.next_ack();
        l.handle_ack_sent();
        assert_eq!(l.unacknowledged(), 2);
    }

    #[test]
    fn on_receipt_acks_before_the_commit() {
        let mut l = Ledger::new(AckPolicy::OnReceipt);
        let b = l.handle_batch(&[d(1, 1), d(1, 2)]);
        assert_eq!(drain(&mut l), vec![(1, 1), (1, 2)]);
        assert_eq!(l.outstanding(), 2);
        l.handle_committed(b);
        assert_eq!(drain(&mut l), vec![], "never twice");
        assert!(l.is_idle());
    }

    #[test]
    fn a_drained_backlog_gives_its_memory_back() {
        let mut l = Ledger::new(AckPolicy::AfterCommit);
        let many: Vec<Delivery> = (0..50_000).map(|i| d(1, (i % 65_535) as u16 + 1)).collect();
        let b = l.handle_batch(&many);
        l.handle_committed(b);
        assert_eq!(drain(&mut l).len(), 50_000);
        assert!(l.acks.capacity() <= ACKS_KEPT);
    }

    #[derive(Debug, Clone)]
    enum Event {
        /// A batch of n messages (QoS 1, or 0 when the flag is set).
        Batch(u8, bool),
        /// The commit of the k-th live batch (modulo).
        Commit(u8),
        Refuse(u8),
        Resubmit(u8),
        /// Connection lost and restored.
        Reconnect,
        /// Send up to n acks (fewer: rumqttc's channel is full).
        Send(u8),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            3 => (1u8..5, any::<bool>()).prop_map(|(n, q0)| Event::Batch(n, q0)),
            3 => any::<u8>().prop_map(Event::Commit),
            1 => any::<u8>().prop_map(Event::Refuse),
            1 => any::<u8>().prop_map(Event::Resubmit),
            1 => Just(Event::Reconnect),
            2 => (0u8..6).prop_map(Event::Send),
        ]
    }

    /// Per batch: its messages (arrival number, epoch, QoS 0) and its last
    /// outcome (`None` submitted, `Some(true)` committed, `Some(false)`
    /// refused).
    type Model = BTreeMap<BatchId, (Vec<(u64, u64, bool)>, Option<bool>)>;

    proptest! {
        /// Random interleavings of publishes, commits, refusals, reconnects
        /// and sends: the four invariants of the module doc hold, and every
        /// message of the current connection whose batch committed is
        /// eventually acknowledged exactly once.
        #[test]
        fn acks_follow_the_four_invariants(events in proptest::collection::vec(event(), 1..200)) {
            let mut l = Ledger::new(AckPolicy::AfterCommit);
            let mut epoch = 1u64;
            l.handle_connection(epoch);
            // The model: per batch, its messages (seq, epoch, qos 0?) and last outcome.
            let mut batches: Model = BTreeMap::new();
            let mut seq = 0u64;
            let mut pkid = 0u16;
            let mut sent: Vec<Ack> = Vec::new();
            let check_sent = |a: &Ack, batches: &Model, epoch: u64, last: Option<&Ack>| {
                let (id, (msgs, outcome)) = batches
                    .iter()
                    .find(|(_, (m, _))| m.iter().any(|(s, _, _)| *s == a.seq))
                    .expect("an ack of a message that was received");
                let msg = msgs.iter().find(|(s, _, _)| *s == a.seq).unwrap();
                // 2 and 3: committed, and the last outcome was not a refusal.
                prop_assert_eq!(*outcome, Some(true), "batch {:?} acked without its commit", id);
                // 4: on the connection it arrived on, which is the current one.
                prop_assert_eq!(a.epoch, msg.1);
                prop_assert_eq!(a.epoch, epoch, "ack across a reconnect");
                prop_assert!(!msg.2, "a QoS 0 message acknowledged");
                // 1: arrival order.
                if let Some(prev) = last {
                    prop_assert!(prev.seq < a.seq, "out of order: {} after {}", a.seq, prev.seq);
                }
                Ok(())
            };
            for e in events {
                let live: Vec<BatchId> = batches.keys().copied().collect();
                let pick = |k: u8| (!live.is_empty()).then(|| live[k as usize % live.len()]);
                match e {
                    Event::Batch(n, q0) => {
                        let ds: Vec<Delivery> = (0..n)
                            .map(|_| {
                                pkid = pkid.wrapping_add(1);
                                Delivery {
                                    epoch,
                                    pkid,
                                    qos: if q0 { Qos::AtMostOnce } else { Qos::AtLeastOnce },
                                }
                            })
                            .collect();
                        let id = l.handle_batch(&ds);
                        let msgs = ds.iter().map(|dl| { seq += 1; (seq - 1, dl.epoch, q0) }).collect();
                        batches.insert(id, (msgs, None));
                    }
                    Event::Commit(k) => {
                        if let Some(id) = pick(k) {
                            let entry = batches.get_mut(&id).unwrap();
                            // The commit task commits only what it submitted.
                            if entry.1.is_none() {
                                prop_assert!(l.handle_committed(id));
                                entry.1 = Some(true);
                            }
                        }
                    }
                    Event::Refuse(k) => {
                        if let Some(id) = pick(k) {
                            let entry = batches.get_mut(&id).unwrap();
                            if entry.1.is_none() {
                                prop_assert!(l.handle_refused(id));
                                entry.1 = Some(false);
                            }
                        }
                    }
                    Event::Resubmit(k) => {
                        if let Some(id) = pick(k) {
                            let entry = batches.get_mut(&id).unwrap();
                            if entry.1 == Some(false) {
                                prop_assert!(l.handle_resubmitted(id));
                                entry.1 = None;
                            }
                        }
                    }
                    Event::Reconnect => {
                        epoch += 2;
                        l.handle_connection(epoch);
                    }
                    Event::Send(n) => {
                        for _ in 0..n {
                            let Some(a) = l.next_ack() else { break };
                            check_sent(&a, &batches, epoch, sent.last())?;
                            l.handle_ack_sent();
                            sent.push(a);
                        }
                    }
                }
            }
            // Commit everything still submitted and drain: every QoS 1
            // message of the current connection whose batch committed is
            // acknowledged exactly once, nothing else.
            let ids: Vec<BatchId> = batches.keys().copied().collect();
            for id in ids {
                let entry = batches.get_mut(&id).unwrap();
                if entry.1 == Some(false) {
                    l.handle_resubmitted(id);
                }
                l.handle_committed(id);
                entry.1 = Some(true);
            }
            while let Some(a) = l.next_ack() {
                check_sent(&a, &batches, epoch, sent.last())?;
                l.handle_ack_sent();
                sent.push(a);
            }
            prop_assert!(l.is_idle());
            let acked: BTreeSet<u64> = sent.iter().map(|a| a.seq).collect();
            prop_assert_eq!(acked.len(), sent.len(), "an ack sent twice");
            let current: BTreeSet<u64> = batches
                .values()
                .flat_map(|(m, _)| m.iter())
                .filter(|(_, e, q0)| *e == epoch && !q0)
                .map(|(s, _, _)| *s)
                .collect();
            prop_assert_eq!(acked.intersection(&current).count(), current.len(), "a current message never acknowledged");
        }
    }
}
