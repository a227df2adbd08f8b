//! Parquet snapshots of the log: one directory of files per table, and a
//! manifest naming exactly the committed files.
//!
//! ```text
//! <data>/snapshots/
//!   manifest.json                  the committed state (see [`Manifest`])
//!   _tmp/                          files being written; emptied at every start
//!   episodes/part-<first>-<last>.parquet
//!   turns/part-…                   one directory per table (see [`tables`])
//! ```
//!
//! A snapshot takes the durable events after the manifest's `upto_seq` in
//! windows; for each window it writes one file per table into `_tmp`,
//! fsyncs it, renames it into its table directory, then commits a new
//! manifest (write, fsync, rename) that names the files and the projector's
//! [`Carry`], and finally records `snapshot_committed` events in the log. A
//! crash before the manifest's rename leaves only files the manifest does not
//! name, which the next snapshot deletes before it starts; no row is ever
//! counted twice because every reader goes by the manifest. Small files are
//! compacted into larger ones the same way (the manifest swaps the old files
//! for the new one in one rename, then the old files are deleted).

mod check;
pub mod rebuild;
pub mod tables;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use fathom_core::event::SnapshotCommitted;
use fathom_core::{Clock, Digest, Event, IdKind, RunId, Seq, SnapshotId, SystemClock};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};

pub use check::{Digests, SnapshotProblem};
pub use tables::{Carry, ColumnInfo, Projector, TableInfo};

use crate::{Durability, Error, Result, Store};

/// The manifest's format version.
pub const MANIFEST_FORMAT: u32 = 1;

/// One committed Parquet file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The table.
    pub table: String,
    /// Path relative to the snapshot root (`episodes/part-….parquet`).
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// First sequence number of the events it covers.
    pub first_seq: u64,
    /// Last sequence number of the events it covers.
    pub last_seq: u64,
    /// BLAKE3 of the file, hex.
    pub digest: String,
}

/// The committed state of the snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Increases by one at every commit.
    pub generation: u64,
    /// Every event with a sequence number up to this one is in the files.
    pub upto_seq: u64,
    /// The committed files, in commit order.
    pub files: Vec<FileEntry>,
    /// The projector's state after `upto_seq`.
    pub carry: Carry,
}

impl Manifest {
    /// The files of one table.
    pub fn files_of<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a FileEntry> + 'a {
        self.files.iter().filter(move |f| f.table == table)
    }
}

/// Tuning of snapshot files.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Events per window (one file per table per window).
    pub window_events: u64,
    /// A table with at least this many small files gets them compacted.
    pub compact_min_files: usize,
    /// Files smaller than this are small.
    pub small_file_bytes: u64,
    /// Compaction stops adding files to a merged file past this size.
    pub target_file_bytes: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level of the Parquet pages.
    pub zstd_level: i32,
    /// Where committed snapshots (and the checkpoints directory) are
    /// shipped after each snapshot (`--snapshots URL`); `None` keeps them local.
    pub ship: Option<Arc<crate::remote::Location>>,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            window_events: 200_000,
            compact_min_files: 8,
            small_file_bytes: 16 << 20,
            target_file_bytes: 128 << 20,
            row_group_rows: 128 * 1024,
            zstd_level: 3,
            ship: None,
        }
    }
}

/// What one snapshot did.
#[derive(Debug, Clone, Default)]
pub struct SnapshotReport {
    /// The manifest's `upto_seq` before.
    pub from_seq: u64,
    /// And after.
    pub upto_seq: u64,
    /// Events read from the log.
    pub events: u64,
    /// Files written (including compacted ones).
    pub files_written: usize,
    /// Bytes written.
    pub bytes_written: u64,
    /// Rows written per table (not counting compaction's rewrites).
    pub rows: BTreeMap<String, u64>,
    /// Compactions done: (table, files merged).
    pub compactions: Vec<(String, usize)>,
    /// Files left from an interrupted snapshot and deleted.
    pub orphans_removed: usize,
    /// What shipping to the remote location did, when one is set.
    pub shipped: Option<crate::remote::ShipReport>,
}

/// The snapshot root of a data directory, for readers and the writer.
#[derive(Debug, Clone)]
pub struct Snapshots {
    root: PathBuf,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync directory", dir))
}

