//! The local feed: fieldmq's data into the embedded broker, in the profile
//! `[broker] profile` names (plain by default), whether or not the uplink is
//! up; and commands that local clients may send, back through the write
//! router like those from upstream.

pub mod broker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::acquire::router::WriteRouter;
use crate::config::Config;
use crate::core::event::DeviceEvent;
use crate::ops::liveness::Pulse;
use crate::ops::metrics;
use crate::ops::metrics::Counters;
use crate::profile::NodeProfile;
use crate::profile::action::{Action, NodeStats};
use crate::profile::last_values::LastValues;
use crate::sink::local::broker::{BrokerError, LocalBroker, LocalCommand};
use crate::store::bdseq::BdSeqStore;

/// The feed and the broker it publishes into.
#[derive(Debug)]
pub struct LocalFeed {
    config: Arc<Config>,
    profile: NodeProfile,
    cache: LastValues,
    broker: LocalBroker,
    commands: mpsc::Receiver<LocalCommand>,
    writes: WriteRouter,
    stats: Arc<Counters>,
    pulse: Pulse,
}

impl LocalFeed {
    /// Starts the broker of `[broker]` and announces the node in it.
    pub async fn start(
        config: Arc<Config>,
        writes: WriteRouter,
        stats: Arc<Counters>,
        pulse: Pulse,
    ) -> Result<LocalFeed, BrokerError> {
        let mut profile = NodeProfile::new(Arc::clone(&config), config.broker.profile, None);
        // The local broker lives and dies with the process: one session per
        // start, with its own bdSeq so local Sparkplug hosts see each restart.
        let epoch = if profile.needs_epoch() {
            BdSeqStore::new(&config.node.data_dir.join("broker"))
                .next_for_connect()
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "local broker: cannot keep a bdSeq; using 0");
                    0
                })
        } else {
            0
        };
        let command_filters = profile
            .connected(epoch)
            .into_iter()
            .flat_map(|a| match a {
                Action::Subscribe(filters) => filters.into_iter().map(|(f, _)| f).collect(),
                _ => Vec::new(),
            })
            .collect();
        let (broker, commands) =
            LocalBroker::start(&config.broker, command_filters, Arc::clone(&stats)).await?;
        tracing::info!(listen = %config.broker.listen, "local broker listening");
        let mut feed = LocalFeed {
            cache: LastValues::new(&config),
            config,
            profile,
            broker,
            commands,
            writes,
            stats,
            pulse,
        };
        let actions = feed.profile.subscribed(&feed.cache, feed.node_stats());
        feed.execute(actions).await;
        Ok(feed)
    }

    /// Runs until `shutdown` or until the bus tasks are gone.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<DeviceEvent<Config>>,
        shutdown: CancellationToken,
    ) {
        let period = self.config.node.stats_interval.max(Duration::from_secs(1));
        let mut stats_tick = tokio::time::interval(period);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            self.pulse.within(period);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => {
                    // A local client's command is always live: the broker
                    // hands over publishes, never stored messages.
                    let actions = self.profile.message(&command.topic, &command.payload, false, &self.cache, self.node_stats());
                    self.execute(actions).await;
                }
                event = events.recv() => match event {
                    Some(DeviceEvent::Reconfigured(map)) => {
                        let config = map.0;
                        if config.broker != self.config.broker {
                            self.broker.reload_access(&config.broker).await;
                            tracing::info!("reload: local broker users and ACLs in force");
                        }
                        self.cache.reconfigure(&self.config, &config);
                        let actions = self.profile.reconfigure(Arc::clone(&config), &self.cache);
                        self.config = config;
                        self.execute(actions).await;
                    }
                    Some(event) => {
                        self.cache.apply(&event);
                        let actions = self.profile.event(&event, &self.cache);
                        self.execute(actions).await;
                    }
                    None => break,
                },
                _ = stats_tick.tick() => {
                    let actions = self.profile.stats(self.node_stats());
                    self.execute(actions).await;
                }
            }
        }
        let actions = self.profile.farewell();
        self.execute(actions).await;
        self.broker.stop().await;
    }

    fn node_stats(&self) -> NodeStats {
        NodeStats {
            counters: self.stats.snapshot(),
            devices_online: self.cache.online_count() as u64,
            ..NodeStats::default()
        }
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Publish(message) => {
                    if self.broker.publish(message).await {
                        metrics::published("local");
                    }
                }
                Action::Write(write) => {
                    if let Err(rejection) = self.writes.send(write, &self.config) {
                        Counters::bump(&self.stats.commands_rejected);
                        tracing::warn!(%rejection, "local command refused; nothing written");
                    }
                }
                Action::Reject(rejection) => {
                    Counters::add(&self.stats.commands_rejected, rejection.count());
                    tracing::warn!(%rejection, "local command refused; nothing written");
                }
                // Commands are picked out by the broker's ACL hook: a
                // subscription (at start, or new /set topics after a reload)
                // tells it which topics are commands.
                Action::Subscribe(filters) => {
                    self.broker
                        .add_command_filters(filters.into_iter().map(|(f, _)| f));
                }
                // The local broker has no primary host to leave.
                Action::LeaveServer => {}
            }
        }
    }
}
