//! Recovery: scan every segment, verify every checksum, repair or refuse damage according to
//! the operator's [`RecoveryMode`], and rebuild the segment table and the key index.
//!
//! What recovery assumes of the disk (see `docs/LOG_FORMAT.md`): a write that was followed by
//! a successful `fdatasync` is read back unchanged; an unsynced write may be lost or torn at
//! any byte; a `rename` followed by a directory `fsync` is durable. A sealed (non-last)
//! segment was synced before the next one was created, so damage in it is never a torn tail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::config::{LogConfig, RecoveryMode};
use crate::error::RecoverError;
use crate::gaps::{self, gaps_path, Gaps, LoadError};
use crate::index::{KeyIndex, SegmentStats};
use crate::io::{LogFile, LogIo};
use crate::log::{account, AccountRecord, Segment};
use crate::record::{floor_of, record_bytes, DecodedBatch, Invalid, RECORD_HEADER_BYTES};
use crate::segment::{
    decode_header, find_valid_after, parse_segment_name, scan_batches, HeaderError, SegmentHeader,
    FORMAT_VERSION, GAPS_FORMAT_VERSION, QUARANTINE_DIR, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
    SPARE_SUFFIX, TMP_SUFFIX,
};

/// A torn tail that recovery removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncatedTail {
    /// The segment file.
    pub file: PathBuf,
    /// Offset of the first removed byte (where the next append goes).
    pub offset: u64,
    /// How many bytes were zeroed.
    pub bytes: u64,
}

/// A segment moved aside by [`RecoveryMode::Quarantine`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantinedSegment {
    /// Where the segment was.
    pub file: PathBuf,
    /// Where it is now.
    pub moved_to: PathBuf,
    /// Offset of the damage.
    pub offset: u64,
    /// What was wrong.
    pub reason: Invalid,
    /// LSNs `[first, end)` that are no longer readable (an upper bound: the segment's base LSN
    /// up to the end of the last verifiable batch in it).
    pub lost_lsns: (u64, u64),
}

/// A segment file found shorter than it was created (or without its header) and accepted
/// under [`crate::LogConfig::accept_short_segments`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortSegment {
    /// The segment file.
    pub file: PathBuf,
    /// Where it was moved (`quarantine/`) when it had no header; `None` when it was kept
    /// (its verified records stay readable, the file is extended back to its size).
    pub moved_to: Option<PathBuf>,
    /// Size in its header (`None`: no header).
    pub expected_bytes: Option<u64>,
    /// Size found.
    pub actual_bytes: u64,
    /// LSNs `[first, end)` lost with the missing bytes (an upper bound: as many records as the
    /// lost bytes could hold, or up to the next segment); never reused.
    pub lost_lsns: (u64, u64),
}

/// A hole in the LSN sequence that no removal recorded, accepted under
/// [`RecoveryMode::Quarantine`] (a sealed segment was lost or shortened at a batch boundary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingRange {
    /// LSNs `[first, end)` that no segment holds.
    pub lsns: (u64, u64),
    /// The segment before the hole (`None`: the hole is before the first segment).
    pub before: Option<PathBuf>,
    /// The segment after the hole.
    pub file: PathBuf,
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments scanned.
    pub segments: usize,
    /// Batches verified.
    pub batches: u64,
    /// Records verified.
    pub records: u64,
    /// Bytes of segment files read.
    pub bytes_read: u64,
    /// Torn tails removed.
    pub truncated: Vec<TruncatedTail>,
    /// Segments quarantined.
    pub quarantined: Vec<QuarantinedSegment>,
    /// Short or header-less segments accepted ([`crate::LogConfig::accept_short_segments`]).
    pub short_segments: Vec<ShortSegment>,
    /// Unrecorded holes in the LSN sequence accepted ([`RecoveryMode::Quarantine`]).
    pub missing: Vec<MissingRange>,
    /// Leftover files of interrupted segment creation that were removed.
    pub removed_incomplete: Vec<PathBuf>,
    /// Spare segment files found (kept for reuse).
    pub spares: Vec<PathBuf>,
}