impl Snapshots {
    /// The snapshots under `root` (normally `<data>/snapshots`).
    pub fn new(root: impl Into<PathBuf>) -> Snapshots {
        Snapshots { root: root.into() }
    }

    /// The snapshot root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn manifest_path(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("_tmp")
    }

    /// The absolute path of a committed file.
    pub fn path_of(&self, entry: &FileEntry) -> PathBuf {
        self.root.join(&entry.path)
    }

    /// The committed manifest; an empty one when nothing was committed yet.
    pub fn manifest(&self) -> Result<Manifest> {
        let path = self.manifest_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Manifest {
                    format: MANIFEST_FORMAT,
                    ..Manifest::default()
                });
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::Snapshot(format!(
                "snapshot manifest {} does not parse ({e}); move it away and run 'fathom snapshot' to rebuild the snapshots from the log",
                path.display()
            ))
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(Error::Snapshot(format!(
                "snapshot manifest {} has format {} but this fathom reads format {MANIFEST_FORMAT}; use a matching fathom or rebuild the snapshots",
                path.display(),
                m.format
            )));
        }
        Ok(m)
    }

    fn commit_manifest(&self, m: &Manifest) -> Result<()> {
        let tmp = self.tmp_dir().join("manifest.json");
        let text = serde_json::to_vec_pretty(m).expect("manifest serialises");
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&text).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        let path = self.manifest_path();
        fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        fsync_dir(&self.root)
    }

    /// Deletes what an interrupted snapshot left: `_tmp` and any file in a
    /// table directory the manifest does not name.
    fn remove_orphans(&self, m: &Manifest) -> Result<usize> {
        let mut removed = 0;
        let tmp = self.tmp_dir();
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io("clear", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
        let named: std::collections::HashSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        for t in tables::all() {
            let dir = self.root.join(t.name);
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let rel = format!("{}/{}", t.name, entry.file_name().to_string_lossy());
                if !named.contains(rel.as_str()) {
                    fs::remove_file(entry.path()).map_err(io("remove orphan", &entry.path()))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Writes `batch` sorted into `_tmp`, fsyncs it and renames it into its
    /// table directory; returns its entry (not yet committed).
    fn write_file(
        &self,
        table: &str,
        batch: &RecordBatch,
        range: (u64, u64),
        opts: &SnapshotOptions,
    ) -> Result<FileEntry> {
        let info = tables::info(table).ok_or_else(|| Error::Internal(format!("unknown table {table}")))?;
        let sorted = sort_batch(batch, info.sort)?;
        let name = format!("part-{:016}-{:016}.parquet", range.0, range.1);
        let tmp = self.tmp_dir().join(format!("{table}-{name}"));
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(opts.zstd_level).unwrap_or_default(),
            ))
            .set_max_row_group_row_count(Some(opts.row_group_rows))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_created_by(concat!("fathom ", env!("CARGO_PKG_VERSION")).to_string())
            .build();
        let mut writer = ArrowWriter::try_new(file, sorted.schema(), Some(props))
            .map_err(|e| Error::Internal(format!("starting Parquet file for {table}: {e}")))?;
        writer
            .write(&sorted)
            .map_err(|e| Error::Internal(format!("writing Parquet file for {table}: {e}")))?;
        let file = writer
            .into_inner()
            .map_err(|e| Error::Internal(format!("finishing Parquet file for {table}: {e}")))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        drop(file);
        let bytes_on_disk = fs::read(&tmp).map_err(io("read back", &tmp))?;
        let digest = Digest(*blake3::hash(&bytes_on_disk).as_bytes());
        let dir = self.root.join(table);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let dest = dir.join(&name);
        fs::rename(&tmp, &dest).map_err(io("rename into place", &dest))?;
        fsync_dir(&dir)?;
        Ok(FileEntry {
            table: table.to_string(),
            path: format!("{table}/{name}"),
            rows: sorted.num_rows() as u64,
            bytes: bytes_on_disk.len() as u64,
            first_seq: range.0,
            last_seq: range.1,
            digest: digest.to_hex(),
        })
    }

    /// Reads one committed file back.
    pub fn read_file(&self, entry: &FileEntry) -> Result<Vec<RecordBatch>> {
        let path = self.path_of(entry);
        let f = File::open(&path).map_err(io("open", &path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)
            .and_then(|b| b.build())
            .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))?;
        reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))
    }
}

