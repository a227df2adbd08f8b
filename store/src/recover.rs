//! Recovery at open: the segments' tail, then the last chunk's frames.
//!
//! 1. **Segments.** sled's index is flushed only every `relaxed_flush_ms`,
//!    after the segments are synced, together with the mark (see `keys`).
//!    Everything before the mark is durable and indexed. Records after it
//!    were written (and, for durable appends, synced) but sled may not have
//!    persisted their index: recovery reads them in order, checks each
//!    record's checksum and re-indexes it. The first torn or damaged record
//!    ends the log: its bytes and everything after them are moved to
//!    `segments/quarantine/`, and any index entry that pointed there (sled
//!    can persist index items without a flush) is removed. What remains is
//!    a prefix of what was written: never a gap.
//! 2. **Frames.** The last chunk's frames are checked one by one (a record
//!    can be intact while a frame in it was damaged before it was written);
//!    a damaged suffix is cut and quarantined under `q` keys, and the good
//!    prefix is written back as a new chunk.

use fathom_core::{Clock, Event, Seq, SystemClock};

use crate::chunk;
use crate::disk::OpenMode;
use crate::frame;
use crate::index::PendingChunk;
use crate::keys;
use crate::paths::DataDir;
use crate::scan::{Found, Scan};
use crate::segment::{self, Loc, Pos, RecordKind, Segments};
use crate::store::RecoveryReport;
use crate::{Error, Result, sled_err};

/// How far back recovery walks a corrupt tail of frames before refusing to
/// cut more.
const MAX_TAIL_CUT: usize = 1024;

/// How recovery treats a damaged record after the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// At open: the first damaged record ends the log (what was written
    /// after it cannot have been acknowledged before it was: a prefix).
    Open,
    /// Rebuilding the index from the segments (`fathom verify --repair`):
    /// every intact record is kept, damaged ones are skipped and reported.
    Repair,
}

pub(crate) fn recover(
    dir: &DataDir,
    segments: &Segments,
    events: &sled::Tree,
    blobs: &sled::Tree,
    mode: Mode,
) -> Result<RecoveryReport> {
    let mut report = RecoveryReport::default();
    let mut end = segment_tail(segments, events, blobs, mode, &mut report)?;
    frame_tail(dir, segments, events, &mut end, &mut report)?;
    if let Some(end) = end {
        segments.resume_at(end);
        events
            .insert(keys::MARK, &end.encode()[..])
            .map_err(sled_err("write the mark"))?;
    }
    Ok(report)
}

fn io_err(action: &'static str, path: std::path::PathBuf) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { action, path, source }
}

