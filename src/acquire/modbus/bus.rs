//! The task that owns one bus and polls its devices on their schedules.
//!
//! A bus carries one transaction at a time, so one task per bus is the
//! natural arbiter: it always serves the device whose poll is due first.
//! Schedules keep their phase: a cycle that overruns skips the ticks it
//! missed instead of firing them in a burst. A device that fails
//! `offline_after` cycles in a row is marked offline and then tried only with
//! exponential backoff, so a dead unit costs its line one timeout per backoff
//! period and the live units keep their rate.

use crate::acquire::TaskChannels;
use crate::core::event::DeviceEvent;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::acquire::deadband::ChangeFilter;
use crate::acquire::modbus::cycle::{self, Cycle};
use crate::acquire::modbus::link::{IDENTIFICATION_PARTS, Link};
use crate::acquire::modbus::plan::ReadPlan;
use crate::config::{Config, Device};
use crate::core::identity::Identity;
use crate::core::value::{DeviceId, Fault, Quality, Sample};
use crate::core::write::Write;
use crate::ops::backoff::Backoff;
use crate::ops::liveness::Pulse;
use crate::ops::metrics;
use crate::ops::metrics::Counters;

/// The shortest wait before retrying an offline device. Starting the backoff
/// at a fast poll period would let a dead unit take most of its line's time
/// in the first seconds after it died.
const OFFLINE_FIRST_RETRY: Duration = Duration::from_secs(1);

/// What is known of one device, whatever its scan classes.
struct Unit {
    id: DeviceId,
    unit: u8,
    filter: ChangeFilter,
    failures: u32,
    /// `None` until the first cycle decides it.
    online: Option<bool>,
    retry: Backoff,
}

/// One scan class of a device: the metrics it reads at one period.
struct Slot {
    /// Index into [`BusTask::units`].
    unit: usize,
    period: Duration,
    plan: ReadPlan,
    next_due: Instant,
}

/// Polls every device of one bus until shut down.
pub struct BusTask {
    config: Arc<Config>,
    link: Link,
    units: Vec<Unit>,
    slots: Vec<Slot>,
    events: mpsc::Sender<DeviceEvent<Config>>,
    writes: mpsc::Receiver<Write>,
    stats: Arc<Counters>,
    pulse: Pulse,
    timeout: Duration,
    shutdown: CancellationToken,
    /// Writes served since a poll fell due and polling fell behind; see
    /// [`WRITES_PER_DUE_POLL`].
    writes_while_due: usize,
}

/// Writes a bus serves while polls are due, before it has caught up with
/// them. Writes go first while no poll is due, so an operator's burst goes
/// out at once; but a write with its read-back costs two transactions, and
/// commands arriving faster than the bus can serve them would otherwise
/// postpone every poll for as long as they keep coming. With one, the polls
/// that fell due wait for at most one write (two transactions, plus the one
/// under way when they fell due) however fast commands come, so devices
/// keep their poll rate; and a bus that polling alone keeps busy still
/// serves a write each time it falls behind, so commands are never shut out.
/// What the bus cannot serve waits in its write queue, and beyond that is
/// refused as busy.
pub const WRITES_PER_DUE_POLL: usize = 1;