pub(crate) struct Recovered<F> {
    pub segments: BTreeMap<u64, Segment<F>>,
    pub index: KeyIndex,
    pub next_lsn: u64,
    pub gaps: Gaps,
    pub report: RecoveryReport,
}

fn mode_name(mode: RecoveryMode) -> &'static str {
    match mode {
        RecoveryMode::Strict => "strict",
        RecoveryMode::TruncateTail => "truncate-tail",
        RecoveryMode::Quarantine => "quarantine",
    }
}

fn cannot_open(file: &Path) -> impl FnOnce(std::io::Error) -> RecoverError {
    let file = file.to_path_buf();
    move |source| RecoverError::CannotOpen { file, source }
}

fn unreadable(file: &Path, offset: u64) -> impl FnOnce(std::io::Error) -> RecoverError {
    let file = file.to_path_buf();
    move |source| RecoverError::Unreadable {
        file,
        offset,
        source,
    }
}

fn repair(file: &Path, offset: u64) -> impl FnOnce(std::io::Error) -> RecoverError {
    let file = file.to_path_buf();
    move |source| RecoverError::Repair {
        file,
        offset,
        source,
    }
}

fn repair_dir(op: &'static str, dir: &Path) -> impl FnOnce(std::io::Error) -> RecoverError {
    let dir = dir.to_path_buf();
    move |source| RecoverError::RepairDir { op, dir, source }
}

/// Moves `path` into `<dir>/quarantine/` durably; returns where it went.
async fn quarantine_file<IO: LogIo>(
    io: &IO,
    config: &LogConfig,
    path: &Path,
) -> Result<PathBuf, RecoverError> {
    let qdir = config.dir.join(QUARANTINE_DIR);
    io.create_dir_all(&qdir)
        .await
        .map_err(repair_dir("create", &qdir))?;
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let moved_to = qdir.join(name);
    io.rename(path, &moved_to).await.map_err(repair(path, 0))?;
    io.sync_dir(&qdir)
        .await
        .map_err(repair_dir("fsync", &qdir))?;
    io.sync_dir(&config.dir)
        .await
        .map_err(repair_dir("fsync", &config.dir))?;
    Ok(moved_to)
}

/// Most LSNs `bytes` bytes of batches can hold (every record takes at least a record header).
fn lsns_in(bytes: u64) -> u64 {
    bytes.div_ceil(RECORD_HEADER_BYTES as u64)
}

