//! Memory accounting (issue 18, docs/MEMORY.md): the opt-in counting global allocator
//! ([`CountingAlloc`]), per-thread counters, and the attribution of heap bytes to the
//! activation whose turn allocated them.
//!
//! **Per thread.** Every block carries a 16-byte header in front of it (more for alignments
//! above 16) naming the *slot* of the thread that allocated it and the activation cell (index
//! and generation) it is attributed to. A shard thread registers a slot when its shard starts
//! (`SLOTS_MAX` at most per process). Each slot's counters are written only by its own thread
//! (a relaxed load and store: no read-modify-write, no lock prefix, no shared cache line with
//! another writer). Threads without a slot (outside the engine) are slot 0: their own blocks
//! are not counted at all (nothing but the header on their path), and their frees of blocks a
//! shard allocated are added to row 0 of the remote matrix with `fetch_add`.
//!
//! **Frees of memory allocated on another thread** are attributed to the thread that
//! *allocated* the block (its slot is in the header): the freeing thread adds the bytes to its
//! own row of a matrix `REMOTE[freeing slot][owner slot]` (again single-writer), and a reader
//! sums the owner's column at read time. So a shard's live bytes are exactly "allocated by this
//! shard's thread and not freed yet, wherever it was freed", and a message a shard allocates
//! and another frees counts on the allocating shard until it is freed, then on nobody.
//!
//! **Per activation.** The engine sets the thread's *current cell* around every poll of a
//! turn (activation, handler, deactivation: [`enter`], [`Attributed`]). An allocation made
//! meanwhile adds its bytes to the activation's cell and stamps the cell in the header; a free
//! of a stamped block subtracts them from the same cell, on whatever thread and in whatever
//! turn it happens (the owner thread with a plain store, other threads with `fetch_add` on the
//! cell's `remote_freed`). A cell's generation changes when its activation ends, so a late free
//! of a block of an ended activation does not touch its successor. The cell's figure is the
//! activation's *live-byte estimate*.
//!
//! Without `CountingAlloc` as the global allocator nothing is counted ([`counting`] is false)
//! and the hooks cost two thread-local writes per turn poll.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::rc::Weak;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quark_placement::ActorId;

/// Threads that can hold a slot of their own (slot 0, shared, is for every other thread).
pub const SLOTS_MAX: usize = 128;
/// Activation cells per shard thread; activations beyond it are not attributed (their bytes
/// count as the shard's other bytes).
pub const CELLS_MAX: usize = 1 << 20;
/// The header in front of every block (for alignments up to 16).
const HEADER: usize = 16;

// ---------------------------------------------------------------------------------------------
// Per-thread counters.

#[repr(C, align(128))]
struct Slot {
    /// Bytes allocated by the slot's thread.
    allocated: AtomicU64,
    /// Bytes of the slot's blocks freed by the slot's thread.
    freed: AtomicU64,
    /// Of `allocated`, bytes allocated outside any activation's turn.
    untagged_allocated: AtomicU64,
    /// Of `freed`, bytes of blocks allocated outside any activation's turn.
    untagged_freed: AtomicU64,
    /// Blocks allocated (a count).
    allocs: AtomicU64,
    /// The slot's table of activation cells (`CELLS_MAX` of them), published once.
    table: AtomicPtr<ActCell>,
    /// New activations on the slot's shard are refused (the memory monitor sets it).
    refuse: AtomicBool,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            allocated: AtomicU64::new(0),
            freed: AtomicU64::new(0),
            untagged_allocated: AtomicU64::new(0),
            untagged_freed: AtomicU64::new(0),
            allocs: AtomicU64::new(0),
            table: AtomicPtr::new(std::ptr::null_mut()),
            refuse: AtomicBool::new(false),
        }
    }
}

static SLOTS: [Slot; SLOTS_MAX] = [const { Slot::new() }; SLOTS_MAX];
/// `REMOTE[f][o]`: bytes of slot `o`'s blocks freed by slot `f`'s thread (row `f` written by
/// that thread only, except row 0).
static REMOTE: [[AtomicU64; SLOTS_MAX]; SLOTS_MAX] =
    [const { [const { AtomicU64::new(0) }; SLOTS_MAX] }; SLOTS_MAX];
