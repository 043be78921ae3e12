//! The task between the bus tasks and the upstream MQTT server: keeps the
//! last values, lets the profile turn events into messages, publishes them,
//! and routes incoming commands to the bus tasks as writes.
//!
//! It never waits on the uplink: messages are handed to rumqttc's bounded
//! queue with `try_publish`, so a slow or dead uplink never slows polling
//! down. Samples that cannot go out (disconnected, not born, waiting for the
//! primary host, queue full) go to the store-and-forward queue
//! ([`crate::store::forward`]) and are drained, paced, once the profile is ready.

pub mod connection;
pub mod options;
pub mod receipts;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, SubscribeFilter};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::acquire::router::WriteRouter;
use crate::config::Config;
use crate::core::event::{DeviceEvent, MapVersion};
use crate::core::message::Message;
use crate::ops::liveness::Pulse;
use crate::ops::metrics::{self, Counters};
use crate::profile::{NodeProfile, Role};
use crate::sink::node::{Backlog, NodeState, Outgoing};
use crate::sink::pem::TlsError;
use crate::sink::uplink::connection::{Connection, ConnectionEvent, Greeting, Pacing, qos};
use crate::sink::uplink::options::{mqtt_options, tls_config};
use crate::store::bdseq::BdSeqStore;
use crate::store::forward::{DeviceKeys, Forwarder};

/// Connection events waiting for the uplink.
const LINK_QUEUE: usize = 64;
/// How long a stopping gateway waits for its farewell to reach the server.
const FAREWELL_GRACE: Duration = Duration::from_secs(3);
/// How often the backlog drain runs; `[buffer] drain_rate` is spread over these ticks.
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// Why the uplink could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config has no `[upstream]`.
    #[error("no [upstream] in the config")]
    NoUpstream,
    /// The TLS files could not be used.
    #[error("[upstream] TLS: {0}")]
    Tls(#[from] TlsError),
}

/// The uplink as the status page shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkReport {
    /// Connected to a server.
    pub connected: bool,
    /// The server connected to, as configured.
    pub server: Option<String>,
    /// Serving its purpose: connected and, for Sparkplug, born (with a
    /// primary host, while that host is online).
    pub born: bool,
    /// Sparkplug bdSeq of the current or last connection.
    pub bd_seq: Option<u64>,
    /// The primary host followed and whether it is online.
    pub primary_host: Option<(String, bool)>,
    /// Samples waiting in the store-and-forward queue.
    pub backlog: u64,
    /// Samples the queue lost since start.
    pub dropped: u64,
    /// Samples sent from the queue since start.
    pub drained: u64,
    /// The queue could be opened.
    pub queue_usable: bool,
}

/// The uplink: the node as upstream sees it, its connection task and the queue in front.
#[derive(Debug)]
pub struct Uplink {
    node: NodeState,
    outbox: Outbox,
    link: mpsc::Receiver<ConnectionEvent>,
    connection: JoinHandle<()>,
    stop_connection: CancellationToken,
    connected: bool,
    confirm_interval: Duration,
    /// Plain profile: how long a value may go unpublished.
    republish: Option<Duration>,
    stats: Arc<Counters>,
    forwarder: Forwarder,
    pulse: Pulse,
    /// Samples dropped as last logged.
    dropped_logged: u64,
    /// Messages refused by a full uplink queue since last logged.
    queue_full_unlogged: u64,
    /// What the status page is told; nothing is built while nobody follows it.
    report: watch::Sender<UplinkReport>,
    /// The server and epoch of the current or last connection.
    session: Option<(String, u64)>,
    /// Samples sent from the queue since start.
    drained: u64,
}

