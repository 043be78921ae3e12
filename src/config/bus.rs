//! `[[bus]]`: the field buses, their transports and serial settings.

use std::collections::HashMap;
use std::time::Duration;

use toml::Spanned;

use super::check::{BUS_KINDS, Checker, DEFAULT_TIMEOUT, PARITIES};
use super::raw::RawBus;
use super::{Bus, Parity, SerialLine, Transport};

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

    pub(super) fn bus(&mut self, raw: &RawBus) -> Bus {
        let ctx = format!("bus \"{}\"", raw.name.get_ref());
        let kind = raw.kind.get_ref().as_str();
        let serial_keys = [
            ("port", raw.port.as_ref().map(Spanned::span)),
            ("baud", raw.baud.as_ref().map(Spanned::span)),
            ("parity", raw.parity.as_ref().map(Spanned::span)),
            ("data_bits", raw.data_bits.as_ref().map(Spanned::span)),
            ("stop_bits", raw.stop_bits.as_ref().map(Spanned::span)),
            ("byte_timeout", raw.byte_timeout.as_ref().map(Spanned::span)),
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
