//! The gateway's one counter system: every count, level and duration it
//! keeps about itself is recorded here, through these functions and
//! [`Counters`], and nowhere else.
//!
//! There are two readers. The profiles report the totals as node metrics
//! (Sparkplug `Node Info/...`, the plain status), so the totals live in
//! [`Counters`], plain atomics a reader can take a snapshot of (each has one
//! writer kind, so relaxed ordering is enough). `/metrics` exports everything
//! in Prometheus form: the labelled series (per device, sink or reason) are
//! recorded through the `metrics` facade, which the exporter renders and which
//! costs next to nothing when `[health]` is off; at each scrape
//! [`export_totals`] hands it the totals, so both readers see the same numbers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::core::value::Fault;

/// Running totals since start.
#[derive(Debug, Default)]
pub struct Counters {
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
    /// Each Modbus device's poll cycles, by device name (names survive a reload).
    polls_by_device: Mutex<HashMap<String, PollTally>>,
}

/// One device's poll cycles since start, as the status page shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PollTally {
    /// Cycles run (one per scan class due).
    pub cycles: u64,
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed (timeout, exception, link, malformed answer).
    pub failed_requests: u64,
    /// How long the last cycle took.
    pub last_cycle: Duration,
    /// The period of the scan class polled last.
    pub period: Duration,
    /// The last failed request's fault, and when (ms since the Unix epoch).
    pub last_fault: Option<(Fault, u64)>,
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    /// See [`Counters::polls`].
    pub polls: u64,
    /// See [`Counters::poll_failures`].
    pub poll_failures: u64,
    /// See [`Counters::writes`].
    pub writes: u64,
    /// See [`Counters::write_failures`].
    pub write_failures: u64,
    /// See [`Counters::commands_rejected`].
    pub commands_rejected: u64,
    /// See [`Counters::messages_dropped`].
    pub messages_dropped: u64,
}

impl Counters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One poll cycle of `device`, of the scan class with `period`, took
    /// `took` for `requests` requests, of which these failed.
    pub fn cycle<'a>(
        &self,
        device: &str,
        period: Duration,
        took: Duration,
        requests: usize,
        faults: impl Iterator<Item = &'a Fault>,
    ) {
        let mut tallies = self
            .polls_by_device
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Looked up before inserting: no name is copied on the hot path.
        let tally = match tallies.get_mut(device) {
            Some(tally) => tally,
            None => tallies.entry(device.to_owned()).or_default(),
        };
        tally.cycles += 1;
        tally.requests += requests as u64;
        tally.last_cycle = took;
        tally.period = period;
        for fault in faults {
            tally.failed_requests += 1;
            tally.last_fault = Some((fault.clone(), crate::core::value::now_ms()));
        }
    }

    /// Every device's poll tally, by name.
    pub fn polls_by_device(&self) -> HashMap<String, PollTally> {
        self.polls_by_device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            polls: get(&self.polls),
            poll_failures: get(&self.poll_failures),
            writes: get(&self.writes),
            write_failures: get(&self.write_failures),
            commands_rejected: get(&self.commands_rejected),
            messages_dropped: get(&self.messages_dropped),
        }
    }
}

/// Histogram: seconds one poll cycle of a device took; label `device`.
pub const POLL_DURATION: &str = "fieldmq_poll_duration_seconds";
/// Counter: failed requests of poll cycles; labels `device` and `fault`
/// (`timeout`, `exception`, `link`, `malformed`, `offline`).
pub const POLL_ERRORS: &str = "fieldmq_poll_errors_total";
/// Gauge: 1 while a device answers, 0 while it is offline; label `device`.
pub const DEVICE_UP: &str = "fieldmq_device_up";
/// Gauge: samples waiting in the store-and-forward queue.
pub const BUFFER_SAMPLES: &str = "fieldmq_buffer_samples";
/// Counter: samples the store-and-forward queue had to drop (full, or unreadable).
pub const BUFFER_DROPPED: &str = "fieldmq_buffer_dropped_samples_total";
/// Gauge: 1 while the store-and-forward queue is usable, 0 when it could
/// not be opened and the gateway runs without it.
pub const BUFFER_UP: &str = "fieldmq_buffer_up";
/// Gauge: 1 while the uplink is connected (and, for Sparkplug, born).
pub const UPLINK_UP: &str = "fieldmq_uplink_up";
/// Counter: messages handed to a server; label `sink` (`upstream`, `local`).
pub const MESSAGES_PUBLISHED: &str = "fieldmq_messages_published_total";
/// Counter: what the local broker refused; label `reason` (`login`, `will`,
/// `session_taken`, `quota`, `anonymous_persistent`, `retained_full`,
/// `publish`, `subscribe`).
pub const BROKER_REFUSED: &str = "fieldmq_broker_refused_total";
/// Counter: messages the local broker dropped before delivery; label
/// `reason` (`queue_full`, `expired`, `other`).
pub const BROKER_DROPPED: &str = "fieldmq_broker_dropped_messages_total";

/// A device answers (`true`) or is offline.
pub fn device_up(device: &str, up: bool) {
    ::metrics::gauge!(DEVICE_UP, "device" => device.to_owned()).set(if up { 1.0 } else { 0.0 });
}

/// One poll cycle of `device` took `took`, and these requests of it failed.
pub fn cycle_recorded<'a>(device: &str, took: Duration, faults: impl Iterator<Item = &'a Fault>) {
    ::metrics::histogram!(POLL_DURATION, "device" => device.to_owned()).record(took.as_secs_f64());
    for fault in faults {
        ::metrics::counter!(POLL_ERRORS, "device" => device.to_owned(), "fault" => fault.kind())
            .increment(1);
    }
}

/// The store-and-forward queue's backlog, its drops since start, and whether it is usable.
pub fn queue_state(backlog: u64, dropped: u64, usable: bool) {
    ::metrics::gauge!(BUFFER_SAMPLES).set(backlog as f64);
    ::metrics::counter!(BUFFER_DROPPED).absolute(dropped);
    ::metrics::gauge!(BUFFER_UP).set(if usable { 1.0 } else { 0.0 });
}

/// The uplink is up (connected and, for Sparkplug, born) or not.
pub fn uplink_up(up: bool) {
    ::metrics::gauge!(UPLINK_UP).set(if up { 1.0 } else { 0.0 });
}

/// A message was handed to the server of `sink` (`upstream` or `local`).
pub fn published(sink: &'static str) {
    ::metrics::counter!(MESSAGES_PUBLISHED, "sink" => sink).increment(1);
}

/// The local broker refused something for `reason`.
pub fn broker_refused(reason: &'static str) {
    ::metrics::counter!(BROKER_REFUSED, "reason" => reason).increment(1);
}

/// The local broker dropped a message before delivery, for `reason`.
pub fn broker_dropped(reason: &'static str) {
    ::metrics::counter!(BROKER_DROPPED, "reason" => reason).increment(1);
}

/// Hands the totals to the exporter (at each scrape).
pub fn export_totals(s: CounterSnapshot) {
    ::metrics::counter!("fieldmq_polls_total").absolute(s.polls);
    ::metrics::counter!("fieldmq_poll_failures_total").absolute(s.poll_failures);
    ::metrics::counter!("fieldmq_writes_total").absolute(s.writes);
    ::metrics::counter!("fieldmq_write_failures_total").absolute(s.write_failures);
    ::metrics::counter!("fieldmq_commands_rejected_total").absolute(s.commands_rejected);
    ::metrics::counter!("fieldmq_messages_dropped_total").absolute(s.messages_dropped);
}
