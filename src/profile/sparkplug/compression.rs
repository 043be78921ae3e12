//! Compressed Sparkplug payloads, as Eclipse Tahu and Cirrus Link write
//! them: the encoded payload, compressed, is the `body` of a wrapper payload
//! whose `uuid` is `SPBV1.0_COMPRESSED` and whose one metric `algorithm`
//! (String) names the algorithm: `GZIP`, or `DEFLATE`, which is a zlib
//! stream (what Java's `Deflater` and pako's `deflate` write). A wrapper
//! without the metric is DEFLATE, as Tahu reads it. Pure: payloads in,
//! payloads out.
//!
//! Inflating is bounded: a few kilobytes of a hostile command could
//! otherwise inflate to gigabytes.

use std::io::{Read as _, Write as _};

use prost::Message as _;
use thiserror::Error;

use crate::config::Compression;
use crate::profile::sparkplug::payload::datatype;
use crate::profile::sparkplug::proto::Payload;
use crate::profile::sparkplug::proto::payload::{Metric, metric};

/// The `uuid` that marks a compressed payload.
pub const COMPRESSED_UUID: &str = "SPBV1.0_COMPRESSED";
/// The metric naming the algorithm.
const ALGORITHM: &str = "algorithm";

/// Why a compressed payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompressionError {
    /// The `algorithm` metric names something else.
    #[error("compressed with an unknown algorithm {0:?} (GZIP and DEFLATE are known)")]
    UnknownAlgorithm(String),
    /// The body is not a stream of the algorithm.
    #[error("the compressed body does not inflate: {0}")]
    Corrupt(String),
    /// The body inflates to more than the limit.
    #[error("the compressed body inflates to more than {0} bytes")]
    TooLarge(usize),
    /// What the body inflates to is not a Sparkplug B payload.
    #[error("the inflated body is not a Sparkplug B payload: {0}")]
    Inner(String),
}

/// `payload` encoded, and compressed with `algorithm` inside a wrapper
/// unless that is [`Compression::None`].
pub fn encode(payload: &Payload, algorithm: Compression) -> Vec<u8> {
    let plain = payload.encode_to_vec();
    let (name, body) = match algorithm {
        Compression::None => return plain,
        Compression::Gzip => {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            // Writing to a Vec cannot fail.
            let body = z.write_all(&plain).and_then(|()| z.finish());
            ("GZIP", body)
        }
        Compression::Deflate => {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            let body = z.write_all(&plain).and_then(|()| z.finish());
            ("DEFLATE", body)
        }
    };
    let Ok(body) = body else {
        return plain;
    };
    Payload {
        timestamp: payload.timestamp,
        seq: payload.seq,
        uuid: Some(COMPRESSED_UUID.into()),
        body: Some(body),
        metrics: vec![Metric {
            name: Some(ALGORITHM.into()),
            datatype: Some(datatype::STRING),
            value: Some(metric::Value::StringValue(name.into())),
            ..Metric::default()
        }],
    }
    .encode_to_vec()
}

/// Whether `payload` is a compression wrapper.
pub fn is_compressed(payload: &Payload) -> bool {
    payload.uuid.as_deref() == Some(COMPRESSED_UUID)
}

/// The payload a wrapper carries, inflated to at most `limit` bytes; any
/// other payload as it is.
pub fn open(payload: Payload, limit: usize) -> Result<Payload, CompressionError> {
    if !is_compressed(&payload) {
        return Ok(payload);
    }
    let algorithm = payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(ALGORITHM))
        .map(|m| match &m.value {
            Some(metric::Value::StringValue(s)) => s.to_ascii_uppercase(),
            _ => String::new(),
        })
        .unwrap_or_else(|| "DEFLATE".into());
    let body = payload.body.unwrap_or_default();
    let inflated = match algorithm.as_str() {
        "GZIP" => inflate(flate2::read::GzDecoder::new(body.as_slice()), limit)?,
        "DEFLATE" => match inflate(flate2::read::ZlibDecoder::new(body.as_slice()), limit) {
            // Some writers send a raw deflate stream under this name.
            Err(CompressionError::Corrupt(_)) => {
                inflate(flate2::read::DeflateDecoder::new(body.as_slice()), limit)?
            }
            other => other?,
        },
        _ => return Err(CompressionError::UnknownAlgorithm(algorithm)),
    };
    Payload::decode(inflated.as_slice()).map_err(|e| CompressionError::Inner(e.to_string()))
}

