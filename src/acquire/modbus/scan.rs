//! Finding what is on a bus: which unit ids answer, how fast, and what they
//! say they are. A scan only reads.
//!
//! Each unit is first asked a harmless read (function 03, holding register
//! 0, one register). Any answer proves a device is there, an exception
//! included: a meter without register 0 still says "illegal data address".
//! Only a unit that answered is then asked function 43/14, so a silent unit
//! id costs one timeout and not two, and a device that ignores function 43
//! (some stay silent instead of refusing) is still found. Exceptions 0x0A
//! and 0x0B are a TCP gateway saying that nothing answered behind it: no
//! device.
//!
//! The short read gets a short timeout and identification a long one: its
//! answer may carry three strings of up to 255 bytes each, which alone take
//! 280 ms at 9600 baud.

use std::time::Duration;

use crate::acquire::modbus::link::{Data, IDENTIFICATION_PARTS, Link, LinkError};
use crate::config::{Bus, Transport};
use crate::core::identity::Identity;
use crate::core::layout::Table;

/// What a device takes to answer beyond the wire time, for the default
/// timeouts. Meters and PLCs answer within tens of milliseconds; a slower
/// device needs `--timeout`.
pub const DEVICE_ALLOWANCE: Duration = Duration::from_millis(100);

/// Default timeout over TCP: a LAN round trip is a few milliseconds, and a
/// gateway in front of a 9600-baud line needs about 30 ms more for the probe.
pub const TCP_TIMEOUT: Duration = Duration::from_millis(250);

/// Exception codes by which a TCP gateway says its target did not answer.
const GATEWAY_PATH_UNAVAILABLE: u8 = 0x0A;
const GATEWAY_TARGET_SILENT: u8 = 0x0B;

/// Bytes of the probe's request and of its longest normal answer (RTU framing).
const PROBE_FRAME_BYTES: usize = 8 + 7;
/// Bytes of an identification request and of the longest RTU frame.
const IDENTIFY_FRAME_BYTES: usize = 11 + 256;

/// How long each kind of question may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanTimeouts {
    /// For the presence read.
    pub probe: Duration,
    /// For each identification request.
    pub identify: Duration,
}

impl ScanTimeouts {
    /// The defaults: on a serial line the wire time of the exchange plus
    /// [`DEVICE_ALLOWANCE`] (116 ms for the probe at 9600 8N1, so 247 silent
    /// units take about a minute); over TCP [`TCP_TIMEOUT`]. `given` replaces
    /// the probe's timeout and is the least identification gets.
    pub fn for_transport(transport: &Transport, given: Option<Duration>) -> ScanTimeouts {
        let (probe, identify) = match transport {
            Transport::Rtu(line) => (
                line.wire_time(PROBE_FRAME_BYTES) + DEVICE_ALLOWANCE,
                line.wire_time(IDENTIFY_FRAME_BYTES) + DEVICE_ALLOWANCE,
            ),
            Transport::Tcp { .. } | Transport::RtuOverTcp { .. } => (TCP_TIMEOUT, TCP_TIMEOUT),
        };
        match given {
            Some(probe) => ScanTimeouts {
                probe,
                identify: identify.max(probe),
            },
            None => ScanTimeouts { probe, identify },
        }
    }

    /// The longest a scan of `units` unit ids on `bus` takes when
    /// `answering` of them answer. A lost transaction costs its timeout and
    /// then as much again: a serial line is left alone that long for a late
    /// reply, and a TCP connection is reopened (its connect limited to the
    /// bus timeout, which a scan sets to the probe's).
    pub fn bound(&self, bus: &Bus, units: usize, answering: usize) -> Duration {
        let gap = match &bus.transport {
            Transport::Rtu(line) => line.silent_interval(),
            Transport::Tcp { .. } | Transport::RtuOverTcp { .. } => Duration::ZERO,
        } + bus.turnaround;
        let lost = |limit: Duration| limit * 2 + gap;
        let silent = lost(self.probe);
        let answered = self.probe
            + gap
            + lost(self.identify) * u32::try_from(IDENTIFICATION_PARTS).unwrap_or(u32::MAX);
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        silent * count(units.saturating_sub(answering)) + answered * count(answering)
    }
}

/// What probing one unit id found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A device answered.
    Found(Found),
    /// Nothing answered within the timeout.
    Silent,
    /// A TCP gateway answered that nothing answered behind it (exception 0x0A or 0x0B).
    NoTarget(u8),
    /// Something answered that was not a valid reply: another device
    /// talking, or a device at another baud rate or parity.
    Garbled(String),
}

