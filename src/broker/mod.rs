//! The embedded local MQTT broker (rmqtt, MQTT 3.1.1 and 5.0), behind a
//! small seam: fieldmq publishes into it in-process, and commands that local
//! clients are allowed to send come out of it on a channel.
//!
//! rmqtt is used as a library: a `ServerContext` with the retainer plugin
//! (without it retained messages do not exist) and fieldmq's own hooks for
//! authentication and topic ACLs ([`access`]). Queue limits and message
//! expiry are set explicitly: rmqtt's defaults drop QoS 1 messages beyond
//! 1000 queued per client and expire queued messages after 5 minutes.
//!
//! rmqtt 0.24 closes the connection of an MQTT 5 client when a message is
//! larger than the maximum packet size the client announced; the standard
//! says the message is to be discarded and the client kept
//! (MQTT-3.1.2-25). The gate does that in the message expiry check, which
//! rmqtt runs before each delivery.

pub mod access;
pub mod rate;
pub mod tls;

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmqtt::codec::types::{Publish as WirePublish, QoS};
use rmqtt::codec::v5::{Codec, Packet, PublishAckReason, PublishProperties, SubscribeAckReason};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::session::SessionState;
use rmqtt::types::{
    AuthResult, From, Id, Publish, PublishAclResult, PublishResult, SubscribeAclResult,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Encoder;

use crate::config::{LocalBrokerSettings, Qos};
use crate::mqtt::Message;
use crate::stats::Stats;
use access::AccessRules;
use rate::{Admission, PublishRate};

/// How long the broker keeps running after fieldmq's last message.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// Commands from local clients waiting for fieldmq; beyond this they are refused.
const COMMAND_QUEUE: usize = 64;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The listener could not be opened (address in use, no permission).
    #[error("cannot listen on {address}: {reason}")]
    Listen {
        /// `[broker] listen`.
        address: std::net::SocketAddr,
        /// What rmqtt or the OS said.
        reason: String,
    },
    /// A plugin could not be registered.
    #[error("cannot set up the broker: {0}")]
    Setup(String),
    /// The TLS listener could not be set up.
    #[error("local broker TLS listener: {0}")]
    Tls(#[from] tls::TlsSetupError),
}

/// A message a local client published on a command topic and was allowed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCommand {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The running broker.
pub struct LocalBroker {
    scx: ServerContext,
    server: JoinHandle<()>,
    /// The TLS relay, when `[broker] tls_listen` is set.
    tls: Option<JoinHandle<()>>,
    expiry: Duration,
    /// Identity of fieldmq's own messages.
    origin: Id,
    /// What counts as a command; shared with the ACL hook.
    command_filters: Arc<RwLock<Vec<String>>>,
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker").finish_non_exhaustive()
    }
}

