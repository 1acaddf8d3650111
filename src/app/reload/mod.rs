//! Live configuration reload: what a change restarts (`plan.rs`, pure),
//! what is watched (`watch.rs`), and the reload task that applies a plan
//! (this file).
//!
//! **Triggers.** The configuration file is watched through its parent
//! directory (editors save by writing a temporary file and renaming it over
//! the old one, which a watch on the file itself would lose), filtered by
//! file name; so are the TLS certificate and key files the configuration
//! names. Events are debounced: a reload starts once no relevant event came
//! for [`DEBOUNCE`]. SIGHUP (`systemctl reload`, `ExecReload=` in the unit)
//! takes the same path at once. File opens (our own reads) are not events.
//!
//! **Validate first.** The new file is loaded and validated completely
//! before anything changes. An invalid file changes nothing: one ERROR
//! with every problem (file, line, key, bad value, an example) and the
//! gateway keeps running on the previous configuration.
//!
//! **Only what changed restarts** ([`Plan::between`]):
//! - a bucket's write key → the forwarder gets it at once
//!   (`UplinkHandle::set_key`, which also un-pauses a refused bucket);
//! - the local API's admin key → the next request sees it (no rebind);
//! - `[mqtt]` (routes, broker, TLS files' contents) → the MQTT input alone
//!   restarts. It acknowledges a message only after its commit, so the
//!   broker redelivers what was in flight (QoS 1): nothing is lost;
//! - a `[[serial]]` port added, removed or changed → that port alone;
//! - a `[[modbus]]` bus added, removed, or its line settings changed → that
//!   bus alone; its devices alone changed → the running bus gets them and
//!   restarts only the changed devices (the connection stays open);
//! - `[uplink]`, or buckets added, removed or renamed → the forwarders
//!   restart (and the MQTT input and the local API, which route by bucket).
//!   A stopping forwarder finishes its in-flight request and mark first;
//!   what was not marked is sent again (at least once);
//! - other `[api]` keys, or its TLS files' contents → the local API restarts
//!   (it binds `api.listen` again);
//! - `[gateway]`, `[store]` and `[log]` need a restart of the process: WARN
//!   naming the key, the running value stays.
//!
//! The store is never touched: it stays open, queued readings stay queued.
//!
//! Under systemd, `RELOADING=1` (with `MONOTONIC_USEC`, as
//! `Type=notify-reload` expects) is sent before and `READY=1` after.
//!
//! **`systemctl reload` returns once the change is applied.** Debian 12
//! and Raspberry Pi OS Bookworm run systemd 252, which has no
//! `Type=notify-reload` (253): with `ExecReload=kill -HUP`, `systemctl
//! reload` returned at once. The unit's `ExecReload` is `dakkio-gateway
//! reload --pid $MAINPID` instead (`cli/reload.rs`): it sends SIGHUP and
//! waits for the outcome this task writes, after applying, to
//! `$RUNTIME_DIRECTORY/reload` (`<pid> <count> applied|unchanged|refused`);
//! a refused file makes `systemctl reload` fail (the reason is in the log,
//! once).
mod plan;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::{RunOptions, Running};
use crate::config::{self, Config};
use crate::telemetry::{self, Part};
use plan::Plan;
use watch::{digests, Watch};

/// Quiet time after the last file event before a reload starts.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// What starts a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Signal,
    File,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::File => "file change",
        }
    }
}
/// The reload task: owns the running parts and the current configuration.
pub(super) struct Reloader {
    config: Arc<Config>,
    running: Running,
    options: RunOptions,
    digests: BTreeMap<PathBuf, Option<[u8; 32]>>,
    /// The digest of the last config file refused as invalid: the same
    /// file met again (an edit caught by the watch, then `systemctl
    /// reload`) is not reported twice.
    refused: Option<[u8; 32]>,
    /// Reloads done, for the outcome file.
    reloads: u64,
}

/// What a reload did (written for `dakkio-gateway reload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
        }
    }
}

