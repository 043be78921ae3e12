//! Counters the gateway reports about itself (Sparkplug node metrics, logs).
//!
//! Plain atomics shared by the tasks that count: each counter has one writer
//! kind and readers only take snapshots, so relaxed ordering is enough.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Poll cycles run.
    pub polls: AtomicU64,
    /// Poll cycles in which the device did not answer.
    pub poll_failures: AtomicU64,
    /// Writes carried out on a device.
    pub writes: AtomicU64,
    /// Writes the device refused or did not answer.
    pub write_failures: AtomicU64,
    /// Commands refused before reaching a device (unknown, read-only, wrong type, out of range, malformed).
    pub commands_rejected: AtomicU64,
    /// Messages that could not be handed to the MQTT client (queue full or too large).
    pub messages_dropped: AtomicU64,
    /// The store-and-forward queue could not be opened; the gateway runs without it.
    pub queue_unavailable: std::sync::atomic::AtomicBool,
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::polls`].
    pub polls: u64,
    /// See [`Stats::poll_failures`].
    pub poll_failures: u64,
    /// See [`Stats::writes`].
    pub writes: u64,
    /// See [`Stats::write_failures`].
    pub write_failures: u64,
    /// See [`Stats::commands_rejected`].
    pub commands_rejected: u64,
    /// See [`Stats::messages_dropped`].
    pub messages_dropped: u64,
}

impl Stats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            polls: get(&self.polls),
            poll_failures: get(&self.poll_failures),
            writes: get(&self.writes),
            write_failures: get(&self.write_failures),
            commands_rejected: get(&self.commands_rejected),
            messages_dropped: get(&self.messages_dropped),
        }
    }
}