impl BusTask {
    /// A task for bus `bus` of `config`, sending what it learns to `events`.
    pub fn new(
        config: Arc<Config>,
        bus: usize,
        channels: TaskChannels,
        shutdown: CancellationToken,
    ) -> Option<BusTask> {
        let settings = config.buses.get(bus)?;
        let link = Link::new(settings);
        // The longest a transaction may take: its timeout plus the quiet time around it.
        let timeout = settings.timeout + settings.turnaround;
        let now = Instant::now();
        let mut units = Vec::new();
        let mut slots = Vec::new();
        for (id, d, modbus) in config
            .devices
            .iter()
            .enumerate()
            .filter_map(|(id, d)| Some((id, d, d.modbus().filter(|m| m.bus == bus)?)))
        {
            for period in d.periods() {
                slots.push(Slot {
                    unit: units.len(),
                    period,
                    plan: ReadPlan::for_period(d, period),
                    next_due: now,
                });
            }
            units.push(Unit {
                id,
                unit: modbus.unit,
                filter: ChangeFilter::new(d.metrics.iter().map(|m| m.deadband).collect()),
                failures: 0,
                online: None,
                retry: Backoff::new(d.poll.max(OFFLINE_FIRST_RETRY), d.max_backoff.max(d.poll)),
            });
        }
        Some(BusTask {
            config,
            link,
            units,
            slots,
            events: channels.events,
            writes: channels.writes,
            stats: channels.stats,
            pulse: channels.pulse,
            timeout,
            shutdown,
            writes_while_due: 0,
        })
    }

