//! The Sparkplug B edge node session: which message goes out when, with
//! which seq, and what commands do. Pure: it is told about connections,
//! device events and incoming messages, and answers with [`Action`]s.
//!
//! Life of a connection (requirement ids from `sparkplug-edge.md`):
//! CONNECT carries the NDEATH will with this connection's bdSeq; the node
//! subscribes to NCMD, DCMD and the primary host's STATE before any birth
//! (tck-id-message-flow-edge-node-ncmd-subscribe); NBIRTH (seq 0) and a
//! DBIRTH for every online device follow, only once the primary host, if one
//! is configured, is online (…-phid-wait); then DDATA/NDATA by exception,
//! DDEATH/DBIRTH as devices fail and return, and NDEATH before a deliberate
//! disconnect (tck-id-payloads-ndeath-will-message-publisher-disconnect-mqtt311).

use std::sync::Arc;

use prost::Message as _;

use crate::config::{
    Compression, Config, DEFAULT_MAX_PACKET_SIZE, DEFAULT_REBIRTH_MIN_INTERVAL, Node,
};
use crate::core::event::DeviceEvent;
use crate::core::message::Message;
use crate::core::message::Qos;
use crate::core::value::{DeviceId, Sample, now_ms};
use crate::profile::action::{Action, NodeStats};
use crate::profile::announced::Announced;
use crate::profile::last_values::LastValues;
use crate::profile::sparkplug::compression;
use crate::profile::sparkplug::host::PrimaryHost;
use crate::profile::sparkplug::payload::{
    Aliases, BD_SEQ, birth_metric, data_metric, datatype, node_death,
};
use crate::profile::sparkplug::payload::{NEXT_SERVER, REBIRTH};
use crate::profile::sparkplug::proto::Payload;
use crate::profile::sparkplug::proto::payload::{Metric, metric};
use crate::profile::sparkplug::rebirth::RebirthGate;
use crate::profile::sparkplug::seq::Seq;
use crate::profile::sparkplug::template::Templates;
use crate::profile::sparkplug::topic::{MessageType, Topic, legacy_state_topic, state_topic};

/// The gateway's version, a node property.
pub const VERSION: &str = "Properties/Version";

/// A device's vendor, product code and revision (function 43/14), device properties.
pub const IDENTITY: [&str; 3] = [
    "Properties/Vendor",
    "Properties/Product Code",
    "Properties/Revision",
];

/// Reads one figure out of the node statistics.
type StatReader = fn(&NodeStats) -> u64;

/// The gateway's own counters as node metrics: name, alias (below
/// [`crate::profile::sparkplug::payload::FIRST_DEVICE_ALIAS`]) and how to read it.
const NODE_STATS: [(&str, u64, StatReader); 9] = [
    ("Statistics/Polls", 1, |s| s.counters.polls),
    ("Statistics/Poll Failures", 2, |s| s.counters.poll_failures),
    ("Statistics/Writes", 3, |s| s.counters.writes),
    ("Statistics/Write Failures", 4, |s| {
        s.counters.write_failures
    }),
    ("Statistics/Commands Rejected", 5, |s| {
        s.counters.commands_rejected
    }),
    ("Statistics/Messages Dropped", 6, |s| {
        s.counters.messages_dropped
    }),
    ("Statistics/Devices Online", 7, |s| s.devices_online),
    ("Statistics/Samples Buffered", 8, |s| s.samples_buffered),
    ("Statistics/Samples Dropped", 9, |s| s.samples_dropped),
];

mod commands;

/// Every node message but the will: QoS 0, not retained (shared §12);
/// births and data compressed as `[upstream] compression` says.
fn data_message(topic: String, payload: &Payload, compression: Compression) -> Message {
    Message {
        topic,
        payload: compression::encode(payload, compression),
        qos: Qos::AtMostOnce,
        retain: false,
    }
}

/// State of one MQTT connection.
#[derive(Debug, Clone)]
struct Session {
    bd_seq: u64,
    /// NBIRTH sent in this connection.
    born: bool,
    /// DBIRTH sent and no DDEATH since, per device.
    devices_born: Vec<bool>,
    /// What each device's last DBIRTH carried: the replay leaves it out.
    births: Announced,
}

/// Which server the node speaks to, which decides what it can do there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The `[upstream]` servers: it follows the primary host, and can move
    /// to the next server (`Node Control/Next Server`).
    Uplink,
    /// The embedded broker: there is no other server to move to.
    LocalBroker,
}

/// The primary host the node follows.
#[derive(Debug, Clone)]
struct Host {
    id: String,
    /// Also follow the 2.2 STATE topic.
    legacy: bool,
    state: PrimaryHost,
}

