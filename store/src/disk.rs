//! The file I/O under the segment files, behind a small trait: the real
//! disk, and a simulated one that crashes, tears, flips bits and fails on
//! demand, for the deterministic storage simulation
//! (`store/tests/it/simulation.rs`).
//!
//! Only the segments go through [`Disk`]: sled does its own I/O. The
//! simulation models sled's side of a crash by reopening a copy of sled's
//! files (see the simulation test).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Error, ErrorKind, Result};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fathom_core::SeededRng;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// To read only.
    Read,
    /// To read and write an existing file.
    ReadWrite,
    /// To read and write a new file; fails if it exists.
    CreateNew,
}

/// A file system, as the segments use it.
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// The names of the entries of `dir` (an absent directory has none).
    fn list(&self, dir: &Path) -> Result<Vec<String>>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> Result<Arc<dyn DiskFile>>;
    /// Renames a file.
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> Result<()>;
    /// Makes the directory's entries (created and renamed files) durable.
    fn sync_dir(&self, dir: &Path) -> Result<()>;
}

/// An open file.
pub trait DiskFile: Send + Sync + std::fmt::Debug {
    /// Fills `buf` from `offset`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// fdatasync(2).
    fn sync_data(&self) -> Result<()>;
    /// The file's length.
    fn len(&self) -> Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Cuts (or extends) the file to `len` bytes.
    fn set_len(&self, len: u64) -> Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

#[derive(Debug)]
struct RealFile(File);

impl Disk for RealDisk {
    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect(),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn open(&self, path: &Path, mode: OpenMode) -> Result<Arc<dyn DiskFile>> {
        let mut o = OpenOptions::new();
        o.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                o.write(true);
            }
            OpenMode::CreateNew => {
                o.write(true).create_new(true);
            }
        }
        Ok(Arc::new(RealFile(o.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to)
    }

    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl DiskFile for RealFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }

    fn sync_data(&self) -> Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> Result<()> {
        self.0.set_len(len)
    }
}

/// A fault the simulated disk injects on a later call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next write fails with ENOSPC, having written a random prefix of
    /// its bytes (as a real short write before a full disk does).
    NoSpaceOnWrite,
    /// The next fdatasync fails with EIO, and the kernel drops the file's
    /// unsynced pages (as Linux does: they are marked clean).
    IoErrorOnSync,
}

/// How a crash treats what was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    LoseUnsynced,
    /// Unsynced writes survive in order up to a random one, which is torn
    /// at a random byte; the rest are lost.
    TearLast,
    /// Like `TearLast`, and some bits of the surviving unsynced bytes flip.
    TearAndFlip,
}

#[derive(Debug, Default, Clone)]
struct SimFileState {
    /// What reads see (the page cache).
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Unsynced writes, in order: (offset, bytes).
    unsynced: Vec<(u64, Vec<u8>)>,
    /// The file's length was changed since the last sync.
    resized: bool,
}

#[derive(Debug, Default)]
struct SimState {
    files: BTreeMap<PathBuf, SimFileState>,
    /// Paths whose directory entry is not durable yet: created (`None`) or
    /// renamed from the given path.
    unsynced_entries: HashMap<PathBuf, Option<PathBuf>>,
    dirs: std::collections::BTreeSet<PathBuf>,
    faults: Vec<Fault>,
    rng: Option<SeededRng>,
    writes: u64,
    syncs: u64,
}

/// An in-memory disk with a page cache that a crash can lose, tear or
/// corrupt, and faults on demand. Deterministic for a given seed.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

#[derive(Debug)]
struct SimFile {
    path: PathBuf,
    state: Arc<Mutex<SimState>>,
    writable: bool,
}

impl SimDisk {
    /// An empty disk whose random choices (short-write lengths) follow `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                rng: Some(SeededRng::new(seed)),
                ..SimState::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a fault for a later call.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Writes and syncs done so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.writes, s.syncs)
    }

    /// A power failure: every file falls back to what was durable, plus
    /// what `mode` lets survive of the unsynced writes. Files and renames
    /// whose directory was not synced are undone.
    pub fn crash(&self, mode: CrashMode, rng: &mut SeededRng) {
        let mut s = self.lock();
        s.faults.clear();
        let entries = std::mem::take(&mut s.unsynced_entries);
        for (path, from) in entries {
            match from {
                None => {
                    s.files.remove(&path);
                }
                Some(from) => {
                    if let Some(f) = s.files.remove(&path) {
                        s.files.insert(from, f);
                    }
                }
            }
        }
        for f in s.files.values_mut() {
            let mut content = f.durable.clone();
            let writes = std::mem::take(&mut f.unsynced);
            if mode != CrashMode::LoseUnsynced && !writes.is_empty() {
                let keep = rng.below(writes.len() as u64 + 1) as usize;
                for (i, (offset, bytes)) in writes.iter().enumerate().take((keep + 1).min(writes.len())) {
                    let n = if i == keep {
                        rng.below(bytes.len() as u64 + 1) as usize
                    } else {
                        bytes.len()
                    };
                    write_into(&mut content, *offset, &bytes[..n]);
                    if mode == CrashMode::TearAndFlip && n > 0 && rng.below(2) == 0 {
                        let at = *offset as usize + rng.below(n as u64) as usize;
                        content[at] ^= 1 << rng.below(8);
                    }
                }
            }
            f.current = content.clone();
            f.durable = content;
            f.resized = false;
        }
    }

    /// The current bytes of a file (for tests that damage it).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        self.lock().files.get(path).map(|f| f.current.clone())
    }

    /// Replaces a file's bytes, durably (bit rot, an outside truncation).
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) {
        let mut s = self.lock();
        let f = s.files.entry(path.to_path_buf()).or_default();
        f.current = bytes.clone();
        f.durable = bytes;
        f.unsynced.clear();
    }
}

