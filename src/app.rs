//! The supervisor: builds every part from a validated [`Config`], runs each
//! task in one of two groups (inputs, uplink; a cancellation token and task
//! tracker each), and stops them in a fixed order so that nothing already
//! received is lost:
//!
//! 1. stop the inputs (MQTT, serial, local API): they stop taking new data
//!    and wait for the commits of what they already handed to the store;
//! 2. give the uplink a last chance to deliver, within `STOP_UPLINK_DEADLINE`;
//! 3. drop every store handle; the writer commits its last group,
//!    checkpoints the WAL and closes the database.
//!
//! A fatal storage error (the writer thread ended on its own) stops
//! everything the same way and makes `run` return an error (exit code 1,
//! systemd restarts the service).
//!
//! **Live reload** (`reload/`, [`RunOptions::reload`]): each reloadable
//! part (`mqtt`, `serial:<path>`, `modbus:<bus>`, `api`, `uplink`) also has a token and
//! tracker of its own (`Running`), a child of its group's, so a reload can
//! stop and restart that part alone while the group still tracks it for the
//! stop order above. The store is opened once, here, and never by a reload.

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{BucketKeyState, Config};
use crate::store::{self, StoreHandle};
use crate::telemetry;

pub mod reload;

/// How long the uplink may keep delivering after inputs have stopped.
pub const STOP_UPLINK_DEADLINE: Duration = Duration::from_secs(5);

/// How `main` started the gateway, beyond the configuration file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--data-dir`: replaces `gateway.data_dir` of the file, also on reload.
    pub data_dir_override: Option<std::path::PathBuf>,
    /// Watch the configuration file (and the TLS files it names) and reload
    /// on change and on SIGHUP. Off for in-process runs (benchmarks).
    pub reload: bool,
}

/// Run the gateway until `shutdown` is cancelled (by a signal handler in
/// `main`, or by a test). No live reload (see [`run_with`]).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, RunOptions::default()).await
}

/// How often a store that is still opening tells systemd so.
const OPENING_TICK: Duration = Duration::from_secs(10);

/// Await the store's opening, telling systemd every [`OPENING_TICK`] that
/// the start goes on (`EXTEND_TIMEOUT_USEC`): a full check of a store after
/// a crash, or a schema upgrade of a store holding millions of undelivered
/// readings (47 s for 10 million here, minutes on an SD card), must not be
/// killed by the start timeout — its transaction would roll back, and every
/// restart would begin it again.
async fn opened_in_time<T>(
    opening: tokio::task::JoinHandle<T>,
) -> Result<T, tokio::task::JoinError> {
    opened_in_time_telling(opening, OPENING_TICK, telemetry::notify).await
}

/// [`opened_in_time`], telling `notify` (systemd's socket in the daemon)
/// every `every`.
async fn opened_in_time_telling<T>(
    opening: tokio::task::JoinHandle<T>,
    every: Duration,
    mut notify: impl FnMut(&[sd_notify::NotifyState]),
) -> Result<T, tokio::task::JoinError> {
    tokio::pin!(opening);
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(started + every, every);
    loop {
        tokio::select! {
            r = &mut opening => return r,
            _ = tick.tick() => {
                let waited = started.elapsed().as_secs();
                info!(waited_s = waited, "still opening the store (a check after a crash, or a schema upgrade of a large store); systemd's start timeout is extended");
                notify(&[
                    sd_notify::NotifyState::ExtendTimeoutUsec(3 * every.as_micros() as u32),
                    sd_notify::NotifyState::Status("opening the store (check or schema upgrade)"),
                ]);
            }
        }
    }
}

