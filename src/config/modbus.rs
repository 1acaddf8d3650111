//! `[[modbus]]`: Modbus buses (an RS-485 line behind a serial device, or a
//! Modbus TCP server), the devices on each (unit id) and the registers read
//! from each device.
//!
//! A validated [`ModbusBus`] is everything the bus task needs and nothing it
//! must re-check: every register fits the 16-bit address space, its type
//! suits its function (coils and discrete inputs are `bool`, registers are
//! numbers), names are unique per device, units unique per bus, and every
//! register has its poll interval resolved (its own `every`, else the
//! device's). Which registers share a request is decided later, from this,
//! by `ingest::modbus::plan`.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::serial::{resolve_bucket, Parity};
use super::{Bucket, Ctx};
use crate::reading::is_object_id;

pub const DEFAULT_MODBUS_BAUD_RATE: u32 = 9600;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_EVERY: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u8 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModbus {
    path: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    baud_rate: Option<Spanned<i64>>,
    data_bits: Option<Spanned<i64>>,
    parity: Option<Parity>,
    stop_bits: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    bucket: Option<Spanned<String>>,
    #[serde(default)]
    devices: Vec<RawDevice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    unit: Spanned<i64>,
    name: Option<Spanned<String>>,
    bucket: Option<Spanned<String>>,
    data_source: Spanned<String>,
    every: Option<Spanned<String>>,
    #[serde(default)]
    registers: Vec<RawRegister>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    name: Spanned<String>,
    function: Function,
    address: Spanned<i64>,
    #[serde(rename = "type")]
    data_type: Option<Spanned<DataType>>,
    word_order: Option<Order>,
    byte_order: Option<Order>,
    scale: Option<Spanned<f64>>,
    offset: Option<Spanned<f64>>,
    every: Option<Spanned<String>>,
}

/// The Modbus read functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Function 3: read holding registers (16-bit, read/write).
    Holding,
    /// Function 4: read input registers (16-bit, read-only).
    Input,
    /// Function 1: read coils (bits, read/write).
    Coil,
    /// Function 2: read discrete inputs (bits, read-only).
    Discrete,
}

impl Function {
    /// Coils and discrete inputs are bits; the others 16-bit words.
    pub fn is_bit(self) -> bool {
        matches!(self, Function::Coil | Function::Discrete)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Function::Holding => "holding",
            Function::Input => "input",
            Function::Coil => "coil",
            Function::Discrete => "discrete",
        }
    }
}

/// How a register's words become a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// One bit (coils, discrete inputs); the value is `true`/`false`.
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl DataType {
    /// Registers (16-bit words) the value spans; 1 for a bit.
    pub fn words(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }
}

/// Word order (which register holds the most significant word) or byte
/// order (within each register). Modbus itself is big-endian in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Most significant first (the Modbus convention, "ABCD").
    Big,
    /// Least significant first ("CDAB" for words, "BADC" for bytes).
    Little,
}

/// One value read from a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    /// The value's name in the reading.
    pub name: String,
    pub function: Function,
    /// Protocol address (0-based, as sent on the wire).
    pub address: u16,
    pub data_type: DataType,
    pub word_order: Order,
    pub byte_order: Order,
    /// value = raw × scale + offset.
    pub scale: f64,
    pub offset: f64,
    /// How often it is read (its own `every`, else the device's).
    pub every: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModbusDevice {
    /// The unit (slave) id: 1–247 on a serial line, 0–255 over TCP.
    pub unit: u8,
    /// For logs, health and metrics (default `unit<N>`).
    pub name: String,
    pub bucket_id: String,
    pub data_source_id: String,
    /// The device's default poll interval.
    pub every: Duration,
    pub registers: Vec<Register>,
}

