//! Real devices' payloads through a real mosquitto and the gateway binary:
//! each preset with payloads from its ecosystem's public documentation
//! (the page is cited beside each), retained messages over restarts,
//! overlapping routes, a multi-line payload with one bad line, state-only
//! payloads, arrays, naive local times with a zone, and two gateways
//! sharing one broker's traffic (`mqtt.shared_group`).
//!
//! Every test checks the ledger's side too: a message is a stored reading,
//! a reject or a counted skip (`mqtt:skipped:*` counters), never nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::gateway::Gateway;
use crate::support::mosquitto::{self, Mosquitto};
use crate::support::EVENT_TIMEOUT;

const B: &str = "507f1f77bcf86cd799439011";

/// Data source id number `n`.
fn src(n: u8) -> String {
    format!("507f1f77bcf86cd7994390{n:02x}")
}

fn config(port: u16, client_id: &str, mqtt_extra: &str, routes: &str) -> String {
    format!(
        r#"
[[buckets]]
id = "{B}"

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "{client_id}"
keepalive = "5s"
reconnect_max_delay = "1s"
{mqtt_extra}
{routes}
"#
    )
}

fn start(dir: &Path, broker: &Mosquitto, id: &str, routes: &str, env: &[(&str, &str)]) -> Gateway {
    start_with(dir, broker, id, "", routes, env)
}

fn start_with(
    dir: &Path,
    broker: &Mosquitto,
    id: &str,
    mqtt_extra: &str,
    routes: &str,
    env: &[(&str, &str)],
) -> Gateway {
    let g = Gateway::start_with_env(dir, &config(broker.port, id, mqtt_extra, routes), env);
    g.wait_ready();
    wait_subscribed(&g);
    g
}

fn wait_subscribed(g: &Gateway) {
    if g.wait_for_log("mqtt subscriptions active", EVENT_TIMEOUT)
        .is_none()
    {
        panic!("the gateway did not subscribe:\n{}", g.log_text());
    }
}

/// Publish one message at QoS 1 with `mosquitto_pub` (which can set the
/// retain flag); returns once the broker has it.
fn publish(port: u16, topic: &str, payload: &str, retain: bool) {
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload]);
    if retain {
        c.arg("-r");
    }
    let out = c
        .output()
        .expect("mosquitto_pub (package mosquitto-clients) is needed by these tests");
    assert!(out.status.success(), "mosquitto_pub: {out:?}");
}

#[derive(Debug, Clone)]
struct Row {
    source: String,
    ts: i64,
    vals: serde_json::Value,
    meta: serde_json::Value,
}

