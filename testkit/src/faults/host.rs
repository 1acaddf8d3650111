//! The host side of the faults: the root check, a network namespace for
//! the gateway with nftables drop rules (partitions), a small loop-mounted
//! ext4 (full disk), libfaketime (clock jumps), and the store's integrity
//! check.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Set to `1` to skip (with a printed "skipped") the scenarios that need
/// root when not running as root; without it they fail and say why.
pub const SKIP_ENV: &str = "DAKKIO_FAULTS_SKIP_PRIVILEGED";

/// True when the scenario can run; see [`SKIP_ENV`].
pub fn privileged(scenario: &str, needs: &str) -> bool {
    if crate::is_root() {
        return true;
    }
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!("{scenario}: skipped ({needs} needs root; {SKIP_ENV}=1)");
        return false;
    }
    panic!(
        "{scenario} needs root for {needs} (CI runs as root); \
         set {SKIP_ENV}=1 to skip it on a workstation"
    );
}

/// Run a command to completion; panic with its stderr when it fails.
pub fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{program}` ({e}); scripts/test.sh installs the test packages")
        });
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace for the gateway, joined to the host by a veth pair
/// (`host_ip` on the host side, `ns_ip` inside), with an nftables table in
/// the namespace that drops TCP to and from the ports in its `blocked`
/// set: a partition as the gateway sees it (silence, no reset), which plain
/// loopback cannot give reliably. Unique names per test; removed on drop
/// (the rules live in the namespace and go with it).
pub struct NetNs {
    pub name: String,
    host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl NetNs {
    pub fn create() -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are at most 15 bytes: 3 + 5 + a few.
        let tag = format!("{:05x}{k}", pid & 0xfffff);
        // A /30 of 10.0.0.0/8 per (process, namespace): 19 bits of pid and
        // 3 of the counter, so that parallel test binaries do not meet.
        let net = (((pid & 0x7ffff) << 3) | (k & 7)) << 2;
        let ip = |host: u32| {
            let a = net | host;
            format!("10.{}.{}.{}", (a >> 16) & 255, (a >> 8) & 255, a & 255)
        };
        let ns = NetNs {
            name: format!("dkf{tag}"),
            host_if: format!("dkh{tag}"),
            host_ip: ip(1),
            ns_ip: ip(2),
        };
        let ns_if = format!("dkn{tag}");
        sh("ip", &["netns", "add", &ns.name]);
        sh(
            "ip",
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
            ],
        );
        sh("ip", &["link", "set", &ns_if, "netns", &ns.name]);
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &ns.host_if,
            ],
        );
        sh("ip", &["link", "set", &ns.host_if, "up"]);
        let ns_addr = format!("{}/30", ns.ns_ip);
        ns.exec("ip", &["addr", "add", &ns_addr, "dev", &ns_if]);
        ns.exec("ip", &["link", "set", &ns_if, "up"]);
        ns.exec("ip", &["link", "set", "lo", "up"]);
        for rule in [
            "add table inet partition",
            "add set inet partition blocked { type inet_service; }",
            "add chain inet partition out { type filter hook output priority 0; }",
            "add chain inet partition in { type filter hook input priority 0; }",
            "add rule inet partition out tcp dport @blocked drop",
            "add rule inet partition in tcp sport @blocked drop",
        ] {
            ns.exec("nft", &[rule]);
        }
        ns
    }

    /// Run `program` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        sh("ip", &all);
    }

    /// Drop all TCP between the gateway and `port` on the host side.
    pub fn block(&self, port: u16) {
        self.exec(
            "nft",
            &[&format!("add element inet partition blocked {{ {port} }}")],
        );
    }

    pub fn heal(&self, port: u16) {
        self.exec(
            "nft",
            &[&format!(
                "delete element inet partition blocked {{ {port} }}"
            )],
        );
    }

    /// Run `f` on a thread that has joined the namespace: a process it
    /// starts (the gateway) lives in the namespace, while this test process
    /// (with the in-process stand-in) stays on the host.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: a valid namespace fd; setns changes only this thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A small ext4 image, loop-mounted at `mount` (no reserved blocks, so
/// "free" is what a writer can use); unmounted on drop.
pub struct LoopDisk {
    pub mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDisk {
    pub fn create(mib: u64) -> LoopDisk {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        File::create(&image).unwrap().set_len(mib << 20).unwrap();
        let image = image.to_str().unwrap();
        sh("mkfs.ext4", &["-q", "-F", "-m", "0", image]);
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        sh("mount", &["-o", "loop", image, mount.to_str().unwrap()]);
        LoopDisk { mount, _dir: dir }
    }

    /// Bytes an unprivileged writer could still allocate.
    pub fn free_bytes(&self) -> u64 {
        let path = CString::new(self.mount.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string and a zeroed out-struct.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut st), 0);
            st.f_bavail as u64 * st.f_frsize as u64
        }
    }

    /// A file that takes all free space but `leave` bytes.
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        let path = self.mount.join(name);
        let f = File::create(&path).unwrap();
        // A gateway writing meanwhile takes space between the measure and
        // the allocation: measure again and retry.
        for _ in 0..50 {
            let len = self.free_bytes().saturating_sub(leave);
            // SAFETY: a valid fd; allocates real blocks (set_len would not).
            let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
            if rc == 0 {
                return path;
            }
            assert_eq!(rc, libc::ENOSPC, "fallocate {len} bytes: error {rc}");
            f.set_len(0).unwrap();
        }
        panic!(
            "the free space of {} never held still",
            self.mount.display()
        );
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        // Lazy: a gateway that is still exiting must not leave the mount
        // (and its loop device, freed by autoclear) behind.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
    }
}

/// libfaketime's preload library (its multiarch directory found at run
/// time).
pub fn libfaketime() -> PathBuf {
    let mut candidates = vec![PathBuf::from("/usr/lib/faketime/libfaketime.so.1")];
    if let Ok(dirs) = std::fs::read_dir("/usr/lib") {
        for d in dirs.flatten() {
            candidates.push(d.path().join("faketime/libfaketime.so.1"));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("libfaketime not found: install the `faketime` package (scripts/test.sh does)")
}

/// `PRAGMA integrity_check` on a store file (the gateway stopped or
/// running).
pub fn integrity(db: &Path) -> String {
    let c = dakkio_gateway::store::inspect(db).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}
