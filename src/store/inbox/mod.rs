//! The inbox: where fresh readings wait, durable in an append-only journal
//! file and visible from memory, until they are moved into `readings` in
//! one large transaction (issue 15: an SD card wears with every page a
//! commit rewrites; a journal append rewrites one).
//!
//! - `journal.rs`: the file (records with CRC and epoch, preallocated,
//!   one `fdatasync` per group, reset after each move);
//! - `mirror.rs`: the same entries in memory, shared with the readers;
//! - `snapshot.rs`: the journal as another process reads it (`queue stats`);
//! - `drain.rs`: the move into `readings`, in slices between groups;
//! - `write.rs`: the writer's side — which groups go to the inbox, the
//!   append, the move, and the replay at start.

#![allow(dead_code)] // wired into the writer step by step

pub(crate) mod drain;
pub(crate) mod journal;
pub(crate) mod mirror;
pub(crate) mod snapshot;
pub(crate) mod write;

#[cfg(test)]
mod tests;
