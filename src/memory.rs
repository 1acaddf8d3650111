//! Giving memory back to the system after a burst.
//!
//! glibc's allocator keeps freed memory in its arenas: after a backlog of
//! large messages or requests has drained, the process would keep its peak
//! resident size although nothing holds those bytes any more, and the
//! unit's `MemoryMax` counts it. The parts that buffer bursts (the uplink's
//! forwarder, the MQTT input) call [`give_memory_back`] once a burst has
//! drained, not per message: a trim walks the free lists.

/// Return the allocator's free memory to the system (`malloc_trim`; a no-op
/// on other allocators than glibc's).
pub fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
