//! Serial lines as real firmware and GPS receivers print them, through
//! socat pty pairs into the real gateway: the free-text reader, NMEA 0183,
//! and CSV with a named time column and its format. Lines are copied from
//! public sources:
//!
//! - Adafruit DHT sensor library, `examples/DHTtester/DHTtester.ino`
//!   (github.com/adafruit/DHT-sensor-library): `Humidity: 58.00%
//!   Temperature: 22.40°C 72.32°F  Heat index: 22.08°C 71.74°F`;
//! - Adafruit BMP280 library, `examples/bmp280test/bmp280test.ino`
//!   (github.com/adafruit/Adafruit_BMP280_Library): `Temperature = 22.40 *C`,
//!   `Approx altitude = 12.34 m`;
//! - SparkFun Weather Shield, `Firmware/Weather_Shield_Weather_Station`
//!   (github.com/sparkfun/Weather_Shield), `printWeather()`:
//!   `$,winddir=…,light_lvl=…,#`;
//! - NMEA: the GGA/RMC examples of gpsinformation.org's "NMEA data" (Dale
//!   DePriest), reproduced in most receiver manuals, and a GGA log of a
//!   receiver west of Greenwich published with exrockets.com's GPS notes
//!   (`$GPGGA,185312.000,4524.2243,N,07327.6925,W,…*59`), plus GSV/VTG and
//!   no-fix sentences as receivers print them while searching.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::gateway::Gateway;
use crate::support::pty::PtyPair;
use crate::support::EVENT_TIMEOUT;

const BUCKET: &str = "507f1f77bcf86cd799439011";
const TEXT: &str = "507f1f77bcf86cd799439021";
const GPS: &str = "507f1f77bcf86cd799439022";
const CLOCK: &str = "507f1f77bcf86cd799439023";
const AUTO: &str = "507f1f77bcf86cd799439024";

fn port(path: &Path, line: &str, source: &str) -> String {
    format!(
        "[[serial]]\npath = \"{}\"\nline = {line}\nbucket = \"barn\"\ndata_source = \"{source}\"\n",
        path.display()
    )
}

