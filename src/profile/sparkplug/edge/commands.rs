//! What arrives for the edge node: NCMD and DCMD (node controls, writes)
//! and the primary host's STATE. Pure, like the rest of the session.

use prost::Message as _;

use crate::core::value::{MetricId, now_ms};
use crate::core::write::Rejection;
use crate::profile::action::{Action, NodeStats};
use crate::profile::command;
use crate::profile::last_values::LastValues;
use crate::profile::sparkplug::compression;
use crate::profile::sparkplug::host::HostChange;
use crate::profile::sparkplug::payload::{NEXT_SERVER, REBIRTH, datatype_of, value_from_field};
use crate::profile::sparkplug::proto::Payload;
use crate::profile::sparkplug::proto::payload::{Metric, metric};
use crate::profile::sparkplug::topic::{MessageType, Topic, legacy_state_topic, state_topic};

use super::{EdgeNode, NODE_STATS, Role};

impl EdgeNode {
    /// An incoming NCMD, DCMD or STATE.
    pub fn message(
        &mut self,
        topic: &str,
        payload: &[u8],
        retained: bool,
        cache: &LastValues,
        stats: NodeStats,
    ) -> Vec<Action> {
        if let Some(host) = &mut self.host {
            let change = if topic == state_topic(&host.id) {
                Some(host.state.observe(payload))
            } else if host.legacy && topic == legacy_state_topic(&host.id) {
                Some(host.state.observe_legacy(payload))
            } else {
                None
            };
            if let Some(change) = change {
                return self.host_change(change, cache, stats);
            }
        }
        let node = &self.config.node;
        let Some(parsed) = Topic::parse(topic)
            .filter(|t| t.group_id == node.group_id && t.node_id == node.node_id)
        else {
            return Vec::new();
        };
        if !matches!(parsed.message_type, MessageType::NCmd | MessageType::DCmd) {
            return Vec::new();
        }
        if retained {
            return vec![Action::Reject(Rejection::Retained(topic.into()))];
        }
        let command = match Payload::decode(payload) {
            Ok(command) => command,
            Err(e) => {
                return vec![Action::Reject(Rejection::Malformed(format!(
                    "{topic}: not a Sparkplug B payload ({e})"
                )))];
            }
        };
        // A compressed command may inflate to what a plain one may carry.
        let command = match compression::open(command, self.command_limit) {
            Ok(command) => command,
            Err(e) => {
                return vec![Action::Reject(Rejection::Malformed(format!(
                    "{topic}: {e}"
                )))];
            }
        };
        match (parsed.message_type, parsed.device_id) {
            (MessageType::NCmd, None) => self.node_command(&command, cache, stats),
            (MessageType::DCmd, Some(device)) => self.device_command(&device, &command),
            _ => Vec::new(),
        }
    }

    fn host_change(
        &mut self,
        change: Option<HostChange>,
        cache: &LastValues,
        stats: NodeStats,
    ) -> Vec<Action> {
        match change {
            Some(HostChange::Online) if !self.session.as_ref().is_some_and(|s| s.born) => {
                if let Some(host) = &self.host {
                    tracing::info!(host = %host.id, "primary host online");
                }
                self.births(cache, stats)
            }
            Some(HostChange::Offline) => self.host_offline(),
            _ => Vec::new(),
        }
    }

    /// Rebirths that were folded into one (see [`RebirthGate`]) and are due now.
    pub fn tick(&mut self, cache: &LastValues, stats: NodeStats) -> Vec<Action> {
        if self.online() && self.rebirths.due(now_ms()) {
            tracing::info!("rebirth (requests coalesced)");
            return self.births(cache, stats);
        }
        Vec::new()
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
        // Only the node controls are writable, but a host may echo the whole NBIRTH.
        let has = 4 + NODE_STATS.len();
        if command.metrics.len() > has {
            return vec![Action::Reject(Rejection::Oversized {
                target: "node".into(),
                carried: command.metrics.len(),
                has,
            })];
        }
        let mut actions = Vec::new();
        let (mut rebirth, mut next_server) = (false, false);
        for m in &command.metrics {
            match (m.name.as_deref(), &m.value) {
                (Some(REBIRTH), Some(metric::Value::BooleanValue(true))) => rebirth = true,
                (Some(NEXT_SERVER), Some(metric::Value::BooleanValue(true)))
                    if self.role == Role::Uplink =>
                {
                    next_server = true;
                }
                (Some(REBIRTH | NEXT_SERVER), Some(metric::Value::BooleanValue(false))) => {}
                (Some(control @ (REBIRTH | NEXT_SERVER)), _)
                    if self.role == Role::Uplink || control == REBIRTH =>
                {
                    actions.push(Action::Reject(Rejection::WrongType {
                        metric: control.into(),
                        expected: crate::core::value::DataType::Bool,
                        got: "another type".into(),
                    }));
                }
                (Some(name), _) => actions.push(Action::Reject(Rejection::ReadOnly(name.into()))),
                (None, _) => actions.push(Action::Reject(Rejection::UnknownMetric(format!(
                    "alias {}",
                    m.alias.unwrap_or_default()
                )))),
            }
        }
        // Stop sending data at once and birth again, seq from 0, same bdSeq
        // (tck-id-operational-behavior-data-commands-rebirth-action-1..3).
        let born = self.session.as_ref().is_some_and(|s| s.born);
        if next_server {
            // NDEATH first, then a clean DISCONNECT; the connection moves on
            // to the next of `urls` and births there (the rebirth asked for
            // with it, if any, is those births).
            tracing::info!("Next Server requested: leaving this server");
            actions.extend(self.farewell());
            actions.push(Action::LeaveServer);
            return actions;
        }
        if rebirth && born {
            if self.rebirths.request(now_ms()) {
                tracing::info!("rebirth requested");
                actions.extend(self.births(cache, stats));
            } else {
                tracing::debug!("rebirth requested again too soon; one rebirth will answer all");
            }
        }
        actions
    }

    fn device_command(&mut self, device_name: &str, command: &Payload) -> Vec<Action> {
        let Some((device, def)) = self.config.device_by_name(device_name) else {
            return vec![Action::Reject(Rejection::UnknownDevice(device_name.into()))];
        };
        // Each metric of the command, or each member of an instance it
        // carries, with the device metric it addresses if any.
        let mut addressed: Vec<(Option<MetricId>, &Metric)> = Vec::new();
        for m in &command.metrics {
            if let Some(members) = self
                .templates
                .as_ref()
                .and_then(|t| t.command_members(&self.config, &self.aliases, device, m))
            {
                addressed.extend(members);
                continue;
            }
            let metric = match (m.alias, m.name.as_deref()) {
                (Some(alias), _) => self.aliases.metric_of(device, alias).filter(|&i| {
                    // A member has no alias of its own: it was never announced.
                    !self
                        .templates
                        .as_ref()
                        .is_some_and(|t| t.is_member(device, i))
                }),
                (None, Some(name)) => def.metrics.iter().position(|x| x.name == name),
                (None, None) => None,
            };
            addressed.push((metric, m));
        }
        if addressed.len() > def.metrics.len() {
            return vec![Action::Reject(Rejection::Oversized {
                target: def.name.clone(),
                carried: addressed.len(),
                has: def.metrics.len(),
            })];
        }
        let mut actions = Vec::new();
        for (metric, m) in addressed {
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
