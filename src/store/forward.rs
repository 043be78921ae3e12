//! Store-and-forward: what the uplink cannot take now waits on disk and is
//! sent later, oldest first, flagged historical.
//!
//! The publisher decides *whether* a batch of samples goes live or to the
//! queue (live only when the profile is ready for that device); this module
//! keeps the queue, the replay window and the drain position. It does no
//! networking: the caller hands it a `send` function for each drained batch.
//!
//! Nothing is considered delivered just because it was handed to the MQTT
//! client: Sparkplug data is QoS 0, and a dead TCP link is noticed only after
//! up to two keep-alive periods. Delivered is what the server has proven it
//! received. The uplink numbers the messages it publishes on a connection
//! (1, 2, …) and tells each batch's number here; the connection reports how
//! far the server's answers prove receipt (`sink::uplink::receipts`). So:
//! - batches sent live are kept in memory (the replay window) until proven,
//!   and written to the queue when the link is lost: only the unproven tail
//!   is sent again, flagged historical;
//! - drained batches stay in the queue until proven; a lost link rewinds the
//!   drain to the first unproven batch.
//!
//! A Sparkplug device that is not born in the current session may not get
//! DDATA (tck-id-payloads-ddata-order), so its batches are moved to the back
//! of the queue instead of stalling everyone else's; once a pass over the
//! queue has sent nothing, the drain waits until a device becomes ready.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use crate::config::{BufferPolicy, Config};
use crate::core::value::{DeviceId, Sample};
use crate::store::queue::{self, Position, Queue, QueueError, sample};

/// Memory the replay window may use. Proof normally comes within a
/// confirmation interval; a window this full means the server stopped
/// answering, so the oldest batches move to the queue (sent again later,
/// perhaps twice, but never lost).
const WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// Which device a stored batch belongs to, by [`crate::config::Device::key`].
#[derive(Debug, Clone, Default)]
pub struct DeviceKeys {
    by_device: Vec<u32>,
    by_key: HashMap<u32, DeviceId>,
}

impl DeviceKeys {
    /// The keys of `config`'s devices.
    pub fn of(config: &Config) -> DeviceKeys {
        DeviceKeys::from_keys(config.devices.iter().map(|d| d.key()).collect())
    }

    /// Device `i` has key `keys[i]`.
    pub fn from_keys(keys: Vec<u32>) -> DeviceKeys {
        let by_key = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        DeviceKeys {
            by_device: keys,
            by_key,
        }
    }
}

/// The queue, the replay window and the drain state.
#[derive(Debug)]
pub struct Forwarder {
    buffer: Queue,
    keys: DeviceKeys,
    /// Live batches not yet proven received, encoded, with their message number.
    window: VecDeque<(u64, Vec<u8>)>,
    window_bytes: usize,
    /// The highest message number told on this connection.
    latest: u64,
    /// Message numbers up to this one are proven received.
    proven: u64,
    /// After the last batch handed out by the drain.
    read: Position,
    /// Drained, not yet proven: the number of each batch's last message and
    /// the position after it.
    in_flight: VecDeque<(u64, Position)>,
    /// Devices whose batches are being moved back in this pass.
    deferred: HashSet<DeviceId>,
    /// Where this pass's moved batches begin; reaching it ends the pass.
    pass_end: Option<Position>,
    /// Whether this pass sent anything.
    progressed: bool,
    /// A whole pass sent nothing: see [`Stall`].
    stalled: Option<Stall>,
    /// Samples lost to unreadable records or disk errors.
    lost: u64,
}

/// Why the drain waits after a pass that sent nothing. Another pass could
/// only move the same batches to the back again, rewriting them on disk; so
/// it waits until one of the devices it waited for is ready, new records
/// arrive, or [`Forwarder::readiness_changed`] says everything may differ.
/// A device that stays dead therefore costs no writes, however long.
#[derive(Debug)]
struct Stall {
    /// The devices whose batches the pass moved.
    on: HashSet<DeviceId>,
    /// The end of the queue when the drain stalled.
    tail: Position,
}

/// What one drain step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Batches handed to `send`.
    pub sent: usize,
    /// Batches moved to the back because their device was not ready.
    pub deferred: usize,
}

impl Forwarder {
    /// Opens the queue in `dir`.
    pub fn open(
        dir: &Path,
        policy: &BufferPolicy,
        keys: DeviceKeys,
    ) -> Result<Forwarder, QueueError> {
        let buffer = Queue::open(dir, policy.max_size, policy.overflow, sample::count)?;
        Ok(Forwarder::with(buffer, keys))
    }

