//! The per-node limit of a job type: running jobs of the type on all shards together.
//!
//! Shards start jobs on their own; the node-wide count is the one place they share, so it is a
//! counter every shard thread updates with atomics (no lock), plus a mask of the shards that
//! were refused a slot and must be woken when one frees up.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The node-wide running count of one job type and its limit.
#[derive(Debug)]
pub(crate) struct NodeSlots {
    limit: u32,
    running: AtomicU32,
    /// Bit `s % 64`: shard `s` was refused a slot since the last release.
    waiting: AtomicU64,
}

impl NodeSlots {
    pub(crate) fn new(limit: u32) -> Self {
        NodeSlots {
            limit,
            running: AtomicU32::new(0),
            waiting: AtomicU64::new(0),
        }
    }

    /// Takes a slot for shard `shard`, or records the shard as waiting and returns false.
    ///
    /// Ordering: a refused shard sets its waiting bit and then looks at the count again; a
    /// release lowers the count and then takes the waiting bits. All four are `SeqCst`, so
    /// either the second look sees the lowered count (and takes the slot) or the release sees
    /// the bit (and wakes the shard): a refused shard is never left waiting for a free slot.
    pub(crate) fn try_acquire(&self, shard: u16) -> bool {
        if self.take() {
            return true;
        }
        self.waiting
            .fetch_or(1u64 << (shard % 64), Ordering::SeqCst);
        self.take()
    }

    fn take(&self) -> bool {
        self.running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                (r < self.limit).then_some(r + 1)
            })
            .is_ok()
    }

    /// Frees a slot; returns the mask of shards to wake (bit `s % 64` for shard `s`).
    pub(crate) fn release(&self) -> u64 {
        let prev = self.running.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(prev > 0, "a node slot is released only after it was taken");
        self.waiting.swap(0, Ordering::SeqCst)
    }

    /// Running jobs of the type on the node now.
    #[cfg(test)]
    pub(crate) fn running(&self) -> u32 {
        self.running.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_never_exceeded_and_refused_shards_are_woken() {
        let s = NodeSlots::new(2);
        assert!(s.try_acquire(0));
        assert!(s.try_acquire(1));
        assert!(!s.try_acquire(3), "at the limit");
        assert_eq!(s.running(), 2);
        assert_eq!(s.release(), 1 << 3, "the refused shard is woken");
        assert_eq!(s.release(), 0, "and only once");
        assert!(s.try_acquire(3));
    }

    #[test]
    fn concurrent_acquires_never_pass_the_limit() {
        let s = std::sync::Arc::new(NodeSlots::new(3));
        let max = std::sync::Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let (s, max) = (s.clone(), max.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if s.try_acquire(t) {
                            max.fetch_max(s.running(), Ordering::SeqCst);
                            s.release();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert!(max.load(Ordering::SeqCst) <= 3);
        assert_eq!(s.running(), 0);
    }
}
