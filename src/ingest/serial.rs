//! Serial ports: one task per `[[serial]]` port reads bytes, frames and
//! decodes lines ([`LineIngest`], pure) and hands readings to the store.
//!
//! # Invariants
//!
//! - **Pipelined, and complete on stop.** The port task never waits for a
//!   commit before reading more: each batch (the lines of one read) is
//!   submitted to the store and its [`Pending`] is passed over a bounded
//!   channel to a committer running beside the reader in the same task
//!   (`tokio::join!`, no detached spawn). On cancellation the reader stops,
//!   drops its sender, and the committer awaits every outstanding commit, so
//!   SIGTERM commits everything already read. A commit refused for a
//!   transient reason (disk full, store full with `on_full = "reject"`) is
//!   retried with the same readings; meanwhile the full channel stops the
//!   reader (serial has no other flow control).
//! - **Unplug and re-plug.** EOF, any read error, or a failed open means the
//!   device is gone: one ERROR, the port's file descriptor is dropped at
//!   once, and opening is retried with exponential backoff from 100 ms,
//!   capped at 1 s, so a re-plugged device is read again within about a
//!   second and an absent one costs one `open` per second. One INFO when it
//!   is back. The framer and decoder are reset on every (re)connect: a
//!   partial line is never completed with bytes of another connection.
//! - **Bad input is kept, counted and logged sparingly.** Every line that
//!   does not become a reading is stored as a reject (origin
//!   `serial:<path>`, reason, raw bytes truncated), counted by reason in
//!   metrics and in the store's counters, and logged at WARN at most once a
//!   minute per port (with how many were not logged).
//! - **Visible state.** `Health` part `serial:<path>` (ok while connected);
//!   metrics `dakkio_serial_connected{port}`,
//!   `dakkio_serial_lines_total{port,result}` and
//!   `dakkio_readings_accepted_total{source="serial"}`; store counters
//!   `serial:<path>:lines_ok` and `serial:<path>:rejected:<reason>` (added
//!   at most once a second, riding along with group commits) and state
//!   `serial:<path>:connected` (`yes`/`no`, on change) and
//!   `serial:<path>:last_line_ms`, read by `queue stats`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{FlowControl, Parity, SerialConfig, SerialSource};
use crate::ingest::decode::{DecodeOptions, Decoded, LineDecoder};
use crate::ingest::framing::{Frame, LineFramer};
use crate::reading::{now_ms, Origin, Reading, Value};
use crate::store::{Appended, Pending, Reject, StoreHandle, REJECT_RAW_LIMIT};
use crate::telemetry::{Health, Part};

/// First retry delay after the device vanished …
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// … doubling up to this: a re-plugged device is read within this plus the
/// time to open it.
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Counters and the last line time are written to the store at most this
/// often (they ride along with group commits; `queue stats` lags by at most
/// this much, and an idle port wakes only this often).
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// One WARN about rejected lines per port per this period.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(60);
/// A port that comes and goes (a loose USB cable, a failing adapter) logs
/// its loss and return at most once per this period, with the count of
/// the ones in between (at DEBUG): a port flapping 10 times a second must
/// not fill the journal.
const FLAP_LOG_EVERY: Duration = Duration::from_secs(60);
/// A connection that lasted this long was a real one: the reconnect delay
/// starts again from its minimum. A port that dies sooner keeps backing
/// off (up to [`RECONNECT_MAX`]), so flapping costs little CPU.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Submitted batches whose commit is not yet confirmed, per port.
const IN_FLIGHT: usize = 64;
/// Bytes read from the port at once.
const READ_CHUNK: usize = 4096;
/// Reason for a line whose data source name is not in `sources`.
pub const UNKNOWN_SOURCE: &str = "unknown_source";

/// What one framed line became.
#[derive(Debug)]
pub enum LineOutcome<'a> {
    Reading(Reading),
    /// `raw` is the line as received (empty for an overlong line, whose
    /// bytes were discarded while framing).
    Rejected {
        reason: &'static str,
        detail: String,
        raw: &'a [u8],
    },
    /// A line that carries no reading and is no error: a CSV header, an
    /// NMEA sentence that is not read or has no fix (counted in
    /// `dakkio_serial_lines_total{result="skipped"}`). Blank lines give
    /// no outcome at all.
    Skipped,
}

