//! Serial lines: [`LineDecoder`] (the state of one port: `skip_header`,
//! the date of the last NMEA RMC) and [`decode_line`], which dispatches a
//! line to its [`LineFormat`] — JSON, CSV, key/value pairs, a bare number,
//! line protocol, free text or NMEA. Every entry point takes the time the
//! line arrived: it dates a time of day (`hhmmss`, a GGA fix).

use super::csv::decode_csv;
use super::influx::influx_line;
use super::kv::decode_kv;
use super::nmea::{decode_nmea, NmeaState};
use super::text::decode_text;
use super::*;

/// Decodes the lines of one serial port. It keeps the `skip_header` state
/// and the NMEA date; call [`reset`](LineDecoder::reset) whenever the
/// framer is reset.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    format: LineFormat,
    opts: DecodeOptions,
    /// The next non-blank line is the first since (re)connecting.
    first_line: bool,
    nmea: NmeaState,
}

impl LineDecoder {
    pub fn new(format: LineFormat, opts: DecodeOptions) -> Self {
        LineDecoder {
            format,
            opts,
            first_line: true,
            nmea: NmeaState::default(),
        }
    }

    /// A decoder for lines taken one by one (a kept reject, `try`): the
    /// first-line rule of `skip_header` does not apply.
    pub fn for_single_lines(format: LineFormat, opts: DecodeOptions) -> Self {
        LineDecoder {
            first_line: false,
            ..LineDecoder::new(format, opts)
        }
    }

    pub fn format(&self) -> &LineFormat {
        &self.format
    }

    /// The device was re-plugged: the next line is a first line again.
    pub fn reset(&mut self) {
        self.first_line = true;
        self.nmea = NmeaState::default();
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
    pub fn decode_bytes(
        &mut self,
        line: &[u8],
        received_ms: i64,
    ) -> Result<Option<Decoded>, DecodeError> {
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
        decode_line_with(text, &self.format, &self.opts, received_ms, &mut self.nmea)
    }

    /// `Ok(None)`: a line that carries no reading and is not an error (a
    /// blank line, a header). The same rules as
    /// [`decode_bytes`](LineDecoder::decode_bytes).
    pub fn decode(&mut self, line: &str, received_ms: i64) -> Result<Option<Decoded>, DecodeError> {
        self.decode_bytes(line.as_bytes(), received_ms)
    }
}

/// Decode one serial line (without the `skip_header` first-line rule and
/// the NMEA date of earlier sentences, which need [`LineDecoder`]'s state).
/// `Ok(None)` for lines that carry no reading and are not errors: blank
/// lines, CSV header lines, NMEA sentences that are not read or have no fix.
pub fn decode_line(
    line: &str,
    format: &LineFormat,
    opts: &DecodeOptions,
    received_ms: i64,
) -> Result<Option<Decoded>, DecodeError> {
    decode_line_with(line, format, opts, received_ms, &mut NmeaState::default())
}

fn decode_line_with(
    line: &str,
    format: &LineFormat,
    opts: &DecodeOptions,
    received_ms: i64,
    nmea: &mut NmeaState,
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
            columns,
            delimiter,
            time_column,
            time_format,
            time_zone,
            ..
        } => {
            // `validate` refuses other delimiters; never split inside a
            // multi-byte character if it was skipped.
            let Some(delimiter) = u8::try_from(*delimiter).ok().filter(u8::is_ascii) else {
                return Err(DecodeError::InvalidCsv {
                    detail: "the configured delimiter is not an ascii character".to_owned(),
                    snippet: snippet(line),
                });
            };
            let time = super::csv::TimeColumn {
                name: time_column.as_deref(),
                format: *time_format,
                zone: *time_zone,
                received_ms,
            };
            decode_csv(line, columns, delimiter, &time, opts)
        }
        LineFormat::Kv {} => decode_kv(line, opts).map(Some),
        LineFormat::Number { field } => {
            let n = parse_number(line, field)?.ok_or_else(|| DecodeError::NoNumericValue {
                snippet: snippet(line),
            })?;
            let mut point = DecodedPoint::default();
            point.values.insert(field.into(), Value::Number(n));
            Ok(Some(point.into()))
        }
        LineFormat::Influx {} => influx_line(line, opts).map(Some),
        LineFormat::Text {} => decode_text(line, received_ms, opts).map(Some),
        LineFormat::Nmea { sentences } => decode_nmea(line, sentences, received_ms, nmea),
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
            time_column: None,
            time_format: Default::default(),
            time_zone: Default::default(),
        };
        let opts = DecodeOptions {
            max_payload: 64,
            ..Default::default()
        };
        for first in [vec![b'X'; 94], b"\xff\xfe garbage".to_vec()] {
            let mut dec = LineDecoder::new(format.clone(), opts.clone());
            assert_eq!(dec.decode_bytes(&first, 0), Ok(None));
            assert!(
                dec.decode_bytes(b"21.5", 0).unwrap().is_some(),
                "reading skipped"
            );
            // Later lines get the checks.
            assert!(dec.decode_bytes(&first, 0).is_err());
        }
        let mut by_text = LineDecoder::new(format.clone(), opts.clone());
        let mut by_bytes = LineDecoder::new(format, opts);
        let long = "X".repeat(94);
        assert_eq!(
            by_text.decode(&long, 0),
            by_bytes.decode_bytes(long.as_bytes(), 0)
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
        assert!(dec.decode_bytes(b"t=123456", 0).unwrap().is_some());
        assert_eq!(
            dec.decode_bytes(b"t=1234567", 0).unwrap_err().reason(),
            "too_large"
        );
        assert_eq!(
            decode_line("t=1234567", &LineFormat::Kv {}, &o, 0)
                .unwrap_err()
                .reason(),
            "too_large"
        );
        assert_eq!(
            dec.decode_bytes(b"t=\xff", 0).unwrap_err().reason(),
            "invalid_utf8"
        );
        assert_eq!(dec.decode_bytes(b"", 0).unwrap(), None);
        assert_eq!(dec.decode_bytes(b" \t ", 0).unwrap(), None);
        assert_eq!(dec.format(), &LineFormat::Kv {});
    }
}
