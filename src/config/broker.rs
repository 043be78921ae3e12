//! `[broker]` and `[[broker.user]]`: the embedded local MQTT broker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::Profile;
use super::check::Checker;
use super::raw::{RawBroker, RawBrokerUser};

/// Where the broker listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1883";
const PROFILES: [(&str, Profile); 2] =
    [("plain", Profile::Plain), ("sparkplug", Profile::Sparkplug)];

/// `[broker]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalBrokerSettings {
    /// Whether the broker runs.
    pub enabled: bool,
    /// Plain TCP listener.
    pub listen: SocketAddr,
    /// What fieldmq publishes into it (plain by default).
    pub profile: Profile,
    /// Clients without a user name may connect.
    pub allow_anonymous: bool,
    /// Topic filters anonymous clients may subscribe to.
    pub anonymous_subscribe: Vec<String>,
    /// Topic filters anonymous clients may publish to.
    pub anonymous_publish: Vec<String>,
    /// Known users.
    pub users: Vec<BrokerUser>,
    /// Sessions anonymous clients may hold together, counting persistent
    /// sessions of absent clients; each user has its own quota on top.
    pub max_clients: usize,
    /// Sessions, live or persisted, one configured user may hold.
    pub max_sessions_per_user: usize,
    /// Anonymous clients may keep a session across disconnects; by default
    /// only where no users are configured (anonymous clients are then the
    /// only kind there is, and cannot hold sessions users need).
    pub anonymous_persistent: bool,
    /// How long a new connection has to complete CONNECT.
    pub connect_timeout: Duration,
    /// Connections that have not completed CONNECT yet, in all.
    pub max_pending: usize,
    /// The same, from one client address.
    pub max_pending_per_address: usize,
    /// Bytes queued for one client before its oldest messages are dropped.
    pub max_queued_bytes: usize,
    /// Bytes queued for all clients together.
    pub max_queued_bytes_total: usize,
    /// Topics local clients may leave a retained message on.
    pub max_retained: usize,
    /// Bytes those retained messages may hold (payloads and topics).
    pub max_retained_bytes: usize,
    /// Subscriptions one client may hold.
    pub max_subscriptions: usize,
    /// Longest topic or topic filter, in bytes.
    pub max_topic_length: usize,
    /// Most levels in a topic or topic filter.
    pub max_topic_levels: usize,
    /// Largest packet accepted, in bytes.
    pub max_packet_size: u32,
    /// QoS 1/2 messages in flight to one client.
    pub max_inflight: u16,
    /// Messages queued for one client (offline or slow) before the oldest are dropped.
    pub max_queued: usize,
    /// How long a queued message is kept for a client that does not take it.
    pub message_expiry: Duration,
    /// How long a persistent session outlives its connection: MQTT 3.1.1
    /// sessions (clean session false) get this, MQTT 5 requests are capped
    /// at it, so forgotten clients do not hold queues forever.
    pub session_expiry: Duration,
    /// Messages a second one client may publish (bursts of as many); more are dropped.
    pub max_publish_rate: u32,
    /// The TLS listener, when `tls_listen` is set.
    pub tls: Option<BrokerTls>,
}

/// `[broker] tls_listen, tls_cert, tls_key, tls_client_ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerTls {
    /// Where TLS clients connect.
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// One `[[broker.user]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUser {
    /// User name.
    pub name: String,
    /// How the password is checked.
    pub secret: Secret,
    /// Topic filters the user may publish to.
    pub publish: Vec<String>,
    /// Topic filters the user may subscribe to.
    pub subscribe: Vec<String>,
}

/// A user's password as stored.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A `mosquitto_passwd` hash (`$7$…`: PBKDF2-SHA512).
    Hash(String),
    /// The password itself, read from `password_file`.
    Plain(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Hash(_) => "Hash(..)",
            Secret::Plain(_) => "Plain(..)",
        })
    }
}