/// The edge node.
#[derive(Debug, Clone)]
pub struct EdgeNode {
    config: Arc<Config>,
    aliases: Aliases,
    seq: Seq,
    session: Option<Session>,
    host: Option<Host>,
    role: Role,
    rebirths: RebirthGate,
    /// How births and data are compressed.
    compression: Compression,
    /// The most bytes a compressed command may inflate to.
    command_limit: usize,
    /// With `[upstream] templates`: models as Templates, devices as instances.
    templates: Option<Templates>,
    /// Node statistics as last published.
    reported: NodeStats,
}

impl EdgeNode {
    /// A node for `config` speaking to the server of `role`; no connection yet.
    /// As the uplink it follows `[upstream]`'s primary host, if one is set.
    pub fn new(config: Arc<Config>, role: Role) -> EdgeNode {
        let upstream = config.upstream.as_ref().filter(|_| role == Role::Uplink);
        let host = upstream.and_then(|u| {
            Some(Host {
                id: u.primary_host.clone()?,
                legacy: u.primary_host_legacy,
                state: PrimaryHost::default(),
            })
        });
        let min_interval =
            upstream.map_or(DEFAULT_REBIRTH_MIN_INTERVAL, |u| u.rebirth_min_interval);
        let compression = upstream.map_or(Compression::None, |u| u.compression);
        let templates = upstream
            .filter(|u| u.templates)
            .map(|_| Templates::new(&config));
        let command_limit = config
            .upstream
            .as_ref()
            .map_or(DEFAULT_MAX_PACKET_SIZE, |u| u.max_packet_size);
        EdgeNode {
            aliases: Aliases::new(&config),
            config,
            seq: Seq::default(),
            session: None,
            host,
            role,
            compression,
            command_limit,
            templates,
            rebirths: RebirthGate::new(u64::try_from(min_interval.as_millis()).unwrap_or(u64::MAX)),
            reported: NodeStats::default(),
        }
    }

    fn topic(&self, message_type: MessageType) -> String {
        let node = &self.config.node;
        Topic::node(&node.group_id, message_type, &node.node_id).to_string()
    }

    fn device_topic(&self, message_type: MessageType, device: DeviceId) -> String {
        let node = &self.config.node;
        let name = self
            .config
            .devices
            .get(device)
            .map_or("", |d| d.name.as_str());
        Topic::device(&node.group_id, message_type, &node.node_id, name).to_string()
    }

    /// The NDEATH will: QoS 1, not retained, carrying `bd_seq` (tck-id-payloads-ndeath-will-message-*).
    pub fn will(&self, bd_seq: u64) -> Message {
        will(&self.config.node, bd_seq)
    }

    /// A connection whose will carries `bd_seq` is up: subscribe first.
    pub fn connected(&mut self, bd_seq: u64) -> Vec<Action> {
        self.session = Some(Session {
            bd_seq,
            born: false,
            devices_born: vec![false; self.config.devices.len()],
            births: Announced::new(self.config.devices.len()),
        });
        let node = &self.config.node;
        let mut filters = vec![
            (self.topic(MessageType::NCmd), Qos::AtLeastOnce),
            (
                format!(
                    "{}/{}/{}/{}/+",
                    crate::profile::sparkplug::topic::NAMESPACE,
                    node.group_id,
                    MessageType::DCmd.token(),
                    node.node_id
                ),
                Qos::AtLeastOnce,
            ),
        ];
        if let Some(host) = &mut self.host {
            host.state.reset();
            filters.push((state_topic(&host.id), Qos::AtLeastOnce));
            if host.legacy {
                filters.push((legacy_state_topic(&host.id), Qos::AtLeastOnce));
            }
        }
        vec![Action::Subscribe(filters)]
    }

    /// Subscriptions are in place: birth now, unless waiting for the primary host.
    pub fn subscribed(&mut self, cache: &LastValues, stats: NodeStats) -> Vec<Action> {
        if self.host.as_ref().is_some_and(|h| !h.state.is_online()) {
            tracing::info!("waiting for the primary host to be online before the births");
            return Vec::new();
        }
        self.births(cache, stats)
    }

    /// The connection is gone; the next one starts over.
    pub fn disconnected(&mut self) {
        self.session = None;
        if let Some(host) = &mut self.host {
            host.state.reset();
        }
    }

