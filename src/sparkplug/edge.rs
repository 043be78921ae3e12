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

use crate::command::{self, Rejection};
use crate::config::{Config, Qos};
use crate::last_values::LastValues;
use crate::modbus::bus::DeviceEvent;
use crate::mqtt::Message;
use crate::profile::{Action, NodeStats};
use crate::sparkplug::host::{HostChange, PrimaryHost};
use crate::sparkplug::payload::{
    Aliases, BD_SEQ, birth_metric, data_metric, datatype, datatype_of, node_death, value_from_field,
};
use crate::sparkplug::proto::Payload;
use crate::sparkplug::proto::payload::{Metric, metric};
use crate::sparkplug::session::Seq;
use crate::sparkplug::topic::{MessageType, Topic, state_topic};
use crate::value::{DeviceId, Sample, now_ms};

/// The one node metric a host may write (tck-id-operational-behavior-data-commands-rebirth-name).
pub const REBIRTH: &str = "Node Control/Rebirth";
/// The gateway's version, a node property.
pub const VERSION: &str = "Properties/Version";

/// Reads one figure out of the node statistics.
type StatReader = fn(&NodeStats) -> u64;

/// The gateway's own counters as node metrics: name, alias (below
/// [`crate::sparkplug::payload::FIRST_DEVICE_ALIAS`]) and how to read it.
const NODE_STATS: [(&str, u64, StatReader); 7] = [
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
];

/// State of one MQTT connection.
#[derive(Debug)]
struct Session {
    bd_seq: u64,
    /// NBIRTH sent in this connection.
    born: bool,
    /// DBIRTH sent and no DDEATH since, per device.
    devices_born: Vec<bool>,
}

/// The edge node.
#[derive(Debug)]
pub struct EdgeNode {
    config: Arc<Config>,
    aliases: Aliases,
    seq: Seq,
    session: Option<Session>,
    host: Option<(String, PrimaryHost)>,
    /// Node statistics as last published.
    reported: NodeStats,
}

