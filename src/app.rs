//! The supervisor: builds every part from a validated [`Config`], runs each
//! task under one cancellation token and task tracker, and stops them in a
//! fixed order so that nothing already received is lost:
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

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{BucketKeyState, Config};
use crate::store::{self, StoreHandle};
use crate::telemetry;

/// How long the uplink may keep delivering after inputs have stopped.
pub const STOP_UPLINK_DEADLINE: Duration = Duration::from_secs(5);

/// Run the gateway until `shutdown` is cancelled (by a signal handler in
/// `main`, or by a test).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    for w in &config.warnings {
        warn!("{w}");
    }
    let store_config = config.store.clone();
    let data_dir = config.gateway.data_dir.clone();
    let (store, writer) =
        tokio::task::spawn_blocking(move || store::open(&store_config, &data_dir))
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

    let parts = Parts {
        config: &config,
        store: &store,
        health: telemetry::Health::default(),
        metrics: telemetry::install_metrics(),
    };
    parts.health.set_ok("store");
    let inputs = Tasks::new(&shutdown);
    let uplink = Tasks::new(&CancellationToken::new());
    spawn_parts(&parts, &inputs, &uplink);
    inputs.tracker.close();
    uplink.tracker.close();

    let mut writer_done = tokio::task::spawn_blocking(move || writer.join());
    telemetry::notify(&[sd_notify::NotifyState::Ready]);
    info!("gateway running");

    let fatal = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut writer_done => Some(r),
        never = report_to_systemd(&store, &parts.health) => match never {},
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

/// How often `STATUS=` is refreshed (and the writer pinged) under systemd
/// without a watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// Under systemd (`$NOTIFY_SOCKET`): keep `STATUS=` current (queued
/// readings, degraded parts) and feed the watchdog only while the store
/// writer answers a ping through its queue — a wedged pipeline (a hung
/// fsync, a deadlock) stops the pings and systemd restarts the service.
/// Outside systemd it waits forever without waking.
async fn report_to_systemd(
    store: &StoreHandle,
    health: &telemetry::Health,
) -> std::convert::Infallible {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return std::future::pending().await;
    }
    let watchdog = sd_notify::watchdog_enabled();
    // A third of the watchdog period: a tick, a ping of at most a third,
    // and slack.
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 3).min(STATUS_EVERY));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (String::new(), std::time::Instant::now());
    let mut stalled = false;
    loop {
        tick.tick().await;
        let alive = matches!(tokio::time::timeout(every, store.ping()).await, Ok(Ok(())));
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
        let status = status_line(store, health).await;
        if status != last.0 || last.1.elapsed() >= STATUS_EVERY {
            telemetry::notify(&[sd_notify::NotifyState::Status(&status)]);
            last = (status, std::time::Instant::now());
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
/// token of its group.
fn spawn_parts(parts: &Parts, inputs: &Tasks, uplink: &Tasks) {
    // Inputs: MQTT.
    if let Some(part) =
        crate::ingest::mqtt::MqttInput::new(parts.config, parts.store.clone(), parts.health.clone())
    {
        inputs.tracker.spawn(part.run(inputs.cancel.child_token()));
    }
    // Inputs: serial ports.
    for port in &parts.config.serial {
        let part = crate::ingest::serial::SerialPort::new(
            port.clone(),
            parts.store.clone(),
            parts.health.clone(),
        );
        inputs.tracker.spawn(part.run(inputs.cancel.child_token()));
    }
    // Inputs: the local API.
    if parts.config.api.enabled {
        let (config, store) = (
            std::sync::Arc::new(parts.config.clone()),
            parts.store.clone(),
        );
        let (health, metrics) = (parts.health.clone(), parts.metrics.clone());
        let cancel = inputs.cancel.child_token();
        inputs.tracker.spawn(async move {
            match crate::api::Api::new(config, store, health.clone(), metrics).await {
                Ok(api) => api.run(cancel).await,
                Err(e) => {
                    error!(error = %e, "local API not started");
                    health.set_degraded("api", e.to_string());
                }
            }
        });
    }
    // Uplink: one forwarder per bucket.
    match crate::uplink::Uplink::new(parts.config, parts.store.clone(), parts.health.clone()) {
        Ok((part, _handle)) => {
            // `_handle` (resume / new key) is for the config reload.
            let part = part.with_drain(inputs.cancel.clone(), inputs.tracker.clone());
            uplink.tracker.spawn(part.run(uplink.cancel.child_token()));
        }
        Err(e) => error!(
            error = %e,
            "cannot start the uplink; readings keep queueing until the configuration is fixed"
        ),
    }
    if inputs.tracker.is_empty() {
        info!(
            "no inputs are configured yet (MQTT, serial, local API); readings can only \
             arrive once one is"
        );
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
