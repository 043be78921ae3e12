//! The validated configuration, and the one place TOML text becomes it.
//!
//! Loading runs in two stages, like ripgrep's low/high arguments: serde reads
//! the text into [`raw`] structs that keep every value's position, then
//! [`Config::from_toml`] checks everything at once and collects every problem
//! with its file, line and key. Nothing downstream parses strings again.
//!
//! This file holds the model of the device map; each other section (and its
//! rules) has a file of its own: `bus`, `device`, `gpio`, `upstream`,
//! `buffer`, `broker`, `health`. `check` is the checker's core and the walk
//! over the whole file, `diagnostic` the errors as the user sees them, and
//! [`reload`] what a SIGHUP changes.

mod broker;
mod buffer;
mod bus;
mod check;
mod device;
mod diagnostic;
mod gpio;
mod health;
mod model;
mod raw;
pub mod reload;
mod upstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::core::layout::{Limits, RegisterLayout, Scaling, Span, Table};
use crate::core::message::Qos;
use crate::core::value::DataType;
pub use broker::{BrokerTls, BrokerUser, DEFAULT_LISTEN, LocalBrokerSettings, Secret};
pub use buffer::{BufferPolicy, DEFAULT_DRAIN_RATE, DEFAULT_MAX_SIZE, Overflow};
use check::{Checker, line_of};
pub use diagnostic::{ConfigError, Diagnostic};
pub use gpio::{GpioBackend, GpioChip, InputLine, PinRole, PinSettings, Pull};
pub use health::Health;
pub use model::{KnownModel, ModelIdentity};
use raw::RawConfig;
pub use upstream::{
    ClientCertificate, Compression, DEFAULT_MAX_PACKET_SIZE, DEFAULT_REBIRTH_MIN_INTERVAL, Profile,
    Server, TopicTemplate, Upstream, parse_url,
};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was loaded from, for messages.
    pub path: PathBuf,
    /// Identity of this gateway.
    pub node: Node,
    /// The MQTT server to publish to; without it the gateway only logs what it reads.
    pub upstream: Option<Upstream>,
    /// How data waits on disk while the uplink is down.
    pub buffer: BufferPolicy,
    /// The embedded local broker.
    pub broker: LocalBrokerSettings,
    /// Where `/healthz`, `/metrics` and the status page are served, if anywhere.
    pub health: Option<Health>,
    /// Field buses, each polled by one task.
    pub buses: Vec<Bus>,
    /// Devices; a `DeviceId` is an index into this list.
    pub devices: Vec<Device>,
    /// Every model defined or included, by name.
    pub models: Vec<KnownModel>,
}

/// `[node]`: the gateway's identity, also its Sparkplug group and edge node ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Sparkplug group id.
    pub group_id: String,
    /// Sparkplug edge node id.
    pub node_id: String,
    /// Where state that must survive a restart is kept (bdSeq, the buffer).
    pub data_dir: PathBuf,
    /// How often the gateway's own statistics are published when they changed.
    pub stats_interval: Duration,
}

/// One field bus: a serial line or a TCP endpoint, used one transaction at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Bus {
    /// Unique name devices refer to.
    pub name: String,
    /// How the bus is reached.
    pub transport: Transport,
    /// How long to wait for each response.
    pub timeout: Duration,
    /// Extra quiet time between transactions, for slow devices; added to the
    /// 3.5-character silent interval on serial lines.
    pub turnaround: Duration,
}

/// The transport of a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Modbus TCP (MBAP header) to `host:port`.
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// RTU frames (with CRC) tunnelled through a TCP connection, as serial servers do.
    RtuOverTcp {
        /// `host:port`.
        address: String,
    },
    /// RTU on a local serial port.
    Rtu(SerialLine),
}

