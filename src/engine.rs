//! Starts one [`BusTask`] per bus and gathers their events into one stream.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::modbus::bus::{BusTask, DeviceEvent};

/// Events waiting for the consumer before bus tasks have to wait for it.
/// A slow consumer thus shows up as poll overrun, never as unbounded memory.
const EVENT_QUEUE: usize = 256;

/// The running acquisition side: bus tasks and the stream of what they read.
#[derive(Debug)]
pub struct Engine {
    /// Samples and device state changes, from all buses.
    pub events: mpsc::Receiver<DeviceEvent>,
    tasks: JoinSet<()>,
}

impl Engine {
    /// Spawns a task per bus; they stop when `shutdown` is cancelled.
    pub fn start(config: Arc<Config>, shutdown: &CancellationToken) -> Engine {
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let mut tasks = JoinSet::new();
        for bus in 0..config.buses.len() {
            if let Some(task) =
                BusTask::new(Arc::clone(&config), bus, tx.clone(), shutdown.child_token())
            {
                tasks.spawn(task.run());
            }
        }
        Engine { events, tasks }
    }

    /// Waits for every bus task to finish (after shutdown was cancelled).
    pub async fn join(mut self) {
        // Keep draining so no task is stuck sending while we wait for it.
        loop {
            tokio::select! {
                joined = self.tasks.join_next() => {
                    match joined {
                        Some(Err(e)) => tracing::error!(error = %e, "bus task failed"),
                        Some(Ok(())) => {}
                        None => break,
                    }
                }
                _ = self.events.recv() => {}
            }
        }
    }
}
