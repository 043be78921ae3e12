//! Sparkplug topics: `spBv1.0/{group_id}/{message_type}/{edge_node_id}[/{device_id}]`
//! (spec: tck-id-topic-structure) and the host application's `spBv1.0/STATE/{host_id}`.

use std::fmt;

/// The namespace token of Sparkplug B (tck-id-topic-structure-namespace-a).
pub const NAMESPACE: &str = "spBv1.0";

/// The message types an edge node sends or receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Node birth certificate.
    NBirth,
    /// Node death certificate (the MQTT will).
    NDeath,
    /// Node data.
    NData,
    /// Command to the node.
    NCmd,
    /// Device birth certificate.
    DBirth,
    /// Device death certificate.
    DDeath,
    /// Device data.
    DData,
    /// Command to a device.
    DCmd,
}

impl MessageType {
    const ALL: [(MessageType, &'static str); 8] = [
        (MessageType::NBirth, "NBIRTH"),
        (MessageType::NDeath, "NDEATH"),
        (MessageType::NData, "NDATA"),
        (MessageType::NCmd, "NCMD"),
        (MessageType::DBirth, "DBIRTH"),
        (MessageType::DDeath, "DDEATH"),
        (MessageType::DData, "DDATA"),
        (MessageType::DCmd, "DCMD"),
    ];

    /// The topic token, e.g. `NBIRTH`.
    pub fn token(self) -> &'static str {
        MessageType::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("?", |(_, s)| s)
    }

    /// Whether topics of this type carry a device id (tck-id-topic-structure-namespace-device-id-*).
    pub fn is_device_scoped(self) -> bool {
        matches!(
            self,
            MessageType::DBirth | MessageType::DDeath | MessageType::DData | MessageType::DCmd
        )
    }
}

/// A parsed or to-be-published Sparkplug topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Group id.
    pub group_id: String,
    /// Message type.
    pub message_type: MessageType,
    /// Edge node id.
    pub node_id: String,
    /// Device id, exactly for device-scoped message types.
    pub device_id: Option<String>,
}

impl Topic {
    /// A node-scoped topic (NBIRTH, NDEATH, NDATA, NCMD).
    pub fn node(group_id: &str, message_type: MessageType, node_id: &str) -> Topic {
        Topic {
            group_id: group_id.to_owned(),
            message_type,
            node_id: node_id.to_owned(),
            device_id: None,
        }
    }

    /// A device-scoped topic (DBIRTH, DDEATH, DDATA, DCMD).
    pub fn device(
        group_id: &str,
        message_type: MessageType,
        node_id: &str,
        device_id: &str,
    ) -> Topic {
        Topic {
            device_id: Some(device_id.to_owned()),
            ..Topic::node(group_id, message_type, node_id)
        }
    }

    /// Parses a topic; `None` for anything that is not a well-formed edge node topic.
    pub fn parse(topic: &str) -> Option<Topic> {
        let mut parts = topic.split('/');
        if parts.next()? != NAMESPACE {
            return None;
        }
        let group_id = parts.next()?;
        let token = parts.next()?;
        let node_id = parts.next()?;
        let device_id = parts.next();
        if parts.next().is_some() || group_id.is_empty() || node_id.is_empty() {
            return None;
        }
        let message_type = MessageType::ALL.iter().find(|(_, s)| *s == token)?.0;
        if message_type.is_device_scoped() != device_id.is_some() || device_id == Some("") {
            return None;
        }
        Some(Topic {
            group_id: group_id.to_owned(),
            message_type,
            node_id: node_id.to_owned(),
            device_id: device_id.map(str::to_owned),
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{NAMESPACE}/{}/{}/{}",
            self.group_id,
            self.message_type.token(),
            self.node_id
        )?;
        match &self.device_id {
            Some(device) => write!(f, "/{device}"),
            None => Ok(()),
        }
    }
}

/// The topic a primary host application publishes its STATE on (Sparkplug 3.0).
pub fn state_topic(host_id: &str) -> String {
    format!("{NAMESPACE}/STATE/{host_id}")
}

/// Where a Sparkplug 2.2 host (Ignition MQTT Engine before 4.0.x's 3.0
/// support) publishes its STATE, as the text `ONLINE` or `OFFLINE`.
pub fn legacy_state_topic(host_id: &str) -> String {
    format!("STATE/{host_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_have_the_specified_shape_per_message_type() {
        assert_eq!(
            Topic::node("plant1", MessageType::NBirth, "gw").to_string(),
            "spBv1.0/plant1/NBIRTH/gw"
        );
        assert_eq!(
            Topic::node("plant1", MessageType::NDeath, "gw").to_string(),
            "spBv1.0/plant1/NDEATH/gw"
        );
        assert_eq!(
            Topic::device("plant1", MessageType::DData, "gw", "meter1").to_string(),
            "spBv1.0/plant1/DDATA/gw/meter1"
        );
        assert_eq!(state_topic("scada"), "spBv1.0/STATE/scada");
    }

    #[test]
    fn parsing_round_trips_and_rejects_malformed_topics() {
        for text in [
            "spBv1.0/g/NCMD/n",
            "spBv1.0/g/DCMD/n/d",
            "spBv1.0/g/DBIRTH/n/d",
        ] {
            let topic = Topic::parse(text).expect(text);
            assert_eq!(topic.to_string(), text);
        }
        for bad in [
            "spBv1.0/g/NCMD/n/d",
            "spBv1.0/g/DCMD/n",
            "spBv1.0/g/DCMD/n/",
            "spBv1.0/g/XCMD/n",
            "spAv1.0/g/NCMD/n",
            "spBv1.0//NCMD/n",
            "spBv1.0/g/DCMD/n/d/x",
            "spBv1.0/STATE/host",
            "",
        ] {
            assert_eq!(Topic::parse(bad), None, "{bad}");
        }
    }
}
