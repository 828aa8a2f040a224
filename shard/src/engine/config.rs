//! The engine's settings: [`EngineConfig`], [`ShardSpec`] and the start-up test hook
//! ([`StartFault`]). Plain data; depends on nothing else in the engine.

use std::time::Duration;

use quark_placement::ShardId;

/// Which cores the shards run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardSpec {
    /// One shard per core in the process's CPU affinity mask.
    Auto,
    /// This many shards, pinned round-robin over the affinity mask (more shards than cores is
    /// allowed, e.g. for tests, but shares cores).
    Count(usize),
    /// One shard per listed core id, in order.
    Cores(Vec<usize>),
}

/// The engine's settings (the `[node]` table of `quark.toml`; see `docs/CONFIG.md`).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Shard count and cores.
    pub shards: ShardSpec,
    /// Pin each shard thread to its core.
    pub pin_threads: bool,
    /// How long an idle shard keeps polling before it parks (0 = park at once).
    pub idle_spin: Duration,
    /// Slots of each cross-shard ring (one ring per ordered pair of shards).
    pub ring_capacity: usize,
    /// Requests (asks and tells) one shard may have in flight to one other shard.
    pub cross_shard_inflight_max: u32,
    /// Slots of each shard's queue for messages from threads outside the node.
    pub external_queue_capacity: usize,
    /// Messages from outside the node in flight to one shard.
    pub external_inflight_max: usize,
    /// Mailbox length beyond which local senders wait.
    pub mailbox_capacity: usize,
    /// Default deadline of an `ask`.
    pub ask_timeout: Duration,
    /// How long a shutdown waits for in-flight turns, then for deactivations.
    pub shutdown_timeout: Duration,
    /// Default idle timeout of an actor type.
    pub idle_timeout: Duration,
    /// io_uring submission queue entries per shard.
    pub uring_entries: u32,
    /// Run the shards on the epoll driver even where io_uring is available (for kernels or
    /// sandboxes that forbid io_uring, and to test the fallback).
    pub force_legacy_driver: bool,
    /// The durable log each shard opens at start-up (`None`: the node keeps nothing on disk).
    /// `dir` is the node's data directory: shard `i` uses `dir/shard-i`; `shard_id` is set per
    /// shard.
    pub log: Option<quark_persist::LogConfig>,
    /// How often each shard runs a compaction pass over its log (`None`: never).
    pub log_compact_interval: Option<Duration>,
    /// This node's application version (`[node] app_version`; empty: not set): a move
    /// between nodes never goes to a node of an older version than the actor ran on
    /// (docs/MIGRATION.md, "Versions").
    pub app_version: String,
    /// Deadline of a live migration (docs/MIGRATION.md): a move whose activation has not
    /// reached its hand-over by then is aborted and the actor keeps running where it was.
    pub migration_timeout: Duration,
    /// Moves each shard may start per second as the actors' home (0: no limit); more fail
    /// with `MigrateError::RateLimited`.
    pub migrations_per_sec_max: u32,
    /// Cluster membership and transport (`None`: a standalone node).
    pub net: Option<crate::net::NetConfig>,
    /// Where finished spans of traced turns and tasks go (an exporter; see
    /// [`crate::SpanSink`]). `None`: spans only go to the `tracing` subscriber.
    pub span_sink: Option<crate::SpanSinkHandle>,
    /// Where shards read their time (timers, deadlines); tests set a `ManualClock`.
    #[doc(hidden)]
    pub clock: crate::clock::Clock,
    /// Test hook: makes one shard fail one start-up step, to test that a failed start returns
    /// an error and stops the other shards. Always `None` outside tests.
    #[doc(hidden)]
    pub start_fault: Option<StartFault>,
}

/// Test hook (see [`EngineConfig::start_fault`]): which shard fails which start-up step.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartFault {
    /// The shard that fails.
    pub shard: ShardId,
    /// The step it fails.
    pub step: StartStep,
}

/// Test hook: a start-up step of a shard thread (see [`StartFault`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartStep {
    /// Building the shard's runtime fails.
    Runtime,
    /// Registering the shard's doorbell fails.
    Doorbell,
    /// The shard thread panics after every shard reported ready (rings exchanged).
    PanicAfterReady,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: ShardSpec::Auto,
            pin_threads: true,
            idle_spin: Duration::from_micros(50),
            ring_capacity: 1024,
            cross_shard_inflight_max: 512,
            external_queue_capacity: 4096,
            external_inflight_max: 4096,
            mailbox_capacity: 1024,
            ask_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            uring_entries: 256,
            force_legacy_driver: false,
            log: None,
            log_compact_interval: Some(Duration::from_secs(10)),
            app_version: String::new(),
            migration_timeout: Duration::from_secs(5),
            migrations_per_sec_max: 100_000,
            net: None,
            span_sink: None,
            start_fault: None,
            clock: crate::clock::Clock::default(),
        }
    }
}
