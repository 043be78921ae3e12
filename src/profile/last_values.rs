//! The last reported state of every device and metric: what a birth
//! certificate, a reconnect or a new subscriber needs to start from.

use std::sync::Arc;

use crate::config::Config;
use crate::core::event::DeviceEvent;
use crate::core::identity::Identity;
use crate::core::value::{DeviceId, Fault, MetricId, Quality, Sample, now_ms};

/// One device's last known state.
#[derive(Debug, Clone, Default)]
struct DeviceState {
    online: bool,
    /// Whether the bus task has said anything about it yet.
    known: bool,
    samples: Vec<Option<Sample>>,
    /// What it said it is when it last came online.
    identity: Option<Arc<Identity>>,
}

/// Last values of all devices, updated from the bus tasks' events.
#[derive(Debug, Clone)]
pub struct LastValues {
    devices: Vec<DeviceState>,
}

impl LastValues {
    /// Nothing known yet: every device offline, no values.
    pub fn new(config: &Config) -> LastValues {
        let devices = config
            .devices
            .iter()
            .map(|d| DeviceState {
                online: false,
                known: false,
                samples: vec![None; d.metrics.len()],
                identity: None,
            })
            .collect();
        LastValues { devices }
    }

    /// Takes in what a bus task reported.
    pub fn apply(&mut self, event: &DeviceEvent<Config>) {
        match event {
            DeviceEvent::Samples { device, samples } => self.store(*device, samples),
            DeviceEvent::Online {
                device,
                samples,
                identity,
            } => {
                if let Some(state) = self.devices.get_mut(*device) {
                    state.online = true;
                    state.known = true;
                    state.identity.clone_from(identity);
                }
                self.store(*device, samples);
            }
            DeviceEvent::Offline { device, .. } => {
                if let Some(state) = self.devices.get_mut(*device) {
                    state.online = false;
                    state.known = true;
                }
            }
            DeviceEvent::Written { .. } | DeviceEvent::Reconfigured(_) => {}
        }
    }

    /// A reload replaced `old` with `new`: what is known about a device that
    /// is the same in both, at the same position, carries over; the others
    /// start unknown.
    pub fn reconfigure(&mut self, old: &Config, new: &Config) {
        let unchanged = crate::config::reload::unchanged_devices(old, new);
        let mut next = LastValues::new(new);
        crate::config::reload::carry_over(&mut self.devices, &mut next.devices, &unchanged);
        *self = next;
    }

    fn store(&mut self, device: DeviceId, samples: &[Sample]) {
        let Some(state) = self.devices.get_mut(device) else {
            return;
        };
        for sample in samples {
            if let Some(slot) = state.samples.get_mut(sample.metric) {
                *slot = Some(sample.clone());
            }
        }
    }

    /// What the device said it is when it last came online, if it says.
    pub fn identity(&self, device: DeviceId) -> Option<&Identity> {
        self.devices.get(device)?.identity.as_deref()
    }

    /// The last sample of a metric; `None` while it was never read.
    pub fn last(&self, device: DeviceId, metric: MetricId) -> Option<&Sample> {
        self.devices.get(device)?.samples.get(metric)?.as_ref()
    }

    /// Whether the device answered its last poll cycles.
    pub fn is_online(&self, device: DeviceId) -> bool {
        self.devices.get(device).is_some_and(|d| d.online)
    }

    /// Whether the device is known to be offline (not merely not polled yet).
    pub fn is_offline(&self, device: DeviceId) -> bool {
        self.devices
            .get(device)
            .is_some_and(|d| d.known && !d.online)
    }

    /// How many devices are online.
    pub fn online_count(&self) -> usize {
        self.devices.iter().filter(|d| d.online).count()
    }

    /// Every metric of a device, in metric order; a metric never read is a
    /// bad-quality sample without value, so a birth still declares it.
    pub fn snapshot(&self, device: DeviceId) -> Vec<Sample> {
        let Some(state) = self.devices.get(device) else {
            return Vec::new();
        };
        state
            .samples
            .iter()
            .enumerate()
            .map(|(metric, sample): (MetricId, _)| {
                sample.clone().unwrap_or_else(|| Sample {
                    device,
                    metric,
                    value: None,
                    quality: Quality::Bad(Fault::Offline),
                    timestamp_ms: now_ms(),
                })
            })
            .collect()
    }
}
