//! The log handle and its shard-local state: segments, key index, group-commit queues.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::Waker;

use crate::config::{DirectIo, LogConfig, Preallocate};
use crate::error::{AppendError, OpenError};
use crate::gaps::Gaps;
use crate::index::{Dead, KeyIndex, SegmentStats};
use crate::io::{AlignedBuf, LogFile, LogIo};
use crate::record::{RecordKind, BATCH_HEADER_BYTES, RECORD_HEADER_BYTES};
use crate::recovery::{recover, RecoveryReport};
use crate::segment::{
    encode_header, segment_path, segment_tmp_path, SegmentHeader, FORMAT_VERSION,
    SEGMENT_HEADER_BYTES,
};

/// A sparse read index entry is kept per this many bytes of a segment.
pub(crate) const SPARSE_STEP_BYTES: u64 = 16 * 1024;
/// Completed flush buffers kept for reuse.
pub(crate) const FREE_BUFS_MAX: usize = 2;
/// Size of the zero buffer used to zero-fill new segments.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// Half-open range of LSNs `[first, end)` assigned to one batch.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LsnRange {
    /// First LSN of the batch.
    pub first: u64,
    /// One past the last LSN of the batch.
    pub end: u64,
}

impl LsnRange {
    /// Number of records.
    pub fn len(&self) -> u64 {
        self.end - self.first
    }

    /// True when empty (never for a range returned by append).
    pub fn is_empty(&self) -> bool {
        self.end == self.first
    }
}

/// Counters and sizes of a log (cheap to read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Segment files in the log directory.
    pub segment_count: usize,
    /// Bytes the segment files and spares occupy (the sum of their preallocated sizes).
    pub disk_bytes: u64,
    /// Next LSN to be assigned.
    pub next_lsn: u64,
    /// Batches with LSN below this are acknowledged (readable; durable under the policy).
    pub acked_lsn: u64,
    /// Batches with LSN below this were covered by an `fdatasync`.
    pub synced_lsn: u64,
    /// Keys in the index.
    pub key_count: usize,
    /// Flushes (writes) performed since open.
    pub flush_count: u64,
    /// Segments created by reusing a spare file since open.
    pub segments_recycled: u64,
    /// Spare segment files kept for reuse.
    pub spare_count: usize,
    /// Flushes made durable since open: `fdatasync` calls, or write-through writes
    /// ([`crate::LogConfig::write_through`]).
    pub sync_count: u64,
    /// Batches appended (queued) since open.
    pub append_count: u64,
    /// Records in the batches appended since open.
    pub appended_records: u64,
    /// Encoded bytes of the batches appended since open (headers included).
    pub appended_bytes: u64,
    /// Batches written by the flushes since open: `flushed_batches / flush_count` is the mean
    /// group-commit size (batches per write).
    pub flushed_batches: u64,
    /// Data bytes written by the flushes since open (without the end marker).
    pub flushed_bytes: u64,
    /// Flushes by group-commit size (batches per write): bucket `i` counts flushes of at most
    /// `2^i` batches (the last bucket: any larger flush). See [`GROUP_COMMIT_BUCKETS`].
    pub group_commit_sizes: [u64; GROUP_COMMIT_BUCKETS],
    /// Flushes written as aligned direct (`O_DIRECT | O_DSYNC`) writes since open
    /// ([`crate::LogConfig::direct_io`]); the other write-through flushes were buffered.
    pub direct_writes: u64,
    /// How long opening the log took (recovery: scanning the segments and rebuilding the
    /// index), in microseconds.
    pub recovery_us: u64,
}

/// Buckets of [`LogStats::group_commit_sizes`]: at most 1, 2, 4, … 512 batches, and more.
pub const GROUP_COMMIT_BUCKETS: usize = 11;

/// The bucket of [`LogStats::group_commit_sizes`] for a flush of `batches` batches.
pub fn group_commit_bucket(batches: usize) -> usize {
    // ceil(log2(batches)), clamped to the last bucket; 0 and 1 batch land in bucket 0.
    let b = batches.max(1).next_power_of_two().trailing_zeros() as usize;
    b.min(GROUP_COMMIT_BUCKETS - 1)
}

