//! What the status page shows: kept from the device events, then put
//! together with the counters and the uplink's and the broker's reports into
//! one [`Status`], the `/api/status` document. Pure: the clock readings come
//! in with the [`Inputs`].
//!
//! The field names are a stable interface (the README documents them):
//! fields may be added, none renamed or removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Attachment, Config, Device, Profile};
use crate::core::event::DeviceEvent;
use crate::core::identity::Identity;
use crate::core::value::{DeviceId, Fault, MetricId, Quality, Sample, Value};
use crate::ops::metrics::{CounterSnapshot, PollTally};
use crate::sink::uplink::UplinkReport;

/// The device map in force and what the devices said last.
#[derive(Debug)]
pub struct Board {
    config: Arc<Config>,
    devices: Vec<DeviceLog>,
    /// Why each metric read bad is bad, for the few that are: most are good,
    /// and a per-metric fault would double what a tag costs.
    faults: HashMap<(DeviceId, MetricId), Fault>,
}

/// What a device's events said.
#[derive(Debug, Clone, Default)]
struct DeviceLog {
    /// `None` until the device was first polled; then whether it answers.
    online: Option<bool>,
    /// When it last came online or went offline (ms since the Unix epoch).
    since_ms: Option<u64>,
    /// The fault that took it offline, and when.
    offline: Option<(Fault, u64)>,
    /// What it said it is when it last came online.
    identity: Option<Arc<Identity>>,
    /// Each metric as last reported, in metric order.
    readings: Vec<Reading>,
}

/// A metric as last reported, kept small: a site keeps one per tag (40
/// bytes, where a whole [`Sample`] is 80).
#[derive(Debug, Clone, Default)]
struct Reading {
    value: Option<Value>,
    /// When it last changed (ms since the Unix epoch); 0 while unread.
    changed_ms: u64,
    /// Good, bad (why: [`Board::faults`]) or unread.
    state: ReadState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ReadState {
    #[default]
    Unread,
    Good,
    Bad,
}

impl DeviceLog {
    fn new(metrics: usize) -> DeviceLog {
        DeviceLog {
            readings: vec![Reading::default(); metrics],
            ..DeviceLog::default()
        }
    }
}

/// What the board is read together with, taken at the moment of reading.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// Now, in ms since the Unix epoch.
    pub now_ms: u64,
    /// Since the gateway started.
    pub uptime: Duration,
    /// The gateway's totals.
    pub counters: CounterSnapshot,
    /// Each Modbus device's poll cycles, by name.
    pub polls: &'a HashMap<String, PollTally>,
    /// The uplink, if there is one.
    pub uplink: Option<&'a UplinkReport>,
    /// Samples a second sent from the store-and-forward queue, lately.
    pub drain_rate: f64,
    /// The local broker's connected clients per login, if it runs.
    pub broker: Option<&'a [(Option<String>, usize)]>,
}

/// Whose metrics a reading lists: a page shows only the devices opened on
/// it, so a site of 10 000 tags does not send them all every second.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selection {
    /// Every device's (`/api/status`).
    #[default]
    All,
    /// Only these devices' (`/api/status?device=a&device=b`; `?device=` for none).
    Only(std::collections::HashSet<String>),
}

impl Selection {
    /// The selection a query string asks for: `device` parameters, or all.
    pub fn from_query(query: Option<&str>) -> Selection {
        let mut named = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if key == "device" {
                let names = named.get_or_insert_with(std::collections::HashSet::new);
                if !value.is_empty() {
                    names.insert(value.into_owned());
                }
            }
        }
        named.map_or(Selection::All, Selection::Only)
    }

    fn includes(&self, device: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Only(names) => names.contains(device),
        }
    }
}

/// `/api/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// fieldmq's version.
    pub version: &'static str,
    /// The node.
    pub node: NodeStatus,
    /// The upstream connection; `null` without `[upstream]`.
    pub uplink: Option<UplinkStatus>,
    /// The store-and-forward queue; `null` without `[upstream]`.
    pub queue: Option<QueueStatus>,
    /// The embedded broker; `null` when it does not run.
    pub broker: Option<BrokerStatus>,
    /// Totals since start.
    pub counters: CounterSnapshot,
    /// Modbus buses.
    pub buses: Vec<BusStatus>,
    /// Devices, in config order.
    pub devices: Vec<DeviceStatus>,
}

