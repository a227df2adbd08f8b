//! fathom's vocabulary: typed ids, the injected clock, seeded randomness and
//! the events every other crate records or reads.
//!
//! **Architecture Invariant:** this crate is pure. It does no I/O, spawns no
//! threads, and depends on no async runtime, storage engine or ML framework
//! (`scripts/test` checks this with `cargo tree`). The store decides how events
//! are framed and where they live; core only says what they are. The rkyv
//! derives here describe each payload's archived layout; the framing around it
//! (magic, versions, checksums) belongs to the store.

pub mod behaviour;
pub mod clock;
pub mod event;
pub mod id;
pub mod protocol;
pub mod reward;
pub mod rng;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use event::{BlobRef, Digest, Event, EventKind, Payload, Record};
pub use id::{CheckpointId, EpisodeId, IdKind, QuestionId, RequestId, RunId, Seq, SnapshotId};
pub use rng::{SeededRng, derive_seed};
