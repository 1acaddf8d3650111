//! Live configuration reload.
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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::{RunOptions, Running};
use crate::config::{self, ApiConfig, Bucket, Config, SerialConfig};
use crate::telemetry;

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

/// Which part a TLS file belongs to (its contents' change restarts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FileOwner {
    Api,
    Mqtt,
    Uplink,
}

/// The TLS files a configuration names, with the part that reads them.
fn tls_files(c: &Config) -> Vec<(FileOwner, PathBuf)> {
    let mut out = Vec::new();
    if let Some(t) = &c.api.tls {
        out.push((FileOwner::Api, t.cert_file.clone()));
        out.push((FileOwner::Api, t.key_file.clone()));
    }
    if let Some(t) = c.mqtt.as_ref().and_then(|m| m.tls.as_ref()) {
        if let Some(ca) = &t.ca_file {
            out.push((FileOwner::Mqtt, ca.clone()));
        }
        if let Some((cert, key)) = &t.client_auth {
            out.push((FileOwner::Mqtt, cert.clone()));
            out.push((FileOwner::Mqtt, key.clone()));
        }
    }
    if let Some(ca) = &c.uplink.ca_file {
        out.push((FileOwner::Uplink, ca.clone()));
    }
    out
}

/// SHA-256 of a file's contents (`None` if unreadable): TLS files are small.
fn digest(path: &Path) -> Option<[u8; 32]> {
    crate::secret::read_small_file(path, crate::secret::MAX_FILE)
        .ok()
        .map(|b| Sha256::digest(&b).into())
}

fn digests(c: &Config) -> BTreeMap<PathBuf, Option<[u8; 32]>> {
    tls_files(c)
        .into_iter()
        .map(|(_, p)| {
            let d = digest(&p);
            (p, d)
        })
        .collect()
}

/// What a bucket is apart from its key: a change restarts the parts that
/// route or forward by bucket.
fn bucket_shapes(c: &Config) -> Vec<(&str, &str)> {
    c.buckets
        .iter()
        .map(|b| (b.id.as_str(), b.name.as_str()))
        .collect()
}

/// The `[api]` section without the admin key (which applies live).
fn api_without_admin(a: &ApiConfig) -> ApiConfig {
    ApiConfig {
        admin_key: None,
        ..a.clone()
    }
}

/// What a reload has to do, computed from the running and the new
/// configuration (pure, unit-tested).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    /// Keys that need a process restart (the running value stays).
    pub needs_restart: Vec<&'static str>,
    pub mqtt: bool,
    /// Serial ports to stop (removed or changed), by path.
    pub serial_stop: Vec<String>,
    /// Serial ports to start (added or changed), by path.
    pub serial_start: Vec<String>,
    pub api: bool,
    pub admin_key: bool,
    pub uplink: bool,
    /// Buckets whose write key alone changed (no uplink restart).
    pub keys: Vec<String>,
}

impl Plan {
    /// The plan to go from `old` to `new`; `changed_files` are TLS files
    /// whose contents changed. Values that cannot change live are copied
    /// from `old` into `new`.
    pub fn between(old: &Config, new: &mut Config, changed_files: &BTreeSet<PathBuf>) -> Plan {
        let mut plan = Plan::default();
        if new.gateway.id != old.gateway.id {
            plan.needs_restart.push("gateway.id");
        }
        if new.gateway.data_dir != old.gateway.data_dir {
            plan.needs_restart.push("gateway.data_dir");
        }
        if new.gateway != old.gateway && plan.needs_restart.is_empty() {
            plan.needs_restart.push("gateway");
        }
        new.gateway = old.gateway.clone();
        if new.store != old.store {
            plan.needs_restart.push("store");
            new.store = old.store.clone();
        }
        if new.log != old.log {
            plan.needs_restart.push("log");
            new.log = old.log.clone();
        }
        let file_changed = |owner: FileOwner| {
            tls_files(new)
                .iter()
                .any(|(o, p)| *o == owner && changed_files.contains(p))
        };
        let buckets_reshaped = bucket_shapes(old) != bucket_shapes(new);
        plan.mqtt = old.mqtt != new.mqtt || buckets_reshaped || file_changed(FileOwner::Mqtt);
        plan.uplink =
            old.uplink != new.uplink || buckets_reshaped || file_changed(FileOwner::Uplink);
        plan.api = api_without_admin(&old.api) != api_without_admin(&new.api)
            || buckets_reshaped
            || file_changed(FileOwner::Api);
        plan.admin_key = old.api.admin_key != new.api.admin_key;
        if !plan.uplink {
            plan.keys = new
                .buckets
                .iter()
                .filter(|b| old.bucket(&b.id).is_some_and(|o| o.key != b.key))
                .map(|b| b.id.clone())
                .collect();
        }
        let old_ports: BTreeMap<&str, &SerialConfig> =
            old.serial.iter().map(|p| (p.path.as_str(), p)).collect();
        let new_ports: BTreeMap<&str, &SerialConfig> =
            new.serial.iter().map(|p| (p.path.as_str(), p)).collect();
        for (path, p) in &old_ports {
            if new_ports.get(path) != Some(p) {
                plan.serial_stop.push(path.to_string());
            }
        }
        for (path, p) in &new_ports {
            if old_ports.get(path) != Some(p) {
                plan.serial_start.push(path.to_string());
            }
        }
        plan
    }

