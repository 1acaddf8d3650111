//! Modbus polling against a real slave no one here wrote: pymodbus's server
//! on a socat pty pair (RTU) or on loopback (TCP), the real gateway binary,
//! and the dakkio stand-in. Every data type in every word and byte order,
//! scale and offset, coils and discrete inputs, several units on one bus, a
//! unit that stops answering and comes back, exception answers, a bus
//! unplugged and re-plugged; every polled value must reach the stand-in and
//! the ledger must balance.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::standin::{AcceptedPoint, Standin};

use crate::support::gateway::Gateway;
use crate::support::modbus::ModbusSlave;
use crate::support::pty::PtyPair;
use crate::support::EVENT_TIMEOUT;

const BUCKET: &str = "507f1f77bcf86cd799439011";
const KEY: &str = "dakkio_w_modbustestkey0000000000000000";

fn source(unit: u8) -> String {
    format!("507f1f77bcf86cd7994390{unit:02x}")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn standin(rt: &tokio::runtime::Runtime) -> Standin {
    rt.block_on(async {
        Standin::builder()
            .bucket(BUCKET)
            .write_key(BUCKET, KEY)
            .start()
            .await
            .unwrap()
    })
}

/// The gateway's config: the stand-in upstream and `buses`.
fn config(standin: &Standin, buses: &str) -> String {
    format!(
        "[store]\ncommit_max_delay = \"5ms\"\n\
         [[buckets]]\nid = \"{BUCKET}\"\nname = \"barn\"\nwrite_key = \"{KEY}\"\n\
         [uplink]\nurl = \"{}\"\nmax_batch_age = \"20ms\"\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\
         {buses}",
        standin.url()
    )
}

/// A `[[modbus]]` RTU bus on `path` (polled every 200 ms, short timeouts).
fn rtu_bus(path: &Path, devices: &str) -> String {
    format!(
        "[[modbus]]\npath = \"{}\"\nname = \"bus\"\nbucket = \"barn\"\ntimeout = \"200ms\"\nretries = 1\n{devices}",
        path.display()
    )
}

fn device(unit: u8, registers: &[String]) -> String {
    format!(
        "[[modbus.devices]]\nunit = {unit}\nname = \"unit{unit}\"\ndata_source = \"{}\"\nevery = \"200ms\"\n{}",
        source(unit),
        registers.concat()
    )
}

fn register(name: &str, function: &str, address: u16, extra: &str) -> String {
    format!(
        "[[modbus.devices.registers]]\nname = \"{name}\"\nfunction = \"{function}\"\naddress = {address}\n{extra}\n"
    )
}

/// Big-endian bytes → the words a device with these orders sends.
fn layout(bytes: &[u8], word_little: bool, byte_little: bool) -> Vec<u16> {
    let mut w: Vec<u16> = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    if word_little {
        w.reverse();
    }
    if byte_little {
        for x in &mut w {
            *x = x.swap_bytes();
        }
    }
    w
}

/// Unit 1 of the main test: every type in every order in holding
/// registers, one scaled input register, coils and discrete inputs. Returns
/// the register tables, the config lines and the expected values.
fn unit1() -> (Value, Vec<String>, BTreeMap<String, Value>) {
    let typed: Vec<(&str, Vec<u8>, f64)> = vec![
        ("u16", 0xBEEFu16.to_be_bytes().to_vec(), 48879.0),
        ("i16", (-1234i16).to_be_bytes().to_vec(), -1234.0),
        ("u32", 3_000_000_000u32.to_be_bytes().to_vec(), 3e9),
        ("i32", (-2_000_000_000i32).to_be_bytes().to_vec(), -2e9),
        ("f32", 230.5f32.to_be_bytes().to_vec(), 230.5),
        (
            "u64",
            ((1u64 << 40) + 7).to_be_bytes().to_vec(),
            ((1u64 << 40) + 7) as f64,
        ),
        (
            "i64",
            (-123_456_789_012i64).to_be_bytes().to_vec(),
            -123_456_789_012.0,
        ),
        ("f64", (-0.000123f64).to_be_bytes().to_vec(), -0.000123),
    ];
    let mut hr = Vec::new();
    let mut regs = Vec::new();
    let mut want = BTreeMap::new();
    for (ty, bytes, value) in typed {
        let word_orders: &[bool] = if bytes.len() == 2 {
            &[false]
        } else {
            &[false, true]
        };
        for &wl in word_orders {
            for bl in [false, true] {
                let name = format!(
                    "{ty}_{}{}",
                    if wl { "cd" } else { "ab" },
                    if bl { "_swapped" } else { "" }
                );
                let order = |l: bool| if l { "little" } else { "big" };
                regs.push(register(
                    &name,
                    "holding",
                    hr.len() as u16,
                    &format!(
                        "type = \"{ty}\"\nword_order = \"{}\"\nbyte_order = \"{}\"",
                        order(wl),
                        order(bl)
                    ),
                ));
                hr.extend(layout(&bytes, wl, bl));
                want.insert(name, json!(value));
            }
        }
    }
    regs.push(register("scaled", "input", 0, "scale = 0.1\noffset = -100"));
    want.insert("scaled".into(), json!(2305.0 * 0.1 - 100.0));
    regs.push(register(
        "signed_scaled",
        "input",
        1,
        "type = \"i16\"\nscale = 10\noffset = 0.5",
    ));
    want.insert("signed_scaled".into(), json!(-9.5));
    for (i, v) in [true, false, true].into_iter().enumerate() {
        regs.push(register(&format!("coil{i}"), "coil", i as u16, ""));
        want.insert(format!("coil{i}"), json!(v));
    }
    for (i, v) in [false, true].into_iter().enumerate() {
        regs.push(register(&format!("input{i}"), "discrete", i as u16, ""));
        want.insert(format!("input{i}"), json!(v));
    }
    let tables = json!({"hr": hr, "ir": [2305, 0xFFFF], "co": [1, 0, 1], "di": [0, 1]});
    (tables, regs, want)
}

fn points_of(standin: &Standin, unit: u8) -> Vec<AcceptedPoint> {
    standin
        .accepted_points(BUCKET)
        .into_iter()
        .filter(|p| p.data_source_id == source(unit))
        .collect()
}

/// Wait until the stand-in holds `n` points of `unit`.
fn wait_points(g: &Gateway, standin: &Standin, unit: u8, n: usize) -> Vec<AcceptedPoint> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let p = points_of(standin, unit);
        if p.len() >= n {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "unit {unit}: {} points delivered, expected {n}\n{}",
            p.len(),
            g.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Once polling has stopped: every reading stored was delivered once, and
/// the ledger balances.
fn assert_all_delivered(g: &Gateway, standin: &Standin) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let s = g.stats();
        let b = s.bucket(BUCKET).expect("the bucket has readings");
        assert!(b.ledger_balances(), "ledger: {b:?}");
        if b.queued == 0 {
            let points = standin.accepted_points(BUCKET);
            let ids: std::collections::HashSet<i64> =
                points.iter().filter_map(|p| p.reading_id()).collect();
            assert_eq!(ids.len() as i64, b.accepted, "accepted vs delivered: {b:?}");
            assert_eq!(b.delivered, b.accepted);
            assert_eq!((b.dropped, b.dead_lettered), (0, 0));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still queued: {b:?}\n{}",
            g.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET a path of the gateway's local API; the body.
fn get(g: &Gateway, path: &str) -> String {
    let addr = g.api_addr();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Every data type in every word and byte order, scale and offset, bits,
/// and three units on one bus: every delivered point carries exactly the
/// values the slave holds; a register the slave changes arrives changed.
#[test]
fn every_type_and_order_from_a_real_slave_reaches_dakkio() {
    let _x = crate::support::exclusive();
    let rt = rt();
    let standin = standin(&rt);
    let dir = tempfile::tempdir().unwrap();
    let mut pty = PtyPair::open(dir.path(), "rs485");
    let (t1, regs1, want1) = unit1();
    let spec = json!({"units": {
        "1": t1,
        "2": {"hr": [7, 8]},
        "3": {"ir": [65535]},
    }});
    let mut slave = ModbusSlave::rtu(&pty.host, &spec, dir.path());
    let devices = [
        device(1, &regs1),
        device(
            2,
            &[
                register("a", "holding", 0, ""),
                register("b", "holding", 1, ""),
            ],
        ),
        device(3, &[register("x", "input", 0, "type = \"i16\"")]),
    ]
    .concat();
    let g = Gateway::start(dir.path(), &config(&standin, &rtu_bus(&pty.dev, &devices)));
    g.wait_ready();

    let points = wait_points(&g, &standin, 1, 3);
    for p in &points {
        let got: BTreeMap<String, Value> = p.values.clone().into_iter().collect();
        assert_eq!(got, want1, "unit 1 point {p:?}");
    }
    let p2 = wait_points(&g, &standin, 2, 2);
    assert_eq!(p2[0].values["a"], json!(7.0));
    assert_eq!(p2[0].values["b"], json!(8.0));
    let p3 = wait_points(&g, &standin, 3, 2);
    assert_eq!(p3[0].values["x"], json!(-1.0));

    // A changed register arrives changed (values are read, not cached).
    slave.set(2, "hr", 1, &[4242]);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !points_of(&standin, 2)
        .iter()
        .any(|p| p.values["b"] == json!(4242.0))
    {
        assert!(Instant::now() < deadline, "{}", g.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Stop the slave (no more polls answer), then everything stored must
    // have been delivered.
    slave.stop();
    g.wait_for_log("modbus device not answering", EVENT_TIMEOUT)
        .expect("units go silent");
    assert_all_delivered(&g, &standin);
    let metrics = get(&g, "/metrics");
    assert!(
        metrics.contains("dakkio_modbus_requests_total{bus=\"bus\",result=\"ok\"}"),
        "{metrics}"
    );
    pty.unplug();
}

/// A unit that stops answering is degraded alone (logged once, the others
/// keep delivering) and comes back by itself; an exception answer is
/// counted by code and costs only its request's values.
#[test]
fn a_silent_unit_degrades_alone_and_exceptions_are_counted() {
    let _x = crate::support::exclusive();
    let rt = rt();
    let standin = standin(&rt);
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::open(dir.path(), "rs485");
    let spec = json!({"units": {"1": {"hr": [1, 2]}, "2": {"hr": [5]}}});
    let mut slave = ModbusSlave::rtu(&pty.host, &spec, dir.path());
    // Unit 2's `missing` is past the end of its table: exception 2 at
    // every poll, while `ok` (a request of its own: not contiguous) reads.
    let devices = [
        device(1, &[register("v", "holding", 0, "")]),
        device(
            2,
            &[
                register("ok", "holding", 0, ""),
                register("missing", "holding", 50, ""),
            ],
        ),
    ]
    .concat();
    let g = Gateway::start(dir.path(), &config(&standin, &rtu_bus(&pty.dev, &devices)));
    g.wait_ready();
    let p2 = wait_points(&g, &standin, 2, 2);
    assert_eq!(p2[0].values.get("ok"), Some(&json!(5.0)));
    assert!(p2[0].values.get("missing").is_none(), "{:?}", p2[0]);
    g.wait_for_log("modbus device answered with an exception", EVENT_TIMEOUT)
        .expect("the exception is logged");

    slave.mute(2);
    g.wait_for_log("modbus device not answering", EVENT_TIMEOUT)
        .expect("unit 2 reported silent");
    let health = get(&g, "/health");
    assert!(health.contains("modbus:bus/unit2"), "{health}");
    assert!(health.contains("not answering"), "{health}");
    // Unit 1 keeps delivering while unit 2 is silent.
    let before = points_of(&standin, 1).len();
    wait_points(&g, &standin, 1, before + 10);
    let n2 = points_of(&standin, 2).len();
    assert_eq!(
        g.log_text().matches("modbus device not answering").count(),
        1,
        "logged once per outage"
    );

    slave.unmute(2);
    g.wait_for_log("modbus device answering again", EVENT_TIMEOUT)
        .expect("unit 2 back");
    wait_points(&g, &standin, 2, n2 + 2);
    let health = get(&g, "/health");
    assert!(!health.contains("not answering"), "{health}");
    let metrics = get(&g, "/metrics");
    assert!(
        metrics.contains("dakkio_modbus_exceptions_total{bus=\"bus\",unit=\"2\",code=\"2\"}"),
        "{metrics}"
    );
    slave.mute(1);
    slave.mute(2);
    g.wait_for_nth_log("modbus device not answering", 3, EVENT_TIMEOUT)
        .expect("both silent");
    assert_all_delivered(&g, &standin);
}

/// The bus unplugged (socat and the slave gone) and re-plugged: one ERROR,
/// polls resume by themselves, nothing stored is lost.
#[test]
fn a_bus_unplugged_and_replugged_resumes() {
    let _x = crate::support::exclusive();
    let rt = rt();
    let standin = standin(&rt);
    let dir = tempfile::tempdir().unwrap();
    let mut pty = PtyPair::open(dir.path(), "rs485");
    let spec = json!({"units": {"1": {"ir": [10, 20]}}});
    let slave = ModbusSlave::rtu(&pty.host, &spec, dir.path());
    let devices = device(
        1,
        &[register("a", "input", 0, ""), register("b", "input", 1, "")],
    );
    let g = Gateway::start(dir.path(), &config(&standin, &rtu_bus(&pty.dev, &devices)));
    g.wait_ready();
    wait_points(&g, &standin, 1, 3);

    slave.stop();
    pty.unplug();
    g.wait_for_log("modbus bus lost", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    let n = points_of(&standin, 1).len();
    pty.plug();
    let _slave = ModbusSlave::rtu(&pty.host, &spec, dir.path());
    g.wait_for_log("modbus bus back", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    let p = wait_points(&g, &standin, 1, n + 3);
    assert_eq!(p.last().unwrap().values["b"], json!(20.0));
    drop(_slave);
    g.wait_for_log("modbus device not answering", EVENT_TIMEOUT)
        .expect("the unit goes silent");
    assert_all_delivered(&g, &standin);
}

/// Modbus TCP (tokio-modbus gives it with the same client): a PLC on
/// loopback.
#[test]
fn modbus_tcp_to_a_local_server() {
    let _x = crate::support::exclusive();
    let rt = rt();
    let standin = standin(&rt);
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::mosquitto::free_port();
    let spec = json!({"units": {"1": {"hr": layout(&21.25f32.to_be_bytes(), true, false)}}});
    let slave = ModbusSlave::tcp(port, &spec, dir.path());
    let bus = format!(
        "[[modbus]]\naddress = \"127.0.0.1:{port}\"\nname = \"plc\"\nbucket = \"barn\"\ntimeout = \"200ms\"\n{}",
        device(1, &[register("t", "holding", 0, "type = \"f32\"\nword_order = \"little\"")])
    );
    let g = Gateway::start(dir.path(), &config(&standin, &bus));
    g.wait_ready();
    let p = wait_points(&g, &standin, 1, 3);
    assert!(p.iter().all(|p| p.values["t"] == json!(21.25)), "{p:?}");
    slave.stop();
    g.wait_for_log("modbus bus lost", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    assert_all_delivered(&g, &standin);
}

/// Live reload: a changed device is handed to the running bus (the
/// connection stays open, the other device keeps polling); a changed line
/// setting restarts the bus alone.
#[test]
fn a_changed_device_restarts_only_itself() {
    let _x = crate::support::exclusive();
    let rt = rt();
    let standin = standin(&rt);
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::open(dir.path(), "rs485");
    let spec = json!({"units": {"1": {"hr": [11, 12]}, "2": {"hr": [21, 22]}}});
    let _slave = ModbusSlave::rtu(&pty.host, &spec, dir.path());
    let devices = [
        device(1, &[register("v", "holding", 0, "")]),
        device(2, &[register("v", "holding", 0, "")]),
    ]
    .concat();
    let text = config(&standin, &rtu_bus(&pty.dev, &devices));
    let g = Gateway::start(dir.path(), &text);
    g.wait_ready();
    wait_points(&g, &standin, 2, 2);
    assert_eq!(g.log_text().matches("modbus bus open").count(), 1);

    // Unit 2 now reads address 1.
    let at = text.find("unit = 2").unwrap();
    let changed = format!(
        "{}{}",
        &text[..at],
        text[at..].replacen("address = 0", "address = 1", 1)
    );
    std::fs::write(&g.config_path, changed).unwrap();
    let line = g
        .wait_for_log("configuration reloaded", EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    assert!(line.contains("modbus:bus"), "{line}");
    g.wait_for_log("modbus devices updated", EVENT_TIMEOUT)
        .expect("the bus got its new devices");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !points_of(&standin, 2)
        .iter()
        .any(|p| p.values["v"] == json!(22.0))
    {
        assert!(Instant::now() < deadline, "{}", g.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Unit 1 went on from where it was: still address 0.
    let n1 = points_of(&standin, 1).len();
    let p1 = wait_points(&g, &standin, 1, n1 + 2);
    assert!(p1.iter().all(|p| p.values["v"] == json!(11.0)));
    assert_eq!(
        g.log_text().matches("modbus bus open").count(),
        1,
        "the bus was not reopened"
    );
}