/// Re-indexes the records after the mark and cuts a torn tail. Returns
/// where the valid data ends (`None` when there are no segments).
fn segment_tail(
    segments: &Segments,
    events: &sled::Tree,
    blobs: &sled::Tree,
    mode: Mode,
    report: &mut RecoveryReport,
) -> Result<Option<Pos>> {
    let numbers = segments
        .list()
        .map_err(io_err("list the segment files in", segments.dir().to_path_buf()))?;
    let Some(&oldest) = numbers.first() else {
        return Ok(None);
    };
    let mark = events
        .get(keys::MARK)
        .map_err(sled_err("read the mark"))?
        .and_then(|v| Pos::decode(&v))
        .unwrap_or(Pos {
            segment: oldest,
            offset: 0,
        });
    let mut end: Option<Pos> = None;
    let mut cut: Option<(Pos, String)> = None;
    let mut after_cut = Vec::new();
    for &n in numbers.iter().filter(|&&n| n >= mark.segment) {
        if cut.is_some() {
            after_cut.push(n);
            continue;
        }
        let from = if n == mark.segment { mark.offset } else { 0 };
        let path = segments.path(n);
        let mut scan = match Scan::open(segments, n, from) {
            Ok(s) => s,
            Err((offset, why)) => {
                if offset >= segment::HEADER_LEN {
                    end = Some(Pos { segment: n, offset });
                }
                cut = Some((Pos { segment: n, offset }, why));
                continue;
            }
        };
        scan.lenient = mode == Mode::Repair;
        loop {
            match scan.next_record() {
                Ok(Some(found)) => reindex(found, events, blobs, report)?,
                Err((offset, why))
                    if mode == Mode::Repair
                        && scan
                            .resync(offset)
                            .map_err(io_err("read the segment file", path.clone()))? =>
                {
                    report.damaged.push((Pos { segment: n, offset }, why));
                }
                Ok(None) => {
                    scan.sync().map_err(io_err("sync the segment file", path.clone()))?;
                    end = Some(Pos {
                        segment: n,
                        offset: scan.offset(),
                    });
                    break;
                }
                Err((offset, why)) => {
                    scan.sync().map_err(io_err("sync the segment file", path.clone()))?;
                    end = Some(Pos { segment: n, offset });
                    cut = Some((Pos { segment: n, offset }, why));
                    break;
                }
            }
        }
    }
    // Segments before the mark's are complete and durable.
    if end.is_none()
        && let Some(&before) = numbers.iter().rev().find(|&&n| n < mark.segment)
    {
        let len = segments
            .disk()
            .open(&segments.path(before), OpenMode::Read)
            .and_then(|f| f.len())
            .map_err(io_err("read the size of", segments.path(before)))?;
        end = Some(Pos {
            segment: before,
            offset: len,
        });
    }
    if let Some((at, _)) = &cut {
        quarantine_from(segments, *at, &after_cut)?;
    }
    // Index entries that sled persisted for records that are not (or no
    // longer) in the segments: at or past the end of the valid data.
    let valid_end = end.unwrap_or(Pos {
        segment: oldest,
        offset: 0,
    });
    let why = cut
        .as_ref()
        .map_or("it lies past the end of the segment data".to_string(), |(_, why)| {
            why.clone()
        });
    drop_index_from(events, blobs, valid_end, &why, report)?;
    report.segment_cut = cut;
    Ok(end)
}

/// Indexes one record found after the mark, unless it already is.
fn reindex(found: Found, events: &sled::Tree, blobs: &sled::Tree, report: &mut RecoveryReport) -> Result<()> {
    let value = found.loc.encode();
    let pos = found.loc.pos();
    if let Some(why) = &found.damaged {
        report.damaged.push((pos, why.clone()));
    }
    match found.kind {
        RecordKind::Chunk => {
            let body = &found.body;
            let Some(first) = chunk::header_first(body) else {
                // Its first sequence number cannot be trusted.
                report
                    .damaged
                    .push((pos, "the chunk header is damaged; the chunk was not indexed".into()));
                return Ok(());
            };
            // Written whether or not sled has the location: sled may have
            // kept it without the index entries inserted after it.
            let known = events
                .get(keys::event(first))
                .map_err(sled_err("read the log"))?
                .is_some_and(|v| v.as_ref() == value);
            let mut pending = PendingChunk::new(first);
            for slot in chunk::layout(first, body).slots {
                if let Ok((_, event)) = slot.frame.and_then(|r| frame::decode(slot.seq, &body[r])) {
                    pending.note(&event);
                }
            }
            pending.insert_index(events, &value)?;
            if !known {
                report.reindexed += 1;
            }
        }
        RecordKind::Blob => {
            let Some(digest) = found.body.get(..32) else {
                return Ok(());
            };
            let digest = fathom_core::Digest(digest.try_into().expect("32 bytes"));
            if found.damaged.is_some()
                && let Err(why) = crate::blob::decode(&digest, &found.body[32..])
            {
                report
                    .damaged
                    .push((pos, format!("blob {digest}: {why}; the blob was not indexed")));
                return Ok(());
            }
            let key = keys::blob_part(&digest, 0);
            if !blobs.contains_key(key).map_err(sled_err("look up a blob"))? {
                let mut batch = sled::Batch::default();
                batch.insert(&key[..], &value[..]);
                batch.insert(&keys::blob_at(found.loc.pos())[..], &digest.0[..]);
                blobs.apply_batch(batch).map_err(sled_err("re-index a blob"))?;
                report.reindexed += 1;
            }
        }
        RecordKind::Counter => {
            if found.body.len() == 9 && found.damaged.is_none() {
                let tag = found.body[0];
                let value = u64::from_le_bytes(found.body[1..9].try_into().expect("8 bytes"));
                let key = [keys::COUNTER, tag];
                let old = events
                    .get(key)
                    .map_err(sled_err("read an id counter"))?
                    .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
                    .map_or(0, u64::from_be_bytes);
                if value > old {
                    events
                        .insert(key, &value.to_be_bytes())
                        .map_err(sled_err("restore an id counter"))?;
                    report.reindexed += 1;
                }
            }
        }
    }
    Ok(())
}