    /// The parts that change, for the `configuration reloaded` line (never
    /// a key value: buckets are named by name).
    pub fn changed(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        if self.mqtt {
            out.push("mqtt".to_owned());
        }
        let ports: BTreeSet<&String> = self.serial_stop.iter().chain(&self.serial_start).collect();
        out.extend(ports.into_iter().map(|p| format!("serial:{p}")));
        if self.api {
            out.push("api".to_owned());
        } else if self.admin_key {
            out.push("api.admin_key".to_owned());
        }
        if self.uplink {
            out.push("uplink".to_owned());
        }
        for id in &self.keys {
            let name = new
                .bucket(id)
                .map_or(id.as_str(), |b: &Bucket| b.name.as_str());
            out.push(format!("key:{name}"));
        }
        out
    }
}

/// The files to watch, as (canonical directory, file name): the
/// configuration file, its TLS files and the files secrets come from (a
/// changed key file reloads, and the new key applies like any other).
fn watch_targets(c: &Config) -> BTreeSet<(PathBuf, std::ffi::OsString)> {
    std::iter::once(c.path.clone())
        .chain(tls_files(c).into_iter().map(|(_, p)| p))
        .chain(c.secret_files.iter().cloned())
        .filter_map(|p| {
            let name = p.file_name()?.to_owned();
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            Some((dir, name))
        })
        .collect()
}

/// inotify on the directories of the watched files; relevant events go to
/// a bounded channel of one (a burst collapses into one pending wake-up).
struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    targets: Arc<Mutex<BTreeSet<(PathBuf, std::ffi::OsString)>>>,
    dirs: BTreeSet<PathBuf>,
}

impl Watch {
    fn new(tx: mpsc::Sender<()>) -> Watch {
        let targets: Arc<Mutex<BTreeSet<(PathBuf, std::ffi::OsString)>>> = Arc::default();
        let seen = targets.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            use notify::event::{AccessKind, AccessMode, EventKind};
            let Ok(event) = res else { return };
            match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
                EventKind::Access(_) => return,
                _ => {}
            }
            let targets = seen.lock().expect("watch targets");
            let relevant = event
                .paths
                .iter()
                .any(|p| match (p.parent(), p.file_name()) {
                    (Some(d), Some(n)) => targets.contains(&(d.to_owned(), n.to_owned())),
                    _ => false,
                });
            drop(targets);
            if relevant {
                // Full: a wake-up is already pending.
                let _ = tx.try_send(());
            }
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                error!(
                    error = %e,
                    "cannot watch the configuration file; reload with SIGHUP \
                     (`systemctl reload dakkio-gateway`)"
                );
                None
            }
        };
        Watch {
            watcher,
            targets,
            dirs: BTreeSet::new(),
        }
    }

    /// Watch what `config` names (and stop watching what it no longer does).
    fn update(&mut self, config: &Config) {
        use notify::Watcher as _;
        let targets = watch_targets(config);
        let dirs: BTreeSet<PathBuf> = targets.iter().map(|(d, _)| d.clone()).collect();
        *self.targets.lock().expect("watch targets") = targets;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for gone in self.dirs.difference(&dirs) {
            let _ = w.unwatch(gone);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch a directory for configuration changes; reload with SIGHUP"
                );
            }
        }
        self.dirs = dirs;
    }
}

