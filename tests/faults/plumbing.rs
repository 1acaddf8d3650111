//! Plumbing for scenarios 2, 4 and 7 (partitions, full disk, clock jumps):
//! the root check, a network namespace for the gateway with nftables drop
//! rules, a small loop-mounted ext4, libfaketime, and the end-to-end rig —
//! a QoS 1 publisher → a real mosquitto → the real gateway binary → the
//! dakkio stand-in — that remembers every id the broker acknowledged.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use testkit::standin::Standin;

use crate::support::gateway::Gateway;
use crate::support::mosquitto::{self, Mosquitto};
use crate::support::EVENT_TIMEOUT;
use crate::tally::Tally;

pub const BUCKET: &str = "507f1f77bcf86cd799439011";
pub const SOURCE: &str = "507f1f77bcf86cd799439012";
pub const KEY: &str = "dakkio_w_0123456789abcdefghijklmnopqrstuv";
pub const TOPIC: &str = "load/dev1";

/// Set to `1` to skip (with a printed "skipped") the scenarios that need
/// root when not running as root; without it they fail and say why.
pub const SKIP_ENV: &str = "DAKKIO_FAULTS_SKIP_PRIVILEGED";

/// True when the scenario can run; see [`SKIP_ENV`].
pub fn privileged(scenario: &str, needs: &str) -> bool {
    if crate::support::is_root() {
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
        let len = self.free_bytes().saturating_sub(leave);
        let f = File::create(&path).unwrap();
        // SAFETY: a valid fd; allocates real blocks (set_len would not).
        let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
        assert_eq!(rc, 0, "fallocate {len} bytes: error {rc}");
        path
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

/// Where the broker and the stand-in listen and where the gateway runs.
pub struct Placement<'a> {
    /// Address the broker and the stand-in listen on.
    pub host: String,
    /// The gateway's namespace, if not the host's.
    pub netns: Option<&'a NetNs>,
}

impl Placement<'_> {
    pub fn loopback() -> Placement<'static> {
        Placement {
            host: "127.0.0.1".into(),
            netns: None,
        }
    }
}

impl<'a> Placement<'a> {
    pub fn across(ns: &'a NetNs) -> Placement<'a> {
        Placement {
            host: ns.host_ip.clone(),
            netns: Some(ns),
        }
    }
}

/// Publisher → mosquitto → gateway → stand-in, and the ids the broker
/// acknowledged. Fields drop in order: the gateway first.
pub struct Rig {
    pub gateway: Gateway,
    pub broker: Mosquitto,
    pub standin: Standin,
    pub rt: tokio::runtime::Runtime,
    /// Ids the broker acknowledged (PUBACK): the gateway owes all of them.
    pub accepted: BTreeSet<u64>,
    next: u64,
    /// Bytes of padding per message (to fill a disk faster).
    pub pad: usize,
}

impl Rig {
    /// Start everything; `dir` holds the gateway's config and data
    /// directory; `uplink` goes into `[uplink]` (e.g. `batch_size = 10`).
    pub fn start(at: &Placement, dir: &Path, uplink: &str, env: &[(&str, &str)]) -> Rig {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let standin = rt
            .block_on(
                Standin::builder()
                    .bucket(BUCKET)
                    .write_key(BUCKET, KEY)
                    .bind(format!("{}:0", at.host).parse().unwrap())
                    .start(),
            )
            .expect("start the stand-in");
        let broker = Mosquitto::start_on(&at.host);
        let client = format!("gw-faults-{}", standin.addr().port());
        let config = format!(
            r#"
[[buckets]]
id = "{BUCKET}"
name = "faults"
write_key = "{KEY}"

[uplink]
url = "{url}"
allow_insecure_http = true
max_batch_age = "50ms"
backoff_min = "100ms"
backoff_max = "1s"
connect_timeout = "1s"
request_timeout = "2s"
{uplink}

[mqtt]
host = "{host}"
port = {port}
client_id = "{client}"
keepalive = "5s"
reconnect_max_delay = "1s"

[[mqtt.routes]]
topic = "load/{{device}}"
bucket = "{BUCKET}"
data_source = "{SOURCE}"
metadata = {{ deviceId = "{{device}}" }}
"#,
            url = standin.url(),
            host = at.host,
            port = broker.port,
        );
        let dir = dir.to_owned();
        let start = move || {
            let g = Gateway::start_with_env(&dir, &config, env);
            g.wait_ready();
            g
        };
        let gateway = match at.netns {
            Some(ns) => ns.run(start),
            None => start(),
        };
        let rig = Rig {
            gateway,
            broker,
            standin,
            rt,
            accepted: BTreeSet::new(),
            next: 0,
            pad: 0,
        };
        rig.expect_log("mqtt subscriptions active");
        rig
    }

