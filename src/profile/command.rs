//! Writes requested by commands (Sparkplug DCMD, plain `/set`): the rules
//! every write must pass before anything goes on the wire, and the register
//! image it becomes. Pure; the bus task owning the device performs it.
//!
//! A write is refused unless the metric exists, is marked `writable`, the
//! value is of the metric's own type, finite, within `min`/`max`, and its raw
//! image fits the registers once scaling is reversed. A refusal writes nothing.

use crate::core::write::{Rejection, Write, WriteImage};

use crate::acquire::modbus::codec::{encode_registers, with_bit};
use crate::config::{Config, Metric, Source};
use crate::core::layout::Table;
use crate::core::value::{DataType, DeviceId, MetricId, Value};

/// Checks a write of `value` into metric `metric` of device `device` and
/// computes its register image.
pub fn prepare(
    config: &Config,
    device: DeviceId,
    metric: MetricId,
    value: Value,
) -> Result<Write, Rejection> {
    let dev = config
        .devices
        .get(device)
        .ok_or_else(|| Rejection::UnknownDevice(device.to_string()))?;
    let def = dev
        .metrics
        .get(metric)
        .ok_or_else(|| Rejection::UnknownMetric(metric.to_string()))?;
    let image = image(def, &value)?;
    Ok(Write {
        device,
        metric,
        value,
        image,
    })
}

fn image(def: &Metric, value: &Value) -> Result<WriteImage, Rejection> {
    if !def.writable {
        return Err(Rejection::ReadOnly(def.name.clone()));
    }
    if value.data_type() != def.value_type() {
        return Err(Rejection::WrongType {
            metric: def.name.clone(),
            expected: def.value_type(),
            got: value.data_type().to_string(),
        });
    }
    if let Some(x) = value.as_f64() {
        let (min, max) = (
            def.min.unwrap_or(f64::NEG_INFINITY),
            def.max.unwrap_or(f64::INFINITY),
        );
        if !x.is_finite() || x < min || x > max {
            return Err(Rejection::OutOfRange {
                metric: def.name.clone(),
                value: x,
                min,
                max,
            });
        }
    }
    let unencodable = |source| Rejection::Unencodable {
        metric: def.name.clone(),
        source,
    };
    let register = match (&def.source, value) {
        // An output pin is switched like a coil.
        (Source::Pin(_), Value::Bool(on)) => return Ok(WriteImage::Coil(*on)),
        (Source::Pin(_), _) => return Err(Rejection::ReadOnly(def.name.clone())),
        (Source::Register(register), _) => register,
    };
    match (register.table, value) {
        (Table::Coil, Value::Bool(on)) => Ok(WriteImage::Coil(*on)),
        (_, Value::Bool(on)) if register.layout.bit.is_some() => Ok(WriteImage::RegisterBit {
            mask: with_bit(
                0,
                register.layout.bit.unwrap_or(0),
                true,
                register.layout.byte_order,
            ),
            on: *on,
        }),
        _ => {
            let raw = match (register.scaling, value.as_f64()) {
                (Some(scaling), Some(x)) => {
                    Value::F64(scaling.reverse(x, register.layout.data_type))
                }
                _ => value.clone(),
            };
            encode_registers(&register.layout, &raw)
                .map(WriteImage::Registers)
                .map_err(unencodable)
        }
    }
}