fn inflate(reader: impl std::io::Read, limit: usize) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| CompressionError::Corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(CompressionError::TooLarge(limit));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Payload {
        Payload {
            timestamp: Some(1_700_000_000_000),
            seq: Some(7),
            metrics: (0..50)
                .map(|i| Metric {
                    name: Some(format!("meter/voltage/L{i}")),
                    alias: Some(i),
                    datatype: Some(datatype::DOUBLE),
                    value: Some(metric::Value::DoubleValue(230.0)),
                    ..Metric::default()
                })
                .collect(),
            ..Payload::default()
        }
    }

    #[test]
    fn both_algorithms_round_trip_in_a_tahu_wrapper_and_shrink_a_birth() {
        for (algorithm, name) in [
            (Compression::Gzip, "GZIP"),
            (Compression::Deflate, "DEFLATE"),
        ] {
            let bytes = encode(&sample(), algorithm);
            let wrapper = Payload::decode(bytes.as_slice()).unwrap();
            assert!(is_compressed(&wrapper));
            assert_eq!(wrapper.seq, Some(7), "seq stays readable outside");
            assert_eq!(
                wrapper.metrics[0].value,
                Some(metric::Value::StringValue(name.into()))
            );
            assert!(
                bytes.len() * 3 < sample().encoded_len(),
                "{name}: {} bytes",
                bytes.len()
            );
            assert_eq!(open(wrapper, 1 << 20).unwrap(), sample());
        }
        let plain = encode(&sample(), Compression::None);
        let plain = Payload::decode(plain.as_slice()).unwrap();
        assert_eq!(
            open(plain.clone(), 16).unwrap(),
            plain,
            "not a wrapper: as it is"
        );
    }

    #[test]
    fn bombs_garbage_and_unknown_algorithms_are_refused() {
        let zeros = Payload {
            body: Some(vec![0; 10 << 20]),
            ..Payload::default()
        };
        let bomb = Payload::decode(encode(&zeros, Compression::Gzip).as_slice()).unwrap();
        assert!(bomb.body.as_ref().is_some_and(|b| b.len() < 100_000));
        assert_eq!(
            open(bomb, 1 << 20),
            Err(CompressionError::TooLarge(1 << 20))
        );

        let mut garbage =
            Payload::decode(encode(&sample(), Compression::Deflate).as_slice()).unwrap();
        garbage.body = Some(b"not deflate".to_vec());
        assert!(matches!(
            open(garbage, 1 << 20),
            Err(CompressionError::Corrupt(_))
        ));

        let mut unknown = Payload::decode(encode(&sample(), Compression::Gzip).as_slice()).unwrap();
        unknown.metrics[0].value = Some(metric::Value::StringValue("LZ4".into()));
        assert_eq!(
            open(unknown, 1 << 20),
            Err(CompressionError::UnknownAlgorithm("LZ4".into()))
        );
    }

    #[test]
    fn a_raw_deflate_stream_and_a_wrapper_without_algorithm_are_read_as_deflate() {
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&sample().encode_to_vec()).unwrap();
        let wrapper = Payload {
            uuid: Some(COMPRESSED_UUID.into()),
            body: Some(raw.finish().unwrap()),
            ..Payload::default()
        };
        assert_eq!(open(wrapper, 1 << 20).unwrap(), sample());
    }
}
