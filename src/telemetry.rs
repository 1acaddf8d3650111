//! Logs and service-manager notifications.
//!
//! Logs go to journald when systemd started us with a journal stream
//! (`JOURNAL_STREAM` set), to stderr otherwise. The level comes from the
//! config's `log.level`, overridden by `RUST_LOG`. Field names become
//! journald fields in upper case with an `F_` prefix (tracing-journald).
//!
//! The health board ([`Health`]) holds each part's condition (for
//! `/health` and `STATUS=`) and, beside it, its last activity (for the
//! status page): the last input of the MQTT input and of each serial port,
//! each bucket's last delivery, uplink mode and pacing. In memory only; one
//! short lock per update (per MQTT message or serial chunk, per batch
//! delivered, per forwarder state change).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Install the global subscriber. Safe to call more than once (later calls
/// do nothing), which keeps tests simple.
pub fn init(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::builder().parse(s).ok())
        .unwrap_or_else(|| EnvFilter::builder().parse_lossy(level));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(|| tracing_journald::layer().ok())
        .flatten();
    let result = match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .try_init(),
        None => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false)
                    .with_filter(filter),
            )
            .try_init(),
    };
    drop(result);
}

/// Tell systemd something (`READY=1`, `STATUS=…`); a no-op outside systemd.
pub fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Install the process-wide metrics recorder (the `metrics` macros record
/// into it from every module) and return the handle that renders the
/// Prometheus text for `/metrics`. Returns `None` when a recorder is already
/// installed (tests that run several gateways in one process).
pub fn install_metrics() -> Option<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().ok()
}

/// The state of one part of the gateway, for `/health`, `STATUS=` and logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Condition {
    Ok,
    /// Running but impaired; the reason is for people and never holds a
    /// secret (`broker unreachable at localhost:1883`, `key refused (401)`).
    Degraded(String),
}

/// A part of the gateway, as named in `/health`, `STATUS=`, logs and the
/// supervisor's task slots. One type so that every file names a part the
/// same way; [`Display`](std::fmt::Display) gives the stable names that
/// `/health` shows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// `store`: the writer thread.
    Store,
    /// `mqtt`: the MQTT input.
    Mqtt,
    /// `api`: the local API.
    Api,
    /// `uplink`: the forwarders as one task (a supervisor slot; health is
    /// reported per bucket).
    Uplink,
    /// `serial:<path>`: one serial port.
    Serial(String),
    /// `bucket:<name>`: one bucket's forwarder.
    Bucket(String),
    /// `clock`: whether the system clock is synchronised (readings held
    /// while it is not).
    Clock,
    /// `modbus:<bus>`: one Modbus bus (its connection).
    Modbus(String),
    /// `modbus:<bus>/<device>`: one device on a bus (answering or not).
    ModbusDevice(String, String),
    /// `alerts`: the alert engine and its notifications.
    Alerts,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Store => f.write_str("store"),
            Part::Mqtt => f.write_str("mqtt"),
            Part::Api => f.write_str("api"),
            Part::Uplink => f.write_str("uplink"),
            Part::Serial(path) => write!(f, "serial:{path}"),
            Part::Bucket(name) => write!(f, "bucket:{name}"),
            Part::Clock => f.write_str("clock"),
            Part::Modbus(bus) => write!(f, "modbus:{bus}"),
            Part::ModbusDevice(bus, device) => write!(f, "modbus:{bus}/{device}"),
            Part::Alerts => f.write_str("alerts"),
        }
    }
}

/// A shared board where each part reports its condition under its
/// [`Part`] name: `store`, `mqtt`, `serial:<path>`, `bucket:<name>`, `api`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<Part, Condition>>>,
    /// What the status page shows beside the condition (see [`Activity`]).
    activity: Arc<Mutex<BTreeMap<Part, Activity>>>,
    /// Signalled when a condition changes ([`Health::changed`]).
    changed: Arc<tokio::sync::Notify>,
}

/// What a bucket's forwarder is doing, for the status page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkMode {
    /// Sending as readings come (or idle with nothing queued).
    Delivering,
    /// Failing (5xx, timeouts, connection errors); retrying with backoff.
    BackingOff,
    /// dakkio answered 429; waiting for its reset time.
    RateLimited,
    /// dakkio refused the key or bucket (401/403/404); retried every
    /// `uplink.paused_retry` and after a reload.
    Paused,
    /// The bucket has no write key: readings queue until one is set.
    NoKey,
}

/// Last activity of a part: when input last arrived (`mqtt`,
/// `serial:<path>`), when dakkio last accepted a batch and what the
/// forwarder is doing (`bucket:<name>`). Kept in memory only; a restart
/// starts it empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    /// Unix ms of the last message (MQTT) or line (serial), accepted or
    /// rejected.
    pub last_input_ms: Option<i64>,
    /// Unix ms of the last batch dakkio answered 2xx.
    pub last_delivery_ms: Option<i64>,
    /// With a reason for people (never a secret).
    pub uplink: Option<(UplinkMode, Option<String>)>,
    /// The delay between requests while the monthly call budget sets the
    /// pace (0: not pacing).
    pub pacing_ms: u64,
}

impl Health {
    pub fn set_ok(&self, part: &Part) {
        self.set(part, Condition::Ok);
    }

    pub fn set_degraded(&self, part: &Part, reason: impl Into<String>) {
        self.set(part, Condition::Degraded(reason.into()));
    }