    /// Runs until the shutdown token is cancelled or nobody listens any more.
    /// A transaction under way when shutdown comes is finished first.
    pub async fn run(mut self) {
        while let Some(index) = self.next_slot() {
            let due = self.slots[index].next_due;
            self.pulse.by(due);
            let poll_due = due <= Instant::now();
            if !poll_due {
                // The bus has caught up with its polls.
                self.writes_while_due = 0;
            }
            let may_write = self.writes_while_due < WRITES_PER_DUE_POLL;
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                Some(write) = self.writes.recv(), if may_write => {
                    if poll_due {
                        self.writes_while_due += 1;
                    }
                    // The write, and reading the metric back.
                    self.pulse.within(self.timeout * 2);
                    if !self.write(write).await {
                        break;
                    }
                    continue;
                }
                () = sleep_until(due) => {}
            }
            let classes = self.classes_due(index);
            let mut requests: usize = classes
                .iter()
                .map(|&i| self.slots[i].plan.requests().len())
                .sum();
            if classes.len() > 1 || !self.is_online(index) {
                // A device coming online is also asked what it is.
                requests += IDENTIFICATION_PARTS;
            }
            self.pulse.within(self.timeout * (requests as u32 + 1));
            if !self.poll_slot(index).await {
                break;
            }
        }
        self.link.close().await;
    }

    fn is_online(&self, slot: usize) -> bool {
        self.slots
            .get(slot)
            .and_then(|s| self.units.get(s.unit))
            .is_some_and(|u| u.online == Some(true))
    }

    fn next_slot(&self) -> Option<usize> {
        (0..self.slots.len()).min_by_key(|&i| self.slots[i].next_due)
    }

    /// The scan classes a poll of slot `index` reads: that one alone while
    /// its device is online; every class of the device while it is not, so
    /// its `Online` event (and a Sparkplug DBIRTH made from it) carries
    /// every metric.
    fn classes_due(&self, index: usize) -> Vec<usize> {
        let Some(unit) = self.slots.get(index).map(|s| s.unit) else {
            return Vec::new();
        };
        if self.is_online(index) {
            return vec![index];
        }
        (0..self.slots.len())
            .filter(|&i| self.slots[i].unit == unit)
            .collect()
    }

    /// Polls one scan class of a device (every class while it is not
    /// online) and reports; `false` when the receiver is gone.
    async fn poll_slot(&mut self, index: usize) -> bool {
        let config = Arc::clone(&self.config);
        let classes = self.classes_due(index);
        let Some(u) = self.slots.get(index).map(|s| s.unit) else {
            return true;
        };
        let (id, unit_id) = (self.units[u].id, self.units[u].unit);
        let Some(device) = config.devices.get(id) else {
            return true;
        };
        let quirks = device.modbus().map(|m| m.quirks).unwrap_or_default();
        self.link.serve(quirks);
        let mut answered = false;
        let mut fault = None;
        let mut samples = Vec::new();
        for &class in &classes {
            let started = Instant::now();
            let slot = &mut self.slots[class];
            let cycle = cycle::poll(&mut self.link, &device.name, unit_id, &mut slot.plan).await;
            let period = slot.period;
            record_cycle(&self.stats, device, period, &cycle, started.elapsed());
            answered |= cycle.answered;
            if !cycle.answered && fault.is_none() {
                fault = Some(first_fault(&cycle));
            }
            samples.extend(samples_of(id, device, &slot.plan, &cycle));
        }
        let coming_online = answered && self.units[u].online != Some(true);
        let identity = match device.modbus() {
            Some(m) if coming_online && m.identify => self.identify(&device.name, unit_id).await,
            _ => None,
        };
        if quirks.close_after_poll {
            self.link.close().await;
        }
        // Events carry samples in metric order, whichever classes were read.
        samples.sort_by_key(|s| s.metric);
        Counters::bump(&self.stats.polls);
        let now = Instant::now();
        let mut events = Vec::new();
        let state = &mut self.units[u];
        if answered {
            state.failures = 0;
            state.retry.reset();
            for &class in &classes {
                let slot = &mut self.slots[class];
                slot.next_due = next_tick(slot.next_due, slot.period, now);
            }
            if state.online != Some(true) {
                if state.online == Some(false) {
                    tracing::info!(device = %device.name, "device answers again");
                }
                state.online = Some(true);
                for sample in &samples {
                    state.filter.record(sample);
                }
                events.push(DeviceEvent::Online {
                    device: id,
                    samples: std::mem::take(&mut samples),
                    identity,
                });
            }
        } else {
            Counters::bump(&self.stats.poll_failures);
            state.failures = state.failures.saturating_add(1);
            if state.online != Some(false) && state.failures >= device.offline_after {
                state.online = Some(false);
                let fault = fault.unwrap_or(Fault::Timeout);
                tracing::warn!(device = %device.name, %fault, failures = state.failures, "device offline; retrying with backoff");
                events.push(DeviceEvent::Offline { device: id, fault });
            }
            let retry = (state.online == Some(false)).then(|| now + state.retry.next_delay());
            for &class in &classes {
                let slot = &mut self.slots[class];
                slot.next_due = retry.unwrap_or_else(|| next_tick(slot.next_due, slot.period, now));
            }
        }
        let state = &mut self.units[u];
        metrics::device_up(&device.name, state.online == Some(true));
        samples.retain(|s| state.filter.admit(s));
        if !samples.is_empty() {
            events.push(DeviceEvent::Samples {
                device: id,
                samples,
            });
        }
        send(&self.events, events).await
    }

    /// Asks a device coming online what it is. Not knowing is no failure:
    /// many devices do not implement function 43.
    async fn identify(&mut self, device: &str, unit: u8) -> Option<Arc<Identity>> {
        match self.link.identify(unit).await {
            Ok(Ok(identity)) => {
                tracing::info!(device, %identity, "device identified");
                Some(Arc::new(identity))
            }
            Ok(Err(code)) => {
                tracing::debug!(
                    device,
                    exception = code,
                    "device refuses identification (function 43/14)"
                );
                None
            }
            Err(e) => {
                tracing::debug!(device, error = %e, "no identification (function 43/14)");
                None
            }
        }
    }

    /// Carries out a write, reports it, and on success reads the metric back
    /// and reports what the device now holds, news or not: the writer wants
    /// to see the outcome. `false` when nobody listens any more.
    async fn write(&mut self, write: Write) -> bool {
        let config = Arc::clone(&self.config);
        let Some(slot) = self.units.iter_mut().find(|s| s.id == write.device) else {
            return true;
        };
        let Some(device) = config.devices.get(slot.id) else {
            return true;
        };
        let (Some((metric, register)), Some(modbus)) = (
            device
                .metrics
                .get(write.metric)
                .and_then(|m| Some((m, m.register()?))),
            device.modbus(),
        ) else {
            return true;
        };
        self.link.serve(modbus.quirks);
        let outcome = match self
            .link
            .write(
                slot.unit,
                register.address,
                &write.image,
                modbus.write_multiple,
            )
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(code)) => Err(Fault::Exception(code)),
            Err(e) => Err(Fault::from(e)),
        };
        Counters::bump(&self.stats.writes);
        match &outcome {
            Ok(()) => {
                tracing::info!(device = %device.name, metric = %metric.name, value = %write.value, "written")
            }
            Err(fault) => {
                Counters::bump(&self.stats.write_failures);
                tracing::warn!(device = %device.name, metric = %metric.name, value = %write.value, %fault, "write failed");
            }
        }
        let written = outcome.is_ok();
        let mut events = vec![DeviceEvent::Written {
            device: write.device,
            metric: write.metric,
            value: write.value,
            outcome,
        }];
        if written {
            let mut plan = ReadPlan::build([(write.metric, register.span())], modbus.limits);
            let cycle = cycle::poll(&mut self.link, &device.name, slot.unit, &mut plan).await;
            let samples = samples_of(slot.id, device, &plan, &cycle);
            if modbus.quirks.close_after_poll {
                self.link.close().await;
            }
            for sample in &samples {
                slot.filter.record(sample);
            }
            events.push(DeviceEvent::Samples {
                device: slot.id,
                samples,
            });
        }
        send(&self.events, events).await
    }
}

