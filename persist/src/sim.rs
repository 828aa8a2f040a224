//! A simulated disk for power-loss tests: an in-memory [`LogIo`] with a volatile cache.
//!
//! A process kill (SIGKILL) never loses the page cache, so it cannot test what survives a power
//! cut. [`SimIo`] models a disk the way the log's recovery assumes it (see `docs/PERSIST.md`,
//! "Testing durability"):
//!
//! - **File data** written by [`LogFile::write_all_at`], [`LogFile::set_len`] and
//!   [`LogFile::allocate`] is visible to reads at once but stays *volatile* (in the cache)
//!   until [`LogFile::sync_data`] of that file makes it durable. A file opened with
//!   [`LogIo::open_write_through`] (`O_DSYNC`) makes each write durable when it completes.
//! - **Directory entries** created, renamed or removed by [`LogIo::open`] (with `create`),
//!   [`LogIo::rename`] and [`LogIo::remove`] are volatile until [`LogIo::sync_dir`] of the
//!   directory holding them. Directories themselves ([`LogIo::create_dir_all`]) are durable
//!   at once (the log never syncs the parent of its own directory).
//! - **A crash** happens at a seeded operation: [`SimIo::crash_at_op`] arms it, and that
//!   operation and every later one fail with an error (the operation does not happen; when it
//!   is a write, a torn prefix of it may still reach the disk). [`SimIo::power_loss`] then
//!   builds the disk that survives: the durable image plus, chosen by a [`LossMode`], none, an
//!   in-order prefix, or a random subset (reordering) of the unsynced writes, the last one
//!   kept possibly torn at 512-byte sector granularity; and a prefix of the unsynced directory
//!   operations in the order they were made (a journaling file system commits metadata in
//!   order). Files no surviving name refers to are gone.
//!
//! Every operation counts (reads included), so crash points are numbered `1..=`[`SimIo::ops`].
//! Everything is deterministic from the seed given to [`SimIo::new`] and
//! [`SimIo::power_loss`]. Writes and syncs may return `Pending` once before completing (a
//! seeded choice, see [`SimIo::set_yield_permille`]) so that concurrent appenders meet in one
//! group commit, as they do on io_uring.
//!
//! ```
//! use quark_persist::sim::{LossMode, SimIo};
//! use quark_persist::{block_on, Batch, Log, LogConfig};
//! let io = SimIo::new(7);
//! let mut config = LogConfig::new("/sim/log", 0);
//! config.segment_bytes = 16 * 1024;
//! block_on(async {
//!     let (log, _) = Log::open(io.clone(), config.clone()).await.unwrap();
//!     let mut b = Batch::new();
//!     b.event(b"k", b"acknowledged");
//!     log.append(&b).await.unwrap(); // durable under fsync = always
//!     io.crash_at_op(io.ops() + 1); // the next operation fails: power is cut
//!     assert!(log.append(&b).await.is_err());
//! });
//! let survived = io.power_loss(LossMode::DropUnsynced, 1);
//! block_on(async {
//!     let (log, _) = Log::open(survived, config).await.unwrap();
//!     assert_eq!(log.read(1).await.unwrap().unwrap().payload, b"acknowledged");
//! });
//! ```
#![allow(async_fn_in_trait)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::poll_fn;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::Poll;

use crate::io::{LogFile, LogIo};

/// Sector size: a torn write keeps whole sectors (of the file's offsets) only.
pub const SECTOR_BYTES: u64 = 512;

/// The alignment of the simulated disk's direct writes ([`LogFile::direct_align`]).
pub const SIM_DIRECT_ALIGN: usize = 4096;

/// What a power loss keeps of the writes that were not synced.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LossMode {
    /// Only durable data survives (plus, possibly, a torn prefix of the write the crash
    /// interrupted).
    DropUnsynced,
    /// Per file, a random prefix (in issue order) of the unsynced writes survives; the first
    /// write after the prefix may survive torn (a sector prefix of it).
    InOrder,
    /// Per file, each unsynced write independently survives whole, torn, or not at all (the
    /// disk reordered its cache).
    Reorder,
}

impl LossMode {
    /// The three modes, for picking one from a seed.
    pub const ALL: [LossMode; 3] = [LossMode::DropUnsynced, LossMode::InOrder, LossMode::Reorder];
}

/// A small deterministic generator (xorshift64*), public so tests derive everything from one
/// seed the same way.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `permille / 1000`.
    pub fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
}

