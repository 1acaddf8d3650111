//! A real mosquitto broker on a free loopback port, with its own config file
//! and persistence directory in a temp dir, configured the way the operator manual's
//! "Broker settings" tell operators to: persistence on, large
//! `max_queued_messages` and `max_inflight_messages`. `stop()` / `start()`
//! keep the port and the persistence, like a broker restart on a gateway.
//! Benchmarks raise `max_queued_messages` ([`Settings`]) so that a burst
//! queued for a slower subscriber is never dropped by the broker (that would
//! read as readings lost). Also a QoS 1 publisher that counts the broker's
//! PUBACKs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The broker's in-flight window per client (`max_inflight_messages`):
/// the bound on redelivered duplicates per gateway crash.
pub const MAX_INFLIGHT: usize = 2000;

/// How a broker is set up; the default is the operator manual's "Broker settings"
/// on loopback.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address to listen on.
    pub host: String,
    pub max_queued_messages: u64,
    /// Seconds between saves of the persistence file.
    pub autosave_interval: u32,
    /// The broker's in-flight window per client; [`MAX_INFLIGHT`] unless a
    /// bench measures mosquitto's own default (20).
    pub max_inflight_messages: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            host: "127.0.0.1".into(),
            max_queued_messages: 100_000,
            autosave_interval: 1,
            max_inflight_messages: MAX_INFLIGHT,
        }
    }
}

pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    /// The address it listens on (loopback unless started with `start_on`).
    pub host: String,
    _dir: tempfile::TempDir,
    conf: PathBuf,
}

pub fn binary() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_on("127.0.0.1")
    }

    /// Listen on `host` instead of loopback (the host side of a veth pair,
    /// for a gateway in its own network namespace).
    pub fn start_on(host: &str) -> Mosquitto {
        Self::start_with(Settings {
            host: host.to_owned(),
            ..Settings::default()
        })
    }

    pub fn start_with(settings: Settings) -> Mosquitto {
        let Settings {
            host,
            max_queued_messages,
            autosave_interval,
            max_inflight_messages,
        } = settings;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        // Started as root, mosquitto drops to the `mosquitto` user, which
        // cannot write its persistence file into this root-owned temp dir:
        // every queued message would then vanish at a broker restart.
        let user = if crate::is_root() { "user root\n" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "listener {port} {host}\n\
                 allow_anonymous true\n\
                 {user}persistence true\n\
                 persistence_location {}/\n\
                 autosave_interval {autosave_interval}\n\
                 max_queued_messages {max_queued_messages}\n\
                 max_queued_bytes 0\n\
                 max_inflight_messages {max_inflight_messages}\n\
                 log_dest stderr\n\
                 log_type error\n\
                 log_type warning\n\
                 log_type notice\n\
                 log_type information\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            host,
            _dir: dir,
            conf,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto (install it: scripts/test.sh does)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("MOSQUITTO_LOG").is_some() {
                    eprintln!("mosquitto: {line}");
                }
                if line.contains("running") || line.contains("Error") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(crate::EVENT_TIMEOUT)
            .expect("mosquitto did not start");
        assert!(line.contains("running"), "mosquitto failed: {line}");
        self.child = Some(child);
    }

    /// The broker's process id (for CPU and I/O accounting); 0 when stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGSTOP: the broker stays connected but answers nothing (a silently
    /// dead connection: no PINGRESP). `thaw` resumes it.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGTERM: mosquitto saves its persistence file and exits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child process (SIGCONT in case it
            // is frozen, so that it handles the SIGTERM).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            // SAFETY: as above.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            c.wait().ok();
        }
    }

    /// Start again on the same port with the same persistence.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stop, delete the persistence file, start: a broker that lost its
    /// state (no sessions, no queued messages), as after a restart with
    /// persistence off or a lost disk.
    pub fn restart_without_persistence(&mut self) {
        self.stop();
        let db = self._dir.path().join("mosquitto.db");
        assert!(db.exists(), "no persistence file at {}", db.display());
        std::fs::remove_file(db).unwrap();
        self.spawn();
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// Publish `messages` with QoS 1 (at most `rate` per second when given) and
/// return how many the broker acknowledged (PUBACK). Blocking.
pub fn publish(port: u16, messages: Vec<(String, Vec<u8>)>, rate: Option<u32>) -> usize {
    publish_to("127.0.0.1", port, messages, rate)
}

/// [`publish`] to a broker listening on `host`.
pub fn publish_to(
    host: &str,
    port: u16,
    messages: Vec<(String, Vec<u8>)>,
    rate: Option<u32>,
) -> usize {
    let host = host.to_owned();
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let id = format!("test-publisher-{}", rand_suffix());
        let mut o = MqttOptions::new(id, host, port);
        o.set_inflight(1000)
            // Outgoing: room for the oversized-message tests.
            .set_max_packet_size(1 << 20, 64 << 20)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(o, 1000);
        let total = messages.len();
        let sender = tokio::spawn(async move {
            let start = Instant::now();
            for (i, (topic, payload)) in messages.into_iter().enumerate() {
                if let Some(rate) = rate {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    let now = Instant::now();
                    if due > now {
                        tokio::time::sleep(due - now).await;
                    }
                }
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
            client
        });
        let mut acked = 0;
        let deadline = Instant::now() + Duration::from_secs(600);
        while acked < total && Instant::now() < deadline {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher lost the broker: {e}"),
            }
        }
        let client = sender.await.unwrap();
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
        acked
    })
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ std::process::id() as u64
}
