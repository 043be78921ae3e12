//! Exponential backoff with jitter, for reconnects and offline devices.
//!
//! Jitter spreads the retries of many gateways (or many devices) that failed
//! together, so a broker or a serial server that comes back is not hit by all
//! of them at the same instant.

use std::time::Duration;

/// The delays between successive retries: doubling from `base` up to `max`, each ±20 %.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `max` (before jitter).
    pub fn new(base: Duration, max: Duration) -> Backoff {
        let base = base.min(max);
        Backoff {
            base,
            max,
            next: base,
        }
    }

    /// The next delay, with jitter; the one after it is twice as long, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        nominal.mul_f64(0.8 + 0.4 * fastrand::f64())
    }

    /// Back to `base`, after a success.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_the_jitter_band() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let nominal = [100u64, 200, 400, 800, 1000, 1000];
        for n in nominal {
            let d = b.next_delay().as_secs_f64() * 1000.0;
            let n = n as f64;
            assert!(d >= n * 0.8 - 1e-6 && d <= n * 1.2 + 1e-6, "{d} vs {n}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
