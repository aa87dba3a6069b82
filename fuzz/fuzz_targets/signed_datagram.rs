//! Fuzz target: see `thingsbus_protocol::fuzzing::signed_datagram`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    thingsbus_protocol::fuzzing::signed_datagram(data);
});
