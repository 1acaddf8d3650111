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
