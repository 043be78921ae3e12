//! Register images ⇄ typed values: byte order, word order, bits, strings, scaling.
//!
//! Pure functions over `u16` registers as they come off the wire; no I/O.
//! Byte order is the order of the two bytes inside one register, word order
//! the order of the registers of a multi-register value. Big/big is the
//! Modbus convention ("ABCD"); big/little is the common "CDAB" of many meters.

use crate::core::layout::{ByteOrder, EncodeError, RegisterLayout, WordOrder};
use thiserror::Error;

use crate::core::value::{DataType, Value};

/// A register image that does not fit the layout it is decoded with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("expected {expected} registers, got {got}")]
pub struct LengthMismatch {
    /// Registers the layout needs.
    pub expected: usize,
    /// Registers supplied.
    pub got: usize,
}

/// Decodes the registers of one metric (exactly `layout.register_count()` of them).
pub fn decode_registers(layout: &RegisterLayout, regs: &[u16]) -> Result<Value, LengthMismatch> {
    let expected = usize::from(layout.register_count());
    if regs.len() != expected {
        return Err(LengthMismatch {
            expected,
            got: regs.len(),
        });
    }
    let (bo, wo) = (layout.byte_order, layout.word_order);
    Ok(match layout.data_type {
        DataType::Bool => {
            let word = swap_bytes(regs[0], bo);
            Value::Bool(match layout.bit {
                Some(bit) => (word >> bit) & 1 == 1,
                None => word != 0,
            })
        }
        DataType::U16 => Value::U16(u16::from_be_bytes(ordered::<2>(regs, bo, wo))),
        DataType::I16 => Value::I16(i16::from_be_bytes(ordered::<2>(regs, bo, wo))),
        DataType::U32 => Value::U32(u32::from_be_bytes(ordered::<4>(regs, bo, wo))),
        DataType::I32 => Value::I32(i32::from_be_bytes(ordered::<4>(regs, bo, wo))),
        DataType::F32 => Value::F32(f32::from_be_bytes(ordered::<4>(regs, bo, wo))),
        DataType::U64 => Value::U64(u64::from_be_bytes(ordered::<8>(regs, bo, wo))),
        DataType::I64 => Value::I64(i64::from_be_bytes(ordered::<8>(regs, bo, wo))),
        DataType::F64 => Value::F64(f64::from_be_bytes(ordered::<8>(regs, bo, wo))),
        DataType::String => Value::String(decode_string(regs, bo)),
    })
}

/// A register's value with its bytes put in big-endian order.
fn swap_bytes(reg: u16, order: ByteOrder) -> u16 {
    match order {
        ByteOrder::Big => reg,
        ByteOrder::Little => reg.swap_bytes(),
    }
}

/// The value's bytes, most significant first, from registers in device order.
fn ordered<const N: usize>(regs: &[u16], bo: ByteOrder, wo: WordOrder) -> [u8; N] {
    let mut out = [0u8; N];
    let last = regs.len().saturating_sub(1);
    for (i, chunk) in out.chunks_exact_mut(2).enumerate() {
        let reg = match wo {
            WordOrder::Big => regs[i],
            WordOrder::Little => regs[last - i],
        };
        chunk.copy_from_slice(&swap_bytes(reg, bo).to_be_bytes());
    }
    out
}

/// ASCII text, two characters per register; it ends at the first NUL and
/// trailing spaces are padding.
fn decode_string(regs: &[u16], bo: ByteOrder) -> String {
    let bytes: Vec<u8> = regs
        .iter()
        .flat_map(|r| swap_bytes(*r, bo).to_be_bytes())
        .take_while(|b| *b != 0)
        .collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches(' ')
        .to_owned()
}