/// An unsynced change to a file's data.
#[derive(Clone, Debug)]
enum DataOp {
    Write {
        pos: u64,
        bytes: Rc<Vec<u8>>,
        /// The write the crash interrupted: it never completed.
        interrupted: bool,
        /// A direct write: torn, any subset of its sectors lands (not only a prefix).
        direct: bool,
    },
    SetLen(u64),
    /// `fallocate`: length at least this.
    Grow(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    /// What survives a power loss.
    durable: Vec<u8>,
    /// What reads see (durable plus every unsynced change).
    cache: Vec<u8>,
    /// Unsynced changes, in issue order.
    pending: Vec<DataOp>,
}

/// An unsynced directory operation.
#[derive(Clone, Debug)]
enum DirOp {
    Link {
        path: PathBuf,
        inode: u64,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        inode: u64,
    },
    Unlink {
        path: PathBuf,
    },
}

impl DirOp {
    fn touches(&self, dir: &Path) -> bool {
        let parent_is = |p: &PathBuf| p.parent() == Some(dir);
        match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } => parent_is(path),
            DirOp::Rename { from, to, .. } => parent_is(from) || parent_is(to),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Link { path, inode } => {
                names.insert(path.clone(), *inode);
            }
            DirOp::Rename { from, to, inode } => {
                names.remove(from);
                names.insert(to.clone(), *inode);
            }
            DirOp::Unlink { path } => {
                names.remove(path);
            }
        }
    }
}

#[derive(Debug)]
struct Disk {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    /// Current namespace (what `list_dir` and `open` see).
    names: BTreeMap<PathBuf, u64>,
    /// Namespace that survives a power loss.
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    /// Unsynced directory operations, in issue order.
    dir_ops: Vec<DirOp>,
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    rng: SimRng,
    yield_permille: u64,
    clock_ms: u64,
    /// `open_direct` fails with `EINVAL` (see [`SimIo::refuse_direct`]).
    refuse_direct: bool,
    /// Interrupted direct writes the power loss that made this disk kept torn (some sectors).
    torn_direct: u64,
}

impl Disk {
    fn new(seed: u64) -> Self {
        Self {
            inodes: HashMap::new(),
            next_inode: 1,
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            dirs: BTreeSet::from([PathBuf::from("/")]),
            dir_ops: Vec::new(),
            ops: 0,
            crash_at: None,
            crashed: false,
            rng: SimRng::new(seed),
            yield_permille: 500,
            clock_ms: 1_700_000_000_000,
            refuse_direct: false,
            torn_direct: 0,
        }
    }

    /// Counts one operation; errors when the power is (or just went) out.
    fn op(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(power_cut());
        }
        self.ops += 1;
        self.clock_ms += 1;
        if self.crash_at.is_some_and(|k| self.ops >= k) {
            self.crashed = true;
            return Err(power_cut());
        }
        Ok(())
    }

    fn inode(&mut self, id: u64) -> io::Result<&mut Inode> {
        self.inodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "simulated file was dropped"))
    }
}

fn power_cut() -> io::Error {
    io::Error::other("simulated power loss")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such simulated file or directory", path.display()),
    )
}

fn write_into(buf: &mut Vec<u8>, pos: u64, bytes: &[u8]) {
    let pos = pos as usize;
    let end = pos + bytes.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[pos..end].copy_from_slice(bytes);
}

/// The simulated disk's [`LogIo`]. Cheap to clone; clones share the disk.
#[derive(Clone, Debug)]
pub struct SimIo {
    disk: Rc<RefCell<Disk>>,
}

/// A file of a [`SimIo`] disk.
#[derive(Debug)]
pub struct SimFile {
    disk: Rc<RefCell<Disk>>,
    inode: u64,
    write_through: bool,
    /// Opened by [`LogIo::open_direct`]: the alignment of direct writes.
    direct: Option<usize>,
}

impl SimIo {
    /// An empty disk (only `/` exists); `seed` drives yields.
    pub fn new(seed: u64) -> Self {
        Self {
            disk: Rc::new(RefCell::new(Disk::new(seed))),
        }
    }

    /// Operations performed so far (every [`LogIo`] and [`LogFile`] call counts one).
    pub fn ops(&self) -> u64 {
        self.disk.borrow().ops
    }

    /// Arms the crash: operation number `k` (counted from the disk's creation, see
    /// [`SimIo::ops`]) and every later one fail. `k <= ops()` cuts the power at the next one.
    pub fn crash_at_op(&self, k: u64) {
        self.disk.borrow_mut().crash_at = Some(k);
    }

