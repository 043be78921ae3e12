//! What the uplink and the local feed keep and do alike: the device map in
//! force, the last values, the profile, and the way back for commands.
//!
//! Each sink owns a [`NodeState`] and feeds it what happens (device events,
//! incoming commands, the stats tick); the state answers with the actions
//! only that sink can carry out ([`Outgoing`]), having already routed the
//! writes and counted the refusals, which every sink does the same way.

use std::sync::Arc;

use crate::acquire::router::WriteRouter;
use crate::config::Config;
use crate::core::event::DeviceEvent;
use crate::core::message::{Message, Qos};
use crate::ops::metrics::Counters;
use crate::profile::NodeProfile;
use crate::profile::action::{Action, NodeStats};
use crate::profile::last_values::LastValues;

/// What only the sink itself can do with a profile's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Publish a message.
    Publish(Message),
    /// Subscribe to these filters (empty: nothing to subscribe, go on as subscribed).
    Subscribe(Vec<(String, Qos)>),
    /// Leave this server and continue with the next one.
    LeaveServer,
}

/// The store-and-forward figures a sink adds to the node's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Samples waiting in the queue.
    pub buffered: u64,
    /// Samples the queue lost since start.
    pub dropped: u64,
}

/// The node as one sink presents it.
#[derive(Debug)]
pub struct NodeState {
    /// The device map in force.
    pub config: Arc<Config>,
    /// The profile speaking for the node.
    pub profile: NodeProfile,
    /// Every metric's last value and each device's state.
    pub cache: LastValues,
    writes: WriteRouter,
    counters: Arc<Counters>,
    /// Names the sink in logs ("command refused", "local command refused").
    sink: &'static str,
}

impl NodeState {
    /// The node for `config`, speaking `profile`, sending writes through `writes`.
    pub fn new(
        config: Arc<Config>,
        profile: NodeProfile,
        writes: WriteRouter,
        counters: Arc<Counters>,
        sink: &'static str,
    ) -> NodeState {
        NodeState {
            cache: LastValues::new(&config),
            config,
            profile,
            writes,
            counters,
            sink,
        }
    }

    /// A device event, or a reload's new map (what is known about unchanged
    /// devices carries over, and the profile announces what changed).
    pub fn event(&mut self, event: &DeviceEvent<Config>) -> Vec<Outgoing> {
        let actions = match event {
            DeviceEvent::Reconfigured(map) => {
                let config = Arc::clone(&map.0);
                self.cache.reconfigure(&self.config, &config);
                let actions = self.profile.reconfigure(Arc::clone(&config), &self.cache);
                self.config = config;
                actions
            }
            event => {
                self.cache.apply(event);
                self.profile.event(event, &self.cache)
            }
        };
        self.settle(actions)
    }

    /// A message on a command topic.
    pub fn message(
        &mut self,
        topic: &str,
        payload: &[u8],
        retained: bool,
        backlog: Backlog,
    ) -> Vec<Outgoing> {
        let stats = self.stats_now(backlog);
        let actions = self
            .profile
            .message(topic, payload, retained, &self.cache, stats);
        self.settle(actions)
    }

    /// The subscriptions are in place: births (or their plain equivalent).
    pub fn subscribed(&mut self, backlog: Backlog) -> Vec<Outgoing> {
        let stats = self.stats_now(backlog);
        let actions = self.profile.subscribed(&self.cache, stats);
        self.settle(actions)
    }

    /// What the profile has due by the clock (folded rebirth requests).
    pub fn tick(&mut self, backlog: Backlog) -> Vec<Outgoing> {
        let stats = self.stats_now(backlog);
        let actions = self.profile.tick(&self.cache, stats);
        self.settle(actions)
    }

    /// The node's figures, as the stats tick reports them.
    pub fn stats(&mut self, backlog: Backlog) -> Vec<Outgoing> {
        let stats = self.stats_now(backlog);
        let actions = self.profile.stats(stats);
        self.settle(actions)
    }

    /// Values unchanged for `period` or longer on online devices, reported
    /// again as of `now_ms` (the device still answers with them), through
    /// the profile like any report; the cache then counts from now.
    pub fn republish(&mut self, period: std::time::Duration, now_ms: u64) -> Vec<Outgoing> {
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        let mut actions = Vec::new();
        for device in 0..self.config.devices.len() {
            if !self.cache.is_online(device) {
                continue;
            }
            let samples: Vec<_> = self
                .cache
                .snapshot(device)
                .into_iter()
                .filter(|s| now_ms.saturating_sub(s.timestamp_ms) >= period_ms)
                .map(|s| crate::core::value::Sample {
                    timestamp_ms: now_ms,
                    ..s
                })
                .collect();
            if samples.is_empty() {
                continue;
            }
            let event = DeviceEvent::Samples { device, samples };
            self.cache.apply(&event);
            actions.extend(self.profile.event(&event, &self.cache));
        }
        self.settle(actions)
    }

    /// The goodbye before the sink closes.
    pub fn farewell(&mut self) -> Vec<Outgoing> {
        let actions = self.profile.farewell();
        self.settle(actions)
    }

    /// Tells the sources whether the uplink is up (connected, and born with
    /// the primary host online): GPIO outputs fall back to safe without it.
    pub fn uplink(&self, up: bool) {
        self.writes.uplink(up);
    }

    /// Carries out what every sink does alike (writes to the router,
    /// refusals counted and logged) and hands back the rest, in order.
    pub fn settle(&mut self, actions: Vec<Action>) -> Vec<Outgoing> {
        let mut outgoing = Vec::with_capacity(actions.len());
        for action in actions {
            match action {
                Action::Publish(message) => outgoing.push(Outgoing::Publish(message)),
                Action::Subscribe(filters) => outgoing.push(Outgoing::Subscribe(filters)),
                Action::LeaveServer => outgoing.push(Outgoing::LeaveServer),
                Action::Write(write) => {
                    if let Err(rejection) = self.writes.send(write, &self.config) {
                        self.refused(&rejection);
                    }
                }
                Action::Reject(rejection) => self.refused(&rejection),
            }
        }
        outgoing
    }

    fn refused(&self, rejection: &crate::core::write::Rejection) {
        Counters::add(&self.counters.commands_rejected, rejection.count());
        tracing::warn!(sink = self.sink, %rejection, "command refused; nothing written");
    }

    fn stats_now(&self, backlog: Backlog) -> NodeStats {
        NodeStats {
            counters: self.counters.snapshot(),
            devices_online: self.cache.online_count() as u64,
            samples_buffered: backlog.buffered,
            samples_dropped: backlog.dropped,
        }
    }
}
