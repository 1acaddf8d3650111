//! The evaluator: rules indexed by data source, their in-memory state, and
//! the decision to fire (pure: no I/O, time passed in as Unix ms).
//!
//! - [`Evaluator::on_reading`] runs for every committed reading on the
//!   store's writer thread. A reading of a data source without rules costs
//!   two hash lookups and allocates nothing; with rules, each rule is one
//!   value lookup and a comparison, and only a firing allocates.
//! - [`Evaluator::on_tick`] runs on a timer (and when a test advances its
//!   clock): a duration rule whose condition has held long enough, a
//!   no-data rule whose data source has been silent long enough.
//!
//! Semantics (the gateway's; dakkio documents only "every new data point
//! is checked; after a firing the rule waits for its cooldown"):
//! - a threshold rule fires on a reading that meets it, unless it fired
//!   less than `cooldown` ago; while the condition keeps holding it fires
//!   again once the cooldown has passed;
//! - a duration rule (`… for 5 minutes`) starts its timer at the first
//!   reading that meets it and fires once the condition has held for the
//!   duration (on a reading or a tick); a reading that does not meet it
//!   stops the timer; readings without the field change nothing;
//! - a no-data rule fires once per silence: when no reading came for the
//!   duration; the next reading re-arms it;
//! - a paused rule is never evaluated (its state is kept).
//!
//! Times are the gateway's clock when the reading was committed (device
//! clocks can be wrong), not the reading's own timestamp.

use std::collections::HashMap;
use std::time::Duration;

use super::condition::{Condition, Op, Target};
use crate::reading::{Metadata, Reading, Value, Values};

/// A rule as the evaluator needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub id: String,
    pub bucket_id: String,
    pub data_source_id: String,
    pub condition: Condition,
    pub cooldown: Duration,
    pub active: bool,
    pub last_triggered: Option<i64>,
}

/// The reading a firing was decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub timestamp_ms: i64,
    pub values: Values,
    pub metadata: Metadata,
}

/// A decision to fire.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub rule_id: String,
    /// Gateway clock, Unix ms.
    pub at: i64,
    /// The value that met the condition (`None` for no-data).
    pub current: Option<Value>,
    /// The reading it was decided on (`None` for no-data).
    pub point: Option<Point>,
}

#[derive(Debug)]
struct RuleState {
    spec: RuleSpec,
    /// Duration rules: since when the condition has held.
    since: Option<i64>,
    /// The last reading that met the condition (duration rules, for a
    /// firing decided on a tick).
    last_met: Option<(Value, Point)>,
    /// No-data rules: the last reading of the source (or the start).
    last_seen: i64,
    /// No-data rules: fired for the current silence.
    silence_fired: bool,
}

impl RuleState {
    fn cooling(&self, now: i64) -> bool {
        self.spec
            .last_triggered
            .is_some_and(|t| now - t < self.spec.cooldown.as_millis() as i64)
    }
}

/// Every rule, with an index from (bucket, data source) to its rules.
#[derive(Debug, Default)]
pub struct Evaluator {
    rules: Vec<RuleState>,
    /// bucket id → data source id → indexes into `rules`.
    index: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Rules with a duration or no-data condition (worth a tick).
    timed: usize,
}

