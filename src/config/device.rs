//! `[[device]]` on a Modbus bus and its `[[device.metric]]` entries: units,
//! schedules, register layouts, scaling, write limits, overlaps.

use toml::Spanned;

use super::check::{
    BYTE_ORDERS, Checker, DEFAULT_MAX_BACKOFF, DEFAULT_OFFLINE_AFTER, DEFAULT_POLL, DEFAULT_RETAIN,
    Publishing, QOS_LEVELS, WORD_ORDERS,
};
use super::model::{Entry, ModelRef};
use super::raw::{RawBus, RawDevice, RawMetric, RawModel};
use super::{Attachment, Bus, Device, Metric, ModbusUnit, Quirks, Register, Source, Transport};
use crate::core::layout::{ByteOrder, Limits, RegisterLayout, Scaling, Table, WordOrder};
use crate::core::message::Qos;
use crate::core::value::DataType;

impl<'a> Checker<'a> {
    /// A Modbus device with `entries`, its metrics after `model`.
    pub(super) fn device(
        &mut self,
        raw: &RawDevice,
        model: Option<ModelRef<'a>>,
        entries: &[Entry<'a>],
        raw_buses: &[RawBus],
        buses: &[Bus],
    ) -> Device {
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
                        matches!(buses.get(b).map(|b| &b.transport), Some(Transport::Rtu(_)))
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
        let model_ctx = model.map(|m| format!("{ctx} (model \"{}\")", m.raw.name.get_ref()));
        let defaults = Limits::default();
        let limits = Limits {
            max_registers: self
                .inherited(
                    &ctx,
                    raw.max_read_registers.as_ref(),
                    model,
                    |m| m.max_read_registers.as_ref(),
                    |c, ctx, v| c.int(ctx, "max_read_registers", v, 1, 125),
                )
                .unwrap_or(defaults.max_registers),
            max_bits: raw
                .max_read_bits
                .as_ref()
                .and_then(|v| self.int(&ctx, "max_read_bits", v, 1, 2000))
                .unwrap_or(defaults.max_bits),
            max_gap: self
                .inherited(
                    &ctx,
                    raw.max_gap.as_ref(),
                    model,
                    |m| m.max_gap.as_ref(),
                    |c, ctx, v| c.int(ctx, "max_gap", v, 0, 2000),
                )
                .unwrap_or(defaults.max_gap),
        };
        let byte_order = self
            .inherited(
                &ctx,
                raw.byte_order.as_ref(),
                model,
                |m| m.byte_order.as_ref(),
                |c, ctx, v| c.choice(ctx, "byte_order", v, &BYTE_ORDERS),
            )
            .unwrap_or_default();
        let word_order = self
            .inherited(
                &ctx,
                raw.word_order.as_ref(),
                model,
                |m| m.word_order.as_ref(),
                |c, ctx, v| c.choice(ctx, "word_order", v, &WORD_ORDERS),
            )
            .unwrap_or_default();
        if entries.is_empty() {
            let message = match model {
                Some(_) => "neither the device nor its model has metrics",
                None => "device has no [[device.metric]] entries",
            };
            self.error(raw.name.span(), &ctx, message.into());
        }
        self.unique(&ctx, "metric", raw.metric.iter().map(|m| &m.name));
        let defaults = self.publishing(raw);
        let metrics: Vec<Metric> = entries
            .iter()
            .map(|e| {
                let ctx = if e.from_model {
                    model_ctx.as_deref().unwrap_or(&ctx)
                } else {
                    &ctx
                };
                self.in_source(e.source, |c| {
                    c.metric(ctx, e.raw, byte_order, word_order, &limits, defaults)
                })
            })
            .collect();
        self.overlaps(&ctx, entries, &metrics);
        Device {
            name: raw.name.get_ref().clone(),
            model: model.map(|m| m.raw.name.get_ref().clone()),
            attachment: Attachment::Modbus(ModbusUnit {
                bus: bus.unwrap_or(0),
                unit,
                limits,
                write_multiple: raw.write_multiple.as_ref().is_some_and(|w| *w.get_ref()),
                identify: raw.identify.as_ref().is_none_or(|i| *i.get_ref()),
                quirks: Quirks {
                    connect_delay: self
                        .any_duration(&ctx, "connect_delay", raw.connect_delay.as_ref())
                        .unwrap_or_default(),
                    request_delay: self
                        .any_duration(&ctx, "request_delay", raw.request_delay.as_ref())
                        .unwrap_or_default(),
                    close_after_poll: raw.close_after_poll.as_ref().is_some_and(|c| *c.get_ref()),
                },
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
            metrics: metrics.into(),
        }
    }

    /// A device's plain-profile defaults for its metrics.
    pub(super) fn publishing(&mut self, raw: &RawDevice) -> Publishing {
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
    pub(super) fn required<T: Clone>(
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

    /// A device setting: its own value, else its model's (checked, and its
    /// errors reported, where the model is written).
    fn inherited<V: 'a, T>(
        &mut self,
        ctx: &str,
        own: Option<&Spanned<V>>,
        model: Option<ModelRef<'a>>,
        of_model: impl Fn(&'a RawModel) -> Option<&'a Spanned<V>>,
        check: impl Fn(&mut Self, &str, &Spanned<V>) -> Option<T>,
    ) -> Option<T> {
        if let Some(v) = own {
            return check(self, ctx, v);
        }
        let m = model?;
        let v = of_model(m.raw)?;
        let ctx = format!("{ctx} (model \"{}\")", m.raw.name.get_ref());
        self.in_source(m.source, |c| check(c, &ctx, v))
    }

    /// `register = 40001`: the table and wire address it stands for, as if
    /// written as `table` and `address` at the number's position.
    fn register_number(
        &mut self,
        ctx: &str,
        raw: &RawMetric,
        number: &Spanned<i64>,
    ) -> (Spanned<String>, Spanned<i64>) {
        for key in [
            raw.table.as_ref().map(|_| "table"),
            raw.address.as_ref().map(|_| "address"),
        ]
        .into_iter()
        .flatten()
        {
            self.error(
                number.span(),
                ctx,
                format!("register = {} and {key} both give the register; write either register (one-based, as the manual numbers it) or table + address (the address on the wire)", number.get_ref()),
            );
        }
        let (table, address) = u32::try_from(*number.get_ref())
            .map_err(|_| format!("{} is not a register number", number.get_ref()))
            .and_then(Table::from_modicon)
            .unwrap_or_else(|why| {
                self.error(number.span(), ctx, format!("register = {why}"));
                (Table::Holding, 0)
            });
        (
            Spanned::new(number.span(), table.name().to_owned()),
            Spanned::new(number.span(), i64::from(address)),
        )
    }

    pub(super) fn metric(
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
        let raw_type = self.required(&ctx, "type", &raw.data_type, &raw.name, "u16".into());
        let (raw_table, raw_address) = match &raw.register {
            Some(number) => self.register_number(&ctx, raw, number),
            None => (
                self.required(&ctx, "table", &raw.table, &raw.name, "holding".into()),
                self.required(&ctx, "address", &raw.address, &raw.name, 0),
            ),
        };
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
            poll: raw
                .poll
                .as_ref()
                .map(|p| self.duration(&ctx, "poll", Some(p), DEFAULT_POLL)),
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

    pub(super) fn qos(&mut self, ctx: &str, value: &Spanned<i64>) -> Option<Qos> {
        let level: usize = self.int(ctx, "qos", value, 0, 2)?;
        QOS_LEVELS.get(level).copied()
    }

    pub(super) fn metric_name(&mut self, ctx: &str, name: &Spanned<String>) {
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

    pub(super) fn scaling(
        &mut self,
        ctx: &str,
        raw: &RawMetric,
        data_type: DataType,
    ) -> Option<Scaling> {
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
    pub(super) fn overlaps(&mut self, ctx: &str, entries: &[Entry<'a>], metrics: &[Metric]) {
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
                    // Reported at the one written later (in metric order).
                    let ((first, rf), (second, rs)) = if a <= b {
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
                    let Some(entry) = entries.get(second) else {
                        continue;
                    };
                    let raw = entry.raw;
                    let span = raw
                        .address
                        .as_ref()
                        .or(raw.register.as_ref())
                        .map_or(raw.name.span(), Spanned::span);
                    let ctx = format!("{ctx}, metric \"{}\"", metrics[second].name);
                    self.in_source(entry.source, |c| c.error(span, &ctx, message));
                }
            }
        }
    }
}
