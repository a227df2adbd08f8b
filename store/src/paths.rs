//! Where things live inside a data directory: the one place paths are built.
//!
//! ```text
//! <data>/
//!   LOCK          exclusive lock held by the writing process; names it
//!   log/          the sled database: locations, indexes, counters
//!   segments/     the log's bytes: chunks of frames, blob values
//!   snapshots/    Parquet snapshots and their manifest (see `snapshot`)
//! ```
//!
//! Later parts of fathom add `checkpoints/` here; they must take their paths
//! from this module too.

use std::path::{Path, PathBuf};

/// A fathom data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (not created until the store opens it).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lock file the writer holds.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("LOCK")
    }

    /// The sled database holding the log and the blob tree.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }

    /// The segment files holding the log's bytes.
    pub fn segments_dir(&self) -> PathBuf {
        self.root.join("segments")
    }

    /// The Parquet snapshots and their manifest.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
}