/// One line through a port's configuration, as the port task decodes and
/// routes it (without framing, and without the first-line rule of
/// `skip_header`): what `try` shows and what `rejects replay` stores.
/// `Ok(None)` for a line that is skipped.
pub fn line_reading(
    config: &SerialConfig,
    line: &[u8],
    received_ms: i64,
) -> Result<Option<Reading>, (&'static str, String)> {
    let opts = DecodeOptions {
        max_payload: config.max_line,
        ..DecodeOptions::default()
    };
    let mut decoder = LineDecoder::for_single_lines(config.line.clone(), opts);
    decode_and_route(
        &mut decoder,
        &config.bucket_id,
        &config.source,
        line,
        received_ms,
    )
}

/// Decode one framed line and give it its bucket and data source.
fn decode_and_route(
    decoder: &mut LineDecoder,
    bucket_id: &str,
    source: &SerialSource,
    line: &[u8],
    received_ms: i64,
) -> Result<Option<Reading>, (&'static str, String)> {
    match decoder.decode_bytes(line, received_ms) {
        Ok(None) => Ok(None),
        Ok(Some(d)) => route(d, bucket_id, source, received_ms).map(Some),
        Err(e) => Err((e.reason(), e.to_string())),
    }
}

/// Bytes → readings for one port: framing, decoding and routing, no I/O.
#[derive(Debug)]
pub struct LineIngest {
    framer: LineFramer,
    decoder: LineDecoder,
    bucket_id: String,
    source: SerialSource,
    max_line: usize,
}

impl LineIngest {
    pub fn new(config: &SerialConfig) -> Self {
        let opts = DecodeOptions {
            max_payload: config.max_line,
            ..DecodeOptions::default()
        };
        LineIngest {
            framer: LineFramer::new(config.delimiter, config.max_line),
            decoder: LineDecoder::new(config.line.clone(), opts),
            bucket_id: config.bucket_id.clone(),
            source: config.source.clone(),
            max_line: config.max_line,
        }
    }

    /// The device was (re)connected: forget any partial line.
    pub fn reset(&mut self) {
        self.framer.reset();
        self.decoder.reset();
    }

    /// Bytes held for a partial line (bounded by the framer).
    pub fn buffer_capacity(&self) -> usize {
        self.framer.capacity()
    }

    /// Feed bytes read from the port; `emit` gets one outcome per line that
    /// carries something (blank lines and headers give none).
    pub fn push(&mut self, bytes: &[u8], received_ms: i64, mut emit: impl FnMut(LineOutcome<'_>)) {
        let LineIngest {
            framer,
            decoder,
            bucket_id,
            source,
            max_line,
        } = self;
        let max_line = *max_line;
        framer.push(bytes, |frame| match frame {
            Frame::Overlong { .. } if decoder.overlong() => {}
            Frame::Overlong { discarded } => emit(LineOutcome::Rejected {
                reason: "too_large",
                detail: format!(
                    "line of {discarded} bytes is over the limit of {max_line} bytes (`max_line`)"
                ),
                raw: &[],
            }),
            Frame::Line(line) => {
                match decode_and_route(decoder, bucket_id, source, line, received_ms) {
                    Ok(None) if line.trim_ascii().is_empty() => {}
                    Ok(None) => emit(LineOutcome::Skipped),
                    Ok(Some(r)) => emit(LineOutcome::Reading(r)),
                    Err((reason, detail)) => emit(LineOutcome::Rejected {
                        reason,
                        detail,
                        raw: line,
                    }),
                }
            }
        });
    }
}

/// Give a decoded line its bucket and data source.
fn route(
    d: Decoded,
    bucket_id: &str,
    source: &SerialSource,
    received_ms: i64,
) -> Result<Reading, (&'static str, String)> {
    let mut point = d.point;
    let source_id = match source {
        SerialSource::Fixed(id) => id.as_str(),
        SerialSource::ByField { field, map } => {
            let name = match point.values.remove(field.as_str()) {
                Some(Value::Text(s)) => s,
                Some(Value::Number(n)) if n.fract() == 0.0 && n.abs() < 1e15 => {
                    format!("{}", n as i64)
                }
                Some(other) => {
                    return Err((
                        UNKNOWN_SOURCE,
                        format!("field `{field}` must name a data source; got `{other:?}`"),
                    ))
                }
                None => {
                    return Err((
                        UNKNOWN_SOURCE,
                        format!("the line has no `{field}` field naming its data source"),
                    ))
                }
            };
            let Some(id) = map.get(&name) else {
                let known: Vec<&str> = map.keys().map(String::as_str).collect();
                return Err((
                    UNKNOWN_SOURCE,
                    format!(
                        "`{field}` = `{}` is not in `sources` (known: {})",
                        name.escape_debug(),
                        known.join(", ")
                    ),
                ));
            };
            if !point.values.values().any(|v| v.as_f64().is_some()) {
                return Err((
                    "no_numeric_value",
                    format!("no numeric value besides `{field}`"),
                ));
            }
            point
                .metadata
                .insert(field.as_str().into(), serde_json::Value::String(name));
            id.as_str()
        }
    };
    Ok(point.into_reading(bucket_id, source_id, received_ms, Origin::Serial))
}

/// Open the device with the configured line settings.
pub fn open(config: &SerialConfig) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    let data_bits = match config.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match config.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let stop_bits = if config.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let flow = match config.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    tokio_serial::new(&config.path, config.baud_rate)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(flow)
        .open_native_async()
}

