//! The bus task: one per `[[modbus]]` bus. It owns the connection (the
//! serial device, or the TCP stream), polls every device's groups when they
//! are due, one request at a time, and hands the readings to the store.
//!
//! # Invariants
//!
//! - **One request at a time per bus.** The task awaits each answer (or its
//!   timeout) before sending the next: RS-485 is half duplex and a second
//!   master-side request would collide with the answer to the first.
//! - **No wake-ups between polls.** The task sleeps until the earliest due
//!   group (one timer), a configuration update, or cancellation; counters
//!   are flushed to the store on poll wake-ups only. The connection is not
//!   read between requests.
//! - **Timeouts and retries.** Each request waits `timeout`; a timeout or a
//!   garbled answer (bad CRC, wrong unit or function) is retried up to
//!   `retries` times. After a timeout on a serial line the input buffer is
//!   flushed (`tcflush`) so that a late answer cannot be taken for the next
//!   request's.
//! - **A silent device degrades alone.** When a request of a device times out
//!   on every attempt, the device is marked down: health part
//!   `modbus:<bus>/<device>` degraded, one WARN, metric
//!   `dakkio_modbus_device_up` 0. While down, each due group sends a single
//!   probe (its first request, no retry) so a dead device costs the bus one
//!   timeout per poll, not `retries + 1` per request. The first answer brings
//!   it back (one INFO). Other devices on the bus are polled as usual.
//! - **Exceptions are answers.** An exception response (illegal address, …)
//!   means the device is alive: its requests' values are missing from that
//!   reading, the code is counted (`dakkio_modbus_exceptions_total{code}`,
//!   store counter `modbus:<bus>:exception:<code>`) and logged at most once a
//!   minute per device.
//! - **Unplug and re-plug.** A transport error (EIO/EOF from an unplugged
//!   adapter, a reset TCP connection) drops the connection; it is reopened
//!   with backoff from 100 ms to 1 s. One ERROR per outage, one INFO when
//!   back. Due times are kept across reconnects: a device is polled again
//!   as soon as the bus is back.
//! - **Nothing read is lost.** Readings are submitted to the store in one
//!   batch per wake-up; a committer beside the poller awaits each commit and
//!   resubmits a batch refused for a transient reason (like serial ports).
//!   On cancellation the poller finishes the request in flight, submits what
//!   it has, and the committer drains before the task ends.
//! - **Live device changes.** A [`BusHandle::update`] with new devices (same
//!   line settings) replaces the changed devices only: unchanged devices keep
//!   their schedule and state, the connection stays open.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::decode;
use super::plan::{self, Group, Request};
use super::status::{status_key, BAD_VALUE, CONNECTED, DOWN, EXCEPTION, READINGS, TIMEOUTS};
use crate::config::{ModbusBus, ModbusDevice, ModbusFunction as Function, ModbusTransport, Parity};
use crate::reading::{now_ms, Origin, Reading, Value, Values};
use crate::store::{Appended, Pending, StoreHandle};
use crate::telemetry::{Health, Part};

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Counters go to the store at most this often (on a poll wake-up).
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// One WARN about exceptions per device per this period.
const EXCEPTION_LOG_EVERY: Duration = Duration::from_secs(60);
/// Submitted batches whose commit is not yet confirmed.
const IN_FLIGHT: usize = 64;

/// Hands a running bus new devices (a reload that changed devices only).
#[derive(Debug, Clone)]
pub struct BusHandle {
    tx: watch::Sender<ModbusBus>,
}

impl BusHandle {
    /// Apply `bus` (same line settings, other devices) to the running task.
    pub fn update(&self, bus: ModbusBus) {
        self.tx.send_replace(bus);
    }
}

/// One bus's task.
pub struct ModbusBusTask {
    config: ModbusBus,
    updates: watch::Receiver<ModbusBus>,
    store: StoreHandle,
    health: Health,
}

