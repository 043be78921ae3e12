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
mod gate;
pub mod http_login;
pub mod rate;
pub mod retained;
pub mod sessions;
pub mod shared;
pub mod throttle;
pub mod tls;

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmqtt::codec::types::{Publish as WirePublish, QoS};
use rmqtt::codec::v5::PublishProperties;
use rmqtt::context::ServerContext;
use rmqtt::hook::Type;
use rmqtt::net::{Builder, Listener};
use rmqtt::pending::ExtraLimits;
use rmqtt::server::MqttServer;
use rmqtt::session::SessionState;
use rmqtt::types::{From, Id, Publish, Unsubscribe};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::LocalBrokerSettings;
use crate::core::message::Message;
use crate::core::message::Qos;
use crate::ops::metrics::Counters;
use access::AccessRules;
use gate::{Gate, TopicLimits, lock};
use rate::PublishRate;
use retained::RetainedBudget;
use sessions::{Connections, Login, Quotas, SessionOwners};
use throttle::LoginThrottle;

/// How long the broker keeps running after fieldmq's last message.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// MQTT 5 topic aliases per client and direction.
const TOPIC_ALIASES: u16 = 32;

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
    /// Users and ACLs; shared with the hooks, replaced by a reload.
    rules: Arc<RwLock<Arc<AccessRules>>>,
    /// Whose each session is; shared with the hooks.
    owners: Arc<Mutex<SessionOwners<gate::SessionMark>>>,
    /// `[broker] anonymous_persistent`; shared with the hooks.
    anonymous_persistent: Arc<AtomicBool>,
    /// Who is connected now; kept by the hooks.
    connections: Arc<Mutex<Connections<gate::SessionMark>>>,
    /// Failed logins per address; shared with the status page's logins.
    throttle: Arc<Mutex<LoginThrottle>>,
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
        stats: Arc<Counters>,
    ) -> Result<(LocalBroker, mpsc::Receiver<LocalCommand>), BrokerError> {
        let quotas = Quotas {
            anonymous: settings.max_clients,
            per_user: settings.max_sessions_per_user,
        };
        // Sessions are capped by fieldmq's quotas (the gate); rmqtt's own
        // cap is their sum, so it never refuses a user within its quota.
        let capacity = SessionOwners::<gate::SessionMark>::capacity(quotas, settings.users.len());
        let scx = ServerContext::new()
            .mqtt_max_sessions(capacity.try_into().unwrap_or(isize::MAX))
            // rmqtt refuses every new connection ("server unavailable")
            // while the machine's load average or CPU load is high: a busy
            // board, or a client generating load, would lock out configured
            // users. fieldmq's own caps (pending connections, quotas) bound
            // the broker's work instead.
            .busy_check_enable(false)
            .extra_limits(ExtraLimits {
                max_pending: settings.max_pending,
                max_pending_per_address: settings.max_pending_per_address,
                max_queued_bytes: settings.max_queued_bytes,
                max_queued_bytes_total: settings.max_queued_bytes_total,
            })
            // Retained messages without an expiry are kept until replaced.
            // The gate caps what local clients retain, in topics and bytes;
            // fieldmq's own retained topics are bounded by the device map,
            // so the retainer itself counts nothing (0: no cap of its own).
            .plugins_config_map_add(
                "rmqtt-retainer",
                format!(
                    "max_retained_messages = 0\nmax_payload_size = \"{}B\"\nretained_message_ttl = \"0s\"\n",
                    settings.max_packet_size
                ),
            )
            .build()
            .await;
        rmqtt_retainer::register(&scx, true, false)
            .await
            .map_err(|e| BrokerError::Setup(e.to_string()))?;
        *scx.extends.shared_subscription_mut().await = Box::new(shared::RoundRobin::default());
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let command_filters = Arc::new(RwLock::new(command_filters));
        let rules = Arc::new(RwLock::new(Arc::new(AccessRules::new(settings))));
        let owners = Arc::new(Mutex::new(SessionOwners::new(quotas)));
        let anonymous_persistent = Arc::new(AtomicBool::new(settings.anonymous_persistent));
        let connections = Arc::new(Mutex::new(Connections::default()));
        let throttle = Arc::new(Mutex::new(LoginThrottle::default()));
        let gate = Gate {
            scx: scx.clone(),
            rules: Arc::clone(&rules),
            command_filters: Arc::clone(&command_filters),
            commands: commands_tx,
            stats,
            rate: Arc::new(Mutex::new(PublishRate::new(settings.max_publish_rate))),
            owners: Arc::clone(&owners),
            connections: Arc::clone(&connections),
            throttle: Arc::clone(&throttle),
            retained: Arc::new(Mutex::new(RetainedBudget::new(
                settings.max_retained,
                settings.max_retained_bytes,
            ))),
            topics: TopicLimits {
                length: settings.max_topic_length,
                levels: settings.max_topic_levels,
            },
            anonymous_persistent: Arc::clone(&anonymous_persistent),
            warned: Arc::default(),
        };
        let register = scx.extends.hook_mgr().register();
        for typ in [
            Type::ClientAuthenticate,
            Type::SessionTerminated,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
            Type::MessagePublish,
            Type::MessageDropped,
            Type::MessageExpiryCheck,
            Type::ClientConnected,
            Type::ClientDisconnected,
        ] {
            register.add(typ, Box::new(gate.clone())).await;
        }
        register.start().await;
        let plain = listener(settings, settings.listen, capacity, false)?;
        let mut server = MqttServer::new(scx.clone()).listener(plain);
        // TLS clients come through fieldmq's relay on a loopback listener of
        // their own, which learns each client's real address from a PROXY
        // header: pending-connection caps and login throttling work per
        // client there too, not on the relay's one loopback address.
        let tls = match &settings.tls {
            Some(t) => {
                let loopback = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
                let relayed = listener(settings, loopback, capacity, true)?;
                let target = relayed
                    .local_addr()
                    .map_err(|e| BrokerError::Setup(e.to_string()))?;
                server = server.listener_by_id(relayed, target.port());
                Some(tls::start(t, target, settings).await?)
            }
            None => None,
        };
        let server = server.build();
        let server = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "local broker stopped");
            }
        });
        let origin = Id::new(scx.node.id(), 0, None, None, "fieldmq".into(), None);
        Ok((
            LocalBroker {
                scx,
                server,
                tls,
                expiry: settings.message_expiry,
                origin,
                command_filters,
                rules,
                owners,
                anonymous_persistent,
                connections,
                throttle,
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

    /// Applies reloaded users and ACLs at once: sessions of users no longer
    /// configured (and of anonymous clients, when they are no longer let
    /// in) are closed, and subscriptions the new rules do not allow are
    /// removed from the sessions that hold them. Publishes are checked
    /// against the rules in force each time, so they need nothing here.
    pub async fn reload_access(&self, settings: &LocalBrokerSettings) {
        let rules = Arc::new(AccessRules::new(settings));
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&rules);
        self.anonymous_persistent
            .store(settings.anonymous_persistent, Ordering::Relaxed);
        let sessions: Vec<(String, sessions::Login)> = lock(&self.owners)
            .all()
            .map(|(client, login)| (client.to_owned(), login.clone()))
            .collect();
        let shared = self.scx.extends.shared().await;
        for (client, login) in sessions {
            let id = Id::new(
                self.scx.node.id(),
                0,
                None,
                None,
                client.as_str().into(),
                None,
            );
            if !rules.knows(login.as_deref()) {
                match shared.entry(id).try_lock().await {
                    Ok(mut entry) => {
                        if let Err(e) = entry.kick(true, true, true).await {
                            tracing::warn!(%client, error = %e, "local broker: cannot close the session of a removed login");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%client, error = %e, "local broker: cannot close the session of a removed login");
                    }
                }
                lock(&self.owners).forget(&client);
                tracing::info!(%client, user = ?login, "local broker: session closed, its login is no longer configured");
                continue;
            }
            let entry = shared.entry(id);
            let Some(session) = entry.session() else {
                continue;
            };
            let Ok(subscriptions) = session.subscriptions().await else {
                continue;
            };
            let refused: Vec<_> = subscriptions
                .read()
                .await
                .iter()
                .filter(|(filter, _)| !rules.may_subscribe(login.as_deref(), filter))
                .map(|(filter, opts)| (filter.clone(), opts.shared_group().cloned()))
                .collect();
            for (filter, shared_group) in refused {
                let unsubscribe = Unsubscribe {
                    topic_filter: filter.clone(),
                    shared_group,
                };
                if let Err(e) = entry.unsubscribe(&unsubscribe).await {
                    tracing::warn!(%client, %filter, error = %e, "local broker: cannot remove a subscription the new ACL refuses");
                } else {
                    tracing::info!(%client, %filter, "local broker: subscription removed, the new ACL refuses it");
                }
            }
        }
    }

    /// Who is connected now, readable from any task: clients per login
    /// (`None`: anonymous), anonymous first.
    pub fn presence(&self) -> impl Fn() -> Vec<(Login, usize)> + Send + Sync + 'static {
        let connections = Arc::clone(&self.connections);
        move || lock(&connections).per_login()
    }

    /// Logins over the broker's users as they stand (reloads included),
    /// with failures slowed down together with the broker's own.
    pub fn http_login(&self) -> http_login::HttpLogin {
        http_login::HttpLogin::new(Arc::clone(&self.rules), Arc::clone(&self.throttle))
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

/// A plain TCP listener at `address` with `[broker]`'s limits; `proxied`
/// takes the client's address from a PROXY protocol header (the TLS relay).
fn listener(
    settings: &LocalBrokerSettings,
    address: SocketAddr,
    capacity: usize,
    proxied: bool,
) -> Result<Listener, BrokerError> {
    let listen_error = |e: rmqtt::Error| BrokerError::Listen {
        address,
        reason: e.to_string(),
    };
    Builder::new()
        .name(if proxied { "fieldmq-tls" } else { "fieldmq" })
        .laddr(address)
        .proxy_protocol(proxied)
        // Without it a restart (systemd's Restart=, an upgrade) cannot
        // listen again while the last connections sit in TIME_WAIT.
        .reuseaddr(Some(true))
        // rmqtt lets anonymous clients in without asking the hooks; the
        // gate decides for them too (wills, client ids, quotas).
        .allow_anonymous(false)
        .allow_zero_keepalive(true)
        .handshake_timeout(settings.connect_timeout)
        .max_connections(capacity)
        .max_subscriptions(settings.max_subscriptions)
        .max_topic_levels(settings.max_topic_levels)
        // MQTT 5 topic aliases both ways, a bounded table per client.
        .max_topic_aliases(TOPIC_ALIASES)
        .max_packet_size(settings.max_packet_size)
        .max_inflight(NonZeroU16::new(settings.max_inflight).unwrap_or(NonZeroU16::MIN))
        .max_mqueue_len(settings.max_queued)
        .session_expiry_interval(settings.session_expiry)
        .max_session_expiry_interval(settings.session_expiry)
        .message_expiry_interval(settings.message_expiry)
        .bind()
        .map_err(listen_error)?
        .tcp()
        .map_err(listen_error)
}