impl LocalBrokerSettings {
    /// These settings with `other`'s users and ACLs: the part of `[broker]`
    /// a reload applies without restarting the broker.
    pub fn with_access_of(&self, other: &LocalBrokerSettings) -> LocalBrokerSettings {
        LocalBrokerSettings {
            allow_anonymous: other.allow_anonymous,
            anonymous_persistent: other.anonymous_persistent,
            anonymous_subscribe: other.anonymous_subscribe.clone(),
            anonymous_publish: other.anonymous_publish.clone(),
            users: other.users.clone(),
            ..self.clone()
        }
    }
}

impl Default for LocalBrokerSettings {
    fn default() -> LocalBrokerSettings {
        LocalBrokerSettings {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            profile: Profile::Plain,
            allow_anonymous: true,
            anonymous_subscribe: vec!["#".into()],
            anonymous_publish: Vec::new(),
            users: Vec::new(),
            max_clients: 64,
            max_sessions_per_user: 8,
            anonymous_persistent: true,
            connect_timeout: Duration::from_secs(10),
            max_pending: 64,
            max_pending_per_address: 8,
            max_queued_bytes: 1024 * 1024,
            max_queued_bytes_total: 16 * 1024 * 1024,
            max_retained: 10_000,
            max_retained_bytes: 8 * 1024 * 1024,
            max_subscriptions: 100,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_packet_size: 256 * 1024,
            max_inflight: 16,
            max_queued: 10_000,
            message_expiry: Duration::from_secs(3600),
            session_expiry: Duration::from_secs(2 * 3600),
            max_publish_rate: 100,
            tls: None,
        }
    }
}