/// The reload task: owns the running parts and the current configuration.
pub(super) struct Reloader {
    config: Arc<Config>,
    running: Running,
    options: RunOptions,
    digests: BTreeMap<PathBuf, Option<[u8; 32]>>,
}

impl Reloader {
    pub fn new(config: Arc<Config>, running: Running, options: RunOptions) -> Reloader {
        let digests = digests(&config);
        Reloader {
            config,
            running,
            options,
            digests,
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
    async fn reload(&mut self, trigger: Trigger) {
        telemetry::notify(&reloading());
        self.reload_inner(trigger).await;
        telemetry::notify(&[sd_notify::NotifyState::Ready]);
    }

    async fn reload_inner(&mut self, trigger: Trigger) {
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
                return;
            }
            Err(e) => {
                error!(error = %e, "configuration reload failed");
                return;
            }
        };
        let mut new = match loaded {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!("dakkio_config_reloads_total", "result" => "invalid")
                    .increment(1);
                // One line: every problem names file, line and key.
                let text = e.to_string().replace("\n  ", "; ");
                error!(
                    trigger = trigger.as_str(),
                    error = %text,
                    "configuration not reloaded: the new file is invalid; still running on the previous one"
                );
                return;
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
            return;
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
        } else {
            info!(
                trigger = trigger.as_str(),
                changed = %changed.join(", "),
                "configuration reloaded"
            );
        }
    }

