//! The gateway's shared vocabulary: values and samples, device events,
//! device identities, writes, messages, and register layouts. Imports nothing else in the crate,
//! so every layer can use it.

pub mod event;
pub mod identity;
pub mod layout;
pub mod message;
pub mod value;
pub mod write;
