//! `[[serial]]`: serial ports. (Filled in by serial ingest.)

use serde::Deserialize;

use super::{Bucket, Ctx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSerial {}

#[derive(Debug, Clone, PartialEq)]
pub struct SerialConfig {}

pub(crate) fn validate_all(
    raw: Vec<RawSerial>,
    _ctx: &mut Ctx,
    _buckets: &[Bucket],
) -> Vec<SerialConfig> {
    raw.into_iter().map(|_| SerialConfig {}).collect()
}