impl LocalBroker {
    /// Starts the broker on `[broker] listen`. Messages local clients may
    /// publish on a topic matched by `command_filters` also come out of the
    /// returned channel; refused ones are counted in `stats`.
    pub async fn start(
        settings: &LocalBrokerSettings,
        command_filters: Vec<String>,
        stats: Arc<Stats>,
    ) -> Result<(LocalBroker, mpsc::Receiver<LocalCommand>), BrokerError> {
        // rmqtt's listener `max_connections` only bounds the handshake queue;
        // the session limit is what caps clients (and persistent sessions
        // kept for absent ones, each with its queue).
        let scx = ServerContext::new()
            .mqtt_max_sessions(settings.max_clients.try_into().unwrap_or(isize::MAX))
            .build()
            .await;
        rmqtt_retainer::register(&scx, true, false)
            .await
            .map_err(|e| BrokerError::Setup(e.to_string()))?;
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let command_filters = Arc::new(RwLock::new(command_filters));
        let gate = Gate {
            rules: Arc::new(AccessRules::new(settings)),
            command_filters: Arc::clone(&command_filters),
            commands: commands_tx,
            stats,
            rate: Arc::new(Mutex::new(PublishRate::new(settings.max_publish_rate))),
        };
        let register = scx.extends.hook_mgr().register();
        for typ in [
            Type::ClientAuthenticate,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
            Type::MessageExpiryCheck,
            Type::ClientDisconnected,
        ] {
            register.add(typ, Box::new(gate.clone())).await;
        }
        register.start().await;
        let listen_error = |e: rmqtt::Error| BrokerError::Listen {
            address: settings.listen,
            reason: e.to_string(),
        };
        let listener = Builder::new()
            .name("fieldmq")
            .laddr(settings.listen)
            // Without it a restart (systemd's Restart=, an upgrade) cannot
            // listen again while the last connections sit in TIME_WAIT.
            .reuseaddr(Some(true))
            .allow_anonymous(settings.allow_anonymous)
            .allow_zero_keepalive(true)
            .max_connections(settings.max_clients)
            .max_packet_size(settings.max_packet_size)
            .max_inflight(NonZeroU16::new(settings.max_inflight).unwrap_or(NonZeroU16::MIN))
            .max_mqueue_len(settings.max_queued)
            .session_expiry_interval(settings.session_expiry)
            .max_session_expiry_interval(settings.session_expiry)
            .message_expiry_interval(settings.message_expiry)
            .bind()
            .map_err(listen_error)?
            .tcp()
            .map_err(listen_error)?;
        let server = MqttServer::new(scx.clone()).listener(listener).build();
        let server = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "local broker stopped");
            }
        });
        let tls = match &settings.tls {
            Some(t) => Some(tls::start(t, settings.listen, settings.max_clients).await?),
            None => None,
        };
        let origin = Id::new(scx.node.id(), 0, None, None, "fieldmq".into(), None);
        Ok((
            LocalBroker {
                scx,
                server,
                tls,
                expiry: settings.message_expiry,
                origin,
                command_filters,
            },
            commands,
        ))
    }

    /// Publishes `message` to the local subscribers (and the retained store).
    pub async fn publish(&self, message: Message) -> bool {
        let publish: Publish = WirePublish {
            dup: false,
            retain: message.retain,
            qos: match message.qos {
                Qos::AtMostOnce => QoS::AtMostOnce,
                Qos::AtLeastOnce => QoS::AtLeastOnce,
                Qos::ExactlyOnce => QoS::ExactlyOnce,
            },
            topic: message.topic.into(),
            packet_id: None,
            payload: bytes::Bytes::from(message.payload),
            properties: Some(PublishProperties::default()),
        }
        .into();
        let from = From::from_system(self.origin.clone());
        match SessionState::forwards(&self.scx, from, publish, false, Some(self.expiry)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "local broker did not take a message");
                false
            }
        }
    }

    /// Takes messages on `filters` as commands from now on too (a reload
    /// made metrics writable). Filters no longer in use stay: the profile
    /// refuses what names no writable metric.
    pub fn add_command_filters(&self, filters: impl IntoIterator<Item = String>) {
        let mut current = self
            .command_filters
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for filter in filters {
            if !current.contains(&filter) {
                current.push(filter);
            }
        }
    }

    /// Stops listening, after connected clients had a moment to receive
    /// what was published last (the node's death): rmqtt hands messages to
    /// per-session tasks and offers no flush.
    pub async fn stop(self) {
        tokio::time::sleep(STOP_GRACE).await;
        if let Some(tls) = &self.tls {
            tls.abort();
        }
        self.server.abort();
    }
}

/// fieldmq's authentication and ACL hooks (one clone per hook type).
#[derive(Clone)]
struct Gate {
    rules: Arc<AccessRules>,
    command_filters: Arc<RwLock<Vec<String>>>,
    commands: mpsc::Sender<LocalCommand>,
    stats: Arc<Stats>,
    rate: Arc<Mutex<PublishRate>>,
}