impl ModbusBusTask {
    pub fn new(config: ModbusBus, store: StoreHandle, health: Health) -> (Self, BusHandle) {
        let (tx, updates) = watch::channel(config.clone());
        (
            ModbusBusTask {
                config,
                updates,
                store,
                health,
            },
            BusHandle { tx },
        )
    }

    pub async fn run(self, cancel: CancellationToken) {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let committer = commit_loop(rx, self.store.clone(), cancel.clone());
        let poller = Poller::new(self, tx).run(cancel);
        tokio::join!(poller, committer);
    }
}

/// A device and where it is in its schedule.
struct DeviceState {
    config: ModbusDevice,
    groups: Vec<Group>,
    /// When each group is due next.
    next: Vec<Instant>,
    /// Why it is not answering, while it is not.
    down: Option<String>,
    last_exception_log: Option<Instant>,
    exceptions_not_logged: u64,
}

impl DeviceState {
    fn new(config: ModbusDevice, now: Instant) -> Self {
        let groups = plan::device(&config);
        DeviceState {
            next: vec![now; groups.len()],
            groups,
            config,
            down: None,
            last_exception_log: None,
            exceptions_not_logged: 0,
        }
    }
}

/// Counts since the last flush.
#[derive(Default)]
struct Tally {
    readings: i64,
    timeouts: i64,
    exceptions: BTreeMap<u8, i64>,
    bad_values: BTreeMap<&'static str, i64>,
}

enum Words {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// What one request ended with, after its retries.
enum Outcome {
    Answer(Words),
    Exception(u8),
    /// No (usable) answer on any attempt.
    Silent(String),
    /// The connection is gone.
    Lost(String),
}

struct Connection {
    ctx: Context,
    /// The serial device's descriptor (owned by `ctx`), for `tcflush`.
    fd: Option<RawFd>,
}

struct Poller {
    bus: ModbusBus,
    updates: watch::Receiver<ModbusBus>,
    store: StoreHandle,
    health: Health,
    part: Part,
    devices: Vec<DeviceState>,
    tally: Tally,
    last_flush: Instant,
    tx: mpsc::Sender<InFlight>,
}

impl Poller {
    fn new(task: ModbusBusTask, tx: mpsc::Sender<InFlight>) -> Self {
        let now = Instant::now();
        let part = Part::Modbus(task.config.name.clone());
        Poller {
            devices: task
                .config
                .devices
                .iter()
                .map(|d| DeviceState::new(d.clone(), now))
                .collect(),
            bus: task.config,
            updates: task.updates,
            store: task.store,
            health: task.health,
            part,
            tally: Tally::default(),
            last_flush: now,
            tx,
        }
    }

