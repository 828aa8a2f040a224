//! The LSN gap record (`<dir>/lsn-gaps`): the LSN ranges that are absent from the log on
//! purpose (removed by compaction or scrub, or whose loss recovery was told to accept), so that
//! recovery can tell them from a sealed segment that was lost or shortened.
//!
//! Segments are contiguous when written: a new segment's base LSN is the previous segment's
//! end. A hole between two segments (or below the first one) is therefore either recorded here
//! or a loss, and recovery refuses a loss unless the operator accepts it
//! ([`crate::RecoveryMode::Quarantine`]).
//!
//! The file is small (one range per hole between surviving segments) and replaced atomically:
//! written to `lsn-gaps.tmp`, synced, renamed, directory synced. A removal is recorded
//! *before* the segment is unlinked, so a crash in between leaves a recorded range whose
//! segment still exists (harmless), never an unrecorded hole.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::io::{LogFile, LogIo};

/// File name of the gap record in a log directory.
pub const GAPS_FILE: &str = "lsn-gaps";
/// Temporary name while the gap record is replaced.
const GAPS_TMP: &str = "lsn-gaps.tmp";
/// Magic at offset 0 of the gap record.
const GAPS_MAGIC: [u8; 8] = *b"QRKGAPS\x01";
/// Version of the gap record layout.
const GAPS_VERSION: u32 = 1;
/// Bytes before the ranges.
const GAPS_HEADER_BYTES: usize = 24;
/// Bound on recorded ranges (a hole per surviving segment is far below it); more is damage.
const GAPS_RANGES_MAX: usize = 1 << 20;

/// LSN ranges absent from the log on purpose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Gaps {
    /// LSNs below this are not checked (removed before the record existed, or below the first
    /// surviving segment).
    pub tracked_from: u64,
    /// Half-open ranges `[first, end)`, sorted, disjoint and not touching.
    pub ranges: Vec<(u64, u64)>,
}

impl Gaps {
    /// A record for a new log whose first LSN is 1: every later hole is checked.
    #[cfg(test)]
    fn new_log() -> Self {
        Self {
            tracked_from: 1,
            ranges: Vec::new(),
        }
    }

    /// Records `[first, end)` as absent on purpose (merging with touching ranges).
    pub(crate) fn add(&mut self, first: u64, end: u64) {
        if first >= end || end <= self.tracked_from {
            return;
        }
        let first = first.max(self.tracked_from);
        let (mut lo, mut hi) = (first, end);
        self.ranges.retain(|&(a, b)| {
            if b < lo || a > hi {
                true
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
                false
            }
        });
        let at = self.ranges.partition_point(|&(a, _)| a < lo);
        self.ranges.insert(at, (lo, hi));
    }

    /// True when every LSN of `[first, end)` is below `tracked_from` or recorded.
    pub(crate) fn covers(&self, first: u64, end: u64) -> bool {
        let mut at = first.max(self.tracked_from);
        for &(a, b) in &self.ranges {
            if at >= end {
                break;
            }
            if a > at {
                return false;
            }
            at = at.max(b);
        }
        at >= end
    }

    /// Forgets what lies below `first_base` (the base LSN of the first surviving segment):
    /// LSNs below it are not checked any more, holes at or above it stay recorded.
    pub(crate) fn prune_below(&mut self, first_base: u64) {
        if first_base <= self.tracked_from {
            return;
        }
        self.tracked_from = first_base;
        self.ranges.retain(|&(_, b)| b > first_base);
        if let Some(r) = self.ranges.first_mut() {
            r.0 = r.0.max(first_base);
        }
    }

    /// One past the highest LSN the record knows of: new LSNs never start below it.
    pub(crate) fn end(&self) -> u64 {
        self.ranges
            .last()
            .map_or(self.tracked_from, |&(_, b)| b.max(self.tracked_from))
    }
}