/// The same, for blocks allocated outside any turn.
static REMOTE_UNTAGGED: [[AtomicU64; SLOTS_MAX]; SLOTS_MAX] =
    [const { [const { AtomicU64::new(0) }; SLOTS_MAX] }; SLOTS_MAX];
/// The next slot to hand out (slots are never reused: their blocks may outlive the thread).
static NEXT_SLOT: AtomicU32 = AtomicU32::new(1);
/// A `CountingAlloc` served an allocation.
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Adds `v` to a counter of slot `slot`: a plain load and store when the slot is the calling
/// thread's own (the only writer), `fetch_add` for the shared slot 0.
#[inline(always)]
fn bump(c: &AtomicU64, v: u64, slot: u32) {
    if slot == 0 {
        c.fetch_add(v, Ordering::Relaxed);
    } else {
        c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
    }
}

/// One activation's cell: its live-byte estimate is `own - remote_freed`.
#[repr(C)]
struct ActCell {
    /// Bytes allocated in its turns minus those freed by the cell's own thread (single writer).
    own: AtomicI64,
    /// Bytes of its blocks freed by other threads.
    remote_freed: AtomicI64,
    /// Odd while an activation holds the cell; bumped at each hand-out and release.
    gen: AtomicU32,
}

struct Tls {
    slot: Cell<u32>,
    /// The current cell: `index | slot << 20 | generation << 32`, 0 for none.
    cell: Cell<u64>,
}

thread_local! {
    // Const-initialised and without a destructor: usable from inside the allocator, at any
    // point of a thread's life.
    static TLS: Tls = const { Tls { slot: Cell::new(0), cell: Cell::new(0) } };
}

#[inline(always)]
fn table(slot: u32) -> *mut ActCell {
    SLOTS[slot as usize].table.load(Ordering::Acquire)
}

// Format of the header, the 16 bytes right before the block the caller gets:
// { owner slot u32 | cell index u32 | cell generation u32 | reserved u32 } (native endian).
#[inline(always)]
unsafe fn write_header(user: *mut u8, slot: u32, cell: u64) {
    let h = user.sub(HEADER) as *mut [u32; 4];
    h.write_unaligned([slot, cell as u32, (cell >> 32) as u32, 0]);
}

#[inline(always)]
unsafe fn read_header(user: *mut u8) -> (u32, u64) {
    let h = (user.wrapping_sub(HEADER) as *const [u32; 4]).read_unaligned();
    (h[0], u64::from(h[1]) | (u64::from(h[2]) << 32))
}

#[inline(always)]
fn note_alloc(user: *mut u8, size: usize) {
    let size64 = size as u64;
    TLS.with(|t| {
        let slot = t.slot.get();
        if slot == 0 {
            // A thread outside the engine: its own blocks are not counted (no shared counter
            // on its path); the header says so.
            // SAFETY: `user` is HEADER or more bytes past the start of the inner block.
            unsafe { write_header(user, 0, 0) };
            return;
        }
        let cell = t.cell.get();
        let s = &SLOTS[slot as usize];
        bump(&s.allocated, size64, slot);
        bump(&s.allocs, 1, slot);
        if cell == 0 {
            bump(&s.untagged_allocated, size64, slot);
        } else {
            // SAFETY: a cell is current only on a registered thread (slot != 0) whose table is
            // published, and its index is below CELLS_MAX (`CellAlloc::acquire`).
            let c = unsafe { &*table(slot).add(cell_index(cell)) };
            c.own.store(
                c.own.load(Ordering::Relaxed) + size as i64,
                Ordering::Relaxed,
            );
        }
        // SAFETY: `user` is HEADER or more bytes past the start of the inner block.
        unsafe { write_header(user, slot, cell) };
    });
}

