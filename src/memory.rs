//! The allocator's side of the resident size: how glibc's allocator is set
//! up at start, and giving memory back to the system after a burst.
//!
//! glibc's allocator keeps freed memory in its arenas: after a backlog of
//! large messages or requests has drained, the process would keep its peak
//! resident size although nothing holds those bytes any more, and the
//! unit's `MemoryMax` counts it. The parts that buffer bursts (the uplink's
//! forwarder, the MQTT input) call [`give_memory_back`] once a burst has
//! drained, not per message: a trim walks the free lists.
//!
//! Two settings, made by [`tune_allocator`] before the runtime starts its
//! threads (docs/performance.md, "Peak RSS at full speed", has the
//! measurements):
//! - **One arena** ([`ARENAS`]). By default glibc gives threads up to 8
//!   arenas per core, and memory freed into one arena serves only the
//!   threads on it: at full speed each of the daemon's threads (async
//!   workers, the store's writer, the blocking pool's readers) peaked in
//!   its own arena, and the resident size was the sum of those peaks.
//!   Each thread's cache (`tcache`) keeps the common small allocations off
//!   the shared arena's lock.
//! - **A fixed mmap threshold** ([`MMAP_THRESHOLD`]). Large blocks (the
//!   inbox's rows, a backlog's queues) are mapped on their own: a growing
//!   one is moved by `mremap` instead of copied beside its old copy, its
//!   unused capacity is never touched (not resident), and freeing it gives
//!   it back at once. glibc's default threshold rises to the size of the
//!   largest mapped block freed (up to 32 MiB), after which such blocks
//!   come from the heap, where they leave holes.

/// Arenas the daemon allows glibc (`M_ARENA_MAX`).
pub const ARENAS: i32 = 1;

/// Blocks from this size up are mapped on their own (`M_MMAP_THRESHOLD`;
/// glibc's initial value is 128 KiB, then it moves).
pub const MMAP_THRESHOLD: i32 = 256 << 10;

/// Set up glibc's allocator as the module doc says. An operator's
/// `MALLOC_ARENA_MAX` or `MALLOC_MMAP_THRESHOLD_` in the environment wins
/// for its setting (glibc reads them itself). A no-op on other allocators
/// than glibc's.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (env, param, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, ARENAS),
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: mallopt only sets a parameter of the allocator.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// Return the allocator's free memory to the system (`malloc_trim`; a no-op
/// on other allocators than glibc's).
pub fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
