//! What the sources (Modbus buses, GPIO devices) tell the rest of the gateway.

use std::sync::Arc;

use crate::core::identity::Identity;
use crate::core::value::{DeviceId, Fault, MetricId, Sample, Value};

/// What the sources tell the rest of the gateway. `Map` is the device map
/// the ids refer to (the config); the vocabulary does not depend on it.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEvent<Map> {
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
    /// The device answered, for the first time or after being offline.
    Online {
        /// The device.
        device: DeviceId,
        /// Every metric as read in that cycle, so consumers start from a complete picture.
        samples: Vec<Sample>,
        /// What the device said it is (function 43/14), if it says.
        identity: Option<Arc<Identity>>,
    },
    /// A write asked for by a command was carried out, or failed at the device.
    Written {
        /// The device.
        device: DeviceId,
        /// The metric written.
        metric: MetricId,
        /// The value asked for.
        value: Value,
        /// `Ok` when the device accepted it.
        outcome: Result<(), Fault>,
    },
    /// A reload put a new device map in force: events after this one use
    /// its device and metric ids (sent by the engine, not a bus task).
    Reconfigured(MapVersion<Map>),
}

/// A device map put in force by a reload; equal only to itself.
#[derive(Debug)]
pub struct MapVersion<Map>(pub Arc<Map>);

// By hand: derives would ask `Map: Clone + PartialEq`, which a shared map needs not be.
impl<Map> Clone for MapVersion<Map> {
    fn clone(&self) -> Self {
        MapVersion(Arc::clone(&self.0))
    }
}

impl<Map> PartialEq for MapVersion<Map> {
    fn eq(&self, other: &MapVersion<Map>) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
