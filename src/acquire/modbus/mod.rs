//! Modbus acquisition: the pure codec and planner, and the tasks that use the bus.

pub mod bus;
pub mod codec;
pub mod cycle;
pub mod direction;
pub mod link;
pub mod plan;
pub mod scan;
pub mod wire;
