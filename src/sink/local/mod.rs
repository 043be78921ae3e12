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
use crate::ops::metrics::{self, Counters};
use crate::profile::action::Action;
use crate::profile::{NodeProfile, Role};
use crate::sink::local::broker::{BrokerError, LocalBroker, LocalCommand};
use crate::sink::node::{Backlog, NodeState, Outgoing};
use crate::store::bdseq::BdSeqStore;

/// How often what is due by the clock (a folded rebirth) is looked at.
const CLOCK_TICK: Duration = Duration::from_millis(100);

/// The feed and the broker it publishes into.
#[derive(Debug)]
pub struct LocalFeed {
    node: NodeState,
    broker: LocalBroker,
    commands: mpsc::Receiver<LocalCommand>,
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
        let mut profile = NodeProfile::new(
            Arc::clone(&config),
            config.broker.profile,
            Role::LocalBroker,
        );
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
            node: NodeState::new(config, profile, writes, stats, "local"),
            broker,
            commands,
            pulse,
        };
        let outgoing = feed.node.subscribed(Backlog::default());
        feed.send(outgoing).await;
        Ok(feed)
    }

    /// Who is connected to the broker now; see [`LocalBroker::presence`].
    pub fn presence(
        &self,
    ) -> impl Fn() -> Vec<(broker::sessions::Login, usize)> + Send + Sync + 'static {
        self.broker.presence()
    }

    /// The status page's logins; see [`LocalBroker::http_login`].
    pub fn http_login(&self) -> broker::http_login::HttpLogin {
        self.broker.http_login()
    }

    /// Runs until `shutdown` or until the bus tasks are gone.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<DeviceEvent<Config>>,
        shutdown: CancellationToken,
    ) {
        let period = self
            .node
            .config
            .node
            .stats_interval
            .max(Duration::from_secs(1));
        let mut stats_tick = tokio::time::interval(period);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut clock_tick = tokio::time::interval(CLOCK_TICK);
        clock_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            self.pulse.within(period);
            let outgoing = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                // A local client's command is always live: the broker hands
                // over publishes, never stored messages.
                Some(command) = self.commands.recv() => {
                    self.node.message(&command.topic, &command.payload, false, Backlog::default())
                }
                event = events.recv() => match event {
                    Some(event) => {
                        if let DeviceEvent::Reconfigured(map) = &event
                            && map.0.broker != self.node.config.broker
                        {
                            self.broker.reload_access(&map.0.broker).await;
                            tracing::info!("reload: local broker users and ACLs in force");
                        }
                        self.node.event(&event)
                    }
                    None => break,
                },
                _ = stats_tick.tick() => self.node.stats(Backlog::default()),
                _ = clock_tick.tick() => self.node.tick(Backlog::default()),
            };
            self.send(outgoing).await;
        }
        let outgoing = self.node.farewell();
        self.send(outgoing).await;
        self.broker.stop().await;
    }

    async fn send(&mut self, outgoing: Vec<Outgoing>) {
        for out in outgoing {
            match out {
                Outgoing::Publish(message) => {
                    if self.broker.publish(message).await {
                        metrics::published("local");
                    }
                }
                // Commands are picked out by the broker's ACL hook: a
                // subscription (at start, or new /set topics after a reload)
                // tells it which topics are commands.
                Outgoing::Subscribe(filters) => {
                    self.broker
                        .add_command_filters(filters.into_iter().map(|(f, _)| f));
                }
                // The local broker has no primary host to leave.
                Outgoing::LeaveServer => {}
            }
        }
    }
}
