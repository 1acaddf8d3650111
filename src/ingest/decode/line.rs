//! Serial lines: [`LineDecoder`] (the `skip_header` state of one port) and
//! [`decode_line`], which dispatches a line to its [`LineFormat`] — JSON,
//! CSV, key/value pairs, a bare number or line protocol.

use super::csv::decode_csv;
use super::influx::influx_line;
use super::kv::decode_kv;
use super::*;

/// Decodes the lines of one serial port. It only keeps the `skip_header`
/// state; call [`reset`](LineDecoder::reset) whenever the framer is reset.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    format: LineFormat,
    opts: DecodeOptions,
    /// The next non-blank line is the first since (re)connecting.
    first_line: bool,
}

impl LineDecoder {
    pub fn new(format: LineFormat, opts: DecodeOptions) -> Self {
        LineDecoder {
            format,
            opts,
            first_line: true,
        }
    }

    pub fn format(&self) -> &LineFormat {
        &self.format
    }

    /// The device was re-plugged: the next line is a first line again.
    pub fn reset(&mut self) {
        self.first_line = true;
    }

    /// The framer discarded an overlong line: it is a line like any other,
    /// so it can be the first one. Returns `true` when it was the header
    /// `skip_header` skips (nothing to report, as for a first line that is
    /// too long in [`decode_bytes`](LineDecoder::decode_bytes)).
    pub fn overlong(&mut self) -> bool {
        std::mem::take(&mut self.first_line)
            && matches!(
                self.format,
                LineFormat::Csv {
                    skip_header: true,
                    ..
                }
            )
    }

    /// A framed line as bytes. A blank line, and with `skip_header` the
    /// first non-blank line whatever it holds (too long, not UTF-8: often
    /// the noise of a connect), are skipped before anything else; then the
    /// size and UTF-8 (`invalid_utf8`) are checked.
    pub fn decode_bytes(&mut self, line: &[u8]) -> Result<Option<Decoded>, DecodeError> {
        if line.trim_ascii().is_empty() {
            return Ok(None);
        }
        if std::mem::take(&mut self.first_line) {
            if let LineFormat::Csv {
                skip_header: true, ..
            } = self.format
            {
                return Ok(None);
            }
        }
        if line.len() > self.opts.max_payload {
            return Err(DecodeError::TooLarge {
                len: line.len(),
                max: self.opts.max_payload,
            });
        }
        let text = std::str::from_utf8(line)
            .map_err(|e| DecodeError::invalid_utf8(line, e.valid_up_to()))?;
        decode_line(text, &self.format, &self.opts)
    }

    /// `Ok(None)`: a line that carries no reading and is not an error (a
    /// blank line, a header). The same rules as
    /// [`decode_bytes`](LineDecoder::decode_bytes).
    pub fn decode(&mut self, line: &str) -> Result<Option<Decoded>, DecodeError> {
        self.decode_bytes(line.as_bytes())
    }
}

