//! Edge alerts: dakkio's alert rules (dakkio-api.md §2.7), evaluated on the
//! gateway on every committed reading, notifying on the local network while
//! the internet is down.
//!
//! # Design
//!
//! ```text
//!  store writer ──commit──► CommitObserver (Shared) ──► Evaluator.on_reading ──┐
//!  (writer thread)          per-source index, no I/O                          │ Firing
//!  timer (1 s) / test clock ─────────────────────────► Evaluator.on_tick ────┤ (bounded channel)
//!                                                                              ▼
//!  engine task: payload → store `Fired` (rule's lastTriggeredAt + queued notifications, one transaction)
//!  delivery task: due rows of `alert_deliveries` → webhook POST / MQTT publish → delivered | retry | given up
//! ```
//!
//! - **Evaluation barely touches ingest.** The store calls the observer
//!   after the group's commit, before answering its senders (so an
//!   acknowledged reading has been evaluated). A reading of a
//!   data source without rules costs two hash lookups; with no rule at
//!   all the writer keeps nothing for it ([`crate::store::CommitObserver::wants`]).
//!   A firing is handed over with `try_send` on a bounded channel; if the
//!   channel is full the firing is counted (`alerts:firings_dropped`) and
//!   logged, never waited for.
//! - **Durable notifications.** A firing is recorded with its
//!   notifications in one transaction (`store/alerts.rs`); the delivery task
//!   retries them with backoff until delivered or given up with a reason,
//!   through restarts. Delivery is at least once. A crash between a
//!   reading's commit and its firing's record loses that firing (the
//!   evaluation is not replayed at start).
//! - **State.** Rules, `status`, `lastTriggeredAt` and the notification
//!   queue are in the store. The evaluator's timers are memory: after a
//!   restart a duration rule starts its timer again, a no-data rule counts
//!   its silence from the data source's newest stored reading (or the
//!   rule's last change, if later).
//! - **Outbound only where the operator allows** (`alerts.allow`), checked
//!   when a rule is created or updated (400) and again before each attempt
//!   (given up `not_allowed` if the list changed); redirects are not
//!   followed.
//! - **Time** comes from a [`clock::Clock`]; tests move an
//!   [`clock::OffsetClock`] instead of sleeping.
//!
//! | file | role |
//! |---|---|
//! | `condition.rs` | the sentence → [`condition::Condition`] (pure) |
//! | `eval.rs` | rule index, state, the decision to fire (pure) |
//! | `payload.rs` | the `alert.triggered` body |
//! | `notify.rs` | webhook and MQTT attempts; retry decided in `decide` |
//! | `handle.rs` | [`AlertsHandle`]: the local API's reads and changes of rules |
//! | `clock.rs` | the clock trait, the test clock |

pub mod clock;
pub mod condition;
pub mod eval;
mod handle;
mod notify;
mod payload;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{AlertsConfig, Config};
use crate::reading::Reading;
use crate::store::{AlertOp, AlertRuleRow, NewDelivery, StoreError, StoreHandle};
use crate::telemetry::{Health, Part};
use clock::Clock;
use condition::Condition;
use eval::{Evaluator, Firing, RuleSpec};
pub use handle::NewRule;

/// How often duration and no-data rules are looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// Firings waiting for the engine task at most.
const FIRINGS: usize = 1024;
/// Notifications attempted per store read.
const DUE_BATCH: usize = 16;
/// The delivery task looks at the queue at least this often.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// Why a webhook URL is refused (a 400 at create/update).
pub fn check_url(url: &str, cfg: &AlertsConfig) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| {
        format!("Invalid url: {e}; give an absolute URL, e.g. http://192.168.1.20:8123/hook")
    })?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!(
            "Only http and https webhook URLs are supported; got `{}`",
            u.scheme()
        ));
    }
    let Some(host) = u.host_str() else {
        return Err("The webhook URL has no host".into());
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let ip = host.parse::<std::net::IpAddr>().ok();
    let port = u.port_or_known_default().unwrap_or(80);
    if cfg.allows(&host, ip, port) {
        Ok(())
    } else if cfg.allow.is_empty() {
        Err(
            "This gateway sends alert notifications nowhere until its operator lists where \
             (`alerts.allow` in the configuration, e.g. `allow = [\"192.168.1.0/24\"]`)"
                .into(),
        )
    } else {
        Err(format!(
            "The webhook host `{host}:{port}` is not in the gateway's `alerts.allow` list; ask \
             its operator to add it"
        ))
    }
}

