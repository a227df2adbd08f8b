//! Full verification of a data directory: every frame, every index entry,
//! every blob. `fathom verify` is a thin wrapper over [`Store::verify`].

use std::collections::HashMap;

use fathom_core::{Digest, Seq};

use crate::blob::{self, BlobError};
use crate::frame::{self, FrameError};
use crate::keys;
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
    /// Sequence numbers skip: `after` is followed by `next`.
    Gap {
        /// The last number before the gap (0 at the start).
        after: Seq,
        /// The next number present.
        next: Seq,
    },
    /// An event is missing from the run or episode index.
    MissingIndexEntry {
        /// The event.
        seq: Seq,
        /// `run` or `episode`.
        index: &'static str,
    },
    /// An index entry names an event that is not in the log.
    DanglingIndexEntry {
        /// The sequence number named.
        seq: Seq,
        /// `run` or `episode`.
        index: &'static str,
    },
    /// A blob does not match its digest.
    CorruptBlob {
        /// The blob's key.
        digest: Digest,
        /// What is wrong.
        reason: BlobError,
    },
    /// An event refers to a blob that is not stored.
    MissingBlob {
        /// The first event that refers to it.
        seq: Seq,
        /// The missing blob.
        digest: Digest,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::CorruptEvent { seq, reason } => write!(f, "event {seq} is corrupt: {reason}"),
            Problem::Gap { after, next } => {
                write!(f, "sequence numbers jump from {after} to {next}")
            }
            Problem::MissingIndexEntry { seq, index } => {
                write!(f, "event {seq} is missing from the {index} index")
            }
            Problem::DanglingIndexEntry { seq, index } => {
                write!(
                    f,
                    "the {index} index names event {seq}, which the log does not hold"
                )
            }
            Problem::CorruptBlob { digest, reason } => {
                write!(f, "blob {digest} is corrupt: {reason}")
            }
            Problem::MissingBlob { seq, digest } => {
                write!(
                    f,
                    "event {seq} refers to blob {digest}, which is not stored"
                )
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
                Problem::CorruptEvent { seq, .. }
                | Problem::MissingIndexEntry { seq, .. }
                | Problem::DanglingIndexEntry { seq, .. }
                | Problem::MissingBlob { seq, .. } => Some(*seq),
                Problem::Gap { after, .. } => Some(Seq(after.0 + 1)),
                Problem::CorruptBlob { .. } => None,
            })
            .min()
    }
}

impl Store {
    /// Checks every frame (checksum, structure, sequence number), the
    /// indexes in both directions, and every blob (decompressed and
    /// re-hashed). `progress` is called with the phase, items done and items
    /// expected.
    pub fn verify(&self, progress: &mut dyn FnMut(VerifyPhase, u64, u64)) -> Result<VerifyReport> {
        let events = self.events_tree();
        let mut report = VerifyReport::default();
        let total = self.last_seq().0;
        let mut expected_next = 1u64;
        let mut referenced: HashMap<Digest, Seq> = HashMap::new();
        let lo = keys::event(Seq(0));
        let hi = keys::event(Seq(u64::MAX));
        for item in events.range(lo..=hi) {
            let (key, value) = item.map_err(sled_err("scan the log"))?;
            let Some(seq) = keys::seq_of_event_key(&key) else {
                continue;
            };
            if seq.0 != expected_next {
                report.problems.push(Problem::Gap {
                    after: Seq(expected_next - 1),
                    next: seq,
                });
            }
            expected_next = seq.0 + 1;
            report.events += 1;
            match frame::decode(seq, &value) {
                Err(reason) => report.problems.push(Problem::CorruptEvent { seq, reason }),
                Ok((_, event)) => {
                    let has = |k: &[u8]| events.contains_key(k).map_err(sled_err("read an index"));
                    if !has(&keys::run_index(event.run, seq))? {
                        report
                            .problems
                            .push(Problem::MissingIndexEntry { seq, index: "run" });
                    }
                    if let Some(ep) = event.payload.episode_id()
                        && !has(&keys::episode_index(ep, seq))?
                    {
                        report.problems.push(Problem::MissingIndexEntry {
                            seq,
                            index: "episode",
                        });
                    }
                    for blob in event.payload.blob_refs() {
                        referenced.entry(blob.digest).or_insert(seq);
                    }
                }
            }
            if report.events.is_multiple_of(4096) {
                progress(VerifyPhase::Events, report.events, total);
            }
        }
        for (tag, index) in [(keys::RUN_INDEX, "run"), (keys::EPISODE_INDEX, "episode")] {
            for key in events.scan_prefix([tag]).keys() {
                let key = key.map_err(sled_err("scan an index"))?;
                if let Some((_, seq)) = keys::parts_of_index_key(&key)
                    && !events
                        .contains_key(keys::event(seq))
                        .map_err(sled_err("read an event"))?
                {
                    report
                        .problems
                        .push(Problem::DanglingIndexEntry { seq, index });
                }
            }
        }
        progress(VerifyPhase::Events, report.events, total);

        let blobs = self.blobs_tree();
        let total_blobs = blobs.len() as u64;
        for item in blobs.iter() {
            let (key, value) = item.map_err(sled_err("scan the blobs"))?;
            report.blobs += 1;
            let Ok(raw) = <[u8; 32]>::try_from(key.as_ref()) else {
                report.problems.push(Problem::CorruptBlob {
                    digest: Digest::default(),
                    reason: BlobError::TooShort(key.len()),
                });
                continue;
            };
            let digest = Digest(raw);
            if let Err(reason) = blob::decode(&digest, &value) {
                report
                    .problems
                    .push(Problem::CorruptBlob { digest, reason });
            }
            referenced.remove(&digest);
            if report.blobs.is_multiple_of(256) {
                progress(VerifyPhase::Blobs, report.blobs, total_blobs);
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
