//! dakkio-gateway: an edge daemon that keeps every sensor reading in a local
//! SQLite queue and forwards it to dakkio.
//!
//! ```text
//!  serial ports ─┐                                           ┌─► uplink ──► dakkio  POST /api/data/batch
//!  MQTT broker ──┼─► ingest ─► Reading ─► store (SQLite) ────┤     (one forwarder per bucket)
//!  local API  ───┘   (parse,      │        queue + history   └─► api ───► local query / analytics / keys
//!  POST /api/data     route)      │                                 (same paths and scopes as dakkio)
//!                                 └─ bad input ─► rejects table (counted, inspectable)
//!
//!  config (TOML) ─► validated Config ─► app supervisor
//!  telemetry: tracing → journald under systemd, stderr otherwise · /metrics · sd_notify
//! ```
//!
//! The promise that shapes everything: a reading is acknowledged (MQTT
//! PUBACK, HTTP 201) only after the store's transaction holding it has
//! committed, and from then on it is accounted for in the ledger until it is
//! delivered, dead-lettered or — only by the configured size policy —
//! dropped.
//!
//! | module | role |
//! |---|---|
//! | [`dakkio`] | what belongs to dakkio's API: ingest bodies and their validation, error texts, key types |
//! | [`config`] | TOML → `Raw…` (serde, unknown keys refused) → validated [`config::Config`]; errors name file, line, key |
//! | [`reading`] | [`reading::Reading`], dakkio ids and timestamps |
//! | [`ingest`] | pure payload decoders and line framing; the MQTT and serial inputs; one input run through a configuration (`rejects replay`, `try`) |
//! | [`store`] | the SQLite queue: one writer thread, group commit, delivery cursor, ledger, size budget; local queries |
//! | [`uplink`] | one forwarder per bucket to dakkio's batch ingest: retries, splitting, dead letters, quota pacing |
//! | [`alerts`] | dakkio's alert rules evaluated on every committed reading; durable webhook/MQTT notifications |
//! | [`api`] | the local dakkio API with dakkio's key scopes, `/health`, `/metrics` and the status page (`/`, `/api/status`) |
//! | [`app`] | the supervisor: builds the parts, runs them under one cancellation token, stops them in order; live reload (plan / watch) |
//! | [`telemetry`] | logs, the [`telemetry::Health`] board keyed by [`telemetry::Part`] (conditions and last activity), the metrics recorder, sd_notify |
//! | [`topic`] | MQTT topic patterns with named and multi-level segments, `skip_topics` globs, disjoint subscriptions (std only) |
//! | [`tls`] | PEM loading and rustls client/server configs, one typed error |
//! | [`clock`] | whether the system clock is synchronised (adjtimex), boot time and boot id, behind a trait tests can fake |
//! | [`retry`] | the one exponential backoff setup (backon) |
//! | [`secret`] | [`secret::Secret`]: keys that never print themselves |
//!
//! The binary (`src/main.rs`) only parses the command line, starts
//! telemetry and runs [`app`]; its other commands are in `src/cli/`.
//!
//! Test support (the dakkio stand-in, mosquitto, ptys, the gateway process,
//! the fault rig) lives in the `testkit/` workspace member, a dev-dependency
//! only. The crash tests' switches that turn durability off exist only with
//! the `fault-injection` feature (enabled by testkit, never by a package);
//! the fuzz entry points only with `fuzzing` (enabled by `fuzz/`) or in
//! unit tests.

pub mod alerts;
pub mod api;
pub mod app;
pub mod clock;
pub mod config;
pub mod dakkio;
/// Entry points of the fuzz targets; compiled only for them (`fuzz/`
/// enables the `fuzzing` feature) and for the unit tests that replay their
/// seeds and findings.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod memory;
pub mod reading;
pub mod retry;
pub mod secret;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod topic;
pub mod uplink;
