//! Scrub: remove the bytes of every superseded or expired record from every file of the log
//! directory (data-protection erasure), not only make them unreachable as compaction does.
//!
//! Compaction leaves dead bytes on disk in several places: segments above its live ratio, the
//! active segment, spares (deleted segments kept for reuse) and the stale tail of a reused
//! spare after its end marker. A scrub handles each:
//! 1. syncs the log (every superseding record is durable before anything is removed);
//! 2. deletes every spare file;
//! 3. seals the active segment and starts a fresh one (not a spare: there is none left), or,
//!    when the active segment holds no record, zero-fills its bytes after the header;
//! 4. rewrites every sealed segment that holds a dead or expired record: its live records are
//!    copied forward through group commit (as compaction does) and synced, then the file is
//!    unlinked (never kept as a spare);
//! 5. zero-fills the bytes after `data_end` of every sealed segment it keeps (unless known to
//!    be zero), and syncs it;
//! 6. syncs the directory.

use std::path::Path;
use std::rc::Rc;

use crate::error::ScrubError;
use crate::io::{LogFile, LogIo};
use crate::log::Log;

/// Bytes per zero-fill write.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;

/// What a [`Log::scrub`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Sealed segments whose live records were copied forward before the file was unlinked.
    pub segments_rewritten: usize,
    /// Sealed segments unlinked without copying (no live record left).
    pub segments_deleted: usize,
    /// Sealed segments kept (every record live) whose unused tail was zero-filled.
    pub segments_zeroed: usize,
    /// Spare segment files (`*.seg.free`) deleted.
    pub spares_deleted: usize,
    /// Live records copied forward.
    pub records_copied: u64,
    /// Record bytes copied forward.
    pub bytes_copied: u64,
    /// Bytes overwritten with zeros (tails of kept segments, or of an empty active segment).
    pub bytes_zeroed: u64,
}

/// Writes zeros over `[from, file length)` of `file` and syncs it; returns the bytes zeroed,
/// or the offset and error of the failed operation.
pub(crate) async fn zero_tail<F: LogFile>(
    file: &F,
    path: &Path,
    from: u64,
) -> Result<u64, (u64, std::io::Error)> {
    let len = file.file_len().await.map_err(|e| (0, e))?;
    let mut pos = from;
    let zeros = Rc::new(vec![
        0u8;
        ZERO_CHUNK_BYTES.min(len.saturating_sub(from)) as usize
    ]);
    while pos < len {
        let n = (len - pos).min(ZERO_CHUNK_BYTES);
        let buf = if n as usize == zeros.len() {
            Rc::clone(&zeros)
        } else {
            Rc::new(vec![0u8; n as usize])
        };
        file.write_all_at(buf, pos).await.map_err(|e| (pos, e))?;
        pos += n;
    }
    file.sync_data().await.map_err(|e| (from, e))?;
    tracing::debug!(segment = %path.display(), from, bytes = len.saturating_sub(from), "zeroed segment tail");
    Ok(len.saturating_sub(from))
}

