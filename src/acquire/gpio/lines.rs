//! The drivers behind `gpio = "cdev" | "rppal" | "sim"`: one request for all
//! lines of a device, physical levels in and out, and a stream of edges.
//!
//! Levels here are electrical (`true` = high); `active_low` is applied by the
//! task, the same way for every driver, so a contact reads the same whichever
//! driver sees it.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;

use crate::config::{GpioBackend, GpioChip, Pull};

/// A line could not be requested, read or driven.
#[derive(Debug, Error)]
pub enum GpioError {
    /// This build has no such driver.
    #[error("this build of fieldmq has no \"{0}\" GPIO driver (cargo feature {1})")]
    NotBuilt(&'static str, &'static str),
    /// The chip or the lines could not be opened or requested.
    #[error("{chip}: {reason}")]
    Open {
        /// The chip (or driver) opened.
        chip: String,
        /// What went wrong.
        reason: String,
    },
    /// A requested line failed afterwards.
    #[error("pin {pin}: {reason}")]
    Line {
        /// The pin.
        pin: u32,
        /// What went wrong.
        reason: String,
    },
}

/// One line to request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineRequest {
    /// Line offset (cdev, sim) or BCM number (rppal).
    pub pin: u32,
    /// Input or output.
    pub kind: LineKind,
}

/// How a line is used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LineKind {
    /// An input reporting both edges.
    Input {
        /// Bias.
        pull: Pull,
        /// Its debounce period (the simulator bounces inside it).
        debounce: Duration,
        /// Simulator only: flip at this period.
        toggle: Option<Duration>,
    },
    /// An output, driven to this level when requested.
    Output {
        /// The level it starts at.
        high: bool,
    },
}

/// An input line changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    /// The pin.
    pub pin: u32,
    /// Its level after the edge.
    pub high: bool,
    /// When it was seen.
    pub at: Instant,
}

/// The requested lines of one device.
#[derive(Debug)]
pub enum Lines {
    /// In-process simulated lines.
    Sim(SimLines),
    /// The Linux GPIO character device.
    #[cfg(feature = "gpio-cdev")]
    Cdev(cdev::CdevLines),
    /// Raspberry Pi GPIO through rppal.
    #[cfg(any(feature = "rppal", target_arch = "aarch64", target_arch = "arm"))]
    Rppal(rppal_lines::RppalLines),
}

impl Lines {
    /// Requests `lines` from the driver and chip of `chip`.
    pub fn open(chip: &GpioChip, lines: &[LineRequest]) -> Result<Lines, GpioError> {
        match chip.backend {
            GpioBackend::Sim => Ok(Lines::Sim(SimLines::new(&chip.chip, lines, Instant::now()))),
            #[cfg(feature = "gpio-cdev")]
            GpioBackend::Cdev => cdev::CdevLines::open(&chip.chip, lines).map(Lines::Cdev),
            #[cfg(not(feature = "gpio-cdev"))]
            GpioBackend::Cdev => Err(GpioError::NotBuilt("cdev", "gpio-cdev")),
            #[cfg(any(feature = "rppal", target_arch = "aarch64", target_arch = "arm"))]
            GpioBackend::Rppal => rppal_lines::RppalLines::open(lines).map(Lines::Rppal),
            #[cfg(not(any(feature = "rppal", target_arch = "aarch64", target_arch = "arm")))]
            GpioBackend::Rppal => Err(GpioError::NotBuilt("rppal", "rppal")),
        }
    }

    /// The electrical level of a requested line.
    pub fn get(&self, pin: u32) -> Result<bool, GpioError> {
        match self {
            Lines::Sim(sim) => sim.get(pin),
            #[cfg(feature = "gpio-cdev")]
            Lines::Cdev(cdev) => cdev.get(pin),
            #[cfg(any(feature = "rppal", target_arch = "aarch64", target_arch = "arm"))]
            Lines::Rppal(rppal) => rppal.get(pin),
        }
    }

    /// Drives an output line.
    pub fn set(&mut self, pin: u32, high: bool) -> Result<(), GpioError> {
        match self {
            Lines::Sim(sim) => sim.set(pin, high),
            #[cfg(feature = "gpio-cdev")]
            Lines::Cdev(cdev) => cdev.set(pin, high),
            #[cfg(any(feature = "rppal", target_arch = "aarch64", target_arch = "arm"))]
            Lines::Rppal(rppal) => rppal.set(pin, high),
        }
    }

    /// The next edge on any input line; pending forever without inputs.
    pub async fn edge(&mut self) -> Result<Edge, GpioError> {
        match self {
            Lines::Sim(sim) => Ok(sim.edge().await),
            #[cfg(feature = "gpio-cdev")]
            Lines::Cdev(cdev) => cdev.edge().await,
            #[cfg(any(feature = "rppal", target_arch = "aarch64", target_arch = "arm"))]
            Lines::Rppal(rppal) => rppal.edge().await,
        }
    }
}

