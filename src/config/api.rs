//! `[api]`: the local dakkio API. (Filled in by the API.)

use serde::Deserialize;

use super::{Bucket, Ctx};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApiConfig {}

impl RawApi {
    pub(crate) fn validate(self, _ctx: &mut Ctx, _buckets: &[Bucket]) -> ApiConfig {
        ApiConfig {}
    }
}
