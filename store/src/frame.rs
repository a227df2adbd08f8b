//! The frame: how one event is laid out as bytes (see `store/README.md`).
//!
//! ```text
//! offset size field
//!   0     4   magic "FTHM"
//!   4     2   frame format version (u16 LE), 1
//!   6     2   event kind code (u16 LE), see EventKind
//!   8     2   layout version of that kind's payload (u16 LE), 1
//!  10     2   flags (u16 LE), 0; reserved
//!  12     4   payload length in bytes (u32 LE)
//!  16     8   sequence number (u64 LE)
//!  24     8   run id (u64 LE)
//!  32     8   timestamp, ns since the Unix epoch (i64 LE)
//!  40     4   reserved (u32 LE), 0
//!  44     4   CRC-32 (IEEE) of bytes 0..44 followed by the payload
//!  48     n   payload: the rkyv archive of the kind's layout
//! ```
//!
//! The payload is validated (bytecheck) before any field is read. sled hands
//! values back with no alignment promise beyond what its allocator gives, so
//! the decoder copies the payload into a 16-byte-aligned buffer first; rkyv
//! is built with its `aligned` format. The copy costs one memcpy per read, a
//! few hundred nanoseconds for a model turn, and keeps the format portable.

use fathom_core::event::*;
use fathom_core::{Event, EventKind, Payload, RunId, Seq, Timestamp};
use rkyv::rancor;
use rkyv::util::AlignedVec;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"FTHM";
/// The frame format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 48;
/// The layout version of every kind this build writes.
pub const LAYOUT_V1: u16 = 1;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header.
    #[error("frame is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// The first four bytes are not `FTHM`.
    #[error("bad magic {found:02x?} (expected \"FTHM\")")]
    BadMagic {
        /// What was there.
        found: [u8; 4],
    },
    /// Written by a newer fathom.
    #[error(
        "frame format version {0} is not supported by this build (it reads version {FORMAT_VERSION}); upgrade fathom"
    )]
    UnsupportedFormat(u16),
    /// A kind code this build does not know.
    #[error("unknown event kind code {0}; the log was written by a newer fathom")]
    UnknownKind(u16),
    /// A kind's layout version this build cannot read.
    #[error("{kind} layout version {version} is not supported by this build")]
    UnsupportedLayout {
        /// The kind.
        kind: EventKind,
        /// The stored layout version.
        version: u16,
    },
    /// Header length and actual payload length differ.
    #[error("payload length {declared} in the header but {actual} bytes present")]
    LengthMismatch {
        /// From the header.
        declared: usize,
        /// Present.
        actual: usize,
    },
    /// The CRC does not match the bytes.
    #[error("checksum mismatch (stored {expected:08x}, computed {actual:08x})")]
    ChecksumMismatch {
        /// The CRC stored in the frame.
        expected: u32,
        /// The CRC of the bytes present.
        actual: u32,
    },
    /// The frame sits under another sequence number than it names.
    #[error("frame names sequence number {in_frame} but is stored under {in_key}")]
    SeqMismatch {
        /// What the header says.
        in_frame: Seq,
        /// Where it was found.
        in_key: Seq,
    },
    /// The checksum matched but the payload is not a valid archive.
    #[error("payload failed validation: {0}")]
    Invalid(String),
}

/// The fixed fields of a frame, readable without touching the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Event kind.
    pub kind: EventKind,
    /// Layout version of the payload.
    pub layout_version: u16,
    /// Payload length.
    pub payload_len: usize,
    /// Sequence number.
    pub seq: Seq,
    /// Run.
    pub run: RunId,
    /// Timestamp.
    pub ts: Timestamp,
}

/// Generates the payload codec from one list of kinds, so a kind added to
/// core without a codec here fails to compile (the matches are exhaustive).
macro_rules! codec {
    ($($kind:ident),+ $(,)?) => {
        fn encode_payload(payload: &Payload) -> AlignedVec {
            let bytes = match payload {
                $(Payload::$kind(p) => rkyv::to_bytes::<rancor::Error>(p),)+
            };
            // Serialising plain owned data into a growable buffer has no
            // failure mode but allocation, which aborts.
            bytes.expect("rkyv serialisation into memory cannot fail")
        }

        fn decode_payload(kind: EventKind, layout: u16, bytes: &[u8]) -> Result<Payload, FrameError> {
            if layout != LAYOUT_V1 {
                return Err(FrameError::UnsupportedLayout { kind, version: layout });
            }
            let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
            aligned.extend_from_slice(bytes);
            match kind {
                $(EventKind::$kind => rkyv::from_bytes::<$kind, rancor::Error>(&aligned)
                    .map(Payload::$kind)
                    .map_err(|e| FrameError::Invalid(e.to_string())),)+
            }
        }
    };
}

