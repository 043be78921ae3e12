//! Coalescing rebirth requests: a host (or several) that asks for a rebirth
//! many times a second gets one rebirth at once and at most one more when
//! the minimum interval has passed, not a birth storm (Tahu does the same).

/// When rebirths may happen. Times are milliseconds of the caller's clock.
#[derive(Debug, Clone, Default)]
pub struct RebirthGate {
    min_interval_ms: u64,
    /// When the last rebirth went out.
    last_ms: Option<u64>,
    /// A request arrived too soon after the last rebirth and waits.
    pending: bool,
}

impl RebirthGate {
    /// A gate allowing one rebirth per `min_interval_ms` (0: every request at once).
    pub fn new(min_interval_ms: u64) -> RebirthGate {
        RebirthGate {
            min_interval_ms,
            last_ms: None,
            pending: false,
        }
    }

    /// A rebirth was asked for at `now_ms`: `true` to rebirth now; `false`
    /// when it is folded into the one [`RebirthGate::due`] will allow.
    pub fn request(&mut self, now_ms: u64) -> bool {
        if self.allowed(now_ms) {
            self.done(now_ms);
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// Whether a folded request is due now; if so it counts as done.
    pub fn due(&mut self, now_ms: u64) -> bool {
        if self.pending && self.allowed(now_ms) {
            self.done(now_ms);
            true
        } else {
            false
        }
    }

    /// A birth went out for another reason (a new connection): requests
    /// waiting for it are answered by it.
    pub fn born(&mut self, now_ms: u64) {
        self.done(now_ms);
    }

    fn allowed(&self, now_ms: u64) -> bool {
        self.last_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= self.min_interval_ms)
    }

    fn done(&mut self, now_ms: u64) {
        self.last_ms = Some(now_ms);
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_requests_gives_one_rebirth_now_and_one_when_the_interval_has_passed() {
        let mut gate = RebirthGate::new(1000);
        let mut rebirths = 0;
        for ms in 0..1000u64 {
            if ms % 10 == 0 && gate.request(ms) {
                rebirths += 1;
            }
            if gate.due(ms) {
                rebirths += 1;
            }
        }
        assert_eq!(
            rebirths, 1,
            "100 requests within the first second: one rebirth"
        );
        assert!(
            gate.due(1000),
            "the folded requests get one rebirth after 1 s"
        );
        assert!(!gate.due(1001), "and only one");
        assert!(!gate.request(1500), "still too soon after that one");
        assert!(gate.due(2000));
        assert!(gate.request(3500), "a lone request later goes at once");
    }

    #[test]
    fn a_new_session_answers_waiting_requests_and_zero_interval_never_folds() {
        let mut gate = RebirthGate::new(1000);
        assert!(gate.request(0));
        assert!(!gate.request(10));
        gate.born(20);
        assert!(!gate.due(2000), "the new session's births answered it");
        let mut eager = RebirthGate::new(0);
        assert!(eager.request(5) && eager.request(5));
    }
}
