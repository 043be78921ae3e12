//! `cargo fuzz run sparkplug_command`: see [`fieldmq::fuzz::sparkplug_command`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldmq::fuzz::sparkplug_command(data));