impl Evaluator {
    pub fn new() -> Evaluator {
        Evaluator::default()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Add a rule or replace one with the same id. `last_seen` starts a
    /// no-data rule's silence (the source's last reading, or now). The
    /// state is kept when the condition and source are unchanged.
    pub fn upsert(&mut self, spec: RuleSpec, last_seen: i64) {
        if let Some(i) = self.rules.iter().position(|r| r.spec.id == spec.id) {
            let r = &mut self.rules[i];
            let same = r.spec.condition == spec.condition
                && r.spec.data_source_id == spec.data_source_id
                && r.spec.bucket_id == spec.bucket_id;
            if same {
                r.spec = spec;
                return;
            }
            self.rules.remove(i);
        }
        self.rules.push(RuleState {
            spec,
            since: None,
            last_met: None,
            last_seen,
            silence_fired: false,
        });
        self.reindex();
    }

    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.spec.id != id);
        let removed = self.rules.len() != before;
        if removed {
            self.reindex();
        }
        removed
    }

    /// Pause or resume a rule; false when there is none.
    pub fn set_active(&mut self, id: &str, active: bool, now: i64) -> bool {
        match self.rules.iter_mut().find(|r| r.spec.id == id) {
            Some(r) => {
                if active && !r.spec.active {
                    // A resumed rule starts afresh: no silence or duration
                    // carried over from while it was paused.
                    r.since = None;
                    r.last_seen = now;
                    r.silence_fired = false;
                }
                r.spec.active = active;
                true
            }
            None => false,
        }
    }

    fn reindex(&mut self) {
        self.index.clear();
        self.timed = 0;
        for (i, r) in self.rules.iter().enumerate() {
            self.index
                .entry(r.spec.bucket_id.clone())
                .or_default()
                .entry(r.spec.data_source_id.clone())
                .or_default()
                .push(i);
            if matches!(r.spec.condition, Condition::NoData { .. })
                || matches!(r.spec.condition, Condition::Threshold { hold, .. } if !hold.is_zero())
            {
                self.timed += 1;
            }
        }
    }

    /// Whether any rule needs ticks.
    pub fn has_timed(&self) -> bool {
        self.timed > 0
    }

    /// Evaluate the rules of the reading's data source; firings are
    /// appended to `out`.
    pub fn on_reading(&mut self, r: &Reading, now: i64, out: &mut Vec<Firing>) {
        let Some(idx) = self
            .index
            .get(r.bucket_id.as_str())
            .and_then(|m| m.get(r.data_source_id.as_str()))
        else {
            return;
        };
        for &i in idx {
            let rule = &mut self.rules[i];
            if !rule.spec.active {
                continue;
            }
            match &rule.spec.condition {
                Condition::NoData { .. } => {
                    rule.last_seen = now;
                    rule.silence_fired = false;
                }
                Condition::Threshold {
                    field,
                    op,
                    value,
                    hold,
                } => {
                    let Some(v) = lookup(&r.values, field) else {
                        continue;
                    };
                    let Some(met) = meets(v, *op, value) else {
                        continue;
                    };
                    if !met {
                        rule.since = None;
                        rule.last_met = None;
                        continue;
                    }
                    let hold = *hold;
                    if !hold.is_zero() {
                        let since = *rule.since.get_or_insert(now);
                        if now - since < hold.as_millis() as i64 {
                            rule.last_met = Some((v.clone(), point(r)));
                            continue;
                        }
                    }
                    if rule.cooling(now) {
                        if !hold.is_zero() {
                            rule.last_met = Some((v.clone(), point(r)));
                        }
                        continue;
                    }
                    rule.spec.last_triggered = Some(now);
                    rule.last_met = None;
                    out.push(Firing {
                        rule_id: rule.spec.id.clone(),
                        at: now,
                        current: Some(v.clone()),
                        point: Some(point(r)),
                    });
                }
            }
        }
    }

    /// Duration and no-data rules whose time has come.
    pub fn on_tick(&mut self, now: i64, out: &mut Vec<Firing>) {
        if self.timed == 0 {
            return;
        }
        for rule in &mut self.rules {
            if !rule.spec.active {
                continue;
            }
            match &rule.spec.condition {
                Condition::NoData { silence } => {
                    if !rule.silence_fired
                        && now - rule.last_seen >= silence.as_millis() as i64
                        && !rule.cooling(now)
                    {
                        rule.silence_fired = true;
                        rule.spec.last_triggered = Some(now);
                        out.push(Firing {
                            rule_id: rule.spec.id.clone(),
                            at: now,
                            current: None,
                            point: None,
                        });
                    }
                }
                Condition::Threshold { hold, .. } if !hold.is_zero() => {
                    let Some(since) = rule.since else { continue };
                    if now - since < hold.as_millis() as i64 || rule.cooling(now) {
                        continue;
                    }
                    let Some((v, p)) = rule.last_met.take() else {
                        continue;
                    };
                    rule.spec.last_triggered = Some(now);
                    out.push(Firing {
                        rule_id: rule.spec.id.clone(),
                        at: now,
                        current: Some(v),
                        point: Some(p),
                    });
                }
                Condition::Threshold { .. } => {}
            }
        }
    }
}

fn point(r: &Reading) -> Point {
    Point {
        timestamp_ms: r.timestamp_ms,
        values: r.values.clone(),
        metadata: r.metadata.clone(),
    }
}

/// The field's value: by its exact name, else ignoring ASCII case.
fn lookup<'a>(values: &'a Values, field: &str) -> Option<&'a Value> {
    values.get(field).or_else(|| {
        values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(field))
            .map(|(_, v)| v)
    })
}

