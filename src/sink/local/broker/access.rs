//! Who may connect to the local broker and which topics they may use. Pure:
//! the broker's hooks ask, this answers.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Sha512;

use crate::config::{LocalBrokerSettings, Secret};

/// What one client may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rights {
    publish: Vec<String>,
    subscribe: Vec<String>,
}

/// The users and rules of `[broker]`.
#[derive(Debug, Clone)]
pub struct AccessRules {
    anonymous: Option<Rights>,
    users: HashMap<String, (Secret, Rights)>,
    /// Checked for an unknown user name, so that it costs the same hashing
    /// work as a wrong password and does not tell which names exist.
    decoy: Option<String>,
}

impl AccessRules {
    /// The rules `settings` describe.
    pub fn new(settings: &LocalBrokerSettings) -> AccessRules {
        AccessRules {
            anonymous: settings.allow_anonymous.then(|| Rights {
                publish: settings.anonymous_publish.clone(),
                subscribe: settings.anonymous_subscribe.clone(),
            }),
            users: settings
                .users
                .iter()
                .map(|u| {
                    let rights = Rights {
                        publish: u.publish.clone(),
                        subscribe: u.subscribe.clone(),
                    };
                    (u.name.clone(), (u.secret.clone(), rights))
                })
                .collect(),
            decoy: decoy_hash(settings),
        }
    }

    /// Whether a CONNECT with these credentials is let in.
    pub fn login(&self, user: Option<&str>, password: Option<&[u8]>) -> bool {
        match user {
            None => self.anonymous.is_some(),
            Some(name) => match self.users.get(name) {
                Some((secret, _)) => password.is_some_and(|p| match secret {
                    Secret::Hash(hash) => verify_hash(hash, p),
                    Secret::Plain(plain) => constant_time_eq(plain.as_bytes(), p),
                }),
                None => {
                    if let Some(decoy) = &self.decoy {
                        verify_hash(decoy, password.unwrap_or_default());
                    }
                    false
                }
            },
        }
    }

    /// Whether `user` is configured (or, for `None`, anonymous clients are let in).
    pub fn knows(&self, user: Option<&str>) -> bool {
        self.rights(user).is_some()
    }

    fn rights(&self, user: Option<&str>) -> Option<&Rights> {
        match user {
            None => self.anonymous.as_ref(),
            Some(name) => self.users.get(name).map(|(_, r)| r),
        }
    }

    /// Whether `user` may publish on `topic`.
    pub fn may_publish(&self, user: Option<&str>, topic: &str) -> bool {
        self.rights(user)
            .is_some_and(|r| r.publish.iter().any(|f| matches(f, topic)))
    }

    /// Whether `user` may subscribe to `filter`: everything it can match must be allowed.
    pub fn may_subscribe(&self, user: Option<&str>, filter: &str) -> bool {
        self.rights(user)
            .is_some_and(|r| r.subscribe.iter().any(|f| covers(f, filter)))
    }
}

/// MQTT topic matching; a filter starting with a wildcard does not match
/// `$`-topics (MQTT-4.7.2-1).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(t)) if l == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Whether every topic `requested` can match is matched by `allowed`.
pub fn covers(allowed: &str, requested: &str) -> bool {
    // A right to "#" or "+/…" does not extend to `$`-topics, as matching does not.
    if requested.starts_with('$') && (allowed.starts_with('+') || allowed.starts_with('#')) {
        return false;
    }
    let mut req = requested.split('/');
    for level in allowed.split('/') {
        match (level, req.next()) {
            ("#", _) => return true,
            ("+", Some(r)) if r != "#" => {}
            (l, Some(r)) if l == r && l != "+" => {}
            _ => return false,
        }
    }
    req.next().is_none()
}

