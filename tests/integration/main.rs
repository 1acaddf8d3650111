//! The integration tests: one binary, real components (SQLite files,
//! processes, and later mosquitto, pty pairs and HTTP over loopback), shared
//! helpers in `support/`.

mod support;

mod alerts;
mod api;
mod api_fidelity;
mod api_limits;
mod cli;
mod config;
mod fair;
mod fault_switches;
mod modbus;
mod mqtt;
mod payloads;
mod rejects;
mod reload;
mod serial;
mod serial_formats;
mod status_page;
mod store;
mod systemd_reload;
mod uplink;
