//! Giving freed heap back to the system.
//!
//! Parsing a large device map and the first poll of every device (each
//! metric published at once) are bursts: at 10 000 tags the first takes
//! about 30 MB for a moment, the steady state a sixth of that. glibc keeps
//! freed memory in its arenas, and a burst's pages stay resident for good
//! behind a few live allocations; on a Pi that memory is the point.

use std::time::Duration;

/// How often freed heap is returned: rare enough to cost nothing (one
/// walk of the free lists, well under a millisecond at 100 000 tags),
/// often enough to follow a burst.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Returns the heap pages nothing uses any more to the system.
pub fn return_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; 0 keeps no pad.
    unsafe {
        libc::malloc_trim(0);
    }
}
