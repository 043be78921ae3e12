//! The MQTT side's transport: one connection to the upstream server, kept up
//! forever, and the messages that travel over it.

pub mod connection;
pub mod options;
