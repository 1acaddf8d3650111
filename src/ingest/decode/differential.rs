//! Differential tests of the byte scanner (`scan.rs`, `skip.rs`,
//! `paths.rs`) against serde's walk (`stream.rs`) on whole documents: the
//! scanner either makes serde's walk or steps aside, so a route's result,
//! readings or error, never depends on which of the two read it.

use super::document::PayloadSpec;
use super::stream::{walk_by, Walked};
use super::test_support::xorshift;
use super::DecodeOptions;

/// The TTN preset's spec (from a route that names only the preset) and
/// the bench's uplink.
fn ttn() -> (PayloadSpec, String) {
    let text = "[[buckets]]\nid = \"507f1f77bcf86cd799439011\"\n[mqtt]\n\
                [[mqtt.routes]]\npreset = \"ttn_v3\"\n\
                bucket = \"507f1f77bcf86cd799439011\"\n";
    let config = crate::config::parse(
        text,
        std::path::Path::new("t.toml"),
        &crate::config::ProcessEnv,
    )
    .expect("a route with the TTN preset");
    let spec = config.mqtt.expect("[mqtt]").routes[0].payload.clone();
    let uplink = r#"{"end_device_ids":{"device_id":"dev1","application_ids":{"application_id":"app1"},"dev_eui":"0004A30B001C0530","join_eui":"800000000000000C","dev_addr":"00BCB929"},"correlation_ids":["as:up:01..."],"received_at":"2024-01-15T10:30:00.123Z","uplink_message":{"session_key_id":"AXBSH1Pk6Z0G166...","f_port":15,"f_cnt":42,"frm_payload":"VGVtcGVyYXR1cmUgPSAyMS4w","decoded_payload":{"temperature":21.0,"humidity":45},"rx_metadata":[{"gateway_ids":{"gateway_id":"gtw1","eui":"9C5C8E00001A05C4"},"time":"2024-01-15T10:30:00.100Z","timestamp":2463457000,"rssi":-35,"channel_rssi":-35,"snr":5.2,"uplink_token":"ChIKEA...","channel_index":6}],"settings":{"data_rate":{"lora":{"bandwidth":125000,"spreading_factor":7}},"coding_rate":"4/5","frequency":"868500000","timestamp":2463457000,"time":"2024-01-15T10:30:00.100Z"},"received_at":"2024-01-15T10:30:00.110Z","consumed_airtime":"0.056576s"}}"#;
    (spec, uplink.to_owned())
}

/// What the walk gives with the byte scanner tried first or not.
fn both(text: &str, spec: &PayloadSpec, opts: &DecodeOptions) -> [String; 2] {
    [true, false].map(|scan| match walk_by(text, spec, opts, 1000, false, scan) {
        Ok(Walked::Document(r)) => format!("{r:?}"),
        Ok(Walked::Point) => unreachable!("not detecting"),
        Err(e) => format!("{e:?}"),
    })
}

/// Random edits anywhere in a TTN uplink (in the parts it skips, on
/// its paths, in keys and strings across the scanner's 16- and
/// 32-byte blocks): with the scanner or with serde alone, the same
/// readings or the same error.
#[test]
fn random_edits_decode_as_serde_walks_them() {
    let (spec, uplink) = ttn();
    let opts = DecodeOptions::default();
    let [scanned, serde] = both(&uplink, &spec, &opts);
    assert_eq!(scanned, serde);
    assert!(scanned.starts_with("Ok"), "{scanned}");
    let alphabet = "\"\\{}[],:0123456789-+.eEtrufalsn \n\tx\u{1}é";
    let alphabet: Vec<char> = alphabet.chars().collect();
    let mut x = 0x5851_f42d_4c95_7f2du64;
    let (mut same_ok, mut errors) = (0, 0);
    for at in 0..uplink.len() {
        if !uplink.is_char_boundary(at) {
            continue;
        }
        for _ in 0..3 {
            xorshift(&mut x);
            let c = alphabet[(x % alphabet.len() as u64) as usize];
            let mut t = uplink.clone();
            match (x >> 8) % 3 {
                0 => t.insert(at, c),
                1 => {
                    t.remove(at);
                }
                _ => {
                    t.remove(at);
                    t.insert(at, c);
                }
            }
            let [scanned, serde] = both(&t, &spec, &opts);
            assert_eq!(scanned, serde, "{t}");
            if scanned.starts_with("Ok") {
                same_ok += 1;
            } else {
                errors += 1;
            }
        }
    }
    assert!(
        same_ok > 200 && errors > 200,
        "{same_ok} ok, {errors} errors"
    );
}

/// Strings the route skips, of every length up to past two blocks,
/// with an escape (good or bad) or a control byte at every offset; and
/// nesting around the depth limit in a skipped part and on a path.
#[test]
fn long_strings_escapes_and_depth_as_serde() {
    let (spec, uplink) = ttn();
    let opts = DecodeOptions::default();
    let at = uplink.find(r#""4/5""#).unwrap();
    for len in 0..80 {
        for esc in [r#"\""#, r"\\", r"\u00e9", r"\u00g9", r"\q", "\u{1f}", "é"] {
            for pos in [0, len / 3, len] {
                let text = format!("\"{}{esc}{}\"", "a".repeat(pos), "b".repeat(len - pos));
                let t = format!("{}{text}{}", &uplink[..at], &uplink[at + 5..]);
                let [scanned, serde] = both(&t, &spec, &opts);
                assert_eq!(scanned, serde, "{t}");
            }
        }
    }
    let mut seen = Vec::new();
    for depth in 25..40 {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let t = format!("{}{nested}{}", &uplink[..at], &uplink[at + 5..]);
        let [scanned, serde] = both(&t, &spec, &opts);
        assert_eq!(scanned, serde, "{depth}");
        seen.push(scanned);
        let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        let t = uplink.replace(
            r#""humidity":45"#,
            &format!(r#""humidity":45,"deep":{objects}"#),
        );
        let [scanned, serde] = both(&t, &spec, &opts);
        assert_eq!(scanned, serde, "{depth}");
        seen.push(scanned);
    }
    // Both sides of the limit were reached, in both places.
    assert!(seen.iter().filter(|r| r.starts_with("Ok")).count() >= 4);
    assert!(seen.iter().filter(|r| r.contains("TooDeep")).count() >= 4);
}