/// A cycle's duration and failed requests, per device, for `/metrics` and the status page.
fn record_cycle(
    stats: &Counters,
    device: &Device,
    period: Duration,
    cycle: &Cycle,
    took: Duration,
) {
    let faults = || cycle.answers.iter().filter_map(|(_, a)| a.as_ref().err());
    metrics::cycle_recorded(&device.name, took, faults());
    stats.cycle(&device.name, period, took, cycle.answers.len(), faults());
}

fn first_fault(cycle: &Cycle) -> Fault {
    cycle
        .answers
        .iter()
        .find_map(|(_, a)| a.as_ref().err().cloned())
        .unwrap_or(Fault::Timeout)
}

/// Hands events on; `false` when nobody listens any more.
async fn send(to: &mpsc::Sender<DeviceEvent<Config>>, events: Vec<DeviceEvent<Config>>) -> bool {
    for event in events {
        if to.send(event).await.is_err() {
            return false;
        }
    }
    true
}

/// Every metric of a cycle as a sample, in metric order.
fn samples_of(id: DeviceId, device: &Device, plan: &ReadPlan, cycle: &Cycle) -> Vec<Sample> {
    let mut readings = cycle::decode(device, plan, cycle);
    readings.sort_by_key(|r| r.metric);
    readings
        .into_iter()
        .map(|r| {
            let (value, quality) = match r.value {
                Ok(v) => (Some(v), Quality::Good),
                Err(fault) => (None, Quality::Bad(fault)),
            };
            Sample {
                device: id,
                metric: r.metric,
                value,
                quality,
                timestamp_ms: r.timestamp_ms,
            }
        })
        .collect()
}

/// The first tick of the schedule `due + k * period` that is after `now`:
/// missed ticks are skipped, and the phase is kept.
pub fn next_tick(due: Instant, period: Duration, now: Instant) -> Instant {
    let next = due + period;
    if next > now {
        return next;
    }
    let behind = now.duration_since(due).as_nanos();
    let period_ns = period.as_nanos().max(1);
    let ticks = behind / period_ns + 1;
    let offset = u64::try_from(ticks.saturating_mul(period_ns)).unwrap_or(u64::MAX);
    due + Duration::from_nanos(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_cycle_skips_missed_ticks_and_keeps_the_phase() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(next_tick(t0, ms(100), t0 + ms(10)), t0 + ms(100), "on time");
        assert_eq!(
            next_tick(t0, ms(100), t0 + ms(100)),
            t0 + ms(200),
            "exactly on the next tick"
        );
        assert_eq!(
            next_tick(t0, ms(100), t0 + ms(350)),
            t0 + ms(400),
            "three ticks missed, none bunched"
        );
    }
}