    async fn run(mut self, cancel: CancellationToken) {
        self.set_connected(false, "not opened yet").await;
        for d in &self.devices {
            self.health.set_ok(&self.device_part(&d.config));
        }
        let mut backoff = new_backoff();
        let mut down_reported = false;
        loop {
            let conn = tokio::select! {
                _ = cancel.cancelled() => break,
                c = connect(&self.bus.transport, self.bus.timeout) => c,
            };
            match conn {
                Ok(mut conn) => {
                    if down_reported {
                        info!(bus = %self.bus.name, "modbus bus back");
                    } else {
                        info!(bus = %self.bus.name, devices = self.devices.len(), "modbus bus open");
                    }
                    backoff = new_backoff();
                    self.set_connected(true, "").await;
                    match self.poll_connected(&mut conn, &cancel).await {
                        None => break,
                        Some(why) => {
                            error!(
                                bus = %self.bus.name,
                                error = %why,
                                "modbus bus lost; retrying until it is back"
                            );
                            metrics::counter!("dakkio_modbus_disconnects_total", "bus" => self.bus.name.clone())
                                .increment(1);
                            down_reported = true;
                            self.set_connected(false, &why).await;
                        }
                    }
                }
                Err(e) => {
                    if down_reported {
                        debug!(bus = %self.bus.name, error = %e, "modbus bus still unavailable");
                    } else {
                        error!(
                            bus = %self.bus.name,
                            error = %e,
                            "modbus bus unavailable; retrying until it is back"
                        );
                        down_reported = true;
                        self.set_connected(false, &e.to_string()).await;
                    }
                }
            }
            let delay = backoff.next().unwrap_or(RECONNECT_MAX);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.flush().await;
        self.set_connected(false, "stopped").await;
        for d in &self.devices {
            self.health.remove(&self.device_part(&d.config));
        }
        debug!(bus = %self.bus.name, "modbus bus stopped");
    }

    /// Poll until the connection is lost (`Some(why)`) or cancelled (`None`).
    async fn poll_connected(
        &mut self,
        conn: &mut Connection,
        cancel: &CancellationToken,
    ) -> Option<String> {
        loop {
            let due = self
                .devices
                .iter()
                .flat_map(|d| d.next.iter().copied())
                .min();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return None,
                changed = self.updates.changed() => {
                    if changed.is_ok() {
                        let new = self.updates.borrow_and_update().clone();
                        self.apply(new);
                    }
                    continue;
                }
                _ = sleep_until(due) => {}
            }
            let lost = self.poll_due(conn).await;
            if self.last_flush.elapsed() >= FLUSH_EVERY {
                self.flush().await;
            }
            if lost.is_some() {
                return lost;
            }
        }
    }

    /// Poll every group that is due, in due order; submit their readings
    /// as one batch.
    async fn poll_due(&mut self, conn: &mut Connection) -> Option<String> {
        let now = Instant::now();
        let mut due: Vec<(Instant, usize, usize)> = Vec::new();
        for (d, dev) in self.devices.iter().enumerate() {
            for (g, next) in dev.next.iter().enumerate() {
                if *next <= now {
                    due.push((*next, d, g));
                }
            }
        }
        due.sort();
        let mut readings = Vec::new();
        let mut lost = None;
        for (_, d, g) in due {
            match self.poll_group(conn, d, g).await {
                Ok(Some(r)) => readings.push(r),
                Ok(None) => {}
                Err(why) => {
                    lost = Some(why);
                    break;
                }
            }
            let dev = &mut self.devices[d];
            let every = dev.groups[g].every;
            let next = dev.next[g] + every;
            // A poll that ran late (a slow bus, a reconnect) does not
            // bunch up: the next one is a full interval later.
            dev.next[g] = if next <= Instant::now() {
                Instant::now() + every
            } else {
                next
            };
        }
        self.submit(readings).await;
        lost
    }

    async fn poll_group(
        &mut self,
        conn: &mut Connection,
        d: usize,
        g: usize,
    ) -> Result<Option<Reading>, String> {
        let (retries, timeout) = (self.bus.retries, self.bus.timeout);
        let dev = &self.devices[d];
        let unit = dev.config.unit;
        conn.ctx.set_slave(Slave(unit));
        let probing = dev.down.is_some();
        let attempts = if probing { 1 } else { u32::from(retries) + 1 };
        let requests: Vec<Request> = dev.groups[g].requests.clone();
        let received_ms = now_ms();
        let mut values = Values::new();
        let mut answered = false;
        let mut silent = None;
        for req in &requests {
            match request(conn, req, attempts, timeout).await {
                Outcome::Lost(why) => return Err(why),
                Outcome::Silent(why) => {
                    self.count_request("timeout");
                    self.tally.timeouts += 1;
                    silent = Some(why);
                    if probing {
                        break;
                    }
                }
                Outcome::Exception(code) => {
                    answered = true;
                    self.count_request("exception");
                    self.exception(d, req, code);
                }
                Outcome::Answer(words) => {
                    answered = true;
                    self.count_request("ok");
                    self.decode(d, req, &words, &mut values);
                }
            }
        }
        self.device_answered(d, answered, silent);
        if values.is_empty() {
            return Ok(None);
        }
        let dev = &self.devices[d].config;
        Ok(Some(Reading {
            bucket_id: dev.bucket_id.clone(),
            data_source_id: dev.data_source_id.clone(),
            timestamp_ms: received_ms,
            values,
            metadata: Default::default(),
            origin: Origin::Modbus,
            receive_time: true,
        }))
    }

