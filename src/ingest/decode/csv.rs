//! CSV serial lines: cells named by the configured `columns`, quoted cells,
//! exactly one cell per column, and the header line a device prints again
//! after a re-plug (skipped, not an error). The time column is `time_column`
//! (default: a column named `timestamp`, `ts` or `time`) read with
//! `time_format` (see `linetime`: in `auto` a number before 2000 is refused,
//! so a `time` column holding `hhmmss` never becomes a 1970 date).

use std::borrow::Cow;

use super::linetime::parse_time;
use super::*;
use crate::config::formats::{TimeFormat, TimeZone};

/// Where a CSV line's time is and how to read it.
pub(super) struct TimeColumn<'a> {
    /// `time_column`; `None`: any column named like a timestamp.
    pub name: Option<&'a str>,
    pub format: TimeFormat,
    pub zone: TimeZone,
    /// Dates a time of day.
    pub received_ms: i64,
}

impl TimeColumn<'_> {
    fn is_time(&self, column: &str) -> bool {
        match self.name {
            Some(name) => column == name,
            None => is_timestamp_key(column),
        }
    }
}

/// The cells of one CSV line, borrowed unless a quoted cell holds `""`.
/// Cells are trimmed; a quoted cell keeps its inner spaces.
struct CsvCells<'a> {
    line: &'a str,
    pos: usize,
    delimiter: u8,
    done: bool,
}

impl<'a> CsvCells<'a> {
    fn new(line: &'a str, delimiter: u8) -> Self {
        CsvCells {
            line,
            pos: 0,
            delimiter,
            done: false,
        }
    }

    fn error(&self, detail: &str) -> DecodeError {
        DecodeError::InvalidCsv {
            detail: detail.to_owned(),
            snippet: snippet(self.line),
        }
    }
}

impl<'a> Iterator for CsvCells<'a> {
    type Item = Result<Cow<'a, str>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let b = self.line.as_bytes();
        let is_space = |c: u8| c == b' ' || (c == b'\t' && self.delimiter != b'\t');
        let mut i = self.pos;
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let cell = if b.get(i) == Some(&b'"') {
            // Quoted: `""` is a quote, the delimiter is literal.
            let mut out = Cow::Borrowed("");
            let mut run = i + 1;
            let mut j = i + 1;
            loop {
                match b.get(j) {
                    None => {
                        self.done = true;
                        return Some(Err(self.error("unterminated quoted cell")));
                    }
                    Some(b'"') if b.get(j + 1) == Some(&b'"') => {
                        out.to_mut().push_str(&self.line[run..=j]);
                        run = j + 2;
                        j += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => j += 1,
                }
            }
            if run == i + 1 {
                out = Cow::Borrowed(&self.line[run..j]);
            } else {
                out.to_mut().push_str(&self.line[run..j]);
            }
            i = j + 1;
            while i < b.len() && is_space(b[i]) {
                i += 1;
            }
            if i < b.len() && b[i] != self.delimiter {
                self.done = true;
                return Some(Err(self.error("text after a closing quote")));
            }
            out
        } else {
            let start = i;
            while i < b.len() && b[i] != self.delimiter {
                i += 1;
            }
            Cow::Borrowed(self.line[start..i].trim_ascii())
        };
        if i < b.len() {
            self.pos = i + 1; // past the delimiter
        } else {
            self.done = true;
        }
        Some(Ok(cell))
    }
}

