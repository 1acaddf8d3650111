//! Route presets (`preset = "zigbee2mqtt"`): the topic layout, payload
//! format, paths, time field and format, states and what to skip that a
//! user of each ecosystem would otherwise write by hand. A preset only
//! fills defaults: every key written in the route overrides the preset's.
//! Plain data; `mqtt.rs` applies it while validating a route.
//!
//! Each entry names the documentation its layout comes from; the
//! integration tests (`tests/integration/payloads.rs`) replay payloads
//! copied from those pages.

use super::timefmt::{TimeFormat, TimeZone};
use super::PayloadFormat;

/// One preset's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub topic: &'static str,
    /// `data_source` (a topic segment), when the layout names a device.
    pub data_source: Option<&'static str>,
    pub format: PayloadFormat,
    /// The name of a scalar payload's value.
    pub field: Option<&'static str>,
    pub values: &'static str,
    pub time: Option<&'static str>,
    pub time_format: TimeFormat,
    pub time_zone: TimeZone,
    /// Metadata key → path in the payload.
    pub metadata_fields: &'static [(&'static str, &'static str)],
    /// Metadata key → topic segment (`{name}`) or text.
    pub metadata: &'static [(&'static str, &'static str)],
    pub ignore: &'static [&'static str],
    /// States beyond the defaults.
    pub states: &'static [(&'static str, f64)],
    pub text: super::payload::TextPolicy,
    /// Topics matched by the route's filter that carry no readings.
    pub skip_topics: &'static [&'static str],
}

use super::payload::TextPolicy;

const BASE: Preset = Preset {
    name: "",
    topic: "",
    data_source: None,
    format: PayloadFormat::Auto,
    field: None,
    values: "",
    time: None,
    time_format: TimeFormat::Auto,
    time_zone: TimeZone::UTC,
    metadata_fields: &[],
    metadata: &[],
    ignore: &[],
    states: &[],
    text: TextPolicy::Value,
    skip_topics: &[],
};

