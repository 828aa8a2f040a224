//! A turn's future, stored inline when it is small (no allocation per message).
//!
//! Every message type gives a different future type, so the activation loop needs a type-erased
//! future. A `Pin<Box<dyn Future>>` would cost one allocation per turn; [`Turn`] instead keeps
//! futures of up to [`TURN_INLINE_BYTES`] bytes (align ≤ 16) in its own storage and calls them
//! through two function pointers, falling back to a box for larger ones.

use std::future::Future;
use std::marker::{PhantomData, PhantomPinned};
use std::mem::{self, MaybeUninit};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Turn futures up to this size are stored inline.
pub(crate) const TURN_INLINE_BYTES: usize = 256;

#[repr(C, align(16))]
struct Storage(MaybeUninit<[u8; TURN_INLINE_BYTES]>);

/// A type-erased `Future<Output = ()>` that borrows for `'a` and is pinned in place once polled.
pub(crate) struct Turn<'a> {
    storage: Storage,
    fns: Option<Fns>,
    _borrow: PhantomData<&'a mut ()>,
    _pin: PhantomPinned,
}

#[derive(Clone, Copy)]
struct Fns {
    poll: unsafe fn(*mut u8, &mut Context<'_>) -> Poll<()>,
    drop: unsafe fn(*mut u8),
}

/// # Safety
/// `p` points to a live, pinned `F` stored by [`Turn::new`].
unsafe fn poll_inline<F: Future<Output = ()>>(p: *mut u8, cx: &mut Context<'_>) -> Poll<()> {
    // SAFETY: per the function contract; the `Turn` is pinned, so `F` never moves.
    unsafe { Pin::new_unchecked(&mut *p.cast::<F>()) }.poll(cx)
}

/// # Safety
/// `p` points to a live `F` stored by [`Turn::new`], dropped exactly once.
unsafe fn drop_inline<F>(p: *mut u8) {
    // SAFETY: per the function contract.
    unsafe { std::ptr::drop_in_place(p.cast::<F>()) }
}

impl<'a> Turn<'a> {
    /// An empty turn (completes at once when polled). Costs nothing to create: the storage is
    /// left uninitialised.
    pub(crate) fn empty() -> Self {
        Turn {
            storage: Storage(MaybeUninit::uninit()),
            fns: None,
            _borrow: PhantomData,
            _pin: PhantomPinned,
        }
    }

    /// A turn running `fut`.
    #[cfg(test)]
    pub(crate) fn new<F: Future<Output = ()> + 'a>(fut: F) -> Self {
        let mut t = Self::empty();
        // SAFETY: `t` is not pinned yet and empty; `set` writes into its storage in place.
        unsafe { Pin::new_unchecked(&mut t) }.set(fut);
        t
    }

    /// Stores `fut` in this (empty, pinned) turn, in place: inline if it fits, else boxed.
    ///
    /// # Panics
    /// If the turn already holds a future (an invariant of the activation loop).
    pub(crate) fn set<F: Future<Output = ()> + 'a>(self: Pin<&mut Self>, fut: F) {
        // SAFETY: writing a new value into empty storage moves nothing that is pinned.
        let this = unsafe { self.get_unchecked_mut() };
        assert!(this.fns.is_none(), "a turn holds one future");
        if mem::size_of::<F>() <= TURN_INLINE_BYTES && mem::align_of::<F>() <= 16 {
            this.store(fut);
        } else {
            let boxed: Pin<Box<dyn Future<Output = ()> + 'a>> = Box::pin(fut);
            this.store(boxed);
        }
    }

    fn store<F: Future<Output = ()> + 'a>(&mut self, fut: F) {
        assert!(mem::size_of::<F>() <= TURN_INLINE_BYTES && mem::align_of::<F>() <= 16);
        // SAFETY: the storage is large and aligned enough for F (asserted above) and empty; it
        // is dropped once by `Drop for Turn`.
        unsafe { self.storage.0.as_mut_ptr().cast::<F>().write(fut) };
        self.fns = Some(Fns {
            poll: poll_inline::<F>,
            drop: drop_inline::<F>,
        });
    }

    /// Polls the turn, turning a panic of the handler into `Err(message)`.
    ///
    /// After an `Err`, the turn must not be polled again (drop it).
    pub(crate) fn poll_catching(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), String>> {
        // SAFETY: we never move the storage out of the pinned Turn.
        let this = unsafe { self.get_unchecked_mut() };
        let Some(fns) = this.fns else {
            return Poll::Ready(Ok(()));
        };
        let ptr = this.storage.0.as_mut_ptr().cast::<u8>();
        // SAFETY: `ptr` is the live F written by `store`, pinned with `self`.
        match catch_unwind(AssertUnwindSafe(|| unsafe { (fns.poll)(ptr, cx) })) {
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                let mut msg = panic_message(&*payload);
                if let Some(at) = PANIC_LOCATION.with(|l| l.borrow_mut().take()) {
                    msg.push_str(" at ");
                    msg.push_str(&at);
                }
                Poll::Ready(Err(msg))
            }
        }
    }
}

