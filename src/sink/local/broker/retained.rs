//! What local clients may leave retained: a cap on the number of retained
//! topics and on their payload bytes, so the retained store cannot grow
//! without bound. Pure: the publish hook asks before a retained message is
//! stored; a message over the cap is delivered but not retained.

use std::collections::HashMap;

/// The retained payloads local clients left, per topic.
#[derive(Debug)]
pub struct RetainedBudget {
    max_count: usize,
    max_bytes: usize,
    bytes: usize,
    topics: HashMap<String, usize>,
}

impl RetainedBudget {
    /// At most `max_count` topics and `max_bytes` of payload and topic.
    pub fn new(max_count: usize, max_bytes: usize) -> RetainedBudget {
        RetainedBudget {
            max_count,
            max_bytes,
            bytes: 0,
            topics: HashMap::new(),
        }
    }

    /// Whether a retained message of `payload` bytes may replace what
    /// `topic` retains; if so it is accounted. An empty payload clears the
    /// topic and is always allowed.
    pub fn admit(&mut self, topic: &str, payload: usize) -> bool {
        let old = self.topics.get(topic).copied();
        if payload == 0 {
            if let Some(old) = old {
                self.topics.remove(topic);
                self.bytes -= old;
            }
            return true;
        }
        let size = payload + topic.len();
        if old.is_none() && self.topics.len() >= self.max_count {
            return false;
        }
        let bytes = self.bytes - old.unwrap_or(0) + size;
        if bytes > self.max_bytes {
            return false;
        }
        self.bytes = bytes;
        self.topics.insert(topic.to_owned(), size);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_bytes_are_capped_and_clearing_frees_them() {
        let mut r = RetainedBudget::new(2, 100);
        assert!(r.admit("a", 10));
        assert!(r.admit("b", 10));
        assert!(!r.admit("c", 1), "a third topic is over the count");
        assert!(r.admit("a", 80), "replacing within the bytes");
        assert!(!r.admit("b", 80), "replacing over the bytes");
        assert!(r.admit("a", 0));
        assert!(r.admit("c", 1), "a cleared topic frees its place");
        assert!(r.admit("nothing-here", 0));
    }
}