/// Sorts a batch by the named columns (ascending, nulls first).
fn sort_batch(batch: &RecordBatch, by: &[&str]) -> Result<RecordBatch> {
    if batch.num_rows() <= 1 {
        return Ok(batch.clone());
    }
    let columns = by
        .iter()
        .map(|name| {
            let values = batch
                .column_by_name(name)
                .ok_or_else(|| Error::Internal(format!("sort column {name} missing")))?
                .clone();
            Ok(arrow_ord::sort::SortColumn { values, options: None })
        })
        .collect::<Result<Vec<_>>>()?;
    let indices =
        arrow_ord::sort::lexsort_to_indices(&columns, None).map_err(|e| Error::Internal(format!("sorting: {e}")))?;
    arrow_select::take::take_record_batch(batch, &indices).map_err(|e| Error::Internal(format!("sorting: {e}")))
}

impl Store {
    /// The snapshots of this data directory.
    pub fn snapshots(&self) -> Snapshots {
        Snapshots::new(self.dir().snapshots_dir())
    }

    /// Brings the snapshots up to the log's last durable event, then
    /// compacts small files. Safe to kill at any moment (see the module
    /// documentation); one snapshot runs at a time per store.
    pub fn snapshot(&self, opts: &SnapshotOptions) -> Result<SnapshotReport> {
        self.snapshot_with(opts, &mut |_| {})
    }

    /// [`Store::snapshot`], calling `progress` with the events done so far.
    pub fn snapshot_with(&self, opts: &SnapshotOptions, progress: &mut dyn FnMut(u64)) -> Result<SnapshotReport> {
        let _one_at_a_time = self.snapshot_guard();
        let snaps = self.snapshots();
        fs::create_dir_all(snaps.root()).map_err(io("create", snaps.root()))?;
        let mut manifest = snaps.manifest()?;
        let mut report = SnapshotReport {
            from_seq: manifest.upto_seq,
            upto_seq: manifest.upto_seq,
            orphans_removed: snaps.remove_orphans(&manifest)?,
            ..SnapshotReport::default()
        };
        // Only what is durable goes into a snapshot: a crash may lose the
        // relaxed tail, and a snapshot must never hold an event the log lost.
        self.flush()?;
        let last = self.last_seq().0;
        if let Some(problem) = manifest.problems(Some(last)).first() {
            return Err(Error::Snapshot(format!(
                "nothing can be added to the snapshots in {}: {problem}. {}",
                snaps.root().display(),
                problem.advice(snaps.root())
            )));
        }
        let clock = SystemClock;
        let mut committed: Vec<FileEntry> = Vec::new();
        let window = opts.window_events.max(1);
        while manifest.upto_seq < last {
            let first = manifest.upto_seq + 1;
            let end = last.min(manifest.upto_seq + window);
            let mut projector = Projector::new(&manifest.carry);
            for rec in self.range(Seq(first)..=Seq(end)) {
                projector.push(&rec?);
            }
            let mut next = manifest.clone();
            next.generation += 1;
            next.upto_seq = end;
            next.carry = projector.carry();
            let mut replaced: Vec<FileEntry> = Vec::new();
            for (table, batch) in projector.take_batches() {
                let entry = if table == "runs" {
                    // The runs table is small and rewritten whole.
                    replaced.extend(next.files.iter().filter(|f| f.table == "runs").cloned());
                    next.files.retain(|f| f.table != "runs");
                    snaps.write_file(table, &batch, (1, end), opts)?
                } else {
                    *report.rows.entry(table.to_string()).or_default() += batch.num_rows() as u64;
                    snaps.write_file(table, &batch, (first, end), opts)?
                };
                report.files_written += 1;
                report.bytes_written += entry.bytes;
                committed.push(entry.clone());
                next.files.push(entry);
            }
            snaps.commit_manifest(&next)?;
            for old in &replaced {
                if !next.files.iter().any(|f| f.path == old.path) {
                    let _ = fs::remove_file(snaps.path_of(old));
                }
            }
            report.events += end + 1 - first;
            manifest = next;
            report.upto_seq = manifest.upto_seq;
            progress(report.events);
        }
        for (table, merged, entry) in self.compact(&snaps, &mut manifest, opts)? {
            report.compactions.push((table, merged));
            report.files_written += 1;
            report.bytes_written += entry.bytes;
            committed.push(entry);
        }
        if !committed.is_empty() {
            let mut events = Vec::with_capacity(committed.len());
            for f in &committed {
                events.push(Event::new(
                    RunId(0),
                    clock.now(),
                    SnapshotCommitted {
                        snapshot_id: SnapshotId(self.next_id(IdKind::Snapshot)?),
                        table: f.table.clone(),
                        path: f.path.clone(),
                        rows: f.rows,
                        bytes: f.bytes,
                        first_seq: Seq(f.first_seq),
                        last_seq: Seq(f.last_seq),
                        digest: Digest::from_hex(&f.digest).unwrap_or(Digest([0; 32])),
                    },
                ));
            }
            self.append_with(&events, Durability::Relaxed)?;
        }
        if let Some(to) = &opts.ship {
            let checkpoints = self.dir().root().join("checkpoints");
            report.shipped = Some(crate::remote::ship_blocking(to, &snaps, Some(&checkpoints))?);
        }
        Ok(report)
    }

