//! See `dakkio_gateway::fuzzing::check_serial_framing` for the input layout and the
//! invariants checked (shared with `tests/fuzz_regressions.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dakkio_gateway::fuzzing::check_serial_framing(data);
});
