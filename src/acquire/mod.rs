//! The sources: Modbus buses and GPIO devices, polled or watched by their own
//! tasks, which turn what they read into [`DeviceEvent`](crate::core::event::DeviceEvent)s
//! and carry out the writes routed to them.

pub mod deadband;
pub mod engine;
pub mod gpio;
pub mod modbus;
pub mod router;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::core::event::DeviceEvent;
use crate::core::write::Write;
use crate::ops::liveness::Pulse;
use crate::ops::metrics::Counters;

/// The channels an acquisition task (a bus, a GPIO device) is connected to.
#[derive(Debug)]
pub struct TaskChannels {
    /// Where it reports.
    pub events: mpsc::Sender<DeviceEvent<Config>>,
    /// Writes for its devices, carried out between poll cycles (or at once, for GPIO).
    pub writes: mpsc::Receiver<Write>,
    /// Counters it adds to.
    pub stats: Arc<Counters>,
    /// Its promise to come back ([`crate::ops::liveness`]).
    pub pulse: Pulse,
}
