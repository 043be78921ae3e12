//! The task that owns rumqttc's event loop: connects, reconnects forever with
//! backoff, rotates through the configured servers, and sets a fresh will
//! before every CONNECT.
//!
//! It reports what happens as [`ConnectionEvent`]s and does nothing else: what to
//! publish is the publisher's business, through the `AsyncClient` handle.
//! Two rumqttc behaviours shape it (shared rust-deps.md §4):
//! - the will lives in the options the event loop reconnects with, so it is
//!   replaced on `EventLoop::mqtt_options` before each connect; Sparkplug's
//!   will carries the bdSeq of exactly that connection;
//! - requests queued while disconnected are sent after the next CONNACK.
//!   A Sparkplug DDATA from the last session must not precede the new
//!   NBIRTH, so on a disconnect the publisher is told and must acknowledge
//!   that it stopped publishing; then the queue is drained into rumqttc's
//!   pending list, which a clean-session CONNACK empties.
//!
//! It also watches what rumqttc writes and what the server answers, and
//! reports what the server has proven it received ([`Receipts`]).

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    Request, SubscribeReasonCode,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::core::message::Message;
use crate::core::message::Qos;
use crate::ops::backoff::Backoff;
use crate::sink::uplink::receipts::Receipts;
use crate::store::bdseq::BdSeqStore;

const RECONNECT_BASE: Duration = Duration::from_millis(500);

/// What the connection tells the publisher.
#[derive(Debug)]
pub enum ConnectionEvent {
    /// CONNACK received; the will of this connection carries `epoch`.
    Connected {
        /// Sparkplug bdSeq of this connection (0 for the plain profile).
        epoch: u64,
        /// The server, as configured.
        server: String,
    },
    /// The server proved it received the first `upto` messages the uplink
    /// published on this connection.
    Confirmed {
        /// How many, counted from 1 at each `Connected`.
        upto: u64,
    },
    /// The SUBACK of the connection's subscriptions.
    Subscribed {
        /// Filters the server refused.
        refused: usize,
    },
    /// A message on a subscribed topic.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Vec<u8>,
        /// Set on a message the server stored and delivered on subscribing
        /// (a live message arrives with it clear, whatever its sender set).
        retained: bool,
    },
    /// The connection is gone. The publisher must publish nothing more
    /// until the next `Connected` and then drop `ack`.
    Disconnected {
        /// Why.
        reason: String,
        /// Dropped (or sent) once the publisher has stopped publishing.
        ack: oneshot::Sender<()>,
    },
}

/// How each connection introduces itself: its will, and for Sparkplug a
/// bdSeq taken at connect time.
pub struct Greeting {
    /// The will for a connection with this epoch.
    pub will: Box<dyn Fn(u64) -> Message + Send>,
    /// Where Sparkplug's bdSeq is kept; `None` when the profile has no epochs.
    pub epochs: Option<BdSeqStore>,
}

impl std::fmt::Debug for Greeting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Greeting")
            .field("epochs", &self.epochs)
            .finish_non_exhaustive()
    }
}

/// The uplink connection task.
pub struct Connection {
    eventloop: EventLoop,
    servers: Vec<(String, MqttOptions)>,
    current: usize,
    greeting: Greeting,
    /// The epoch the next CONNECT uses; kept across failed attempts, so only
    /// a connection the server accepted consumes one (bdSeq +1 per CONNECT).
    next_epoch: Option<u64>,
    last_epoch: Option<u64>,
    connected: bool,
    receipts: Receipts,
    backoff: Backoff,
    /// Upper bound of the random wait before the first connect and after the server dropped us.
    jitter: Duration,
    /// The publisher asked to leave the server (stopping, primary host
    /// offline, Next Server): the loss that follows is ours, not the server's.
    leaving: bool,
    events: mpsc::Sender<ConnectionEvent>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.servers.get(self.current).map(|s| &s.0))
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

