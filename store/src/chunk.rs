//! Chunks: the frames of one append, stored as one sled value.
//!
//! Writing one sled item per event costs a tree insert (and index inserts)
//! per event, which dominated append time. fathom stores the frames of an
//! append back to back in chunks of at most [`MAX_CHUNK_BYTES`], keyed by
//! the sequence number of their first frame. Frames keep their own CRC, so
//! one damaged frame never hides its neighbours: after a bad frame the
//! reader resynchronises on the next `FTHM` magic whose frame validates.
//!
//! ```text
//! offset size field
//!   0     4   magic "FTHC"
//!   4     2   chunk format version (u16 LE), 1
//!   6     2   reserved, 0
//!   8     8   sequence number of the first frame (u64 LE)
//!  16     4   number of frames (u32 LE)
//!  20     4   CRC-32 of bytes 0..20
//!  24     …   the frames, back to back (see frame.rs)
//! ```

use std::ops::Range;

use fathom_core::Seq;

use crate::frame::{self, FrameError};

/// The four bytes every chunk starts with.
pub const MAGIC: [u8; 4] = *b"FTHC";
/// The chunk format this build writes.
pub const VERSION: u16 = 1;
/// Bytes before the first frame.
pub const HEADER_LEN: usize = 24;
/// A chunk is closed before it grows past this many bytes (a single larger
/// frame gets a chunk of its own): reading one event reads its chunk. In
/// directories written before segments, chunks were sled values, and this
/// kept a full sled leaf under a quarter of sled's 16 MiB segment.
pub const MAX_CHUNK_BYTES: usize = 192 * 1024;

/// Encodes frames whose first sequence number is `first`.
pub fn encode(first: Seq, frames: &[Vec<u8>]) -> Vec<u8> {
    let total: usize = frames.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + total);
    write_header(&mut out, first, frames.len() as u32);
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

/// Appends the chunk of `frames` (first sequence number `first`) to `out`.
pub fn encode_into(out: &mut Vec<u8>, first: Seq, frames: &[Vec<u8>]) {
    write_header(out, first, frames.len() as u32);
    for f in frames {
        out.extend_from_slice(f);
    }
}

/// A chunk of `count` frames whose bytes (after the header) are `body`:
/// used by recovery to keep a chunk's good prefix byte for byte.
pub fn with_body(first: Seq, count: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    write_header(&mut out, first, count);
    out.extend_from_slice(body);
    out
}