/// How the gateway reaches the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum ModbusTransport {
    /// Modbus RTU over a serial device (RS-485 adapter).
    Rtu {
        path: String,
        baud_rate: u32,
        data_bits: u8,
        parity: Parity,
        stop_bits: u8,
    },
    /// Modbus TCP to `host:port` (a PLC or a TCP–RTU gateway).
    Tcp { address: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModbusBus {
    /// For logs, health (`modbus:<name>`) and metrics (default: the path or
    /// address); unique among buses.
    pub name: String,
    pub transport: ModbusTransport,
    /// How long one request may wait for its answer.
    pub timeout: Duration,
    /// Further attempts after a request timed out or came back garbled.
    pub retries: u8,
    pub devices: Vec<ModbusDevice>,
}

impl ModbusBus {
    /// The bus without its devices: a change here reopens the bus; a change
    /// in the devices alone is applied to the running bus.
    pub fn line(&self) -> (&str, &ModbusTransport, Duration, u8) {
        (&self.name, &self.transport, self.timeout, self.retries)
    }
}

pub(crate) fn validate_all(
    raw: Vec<RawModbus>,
    ctx: &mut Ctx,
    buckets: &[Bucket],
) -> Vec<ModbusBus> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, b) in raw.into_iter().enumerate() {
        let key = format!("modbus[{i}]");
        let bus = validate_bus(b, &key, ctx, buckets);
        if !names.insert(bus.name.clone()) {
            ctx.error(
                None,
                &format!("{key}.name"),
                format!(
                    "`{key}.name` `{}` is used by another `[[modbus]]` bus (the name \
                     defaults to the path or address); give each bus its own `name`",
                    bus.name
                ),
            );
        }
        out.push(bus);
    }
    out
}

fn validate_bus(b: RawModbus, key: &str, ctx: &mut Ctx, buckets: &[Bucket]) -> ModbusBus {
    let serial_keys = b.baud_rate.is_some()
        || b.data_bits.is_some()
        || b.parity.is_some()
        || b.stop_bits.is_some();
    let transport = match (&b.path, &b.address) {
        (Some(p), None) => {
            let path = p.get_ref().trim().to_owned();
            if !path.starts_with('/') {
                ctx.error(
                    Some(p.span()),
                    &format!("{key}.path"),
                    format!(
                        "`{key}.path` must be an absolute device path, e.g. \
                         `/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0`; got `{path}`"
                    ),
                );
            }
            ModbusTransport::Rtu {
                path,
                baud_rate: ctx.int_in(
                    &format!("{key}.baud_rate"),
                    &b.baud_rate,
                    50..=4_000_000,
                    i64::from(DEFAULT_MODBUS_BAUD_RATE),
                ) as u32,
                data_bits: ctx.int_in(&format!("{key}.data_bits"), &b.data_bits, 7..=8, 8) as u8,
                parity: b.parity.unwrap_or(Parity::None),
                stop_bits: ctx.int_in(&format!("{key}.stop_bits"), &b.stop_bits, 1..=2, 1) as u8,
            }
        }
        (None, Some(a)) => {
            let address = a.get_ref().trim().to_owned();
            let port_ok = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                ctx.error(
                    Some(a.span()),
                    &format!("{key}.address"),
                    format!(
                        "`{key}.address` must be `host:port` of a Modbus TCP server, e.g. \
                         `192.168.1.10:502`; got `{address}`"
                    ),
                );
            }
            if serial_keys {
                ctx.error(
                    Some(a.span()),
                    &format!("{key}.address"),
                    format!(
                        "`{key}` is a Modbus TCP bus (`address`): `baud_rate`, `data_bits`, \
                         `parity` and `stop_bits` belong to a serial bus (`path`)"
                    ),
                );
            }
            ModbusTransport::Tcp { address }
        }
        (p, a) => {
            let span = p.as_ref().or(a.as_ref()).map(|s| s.span());
            ctx.error(
                span,
                &format!("{key}.path"),
                format!(
                    "`{key}` needs exactly one of `path` (a serial RS-485 bus, e.g. \
                     `path = \"/dev/ttyUSB0\"`) or `address` (Modbus TCP, e.g. \
                     `address = \"192.168.1.10:502\"`)"
                ),
            );
            ModbusTransport::Tcp {
                address: String::new(),
            }
        }
    };
    let default_name = match &transport {
        ModbusTransport::Rtu { path, .. } => path.clone(),
        ModbusTransport::Tcp { address } => address.clone(),
    };
    let name = match &b.name {
        Some(n) if n.get_ref().trim().is_empty() => {
            ctx.error(
                Some(n.span()),
                &format!("{key}.name"),
                format!("`{key}.name` must not be empty, e.g. `plant-room`"),
            );
            default_name
        }
        Some(n) => n.get_ref().trim().to_owned(),
        None => default_name,
    };
    let timeout = ctx.duration(
        &format!("{key}.timeout"),
        &b.timeout,
        DEFAULT_TIMEOUT,
        "500ms",
    );
    if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&timeout) {
        ctx.error(
            b.timeout.as_ref().map(|t| t.span()),
            &format!("{key}.timeout"),
            format!("`{key}.timeout` must be between `10ms` and `60s`, e.g. `500ms`"),
        );
    }
    let retries = ctx.int_in(
        &format!("{key}.retries"),
        &b.retries,
        0..=10,
        i64::from(DEFAULT_RETRIES),
    ) as u8;
    let bus_bucket = b
        .bucket
        .as_ref()
        .map(|raw| resolve_bucket(raw, key, ctx, buckets));
    let tcp = matches!(transport, ModbusTransport::Tcp { .. });
    if b.devices.is_empty() {
        ctx.error(
            b.path.as_ref().or(b.address.as_ref()).map(|s| s.span()),
            &format!("{key}.devices"),
            format!(
                "`{key}` has no devices: add a `[[modbus.devices]]` table with `unit`, \
                 `data_source` and its `[[modbus.devices.registers]]`"
            ),
        );
    }
    let mut units = HashSet::new();
    let devices = b
        .devices
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let key = format!("{key}.devices[{i}]");
            let dev = validate_device(d, &key, ctx, buckets, bus_bucket.as_deref(), tcp);
            if !units.insert(dev.unit) {
                ctx.error(
                    None,
                    &format!("{key}.unit"),
                    format!(
                        "`{key}.unit` {} is used by another device on this bus",
                        dev.unit
                    ),
                );
            }
            dev
        })
        .collect();
    ModbusBus {
        name,
        transport,
        timeout,
        retries,
        devices,
    }
}