impl Uplink {
    /// Builds the profile and starts the connection to `[upstream]`.
    /// Fails only on what the config check could not see (TLS files that do not parse).
    pub fn start(
        config: Arc<Config>,
        writes: WriteRouter,
        stats: Arc<Counters>,
        pulse: Pulse,
    ) -> Result<Uplink, StartError> {
        let upstream = config.upstream.as_ref().ok_or(StartError::NoUpstream)?;
        let tls = tls_config(upstream)?;
        let servers = upstream
            .servers
            .iter()
            .map(|s| (s.url.clone(), mqtt_options(upstream, s, tls.as_ref())))
            .collect();
        let profile = NodeProfile::new(Arc::clone(&config), upstream.profile, Role::Uplink);
        let greeting = Greeting {
            epochs: profile
                .needs_epoch()
                .then(|| BdSeqStore::new(&config.node.data_dir)),
            will: {
                let (node, kind) = (config.node.clone(), upstream.profile);
                Box::new(move |epoch| NodeProfile::will_of(&node, kind, epoch))
            },
        };
        let dir = config.node.data_dir.join("buffer");
        let opened = crate::ops::blocking::file_work(|| {
            Forwarder::open(&dir, &config.buffer, DeviceKeys::of(&config))
        });
        let forwarder = match opened {
            Ok(forwarder) => forwarder,
            Err(e) => {
                // Polling and the local broker matter more than the backlog.
                tracing::error!(error = %e, "store-and-forward queue cannot be opened; running without it: values that cannot go out now are dropped and counted");
                Forwarder::unavailable(DeviceKeys::of(&config))
            }
        };
        stats.queue_unavailable.store(
            forwarder.is_unavailable(),
            std::sync::atomic::Ordering::Relaxed,
        );
        metrics::queue_state(
            forwarder.backlog(),
            forwarder.dropped(),
            !forwarder.is_unavailable(),
        );
        if forwarder.backlog() > 0 {
            tracing::info!(
                samples = forwarder.backlog(),
                "store-and-forward queue holds a backlog from before the restart"
            );
        }
        let (link_tx, link) = mpsc::channel(LINK_QUEUE);
        let stop_connection = CancellationToken::new();
        let (client, connection) = Connection::new(
            servers,
            Pacing {
                max_backoff: upstream.max_backoff,
                jitter: upstream.connect_jitter,
            },
            greeting,
            link_tx,
            stop_connection.clone(),
        )
        .ok_or(StartError::NoUpstream)?;
        Ok(Uplink {
            outbox: Outbox {
                client,
                stats: Arc::clone(&stats),
                max_packet_size: upstream.max_packet_size,
                handed: 0,
                proven: 0,
            },
            confirm_interval: upstream.confirm_interval,
            republish: upstream.republish,
            node: NodeState::new(config, profile, writes, Arc::clone(&stats), "upstream"),
            link,
            connection: tokio::spawn(connection.run()),
            stop_connection,
            connected: false,
            stats,
            forwarder,
            pulse,
            dropped_logged: 0,
            queue_full_unlogged: 0,
            report: watch::channel(UplinkReport::default()).0,
            session: None,
            drained: 0,
        })
    }

    /// Follows the uplink's state, for the status page.
    pub fn report(&self) -> watch::Receiver<UplinkReport> {
        self.report.subscribe()
    }

    /// Tells the status page, if one follows, what changed.
    fn refresh_report(&mut self) {
        if self.report.receiver_count() == 0 {
            return;
        }
        let profile = &self.node.profile;
        let report = UplinkReport {
            connected: self.connected,
            server: self.session.as_ref().map(|(server, _)| server.clone()),
            born: self.connected && profile.online(),
            bd_seq: self
                .session
                .as_ref()
                .filter(|_| profile.needs_epoch())
                .map(|(_, epoch)| *epoch),
            primary_host: profile
                .primary_host()
                .map(|(id, online)| (id.to_owned(), online)),
            backlog: self.forwarder.backlog(),
            dropped: self.forwarder.dropped(),
            drained: self.drained,
            queue_usable: !self.forwarder.is_unavailable(),
        };
        self.report.send_if_modified(|now| {
            let changed = *now != report;
            *now = report;
            changed
        });
    }