/// Serial line settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialLine {
    /// Device path, e.g. `/dev/ttyUSB0`.
    pub port: String,
    /// Bits per second.
    pub baud: u32,
    /// Parity bit.
    pub parity: Parity,
    /// 7 or 8.
    pub data_bits: u8,
    /// 1 or 2.
    pub stop_bits: u8,
    /// Longest pause allowed between two characters of an answer, beyond
    /// the frame's wire time; `None`: [`SerialLine::default_byte_timeout`].
    pub byte_timeout: Option<Duration>,
    /// Who switches the RS-485 transceiver between sending and receiving.
    pub direction: Direction,
}

/// `[[bus]] rs485`: who switches the transceiver's direction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Direction {
    /// The adapter does it itself (USB adapters, HATs with automatic direction).
    #[default]
    Auto,
    /// The kernel's RS-485 mode (TIOCSRS485) drives RTS.
    Kernel(KernelRs485),
    /// fieldmq raises RTS for exactly the frame's transmission time.
    Rts,
    /// fieldmq drives a GPIO line wired to the transceiver's driver enable.
    Pin(DriverPin),
}

/// The kernel's RS-485 settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRs485 {
    /// RTS high while sending (most transceivers); low if wired inverted.
    pub rts_on_send: bool,
    /// Delay between raising RTS and the first bit, in milliseconds.
    pub delay_before_ms: u32,
    /// Delay between the last bit and dropping RTS, in milliseconds.
    pub delay_after_ms: u32,
}

/// A GPIO line wired to a transceiver's driver enable (DE, with /RE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverPin {
    /// The driver and chip.
    pub chip: GpioChip,
    /// Line offset (cdev, sim) or BCM number (rppal).
    pub line: u32,
}

impl SerialLine {
    /// Bits on the wire per character: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// Time `bytes` characters take on the line.
    pub fn wire_time(&self, bytes: usize) -> Duration {
        let bits = u64::from(self.bits_per_char()) * u64::try_from(bytes).unwrap_or(u64::MAX);
        Duration::from_nanos(bits.saturating_mul(1_000_000_000) / u64::from(self.baud.max(1)))
    }

    /// The spec's inter-character limit: 1.5 character times, or 750 µs
    /// above 19200 baud, where the specification fixes the timings.
    pub fn default_byte_timeout(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(750)
        } else {
            self.wire_time(1).mul_f64(1.5)
        }
    }

    /// The allowance beyond a frame's wire time: `byte_timeout` or the default.
    pub fn byte_timeout(&self) -> Duration {
        self.byte_timeout
            .unwrap_or_else(|| self.default_byte_timeout())
    }

    /// The 3.5-character silent interval that delimits RTU frames. Above
    /// 19200 baud the specification fixes it at 1.75 ms.
    pub fn silent_interval(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            let micros = 3_500_000 * u64::from(self.bits_per_char()) / u64::from(self.baud.max(1));
            Duration::from_micros(micros)
        }
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit (8N1 and friends).
    None,
    /// Even parity, the Modbus default.
    Even,
    /// Odd parity.
    Odd,
}

impl Parity {
    /// As the config writes it: `none`, `even`, `odd`.
    pub fn name(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}

/// One line, as `check` and `scan` print a bus: `tcp 10.0.0.5:502`,
/// `rtu /dev/ttyUSB0 9600 8N1`.
impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp { address } => write!(f, "tcp {address}"),
            Transport::RtuOverTcp { address } => write!(f, "rtu-over-tcp {address}"),
            Transport::Rtu(line) => {
                let parity = line.parity.name().chars().next().unwrap_or('n');
                write!(
                    f,
                    "rtu {} {} {}{}{}",
                    line.port,
                    line.baud,
                    line.data_bits,
                    parity.to_ascii_uppercase(),
                    line.stop_bits
                )
            }
        }
    }
}