/// Scans the directory and every segment in LSN order.
pub(crate) async fn recover<IO: LogIo>(
    io: &IO,
    config: &LogConfig,
) -> Result<Recovered<IO::File>, RecoverError> {
    let dir = &config.dir;
    let mut report = RecoveryReport::default();
    let entries = io
        .list_dir(dir)
        .await
        .map_err(|source| RecoverError::ListDir {
            dir: dir.clone(),
            source,
        })?;
    let mut paths: Vec<(u64, PathBuf)> = Vec::new();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(TMP_SUFFIX) {
            tracing::warn!(file = %path.display(), "removing segment left by an interrupted creation");
            io.remove(&path).await.map_err(repair(&path, 0))?;
            report.removed_incomplete.push(path);
            continue;
        }
        if name.ends_with(SPARE_SUFFIX) {
            let len = io
                .open(&path, false)
                .await
                .map_err(cannot_open(&path))?
                .file_len()
                .await
                .map_err(unreadable(&path, 0))?;
            if report.spares.len() < config.recycle_segments_max && len == config.segment_bytes {
                report.spares.push(path);
            } else {
                io.remove(&path).await.map_err(repair(&path, 0))?;
            }
            continue;
        }
        if let Some(base) = parse_segment_name(&path) {
            paths.push((base, path));
        }
    }
    paths.sort();
    let gaps_file = gaps_path(dir);
    let loaded = match gaps::load(io, dir).await {
        Ok(g) => g,
        Err(LoadError::Open(source)) => {
            return Err(RecoverError::CannotOpen {
                file: gaps_file,
                source,
            })
        }
        Err(LoadError::Read(source)) => {
            return Err(RecoverError::Unreadable {
                file: gaps_file,
                offset: 0,
                source,
            })
        }
        Err(LoadError::Bad(reason)) => {
            return Err(RecoverError::BadGaps {
                file: gaps_file,
                reason,
            })
        }
    };
    // Without a record (a log written before format version 2), holes are not checked.
    let mut gaps = loaded.clone().unwrap_or(Gaps {
        tracked_from: u64::MAX,
        ranges: Vec::new(),
    });
    let mut segments = BTreeMap::new();
    let mut index = KeyIndex::default();
    let mut dead = Vec::new();
    let mut next_lsn: u64 = 1;
    let mut before: Option<PathBuf> = None;
    for i in 0..paths.len() {
        let (name_base, path) = paths[i].clone();
        let next_base = paths.get(i + 1).map(|&(b, _)| b);
        let is_last = next_base.is_none();
        let file = io.open(&path, false).await.map_err(cannot_open(&path))?;
        let len = file.file_len().await.map_err(unreadable(&path, 0))?;
        let want = usize::try_from(len).map_err(|_| RecoverError::BadHeader {
            file: path.clone(),
            reason: "file larger than addressable memory",
        })?;
        let (res, bytes) = file.read_at(vec![0u8; want], 0).await;
        let got = res.map_err(unreadable(&path, 0))?;
        if got != want {
            return Err(RecoverError::Unreadable {
                file: path,
                offset: got as u64,
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shorter than its reported length",
                ),
            });
        }
        report.bytes_read += len;
        report.segments += 1;
        let header = match decode_header(&bytes) {
            Ok(h) => h,
            Err(HeaderError::Blank)
                if bytes.len() < SEGMENT_HEADER_BYTES || bytes.iter().all(|&b| b == 0) =>
            {
                // Renamed into place only after its header was synced: this is lost data.
                if !config.accept_short_segments {
                    return Err(RecoverError::NoHeader {
                        file: path,
                        actual_bytes: len,
                    });
                }
                if name_base < next_lsn {
                    return Err(RecoverError::LsnOverlap {
                        file: path,
                        base_lsn: name_base,
                        expected: next_lsn,
                    });
                }
                check_hole(
                    config,
                    &mut gaps,
                    &mut report,
                    &before,
                    &path,
                    next_lsn,
                    name_base,
                )?;
                // Its size is unknown: skip as many LSNs as the largest segment can hold.
                let lost_end = next_base
                    .unwrap_or_else(|| name_base.saturating_add(lsns_in(u32::MAX as u64)))
                    .max(name_base);
                drop(file);
                let moved_to = quarantine_file(io, config, &path).await?;
                tracing::error!(
                    file = %path.display(), moved_to = %moved_to.display(), bytes = len,
                    lost_first = name_base, lost_end,
                    "accepted a segment without header (accept_short_segments): its records are lost"
                );
                gaps.add(name_base, lost_end);
                report.short_segments.push(ShortSegment {
                    file: path.clone(),
                    moved_to: Some(moved_to),
                    expected_bytes: None,
                    actual_bytes: len,
                    lost_lsns: (name_base, lost_end),
                });
                next_lsn = next_lsn.max(lost_end);
                before = Some(path);
                continue;
            }
            Err(HeaderError::BadMagic(found)) => {
                return Err(RecoverError::BadMagic {
                    file: path,
                    found,
                    expected: SEGMENT_MAGIC,
                })
            }
            Err(HeaderError::NewerVersion(found)) => {
                return Err(RecoverError::NewerVersion {
                    file: path,
                    found,
                    supported: FORMAT_VERSION,
                })
            }
            Err(HeaderError::Blank | HeaderError::Checksum) => {
                return Err(RecoverError::BadHeader {
                    file: path,
                    reason: "header checksum mismatch",
                })
            }
        };
        if header.base_lsn != name_base {
            return Err(RecoverError::BadHeader {
                file: path,
                reason: "base LSN in header differs from the file name",
            });
        }
        if header.shard_id != config.shard_id {
            return Err(RecoverError::ShardMismatch {
                file: path,
                found: header.shard_id,
                expected: config.shard_id,
            });
        }
        if header.base_lsn < next_lsn {
            return Err(RecoverError::LsnOverlap {
                file: path,
                base_lsn: header.base_lsn,
                expected: next_lsn,
            });
        }
        if loaded.is_none() && header.format_version >= GAPS_FORMAT_VERSION {
            if config.recovery != RecoveryMode::Quarantine {
                return Err(RecoverError::GapsMissing {
                    file: gaps_file,
                    segment: path,
                });
            }
            tracing::error!(
                file = %gaps_file.display(), segment = %path.display(),
                "LSN gap record missing; opening without checking for lost segments (quarantine mode)"
            );
        }
        check_hole(
            config,
            &mut gaps,
            &mut report,
            &before,
            &path,
            next_lsn,
            header.base_lsn,
        )?;
        let capacity = header.segment_bytes;
        if len < capacity {
            if !config.accept_short_segments {
                return Err(RecoverError::ShortSegment {
                    file: path,
                    expected_bytes: capacity,
                    actual_bytes: len,
                });
            }
            let kept = accept_short(
                &file,
                &path,
                &header,
                &bytes,
                next_base,
                &mut gaps,
                &mut report,
            )
            .await?;
            let lost_end = kept.lost_end;
            // Every verified batch lies before the kept end (where the scan stopped).
            let scan = scan_batches(&bytes, header.base_lsn);
            let mut seg = kept.into_segment(path.clone(), file);
            for (offset, batch) in &scan.batches {
                seg.note_batch(batch.first_lsn, *offset);
            }
            segments.insert(seg.base_lsn, seg);
            for (_, batch) in &scan.batches {
                account_batch(&mut segments, &mut index, &mut dead, &mut report, batch);
            }
            next_lsn = lost_end;
            before = Some(path);
            continue;
        }
        let scan = scan_batches(&bytes, header.base_lsn);
        let scanned_end_lsn = scan.batches.last().map_or(header.base_lsn, |(_, b)| {
            b.first_lsn + b.records.len() as u64
        });
        // Verified batches after the stop point that continue the LSN sequence are pieces of an
        // interrupted write or good data after damage (a zeroed or garbled sector). Stale bytes
        // of a recycled segment carry lower LSNs and are ignored, as is unverifiable garbage
        // after a clean end marker.
        let later = find_valid_after(&bytes, scan.end_offset, scanned_end_lsn);
        let stop = scan
            .stop
            .or_else(|| later.map(|_| (scan.end_offset, Invalid::Truncated)));
        let mut end_offset = scan.end_offset;
        if let Some((offset, reason)) = stop {
            // A torn tail: the last segment, and no later batch records that the damaged
            // bytes had been synced (they were an unacknowledged, interrupted write).
            let torn_tail = is_last && later.is_none_or(|l| l.synced_max <= offset);
            match (torn_tail, config.recovery) {
                (_, RecoveryMode::Strict) | (false, RecoveryMode::TruncateTail) => {
                    return Err(RecoverError::Corrupt {
                        file: path,
                        offset,
                        reason,
                        mode: mode_name(config.recovery),
                    })
                }
                (true, _) => {
                    // Zero the damaged frame and every later verifiable piece, so that neither
                    // can be taken for data by a later recovery.
                    let file_end = bytes.len() as u64;
                    let declared = bytes
                        .get(offset as usize..offset as usize + 4)
                        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
                    let end = (offset + declared)
                        .min(file_end)
                        .max((offset + 8).min(file_end))
                        .max(later.map_or(0, |l| l.end_offset));
                    let n = end - offset;
                    let zeros = Rc::new(vec![0u8; n as usize]);
                    file.write_all_at(zeros, offset)
                        .await
                        .map_err(repair(&path, offset))?;
                    file.sync_data().await.map_err(repair(&path, offset))?;
                    tracing::warn!(
                        file = %path.display(), offset, bytes = n, %reason,
                        "truncated torn tail of the log"
                    );
                    report.truncated.push(TruncatedTail {
                        file: path.clone(),
                        offset,
                        bytes: n,
                    });
                    end_offset = offset;
                }
                (false, RecoveryMode::Quarantine) => {
                    drop(file);
                    let moved_to = quarantine_file(io, config, &path).await?;
                    // Everything up to the next segment was in this file.
                    let lost_end = later
                        .map_or(scanned_end_lsn, |l| l.end_lsn.max(scanned_end_lsn))
                        .max(next_base.unwrap_or(0));
                    tracing::error!(
                        file = %path.display(), moved_to = %moved_to.display(), offset, %reason,
                        lost_first = header.base_lsn, lost_end,
                        "quarantined a damaged log segment"
                    );
                    gaps.add(header.base_lsn, lost_end);
                    report.quarantined.push(QuarantinedSegment {
                        file: path.clone(),
                        moved_to,
                        offset,
                        reason,
                        lost_lsns: (header.base_lsn, lost_end),
                    });
                    next_lsn = lost_end.max(next_lsn);
                    before = Some(path);
                    continue;
                }
            }
        }
        if is_last {
            // What recovery read may sit in the page cache only (a process crash under a lax
            // policy): make it durable before new batches claim it is.
            file.sync_data().await.map_err(repair(&path, end_offset))?;
        }
        let mut seg = Segment {
            base_lsn: header.base_lsn,
            path: path.clone(),
            file: Rc::new(file),
            capacity,
            end_lsn: scanned_end_lsn,
            data_end: end_offset,
            synced_end: end_offset,
            write_through: false,
            direct: None,
            sparse: Vec::new(),
            stats: SegmentStats::default(),
            tail_clean: bytes
                .get(end_offset as usize..)
                .is_none_or(|t| t.iter().all(|&b| b == 0)),
        };
        for (offset, batch) in &scan.batches {
            seg.note_batch(batch.first_lsn, *offset);
        }
        let base = seg.base_lsn;
        debug_assert!(seg.data_end >= SEGMENT_HEADER_BYTES as u64);
        segments.insert(base, seg);
        for (_, batch) in &scan.batches {
            account_batch(&mut segments, &mut index, &mut dead, &mut report, batch);
        }
        next_lsn = scanned_end_lsn;
        before = Some(path);
    }
    // A log without a record starts one: holes from here on are checked.
    if loaded.is_none() {
        gaps = Gaps {
            tracked_from: next_lsn,
            ranges: Vec::new(),
        };
    }
    // LSNs never go below what the record knows was used.
    next_lsn = next_lsn.max(gaps.end());
    gaps.prune_below(segments.keys().next().copied().unwrap_or(next_lsn));
    if loaded.as_ref() != Some(&gaps) {
        gaps::store(io, dir, &gaps)
            .await
            .map_err(|(file, source)| RecoverError::StoreGaps { file, source })?;
    }
    tracing::info!(
        dir = %dir.display(), segments = report.segments, batches = report.batches,
        records = report.records, bytes = report.bytes_read, next_lsn, "log recovered"
    );
    Ok(Recovered {
        segments,
        index,
        next_lsn,
        gaps,
        report,
    })
}

