//! An MQTT message as the profiles produce it, and its quality of service.

/// MQTT quality of service of a publish or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Qos {
    /// At most once: fire and forget.
    #[default]
    AtMostOnce,
    /// At least once: acknowledged, may be duplicated.
    AtLeastOnce,
    /// Exactly once: four-way handshake.
    ExactlyOnce,
}

impl Qos {
    /// The level as on the wire.
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

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