    /// NBIRTH with seq 0, then a DBIRTH for each online device (tck-id-payloads-dbirth-order).
    fn births(&mut self, cache: &LastValues, stats: NodeStats) -> Vec<Action> {
        let Some(session) = &mut self.session else {
            return Vec::new();
        };
        session.born = true;
        let bd_seq = session.bd_seq;
        let now = now_ms();
        // Rebirth requests that waited are answered by these births.
        self.rebirths.born(now);
        let mut metrics = vec![
            Metric {
                name: Some(BD_SEQ.into()),
                timestamp: Some(now),
                datatype: Some(datatype::INT64),
                value: Some(metric::Value::LongValue(bd_seq)),
                ..Metric::default()
            },
            Metric {
                name: Some(REBIRTH.into()),
                timestamp: Some(now),
                datatype: Some(datatype::BOOLEAN),
                value: Some(metric::Value::BooleanValue(false)),
                ..Metric::default()
            },
            Metric {
                name: Some(VERSION.into()),
                timestamp: Some(now),
                datatype: Some(datatype::STRING),
                value: Some(metric::Value::StringValue(env!("CARGO_PKG_VERSION").into())),
                ..Metric::default()
            },
        ];
        if let Some(templates) = &self.templates {
            metrics.extend(templates.definitions(now));
        }
        if self.role == Role::Uplink {
            metrics.push(Metric {
                name: Some(NEXT_SERVER.into()),
                timestamp: Some(now),
                datatype: Some(datatype::BOOLEAN),
                value: Some(metric::Value::BooleanValue(false)),
                ..Metric::default()
            });
        }
        for (name, alias, read) in NODE_STATS {
            metrics.push(Metric {
                name: Some(name.into()),
                alias: Some(alias),
                timestamp: Some(now),
                datatype: Some(datatype::UINT64),
                value: Some(metric::Value::LongValue(read(&stats))),
                ..Metric::default()
            });
        }
        self.reported = stats;
        let nbirth = Payload {
            timestamp: Some(now),
            metrics,
            seq: Some(self.seq.birth()),
            ..Payload::default()
        };
        let mut actions = vec![self.publish(self.topic(MessageType::NBirth), &nbirth)];
        for device in 0..self.config.devices.len() {
            if cache.is_online(device) {
                actions.extend(self.device_birth(device, cache));
            }
        }
        actions
    }

    fn device_birth(&mut self, device: DeviceId, cache: &LastValues) -> Option<Action> {
        let session = self.session.as_mut().filter(|s| s.born)?;
        *session.devices_born.get_mut(device)? = true;
        let snapshot = cache.snapshot(device);
        session.births.record(device, &snapshot);
        let now = now_ms();
        let mut metrics: Vec<Metric> = match &self.templates {
            Some(t) => t.birth(&self.config, &self.aliases, device, &snapshot, now),
            None => snapshot
                .iter()
                .filter_map(|s| birth_metric(&self.config, &self.aliases, s))
                .collect(),
        };
        if let Some(identity) = cache.identity(device) {
            let values = [&identity.vendor, &identity.product_code, &identity.revision];
            // Without alias: they are never in DDATA.
            metrics.extend(IDENTITY.iter().zip(values).map(|(name, value)| Metric {
                name: Some((*name).into()),
                timestamp: Some(now),
                datatype: Some(datatype::STRING),
                value: Some(metric::Value::StringValue(value.clone())),
                ..Metric::default()
            }));
        }
        let payload = Payload {
            timestamp: Some(now_ms()),
            metrics,
            seq: Some(self.seq.advance()),
            ..Payload::default()
        };
        Some(self.publish(self.device_topic(MessageType::DBirth, device), &payload))
    }

