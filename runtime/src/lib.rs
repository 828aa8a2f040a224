//! Quark: a thread-per-core, shared-nothing virtual-actor runtime.
//!
//! A [`Node`] runs one shard per core; each shard owns its actors, timers and (with the
//! persistence features) its log. Actors are *virtual*: address one by type and key with an
//! [`ActorRef`] and it is activated on its owning shard when a message arrives. See
//! `docs/ARCHITECTURE.md` for the design and `docs/CONFIG.md` for every setting.
#![deny(missing_docs)]

pub mod admin;
pub mod builtin;
mod client;
mod cluster;
mod config;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod jobs;
pub mod journal;
mod locality;
pub mod memory;
mod node;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod outbox;
pub mod reminders;
mod serve;
pub mod workflow;

pub use admin::{AdminConfig, AdminError};
pub use client::{probe, probe_with, Client, ClientBuilder, ClientError};
pub use cluster::{
    ClusterSettings, EtcdAuth, EtcdSettings, EtcdTls, MembershipSettings, ETCD_LEASE_TTL_S_DEFAULT,
};
pub use config::{
    ActorTypeConfig, ConfigError, MemoryConfig, NodeConfig, ObservabilityConfig, OutboxSection,
    VictimStrategy,
};
pub use locality::{
    LocalityConfig, LocalityError, LocalityMove, LocalityPair, LocalityRound, LocalityStats,
    DECAY_PER_ROUND, TOP_PAIRS,
};
pub use memory::CountingAlloc;
pub use node::{Node, NodeBuilder, NodeError};
/// The rkyv version wire types are archived with. Derive a wire type through it, with no
/// direct rkyv dependency:
/// `#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]` and
/// `#[rkyv(crate = quark::rkyv)]`, then `impl quark::WireMessage for T { const WIRE_NAME: ... }`.
pub use quark_net::rkyv;
/// TLS on the transport: [`tls::TlsContext`] for [`ClientBuilder::tls`], [`tls::TlsFiles`]
/// for [`ClientBuilder::tls_files`] (a node takes them from `[cluster.tls]`).
pub use quark_net::tls;
pub use quark_net::{
    ClusterSecret, HandshakeConfig, Membership, MembershipError, PeerRole, RemoteError,
    SecretError, WireMessage, WireOwned, PROTOCOL_VERSION,
};
pub use quark_placement::NodeId;
pub use quark_shard::{
    allowed_cores, block_on, sleep, Actor, ActorId, ActorKey, ActorRef, ActorType, CallError,
    Context, DeactivateError, Deactivation, EngineConfig, EngineHandle, ErrorChain, Handler,
    IoDriver, JoinError, LinkDown, LoadError, LoadFuture, Message, OverloadCause, Pinning, ShardId,
    ShardInfo, ShardSpec, ShardStatsSnapshot, ShutdownReport, SpawnHandle, StartError, StatsError,
    Tell, TimerId, TypeStateBytes,
};
/// Trace contexts (W3C `traceparent`) that follow a request across shards and nodes; see the
/// "Tracing" section of `docs/OPERATIONS.md`.
pub use quark_shard::{current_trace, TraceContext, TraceFutureExt, TraceParseError, WithTrace};
pub use quark_shard::{
    ActorCursor, ActorPage, ActorQuery, ActorQueryError, ActorRow, CursorError,
    ACTOR_QUERY_LIMIT_DEFAULT, ACTOR_QUERY_LIMIT_MAX,
};
/// Live migration of activations between the shards of a node (docs/MIGRATION.md).
pub use quark_shard::{DrainReport, MigrateError, Moved, Placement, PlacementPolicy};

/// The per-shard durable log, as [`Context::log`] and [`log::current_shard_log`] return it
/// (re-exported from `quark-persist`, so that a user depends on `quark` alone; the guide is
/// `docs/PERSIST.md`).
///
/// A turn appends one atomic [`log::Batch`] and awaits its durability:
/// `log.append(&batch).await` gives the [`log::LsnRange`] it was written at.
pub mod log {
    pub use quark_persist::{block_on, LogIo, StdIo};
    pub use quark_persist::{
        AppendError, Batch, CompactError, CompactionPolicy, CompactionReport, DirectIo,
        FsyncPolicy, Invalid, Log, LogConfig, LogStats, LsnRange, NewRecord, OpenError,
        Preallocate, ReadError, Record, RecordKind, RecoverError, RecoveryMode, RecoveryReport,
        Scanner, ScrubError, ScrubReport,
    };
    pub use quark_shard::rt::log_io::{open_log, UringIo};
    pub use quark_shard::{current_shard_log, ShardLog};
}
pub use quark_shard::{
    CallEdge, LoadSnapshot, SpanKind, SpanRecord, SpanSink, SpanSinkHandle, SpanStatus, TopActor,
    TopMemoryActor, TurnDurations, TypeLoad, TOP_ACTORS_PER_SHARD, TOP_WINDOW, TURN_SAMPLE_EVERY,
};
pub use quark_shard::{NetConfig, NetStatsSnapshot, PeerRtt};
pub use serve::{serve, ServeError, ServeOptions};

/// The smallest `u64` key whose `A` a node of `shards` shards places on `shard`
/// (`node.shard_count()` gives `shards`): `node.actor_ref::<A>(quark::key_for_shard::<A>(1, n))`
/// is an actor on shard 1. For tests and benchmarks that need an actor on a known shard (the
/// same thread as a driver, or another one). In a cluster the key's node is chosen first: the
/// actor is on `shard` of whichever node owns the key.
///
/// # Panics
/// If `shard >= shards`.
pub fn key_for_shard<A: Actor>(shard: ShardId, shards: u16) -> u64 {
    quark_placement::key_for_shard(A::TYPE_NAME, shard, shards)
}

/// Every `u64` key (ascending) whose `A` a node of `shards` shards places on `shard`, about
/// one in `shards`: `keys_for_shard::<A>(s, n).take(100)` gives 100 actors on shard `s`.
/// See [`key_for_shard`].
///
/// # Panics
/// If `shard >= shards`.
pub fn keys_for_shard<A: Actor>(shard: ShardId, shards: u16) -> impl Iterator<Item = u64> {
    quark_placement::keys_for_shard(A::TYPE_NAME, shard, shards)
}