/// `node`.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// Sparkplug group id.
    pub group_id: String,
    /// Edge node id.
    pub node_id: String,
    /// The uplink's profile: `sparkplug`, `plain`, or `none` without `[upstream]`.
    pub profile: &'static str,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Now, as the gateway's clock says (ms since the Unix epoch).
    pub now_ms: u64,
}

/// `uplink`.
#[derive(Debug, Serialize)]
pub struct UplinkStatus {
    /// The server of the current or last connection, as configured.
    pub server: Option<String>,
    /// Connected to it.
    pub connected: bool,
    /// Born (Sparkplug) or ready (plain): data goes out live.
    pub born: bool,
    /// Sparkplug bdSeq of the current or last connection.
    pub bd_seq: Option<u64>,
    /// The primary host followed, if one is configured.
    pub primary_host: Option<PrimaryHostStatus>,
}

/// `uplink.primary_host`.
#[derive(Debug, Serialize)]
pub struct PrimaryHostStatus {
    /// Its host id.
    pub id: String,
    /// Its STATE says online.
    pub online: bool,
}

/// `queue`.
#[derive(Debug, Serialize)]
pub struct QueueStatus {
    /// The queue could be opened (else values that cannot go out are dropped).
    pub usable: bool,
    /// Samples waiting.
    pub backlog: u64,
    /// Samples dropped since start.
    pub dropped: u64,
    /// Samples a second sent from the queue lately.
    pub drain_rate: f64,
}

/// `broker`.
#[derive(Debug, Serialize)]
pub struct BrokerStatus {
    /// Where it listens.
    pub listen: String,
    /// Clients connected.
    pub clients: usize,
    /// Connected clients per login.
    pub logins: Vec<LoginStatus>,
}

/// `broker.logins[]`.
#[derive(Debug, Serialize)]
pub struct LoginStatus {
    /// The user; `null` for anonymous clients.
    pub user: Option<String>,
    /// Its clients connected.
    pub clients: usize,
}

/// `buses[]`.
#[derive(Debug, Serialize)]
pub struct BusStatus {
    /// Its name.
    pub name: String,
    /// How it is reached, e.g. `rtu /dev/ttyUSB0 9600 8N1`.
    pub transport: String,
    /// `ok` (every device answers), `degraded`, `down` (none answers) or `waiting`.
    pub state: &'static str,
    /// Requests sent since start.
    pub requests: u64,
    /// Of those, failed.
    pub failed_requests: u64,
    /// Estimated share of the line's time in use: each device's last cycle
    /// over its period, summed.
    pub load: f64,
}

/// `devices[]`.
#[derive(Debug, Serialize)]
pub struct DeviceStatus {
    /// Its name.
    pub name: String,
    /// `modbus` or `gpio`.
    pub kind: &'static str,
    /// Its bus (Modbus).
    pub bus: Option<String>,
    /// Its unit id (Modbus).
    pub unit: Option<u8>,
    /// Its model, if any.
    pub model: Option<String>,
    /// `online`, `offline`, or `waiting` (not polled yet).
    pub state: &'static str,
    /// When it last came online or went offline (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// The latest failure, whether or not it took the device offline.
    pub last_error: Option<ErrorStatus>,
    /// What it said it is (function 43/14).
    pub identity: Option<serde_json::Value>,
    /// Its latest poll cycle (Modbus, once polled).
    pub cycle: Option<CycleStatus>,
    /// Requests sent since start.
    pub requests: u64,
    /// Of those, failed.
    pub failed_requests: u64,
    /// How many metrics it has.
    pub metric_count: usize,
    /// Its metrics, in config order; `null` when the request named other devices.
    pub metrics: Option<Vec<MetricStatus>>,
}

/// `devices[].last_error`.
#[derive(Debug, Serialize)]
pub struct ErrorStatus {
    /// `timeout`, `exception`, `link`, `malformed` or `offline`.
    pub kind: &'static str,
    /// In words, e.g. `exception 0x02 (illegal data address)`.
    pub message: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
}

/// `devices[].cycle`.
#[derive(Debug, Serialize)]
pub struct CycleStatus {
    /// How long it took, in ms.
    pub last_ms: f64,
    /// The period of its scan class, in ms.
    pub period_ms: f64,
}

