//! Making the queue durable without holding up the task that appends to it.
//!
//! An fsync on an SD card can take a second. Done by the uplink task itself,
//! it would leave the samples the bus tasks report meanwhile waiting in a
//! channel, in memory, where a `kill -9` or a crash loses them; appended,
//! they are in the kernel's page cache, which survives the process. So the
//! periodic sync hands the work to one thread, which does it in order:
//! data first, then the read position.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;

use super::{Queue, QueueError};

/// One piece of durability work.
#[derive(Debug)]
enum Job {
    /// fsync the data of a segment (a clone of the writer's descriptor).
    Data(File, PathBuf),
    /// Replace the cursor file atomically with these bytes.
    Cursor(PathBuf, Vec<u8>),
    /// Everything handed over before this is done: answer.
    Flush(mpsc::Sender<()>),
}

/// The thread doing a queue's durability work; it ends with its queue.
#[derive(Debug)]
pub(super) struct Syncer {
    jobs: mpsc::Sender<Job>,
}

impl Syncer {
    /// Starts the thread; `None` if the system will not start one (the
    /// caller then syncs itself).
    pub(super) fn start() -> Option<Syncer> {
        let (jobs, pending) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("queue-sync".into())
            .spawn(move || {
                for job in pending {
                    match job {
                        Job::Data(file, path) => {
                            if let Err(e) = file.sync_data() {
                                tracing::error!(segment = %path.display(), error = %e, "cannot sync the store-and-forward queue");
                            }
                        }
                        Job::Cursor(path, bytes) => {
                            if let Err(e) = crate::ops::atomic_file::replace(&path, &bytes) {
                                tracing::error!(cursor = %path.display(), error = %e, "cannot save the store-and-forward read position");
                            }
                        }
                        Job::Flush(done) => {
                            // The waiter may have given up; nothing to do then.
                            let _ = done.send(());
                        }
                    }
                }
            })
            .ok()?;
        Some(Syncer { jobs })
    }

    /// Queues an fsync of `file`; `false` if the thread is gone.
    pub(super) fn data(&self, file: File, path: PathBuf) -> bool {
        self.jobs.send(Job::Data(file, path)).is_ok()
    }

    /// Queues a cursor replacement; `false` if the thread is gone.
    pub(super) fn cursor(&self, path: PathBuf, bytes: Vec<u8>) -> bool {
        self.jobs.send(Job::Cursor(path, bytes)).is_ok()
    }

    /// Waits until everything queued so far is done.
    pub(super) fn flush(&self) {
        let (done, finished) = mpsc::channel();
        if self.jobs.send(Job::Flush(done)).is_ok() {
            // An error only means the thread is gone, with its work.
            let _ = finished.recv();
        }
    }
}

impl Queue {
    /// Hands the work of [`Queue::sync`] to a thread of its own and returns
    /// at once: the periodic sync, which must not hold up appending (see
    /// `syncer.rs`). Falls back to syncing here if no thread can be started.
    pub fn sync_behind(&mut self) -> Result<(), QueueError> {
        if self.unavailable {
            return Ok(());
        }
        if self.syncer.is_none() {
            self.syncer = Syncer::start();
        }
        let Some(syncer) = &self.syncer else {
            return self.sync();
        };
        let data_handed = match (self.unsynced, &self.writer) {
            (true, Some(file)) => file
                .try_clone()
                .is_ok_and(|clone| syncer.data(clone, self.dir.clone())),
            _ => true,
        };
        let cursor = self.cursor_moved.then(|| {
            (
                self.dir.join("cursor"),
                format!("{} {}\n", self.head.segment, self.head.offset),
            )
        });
        let cursor_handed = cursor
            .as_ref()
            .is_none_or(|(path, text)| syncer.cursor(path.clone(), text.clone().into_bytes()));
        if data_handed {
            self.unsynced = false;
        } else {
            self.sync_segment()?;
        }
        if let (false, Some((path, text))) = (cursor_handed, &cursor) {
            crate::ops::atomic_file::replace(path, text.as_bytes()).map_err(super::err(path))?;
        }
        self.cursor_moved = false;
        Ok(())
    }
}
