//! The task that owns one GPIO device's lines.
//!
//! Edges are debounced and a settled input change is reported at once.
//! Counter totals and rates go out every `poll` period when they changed,
//! since a pulse train of hundreds of hertz is a rate, not a stream of
//! events. Outputs start at `initial`; `safe` is applied at shutdown and,
//! with `safe_after`, once the uplink (or primary host) has been gone that
//! long. A safe output stays safe until a command drives it again.
//!
//! A driver failure (a chip that cannot be opened, a line that stops
//! answering) marks the device offline and the lines are requested again
//! with backoff, the way a silent Modbus device is retried.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::counter::{CounterStore, RateMeter};
use super::debounce::Debouncer;
use super::lines::{Edge, GpioError, LineKind, LineRequest, Lines};
use crate::acquire::TaskChannels;
use crate::acquire::modbus::cycle::{MetricReading, Raw};
use crate::config::{Attachment, Config, Device};
use crate::config::{GpioChip, PinRole};
use crate::core::event::DeviceEvent;
use crate::core::value::{DeviceId, Fault, MetricId, Quality, Sample, Value, now_ms};
use crate::core::write::{Write, WriteImage};
use crate::ops::backoff::Backoff;
use crate::ops::metrics;
use crate::ops::metrics::Counters;

/// How often changed counter totals are written to disk. A power cut loses
/// at most the pulses of this period; an SD card sees one small file
/// rewritten this often, and only while pulses arrive.
const COUNTER_SAVE_PERIOD: Duration = Duration::from_secs(10);

/// The first retry after the lines could not be requested.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Owns the lines of one GPIO device and reports what they do.
#[derive(Debug)]
pub struct GpioTask {
    config: Arc<Config>,
    device: DeviceId,
    chip: GpioChip,
    events: mpsc::Sender<DeviceEvent<Config>>,
    writes: mpsc::Receiver<Write>,
    stats: Arc<Counters>,
    pulse: crate::ops::liveness::Pulse,
    uplink: watch::Receiver<bool>,
    shutdown: CancellationToken,
}

/// Why the lines were let go.
enum Stop {
    /// Shutdown, or nobody listens any more.
    Done,
    /// The driver failed; request the lines again later.
    Failed(GpioError),
}

