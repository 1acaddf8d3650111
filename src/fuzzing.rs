//! Entry points for the fuzz targets in `fuzz/` (and the regression tests
//! that replay their findings). Not public API: these wrap private
//! validators of the local API so that `cargo fuzz` can reach them without
//! widening the crate's real interface.

mod http;

pub use http::check_api_request;

use axum::response::IntoResponse;

use crate::api::routes::{ingest, keys, query};
use crate::dakkio::validate::{self, Rejection};
use crate::reading::{Value, Values};

/// What validating a local API request body gave.
#[derive(Debug, PartialEq)]
pub enum BodyOutcome {
    /// Accepted; the points as the gateway would store their values.
    Accepted(Vec<Values>),
    /// Refused with this HTTP status (always 400 for a body problem).
    Refused(u16),
}

fn refused(e: crate::api::ApiError) -> BodyOutcome {
    BodyOutcome::Refused(e.into_response().status().as_u16())
}

/// `POST /api/data` (`batch = false`) or `POST /api/data/batch`: the
/// schema check, then each point's values, exactly as the handler does
/// before it touches the store.
pub fn ingest_body(body: &[u8], batch: bool) -> BodyOutcome {
    let outcome = if batch {
        validate::parse_batch(body)
    } else {
        validate::parse_single(body)
    };
    let parsed = match outcome.result {
        Ok(p) => p,
        Err(Rejection::Schema(_)) | Err(Rejection::Message(_)) => return BodyOutcome::Refused(400),
    };
    match ingest::to_readings(&parsed, 0, ingest::MAX_FIELDS_PER_POINT) {
        Ok(readings) => BodyOutcome::Accepted(readings.into_iter().map(|r| r.values).collect()),
        Err(issues) => refused(crate::api::ApiError::Validation(issues)),
    }
}

/// `POST /api/data/query`: `Ok(())` when the body is a valid query.
pub fn query_body(body: &[u8]) -> Result<(), u16> {
    query::parse_query(body)
        .map(|_| ())
        .map_err(|e| e.into_response().status().as_u16())
}

/// `POST /api/keys`: the key type and name, or the refusal's status.
pub fn key_create_body(body: &[u8]) -> Result<(String, String), u16> {
    keys::parse_create(body)
        .map(|(kind, name)| (kind.as_str().to_owned(), name))
        .map_err(|e| e.into_response().status().as_u16())
}

/// True when every number in `values` is finite (what dakkio accepts).
pub fn values_are_finite(values: &Values) -> bool {
    values.values().all(|v| match v {
        Value::Number(n) => n.is_finite(),
        _ => true,
    })
}

// ---------------------------------------------------------------------------
// Invariant checks shared by the fuzz targets (`fuzz/fuzz_targets/*`) and
// the regression replay (`tests/fuzz_regressions.rs`). Each takes the raw
// fuzz input, derives its parameters from the first bytes, and panics when
// an invariant does not hold.

use std::time::{Duration, UNIX_EPOCH};

use crate::ingest::decode::{
    decode_payload, DecodeOptions, Decoded, InfluxPrecision, LineDecoder, LineFormat, PayloadFormat,
};
use crate::ingest::framing::{Frame, LineFramer};
use crate::reading::{format_timestamp, parse_timestamp};
use crate::store::QueuedReading;
use crate::uplink::client::{Answer, BodyBuilder};
use crate::uplink::retry_after::{wait_from_headers, MAX_WAIT, MIN_WAIT};

const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;
const FUZZ_BUCKET: &str = "65a1b2c3d4e5f6a7b8c9d0e1";
const FUZZ_SOURCE: &str = "65a1b2c3d4e5f6a7b8c9d0e2";

fn byte(data: &[u8], i: usize) -> u8 {
    data.get(i).copied().unwrap_or(0)
}

fn options(sel: u8) -> DecodeOptions {
    DecodeOptions {
        // Small limits now and then, so the limit paths are reached too.
        max_payload: if sel & 0x10 != 0 { 64 } else { 256 * 1024 },
        max_depth: if sel & 0x20 != 0 { 3 } else { 32 },
        scalar_field: (sel & 0x40 == 0).then(|| "temperature".to_owned()),
        influx_precision: match sel & 3 {
            0 => InfluxPrecision::Ns,
            1 => InfluxPrecision::Us,
            2 => InfluxPrecision::Ms,
            _ => InfluxPrecision::S,
        },
        require_number: sel & 0x80 == 0,
        // Room or none: the metadata map is the same either way.
        metadata_room: usize::from(sel >> 2 & 3),
    }
}