    fn decode(&mut self, d: usize, req: &Request, words: &Words, values: &mut Values) {
        let dev = &self.devices[d].config;
        for f in &req.fields {
            let r = &dev.registers[f.register];
            let at = usize::from(f.offset);
            let v = match words {
                Words::Bits(bits) => bits
                    .get(at)
                    .copied()
                    .map(Value::Bool)
                    .ok_or(decode::DecodeError::Short),
                Words::Registers(ws) => {
                    ws.get(at..)
                        .ok_or(decode::DecodeError::Short)
                        .and_then(|ws| {
                            decode::value(
                                ws,
                                r.data_type,
                                r.word_order,
                                r.byte_order,
                                r.scale,
                                r.offset,
                            )
                        })
                }
            };
            match v {
                Ok(v) => {
                    values.insert(r.name.as_str().into(), v);
                }
                Err(e) => {
                    *self.tally.bad_values.entry(e.reason()).or_default() += 1;
                    metrics::counter!("dakkio_modbus_bad_values_total", "bus" => self.bus.name.clone(), "reason" => e.reason())
                        .increment(1);
                    debug!(bus = %self.bus.name, device = %dev.name, register = %r.name, reason = e.reason(), "modbus value skipped");
                }
            }
        }
    }

    fn exception(&mut self, d: usize, req: &Request, code: u8) {
        *self.tally.exceptions.entry(code).or_default() += 1;
        let bus = self.bus.name.clone();
        let dev = &mut self.devices[d];
        metrics::counter!(
            "dakkio_modbus_exceptions_total",
            "bus" => bus.clone(),
            "unit" => dev.config.unit.to_string(),
            "code" => code.to_string()
        )
        .increment(1);
        if dev
            .last_exception_log
            .is_some_and(|t| t.elapsed() < EXCEPTION_LOG_EVERY)
        {
            dev.exceptions_not_logged += 1;
            debug!(bus = %bus, device = %dev.config.name, code, "modbus exception response");
            return;
        }
        warn!(
            bus = %bus,
            device = %dev.config.name,
            unit = dev.config.unit,
            function = req.function.as_str(),
            address = req.address,
            count = req.count,
            code,
            meaning = exception_name(code),
            not_logged_since_last = dev.exceptions_not_logged,
            "modbus device answered with an exception; its values are missing from this reading \
             (logged at most once a minute)"
        );
        dev.last_exception_log = Some(Instant::now());
        dev.exceptions_not_logged = 0;
    }

    /// Up/down bookkeeping after a group poll.
    fn device_answered(&mut self, d: usize, answered: bool, silent: Option<String>) {
        let part = self.device_part(&self.devices[d].config);
        let bus = self.bus.name.clone();
        let dev = &mut self.devices[d];
        let unit = dev.config.unit.to_string();
        if answered {
            self.health.input_seen(&part, crate::reading::now_ms());
            if dev.down.take().is_some() {
                info!(bus = %bus, device = %dev.config.name, unit = dev.config.unit, "modbus device answering again");
                self.health.set_ok(&part);
                metrics::gauge!("dakkio_modbus_device_up", "bus" => bus, "unit" => unit).set(1.0);
            }
            return;
        }
        if let (Some(why), None) = (silent, &dev.down) {
            warn!(
                bus = %bus,
                device = %dev.config.name,
                unit = dev.config.unit,
                error = %why,
                "modbus device not answering; probing it at each poll until it is back"
            );
            self.health
                .set_degraded(&part, format!("not answering: {why}"));
            metrics::gauge!("dakkio_modbus_device_up", "bus" => bus, "unit" => unit).set(0.0);
            dev.down = Some(why);
        }
    }

