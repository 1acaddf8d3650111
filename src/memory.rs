//! The allocator's side of the resident size: how many arenas glibc keeps,
//! and giving memory back to the system after a burst.
//!
//! glibc's allocator keeps freed memory in its arenas: after a backlog of
//! large messages or requests has drained, the process would keep its peak
//! resident size although nothing holds those bytes any more, and the
//! unit's `MemoryMax` counts it. The parts that buffer bursts (the uplink's
//! forwarder, the MQTT input) call [`give_memory_back`] once a burst has
//! drained, not per message: a trim walks the free lists.
//!
//! By default glibc gives threads up to 8 arenas per core, and memory freed
//! into one arena serves only the threads using that arena: at full speed
//! each of the daemon's threads (async workers, the store's writer, the
//! blocking pool's readers, the query threads) peaks in its own arena, and
//! the resident size is the sum of those peaks. The daemon limits them to
//! [`ARENAS`] at start ([`limit_arenas`]); docs/performance.md gives the
//! measurements (end to end at full speed: peak RSS 52–64 MiB with the
//! default arenas, 41–44 MiB with one, CPU per reading unchanged).

/// Arenas the daemon allows glibc (`M_ARENA_MAX`). One: threads share the
/// free memory; each thread's cache (`tcache`) keeps the common small
/// allocations off the arena's lock.
pub const ARENAS: i32 = 1;

/// Limit glibc's arenas to [`ARENAS`], before the runtime starts its
/// threads. An operator's `MALLOC_ARENA_MAX` in the environment wins (glibc
/// reads it itself). A no-op on other allocators than glibc's.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; called before
    // the daemon starts other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
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
