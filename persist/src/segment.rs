//! Segment files: the header codec, file naming, and the scan of a segment's bytes into
//! verified batches.

use std::path::{Path, PathBuf};

use crate::record::{
    decode_batch, Decoded, DecodedBatch, Invalid, BATCH_ALIGN, BATCH_HEADER_BYTES,
    RECORD_HEADER_BYTES,
};

/// Bytes of the segment header; the first batch starts at this offset.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Magic at offset 0 of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"QRKLOG\x00\x01";
/// The format version this code writes and the newest it reads. Version 2 (same bytes as 1)
/// marks a log whose directory keeps the LSN gap record (`lsn-gaps`): a build that does not
/// know it must not open the log (its compaction would remove segments without recording
/// them, and the next open would refuse the holes).
pub const FORMAT_VERSION: u32 = 2;
/// First format version whose logs keep `lsn-gaps`.
pub(crate) const GAPS_FORMAT_VERSION: u32 = 2;
/// File name suffix of a live segment.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// File name suffix of a segment being created (removed at open if left by a crash).
pub(crate) const TMP_SUFFIX: &str = ".seg.tmp";
/// File name suffix of a spare segment kept for reuse.
pub(crate) const SPARE_SUFFIX: &str = ".seg.free";
/// Subdirectory where quarantined segments are moved.
pub const QUARANTINE_DIR: &str = "quarantine";

/// A decoded segment header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version the segment was written with.
    pub format_version: u32,
    /// Shard that owns the log.
    pub shard_id: u32,
    /// LSN of the first batch in the segment.
    pub base_lsn: u64,
    /// Wall-clock milliseconds at creation.
    pub created_ms: u64,
    /// Size the segment was preallocated to.
    pub segment_bytes: u64,
}

/// Why a header is unusable.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// All zero (or shorter than a header): a segment whose creation never completed.
    Blank,
    /// The magic does not match: not a Quark log segment.
    BadMagic([u8; 8]),
    /// Written by a newer format version.
    NewerVersion(u32),
    /// The header checksum does not match.
    Checksum,
}

// Format (segment header, 64 bytes, little-endian):
//   { magic [8] = "QRKLOG\0\x01" | format_version u32 | header_bytes u32 (=64) | shard_id u32
//     | reserved u32 (=0) | base_lsn u64 | created_ms u64 | segment_bytes u64
//     | reserved [12] (=0) | header_crc32c u32 (over bytes [0, 60)) }
/// Encodes a segment header.
pub(crate) fn encode_header(h: &SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut b = [0u8; SEGMENT_HEADER_BYTES];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&h.format_version.to_le_bytes());
    b[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
    b[16..20].copy_from_slice(&h.shard_id.to_le_bytes());
    b[24..32].copy_from_slice(&h.base_lsn.to_le_bytes());
    b[32..40].copy_from_slice(&h.created_ms.to_le_bytes());
    b[40..48].copy_from_slice(&h.segment_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes and verifies a segment header.
pub(crate) fn decode_header(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
    if b.len() < SEGMENT_HEADER_BYTES || b[..SEGMENT_HEADER_BYTES].iter().all(|&x| x == 0) {
        return Err(HeaderError::Blank);
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&b[0..8]);
    if magic != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic(magic));
    }
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let u64_at = |at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let format_version = u32_at(8);
    if format_version > FORMAT_VERSION {
        return Err(HeaderError::NewerVersion(format_version));
    }
    if crc32c::crc32c(&b[..60]) != u32_at(60) || u32_at(12) as usize != SEGMENT_HEADER_BYTES {
        return Err(HeaderError::Checksum);
    }
    Ok(SegmentHeader {
        format_version,
        shard_id: u32_at(16),
        base_lsn: u64_at(24),
        created_ms: u64_at(32),
        segment_bytes: u64_at(40),
    })
}

/// File name of the segment whose first LSN is `base_lsn` (zero-padded so names sort).
pub(crate) fn segment_path(dir: &Path, base_lsn: u64) -> PathBuf {
    dir.join(format!("{base_lsn:020}{SEGMENT_SUFFIX}"))
}

/// Temporary name used while creating that segment.
pub(crate) fn segment_tmp_path(dir: &Path, base_lsn: u64) -> PathBuf {
    dir.join(format!("{base_lsn:020}{TMP_SUFFIX}"))
}

/// Name of a spare (recycled) segment file.
pub(crate) fn spare_path(dir: &Path, base_lsn: u64) -> PathBuf {
    dir.join(format!("{base_lsn:020}{SPARE_SUFFIX}"))
}

/// Parses a segment file name; `None` for other files.
pub(crate) fn parse_segment_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Result of scanning the batch area of a segment.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    /// Verified batches in order, with their offsets in the segment file.
    pub batches: Vec<(u64, DecodedBatch<'a>)>,
    /// Offset just after the last verified batch (where the next append goes).
    pub end_offset: u64,
    /// Why the scan stopped before the end of the bytes, if not at clean zeroed space.
    pub stop: Option<(u64, Invalid)>,
}

