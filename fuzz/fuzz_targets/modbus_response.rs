//! `cargo fuzz run modbus_response`: see [`fieldmq::fuzz::modbus_response`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldmq::fuzz::modbus_response(data));
