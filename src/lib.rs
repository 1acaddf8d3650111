//! dakkio-gateway: an edge daemon that keeps every sensor reading in a local
//! SQLite queue and forwards it to dakkio.
//!
//! (The architecture overview is filled in as the modules land.)

pub mod ingest;
pub mod reading;