/// A unit that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its unit id.
    pub unit: u8,
    /// How long the presence read took, request to reply.
    pub reply: Duration,
    /// `None` when the read returned data, else the device's exception code.
    pub read_exception: Option<u8>,
    /// What it said it is.
    pub identification: Identification,
}

/// The answer to function 43/14.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identification {
    /// Vendor, product code and revision.
    Known(Identity),
    /// The device refused with this exception code (0x01: not implemented).
    Refused(u8),
    /// No valid answer: the device ignores function 43, or the answer was lost.
    Unanswered(String),
}

/// Probes unit `unit`: the presence read, then identification if it
/// answered. `Err` only when the bus itself cannot be reached (a port that
/// does not open, a refused connection): the scan cannot go on.
pub async fn probe(link: &mut Link, unit: u8, timeouts: &ScanTimeouts) -> Result<Probe, LinkError> {
    link.set_timeout(timeouts.probe);
    let read_exception = match link.read(unit, Table::Holding, 0, 1).await {
        Ok(Ok(Data::Registers(_) | Data::Bits(_))) => None,
        Ok(Err(GATEWAY_PATH_UNAVAILABLE)) => return Ok(Probe::NoTarget(GATEWAY_PATH_UNAVAILABLE)),
        Ok(Err(GATEWAY_TARGET_SILENT)) => return Ok(Probe::NoTarget(GATEWAY_TARGET_SILENT)),
        Ok(Err(code)) => Some(code),
        Err(LinkError::Timeout) => return Ok(Probe::Silent),
        Err(LinkError::Mismatch(why)) => return Ok(Probe::Garbled(why)),
        Err(e @ (LinkError::Io(_) | LinkError::Down(_))) => return Err(e),
    };
    let reply = link.last_exchange();
    link.set_timeout(timeouts.identify);
    let identification = match link.identify(unit).await {
        Ok(Ok(identity)) => Identification::Known(identity),
        Ok(Err(code)) => Identification::Refused(code),
        Err(LinkError::Timeout) => Identification::Unanswered("no answer".into()),
        Err(LinkError::Mismatch(why)) => Identification::Unanswered(why),
        Err(e @ (LinkError::Io(_) | LinkError::Down(_))) => return Err(e),
    };
    Ok(Probe::Found(Found {
        unit,
        reply,
        read_exception,
        identification,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Parity, SerialLine};

    fn rtu(baud: u32, parity: Parity) -> Bus {
        Bus {
            name: "scan".into(),
            transport: Transport::Rtu(SerialLine {
                port: "/dev/null".into(),
                baud,
                parity,
                data_bits: 8,
                stop_bits: 1,
                byte_timeout: None,
                direction: crate::config::Direction::Auto,
            }),
            timeout: Duration::from_millis(100),
            turnaround: Duration::ZERO,
        }
    }

    #[test]
    fn a_full_scan_at_9600_baud_takes_about_a_minute() {
        for parity in [Parity::None, Parity::Even] {
            let bus = rtu(9600, parity);
            let timeouts = ScanTimeouts::for_transport(&bus.transport, None);
            let all_silent = timeouts.bound(&bus, 247, 0);
            assert!(
                all_silent > Duration::from_secs(50) && all_silent < Duration::from_secs(65),
                "{parity:?}: {all_silent:?}"
            );
            // The longest RTU frame fits the identification timeout.
            assert!(
                timeouts.identify > Duration::from_millis(278 + 100),
                "{timeouts:?}"
            );
        }
        let fast = rtu(115_200, Parity::None);
        let timeouts = ScanTimeouts::for_transport(&fast.transport, None);
        assert!(timeouts.bound(&fast, 247, 0) < Duration::from_secs(53));
    }

    #[test]
    fn a_given_timeout_is_the_probe_and_the_least_identification_gets() {
        let bus = rtu(9600, Parity::None);
        let short = ScanTimeouts::for_transport(&bus.transport, Some(Duration::from_millis(20)));
        assert_eq!(short.probe, Duration::from_millis(20));
        assert!(short.identify > Duration::from_millis(300));
        let long = ScanTimeouts::for_transport(&bus.transport, Some(Duration::from_secs(2)));
        assert_eq!(long.identify, Duration::from_secs(2));
    }
}
