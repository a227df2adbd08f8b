//! The blob half of [`Store`]: content-addressed values put once, read
//! back and verified by their digest (see `blob.rs` for the value codec).

use fathom_core::{BlobRef, Digest};

use crate::blob::{self, Prepared};
use crate::keys;
use crate::segment::{self, Loc, Pos, RecordKind};
use crate::store::{MAX_BLOB_BYTES, lock};
use crate::{Error, Result, Store, sled_err};

impl Store {
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