/// [`run`], with live reload when `options.reload` (the daemon).
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    options: RunOptions,
) -> anyhow::Result<()> {
    for w in &config.warnings {
        warn!("{w}");
    }
    let store_config = config.store.clone();
    let data_dir = config.gateway.data_dir.clone();
    let opening = tokio::task::spawn_blocking(move || store::open(&store_config, &data_dir));
    let (store, writer) = opened_in_time(opening)
        .await
        .context("opening the store")?
        .with_context(|| {
            format!(
                "cannot open the store in `{}`",
                config.gateway.data_dir.display()
            )
        })?;
    info!(
        gateway = %config.gateway.id,
        path = %store.path().display(),
        "store open"
    );
    announce_buckets(&config);
    store.set_shares(share_table(&config));
    let config = std::sync::Arc::new(config);
    let health = telemetry::Health::default();
    // Before any input starts: the evaluator must see every committed reading.
    let alerts =
        match crate::alerts::Alerts::new(config.clone(), store.clone(), health.clone()).await {
            Ok(a) => Some(a),
            Err(e) => {
                error!(error = %e, "alert engine not started; alert rules are not evaluated");
                health.set_degraded(&telemetry::Part::Alerts, e.to_string());
                None
            }
        };

    let parts = Parts {
        config: &config,
        store: &store,
        health,
        metrics: telemetry::install_metrics(),
    };
    parts.health.set_ok(&telemetry::Part::Store);
    let inputs = Tasks::new(&shutdown);
    let uplink = Tasks::new(&CancellationToken::new());
    let running = spawn_parts(&parts, &inputs, &uplink, alerts);
    inputs.tracker.close();
    uplink.tracker.close();
    let reloader = async {
        if options.reload {
            reload::Reloader::new(config.clone(), running, options)
                .run()
                .await
        } else {
            drop(running);
            std::future::pending().await
        }
    };

    let mut writer_done = tokio::task::spawn_blocking(move || writer.join());
    telemetry::notify(&[sd_notify::NotifyState::Ready]);
    info!("gateway running");

    let fatal = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut writer_done => Some(r),
        never = report_to_systemd(&store, &parts.health) => match never {},
        // Dropped at stop: the watcher ends; parts it restarted are in the
        // groups' trackers and stop with them below.
        never = reloader => match never {},
    };
    telemetry::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(r) = fatal {
        inputs.cancel.cancel();
        uplink.cancel.cancel();
        inputs.tracker.wait().await;
        uplink.tracker.wait().await;
        let err = match r {
            Ok(Ok(())) => anyhow::anyhow!("the store writer stopped unexpectedly"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the store failed"),
            Err(e) => anyhow::anyhow!("the store writer panicked: {e}"),
        };
        error!("{err:#}");
        return Err(err);
    }

    info!("stopping: inputs first");
    inputs.cancel.cancel();
    inputs.tracker.wait().await;
    info!(deadline = ?STOP_UPLINK_DEADLINE, "inputs stopped; last delivery attempt");
    if tokio::time::timeout(STOP_UPLINK_DEADLINE, uplink.tracker.wait())
        .await
        .is_err()
    {
        uplink.cancel.cancel();
        uplink.tracker.wait().await;
    } else {
        uplink.cancel.cancel();
    }
    drop(store);
    match writer_done.await {
        Ok(Ok(())) => {
            info!("store closed; stopped cleanly");
            Ok(())
        }
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("closing the store")),
        Err(e) => Err(anyhow::anyhow!("the store writer panicked: {e}")),
    }
}

/// How often `STATUS=` is resent unchanged (and the writer pinged) under
/// systemd without a watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// The least time between two computations of the `STATUS=` line (each a
/// ledger read): under load the queue changes at every commit.
const STATUS_CHECK: Duration = Duration::from_secs(2);

