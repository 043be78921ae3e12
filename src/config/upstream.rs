//! `[upstream]`: the MQTT server the gateway publishes to, how it logs in,
//! and which profile (Sparkplug B or plain JSON topics) it speaks there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::check::Checker;
use super::raw::RawUpstream;
use super::{Device, Node};

/// What the gateway publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Sparkplug B 3.0: protobuf births, data and deaths under `spBv1.0/`.
    Sparkplug,
    /// One JSON message per metric on a readable topic, for non-Sparkplug consumers.
    Plain,
}

/// One server of the `url`/`urls` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// As written, for messages.
    pub url: String,
    /// Host name or address (without IPv6 brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://`: TLS with certificate verification.
    pub tls: bool,
}

/// A client certificate and its key, for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// The plain profile's topic for a metric, with `{group_id}`, `{node_id}`,
/// `{device}` and `{metric}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate(String);

impl TopicTemplate {
    /// The placeholders a template may use.
    pub const PLACEHOLDERS: [&'static str; 4] = ["{group_id}", "{node_id}", "{device}", "{metric}"];

    /// The default, `{group_id}/{node_id}/{device}/{metric}`.
    pub fn standard() -> TopicTemplate {
        TopicTemplate("{group_id}/{node_id}/{device}/{metric}".into())
    }

    /// The topic of one metric.
    pub fn render(&self, node: &Node, device: &str, metric: &str) -> String {
        self.0
            .replace("{group_id}", &node.group_id)
            .replace("{node_id}", &node.node_id)
            .replace("{device}", device)
            .replace("{metric}", metric)
    }
}

/// `[upstream]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Servers in the order they are tried ("Next Server" on failure).
    pub servers: Vec<Server>,
    /// CA certificates (PEM) that sign the servers' certificates; the system's roots when absent.
    pub ca_file: Option<PathBuf>,
    /// For mutual TLS.
    pub client_certificate: Option<ClientCertificate>,
    /// MQTT user name.
    pub username: Option<String>,
    /// MQTT password (read from `password_file` when given there).
    pub password: Option<String>,
    /// MQTT client id; the node id unless set.
    pub client_id: String,
    /// MQTT keep-alive; a dead link is noticed within 1.5 times this.
    pub keep_alive: Duration,
    /// While data flows, how often a PINGREQ asks the server to prove what it
    /// received; what is unproven when the link drops is sent again.
    pub confirm_interval: Duration,
    /// Longest wait between reconnection attempts (the wait doubles from 0.5 s up to this).
    pub max_backoff: Duration,
    /// `false` asks the server to keep the session (subscriptions, queued QoS 1/2 commands) across disconnects.
    pub clean_session: bool,
    /// Largest MQTT packet sent or accepted, in bytes.
    pub max_packet_size: usize,
    /// Sparkplug primary host application id: births wait until it is online.
    pub primary_host: Option<String>,
    /// Also follow the host's Sparkplug 2.2 STATE (`STATE/<host>`, `ONLINE`/`OFFLINE`).
    pub primary_host_legacy: bool,
    /// The first connect after start, and the first after the server dropped
    /// the connection, wait a random time up to this: a fleet that restarts
    /// or loses its broker at one instant does not come back at one instant.
    pub connect_jitter: Duration,
    /// Sparkplug: rebirth requests within this time of the last rebirth are
    /// answered by one rebirth when it has passed.
    pub rebirth_min_interval: Duration,
    /// Sparkplug: how births and data are compressed.
    pub compression: Compression,
    /// Sparkplug: each model is a Template, each device of a model an instance of it.
    pub templates: bool,
    /// Sparkplug or plain.
    pub profile: Profile,
    /// Plain profile: the topic of each metric.
    pub topic_template: TopicTemplate,
    /// Plain profile: a value unchanged for this long is published again,
    /// for consumers that join late and get no retained message.
    pub republish: Option<Duration>,
}