/// Bounce edges the simulator adds after each flip, like a closing contact.
const SIM_BOUNCES: u32 = 4;

/// Simulated lines: inputs rest at their pull level or flip at `sim_toggle`,
/// bouncing inside their debounce window; outputs hold what they are set to,
/// and every change of an output is recorded for its chip (see
/// [`sim_output_edges`]), so a test can see when a line was driven.
#[derive(Debug)]
pub struct SimLines {
    chip: PathBuf,
    lines: Vec<SimLine>,
}

/// An output line of a simulated chip changed level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputEdge {
    /// The line.
    pub pin: u32,
    /// Its level after the change.
    pub high: bool,
    /// When (std time, comparable across threads and runtimes).
    pub at: std::time::Instant,
}

/// Output changes of simulated chips, by chip name.
static SIM_OUTPUTS: Mutex<BTreeMap<PathBuf, Vec<OutputEdge>>> = Mutex::new(BTreeMap::new());

/// Every output change of simulated chip `chip` so far.
pub fn sim_output_edges(chip: &Path) -> Vec<OutputEdge> {
    SIM_OUTPUTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(chip)
        .cloned()
        .unwrap_or_default()
}

#[derive(Debug)]
struct SimLine {
    pin: u32,
    high: bool,
    output: bool,
    /// Flip period and the next flip.
    toggle: Option<(Duration, Instant)>,
    bounce_gap: Duration,
    /// Edges still to come from the last flip.
    bounces: VecDeque<(Instant, bool)>,
}

impl SimLines {
    /// The lines of `requests` on simulated chip `chip`, first flips one period after `now`.
    pub fn new(chip: &Path, requests: &[LineRequest], now: Instant) -> SimLines {
        let lines = requests
            .iter()
            .map(|r| match r.kind {
                LineKind::Input {
                    pull,
                    debounce,
                    toggle,
                } => SimLine {
                    pin: r.pin,
                    high: pull == Pull::Up,
                    output: false,
                    toggle: toggle.map(|period| (period, now + period)),
                    // All bounces within half the window, and at most 1 ms apart.
                    bounce_gap: (debounce / (2 * SIM_BOUNCES)).min(Duration::from_millis(1)),
                    bounces: VecDeque::new(),
                },
                LineKind::Output { high } => SimLine {
                    pin: r.pin,
                    high,
                    output: true,
                    toggle: None,
                    bounce_gap: Duration::ZERO,
                    bounces: VecDeque::new(),
                },
            })
            .collect();
        SimLines {
            chip: chip.to_owned(),
            lines,
        }
    }

    fn line(&self, pin: u32) -> Result<&SimLine, GpioError> {
        self.lines
            .iter()
            .find(|l| l.pin == pin)
            .ok_or_else(|| not_requested(pin))
    }

    fn get(&self, pin: u32) -> Result<bool, GpioError> {
        self.line(pin).map(|l| l.high)
    }

    fn set(&mut self, pin: u32, high: bool) -> Result<(), GpioError> {
        let line = self
            .lines
            .iter_mut()
            .find(|l| l.pin == pin && l.output)
            .ok_or_else(|| not_requested(pin))?;
        if line.high != high {
            SIM_OUTPUTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(self.chip.clone())
                .or_default()
                .push(OutputEdge {
                    pin,
                    high,
                    at: std::time::Instant::now(),
                });
        }
        line.high = high;
        Ok(())
    }

    /// When each line's next edge is due.
    fn next_due(line: &SimLine) -> Option<Instant> {
        line.bounces
            .front()
            .map(|(at, _)| *at)
            .or(line.toggle.map(|(_, at)| at))
    }

    async fn edge(&mut self) -> Edge {
        let next = self
            .lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Self::next_due(l).map(|at| (at, i)))
            .min();
        let Some((at, index)) = next else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(at).await;
        let line = &mut self.lines[index];
        if let Some((_, high)) = line.bounces.pop_front() {
            line.high = high;
        } else if let Some((period, due)) = line.toggle.as_mut() {
            line.high = !line.high;
            *due += *period;
            for n in 1..=SIM_BOUNCES {
                line.bounces
                    .push_back((at + line.bounce_gap * n, line.high ^ (n % 2 == 1)));
            }
        }
        Edge {
            pin: line.pin,
            high: line.high,
            at,
        }
    }
}

fn not_requested(pin: u32) -> GpioError {
    GpioError::Line {
        pin,
        reason: "not requested as this kind of line".into(),
    }
}

