//! The integration tests: one binary, real components (SQLite files,
//! processes, and later mosquitto, pty pairs and HTTP over loopback), shared
//! helpers in `support/`.

mod support;

mod api;
mod cli;
mod config;
mod fault_switches;
mod mqtt;
mod rejects;
mod reload;
mod serial;
mod serial_formats;
mod store;
mod uplink;