/// Under systemd (`$NOTIFY_SOCKET`): keep `STATUS=` current (queued
/// readings, degraded parts) and feed the watchdog only while the store
/// writer answers a ping through its queue — a wedged pipeline (a hung
/// fsync, a deadlock) stops the pings and systemd restarts the service.
/// Outside systemd it waits forever without waking.
///
/// The line is computed again when the writer commits a group or a
/// part's condition changes — at most every [`STATUS_CHECK`] — and at
/// every ping (which also covers what another process wrote, as
/// `rejects replay`). An idle gateway so wakes only for the pings: it
/// used to read the ledger every 2 s, four context switches a second.
async fn report_to_systemd(
    store: &StoreHandle,
    health: &telemetry::Health,
) -> std::convert::Infallible {
    use tokio::time::Instant;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return std::future::pending().await;
    }
    let watchdog = sd_notify::watchdog_enabled();
    // A third of the watchdog period: a tick, a ping of at most a third,
    // and slack.
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 3).min(STATUS_EVERY));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commits = store.status();
    commits.mark_unchanged();
    // The first line at once, not after the first ping (which waits for a
    // group to pass through the writer: up to `commit_max_delay`).
    let first = status_line(store, health).await;
    telemetry::notify(&[sd_notify::NotifyState::Status(&first)]);
    let mut last = (first, Instant::now());
    let mut computed = Instant::now();
    let mut stalled = false;
    // When the line is to be computed again (something changed).
    let mut due: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let alive =
                    matches!(tokio::time::timeout(every, store.ping()).await, Ok(Ok(())));
                if alive {
                    if watchdog.is_some() {
                        telemetry::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                    if std::mem::take(&mut stalled) {
                        info!("store writer answers again; watchdog fed");
                    }
                } else if !std::mem::replace(&mut stalled, true) {
                    error!(
                        within = ?every,
                        "store writer did not answer; not feeding the watchdog"
                    );
                }
                due = Some(Instant::now());
            }
            // The writer's status changes at every commit (and with its
            // disk figures): watched only while no computation is due,
            // so a busy store wakes this task once per `STATUS_CHECK`.
            changed = commits.changed(), if due.is_none() => {
                due = Some(match changed {
                    Ok(()) => computed + STATUS_CHECK,
                    // The writer is gone: the pings say so.
                    Err(_) => Instant::now() + every,
                });
            }
            _ = health.changed(), if due.is_none() => {
                due = Some(computed + STATUS_CHECK);
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)),
                if due.is_some() => {}
        }
        if due.is_some_and(|d| d > Instant::now()) {
            continue;
        }
        due = None;
        commits.mark_unchanged();
        let status = status_line(store, health).await;
        computed = Instant::now();
        if status != last.0 || last.1.elapsed() >= STATUS_EVERY {
            telemetry::notify(&[sd_notify::NotifyState::Status(&status)]);
            last = (status, Instant::now());
        }
    }
}

/// One line for `systemctl status`: queued readings and degraded parts.
async fn status_line(store: &StoreHandle, health: &telemetry::Health) -> String {
    let queued = match store.reader().queued_total().await {
        Ok(n) => format!("{n} readings queued"),
        Err(_) => "queue size unknown".into(),
    };
    let degraded: Vec<String> = health
        .snapshot()
        .into_iter()
        .filter_map(|(part, c)| match c {
            telemetry::Condition::Degraded(why) => Some(format!("{part}: {why}")),
            telemetry::Condition::Ok => None,
        })
        .collect();
    if degraded.is_empty() {
        format!("{queued}; all parts ok")
    } else {
        format!("{queued}; degraded: {}", degraded.join("; "))
    }
}

/// A group of tasks that stop together.
#[derive(Clone)]
struct Tasks {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    fn new(parent: &CancellationToken) -> Tasks {
        Tasks {
            cancel: parent.child_token(),
            tracker: TaskTracker::new(),
        }
    }
}

/// What every part is built from.
struct Parts<'a> {
    config: &'a Config,
    store: &'a StoreHandle,
    /// Shared condition board (`/health`, systemd `STATUS=`).
    health: telemetry::Health,
    /// Renders `/metrics`; `None` if a recorder was already installed.
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// Start the inputs and the forwarders. Each part is a task with a child
/// token of its group; the reloadable ones (MQTT, each serial port, the
/// local API, the uplink) are started through [`Running`], which keeps a
/// token and tracker per part so that a reload can stop and restart one
/// part alone.
fn spawn_parts(
    parts: &Parts,
    inputs: &Tasks,
    uplink: &Tasks,
    alerts: Option<(crate::alerts::Alerts, crate::alerts::AlertsHandle)>,
) -> Running {
    let (alerts, alerts_handle) = match alerts {
        Some((part, handle)) => (Some(part), Some(handle)),
        None => (None, None),
    };
    let mut running = Running {
        store: parts.store.clone(),
        health: parts.health.clone(),
        metrics: parts.metrics.clone(),
        inputs: inputs.clone(),
        uplink: uplink.clone(),
        slots: std::collections::BTreeMap::new(),
        uplink_handle: None,
        modbus: std::collections::BTreeMap::new(),
        admin: crate::api::AdminSlot::new(parts.config.api.admin_key.as_ref().map(|k| k.sha256)),
        alerts: alerts_handle,
    };
    // Alerts: in the uplink group, so that it stops after the inputs (the
    // firings of their last readings are recorded).
    if let Some(part) = alerts {
        let part = part.with_drain(inputs.cancel.clone(), inputs.tracker.clone());
        let slot = Slot::spawn(uplink, |cancel| part.run(cancel));
        running.slots.insert(telemetry::Part::Alerts, slot);
    }
    // Inputs: MQTT.
    running.start_mqtt(parts.config);
    // Inputs: serial ports.
    for port in &parts.config.serial {
        running.start_serial(port);
    }
    // Inputs: Modbus buses.
    for bus in &parts.config.modbus {
        running.start_modbus(bus);
    }
    // Inputs: the local API.
    let shared = std::sync::Arc::new(parts.config.clone());
    running.start_api(&shared);
    // Uplink: one forwarder per bucket.
    running.start_uplink(parts.config);
    if inputs.tracker.is_empty() {
        info!(
            "no inputs are configured yet (MQTT, serial, local API); readings can only \
             arrive once one is"
        );
    }
    // Clock trust (after the check above: it is not an input): re-stamps readings held for a synchronised clock.
    let trust = crate::clock::trust::ClockTrust::new(
        parts.config.clock.clone(),
        parts.store.clone(),
        parts.health.clone(),
    );
    let slot = Slot::spawn(inputs, |cancel| trust.run(cancel));
    running.slots.insert(telemetry::Part::Clock, slot);
    running
}

