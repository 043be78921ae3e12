//! `[health]`: where the health endpoint and status page listen, and who
//! may read them from beyond this machine.

use std::net::SocketAddr;

use super::check::Checker;
use super::raw::RawHealth;

/// `[health]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The listening address.
    pub listen: SocketAddr,
    /// Anyone who reaches a non-loopback `listen` may read, without a login.
    pub allow_remote: bool,
}

impl Health {
    /// Whether requests from beyond this machine must log in as a local
    /// broker user: the listener reaches beyond loopback, and
    /// `allow_remote` does not open it to all.
    pub fn needs_login(&self) -> bool {
        !self.listen.ip().is_loopback() && !self.allow_remote
    }
}

impl Checker<'_> {
    /// `[health]`; a listener beyond loopback needs `allow_remote = true`
    /// or broker users to log in with (`users`: how many are configured).
    pub(super) fn health(&mut self, raw: &RawHealth, users: usize) -> Option<Health> {
        let listen = self.socket_address("[health]", "listen", &raw.listen, "127.0.0.1:9185")?;
        let health = Health {
            listen,
            allow_remote: raw.allow_remote.as_ref().is_some_and(|a| *a.get_ref()),
        };
        if health.needs_login() && users == 0 {
            let message = format!(
                "listen = \"{listen}\" serves the status page, /metrics and /healthz beyond this machine, expected either allow_remote = true (anyone who reaches the address may read them) or [[broker.user]] entries (remote readers then log in as one of them), or a loopback address such as \"127.0.0.1:{}\"",
                listen.port()
            );
            self.error(raw.listen.span(), "[health]", message);
        }
        Some(health)
    }
}