/// `devices[].metrics[]`.
#[derive(Debug, Serialize)]
pub struct MetricStatus {
    /// Its name.
    pub name: String,
    /// The last value read; `null` when never read or not a finite number.
    pub value: serde_json::Value,
    /// Its type, as the config names it.
    #[serde(rename = "type")]
    pub data_type: &'static str,
    /// Engineering unit.
    pub unit: Option<String>,
    /// `good`, `bad` or `unread`.
    pub quality: &'static str,
    /// Why the quality is bad.
    pub fault: Option<String>,
    /// When the value last changed (ms since the Unix epoch).
    pub changed_ms: Option<u64>,
    /// Commands may write it.
    pub writable: bool,
}

impl Board {
    /// Nothing heard yet from the devices of `config`.
    pub fn new(config: Arc<Config>) -> Board {
        Board {
            devices: Board::logs(&config),
            faults: HashMap::new(),
            config,
        }
    }

    fn logs(config: &Config) -> Vec<DeviceLog> {
        config
            .devices
            .iter()
            .map(|d| DeviceLog::new(d.metrics.len()))
            .collect()
    }

    /// Takes in a device event that happened at `now_ms`.
    pub fn apply(&mut self, event: &DeviceEvent<Config>, now_ms: u64) {
        match event {
            DeviceEvent::Reconfigured(map) => self.reconfigure(&map.0),
            DeviceEvent::Samples { device, samples } => self.store(*device, samples),
            DeviceEvent::Online {
                device,
                samples,
                identity,
            } => {
                if let Some(log) = self.devices.get_mut(*device) {
                    log.online = Some(true);
                    log.since_ms = Some(now_ms);
                    log.identity.clone_from(identity);
                }
                self.store(*device, samples);
            }
            DeviceEvent::Offline { device, fault } => {
                if let Some(log) = self.devices.get_mut(*device) {
                    log.online = Some(false);
                    log.since_ms = Some(now_ms);
                    log.offline = Some((fault.clone(), now_ms));
                }
            }
            DeviceEvent::Written { .. } => {}
        }
    }

    /// A reload put `config` in force: what is known about a device that is
    /// the same in both maps, at the same position, carries over.
    fn reconfigure(&mut self, config: &Arc<Config>) {
        let unchanged = crate::config::reload::unchanged_devices(&self.config, config);
        let mut devices = Board::logs(config);
        crate::config::reload::carry_over(&mut self.devices, &mut devices, &unchanged);
        self.faults
            .retain(|(device, _), _| unchanged.get(*device).copied().unwrap_or(false));
        self.devices = devices;
        self.config = Arc::clone(config);
    }

    fn store(&mut self, device: DeviceId, samples: &[Sample]) {
        let Some(log) = self.devices.get_mut(device) else {
            return;
        };
        for sample in samples {
            let Some(reading) = log.readings.get_mut(sample.metric) else {
                continue;
            };
            reading.value.clone_from(&sample.value);
            reading.changed_ms = sample.timestamp_ms;
            match &sample.quality {
                Quality::Good => {
                    if reading.state == ReadState::Bad {
                        self.faults.remove(&(device, sample.metric));
                    }
                    reading.state = ReadState::Good;
                }
                Quality::Bad(fault) => {
                    reading.state = ReadState::Bad;
                    self.faults.insert((device, sample.metric), fault.clone());
                }
            }
        }
    }

