//! Sleeping to a fraction of a millisecond, where tokio's millisecond
//! timer is too coarse (the RS-485 silent interval, a driver enable).

use std::time::Duration;

/// Sleeps until `deadline` within about 0.1 ms. tokio's timer works in
/// whole milliseconds and rounds a deadline up to its next tick, which would
/// add up to a millisecond to every silent interval: at 115200 baud that is
/// more than the interval itself. So the timer takes the wait to within
/// 2.5 ms of the deadline (its tick, and a late wake-up, still fall short of
/// it) and a blocking thread's `nanosleep` (about 60 µs of slack on Linux)
/// does the rest: a thread handover per transaction, no spinning.
pub async fn sleep_until_precisely(deadline: tokio::time::Instant) {
    let coarse = Duration::from_micros(2500);
    let now = tokio::time::Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > coarse {
        tokio::time::sleep_until(deadline - coarse).await;
    }
    let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
    if rest.is_zero() {
        return;
    }
    // If the blocking pool is gone (shutting down), the wait is simply shorter.
    let _ = tokio::task::spawn_blocking(move || {
        exact_sleeps();
        std::thread::sleep(rest);
    })
    .await;
}

/// Makes this thread's sleeps end at their deadline: Linux lets one run
/// 50 µs long by default (the per-thread timer slack); 1 ns asks for the
/// deadline itself.
pub fn exact_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only the
    // calling thread's timer slack; it touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_u64);
    }
}