impl GpioTask {
    /// A task for bus `bus` of `config` if it is a GPIO device's bus.
    /// `uplink` is true while the uplink is up (or there is none).
    pub fn new(
        config: Arc<Config>,
        device: DeviceId,
        channels: TaskChannels,
        uplink: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> Option<GpioTask> {
        let Attachment::Gpio(chip) = &config.devices.get(device)?.attachment else {
            return None;
        };
        let chip = chip.clone();
        Some(GpioTask {
            config,
            device,
            chip,
            events: channels.events,
            writes: channels.writes,
            stats: channels.stats,
            pulse: channels.pulse,
            uplink,
            shutdown,
        })
    }

    /// Runs until the shutdown token is cancelled or nobody listens any
    /// more, then sets outputs to their safe state and saves the counters.
    pub async fn run(mut self) {
        let config = Arc::clone(&self.config);
        let Some(device) = config.devices.get(self.device) else {
            return;
        };
        let store = CounterStore::new(&config.node.data_dir, &device.name);
        let totals = match store.load() {
            Ok(totals) => totals,
            Err(e) => {
                tracing::error!(device = %device.name, error = %e, "counter totals unreadable; counting from zero (the file is kept as .damaged)");
                // Best effort: keep the old file for whoever investigates.
                let _ = std::fs::rename(&e.path, e.path.with_extension("json.damaged"));
                BTreeMap::new()
            }
        };
        let mut panel = Panel::new(self.device, device, &totals, Instant::now());
        let mut retry = Backoff::new(FIRST_RETRY, device.max_backoff.max(FIRST_RETRY));
        let mut offline = false;
        loop {
            let stop = match Lines::open(&self.chip, &panel.requests()) {
                Ok(lines) => {
                    retry.reset();
                    if offline {
                        tracing::info!(device = %device.name, "GPIO lines available again");
                    }
                    offline = false;
                    self.serve(lines, &mut panel, device, &store).await
                }
                Err(e) => Stop::Failed(e),
            };
            let error = match stop {
                Stop::Done => break,
                Stop::Failed(e) => e,
            };
            if !offline {
                tracing::warn!(device = %device.name, %error, "GPIO lines unavailable; retrying with backoff");
                offline = true;
                metrics::device_up(&device.name, false);
                let event = DeviceEvent::Offline {
                    device: self.device,
                    fault: Fault::Link(error.to_string()),
                };
                if self.events.send(event).await.is_err() {
                    break;
                }
            }
            let delay = retry.next_delay();
            self.pulse.within(delay);
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        save(&store, &mut panel, device);
    }

    /// Serves open lines until shutdown or a driver failure.
    async fn serve(
        &mut self,
        mut lines: Lines,
        panel: &mut Panel,
        device: &Device,
        store: &CounterStore,
    ) -> Stop {
        let now = Instant::now();
        if let Err(e) = panel.read_inputs(&lines, now) {
            return Stop::Failed(e);
        }
        let online = DeviceEvent::Online {
            device: self.device,
            samples: panel.snapshot(),
            identity: None,
        };
        if self.events.send(online).await.is_err() {
            return Stop::Done;
        }
        metrics::device_up(&device.name, true);
        let mut report = tokio::time::interval_at(now + device.poll, device.poll);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut save_tick =
            tokio::time::interval_at(now + COUNTER_SAVE_PERIOD, COUNTER_SAVE_PERIOD);
        save_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut gone_since = (!*self.uplink.borrow_and_update()).then_some(now);
        // The report and save ticks turn the loop at least this often.
        let turn = device.poll.min(COUNTER_SAVE_PERIOD);
        loop {
            self.pulse.within(turn);
            let settle_at = panel.settle_deadline();
            let safe_at = gone_since.and_then(|since| panel.safe_deadline(since));
            let events = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    let samples = panel.go_safe(&mut lines, SafeCause::Shutdown);
                    if !samples.is_empty() {
                        // The sinks outlive the sources, so this still goes out.
                        let _ = self.events.send(self.samples(samples)).await;
                    }
                    return Stop::Done;
                }
                Some(write) = self.writes.recv() => self.write(&mut lines, panel, write),
                edge = lines.edge() => match edge {
                    Ok(edge) => {
                        panel.edge(edge);
                        continue;
                    }
                    Err(e) => return Stop::Failed(e),
                },
                () = sleep_opt(settle_at) => vec![self.samples(panel.settle(Instant::now()))],
                _ = report.tick() => vec![self.samples(panel.report(Instant::now()))],
                _ = save_tick.tick() => {
                    save(store, panel, device);
                    continue;
                }
                changed = self.uplink.changed() => {
                    if changed.is_err() {
                        // The publisher is gone: no uplink to wait for any more.
                        gone_since = None;
                        continue;
                    }
                    let up = *self.uplink.borrow_and_update();
                    gone_since = match (up, gone_since) {
                        (true, _) => {
                            panel.rearm_safe();
                            None
                        }
                        (false, Some(since)) => Some(since),
                        (false, None) => Some(Instant::now()),
                    };
                    continue;
                }
                () = sleep_opt(safe_at) => {
                    let now = Instant::now();
                    let Some(since) = gone_since else { continue };
                    tracing::warn!(device = %device.name, gone_for = ?now - since, "uplink gone too long: outputs to their safe state");
                    vec![self.samples(panel.go_safe(&mut lines, SafeCause::UplinkGone { since, now }))]
                }
            };
            for event in events {
                if matches!(&event, DeviceEvent::Samples { samples, .. } if samples.is_empty()) {
                    continue;
                }
                if self.events.send(event).await.is_err() {
                    return Stop::Done;
                }
            }
        }
    }

    fn samples(&self, samples: Vec<Sample>) -> DeviceEvent<Config> {
        DeviceEvent::Samples {
            device: self.device,
            samples,
        }
    }