    fn device_born(&self, device: DeviceId) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.born && s.devices_born.get(device).copied().unwrap_or(false))
    }

    fn publish(&self, topic: String, payload: &Payload) -> Action {
        Action::Publish(data_message(topic, payload, self.compression))
    }

    /// What a bus task reported becomes DDATA, DBIRTH or DDEATH.
    pub fn event(&mut self, event: &DeviceEvent<Config>, cache: &LastValues) -> Vec<Action> {
        if !self.session.as_ref().is_some_and(|s| s.born) {
            return Vec::new();
        }
        match event {
            DeviceEvent::Samples { device, samples } if self.device_born(*device) => {
                vec![Action::Publish(self.device_data(*device, samples, false))]
            }
            DeviceEvent::Online { device, .. } => {
                self.device_birth(*device, cache).into_iter().collect()
            }
            DeviceEvent::Offline { device, .. } if self.device_born(*device) => {
                vec![self.device_death(*device)]
            }
            _ => Vec::new(),
        }
    }

    /// A reload put `config` in force; `cache` is already carried over to it.
    /// The session goes on: a device whose definition, position or aliases
    /// changed, or that is gone, gets a DDEATH under its old name; changed
    /// and new devices get a DBIRTH (now if online, else when they answer);
    /// devices that are the same keep their birth and hear nothing.
    pub fn reconfigure(&mut self, config: Arc<Config>, cache: &LastValues) -> Vec<Action> {
        if let Some(old) = &self.templates {
            let new = Templates::new(&config);
            if !old.defines_as(&new) {
                // Definitions live in the NBIRTH: the whole node is born again.
                self.aliases = Aliases::new(&config);
                self.config = config;
                self.templates = Some(new);
                if let Some(session) = self.session.as_mut() {
                    session.devices_born = vec![false; self.config.devices.len()];
                    session.births = Announced::new(self.config.devices.len());
                }
                if !self.online() {
                    return Vec::new();
                }
                tracing::info!("reload changed a model's Template definition: rebirth");
                return self.births(cache, self.reported);
            }
            self.templates = Some(new);
        }
        let aliases = Aliases::new(&config);
        let same: Vec<bool> = (0..self.config.devices.len())
            .map(|d| {
                self.config.devices.get(d) == config.devices.get(d)
                    && self.aliases.of(d, 0) == aliases.of(d, 0)
            })
            .collect();
        let born: Vec<DeviceId> = (0..self.config.devices.len())
            .filter(|d| self.device_born(*d))
            .collect();
        let mut actions = Vec::new();
        let mut kept = vec![false; config.devices.len()];
        for device in born {
            if same.get(device).copied().unwrap_or(false) {
                if let Some(k) = kept.get_mut(device) {
                    *k = true;
                }
            } else {
                actions.push(self.device_death(device));
            }
        }
        self.config = config;
        self.aliases = aliases;
        let Some(session) = self.session.as_mut() else {
            return actions;
        };
        session.devices_born = kept;
        // By device index; after a reload only new births count.
        session.births = Announced::new(self.config.devices.len());
        if !session.born {
            return actions;
        }
        for device in 0..self.config.devices.len() {
            if !self.device_born(device) && cache.is_online(device) {
                actions.extend(self.device_birth(device, cache));
            }
        }
        actions
    }

    /// DDEATH for `device`, which is no longer born.
    fn device_death(&mut self, device: DeviceId) -> Action {
        if let Some(born) = self
            .session
            .as_mut()
            .and_then(|s| s.devices_born.get_mut(device))
        {
            *born = false;
        }
        let payload = Payload {
            timestamp: Some(now_ms()),
            seq: Some(self.seq.advance()),
            ..Payload::default()
        };
        self.publish(self.device_topic(MessageType::DDeath, device), &payload)
    }

    /// Whether the node is born in this session (with a primary host: while it is online).
    pub fn online(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.born)
    }

    /// Whether DDATA may go out for `device`: it and the node are born in this session.
    pub fn ready(&self, device: DeviceId) -> bool {
        self.device_born(device)
    }

    /// The primary host the node follows and whether it is online; `None` without one.
    pub fn primary_host(&self) -> Option<(&str, bool)> {
        self.host
            .as_ref()
            .map(|h| (h.id.as_str(), h.state.is_online()))
    }

    /// Stored samples as one DDATA of this session (its seq, the current
    /// aliases), each metric flagged historical with its original timestamp;
    /// without those the device's DBIRTH already carried.
    pub fn history(&mut self, device: DeviceId, samples: &[Sample]) -> Vec<Message> {
        if !self.device_born(device) {
            return Vec::new();
        }
        let Some(births) = self.session.as_ref().map(|s| &s.births) else {
            return Vec::new();
        };
        if !samples.iter().any(|s| births.carried(s)) {
            return vec![self.device_data(device, samples, true)];
        }
        let unreported: Vec<Sample> = samples
            .iter()
            .filter(|s| !births.carried(s))
            .cloned()
            .collect();
        if unreported.is_empty() {
            return Vec::new();
        }
        vec![self.device_data(device, &unreported, true)]
    }

    fn device_data(&mut self, device: DeviceId, samples: &[Sample], historical: bool) -> Message {
        let now = now_ms();
        let metrics = match &self.templates {
            Some(t) => t.data(
                &self.config,
                &self.aliases,
                device,
                samples,
                historical,
                now,
            ),
            None => samples
                .iter()
                .map(|s| data_metric(&self.aliases, s, historical))
                .collect(),
        };
        let payload = Payload {
            timestamp: Some(now),
            metrics,
            seq: Some(self.seq.advance()),
            ..Payload::default()
        };
        data_message(
            self.device_topic(MessageType::DData, device),
            &payload,
            self.compression,
        )
    }

    /// Node statistics that changed since last published, as NDATA.
    pub fn stats(&mut self, stats: NodeStats) -> Vec<Action> {
        if !self.session.as_ref().is_some_and(|s| s.born) {
            return Vec::new();
        }
        let now = now_ms();
        let metrics: Vec<Metric> = NODE_STATS
            .iter()
            .filter(|(_, _, read)| read(&stats) != read(&self.reported))
            .map(|(_, alias, read)| Metric {
                alias: Some(*alias),
                timestamp: Some(now),
                value: Some(metric::Value::LongValue(read(&stats))),
                ..Metric::default()
            })
            .collect();
        self.reported = stats;
        if metrics.is_empty() {
            return Vec::new();
        }
        let payload = Payload {
            timestamp: Some(now),
            metrics,
            seq: Some(self.seq.advance()),
            ..Payload::default()
        };
        vec![self.publish(self.topic(MessageType::NData), &payload)]
    }

    /// NDEATH before a deliberate disconnect, with this connection's bdSeq;
    /// nothing when this connection never birthed.
    pub fn farewell(&mut self) -> Vec<Action> {
        let Some(session) = self.session.take().filter(|s| s.born) else {
            return Vec::new();
        };
        let mut death = self.will(session.bd_seq);
        death.qos = Qos::AtMostOnce;
        vec![Action::Publish(death)]
    }
}