/// One segment file and what the log knows about it.
pub(crate) struct Segment<F> {
    pub base_lsn: u64,
    pub path: PathBuf,
    pub file: Rc<F>,
    /// Size the file was preallocated to (its header's `segment_bytes`): batches end at or
    /// before it.
    pub capacity: u64,
    /// One past the last LSN written to this segment.
    pub end_lsn: u64,
    /// Offset just after the last written batch.
    pub data_end: u64,
    /// Offset below which the segment is known durable (covered by an `fdatasync`).
    pub synced_end: u64,
    /// `file` was opened write-through (`O_DSYNC`): a completed write is durable.
    pub write_through: bool,
    /// `file` was opened by [`LogIo::open_direct`]: flushes are aligned direct writes.
    pub direct: Option<DirectTail>,
    /// `(first_lsn, offset)` of some batches, at least one per [`SPARSE_STEP_BYTES`].
    pub sparse: Vec<(u64, u64)>,
    pub stats: SegmentStats,
    /// Every byte after `data_end` is known to be zero (a fresh file, or zeroed by
    /// [`Log::scrub`]); false for a reused spare or a recovered segment with other bytes there.
    pub tail_clean: bool,
}

/// Whether opening with `O_DIRECT` failed because the file system (or backend) does not do
/// direct I/O: `EINVAL` (tmpfs), `EOPNOTSUPP`, or `Unsupported` from a backend without it.
fn refuses_direct(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
        )
}

/// The direct-write state of an active segment (see `docs/PERSIST.md`, "Direct I/O").
#[derive(Debug)]
pub(crate) struct DirectTail {
    /// Offset, length and memory alignment of a direct write (a power of two).
    pub align: u64,
    /// `(end, bytes)`: the bytes of `[end rounded down to align, end)`, as on disk, where
    /// `end` is the segment's `data_end` when they were taken. `None` (or another `end` than
    /// the next write's position) makes the next flush read them from the file first.
    pub tail: Option<(u64, Vec<u8>)>,
    /// The buffer of the last direct write, reused when the kernel has returned it.
    pub spare: Option<Rc<AlignedBuf>>,
}

impl<F> Segment<F> {
    pub(crate) fn note_batch(&mut self, first_lsn: u64, offset: u64) {
        if self
            .sparse
            .last()
            .is_none_or(|&(_, o)| offset >= o + SPARSE_STEP_BYTES)
        {
            self.sparse.push((first_lsn, offset));
        }
    }
}

/// An index update carried with a chunk until its batches are acknowledged.
pub(crate) struct IndexOp {
    pub key: Vec<u8>,
    pub kind: RecordKind,
    pub origin: u64,
    /// [`crate::record::floor_of`] of the record.
    pub floor: u64,
    pub lsn: u64,
    pub bytes: u64,
    pub expires_at_ms: Option<u64>,
}

/// Encoded batches that go out in one write at one position of one segment.
pub(crate) struct Chunk {
    /// Starts a new segment whose base LSN is `first_lsn`.
    pub roll: bool,
    pub pos: u64,
    /// Capacity of the segment the chunk goes to, at least (a new segment for a roll chunk
    /// is created at least this big): `pos` + bytes stay within it.
    pub cap: u64,
    /// Set when the chunk was dropped unwritten (no space for its new segment): its
    /// appenders fail with [`AppendError::NoSpace`]; its LSNs go to later batches.
    pub dropped: Rc<Cell<bool>>,
    pub first_lsn: u64,
    pub end_lsn: u64,
    pub buf: Rc<Vec<u8>>,
    /// `(first_lsn, offset relative to pos)` of each batch.
    pub batches: Vec<(u64, u64)>,
    pub ops: Vec<IndexOp>,
    /// Bytes of batches in `buf` (set when a flusher takes the chunk; `buf` may then carry an
    /// end marker after them).
    pub data_len: u64,
}

/// What poisoned the log.
#[derive(Clone, Debug)]
pub(crate) struct Poison {
    pub op: &'static str,
    pub file: PathBuf,
    pub offset: u64,
    pub kind: io::ErrorKind,
}

