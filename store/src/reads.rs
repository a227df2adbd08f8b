//! Reading the log: events by sequence number, range, run and episode,
//! from chunks held in the segments (or inline in sled, in directories
//! written before segments).

use std::ops::RangeInclusive;

use fathom_core::{EpisodeId, Record, RunId, Seq};

use crate::chunk;
use crate::frame;
use crate::keys;
use crate::segment::{Loc, RecordKind};
use crate::{Error, Result, Store, sled_err};

impl Store {
    /// The chunk holding `seq`, if any: its first sequence number and bytes.
    pub(crate) fn chunk_containing(&self, seq: Seq) -> Result<Option<(Seq, Stored)>> {
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

pub(crate) fn decode_slot(chunk_bytes: &[u8], slot: chunk::Slot) -> Result<Record> {
    let seq = slot.seq;
    let range = slot.frame.map_err(|reason| Error::CorruptEvent { seq, reason })?;
    frame::decode(seq, &chunk_bytes[range])
        .map(|(_, event)| Record { seq, event })
        .map_err(|reason| Error::CorruptEvent { seq, reason })
}