/// How reconnects are spread out.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Longest wait between failed attempts (doubling from 0.5 s).
    pub max_backoff: Duration,
    /// Upper bound of the random wait before the first connect and after the server dropped the connection.
    pub jitter: Duration,
}

/// rumqttc's QoS for ours.
pub fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

impl Connection {
    /// A connection that tries `servers` (name and options, at least one) in
    /// turn. Returns the client handle to publish with.
    /// `stop` ends it: at once while disconnected, else after the publisher's
    /// DISCONNECT. Failed attempts are retried after 0.5 s, doubling up to `max_backoff`.
    pub fn new(
        servers: Vec<(String, MqttOptions)>,
        pacing: Pacing,
        greeting: Greeting,
        events: mpsc::Sender<ConnectionEvent>,
        stop: CancellationToken,
    ) -> Option<(AsyncClient, Connection)> {
        let first = servers.first()?.1.clone();
        let (client, eventloop) = AsyncClient::new(first, super::options::REQUEST_QUEUE);
        Some((
            client,
            Connection {
                eventloop,
                servers,
                current: 0,
                greeting,
                next_epoch: None,
                last_epoch: None,
                connected: false,
                receipts: Receipts::default(),
                backoff: Backoff::new(RECONNECT_BASE, pacing.max_backoff.max(RECONNECT_BASE)),
                jitter: pacing.jitter,
                leaving: false,
                events,
                stop,
            },
        ))
    }

    /// Runs until stopped, or until the publisher is gone.
    pub async fn run(mut self) {
        if !self
            .pause(self.jittered(), "before the first connect")
            .await
        {
            return;
        }
        loop {
            if self.eventloop.network.is_none() {
                self.prepare_connect();
            }
            let polled = tokio::select! {
                biased;
                polled = self.eventloop.poll() => polled,
                () = self.stop.cancelled(), if !self.connected => return,
            };
            let outcome = match polled {
                Ok(event) => self.handle(event).await,
                Err(e) => Err(describe(&e)),
            };
            let Err(reason) = outcome else { continue };
            if self.stop.is_cancelled() {
                return;
            }
            if !self.lost(reason).await {
                return;
            }
        }
    }

    /// Options of the current server with the will of the next epoch.
    fn prepare_connect(&mut self) {
        let epoch = match self.next_epoch {
            Some(epoch) => epoch,
            None => {
                let epoch = self.take_epoch();
                self.next_epoch = Some(epoch);
                epoch
            }
        };
        let will = (self.greeting.will)(epoch);
        let Some((_, options)) = self.servers.get(self.current) else {
            return;
        };
        let mut options = options.clone();
        options.set_last_will(LastWill::new(
            will.topic,
            will.payload,
            qos(will.qos),
            will.retain,
        ));
        self.eventloop.mqtt_options = options;
        // Anything queued since the last connection belongs to it; a clean
        // session CONNACK discards it, a resumed session sends it. Of the
        // publishes, only those already written (they have a packet id)
        // are MQTT's to resend (MQTT-4.4.0-1); the others the uplink
        // replays itself, and sending them here too would duplicate them.
        self.eventloop.clean();
        self.eventloop
            .pending
            .retain(|r| !matches!(r, Request::Publish(p) if p.pkid == 0));
    }

    fn take_epoch(&mut self) -> u64 {
        let Some(store) = &self.greeting.epochs else {
            return 0;
        };
        let epoch = match crate::ops::blocking::file_work(|| store.next_for_connect()) {
            Ok(epoch) => epoch,
            Err(e) => {
                // Keep publishing: a bdSeq that hosts may see repeated after
                // a restart beats a gateway that stays silent.
                let epoch = self.last_epoch.map_or(0, |e| (e + 1) % 256);
                tracing::error!(error = %e, bd_seq = epoch, "cannot persist bdSeq; continuing with an in-memory value");
                epoch
            }
        };
        self.last_epoch = Some(epoch);
        epoch
    }

