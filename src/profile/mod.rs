//! What the gateway publishes, decided by its profile: Sparkplug B or plain
//! JSON topics. A profile is pure protocol state: it is told what happened
//! (connected, a device event, an incoming message) and answers with
//! [`Action`]s for the publisher to carry out; it never does I/O itself.

pub mod action;
pub mod announced;
pub mod command;
pub mod last_values;
pub mod plain;
pub mod sparkplug;

use std::sync::Arc;

use crate::config::{Config, Node, Profile};
use crate::core::event::DeviceEvent;
use crate::core::message::Message;
use crate::core::value::{DeviceId, Sample};
use crate::core::write::Rejection;
use crate::profile::action::{Action, NodeStats};
use crate::profile::last_values::LastValues;
use crate::profile::plain::PlainNode;
use crate::profile::sparkplug::edge::EdgeNode;
pub use crate::profile::sparkplug::edge::Role;

/// The profile in use.
#[derive(Debug, Clone)]
pub enum NodeProfile {
    /// Sparkplug B edge node.
    Sparkplug(Box<EdgeNode>),
    /// Plain JSON topics.
    Plain(PlainNode),
}

impl NodeProfile {
    /// The profile `profile` for `config`, speaking to the server of `role`.
    pub fn new(config: Arc<Config>, profile: Profile, role: Role) -> NodeProfile {
        match profile {
            Profile::Sparkplug => NodeProfile::Sparkplug(Box::new(EdgeNode::new(config, role))),
            Profile::Plain => NodeProfile::Plain(PlainNode::new(config)),
        }
    }

    /// The last will of `node` speaking `profile`, for a connection whose
    /// epoch (Sparkplug: bdSeq) is `epoch`; without building the profile's
    /// tables, which a will does not need.
    pub fn will_of(node: &Node, profile: Profile, epoch: u64) -> Message {
        match profile {
            Profile::Sparkplug => crate::profile::sparkplug::edge::will(node, epoch),
            Profile::Plain => crate::profile::plain::will(node),
        }
    }

    /// What is due by the clock: Sparkplug rebirth requests that were folded into one.
    pub fn tick(&mut self, cache: &LastValues, stats: NodeStats) -> Vec<Action> {
        match self {
            NodeProfile::Sparkplug(node) => node.tick(cache, stats),
            NodeProfile::Plain(_) => Vec::new(),
        }
    }

    /// Whether a connection needs a fresh epoch (Sparkplug's bdSeq).
    pub fn needs_epoch(&self) -> bool {
        matches!(self, NodeProfile::Sparkplug(_))
    }

    /// A connection was established with the will of `epoch`.
    pub fn connected(&mut self, epoch: u64) -> Vec<Action> {
        match self {
            NodeProfile::Sparkplug(node) => node.connected(epoch),
            NodeProfile::Plain(node) => node.connected(),
        }
    }

    /// The subscriptions asked for on connecting are in place.
    pub fn subscribed(&mut self, cache: &LastValues, stats: NodeStats) -> Vec<Action> {
        match self {
            NodeProfile::Sparkplug(node) => node.subscribed(cache, stats),
            NodeProfile::Plain(node) => node.subscribed(cache),
        }
    }

    /// The connection is gone.
    pub fn disconnected(&mut self) {
        match self {
            NodeProfile::Sparkplug(node) => node.disconnected(),
            NodeProfile::Plain(node) => node.disconnected(),
        }
    }

    /// Whether the uplink serves its purpose now: connected, and for
    /// Sparkplug the node born (so with a primary host, that host online).
    pub fn online(&self) -> bool {
        match self {
            NodeProfile::Sparkplug(node) => node.online(),
            NodeProfile::Plain(node) => node.ready(),
        }
    }

    /// The Sparkplug primary host followed and whether it is online; `None`
    /// without one (and for the plain profile).
    pub fn primary_host(&self) -> Option<(&str, bool)> {
        match self {
            NodeProfile::Sparkplug(node) => node.primary_host(),
            NodeProfile::Plain(_) => None,
        }
    }

    /// Whether data of `device` may go out now (connected; Sparkplug: node
    /// and device born in this session). Otherwise it waits in the queue.
    pub fn ready(&self, device: DeviceId) -> bool {
        match self {
            NodeProfile::Sparkplug(node) => node.ready(device),
            NodeProfile::Plain(node) => node.ready(),
        }
    }

    /// Samples from the store-and-forward queue, as messages flagged historical.
    pub fn history(&mut self, device: DeviceId, samples: &[Sample]) -> Vec<Message> {
        match self {
            NodeProfile::Sparkplug(node) => node.history(device, samples),
            NodeProfile::Plain(node) => node.history(samples),
        }
    }

    /// A bus task reported `event`; `cache` already includes it.
    pub fn event(&mut self, event: &DeviceEvent<Config>, cache: &LastValues) -> Vec<Action> {
        match self {
            NodeProfile::Sparkplug(node) => node.event(event, cache),
            NodeProfile::Plain(node) => node.event(event),
        }
    }

    /// A message arrived on a subscribed topic.
    pub fn message(
        &mut self,
        topic: &str,
        payload: &[u8],
        retained: bool,
        cache: &LastValues,
        stats: NodeStats,
    ) -> Vec<Action> {
        let actions = match self {
            NodeProfile::Sparkplug(node) => node.message(topic, payload, retained, cache, stats),
            NodeProfile::Plain(node) => node.message(topic, payload, retained, cache),
        };
        // One line, and one report, per command however many metrics it held.
        let (rejections, mut actions): (Vec<_>, Vec<_>) = actions
            .into_iter()
            .partition(|a| matches!(a, Action::Reject(_)));
        let rejections = rejections.into_iter().filter_map(|a| match a {
            Action::Reject(r) => Some(r),
            _ => None,
        });
        actions.extend(Rejection::merged(rejections.collect()).map(Action::Reject));
        actions
    }

    /// A reload put `config` in force; `cache` is already carried over to it.
    pub fn reconfigure(&mut self, config: Arc<Config>, cache: &LastValues) -> Vec<Action> {
        match self {
            NodeProfile::Sparkplug(node) => node.reconfigure(config, cache),
            NodeProfile::Plain(node) => node.reconfigure(config),
        }
    }

    /// The gateway's figures now; published when they changed.
    pub fn stats(&mut self, stats: NodeStats) -> Vec<Action> {
        match self {
            NodeProfile::Sparkplug(node) => node.stats(stats),
            NodeProfile::Plain(_) => Vec::new(),
        }
    }

    /// What to publish before a deliberate disconnect, since a clean
    /// DISCONNECT makes the server discard the will.
    pub fn farewell(&mut self) -> Vec<Action> {
        match self {
            NodeProfile::Sparkplug(node) => node.farewell(),
            NodeProfile::Plain(node) => node.farewell(),
        }
    }
}
