//! Quark's per-core engine: shard threads pinned to cores, cross-shard rings with batched
//! publication and doorbell wake-ups, virtual actors (activation, turns, deactivation), timers,
//! stateless workers, and drain-on-shutdown.
//!
//! The user-facing crate `quark` re-exports the programming model defined here ([`Actor`],
//! [`Handler`], [`Message`], [`Context`], [`ActorRef`]) and adds configuration files and the
//! features built on the log. Only [`rt`] names the executor.
//!
//! ```
//! use quark_shard::{Actor, ActorType, Context, EngineBuilder, EngineConfig, Handler, Message, ShardSpec};
//! struct Echo;
//! impl Actor for Echo { const TYPE_NAME: &'static str = "echo"; }
//! struct Ping(u64);
//! impl Message for Ping { type Reply = u64; }
//! impl Handler<Ping> for Echo {
//!     async fn handle(&mut self, p: Ping, _: &Context<Self>) -> u64 { p.0 + 1 }
//! }
//! let config = EngineConfig { shards: ShardSpec::Count(2), ..EngineConfig::default() };
//! let engine = EngineBuilder::new(config).register(ActorType::new(|_| Echo)).start().unwrap();
//! let echo = engine.actor_ref::<Echo>(7u64);
//! assert_eq!(quark_shard::block_on(echo.ask(Ping(41))), Ok(42));
//! engine.shutdown();
//! ```
#![deny(missing_docs)]

mod activation;
mod actor;
mod actor_ref;
mod admission;
pub mod affinity;
mod calls;
mod clock;
mod cross;
pub mod data_dir;
mod direct;
mod directory;
mod engine;
mod envelope;
mod error;
mod evict;
mod log_tasks;
pub mod memory;
mod migrate;
mod net;
mod pump;
mod ring;
pub mod rt;
mod scheduler;
mod shard;
mod signal;
mod sleep;
mod stats;
mod sync;
mod tables;
mod timers;
mod trace;
mod turn;

pub use activation::{ActorType, LoadError, LoadFuture};
pub use actor::{Actor, Context, Handler, Invoke, InvokeFuture, Message};
pub use actor_ref::{ActorRef, Tell};
pub use affinity::{allowed_cores, pin_current_thread, PinError};
#[doc(hidden)]
pub use clock::{Clock, ManualClock};
pub use directory::PlacementPolicy;
pub use engine::{
    current_shard_log, ActorCursor, ActorPage, ActorQuery, ActorQueryError, ActorRow, AskLatency,
    CursorError, Engine, EngineBuilder, EngineConfig, EngineHandle, IoDriver, MessageCounts,
    Pinning, ShardInfo, ShardSpec, ShardStatsSnapshot, ShutdownReport, StartError, StatsError,
    TypeStateBytes, ACTOR_QUERY_LIMIT_DEFAULT, ACTOR_QUERY_LIMIT_MAX,
};
#[doc(hidden)]
pub use engine::{StartFault, StartStep};
pub use error::{CallError, ErrorChain, LinkDown, OverloadCause};
pub use evict::{DeactivateError, Deactivation};
pub use memory::CountingAlloc;
#[doc(hidden)]
pub use migrate::stop_log_moves_after_copy;
pub use migrate::{DrainReport, MigrateError, Moved, Placement};
#[doc(hidden)]
pub use migrate::{MOVE_BEGIN_KEY, MOVE_END_KEY};
pub use net::{MemberUpdate, NetConfig, NetStatsSnapshot, PeerRtt};
pub use quark_placement::{ActorId, ActorKey, ShardId};
pub use scheduler::{JoinError, SpawnHandle};
pub use stats::{
    actor_edges_disable, actor_edges_enable, actor_edges_take, ActorEdgeSample, ActorSlot,
    CallEdge, LoadSnapshot, TopActor, TopMemoryActor, TurnDurations, TypeLoad, ASK_LATENCY_BUCKETS,
    TOP_ACTORS_PER_SHARD, TOP_WINDOW, TURN_SAMPLE_EVERY,
};
pub use timers::TimerId;
pub use trace::{
    current as current_trace, SpanKind, SpanRecord, SpanSink, SpanSinkHandle, SpanStatus,
    TraceContext, TraceFutureExt, TraceParseError, WithTrace,
};

/// Waits for `d` on the calling shard's timers without blocking the shard. Only for code running
/// on a shard thread (handlers, tasks spawned with [`EngineHandle::spawn_on`]).
///
/// Precision: with the real clock the sleep ends within the shard's wake-up latency of its
/// deadline (tens of µs when the shard is parked: it sleeps on a `timerfd`; at most one pump
/// iteration when it is busy), never before it. Under a [`ManualClock`], and off a shard
/// thread, it is the executor's timer, which rounds up to the next millisecond.
/// Cancel safety: dropping the future before it completes has no effect.
pub fn sleep(d: std::time::Duration) -> impl std::future::Future<Output = ()> {
    sleep::sleep(d)
}

/// A shard's durable log on the io_uring backend (see [`Context::log`]).
pub type ShardLog = std::rc::Rc<quark_persist::Log<rt::log_io::UringIo>>;

/// Runs a future to completion on the calling thread (for callers outside the node's shards:
/// `main`, tests, other runtimes' blocking sections). Never call it on a shard thread.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    futures::executor::block_on(fut)
}