/// Reads a JSON command value as a value of `data_type`: numbers for numeric
/// types (integers must be whole and in range), `true`/`false` for bools,
/// strings for strings. `{"value": x}`, the shape fieldmq publishes, is accepted too.
pub fn value_from_json(json: &serde_json::Value, data_type: DataType) -> Result<Value, String> {
    if let serde_json::Value::Object(map) = json {
        return match map.get("value") {
            Some(inner) if !inner.is_object() => value_from_json(inner, data_type),
            _ => Err("expected a JSON value or {\"value\": ...}".into()),
        };
    }
    let wrong = || format!("expected a {data_type} value, got {json}");
    let int = |n: &serde_json::Number| -> Result<i128, String> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .ok_or_else(|| format!("expected a whole number for {data_type}, got {n}"))
    };
    let fit = |i: i128| -> Result<Value, String> {
        let out = |_| format!("{i} is out of range for {data_type}");
        Ok(match data_type {
            DataType::U16 => Value::U16(u16::try_from(i).map_err(out)?),
            DataType::I16 => Value::I16(i16::try_from(i).map_err(out)?),
            DataType::U32 => Value::U32(u32::try_from(i).map_err(out)?),
            DataType::I32 => Value::I32(i32::try_from(i).map_err(out)?),
            DataType::U64 => Value::U64(u64::try_from(i).map_err(out)?),
            DataType::I64 => Value::I64(i64::try_from(i).map_err(out)?),
            _ => return Err(wrong()),
        })
    };
    match (data_type, json) {
        (DataType::Bool, serde_json::Value::Bool(b)) => Ok(Value::Bool(*b)),
        (DataType::String, serde_json::Value::String(s)) => Ok(Value::String(s.clone())),
        (DataType::F32, serde_json::Value::Number(n)) => {
            n.as_f64().map(|x| Value::F32(x as f32)).ok_or_else(wrong)
        }
        (DataType::F64, serde_json::Value::Number(n)) => {
            n.as_f64().map(Value::F64).ok_or_else(wrong)
        }
        (
            DataType::U16
            | DataType::I16
            | DataType::U32
            | DataType::I32
            | DataType::U64
            | DataType::I64,
            serde_json::Value::Number(n),
        ) => fit(int(n)?),
        _ => Err(wrong()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[node]
group_id = "g"
node_id = "n"
[[bus]]
name = "b"
kind = "tcp"
address = "127.0.0.1:502"
[[device]]
name = "plc"
bus = "b"
unit = 1
[[device.metric]]
name = "setpoint"
table = "holding"
address = 0
type = "i16"
scale = 0.1
writable = true
min = -20.0
max = 80.0
[[device.metric]]
name = "speed"
table = "holding"
address = 1
type = "f32"
word_order = "little"
writable = true
[[device.metric]]
name = "run"
table = "coil"
address = 0
type = "bool"
writable = true
[[device.metric]]
name = "status"
table = "holding"
address = 3
type = "u16"
[[device.metric]]
name = "alarm_ack"
table = "holding"
address = 4
type = "bool"
bit = 2
writable = true
[[device.metric]]
name = "count"
table = "holding"
address = 5
type = "u16"
writable = true
"#;

    fn config() -> Config {
        Config::from_toml(Path::new("t.toml"), CONFIG).unwrap()
    }

    fn image_of(metric: MetricId, value: Value) -> Result<WriteImage, Rejection> {
        prepare(&config(), 0, metric, value).map(|w| w.image)
    }

    #[test]
    fn a_scaled_setpoint_is_written_as_its_raw_register() {
        assert_eq!(
            image_of(0, Value::F64(-12.5)),
            Ok(WriteImage::Registers(vec![(-125i16).cast_unsigned()]))
        );
    }

    #[test]
    fn floats_follow_the_metric_word_order_and_coils_and_bits_their_own_path() {
        assert_eq!(
            image_of(1, Value::F32(123.456)),
            Ok(WriteImage::Registers(vec![0xE979, 0x42F6]))
        );
        assert_eq!(image_of(2, Value::Bool(true)), Ok(WriteImage::Coil(true)));
        assert_eq!(
            image_of(4, Value::Bool(false)),
            Ok(WriteImage::RegisterBit {
                mask: 0x0004,
                on: false
            })
        );
    }

    #[test]
    fn read_only_wrong_type_out_of_range_and_unencodable_writes_are_refused() {
        assert_eq!(
            image_of(3, Value::U16(1)),
            Err(Rejection::ReadOnly("status".into()))
        );
        assert!(matches!(
            image_of(0, Value::I16(1)),
            Err(Rejection::WrongType { .. })
        ));
        assert!(matches!(
            image_of(0, Value::F64(80.1)),
            Err(Rejection::OutOfRange { .. })
        ));
        assert!(matches!(
            image_of(1, Value::F32(f32::NAN)),
            Err(Rejection::OutOfRange { .. })
        ));
        assert!(matches!(
            prepare(&config(), 0, 99, Value::U16(1)),
            Err(Rejection::UnknownMetric(_))
        ));
    }

    #[test]
    fn json_values_are_read_as_the_metric_type() {
        use serde_json::json;
        assert_eq!(
            value_from_json(&json!(42), DataType::U16),
            Ok(Value::U16(42))
        );
        assert_eq!(
            value_from_json(&json!({"value": 2.5}), DataType::F64),
            Ok(Value::F64(2.5))
        );
        assert_eq!(
            value_from_json(&json!(true), DataType::Bool),
            Ok(Value::Bool(true))
        );
        assert!(value_from_json(&json!(70000), DataType::U16).is_err());
        assert!(value_from_json(&json!(1.5), DataType::U16).is_err());
        assert!(value_from_json(&json!("1"), DataType::U16).is_err());
        assert!(value_from_json(&json!(1), DataType::Bool).is_err());
        assert!(value_from_json(&json!(null), DataType::F64).is_err());
        assert!(value_from_json(&json!({"value": {"value": 1}}), DataType::F64).is_err());
    }
}