/// Checks a `mosquitto_passwd` hash: `$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>`.
pub fn verify_hash(hash: &str, password: &[u8]) -> bool {
    let parts: Vec<&str> = hash.split('$').collect();
    let ["", "7", iterations, salt, expected] = parts.as_slice() else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(expected)) = (
        iterations.parse::<u32>(),
        STANDARD.decode(salt),
        STANDARD.decode(expected),
    ) else {
        return false;
    };
    if iterations == 0 || expected.is_empty() {
        return false;
    }
    let mut derived = vec![0u8; expected.len()];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut derived);
    constant_time_eq(&derived, &expected)
}

/// A hash no password matches, with the most iterations any user's hash
/// has; `None` when no user has a hash (plain passwords cost no hashing).
fn decoy_hash(settings: &LocalBrokerSettings) -> Option<String> {
    let iterations = settings
        .users
        .iter()
        .filter_map(|u| match &u.secret {
            Secret::Hash(h) => h.split('$').nth(2)?.parse::<u32>().ok(),
            Secret::Plain(_) => None,
        })
        .max()?;
    let mut salt = [0u8; 12];
    // A fixed salt would do as well: nothing is derived from it.
    getrandom::fill(&mut salt).ok()?;
    let salt = STANDARD.encode(salt);
    let key = STANDARD.encode([0u8; 64]);
    Some(format!("$7${iterations}${salt}${key}"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerUser;

    /// Made by `mosquitto_passwd -c -b pw alice secret`.
    const ALICE: &str = "$7$101$ZE3ynDDujAAWdLJ8$FJs5vlTv16jzQFAhLcDDZdKGWStcbeXo/2TJgnhCjArhaohuu0m4Z4cylhBNl7y6HLn5kot2DSlN4PYmWBxBAQ==";

    fn rules(allow_anonymous: bool) -> AccessRules {
        AccessRules::new(&LocalBrokerSettings {
            allow_anonymous,
            users: vec![
                BrokerUser {
                    name: "alice".into(),
                    secret: Secret::Hash(ALICE.into()),
                    publish: vec!["plant/gw/+/+/set".into()],
                    subscribe: vec!["plant/gw/meter/#".into()],
                },
                BrokerUser {
                    name: "hmi".into(),
                    secret: Secret::Plain("pw".into()),
                    publish: vec![],
                    subscribe: vec!["#".into()],
                },
            ],
            ..LocalBrokerSettings::default()
        })
    }

    #[test]
    fn mosquitto_passwd_hashes_and_password_files_are_checked() {
        let r = rules(false);
        assert!(r.login(Some("alice"), Some(b"secret")));
        assert!(!r.login(Some("alice"), Some(b"Secret")));
        assert!(!r.login(Some("alice"), None));
        assert!(r.login(Some("hmi"), Some(b"pw")));
        assert!(!r.login(Some("hmi"), Some(b"pw ")));
        assert!(!r.login(Some("mallory"), Some(b"secret")));
        assert!(!r.login(None, None), "anonymous refused");
        assert!(rules(true).login(None, None));
        assert!(!verify_hash("$6$x$y", b"secret"));
        assert!(!verify_hash("$7$0$ZE3y$FJs5", b"secret"));
    }

    #[test]
    fn rights_follow_the_filters() {
        let r = rules(true);
        assert!(r.may_publish(Some("alice"), "plant/gw/meter/power/set"));
        assert!(!r.may_publish(Some("alice"), "plant/gw/meter/power"));
        assert!(!r.may_publish(Some("hmi"), "plant/gw/meter/power/set"));
        assert!(
            !r.may_publish(None, "anything"),
            "anonymous publishes nothing by default"
        );
        assert!(r.may_subscribe(None, "#"));
        assert!(r.may_subscribe(Some("alice"), "plant/gw/meter/#"));
        assert!(r.may_subscribe(Some("alice"), "plant/gw/meter/+/x"));
        assert!(!r.may_subscribe(Some("alice"), "plant/gw/#"));
        assert!(!r.may_subscribe(Some("alice"), "plant/+/meter/x"));
        assert!(!r.may_subscribe(Some("alice"), "#"));
    }

    #[test]
    fn wildcards_match_per_level_and_not_dollar_topics() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/c/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(covers("a/#", "a/+/c"));
        assert!(!covers("a/b", "a/+"));
    }
}
