//! What is in a data directory: `fathom log stats`.

use std::collections::BTreeMap;

use fathom_core::{EventKind, RunId, Seq};

use crate::blob;
use crate::chunk;
use crate::frame;
use crate::keys;
use crate::segment::Loc;
use crate::{Result, Store, sled_err};

/// Counts for one event kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindStats {
    /// Events of this kind.
    pub events: u64,
    /// Their frame bytes (header and payload).
    pub bytes: u64,
}

/// Counts for one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Events in the run.
    pub events: u64,
    /// Their frame bytes.
    pub bytes: u64,
    /// First sequence number.
    pub first_seq: u64,
    /// Last sequence number.
    pub last_seq: u64,
}

/// A summary of the whole store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Events in the log.
    pub events: u64,
    /// Last sequence number.
    pub last_seq: Seq,
    /// Frame bytes of all readable events.
    pub event_bytes: u64,
    /// Events that failed to decode (see `fathom verify`).
    pub corrupt_events: u64,
    /// Per kind.
    pub by_kind: BTreeMap<EventKind, KindStats>,
    /// Per run.
    pub by_run: BTreeMap<RunId, RunStats>,
    /// Distinct blobs stored.
    pub blobs: u64,
    /// Their uncompressed bytes.
    pub blob_raw_bytes: u64,
    /// Their stored (compressed) bytes, headers included.
    pub blob_stored_bytes: u64,
    /// References from events to blobs.
    pub blob_refs: u64,
    /// Bytes those references name: what would be stored without dedupe.
    pub blob_referenced_bytes: u64,
    /// Size of the database on disk.
    pub disk_bytes: u64,
}

impl Stats {
    /// Referenced bytes per unique byte stored (1.0 means no duplicates).
    pub fn dedupe_ratio(&self) -> f64 {
        if self.blob_raw_bytes == 0 {
            1.0
        } else {
            self.blob_referenced_bytes as f64 / self.blob_raw_bytes as f64
        }
    }

    /// Uncompressed per stored blob byte.
    pub fn compression_ratio(&self) -> f64 {
        if self.blob_stored_bytes == 0 {
            1.0
        } else {
            self.blob_raw_bytes as f64 / self.blob_stored_bytes as f64
        }
    }
}

impl Store {
    /// Scans the log and the blob tree.
    pub fn stats(&self) -> Result<Stats> {
        self.stats_with(&mut |_, _| {})
    }

    /// [`Store::stats`], calling `progress` with events scanned and the
    /// number expected.
    pub fn stats_with(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<Stats> {
        let mut s = Stats {
            last_seq: self.last_seq(),
            ..Stats::default()
        };
        for item in self.chunks(Seq(0), Seq(u64::MAX)) {
            let (first, value) = match item {
                Ok(c) => c,
                Err(crate::Error::Segment(_)) => {
                    s.corrupt_events += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            progress(s.events, s.last_seq.0);
            for slot in chunk::layout(first, &value).slots {
                s.events += 1;
                let decoded = slot.frame.and_then(|r| {
                    let len = r.len() as u64;
                    frame::decode(slot.seq, &value[r]).map(|(h, e)| (h, e, len))
                });
                let Ok((header, event, len)) = decoded else {
                    s.corrupt_events += 1;
                    continue;
                };
                s.event_bytes += len;
                let k = s.by_kind.entry(header.kind).or_default();
                k.events += 1;
                k.bytes += len;
                let r = s.by_run.entry(header.run).or_insert(RunStats {
                    first_seq: slot.seq.0,
                    ..RunStats::default()
                });
                r.events += 1;
                r.bytes += len;
                r.last_seq = slot.seq.0;
                for blob in event.payload.blob_refs() {
                    s.blob_refs += 1;
                    s.blob_referenced_bytes += blob.len;
                }
            }
        }
        for item in self.blobs_tree().iter() {
            let (key, value) = item.map_err(sled_err("scan the blobs"))?;
            let Some((_, part)) = keys::parts_of_blob_key(&key) else {
                continue;
            };
            if let Some(loc) = Loc::decode(&value) {
                s.blobs += 1;
                s.blob_stored_bytes += u64::from(loc.len).saturating_sub(32);
                let head = self
                    .segments()
                    .read_prefix(loc, 32 + blob::HEADER_LEN)
                    .unwrap_or_default();
                s.blob_raw_bytes += head.get(32..).and_then(blob::stored_len).unwrap_or(0);
                continue;
            }
            s.blob_stored_bytes += value.len() as u64;
            if part == 0 {
                s.blobs += 1;
                s.blob_raw_bytes += blob::stored_len(&value).unwrap_or(0);
            }
        }
        s.disk_bytes = self.size_on_disk()?;
        Ok(s)
    }
}