/// Default MQTT keep-alive. Short enough that a dead link is noticed within
/// a minute, long enough not to matter on a cellular link.
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How often delivery is confirmed while data flows. A confirmation is a
/// 2-byte PINGREQ and its 2-byte PINGRESP (about 66 bytes each way with
/// TCP/IP and TLS framing when they travel alone): 2 a second cost under
/// 140 B/s each way, about 10 % of three devices' DDATA at 4 Hz and under
/// 1 % of a hundred devices'. In return what may be sent twice after a link
/// loss is at most the last 0.5 s (plus one round trip) of data.
const DEFAULT_CONFIRM_INTERVAL: Duration = Duration::from_millis(500);
/// Below this a confirmation costs more than the duplicates it saves.
const MIN_CONFIRM_INTERVAL: Duration = Duration::from_millis(50);
/// How Sparkplug births and data are compressed (Tahu's wrapper payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain payloads.
    #[default]
    None,
    /// A gzip stream.
    Gzip,
    /// A zlib (deflate) stream.
    Deflate,
}

const COMPRESSIONS: [(&str, Compression); 3] = [
    ("none", Compression::None),
    ("gzip", Compression::Gzip),
    ("deflate", Compression::Deflate),
];

/// Default connect jitter: a few seconds spread a fleet's reconnects over
/// the broker's accept queue without delaying one gateway noticeably.
const DEFAULT_CONNECT_JITTER: Duration = Duration::from_secs(2);
/// Default least time between two rebirths.
pub const DEFAULT_REBIRTH_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts unless configured.
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Large enough for the birth of a few thousand metrics; rumqttc's own
/// default (10 KiB) would silently kill the connection on a large NBIRTH.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024;
/// The MQTT 3.1.1 limit on a packet's remaining length.
const MQTT_MAX_PACKET_SIZE: i64 = 268_435_455;
const PROFILES: [(&str, Profile); 2] =
    [("sparkplug", Profile::Sparkplug), ("plain", Profile::Plain)];

