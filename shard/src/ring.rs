//! A bounded single-producer/single-consumer ring between two shard threads.
//!
//! One ring exists per ordered pair of shards. The producer writes slots and advances a private
//! tail; it *publishes* the tail (one `Release` store) only when it flushes, at the end of a
//! pump iteration, so a burst of pushes costs one cross-core cache-line transfer, not one per
//! message. The consumer pops with a private head and releases the slots (one `Release` store)
//! after a drain. Positions are free-running `usize` counters; `tail - head` is the fill.
//!
//! Memory ordering:
//! - producer: slot write, then `tail.store(Release)` in [`Producer::publish`]. The consumer's
//!   `tail.load(Acquire)` therefore sees every slot written before the publish.
//! - consumer: slot read, then `head.store(Release)` in [`Consumer::release`]. The producer's
//!   `head.load(Acquire)` therefore never lets it overwrite a slot still being read.
//!
//! Both handles own an `Arc` of the ring; the ring drops the messages still in it when the last
//! handle goes away (only published messages can be in it: the producer publishes on drop).
//!
//! The atomics, the `Arc` and the slot cells come from [`crate::sync`], so the loom model tests
//! at the end of this file (`loom_*`) check this very code.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

struct Ring<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
    /// Consumer position (next slot to read), published by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Producer position (next slot to write), published by the producer.
    tail: CachePadded<AtomicUsize>,
}

// SAFETY: the ring hands each slot to exactly one side at a time (producer writes slots in
// `[tail, head + cap)`, consumer reads slots in `[head, tail)`), with the Release/Acquire pairs
// described in the module doc ordering the slot accesses. `T: Send` is required because values
// move from the producer's thread to the consumer's.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: see above; shared access is only through the two single-owner handles.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Relaxed is enough: we are the last owner (`&mut self`), and the last `Arc` drop
        // synchronised with the other handle's.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        let mut pos = head;
        while pos != tail {
            // SAFETY: slots in [head, tail) hold initialised values that nobody read; we are the
            // last owner.
            self.slots[pos & self.mask].with_mut(|p| unsafe { (*p).assume_init_drop() });
            pos = pos.wrapping_add(1);
        }
    }
}

/// The sending half of a ring (owned by one shard thread).
pub(crate) struct Producer<T> {
    ring: Arc<Ring<T>>,
    tail: usize,
    head_cache: usize,
    published: usize,
}

/// The receiving half of a ring (owned by one shard thread).
pub(crate) struct Consumer<T> {
    ring: Arc<Ring<T>>,
    head: usize,
    tail_cache: usize,
    released: usize,
}

/// A new ring with room for `capacity` messages (rounded up to a power of two, at least 2).
///
/// Call this on the consuming thread after it is pinned, so that the slot memory is first
/// touched (and placed, on a NUMA host) by the consumer.
pub(crate) fn ring<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let cap = capacity.max(2).next_power_of_two();
    let slots: Box<[UnsafeCell<MaybeUninit<T>>]> = (0..cap)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let ring = Arc::new(Ring {
        slots,
        mask: cap - 1,
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
    });
    (
        Producer {
            ring: ring.clone(),
            tail: 0,
            head_cache: 0,
            published: 0,
        },
        Consumer {
            ring,
            head: 0,
            tail_cache: 0,
            released: 0,
        },
    )
}

impl<T> Producer<T> {
    /// Writes `value` into the next slot without publishing it; `Err(value)` if the ring is full.
    #[inline]
    pub(crate) fn try_push(&mut self, value: T) -> Result<(), T> {
        let cap = self.ring.mask + 1;
        if self.tail.wrapping_sub(self.head_cache) == cap {
            self.head_cache = self.ring.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head_cache) == cap {
                return Err(value);
            }
        }
        debug_assert!(self.tail.wrapping_sub(self.head_cache) < cap);
        // SAFETY: the slot at `tail` is outside [head, tail) as seen by the consumer (the ring is
        // not full), so the consumer does not read it until we publish a tail past it.
        self.ring.slots[self.tail & self.ring.mask].with_mut(|p| unsafe { (*p).write(value) });
        self.tail = self.tail.wrapping_add(1);
        Ok(())
    }

    /// Makes every pushed value visible to the consumer. Returns true if anything was new.
    #[inline]
    pub(crate) fn publish(&mut self) -> bool {
        if self.published == self.tail {
            return false;
        }
        self.ring.tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
        true
    }

    /// Number of values pushed but not yet published.
    #[inline]
    pub(crate) fn unpublished(&self) -> usize {
        self.tail.wrapping_sub(self.published)
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.publish();
    }
}

