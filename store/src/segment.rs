//! Segment files: where the log's bulk bytes live.
//!
//! sled holds only small items (key → location, the run and episode
//! indexes, id counters). The bytes themselves, chunks of event frames and
//! blob values, are appended to fathom-owned segment files under
//! `<data>/segments/`: one `pwrite` of a whole batch, then one `fdatasync`
//! shared by every appender waiting at that moment (group commit). This is
//! key-value separation as in WiscKey: the segments are the source of truth
//! and every record describes itself, so sled's index can be derived from
//! them (recovery re-indexes the tail that sled had not flushed).
//!
//! ```text
//! segment header (32 bytes)
//!   0  4  magic "FTHS"
//!   4  2  segment format version (u16 LE), 1
//!   6  2  reserved, 0
//!   8  8  segment number (u64 LE), the same as in the file name
//!  16 12  reserved, 0
//!  28  4  CRC-32 of bytes 0..28
//!
//! record (16-byte header, then the body)
//!   0  4  magic "FTHR"
//!   4  1  kind: 1 chunk of event frames, 2 blob value, 3 id counter
//!   5  3  reserved, 0
//!   8  4  body length (u32 LE)
//!  12  4  CRC-32 of header bytes 0..12 followed by the body
//! ```
//!
//! A location ([`Loc`], 24 bytes, `FTHL` then segment, offset and body
//! length) is what sled stores in place of the bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::disk::{Disk, DiskFile, OpenMode};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The four bytes every segment file starts with.
pub const MAGIC: [u8; 4] = *b"FTHS";
/// The segment format this build writes.
pub const VERSION: u16 = 1;
/// Bytes before the first record of a segment.
pub const HEADER_LEN: u64 = 32;
/// The four bytes every record starts with.
pub const RECORD_MAGIC: [u8; 4] = *b"FTHR";
/// Bytes of a record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// The four bytes a location value starts with.
pub const LOC_MAGIC: [u8; 4] = *b"FTHL";
/// Bytes of an encoded location.
pub const LOC_LEN: usize = 24;
/// The largest record body (a blob value of up to 1 GiB, with its digest).
pub const MAX_RECORD_BYTES: usize = (1 << 30) + 64;
/// Segments roll once they reach this size, unless the options say otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A chunk of event frames (the layout of `chunk.rs`).
    Chunk,
    /// A blob: its 32-byte digest, then its stored value (`blob.rs`).
    Blob,
    /// An id counter: the kind's tag (1 byte), then the new last id (u64 LE).
    Counter,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Chunk => 1,
            RecordKind::Blob => 2,
            RecordKind::Counter => 3,
        }
    }

    fn from_code(code: u8) -> Option<RecordKind> {
        match code {
            1 => Some(RecordKind::Chunk),
            2 => Some(RecordKind::Blob),
            3 => Some(RecordKind::Counter),
            _ => None,
        }
    }
}

/// A position in the segments: ordered by segment, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// The segment number.
    pub segment: u64,
    /// The byte offset within it.
    pub offset: u64,
}

impl Pos {
    /// 16 bytes: segment, then offset, both u64 LE.
    pub fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.segment.to_le_bytes());
        out[8..].copy_from_slice(&self.offset.to_le_bytes());
        out
    }

    /// The position `n` bytes further in the same segment.
    pub fn plus(self, n: u64) -> Pos {
        Pos {
            segment: self.segment,
            offset: self.offset + n,
        }
    }

    /// The inverse of [`Pos::encode`].
    pub fn decode(bytes: &[u8]) -> Option<Pos> {
        (bytes.len() == 16).then(|| Pos {
            segment: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            offset: u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
        })
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "segment {} offset {}", self.segment, self.offset)
    }
}

/// Where a record is: what sled stores instead of the record's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// The segment number.
    pub segment: u64,
    /// The offset of the record header.
    pub offset: u64,
    /// The body length.
    pub len: u32,
}