impl<'a> Checker<'a> {
    pub(super) fn upstream(&mut self, raw: &RawUpstream, node: &Node, base: &Path) -> Upstream {
        let ctx = "[upstream]";
        let servers = self.servers(raw);
        let tls = servers.iter().any(|s| s.tls);
        let file = |checker: &mut Self, key: &str, value: &Option<Spanned<String>>| {
            let value = value.as_ref()?;
            if !tls {
                checker.error(
                    value.span(),
                    ctx,
                    format!("{key} applies only to mqtts:// servers"),
                );
            }
            Some(checker.existing_file(ctx, key, value, base))
        };
        let ca_file = file(self, "ca_file", &raw.ca_file);
        let cert_file = file(self, "cert_file", &raw.cert_file);
        let key_file = file(self, "key_file", &raw.key_file);
        let client_certificate = match (cert_file, key_file, &raw.cert_file, &raw.key_file) {
            (Some(cert_file), Some(key_file), _, _) => Some(ClientCertificate {
                cert_file,
                key_file,
            }),
            (Some(_), None, Some(given), _) | (None, Some(_), _, Some(given)) => {
                self.error(
                    given.span(),
                    ctx,
                    "cert_file and key_file go together: mutual TLS needs both".into(),
                );
                None
            }
            _ => None,
        };
        let password = match (&raw.password, &raw.password_file) {
            (Some(_), Some(file)) => {
                self.error(
                    file.span(),
                    ctx,
                    "password and password_file are alternatives; give one".into(),
                );
                None
            }
            (Some(p), None) => Some(p.get_ref().clone()),
            (None, Some(file)) => self.secret(ctx, "password_file", file, base),
            (None, None) => None,
        };
        if let (Some(p), None) = (&raw.password, &raw.username) {
            self.error(p.span(), ctx, "a password needs a username".into());
        }
        let client_id = match &raw.client_id {
            Some(id) if id.get_ref().is_empty() => {
                self.error(id.span(), ctx, "client_id must not be empty".into());
                node.node_id.clone()
            }
            Some(id) => id.get_ref().clone(),
            None => node.node_id.clone(),
        };
        let keep_alive = self.duration(
            ctx,
            "keep_alive",
            raw.keep_alive.as_ref(),
            DEFAULT_KEEP_ALIVE,
        );
        if let Some(k) = &raw.keep_alive
            && keep_alive > Duration::from_secs(u64::from(u16::MAX))
        {
            self.error(
                k.span(),
                ctx,
                "keep_alive must be at most 65535s, the MQTT limit".into(),
            );
        }
        if let Some(k) = &raw.keep_alive
            && keep_alive < Duration::from_secs(1)
        {
            self.error(
                k.span(),
                ctx,
                "keep_alive must be at least 1s; MQTT counts it in whole seconds".into(),
            );
        }
        let confirm_interval = self.duration(
            ctx,
            "confirm_interval",
            raw.confirm_interval.as_ref(),
            DEFAULT_CONFIRM_INTERVAL,
        );
        if let Some(c) = &raw.confirm_interval
            && !(MIN_CONFIRM_INTERVAL..=keep_alive).contains(&confirm_interval)
        {
            self.error(
                c.span(),
                ctx,
                format!(
                    "confirm_interval must be between 50ms and keep_alive ({}s): the keep-alive's own pings confirm at least that often",
                    keep_alive.as_secs()
                ),
            );
        }
        let max_backoff = self.duration(
            ctx,
            "max_backoff",
            raw.max_backoff.as_ref(),
            DEFAULT_MAX_BACKOFF,
        );
        let profile = raw
            .profile
            .as_ref()
            .and_then(|p| self.choice(ctx, "profile", p, &PROFILES))
            .unwrap_or(Profile::Sparkplug);
        let clean_session = raw.clean_session.as_ref().is_none_or(|c| *c.get_ref());
        if let (Profile::Sparkplug, Some(c)) = (profile, &raw.clean_session)
            && !clean_session
        {
            self.error(c.span(), ctx, "Sparkplug B requires clean_session = true (tck-id-principles-persistence-clean-session-311); a persistent session is for profile = \"plain\"".into());
        }
        if let Some(host) = &raw.primary_host {
            self.topic_id(ctx, "primary_host", host);
            if profile == Profile::Plain {
                self.error(
                    host.span(),
                    ctx,
                    "primary_host applies only to profile = \"sparkplug\"".into(),
                );
            }
        }
        let primary_host_legacy = raw.primary_host_legacy.as_ref().is_some_and(|l| {
            if *l.get_ref() && raw.primary_host.is_none() {
                self.error(
                    l.span(),
                    ctx,
                    "primary_host_legacy needs primary_host = \"<host id>\"".into(),
                );
            }
            *l.get_ref()
        });
        let connect_jitter = self
            .any_duration(ctx, "connect_jitter", raw.connect_jitter.as_ref())
            .unwrap_or(DEFAULT_CONNECT_JITTER);
        if let Some(j) = &raw.connect_jitter
            && connect_jitter > Duration::from_secs(300)
        {
            self.error(j.span(), ctx, "connect_jitter must be at most 5m".into());
        }
        let rebirth_min_interval = self
            .any_duration(
                ctx,
                "rebirth_min_interval",
                raw.rebirth_min_interval.as_ref(),
            )
            .unwrap_or(DEFAULT_REBIRTH_MIN_INTERVAL);
        if let Some(r) = &raw.rebirth_min_interval {
            if profile == Profile::Plain {
                self.error(
                    r.span(),
                    ctx,
                    "rebirth_min_interval applies only to profile = \"sparkplug\"".into(),
                );
            } else if rebirth_min_interval > Duration::from_secs(60) {
                self.error(
                    r.span(),
                    ctx,
                    "rebirth_min_interval must be at most 1m".into(),
                );
            }
        }
        let compression = raw
            .compression
            .as_ref()
            .and_then(|c| {
                let chosen = self.choice(ctx, "compression", c, &COMPRESSIONS)?;
                if profile == Profile::Plain && chosen != Compression::None {
                    self.error(
                        c.span(),
                        ctx,
                        "compression applies only to profile = \"sparkplug\"".into(),
                    );
                }
                Some(chosen)
            })
            .unwrap_or_default();
        let templates = raw.templates.as_ref().is_some_and(|t| {
            if *t.get_ref() && profile == Profile::Plain {
                self.error(
                    t.span(),
                    ctx,
                    "templates applies only to profile = \"sparkplug\"".into(),
                );
            }
            *t.get_ref()
        });
        let republish = raw.republish.as_ref().and_then(|r| {
            if profile == Profile::Sparkplug {
                self.error(r.span(), ctx, "republish applies only to profile = \"plain\"; Sparkplug births carry the current values".into());
            }
            let period = self.any_duration(ctx, "republish", Some(r))?;
            if period < Duration::from_secs(1) {
                self.error(r.span(), ctx, "republish must be at least 1s".into());
            }
            Some(period)
        });
        let topic_template = match &raw.topic_template {
            Some(t) => {
                if profile == Profile::Sparkplug {
                    self.error(t.span(), ctx, "topic_template applies only to profile = \"plain\"; Sparkplug topics are fixed by the specification".into());
                }
                self.template(ctx, t)
            }
            None => TopicTemplate::standard(),
        };
        Upstream {
            servers,
            ca_file,
            client_certificate,
            username: raw.username.as_ref().map(|u| u.get_ref().clone()),
            password,
            client_id,
            keep_alive,
            confirm_interval,
            max_backoff,
            clean_session,
            max_packet_size: raw
                .max_packet_size
                .as_ref()
                .and_then(|v| self.int(ctx, "max_packet_size", v, 1024, MQTT_MAX_PACKET_SIZE))
                .unwrap_or(DEFAULT_MAX_PACKET_SIZE),
            primary_host: raw.primary_host.as_ref().map(|h| h.get_ref().clone()),
            primary_host_legacy,
            connect_jitter,
            rebirth_min_interval,
            compression,
            templates,
            republish,
            profile,
            topic_template,
        }
    }

