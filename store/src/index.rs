//! The index items of a chunk: its location under its first sequence
//! number, and an entry per run and per episode it holds events of.

use std::collections::BTreeSet;

use fathom_core::{EpisodeId, Event, RunId, Seq};

use crate::keys;
use crate::{Result, sled_err};

/// The frames of one chunk being built by an append, and the runs and
/// episodes they belong to (for the index).
pub(crate) struct PendingChunk {
    pub(crate) first: Seq,
    pub(crate) frames: Vec<Vec<u8>>,
    pub(crate) bytes: usize,
    runs: BTreeSet<RunId>,
    episodes: BTreeSet<EpisodeId>,
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

    pub(crate) fn push(&mut self, event: &Event, frame: Vec<u8>) {
        self.note(event);
        self.bytes += frame.len();
        self.frames.push(frame);
    }

    /// Inserts the chunk's `e` entry and then its index entries, one by one
    /// (see `Store::append_with`).
    pub(crate) fn insert_index(self, events: &sled::Tree, value: &[u8]) -> Result<()> {
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
}