/// Stored readings of one data source: (ts, values, metadata), in order.
fn rows(g: &Gateway, source: &str) -> Vec<(i64, serde_json::Value, serde_json::Value)> {
    let c = dakkio_gateway::store::inspect(g.db_path()).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut st = c
        .prepare(
            "SELECT r.ts, r.vals, r.meta FROM readings r JOIN sources s ON s.id = r.source \
             WHERE s.source_id = ?1 ORDER BY r.seq",
        )
        .unwrap();
    let out = st
        .query_map([source], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                serde_json::from_str(&r.get::<_, String>(1)?).unwrap(),
                r.get::<_, Option<String>>(2)?
                    .map(|m| serde_json::from_str(&m).unwrap())
                    .unwrap_or(serde_json::Value::Null),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    out
}

fn wait_rows(
    g: &Gateway,
    source: &str,
    n: usize,
) -> Vec<(i64, serde_json::Value, serde_json::Value)> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if g.db_path().exists() {
            let r = rows(g, source);
            if r.len() >= n {
                return r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} readings for {source}\n{}",
            g.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `(origin, reason)` of every kept reject, oldest first.
fn rejects(g: &Gateway) -> Vec<(String, String)> {
    let c = dakkio_gateway::store::inspect(g.db_path()).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut st = c
        .prepare("SELECT origin, reason FROM rejects ORDER BY id")
        .unwrap();
    let out = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    out
}

fn num(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// The UTC time of day of `ms`, `hhmmss`, and `ms` cut to the second.
fn hhmmss(ms: i64) -> (String, i64) {
    let secs = ms.div_euclid(1000);
    let sod = secs.rem_euclid(86_400);
    (
        format!("{:02}{:02}{:02}", sod / 3600, sod / 60 % 60, sod % 60),
        secs * 1000,
    )
}

#[test]
fn firmware_text_gps_sentences_and_csv_times_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = PtyPair::open(dir.path(), "text");
    let mut gps = PtyPair::open(dir.path(), "gps");
    let mut clock = PtyPair::open(dir.path(), "clock");
    let mut auto = PtyPair::open(dir.path(), "auto");
    let mut cfg = format!(
        "[store]\ncommit_max_delay = \"5ms\"\n[[buckets]]\nid = \"{BUCKET}\"\nname = \"barn\"\n"
    );
    cfg += &port(&text.dev, r#"{ format = "text" }"#, TEXT);
    cfg += &port(&gps.dev, r#"{ format = "nmea" }"#, GPS);
    cfg += &port(
        &clock.dev,
        r#"{ format = "csv", columns = ["time", "temperature"], time_format = "hhmmss", time_zone = "UTC" }"#,
        CLOCK,
    );
    cfg += &port(
        &auto.dev,
        r#"{ format = "csv", columns = ["time", "temperature"] }"#,
        AUTO,
    );
    let g = Gateway::start(dir.path(), &cfg);
    g.wait_ready();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while g.log_text().matches("serial port open").count() < 4 {
        assert!(Instant::now() < deadline, "{}", g.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }

    // Free text.
    text.write(
        "Humidity: 58.00%  Temperature: 22.40°C 72.32°F  Heat index: 22.08°C 71.74°F\r\n\
         Failed to read from DHT sensor!\r\n\
         Temperature = 22.40 *C\r\n\
         $,winddir=113,windspeedmph=0.0,windgustmph=0.0,windgustdir=0,windspdmph_avg2m=0.0,\
         winddir_avg2m=113,windgustmph_10m=0.0,windgustdir_10m=0,humidity=47.2,tempf=72.3,\
         rainin=0.00,dailyrainin=0.00,pressure=101217.75,batt_lvl=4.34,light_lvl=0.05,#\r\n"
            .as_bytes(),
    );
    let r = wait_rows(&g, TEXT, 3);
    assert_eq!(
        r[0].1,
        serde_json::json!({"humidity": 58.0, "temperature": 22.4, "temperature_f": 72.32,
                           "heat_index": 22.08, "heat_index_f": 71.74})
    );
    assert_eq!(r[1].1, serde_json::json!({"temperature": 22.4}));
    assert_eq!(num(&r[2].1, "winddir"), 113.0);
    assert_eq!(num(&r[2].1, "pressure"), 101_217.75);
    assert_eq!(r[2].1.as_object().unwrap().len(), 15);

    // GPS: a searching receiver (skipped), a damaged sentence (rejected),
    // then RMC and GGA of one fix.
    gps.write(
        b"$GPGGA,132411.60,5231.91297,N,00516.97745,E,0,00,2.3,5.7,M,46.6,M,,*63\r\n\
          $GPVTG,353.67,T,353.86,M,1.43,N,2.65,K,A*2B\r\n\
          $GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48\r\n\
          $GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n\
          $GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n\
          $GPGGA,185312.000,4524.2243,N,07327.6925,W,2,8,0.99,29.4,M,-31.9,M,0000,0000*59\r\n",
    );
    let r = wait_rows(&g, GPS, 3);
    assert_eq!(r.len(), 3, "{r:?}");
    // 1994-03-23T12:35:19Z: the RMC's date and time, and the GGA dated by it.
    assert_eq!(r[0].0, 764_426_119_000);
    assert_eq!(r[1].0, 764_426_119_000);
    assert!((num(&r[0].1, "latitude") - 48.1173).abs() < 1e-9);
    assert!((num(&r[0].1, "longitude") - 11.516_666_666).abs() < 1e-6);
    assert!((num(&r[0].1, "speed_kmh") - 41.4848).abs() < 1e-9);
    assert_eq!(r[0].2["nmea"], "GPRMC");
    assert_eq!(num(&r[1].1, "altitude"), 545.4);
    assert_eq!(num(&r[1].1, "satellites"), 8.0);
    assert_eq!(r[1].2["nmea"], "GPGGA");
    // West is negative; 18:53:12 on the RMC's day.
    assert!((num(&r[2].1, "longitude") + 73.461_541_666).abs() < 1e-6);
    assert_eq!(r[2].0, 764_380_800_000 + (18 * 3600 + 53 * 60 + 12) * 1000);

    // CSV: `hhmmss` on the day the line arrived; in `auto` the same cell
    // is refused instead of becoming a 1970 date.
    let (tod, want_ts) = hhmmss(dakkio_gateway::reading::now_ms() - 60_000);
    clock.write(format!("{tod},21.5\n").as_bytes());
    auto.write(format!("{tod},21.5\n").as_bytes());
    let r = wait_rows(&g, CLOCK, 1);
    assert_eq!(r[0].0, want_ts);
    assert_eq!(r[0].1, serde_json::json!({"temperature": 21.5}));

    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut want = vec![
        (
            format!("serial:{}", text.dev.display()),
            "no_numeric_value".to_owned(),
        ),
        (
            format!("serial:{}", gps.dev.display()),
            "bad_checksum".to_owned(),
        ),
        (
            format!("serial:{}", auto.dev.display()),
            "bad_timestamp".to_owned(),
        ),
    ];
    want.sort();
    loop {
        let mut got = rejects(&g);
        got.sort();
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "rejects {got:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rows(&g, AUTO).is_empty());
}
/// `try --port`: a line through the configured port's decoder, printed;
/// a refused line gives its reason and a hint, exit 1. No daemon needed.
#[test]
fn try_a_serial_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("g.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[gateway]\ndata_dir = \"{}\"\n[[buckets]]\nid = \"{BUCKET}\"\nname = \"barn\"\n{}{}",
            dir.path().display(),
            port(Path::new("/dev/ttyUSB0"), r#"{ format = "nmea" }"#, GPS),
            port(
                Path::new("/dev/ttyUSB1"),
                r#"{ format = "csv", columns = ["time", "t"] }"#,
                CLOCK
            )
            .replace("[[serial]]", "[[serial]]\nname = \"clock\""),
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(crate::support::binary())
            .arg("try")
            .args(args)
            .arg("--config")
            .arg(&cfg_path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&[
        "--port",
        "/dev/ttyUSB0",
        "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("bucket {BUCKET}")), "{out}");
    assert!(out.contains(&format!("data source {GPS}")), "{out}");
    assert!(out.contains("1994-03-23T12:35:19.000Z"), "{out}");
    assert!(out.contains("\"latitude\": 48.1173"), "{out}");
    assert!(out.contains("\"nmea\": \"GPRMC\""), "{out}");
    // By name; a refused line: reason, explanation, hint, exit 1.
    let (code, out, _) = run(&["--port", "clock", "123519,21.5"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("rejected: bad_timestamp"), "{out}");
    assert!(out.contains("time_format = \"hhmmss\""), "{out}");
    assert!(out.contains("hint:"), "{out}");
    // A skipped sentence says so.
    let (code, out, _) = run(&[
        "--port",
        "/dev/ttyUSB0",
        "$GPVTG,353.67,T,353.86,M,1.43,N,2.65,K,A*2B",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("skipped"), "{out}");
    // An unknown port is a usage error naming the configured ones.
    let (code, _, err) = run(&["--port", "/dev/nope", "1"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("/dev/ttyUSB0") && err.contains("clock"),
        "{err}"
    );
}
