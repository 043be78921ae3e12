//! The stored form of a batch of samples (one device's changes of one poll
//! cycle): compact, little-endian, versioned by a leading byte. Pure.
//!
//! Samples are stored rather than finished MQTT messages so that, on
//! replay, the profile encodes them for the session that exists then
//! (Sparkplug: the new session's seq, aliases of the current birth,
//! `is_historical`).
//!
//! A batch names its device by [`crate::config::Device::key`], a checksum of
//! its name and its metrics' names and types, not by its position in the
//! config: a reload or a restart with an edited device map must never pass
//! one device's stored values off as another's. A batch whose key matches no
//! device of the map in force is dropped, and counted.

use thiserror::Error;

use crate::core::value::{DeviceId, Fault, Quality, Sample, Value};

/// Format of the records written by this version (1 named devices by position).
const VERSION: u8 = 2;

/// A stored record that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("stored samples unusable: {0}")]
pub struct Corrupt(&'static str);

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes samples of the device whose key is `device_key`.
pub fn encode(device_key: u32, samples: &[Sample]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + samples.len() * 16);
    out.push(VERSION);
    out.extend_from_slice(&device_key.to_le_bytes());
    out.extend_from_slice(&(samples.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for s in samples.iter().take(u16::MAX as usize) {
        out.extend_from_slice(&(s.metric as u16).to_le_bytes());
        out.extend_from_slice(&s.timestamp_ms.to_le_bytes());
        match (&s.quality, &s.value) {
            (Quality::Good, Some(v)) => match v {
                Value::Bool(x) => out.extend_from_slice(&[10, u8::from(*x)]),
                Value::U16(x) => {
                    out.push(11);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::I16(x) => {
                    out.push(12);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::U32(x) => {
                    out.push(13);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::I32(x) => {
                    out.push(14);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::U64(x) => {
                    out.push(15);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::I64(x) => {
                    out.push(16);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::F32(x) => {
                    out.push(17);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::F64(x) => {
                    out.push(18);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::String(x) => {
                    out.push(19);
                    put_str(&mut out, x);
                }
            },
            (Quality::Bad(Fault::Timeout), _) | (Quality::Good, None) => out.push(0),
            (Quality::Bad(Fault::Exception(code)), _) => out.extend_from_slice(&[1, *code]),
            (Quality::Bad(Fault::Link(why)), _) => {
                out.push(2);
                put_str(&mut out, why);
            }
            (Quality::Bad(Fault::Malformed(why)), _) => {
                out.push(3);
                put_str(&mut out, why);
            }
            (Quality::Bad(Fault::Offline), _) => out.push(4),
        }
    }
    out
}

/// How many samples a record written by [`encode`] holds, read from its
/// header (0 for what is not such a record); the buffer's weight.
pub fn count(bytes: &[u8]) -> u64 {
    match bytes {
        [VERSION, _, _, _, _, lo, hi, ..] => u64::from(u16::from_le_bytes([*lo, *hi])),
        _ => 0,
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Corrupt> {
        let (head, rest) = self.0.split_at_checked(N).ok_or(Corrupt("truncated"))?;
        self.0 = rest;
        head.try_into().map_err(|_| Corrupt("truncated"))
    }

    fn string(&mut self) -> Result<String, Corrupt> {
        let len = u16::from_le_bytes(self.take()?) as usize;
        let (head, rest) = self
            .0
            .split_at_checked(len)
            .ok_or(Corrupt("truncated text"))?;
        self.0 = rest;
        String::from_utf8(head.to_vec()).map_err(|_| Corrupt("text is not UTF-8"))
    }
}

/// Decodes a record written by [`encode`]; `device_of` finds the device of
/// the stored key in the map in force.
pub fn decode(
    bytes: &[u8],
    device_of: impl Fn(u32) -> Option<DeviceId>,
) -> Result<(DeviceId, Vec<Sample>), Corrupt> {
    let mut r = Reader(bytes);
    if r.take::<1>()?[0] != VERSION {
        return Err(Corrupt("unknown format version"));
    }
    let device = device_of(u32::from_le_bytes(r.take()?)).ok_or(Corrupt(
        "its device is no longer in the config, or its metrics changed",
    ))?;
    let count = u16::from_le_bytes(r.take()?);
    let mut samples = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let metric = usize::from(u16::from_le_bytes(r.take()?));
        let timestamp_ms = u64::from_le_bytes(r.take()?);
        let tag = r.take::<1>()?[0];
        let good = |v: Value| (Some(v), Quality::Good);
        let bad = |f: Fault| (None, Quality::Bad(f));
        let (value, quality) = match tag {
            0 => bad(Fault::Timeout),
            1 => bad(Fault::Exception(r.take::<1>()?[0])),
            2 => bad(Fault::Link(r.string()?)),
            3 => bad(Fault::Malformed(r.string()?)),
            4 => bad(Fault::Offline),
            10 => good(Value::Bool(r.take::<1>()?[0] != 0)),
            11 => good(Value::U16(u16::from_le_bytes(r.take()?))),
            12 => good(Value::I16(i16::from_le_bytes(r.take()?))),
            13 => good(Value::U32(u32::from_le_bytes(r.take()?))),
            14 => good(Value::I32(i32::from_le_bytes(r.take()?))),
            15 => good(Value::U64(u64::from_le_bytes(r.take()?))),
            16 => good(Value::I64(i64::from_le_bytes(r.take()?))),
            17 => good(Value::F32(f32::from_le_bytes(r.take()?))),
            18 => good(Value::F64(f64::from_le_bytes(r.take()?))),
            19 => good(Value::String(r.string()?)),
            _ => return Err(Corrupt("unknown value tag")),
        };
        samples.push(Sample {
            device,
            metric,
            value,
            quality,
            timestamp_ms,
        });
    }
    if !r.0.is_empty() {
        return Err(Corrupt("trailing bytes"));
    }
    Ok((device, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metric: usize, value: Option<Value>, quality: Quality) -> Sample {
        Sample {
            device: 3,
            metric,
            value,
            quality,
            timestamp_ms: 1_764_000_000_123 + metric as u64,
        }
    }

    #[test]
    fn every_value_type_and_fault_round_trips() {
        let samples = vec![
            sample(0, Some(Value::Bool(true)), Quality::Good),
            sample(1, Some(Value::U16(65535)), Quality::Good),
            sample(2, Some(Value::I16(-2)), Quality::Good),
            sample(3, Some(Value::U32(7)), Quality::Good),
            sample(4, Some(Value::I32(-7)), Quality::Good),
            sample(5, Some(Value::U64(u64::MAX)), Quality::Good),
            sample(6, Some(Value::I64(i64::MIN)), Quality::Good),
            sample(7, Some(Value::F32(-231.5)), Quality::Good),
            sample(8, Some(Value::F64(1e300)), Quality::Good),
            sample(9, Some(Value::String("SN-ÄÖ".into())), Quality::Good),
            sample(10, None, Quality::Bad(Fault::Timeout)),
            sample(11, None, Quality::Bad(Fault::Exception(2))),
            sample(12, None, Quality::Bad(Fault::Link("refused".into()))),
            sample(13, None, Quality::Bad(Fault::Malformed("short".into()))),
            sample(14, None, Quality::Bad(Fault::Offline)),
        ];
        let bytes = encode(0xFEED_0003, &samples);
        assert_eq!(count(&bytes), 15);
        let device_of = |key| (key == 0xFEED_0003).then_some(3);
        assert_eq!(decode(&bytes, device_of), Ok((3, samples)));
        assert!(
            decode(&bytes, |_| None).is_err(),
            "a batch of a device the map no longer has is not passed off as another's"
        );
    }

    #[test]
    fn a_float_sample_costs_fifteen_bytes() {
        let one = encode(0, &[sample(0, Some(Value::F32(1.0)), Quality::Good)]);
        let two = encode(
            0,
            &[
                sample(0, Some(Value::F32(1.0)), Quality::Good),
                sample(1, Some(Value::F32(2.0)), Quality::Good),
            ],
        );
        assert_eq!(two.len() - one.len(), 15);
    }

    #[test]
    fn every_truncation_is_reported_not_misread() {
        let bytes = encode(
            1,
            &[
                sample(0, Some(Value::String("abc".into())), Quality::Good),
                sample(1, Some(Value::F64(2.0)), Quality::Good),
            ],
        );
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], |_| Some(1)).is_err(), "cut at {cut}");
        }
    }
}