/// One Modbus device (unit id) on a bus, with its metrics and schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Unique name; also the Sparkplug device id.
    pub name: String,
    /// The `[[model]]` its metrics and defaults come from, if any.
    pub model: Option<String>,
    /// How it is reached: a Modbus bus, or the board's GPIO lines.
    pub attachment: Attachment,
    /// Poll period (GPIO: how often counter totals and rates are reported).
    pub poll: Duration,
    /// Consecutive failed cycles after which the device is marked offline.
    pub offline_after: u32,
    /// Longest wait between retries of an offline device.
    pub max_backoff: Duration,
    /// Metrics; a `MetricId` is an index into this list. Devices whose
    /// metrics come out the same (one model, no overrides) share one list.
    pub metrics: Arc<[Metric]>,
}

/// How a device is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Attachment {
    /// A unit on a Modbus bus.
    Modbus(ModbusUnit),
    /// Lines of a GPIO chip, owned by the device alone.
    Gpio(GpioChip),
}

/// A device's place on a Modbus bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModbusUnit {
    /// Index of its bus in [`Config::buses`].
    pub bus: usize,
    /// Modbus unit (slave) id.
    pub unit: u8,
    /// Request size limits for the planner.
    pub limits: Limits,
    /// Every write uses FC 16 (registers) or FC 15 (coils), even for one:
    /// for devices that do not implement FC 06 / FC 05.
    pub write_multiple: bool,
    /// Ask the device what it is (function 43/14) each time it comes online,
    /// for births and `{device}/identity`.
    pub identify: bool,
    /// How the device must be talked to beyond the protocol.
    pub quirks: Quirks,
}

/// What real devices need beyond the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quirks {
    /// Wait after a TCP connect before the first request (devices that drop
    /// a request sent the moment they accept).
    pub connect_delay: Duration,
    /// Quiet time on the bus before each request to this unit.
    pub request_delay: Duration,
    /// Hold the connection only for this device's cycle: for devices that
    /// serve one client at a time.
    pub close_after_poll: bool,
}

impl Device {
    /// Its Modbus bus and unit, unless it is a GPIO device.
    pub fn modbus(&self) -> Option<&ModbusUnit> {
        match &self.attachment {
            Attachment::Modbus(unit) => Some(unit),
            Attachment::Gpio(_) => None,
        }
    }

    /// How often `metric` is read: its own period, else the device's.
    pub fn period_of(&self, metric: &Metric) -> Duration {
        metric.poll.unwrap_or(self.poll)
    }

    /// Its scan classes: the distinct poll periods of its metrics, shortest first.
    pub fn periods(&self) -> Vec<Duration> {
        let mut periods: Vec<Duration> = self.metrics.iter().map(|m| self.period_of(m)).collect();
        periods.sort_unstable();
        periods.dedup();
        periods
    }

    /// Whether it is a unit on bus `bus`.
    pub fn is_on_bus(&self, bus: usize) -> bool {
        self.modbus().is_some_and(|m| m.bus == bus)
    }

    /// A checksum of its name and its metrics' names and value types: what
    /// stored samples name their device by, so that they are never read
    /// back under a device map they do not fit.
    pub fn key(&self) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(self.name.as_bytes());
        for metric in self.metrics.iter() {
            hasher.update(&[0]);
            hasher.update(metric.name.as_bytes());
            hasher.update(&[0]);
            hasher.update(metric.value_type().name().as_bytes());
        }
        hasher.finalize()
    }
}

/// One value read from a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Unique within its device; `/` separates folders.
    pub name: String,
    /// Where its value comes from.
    pub source: Source,
    /// Engineering unit, e.g. `V`.
    pub unit: Option<String>,
    /// Report-by-exception threshold for numbers: smaller changes are not reported.
    pub deadband: Option<f64>,
    /// Whether commands may write it.
    pub writable: bool,
    /// Lowest value a write may set.
    pub min: Option<f64>,
    /// Highest value a write may set.
    pub max: Option<f64>,
    /// Plain profile: QoS of its messages.
    pub qos: Qos,
    /// Plain profile: whether its messages are retained.
    pub retain: bool,
    /// Its own poll period (scan class); `None`: the device's.
    pub poll: Option<Duration>,
}

/// Where a metric's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Bits or registers of a Modbus device.
    Register(Register),
    /// A pin of a GPIO device.
    Pin(PinSettings),
}