impl<T> Consumer<T> {
    /// Takes the oldest published value, if any. The slot is returned to the producer at the
    /// next [`Consumer::release`].
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.head == self.tail_cache {
            self.tail_cache = self.ring.tail.load(Ordering::Acquire);
            if self.head == self.tail_cache {
                return None;
            }
        }
        // SAFETY: head < tail as published by the producer (Acquire above, or an earlier one),
        // so the slot holds an initialised value that the producer will not touch until we
        // release a head past it.
        let value = self.ring.slots[self.head & self.ring.mask]
            .with_mut(|p| unsafe { (*p).assume_init_read() });
        self.head = self.head.wrapping_add(1);
        Some(value)
    }

    /// Returns the slots popped so far to the producer.
    #[inline]
    pub(crate) fn release(&mut self) {
        if self.released != self.head {
            self.ring.head.store(self.head, Ordering::Release);
            self.released = self.head;
        }
    }

    /// Values the producer has published that this consumer has not popped yet (the ring's
    /// occupancy as the consumer sees it; popped values whose slots are not released yet are
    /// not counted). A read of the published tail: for stats, not for the hot path. `Relaxed`
    /// is enough: the value is only reported, no slot is read on the strength of it, and the
    /// tail only grows, so a stale read under-counts by what was published since.
    pub(crate) fn published_unread(&self) -> usize {
        self.ring
            .tail
            .load(Ordering::Relaxed)
            .wrapping_sub(self.head)
    }

    /// True if the producer has published values not yet popped (an `Acquire` read of the tail).
    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        self.head != self.tail_cache || self.head != self.ring.tail.load(Ordering::Acquire)
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_full() {
        let (mut p, mut c) = ring::<u32>(4);
        for i in 0..4 {
            p.try_push(i).unwrap();
        }
        assert_eq!(p.try_push(9), Err(9), "a ring of 4 holds 4");
        assert_eq!(c.pop(), None, "nothing is visible before publish");
        assert!(p.publish());
        assert_eq!(c.pop(), Some(0));
        assert_eq!(p.try_push(9), Err(9), "slots come back only on release");
        c.release();
        p.try_push(4).unwrap();
        p.publish();
        let got: Vec<u32> = std::iter::from_fn(|| c.pop()).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
    }

    #[test]
    fn drops_unread_values() {
        let value = Arc::new(());
        let (mut p, c) = ring::<Arc<()>>(8);
        for _ in 0..5 {
            p.try_push(value.clone()).unwrap();
        }
        drop(p);
        drop(c);
        assert_eq!(
            Arc::strong_count(&value),
            1,
            "the ring dropped the 5 unread values"
        );
    }

    #[test]
    fn capacity_rounds_up_to_a_power_of_two_of_at_least_two() {
        for (asked, holds) in [(0, 2), (1, 2), (2, 2), (3, 4), (5, 8), (8, 8)] {
            let (mut p, _c) = ring::<usize>(asked);
            let pushed = (0..holds + 1)
                .take_while(|&i| p.try_push(i).is_ok())
                .count();
            assert_eq!(pushed, holds, "ring({asked}) holds {holds}");
        }
    }

    #[test]
    fn published_unread_counts_published_values_not_yet_popped() {
        let (mut p, mut c) = ring::<u32>(8);
        assert_eq!(c.published_unread(), 0);
        p.try_push(1).unwrap();
        p.try_push(2).unwrap();
        p.try_push(3).unwrap();
        // Pushed but not published: not in the ring yet as the consumer sees it.
        assert_eq!(c.published_unread(), 0);
        p.publish();
        assert_eq!(c.published_unread(), 3);
        assert_eq!(c.pop(), Some(1));
        // Popped (slot not released yet) no longer counts.
        assert_eq!(c.published_unread(), 2);
        c.release();
        assert_eq!(c.published_unread(), 2);
        assert_eq!(c.pop(), Some(2));
        assert_eq!(c.pop(), Some(3));
        assert_eq!(c.published_unread(), 0);
    }

    #[test]
    fn empty_ring_and_has_pending_follow_publication() {
        let (mut p, mut c) = ring::<u32>(4);
        assert!(!c.has_pending());
        assert_eq!(c.pop(), None);
        p.try_push(1).unwrap();
        assert!(!c.has_pending(), "an unpublished push is invisible");
        p.publish();
        assert!(c.has_pending());
        assert_eq!(c.pop(), Some(1));
        assert!(!c.has_pending(), "popped everything");
        assert_eq!(c.pop(), None);
    }

    #[test]
    fn publish_batches_pushes_into_one_store() {
        let (mut p, mut c) = ring::<u32>(8);
        assert!(!p.publish(), "nothing to publish: no bell to ring");
        for i in 0..5 {
            p.try_push(i).unwrap();
            assert_eq!(p.unpublished(), i as usize + 1);
        }
        assert_eq!(
            c.ring.tail.load(Ordering::Relaxed),
            0,
            "no store before publish"
        );
        assert!(p.publish());
        assert_eq!(
            c.ring.tail.load(Ordering::Relaxed),
            5,
            "one store for the batch"
        );
        assert_eq!(p.unpublished(), 0);
        assert!(!p.publish(), "publishing twice is a no-op");
        let got: Vec<u32> = std::iter::from_fn(|| c.pop()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn release_batches_pops_and_returns_slots_only_then() {
        let (mut p, mut c) = ring::<u32>(2);
        p.try_push(0).unwrap();
        p.try_push(1).unwrap();
        p.publish();
        assert_eq!((c.pop(), c.pop()), (Some(0), Some(1)));
        assert_eq!(p.try_push(2), Err(2), "popped but not released");
        assert_eq!(c.ring.head.load(Ordering::Relaxed), 0);
        c.release();
        assert_eq!(
            c.ring.head.load(Ordering::Relaxed),
            2,
            "one store for both pops"
        );
        p.try_push(2).unwrap();
        p.try_push(3).unwrap();
        assert_eq!(p.try_push(4), Err(4));
    }

    #[test]
    fn wraps_around_many_times_in_order() {
        let (mut p, mut c) = ring::<u64>(4);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        // Uneven batches so that batches straddle the end of the slot array.
        for batch in (1..=4).cycle().take(1_000) {
            for _ in 0..batch {
                p.try_push(next_in).unwrap();
                next_in += 1;
            }
            p.publish();
            while let Some(v) = c.pop() {
                assert_eq!(v, next_out);
                next_out += 1;
            }
            c.release();
        }
        assert_eq!(next_out, next_in);
        assert!(next_in > 100 * 4, "went around the ring many times");
    }

    /// Positions are free-running: a ring whose positions overflow `usize` keeps working, and
    /// drops the values left in it (the drop used `head..tail`, an empty range once the tail
    /// had wrapped past `usize::MAX` and the head had not: those values leaked).
    #[test]
    fn positions_wrap_past_usize_max() {
        let value = Arc::new(());
        let (mut p, mut c) = ring::<Arc<()>>(4);
        let start = usize::MAX - 1;
        p.ring.head.store(start, Ordering::Relaxed);
        p.ring.tail.store(start, Ordering::Relaxed);
        (p.tail, p.head_cache, p.published) = (start, start, start);
        (c.head, c.tail_cache, c.released) = (start, start, start);
        for _ in 0..4 {
            p.try_push(value.clone()).unwrap();
        }
        assert!(p.try_push(value.clone()).is_err(), "full across the wrap");
        p.publish();
        assert!(c.pop().is_some());
        c.release();
        p.try_push(value.clone()).unwrap();
        p.publish();
        assert_eq!(Arc::strong_count(&value), 5, "four in the ring, one here");
        drop(p);
        drop(c);
        assert_eq!(
            Arc::strong_count(&value),
            1,
            "the ring dropped what it held"
        );
    }

    #[test]
    fn two_threads_transfer_everything_in_order() {
        const N: u64 = 2_000_000;
        let (mut p, mut c) = ring::<u64>(64);
        let producer = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                match p.try_push(i) {
                    Ok(()) => {
                        i += 1;
                        if i % 16 == 0 {
                            p.publish();
                        }
                    }
                    Err(_) => {
                        p.publish();
                        std::hint::spin_loop();
                    }
                }
            }
            p.publish();
        });
        let mut expected = 0;
        while expected < N {
            match c.pop() {
                Some(v) => {
                    assert_eq!(v, expected);
                    expected += 1;
                }
                None => {
                    c.release();
                    std::hint::spin_loop();
                }
            }
        }
        producer.join().unwrap();
        assert_eq!(c.pop(), None);
    }
}

