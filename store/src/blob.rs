//! The content-addressed blob tree: large payloads stored once.
//!
//! Page bodies, token-id arrays and log-prob arrays are too big to copy into
//! every event that mentions them, and the same page is fetched by every
//! rollout of a GRPO group. They are stored in a separate sled tree keyed by
//! the BLAKE3 digest of their uncompressed bytes; an event carries a
//! [`BlobRef`]. Putting a blob that is already present writes nothing.
//!
//! Value layout (the logical value; see below for how it is split):
//!
//! ```text
//! offset size field
//!   0     1   codec: 0 = stored as is, 1 = zstd
//!   1     3   reserved, 0
//!   4     4   number of parts the value is split into (u32 LE), at least 1
//!   8     8   uncompressed length (u64 LE)
//!  16     n   stored bytes
//! ```
//!
//! The value is cut into parts of at most [`MAX_PART_BYTES`], stored under
//! the digest followed by the part number, so that no sled item is large
//! enough for sled to move it into its unsynced blob files.
//!
//! A blob is verified by decompressing it and recomputing its digest; the
//! digest is its key, so a flipped bit anywhere is caught.

use fathom_core::{BlobRef, Digest};

/// Bytes before the stored data.
pub const HEADER_LEN: usize = 16;
/// Largest stored part (see [`crate::chunk::MAX_CHUNK_BYTES`] for why).
pub const MAX_PART_BYTES: usize = crate::chunk::MAX_CHUNK_BYTES;
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// Blobs smaller than this are stored as is: compression would not pay for
/// its header and CPU time.
const COMPRESS_MIN: usize = 512;

/// Why a stored blob is not what its key says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Shorter than the header.
    #[error("stored value is {0} bytes, shorter than the {HEADER_LEN}-byte blob header")]
    TooShort(usize),
    /// The part count in the header does not match the parts present.
    #[error("header says {declared} part(s), {actual} present")]
    PartsMismatch {
        /// From the header.
        declared: u32,
        /// Present.
        actual: u32,
    },
    /// Reserved header bytes are not zero.
    #[error("reserved header bytes are not zero")]
    Reserved,
    /// An unknown codec byte.
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    /// zstd refused the data.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The length in the header does not match the data.
    #[error("header says {declared} bytes, data has {actual}")]
    LengthMismatch {
        /// From the header.
        declared: u64,
        /// Decompressed.
        actual: u64,
    },
    /// The data does not hash to its key.
    #[error("content hashes to {actual}, not to its key")]
    DigestMismatch {
        /// What the data hashes to.
        actual: Digest,
    },
}

/// The digest of `bytes`, as blob keys use it.
pub fn digest(bytes: &[u8]) -> Digest {
    Digest(*blake3::hash(bytes).as_bytes())
}

/// Encodes a blob value for `bytes` at the given zstd level.
pub fn encode(bytes: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + bytes.len() / 2);
    out.extend_from_slice(&[CODEC_RAW; 8]);
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    let compressed = (bytes.len() >= COMPRESS_MIN)
        .then(|| compress(bytes, level).ok())
        .flatten()
        .filter(|c| c.len() < bytes.len());
    match compressed {
        Some(c) => {
            out[0] = CODEC_ZSTD;
            out.extend_from_slice(&c);
        }
        None => out.extend_from_slice(bytes),
    }
    let parts = out.len().div_ceil(MAX_PART_BYTES) as u32;
    out[4..8].copy_from_slice(&parts.to_le_bytes());
    out
}

/// The parts a value is stored as.
pub fn split(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.chunks(MAX_PART_BYTES)
}

/// The part count recorded in a first part's header.
pub fn parts(first_part: &[u8]) -> Option<u32> {
    first_part
        .get(4..8)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

thread_local! {
    /// One zstd context per thread and level: creating a context costs more
    /// than compressing a 2 KB token-id array.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(bytes: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, c) = slot.as_mut().expect("set above");
        c.compress(bytes)
    })
}

