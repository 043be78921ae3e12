//! `cargo fuzz run config_text`: see [`fieldmq::fuzz::config_text`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldmq::fuzz::config_text(data));
