//! Full verification of a data directory: every chunk and frame, the
//! indexes in both directions, every blob. `fathom verify` is a thin wrapper
//! over [`Store::verify`].

use std::collections::{BTreeSet, HashMap};

use fathom_core::{Digest, Seq};

use crate::blob::{self, BlobError};
use crate::chunk;
use crate::frame::{self, FrameError};
use crate::keys;
use crate::reads::Stored;
use crate::segment::{Loc, RecordKind};
use crate::{Result, Store, sled_err};

/// One thing wrong with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A frame fails validation.
    CorruptEvent {
        /// Its sequence number.
        seq: Seq,
        /// What is wrong.
        reason: FrameError,
    },
    /// A chunk header is damaged (its frames were still checked one by one).
    CorruptChunkHeader {
        /// The chunk's first sequence number.
        first: Seq,
        /// What is wrong.
        reason: String,
    },
    /// Sequence numbers skip: `after` is followed by `next`.
    Gap {
        /// The last number before the gap (0 at the start).
        after: Seq,
        /// The next number present.
        next: Seq,
    },
    /// A chunk holds events of a run or episode that its index lacks.
    MissingIndexEntry {
        /// The chunk's first sequence number.
        first: Seq,
        /// `run` or `episode`.
        index: &'static str,
        /// The run or episode number.
        owner: u64,
    },
    /// An index entry names a chunk that holds no (readable) event of it.
    DanglingIndexEntry {
        /// The chunk's first sequence number.
        first: Seq,
        /// `run` or `episode`.
        index: &'static str,
        /// The run or episode number.
        owner: u64,
    },
    /// A blob does not match its digest.
    CorruptBlob {
        /// The blob's key.
        digest: Digest,
        /// What is wrong.
        reason: BlobError,
    },
    /// A blob-tree entry that belongs to no blob.
    StrayBlobPart {
        /// The digest in its key.
        digest: Digest,
        /// The part number in its key.
        part: u32,
    },
    /// A chunk's location cannot be read (past the end of its segment, a
    /// missing segment, the wrong kind of record there).
    UnreadableChunk {
        /// The chunk's first sequence number.
        first: Seq,
        /// What is wrong.
        reason: String,
    },
    /// A blob's location cannot be read.
    UnreadableBlob {
        /// The blob's key.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// A segment record fails its checksum.
    CorruptRecord {
        /// What the record holds (a chunk, a blob).
        what: String,
        /// What is wrong, with the record's location.
        reason: String,
    },
    /// An event refers to a blob that is not stored.
    MissingBlob {
        /// The first event that refers to it.
        seq: Seq,
        /// The missing blob.
        digest: Digest,
    },
}

fn owner_name(index: &str, owner: u64) -> String {
    match index {
        "run" => fathom_core::RunId(owner).to_string(),
        _ => fathom_core::EpisodeId(owner).to_string(),
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::CorruptEvent { seq, reason } => write!(f, "event {seq} is corrupt: {reason}"),
            Problem::CorruptChunkHeader { first, reason } => {
                write!(f, "the chunk starting at event {first} has a damaged header: {reason}")
            }
            Problem::Gap { after, next } => write!(f, "sequence numbers jump from {after} to {next}"),
            Problem::MissingIndexEntry { first, index, owner } => write!(
                f,
                "the chunk starting at event {first} holds events of {} but the {index} index does not say so",
                owner_name(index, *owner)
            ),
            Problem::DanglingIndexEntry { first, index, owner } => write!(
                f,
                "the {index} index says the chunk starting at event {first} holds events of {}, but it holds none",
                owner_name(index, *owner)
            ),
            Problem::CorruptBlob { digest, reason } => write!(f, "blob {digest} is corrupt: {reason}"),
            Problem::StrayBlobPart { digest, part } => {
                write!(f, "part {part} of blob {digest} belongs to no stored blob")
            }
            Problem::UnreadableChunk { first, reason } => {
                write!(f, "the chunk starting at event {first} cannot be read: {reason}")
            }
            Problem::UnreadableBlob { digest, reason } => write!(f, "blob {digest} cannot be read: {reason}"),
            Problem::CorruptRecord { what, reason } => write!(f, "{what}: {reason}"),
            Problem::MissingBlob { seq, digest } => {
                write!(f, "event {seq} refers to blob {digest}, which is not stored")
            }
        }
    }
}