/// Decodes a stored blob value and checks it against its key.
pub fn decode(key: &Digest, value: &[u8]) -> Result<Vec<u8>, BlobError> {
    if value.len() < HEADER_LEN {
        return Err(BlobError::TooShort(value.len()));
    }
    if value[1..4] != [0u8; 3] {
        return Err(BlobError::Reserved);
    }
    let declared_parts = parts(value).unwrap_or(0);
    let actual_parts = value.len().div_ceil(MAX_PART_BYTES) as u32;
    if declared_parts != actual_parts {
        return Err(BlobError::PartsMismatch {
            declared: declared_parts,
            actual: actual_parts,
        });
    }
    let declared = u64::from_le_bytes(value[8..16].try_into().expect("8 bytes"));
    let data = &value[HEADER_LEN..];
    let bytes = match value[0] {
        CODEC_RAW => data.to_vec(),
        CODEC_ZSTD => {
            // Decompress as a stream bounded by the declared length, so a
            // corrupt header cannot make us allocate more than the data
            // really expands to.
            use std::io::Read;
            let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(64 << 20));
            zstd::stream::read::Decoder::with_buffer(data)
                .and_then(|d| d.take(declared.saturating_add(1)).read_to_end(&mut out))
                .map_err(|e| BlobError::Decompress(e.to_string()))?;
            out
        }
        other => return Err(BlobError::UnknownCodec(other)),
    };
    if bytes.len() as u64 != declared {
        return Err(BlobError::LengthMismatch {
            declared,
            actual: bytes.len() as u64,
        });
    }
    let actual = digest(&bytes);
    if &actual != key {
        return Err(BlobError::DigestMismatch { actual });
    }
    Ok(bytes)
}

/// The uncompressed length recorded in a stored value's header.
pub fn stored_len(value: &[u8]) -> Option<u64> {
    value
        .get(8..16)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// A blob ready to be written: its reference and its encoded value.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The reference events will carry.
    pub blob: BlobRef,
    /// The encoded value, `None` if the blob is already stored.
    pub value: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_compressed_and_raw() {
        let text = "the quick brown fox jumps over the lazy dog. ".repeat(200);
        for bytes in [text.as_bytes(), b"tiny".as_slice(), &[0u8; 0]] {
            let key = digest(bytes);
            let value = encode(bytes, 3);
            assert_eq!(decode(&key, &value).unwrap(), bytes);
            assert_eq!(stored_len(&value), Some(bytes.len() as u64));
        }
        assert_eq!(encode(text.as_bytes(), 3)[0], CODEC_ZSTD);
        assert_eq!(encode(b"tiny", 3)[0], CODEC_RAW);
    }

    #[test]
    fn large_values_split_into_bounded_parts() {
        let mut rng = fathom_core::SeededRng::new(3);
        let mut noise = vec![0u8; MAX_PART_BYTES * 2 + 10];
        rng.fill_bytes(&mut noise);
        let value = encode(&noise, 1);
        assert_eq!(value[0], CODEC_RAW, "noise does not compress");
        let parts: Vec<&[u8]> = split(&value).collect();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= MAX_PART_BYTES));
        assert_eq!(super::parts(parts[0]), Some(3));
        let whole: Vec<u8> = parts.concat();
        assert_eq!(decode(&digest(&noise), &whole).unwrap(), noise);
        // A missing last part is caught before decompression.
        let short = &whole[..MAX_PART_BYTES * 2];
        assert!(matches!(
            decode(&digest(&noise), short),
            Err(BlobError::PartsMismatch { .. })
        ));
    }

    #[test]
    fn a_flipped_byte_is_caught() {
        let text = "lorem ipsum dolor sit amet ".repeat(100);
        let key = digest(text.as_bytes());
        let value = encode(text.as_bytes(), 3);
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 0x20;
            assert!(decode(&key, &bad).is_err(), "flip at {i} went unnoticed");
        }
    }
}