/// Encodes `value` into the registers of `layout`, the exact inverse of
/// [`decode_registers`]: integers must be whole and in range, floats are
/// narrowed only to `f32` when the layout says so, strings are padded with NULs.
pub fn encode_registers(layout: &RegisterLayout, value: &Value) -> Result<Vec<u16>, EncodeError> {
    let (bo, wo) = (layout.byte_order, layout.word_order);
    let t = layout.data_type;
    if t == DataType::String {
        let Value::String(text) = value else {
            return Err(EncodeError::WrongType {
                expected: t,
                got: value.data_type().name(),
            });
        };
        let capacity = usize::from(layout.length) * 2;
        if text.len() > capacity || !text.is_ascii() {
            return Err(EncodeError::TextTooLong {
                bytes: text.len(),
                registers: layout.length,
            });
        }
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(capacity, 0);
        return Ok(bytes
            .chunks_exact(2)
            .map(|pair| swap_bytes(u16::from_be_bytes([pair[0], pair[1]]), bo))
            .collect());
    }
    if t == DataType::Bool {
        if layout.bit.is_some() {
            return Err(EncodeError::BitInRegister);
        }
        let Value::Bool(on) = value else {
            return Err(EncodeError::WrongType {
                expected: t,
                got: value.data_type().name(),
            });
        };
        return Ok(vec![swap_bytes(u16::from(*on), bo)]);
    }
    let bytes: Vec<u8> = match (t, value) {
        (DataType::F32, v) => (number(t, v)? as f32).to_be_bytes().to_vec(),
        (DataType::F64, v) => number(t, v)?.to_be_bytes().to_vec(),
        (DataType::U16, v) => whole::<u16>(t, v)?.to_be_bytes().to_vec(),
        (DataType::I16, v) => whole::<i16>(t, v)?.to_be_bytes().to_vec(),
        (DataType::U32, v) => whole::<u32>(t, v)?.to_be_bytes().to_vec(),
        (DataType::I32, v) => whole::<i32>(t, v)?.to_be_bytes().to_vec(),
        (DataType::U64, v) => whole::<u64>(t, v)?.to_be_bytes().to_vec(),
        (DataType::I64, v) => whole::<i64>(t, v)?.to_be_bytes().to_vec(),
        (DataType::Bool | DataType::String, _) => Vec::new(),
    };
    let mut regs: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| swap_bytes(u16::from_be_bytes([pair[0], pair[1]]), bo))
        .collect();
    if wo == WordOrder::Little {
        regs.reverse();
    }
    Ok(regs)
}

/// Sets or clears one bit of a register image read from the device (in its byte order).
pub fn with_bit(reg: u16, bit: u8, on: bool, order: ByteOrder) -> u16 {
    let word = swap_bytes(reg, order);
    let mask = 1u16 << (bit & 15);
    let word = if on { word | mask } else { word & !mask };
    swap_bytes(word, order)
}

fn number(t: DataType, v: &Value) -> Result<f64, EncodeError> {
    v.as_f64().ok_or(EncodeError::WrongType {
        expected: t,
        got: v.data_type().name(),
    })
}

