//! The local API's side of the alert engine: list and read rules, create,
//! change, pause and delete them. Each change is written to the store
//! first, then applied to the in-memory table and the evaluator, so a rule
//! the API has answered for survives a restart.

use std::sync::atomic::Ordering;

use super::condition::Condition;
use super::{AlertsHandle, Shared};
use crate::config::AlertsConfig;
use crate::store::{AlertOp, AlertRuleRow, StoreError};

/// A rule as the API creates or changes it.
#[derive(Debug, Clone)]
pub struct NewRule {
    pub bucket_id: String,
    pub data_source_id: String,
    pub name: String,
    pub condition_text: String,
    pub condition: Condition,
    pub webhook_url: String,
    pub cooldown_minutes: f64,
}

impl AlertsHandle {
    pub fn config(&self) -> &AlertsConfig {
        &self.shared.config.alerts
    }

    /// The rules of a bucket, oldest first.
    pub fn list(&self, bucket_id: &str) -> Vec<AlertRuleRow> {
        let mut v: Vec<AlertRuleRow> = self
            .shared
            .rules
            .lock()
            .expect("alert rules")
            .values()
            .filter(|r| r.bucket_id == bucket_id)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v
    }

    pub fn get(&self, id: &str) -> Option<AlertRuleRow> {
        self.shared
            .rules
            .lock()
            .expect("alert rules")
            .get(id)
            .cloned()
    }

    pub fn count(&self) -> usize {
        self.shared.rules.lock().expect("alert rules").len()
    }

    /// Store a new rule (or a changed one: `existing`) and start
    /// evaluating it.
    pub async fn put(
        &self,
        existing: Option<&AlertRuleRow>,
        rule: NewRule,
        status: &str,
    ) -> Result<AlertRuleRow, StoreError> {
        let now = crate::reading::now_ms();
        let row = AlertRuleRow {
            id: existing.map_or_else(crate::reading::new_object_id, |r| r.id.clone()),
            bucket_id: rule.bucket_id,
            data_source_id: rule.data_source_id,
            name: rule.name,
            condition: rule.condition_text,
            webhook_url: rule.webhook_url,
            cooldown_minutes: rule.cooldown_minutes,
            status: status.to_owned(),
            created_at: existing.map_or(now, |r| r.created_at),
            updated_at: now,
            last_triggered_at: existing.and_then(|r| r.last_triggered_at),
            trigger_count: existing.map_or(0, |r| r.trigger_count),
        };
        self.shared
            .store
            .alerts(AlertOp::PutRule(row.clone()))
            .await?;
        let mut rules = self.shared.rules.lock().expect("alert rules");
        // A firing recorded meanwhile keeps its time.
        let row = match rules.get(&row.id) {
            Some(old) => AlertRuleRow {
                last_triggered_at: old.last_triggered_at,
                trigger_count: old.trigger_count,
                ..row
            },
            None => row,
        };
        rules.insert(row.id.clone(), row.clone());
        let mut eval = self.shared.eval.lock().expect("alert evaluator");
        let since = self.shared.clock.now_ms();
        eval.upsert(Shared::spec(&row, rule.condition), since);
        self.shared.any.store(!eval.is_empty(), Ordering::Relaxed);
        self.shared.rules_added.notify_one();
        Ok(row)
    }

    /// Pause (`active = false`) or resume a rule.
    pub async fn set_status(
        &self,
        existing: &AlertRuleRow,
        active: bool,
    ) -> Result<AlertRuleRow, StoreError> {
        let status = if active { "active" } else { "paused" };
        let row = AlertRuleRow {
            status: status.to_owned(),
            updated_at: crate::reading::now_ms(),
            ..existing.clone()
        };
        self.shared
            .store
            .alerts(AlertOp::PutRule(row.clone()))
            .await?;
        let mut rules = self.shared.rules.lock().expect("alert rules");
        if let Some(r) = rules.get_mut(&row.id) {
            r.status = row.status.clone();
            r.updated_at = row.updated_at;
        }
        let now = self.shared.clock.now_ms();
        self.shared
            .eval
            .lock()
            .expect("alert evaluator")
            .set_active(&row.id, active, now);
        Ok(rules.get(&row.id).cloned().unwrap_or(row))
    }

    /// Delete a rule; `None` when there was none.
    pub async fn delete(&self, id: &str) -> Result<Option<AlertRuleRow>, StoreError> {
        let Some(row) = self.get(id) else {
            return Ok(None);
        };
        {
            let mut eval = self.shared.eval.lock().expect("alert evaluator");
            eval.remove(id);
            self.shared.any.store(!eval.is_empty(), Ordering::Relaxed);
        }
        self.shared.rules.lock().expect("alert rules").remove(id);
        self.shared
            .store
            .alerts(AlertOp::DeleteRule(id.to_owned()))
            .await?;
        Ok(Some(row))
    }

    /// Test clock only: move the alert clock forward, evaluate the timed
    /// rules and record what fires; the number of firings, or `None`
    /// without the test clock.
    #[cfg(feature = "fault-injection")]
    pub async fn advance_test_clock(&self, ms: i64) -> Option<usize> {
        let clock = self.shared.test_clock.as_ref()?;
        let firings = {
            let mut eval = self.shared.eval.lock().expect("alert evaluator");
            clock.advance(ms);
            let mut out = Vec::new();
            eval.on_tick(super::clock::Clock::now_ms(clock.as_ref()), &mut out);
            out
        };
        let n = firings.len();
        for f in firings {
            self.shared.record(f).await;
        }
        Some(n)
    }
}
