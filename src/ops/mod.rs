//! What keeps the gateway observable and durable, used by every layer above:
//! its counters, liveness, the health endpoint, systemd, backoff, careful
//! disk work, and sleeps finer than tokio's millisecond timer.

pub mod atomic_file;
pub mod backoff;
pub mod blocking;
pub mod health;
pub mod liveness;
pub mod memory;
pub mod metrics;
pub mod precise;
pub mod systemd;
