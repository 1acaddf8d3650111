//! Test support for dakkio-gateway, shared by its integration tests, fault
//! suite and benchmarks. A workspace member used only as a dev-dependency:
//! no package or release build contains it (`cargo tree -e normal` of the
//! gateway does not list it).
//!
//! Everything here drives real components: a real mosquitto on loopback,
//! socat pty pairs, the real gateway binary in a child process, SQLite
//! files. Only dakkio itself is imitated ([`standin`]).
//!
//! | module | role |
//! |---|---|
//! | [`standin`] | a local stand-in of dakkio's ingest API: records what it accepts, plays scripted faults |
//! | [`mosquitto`] | a private mosquitto broker on a free port (stop, restart, freeze); a QoS 1 publisher that counts PUBACKs |
//! | [`pty`] | a socat pty pair as a pluggable serial device; `/proc` probes (fds, memory) |
//! | [`faults`] | the fault rig: the upstream on its own runtime, numbered producers, the end-to-end [`faults::Rig`], namespaces, a small disk, the final reckoning |
//! | [`modbus`] | pymodbus's Modbus slave (RTU on a pty, or TCP), units muted and registers set over its stdin |
//! | [`gateway`] | the gateway binary in a child process with its own directory, its log lines awaitable |
//!
//! And a memory cgroup for a process ([`memory_cgroup`]), as the unit's `MemoryMax`.

pub mod faults;
pub mod gateway;
pub mod modbus;
pub mod mosquitto;
pub mod pty;
pub mod standin;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Generous upper bound for events that normally take milliseconds; tests
/// await the event and only fail when this passes.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway binary cargo built for the running test or bench:
/// `CARGO_BIN_EXE_dakkio-gateway` when set at run time, else the binary
/// beside the running executable's `deps/` directory, which is where cargo
/// puts it for integration tests and benches (the path `env!` would give
/// them; a library cannot use `env!` for another package's binary).
pub fn gateway_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_dakkio-gateway") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let mut dir = exe.parent().expect("a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the profile directory");
    }
    let bin = dir.join("dakkio-gateway");
    assert!(
        bin.exists(),
        "no gateway binary at {} (run the tests through cargo, which builds it)",
        bin.display()
    );
    bin
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Held by tests that load the machine hard (the 50,000-message crash runs)
/// and by tests that assert a time bound the issue states (re-plug within
/// 2 s, bounded memory): on a 2-core CI machine the two kinds must not run
/// at the same time, or the bound measures the neighbour's load.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (openssl),
/// written as `<name>.crt` and `<name>.key` in `dir`.
pub fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (crt, key)
}

/// One datagram from a notify socket playing systemd, retried when a
/// signal interrupts the wait (the test process has many children).
pub fn recv_notification(
    sock: &std::os::unix::net::UnixDatagram,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    loop {
        match sock.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Put process `pid` into a new memory cgroup limited to `bytes` (v1 at
/// `/sys/fs/cgroup/memory`, else v2), as the shipped unit's `MemoryMax`
/// does; swap off for it. `None` when no cgroup can be made here (not
/// root, no memory controller): the caller skips with a printed reason.
/// Remove the directory with [`remove_cgroup`] once the process is gone.
pub fn memory_cgroup(pid: i32, bytes: u64) -> Option<PathBuf> {
    let name = format!("dakkio-test-{}-{pid}", std::process::id());
    for (root, limit) in [
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes"),
        ("/sys/fs/cgroup", "memory.max"),
    ] {
        let dir = Path::new(root).join(&name);
        if std::fs::create_dir(&dir).is_err() {
            continue;
        }
        if std::fs::write(dir.join(limit), bytes.to_string()).is_ok()
            && std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok()
        {
            let _ = std::fs::write(dir.join("memory.swappiness"), "0");
            return Some(dir);
        }
        let _ = std::fs::remove_dir(&dir);
    }
    None
}

/// The cgroup's peak memory use in bytes (page cache included; 0 when
/// the kernel does not say).
pub fn cgroup_peak(dir: &Path) -> u64 {
    ["memory.max_usage_in_bytes", "memory.peak"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// How many times the kernel's OOM killer acted in the cgroup (v1
/// `memory.oom_control`, v2 `memory.events`).
pub fn cgroup_oom_kills(dir: &Path) -> u64 {
    ["memory.oom_control", "memory.events"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Remove a cgroup made by [`memory_cgroup`] (its process must be gone).
pub fn remove_cgroup(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}
