//! The store-and-forward queue: a FIFO of opaque records on disk, for what
//! must reach the upstream server but cannot right now.
//!
//! # Design
//! A segment log, not an embedded database: records are appended to numbered
//! segment files (`buffer/00000000000000000001.seg`, …) with a length and a
//! CRC each ([`record`]). The bytes written per record are its payload plus
//! 8, once; a B-tree store would rewrite whole pages per commit, which is
//! what wears out the SD cards gateways live on. The reader's position (the
//! first record not yet acknowledged by the server) is kept in `cursor`.
//!
//! Durability: an append is a `write(2)`, so it survives `kill -9` at once;
//! [`Queue::sync`] (called every `[buffer] sync`) fsyncs the segment and
//! replaces the cursor atomically ([`crate::ops::atomic_file`]), so a power cut
//! loses at most that window. A new segment's directory entry is fsynced
//! when it is created. On open, a torn or corrupt tail is cut off. Whole
//! segments are deleted once acknowledged, or when the queue is full and the
//! oldest data is sacrificed (counted).
//!
//! A write that fails (a full disk, an I/O error) may leave part of a record
//! behind: the segment is cut back to its last whole record, or, if even that
//! fails, left as it is and writing goes on in a new segment (its torn tail
//! is cut off when it is next opened). The record is reported lost; what was
//! written before stays readable, now and after a restart.
//!
//! A queue that cannot be opened at all (a read-only or broken file system)
//! is [`Queue::unavailable`]: it keeps nothing and counts every record as
//! dropped, so the gateway goes on without store-and-forward.

pub mod record;
pub mod sample;

use crate::config::Overflow;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

mod syncer;

/// Largest segment file; small enough that dropping the oldest one loses
/// little, large enough that files stay few.
pub const SEGMENT_SIZE: u64 = 4 * 1024 * 1024;

/// Bytes read from a segment at once when draining.
const READ_CHUNK: usize = 256 * 1024;

/// Where a record starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// Segment number.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

/// The queue could not use its directory.
#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct QueueError {
    /// The file or directory.
    pub path: PathBuf,
    /// What the OS said.
    pub source: io::Error,
}

#[derive(Debug, Clone)]
struct Segment {
    id: u64,
    bytes: u64,
    records: u64,
    /// Sum of the records' weights.
    weight: u64,
}

/// How much a record counts for in [`Queue::weight`] and
/// [`Queue::dropped`] (e.g. the samples it holds).
pub type Weigh = fn(&[u8]) -> u64;

