//! The plain profile: one JSON message per metric on a readable topic, for
//! consumers that do not speak Sparkplug.
//!
//! - `{template}` (default `{group_id}/{node_id}/{device}/{metric}`):
//!   `{"value":..,"ts":..,"unit":..,"quality":"good"|"bad"}` with the metric's QoS and retain flag;
//! - `{group_id}/{node_id}/state`: retained `ONLINE`, and `OFFLINE` as the retained will;
//! - `{group_id}/{node_id}/{device}/state`: retained `ONLINE`/`OFFLINE`;
//! - `{metric topic}/set`: a JSON value to write, under the same rules as a DCMD.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, Node, TopicTemplate};
use crate::core::event::DeviceEvent;
use crate::core::identity::Identity;
use crate::core::message::Message;
use crate::core::message::Qos;
use crate::core::value::{DeviceId, MetricId, Quality, Sample};
use crate::core::write::Rejection;
use crate::profile::action::Action;
use crate::profile::announced::Announced;
use crate::profile::command::{self};
use crate::profile::last_values::LastValues;

/// Node and device state payloads.
pub const ONLINE: &str = "ONLINE";
/// See [`ONLINE`].
pub const OFFLINE: &str = "OFFLINE";

/// The plain-profile publisher's state.
#[derive(Debug, Clone)]
pub struct PlainNode {
    config: Arc<Config>,
    connected: bool,
    /// The node state and the known values went out on this connection:
    /// values may follow. Before that they wait in the queue.
    announced: bool,
    /// What the announcement carried: the replay leaves it out.
    announced_values: Announced,
    /// Per device, per metric.
    topics: Vec<Vec<String>>,
    /// `/set` topic → the writable metric it writes.
    set_topics: HashMap<String, (DeviceId, MetricId)>,
}

impl PlainNode {
    /// Topics for every metric of `config`, from its template.
    pub fn new(config: Arc<Config>) -> PlainNode {
        let template = config
            .upstream
            .as_ref()
            .map_or_else(TopicTemplate::standard, |u| u.topic_template.clone());
        let topics: Vec<Vec<String>> = config
            .devices
            .iter()
            .map(|d| {
                d.metrics
                    .iter()
                    .map(|m| template.render(&config.node, &d.name, &m.name))
                    .collect()
            })
            .collect();
        let mut set_topics = HashMap::new();
        for (device, d) in config.devices.iter().enumerate() {
            for (metric, m) in d.metrics.iter().enumerate() {
                if let (true, Some(topic)) = (m.writable, topics[device].get(metric)) {
                    set_topics.insert(format!("{topic}/set"), (device, metric));
                }
            }
        }
        PlainNode {
            connected: false,
            announced: false,
            announced_values: Announced::new(config.devices.len()),
            config,
            topics,
            set_topics,
        }
    }

    fn node_state_topic(&self) -> String {
        node_state_topic(&self.config.node)
    }

    fn device_state(&self, device: DeviceId, online: bool) -> Option<Action> {
        let node = &self.config.node;
        let name = &self.config.devices.get(device)?.name;
        Some(Action::Publish(Message {
            topic: format!("{}/{}/{name}/state", node.group_id, node.node_id),
            payload: if online { ONLINE } else { OFFLINE }.into(),
            qos: Qos::AtLeastOnce,
            retain: true,
        }))
    }

    /// `{group}/{node}/{device}/identity`: what the device said it is, as
    /// JSON, retained so a consumer that subscribes later still learns it.
    fn device_identity(&self, device: DeviceId, identity: &Identity) -> Option<Action> {
        let node = &self.config.node;
        let name = &self.config.devices.get(device)?.name;
        Some(Action::Publish(Message {
            topic: format!("{}/{}/{name}/identity", node.group_id, node.node_id),
            payload: identity.to_json().to_string().into_bytes(),
            qos: Qos::AtLeastOnce,
            retain: true,
        }))
    }

    /// The retained `OFFLINE` node state.
    pub fn will(&self) -> Message {
        will(&self.config.node)
    }

    /// Connected: subscribe to the `/set` topics of writable metrics.
    pub fn connected(&mut self) -> Vec<Action> {
        self.connected = true;
        let mut filters: Vec<(String, Qos)> = self
            .set_topics
            .keys()
            .map(|t| (t.clone(), Qos::AtLeastOnce))
            .collect();
        filters.sort();
        vec![Action::Subscribe(filters)]
    }

