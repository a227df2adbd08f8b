//! [`Store`]: open, append, read, tail, and recover the log.

use std::ops::RangeInclusive;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use fathom_core::{
    BlobRef, Clock, Digest, EpisodeId, Event, IdKind, Record, RunId, Seq, SystemClock,
};

use crate::blob::{self, Prepared};
use crate::frame;
use crate::keys;
use crate::lock::DirLock;
use crate::paths::DataDir;
use crate::{Error, Result, sled_err};

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
    /// Interval of sled's background flush, which bounds relaxed mode's
    /// loss window.
    pub relaxed_flush_ms: u64,
    /// zstd level for blobs (1 fast … 19 small; 3 is zstd's default).
    pub blob_level: i32,
    /// sled page-cache size in bytes.
    pub cache_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Durable,
            relaxed_flush_ms: 200,
            blob_level: 3,
            cache_bytes: 256 << 20,
        }
    }
}

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
    /// first, with what was wrong with each.
    pub cut: Vec<(Seq, String)>,
}

/// How far back recovery walks a corrupt tail before refusing to cut more.
const MAX_TAIL_CUT: usize = 1024;

/// State only the appender touches.
#[derive(Debug)]
struct Writer {
    next_seq: u64,
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
    /// Frames, indexes and counters (see `keys`).
    events: sled::Tree,
    /// Blob values keyed by digest.
    blobs: sled::Tree,
    opts: Options,
    writer: Mutex<Writer>,
    visible: Visible,
    recovery: RecoveryReport,
    // Declared last so it is dropped last: the lock outlives the database.
    _lock: DirLock,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these mutexes cannot leave their plain integers
    // half-updated, so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens (creating if needed) the data directory at `dir` as its writer,
    /// and recovers the log.
    pub fn open(dir: impl Into<DataDir>, opts: Options) -> Result<Store> {
        let dir: DataDir = dir.into();
        std::fs::create_dir_all(dir.root()).map_err(|source| Error::Io {
            action: "create the data directory",
            path: dir.root().to_path_buf(),
            source,
        })?;
        let lock = DirLock::acquire(dir.root(), &dir.lock_file())?;
        let db = sled::Config::new()
            .path(dir.log_dir())
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(Some(opts.relaxed_flush_ms.max(1)))
            .open()
            .map_err(sled_err("open the log"))?;
        let events = db
            .open_tree("events")
            .map_err(sled_err("open the events tree"))?;
        let blobs = db
            .open_tree("blobs")
            .map_err(sled_err("open the blob tree"))?;
        let recovery = recover(&dir, &events)?;
        if !recovery.cut.is_empty() {
            db.flush().map_err(sled_err("flush after recovery"))?;
        }
        let last = recovery.last_seq;
        let (watch, _) = tokio::sync::watch::channel(last);
        Ok(Store {
            dir,
            db,
            events,
            blobs,
            opts,
            writer: Mutex::new(Writer {
                next_seq: last.0 + 1,
            }),
            visible: Visible {
                last: Mutex::new(last),
                changed: Condvar::new(),
                watch,
            },
            recovery,
            _lock: lock,
        })
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
    pub fn append_with(
        &self,
        events: &[Event],
        durability: Durability,
    ) -> Result<Option<SeqRange>> {
        if events.is_empty() {
            return Ok(None);
        }
        let range = {
            let mut writer = lock(&self.writer);
            let first = writer.next_seq;
            let mut batch = sled::Batch::default();
            for (i, event) in events.iter().enumerate() {
                let seq = Seq(first + i as u64);
                batch.insert(&keys::event(seq)[..], frame::encode(seq, event)?);
                batch.insert(&keys::run_index(event.run, seq)[..], &[][..]);
                if let Some(episode) = event.payload.episode_id() {
                    batch.insert(&keys::episode_index(episode, seq)[..], &[][..]);
                }
            }
            self.events
                .apply_batch(batch)
                .map_err(sled_err("append a batch"))?;
            writer.next_seq = first + events.len() as u64;
            SeqRange {
                first: Seq(first),
                last: Seq(writer.next_seq - 1),
            }
        };
        if durability == Durability::Durable {
            self.db.flush().map_err(sled_err("flush the log"))?;
        }
        self.publish(range.last);
        Ok(Some(range))
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

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(sled_err("flush the log"))?;
        Ok(())
    }

    /// Flushes and closes the store, releasing the writer lock.
    pub fn close(self) -> Result<()> {
        self.flush()
    }

    /// Allocates the next id of a kind (ids start at 1). The counter is
    /// durable with the next flush; an id can be handed out again after a
    /// crash only if nothing durable refers to it.
    pub fn next_id(&self, kind: IdKind) -> Result<u64> {
        let value = self
            .events
            .update_and_fetch(keys::counter(kind), |old| {
                let n = old
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(sled_err("allocate an id"))?
            .ok_or_else(|| Error::Internal("id counter update returned nothing".into()))?;
        let bytes: [u8; 8] = value
            .as_ref()
            .try_into()
            .map_err(|_| Error::Internal("id counter is not 8 bytes".into()))?;
        Ok(u64::from_be_bytes(bytes))
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

    /// Stores many blobs, compressing them on all cores.
    pub fn put_blobs(&self, items: &[&[u8]]) -> Result<Vec<BlobRef>> {
        let mut prepared: Vec<Prepared> = Vec::with_capacity(items.len());
        let mut seen = std::collections::HashSet::new();
        for bytes in items {
            let digest = blob::digest(bytes);
            let blob = BlobRef {
                digest,
                len: bytes.len() as u64,
            };
            let fresh = seen.insert(digest)
                && !self
                    .blobs
                    .contains_key(digest.0)
                    .map_err(sled_err("look up a blob"))?;
            prepared.push(Prepared {
                blob,
                value: fresh.then(Vec::new),
            });
        }
        let todo: Vec<usize> = (0..items.len())
            .filter(|&i| prepared[i].value.is_some())
            .collect();
        let level = self.opts.blob_level;
        let encoded = compress_all(items, &todo, level);
        let mut batch = sled::Batch::default();
        for (i, value) in todo.iter().zip(encoded) {
            batch.insert(&prepared[*i].blob.digest.0[..], value);
        }
        self.blobs
            .apply_batch(batch)
            .map_err(sled_err("store blobs"))?;
        Ok(prepared.into_iter().map(|p| p.blob).collect())
    }

    /// Reads and verifies a blob; `None` if it is not stored.
    pub fn get_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let Some(value) = self.blobs.get(digest.0).map_err(sled_err("read a blob"))? else {
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
            .contains_key(digest.0)
            .map_err(sled_err("look up a blob"))
    }

    // ----- reads -----

    /// The last sequence number visible to readers (0 when empty).
    pub fn last_seq(&self) -> Seq {
        *lock(&self.visible.last)
    }

    /// One event.
    pub fn get(&self, seq: Seq) -> Result<Option<Record>> {
        match self
            .events
            .get(keys::event(seq))
            .map_err(sled_err("read an event"))?
        {
            None => Ok(None),
            Some(bytes) => decode_record(seq, &bytes).map(Some),
        }
    }

    /// Events with sequence numbers in `range`, in order. A corrupt event is
    /// an `Err` item; iteration continues past it.
    pub fn range(&self, range: RangeInclusive<Seq>) -> impl Iterator<Item = Result<Record>> + '_ {
        self.events
            .range(keys::event(*range.start())..=keys::event(*range.end()))
            .map(|item| {
                let (key, value) = item.map_err(sled_err("scan the log"))?;
                let seq = keys::seq_of_event_key(&key).ok_or_else(|| {
                    Error::Internal("event range returned a non-event key".into())
                })?;
                decode_record(seq, &value)
            })
    }

    /// Every event, in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Record>> + '_ {
        self.range(Seq(0)..=Seq(u64::MAX))
    }

    /// The sequence numbers of one run's events, from its index.
    pub fn run_seqs(&self, run: RunId) -> Result<Vec<Seq>> {
        index_seqs(&self.events, &keys::run_prefix(run))
    }

    /// The sequence numbers of one episode's events, from its index.
    pub fn episode_seqs(&self, episode: EpisodeId) -> Result<Vec<Seq>> {
        index_seqs(&self.events, &keys::episode_prefix(episode))
    }

    /// One run's events, in order.
    pub fn run_events(&self, run: RunId) -> Result<Vec<Record>> {
        self.collect(self.run_seqs(run)?)
    }

    /// One episode's events, in order.
    pub fn episode_events(&self, episode: EpisodeId) -> Result<Vec<Record>> {
        self.collect(self.episode_seqs(episode)?)
    }

    fn collect(&self, seqs: Vec<Seq>) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match self.get(seq)? {
                Some(record) => out.push(record),
                None => {
                    return Err(Error::Internal(format!(
                        "index names event {seq} but the log does not hold it; run 'fathom verify'"
                    )));
                }
            }
        }
        Ok(out)
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

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.db
            .size_on_disk()
            .map_err(sled_err("measure the database"))
    }