/// A disk-backed FIFO of records.
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    max_size: u64,
    segment_size: u64,
    overflow: Overflow,
    segments: VecDeque<Segment>,
    writer: Option<File>,
    /// The first record not yet acknowledged.
    head: Position,
    /// Records of the head segment before `head`.
    head_index: u64,
    /// Their weight.
    head_weight: u64,
    /// Records before this were handed to the uplink (not yet acknowledged):
    /// deleting them to make room is not counted as a loss.
    handed: Position,
    weigh: Weigh,
    unsynced: bool,
    cursor_moved: bool,
    /// Does [`Queue::sync_behind`]'s work; started on first use.
    syncer: Option<syncer::Syncer>,
    dropped: u64,
    /// Bytes appended since open (what the SD card has to take).
    written: u64,
    /// No directory behind it: nothing is kept.
    unavailable: bool,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
    move |source| QueueError {
        path: path.to_owned(),
        source,
    }
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, recovering what a crash left:
    /// acknowledged segments are deleted, a torn tail is cut off. `weigh`
    /// tells what a record counts for.
    pub fn open(
        dir: &Path,
        max_size: u64,
        overflow: Overflow,
        weigh: Weigh,
    ) -> Result<Queue, QueueError> {
        fs::create_dir_all(dir).map_err(err(dir))?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let cursor = read_cursor(&dir.join("cursor"));
        let mut buffer = Queue::empty(dir, max_size, overflow, weigh);
        for id in ids {
            let path = buffer.segment_path(id);
            if cursor.is_some_and(|c| id < c.segment) {
                fs::remove_file(&path).map_err(err(&path))?;
                continue;
            }
            let found = recover_segment(&path, cursor.filter(|c| c.segment == id), weigh)?;
            if id == cursor.map_or(u64::MAX, |c| c.segment) {
                buffer.head = Position {
                    segment: id,
                    offset: found.head_offset,
                };
                buffer.head_index = found.records_before;
                buffer.head_weight = found.weight_before;
            }
            buffer.segments.push_back(Segment {
                id,
                bytes: found.bytes,
                records: found.records,
                weight: found.weight,
            });
        }
        match buffer.segments.front() {
            Some(first) if buffer.head.segment != first.id || cursor.is_none() => {
                buffer.head = Position {
                    segment: first.id,
                    offset: 0,
                };
                buffer.head_index = 0;
                buffer.head_weight = 0;
            }
            Some(_) => {}
            None => {
                let id = cursor.map_or(1, |c| c.segment + 1);
                buffer.segments.push_back(Segment {
                    id,
                    bytes: 0,
                    records: 0,
                    weight: 0,
                });
                buffer.head = Position {
                    segment: id,
                    offset: 0,
                };
            }
        }
        Ok(buffer)
    }

    /// A queue that keeps nothing, for when the real one cannot be opened:
    /// every record appended is counted as dropped.
    pub fn unavailable(weigh: Weigh) -> Queue {
        Queue {
            unavailable: true,
            ..Queue::empty(Path::new(""), 0, Overflow::DropNewest, weigh)
        }
    }

    /// A queue in `dir` with no segment yet.
    fn empty(dir: &Path, max_size: u64, overflow: Overflow, weigh: Weigh) -> Queue {
        Queue {
            dir: dir.to_owned(),
            max_size,
            segment_size: SEGMENT_SIZE.min((max_size / 4).max(64 * 1024)),
            overflow,
            segments: VecDeque::new(),
            writer: None,
            head: Position::default(),
            head_index: 0,
            head_weight: 0,
            handed: Position::default(),
            weigh,
            unsynced: false,
            cursor_moved: false,
            syncer: None,
            dropped: 0,
            written: 0,
            unavailable: false,
        }
    }

    /// Whether this is an [`unavailable`](Queue::unavailable) queue.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.seg"))
    }

    /// Records waiting to be sent.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum::<u64>() - self.head_index
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total weight of the records waiting.
    pub fn weight(&self) -> u64 {
        self.segments.iter().map(|s| s.weight).sum::<u64>() - self.head_weight
    }

    /// Bytes on disk.
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Bytes appended since open.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Weight of the records sacrificed to the size limit since open.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends a record. When the queue is full, the oldest segment is
    /// deleted or the record refused, per the overflow policy; either way it
    /// is counted in [`Queue::dropped`] and the call succeeds.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), QueueError> {
        let mut bytes = Vec::with_capacity(record::HEADER + payload.len());
        record::encode(payload, &mut bytes);
        let size = bytes.len() as u64;
        let weight = (self.weigh)(payload);
        if self.unavailable {
            self.dropped += weight;
            return Ok(());
        }
        while self.size() + size > self.max_size {
            match self.overflow {
                Overflow::DropNewest => {
                    self.dropped += weight;
                    return Ok(());
                }
                Overflow::DropOldest => {
                    if !self.drop_oldest()? {
                        self.dropped += weight;
                        return Ok(());
                    }
                }
            }
        }
        let current = self.segments.back().map_or(0, |s| s.bytes);
        if current > 0 && current + size > self.segment_size {
            self.roll()?;
        }
        let Some(last) = self.segments.back_mut() else {
            return Ok(());
        };
        let id = last.id;
        let path = self.dir.join(format!("{id:020}.seg"));
        if self.writer.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(err(&path))?;
            if last.bytes == 0 {
                // A new segment: its directory entry must survive a power cut too.
                crate::ops::atomic_file::sync_dir(&self.dir).map_err(err(&self.dir))?;
            }
            self.writer = Some(file);
        }
        if let Some(file) = &mut self.writer
            && let Err(e) = file.write_all(&bytes)
        {
            // Part of the record may be on disk: cut it off, or seal the
            // segment and go on in a new one if even that fails.
            let whole = last.bytes;
            if file.set_len(whole).is_err() {
                tracing::warn!(segment = %path.display(), "cannot cut a failed write back; going on in a new segment");
                self.writer = None;
                let next = id + 1;
                self.segments.push_back(Segment {
                    id: next,
                    bytes: 0,
                    records: 0,
                    weight: 0,
                });
            }
            return Err(err(&path)(e));
        }
        self.written += size;
        last.bytes += size;
        last.records += 1;
        last.weight += weight;
        self.unsynced = true;
        Ok(())
    }

    /// Starts a new segment (after syncing the one being closed).
    fn roll(&mut self) -> Result<(), QueueError> {
        self.sync_segment()?;
        self.writer = None;
        let id = self.segments.back().map_or(1, |s| s.id + 1);
        self.segments.push_back(Segment {
            id,
            bytes: 0,
            records: 0,
            weight: 0,
        });
        Ok(())
    }

    /// Deletes the oldest segment to make room; `false` when only the one
    /// being written is left (then it is rolled over first, if it holds data).
    fn drop_oldest(&mut self) -> Result<bool, QueueError> {
        if self.segments.len() < 2 {
            if self.segments.back().is_some_and(|s| s.bytes > 0) {
                self.roll()?;
            } else {
                return Ok(false);
            }
        }
        let Some(oldest) = self.segments.front().cloned() else {
            return Ok(false);
        };
        // What the uplink has not been given yet is lost with the segment.
        let (records, lost) = if self.handed > self.head {
            if self.handed.segment > oldest.id {
                (0, 0)
            } else {
                let start = Position {
                    segment: oldest.id,
                    offset: 0,
                };
                let (records, weight) = self.count_between(start, self.handed)?;
                (oldest.records - records, oldest.weight - weight)
            }
        } else if oldest.id == self.head.segment {
            (
                oldest.records - self.head_index,
                oldest.weight - self.head_weight,
            )
        } else {
            (oldest.records, oldest.weight)
        };
        self.remove_front_segment()?;
        self.dropped += lost;
        tracing::warn!(
            records,
            weight = lost,
            "buffer full: oldest records dropped"
        );
        Ok(true)
    }

    /// The records before `through` are with the uplink, not yet
    /// acknowledged: if the queue must make room, deleting them loses
    /// nothing that was not sent. Move it back (to [`Queue::head`]) when
    /// they must be sent again.
    pub fn handed_out(&mut self, through: Position) {
        self.handed = through;
    }

    /// The first record not yet acknowledged.
    pub fn head(&self) -> Position {
        self.head
    }

    /// Where the next appended record will start.
    pub fn tail(&self) -> Position {
        self.segments.back().map_or(self.head, |s| Position {
            segment: s.id,
            offset: s.bytes,
        })
    }

    /// Up to `max` records from the head, with the position after each; they
    /// stay queued until [`Queue::ack`].
    pub fn peek(&mut self, max: usize) -> Result<Vec<(Vec<u8>, Position)>, QueueError> {
        self.peek_from(self.head, max)
    }

    /// Like [`Queue::peek`], from `from` (a position from an earlier peek,
    /// so records handed out but not yet acknowledged are skipped). A
    /// position before the head, whose segment was dropped, means the head.
    pub fn peek_from(
        &mut self,
        from: Position,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Position)>, QueueError> {
        let mut out = Vec::new();
        if self.unavailable {
            return Ok(out);
        }
        let mut at = from.max(self.head);
        let segments: Vec<Segment> = self.segments.iter().cloned().collect();
        let first = at.segment;
        for segment in segments.iter().filter(|s| s.id >= first) {
            if segment.id > at.segment {
                at = Position {
                    segment: segment.id,
                    offset: 0,
                };
            }
            let path = self.segment_path(segment.id);
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(&path)(e)),
            };
            while out.len() < max && at.offset < segment.bytes {
                file.seek(SeekFrom::Start(at.offset)).map_err(err(&path))?;
                let want = (segment.bytes - at.offset).min(READ_CHUNK as u64) as usize;
                let mut chunk = vec![0; want];
                file.read_exact(&mut chunk).map_err(err(&path))?;
                let mut rest = &chunk[..];
                let mut progressed = false;
                while out.len() < max {
                    match record::decode(rest) {
                        record::Decoded::Record { payload, size } => {
                            at.offset += size as u64;
                            out.push((payload.to_vec(), at));
                            rest = &rest[size..];
                            progressed = true;
                        }
                        record::Decoded::End | record::Decoded::Torn => break,
                    }
                }
                if !progressed {
                    // A record larger than the chunk: read it whole.
                    let mut header = [0u8; record::HEADER];
                    file.seek(SeekFrom::Start(at.offset)).map_err(err(&path))?;
                    if file.read_exact(&mut header).is_err() {
                        break;
                    }
                    let len =
                        u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
                    if len <= READ_CHUNK || len > record::MAX_PAYLOAD {
                        break;
                    }
                    let mut whole = header.to_vec();
                    whole.resize(record::HEADER + len, 0);
                    file.read_exact(&mut whole[record::HEADER..])
                        .map_err(err(&path))?;
                    match record::decode(&whole) {
                        record::Decoded::Record { payload, size } => {
                            at.offset += size as u64;
                            out.push((payload.to_vec(), at));
                        }
                        _ => break,
                    }
                }
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// The server has the records up to `through` (a position from
    /// [`Queue::peek`]): forget them, deleting segments that are done.
    pub fn ack(&mut self, through: Position) -> Result<(), QueueError> {
        if through <= self.head {
            return Ok(());
        }
        while let Some(first) = self.segments.front() {
            if first.id >= through.segment || self.segments.len() < 2 {
                break;
            }
            self.remove_front_segment()?;
        }
        let (records, weight) = self.count_between(self.head, through)?;
        if self.head.segment != through.segment {
            self.head_index = 0;
            self.head_weight = 0;
        }
        self.head_index += records;
        self.head_weight += weight;
        self.head = through;
        self.cursor_moved = true;
        // A fully read segment that is not being written is done.
        if let Some(first) = self.segments.front()
            && self.segments.len() > 1
            && self.head.segment == first.id
            && self.head.offset >= first.bytes
        {
            self.remove_front_segment()?;
        }
        Ok(())
    }

    /// Deletes the oldest segment and moves the head to the start of the
    /// next one, if the head was in it.
    fn remove_front_segment(&mut self) -> Result<Option<Segment>, QueueError> {
        let Some(first) = self.segments.pop_front() else {
            return Ok(None);
        };
        let path = self.segment_path(first.id);
        fs::remove_file(&path).map_err(err(&path))?;
        if let Some(next) = self.segments.front()
            && self.head.segment <= first.id
        {
            self.head = Position {
                segment: next.id,
                offset: 0,
            };
            self.head_index = 0;
            self.head_weight = 0;
            self.cursor_moved = true;
        }
        Ok(Some(first))
    }

    /// Records in the head's segment between `from` (or its start, when
    /// `to` is in a later segment) and `to`, and their weight.
    fn count_between(&self, from: Position, to: Position) -> Result<(u64, u64), QueueError> {
        let start = if from.segment == to.segment {
            from.offset
        } else {
            0
        };
        let path = self.segment_path(to.segment);
        let mut file = File::open(&path).map_err(err(&path))?;
        file.seek(SeekFrom::Start(start)).map_err(err(&path))?;
        let mut bytes = vec![0; (to.offset.saturating_sub(start)) as usize];
        file.read_exact(&mut bytes).map_err(err(&path))?;
        let mut rest = &bytes[..];
        let (mut n, mut weight) = (0, 0);
        while let record::Decoded::Record { payload, size } = record::decode(rest) {
            rest = &rest[size..];
            n += 1;
            weight += (self.weigh)(payload);
        }
        Ok((n, weight))
    }

    fn sync_segment(&mut self) -> Result<(), QueueError> {
        if let (true, Some(file)) = (self.unsynced, &self.writer) {
            file.sync_data().map_err(err(&self.dir))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Makes appended records durable against power loss and records the
    /// read position, here and now (after whatever [`Queue::sync_behind`]
    /// handed over, so an older read position never lands after a newer).
    pub fn sync(&mut self) -> Result<(), QueueError> {
        if self.unavailable {
            return Ok(());
        }
        if let Some(syncer) = &self.syncer {
            syncer.flush();
        }
        self.sync_segment()?;
        if self.cursor_moved {
            let path = self.dir.join("cursor");
            let text = format!("{} {}\n", self.head.segment, self.head.offset);
            crate::ops::atomic_file::replace(&path, text.as_bytes()).map_err(err(&path))?;
            self.cursor_moved = false;
        }
        Ok(())
    }
}

fn read_cursor(path: &Path) -> Option<Position> {
    let text = fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some(Position {
        segment: parts.next()?.parse().ok()?,
        offset: parts.next()?.parse().ok()?,
    })
}

/// What a segment holds after recovery.
struct Recovered {
    bytes: u64,
    records: u64,
    weight: u64,
    /// Records before the cursor, when it points into this segment.
    records_before: u64,
    weight_before: u64,
    /// Where the first of the others starts: the cursor, or the start of
    /// the record it points into when it is not on a record boundary (a
    /// damaged cursor re-sends that record rather than losing the rest).
    head_offset: u64,
}

/// Scans a segment, cutting off a torn tail.
fn recover_segment(
    path: &Path,
    cursor: Option<Position>,
    weigh: Weigh,
) -> Result<Recovered, QueueError> {
    let bytes = fs::read(path).map_err(err(path))?;
    let mut rest = &bytes[..];
    let mut found = Recovered {
        bytes: 0,
        records: 0,
        weight: 0,
        records_before: 0,
        weight_before: 0,
        head_offset: 0,
    };
    while let record::Decoded::Record { payload, size } = record::decode(rest) {
        let weight = weigh(payload);
        let end = found.bytes + size as u64;
        if cursor.is_some_and(|c| end <= c.offset) {
            found.records_before += 1;
            found.weight_before += weight;
            found.head_offset = end;
        }
        found.bytes = end;
        found.records += 1;
        found.weight += weight;
        rest = &rest[size..];
    }
    let valid = found.bytes;
    if valid < bytes.len() as u64 {
        tracing::warn!(segment = %path.display(), bytes = bytes.len() as u64 - valid, "cutting off a torn tail");
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(err(path))?;
        file.set_len(valid).map_err(err(path))?;
        file.sync_all().map_err(err(path))?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: u32) -> Vec<u8> {
        // Sizes vary so records straddle chunk and segment boundaries differently.
        let mut p = i.to_le_bytes().to_vec();
        p.resize(4 + (i as usize * 37) % 300, (i % 251) as u8);
        p
    }

    /// Weight 1 + the id's parity, so weights differ between records.
    fn weigh(p: &[u8]) -> u64 {
        1 + u64::from(id(p) % 2)
    }

    fn id(p: &[u8]) -> u32 {
        u32::from_le_bytes([p[0], p[1], p[2], p[3]])
    }

    fn drain(buffer: &mut Queue, batch: usize) -> Vec<u32> {
        let mut out = Vec::new();
        loop {
            let got = buffer.peek(batch).unwrap();
            let Some((_, last)) = got.last() else { break };
            let last = *last;
            out.extend(got.iter().map(|(p, _)| id(p)));
            buffer.ack(last).unwrap();
        }
        out
    }

    #[test]
    fn records_come_out_in_order_across_segments_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
        b.segment_size = 4096;
        for i in 0..500 {
            b.append(&payload(i)).unwrap();
        }
        assert_eq!(b.len(), 500);
        assert!(
            b.segments.len() > 10,
            "several segments: {}",
            b.segments.len()
        );
        let first: Vec<u32> = b.peek(120).unwrap().iter().map(|(p, _)| id(p)).collect();
        assert_eq!(first, (0..120).collect::<Vec<_>>());
        let (_, at) = b.peek(120).unwrap()[119];
        b.ack(at).unwrap();
        b.sync().unwrap();
        assert_eq!(b.len(), 380);
        drop(b);

        let mut b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
        assert_eq!(
            b.len(),
            380,
            "a reopen keeps exactly the unacknowledged records"
        );
        for i in 500..600 {
            b.append(&payload(i)).unwrap();
        }
        assert_eq!(drain(&mut b, 7), (120..600).collect::<Vec<_>>());
        assert!(b.is_empty());
        b.sync().unwrap();
        drop(b);
        let b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
        assert!(b.is_empty());
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert!(
            files <= 3,
            "acknowledged segments are deleted ({files} files)"
        );
    }

    #[test]
    fn a_sync_behind_the_appender_keeps_records_and_the_read_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
        for i in 0..100 {
            b.append(&payload(i)).unwrap();
        }
        let (_, at) = b.peek(40).unwrap()[39];
        b.ack(at).unwrap();
        b.sync_behind().unwrap();
        b.append(&payload(100)).unwrap();
        b.sync_behind().unwrap();
        // A synchronous sync waits for the thread's work, then does its own.
        b.sync().unwrap();
        drop(b);
        let mut b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
        assert_eq!(drain(&mut b, 7), (40..=100).collect::<Vec<_>>());
    }

    #[test]
    fn without_a_sync_of_the_cursor_a_crash_repeats_records_but_never_loses_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
        b.segment_size = 2048;
        for i in 0..100 {
            b.append(&payload(i)).unwrap();
        }
        b.sync().unwrap();
        let got = b.peek(60).unwrap();
        b.ack(got[59].1).unwrap();
        // kill -9 here: the ack never reached the cursor file.
        drop(b);
        let mut b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
        let out = drain(&mut b, 13);
        assert_eq!(out.last(), Some(&99));
        let start = out.first().copied().unwrap_or(0);
        assert!(start <= 60, "nothing after the last synced cursor is lost");
        assert_eq!(out, (start..100).collect::<Vec<_>>(), "in order, no gaps");
    }

    #[test]
    fn a_failed_write_loses_only_its_record_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = Queue::open(dir.path(), 1 << 20, Overflow::DropOldest, weigh).unwrap();
        buffer.append(&payload(0)).unwrap();
        buffer.roll().unwrap();
        // The next segment is a device that is always full: every write
        // fails with ENOSPC and cannot be cut back either.
        let full = buffer.segment_path(buffer.segments.back().unwrap().id);
        std::os::unix::fs::symlink("/dev/full", &full).unwrap();
        let failed = buffer.append(&payload(1)).unwrap_err();
        assert_eq!(failed.source.raw_os_error(), Some(libc::ENOSPC));
        buffer.append(&payload(2)).unwrap();
        buffer.append(&payload(3)).unwrap();
        buffer.sync().unwrap();
        assert_eq!(buffer.len(), 3);
        fs::remove_file(&full).unwrap();
        drop(buffer);
        let mut reopened = Queue::open(dir.path(), 1 << 20, Overflow::DropOldest, weigh).unwrap();
        assert_eq!(drain(&mut reopened, 10), [0, 2, 3]);
    }

    #[test]
    fn a_cursor_into_the_middle_of_a_record_resends_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = Queue::open(dir.path(), 1 << 20, Overflow::DropOldest, weigh).unwrap();
        for i in 0..3 {
            buffer.append(&payload(i)).unwrap();
        }
        buffer.sync().unwrap();
        let first = buffer.peek(1).unwrap()[0].1;
        drop(buffer);
        // Found by fuzzing: a damaged cursor left the queue unable to drain.
        let text = format!("{} {}\n", first.segment, first.offset + 3);
        fs::write(dir.path().join("cursor"), text).unwrap();
        let mut buffer = Queue::open(dir.path(), 1 << 20, Overflow::DropOldest, weigh).unwrap();
        assert_eq!(buffer.len(), 2);
        assert_eq!(drain(&mut buffer, 10), [1, 2]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_rest_survives() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
        for i in 0..50 {
            b.append(&payload(i)).unwrap();
        }
        drop(b);
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        // Half a record, as a power cut in the middle of an append leaves it.
        let mut half = Vec::new();
        record::encode(&payload(50), &mut half);
        half.truncate(half.len() / 2);
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(&half)
            .unwrap();
        let mut b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
        assert_eq!(b.len(), 50);
        b.append(&payload(51)).unwrap();
        let mut expected: Vec<u32> = (0..50).collect();
        expected.push(51);
        assert_eq!(drain(&mut b, 1000), expected);
    }

    #[test]
    fn when_full_the_oldest_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Queue::open(dir.path(), 256 * 1024, Overflow::DropOldest, weigh).unwrap();
        let n = 5000;
        for i in 0..n {
            b.append(&payload(i)).unwrap();
        }
        assert!(b.size() <= 256 * 1024);
        assert_eq!(
            b.weight() + b.dropped(),
            (0..n).map(|i| 1 + u64::from(i % 2)).sum::<u64>(),
            "every record's weight is kept or counted"
        );
        let out = drain(&mut b, 500);
        let first = n - out.len() as u32;
        assert_eq!(
            out,
            (first..n).collect::<Vec<_>>(),
            "the newest survive, in order"
        );
    }

    #[test]
    fn with_drop_newest_the_oldest_are_kept_and_the_rest_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Queue::open(dir.path(), 256 * 1024, Overflow::DropNewest, weigh).unwrap();
        let n = 5000;
        for i in 0..n {
            b.append(&payload(i)).unwrap();
        }
        assert_eq!(
            b.weight() + b.dropped(),
            (0..n).map(|i| 1 + u64::from(i % 2)).sum::<u64>()
        );
        let out = drain(&mut b, 500);
        assert_eq!(
            out,
            (0..out.len() as u32).collect::<Vec<_>>(),
            "the oldest survive"
        );
    }

    #[test]
    fn random_operations_match_a_fifo_model() {
        let mut rng = fastrand::Rng::with_seed(42);
        let dir = tempfile::tempdir().unwrap();
        let mut b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
        b.segment_size = 1500;
        let mut model: VecDeque<u32> = VecDeque::new();
        let mut next = 0u32;
        for _ in 0..3000 {
            match rng.u8(0..10) {
                0..=5 => {
                    b.append(&payload(next)).unwrap();
                    model.push_back(next);
                    next += 1;
                }
                6..=7 => {
                    let got = b.peek(rng.usize(1..20)).unwrap();
                    let ids: Vec<u32> = got.iter().map(|(p, _)| id(p)).collect();
                    let expect: Vec<u32> = model.iter().take(ids.len()).copied().collect();
                    assert_eq!(ids, expect);
                    assert_eq!(ids.len(), got.len().min(model.len()));
                    if let Some((_, at)) = got.last() {
                        b.ack(*at).unwrap();
                        model.drain(..ids.len());
                    }
                }
                8 => b.sync().unwrap(),
                _ => {
                    b.sync().unwrap();
                    let size = b.segment_size;
                    b = Queue::open(dir.path(), 1 << 30, Overflow::DropOldest, weigh).unwrap();
                    b.segment_size = size;
                }
            }
            assert_eq!(b.len(), model.len() as u64);
            assert_eq!(
                b.weight(),
                model.iter().map(|i| 1 + u64::from(i % 2)).sum::<u64>()
            );
        }
        assert_eq!(drain(&mut b, 64), model.into_iter().collect::<Vec<_>>());
    }
}