fn validate_device(
    d: RawDevice,
    key: &str,
    ctx: &mut Ctx,
    buckets: &[Bucket],
    bus_bucket: Option<&str>,
    tcp: bool,
) -> ModbusDevice {
    let range = if tcp { 0..=255 } else { 1..=247 };
    let unit = ctx.int_in(&format!("{key}.unit"), &Some(d.unit.clone()), range, 1) as u8;
    let name = match &d.name {
        Some(n) if n.get_ref().trim().is_empty() => {
            ctx.error(
                Some(n.span()),
                &format!("{key}.name"),
                format!("`{key}.name` must not be empty, e.g. `energy-meter`"),
            );
            format!("unit{unit}")
        }
        Some(n) => n.get_ref().trim().to_owned(),
        None => format!("unit{unit}"),
    };
    let bucket_id = match (&d.bucket, bus_bucket) {
        (Some(raw), _) => resolve_bucket(raw, key, ctx, buckets),
        (None, Some(id)) => id.to_owned(),
        (None, None) => {
            ctx.error(
                Some(d.unit.span()),
                &format!("{key}.bucket"),
                format!(
                    "`{key}` needs a bucket: set `bucket` on the device or on its \
                     `[[modbus]]` bus, e.g. `bucket = \"barn\"`"
                ),
            );
            String::new()
        }
    };
    let data_source_id = d.data_source.get_ref().trim().to_ascii_lowercase();
    if !is_object_id(&data_source_id) {
        ctx.error(
            Some(d.data_source.span()),
            &format!("{key}.data_source"),
            format!(
                "`{key}.data_source` must be dakkio's 24-hex data source id, e.g. \
                 `507f1f77bcf86cd799439012`; got `{}`",
                d.data_source.get_ref()
            ),
        );
    }
    let every = interval(ctx, &format!("{key}.every"), &d.every, DEFAULT_EVERY);
    if d.registers.is_empty() {
        ctx.error(
            Some(d.unit.span()),
            &format!("{key}.registers"),
            format!(
                "`{key}` reads nothing: add `[[modbus.devices.registers]]` with `name`, \
                 `function` and `address`"
            ),
        );
    }
    let mut names = HashSet::new();
    let registers = d
        .registers
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = format!("{key}.registers[{i}]");
            if !names.insert(r.name.get_ref().trim().to_owned()) {
                ctx.error(
                    Some(r.name.span()),
                    &format!("{key}.name"),
                    format!(
                        "`{key}.name` `{}` is used by another register of this device",
                        r.name.get_ref()
                    ),
                );
            }
            validate_register(r, &key, ctx, every)
        })
        .collect();
    ModbusDevice {
        unit,
        name,
        bucket_id,
        data_source_id,
        every,
        registers,
    }
}

