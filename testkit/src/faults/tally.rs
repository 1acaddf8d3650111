//! The end-of-scenario reckoning shared by every fault scenario.
//!
//! Producers tag each reading with a unique integer id in one value field
//! (`{"n": 17}`), so that every id the producer knows was accepted (a
//! PUBACK from the broker, a line written to the pty, a 2xx from the local
//! API) can be looked for upstream (the stand-in's accepted points) and in
//! the gateway's ledger (queued, dead-lettered, dropped).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::standin::AcceptedPoint;
use dakkio_gateway::store::BucketStats;

/// Long soak variants run only when this is set.
pub fn long() -> bool {
    std::env::var_os("DAKKIO_FAULTS_LONG").is_some()
}

/// One scenario's accounting.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub scenario: String,
    /// Ids the producers know the gateway (or its broker) accepted.
    pub accepted: u64,
    /// Distinct accepted ids that reached the stand-in.
    pub delivered: u64,
    /// The gateway's ledger at the end.
    pub queued: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    /// Accepted ids neither delivered nor accounted for by the ledger.
    pub lost: u64,
    /// Upstream points beyond the first for the same id.
    pub duplicates: u64,
    /// The first few lost ids, for the failure message.
    pub missing_sample: Vec<u64>,
    /// `accepted = delivered + queued + dead_lettered + dropped` in the
    /// gateway's own ledger (P10), per bucket.
    pub ledger_balances: bool,
}

impl Tally {
    /// Reckon from the ids the producers know were accepted, the points
    /// the stand-in accepted (the id is the integer in `values[field]`) and
    /// the gateway's store statistics at the end.
    pub fn reckon(
        scenario: &str,
        accepted: &BTreeSet<u64>,
        field: &str,
        upstream: &[AcceptedPoint],
        ledger: &[BucketStats],
    ) -> Tally {
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        for p in upstream {
            if let Some(id) = p.values.get(field).and_then(|v| v.as_f64()) {
                *seen.entry(id as u64).or_default() += 1;
            }
        }
        let delivered = accepted.iter().filter(|id| seen.contains_key(id)).count() as u64;
        let duplicates = seen.values().map(|n| n - 1).sum();
        let queued = ledger.iter().map(|b| b.queued.max(0) as u64).sum();
        let dead_lettered = ledger.iter().map(|b| b.dead_lettered.max(0) as u64).sum();
        let dropped = ledger.iter().map(|b| b.dropped.max(0) as u64).sum();
        let missing: Vec<u64> = accepted
            .iter()
            .filter(|id| !seen.contains_key(id))
            .copied()
            .collect();
        let lost = (missing.len() as u64).saturating_sub(queued + dead_lettered + dropped);
        Tally {
            scenario: scenario.to_string(),
            accepted: accepted.len() as u64,
            delivered,
            queued,
            dead_lettered,
            dropped,
            lost,
            duplicates,
            missing_sample: missing.into_iter().take(10).collect(),
            ledger_balances: ledger.iter().all(|b| b.ledger_balances()),
        }
    }

    /// Print the line (visible with `--nocapture`) and fail on loss or on
    /// an unbalanced ledger.
    pub fn assert_no_loss(&self) {
        eprintln!("{}", Tally::header());
        eprintln!("{self}");
        assert!(
            self.ledger_balances,
            "{}: the gateway's ledger does not balance",
            self.scenario
        );
        assert_eq!(
            self.lost, 0,
            "{}: {} accepted readings lost (first ids: {:?})",
            self.scenario, self.lost, self.missing_sample
        );
    }

    pub fn header() -> &'static str {
        "| scenario | accepted | delivered | queued | dead-lettered | dropped | lost | duplicates |"
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.accepted,
            self.delivered,
            self.queued,
            self.dead_lettered,
            self.dropped,
            self.lost,
            self.duplicates
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(n: u64) -> AcceptedPoint {
        AcceptedPoint {
            request: 1,
            bucket_id: "b".into(),
            data_source_id: "s".into(),
            timestamp: None,
            timestamp_ms: 0,
            values: serde_json::json!({ "n": n }).as_object().unwrap().clone(),
            metadata: None,
        }
    }

    #[test]
    fn a_missing_id_is_lost_and_a_repeat_is_a_duplicate() {
        let accepted: BTreeSet<u64> = (0..5).collect();
        let upstream: Vec<_> = [0, 1, 1, 2, 3].into_iter().map(point).collect();
        let t = Tally::reckon("unit", &accepted, "n", &upstream, &[]);
        assert_eq!((t.delivered, t.lost, t.duplicates), (4, 1, 1));
        assert_eq!(t.missing_sample, vec![4]);
    }
}