impl EdgeNode {
    /// A node for `config`; no connection yet.
    pub fn new(config: Arc<Config>) -> EdgeNode {
        let host = config
            .upstream
            .as_ref()
            .and_then(|u| u.primary_host.clone())
            .map(|id| (id, PrimaryHost::default()));
        EdgeNode {
            aliases: Aliases::new(&config),
            config,
            seq: Seq::default(),
            session: None,
            host,
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
        Message {
            topic: self.topic(MessageType::NDeath),
            payload: node_death(bd_seq, now_ms()).encode_to_vec(),
            qos: Qos::AtLeastOnce,
            retain: false,
        }
    }

    /// A connection whose will carries `bd_seq` is up: subscribe first.
    pub fn connected(&mut self, bd_seq: u64) -> Vec<Action> {
        self.session = Some(Session {
            bd_seq,
            born: false,
            devices_born: vec![false; self.config.devices.len()],
        });
        let node = &self.config.node;
        let mut filters = vec![
            (self.topic(MessageType::NCmd), Qos::AtLeastOnce),
            (
                format!(
                    "{}/{}/{}/{}/+",
                    crate::sparkplug::topic::NAMESPACE,
                    node.group_id,
                    MessageType::DCmd.token(),
                    node.node_id
                ),
                Qos::AtLeastOnce,
            ),
        ];
        if let Some((id, host)) = &mut self.host {
            host.reset();
            filters.push((state_topic(id), Qos::AtLeastOnce));
        }
        vec![Action::Subscribe(filters)]
    }

    /// Subscriptions are in place: birth now, unless waiting for the primary host.
    pub fn subscribed(&mut self, cache: &LastValues, stats: NodeStats) -> Vec<Action> {
        if self.host.as_ref().is_some_and(|(_, h)| !h.is_online()) {
            tracing::info!("waiting for the primary host to be online before the births");
            return Vec::new();
        }
        self.births(cache, stats)
    }

    /// The connection is gone; the next one starts over.
    pub fn disconnected(&mut self) {
        self.session = None;
        if let Some((_, host)) = &mut self.host {
            host.reset();
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
        let metrics = cache
            .snapshot(device)
            .iter()
            .filter_map(|s| birth_metric(&self.config, &self.aliases, s))
            .collect();
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
        Action::Publish(Message {
            topic,
            payload: payload.encode_to_vec(),
            qos: Qos::AtMostOnce,
            retain: false,
        })
    }

    /// What a bus task reported becomes DDATA, DBIRTH or DDEATH.
    pub fn event(&mut self, event: &DeviceEvent, cache: &LastValues) -> Vec<Action> {
        if !self.session.as_ref().is_some_and(|s| s.born) {
            return Vec::new();
        }
        match event {
            DeviceEvent::Samples { device, samples } if self.device_born(*device) => {
                vec![self.device_data(*device, samples)]
            }
            DeviceEvent::Online { device, .. } => {
                self.device_birth(*device, cache).into_iter().collect()
            }
            DeviceEvent::Offline { device, .. } if self.device_born(*device) => {
                if let Some(born) = self
                    .session
                    .as_mut()
                    .and_then(|s| s.devices_born.get_mut(*device))
                {
                    *born = false;
                }
                let payload = Payload {
                    timestamp: Some(now_ms()),
                    seq: Some(self.seq.advance()),
                    ..Payload::default()
                };
                vec![self.publish(self.device_topic(MessageType::DDeath, *device), &payload)]
            }
            _ => Vec::new(),
        }
    }

    fn device_data(&mut self, device: DeviceId, samples: &[Sample]) -> Action {
        let payload = Payload {
            timestamp: Some(now_ms()),
            metrics: samples
                .iter()
                .map(|s| data_metric(&self.aliases, s, false))
                .collect(),
            seq: Some(self.seq.advance()),
            ..Payload::default()
        };
        self.publish(self.device_topic(MessageType::DData, device), &payload)
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

    /// An incoming NCMD, DCMD or STATE.
    pub fn message(
        &mut self,
        topic: &str,
        payload: &[u8],
        cache: &LastValues,
        stats: NodeStats,
    ) -> Vec<Action> {
        if let Some((id, host)) = &mut self.host
            && topic == state_topic(id)
        {
            return match host.observe(payload) {
                Some(HostChange::Online) if !self.session.as_ref().is_some_and(|s| s.born) => {
                    tracing::info!(host = %id, "primary host online");
                    self.births(cache, stats)
                }
                Some(HostChange::Offline) => self.host_offline(),
                _ => Vec::new(),
            };
        }
        let node = &self.config.node;
        let Some(parsed) = Topic::parse(topic)
            .filter(|t| t.group_id == node.group_id && t.node_id == node.node_id)
        else {
            return Vec::new();
        };
        let command = match Payload::decode(payload) {
            Ok(command) => command,
            Err(e) => {
                return vec![Action::Reject(Rejection::Malformed(format!(
                    "{topic}: not a Sparkplug B payload ({e})"
                )))];
            }
        };
        match (parsed.message_type, parsed.device_id) {
            (MessageType::NCmd, None) => self.node_command(&command, cache, stats),
            (MessageType::DCmd, Some(device)) => self.device_command(&device, &command),
            _ => Vec::new(),
        }
    }

    /// The primary host went offline. A born node publishes NDEATH and
    /// leaves the server, reconnecting with the next bdSeq
    /// (tck-id-operational-behavior-edge-node-termination-host-offline);
    /// a node still waiting moves on only when there is another server to
    /// try (…-primary-application-state-with-multiple-servers-walk), since
    /// reconnecting to the same one would change nothing.
    fn host_offline(&mut self) -> Vec<Action> {
        let born = self.session.as_ref().is_some_and(|s| s.born);
        let servers = self.config.upstream.as_ref().map_or(1, |u| u.servers.len());
        if !born && servers < 2 {
            return Vec::new();
        }
        tracing::warn!("primary host offline: leaving this server");
        let mut actions = self.farewell();
        actions.push(Action::LeaveServer);
        actions
    }

    fn node_command(
        &mut self,
        command: &Payload,
        cache: &LastValues,
        stats: NodeStats,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut rebirth = false;
        for m in &command.metrics {
            match (m.name.as_deref(), &m.value) {
                (Some(REBIRTH), Some(metric::Value::BooleanValue(true))) => rebirth = true,
                (Some(REBIRTH), Some(metric::Value::BooleanValue(false))) => {}
                (Some(REBIRTH), _) => actions.push(Action::Reject(Rejection::WrongType {
                    metric: REBIRTH.into(),
                    expected: crate::value::DataType::Bool,
                    got: "another type".into(),
                })),
                (Some(name), _) => actions.push(Action::Reject(Rejection::ReadOnly(name.into()))),
                (None, _) => actions.push(Action::Reject(Rejection::UnknownMetric(format!(
                    "alias {}",
                    m.alias.unwrap_or_default()
                )))),
            }
        }
        // Stop sending data at once and birth again, seq from 0, same bdSeq
        // (tck-id-operational-behavior-data-commands-rebirth-action-1..3).
        if rebirth && self.session.as_ref().is_some_and(|s| s.born) {
            tracing::info!("rebirth requested");
            actions.extend(self.births(cache, stats));
        }
        actions
    }

    fn device_command(&mut self, device_name: &str, command: &Payload) -> Vec<Action> {
        let Some((device, def)) = self.config.device_by_name(device_name) else {
            return vec![Action::Reject(Rejection::UnknownDevice(device_name.into()))];
        };
        let mut actions = Vec::new();
        for m in &command.metrics {
            let metric = match (m.alias, m.name.as_deref()) {
                (Some(alias), _) => self.aliases.metric_of(device, alias),
                (None, Some(name)) => def.metrics.iter().position(|x| x.name == name),
                (None, None) => None,
            };
            let Some((metric, mdef)) = metric.and_then(|i| Some((i, def.metrics.get(i)?))) else {
                let what = m.name.clone().map_or_else(
                    || format!("alias {}", m.alias.unwrap_or_default()),
                    |n| format!("\"{n}\""),
                );
                actions.push(Action::Reject(Rejection::UnknownMetric(what)));
                continue;
            };
            let expected = mdef.value_type();
            let got = match (&m.value, m.datatype) {
                (_, Some(t)) if t != datatype_of(expected) => None,
                (Some(field), _) if m.is_null != Some(true) => value_from_field(field, expected),
                _ => None,
            };
            let Some(value) = got else {
                actions.push(Action::Reject(Rejection::WrongType {
                    metric: mdef.name.clone(),
                    expected,
                    got: describe(m),
                }));
                continue;
            };
            if !self.device_born(device) {
                actions.push(Action::Reject(Rejection::DeviceOffline(def.name.clone())));
                continue;
            }
            actions.push(
                match command::prepare(&self.config, device, metric, value) {
                    Ok(write) => Action::Write(write),
                    Err(rejection) => Action::Reject(rejection),
                },
            );
        }
        actions
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

fn describe(m: &Metric) -> String {
    let field = match &m.value {
        None => "no value",
        Some(metric::Value::IntValue(_)) => "int_value",
        Some(metric::Value::LongValue(_)) => "long_value",
        Some(metric::Value::FloatValue(_)) => "float_value",
        Some(metric::Value::DoubleValue(_)) => "double_value",
        Some(metric::Value::BooleanValue(_)) => "boolean_value",
        Some(metric::Value::StringValue(_)) => "string_value",
        Some(_) => "an unsupported value",
    };
    match m.datatype {
        Some(t) => format!("datatype {t} with {field}"),
        None => field.to_owned(),
    }
}
