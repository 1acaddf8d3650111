//! dakkio-gateway: an edge daemon that keeps every sensor reading in a local
//! SQLite queue and forwards it to dakkio.

pub mod api;
pub mod app;
pub mod config;
pub mod ingest;
pub mod reading;
pub mod secret;
pub mod standin;
pub mod store;
pub mod telemetry;