/// State shared by the store's writer thread (the observer), the engine
/// and delivery tasks, and the local API.
struct Shared {
    eval: Mutex<Evaluator>,
    /// Whether any rule exists (the writer keeps readings only then).
    any: AtomicBool,
    /// The rules as the API shows them, by id.
    rules: Mutex<BTreeMap<String, AlertRuleRow>>,
    clock: Arc<dyn Clock>,
    #[cfg(feature = "fault-injection")]
    test_clock: Option<Arc<clock::OffsetClock>>,
    firings: mpsc::Sender<Firing>,
    /// Firings dropped because the channel was full, not yet counted in
    /// the store.
    dropped: AtomicU64,
    store: StoreHandle,
    config: Arc<Config>,
    health: Health,
    /// Wakes the delivery task when a firing queued notifications.
    wake: Notify,
    /// Wakes the engine when a rule is added: without rules it does not
    /// tick (an idle gateway without alert rules wakes for nothing).
    rules_added: Notify,
}

/// What the store's writer holds: a weak reference, since [`Shared`] holds
/// a store handle (a strong one would keep the writer's channel open, and
/// the store would never close at stop).
struct Observer(std::sync::Weak<Shared>);

impl crate::store::CommitObserver for Observer {
    fn wants(&self) -> bool {
        self.0
            .upgrade()
            .is_some_and(|s| s.any.load(Ordering::Relaxed))
    }

    fn committed(&self, readings: &[Reading]) {
        if let Some(shared) = self.0.upgrade() {
            shared.committed(readings);
        }
    }
}

impl Shared {
    fn committed(&self, readings: &[Reading]) {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        {
            let mut eval = self.eval.lock().expect("alert evaluator");
            for r in readings {
                eval.on_reading(r, now, &mut out);
            }
        }
        for f in out {
            self.hand_over(f);
        }
    }
}

impl Shared {
    fn hand_over(&self, f: Firing) {
        if let Err(e) = self.firings.try_send(f) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                error!(
                    rule = %e.into_inner().rule_id,
                    dropped = n,
                    "alert firing dropped: the alert engine is behind"
                );
            }
        }
    }

    fn spec(row: &AlertRuleRow, condition: Condition) -> RuleSpec {
        RuleSpec {
            id: row.id.clone(),
            bucket_id: row.bucket_id.clone(),
            data_source_id: row.data_source_id.clone(),
            condition,
            cooldown: Duration::from_secs_f64(row.cooldown_minutes.max(0.0) * 60.0),
            active: row.status == "active",
            last_triggered: row.last_triggered_at,
        }
    }

    /// Rules whose time has come (duration, no-data).
    fn tick(&self) -> Vec<Firing> {
        let mut out = Vec::new();
        let mut eval = self.eval.lock().expect("alert evaluator");
        // Read under the lock: a test's clock move and its tick are one step.
        let now = self.clock.now_ms();
        eval.on_tick(now, &mut out);
        out
    }

    /// Record a firing and queue its notifications (one transaction).
    async fn record(&self, f: Firing) {
        let Some(rule) = self
            .rules
            .lock()
            .expect("alert rules")
            .get(&f.rule_id)
            .cloned()
        else {
            return; // deleted meanwhile
        };
        let condition = condition::parse(&rule.condition).ok();
        let source_name = self
            .config
            .declared_sources(&rule.bucket_id)
            .remove(&rule.data_source_id)
            .unwrap_or_else(|| rule.data_source_id.clone());
        let body = payload::build(
            &rule,
            condition.as_ref(),
            &f,
            &source_name,
            &self.config.gateway.id,
        )
        .to_string();
        let mut deliveries = vec![NewDelivery {
            target: "webhook".into(),
            destination: rule.webhook_url.clone(),
            payload: body.clone(),
        }];
        if let Some(topic) = &self.config.alerts.mqtt_topic {
            deliveries.push(NewDelivery {
                target: "mqtt".into(),
                destination: topic.clone(),
                payload: body,
            });
        }
        let op = AlertOp::Fired {
            rule_id: rule.id.clone(),
            at: f.at,
            deliveries,
            max_pending: self.config.alerts.max_pending,
        };
        match self.store.alerts(op).await {
            Ok(given_up) => {
                if given_up > 0 {
                    warn!(
                        given_up,
                        "alert notifications given up: more than `alerts.max_pending` waiting"
                    );
                }
                if let Some(r) = self.rules.lock().expect("alert rules").get_mut(&rule.id) {
                    r.last_triggered_at = Some(f.at);
                    r.trigger_count += 1;
                }
                metrics::counter!("dakkio_alerts_fired_total").increment(1);
                info!(rule = %rule.id, name = %rule.name, "alert fired");
                self.wake.notify_one();
            }
            Err(e) => error!(rule = %rule.id, error = %e, "alert firing could not be recorded"),
        }
    }

    /// Count dropped firings in the store (from the engine task).
    async fn flush_dropped(&self) {
        let n = self.dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            metrics::counter!("dakkio_alerts_firings_dropped_total").increment(n);
            let _ = self
                .store
                .add_counters(vec![("alerts:firings_dropped".into(), n as i64)])
                .await;
        }
    }
}

