//! fieldmq: an industrial edge gateway from Modbus devices to MQTT.
//!
//! # Layout
//!
//! Data flows one way: bus tasks poll devices and emit samples; consumers
//! (logging today, MQTT publishers later) read them from one channel.
//!
//! - [`config`]: TOML text → validated [`config::Config`], with file:line diagnostics.
//! - [`value`]: typed values, quality and samples.
//! - [`modbus::codec`]: registers ⇄ values (byte/word order, bits, strings, scaling); pure.
//! - [`modbus::plan`]: the read planner (coalescing, self-healing splits); pure.
//! - [`modbus::link`]: one bus connection with timeouts, resync and reconnect.
//! - [`modbus::cycle`]: one device's poll cycle and its decoding.
//! - [`modbus::bus`]: the per-bus task: schedules, offline/backoff, report by exception.
//! - [`exception`]: report by exception (deadbands).
//! - [`engine`]: spawns the bus tasks and merges their events.
//! - [`simulator`]: a Modbus device simulator (TCP, RTU, RTU over TCP) for tests, benchmarks and demos.
//! - [`demo`]: the simulated meter behind `fieldmq demo`.
//! - [`backoff`]: exponential backoff with jitter.
//! - [`sparkplug`]: Sparkplug B payload schema and topics (groundwork of the MQTT side).

pub mod backoff;
pub mod command;
pub mod config;
pub mod demo;
pub mod engine;
pub mod exception;
pub mod last_values;
pub mod modbus;
pub mod mqtt;
pub mod plain;
pub mod profile;
pub mod publisher;
pub mod simulator;
pub mod sparkplug;
pub mod stats;
pub mod value;