    /// Merges each table's small files, oldest first, into files of about
    /// the target size.
    fn compact(
        &self,
        snaps: &Snapshots,
        manifest: &mut Manifest,
        opts: &SnapshotOptions,
    ) -> Result<Vec<(String, usize, FileEntry)>> {
        let mut done = Vec::new();
        for t in tables::all() {
            if t.name == "runs" {
                continue;
            }
            let small: Vec<FileEntry> = manifest
                .files_of(t.name)
                .filter(|f| f.bytes < opts.small_file_bytes)
                .cloned()
                .collect();
            if small.len() < opts.compact_min_files.max(2) {
                continue;
            }
            // Groups of consecutive small files up to the target size.
            let mut groups: Vec<Vec<FileEntry>> = vec![Vec::new()];
            let mut size = 0;
            for f in small {
                if size + f.bytes > opts.target_file_bytes && !groups.last().is_some_and(Vec::is_empty) {
                    groups.push(Vec::new());
                    size = 0;
                }
                size += f.bytes;
                groups.last_mut().expect("never empty").push(f);
            }
            for group in groups.into_iter().filter(|g| g.len() >= 2) {
                let mut batches = Vec::new();
                for f in &group {
                    batches.extend(snaps.read_file(f)?);
                }
                let merged = arrow_select::concat::concat_batches(&t.schema, &batches)
                    .map_err(|e| Error::Internal(format!("compacting {}: {e}", t.name)))?;
                let first = group.iter().map(|f| f.first_seq).min().unwrap_or(0);
                let last = group.iter().map(|f| f.last_seq).max().unwrap_or(0);
                let entry = snaps.write_file(t.name, &merged, (first, last), opts)?;
                let mut next = manifest.clone();
                next.generation += 1;
                let gone: std::collections::HashSet<&str> = group.iter().map(|f| f.path.as_str()).collect();
                let at = next
                    .files
                    .iter()
                    .position(|f| gone.contains(f.path.as_str()))
                    .unwrap_or(0);
                next.files.retain(|f| !gone.contains(f.path.as_str()));
                next.files.insert(at.min(next.files.len()), entry.clone());
                snaps.commit_manifest(&next)?;
                for f in &group {
                    if f.path != entry.path {
                        let _ = fs::remove_file(snaps.path_of(f));
                    }
                }
                *manifest = next;
                done.push((t.name.to_string(), group.len(), entry));
            }
        }
        Ok(done)
    }
}

/// When snapshots run on their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoPolicy {
    /// After this many new events.
    pub every_events: Option<u64>,
    /// After this long with new events.
    pub every: Option<Duration>,
}

impl Default for AutoPolicy {
    fn default() -> Self {
        AutoPolicy {
            every_events: Some(100_000),
            every: Some(Duration::from_secs(60)),
        }
    }
}

