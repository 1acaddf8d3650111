//! MQTT payload decoding with paths and presets, on one core
//! (harness = false): routing + decoding (`Router::route`, what the commit
//! task runs per message) of typical payloads of each ecosystem, payloads
//! per CPU-second of the decoding thread (`CLOCK_THREAD_CPUTIME_ID`, so a
//! loaded machine's waiting is not counted), median of several runs. The in-run reference is the decoder every route
//! used before paths and presets (`decode_payload` with `format = "json"`)
//! on the same small Zigbee2MQTT-like payload. Beside each JSON case, "json
//! skim": payloads per CPU-second that serde_json only reads through
//! (`IgnoredAny`: syntax checked, nothing built), the ceiling of any
//! decoder for a payload of that size and shape.
//!
//! Run (release): `cargo bench --bench payloads`.
//! Sizes: PAYLOADS_BENCH_MESSAGES (default 200000), PAYLOADS_BENCH_RUNS (5).
//! PAYLOADS_BENCH_CASE=tasmota runs only the cases whose name contains it
//! (the reference always runs), e.g. to profile one case;
//! PAYLOADS_BENCH_SKIM=0 leaves the skim out (a profile of routing only).

use std::hint::black_box;

use serde::de::IgnoredAny;
use std::path::Path;

use dakkio_gateway::config::{parse, ProcessEnv};
use dakkio_gateway::ingest::decode::{decode_payload, DecodeOptions, PayloadFormat};
use dakkio_gateway::ingest::route::Router;

const BUCKET: &str = "507f1f77bcf86cd799439011";
const SOURCE: &str = "507f1f77bcf86cd799439012";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds this thread has used.
fn thread_cpu_s() -> f64 {
    // SAFETY: an all-zero `timespec` is valid; `clock_gettime` writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to our own `timespec`.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn router() -> Router {
    let mut routes = String::new();
    for preset in [
        "zigbee2mqtt",
        "tasmota",
        "homeassistant",
        "esphome",
        "shelly_gen2",
        "ttn_v3",
        "chirpstack_v4",
        "owntracks",
        "telegraf",
    ] {
        routes.push_str(&format!(
            "[[mqtt.routes]]\npreset = \"{preset}\"\nbucket = \"{BUCKET}\"\n\
             data_source = \"{SOURCE}\"\n"
        ));
    }
    routes.push_str(&format!(
        "[[mqtt.routes]]\ntopic = \"plain/{{device}}\"\nbucket = \"{BUCKET}\"\n\
         data_source = \"{SOURCE}\"\nformat = \"json\"\n"
    ));
    // No `format`: `auto`, what a route without a preset reads.
    routes.push_str(&format!(
        "[[mqtt.routes]]\ntopic = \"auto/{{device}}\"\nbucket = \"{BUCKET}\"\n\
         data_source = \"{SOURCE}\"\n"
    ));
    let text = format!("[[buckets]]\nid = \"{BUCKET}\"\n[mqtt]\n{routes}");
    let config = parse(&text, Path::new("bench.toml"), &ProcessEnv).expect("bench config");
    Router::new(
        config.mqtt.as_ref().expect("[mqtt]"),
        config.buckets.iter().map(|b| b.id.clone()),
    )
}

type Make = fn(usize) -> String;

