//! A shard's counters: plain cells, written only by the shard's thread, read through
//! [`crate::Engine::stats`] (which asks each shard for a snapshot).

use std::cell::Cell;

#[derive(Default)]
pub(crate) struct ShardStats {
    pub(crate) activations: Cell<u64>,
    pub(crate) deactivations: Cell<u64>,
    pub(crate) panics: Cell<u64>,
    pub(crate) replies_dropped: Cell<u64>,
    pub(crate) asks_expired_skipped: Cell<u64>,
    pub(crate) mailbox_waits: Cell<u64>,
    pub(crate) parks: Cell<u64>,
    pub(crate) iterations: Cell<u64>,
    pub(crate) reaps: Cell<u64>,
    pub(crate) task_polls: Cell<u64>,
    pub(crate) ring_msgs_in: Cell<u64>,
}

/// Adds `n` to a counter.
#[inline]
pub(crate) fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}
