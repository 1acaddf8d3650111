//! The inbox: where fresh readings wait, durable in an append-only journal
//! file and visible from memory, until they are moved into `readings` in
//! one large transaction (issue 15: an SD card wears with every page a
//! commit rewrites; a journal append rewrites one).
//!
//! - `journal.rs`: the file (records with CRC and epoch, preallocated,
//!   one `fdatasync` per group, reset after each move);
//! - `mirror.rs`: the same entries in memory, shared with the readers.

#![allow(dead_code)] // wired into the writer step by step

pub(crate) mod journal;
pub(crate) mod mirror;
