//! `cargo fuzz run topic_acl`: see [`fieldmq::fuzz::topic_acl`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldmq::fuzz::topic_acl(data));