impl Checker<'_> {
    pub(super) fn broker(&mut self, raw: &RawBroker, base: &Path) -> LocalBrokerSettings {
        let ctx = "[broker]";
        let d = LocalBrokerSettings::default();
        let listen = raw
            .listen
            .as_ref()
            .and_then(|l| self.socket_address(ctx, "listen", l, DEFAULT_LISTEN))
            .unwrap_or(d.listen);
        let tls = raw.tls_listen.as_ref().and_then(|l| {
            let listen = self.socket_address(ctx, "tls_listen", l, "0.0.0.0:8883")?;
            let mut file = |key: &str, value: &Option<Spanned<String>>| match value {
                Some(v) => Some(self.existing_file(ctx, key, v, base)),
                None => {
                    self.error(
                        l.span(),
                        ctx,
                        format!("tls_listen needs {key} (a PEM file)"),
                    );
                    None
                }
            };
            let cert = file("tls_cert", &raw.tls_cert);
            let key = file("tls_key", &raw.tls_key);
            let client_ca = raw
                .tls_client_ca
                .as_ref()
                .map(|v| self.existing_file(ctx, "tls_client_ca", v, base));
            Some(BrokerTls {
                listen,
                cert: cert?,
                key: key?,
                client_ca,
            })
        });
        if tls.is_none() && raw.tls_listen.is_none() {
            for (key, value) in [
                ("tls_cert", &raw.tls_cert),
                ("tls_key", &raw.tls_key),
                ("tls_client_ca", &raw.tls_client_ca),
            ] {
                if let Some(v) = value {
                    self.error(v.span(), ctx, format!("{key} needs tls_listen"));
                }
            }
        }
        let enabled = raw.enabled.as_ref().is_none_or(|e| *e.get_ref());
        let allow_anonymous = match &raw.allow_anonymous {
            Some(a) => *a.get_ref(),
            None => {
                let exposed = [
                    (Some(listen), raw.listen.as_ref(), "listen"),
                    (
                        tls.as_ref().map(|t| t.listen),
                        raw.tls_listen.as_ref(),
                        "tls_listen",
                    ),
                ];
                let mut open = false;
                for (addr, given, key) in exposed {
                    let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) else {
                        continue;
                    };
                    open = true;
                    if !enabled {
                        continue;
                    }
                    let message = format!(
                        "{key} = \"{addr}\" is reachable from the network; anonymous clients are refused there unless you write allow_anonymous = true (or add [[broker.user]] entries and allow_anonymous = false)"
                    );
                    match given {
                        Some(v) => self.error(v.span(), ctx, message),
                        None => self.error_at(self.section_line("[broker]"), ctx, message),
                    }
                }
                !open
            }
        };
        let int =
            |c: &mut Self, key: &str, v: &Option<Spanned<i64>>, lo: i64, hi: i64, def: i64| {
                v.as_ref()
                    .and_then(|v| c.int::<i64>(ctx, key, v, lo, hi))
                    .unwrap_or(def)
            };
        let users = raw.user.iter().map(|u| self.broker_user(u, base)).collect();
        self.unique(ctx, "broker user", raw.user.iter().map(|u| &u.name));
        let filters = |c: &mut Self,
                       key: &str,
                       v: &Option<Spanned<Vec<Spanned<String>>>>,
                       def: &[String]| match v {
            Some(list) => c.topic_filters(ctx, key, list),
            None => def.to_vec(),
        };
        LocalBrokerSettings {
            enabled,
            listen,
            profile: raw
                .profile
                .as_ref()
                .and_then(|p| self.choice(ctx, "profile", p, &PROFILES))
                .unwrap_or(d.profile),
            allow_anonymous,
            anonymous_subscribe: filters(
                self,
                "anonymous_subscribe",
                &raw.anonymous_subscribe,
                &d.anonymous_subscribe,
            ),
            anonymous_publish: filters(
                self,
                "anonymous_publish",
                &raw.anonymous_publish,
                &d.anonymous_publish,
            ),
            users,
            max_clients: int(
                self,
                "max_clients",
                &raw.max_clients,
                1,
                100_000,
                d.max_clients as i64,
            ) as usize,
            anonymous_persistent: raw
                .anonymous_persistent
                .as_ref()
                .map_or(raw.user.is_empty(), |a| *a.get_ref()),
            max_sessions_per_user: int(
                self,
                "max_sessions_per_user",
                &raw.max_sessions_per_user,
                1,
                10_000,
                d.max_sessions_per_user as i64,
            ) as usize,
            connect_timeout: self.duration(
                ctx,
                "connect_timeout",
                raw.connect_timeout.as_ref(),
                d.connect_timeout,
            ),
            max_pending: int(
                self,
                "max_pending",
                &raw.max_pending,
                1,
                100_000,
                d.max_pending as i64,
            ) as usize,
            max_pending_per_address: int(
                self,
                "max_pending_per_address",
                &raw.max_pending_per_address,
                1,
                100_000,
                d.max_pending_per_address as i64,
            ) as usize,
            max_queued_bytes: int(
                self,
                "max_queued_bytes",
                &raw.max_queued_bytes,
                1024,
                1 << 40,
                d.max_queued_bytes as i64,
            ) as usize,
            max_queued_bytes_total: int(
                self,
                "max_queued_bytes_total",
                &raw.max_queued_bytes_total,
                1024,
                1 << 40,
                d.max_queued_bytes_total as i64,
            ) as usize,
            max_retained: int(
                self,
                "max_retained",
                &raw.max_retained,
                0,
                10_000_000,
                d.max_retained as i64,
            ) as usize,
            max_retained_bytes: int(
                self,
                "max_retained_bytes",
                &raw.max_retained_bytes,
                0,
                1 << 40,
                d.max_retained_bytes as i64,
            ) as usize,
            max_subscriptions: int(
                self,
                "max_subscriptions",
                &raw.max_subscriptions,
                1,
                1_000_000,
                d.max_subscriptions as i64,
            ) as usize,
            max_topic_length: int(
                self,
                "max_topic_length",
                &raw.max_topic_length,
                16,
                65_535,
                d.max_topic_length as i64,
            ) as usize,
            max_topic_levels: int(
                self,
                "max_topic_levels",
                &raw.max_topic_levels,
                1,
                1_000,
                d.max_topic_levels as i64,
            ) as usize,
            max_packet_size: int(
                self,
                "max_packet_size",
                &raw.max_packet_size,
                1024,
                268_435_455,
                i64::from(d.max_packet_size),
            ) as u32,
            max_inflight: int(
                self,
                "max_inflight",
                &raw.max_inflight,
                1,
                65_535,
                i64::from(d.max_inflight),
            ) as u16,
            max_queued: int(
                self,
                "max_queued",
                &raw.max_queued,
                1,
                10_000_000,
                d.max_queued as i64,
            ) as usize,
            message_expiry: self.duration(
                ctx,
                "message_expiry",
                raw.message_expiry.as_ref(),
                d.message_expiry,
            ),
            session_expiry: self.duration(
                ctx,
                "session_expiry",
                raw.session_expiry.as_ref(),
                d.session_expiry,
            ),
            max_publish_rate: int(
                self,
                "max_publish_rate",
                &raw.max_publish_rate,
                1,
                1_000_000,
                i64::from(d.max_publish_rate),
            ) as u32,
            tls,
        }
    }

    /// A socket address, or an error naming `key` with an example.
    pub(super) fn socket_address(
        &mut self,
        ctx: &str,
        key: &str,
        value: &Spanned<String>,
        example: &str,
    ) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let message = format!(
                    "{key} = \"{}\" is not an address, expected e.g. \"{example}\"",
                    value.get_ref()
                );
                self.error(value.span(), ctx, message);
                None
            }
        }
    }

    fn broker_user(&mut self, raw: &RawBrokerUser, base: &Path) -> BrokerUser {
        let name = raw.name.get_ref().clone();
        let ctx = format!("[[broker.user]] \"{name}\"");
        let secret = match (&raw.password_hash, &raw.password_file) {
            (Some(h), None) => {
                if !h.get_ref().starts_with("$7$") || h.get_ref().split('$').count() != 5 {
                    self.error(h.span(), &ctx, "password_hash is not a mosquitto_passwd hash, expected \"$7$<iterations>$<salt>$<hash>\" (make one with `mosquitto_passwd -c -b FILE USER PASSWORD`)".into());
                }
                Secret::Hash(h.get_ref().clone())
            }
            (None, Some(f)) => {
                let password = self.secret(&ctx, "password_file", f, base);
                if password.as_deref() == Some("") {
                    self.error(
                        f.span(),
                        &ctx,
                        format!(
                            "password_file = \"{}\" is empty, expected the user's password (an empty password would let anyone log in as {name})",
                            f.get_ref()
                        ),
                    );
                }
                Secret::Plain(password.unwrap_or_default())
            }
            (Some(h), Some(_)) => {
                self.error(
                    h.span(),
                    &ctx,
                    "give password_hash or password_file, not both".into(),
                );
                Secret::Hash(String::new())
            }
            (None, None) => {
                self.error(
                    raw.name.span(),
                    &ctx,
                    "a user needs password_hash or password_file".into(),
                );
                Secret::Hash(String::new())
            }
        };
        BrokerUser {
            name,
            secret,
            publish: raw
                .publish
                .as_ref()
                .map_or_else(Vec::new, |l| self.topic_filters(&ctx, "publish", l)),
            subscribe: raw
                .subscribe
                .as_ref()
                .map_or_else(Vec::new, |l| self.topic_filters(&ctx, "subscribe", l)),
        }
    }

    /// MQTT topic filters: `#` only last and alone in its level, `+` alone in its level.
    fn topic_filters(
        &mut self,
        ctx: &str,
        key: &str,
        list: &Spanned<Vec<Spanned<String>>>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for f in list.get_ref() {
            let levels: Vec<&str> = f.get_ref().split('/').collect();
            let bad = f.get_ref().is_empty()
                || levels.iter().enumerate().any(|(i, l)| {
                    (l.contains('#') && (*l != "#" || i + 1 != levels.len()))
                        || (l.contains('+') && *l != "+")
                });
            if bad {
                let message = format!(
                    "{key}: \"{}\" is not an MQTT topic filter (+ and # must fill a whole level, # only at the end)",
                    f.get_ref()
                );
                self.error(f.span(), ctx, message);
            } else {
                out.push(f.get_ref().clone());
            }
        }
        out
    }
}
