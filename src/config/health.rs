//! `[health]`: where the health and metrics endpoint listens.

use std::net::SocketAddr;

use super::check::Checker;
use super::raw::RawHealth;

impl Checker<'_> {
    pub(super) fn health(&mut self, raw: &RawHealth) -> Option<SocketAddr> {
        self.socket_address("[health]", "listen", &raw.listen, "127.0.0.1:9185")
    }
}
