//! Compaction: delete sealed segments whose records are all superseded (by a later snapshot or
//! truncate of the same key) or expired, and copy the few live records of nearly-dead segments forward so
//! those can be deleted too. Disk use then stays bounded for a workload that keeps
//! overwriting the same keys.
//!
//! A copied record keeps its key, kind, payload, timestamp and expiry, gets a new LSN, the
//! [`FLAG_FORWARDED`] flag and its original LSN as `origin_lsn`; the key index orders records by
//! origin, so a key's history keeps its logical order. Copies are synced before the source
//! segment is removed; a crash in between leaves both, and recovery keeps the copy.
//!
//! Limitation: a segment is deleted when every record in it has expired; if it held the latest
//! snapshot of a key whose older records survive in an older segment, those older records
//! become visible again after a restart. Give expiries to whole key histories, not to a
//! snapshot alone.

use std::rc::Rc;

use crate::error::{AppendError, CompactError, ReadError};
use crate::io::LogIo;
use crate::log::{IndexOp, Log};
use crate::read::SegmentReader;
use crate::record::{
    encode_batch, encoded_len, floor_of, record_bytes, EncodeRecord, Record, FLAG_FORWARDED,
};
use crate::segment::spare_path;

/// What [`Log::compact`] may do in one call.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct CompactionPolicy {
    /// Copy live records forward out of a sealed segment when its live record bytes are at
    /// most this fraction of its record bytes (default 0.25). 0 disables copying.
    pub live_ratio_max: f64,
    /// Bound on bytes copied forward per call (default 8 MiB).
    pub copy_bytes_max: u64,
    /// Bytes per batch of copied records (default 1 MiB).
    pub copy_batch_bytes: usize,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            live_ratio_max: 0.25,
            copy_bytes_max: 8 << 20,
            copy_batch_bytes: 1 << 20,
        }
    }
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segment files removed.
    pub segments_deleted: usize,
    /// Live records copied forward.
    pub records_copied: u64,
    /// Record bytes copied forward.
    pub bytes_copied: u64,
}

impl<IO: LogIo> Log<IO> {
    /// Runs one compaction pass over the sealed segments (never the active one). Appends may
    /// run concurrently; copied records go through the normal group commit and are synced
    /// before their source segment is removed.
    ///
    /// Starts with [`Log::sync`], so every record that supersedes another is durable before
    /// the superseded one can be deleted, whatever the fsync policy.
    ///
    /// Cancel safety: dropping the future may leave copies written and their source segment
    /// still present; the next pass or recovery resolves that (the copy wins).
    ///
    /// One compaction or [`Log::scrub`] runs at a time: a call made while another runs waits
    /// for it to finish.
    pub async fn compact(
        &self,
        policy: CompactionPolicy,
    ) -> Result<CompactionReport, CompactError> {
        // Supersession must be durable before what it supersedes is deleted: under `Never` or
        // `IntervalMs` an acknowledged snapshot may still be only in the page cache.
        let _maintenance = self.maintenance().await;
        self.sync().await?;
        let now = self.inner.io.now_ms();
        let mut report = CompactionReport::default();
        let candidates = self.sealed_bases();
        let mut removed_any = false;
        // Spares become reusable only once their renaming is durable (after the directory
        // sync below): a roll that rewrote the header of a reused spare while its old segment
        // name could still come back after a power loss would leave a segment whose header
        // contradicts its name, and recovery would refuse the log.
        let mut new_spares = Vec::new();
        for base in candidates {
            let Some(seg) = self.segment_view(base) else {
                continue;
            };
            let (stats, file, path, first_offset, data_end) = (
                seg.stats,
                seg.file,
                seg.path,
                seg.first_offset,
                seg.data_end,
            );
            if !stats.is_garbage(now) {
                let ratio = stats.live_bytes as f64 / stats.record_bytes.max(1) as f64;
                if ratio > policy.live_ratio_max
                    || report.bytes_copied + stats.live_bytes > policy.copy_bytes_max
                {
                    continue;
                }
                let live = self
                    .live_records(file, path.clone(), first_offset, data_end, now)
                    .await?;
                let (n, bytes) = self.copy_forward(&live, policy.copy_batch_bytes).await?;
                report.records_copied += n;
                report.bytes_copied += bytes;
            }
            // Every record of the segment is now dead or copied: drop it, after recording
            // its LSN range as removed on purpose (so recovery does not take it for lost).
            self.record_removal(base)
                .await
                .map_err(|(file, source)| CompactError::RecordGap {
                    segment: path.clone(),
                    file,
                    source,
                })?;
            let capacity = {
                let mut st = self.inner.state.borrow_mut();
                let seg = st.segments.remove(&base);
                if let Some(seg) = &seg {
                    st.index.forget_range(seg.base_lsn, seg.end_lsn);
                }
                seg.map_or(0, |s| s.capacity)
            };
            // Only full-size segments are kept as spares (a reused spare is a full segment).
            let keep = {
                let st = self.inner.state.borrow();
                st.spares.len() + new_spares.len() < self.inner.config.recycle_segments_max
                    && capacity == self.inner.config.segment_bytes
            };
            let removed = if keep {
                let spare = spare_path(&self.inner.config.dir, base);
                let r = self.inner.io.rename(&path, &spare).await;
                if r.is_ok() {
                    new_spares.push(spare);
                }
                r
            } else {
                self.inner.io.remove(&path).await
            };
            removed.map_err(|source| CompactError::Remove {
                file: path.clone(),
                source,
            })?;
            tracing::debug!(segment = %path.display(), "compaction removed segment");
            report.segments_deleted += 1;
            removed_any = true;
        }
        if removed_any {
            let dir = &self.inner.config.dir;
            self.inner
                .io
                .sync_dir(dir)
                .await
                .map_err(|source| CompactError::SyncDir {
                    dir: dir.clone(),
                    source,
                })?;
            self.inner.state.borrow_mut().spares.extend(new_spares);
        }
        Ok(report)
    }

