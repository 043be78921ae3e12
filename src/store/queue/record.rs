//! The on-disk record: `[length: u32 LE][crc32: u32 LE][payload]`. Pure.
//!
//! The checksum covers the payload and the length, so a torn write at the
//! end of a segment (power cut in the middle of an append) is recognised and
//! cut off on recovery instead of being read as data.

/// Bytes of a record's header.
pub const HEADER: usize = 8;

/// The largest payload a record may carry; a length beyond it can only be garbage.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

fn checksum(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one record holding `payload` to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What is at the start of a byte slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact record and the bytes it occupies.
    Record {
        /// Its payload.
        payload: &'a [u8],
        /// Header and payload.
        size: usize,
    },
    /// Nothing left.
    End,
    /// A partial or corrupt record: everything from here on is a torn tail.
    Torn,
}

/// Reads the record at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    if bytes.is_empty() {
        return Decoded::End;
    }
    let (Some(len), Some(crc)) = (bytes.get(0..4), bytes.get(4..8)) else {
        return Decoded::Torn;
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let size = HEADER + len as usize;
    match bytes.get(HEADER..size) {
        Some(payload) if (len as usize) <= MAX_PAYLOAD && checksum(len, payload) == crc => {
            Decoded::Record { payload, size }
        }
        _ => Decoded::Torn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_back_to_back() {
        let mut bytes = Vec::new();
        encode(b"first", &mut bytes);
        encode(b"", &mut bytes);
        encode(b"third", &mut bytes);
        let mut rest = &bytes[..];
        let mut seen = Vec::new();
        while let Decoded::Record { payload, size } = decode(rest) {
            seen.push(payload.to_vec());
            rest = &rest[size..];
        }
        assert_eq!(seen, vec![b"first".to_vec(), Vec::new(), b"third".to_vec()]);
        assert_eq!(decode(rest), Decoded::End);
    }

    #[test]
    fn every_truncation_and_any_flipped_bit_is_a_torn_tail() {
        let mut bytes = Vec::new();
        encode(b"payload bytes", &mut bytes);
        for cut in 1..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Decoded::Torn, "cut at {cut}");
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&flipped), Decoded::Torn, "bit {bit}");
        }
    }
}