    /// A forwarder without a queue, for when [`Forwarder::open`] failed:
    /// what cannot go out now is dropped and counted.
    pub fn unavailable(keys: DeviceKeys) -> Forwarder {
        Forwarder::with(Queue::unavailable(sample::count), keys)
    }

    /// Whether this forwarder runs without a queue.
    pub fn is_unavailable(&self) -> bool {
        self.buffer.is_unavailable()
    }

    fn with(buffer: Queue, keys: DeviceKeys) -> Forwarder {
        Forwarder {
            read: buffer.head(),
            buffer,
            keys,
            window: VecDeque::new(),
            window_bytes: 0,
            latest: 0,
            proven: 0,
            in_flight: VecDeque::new(),
            deferred: HashSet::new(),
            pass_end: None,
            progressed: false,
            stalled: None,
            lost: 0,
        }
    }

    /// The device map changed (a reload): batches are read back by the new keys.
    pub fn remap(&mut self, keys: DeviceKeys) {
        self.keys = keys;
    }

    fn record(&mut self, device: DeviceId, samples: &[Sample]) -> Option<Vec<u8>> {
        match self.keys.by_device.get(device) {
            Some(key) => Some(queue::sample::encode(*key, samples)),
            None => {
                self.lost += samples.len() as u64;
                tracing::error!(device, "samples of a device not in the config; dropped");
                None
            }
        }
    }

    /// Queues samples that cannot go out now.
    pub fn store(&mut self, device: DeviceId, samples: &[Sample]) {
        if samples.is_empty() {
            return;
        }
        if let Some(record) = self.record(device, samples) {
            self.append(&record);
        }
    }

    fn append(&mut self, record: &[u8]) {
        if let Err(e) = self.buffer.append(record) {
            self.lost += sample::count(record);
            tracing::error!(error = %e, "cannot write to the store-and-forward queue; samples lost");
        }
    }

    /// Samples went out live as message number `seq` of this connection:
    /// keep them until the server proves it has them.
    pub fn sent_live(&mut self, device: DeviceId, samples: &[Sample], seq: u64) {
        self.latest = self.latest.max(seq);
        if samples.is_empty() || seq <= self.proven {
            return;
        }
        let Some(record) = self.record(device, samples) else {
            return;
        };
        self.window_bytes += record.len();
        self.window.push_back((seq, record));
        while self.window_bytes > WINDOW_BYTES {
            let Some((_, record)) = self.window.pop_front() else {
                break;
            };
            self.window_bytes -= record.len();
            self.append(&record);
        }
    }

    /// The server proved it received this connection's messages up to
    /// number `upto`: their batches are delivered.
    pub fn confirmed(&mut self, upto: u64) {
        self.proven = self.proven.max(upto);
        while let Some((seq, record)) = self.window.front() {
            if *seq > self.proven {
                break;
            }
            self.window_bytes -= record.len();
            self.window.pop_front();
        }
        self.settle();
    }

    /// Acknowledges the drained batches proven received.
    fn settle(&mut self) {
        let mut acked = None;
        while let Some(&(seq, pos)) = self.in_flight.front() {
            if seq > self.proven {
                break;
            }
            acked = Some(pos);
            self.in_flight.pop_front();
        }
        if let Some(pos) = acked
            && let Err(e) = self.buffer.ack(pos)
        {
            tracing::error!(error = %e, "cannot acknowledge sent records; they will be sent again");
        }
    }

    /// The link died: what was not proven received is queued again, live
    /// batches after the backlog (they are newer), and the drain rewinds.
    /// The next connection numbers its messages from 1 again.
    pub fn link_lost(&mut self) {
        let window = std::mem::take(&mut self.window);
        self.window_bytes = 0;
        for (_, record) in window {
            self.append(&record);
        }
        self.in_flight.clear();
        self.latest = 0;
        self.proven = 0;
        self.read = self.buffer.head();
        self.buffer.handed_out(self.read);
        self.end_pass();
        self.stalled = None;
    }

    /// Any device's readiness may have changed (a new connection, a new
    /// device map): a stalled drain goes on. The drain notices a device it
    /// waited for becoming ready by itself.
    pub fn readiness_changed(&mut self) {
        self.stalled = None;
    }

    /// Whether the drain waits for a device or new records (see [`Stall`]).
    pub fn is_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    fn end_pass(&mut self) {
        self.deferred.clear();
        self.pass_end = None;
        self.progressed = false;
    }