/// Every preset, by name.
pub const PRESETS: [Preset; 9] = [
    // https://www.zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html
    // `zigbee2mqtt/FRIENDLY_NAME` carries the device's state as JSON; a
    // friendly name may contain `/`; `…/availability`, `…/set`, `…/get` and
    // `zigbee2mqtt/bridge/…` are not readings.
    Preset {
        name: "zigbee2mqtt",
        topic: "zigbee2mqtt/{device#}",
        data_source: Some("{device}"),
        format: PayloadFormat::Json,
        time: Some("last_seen"),
        ignore: &["update", "update_available"],
        states: &[("lock", 1.0), ("unlock", 0.0)],
        skip_topics: &[
            "zigbee2mqtt/bridge/#",
            "zigbee2mqtt/#/availability",
            "zigbee2mqtt/#/set",
            "zigbee2mqtt/#/get",
            "zigbee2mqtt/#/set/#",
        ],
        ..BASE
    },
    // https://tasmota.github.io/docs/MQTT/ : `tele/%topic%/SENSOR` and
    // `tele/%topic%/STATE` as JSON with `Time` in the device's local time
    // (no offset); `tele/%topic%/LWT` is Online/Offline.
    Preset {
        name: "tasmota",
        topic: "tele/{device}/+",
        data_source: Some("{device}"),
        format: PayloadFormat::Json,
        time: Some("Time"),
        time_format: TimeFormat::Iso8601,
        time_zone: TimeZone::Local,
        ignore: &[
            "TempUnit",
            "PressureUnit",
            "SpeedUnit",
            "Uptime",
            "UptimeSec",
            "Heap",
            "SleepMode",
            "Sleep",
            "LoadAvg",
            "MqttCount",
            "Wifi.AP",
            "Wifi.SSId",
            "Wifi.BSSId",
            "Wifi.Channel",
            "Wifi.Mode",
            "Wifi.LinkCount",
            "Wifi.Downtime",
        ],
        skip_topics: &[
            "tele/+/LWT",
            "tele/+/INFO1",
            "tele/+/INFO2",
            "tele/+/INFO3",
            "tele/+/RESULT",
        ],
        ..BASE
    },
    // https://esphome.io/components/mqtt.html : `<node>/<component>/<name>/state`,
    // a bare value (`21.5`, `ON`, text).
    Preset {
        name: "esphome",
        topic: "{node}/{component}/{name}/state",
        data_source: Some("{node}"),
        format: PayloadFormat::Scalar,
        field: Some("{name}"),
        ..BASE
    },
    // https://shelly-api-docs.shelly.cloud/gen2/General/RPCChannels#mqtt :
    // with "generic status update over MQTT", `<device>/status/<component>`
    // carries the component's status object (`switch:0`).
    Preset {
        name: "shelly_gen2",
        topic: "{device}/status/{component}",
        data_source: Some("{device}"),
        format: PayloadFormat::Json,
        metadata: &[("component", "{component}")],
        ignore: &["id", "source", "aenergy.minute_ts", "ret_aenergy.minute_ts"],
        ..BASE
    },
    // https://www.home-assistant.io/integrations/mqtt_statestream/ :
    // `homeassistant/<domain>/<entity>/state` is the bare state; attributes
    // are published beside it (retained) and are not readings.
    Preset {
        name: "homeassistant",
        topic: "homeassistant/{domain}/{entity}/state",
        format: PayloadFormat::Scalar,
        field: Some("{entity}"),
        metadata: &[("domain", "{domain}")],
        ..BASE
    },
    // https://www.thethingsindustries.com/docs/integrations/data-formats/ :
    // uplinks on `v3/<app>@<tenant>/devices/<device>/up`, readings in
    // `uplink_message.decoded_payload`, time in `received_at`.
    Preset {
        name: "ttn_v3",
        topic: "v3/{application}/devices/{device}/up",
        data_source: Some("{device}"),
        format: PayloadFormat::Json,
        values: "uplink_message.decoded_payload",
        time: Some("received_at"),
        time_format: TimeFormat::Iso8601,
        metadata_fields: &[
            ("devEui", "end_device_ids.dev_eui"),
            ("fPort", "uplink_message.f_port"),
            ("fCnt", "uplink_message.f_cnt"),
            ("rssi", "uplink_message.rx_metadata.0.rssi"),
            ("snr", "uplink_message.rx_metadata.0.snr"),
            (
                "gatewayId",
                "uplink_message.rx_metadata.0.gateway_ids.gateway_id",
            ),
        ],
        ..BASE
    },
    // https://www.chirpstack.io/docs/chirpstack/integrations/events.html :
    // `application/<app>/device/<devEui>/event/up`, readings in `object`,
    // time in `time`.
    Preset {
        name: "chirpstack_v4",
        topic: "application/{application}/device/{device}/event/up",
        data_source: Some("{device}"),
        format: PayloadFormat::Json,
        values: "object",
        time: Some("time"),
        time_format: TimeFormat::Iso8601,
        metadata_fields: &[
            ("devEui", "deviceInfo.devEui"),
            ("deviceName", "deviceInfo.deviceName"),
            ("fPort", "fPort"),
            ("fCnt", "fCnt"),
            ("rssi", "rxInfo.0.rssi"),
            ("snr", "rxInfo.0.snr"),
            ("gatewayId", "rxInfo.0.gatewayId"),
        ],
        ..BASE
    },
    // https://owntracks.org/booklet/tech/json/ : `owntracks/<user>/<device>`,
    // a location with `tst` in Unix seconds; `_type`, `tid`, `t` and other
    // text go to metadata.
    Preset {
        name: "owntracks",
        topic: "owntracks/{user}/{device}",
        data_source: Some("{device}"),
        format: PayloadFormat::Json,
        time: Some("tst"),
        time_format: TimeFormat::UnixS,
        ignore: &["created_at"],
        text: TextPolicy::Metadata,
        metadata: &[("user", "{user}")],
        ..BASE
    },
    // https://github.com/influxdata/telegraf/tree/master/plugins/outputs/mqtt :
    // `telegraf/<host>/<plugin>`, line protocol, several lines per message.
    Preset {
        name: "telegraf",
        topic: "telegraf/{host}/{plugin}",
        format: PayloadFormat::Influx,
        metadata: &[("host", "{host}")],
        ..BASE
    },
];

/// The preset of this name.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name.trim())
}

pub fn names() -> Vec<String> {
    PRESETS.iter().map(|p| p.name.to_owned()).collect()
}
