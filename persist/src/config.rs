//! Log configuration: plain data with documented defaults.

use std::path::PathBuf;

/// When an append is acknowledged relative to `fdatasync`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` before every acknowledgement (shared by all batches of one group commit).
    /// An acknowledged batch survives power loss.
    Always,
    /// Acknowledge after the write; `fdatasync` at a flush when at least this many ms passed
    /// since the last one, and on [`crate::Log::sync`] (call it from the shard's timer: the log
    /// has no timer of its own). Survives a process crash; power loss may lose the last
    /// interval.
    IntervalMs(u64),
    /// Acknowledge after the write; `fdatasync` only on segment roll, [`crate::Log::sync`] and
    /// [`crate::Log::close`]. Survives a process crash, not power loss.
    Never,
}

/// What recovery does with damaged data (picked by the operator).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Any damage, even a torn tail, fails open (for forensics: nothing is modified).
    Strict,
    /// A torn batch at the very end of the last segment is removed (zeroed) and reported;
    /// damage anywhere before the tail fails open with the file and offset.
    #[default]
    TruncateTail,
    /// Like `TruncateTail`, but a segment damaged before the tail is moved to the
    /// `quarantine/` subdirectory and reported as lost instead of failing open, and so is a
    /// hole in the LSN sequence (a sealed segment lost or shortened, see `docs/PERSIST.md`):
    /// the missing range is reported and recorded. Records after it stay readable; LSNs are
    /// never reused.
    Quarantine,
}

/// How new segment files get their disk space.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Preallocate {
    /// Write zeros over the whole segment when creating it (slow once per segment), so appends
    /// overwrite written blocks and `fdatasync` needs no extent conversion (about half the
    /// latency on the reference disk).
    #[default]
    ZeroFill,
    /// `fallocate` only (fast creation; appends convert unwritten extents, so each
    /// `fdatasync` also commits metadata).
    Fallocate,
}

/// Whether write-through appends use direct I/O (`O_DIRECT | O_DSYNC`), see
/// [`LogConfig::direct_io`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum DirectIo {
    /// Direct where the file system accepts it; elsewhere (tmpfs) buffered `O_DSYNC`, with one
    /// log line.
    #[default]
    Auto,
    /// Direct, or the log fails to open (or to create a segment) with the cause.
    On,
    /// Buffered `O_DSYNC` (the behaviour before direct I/O).
    Off,
}

/// Configuration of one log (one shard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Directory of segment files; created when missing.
    pub dir: PathBuf,
    /// Owner shard, written in every segment header and checked at open.
    pub shard_id: u32,
    /// Size of each segment file once the log is past its first segments (default 64 MiB):
    /// the largest size a segment is created with. A batch must fit in one segment.
    pub segment_bytes: u64,
    /// Size of the first segment a log creates (default 1 MiB; a multiple of 4096). Each new
    /// segment doubles the previous size up to `segment_bytes`, so a new, quiet node does not
    /// preallocate `segment_bytes` per shard; a segment is always big enough for the batch
    /// that starts it. Set it to `segment_bytes` for fixed-size segments.
    pub segment_bytes_initial: u64,
    /// Durability policy (default [`FsyncPolicy::Always`]).
    pub fsync: FsyncPolicy,
    /// Recovery behaviour on damage (default [`RecoveryMode::TruncateTail`]).
    pub recovery: RecoveryMode,
    /// Segment preallocation (default [`Preallocate::ZeroFill`]).
    pub preallocate: Preallocate,
    /// Under [`FsyncPolicy::Always`], open the active segment write-through (`O_DSYNC`) so one
    /// write does the work of write + `fdatasync`: one I/O operation per group commit instead
    /// of two (default true; on io_uring it saves a submission and a worker hand-off).
    pub write_through: bool,
    /// With `write_through` under [`FsyncPolicy::Always`], write through a second, direct
    /// descriptor (`O_DIRECT | O_DSYNC`) in aligned blocks (default [`DirectIo::Auto`]): the
    /// kernel issues such a write inline, where it hands every buffered `O_DSYNC` write to a
    /// worker thread (two cross-thread hand-offs per append). The bytes on disk are the same.
    /// Used only on segments whose blocks are written (zero-filled or reused spares): with
    /// [`Preallocate::Fallocate`] a new segment stays buffered. See `docs/PERSIST.md`,
    /// "Direct I/O".
    pub direct_io: DirectIo,
    /// Segment files compaction keeps as spares for reuse instead of deleting (default 2). A
    /// reused segment needs no zero-fill: its blocks are already written, so appends get the
    /// cheap `fdatasync` of [`Preallocate::ZeroFill`] at no creation cost. 0 disables reuse.
    pub recycle_segments_max: usize,
    /// Operator override (default false): accept, at open, segment files that are shorter than
    /// the size written in their header, or that lost their header (emptied or zero-length).
    /// Segments are preallocated and renamed into place only after their header is synced, so
    /// a crash never shortens one: a short segment means the filesystem or an operator lost
    /// data, and open refuses it ([`crate::RecoverError::ShortSegment`],
    /// [`crate::RecoverError::NoHeader`]). When set, the verified records before the cut are
    /// kept, the rest is reported as lost ([`crate::RecoveryReport::short_segments`]) and
    /// recorded, and new LSNs start above any the lost bytes could have held (LSNs are never
    /// reused). Turn it off again after the open that accepted the loss.
    pub accept_short_segments: bool,
    /// Bound on encoded bytes accepted but not yet written (default 4 MiB): appenders wait
    /// while it is full. One batch larger than the bound is accepted when nothing is pending.
    pub pending_bytes_max: usize,
}

impl LogConfig {
    /// Defaults for a log in `dir` owned by `shard_id`.
    pub fn new(dir: impl Into<PathBuf>, shard_id: u32) -> Self {
        Self {
            dir: dir.into(),
            shard_id,
            segment_bytes: 64 << 20,
            segment_bytes_initial: 1 << 20,
            fsync: FsyncPolicy::Always,
            recovery: RecoveryMode::TruncateTail,
            preallocate: Preallocate::ZeroFill,
            write_through: true,
            direct_io: DirectIo::Auto,
            recycle_segments_max: 2,
            pending_bytes_max: 4 << 20,
            accept_short_segments: false,
        }
    }
}