pub(crate) struct State<F> {
    pub segments: BTreeMap<u64, Segment<F>>,
    pub index: KeyIndex,
    pub next_lsn: u64,
    pub acked_lsn: u64,
    pub synced_lsn: u64,
    pub last_sync_ms: u64,
    /// Chunks accepted but not taken by a flusher, in LSN order.
    pub pending: VecDeque<Chunk>,
    /// Bytes in `pending` and `inflight`.
    pub pending_bytes: usize,
    /// Offset after the last assigned byte in the segment the newest chunk targets.
    pub tail_pos: u64,
    /// Capacity of the segment the newest chunk targets (the active one when none is queued).
    pub tail_cap: u64,
    /// Size the next new segment gets at least (doubles per new segment up to
    /// `segment_bytes`).
    pub next_cap: u64,
    /// What the last [`AppendError::NoSpace`] was about (directory, bytes needed), for the
    /// appenders whose chunks were dropped with it.
    pub no_space: Option<(PathBuf, u64)>,
    /// LSN ranges absent on purpose (`lsn-gaps`, see `gaps.rs`), as last stored.
    pub gaps: Gaps,
    /// The chunk a flusher took and has not completed (kept when a flusher is dropped).
    pub inflight: Option<Chunk>,
    /// A leader is flushing.
    pub flushing: bool,
    pub poisoned: Option<Poison>,
    pub closed: bool,
    /// Tasks waiting for a flush to complete, for leadership or for pending space.
    pub waiters: Vec<Waker>,
    pub flush_count: u64,
    pub sync_count: u64,
    /// Counters of [`LogStats`] (plain fields: the log is shard-local, read at scrape time).
    pub append_count: u64,
    pub appended_records: u64,
    pub appended_bytes: u64,
    pub flushed_batches: u64,
    pub flushed_bytes: u64,
    pub group_commit_sizes: [u64; GROUP_COMMIT_BUCKETS],
    pub recovery_us: u64,
    /// Spare segment files available for reuse (bounded by `recycle_segments_max`).
    pub spares: Vec<PathBuf>,
    /// Write buffers of completed flushes kept for reuse (at most [`FREE_BUFS_MAX`]): large
    /// batches then cost no fresh allocation and page faults per flush.
    pub free_bufs: Vec<Vec<u8>>,
    pub segments_recycled: u64,
    /// A compaction or scrub is running (they exclude each other, see [`Log::maintenance`]).
    pub maintenance: bool,
    /// The directory's exclusive lock: released by [`Log::close`] or when the last handle drops.
    pub lock: Option<crate::lock::DirLock>,
    /// `direct_io = "auto"` found the file system refusing `O_DIRECT` (logged once; later
    /// segments do not try again).
    pub direct_refused: bool,
    /// Flushes written as direct writes since open (see [`LogStats::direct_writes`]).
    pub direct_writes: u64,
}

/// Held by the one compaction or scrub running; releases and wakes waiters when dropped.
pub(crate) struct Maintenance<'a, IO: LogIo>(&'a Log<IO>);

impl<IO: LogIo> Drop for Maintenance<'_, IO> {
    fn drop(&mut self) {
        let mut st = self.0.inner.state.borrow_mut();
        st.maintenance = false;
        st.wake_all();
    }
}

impl<F> State<F> {
    pub(crate) fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    pub(crate) fn active(&self) -> &Segment<F> {
        self.segments
            .values()
            .next_back()
            .expect("invariant: an open log always has an active segment")
    }

    /// Capacity for a new segment that starts with a batch of `batch_bytes` encoded bytes: at
    /// least `next_cap`, at least big enough for the batch, at most `max`; advances `next_cap`.
    pub(crate) fn take_cap(&mut self, batch_bytes: usize, max: u64) -> u64 {
        let need = (SEGMENT_HEADER_BYTES + batch_bytes + 8).next_multiple_of(4096) as u64;
        let cap = self.next_cap.max(need).min(max);
        self.next_cap = cap.saturating_mul(2).min(max);
        cap
    }

    pub(crate) fn active_mut(&mut self) -> &mut Segment<F> {
        self.segments
            .values_mut()
            .next_back()
            .expect("invariant: an open log always has an active segment")
    }

    /// Applies one acknowledged record to the index and segment stats.
    pub(crate) fn account(&mut self, op: &IndexOp, dead: &mut Vec<Dead>) {
        let rec = AccountRecord {
            key: &op.key,
            kind: op.kind,
            origin: op.origin,
            floor: op.floor,
            lsn: op.lsn,
            bytes: op.bytes,
            expires_at_ms: op.expires_at_ms,
        };
        account(&mut self.segments, &mut self.index, &rec, dead);
    }
}