/// The will of `node` for a connection whose bdSeq is `bd_seq`: its NDEATH.
pub fn will(node: &Node, bd_seq: u64) -> Message {
    Message {
        topic: Topic::node(&node.group_id, MessageType::NDeath, &node.node_id).to_string(),
        payload: node_death(bd_seq, now_ms()).encode_to_vec(),
        qos: Qos::AtLeastOnce,
        retain: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;
    use crate::core::value::{Fault, Quality, Value};
    use crate::core::write::Rejection;
    use std::path::Path;

    const CONFIG: &str = r#"
[node]
group_id = "g"
node_id = "n"
[upstream]
url = "mqtt://b"
[[bus]]
name = "b"
kind = "tcp"
address = "127.0.0.1:502"
[[device]]
name = "d"
bus = "b"
unit = 1
[[device.metric]]
name = "level"
table = "holding"
address = 0
type = "u16"
writable = true
max = 100.0
[[device.metric]]
name = "status"
table = "holding"
address = 1
type = "u16"
"#;

    fn node(extra: &str) -> (EdgeNode, LastValues) {
        let text = CONFIG.replace(
            "url = \"mqtt://b\"",
            &format!("url = \"mqtt://b\"\n{extra}"),
        );
        let config = Arc::new(Config::from_toml(Path::new("t.toml"), &text).unwrap());
        let cache = LastValues::new(&config);
        (EdgeNode::new(config, Role::Uplink), cache)
    }

    fn online(cache: &mut LastValues) -> DeviceEvent<Config> {
        let sample = |metric, v| Sample {
            device: 0,
            metric,
            value: Some(Value::U16(v)),
            quality: Quality::Good,
            timestamp_ms: 1,
        };
        let event = DeviceEvent::Online {
            device: 0,
            samples: vec![sample(0, 7), sample(1, 1)],
            identity: Some(Arc::new(Identity {
                vendor: "ACME".into(),
                product_code: "PM-9".into(),
                revision: "1.2".into(),
            })),
        };
        cache.apply(&event);
        event
    }

    /// (topic, seq) of each publish, and the decoded payloads.
    fn published(actions: &[Action]) -> Vec<(String, Option<u64>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish(m) => Some((
                    m.topic.clone(),
                    Payload::decode(m.payload.as_slice()).unwrap().seq,
                )),
                _ => None,
            })
            .collect()
    }

    fn dcmd(metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(1),
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn subscriptions_come_before_births_and_births_before_data() {
        let (mut node, mut cache) = node("");
        let event = online(&mut cache);
        assert!(
            node.event(&event, &cache).is_empty(),
            "nothing before a connection"
        );
        let subscribe = node.connected(3);
        assert!(matches!(&subscribe[..], [Action::Subscribe(f)] if f.len() == 2));
        let births = node.subscribed(&cache, NodeStats::default());
        assert_eq!(
            published(&births),
            vec![
                ("spBv1.0/g/NBIRTH/n".into(), Some(0)),
                ("spBv1.0/g/DBIRTH/n/d".into(), Some(1))
            ]
        );
        let Some(Action::Publish(dbirth)) = births.get(1) else {
            panic!("DBIRTH");
        };
        let payload = Payload::decode(dbirth.payload.as_slice()).unwrap();
        let properties: Vec<(Option<&str>, Option<u64>, Option<&metric::Value>)> = payload
            .metrics
            .iter()
            .filter(|m| {
                m.name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("Properties/"))
            })
            .map(|m| (m.name.as_deref(), m.alias, m.value.as_ref()))
            .collect();
        let text = |s: &str| Some(metric::Value::StringValue(s.into()));
        assert_eq!(
            properties,
            vec![
                (Some("Properties/Vendor"), None, text("ACME").as_ref()),
                (Some("Properties/Product Code"), None, text("PM-9").as_ref()),
                (Some("Properties/Revision"), None, text("1.2").as_ref()),
            ],
            "the identity, without aliases (never in DDATA)"
        );
        let offline = DeviceEvent::Offline {
            device: 0,
            fault: Fault::Timeout,
        };
        cache.apply(&offline);
        assert_eq!(
            published(&node.event(&offline, &cache)),
            vec![("spBv1.0/g/DDEATH/n/d".into(), Some(2))]
        );
        let late = DeviceEvent::Samples {
            device: 0,
            samples: Vec::new(),
        };
        assert!(
            node.event(&late, &cache).is_empty(),
            "no DDATA after DDEATH"
        );
    }

    #[test]
    fn the_replay_leaves_out_what_the_dbirth_already_reported() {
        let (mut node, mut cache) = node("");
        let stored = |metric, v, timestamp_ms| Sample {
            device: 0,
            metric,
            value: Some(Value::U16(v)),
            quality: Quality::Good,
            timestamp_ms,
        };
        // Polled while disconnected: the newest of them is in the cache.
        let older = vec![stored(0, 5, 1), stored(1, 1, 1)];
        let newest = vec![stored(0, 7, 2)];
        for samples in [&older, &newest] {
            cache.apply(&DeviceEvent::Online {
                device: 0,
                samples: samples.clone(),
                identity: None,
            });
        }
        node.connected(1);
        node.subscribed(&cache, NodeStats::default());
        let replayed = |node: &mut EdgeNode, samples: &[Sample]| -> Vec<Vec<(u64, bool)>> {
            node.history(0, samples)
                .iter()
                .map(|m| {
                    Payload::decode(m.payload.as_slice())
                        .unwrap()
                        .metrics
                        .iter()
                        .map(|m| (m.timestamp.unwrap(), m.is_historical == Some(true)))
                        .collect()
                })
                .collect()
        };
        assert_eq!(
            replayed(&mut node, &older),
            vec![vec![(1, true)]],
            "metric 0's older sample is history; metric 1's sample of time 1 is its newest, which the DBIRTH carried"
        );
        assert!(
            replayed(&mut node, &newest).is_empty(),
            "the DBIRTH carried value 7 of time 2"
        );
        let mixed = vec![stored(0, 7, 2), stored(0, 9, 3)];
        assert_eq!(replayed(&mut node, &mixed), vec![vec![(3, true)]]);
    }

    #[test]
    fn a_reload_reissues_births_only_for_what_changed_and_keeps_the_session() {
        let (mut node, mut cache) = node("");
        online(&mut cache);
        node.connected(5);
        node.subscribed(&cache, NodeStats::default());
        let old = Arc::clone(&node.config);

        let same = Arc::new((*old).clone());
        let mut carried = cache.clone();
        carried.reconfigure(&old, &same);
        assert!(
            node.reconfigure(Arc::clone(&same), &carried).is_empty(),
            "the same map: no death, no birth"
        );
        assert!(node.ready(0));

        let mut edited = (*same).clone();
        let mut metrics = edited.devices[0].metrics.to_vec();
        if let Some(metric) = metrics.get_mut(1) {
            metric.unit = Some("%".into());
        }
        edited.devices[0].metrics = metrics.into();
        let edited = Arc::new(edited);
        carried.reconfigure(&same, &edited);
        let actions = node.reconfigure(Arc::clone(&edited), &carried);
        assert_eq!(
            published(&actions),
            vec![("spBv1.0/g/DDEATH/n/d".into(), Some(2))],
            "the changed device dies at once, seq goes on: no NBIRTH, the session stays"
        );
        assert!(!node.ready(0), "no DDATA before its new birth");
        let back = online(&mut cache);
        carried.apply(&back);
        let births = node.event(&back, &carried);
        assert_eq!(
            published(&births),
            vec![("spBv1.0/g/DBIRTH/n/d".into(), Some(3))]
        );
        let Some(Action::Publish(birth)) = births.first() else {
            panic!("DBIRTH");
        };
        let payload = Payload::decode(birth.payload.as_slice()).unwrap();
        let unit = payload.metrics[1]
            .properties
            .as_ref()
            .map(|p| p.keys.clone())
            .unwrap_or_default();
        assert!(unit.iter().any(|k| k == "engUnit"), "{payload:?}");

        let mut emptied = (*edited).clone();
        emptied.devices.clear();
        let emptied = Arc::new(emptied);
        let actions = node.reconfigure(Arc::clone(&emptied), &LastValues::new(&emptied));
        assert_eq!(
            published(&actions),
            vec![("spBv1.0/g/DDEATH/n/d".into(), Some(4))],
            "a removed device dies under its old name"
        );
    }

    #[test]
    fn commands_resolve_by_name_or_alias_and_refusals_name_the_reason() {
        let (mut node, mut cache) = node("");
        online(&mut cache);
        node.connected(0);
        node.subscribed(&cache, NodeStats::default());
        let alias = node.aliases.of(0, 0);
        let by_alias = Metric {
            alias: Some(alias),
            value: Some(metric::Value::IntValue(42)),
            ..Metric::default()
        };
        let by_name = |name: &str, value| Metric {
            name: Some(name.into()),
            value: Some(value),
            ..Metric::default()
        };
        // One metric per command: a command may carry no more metrics
        // than the device has (two).
        let actions: Vec<Action> = [
            by_alias,
            by_name("status", metric::Value::IntValue(1)),
            by_name("level", metric::Value::IntValue(101)),
            by_name("level", metric::Value::LongValue(1)),
            by_name("nope", metric::Value::IntValue(1)),
        ]
        .into_iter()
        .flat_map(|m| {
            node.message(
                "spBv1.0/g/DCMD/n/d",
                &dcmd(vec![m]),
                false,
                &cache,
                NodeStats::default(),
            )
        })
        .collect();
        assert!(matches!(&actions[0], Action::Write(w) if w.value == Value::U16(42)));
        assert!(matches!(
            &actions[1],
            Action::Reject(Rejection::ReadOnly(_))
        ));
        assert!(matches!(
            &actions[2],
            Action::Reject(Rejection::OutOfRange { .. })
        ));
        assert!(matches!(
            &actions[3],
            Action::Reject(Rejection::WrongType { .. })
        ));
        assert!(matches!(
            &actions[4],
            Action::Reject(Rejection::UnknownMetric(_))
        ));
        let garbage = node.message(
            "spBv1.0/g/NCMD/n",
            b"\xff\xff",
            false,
            &cache,
            NodeStats::default(),
        );
        assert!(matches!(
            &garbage[..],
            [Action::Reject(Rejection::Malformed(_))]
        ));
    }

    #[test]
    fn retained_and_oversized_commands_are_refused_whole() {
        let (mut node, mut cache) = node("");
        online(&mut cache);
        node.connected(0);
        node.subscribed(&cache, NodeStats::default());
        let write = |v| Metric {
            name: Some("level".into()),
            value: Some(metric::Value::IntValue(v)),
            ..Metric::default()
        };
        let stored = node.message(
            "spBv1.0/g/DCMD/n/d",
            &dcmd(vec![write(7)]),
            true,
            &cache,
            NodeStats::default(),
        );
        assert!(matches!(
            &stored[..],
            [Action::Reject(Rejection::Retained(_))]
        ));
        let live = node.message(
            "spBv1.0/g/DCMD/n/d",
            &dcmd(vec![write(7)]),
            false,
            &cache,
            NodeStats::default(),
        );
        assert!(matches!(&live[..], [Action::Write(_)]));
        let flood = node.message(
            "spBv1.0/g/DCMD/n/d",
            &dcmd((0..100_000).map(write).collect()),
            false,
            &cache,
            NodeStats::default(),
        );
        assert!(matches!(
            &flood[..],
            [Action::Reject(Rejection::Oversized {
                carried: 100_000,
                ..
            })]
        ));
        let rebirths = node.message(
            "spBv1.0/g/NCMD/n",
            &dcmd(vec![
                Metric {
                    name: Some(REBIRTH.into()),
                    value: Some(metric::Value::BooleanValue(true)),
                    ..Metric::default()
                };
                1000
            ]),
            false,
            &cache,
            NodeStats::default(),
        );
        assert!(matches!(
            &rebirths[..],
            [Action::Reject(Rejection::Oversized { .. })]
        ));
    }

    #[test]
    fn a_primary_host_gates_the_births_and_its_death_ends_the_session() {
        let (mut node, mut cache) = node("primary_host = \"h\"");
        online(&mut cache);
        let subscribe = node.connected(5);
        assert!(
            matches!(&subscribe[..], [Action::Subscribe(f)] if f.iter().any(|(t, _)| t == "spBv1.0/STATE/h"))
        );
        assert!(node.subscribed(&cache, NodeStats::default()).is_empty());
        let stats = NodeStats::default();
        let on = node.message(
            "spBv1.0/STATE/h",
            br#"{"online":true,"timestamp":10}"#,
            true,
            &cache,
            stats,
        );
        assert_eq!(
            published(&on).len(),
            2,
            "NBIRTH and DBIRTH once the host is online"
        );
        let off = node.message(
            "spBv1.0/STATE/h",
            br#"{"online":false,"timestamp":11}"#,
            true,
            &cache,
            stats,
        );
        assert_eq!(published(&off), vec![("spBv1.0/g/NDEATH/n".into(), None)]);
        assert!(matches!(off.last(), Some(Action::LeaveServer)));
    }

    #[test]
    fn changed_statistics_go_out_as_ndata_by_alias() {
        let (mut node, cache) = node("");
        node.connected(0);
        node.subscribed(&cache, NodeStats::default());
        assert!(
            node.stats(NodeStats::default()).is_empty(),
            "nothing changed"
        );
        let mut stats = NodeStats::default();
        stats.counters.commands_rejected = 2;
        let actions = node.stats(stats);
        let Some(Action::Publish(m)) = actions.first() else {
            panic!("{actions:?}")
        };
        let p = Payload::decode(m.payload.as_slice()).unwrap();
        assert_eq!(m.topic, "spBv1.0/g/NDATA/n");
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].alias, Some(5));
        assert_eq!(p.metrics[0].value, Some(metric::Value::LongValue(2)));
    }
    fn node_control(name: &str, on: bool) -> Vec<u8> {
        Payload {
            metrics: vec![Metric {
                name: Some(name.into()),
                value: Some(metric::Value::BooleanValue(on)),
                ..Metric::default()
            }],
            ..Payload::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn next_server_says_goodbye_and_leaves_and_only_the_uplink_offers_it() {
        let (mut node, mut cache) = node("");
        online(&mut cache);
        node.connected(3);
        let births = node.subscribed(&cache, NodeStats::default());
        let Some(Action::Publish(nbirth)) = births.first() else {
            panic!("NBIRTH");
        };
        let nbirth = Payload::decode(nbirth.payload.as_slice()).unwrap();
        let next = nbirth
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(NEXT_SERVER))
            .expect("Next Server in the NBIRTH");
        assert_eq!(next.value, Some(metric::Value::BooleanValue(false)));
        assert_eq!(next.alias, None);
        let leave = node.message(
            "spBv1.0/g/NCMD/n",
            &node_control(NEXT_SERVER, true),
            false,
            &cache,
            NodeStats::default(),
        );
        assert_eq!(published(&leave), vec![("spBv1.0/g/NDEATH/n".into(), None)]);
        assert!(
            matches!(leave.last(), Some(Action::LeaveServer)),
            "{leave:?}"
        );
        assert!(!node.online());

        let config = Arc::new(Config::from_toml(Path::new("t.toml"), CONFIG).unwrap());
        let mut local = EdgeNode::new(config, Role::LocalBroker);
        local.connected(0);
        let births = local.subscribed(&cache, NodeStats::default());
        let Some(Action::Publish(nbirth)) = births.first() else {
            panic!("NBIRTH");
        };
        let nbirth = Payload::decode(nbirth.payload.as_slice()).unwrap();
        assert!(
            nbirth
                .metrics
                .iter()
                .all(|m| m.name.as_deref() != Some(NEXT_SERVER)),
            "the local broker is the only server there is"
        );
        let refused = local.message(
            "spBv1.0/g/NCMD/n",
            &node_control(NEXT_SERVER, true),
            false,
            &cache,
            NodeStats::default(),
        );
        assert!(
            matches!(&refused[..], [Action::Reject(Rejection::ReadOnly(_))]),
            "{refused:?}"
        );
    }

    #[test]
    fn rebirth_requests_in_a_burst_give_one_rebirth() {
        let (mut node, mut cache) = node("rebirth_min_interval = \"1m\"");
        online(&mut cache);
        node.connected(3);
        node.subscribed(&cache, NodeStats::default());
        let mut nbirths = 0;
        for _ in 0..50 {
            let actions = node.message(
                "spBv1.0/g/NCMD/n",
                &node_control(REBIRTH, true),
                false,
                &cache,
                NodeStats::default(),
            );
            nbirths += published(&actions)
                .iter()
                .filter(|(t, _)| t == "spBv1.0/g/NBIRTH/n")
                .count();
            assert!(node.tick(&cache, NodeStats::default()).is_empty());
        }
        assert_eq!(
            nbirths, 0,
            "the births of the connection answer requests within the interval"
        );
    }

    #[test]
    fn the_example_site_births_as_templates_within_max_packet_size() {
        let site = std::fs::read_to_string("examples/site.toml").unwrap();
        let births = |templates: bool| {
            let text = format!("{site}\n[upstream]\nurl = \"mqtt://b\"\ntemplates = {templates}\n");
            let config =
                Arc::new(Config::from_toml(Path::new("examples/site.toml"), &text).unwrap());
            let mut cache = LastValues::new(&config);
            for device in 0..config.devices.len() {
                cache.apply(&DeviceEvent::Online {
                    device,
                    samples: Vec::new(),
                    identity: None,
                });
            }
            let mut node = EdgeNode::new(Arc::clone(&config), Role::Uplink);
            node.connected(0);
            let limit = config.upstream.as_ref().map_or(0, |u| u.max_packet_size);
            let messages: Vec<Message> = node
                .subscribed(&cache, NodeStats::default())
                .into_iter()
                .filter_map(|a| match a {
                    Action::Publish(m) => Some(m),
                    _ => None,
                })
                .collect();
            assert_eq!(messages.len(), 1 + config.devices.len());
            for m in &messages {
                assert!(
                    m.payload.len() < limit,
                    "{}: {} bytes",
                    m.topic,
                    m.payload.len()
                );
            }
            messages
        };
        let with = births(true);
        let nbirth = Payload::decode(with[0].payload.as_slice()).unwrap();
        let defined: Vec<&str> = nbirth
            .metrics
            .iter()
            .filter(|m| matches!(&m.value, Some(metric::Value::TemplateValue(t)) if t.is_definition == Some(true)))
            .filter_map(|m| m.name.as_deref())
            .collect();
        assert_eq!(
            defined,
            ["eastron-sdm630", "eastron-sdm120"],
            "one definition per model in use"
        );
        let instances = with[1..]
            .iter()
            .filter(|m| {
                Payload::decode(m.payload.as_slice())
                    .is_ok_and(|p| p.metrics.iter().any(|x| x.datatype == Some(19)))
            })
            .count();
        assert_eq!(
            instances, 11,
            "the meters but the incomer, whose scaled override makes a Double of a Float member; the PLC has no model"
        );
        assert_eq!(births(false).len(), with.len());
    }
}
