//! Replacing a small state file so that a crash or power cut leaves either
//! the old or the new contents, never a torn file: write a temporary file
//! beside it, fsync it, rename it over the old one, and fsync the directory
//! so that the rename itself is on disk. Used for the Sparkplug bdSeq, the
//! pulse counters' totals and the store-and-forward cursor.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path`'s contents with `contents`, durably and atomically.
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = fs::File::create(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes the entries of `dir` (a created, renamed or removed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_contents_replace_the_old_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("state");
        replace(&path, b"one").expect("first");
        replace(&path, b"two").expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["state"]);
    }
}