/// Work handed from the reader to the committer.
enum InFlight {
    /// Readings and their commit; the copy is resubmitted if the commit
    /// fails for a transient reason.
    Readings(Pending<Appended>, Vec<Reading>),
    /// A reject, counters or state: awaited only to report failures.
    Other(Pending<()>),
}

/// Counts since the last flush to the store, and totals.
#[derive(Default)]
struct Tally {
    ok: i64,
    rejected: BTreeMap<&'static str, i64>,
    last_line_ms: Option<i64>,
}

/// Rate-limited WARN for rejected lines.
#[derive(Default)]
struct RejectLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// Why a connection ended.
enum End {
    Cancelled,
    Lost(String),
}

/// One serial port's task.
pub struct SerialPort {
    config: SerialConfig,
    store: StoreHandle,
    health: Health,
    /// `serial:<path>`: health part, reject origin, counter prefix.
    part: Part,
}

impl SerialPort {
    pub fn new(config: SerialConfig, store: StoreHandle, health: Health) -> Self {
        let part = Part::Serial(config.path.clone());
        SerialPort {
            config,
            store,
            health,
            part,
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let committer = commit_loop(rx, self.store.clone(), cancel.clone());
        let reader = self.read_loop(tx, cancel);
        tokio::join!(reader, committer);
    }

    async fn read_loop(self, tx: mpsc::Sender<InFlight>, cancel: CancellationToken) {
        let mut r = PortReader {
            ingest: LineIngest::new(&self.config),
            tally: Tally::default(),
            reject_log: RejectLog::default(),
            tx,
            port: self,
        };
        r.port.set_connected(&r.tx, false, "not opened yet").await;
        let mut down_reported = false;
        let mut backoff = new_backoff();
        // When the last loss was logged, and the losses since (not logged).
        let mut flaps: (Option<Instant>, u64) = (None, 0);
        loop {
            match open(&r.port.config) {
                Ok(stream) => {
                    let (name, path) = (&r.port.config.name, &r.port.config.path);
                    if !down_reported {
                        info!(port = %name, path = %path, "serial port open");
                    } else if flaps.1 == 0 {
                        info!(port = %name, path = %path, "serial port back");
                    } else {
                        debug!(port = %name, path = %path, "serial port back");
                    }
                    r.ingest.reset();
                    r.port.set_connected(&r.tx, true, "").await;
                    let opened = Instant::now();
                    let end = r.read_port(stream, &cancel).await;
                    r.ingest.reset();
                    if opened.elapsed() >= STABLE_AFTER {
                        backoff = new_backoff();
                    }
                    match end {
                        End::Cancelled => break,
                        End::Lost(why) => {
                            let (name, path) = (&r.port.config.name, &r.port.config.path);
                            if flaps.0.is_some_and(|t| t.elapsed() < FLAP_LOG_EVERY) {
                                flaps.1 += 1;
                                debug!(port = %name, error = %why, "serial port lost again");
                            } else {
                                error!(
                                    port = %name,
                                    path = %path,
                                    error = %why,
                                    lost_since_last_log = flaps.1,
                                    "serial port lost; retrying until it is back \
                                     (logged at most once a minute)"
                                );
                                flaps = (Some(Instant::now()), 0);
                            }
                            metrics::counter!("dakkio_serial_disconnects_total", "port" => path.clone())
                                .increment(1);
                            down_reported = true;
                            r.port.set_connected(&r.tx, false, &why).await;
                        }
                    }
                }
                Err(e) => {
                    if down_reported {
                        debug!(port = %r.port.config.name, error = %e, "serial port still absent");
                    } else {
                        error!(
                            port = %r.port.config.name,
                            path = %r.port.config.path,
                            error = %e,
                            "serial port unavailable; retrying until it is back"
                        );
                        down_reported = true;
                        r.port.set_connected(&r.tx, false, &e.to_string()).await;
                    }
                }
            }
            let delay = backoff.next().unwrap_or(RECONNECT_MAX);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        r.flush().await;
        r.port.set_connected(&r.tx, false, "stopped").await;
        debug!(port = %r.port.config.name, "serial reader stopped");
    }

    /// Health, metric and persisted state for a (dis)connection.
    async fn set_connected(&self, tx: &mpsc::Sender<InFlight>, up: bool, why: &str) {
        if up {
            self.health.set_ok(&self.part);
        } else {
            self.health
                .set_degraded(&self.part, format!("device not available: {why}"));
        }
        metrics::gauge!("dakkio_serial_connected", "port" => self.config.path.clone()).set(if up {
            1.0
        } else {
            0.0
        });
        let value = if up { "yes" } else { "no" };
        match self
            .store
            .set_state(vec![(status_key(&self.part, CONNECTED), value.into())])
            .await
        {
            Ok(p) => drop(tx.send(InFlight::Other(p)).await),
            Err(e) => debug!(error = %e, "cannot record the serial port state"),
        }
    }
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    crate::retry::exponential(RECONNECT_MIN, RECONNECT_MAX).build()
}

/// The reader's state across connections.
struct PortReader {
    port: SerialPort,
    ingest: LineIngest,
    tally: Tally,
    reject_log: RejectLog,
    tx: mpsc::Sender<InFlight>,
}

impl PortReader {
    /// Read one connection until it ends.
    async fn read_port(
        &mut self,
        mut stream: tokio_serial::SerialStream,
        cancel: &CancellationToken,
    ) -> End {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let poll = self.port.config.poll.clone();
        let mut poll_tick = tokio::time::interval(poll.as_ref().map_or(FLUSH_EVERY, |p| p.every));
        poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return End::Cancelled,
                r = stream.read(&mut buf) => match r {
                    Ok(0) => return End::Lost("end of file (device unplugged?)".into()),
                    Ok(n) => self.handle(&buf[..n]).await,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted
                        || e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return End::Lost(e.to_string()),
                },
                _ = flush.tick() => self.flush().await,
                _ = poll_tick.tick(), if poll.is_some() => {
                    let send = &poll.as_ref().expect("guarded").send;
                    match tokio::time::timeout(RECONNECT_MAX, stream.write_all(send)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return End::Lost(format!("writing the poll request: {e}")),
                        Err(_) => warn!(
                            port = %self.port.config.name,
                            "poll request not written within 1s; the device does not read"
                        ),
                    }
                }
            }
        }
    }

