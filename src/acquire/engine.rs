//! Starts one task per acquisition ([`BusTask`] for a Modbus bus, [`GpioTask`]
//! for a GPIO device), gathers their events into one stream, and routes writes (and the
//! uplink's state, which GPIO outputs' `safe_after` waits on) back to them.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::acquire::TaskChannels;
use crate::acquire::gpio::GpioTask;
use crate::acquire::modbus::bus::BusTask;
use crate::acquire::router::WriteRouter;
use crate::config::reload::Reload;
use crate::config::{Acquisition, Config};
use crate::core::event::{DeviceEvent, MapVersion};
use crate::core::write::Write;
use crate::ops::liveness::Liveness;
use crate::ops::metrics::Counters;

/// Events waiting for the consumer before bus tasks have to wait for it.
/// A slow consumer thus shows up as poll overrun, never as unbounded memory.
pub const EVENT_QUEUE: usize = 256;

/// Writes queued per bus. A bus does one transaction at a time, so more than
/// a handful waiting means commands arrive faster than the line can carry
/// them; further ones are refused at once ([`Rejection::Busy`]) rather than
/// carried out late.
const WRITE_QUEUE: usize = 16;

/// The running acquisition side: bus tasks and the stream of what they read.
#[derive(Debug)]
pub struct Engine {
    /// Samples and device state changes, from all buses.
    pub events: mpsc::Receiver<DeviceEvent<Config>>,
    /// Where writes for the devices go.
    pub writes: WriteRouter,
    /// Counters shared with the bus tasks.
    pub stats: Arc<Counters>,
    /// The tasks' promises to come back, for the watchdog and `/healthz`.
    pub liveness: Arc<Liveness>,
    config: Arc<Config>,
    sources: CancellationToken,
    /// What the tasks send on; kept for reloads, dropped by [`Engine::stop`]
    /// so that the stream ends once the tasks have.
    feed: Option<mpsc::Sender<DeviceEvent<Config>>>,
    /// Per acquisition of the map in force ([`Config::acquisitions`]), its task.
    tasks: Vec<TaskRun>,
}

/// One acquisition task and how to reach it.
#[derive(Debug)]
struct TaskRun {
    stop: CancellationToken,
    writes: mpsc::Sender<Write>,
    /// `None` when there is nothing to run (a bus without devices).
    task: Option<JoinHandle<()>>,
}

impl Engine {
    /// Spawns a task per bus; they stop when `sources` is cancelled.
    pub fn start(config: Arc<Config>, sources: &CancellationToken) -> Engine {
        let (feed, events) = mpsc::channel(EVENT_QUEUE);
        let mut engine = Engine {
            events,
            writes: WriteRouter::new(Arc::clone(&config)),
            stats: Arc::new(Counters::default()),
            liveness: Arc::new(Liveness::default()),
            config,
            sources: sources.clone(),
            feed: Some(feed),
            tasks: Vec::new(),
        };
        engine.tasks = engine
            .config
            .acquisitions()
            .into_iter()
            .map(|owns| engine.spawn(owns))
            .collect();
        engine.route();
        engine
    }

    /// The config in force (the last reloaded device map).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config)
    }

    fn spawn(&self, owns: Acquisition) -> TaskRun {
        let (writes, write_rx) = mpsc::channel(WRITE_QUEUE);
        let stop = self.sources.child_token();
        let name = match owns {
            Acquisition::Bus(bus) => self
                .config
                .buses
                .get(bus)
                .map(|b| format!("bus {}", b.name)),
            Acquisition::Gpio(device) => {
                (self.config.devices.get(device)).map(|d| format!("gpio device {}", d.name))
            }
        };
        let (Some(feed), Some(name)) = (&self.feed, name) else {
            return TaskRun {
                stop,
                writes,
                task: None,
            };
        };
        let channels = TaskChannels {
            events: feed.clone(),
            writes: write_rx,
            stats: Arc::clone(&self.stats),
            pulse: self.liveness.pulse(name),
        };
        let config = Arc::clone(&self.config);
        let task = match owns {
            Acquisition::Gpio(device) => {
                let uplink = self.writes.uplink_state();
                GpioTask::new(config, device, channels, uplink, stop.clone())
                    .map(|task| tokio::spawn(task.run()))
            }
            Acquisition::Bus(bus) => BusTask::new(config, bus, channels, stop.clone())
                .map(|task| tokio::spawn(task.run())),
        };
        TaskRun { stop, writes, task }
    }

    /// Points the write router at the map in force and its buses.
    fn route(&self) {
        self.writes.point_at(
            Arc::clone(&self.config),
            self.tasks.iter().map(|t| t.writes.clone()).collect(),
        );
    }

    /// Puts the new device map of `reload` in force: stops the buses that
    /// changed and waits for them, tells the consumers (in the stream, after
    /// the last event under the old map), then starts the new buses.
    pub async fn reconfigure(&mut self, reload: &Reload) {
        let mut stopped = Vec::new();
        for (task, run) in self.tasks.iter_mut().enumerate() {
            if !reload.kept_tasks.get(task).copied().unwrap_or(false) {
                run.stop.cancel();
                stopped.extend(run.task.take());
            }
        }
        for task in stopped {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "bus task failed");
            }
        }
        self.config = Arc::clone(&reload.config);
        if let Some(feed) = &self.feed {
            let marker = DeviceEvent::Reconfigured(MapVersion(Arc::clone(&self.config)));
            if feed.send(marker).await.is_err() {
                return;
            }
        }
        let mut previous = std::mem::take(&mut self.tasks).into_iter();
        for (task, owns) in self.config.acquisitions().into_iter().enumerate() {
            let run = previous.next();
            let kept = reload.kept_tasks.get(task).copied().unwrap_or(false);
            let run = match run {
                Some(run) if kept => run,
                _ => self.spawn(owns),
            };
            self.tasks.push(run);
        }
        self.route();
    }

    /// Hands the event stream to another consumer (the publisher). The bus
    /// tasks stop once that consumer drops it.
    pub fn take_events(&mut self) -> mpsc::Receiver<DeviceEvent<Config>> {
        let (_, closed) = mpsc::channel(1);
        std::mem::replace(&mut self.events, closed)
    }

    /// Stops every bus task; the event stream ends once they have finished.
    pub fn stop(&mut self) {
        self.sources.cancel();
        self.feed = None;
    }

    /// Waits for every bus task to finish (after [`Engine::stop`]).
    pub async fn join(mut self) {
        self.stop();
        let tasks: Vec<_> = self
            .tasks
            .iter_mut()
            .filter_map(|t| t.task.take())
            .collect();
        let joined = join_all(tasks);
        tokio::pin!(joined);
        // Keep draining so no task is stuck sending while we wait for it.
        loop {
            tokio::select! {
                () = &mut joined => break,
                Some(_) = self.events.recv() => {}
            }
        }
    }
}

async fn join_all(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "bus task failed");
        }
    }
}