/// Model tests (run under loom: `RUSTFLAGS="--cfg loom" cargo test -p quark-shard --release
/// --lib loom_`). Loom runs each closure under every interleaving and every reordering the
/// memory model allows (within the preemption bound), and fails on a slot access that is not
/// ordered after the write it reads (a missing Release/Acquire pair).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    /// Loom's default is unbounded; 3 preemptions find the known classes of ordering bugs and
    /// keep the run short. `LOOM_MAX_PREEMPTIONS` overrides it.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(3);
        }
        b.check(f);
    }

    /// Four values through a ring of two slots (so it wraps around twice and fills up), the
    /// producer publishing every second push (batching) and when full, the consumer releasing
    /// after each pop: each value arrives exactly once, in order.
    #[test]
    fn loom_spsc_ring_never_loses_or_duplicates_a_slot() {
        const N: usize = 4;
        model(|| {
            let (mut p, mut c) = ring::<Box<usize>>(2);
            let producer = thread::spawn(move || {
                for i in 0..N {
                    let mut v = Box::new(i);
                    while let Err(back) = p.try_push(v) {
                        v = back;
                        p.publish();
                        thread::yield_now();
                    }
                    if i % 2 == 1 {
                        p.publish();
                    }
                }
                // Dropping the producer publishes the rest.
            });
            let mut got = Vec::with_capacity(N);
            while got.len() < N {
                match c.pop() {
                    Some(v) => {
                        got.push(*v);
                        c.release();
                    }
                    None => thread::yield_now(),
                }
            }
            producer.join().expect("the producer does not panic");
            assert_eq!(got, (0..N).collect::<Vec<_>>());
            assert!(c.pop().is_none(), "nothing is delivered twice");
        });
    }

    /// Values still in the ring when both handles go away (on two threads, in either order)
    /// are dropped exactly once, and popped ones are not dropped again.
    #[test]
    fn loom_ring_drops_each_unread_value_once() {
        struct Counted(crate::sync::Arc<crate::sync::AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        model(|| {
            let drops = crate::sync::Arc::new(crate::sync::AtomicUsize::new(0));
            let (mut p, mut c) = ring::<Counted>(2);
            let d = drops.clone();
            let producer = thread::spawn(move || {
                for _ in 0..2 {
                    assert!(p.try_push(Counted(d.clone())).is_ok(), "two slots are free");
                }
                // Dropped here: publishes both.
            });
            let popped = c.pop();
            drop(c);
            producer.join().expect("the producer does not panic");
            drop(popped);
            assert_eq!(drops.load(Ordering::Relaxed), 2);
        });
    }
}
