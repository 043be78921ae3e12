//! `cargo fuzz run state_json`: see [`fieldmq::fuzz::state_json`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldmq::fuzz::state_json(data));
