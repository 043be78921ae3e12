//! Failed logins slow down the address they came from: each failure doubles
//! the wait before that address's next login is checked, up to a cap, so
//! guessing passwords is slow while other addresses are not slowed at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The wait after the first failure.
const FIRST: Duration = Duration::from_millis(100);
/// The longest wait.
const CAP: Duration = Duration::from_secs(4);
/// An address that has not failed for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Addresses remembered at most; beyond this the quiet ones are forgotten first.
const MAX_ADDRESSES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failed logins per client address.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    by_address: HashMap<IpAddr, Failures>,
}

impl LoginThrottle {
    /// How long a login from `address` waits before it is checked.
    pub fn delay(&self, address: IpAddr, now: Instant) -> Duration {
        match self.by_address.get(&address) {
            Some(f) if now.saturating_duration_since(f.last) < FORGET_AFTER => {
                let doublings = f.count.saturating_sub(1).min(16);
                FIRST.saturating_mul(1 << doublings).min(CAP)
            }
            _ => Duration::ZERO,
        }
    }

    /// A login from `address` failed.
    pub fn failed(&mut self, address: IpAddr, now: Instant) {
        if self.by_address.len() >= MAX_ADDRESSES && !self.by_address.contains_key(&address) {
            self.by_address
                .retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
            if self.by_address.len() >= MAX_ADDRESSES {
                let oldest = self
                    .by_address
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(a, _)| *a);
                if let Some(a) = oldest {
                    self.by_address.remove(&a);
                }
            }
        }
        let f = self.by_address.entry(address).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(f.last) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
    }

    /// A login from `address` succeeded: its failures are forgotten.
    pub fn succeeded(&mut self, address: IpAddr) {
        self.by_address.remove(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_doubles_the_wait_up_to_the_cap() {
        let mut t = LoginThrottle::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let now = Instant::now();
        assert_eq!(t.delay(a, now), Duration::ZERO);
        t.failed(a, now);
        assert_eq!(t.delay(a, now), FIRST);
        t.failed(a, now);
        assert_eq!(t.delay(a, now), FIRST * 2);
        for _ in 0..20 {
            t.failed(a, now);
        }
        assert_eq!(t.delay(a, now), CAP);
        assert_eq!(
            t.delay(b, now),
            Duration::ZERO,
            "other addresses unaffected"
        );
        t.succeeded(a);
        assert_eq!(t.delay(a, now), Duration::ZERO);
    }

    #[test]
    fn quiet_addresses_are_forgotten() {
        let mut t = LoginThrottle::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let now = Instant::now();
        t.failed(a, now);
        t.failed(a, now);
        let later = now + FORGET_AFTER;
        assert_eq!(t.delay(a, later), Duration::ZERO);
        t.failed(a, later);
        assert_eq!(t.delay(a, later), FIRST, "counting starts again");
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            t.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(t.by_address.len() <= MAX_ADDRESSES);
    }
}
