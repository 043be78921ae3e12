//! `cargo fuzz run plain_set`: see [`fieldmq::fuzz::plain_set`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldmq::fuzz::plain_set(data));
