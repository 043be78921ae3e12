//! The store-and-forward queue on a file system that really fills up: a
//! small tmpfs the test mounts (it needs root; elsewhere it says why it
//! skips). Nothing written before the disk filled is lost, what could not
//! be written is counted, and writing goes on once there is room again,
//! also after a restart.

use std::path::Path;
use std::process::Command;

use fieldmq::config::Overflow;
use fieldmq::store::queue::Queue;

/// Every record counts for one.
fn one(_: &[u8]) -> u64 {
    1
}

/// Mounts a tmpfs of `size` on `dir`; unmounted when dropped.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Result<Tmpfs<'a>, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Tmpfs(dir))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn record(i: u32) -> Vec<u8> {
    let mut r = i.to_le_bytes().to_vec();
    r.resize(1000, b'x');
    r
}

#[test]
fn a_full_disk_loses_nothing_written_before_and_writing_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _fs = match Tmpfs::mount(dir.path(), "256k") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({why}); the full-disk case is covered by the buffer's injected-error unit test only"
            );
            return;
        }
    };
    let queue = dir.path().join("buffer");
    // The queue may use 1 MiB; the file system has 256 KiB.
    let mut buffer = Queue::open(&queue, 1 << 20, Overflow::DropOldest, one).expect("open");
    let (mut written, mut failed) = (Vec::new(), 0);
    for i in 0..400u32 {
        match buffer.append(&record(i)) {
            Ok(()) => written.push(i),
            Err(e) => {
                assert_eq!(e.source.raw_os_error(), Some(libc::ENOSPC), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "the file system filled up");
    assert!(written.len() > 100, "{} records fit", written.len());
    let _ = buffer.sync();
    drop(buffer);

    // A restart recovers every record written before the disk filled.
    let mut buffer = Queue::open(&queue, 1 << 20, Overflow::DropOldest, one).expect("reopen");
    assert_eq!(buffer.len(), written.len() as u64);
    let mut read = Vec::new();
    loop {
        let got = buffer.peek(64).expect("peek");
        let Some((_, last)) = got.last() else { break };
        let last = *last;
        read.extend(
            got.iter()
                .map(|(r, _)| u32::from_le_bytes([r[0], r[1], r[2], r[3]])),
        );
        buffer.ack(last).expect("ack");
    }
    assert_eq!(read, written, "in order, none lost, none torn");
    // Acknowledged segments are deleted: there is room again.
    buffer.sync().expect("sync");
    for i in 1000..1010 {
        buffer.append(&record(i)).expect("writing resumes");
    }
    assert_eq!(buffer.len(), 10);
}
