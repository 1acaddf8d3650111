//! `[[modbus]]` validation: a full bus, defaults, and every refusal naming
//! its line and key.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::{parse, Environment, Problem};

struct NoEnv;
impl Environment for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn hostname(&self) -> Option<String> {
        Some("h".into())
    }
}

const HEAD: &str = "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\nname = \"barn\"\n\
                    [[buckets]]\nid = \"507f1f77bcf86cd799439099\"\nname = \"shed\"\n";

fn ok(body: &str) -> Vec<ModbusBus> {
    parse(&format!("{HEAD}{body}"), Path::new("g.toml"), &NoEnv)
        .map_err(|e| e.to_string())
        .unwrap()
        .modbus
}

fn err(body: &str) -> Vec<Problem> {
    parse(&format!("{HEAD}{body}"), Path::new("g.toml"), &NoEnv)
        .expect_err("should be refused")
        .problems
}

#[test]
fn full_bus() {
    let b = ok(r#"
[[modbus]]
path = "/dev/ttyUSB0"
name = "plant-room"
baud_rate = 19200
data_bits = 8
parity = "even"
stop_bits = 1
timeout = "300ms"
retries = 2
bucket = "barn"

[[modbus.devices]]
unit = 3
name = "meter"
data_source = "507F1F77BCF86CD799439012"
every = "5s"

[[modbus.devices.registers]]
name = "voltage"
function = "input"
address = 0
type = "f32"
word_order = "little"
byte_order = "big"
scale = 0.5
offset = -1

[[modbus.devices.registers]]
name = "relay"
function = "coil"
address = 7
every = "1s"

[[modbus.devices]]
unit = 4
bucket = "shed"
data_source = "507f1f77bcf86cd799439013"

[[modbus.devices.registers]]
name = "t"
function = "holding"
address = 100
"#);
    let b = &b[0];
    assert_eq!(b.name, "plant-room");
    assert_eq!(
        b.transport,
        ModbusTransport::Rtu {
            path: "/dev/ttyUSB0".into(),
            baud_rate: 19200,
            data_bits: 8,
            parity: Parity::Even,
            stop_bits: 1
        }
    );
    assert_eq!((b.timeout, b.retries), (Duration::from_millis(300), 2));
    let m = &b.devices[0];
    assert_eq!((m.unit, m.name.as_str()), (3, "meter"));
    assert_eq!(m.bucket_id, "507f1f77bcf86cd799439011");
    assert_eq!(m.data_source_id, "507f1f77bcf86cd799439012");
    assert_eq!(
        m.registers[0],
        Register {
            name: "voltage".into(),
            function: Function::Input,
            address: 0,
            data_type: DataType::F32,
            word_order: Order::Little,
            byte_order: Order::Big,
            scale: 0.5,
            offset: -1.0,
            every: Duration::from_secs(5),
        }
    );
    assert_eq!(m.registers[1].data_type, DataType::Bool);
    assert_eq!(m.registers[1].every, Duration::from_secs(1));
    let d = &b.devices[1];
    assert_eq!(d.name, "unit4");
    assert_eq!(d.bucket_id, "507f1f77bcf86cd799439099");
    assert_eq!(d.every, DEFAULT_EVERY);
    assert_eq!(d.registers[0].data_type, DataType::U16);
}

#[test]
fn tcp_bus() {
    let b = ok(r#"
[[modbus]]
address = "192.168.1.10:502"
bucket = "barn"
[[modbus.devices]]
unit = 255
data_source = "507f1f77bcf86cd799439012"
[[modbus.devices.registers]]
name = "t"
function = "holding"
address = 0
"#);
    assert_eq!(
        b[0].transport,
        ModbusTransport::Tcp {
            address: "192.168.1.10:502".into()
        }
    );
    assert_eq!(b[0].name, "192.168.1.10:502");
    assert_eq!(b[0].devices[0].unit, 255);
}

#[test]
fn problems_name_line_and_key() {
    let p = err(r#"
[[modbus]]
path = "ttyUSB0"
timeout = "5ms"
retries = 11

[[modbus.devices]]
unit = 0
data_source = "42"
every = "10ms"

[[modbus.devices.registers]]
name = "a"
function = "holding"
address = 65535
type = "u32"

[[modbus.devices.registers]]
name = "a"
function = "coil"
address = 1
type = "f32"
"#);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "modbus[0].path",
            "modbus[0].timeout",
            "modbus[0].retries",
            "modbus[0].devices[0].unit",
            "modbus[0].devices[0].bucket",
            "modbus[0].devices[0].data_source",
            "modbus[0].devices[0].every",
            "modbus[0].devices[0].registers[0].address",
            "modbus[0].devices[0].registers[1].name",
            "modbus[0].devices[0].registers[1].type",
        ],
        "{p:#?}"
    );
    assert_eq!(p[0].line, Some(9));
    assert_eq!(p[3].line, Some(14));
    assert!(p[3].message.contains("between 1 and 247"), "{}", p[3]);
    assert!(p[4].message.contains("needs a bucket"), "{}", p[4]);
    assert!(p[7].message.contains("ends past 65535"), "{}", p[7]);
    assert!(p[9].message.contains("must be `bool`"), "{}", p[9]);
}

#[test]
fn transport_and_shape_refusals() {
    let dev = "[[modbus.devices]]\nunit = 1\ndata_source = \"507f1f77bcf86cd799439012\"\n\
               [[modbus.devices.registers]]\nname = \"t\"\nfunction = \"holding\"\naddress = 0\n";
    let p = err(&format!("[[modbus]]\nbucket = \"barn\"\n{dev}"));
    assert!(p[0].message.contains("exactly one of `path`"), "{p:?}");
    let p = err(&format!(
        "[[modbus]]\naddress = \"plc\"\nbaud_rate = 9600\nbucket = \"barn\"\n{dev}"
    ));
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["modbus[0].address", "modbus[0].address"], "{p:?}");
    assert!(p[0].message.contains("`host:port`"), "{p:?}");
    assert!(p[1].message.contains("belong to a serial bus"), "{p:?}");
    let p = err("[[modbus]]\npath = \"/dev/ttyUSB0\"\nbucket = \"barn\"\n");
    assert_eq!(p[0].key, "modbus[0].devices", "{p:?}");
    let bus = format!("[[modbus]]\npath = \"/dev/ttyUSB0\"\nbucket = \"barn\"\n{dev}{dev}");
    let p = err(&bus);
    assert_eq!(p[0].key, "modbus[0].devices[1].unit", "{p:?}");
    let one = format!("[[modbus]]\npath = \"/dev/ttyUSB0\"\nbucket = \"barn\"\n{dev}");
    let p = err(&format!("{one}{one}"));
    assert_eq!(p[0].key, "modbus[1].name", "{p:?}");
    let p = err(&format!("{one}wordorder = \"big\"\n"));
    assert!(p[0].message.contains("did you mean `word_order`"), "{p:?}");
    let p = err(&format!("{one}function2 = 1\n")
        .replace("function = \"holding\"", "function = \"holdings\""));
    assert!(p[0].message.contains("did you mean `holding`"), "{p:?}");
}

/// The commented `[[modbus]]` block of the example, uncommented, is a
/// working bus.
#[test]
fn the_example_block_parses() {
    let ex = crate::config::EXAMPLE;
    let block = &ex[ex
        .find("# [[modbus]]")
        .expect("the example has a modbus block")..];
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
    assert_eq!(c.modbus.len(), 1);
    assert!(!c.modbus[0].devices.is_empty());
    assert!(c.modbus[0].devices[0].registers.len() >= 2);
}
