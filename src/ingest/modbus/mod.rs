//! Modbus polling: one task per `[[modbus]]` bus reads its devices'
//! registers on their intervals and hands one reading per device group and
//! poll to the store.
//!
//! The pure half, unit-tested without I/O:
//! - [`plan`]: a device's registers → groups (one per poll interval) →
//!   requests (contiguous registers of one function in one read);
//! - [`decode`]: register words → a value (byte and word order, type,
//!   scale and offset).
//!
//! The I/O half, [`poll`]: the bus task (the connection, the schedule,
//! timeouts and retries, device health, exception counts, the commits);
//! its invariants are written at the top of `poll.rs`. [`status`] reads back
//! what the tasks persisted, for `queue stats`.
//!
//! Framing and CRC are tokio-modbus's (RTU over tokio-serial, and TCP).

pub mod decode;
pub mod plan;
pub mod poll;
pub mod status;

pub use poll::{BusHandle, ModbusBusTask};
pub use status::BusStatus;
