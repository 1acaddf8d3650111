//! `[store]`: size bound, full policy, durability and group commit.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Ctx;

/// What the store does when it reaches `max_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Remove delivered history first, then the oldest undelivered readings
    /// (counted as dropped, with the reason).
    DropOldest,
    /// Refuse new readings (not acknowledged: MQTT keeps them at the broker).
    Reject,
}

/// SQLite's `synchronous` setting in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// Every commit is on disk before it is reported (survives power loss).
    Full,
    /// Faster and fewer writes; the last commits can roll back on power loss
    /// although they were acknowledged.
    Normal,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    max_size: Option<Spanned<String>>,
    on_full: Option<OnFull>,
    synchronous: Option<Synchronous>,
    commit_max_readings: Option<Spanned<i64>>,
    commit_max_delay: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
    max_rejects: Option<Spanned<i64>>,
    max_sources_per_bucket: Option<Spanned<i64>>,
    inbox_readings: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Bytes of database pages in use never exceed this.
    pub max_size: u64,
    pub on_full: OnFull,
    pub synchronous: Synchronous,
    /// A group is committed when it holds this many readings …
    pub commit_max_readings: usize,
    /// … or when its first reading has waited this long, unless an input
    /// or the uplink asks for the commit sooner (`store/policy.rs`).
    pub commit_max_delay: Duration,
    /// Delivered readings are kept this long for local queries.
    pub retention: Duration,
    /// Rejected inputs kept for inspection (the oldest are removed beyond).
    pub max_rejects: u64,
    /// Data sources one bucket may have in the store (sources are never
    /// removed). A reading that would add one more is rejected as
    /// `too_many_sources` (MQTT, serial) or refused with a 400 (the API).
    pub max_sources_per_bucket: u64,
    /// Fresh readings wait in the inbox (an append-only journal beside
    /// the database, and memory) and are moved into the database in
    /// groups of up to this many (`store/inbox/`); 0 writes every group
    /// into the database directly, as before.
    pub inbox_readings: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_size: 1 << 30,
            on_full: OnFull::DropOldest,
            synchronous: Synchronous::Full,
            commit_max_readings: 1000,
            commit_max_delay: Duration::from_secs(1),
            retention: Duration::from_secs(7 * 86_400),
            max_rejects: 10_000,
            // Far above any real site (a few hundred sensors), low enough
            // that a publisher inventing ids cannot grow the sources table
            // and every retention pass (one step per source) without bound.
            max_sources_per_bucket: 10_000,
            inbox_readings: 20_000,
        }
    }
}

/// Below this the store cannot keep a useful queue plus its headroom.
pub const MIN_MAX_SIZE: u64 = 4 << 20;

impl RawStore {
    pub(crate) fn validate(self, ctx: &mut Ctx) -> StoreConfig {
        let d = StoreConfig::default();
        let max_size = ctx.size("store.max_size", &self.max_size, d.max_size, "1GiB");
        if max_size < MIN_MAX_SIZE {
            ctx.error(
                self.max_size.as_ref().map(|v| v.span()),
                "store.max_size",
                format!(
                    "`store.max_size` must be at least 4MiB, e.g. `512MiB`; got `{}`",
                    self.max_size.as_ref().map_or("", |v| v.get_ref().as_str())
                ),
            );
        }
        let commit_max_delay = ctx.duration(
            "store.commit_max_delay",
            &self.commit_max_delay,
            d.commit_max_delay,
            "50ms",
        );
        if commit_max_delay > Duration::from_secs(10) {
            ctx.error(
                self.commit_max_delay.as_ref().map(|v| v.span()),
                "store.commit_max_delay",
                "`store.commit_max_delay` must be at most `10s` (readings are acknowledged \
                 only after their commit), e.g. `50ms`",
            );
        }
        StoreConfig {
            max_size,
            on_full: self.on_full.unwrap_or(d.on_full),
            synchronous: self.synchronous.unwrap_or(d.synchronous),
            commit_max_readings: ctx.int_in(
                "store.commit_max_readings",
                &self.commit_max_readings,
                1..=100_000,
                d.commit_max_readings as i64,
            ) as usize,
            commit_max_delay,
            retention: ctx.duration("store.retention", &self.retention, d.retention, "7d"),
            max_rejects: ctx.int_in(
                "store.max_rejects",
                &self.max_rejects,
                0..=10_000_000,
                d.max_rejects as i64,
            ) as u64,
            max_sources_per_bucket: ctx.int_in(
                "store.max_sources_per_bucket",
                &self.max_sources_per_bucket,
                1..=1_000_000,
                d.max_sources_per_bucket as i64,
            ) as u64,
            inbox_readings: ctx.int_in(
                "store.inbox_readings",
                &self.inbox_readings,
                0..=1_000_000,
                d.inbox_readings as i64,
            ) as usize,
        }
    }
}
