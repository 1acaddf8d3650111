//! The input formats a config names: an MQTT route's payload `format`, a
//! serial port's `line` table and line-protocol timestamp precision. Plain
//! data (serde + the semantic checks serde cannot express); the decoders in
//! `ingest::decode` interpret them and re-export them under their old paths.

use serde::Deserialize;

pub use super::timefmt::{TimeFormat, TimeZone};

/// Name of the value of a bare number or scalar payload when none is given.
pub const DEFAULT_FIELD: &str = "value";

/// How an MQTT payload is decoded (`format = "auto"` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    #[default]
    Auto,
    Json,
    Point,
    Scalar,
    Influx,
}

/// Unit of line-protocol timestamps (`ns` is InfluxDB's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxPrecision {
    #[default]
    Ns,
    Us,
    Ms,
    S,
}

/// How a serial port's lines are decoded. In the config it is a table tagged
/// by `format`, each format taking only its own keys:
///
/// ```toml
/// [[serial]]
/// port = "/dev/ttyUSB0"
/// line = { format = "csv", columns = ["ts", "temperature", "humidity"] }
/// # or: line = { format = "json" }             values object or dakkio point
/// # or: line = { format = "kv" }               t=21.5 h=40 / t:21.5,h:40
/// # or: line = { format = "number", field = "temperature" }
/// # or: line = { format = "influx" }           line protocol, one point per line
/// # or: line = { format = "text" }             Humidity: 58.00 %  Temperature: 22.40 C
/// # or: line = { format = "nmea" }             GPS sentences (GGA, RMC)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase", deny_unknown_fields)]
// The field-less formats are `{}` variants, not unit variants: serde lets a
// unit variant of an internally tagged enum ignore unknown keys, so
// `{ format = "json", columns = [...] }` would pass silently.
pub enum LineFormat {
    /// A JSON object: a values object or dakkio's point shape.
    Json {},
    /// Comma-separated cells named by `columns`.
    Csv {
        /// One name per cell. A column named `timestamp`, `ts` or `time` is
        /// the timestamp; a column named `""` is ignored.
        columns: Vec<String>,
        /// Also skip the first line after (re)connecting, whatever it holds,
        /// for devices whose header differs from `columns`. A line equal to
        /// the column names is skipped in any case, so a device that prints
        /// its header again after a re-plug needs nothing.
        #[serde(default)]
        skip_header: bool,
        /// Cell separator, `,` by default (`;` and tab are common too).
        #[serde(default = "default_csv_delimiter")]
        delimiter: char,
        /// The column holding the reading's time. Default: the column
        /// named `timestamp`, `ts` or `time`, if any.
        #[serde(default)]
        time_column: Option<String>,
        /// How the time column is written (`auto`: ISO-8601, Unix after
        /// 2000, or `hh:mm:ss`; see `ingest::decode::linetime`).
        #[serde(default, deserialize_with = "de_time_format")]
        time_format: TimeFormat,
        /// The zone of times written without an offset (`local` by default,
        /// as for MQTT routes).
        #[serde(default, deserialize_with = "de_time_zone")]
        time_zone: TimeZone,
    },
    /// `key=value` or `key:value` pairs separated by spaces, commas or
    /// semicolons.
    Kv {},
    /// A bare number, stored under `field`.
    Number {
        #[serde(default = "default_field")]
        field: String,
    },
    /// InfluxDB line protocol.
    Influx {},
    /// Free text as firmware prints it: `name: number unit` pairs
    /// (`Humidity: 58.00 %  Temperature: 22.40 C`, `Temperature = 22.40 *C`,
    /// `$,winddir=113,…,#`). See `ingest::decode::text` for the rules.
    Text {},
    /// NMEA 0183 sentences from a GPS receiver, checksum verified.
    Nmea {
        /// The sentences that become readings (others are skipped).
        #[serde(default = "default_nmea_sentences")]
        sentences: Vec<NmeaSentence>,
    },
}

fn de_time_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TimeFormat, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|e: String| serde::de::Error::custom(format!("`time_format` {e}")))
}

fn de_time_zone<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TimeZone, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|e: String| serde::de::Error::custom(format!("`time_zone` {e}")))
}

/// The NMEA sentences the gateway reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum NmeaSentence {
    /// Fix data: position, altitude, satellites, HDOP, fix quality.
    #[serde(rename = "GGA")]
    Gga,
    /// Recommended minimum: position, speed, course, date and time.
    #[serde(rename = "RMC")]
    Rmc,
}

fn default_nmea_sentences() -> Vec<NmeaSentence> {
    vec![NmeaSentence::Gga, NmeaSentence::Rmc]
}

fn default_csv_delimiter() -> char {
    ','
}

fn default_field() -> String {
    DEFAULT_FIELD.to_owned()
}