impl Turn<'_> {
    /// Drops the future it holds, if any, leaving it empty (ready to be `set` again).
    pub(crate) fn clear(&mut self) {
        let Some(fns) = self.fns.take() else { return };
        let ptr = self.storage.0.as_mut_ptr().cast::<u8>();
        // SAFETY: the F written by `store` is live until here, dropped once. A panic in a drop
        // of a future that already panicked is contained so that it cannot take the shard down.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe { (fns.drop)(ptr) }));
    }

    /// Whether it holds a future.
    pub(crate) fn is_empty(&self) -> bool {
        self.fns.is_none()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Room for a direct ask's reply next to its turn (a reply larger than this takes the mailbox
/// path).
pub(crate) const REPLY_INLINE_BYTES: usize = 64;

/// A turn on the heap, with room for its reply: reused from a shard's pool, so that a turn
/// that outlives the poll that started it (a sender ran it directly and it awaited) stays in
/// place while its activation's task finishes it. An activation's task also runs its own turns
/// in one, so its future does not carry a turn's storage (which would be zeroed per turn and
/// would cost every activation its size).
pub(crate) struct TurnSlot {
    inner: Box<SlotInner>,
}

#[repr(C)]
struct SlotInner {
    turn: Turn<'static>,
    reply: Storage64,
}

#[repr(C, align(16))]
struct Storage64(MaybeUninit<[u8; REPLY_INLINE_BYTES]>);

impl Default for TurnSlot {
    fn default() -> Self {
        TurnSlot {
            inner: Box::new(SlotInner {
                turn: Turn::empty(),
                reply: Storage64(MaybeUninit::uninit()),
            }),
        }
    }
}

impl TurnSlot {
    /// The slot's turn, to store a future that borrows for `'a` (pinned: the slot's box never
    /// moves its contents).
    ///
    /// # Safety
    /// The future stored must be dropped ([`TurnSlot::clear`]) before anything it borrows
    /// goes away, and the slot must not be dropped or reused while it holds it.
    pub(crate) unsafe fn turn<'a>(&mut self) -> Pin<&mut Turn<'a>> {
        let t: *mut Turn<'static> = &mut self.inner.turn;
        // SAFETY: the lifetime is the caller's promise; the box keeps the turn in place.
        unsafe { Pin::new_unchecked(&mut *t.cast::<Turn<'a>>()) }
    }

    /// Where a direct ask's turn writes its reply (`REPLY_INLINE_BYTES`, aligned to 16).
    pub(crate) fn reply_ptr(&mut self) -> *mut u8 {
        self.inner.reply.0.as_mut_ptr().cast()
    }

    /// Drops the turn's future, if any.
    pub(crate) fn clear(&mut self) {
        self.inner.turn.clear();
    }

    /// Whether the turn holds a future.
    pub(crate) fn is_empty(&self) -> bool {
        self.inner.turn.is_empty()
    }

    /// Whether a future of type `F` can be run typed in the slot ([`TurnSlot::place`]): it
    /// fits the inline storage. Known at compile time.
    pub(crate) const fn fits<F>() -> bool {
        mem::size_of::<F>() <= TURN_INLINE_BYTES && mem::align_of::<F>() <= 16
    }

    /// Writes `fut` into the (empty) slot's storage *without* registering it with the turn:
    /// the caller polls it as the known type `F` through the pointer (no function pointer,
    /// so the handler's future can be inlined into the caller), then either drops it in place
    /// (it finished: [`TurnSlot::drop_placed`]) or hands it to the turn
    /// ([`TurnSlot::adopt`]), which then owns, polls and drops it like a `set` future.
    ///
    /// # Safety
    /// `F` fits ([`TurnSlot::fits`]) and the slot is empty; the placed future must be dropped
    /// or adopted before the slot is reused, cleared or dropped, and before anything it borrows
    /// goes away. It is pinned in place (the slot's box never moves its contents).
    #[inline]
    pub(crate) unsafe fn place<'a, F: Future<Output = ()> + 'a>(&mut self, fut: F) -> *mut F {
        debug_assert!(Self::fits::<F>() && self.is_empty());
        let p = self.inner.turn.storage.0.as_mut_ptr().cast::<F>();
        // SAFETY: large and aligned enough (the contract), and empty.
        unsafe { p.write(fut) };
        p
    }

    /// Drops a future [`TurnSlot::place`]d in the slot that was not adopted, leaving the slot
    /// empty. A panic in its destructor is contained (as in [`Turn::clear`]).
    ///
    /// # Safety
    /// `p` is the pointer `place` returned, its future live and not adopted.
    #[inline]
    pub(crate) unsafe fn drop_placed<F>(&mut self, p: *mut F) {
        if mem::needs_drop::<F>() {
            // SAFETY: per the contract; dropped once.
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe { std::ptr::drop_in_place(p) }));
        }
    }

    /// Hands a future [`TurnSlot::place`]d in the slot (pinned, possibly polled) to the turn,
    /// which polls and drops it from now on.
    ///
    /// # Safety
    /// The slot holds a live `F` placed by `place` and not dropped.
    #[inline]
    pub(crate) unsafe fn adopt<F: Future<Output = ()>>(&mut self) {
        debug_assert!(self.is_empty());
        self.inner.turn.fns = Some(Fns {
            poll: poll_inline::<F>,
            drop: drop_inline::<F>,
        });
    }
}

thread_local! {
    /// Where the last panic on this thread happened (set by the hook of
    /// [`install_panic_location_hook`], taken when a turn's panic is caught).
    static PANIC_LOCATION: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
}

/// Installs (once per process) a panic hook that records the location of each panic for the
/// thread's next caught turn, then runs the hook that was in place. Called when an engine
/// starts. An application that sets its own hook later loses the locations, not the messages.
pub(crate) fn install_panic_location_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(l) = info.location() {
                let at = format!("{}:{}:{}", l.file(), l.line(), l.column());
                let _ = PANIC_LOCATION.try_with(|p| *p.borrow_mut() = Some(at));
            }
            prev(info);
        }));
    });
}

