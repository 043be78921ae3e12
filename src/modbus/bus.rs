//! The task that owns one bus and polls its devices on their schedules.
//!
//! A bus carries one transaction at a time, so one task per bus is the
//! natural arbiter: it always serves the device whose poll is due first.
//! Schedules keep their phase: a cycle that overruns skips the ticks it
//! missed instead of firing them in a burst. A device that fails
//! `offline_after` cycles in a row is marked offline and then tried only with
//! exponential backoff, so a dead unit costs its line one timeout per backoff
//! period and the live units keep their rate.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{Config, Device};
use crate::exception::ChangeFilter;
use crate::modbus::cycle::{self, Cycle};
use crate::modbus::link::Link;
use crate::modbus::plan::ReadPlan;
use crate::value::{DeviceId, Fault, Quality, Sample};

/// The shortest wait before retrying an offline device. Starting the backoff
/// at a fast poll period would let a dead unit take most of its line's time
/// in the first seconds after it died.
const OFFLINE_FIRST_RETRY: Duration = Duration::from_secs(1);

/// What the bus tasks tell the rest of the gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEvent {
    /// Samples that are news (report by exception), in metric order.
    Samples {
        /// The device polled.
        device: DeviceId,
        /// The changed samples.
        samples: Vec<Sample>,
    },
    /// The device stopped answering and is now retried with backoff.
    Offline {
        /// The device.
        device: DeviceId,
        /// The failure that took it offline.
        fault: Fault,
    },
    /// The device answered again after being offline.
    Online {
        /// The device.
        device: DeviceId,
    },
}

/// Polling state of one device.
struct Slot {
    id: DeviceId,
    plan: ReadPlan,
    filter: ChangeFilter,
    next_due: Instant,
    failures: u32,
    offline: bool,
    retry: Backoff,
}

/// Polls every device of one bus until shut down.
pub struct BusTask {
    config: Arc<Config>,
    link: Link,
    slots: Vec<Slot>,
    events: mpsc::Sender<DeviceEvent>,
    shutdown: CancellationToken,
}

impl BusTask {
    /// A task for bus `bus` of `config`, sending what it learns to `events`.
    pub fn new(
        config: Arc<Config>,
        bus: usize,
        events: mpsc::Sender<DeviceEvent>,
        shutdown: CancellationToken,
    ) -> Option<BusTask> {
        let link = Link::new(config.buses.get(bus)?);
        let now = Instant::now();
        let slots = config
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.bus == bus)
            .map(|(id, d)| Slot {
                id,
                plan: d.read_plan(),
                filter: ChangeFilter::new(d.metrics.iter().map(|m| m.deadband).collect()),
                next_due: now,
                failures: 0,
                offline: false,
                retry: Backoff::new(d.poll.max(OFFLINE_FIRST_RETRY), d.max_backoff.max(d.poll)),
            })
            .collect();
        Some(BusTask {
            config,
            link,
            slots,
            events,
            shutdown,
        })
    }

    /// Runs until the shutdown token is cancelled or nobody listens any more.
    /// A transaction under way when shutdown comes is finished first.
    pub async fn run(mut self) {
        while let Some(index) = self.next_slot() {
            let due = self.slots[index].next_due;
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = sleep_until(due) => {}
            }
            if !self.poll_slot(index).await {
                break;
            }
        }
        self.link.close().await;
    }

    fn next_slot(&self) -> Option<usize> {
        (0..self.slots.len()).min_by_key(|&i| self.slots[i].next_due)
    }

    /// Polls one device and reports; `false` when the receiver is gone.
    async fn poll_slot(&mut self, index: usize) -> bool {
        let config = Arc::clone(&self.config);
        let slot = &mut self.slots[index];
        let Some(device) = config.devices.get(slot.id) else {
            return true;
        };
        let cycle = cycle::poll(&mut self.link, device, &mut slot.plan).await;
        let now = Instant::now();
        let mut events = Vec::new();
        if cycle.answered {
            slot.failures = 0;
            slot.retry.reset();
            if slot.offline {
                slot.offline = false;
                tracing::info!(device = %device.name, "device answers again");
                events.push(DeviceEvent::Online { device: slot.id });
            }
            slot.next_due = next_tick(slot.next_due, device.poll, now);
        } else {
            slot.failures = slot.failures.saturating_add(1);
            if !slot.offline && slot.failures >= device.offline_after {
                slot.offline = true;
                let fault = first_fault(&cycle);
                tracing::warn!(device = %device.name, %fault, failures = slot.failures, "device offline; retrying with backoff");
                events.push(DeviceEvent::Offline {
                    device: slot.id,
                    fault,
                });
            }
            slot.next_due = if slot.offline {
                now + slot.retry.next_delay()
            } else {
                next_tick(slot.next_due, device.poll, now)
            };
        }
        let samples = changed_samples(slot, device, &cycle);
        if !samples.is_empty() {
            events.push(DeviceEvent::Samples {
                device: slot.id,
                samples,
            });
        }
        for event in events {
            if self.events.send(event).await.is_err() {
                return false;
            }
        }
        true
    }
}

fn first_fault(cycle: &Cycle) -> Fault {
    cycle
        .answers
        .iter()
        .find_map(|(_, a)| a.as_ref().err().cloned())
        .unwrap_or(Fault::Timeout)
}

fn changed_samples(slot: &mut Slot, device: &Device, cycle: &Cycle) -> Vec<Sample> {
    let mut readings = cycle::decode(device, &slot.plan, cycle);
    readings.sort_by_key(|r| r.metric);
    readings
        .into_iter()
        .map(|r| {
            let (value, quality) = match r.value {
                Ok(v) => (Some(v), Quality::Good),
                Err(fault) => (None, Quality::Bad(fault)),
            };
            Sample {
                device: slot.id,
                metric: r.metric,
                value,
                quality,
                timestamp_ms: r.timestamp_ms,
            }
        })
        .filter(|s| slot.filter.admit(s))
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
