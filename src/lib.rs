//! fieldmq: an industrial edge gateway from Modbus devices and GPIO pins to MQTT.
//!
//! # Layout
//!
//! The folders follow the data: sources poll devices and emit events; the
//! profile turns events into messages; the store keeps what cannot go out
//! yet; the sinks publish, upstream and into the local broker. Commands come
//! back once, through the profile's rules and the write router, to the task
//! that owns the device. Each layer imports only the layers listed above it
//! (`tests/layers.rs` holds the code to that).
//!
//! - [`core`]: the shared vocabulary, importing nothing else: values and
//!   samples, device events, device identities, writes and refusals,
//!   messages, register layouts.
//! - [`ops`]: what every layer uses to stay observable and durable: the one
//!   counter system ([`ops::metrics`]), liveness, the health endpoint,
//!   systemd, backoff, disk work off the async threads, atomic state files,
//!   freed heap returned to the system, sleeps finer than tokio's timer.
//! - [`config`]: TOML text → validated [`config::Config`], with file:line
//!   diagnostics; one file per section; device models and include; what a
//!   reload changes.
//! - [`acquire`]: the sources. [`acquire::modbus`] (codec and read planner,
//!   pure; the link, the poll cycle, the bus task, the bus scan),
//!   [`acquire::gpio`], the
//!   deadband filter, the engine that runs a task per bus and per GPIO
//!   device, and the write router back to them.
//! - [`profile`]: pure transforms from events to actions: the Sparkplug B
//!   edge node ([`profile::sparkplug`]), the plain JSON profile, the rules a
//!   command must pass, the last value of every metric.
//! - [`store`]: what survives a restart: the store-and-forward queue on
//!   disk, the replay window and paced drain in front of it, the bdSeq.
//! - [`sink`]: where actions go: the uplink (connection, proof of delivery, TLS, the queue in
//!   front), the local broker and its feed, or the log; what both keep about
//!   the node ([`sink::node`]).
//! - [`gateway`]: the wiring of a running gateway: sources, the event tee,
//!   sinks, health, SIGHUP. Usable in-process.
//! - [`sim`]: the Modbus device simulator and the demo's devices.
//! - [`fuzz`]: arbitrary bytes into each input path, for `fuzz/` and the corpus replay test.
//!
//! The binary's `cli/` (one file per subcommand) sits on top of all of it.

// In the order data flows through them (rustfmt keeps blank-line groups apart).
pub mod core;

pub mod ops;

pub mod config;

pub mod acquire;

pub mod profile;

pub mod store;

pub mod sink;

pub mod gateway;

pub mod sim;

pub mod fuzz;
