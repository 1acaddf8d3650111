//! Logs and service-manager notifications.
//!
//! Logs go to journald when systemd started us with a journal stream
//! (`JOURNAL_STREAM` set), to stderr otherwise. The level comes from the
//! config's `log.level`, overridden by `RUST_LOG`. Field names become
//! journald fields in upper case with an `F_` prefix (tracing-journald).

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
            Part::Alerts => f.write_str("alerts"),
        }
    }
}

/// A shared board where each part reports its condition under its
/// [`Part`] name: `store`, `mqtt`, `serial:<path>`, `bucket:<name>`, `api`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<Part, Condition>>>,
}

impl Health {
    pub fn set_ok(&self, part: &Part) {
        self.set(part, Condition::Ok);
    }

    pub fn set_degraded(&self, part: &Part, reason: impl Into<String>) {
        self.set(part, Condition::Degraded(reason.into()));
    }

    pub fn set(&self, part: &Part, condition: Condition) {
        self.inner
            .lock()
            .expect("health lock")
            .insert(part.clone(), condition);
    }

    /// Forget a part (a removed serial port or bucket after a reload).
    pub fn remove(&self, part: &Part) {
        self.inner.lock().expect("health lock").remove(part);
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
}
