//! The input formats a config names: an MQTT route's payload `format`, a
//! serial port's `line` table and line-protocol timestamp precision. Plain
//! data (serde + the semantic checks serde cannot express); the decoders in
//! `ingest::decode` interpret them and re-export them under their old paths.

use serde::Deserialize;

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
}

fn default_csv_delimiter() -> char {
    ','
}

fn default_field() -> String {
    DEFAULT_FIELD.to_owned()
}

impl LineFormat {
    /// Semantic checks serde cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            LineFormat::Csv {
                columns, delimiter, ..
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
                Ok(())
            }
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
                delimiter: ';'
            }
        );
        assert_eq!(
            parse(r#"line = { format = "csv", columns = ["t"] }"#).unwrap(),
            csv(&["t"])
        );
        // Keys of another format, unknown formats, missing columns: errors.
        for bad in [
            r#"line = { format = "json", columns = ["t"] }"#,
            r#"line = { format = "kv", field = "t" }"#,
            r#"line = { format = "number", columns = ["t"] }"#,
            r#"line = { format = "csv" }"#,
            r#"line = { format = "xml" }"#,
            r#"line = { columns = ["t"] }"#,
            r#"line = "json""#,
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
                },
                "`delimiter`",
            ),
            (
                LineFormat::Csv {
                    columns: vec!["t".into()],
                    skip_header: false,
                    delimiter: 'é',
                },
                "`delimiter`",
            ),
            (
                LineFormat::Number {
                    field: String::new(),
                },
                "`field`",
            ),
        ] {
            let msg = f.validate().unwrap_err();
            assert!(msg.contains(needle), "{msg}");
        }
        let tab = LineFormat::Csv {
            columns: vec!["t".into()],
            skip_header: false,
            delimiter: '\t',
        };
        assert!(tab.validate().is_ok());
    }
}
