//! MQTT 5 shared subscriptions (`$share/{group}/{filter}`): each message
//! goes to one member of the group. rmqtt routes them but leaves the choice
//! to a plugin; without one it refuses them. This picks members in turn,
//! preferring connected ones.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::subscribe::SharedSubscription;
use rmqtt::types::{
    ClientId, Id, IsOnline, NodeId, SharedGroup, SubscriptionIdentifier, SubscriptionOptions,
    TopicName,
};

/// Round-robin over a group's members.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

/// Which of `online` (a group's members, whether each is connected, in
/// rmqtt's order) gets the next message, starting the search at `start`.
pub fn pick(start: usize, online: &[bool]) -> Option<(usize, bool)> {
    let n = online.len();
    if n == 0 {
        return None;
    }
    let first = start % n;
    (0..n)
        .map(|k| (first + k) % n)
        .find(|&i| online[i])
        .map(|i| (i, true))
        .or(Some((first, false)))
}

type Member = (
    NodeId,
    ClientId,
    SubscriptionOptions,
    Option<Vec<SubscriptionIdentifier>>,
    Option<IsOnline>,
);

#[async_trait]
impl SharedSubscription for RoundRobin {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &ServerContext,
        _group: &SharedGroup,
        _publisher: &Id,
        _topic: &TopicName,
        members: &[Member],
    ) -> Option<(usize, IsOnline)> {
        let online: Vec<bool> = members.iter().map(|m| m.4.unwrap_or(true)).collect();
        pick(self.next.fetch_add(1, Ordering::Relaxed), &online)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_take_turns_and_offline_ones_are_skipped() {
        assert_eq!(pick(0, &[]), None);
        assert_eq!(pick(0, &[true, true]), Some((0, true)));
        assert_eq!(pick(1, &[true, true]), Some((1, true)));
        assert_eq!(pick(5, &[true, true]), Some((1, true)));
        assert_eq!(pick(0, &[false, true]), Some((1, true)));
        assert_eq!(
            pick(1, &[false, false]),
            Some((1, false)),
            "with nobody connected, the message is queued for one member"
        );
    }
}