impl LineFormat {
    /// A short description for `check`: `csv, time in `clock` (hhmmss)`.
    pub fn describe(&self) -> String {
        match self {
            LineFormat::Json {} => "json".into(),
            LineFormat::Csv {
                columns,
                time_column,
                time_format,
                ..
            } => {
                let time = time_column.as_deref().or_else(|| {
                    columns
                        .iter()
                        .map(String::as_str)
                        .find(|c| ["timestamp", "ts", "time"].contains(c))
                });
                match time {
                    Some(t) => format!("csv, time in `{t}` ({time_format})"),
                    None => "csv, time of arrival".into(),
                }
            }
            LineFormat::Kv {} => "kv".into(),
            LineFormat::Number { field } => format!("number `{field}`"),
            LineFormat::Influx {} => "influx".into(),
            LineFormat::Text {} => "text".into(),
            LineFormat::Nmea { sentences } => format!(
                "nmea ({})",
                sentences
                    .iter()
                    .map(|s| format!("{s:?}").to_uppercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Semantic checks serde cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            LineFormat::Csv {
                columns,
                delimiter,
                time_column,
                time_format,
                ..
            } => {
                if columns.iter().all(|c| c.is_empty()) {
                    return Err("`columns` must name at least one column, \
                                e.g. `columns = [\"ts\", \"temperature\"]`"
                        .to_owned());
                }
                for (i, c) in columns.iter().enumerate() {
                    if !c.is_empty() && columns[..i].contains(c) {
                        return Err(format!("`columns` names `{c}` twice"));
                    }
                }
                if !delimiter.is_ascii()
                    || delimiter.is_ascii_control() && *delimiter != '\t'
                    || *delimiter == '"'
                {
                    return Err(format!(
                        "`delimiter` must be one printable ASCII character or a tab, \
                         e.g. `delimiter = \";\"`; got `{}`",
                        delimiter.escape_debug()
                    ));
                }
                match time_column {
                    Some(t) if !columns.contains(t) || t.is_empty() => {
                        return Err(format!(
                            "`time_column` must be one of `columns` ({}); got `{t}`",
                            columns
                                .iter()
                                .filter(|c| !c.is_empty())
                                .map(|c| format!("`{c}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    None if *time_format != TimeFormat::Auto
                        && !columns
                            .iter()
                            .any(|c| ["timestamp", "ts", "time"].contains(&c.as_str())) =>
                    {
                        return Err("`time_format` needs a time column: name one with \
                                    `time_column = \"…\"` or call a column `time`"
                            .to_owned());
                    }
                    _ => {}
                }
                Ok(())
            }
            LineFormat::Nmea { sentences } if sentences.is_empty() => Err(
                "`sentences` must name at least one sentence, e.g. `sentences = [\"GGA\", \"RMC\"]`"
                    .to_owned(),
            ),
            LineFormat::Number { field } if field.is_empty() => {
                Err("`field` must not be empty, e.g. `field = \"temperature\"`".to_owned())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(columns: &[&str]) -> LineFormat {
        LineFormat::Csv {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            skip_header: false,
            delimiter: ',',
            time_column: None,
            time_format: Default::default(),
            time_zone: Default::default(),
        }
    }

    #[test]
    fn payload_format_from_config_strings() {
        #[derive(Deserialize)]
        struct C {
            f: PayloadFormat,
        }
        for (s, f) in [
            ("auto", PayloadFormat::Auto),
            ("json", PayloadFormat::Json),
            ("point", PayloadFormat::Point),
            ("scalar", PayloadFormat::Scalar),
            ("influx", PayloadFormat::Influx),
        ] {
            let c: C = toml::from_str(&format!("f = \"{s}\"")).unwrap();
            assert_eq!(c.f, f);
        }
        assert!(toml::from_str::<C>("f = \"Json\"").is_err());
        assert_eq!(PayloadFormat::default(), PayloadFormat::Auto);
    }

    #[test]
    fn line_format_config_shape() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Serial {
            port: String,
            line: LineFormat,
        }
        let parse = |s: &str| {
            toml::from_str::<Serial>(&format!("port = \"/dev/ttyUSB0\"\n{s}")).map(|c| c.line)
        };
        assert_eq!(
            parse(r#"line = { format = "json" }"#).unwrap(),
            LineFormat::Json {}
        );
        assert_eq!(
            parse(r#"line = { format = "kv" }"#).unwrap(),
            LineFormat::Kv {}
        );
        assert_eq!(
            parse(r#"line = { format = "influx" }"#).unwrap(),
            LineFormat::Influx {}
        );
        assert_eq!(
            parse(r#"line = { format = "number" }"#).unwrap(),
            LineFormat::Number {
                field: "value".into()
            }
        );
        assert_eq!(
            parse("[line]\nformat = \"number\"\nfield = \"t\"").unwrap(),
            LineFormat::Number { field: "t".into() }
        );
        assert_eq!(
            parse(r#"line = { format = "csv", columns = ["ts", "t"], skip_header = true, delimiter = ";" }"#).unwrap(),
            LineFormat::Csv {
                columns: vec!["ts".into(), "t".into()],
                skip_header: true,
                delimiter: ';',
                time_column: None,
                time_format: Default::default(),
                time_zone: Default::default(),
            }
        );
        assert_eq!(
            parse(r#"line = { format = "csv", columns = ["t"] }"#).unwrap(),
            csv(&["t"])
        );
        assert_eq!(
            parse(r#"line = { format = "text" }"#).unwrap(),
            LineFormat::Text {}
        );
        assert_eq!(
            parse(r#"line = { format = "nmea" }"#).unwrap(),
            LineFormat::Nmea {
                sentences: vec![NmeaSentence::Gga, NmeaSentence::Rmc]
            }
        );
        assert_eq!(
            parse(r#"line = { format = "nmea", sentences = ["RMC"] }"#).unwrap(),
            LineFormat::Nmea {
                sentences: vec![NmeaSentence::Rmc]
            }
        );
        match parse(r#"line = { format = "csv", columns = ["time", "t"], time_column = "time", time_format = "hhmmss" }"#).unwrap() {
            LineFormat::Csv { time_column, time_format, .. } => {
                assert_eq!(time_column.as_deref(), Some("time"));
                assert_eq!(time_format, TimeFormat::Hhmmss);
            }
            other => panic!("{other:?}"),
        }
        for (s, f) in [
            ("auto", TimeFormat::Auto),
            ("iso8601", TimeFormat::Iso8601),
            ("unix_s", TimeFormat::UnixS),
            ("unix_ms", TimeFormat::UnixMs),
            ("unix_us", TimeFormat::UnixUs),
            ("unix_ns", TimeFormat::UnixNs),
        ] {
            let l = parse(&format!(
                r#"line = {{ format = "csv", columns = ["ts"], time_format = "{s}" }}"#
            ))
            .unwrap();
            assert!(matches!(l, LineFormat::Csv { time_format, .. } if time_format == f));
        }
        // Keys of another format, unknown formats, missing columns: errors.
        for bad in [
            r#"line = { format = "json", columns = ["t"] }"#,
            r#"line = { format = "kv", field = "t" }"#,
            r#"line = { format = "number", columns = ["t"] }"#,
            r#"line = { format = "csv" }"#,
            r#"line = { format = "xml" }"#,
            r#"line = { columns = ["t"] }"#,
            r#"line = "json""#,
            r#"line = { format = "text", columns = ["t"] }"#,
            r#"line = { format = "nmea", sentences = ["GSV"] }"#,
            r#"line = { format = "csv", columns = ["t"], time_format = "hh:mm" }"#,
            r#"line = { format = "kv", time_format = "hhmmss" }"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn line_format_validation() {
        assert!(csv(&["ts", "t", ""]).validate().is_ok());
        assert!(LineFormat::Json {}.validate().is_ok());
        for (f, needle) in [
            (csv(&[]), "`columns`"),
            (csv(&["", ""]), "`columns`"),
            (csv(&["t", "h", "t"]), "`t` twice"),
            (
                LineFormat::Csv {
                    columns: vec!["t".into()],
                    skip_header: false,
                    delimiter: '"',
                    time_column: None,
                    time_format: Default::default(),
                    time_zone: Default::default(),
                },
                "`delimiter`",
            ),
            (
                LineFormat::Csv {
                    columns: vec!["t".into()],
                    skip_header: false,
                    delimiter: 'é',
                    time_column: None,
                    time_format: Default::default(),
                    time_zone: Default::default(),
                },
                "`delimiter`",
            ),
            (
                LineFormat::Number {
                    field: String::new(),
                },
                "`field`",
            ),
            (
                LineFormat::Csv {
                    columns: vec!["t".into()],
                    skip_header: false,
                    delimiter: ',',
                    time_column: Some("clock".into()),
                    time_format: TimeFormat::Hhmmss,
                    time_zone: TimeZone::UTC,
                },
                "`time_column` must be one of `columns` (`t`); got `clock`",
            ),
            (
                LineFormat::Csv {
                    columns: vec!["clock".into(), "t".into()],
                    skip_header: false,
                    delimiter: ',',
                    time_column: None,
                    time_format: TimeFormat::Hhmmss,
                    time_zone: TimeZone::UTC,
                },
                "`time_format` needs a time column",
            ),
            (
                LineFormat::Nmea { sentences: vec![] },
                "`sentences` must name",
            ),
        ] {
            let msg = f.validate().unwrap_err();
            assert!(msg.contains(needle), "{msg}");
        }
        let tab = LineFormat::Csv {
            columns: vec!["t".into()],
            skip_header: false,
            delimiter: '\t',
            time_column: None,
            time_format: Default::default(),
            time_zone: Default::default(),
        };
        assert!(tab.validate().is_ok());
    }
}
