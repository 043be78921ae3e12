//! Building Sparkplug B payloads from samples: datatypes, values, aliases,
//! quality and engineering-unit properties. Pure; the session decides seq
//! and when each payload is sent.

use crate::config::Config;
use crate::core::value::{DataType, DeviceId, MetricId, Quality, Sample, Value};
use crate::profile::sparkplug::proto::Payload;
use crate::profile::sparkplug::proto::payload::{
    Metric, PropertySet, PropertyValue, metric, property_value,
};

/// The one node metric a host may write (tck-id-operational-behavior-data-commands-rebirth-name).
pub const REBIRTH: &str = "Node Control/Rebirth";
/// The node control metric that sends an edge node to the next server of its list.
pub const NEXT_SERVER: &str = "Node Control/Next Server";

/// Sparkplug datatype ids (spec "Data Types"; `sparkplug-edge.md` §13).
pub mod datatype {
    /// Int16.
    pub const INT16: u32 = 2;
    /// Int32.
    pub const INT32: u32 = 3;
    /// Int64.
    pub const INT64: u32 = 4;
    /// UInt16.
    pub const UINT16: u32 = 6;
    /// UInt32.
    pub const UINT32: u32 = 7;
    /// UInt64.
    pub const UINT64: u32 = 8;
    /// Float.
    pub const FLOAT: u32 = 9;
    /// Double.
    pub const DOUBLE: u32 = 10;
    /// Boolean.
    pub const BOOLEAN: u32 = 11;
    /// String.
    pub const STRING: u32 = 12;
    /// Template (a definition or an instance of one).
    pub const TEMPLATE: u32 = 19;
}

/// The `Quality` property values Sparkplug hosts understand.
pub mod quality {
    /// The value is not trustworthy.
    pub const BAD: i32 = 0;
    /// The value was read successfully.
    pub const GOOD: i32 = 192;
}

/// The name of the birth/death sequence metric (tck-id-payloads-nbirth-bdseq).
pub const BD_SEQ: &str = "bdSeq";

/// The Sparkplug datatype of a fieldmq type (§14 of the shared mapping).
pub fn datatype_of(t: DataType) -> u32 {
    match t {
        DataType::Bool => datatype::BOOLEAN,
        DataType::U16 => datatype::UINT16,
        DataType::I16 => datatype::INT16,
        DataType::U32 => datatype::UINT32,
        DataType::I32 => datatype::INT32,
        DataType::U64 => datatype::UINT64,
        DataType::I64 => datatype::INT64,
        DataType::F32 => datatype::FLOAT,
        DataType::F64 => datatype::DOUBLE,
        DataType::String => datatype::STRING,
    }
}

/// The protobuf value field of a value. Signed integers travel as their two's
/// complement bits, sign-extended to the field's width, as Tahu does.
pub fn value_field(value: &Value) -> metric::Value {
    match value {
        Value::Bool(v) => metric::Value::BooleanValue(*v),
        Value::U16(v) => metric::Value::IntValue(u32::from(*v)),
        Value::I16(v) => metric::Value::IntValue(i32::from(*v).cast_unsigned()),
        Value::U32(v) => metric::Value::IntValue(*v),
        Value::I32(v) => metric::Value::IntValue(v.cast_unsigned()),
        Value::U64(v) => metric::Value::LongValue(*v),
        Value::I64(v) => metric::Value::LongValue(v.cast_unsigned()),
        Value::F32(v) => metric::Value::FloatValue(*v),
        Value::F64(v) => metric::Value::DoubleValue(*v),
        Value::String(v) => metric::Value::StringValue(v.clone()),
    }
}

/// A command's value field read as a value of type `t`, the inverse of
/// [`value_field`]; `None` when the field is not the one `t` travels in or
/// the number does not fit. A signed 16-bit value is accepted sign-extended
/// (as Tahu and fieldmq send it) or as its bare 16 bits.
pub fn value_from_field(field: &metric::Value, t: DataType) -> Option<Value> {
    use metric::Value as F;
    Some(match (t, field) {
        (DataType::Bool, F::BooleanValue(v)) => Value::Bool(*v),
        (DataType::U16, F::IntValue(v)) => Value::U16(u16::try_from(*v).ok()?),
        (DataType::I16, F::IntValue(v)) => Value::I16(
            i16::try_from(v.cast_signed())
                .ok()
                .or_else(|| u16::try_from(*v).ok().map(u16::cast_signed))?,
        ),
        (DataType::U32, F::IntValue(v)) => Value::U32(*v),
        (DataType::I32, F::IntValue(v)) => Value::I32(v.cast_signed()),
        (DataType::U64, F::LongValue(v)) => Value::U64(*v),
        (DataType::I64, F::LongValue(v)) => Value::I64(v.cast_signed()),
        (DataType::F32, F::FloatValue(v)) => Value::F32(*v),
        (DataType::F64, F::DoubleValue(v)) => Value::F64(*v),
        (DataType::String, F::StringValue(v)) => Value::String(v.clone()),
        _ => return None,
    })
}