    /// Publish `count` new ids with QoS 1; all must be acknowledged by the
    /// broker (the publisher panics if it loses the broker).
    pub fn publish(&mut self, count: u64) {
        let pad = "x".repeat(self.pad);
        let ids = self.next..self.next + count;
        let messages = ids
            .clone()
            .map(|n| {
                let body = if pad.is_empty() {
                    format!(r#"{{"n":{n},"v":1}}"#)
                } else {
                    format!(r#"{{"n":{n},"v":1,"pad":"{pad}"}}"#)
                };
                (TOPIC.to_owned(), body.into_bytes())
            })
            .collect();
        let acked = mosquitto::publish_to(&self.broker.host, self.broker.port, messages, None);
        assert_eq!(acked as u64, count, "the broker acknowledged only {acked}");
        self.accepted.extend(ids);
        self.next += count;
    }

    /// Await a log line (panics with the log when it does not come).
    pub fn expect_log(&self, needle: &str) -> String {
        self.expect_log_within(needle, EVENT_TIMEOUT)
    }

    pub fn expect_log_within(&self, needle: &str, timeout: Duration) -> String {
        self.gateway
            .wait_for_log(needle, timeout)
            .unwrap_or_else(|| {
                panic!(
                    "no `{needle}` within {timeout:?}; gateway log:\n{}",
                    self.gateway.log_text()
                )
            })
    }

    /// How many log lines so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.gateway
            .log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn delivered_ids(&self) -> HashSet<u64> {
        self.standin
            .all_accepted_points()
            .iter()
            .filter_map(|p| p.values.get("n").and_then(|v| v.as_f64()))
            .map(|n| n as u64)
            .collect()
    }

    /// Await (event-driven: the stand-in's progress) until every accepted
    /// id has reached the stand-in, or `timeout` passes.
    pub fn wait_delivered(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // The count before the look: a point arriving in between
            // ends the wait below at once instead of being missed.
            let next = self.standin.accepted_count() + 1;
            let seen = self.delivered_ids();
            if self.accepted.iter().all(|id| seen.contains(id)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.rt
                .block_on(self.standin.wait_for_accepted(next, deadline - now));
        }
    }

    /// The scenario's end: everything delivered (or accounted for by the
    /// ledger), printed as a tally row, loss 0.
    pub fn finish(&self, scenario: &str, timeout: Duration) -> Tally {
        let all = self.wait_delivered(timeout);
        let t = Tally::reckon(
            scenario,
            &self.accepted,
            "n",
            &self.standin.all_accepted_points(),
            &self.gateway.stats().buckets,
        );
        if !all {
            eprintln!("gateway log:\n{}", self.gateway.log_text());
        }
        t.assert_no_loss();
        // In these scenarios the fault ends: everything must arrive, not
        // merely stay accounted for in the queue.
        assert!(all, "{scenario}: not everything was delivered: {t}");
        t
    }
}

/// `PRAGMA integrity_check` on a store file (the gateway stopped or
/// running).
pub fn integrity(db: &Path) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}
