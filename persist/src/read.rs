//! Reads by LSN and forward scans. Only acknowledged batches are visible; every batch read is
//! verified again (a checksum failure here means the disk changed after recovery).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;

use crate::error::ReadError;
use crate::io::{LogFile, LogIo};
use crate::log::Log;
use crate::record::{decode_batch, Decoded, DecodedBatch, Invalid, Record, BATCH_HEADER_BYTES};

/// Bytes read per refill of a segment reader.
const READ_WINDOW_BYTES: usize = 256 * 1024;

/// Buffered sequential reader of one segment's batches.
pub(crate) struct SegmentReader<F> {
    file: Rc<F>,
    path: PathBuf,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_offset: u64,
}

impl<F: LogFile> SegmentReader<F> {
    pub(crate) fn new(file: Rc<F>, path: PathBuf) -> Self {
        Self {
            file,
            path,
            buf: Vec::new(),
            buf_offset: 0,
        }
    }

    async fn fill(&mut self, offset: u64, len: usize) -> Result<(), ReadError> {
        let buf = std::mem::take(&mut self.buf);
        let mut buf = buf;
        buf.clear();
        buf.resize(len, 0);
        let (res, mut buf) = self.file.read_at(buf, offset).await;
        let n = res.map_err(|source| ReadError::Io {
            file: self.path.clone(),
            offset,
            source,
        })?;
        buf.truncate(n);
        self.buf = buf;
        self.buf_offset = offset;
        Ok(())
    }

    /// Decodes the batch at `offset` (below `data_end`); returns its records and length.
    pub(crate) async fn batch_at(
        &mut self,
        offset: u64,
        data_end: u64,
    ) -> Result<(Vec<Record>, u64), ReadError> {
        let b = self.frame_at(offset, READ_WINDOW_BYTES, data_end).await?;
        let records = b.records.iter().map(|r| r.to_record()).collect();
        Ok((records, b.len as u64))
    }

    /// Decodes and verifies the batch at `offset` (below `data_end`), reading `window` bytes
    /// from `offset` when the buffer does not hold it (more if the frame is longer).
    pub(crate) async fn frame_at(
        &mut self,
        offset: u64,
        window: usize,
        data_end: u64,
    ) -> Result<DecodedBatch<'_>, ReadError> {
        let avail = data_end.saturating_sub(offset) as usize;
        let holds = |r: &Self, len: usize| {
            offset >= r.buf_offset && offset + len as u64 <= r.buf_offset + r.buf.len() as u64
        };
        if !holds(self, BATCH_HEADER_BYTES.min(avail)) || self.buf.is_empty() {
            self.fill(offset, window.max(BATCH_HEADER_BYTES).min(avail))
                .await?;
        }
        let declared = self.declared_len(offset);
        if declared > 0 && declared <= avail && !holds(self, declared) {
            self.fill(offset, declared.max(window).min(avail)).await?;
        }
        let start = (offset - self.buf_offset) as usize;
        let end = (start + avail).min(self.buf.len());
        let reason = match decode_batch(&self.buf[start..end]) {
            Decoded::Batch(b) => return Ok(b),
            Decoded::Invalid(reason) => reason,
            Decoded::End => Invalid::Truncated,
        };
        Err(ReadError::Corrupt {
            file: self.path.clone(),
            offset,
            reason,
        })
    }

    fn declared_len(&self, offset: u64) -> usize {
        let start = offset.saturating_sub(self.buf_offset) as usize;
        match self.buf.get(start..start + 4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => 0,
        }
    }
}

/// Largest single read issued by [`Log::read_many`].
const READ_MANY_BYTES_MAX: usize = 1 << 20;

/// A byte range of one segment that holds some wanted LSNs (see [`Log::read_many`]).
struct Region<F> {
    base: u64,
    file: Rc<F>,
    path: PathBuf,
    /// Offset of a batch boundary at or before the first wanted LSN's batch.
    start: u64,
    /// Every wanted LSN's batch starts before this offset.
    end: u64,
    data_end: u64,
    /// Range of indices into the sorted wanted LSNs.
    wanted: (usize, usize),
}

/// Where to start reading for `lsn`: the segment's file, path, a batch offset at or before
/// the batch holding `lsn`, and the segment's data end. `None` if `lsn` is not acknowledged
/// or its segment was compacted away.
type Locate<F> = Option<(u64, Rc<F>, PathBuf, u64, u64)>;