    /// Stop what changed, then start it on the new configuration.
    async fn apply(&mut self, plan: &Plan, new: &Arc<Config>) {
        let r = &mut self.running;
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
            r.stop("mqtt").await;
        }
        for path in &plan.serial_stop {
            r.stop(&format!("serial:{path}")).await;
            info!(port = %path, "serial port stopped for the new configuration");
        }
        if plan.api {
            r.stop("api").await;
        }
        if plan.uplink {
            r.stop("uplink").await;
            // The new forwarders start clean: a paused or failing bucket's
            // condition is theirs to report again.
            for b in &self.config.buckets {
                r.health.remove(&format!("bucket:{}", b.name));
            }
        }
        // Parts that are gone for good leave the health board.
        for path in &plan.serial_stop {
            if !plan.serial_start.contains(path) {
                r.health.remove(&format!("serial:{path}"));
            }
        }
        if new.mqtt.is_none() {
            r.health.remove(crate::ingest::mqtt::HEALTH_PART);
        }
        if !new.api.enabled {
            r.health.remove("api");
        }
        if plan.mqtt {
            r.start_mqtt(new);
        }
        for path in &plan.serial_start {
            if let Some(port) = new.serial.iter().find(|p| &p.path == path) {
                r.start_serial(port);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Environment};

    struct NoEnv;
    impl Environment for NoEnv {
        fn var(&self, name: &str) -> Option<String> {
            match name {
                "KEY_A" => Some("dakkio_w_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into()),
                "KEY_B" => Some("dakkio_w_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".into()),
                _ => None,
            }
        }
        fn hostname(&self) -> Option<String> {
            Some("host".into())
        }
    }

    const BASE: &str = r#"
[gateway]
id = "gw"
data_dir = "/tmp/x"

[[buckets]]
id = "aaaaaaaaaaaaaaaaaaaaaaaa"
name = "barn"
write_key_env = "KEY_A"

[mqtt]
host = "127.0.0.1"

[[mqtt.routes]]
topic = "barn/+"
bucket = "aaaaaaaaaaaaaaaaaaaaaaaa"
data_source = "111111111111111111111111"

[[serial]]
path = "/dev/ttyA"
line = { format = "kv" }
bucket = "aaaaaaaaaaaaaaaaaaaaaaaa"
data_source = "111111111111111111111111"

[[serial]]
path = "/dev/ttyB"
line = { format = "kv" }
bucket = "aaaaaaaaaaaaaaaaaaaaaaaa"
data_source = "222222222222222222222222"
"#;

    fn cfg(text: &str) -> Config {
        parse(text, Path::new("/etc/g.toml"), &NoEnv).unwrap_or_else(|e| panic!("{e}"))
    }

    fn plan(old: &str, new: &str) -> (Plan, Config) {
        let old = cfg(old);
        let mut new = cfg(new);
        let p = Plan::between(&old, &mut new, &BTreeSet::new());
        (p, new)
    }

    #[test]
    fn same_file_plans_nothing() {
        let (p, _) = plan(BASE, BASE);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_new_write_key_is_handed_over_without_restarts() {
        let (p, new) = plan(BASE, &BASE.replace("KEY_A", "KEY_B"));
        assert_eq!(p.keys, vec!["aaaaaaaaaaaaaaaaaaaaaaaa".to_owned()]);
        assert!(!p.uplink && !p.mqtt && !p.api);
        assert_eq!(p.changed(&new), vec!["key:barn".to_owned()]);
    }

    #[test]
    fn a_changed_port_restarts_only_that_port() {
        let (p, new) = plan(
            BASE,
            &BASE.replace("222222222222222222222222", "333333333333333333333333"),
        );
        assert_eq!(p.serial_stop, vec!["/dev/ttyB".to_owned()]);
        assert_eq!(p.serial_start, vec!["/dev/ttyB".to_owned()]);
        assert!(!p.mqtt && !p.uplink && !p.api);
        assert_eq!(p.changed(&new), vec!["serial:/dev/ttyB".to_owned()]);
    }

    #[test]
    fn a_changed_route_restarts_only_mqtt() {
        let (p, _) = plan(BASE, &BASE.replace("barn/+", "shed/+"));
        assert!(p.mqtt && !p.uplink && !p.api);
        assert!(p.serial_stop.is_empty() && p.serial_start.is_empty());
    }

    #[test]
    fn uplink_settings_restart_the_forwarders() {
        let (p, _) = plan(BASE, &format!("{BASE}\n[uplink]\nbatch_size = 7\n"));
        assert!(p.uplink && !p.mqtt && !p.api);
        assert!(p.keys.is_empty());
    }

    #[test]
    fn store_and_data_dir_need_a_restart_and_keep_the_running_value() {
        let (p, new) = plan(
            BASE,
            &format!(
                "{}\n[store]\nmax_size = \"64MiB\"\n",
                BASE.replace("/tmp/x", "/tmp/y")
            ),
        );
        assert_eq!(p.needs_restart, vec!["gateway.data_dir", "store"]);
        assert_eq!(new.gateway.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(new.store, cfg(BASE).store);
        assert!(p.changed(&new).is_empty());
    }

    #[test]
    fn a_changed_tls_file_restarts_only_its_part() {
        let text = format!(
            "{BASE}\n[api]\ntls_cert_file = \"/etc/tls/api.crt\"\n\
             tls_key_file = \"/etc/tls/api.key\"\n"
        );
        let old = cfg(&text);
        let mut new = cfg(&text);
        let unrelated: BTreeSet<PathBuf> = [PathBuf::from("/nowhere")].into();
        assert_eq!(Plan::between(&old, &mut new, &unrelated), Plan::default());
        let cert: BTreeSet<PathBuf> = [PathBuf::from("/etc/tls/api.crt")].into();
        let p = Plan::between(&old, &mut new, &cert);
        assert!(p.api && !p.mqtt && !p.uplink && !p.admin_key);
        assert_eq!(p.changed(&new), vec!["api".to_owned()]);
    }

    #[test]
    fn added_and_removed_ports_start_and_stop_alone() {
        let without_b = BASE[..BASE.rfind("[[serial]]").unwrap()].to_owned();
        let (p, _) = plan(BASE, &without_b);
        assert_eq!(p.serial_stop, vec!["/dev/ttyB".to_owned()]);
        assert!(p.serial_start.is_empty());
        let (p, _) = plan(&without_b, BASE);
        assert_eq!(p.serial_start, vec!["/dev/ttyB".to_owned()]);
        assert!(p.serial_stop.is_empty() && !p.mqtt && !p.uplink && !p.api);
    }

    #[test]
    fn a_renamed_bucket_restarts_what_routes_by_bucket() {
        let (p, _) = plan(BASE, &BASE.replace("name = \"barn\"", "name = \"shed\""));
        assert!(p.uplink && p.mqtt && p.api);
        assert!(p.keys.is_empty());
    }
}
