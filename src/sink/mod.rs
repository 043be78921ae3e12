//! Where the profiles' actions go: the uplink to the upstream MQTT server,
//! with the store-and-forward queue in front of it, and the embedded local
//! broker with its feed.

#[cfg(feature = "broker")]
pub mod local;
pub mod log;
pub mod node;
pub mod pem;
pub mod uplink;