#[inline(always)]
fn note_free(owner: u32, cell: u64, size: usize) {
    if owner == 0 {
        return; // allocated outside the engine: not counted
    }
    let size64 = size as u64;
    TLS.with(|t| {
        let me = t.slot.get();
        let untagged = cell == 0;
        if owner == me {
            let s = &SLOTS[me as usize];
            bump(&s.freed, size64, me);
            if untagged {
                bump(&s.untagged_freed, size64, me);
            }
        } else {
            bump(&REMOTE[me as usize][owner as usize], size64, me);
            if untagged {
                bump(&REMOTE_UNTAGGED[me as usize][owner as usize], size64, me);
            }
        }
        if !untagged {
            let t = table(owner);
            if t.is_null() {
                return;
            }
            // SAFETY: the owner's table is never unmapped and the index came from its
            // `CellAlloc` (below CELLS_MAX).
            let c = unsafe { &*t.add(cell_index(cell)) };
            if c.gen.load(Ordering::Relaxed) != (cell >> 32) as u32 {
                return; // the activation ended; its successor is not charged
            }
            if owner == me {
                c.own.store(
                    c.own.load(Ordering::Relaxed) - size as i64,
                    Ordering::Relaxed,
                );
            } else {
                c.remote_freed.fetch_add(size as i64, Ordering::Relaxed);
            }
        }
    });
}

/// `(inner layout, offset of the caller's block)` for `layout`.
#[inline(always)]
fn outer(layout: Layout) -> Option<(Layout, usize)> {
    let off = layout.align().max(HEADER);
    let size = layout.size().checked_add(off)?;
    Some((Layout::from_size_align(size, layout.align()).ok()?, off))
}

/// A global allocator that counts, per thread and per activation, the bytes it hands out
/// (docs/MEMORY.md). Opt-in: install it in the binary (and in each test binary that wants
/// the figures), over the system allocator or any other:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: quark::CountingAlloc = quark::CountingAlloc::new(std::alloc::System);
/// // or over mimalloc: quark::CountingAlloc<mimalloc::MiMalloc> = CountingAlloc::new(MiMalloc);
/// ```
///
/// Each block carries a 16-byte header (the allocating thread and activation), so small
/// allocations cost 16 bytes more than with the inner allocator alone. Counting is a few
/// thread-local loads and stores per allocation and free, with no shared atomic on a shard
/// thread, except a free of a block another thread's activation allocated (one `fetch_add`).
pub struct CountingAlloc<A = System> {
    inner: A,
}

impl<A> CountingAlloc<A> {
    /// Counts the allocations of `inner`.
    pub const fn new(inner: A) -> Self {
        CountingAlloc { inner }
    }
}

// SAFETY: every block handed out is a block of `inner` (with the layout `outer` gives),
// offset by the header; `dealloc` and `realloc` undo the offset with the same layout rule, so
// `inner` always sees the pointers and layouts it handed out.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((inner, off)) = outer(layout) else {
            return std::ptr::null_mut();
        };
        let base = self.inner.alloc(inner);
        if base.is_null() {
            return base;
        }
        if !COUNTING.load(Ordering::Relaxed) {
            COUNTING.store(true, Ordering::Relaxed);
        }
        let user = base.add(off);
        note_alloc(user, layout.size());
        user
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some((inner, off)) = outer(layout) else {
            return std::ptr::null_mut();
        };
        let base = self.inner.alloc_zeroed(inner);
        if base.is_null() {
            return base;
        }
        let user = base.add(off);
        note_alloc(user, layout.size());
        user
    }

    // Not inlined, and the pointer laundered: the caller's optimizer knows `ptr` as the start of
    // an object of `layout.size()` bytes (the allocation attributes of `__rust_alloc`), so a
    // read of the header before it, inlined into the caller, would be an out-of-bounds read it
    // may assume away (a release build with LTO crashed on it).
    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let ptr = std::hint::black_box(ptr);
        let (inner, off) = outer(layout).expect("a block we handed out has a valid outer layout");
        let (owner, cell) = read_header(ptr);
        note_free(owner, cell, layout.size());
        self.inner.dealloc(ptr.wrapping_sub(off), inner);
    }

    // See `dealloc`.
    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let ptr = std::hint::black_box(ptr);
        let (inner, off) = outer(layout).expect("a block we handed out has a valid outer layout");
        let Some(new_outer) = new_size.checked_add(off) else {
            return std::ptr::null_mut();
        };
        let (owner, cell) = read_header(ptr);
        let base = self.inner.realloc(ptr.wrapping_sub(off), inner, new_outer);
        if base.is_null() {
            return base; // the old block is untouched and still counted
        }
        note_free(owner, cell, layout.size());
        let user = base.add(off);
        note_alloc(user, new_size);
        user
    }
}

/// Whether a [`CountingAlloc`] is the process's global allocator (it has served an
/// allocation).
pub fn counting() -> bool {
    COUNTING.load(Ordering::Relaxed)
}

