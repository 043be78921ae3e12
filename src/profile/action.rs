//! What a profile answers with, and the figures it is told about the gateway.

use crate::core::message::{Message, Qos};
use crate::core::write::{Rejection, Write};
use crate::ops::metrics::CounterSnapshot;

/// Something the publisher must do on a profile's behalf.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish a message.
    Publish(Message),
    /// Subscribe to these filters (one SUBSCRIBE packet; the answer is [`NodeProfile::subscribed`](super::NodeProfile::subscribed)).
    Subscribe(Vec<(String, Qos)>),
    /// Carry out a validated write.
    Write(Write),
    /// A command was refused; log and count it.
    Reject(Rejection),
    /// Leave this server (after what was published before) and continue with the next one.
    LeaveServer,
}

/// The gateway's own figures, reported as node metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Counters since start.
    pub counters: CounterSnapshot,
    /// Devices answering now.
    pub devices_online: u64,
    /// Samples waiting in the store-and-forward queue.
    pub samples_buffered: u64,
    /// Samples the queue lost (full, or disk errors) since start.
    pub samples_dropped: u64,
}