    /// Runs until `shutdown` or until the bus tasks are gone, then says
    /// goodbye (NDEATH or OFFLINE) and disconnects.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<DeviceEvent<Config>>,
        shutdown: CancellationToken,
    ) {
        let mut stats_tick = tokio::time::interval(self.node.config.node.stats_interval);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut drain_tick = tokio::time::interval(DRAIN_TICK);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sync_tick = tokio::time::interval(self.node.config.buffer.sync);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut confirm_tick = tokio::time::interval(self.confirm_interval);
        confirm_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Checked ten times a period (100 ms..1 min): a value is republished
        // at most a tenth of its period late.
        let republish_every = self.republish.map_or(Duration::from_secs(60), |p| {
            (p / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
        });
        let mut republish_tick = tokio::time::interval(republish_every);
        republish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            // The drain tick turns this loop at least that often.
            self.pulse.within(DRAIN_TICK);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(link) = self.link.recv() => self.link_event(link),
                event = events.recv() => match event {
                    Some(DeviceEvent::Reconfigured(map)) => self.reconfigure(&map.0),
                    Some(event) => {
                        let outgoing = self.node.event(&event);
                        let published = self.send(outgoing);
                        self.keep(&event, published);
                        // A host that wrote wants to see a failed write without waiting for the next tick.
                        if matches!(event, DeviceEvent::Written { .. }) {
                            let outgoing = self.node.stats(self.backlog());
                            self.send(outgoing);
                        }
                    }
                    None => break,
                },
                _ = stats_tick.tick() => {
                    let outgoing = self.node.stats(self.backlog());
                    self.send(outgoing);
                }
                _ = drain_tick.tick() => {
                    let outgoing = self.node.tick(self.backlog());
                    self.send(outgoing);
                    self.drain();
                    self.refresh_report();
                }
                _ = confirm_tick.tick(), if self.connected => self.outbox.ask_for_proof(),
                _ = republish_tick.tick(), if self.connected && self.republish.is_some() => self.republish(),
                _ = sync_tick.tick() => {
                    self.forwarder.sync_behind();
                    self.log_drops();
                    metrics::queue_state(
                        self.forwarder.backlog(),
                        self.forwarder.dropped(),
                        !self.forwarder.is_unavailable(),
                    );
                }
            }
        }
        self.farewell().await;
    }

    /// A reload put `config` in force: what is known about unchanged devices
    /// carries over, the profile announces what changed, and stored batches
    /// are read back by the new map's device keys.
    fn reconfigure(&mut self, config: &Arc<Config>) {
        self.forwarder.remap(DeviceKeys::of(config));
        let outgoing = self
            .node
            .event(&DeviceEvent::Reconfigured(MapVersion(Arc::clone(config))));
        self.send(outgoing);
        self.forwarder.readiness_changed();
    }

    /// Samples of `event` that went out are kept for a replay; those that
    /// did not (not ready, or the uplink queue was full) wait on disk.
    fn keep(&mut self, event: &DeviceEvent<Config>, published: bool) {
        let (DeviceEvent::Samples { device, samples }
        | DeviceEvent::Online {
            device, samples, ..
        }) = event
        else {
            return;
        };
        if published && self.connected && self.node.profile.ready(*device) {
            // The event's messages were the last handed over.
            self.forwarder
                .sent_live(*device, samples, self.outbox.handed);
        } else {
            self.forwarder.store(*device, samples);
        }
    }

    /// Publishes again what has not changed for `[upstream] republish`.
    fn republish(&mut self) {
        let Some(period) = self.republish else {
            return;
        };
        // Before the announcement the profile publishes nothing; the
        // announcement itself sends every value.
        let outgoing = self.node.republish(period, crate::core::value::now_ms());
        self.send(outgoing);
    }

    /// Sends the next slice of the backlog, if the profile is ready for it.
    fn drain(&mut self) {
        if !self.connected || !(self.forwarder.has_backlog() || self.forwarder.is_stalled()) {
            return;
        }
        let per_tick =
            (self.node.config.buffer.drain_rate as u128 * DRAIN_TICK.as_millis() / 1000).max(1);
        let ready: Vec<bool> = (0..self.node.config.devices.len())
            .map(|d| self.node.profile.ready(d))
            .collect();
        let (profile, outbox) = (&mut self.node.profile, &mut self.outbox);
        let (forwarder, drained) = (&mut self.forwarder, &mut self.drained);
        crate::ops::blocking::file_work(|| {
            forwarder.drain(
                per_tick as usize,
                |device| ready.get(device).copied().unwrap_or(false),
                |device, samples| {
                    for message in profile.history(device, samples) {
                        // An oversized batch is dropped (and counted); a full queue ends this tick.
                        if let Err(Unsent::QueueFull) = outbox.publish(message) {
                            return None;
                        }
                    }
                    *drained += samples.len() as u64;
                    Some(outbox.handed)
                },
            )
        });
    }

    fn log_drops(&mut self) {
        if self.queue_full_unlogged > 0 {
            tracing::warn!(
                messages = self.queue_full_unlogged,
                "uplink queue was full: messages not sent (their samples are queued on disk)"
            );
            self.queue_full_unlogged = 0;
        }
        let dropped = self.forwarder.dropped();
        if dropped > self.dropped_logged {
            tracing::warn!(
                samples = dropped - self.dropped_logged,
                total = dropped,
                "store-and-forward queue full: samples dropped"
            );
            self.dropped_logged = dropped;
        }
    }

    async fn farewell(mut self) {
        crate::ops::blocking::file_work(|| self.forwarder.sync());
        self.stop_connection.cancel();
        if self.connected {
            let outgoing = self.node.farewell();
            self.send(outgoing);
            // Must follow the farewell: under MQTT 3.1.1 a clean DISCONNECT discards the will.
            if let Err(e) = self.outbox.client.try_disconnect() {
                tracing::warn!(error = %e, "cannot send DISCONNECT");
            }
        }
        let mut connection = self.connection;
        tokio::select! {
            _ = &mut connection => {}
            () = tokio::time::sleep(FAREWELL_GRACE) => {
                tracing::warn!("upstream did not take the farewell in time; closing");
                connection.abort();
            }
            // Keep acknowledging link events so the connection task can finish.
            () = drain(&mut self.link) => {}
        }
    }

    fn backlog(&self) -> Backlog {
        Backlog {
            buffered: self.forwarder.backlog(),
            dropped: self.forwarder.dropped(),
        }
    }

    fn link_event(&mut self, event: ConnectionEvent) {
        match event {
            ConnectionEvent::Connected { epoch, server } => {
                self.connected = true;
                self.session = Some((server, epoch));
                self.outbox.handed = 0;
                self.outbox.proven = 0;
                let actions = self.node.profile.connected(epoch);
                let outgoing = self.node.settle(actions);
                self.send(outgoing);
            }
            ConnectionEvent::Confirmed { upto } => {
                self.outbox.proven = upto;
                self.forwarder.confirmed(upto);
            }
            ConnectionEvent::Subscribed { refused } => {
                if refused > 0 {
                    tracing::warn!(
                        refused,
                        "the server refused subscriptions; commands will not arrive"
                    );
                }
                let outgoing = self.node.subscribed(self.backlog());
                self.send(outgoing);
                self.forwarder.readiness_changed();
            }
            ConnectionEvent::Message {
                topic,
                payload,
                retained,
            } => {
                let outgoing = self
                    .node
                    .message(&topic, &payload, retained, self.backlog());
                self.send(outgoing);
                let outgoing = self.node.stats(self.backlog());
                self.send(outgoing);
            }
            ConnectionEvent::Disconnected { reason, ack } => {
                tracing::debug!(%reason, "uplink paused");
                if self.connected {
                    self.forwarder.link_lost();
                }
                self.connected = false;
                self.node.profile.disconnected();
                drop(ack);
            }
        }
        let up = self.connected && self.node.profile.online();
        self.node.uplink(up);
        metrics::uplink_up(up);
        self.refresh_report();
    }

    /// Carries out what only the uplink can; false when a message could not be published.
    fn send(&mut self, outgoing: Vec<Outgoing>) -> bool {
        let mut all_published = true;
        let mut queue = VecDeque::from(outgoing);
        while let Some(out) = queue.pop_front() {
            match out {
                Outgoing::Publish(_) if !self.connected => all_published = false,
                Outgoing::Publish(message) => match self.outbox.publish(message) {
                    Ok(()) => {}
                    Err(Unsent::TooLarge) => all_published = false,
                    Err(Unsent::QueueFull) => {
                        Counters::bump(&self.stats.messages_dropped);
                        // One line when it starts, then a count per sync period
                        // (log_drops): a burst of thousands must not flood the journal.
                        if self.queue_full_unlogged == 0 {
                            tracing::warn!(
                                "uplink queue full; messages are not sent (their samples are queued on disk)"
                            );
                        }
                        self.queue_full_unlogged += 1;
                        all_published = false;
                    }
                },
                Outgoing::Subscribe(filters) if filters.is_empty() => {
                    queue.extend(self.node.subscribed(self.backlog()));
                }
                Outgoing::Subscribe(filters) => {
                    let filters = filters
                        .into_iter()
                        .map(|(path, q)| SubscribeFilter::new(path, qos(q)));
                    if let Err(e) = self.outbox.client.try_subscribe_many(filters) {
                        tracing::error!(error = %e, "cannot subscribe; commands will not arrive");
                    }
                }
                Outgoing::LeaveServer => {
                    if let Err(e) = self.outbox.client.try_disconnect() {
                        tracing::warn!(error = %e, "cannot send DISCONNECT");
                    }
                }
            }
        }
        all_published
    }
}