impl<IO: LogIo> Log<IO> {
    fn locate(&self, lsn: u64, or_next: bool) -> Locate<IO::File> {
        let st = self.inner.state.borrow();
        if lsn >= st.acked_lsn {
            return None;
        }
        let seg = match st.segments.range(..=lsn).next_back() {
            Some((_, s)) if lsn < s.end_lsn => s,
            _ if or_next => st.segments.range(lsn..).next().map(|(_, s)| s)?,
            _ => return None,
        };
        let at = seg.sparse.partition_point(|&(l, _)| l <= lsn);
        let offset = if at == 0 {
            seg.sparse.first().map_or(seg.data_end, |&(_, o)| o)
        } else {
            seg.sparse[at - 1].1
        };
        Some((
            seg.base_lsn,
            Rc::clone(&seg.file),
            seg.path.clone(),
            offset,
            seg.data_end,
        ))
    }

    /// Reads the record at `lsn`. `Ok(None)` if no acknowledged record has that LSN (not yet
    /// written, or compacted away: a copied record has a new LSN, see [`Log::key_lsns`]).
    pub async fn read(&self, lsn: u64) -> Result<Option<Record>, ReadError> {
        let Some((_, file, path, mut offset, data_end)) = self.locate(lsn, false) else {
            return Ok(None);
        };
        let mut reader = SegmentReader::new(file, path);
        while offset < data_end {
            let (records, len) = reader.batch_at(offset, data_end).await?;
            if let Some(r) = records.into_iter().find(|r| r.lsn == lsn) {
                return Ok(Some(r));
            }
            offset += len;
        }
        Ok(None)
    }

    /// Reads the records at `lsns` and returns them in the same order (a repeated LSN is
    /// returned again). Meant for replaying a key: `log.read_many(&log.key_lsns(key))`.
    ///
    /// Each segment region holding a wanted LSN is read once, and regions that touch are
    /// coalesced into reads of up to 1 MiB, so the records of adjacent batches cost one read
    /// per MiB instead of one per record (`read` in a loop reads a window per record).
    /// Memory: the returned records plus one read buffer.
    ///
    /// Errors: [`ReadError::NotFound`] names the first requested LSN (in LSN order) that no
    /// acknowledged record has: not yet written, or compacted or scrubbed away since the
    /// caller got it (a copy has a new LSN: call [`Log::key_lsns`] again and retry). Nothing
    /// is skipped silently. [`ReadError::Corrupt`] / [`ReadError::Io`] as for [`Log::read`].
    pub async fn read_many(&self, lsns: &[u64]) -> Result<Vec<Record>, ReadError> {
        let mut wanted = lsns.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let regions = self.plan_regions(&wanted)?;
        let mut found: HashMap<u64, Record> = HashMap::with_capacity(wanted.len());
        for region in regions {
            let mut reader = SegmentReader::new(Rc::clone(&region.file), region.path.clone());
            let want = &wanted[region.wanted.0..region.wanted.1];
            let mut offset = region.start;
            while offset < region.end {
                let window = ((region.end - offset) as usize).min(READ_MANY_BYTES_MAX);
                let batch = match reader.frame_at(offset, window, region.data_end).await {
                    Ok(b) => b,
                    Err(e) => {
                        // A segment compacted (and its file reused) while we read is not
                        // corruption: its records moved.
                        let gone = !self
                            .inner
                            .state
                            .borrow()
                            .segments
                            .contains_key(&region.base);
                        if gone {
                            break;
                        }
                        return Err(e);
                    }
                };
                offset += batch.len as u64;
                let first = batch.first_lsn;
                let end = first + batch.records.len() as u64;
                let lo = want.partition_point(|&l| l < first);
                for &lsn in want[lo..].iter().take_while(|&&l| l < end) {
                    let r = &batch.records[(lsn - first) as usize];
                    debug_assert_eq!(r.lsn, lsn, "record LSNs are contiguous in a batch");
                    found.insert(lsn, r.to_record());
                }
                if want.last().is_some_and(|&l| l < end) {
                    break; // everything wanted from this region is in hand
                }
            }
        }
        if let Some(&lsn) = wanted.iter().find(|l| !found.contains_key(l)) {
            return Err(ReadError::NotFound { lsn });
        }
        let mut out = Vec::with_capacity(lsns.len());
        if wanted.len() == lsns.len() {
            // No repeats: move each record out.
            for lsn in lsns {
                out.push(
                    found
                        .remove(lsn)
                        .expect("invariant: every wanted LSN was found"),
                );
            }
        } else {
            for lsn in lsns {
                out.push(found[lsn].clone());
            }
        }
        Ok(out)
    }