    /// Sends up to `max` batches of the backlog, oldest first. `ready` says
    /// whether a device may get data now; `send` publishes a batch and
    /// returns the number of its last message on this connection, or `None`
    /// when the uplink cannot take it (the batch stays queued and the drain
    /// stops).
    pub fn drain(
        &mut self,
        max: usize,
        ready: impl Fn(DeviceId) -> bool,
        mut send: impl FnMut(DeviceId, &[Sample]) -> Option<u64>,
    ) -> Drained {
        let mut done = Drained::default();
        if let Some(stall) = &self.stalled {
            if self.buffer.tail() == stall.tail && !stall.on.iter().any(|&d| ready(d)) {
                return done;
            }
            self.stalled = None;
        }
        let records = match self.buffer.peek_from(self.read, max) {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the store-and-forward queue");
                return done;
            }
        };
        // Moved batches are appended after the loop: an append may make room
        // by dropping the segment the records being looked at come from.
        let mut moved = Vec::new();
        let mut stall = None;
        for (record, after) in records {
            if self.pass_end.is_some_and(|end| self.read >= end) {
                // A pass ends with this call, so the batches it moved are
                // behind it before the next pass looks at them.
                stall = (!self.progressed).then(|| self.deferred.clone());
                self.end_pass();
                break;
            }
            let keys = &self.keys.by_key;
            let (device, samples) = match sample::decode(&record, |k| keys.get(&k).copied()) {
                Ok(batch) => batch,
                Err(e) => {
                    self.lost += sample::count(&record);
                    tracing::error!(error = %e, "record in the store-and-forward queue skipped");
                    self.handed_out(self.latest, after);
                    continue;
                }
            };
            if self.deferred.contains(&device) || !ready(device) {
                if self.pass_end.is_none() {
                    self.pass_end = Some(self.buffer.tail());
                }
                self.deferred.insert(device);
                moved.push(record);
                self.handed_out(self.latest, after);
                done.deferred += 1;
                continue;
            }
            let Some(seq) = send(device, &samples) else {
                break;
            };
            self.latest = self.latest.max(seq);
            self.progressed = true;
            self.handed_out(seq, after);
            done.sent += 1;
        }
        for record in moved {
            self.append(&record);
        }
        if let Some(on) = stall {
            self.stalled = Some(Stall {
                on,
                tail: self.buffer.tail(),
            });
        }
        // Batches skipped or moved are delivered once all before them are.
        self.settle();
        done
    }

    /// The drain is past the batch ending at `after`, delivered once
    /// message `seq` is proven.
    fn handed_out(&mut self, seq: u64, after: Position) {
        self.read = after;
        self.buffer.handed_out(after);
        self.in_flight.push_back((seq, after));
    }

    /// Makes the queue durable against power loss; call every `[buffer] sync`.
    pub fn sync(&mut self) {
        if let Err(e) = self.buffer.sync() {
            tracing::error!(error = %e, "cannot sync the store-and-forward queue");
        }
    }

    /// The periodic sync: handed to the queue's own thread, so the caller
    /// goes on taking in samples meanwhile.
    pub fn sync_behind(&mut self) {
        if let Err(e) = self.buffer.sync_behind() {
            tracing::error!(error = %e, "cannot sync the store-and-forward queue");
        }
    }

    /// Samples waiting in the queue (including those sent but not yet acknowledged).
    pub fn backlog(&self) -> u64 {
        self.buffer.weight()
    }

    /// Whether the drain has something to send.
    pub fn has_backlog(&self) -> bool {
        self.stalled.is_none() && self.read < self.buffer.tail()
    }

    /// Bytes written to the queue since open.
    pub fn written(&self) -> u64 {
        self.buffer.written()
    }

    /// Samples lost since open: dropped by the size limit, or unreadable or unwritable.
    pub fn dropped(&self) -> u64 {
        self.buffer.dropped() + self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overflow;
    use crate::core::value::{Quality, Value};
    use std::time::Duration;

    /// Devices 0..8, keyed as a config would.
    fn keys() -> DeviceKeys {
        DeviceKeys::from_keys((0..8).map(|d| 0xD0_0000 + d).collect())
    }

    fn policy() -> BufferPolicy {
        BufferPolicy {
            max_size: 1 << 30,
            sync: Duration::from_secs(1),
            overflow: Overflow::DropOldest,
            drain_rate: 100,
        }
    }

    fn batch(device: DeviceId, n: u32) -> Vec<Sample> {
        vec![Sample {
            device,
            metric: 0,
            value: Some(Value::U32(n)),
            quality: Quality::Good,
            timestamp_ms: u64::from(n),
        }]
    }

    fn number(samples: &[Sample]) -> u32 {
        match samples.first().and_then(|s| s.value.clone()) {
            Some(Value::U32(n)) => n,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Drains everything `ready` allows, as (device, number) pairs; the
    /// batches are messages 1, 2, … of the connection.
    fn drain_all(
        f: &mut Forwarder,
        ready: impl Fn(DeviceId) -> bool + Copy,
    ) -> Vec<(DeviceId, u32)> {
        let mut out = Vec::new();
        for _ in 0..100 {
            let d = f.drain(7, ready, |device, samples| {
                out.push((device, number(samples)));
                Some(out.len() as u64)
            });
            if d == Drained::default() {
                break;
            }
        }
        out
    }

    fn numbers(out: Vec<(DeviceId, u32)>) -> Vec<u32> {
        out.into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn stored_batches_come_back_in_order_and_leave_once_proven_received() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Forwarder::open(dir.path(), &policy(), keys()).unwrap();
        for n in 0..50 {
            f.store(n as usize % 3, &batch(n as usize % 3, n));
        }
        assert_eq!(f.backlog(), 50);
        let out = drain_all(&mut f, |_| true);
        assert_eq!(numbers(out), (0..50).collect::<Vec<_>>());
        assert!(!f.has_backlog());
        assert_eq!(f.backlog(), 50, "not acknowledged before proven");
        f.confirmed(30);
        assert_eq!(f.backlog(), 20, "messages 1..=30 carried the first 30");
        f.confirmed(50);
        assert_eq!(f.backlog(), 0);
    }

    #[test]
    fn a_lost_link_resends_unproven_drained_batches_then_the_live_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Forwarder::open(dir.path(), &policy(), keys()).unwrap();
        for n in 0..20 {
            f.store(0, &batch(0, n));
        }
        let first = drain_all(&mut f, |_| true);
        assert_eq!(first.len(), 20);
        // Live data while the backlog went out; then the link dies unnoticed.
        f.sent_live(0, &batch(0, 100), 21);
        f.sent_live(0, &batch(0, 101), 22);
        f.link_lost();
        f.store(0, &batch(0, 102));
        let mut expected: Vec<u32> = (0..20).collect();
        expected.extend([100, 101, 102]);
        assert_eq!(
            numbers(drain_all(&mut f, |_| true)),
            expected,
            "nothing lost, still in order"
        );
    }

    #[test]
    fn only_the_unproven_tail_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Forwarder::open(dir.path(), &policy(), keys()).unwrap();
        for n in 0..10 {
            f.store(0, &batch(0, n));
        }
        // Drained as messages 1..=10, then live data as 11..=15.
        drain_all(&mut f, |_| true);
        for n in 0..5u32 {
            f.sent_live(1, &batch(1, 100 + n), 11 + u64::from(n));
        }
        // The answer to a ping sent after message 8.
        f.confirmed(8);
        f.link_lost();
        assert_eq!(f.backlog(), 2 + 5);
        let mut expected = vec![(0, 8), (0, 9)];
        expected.extend((100..105).map(|n| (1, n)));
        assert_eq!(drain_all(&mut f, |_| true), expected);
        // The next connection counts from 1 again.
        f.confirmed(2);
        assert_eq!(f.backlog(), 5);
        f.confirmed(7);
        assert_eq!(f.backlog(), 0);
    }

    #[test]
    fn proven_live_batches_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Forwarder::open(dir.path(), &policy(), keys()).unwrap();
        for n in 1..=5u32 {
            f.sent_live(0, &batch(0, n), u64::from(n));
        }
        f.confirmed(3);
        f.link_lost();
        assert_eq!(drain_all(&mut f, |_| true), vec![(0, 4), (0, 5)]);
    }

    #[test]
    fn a_window_the_server_never_answers_for_spills_to_the_queue_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Forwarder::open(dir.path(), &policy(), keys()).unwrap();
        let big = |n: u32| -> Vec<Sample> { (0..2000).map(|_| batch(0, n)[0].clone()).collect() };
        let mut seq = 0;
        while f.backlog() == 0 {
            seq += 1;
            f.sent_live(0, &big(seq as u32), seq);
        }
        assert!(
            f.window_bytes <= WINDOW_BYTES,
            "the window holds at most {WINDOW_BYTES} bytes"
        );
        f.link_lost();
        let out = numbers(drain_all(&mut f, |_| true));
        let expected: Vec<u32> = (1..=seq as u32).collect();
        assert_eq!(
            out, expected,
            "spilled then replayed, nothing lost or repeated"
        );
    }

    #[test]
    fn an_unready_device_waits_without_holding_up_the_others_and_keeps_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Forwarder::open(dir.path(), &policy(), keys()).unwrap();
        for n in 0..30 {
            let device = n as usize % 2;
            f.store(device, &batch(device, n));
        }
        let out = drain_all(&mut f, |d| d == 0);
        assert_eq!(
            out,
            (0..30).step_by(2).map(|n| (0, n)).collect::<Vec<_>>(),
            "device 0 drains past device 1's batches"
        );
        assert!(
            !f.has_backlog(),
            "a pass that sent nothing stalls the drain"
        );
        f.readiness_changed();
        let out = drain_all(&mut f, |_| true);
        assert_eq!(
            out,
            (1..30).step_by(2).map(|n| (1, n)).collect::<Vec<_>>(),
            "device 1's batches follow, in their order"
        );
    }

    #[test]
    fn a_device_that_stays_dead_costs_no_rewriting() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Forwarder::open(dir.path(), &policy(), keys()).unwrap();
        for n in 0..30 {
            let device = n as usize % 2;
            f.store(device, &batch(device, n));
        }
        let sent = drain_all(&mut f, |d| d == 0);
        assert_eq!(sent.len(), 15);
        let after_stall = f.written();
        // Ten minutes of drain ticks with device 1 still dead: not a byte.
        for tick in 0..6000u64 {
            f.drain(100, |d| d == 0, |_, _| Some(tick));
        }
        assert_eq!(f.written(), after_stall, "stored batches were rewritten");
        // Device 1 comes back: its batches go out, in order, with no call
        // to readiness_changed needed.
        let mut late = Vec::new();
        for _ in 0..10 {
            f.drain(
                100,
                |_| true,
                |d, s| {
                    late.push((d, number(s)));
                    Some(0)
                },
            );
        }
        assert_eq!(late, (1..30).step_by(2).map(|n| (1, n)).collect::<Vec<_>>());
        // New records wake a stalled drain too.
        let mut g = Forwarder::open(&dir.path().join("g"), &policy(), keys()).unwrap();
        g.store(1, &batch(1, 1));
        drain_all(&mut g, |d| d == 0);
        g.store(0, &batch(0, 2));
        assert_eq!(drain_all(&mut g, |d| d == 0), vec![(0, 2)]);
    }

    #[test]
    fn a_full_queue_while_draining_counts_only_what_never_went_out() {
        let dir = tempfile::tempdir().unwrap();
        let small = BufferPolicy {
            max_size: 262_144,
            ..policy()
        };
        let mut f = Forwarder::open(dir.path(), &small, keys()).unwrap();
        let mut stored = 0;
        let mut sent = HashSet::new();
        // Device 1 is not born yet: its batches are moved to the back, and
        // new batches keep arriving, so the queue overflows mid-drain.
        for round in 0..200u32 {
            for k in 0..100 {
                let n = round * 100 + k;
                let device = n as usize % 2;
                f.store(device, &batch(device, n));
                stored += 1;
            }
            f.drain(
                50,
                |d| d == 0,
                |_, s| {
                    sent.insert(number(s));
                    Some(0)
                },
            );
        }
        assert!(f.dropped() > 0, "the queue overflowed");
        f.readiness_changed();
        let mut rest = HashSet::new();
        while f.has_backlog() {
            f.drain(
                1000,
                |_| true,
                |_, s| {
                    rest.insert(number(s));
                    Some(0)
                },
            );
        }
        assert!(sent.is_disjoint(&rest), "nothing sent twice");
        assert_eq!(
            sent.len() as u64 + rest.len() as u64 + f.dropped(),
            stored,
            "every batch was sent, is still queued or is counted as dropped, once"
        );
    }

    #[test]
    fn a_refused_send_keeps_the_batch_for_the_next_drain() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Forwarder::open(dir.path(), &policy(), keys()).unwrap();
        for n in 0..5 {
            f.store(0, &batch(0, n));
        }
        let mut took = Vec::new();
        let d = f.drain(
            10,
            |_| true,
            |_, s| {
                if took.len() == 2 {
                    return None;
                }
                took.push(number(s));
                Some(took.len() as u64)
            },
        );
        assert_eq!(d.sent, 2);
        let rest: Vec<u32> = drain_all(&mut f, |_| true)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(rest, vec![2, 3, 4]);
    }

    #[test]
    fn the_queue_survives_a_reopen_and_a_crash_only_repeats() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut f = Forwarder::open(dir.path(), &policy(), keys()).unwrap();
            for n in 0..10 {
                f.store(0, &batch(0, n));
            }
            drain_all(&mut f, |_| true);
            // Dropped without sync or acknowledgement, as kill -9 would.
        }
        let mut f = Forwarder::open(dir.path(), &policy(), keys()).unwrap();
        let out: Vec<u32> = drain_all(&mut f, |_| true)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
    }
}