impl Loc {
    /// `FTHL`, then segment (u64 LE), offset (u64 LE), body length (u32 LE).
    pub fn encode(&self) -> [u8; LOC_LEN] {
        let mut out = [0u8; LOC_LEN];
        out[..4].copy_from_slice(&LOC_MAGIC);
        out[4..12].copy_from_slice(&self.segment.to_le_bytes());
        out[12..20].copy_from_slice(&self.offset.to_le_bytes());
        out[20..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// A location if `value` is one (a stored value from an older directory
    /// is the bytes themselves and starts otherwise).
    pub fn decode(value: &[u8]) -> Option<Loc> {
        if value.len() != LOC_LEN || value[..4] != LOC_MAGIC {
            return None;
        }
        Some(Loc {
            segment: u64::from_le_bytes(value[4..12].try_into().expect("8 bytes")),
            offset: u64::from_le_bytes(value[12..20].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(value[20..24].try_into().expect("4 bytes")),
        })
    }

    /// Where the record starts.
    pub fn pos(&self) -> Pos {
        Pos {
            segment: self.segment,
            offset: self.offset,
        }
    }

    /// Where the record ends.
    pub fn end(&self) -> Pos {
        Pos {
            segment: self.segment,
            offset: self.offset + RECORD_HEADER_LEN as u64 + u64::from(self.len),
        }
    }
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "segment {} offset {} ({} bytes)",
            self.segment, self.offset, self.len
        )
    }
}

/// The file name of segment `n`.
pub fn file_name(n: u64) -> String {
    format!("{n:020}.seg")
}

/// The segment number a file name stands for.
pub fn number_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The header of segment `number`.
pub fn header(number: u64) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    out[..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[8..16].copy_from_slice(&number.to_le_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out[28..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a segment header read from the file of segment `number`.
pub fn check_header(bytes: &[u8], number: u64) -> Result<(), String> {
    if bytes.len() < HEADER_LEN as usize {
        return Err(format!(
            "the file is {} bytes, shorter than the segment header",
            bytes.len()
        ));
    }
    if bytes[..4] != MAGIC {
        return Err("bad segment magic".into());
    }
    let crc = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..28]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(format!(
            "segment format version {version} is not supported by this build"
        ));
    }
    let in_header = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if in_header != number {
        return Err(format!("the header names segment {in_header}, the file name {number}"));
    }
    Ok(())
}

/// Appends a record of `kind` whose body is `parts` joined; returns the
/// body length.
pub fn push_record(out: &mut Vec<u8>, kind: RecordKind, parts: &[&[u8]]) -> u32 {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&[kind.code(), 0, 0, 0]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    for p in parts {
        out.extend_from_slice(p);
    }
    seal(out, start);
    len as u32
}

/// Starts a record whose body the caller writes next; [`seal`] finishes it.
pub fn begin_record(out: &mut Vec<u8>, kind: RecordKind) -> usize {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&[kind.code(), 0, 0, 0]);
    out.extend_from_slice(&[0u8; 8]);
    start
}

/// Fills in the length and checksum of the record that starts at `start`
/// and runs to the end of `out`; returns the body length.
pub fn seal(out: &mut [u8], start: usize) -> u32 {
    let len = (out.len() - start - RECORD_HEADER_LEN) as u32;
    out[start + 8..start + 12].copy_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out[start..start + 12]);
    h.update(&out[start + RECORD_HEADER_LEN..]);
    let crc = h.finalize();
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    len
}

/// Parses a record header: its kind and body length.
pub fn parse_record_header(h: &[u8]) -> Result<(RecordKind, u32), String> {
    if h.len() < RECORD_HEADER_LEN {
        return Err(format!("{} bytes, shorter than a record header", h.len()));
    }
    if h[..4] != RECORD_MAGIC {
        return Err("bad record magic".into());
    }
    let kind = RecordKind::from_code(h[4]).ok_or_else(|| format!("unknown record kind {}", h[4]))?;
    if h[5..8] != [0, 0, 0] {
        return Err("reserved record header bytes are not zero".into());
    }
    let len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if len as usize > MAX_RECORD_BYTES {
        return Err(format!("record length {len} is over the {MAX_RECORD_BYTES}-byte limit"));
    }
    Ok((kind, len))
}

/// Checks a record's checksum given its header and body.
pub fn check_record(header: &[u8], body: &[u8]) -> Result<(), String> {
    let declared = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..12]);
    h.update(body);
    if h.finalize() == declared {
        Ok(())
    } else {
        Err("record checksum mismatch".into())
    }
}

