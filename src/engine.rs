//! Starts one task per bus ([`BusTask`] for Modbus, [`GpioTask`] for a GPIO
//! device), gathers their events into one stream, and routes writes (and the
//! uplink's state, which GPIO outputs' `safe_after` waits on) back to them.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::command::{Rejection, Write};
use crate::config::{Config, LinkKind};
use crate::gpio::GpioTask;
use crate::liveness::Liveness;
use crate::modbus::bus::{BusChannels, BusTask, DeviceEvent};
use crate::stats::Stats;

/// Events waiting for the consumer before bus tasks have to wait for it.
/// A slow consumer thus shows up as poll overrun, never as unbounded memory.
const EVENT_QUEUE: usize = 256;

/// Writes queued per bus. A bus does one transaction at a time, so more than
/// a handful waiting means commands arrive faster than the line can carry
/// them; further ones are refused at once ([`Rejection::Busy`]) rather than
/// carried out late.
const WRITE_QUEUE: usize = 16;

/// The running acquisition side: bus tasks and the stream of what they read.
#[derive(Debug)]
pub struct Engine {
    /// Samples and device state changes, from all buses.
    pub events: mpsc::Receiver<DeviceEvent>,
    /// Where writes for the devices go.
    pub writes: WriteRouter,
    /// Counters shared with the bus tasks.
    pub stats: Arc<Stats>,
    /// The tasks' promises to come back, for the watchdog and `/healthz`.
    pub liveness: Arc<Liveness>,
    tasks: JoinSet<()>,
}

/// Hands validated writes to the bus task of their device, and the uplink's
/// state to the tasks whose outputs fall back to a safe state without it.
#[derive(Debug, Clone)]
pub struct WriteRouter {
    config: Arc<Config>,
    buses: Vec<mpsc::Sender<Write>>,
    uplink: Arc<watch::Sender<bool>>,
}

impl WriteRouter {
    /// Queues `write` for its device's bus without waiting.
    pub fn send(&self, write: Write) -> Result<(), Rejection> {
        let device = self.config.devices.get(write.device);
        let name = device.map_or_else(String::new, |d| d.name.clone());
        let sender = device
            .and_then(|d| self.buses.get(d.bus))
            .ok_or_else(|| Rejection::UnknownDevice(name.clone()))?;
        sender.try_send(write).map_err(|_| Rejection::Busy(name))
    }

    /// Follows the uplink's state as told by [`WriteRouter::uplink`].
    pub fn uplink_state(&self) -> watch::Receiver<bool> {
        self.uplink.subscribe()
    }

    /// The uplink is up (connected, and born with the primary host online) or not.
    pub fn uplink(&self, up: bool) {
        self.uplink
            .send_if_modified(|state| std::mem::replace(state, up) != up);
    }
}

impl Engine {
    /// Spawns a task per bus; they stop when `shutdown` is cancelled.
    pub fn start(config: Arc<Config>, shutdown: &CancellationToken) -> Engine {
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let stats = Arc::new(Stats::default());
        let liveness = Arc::new(Liveness::default());
        let mut tasks = JoinSet::new();
        let mut buses = Vec::with_capacity(config.buses.len());
        // Without an uplink there is nothing to lose, so nothing to wait for.
        let (uplink, uplink_rx) = watch::channel(config.upstream.is_none());
        for (bus, settings) in config.buses.iter().enumerate() {
            let (write_tx, write_rx) = mpsc::channel(WRITE_QUEUE);
            buses.push(write_tx);
            let channels = BusChannels {
                events: tx.clone(),
                writes: write_rx,
                stats: Arc::clone(&stats),
                pulse: liveness.pulse(format!("bus {}", settings.name)),
            };
            let config = Arc::clone(&config);
            let stop = shutdown.child_token();
            if let LinkKind::Gpio(_) = settings.link {
                let task = GpioTask::new(config, bus, channels, uplink_rx.clone(), stop);
                if let Some(task) = task {
                    tasks.spawn(task.run());
                }
            } else if let Some(task) = BusTask::new(config, bus, channels, stop) {
                tasks.spawn(task.run());
            }
        }
        Engine {
            events,
            writes: WriteRouter {
                config,
                buses,
                uplink: Arc::new(uplink),
            },
            stats,
            liveness,
            tasks,
        }
    }

    /// Hands the event stream to another consumer (the publisher). The bus
    /// tasks stop once that consumer drops it.
    pub fn take_events(&mut self) -> mpsc::Receiver<DeviceEvent> {
        let (_, closed) = mpsc::channel(1);
        std::mem::replace(&mut self.events, closed)
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
                Some(_) = self.events.recv() => {}
            }
        }
    }
}

/// Copies every event of `events` to `n` receivers (the uplink, the local
/// broker, the log); ends when the source ends or every receiver is gone.
pub fn tee(mut events: mpsc::Receiver<DeviceEvent>, n: usize) -> Vec<mpsc::Receiver<DeviceEvent>> {
    if n <= 1 {
        return vec![events];
    }
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel(EVENT_QUEUE)).unzip();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let mut alive = false;
            for tx in &senders {
                alive |= tx.send(event.clone()).await.is_ok();
            }
            if !alive {
                break;
            }
        }
    });
    receivers
}
