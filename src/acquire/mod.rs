//! The sources: Modbus buses and GPIO devices, polled or watched by their own
//! tasks, which turn what they read into [`DeviceEvent`](crate::core::event::DeviceEvent)s
//! and carry out the writes routed to them.

pub mod deadband;
pub mod engine;
pub mod gpio;
pub mod modbus;
pub mod router;