    /// Reads the batches of a sealed segment in `[first_offset, data_end)` and returns its
    /// records that are live (in the index, or key-less) and not expired at `now`.
    pub(crate) async fn live_records(
        &self,
        file: Rc<IO::File>,
        path: std::path::PathBuf,
        first_offset: u64,
        data_end: u64,
        now: u64,
    ) -> Result<Vec<Record>, ReadError> {
        let mut reader = SegmentReader::new(file, path);
        let mut live = Vec::new();
        let mut offset = first_offset;
        while offset < data_end {
            let (records, len) = reader.batch_at(offset, data_end).await?;
            offset += len;
            let st = self.inner.state.borrow();
            live.extend(records.into_iter().filter(|r| {
                let expired = r.expires_at_ms.is_some_and(|e| e <= now);
                !expired && (r.key.is_empty() || st.index.is_live(&r.key, r.lsn))
            }));
        }
        Ok(live)
    }

    /// Appends copies of `records` in batches of about `batch_bytes`, then syncs.
    pub(crate) async fn copy_forward(
        &self,
        records: &[Record],
        batch_bytes: usize,
    ) -> Result<(u64, u64), AppendError> {
        if records.is_empty() {
            return Ok((0, 0));
        }
        let max_batch = (self.inner.config.segment_bytes as usize / 2).max(1);
        let batch_bytes = batch_bytes.clamp(1, max_batch);
        let mut copied = 0;
        let mut bytes = 0;
        let mut start = 0;
        // Chunks holding the copies: if one is dropped unwritten (no space for a new
        // segment), the copy failed and the source must stay.
        let mut tokens: Vec<Rc<std::cell::Cell<bool>>> = Vec::new();
        while start < records.len() {
            let mut end = start + 1;
            while end < records.len()
                && encoded_len(
                    records[start..=end]
                        .iter()
                        .map(|r| (r.key.len(), r.payload.len())),
                ) <= batch_bytes
            {
                end += 1;
            }
            let group = &records[start..end];
            let len = encoded_len(group.iter().map(|r| (r.key.len(), r.payload.len())));
            let range = self
                .enqueue(len, group.len(), |buf, first, synced| {
                    encode_batch(
                        buf,
                        first,
                        synced,
                        group.iter().map(|r| EncodeRecord {
                            kind: r.kind,
                            flags: r.flags | FLAG_FORWARDED,
                            origin_lsn: Some(r.origin_lsn),
                            timestamp_ms: r.timestamp_ms,
                            expires_at_ms: r.expires_at_ms,
                            key: &r.key,
                            payload: &r.payload,
                        }),
                    )
                })
                .await?;
            {
                let mut st = self.inner.state.borrow_mut();
                let chunk = st
                    .pending
                    .iter_mut()
                    .rev()
                    .find(|c| c.first_lsn <= range.first && range.first < c.end_lsn)
                    .expect("invariant: a batch stays pending until the next await");
                for (i, r) in group.iter().enumerate() {
                    chunk.ops.push(IndexOp {
                        key: r.key.clone(),
                        kind: r.kind,
                        origin: r.origin_lsn,
                        floor: floor_of(r.kind, r.origin_lsn, &r.payload),
                        lsn: range.first + i as u64,
                        bytes: record_bytes(r.key.len(), r.payload.len()),
                        expires_at_ms: r.expires_at_ms,
                    });
                }
                if !tokens.last().is_some_and(|t| Rc::ptr_eq(t, &chunk.dropped)) {
                    tokens.push(Rc::clone(&chunk.dropped));
                }
            }
            copied += group.len() as u64;
            bytes += group
                .iter()
                .map(|r| record_bytes(r.key.len(), r.payload.len()))
                .sum::<u64>();
            start = end;
        }
        let end = self.inner.state.borrow().next_lsn;
        let result = self.wait_acked(end, true).await;
        if tokens.iter().any(|t| t.get()) {
            return Err(self.no_space_error());
        }
        result?;
        Ok((copied, bytes))
    }
}