/// Moves the segment bytes from `at` on (and the segments after it) to the
/// quarantine directory.
fn quarantine_from(segments: &Segments, at: Pos, after: &[u64]) -> Result<()> {
    let quarantine = segments.dir().join("quarantine");
    let disk = segments.disk();
    disk.create_dir_all(&quarantine)
        .map_err(io_err("create", quarantine.clone()))?;
    let found_at = SystemClock.now().0;
    let path = segments.path(at.segment);
    let kept_header = at.offset >= segment::HEADER_LEN;
    if kept_header {
        let f = disk
            .open(&path, OpenMode::ReadWrite)
            .map_err(io_err("open", path.clone()))?;
        let len = f.len().map_err(io_err("read the size of", path.clone()))?;
        let saved = quarantine.join(format!("{}.{}.{found_at}", segment::file_name(at.segment), at.offset));
        let q = disk
            .open(&saved, OpenMode::CreateNew)
            .map_err(io_err("create", saved.clone()))?;
        // Copied in bounded pieces, whatever the segment size.
        let mut from = at.offset;
        while from < len {
            let n = (len - from).min(4 << 20) as usize;
            let mut piece = vec![0u8; n];
            f.read_exact_at(&mut piece, from)
                .map_err(io_err("read", path.clone()))?;
            q.write_all_at(&piece, from - at.offset)
                .map_err(io_err("write", saved.clone()))?;
            from += n as u64;
        }
        q.sync_data().map_err(io_err("sync", saved.clone()))?;
        disk.sync_dir(&quarantine).map_err(io_err("sync", quarantine.clone()))?;
        f.set_len(at.offset).map_err(io_err("truncate", path.clone()))?;
        f.sync_data().map_err(io_err("sync", path.clone()))?;
    }
    let whole: Vec<u64> = (!kept_header)
        .then_some(at.segment)
        .into_iter()
        .chain(after.iter().copied())
        .collect();
    for n in whole {
        let from = segments.path(n);
        let to = quarantine.join(format!("{}.{found_at}", segment::file_name(n)));
        disk.rename(&from, &to)
            .map_err(io_err("move to quarantine", from.clone()))?;
        segments.forget(n);
    }
    segments.forget(at.segment);
    disk.sync_dir(segments.dir())
        .map_err(io_err("sync", segments.dir().to_path_buf()))?;
    disk.sync_dir(&quarantine).map_err(io_err("sync", quarantine.clone()))?;
    Ok(())
}

/// Removes every index entry that points at or past `at`, reporting the
/// chunks by their first sequence number.
fn drop_index_from(
    events: &sled::Tree,
    blobs: &sled::Tree,
    at: Pos,
    why: &str,
    report: &mut RecoveryReport,
) -> Result<()> {
    // Chunks: a suffix of the `e` keys.
    let mut firsts = std::collections::HashSet::new();
    loop {
        let last = events
            .range(keys::event(Seq(0))..=keys::event(Seq(u64::MAX)))
            .next_back()
            .transpose()
            .map_err(sled_err("read the log tail"))?;
        let Some((key, value)) = last else { break };
        let Some(loc) = Loc::decode(&value) else { break };
        if loc.end() <= at {
            break;
        }
        let first = keys::seq_of_event_key(&key)
            .ok_or_else(|| Error::Internal("event range returned a non-event key".into()))?;
        events.remove(&key[..]).map_err(sled_err("cut a torn tail"))?;
        firsts.insert(first);
        report.cut.push((
            first,
            format!("its chunk's record at {loc} is gone from the segments: {why}"),
        ));
    }
    if !firsts.is_empty() {
        remove_index_entries(events, &firsts)?;
    }
    // Blobs: their locations by position.
    let lo = keys::blob_at(Pos {
        segment: at.segment,
        offset: 0,
    });
    let hi = keys::blob_at(Pos {
        segment: u64::MAX,
        offset: u64::MAX,
    });
    let stale: Vec<(sled::IVec, sled::IVec)> = blobs
        .range(lo..=hi)
        .collect::<std::result::Result<_, _>>()
        .map_err(sled_err("scan the blob locations"))?;
    for (key, digests) in stale {
        let Some(first) = keys::pos_of_blob_at(&key) else {
            continue;
        };
        for digest in digests.chunks_exact(32) {
            let digest = fathom_core::Digest(digest.try_into().expect("32 bytes"));
            let part0 = keys::blob_part(&digest, 0);
            let points_past = blobs
                .get(part0)
                .map_err(sled_err("read a blob"))?
                .and_then(|v| Loc::decode(&v))
                .is_some_and(|l| l.pos() >= first && l.end() > at);
            if points_past {
                blobs.remove(&part0[..]).map_err(sled_err("cut a torn blob"))?;
            }
        }
        if first >= at {
            blobs.remove(key).map_err(sled_err("cut a torn blob"))?;
        }
    }
    Ok(())
}

