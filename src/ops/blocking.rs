//! File work that may block (fsync, reading a queue segment, the queue's
//! opening scan, saving counter totals) run from async tasks. On a slow SD
//! card one fsync can take a second; done on an async worker, it would
//! stall every task scheduled there, bus pollers included. On the
//! multi-threaded runtime the worker hands its other tasks to another thread
//! for the duration; elsewhere (a current-thread runtime, no runtime) the
//! work simply runs.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work`, which may block on the disk, without holding up other tasks.
pub fn file_work<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_work_on_any_runtime_or_none() {
        assert_eq!(file_work(|| 1), 1);
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert_eq!(current.block_on(async { file_work(|| 2) }), 2);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        assert_eq!(multi.block_on(async { file_work(|| 3) }), 3);
    }
}