/// Why a message did not go out.
enum Unsent {
    /// Larger than `[upstream] max_packet_size`: rumqttc would fail the whole
    /// connection on it, so it is dropped and counted instead.
    TooLarge,
    /// rumqttc's request queue is full: the uplink is slower than the devices.
    QueueFull,
}

/// The client handle, and the messages handed to it on this connection,
/// numbered from 1 as [`receipts::Receipts`] counts them.
#[derive(Debug)]
struct Outbox {
    client: AsyncClient,
    stats: Arc<Counters>,
    max_packet_size: usize,
    /// The number of the last message handed over.
    handed: u64,
    /// The number of the last message proven received.
    proven: u64,
}

impl Outbox {
    /// Hands `message` to the connection without waiting, for live values
    /// and the backlog alike. An oversized message is dropped and counted
    /// here; a full queue is the caller's to judge (a stored batch stays on disk).
    fn publish(&mut self, message: Message) -> Result<(), Unsent> {
        if message.wire_size() > self.max_packet_size {
            Counters::bump(&self.stats.messages_dropped);
            tracing::error!(
                topic = %message.topic,
                bytes = message.wire_size(),
                max_packet_size = self.max_packet_size,
                "message larger than [upstream] max_packet_size; not sent"
            );
            return Err(Unsent::TooLarge);
        }
        let Message {
            topic,
            payload,
            qos: q,
            retain,
        } = message;
        if self
            .client
            .try_publish(topic, qos(q), retain, payload)
            .is_err()
        {
            return Err(Unsent::QueueFull);
        }
        self.handed += 1;
        metrics::published("upstream");
        Ok(())
    }

    /// While messages wait for proof, a PINGREQ behind them asks for it.
    /// rumqttc (patched, see vendor/README.md) skips it while an earlier one
    /// is unanswered, so a slow server gets at most one at a time.
    fn ask_for_proof(&mut self) {
        if self.handed > self.proven && self.client.try_ping().is_err() {
            tracing::debug!("uplink queue full; delivery proof asked for later");
        }
    }
}

async fn drain(link: &mut mpsc::Receiver<ConnectionEvent>) {
    while link.recv().await.is_some() {}
    std::future::pending::<()>().await;
}
