//! The validated configuration, and the one place TOML text becomes it.
//!
//! Loading runs in two stages, like ripgrep's low/high arguments: serde reads
//! the text into [`raw`] structs that keep every value's position, then
//! [`Config::from_toml`] checks everything at once and collects every problem
//! with its file, line and key. Nothing downstream parses strings again.

mod broker;
mod buffer;
mod gpio;
mod health;
mod raw;
pub mod reload;
mod upstream;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use toml::Spanned;

use crate::core::message::Qos;

use crate::core::layout::{ByteOrder, RegisterLayout, Scaling, WordOrder};
use crate::core::layout::{Limits, Span, Table};
use crate::core::value::DataType;
pub use broker::{BrokerTls, BrokerUser, DEFAULT_LISTEN, LocalBrokerSettings, Secret};
pub use buffer::{BufferPolicy, DEFAULT_DRAIN_RATE, DEFAULT_MAX_SIZE, Overflow};
pub use gpio::{GpioBackend, GpioChip, InputLine, PinRole, PinSettings, Pull};
use raw::{RawBus, RawConfig, RawDevice, RawMetric};
pub use upstream::{
    ClientCertificate, DEFAULT_MAX_PACKET_SIZE, Profile, Server, TopicTemplate, Upstream, parse_url,
};

/// Why a config was refused: every problem found, each with its position.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read and found wrong.
    #[error("{}", render(path, diagnostics))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(path: &Path, diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics
        .iter()
        .map(|d| format!("{}:{d}", path.display()))
        .collect();
    lines.join("\n")
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line of the offending value.
    pub line: usize,
    /// What the value belongs to, e.g. `device "meter1", metric "voltage/L1"`; may be empty.
    pub context: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.context.is_empty() {
            write!(f, "{}: {}", self.line, self.message)
        } else {
            write!(f, "{}: {}: {}", self.line, self.context, self.message)
        }
    }
}

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
    /// Where `/healthz` and `/metrics` are served, if anywhere.
    pub health: Option<SocketAddr>,
    /// Field buses, each polled by one task.
    pub buses: Vec<Bus>,
    /// Devices; a `DeviceId` is an index into this list.
    pub devices: Vec<Device>,
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
    pub link: LinkKind,
    /// How long to wait for each response.
    pub timeout: Duration,
    /// Extra quiet time between transactions, for slow devices; added to the
    /// 3.5-character silent interval on serial lines.
    pub turnaround: Duration,
}

/// The transport of a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
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
}

impl SerialLine {
    /// Bits on the wire per character: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
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

/// One Modbus device (unit id) on a bus, with its metrics and schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Unique name; also the Sparkplug device id.
    pub name: String,
    /// How it is reached: a Modbus bus, or the board's GPIO lines.
    pub attachment: Attachment,
    /// Poll period (GPIO: how often counter totals and rates are reported).
    pub poll: Duration,
    /// Consecutive failed cycles after which the device is marked offline.
    pub offline_after: u32,
    /// Longest wait between retries of an offline device.
    pub max_backoff: Duration,
    /// Metrics; a `MetricId` is an index into this list.
    pub metrics: Vec<Metric>,
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
}