fn write_into(content: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[offset as usize..end].copy_from_slice(bytes);
}

fn not_found(path: &Path) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("{} does not exist (simulated disk)", path.display()),
    )
}

impl Disk for SimDisk {
    fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let s = self.lock();
        Ok(s.files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> Result<Arc<dyn DiskFile>> {
        let mut s = self.lock();
        let exists = s.files.contains_key(path);
        match mode {
            OpenMode::CreateNew if exists => {
                return Err(Error::new(ErrorKind::AlreadyExists, "file exists (simulated disk)"));
            }
            OpenMode::CreateNew => {
                s.files.insert(path.to_path_buf(), SimFileState::default());
                s.unsynced_entries.insert(path.to_path_buf(), None);
            }
            _ if !exists => return Err(not_found(path)),
            _ => {}
        }
        Ok(Arc::new(SimFile {
            path: path.to_path_buf(),
            state: self.state.clone(),
            writable: mode != OpenMode::Read,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let mut s = self.lock();
        let f = s.files.remove(from).ok_or_else(|| not_found(from))?;
        s.files.insert(to.to_path_buf(), f);
        let origin = match s.unsynced_entries.remove(from) {
            Some(None) => None,
            Some(Some(older)) => Some(older),
            None => Some(from.to_path_buf()),
        };
        s.unsynced_entries.insert(to.to_path_buf(), origin);
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        self.lock().dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.lock().unsynced_entries.retain(|p, _| p.parent() != Some(dir));
        Ok(())
    }
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DiskFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let s = self.lock();
        let f = s.files.get(&self.path).ok_or_else(|| not_found(&self.path))?;
        let end = offset as usize + buf.len();
        if end > f.current.len() {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "read past the end (simulated disk)",
            ));
        }
        buf.copy_from_slice(&f.current[offset as usize..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "opened to read (simulated disk)",
            ));
        }
        let mut s = self.lock();
        s.writes += 1;
        let mut n = buf.len();
        let mut fail = None;
        if let Some(i) = s.faults.iter().position(|f| *f == Fault::NoSpaceOnWrite) {
            s.faults.remove(i);
            n = s.rng.as_mut().map_or(0, |r| r.below(buf.len() as u64 + 1) as usize);
            fail = Some(Error::new(
                ErrorKind::StorageFull,
                "no space left on device (simulated disk)",
            ));
        }
        let f = s.files.get_mut(&self.path).ok_or_else(|| not_found(&self.path))?;
        write_into(&mut f.current, offset, &buf[..n]);
        f.unsynced.push((offset, buf[..n].to_vec()));
        match fail {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn sync_data(&self) -> Result<()> {
        let mut s = self.lock();
        s.syncs += 1;
        let fail = s
            .faults
            .iter()
            .position(|f| *f == Fault::IoErrorOnSync)
            .map(|i| s.faults.remove(i));
        let f = s.files.get_mut(&self.path).ok_or_else(|| not_found(&self.path))?;
        if fail.is_some() {
            // Linux marks the failed pages clean: the page cache now shows
            // what the disk has.
            f.current = f.durable.clone();
            f.unsynced.clear();
            f.resized = false;
            return Err(Error::other("input/output error (simulated disk)"));
        }
        f.durable = f.current.clone();
        f.unsynced.clear();
        f.resized = false;
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        let s = self.lock();
        Ok(s.files
            .get(&self.path)
            .ok_or_else(|| not_found(&self.path))?
            .current
            .len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        let mut s = self.lock();
        let f = s.files.get_mut(&self.path).ok_or_else(|| not_found(&self.path))?;
        f.current.resize(len as usize, 0);
        // A truncation is made durable with the next sync; until then a
        // crash brings back the durable bytes.
        f.unsynced.retain(|(o, _)| *o < len);
        f.resized = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loses_what_was_not_synced() {
        let disk = SimDisk::new(1);
        let p = Path::new("/d/a");
        let f = disk.open(p, OpenMode::CreateNew).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        disk.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(b" world", 5).unwrap();
        assert_eq!(f.len().unwrap(), 11);
        disk.crash(CrashMode::LoseUnsynced, &mut SeededRng::new(2));
        assert_eq!(disk.read_file(p).unwrap(), b"hello");
        // A file whose directory entry was never synced is gone.
        let q = Path::new("/d/b");
        disk.open(q, OpenMode::CreateNew).unwrap().sync_data().unwrap();
        disk.crash(CrashMode::LoseUnsynced, &mut SeededRng::new(2));
        assert!(disk.read_file(q).is_none());
    }

    #[test]
    fn faults_fire_once_and_say_what_they_are() {
        let disk = SimDisk::new(3);
        let f = disk.open(Path::new("/d/a"), OpenMode::CreateNew).unwrap();
        disk.inject(Fault::NoSpaceOnWrite);
        let e = f.write_all_at(&[7u8; 100], 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StorageFull);
        f.write_all_at(&[7u8; 100], 0).unwrap();
        disk.inject(Fault::IoErrorOnSync);
        assert!(f.sync_data().is_err());
        assert_eq!(f.len().unwrap(), 0, "the failed pages were dropped");
        f.write_all_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
    }
}