codec!(
    RunStarted,
    RunFinished,
    QuestionSampled,
    EpisodeStarted,
    TurnGenerated,
    ToolCalled,
    WebExchange,
    PageSegmentRead,
    ToolResult,
    EpisodeFinished,
    BehaviourTagged,
    GradientUpdate,
    CheckpointSaved,
    EvalResult,
    SnapshotCommitted,
);

fn crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..44]);
    h.update(payload);
    h.finalize()
}

/// Encodes `event` as the frame stored under `seq`.
pub fn encode(seq: Seq, event: &Event) -> Result<Vec<u8>, crate::Error> {
    let payload = encode_payload(&event.payload);
    let len = u32::try_from(payload.len()).map_err(|_| crate::Error::TooLarge {
        kind: event.kind(),
        len: payload.len(),
        limit: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&event.kind().code().to_le_bytes());
    out.extend_from_slice(&LAYOUT_V1.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.0.to_le_bytes());
    out.extend_from_slice(&event.run.0.to_le_bytes());
    out.extend_from_slice(&event.ts.0.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let checksum = crc(&out, &payload);
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks magic, versions, length and CRC, and returns the header. Does not
/// touch the payload's structure.
pub fn check(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::TooShort { len: bytes.len() });
    }
    let magic: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let declared = u32_at(bytes, 12) as usize;
    let actual = bytes.len() - HEADER_LEN;
    if declared != actual {
        return Err(FrameError::LengthMismatch { declared, actual });
    }
    // The checksum comes before interpreting any other field, so a flipped
    // bit in the kind or version is reported as what it is: corruption.
    let expected = u32_at(bytes, 44);
    let computed = crc(bytes, &bytes[HEADER_LEN..]);
    if expected != computed {
        return Err(FrameError::ChecksumMismatch {
            expected,
            actual: computed,
        });
    }
    let format = u16_at(bytes, 4);
    if format != FORMAT_VERSION {
        return Err(FrameError::UnsupportedFormat(format));
    }
    let code = u16_at(bytes, 6);
    let kind = EventKind::from_code(code).ok_or(FrameError::UnknownKind(code))?;
    Ok(FrameHeader {
        kind,
        layout_version: u16_at(bytes, 8),
        payload_len: declared,
        seq: Seq(u64_at(bytes, 16)),
        run: RunId(u64_at(bytes, 24)),
        ts: Timestamp(u64_at(bytes, 32) as i64),
    })
}

/// Fully decodes and validates a frame found under `key_seq`.
pub fn decode(key_seq: Seq, bytes: &[u8]) -> Result<(FrameHeader, Event), FrameError> {
    let header = check(bytes)?;
    if header.seq != key_seq {
        return Err(FrameError::SeqMismatch {
            in_frame: header.seq,
            in_key: key_seq,
        });
    }
    let payload = decode_payload(header.kind, header.layout_version, &bytes[HEADER_LEN..])?;
    Ok((
        header,
        Event {
            run: header.run,
            ts: header.ts,
            payload,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fathom_core::event::fixtures;

    #[test]
    fn every_kind_round_trips() {
        for (i, event) in fixtures::events().into_iter().enumerate() {
            let seq = Seq(i as u64 + 1);
            let bytes = encode(seq, &event).unwrap();
            let (header, back) = decode(seq, &bytes).unwrap();
            assert_eq!(back, event);
            assert_eq!(header.kind, event.kind());
            assert_eq!(header.seq, seq);
        }
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let event = fixtures::events().remove(4);
        let bytes = encode(Seq(9), &event).unwrap();
        for i in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode(Seq(9), &bad).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_misplaced_frame_is_caught() {
        let event = fixtures::events().remove(0);
        let bytes = encode(Seq(3), &event).unwrap();
        assert_eq!(
            decode(Seq(4), &bytes).unwrap_err(),
            FrameError::SeqMismatch {
                in_frame: Seq(3),
                in_key: Seq(4)
            }
        );
    }

    #[test]
    fn unknown_kinds_and_layouts_are_named() {
        let event = fixtures::events().remove(0);
        let mut bytes = encode(Seq(1), &event).unwrap();
        // Rewrite the kind to an unknown code and fix the CRC, as a newer
        // fathom would have written it.
        bytes[6..8].copy_from_slice(&999u16.to_le_bytes());
        let c = crc(&bytes, &bytes[HEADER_LEN..]);
        bytes[44..48].copy_from_slice(&c.to_le_bytes());
        assert_eq!(decode(Seq(1), &bytes).unwrap_err(), FrameError::UnknownKind(999));
        bytes[6..8].copy_from_slice(&1u16.to_le_bytes());
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        let c = crc(&bytes, &bytes[HEADER_LEN..]);
        bytes[44..48].copy_from_slice(&c.to_le_bytes());
        assert_eq!(
            decode(Seq(1), &bytes).unwrap_err().to_string(),
            "run_started layout version 2 is not supported by this build"
        );
    }
}
