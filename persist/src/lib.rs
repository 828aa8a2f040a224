//! Quark: the per-shard durable log (segments, group commit, recovery, compaction).
//!
//! Each shard owns one [`Log`]: a directory of preallocated segment files into which
//! journaling, durable jobs, the outbox/inbox and workflows write atomic [`Batch`]es. An append
//! resolves with the batch's [`LsnRange`] once it is durable under the [`FsyncPolicy`]; batches
//! that arrive while a flush is in flight share the next write and `fdatasync` (group commit,
//! no timer, no spawned task). Open recovers the log under a [`RecoveryMode`], verifying every
//! checksum and rebuilding the key index.
//!
//! The log never names an executor: all I/O goes through the [`LogIo`] seam. [`StdIo`] is the
//! blocking backend for tests and tools (drive it with [`block_on`]);
//! `quark_shard::rt::log_io` is the io_uring backend used on shard threads.
//!
//! See `docs/PERSIST.md` for the guide and `docs/LOG_FORMAT.md` for the bytes.
#![deny(missing_docs)]

mod compaction;
mod config;
mod error;
mod gaps;
mod group_commit;
mod index;
mod inspect;
mod io;
mod lock;
mod log;
mod read;
mod record;
mod recovery;
mod scrub;
mod segment;
pub mod sim;

pub use compaction::{CompactionPolicy, CompactionReport};
pub use config::{DirectIo, FsyncPolicy, LogConfig, Preallocate, RecoveryMode};
pub use error::{AppendError, CompactError, OpenError, ReadError, RecoverError, ScrubError};
pub use gaps::GAPS_FILE;
pub use inspect::{
    inspect_dir, inspect_segment, Damage, DamageKind, DirInspection, InspectError, InspectedRecord,
    SegmentInspection,
};
pub use io::{
    block_on, dio_align, fallocate, open_direct_pair, AlignedBuf, LogFile, LogIo, StdFile, StdIo,
};
pub use lock::{DirLock, LockError, LockHolder, LockMode, LOCK_FILE};
pub use log::{group_commit_bucket, Log, LogStats, LsnRange, GROUP_COMMIT_BUCKETS};
pub use read::Scanner;
pub use record::{Batch, Invalid, NewRecord, Record, RecordKind, FLAG_FORWARDED};
pub use recovery::{MissingRange, QuarantinedSegment, RecoveryReport, ShortSegment, TruncatedTail};
pub use scrub::ScrubReport;
pub use segment::{
    SegmentHeader, FORMAT_VERSION, QUARANTINE_DIR, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
};

/// Decoder entry points exposed for property tests and fuzzing of outside bytes.
#[doc(hidden)]
pub mod fuzz {
    /// Decodes one batch frame at the start of `bytes`; returns the records (owned) only when
    /// the frame verified, and the frame length.
    pub fn decode_batch(bytes: &[u8]) -> Option<(usize, Vec<crate::Record>)> {
        match crate::record::decode_batch(bytes) {
            crate::record::Decoded::Batch(b) => {
                Some((b.len, b.records.iter().map(|r| r.to_record()).collect()))
            }
            _ => None,
        }
    }

    /// Recomputes and rewrites the checksum of the batch frame at `offset` of `bytes` (a
    /// segment image or a frame), for tests that simulate deliberate tampering: edit a
    /// payload, reseal, and the batch verifies again. Returns false (and changes nothing)
    /// when no plausible frame header is there (length < 64, not a multiple of 8, or past the
    /// end of `bytes`).
    pub fn reseal_batch_at(bytes: &mut [u8], offset: usize) -> bool {
        let Some(h) = bytes.get(offset..offset.saturating_add(4)) else {
            return false;
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let min = crate::record::BATCH_HEADER_BYTES + crate::record::RECORD_HEADER_BYTES;
        if len < min || !len.is_multiple_of(crate::record::BATCH_ALIGN) {
            return false;
        }
        let Some(frame) = bytes.get_mut(offset..offset.saturating_add(len)) else {
            return false;
        };
        let crc = crc32c::crc32c(&frame[8..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        true
    }

    /// Inspects a segment image in memory as [`crate::inspect_segment`] does a file.
    pub fn inspect_image(bytes: &[u8]) -> crate::SegmentInspection {
        crate::inspect::inspect_image(std::path::Path::new("image.seg"), bytes)
    }

    /// Scans a whole segment image as recovery does (header, then batches); returns the verified
    /// batches as (offset, frame length, records).
    pub fn scan_segment(bytes: &[u8]) -> Vec<(u64, usize, Vec<crate::Record>)> {
        let Ok(h) = crate::segment::decode_header(bytes) else {
            return Vec::new();
        };
        let scan = crate::segment::scan_batches(bytes, h.base_lsn);
        let _ = crate::segment::find_valid_after(bytes, scan.end_offset, h.base_lsn);
        scan.batches
            .iter()
            .map(|(o, b)| (*o, b.len, b.records.iter().map(|r| r.to_record()).collect()))
            .collect()
    }
}