    fn count_request(&self, result: &'static str) {
        metrics::counter!("dakkio_modbus_requests_total", "bus" => self.bus.name.clone(), "result" => result)
            .increment(1);
    }

    fn device_part(&self, d: &ModbusDevice) -> Part {
        Part::ModbusDevice(self.bus.name.clone(), d.name.clone())
    }

    /// New devices for the running bus: unchanged devices keep their state.
    fn apply(&mut self, new: ModbusBus) {
        let now = Instant::now();
        let mut old: Vec<DeviceState> = std::mem::take(&mut self.devices);
        for d in &new.devices {
            match old.iter().position(|o| &o.config == d) {
                Some(i) => self.devices.push(old.swap_remove(i)),
                None => {
                    self.health.set_ok(&self.device_part(d));
                    self.devices.push(DeviceState::new(d.clone(), now));
                }
            }
        }
        for gone in old {
            if !new.devices.iter().any(|d| d.name == gone.config.name) {
                self.health.remove(&self.device_part(&gone.config));
            }
        }
        info!(bus = %new.name, devices = new.devices.len(), "modbus devices updated");
        self.bus = new;
    }

    async fn submit(&mut self, readings: Vec<Reading>) {
        if readings.is_empty() {
            return;
        }
        let n = readings.len();
        self.tally.readings += n as i64;
        match self.store.submit(readings.clone()).await {
            Ok(p) => drop(self.tx.send(InFlight::Readings(p, readings)).await),
            Err(e) => {
                error!(bus = %self.bus.name, error = %e, lost = n, "cannot hand modbus readings to the store")
            }
        }
    }

    async fn set_connected(&self, up: bool, why: &str) {
        if up {
            self.health.set_ok(&self.part);
        } else {
            self.health
                .set_degraded(&self.part, format!("bus not available: {why}"));
        }
        metrics::gauge!("dakkio_modbus_connected", "bus" => self.bus.name.clone()).set(if up {
            1.0
        } else {
            0.0
        });
        self.state(vec![(
            status_key(&self.bus.name, CONNECTED),
            if up { "yes" } else { "no" }.into(),
        )])
        .await;
    }

    async fn state(&self, fields: Vec<(String, String)>) {
        match self.store.set_state(fields).await {
            Ok(p) => drop(self.tx.send(InFlight::Other(p)).await),
            Err(e) => debug!(error = %e, "cannot record the modbus bus state"),
        }
    }

