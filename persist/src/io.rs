//! The I/O seam: every file operation the log performs goes through [`LogIo`] and [`LogFile`],
//! so the log core does not know the executor. `quark_shard::rt::log_io` implements them on
//! io_uring (monoio); [`StdIo`] implements them with blocking `std::fs` calls for tests, tools
//! and recovery off a shard thread.
//!
//! The futures are not `Send`: a log is owned by one shard thread.
#![allow(async_fn_in_trait)] // the seam is single-threaded by design: no Send bound wanted

use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::lock::{DirLock, LockError};

/// A directory-level backend: opens files and performs the rare metadata operations.
pub trait LogIo {
    /// The file handle type.
    type File: LogFile;

    /// Opens `path` for reading and writing, creating it (empty) when `create` is true and it
    /// does not exist. Never truncates.
    async fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing in write-through mode (`O_DSYNC`): a
    /// write completes only once its data is durable, as if followed by `fdatasync`.
    async fn open_write_through(&self, path: &Path) -> io::Result<Self::File>;
    /// Atomically renames `from` to `to` (replacing `to`).
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    async fn remove(&self, path: &Path) -> io::Result<()>;
    /// Lists the entries of a directory (full paths, any order).
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Creates a directory and its parents when missing.
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable (fsync of the dir).
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the log directory's exclusive lock for the life of the log, so that no other
    /// process opens the same log (`Log::open` calls it once the directory exists). The default
    /// is an `flock` on `<dir>/.lock` ([`DirLock::exclusive`]); a backend whose files no other
    /// process can see (the in-memory [`crate::sim::SimIo`]) returns `Ok(None)`.
    fn lock_dir(&self, dir: &Path) -> Result<Option<DirLock>, LockError> {
        DirLock::exclusive(dir).map(Some)
    }
    /// Wall-clock milliseconds since the Unix epoch: the log's only clock (record timestamps,
    /// `IntervalMs` fsync policy, expiry). A backend may return its executor's cached clock.
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// An open file. Buffers are owned (io_uring style): the backend may hold them until the
/// operation completes even if the future is dropped.
pub trait LogFile {
    /// Writes all of `buf` at `pos`. The log keeps a clone of the `Rc`, so a dropped write can
    /// be retried with the same bytes.
    async fn write_all_at(&self, buf: Rc<Vec<u8>>, pos: u64) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `pos` into `buf`, looping on short reads; returns how
    /// many bytes were read (less than `buf.len()` only at end of file) and the buffer.
    async fn read_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<usize>, Vec<u8>);
    /// `fdatasync`: makes written data (and the metadata needed to read it) durable.
    async fn sync_data(&self) -> io::Result<()>;
    /// Reserves `[0, len)` on disk (`fallocate`, mode 0): later writes there need no new
    /// allocation and the file length becomes at least `len`.
    async fn allocate(&self, len: u64) -> io::Result<()>;
    /// Sets the file length (truncates or extends with zeros).
    async fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current file length in bytes.
    async fn file_len(&self) -> io::Result<u64>;
}

/// Blocking `std::fs` backend. Every future completes on its first poll. Use it for tests,
/// command-line tools and recovery on a non-shard thread; on a shard thread use the io_uring
/// backend so the executor never blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdIo;

/// A file of the [`StdIo`] backend.
#[derive(Debug)]
pub struct StdFile(std::fs::File);

impl LogIo for StdIo {
    type File = StdFile;

    async fn open(&self, path: &Path, create: bool) -> io::Result<StdFile> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map(StdFile)
    }

    async fn open_write_through(&self, path: &Path) -> io::Result<StdFile> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .open(path)
            .map(StdFile)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect()
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

impl LogFile for StdFile {
    async fn write_all_at(&self, buf: Rc<Vec<u8>>, pos: u64) -> io::Result<()> {
        self.0.write_all_at(&buf, pos)
    }

    async fn read_at(&self, mut buf: Vec<u8>, pos: u64) -> (io::Result<usize>, Vec<u8>) {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(done), buf)
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        fallocate(&self.0, len)
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    async fn file_len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

/// `fallocate(fd, 0, 0, len)`; falls back to `set_len` where the filesystem does not support
/// it (tmpfs supports it; some overlay setups do not).
pub fn fallocate(file: &impl AsRawFd, len: u64) -> io::Result<()> {
    let off_len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length exceeds off_t"))?;
    // SAFETY: fallocate only reads its integer arguments; the fd is open for the call's
    // duration because `file` is borrowed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // SAFETY: as above; ftruncate only reads its integer arguments.
        let rc = unsafe { libc::ftruncate(file.as_raw_fd(), off_len) };
        if rc == 0 {
            return Ok(());
        }
        return Err(io::Error::last_os_error());
    }
    Err(err)
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread (parking between polls). Meant for the
/// [`StdIo`] backend in tools and tests; never call it on a shard thread.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