/// The segment being appended to (owned by the store's writer).
#[derive(Debug)]
pub(crate) struct Active {
    number: u64,
    file: Arc<dyn DiskFile>,
    len: u64,
}

/// What the group commit knows: how far the segments are written (and
/// indexed), how far they are durable, and whether someone is syncing.
#[derive(Debug, Default)]
struct SyncState {
    /// The segment written last, whose fdatasync covers everything written.
    file: Option<Arc<dyn DiskFile>>,
    written: Pos,
    synced: Pos,
    syncing: bool,
    /// An fdatasync failed: what the kernel had buffered may be gone, so no
    /// later sync may be trusted (the store must be reopened).
    failed: Option<String>,
}

/// The segment directory: read handles, the writer's appends and the group
/// commit.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    roll_bytes: u64,
    readers: Mutex<HashMap<u64, Arc<dyn DiskFile>>>,
    sync: Mutex<SyncState>,
    synced_changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Segments {
    /// Read handles kept open at most; more are closed and reopened as
    /// needed, so a log of thousands of segments never runs out of files.
    const MAX_READERS: usize = 64;

    pub(crate) fn new(dir: PathBuf, disk: Arc<dyn Disk>, roll_bytes: u64) -> Segments {
        Segments {
            dir,
            disk,
            roll_bytes,
            readers: Mutex::default(),
            sync: Mutex::default(),
            synced_changed: Condvar::new(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn disk(&self) -> &dyn Disk {
        &*self.disk
    }

    pub(crate) fn path(&self, number: u64) -> PathBuf {
        self.dir.join(file_name(number))
    }

    /// The segment numbers present, in order.
    pub(crate) fn list(&self) -> std::io::Result<Vec<u64>> {
        let mut out: Vec<u64> = self.disk.list(&self.dir)?.iter().filter_map(|n| number_of(n)).collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Sets where writing continues after recovery: the end of the valid
    /// data, which is also durable (recovery synced it).
    pub(crate) fn resume_at(&self, end: Pos) {
        let mut s = lock(&self.sync);
        s.written = end;
        s.synced = end;
    }

    fn reader(&self, number: u64) -> std::io::Result<Arc<dyn DiskFile>> {
        let mut readers = lock(&self.readers);
        if let Some(f) = readers.get(&number) {
            return Ok(f.clone());
        }
        let f = self.disk.open(&self.path(number), OpenMode::Read)?;
        if readers.len() >= Self::MAX_READERS {
            readers.clear();
        }
        readers.insert(number, f.clone());
        Ok(f)
    }

    /// Forgets the read handle of a segment (after it was truncated or
    /// moved away).
    pub(crate) fn forget(&self, number: u64) {
        lock(&self.readers).remove(&number);
    }

    /// Reads a record's header and body at `loc`, checking the header (not
    /// the body's checksum: frames and blobs carry their own).
    pub(crate) fn read(&self, loc: Loc) -> Result<(RecordKind, Vec<u8>), String> {
        if loc.len as usize > MAX_RECORD_BYTES {
            return Err(format!(
                "the index gives the record at {loc} a length over the {MAX_RECORD_BYTES}-byte limit"
            ));
        }
        let file = self
            .reader(loc.segment)
            .map_err(|e| format!("cannot open segment {}: {e}", loc.segment))?;
        let mut buf = vec![0u8; RECORD_HEADER_LEN + loc.len as usize];
        if let Err(e) = file.read_exact_at(&mut buf, loc.offset) {
            let file_len = file.len().unwrap_or(0);
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!("the record at {loc} lies past the end of its segment file ({file_len} bytes)")
            } else {
                format!("cannot read the record at {loc}: {e}")
            });
        }
        let (kind, len) = parse_record_header(&buf).map_err(|e| format!("the record at {loc}: {e}"))?;
        if len != loc.len {
            return Err(format!(
                "the record at {loc} says its body is {len} bytes, the index says {}",
                loc.len
            ));
        }
        buf.drain(..RECORD_HEADER_LEN);
        Ok((kind, buf))
    }

    /// Reads a record for verify: its kind and body, and what is wrong with
    /// its checksum, if anything.
    pub(crate) fn read_checked(&self, loc: Loc) -> Result<(RecordKind, Vec<u8>, Option<String>), String> {
        let file = self
            .reader(loc.segment)
            .map_err(|e| format!("cannot open segment {}: {e}", loc.segment))?;
        let mut header = [0u8; RECORD_HEADER_LEN];
        file.read_exact_at(&mut header, loc.offset)
            .map_err(|e| format!("cannot read the record at {loc}: {e}"))?;
        let (kind, body) = self.read(loc)?;
        let crc = check_record(&header, &body)
            .err()
            .map(|e| format!("the record at {loc}: {e}"));
        Ok((kind, body, crc))
    }

    /// The first `n` body bytes of the record at `loc` (fewer if the body
    /// is shorter).
    pub(crate) fn read_prefix(&self, loc: Loc, n: usize) -> Result<Vec<u8>, String> {
        let file = self
            .reader(loc.segment)
            .map_err(|e| format!("cannot open segment {}: {e}", loc.segment))?;
        let mut buf = vec![0u8; n.min(loc.len as usize)];
        file.read_exact_at(&mut buf, loc.offset + RECORD_HEADER_LEN as u64)
            .map_err(|e| format!("cannot read the record at {loc}: {e}"))?;
        Ok(buf)
    }

    /// Appends `bytes` (whole records) to the active segment, rolling to a
    /// new one first if they would take it past the roll size. Returns
    /// where they start. Nothing is durable until [`Segments::sync_through`].
    pub(crate) fn write(&self, active: &mut Option<Active>, bytes: &[u8]) -> std::io::Result<Pos> {
        if let Some(f) = &lock(&self.sync).failed {
            return Err(std::io::Error::other(format!(
                "an earlier fdatasync of the log failed ({f}); what was buffered may be lost, so the log takes no more writes until it is reopened"
            )));
        }
        let roll = active
            .as_ref()
            .is_none_or(|a| a.len > HEADER_LEN && a.len + bytes.len() as u64 > self.roll_bytes);
        if roll {
            self.roll(active)?;
        }
        let a = active.as_mut().expect("rolled above");
        if let Err(e) = a.file.write_all_at(bytes, a.len) {
            // A short write (a full disk) leaves part of the batch behind
            // the end; cut it, so that no part of a failed batch can be
            // found by recovery. If even that fails, stop writing.
            if let Err(cut) = a.file.set_len(a.len) {
                self.fail(&cut);
            }
            return Err(e);
        }
        let start = Pos {
            segment: a.number,
            offset: a.len,
        };
        a.len += bytes.len() as u64;
        Ok(start)
    }

    /// Marks the segments failed: no later write or sync is trusted.
    fn fail(&self, e: &std::io::Error) {
        let mut s = lock(&self.sync);
        if s.failed.is_none() {
            s.failed = Some(e.to_string());
        }
    }

    /// Opens the segment to continue at the end position recovery found,
    /// or starts the next one. The old segment is synced first, so that
    /// syncing the active segment covers everything written.
    fn roll(&self, active: &mut Option<Active>) -> std::io::Result<()> {
        let end = lock(&self.sync).written;
        if active.is_none() && end.segment > 0 && end.offset < self.roll_bytes {
            let file = self.disk.open(&self.path(end.segment), OpenMode::ReadWrite)?;
            *active = Some(Active {
                number: end.segment,
                file,
                len: end.offset,
            });
            return Ok(());
        }
        // A failed sync is never retried as if nothing happened.
        let synced = |r: std::io::Result<()>| {
            if let Err(e) = &r {
                self.fail(e);
            }
            r
        };
        if let Some(old) = active.as_ref() {
            synced(old.file.sync_data())?;
        }
        let number = active.as_ref().map_or(end.segment, |a| a.number) + 1;
        self.disk.create_dir_all(&self.dir)?;
        let path = self.path(number);
        let file = match self.disk.open(&path, OpenMode::CreateNew) {
            // Left by a roll that failed (a full disk) before anything was
            // written to it: start it again.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let f = self.disk.open(&path, OpenMode::ReadWrite)?;
                f.set_len(0)?;
                f
            }
            other => other?,
        };
        file.write_all_at(&header(number), 0)?;
        synced(file.sync_data())?;
        synced(self.disk.sync_dir(&self.dir))?;
        *active = Some(Active {
            number,
            file,
            len: HEADER_LEN,
        });
        Ok(())
    }

    /// Records that everything up to `end` is written and indexed; called
    /// by the writer after the index batch is applied.
    pub(crate) fn advance(&self, active: &Option<Active>, end: Pos) {
        let mut s = lock(&self.sync);
        if end > s.written {
            s.written = end;
            s.file = active.as_ref().map(|a| a.file.clone());
            if end.segment > s.synced.segment {
                // Rolling synced the old segment to its end.
                s.synced = Pos {
                    segment: end.segment,
                    offset: HEADER_LEN,
                };
            }
        }
    }

    /// How far the segments are written and indexed.
    pub(crate) fn written(&self) -> Pos {
        lock(&self.sync).written
    }

    /// Returns once everything up to `target` is durable. Concurrent callers
    /// share one fdatasync: the first becomes the leader and syncs all that
    /// is written at that moment; the rest wait for it, and the next leader
    /// covers whatever arrived meanwhile.
    pub(crate) fn sync_through(&self, target: Pos) -> std::io::Result<Pos> {
        let mut s = lock(&self.sync);
        loop {
            if let Some(f) = &s.failed {
                return Err(std::io::Error::other(format!(
                    "an earlier fdatasync of the log failed ({f}); reopen the data directory"
                )));
            }
            if s.synced >= target {
                return Ok(s.synced);
            }
            if s.syncing {
                s = self.synced_changed.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let (file, upto) = (s.file.clone(), s.written);
            s.syncing = true;
            drop(s);
            let result = match &file {
                Some(f) => f.sync_data(),
                None => Ok(()),
            };
            s = lock(&self.sync);
            s.syncing = false;
            match &result {
                Ok(()) if upto > s.synced => s.synced = upto,
                Ok(()) => {}
                Err(e) => s.failed = Some(e.to_string()),
            }
            self.synced_changed.notify_all();
            result?;
        }
    }

    /// Makes everything written so far durable; returns how far that is.
    pub(crate) fn sync_all(&self) -> std::io::Result<Pos> {
        let target = self.written();
        self.sync_through(target)
    }

    /// Total bytes of the segment files.
    pub(crate) fn size_on_disk(&self) -> std::io::Result<u64> {
        let mut total = 0;
        for n in self.list()? {
            total += self.disk.open(&self.path(n), OpenMode::Read)?.len()?;
        }
        Ok(total)
    }

    /// Overwrites bytes of a segment in place (fault injection).
    pub(crate) fn overwrite(&self, pos: Pos, bytes: &[u8]) -> std::io::Result<()> {
        let f = self.disk.open(&self.path(pos.segment), OpenMode::ReadWrite)?;
        f.write_all_at(bytes, pos.offset)?;
        f.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_flipped_byte_is_caught() {
        let mut out = Vec::new();
        let len = push_record(&mut out, RecordKind::Blob, &[b"abc", b"defg"]);
        assert_eq!(len, 7);
        let (kind, n) = parse_record_header(&out).unwrap();
        assert_eq!((kind, n), (RecordKind::Blob, 7));
        check_record(&out[..16], &out[16..]).unwrap();
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            let caught = parse_record_header(&bad).is_err() || check_record(&bad[..16], &bad[16..]).is_err();
            assert!(caught, "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn locations_and_names_round_trip() {
        let loc = Loc {
            segment: 3,
            offset: 1 << 33,
            len: 77,
        };
        assert_eq!(Loc::decode(&loc.encode()), Some(loc));
        assert_eq!(Loc::decode(b"FTHC and not a location!"), None);
        assert_eq!(number_of(&file_name(42)), Some(42));
        assert_eq!(number_of("42.seg"), None);
        check_header(&header(9), 9).unwrap();
        assert!(check_header(&header(9), 8).unwrap_err().contains("names segment 9"));
    }
}
