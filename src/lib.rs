//! fieldmq: an industrial edge gateway from Modbus devices and GPIO pins to MQTT.
//!
//! # Layout
//!
//! Data flows one way: bus tasks poll devices and emit events; the publisher
//! keeps the last values, lets the profile (Sparkplug B or plain JSON) turn
//! events into MQTT messages, and hands them to the uplink connection.
//! Commands flow back once: the profile validates them into writes, which
//! the engine routes to the bus task owning the device.
//!
//! - [`config`]: TOML text → validated [`config::Config`], with file:line diagnostics.
//! - [`value`]: typed values, quality and samples.
//! - [`modbus::codec`]: registers ⇄ values (byte/word order, bits, strings, scaling); pure.
//! - [`modbus::plan`]: the read planner (coalescing, self-healing splits); pure.
//! - [`modbus::link`]: one bus connection with timeouts, resync and reconnect; reads and writes.
//! - [`modbus::cycle`]: one device's poll cycle and its decoding.
//! - [`modbus::bus`]: the per-bus task: schedules, offline/backoff, report by exception, writes.
//! - [`exception`]: report by exception (deadbands).
//! - [`gpio`]: GPIO devices: drivers (cdev, rppal, sim), debouncing, pulse counters, outputs.
//! - [`engine`]: spawns the bus and GPIO tasks, merges their events, routes writes, puts reloaded device maps in force.
//! - [`reload`]: what a SIGHUP's new device map changes; pure.
//! - [`command`]: the rules a write must pass and its register image; pure.
//! - [`stats`]: the gateway's counters.
//! - [`last_values`]: the last value of every metric and each device's state.
//! - [`profile`]: what a profile answers with ([`profile::Action`]) and the profile switch.
//! - [`sparkplug`]: Sparkplug B schema, topics, payloads, seq/bdSeq, the edge node session; pure.
//! - [`plain`]: the plain JSON profile; pure.
//! - [`mqtt`]: the upstream connection task (reconnect, next server, will per connect) and TLS.
//! - [`publisher`]: the task between the bus tasks and the uplink.
//! - [`broker`]: the embedded local MQTT broker (rmqtt) with fieldmq's logins and topic ACLs.
//! - [`local`]: fieldmq's data into the local broker, and local clients' commands back.
//! - [`buffer`]: the store-and-forward disk queue (segment log) and the stored sample format.
//! - [`forward`]: store-and-forward: what waits on disk, the replay window, the paced drain.
//! - [`simulator`]: a Modbus device simulator (TCP, RTU, RTU over TCP) for tests, benchmarks and demos.
//! - [`demo`]: the simulated meter and GPIO panel behind `fieldmq demo`.
//! - [`tail`]: `fieldmq tail`'s decoding of Sparkplug B (names from births) into readable lines; pure.
//! - [`backoff`]: exponential backoff with jitter.
//! - [`blocking`]: disk work from async tasks without stalling the other tasks.
//! - [`atomic_file`]: crash-safe replacement of small state files (bdSeq, counter totals, queue cursor).
//! - [`liveness`]: whether the long-running tasks keep their promises to come back (watchdog, `/healthz`).
//! - [`health`]: the `[health]` endpoint: `/healthz` and Prometheus `/metrics`.
//! - [`systemd`]: readiness, reload and watchdog notifications to systemd.
//! - [`fuzz`]: arbitrary bytes into each input path, for `fuzz/` and the corpus replay test.

pub mod acquire;
pub mod config;
pub mod core;
pub mod fuzz;
pub mod gateway;
pub mod ops;
pub mod profile;
pub mod sim;
pub mod sink;
pub mod store;