    /// Cuts the power now: every later operation fails.
    pub fn crash_now(&self) {
        self.disk.borrow_mut().crashed = true;
    }

    /// Whether the power is out.
    pub fn crashed(&self) -> bool {
        self.disk.borrow().crashed
    }

    /// Chance (per mille) that a write or sync returns `Pending` once before completing
    /// (default 500).
    pub fn set_yield_permille(&self, permille: u64) {
        self.disk.borrow_mut().yield_permille = permille;
    }

    /// The disk that survives a power loss now (see the module documentation); this disk's
    /// power is cut for good. `seed` drives which unsynced writes and directory operations
    /// survive and where a torn write is cut. The new disk starts with its operation counter
    /// at 0, no crash armed, and a clock later than this one's.
    pub fn power_loss(&self, mode: LossMode, seed: u64) -> SimIo {
        let mut old = self.disk.borrow_mut();
        old.crashed = true;
        let mut rng = SimRng::new(seed);
        let mut names = old.durable_names.clone();
        let kept_dir_ops = match mode {
            LossMode::DropUnsynced => 0,
            _ => rng.below(old.dir_ops.len() as u64 + 1) as usize,
        };
        for op in &old.dir_ops[..kept_dir_ops] {
            op.apply(&mut names);
        }
        let mut inodes = HashMap::new();
        let mut torn_direct = 0;
        for &id in names.values() {
            if inodes.contains_key(&id) {
                continue;
            }
            let Some(ino) = old.inodes.get(&id) else {
                continue;
            };
            let mut data = ino.durable.clone();
            let n = ino.pending.len();
            let prefix = match mode {
                LossMode::InOrder => rng.below(n as u64 + 1) as usize,
                _ => 0,
            };
            for (i, op) in ino.pending.iter().enumerate() {
                // 0: lost, 1: whole, 2: torn.
                let fate = match mode {
                    LossMode::DropUnsynced => 0,
                    LossMode::InOrder if i < prefix => 1,
                    LossMode::InOrder if i == prefix => 2 * (rng.below(2)),
                    LossMode::InOrder => 0,
                    LossMode::Reorder => rng.below(3),
                };
                let interrupted = matches!(
                    op,
                    DataOp::Write {
                        interrupted: true,
                        ..
                    }
                );
                // The interrupted write never completed: at most a torn prefix of it lands.
                let fate = if interrupted {
                    if rng.chance(700) {
                        2
                    } else {
                        0
                    }
                } else {
                    fate
                };
                match (op, fate) {
                    (_, 0) => {}
                    (DataOp::Write { pos, bytes, .. }, 1) => write_into(&mut data, *pos, bytes),
                    (
                        DataOp::Write {
                            pos,
                            bytes,
                            direct: true,
                            ..
                        },
                        _,
                    ) => {
                        // A direct write reaches the device as sector writes in no set order:
                        // each sector lands or not.
                        torn_direct += 1;
                        for (i, sector) in bytes.chunks(SECTOR_BYTES as usize).enumerate() {
                            if rng.chance(500) {
                                write_into(&mut data, pos + (i as u64) * SECTOR_BYTES, sector);
                            }
                        }
                    }
                    (DataOp::Write { pos, bytes, .. }, _) => {
                        // Keep whole sectors: cut at a sector boundary inside the write.
                        let end = pos + bytes.len() as u64;
                        let first_cut = (pos / SECTOR_BYTES + 1) * SECTOR_BYTES;
                        let cuts = end.saturating_sub(first_cut).div_ceil(SECTOR_BYTES);
                        let cut = (first_cut + rng.below(cuts + 1) * SECTOR_BYTES).min(end);
                        write_into(&mut data, *pos, &bytes[..(cut - pos) as usize]);
                    }
                    (DataOp::SetLen(len), _) => data.resize(*len as usize, 0),
                    (DataOp::Grow(len), _) => {
                        if (data.len() as u64) < *len {
                            data.resize(*len as usize, 0);
                        }
                    }
                }
            }
            inodes.insert(
                id,
                Inode {
                    durable: data.clone(),
                    cache: data,
                    pending: Vec::new(),
                },
            );
        }
        let disk = Disk {
            inodes,
            next_inode: old.next_inode,
            names: names.clone(),
            durable_names: names,
            dirs: old.dirs.clone(),
            dir_ops: Vec::new(),
            ops: 0,
            crash_at: None,
            crashed: false,
            rng: SimRng::new(rng.next_u64()),
            yield_permille: old.yield_permille,
            clock_ms: old.clock_ms + 1_000,
            refuse_direct: old.refuse_direct,
            torn_direct,
        };
        SimIo {
            disk: Rc::new(RefCell::new(disk)),
        }
    }