    /// Subscribed: announce the node online and publish every state and known value.
    pub fn subscribed(&mut self, cache: &LastValues) -> Vec<Action> {
        self.announced = true;
        let mut actions = vec![Action::Publish(Message {
            topic: self.node_state_topic(),
            payload: ONLINE.into(),
            qos: Qos::AtLeastOnce,
            retain: true,
        })];
        for device in 0..self.config.devices.len() {
            actions.extend(self.device_state(device, cache.is_online(device)));
            if let Some(identity) = cache.identity(device) {
                actions.extend(self.device_identity(device, identity));
            }
            if cache.is_online(device) {
                let snapshot = cache.snapshot(device);
                self.announced_values.record(device, &snapshot);
                actions.extend(snapshot.iter().filter_map(|s| self.sample(s)));
            }
        }
        actions
    }

    /// The connection is gone.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.announced = false;
    }

    fn sample(&self, sample: &Sample) -> Option<Action> {
        self.sample_message(sample).map(Action::Publish)
    }

    fn sample_message(&self, sample: &Sample) -> Option<Message> {
        let metric = self
            .config
            .devices
            .get(sample.device)?
            .metrics
            .get(sample.metric)?;
        let topic = self.topics.get(sample.device)?.get(sample.metric)?.clone();
        Some(Message {
            topic,
            payload: payload(sample, metric.unit.as_deref()).into_bytes(),
            qos: metric.qos,
            retain: metric.retain,
        })
    }

    /// Whether values may go out now: connected and announced.
    pub fn ready(&self) -> bool {
        self.announced
    }

    /// Stored samples, with their original timestamps and not retained (a
    /// retained value must stay the newest one); without those the
    /// announcement already published.
    pub fn history(&self, samples: &[Sample]) -> Vec<Message> {
        samples
            .iter()
            .filter(|s| !self.announced_values.carried(s))
            .filter_map(|s| self.sample_message(s))
            .map(|message| Message {
                retain: false,
                ..message
            })
            .collect()
    }

    /// Device events become value and state messages.
    pub fn event(&mut self, event: &DeviceEvent<Config>) -> Vec<Action> {
        if !self.announced {
            return Vec::new();
        }
        match event {
            DeviceEvent::Samples { samples, .. } => {
                samples.iter().filter_map(|s| self.sample(s)).collect()
            }
            DeviceEvent::Online {
                device,
                samples,
                identity,
            } => self
                .device_state(*device, true)
                .into_iter()
                .chain(
                    identity
                        .as_deref()
                        .and_then(|i| self.device_identity(*device, i)),
                )
                .chain(samples.iter().filter_map(|s| self.sample(s)))
                .collect(),
            DeviceEvent::Offline { device, .. } => {
                self.device_state(*device, false).into_iter().collect()
            }
            DeviceEvent::Written { .. } | DeviceEvent::Reconfigured(_) => Vec::new(),
        }
    }

    /// A reload put `config` in force: removed devices are announced
    /// offline, and the `/set` topics of newly writable metrics subscribed.
    pub fn reconfigure(&mut self, config: Arc<Config>) -> Vec<Action> {
        let mut actions = Vec::new();
        let gone = self
            .config
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| !config.devices.iter().any(|n| n.name == d.name))
            .map(|(id, _)| id)
            .collect::<Vec<_>>();
        if self.connected {
            for id in gone {
                actions.extend(self.device_state(id, false));
            }
        }
        let old_sets = std::mem::take(&mut self.set_topics);
        // What was announced is by device index; after a reload only a new announcement counts.
        *self = PlainNode {
            connected: self.connected,
            announced: self.announced,
            ..PlainNode::new(config)
        };
        let mut filters: Vec<(String, Qos)> = self
            .set_topics
            .keys()
            .filter(|t| !old_sets.contains_key(*t))
            .map(|t| (t.clone(), Qos::AtLeastOnce))
            .collect();
        filters.sort();
        // An empty list would mean "subscriptions done" to the publisher.
        if self.connected && !filters.is_empty() {
            actions.push(Action::Subscribe(filters));
        }
        actions
    }

    /// A `/set` message: a JSON value for a writable metric.
    pub fn message(
        &mut self,
        topic: &str,
        payload: &[u8],
        retained: bool,
        cache: &LastValues,
    ) -> Vec<Action> {
        let Some(&(device, metric)) = self.set_topics.get(topic) else {
            return vec![Action::Reject(Rejection::UnknownMetric(topic.into()))];
        };
        if retained {
            return vec![Action::Reject(Rejection::Retained(topic.into()))];
        }
        let Some(def) = self
            .config
            .devices
            .get(device)
            .and_then(|d| d.metrics.get(metric))
        else {
            return Vec::new();
        };
        let outcome = serde_json::from_slice::<serde_json::Value>(payload)
            .map_err(|e| Rejection::Malformed(format!("{topic}: not JSON ({e})")))
            .and_then(|json| {
                command::value_from_json(&json, def.value_type()).map_err(|why| {
                    Rejection::WrongType {
                        metric: def.name.clone(),
                        expected: def.value_type(),
                        got: why,
                    }
                })
            })
            .and_then(|value| {
                // A command queued by a persistent session may arrive before
                // the first poll; only a device known to be down refuses it.
                if cache.is_offline(device) {
                    let name = self.config.devices.get(device).map_or("", |d| &d.name);
                    Err(Rejection::DeviceOffline(name.into()))
                } else {
                    command::prepare(&self.config, device, metric, value)
                }
            });
        vec![match outcome {
            Ok(write) => Action::Write(write),
            Err(rejection) => Action::Reject(rejection),
        }]
    }

    /// The retained `OFFLINE` before a deliberate disconnect.
    pub fn farewell(&mut self) -> Vec<Action> {
        if !self.connected {
            return Vec::new();
        }
        self.connected = false;
        self.announced = false;
        vec![Action::Publish(self.will())]
    }
}

