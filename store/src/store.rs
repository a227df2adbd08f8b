//! [`Store`]: open, append, read, tail, and recover the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use fathom_core::{Clock, EpisodeId, Event, IdKind, RunId, Seq};

use crate::chunk::{self, MAX_CHUNK_BYTES};
use crate::flush::{FlushError, Flusher, flush_all};
use crate::frame;
use crate::index::PendingChunk;
use crate::keys;
use crate::lock::DirLock;
use crate::paths::DataDir;
use crate::segment::{self, Active, Loc, Pos, RecordKind, Segments};
use crate::{Error, Result, sled_err};

/// The largest event frame the log takes. Large values (page bodies, token
/// ids) belong in blobs; this bounds what one careless event can cost.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

/// The largest blob the log takes (1 GiB).
pub const MAX_BLOB_BYTES: usize = 1 << 30;

/// The smallest segment size [`Options::segment_bytes`] may ask for.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;

/// The largest segment size [`Options::segment_bytes`] may ask for.
pub const MAX_SEGMENT_BYTES: u64 = 4 << 30;

/// When an append may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the batch (and every blob put before it) is flushed and fsynced:
    /// a crash after the return loses nothing.
    #[default]
    Durable,
    /// As soon as the batch is applied in memory. A background flush makes
    /// it durable within [`Options::relaxed_flush_ms`]; a crash inside that
    /// window loses the most recent events, but recovery always yields a
    /// prefix of the log: never a gap, a reordering or a torn event.
    Relaxed,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// Default durability of [`Store::append`].
    pub durability: Durability,
    /// Interval of the background flush (segments fdatasynced, then sled's
    /// index flushed), which bounds relaxed mode's loss window.
    pub relaxed_flush_ms: u64,
    /// Segment files roll once they reach this size (clamped to
    /// [`MIN_SEGMENT_BYTES`]..=[`MAX_SEGMENT_BYTES`]; one batch never spans
    /// two segments).
    pub segment_bytes: u64,
    /// zstd level for blobs (negative: fastest, 1: fast, the default, 19: small).
    pub blob_level: i32,
    /// sled page-cache size in bytes.
    pub cache_bytes: u64,
    /// The file system under the segment files: the real one, or a
    /// simulated one for the storage simulation tests.
    #[doc(hidden)]
    pub disk: Arc<dyn crate::disk::Disk>,
    /// Opened only to read (a query's tail, a blob, a replay check): the
    /// lock file says so, and a writer that finds it waits for it to close
    /// instead of failing. See [`Store::open_shared`].
    pub reading: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Durable,
            relaxed_flush_ms: 200,
            segment_bytes: segment::DEFAULT_SEGMENT_BYTES,
            blob_level: 1,
            cache_bytes: 256 << 20,
            disk: Arc::new(crate::disk::RealDisk),
            reading: false,
        }
    }
}

/// The stores this process holds open to read, by data directory, so that
/// concurrent readers share one handle instead of each taking the lock.
static SHARED: std::sync::LazyLock<Mutex<HashMap<PathBuf, std::sync::Weak<Store>>>> =
    std::sync::LazyLock::new(Mutex::default);

/// A contiguous run of sequence numbers handed back by an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// The first assigned number.
    pub first: Seq,
    /// The last assigned number (equal to `first` for one event).
    pub last: Seq,
}

impl SeqRange {
    /// How many numbers the range holds.
    pub fn len(&self) -> u64 {
        self.last.0 + 1 - self.first.0
    }

    /// Never true: an empty append returns no range.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Every number in the range.
    pub fn iter(&self) -> impl Iterator<Item = Seq> {
        (self.first.0..=self.last.0).map(Seq)
    }
}