/// A record to account, borrowed.
pub(crate) struct AccountRecord<'a> {
    pub key: &'a [u8],
    pub kind: RecordKind,
    pub origin: u64,
    /// [`crate::record::floor_of`] of the record.
    pub floor: u64,
    pub lsn: u64,
    pub bytes: u64,
    pub expires_at_ms: Option<u64>,
}

fn segment_of<F>(segments: &mut BTreeMap<u64, Segment<F>>, lsn: u64) -> Option<&mut Segment<F>> {
    segments
        .range_mut(..=lsn)
        .next_back()
        .map(|(_, s)| s)
        .filter(|s| lsn < s.end_lsn)
}

/// Applies one record (in LSN order) to the key index and the liveness stats of the segments
/// holding it and the records it supersedes.
pub(crate) fn account<F>(
    segments: &mut BTreeMap<u64, Segment<F>>,
    index: &mut KeyIndex,
    r: &AccountRecord<'_>,
    dead: &mut Vec<Dead>,
) {
    dead.clear();
    let live = index.apply(r.key, r.kind, r.origin, r.lsn, r.bytes, r.floor, dead);
    if let Some(seg) = segment_of(segments, r.lsn) {
        seg.stats.add(r.bytes, live, r.expires_at_ms);
    }
    for d in dead.iter() {
        if d.lsn == r.lsn {
            continue; // dead on arrival: never counted live
        }
        if let Some(seg) = segment_of(segments, d.lsn) {
            seg.stats.kill(d.bytes);
        }
    }
}

pub(crate) struct Inner<IO: LogIo> {
    pub io: IO,
    pub config: LogConfig,
    pub state: RefCell<State<IO::File>>,
}

/// A shard's durable log: a directory of preallocated segment files with group commit.
///
/// The handle is cheap to clone (`Rc`) and is used from tasks of one thread; it is not `Send`.
/// Guarantees:
/// - LSNs are assigned in append order, are contiguous and never reused (not even after
///   quarantine or compaction).
/// - A batch is atomic: after any crash it is either entirely recovered or absent.
/// - [`Log::append`] resolves only once its batch is written and, under
///   [`crate::FsyncPolicy::Always`], covered by an `fdatasync`; batches that arrive while a
///   flush is in flight share the next write and `fdatasync`.
///
/// ```
/// use quark_persist::{block_on, Batch, Log, LogConfig, StdIo};
/// let dir = tempfile::tempdir().unwrap();
/// let mut config = LogConfig::new(dir.path().join("log"), 0);
/// config.segment_bytes = 1 << 20;
/// block_on(async {
///     let (log, _report) = Log::open(StdIo, config).await.unwrap();
///     let mut batch = Batch::new();
///     batch.event(b"actor-1", b"hello");
///     let range = log.append(&batch).await.unwrap();
///     let rec = log.read(range.first).await.unwrap().unwrap();
///     assert_eq!(rec.payload, b"hello");
///     log.close().await.unwrap();
/// });
/// ```
pub struct Log<IO: LogIo> {
    pub(crate) inner: Rc<Inner<IO>>,
}

impl<IO: LogIo> Clone for Log<IO> {
    fn clone(&self) -> Self {
        Self {
            inner: Rc::clone(&self.inner),
        }
    }
}

/// A copy of a segment's bookkeeping (see [`Log::segment_view`]).
pub(crate) struct SegmentView<F> {
    pub stats: SegmentStats,
    pub file: Rc<F>,
    pub path: PathBuf,
    /// Offset of the first batch (where a scan of the whole segment starts).
    pub first_offset: u64,
    pub data_end: u64,
    pub tail_clean: bool,
}

