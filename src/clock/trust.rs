//! The clock-trust task: watches the kernel's synchronisation status while
//! readings are held for it, re-stamps them when it comes, and applies the
//! `[clock] earlier_boot` policy to holds of earlier boots.
//!
//! It never wakes while nothing is held and the clock is synchronised: it
//! waits for the writer's notification ([`ClockGate::held`]). While readings
//! are held it checks once a second; while the clock is not synchronised and
//! nothing is held, every 10 s (for `/health`).
//! State: `/health` part `clock` (degraded while not synchronised, with the
//! number held), metric `dakkio_readings_waiting_for_clock`, `queue stats`
//! (`held_for_clock` per bucket).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ClockConfig, EarlierBoot};
use crate::store::{ClockGate, ClockOp, StoreHandle};
use crate::telemetry::{Health, Part};

/// How often the status is read while something waits for it.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// … and while nothing is held but the clock is not synchronised.
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(10);

pub struct ClockTrust {
    config: ClockConfig,
    store: StoreHandle,
    health: Health,
}

impl ClockTrust {
    pub fn new(config: ClockConfig, store: StoreHandle, health: Health) -> Self {
        store.clock_gate().set_enabled(config.hold_unsynced);
        ClockTrust {
            config,
            store,
            health,
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let gate: std::sync::Arc<ClockGate> = self.store.clock_gate().clone();
        let started = Instant::now();
        let mut warned_unsynced = false;
        loop {
            let held = self.held().await;
            let status = gate.source().status();
            metrics::gauge!("dakkio_readings_waiting_for_clock").set(held as f64);
            if status.synced || !self.config.hold_unsynced {
                self.health.set_ok(&Part::Clock);
                if warned_unsynced && status.synced {
                    info!("system clock synchronised");
                    warned_unsynced = false;
                }
            } else {
                self.health.set_degraded(
                    &Part::Clock,
                    format!(
                        "system clock not synchronised (NTP); {held} readings held until it is"
                    ),
                );
                if !warned_unsynced {
                    warn!(
                        held,
                        maxerror_us = status.maxerror_us,
                        "system clock not synchronised; readings stamped with the receive time \
                         are held until it is, then re-stamped"
                    );
                    warned_unsynced = true;
                }
            }
            let mut still_held = held;
            if held > 0 && status.synced {
                let src = gate.source();
                let op = ClockOp::Restamp {
                    boot_id: gate.boot_id().to_owned(),
                    boot_ms: src.boot_ms(),
                    wall_ms: src.wall_ms(),
                };
                if let Ok(n) = self.store.clock(op).await {
                    if n > 0 {
                        info!(
                            readings = n,
                            "held readings re-stamped with the synchronised clock"
                        );
                    }
                }
                still_held = self.held().await;
            }
            if still_held > 0 && started.elapsed() >= self.config.earlier_boot_wait {
                let keep = self.config.earlier_boot == EarlierBoot::Keep;
                let op = ClockOp::ReleaseOtherBoots {
                    boot_id: gate.boot_id().to_owned(),
                    keep,
                };
                if let Ok(n) = self.store.clock(op).await {
                    if n > 0 {
                        warn!(
                            readings = n,
                            kept_as_dead_letters = keep,
                            "readings of an earlier boot never got a synchronised time; {}",
                            if keep {
                                "kept as dead letters (`dead-letters retry` forwards them)"
                            } else {
                                "forwarded with metadata timeEstimated"
                            }
                        );
                    }
                }
                still_held = self.held().await;
            }
            metrics::gauge!("dakkio_readings_waiting_for_clock").set(still_held as f64);
            // Held readings: check every second. Not synchronised but
            // nothing held: every 10 s (for `/health`). Otherwise sleep
            // until the writer holds something.
            let every = if still_held > 0 {
                Some(CHECK_EVERY)
            } else if !status.synced && self.config.hold_unsynced {
                Some(IDLE_CHECK_EVERY)
            } else {
                None
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = gate.held.notified() => {}
                _ = tokio::time::sleep(every.unwrap_or_default()), if every.is_some() => {}
            }
        }
        self.health.remove(&Part::Clock);
    }

    /// Readings held now, all buckets.
    async fn held(&self) -> i64 {
        self.store.reader().held_for_clock().await.unwrap_or(0)
    }
}
