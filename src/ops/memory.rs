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

/// Allocations this large get their own mapping, returned whole when freed.
const MMAP_THRESHOLD: i32 = 128 * 1024;
/// Heaps for the allocating threads: tokio's two workers share them with
/// the main and blocking threads; more would each keep their own free pages.
const ARENAS: i32 = 2;

/// Sets the allocator up so bursts leave little behind; call first thing.
/// glibc raises its mmap threshold after freeing a large block, so the next
/// large ones (the toml lexer's token vector while a large map is parsed,
/// a first poll's events) land in the heap and fragment it. Fixing the
/// threshold keeps them out: at 10 000 tags RSS is 2 MiB lower.
pub fn limit_fragmentation() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc tunables; bad values are refused, not UB.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns the heap pages nothing uses any more to the system.
pub fn return_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; 0 keeps no pad.
    unsafe {
        libc::malloc_trim(0);
    }
}
