//! Test helpers: a backend whose writes and syncs stay in flight for one poll (to exercise
//! group commit and cancellation without threads or sleeps), failure injection, and a
//! round-robin `join_all`.
#![allow(dead_code)]

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use quark_persist::{FsyncPolicy, LogConfig, LogFile, LogIo, Preallocate, StdFile, StdIo};

/// Counters and knobs shared by a [`YieldIo`] and its files.
#[derive(Default)]
pub struct Knobs {
    pub writes: Cell<u64>,
    pub syncs: Cell<u64>,
    /// Fail the next sync with EIO.
    pub fail_next_sync: Cell<bool>,
    /// Fixed clock value (ms) when non-zero.
    pub now_ms: Cell<u64>,
}

/// Wraps [`StdIo`]: every write and sync returns `Pending` once before doing the work.
#[derive(Clone, Default)]
pub struct YieldIo {
    pub knobs: Rc<Knobs>,
}

pub struct YieldFile {
    inner: StdFile,
    knobs: Rc<Knobs>,
}

/// Returns `Pending` once (waking itself), then `Ready`.
pub async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

impl LogIo for YieldIo {
    type File = YieldFile;
    async fn open(&self, path: &Path, create: bool) -> io::Result<YieldFile> {
        Ok(YieldFile {
            inner: StdIo.open(path, create).await?,
            knobs: Rc::clone(&self.knobs),
        })
    }
    async fn open_write_through(&self, path: &Path) -> io::Result<YieldFile> {
        Ok(YieldFile {
            inner: StdIo.open_write_through(path).await?,
            knobs: Rc::clone(&self.knobs),
        })
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdIo.rename(from, to).await
    }
    async fn remove(&self, path: &Path) -> io::Result<()> {
        StdIo.remove(path).await
    }
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        StdIo.list_dir(dir).await
    }
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdIo.create_dir_all(dir).await
    }
    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdIo.sync_dir(dir).await
    }
    fn now_ms(&self) -> u64 {
        match self.knobs.now_ms.get() {
            0 => StdIo.now_ms(),
            t => t,
        }
    }
}

impl LogFile for YieldFile {
    async fn write_all_at(&self, buf: Rc<Vec<u8>>, pos: u64) -> io::Result<()> {
        yield_once().await;
        self.knobs.writes.set(self.knobs.writes.get() + 1);
        self.inner.write_all_at(buf, pos).await
    }
    async fn read_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<usize>, Vec<u8>) {
        self.inner.read_at(buf, pos).await
    }
    async fn sync_data(&self) -> io::Result<()> {
        yield_once().await;
        if self.knobs.fail_next_sync.replace(false) {
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        self.knobs.syncs.set(self.knobs.syncs.get() + 1);
        self.inner.sync_data().await
    }
    async fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len).await
    }
    async fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len).await
    }
    async fn file_len(&self) -> io::Result<u64> {
        self.inner.file_len().await
    }
}

fn libc_eio() -> i32 {
    5
}

/// Polls all futures round-robin until every one completes; returns outputs in order.
pub async fn join_all<T>(futs: Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> Vec<T> {
    let mut futs: Vec<Option<Pin<Box<dyn Future<Output = T> + '_>>>> =
        futs.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        out[i] = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|v| v.expect("every future completed"))
        .collect()
}

/// Deterministic payload for (seed, index).
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The log of the crash tests with compaction: 16 KiB zero-filled segments (so segments roll,
/// are compacted into spares and reused constantly), every append synced, two spares kept.
#[allow(dead_code)] // not every test crate uses it
pub fn small_segments_config(dir: &Path, shard_id: u32) -> LogConfig {
    let mut c = LogConfig::new(dir, shard_id);
    c.segment_bytes = 16 * 1024;
    c.fsync = FsyncPolicy::Always;
    c.preallocate = Preallocate::ZeroFill;
    c.recycle_segments_max = 2;
    c
}