/// What recovery did when the store was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The last sequence number after recovery (0 for an empty log).
    pub last_seq: Seq,
    /// Corrupt frames cut from the tail and moved to quarantine, newest
    /// first, with what was wrong with each. A chunk whose segment record
    /// was torn is one entry, under its first sequence number.
    pub cut: Vec<(Seq, String)>,
    /// Segment records past the mark that recovery found intact and
    /// indexed (written before a crash, not yet in sled's flushed index).
    pub reindexed: u64,
    /// Where a torn or damaged segment tail was cut, and why.
    pub segment_cut: Option<(Pos, String)>,
    /// Damaged records that a repair kept (its header held) or skipped.
    pub damaged: Vec<(Pos, String)>,
}

/// sled's segment size for a new database: sled holds only small items
/// now. (Directories written before segments used 16 MiB, which sled
/// persists in its `conf` file and insists on; see [`sled_segment_bytes`].)
const SLED_SEGMENT_BYTES: usize = 1 << 20;

/// Opens sled. We hold the directory's lock, so a lock sled cannot take on
/// its own file is held by this process: a store closed a moment ago whose
/// sled I/O threads are still finishing a write. Wait for them (at most
/// 5 s).
fn open_sled(config: &sled::Config) -> Result<sled::Db> {
    let mut tries = 0;
    loop {
        match config.open() {
            // sled reports it as an error of kind Other with this text.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") && tries < 500 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.map_err(sled_err("open the log")),
        }
    }
}

