//! `cargo fuzz run queue_records`: see [`fieldmq::fuzz::queue_records`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldmq::fuzz::queue_records(data));