fn remove_index_entries(events: &sled::Tree, firsts: &std::collections::HashSet<Seq>) -> Result<()> {
    let mut batch = sled::Batch::default();
    for tag in [keys::RUN_INDEX, keys::EPISODE_INDEX] {
        for k in events.scan_prefix([tag]).keys() {
            let k = k.map_err(sled_err("scan an index"))?;
            if keys::parts_of_index_key(&k).is_some_and(|(_, s)| firsts.contains(&s)) {
                batch.remove(k);
            }
        }
    }
    events.apply_batch(batch).map_err(sled_err("cut index entries"))
}

/// A frame of the tail chunk: where it is and what it says, or why not.
type CheckedFrame = std::result::Result<(std::ops::Range<usize>, Event), String>;

/// Checks the last chunk's frames and cuts a damaged suffix, moving the
/// chunk's bytes to the quarantine keys so that nothing is destroyed.
fn frame_tail(
    dir: &DataDir,
    segments: &Segments,
    events: &sled::Tree,
    end: &mut Option<Pos>,
    report: &mut RecoveryReport,
) -> Result<()> {
    let lo = keys::event(Seq(0));
    let hi = keys::event(Seq(u64::MAX));
    let found_at = SystemClock.now().0;
    let mut cut_here = 0usize;
    loop {
        let last = events
            .range(lo..=hi)
            .next_back()
            .transpose()
            .map_err(sled_err("read the log tail"))?;
        let Some((key, value)) = last else {
            report.last_seq = Seq(0);
            break;
        };
        let first = keys::seq_of_event_key(&key)
            .ok_or_else(|| Error::Internal("event range returned a non-event key".into()))?;
        let loc = Loc::decode(&value);
        let (bytes, unreadable) = match loc {
            None => (value.to_vec(), None),
            Some(loc) => match segments.read(loc) {
                Ok((RecordKind::Chunk, body)) => (body, None),
                Ok((kind, _)) => (Vec::new(), Some(format!("the record at {loc} is a {kind:?} record"))),
                Err(why) => (Vec::new(), Some(why)),
            },
        };
        let layout = chunk::layout(first, &bytes);
        // Check payloads too: the tail is small, and a frame whose checksum
        // matches but whose archive is invalid is as unreadable as a torn one.
        let slots: Vec<(Seq, CheckedFrame)> = layout
            .slots
            .into_iter()
            .map(|slot| {
                let checked = slot
                    .frame
                    .and_then(|r| frame::decode(slot.seq, &bytes[r.clone()]).map(|(_, e)| (r, e)))
                    .map_err(|e| e.to_string());
                (slot.seq, checked)
            })
            .collect();
        // Only a damaged suffix is cut: a bad frame followed by good ones is
        // damage in the middle of the log, left in place for verify.
        let last_good = slots.iter().rposition(|s| s.1.is_ok());
        let cut_from = last_good.map_or(0, |i| i + 1);
        if cut_from == slots.len() && layout.header_error.is_none() && !slots.is_empty() && unreadable.is_none() {
            report.last_seq = slots[slots.len() - 1].0;
            break;
        }
        let mut cut: Vec<(Seq, String)> = slots[cut_from..]
            .iter()
            .rev()
            .map(|(seq, r)| (*seq, r.as_ref().err().cloned().unwrap_or_default()))
            .collect();
        if let Some(why) = &unreadable {
            cut.push((first, why.clone()));
        }
        cut_here += cut.len();
        if cut_here > MAX_TAIL_CUT {
            return Err(Error::TooMuchDamage {
                dir: dir.root().to_path_buf(),
                count: cut_here,
            });
        }
        // Quarantine the chunk as found, then write back the kept prefix
        // byte for byte under a fresh header, and re-index it.
        let mut batch = sled::Batch::default();
        let quarantined = if bytes.is_empty() {
            value.to_vec()
        } else {
            bytes.clone()
        };
        batch.insert(&keys::quarantine(first, found_at)[..], quarantined);
        batch.remove(&key[..]);
        events.apply_batch(batch).map_err(sled_err("cut a corrupt tail"))?;
        remove_index_entries(events, &std::iter::once(first).collect())?;
        if let Some(i) = last_good {
            let Ok((range, _)) = &slots[i].1 else {
                return Err(Error::Internal("last good slot is not good".into()));
            };
            let body = &bytes[chunk::HEADER_LEN..range.end];
            let kept = chunk::with_body(first, i as u32 + 1, body);
            let value = match loc {
                None => kept,
                Some(_) => append_at_end(segments, end, &kept)?.encode().to_vec(),
            };
            let mut index = PendingChunk::new(first);
            for (_, r) in &slots[..=i] {
                if let Ok((_, e)) = r {
                    index.note(e);
                }
            }
            index.insert_index(events, &value)?;
        }
        report.cut.extend(cut);
        if let Some(i) = last_good {
            report.last_seq = slots[i].0;
            break;
        }
    }
    Ok(())
}

