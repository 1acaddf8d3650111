//! Helpers shared by the decoders' unit tests.

use super::*;

pub(super) fn opts() -> DecodeOptions {
    DecodeOptions::default()
}

pub(super) fn one(payload: &str, format: PayloadFormat) -> Decoded {
    let mut all = decode_payload(payload.as_bytes(), format, &opts())
        .unwrap_or_else(|e| panic!("{payload:?}: {e}"));
    assert_eq!(all.len(), 1, "{payload:?}");
    all.pop().unwrap()
}

pub(super) fn reason(payload: &[u8], format: PayloadFormat) -> &'static str {
    match decode_payload(payload, format, &opts()) {
        Ok(d) => panic!("{:?} decoded: {d:?}", String::from_utf8_lossy(payload)),
        Err(e) => {
            check_message(&e);
            e.reason()
        }
    }
}

pub(super) fn err(payload: &str, format: PayloadFormat) -> DecodeError {
    decode_payload(payload.as_bytes(), format, &opts()).unwrap_err()
}

/// House style for every error message: lowercase start, one line,
/// short whatever the input.
pub(super) fn check_message(e: &DecodeError) {
    let msg = e.to_string();
    assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
    assert!(!msg.contains('\n'), "{msg:?}");
    assert!(msg.chars().count() < 400, "{msg}");
    assert!(DecodeError::REASONS.contains(&e.reason()));
}

pub(super) fn num(d: &Decoded, k: &str) -> f64 {
    match d.point.values.get(k) {
        Some(Value::Number(n)) => *n,
        other => panic!("{k}: {other:?} in {:?}", d.point.values),
    }
}

pub(super) fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

pub(super) const TS: i64 = 1_705_314_600_000; // 2024-01-15T10:30:00Z

pub(super) fn csv(columns: &[&str]) -> LineFormat {
    LineFormat::Csv {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        skip_header: false,
        delimiter: ',',
        time_column: None,
        time_format: Default::default(),
        time_zone: Default::default(),
    }
}

pub(super) fn line(s: &str, format: &LineFormat) -> Decoded {
    decode_line(s, format, &opts(), TS)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .unwrap_or_else(|| panic!("{s:?} skipped"))
}

pub(super) fn line_reason(s: &str, format: &LineFormat) -> &'static str {
    match decode_line(s, format, &opts(), TS) {
        Ok(d) => panic!("{s:?} decoded: {d:?}"),
        Err(e) => {
            check_message(&e);
            e.reason()
        }
    }
}

/// One step of xorshift64 on `x`: the tests' reproducible random cases.
pub(super) fn xorshift(x: &mut u64) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
}
