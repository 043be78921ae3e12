//! Contact bounce filtering: a new level counts once it has held, without
//! another edge, for the debounce period.
//!
//! Dry contacts and reed switches chatter for a few milliseconds when they
//! switch; each chatter edge would otherwise be a change (or a pulse). The
//! filter is fed the raw edges and says when the line has settled.

use std::time::{Duration, Instant};

/// The debounced state of one input line.
#[derive(Debug, Clone)]
pub struct Debouncer {
    period: Duration,
    stable: bool,
    /// A level seen after the last edge, and when.
    pending: Option<(bool, Instant)>,
}

impl Debouncer {
    /// A line at `level` whose changes must hold for `period`.
    pub fn new(level: bool, period: Duration) -> Debouncer {
        Debouncer {
            period,
            stable: level,
            pending: None,
        }
    }

    /// The last settled level.
    pub fn level(&self) -> bool {
        self.stable
    }

    /// The line was seen at `level` at `at` (after an edge). Every edge
    /// restarts the wait; a bounce back to the settled level cancels it.
    pub fn edge(&mut self, level: bool, at: Instant) {
        self.pending = (level != self.stable).then_some((level, at));
    }

    /// When the pending level will have held long enough, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.map(|(_, at)| at + self.period)
    }

    /// Accepts the pending level if it has held until `now`; returns the new
    /// settled level when it changed.
    pub fn settle(&mut self, now: Instant) -> Option<bool> {
        let (level, _) = self.pending?;
        if self.deadline().is_some_and(|due| now < due) {
            return None;
        }
        self.pending = None;
        self.stable = level;
        Some(level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bouncing_edges_make_one_change_after_the_line_settles() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(false, 20 * MS);
        // A contact closing: on, off, on, off, on within 3 ms.
        for (i, level) in [true, false, true, false, true].into_iter().enumerate() {
            d.edge(level, t0 + MS * i as u32);
            assert_eq!(d.settle(t0 + MS * i as u32), None);
        }
        assert_eq!(d.deadline(), Some(t0 + 24 * MS));
        assert_eq!(d.settle(t0 + 23 * MS), None, "not before the period");
        assert_eq!(d.settle(t0 + 24 * MS), Some(true));
        assert_eq!(d.settle(t0 + 100 * MS), None, "one change only");
        assert!(d.level());
    }

    #[test]
    fn a_glitch_shorter_than_the_period_is_no_change() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(false, 20 * MS);
        d.edge(true, t0);
        d.edge(false, t0 + 5 * MS);
        assert_eq!(d.deadline(), None);
        assert_eq!(d.settle(t0 + 50 * MS), None);
        assert!(!d.level());
    }

    #[test]
    fn without_a_period_every_edge_counts_at_once() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(true, Duration::ZERO);
        d.edge(false, t0);
        assert_eq!(d.settle(t0), Some(false));
        d.edge(true, t0);
        assert_eq!(d.settle(t0), Some(true));
    }
}
