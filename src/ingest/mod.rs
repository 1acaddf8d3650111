//! Ingest: bytes from sensors become [`DecodedPoint`](crate::reading::DecodedPoint)s.
//!
//! The pure half lives here and does no I/O, so every rule about bad input is
//! unit tested:
//!
//! - [`framing`] cuts a serial byte stream into lines, with memory bounded by
//!   the configured maximum line length whatever the device sends;
//! - [`decode`] turns one MQTT payload or one serial line into points, or into
//!   a [`decode::DecodeError`] whose [`reason`](decode::DecodeError::reason) is
//!   the stable label used for metrics and the rejects table;
//! - [`replay`] runs one input (a kept reject, or one given to `try`)
//!   through a configuration with the same router and line decoders.
//!
//! The I/O tasks (`mqtt/`, `serial.rs`) only move bytes into these functions
//! and route what comes out. Invariant shared by both: a payload or line is
//! accepted or rejected as a whole, never half-parsed.

pub mod decode;
pub mod framing;
pub mod modbus;
pub mod mqtt;
pub mod replay;
pub mod route;
pub mod serial;