    /// One chunk of bytes: submit its readings as one batch, keep its rejects.
    async fn handle(&mut self, bytes: &[u8]) {
        let now = now_ms();
        let mut readings = Vec::new();
        let mut rejects = Vec::new();
        let mut skipped = 0u64;
        self.ingest.push(bytes, now, |o| match o {
            LineOutcome::Skipped => skipped += 1,
            LineOutcome::Reading(r) => readings.push(r),
            LineOutcome::Rejected {
                reason,
                detail,
                raw,
            } => rejects.push((
                reason,
                detail,
                raw[..raw.len().min(REJECT_RAW_LIMIT)].to_vec(),
            )),
        });
        let path = self.port.config.path.clone();
        if skipped > 0 {
            metrics::counter!("dakkio_serial_lines_total", "port" => path.clone(), "result" => "skipped")
                .increment(skipped);
        }
        if !readings.is_empty() || !rejects.is_empty() || skipped > 0 {
            self.port.health.input_seen(&self.port.part, now);
        }
        if !readings.is_empty() {
            let n = readings.len();
            self.tally.ok += n as i64;
            self.tally.last_line_ms = Some(now);
            metrics::counter!("dakkio_serial_lines_total", "port" => path.clone(), "result" => "ok")
                .increment(n as u64);
            debug!(port = %self.port.config.name, lines = n, "serial lines decoded");
            match self.port.store.submit(readings.clone()).await {
                Ok(p) => {
                    drop(self.tx.send(InFlight::Readings(p, readings)).await);
                    // Short of in-flight room: do not wait for the commit
                    // window (`store/policy.rs`).
                    if self.tx.capacity() < IN_FLIGHT / 4 {
                        self.port.store.hurry(crate::store::Hurry::SerialRoom);
                    }
                }
                Err(e) => error!(
                    port = %self.port.config.name,
                    error = %e,
                    lost = n,
                    "cannot hand serial readings to the store"
                ),
            }
        }
        for (reason, detail, raw) in rejects {
            *self.tally.rejected.entry(reason).or_default() += 1;
            metrics::counter!("dakkio_serial_lines_total", "port" => path.clone(), "result" => reason)
                .increment(1);
            self.log_reject(reason, &detail);
            let reject = Reject {
                origin: self.port.part.to_string(),
                reason: reason.to_owned(),
                detail,
                raw,
            };
            match self.port.store.submit_reject(reject).await {
                Ok(p) => drop(self.tx.send(InFlight::Other(p)).await),
                Err(e) => debug!(error = %e, "cannot keep a rejected serial line"),
            }
        }
    }