/// Scans `bytes` (a whole segment file including its header) from the first batch: every
/// batch's checksum is verified and LSNs must continue from `base_lsn` without gaps. A batch
/// with a valid checksum but an unexpected LSN (stale bytes) stops the scan as
/// [`Invalid::BadRecord`].
pub(crate) fn scan_batches(bytes: &[u8], base_lsn: u64) -> Scan<'_> {
    let mut at = SEGMENT_HEADER_BYTES;
    let mut expected = base_lsn;
    let mut batches = Vec::new();
    let stop = loop {
        if at >= bytes.len() {
            break None;
        }
        match decode_batch(&bytes[at..]) {
            Decoded::End => {
                // Zero length prefix: clean end only if nothing but zeros follows.
                break None;
            }
            Decoded::Invalid(why) => break Some((at as u64, why)),
            Decoded::Batch(b) => {
                if b.first_lsn != expected {
                    break Some((at as u64, Invalid::BadRecord));
                }
                expected = b.first_lsn + b.records.len() as u64;
                let len = b.len;
                batches.push((at as u64, b));
                at += len;
            }
        }
    };
    Scan {
        batches,
        end_offset: at.min(bytes.len()) as u64,
        stop,
    }
}

/// Verified batches found after damage at `from` (see [`find_valid_after`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Later {
    /// One past the highest LSN among them.
    pub end_lsn: u64,
    /// Highest `synced_before` among them: damage below it had been made durable.
    pub synced_max: u64,
    /// Offset just past the last of them.
    pub end_offset: u64,
}

/// After a bad batch at `from`, looks for later verified batches with an LSN of at least
/// `min_lsn` at aligned offsets (unacknowledged pieces of a torn write, or good data after
/// real corruption; their `synced_before` tells which).
pub(crate) fn find_valid_after(bytes: &[u8], from: u64, min_lsn: u64) -> Option<Later> {
    let mut at = (from as usize + BATCH_ALIGN).div_ceil(BATCH_ALIGN) * BATCH_ALIGN;
    let mut found: Option<Later> = None;
    // A batch holds at least one 40-byte record per LSN, so no batch in this file can start
    // beyond this LSN: a cheap filter that keeps stale and random bytes (old batches of a
    // reused segment, payload bytes) from costing a checksum each.
    let lsn_max = min_lsn.saturating_add(bytes.len() as u64 / RECORD_HEADER_BYTES as u64);
    while at + BATCH_HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&bytes[at + 8..at + 16]);
        let first_lsn = u64::from_le_bytes(lsn);
        if len as usize >= BATCH_HEADER_BYTES + RECORD_HEADER_BYTES
            && len as usize & (BATCH_ALIGN - 1) == 0
            && at + len as usize <= bytes.len()
            && (min_lsn..=lsn_max).contains(&first_lsn)
        {
            if let Decoded::Batch(b) = decode_batch(&bytes[at..]) {
                if b.first_lsn >= min_lsn {
                    let end_lsn = b.first_lsn + b.records.len() as u64;
                    let prev = found.unwrap_or(Later {
                        end_lsn,
                        synced_max: 0,
                        end_offset: 0,
                    });
                    found = Some(Later {
                        end_lsn: prev.end_lsn.max(end_lsn),
                        synced_max: prev.synced_max.max(b.synced_before),
                        end_offset: (at + b.len) as u64,
                    });
                    at += b.len;
                    continue;
                }
            }
        }
        at += BATCH_ALIGN;
    }
    found
}

/// The first 8-byte-aligned offset after `from` holding a verified batch whose first LSN is
/// at least `min_lsn` (any LSN when `None`): where listing resumes after damage. Applies the
/// same cheap filters as [`find_valid_after`] before checksumming.
pub(crate) fn next_valid_batch(bytes: &[u8], from: usize, min_lsn: Option<u64>) -> Option<usize> {
    let mut at = (from + BATCH_ALIGN).div_ceil(BATCH_ALIGN) * BATCH_ALIGN;
    let lsn_range =
        min_lsn.map(|m| m..=m.saturating_add(bytes.len() as u64 / RECORD_HEADER_BYTES as u64));
    while at + BATCH_HEADER_BYTES <= bytes.len() {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&bytes[at + 8..at + 16]);
        let first_lsn = u64::from_le_bytes(lsn);
        if len >= BATCH_HEADER_BYTES + RECORD_HEADER_BYTES
            && len & (BATCH_ALIGN - 1) == 0
            && at + len <= bytes.len()
            && lsn_range.as_ref().is_none_or(|r| r.contains(&first_lsn))
            && matches!(decode_batch(&bytes[at..]), Decoded::Batch(_))
        {
            return Some(at);
        }
        at += BATCH_ALIGN;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            format_version: FORMAT_VERSION,
            shard_id: 3,
            base_lsn: 1000,
            created_ms: 5,
            segment_bytes: 1 << 20,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = header();
        let b = encode_header(&h);
        assert_eq!(decode_header(&b), Ok(h));
        let mut bad = b;
        bad[0] = b'X';
        assert!(matches!(decode_header(&bad), Err(HeaderError::BadMagic(_))));
        let mut newer = h;
        newer.format_version = FORMAT_VERSION + 1;
        assert_eq!(
            decode_header(&encode_header(&newer)),
            Err(HeaderError::NewerVersion(FORMAT_VERSION + 1))
        );
        let mut flipped = b;
        flipped[30] ^= 1;
        assert_eq!(decode_header(&flipped), Err(HeaderError::Checksum));
        assert_eq!(
            decode_header(&[0u8; SEGMENT_HEADER_BYTES]),
            Err(HeaderError::Blank)
        );
    }

    #[test]
    fn names_round_trip() {
        let p = segment_path(Path::new("/x"), 42);
        assert_eq!(parse_segment_name(&p), Some(42));
        assert_eq!(parse_segment_name(Path::new("/x/42.seg")), None);
        assert_eq!(
            parse_segment_name(&segment_tmp_path(Path::new("/x"), 42)),
            None
        );
    }
}
