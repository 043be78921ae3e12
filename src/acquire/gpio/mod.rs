//! GPIO devices: dry contacts, pulse counters and relays on the board's pins.
//!
//! A GPIO device is a bus of its own, owned by one [`GpioTask`], which speaks
//! the same [`DeviceEvent`](crate::core::event::DeviceEvent)s as a Modbus bus
//! task, so the profiles, the buffer and the command rules need nothing
//! GPIO-specific. Unlike a Modbus bus it is driven by edges, not by a poll
//! schedule: a debounced input change goes out at once.
//!
//! - [`lines`]: the drivers (Linux character device, rppal, simulated).
//! - [`debounce`]: contact bounce filtering; pure.
//! - [`counter`]: pulse totals kept across restarts, and rates.
//! - [`task`]: the task that owns a device's lines.

pub mod counter;
pub mod debounce;
pub mod lines;
pub mod task;

pub use task::{GpioTask, read_once};