/// (name, topic, payload maker)
fn cases() -> Vec<(&'static str, &'static str, Make)> {
    vec![
        ("plain json route", "plain/d1", |i| {
            format!(
                r#"{{"temperature":{}.5,"humidity":44.72,"battery":97,"linkquality":120}}"#,
                i % 40
            )
        }),
        ("plain auto route", "auto/d1", |i| {
            format!(
                r#"{{"temperature":{}.5,"humidity":44.72,"battery":97,"linkquality":120}}"#,
                i % 40
            )
        }),
        ("zigbee2mqtt", "zigbee2mqtt/kitchen/plug", |i| {
            format!(
                r#"{{"state":"ON","power":{}.5,"energy":3.2,"linkquality":120}}"#,
                i % 40
            )
        }),
        ("tasmota (naive local time)", "tele/plug/SENSOR", |i| {
            format!(
                r#"{{"Time":"2024-01-15T11:{:02}:00","AM2301":{{"Temperature":21.6,"Humidity":53.4}},"TempUnit":"C"}}"#,
                i % 60
            )
        }),
        ("esphome", "hall/sensor/temperature/state", |i| {
            format!("{}.5", i % 40)
        }),
        (
            "shelly_gen2 (array)",
            "shellyplus1pm-a8/status/switch:0",
            |i| {
                format!(
                    r#"{{"id":0,"source":"timer","output":false,"apower":{}.9,"voltage":237.5,"current":0.039,"aenergy":{{"total":6.532,"by_minute":[45.199,47.141,88.397],"minute_ts":1654511972}},"temperature":{{"tC":23.5,"tF":74.4}}}}"#,
                    i % 40
                )
            },
        ),
        ("owntracks", "owntracks/jane/phone", |i| {
            format!(
                r#"{{"_type":"location","acc":13,"batt":98,"lat":48.{i:06},"lon":2.34916,"tid":"j1","tst":1707057574}}"#
            )
        }),
        ("telegraf (2 lines)", "telegraf/host1/weather", |i| {
            format!(
                "weather,location=us-midwest temperature={} 1465839830100400200\n\
                 weather,location=us-east temperature=75 1465839830100400200",
                i % 90
            )
        }),
        ("ttn_v3 (1 kB uplink)", "v3/app1@ttn/devices/dev1/up", |i| {
            format!(
                r#"{{"end_device_ids":{{"device_id":"dev1","application_ids":{{"application_id":"app1"}},"dev_eui":"0004A30B001C0530","join_eui":"800000000000000C","dev_addr":"00BCB929"}},"correlation_ids":["as:up:01..."],"received_at":"2024-01-15T10:30:00.123Z","uplink_message":{{"session_key_id":"AXBSH1Pk6Z0G166...","f_port":15,"f_cnt":{i},"frm_payload":"VGVtcGVyYXR1cmUgPSAyMS4w","decoded_payload":{{"temperature":21.0,"humidity":45}},"rx_metadata":[{{"gateway_ids":{{"gateway_id":"gtw1","eui":"9C5C8E00001A05C4"}},"time":"2024-01-15T10:30:00.100Z","timestamp":2463457000,"rssi":-35,"channel_rssi":-35,"snr":5.2,"uplink_token":"ChIKEA...","channel_index":6}}],"settings":{{"data_rate":{{"lora":{{"bandwidth":125000,"spreading_factor":7}}}},"coding_rate":"4/5","frequency":"868500000","timestamp":2463457000,"time":"2024-01-15T10:30:00.100Z"}},"received_at":"2024-01-15T10:30:00.110Z","consumed_airtime":"0.056576s"}}}}"#
            )
        }),
    ]
}

fn main() {
    let n = env("PAYLOADS_BENCH_MESSAGES", 200_000);
    let runs = env("PAYLOADS_BENCH_RUNS", 5);
    let router = router();
    println!("{n} messages per run, median of {runs} runs, per CPU-second of this thread\n");
    println!(
        "{:<28} {:>14} {:>10} {:>8} {:>14}",
        "payload", "payloads/cpu-s", "bytes", "x ref", "json skim/cpu-s"
    );

    // The reference: the all-or-nothing JSON decoder, same payload as the
    // first case, no routing.
    let (_, _, make) = cases()[0];
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| make(i).into_bytes()).collect();
    let opts = DecodeOptions::default();
    let reference = median(
        (0..runs)
            .map(|_| {
                let t = thread_cpu_s();
                for p in &payloads {
                    black_box(decode_payload(black_box(p), PayloadFormat::Json, &opts).unwrap());
                }
                n as f64 / (thread_cpu_s() - t)
            })
            .collect(),
    );
    println!(
        "{:<28} {:>14.0} {:>10}",
        "reference: decode_payload",
        reference,
        payloads[0].len()
    );

    let only = std::env::var("PAYLOADS_BENCH_CASE").unwrap_or_default();
    for (name, topic, make) in cases() {
        if !name.contains(only.as_str()) {
            continue;
        }
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| make(i).into_bytes()).collect();
        // Every case must decode: a bench of rejects measures nothing.
        let probe = router
            .route(topic, &payloads[0], false, 1_705_314_600_000)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(
            !probe.readings.is_empty() && probe.skipped.is_none(),
            "{name}: {probe:?}"
        );
        let rate = median(
            (0..runs)
                .map(|_| {
                    let t = thread_cpu_s();
                    for p in &payloads {
                        black_box(
                            router
                                .route(topic, black_box(p), false, 1_705_314_600_000)
                                .unwrap(),
                        );
                    }
                    n as f64 / (thread_cpu_s() - t)
                })
                .collect(),
        );
        // What merely reading this payload's JSON costs (serde_json
        // skipping it whole: no values, no allocation): the ceiling of any
        // decoder of this size of payload.
        let skim = (serde_json::from_slice::<IgnoredAny>(&payloads[0]).is_ok()
            && std::env::var("PAYLOADS_BENCH_SKIM").as_deref() != Ok("0"))
        .then(|| {
            median(
                (0..runs)
                    .map(|_| {
                        let t = thread_cpu_s();
                        for p in &payloads {
                            black_box(serde_json::from_slice::<IgnoredAny>(black_box(p)).unwrap());
                        }
                        n as f64 / (thread_cpu_s() - t)
                    })
                    .collect(),
            )
        });
        println!(
            "{:<28} {:>14.0} {:>10} {:>8.2} {:>14}",
            name,
            rate,
            payloads[0].len(),
            rate / reference,
            skim.map_or("-".into(), |s| format!("{s:.0}"))
        );
    }
}
