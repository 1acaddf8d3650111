//! `[uplink]`: forwarding to dakkio. (Filled in by the uplink.)

use serde::Deserialize;

use super::{Bucket, Ctx};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUplink {}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct UplinkConfig {}

impl RawUplink {
    pub(crate) fn validate(self, _ctx: &mut Ctx, _buckets: &[Bucket]) -> UplinkConfig {
        UplinkConfig {}
    }
}
