//! One input taken out of its stream — a kept reject, or a topic and
//! payload (a serial line and port) typed to `try` — run through a
//! configuration with the decoders the daemon uses: the MQTT router
//! ([`Router::route`]) and a serial port's line decoder
//! ([`serial::line_reading`]). Pure: no store, no clock.
//!
//! Used by `rejects replay` (what a kept reject becomes under the current
//! configuration) and `try` (what an input would become). Invariants:
//! - a reject is replayable only when its input was kept whole: a
//!   `too_large` input and inputs (or topics) cut to the store's limits
//!   are not, nor inputs of origins without a configuration to run
//!   (`api`, `too_many_sources` copies);
//! - it replays only when the whole input now becomes readings: any line
//!   still refused keeps the reject as it is.

use crate::config::{Config, SerialConfig};
use crate::ingest::route::{Rejection, Router};
use crate::ingest::serial;
use crate::reading::Reading;
use crate::store::{RejectRow, REJECT_ORIGIN_LIMIT, REJECT_RAW_LIMIT};

/// Where an input comes from.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Mqtt {
        topic: &'a str,
        payload: &'a [u8],
    },
    Serial {
        port: &'a SerialConfig,
        line: &'a [u8],
    },
}

/// What an input becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every part of it became readings.
    Readings(Vec<Reading>),
    /// Skipped and counted, not an error (a retained message, a skipped
    /// topic, a CSV header, an NMEA sentence that is not read).
    Skipped(&'static str),
    /// Refused: the reason and explanation of the first refused part, and
    /// the readings the other parts made (a multi-line payload).
    Rejected {
        reason: &'static str,
        detail: String,
        readings: Vec<Reading>,
    },
}

/// Run one input through `config`, stamped `received_ms` where the device
/// gives no time.
pub fn run(config: &Config, input: Input<'_>, received_ms: i64) -> Outcome {
    match input {
        Input::Mqtt { topic, payload } => {
            let Some(mqtt) = &config.mqtt else {
                return Outcome::Rejected {
                    reason: "no_route",
                    detail: "the configuration has no `[mqtt]` section".into(),
                    readings: Vec::new(),
                };
            };
            let router = Router::new(mqtt, config.buckets.iter().map(|b| b.id.clone()));
            match router.route(topic, payload, false, received_ms) {
                Err(Rejection { reason, detail }) => Outcome::Rejected {
                    reason,
                    detail,
                    readings: Vec::new(),
                },
                Ok(routed) => {
                    if let Some(reason) = routed.skipped {
                        return Outcome::Skipped(reason);
                    }
                    match routed.bad_lines.into_iter().next() {
                        Some((Rejection { reason, detail }, _)) => Outcome::Rejected {
                            reason,
                            detail,
                            readings: routed.readings,
                        },
                        None if routed.readings.is_empty() => Outcome::Skipped("nothing_to_store"),
                        None => Outcome::Readings(routed.readings),
                    }
                }
            }
        }
        Input::Serial { port, line } => match serial::line_reading(port, line, received_ms) {
            Ok(Some(r)) => Outcome::Readings(vec![r]),
            Ok(None) => Outcome::Skipped("skipped_line"),
            Err((reason, detail)) => Outcome::Rejected {
                reason,
                detail,
                readings: Vec::new(),
            },
        },
    }
}

/// The configured serial port a name designates: its `path` or its `name`.
pub fn find_port<'a>(config: &'a Config, name: &str) -> Option<&'a SerialConfig> {
    config
        .serial
        .iter()
        .find(|p| p.path == name)
        .or_else(|| config.serial.iter().find(|p| p.name == name))
}

/// What a kept reject becomes under `config`, received at its own time;
/// `Err` says why it cannot be run again. Readings without a device time
/// carry the time the reject was kept, as a time already given
/// (`receive_time = false`): the clock gate must not hold them and re-stamp
/// them with the moment of the replay.
pub fn reject(config: &Config, r: &RejectRow) -> Result<Outcome, String> {
    let mut o = reject_at_its_time(config, r)?;
    if let Outcome::Readings(rs) | Outcome::Rejected { readings: rs, .. } = &mut o {
        for reading in rs {
            reading.receive_time = false;
        }
    }
    Ok(o)
}

fn reject_at_its_time(config: &Config, r: &RejectRow) -> Result<Outcome, String> {
    if r.reason == "too_large" {
        return Err("only the first bytes of a too-large input are kept".into());
    }
    if r.raw.len() >= REJECT_RAW_LIMIT {
        return Err(format!(
            "the input was kept cut to {REJECT_RAW_LIMIT} bytes"
        ));
    }
    if r.origin.len() >= REJECT_ORIGIN_LIMIT {
        return Err("its topic was kept cut".into());
    }
    if let Some(topic) = r.origin.strip_prefix("mqtt:") {
        return Ok(run(
            config,
            Input::Mqtt {
                topic,
                payload: &r.raw,
            },
            r.at_ms,
        ));
    }
    if let Some(path) = r.origin.strip_prefix("serial:") {
        let Some(port) = config.serial.iter().find(|p| p.path == path) else {
            return Err(format!(
                "no `[[serial]]` port has `path = \"{path}\"` in this configuration"
            ));
        };
        return Ok(run(config, Input::Serial { port, line: &r.raw }, r.at_ms));
    }
    Err(format!(
        "inputs of origin `{}` are not kept whole (`api` clients got their answer; \
         `too_many_sources` is about `store.max_sources_per_bucket`, not decoding)",
        r.origin
    ))
}

/// What to look at for a reason, for people trying a configuration.
pub fn hint(reason: &str) -> &'static str {
    match reason {
        "no_route" => {
            "add a `[[mqtt.routes]]` whose `topic` matches, e.g. `topic = \"sensors/{device}/#\"`; \
             a `{name#}` capture takes several levels"
        }
        "unknown_bucket" => {
            "the route's `bucket` (or its `buckets` map) must name a `[[buckets]]` entry"
        }
        "unknown_data_source" | "unmapped_source" | "no_data_source" => {
            "give the route a `data_source`, or map the topic segment in `data_sources`"
        }
        "unknown_source" => "add the name to the port's `sources` map",
        "no_numeric_value" => {
            "a reading needs a number: point the route's `values` at the right object, or map \
             state words with `states`"
        }
        "bad_timestamp" => {
            "set `time_format` (and `time_zone` for times without an offset) on the route or the \
             CSV line, e.g. `time_format = \"hhmmss\"`"
        }
        "invalid_json" | "invalid_line_protocol" | "unsupported_value" => {
            "check the route's `format` (`json`, `scalar`, `influx`, or a `preset`)"
        }
        "invalid_csv" => "the line must have one cell per name in `columns`",
        "invalid_kv" => {
            "kv lines are `t=21.5 h=40`; firmware text like `Temp: 21.5 C` is `format = \"text\"`"
        }
        "bad_checksum" | "invalid_nmea" => {
            "a damaged or cut sentence; check the port's `baud_rate` (GPS receivers: often 9600)"
        }
        "control_character" | "invalid_utf8" => {
            "noise on the line: check the port's `baud_rate`, `parity` and wiring"
        }
        "too_large" => "raise `mqtt.max_packet_size` or the port's `max_line`",
        "non_finite" => "the sensor sent NaN or infinity: it failed to read",
        _ => "see \"Rejects\" in docs/operator-manual.md",
    }
}
