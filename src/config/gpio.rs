//! GPIO devices: `[[device]] gpio = "cdev" | "rppal" | "sim"` and their pins.
//!
//! A GPIO device becomes a bus of its own (one task owns its lines) and its
//! pins become ordinary metrics, so Sparkplug, the plain profile and the
//! write rules treat them like any other: a level input is a read-only bool,
//! an output a writable bool (a coil), a counter a u64 total with a
//! `<name>/rate` companion in pulses per second.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::check::{Checker, Publishing};
use super::raw::{RawDevice, RawMetric};
use super::{Attachment, Device, Metric, Source};
use crate::core::value::DataType;

/// Where a GPIO device's lines are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioChip {
    /// The driver.
    pub backend: GpioBackend,
    /// `chip` (cdev): the character device, e.g. `/dev/gpiochip0`.
    pub chip: PathBuf,
}

/// `gpio = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpioBackend {
    /// The Linux GPIO character device (any board).
    Cdev,
    /// Raspberry Pi registers through rppal (cargo feature `rppal`).
    Rppal,
    /// In-process simulated pins (tests, demo).
    Sim,
}

pub(super) const BACKENDS: [(&str, GpioBackend); 3] = [
    ("cdev", GpioBackend::Cdev),
    ("rppal", GpioBackend::Rppal),
    ("sim", GpioBackend::Sim),
];

/// Input bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pull {
    /// Pull-up resistor on.
    Up,
    /// Pull-down resistor on.
    Down,
    /// No bias (external resistor).
    #[default]
    None,
}

const PULLS: [(&str, Pull); 3] = [("up", Pull::Up), ("down", Pull::Down), ("none", Pull::None)];

/// What a pin metric does.
#[derive(Debug, Clone, PartialEq)]
pub enum PinRole {
    /// A debounced input level, published on each change.
    Level(InputLine),
    /// A debounced input whose active edges are counted.
    Counter(InputLine),
    /// Pulses per second of the counter on the same pin.
    Rate,
    /// An output driven by commands.
    Output {
        /// Set at start.
        initial: bool,
        /// Set at shutdown and, with `safe_after`, when the uplink is gone that long.
        safe: Option<bool>,
        /// How long the uplink (or primary host) may be gone before `safe` is applied.
        safe_after: Option<Duration>,
    },
}

impl PinRole {
    /// The type of the value the pin reports: a level or an output is a
    /// bool, a counter a total, its rate pulses per second.
    pub fn data_type(&self) -> DataType {
        match self {
            PinRole::Level(_) | PinRole::Output { .. } => DataType::Bool,
            PinRole::Counter(_) => DataType::U64,
            PinRole::Rate => DataType::F64,
        }
    }
}

/// Settings of an input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLine {
    /// Bias.
    pub pull: Pull,
    /// How long a new level must hold.
    pub debounce: Duration,
    /// Sim backend: the pin flips at this period (with bounce edges).
    pub sim_toggle: Option<Duration>,
}

/// A metric's pin.
#[derive(Debug, Clone, PartialEq)]
pub struct PinSettings {
    /// BCM number (rppal) or line offset (cdev, sim).
    pub pin: u32,
    /// Active when the line is low (contacts to ground with a pull-up).
    pub active_low: bool,
    /// What it does.
    pub role: PinRole,
}

/// Why this build cannot drive `backend`, if it cannot.
pub(super) fn missing_driver(backend: GpioBackend) -> Option<&'static str> {
    match backend {
        GpioBackend::Sim => None,
        GpioBackend::Cdev if cfg!(feature = "gpio-cdev") => None,
        GpioBackend::Cdev => Some("this build has no cdev driver (cargo feature gpio-cdev)"),
        GpioBackend::Rppal
            if cfg!(any(
                feature = "rppal",
                target_arch = "aarch64",
                target_arch = "arm"
            )) =>
        {
            None
        }
        GpioBackend::Rppal => Some(
            "this build has no rppal driver (ARM builds have it; elsewhere cargo feature rppal)",
        ),
    }
}

/// Debounce when none is given: long enough for most dry contacts.
const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);
/// How often counter rates are reported when the device sets no `poll`.
const DEFAULT_RATE_PERIOD: Duration = Duration::from_secs(1);