    fn servers(&mut self, raw: &RawUpstream) -> Vec<Server> {
        let ctx = "[upstream]";
        let written: Vec<&Spanned<String>> = match (&raw.url, &raw.urls) {
            (Some(url), Some(urls)) => {
                self.error(
                    urls.span(),
                    ctx,
                    "url and urls are alternatives; list every server in urls".into(),
                );
                vec![url]
            }
            (Some(url), None) => vec![url],
            (None, Some(urls)) if urls.get_ref().is_empty() => {
                self.error(
                    urls.span(),
                    ctx,
                    "urls must list at least one server".into(),
                );
                Vec::new()
            }
            (None, Some(urls)) => urls.get_ref().iter().collect(),
            (None, None) => {
                let line = self.section_line("[upstream]");
                self.error_at(
                    line,
                    ctx,
                    "needs url = \"mqtt://host:1883\" (or urls = [...])".into(),
                );
                Vec::new()
            }
        };
        written
            .into_iter()
            .filter_map(|url| match parse_url(url.get_ref()) {
                Ok(server) => Some(server),
                Err(why) => {
                    self.error(url.span(), ctx, why);
                    None
                }
            })
            .collect()
    }

    fn template(&mut self, ctx: &str, raw: &Spanned<String>) -> TopicTemplate {
        let before = self.diagnostics.len();
        let template = self.check_template(ctx, raw);
        // Topic collisions of a broken template would only repeat its problem.
        self.broken_template = self.diagnostics.len() > before;
        template
    }