/// A number as an integer type: 64-bit integers are taken exactly, anything
/// else must be a whole number within the type's range.
fn whole<T>(t: DataType, v: &Value) -> Result<T, EncodeError>
where
    T: TryFrom<i128>,
{
    let exact: Option<i128> = match v {
        Value::U64(x) => Some(i128::from(*x)),
        Value::I64(x) => Some(i128::from(*x)),
        Value::U32(x) => Some(i128::from(*x)),
        Value::I32(x) => Some(i128::from(*x)),
        Value::U16(x) => Some(i128::from(*x)),
        Value::I16(x) => Some(i128::from(*x)),
        _ => None,
    };
    let as_int = match exact {
        Some(i) => i,
        None => {
            let x = number(t, v)?;
            // Any f64 beyond ±2^100 is far outside every register type; the bound keeps the cast exact.
            if x.fract() != 0.0 || !x.is_finite() || x.abs() > 1e30 {
                return Err(EncodeError::OutOfRange {
                    value: x,
                    data_type: t,
                });
            }
            x as i128
        }
    };
    T::try_from(as_int).map_err(|_| EncodeError::OutOfRange {
        value: as_int as f64,
        data_type: t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::layout::Scaling;

    fn layout(data_type: DataType, byte_order: ByteOrder, word_order: WordOrder) -> RegisterLayout {
        RegisterLayout {
            data_type,
            byte_order,
            word_order,
            bit: None,
            length: 0,
        }
    }

    /// The four orders of one value, keyed (byte order, word order), with the
    /// register image each one puts on the wire, written out by hand.
    fn check_all_orders(data_type: DataType, images: [&[u16]; 4], expected: Value) {
        let orders = [
            (ByteOrder::Big, WordOrder::Big),
            (ByteOrder::Big, WordOrder::Little),
            (ByteOrder::Little, WordOrder::Big),
            (ByteOrder::Little, WordOrder::Little),
        ];
        for ((bo, wo), image) in orders.into_iter().zip(images) {
            let got = decode_registers(&layout(data_type, bo, wo), image);
            assert_eq!(
                got,
                Ok(expected.clone()),
                "{data_type} {bo:?}/{wo:?} {image:04X?}"
            );
        }
    }

    #[test]
    fn u16_and_i16_in_both_byte_orders() {
        check_all_orders(
            DataType::U16,
            [&[0x1234], &[0x1234], &[0x3412], &[0x3412]],
            Value::U16(0x1234),
        );
        check_all_orders(
            DataType::I16,
            [&[0xFF85], &[0xFF85], &[0x85FF], &[0x85FF]],
            Value::I16(-123),
        );
        check_all_orders(
            DataType::I16,
            [&[0x8000], &[0x8000], &[0x0080], &[0x0080]],
            Value::I16(i16::MIN),
        );
    }

    #[test]
    fn thirty_two_bit_integers_in_all_four_orders() {
        // 0x12345678 = ABCD with A=0x12.
        check_all_orders(
            DataType::U32,
            [
                &[0x1234, 0x5678],
                &[0x5678, 0x1234],
                &[0x3412, 0x7856],
                &[0x7856, 0x3412],
            ],
            Value::U32(0x1234_5678),
        );
        // -2 = 0xFFFFFFFE.
        check_all_orders(
            DataType::I32,
            [
                &[0xFFFF, 0xFFFE],
                &[0xFFFE, 0xFFFF],
                &[0xFFFF, 0xFEFF],
                &[0xFEFF, 0xFFFF],
            ],
            Value::I32(-2),
        );
    }

    #[test]
    fn f32_in_all_four_orders_including_negative_nan_and_infinity() {
        // 230.5 = 0x43668000.
        check_all_orders(
            DataType::F32,
            [
                &[0x4366, 0x8000],
                &[0x8000, 0x4366],
                &[0x6643, 0x0080],
                &[0x0080, 0x6643],
            ],
            Value::F32(230.5),
        );
        // -1.5 = 0xBFC00000.
        check_all_orders(
            DataType::F32,
            [
                &[0xBFC0, 0x0000],
                &[0x0000, 0xBFC0],
                &[0xC0BF, 0x0000],
                &[0x0000, 0xC0BF],
            ],
            Value::F32(-1.5),
        );
        check_all_orders(
            DataType::F32,
            [
                &[0x7F80, 0x0000],
                &[0x0000, 0x7F80],
                &[0x807F, 0x0000],
                &[0x0000, 0x807F],
            ],
            Value::F32(f32::INFINITY),
        );
        check_all_orders(
            DataType::F32,
            [
                &[0xFF80, 0x0000],
                &[0x0000, 0xFF80],
                &[0x80FF, 0x0000],
                &[0x0000, 0x80FF],
            ],
            Value::F32(f32::NEG_INFINITY),
        );
        let nan = layout(DataType::F32, ByteOrder::Big, WordOrder::Little);
        match decode_registers(&nan, &[0x0001, 0x7FC0]) {
            Ok(Value::F32(v)) => assert!(v.is_nan()),
            other => panic!("expected NaN, got {other:?}"),
        }
    }

    #[test]
    fn sixty_four_bit_values_in_all_four_orders() {
        // 0x0102030405060708.
        check_all_orders(
            DataType::U64,
            [
                &[0x0102, 0x0304, 0x0506, 0x0708],
                &[0x0708, 0x0506, 0x0304, 0x0102],
                &[0x0201, 0x0403, 0x0605, 0x0807],
                &[0x0807, 0x0605, 0x0403, 0x0201],
            ],
            Value::U64(0x0102_0304_0506_0708),
        );
        // -1234567890123 = 0xFFFFFEE08E04FB35.
        check_all_orders(
            DataType::I64,
            [
                &[0xFFFF, 0xFEE0, 0x8E04, 0xFB35],
                &[0xFB35, 0x8E04, 0xFEE0, 0xFFFF],
                &[0xFFFF, 0xE0FE, 0x048E, 0x35FB],
                &[0x35FB, 0x048E, 0xE0FE, 0xFFFF],
            ],
            Value::I64(-1_234_567_890_123),
        );
        // -273.15 = 0xC071126666666666.
        check_all_orders(
            DataType::F64,
            [
                &[0xC071, 0x1266, 0x6666, 0x6666],
                &[0x6666, 0x6666, 0x1266, 0xC071],
                &[0x71C0, 0x6612, 0x6666, 0x6666],
                &[0x6666, 0x6666, 0x6612, 0x71C0],
            ],
            Value::F64(-273.15),
        );
        let big = layout(DataType::F64, ByteOrder::Big, WordOrder::Big);
        match decode_registers(&big, &[0x7FF8, 0, 0, 0]) {
            Ok(Value::F64(v)) => assert!(v.is_nan()),
            other => panic!("expected NaN, got {other:?}"),
        }
        assert_eq!(
            decode_registers(&big, &[0xFFF0, 0, 0, 0]),
            Ok(Value::F64(f64::NEG_INFINITY))
        );
    }

    #[test]
    fn bits_are_extracted_from_registers_counting_from_the_least_significant() {
        let mut bool_layout = layout(DataType::Bool, ByteOrder::Big, WordOrder::Big);
        for bit in 0..16u8 {
            bool_layout.bit = Some(bit);
            let reg = 1u16 << bit;
            assert_eq!(
                decode_registers(&bool_layout, &[reg]),
                Ok(Value::Bool(true)),
                "bit {bit}"
            );
            assert_eq!(
                decode_registers(&bool_layout, &[!reg]),
                Ok(Value::Bool(false)),
                "bit {bit}"
            );
        }
        // With little byte order, bit 0 is the lowest bit of the first byte on the wire.
        bool_layout.byte_order = ByteOrder::Little;
        bool_layout.bit = Some(0);
        assert_eq!(
            decode_registers(&bool_layout, &[0x0100]),
            Ok(Value::Bool(true))
        );
        bool_layout.bit = None;
        assert_eq!(
            decode_registers(&bool_layout, &[0x0000]),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            decode_registers(&bool_layout, &[0x8000]),
            Ok(Value::Bool(true))
        );
    }

    #[test]
    fn strings_are_trimmed_of_nul_and_space_padding() {
        let mut s = layout(DataType::String, ByteOrder::Big, WordOrder::Big);
        s.length = 4;
        // "PLC-7" then NUL padding.
        assert_eq!(
            decode_registers(&s, &[0x504C, 0x432D, 0x3700, 0x0000]),
            Ok(Value::String("PLC-7".into()))
        );
        // "AB  " space padding.
        assert_eq!(
            decode_registers(&s, &[0x4142, 0x2020, 0x2020, 0x2020]),
            Ok(Value::String("AB".into()))
        );
        s.byte_order = ByteOrder::Little;
        assert_eq!(
            decode_registers(&s, &[0x4C50, 0x2D43, 0x0037, 0x0000]),
            Ok(Value::String("PLC-7".into()))
        );
        // Word order never reorders text.
        s.word_order = WordOrder::Little;
        assert_eq!(
            decode_registers(&s, &[0x4C50, 0x2D43, 0x0037, 0x0000]),
            Ok(Value::String("PLC-7".into()))
        );
        // Bytes that are not UTF-8 do not fail the read.
        s.byte_order = ByteOrder::Big;
        assert_eq!(
            decode_registers(&s, &[0x41FF, 0, 0, 0]),
            Ok(Value::String("A\u{FFFD}".into()))
        );
    }

    #[test]
    fn a_register_image_of_the_wrong_length_is_refused_not_misread() {
        let f = layout(DataType::F32, ByteOrder::Big, WordOrder::Big);
        assert_eq!(
            decode_registers(&f, &[0x4366]),
            Err(LengthMismatch {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            decode_registers(&f, &[0x4366, 0x8000, 0]),
            Err(LengthMismatch {
                expected: 2,
                got: 3
            })
        );
    }

    #[test]
    fn scaling_turns_numbers_into_doubles_and_leaves_other_types_alone() {
        let tenth = Scaling {
            scale: 0.1,
            offset: -40.0,
        };
        assert_eq!(tenth.apply(Value::I16(655)), Value::F64(655.0 * 0.1 - 40.0));
        assert_eq!(tenth.apply(Value::Bool(true)), Value::Bool(true));
        assert_eq!(
            tenth.apply(Value::String("x".into())),
            Value::String("x".into())
        );
    }

    #[test]
    fn encoding_is_the_inverse_of_decoding_for_every_type_and_order() {
        let values = [
            Value::U16(0xBEEF),
            Value::I16(-12345),
            Value::U32(0xDEAD_BEEF),
            Value::I32(-7_654_321),
            Value::U64(0x0123_4567_89AB_CDEF),
            Value::I64(-1_234_567_890_123),
            Value::F32(-231.5174),
            Value::F64(6.02214076e23),
            Value::Bool(true),
        ];
        for value in values {
            for bo in [ByteOrder::Big, ByteOrder::Little] {
                for wo in [WordOrder::Big, WordOrder::Little] {
                    let l = layout(value.data_type(), bo, wo);
                    let image = encode_registers(&l, &value).unwrap();
                    assert_eq!(image.len(), usize::from(l.register_count()));
                    assert_eq!(
                        decode_registers(&l, &image),
                        Ok(value.clone()),
                        "{bo:?}/{wo:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn encoding_matches_the_hand_written_images() {
        // 123.456f32 is 0x42F6E979; CDAB word swap is the usual meter layout.
        let f = layout(DataType::F32, ByteOrder::Big, WordOrder::Little);
        assert_eq!(
            encode_registers(&f, &Value::F64(123.456)),
            Ok(vec![0xE979, 0x42F6])
        );
        let s = RegisterLayout {
            length: 3,
            ..layout(DataType::String, ByteOrder::Big, WordOrder::Big)
        };
        assert_eq!(
            encode_registers(&s, &Value::String("ABC".into())),
            Ok(vec![0x4142, 0x4300, 0x0000])
        );
    }

    #[test]
    fn encoding_refuses_values_that_do_not_fit() {
        let u16l = layout(DataType::U16, ByteOrder::Big, WordOrder::Big);
        assert!(matches!(
            encode_registers(&u16l, &Value::F64(65536.0)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode_registers(&u16l, &Value::I32(-1)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode_registers(&u16l, &Value::F64(1.5)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode_registers(&u16l, &Value::F64(f64::NAN)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode_registers(&u16l, &Value::String("1".into())),
            Err(EncodeError::WrongType { .. })
        ));
        let s = RegisterLayout {
            length: 1,
            ..layout(DataType::String, ByteOrder::Big, WordOrder::Big)
        };
        assert!(matches!(
            encode_registers(&s, &Value::String("ABC".into())),
            Err(EncodeError::TextTooLong { .. })
        ));
    }

    #[test]
    fn reverse_scaling_rounds_only_for_integer_registers() {
        let tenth = Scaling {
            scale: 0.1,
            offset: -40.0,
        };
        assert_eq!(tenth.reverse(25.5, DataType::I16), 655.0);
        assert_eq!(tenth.reverse(25.54, DataType::I16), 655.0);
        assert!((tenth.reverse(25.54, DataType::F32) - 655.4).abs() < 1e-9);
    }

    #[test]
    fn a_register_bit_is_set_and_cleared_in_device_byte_order() {
        assert_eq!(with_bit(0x0000, 3, true, ByteOrder::Big), 0x0008);
        assert_eq!(with_bit(0x00FF, 0, false, ByteOrder::Big), 0x00FE);
        assert_eq!(with_bit(0x0000, 3, true, ByteOrder::Little), 0x0800);
    }
}