/// Whether `v op target` holds; `None` when the types cannot be compared
/// (the reading says nothing about the rule).
fn meets(v: &Value, op: Op, target: &Target) -> Option<bool> {
    match (v, target) {
        (Value::Number(a), Target::Number(b)) => Some(match op {
            Op::Gt => a > b,
            Op::Gte => a >= b,
            Op::Lt => a < b,
            Op::Lte => a <= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }),
        (Value::Bool(a), Target::Bool(b)) => match op {
            Op::Eq => Some(a == b),
            Op::Ne => Some(a != b),
            _ => None,
        },
        (Value::Text(a), Target::Text(b)) => match op {
            Op::Eq => Some(a.eq_ignore_ascii_case(b)),
            Op::Ne => Some(!a.eq_ignore_ascii_case(b)),
            _ => None,
        },
        // A boolean sent as 0/1.
        (Value::Number(a), Target::Bool(b)) => match op {
            Op::Eq => Some((*a != 0.0) == *b),
            Op::Ne => Some((*a != 0.0) != *b),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::condition::parse;
    use crate::reading::Origin;

    const MIN: i64 = 60_000;

    fn rule(id: &str, source: &str, cond: &str, cooldown_min: u64) -> RuleSpec {
        RuleSpec {
            id: id.into(),
            bucket_id: "b".into(),
            data_source_id: source.into(),
            condition: parse(cond).unwrap(),
            cooldown: Duration::from_secs(cooldown_min * 60),
            active: true,
            last_triggered: None,
        }
    }

    fn reading(source: &str, field: &str, v: f64) -> Reading {
        Reading {
            bucket_id: "b".into(),
            data_source_id: source.into(),
            timestamp_ms: 0,
            values: [(field.into(), Value::Number(v))].into(),
            metadata: Default::default(),
            origin: Origin::Api,
            receive_time: false,
        }
    }

    fn fired(e: &mut Evaluator, r: &Reading, now: i64) -> Vec<String> {
        let mut out = Vec::new();
        e.on_reading(r, now, &mut out);
        out.into_iter().map(|f| f.rule_id).collect()
    }

    fn ticked(e: &mut Evaluator, now: i64) -> Vec<String> {
        let mut out = Vec::new();
        e.on_tick(now, &mut out);
        out.into_iter().map(|f| f.rule_id).collect()
    }

    #[test]
    fn thresholds_fire_on_matching_readings_of_their_source_only() {
        let mut e = Evaluator::new();
        e.upsert(rule("gt", "s1", "temperature is greater than 30", 0), 0);
        e.upsert(rule("lt", "s1", "temperature drops below 5", 0), 0);
        e.upsert(rule("other", "s2", "temperature exceeds 30", 0), 0);
        assert_eq!(
            fired(&mut e, &reading("s1", "temperature", 31.0), 1),
            ["gt"]
        );
        assert!(fired(&mut e, &reading("s1", "temperature", 30.0), 2).is_empty());
        assert_eq!(fired(&mut e, &reading("s1", "temperature", 4.0), 3), ["lt"]);
        assert!(fired(&mut e, &reading("s1", "humidity", 99.0), 4).is_empty());
        assert!(fired(&mut e, &reading("s3", "temperature", 99.0), 5).is_empty());
        assert_eq!(
            fired(&mut e, &reading("s2", "Temperature", 99.0), 6),
            ["other"]
        );
    }

    #[test]
    fn cooldown_holds_then_lets_the_rule_fire_again() {
        let mut e = Evaluator::new();
        e.upsert(rule("r", "s", "t > 1", 5), 0);
        let hot = reading("s", "t", 2.0);
        assert_eq!(fired(&mut e, &hot, 0), ["r"]);
        assert!(fired(&mut e, &hot, 4 * MIN).is_empty());
        assert_eq!(fired(&mut e, &hot, 5 * MIN), ["r"]);
    }

    #[test]
    fn durations_fire_once_the_condition_has_held_long_enough() {
        let mut e = Evaluator::new();
        e.upsert(rule("d", "s", "t > 30 for 5 minutes", 60), 0);
        assert!(fired(&mut e, &reading("s", "t", 31.0), 0).is_empty());
        assert!(ticked(&mut e, 4 * MIN).is_empty());
        assert_eq!(ticked(&mut e, 5 * MIN), ["d"]);
        assert!(ticked(&mut e, 6 * MIN).is_empty(), "cooldown");
        // A reading below resets the timer.
        let mut e = Evaluator::new();
        e.upsert(rule("d", "s", "t > 30 for 5 minutes", 0), 0);
        fired(&mut e, &reading("s", "t", 31.0), 0);
        fired(&mut e, &reading("s", "t", 20.0), 3 * MIN);
        fired(&mut e, &reading("s", "t", 31.0), 4 * MIN);
        assert!(ticked(&mut e, 8 * MIN).is_empty());
        assert_eq!(fired(&mut e, &reading("s", "t", 32.0), 9 * MIN), ["d"]);
    }

    #[test]
    fn no_data_fires_once_per_silence() {
        let mut e = Evaluator::new();
        e.upsert(rule("n", "s", "no data received for 30 minutes", 0), 0);
        assert!(ticked(&mut e, 29 * MIN).is_empty());
        fired(&mut e, &reading("s", "t", 1.0), 29 * MIN);
        assert!(ticked(&mut e, 58 * MIN).is_empty());
        assert_eq!(ticked(&mut e, 59 * MIN), ["n"]);
        assert!(ticked(&mut e, 120 * MIN).is_empty());
        fired(&mut e, &reading("s", "t", 1.0), 121 * MIN);
        assert_eq!(ticked(&mut e, 151 * MIN), ["n"]);
    }

    #[test]
    fn paused_rules_never_fire_and_removed_rules_are_gone() {
        let mut e = Evaluator::new();
        e.upsert(rule("r", "s", "t > 1", 0), 0);
        assert!(e.set_active("r", false, 0));
        assert!(fired(&mut e, &reading("s", "t", 2.0), 1).is_empty());
        assert!(e.set_active("r", true, 2));
        assert_eq!(fired(&mut e, &reading("s", "t", 2.0), 3), ["r"]);
        assert!(e.remove("r"));
        assert!(fired(&mut e, &reading("s", "t", 2.0), 4).is_empty());
        assert!(e.is_empty());
    }
}