pub(super) fn decode_csv(
    line: &str,
    columns: &[String],
    delimiter: u8,
    time: &TimeColumn<'_>,
    opts: &DecodeOptions,
) -> Result<Option<Decoded>, DecodeError> {
    let count = CsvCells::new(line, delimiter).count();
    if count != columns.len() {
        // A partial line (the start of a line lost at connect time) must not
        // be read with its cells shifted into the wrong columns.
        return Err(DecodeError::InvalidCsv {
            detail: format!(
                "{count} {} for {} {}",
                if count == 1 { "cell" } else { "cells" },
                columns.len(),
                if columns.len() == 1 {
                    "column"
                } else {
                    "columns"
                },
            ),
            snippet: snippet(line),
        });
    }
    if is_header(line, columns, delimiter) {
        return Ok(None);
    }
    let mut point = DecodedPoint::default();
    for (cell, column) in CsvCells::new(line, delimiter).zip(columns) {
        let cell = cell?;
        if cell.is_empty() || column.is_empty() {
            continue;
        }
        if time.is_time(column) {
            point.timestamp_ms = Some(parse_time(&cell, time.format, time.zone, time.received_ms)?);
            continue;
        }
        let value = text_value(&cell, column)?;
        point.values.insert(column.into(), value);
    }
    finish(point.into(), line, opts).map(Some)
}

