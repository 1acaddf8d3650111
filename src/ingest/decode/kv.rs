//! Key/value serial lines: `key=value` or `key:value` pairs separated by
//! spaces, commas or semicolons; a quoted value is always text.

use super::*;

/// Separators between key/value pairs.
fn is_kv_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b',' | b';')
}

/// Does `rest` start with `key=` or `key:`?
fn starts_kv_pair(rest: &[u8]) -> bool {
    if !rest
        .first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        return false;
    }
    rest.iter()
        .find(|&&c| matches!(c, b'=' | b':') || is_kv_separator(c))
        .is_some_and(|c| matches!(c, b'=' | b':'))
}

/// `t=21.5 h=40`, `t:21.5,h:40`, `t = 21.5; h = 40`, `name="room a"`.
/// A quoted value is always text; an empty value is skipped.
pub(super) fn decode_kv(line: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let b = line.as_bytes();
    let err = |detail| DecodeError::InvalidKv {
        detail,
        snippet: snippet(line),
    };
    let skip_blanks = |mut i: usize| {
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        i
    };
    let mut point = DecodedPoint::default();
    let mut i = 0;
    loop {
        while i < b.len() && is_kv_separator(b[i]) {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !matches!(b[i], b'=' | b':') && !is_kv_separator(b[i]) {
            i += 1;
        }
        let key = &line[start..i];
        i = skip_blanks(i);
        if !matches!(b.get(i), Some(b'=' | b':')) {
            return Err(err("expected `=` or `:` after a key"));
        }
        if key.is_empty() {
            return Err(err("empty key"));
        }
        i += 1;
        let after_blanks = skip_blanks(i);
        // `t: 21.5` has blanks before its value, but in `e= h=40` the
        // blank ends an empty value: a `key=`/`key:` token is the next pair
        // (keys start with a letter or `_`, so a timestamp value is not one).
        if after_blanks == i || !starts_kv_pair(&b[after_blanks..]) {
            i = after_blanks;
        }
        if b.get(i) == Some(&b'"') {
            let end = line[i + 1..]
                .find('"')
                .ok_or_else(|| err("unterminated quoted value"))?;
            let text = &line[i + 1..i + 1 + end];
            i += end + 2;
            if i < b.len() && !is_kv_separator(b[i]) {
                return Err(err("text after a closing quote"));
            }
            if is_timestamp_key(key) {
                point.timestamp_ms = Some(timestamp_text(text)?);
            } else {
                point
                    .values
                    .insert(key.into(), Value::Text(text.to_owned()));
            }
            continue;
        }
        let start = i;
        while i < b.len() && !is_kv_separator(b[i]) {
            i += 1;
        }
        let value = &line[start..i];
        if value.is_empty() {
            continue;
        }
        if is_timestamp_key(key) {
            point.timestamp_ms = Some(timestamp_text(value)?);
        } else {
            point.values.insert(key.into(), text_value(value, key)?);
        }
    }
    finish(point.into(), line, opts)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn kv_lines() {
        for s in [
            "t=21.5 h=40",
            "t:21.5,h:40",
            "t=21.5;h=40",
            "  t = 21.5 ; h = 40  ",
            "t: 21.5, h: 40",
            "t=21.5\th=40,,",
        ] {
            let d = line(s, &LineFormat::Kv {});
            assert_eq!(num(&d, "t"), 21.5, "{s}");
            assert_eq!(num(&d, "h"), 40.0, "{s}");
            assert_eq!(d.point.values.len(), 2, "{s}");
        }
        let d = line(
            r#"ts=2024-01-15T10:30:00Z sensor=kitchen name="room a, east" n=-3 big=1e3 on=true e= x=21.5C"#,
            &LineFormat::Kv {},
        );
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(d.point.values["sensor"], text("kitchen"));
        assert_eq!(d.point.values["name"], text("room a, east"));
        assert_eq!(num(&d, "n"), -3.0);
        assert_eq!(num(&d, "big"), 1000.0);
        assert_eq!(d.point.values["on"], Value::Bool(true));
        assert!(
            !d.point.values.contains_key("e"),
            "empty values are skipped"
        );
        assert_eq!(d.point.values["x"], text("21.5C"));
        // A quoted value is text even when it looks like a number.
        assert_eq!(
            line(r#"t=1 id="42""#, &LineFormat::Kv {}).point.values["id"],
            text("42")
        );
        assert_eq!(
            line("time:1705314600 t:1", &LineFormat::Kv {})
                .point
                .timestamp_ms,
            Some(TS)
        );
        // Blanks after `=`/`:` are allowed, but an empty value does not
        // swallow the next pair; a timestamp value is not a key.
        for s in ["e= h=40", "e: h:40", "Temperature: 21.5, Humidity: 40 e="] {
            let d = line(s, &LineFormat::Kv {});
            assert!(!d.point.values.contains_key("e"), "{s}");
            assert_eq!(
                d.point.values.len(),
                if s.starts_with('T') { 2 } else { 1 },
                "{s}"
            );
        }
        let d = line("ts: 2024-01-15T10:30:00Z t: 1", &LineFormat::Kv {});
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(num(&d, "t"), 1.0);
    }

    #[test]
    fn kv_errors() {
        for (s, want) in [
            ("hello world", "invalid_kv"),
            ("t=1 h", "invalid_kv"),
            ("=1", "invalid_kv"),
            (":1 t=2", "invalid_kv"),
            (r#"t=1 s="open"#, "invalid_kv"),
            (r#"t=1 s="a"b"#, "invalid_kv"),
            ("t=NaN", "non_finite"),
            ("t=1 h=-inf", "non_finite"),
            ("t=1e999", "non_finite"),
            ("s=on", "no_numeric_value"),
            ("ts=soon t=1", "bad_timestamp"),
            ("t=1\u{1b}[0m", "control_character"),
        ] {
            assert_eq!(line_reason(s, &LineFormat::Kv {}), want, "{s}");
        }
    }
}