impl Gate {
    fn rate(&self) -> std::sync::MutexGuard<'_, PublishRate> {
        // The lock guards plain arithmetic; a poisoned one is still consistent.
        self.rate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Handler for Gate {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                let user = info.username().map(|u| u.to_string());
                let ok = self
                    .rules
                    .login(user.as_deref(), info.password().map(|p| &p[..]));
                if !ok {
                    tracing::warn!(user = ?user, "local broker: login refused");
                }
                let result = if ok {
                    AuthResult::Allow(false, None)
                } else {
                    AuthResult::BadUsernameOrPassword
                };
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let user = session.id.username.as_ref().map(|u| u.to_string());
                if self
                    .rules
                    .may_subscribe(user.as_deref(), &subscribe.topic_filter)
                {
                    (true, acc)
                } else {
                    tracing::warn!(user = ?user, filter = %subscribe.topic_filter, "local broker: subscription refused");
                    let refused =
                        SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized);
                    (false, Some(HookResult::SubscribeAclResult(refused)))
                }
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let client: &str = &session.id.client_id;
                let admission = self.rate().admit(client, Instant::now());
                if let Admission::Refused { report } = admission {
                    if let Some(refused) = report {
                        tracing::warn!(%client, refused, "local broker: client publishes faster than max_publish_rate; messages dropped");
                    }
                    let over = PublishResult::reason_code(
                        PublishAckReason::QuotaExceeded,
                        Some("max_publish_rate".into()),
                        false,
                    );
                    return (
                        false,
                        Some(HookResult::PublishAclResult(PublishAclResult(over))),
                    );
                }
                let user = session.id.username.as_ref().map(|u| u.to_string());
                let topic: &str = &publish.topic;
                let command = self
                    .command_filters
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .any(|f| access::matches(f, topic));
                if !self.rules.may_publish(user.as_deref(), topic) {
                    if command {
                        Stats::bump(&self.stats.commands_rejected);
                    }
                    tracing::warn!(user = ?user, %topic, "local broker: publish refused");
                    let refused = PublishAclResult::rejected(false, None);
                    return (false, Some(HookResult::PublishAclResult(refused)));
                }
                if command {
                    let sent = self.commands.try_send(LocalCommand {
                        topic: topic.to_owned(),
                        payload: publish.payload.to_vec(),
                    });
                    if sent.is_err() {
                        Stats::bump(&self.stats.commands_rejected);
                        tracing::warn!(%topic, "local command refused: too many waiting");
                    }
                }
                (true, acc)
            }
            Parameter::ClientDisconnected(session, _) => {
                self.rate().forget(&session.id.client_id);
                (true, acc)
            }
            Parameter::MessageExpiryCheck(session, _, publish) => {
                let limit = match session.connect_info().await {
                    Ok(info) => info.max_packet_size(),
                    Err(_) => None,
                };
                match limit {
                    Some(limit) if outgoing_size(publish) > limit.get() as usize => {
                        tracing::debug!(client = %session.id.client_id, topic = %publish.topic, limit, "local broker: message larger than the client takes, not sent");
                        (false, Some(HookResult::MessageExpiry))
                    }
                    _ => (true, acc),
                }
            }
            _ => (true, acc),
        }
    }
}

/// The size of the PUBLISH packet rmqtt would send for `publish` to an MQTT
/// 5 client, fixed header included (rmqtt's own check leaves the header out).
fn outgoing_size(publish: &Publish) -> usize {
    let mut packet = publish.inner.as_ref().clone();
    if packet.qos != QoS::AtMostOnce {
        packet.packet_id = Some(NonZeroU16::MIN);
    }
    // rmqtt sets the expiry (a fixed four bytes) where properties exist.
    if let Some(properties) = &mut packet.properties {
        properties.message_expiry_interval = Some(NonZeroU32::MAX);
        properties.topic_alias = None;
    }
    let mut bytes = bytes::BytesMut::new();
    match Codec::new(0, 0).encode(Packet::Publish(Box::new(packet)), &mut bytes) {
        Ok(()) => bytes.len(),
        Err(_) => usize::MAX,
    }
}
