//! fieldmq patch: connections that have not completed CONNECT yet, capped in
//! all and per client address, so idle or slow sockets cannot exhaust the
//! process's file descriptors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Limits fieldmq adds to rmqtt's own.
#[derive(Debug, Clone, Copy)]
pub struct ExtraLimits {
    /// Connections that have not completed CONNECT, in all (0: no limit).
    pub max_pending: usize,
    /// The same, from one client address (0: no limit).
    pub max_pending_per_address: usize,
    /// Bytes queued for one client (0: no limit).
    pub max_queued_bytes: usize,
    /// Bytes queued for all clients together (0: no limit).
    pub max_queued_bytes_total: usize,
}

impl Default for ExtraLimits {
    fn default() -> Self {
        Self { max_pending: 0, max_pending_per_address: 0, max_queued_bytes: 0, max_queued_bytes_total: 0 }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// The connections still in their handshake.
#[derive(Clone, Default)]
pub struct PendingConnections {
    counts: Arc<Mutex<Counts>>,
}

/// One admitted pending connection; dropping it frees its place.
pub struct PendingGuard {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
}

impl PendingConnections {
    /// A place for a new connection from `address`, unless a limit is reached.
    pub fn admit(&self, address: IpAddr, limits: &ExtraLimits) -> Option<PendingGuard> {
        let mut counts = self.counts.lock();
        let from_address = counts.per_address.get(&address).copied().unwrap_or(0);
        if (limits.max_pending > 0 && counts.total >= limits.max_pending)
            || (limits.max_pending_per_address > 0 && from_address >= limits.max_pending_per_address)
        {
            return None;
        }
        counts.total += 1;
        counts.per_address.insert(address, from_address + 1);
        Some(PendingGuard { counts: self.counts.clone(), address })
    }

    /// Connections still in their handshake.
    pub fn count(&self) -> usize {
        self.counts.lock().total
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

/// A connection let in to complete its handshake by `deadline`.
pub struct Admission {
    /// Its place among the pending connections, freed once CONNECT is done.
    pub place: PendingGuard,
    /// When the whole handshake, CONNECT included, must be done.
    pub deadline: std::time::Instant,
}

impl Admission {
    /// The time left for the handshake.
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(std::time::Instant::now())
    }
}
