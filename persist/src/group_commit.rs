//! Group commit without a timer and without spawned tasks.
//!
//! An append encodes its batch into the pending queue (LSNs are assigned there, so file order
//! is LSN order). If no flush is in flight, that appender becomes the *leader*: it takes the
//! oldest pending chunk (all batches queued so far for one segment), writes it with one
//! `write` followed by an 8-byte end marker, makes it durable per policy (one `fdatasync`, or
//! nothing more when the segment is write-through), acknowledges every batch in it and wakes
//! all waiters. It keeps flushing until its own batch is acknowledged, then gives up
//! leadership; a woken waiter whose batch is still pending becomes the next leader. At low
//! load an append costs one write + one sync; at high load the flush is shared by every batch
//! that arrived while the previous one was in flight.
//!
//! Cancel safety:
//! - Dropping an `append` future before its batch was queued (while waiting for pending
//!   space) leaves no trace.
//! - Dropping it after the batch was queued does not remove the batch: it is written by the
//!   next flush (another append, [`Log::sync`] or [`Log::close`]) exactly like the others,
//!   atomically, at the LSNs already assigned. It is simply not acknowledged to anyone.
//! - Dropping the leader mid-flush keeps the chunk it was writing as the in-flight chunk and
//!   releases leadership (waking every waiter); the next leader rewrites the same bytes at the
//!   same offset (idempotent) and syncs. No waiter is stranded while another task waits, and
//!   an appender that finds the pending bound full with nobody flushing (its appenders were
//!   dropped) leads that flush itself.
//! - An I/O error poisons the log: the failing leader gets [`AppendError::Io`], every other
//!   waiter and later caller [`AppendError::Poisoned`]; reopen to recover.
//! - No space to preallocate a new segment (`ENOSPC` before anything of it was written) does
//!   not poison: the chunk that needed the segment and every chunk queued after it are
//!   dropped unwritten, their appenders fail with [`AppendError::NoSpace`], `next_lsn` goes
//!   back to the first dropped LSN (never written nor acknowledged, so nothing is reused) and
//!   later appends proceed (into the active segment while they fit, then retrying the new
//!   segment).

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use crate::config::FsyncPolicy;
use crate::error::AppendError;
use crate::io::{AlignedBuf, LogFile, LogIo};
use crate::log::{Chunk, IndexOp, Log, LsnRange, Poison, State, FREE_BUFS_MAX};
use crate::record::{check_bounds, encode_batch, floor_of, record_bytes, BoundError, EncodeRecord};
use crate::segment::SEGMENT_HEADER_BYTES;

/// Zero bytes written after each flush's data (a batch length of 0 = end of data).
const END_MARKER_BYTES: u64 = 8;
use crate::Batch;

/// Outcome of one poll of the wait loop.
enum Turn {
    Done,
    Lead,
}

/// Releases leadership when the leader finishes or is dropped mid-flush.
struct Leadership<'a, IO: LogIo>(&'a Log<IO>);

impl<IO: LogIo> Drop for Leadership<'_, IO> {
    fn drop(&mut self) {
        let mut st = self.0.inner.state.borrow_mut();
        st.flushing = false;
        st.wake_all();
    }
}

