//! Fuzz target: see `thingsbus_protocol::fuzzing::json_input`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    thingsbus_protocol::fuzzing::json_input(data);
});
