//! The checker's core: how values are read from the raw config and how
//! problems are recorded, and the walk over the whole file. The rules of each
//! section are in that section's module.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::model::{ModelRef, Source, merged};
use super::raw::RawConfig;
use crate::core::layout::{ByteOrder, WordOrder};
use crate::core::message::Qos;
use std::path::PathBuf;

use super::{
    BufferPolicy, Bus, Config, Device, Diagnostic, LocalBrokerSettings, Node, Parity, Profile,
};

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

/// Plain-profile publishing settings a device gives its metrics by default.
#[derive(Debug, Clone, Copy)]
pub(super) struct Publishing {
    pub(super) qos: Qos,
    pub(super) retain: bool,
}

/// Collects diagnostics while turning raw values into validated ones.
pub(super) struct Checker<'a> {
    /// The text spans point into now: the config file or an included one.
    pub(super) source: Source<'a>,
    pub(super) diagnostics: Vec<Diagnostic>,
    /// The plain topic template has errors of its own.
    pub(super) broken_template: bool,
}

pub(super) const DEFAULT_POLL: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
pub(super) const DEFAULT_OFFLINE_AFTER: u32 = 3;
/// Longer periods make no sense for polling and would overflow deadline arithmetic.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
pub(super) const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Where systemd's `StateDirectory=fieldmq` puts the service's state.
pub(super) const DEFAULT_DATA_DIR: &str = "/var/lib/fieldmq";
pub(super) const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(60);
/// Plain profile: a new subscriber sees each metric's last value at once.
pub(super) const DEFAULT_RETAIN: bool = true;
pub(super) const QOS_LEVELS: [Qos; 3] = [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce];
pub(super) const BYTE_ORDERS: [(&str, ByteOrder); 2] =
    [("big", ByteOrder::Big), ("little", ByteOrder::Little)];
pub(super) const WORD_ORDERS: [(&str, WordOrder); 2] =
    [("big", WordOrder::Big), ("little", WordOrder::Little)];
pub(super) const PARITIES: [(&str, Parity); 3] = [
    ("none", Parity::None),
    ("even", Parity::Even),
    ("odd", Parity::Odd),
];
pub(super) const BUS_KINDS: [&str; 3] = ["tcp", "rtu", "rtu-over-tcp"];

impl<'a> Checker<'a> {
    /// An error at each key of `keys` that was written, saying why it does not belong there.
    pub(super) fn refuse_present(
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

    pub(super) fn error(&mut self, span: Range<usize>, context: &str, message: String) {
        self.error_at(line_of(self.source.text, span.start), context, message);
    }

    /// A problem with no value to point at, reported at `line`.
    pub(super) fn error_at(&mut self, line: usize, context: &str, message: String) {
        self.diagnostics.push(Diagnostic {
            file: self.source.file.map(Path::to_path_buf),
            line,
            context: context.to_owned(),
            message,
        });
    }

    pub(super) fn choice<T: Copy>(
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

    pub(super) fn int<T: TryFrom<i64>>(
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
    pub(super) fn duration(
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
    pub(super) fn any_duration(
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
    pub(super) fn topic_id(&mut self, ctx: &str, key: &str, value: &Spanned<String>) {
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
    pub(super) fn unique<'n>(
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

    /// The whole file; `included` are the models of the files it includes.
    pub(super) fn config(
        &mut self,
        path: &Path,
        raw: &'a RawConfig,
        included: Vec<ModelRef<'a>>,
    ) -> Config {
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
        let health = raw
            .health
            .as_ref()
            .and_then(|h| self.health(h, broker.users.len()));
        self.unique("", "bus", raw.bus.iter().map(|b| &b.name));
        self.unique("", "device", raw.device.iter().map(|d| &d.name));
        let buses: Vec<Bus> = raw.bus.iter().map(|b| self.bus(b, base)).collect();
        self.shared_ports(&raw.bus);
        let main = self.source;
        let models = raw
            .model
            .iter()
            .map(|m| ModelRef {
                source: main,
                raw: m,
            })
            .chain(included)
            .collect();
        let catalog = self.catalog(models);
        let mut devices: Vec<Device> = Vec::with_capacity(raw.device.len());
        let mut metrics_written = Vec::with_capacity(raw.device.len());
        // Per model, the metric lists its devices came out with: thirty
        // meters of one model hold one list, not thirty copies.
        let mut lists: HashMap<&str, Vec<std::sync::Arc<[super::Metric]>>> = HashMap::new();
        for d in &raw.device {
            let model = self.model_of(d, &catalog);
            let entries = merged(d, model, main);
            let device = match &d.gpio {
                Some(backend) => {
                    if let Some(m) = &d.model {
                        let ctx = format!("device \"{}\"", d.name.get_ref());
                        self.error(
                            m.span(),
                            &ctx,
                            "model applies only to Modbus devices".into(),
                        );
                    }
                    let defaults = self.publishing(d);
                    self.gpio_device(d, backend, base, defaults)
                }
                None => self.device(d, model, &entries, &raw.bus, &buses),
            };
            let mut device = device;
            if let Some(m) = model {
                let known = lists.entry(m.raw.name.get_ref().as_str()).or_default();
                match known.iter().find(|l| **l == device.metrics) {
                    Some(same) => device.metrics = std::sync::Arc::clone(same),
                    None => known.push(std::sync::Arc::clone(&device.metrics)),
                }
            }
            devices.push(device);
            metrics_written.push(entries);
        }
        self.driver_pins(&raw.bus, &buses, &devices);
        let model_metrics = self.model_metrics(&catalog, &raw.device);
        let models = self.known_models(&catalog, model_metrics, path);
        if let Some(u) = upstream
            .as_ref()
            .filter(|u| u.profile == Profile::Plain && !self.broken_template)
        {
            self.plain_topics(&node, &u.topic_template, &devices, &metrics_written);
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
            models,
        }
    }
}