/// One running part: its own token (a child of its group's) and tracker.
/// Its task is also tracked by the group, so that stopping the gateway
/// waits for it whether or not a reload restarted it.
struct Slot {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Slot {
    fn spawn<F>(group: &Tasks, task: impl FnOnce(CancellationToken) -> F) -> Slot
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let slot = Slot {
            cancel: group.cancel.child_token(),
            tracker: TaskTracker::new(),
        };
        group
            .tracker
            .spawn(slot.tracker.track_future(task(slot.cancel.clone())));
        slot.tracker.close();
        slot
    }

    /// Cancel the part and wait until its task has ended (an input waits for
    /// the commits of what it handed to the store; a forwarder finishes its
    /// in-flight request and mark).
    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

/// The parts that a configuration reload can restart one by one, keyed by
/// [`telemetry::Part`] (`mqtt`, `serial:<path>`, `api`, `uplink`). The store is not one of them:
/// it stays open for the life of the process.
/// Each configured bucket's `store_share`, for the store's fair shares.
fn share_table(config: &Config) -> store::ShareTable {
    config
        .buckets
        .iter()
        .map(|b| (b.id.clone(), b.store_share))
        .collect()
}

struct Running {
    store: StoreHandle,
    health: telemetry::Health,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    inputs: Tasks,
    uplink: Tasks,
    slots: std::collections::BTreeMap<telemetry::Part, Slot>,
    /// New write keys reach the forwarders here (no restart).
    uplink_handle: Option<crate::uplink::UplinkHandle>,
    /// Running Modbus buses by name: changed devices reach them here (the
    /// bus keeps its connection and its other devices).
    modbus: std::collections::BTreeMap<String, crate::ingest::modbus::BusHandle>,
    /// The local API's admin key hash (a new one applies at once).
    admin: crate::api::AdminSlot,
    /// The alert engine, served by the local API.
    alerts: Option<crate::alerts::AlertsHandle>,
}

impl Running {
    fn start_mqtt(&mut self, config: &Config) {
        if let Some(part) =
            crate::ingest::mqtt::MqttInput::new(config, self.store.clone(), self.health.clone())
        {
            let slot = Slot::spawn(&self.inputs, |cancel| part.run(cancel));
            self.slots.insert(telemetry::Part::Mqtt, slot);
        }
    }

    fn start_serial(&mut self, port: &crate::config::SerialConfig) {
        let part = crate::ingest::serial::SerialPort::new(
            port.clone(),
            self.store.clone(),
            self.health.clone(),
        );
        let slot = Slot::spawn(&self.inputs, |cancel| part.run(cancel));
        self.slots
            .insert(telemetry::Part::Serial(port.path.clone()), slot);
    }

    fn start_modbus(&mut self, bus: &crate::config::ModbusBus) {
        let (part, handle) = crate::ingest::modbus::ModbusBusTask::new(
            bus.clone(),
            self.store.clone(),
            self.health.clone(),
        );
        let slot = Slot::spawn(&self.inputs, |cancel| part.run(cancel));
        self.slots
            .insert(telemetry::Part::Modbus(bus.name.clone()), slot);
        self.modbus.insert(bus.name.clone(), handle);
    }