fn rows(db: &Path) -> Vec<Row> {
    if !db.exists() {
        return Vec::new();
    }
    let c = dakkio_gateway::store::inspect(db).unwrap();
    let mut st = c
        .prepare(
            "SELECT s.source_id, r.ts, r.vals, r.meta FROM readings r \
             JOIN sources s ON s.id = r.source ORDER BY r.seq",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok(Row {
            source: r.get(0)?,
            ts: r.get(1)?,
            vals: serde_json::from_str(&r.get::<_, String>(2)?).unwrap(),
            meta: r
                .get::<_, Option<String>>(3)?
                .map_or(serde_json::Value::Null, |m| {
                    serde_json::from_str(&m).unwrap()
                }),
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap_or_default()
}

fn rows_of(db: &Path, source: &str) -> Vec<Row> {
    rows(db)
        .into_iter()
        .filter(|r| r.source == source)
        .collect()
}

/// (origin, reason, raw) of every reject.
fn rejects(db: &Path) -> Vec<(String, String, String)> {
    let c = dakkio_gateway::store::inspect(db).unwrap();
    let mut st = c
        .prepare("SELECT origin, reason, raw FROM rejects ORDER BY id")
        .unwrap();
    st.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            String::from_utf8_lossy(&r.get::<_, Vec<u8>>(2)?).into_owned(),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap_or_default()
}

/// The ledger's MQTT counters (`mqtt:skipped:retained` …).
fn counters(db: &Path) -> BTreeMap<String, i64> {
    let c = dakkio_gateway::store::inspect(db).unwrap();
    let mut st = c
        .prepare("SELECT name, value FROM ledger WHERE bucket = 0 AND name LIKE 'mqtt:%'")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

fn wait_until<T>(what: &str, g: &Gateway, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", g.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn num(r: &Row, k: &str) -> f64 {
    r.vals[k]
        .as_f64()
        .unwrap_or_else(|| panic!("`{k}` in {:?}", r.vals))
}

/// 2024-01-15T10:30:00Z in ms.
const T0: i64 = 1_705_314_600_000;

#[test]
fn presets_read_each_ecosystems_documented_payloads() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
[[mqtt.routes]]
preset = "zigbee2mqtt"
bucket = "{B}"
[mqtt.routes.data_sources]
"kitchen/sensor" = "{s1}"
"hall/button" = "{s2}"
"hall/motion" = "{s3}"
"living/bulb" = "{s4}"

[[mqtt.routes]]
preset = "tasmota"
bucket = "{B}"
data_source = "{s5}"

# Home Assistant before ESPHome: ESPHome's `+/+/+/state` covers it.
[[mqtt.routes]]
preset = "homeassistant"
bucket = "{B}"
data_source = "{s6}"

[[mqtt.routes]]
preset = "esphome"
bucket = "{B}"
data_source = "{s7}"

[[mqtt.routes]]
preset = "shelly_gen2"
bucket = "{B}"
data_source = "{s8}"

[[mqtt.routes]]
preset = "ttn_v3"
bucket = "{B}"
data_source = "{s9}"

[[mqtt.routes]]
preset = "chirpstack_v4"
bucket = "{B}"
data_source = "{s10}"

[[mqtt.routes]]
preset = "owntracks"
topic = "owntracks/{{user}}/{{device}}/event"
bucket = "{B}"
data_source = "{s11}"

[[mqtt.routes]]
preset = "telegraf"
bucket = "{B}"
data_source = "{s12}"
"#,
        s1 = src(1),
        s2 = src(2),
        s3 = src(3),
        s4 = src(4),
        s5 = src(5),
        s6 = src(6),
        s7 = src(7),
        s8 = src(8),
        s9 = src(9),
        s10 = src(10),
        s11 = src(11),
        s12 = src(12),
    );
    // Tasmota's `Time` is local time without an offset: the gateway's zone
    // (a POSIX rule, so no tz database is needed) is Central European.
    let g = start(
        dir.path(),
        &broker,
        "presets",
        &routes,
        &[("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")],
    );
    let p = broker.port;

    // https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html
    // ("Some examples"); friendly names with `/` as that page suggests.
    publish(
        p,
        "zigbee2mqtt/kitchen/sensor",
        r#"{"temperature": 27.34, "humidity": 44.72}"#,
        false,
    );
    publish(
        p,
        "zigbee2mqtt/hall/button",
        r#"{"action": "single"}"#,
        false,
    );
    publish(
        p,
        "zigbee2mqtt/hall/motion",
        r#"{"occupancy": true}"#,
        false,
    );
    publish(
        p,
        "zigbee2mqtt/living/bulb",
        r#"{"state": "ON", "brightness": 215, "color_temp": 325}"#,
        false,
    );
    // Same page: availability and bridge topics are not readings.
    publish(
        p,
        "zigbee2mqtt/kitchen/sensor/availability",
        r#"{"state":"online"}"#,
        false,
    );
    publish(
        p,
        "zigbee2mqtt/bridge/state",
        r#"{"state":"online"}"#,
        false,
    );

    // https://tasmota.github.io/docs/MQTT/ and the AM2301 sensor page: a
    // `tele/%topic%/SENSOR` message; `tele/%topic%/LWT` says Online.
    publish(
        p,
        "tele/tasmota_8E5B6C/SENSOR",
        r#"{"Time":"2024-01-15T11:30:00","AM2301":{"Temperature":21.6,"Humidity":53.4,"DewPoint":11.7},"TempUnit":"C"}"#,
        false,
    );
    publish(p, "tele/tasmota_8E5B6C/LWT", "Online", false);

    // https://www.home-assistant.io/integrations/mqtt_statestream/ : the
    // state of each entity on `base_topic/domain/entity/state`.
    publish(
        p,
        "homeassistant/sensor/outside_temperature/state",
        "-3.5",
        false,
    );
    publish(
        p,
        "homeassistant/binary_sensor/front_door/state",
        "off",
        false,
    );

    // https://esphome.io/components/mqtt.html : `<node>/<component>/<name>/state`.
    publish(p, "livingroom/sensor/temperature/state", "21.5", false);
    publish(p, "livingroom/binary_sensor/window/state", "ON", false);

    // https://shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Switch
    // ("Status"): the documented properties of a switch's status object,
    // published on `<id>/status/switch:0`
    // (https://shelly-api-docs.shelly.cloud/gen2/General/RPCChannels#mqtt).
    publish(
        p,
        "shellyplus1pm-a8032ab12345/status/switch:0",
        r#"{"id":0,"source":"timer","output":false,"apower":8.9,"voltage":237.5,"current":0.039,"aenergy":{"total":6.532,"by_minute":[45.199,47.141,88.397],"minute_ts":1654511972},"temperature":{"tC":23.5,"tF":74.4}}"#,
        false,
    );

    // https://www.thethingsindustries.com/docs/integrations/data-formats/
    // ("Uplink Messages"), trimmed of fields marked optional; the
    // decoded payload is what a payload formatter returns.
    publish(
        p,
        "v3/app1@ttn/devices/dev1/up",
        r#"{"end_device_ids":{"device_id":"dev1","application_ids":{"application_id":"app1"},"dev_eui":"0004A30B001C0530","join_eui":"800000000000000C","dev_addr":"00BCB929"},"correlation_ids":["as:up:01..."],"received_at":"2024-01-15T10:30:00.123Z","uplink_message":{"session_key_id":"AXBSH1Pk6Z0G166...","f_port":15,"f_cnt":1,"frm_payload":"VGVtcGVyYXR1cmUgPSAyMS4w","decoded_payload":{"temperature":21.0,"bytes":[84,101]},"rx_metadata":[{"gateway_ids":{"gateway_id":"gtw1","eui":"9C5C8E00001A05C4"},"time":"2024-01-15T10:30:00.100Z","timestamp":2463457000,"rssi":-35,"channel_rssi":-35,"snr":5.2,"uplink_token":"ChIKEA...","channel_index":6}],"settings":{"data_rate":{"lora":{"bandwidth":125000,"spreading_factor":7}},"coding_rate":"4/5","frequency":"868500000","timestamp":2463457000,"time":"2024-01-15T10:30:00.100Z"},"received_at":"2024-01-15T10:30:00.110Z","consumed_airtime":"0.056576s","network_ids":{"net_id":"000013","tenant_id":"ttn","cluster_id":"eu1"}}}"#,
        false,
    );

    // https://www.chirpstack.io/docs/chirpstack/integrations/events.html
    // (`up` event, JSON), with the codec's `object`.
    publish(
        p,
        "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/up",
        r#"{"deduplicationId":"3ac7e3c4-4401-4b8d-9386-a5c902f9202d","time":"2024-01-15T10:30:00+00:00","deviceInfo":{"tenantId":"52f14cd4-c6f1-4fbd-8f87-4025e1d49242","tenantName":"ChirpStack","applicationId":"17c82e96-be03-4f38-aef3-f83d48582d97","applicationName":"Test application","deviceProfileId":"14855bf7-d10d-4aee-b618-ebfcb64dc7ad","deviceProfileName":"Test device-profile","deviceName":"Test device","devEui":"0101010101010101","tags":{}},"devAddr":"00189440","dr":1,"fPort":1,"data":"qg==","rxInfo":[{"gatewayId":"0016c001f153a14c","uplinkId":4217106255,"rssi":-36,"snr":10.5,"context":"E3OWOQ==","metadata":{"region_name":"eu868","region_common_name":"EU868"}}],"txInfo":{"frequency":868100000,"modulation":{"lora":{"bandwidth":125000,"spreadingFactor":7,"codeRate":"CR_4_5"}}},"object":{"temperature":22.5,"humidity":40}}"#,
        false,
    );

    // https://owntracks.org/booklet/features/waypoints/ : the transition
    // published when entering a region, verbatim.
    publish(
        p,
        "owntracks/jane/phone/event",
        r#"{"_type":"transition","desc":"My favorite coffee shop (Delaville)","event":"enter","lat":48.87069,"lon":2.34916,"rid":"f7676c","tid":"j1","tst":1707057574,"wtst":1610104395}"#,
        false,
    );

    // https://docs.influxdata.com/influxdb/v1/write_protocols/line_protocol_tutorial/
    // (the example point) and Telegraf's MQTT output topic layout
    // `telegraf/<host>/<plugin>`: several lines in one message.
    publish(
        p,
        "telegraf/host1/weather",
        "weather,location=us-midwest temperature=82 1465839830100400200\nweather,location=us-east temperature=75 1465839830100400200",
        false,
    );

    let db = g.db_path();
    let all = wait_until("every preset's readings", &g, || {
        let r = rows(&db);
        (r.len() >= 15).then_some(r)
    });
    let one = |n: u8| -> Row {
        let r: Vec<&Row> = all.iter().filter(|r| r.source == src(n)).collect();
        assert_eq!(r.len(), 1, "source {n}: {all:#?}");
        r[0].clone()
    };

    // Zigbee2MQTT: values, a text action, a state and a boolean.
    let z = one(1);
    assert_eq!(
        (num(&z, "temperature"), num(&z, "humidity")),
        (27.34, 44.72)
    );
    assert_eq!(one(2).vals["action"], "single");
    assert_eq!(num(&one(3), "occupancy"), 1.0);
    let bulb = one(4);
    assert_eq!(
        (num(&bulb, "state"), num(&bulb, "brightness")),
        (1.0, 215.0)
    );

    // Tasmota: 11:30 local (CET, UTC+1) is 10:30Z; the unit is not a value.
    let t = one(5);
    assert_eq!(t.ts, T0);
    assert_eq!(num(&t, "AM2301.Temperature"), 21.6);
    assert!(t.vals.get("TempUnit").is_none() && t.vals.get("Time").is_none());

    // Home Assistant and ESPHome: bare values and states, named by entity.
    let ha: Vec<Row> = rows_of(&db, &src(6));
    assert_eq!(ha.len(), 2);
    assert_eq!(num(&ha[0], "outside_temperature"), -3.5);
    assert_eq!(ha[0].meta["domain"], "sensor");
    assert_eq!(num(&ha[1], "front_door"), 0.0);
    let esp: Vec<Row> = rows_of(&db, &src(7));
    assert_eq!(esp.len(), 2);
    assert_eq!(num(&esp[0], "temperature"), 21.5);
    assert_eq!(num(&esp[1], "window"), 1.0);

    // Shelly: the array of per-minute energy is ignored (counted), the
    // output state is 0, the component is metadata.
    let sh = one(8);
    assert_eq!(num(&sh, "apower"), 8.9);
    assert_eq!(num(&sh, "aenergy.total"), 6.532);
    assert_eq!(num(&sh, "output"), 0.0);
    assert_eq!(num(&sh, "temperature.tC"), 23.5);
    assert!(sh.vals.get("aenergy.minute_ts").is_none() && sh.vals.get("id").is_none());
    assert!(!sh
        .vals
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.contains("by_minute")));
    assert_eq!(sh.meta["component"], "switch:0");

    // TTN: values from the decoded payload, time from `received_at`, radio
    // metadata from the first gateway of `rx_metadata`.
    let ttn = one(9);
    assert_eq!(ttn.ts, T0 + 123);
    assert_eq!(num(&ttn, "temperature"), 21.0);
    assert_eq!(ttn.vals.as_object().unwrap().len(), 1, "{:?}", ttn.vals);
    assert_eq!(ttn.meta["devEui"], "0004A30B001C0530");
    assert_eq!(ttn.meta["rssi"], -35);
    assert_eq!(ttn.meta["fPort"], 15);

    // ChirpStack: `object`, `time`, device info and radio metadata.
    let cs = one(10);
    assert_eq!(cs.ts, T0);
    assert_eq!(
        (num(&cs, "temperature"), num(&cs, "humidity")),
        (22.5, 40.0)
    );
    assert_eq!(cs.meta["devEui"], "0101010101010101");
    assert_eq!(cs.meta["rssi"], -36);
    assert_eq!(cs.meta["snr"], 10.5);

    // OwnTracks: `tst` is the time, text goes to metadata.
    let ot = one(11);
    assert_eq!(ot.ts, 1_707_057_574_000);
    assert_eq!((num(&ot, "lat"), num(&ot, "lon")), (48.87069, 2.34916));
    assert_eq!(ot.meta["event"], "enter");
    assert_eq!(ot.meta["_type"], "transition");
    assert_eq!(ot.meta["user"], "jane");

    // Telegraf: two lines, two readings, the line's own time.
    let tg = rows_of(&db, &src(12));
    assert_eq!(tg.len(), 2);
    assert_eq!(num(&tg[0], "temperature"), 82.0);
    assert_eq!(tg[0].ts, 1_465_839_830_100);
    assert_eq!(tg[1].meta["location"], "us-east");
    assert_eq!(tg[0].meta["host"], "host1");

    // The rest: three skipped topics, one ignored array per payload that had
    // one (Shelly, TTN's decoded bytes; TTN's rx_metadata is outside the
    // values), nothing rejected.
    let c = wait_until("the skips to be counted", &g, || {
        let c = counters(&db);
        (c.get("mqtt:skipped:skip_topic") == Some(&3)).then_some(c)
    });
    assert_eq!(c.get("mqtt:ignored:array"), Some(&2), "{c:?}");
    assert_eq!(rejects(&db), Vec::new());
}

#[test]
fn retained_messages_are_skipped_over_two_restarts_unless_stored() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
[[mqtt.routes]]
topic = "state/{{device}}"
bucket = "{B}"
data_source = "{s1}"

[[mqtt.routes]]
topic = "keep/{{device}}"
bucket = "{B}"
data_source = "{s2}"
retained = "store"
"#,
        s1 = src(1),
        s2 = src(2)
    );
    // Retained before the gateway ever subscribed (Home Assistant's
    // statestream retains everything).
    publish(broker.port, "state/door", "on", true);
    publish(broker.port, "keep/door", "on", true);
    let mut g = start(dir.path(), &broker, "retained", &routes, &[]);
    let db = g.db_path();
    for start in 1..=3 {
        wait_until("the retained message to be counted", &g, || {
            (counters(&db).get("mqtt:skipped:retained") == Some(&start)).then_some(())
        });
        wait_until("the stored retained message", &g, || {
            (rows_of(&db, &src(2)).len() == start as usize).then_some(())
        });
        if start < 3 {
            g.terminate();
            g.restart();
            g.wait_ready();
            wait_subscribed(&g);
        }
    }
    assert_eq!(
        rows_of(&db, &src(1)).len(),
        0,
        "a retained message was stored"
    );
    // A live message (the broker clears the retain flag for subscribers
    // already there) is stored, once.
    publish(broker.port, "state/door", "off", true);
    let r = wait_until("the live message", &g, || {
        let r = rows_of(&db, &src(1));
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(num(&r[0], "value"), 0.0);
    assert_eq!(counters(&db).get("mqtt:skipped:retained"), Some(&3));
    assert_eq!(rejects(&db), Vec::new());
    // `queue stats` shows what was counted and not stored.
    let out = Command::new(crate::support::binary())
        .args(["queue", "stats", "--config"])
        .arg(&g.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mqtt      counted, not stored: skipped:retained=3"),
        "{text}"
    );
}

#[test]
fn overlapping_routes_store_each_message_once() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
[[mqtt.routes]]
topic = "o/+/temp"
bucket = "{B}"
data_source = "{s1}"

[[mqtt.routes]]
topic = "o/#"
bucket = "{B}"
data_source = "{s2}"

[[mqtt.routes]]
topic = "p/+/c"
bucket = "{B}"
data_source = "{s3}"
retained = "store"

[[mqtt.routes]]
topic = "p/b/+"
bucket = "{B}"
data_source = "{s4}"
"#,
        s1 = src(1),
        s2 = src(2),
        s3 = src(3),
        s4 = src(4)
    );
    // Retained before the start: the broker sends it once per matching
    // subscription (`p/+/c` and `p/b/+`), the gateway stores it once.
    publish(broker.port, "p/b/c", "0", true);
    let g = start(dir.path(), &broker, "overlap", &routes, &[]);
    let db = g.db_path();
    // Covered (`o/+/temp` inside `o/#`): one subscription, the first route.
    publish(broker.port, "o/a/temp", "1", false);
    publish(broker.port, "o/b/x", "2", false);
    // Partial overlap, live: one copy from the broker, one reading.
    publish(broker.port, "p/b/c", "3", false);
    publish(broker.port, "p/x/c", "4", false);
    publish(broker.port, "p/b/x", "5", false);
    // The same payload again: a new message, stored.
    publish(broker.port, "p/b/c", "3", false);
    // A marker published last: when it is stored, everything before it is.
    publish(broker.port, "o/end/x", "99", false);
    wait_until("the marker", &g, || {
        rows(&db)
            .iter()
            .any(|r| r.vals["value"] == 99.0)
            .then_some(())
    });
    let got: Vec<(String, f64)> = rows(&db)
        .iter()
        .map(|r| (r.source.clone(), num(r, "value")))
        .collect();
    assert_eq!(
        got,
        vec![
            (src(3), 0.0),
            (src(1), 1.0),
            (src(2), 2.0),
            (src(3), 3.0),
            (src(3), 4.0),
            (src(4), 5.0),
            (src(3), 3.0),
            (src(2), 99.0),
        ]
    );
    assert_eq!(counters(&db).get("mqtt:skipped:duplicate"), Some(&1));
}