/// Applies one verified batch to the index and the report.
fn account_batch<F>(
    segments: &mut BTreeMap<u64, Segment<F>>,
    index: &mut KeyIndex,
    dead: &mut Vec<crate::index::Dead>,
    report: &mut RecoveryReport,
    batch: &DecodedBatch<'_>,
) {
    report.batches += 1;
    for r in &batch.records {
        report.records += 1;
        let rec = AccountRecord {
            key: r.key,
            kind: r.kind,
            origin: r.origin_lsn,
            floor: floor_of(r.kind, r.origin_lsn, r.payload),
            lsn: r.lsn,
            bytes: record_bytes(r.key.len(), r.payload.len()),
            expires_at_ms: r.expires_at_ms,
        };
        account(segments, index, &rec, dead);
    }
}

/// Checks that LSNs `[expected, base)` (between the previous segment and `path`) are absent
/// on purpose; under [`RecoveryMode::Quarantine`] an unrecorded hole is accepted, recorded and
/// reported, otherwise it is [`RecoverError::MissingLsns`].
fn check_hole(
    config: &LogConfig,
    gaps: &mut Gaps,
    report: &mut RecoveryReport,
    before: &Option<PathBuf>,
    path: &Path,
    expected: u64,
    base: u64,
) -> Result<(), RecoverError> {
    if base <= expected || gaps.covers(expected, base) {
        return Ok(());
    }
    if config.recovery != RecoveryMode::Quarantine {
        return Err(RecoverError::MissingLsns {
            first: expected,
            end: base,
            before: before.clone(),
            file: path.to_path_buf(),
        });
    }
    tracing::error!(
        file = %path.display(), first = expected, end = base,
        "LSNs missing before this segment (a sealed segment was lost); accepted in quarantine mode"
    );
    gaps.add(expected, base);
    report.missing.push(MissingRange {
        lsns: (expected, base),
        before: before.clone(),
        file: path.to_path_buf(),
    });
    Ok(())
}