    /// The current (cached) contents of `path`, if it exists.
    pub fn file_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let d = self.disk.borrow();
        let id = d.names.get(path)?;
        d.inodes.get(id).map(|i| i.cache.clone())
    }

    /// Maybe returns `Pending` once (seeded), so other tasks run while "the disk works".
    async fn maybe_yield(&self) {
        let yield_now = {
            let mut d = self.disk.borrow_mut();
            let p = d.yield_permille;
            d.rng.chance(p)
        };
        if yield_now {
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
            .await;
        }
    }

    fn file(&self, inode: u64, write_through: bool) -> SimFile {
        SimFile {
            disk: Rc::clone(&self.disk),
            inode,
            write_through,
            direct: None,
        }
    }

    /// How many interrupted direct writes the power loss that built this disk kept torn (each
    /// of their sectors landed or not, independently).
    pub fn torn_direct_writes(&self) -> u64 {
        self.disk.borrow().torn_direct
    }

    /// Makes [`LogIo::open_direct`] fail with `EINVAL`, as tmpfs does (by default the
    /// simulated disk accepts direct I/O with a [`SIM_DIRECT_ALIGN`] alignment).
    pub fn refuse_direct(&self) {
        self.disk.borrow_mut().refuse_direct = true;
    }
}

impl LogIo for SimIo {
    type File = SimFile;

    /// The simulated disk is private to this process: there is nobody to lock out.
    fn lock_dir(&self, _dir: &Path) -> Result<Option<crate::DirLock>, crate::LockError> {
        Ok(None)
    }

    async fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let mut d = self.disk.borrow_mut();
        d.op()?;
        if let Some(&id) = d.names.get(path) {
            drop(d);
            return Ok(self.file(id, false));
        }
        let parent_exists = path.parent().is_some_and(|p| d.dirs.contains(p));
        if !create || !parent_exists {
            return Err(not_found(path));
        }
        let id = d.next_inode;
        d.next_inode += 1;
        d.inodes.insert(id, Inode::default());
        d.names.insert(path.to_path_buf(), id);
        d.dir_ops.push(DirOp::Link {
            path: path.to_path_buf(),
            inode: id,
        });
        drop(d);
        Ok(self.file(id, false))
    }

    async fn open_write_through(&self, path: &Path) -> io::Result<SimFile> {
        let mut d = self.disk.borrow_mut();
        d.op()?;
        let id = *d.names.get(path).ok_or_else(|| not_found(path))?;
        drop(d);
        Ok(self.file(id, true))
    }

    async fn open_direct(&self, path: &Path) -> io::Result<SimFile> {
        let mut d = self.disk.borrow_mut();
        d.op()?;
        if d.refuse_direct {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let id = *d.names.get(path).ok_or_else(|| not_found(path))?;
        drop(d);
        let mut f = self.file(id, true);
        f.direct = Some(SIM_DIRECT_ALIGN);
        Ok(f)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        d.op()?;
        if !to.parent().is_some_and(|p| d.dirs.contains(p)) {
            return Err(not_found(to));
        }
        let id = d.names.remove(from).ok_or_else(|| not_found(from))?;
        d.names.insert(to.to_path_buf(), id);
        d.dir_ops.push(DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            inode: id,
        });
        Ok(())
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        d.op()?;
        d.names.remove(path).ok_or_else(|| not_found(path))?;
        d.dir_ops.push(DirOp::Unlink {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut d = self.disk.borrow_mut();
        d.op()?;
        if !d.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let in_dir = |p: &&PathBuf| p.parent() == Some(dir);
        let mut out: Vec<PathBuf> = d.names.keys().filter(in_dir).cloned().collect();
        out.extend(d.dirs.iter().filter(in_dir).cloned());
        Ok(out)
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        d.op()?;
        for a in dir.ancestors() {
            if d.names.contains_key(a) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: a simulated file is in the way", a.display()),
                ));
            }
            d.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.maybe_yield().await;
        let mut d = self.disk.borrow_mut();
        d.op()?;
        if !d.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let ops = std::mem::take(&mut d.dir_ops);
        let mut rest = Vec::new();
        for op in ops {
            if op.touches(dir) {
                op.apply(&mut d.durable_names);
            } else {
                rest.push(op);
            }
        }
        d.dir_ops = rest;
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.disk.borrow().clock_ms
    }
}