#[test]
fn a_multi_line_payload_stores_good_lines_and_rejects_bad_ones_one_by_one() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
[[mqtt.routes]]
topic = "telegraf/{{host}}/{{plugin}}"
bucket = "{B}"
data_source = "{s1}"
format = "influx"
"#,
        s1 = src(1)
    );
    let mut g = start(dir.path(), &broker, "multiline", &routes, &[]);
    let db = g.db_path();
    let payload = "cpu,host=a usage_idle=98.1 1705314600000000000\n\
                   mem,host=a used_percent=41.5 1705314600000000000\n\
                   syslog,host=a message=\"only a string\" 1705314600000000000\n\
                   disk,host=a free=12i 1705314600000000000\n\
                   net,host=a bytes_recv=1000i 1705314600000000000\n";
    publish(broker.port, "telegraf/a/all", payload, false);
    let r = wait_until("the four good lines", &g, || {
        let r = rows(&db);
        (r.len() >= 4).then_some(r)
    });
    assert_eq!(r.len(), 4);
    assert!(r.iter().all(|r| r.ts == T0));
    let rj = wait_until("the bad line's reject", &g, || {
        let rj = rejects(&db);
        (!rj.is_empty()).then_some(rj)
    });
    assert_eq!(
        rj,
        vec![(
            "mqtt:telegraf/a/all".to_owned(),
            "no_numeric_value".to_owned(),
            "syslog,host=a message=\"only a string\" 1705314600000000000".to_owned()
        )]
    );
    // Acknowledged once committed: a restart on the same session gets
    // nothing again.
    g.terminate();
    g.restart();
    g.wait_ready();
    wait_subscribed(&g);
    publish(broker.port, "telegraf/a/end", "end v=1", false);
    wait_until("the marker", &g, || (rows(&db).len() == 5).then_some(()));
    assert_eq!(rejects(&db).len(), 1);
}

