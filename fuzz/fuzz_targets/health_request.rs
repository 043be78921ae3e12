//! `cargo fuzz run health_request`: see [`fieldmq::fuzz::health_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldmq::fuzz::health_request(data));
