//! The edge node's sequence numbers.
//!
//! `seq` counts every node-scoped message of a session except NDEATH, 0..=255
//! with wrap, and restarts at 0 with each NBIRTH, a rebirth included
//! (tck-id-payloads-sequence-num-*). `bdSeq` pairs a connection's NBIRTH with
//! its NDEATH will: it increases by one for every new MQTT CONNECT, wrapping
//! 255 → 0, and "previous CONNECT" includes one made before a restart, so it is
//! kept on disk (tck-id-topics-nbirth-bdseq-increment). The next value is taken
//! only at connect time, never right after a birth (the pysparkplug mistake
//! noted in sparkplug-edge.md §7).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The node's `seq` counter.
#[derive(Debug, Clone, Default)]
pub struct Seq {
    next: u8,
}

impl Seq {
    /// The seq of an NBIRTH: always 0, and the count starts again.
    pub fn birth(&mut self) -> u64 {
        self.next = 1;
        0
    }

    /// The seq of the next DBIRTH, NDATA, DDATA or DDEATH.
    pub fn advance(&mut self) -> u64 {
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        u64::from(seq)
    }
}

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
    fn seq_starts_at_zero_on_birth_and_wraps_after_255() {
        let mut seq = Seq::default();
        assert_eq!(seq.birth(), 0);
        let run: Vec<u64> = (0..300).map(|_| seq.advance()).collect();
        assert_eq!(run[0], 1);
        assert_eq!(run[254], 255);
        assert_eq!(run[255], 0, "255 wraps to 0");
        assert_eq!(run[256], 1);
        assert_eq!(seq.birth(), 0, "a rebirth restarts the count");
        assert_eq!(seq.advance(), 1);
    }

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
