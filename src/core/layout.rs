//! Where a metric lives on a Modbus device and how its value is laid out
//! there: the data tables, address spans, request limits, byte and word
//! order, and scaling.

use std::fmt;

use thiserror::Error;

use crate::core::value::{DataType, Value};

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Read/write bits (FC 1, written with FC 5/15).
    Coil,
    /// Read-only bits (FC 2).
    Discrete,
    /// Read-only registers (FC 4).
    Input,
    /// Read/write registers (FC 3, written with FC 6/16).
    Holding,
}

impl Table {
    /// Every table with the name the config uses for it.
    pub const ALL: [(&'static str, Table); 4] = [
        ("coil", Table::Coil),
        ("discrete", Table::Discrete),
        ("input", Table::Input),
        ("holding", Table::Holding),
    ];

    /// Whether the table holds single bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The function code that reads this table.
    pub fn read_function(self) -> u8 {
        match self {
            Table::Coil => 1,
            Table::Discrete => 2,
            Table::Holding => 3,
            Table::Input => 4,
        }
    }

    /// The leading digit of this table in Modicon register numbers.
    fn modicon_digit(self) -> u32 {
        match self {
            Table::Coil => 0,
            Table::Discrete => 1,
            Table::Input => 3,
            Table::Holding => 4,
        }
    }

    /// The one-based register number manuals print for `address` of this
    /// table: 5 digits (40001) while the address fits, else 6 (400001).
    pub fn modicon(self, address: u16) -> u32 {
        let one_based = u32::from(address) + 1;
        let width = if one_based <= 9999 { 10_000 } else { 100_000 };
        self.modicon_digit() * width + one_based
    }

    /// The table and wire address of a Modicon register number: 5 digits
    /// (0xxxx coil, 1xxxx discrete input, 3xxxx input, 4xxxx holding
    /// register, one-based up to 9999) or 6 (up to x65536). A coil has no
    /// leading digit to write, so only its 5-digit form 1..=9999 exists.
    pub fn from_modicon(number: u32) -> Result<(Table, u16), String> {
        let (digit, one_based) = if number < 100_000 {
            (number / 10_000, number % 10_000)
        } else if number < 1_000_000 {
            (number / 100_000, number % 100_000)
        } else {
            return Err(format!("{number} has more than 6 digits"));
        };
        let table = match digit {
            0 => Table::Coil,
            1 => Table::Discrete,
            3 => Table::Input,
            4 => Table::Holding,
            d => {
                return Err(format!(
                    "{number} starts with {d}, which names no table (0 coil, 1 discrete input, 3 input register, 4 holding register)"
                ));
            }
        };
        match one_based.checked_sub(1).map(u16::try_from) {
            Some(Ok(address)) => Ok((table, address)),
            _ => Err(format!(
                "{number} is not a register: numbers count from 1 (x0001 or x00001) up to x9999 or x65536"
            )),
        }
    }

    /// The config name of this table.
    pub fn name(self) -> &'static str {
        Table::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The addresses one metric occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The table the metric lives in.
    pub table: Table,
    /// First address (0-based, as on the wire).
    pub start: u16,
    /// Number of bits or registers.
    pub count: u16,
}

impl Span {
    /// One past the last address, widened so 65535 + 1 does not overflow.
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// Size limits of one device's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most registers one FC 3/4 request may ask for (the protocol allows 125).
    pub max_registers: u16,
    /// Most bits one FC 1/2 request may ask for (the protocol allows 2000).
    pub max_bits: u16,
    /// Most unused addresses a request may read to join two metrics.
    pub max_gap: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_registers: 125,
            max_bits: 2000,
            max_gap: 10,
        }
    }
}

impl Limits {
    /// The largest request for a table.
    pub fn max_count(&self, table: Table) -> u16 {
        if table.is_bits() {
            self.max_bits
        } else {
            self.max_registers
        }
    }
}

