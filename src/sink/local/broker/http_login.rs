//! The status page's logins: HTTP basic auth over the local broker's users.
//! One user table for both doors, so a technician has one password, a
//! reload that removes a user locks them out of both, and guessing is
//! slowed down per address whichever door it comes through.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha512};

use super::access::AccessRules;
use super::gate::lock;
use super::throttle::LoginThrottle;
use crate::config::LocalBrokerSettings;
use crate::ops::health::Gatekeeper;

/// Logins remembered at most; beyond this the memory starts afresh.
const MAX_REMEMBERED: usize = 64;

/// Checks `Authorization: Basic` headers against the broker's users.
#[derive(Debug)]
pub struct HttpLogin {
    rules: Arc<RwLock<Arc<AccessRules>>>,
    throttle: Arc<Mutex<LoginThrottle>>,
    remembered: Mutex<Remembered>,
}

/// Headers that logged in under one version of the rules, by digest: a
/// page polling once a second costs one password hashing, not one a
/// second, and no password is kept in the clear.
#[derive(Debug, Default)]
struct Remembered {
    rules: Option<Arc<AccessRules>>,
    digests: HashSet<[u8; 64]>,
}

impl HttpLogin {
    /// Logins over the rules in `rules` (replaced by reloads), failures
    /// counted in `throttle`.
    pub fn new(
        rules: Arc<RwLock<Arc<AccessRules>>>,
        throttle: Arc<Mutex<LoginThrottle>>,
    ) -> HttpLogin {
        HttpLogin {
            rules,
            throttle,
            remembered: Mutex::new(Remembered::default()),
        }
    }

    /// Logins over `settings`' users, when the broker itself does not run.
    pub fn standalone(settings: &LocalBrokerSettings) -> HttpLogin {
        HttpLogin::new(
            Arc::new(RwLock::new(Arc::new(AccessRules::new(settings)))),
            Arc::default(),
        )
    }

    /// Whether `authorization` holds a user name and password that log in.
    fn check(&self, authorization: &str) -> bool {
        let rules = Arc::clone(&self.rules.read().unwrap_or_else(|e| e.into_inner()));
        let digest: [u8; 64] = Sha512::digest(authorization.as_bytes()).into();
        {
            let mut remembered = lock(&self.remembered);
            let current = remembered
                .rules
                .as_ref()
                .is_some_and(|r| Arc::ptr_eq(r, &rules));
            if !current {
                *remembered = Remembered {
                    rules: Some(Arc::clone(&rules)),
                    digests: HashSet::new(),
                };
            } else if remembered.digests.contains(&digest) {
                return true;
            }
        }
        let Some((user, password)) = basic_credentials(authorization) else {
            return false;
        };
        if !rules.login(Some(&user), Some(&password)) {
            return false;
        }
        let mut remembered = lock(&self.remembered);
        if remembered.digests.len() >= MAX_REMEMBERED {
            remembered.digests.clear();
        }
        remembered.digests.insert(digest);
        true
    }
}

impl Gatekeeper for HttpLogin {
    fn delay(&self, peer: IpAddr) -> Duration {
        lock(&self.throttle).delay(peer, Instant::now())
    }

    fn admits(&self, peer: IpAddr, authorization: &str) -> bool {
        let ok = self.check(authorization);
        let mut throttle = lock(&self.throttle);
        if ok {
            throttle.succeeded(peer);
        } else {
            throttle.failed(peer, Instant::now());
        }
        ok
    }
}

/// The user name and password of a `Basic` authorization (RFC 7617).
fn basic_credentials(authorization: &str) -> Option<(String, Vec<u8>)> {
    let (scheme, encoded) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BrokerUser, Secret};

    fn header(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    fn login() -> HttpLogin {
        let settings = LocalBrokerSettings {
            allow_anonymous: true,
            users: vec![BrokerUser {
                name: "tech".into(),
                secret: Secret::Plain("s3cret:with colon".into()),
                publish: Vec::new(),
                subscribe: Vec::new(),
            }],
            ..LocalBrokerSettings::default()
        };
        HttpLogin::standalone(&settings)
    }

    #[test]
    fn only_a_configured_user_with_the_right_password_gets_in() {
        let login = login();
        let peer = IpAddr::from([192, 0, 2, 7]);
        assert!(login.admits(peer, &header("tech", "s3cret:with colon")));
        assert!(
            login.admits(peer, &header("tech", "s3cret:with colon")),
            "remembered"
        );
        assert!(!login.admits(peer, &header("tech", "wrong")));
        assert!(!login.admits(peer, &header("nobody", "s3cret:with colon")));
        assert!(
            !login.admits(peer, &header("", "")),
            "anonymous broker access is no login"
        );
        assert!(!login.admits(peer, "Bearer abc"));
        assert!(!login.admits(peer, "Basic ***"));
        assert!(
            login.delay(peer) > Duration::ZERO,
            "failures slow the address down"
        );
        assert_eq!(login.delay(IpAddr::from([192, 0, 2, 8])), Duration::ZERO);
    }

    #[test]
    fn a_reload_that_changes_the_users_forgets_remembered_logins() {
        let login = login();
        let peer = IpAddr::from([192, 0, 2, 7]);
        let good = header("tech", "s3cret:with colon");
        assert!(login.admits(peer, &good));
        *login.rules.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(AccessRules::new(&LocalBrokerSettings::default()));
        assert!(!login.admits(peer, &good), "the user was removed");
    }
}