/// Decode one serial line (without the `skip_header` first-line rule, which
/// needs [`LineDecoder`]'s state). `Ok(None)` for blank lines and CSV header
/// lines.
pub fn decode_line(
    line: &str,
    format: &LineFormat,
    opts: &DecodeOptions,
) -> Result<Option<Decoded>, DecodeError> {
    if line.len() > opts.max_payload {
        return Err(DecodeError::TooLarge {
            len: line.len(),
            max: opts.max_payload,
        });
    }
    if line.trim_ascii().is_empty() {
        return Ok(None);
    }
    let line = match format {
        // Tabs are cells there: trailing empty cells must survive.
        LineFormat::Csv {
            delimiter: '\t', ..
        } => line.trim_matches([' ', '\r', '\n']),
        _ => line.trim_ascii(),
    };
    // Noise from a wrong baud rate is often valid UTF-8 full of control
    // bytes; no format uses them (tabs aside), so refuse them all alike.
    if let Some(offset) = line
        .bytes()
        .position(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(DecodeError::ControlCharacter {
            offset,
            snippet: snippet(line),
        });
    }
    match format {
        LineFormat::Json {} => {
            if !line.starts_with('{') {
                return Err(DecodeError::UnsupportedValue {
                    detail: "a json line must be an object",
                    near: snippet(line),
                });
            }
            decode_json(line, Shape::Auto, opts).map(Some)
        }
        LineFormat::Csv {
            columns, delimiter, ..
        } => {
            // `validate` refuses other delimiters; never split inside a
            // multi-byte character if it was skipped.
            let Some(delimiter) = u8::try_from(*delimiter).ok().filter(u8::is_ascii) else {
                return Err(DecodeError::InvalidCsv {
                    detail: "the configured delimiter is not an ascii character".to_owned(),
                    snippet: snippet(line),
                });
            };
            decode_csv(line, columns, delimiter, opts)
        }
        LineFormat::Kv {} => decode_kv(line, opts).map(Some),
        LineFormat::Number { field } => {
            let n = parse_number(line, field)?.ok_or_else(|| DecodeError::NoNumericValue {
                snippet: snippet(line),
            })?;
            let mut point = DecodedPoint::default();
            point.values.insert(field.clone(), Value::Number(n));
            Ok(Some(point.into()))
        }
        LineFormat::Influx {} => influx_line(line, opts).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    /// Found by fuzzing (`fuzz/regressions/serial_line/`): with
    /// `skip_header`, a first line too long (or not UTF-8) was refused
    /// without counting as the first line, so the next line — a reading —
    /// was skipped silently as the header; and `decode` and `decode_bytes`
    /// disagreed on it.
    #[test]
    fn fuzz_skip_header_skips_a_first_line_that_is_too_long_or_not_utf8() {
        use super::{DecodeOptions, LineDecoder, LineFormat};
        let format = LineFormat::Csv {
            columns: vec!["t".into()],
            skip_header: true,
            delimiter: ',',
        };
        let opts = DecodeOptions {
            max_payload: 64,
            ..Default::default()
        };
        for first in [vec![b'X'; 94], b"\xff\xfe garbage".to_vec()] {
            let mut dec = LineDecoder::new(format.clone(), opts.clone());
            assert_eq!(dec.decode_bytes(&first), Ok(None));
            assert!(
                dec.decode_bytes(b"21.5").unwrap().is_some(),
                "reading skipped"
            );
            // Later lines get the checks.
            assert!(dec.decode_bytes(&first).is_err());
        }
        let mut by_text = LineDecoder::new(format.clone(), opts.clone());
        let mut by_bytes = LineDecoder::new(format, opts);
        let long = "X".repeat(94);
        assert_eq!(
            by_text.decode(&long),
            by_bytes.decode_bytes(long.as_bytes())
        );
    }

    #[test]
    fn number_lines() {
        let f = LineFormat::Number {
            field: "temperature".into(),
        };
        for (s, n) in [
            ("21.5", 21.5),
            ("-3", -3.0),
            ("1e3", 1000.0),
            (" +.5 ", 0.5),
        ] {
            assert_eq!(num(&line(s, &f), "temperature"), n, "{s}");
        }
        for (s, want) in [
            ("NaN", "non_finite"),
            ("inf", "non_finite"),
            ("-infinity", "non_finite"),
            ("1e400", "non_finite"),
            ("21.5C", "no_numeric_value"),
            ("true", "no_numeric_value"),
            ("1 2", "no_numeric_value"),
            ("\u{0}", "control_character"),
        ] {
            assert_eq!(line_reason(s, &f), want, "{s}");
        }
    }

    #[test]
    fn line_limits_and_bytes() {
        let o = DecodeOptions {
            max_payload: 8,
            ..opts()
        };
        let mut dec = LineDecoder::new(LineFormat::Kv {}, o.clone());
        assert!(dec.decode_bytes(b"t=123456").unwrap().is_some());
        assert_eq!(
            dec.decode_bytes(b"t=1234567").unwrap_err().reason(),
            "too_large"
        );
        assert_eq!(
            decode_line("t=1234567", &LineFormat::Kv {}, &o)
                .unwrap_err()
                .reason(),
            "too_large"
        );
        assert_eq!(
            dec.decode_bytes(b"t=\xff").unwrap_err().reason(),
            "invalid_utf8"
        );
        assert_eq!(dec.decode_bytes(b"").unwrap(), None);
        assert_eq!(dec.decode_bytes(b" \t ").unwrap(), None);
        assert_eq!(dec.format(), &LineFormat::Kv {});
    }
}