/// Gives the calling thread a slot of its own (once; a shard thread does it when its shard
/// starts). Returns the slot, or `None` when all `SLOTS_MAX` are taken or nothing is counted
/// (the thread then shares slot 0 and its activations are not attributed).
pub(crate) fn register_thread() -> Option<u32> {
    let have = TLS.with(|t| t.slot.get());
    if have != 0 {
        return Some(have);
    }
    if !counting() {
        return None;
    }
    let n = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
    if n as usize >= SLOTS_MAX {
        tracing::warn!(
            slots = SLOTS_MAX,
            "memory accounting: no slot left for this shard thread; its memory counts with the \
             threads outside the engine and its activations are not attributed"
        );
        return None;
    }
    let bytes = CELLS_MAX * std::mem::size_of::<ActCell>();
    // SAFETY: an anonymous private mapping; its zeroed pages are valid `ActCell`s (atomics
    // of zero); it is never unmapped (blocks may name its cells after the thread ended).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        tracing::warn!(error = %std::io::Error::last_os_error(), "memory accounting: cannot map the activation cells; activations of this shard are not attributed");
    } else {
        SLOTS[n as usize]
            .table
            .store(p as *mut ActCell, Ordering::Release);
    }
    TLS.with(|t| t.slot.set(n));
    Some(n)
}

/// The calling thread's slot (0: none of its own).
pub(crate) fn current_slot() -> u32 {
    TLS.with(|t| t.slot.get())
}

// ---------------------------------------------------------------------------------------------
// Attribution around turns.

/// Makes `cell` the current cell until the guard drops (restoring the one before: direct
/// turns nest).
#[inline(always)]
pub(crate) fn enter(cell: u64) -> Enter {
    Enter(TLS.with(|t| t.cell.replace(cell)))
}

/// Restores the previous current cell on drop.
pub(crate) struct Enter(u64);

impl Drop for Enter {
    #[inline(always)]
    fn drop(&mut self) {
        TLS.with(|t| t.cell.set(self.0));
    }
}

/// Runs `f` with `cell` current.
#[inline(always)]
pub(crate) fn with<R>(cell: u64, f: impl FnOnce() -> R) -> R {
    let _g = enter(cell);
    f()
}

/// A future polled with a cell current (each poll, not across awaits).
pub(crate) struct Attributed<F> {
    cell: u64,
    inner: F,
}

/// `inner`, polled with `cell` current.
#[inline(always)]
pub(crate) fn attributed<F>(cell: u64, inner: F) -> Attributed<F> {
    Attributed { cell, inner }
}

