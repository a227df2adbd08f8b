//! fathom's embedded event log and blob store.
//!
//! Every rollout step, web response and gradient update is appended here as a
//! framed, checksummed [`Event`](fathom_core::Event) (see [`frame`]); large
//! payloads go to a content-addressed blob tree (see [`blob`]). The log is a
//! sled database inside the data directory (see [`paths`]); one process, the
//! writer, holds it (see [`lock`]). `store/README.md` is the on-disk format
//! specification.
//!
//! Neighbours: `core` defines what an event is; `replay`, `trainer` and the
//! CLI append through [`Store`]; `query` and `web` only read.
//!
//! Question sets in verl's Parquet layout are read and written here too
//! ([`verl`]).
//!
//! **Architecture Invariant:** nothing outside this crate knows sled, rkyv
//! framing or Parquet writing. Other crates see [`Store`], events and
//! [`BlobRef`](fathom_core::BlobRef)s.

pub mod blob;
mod blobs;
pub mod chunk;
pub mod disk;
mod flush;
pub mod frame;
mod index;
mod keys;
pub mod lock;
pub mod paths;
mod read;
mod reads;
mod recover;
pub mod remote;
mod scan;
pub mod segment;
pub mod snapshot;
mod stats;
mod store;
pub mod synthetic;
pub mod tail;
mod verify;
pub mod verl;
pub mod workload;

use std::path::PathBuf;

use fathom_core::{Digest, EventKind, Seq};

pub use paths::DataDir;
pub use read::LogRead;
pub use stats::{KindStats, RunStats, Stats};
pub use store::{Durability, MAX_BLOB_BYTES, MAX_EVENT_BYTES, Options, RecoveryReport, SeqRange, Store};
pub use verify::{Problem, VerifyPhase, VerifyReport};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process is the writer.
    #[error(
        "data directory {} is in use by another fathom process ({holder}); stop that process, or pass --data (or FATHOM_DATA) with another directory",
        dir.display()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// A file-system operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// sled failed.
    #[error("the log database failed while trying to {action}: {source}")]
    Sled {
        /// What we were doing.
        action: &'static str,
        /// sled's error.
        source: sled::Error,
    },
    /// A stored event does not decode.
    #[error("event {seq} is corrupt: {reason}; run 'fathom verify' for a full report")]
    CorruptEvent {
        /// Its sequence number.
        seq: Seq,
        /// What is wrong with it.
        reason: frame::FrameError,
    },
    /// A stored blob does not match its digest.
    #[error("blob {digest} is corrupt: {reason}; run 'fathom verify' for a full report")]
    CorruptBlob {
        /// Its key.
        digest: Digest,
        /// What is wrong with it.
        reason: blob::BlobError,
    },
    /// An event is larger than one event may be in the log.
    #[error(
        "a {kind} event of {len} bytes is larger than the {limit} bytes one event may take in the log; large values (page bodies, token ids) belong in blobs, and a text this long (a question, an answer) must be shortened"
    )]
    TooLarge {
        /// The event's kind.
        kind: EventKind,
        /// Its encoded size.
        len: usize,
        /// The most it may be.
        limit: usize,
    },
    /// The disk holding the data directory is full.
    #[error(
        "the disk holding the data directory {} is full ({} free); the log is consistent and took nothing of the failed write. Free space (or move --data elsewhere) and write again",
        dir.display(), human_bytes(*free)
    )]
    DiskFull {
        /// The data directory.
        dir: PathBuf,
        /// Free bytes when the write failed.
        free: u64,
    },
    /// A blob is larger than the log takes.
    #[error(
        "a blob of {len} bytes is larger than the {limit} bytes the log takes for one blob; split the value before storing it"
    )]
    BlobTooLarge {
        /// Its size.
        len: usize,
        /// The most it may be.
        limit: usize,
    },
    /// The segment files do not hold what sled's index says (the message
    /// names the record and what is wrong).
    #[error("{0}")]
    Segment(String),
    /// Recovery found more damage at the tail than it will cut on its own.
    #[error(
        "the last {count} events of the log in {} are all corrupt; recovery stops rather than cut that much. Run 'fathom verify' to see the damage",
        dir.display()
    )]
    TooMuchDamage {
        /// The data directory.
        dir: PathBuf,
        /// How many corrupt frames were found before giving up.
        count: usize,
    },
    /// Object storage refused or failed (snapshots shipped or read remotely).
    #[error("{0}")]
    Remote(String),
    /// The snapshots are damaged or disagree with their manifest or the
    /// log (the message says what, and what to do).
    #[error("{0}")]
    Snapshot(String),
    /// A broken invariant: a bug in fathom, not bad input.
    #[error("internal error (a bug in fathom, please report it): {0}")]
    Internal(String),
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

pub(crate) fn sled_err(action: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |source| Error::Sled { action, source }
}