/// What every accepted point must satisfy: finite numbers, a number when
/// required, a timestamp dakkio can store that renders and parses back to
/// itself, and a batch body built from it that dakkio's validation accepts
/// (otherwise the gateway would acknowledge a reading only to dead-letter it).
fn check_decoded(d: &Decoded, opts: &DecodeOptions, input_len: usize) {
    let values = &d.point.values;
    assert!(values_are_finite(values), "non-finite number in {values:?}");
    if opts.require_number {
        assert!(
            values.values().any(|v| matches!(v, Value::Number(_))),
            "point without a number accepted: {values:?}"
        );
    }
    if let Some(ts) = d.point.timestamp_ms {
        assert!(
            (0..=MAX_TIMESTAMP_MS).contains(&ts),
            "timestamp out of range: {ts}"
        );
        assert_eq!(
            parse_timestamp(&format_timestamp(ts)),
            Some(ts),
            "timestamp does not round trip"
        );
    }
    // Keys come from the input (a flattened key is a path of input keys),
    // or are the configured field name.
    for k in values.keys() {
        assert!(
            k.len() <= input_len + 16,
            "key longer than the input: {k:?}"
        );
    }
    let q = QueuedReading {
        seq: 1,
        data_source_id: FUZZ_SOURCE.to_owned(),
        timestamp_ms: d.point.timestamp_ms.unwrap_or(1_700_000_000_000),
        origin: None,
        values_json: serde_json::to_string(values).expect("values serialise"),
        metadata_json: (!d.point.metadata.is_empty())
            .then(|| serde_json::to_string(&d.point.metadata).expect("metadata serialises")),
    };
    let body = BodyBuilder::new(FUZZ_BUCKET, "fuzz", 1).body(std::slice::from_ref(&q));
    match ingest_body(&body, true) {
        BodyOutcome::Accepted(points) => {
            assert_eq!(points.len(), 1);
            assert_eq!(&points[0], values, "values change on the way to dakkio");
        }
        BodyOutcome::Refused(s) => panic!(
            "accepted point refused by dakkio's validation ({s}): {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

fn check_error(e: &crate::ingest::decode::DecodeError) {
    assert!(!e.reason().is_empty());
    let msg = e.to_string();
    assert!(msg.len() < 1024, "error message too long: {}", msg.len());
}

/// `mqtt_payload`: byte 0 picks the format, byte 1 the options; the rest is
/// the payload.
pub fn check_mqtt_payload(data: &[u8]) {
    let format = match byte(data, 0) % 5 {
        0 => PayloadFormat::Auto,
        1 => PayloadFormat::Json,
        2 => PayloadFormat::Point,
        3 => PayloadFormat::Scalar,
        _ => PayloadFormat::Influx,
    };
    let opts = options(byte(data, 1));
    let payload = data.get(2..).unwrap_or_default();
    match decode_payload(payload, format, &opts) {
        Ok(points) => {
            assert!(
                payload.len() <= opts.max_payload,
                "over-limit payload accepted"
            );
            assert!(!points.is_empty(), "accepted payload without points");
            let lines = payload.split(|&b| b == b'\n').count();
            assert!(points.len() <= lines, "more points than lines");
            for d in &points {
                check_decoded(d, &opts, payload.len());
            }
        }
        Err(e) => check_error(&e),
    }
}

fn line_format(sel: u8) -> LineFormat {
    match sel % 6 {
        0 => LineFormat::Json {},
        1 => LineFormat::Kv {},
        2 => LineFormat::Number {
            field: "temperature".to_owned(),
        },
        3 => LineFormat::Influx {},
        4 => LineFormat::Csv {
            columns: vec!["ts".into(), "temperature".into(), "".into(), "state".into()],
            skip_header: sel & 0x40 != 0,
            delimiter: ',',
            time_column: None,
            time_format: Default::default(),
            time_zone: Default::default(),
        },
        _ => LineFormat::Csv {
            columns: vec!["temperature".into(), "humidity".into()],
            skip_header: false,
            delimiter: if sel & 0x80 != 0 { '\t' } else { ';' },
            time_column: None,
            time_format: Default::default(),
            time_zone: Default::default(),
        },
    }
}

/// `serial_line`: byte 0 picks the line format, byte 1 the options; the
/// rest is a sequence of lines fed to one decoder (so header skipping and
/// its state are exercised), split on `\n`.
pub fn check_serial_line(data: &[u8]) {
    let format = line_format(byte(data, 0));
    assert!(format.validate().is_ok());
    let opts = options(byte(data, 1));
    let mut decoder = LineDecoder::new(format, opts.clone());
    for line in data.get(2..).unwrap_or_default().split(|&b| b == b'\n') {
        let mut probe = decoder.clone();
        let by_bytes = probe.decode_bytes(line, 1_705_314_600_000);
        match &by_bytes {
            Ok(Some(d)) => {
                assert!(line.len() <= opts.max_payload, "over-limit line accepted");
                check_decoded(d, &opts, line.len());
            }
            Ok(None) => {}
            Err(e) => check_error(e),
        }
        // The text entry point agrees with the bytes one on valid UTF-8.
        if let Ok(text) = std::str::from_utf8(line) {
            assert_eq!(
                decoder.decode(text, 1_705_314_600_000),
                by_bytes,
                "decode and decode_bytes differ"
            );
        } else {
            // Not UTF-8: never a reading (a skipped first line is fine).
            assert!(!matches!(by_bytes, Ok(Some(_))), "invalid UTF-8 accepted");
        }
        decoder = probe;
    }
}

/// What a framer must emit for `input`, computed the obvious way on the
/// whole input: (frames, bytes left buffered).
fn frames_model(
    input: &[u8],
    delimiter: u8,
    max_line: usize,
) -> (Vec<Result<Vec<u8>, usize>>, usize) {
    let limit = if delimiter == b'\n' {
        max_line
    } else {
        max_line + 1
    };
    let is_end = |b: &u8| {
        if delimiter == b'\n' {
            *b == b'\n' || *b == b'\r'
        } else {
            *b == delimiter
        }
    };
    let mut segments: Vec<&[u8]> = input.split(is_end).collect();
    let rest = segments.pop().unwrap_or_default();
    let mut frames = Vec::new();
    for seg in segments {
        if seg.len() > limit {
            frames.push(Err(seg.len()));
            continue;
        }
        let line = seg.strip_suffix(b"\r").unwrap_or(seg);
        if line.len() > max_line {
            frames.push(Err(line.len()));
        } else if !line.is_empty() {
            frames.push(Ok(line.to_vec()));
        }
    }
    let buffered = if rest.len() > limit { 0 } else { rest.len() };
    (frames, buffered)
}

/// `serial_framing`: byte 0 sets `max_line` (1–64, so overlong lines are
/// common), byte 1 the delimiter (`\n` when even, else the byte itself),
/// byte 2 seeds the chunk sizes; the rest is the stream, fed in arbitrary
/// chunks. The frames and the remainder must equal those of the model,
/// whatever the chunking; the buffer stays within its bound.
pub fn check_serial_framing(data: &[u8]) {
    let max_line = 1 + usize::from(byte(data, 0) % 64);
    let delimiter = match byte(data, 1) {
        b if b % 2 == 0 => b'\n',
        b => b,
    };
    let mut seed = u32::from(byte(data, 2)) | 1;
    let input = data.get(3..).unwrap_or_default();
    let mut framer = LineFramer::new(delimiter, max_line);
    let mut got = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (seed >> 16) as usize % 17).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        framer.push(chunk, |f| {
            got.push(match f {
                Frame::Line(l) => Ok(l.to_vec()),
                Frame::Overlong { discarded } => Err(discarded),
            })
        });
        rest = tail;
        assert!(
            framer.capacity() <= 2 * max_line + 2,
            "buffer grew past its bound"
        );
    }
    let (want, buffered) = frames_model(input, delimiter, max_line);
    assert_eq!(got, want, "frames differ from the model");
    assert_eq!(
        framer.buffered(),
        buffered,
        "remainder differs from the model"
    );
    // Accounting: every byte is a line byte, a discarded byte, a stripped
    // `\r`, a delimiter or still buffered (or discarded while buffering).
    let line_bytes: usize = got
        .iter()
        .map(|f| match f {
            Ok(l) => l.len(),
            Err(n) => *n,
        })
        .sum();
    assert!(line_bytes + framer.buffered() <= input.len());
}

/// An [`Environment`](crate::config::Environment) with a fixed variable
/// set and no host name, for parsing config text in isolation.
struct FixedEnv;

impl crate::config::Environment for FixedEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "DAKKIO_WRITE_KEY").then(|| format!("dakkio_w_{}", "a".repeat(32)))
    }
    fn hostname(&self) -> Option<String> {
        Some("fuzz-gw".to_owned())
    }
}