impl SimFile {
    fn io(&self) -> SimIo {
        SimIo {
            disk: Rc::clone(&self.disk),
        }
    }
}

impl LogFile for SimFile {
    async fn write_all_at(&self, buf: Rc<Vec<u8>>, pos: u64) -> io::Result<()> {
        self.io().maybe_yield().await;
        let mut d = self.disk.borrow_mut();
        let was_up = !d.crashed;
        if let Err(e) = d.op() {
            // The write the crash interrupted (not one issued after it): part of it may land.
            if was_up {
                let bytes = Rc::new(buf.to_vec());
                d.inode(self.inode)?.pending.push(DataOp::Write {
                    pos,
                    bytes,
                    interrupted: true,
                    direct: false,
                });
            }
            return Err(e);
        }
        let wt = self.write_through;
        let ino = d.inode(self.inode)?;
        write_into(&mut ino.cache, pos, &buf);
        if wt {
            // O_DSYNC: durable on completion (earlier unsynced writes stay unsynced).
            write_into(&mut ino.durable, pos, &buf);
        } else {
            ino.pending.push(DataOp::Write {
                pos,
                bytes: Rc::new(buf.to_vec()),
                interrupted: false,
                direct: false,
            });
        }
        Ok(())
    }

    fn direct_align(&self) -> Option<usize> {
        self.direct
    }

    /// A direct write: refused (`EINVAL`) unless offset, length and memory are aligned, as the
    /// kernel does; durable on completion; interrupted by a crash, any subset of its sectors
    /// may land (see [`SimIo::power_loss`]).
    async fn write_direct_at(&self, buf: Rc<crate::io::AlignedBuf>, pos: u64) -> io::Result<()> {
        let Some(align) = self.direct else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let a = align as u64;
        if !pos.is_multiple_of(a)
            || !(buf.len() as u64).is_multiple_of(a)
            || !(buf.as_ptr() as usize).is_multiple_of(align)
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.io().maybe_yield().await;
        let mut d = self.disk.borrow_mut();
        let was_up = !d.crashed;
        if let Err(e) = d.op() {
            if was_up {
                let bytes = Rc::new(buf.as_slice().to_vec());
                d.inode(self.inode)?.pending.push(DataOp::Write {
                    pos,
                    bytes,
                    interrupted: true,
                    direct: true,
                });
            }
            return Err(e);
        }
        let ino = d.inode(self.inode)?;
        write_into(&mut ino.cache, pos, buf.as_slice());
        write_into(&mut ino.durable, pos, buf.as_slice());
        Ok(())
    }

    async fn read_at(&self, mut buf: Vec<u8>, pos: u64) -> (io::Result<usize>, Vec<u8>) {
        let mut d = self.disk.borrow_mut();
        if let Err(e) = d.op() {
            return (Err(e), buf);
        }
        let ino = match d.inode(self.inode) {
            Ok(i) => i,
            Err(e) => return (Err(e), buf),
        };
        let start = (pos as usize).min(ino.cache.len());
        let n = buf.len().min(ino.cache.len() - start);
        buf[..n].copy_from_slice(&ino.cache[start..start + n]);
        (Ok(n), buf)
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.io().maybe_yield().await;
        let mut d = self.disk.borrow_mut();
        d.op()?;
        let ino = d.inode(self.inode)?;
        // Everything reads see becomes durable (write-through writes already were).
        ino.durable.clear();
        ino.durable.extend_from_slice(&ino.cache);
        ino.pending.clear();
        Ok(())
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        d.op()?;
        let ino = d.inode(self.inode)?;
        if (ino.cache.len() as u64) < len {
            ino.cache.resize(len as usize, 0);
        }
        ino.pending.push(DataOp::Grow(len));
        Ok(())
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        d.op()?;
        let ino = d.inode(self.inode)?;
        ino.cache.resize(len as usize, 0);
        ino.pending.push(DataOp::SetLen(len));
        Ok(())
    }