    /// Counters and the list of silent devices to the store.
    async fn flush(&mut self) {
        self.last_flush = Instant::now();
        let name = &self.bus.name;
        let t = std::mem::take(&mut self.tally);
        let mut deltas = Vec::new();
        if t.readings > 0 {
            deltas.push((status_key(name, READINGS), t.readings));
        }
        if t.timeouts > 0 {
            deltas.push((status_key(name, TIMEOUTS), t.timeouts));
        }
        for (code, n) in t.exceptions {
            deltas.push((status_key(name, &format!("{EXCEPTION}{code}")), n));
        }
        for (reason, n) in t.bad_values {
            deltas.push((status_key(name, &format!("{BAD_VALUE}{reason}")), n));
        }
        if !deltas.is_empty() {
            match self.store.add_counters(deltas).await {
                Ok(p) => drop(self.tx.send(InFlight::Other(p)).await),
                Err(e) => debug!(error = %e, "cannot record modbus counters"),
            }
        }
        let down: Vec<&str> = self
            .devices
            .iter()
            .filter(|d| d.down.is_some())
            .map(|d| d.config.name.as_str())
            .collect();
        self.state(vec![(status_key(name, DOWN), down.join(","))])
            .await;
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    crate::retry::exponential(RECONNECT_MIN, RECONNECT_MAX).build()
}

/// One request with its retries.
async fn request(
    conn: &mut Connection,
    req: &Request,
    attempts: u32,
    timeout: Duration,
) -> Outcome {
    let mut why = String::new();
    for _ in 0..attempts {
        let answer = tokio::time::timeout(timeout, read(&mut conn.ctx, req)).await;
        match answer {
            Ok(Ok(Ok(words))) => return Outcome::Answer(words),
            Ok(Ok(Err(exception))) => return Outcome::Exception(u8::from(exception)),
            Ok(Err(tokio_modbus::Error::Transport(e))) => return Outcome::Lost(e.to_string()),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => why = format!("garbled answer: {e}"),
            Err(_) => {
                why = format!(
                    "no answer within {}",
                    crate::config::units::format_duration(timeout)
                );
                if let Some(fd) = conn.fd {
                    // SAFETY: `fd` is the open serial device owned by
                    // `conn.ctx`, which lives as long as `conn`; tcflush
                    // only discards bytes the kernel holds for it.
                    unsafe { libc::tcflush(fd, libc::TCIFLUSH) };
                }
            }
        }
    }
    Outcome::Silent(why)
}

async fn read(ctx: &mut Context, req: &Request) -> tokio_modbus::Result<Words> {
    let (a, n) = (req.address, req.count);
    Ok(match req.function {
        Function::Holding => ctx
            .read_holding_registers(a, n)
            .await?
            .map(Words::Registers),
        Function::Input => ctx.read_input_registers(a, n).await?.map(Words::Registers),
        Function::Coil => ctx.read_coils(a, n).await?.map(Words::Bits),
        Function::Discrete => ctx.read_discrete_inputs(a, n).await?.map(Words::Bits),
    })
}

/// Open the bus.
async fn connect(transport: &ModbusTransport, timeout: Duration) -> std::io::Result<Connection> {
    match transport {
        ModbusTransport::Rtu {
            path,
            baud_rate,
            data_bits,
            parity,
            stop_bits,
        } => {
            use tokio_serial::SerialPortBuilderExt;
            let stream = tokio_serial::new(path, *baud_rate)
                .data_bits(if *data_bits == 7 {
                    tokio_serial::DataBits::Seven
                } else {
                    tokio_serial::DataBits::Eight
                })
                .parity(match parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Odd => tokio_serial::Parity::Odd,
                    Parity::Even => tokio_serial::Parity::Even,
                })
                .stop_bits(if *stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .open_native_async()
                .map_err(std::io::Error::from)?;
            let fd = stream.as_raw_fd();
            Ok(Connection {
                ctx: tokio_modbus::client::rtu::attach_slave(stream, Slave(1)),
                fd: Some(fd),
            })
        }
        ModbusTransport::Tcp { address } => {
            let stream = tokio::time::timeout(
                timeout.max(Duration::from_secs(1)),
                tokio::net::TcpStream::connect(address.as_str()),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
            stream.set_nodelay(true).ok();
            Ok(Connection {
                ctx: tokio_modbus::client::tcp::attach_slave(stream, Slave(1)),
                fd: None,
            })
        }
    }
}

/// The standard names of exception codes, for the log.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown",
    }
}

/// Work handed from the poller to the committer.
enum InFlight {
    Readings(Pending<Appended>, Vec<Reading>),
    Other(Pending<()>),
}

/// Await commits in order; resubmit readings refused for a transient reason.
async fn commit_loop(
    mut rx: mpsc::Receiver<InFlight>,
    store: StoreHandle,
    cancel: CancellationToken,
) {
    while let Some(item) = rx.recv().await {
        match item {
            InFlight::Other(p) => {
                if let Err(e) = p.wait().await {
                    debug!(error = %e, "modbus bookkeeping not committed");
                }
            }
            InFlight::Readings(pending, readings) => {
                crate::ingest::serial::commit_holding(
                    pending,
                    readings,
                    &store,
                    &cancel,
                    "modbus",
                    RECONNECT_MAX,
                )
                .await
            }
        }
    }
}
