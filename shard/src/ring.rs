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

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

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
        let head = *self.head.get_mut();
        let tail = *self.tail.get_mut();
        for pos in head..tail {
            // SAFETY: slots in [head, tail) hold initialised values that nobody read; we are the
            // last owner (`&mut self`).
            unsafe { (*self.slots[pos & self.mask].get()).assume_init_drop() };
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
        unsafe { (*self.ring.slots[self.tail & self.ring.mask].get()).write(value) };
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
        let value =
            unsafe { (*self.ring.slots[self.head & self.ring.mask].get()).assume_init_read() };
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