fn names_a_file(v: &toml::Value) -> bool {
    match v {
        toml::Value::Table(t) => t
            .iter()
            .any(|(k, v)| k.ends_with("_file") || names_a_file(v)),
        toml::Value::Array(a) => a.iter().any(names_a_file),
        _ => false,
    }
}

/// `config`: the input is configuration text, parsed and validated without
/// the process environment. Texts naming a `…_file` key are skipped: their
/// validation reads that file, and a fuzzer must not read `/dev/zero`.
/// Errors must name the file and stay readable.
pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(doc) = text.parse::<toml::Table>() {
        if names_a_file(&toml::Value::Table(doc)) {
            return;
        }
    }
    let file = std::path::Path::new("/etc/dakkio-gateway/fuzz.toml");
    match crate::config::parse(text, file, &FixedEnv) {
        Ok(config) => {
            assert!(config.store.max_size > 0);
            for b in &config.buckets {
                assert!(crate::reading::is_object_id(&b.id), "bucket id {:?}", b.id);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("fuzz.toml"),
                "error does not name the file: {msg}"
            );
            assert!(!msg.is_empty());
        }
    }
}

/// `api_bodies`: byte 0 picks the endpoint (single ingest, batch ingest,
/// query, key creation); the rest is the request body. A refusal is always
/// a 400; accepted values are finite.
pub fn check_api_body(data: &[u8]) {
    let body = data.get(1..).unwrap_or_default();
    match byte(data, 0) % 4 {
        0 | 1 => match ingest_body(body, byte(data, 0) % 4 == 1) {
            BodyOutcome::Accepted(points) => {
                assert!(!points.is_empty());
                for v in &points {
                    assert!(values_are_finite(v));
                }
            }
            BodyOutcome::Refused(s) => assert_eq!(s, 400),
        },
        2 => {
            if let Err(s) = query_body(body) {
                assert_eq!(s, 400);
            }
        }
        _ => match key_create_body(body) {
            Ok((kind, _name)) => assert!(kind == "write" || kind == "read"),
            Err(s) => assert_eq!(s, 400),
        },
    }
}