/// Which part of verification a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyPhase {
    /// Frames and indexes.
    Events,
    /// Blobs.
    Blobs,
}

/// The outcome of [`Store::verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Frames checked.
    pub events: u64,
    /// Blobs checked.
    pub blobs: u64,
    /// Everything found wrong, events first in sequence order.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The first sequence number involved in a problem, if any.
    pub fn first_bad_seq(&self) -> Option<Seq> {
        self.problems
            .iter()
            .filter_map(|p| match p {
                Problem::CorruptEvent { seq, .. } | Problem::MissingBlob { seq, .. } => Some(*seq),
                Problem::CorruptChunkHeader { first, .. }
                | Problem::UnreadableChunk { first, .. }
                | Problem::MissingIndexEntry { first, .. }
                | Problem::DanglingIndexEntry { first, .. } => Some(*first),
                Problem::Gap { after, .. } => Some(Seq(after.0 + 1)),
                Problem::CorruptBlob { .. }
                | Problem::StrayBlobPart { .. }
                | Problem::UnreadableBlob { .. }
                | Problem::CorruptRecord { .. } => None,
            })
            .min()
    }
}

impl Store {
    /// Checks every chunk and frame (checksums, structure, dense sequence
    /// numbers), the indexes in both directions, and every blob
    /// (decompressed and re-hashed). `progress` is called with the phase,
    /// items done and items expected.
    pub fn verify(&self, progress: &mut dyn FnMut(VerifyPhase, u64, u64)) -> Result<VerifyReport> {
        let events = self.events_tree();
        let mut report = VerifyReport::default();
        let total = self.last_seq().0;
        // None after an unreadable chunk, whose extent is unknown.
        let mut expected_next = Some(1u64);
        let mut referenced: HashMap<Digest, Seq> = HashMap::new();
        // (tag, owner, chunk) triples the frames say the index must hold.
        let mut owed: BTreeSet<(u8, u64, Seq)> = BTreeSet::new();
        let lo = keys::event(Seq(0));
        let hi = keys::event(Seq(u64::MAX));
        let mut last_report = 0;
        for item in events.range(lo..=hi) {
            let (key, value) = item.map_err(sled_err("scan the log"))?;
            let Some(first) = keys::seq_of_event_key(&key) else {
                continue;
            };
            if expected_next.is_some_and(|n| first.0 != n) {
                report.problems.push(Problem::Gap {
                    after: Seq(expected_next.unwrap_or(1).saturating_sub(1)),
                    next: first,
                });
            }
            let problems_before = report.problems.len();
            // A record checksum failure is reported only when the frames
            // themselves do not show the damage (it is then in the record
            // header): one flipped byte is one problem.
            let mut record_crc = None;
            let value = match Loc::decode(&value) {
                None => Stored::Inline(value),
                Some(loc) => match self.segments().read_checked(loc) {
                    Ok((RecordKind::Chunk, body, crc)) => {
                        record_crc = crc;
                        Stored::Read(body)
                    }
                    Ok((kind, _, _)) => {
                        report.problems.push(Problem::UnreadableChunk {
                            first,
                            reason: format!("the record at {loc} is a {kind:?} record"),
                        });
                        expected_next = None;
                        continue;
                    }
                    Err(reason) => {
                        report.problems.push(Problem::UnreadableChunk { first, reason });
                        expected_next = None;
                        continue;
                    }
                },
            };
            let layout = chunk::layout(first, &value);
            if let Some(reason) = layout.header_error.clone() {
                report.problems.push(Problem::CorruptChunkHeader { first, reason });
            }
            expected_next = Some(layout.last_seq().map_or(first.0, |s| s.0) + 1);
            for slot in layout.slots {
                report.events += 1;
                let seq = slot.seq;
                let decoded = slot.frame.and_then(|r| frame::decode(seq, &value[r]));
                match decoded {
                    Err(reason) => report.problems.push(Problem::CorruptEvent { seq, reason }),
                    Ok((_, event)) => {
                        owed.insert((keys::RUN_INDEX, event.run.0, first));
                        if let Some(ep) = event.payload.episode_id() {
                            owed.insert((keys::EPISODE_INDEX, ep.0, first));
                        }
                        for blob in event.payload.blob_refs() {
                            referenced.entry(blob.digest).or_insert(seq);
                        }
                    }
                }
            }
            if let Some(reason) = record_crc
                && report.problems.len() == problems_before
            {
                report.problems.push(Problem::CorruptRecord {
                    what: format!("the chunk starting at event {first}"),
                    reason,
                });
            }
            if report.events - last_report >= 4096 {
                last_report = report.events;
                progress(VerifyPhase::Events, report.events, total);
            }
        }
        for (tag, index) in [(keys::RUN_INDEX, "run"), (keys::EPISODE_INDEX, "episode")] {
            for key in events.scan_prefix([tag]).keys() {
                let key = key.map_err(sled_err("scan an index"))?;
                if let Some((owner, first)) = keys::parts_of_index_key(&key)
                    && !owed.remove(&(tag, owner, first))
                {
                    report
                        .problems
                        .push(Problem::DanglingIndexEntry { first, index, owner });
                }
            }
        }
        for (tag, owner, first) in owed {
            let index = if tag == keys::RUN_INDEX { "run" } else { "episode" };
            report.problems.push(Problem::MissingIndexEntry { first, index, owner });
        }
        progress(VerifyPhase::Events, report.events, total);

        let blobs = self.blobs_tree();
        let total_blobs = blobs.len() as u64;
        let mut declared_parts: HashMap<Digest, u32> = HashMap::new();
        for item in blobs.iter() {
            let (key, value) = item.map_err(sled_err("scan the blobs"))?;
            if keys::pos_of_blob_at(&key).is_some() {
                continue;
            }
            let Some((digest, part)) = keys::parts_of_blob_key(&key) else {
                report.problems.push(Problem::StrayBlobPart {
                    digest: Digest::default(),
                    part: u32::MAX,
                });
                continue;
            };
            if let Some(loc) = Loc::decode(&value) {
                report.blobs += 1;
                referenced.remove(&digest);
                if report.blobs.is_multiple_of(256) {
                    progress(VerifyPhase::Blobs, report.blobs, total_blobs);
                }
                match self.segments().read_checked(loc) {
                    Ok((RecordKind::Blob, body, crc)) => {
                        if body.get(..32) != Some(&digest.0[..]) {
                            report.problems.push(Problem::UnreadableBlob {
                                digest,
                                reason: format!("the record at {loc} holds another blob"),
                            });
                        } else if let Err(reason) = blob::decode(&digest, &body[32..]) {
                            report.problems.push(Problem::CorruptBlob { digest, reason });
                        } else if let Some(reason) = crc {
                            report.problems.push(Problem::CorruptRecord {
                                what: format!("blob {digest}"),
                                reason,
                            });
                        }
                    }
                    Ok((kind, _, _)) => report.problems.push(Problem::UnreadableBlob {
                        digest,
                        reason: format!("the record at {loc} is a {kind:?} record"),
                    }),
                    Err(reason) => report.problems.push(Problem::UnreadableBlob { digest, reason }),
                }
                continue;
            }
            if part == 0 {
                report.blobs += 1;
                declared_parts.insert(digest, blob::parts(&value).unwrap_or(1));
                let whole = self.raw_blob(&digest)?.unwrap_or_default();
                if let Err(reason) = blob::decode(&digest, &whole) {
                    report.problems.push(Problem::CorruptBlob { digest, reason });
                }
                referenced.remove(&digest);
                if report.blobs.is_multiple_of(256) {
                    progress(VerifyPhase::Blobs, report.blobs, total_blobs);
                }
            } else if declared_parts.get(&digest).is_none_or(|&n| part >= n) {
                // Keys sort by digest then part, so part 0 came first if it exists.
                report.problems.push(Problem::StrayBlobPart { digest, part });
            }
        }
        progress(VerifyPhase::Blobs, report.blobs, total_blobs);
        let mut missing: Vec<(Seq, Digest)> = referenced.into_iter().map(|(d, s)| (s, d)).collect();
        missing.sort();
        report.problems.extend(
            missing
                .into_iter()
                .map(|(seq, digest)| Problem::MissingBlob { seq, digest }),
        );
        Ok(report)
    }
}
