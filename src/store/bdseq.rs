//! `bdSeq`, the birth/death sequence number that pairs a connection's NBIRTH
//! with its NDEATH will. It increases by one for every new MQTT CONNECT,
//! wrapping 255 → 0, and "previous CONNECT" includes one made before a
//! restart, so it is kept on disk (tck-id-topics-nbirth-bdseq-increment). The
//! next value is taken only at connect time, never right after a birth (the
//! pysparkplug mistake noted in sparkplug-edge.md §7).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The persisted birth/death sequence number could not be read or written.
#[derive(Debug, Error)]
pub enum BdSeqError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The bdSeq file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// `bdSeq`, kept in a small file in the data directory.
#[derive(Debug, Clone)]
pub struct BdSeqStore {
    path: PathBuf,
}

impl BdSeqStore {
    /// The store in `data_dir` (the file is `bdseq`).
    pub fn new(data_dir: &Path) -> BdSeqStore {
        BdSeqStore {
            path: data_dir.join("bdseq"),
        }
    }

    /// The bdSeq for a new MQTT connection: one more than the last one used
    /// (0 for the very first), durably recorded before it is returned, so a
    /// crash right after cannot reuse it. A file that does not hold a number
    /// 0..=255 is treated as absent: reusing a value is worse than restarting at 0.
    pub fn next_for_connect(&self) -> Result<u64, BdSeqError> {
        let next = match fs::read_to_string(&self.path) {
            Ok(text) => text
                .trim()
                .parse::<u8>()
                .map_or(0, |last| last.wrapping_add(1)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(source) => return Err(self.error(source)),
        };
        self.write(next).map_err(|source| self.error(source))?;
        Ok(u64::from(next))
    }

    fn error(&self, source: io::Error) -> BdSeqError {
        BdSeqError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The file holds either the old or the new number after a power cut,
    /// never a torn one.
    fn write(&self, value: u8) -> io::Result<()> {
        crate::ops::atomic_file::replace(&self.path, format!("{value}\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdseq_increases_per_connect_across_restarts_and_wraps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BdSeqStore::new(&dir.path().join("state"));
        assert_eq!(store.next_for_connect().expect("first"), 0);
        assert_eq!(store.next_for_connect().expect("second"), 1);
        // A new process reads what the last one used.
        let restarted = BdSeqStore::new(&dir.path().join("state"));
        assert_eq!(restarted.next_for_connect().expect("after restart"), 2);
        fs::write(dir.path().join("state/bdseq"), "255\n").expect("write");
        assert_eq!(restarted.next_for_connect().expect("wrap"), 0);
        fs::write(dir.path().join("state/bdseq"), "garbage").expect("write");
        assert_eq!(restarted.next_for_connect().expect("unreadable"), 0);
    }

    #[test]
    fn an_unwritable_data_dir_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("file");
        fs::write(&blocker, "").expect("write");
        let store = BdSeqStore::new(&blocker.join("sub"));
        let err = store.next_for_connect().expect_err("a file is in the way");
        assert!(err.to_string().contains("bdseq"), "{err}");
    }
}
