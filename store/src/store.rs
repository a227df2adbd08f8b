//! [`Store`]: open, append, read, tail, and recover the log.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use fathom_core::{BlobRef, Clock, Digest, EpisodeId, Event, IdKind, Record, RunId, Seq};

use crate::blob::{self, Prepared};
use crate::chunk::{self, MAX_CHUNK_BYTES};
use crate::frame;
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
struct Visible {
    last: Mutex<Seq>,
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
    dir: DataDir,
    db: sled::Db,
    /// Chunk locations, indexes, counters and the mark (see `keys`).
    events: sled::Tree,
    /// Blob locations keyed by digest.
    blobs: sled::Tree,
    /// The segment files holding the bytes.
    segments: Arc<Segments>,
    /// The background flush, for a writer.
    flusher: Option<Flusher>,
    /// Whether dropping the store flushes it (not when a test abandons it
    /// to simulate a crash).
    flush_on_drop: bool,
    opts: Options,
    writer: Mutex<Writer>,
    visible: Visible,
    recovery: RecoveryReport,
    /// Held while a snapshot runs, so only one runs at a time.
    snapshotting: Mutex<()>,
    // Declared last so it is dropped last: the lock outlives the database.
    _lock: DirLock,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
    fn write_records(&self, writer: &mut Writer, bytes: &[u8]) -> Result<Pos> {
        self.segments
            .write(&mut writer.active, bytes)
            .map_err(|e| self.io_error("append to the log's segment files", e))
    }

    /// A segment I/O error, naming the disk's free space when it is full.
    fn io_error(&self, action: &'static str, source: std::io::Error) -> Error {
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

    // ----- blobs -----

    /// Stores `bytes` once, keyed by their digest. The blob becomes durable
    /// with the next durable append or flush, and always before any event
    /// appended after this call: put blobs first, then append the events that
    /// refer to them.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<BlobRef> {
        Ok(self.put_blobs(&[bytes])?.remove(0))
    }

    /// Stores many blobs. Hashing, the presence check and compression run
    /// on all cores; the writes go to sled in one batch.
    pub fn put_blobs(&self, items: &[&[u8]]) -> Result<Vec<BlobRef>> {
        if let Some(big) = items.iter().find(|i| i.len() > MAX_BLOB_BYTES) {
            return Err(Error::BlobTooLarge {
                len: big.len(),
                limit: MAX_BLOB_BYTES,
            });
        }
        let level = self.opts.blob_level;
        let prepared = prepare_all(items, |bytes| -> Result<Prepared> {
            let digest = blob::digest(bytes);
            let stored = self
                .blobs
                .contains_key(keys::blob_part(&digest, 0))
                .map_err(sled_err("look up a blob"))?;
            Ok(Prepared {
                blob: BlobRef {
                    digest,
                    len: bytes.len() as u64,
                },
                value: (!stored).then(|| blob::encode(bytes, level)),
            })
        })?;
        let mut writer = lock(&self.writer);
        let mut buf = Vec::new();
        let mut placed = Vec::new();
        let mut written = std::collections::HashSet::new();
        for p in &prepared {
            if let Some(value) = &p.value
                && written.insert(p.blob.digest)
                // Another thread may have stored it since the check above.
                && !self
                    .blobs
                    .contains_key(keys::blob_part(&p.blob.digest, 0))
                    .map_err(sled_err("look up a blob"))?
            {
                let start = buf.len() as u64;
                let len = segment::push_record(&mut buf, RecordKind::Blob, &[&p.blob.digest.0, value]);
                placed.push((p.blob.digest, start, len));
            }
        }
        if !buf.is_empty() {
            let at = self.write_records(&mut writer, &buf)?;
            // One `b` entry per call lists its digests, so that recovery
            // finds the blobs written from a position on without an item
            // per blob. It goes first: a location sled kept always has its
            // `b` entry kept too (sled keeps a prefix of its writes). Plain
            // inserts, as for events (see `append_with`).
            let digests: Vec<u8> = placed.iter().flat_map(|(d, _, _)| d.0).collect();
            self.blobs
                .insert(keys::blob_at(at), digests)
                .map_err(sled_err("index blobs"))?;
            for (digest, offset, len) in placed {
                let loc = Loc {
                    segment: at.segment,
                    offset: at.offset + offset,
                    len,
                };
                self.blobs
                    .insert(keys::blob_part(&digest, 0), &loc.encode()[..])
                    .map_err(sled_err("index blobs"))?;
            }
            self.segments.advance(&writer.active, at.plus(buf.len() as u64));
        }
        drop(writer);
        Ok(prepared.into_iter().map(|p| p.blob).collect())
    }