/// Aliases for every device metric: unique across the node (tck-id-payloads-alias-uniqueness).
/// Alias 0 and the first few are left to node metrics.
#[derive(Debug, Clone)]
pub struct Aliases {
    first_of_device: Vec<u64>,
    metrics_of_device: Vec<usize>,
}

/// Aliases below this belong to node metrics.
pub const FIRST_DEVICE_ALIAS: u64 = 16;

impl Aliases {
    /// Numbers every device's metrics consecutively, in config order.
    pub fn new(config: &Config) -> Aliases {
        let mut next = FIRST_DEVICE_ALIAS;
        let first_of_device = config
            .devices
            .iter()
            .map(|d| {
                let first = next;
                next += d.metrics.len() as u64;
                first
            })
            .collect();
        let metrics_of_device = config.devices.iter().map(|d| d.metrics.len()).collect();
        Aliases {
            first_of_device,
            metrics_of_device,
        }
    }

    /// The alias of a device metric.
    pub fn of(&self, device: DeviceId, metric: MetricId) -> u64 {
        self.first_of_device.get(device).copied().unwrap_or(0) + metric as u64
    }

    /// The metric of `device` that `alias` stands for, if it is one of that device's.
    pub fn metric_of(&self, device: DeviceId, alias: u64) -> Option<MetricId> {
        let first = *self.first_of_device.get(device)?;
        let metric = usize::try_from(alias.checked_sub(first)?).ok()?;
        (metric < *self.metrics_of_device.get(device)?).then_some(metric)
    }
}

fn quality_property(q: &Quality) -> PropertyValue {
    let code = match q {
        Quality::Good => quality::GOOD,
        Quality::Bad(_) => quality::BAD,
    };
    PropertyValue {
        r#type: Some(datatype::INT32),
        is_null: None,
        value: Some(property_value::Value::IntValue(code.cast_unsigned())),
    }
}

fn string_property(s: &str) -> PropertyValue {
    PropertyValue {
        r#type: Some(datatype::STRING),
        is_null: None,
        value: Some(property_value::Value::StringValue(s.to_owned())),
    }
}

/// A device metric as it appears in a DBIRTH: name, alias, datatype, unit
/// and quality properties, and the value or `is_null` when there is none.
pub fn birth_metric(config: &Config, aliases: &Aliases, sample: &Sample) -> Option<Metric> {
    let def = config
        .devices
        .get(sample.device)?
        .metrics
        .get(sample.metric)?;
    let mut keys = vec!["Quality".to_owned()];
    let mut values = vec![quality_property(&sample.quality)];
    if let Some(unit) = &def.unit {
        keys.push("engUnit".to_owned());
        values.push(string_property(unit));
    }
    Some(Metric {
        name: Some(def.name.clone()),
        alias: Some(aliases.of(sample.device, sample.metric)),
        timestamp: Some(sample.timestamp_ms),
        datatype: Some(datatype_of(def.value_type())),
        is_null: sample.value.is_none().then_some(true),
        properties: Some(PropertySet { keys, values }),
        value: sample.value.as_ref().map(value_field),
        ..Metric::default()
    })
}

/// A device metric as it appears in a DDATA: alias only (tck-id-payloads-alias-data-cmd-requirement),
/// no datatype (SHOULD NOT), the value or `is_null`, and the quality property when it is bad.
pub fn data_metric(aliases: &Aliases, sample: &Sample, historical: bool) -> Metric {
    let properties = match &sample.quality {
        Quality::Good => None,
        bad => Some(PropertySet {
            keys: vec!["Quality".to_owned()],
            values: vec![quality_property(bad)],
        }),
    };
    Metric {
        alias: Some(aliases.of(sample.device, sample.metric)),
        timestamp: Some(sample.timestamp_ms),
        is_historical: historical.then_some(true),
        is_null: sample.value.is_none().then_some(true),
        properties,
        value: sample.value.as_ref().map(value_field),
        ..Metric::default()
    }
}

/// The NDEATH payload: exactly one metric, `bdSeq` as Int64, and no seq (tck-id-topics-ndeath-*).
pub fn node_death(bd_seq: u64, timestamp_ms: u64) -> Payload {
    Payload {
        timestamp: Some(timestamp_ms),
        metrics: vec![Metric {
            name: Some(BD_SEQ.to_owned()),
            timestamp: Some(timestamp_ms),
            datatype: Some(datatype::INT64),
            value: Some(metric::Value::LongValue(bd_seq)),
            ..Metric::default()
        }],
        ..Payload::default()
    }
}