    /// Everything, as `/api/status` shows it, with the metrics of the selected devices.
    pub fn status(&self, inputs: &Inputs<'_>, selection: &Selection) -> Status {
        let config = &self.config;
        let devices: Vec<DeviceStatus> = config
            .devices
            .iter()
            .enumerate()
            .map(|(id, device)| {
                let with_metrics = selection.includes(&device.name);
                self.device(id, device, inputs, with_metrics)
            })
            .collect();
        let buses = config
            .buses
            .iter()
            .enumerate()
            .map(|(index, bus)| {
                let on_bus = || {
                    config
                        .devices
                        .iter()
                        .zip(&devices)
                        .filter(move |(d, _)| d.is_on_bus(index))
                        .map(|(_, s)| s)
                };
                let load = config
                    .devices
                    .iter()
                    .filter(|d| d.is_on_bus(index))
                    .filter_map(|d| inputs.polls.get(&d.name))
                    .filter(|t| !t.period.is_zero())
                    .map(|t| t.last_cycle.as_secs_f64() / t.period.as_secs_f64())
                    .sum();
                BusStatus {
                    name: bus.name.clone(),
                    transport: bus.transport.to_string(),
                    state: bus_state(on_bus().map(|d| d.state)),
                    requests: on_bus().map(|d| d.requests).sum(),
                    failed_requests: on_bus().map(|d| d.failed_requests).sum(),
                    load,
                }
            })
            .collect();
        let profile = config.upstream.as_ref().map(|u| u.profile);
        Status {
            version: env!("CARGO_PKG_VERSION"),
            node: NodeStatus {
                group_id: config.node.group_id.clone(),
                node_id: config.node.node_id.clone(),
                profile: match profile {
                    Some(Profile::Sparkplug) => "sparkplug",
                    Some(Profile::Plain) => "plain",
                    None => "none",
                },
                uptime_s: inputs.uptime.as_secs(),
                now_ms: inputs.now_ms,
            },
            uplink: inputs.uplink.map(|u| UplinkStatus {
                server: u.server.clone(),
                connected: u.connected,
                born: u.born,
                bd_seq: u.bd_seq,
                primary_host: u
                    .primary_host
                    .as_ref()
                    .map(|(id, online)| PrimaryHostStatus {
                        id: id.clone(),
                        online: *online,
                    }),
            }),
            queue: inputs.uplink.map(|u| QueueStatus {
                usable: u.queue_usable,
                backlog: u.backlog,
                dropped: u.dropped,
                drain_rate: inputs.drain_rate,
            }),
            broker: inputs.broker.map(|logins| BrokerStatus {
                listen: config.broker.listen.to_string(),
                clients: logins.iter().map(|(_, n)| n).sum(),
                logins: logins
                    .iter()
                    .map(|(user, clients)| LoginStatus {
                        user: user.clone(),
                        clients: *clients,
                    })
                    .collect(),
            }),
            counters: inputs.counters,
            buses,
            devices,
        }
    }

    fn device(
        &self,
        id: usize,
        device: &Device,
        inputs: &Inputs<'_>,
        with_metrics: bool,
    ) -> DeviceStatus {
        let empty = DeviceLog::default();
        let log = self.devices.get(id).unwrap_or(&empty);
        let tally = inputs.polls.get(&device.name);
        let state = match log.online {
            Some(true) => "online",
            Some(false) => "offline",
            None => "waiting",
        };
        // The fault that took it offline, or a later failed request, whichever is newer.
        let polled_fault = tally.and_then(|t| t.last_fault.as_ref());
        let last_error = [log.offline.as_ref(), polled_fault]
            .into_iter()
            .flatten()
            .max_by_key(|(_, at)| *at)
            .map(|(fault, at)| ErrorStatus {
                kind: fault.kind(),
                message: fault.to_string(),
                at_ms: *at,
            });
        let metrics = with_metrics.then(|| self.metrics(id, device));
        let (kind, bus, unit) = match &device.attachment {
            Attachment::Modbus(m) => (
                "modbus",
                self.config.buses.get(m.bus).map(|b| b.name.clone()),
                Some(m.unit),
            ),
            Attachment::Gpio(_) => ("gpio", None, None),
        };
        DeviceStatus {
            name: device.name.clone(),
            kind,
            bus,
            unit,
            model: device.model.clone(),
            state,
            since_ms: log.since_ms,
            last_error,
            identity: log.identity.as_ref().map(|i| i.to_json()),
            cycle: tally.map(|t| CycleStatus {
                last_ms: t.last_cycle.as_secs_f64() * 1e3,
                period_ms: t.period.as_secs_f64() * 1e3,
            }),
            requests: tally.map_or(0, |t| t.requests),
            failed_requests: tally.map_or(0, |t| t.failed_requests),
            metric_count: device.metrics.len(),
            metrics,
        }
    }

    /// A device's metrics, as last read.
    fn metrics(&self, id: usize, device: &Device) -> Vec<MetricStatus> {
        let readings = self.devices.get(id).map_or(&[][..], |l| &l.readings[..]);
        device
            .metrics
            .iter()
            .enumerate()
            .map(|(m, metric)| {
                let reading = readings.get(m).filter(|r| r.state != ReadState::Unread);
                let (quality, fault) = match reading.map(|r| r.state) {
                    Some(ReadState::Good) => ("good", None),
                    Some(ReadState::Bad) => {
                        ("bad", self.faults.get(&(id, m)).map(ToString::to_string))
                    }
                    _ => ("unread", None),
                };
                MetricStatus {
                    name: metric.name.clone(),
                    value: reading
                        .and_then(|r| r.value.as_ref())
                        .map_or(serde_json::Value::Null, Value::to_json),
                    data_type: metric.value_type().name(),
                    unit: metric.unit.clone(),
                    quality,
                    fault,
                    changed_ms: reading.map(|r| r.changed_ms),
                    writable: metric.writable,
                }
            })
            .collect()
    }
}