impl Checker<'_> {
    /// A GPIO device; its `bus` is set by the caller, which creates the bus.
    pub(super) fn gpio_device(
        &mut self,
        raw: &RawDevice,
        backend: &Spanned<String>,
        base: &Path,
        defaults: Publishing,
    ) -> Device {
        let ctx = format!("device \"{}\"", raw.name.get_ref());
        let span = backend.span();
        let backend = self
            .choice(&ctx, "gpio", backend, &BACKENDS)
            .unwrap_or(GpioBackend::Sim);
        if let Some(missing) = missing_driver(backend) {
            self.error(span, &ctx, missing.into());
        }
        let modbus_only = [
            ("bus", raw.bus.as_ref().map(Spanned::span)),
            ("unit", raw.unit.as_ref().map(Spanned::span)),
            (
                "max_read_registers",
                raw.max_read_registers.as_ref().map(Spanned::span),
            ),
            (
                "max_read_bits",
                raw.max_read_bits.as_ref().map(Spanned::span),
            ),
            ("byte_order", raw.byte_order.as_ref().map(Spanned::span)),
            ("word_order", raw.word_order.as_ref().map(Spanned::span)),
            (
                "write_multiple",
                raw.write_multiple.as_ref().map(Spanned::span),
            ),
            ("max_gap", raw.max_gap.as_ref().map(Spanned::span)),
            (
                "connect_delay",
                raw.connect_delay.as_ref().map(Spanned::span),
            ),
            (
                "request_delay",
                raw.request_delay.as_ref().map(Spanned::span),
            ),
            (
                "close_after_poll",
                raw.close_after_poll.as_ref().map(Spanned::span),
            ),
            ("identify", raw.identify.as_ref().map(Spanned::span)),
        ];
        self.refuse_present(&ctx, &modbus_only, |key| {
            format!("{key} applies only to Modbus devices, not gpio = \"...\"")
        });
        let chip = match (&raw.chip, backend) {
            (Some(c), GpioBackend::Cdev) => base.join(c.get_ref()),
            (Some(c), _) => {
                self.error(
                    c.span(),
                    &ctx,
                    "chip applies only to gpio = \"cdev\"".into(),
                );
                PathBuf::new()
            }
            (None, GpioBackend::Cdev) => PathBuf::from("/dev/gpiochip0"),
            (None, _) => PathBuf::new(),
        };
        if raw.metric.is_empty() {
            self.error(
                raw.name.span(),
                &ctx,
                "device has no [[device.metric]] entries".into(),
            );
        }
        self.unique(&ctx, "metric", raw.metric.iter().map(|m| &m.name));
        let mut metrics = Vec::new();
        let mut pins: Vec<(u32, String)> = Vec::new();
        for m in &raw.metric {
            let before = metrics.len();
            self.pin_metric(&ctx, m, defaults, &mut metrics);
            if let Some(pin) = metrics.get(before).and_then(Metric::pin) {
                if let Some((_, first)) = pins.iter().find(|(p, _)| *p == pin.pin) {
                    let message = format!("pin {} is already used by metric \"{first}\"", pin.pin);
                    let span = m.pin.as_ref().map_or(m.name.span(), Spanned::span);
                    self.error(span, &ctx, message);
                } else {
                    pins.push((pin.pin, m.name.get_ref().clone()));
                }
            }
        }
        Device {
            model: None,
            name: raw.name.get_ref().clone(),
            attachment: Attachment::Gpio(GpioChip { backend, chip }),
            poll: self.duration(&ctx, "poll", raw.poll.as_ref(), DEFAULT_RATE_PERIOD),
            offline_after: 1,
            max_backoff: self.duration(
                &ctx,
                "max_backoff",
                raw.max_backoff.as_ref(),
                Duration::from_secs(60),
            ),
            metrics: metrics.into(),
        }
    }

    fn pin_metric(
        &mut self,
        device_ctx: &str,
        raw: &RawMetric,
        defaults: Publishing,
        out: &mut Vec<Metric>,
    ) {
        let ctx = format!("{device_ctx}, metric \"{}\"", raw.name.get_ref());
        self.metric_name(&ctx, &raw.name);
        let register_only = [
            ("table", raw.table.as_ref().map(Spanned::span)),
            ("address", raw.address.as_ref().map(Spanned::span)),
            ("register", raw.register.as_ref().map(Spanned::span)),
            ("poll", raw.poll.as_ref().map(Spanned::span)),
            ("type", raw.data_type.as_ref().map(Spanned::span)),
            ("byte_order", raw.byte_order.as_ref().map(Spanned::span)),
            ("word_order", raw.word_order.as_ref().map(Spanned::span)),
            ("bit", raw.bit.as_ref().map(Spanned::span)),
            ("length", raw.length.as_ref().map(Spanned::span)),
            ("scale", raw.scale.as_ref().map(Spanned::span)),
            ("offset", raw.offset.as_ref().map(Spanned::span)),
            ("deadband", raw.deadband.as_ref().map(Spanned::span)),
            ("min", raw.min.as_ref().map(Spanned::span)),
            ("max", raw.max.as_ref().map(Spanned::span)),
        ];
        self.refuse_present(&ctx, &register_only, |key| {
            format!(
                "{key} applies only to Modbus metrics; a GPIO metric has pin, direction, mode, ..."
            )
        });
        let pin = match &raw.pin {
            Some(p) => self.int(&ctx, "pin", p, 0, 1023).unwrap_or(0),
            None => {
                self.error(
                    raw.name.span(),
                    &ctx,
                    "a GPIO metric needs pin = <line offset or BCM number>".into(),
                );
                0
            }
        };
        let output = match &raw.direction {
            Some(d) => self
                .choice(&ctx, "direction", d, &[("input", false), ("output", true)])
                .unwrap_or(false),
            None => false,
        };
        let input_keys = [
            ("pull", raw.pull.as_ref().map(Spanned::span)),
            ("debounce", raw.debounce.as_ref().map(Spanned::span)),
            ("mode", raw.mode.as_ref().map(Spanned::span)),
            ("sim_toggle", raw.sim_toggle.as_ref().map(Spanned::span)),
        ];
        let output_keys = [
            ("initial", raw.initial.as_ref().map(Spanned::span)),
            ("safe", raw.safe.as_ref().map(Spanned::span)),
            ("safe_after", raw.safe_after.as_ref().map(Spanned::span)),
        ];
        let (wrong, role_name) = if output {
            (input_keys.to_vec(), "direction = \"output\"")
        } else {
            (output_keys.to_vec(), "an input")
        };
        self.refuse_present(&ctx, &wrong, |key| {
            format!("{key} does not apply to {role_name}")
        });
        let writable = raw.writable.as_ref().is_some_and(|w| *w.get_ref());
        if let (false, true, Some(w)) = (output, writable, &raw.writable) {
            self.error(
                w.span(),
                &ctx,
                "writable = true needs direction = \"output\"; an input pin is read-only".into(),
            );
        }
        let active_low = raw.active_low.as_ref().is_some_and(|a| *a.get_ref());
        let qos = raw
            .qos
            .as_ref()
            .and_then(|q| self.qos(&ctx, q))
            .unwrap_or(defaults.qos);
        let retain = raw
            .retain
            .as_ref()
            .map_or(defaults.retain, |r| *r.get_ref());
        let unit = raw.unit.as_ref().map(|u| u.get_ref().clone());
        let metric = |name: String, writable, role| Metric {
            name,
            source: Source::Pin(PinSettings {
                pin,
                active_low,
                role,
            }),
            unit: unit.clone(),
            deadband: None,
            writable,
            min: None,
            max: None,
            qos,
            retain,
            poll: None,
        };
        if output {
            let safe_after = raw
                .safe_after
                .as_ref()
                .map(|v| self.duration(&ctx, "safe_after", Some(v), Duration::from_secs(60)));
            if let (Some(_), None, Some(v)) = (safe_after, &raw.safe, &raw.safe_after) {
                self.error(
                    v.span(),
                    &ctx,
                    "safe_after needs safe = true or false".into(),
                );
            }
            let role = PinRole::Output {
                initial: raw.initial.as_ref().is_some_and(|v| *v.get_ref()),
                safe: raw.safe.as_ref().map(|v| *v.get_ref()),
                safe_after,
            };
            let m = metric(raw.name.get_ref().clone(), true, role);
            out.push(m);
            return;
        }
        let line = InputLine {
            pull: raw
                .pull
                .as_ref()
                .and_then(|p| self.choice(&ctx, "pull", p, &PULLS))
                .unwrap_or_default(),
            debounce: raw
                .debounce
                .as_ref()
                .and_then(|d| self.any_duration(&ctx, "debounce", Some(d)))
                .unwrap_or(DEFAULT_DEBOUNCE),
            sim_toggle: raw
                .sim_toggle
                .as_ref()
                .map(|d| self.duration(&ctx, "sim_toggle", Some(d), Duration::from_millis(500))),
        };
        let counter = match &raw.mode {
            Some(m) => self
                .choice(&ctx, "mode", m, &[("level", false), ("counter", true)])
                .unwrap_or(false),
            None => false,
        };
        if counter {
            let total = metric(raw.name.get_ref().clone(), false, PinRole::Counter(line));
            let mut rate = metric(format!("{}/rate", raw.name.get_ref()), false, PinRole::Rate);
            rate.unit = raw.unit.as_ref().map(|u| format!("{}/s", u.get_ref()));
            out.push(total);
            out.push(rate);
        } else {
            let level = metric(raw.name.get_ref().clone(), false, PinRole::Level(line));
            out.push(level);
        }
    }
}