impl<IO: LogIo> Log<IO> {
    /// Opens (or creates) the log in `config.dir`: recovers every segment under
    /// `config.recovery` (verifying every checksum and rebuilding the key index), then makes
    /// the last segment the active one (creating a first segment if the directory is empty).
    ///
    /// Errors: [`OpenError::Recover`] names the file and offset of any damage the recovery mode
    /// does not accept, a wrong magic, a newer format version or an unreadable file;
    /// [`OpenError::Lock`] when another process (or another open `Log`) holds the directory:
    /// the log keeps an exclusive [`crate::DirLock`] on `config.dir` until [`Log::close`] or until
    /// its last handle drops.
    pub async fn open(io: IO, config: LogConfig) -> Result<(Self, RecoveryReport), OpenError> {
        let min_segment = (SEGMENT_HEADER_BYTES + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES) as u64;
        if config.segment_bytes < min_segment.max(4096) {
            return Err(OpenError::InvalidConfig {
                field: "segment_bytes",
                expected: "at least 4096",
            });
        }
        if config.segment_bytes & 4095 != 0 {
            return Err(OpenError::InvalidConfig {
                field: "segment_bytes",
                expected: "a multiple of 4096",
            });
        }
        if config.segment_bytes > u32::MAX as u64 {
            return Err(OpenError::InvalidConfig {
                field: "segment_bytes",
                expected: "at most 4 GiB - 1",
            });
        }
        if config.segment_bytes_initial < 4096 || config.segment_bytes_initial & 4095 != 0 {
            return Err(OpenError::InvalidConfig {
                field: "segment_bytes_initial",
                expected: "a multiple of 4096, at least 4096",
            });
        }
        if config.pending_bytes_max == 0 {
            return Err(OpenError::InvalidConfig {
                field: "pending_bytes_max",
                expected: "greater than 0",
            });
        }
        io.create_dir_all(&config.dir)
            .await
            .map_err(|source| OpenError::Dir {
                dir: config.dir.clone(),
                source,
            })?;
        let lock = io.lock_dir(&config.dir)?;
        let recovery_started = std::time::Instant::now();
        let recovered = recover(&io, &config).await?;
        let recovery_us = u64::try_from(recovery_started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let now = io.now_ms();
        let max = config.segment_bytes;
        // Sizes keep doubling from the last segment's (a restarted node does not start over).
        let next_cap = recovered
            .segments
            .values()
            .next_back()
            .map_or(config.segment_bytes_initial, |s| {
                s.capacity.saturating_mul(2)
            })
            .max(config.segment_bytes_initial)
            .min(max);
        let state = State {
            segments: recovered.segments,
            index: recovered.index,
            next_lsn: recovered.next_lsn,
            acked_lsn: recovered.next_lsn,
            synced_lsn: recovered.next_lsn,
            last_sync_ms: now,
            pending: VecDeque::new(),
            pending_bytes: 0,
            tail_pos: 0,
            tail_cap: 0,
            next_cap,
            no_space: None,
            gaps: recovered.gaps,
            inflight: None,
            flushing: false,
            poisoned: None,
            closed: false,
            waiters: Vec::new(),
            flush_count: 0,
            sync_count: 0,
            append_count: 0,
            appended_records: 0,
            appended_bytes: 0,
            flushed_batches: 0,
            flushed_bytes: 0,
            group_commit_sizes: [0; GROUP_COMMIT_BUCKETS],
            recovery_us,
            spares: recovered.report.spares.clone(),
            free_bufs: Vec::new(),
            segments_recycled: 0,
            maintenance: false,
            lock,
            direct_refused: false,
            direct_writes: 0,
        };
        let log = Log {
            inner: Rc::new(Inner {
                io,
                config,
                state: RefCell::new(state),
            }),
        };
        let need_new = {
            let st = log.inner.state.borrow();
            st.segments
                .values()
                .next_back()
                .is_none_or(|s| s.end_lsn != st.next_lsn)
        };
        if need_new {
            let (base, cap) = {
                let mut st = log.inner.state.borrow_mut();
                (st.next_lsn, st.take_cap(0, max))
            };
            log.create_segment(base, cap)
                .await
                .map_err(OpenError::Create)?;
        }
        if log.wants_write_through() && !log.inner.state.borrow().active().write_through {
            let (path, capacity) = {
                let st = log.inner.state.borrow();
                (st.active().path.clone(), st.active().capacity)
            };
            // A recovered segment was zero-filled when created under `ZeroFill`; under
            // `Fallocate` it may hold unwritten extents, which a direct write would convert.
            let written = log.inner.config.preallocate == Preallocate::ZeroFill;
            let (file, direct) = log
                .open_active(&path, capacity, written)
                .await
                .map_err(OpenError::Create)?;
            let mut st = log.inner.state.borrow_mut();
            let active = st.active_mut();
            active.file = Rc::new(file);
            active.write_through = true;
            active.direct = direct;
        }
        {
            let mut st = log.inner.state.borrow_mut();
            st.tail_pos = st.active().data_end;
            st.tail_cap = st.active().capacity;
        }
        Ok((log, recovered.report))
    }

    /// Waits until no compaction or scrub runs, then holds that right until the guard drops:
    /// compaction turning segments into spares during a scrub would put stale bytes back.
    pub(crate) async fn maintenance(&self) -> Maintenance<'_, IO> {
        std::future::poll_fn(|cx| {
            let mut st = self.inner.state.borrow_mut();
            if st.maintenance {
                st.waiters.push(cx.waker().clone());
                std::task::Poll::Pending
            } else {
                st.maintenance = true;
                std::task::Poll::Ready(())
            }
        })
        .await;
        Maintenance(self)
    }