/// The segment size sled's existing database was created with, or ours for
/// a new one: sled refuses to open a database with another.
fn sled_segment_bytes(log_dir: &Path) -> usize {
    // The file is text lines followed by a binary checksum.
    std::fs::read(log_dir.join("conf"))
        .ok()
        .and_then(|conf| {
            String::from_utf8_lossy(&conf)
                .lines()
                .find_map(|l| l.strip_prefix("segment_size:").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(SLED_SEGMENT_BYTES)
}

/// State only the appender touches.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) next_seq: u64,
    pub(crate) active: Option<Active>,
}

/// The highest sequence number readers may see, with a way to wait for it.
#[derive(Debug)]
pub(crate) struct Visible {
    pub(crate) last: Mutex<Seq>,
    changed: Condvar,
    watch: tokio::sync::watch::Sender<Seq>,
}

/// An open data directory: the event log and the blob tree.
///
/// One `Store` per data directory per machine: opening takes the directory's
/// writer lock. A `Store` is `Sync`; appends from many threads are serialised
/// on a mutex held only while the batch is applied, never across the flush,
/// so concurrent durable appends share fsyncs.
#[derive(Debug)]
pub struct Store {
    pub(crate) dir: DataDir,
    pub(crate) db: sled::Db,
    /// Chunk locations, indexes, counters and the mark (see `keys`).
    pub(crate) events: sled::Tree,
    /// Blob locations keyed by digest.
    pub(crate) blobs: sled::Tree,
    /// The segment files holding the bytes.
    pub(crate) segments: Arc<Segments>,
    /// The background flush, for a writer.
    pub(crate) flusher: Option<Flusher>,
    /// Whether dropping the store flushes it (not when a test abandons it
    /// to simulate a crash).
    pub(crate) flush_on_drop: bool,
    pub(crate) opts: Options,
    pub(crate) writer: Mutex<Writer>,
    pub(crate) visible: Visible,
    pub(crate) recovery: RecoveryReport,
    /// Held while a snapshot runs, so only one runs at a time.
    pub(crate) snapshotting: Mutex<()>,
    // Declared last so it is dropped last: the lock outlives the database.
    pub(crate) _lock: DirLock,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these mutexes cannot leave their plain integers
    // half-updated, so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens `data` to read, sharing the handle with every other reader of
    /// this process that has it open now (the dashboard's parallel
    /// requests): a reader never meets the lock held by its own process.
    /// The handle closes when the last reader drops it; a writer that
    /// starts meanwhile waits for that (see [`Options::reading`]).
    pub fn open_shared(data: &Path, opts: Options) -> Result<Arc<Store>> {
        let key = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
        let mut shared = lock(&SHARED);
        if let Some(store) = shared.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(store);
        }
        shared.retain(|_, w| w.strong_count() > 0);
        let store = Arc::new(Store::open(data, Options { reading: true, ..opts })?);
        shared.insert(key, Arc::downgrade(&store));
        Ok(store)
    }

    /// Opens (creating if needed) the data directory at `dir` as its writer,
    /// and recovers the log.
    pub fn open(dir: impl Into<DataDir>, opts: Options) -> Result<Store> {
        let dir: DataDir = dir.into();
        std::fs::create_dir_all(dir.root()).map_err(|source| Error::Io {
            action: "create the data directory",
            path: dir.root().to_path_buf(),
            source,
        })?;
        let lock = DirLock::acquire(dir.root(), &dir.lock_file(), opts.reading)?;
        Store::open_locked(dir, lock, opts, crate::recover::Mode::Open)
    }

    /// Rebuilds sled's index from the segment files, for when sled's own
    /// files are damaged (`fathom verify --repair`). The old `log/` is kept
    /// beside it as `log.damaged-<time>`; every event and blob whose segment
    /// record is intact is indexed again (a record whose checksum fails but
    /// whose header holds is indexed too, and its frames are checked one by
    /// one), and damaged records are listed in the recovery report. Refused
    /// for a directory whose first events predate segments: those live only
    /// in sled's files.
    pub fn repair(dir: impl Into<DataDir>, opts: Options) -> Result<(Store, PathBuf)> {
        let dir: DataDir = dir.into();
        let lock = DirLock::acquire(dir.root(), &dir.lock_file(), false)?;
        let segments = Segments::new(
            dir.segments_dir(),
            opts.disk.clone(),
            opts.segment_bytes.clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
        );
        let first = crate::recover::first_seq_in_segments(&segments)?;
        if let Some(first) = first.filter(|s| s.0 > 1) {
            return Err(Error::Segment(format!(
                "{} holds events written before segment files existed (events 1 to {}): they are only in sled's files, so the index cannot be rebuilt from the segments. Restore log/ from a backup, or keep the directory as it is and read what verify reports",
                dir.root().display(),
                first.0 - 1,
            )));
        }
        if first.is_none() {
            return Err(Error::Segment(format!(
                "{} has no segment record of any event to rebuild the index from; nothing was changed",
                dir.root().display(),
            )));
        }
        let aside = dir
            .root()
            .join(format!("log.damaged-{}", fathom_core::SystemClock.now().0));
        if dir.log_dir().exists() {
            std::fs::rename(dir.log_dir(), &aside).map_err(|source| Error::Io {
                action: "move the damaged index aside to",
                path: aside.clone(),
                source,
            })?;
        }
        let store = Store::open_locked(dir, lock, opts, crate::recover::Mode::Repair)?;
        Ok((store, aside))
    }

    fn open_locked(dir: DataDir, lock: DirLock, opts: Options, mode: crate::recover::Mode) -> Result<Store> {
        let config = sled::Config::new()
            .path(dir.log_dir())
            .mode(sled::Mode::HighThroughput)
            .segment_size(sled_segment_bytes(&dir.log_dir()))
            .cache_capacity(opts.cache_bytes)
            // fathom's flusher flushes sled after syncing the segments, so
            // that the mark sled persists never runs ahead of them.
            .flush_every_ms(None);
        let db = open_sled(&config)?;
        let events = db.open_tree("events").map_err(sled_err("open the events tree"))?;
        let blobs = db.open_tree("blobs").map_err(sled_err("open the blob tree"))?;
        let segments = Arc::new(Segments::new(
            dir.segments_dir(),
            opts.disk.clone(),
            opts.segment_bytes.clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
        ));
        let recovery = crate::recover::recover(&dir, &segments, &events, &blobs, mode)?;
        db.flush().map_err(sled_err("flush after recovery"))?;
        let last = recovery.last_seq;
        let (watch, _) = tokio::sync::watch::channel(last);
        let flusher = (!opts.reading).then(|| {
            Flusher::start(
                segments.clone(),
                db.clone(),
                events.clone(),
                Duration::from_millis(opts.relaxed_flush_ms.max(1)),
            )
        });
        Ok(Store {
            dir,
            db,
            events,
            blobs,
            segments,
            flusher,
            flush_on_drop: !opts.reading,
            opts,
            writer: Mutex::new(Writer {
                next_seq: last.0 + 1,
                active: None,
            }),
            visible: Visible {
                last: Mutex::new(last),
                changed: Condvar::new(),
                watch,
            },
            recovery,
            snapshotting: Mutex::new(()),
            _lock: lock,
        })
    }

    pub(crate) fn snapshot_guard(&self) -> MutexGuard<'_, ()> {
        lock(&self.snapshotting)
    }

    /// The data directory.
    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// What recovery did at open.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Appends a batch with the store's default durability.
    pub fn append(&self, events: &[Event]) -> Result<Option<SeqRange>> {
        self.append_with(events, self.opts.durability)
    }

    /// Appends a batch atomically: after a crash either every event of the
    /// batch is present or none is. Returns the assigned sequence numbers
    /// (`None` for an empty batch) once the batch is as durable as asked.
    pub fn append_with(&self, events: &[Event], durability: Durability) -> Result<Option<SeqRange>> {
        if events.is_empty() {
            return Ok(None);
        }
        let (range, end) = {
            let mut writer = lock(&self.writer);
            let first = writer.next_seq;
            let mut chunks = Vec::new();
            let mut pending = PendingChunk::new(Seq(first));
            for (i, event) in events.iter().enumerate() {
                let seq = Seq(first + i as u64);
                let frame = frame::encode(seq, event)?;
                if frame.len() > MAX_EVENT_BYTES {
                    return Err(Error::TooLarge {
                        kind: event.kind(),
                        len: frame.len(),
                        limit: MAX_EVENT_BYTES,
                    });
                }
                if !pending.frames.is_empty() && pending.bytes + frame.len() > MAX_CHUNK_BYTES - chunk::HEADER_LEN {
                    chunks.push(std::mem::replace(&mut pending, PendingChunk::new(seq)));
                }
                pending.push(event, frame);
            }
            chunks.push(pending);
            let total: usize = chunks.iter().map(|c| c.bytes).sum();
            let mut buf = Vec::with_capacity(total + chunks.len() * (chunk::HEADER_LEN + segment::RECORD_HEADER_LEN));
            let mut placed = Vec::with_capacity(chunks.len());
            for c in chunks {
                let start = segment::begin_record(&mut buf, RecordKind::Chunk);
                chunk::encode_into(&mut buf, c.first, &c.frames);
                let len = segment::seal(&mut buf, start);
                placed.push((c, start as u64, len));
            }
            let at = self.write_records(&mut writer, &buf)?;
            // Plain inserts, not a sled batch: sled writes out its buffer
            // for every batch (two small writes each), and atomicity is not
            // needed here. Readers see the batch only once it is published,
            // and after a crash recovery re-derives every index item past
            // the mark from the segments. The order (location first) means
            // an index entry sled kept always has its location kept too.
            for (c, offset, len) in placed {
                let loc = Loc {
                    segment: at.segment,
                    offset: at.offset + offset,
                    len,
                };
                c.insert_index(&self.events, &loc.encode())?;
            }
            let end = at.plus(buf.len() as u64);
            self.segments.advance(&writer.active, end);
            writer.next_seq = first + events.len() as u64;
            let range = SeqRange {
                first: Seq(first),
                last: Seq(writer.next_seq - 1),
            };
            (range, end)
        };
        if durability == Durability::Durable {
            self.segments
                .sync_through(end)
                .map_err(|e| self.io_error("make the log durable (fdatasync)", e))?;
        }
        self.publish(range.last);
        Ok(Some(range))
    }

    /// Writes whole records to the active segment (the caller holds the
    /// writer and indexes them before releasing it).
    pub(crate) fn write_records(&self, writer: &mut Writer, bytes: &[u8]) -> Result<Pos> {
        self.segments
            .write(&mut writer.active, bytes)
            .map_err(|e| self.io_error("append to the log's segment files", e))
    }

    /// A segment I/O error, naming the disk's free space when it is full.
    pub(crate) fn io_error(&self, action: &'static str, source: std::io::Error) -> Error {
        if source.kind() == std::io::ErrorKind::StorageFull {
            return Error::DiskFull {
                dir: self.dir.root().to_path_buf(),
                free: crate::lock::free_bytes(self.dir.root()),
            };
        }
        Error::Io {
            action,
            path: self.segments.dir().to_path_buf(),
            source,
        }
    }

    fn publish(&self, last: Seq) {
        {
            let mut visible = lock(&self.visible.last);
            if last > *visible {
                *visible = last;
            }
        }
        self.visible.changed.notify_all();
        self.visible.watch.send_if_modified(|cur| {
            if last > *cur {
                *cur = last;
                true
            } else {
                false
            }
        });
    }

    /// Makes every write so far durable, and persists sled's index of it
    /// (so that the next open has nothing to re-index).
    pub fn flush(&self) -> Result<()> {
        flush_all(&self.segments, &self.db, &self.events).map_err(|e| match e {
            FlushError::Sync(e) => self.io_error("make the log durable (fdatasync)", e),
            FlushError::Sled(e) => e,
        })
    }

    /// Flushes and closes the store, releasing the writer lock.
    pub fn close(self) -> Result<()> {
        self.flush()
    }

    /// Allocates the next id of a kind (ids start at 1). The counter is
    /// durable with the next flush; an id can be handed out again after a
    /// crash only if nothing durable refers to it.
    pub fn next_id(&self, kind: IdKind) -> Result<u64> {
        self.reserve_ids(kind, 1)
    }

    /// Allocates `n` consecutive ids of a kind at once and returns the
    /// last; the block is `last - n + 1 ..= last`.
    pub fn reserve_ids(&self, kind: IdKind, n: u64) -> Result<u64> {
        self.bump_counter(kind, |c| c + n)
    }

    /// Moves a kind's id counter up to `last` when it is below, so that ids
    /// up to `last`, numbered by the caller, are never given out again.
    pub fn reserve_through(&self, kind: IdKind, last: u64) -> Result<()> {
        self.bump_counter(kind, |c| c.max(last)).map(|_| ())
    }

    /// Updates a counter in sled and records the new value in the segments,
    /// so that it is durable with the next sync, like the events that use it.
    fn bump_counter(&self, kind: IdKind, next: impl Fn(u64) -> u64) -> Result<u64> {
        let mut writer = lock(&self.writer);
        let key = keys::counter(kind);
        let old = self
            .events
            .get(key)
            .map_err(sled_err("read an id counter"))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let value = next(old);
        if value == old {
            return Ok(value);
        }
        let mut buf = Vec::with_capacity(32);
        segment::push_record(&mut buf, RecordKind::Counter, &[&[kind.tag()], &value.to_le_bytes()]);
        let at = self.write_records(&mut writer, &buf)?;
        self.events
            .insert(key, &value.to_be_bytes())
            .map_err(sled_err("allocate an id"))?;
        self.segments.advance(&writer.active, at.plus(buf.len() as u64));
        Ok(value)
    }

    /// A new run id.
    pub fn new_run_id(&self) -> Result<RunId> {
        self.next_id(IdKind::Run).map(RunId)
    }

    /// A new episode id.
    pub fn new_episode_id(&self) -> Result<EpisodeId> {
        self.next_id(IdKind::Episode).map(EpisodeId)
    }

    // ----- reads -----

    /// The last sequence number visible to readers (0 when empty).
    pub fn last_seq(&self) -> Seq {
        *lock(&self.visible.last)
    }

    // ----- tail -----

    /// A receiver that changes whenever new events become visible; its value
    /// is the last visible sequence number. For async readers.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Seq> {
        self.visible.watch.subscribe()
    }

    /// Blocks until an event after `after` is visible or `timeout` passes;
    /// returns the last visible sequence number either way.
    pub fn wait_after(&self, after: Seq, timeout: Duration) -> Seq {
        let guard = lock(&self.visible.last);
        let (guard, _) = self
            .visible
            .changed
            .wait_timeout_while(guard, timeout, |last| *last <= after)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    // ----- internals shared with verify and stats -----

    pub(crate) fn events_tree(&self) -> &sled::Tree {
        &self.events
    }

    pub(crate) fn blobs_tree(&self) -> &sled::Tree {
        &self.blobs
    }

    pub(crate) fn segments(&self) -> &Segments {
        &self.segments
    }

    /// Bytes the log occupies on disk: sled's files and the segments.
    pub fn size_on_disk(&self) -> Result<u64> {
        let sled = self.db.size_on_disk().map_err(sled_err("measure the database"))?;
        let segments = self.segments.size_on_disk().map_err(|source| Error::Io {
            action: "measure the segment files in",
            path: self.segments.dir().to_path_buf(),
            source,
        })?;
        Ok(sled + segments)
    }

    /// Crash simulation: closes the store without syncing or flushing
    /// anything (sled still writes what it holds when it closes; the
    /// simulation restores sled's files itself). Only tests should call this.
    #[doc(hidden)]
    pub fn abandon(mut self) {
        self.flush_on_drop = false;
    }

    /// Fault injection: replaces a stored frame's bytes inside its chunk,
    /// as bit rot or a buggy writer would. Only tests should call this.
    #[doc(hidden)]
    pub fn inject_raw_event(&self, seq: Seq, frame_bytes: &[u8]) -> Result<()> {
        let (first, bytes) = self
            .chunk_containing(seq)?
            .ok_or_else(|| Error::Internal(format!("no chunk holds event {seq}")))?;
        let range = chunk::layout(first, &bytes)
            .slots
            .into_iter()
            .find(|s| s.seq == seq)
            .and_then(|s| s.frame.ok())
            .ok_or_else(|| Error::Internal(format!("event {seq} cannot be located in its chunk")))?;
        let value = self.events.get(keys::event(first)).map_err(sled_err("read the log"))?;
        match value.as_deref().and_then(Loc::decode) {
            // Bit rot in a segment: the bytes change in place.
            Some(loc) if range.len() == frame_bytes.len() => {
                let pos = Pos {
                    segment: loc.segment,
                    offset: loc.offset + segment::RECORD_HEADER_LEN as u64 + range.start as u64,
                };
                self.segments.overwrite(pos, frame_bytes).map_err(|source| Error::Io {
                    action: "overwrite a segment in",
                    path: self.segments.dir().to_path_buf(),
                    source,
                })
            }
            Some(_) => Err(Error::Internal("injected frames must keep their length".into())),
            None => {
                let mut value = bytes.to_vec();
                value.splice(range, frame_bytes.iter().copied());
                self.events
                    .insert(keys::event(first), value)
                    .map_err(sled_err("overwrite a chunk"))?;
                self.flush()
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
        // Best effort: an explicit close reports errors; a drop cannot.
        if self.flush_on_drop {
            let _ = flush_all(&self.segments, &self.db, &self.events);
        }
    }
}

impl From<&std::path::Path> for DataDir {
    fn from(p: &std::path::Path) -> Self {
        DataDir::new(p)
    }
}

impl From<std::path::PathBuf> for DataDir {
    fn from(p: std::path::PathBuf) -> Self {
        DataDir::new(p)
    }
}
