//! fieldmq's hooks into rmqtt: logins, session ownership and quotas, topic
//! ACLs for subscriptions, publishes and wills, the publish rate, the
//! retained budget, and the local command channel. Each decision is made by
//! a pure module (`access`, `sessions`, `throttle`, `rate`, `retained`);
//! this file only carries rmqtt's parameters to them and their answers back.

use std::net::IpAddr;
use std::num::NonZeroU16;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use rmqtt::codec::types::QoS;
use rmqtt::codec::v5::{Codec, Packet, PublishAckReason, SubscribeAckReason};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{
    AuthResult, ConnectInfo, FromType, LastWill, Publish, PublishAclResult, PublishResult, Reason,
    SubscribeAclResult, TimestampMillis,
};
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;

use super::LocalCommand;
use super::access::{self, AccessRules};
use super::rate::{Admission, PublishRate};
use super::retained::RetainedBudget;
use super::sessions::{Connections, Login, Refusal, SessionOwners};
use super::throttle::LoginThrottle;
use crate::ops::metrics;
use crate::ops::metrics::Counters;

/// What tells one session under a client id from the next: when it was
/// made and from where.
pub(super) type SessionMark = (TimestampMillis, Option<std::net::SocketAddr>);

/// Topic size limits of `[broker]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct TopicLimits {
    /// Longest topic or filter, in bytes.
    pub length: usize,
    /// Most levels.
    pub levels: usize,
}

impl TopicLimits {
    fn allow(&self, topic: &str) -> bool {
        topic.len() <= self.length && topic.split('/').count() <= self.levels
    }
}

/// Shared state of every hook (one clone per hook type).
#[derive(Clone)]
pub(super) struct Gate {
    pub scx: ServerContext,
    pub rules: Arc<RwLock<Arc<AccessRules>>>,
    pub command_filters: Arc<RwLock<Vec<String>>>,
    pub commands: mpsc::Sender<LocalCommand>,
    pub stats: Arc<Counters>,
    pub rate: Arc<Mutex<PublishRate>>,
    pub owners: Arc<Mutex<SessionOwners<SessionMark>>>,
    pub connections: Arc<Mutex<Connections<SessionMark>>>,
    pub throttle: Arc<Mutex<LoginThrottle>>,
    pub retained: Arc<Mutex<RetainedBudget>>,
    pub topics: TopicLimits,
    /// Anonymous clients may keep sessions across disconnects.
    pub anonymous_persistent: Arc<std::sync::atomic::AtomicBool>,
    /// Connected clients already told of in the log for a refused
    /// subscription or publish: one warning per connection, not one per
    /// message, so a hostile client cannot flood the log (and the SD card).
    pub warned: Arc<Mutex<std::collections::HashSet<(String, &'static str)>>>,
}

/// Locks `m`; every lock here guards plain bookkeeping that a panic
/// elsewhere cannot leave half-done, so a poisoned one is still consistent.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn refused(reason: &'static str) {
    metrics::broker_refused(reason);
}

fn user_of(name: Option<&rmqtt::types::UserName>) -> Login {
    name.map(|u| u.to_string())
}

/// Whether a CONNECT asks for a session that outlives the connection.
fn persistent(info: &ConnectInfo) -> bool {
    match info {
        ConnectInfo::V3(_, c) => !c.clean_session,
        ConnectInfo::V5(_, c) => c.session_expiry_interval_secs > 0,
    }
}

fn will_topic(info: &ConnectInfo) -> Option<String> {
    info.last_will().map(|lw| match lw {
        LastWill::V3(w) => w.topic.to_string(),
        LastWill::V5(w) => w.topic.to_string(),
    })
}

