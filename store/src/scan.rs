//! Scanning a segment file record by record: what recovery and repair use
//! to find the records past the mark, and to resynchronise after damage.

use std::sync::Arc;

use crate::disk::{DiskFile, OpenMode};
use crate::segment::{
    HEADER_LEN, Loc, RECORD_HEADER_LEN, RECORD_MAGIC, RecordKind, Segments, check_header, check_record,
    parse_record_header,
};

/// Reads the records of one segment file in order, from `from`, stopping at
/// the first that is torn or damaged.
pub(crate) struct Scan {
    file: Arc<dyn DiskFile>,
    number: u64,
    file_len: u64,
    offset: u64,
    /// Keep records whose checksum fails (repair), instead of stopping.
    pub(crate) lenient: bool,
}

/// One record found by a [`Scan`].
pub(crate) struct Found {
    pub loc: Loc,
    pub kind: RecordKind,
    pub body: Vec<u8>,
    /// In a lenient scan: the record's checksum failed (its header held,
    /// so its body is still located; frames and blobs check themselves).
    pub damaged: Option<String>,
}

impl Scan {
    /// Opens segment `number` to scan from offset `from` (at least past the
    /// header, which is checked when `from` is 0 or the header offset).
    pub(crate) fn open(segments: &Segments, number: u64, from: u64) -> Result<Scan, (u64, String)> {
        let file = segments
            .disk()
            .open(&segments.path(number), OpenMode::Read)
            .map_err(|e| (0, format!("cannot open: {e}")))?;
        let file_len = file.len().map_err(|e| (0, format!("cannot stat: {e}")))?;
        let mut h = vec![0u8; HEADER_LEN.min(file_len) as usize];
        file.read_exact_at(&mut h, 0)
            .map_err(|e| (0, format!("cannot read: {e}")))?;
        check_header(&h, number).map_err(|e| (0, e))?;
        if from > file_len {
            return Err((
                file_len,
                format!(
                    "segment {number} is {file_len} bytes, shorter than the mark ({from}) says was durable: data it held is missing"
                ),
            ));
        }
        Ok(Scan {
            file,
            number,
            file_len,
            offset: from.max(HEADER_LEN),
            lenient: false,
        })
    }

    /// Makes what was scanned durable (it may have been written by a
    /// process that died before syncing it).
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Where the next record would start.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record, `Ok(None)` at a clean end of file, or the offset and
    /// reason of the first bad one.
    pub(crate) fn next_record(&mut self) -> Result<Option<Found>, (u64, String)> {
        if self.offset >= self.file_len {
            return Ok(None);
        }
        let at = self.offset;
        let rest = self.file_len - at;
        if rest < RECORD_HEADER_LEN as u64 {
            return Err((at, format!("{rest} bytes at the end, shorter than a record header")));
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        self.file
            .read_exact_at(&mut header, at)
            .map_err(|e| (at, format!("cannot read: {e}")))?;
        let (kind, len) = parse_record_header(&header).map_err(|e| (at, e))?;
        if u64::from(len) > rest - RECORD_HEADER_LEN as u64 {
            return Err((
                at,
                format!(
                    "the record says {len} bytes follow, the file holds {}",
                    rest - RECORD_HEADER_LEN as u64
                ),
            ));
        }
        let mut body = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut body, at + RECORD_HEADER_LEN as u64)
            .map_err(|e| (at, format!("cannot read: {e}")))?;
        let damaged = match check_record(&header, &body) {
            Ok(()) => None,
            Err(e) if self.lenient => Some(e),
            Err(e) => return Err((at, e)),
        };
        self.offset = at + RECORD_HEADER_LEN as u64 + u64::from(len);
        Ok(Some(Found {
            loc: Loc {
                segment: self.number,
                offset: at,
                len,
            },
            kind,
            body,
            damaged,
        }))
    }

    /// After a record whose header is damaged at `from`: moves to the next
    /// offset where an intact record starts, if any.
    pub(crate) fn resync(&mut self, from: u64) -> std::io::Result<bool> {
        // Windows of the file, overlapping by a header's length so that no
        // magic is missed at a boundary; memory stays bounded whatever the
        // segment size.
        const WINDOW: u64 = 4 << 20;
        let mut at = from + 1;
        while at + RECORD_HEADER_LEN as u64 <= self.file_len {
            let len = WINDOW.min(self.file_len - at) as usize;
            let mut window = vec![0u8; len];
            self.file.read_exact_at(&mut window, at)?;
            for i in 0..len.saturating_sub(RECORD_HEADER_LEN - 1) {
                if window[i..i + 4] != RECORD_MAGIC {
                    continue;
                }
                let candidate = at + i as u64;
                if self.intact_at(candidate)? {
                    self.offset = candidate;
                    return Ok(true);
                }
            }
            at += (len as u64).saturating_sub(RECORD_HEADER_LEN as u64 - 1).max(1);
        }
        Ok(false)
    }

    /// Whether an intact record (header and checksum) starts at `offset`.
    fn intact_at(&self, offset: u64) -> std::io::Result<bool> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        self.file.read_exact_at(&mut header, offset)?;
        let Ok((_, len)) = parse_record_header(&header) else {
            return Ok(false);
        };
        let body_at = offset + RECORD_HEADER_LEN as u64;
        if body_at + u64::from(len) > self.file_len {
            return Ok(false);
        }
        let mut body = vec![0u8; len as usize];
        self.file.read_exact_at(&mut body, body_at)?;
        Ok(check_record(&header, &body).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{header, push_record};

    #[test]
    fn a_scan_resyncs_past_damage_longer_than_its_read_window() {
        use crate::disk::{Disk, SimDisk};
        let disk = SimDisk::new(1);
        let segments = Segments::new(std::path::PathBuf::from("/d/segments"), Arc::new(disk.clone()), 1 << 30);
        let mut bytes = header(1).to_vec();
        // 5 MiB of damage with a stray magic inside, then one intact record.
        let mut junk = vec![0xAAu8; 5 << 20];
        junk[(4 << 20) - 2..(4 << 20) + 2].copy_from_slice(&RECORD_MAGIC);
        bytes.extend_from_slice(&junk);
        let good_at = bytes.len() as u64;
        push_record(&mut bytes, RecordKind::Counter, &[b"e", &7u64.to_le_bytes()]);
        disk.write_file(&segments.path(1), bytes);
        assert!(disk.list(segments.dir()).unwrap().len() == 1);
        let mut scan = Scan::open(&segments, 1, 0).unwrap();
        let (bad_at, why) = scan.next_record().err().expect("damage first");
        assert_eq!((bad_at, why.as_str()), (HEADER_LEN, "bad record magic"));
        assert!(scan.resync(bad_at).unwrap());
        let found = scan.next_record().unwrap().expect("the intact record");
        assert_eq!((found.loc.offset, found.kind), (good_at, RecordKind::Counter));
        assert!(scan.next_record().unwrap().is_none());
    }
}