#[test]
fn state_only_payloads_and_arrays_never_reject_a_usable_message() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
[[mqtt.routes]]
topic = "flat/{{device}}"
bucket = "{B}"
data_source = "{s2}"
arrays = "flatten"

[[mqtt.routes]]
topic = "door/{{device}}"
bucket = "{B}"
data_source = "{s3}"
text = "metadata"
states = {{ LOCKED = 1, UNLOCKED = 0 }}

[[mqtt.routes]]
topic = "any/{{device}}"
bucket = "{B}"
data_source = "{s1}"
"#,
        s1 = src(1),
        s2 = src(2),
        s3 = src(3)
    );
    let g = start(dir.path(), &broker, "states", &routes, &[]);
    let db = g.db_path();
    let p = broker.port;
    publish(p, "any/a", "on", false);
    publish(p, "any/b", "OFF", false);
    publish(p, "any/c", r#"{"contact":false,"battery":91}"#, false);
    publish(
        p,
        "any/d",
        r#"{"t":20.5,"rx":[{"rssi":-40}],"by_minute":[1,2]}"#,
        false,
    );
    publish(p, "any/e", "[1,2,3]", false);
    publish(p, "any/f", "hello world", false);
    publish(
        p,
        "flat/a",
        r#"{"by_minute":[1,2],"rx":[{"rssi":-40}]}"#,
        false,
    );
    publish(p, "door/a", r#"{"lock":"LOCKED","reason":"manual"}"#, false);
    publish(p, "door/b", r#"{"reason":"manual"}"#, false);
    publish(p, "any/end", "99", false);
    wait_until("the marker", &g, || {
        rows(&db)
            .iter()
            .any(|r| r.vals["value"] == 99.0)
            .then_some(())
    });
    let any = rows_of(&db, &src(1));
    assert_eq!(num(&any[0], "value"), 1.0);
    assert_eq!(num(&any[1], "value"), 0.0);
    assert_eq!(
        (num(&any[2], "contact"), num(&any[2], "battery")),
        (0.0, 91.0)
    );
    assert_eq!(any[3].vals, serde_json::json!({"t": 20.5}));
    let flat = rows_of(&db, &src(2));
    assert_eq!(
        flat[0].vals,
        serde_json::json!({"by_minute.0": 1.0, "by_minute.1": 2.0, "rx.0.rssi": -40.0})
    );
    let door = rows_of(&db, &src(3));
    assert_eq!(door.len(), 1);
    assert_eq!(num(&door[0], "lock"), 1.0);
    assert_eq!(door[0].meta["reason"], "manual");
    // Nothing usable: a lone array, text kept as metadata only, and free
    // text that is not a state (still line protocol's error).
    let reasons: BTreeSet<(String, String)> =
        rejects(&db).into_iter().map(|(o, r, _)| (o, r)).collect();
    assert_eq!(
        reasons,
        [
            ("mqtt:any/e", "no_numeric_value"),
            ("mqtt:any/f", "invalid_line_protocol"),
            ("mqtt:door/b", "no_numeric_value"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
    );
    // Ignored arrays are counted: any/d's two (any/e is counted as its
    // reject).
    let c = wait_until("the ignored arrays", &g, || {
        let c = counters(&db);
        c.contains_key("mqtt:ignored:array").then_some(c)
    });
    assert_eq!(c["mqtt:ignored:array"], 2, "{c:?}");
}

#[test]
fn naive_local_times_are_read_in_the_configured_zone() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
[[mqtt.routes]]
topic = "local/{{device}}"
bucket = "{B}"
data_source = "{s1}"
time = "Time"
time_format = "iso8601"
time_zone = "local"

[[mqtt.routes]]
topic = "fixed/{{device}}"
bucket = "{B}"
data_source = "{s2}"
time = "at"
time_zone = "-05:00"

[[mqtt.routes]]
topic = "utc/{{device}}"
bucket = "{B}"
data_source = "{s3}"
time = "at"
"#,
        s1 = src(1),
        s2 = src(2),
        s3 = src(3)
    );
    // Central European time with its daylight-saving rule, as POSIX writes
    // it (no tz database needed on the test machine).
    let g = start(
        dir.path(),
        &broker,
        "zones",
        &routes,
        &[("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")],
    );
    let db = g.db_path();
    let p = broker.port;
    publish(
        p,
        "local/a",
        r#"{"Time":"2024-01-15T11:30:00","t":1}"#,
        false,
    );
    // Summer: UTC+2.
    publish(
        p,
        "local/a",
        r#"{"Time":"2024-07-15T12:30:00","t":2}"#,
        false,
    );
    // An explicit offset wins over the zone.
    publish(
        p,
        "local/a",
        r#"{"Time":"2024-01-15T10:30:00Z","t":3}"#,
        false,
    );
    publish(p, "fixed/a", r#"{"at":"2024-01-15 05:30:00","t":4}"#, false);
    publish(p, "utc/a", r#"{"at":"2024-01-15T10:30:00","t":5}"#, false);
    let r = wait_until("five readings", &g, || {
        let r = rows(&db);
        (r.len() >= 5).then_some(r)
    });
    let july = 1_721_039_400_000; // 2024-07-15T10:30:00Z
    let got: Vec<(f64, i64)> = r.iter().map(|r| (num(r, "t"), r.ts)).collect();
    assert_eq!(
        got,
        vec![(1.0, T0), (2.0, july), (3.0, T0), (4.0, T0), (5.0, T0)]
    );
    assert!(r
        .iter()
        .all(|r| r.vals.get("Time").is_none() && r.vals.get("at").is_none()));
}

/// Two gateways in one shared group split one broker's messages: each is
/// stored exactly once across the two stores; then one gateway is killed
/// in the middle of a stream and started again, and every message is
/// still stored (the broker redelivers what it had not acknowledged:
/// duplicates are possible, loss is not).
#[test]
fn two_gateways_in_a_shared_group_store_every_message() {
    let broker = Mosquitto::start();
    let (da, db_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let routes = format!(
        r#"
[[mqtt.routes]]
topic = "shared/{{device}}"
bucket = "{B}"
data_source = "{s1}"
"#,
        s1 = src(1)
    );
    let group = "shared_group = \"barn\"";
    let mut a = start_with(da.path(), &broker, "gw-a", group, &routes, &[]);
    let b = start_with(db_dir.path(), &broker, "gw-b", group, &routes, &[]);
    let (pa, pb) = (a.db_path(), b.db_path());
    let ns = |db: &Path| -> Vec<i64> {
        rows(db)
            .iter()
            .map(|r| r.vals["n"].as_f64().unwrap() as i64)
            .collect()
    };
    let msgs = |range: std::ops::Range<i64>| -> Vec<(String, Vec<u8>)> {
        range
            .map(|n| {
                (
                    "shared/d".to_owned(),
                    format!(r#"{{"n":{n}}}"#).into_bytes(),
                )
            })
            .collect()
    };
    assert_eq!(mosquitto::publish(broker.port, msgs(0..1000), None), 1000);
    wait_until("1000 readings across both", &a, || {
        (ns(&pa).len() + ns(&pb).len() >= 1000).then_some(())
    });
    let (na, nb) = (ns(&pa), ns(&pb));
    assert!(
        !na.is_empty() && !nb.is_empty(),
        "both take a share: {} / {}",
        na.len(),
        nb.len()
    );
    let mut all: Vec<i64> = na.iter().chain(&nb).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..1000).collect::<Vec<_>>(),
        "exactly once across the two"
    );

    // Kill `a` while a stream is flowing, start it again later.
    let port = broker.port;
    let publisher =
        std::thread::spawn(move || mosquitto::publish(port, msgs(1000..4000), Some(2000)));
    wait_until("the stream to reach a", &a, || {
        (ns(&pa).len() > na.len() + 50).then_some(())
    });
    a.kill();
    assert_eq!(publisher.join().unwrap(), 3000);
    a.restart();
    a.wait_ready();
    let all = wait_until("every message stored", &b, || {
        let all: BTreeSet<i64> = ns(&pa).into_iter().chain(ns(&pb)).collect();
        (all.len() >= 4000).then_some(all)
    });
    assert_eq!(all, (0..4000).collect::<BTreeSet<_>>());
    let total = ns(&pa).len() + ns(&pb).len();
    // Duplicates come only from what `a` had committed and not yet
    // acknowledged when it was killed (the broker's in-flight window).
    assert!(
        total - 4000 <= mosquitto::MAX_INFLIGHT,
        "{} duplicates",
        total - 4000
    );
}