/// `retry_headers`: the input is `Retry-After`, `\0`, `X-RateLimit-Reset`,
/// `\0`, an answer body; byte 0 picks the status. The wait is `None` or
/// within [MIN_WAIT, MAX_WAIT]; a positive integer `Retry-After` is that
/// many seconds, clamped; an HTTP date renders and parses back to itself;
/// classifying the answer never panics.
pub fn check_retry_headers(data: &[u8]) {
    let status = [200u16, 400, 413, 429, 429, 500, 401, 302][usize::from(byte(data, 0) % 8)];
    let mut parts = data.get(1..).unwrap_or_default().splitn(3, |&b| b == 0);
    let retry = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let reset = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let body = parts.next().unwrap_or_default();
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let wait = wait_from_headers(retry, reset, now);
    if let Some(w) = wait {
        assert!(
            (MIN_WAIT..=MAX_WAIT).contains(&w),
            "wait {w:?} out of bounds"
        );
    }
    if let Some(secs) = retry.and_then(|r| r.trim().parse::<u64>().ok()) {
        if secs > 0 {
            let want = Duration::from_secs(secs).clamp(MIN_WAIT, MAX_WAIT);
            assert_eq!(wait, Some(want), "Retry-After {secs} not honoured");
        }
    }
    if let Some(at) = retry.and_then(|r| httpdate::parse_http_date(r.trim()).ok()) {
        let again = httpdate::parse_http_date(&httpdate::fmt_http_date(at));
        assert_eq!(again.ok(), Some(at), "HTTP date does not round trip");
        if at > now + MIN_WAIT && retry.is_some_and(|r| r.trim().parse::<u64>().is_err()) {
            let d = at.duration_since(now).unwrap_or_default();
            assert_eq!(wait, Some(d.clamp(MIN_WAIT, MAX_WAIT)));
        }
    }
    let answer = Answer {
        status,
        retry_after: retry.map(str::to_owned),
        rate_limit_reset: reset.map(str::to_owned),
        rate_limit_remaining: None,
        body: bytes::Bytes::copy_from_slice(body),
    };
    let _ = answer.error_body();
    let action = crate::uplink::classify::classify(&Ok(answer), now);
    if let crate::uplink::classify::Action::WaitFor(d) = action {
        assert!((MIN_WAIT..=MAX_WAIT).contains(&d));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Replays the committed seeds and every input a fuzz run found a bug
    /// with (`fuzz/regressions/<target>/`), so CI checks them without nightly.
    #[test]
    fn fuzz_seeds_and_regressions_replay() {
        type Check = fn(&[u8]);
        let targets: [(&str, Check); 7] = [
            ("mqtt_payload", super::check_mqtt_payload),
            ("serial_framing", super::check_serial_framing),
            ("serial_line", super::check_serial_line),
            ("config", super::check_config),
            ("api_bodies", super::check_api_body),
            ("retry_headers", super::check_retry_headers),
            ("api_requests", super::check_api_request),
        ];
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut replayed = 0;
        for (target, check) in targets {
            for kind in ["seeds", "regressions"] {
                let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
                    continue;
                };
                for entry in dir {
                    let path = entry.unwrap().path();
                    let data = std::fs::read(&path).unwrap();
                    let outcome = std::panic::catch_unwind(|| check(&data));
                    assert!(outcome.is_ok(), "{} fails its invariants", path.display());
                    replayed += 1;
                }
            }
        }
        assert!(
            replayed >= 6,
            "no fuzz inputs found under {}",
            root.display()
        );
    }
}
