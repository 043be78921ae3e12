//! Typed values, their quality and the samples a poll produces.

use std::fmt;

/// The wire type of a metric as the device map declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// One coil, discrete input or register bit.
    Bool,
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Four registers, unsigned.
    U64,
    /// Four registers, two's complement.
    I64,
    /// Two registers, IEEE 754 single precision.
    F32,
    /// Four registers, IEEE 754 double precision.
    F64,
    /// `length` registers of ASCII, two characters per register.
    String,
}

impl DataType {
    /// Every type with the name the config uses for it, in documentation order.
    pub const ALL: [(&'static str, DataType); 10] = [
        ("bool", DataType::Bool),
        ("u16", DataType::U16),
        ("i16", DataType::I16),
        ("u32", DataType::U32),
        ("i32", DataType::I32),
        ("u64", DataType::U64),
        ("i64", DataType::I64),
        ("f32", DataType::F32),
        ("f64", DataType::F64),
        ("string", DataType::String),
    ];

    /// The config name of this type.
    pub fn name(self) -> &'static str {
        DataType::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }

    /// Whether values of this type are numbers (deadbands, scaling and limits apply).
    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::String)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded, possibly scaled, engineering value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A coil, discrete input or register bit.
    Bool(bool),
    /// An unsigned 16-bit register.
    U16(u16),
    /// A signed 16-bit register.
    I16(i16),
    /// An unsigned 32-bit value.
    U32(u32),
    /// A signed 32-bit value.
    I32(i32),
    /// An unsigned 64-bit value.
    U64(u64),
    /// A signed 64-bit value.
    I64(i64),
    /// A single-precision float.
    F32(f32),
    /// A double-precision float; also the type of every scaled value.
    F64(f64),
    /// Text read from registers.
    String(String),
}

impl Value {
    /// The type this value is of.
    pub fn data_type(&self) -> DataType {
        match self {
            Value::Bool(_) => DataType::Bool,
            Value::U16(_) => DataType::U16,
            Value::I16(_) => DataType::I16,
            Value::U32(_) => DataType::U32,
            Value::I32(_) => DataType::I32,
            Value::U64(_) => DataType::U64,
            Value::I64(_) => DataType::I64,
            Value::F32(_) => DataType::F32,
            Value::F64(_) => DataType::F64,
            Value::String(_) => DataType::String,
        }
    }

    /// The value as a double, for deadbands and scaling; `None` for bools and strings.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::U16(v) => Some(f64::from(v)),
            Value::I16(v) => Some(f64::from(v)),
            Value::U32(v) => Some(f64::from(v)),
            Value::I32(v) => Some(f64::from(v)),
            // 64-bit integers above 2^53 lose precision here; only deadband
            // comparisons and scaling use this, never the reported raw value.
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            Value::F32(v) => Some(f64::from(v)),
            Value::F64(v) => Some(v),
            Value::Bool(_) | Value::String(_) => None,
        }
    }

    /// The value as JSON; non-finite floats have no JSON form and become `null`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(v) => (*v).into(),
            Value::U16(v) => (*v).into(),
            Value::I16(v) => (*v).into(),
            Value::U32(v) => (*v).into(),
            Value::I32(v) => (*v).into(),
            Value::U64(v) => (*v).into(),
            Value::I64(v) => (*v).into(),
            // Through the shortest decimal form, so 231.51738f32 prints as
            // 231.51738 and not as its exact binary widening 231.5173797607422.
            Value::F32(v) => v
                .to_string()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(serde_json::Value::Null, Into::into),
            Value::F64(v) => {
                serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into)
            }
            Value::String(v) => v.clone().into(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::String(v) => write!(f, "{v:?}"),
        }
    }
}

/// Why a metric has no trustworthy value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The device did not answer within the bus timeout.
    Timeout,
    /// The device answered with a Modbus exception (the code as on the wire).
    Exception(u8),
    /// The connection or port could not be used.
    Link(String),
    /// The response could not be trusted (wrong unit, function, length or framing).
    Malformed(String),
    /// The device is marked offline after repeated failures and is only retried with backoff.
    Offline,
}

impl Fault {
    /// The kind of fault in one word, as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Timeout => "timeout",
            Fault::Exception(_) => "exception",
            Fault::Link(_) => "link",
            Fault::Malformed(_) => "malformed",
            Fault::Offline => "offline",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Timeout => f.write_str("timeout"),
            Fault::Exception(code) => {
                write!(f, "exception 0x{code:02X} ({})", exception_name(*code))
            }
            Fault::Link(why) => write!(f, "link: {why}"),
            Fault::Malformed(why) => write!(f, "malformed response: {why}"),
            Fault::Offline => f.write_str("device offline"),
        }
    }
}

/// The Modbus specification's name for an exception code.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "non-standard",
    }
}

/// Whether a value can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quality {
    /// Read successfully in this cycle.
    Good,
    /// Not read; the reason says why.
    Bad(Fault),
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quality::Good => f.write_str("good"),
            Quality::Bad(fault) => write!(f, "bad: {fault}"),
        }
    }
}

/// Index of a device in the validated config.
pub type DeviceId = usize;

/// Index of a metric within its device.
pub type MetricId = usize;

/// One metric's reading at one instant, as it flows from pollers to publishers.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The device the metric belongs to.
    pub device: DeviceId,
    /// The metric within the device.
    pub metric: MetricId,
    /// The value; `None` exactly when the quality is bad, so a stale number is never reported.
    pub value: Option<Value>,
    /// Good, or bad with the reason.
    pub quality: Quality,
    /// Milliseconds since the Unix epoch, taken when the response arrived.
    pub timestamp_ms: u64,
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