    pub fn set(&self, part: &Part, condition: Condition) {
        let mut board = self.inner.lock().expect("health lock");
        if board.get(part) != Some(&condition) {
            board.insert(part.clone(), condition);
            self.changed.notify_one();
        }
    }

    /// Forget a part (a removed serial port or bucket after a reload).
    pub fn remove(&self, part: &Part) {
        let was = self.inner.lock().expect("health lock").remove(part);
        self.activity.lock().expect("activity lock").remove(part);
        if was.is_some() {
            self.changed.notify_one();
        }
    }

    /// Resolves once a condition changed (set to another value, or a part
    /// forgotten) since the last call resolved: for the one task that
    /// reports the conditions elsewhere (systemd's `STATUS=`), so that it
    /// sleeps while nothing changes.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn touch(&self, part: &Part, f: impl FnOnce(&mut Activity)) {
        let mut board = self.activity.lock().expect("activity lock");
        match board.get_mut(part) {
            Some(a) => f(a),
            None => f(board.entry(part.clone()).or_default()),
        }
    }

    /// Input arrived at `part` (one lock, no allocation once the part is known).
    pub fn input_seen(&self, part: &Part, at_ms: i64) {
        self.touch(part, |a| a.last_input_ms = Some(at_ms));
    }

    /// dakkio accepted a batch of `part`'s bucket.
    pub fn delivered(&self, part: &Part, at_ms: i64) {
        self.touch(part, |a| a.last_delivery_ms = Some(at_ms));
    }

    /// What `part`'s forwarder is doing now.
    pub fn set_uplink(&self, part: &Part, mode: UplinkMode, reason: Option<String>) {
        self.touch(part, |a| a.uplink = Some((mode, reason)));
    }

    /// The pacing delay of `part`'s forwarder (0: not pacing).
    pub fn set_pacing(&self, part: &Part, ms: u64) {
        self.touch(part, |a| a.pacing_ms = ms);
    }

    /// Every part with its condition (if reported) and activity, by part.
    pub fn board(&self) -> BTreeMap<Part, (Option<Condition>, Activity)> {
        let mut out: BTreeMap<Part, (Option<Condition>, Activity)> = self
            .inner
            .lock()
            .expect("health lock")
            .iter()
            .map(|(p, c)| (p.clone(), (Some(c.clone()), Activity::default())))
            .collect();
        for (p, a) in self.activity.lock().expect("activity lock").iter() {
            out.entry(p.clone())
                .or_insert((None, Activity::default()))
                .1 = a.clone();
        }
        out
    }

    /// Every part's condition, by name (sorted by name).
    pub fn snapshot(&self) -> BTreeMap<String, Condition> {
        self.inner
            .lock()
            .expect("health lock")
            .iter()
            .map(|(part, c)| (part.to_string(), c.clone()))
            .collect()
    }

    /// True when no part is degraded.
    pub fn is_ok(&self) -> bool {
        self.inner
            .lock()
            .expect("health lock")
            .values()
            .all(|c| *c == Condition::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/health` shows these names; changing one is a visible change.
    #[test]
    fn part_names_are_the_health_names() {
        let names: Vec<String> = [
            Part::Store,
            Part::Mqtt,
            Part::Api,
            Part::Uplink,
            Part::Serial("/dev/ttyUSB0".into()),
            Part::Bucket("barn".into()),
        ]
        .iter()
        .map(Part::to_string)
        .collect();
        assert_eq!(
            names,
            [
                "store",
                "mqtt",
                "api",
                "uplink",
                "serial:/dev/ttyUSB0",
                "bucket:barn"
            ]
        );
    }

    #[test]
    fn the_board_reports_by_name_and_forgets_removed_parts() {
        let h = Health::default();
        h.set_ok(&Part::Store);
        h.set_degraded(&Part::Serial("/dev/ttyA".into()), "device not available");
        assert!(!h.is_ok());
        let snap = h.snapshot();
        assert_eq!(snap["store"], Condition::Ok);
        assert_eq!(
            snap["serial:/dev/ttyA"],
            Condition::Degraded("device not available".into())
        );
        h.remove(&Part::Serial("/dev/ttyA".into()));
        assert!(h.is_ok());
        assert_eq!(h.snapshot().len(), 1);
    }

    #[test]
    fn the_board_keeps_activity_beside_conditions_and_forgets_it_with_the_part() {
        let h = Health::default();
        let mqtt = Part::Mqtt;
        let barn = Part::Bucket("barn".into());
        h.set_ok(&mqtt);
        h.input_seen(&mqtt, 10);
        h.input_seen(&mqtt, 20);
        h.delivered(&barn, 30);
        h.set_uplink(
            &barn,
            UplinkMode::Paused,
            Some("dakkio answered 401".into()),
        );
        h.set_pacing(&barn, 1500);
        let b = h.board();
        assert_eq!(b[&mqtt].0, Some(Condition::Ok));
        assert_eq!(b[&mqtt].1.last_input_ms, Some(20));
        assert_eq!(b[&barn].0, None);
        assert_eq!(b[&barn].1.last_delivery_ms, Some(30));
        assert_eq!(
            b[&barn].1.uplink,
            Some((UplinkMode::Paused, Some("dakkio answered 401".into())))
        );
        assert_eq!(b[&barn].1.pacing_ms, 1500);
        h.remove(&barn);
        assert!(!h.board().contains_key(&barn));
    }
}