    fn log_reject(&mut self, reason: &str, detail: &str) {
        let log = &mut self.reject_log;
        if log.last.is_some_and(|t| t.elapsed() < REJECT_LOG_EVERY) {
            log.suppressed += 1;
            debug!(port = %self.port.config.name, reason, detail, "serial line rejected");
            return;
        }
        warn!(
            port = %self.port.config.name,
            reason,
            detail,
            not_logged_since_last = log.suppressed,
            "serial line rejected (kept in rejects; logged at most once a minute)"
        );
        log.last = Some(Instant::now());
        log.suppressed = 0;
    }

    /// Write counters and the last line time to the store, if they moved.
    async fn flush(&mut self) {
        let part = &self.port.part;
        let mut deltas = Vec::new();
        if self.tally.ok > 0 {
            deltas.push((
                status_key(part, LINES_OK),
                std::mem::take(&mut self.tally.ok),
            ));
        }
        for (reason, n) in std::mem::take(&mut self.tally.rejected) {
            deltas.push((status_key(part, &format!("{REJECTED}{reason}")), n));
        }
        if !deltas.is_empty() {
            match self.port.store.add_counters(deltas).await {
                Ok(p) => drop(self.tx.send(InFlight::Other(p)).await),
                Err(e) => debug!(error = %e, "cannot record serial counters"),
            }
        }
        if let Some(ms) = self.tally.last_line_ms.take() {
            metrics::gauge!("dakkio_serial_last_line_timestamp_seconds", "port" => self.port.config.path.clone())
                .set(ms as f64 / 1000.0);
            match self
                .port
                .store
                .set_state(vec![(status_key(part, LAST_LINE_MS), ms.to_string())])
                .await
            {
                Ok(p) => drop(self.tx.send(InFlight::Other(p)).await),
                Err(e) => debug!(error = %e, "cannot record the last serial line time"),
            }
        }
    }
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
                    debug!(error = %e, "serial bookkeeping not committed");
                }
            }
            InFlight::Readings(p, readings) => {
                commit_holding(p, readings, &store, &cancel, "serial", RECONNECT_MAX).await
            }
        }
    }
}