/// Order of the two bytes inside one register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ByteOrder {
    /// High byte first, as the Modbus specification sends it.
    #[default]
    Big,
    /// Low byte first.
    Little,
}

/// Order of the registers of a value spanning several registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WordOrder {
    /// Most significant register at the lowest address.
    #[default]
    Big,
    /// Least significant register at the lowest address.
    Little,
}

/// How a metric's value is laid out in one or more registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterLayout {
    /// The declared type.
    pub data_type: DataType,
    /// Byte order within each register.
    pub byte_order: ByteOrder,
    /// Register order of multi-register values (ignored for strings, whose
    /// characters always run from the lowest address up).
    pub word_order: WordOrder,
    /// For a bool held in a register: the bit (0 = least significant).
    pub bit: Option<u8>,
    /// Registers a string occupies; ignored for other types.
    pub length: u16,
}

impl RegisterLayout {
    /// How many registers the value occupies.
    pub fn register_count(&self) -> u16 {
        match self.data_type {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => self.length,
        }
    }
}

/// A value that cannot be put into a metric's registers.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum EncodeError {
    /// The value is of another kind than the layout holds (text into a number, ...).
    #[error("a {got} value cannot be written to a {expected} metric")]
    WrongType {
        /// The layout's type.
        expected: DataType,
        /// What was offered.
        got: &'static str,
    },
    /// The number does not fit the register type (after reverse scaling).
    #[error("{value} does not fit a {data_type} register")]
    OutOfRange {
        /// The raw value that was computed.
        value: f64,
        /// The layout's type.
        data_type: DataType,
    },
    /// The text is longer than the registers the string occupies, or not ASCII.
    #[error("text of {bytes} bytes does not fit {registers} registers of ASCII")]
    TextTooLong {
        /// UTF-8 bytes offered.
        bytes: usize,
        /// Registers available.
        registers: u16,
    },
    /// A bool inside a register is written by read-modify-write, not encoded whole.
    #[error("a bit inside a register is not a whole-register value")]
    BitInRegister,
}

/// Linear conversion from the raw value to engineering units: `raw * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    /// Multiplier applied to the raw value.
    pub scale: f64,
    /// Added after scaling.
    pub offset: f64,
}

impl Scaling {
    /// Applies the conversion; a scaled value is always a double.
    pub fn apply(&self, raw: Value) -> Value {
        match raw.as_f64() {
            Some(x) => Value::F64(x * self.scale + self.offset),
            None => raw,
        }
    }

    /// The raw number that [`Scaling::apply`] turns into `engineering`,
    /// rounded to the nearest whole number when the raw type is an integer.
    pub fn reverse(&self, engineering: f64, raw_type: DataType) -> f64 {
        let raw = (engineering - self.offset) / self.scale;
        match raw_type {
            DataType::F32 | DataType::F64 => raw,
            _ => raw.round(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modicon_numbers_map_to_tables_and_wire_addresses_and_back() {
        for (number, table, address) in [
            (1, Table::Coil, 0),
            (9999, Table::Coil, 9998),
            (10001, Table::Discrete, 0),
            (30001, Table::Input, 0),
            (40001, Table::Holding, 0),
            (40100, Table::Holding, 99),
            (49999, Table::Holding, 9998),
            (400001, Table::Holding, 0),
            (465536, Table::Holding, 65535),
            (310000, Table::Input, 9999),
        ] {
            assert_eq!(
                Table::from_modicon(number),
                Ok((table, address)),
                "{number}"
            );
        }
        assert_eq!(Table::Holding.modicon(0), 40001);
        assert_eq!(Table::Holding.modicon(9998), 49999);
        assert_eq!(Table::Holding.modicon(9999), 410000);
        assert_eq!(Table::Coil.modicon(4), 5);
        for bad in [0, 10000, 20001, 40000, 465537, 400000, 1_000_000] {
            assert!(Table::from_modicon(bad).is_err(), "{bad}");
        }
    }
}