    /// The stored bytes of one frame, unvalidated: for forensics and for
    /// fault-injection tests.
    pub fn raw_event(&self, seq: Seq) -> Result<Option<Vec<u8>>> {
        Ok(self
            .events
            .get(keys::event(seq))
            .map_err(sled_err("read an event"))?
            .map(|v| v.to_vec()))
    }

    /// The stored bytes of one blob value, unvalidated.
    pub fn raw_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        Ok(self
            .blobs
            .get(digest.0)
            .map_err(sled_err("read a blob"))?
            .map(|v| v.to_vec()))
    }

    /// Fault injection: replaces a stored frame's bytes without framing them,
    /// as bit rot or a buggy writer would. Only tests should call this.
    #[doc(hidden)]
    pub fn inject_raw_event(&self, seq: Seq, bytes: &[u8]) -> Result<()> {
        self.events
            .insert(keys::event(seq), bytes)
            .map_err(sled_err("overwrite an event"))?;
        self.flush()
    }

    /// Fault injection: replaces a stored blob value. Only tests should call this.
    #[doc(hidden)]
    pub fn inject_raw_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        self.blobs
            .insert(digest.0, bytes)
            .map_err(sled_err("overwrite a blob"))?;
        self.flush()
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

fn decode_record(seq: Seq, bytes: &[u8]) -> Result<Record> {
    frame::decode(seq, bytes)
        .map(|(_, event)| Record { seq, event })
        .map_err(|reason| Error::CorruptEvent { seq, reason })
}

