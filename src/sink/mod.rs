//! Where the profiles' actions go: the uplink to the upstream MQTT server,
//! with the store-and-forward queue in front of it, the embedded local
//! broker with its feed, and the status page that watches them all.

#[cfg(feature = "broker")]
pub mod local;
pub mod log;
pub mod node;
pub mod pem;
pub mod status;
pub mod uplink;