/// A short segment accepted: what is kept of it.
struct Kept {
    /// One past the last LSN the lost bytes could have held.
    lost_end: u64,
    base_lsn: u64,
    capacity: u64,
    end_lsn: u64,
    data_end: u64,
}

impl Kept {
    fn into_segment<F>(self, path: PathBuf, file: F) -> Segment<F> {
        Segment {
            base_lsn: self.base_lsn,
            path,
            file: Rc::new(file),
            capacity: self.capacity,
            end_lsn: self.end_lsn,
            data_end: self.data_end,
            synced_end: self.data_end,
            write_through: false,
            direct: None,
            sparse: Vec::new(),
            stats: SegmentStats::default(),
            tail_clean: true,
        }
    }
}

/// Accepts a segment shorter than its header says ([`LogConfig::accept_short_segments`]):
/// keeps the verified batches before the first damage, zeroes everything after them and
/// extends the file back to its size (so the next open sees a whole segment), records the
/// LSNs the lost bytes could have held as a gap and reports them.
async fn accept_short<F: LogFile>(
    file: &F,
    path: &Path,
    header: &SegmentHeader,
    bytes: &[u8],
    next_base: Option<u64>,
    gaps: &mut Gaps,
    report: &mut RecoveryReport,
) -> Result<Kept, RecoverError> {
    let scan = scan_batches(bytes, header.base_lsn);
    let end_lsn = scan.batches.last().map_or(header.base_lsn, |(_, b)| {
        b.first_lsn + b.records.len() as u64
    });
    let data_end = scan.end_offset;
    let capacity = header.segment_bytes;
    let lost_end = next_base
        .unwrap_or_else(|| end_lsn.saturating_add(lsns_in(capacity - data_end)))
        .max(end_lsn);
    file.set_len(data_end)
        .await
        .map_err(repair(path, data_end))?;
    file.set_len(capacity)
        .await
        .map_err(repair(path, data_end))?;
    file.sync_data().await.map_err(repair(path, data_end))?;
    tracing::error!(
        file = %path.display(), expected_bytes = capacity, actual_bytes = bytes.len(),
        lost_first = end_lsn, lost_end,
        "accepted a shortened segment (accept_short_segments): records past the cut are lost"
    );
    gaps.add(end_lsn, lost_end);
    report.short_segments.push(ShortSegment {
        file: path.to_path_buf(),
        moved_to: None,
        expected_bytes: Some(capacity),
        actual_bytes: bytes.len() as u64,
        lost_lsns: (end_lsn, lost_end),
    });
    Ok(Kept {
        lost_end,
        base_lsn: header.base_lsn,
        capacity,
        end_lsn,
        data_end,
    })
}