impl<IO: LogIo> Log<IO> {
    /// Appends `batch` atomically and resolves with its LSN range once it is acknowledged:
    /// written and, under [`FsyncPolicy::Always`], covered by an `fdatasync`.
    ///
    /// Waits (without blocking the thread) while `pending_bytes_max` bytes are queued.
    /// Errors: bound violations are reported before anything is queued; an I/O error poisons
    /// the log (see [`AppendError::Io`]). Cancel safety: see the module documentation of
    /// `group_commit` (a batch is either written whole at its assigned LSNs or not at all).
    pub async fn append(&self, batch: &Batch) -> Result<LsnRange, AppendError> {
        check_bounds(&batch.records).map_err(|e| match e {
            BoundError::Empty => AppendError::EmptyBatch,
            BoundError::KeyTooLong { index, key_bytes } => {
                AppendError::KeyTooLong { index, key_bytes }
            }
            BoundError::PayloadTooLong {
                index,
                payload_bytes,
            } => AppendError::PayloadTooLong {
                index,
                payload_bytes,
            },
            BoundError::BadTruncate {
                index,
                payload_bytes,
            } => AppendError::BadTruncate {
                index,
                payload_bytes,
            },
        })?;
        let bytes = batch.encoded_bytes();
        let now = self.inner.io.now_ms();
        let range = self
            .enqueue(bytes, batch.records.len(), |buf, first, synced| {
                encode_batch(
                    buf,
                    first,
                    synced,
                    batch.records.iter().map(|r| EncodeRecord {
                        kind: r.kind,
                        flags: 0,
                        origin_lsn: None,
                        timestamp_ms: now,
                        expires_at_ms: r.expires_at_ms,
                        key: &r.key,
                        payload: &r.payload,
                    }),
                )
            })
            .await?;
        // Index updates travel with the chunk and are applied when it is acknowledged.
        let dropped = {
            let mut st = self.inner.state.borrow_mut();
            let chunk = chunk_holding(&mut st, range.first);
            for (i, r) in batch.records.iter().enumerate() {
                let lsn = range.first + i as u64;
                chunk.ops.push(IndexOp {
                    key: r.key.clone(),
                    kind: r.kind,
                    origin: lsn,
                    floor: floor_of(r.kind, lsn, &r.payload),
                    lsn,
                    bytes: record_bytes(r.key.len(), r.payload.len()),
                    expires_at_ms: r.expires_at_ms,
                });
            }
            Rc::clone(&chunk.dropped)
        };
        self.wait_acked_for(range.end, false, Some(&dropped))
            .await?;
        Ok(range)
    }