fn validate_register(r: RawRegister, key: &str, ctx: &mut Ctx, every: Duration) -> Register {
    let name = r.name.get_ref().trim().to_owned();
    if name.is_empty() {
        ctx.error(
            Some(r.name.span()),
            &format!("{key}.name"),
            format!("`{key}.name` must name the value, e.g. `voltage`"),
        );
    }
    let address = ctx.int_in(
        &format!("{key}.address"),
        &Some(r.address.clone()),
        0..=65535,
        0,
    );
    let default_type = if r.function.is_bit() {
        DataType::Bool
    } else {
        DataType::U16
    };
    let data_type = r.data_type.as_ref().map_or(default_type, |t| *t.get_ref());
    if let Some(t) = &r.data_type {
        let ok = (data_type == DataType::Bool) == r.function.is_bit();
        if !ok {
            ctx.error(
                Some(t.span()),
                &format!("{key}.type"),
                if r.function.is_bit() {
                    format!(
                        "`{key}.type` of a `{}` must be `bool` (or left out)",
                        r.function.as_str()
                    )
                } else {
                    format!(
                        "`{key}.type` of a `{}` register must be one of `u16`, `i16`, `u32`, \
                         `i32`, `f32`, `u64`, `i64`, `f64`; `bool` is for coils and discrete inputs",
                        r.function.as_str()
                    )
                },
            );
        }
    }
    let last = address + i64::from(data_type.words()) - 1;
    if last > 65535 {
        ctx.error(
            Some(r.address.span()),
            &format!("{key}.address"),
            format!(
                "`{key}.address` {address} with a {}-register value ends past 65535",
                data_type.words()
            ),
        );
    }
    let mut float = |k: &str, v: &Option<Spanned<f64>>, default: f64| match v {
        None => default,
        Some(s) if s.get_ref().is_finite() => *s.get_ref(),
        Some(s) => {
            ctx.error(
                Some(s.span()),
                &format!("{key}.{k}"),
                format!("`{key}.{k}` must be a finite number, e.g. `0.1`"),
            );
            default
        }
    };
    let scale = float("scale", &r.scale, 1.0);
    let offset = float("offset", &r.offset, 0.0);
    if r.function.is_bit() && (r.scale.is_some() || r.offset.is_some()) {
        ctx.error(
            r.scale.as_ref().or(r.offset.as_ref()).map(|s| s.span()),
            &format!("{key}.scale"),
            format!(
                "`{key}`: a `{}` is a bit; `scale` and `offset` apply to registers",
                r.function.as_str()
            ),
        );
    }
    let every = match &r.every {
        None => every,
        some => interval(ctx, &format!("{key}.every"), some, every),
    };
    Register {
        name,
        function: r.function,
        address: address as u16,
        data_type,
        word_order: r.word_order.unwrap_or(Order::Big),
        byte_order: r.byte_order.unwrap_or(Order::Big),
        scale,
        offset,
        every,
    }
}

/// A poll interval: at least 100 ms (a 9600-baud line carries about 40
/// small requests a second, shared by every device on it).
fn interval(
    ctx: &mut Ctx,
    key: &str,
    raw: &Option<Spanned<String>>,
    default: Duration,
) -> Duration {
    let every = ctx.duration(key, raw, default, "10s");
    if every < Duration::from_millis(100) {
        ctx.error(
            raw.as_ref().map(|r| r.span()),
            key,
            format!("`{key}` must be at least `100ms`, e.g. `10s`"),
        );
        return default;
    }
    every
}

#[cfg(test)]
#[path = "modbus_tests.rs"]
mod tests;