#[cfg(feature = "gpio-cdev")]
mod cdev {
    use std::path::Path;

    use gpiocdev::Request;
    use gpiocdev::line::{Bias, EdgeDetection, EdgeKind, Value};
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    use tokio::time::Instant;

    use super::{Edge, GpioError, LineKind, LineRequest};
    use crate::config::Pull;

    /// One line request on a character device, watched by tokio.
    #[derive(Debug)]
    pub struct CdevLines {
        request: AsyncFd<Request>,
    }

    impl CdevLines {
        pub(super) fn open(chip: &Path, lines: &[LineRequest]) -> Result<CdevLines, GpioError> {
            let open_error = |e: &dyn std::fmt::Display| GpioError::Open {
                chip: chip.display().to_string(),
                reason: e.to_string(),
            };
            let mut builder = Request::builder();
            builder.on_chip(chip).with_consumer("fieldmq");
            for line in lines {
                builder.with_line(line.pin);
                match line.kind {
                    LineKind::Input { pull, .. } => {
                        let bias = match pull {
                            Pull::Up => Bias::PullUp,
                            Pull::Down => Bias::PullDown,
                            Pull::None => Bias::Disabled,
                        };
                        builder
                            .as_input()
                            .with_bias(bias)
                            .with_edge_detection(EdgeDetection::BothEdges);
                    }
                    LineKind::Output { high } => {
                        builder.as_output(Value::from(high));
                    }
                }
            }
            let request = builder.request().map_err(|e| open_error(&e))?;
            // SAFETY: the Request owns its line-request file descriptor until
            // it is dropped, which is when the AsyncFd drops it; as_raw_fd
            // always returns that same descriptor.
            let request = unsafe { AsyncFd::register_with_interest(request, Interest::READABLE) }
                .map_err(|e| open_error(&e))?;
            Ok(CdevLines { request })
        }

        pub(super) fn get(&self, pin: u32) -> Result<bool, GpioError> {
            self.request
                .get_ref()
                .value(pin)
                .map(|v| v == Value::Active)
                .map_err(|e| line_error(pin, &e))
        }

        pub(super) fn set(&mut self, pin: u32, high: bool) -> Result<(), GpioError> {
            self.request
                .get_ref()
                .set_value(pin, Value::from(high))
                .map_err(|e| line_error(pin, &e))
        }

        pub(super) async fn edge(&mut self) -> Result<Edge, GpioError> {
            let failed = |e: &dyn std::fmt::Display| GpioError::Open {
                chip: "edge events".into(),
                reason: e.to_string(),
            };
            loop {
                let mut ready = self.request.readable().await.map_err(|e| failed(&e))?;
                let request = self.request.get_ref();
                if !request.has_edge_event().map_err(|e| failed(&e))? {
                    ready.clear_ready();
                    continue;
                }
                let event = request.read_edge_event().map_err(|e| failed(&e))?;
                if !request.has_edge_event().map_err(|e| failed(&e))? {
                    ready.clear_ready();
                }
                return Ok(Edge {
                    pin: event.offset,
                    // Lines are requested active-high: rising is low to high.
                    high: event.kind == EdgeKind::Rising,
                    at: Instant::now(),
                });
            }
        }
    }

    fn line_error(pin: u32, e: &gpiocdev::Error) -> GpioError {
        GpioError::Line {
            pin,
            reason: e.to_string(),
        }
    }
}

#[cfg(any(feature = "rppal", target_arch = "aarch64", target_arch = "arm"))]
mod rppal_lines {
    use rppal::gpio::{Gpio, InputPin, Level, OutputPin, Trigger};
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::{Edge, GpioError, LineKind, LineRequest};
    use crate::config::Pull;

    /// Edges waiting for the task. rppal calls back from its own thread; a
    /// chattering line beyond this is cut, and the task re-reads the level.
    const EDGE_QUEUE: usize = 1024;

    /// Raspberry Pi pins; rppal's interrupt thread feeds edges into a channel.
    #[derive(Debug)]
    pub struct RppalLines {
        inputs: Vec<(u32, InputPin)>,
        outputs: Vec<(u32, OutputPin)>,
        edges: mpsc::Receiver<Edge>,
    }