/// Appends a chunk record at the end of the valid data (recovery's own
/// write, before any writer exists) and syncs it.
fn append_at_end(segments: &Segments, end: &mut Option<Pos>, chunk_bytes: &[u8]) -> Result<Loc> {
    let at = end.ok_or_else(|| Error::Internal("a segment chunk with no segment to write to".into()))?;
    let mut buf = Vec::with_capacity(chunk_bytes.len() + segment::RECORD_HEADER_LEN);
    let len = segment::push_record(&mut buf, RecordKind::Chunk, &[chunk_bytes]);
    let path = segments.path(at.segment);
    let f = segments
        .disk()
        .open(&path, OpenMode::ReadWrite)
        .map_err(io_err("open", path.clone()))?;
    f.write_all_at(&buf, at.offset).map_err(io_err("write", path.clone()))?;
    f.sync_data().map_err(io_err("sync", path.clone()))?;
    *end = Some(Pos {
        segment: at.segment,
        offset: at.offset + buf.len() as u64,
    });
    Ok(Loc {
        segment: at.segment,
        offset: at.offset,
        len,
    })
}

/// The lowest first sequence number of any chunk record in the segments
/// (`None` when they hold no chunk), found with a lenient scan.
pub(crate) fn first_seq_in_segments(segments: &Segments) -> Result<Option<Seq>> {
    let numbers = segments
        .list()
        .map_err(io_err("list the segment files in", segments.dir().to_path_buf()))?;
    let mut lowest: Option<Seq> = None;
    for n in numbers {
        let path = segments.path(n);
        let Ok(mut scan) = Scan::open(segments, n, 0) else {
            continue;
        };
        scan.lenient = true;
        loop {
            match scan.next_record() {
                Ok(Some(found)) => {
                    if found.kind == RecordKind::Chunk
                        && let Some(first) = chunk::header_first(&found.body)
                    {
                        lowest = Some(lowest.map_or(first, |l| l.min(first)));
                    }
                }
                Ok(None) => break,
                Err((offset, _)) => {
                    if !scan
                        .resync(offset)
                        .map_err(io_err("read the segment file", path.clone()))?
                    {
                        break;
                    }
                }
            }
        }
    }
    Ok(lowest)
}
