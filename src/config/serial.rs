//! `[[serial]]`: serial ports, each read line by line into readings.
//!
//! A validated [`SerialConfig`] holds everything the port task needs: the
//! line settings for the UART, the framing (delimiter, maximum line length),
//! the line format (validated by [`LineFormat::validate`]) and the route —
//! one bucket, and either a fixed data source or a text field of the line
//! whose value picks the data source through a name → id map.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::LineFormat;
use super::{Bucket, Ctx};
use crate::reading::is_object_id;

/// A reasonable default for `max_line`: sensors print short lines, and a JSON
/// line of a few dozen values fits easily.
pub const DEFAULT_MAX_LINE: usize = 4096;
pub const DEFAULT_BAUD_RATE: u32 = 9600;
/// Lines longer than this are refused in the config: the framer keeps up to
/// this many bytes per port in memory.
pub const MAX_MAX_LINE: i64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSerial {
    path: Spanned<String>,
    name: Option<Spanned<String>>,
    baud_rate: Option<Spanned<i64>>,
    data_bits: Option<Spanned<i64>>,
    parity: Option<Parity>,
    stop_bits: Option<Spanned<i64>>,
    flow_control: Option<FlowControl>,
    delimiter: Option<Spanned<String>>,
    max_line: Option<Spanned<i64>>,
    line: Spanned<LineFormat>,
    bucket: Spanned<String>,
    data_source: Option<Spanned<String>>,
    source_field: Option<Spanned<String>>,
    sources: Option<Spanned<BTreeMap<String, String>>>,
    poll: Option<RawPoll>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    every: Spanned<String>,
    send: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// Where a port's readings go.
#[derive(Debug, Clone, PartialEq)]
pub enum SerialSource {
    /// Every line belongs to this data source (24-hex id).
    Fixed(String),
    /// The text value of `field` names the data source through `map`
    /// (name → 24-hex id); the field is moved from the values into the
    /// metadata. A line without it, or with an unknown name, is rejected
    /// as `unknown_source`.
    ByField {
        field: String,
        map: BTreeMap<String, String>,
    },
}

/// Ask a device for a reading: write `send` every `every`.
#[derive(Debug, Clone, PartialEq)]
pub struct Poll {
    pub every: Duration,
    pub send: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SerialConfig {
    /// The device, e.g. `/dev/serial/by-id/usb-FTDI_…-if00-port0`.
    pub path: String,
    /// For logs (default: the path).
    pub name: String,
    pub baud_rate: u32,
    /// 5 to 8.
    pub data_bits: u8,
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    pub flow_control: FlowControl,
    /// The byte that ends a line; with `\n`, `\r\n` and a lone `\r` end a
    /// line too.
    pub delimiter: u8,
    /// Longer lines are discarded up to the next delimiter (`too_large`).
    pub max_line: usize,
    pub line: LineFormat,
    /// The bucket's 24-hex id.
    pub bucket_id: String,
    pub source: SerialSource,
    pub poll: Option<Poll>,
}

impl SerialConfig {
    /// A port with the defaults, for tests and benchmarks.
    pub fn new(path: &str, line: LineFormat, bucket_id: &str, source: SerialSource) -> Self {
        SerialConfig {
            path: path.to_owned(),
            name: path.to_owned(),
            baud_rate: DEFAULT_BAUD_RATE,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
            delimiter: b'\n',
            max_line: DEFAULT_MAX_LINE,
            line,
            bucket_id: bucket_id.to_owned(),
            source,
            poll: None,
        }
    }
}

pub(crate) fn validate_all(
    raw: Vec<RawSerial>,
    ctx: &mut Ctx,
    buckets: &[Bucket],
) -> Vec<SerialConfig> {
    let mut paths = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let key = format!("serial[{i}]");
        out.push(validate_one(s, &key, ctx, buckets, &mut paths));
    }
    out
}

fn validate_one(
    s: RawSerial,
    key: &str,
    ctx: &mut Ctx,
    buckets: &[Bucket],
    paths: &mut HashSet<String>,
) -> SerialConfig {
    let path = s.path.get_ref().trim().to_owned();
    if path.is_empty() || !path.starts_with('/') {
        ctx.error(
            Some(s.path.span()),
            &format!("{key}.path"),
            format!(
                "`{key}.path` must be an absolute device path, e.g. \
                 `/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0`; got `{path}`"
            ),
        );
    } else if !paths.insert(path.clone()) {
        ctx.error(
            Some(s.path.span()),
            &format!("{key}.path"),
            format!("`{key}.path` `{path}` is used by another `[[serial]]` port"),
        );
    }
    let name = match &s.name {
        Some(n) if n.get_ref().trim().is_empty() => {
            ctx.error(
                Some(n.span()),
                &format!("{key}.name"),
                format!("`{key}.name` must not be empty, e.g. `weather-station`"),
            );
            path.clone()
        }
        Some(n) => n.get_ref().trim().to_owned(),
        None => path.clone(),
    };
    let baud_rate = ctx.int_in(
        &format!("{key}.baud_rate"),
        &s.baud_rate,
        50..=4_000_000,
        i64::from(DEFAULT_BAUD_RATE),
    ) as u32;
    let data_bits = ctx.int_in(&format!("{key}.data_bits"), &s.data_bits, 5..=8, 8) as u8;
    let stop_bits = ctx.int_in(&format!("{key}.stop_bits"), &s.stop_bits, 1..=2, 1) as u8;
    let delimiter = match &s.delimiter {
        None => b'\n',
        Some(d) => match d.get_ref().as_bytes() {
            [b] if b.is_ascii() => *b,
            _ => {
                ctx.error(
                    Some(d.span()),
                    &format!("{key}.delimiter"),
                    format!(
                        "`{key}.delimiter` must be one ASCII character, e.g. `\"\\n\"` \
                         (which also accepts `\\r\\n` and `\\r`) or `\";\"`; got `{}`",
                        d.get_ref().escape_debug()
                    ),
                );
                b'\n'
            }
        },
    };
    let max_line = ctx.int_in(
        &format!("{key}.max_line"),
        &s.max_line,
        16..=MAX_MAX_LINE,
        DEFAULT_MAX_LINE as i64,
    ) as usize;
    if let Err(why) = s.line.get_ref().validate() {
        ctx.error(
            Some(s.line.span()),
            &format!("{key}.line"),
            format!("`{key}.line`: {why}"),
        );
    }
    let bucket_id = resolve_bucket(&s.bucket, key, ctx, buckets);
    let source = resolve_source(&s, key, ctx);
    let poll = s.poll.as_ref().and_then(|p| {
        let every = ctx.duration(
            &format!("{key}.poll.every"),
            &Some(p.every.clone()),
            Duration::from_secs(10),
            "10s",
        );
        if every < Duration::from_millis(10) {
            ctx.error(
                Some(p.every.span()),
                &format!("{key}.poll.every"),
                format!("`{key}.poll.every` must be at least `10ms`, e.g. `10s`"),
            );
        }
        if p.send.get_ref().is_empty() {
            ctx.error(
                Some(p.send.span()),
                &format!("{key}.poll.send"),
                format!(
                    "`{key}.poll.send` must not be empty: it is written to the device \
                     to ask for a reading, e.g. `\"READ\\r\\n\"`"
                ),
            );
            return None;
        }
        Some(Poll {
            every,
            send: p.send.get_ref().as_bytes().to_vec(),
        })
    });
    SerialConfig {
        path,
        name,
        baud_rate,
        data_bits,
        parity: s.parity.unwrap_or(Parity::None),
        stop_bits,
        flow_control: s.flow_control.unwrap_or(FlowControl::None),
        delimiter,
        max_line,
        line: s.line.into_inner(),
        bucket_id,
        source,
        poll,
    }
}

/// `bucket` names a configured bucket by id or by name.
pub(super) fn resolve_bucket(
    raw: &Spanned<String>,
    key: &str,
    ctx: &mut Ctx,
    buckets: &[Bucket],
) -> String {
    let want = raw.get_ref().trim();
    let lower = want.to_ascii_lowercase();
    if let Some(b) = buckets.iter().find(|b| b.id == lower || b.name == want) {
        return b.id.clone();
    }
    let known: Vec<String> = buckets.iter().map(|b| format!("`{}`", b.name)).collect();
    ctx.error(
        Some(raw.span()),
        &format!("{key}.bucket"),
        format!(
            "`{key}.bucket` must be the id or name of a `[[buckets]]` entry ({}); got `{want}`",
            if known.is_empty() {
                "none is configured".to_owned()
            } else {
                format!("configured: {}", known.join(", "))
            }
        ),
    );
    lower
}

fn resolve_source(s: &RawSerial, key: &str, ctx: &mut Ctx) -> SerialSource {
    let fallback = SerialSource::Fixed(String::new());
    match (&s.data_source, &s.source_field, &s.sources) {
        (Some(id), None, None) => {
            let v = id.get_ref().trim().to_ascii_lowercase();
            if !is_object_id(&v) {
                ctx.error(
                    Some(id.span()),
                    &format!("{key}.data_source"),
                    format!(
                        "`{key}.data_source` must be dakkio's 24-hex data source id, e.g. \
                         `507f1f77bcf86cd799439012`; got `{}`",
                        id.get_ref()
                    ),
                );
            }
            SerialSource::Fixed(v)
        }
        (None, Some(field), Some(map)) => {
            if field.get_ref().trim().is_empty() {
                ctx.error(
                    Some(field.span()),
                    &format!("{key}.source_field"),
                    format!("`{key}.source_field` must name a field of the line, e.g. `sensor`"),
                );
            }
            if map.get_ref().is_empty() {
                ctx.error(
                    Some(map.span()),
                    &format!("{key}.sources"),
                    format!(
                        "`{key}.sources` must map at least one name to a data source id, \
                         e.g. `sources = {{ kitchen = \"507f1f77bcf86cd799439012\" }}`"
                    ),
                );
            }
            let mut out = BTreeMap::new();
            for (name, id) in map.get_ref() {
                let v = id.trim().to_ascii_lowercase();
                if !is_object_id(&v) {
                    ctx.error(
                        Some(map.span()),
                        &format!("{key}.sources.{name}"),
                        format!(
                            "`{key}.sources.{name}` must be dakkio's 24-hex data source id, \
                             e.g. `507f1f77bcf86cd799439012`; got `{id}`"
                        ),
                    );
                }
                out.insert(name.clone(), v);
            }
            SerialSource::ByField {
                field: field.get_ref().trim().to_owned(),
                map: out,
            }
        }
        (None, None, None) => {
            ctx.error(
                Some(s.bucket.span()),
                &format!("{key}.data_source"),
                format!(
                    "`{key}` needs a data source: `data_source = \"507f1f77bcf86cd799439012\"`, \
                     or `source_field = \"sensor\"` with \
                     `sources = {{ kitchen = \"507f1f77bcf86cd799439012\" }}`"
                ),
            );
            fallback
        }
        _ => {
            let span = s
                .source_field
                .as_ref()
                .map(|f| f.span())
                .or_else(|| s.sources.as_ref().map(|m| m.span()));
            ctx.error(
                span,
                &format!("{key}.source_field"),
                format!(
                    "`{key}` takes either `data_source`, or `source_field` together with \
                     `sources`; not a mix"
                ),
            );
            fallback
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, Environment};

    struct NoEnv;
    impl Environment for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
        fn hostname(&self) -> Option<String> {
            Some("h".into())
        }
    }

    const HEAD: &str = "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\nname = \"barn\"\n";

    fn ok(body: &str) -> Vec<SerialConfig> {
        parse(&format!("{HEAD}{body}"), Path::new("g.toml"), &NoEnv)
            .map_err(|e| e.to_string())
            .unwrap()
            .serial
    }

    fn err(body: &str) -> Vec<crate::config::Problem> {
        parse(&format!("{HEAD}{body}"), Path::new("g.toml"), &NoEnv)
            .expect_err("should be refused")
            .problems
    }

    #[test]
    fn full_port() {
        let s = ok(r#"
[[serial]]
path = "/dev/serial/by-id/usb-x"
name = "weather"
baud_rate = 115200
data_bits = 7
parity = "even"
stop_bits = 2
flow_control = "hardware"
delimiter = ";"
max_line = 256
line = { format = "csv", columns = ["ts", "t"] }
bucket = "barn"
source_field = "sensor"
sources = { kitchen = "507F1F77BCF86CD799439012" }
poll = { every = "10s", send = "READ\r\n" }
"#);
        let s = &s[0];
        assert_eq!(s.name, "weather");
        assert_eq!(s.baud_rate, 115_200);
        assert_eq!((s.data_bits, s.stop_bits), (7, 2));
        assert_eq!(s.parity, Parity::Even);
        assert_eq!(s.flow_control, FlowControl::Hardware);
        assert_eq!(s.delimiter, b';');
        assert_eq!(s.max_line, 256);
        assert_eq!(s.bucket_id, "507f1f77bcf86cd799439011");
        assert_eq!(
            s.source,
            SerialSource::ByField {
                field: "sensor".into(),
                map: [("kitchen".into(), "507f1f77bcf86cd799439012".into())].into()
            }
        );
        assert_eq!(
            s.poll,
            Some(Poll {
                every: Duration::from_secs(10),
                send: b"READ\r\n".to_vec()
            })
        );
    }

    #[test]
    fn defaults() {
        let s = ok(r#"
[[serial]]
path = "/dev/ttyUSB0"
line = { format = "kv" }
bucket = "507f1f77bcf86cd799439011"
data_source = "507f1f77bcf86cd799439012"
"#);
        assert_eq!(
            s[0],
            SerialConfig::new(
                "/dev/ttyUSB0",
                LineFormat::Kv {},
                "507f1f77bcf86cd799439011",
                SerialSource::Fixed("507f1f77bcf86cd799439012".into())
            )
        );
    }

    #[test]
    fn problems_name_line_and_key() {
        let p = err(r#"
[[serial]]
path = "ttyUSB0"
baud_rate = 0
parity = "evn"
line = { format = "csv", columns = [] }
bucket = "nope"
data_source = "42"
"#);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        // serde stops at the first shape error (`parity`), so check it alone.
        assert_eq!(keys, ["serial[0].parity"], "{p:?}");
        assert!(p[0].message.contains("did you mean `even`"), "{p:?}");

        let p = err(r#"
[[serial]]
path = "ttyUSB0"
baud_rate = 0
delimiter = "\r\n"
line = { format = "csv", columns = [] }
bucket = "nope"
data_source = "42"
poll = { every = "soon", send = "" }
"#);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "serial[0].path",
                "serial[0].baud_rate",
                "serial[0].delimiter",
                "serial[0].line",
                "serial[0].bucket",
                "serial[0].data_source",
                "serial[0].poll.every",
                "serial[0].poll.send",
            ],
            "{p:?}"
        );
        assert_eq!(p[0].line, Some(6));
        assert!(p[3].message.contains("`columns` must name"), "{}", p[3]);
        assert_eq!(p[3].line, Some(9));
        assert!(p[4].message.contains("configured: `barn`"), "{}", p[4]);
    }

    #[test]
    fn source_must_be_one_of_the_two_forms() {
        let p = err(r#"
[[serial]]
path = "/dev/ttyUSB0"
line = { format = "kv" }
bucket = "barn"
"#);
        assert!(p[0].message.contains("needs a data source"), "{p:?}");
        let p = err(r#"
[[serial]]
path = "/dev/ttyUSB0"
line = { format = "kv" }
bucket = "barn"
data_source = "507f1f77bcf86cd799439012"
source_field = "sensor"
"#);
        assert!(p[0].message.contains("not a mix"), "{p:?}");
        let p = err(r#"
[[serial]]
path = "/dev/ttyUSB0"
line = { format = "kv" }
bucket = "barn"
source_field = "sensor"
sources = { a = "x" }
"#);
        assert_eq!(p[0].key, "serial[0].sources.a", "{p:?}");
    }

    /// The commented `[[serial]]` block of the example, uncommented, is a
    /// working port.
    #[test]
    fn the_example_block_parses() {
        let block = &crate::config::EXAMPLE[crate::config::EXAMPLE.find("# [[serial]]").unwrap()..];
        // The block ends at the first blank line.
        let text: String = block
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter(|l| !l.starts_with("##"))
            .filter_map(|l| l.strip_prefix("# "))
            .map(|l| format!("{l}\n"))
            .collect();
        let head = "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\nname = \"example\"\n";
        let c = parse(&format!("{head}{text}"), Path::new("g.toml"), &NoEnv)
            .map_err(|e| e.to_string())
            .unwrap();
        assert_eq!(c.serial.len(), 1);
        let mut want = SerialConfig::new(
            "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0",
            LineFormat::Csv {
                columns: vec!["ts".into(), "temperature".into(), "humidity".into()],
                skip_header: false,
                delimiter: ',',
                time_column: None,
                time_format: Default::default(),
                time_zone: Default::default(),
            },
            "507f1f77bcf86cd799439011",
            SerialSource::Fixed("507f1f77bcf86cd799439012".into()),
        );
        want.name = "weather-station".into();
        assert_eq!(c.serial[0], want);
    }

    #[test]
    fn duplicate_path_and_unknown_key() {
        let port = "[[serial]]\npath = \"/dev/ttyUSB0\"\nline = { format = \"kv\" }\n\
                    bucket = \"barn\"\ndata_source = \"507f1f77bcf86cd799439012\"\n";
        let p = err(&format!("{port}{port}"));
        assert_eq!(p[0].key, "serial[1].path");
        let p = err(&format!("{port}baudrate = 9600\n"));
        assert!(p[0].message.contains("did you mean `baud_rate`"), "{p:?}");
    }
}
