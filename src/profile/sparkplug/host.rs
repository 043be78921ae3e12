//! Following the primary host application's STATE (Sparkplug 3.0 §10 of the
//! shared digest): `spBv1.0/STATE/{host_id}` carries `{"online":bool,"timestamp":ms}`,
//! retained. An edge node with a primary host births only while that host is
//! online, and leaves a server on which it went offline.
//!
//! Sparkplug 2.2 hosts publish `ONLINE` / `OFFLINE` on `STATE/{host_id}`
//! instead, without timestamps. A node told to follow those too counts the
//! host online while either STATE says so: a retained 3.0 STATE left behind
//! by an older host installation must not undo a live 2.2 host's ONLINE.

use serde::Deserialize;

/// What a STATE message meant for the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostChange {
    /// The host is online (tck-id-message-flow-edge-node-birth-publish-phid-wait-online).
    Online,
    /// The host went offline (tck-id-operational-behavior-edge-node-termination-host-offline).
    Offline,
}

#[derive(Deserialize)]
struct State {
    online: bool,
    timestamp: u64,
}

/// The primary host's state as far as the node knows it.
#[derive(Debug, Clone, Default)]
pub struct PrimaryHost {
    /// Timestamp of the last 3.0 STATE accepted.
    last: Option<u64>,
    /// What the last 3.0 STATE said.
    online: bool,
    /// What the last 2.2 STATE said.
    legacy_online: bool,
}

impl PrimaryHost {
    /// Whether the last accepted STATE said online.
    pub fn is_online(&self) -> bool {
        self.online || self.legacy_online
    }

    /// Forgets the online state (the connection is gone; a new one gets the
    /// retained STATE again) but keeps the last timestamp, so an old STATE
    /// cannot undo a newer one.
    pub fn reset(&mut self) {
        self.online = false;
        self.legacy_online = false;
    }

    /// Takes in a STATE payload. The first is always accepted; later ones
    /// only with a timestamp no older than the last accepted
    /// (tck-id-message-flow-edge-node-birth-publish-phid-wait-timestamp,
    /// tck-id-operational-behavior-edge-node-termination-host-offline-timestamp).
    /// Anything that is not such a JSON object is ignored.
    pub fn observe(&mut self, payload: &[u8]) -> Option<HostChange> {
        let state: State = serde_json::from_slice(payload).ok()?;
        if self.last.is_some_and(|last| state.timestamp < last) {
            return None;
        }
        self.last = Some(state.timestamp);
        self.online = state.online;
        Some(self.change())
    }

    /// Takes in a Sparkplug 2.2 STATE payload: `ONLINE` or `OFFLINE`
    /// (surrounding space and case ignored); anything else is ignored.
    pub fn observe_legacy(&mut self, payload: &[u8]) -> Option<HostChange> {
        let text = std::str::from_utf8(payload).ok()?.trim();
        self.legacy_online = if text.eq_ignore_ascii_case("ONLINE") {
            true
        } else if text.eq_ignore_ascii_case("OFFLINE") {
            false
        } else {
            return None;
        };
        Some(self.change())
    }

    fn change(&self) -> HostChange {
        if self.is_online() {
            HostChange::Online
        } else {
            HostChange::Offline
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_state_counts_and_older_ones_are_ignored() {
        let mut host = PrimaryHost::default();
        assert_eq!(
            host.observe(br#"{"online":true,"timestamp":100}"#),
            Some(HostChange::Online)
        );
        assert_eq!(host.observe(br#"{"online":false,"timestamp":99}"#), None);
        assert!(host.is_online());
        assert_eq!(
            host.observe(br#"{"online":false,"timestamp":100}"#),
            Some(HostChange::Offline)
        );
        assert!(!host.is_online());
        assert_eq!(
            host.observe(br#"{"online":true,"timestamp":101}"#),
            Some(HostChange::Online)
        );
    }

    #[test]
    fn a_legacy_host_is_followed_and_either_state_saying_online_counts() {
        let mut host = PrimaryHost::default();
        assert_eq!(host.observe_legacy(b"ONLINE"), Some(HostChange::Online));
        assert_eq!(
            host.observe(br#"{"online":false,"timestamp":5}"#),
            Some(HostChange::Online),
            "a stale 3.0 STATE does not undo the live 2.2 host"
        );
        assert_eq!(
            host.observe_legacy(b" offline\n"),
            Some(HostChange::Offline)
        );
        assert!(!host.is_online());
        assert_eq!(host.observe_legacy(b"{\"online\":true}"), None);
        assert_eq!(host.observe_legacy(b"Online"), Some(HostChange::Online));
        host.reset();
        assert!(
            !host.is_online(),
            "a new connection waits for the retained STATE again"
        );
    }

    #[test]
    fn old_style_and_malformed_states_are_ignored() {
        let mut host = PrimaryHost::default();
        for bad in [
            &b"ONLINE"[..],
            b"{}",
            b"{\"online\":\"yes\",\"timestamp\":1}",
            b"\xff",
        ] {
            assert_eq!(host.observe(bad), None);
        }
        assert!(!host.is_online());
    }
}
