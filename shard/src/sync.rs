//! The atomics seam: every atomic, fence, cross-thread `Arc` and cross-thread `UnsafeCell` of
//! the cross-shard transport (the rings in `ring`, the doorbell's sleeping flag in `rt`) comes
//! from here.
//!
//! In a normal build these are `std`'s. Built with `RUSTFLAGS="--cfg loom"` they are
//! [loom](https://docs.rs/loom)'s, so the model tests (`loom_*`, see `docs/ARCHITECTURE.md`,
//! "Testing") run the real ring and doorbell code under loom's exhaustive scheduler, which
//! explores every interleaving and every reordering the memory model allows and reports a data
//! race on a slot (an `UnsafeCell` access not ordered by a Release/Acquire pair) as a failure.
//!
//! Under `--cfg loom` only the `loom_` tests may run: everything else in the crate would create
//! loom atomics outside a `loom::model`, which panics.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering},
    sync::Arc,
};

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{fence, AtomicBool, AtomicUsize, Ordering},
    Arc,
};

/// `std::cell::UnsafeCell` with loom's access API (`with_mut`), so that code written
/// against it runs unchanged under loom, where each access is checked for races.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    #[inline(always)]
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a raw pointer for writing (or moving out of) the value.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