/// A metric's place in a Modbus device's tables, and how its value is laid out there.
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    /// The table it is read from.
    pub table: Table,
    /// 0-based address of its first bit or register.
    pub address: u16,
    /// Its type and, for registers, byte/word order, bit and length.
    pub layout: RegisterLayout,
    /// Conversion to engineering units, when not the identity.
    pub scaling: Option<Scaling>,
}

impl Register {
    /// The addresses it occupies.
    pub fn span(&self) -> Span {
        let count = if self.table.is_bits() {
            1
        } else {
            self.layout.register_count()
        };
        Span {
            table: self.table,
            start: self.address,
            count,
        }
    }
}

impl Metric {
    /// Its Modbus registers, unless it is a GPIO pin.
    pub fn register(&self) -> Option<&Register> {
        match &self.source {
            Source::Register(register) => Some(register),
            Source::Pin(_) => None,
        }
    }

    /// Its GPIO pin, unless it is read from Modbus registers.
    pub fn pin(&self) -> Option<&PinSettings> {
        match &self.source {
            Source::Pin(pin) => Some(pin),
            Source::Register(_) => None,
        }
    }

    /// The type of its reported value: scaled numbers become doubles.
    pub fn value_type(&self) -> DataType {
        match &self.source {
            Source::Register(r) if r.scaling.is_some() && r.layout.data_type.is_numeric() => {
                DataType::F64
            }
            Source::Register(r) => r.layout.data_type,
            Source::Pin(pin) => pin.role.data_type(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(path, &text)
    }

    /// Validates config text; `path` is only used in messages.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |diagnostics| ConfigError::Invalid {
            path: path.to_owned(),
            diagnostics,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            invalid(vec![Diagnostic {
                file: None,
                line,
                context: String::new(),
                message: e.message().trim_end().to_owned(),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (files, mut problems) = model::read_included(base, raw.include.as_ref(), text);
        let (parsed, unparsed) = model::parse_included(&files);
        problems.extend(unparsed);
        let included = parsed
            .iter()
            .flat_map(|(i, file)| {
                let source = model::Source {
                    file: Some(files[*i].path.as_path()),
                    text: &files[*i].text,
                };
                file.model
                    .iter()
                    .map(move |raw| model::ModelRef { source, raw })
            })
            .collect();
        let mut check = Checker {
            source: model::Source { file: None, text },
            diagnostics: problems,
            broken_template: false,
        };
        let config = check.config(path, &raw, included);
        if check.diagnostics.is_empty() {
            Ok(config)
        } else {
            // The config file's problems first, then each included file's.
            check
                .diagnostics
                .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            Err(invalid(check.diagnostics))
        }
    }

    /// Looks a device up by name.
    pub fn device_by_name(&self, name: &str) -> Option<(usize, &Device)> {
        self.devices
            .iter()
            .enumerate()
            .find(|(_, d)| d.name == name)
    }

    /// What each acquisition task owns, in task order: every Modbus bus
    /// (with the units on it), then every GPIO device.
    pub fn acquisitions(&self) -> Vec<Acquisition> {
        let gpio = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.modbus().is_none())
            .map(|(id, _)| Acquisition::Gpio(id));
        (0..self.buses.len())
            .map(Acquisition::Bus)
            .chain(gpio)
            .collect()
    }

    /// The index in [`Config::acquisitions`] of the task that owns `device`.
    pub fn acquisition_of(&self, device: usize) -> Option<usize> {
        let owner = match self.devices.get(device)?.modbus() {
            Some(unit) => Acquisition::Bus(unit.bus),
            None => Acquisition::Gpio(device),
        };
        self.acquisitions().iter().position(|a| *a == owner)
    }
}

/// One acquisition task's share of the device map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquisition {
    /// A Modbus bus (index into [`Config::buses`]) and the units on it.
    Bus(usize),
    /// A GPIO device (index into [`Config::devices`]) and its lines.
    Gpio(usize),
}

#[cfg(test)]
mod tests;