/// The NCMD a host sends to ask an edge node for a full rebirth
/// (`Node Control/Rebirth` = true).
pub fn rebirth_request(timestamp_ms: u64) -> Payload {
    Payload {
        timestamp: Some(timestamp_ms),
        metrics: vec![Metric {
            name: Some(REBIRTH.to_owned()),
            timestamp: Some(timestamp_ms),
            datatype: Some(datatype::BOOLEAN),
            value: Some(metric::Value::BooleanValue(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::value::Fault;
    use prost::Message;
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
name = "a"
bus = "b"
unit = 1
[[device.metric]]
name = "x"
table = "holding"
address = 0
type = "i16"
[[device.metric]]
name = "volts"
table = "holding"
address = 1
type = "u16"
scale = 0.1
unit = "V"
[[device]]
name = "c"
bus = "b"
unit = 2
[[device.metric]]
name = "y"
table = "coil"
address = 0
type = "bool"
"#;

    fn config() -> Config {
        Config::from_toml(Path::new("t.toml"), CONFIG).expect("valid")
    }

    fn sample(device: usize, metric: usize, value: Option<Value>, quality: Quality) -> Sample {
        Sample {
            device,
            metric,
            value,
            quality,
            timestamp_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn values_use_the_field_their_datatype_requires_with_sign_extension() {
        assert_eq!(
            value_field(&Value::I16(-1)),
            metric::Value::IntValue(0xFFFF_FFFF)
        );
        assert_eq!(
            value_field(&Value::I32(-2)),
            metric::Value::IntValue(0xFFFF_FFFE)
        );
        assert_eq!(
            value_field(&Value::I64(-1)),
            metric::Value::LongValue(u64::MAX)
        );
        assert_eq!(
            value_field(&Value::F32(1.5)),
            metric::Value::FloatValue(1.5)
        );
        assert_eq!(datatype_of(DataType::F32), datatype::FLOAT);
        assert_eq!(datatype_of(DataType::I16), datatype::INT16);
    }

    #[test]
    fn aliases_are_unique_across_devices_and_clear_of_node_metrics() {
        let cfg = config();
        let aliases = Aliases::new(&cfg);
        assert_eq!(
            [aliases.of(0, 0), aliases.of(0, 1), aliases.of(1, 0)],
            [
                FIRST_DEVICE_ALIAS,
                FIRST_DEVICE_ALIAS + 1,
                FIRST_DEVICE_ALIAS + 2
            ]
        );
    }

    #[test]
    fn a_birth_metric_carries_name_alias_datatype_unit_and_quality_and_survives_encoding() {
        let cfg = config();
        let aliases = Aliases::new(&cfg);
        let good = birth_metric(
            &cfg,
            &aliases,
            &sample(0, 1, Some(Value::F64(230.1)), Quality::Good),
        )
        .expect("known metric");
        let payload = Payload {
            metrics: vec![good],
            ..Payload::default()
        };
        let decoded = Payload::decode(payload.encode_to_vec().as_slice()).expect("decodes");
        let m = &decoded.metrics[0];
        assert_eq!(m.name.as_deref(), Some("volts"));
        assert_eq!(m.alias, Some(FIRST_DEVICE_ALIAS + 1));
        assert_eq!(
            m.datatype,
            Some(datatype::DOUBLE),
            "scaled values are doubles"
        );
        assert_eq!(m.value, Some(metric::Value::DoubleValue(230.1)));
        let props = m.properties.as_ref().expect("properties");
        assert_eq!(props.keys, ["Quality", "engUnit"]);
        assert_eq!(
            props.values[0].value,
            Some(property_value::Value::IntValue(192))
        );
        assert_eq!(
            props.values[1].value,
            Some(property_value::Value::StringValue("V".into()))
        );

        let bad = birth_metric(
            &cfg,
            &aliases,
            &sample(1, 0, None, Quality::Bad(Fault::Timeout)),
        )
        .expect("known");
        assert_eq!(
            (bad.is_null, bad.value),
            (Some(true), None),
            "no stale number, is_null instead"
        );
        assert_eq!(bad.datatype, Some(datatype::BOOLEAN));
        assert!(birth_metric(&cfg, &aliases, &sample(5, 0, None, Quality::Good)).is_none());
    }

    #[test]
    fn a_data_metric_refers_by_alias_only_and_flags_history_and_bad_quality() {
        let cfg = config();
        let aliases = Aliases::new(&cfg);
        let m = data_metric(
            &aliases,
            &sample(0, 0, Some(Value::I16(-5)), Quality::Good),
            false,
        );
        assert_eq!(
            (m.name.as_ref(), m.datatype, m.alias),
            (None, None, Some(FIRST_DEVICE_ALIAS))
        );
        assert_eq!((m.is_historical, m.properties.as_ref()), (None, None));
        let m = data_metric(
            &aliases,
            &sample(0, 0, None, Quality::Bad(Fault::Exception(2))),
            true,
        );
        assert_eq!(
            (m.is_historical, m.is_null, m.value.as_ref()),
            (Some(true), Some(true), None)
        );
        let q = &m.properties.expect("quality property").values[0];
        assert_eq!(q.value, Some(property_value::Value::IntValue(0)));
    }

    #[test]
    fn ndeath_holds_only_bdseq_as_int64_and_no_seq() {
        let p = node_death(7, 1);
        assert_eq!(p.seq, None);
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].name.as_deref(), Some(BD_SEQ));
        assert_eq!(p.metrics[0].datatype, Some(datatype::INT64));
        assert_eq!(p.metrics[0].value, Some(metric::Value::LongValue(7)));
    }
}
