//! `[[bus]]`: the field buses, their transports and serial settings.

use std::collections::HashMap;
use std::time::Duration;

use toml::Spanned;

use super::check::{BUS_KINDS, Checker, DEFAULT_TIMEOUT, PARITIES};
use super::gpio::{BACKENDS, missing_driver};
use super::raw::{RawBus, RawRs485, RawRs485Table};
use super::{
    Bus, Direction, DriverPin, GpioBackend, GpioChip, KernelRs485, Parity, SerialLine, Transport,
};

impl Checker<'_> {
    pub(super) fn shared_ports(&mut self, raw: &[RawBus]) {
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

    pub(super) fn bus(&mut self, raw: &RawBus, base: &std::path::Path) -> Bus {
        let ctx = format!("bus \"{}\"", raw.name.get_ref());
        let kind = raw.kind.get_ref().as_str();
        let serial_keys = [
            ("port", raw.port.as_ref().map(Spanned::span)),
            ("baud", raw.baud.as_ref().map(Spanned::span)),
            ("parity", raw.parity.as_ref().map(Spanned::span)),
            ("data_bits", raw.data_bits.as_ref().map(Spanned::span)),
            ("stop_bits", raw.stop_bits.as_ref().map(Spanned::span)),
            ("byte_timeout", raw.byte_timeout.as_ref().map(Spanned::span)),
            ("rs485", raw.rs485.as_ref().map(Spanned::span)),
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
                    Transport::Tcp { address }
                } else {
                    Transport::RtuOverTcp { address }
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
                Transport::Rtu(SerialLine {
                    port,
                    baud,
                    parity,
                    data_bits,
                    stop_bits,
                    byte_timeout: self.any_duration(
                        &ctx,
                        "byte_timeout",
                        raw.byte_timeout.as_ref(),
                    ),
                    direction: raw
                        .rs485
                        .as_ref()
                        .map_or(Direction::Auto, |r| self.rs485(&ctx, r, base)),
                })
            }
            other => {
                let message = format!(
                    "unknown kind \"{other}\", expected one of {}",
                    BUS_KINDS.join(", ")
                );
                self.error(raw.kind.span(), &ctx, message);
                Transport::Tcp {
                    address: String::new(),
                }
            }
        };
        Bus {
            name: raw.name.get_ref().clone(),
            transport: link,
            timeout: self.duration(&ctx, "timeout", raw.timeout.as_ref(), DEFAULT_TIMEOUT),
            turnaround: self
                .any_duration(&ctx, "turnaround", raw.turnaround.as_ref())
                .unwrap_or(Duration::ZERO),
        }
    }

    /// A driver-enable pin belongs to one bus and to no GPIO device: two
    /// owners would fight over the line.
    pub(super) fn driver_pins(&mut self, raw: &[RawBus], buses: &[Bus], devices: &[super::Device]) {
        let mut owners: Vec<(&GpioChip, u32, String)> = devices
            .iter()
            .filter_map(|d| match &d.attachment {
                super::Attachment::Gpio(chip) => Some((d, chip)),
                super::Attachment::Modbus(_) => None,
            })
            .flat_map(|(d, chip)| {
                d.metrics.iter().filter_map(move |m| {
                    Some((chip, m.pin()?.pin, format!("device \"{}\"", d.name)))
                })
            })
            .collect();
        for (raw, bus) in raw.iter().zip(buses) {
            let Transport::Rtu(SerialLine {
                direction: Direction::Pin(pin),
                ..
            }) = &bus.transport
            else {
                continue;
            };
            let ctx = format!("bus \"{}\"", bus.name);
            if let Some((_, _, owner)) = owners
                .iter()
                .find(|(chip, line, _)| **chip == pin.chip && *line == pin.line)
            {
                let message = format!("rs485 line {} is already used by {owner}", pin.line);
                if let Some(r) = &raw.rs485 {
                    self.error(r.span(), &ctx, message);
                }
                continue;
            }
            owners.push((&pin.chip, pin.line, ctx));
        }
    }

    /// `rs485 = ...`: who switches the transceiver's direction.
    fn rs485(&mut self, ctx: &str, raw: &Spanned<RawRs485>, base: &std::path::Path) -> Direction {
        let span = raw.span();
        let table = match raw.get_ref() {
            RawRs485::Mode(mode) => {
                return match mode.as_str() {
                    "auto" => Direction::Auto,
                    "kernel" => Direction::Kernel(KernelRs485 {
                        rts_on_send: true,
                        delay_before_ms: 0,
                        delay_after_ms: 0,
                    }),
                    "rts" => Direction::Rts,
                    other => {
                        self.error(span, ctx, format!("rs485 = \"{other}\" is unknown, expected \"auto\", \"kernel\", \"rts\" or {{ gpio = \"cdev\", chip = \"/dev/gpiochip0\", line = 17 }}"));
                        Direction::Auto
                    }
                };
            }
            RawRs485::Table(table) => table,
        };
        let RawRs485Table {
            mode,
            rts_on_send,
            delay_before,
            delay_after,
            gpio,
            chip,
            line,
        } = table;
        match (mode.as_deref(), gpio) {
            (Some("kernel"), None) if chip.is_none() && line.is_none() => {
                let mut ms = |key: &str, value: &Option<String>| -> u32 {
                    let Some(text) = value else { return 0 };
                    match humantime::parse_duration(text) {
                        Ok(d) if d <= Duration::from_secs(1) => {
                            u32::try_from(d.as_millis()).unwrap_or(1000)
                        }
                        _ => {
                            self.error(span.clone(), ctx, format!("rs485.{key} = \"{text}\" is not a duration of at most 1s (the kernel counts whole milliseconds)"));
                            0
                        }
                    }
                };
                Direction::Kernel(KernelRs485 {
                    rts_on_send: rts_on_send.unwrap_or(true),
                    delay_before_ms: ms("delay_before", delay_before),
                    delay_after_ms: ms("delay_after", delay_after),
                })
            }
            (None, Some(name))
                if rts_on_send.is_none() && delay_before.is_none() && delay_after.is_none() =>
            {
                let Some(backend) = BACKENDS
                    .iter()
                    .find(|(known, _)| known == name)
                    .map(|(_, b)| *b)
                else {
                    self.error(
                        span,
                        ctx,
                        format!(
                            "rs485.gpio = \"{name}\" is unknown, expected one of cdev, rppal, sim"
                        ),
                    );
                    return Direction::Auto;
                };
                if let Some(why) = missing_driver(backend) {
                    self.error(span.clone(), ctx, format!("rs485.gpio = \"{name}\": {why}"));
                }
                let line = match line.map(u32::try_from) {
                    Some(Ok(line)) => line,
                    _ => {
                        self.error(span.clone(), ctx, "rs485 with gpio needs line = the driver-enable pin (a line offset, or the BCM number for rppal)".into());
                        0
                    }
                };
                let chip = match (backend, chip) {
                    (GpioBackend::Cdev, Some(c)) => base.join(c),
                    (GpioBackend::Cdev, None) => {
                        self.error(
                            span,
                            ctx,
                            "rs485 with gpio = \"cdev\" needs chip, e.g. chip = \"/dev/gpiochip0\""
                                .into(),
                        );
                        std::path::PathBuf::new()
                    }
                    (_, Some(c)) => std::path::PathBuf::from(c),
                    (_, None) => std::path::PathBuf::new(),
                };
                Direction::Pin(DriverPin {
                    chip: GpioChip { backend, chip },
                    line,
                })
            }
            _ => {
                self.error(span, ctx, "rs485 tables are { mode = \"kernel\", rts_on_send = true, delay_before = \"0ms\", delay_after = \"0ms\" } or { gpio = \"cdev\", chip = \"/dev/gpiochip0\", line = 17 }".into());
                Direction::Auto
            }
        }
    }

    pub(super) fn address(&mut self, ctx: &str, value: &Spanned<String>) -> String {
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
}
