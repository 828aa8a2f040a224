//! Typed errors, one enum per operation; each message names the file and offset involved.

use std::io;
use std::path::PathBuf;

use crate::record::Invalid;

/// Errors of [`crate::Log::open`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// Preparing the active segment failed: creating one (an empty directory, or after a
    /// loss recovery accepted) or reopening the last one write-through.
    #[error("preparing the active segment: {0}")]
    Create(#[source] AppendError),
}

/// Why recovery refused to open the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverError {
    /// Listing the log directory failed.
    #[error("cannot list log directory {dir}: {source}")]
    ListDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file of the log could not be opened (for reading and writing: recovery may repair
    /// it): never skipped silently.
    #[error("cannot open {file} for reading and writing: {source}")]
    CannotOpen {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file of the log could not be read (or its length not be queried): never skipped
    /// silently.
    #[error("cannot read {file} at offset {offset}: {source}")]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// Offset of the failed operation.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the repair of a file (tail truncation, quarantine move, removal of a
    /// leftover) failed.
    #[error("cannot repair {file} at offset {offset}: {source}")]
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
    /// A directory operation of a repair (creating `quarantine/`, syncing the log
    /// directory) failed.
    #[error("cannot {op} directory {dir}: {source}")]
    RepairDir {
        /// The operation (`create`, `fsync`).
        op: &'static str,
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A segment file is shorter than the size its header says it was created with.
    /// Segments are preallocated to that size before they are renamed into place, so a crash
    /// cannot shorten one: records past the cut were lost (possibly acknowledged ones).
    #[error(
        "segment {file} is {actual_bytes} bytes but was created with {expected_bytes} \
         (its header): the file was shortened and the records past byte {actual_bytes} are \
         lost; refusing to open. To accept the loss set `accept_short_segments` \
         (LogConfig; `log.accept_short_segments` in quark.toml) for one open: the records \
         before the cut are kept and the lost LSNs are never reused"
    )]
    ShortSegment {
        /// The segment file.
        file: PathBuf,
        /// Size in its header.
        expected_bytes: u64,
        /// Size found.
        actual_bytes: u64,
    },
    /// A segment file has no header: shorter than a header (zero-length included), or all
    /// zeros. A
    /// segment is renamed into place only after its header is synced, so this is lost data,
    /// not an interrupted creation (that leaves a `.seg.tmp` file).
    #[error(
        "segment {file} has no header ({actual_bytes} bytes: shorter than a header, or all \
         zero): it was emptied or truncated after creation and its records are lost; refusing \
         to open. To accept the \
         loss set `accept_short_segments` (LogConfig; `log.accept_short_segments` in \
         quark.toml) for one open: the file is moved to quarantine/ and its LSNs are never \
         reused"
    )]
    NoHeader {
        /// The segment file.
        file: PathBuf,
        /// Its length.
        actual_bytes: u64,
    },
    /// LSNs are missing between two segments (or before the first one) and no compaction,
    /// scrub or accepted loss recorded their removal in `lsn-gaps`: a sealed segment was lost,
    /// or shortened at a batch boundary.
    #[error(
        "LSNs [{first}, {end}) are missing: no segment holds them between {} and {file}, and \
         their removal was never recorded in lsn-gaps (a sealed segment was lost or \
         shortened); refusing to open. Recovery mode `quarantine` accepts the loss (reported \
         and recorded)",
        before.as_ref().map_or_else(|| "the start of the log".to_string(), |p| p.display().to_string())
    )]
    MissingLsns {
        /// First missing LSN.
        first: u64,
        /// One past the last missing LSN.
        end: u64,
        /// The segment before the hole (`None`: the hole is before the first segment).
        before: Option<PathBuf>,
        /// The segment after the hole.
        file: PathBuf,
    },
    /// The LSN gap record (`lsn-gaps`) is damaged.
    #[error("bad LSN gap record {file}: {reason}")]
    BadGaps {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The LSN gap record (`lsn-gaps`) is missing although segments of format version 2 or
    /// later exist (this build keeps it since version 2): holes in the LSN sequence could not
    /// be told from lost segments.
    #[error(
        "{file} is missing but {segment} was written by a build that keeps it: cannot tell \
         segments removed by compaction from lost ones; refusing to open (recovery mode \
         `quarantine` opens without the check and starts a new record)"
    )]
    GapsMissing {
        /// The missing file.
        file: PathBuf,
        /// A segment of format version 2 or later.
        segment: PathBuf,
    },
    /// Recording accepted losses in `lsn-gaps` failed.
    #[error("cannot record accepted LSN gaps in {file}: {source}")]
    StoreGaps {
        /// The file of the failed operation.
        file: PathBuf,
        /// The I/O error.
        source: io::Error,
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
#[non_exhaustive]
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
    /// the page cache cannot be trusted). Running out of space while preallocating a new
    /// segment is [`AppendError::NoSpace`] instead, which does not poison.
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
    /// No space for a new segment: preallocating it (`fallocate` or zero-fill) failed with
    /// `ENOSPC` (or `EDQUOT`). Nothing of the batch was written and it never will be: the
    /// batches waiting for that segment fail with this error, their LSNs are given to later
    /// batches. The log is **not** poisoned: appends resume once space is freed.
    #[error(
        "no space left for a new log segment in {dir}: it needs {bytes_needed} bytes; the \
         batch was not written (appends resume once space is freed)"
    )]
    NoSpace {
        /// The log directory.
        dir: PathBuf,
        /// Size of the segment that could not be preallocated.
        bytes_needed: u64,
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
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// Recording a segment's LSN range in `lsn-gaps` before removing it failed (the segment
    /// was kept).
    #[error("recording the removal of {segment} in {file}: {source}")]
    RecordGap {
        /// The segment that was to be removed.
        segment: PathBuf,
        /// The file of the failed operation.
        file: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Syncing the log directory after removing segments failed.
    #[error("fsync of log directory {dir} after removing segments: {source}")]
    SyncDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Errors of [`crate::Log::scrub`]. After any of them the scrub's guarantee does not hold:
/// call it again (the log stays consistent).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrubError {
    /// Syncing, sealing the active segment or copying live records forward failed (an I/O
    /// error there poisons the log, see [`AppendError::Io`]).
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Reading a segment to copy its live records failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Unlinking a segment or spare failed.
    #[error("scrub: removing {file}: {source}")]
    Remove {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Recording a segment's LSN range in `lsn-gaps` before unlinking it failed (the segment
    /// was kept).
    #[error("scrub: recording the removal of {segment} in {file}: {source}")]
    RecordGap {
        /// The segment that was to be removed.
        segment: PathBuf,
        /// The file of the failed operation.
        file: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Syncing the log directory after unlinking files failed.
    #[error("scrub: fsync of log directory {dir}: {source}")]
    SyncDir {
        /// The directory.
        dir: PathBuf,
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