/// The running part: the engine (firings, ticks) and the delivery loop.
pub struct Alerts {
    shared: Arc<Shared>,
    firings: mpsc::Receiver<Firing>,
    sender: notify::Sender,
    /// The inputs' token and tracker: once they are cancelled and done,
    /// every reading has been evaluated and the part stops by itself.
    drain: Option<(CancellationToken, tokio_util::task::TaskTracker)>,
}

/// What the local API uses: the rules, and changes to them.
#[derive(Clone)]
pub struct AlertsHandle {
    shared: Arc<Shared>,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("cannot read the alert rules: {0}")]
    Store(#[from] StoreError),
    #[error("cannot build the webhook client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("cannot build the webhook client's TLS settings: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl Alerts {
    /// Load the rules from the store and install the evaluator as the
    /// store's commit observer.
    pub async fn new(
        config: Arc<Config>,
        store: StoreHandle,
        health: Health,
    ) -> Result<(Alerts, AlertsHandle), AlertsError> {
        #[cfg(feature = "fault-injection")]
        let test_clock = std::env::var(clock::TEST_CLOCK_ENV)
            .is_ok_and(|v| v == "1")
            .then(|| {
                warn!(
                    env = clock::TEST_CLOCK_ENV,
                    "test switch set: the alert clock is moved by the tests"
                );
                Arc::new(clock::OffsetClock::default())
            });
        #[cfg(feature = "fault-injection")]
        let clock: Arc<dyn Clock> = match &test_clock {
            Some(c) => c.clone(),
            None => Arc::new(clock::SystemClock),
        };
        #[cfg(not(feature = "fault-injection"))]
        let clock: Arc<dyn Clock> = Arc::new(clock::SystemClock);
        let rows = store.reader().alert_rules().await?;
        let mut eval = Evaluator::new();
        let now = clock.now_ms();
        for row in &rows {
            match condition::parse(&row.condition) {
                Ok(c) => {
                    let last = store
                        .reader()
                        .last_reading_ms(&row.bucket_id, &row.data_source_id)
                        .await?
                        .unwrap_or(i64::MIN)
                        .max(row.updated_at)
                        .min(now);
                    eval.upsert(Shared::spec(row, c), last);
                }
                Err(e) => {
                    error!(rule = %row.id, error = %e, "stored alert rule not understood; skipped")
                }
            }
        }
        if !rows.is_empty() {
            info!(rules = rows.len(), "alert rules loaded");
        }
        let (tx, rx) = mpsc::channel(FIRINGS);
        let shared = Arc::new(Shared {
            any: AtomicBool::new(!eval.is_empty()),
            eval: Mutex::new(eval),
            rules: Mutex::new(rows.into_iter().map(|r| (r.id.clone(), r)).collect()),
            clock,
            #[cfg(feature = "fault-injection")]
            test_clock,
            firings: tx,
            dropped: AtomicU64::new(0),
            store: store.clone(),
            config: config.clone(),
            health,
            wake: Notify::new(),
            rules_added: Notify::new(),
        });
        store.set_commit_observer(Arc::new(Observer(Arc::downgrade(&shared))));
        shared.health.set_ok(&Part::Alerts);
        let sender = notify::Sender::new(config)?;
        Ok((
            Alerts {
                shared: shared.clone(),
                firings: rx,
                sender,
                drain: None,
            },
            AlertsHandle { shared },
        ))
    }

    /// Stop by itself once the inputs have stopped (the supervisor's stop
    /// order), not only on `cancel`.
    pub fn with_drain(
        mut self,
        inputs: CancellationToken,
        tracker: tokio_util::task::TaskTracker,
    ) -> Alerts {
        self.drain = Some((inputs, tracker));
        self
    }

    /// Run until `cancel` (or the inputs have stopped): record firings,
    /// tick timed rules, deliver. A notification in flight at stop stays
    /// queued and is sent again after the restart.
    pub async fn run(self, cancel: CancellationToken) {
        let Alerts {
            shared,
            mut firings,
            sender,
            drain,
        } = self;
        let stop = cancel.child_token();
        let drained = async {
            match drain {
                Some((inputs, tracker)) => {
                    inputs.cancelled().await;
                    tracker.wait().await;
                }
                None => std::future::pending().await,
            }
        };
        let watch = async {
            tokio::select! {
                _ = drained => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        };
        let cancel = &stop;
        let engine = async {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let ticking = shared.any.load(Ordering::Relaxed);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    Some(f) = firings.recv() => shared.record(f).await,
                    _ = shared.rules_added.notified(), if !ticking => {}
                    _ = tick.tick(), if ticking => {
                        for f in shared.tick() {
                            shared.record(f).await;
                        }
                        shared.flush_dropped().await;
                    }
                }
            }
            // Firings already decided are recorded before the store closes.
            while let Ok(f) = firings.try_recv() {
                shared.record(f).await;
            }
            shared.flush_dropped().await;
        };
        tokio::join!(watch, engine, deliver(&shared, &sender, cancel));
    }
}

