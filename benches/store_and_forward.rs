//! Store-and-forward queue costs, on this machine's disk:
//! 1. append rate and bytes written per sample (one record per device batch);
//! 2. drain rate (read, decode, acknowledge);
//! 3. drain time of one hour of backlog of the reference load (3 devices,
//!    10 Hz, 10 float metrics changing every poll) at the default and at an
//!    unlimited `[buffer] drain_rate`.
//!
//! Run: `cargo bench --bench store_and_forward`.

use std::time::Instant;

use fieldmq::config::{BufferPolicy, DEFAULT_DRAIN_RATE};
use fieldmq::core::value::{Quality, Sample, Value};
use fieldmq::store::forward::{DeviceKeys, Forwarder};

const DEVICES: usize = 3;
const METRICS: usize = 10;
const HZ: usize = 10;

fn batch(device: usize, n: u64) -> Vec<Sample> {
    (0..METRICS)
        .map(|metric| Sample {
            device,
            metric,
            value: Some(Value::F32(n as f32 + metric as f32 * 0.5)),
            quality: Quality::Good,
            timestamp_ms: 1_795_000_000_000 + n * 100,
        })
        .collect()
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = BufferPolicy {
        max_size: 1 << 34,
        ..BufferPolicy::default()
    };
    let keys = DeviceKeys::from_keys((0..DEVICES as u32).collect());
    let mut f = Forwarder::open(dir.path(), &policy, keys).expect("open");
    let batches = (3600 * HZ * DEVICES) as u64;
    let started = Instant::now();
    let mut last_sync = Instant::now();
    for n in 0..batches {
        let device = (n % DEVICES as u64) as usize;
        f.store(device, &batch(device, n));
        if last_sync.elapsed() >= policy.sync {
            f.sync();
            last_sync = Instant::now();
        }
    }
    f.sync();
    let append = started.elapsed();
    let samples = batches * METRICS as u64;
    let bytes = dir_bytes(dir.path());
    println!(
        "append: {batches} batches ({samples} samples, one hour of {DEVICES} devices x {HZ} Hz x {METRICS} metrics) in {:.2} s: {:.0} samples/s, {:.2} µs per batch",
        append.as_secs_f64(),
        samples as f64 / append.as_secs_f64(),
        append.as_secs_f64() * 1e6 / batches as f64
    );
    println!(
        "disk: {bytes} bytes, {:.2} bytes per sample ({:.0} bytes per batch of {METRICS})",
        bytes as f64 / samples as f64,
        bytes as f64 / batches as f64
    );
    let started = Instant::now();
    let mut sent = 0u64;
    let mut messages = 0u64;
    loop {
        let d = f.drain(
            1000,
            |_| true,
            |_, s| {
                sent += s.len() as u64;
                messages += 1;
                Some(messages)
            },
        );
        if d.sent == 0 {
            break;
        }
        // The server proves each round at once.
        f.confirmed(messages);
    }
    f.sync();
    let drain = started.elapsed();
    assert_eq!(sent, samples, "every sample drained");
    println!(
        "drain: {samples} samples in {:.2} s: {:.0} samples/s ({:.0} batches/s)",
        drain.as_secs_f64(),
        samples as f64 / drain.as_secs_f64(),
        batches as f64 / drain.as_secs_f64()
    );
    let paced = batches as f64 / f64::from(DEFAULT_DRAIN_RATE);
    println!(
        "one hour of backlog: {:.0} s at the default drain_rate = {DEFAULT_DRAIN_RATE} batches/s (alongside {} live batches/s), {:.2} s unpaced",
        paced,
        DEVICES * HZ,
        drain.as_secs_f64()
    );
}