fn node_state_topic(node: &Node) -> String {
    format!("{}/{}/state", node.group_id, node.node_id)
}

/// The will of `node`: its retained `OFFLINE` state.
pub fn will(node: &Node) -> Message {
    Message {
        topic: node_state_topic(node),
        payload: OFFLINE.into(),
        qos: Qos::AtLeastOnce,
        retain: true,
    }
}

/// `{"value":..,"ts":..,"unit":..,"quality":..}`; a bad sample has a null
/// value and says why, so a stale number is never shown as current.
pub fn payload(sample: &Sample, unit: Option<&str>) -> String {
    let mut object = serde_json::Map::new();
    object.insert(
        "value".into(),
        sample
            .value
            .as_ref()
            .map_or(serde_json::Value::Null, |v| v.to_json()),
    );
    object.insert("ts".into(), sample.timestamp_ms.into());
    if let Some(unit) = unit {
        object.insert("unit".into(), unit.into());
    }
    match &sample.quality {
        Quality::Good => {
            object.insert("quality".into(), "good".into());
        }
        Quality::Bad(fault) => {
            object.insert("quality".into(), "bad".into());
            object.insert("error".into(), fault.to_string().into());
        }
    }
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::value::Value;
    use std::path::Path;

    const CONFIG: &str = r#"
[node]
group_id = "g"
node_id = "n"
[upstream]
url = "mqtt://b"
profile = "plain"
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
"#;

    fn sample(v: u16, timestamp_ms: u64) -> Sample {
        Sample {
            device: 0,
            metric: 0,
            value: Some(Value::U16(v)),
            quality: Quality::Good,
            timestamp_ms,
        }
    }

    fn values(actions: &[Message]) -> Vec<String> {
        actions
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    #[test]
    fn values_wait_for_the_announcement_which_the_replay_does_not_repeat() {
        let config = Arc::new(Config::from_toml(Path::new("t.toml"), CONFIG).unwrap());
        let mut cache = LastValues::new(&config);
        let mut node = PlainNode::new(config);
        let stored = [sample(5, 1), sample(7, 2)];
        let online = DeviceEvent::Online {
            device: 0,
            samples: stored.to_vec(),
            identity: None,
        };
        cache.apply(&online);
        node.connected();
        assert!(!node.ready());
        assert!(
            node.event(&online).is_empty(),
            "nothing before the announcement"
        );
        let announced = node.subscribed(&cache);
        assert!(node.ready());
        assert!(
            announced
                .iter()
                .any(|a| matches!(a, Action::Publish(m) if m.topic == "g/n/d/level")),
            "the newest value is announced"
        );
        assert_eq!(
            values(&node.history(&stored)),
            vec![r#"{"quality":"good","ts":1,"value":5}"#],
            "value 7 of time 2 went out with the announcement"
        );
        node.disconnected();
        assert!(!node.ready());
    }
}