    /// Queues an encoded batch of `bytes` bytes and `count` records, waiting for pending
    /// space. `encode(buf, first_lsn, synced_before)` appends exactly `bytes` bytes to `buf`.
    pub(crate) async fn enqueue(
        &self,
        bytes: usize,
        count: usize,
        encode: impl FnOnce(&mut Vec<u8>, u64, u32) -> usize,
    ) -> Result<LsnRange, AppendError> {
        let seg_bytes = self.inner.config.segment_bytes;
        let max_bytes = (seg_bytes as usize).saturating_sub(SEGMENT_HEADER_BYTES);
        if bytes > max_bytes {
            return Err(AppendError::BatchTooLarge {
                batch_bytes: bytes,
                max_bytes,
            });
        }
        let limit = self.inner.config.pending_bytes_max;
        loop {
            let room = poll_fn(|cx| {
                let mut st = self.inner.state.borrow_mut();
                if let Some(err) = refusal(&st) {
                    return Poll::Ready(Err(err));
                }
                if st.pending_bytes == 0 || st.pending_bytes + bytes <= limit {
                    Poll::Ready(Ok(Some(())))
                } else if !st.flushing {
                    // Full and nobody flushing (the appenders of the queued batches were
                    // dropped): flush them ourselves rather than wait forever.
                    Poll::Ready(Ok(None))
                } else {
                    st.waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await?;
            match room {
                Some(()) => break,
                None => {
                    let queued = self.inner.state.borrow().next_lsn;
                    self.wait_acked(queued, false).await?;
                }
            }
        }
        // No await from here to the end: queueing is atomic with respect to other tasks.
        let mut st = self.inner.state.borrow_mut();
        let first = st.next_lsn;
        let end = first + count as u64;
        let fits = st.tail_pos + bytes as u64 <= st.tail_cap;
        let reuse_tail = fits && st.pending.back().is_some();
        // What this batch may claim is durable in its target segment (a lower bound).
        let future_segment = !fits
            || st.pending.iter().any(|c| c.roll)
            || st
                .inflight
                .as_ref()
                .is_some_and(|c| c.roll && c.first_lsn != st.active().base_lsn);
        let synced_before = if future_segment {
            SEGMENT_HEADER_BYTES as u64
        } else {
            st.active().synced_end
        };
        if !reuse_tail {
            let (roll, pos, cap) = if fits {
                (false, st.tail_pos, st.tail_cap)
            } else {
                let cap = st.take_cap(bytes, seg_bytes);
                (true, SEGMENT_HEADER_BYTES as u64, cap)
            };
            debug_assert!(
                pos + bytes as u64 <= cap,
                "a batch fits in its chunk's segment"
            );
            let mut buf = st.free_bufs.pop().unwrap_or_default();
            debug_assert!(buf.is_empty());
            buf.reserve(bytes);
            st.pending.push_back(Chunk {
                roll,
                pos,
                cap,
                dropped: Rc::new(Cell::new(false)),
                first_lsn: first,
                end_lsn: first,
                buf: Rc::new(buf),
                batches: Vec::new(),
                ops: Vec::new(),
                data_len: 0,
            });
            st.tail_pos = pos;
            st.tail_cap = cap;
        }
        let tail_pos = st.tail_pos;
        let chunk = st
            .pending
            .back_mut()
            .expect("invariant: a chunk was just ensured at the back");
        debug_assert_eq!(chunk.end_lsn, first, "LSNs are contiguous within a chunk");
        let buf = Rc::get_mut(&mut chunk.buf)
            .expect("invariant: a pending chunk's buffer is not shared until taken");
        let rel = buf.len() as u64;
        debug_assert_eq!(chunk.pos + rel, tail_pos);
        let synced_before = u32::try_from(synced_before)
            .expect("invariant: segment_bytes < 4 GiB, checked at open");
        let written = encode(buf, first, synced_before);
        assert_eq!(
            written, bytes,
            "encoded size must match the precomputed size"
        );
        chunk.batches.push((first, rel));
        chunk.end_lsn = end;
        st.tail_pos += bytes as u64;
        st.next_lsn = end;
        st.pending_bytes += bytes;
        st.append_count += 1;
        st.appended_records += count as u64;
        st.appended_bytes += bytes as u64;
        Ok(LsnRange { first, end })
    }

    /// Writes every batch queued so far and `fdatasync`s the active segment, whatever the
    /// policy. Resolves when all batches appended before the call are durable.
    pub async fn sync(&self) -> Result<(), AppendError> {
        let target = self.inner.state.borrow().next_lsn;
        self.wait_acked(target, true).await
    }

    /// Flushes and syncs everything queued, then refuses further appends
    /// ([`AppendError::Closed`]) and releases the directory's lock. Reads keep working on
    /// remaining handles.
    pub async fn close(&self) -> Result<(), AppendError> {
        self.sync().await?;
        let mut st = self.inner.state.borrow_mut();
        st.closed = true;
        st.lock = None; // another process may open the directory now
        st.wake_all();
        Ok(())
    }

    /// Waits until batches below `end_lsn` are acknowledged (and synced when `force_sync`),
    /// leading flushes when no one else is.
    pub(crate) async fn wait_acked(
        &self,
        end_lsn: u64,
        force_sync: bool,
    ) -> Result<(), AppendError> {
        self.wait_acked_for(end_lsn, force_sync, None).await
    }

    /// [`Log::wait_acked`] for a batch whose chunk carries `dropped`: fails with
    /// [`AppendError::NoSpace`] once the chunk was dropped unwritten (its LSNs may then be
    /// acknowledged for other batches).
    pub(crate) async fn wait_acked_for(
        &self,
        end_lsn: u64,
        force_sync: bool,
        dropped: Option<&Cell<bool>>,
    ) -> Result<(), AppendError> {
        loop {
            let turn = poll_fn(|cx| {
                let mut st = self.inner.state.borrow_mut();
                if dropped.is_some_and(Cell::get) || end_lsn > st.next_lsn {
                    // Dropped unwritten (for lack of space), or LSNs waited for were.
                    return Poll::Ready(Err(no_space(&st, &self.inner.config.dir)));
                }
                let done = st.acked_lsn >= end_lsn && (!force_sync || st.synced_lsn >= end_lsn);
                if done {
                    return Poll::Ready(Ok(Turn::Done));
                }
                if let Some(p) = &st.poisoned {
                    return Poll::Ready(Err(poisoned(p)));
                }
                if !st.flushing {
                    st.flushing = true;
                    return Poll::Ready(Ok(Turn::Lead));
                }
                st.waiters.push(cx.waker().clone());
                Poll::Pending
            })
            .await?;
            match turn {
                Turn::Done => return Ok(()),
                Turn::Lead => {
                    let _leadership = Leadership(self);
                    if dropped.is_some_and(Cell::get) {
                        return Err(no_space(&self.inner.state.borrow(), &self.inner.config.dir));
                    }
                    self.lead(end_lsn, force_sync).await?;
                }
            }
        }
    }

    /// Flushes chunks until `end_lsn` is acknowledged (and synced if `force_sync`).
    async fn lead(&self, end_lsn: u64, force_sync: bool) -> Result<(), AppendError> {
        loop {
            let (acked, next) = {
                let st = self.inner.state.borrow();
                (st.acked_lsn, st.next_lsn)
            };
            if acked >= end_lsn {
                break;
            }
            if end_lsn > next {
                // Chunks were dropped unwritten (no space) since the caller queued.
                return Err(no_space(&self.inner.state.borrow(), &self.inner.config.dir));
            }
            self.flush_one().await?;
        }
        let (file, path, offset, synced) = {
            let st = self.inner.state.borrow();
            let a = st.active();
            (
                Rc::clone(&a.file),
                a.path.clone(),
                a.data_end,
                st.synced_lsn,
            )
        };
        if force_sync && synced < end_lsn {
            let target = self.inner.state.borrow().acked_lsn;
            if let Err(source) = file.sync_data().await {
                return Err(self.poison("fdatasync", path, offset, source));
            }
            let mut st = self.inner.state.borrow_mut();
            st.active_mut().synced_end = offset;
            st.synced_lsn = st.synced_lsn.max(target);
            st.last_sync_ms = self.inner.io.now_ms();
            st.sync_count += 1;
            st.wake_all();
        }
        Ok(())
    }

    /// Takes the in-flight chunk (left by a dropped leader) or the oldest pending one, writes
    /// it, syncs per policy and acknowledges it.
    async fn flush_one(&self) -> Result<(), AppendError> {
        let (roll, pos, cap, first_lsn, buf) = {
            let mut st = self.inner.state.borrow_mut();
            if st.inflight.is_none() {
                let mut chunk = st
                    .pending
                    .pop_front()
                    .expect("invariant: unacknowledged LSNs are pending or in flight");
                let buf = Rc::get_mut(&mut chunk.buf)
                    .expect("invariant: a pending chunk's buffer is not shared until taken");
                chunk.data_len = buf.len() as u64;
                // End marker: a zero batch length right after the data, so a scan stops here
                // even over stale bytes of a recycled segment (the next write overwrites it).
                if chunk.pos + chunk.data_len + END_MARKER_BYTES <= chunk.cap {
                    buf.extend_from_slice(&[0u8; END_MARKER_BYTES as usize]);
                }
                st.inflight = Some(chunk);
            }
            let c = st.inflight.as_ref().expect("invariant: set just above");
            (c.roll, c.pos, c.cap, c.first_lsn, Rc::clone(&c.buf))
        };
        if roll {
            let (active_base, active_cap) = {
                let st = self.inner.state.borrow();
                (st.active().base_lsn, st.active().capacity)
            };
            let rolled = if active_base != first_lsn {
                self.roll_to(first_lsn, cap).await
            } else if active_cap < cap {
                // The active segment is empty (created by `roll`/`scrub` or at open, at this
                // base) and smaller than this chunk needs: replace it with a bigger one.
                self.create_segment(first_lsn, cap)
                    .await
                    .map_err(|e| self.poison_io(e))
            } else {
                Ok(())
            };
            if let Err(e) = rolled {
                if matches!(e, AppendError::NoSpace { .. }) {
                    self.drop_unwritten(cap);
                }
                return Err(e);
            }
        }
        let (file, path, write_through) = {
            let st = self.inner.state.borrow();
            let a = st.active();
            debug_assert_eq!(a.end_lsn, first_lsn, "a chunk continues its segment");
            assert!(
                pos + buf.len() as u64 <= a.capacity,
                "invariant: a chunk fits in its segment"
            );
            (Rc::clone(&a.file), a.path.clone(), a.write_through)
        };
        let direct = self.direct_block(&file, &buf, pos).await;
        let direct = match direct {
            Ok(d) => d,
            Err((offset, source)) => {
                return Err(self.poison(
                    "read partial block for direct write",
                    path,
                    offset,
                    source,
                ))
            }
        };
        if let Some((start, block)) = &direct {
            if let Err(source) = file.write_direct_at(Rc::clone(block), *start).await {
                return Err(self.poison("direct write", path, *start, source));
            }
        } else if let Err(source) = file.write_all_at(buf, pos).await {
            return Err(self.poison("write", path, pos, source));
        }
        let now = self.inner.io.now_ms();
        let sync = match self.inner.config.fsync {
            FsyncPolicy::Always => !write_through,
            FsyncPolicy::IntervalMs(ms) => {
                now.saturating_sub(self.inner.state.borrow().last_sync_ms) >= ms
            }
            FsyncPolicy::Never => false,
        };
        if sync {
            if let Err(source) = file.sync_data().await {
                return Err(self.poison("fdatasync", path, pos, source));
            }
        }
        // A completed write-through write is as durable as write + fdatasync.
        let sync = sync || write_through;
        let direct_used = direct.is_some();
        let mut st = self.inner.state.borrow_mut();
        let chunk = st
            .inflight
            .take()
            .expect("invariant: only the leader completes the in-flight chunk");
        let len = chunk.data_len;
        {
            let seg = st.active_mut();
            for &(lsn, rel) in &chunk.batches {
                seg.note_batch(lsn, pos + rel);
            }
            seg.data_end = pos + len;
            seg.end_lsn = chunk.end_lsn;
            if let (Some(d), Some((start, block))) = (seg.direct.as_mut(), direct) {
                // The new partial block, as just written (what the next write starts with).
                let end = pos + len;
                let from = end - end % d.align;
                let bytes =
                    block.as_slice()[(from - start) as usize..(end - start) as usize].to_vec();
                d.tail = Some((end, bytes));
                d.spare = Some(block);
            }
            if sync {
                seg.synced_end = seg.data_end;
            }
        }
        let mut dead = Vec::new();
        for op in &chunk.ops {
            st.account(op, &mut dead);
        }
        st.acked_lsn = chunk.end_lsn;
        if sync {
            st.synced_lsn = chunk.end_lsn;
            st.last_sync_ms = now;
            st.sync_count += 1;
        }
        st.flush_count += 1;
        if direct_used {
            st.direct_writes += 1;
        }
        st.flushed_batches += chunk.batches.len() as u64;
        st.flushed_bytes += len;
        st.group_commit_sizes[crate::log::group_commit_bucket(chunk.batches.len())] += 1;
        st.pending_bytes -= len as usize;
        // The backend has returned its clone of the buffer once the write completed.
        if let Ok(mut buf) = Rc::try_unwrap(chunk.buf) {
            if st.free_bufs.len() < FREE_BUFS_MAX
                && buf.capacity() <= 2 * self.inner.config.pending_bytes_max.max(1 << 20)
            {
                buf.clear();
                st.free_bufs.push(buf);
            }
        }
        st.wake_all();
        Ok(())
    }

    /// For a direct active segment: the aligned block that writes `buf` at `pos`, and where it
    /// goes. It starts at `pos` rounded down to the alignment with the bytes already there
    /// (the partial block kept from the last write, or read back from the file), then `buf`
    /// (data and end marker), then zeros up to the alignment. The bytes before `pos` are
    /// identical to the durable ones, so a write torn at any sector leaves every acknowledged
    /// byte in place (see `docs/PERSIST.md`, "Direct I/O"). `None` for a buffered segment.
    async fn direct_block(
        &self,
        file: &Rc<IO::File>,
        buf: &[u8],
        pos: u64,
    ) -> Result<Option<(u64, Rc<AlignedBuf>)>, (u64, std::io::Error)> {
        let (align, known, spare) = {
            let mut st = self.inner.state.borrow_mut();
            let a = st.active_mut();
            let Some(d) = a.direct.as_mut() else {
                return Ok(None);
            };
            let known = match &d.tail {
                Some((end, bytes)) if *end == pos => Some(bytes.clone()),
                _ => None,
            };
            (d.align, known, d.spare.take())
        };
        let start = pos - pos % align;
        let head_len = (pos - start) as usize;
        let head = match known {
            Some(h) => h,
            None if head_len == 0 => Vec::new(),
            None => {
                let (res, h) = file.read_at(vec![0u8; head_len], start).await;
                match res {
                    Ok(n) if n == head_len => h,
                    Ok(n) => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("read {n} of the {head_len} bytes before the write position"),
                        );
                        return Err((start, e));
                    }
                    Err(e) => return Err((start, e)),
                }
            }
        };
        debug_assert_eq!(head.len(), head_len);
        let total = (head_len + buf.len()).next_multiple_of(align as usize);
        let mut block = match spare.and_then(|b| Rc::try_unwrap(b).ok()) {
            Some(mut b) if b.len() == total => {
                b.as_mut_slice()[head_len + buf.len()..].fill(0);
                b
            }
            _ => AlignedBuf::zeroed(total, align as usize),
        };
        let bytes = block.as_mut_slice();
        bytes[..head_len].copy_from_slice(&head);
        bytes[head_len..head_len + buf.len()].copy_from_slice(buf);
        Ok(Some((start, Rc::new(block))))
    }

    /// Drops the in-flight chunk (whose new segment could not be preallocated) and every
    /// pending chunk unwritten: marks them so their appenders fail with
    /// [`AppendError::NoSpace`], gives their LSNs back, and points the queue at the active
    /// segment again. The next new segment retries the size `cap`.
    fn drop_unwritten(&self, cap: u64) {
        let mut st = self.inner.state.borrow_mut();
        let inflight = st.inflight.take();
        let dropped: Vec<Chunk> = inflight.into_iter().chain(st.pending.drain(..)).collect();
        for c in &dropped {
            c.dropped.set(true);
        }
        let first = dropped.first().map_or(st.next_lsn, |c| c.first_lsn);
        debug_assert_eq!(
            first, st.acked_lsn,
            "the in-flight chunk is the oldest unacked"
        );
        tracing::warn!(
            first_lsn = first,
            end_lsn = st.next_lsn,
            chunks = dropped.len(),
            "dropped unwritten batches: no space for a new segment"
        );
        st.next_lsn = first;
        st.pending_bytes = 0;
        st.tail_pos = st.active().data_end;
        st.tail_cap = st.active().capacity;
        st.next_cap = st.next_cap.min(cap);
        st.wake_all();
    }

    /// The [`AppendError::NoSpace`] of batches dropped unwritten.
    pub(crate) fn no_space_error(&self) -> AppendError {
        no_space(&self.inner.state.borrow(), &self.inner.config.dir)
    }

    /// Poisons the log for an [`AppendError::Io`]; other errors pass through.
    fn poison_io(&self, e: AppendError) -> AppendError {
        if let AppendError::Io {
            op,
            file,
            offset,
            source,
        } = e
        {
            return self.poison(op, file, offset, source);
        }
        e
    }

    /// Seals the active segment (fdatasync, whatever the policy, so that damage in a sealed
    /// segment is never a torn tail) and creates the next one at `base_lsn`, of `cap` bytes.
    /// Running out of space for it ([`AppendError::NoSpace`]) does not poison the log.
    async fn roll_to(&self, base_lsn: u64, cap: u64) -> Result<(), AppendError> {
        let (file, path, offset, sealed_base) = {
            let st = self.inner.state.borrow();
            let a = st.active();
            (Rc::clone(&a.file), a.path.clone(), a.data_end, a.base_lsn)
        };
        if let Err(source) = file.sync_data().await {
            return Err(self.poison("fdatasync before roll", path, offset, source));
        }
        {
            let mut st = self.inner.state.borrow_mut();
            st.synced_lsn = st.acked_lsn;
            st.active_mut().synced_end = offset;
        }
        self.create_segment(base_lsn, cap)
            .await
            .map_err(|e| self.poison_io(e))?;
        // The sealed segment takes no more appends: close its direct descriptor (one fewer
        // open file per sealed segment) and forget its partial block.
        file.release_direct();
        if let Some(s) = self.inner.state.borrow_mut().segments.get_mut(&sealed_base) {
            s.direct = None;
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one: flushes everything queued, `fdatasync`s
    /// the active segment (whatever the policy) and creates the next segment at the next LSN
    /// (reusing a spare if one is kept). Later appends go to the new segment. Does nothing
    /// when the active segment holds no record yet.
    ///
    /// Appends may run concurrently: batches queued while the roll is in progress go to the
    /// new segment. Errors: like [`Log::append`] (an I/O error poisons the log; a closed log
    /// refuses). Cancel safety: dropping the future before the new segment is installed
    /// leaves the active segment in place and the next batch queued starts the new segment;
    /// nothing is lost or written twice.
    pub async fn roll(&self) -> Result<(), AppendError> {
        self.seal_active(false).await.map(|_| ())
    }

    /// [`Log::roll`]; when the active segment is empty and `zero_empty_tail`, zero-fills its
    /// bytes after the header instead (a reused spare's stale bytes) unless known clean.
    /// Returns the bytes zeroed.
    pub(crate) async fn seal_active(&self, zero_empty_tail: bool) -> Result<u64, AppendError> {
        // Become the leader: nobody else flushes while the active segment changes.
        poll_fn(|cx| {
            let mut st = self.inner.state.borrow_mut();
            if let Some(err) = refusal(&st) {
                return Poll::Ready(Err(err));
            }
            if st.flushing {
                st.waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            st.flushing = true;
            Poll::Ready(Ok(()))
        })
        .await?;
        let _leadership = Leadership(self);
        loop {
            let (acked, end) = {
                let st = self.inner.state.borrow();
                (st.acked_lsn, st.next_lsn)
            };
            if acked >= end {
                break;
            }
            self.lead(end, false).await?;
        }
        // No await from here to `roll_to`: nothing is queued, so the active segment ends at
        // `next_lsn`.
        let (base, empty, file, path, data_end, tail_clean) = {
            let st = self.inner.state.borrow();
            let a = st.active();
            debug_assert!(st.pending.is_empty() && st.inflight.is_none());
            debug_assert_eq!(a.end_lsn, st.next_lsn, "everything queued was flushed");
            (
                st.next_lsn,
                a.end_lsn == a.base_lsn,
                Rc::clone(&a.file),
                a.path.clone(),
                a.data_end,
                a.tail_clean,
            )
        };
        if empty {
            if !zero_empty_tail || tail_clean {
                return Ok(0);
            }
            // No flush runs while we lead, and flushes write only at or after `data_end`.
            let zeroed = crate::scrub::zero_tail(&*file, &path, data_end)
                .await
                .map_err(|(offset, source)| self.poison("zero-fill tail", path, offset, source))?;
            self.inner.state.borrow_mut().active_mut().tail_clean = true;
            return Ok(zeroed);
        }
        // Any batch queued from now on cannot fit: it starts a chunk for the new segment,
        // whose base is `base` (see `enqueue`; `flush_one` replaces the new segment if it is
        // smaller than that chunk needs).
        let cap = {
            let mut st = self.inner.state.borrow_mut();
            st.tail_pos = st.tail_cap;
            st.take_cap(0, self.inner.config.segment_bytes)
        };
        let rolled = self.roll_to(base, cap).await;
        let mut st = self.inner.state.borrow_mut();
        if let Err(e) = rolled {
            if st.pending.is_empty() && st.active().base_lsn != base {
                // Nothing was queued for the new segment: continue in the active one.
                st.tail_pos = st.active().data_end;
                st.tail_cap = st.active().capacity;
                st.next_cap = st.next_cap.min(cap);
            }
            return Err(e);
        }
        if st.pending.is_empty() {
            st.tail_pos = SEGMENT_HEADER_BYTES as u64;
            st.tail_cap = st.active().capacity;
        }
        debug_assert_eq!(st.active().base_lsn, base);
        Ok(0)
    }

    fn poison(
        &self,
        op: &'static str,
        file: std::path::PathBuf,
        offset: u64,
        source: std::io::Error,
    ) -> AppendError {
        tracing::error!(op, file = %file.display(), offset, error = %source, "log I/O failed; log poisoned");
        let mut st = self.inner.state.borrow_mut();
        st.poisoned = Some(Poison {
            op,
            file: file.clone(),
            offset,
            kind: source.kind(),
        });
        st.wake_all();
        AppendError::Io {
            op,
            file,
            offset,
            source,
        }
    }
}

/// The error of a batch dropped unwritten for lack of space.
fn no_space<F>(st: &State<F>, dir: &std::path::Path) -> AppendError {
    let (dir, bytes_needed) = st
        .no_space
        .clone()
        .unwrap_or_else(|| (dir.to_path_buf(), 0));
    AppendError::NoSpace { dir, bytes_needed }
}

fn poisoned(p: &Poison) -> AppendError {
    AppendError::Poisoned {
        op: p.op,
        file: p.file.clone(),
        offset: p.offset,
        kind: p.kind,
    }
}

fn refusal<F>(st: &State<F>) -> Option<AppendError> {
    if let Some(p) = &st.poisoned {
        return Some(poisoned(p));
    }
    st.closed.then_some(AppendError::Closed)
}

/// The pending chunk that holds `lsn` (it was queued with no await since).
fn chunk_holding<F>(st: &mut State<F>, lsn: u64) -> &mut Chunk {
    st.pending
        .iter_mut()
        .rev()
        .find(|c| c.first_lsn <= lsn && lsn < c.end_lsn)
        .expect("invariant: a batch stays pending until the next await")
}
