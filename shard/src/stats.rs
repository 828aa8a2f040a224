//! A shard's counters: plain cells, written only by the shard's thread, read through
//! [`crate::Engine::stats`] (which asks each shard for a snapshot).

use std::cell::Cell;

/// Index of a message kind in [`ShardStats::tells`], [`ShardStats::asks`] and (the first
/// three) [`ShardStats::ask_latency`]: to an actor of the same shard.
pub(crate) const LOCAL: usize = 0;
/// To an actor of another shard of this node.
pub(crate) const CROSS_SHARD: usize = 1;
// The senders index with `usize::from(target != this shard)`.
const _: () = assert!(LOCAL == 0 && CROSS_SHARD == 1);
/// To an actor of another node (counted by the sending shard).
pub(crate) const REMOTE: usize = 2;
/// From a thread outside the node (counted by the owner shard when it handles the message).
pub(crate) const EXTERNAL: usize = 3;

/// Buckets of an ask latency histogram: bucket `i` counts asks that took at most `2^i` µs
/// (1 µs … 2^24 µs ≈ 16.8 s); the last one, any longer ask.
pub const ASK_LATENCY_BUCKETS: usize = 26;

/// An ask latency histogram kept by one shard: power-of-two buckets of microseconds.
#[derive(Default)]
pub(crate) struct LatencyHistogram {
    buckets: [Cell<u64>; ASK_LATENCY_BUCKETS],
    sum_us: Cell<u64>,
}

impl LatencyHistogram {
    /// Counts one ask that took `us` µs.
    #[inline]
    pub(crate) fn record_us(&self, us: u64) {
        add(&self.buckets[latency_bucket(us)], 1);
        self.sum_us.set(self.sum_us.get().saturating_add(us));
    }

    /// The bucket counts (not cumulative) and the sum of the recorded latencies, µs.
    pub(crate) fn snapshot(&self) -> ([u64; ASK_LATENCY_BUCKETS], u64) {
        (
            std::array::from_fn(|i| self.buckets[i].get()),
            self.sum_us.get(),
        )
    }
}

/// The bucket of a latency of `us` microseconds: the smallest `i` with `us <= 2^i`, at most
/// the last bucket.
#[inline]
pub(crate) fn latency_bucket(us: u64) -> usize {
    let i = if us <= 1 {
        0
    } else {
        (u64::BITS - (us - 1).leading_zeros()) as usize
    };
    i.min(ASK_LATENCY_BUCKETS - 1)
}

#[derive(Default)]
pub(crate) struct ShardStats {
    /// Moves ordered by this shard as the actors' home (`migrate`).
    pub(crate) migrations_started: Cell<u64>,
    /// Moves that ended with the actor on its new shard.
    pub(crate) migrations_done: Cell<u64>,
    /// Moves aborted (deadline) or refused by the actor's place; the actor stayed.
    pub(crate) migrations_aborted: Cell<u64>,
    /// Bytes of dehydrated state moved (0 for states moved as a box).
    pub(crate) migration_bytes: Cell<u64>,
    /// Messages this shard forwarded to an actor of its that lives on another shard.
    pub(crate) migrate_forwarded: Cell<u64>,
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
    /// Tells by kind ([`LOCAL`], [`CROSS_SHARD`], [`REMOTE`]: sent from this shard;
    /// [`EXTERNAL`]: from outside the node, handled here).
    pub(crate) tells: [Cell<u64>; 4],
    /// Asks by kind, as `tells`.
    pub(crate) asks: [Cell<u64>; 4],
    /// Latency of the asks made from this shard, by kind ([`LOCAL`], [`CROSS_SHARD`],
    /// [`REMOTE`]), measured with the shard clock (read once per pump iteration).
    pub(crate) ask_latency: [LatencyHistogram; 3],
}

/// Adds `n` to a counter.
#[inline]
pub(crate) fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_powers_of_two_of_microseconds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(4), 2);
        assert_eq!(latency_bucket(5), 3);
        assert_eq!(latency_bucket(1 << 24), 24);
        assert_eq!(latency_bucket((1 << 24) + 1), 25);
        assert_eq!(latency_bucket(u64::MAX), ASK_LATENCY_BUCKETS - 1);
        let h = LatencyHistogram::default();
        h.record_us(3);
        h.record_us(100);
        h.record_us(60_000_000);
        let (b, sum) = h.snapshot();
        assert_eq!(b[2], 1);
        assert_eq!(b[7], 1, "100 µs <= 128 µs");
        assert_eq!(b[ASK_LATENCY_BUCKETS - 1], 1);
        assert_eq!(b.iter().sum::<u64>(), 3);
        assert_eq!(sum, 3 + 100 + 60_000_000);
    }
}
