//! Reads by LSN and forward scans. Only acknowledged batches are visible; every batch read is
//! verified again (a checksum failure here means the disk changed after recovery).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;

use crate::error::ReadError;
use crate::io::{LogFile, LogIo};
use crate::log::Log;
use crate::record::{decode_batch, Decoded, Invalid, Record, BATCH_HEADER_BYTES};

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
        let avail = data_end.saturating_sub(offset) as usize;
        for attempt in 0..2 {
            let in_buf = offset >= self.buf_offset
                && offset + BATCH_HEADER_BYTES as u64 <= self.buf_offset + self.buf.len() as u64;
            if !in_buf || attempt == 1 {
                let want = if attempt == 0 {
                    READ_WINDOW_BYTES
                } else {
                    self.declared_len(offset).max(READ_WINDOW_BYTES)
                };
                self.fill(offset, want.min(avail)).await?;
            }
            let start = (offset - self.buf_offset) as usize;
            let end = (start + avail).min(self.buf.len());
            match decode_batch(&self.buf[start..end]) {
                Decoded::Batch(b) => {
                    let records = b.records.iter().map(|r| r.to_record()).collect();
                    return Ok((records, b.len as u64));
                }
                Decoded::Invalid(Invalid::Truncated) if attempt == 0 => continue,
                Decoded::Invalid(reason) => {
                    return Err(ReadError::Corrupt {
                        file: self.path.clone(),
                        offset,
                        reason,
                    })
                }
                Decoded::End => break,
            }
        }
        Err(ReadError::Corrupt {
            file: self.path.clone(),
            offset,
            reason: Invalid::Truncated,
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
