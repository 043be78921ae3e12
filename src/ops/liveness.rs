//! Whether the gateway's long-running tasks are making progress: what the
//! systemd watchdog and `/healthz` go by.
//!
//! Each task holds a [`Pulse`] and, before every wait or piece of work,
//! promises when it will be back (the next due poll, a transaction's timeout,
//! its next tick). A task that misses its promise by more than [`GRACE`] is
//! stuck: blocked on a full channel behind a wedged consumer, or in a
//! transaction that outlived its timeout. A task that sleeps as planned is
//! healthy however long the sleep, so an offline device retried once a
//! minute never looks stuck. A device that does not answer is not a health
//! problem either: that is reported per device, and restarting the gateway
//! would not make it answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How late a task may be on its promise before it counts as stuck. Generous:
/// a loaded two-core board must not be restarted by its own watchdog.
pub const GRACE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Promise {
    name: String,
    /// Milliseconds after the registry's origin by which the task reports again.
    due_ms: AtomicU64,
}

/// The registry of pulses.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    promises: Mutex<Vec<Weak<Promise>>>,
}

/// One task's promise to come back; dropped when the task ends.
#[derive(Debug)]
pub struct Pulse {
    origin: Instant,
    promise: Arc<Promise>,
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness {
            origin: Instant::now(),
            promises: Mutex::new(Vec::new()),
        }
    }
}

impl Liveness {
    /// A pulse for the task `name`, due within [`GRACE`] of now.
    pub fn pulse(&self, name: impl Into<String>) -> Pulse {
        let pulse = Pulse {
            origin: self.origin,
            promise: Arc::new(Promise {
                name: name.into(),
                due_ms: AtomicU64::new(0),
            }),
        };
        pulse.within(Duration::ZERO);
        if let Ok(mut promises) = self.promises.lock() {
            promises.retain(|p| p.strong_count() > 0);
            promises.push(Arc::downgrade(&pulse.promise));
        }
        pulse
    }

    /// The tasks that are more than [`GRACE`] late at `now`, by name.
    pub fn stuck_at(&self, now: Instant) -> Vec<String> {
        let now_ms = ms_since(self.origin, now);
        let Ok(promises) = self.promises.lock() else {
            return vec!["liveness registry (poisoned)".to_owned()];
        };
        promises
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|p| p.due_ms.load(Ordering::Relaxed) < now_ms)
            .map(|p| p.name.clone())
            .collect()
    }

    /// The tasks that are stuck now.
    pub fn stuck(&self) -> Vec<String> {
        self.stuck_at(Instant::now())
    }
}

impl Pulse {
    /// The task will be back within `wait` (plus [`GRACE`]).
    pub fn within(&self, wait: Duration) {
        let due = ms_since(self.origin, Instant::now())
            .saturating_add(u64::try_from((wait + GRACE).as_millis()).unwrap_or(u64::MAX));
        self.promise.due_ms.store(due, Ordering::Relaxed);
    }

    /// The task will be back by `at` (plus [`GRACE`]).
    pub fn by(&self, at: tokio::time::Instant) {
        self.within(at.saturating_duration_since(tokio::time::Instant::now()));
    }
}

fn ms_since(origin: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_late_on_its_promise_is_stuck_and_one_that_ended_is_forgotten() {
        let liveness = Liveness::default();
        let poller = liveness.pulse("bus rs485");
        let uplink = liveness.pulse("uplink");
        poller.within(Duration::from_secs(60));
        let now = Instant::now();
        assert!(liveness.stuck_at(now).is_empty());
        let later = now + GRACE + Duration::from_secs(1);
        assert_eq!(liveness.stuck_at(later), vec!["uplink".to_owned()]);
        let much_later = now + GRACE + Duration::from_secs(61);
        assert_eq!(liveness.stuck_at(much_later).len(), 2);
        drop(uplink);
        assert_eq!(
            liveness.stuck_at(much_later),
            vec!["bus rs485".to_owned()],
            "a task that ended is not checked"
        );
        drop(poller);
        let _next = liveness.pulse("next");
        assert_eq!(liveness.promises.lock().map(|p| p.len()).unwrap_or(0), 1);
    }
}