    /// Groups sorted, distinct `wanted` LSNs into segment regions to read, merging regions
    /// that touch or overlap. Fails with `NotFound` for an LSN no segment holds.
    fn plan_regions(&self, wanted: &[u64]) -> Result<Vec<Region<IO::File>>, ReadError> {
        let st = self.inner.state.borrow();
        let mut regions: Vec<Region<IO::File>> = Vec::new();
        for (i, &lsn) in wanted.iter().enumerate() {
            let seg = match st.segments.range(..=lsn).next_back() {
                Some((_, s)) if lsn < s.end_lsn && lsn < st.acked_lsn => s,
                _ => return Err(ReadError::NotFound { lsn }),
            };
            // The batch holding `lsn` starts at or after the sparse entry at or before it, and
            // before the next sparse entry (whose first LSN is above `lsn`).
            let at = seg.sparse.partition_point(|&(l, _)| l <= lsn);
            let start = match at {
                0 => seg.sparse.first().map_or(seg.data_end, |&(_, o)| o),
                _ => seg.sparse[at - 1].1,
            };
            let end = seg.sparse.get(at).map_or(seg.data_end, |&(_, o)| o);
            if let Some(r) = regions.last_mut() {
                if r.base == seg.base_lsn && start <= r.end {
                    r.end = r.end.max(end);
                    r.wanted.1 = i + 1;
                    continue;
                }
            }
            regions.push(Region {
                base: seg.base_lsn,
                file: Rc::clone(&seg.file),
                path: seg.path.clone(),
                start,
                end,
                data_end: seg.data_end,
                wanted: (i, i + 1),
            });
        }
        Ok(regions)
    }

    /// A forward scan of acknowledged records with LSN ≥ `from_lsn`, in LSN order. Records of
    /// compacted segments are skipped (their live copies appear later with new LSNs).
    pub fn scan(&self, from_lsn: u64) -> Scanner<IO> {
        Scanner {
            log: self.clone(),
            next_lsn: from_lsn,
            ready: VecDeque::new(),
            cursor: None,
        }
    }
}

/// Forward iterator over records; see [`Log::scan`]. Sees batches acknowledged up to each call
/// of [`Scanner::next`].
pub struct Scanner<IO: LogIo> {
    log: Log<IO>,
    next_lsn: u64,
    ready: VecDeque<Record>,
    /// Segment base, its reader, and the offset of the next batch.
    cursor: Option<(u64, SegmentReader<IO::File>, u64)>,
}

impl<IO: LogIo> Scanner<IO> {
    /// The next record, or `None` at the end of the acknowledged log.
    pub async fn next(&mut self) -> Result<Option<Record>, ReadError> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Ok(Some(r));
            }
            let (base, data_end) = {
                let st = self.log.inner.state.borrow();
                if self.next_lsn >= st.acked_lsn {
                    return Ok(None);
                }
                match self.cursor.as_ref().and_then(|c| st.segments.get(&c.0)) {
                    Some(s) if self.next_lsn < s.end_lsn => (s.base_lsn, s.data_end),
                    _ => (u64::MAX, 0),
                }
            };
            let cursor_ok = base != u64::MAX
                && self
                    .cursor
                    .as_ref()
                    .is_some_and(|c| c.0 == base && c.2 < data_end);
            if !cursor_ok {
                let Some((base, file, path, offset, _)) = self.log.locate(self.next_lsn, true)
                else {
                    return Ok(None);
                };
                self.next_lsn = self.next_lsn.max(base);
                self.cursor = Some((base, SegmentReader::new(file, path), offset));
                continue;
            }
            let (_, reader, offset) = self.cursor.as_mut().expect("checked above");
            let (records, len) = reader.batch_at(*offset, data_end).await?;
            if !self.log.inner.state.borrow().segments.contains_key(&base) {
                // Compacted (and possibly reused) while we read: relocate, keep nothing.
                self.cursor = None;
                continue;
            }
            *offset += len;
            let from = self.next_lsn;
            if let Some(last) = records.last() {
                self.next_lsn = self.next_lsn.max(last.lsn + 1);
            }
            self.ready
                .extend(records.into_iter().filter(|r| r.lsn >= from));
        }
    }
}
