//! Offline inspection of a log directory, for tools (`quark journal inspect|verify`): lists
//! every verified record with its file and byte offset and reports damage (file, offset, what)
//! without giving up on the rest of the segment.
//!
//! Blocking `std::fs` reads only; never writes, renames or removes anything (files are opened
//! read-only), so it is safe on a directory no node has open. It may run while a node has the
//! log open, but then it sees a moving target (a torn tail that is only an in-flight write).
//!
//! Unlike recovery, it does not stop at the first bad batch: after damage it probes the later
//! 8-byte-aligned offsets of the segment for the next verifiable batch continuing the LSN
//! sequence (as recovery's probe does) and resumes listing there.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::record::{decode_batch, Decoded, Invalid, RecordKind, BATCH_HEADER_BYTES};
use crate::segment::{
    decode_header, next_valid_batch, parse_segment_name, HeaderError, SegmentHeader,
    SEGMENT_HEADER_BYTES, SPARE_SUFFIX,
};

/// Errors of [`inspect_dir`] and [`inspect_segment`]: the directory or a file could not be
/// read at all. Damage inside a readable file is not an error but a [`Damage`] entry.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Listing the directory failed.
    #[error("cannot list log directory {dir}: {source}")]
    ListDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Opening or reading a segment file failed.
    #[error("cannot read segment {file} at offset {offset}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Offset of the failed read.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What is wrong at a damaged position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// The segment header is unusable (all zero, wrong magic, newer format version, checksum
    /// mismatch, or a base LSN that differs from the file name).
    BadHeader(&'static str),
    /// The bytes at this offset are not a verifiable batch (torn write, bit rot, garbage).
    Batch(Invalid),
    /// A verified batch whose first LSN does not continue the segment's sequence.
    LsnGap {
        /// The LSN the sequence expected.
        expected: u64,
        /// The batch's first LSN.
        found: u64,
    },
    /// An end marker (zero batch length) here, but verified batches continuing the sequence
    /// follow at `resumes_at` (a lost sector or a torn tail whose first sector never landed).
    DataAfterEnd {
        /// Offset of the next verified batch.
        resumes_at: u64,
    },
    /// The file is too large to be a segment (over 4 GiB).
    TooLarge,
}

impl std::fmt::Display for DamageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DamageKind::BadHeader(why) => write!(f, "bad segment header: {why}"),
            DamageKind::Batch(why) => write!(f, "{why}"),
            DamageKind::LsnGap { expected, found } => {
                write!(f, "batch starts at LSN {found}, expected {expected}")
            }
            DamageKind::DataAfterEnd { resumes_at } => {
                write!(
                    f,
                    "end marker before verified data (resumes at offset {resumes_at})"
                )
            }
            DamageKind::TooLarge => f.write_str("file larger than a segment can be"),
        }
    }
}

/// One damaged position of a segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub file: PathBuf,
    /// Byte offset in the file.
    pub offset: u64,
    /// What is wrong.
    pub what: DamageKind,
}

/// A record of a verified batch, with where it sits in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InspectedRecord {
    /// The record's LSN.
    pub lsn: u64,
    /// File offset of the batch frame holding it.
    pub batch_offset: u64,
    /// File offset of the record's header.
    pub record_offset: u64,
    /// Kind.
    pub kind: RecordKind,
    /// Flags ([`crate::FLAG_FORWARDED`]).
    pub flags: u8,
    /// LSN the record was first written at.
    pub origin_lsn: u64,
    /// Wall-clock ms of the original append.
    pub timestamp_ms: u64,
    /// Expiry (wall-clock ms), `None` = never.
    pub expires_at_ms: Option<u64>,
    /// Key (empty = none).
    pub key: Vec<u8>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Everything verified and damaged in one segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInspection {
    /// The file.
    pub path: PathBuf,
    /// Its length in bytes.
    pub file_bytes: u64,
    /// The header, when it verified.
    pub header: Option<SegmentHeader>,
    /// Verified batches.
    pub batches: u64,
    /// Records of verified batches, in file order.
    pub records: Vec<InspectedRecord>,
    /// Damage found, in file order (empty for a clean segment).
    pub damage: Vec<Damage>,
    /// Offset just after the last verified batch.
    pub data_end: u64,
}