// Format (lsn-gaps, little-endian):
//   { magic [8] = "QRKGAPS\x01" | version u32 (=1) | count u32 | tracked_from u64
//     | count × (first u64 | end u64) | crc32c u32 (over every byte before it) }
/// Encodes a gap record.
pub(crate) fn encode(g: &Gaps) -> Vec<u8> {
    let mut b = Vec::with_capacity(GAPS_HEADER_BYTES + 16 * g.ranges.len() + 4);
    b.extend_from_slice(&GAPS_MAGIC);
    b.extend_from_slice(&GAPS_VERSION.to_le_bytes());
    b.extend_from_slice(&(g.ranges.len() as u32).to_le_bytes());
    b.extend_from_slice(&g.tracked_from.to_le_bytes());
    for &(a, e) in &g.ranges {
        b.extend_from_slice(&a.to_le_bytes());
        b.extend_from_slice(&e.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes and verifies a gap record; the error says what is wrong.
pub(crate) fn decode(b: &[u8]) -> Result<Gaps, &'static str> {
    if b.len() < GAPS_HEADER_BYTES + 4 || b[..8] != GAPS_MAGIC {
        return Err("not an LSN gap record (bad magic or too short)");
    }
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let u64_at = |at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    };
    if u32_at(8) != GAPS_VERSION {
        return Err("unknown LSN gap record version");
    }
    let count = u32_at(12) as usize;
    if count > GAPS_RANGES_MAX || b.len() != GAPS_HEADER_BYTES + 16 * count + 4 {
        return Err("length disagrees with the range count");
    }
    let body = b.len() - 4;
    if crc32c::crc32c(&b[..body]) != u32_at(body) {
        return Err("checksum mismatch");
    }
    let tracked_from = u64_at(16);
    let mut ranges = Vec::with_capacity(count);
    let mut prev_end = tracked_from;
    for i in 0..count {
        let (a, e) = (u64_at(24 + 16 * i), u64_at(32 + 16 * i));
        if a >= e || a < prev_end {
            return Err("ranges not sorted and disjoint");
        }
        prev_end = e;
        ranges.push((a, e));
    }
    Ok(Gaps {
        tracked_from,
        ranges,
    })
}

/// Path of the gap record of the log in `dir`.
pub(crate) fn gaps_path(dir: &Path) -> PathBuf {
    dir.join(GAPS_FILE)
}

/// Reads the gap record: `Ok(None)` when the file does not exist. The error names the
/// operation that failed (`open`, `read`) with the I/O error, or the decoding problem.
pub(crate) async fn load<IO: LogIo>(io: &IO, dir: &Path) -> Result<Option<Gaps>, LoadError> {
    let path = gaps_path(dir);
    let file = match io.open(&path, false).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::Open(e)),
    };
    let len = file.file_len().await.map_err(LoadError::Read)?;
    let want = usize::try_from(len)
        .ok()
        .filter(|&n| n <= GAPS_HEADER_BYTES + 16 * GAPS_RANGES_MAX + 4)
        .ok_or(LoadError::Bad("file larger than any gap record"))?;
    let (res, bytes) = file.read_at(vec![0u8; want], 0).await;
    let got = res.map_err(LoadError::Read)?;
    decode(&bytes[..got]).map(Some).map_err(LoadError::Bad)
}

/// Why [`load`] failed.
pub(crate) enum LoadError {
    Open(io::Error),
    Read(io::Error),
    Bad(&'static str),
}

/// Replaces the gap record durably (temporary file, `fdatasync`, rename, directory fsync).
/// On error, returns the file the failed operation was on.
pub(crate) async fn store<IO: LogIo>(
    io: &IO,
    dir: &Path,
    gaps: &Gaps,
) -> Result<(), (PathBuf, io::Error)> {
    let tmp = dir.join(GAPS_TMP);
    let path = gaps_path(dir);
    let bytes = encode(gaps);
    let len = bytes.len() as u64;
    let file = io.open(&tmp, true).await.map_err(|e| (tmp.clone(), e))?;
    file.set_len(0).await.map_err(|e| (tmp.clone(), e))?;
    file.write_all_at(Rc::new(bytes), 0)
        .await
        .map_err(|e| (tmp.clone(), e))?;
    file.set_len(len).await.map_err(|e| (tmp.clone(), e))?;
    file.sync_data().await.map_err(|e| (tmp.clone(), e))?;
    drop(file);
    io.rename(&tmp, &path)
        .await
        .map_err(|e| (path.clone(), e))?;
    io.sync_dir(dir).await.map_err(|e| (dir.to_path_buf(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_merges_and_covers() {
        let mut g = Gaps::new_log();
        g.add(10, 20);
        g.add(30, 40);
        assert!(g.covers(10, 20) && g.covers(12, 18) && !g.covers(10, 21));
        assert!(
            !g.covers(5, 12),
            "[5, 10) is neither below tracked_from nor recorded"
        );
        g.add(20, 30);
        assert_eq!(g.ranges, vec![(10, 40)]);
        assert!(g.covers(10, 40));
        g.add(1, 10);
        assert!(g.covers(0, 40) && !g.covers(0, 41));
        assert_eq!(g.end(), 40);
    }

    #[test]
    fn prune_keeps_holes_above_the_first_segment() {
        let mut g = Gaps::new_log();
        g.add(5, 10);
        g.add(20, 30);
        g.prune_below(25);
        assert_eq!(g.tracked_from, 25);
        assert_eq!(g.ranges, vec![(25, 30)]);
        assert!(g.covers(0, 30) && !g.covers(30, 31));
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let mut g = Gaps::new_log();
        g.add(7, 9);
        g.add(100, 200);
        let b = encode(&g);
        assert_eq!(decode(&b), Ok(g));
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert!(decode(&bad).is_err());
        assert!(decode(&b[..b.len() - 1]).is_err());
        assert!(decode(&[0u8; 40]).is_err());
    }
}