/// A bus's state from its devices' states.
fn bus_state<'a>(devices: impl Iterator<Item = &'a str>) -> &'static str {
    let (mut online, mut offline, mut waiting) = (0, 0, 0);
    for state in devices {
        match state {
            "online" => online += 1,
            "offline" => offline += 1,
            _ => waiting += 1,
        }
    }
    match (online, offline, waiting) {
        (0, 0, _) => "waiting",
        (_, 0, 0) => "ok",
        (0, _, _) => "down",
        _ => "degraded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::MapVersion;
    use crate::core::value::{Sample, Value};

    fn config(devices: &[&str]) -> Arc<Config> {
        let mut text = String::from(
            "[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n\n[[bus]]\nname = \"line\"\nkind = \"tcp\"\naddress = \"127.0.0.1:502\"\n",
        );
        for (unit, name) in devices.iter().enumerate() {
            text.push_str(&format!(
                "\n[[device]]\nname = \"{name}\"\nbus = \"line\"\nunit = {}\n\n[[device.metric]]\nname = \"level\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\nunit = \"mm\"\n",
                unit + 1
            ));
        }
        match Config::from_toml(std::path::Path::new("t.toml"), &text) {
            Ok(c) => Arc::new(c),
            Err(e) => panic!("{e}"),
        }
    }

    fn inputs(polls: &HashMap<String, PollTally>) -> Inputs<'_> {
        Inputs {
            now_ms: 10_000,
            uptime: Duration::from_secs(5),
            counters: CounterSnapshot::default(),
            polls,
            uplink: None,
            drain_rate: 0.0,
            broker: None,
        }
    }

    fn sample(device: usize, value: u16, at: u64) -> Sample {
        Sample {
            device,
            metric: 0,
            value: Some(Value::U16(value)),
            quality: Quality::Good,
            timestamp_ms: at,
        }
    }

    fn first_metric(device: &DeviceStatus) -> &MetricStatus {
        match device.metrics.as_deref() {
            Some([first, ..]) => first,
            _ => panic!("no metrics listed for {}", device.name),
        }
    }

    #[test]
    fn a_page_gets_the_metrics_of_the_devices_it_names() {
        let board = Board::new(config(&["tank", "pump"]));
        let polls = HashMap::new();
        let listed = |query: Option<&str>| -> Vec<bool> {
            let selection = Selection::from_query(query);
            let status = board.status(&inputs(&polls), &selection);
            status.devices.iter().map(|d| d.metrics.is_some()).collect()
        };
        assert_eq!(listed(None), [true, true]);
        assert_eq!(listed(Some("device=pump")), [false, true]);
        assert_eq!(listed(Some("device=")), [false, false]);
        assert_eq!(listed(Some("device=tank&device=pump&x=1")), [true, true]);
        assert_eq!(
            listed(Some("device=t%61nk")),
            [true, false],
            "percent-decoded"
        );
        let status = board.status(&inputs(&polls), &Selection::from_query(Some("device=")));
        assert_eq!(status.devices[0].metric_count, 1);
    }

    #[test]
    fn devices_and_their_bus_follow_the_events() {
        let mut board = Board::new(config(&["tank", "pump"]));
        let polls = HashMap::new();
        let status = board.status(&inputs(&polls), &Selection::All);
        assert_eq!(status.devices[0].state, "waiting");
        assert_eq!(first_metric(&status.devices[0]).quality, "unread");
        assert_eq!(status.buses[0].state, "waiting");

        let online = |device| DeviceEvent::Online {
            device,
            samples: vec![sample(device, 7, 1_000)],
            identity: None,
        };
        board.apply(&online(0), 1_000);
        board.apply(&online(1), 1_000);
        assert_eq!(
            board.status(&inputs(&polls), &Selection::All).buses[0].state,
            "ok"
        );

        board.apply(
            &DeviceEvent::Offline {
                device: 1,
                fault: Fault::Timeout,
            },
            2_000,
        );
        let status = board.status(&inputs(&polls), &Selection::All);
        let pump = &status.devices[1];
        assert_eq!(pump.state, "offline");
        assert_eq!(pump.since_ms, Some(2_000));
        let error = pump.last_error.as_ref().map(|e| (e.kind, e.at_ms));
        assert_eq!(error, Some(("timeout", 2_000)));
        assert_eq!(status.buses[0].state, "degraded");
        let tank = &status.devices[0];
        let level = first_metric(tank);
        assert_eq!(level.value, serde_json::json!(7));
        assert_eq!(level.unit.as_deref(), Some("mm"));
        assert_eq!(level.changed_ms, Some(1_000));
    }

    #[test]
    fn the_newest_failure_is_the_last_error() {
        let mut board = Board::new(config(&["tank"]));
        board.apply(
            &DeviceEvent::Offline {
                device: 0,
                fault: Fault::Timeout,
            },
            2_000,
        );
        let mut polls = HashMap::new();
        polls.insert(
            "tank".to_owned(),
            PollTally {
                cycles: 3,
                requests: 3,
                failed_requests: 1,
                last_cycle: Duration::from_millis(50),
                period: Duration::from_millis(200),
                last_fault: Some((Fault::Exception(2), 3_000)),
            },
        );
        let status = board.status(&inputs(&polls), &Selection::All);
        let device = &status.devices[0];
        let error = device.last_error.as_ref().map(|e| e.message.as_str());
        assert!(
            error == Some("exception 0x02 (illegal data address)"),
            "{error:?}"
        );
        assert_eq!(device.failed_requests, 1);
        assert!(
            (status.buses[0].load - 0.25).abs() < 1e-9,
            "50 ms of 200 ms"
        );
    }

    #[test]
    fn a_reload_keeps_what_is_known_about_unchanged_devices() {
        let old = config(&["tank", "pump"]);
        let mut board = Board::new(Arc::clone(&old));
        for device in 0..2 {
            board.apply(
                &DeviceEvent::Online {
                    device,
                    samples: vec![sample(device, 5, 1_000)],
                    identity: None,
                },
                1_000,
            );
        }
        let new = config(&["tank", "chiller"]);
        board.apply(&DeviceEvent::Reconfigured(MapVersion(new)), 3_000);
        let polls = HashMap::new();
        let status = board.status(&inputs(&polls), &Selection::All);
        let names: Vec<_> = status.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["tank", "chiller"]);
        assert_eq!(status.devices[0].state, "online");
        assert_eq!(status.devices[0].since_ms, Some(1_000));
        assert_eq!(
            status.devices[1].state, "waiting",
            "a new device starts unknown"
        );
    }

    #[test]
    fn a_metric_read_bad_says_why_until_it_reads_good_again() {
        let mut board = Board::new(config(&["tank"]));
        let polls = HashMap::new();
        let bad = Sample {
            value: None,
            quality: Quality::Bad(Fault::Exception(2)),
            ..sample(0, 0, 1_000)
        };
        board.apply(
            &DeviceEvent::Samples {
                device: 0,
                samples: vec![bad],
            },
            1_000,
        );
        let status = board.status(&inputs(&polls), &Selection::All);
        let level = first_metric(&status.devices[0]);
        assert_eq!(level.quality, "bad");
        assert_eq!(level.value, serde_json::Value::Null);
        assert_eq!(
            level.fault.as_deref(),
            Some("exception 0x02 (illegal data address)")
        );
        board.apply(
            &DeviceEvent::Samples {
                device: 0,
                samples: vec![sample(0, 9, 2_000)],
            },
            2_000,
        );
        assert!(board.faults.is_empty(), "no fault kept for a good metric");
        let status = board.status(&inputs(&polls), &Selection::All);
        assert_eq!(first_metric(&status.devices[0]).quality, "good");
        assert!(
            std::mem::size_of::<Reading>() <= 40,
            "a tag's reading grew to {} bytes",
            std::mem::size_of::<Reading>()
        );
    }

    #[test]
    fn a_bus_is_down_only_when_no_device_answers() {
        assert_eq!(bus_state(["online", "online"].into_iter()), "ok");
        assert_eq!(bus_state(["online", "offline"].into_iter()), "degraded");
        assert_eq!(bus_state(["offline", "waiting"].into_iter()), "down");
        assert_eq!(bus_state(["waiting"].into_iter()), "waiting");
        assert_eq!(bus_state(std::iter::empty()), "waiting");
    }
}