fn write_header(out: &mut Vec<u8>, first: Seq, count: u32) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&first.0.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    let crc = crc32fast::hash(&out[out.len() - 20..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The first sequence number a chunk's header names, if the header is
/// intact (magic, checksum and version).
pub fn header_first(chunk: &[u8]) -> Option<Seq> {
    let h = chunk.get(..HEADER_LEN)?;
    let crc = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes"));
    (h[..4] == MAGIC && crc32fast::hash(&h[..20]) == crc && u16::from_le_bytes([h[4], h[5]]) == VERSION)
        .then(|| Seq(u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"))))
}

/// One frame position in a chunk: where its bytes are, or why they are bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The sequence number this slot holds.
    pub seq: Seq,
    /// The frame's byte range within the chunk, or what is wrong with it.
    pub frame: Result<Range<usize>, FrameError>,
}

/// The parsed layout of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// What is wrong with the chunk header, if anything. Frames are still
    /// found by their own magic and checksums.
    pub header_error: Option<String>,
    /// Every sequence number the chunk holds, in order.
    pub slots: Vec<Slot>,
}

impl Layout {
    /// The last sequence number the chunk accounts for.
    pub fn last_seq(&self) -> Option<Seq> {
        self.slots.last().map(|s| s.seq)
    }
}

fn frame_at(chunk: &[u8], pos: usize) -> Result<(Range<usize>, Seq), FrameError> {
    let rest = &chunk[pos..];
    if rest.len() < frame::HEADER_LEN {
        return Err(FrameError::TooShort { len: rest.len() });
    }
    let declared = u32::from_le_bytes(rest[12..16].try_into().expect("4 bytes")) as usize;
    let end = frame::HEADER_LEN.saturating_add(declared);
    if end > rest.len() {
        return Err(FrameError::LengthMismatch {
            declared,
            actual: rest.len() - frame::HEADER_LEN,
        });
    }
    let header = frame::check(&rest[..end])?;
    Ok((pos..pos + end, header.seq))
}

/// Finds every frame of the chunk stored under key `first`, checking each
/// frame's header and checksum (not its payload structure).
pub fn layout(first: Seq, chunk: &[u8]) -> Layout {
    let mut header_error = None;
    let mut count: Option<u64> = None;
    if chunk.len() < HEADER_LEN {
        header_error = Some(format!("chunk is {} bytes, shorter than its header", chunk.len()));
    } else if chunk[..4] != MAGIC {
        header_error = Some("bad chunk magic".into());
    } else {
        let crc = u32::from_le_bytes(chunk[20..24].try_into().expect("4 bytes"));
        let version = u16::from_le_bytes([chunk[4], chunk[5]]);
        let in_header = Seq(u64::from_le_bytes(chunk[8..16].try_into().expect("8 bytes")));
        if crc32fast::hash(&chunk[..20]) != crc {
            header_error = Some("chunk header checksum mismatch".into());
        } else if version != VERSION {
            header_error = Some(format!("chunk format version {version} is not supported by this build"));
        } else if in_header != first {
            header_error = Some(format!(
                "chunk header names first event {in_header} but is stored under {first}"
            ));
        } else {
            count = Some(u64::from(u32::from_le_bytes(
                chunk[16..20].try_into().expect("4 bytes"),
            )));
        }
    }
    let end_seq = count.map(|n| first.0 + n); // exclusive
    let mut slots = Vec::new();
    let mut expected = first.0;
    let mut pos = HEADER_LEN.min(chunk.len());
    while pos < chunk.len() && end_seq.is_none_or(|end| expected < end) {
        match frame_at(chunk, pos) {
            Ok((range, seq)) if seq.0 == expected => {
                pos = range.end;
                slots.push(Slot { seq, frame: Ok(range) });
                expected += 1;
            }
            first_failure => {
                let reason = match first_failure {
                    Err(e) => e,
                    Ok((_, seq)) => FrameError::SeqMismatch {
                        in_frame: seq,
                        in_key: Seq(expected),
                    },
                };
                // Resynchronise on the next frame that validates and comes
                // later in sequence; everything skipped is corrupt.
                let resume = (pos + 1..chunk.len().saturating_sub(frame::HEADER_LEN - 1))
                    .filter(|&q| chunk[q..q + 4] == frame::MAGIC)
                    .find_map(|q| match frame_at(chunk, q) {
                        Ok((_, seq)) if seq.0 > expected && end_seq.is_none_or(|end| seq.0 < end) => Some((q, seq)),
                        _ => None,
                    });
                let stop = match resume {
                    Some((_, seq)) => seq.0,
                    None => end_seq.unwrap_or(expected + 1),
                };
                for s in expected..stop {
                    slots.push(Slot {
                        seq: Seq(s),
                        frame: Err(reason.clone()),
                    });
                }
                expected = stop;
                match resume {
                    Some((q, _)) => pos = q,
                    None => pos = chunk.len(),
                }
            }
        }
    }
    if let Some(end) = end_seq {
        for s in expected..end {
            slots.push(Slot {
                seq: Seq(s),
                frame: Err(FrameError::TooShort { len: 0 }),
            });
        }
    }
    Layout { header_error, slots }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fathom_core::event::fixtures;

    fn sample() -> (Vec<Vec<u8>>, Vec<u8>) {
        let frames: Vec<Vec<u8>> = fixtures::events()
            .iter()
            .enumerate()
            .map(|(i, e)| frame::encode(Seq(100 + i as u64), e).unwrap())
            .collect();
        let chunk = encode(Seq(100), &frames);
        (frames, chunk)
    }

    #[test]
    fn a_chunk_lays_out_its_frames() {
        let (frames, chunk) = sample();
        let layout = layout(Seq(100), &chunk);
        assert_eq!(layout.header_error, None);
        assert_eq!(layout.slots.len(), frames.len());
        for (i, slot) in layout.slots.iter().enumerate() {
            assert_eq!(slot.seq, Seq(100 + i as u64));
            assert_eq!(&chunk[slot.frame.clone().unwrap()], &frames[i][..]);
        }
        assert_eq!(layout.last_seq(), Some(Seq(114)));
    }

    #[test]
    fn a_damaged_frame_hides_none_of_its_neighbours() {
        let (frames, chunk) = sample();
        // Damage the length field of the third frame: its extent is lost.
        let third = HEADER_LEN + frames[0].len() + frames[1].len();
        for offset in [12, 13, 30, 60] {
            let mut bad = chunk.clone();
            bad[third + offset] ^= 0xff;
            let layout = layout(Seq(100), &bad);
            let broken: Vec<u64> = layout
                .slots
                .iter()
                .filter(|s| s.frame.is_err())
                .map(|s| s.seq.0)
                .collect();
            assert_eq!(broken, vec![102], "damage at +{offset}");
            assert_eq!(layout.slots.len(), 15);
        }
    }

    #[test]
    fn a_damaged_header_or_a_torn_tail_is_reported() {
        let (frames, chunk) = sample();
        let mut bad = chunk.clone();
        bad[17] ^= 1; // frame count
        let l = layout(Seq(100), &bad);
        assert_eq!(l.header_error.as_deref(), Some("chunk header checksum mismatch"));
        assert!(
            l.slots.iter().all(|s| s.frame.is_ok()),
            "frames are still found by their magic"
        );
        assert_eq!(l.slots.len(), 15);

        let torn = &chunk[..chunk.len() - frames[14].len() / 2];
        let l = layout(Seq(100), torn);
        assert_eq!(l.slots.len(), 15);
        assert!(l.slots[14].frame.is_err());
        assert!(l.slots[..14].iter().all(|s| s.frame.is_ok()));

        let l = layout(Seq(101), &chunk);
        assert!(l.header_error.unwrap().contains("stored under 101"));
    }
}
