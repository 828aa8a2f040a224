//! What the engine reports about its shards: how each runs ([`ShardInfo`], [`Pinning`],
//! [`IoDriver`]), their counters ([`ShardStatsSnapshot`]) and what a shutdown could not
//! finish ([`ShutdownReport`]). Plain data.

use std::time::Duration;

use quark_placement::ShardId;

/// How a shard thread runs: reported by [`Engine::info`](super::Engine::info).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardInfo {
    /// The shard.
    pub shard: ShardId,
    /// The core the shard was assigned (from [`ShardSpec`](super::ShardSpec)).
    pub core: usize,
    /// The CPU the shard thread was running on when it started (`None` if the kernel does not
    /// say). Equal to `core` when pinning succeeded.
    pub running_on: Option<usize>,
    /// Whether the thread is pinned to `core`.
    pub pinning: Pinning,
    /// The I/O driver the shard's runtime uses.
    pub driver: IoDriver,
    /// The idle spin in effect (zero when more shards than cores share them, whatever the
    /// configuration says).
    pub idle_spin: Duration,
}

/// Whether a shard thread is pinned to its core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pinning {
    /// `pin_threads` is off: the thread may run on any allowed core.
    Off,
    /// The thread is pinned to its core.
    Pinned,
    /// Pinning was asked for but the system refused; the thread runs unpinned.
    Failed {
        /// The OS error number, where there is one.
        os_error: Option<i32>,
    },
}

/// The I/O driver of a shard's runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoDriver {
    /// io_uring.
    IoUring,
    /// The epoll fallback (io_uring unavailable, or `force_legacy_driver`).
    Epoll,
}

/// A snapshot of one shard's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStatsSnapshot {
    /// The shard.
    pub shard: ShardId,
    /// Activations alive now.
    pub live_activations: u64,
    /// Activations created since start.
    pub activations: u64,
    /// Deactivations completed since start.
    pub deactivations: u64,
    /// Handler panics.
    pub panics: u64,
    /// Replies that arrived after their caller stopped waiting.
    pub replies_dropped: u64,
    /// Asks not run because their deadline had passed (or their caller had given up) when
    /// their turn came; each was failed with `Timeout` instead.
    pub asks_expired_skipped: u64,
    /// Times a local sender waited for mailbox space.
    pub mailbox_waits: u64,
    /// Times a sender waited for a cross-shard credit.
    pub credit_waits: u64,
    /// Times the shard parked.
    pub parks: u64,
    /// Pump iterations.
    pub iterations: u64,
    /// Trips through the executor's wait made to reap I/O completions.
    pub reaps: u64,
    /// Polls of tasks on the shard's scheduler.
    pub task_polls: u64,
    /// Messages received from rings and the injection queue.
    pub ring_msgs_in: u64,
    /// Calls awaiting a reply.
    pub calls_in_flight: u64,
    /// Live actor timers.
    pub timers: u64,
    /// Entries in the shard's timer heap, live and cancelled-but-not-yet-dropped (at most about
    /// twice `timers`: cancelled entries are dropped as they accumulate).
    pub timer_heap_entries: u64,
    /// Tasks alive on the shard's scheduler (activations and spawned tasks).
    pub tasks: u64,
    /// The shard log's next LSN (`None` without a log).
    pub log_next_lsn: Option<u64>,
    /// Bytes the shard log's segment files occupy (`None` without a log).
    pub log_disk_bytes: Option<u64>,
    /// The shard's cluster transport counters (`None` for a standalone node).
    pub net: Option<crate::net::NetStatsSnapshot>,
    /// Messages to actors of this shard (sent from it).
    pub messages_local: MessageCounts,
    /// Messages sent from this shard to actors of other shards of the node.
    pub messages_cross_shard: MessageCounts,
    /// Messages sent from this shard to actors of other nodes.
    pub messages_remote: MessageCounts,
    /// Messages from threads outside the node, counted when this shard (their owner) handled
    /// them.
    pub messages_external: MessageCounts,
    /// Latency of the asks made from this shard to actors of the same shard.
    pub ask_latency_local: AskLatency,
    /// Latency of the asks made from this shard to other shards of the node.
    pub ask_latency_cross_shard: AskLatency,
    /// Latency of the asks made from this shard to other nodes.
    pub ask_latency_remote: AskLatency,
    /// Live activations per actor type (registered types, in registration order).
    pub live_per_type: Vec<(&'static str, u64)>,
    /// Messages queued in the mailboxes of this shard's activations now.
    pub mailbox_depth: u64,
    /// The longest mailbox of this shard now.
    pub mailbox_depth_max: u64,
    /// Messages waiting in this shard's overflow queues because the ring to their target
    /// shard was full.
    pub ring_overflow: u64,
}

/// Tells and asks of one kind, since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// Tells.
    pub tells: u64,
    /// Asks.
    pub asks: u64,
}

/// An ask latency histogram, since the node started: `buckets[i]` counts the asks that took
/// at most `2^i` µs and more than `2^(i-1)` µs (not cumulative); the last bucket, any longer
/// ask. Asks that timed out count with their timeout. Measured with the shard clock, which is
/// read once per pump iteration: a latency is exact to about one iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskLatency {
    /// Counts per bucket ([`crate::ASK_LATENCY_BUCKETS`] of them).
    pub buckets: [u64; crate::ASK_LATENCY_BUCKETS],
    /// The sum of the latencies, µs.
    pub sum_us: u64,
}

impl Default for AskLatency {
    fn default() -> Self {
        AskLatency {
            buckets: [0; crate::ASK_LATENCY_BUCKETS],
            sum_us: 0,
        }
    }
}

impl AskLatency {
    /// Asks counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// What a shutdown could not finish within `shutdown_timeout`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Shards that still had turns running or queued when the drain timed out.
    pub shards_not_drained: usize,
    /// Shards that still had activations when deactivation timed out.
    pub shards_not_deactivated: usize,
    /// Shard threads that panicked (a bug in Quark; handler panics never do this).
    pub shard_threads_panicked: usize,
}
