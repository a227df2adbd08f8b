//! The key layout of the `events` tree: the one place keys are built.
//!
//! All of a batch's writes (frames, index entries, counters) go to one sled
//! tree so that one `apply_batch` makes them atomic. Keys start with a
//! one-byte tag; numbers are big-endian so that sled's byte order is numeric
//! order.
//!
//! | tag | key                          | value                    |
//! |-----|------------------------------|--------------------------|
//! | `e` | `e` seq:u64                  | the event frame          |
//! | `r` | `r` run:u64 seq:u64          | empty (run index)        |
//! | `p` | `p` episode:u64 seq:u64      | empty (episode index)    |
//! | `c` | `c` id-kind:u8               | next id:u64 (counters)   |
//! | `q` | `q` seq:u64 found_at:i64     | quarantined frame bytes  |

use fathom_core::{EpisodeId, IdKind, RunId, Seq};

pub const EVENT: u8 = b'e';
pub const RUN_INDEX: u8 = b'r';
pub const EPISODE_INDEX: u8 = b'p';
pub const COUNTER: u8 = b'c';
pub const QUARANTINE: u8 = b'q';

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