impl AutoPolicy {
    /// Never on its own.
    pub fn off() -> AutoPolicy {
        AutoPolicy {
            every_events: None,
            every: None,
        }
    }

    /// Parses `off`, `N` or `Nevents` (events), `Ns`/`Nm` (time), or both
    /// joined by a comma (`100000,60s`).
    pub fn parse(text: &str) -> std::result::Result<AutoPolicy, String> {
        let text = text.trim();
        if text == "off" || text == "never" {
            return Ok(AutoPolicy::off());
        }
        let mut p = AutoPolicy::off();
        for part in text.split(',').map(str::trim) {
            let bad = || {
                format!(
                    "snapshot policy part '{part}' is not understood; write a number of events (100000), a time (30s, 5m), both (100000,60s), or off"
                )
            };
            if let Some(n) = part.strip_suffix('s').and_then(|n| n.parse::<u64>().ok()) {
                p.every = Some(Duration::from_secs(n.max(1)));
            } else if let Some(n) = part.strip_suffix('m').and_then(|n| n.parse::<u64>().ok()) {
                p.every = Some(Duration::from_secs(60 * n.max(1)));
            } else if let Ok(n) = part.strip_suffix("events").unwrap_or(part).trim().parse::<u64>() {
                p.every_events = Some(n.max(1));
            } else {
                return Err(bad());
            }
        }
        Ok(p)
    }
}

/// Runs snapshots in a background thread by an [`AutoPolicy`], and a last
/// one when finished.
pub struct AutoSnapshot {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    store: Arc<Store>,
    opts: SnapshotOptions,
    enabled: bool,
}

impl AutoSnapshot {
    /// Starts watching `store`. Errors in the background are reported on
    /// stderr and retried at the next trigger; they never stop the writer.
    pub fn start(store: Arc<Store>, policy: AutoPolicy, opts: SnapshotOptions) -> AutoSnapshot {
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let enabled = policy != AutoPolicy::off();
        let thread = enabled.then(|| {
            let (store, stop, opts) = (store.clone(), stop.clone(), opts.clone());
            std::thread::Builder::new()
                .name("fathom-snapshot".into())
                .spawn(move || auto_loop(&store, &policy, &opts, &stop))
                .expect("spawning the snapshot thread")
        });
        AutoSnapshot {
            stop,
            thread,
            store,
            opts,
            enabled,
        }
    }

    /// Stops the thread and, unless the policy is off, takes a last
    /// snapshot so the files cover everything written.
    pub fn finish(mut self) -> Result<Option<SnapshotReport>> {
        self.halt();
        if self.enabled {
            Ok(Some(self.store.snapshot(&self.opts)?))
        } else {
            Ok(None)
        }
    }

    fn halt(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AutoSnapshot {
    fn drop(&mut self) {
        self.halt();
    }
}

fn auto_loop(
    store: &Store,
    policy: &AutoPolicy,
    opts: &SnapshotOptions,
    stop: &(std::sync::Mutex<bool>, std::sync::Condvar),
) {
    let clock = SystemClock;
    let mut last_time = clock.now();
    // The log position right after our own last snapshot (whose
    // `snapshot_committed` events must not trigger another one).
    let mut baseline = store.last_seq().0;
    let tick = Duration::from_millis(250);
    loop {
        {
            let (lock, cv) = stop;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = cv.wait_timeout(guard, tick).unwrap_or_else(|e| e.into_inner());
            if *guard {
                return;
            }
        }
        let now_seq = store.last_seq().0;
        let new_events = now_seq.saturating_sub(baseline);
        let by_count = policy.every_events.is_some_and(|n| new_events >= n);
        let by_time = new_events > 0
            && policy
                .every
                .is_some_and(|d| clock.now().nanos_since(last_time) >= d.as_nanos() as u64);
        if !(by_count || by_time) {
            continue;
        }
        match store.snapshot(opts) {
            Ok(_) => {}
            Err(e) => eprintln!("warning: background snapshot failed (will retry): {e}"),
        }
        baseline = store.last_seq().0;
        last_time = clock.now();
    }
}