impl<IO: LogIo> Log<IO> {
    /// Removes the bytes of every superseded or expired record from every file in the log
    /// directory: when it returns `Ok`, no file there holds a byte of a record that was
    /// superseded (by a snapshot or truncate acknowledged before the call) or expired at the
    /// call; live records stay readable (those copied get new LSNs, see [`Log::key_lsns`]).
    /// Steps: sync, delete the spares, seal the active segment and start a fresh one, rewrite
    /// every sealed segment holding a dead record (copy its live records forward, sync,
    /// unlink), zero-fill the unused tail of the sealed segments it keeps, sync the directory.
    ///
    /// Erasure of a key: append `Batch::truncate(key, u64::MAX)`, then scrub. The truncate
    /// record (the key's bytes and the 8-byte bound) stays on disk as the key's barrier.
    ///
    /// Appends may run concurrently through the normal group commit; records appended or
    /// superseded during the scrub are not covered (their bytes may remain until the next
    /// scrub). A compaction called during a scrub waits for it, and a scrub waits for a
    /// running compaction. Not covered: files under `quarantine/` (moved aside by recovery for
    /// the operator) and what the filesystem or device keeps of unlinked or overwritten blocks.
    ///
    /// Costs: it rewrites every segment holding a dead record (up to the whole log) and
    /// zero-fills the tails of the others once (a segment's tail stays known-clean after).
    ///
    /// Cancel safety: dropping the future leaves a consistent log (copies are synced before
    /// their source is unlinked; a dropped roll leaves the next batch to start the new
    /// segment), but without the guarantee: call `scrub` again.
    pub async fn scrub(&self) -> Result<ScrubReport, ScrubError> {
        let _maintenance = self.maintenance().await;
        // Supersession must be durable before what it supersedes is removed.
        self.sync().await?;
        let now = self.inner.io.now_ms();
        let mut report = ScrubReport::default();
        let dir = self.inner.config.dir.clone();
        // Spares first, so the roll below cannot reuse one.
        let spares = std::mem::take(&mut self.inner.state.borrow_mut().spares);
        for spare in spares {
            self.inner
                .io
                .remove(&spare)
                .await
                .map_err(|source| ScrubError::Remove {
                    file: spare.clone(),
                    source,
                })?;
            tracing::debug!(file = %spare.display(), "scrub removed spare segment");
            report.spares_deleted += 1;
        }
        report.bytes_zeroed += self.seal_active(true).await?;
        let sealed = self.sealed_bases();
        let mut unlinked_any = false;
        for base in sealed {
            let Some(seg) = self.segment_view(base) else {
                continue; // cannot happen while we hold maintenance; harmless if it did
            };
            let (stats, file, path, first_offset, data_end, tail_clean) = (
                seg.stats,
                seg.file,
                seg.path,
                seg.first_offset,
                seg.data_end,
                seg.tail_clean,
            );
            if stats.is_all_live(now) {
                if !tail_clean {
                    let n =
                        zero_tail(&*file, &path, data_end)
                            .await
                            .map_err(|(offset, source)| ScrubError::Zero {
                                file: path.clone(),
                                offset,
                                source,
                            })?;
                    if let Some(s) = self.inner.state.borrow_mut().segments.get_mut(&base) {
                        s.tail_clean = true;
                    }
                    report.bytes_zeroed += n;
                    report.segments_zeroed += 1;
                }
                continue;
            }
            let live = self
                .live_records(file, path.clone(), first_offset, data_end, now)
                .await?;
            if live.is_empty() {
                report.segments_deleted += 1;
            } else {
                let (n, bytes) = self.copy_forward(&live, 1 << 20).await?;
                report.records_copied += n;
                report.bytes_copied += bytes;
                report.segments_rewritten += 1;
            }
            self.unlink_segment(base, &path).await?;
            unlinked_any = true;
        }
        if unlinked_any || report.spares_deleted > 0 {
            self.inner
                .io
                .sync_dir(&dir)
                .await
                .map_err(|source| ScrubError::SyncDir { dir, source })?;
        }
        tracing::info!(
            segments_rewritten = report.segments_rewritten,
            segments_deleted = report.segments_deleted,
            spares_deleted = report.spares_deleted,
            bytes_zeroed = report.bytes_zeroed,
            "log scrubbed"
        );
        Ok(report)
    }

    /// Drops a sealed segment from the log and unlinks its file (never kept as a spare).
    async fn unlink_segment(&self, base: u64, path: &Path) -> Result<(), ScrubError> {
        self.record_removal(base)
            .await
            .map_err(|(file, source)| ScrubError::RecordGap {
                segment: path.to_path_buf(),
                file,
                source,
            })?;
        {
            let mut st = self.inner.state.borrow_mut();
            debug_assert_ne!(
                st.active().base_lsn,
                base,
                "the active segment is never dropped"
            );
            if let Some(seg) = st.segments.remove(&base) {
                st.index.forget_range(seg.base_lsn, seg.end_lsn);
            }
        }
        self.inner
            .io
            .remove(path)
            .await
            .map_err(|source| ScrubError::Remove {
                file: path.to_path_buf(),
                source,
            })?;
        tracing::debug!(segment = %path.display(), "scrub unlinked segment");
        Ok(())
    }
}
