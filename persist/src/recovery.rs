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
use crate::index::{KeyIndex, SegmentStats};
use crate::io::{LogFile, LogIo};
use crate::log::{account, AccountRecord, Segment};
use crate::record::{floor_of, record_bytes, Invalid};
use crate::segment::{
    decode_header, find_valid_after, parse_segment_name, scan_batches, HeaderError, FORMAT_VERSION,
    QUARANTINE_DIR, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, SPARE_SUFFIX, TMP_SUFFIX,
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
    /// Leftover files of interrupted segment creation that were removed.
    pub removed_incomplete: Vec<PathBuf>,
    /// Spare segment files found (kept for reuse).
    pub spares: Vec<PathBuf>,
}

pub(crate) struct Recovered<F> {
    pub segments: BTreeMap<u64, Segment<F>>,
    pub index: KeyIndex,
    pub next_lsn: u64,
    pub report: RecoveryReport,
}

fn mode_name(mode: RecoveryMode) -> &'static str {
    match mode {
        RecoveryMode::Strict => "strict",
        RecoveryMode::TruncateTail => "truncate-tail",
        RecoveryMode::Quarantine => "quarantine",
    }
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

/// Scans the directory and every segment in LSN order.
pub(crate) async fn recover<IO: LogIo>(
    io: &IO,
    config: &LogConfig,
) -> Result<Recovered<IO::File>, RecoverError> {
    let dir = &config.dir;
    let mut report = RecoveryReport::default();
    let entries = io.list_dir(dir).await.map_err(unreadable(dir, 0))?;
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
                .map_err(unreadable(&path, 0))?
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
    let mut segments = BTreeMap::new();
    let mut index = KeyIndex::default();
    let mut dead = Vec::new();
    let mut next_lsn: u64 = 1;
    let last_index = paths.len().checked_sub(1);
    for (i, (name_base, path)) in paths.into_iter().enumerate() {
        let is_last = Some(i) == last_index;
        let file = io.open(&path, false).await.map_err(unreadable(&path, 0))?;
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
            Err(HeaderError::Blank) if is_last && bytes.iter().all(|&b| b == 0) => {
                tracing::warn!(file = %path.display(), "removing blank last segment");
                drop(file);
                io.remove(&path).await.map_err(repair(&path, 0))?;
                report.removed_incomplete.push(path);
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
                    let qdir = config.dir.join(QUARANTINE_DIR);
                    io.create_dir_all(&qdir).await.map_err(repair(&qdir, 0))?;
                    let name = path
                        .file_name()
                        .map(|n| n.to_os_string())
                        .unwrap_or_default();
                    let moved_to = qdir.join(name);
                    drop(file);
                    io.rename(&path, &moved_to)
                        .await
                        .map_err(repair(&path, offset))?;
                    io.sync_dir(&config.dir)
                        .await
                        .map_err(repair(&config.dir, 0))?;
                    let lost_end =
                        later.map_or(scanned_end_lsn, |l| l.end_lsn.max(scanned_end_lsn));
                    tracing::error!(
                        file = %path.display(), moved_to = %moved_to.display(), offset, %reason,
                        lost_first = header.base_lsn, lost_end,
                        "quarantined a damaged log segment"
                    );
                    report.quarantined.push(QuarantinedSegment {
                        file: path,
                        moved_to,
                        offset,
                        reason,
                        lost_lsns: (header.base_lsn, lost_end),
                    });
                    next_lsn = lost_end.max(next_lsn);
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
            path,
            file: Rc::new(file),
            end_lsn: scanned_end_lsn,
            data_end: end_offset,
            synced_end: end_offset,
            write_through: false,
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
                account(&mut segments, &mut index, &rec, &mut dead);
            }
        }
        next_lsn = scanned_end_lsn;
    }
    tracing::info!(
        dir = %dir.display(), segments = report.segments, batches = report.batches,
        records = report.records, bytes = report.bytes_read, next_lsn, "log recovered"
    );
    Ok(Recovered {
        segments,
        index,
        next_lsn,
        report,
    })
}
