//! `[buffer]`: the store-and-forward queue's limits.

use std::time::Duration;

use toml::Spanned;

use super::check::Checker;
use super::raw::RawBuffer;

/// Default queue size: 256 MiB, about 17 million float samples.
pub const DEFAULT_MAX_SIZE: u64 = 256 * 1024 * 1024;
/// Smallest queue accepted: four segments of the smallest size.
const MIN_MAX_SIZE: i64 = 256 * 1024;
/// Default fsync period.
const DEFAULT_SYNC: Duration = Duration::from_secs(1);
/// Default backlog messages sent per second once the uplink is back.
pub const DEFAULT_DRAIN_RATE: u32 = 200;
const OVERFLOWS: [(&str, Overflow); 2] = [
    ("drop_oldest", Overflow::DropOldest),
    ("drop_newest", Overflow::DropNewest),
];

/// `[buffer]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferPolicy {
    /// Bytes the queue may take on disk.
    pub max_size: u64,
    /// How often appended records are fsynced: what a power cut may cost.
    pub sync: Duration,
    /// What to sacrifice when full.
    pub overflow: Overflow,
    /// Backlog messages (one device's samples of one poll each) sent per second.
    pub drain_rate: u32,
}

impl Default for BufferPolicy {
    fn default() -> BufferPolicy {
        BufferPolicy {
            max_size: DEFAULT_MAX_SIZE,
            sync: DEFAULT_SYNC,
            overflow: Overflow::DropOldest,
            drain_rate: DEFAULT_DRAIN_RATE,
        }
    }
}

impl Checker<'_> {
    pub(super) fn buffer(&mut self, raw: &RawBuffer) -> BufferPolicy {
        let ctx = "[buffer]";
        let default = BufferPolicy::default();
        let max_size = raw.max_size.as_ref().map_or(default.max_size, |v| {
            self.int::<u64>(ctx, "max_size", v, MIN_MAX_SIZE, i64::MAX)
                .unwrap_or(default.max_size)
        });
        let drain_rate = raw.drain_rate.as_ref().map_or(default.drain_rate, |v| {
            self.int::<u32>(ctx, "drain_rate", v, 1, 100_000)
                .unwrap_or(default.drain_rate)
        });
        let overflow = raw
            .overflow
            .as_ref()
            .and_then(|v: &Spanned<String>| self.choice(ctx, "overflow", v, &OVERFLOWS))
            .unwrap_or(default.overflow);
        BufferPolicy {
            max_size,
            sync: self.duration(ctx, "sync", raw.sync.as_ref(), default.sync),
            overflow,
            drain_rate,
        }
    }
}

/// What to sacrifice when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Delete the oldest segment: the newest data matters most for operations.
    #[default]
    DropOldest,
    /// Refuse new records: the oldest data matters most (e.g. for billing).
    DropNewest,
}