/// The delivery loop: due notifications, one at a time.
async fn deliver(shared: &Shared, sender: &notify::Sender, cancel: &CancellationToken) {
    let reader = shared.store.reader().clone();
    loop {
        let now = crate::reading::now_ms();
        let due = match reader.due_alert_deliveries(now, DUE_BATCH).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "cannot read the alert notification queue");
                Vec::new()
            }
        };
        if due.is_empty() {
            let next = reader.next_alert_delivery().await.ok().flatten();
            let wait = next.map_or(IDLE_RECHECK, |t| {
                Duration::from_millis((t - now).clamp(0, IDLE_RECHECK.as_millis() as i64) as u64)
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        for d in due {
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return,
                a = sender.attempt(&d) => a,
            };
            let op = notify::decide(
                &d,
                &attempt,
                &shared.config.alerts,
                crate::reading::now_ms(),
            );
            let outcome = match &op {
                AlertOp::Delivered(_) => {
                    shared.health.set_ok(&Part::Alerts);
                    "delivered"
                }
                AlertOp::GiveUp { reason, .. } => {
                    shared.health.set_degraded(
                        &Part::Alerts,
                        format!(
                            "a notification of rule {} was given up ({reason})",
                            d.rule_id
                        ),
                    );
                    "given_up"
                }
                _ => "retry",
            };
            metrics::counter!(
                "dakkio_alerts_notifications_total",
                "target" => d.target.clone(),
                "outcome" => outcome
            )
            .increment(1);
            if let Err(e) = shared.store.alerts(op.clone()).await {
                error!(error = %e, "cannot record an alert notification's outcome");
                return;
            }
            // Logged once recorded (a delivered notification is not sent again).
            notify::log_outcome(&d, &op);
        }
    }
}