    fn check_template(&mut self, ctx: &str, raw: &Spanned<String>) -> TopicTemplate {
        let text = raw.get_ref();
        let mut rest = text.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open..];
            let close = after.find('}').map_or(after.len(), |c| c + 1);
            let placeholder = &after[..close];
            if !TopicTemplate::PLACEHOLDERS.contains(&placeholder) {
                let message = format!(
                    "topic_template has unknown placeholder {placeholder}, expected {}",
                    TopicTemplate::PLACEHOLDERS.join(", ")
                );
                self.error(raw.span(), ctx, message);
            }
            rest = &after[close..];
        }
        for needed in ["{device}", "{metric}"] {
            if !text.contains(needed) {
                self.error(
                    raw.span(),
                    ctx,
                    format!("topic_template must contain {needed}, or metrics would share topics"),
                );
            }
        }
        if let Some(c) = text
            .chars()
            .find(|c| matches!(c, '+' | '#') || c.is_control())
        {
            self.error(
                raw.span(),
                ctx,
                format!("topic_template contains {c:?}, which is not allowed in a topic name"),
            );
        }
        if text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            self.error(
                raw.span(),
                ctx,
                "topic_template has an empty topic level".into(),
            );
        }
        TopicTemplate(text.clone())
    }

    /// Plain topics must not collide: a metric topic that is also another
    /// metric's `/set` topic or a state topic would mix data and commands.
    pub(super) fn plain_topics(
        &mut self,
        node: &Node,
        template: &TopicTemplate,
        devices: &[Device],
        written: &[Vec<super::model::Entry<'a>>],
    ) {
        let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        seen.insert(
            format!("{}/{}/state", node.group_id, node.node_id),
            "the node state".into(),
        );
        for device in devices {
            seen.insert(
                format!("{}/{}/{}/state", node.group_id, node.node_id, device.name),
                format!("the state of device \"{}\"", device.name),
            );
        }
        for (device, entries) in devices.iter().zip(written) {
            for (metric, entry) in device.metrics.iter().zip(entries) {
                let topic = template.render(node, &device.name, &metric.name);
                let set = format!("{topic}/set");
                for (t, what) in [(topic, "topic"), (set, "/set topic")] {
                    let owner = format!("metric \"{}\" of device \"{}\"", metric.name, device.name);
                    if let Some(first) = seen.get(&t) {
                        let message = format!(
                            "{what} {t} is already {first}; rename the metric or change topic_template"
                        );
                        let ctx = format!("device \"{}\", metric \"{}\"", device.name, metric.name);
                        self.in_source(entry.source, |c| {
                            c.error(entry.raw.name.span(), &ctx, message);
                        });
                    } else {
                        let label = if what == "topic" {
                            format!("the topic of {owner}")
                        } else {
                            format!("the /set topic of {owner}")
                        };
                        seen.insert(t, label);
                    }
                }
            }
        }
    }

    /// A file that must exist; relative paths are taken from the config file's directory.
    pub(super) fn existing_file(
        &mut self,
        ctx: &str,
        key: &str,
        value: &Spanned<String>,
        base: &Path,
    ) -> PathBuf {
        let path = base.join(value.get_ref());
        if let Err(e) = std::fs::File::open(&path) {
            self.error(
                value.span(),
                ctx,
                format!(
                    "{key} = \"{}\": cannot read {}: {e}",
                    value.get_ref(),
                    path.display()
                ),
            );
        }
        path
    }

    pub(super) fn secret(
        &mut self,
        ctx: &str,
        key: &str,
        value: &Spanned<String>,
        base: &Path,
    ) -> Option<String> {
        let path = base.join(value.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) => {
                self.error(
                    value.span(),
                    ctx,
                    format!(
                        "{key} = \"{}\": cannot read {}: {e}",
                        value.get_ref(),
                        path.display()
                    ),
                );
                None
            }
        }
    }

    /// The line of a section header, for problems with no value to point at.
    pub(super) fn section_line(&self, header: &str) -> usize {
        self.source
            .text
            .lines()
            .position(|l| l.trim() == header)
            .map_or(1, |i| i + 1)
    }
}

/// `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (default 8883);
/// IPv6 addresses in brackets.
pub fn parse_url(url: &str) -> Result<Server, String> {
    let expected = "expected mqtt://host:port or mqtts://host:port";
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("url \"{url}\" has no scheme, {expected}"))?;
    let (tls, default_port) = match scheme {
        "mqtt" => (false, 1883),
        "mqtts" => (true, 8883),
        other => return Err(format!("url \"{url}\" has scheme \"{other}\", {expected}")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '@', '?', '#']) {
        return Err(format!(
            "url \"{url}\" has a path, user or query; {expected} (credentials go in username/password)"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("url \"{url}\" has an unclosed [ in its IPv6 address"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("url \"{url}\" has no host, {expected}"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("url \"{url}\" has port \"{p}\", expected 1..=65535"))?,
        None => default_port,
    };
    Ok(Server {
        url: url.to_owned(),
        host: host.to_owned(),
        port,
        tls,
    })
}
