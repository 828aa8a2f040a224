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
    /// Opens an existing file like [`LogIo::open_write_through`] and, in addition, a direct
    /// writer on it (`O_DIRECT | O_DSYNC`) for [`LogFile::write_direct_at`]: an aligned direct
    /// write into written (zero-filled) extents is issued inline by the kernel, where a
    /// buffered `O_DSYNC` write is handed to a worker thread (see `docs/PERSIST.md`, "Direct
    /// I/O"). Reads and [`LogFile::write_all_at`] keep using the buffered, write-through
    /// descriptor. Fails (`EINVAL` from the kernel, or `Unsupported`) where the file system
    /// refuses `O_DIRECT`; the default refuses.
    async fn open_direct(&self, path: &Path) -> io::Result<Self::File> {
        let _ = path;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this backend has no direct I/O",
        ))
    }
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
    /// The alignment (bytes, a power of two) that [`LogFile::write_direct_at`] requires of its
    /// offset, length and memory, when the file was opened by [`LogIo::open_direct`]; `None`
    /// otherwise.
    fn direct_align(&self) -> Option<usize> {
        None
    }
    /// Closes the direct descriptor (the segment was sealed: no more appends); a write in
    /// flight keeps it open until it completes. Reads and [`LogFile::direct_align`] are
    /// unaffected. The default does nothing.
    fn release_direct(&self) {}
    /// Writes all of `buf` at `pos` through the direct, write-through descriptor (durable on
    /// completion). `pos` and `buf.len()` are multiples of [`LogFile::direct_align`], and the
    /// buffer is allocated at that alignment. The log keeps a clone of the `Rc`.
    async fn write_direct_at(&self, buf: Rc<AlignedBuf>, pos: u64) -> io::Result<()> {
        let _ = (buf, pos);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "file not opened for direct I/O",
        ))
    }
}

/// A zero-initialised heap buffer whose address is a multiple of its alignment: the memory of
/// a direct (`O_DIRECT`) write. Never reallocated, so its address is stable while an
/// `Rc<AlignedBuf>` handed to the kernel is alive.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    /// `len` zero bytes at `align` (a power of two).
    ///
    /// # Panics
    /// When `align` is not a power of two, `len` is 0 or the allocation fails (as `Vec` does).
    pub fn zeroed(len: usize, align: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, align)
            .expect("invariant: a power-of-two alignment and a sane length");
        assert!(len > 0, "an aligned buffer holds at least one byte");
        // SAFETY: the layout has a non-zero size (checked above).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        Self { ptr, layout }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Always false (a buffer has at least one byte).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The alignment the buffer was allocated with.
    pub fn align(&self) -> usize {
        self.layout.align()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed, then written) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The address of the first byte (for a backend handing the buffer to the kernel).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this very layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len())
            .field("align", &self.align())
            .finish()
    }
}

/// The direct-I/O alignment of an open file: `statx`'s `STATX_DIOALIGN` (the larger of
/// `dio_offset_align` and `dio_mem_align`), or 4096 when the kernel or file system does not
/// report it. Never less than 512.
pub fn dio_align(file: &impl AsRawFd) -> usize {
    const FALLBACK: usize = 4096;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx writes at most a `struct statx` into the pointer; the fd is open for the
    // call's duration because `file` is borrowed; the empty path with AT_EMPTY_PATH names it.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return FALLBACK;
    }
    // SAFETY: rc == 0: statx filled the struct (it was zeroed before, too).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return FALLBACK;
    }
    let align = (stx.stx_dio_offset_align.max(stx.stx_dio_mem_align) as usize).max(512);
    if align.is_power_of_two() {
        align
    } else {
        FALLBACK
    }
}

/// Blocking `std::fs` backend. Every future completes on its first poll. Use it for tests,
/// command-line tools and recovery on a non-shard thread; on a shard thread use the io_uring
/// backend so the executor never blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdIo;

/// A file of the [`StdIo`] backend: the buffered descriptor, and the direct one with its
/// alignment when opened by [`LogIo::open_direct`].
#[derive(Debug)]
pub struct StdFile(
    std::fs::File,
    Option<(std::cell::RefCell<Option<std::fs::File>>, usize)>,
);

impl LogIo for StdIo {
    type File = StdFile;

    async fn open(&self, path: &Path, create: bool) -> io::Result<StdFile> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map(|f| StdFile(f, None))
    }

    async fn open_write_through(&self, path: &Path) -> io::Result<StdFile> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .open(path)
            .map(|f| StdFile(f, None))
    }

    async fn open_direct(&self, path: &Path) -> io::Result<StdFile> {
        let (file, direct) = open_direct_pair(path)?;
        Ok(StdFile(
            file,
            Some((std::cell::RefCell::new(Some(direct.0)), direct.1)),
        ))
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

    fn direct_align(&self) -> Option<usize> {
        self.1.as_ref().map(|&(_, a)| a)
    }

    async fn write_direct_at(&self, buf: Rc<AlignedBuf>, pos: u64) -> io::Result<()> {
        let Some((f, _)) = &self.1 else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "file not opened for direct I/O",
            ));
        };
        match &*f.borrow() {
            Some(f) => f.write_all_at(buf.as_slice(), pos),
            None => Err(io::Error::other(
                "direct descriptor released (segment sealed)",
            )),
        }
    }

    fn release_direct(&self) {
        if let Some((f, _)) = &self.1 {
            f.borrow_mut().take();
        }
    }
}

/// Opens `path` twice, the way [`LogIo::open_direct`] wants it: a buffered write-through
/// (`O_DSYNC`) descriptor for reads and ordinary writes, and a direct one (`O_DIRECT |
/// O_DSYNC`, write-only) with its alignment ([`dio_align`]). Blocking (once per segment).
/// `EINVAL` where the file system refuses `O_DIRECT` (tmpfs).
pub fn open_direct_pair(path: &Path) -> io::Result<(std::fs::File, (std::fs::File, usize))> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)?;
    let align = dio_align(&direct);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(path)?;
    Ok((file, (direct, align)))
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