    /// Reads and verifies a blob; `None` if it is not stored.
    pub fn get_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let Some(value) = self.raw_blob(digest)? else {
            return Ok(None);
        };
        blob::decode(digest, &value)
            .map(Some)
            .map_err(|reason| Error::CorruptBlob {
                digest: *digest,
                reason,
            })
    }

    /// Whether a blob is stored.
    pub fn has_blob(&self, digest: &Digest) -> Result<bool> {
        self.blobs
            .contains_key(keys::blob_part(digest, 0))
            .map_err(sled_err("look up a blob"))
    }

    // ----- reads -----

    /// The last sequence number visible to readers (0 when empty).
    pub fn last_seq(&self) -> Seq {
        *lock(&self.visible.last)
    }

    /// The chunk holding `seq`, if any: its first sequence number and bytes.
    fn chunk_containing(&self, seq: Seq) -> Result<Option<(Seq, Stored)>> {
        let found = self
            .events
            .range(keys::event(Seq(0))..=keys::event(seq))
            .next_back()
            .transpose()
            .map_err(sled_err("read the log"))?;
        let Some((first, value)) = found.and_then(|(k, v)| keys::seq_of_event_key(&k).map(|first| (first, v))) else {
            return Ok(None);
        };
        Ok(Some((first, self.resolve_chunk(first, value)?)))
    }

    /// A chunk's bytes from the value its `e` key holds: a location in the
    /// segments, or (in directories written before segments) the bytes.
    pub(crate) fn resolve_chunk(&self, first: Seq, value: sled::IVec) -> Result<Stored> {
        let Some(loc) = Loc::decode(&value) else {
            return Ok(Stored::Inline(value));
        };
        match self.segments.read(loc) {
            Ok((RecordKind::Chunk, body)) => Ok(Stored::Read(body)),
            Ok((kind, _)) => Err(Error::Segment(format!(
                "the index places the chunk starting at event {first} at {loc}, but a {kind:?} record is there; run 'fathom verify'"
            ))),
            Err(reason) => Err(Error::Segment(format!(
                "the chunk starting at event {first} cannot be read: {reason}; run 'fathom verify'"
            ))),
        }
    }

    /// The chunks whose keys lie in `from..=to`, with their bytes.
    pub(crate) fn chunks(&self, from: Seq, to: Seq) -> impl Iterator<Item = Result<(Seq, Stored)>> + '_ {
        self.events.range(keys::event(from)..=keys::event(to)).map(move |item| {
            let (key, value) = item.map_err(sled_err("scan the log"))?;
            let first = keys::seq_of_event_key(&key)
                .ok_or_else(|| Error::Internal("event range returned a non-event key".into()))?;
            Ok((first, self.resolve_chunk(first, value)?))
        })
    }

    /// One event.
    pub fn get(&self, seq: Seq) -> Result<Option<Record>> {
        let Some((first, bytes)) = self.chunk_containing(seq)? else {
            return Ok(None);
        };
        let layout = chunk::layout(first, &bytes);
        match layout.slots.into_iter().find(|s| s.seq == seq) {
            None => Ok(None),
            Some(slot) => decode_slot(&bytes, slot).map(Some),
        }
    }

    /// Events with sequence numbers in `range`, in order. A corrupt event is
    /// an `Err` item; iteration continues past it.
    pub fn range(&self, range: RangeInclusive<Seq>) -> impl Iterator<Item = Result<Record>> + '_ {
        let (from, to) = (*range.start(), *range.end());
        let start = match self.chunk_containing(from) {
            Ok(Some((first, _))) => Ok(first),
            Ok(None) => Ok(from),
            Err(e) => Err(e),
        };
        let (start, error) = match start {
            Ok(s) => (s, None),
            Err(e) => (Seq(u64::MAX), Some(Err(e))),
        };
        let chunks = self.chunks(start, to.max(start));
        error.into_iter().chain(chunks.flat_map(move |item| {
            let records: Vec<Result<Record>> = match item {
                Err(e) => vec![Err(e)],
                Ok((first, bytes)) => chunk::layout(first, &bytes)
                    .slots
                    .into_iter()
                    .filter(|s| s.seq >= from && s.seq <= to)
                    .map(|slot| decode_slot(&bytes, slot))
                    .collect(),
            };
            records
        }))
    }

    /// Every event, in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Record>> + '_ {
        self.range(Seq(0)..=Seq(u64::MAX))
    }

    /// One run's events, in order, found through the run index. A corrupt
    /// frame in one of the run's chunks is an `Err` item (its owner cannot be
    /// known); iteration continues past it.
    pub fn run_events(&self, run: RunId) -> impl Iterator<Item = Result<Record>> + '_ {
        self.indexed(keys::run_prefix(run), move |r| r.event.run == run)
    }

    /// One episode's events, in order, with the same rule as `run_events`.
    pub fn episode_events(&self, episode: EpisodeId) -> impl Iterator<Item = Result<Record>> + '_ {
        self.indexed(keys::episode_prefix(episode), move |r| {
            r.event.payload.episode_id() == Some(episode)
        })
    }

    fn indexed(
        &self,
        prefix: [u8; 9],
        keep: impl Fn(&Record) -> bool + 'static,
    ) -> impl Iterator<Item = Result<Record>> + '_ {
        self.events.scan_prefix(prefix).keys().flat_map(move |key| {
            let chunk_records = || -> Result<Vec<Result<Record>>> {
                let key = key.map_err(sled_err("scan an index"))?;
                let (_, first) = keys::parts_of_index_key(&key)
                    .ok_or_else(|| Error::Internal("index scan returned a malformed key".into()))?;
                let value = self
                    .events
                    .get(keys::event(first))
                    .map_err(sled_err("read the log"))?
                    .ok_or_else(|| {
                        Error::Internal(format!(
                            "an index names the chunk at event {first}, which the log does not hold; run 'fathom verify'"
                        ))
                    })?;
                let bytes = self.resolve_chunk(first, value)?;
                Ok(chunk::layout(first, &bytes)
                    .slots
                    .into_iter()
                    .map(|slot| decode_slot(&bytes, slot))
                    .filter(|r| r.as_ref().map_or(true, &keep))
                    .collect())
            };
            match chunk_records() {
                Ok(records) => records,
                Err(e) => vec![Err(e)],
            }
        })
    }

    /// Every run that has events, in id order.
    pub fn runs(&self) -> Result<Vec<RunId>> {
        let mut runs = Vec::new();
        let mut start = vec![keys::RUN_INDEX];
        // Skip from run to run instead of walking every index entry.
        loop {
            let next = self
                .events
                .range(start.clone()..vec![keys::RUN_INDEX + 1])
                .next()
                .transpose()
                .map_err(sled_err("scan the run index"))?;
            let Some((key, _)) = next else { break };
            let Some((run, _)) = keys::parts_of_index_key(&key) else {
                break;
            };
            runs.push(RunId(run));
            if run == u64::MAX {
                break;
            }
            start = keys::run_prefix(RunId(run + 1)).to_vec();
        }
        Ok(runs)
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

    /// The stored bytes of one frame, unvalidated: for forensics and for
    /// fault-injection tests. `None` if the frame cannot be located.
    pub fn raw_event(&self, seq: Seq) -> Result<Option<Vec<u8>>> {
        let Some((first, bytes)) = self.chunk_containing(seq)? else {
            return Ok(None);
        };
        Ok(chunk::layout(first, &bytes)
            .slots
            .into_iter()
            .find(|s| s.seq == seq)
            .and_then(|s| s.frame.ok())
            .map(|r| bytes[r].to_vec()))
    }

    /// The stored bytes of one blob value (all parts joined), unvalidated.
    pub fn raw_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let Some(first) = self
            .blobs
            .get(keys::blob_part(digest, 0))
            .map_err(sled_err("read a blob"))?
        else {
            return Ok(None);
        };
        if let Some(loc) = Loc::decode(&first) {
            return self.blob_record(digest, loc).map(Some);
        }
        let mut value = first.to_vec();
        for part in 1..blob::parts(&first).unwrap_or(1) {
            match self
                .blobs
                .get(keys::blob_part(digest, part))
                .map_err(sled_err("read a blob"))?
            {
                Some(bytes) => value.extend_from_slice(&bytes),
                // A missing part leaves the value short; decode reports it.
                None => break,
            }
        }
        Ok(Some(value))
    }

    /// The value of the blob record at `loc`, checked to be `digest`'s.
    pub(crate) fn blob_record(&self, digest: &Digest, loc: Loc) -> Result<Vec<u8>> {
        let damaged = |reason: String| Error::Segment(format!("blob {digest}: {reason}; run 'fathom verify'"));
        match self.segments.read(loc) {
            Ok((RecordKind::Blob, mut body)) if body.len() >= 32 => {
                if body[..32] != digest.0 {
                    return Err(damaged(format!("the record at {loc} holds another blob")));
                }
                body.drain(..32);
                Ok(body)
            }
            Ok((kind, _)) => Err(damaged(format!("the record at {loc} is a {kind:?} record"))),
            Err(reason) => Err(damaged(reason)),
        }
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

    /// Fault injection: replaces a stored blob value (all parts). Only tests
    /// should call this.
    #[doc(hidden)]
    pub fn inject_raw_blob(&self, digest: &Digest, value: &[u8]) -> Result<()> {
        let stored = self
            .blobs
            .get(keys::blob_part(digest, 0))
            .map_err(sled_err("read a blob"))?;
        if let Some(loc) = stored.as_deref().and_then(Loc::decode) {
            if value.len() + 32 != loc.len as usize {
                return Err(Error::Internal("injected blob values must keep their length".into()));
            }
            let pos = Pos {
                segment: loc.segment,
                offset: loc.offset + segment::RECORD_HEADER_LEN as u64 + 32,
            };
            return self.segments.overwrite(pos, value).map_err(|source| Error::Io {
                action: "overwrite a segment in",
                path: self.segments.dir().to_path_buf(),
                source,
            });
        }
        let mut batch = sled::Batch::default();
        for (part, bytes) in blob::split(value).enumerate() {
            batch.insert(&keys::blob_part(digest, part as u32)[..], bytes);
        }
        self.blobs.apply_batch(batch).map_err(sled_err("overwrite a blob"))?;
        self.flush()
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

/// Why a flush failed.
enum FlushError {
    Sync(std::io::Error),
    Sled(Error),
}

/// Syncs the segments, then records the mark and flushes sled: the mark
/// sled persists never runs ahead of what the segments hold durably.
fn flush_all(segments: &Segments, db: &sled::Db, events: &sled::Tree) -> std::result::Result<(), FlushError> {
    let upto = segments.sync_all().map_err(FlushError::Sync)?;
    if upto.segment > 0 {
        let mark = events
            .get(keys::MARK)
            .map_err(|e| FlushError::Sled(sled_err("read the mark")(e)))?;
        if mark.as_deref().and_then(Pos::decode).is_none_or(|m| m < upto) {
            events
                .insert(keys::MARK, &upto.encode()[..])
                .map_err(|e| FlushError::Sled(sled_err("write the mark")(e)))?;
        }
    }
    db.flush()
        .map_err(|e| FlushError::Sled(sled_err("flush the log index")(e)))?;
    Ok(())
}

/// The writer's background flush: every `relaxed_flush_ms`, what relaxed
/// appends wrote becomes durable and sled's index of it is flushed.
#[derive(Debug)]
struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(segments: Arc<Segments>, db: sled::Db, events: sled::Tree, every: Duration) -> Flusher {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("fathom-flush".into())
            .spawn(move || {
                let (m, cv) = &*flag;
                let mut stopped = lock(m);
                while !*stopped {
                    let (guard, _) = cv.wait_timeout(stopped, every).unwrap_or_else(|e| e.into_inner());
                    stopped = guard;
                    if *stopped {
                        break;
                    }
                    drop(stopped);
                    // A failure is recorded by the segments (a failed sync)
                    // and reported to the next append or flush.
                    let _ = flush_all(&segments, &db, &events);
                    stopped = lock(m);
                }
            })
            .ok();
        Flusher { stop, handle }
    }

    fn stop(mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A chunk's bytes: read from a segment, or held by sled in directories
/// written before segments.
pub(crate) enum Stored {
    Inline(sled::IVec),
    Read(Vec<u8>),
}

impl std::ops::Deref for Stored {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Stored::Inline(v) => v,
            Stored::Read(v) => v,
        }
    }
}

/// The frames of one chunk being built by an append, and the runs and
/// episodes they belong to (for the index).
pub(crate) struct PendingChunk {
    pub(crate) first: Seq,
    frames: Vec<Vec<u8>>,
    bytes: usize,
    runs: std::collections::BTreeSet<RunId>,
    episodes: std::collections::BTreeSet<EpisodeId>,
}

impl PendingChunk {
    pub(crate) fn new(first: Seq) -> Self {
        PendingChunk {
            first,
            frames: Vec::new(),
            bytes: 0,
            runs: Default::default(),
            episodes: Default::default(),
        }
    }

    pub(crate) fn note(&mut self, event: &Event) {
        self.runs.insert(event.run);
        if let Some(e) = event.payload.episode_id() {
            self.episodes.insert(e);
        }
    }

    fn push(&mut self, event: &Event, frame: Vec<u8>) {
        self.note(event);
        self.bytes += frame.len();
        self.frames.push(frame);
    }

    /// Inserts the chunk's `e` entry and then its index entries, one by one
    /// (see `Store::append_with`).
    fn insert_index(self, events: &sled::Tree, value: &[u8]) -> Result<()> {
        let err = sled_err("index a batch");
        events.insert(keys::event(self.first), value).map_err(err)?;
        for run in self.runs {
            events
                .insert(keys::run_index(run, self.first), &[][..])
                .map_err(sled_err("index a batch"))?;
        }
        for episode in self.episodes {
            events
                .insert(keys::episode_index(episode, self.first), &[][..])
                .map_err(sled_err("index a batch"))?;
        }
        Ok(())
    }

    /// Writes the chunk's `e` entry (its location, or its bytes) and its
    /// index entries.
    pub(crate) fn write_index(self, batch: &mut sled::Batch, value: &[u8]) {
        batch.insert(&keys::event(self.first)[..], value);
        for run in self.runs {
            batch.insert(&keys::run_index(run, self.first)[..], &[][..]);
        }
        for episode in self.episodes {
            batch.insert(&keys::episode_index(episode, self.first)[..], &[][..]);
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

pub(crate) fn decode_slot(chunk_bytes: &[u8], slot: chunk::Slot) -> Result<Record> {
    let seq = slot.seq;
    let range = slot.frame.map_err(|reason| Error::CorruptEvent { seq, reason })?;
    frame::decode(seq, &chunk_bytes[range])
        .map(|(_, event)| Record { seq, event })
        .map_err(|reason| Error::CorruptEvent { seq, reason })
}

/// Maps `work` over the items, spreading them over the cores when there are
/// enough bytes to pay for the threads (two 2 KB token arrays are not).
fn prepare_all<T: Send>(items: &[&[u8]], work: impl Fn(&[u8]) -> Result<T> + Sync) -> Result<Vec<T>> {
    let total: usize = items.iter().map(|i| i.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads < 2 || items.len() < 2 || total < PARALLEL_MIN_BYTES {
        return items.iter().map(|i| work(i)).collect();
    }
    // Hand out items in an interleaved order so that large pages spread
    // over the threads rather than landing on one.
    let work = &work;
    let mut slots: Vec<Option<Result<T>>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..items.len())
                        .step_by(threads)
                        .map(|i| (i, work(items[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("a blob worker panicked") {
                slots[i] = Some(r);
            }
        }
    });
    slots.into_iter().map(|s| s.expect("every item was prepared")).collect()
}

/// Below this many blob bytes in one call, preparing on one thread is faster
/// than starting workers.
const PARALLEL_MIN_BYTES: usize = 64 * 1024;