    /// Opens an active segment write-through, direct when [`LogConfig::direct_io`] asks for it,
    /// the backend and file system accept it, the segment's blocks are `written` (not
    /// unwritten extents) and its capacity is a multiple of the alignment. `direct_io = "auto"`
    /// falls back to buffered write-through with one log line per log; `"on"` fails.
    pub(crate) async fn open_active(
        &self,
        path: &Path,
        capacity: u64,
        written: bool,
    ) -> Result<(IO::File, Option<DirectTail>), AppendError> {
        let inner = &self.inner;
        let io_err = |op: &'static str| {
            let file = path.to_path_buf();
            move |source| AppendError::Io {
                op,
                file,
                offset: 0,
                source,
            }
        };
        let mode = inner.config.direct_io;
        let refused = inner.state.borrow().direct_refused;
        if mode == DirectIo::Off || (mode == DirectIo::Auto && (refused || !written)) {
            let file = inner
                .io
                .open_write_through(path)
                .await
                .map_err(io_err("open segment write-through"))?;
            return Ok((file, None));
        }
        match inner.io.open_direct(path).await {
            Ok(file) => {
                let align = file.direct_align().unwrap_or(4096) as u64;
                if capacity.is_multiple_of(align) {
                    return Ok((
                        file,
                        Some(DirectTail {
                            align,
                            tail: None,
                            spare: None,
                        }),
                    ));
                }
                let e = io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("segment size {capacity} is not a multiple of the direct I/O alignment {align}"),
                );
                if mode == DirectIo::On {
                    return Err(io_err("open segment direct (O_DIRECT)")(e));
                }
                tracing::info!(segment = %path.display(), "direct I/O not used for this segment: {e}");
            }
            // Only a refusal of O_DIRECT falls back; any other error (a missing file, EIO)
            // fails as opening the segment would.
            Err(e) if mode == DirectIo::On || !refuses_direct(&e) => {
                return Err(io_err("open segment direct (O_DIRECT)")(e));
            }
            Err(e) => {
                inner.state.borrow_mut().direct_refused = true;
                tracing::info!(
                    dir = %inner.config.dir.display(),
                    "log direct_io = auto: the file system refuses O_DIRECT ({e}); appends use buffered O_DSYNC writes"
                );
            }
        }
        let file = inner
            .io
            .open_write_through(path)
            .await
            .map_err(io_err("open segment write-through"))?;
        Ok((file, None))
    }

    /// Whether active segments are opened write-through (`O_DSYNC`).
    pub(crate) fn wants_write_through(&self) -> bool {
        self.inner.config.write_through && self.inner.config.fsync == crate::FsyncPolicy::Always
    }

    /// Creates, preallocates and installs a new active segment starting at `base_lsn`, of
    /// `cap` bytes (a reused spare has `segment_bytes`, never less). Crash-safe: the file is
    /// prepared under a temporary name, synced, then renamed (replacing an empty active
    /// segment of the same base that is too small) and the directory synced. Idempotent if a
    /// previous attempt was interrupted.
    ///
    /// `ENOSPC`/`EDQUOT` while preallocating (before anything of the segment counts) removes
    /// the temporary file and returns [`AppendError::NoSpace`]; other errors are
    /// [`AppendError::Io`].
    pub(crate) async fn create_segment(&self, base_lsn: u64, cap: u64) -> Result<(), AppendError> {
        let inner = &self.inner;
        let dir = &inner.config.dir;
        let tmp = segment_tmp_path(dir, base_lsn);
        let path = segment_path(dir, base_lsn);
        let no_space =
            |e: &io::Error| matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
        let io_err = |op: &'static str, file: &PathBuf, offset: u64| {
            let file = file.clone();
            move |source| AppendError::Io {
                op,
                file,
                offset,
                source,
            }
        };
        let spare = inner.state.borrow_mut().spares.pop();
        let recycled = spare.is_some();
        let seg_bytes = if recycled {
            inner.config.segment_bytes.max(cap)
        } else {
            cap
        };
        if let Some(spare) = spare {
            // A spare's blocks are written already; its stale batches carry older LSNs and sit
            // behind the end marker written with the header, so recovery never takes them.
            inner.io.rename(&spare, &tmp).await.map_err(io_err(
                "reuse spare segment",
                &spare,
                0,
            ))?;
        }
        let file = inner
            .io
            .open(&tmp, true)
            .await
            .map_err(io_err("create segment", &tmp, 0))?;
        if !recycled {
            file.set_len(0)
                .await
                .map_err(io_err("truncate segment", &tmp, 0))?;
            if let Err(e) = file.allocate(seg_bytes).await {
                if no_space(&e) {
                    return Err(self.no_space_cleanup(file, &tmp, seg_bytes, e).await);
                }
                return Err(io_err("fallocate segment", &tmp, 0)(e));
            }
        }
        if !recycled && inner.config.preallocate == Preallocate::ZeroFill {
            let zeros = Rc::new(vec![0u8; ZERO_CHUNK_BYTES]);
            let mut pos = 0;
            while pos < seg_bytes {
                let n = (seg_bytes - pos).min(ZERO_CHUNK_BYTES as u64) as usize;
                let buf = if n == ZERO_CHUNK_BYTES {
                    Rc::clone(&zeros)
                } else {
                    Rc::new(vec![0u8; n])
                };
                if let Err(e) = file.write_all_at(buf, pos).await {
                    if no_space(&e) {
                        return Err(self.no_space_cleanup(file, &tmp, seg_bytes, e).await);
                    }
                    return Err(io_err("zero-fill segment", &tmp, pos)(e));
                }
                pos += n as u64;
            }
        }
        let header = encode_header(&SegmentHeader {
            format_version: FORMAT_VERSION,
            shard_id: inner.config.shard_id,
            base_lsn,
            created_ms: inner.io.now_ms(),
            segment_bytes: seg_bytes,
        });
        // Header plus an end marker: a recycled file's stale bytes start after it.
        let mut first = header.to_vec();
        first.extend_from_slice(&[0u8; 8]);
        file.write_all_at(Rc::new(first), 0).await.map_err(io_err(
            "write segment header",
            &tmp,
            0,
        ))?;
        file.sync_data()
            .await
            .map_err(io_err("fdatasync new segment", &tmp, 0))?;
        inner
            .io
            .rename(&tmp, &path)
            .await
            .map_err(io_err("rename new segment", &path, 0))?;
        inner
            .io
            .sync_dir(dir)
            .await
            .map_err(io_err("fsync log directory", dir, 0))?;
        tracing::debug!(segment = %path.display(), base_lsn, recycled, "created segment");
        if recycled {
            inner.state.borrow_mut().segments_recycled += 1;
        }
        let write_through = self.wants_write_through();
        let (file, direct) = if write_through {
            drop(file);
            // Every block is written: zero-filled just above, or a reused spare's.
            let written = recycled || inner.config.preallocate == Preallocate::ZeroFill;
            self.open_active(&path, seg_bytes, written).await?
        } else {
            (file, None)
        };
        let direct = direct.map(|mut d| {
            // The header block as written above (header, end marker, zeros: the file was
            // zero-filled, or a spare's stale bytes sit behind the end marker and are
            // overwritten with zeros by the first direct write).
            let header_end = SEGMENT_HEADER_BYTES as u64;
            if header_end < d.align {
                d.tail = Some((header_end, header.to_vec()));
            }
            d
        });
        let mut st = inner.state.borrow_mut();
        st.segments.insert(
            base_lsn,
            Segment {
                base_lsn,
                path,
                file: Rc::new(file),
                capacity: seg_bytes,
                end_lsn: base_lsn,
                data_end: SEGMENT_HEADER_BYTES as u64,
                synced_end: SEGMENT_HEADER_BYTES as u64,
                write_through,
                direct,
                sparse: Vec::new(),
                stats: SegmentStats::default(),
                tail_clean: !recycled,
            },
        );
        Ok(())
    }

    /// Removes the temporary file of a segment whose preallocation ran out of space (so the
    /// partial allocation is freed) and builds the [`AppendError::NoSpace`].
    async fn no_space_cleanup(
        &self,
        file: IO::File,
        tmp: &std::path::Path,
        seg_bytes: u64,
        source: io::Error,
    ) -> AppendError {
        drop(file);
        let dir = self.inner.config.dir.clone();
        tracing::warn!(
            dir = %dir.display(), bytes_needed = seg_bytes, error = %source,
            "no space for a new log segment; appends fail until space is freed"
        );
        if let Err(e) = self.inner.io.remove(tmp).await {
            tracing::warn!(file = %tmp.display(), error = %e, "cannot remove partial segment");
        }
        self.inner.state.borrow_mut().no_space = Some((dir.clone(), seg_bytes));
        AppendError::NoSpace {
            dir,
            bytes_needed: seg_bytes,
        }
    }

    /// Records the LSN range of the sealed segment starting at `first` (about to be removed) as
    /// absent on purpose in `lsn-gaps`, durably, before the caller unlinks it. Returns the file
    /// of a failed operation.
    pub(crate) async fn record_removal(&self, first: u64) -> Result<(), (PathBuf, io::Error)> {
        let end = self
            .inner
            .state
            .borrow()
            .segments
            .get(&first)
            .map_or(first, |s| s.end_lsn);
        let gaps = {
            let st = self.inner.state.borrow();
            let mut g = st.gaps.clone();
            g.add(first, end);
            if let Some(&b) = st.segments.keys().find(|&&b| b != first) {
                g.prune_below(b);
            }
            g
        };
        crate::gaps::store(&self.inner.io, &self.inner.config.dir, &gaps).await?;
        self.inner.state.borrow_mut().gaps = gaps;
        Ok(())
    }

    /// Physical LSNs of the live records of `key`, in logical order: the latest snapshot (if
    /// any) first, then the records after it. Only acknowledged records are included.
    pub fn key_lsns(&self, key: &[u8]) -> Vec<u64> {
        self.inner.state.borrow().index.lsns(key)
    }

    /// The keys starting with `prefix` that have live records, in no particular order. Walks
    /// the whole key index (O(keys)): meant for periodic maintenance such as retention sweeps.
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.inner.state.borrow().index.keys_with_prefix(prefix)
    }

    /// What compaction and scrub need of the segment at `base`, read under one borrow.
    pub(crate) fn segment_view(&self, base: u64) -> Option<SegmentView<IO::File>> {
        let st = self.inner.state.borrow();
        st.segments.get(&base).map(|s| SegmentView {
            stats: s.stats,
            file: Rc::clone(&s.file),
            path: s.path.clone(),
            first_offset: s.sparse.first().map(|&(_, o)| o).unwrap_or(s.data_end),
            data_end: s.data_end,
            tail_clean: s.tail_clean,
        })
    }

    /// Base LSNs of the sealed segments (every segment but the active one), in LSN order.
    pub(crate) fn sealed_bases(&self) -> Vec<u64> {
        let st = self.inner.state.borrow();
        let active = st.active().base_lsn;
        st.segments
            .keys()
            .copied()
            .filter(|&b| b != active)
            .collect()
    }

    /// True while a flush (a write and, under `fsync = always`, its sync) is being carried out
    /// by the kernel. A shard then parks instead of spinning: the write may be executed by an
    /// io_uring worker thread that shares the shard's core.
    pub fn flush_in_flight(&self) -> bool {
        let st = self.inner.state.borrow();
        st.flushing || st.inflight.is_some()
    }

    /// Current counters.
    pub fn stats(&self) -> LogStats {
        let st = self.inner.state.borrow();
        LogStats {
            segment_count: st.segments.len(),
            disk_bytes: st.segments.values().map(|s| s.capacity).sum::<u64>()
                + st.spares.len() as u64 * self.inner.config.segment_bytes,
            next_lsn: st.next_lsn,
            acked_lsn: st.acked_lsn,
            synced_lsn: st.synced_lsn,
            key_count: st.index.key_count(),
            flush_count: st.flush_count,
            sync_count: st.sync_count,
            segments_recycled: st.segments_recycled,
            spare_count: st.spares.len(),
            append_count: st.append_count,
            appended_records: st.appended_records,
            appended_bytes: st.appended_bytes,
            flushed_batches: st.flushed_batches,
            flushed_bytes: st.flushed_bytes,
            group_commit_sizes: st.group_commit_sizes,
            recovery_us: st.recovery_us,
            direct_writes: st.direct_writes,
        }
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }
}
