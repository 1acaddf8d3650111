//! Test support for dakkio-gateway, shared by its integration tests, fault
//! suite, benchmarks and fuzz regression checks. A workspace member used only
//! as a dev-dependency: no package or release build contains it.
//!
//! | module | role |
//! |---|---|
//! | [`standin`] | a local stand-in of dakkio's ingest API: records what it accepts, plays scripted faults |

pub mod standin;
