//! Replays every fuzz target's committed corpus (`fuzz/corpus/<target>/`)
//! through the same entry points the fuzzers drive, on stable Rust: what a
//! fuzzing run once found or kept stays covered by every test run.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| run(&input));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        replayed += 1;
    }
    assert!(replayed > 0, "{target}: the corpus is empty");
}

#[test]
fn modbus_responses() {
    replay("modbus_response", fieldmq::fuzz::modbus_response);
}

#[test]
fn sparkplug_commands() {
    replay("sparkplug_command", fieldmq::fuzz::sparkplug_command);
}

#[test]
fn plain_set_payloads() {
    replay("plain_set", fieldmq::fuzz::plain_set);
}

#[test]
fn state_payloads() {
    replay("state_json", fieldmq::fuzz::state_json);
}

#[test]
fn queue_records_and_segments() {
    replay("queue_records", fieldmq::fuzz::queue_records);
}

#[test]
fn config_files() {
    replay("config_text", fieldmq::fuzz::config_text);
}

#[test]
fn topic_filters_against_rmqtt() {
    replay("topic_acl", fieldmq::fuzz::topic_acl);
}

#[test]
fn health_requests() {
    replay("health_request", fieldmq::fuzz::health_request);
}
