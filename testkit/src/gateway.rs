//! A gateway under test: the real binary in a child process, with its own
//! temporary directory, config file and data directory, and its log lines
//! available to await.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dakkio_gateway::store::{Reader, StoreStats, FILE_NAME};

/// Log lines seen so far, with a condition variable to await new ones.
#[derive(Default)]
struct LogBook {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

pub struct Gateway {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    log: Arc<LogBook>,
    /// Extra environment, kept for `restart`.
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Write `config` (TOML without `[gateway]`'s `data_dir`, which is set
    /// here) into `dir` and start the gateway on it.
    pub fn start(dir: &Path, config: &str) -> Gateway {
        Self::start_with_env(dir, config, &[])
    }

    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Gateway {
        let data_dir = dir.join("data");
        let config_path = dir.join("gateway.toml");
        // Tests run side by side: every gateway's local API gets a port of
        // its own (its address is in the `local API listening` log line).
        // Without an `[api]` of the test's own, `/metrics` is open (it needs
        // a key by default) so that tests can read counters without one.
        let config = if config.contains("[api]") {
            config.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        } else {
            format!("{config}\n[api]\nlisten = \"127.0.0.1:0\"\nmetrics_auth = \"none\"\n")
        };
        let config = config.as_str();
        let text = if config.contains("[gateway]") {
            config.replacen(
                "[gateway]",
                &format!("[gateway]\ndata_dir = \"{}\"", data_dir.display()),
                1,
            )
        } else {
            format!(
                "[gateway]\nid = \"test-gw\"\ndata_dir = \"{}\"\n{config}",
                data_dir.display()
            )
        };
        std::fs::write(&config_path, text).expect("write config");
        let mut g = Gateway {
            child: None,
            dir: dir.to_owned(),
            config_path,
            data_dir,
            log: Arc::new(LogBook::default()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(crate::gateway_binary());
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,dakkio_gateway=debug")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            // The test machines' kernels may report an unsynchronised clock
            // (no NTP client in a container): a synchronised test clock
            // unless the test plays one itself (tests/faults/boot_clock.rs).
            .env(dakkio_gateway::clock::TEST_CLOCK_FILE_ENV, "synced")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the gateway");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("GATEWAY_LOG").is_some() {
                    eprintln!("gateway: {line}");
                }
                log.lines.lock().unwrap().push(line);
                log.changed.notify_all();
            }
            // Mark the end of the stream so waiters stop waiting.
            log.lines.lock().unwrap().push("<exited>".into());
            log.changed.notify_all();
        });
        self.child = Some(child);
    }

    /// Start the same gateway again (same directory and config).
    /// Drop the extra environment given at start, for the next `restart`
    /// (a test switch that must act only once).
    pub fn clear_env(&mut self) {
        self.env.clear();
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the gateway is still running");
        self.log.lines.lock().unwrap().clear();
        self.spawn();
    }

    /// Wait (blocking) until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_for_nth_log(needle, 1, timeout)
    }

    /// Wait (blocking) until `n` log lines contain `needle`; returns the
    /// `n`-th. For events that happen more than once (a part restarted).
    pub fn wait_for_nth_log(&self, needle: &str, n: usize, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return Some(l.clone());
            }
            if lines.last().is_some_and(|l| l == "<exited>") {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self
                .log
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// The local API's address (`127.0.0.1:port`), from the first
    /// `local API listening` line (waited for).
    pub fn api_addr(&self) -> String {
        self.nth_api_addr(1)
    }

    /// The address in the `n`-th `local API listening` line (after `n - 1`
    /// restarts of the API by reloads).
    pub fn nth_api_addr(&self, n: usize) -> String {
        let line = self
            .wait_for_nth_log("local API listening", n, crate::EVENT_TIMEOUT)
            .unwrap_or_else(|| panic!("no local API (line {n}):\n{}", self.log_text()));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in `{line}`"))
            .to_owned()
    }

    /// Wait until the gateway says it is running.
    pub fn wait_ready(&self) {
        if self
            .wait_for_log("gateway running", crate::EVENT_TIMEOUT)
            .is_none()
        {
            panic!("the gateway did not start:\n{}", self.log_text());
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL: a crash or power cut from the gateway's point of view.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
            // Let the log reader see the end of this process's stderr, so
            // that its `<exited>` marker cannot land after a `restart`.
            self.wait_for_log("<exited>", crate::EVENT_TIMEOUT);
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().expect("wait for the gateway");
        self.wait_for_log("<exited>", crate::EVENT_TIMEOUT);
        status
    }

    /// Wait for the process to exit on its own (its stderr closing is the
    /// event awaited).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.wait_for_log("<exited>", timeout)?;
        let status = self.child.as_mut()?.wait().expect("wait");
        self.child = None;
        Some(status)
    }

    /// Store statistics read beside the running gateway.
    pub fn stats(&self) -> StoreStats {
        Reader::open_existing(&self.data_dir.join(FILE_NAME))
            .expect("open the store")
            .stats_blocking()
            .expect("stats")
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(FILE_NAME)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}