    impl RppalLines {
        pub(super) fn open(lines: &[LineRequest]) -> Result<RppalLines, GpioError> {
            let open_error = |e: &dyn std::fmt::Display| GpioError::Open {
                chip: "rppal".into(),
                reason: e.to_string(),
            };
            let gpio = Gpio::new().map_err(|e| open_error(&e))?;
            let (tx, edges) = mpsc::channel(EDGE_QUEUE);
            let mut inputs = Vec::new();
            let mut outputs = Vec::new();
            for line in lines {
                let bcm = u8::try_from(line.pin).map_err(|_| GpioError::Line {
                    pin: line.pin,
                    reason: "a BCM number is 0..=53".into(),
                })?;
                let pin = gpio.get(bcm).map_err(|e| line_error(line.pin, &e))?;
                match line.kind {
                    LineKind::Input { pull, .. } => {
                        let mut input = match pull {
                            Pull::Up => pin.into_input_pullup(),
                            Pull::Down => pin.into_input_pulldown(),
                            Pull::None => pin.into_input(),
                        };
                        let tx = tx.clone();
                        let number = line.pin;
                        input
                            .set_async_interrupt(Trigger::Both, None, move |event| {
                                // A full queue loses edges, not the level: the
                                // task reads the line after each edge.
                                let _ = tx.try_send(Edge {
                                    pin: number,
                                    high: event.trigger == Trigger::RisingEdge,
                                    at: Instant::now(),
                                });
                            })
                            .map_err(|e| line_error(line.pin, &e))?;
                        inputs.push((line.pin, input));
                    }
                    LineKind::Output { high } => {
                        let mut output = if high {
                            pin.into_output_high()
                        } else {
                            pin.into_output_low()
                        };
                        // The safe state set at shutdown must outlive the process.
                        output.set_reset_on_drop(false);
                        outputs.push((line.pin, output));
                    }
                }
            }
            Ok(RppalLines {
                inputs,
                outputs,
                edges,
            })
        }

        pub(super) fn get(&self, pin: u32) -> Result<bool, GpioError> {
            if let Some((_, input)) = self.inputs.iter().find(|(p, _)| *p == pin) {
                return Ok(input.read() == Level::High);
            }
            self.outputs
                .iter()
                .find(|(p, _)| *p == pin)
                .map(|(_, output)| output.is_set_high())
                .ok_or_else(|| super::not_requested(pin))
        }

        pub(super) fn set(&mut self, pin: u32, high: bool) -> Result<(), GpioError> {
            let (_, output) = self
                .outputs
                .iter_mut()
                .find(|(p, _)| *p == pin)
                .ok_or_else(|| super::not_requested(pin))?;
            output.write(Level::from(high));
            Ok(())
        }

        pub(super) async fn edge(&mut self) -> Result<Edge, GpioError> {
            match self.edges.recv().await {
                Some(edge) => Ok(edge),
                None => Err(GpioError::Open {
                    chip: "rppal".into(),
                    reason: "the interrupt thread stopped".into(),
                }),
            }
        }
    }

    fn line_error(pin: u32, e: &rppal::gpio::Error) -> GpioError {
        GpioError::Line {
            pin,
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(pin: u32, pull: Pull, toggle: Option<Duration>) -> LineRequest {
        LineRequest {
            pin,
            kind: LineKind::Input {
                pull,
                debounce: Duration::from_millis(20),
                toggle,
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_simulated_contact_flips_at_its_period_and_bounces_inside_the_window() {
        let t0 = Instant::now();
        let period = Duration::from_millis(500);
        let mut sim = SimLines::new(Path::new("t"), &[input(4, Pull::Up, Some(period))], t0);
        assert!(sim.get(4).unwrap(), "a pulled-up contact rests high");
        let edges: Vec<Edge> = {
            let mut v = Vec::new();
            for _ in 0..10 {
                v.push(sim.edge().await);
            }
            v
        };
        let levels: Vec<bool> = edges.iter().map(|e| e.high).collect();
        assert_eq!(
            levels,
            [
                false, true, false, true, false, true, false, true, false, true
            ]
        );
        assert_eq!(edges[0].at, t0 + period);
        assert!(
            edges[4].at - edges[0].at < Duration::from_millis(10),
            "bounces within half the debounce window"
        );
        assert_eq!(
            edges[5].at,
            t0 + 2 * period,
            "the next flip keeps the period"
        );
        assert!(sim.get(4).unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn simulated_outputs_hold_their_level_and_inputs_refuse_to_be_driven() {
        let requests = [
            input(1, Pull::Down, None),
            LineRequest {
                pin: 2,
                kind: LineKind::Output { high: true },
            },
        ];
        let mut sim = SimLines::new(Path::new("t"), &requests, Instant::now());
        assert!(sim.get(2).unwrap());
        sim.set(2, false).unwrap();
        assert!(!sim.get(2).unwrap());
        assert!(!sim.get(1).unwrap());
        assert!(sim.set(1, true).is_err());
        assert!(sim.get(9).is_err());
        let quiet = tokio::time::timeout(Duration::from_secs(3600), sim.edge()).await;
        assert!(quiet.is_err(), "an input without sim_toggle never changes");
    }
}
