//! Sparkplug B 3.0: the payload schema, topics, and the edge node's session rules.

pub mod compression;
pub mod edge;
pub mod host;
pub mod payload;
pub mod rebirth;
pub mod seq;
pub mod template;
pub mod topic;

/// The protobuf messages generated from `proto/sparkplug_b.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/fieldmq.sparkplug_b.rs"));
}