    /// Drives an output as commanded; reports the outcome and the new level.
    fn write(
        &self,
        lines: &mut Lines,
        panel: &mut Panel,
        write: Write,
    ) -> Vec<DeviceEvent<Config>> {
        Counters::bump(&self.stats.writes);
        let outcome = match write.image {
            WriteImage::Coil(on) => panel.drive(lines, write.metric, on),
            // The command rules give a GPIO output (a bool coil) nothing else.
            _ => Err(Fault::Malformed("a GPIO output takes on/off only".into())),
        };
        let device = self.config.devices.get(self.device);
        let name = device.map_or("", |d| d.name.as_str());
        let metric = device
            .and_then(|d| d.metrics.get(write.metric))
            .map_or("", |m| m.name.as_str());
        match &outcome {
            Ok(()) => tracing::info!(device = %name, %metric, value = %write.value, "output set"),
            Err(fault) => {
                Counters::bump(&self.stats.write_failures);
                tracing::warn!(device = %name, %metric, value = %write.value, %fault, "output not set");
            }
        }
        let written = outcome.is_ok();
        let mut events = vec![DeviceEvent::Written {
            device: self.device,
            metric: write.metric,
            value: write.value,
            outcome,
        }];
        if written {
            events.push(self.samples(panel.sample_of(write.metric)));
        }
        events
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn save(store: &CounterStore, panel: &mut Panel, device: &Device) {
    if let Some(totals) = panel.unsaved_totals()
        && let Err(e) = crate::ops::blocking::file_work(|| store.save(&totals))
    {
        tracing::error!(device = %device.name, error = %e, "cannot save counter totals");
    }
}

/// Reads a GPIO device's inputs once, for `fieldmq read`: levels as they
/// are now, counters as last saved, and each line's electrical level as the
/// raw value (missing when the lines could not be requested). Outputs and
/// rates are left out: a rate needs time, and requesting an output line
/// would drive it.
pub fn read_once(
    id: DeviceId,
    device: &Device,
    chip: &GpioChip,
    data_dir: &Path,
) -> Vec<MetricReading<'static>> {
    let totals = CounterStore::new(data_dir, &device.name).load();
    let panel = Panel::new(
        id,
        device,
        totals.as_ref().unwrap_or(&BTreeMap::new()),
        Instant::now(),
    );
    let inputs: Vec<LineRequest> = panel
        .requests()
        .into_iter()
        .filter(|r| matches!(r.kind, LineKind::Input { .. }))
        .collect();
    let lines = Lines::open(chip, &inputs);
    let now = now_ms();
    panel
        .inputs
        .iter()
        .map(|input| {
            // The raw column is the line's electrical level, counters included
            // (useful when checking the wiring).
            let level = match &lines {
                Ok(lines) => lines.get(input.pin).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let raw = level.as_ref().map_or(Raw::Missing, |high| Raw::Bit(*high));
            let value = match (&input.counter, &totals, level) {
                (Some(_), Err(e), _) => Err(Fault::Link(e.to_string())),
                (Some(counter), Ok(_), _) => Ok(Value::U64(counter.total)),
                (None, _, Ok(high)) => Ok(Value::Bool(high ^ input.active_low)),
                (None, _, Err(e)) => Err(Fault::Link(e)),
            };
            MetricReading {
                metric: input.metric,
                timestamp_ms: now,
                value,
                raw,
            }
        })
        .collect()
}

/// Why outputs go to their safe state.
#[derive(Debug, Clone, Copy)]
enum SafeCause {
    /// The gateway stops.
    Shutdown,
    /// The uplink has been gone since `since`; it is `now`.
    UplinkGone { since: Instant, now: Instant },
}

/// The state of a device's pins, kept across reopenings of its lines.
#[derive(Debug)]
struct Panel {
    device: DeviceId,
    inputs: Vec<Input>,
    outputs: Vec<Output>,
    /// Counter totals changed since they were last saved.
    unsaved: bool,
}

#[derive(Debug)]
struct Input {
    metric: MetricId,
    name: String,
    pin: u32,
    active_low: bool,
    kind: LineKind,
    debouncer: Debouncer,
    counter: Option<Counter>,
}

#[derive(Debug)]
struct Counter {
    total: u64,
    rate_metric: Option<MetricId>,
    meter: RateMeter,
    reported: Option<(u64, f64)>,
}

#[derive(Debug)]
struct Output {
    metric: MetricId,
    pin: u32,
    active_low: bool,
    /// The logical state it was last driven to.
    on: bool,
    safe: Option<bool>,
    safe_after: Option<Duration>,
    /// Already set safe during this outage.
    safe_applied: bool,
}

impl Panel {
    fn new(id: DeviceId, device: &Device, totals: &BTreeMap<String, u64>, now: Instant) -> Panel {
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (metric, m) in device.metrics.iter().enumerate() {
            let Some(pin) = m.pin() else { continue };
            let (line, counter) = match &pin.role {
                PinRole::Level(line) => (line, None),
                PinRole::Counter(line) => {
                    let total = totals.get(&m.name).copied().unwrap_or(0);
                    let rate_name = format!("{}/rate", m.name);
                    let counter = Counter {
                        total,
                        rate_metric: device.metrics.iter().position(|r| r.name == rate_name),
                        meter: RateMeter::new(total, now.into_std()),
                        reported: None,
                    };
                    (line, Some(counter))
                }
                PinRole::Rate => continue,
                PinRole::Output {
                    initial,
                    safe,
                    safe_after,
                } => {
                    outputs.push(Output {
                        metric,
                        pin: pin.pin,
                        active_low: pin.active_low,
                        on: *initial,
                        safe: *safe,
                        safe_after: *safe_after,
                        safe_applied: false,
                    });
                    continue;
                }
            };
            inputs.push(Input {
                metric,
                name: m.name.clone(),
                pin: pin.pin,
                active_low: pin.active_low,
                kind: LineKind::Input {
                    pull: line.pull,
                    debounce: line.debounce,
                    toggle: line.sim_toggle,
                },
                debouncer: Debouncer::new(false, line.debounce),
                counter,
            });
        }
        Panel {
            device: id,
            inputs,
            outputs,
            unsaved: false,
        }
    }

    /// The lines to request; outputs at their current state.
    fn requests(&self) -> Vec<LineRequest> {
        let inputs = self.inputs.iter().map(|i| LineRequest {
            pin: i.pin,
            kind: i.kind,
        });
        let outputs = self.outputs.iter().map(|o| LineRequest {
            pin: o.pin,
            kind: LineKind::Output {
                high: o.on ^ o.active_low,
            },
        });
        inputs.chain(outputs).collect()
    }

    /// Takes the inputs' present levels as settled (at start, or after the
    /// lines were requested again), without counting a pulse.
    fn read_inputs(&mut self, lines: &Lines, now: Instant) -> Result<(), GpioError> {
        for input in &mut self.inputs {
            let active = lines.get(input.pin)? ^ input.active_low;
            let LineKind::Input { debounce, .. } = input.kind else {
                continue;
            };
            input.debouncer = Debouncer::new(active, debounce);
            if let Some(counter) = &mut input.counter {
                counter.meter = RateMeter::new(counter.total, now.into_std());
            }
        }
        Ok(())
    }

    fn edge(&mut self, edge: Edge) {
        if let Some(input) = self.inputs.iter_mut().find(|i| i.pin == edge.pin) {
            input
                .debouncer
                .edge(edge.high ^ input.active_low, edge.at.into_std());
        }
    }

    fn settle_deadline(&self) -> Option<Instant> {
        self.inputs
            .iter()
            .filter_map(|i| i.debouncer.deadline())
            .min()
            .map(Instant::from_std)
    }

    /// Level changes that have settled by `now`; counters count their pulses.
    fn settle(&mut self, now: Instant) -> Vec<Sample> {
        let mut samples = Vec::new();
        for input in &mut self.inputs {
            let Some(active) = input.debouncer.settle(now.into_std()) else {
                continue;
            };
            match &mut input.counter {
                Some(counter) => {
                    if active {
                        counter.total = counter.total.wrapping_add(1);
                        self.unsaved = true;
                    }
                }
                None => samples.push(sample(self.device, input.metric, Value::Bool(active))),
            }
        }
        samples
    }

    /// Counter totals and rates that changed since the last report.
    fn report(&mut self, now: Instant) -> Vec<Sample> {
        let mut samples = Vec::new();
        for input in &mut self.inputs {
            let Some(counter) = &mut input.counter else {
                continue;
            };
            let rate = counter.meter.rate(counter.total, now.into_std());
            let (old_total, old_rate) = counter.reported.unwrap_or((u64::MAX, f64::NAN));
            if counter.total != old_total {
                samples.push(sample(self.device, input.metric, Value::U64(counter.total)));
            }
            if let Some(metric) = counter.rate_metric
                && rate.to_bits() != old_rate.to_bits()
            {
                samples.push(sample(self.device, metric, Value::F64(rate)));
            }
            counter.reported = Some((counter.total, rate));
        }
        samples
    }

    /// Every pin's present value (the device just came online).
    fn snapshot(&mut self) -> Vec<Sample> {
        let mut samples = Vec::new();
        for input in &mut self.inputs {
            match &mut input.counter {
                Some(counter) => {
                    samples.push(sample(self.device, input.metric, Value::U64(counter.total)));
                    if let Some(metric) = counter.rate_metric {
                        samples.push(sample(self.device, metric, Value::F64(0.0)));
                    }
                    counter.reported = Some((counter.total, 0.0));
                }
                None => samples.push(sample(
                    self.device,
                    input.metric,
                    Value::Bool(input.debouncer.level()),
                )),
            }
        }
        for output in &self.outputs {
            samples.push(sample(self.device, output.metric, Value::Bool(output.on)));
        }
        samples.sort_by_key(|s| s.metric);
        samples
    }

    /// The present value of one output, as a sample.
    fn sample_of(&self, metric: MetricId) -> Vec<Sample> {
        self.outputs
            .iter()
            .filter(|o| o.metric == metric)
            .map(|o| sample(self.device, metric, Value::Bool(o.on)))
            .collect()
    }

    fn drive(&mut self, lines: &mut Lines, metric: MetricId, on: bool) -> Result<(), Fault> {
        let output = self
            .outputs
            .iter_mut()
            .find(|o| o.metric == metric)
            .ok_or_else(|| Fault::Malformed("not an output pin".into()))?;
        lines
            .set(output.pin, on ^ output.active_low)
            .map_err(|e| Fault::Link(e.to_string()))?;
        output.on = on;
        Ok(())
    }

    /// When the first output with `safe_after` is due, the uplink gone since `since`.
    fn safe_deadline(&self, since: Instant) -> Option<Instant> {
        self.outputs
            .iter()
            .filter(|o| o.safe.is_some() && !o.safe_applied)
            .filter_map(|o| o.safe_after.map(|after| since + after))
            .min()
    }

    /// The uplink is back: a later outage applies `safe_after` again.
    fn rearm_safe(&mut self) {
        for output in &mut self.outputs {
            output.safe_applied = false;
        }
    }

    /// Drives outputs with a safe state to it: all at shutdown; with the
    /// uplink gone, those whose `safe_after` has passed and that were not set
    /// safe in this outage yet. Returns the changed ones as samples.
    fn go_safe(&mut self, lines: &mut Lines, cause: SafeCause) -> Vec<Sample> {
        let mut changed = Vec::new();
        for output in &mut self.outputs {
            let Some(safe) = output.safe else { continue };
            let due = match cause {
                SafeCause::Shutdown => true,
                SafeCause::UplinkGone { since, now } => {
                    !output.safe_applied
                        && output.safe_after.is_some_and(|after| now >= since + after)
                }
            };
            if !due {
                continue;
            }
            output.safe_applied = true;
            match lines.set(output.pin, safe ^ output.active_low) {
                Ok(()) if output.on != safe => {
                    output.on = safe;
                    changed.push(sample(self.device, output.metric, Value::Bool(safe)));
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(pin = output.pin, error = %e, "cannot set the safe state")
                }
            }
        }
        changed
    }

    /// Counter totals when they changed since the last call.
    fn unsaved_totals(&mut self) -> Option<BTreeMap<String, u64>> {
        if !std::mem::take(&mut self.unsaved) {
            return None;
        }
        Some(
            self.inputs
                .iter()
                .filter_map(|i| i.counter.as_ref().map(|c| (i.name.clone(), c.total)))
                .collect(),
        )
    }
}

fn sample(device: DeviceId, metric: MetricId, value: Value) -> Sample {
    Sample {
        device,
        metric,
        value: Some(value),
        quality: Quality::Good,
        timestamp_ms: now_ms(),
    }
}