    fn start_api(&mut self, config: &std::sync::Arc<Config>) {
        if !config.api.enabled {
            return;
        }
        let (config, store) = (config.clone(), self.store.clone());
        let (health, metrics) = (self.health.clone(), self.metrics.clone());
        let admin = self.admin.clone();
        let alerts = self.alerts.clone();
        let slot = Slot::spawn(&self.inputs, |cancel| async move {
            match crate::api::Api::with_admin_slot(config, store, health.clone(), metrics, admin)
                .await
            {
                Ok(api) => match alerts {
                    Some(a) => api.with_alerts(a).run(cancel).await,
                    None => api.run(cancel).await,
                },
                Err(e) => {
                    error!(error = %e, "local API not started");
                    health.set_degraded(&telemetry::Part::Api, e.to_string());
                }
            }
        });
        self.slots.insert(telemetry::Part::Api, slot);
    }

    fn start_uplink(&mut self, config: &Config) {
        match crate::uplink::Uplink::new(config, self.store.clone(), self.health.clone()) {
            Ok((part, handle)) => {
                let part = part.with_drain(self.inputs.cancel.clone(), self.inputs.tracker.clone());
                let slot = Slot::spawn(&self.uplink, |cancel| part.run(cancel));
                self.slots.insert(telemetry::Part::Uplink, slot);
                self.uplink_handle = Some(handle);
            }
            Err(e) => {
                self.uplink_handle = None;
                error!(
                    error = %e,
                    "cannot start the uplink; readings keep queueing until the configuration is fixed"
                )
            }
        }
    }

    /// Stop one part (if running) and wait for it.
    async fn stop(&mut self, part: &telemetry::Part) {
        if let Some(slot) = self.slots.remove(part) {
            slot.stop().await;
        }
    }
}

fn announce_buckets(config: &Config) {
    if config.buckets.is_empty() {
        warn!("no `[[buckets]]` configured: readings cannot be routed anywhere");
    }
    for b in &config.buckets {
        match &b.key {
            BucketKeyState::Ready(_) => {
                info!(bucket = %b.name, id = %b.id, key = %b.key_source, "bucket ready")
            }
            BucketKeyState::Missing(why) => warn!(
                bucket = %b.name,
                id = %b.id,
                "bucket has no write key yet ({why}); its readings are kept locally \
                 until one is configured"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that is slow to open (a schema upgrade of millions of rows,
    /// a full check after a crash) extends systemd's start timeout at
    /// every tick, each time by three ticks, with a status saying why, for
    /// as long as the opening lasts; here the opening ends only once two
    /// extensions were told. One that opens before the first tick tells
    /// nothing.
    #[tokio::test]
    async fn a_slow_opening_extends_the_start_timeout_every_tick() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let opening = tokio::spawn(async move {
            released.await.expect("released");
            "opened"
        });
        let (told_tx, mut told_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let releaser = tokio::spawn(async move {
            let mut told = Vec::new();
            while told.len() < 2 {
                told.push(told_rx.recv().await.expect("told"));
            }
            release.send(()).expect("opening waits");
            told
        });
        let every = Duration::from_millis(20);
        let opened = tokio::time::timeout(
            Duration::from_secs(30),
            opened_in_time_telling(opening, every, |states| {
                let line = states.iter().map(|s| s.to_string()).collect::<Vec<_>>();
                let _ = told_tx.send(line.join("\n"));
            }),
        )
        .await
        .expect("two extensions told while the store opened")
        .unwrap();
        assert_eq!(opened, "opened");
        let told = releaser.await.unwrap();
        for t in &told {
            assert!(t.contains("EXTEND_TIMEOUT_USEC=60000"), "{t}");
            assert!(t.contains("STATUS=opening the store"), "{t}");
        }

        let opened_at_once = tokio::spawn(async { "opened" });
        let mut told = 0;
        let opened =
            opened_in_time_telling(opened_at_once, Duration::from_secs(3600), |_| told += 1)
                .await
                .unwrap();
        assert_eq!((opened, told), ("opened", 0));
    }
}
