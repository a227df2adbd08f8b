//! The key layout of the `events` tree: the one place keys are built.
//!
//! All of a batch's writes (frames, index entries, counters) go to one sled
//! tree so that one `apply_batch` makes them atomic. Keys start with a
//! one-byte tag; numbers are big-endian so that sled's byte order is numeric
//! order.
//!
//! | tag | key                          | value                    |
//! |-----|------------------------------|--------------------------|
//! | `e` | `e` first-seq:u64            | a chunk's location (or, in directories written before segments, the chunk itself) |
//! | `r` | `r` run:u64 first-seq:u64    | empty (run index)        |
//! | `p` | `p` episode:u64 first-seq:u64| empty (episode index)    |
//! | `c` | `c` id-kind:u8               | last id:u64 (counters)   |
//! | `q` | `q` first-seq:u64 found:i64  | quarantined chunk bytes  |
//! | `m` | `m`                          | the mark: segment:u64 offset:u64 (LE) |
//!
//! The mark says that every segment record before it is durable and
//! indexed here; recovery re-reads the segments only from there on.
//! Index entries name chunks, not events: "the chunk starting at this
//! sequence number holds events of this run". The blob tree's keys are the
//! 32-byte digest followed by a part number (u32 BE); part 0 holds a
//! location (or, in older directories, the value, split into parts). The
//! blob tree also holds `b` segment:u64 offset:u64 → the digests (32 bytes
//! each) of the blob records one put wrote from there on, so that recovery
//! can drop the locations of records it cuts.

use fathom_core::{EpisodeId, IdKind, RunId, Seq};

pub const EVENT: u8 = b'e';
pub const RUN_INDEX: u8 = b'r';
pub const EPISODE_INDEX: u8 = b'p';
pub const COUNTER: u8 = b'c';
pub const QUARANTINE: u8 = b'q';
pub const MARK: [u8; 1] = [b'm'];
pub const BLOB_AT: u8 = b'b';

fn tagged_u64(tag: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = tag;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

fn tagged_u64_u64(tag: u8, a: u64, b: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = tag;
    k[1..9].copy_from_slice(&a.to_be_bytes());
    k[9..].copy_from_slice(&b.to_be_bytes());
    k
}

/// The key of the chunk whose first frame is `seq`.
pub fn event(seq: Seq) -> [u8; 9] {
    tagged_u64(EVENT, seq.0)
}

pub fn run_index(run: RunId, seq: Seq) -> [u8; 17] {
    tagged_u64_u64(RUN_INDEX, run.0, seq.0)
}

pub fn run_prefix(run: RunId) -> [u8; 9] {
    tagged_u64(RUN_INDEX, run.0)
}

pub fn episode_index(episode: EpisodeId, seq: Seq) -> [u8; 17] {
    tagged_u64_u64(EPISODE_INDEX, episode.0, seq.0)
}

pub fn episode_prefix(episode: EpisodeId) -> [u8; 9] {
    tagged_u64(EPISODE_INDEX, episode.0)
}

pub fn counter(kind: IdKind) -> [u8; 2] {
    [COUNTER, kind.tag()]
}

pub fn quarantine(seq: Seq, found_at: i64) -> [u8; 17] {
    tagged_u64_u64(QUARANTINE, seq.0, found_at as u64)
}

/// The key, in the blob tree, of the blob records written from `pos` on.
pub fn blob_at(pos: crate::segment::Pos) -> [u8; 17] {
    tagged_u64_u64(BLOB_AT, pos.segment, pos.offset)
}

/// The position a `b` key names.
pub fn pos_of_blob_at(key: &[u8]) -> Option<crate::segment::Pos> {
    if key.len() == 17 && key[0] == BLOB_AT {
        Some(crate::segment::Pos {
            segment: u64::from_be_bytes(key[1..9].try_into().ok()?),
            offset: u64::from_be_bytes(key[9..17].try_into().ok()?),
        })
    } else {
        None
    }
}

/// The sequence number of an `e` key, if it is one.
pub fn seq_of_event_key(key: &[u8]) -> Option<Seq> {
    if key.len() == 9 && key[0] == EVENT {
        Some(Seq(u64::from_be_bytes(key[1..9].try_into().ok()?)))
    } else {
        None
    }
}

/// The (owner, seq) of an `r` or `p` index key.
pub fn parts_of_index_key(key: &[u8]) -> Option<(u64, Seq)> {
    if key.len() == 17 && (key[0] == RUN_INDEX || key[0] == EPISODE_INDEX) {
        let owner = u64::from_be_bytes(key[1..9].try_into().ok()?);
        let seq = u64::from_be_bytes(key[9..17].try_into().ok()?);
        Some((owner, Seq(seq)))
    } else {
        None
    }
}

/// The key of part `part` of the blob `digest`.
pub fn blob_part(digest: &fathom_core::Digest, part: u32) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(&digest.0);
    k[32..].copy_from_slice(&part.to_be_bytes());
    k
}

/// The (digest, part) of a blob-tree key.
pub fn parts_of_blob_key(key: &[u8]) -> Option<(fathom_core::Digest, u32)> {
    if key.len() != 36 {
        return None;
    }
    let digest = fathom_core::Digest(key[..32].try_into().ok()?);
    Some((digest, u32::from_be_bytes(key[32..].try_into().ok()?)))
}