/// The file the outcome of each reload is written to, under systemd's
/// `RuntimeDirectory=` (the first one when there are several).
pub fn outcome_file() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = dirs.to_str()?.split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first).join("reload"))
}

/// Write `<pid> <count> <outcome>` atomically (a temporary file renamed).
fn record(count: u64, outcome: Outcome) {
    let Some(path) = outcome_file() else { return };
    let tmp = path.with_extension("tmp");
    let text = format!("{} {count} {}\n", std::process::id(), outcome.as_str());
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
        warn!(error = %e, path = %path.display(), "cannot record the reload's outcome");
    }
}

impl Reloader {
    pub fn new(config: Arc<Config>, running: Running, options: RunOptions) -> Reloader {
        let digests = digests(&config);
        Reloader {
            config,
            running,
            options,
            digests,
            refused: None,
            reloads: 0,
        }
    }

    /// Wait for triggers and reload, until dropped (at stop).
    pub async fn run(mut self) -> std::convert::Infallible {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                error!(error = %e, "cannot handle SIGHUP; the configuration reloads on file changes only");
                None
            }
        };
        let (tx, mut rx) = mpsc::channel(1);
        let mut watch = Watch::new(tx);
        watch.update(&self.config);
        info!(
            config = %self.config.path.display(),
            "watching the configuration for changes (SIGHUP reloads too)"
        );
        loop {
            let trigger = tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => Trigger::Signal,
                Some(()) = rx.recv() => {
                    // Debounce: wait for quiet.
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                    Trigger::File
                }
            };
            self.reload(trigger).await;
            watch.update(&self.config);
        }
    }

    /// `RELOADING=1` … `READY=1` around every reload, also one that is
    /// refused or changes nothing: `Type=notify-reload` waits for both
    /// after each SIGHUP.
    /// The outcome is recorded (for `systemctl reload`) once the change
    /// is applied.
    async fn reload(&mut self, trigger: Trigger) {
        telemetry::notify(&reloading());
        let outcome = self.reload_inner(trigger).await;
        self.reloads += 1;
        record(self.reloads, outcome);
        telemetry::notify(&[sd_notify::NotifyState::Ready]);
    }

    async fn reload_inner(&mut self, trigger: Trigger) -> Outcome {
        let path = self.config.path.clone();
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                // An empty file is valid (all defaults) but on a reload it
                // is an editor's save caught between truncate and write:
                // the write's own event reloads again.
                if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
                    return None;
                }
                let c = config::load(&path);
                Some((c.as_ref().map(digests).unwrap_or_default(), c))
            })
            .await
        };
        let (new_digests, loaded) = match loaded {
            Ok(Some(x)) => x,
            Ok(None) => {
                warn!(
                    config = %path.display(),
                    "configuration file is empty; not reloaded (keeping the running configuration)"
                );
                return Outcome::Refused;
            }
            Err(e) => {
                error!(error = %e, "configuration reload failed");
                return Outcome::Refused;
            }
        };
        let mut new = match loaded {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!("dakkio_config_reloads_total", "result" => "invalid")
                    .increment(1);
                // One line: every problem names file, line and key.
                let text = e.to_string().replace("\n  ", "; ");
                let seen = watch::file_digest(&path);
                if seen.is_some() && seen == self.refused {
                    debug!(
                        trigger = trigger.as_str(),
                        "the same invalid configuration again; still running on the previous one"
                    );
                    return Outcome::Refused;
                }
                self.refused = seen;
                // The reason is in the message itself, not only in a
                // field: plain `journalctl` shows messages only.
                error!(
                    trigger = trigger.as_str(),
                    "configuration not reloaded, still running on the previous one: {text}"
                );
                return Outcome::Refused;
            }
        };
        if let Some(d) = &self.options.data_dir_override {
            new.gateway.data_dir = d.clone();
        }
        let changed_files: BTreeSet<PathBuf> = new_digests
            .iter()
            .filter(|(p, d)| self.digests.get(*p) != Some(*d))
            .map(|(p, _)| p.clone())
            .collect();
        let plan = Plan::between(&self.config, &mut new, &changed_files);
        let changed = plan.changed(&new);
        if trigger == Trigger::File && changed.is_empty() && plan.needs_restart.is_empty() {
            // A save without a change (or a change of a comment).
            debug!("configuration file touched; nothing changed");
            self.digests = new_digests;
            return Outcome::Unchanged;
        }
        for w in &new.warnings {
            warn!("{w}");
        }
        for key in &plan.needs_restart {
            warn!(
                key,
                "a changed setting needs a restart of the gateway to apply; keeping the running value"
            );
        }
        let new = Arc::new(new);
        self.apply(&plan, &new).await;
        self.config = new;
        self.digests = new_digests;
        metrics::counter!("dakkio_config_reloads_total", "result" => "ok").increment(1);
        if changed.is_empty() {
            info!(
                trigger = trigger.as_str(),
                "configuration reloaded; nothing to change"
            );
            Outcome::Unchanged
        } else {
            info!(
                trigger = trigger.as_str(),
                changed = %changed.join(", "),
                "configuration reloaded"
            );
            Outcome::Applied
        }
    }

    /// Stop what changed, then start it on the new configuration.
    async fn apply(&mut self, plan: &Plan, new: &Arc<Config>) {
        let r = &mut self.running;
        r.store.set_shares(super::share_table(new));
        if plan.admin_key {
            r.admin.set(new.api.admin_key.as_ref().map(|k| k.sha256));
        }
        if let Some(h) = &r.uplink_handle {
            for id in &plan.keys {
                if let Some(b) = new.bucket(id) {
                    h.set_key(id, b.write_key().cloned());
                }
            }
        }
        // Stop first (in parallel would be faster, but each stop is short:
        // an input waits for its last commit, the uplink for one request).
        if plan.mqtt {
            r.stop(&Part::Mqtt).await;
        }
        for path in &plan.serial_stop {
            r.stop(&Part::Serial(path.clone())).await;
            info!(port = %path, "serial port stopped for the new configuration");
        }
        for name in &plan.modbus_stop {
            r.stop(&Part::Modbus(name.clone())).await;
            r.modbus.remove(name);
            info!(bus = %name, "modbus bus stopped for the new configuration");
        }
        for name in &plan.modbus_devices {
            if let (Some(h), Some(bus)) = (
                r.modbus.get(name),
                new.modbus.iter().find(|b| &b.name == name),
            ) {
                h.update(bus.clone());
            }
        }
        if plan.api {
            r.stop(&Part::Api).await;
        }
        if plan.uplink {
            r.stop(&Part::Uplink).await;
            // The new forwarders start clean: a paused or failing bucket's
            // condition is theirs to report again.
            for b in &self.config.buckets {
                r.health.remove(&Part::Bucket(b.name.clone()));
            }
        }
        // Parts that are gone for good leave the health board.
        for path in &plan.serial_stop {
            if !plan.serial_start.contains(path) {
                r.health.remove(&Part::Serial(path.clone()));
            }
        }
        for name in &plan.modbus_stop {
            if !plan.modbus_start.contains(name) {
                r.health.remove(&Part::Modbus(name.clone()));
            }
        }
        if new.mqtt.is_none() {
            r.health.remove(&Part::Mqtt);
        }
        if !new.api.enabled {
            r.health.remove(&Part::Api);
        }
        if plan.mqtt {
            r.start_mqtt(new);
        }
        for path in &plan.serial_start {
            if let Some(port) = new.serial.iter().find(|p| &p.path == path) {
                r.start_serial(port);
            }
        }
        for name in &plan.modbus_start {
            if let Some(bus) = new.modbus.iter().find(|b| &b.name == name) {
                r.start_modbus(bus);
            }
        }
        if plan.api {
            r.start_api(new);
        }
        if plan.uplink {
            r.start_uplink(new);
        }
    }
}

/// `RELOADING=1` with the monotonic time systemd's `Type=notify-reload`
/// expects.
fn reloading() -> Vec<sd_notify::NotifyState<'static>> {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    states
}
