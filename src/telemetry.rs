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

/// A shared board where each part reports its condition under a stable
/// name: `store`, `mqtt`, `serial:<path>`, `bucket:<name>`, `api`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, Condition>>>,
}

impl Health {
    pub fn set_ok(&self, part: &str) {
        self.set(part, Condition::Ok);
    }

    pub fn set_degraded(&self, part: &str, reason: impl Into<String>) {
        self.set(part, Condition::Degraded(reason.into()));
    }

    pub fn set(&self, part: &str, condition: Condition) {
        self.inner
            .lock()
            .expect("health lock")
            .insert(part.to_owned(), condition);
    }

    /// Forget a part (a removed serial port or bucket after a reload).
    pub fn remove(&self, part: &str) {
        self.inner.lock().expect("health lock").remove(part);
    }

    pub fn snapshot(&self) -> BTreeMap<String, Condition> {
        self.inner.lock().expect("health lock").clone()
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
