//! io_uring-backed file I/O for the durable log (`quark_persist`'s I/O seam), through monoio.
//!
//! The hot operations (`write_all_at`, `read_at`, `sync_data`) and `open` are io_uring
//! submissions on the shard's ring: the shard thread never blocks on them. The rare metadata
//! operations (`fallocate`, `ftruncate`, `fstat`, directory listing, rename, unlink, mkdir,
//! directory fsync) are plain blocking syscalls: monoio 0.2 exposes no io_uring op for
//! `fallocate`/`ftruncate`/`fsync` of a directory (and its `renameat`/`unlinkat`/`mkdirat` ops
//! are behind features the workspace does not enable). They run at open, segment roll and
//! compaction only, never per append; the segment roll's zero-fill writes do go through
//! io_uring.
//!
//! Under `fsync = "always"` with `[log] direct_io` on (the default where the file system
//! allows it), an append is one aligned `O_DIRECT | O_DSYNC` write on a second descriptor of
//! the active segment ([`LogIo::open_direct`]): into the zero-filled segment's written blocks
//! the kernel issues it inline from `io_uring_enter`, where a buffered `O_DSYNC` write always
//! goes to an io-wq worker (docs/PERSIST.md, "Direct I/O"). Reads stay on the buffered
//! descriptor: a direct write invalidates the page-cache pages it covers, so a later buffered
//! read sees its bytes (`tests/log_io.rs` reads back every append).

use std::cell::RefCell;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use monoio::buf::{IoBuf, IoBufMut};
use quark_persist::{AlignedBuf, LogFile, LogIo};

/// The io_uring backend of [`quark_persist::LogIo`]. Must be used inside a monoio runtime
/// (the shard's executor).
#[derive(Clone, Copy, Debug, Default)]
pub struct UringIo;

/// A segment file opened through [`UringIo`]: the buffered descriptor (reads, ordinary
/// writes) and, when opened by [`LogIo::open_direct`], the direct one (`O_DIRECT | O_DSYNC`)
/// with its alignment.
#[derive(Debug)]
pub struct UringFile {
    file: monoio::fs::File,
    /// The direct descriptor (`None` inside once released: the segment was sealed) and its
    /// alignment. A write holds an `Rc` clone, so a release never closes it under a write.
    direct: Option<(RefCell<Option<Rc<monoio::fs::File>>>, usize)>,
}

/// An aligned buffer handed to the kernel for a direct write: the log keeps a clone of the
/// `Rc`, so the memory stays alive and unmoved until the operation completes even if the
/// future is dropped.
struct SharedAligned(Rc<AlignedBuf>);

// SAFETY: `AlignedBuf` never reallocates and the log never writes to it while an `Rc` clone
// is shared (it reuses a buffer only after `Rc::try_unwrap` succeeds); every byte is
// initialised (zeroed at allocation).
unsafe impl IoBuf for SharedAligned {
    fn read_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.0.len()
    }
}

/// An `Rc<Vec<u8>>` handed to the kernel: the log keeps a clone, so the bytes stay alive and
/// unmoved until the operation completes even if the future is dropped.
struct SharedBuf(Rc<Vec<u8>>);

// SAFETY: the pointer is that of the Vec's heap allocation, which neither moves nor changes
// while any `Rc` clone exists: the log never mutates a buffer once it is shared (it only calls
// `Rc::get_mut` on unshared buffers). `bytes_init` is the Vec's length, all initialised.
unsafe impl IoBuf for SharedBuf {
    fn read_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.0.len()
    }
}

impl LogIo for UringIo {
    type File = UringFile;

    async fn open(&self, path: &Path, create: bool) -> io::Result<UringFile> {
        let file = monoio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(path)
            .await?;
        Ok(UringFile { file, direct: None })
    }

    async fn open_write_through(&self, path: &Path) -> io::Result<UringFile> {
        use std::os::unix::fs::OpenOptionsExt;
        // monoio's OpenOptions cannot pass O_DSYNC: open with std (blocking, once per
        // segment) and hand the descriptor to monoio; every write on it is an io_uring op.
        let std_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .open(path)?;
        Ok(UringFile {
            file: monoio::fs::File::from_std(std_file)?,
            direct: None,
        })
    }

    async fn open_direct(&self, path: &Path) -> io::Result<UringFile> {
        // Blocking opens (once per segment), as `open_write_through`; `EINVAL` on tmpfs.
        let (file, (direct, align)) = quark_persist::open_direct_pair(path)?;
        Ok(UringFile {
            file: monoio::fs::File::from_std(file)?,
            direct: Some((
                RefCell::new(Some(Rc::new(monoio::fs::File::from_std(direct)?))),
                align,
            )),
        })
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to) // blocking: rare metadata op (see module doc)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path) // blocking: rare metadata op
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect() // blocking: open-time only
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir) // blocking: open-time only
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all() // blocking: segment roll / compaction only
    }
}

impl LogFile for UringFile {
    async fn write_all_at(&self, buf: Rc<Vec<u8>>, pos: u64) -> io::Result<()> {
        let (res, _buf) = self.file.write_all_at(SharedBuf(buf), pos).await;
        res
    }

    async fn read_at(&self, mut buf: Vec<u8>, pos: u64) -> (io::Result<usize>, Vec<u8>) {
        let want = buf.len();
        buf.clear(); // io_uring reads fill the capacity; the length becomes the bytes read
        let mut done = 0;
        while done < want {
            let (res, slice) = self
                .file
                .read_at(buf.slice_mut(done..want), pos + done as u64)
                .await;
            buf = slice.into_inner();
            match res {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        debug_assert_eq!(buf.len(), done);
        (Ok(done), buf)
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data().await
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        quark_persist::fallocate(&self.file, len) // blocking: once per segment
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        let len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length exceeds off_t"))?;
        // SAFETY: ftruncate only reads its integer arguments; the fd is owned by `self.file`
        // and open for the duration of the call.
        let rc = unsafe { libc::ftruncate(self.file.as_raw_fd(), len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn direct_align(&self) -> Option<usize> {
        self.direct.as_ref().map(|&(_, a)| a)
    }

    async fn write_direct_at(&self, buf: Rc<AlignedBuf>, pos: u64) -> io::Result<()> {
        let Some((direct, _)) = &self.direct else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "file not opened for direct I/O",
            ));
        };
        let Some(direct) = direct.borrow().clone() else {
            return Err(io::Error::other(
                "direct descriptor released (segment sealed)",
            ));
        };
        let (res, _buf) = direct.write_all_at(SharedAligned(buf), pos).await;
        res
    }

    fn release_direct(&self) {
        if let Some((direct, _)) = &self.direct {
            direct.borrow_mut().take();
        }
    }

    async fn file_len(&self) -> io::Result<u64> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes a full `stat` into the pointer on success; we read it only then.
        let rc = unsafe { libc::fstat(self.file.as_raw_fd(), st.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: rc == 0, so fstat initialised the struct.
        let st = unsafe { st.assume_init() };
        Ok(st.st_size as u64)
    }
}

/// Opens (recovering) a shard's log on this thread's io_uring: the call a shard makes at
/// start-up. Must run inside the shard's monoio runtime.
pub async fn open_log(
    config: quark_persist::LogConfig,
) -> Result<(quark_persist::Log<UringIo>, quark_persist::RecoveryReport), quark_persist::OpenError>
{
    quark_persist::Log::open(UringIo, config).await
}
