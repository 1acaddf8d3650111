//! The local API's query threads: a small pool of dedicated std threads
//! (as many as `api.max_parallel_queries`) that run the API's store reads —
//! raw and aggregated queries, analytics, bucket and status summaries — at
//! the lowest CPU priority, so that a read key flooding the API with
//! aggregations cannot take the CPU the uplink and the store writer need.
//!
//! Invariants:
//! - Each pool thread lowers its own priority once, when it starts: Linux
//!   nice 19 for that thread (`setpriority(PRIO_PROCESS, gettid(), 19)`;
//!   nice is per thread on Linux, and lowering it needs no privilege).
//!   Threads it spawns (an aggregation's parallel slices) inherit it. A
//!   failure to lower (another OS, a seccomp filter) is logged once at
//!   DEBUG and ignored: the queries still run, at normal priority.
//! - Nice 19 rather than `SCHED_IDLE`: the CFS weight of nice 19 is 15
//!   against 1024 for the uplink and writer at nice 0, so on a busy core
//!   they get ~98.5 % of it, while a query still makes steady progress and
//!   ends (and releases its read connection, its WAL read mark and its API
//!   slot). `SCHED_IDLE` (weight 3) can starve a query almost completely
//!   on a gateway whose ingest keeps the CPU busy, holding those resources
//!   for minutes; and nice shows in `top`/`ps` as operators expect.
//! - The queue is bounded (4 jobs per thread); a caller waits for room
//!   (asynchronously), so the API's own slots and time bounds apply. Jobs
//!   submitted and not yet taken by a thread: `dakkio_api_queries_waiting`.
//! - A job whose caller has gone (client disconnected, time bound passed:
//!   the answer's oneshot is closed) is skipped instead of run; a running
//!   job is stopped through its [`super::QueryStop`] as before.
//! - The uplink's claims, the writer and other subsystems never run here.
//! - The threads end when the last handle on the pool (the [`super::Reader`]
//!   that owns it) is dropped.

use std::sync::{Arc, Mutex, Once};

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Nice value of the query threads (the lowest).
pub const QUERY_NICE: i32 = 19;

/// Queued jobs per thread.
const QUEUE_PER_THREAD: usize = 4;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A bounded pool of low-priority threads for the local API's store reads.
pub struct QueryPool {
    tx: mpsc::Sender<Job>,
}

impl QueryPool {
    /// Start `threads` (at least 1) query threads.
    pub fn new(threads: usize) -> Result<QueryPool, StoreError> {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>(threads * QUEUE_PER_THREAD);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("api-query-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while waiting for the next
                        // job, never while running one.
                        let job = rx.lock().expect("query queue").blocking_recv();
                        match job {
                            Some(job) => job(),
                            None => return,
                        }
                    }
                })
                .map_err(|e| StoreError::Fatal(format!("cannot start a query thread: {e}")))?;
        }
        Ok(QueryPool { tx })
    }

    /// Run `f` on a query thread and wait for its answer. `f` is skipped
    /// when the caller stops waiting before a thread takes it.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce() -> Result<R, StoreError> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let waiting = metrics::gauge!("dakkio_api_queries_waiting");
        waiting.increment(1.0);
        let job: Job = Box::new(move || {
            waiting.decrement(1.0);
            if done.is_closed() {
                return;
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err(StoreError::Fatal("a store query panicked".into())));
            let _ = done.send(r);
        });
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Lower the calling thread's CPU priority to nice [`QUERY_NICE`]; on
/// failure log once at DEBUG and go on.
pub fn lower_priority() {
    if let Err(e) = set_own_nice(QUERY_NICE) {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            tracing::debug!(error = %e, "query threads keep normal CPU priority");
        });
    }
}

#[cfg(target_os = "linux")]
fn set_own_nice(nice: i32) -> Result<(), std::io::Error> {
    // SAFETY: plain syscalls on the calling thread, no pointers.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_own_nice(_nice: i32) -> Result<(), std::io::Error> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "per-thread nice is Linux only",
    ))
}

/// The calling thread's nice value (Linux).
#[cfg(all(test, target_os = "linux"))]
pub fn own_nice() -> Result<i32, std::io::Error> {
    // SAFETY: as above. getpriority can return -1 legitimately: errno tells.
    unsafe {
        *libc::__errno_location() = 0;
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let n = libc::getpriority(libc::PRIO_PROCESS, tid);
        if n == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_runs_on_a_query_thread_at_nice_19_and_answers() {
        let pool = QueryPool::new(2).unwrap();
        let caller = own_nice().unwrap();
        let (name, nice) = pool
            .run(|| {
                let name = std::thread::current().name().map(str::to_owned);
                Ok((
                    name,
                    own_nice().map_err(|e| StoreError::Fatal(e.to_string()))?,
                ))
            })
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("api-query-"));
        assert_eq!(nice, QUERY_NICE);
        // The caller (an async worker, like the uplink's) is untouched.
        assert_eq!(own_nice().unwrap(), caller);
    }

    #[tokio::test]
    async fn threads_spawned_by_a_job_inherit_the_low_priority() {
        let pool = QueryPool::new(1).unwrap();
        let nice = pool
            .run(|| {
                std::thread::scope(|s| s.spawn(own_nice).join().unwrap())
                    .map_err(|e| StoreError::Fatal(e.to_string()))
            })
            .await
            .unwrap();
        assert_eq!(nice, QUERY_NICE);
    }

    #[tokio::test]
    async fn errors_and_panics_come_back_as_errors() {
        let pool = QueryPool::new(1).unwrap();
        let e = pool
            .run(|| Err::<(), _>(StoreError::Fatal("boom".into())))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("boom"));
        let e = pool.run(|| -> Result<(), StoreError> { panic!("x") }).await;
        assert!(e.unwrap_err().to_string().contains("panicked"));
        // The thread survived the panic and serves the next job.
        assert_eq!(pool.run(|| Ok(7)).await.unwrap(), 7);
    }
}
