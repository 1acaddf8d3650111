//! A pseudo serial device: a socat pty pair whose two ends are symlinks in a
//! test directory. The gateway opens `dev` (the "device"), the test writes
//! to `host`. Stopping socat is an unplug (socat removes both links on
//! SIGTERM, the gateway's end sees EOF/EIO); starting it again with the same
//! link names is a re-plug.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PtyPair {
    child: Option<Child>,
    /// The end the gateway opens (its `[[serial]].path`).
    pub dev: PathBuf,
    /// The end the test writes to.
    pub host: PathBuf,
    writer: Option<File>,
}

impl PtyPair {
    /// Start socat with links `<dir>/<name>-dev` and `<dir>/<name>-host` and
    /// wait until both exist.
    pub fn open(dir: &Path, name: &str) -> PtyPair {
        let mut p = PtyPair {
            child: None,
            dev: dir.join(format!("{name}-dev")),
            host: dir.join(format!("{name}-host")),
            writer: None,
        };
        p.plug();
        p
    }

    /// Start socat (again) and wait for the links.
    pub fn plug(&mut self) {
        assert!(self.child.is_none(), "already plugged");
        let child = Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(format!("pty,raw,echo=0,link={}", self.dev.display()))
            .arg(format!("pty,raw,echo=0,link={}", self.host.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat (apt-get install socat)");
        self.child = Some(child);
        let deadline = Instant::now() + crate::EVENT_TIMEOUT;
        while !(self.dev.exists() && self.host.exists()) {
            assert!(Instant::now() < deadline, "socat did not create its links");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stop socat (SIGTERM, so it removes its links) and wait for it.
    pub fn unplug(&mut self) {
        self.writer = None;
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait().ok();
        }
        // A killed socat may leave a link behind; a stale one could point at
        // a pts number reused by another pair.
        std::fs::remove_file(&self.dev).ok();
        std::fs::remove_file(&self.host).ok();
    }

    /// socat's process id while plugged (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_plugged(&self) -> bool {
        self.child.is_some()
    }

    /// Write bytes to the device's other end (blocking while the gateway
    /// does not read: a pty buffers only a few KiB).
    pub fn write(&mut self, bytes: &[u8]) {
        if self.writer.is_none() {
            self.writer = Some(
                OpenOptions::new()
                    .write(true)
                    .open(&self.host)
                    .expect("open the host end"),
            );
        }
        let w = self.writer.as_mut().expect("writer");
        w.write_all(bytes).expect("write to the pty");
        w.flush().ok();
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// Open file descriptors of a process.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
