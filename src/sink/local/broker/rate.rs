//! How fast each local client may publish: a token bucket per client.
//!
//! rmqtt routes a message to its subscribers through unbounded channels, so a
//! subscriber that stops reading while another client floods would hold
//! every message in memory until its send timeout. Bounding what each client
//! may publish bounds that too; messages over the rate are dropped (an MQTT 5
//! QoS 1/2 sender is told "quota exceeded").

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a client that keeps going over the rate is reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The per-client publish budgets.
#[derive(Debug)]
pub struct PublishRate {
    per_second: f64,
    clients: HashMap<String, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Messages refused since the last report.
    refused: u64,
    reported: Option<Instant>,
}

/// What [`PublishRate::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the rate.
    Allowed,
    /// Over the rate; `report` carries the number refused since the last
    /// report when it is time to log again.
    Refused {
        /// Refused since the last report, when one is due.
        report: Option<u64>,
    },
}

impl PublishRate {
    /// Allows `per_second` messages a second per client, and bursts of as many.
    pub fn new(per_second: u32) -> PublishRate {
        PublishRate {
            per_second: f64::from(per_second.max(1)),
            clients: HashMap::new(),
        }
    }

    /// Whether `client` may publish one more message at `now`.
    pub fn admit(&mut self, client: &str, now: Instant) -> Admission {
        let per_second = self.per_second;
        let bucket = self
            .clients
            .entry(client.to_owned())
            .or_insert_with(|| Bucket {
                tokens: per_second,
                at: now,
                refused: 0,
                reported: None,
            });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(per_second);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Admission::Allowed;
        }
        bucket.refused += 1;
        let due = bucket
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= REPORT_EVERY);
        if !due {
            return Admission::Refused { report: None };
        }
        bucket.reported = Some(now);
        let refused = std::mem::take(&mut bucket.refused);
        Admission::Refused {
            report: Some(refused),
        }
    }

    /// The client is gone: its budget is forgotten.
    pub fn forget(&mut self, client: &str) {
        self.clients.remove(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(rate: &mut PublishRate, client: &str, n: usize, now: Instant) -> usize {
        (0..n)
            .filter(|_| rate.admit(client, now) == Admission::Allowed)
            .count()
    }

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let mut rate = PublishRate::new(100);
        let t0 = Instant::now();
        assert_eq!(allowed(&mut rate, "a", 250, t0), 100);
        let half = t0 + Duration::from_millis(500);
        assert_eq!(allowed(&mut rate, "a", 250, half), 50);
        assert_eq!(
            allowed(&mut rate, "b", 10, half),
            10,
            "each client has its own budget"
        );
        let later = half + Duration::from_secs(60);
        assert_eq!(
            allowed(&mut rate, "a", 250, later),
            100,
            "an idle client saves up at most one second"
        );
    }

    #[test]
    fn refusals_are_reported_once_per_period_with_their_count() {
        let mut rate = PublishRate::new(1);
        let t0 = Instant::now();
        assert_eq!(rate.admit("a", t0), Admission::Allowed);
        assert_eq!(rate.admit("a", t0), Admission::Refused { report: Some(1) });
        for _ in 0..5 {
            assert_eq!(rate.admit("a", t0), Admission::Refused { report: None });
        }
        let t1 = t0 + REPORT_EVERY;
        assert_eq!(rate.admit("a", t1), Admission::Allowed);
        assert_eq!(rate.admit("a", t1), Admission::Refused { report: Some(6) });
    }

    #[test]
    fn a_forgotten_client_starts_afresh() {
        let mut rate = PublishRate::new(2);
        let t0 = Instant::now();
        assert_eq!(allowed(&mut rate, "a", 5, t0), 2);
        rate.forget("a");
        assert_eq!(allowed(&mut rate, "a", 5, t0), 2);
    }
}