    /// One event from rumqttc; `Err` when it ends the connection.
    async fn handle(&mut self, event: Event) -> Result<(), String> {
        let confirmed = match &event {
            Event::Outgoing(packet) => {
                self.receipts.outgoing(packet);
                None
            }
            Event::Incoming(packet) => self.receipts.incoming(packet),
        };
        if let Some(upto) = confirmed
            && self
                .events
                .send(ConnectionEvent::Confirmed { upto })
                .await
                .is_err()
        {
            self.stop.cancel();
        }
        let report = match event {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                // A resumed session's unacknowledged publishes go out first.
                let resent = if ack.session_present {
                    self.eventloop
                        .pending
                        .iter()
                        .filter(|r| matches!(r, Request::Publish(_)))
                        .count() as u64
                } else {
                    0
                };
                self.receipts = Receipts::new(resent);
                self.connected = true;
                self.backoff.reset();
                let epoch = self.next_epoch.take().unwrap_or(0);
                let server = self.server_name();
                tracing::info!(%server, epoch, "connected upstream");
                ConnectionEvent::Connected { epoch, server }
            }
            Event::Incoming(Incoming::SubAck(ack)) => ConnectionEvent::Subscribed {
                refused: ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                    .count(),
            },
            Event::Incoming(Incoming::Publish(publish)) => ConnectionEvent::Message {
                topic: publish.topic,
                payload: publish.payload.to_vec(),
                retained: publish.retain,
            },
            Event::Outgoing(Outgoing::Disconnect) => {
                // Only the publisher disconnects: to stop, or to leave this server.
                self.eventloop.clean();
                self.leaving = true;
                return Err("left the server".into());
            }
            _ => return Ok(()),
        };
        if self.events.send(report).await.is_err() {
            self.stop.cancel();
        }
        Ok(())
    }

    /// The connection failed or was lost: tell the publisher, wait until it
    /// stopped publishing, move to the next server and back off.
    /// `false` when it is time to stop.
    async fn lost(&mut self, reason: String) -> bool {
        let server = self.server_name();
        let dropped_by_server = self.connected && !std::mem::take(&mut self.leaving);
        if self.connected {
            tracing::warn!(%server, %reason, "upstream connection lost");
            self.connected = false;
            let (ack, acked) = oneshot::channel();
            let told = self
                .events
                .send(ConnectionEvent::Disconnected { reason, ack })
                .await;
            if told.is_err() {
                return false;
            }
            // An error only means the publisher dropped the sender, which also acknowledges.
            let _ = acked.await;
        } else {
            tracing::warn!(%server, %reason, "cannot connect upstream");
        }
        self.current = (self.current + 1) % self.servers.len().max(1);
        if dropped_by_server {
            // Every gateway of the fleet lost this server at the same instant.
            self.pause(self.jittered(), "after the server dropped the connection")
                .await
        } else {
            let delay = self.backoff.next_delay();
            self.pause(delay, "").await
        }
    }

    /// A random wait up to the connect jitter.
    fn jittered(&self) -> Duration {
        self.jitter.mul_f64(fastrand::f64())
    }

    /// Waits `delay` unless stopped first; `false` when stopped.
    fn pause(&self, delay: Duration, jitter_for: &str) -> impl Future<Output = bool> + use<> {
        if !jitter_for.is_empty() && !delay.is_zero() {
            tracing::info!(wait = ?delay, "connect jitter {jitter_for}");
        }
        let stop = self.stop.clone();
        async move {
            tokio::select! {
                () = stop.cancelled() => false,
                () = tokio::time::sleep(delay) => true,
            }
        }
    }

    fn server_name(&self) -> String {
        self.servers
            .get(self.current)
            .map_or_else(String::new, |(name, _)| name.clone())
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!("refused by the server: {code:?}"),
        other => other.to_string(),
    }
}