/// A line whose cells are the column names (ASCII case-insensitively;
/// ignored columns match anything): the device's header.
fn is_header(line: &str, columns: &[String], delimiter: u8) -> bool {
    CsvCells::new(line, delimiter)
        .zip(columns)
        .all(|(cell, column)| match cell {
            Ok(cell) => column.is_empty() || cell.eq_ignore_ascii_case(column),
            Err(_) => false,
        })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn csv_lines() {
        let f = csv(&["ts", "temperature", "humidity", "sensor"]);
        let d = line("1705314600, 21.5 ,-3,kitchen", &f);
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(num(&d, "temperature"), 21.5);
        assert_eq!(num(&d, "humidity"), -3.0);
        assert_eq!(d.point.values["sensor"], text("kitchen"));
        // Empty cells are skipped; ISO timestamps; 1e3; quoted cells.
        let d = line("2024-01-15T10:30:00Z,1e3,,\"room \"\"a\"\", east\"", &f);
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(num(&d, "temperature"), 1000.0);
        assert!(!d.point.values.contains_key("humidity"));
        assert_eq!(d.point.values["sensor"], text("room \"a\", east"));
        let d = line(",20,,", &f);
        assert_eq!(d.point.timestamp_ms, None);
        // Booleans are booleans; a quoted number is a number.
        let d = line(r#","20","true","x""#, &f);
        assert_eq!(num(&d, "temperature"), 20.0);
        assert_eq!(d.point.values["humidity"], Value::Bool(true));
        // An ignored column.
        let d = line("junk,7", &csv(&["", "t"]));
        assert_eq!(d.point.values.len(), 1);
        assert_eq!(num(&d, "t"), 7.0);
        // Other delimiters.
        let semi = LineFormat::Csv {
            columns: vec!["t".into(), "h".into()],
            skip_header: false,
            delimiter: ';',
            time_column: None,
            time_format: Default::default(),
            time_zone: Default::default(),
        };
        let d = line("21,5;40", &semi);
        assert_eq!(d.point.values["t"], text("21,5"));
        assert_eq!(num(&d, "h"), 40.0);
        let tab = LineFormat::Csv {
            columns: vec!["t".into(), "h".into()],
            skip_header: false,
            delimiter: '\t',
            time_column: None,
            time_format: Default::default(),
            time_zone: Default::default(),
        };
        let d = line(
            "21.5\t\t",
            &LineFormat::Csv {
                columns: vec!["t".into(), "h".into(), "x".into()],
                skip_header: false,
                delimiter: '\t',
                time_column: None,
                time_format: Default::default(),
                time_zone: Default::default(),
            },
        );
        assert_eq!(d.point.values.len(), 1);
        assert_eq!(num(&line(" 1 \t 2 ", &tab), "h"), 2.0);
    }

    #[test]
    fn csv_errors() {
        let f = csv(&["ts", "t", "h"]);
        for (s, want) in [
            ("1705314600,21.5", "invalid_csv"),
            ("1705314600,21.5,40,7", "invalid_csv"),
            (",\"21.5,40", "invalid_csv"),
            (",\"21.5\"x,40", "invalid_csv"),
            ("yesterday,21.5,40", "bad_timestamp"),
            (",NaN,40", "non_finite"),
            (",21.5,inf", "non_finite"),
            (",1e400,1", "non_finite"),
            (",ok,high", "no_numeric_value"),
            (",,", "no_numeric_value"),
            ("1705314600,\u{0}21,3", "control_character"),
        ] {
            assert_eq!(line_reason(s, &f), want, "{s}");
        }
        let e = decode_line("1,2", &f, &opts(), TS).unwrap_err();
        assert!(e.to_string().contains("2 cells for 3 columns"), "{e}");
        let e = decode_line("1", &csv(&["a", "b"]), &opts(), TS).unwrap_err();
        assert!(e.to_string().contains("1 cell for 2 columns"), "{e}");
    }

    /// A `time` column holding `hhmmss` is refused in `auto` (it used to
    /// become a 1970 date) and read on the receive date with `hhmmss`.
    #[test]
    fn csv_time_column_and_format() {
        assert_eq!(
            line_reason("123519,21.5", &csv(&["time", "t"])),
            "bad_timestamp"
        );
        let f = |column: Option<&str>, format| LineFormat::Csv {
            columns: vec!["clock".into(), "t".into(), "ts".into()],
            skip_header: false,
            delimiter: ',',
            time_column: column.map(str::to_owned),
            time_format: format,
            time_zone: crate::config::formats::TimeZone::UTC,
        };
        let d = line("123519,21.5,7", &f(Some("clock"), TimeFormat::Hhmmss));
        // TS is 2024-01-15T10:30:00Z.
        assert_eq!(
            d.point.timestamp_ms,
            Some(1_705_276_800_000 + (12 * 3600 + 35 * 60 + 19) * 1000)
        );
        // With `time_column`, other timestamp-like names are values.
        assert_eq!(num(&d, "ts"), 7.0);
        assert!(!d.point.values.contains_key("clock"));
        let d = line("1705314600000,1,2", &f(Some("clock"), TimeFormat::UnixMs));
        assert_eq!(d.point.timestamp_ms, Some(TS));
        assert_eq!(
            line_reason("12:35,1,2", &f(Some("clock"), TimeFormat::Hhmmss)),
            "bad_timestamp"
        );
    }

    #[test]
    fn csv_header_lines_are_skipped() {
        let f = csv(&["ts", "temperature", "humidity"]);
        let o = opts();
        assert_eq!(decode_line("ts,temperature,humidity", &f, &o, TS), Ok(None));
        assert_eq!(
            decode_line(" TS , Temperature,\"humidity\"\r", &f, &o, TS),
            Ok(None)
        );
        // A re-plugged device printing its header again mid-stream.
        let mut dec = LineDecoder::new(f.clone(), o.clone());
        let got: Vec<_> = [
            "ts,temperature,humidity",
            ",1,2",
            "ts,temperature,humidity",
            ",3,4",
        ]
        .iter()
        .map(|l| dec.decode(l, TS).unwrap().map(|d| num(&d, "temperature")))
        .collect();
        assert_eq!(got, [None, Some(1.0), None, Some(3.0)]);
        // A header that differs from the column names is bad input, unless
        // `skip_header` drops the first line after each (re)connect.
        assert_eq!(line_reason("time,temp,hum", &f), "bad_timestamp");
        let f = LineFormat::Csv {
            columns: vec!["ts".into(), "t".into(), "h".into()],
            skip_header: true,
            delimiter: ',',
            time_column: None,
            time_format: Default::default(),
            time_zone: Default::default(),
        };
        let mut dec = LineDecoder::new(f, o);
        assert_eq!(
            dec.decode("   ", TS),
            Ok(None),
            "blank lines are not the first line"
        );
        assert_eq!(dec.decode("time,temp,hum", TS), Ok(None));
        assert_eq!(num(&dec.decode(",1,2", TS).unwrap().unwrap(), "t"), 1.0);
        assert_eq!(
            dec.decode("time,temp,hum", TS).unwrap_err().reason(),
            "bad_timestamp"
        );
        dec.reset();
        assert_eq!(dec.decode("time,temp,hum", TS), Ok(None));
        assert!(dec.decode(",5,6", TS).unwrap().is_some());
    }
}
