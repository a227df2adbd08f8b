//! Checking the committed snapshots before anything answers from them:
//! every file the manifest names is on disk with its recorded size and
//! BLAKE3 digest, no file holds events past the manifest's `upto_seq`
//! (else the next snapshot would count them again), and the manifest
//! covers no event the log lacks (else events appended after it would never
//! reach SQL). A reader that finds any of these refuses with the file, what
//! differs and what to do, instead of answering from damaged files.
//!
//! Hashing every file at every query would cost a read of the whole
//! snapshot (40 ms for 68 MB; seconds for a million episodes); a file
//! version (path, size, modification time) whose digest matched is
//! remembered, for the life of the process and in `verified.json` beside
//! the manifest (written atomically, best effort: a read-only directory
//! only costs the hashing again), so each version is hashed once. `fathom
//! verify` always hashes.

use std::collections::HashMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use super::{Manifest, Snapshots};
use crate::{Error, Result};

/// Something the committed snapshots get wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotProblem {
    /// A file the manifest names is not on disk.
    Missing {
        /// Relative to the snapshot root.
        path: String,
    },
    /// A file has another size than the manifest recorded.
    Size {
        /// Relative to the snapshot root.
        path: String,
        /// Recorded.
        expected: u64,
        /// On disk.
        found: u64,
    },
    /// A file's bytes are not the ones the manifest recorded.
    Digest {
        /// Relative to the snapshot root.
        path: String,
        /// Recorded (hex).
        expected: String,
        /// On disk (hex).
        found: String,
    },
    /// A file holds events past the manifest's `upto_seq`.
    PastManifest {
        /// Relative to the snapshot root.
        path: String,
        /// The file's last event.
        last_seq: u64,
        /// The manifest's.
        upto_seq: u64,
    },
    /// The manifest covers events the log does not hold.
    AheadOfLog {
        /// The manifest's.
        upto_seq: u64,
        /// The log's last event.
        log_last: u64,
    },
}

impl std::fmt::Display for SnapshotProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotProblem::Missing { path } => write!(f, "{path} is missing"),
            SnapshotProblem::Size { path, expected, found } => {
                write!(f, "{path} has {found} bytes, but the manifest recorded {expected}")
            }
            SnapshotProblem::Digest { path, expected, found } => write!(
                f,
                "{path} has BLAKE3 digest {}…, but the manifest recorded {}…",
                &found[..12.min(found.len())],
                &expected[..12.min(expected.len())]
            ),
            SnapshotProblem::PastManifest {
                path,
                last_seq,
                upto_seq,
            } => write!(
                f,
                "{path} holds events up to {last_seq}, but the manifest says the snapshots cover events up to {upto_seq}"
            ),
            SnapshotProblem::AheadOfLog { upto_seq, log_last } => write!(
                f,
                "the manifest says the snapshots cover events up to {upto_seq}, but the log ends at event {log_last}"
            ),
        }
    }
}

impl SnapshotProblem {
    /// What to do about it.
    pub fn advice(&self, root: &Path) -> String {
        match self {
            SnapshotProblem::AheadOfLog { upto_seq, log_last } => format!(
                "The log lost its events after {log_last}, or {} belongs to another data directory. Keep the snapshots: they may be the only copy of events {} to {upto_seq}; 'fathom sql --snapshots-only' reads them, and 'fathom verify' checks the log",
                root.display(),
                log_last + 1
            ),
            _ => format!(
                "The snapshot files were altered, damaged or removed after they were committed. The log holds every event: run 'fathom verify' to list every problem, then move {} away and run 'fathom snapshot' to recompute the snapshots from the log",
                root.display()
            ),
        }
    }
}

/// Digests that matched, by file version, for the life of the process.
type Verified = HashMap<PathBuf, (u64, Option<SystemTime>)>;
static VERIFIED: LazyLock<Mutex<Verified>> = LazyLock::new(Mutex::default);

/// The file beside the manifest that remembers verified file versions
/// across processes: relative path → [bytes, modification time in ns].
const REMEMBERED: &str = "verified.json";

type Remembered = std::collections::BTreeMap<String, (u64, u128)>;

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// How [`Snapshots::check`] treats digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digests {
    /// Hash every file.
    Always,
    /// Hash a file version not already found right in this process.
    Remembered,
}

