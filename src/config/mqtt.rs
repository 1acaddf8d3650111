//! `[mqtt]` and `[[mqtt.routes]]`: the MQTT input. (Filled in by MQTT ingest.)

use serde::Deserialize;

use super::{Bucket, Ctx};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MqttConfig {}

impl RawMqtt {
    pub(crate) fn validate(self, _ctx: &mut Ctx, _buckets: &[Bucket]) -> MqttConfig {
        MqttConfig {}
    }
}