impl Device {
    /// Its Modbus bus and unit, unless it is a GPIO device.
    pub fn modbus(&self) -> Option<&ModbusUnit> {
        match &self.attachment {
            Attachment::Modbus(unit) => Some(unit),
            Attachment::Gpio(_) => None,
        }
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
        for metric in &self.metrics {
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
                line,
                context: String::new(),
                message: e.message().trim_end().to_owned(),
            }])
        })?;
        let mut check = Checker {
            text,
            diagnostics: Vec::new(),
            broken_template: false,
        };
        let config = check.config(path, raw);
        if check.diagnostics.is_empty() {
            Ok(config)
        } else {
            check.diagnostics.sort_by_key(|d| d.line);
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

/// Where an optional value starts, or 0 when it is absent.
fn span_start<T>(value: &Option<Spanned<T>>) -> usize {
    value.as_ref().map_or(0, |v| v.span().start)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

/// Plain-profile publishing settings a device gives its metrics by default.
#[derive(Debug, Clone, Copy)]
struct Publishing {
    qos: Qos,
    retain: bool,
}

/// Collects diagnostics while turning raw values into validated ones.
struct Checker<'a> {
    text: &'a str,
    diagnostics: Vec<Diagnostic>,
    /// The plain topic template has errors of its own.
    broken_template: bool,
}

const DEFAULT_POLL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
const DEFAULT_OFFLINE_AFTER: u32 = 3;
/// Longer periods make no sense for polling and would overflow deadline arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Where systemd's `StateDirectory=fieldmq` puts the service's state.
const DEFAULT_DATA_DIR: &str = "/var/lib/fieldmq";
const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(60);
/// Plain profile: a new subscriber sees each metric's last value at once.
const DEFAULT_RETAIN: bool = true;
const QOS_LEVELS: [Qos; 3] = [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce];
const BYTE_ORDERS: [(&str, ByteOrder); 2] =
    [("big", ByteOrder::Big), ("little", ByteOrder::Little)];
const WORD_ORDERS: [(&str, WordOrder); 2] =
    [("big", WordOrder::Big), ("little", WordOrder::Little)];
const PARITIES: [(&str, Parity); 3] = [
    ("none", Parity::None),
    ("even", Parity::Even),
    ("odd", Parity::Odd),
];
const BUS_KINDS: [&str; 3] = ["tcp", "rtu", "rtu-over-tcp"];

impl Checker<'_> {
    /// An error at each key of `keys` that was written, saying why it does not belong there.
    fn refuse_present(
        &mut self,
        context: &str,
        keys: &[(&str, Option<Range<usize>>)],
        why: impl Fn(&str) -> String,
    ) {
        for (key, span) in keys {
            if let Some(span) = span {
                self.error(span.clone(), context, why(key));
            }
        }
    }

    fn error(&mut self, span: Range<usize>, context: &str, message: String) {
        self.error_at(line_of(self.text, span.start), context, message);
    }

    /// A problem with no value to point at, reported at `line`.
    fn error_at(&mut self, line: usize, context: &str, message: String) {
        self.diagnostics.push(Diagnostic {
            line,
            context: context.to_owned(),
            message,
        });
    }

    fn choice<T: Copy>(
        &mut self,
        ctx: &str,
        key: &str,
        value: &Spanned<String>,
        options: &[(&str, T)],
    ) -> Option<T> {
        let found = options
            .iter()
            .find(|(name, _)| *name == value.get_ref().as_str());
        if found.is_none() {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            let message = format!(
                "unknown {key} \"{}\", expected one of {}",
                value.get_ref(),
                names.join(", ")
            );
            self.error(value.span(), ctx, message);
        }
        found.map(|(_, t)| *t)
    }

    fn int<T: TryFrom<i64>>(
        &mut self,
        ctx: &str,
        key: &str,
        value: &Spanned<i64>,
        lo: i64,
        hi: i64,
    ) -> Option<T> {
        let v = *value.get_ref();
        if (lo..=hi).contains(&v) {
            T::try_from(v).ok()
        } else {
            self.error(
                value.span(),
                ctx,
                format!("{key} = {v} is out of range, expected {lo}..={hi}"),
            );
            None
        }
    }

    /// A duration that must be longer than zero (periods, timeouts).
    fn duration(
        &mut self,
        ctx: &str,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        match (value, self.any_duration(ctx, key, value)) {
            (Some(v), Some(d)) if d.is_zero() => {
                self.error(v.span(), ctx, format!("{key} must be longer than zero"));
                default
            }
            (_, d) => d.unwrap_or(default),
        }
    }

    /// A duration of any length; `None` when absent or not a duration.
    fn any_duration(
        &mut self,
        ctx: &str,
        key: &str,
        value: Option<&Spanned<String>>,
    ) -> Option<Duration> {
        let value = value?;
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if d > MAX_DURATION => {
                let message = format!(
                    "{key} = \"{}\" is longer than the longest allowed, \"7days\"",
                    value.get_ref()
                );
                self.error(value.span(), ctx, message);
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                let message = format!(
                    "{key} = \"{}\" is not a duration ({e}), expected e.g. \"500ms\", \"2s\" or \"1m 30s\"",
                    value.get_ref()
                );
                self.error(value.span(), ctx, message);
                None
            }
        }
    }

    /// Sparkplug ids and device names: they become MQTT topic levels.
    fn topic_id(&mut self, ctx: &str, key: &str, value: &Spanned<String>) {
        let v = value.get_ref();
        let bad = v
            .chars()
            .find(|c| matches!(c, '+' | '#' | '/') || c.is_control());
        if v.is_empty() {
            self.error(value.span(), ctx, format!("{key} must not be empty"));
        } else if let Some(c) = bad {
            let message = format!(
                "{key} \"{v}\" contains {c:?}, which is not allowed in a Sparkplug id (no +, #, / or control characters)"
            );
            self.error(value.span(), ctx, message);
        }
    }

    /// Each name once, and no two that differ only by letter case (Sparkplug hosts may treat them as one).
    fn unique<'n>(
        &mut self,
        ctx: &str,
        what: &str,
        names: impl IntoIterator<Item = &'n Spanned<String>>,
    ) {
        let mut seen: HashMap<String, &str> = HashMap::new();
        for name in names {
            let folded = name.get_ref().to_lowercase();
            match seen.get(&folded) {
                Some(first) if *first == name.get_ref().as_str() => {
                    self.error(
                        name.span(),
                        ctx,
                        format!("duplicate {what} name \"{first}\""),
                    );
                }
                Some(first) => {
                    let message = format!(
                        "{what} name \"{}\" differs from \"{first}\" only by letter case",
                        name.get_ref()
                    );
                    self.error(name.span(), ctx, message);
                }
                None => {
                    seen.insert(folded, name.get_ref());
                }
            }
        }
    }

    fn config(&mut self, path: &Path, raw: RawConfig) -> Config {
        self.topic_id("[node]", "group_id", &raw.node.group_id);
        self.topic_id("[node]", "node_id", &raw.node.node_id);
        let base = path.parent().unwrap_or(Path::new("."));
        let node = Node {
            group_id: raw.node.group_id.get_ref().clone(),
            node_id: raw.node.node_id.get_ref().clone(),
            data_dir: raw.node.data_dir.as_ref().map_or_else(
                || PathBuf::from(DEFAULT_DATA_DIR),
                |d| base.join(d.get_ref()),
            ),
            stats_interval: self.duration(
                "[node]",
                "stats_interval",
                raw.node.stats_interval.as_ref(),
                DEFAULT_STATS_INTERVAL,
            ),
        };
        let upstream = raw.upstream.as_ref().map(|u| self.upstream(u, &node, base));
        let buffer = raw
            .buffer
            .as_ref()
            .map_or_else(BufferPolicy::default, |b| self.buffer(b));
        let broker = raw
            .broker
            .as_ref()
            .map_or_else(LocalBrokerSettings::default, |b| self.broker(b, base));
        let health = raw.health.as_ref().and_then(|h| self.health(h));
        self.unique("", "bus", raw.bus.iter().map(|b| &b.name));
        self.unique("", "device", raw.device.iter().map(|d| &d.name));
        let buses: Vec<Bus> = raw.bus.iter().map(|b| self.bus(b)).collect();
        self.shared_ports(&raw.bus);
        let mut devices: Vec<Device> = Vec::with_capacity(raw.device.len());
        for d in &raw.device {
            let device = match &d.gpio {
                Some(backend) => {
                    let defaults = self.publishing(d);
                    self.gpio_device(d, backend, base, defaults)
                }
                None => self.device(d, &raw.bus, &buses),
            };
            devices.push(device);
        }
        if let Some(u) = upstream
            .as_ref()
            .filter(|u| u.profile == Profile::Plain && !self.broken_template)
        {
            self.plain_topics(&node, &u.topic_template, &devices, &raw.device);
        }
        Config {
            path: path.to_owned(),
            node,
            upstream,
            buffer,
            broker,
            health,
            buses,
            devices,
        }
    }

    fn shared_ports(&mut self, raw: &[RawBus]) {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for bus in raw {
            if let Some(port) = &bus.port {
                match seen.get(port.get_ref().as_str()) {
                    Some(first) => {
                        let message = format!(
                            "serial port {} is already used by bus \"{first}\"; put every device on that line into one bus",
                            port.get_ref()
                        );
                        let ctx = format!("bus \"{}\"", bus.name.get_ref());
                        self.error(port.span(), &ctx, message);
                    }
                    None => {
                        seen.insert(port.get_ref(), bus.name.get_ref());
                    }
                }
            }
        }
    }

    fn bus(&mut self, raw: &RawBus) -> Bus {
        let ctx = format!("bus \"{}\"", raw.name.get_ref());
        let kind = raw.kind.get_ref().as_str();
        let serial_keys = [
            ("port", raw.port.as_ref().map(Spanned::span)),
            ("baud", raw.baud.as_ref().map(Spanned::span)),
            ("parity", raw.parity.as_ref().map(Spanned::span)),
            ("data_bits", raw.data_bits.as_ref().map(Spanned::span)),
            ("stop_bits", raw.stop_bits.as_ref().map(Spanned::span)),
        ];
        let link = match kind {
            "tcp" | "rtu-over-tcp" => {
                self.refuse_present(&ctx, &serial_keys, |key| {
                    format!("{key} applies only to kind = \"rtu\"")
                });
                let address = match &raw.address {
                    Some(a) => self.address(&ctx, a),
                    None => {
                        self.error(
                            raw.kind.span(),
                            &ctx,
                            format!("kind = \"{kind}\" needs address = \"host:port\""),
                        );
                        String::new()
                    }
                };
                if kind == "tcp" {
                    LinkKind::Tcp { address }
                } else {
                    LinkKind::RtuOverTcp { address }
                }
            }
            "rtu" => {
                if let Some(a) = &raw.address {
                    self.error(
                        a.span(),
                        &ctx,
                        "address applies only to kind = \"tcp\" or \"rtu-over-tcp\"".into(),
                    );
                }
                let port = match &raw.port {
                    Some(p) if !p.get_ref().is_empty() => p.get_ref().clone(),
                    _ => {
                        self.error(
                            raw.kind.span(),
                            &ctx,
                            "kind = \"rtu\" needs port, e.g. port = \"/dev/ttyUSB0\"".into(),
                        );
                        String::new()
                    }
                };
                let baud = raw
                    .baud
                    .as_ref()
                    .and_then(|b| self.int(&ctx, "baud", b, 50, 4_000_000))
                    .unwrap_or(9600);
                let parity = raw
                    .parity
                    .as_ref()
                    .and_then(|p| self.choice(&ctx, "parity", p, &PARITIES))
                    .unwrap_or(Parity::None);
                let data_bits = raw
                    .data_bits
                    .as_ref()
                    .and_then(|b| self.int(&ctx, "data_bits", b, 7, 8))
                    .unwrap_or(8);
                let stop_bits = raw
                    .stop_bits
                    .as_ref()
                    .and_then(|b| self.int(&ctx, "stop_bits", b, 1, 2))
                    .unwrap_or(1);
                LinkKind::Rtu(SerialLine {
                    port,
                    baud,
                    parity,
                    data_bits,
                    stop_bits,
                })
            }
            other => {
                let message = format!(
                    "unknown kind \"{other}\", expected one of {}",
                    BUS_KINDS.join(", ")
                );
                self.error(raw.kind.span(), &ctx, message);
                LinkKind::Tcp {
                    address: String::new(),
                }
            }
        };
        Bus {
            name: raw.name.get_ref().clone(),
            link,
            timeout: self.duration(&ctx, "timeout", raw.timeout.as_ref(), DEFAULT_TIMEOUT),
            turnaround: self
                .any_duration(&ctx, "turnaround", raw.turnaround.as_ref())
                .unwrap_or(Duration::ZERO),
        }
    }

    fn address(&mut self, ctx: &str, value: &Spanned<String>) -> String {
        let v = value.get_ref();
        let ok = v.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !ok {
            let message =
                format!("address = \"{v}\" is not host:port, expected e.g. \"10.0.0.5:502\"");
            self.error(value.span(), ctx, message);
        }
        v.clone()
    }

    fn device(&mut self, raw: &RawDevice, raw_buses: &[RawBus], buses: &[Bus]) -> Device {
        let ctx = format!("device \"{}\"", raw.name.get_ref());
        self.topic_id(&ctx, "name", &raw.name);
        let known: Vec<&str> = raw_buses
            .iter()
            .map(|b| b.name.get_ref().as_str())
            .collect();
        let bus = match &raw.bus {
            Some(name) => {
                let bus = raw_buses
                    .iter()
                    .position(|b| b.name.get_ref() == name.get_ref());
                if bus.is_none() {
                    let message = format!(
                        "bus \"{}\" is not defined, expected one of: {}",
                        name.get_ref(),
                        known.join(", ")
                    );
                    self.error(name.span(), &ctx, message);
                }
                bus
            }
            None => {
                let message = format!(
                    "a device needs bus = \"<name>\" (one of: {}) or gpio = \"cdev\", \"rppal\" or \"sim\"",
                    known.join(", ")
                );
                self.error(raw.name.span(), &ctx, message);
                None
            }
        };
        if let Some(c) = &raw.chip {
            self.error(
                c.span(),
                &ctx,
                "chip applies only to gpio = \"cdev\" devices".into(),
            );
        }
        let unit = match &raw.unit {
            Some(u) => {
                let unit = self.int(&ctx, "unit", u, 0, 247).unwrap_or(1);
                if unit == 0
                    && bus.is_some_and(|b| {
                        matches!(buses.get(b).map(|b| &b.link), Some(LinkKind::Rtu(_)))
                    })
                {
                    self.error(u.span(), &ctx, "unit = 0 is the broadcast address on a serial line; no device answers it, expected 1..=247".into());
                }
                unit
            }
            None => {
                self.error(
                    raw.name.span(),
                    &ctx,
                    "a Modbus device needs unit = <1..247>".into(),
                );
                1
            }
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_registers: raw
                .max_read_registers
                .as_ref()
                .and_then(|v| self.int(&ctx, "max_read_registers", v, 1, 125))
                .unwrap_or(defaults.max_registers),
            max_bits: raw
                .max_read_bits
                .as_ref()
                .and_then(|v| self.int(&ctx, "max_read_bits", v, 1, 2000))
                .unwrap_or(defaults.max_bits),
            max_gap: raw
                .max_gap
                .as_ref()
                .and_then(|v| self.int(&ctx, "max_gap", v, 0, 2000))
                .unwrap_or(defaults.max_gap),
        };
        let byte_order = raw
            .byte_order
            .as_ref()
            .and_then(|v| self.choice(&ctx, "byte_order", v, &BYTE_ORDERS))
            .unwrap_or_default();
        let word_order = raw
            .word_order
            .as_ref()
            .and_then(|v| self.choice(&ctx, "word_order", v, &WORD_ORDERS))
            .unwrap_or_default();
        if raw.metric.is_empty() {
            self.error(
                raw.name.span(),
                &ctx,
                "device has no [[device.metric]] entries".into(),
            );
        }
        self.unique(&ctx, "metric", raw.metric.iter().map(|m| &m.name));
        let defaults = self.publishing(raw);
        let metrics: Vec<Metric> = raw
            .metric
            .iter()
            .map(|m| self.metric(&ctx, m, byte_order, word_order, &limits, defaults))
            .collect();
        self.overlaps(&ctx, &raw.metric, &metrics);
        Device {
            name: raw.name.get_ref().clone(),
            attachment: Attachment::Modbus(ModbusUnit {
                bus: bus.unwrap_or(0),
                unit,
                limits,
            }),
            poll: self.duration(&ctx, "poll", raw.poll.as_ref(), DEFAULT_POLL),
            offline_after: raw
                .offline_after
                .as_ref()
                .and_then(|v| self.int(&ctx, "offline_after", v, 1, 1000))
                .unwrap_or(DEFAULT_OFFLINE_AFTER),
            max_backoff: self.duration(
                &ctx,
                "max_backoff",
                raw.max_backoff.as_ref(),
                DEFAULT_MAX_BACKOFF,
            ),
            metrics,
        }
    }

    /// A device's plain-profile defaults for its metrics.
    fn publishing(&mut self, raw: &RawDevice) -> Publishing {
        let ctx = format!("device \"{}\"", raw.name.get_ref());
        Publishing {
            qos: raw
                .qos
                .as_ref()
                .and_then(|q| self.qos(&ctx, q))
                .unwrap_or_default(),
            retain: raw.retain.as_ref().map_or(DEFAULT_RETAIN, |r| *r.get_ref()),
        }
    }

    /// A required key of a Modbus metric, or an error and a stand-in.
    fn required<T: Clone>(
        &mut self,
        ctx: &str,
        key: &str,
        value: &Option<Spanned<T>>,
        name: &Spanned<String>,
        stand_in: T,
    ) -> Spanned<T> {
        value.clone().unwrap_or_else(|| {
            self.error(name.span(), ctx, format!("a Modbus metric needs {key}"));
            Spanned::new(name.span(), stand_in)
        })
    }

    fn metric(
        &mut self,
        device_ctx: &str,
        raw: &RawMetric,
        byte_order: ByteOrder,
        word_order: WordOrder,
        limits: &Limits,
        defaults: Publishing,
    ) -> Metric {
        let ctx = format!("{device_ctx}, metric \"{}\"", raw.name.get_ref());
        self.metric_name(&ctx, &raw.name);
        let gpio_only = [
            ("pin", raw.pin.as_ref().map(Spanned::span)),
            ("direction", raw.direction.as_ref().map(Spanned::span)),
            ("pull", raw.pull.as_ref().map(Spanned::span)),
            ("active_low", raw.active_low.as_ref().map(Spanned::span)),
            ("debounce", raw.debounce.as_ref().map(Spanned::span)),
            ("mode", raw.mode.as_ref().map(Spanned::span)),
            ("initial", raw.initial.as_ref().map(Spanned::span)),
            ("safe", raw.safe.as_ref().map(Spanned::span)),
            ("safe_after", raw.safe_after.as_ref().map(Spanned::span)),
            ("sim_toggle", raw.sim_toggle.as_ref().map(Spanned::span)),
        ];
        self.refuse_present(&ctx, &gpio_only, |key| {
            format!("{key} applies only to GPIO devices (gpio = \"...\")")
        });
        let raw_table = self.required(&ctx, "table", &raw.table, &raw.name, "holding".into());
        let raw_type = self.required(&ctx, "type", &raw.data_type, &raw.name, "u16".into());
        let raw_address = self.required(&ctx, "address", &raw.address, &raw.name, 0);
        let table = self
            .choice(&ctx, "table", &raw_table, &Table::ALL)
            .unwrap_or(Table::Holding);
        let data_type = self
            .choice(&ctx, "type", &raw_type, &DataType::ALL)
            .unwrap_or(DataType::U16);
        let address = self
            .int(&ctx, "address", &raw_address, 0, 65535)
            .unwrap_or(0);
        let table_known = Table::ALL.iter().any(|(n, _)| n == raw_table.get_ref());
        if table.is_bits() && data_type != DataType::Bool {
            let message = format!(
                "type \"{data_type}\" cannot be read from table \"{table}\", which holds single bits; expected type = \"bool\""
            );
            self.error(raw_type.span(), &ctx, message);
        }
        for (key, span) in [
            ("byte_order", raw.byte_order.as_ref().map(Spanned::span)),
            ("word_order", raw.word_order.as_ref().map(Spanned::span)),
        ] {
            if let (true, Some(span)) = (table.is_bits() && table_known, span) {
                self.error(
                    span,
                    &ctx,
                    format!("{key} applies only to register tables (input, holding)"),
                );
            }
        }
        let bit = raw.bit.as_ref().and_then(|b| {
            if table.is_bits() || data_type != DataType::Bool {
                let message =
                    "bit applies only to type = \"bool\" in a register table (input, holding)"
                        .to_owned();
                self.error(b.span(), &ctx, message);
                None
            } else {
                self.int(&ctx, "bit", b, 0, 15)
            }
        });
        let length = match (&raw.length, data_type) {
            (Some(l), DataType::String) => self
                .int(&ctx, "length", l, 1, i64::from(limits.max_registers))
                .unwrap_or(1),
            (Some(l), _) => {
                self.error(
                    l.span(),
                    &ctx,
                    "length applies only to type = \"string\"".into(),
                );
                0
            }
            (None, DataType::String) => {
                self.error(
                    raw_type.span(),
                    &ctx,
                    "type = \"string\" needs length = <registers>".into(),
                );
                1
            }
            (None, _) => 0,
        };
        let layout = RegisterLayout {
            data_type,
            byte_order: raw
                .byte_order
                .as_ref()
                .and_then(|v| self.choice(&ctx, "byte_order", v, &BYTE_ORDERS))
                .unwrap_or(byte_order),
            word_order: raw
                .word_order
                .as_ref()
                .and_then(|v| self.choice(&ctx, "word_order", v, &WORD_ORDERS))
                .unwrap_or(word_order),
            bit,
            length,
        };
        let count = if table.is_bits() {
            1
        } else {
            layout.register_count()
        };
        let last = u32::from(address) + u32::from(count.max(1)) - 1;
        if last > 65535 {
            let message = format!(
                "address = {address} with {count} registers ends at {last}, past the last address 65535"
            );
            self.error(raw_address.span(), &ctx, message);
        }
        if !table.is_bits() && count > limits.max_registers {
            let message = format!(
                "needs {count} registers but the device reads at most max_read_registers = {}",
                limits.max_registers
            );
            self.error(raw_type.span(), &ctx, message);
        }
        let scaling = self.scaling(&ctx, raw, data_type);
        let numeric_only = [
            ("deadband", &raw.deadband),
            ("min", &raw.min),
            ("max", &raw.max),
        ];
        for (key, value) in numeric_only {
            if let (false, Some(v)) = (data_type.is_numeric(), value) {
                self.error(
                    v.span(),
                    &ctx,
                    format!("{key} applies only to numeric types, not \"{data_type}\""),
                );
            }
        }
        if let Some(d) = &raw.deadband
            && !(d.get_ref().is_finite() && *d.get_ref() >= 0.0)
        {
            self.error(
                d.span(),
                &ctx,
                format!("deadband = {} must be a finite number >= 0", d.get_ref()),
            );
        }
        if let (Some(lo), Some(hi)) = (&raw.min, &raw.max)
            && lo.get_ref() > hi.get_ref()
        {
            self.error(
                lo.span(),
                &ctx,
                format!(
                    "min = {} is greater than max = {}",
                    lo.get_ref(),
                    hi.get_ref()
                ),
            );
        }
        let writable = raw.writable.as_ref().is_some_and(|w| *w.get_ref());
        if let (true, Some(w)) = (
            writable && !matches!(table, Table::Coil | Table::Holding),
            &raw.writable,
        ) {
            let message = format!(
                "writable = true needs table \"coil\" or \"holding\"; table \"{table}\" is read-only"
            );
            self.error(w.span(), &ctx, message);
        }
        Metric {
            name: raw.name.get_ref().clone(),
            source: Source::Register(Register {
                table,
                address,
                layout,
                scaling,
            }),
            unit: raw.unit.as_ref().map(|u| u.get_ref().clone()),
            deadband: raw.deadband.as_ref().map(|d| *d.get_ref()),
            writable,
            min: raw.min.as_ref().map(|v| *v.get_ref()),
            max: raw.max.as_ref().map(|v| *v.get_ref()),
            qos: raw
                .qos
                .as_ref()
                .and_then(|q| self.qos(&ctx, q))
                .unwrap_or(defaults.qos),
            retain: raw
                .retain
                .as_ref()
                .map_or(defaults.retain, |r| *r.get_ref()),
        }
    }

    fn qos(&mut self, ctx: &str, value: &Spanned<i64>) -> Option<Qos> {
        let level: usize = self.int(ctx, "qos", value, 0, 2)?;
        QOS_LEVELS.get(level).copied()
    }

    fn metric_name(&mut self, ctx: &str, name: &Spanned<String>) {
        let v = name.get_ref();
        let problem = if v.is_empty() {
            Some("name must not be empty".to_owned())
        } else if v.starts_with('/') || v.ends_with('/') || v.contains("//") {
            Some(format!(
                "name \"{v}\" has an empty folder; '/' separates folders, as in \"voltage/L1\""
            ))
        } else {
            v.chars()
                .find(|c| matches!(c, '+' | '#') || c.is_control())
                .map(|c| format!("name \"{v}\" contains {c:?}, which MQTT topics do not allow"))
        };
        if let Some(message) = problem {
            self.error(name.span(), ctx, message);
        }
    }

    fn scaling(&mut self, ctx: &str, raw: &RawMetric, data_type: DataType) -> Option<Scaling> {
        if raw.scale.is_none() && raw.offset.is_none() {
            return None;
        }
        for (key, value) in [("scale", &raw.scale), ("offset", &raw.offset)] {
            if let Some(v) = value {
                if !data_type.is_numeric() {
                    self.error(
                        v.span(),
                        ctx,
                        format!("{key} applies only to numeric types, not \"{data_type}\""),
                    );
                } else if !v.get_ref().is_finite() {
                    self.error(
                        v.span(),
                        ctx,
                        format!("{key} = {} must be a finite number", v.get_ref()),
                    );
                }
            }
        }
        let scale = raw.scale.as_ref().map_or(1.0, |s| *s.get_ref());
        if let (Some(s), true) = (&raw.scale, scale == 0.0) {
            self.error(
                s.span(),
                ctx,
                "scale = 0 would make every reading 0 and writes impossible".into(),
            );
        }
        let offset = raw.offset.as_ref().map_or(0.0, |o| *o.get_ref());
        (data_type.is_numeric() && (scale != 1.0 || offset != 0.0))
            .then_some(Scaling { scale, offset })
    }

    /// Two register metrics may share registers only as two views of the very
    /// same registers, or when one of them is a bool picked out of a register.
    /// Anything else (a float starting inside another float) is a typo in the map.
    fn overlaps(&mut self, ctx: &str, raw: &[RawMetric], metrics: &[Metric]) {
        let mut order: Vec<(usize, &Register)> = metrics
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.register().map(|r| (i, r)))
            .filter(|(_, r)| !r.table.is_bits())
            .collect();
        order.sort_by_key(|(_, r)| (r.table, r.address));
        for (n, &(a, ra)) in order.iter().enumerate() {
            for &(b, rb) in &order[n + 1..] {
                let (sa, sb) = (ra.span(), rb.span());
                if sb.table != sa.table || u32::from(sb.start) >= sa.end() {
                    break;
                }
                let compatible = sa == sb
                    || ra.layout.data_type == DataType::Bool
                    || rb.layout.data_type == DataType::Bool;
                if !compatible {
                    let ((first, rf), (second, rs)) =
                        if span_start(&raw[a].address) <= span_start(&raw[b].address) {
                            ((a, ra), (b, rb))
                        } else {
                            ((b, rb), (a, ra))
                        };
                    let message = format!(
                        "registers {}..{} overlap metric \"{}\" at {}..{}; only identical spans or bools may share registers",
                        rs.address,
                        rs.span().end() - 1,
                        metrics[first].name,
                        rf.address,
                        rf.span().end() - 1,
                    );
                    self.error(
                        raw[second]
                            .address
                            .as_ref()
                            .map_or(raw[second].name.span(), Spanned::span),
                        &format!("{ctx}, metric \"{}\"", metrics[second].name),
                        message,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