fn index_seqs(tree: &sled::Tree, prefix: &[u8]) -> Result<Vec<Seq>> {
    tree.scan_prefix(prefix)
        .keys()
        .map(|k| {
            let k = k.map_err(sled_err("scan an index"))?;
            keys::parts_of_index_key(&k)
                .map(|(_, seq)| seq)
                .ok_or_else(|| Error::Internal("index scan returned a malformed key".into()))
        })
        .collect()
}

/// Compresses the selected items, spreading the work over the cores when
/// there is enough of it to pay for the threads.
fn compress_all(items: &[&[u8]], todo: &[usize], level: i32) -> Vec<Vec<u8>> {
    let total: usize = todo.iter().map(|&i| items[i].len()).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads < 2 || todo.len() < 2 || total < 256 * 1024 {
        return todo
            .iter()
            .map(|&i| blob::encode(items[i], level))
            .collect();
    }
    let mut out: Vec<Vec<u8>> = vec![Vec::new(); todo.len()];
    let chunk = todo.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (slots, indices) in out.chunks_mut(chunk).zip(todo.chunks(chunk)) {
            scope.spawn(move || {
                for (slot, &i) in slots.iter_mut().zip(indices) {
                    *slot = blob::encode(items[i], level);
                }
            });
        }
    });
    out
}

/// Checks the tail of the log and cuts frames that fail validation, moving
/// their bytes to the quarantine keys so that nothing is destroyed.
fn recover(dir: &DataDir, events: &sled::Tree) -> Result<RecoveryReport> {
    let mut report = RecoveryReport::default();
    let lo = keys::event(Seq(0));
    let hi = keys::event(Seq(u64::MAX));
    let found_at = SystemClock.now().0;
    loop {
        let last = events
            .range(lo..=hi)
            .next_back()
            .transpose()
            .map_err(sled_err("read the log tail"))?;
        let Some((key, value)) = last else {
            report.last_seq = Seq(0);
            break;
        };
        let seq = keys::seq_of_event_key(&key)
            .ok_or_else(|| Error::Internal("event range returned a non-event key".into()))?;
        match frame::decode(seq, &value) {
            Ok(_) => {
                report.last_seq = seq;
                break;
            }
            Err(reason) => {
                if report.cut.len() >= MAX_TAIL_CUT {
                    return Err(Error::TooMuchDamage {
                        dir: dir.root().to_path_buf(),
                        count: report.cut.len(),
                    });
                }
                let mut batch = sled::Batch::default();
                batch.insert(&keys::quarantine(seq, found_at)[..], value);
                batch.remove(&key[..]);
                events
                    .apply_batch(batch)
                    .map_err(sled_err("cut a corrupt tail"))?;
                report.cut.push((seq, reason.to_string()));
            }
        }
    }
    if !report.cut.is_empty() {
        // Index entries of cut frames would point past the end of the log.
        let last = report.last_seq;
        let mut batch = sled::Batch::default();
        for tag in [keys::RUN_INDEX, keys::EPISODE_INDEX] {
            for key in events.scan_prefix([tag]).keys() {
                let key = key.map_err(sled_err("scan an index"))?;
                if let Some((_, seq)) = keys::parts_of_index_key(&key)
                    && seq > last
                {
                    batch.remove(key);
                }
            }
        }
        events
            .apply_batch(batch)
            .map_err(sled_err("trim the indexes"))?;
    }
    Ok(report)
}