impl<F: std::future::Future> std::future::Future for Attributed<F> {
    type Output = F::Output;
    #[inline(always)]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        // SAFETY: structural pinning of `inner`; `cell` is plain data.
        let this = unsafe { self.get_unchecked_mut() };
        let _g = enter(this.cell);
        unsafe { std::pin::Pin::new_unchecked(&mut this.inner) }.poll(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Activation cells.

/// What the memory walk needs of an activation (implemented by `Activation<A>`).
pub(crate) trait MemProbe {
    fn actor_id(&self) -> &ActorId;
    fn type_idx(&self) -> u16;
    /// Gone or moved away: not counted any more.
    fn ended(&self) -> bool;
    fn idle_for(&self, now: Instant) -> Option<Duration>;
    fn movable(&self) -> bool;
    /// Its state moves as bytes (`migratable`): it may move to another node.
    fn serializable(&self) -> bool;
    /// Its type is built by a loader (`ActorType::loaded`): its state is rebuilt at its next
    /// activation, so a deactivation drops nothing.
    fn durable(&self) -> bool;
    /// The type's `memory_size` hook on the state, if it has one and the activation is between
    /// turns.
    fn deep_bytes(&self) -> Option<u64>;
    /// The shard's clock.
    fn now(&self) -> Instant;
}

/// The growth record of one cell, for leak detection.
#[derive(Clone, Copy, Default)]
struct Growth {
    seen: bool,
    last: i64,
    first: i64,
    streak: u32,
    reported: bool,
}

#[derive(Default)]
struct CellAlloc {
    /// Next never-used index (0 is "no cell").
    next: u32,
    free: Vec<u32>,
    probes: Vec<Option<Weak<dyn MemProbe>>>,
    growth: Vec<Growth>,
    last_sample: Option<Instant>,
    leaks: Vec<LeakReport>,
}

thread_local! {
    static CELLS: RefCell<CellAlloc> = RefCell::default();
}

/// Estimates carried by moves between shards: `(actor, bytes)`, put by the old shard at the
/// hand-over and taken by the new one when it installs the state. Touched once per move only.
static CARRIED: Mutex<Vec<(ActorId, i64)>> = Mutex::new(Vec::new());
/// Entries `CARRIED` keeps at most (a move whose state never arrives leaves one behind).
const CARRIED_MAX: usize = 4096;

/// An activation's cell: its identity and its live-byte estimate. One word (an activation's
/// size is what a node with a million of them pays per actor).
pub(crate) struct ActorMem {
    /// `index | slot << 20 | generation << 32` (see [`cell_index`], [`cell_slot`]); 0 when the
    /// activation is not attributed.
    cell: u64,
}

/// A cell's index in its slot's table (below `CELLS_MAX`).
#[inline(always)]
fn cell_index(cell: u64) -> usize {
    (cell & (CELLS_MAX as u64 - 1)) as usize
}

/// The slot (thread) whose table holds a cell: bits 20..28 (`SLOTS_MAX` is 128).
#[inline(always)]
fn cell_slot(cell: u64) -> u32 {
    ((cell >> 20) & 0xff) as u32
}

const _: () = assert!(CELLS_MAX == 1 << 20 && SLOTS_MAX <= 256);

impl ActorMem {
    /// A cell for a new activation on this thread; `arrived`: the state came from another
    /// shard (its estimate there is carried over).
    pub(crate) fn new(probe: Weak<dyn MemProbe>, arrived: Option<&ActorId>) -> Self {
        let slot = current_slot();
        if slot == 0 || table(slot).is_null() {
            return ActorMem { cell: 0 };
        }
        let carried = arrived.and_then(|id| {
            let mut c = CARRIED.lock().unwrap_or_else(|e| e.into_inner());
            let i = c.iter().rposition(|(a, _)| a == id)?;
            Some(c.swap_remove(i).1)
        });
        let cell = CELLS.with(|c| {
            let mut c = c.borrow_mut();
            let idx = match c.free.pop() {
                Some(i) => i,
                None => {
                    if c.next == 0 {
                        c.next = 1;
                    }
                    if c.next as usize >= CELLS_MAX {
                        return 0;
                    }
                    let i = c.next;
                    c.next += 1;
                    c.probes.resize_with(i as usize + 1, || None);
                    c.growth.resize(i as usize + 1, Growth::default());
                    i
                }
            };
            c.probes[idx as usize] = Some(probe);
            c.growth[idx as usize] = Growth::default();
            // SAFETY: idx < CELLS_MAX, the table is this thread's.
            let cell = unsafe { &*table(slot).add(idx as usize) };
            let gen = cell.gen.load(Ordering::Relaxed).wrapping_add(1) | 1;
            cell.own.store(carried.unwrap_or(0), Ordering::Relaxed);
            cell.remote_freed.store(0, Ordering::Relaxed);
            cell.gen.store(gen, Ordering::Relaxed);
            u64::from(idx) | (u64::from(slot) << 20) | (u64::from(gen) << 32)
        });
        ActorMem { cell }
    }

    /// The cell to make current around the activation's turns.
    #[inline(always)]
    pub(crate) fn cell(&self) -> u64 {
        self.cell
    }

    /// The live-byte estimate, if the activation is attributed.
    pub(crate) fn estimate(&self) -> Option<i64> {
        cell_estimate(cell_slot(self.cell), self.cell)
    }

    /// The activation's state left for another shard: its estimate goes with it.
    pub(crate) fn moved_out(&self, id: &ActorId) {
        if let Some(bytes) = self.estimate() {
            let mut c = CARRIED.lock().unwrap_or_else(|e| e.into_inner());
            if c.len() >= CARRIED_MAX {
                c.remove(0);
            }
            c.push((id.clone(), bytes.max(0)));
        }
    }
}

/// The activation's task left its turn loop without a move (a deactivation): takes back
/// what [`ActorMem::moved_out`] posted.
pub(crate) fn not_moved(id: &ActorId, mem: &ActorMem) {
    if mem.cell == 0 {
        return;
    }
    let mut c = CARRIED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = c.iter().rposition(|(a, _)| a == id) {
        c.swap_remove(i);
    }
}

fn cell_estimate(slot: u32, cell: u64) -> Option<i64> {
    if cell == 0 {
        return None;
    }
    // SAFETY: a non-zero cell was handed out from this slot's published table.
    let c = unsafe { &*table(slot).add(cell_index(cell)) };
    if c.gen.load(Ordering::Relaxed) != (cell >> 32) as u32 {
        return None;
    }
    Some(c.own.load(Ordering::Relaxed) - c.remote_freed.load(Ordering::Relaxed))
}

impl Drop for ActorMem {
    fn drop(&mut self) {
        let slot = cell_slot(self.cell);
        if self.cell == 0 || current_slot() != slot {
            return; // not attributed, or dropped off its thread: the cell stays taken
        }
        let idx = cell_index(self.cell) as u32;
        // SAFETY: the cell is this thread's (checked above).
        let c = unsafe { &*table(slot).add(idx as usize) };
        c.gen.store(
            c.gen.load(Ordering::Relaxed).wrapping_add(1) & !1,
            Ordering::Relaxed,
        );
        CELLS.with(|c| {
            let mut c = c.borrow_mut();
            c.probes[idx as usize] = None;
            c.free.push(idx);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Refusing activations.

/// Whether new activations on the calling (shard) thread are refused (the shard is at its
/// memory reject threshold).
#[inline]
pub(crate) fn refusing_activations() -> bool {
    let slot = current_slot();
    slot != 0 && SLOTS[slot as usize].refuse.load(Ordering::Relaxed)
}

/// Refuses (or admits again) new activations on the shard whose thread holds `slot`
/// ([`MemorySnapshot::slot`]). Returns false for slot 0 (nothing to refuse).
pub fn set_refuse_activations(slot: u32, refuse: bool) -> bool {
    if slot == 0 || slot as usize >= SLOTS_MAX {
        return false;
    }
    SLOTS[slot as usize].refuse.store(refuse, Ordering::Relaxed);
    true
}

// ---------------------------------------------------------------------------------------------
// Leak detection policy (process-wide).

static LEAK_SAMPLES: AtomicU32 = AtomicU32::new(0);
static LEAK_GROWTH_BYTES: AtomicU64 = AtomicU64::new(u64::MAX);
static LEAK_INTERVAL_MS: AtomicU64 = AtomicU64::new(1000);

/// Sets leak detection: an activation whose live-byte estimate grew at each of `samples`
/// consecutive samples (taken at most every `interval`) and by at least `growth_bytes` in all
/// is reported. `samples == 0` turns it off. Process-wide.
pub fn set_leak_policy(samples: u32, growth_bytes: u64, interval: Duration) {
    LEAK_SAMPLES.store(samples, Ordering::Relaxed);
    LEAK_GROWTH_BYTES.store(growth_bytes, Ordering::Relaxed);
    LEAK_INTERVAL_MS.store(
        u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

// ---------------------------------------------------------------------------------------------
// Snapshots.

/// One shard's memory, read on its thread (part of [`LoadSnapshot`](crate::LoadSnapshot)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemorySnapshot {
    /// A [`CountingAlloc`] is the global allocator: without it every figure is 0.
    pub counting: bool,
    /// The shard thread's accounting slot (0: it has none; see [`set_refuse_activations`]).
    pub slot: u32,
    /// Bytes the shard's thread allocated since it started.
    pub allocated_bytes: u64,
    /// Blocks it allocated.
    pub allocations: u64,
    /// The allocator's own count: bytes the shard's thread allocated that are not freed yet
    /// (wherever they were freed).
    pub live_bytes: u64,
    /// Of those, bytes allocated outside any activation's turn (engine buffers, tasks, the
    /// log...).
    pub other_bytes: u64,
    /// The sum of the figures of the shard's activations ([`ActorMemory::bytes`]).
    pub actor_bytes: u64,
    /// `other_bytes + actor_bytes`: what the shard holds, the figure thresholds are checked
    /// against (it moves with an actor when it migrates, unlike `live_bytes`).
    pub shard_bytes: u64,
    /// Activations attributed.
    pub activations: u64,
    /// Per actor type (registered types that have activations here).
    pub per_type: Vec<TypeMemory>,
    /// The largest activations, largest first (at most [`TOP_MEMORY_PER_SHARD`]).
    pub top: Vec<ActorMemory>,
    /// Candidates for a move or a deactivation (movable or durable types only, idle or not):
    /// the largest and the least recently used, at most `2 * CANDIDATES` (for the memory
    /// monitor).
    pub candidates: Vec<ActorMemory>,
    /// Activations whose estimate keeps growing ([`set_leak_policy`]).
    pub leaks: Vec<LeakReport>,
}

/// Memory of one actor type on one shard ([`MemorySnapshot::per_type`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeMemory {
    /// The type's name.
    pub type_name: &'static str,
    /// Its attributed activations here.
    pub activations: u64,
    /// The sum of their figures.
    pub bytes: u64,
}

/// One activation's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorMemory {
    /// The actor.
    pub actor: ActorId,
    /// Its figure: the `memory_size` hook's deep size when its type has one and it is between
    /// turns, else its live-byte estimate (bytes its turns allocated that are not freed).
    pub bytes: u64,
    /// `bytes` is the hook's figure.
    pub deep: bool,
    /// Milliseconds since its last message turn began, when it is idle now.
    pub idle_ms: Option<u64>,
    /// Its type may migrate (`movable` or `migratable`).
    pub movable: bool,
    /// Its state moves as bytes (`migratable`): it may also move to another node.
    pub serializable: bool,
    /// Its type is built by a loader (`ActorType::loaded`: journaled actors, projections,
    /// outboxes, workflows): its state is rebuilt from the log at its next activation, so the
    /// memory monitor may deactivate it instead of moving it (`[memory]
    /// deactivate_idle_durable`).
    pub durable: bool,
}

/// An activation reported by leak detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakReport {
    /// The actor.
    pub actor: ActorId,
    /// Its estimate at the last sample.
    pub bytes: u64,
    /// How much it grew over the growing samples.
    pub growth_bytes: u64,
    /// Consecutive samples it grew at.
    pub samples: u32,
}

/// Activations in [`MemorySnapshot::top`] at most.
pub const TOP_MEMORY_PER_SHARD: usize = 10;
/// Candidates of each kind in [`MemorySnapshot::candidates`].
pub const CANDIDATES: usize = 32;
/// Leak reports kept per shard at most.
const LEAKS_MAX: usize = 32;

fn saturating(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The calling shard thread's memory; `names[i]` is the name of type `i`.
pub(crate) fn snapshot(names: &[&'static str]) -> MemorySnapshot {
    let slot = current_slot();
    let mut snap = MemorySnapshot {
        counting: counting(),
        slot,
        ..Default::default()
    };
    if slot == 0 {
        return snap;
    }
    let s = &SLOTS[slot as usize];
    let remote: u64 = (0..SLOTS_MAX)
        .map(|f| REMOTE[f][slot as usize].load(Ordering::Relaxed))
        .sum();
    let remote_untagged: u64 = (0..SLOTS_MAX)
        .map(|f| REMOTE_UNTAGGED[f][slot as usize].load(Ordering::Relaxed))
        .sum();
    snap.allocated_bytes = s.allocated.load(Ordering::Relaxed);
    snap.allocations = s.allocs.load(Ordering::Relaxed);
    snap.live_bytes = snap
        .allocated_bytes
        .saturating_sub(s.freed.load(Ordering::Relaxed))
        .saturating_sub(remote);
    snap.other_bytes = s
        .untagged_allocated
        .load(Ordering::Relaxed)
        .saturating_sub(s.untagged_freed.load(Ordering::Relaxed))
        .saturating_sub(remote_untagged);
    let mut per_type: Vec<TypeMemory> = Vec::new();
    let mut all: Vec<ActorMemory> = Vec::new();
    let leak_n = LEAK_SAMPLES.load(Ordering::Relaxed);
    let leak_growth = LEAK_GROWTH_BYTES.load(Ordering::Relaxed);
    let interval = Duration::from_millis(LEAK_INTERVAL_MS.load(Ordering::Relaxed));
    CELLS.with(|c| {
        let mut c = c.borrow_mut();
        let c = &mut *c;
        let now = Instant::now();
        let sample = leak_n > 0
            && c
                .last_sample
                .is_none_or(|t| now.saturating_duration_since(t) >= interval);
        if sample {
            c.last_sample = Some(now);
            c.leaks.clear();
        }
        for idx in 1..c.next.max(1) {
            let Some(probe) = c.probes[idx as usize].as_ref().and_then(Weak::upgrade) else {
                continue;
            };
            if probe.ended() {
                continue;
            }
            // SAFETY: idx < next <= CELLS_MAX, this thread's table.
            let cell = unsafe { &*table(slot).add(idx as usize) };
            let estimate = cell.own.load(Ordering::Relaxed)
                - cell.remote_freed.load(Ordering::Relaxed);
            let (bytes, deep) = match probe.deep_bytes() {
                Some(b) => (b, true),
                None => (saturating(estimate), false),
            };
            let t = usize::from(probe.type_idx());
            let name = names.get(t).copied().unwrap_or("?");
            match per_type.iter_mut().find(|p| p.type_name == name) {
                Some(p) => {
                    p.activations += 1;
                    p.bytes += bytes;
                }
                None => per_type.push(TypeMemory {
                    type_name: name,
                    activations: 1,
                    bytes,
                }),
            }
            snap.activations += 1;
            snap.actor_bytes += bytes;
            if sample {
                let g = &mut c.growth[idx as usize];
                let figure = bytes as i64;
                if !g.seen {
                    g.seen = true;
                } else if figure > g.last {
                    if g.streak == 0 {
                        g.first = g.last;
                    }
                    g.streak += 1;
                } else {
                    g.streak = 0;
                    g.reported = false;
                }
                g.last = figure;
                let grown = saturating(figure - g.first);
                if g.streak >= leak_n && grown >= leak_growth {
                    if !g.reported {
                        g.reported = true;
                        tracing::warn!(actor = %probe.actor_id(), bytes, growth_bytes = grown, samples = g.streak, "memory: actor keeps growing (possible leak)");
                    }
                    if c.leaks.len() < LEAKS_MAX {
                        c.leaks.push(LeakReport {
                            actor: probe.actor_id().clone(),
                            bytes,
                            growth_bytes: grown,
                            samples: g.streak,
                        });
                    }
                }
            }
            all.push(ActorMemory {
                actor: probe.actor_id().clone(),
                bytes,
                deep,
                idle_ms: probe
                    .idle_for(probe.now())
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                movable: probe.movable(),
                serializable: probe.serializable(),
                durable: probe.durable(),
            });
        }
        snap.leaks = c.leaks.clone();
    });
    snap.shard_bytes = snap.other_bytes + snap.actor_bytes;
    snap.per_type = per_type;
    all.sort_by_key(|a| std::cmp::Reverse(a.bytes));
    snap.top = all.iter().take(TOP_MEMORY_PER_SHARD).cloned().collect();
    let mut cands: Vec<ActorMemory> = all
        .iter()
        .filter(|a| (a.movable || a.durable) && a.bytes > 0)
        .take(CANDIDATES)
        .cloned()
        .collect();
    let mut idle: Vec<&ActorMemory> = all
        .iter()
        .filter(|a| (a.movable || a.durable) && a.bytes > 0 && a.idle_ms.is_some())
        .collect();
    idle.sort_by_key(|a| std::cmp::Reverse(a.idle_ms));
    for a in idle.into_iter().take(CANDIDATES) {
        if !cands.iter().any(|c| c.actor == a.actor) {
            cands.push(a.clone());
        }
    }
    snap.candidates = cands;
    snap
}

/// The calling thread's counters, for tests and benchmarks: `(allocated, live)` bytes of its
/// slot (see [`MemorySnapshot`]); `None` for a thread without a slot.
pub fn thread_counters() -> Option<(u64, u64)> {
    let slot = current_slot();
    if slot == 0 {
        return None;
    }
    let s = &SLOTS[slot as usize];
    let remote: u64 = (0..SLOTS_MAX)
        .map(|f| REMOTE[f][slot as usize].load(Ordering::Relaxed))
        .sum();
    let a = s.allocated.load(Ordering::Relaxed);
    Some((
        a,
        a.saturating_sub(s.freed.load(Ordering::Relaxed))
            .saturating_sub(remote),
    ))
}

/// Registers the calling thread (outside the engine: tests and tools) and returns its slot.
#[doc(hidden)]
pub fn register_current_thread() -> Option<u32> {
    register_thread()
}
