//! The fault-injection suite (RELIABILITY.md P1–P10 under faults): the real
//! gateway binary, a real mosquitto broker, real pty pairs and real SQLite
//! files, with the dakkio stand-in upstream. Every scenario ends with one
//! `testkit::faults::Tally` line that checks the ledger against what the producers
//! know was accepted: loss 0, duplicates counted. The rig (producers,
//! upstream, reckoning, namespaces, loop disk) is `testkit::faults`.
//!
//! `cargo test --test faults -- --nocapture` prints the table. The CI run
//! is bounded (each scenario a few seconds to a minute); set
//! `DAKKIO_FAULTS_LONG=1` for the long soak variants.

mod boot_clock;
mod clock;
mod disk;
mod partition;
#[path = "../integration/support/mod.rs"]
mod support;

mod inbox;
mod kill;
mod oversize;
mod serial;
mod sigterm;
mod upstream;
