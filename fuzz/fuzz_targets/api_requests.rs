//! See `dakkio_gateway::fuzzing::check_api_request` for the input layout and
//! the invariants checked ("201 ⇒ everything sent is stored exactly"; no
//! request panics or gets a 5xx), shared with the regression replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dakkio_gateway::fuzzing::check_api_request(data);
});
