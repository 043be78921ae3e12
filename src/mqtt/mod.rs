//! The MQTT side's transport: one connection to the upstream server, kept up
//! forever, and the messages that travel over it.

pub mod connection;
pub mod options;

use crate::config::Qos;

/// A message to publish, as the profiles produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload bytes (protobuf for Sparkplug, JSON or text for plain).
    pub payload: Vec<u8>,
    /// Quality of service.
    pub qos: Qos,
    /// Whether the server keeps it for later subscribers.
    pub retain: bool,
}

impl Message {
    /// Bytes the PUBLISH packet takes on the wire at most: fixed header,
    /// topic, packet id and payload. Compared with the maximum packet size
    /// before publishing, because rumqttc fails the whole connection on an
    /// oversize packet instead of refusing the one message.
    pub fn wire_size(&self) -> usize {
        5 + 2 + self.topic.len() + 2 + self.payload.len()
    }
}
