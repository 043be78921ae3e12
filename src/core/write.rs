//! A write asked for by a command, once it passed every rule, and the
//! reasons a command is refused.

use thiserror::Error;

use crate::core::layout::EncodeError;
use crate::core::value::{DataType, DeviceId, MetricId, Value};

/// What a validated write puts on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteImage {
    /// FC 05, write single coil.
    Coil(bool),
    /// FC 06 (one register) or FC 16 (several): the metric's whole image.
    Registers(Vec<u16>),
    /// One bit of a holding register, written by read-modify-write (FC 03 then FC 06).
    RegisterBit {
        /// The bit as it lies in the register on the wire (byte order applied).
        mask: u16,
        /// The new state.
        on: bool,
    },
}

/// A write that passed every check, addressed to the bus task owning the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The device.
    pub device: DeviceId,
    /// The metric written.
    pub metric: MetricId,
    /// The engineering value asked for, for logs.
    pub value: Value,
    /// What goes on the wire.
    pub image: WriteImage,
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Rejection {
    /// The device map was reloaded while the command was on its way.
    #[error("the device map was reloaded while the command was on its way; send it again")]
    Reloaded,
    /// The command names no device of this gateway.
    #[error("no device \"{0}\"")]
    UnknownDevice(String),
    /// The command names no metric of the device.
    #[error("no metric {0} on this device")]
    UnknownMetric(String),
    /// The metric exists but is not marked `writable`.
    #[error("metric \"{0}\" is not writable")]
    ReadOnly(String),
    /// The value is of another type than the metric.
    #[error("metric \"{metric}\" is {expected}, the command carries {got}")]
    WrongType {
        /// The metric.
        metric: String,
        /// Its type.
        expected: DataType,
        /// What the command carried.
        got: String,
    },
    /// The value is outside `min`/`max`, or not a finite number.
    #[error("{value} is outside the allowed range {min}..={max} of metric \"{metric}\"")]
    OutOfRange {
        /// The metric.
        metric: String,
        /// The value asked for.
        value: f64,
        /// Lowest allowed.
        min: f64,
        /// Highest allowed.
        max: f64,
    },
    /// The value has no register image (too large for the register type, too long a text).
    #[error("metric \"{metric}\": {source}")]
    Unencodable {
        /// The metric.
        metric: String,
        /// What did not fit.
        source: EncodeError,
    },
    /// The device is offline; a write would only time out.
    #[error("device \"{0}\" is offline")]
    DeviceOffline(String),
    /// The device's bus has too many writes queued.
    #[error("too many writes queued for the bus of device \"{0}\"")]
    Busy(String),
    /// The command could not be decoded at all.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// The command came with the retain flag set: a message stored on the
    /// broker and delivered on subscribing, not an operator's live action.
    #[error("{0}: retained command (stored on the broker, delivered on subscribe) not applied")]
    Retained(String),
    /// The command carries more metrics than its target has.
    #[error(
        "{target}: the command carries {carried} metrics, more than the {has} there are; refused whole"
    )]
    Oversized {
        /// The node or device.
        target: String,
        /// Metrics in the command.
        carried: usize,
        /// Metrics the target has.
        has: usize,
    },
    /// Several metrics of one command were refused.
    #[error("{count} metrics of one command refused; the first: {first}")]
    Several {
        /// How many.
        count: usize,
        /// The first refusal.
        first: Box<Rejection>,
    },
}

impl Rejection {
    /// The metric writes this refusal stands for.
    pub fn count(&self) -> u64 {
        match self {
            Rejection::Several { count, .. } => *count as u64,
            _ => 1,
        }
    }

    /// One refusal for all of `rejections`, so that a command is logged
    /// and reported once however many metrics it carried.
    pub fn merged(mut rejections: Vec<Rejection>) -> Option<Rejection> {
        match rejections.len() {
            0 => None,
            1 => rejections.pop(),
            count => Some(Rejection::Several {
                count,
                first: Box::new(rejections.swap_remove(0)),
            }),
        }
    }
}