/// The text of a caught panic with its location where the hook recorded one
/// (`"boom at src/lib.rs:7:9"`); takes the recorded location.
pub(crate) fn caught_panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let mut msg = panic_message(payload);
    if let Some(at) = PANIC_LOCATION.with(|l| l.borrow_mut().take()) {
        msg.push_str(" at ");
        msg.push_str(&at);
    }
    msg
}

/// The text of a panic payload, for logs and errors.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Awaits a pinned turn, returning `Err(panic message)` if it panicked.
pub(crate) struct RunTurn<'t, 'a> {
    pub(crate) turn: Pin<&'t mut Turn<'a>>,
    /// The actor (type index, key) of a sampled turn (its sends are counted in the
    /// communication graph while it is polled), or `None`.
    pub(crate) caller: Option<(u16, &'t quark_placement::ActorKey)>,
}

/// `RunTurn::caller` for a turn of the actor (`type_idx`, `key`), sampled if `sampled` is
/// `Some`.
#[inline]
pub(crate) fn caller<T>(
    sampled: Option<T>,
    type_idx: u16,
    key: &quark_placement::ActorKey,
) -> Option<(u16, &quark_placement::ActorKey)> {
    sampled.map(|_| (type_idx, key))
}

impl Future for RunTurn<'_, '_> {
    type Output = Result<(), String>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((caller, key)) = self.caller else {
            return self.turn.as_mut().poll_catching(cx);
        };
        crate::stats::with_caller(caller, key, || self.turn.as_mut().poll_catching(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn noop_cx<R>(f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        f(&mut cx)
    }

    #[test]
    fn small_and_large_futures_run_and_drop_once() {
        let drops = Rc::new(Cell::new(0));
        struct D(Rc<Cell<u32>>);
        impl Drop for D {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let ran = Cell::new(0);
        {
            let d = D(drops.clone());
            let small = Turn::new(async {
                let _d = d;
                ran.set(ran.get() + 1);
            });
            let big_payload = [7u8; 1024];
            let d2 = D(drops.clone());
            let big = Turn::new(async move {
                let _d = d2;
                assert_eq!(big_payload[1023], 7);
            });
            let mut small = std::pin::pin!(small);
            let mut big = std::pin::pin!(big);
            noop_cx(|cx| {
                assert_eq!(small.as_mut().poll_catching(cx), Poll::Ready(Ok(())));
                assert_eq!(big.as_mut().poll_catching(cx), Poll::Ready(Ok(())));
            });
        }
        assert_eq!(ran.get(), 1);
        assert_eq!(drops.get(), 2, "each captured value dropped exactly once");
    }

    #[test]
    fn panics_become_errors() {
        let t = Turn::new(async { panic!("boom {}", 7) });
        let mut t = std::pin::pin!(t);
        let r = noop_cx(|cx| t.as_mut().poll_catching(cx));
        // Other tests of this process may have installed the location hook.
        match r {
            Poll::Ready(Err(m)) => assert!(m.starts_with("boom 7"), "{m}"),
            other => panic!("expected the panic as an error, got {other:?}"),
        }
    }

    /// A future that records its own address when polled, and its drops.
    #[repr(C)]
    struct Probe<const PAD: usize> {
        seen_at: Rc<Cell<usize>>,
        drops: Rc<Cell<u32>>,
        pad: [u8; PAD],
    }

    impl<const PAD: usize> Future for Probe<PAD> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.seen_at.set(&*self as *const Self as usize);
            Poll::Pending
        }
    }

    impl<const PAD: usize> Drop for Probe<PAD> {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    /// A 32-byte-aligned future (over the inline storage's 16).
    #[repr(C, align(32))]
    struct Aligned32(Probe<0>);

    impl Future for Aligned32 {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            // SAFETY: structural pinning of the only field; it is never moved out.
            unsafe { self.map_unchecked_mut(|a| &mut a.0) }.poll(cx)
        }
    }

    /// Polls `fut` once inside a pinned turn; returns whether it ran inside the turn's own
    /// storage, and the number of drops after the turn is dropped.
    fn stored_inline<F: Future<Output = ()>>(
        make: impl FnOnce(Rc<Cell<usize>>, Rc<Cell<u32>>) -> F,
    ) -> (bool, u32) {
        let seen_at = Rc::new(Cell::new(0));
        let drops = Rc::new(Cell::new(0));
        let inline = {
            let turn = Turn::new(make(seen_at.clone(), drops.clone()));
            let mut turn = std::pin::pin!(turn);
            assert_eq!(noop_cx(|cx| turn.as_mut().poll_catching(cx)), Poll::Pending);
            assert_eq!(drops.get(), 0, "not dropped while live");
            let start = &turn.storage as *const Storage as usize;
            (start..start + TURN_INLINE_BYTES).contains(&seen_at.get())
        };
        (inline, drops.get())
    }

    fn probe<const PAD: usize>(seen_at: Rc<Cell<usize>>, drops: Rc<Cell<u32>>) -> Probe<PAD> {
        Probe {
            seen_at,
            drops,
            pad: [0; PAD],
        }
    }

    #[test]
    fn futures_up_to_the_inline_size_are_stored_inline_larger_ones_boxed() {
        assert_eq!(mem::size_of::<Probe<240>>(), TURN_INLINE_BYTES);
        assert_eq!(stored_inline(probe::<0>), (true, 1), "a small future");
        assert_eq!(
            stored_inline(probe::<240>),
            (true, 1),
            "exactly the inline size"
        );
        assert_eq!(
            stored_inline(probe::<241>),
            (false, 1),
            "one byte over: boxed"
        );
        assert_eq!(stored_inline(probe::<4096>), (false, 1), "a large future");
        assert_eq!(
            stored_inline(|s, d| Aligned32(probe::<0>(s, d))),
            (false, 1),
            "over-aligned: boxed"
        );
    }

    #[test]
    fn dropping_a_turn_drops_its_future_once_polled_or_not() {
        for polled in [false, true] {
            let drops = Rc::new(Cell::new(0));
            {
                let small = Turn::new(probe::<0>(Rc::default(), drops.clone()));
                let big = Turn::new(probe::<1024>(Rc::default(), drops.clone()));
                let mut small = std::pin::pin!(small);
                let mut big = std::pin::pin!(big);
                if polled {
                    noop_cx(|cx| {
                        assert!(small.as_mut().poll_catching(cx).is_pending());
                        assert!(big.as_mut().poll_catching(cx).is_pending());
                    });
                }
                assert_eq!(drops.get(), 0);
            }
            assert_eq!(
                drops.get(),
                2,
                "each dropped exactly once (polled: {polled})"
            );
        }
    }

    #[test]
    fn an_empty_turn_completes_and_takes_one_future() {
        let drops = Rc::new(Cell::new(0));
        {
            let turn = Turn::empty();
            let mut turn = std::pin::pin!(turn);
            assert_eq!(
                noop_cx(|cx| turn.as_mut().poll_catching(cx)),
                Poll::Ready(Ok(()))
            );
            turn.as_mut().set(probe::<0>(Rc::default(), drops.clone()));
            let again = catch_unwind(AssertUnwindSafe(|| {
                turn.as_mut().set(probe::<0>(Rc::default(), drops.clone()))
            }));
            assert!(again.is_err(), "a second future is refused");
            assert_eq!(
                drops.get(),
                1,
                "the refused future was dropped, the first is live"
            );
        }
        assert_eq!(drops.get(), 2);
    }

    #[test]
    fn a_panicking_destructor_is_contained() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("bomb");
            }
        }
        let bomb = Bomb;
        let turn = Turn::new(async move {
            let _b = bomb;
            std::future::pending::<()>().await;
        });
        drop(turn); // must not unwind into the shard
    }
}