impl Gate {
    fn rules(&self) -> Arc<AccessRules> {
        Arc::clone(&self.rules.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether this is the first refusal of this `kind` on `client`'s connection.
    fn first_refusal(&self, client: &str, kind: &'static str) -> bool {
        lock(&self.warned).insert((client.to_owned(), kind))
    }

    /// Checks a login off the async workers (PBKDF2 takes milliseconds),
    /// after the wait its address has earned by failing before.
    async fn check_password(&self, info: &ConnectInfo) -> bool {
        let address = info
            .ipaddress()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let delay = lock(&self.throttle).delay(address, Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let rules = self.rules();
        let user = user_of(info.username());
        let password = info.password().map(|p| p.to_vec());
        let anonymous = user.is_none();
        let ok =
            tokio::task::spawn_blocking(move || rules.login(user.as_deref(), password.as_deref()))
                .await
                .unwrap_or(false);
        let mut throttle = lock(&self.throttle);
        if !ok {
            throttle.failed(address, Instant::now());
        } else if !anonymous {
            throttle.succeeded(address);
        }
        ok
    }

    /// Takes `info`'s client id for its login, forgetting records of
    /// sessions rmqtt no longer holds when they stand in the way.
    async fn claim_session(&self, info: &ConnectInfo) -> Result<(), Refusal> {
        let id = info.id();
        let client = id.client_id.to_string();
        let login = user_of(id.username.as_ref());
        let mark = (id.create_time, id.remote_addr);
        let first = lock(&self.owners).claim(&client, &login, mark);
        let Err(refusal) = first else {
            return Ok(());
        };
        let shared = self.scx.extends.shared().await;
        let stale: Vec<String> = {
            let owners = lock(&self.owners);
            match refusal {
                Refusal::Taken => vec![client.clone()],
                Refusal::OverQuota => owners.clients_of(&login).map(str::to_owned).collect(),
            }
        }
        .into_iter()
        .filter(|c| !shared.exist(c))
        .collect();
        if stale.is_empty() {
            return Err(refusal);
        }
        let mut owners = lock(&self.owners);
        for c in &stale {
            owners.forget(c);
        }
        owners.claim(&client, &login, mark)
    }

    async fn authenticate(&self, info: &ConnectInfo) -> AuthResult {
        let user = user_of(info.username());
        if !self.check_password(info).await {
            tracing::warn!(user = ?user, address = ?info.ipaddress(), "local broker: login refused");
            refused("login");
            return AuthResult::BadUsernameOrPassword;
        }
        if let Some(topic) = will_topic(info)
            && (!self.topics.allow(&topic) || !self.rules().may_publish(user.as_deref(), &topic))
        {
            tracing::warn!(user = ?user, %topic, "local broker: connection refused, its will is on a topic it may not publish");
            refused("will");
            return AuthResult::NotAuthorized;
        }
        if user.is_none()
            && persistent(info)
            && !self
                .anonymous_persistent
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(client = %info.id().client_id, "local broker: connection refused, anonymous clients get no persistent session");
            refused("anonymous_persistent");
            return AuthResult::NotAuthorized;
        }
        match self.claim_session(info).await {
            Ok(()) => AuthResult::Allow(false, None),
            Err(Refusal::Taken) => {
                tracing::warn!(user = ?user, client = %info.id().client_id, "local broker: connection refused, that client id's session belongs to another login");
                refused("session_taken");
                AuthResult::NotAuthorized
            }
            Err(Refusal::OverQuota) => {
                tracing::warn!(user = ?user, "local broker: connection refused, the login holds all the sessions it may");
                refused("quota");
                AuthResult::NotAuthorized
            }
        }
    }

    fn check_publish(&self, session: &rmqtt::session::Session, publish: &Publish) -> ReturnType {
        let client: &str = &session.id.client_id;
        let admission = lock(&self.rate).admit(client, Instant::now());
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
        let user = user_of(session.id.username.as_ref());
        let topic: &str = &publish.topic;
        let command = self
            .command_filters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|f| access::matches(f, topic));
        if !self.topics.allow(topic) || !self.rules().may_publish(user.as_deref(), topic) {
            if command {
                Counters::bump(&self.stats.commands_rejected);
            }
            refused("publish");
            if self.first_refusal(client, "publish") {
                tracing::warn!(user = ?user, %client, %topic, "local broker: publish refused (further refusals of this connection are counted in fieldmq_broker_refused_total, not logged)");
            }
            // The reason code says it all; a reason string too would be a
            // PUBACK longer than some MQTT 5 clients parse.
            let refused = PublishAclResult(PublishResult::reason_code(
                PublishAckReason::NotAuthorized,
                None,
                false,
            ));
            return (false, Some(HookResult::PublishAclResult(refused)));
        }
        if command {
            let sent = self.commands.try_send(LocalCommand {
                topic: topic.to_owned(),
                payload: publish.payload.to_vec(),
            });
            if sent.is_err() {
                Counters::bump(&self.stats.commands_rejected);
                tracing::warn!(%topic, "local command refused: too many waiting");
            }
        }
        (true, None)
    }
}

#[async_trait]
impl Handler for Gate {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                let result = self.authenticate(info).await;
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::SessionTerminated(session, _) => {
                let mark = (session.id.create_time, session.id.remote_addr);
                lock(&self.owners).release(&session.id.client_id, &mark);
                (true, acc)
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let user = user_of(session.id.username.as_ref());
                let filter: &str = &subscribe.topic_filter;
                if self.topics.allow(filter) && self.rules().may_subscribe(user.as_deref(), filter)
                {
                    (true, acc)
                } else {
                    refused("subscribe");
                    let client: &str = &session.id.client_id;
                    if self.first_refusal(client, "subscribe") {
                        tracing::warn!(user = ?user, %client, %filter, "local broker: subscription refused (further refusals of this connection are counted in fieldmq_broker_refused_total, not logged)");
                    }
                    let refused =
                        SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized);
                    (false, Some(HookResult::SubscribeAclResult(refused)))
                }
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                match self.check_publish(session, publish) {
                    (true, None) => (true, acc),
                    refused => refused,
                }
            }
            Parameter::MessagePublish(_, from, publish) => {
                let by_client = matches!(from.typ(), FromType::Custom | FromType::LastWill);
                if !publish.retain || !by_client {
                    return (true, acc);
                }
                if lock(&self.retained).admit(&publish.topic, publish.payload.len()) {
                    return (true, acc);
                }
                refused("retained_full");
                tracing::warn!(topic = %publish.topic, "local broker: retained store full (max_retained, max_retained_bytes); message delivered but not retained");
                let mut unretained = (*publish).clone();
                unretained.retain = false;
                (false, Some(HookResult::Publish(unretained)))
            }
            Parameter::MessageDropped(_, _, _, reason) => {
                let reason = match reason {
                    Reason::MessageQueueFull => "queue_full",
                    Reason::MessageExpiration => "expired",
                    _ => "other",
                };
                metrics::broker_dropped(reason);
                (true, acc)
            }
            Parameter::ClientConnected(session) => {
                let mark = (session.id.create_time, session.id.remote_addr);
                let login = user_of(session.id.username.as_ref());
                lock(&self.connections).opened(&session.id.client_id, mark, login);
                (true, acc)
            }
            Parameter::ClientDisconnected(session, _) => {
                let mark = (session.id.create_time, session.id.remote_addr);
                lock(&self.connections).closed(&session.id.client_id, &mark);
                lock(&self.rate).forget(&session.id.client_id);
                lock(&self.warned).retain(|(c, _)| *c != *session.id.client_id);
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