/// The files of a log directory, classified; inspect the segments with
/// [`DirInspection::segments`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirInspection {
    /// The directory.
    pub dir: PathBuf,
    /// Segment files (`<20 digits>.seg`), in base-LSN order.
    pub segment_files: Vec<PathBuf>,
    /// Spare segment files (`*.seg.free`): stale data, not part of the log.
    pub spare_files: Vec<PathBuf>,
    /// Every other entry (temporary files, `quarantine/`, foreign files).
    pub other_files: Vec<PathBuf>,
}

impl DirInspection {
    /// Inspects the segment files one at a time, in base-LSN order: only one segment's bytes
    /// are in memory at once, so a large log is walked in bounded memory (one segment file,
    /// at most 4 GiB, plus its records).
    pub fn segments(&self) -> impl Iterator<Item = Result<SegmentInspection, InspectError>> + '_ {
        self.segment_files.iter().map(|p| inspect_segment(p))
    }
}

/// Lists and classifies the files of the log directory `dir` (no segment is read yet).
///
/// ```no_run
/// let dir = quark_persist::inspect_dir(std::path::Path::new("/var/lib/quark/shard-0"))?;
/// for seg in dir.segments() {
///     let seg = seg?;
///     for r in &seg.records {
///         println!("{} {}@{} {:?}", seg.path.display(), r.lsn, r.record_offset, r.kind);
///     }
///     for d in &seg.damage {
///         eprintln!("{} at offset {}: {}", d.file.display(), d.offset, d.what);
///     }
/// }
/// # Ok::<(), quark_persist::InspectError>(())
/// ```
pub fn inspect_dir(dir: &Path) -> Result<DirInspection, InspectError> {
    let list_err = |source| InspectError::ListDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut segments = Vec::new();
    let mut spare_files = Vec::new();
    let mut other_files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let path = entry.map_err(list_err)?.path();
        if let Some(base) = parse_segment_name(&path) {
            segments.push((base, path));
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(SPARE_SUFFIX))
        {
            spare_files.push(path);
        } else {
            other_files.push(path);
        }
    }
    segments.sort();
    spare_files.sort();
    other_files.sort();
    Ok(DirInspection {
        dir: dir.to_path_buf(),
        segment_files: segments.into_iter().map(|(_, p)| p).collect(),
        spare_files,
        other_files,
    })
}

/// Reads one segment file and returns its verified records and its damage.
pub fn inspect_segment(path: &Path) -> Result<SegmentInspection, InspectError> {
    let read_err = |offset| {
        let file = path.to_path_buf();
        move |source| InspectError::Read {
            file,
            offset,
            source,
        }
    };
    let mut file = std::fs::File::open(path).map_err(read_err(0))?;
    let file_bytes = file.metadata().map_err(read_err(0))?.len();
    let mut out = SegmentInspection {
        path: path.to_path_buf(),
        file_bytes,
        header: None,
        batches: 0,
        records: Vec::new(),
        damage: Vec::new(),
        data_end: SEGMENT_HEADER_BYTES as u64,
    };
    if file_bytes > u32::MAX as u64 {
        out.damage.push(damage(path, 0, DamageKind::TooLarge));
        return Ok(out);
    }
    let mut bytes = Vec::with_capacity(file_bytes as usize);
    file.read_to_end(&mut bytes).map_err(read_err(0))?;
    inspect_bytes(path, &bytes, &mut out);
    Ok(out)
}

fn damage(path: &Path, offset: u64, what: DamageKind) -> Damage {
    Damage {
        file: path.to_path_buf(),
        offset,
        what,
    }
}