    async fn file_len(&self) -> io::Result<u64> {
        let mut d = self.disk.borrow_mut();
        d.op()?;
        Ok(d.inode(self.inode)?.cache.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::block_on;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    /// A disk with `/d/f` created and synced (name and empty contents durable).
    fn disk() -> (SimIo, SimFile) {
        let io = SimIo::new(1);
        io.set_yield_permille(0);
        let f = block_on(async {
            io.create_dir_all(&p("/d")).await.unwrap();
            let f = io.open(&p("/d/f"), true).await.unwrap();
            io.sync_dir(&p("/d")).await.unwrap();
            f
        });
        (io, f)
    }

    fn contents(io: &SimIo, path: &str) -> Option<Vec<u8>> {
        io.file_contents(&p(path))
    }

    #[test]
    fn only_synced_data_survives_drop_unsynced() {
        let (io, f) = disk();
        block_on(async {
            f.write_all_at(Rc::new(b"durable".to_vec()), 0)
                .await
                .unwrap();
            f.sync_data().await.unwrap();
            f.write_all_at(Rc::new(b"volatile".to_vec()), 7)
                .await
                .unwrap();
        });
        assert_eq!(contents(&io, "/d/f").unwrap(), b"durablevolatile");
        let after = io.power_loss(LossMode::DropUnsynced, 9);
        assert_eq!(contents(&after, "/d/f").unwrap(), b"durable");
    }

    #[test]
    fn write_through_writes_are_durable_on_completion() {
        let (io, _) = disk();
        block_on(async {
            let f = io.open_write_through(&p("/d/f")).await.unwrap();
            f.write_all_at(Rc::new(b"wt".to_vec()), 0).await.unwrap();
        });
        let after = io.power_loss(LossMode::DropUnsynced, 9);
        assert_eq!(contents(&after, "/d/f").unwrap(), b"wt");
    }

    #[test]
    fn directory_operations_need_a_directory_sync() {
        let (io, f) = disk();
        block_on(async {
            f.sync_data().await.unwrap();
            io.rename(&p("/d/f"), &p("/d/g")).await.unwrap();
            io.open(&p("/d/new"), true).await.unwrap();
        });
        let after = io.power_loss(LossMode::DropUnsynced, 9);
        assert!(
            contents(&after, "/d/f").is_some(),
            "the rename was not synced"
        );
        assert!(contents(&after, "/d/g").is_none());
        assert!(
            contents(&after, "/d/new").is_none(),
            "the creation was not synced"
        );
        block_on(async { after.rename(&p("/d/f"), &p("/d/g")).await.unwrap() });
        block_on(async { after.sync_dir(&p("/d")).await.unwrap() });
        let again = after.power_loss(LossMode::DropUnsynced, 9);
        assert!(contents(&again, "/d/f").is_none());
        assert!(contents(&again, "/d/g").is_some(), "synced rename survives");
    }

    #[test]
    fn an_interrupted_write_survives_as_a_sector_prefix_at_most() {
        let mut torn = 0;
        for seed in 0..64 {
            let (io, f) = disk();
            let data: Vec<u8> = (0..4096u32).map(|i| (i % 251 + 1) as u8).collect();
            block_on(async {
                f.sync_data().await.unwrap();
                io.crash_at_op(io.ops() + 1);
                assert!(f.write_all_at(Rc::new(data.clone()), 100).await.is_err());
                assert!(io.crashed());
                assert!(f.sync_data().await.is_err(), "nothing works after the cut");
            });
            let after = io.power_loss(LossMode::ALL[seed % 3], seed as u64);
            let got = contents(&after, "/d/f").unwrap();
            if got.is_empty() {
                continue;
            }
            torn += 1;
            let end = got.len();
            assert!(
                end == 100 + 4096 || end.is_multiple_of(SECTOR_BYTES as usize),
                "cut at {end}"
            );
            assert!(got[..100].iter().all(|&b| b == 0));
            assert_eq!(&got[100..], &data[..end - 100]);
        }
        assert!(torn > 0, "some interrupted writes land torn");
    }

    #[test]
    fn reorder_keeps_some_unsynced_writes_and_not_others() {
        let mut kinds = BTreeSet::new();
        for seed in 0..32 {
            let (io, f) = disk();
            block_on(async {
                f.write_all_at(Rc::new(vec![1; 512]), 0).await.unwrap();
                f.write_all_at(Rc::new(vec![2; 512]), 512).await.unwrap();
            });
            let got = contents(&io.power_loss(LossMode::Reorder, seed), "/d/f").unwrap();
            let first = got.first().copied().unwrap_or(0);
            let second = got.get(512).copied().unwrap_or(0);
            kinds.insert((first, second));
        }
        assert!(
            kinds.contains(&(0, 2)),
            "a later write survived an earlier lost one"
        );
        assert!(kinds.contains(&(1, 0)));
    }
}
