//! What a device says it is: the basic objects of Modbus Read Device
//! Identification (function 43, MEI type 14).
//!
//! The strings come from the device, so they are cleaned once here: bytes
//! that are not UTF-8 are replaced, control characters (a terminal escape in
//! a vendor name would reach the operator's screen through `scan` and
//! `read`) become spaces, and padding is trimmed.

use std::fmt;

/// Object id of the vendor name.
pub const VENDOR_NAME: u8 = 0x00;
/// Object id of the product code.
pub const PRODUCT_CODE: u8 = 0x01;
/// Object id of the major/minor revision.
pub const REVISION: u8 = 0x02;

/// A device's basic identification: vendor, product code and revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// Vendor name (object 0x00).
    pub vendor: String,
    /// Product code (object 0x01).
    pub product_code: String,
    /// Major/minor revision (object 0x02).
    pub revision: String,
}

impl Identity {
    /// The identity made of `(object id, bytes)` pairs as a device sent
    /// them; objects other than the three basic ones are ignored, and a
    /// basic object sent twice keeps its first value.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = (u8, &'a [u8])>) -> Identity {
        let mut identity = Identity::default();
        for (id, bytes) in objects {
            let slot = match id {
                VENDOR_NAME => &mut identity.vendor,
                PRODUCT_CODE => &mut identity.product_code,
                REVISION => &mut identity.revision,
                _ => continue,
            };
            if slot.is_empty() {
                *slot = clean(bytes);
            }
        }
        identity
    }

    /// Whether the device is the product `vendor` / `product_code` names;
    /// case and surrounding spaces do not matter.
    pub fn is(&self, vendor: &str, product_code: &str) -> bool {
        self.vendor.eq_ignore_ascii_case(vendor.trim())
            && self.product_code.eq_ignore_ascii_case(product_code.trim())
    }

    /// The identity as a JSON object with the keys `vendor`, `product_code`, `revision`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "vendor": self.vendor,
            "product_code": self.product_code,
            "revision": self.revision,
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |s: &str| {
            if s.is_empty() {
                "?".to_owned()
            } else {
                s.to_owned()
            }
        };
        write!(
            f,
            "{} {} rev {}",
            show(&self.vendor),
            show(&self.product_code),
            show(&self.revision)
        )
    }
}

fn clean(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_objects_are_taken_and_others_ignored() {
        let identity = Identity::from_objects([
            (REVISION, b"v1.2".as_slice()),
            (0x04, b"ignored".as_slice()),
            (VENDOR_NAME, b"ACME ".as_slice()),
            (PRODUCT_CODE, b"PM-9\0\0".as_slice()),
            (VENDOR_NAME, b"second".as_slice()),
        ]);
        assert_eq!(
            identity,
            Identity {
                vendor: "ACME".into(),
                product_code: "PM-9".into(),
                revision: "v1.2".into(),
            }
        );
        assert!(identity.is("acme", " pm-9"));
        assert!(!identity.is("acme", "PM-90"));
        assert_eq!(identity.to_string(), "ACME PM-9 rev v1.2");
    }

    #[test]
    fn device_strings_cannot_carry_terminal_escapes_or_bad_utf8() {
        let identity = Identity::from_objects([
            (VENDOR_NAME, b"\x1b[2Jevil\x07".as_slice()),
            (PRODUCT_CODE, [0xff, b'X'].as_slice()),
        ]);
        assert_eq!(identity.vendor, "[2Jevil");
        assert_eq!(identity.product_code, "\u{fffd}X");
        assert_eq!(identity.to_string(), "[2Jevil \u{fffd}X rev ?");
    }
}