fn blake3_of(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|source| Error::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

impl Manifest {
    /// What is wrong with the manifest itself, without reading a file: a
    /// file past `upto_seq`, and, given the log's last event, events the
    /// log lacks.
    pub fn problems(&self, log_last: Option<u64>) -> Vec<SnapshotProblem> {
        let mut problems = Vec::new();
        if let Some(log_last) = log_last
            && self.upto_seq > log_last
        {
            problems.push(SnapshotProblem::AheadOfLog {
                upto_seq: self.upto_seq,
                log_last,
            });
        }
        for f in &self.files {
            if f.last_seq > self.upto_seq {
                problems.push(SnapshotProblem::PastManifest {
                    path: f.path.clone(),
                    last_seq: f.last_seq,
                    upto_seq: self.upto_seq,
                });
            }
        }
        problems
    }
}

impl Snapshots {
    /// What is wrong with `manifest`'s files and with the manifest itself;
    /// with `log_last`, also whether it covers events the log lacks.
    pub fn check(&self, manifest: &Manifest, log_last: Option<u64>, digests: Digests) -> Result<Vec<SnapshotProblem>> {
        let mut problems = manifest.problems(log_last);
        let remembered_path = self.root().join(REMEMBERED);
        let mut remembered: Remembered = match digests {
            Digests::Always => Remembered::new(),
            Digests::Remembered => fs::read(&remembered_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
        };
        let mut learned = false;
        for f in &manifest.files {
            let path = self.path_of(f);
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    problems.push(SnapshotProblem::Missing { path: f.path.clone() });
                    continue;
                }
                Err(source) => {
                    return Err(Error::Io {
                        action: "read",
                        path,
                        source,
                    });
                }
            };
            if meta.len() != f.bytes {
                problems.push(SnapshotProblem::Size {
                    path: f.path.clone(),
                    expected: f.bytes,
                    found: meta.len(),
                });
                continue;
            }
            let version = (meta.len(), meta.modified().ok());
            let on_disk = version.1.map(|t| (meta.len(), nanos(t)));
            if digests == Digests::Remembered
                && (VERIFIED.lock().unwrap_or_else(|e| e.into_inner()).get(&path) == Some(&version)
                    || (on_disk.is_some() && remembered.get(&f.path) == on_disk.as_ref()))
            {
                continue;
            }
            let found = blake3_of(&path)?;
            if found == f.digest {
                VERIFIED.lock().unwrap_or_else(|e| e.into_inner()).insert(path, version);
                if let Some(v) = on_disk {
                    remembered.insert(f.path.clone(), v);
                    learned = true;
                }
            } else {
                problems.push(SnapshotProblem::Digest {
                    path: f.path.clone(),
                    expected: f.digest.clone(),
                    found,
                });
            }
        }
        if learned {
            // Only the manifest's files, so the record stays its size.
            remembered.retain(|path, _| manifest.files.iter().any(|f| &f.path == path));
            let tmp = self.root().join(format!("{REMEMBERED}.{}.tmp", std::process::id()));
            let written = serde_json::to_vec(&remembered)
                .ok()
                .is_some_and(|bytes| fs::write(&tmp, bytes).is_ok())
                && fs::rename(&tmp, &remembered_path).is_ok();
            if !written {
                let _ = fs::remove_file(&tmp);
            }
        }
        Ok(problems)
    }

    /// The committed manifest, checked ([`Snapshots::check`] with
    /// remembered digests): an error naming the first problem and what to
    /// do when there is one. A snapshot committed while this runs (its
    /// replaced files deleted) is read again.
    pub fn checked_manifest(&self, log_last: Option<u64>) -> Result<Manifest> {
        let mut manifest = self.manifest()?;
        for _ in 0..3 {
            let problems = self.check(&manifest, log_last, Digests::Remembered)?;
            let Some(first) = problems.first() else {
                return Ok(manifest);
            };
            let now = self.manifest()?;
            if now.generation == manifest.generation {
                return Err(Error::Snapshot(format!(
                    "the snapshots in {} do not match their manifest: {first}{}. {}",
                    self.root().display(),
                    match problems.len() {
                        1 => String::new(),
                        n => format!(" (and {} more problem(s))", n - 1),
                    },
                    first.advice(self.root())
                )));
            }
            manifest = now;
        }
        Ok(manifest)
    }
}
