//! Typed errors, one enum per operation; each message names the file and offset involved.

use std::io;
use std::path::PathBuf;

use crate::record::Invalid;

/// Errors of [`crate::Log::open`].
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A configuration value is out of range.
    #[error("invalid log config: {field} {expected}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// Creating or listing the log directory failed.
    #[error("log directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Another process (or another open `Log`) holds the directory's lock.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// Recovery refused the existing data.
    #[error(transparent)]
    Recover(#[from] RecoverError),
    /// Creating the first segment failed.
    #[error("creating segment: {0}")]
    Create(#[source] AppendError),
}

/// Why recovery refused to open the log.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A file could not be opened or read: never skipped silently.
    #[error("cannot read segment {file} at offset {offset}: {source}")]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// Offset of the failed operation.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the repair (tail truncation or quarantine move) failed.
    #[error("cannot repair segment {file} at offset {offset}: {source}")]
    Repair {
        /// The file.
        file: PathBuf,
        /// Offset of the repair.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The file does not start with the segment magic: not a Quark log.
    #[error("{file} is not a Quark log segment (magic {found:02x?}, expected {expected:02x?})")]
    BadMagic {
        /// The file.
        file: PathBuf,
        /// Bytes found at offset 0.
        found: [u8; 8],
        /// The magic expected.
        expected: [u8; 8],
    },
    /// Written by a newer format version than this code reads.
    #[error("{file} has format version {found}; this build reads up to {supported}")]
    NewerVersion {
        /// The file.
        file: PathBuf,
        /// Version found.
        found: u32,
        /// Newest version supported.
        supported: u32,
    },
    /// The segment belongs to another shard's log.
    #[error("{file} belongs to shard {found}, this log is shard {expected}")]
    ShardMismatch {
        /// The file.
        file: PathBuf,
        /// Shard id in the header.
        found: u32,
        /// Shard id configured.
        expected: u32,
    },
    /// Damaged data before the tail (or anywhere, in `Strict` mode).
    #[error("corrupt log data in {file} at offset {offset}: {reason} (recovery mode {mode})")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Offset of the first bad byte range.
        offset: u64,
        /// What is wrong there.
        reason: Invalid,
        /// The recovery mode that refused it.
        mode: &'static str,
    },
    /// The header is damaged or disagrees with the file name.
    #[error("bad segment header in {file}: {reason}")]
    BadHeader {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// Segments overlap in LSN (a segment starts before the previous one ends).
    #[error("{file} starts at LSN {base_lsn} but the previous segment ends at LSN {expected}")]
    LsnOverlap {
        /// The file.
        file: PathBuf,
        /// Its base LSN.
        base_lsn: u64,
        /// The first LSN it could start at.
        expected: u64,
    },
}

/// Errors of [`crate::Log::append`] and [`crate::Log::sync`].
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The batch has no record.
    #[error("empty batch")]
    EmptyBatch,
    /// A key is longer than 65,535 bytes.
    #[error("record {index}: key of {key_bytes} bytes exceeds 65535")]
    KeyTooLong {
        /// Record index in the batch.
        index: usize,
        /// Key length.
        key_bytes: usize,
    },
    /// A record's payload exceeds the format's bound.
    #[error("record {index}: payload of {payload_bytes} bytes exceeds the record bound")]
    PayloadTooLong {
        /// Record index in the batch.
        index: usize,
        /// Payload length.
        payload_bytes: usize,
    },
    /// A [`crate::RecordKind::Truncate`] record's payload is not the 8-byte bound (build it
    /// with [`crate::Batch::truncate`]).
    #[error("record {index}: truncate payload of {payload_bytes} bytes, expected 8")]
    BadTruncate {
        /// Record index in the batch.
        index: usize,
        /// Payload length.
        payload_bytes: usize,
    },
    /// The encoded batch does not fit in one segment.
    #[error("batch of {batch_bytes} encoded bytes exceeds the {max_bytes} bytes a segment holds")]
    BatchTooLarge {
        /// Encoded size.
        batch_bytes: usize,
        /// Largest batch a segment holds.
        max_bytes: usize,
    },
    /// A write, sync or segment creation failed. The log is now poisoned: every later append
    /// fails with [`AppendError::Poisoned`]; reopen it to recover (after an `fdatasync` error
    /// the page cache cannot be trusted).
    #[error("{op} failed on {file} at offset {offset}: {source}")]
    Io {
        /// The operation (`write`, `fdatasync`, `create segment`...).
        op: &'static str,
        /// The file.
        file: PathBuf,
        /// Offset of the operation.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// An earlier I/O failure poisoned the log; this batch is not durable.
    #[error("log poisoned by an earlier {op} failure on {file} at offset {offset} ({kind})")]
    Poisoned {
        /// The failed operation.
        op: &'static str,
        /// The file.
        file: PathBuf,
        /// Offset.
        offset: u64,
        /// Kind of the original error.
        kind: io::ErrorKind,
    },
    /// The log was closed.
    #[error("log closed")]
    Closed,
}

/// Errors of reads and scans.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// [`crate::Log::read_many`]: no acknowledged record has this LSN (not yet written, or
    /// compacted away since the caller got it: ask [`crate::Log::key_lsns`] again).
    #[error("no record at LSN {lsn} (not yet acknowledged, or compacted away)")]
    NotFound {
        /// The first missing LSN (in LSN order).
        lsn: u64,
    },
    /// Reading the file failed.
    #[error("read failed on {file} at offset {offset}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// Offset.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// Bytes that recovery verified no longer verify (disk corruption after open).
    #[error("corrupt log data in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Offset.
        offset: u64,
        /// What is wrong.
        reason: Invalid,
    },
}

/// Errors of [`crate::Log::compact`].
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// Reading a segment to copy its live records failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Copying live records forward failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Removing a segment failed.
    #[error("removing segment {file}: {source}")]
    Remove {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Errors of [`crate::Log::scrub`]. After any of them the scrub's guarantee does not hold:
/// call it again (the log stays consistent).
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    /// Syncing, sealing the active segment or copying live records forward failed (an I/O
    /// error there poisons the log, see [`AppendError::Io`]).
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Reading a segment to copy its live records failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Unlinking a segment or spare, or syncing the directory, failed.
    #[error("scrub: removing {file}: {source}")]
    Remove {
        /// The file (or the directory, for its sync).
        file: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Zero-filling the unused tail of a kept segment failed.
    #[error("scrub: zero-filling {file} at offset {offset}: {source}")]
    Zero {
        /// The segment file.
        file: PathBuf,
        /// Offset of the failed write or sync.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
}