/// Wait for `pending`; while the store refuses for a transient reason,
/// hold `readings` and submit them again every `retry` (the input that
/// produced them waits meanwhile: nothing is dropped). `input` names the
/// input in logs and in `dakkio_readings_accepted_total{source}` (serial,
/// Modbus: inputs without an acknowledgement to withhold).
pub(crate) async fn commit_holding(
    mut pending: Pending<Appended>,
    readings: Vec<Reading>,
    store: &StoreHandle,
    cancel: &CancellationToken,
    input: &'static str,
    retry: Duration,
) {
    let mut warned = false;
    loop {
        let err = match pending.wait().await {
            Ok(a) => {
                metrics::counter!("dakkio_readings_accepted_total", "source" => input)
                    .increment(a.count as u64);
                if warned {
                    info!(input, "readings committed again");
                }
                return;
            }
            Err(e) => e,
        };
        if !err.is_transient() || cancel.is_cancelled() {
            error!(input, error = %err, lost = readings.len(), "readings could not be stored");
            return;
        }
        if !warned {
            warn!(
                input,
                error = %err,
                "readings not committed; holding them and retrying (the input is not read \
                 meanwhile)"
            );
            warned = true;
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(retry) => {}
        }
        pending = match store.submit(readings.clone()).await {
            Ok(p) => p,
            Err(e) => {
                error!(input, error = %e, lost = readings.len(), "readings could not be stored");
                return;
            }
        };
    }
}

/// The store key of a port's counter or state field: `serial:<path>:<field>`.
/// Written by the port's task, read back by [`PortStatus::read_all`].
fn status_key(part: &Part, field: &str) -> String {
    format!("{part}:{field}")
}

/// State: `yes` or `no`.
const CONNECTED: &str = "connected";
/// Counter: lines that became readings.
const LINES_OK: &str = "lines_ok";
/// Counter prefix: lines rejected, by reason (`rejected:<reason>`).
const REJECTED: &str = "rejected:";
/// State: Unix ms of the last line.
const LAST_LINE_MS: &str = "last_line_ms";

/// What a port's task persisted (counters and state), for `queue stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortStatus {
    pub lines_ok: i64,
    pub rejected: std::collections::BTreeMap<String, i64>,
    /// `yes` / `no`; `None` before the port first ran.
    pub connected: Option<String>,
    pub last_line_ms: Option<i64>,
}

