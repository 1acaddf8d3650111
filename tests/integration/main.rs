//! The integration tests: one binary, real components (SQLite files,
//! processes, and later mosquitto, pty pairs and HTTP over loopback), shared
//! helpers in `support/`.

mod support;

mod alerts;
mod api;
mod cli;
mod config;
mod fault_switches;
mod mqtt;
mod reload;
mod serial;
mod store;
mod uplink;