/// Inspects an in-memory segment image as [`inspect_segment`] would (for property tests).
pub(crate) fn inspect_image(path: &Path, bytes: &[u8]) -> SegmentInspection {
    let mut out = SegmentInspection {
        path: path.to_path_buf(),
        file_bytes: bytes.len() as u64,
        header: None,
        batches: 0,
        records: Vec::new(),
        damage: Vec::new(),
        data_end: SEGMENT_HEADER_BYTES as u64,
    };
    inspect_bytes(path, bytes, &mut out);
    out
}

/// Walks a whole segment image (see the module documentation).
fn inspect_bytes(path: &Path, bytes: &[u8], out: &mut SegmentInspection) {
    let mut expected = match decode_header(bytes) {
        Ok(h) => {
            out.header = Some(h);
            if parse_segment_name(path).is_some_and(|b| b != h.base_lsn) {
                out.damage.push(damage(
                    path,
                    0,
                    DamageKind::BadHeader("base LSN differs from the file name"),
                ));
            }
            Some(h.base_lsn)
        }
        Err(e) => {
            let why = match e {
                HeaderError::Blank => "no header (emptied or truncated after creation)",
                HeaderError::BadMagic(_) => "not a Quark log segment (magic)",
                HeaderError::NewerVersion(_) => "newer format version",
                HeaderError::Checksum => "header checksum mismatch",
            };
            out.damage.push(damage(path, 0, DamageKind::BadHeader(why)));
            if matches!(e, HeaderError::BadMagic(_) | HeaderError::NewerVersion(_)) {
                return; // nothing here is known to be in this format
            }
            None
        }
    };
    let mut at = SEGMENT_HEADER_BYTES;
    // Set after resynchronising past damage: the LSNs of the lost batches are unknown, so the
    // next batch may start anywhere at or above `expected` (the probe checked that).
    let mut resumed = false;
    while at < bytes.len() {
        match decode_batch(&bytes[at..]) {
            Decoded::Batch(b) => {
                let gap = expected.filter(|&e| e != b.first_lsn && !(resumed && b.first_lsn > e));
                resumed = false;
                if let Some(e) = gap {
                    out.damage.push(damage(
                        path,
                        at as u64,
                        DamageKind::LsnGap {
                            expected: e,
                            found: b.first_lsn,
                        },
                    ));
                    if b.first_lsn < e {
                        // Stale or replayed bytes: not part of the sequence.
                        match next_valid_batch(bytes, at, expected) {
                            Some(next) => {
                                at = next;
                                resumed = true;
                                continue;
                            }
                            None => break,
                        }
                    }
                }
                out.batches += 1;
                let mut record_at = at + BATCH_HEADER_BYTES;
                for r in &b.records {
                    out.records.push(InspectedRecord {
                        lsn: r.lsn,
                        batch_offset: at as u64,
                        record_offset: record_at as u64,
                        kind: r.kind,
                        flags: r.flags,
                        origin_lsn: r.origin_lsn,
                        timestamp_ms: r.timestamp_ms,
                        expires_at_ms: r.expires_at_ms,
                        key: r.key.to_vec(),
                        payload: r.payload.to_vec(),
                    });
                    record_at += crate::record::record_bytes(r.key.len(), r.payload.len()) as usize;
                }
                expected = Some(b.first_lsn + b.records.len() as u64);
                at += b.len;
                out.data_end = at as u64;
            }
            Decoded::End => {
                // Stale batches of a reused segment (lower LSNs) after the end are normal;
                // verified batches continuing the sequence are not.
                match next_valid_batch(bytes, at, expected) {
                    Some(next) if expected.is_some() => {
                        out.damage.push(damage(
                            path,
                            at as u64,
                            DamageKind::DataAfterEnd {
                                resumes_at: next as u64,
                            },
                        ));
                        at = next;
                        resumed = true;
                    }
                    _ => break,
                }
            }
            Decoded::Invalid(why) => {
                out.damage
                    .push(damage(path, at as u64, DamageKind::Batch(why)));
                match next_valid_batch(bytes, at, expected) {
                    Some(next) => {
                        at = next;
                        resumed = true;
                    }
                    None => break,
                }
            }
        }
    }
}