impl PortStatus {
    /// Every port that persisted something, by path (blocking).
    pub fn read_all(
        reader: &crate::store::Reader,
    ) -> Result<std::collections::BTreeMap<String, PortStatus>, crate::store::StoreError> {
        let mut ports: std::collections::BTreeMap<String, PortStatus> = Default::default();
        let prefix = Part::Serial(String::new()).to_string();
        // Paths may contain `:` (by-path names do): split on the known fields.
        for (key, n) in reader.counters_blocking(&prefix)? {
            let Some(key) = key.strip_prefix(&prefix) else {
                continue;
            };
            if let Some(path) = key.strip_suffix(&format!(":{LINES_OK}")) {
                ports.entry(path.to_owned()).or_default().lines_ok += n;
            } else if let Some((path, reason)) = key.rsplit_once(&format!(":{REJECTED}")) {
                *ports
                    .entry(path.to_owned())
                    .or_default()
                    .rejected
                    .entry(reason.to_owned())
                    .or_default() += n;
            }
        }
        for (key, v) in reader.state_blocking(&prefix)? {
            let Some(key) = key.strip_prefix(&prefix) else {
                continue;
            };
            if let Some(path) = key.strip_suffix(&format!(":{CONNECTED}")) {
                ports.entry(path.to_owned()).or_default().connected = Some(v);
            } else if let Some(path) = key.strip_suffix(&format!(":{LAST_LINE_MS}")) {
                ports.entry(path.to_owned()).or_default().last_line_ms = v.parse().ok();
            }
        }
        Ok(ports)
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    /// Keys built as the port's task builds them read back typed, with a
    /// path that holds `:` (by-path device names do).
    #[tokio::test]
    async fn what_a_port_writes_reads_back_typed() {
        let dir = tempfile::tempdir().unwrap();
        let (h, writer) =
            crate::store::open(&crate::config::StoreConfig::default(), dir.path()).unwrap();
        let part = Part::Serial("/dev/serial/by-path/pci-0:1.2".into());
        h.add_counters(vec![
            (status_key(&part, LINES_OK), 5),
            (status_key(&part, &format!("{REJECTED}bad_value")), 2),
        ])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
        h.set_state(vec![
            (status_key(&part, CONNECTED), "yes".into()),
            (status_key(&part, LAST_LINE_MS), "1700000000000".into()),
        ])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
        let ports = PortStatus::read_all(h.reader()).unwrap();
        let p = &ports["/dev/serial/by-path/pci-0:1.2"];
        assert_eq!(p.lines_ok, 5);
        assert_eq!(p.rejected["bad_value"], 2);
        assert_eq!(p.connected.as_deref(), Some("yes"));
        assert_eq!(p.last_line_ms, Some(1_700_000_000_000));
        drop(h);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap()
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::LineFormat;

    const BUCKET: &str = "507f1f77bcf86cd799439011";
    const A: &str = "507f1f77bcf86cd799439012";
    const B: &str = "507f1f77bcf86cd799439013";

    fn run(config: &SerialConfig, input: &[u8]) -> (Vec<Reading>, Vec<(&'static str, Vec<u8>)>) {
        let mut ingest = LineIngest::new(config);
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        ingest.push(input, 1_000, |o| match o {
            LineOutcome::Skipped => {}
            LineOutcome::Reading(r) => ok.push(r),
            LineOutcome::Rejected { reason, raw, .. } => bad.push((reason, raw.to_vec())),
        });
        (ok, bad)
    }

    #[test]
    fn fixed_route_and_receive_time() {
        let c = SerialConfig::new(
            "/dev/x",
            LineFormat::Kv {},
            BUCKET,
            SerialSource::Fixed(A.into()),
        );
        let (ok, bad) = run(&c, b"t=1\r\nts=1700000000 t=2\n\x00\x01\n");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].timestamp_ms, 1_000);
        assert_eq!(ok[1].timestamp_ms, 1_700_000_000_000);
        assert_eq!(ok[0].data_source_id, A);
        assert_eq!(ok[0].bucket_id, BUCKET);
        assert_eq!(ok[0].origin, Origin::Serial);
        assert_eq!(bad, vec![("control_character", b"\x00\x01".to_vec())]);
    }

    #[test]
    fn route_by_field() {
        let map = [
            ("kitchen".to_owned(), A.to_owned()),
            ("7".to_owned(), B.to_owned()),
        ]
        .into();
        let c = SerialConfig::new(
            "/dev/x",
            LineFormat::Kv {},
            BUCKET,
            SerialSource::ByField {
                field: "sensor".into(),
                map,
            },
        );
        let (ok, bad) = run(
            &c,
            b"sensor=kitchen t=1\nsensor=7 t=2\nsensor=attic t=3\nt=4\nsensor=kitchen\n",
        );
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].data_source_id, A);
        assert!(!ok[0].values.contains_key("sensor"));
        assert_eq!(ok[0].metadata["sensor"], "kitchen");
        assert_eq!(ok[1].data_source_id, B);
        let reasons: Vec<&str> = bad.iter().map(|b| b.0).collect();
        assert_eq!(
            reasons,
            [UNKNOWN_SOURCE, UNKNOWN_SOURCE, "no_numeric_value"]
        );
    }

    #[test]
    fn overlong_is_too_large_and_resynchronises() {
        let mut c = SerialConfig::new(
            "/dev/x",
            LineFormat::Number { field: "t".into() },
            BUCKET,
            SerialSource::Fixed(A.into()),
        );
        c.max_line = 16;
        let mut input = b"1\n".to_vec();
        input.extend(std::iter::repeat_n(b'9', 17));
        input.extend(b"\n2\n");
        input.extend(std::iter::repeat_n(b'9', 16));
        input.push(b'\n');
        let (ok, bad) = run(&c, &input);
        assert_eq!(ok.len(), 3);
        assert_eq!(bad, vec![("too_large", vec![])]);
    }

    /// With `skip_header`, an overlong first line (connect noise, a long
    /// header) is the header: the reading after it is kept, not skipped.
    #[test]
    fn an_overlong_first_line_is_the_skipped_header() {
        let mut c = SerialConfig::new(
            "/dev/x",
            LineFormat::Csv {
                columns: vec!["t".into()],
                skip_header: true,
                delimiter: ',',
                time_column: None,
                time_format: Default::default(),
                time_zone: Default::default(),
            },
            BUCKET,
            SerialSource::Fixed(A.into()),
        );
        c.max_line = 16;
        let mut input: Vec<u8> = std::iter::repeat_n(b'x', 40).collect();
        input.extend(b"\n21.5\n");
        let (ok, bad) = run(&c, &input);
        assert_eq!(ok.len(), 1, "{bad:?}");
        assert_eq!(ok[0].values["t"], crate::reading::Value::Number(21.5));
        assert!(bad.is_empty(), "{bad:?}");
    }
}
