//! The engine of one node: its shard threads, their rings, start-up and shutdown.

use std::any::TypeId;
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use quark_placement::{ActorKey, ShardId};
use rustc_hash::FxHashMap;

use crate::activation::{ActorType, ErasedType, TypeInfo};
use crate::actor::Actor;
use crate::actor_ref::ActorRef;
use crate::affinity::{allowed_cores, current_cpu, numa_node_of, pin_current_thread};
use crate::core::{Outbox, ShardCore};
use crate::envelope::{CrossBox, RunMsg};
use crate::executor::SpawnHandle;
use crate::ring::{ring, Consumer, Producer};
use crate::rt::{Bell, BellReceiver};

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
    /// Cluster membership and transport (`None`: a standalone node).
    pub net: Option<crate::net::NetConfig>,
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
            net: None,
            start_fault: None,
        }
    }
}

/// Errors starting an engine. When a shard fails to start, the shards already started are
/// stopped and joined before the error is returned: no shard is left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The affinity mask could not be read, or a listed core is not in it.
    #[error("shard core {core} is not available to this process (allowed cores: {allowed:?})")]
    CoreUnavailable {
        /// The requested core.
        core: usize,
        /// The cores in the process's affinity mask.
        allowed: Vec<usize>,
    },
    /// Zero shards requested.
    #[error("a node needs at least one shard")]
    NoShards,
    /// More shards than the engine supports.
    #[error("{count} shards requested; at most {max} are supported")]
    TooManyShards {
        /// Requested count.
        count: usize,
        /// Maximum.
        max: usize,
    },
    /// An actor type name is registered twice.
    #[error("actor type {name:?} is registered twice")]
    DuplicateType {
        /// The type name.
        name: &'static str,
    },
    /// A shard's durable log could not be opened (damage, permissions, wrong format).
    #[error("shard {shard}: cannot open its log")]
    Log {
        /// The shard.
        shard: ShardId,
        /// The cause (names the file and offset where it applies).
        #[source]
        source: quark_persist::OpenError,
    },
    /// The data directory is held by another process, or its manifest does not match the
    /// configuration (names what changed and what to do).
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::DataDirError),
    /// The cluster settings are inconsistent (`NetConfig`).
    #[error("cluster settings: {reason}")]
    NetConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// A shard's thread or doorbell socket pair could not be created.
    #[error("shard {shard} failed to start")]
    Shard {
        /// The shard.
        shard: ShardId,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A shard's executor runtime (io_uring or epoll driver) could not be built.
    #[error("shard {shard}: cannot build its runtime")]
    Runtime {
        /// The shard.
        shard: ShardId,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A shard's doorbell could not be registered with its runtime.
    #[error("shard {shard}: cannot register its doorbell")]
    Doorbell {
        /// The shard.
        shard: ShardId,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Shard 0 could not take the node's listening socket.
    #[error("shard {shard}: cannot take the listening socket")]
    Listener {
        /// The shard.
        shard: ShardId,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A shard thread exited (panicked) during start-up without reporting a cause.
    #[error("shard {shard} exited during start-up")]
    ShardExited {
        /// The shard.
        shard: ShardId,
    },
}

/// The node's phase, advanced by [`Engine::shutdown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Running = 0,
    Draining = 1,
    Deactivating = 2,
    Stopped = 3,
}

pub(crate) enum ShardEvent {
    /// The shard built its inbound rings: the producer ends, one per other shard.
    Ready(ShardId, Vec<Producer<CrossBox>>),
    /// The shard got its outbound rings and runs its pump.
    Started(ShardInfo),
    LogFailed(ShardId, quark_persist::OpenError),
    /// A start-up step failed (the shard thread then exits).
    Failed(ShardId, StartFailure),
    Drained(ShardId),
    Deactivated(ShardId),
    /// The shard thread exited (sent on every exit, also by a panic).
    Exited(ShardId),
}

/// Why a shard thread could not start (mapped to a [`StartError`] naming the shard).
pub(crate) enum StartFailure {
    Runtime(std::io::Error),
    Doorbell(std::io::Error),
    Listener(std::io::Error),
}

impl StartFailure {
    fn into_error(self, shard: ShardId) -> StartError {
        match self {
            StartFailure::Runtime(source) => StartError::Runtime { shard, source },
            StartFailure::Doorbell(source) => StartError::Doorbell { shard, source },
            StartFailure::Listener(source) => StartError::Listener { shard, source },
        }
    }
}

/// How a shard thread runs: reported by [`Engine::info`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardInfo {
    /// The shard.
    pub shard: ShardId,
    /// The core the shard was assigned (from [`ShardSpec`]).
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

/// What every thread may touch of a shard: its doorbell and its injection queue.
pub(crate) struct ShardHandle {
    pub(crate) bell: Bell,
    pub(crate) inject: ArrayQueue<CrossBox>,
    pub(crate) ext_inflight: AtomicUsize,
}

/// State shared by every shard thread and every handle of one node (read-mostly).
pub(crate) struct NodeShared {
    pub(crate) config: EngineConfig,
    pub(crate) types: Vec<Arc<dyn ErasedType>>,
    pub(crate) type_index: FxHashMap<TypeId, u16>,
    pub(crate) shards: Vec<ShardHandle>,
    phase: AtomicU8,
    /// Message types that cross nodes.
    pub(crate) registry: crate::net::Registry,
    /// This node's id and the members, for placement (`None`: standalone).
    pub(crate) net: Option<NetPlacement>,
}

/// What placement needs of the cluster.
pub(crate) struct NetPlacement {
    pub(crate) node_id: quark_placement::NodeId,
    pub(crate) members: Vec<quark_placement::NodeId>,
}

impl NodeShared {
    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            2 => Phase::Deactivating,
            _ => Phase::Stopped,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        for s in &self.shards {
            s.bell.ring();
            s.bell.write();
        }
    }

    pub(crate) fn shard_count(&self) -> u16 {
        self.shards.len() as u16
    }

    /// Pushes `msg` into shard `to`'s injection queue, retrying while it is full until
    /// `deadline`; returns whether it went in.
    fn inject_until(&self, to: ShardId, mut msg: CrossBox, deadline: Instant) -> bool {
        let handle = &self.shards[usize::from(to)];
        loop {
            match handle.inject.push(msg) {
                Ok(()) => break,
                Err(back) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::yield_now();
                }
                Err(_) => return false,
            }
        }
        handle.bell.ring();
        true
    }

    /// Pushes `msg` into shard `to`'s injection queue from a thread outside the node's shards,
    /// spinning (with `yield_now`) while it is full.
    pub(crate) fn inject(&self, to: ShardId, mut msg: CrossBox) {
        let handle = &self.shards[usize::from(to)];
        loop {
            match handle.inject.push(msg) {
                Ok(()) => break,
                Err(back) => {
                    msg = back;
                    std::thread::yield_now();
                }
            }
        }
        handle.bell.ring();
    }
}

thread_local! {
    static CURRENT: std::cell::OnceCell<Rc<ShardCore>> = const { std::cell::OnceCell::new() };
}

/// The shard core of the calling thread, if it is a shard thread of `node`.
#[inline]
pub(crate) fn current_core(node: &Arc<NodeShared>) -> Option<Rc<ShardCore>> {
    CURRENT.with(|c| match c.get() {
        Some(core) if Arc::ptr_eq(&core.node, node) => Some(core.clone()),
        _ => None,
    })
}

/// Runs `f` with the calling thread's shard core if it is shard `shard` of `node` (no
/// reference-count traffic); returns whether it ran.
#[inline]
pub(crate) fn with_core_of(
    node: &Arc<NodeShared>,
    shard: ShardId,
    f: impl FnOnce(&Rc<ShardCore>),
) -> bool {
    CURRENT.with(|c| match c.get() {
        Some(core) if core.id == shard && Arc::ptr_eq(&core.node, node) => {
            f(core);
            true
        }
        _ => false,
    })
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
}

/// Registers actor types and starts an [`Engine`].
pub struct EngineBuilder {
    config: EngineConfig,
    types: Vec<(TypeId, Arc<dyn ErasedType>)>,
    registry: crate::net::Registry,
}

impl EngineBuilder {
    /// A builder with `config`.
    pub fn new(config: EngineConfig) -> Self {
        EngineBuilder {
            config,
            types: Vec::new(),
            registry: crate::net::Registry::default(),
        }
    }

    /// Lets actors of type `A` on this node receive `M` from other nodes and clients, and lets
    /// this node send `M` to actors on other nodes. `M` and its reply cross the wire as rkyv
    /// archives under `M::WIRE_NAME`; a request naming a type this node does not handle gets
    /// an error reply.
    pub fn remote<A, M>(mut self) -> Self
    where
        A: crate::Handler<M>,
        M: crate::Message + quark_net::WireOwned,
        M::Reply: quark_net::WireOwned,
    {
        self.registry.add_handler::<A, M>();
        self
    }

    /// Lets this engine send `M` to actors on other nodes without handling it here (for
    /// clients, and for nodes that do not host the receiving type).
    pub fn wire_message<M>(mut self) -> Self
    where
        M: crate::Message + quark_net::WireOwned,
        M::Reply: quark_net::WireOwned,
    {
        self.registry.add_codec::<M>();
        self
    }

    /// Registers actor type `A`.
    pub fn register<A: Actor>(mut self, spec: ActorType<A>) -> Self {
        self.types
            .push((TypeId::of::<A>(), Arc::new(TypeInfo { spec })));
        self
    }

    /// Starts the shard threads; returns once every shard is ready to take messages.
    pub fn start(self) -> Result<Engine, StartError> {
        crate::turn::install_panic_location_hook();
        Engine::start(self.config, self.types, self.registry)
    }
}

/// A running engine: the shard threads of one node.
///
/// Dropping it shuts it down ([`Engine::shutdown`]).
pub struct Engine {
    shared: Arc<NodeShared>,
    threads: Vec<JoinHandle<()>>,
    events: mpsc::Receiver<ShardEvent>,
    cores: Vec<usize>,
    /// The data directory's lock, released after the shard threads have stopped (dropped
    /// after `Drop::drop` joined them).
    _data_dir: Option<crate::data_dir::DataDir>,
    info: Vec<ShardInfo>,
}

const MAX_SHARDS: usize = 256;

impl Engine {
    fn start(
        config: EngineConfig,
        types: Vec<(TypeId, Arc<dyn ErasedType>)>,
        registry: crate::net::Registry,
    ) -> Result<Engine, StartError> {
        if let Some(net) = &config.net {
            let d = net.detector;
            if !(d.heartbeat_interval < d.suspect_after && d.suspect_after <= d.dead_after) {
                return Err(StartError::NetConfig {
                    reason: "needs heartbeat_interval < suspect_after <= dead_after",
                });
            }
            if net.frame_bytes_max < quark_net::HANDSHAKE_FRAME_BYTES_MAX {
                return Err(StartError::NetConfig {
                    reason: "frame_bytes_max must be at least 4096",
                });
            }
        }
        let allowed = allowed_cores();
        let cores: Vec<usize> = match &config.shards {
            ShardSpec::Auto => allowed.clone(),
            ShardSpec::Count(n) => (0..*n).map(|i| allowed[i % allowed.len()]).collect(),
            ShardSpec::Cores(list) => {
                for &c in list {
                    if !allowed.contains(&c) {
                        return Err(StartError::CoreUnavailable {
                            core: c,
                            allowed: allowed.clone(),
                        });
                    }
                }
                list.clone()
            }
        };
        if cores.is_empty() {
            return Err(StartError::NoShards);
        }
        let mut config = config;
        let mut distinct = cores.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < cores.len() && !config.idle_spin.is_zero() {
            // Spinning shards that share a core steal each other's time slices: a message to
            // the other shard then waits for the scheduler. Park at once instead.
            tracing::warn!(
                shards = cores.len(),
                cores = distinct.len(),
                "more shards than cores: idle spinning disabled (idle_spin_us = 0)"
            );
            config.idle_spin = Duration::ZERO;
        }
        if cores.len() > MAX_SHARDS {
            return Err(StartError::TooManyShards {
                count: cores.len(),
                max: MAX_SHARDS,
            });
        }
        // Before any shard touches the data directory: lock it and check its manifest.
        let data_dir = match &config.log {
            Some(log) => Some(crate::data_dir::DataDir::open_for_node(
                &log.dir,
                cores.len() as u16,
                config.net.as_ref().map(|n| n.node_id),
            )?),
            None => None,
        };
        let mut type_index = FxHashMap::default();
        let mut type_registry = Vec::new();
        for (tid, t) in types {
            if type_registry
                .iter()
                .any(|r: &Arc<dyn ErasedType>| r.name() == t.name())
            {
                return Err(StartError::DuplicateType { name: t.name() });
            }
            type_index.insert(tid, type_registry.len() as u16);
            type_registry.push(t);
        }
        let n = cores.len();
        let mut handles = Vec::with_capacity(n);
        let mut bell_rx = Vec::with_capacity(n);
        for shard in 0..n {
            let (bell, rx) = crate::rt::bell_pair().map_err(|source| StartError::Shard {
                shard: shard as ShardId,
                source,
            })?;
            handles.push(ShardHandle {
                bell,
                inject: ArrayQueue::new(config.external_queue_capacity.max(1)),
                ext_inflight: AtomicUsize::new(0),
            });
            bell_rx.push(rx);
        }
        let net = config.net.as_ref().map(|c| NetPlacement {
            node_id: c.node_id,
            members: crate::net::member_ids(&c.membership),
        });
        let shared = Arc::new(NodeShared {
            config,
            types: type_registry,
            type_index,
            shards: handles,
            phase: AtomicU8::new(Phase::Running as u8),
            registry,
            net,
        });

        let (event_tx, event_rx) = mpsc::channel::<ShardEvent>();
        let mut producer_txs = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for (shard, rx) in bell_rx.into_iter().enumerate() {
            let (ptx, prx) = mpsc::channel::<Vec<Option<Producer<CrossBox>>>>();
            producer_txs.push(ptx);
            let shared2 = shared.clone();
            let events = event_tx.clone();
            let core_id = cores[shard];
            let spawned = std::thread::Builder::new()
                .name(format!("quark-shard-{shard}"))
                .spawn(move || shard_main(shard as ShardId, core_id, shared2, rx, events, prx));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(source) => {
                    drop(producer_txs);
                    self_stop(&shared, threads);
                    return Err(StartError::Shard {
                        shard: shard as ShardId,
                        source,
                    });
                }
            }
        }
        drop(event_tx);
        let mut start = Startup {
            events: &event_rx,
            threads,
            producer_txs,
        };
        let info = match start.exchange(n) {
            Ok(info) => info,
            Err(e) => {
                let Startup {
                    threads,
                    producer_txs,
                    ..
                } = start;
                drop(producer_txs);
                self_stop(&shared, threads);
                return Err(e);
            }
        };
        let threads = start.threads;
        Ok(Engine {
            shared,
            threads,
            events: event_rx,
            cores,
            _data_dir: data_dir,
            info,
        })
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u16 {
        self.shared.shard_count()
    }

    /// The core each shard is pinned to.
    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// How each shard runs (index = shard id): the core it runs on, whether pinning worked,
    /// its I/O driver and its effective idle spin. A degraded start (pinning refused, epoll
    /// fallback, spinning off) shows here, not only in a log line.
    pub fn info(&self) -> &[ShardInfo] {
        &self.info
    }

    /// A reference to actor `(A, key)`. Calls fail with `UnknownActorType` if `A` is not
    /// registered.
    pub fn actor_ref<A: Actor>(&self, key: impl Into<ActorKey>) -> ActorRef<A> {
        self.handle().actor_ref(key)
    }

    /// Runs `make()` on shard `shard` and spawns the future it returns there; the returned
    /// handle resolves with its output. Use it to drive load from inside a shard (no
    /// cross-thread hop per message).
    pub fn spawn_on<F, Fut>(&self, shard: ShardId, make: F) -> SpawnHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        self.handle().spawn_on(shard, make)
    }

    /// A `Send + Clone` handle to this node's shards.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            shared: self.shared.clone(),
        }
    }

    /// This engine's node id, if it is part of a cluster.
    pub fn node_id(&self) -> Option<u64> {
        self.shared.net.as_ref().map(|n| n.node_id)
    }

    /// The address the node accepts cluster connections on, if it listens.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        let l = self.shared.config.net.as_ref()?.listener.as_ref()?;
        l.local_addr().ok()
    }

    /// Every shard's counters, index = shard id. Asks every shard at once and waits up to
    /// one second in all; a shard that does not answer by then (stuck in a handler that blocks
    /// its thread, or stopped) is an error naming it, never a zeroed snapshot.
    pub fn stats(&self) -> Result<Vec<ShardStatsSnapshot>, StatsError> {
        self.stats_within(Duration::from_secs(1))
    }

    fn stats_within(&self, wait: Duration) -> Result<Vec<ShardStatsSnapshot>, StatsError> {
        let deadline = Instant::now() + wait;
        let mut answers = Vec::with_capacity(usize::from(self.shard_count()));
        for s in 0..self.shard_count() {
            let (tx, rx) = mpsc::channel();
            let msg: CrossBox = Box::new(RunMsg(Box::new(move |core| {
                let _ = tx.send(core.stats_snapshot());
            })));
            if !self.shared.inject_until(s, msg, deadline) {
                return Err(StatsError::NoAnswer {
                    shard: s,
                    waited: wait,
                });
            }
            answers.push(rx);
        }
        answers
            .into_iter()
            .enumerate()
            .map(|(s, rx)| {
                let left = deadline.saturating_duration_since(Instant::now());
                rx.recv_timeout(left).map_err(|_| StatsError::NoAnswer {
                    shard: s as ShardId,
                    waited: wait,
                })
            })
            .collect()
    }

    /// Shuts the node down and waits for it:
    /// 1. calls from outside the node are refused with `CallError::ShuttingDown`;
    /// 2. queued and in-flight turns finish (up to `shutdown_timeout`);
    /// 3. every activation is deactivated (`on_deactivate` runs; up to `shutdown_timeout`);
    /// 4. the shard threads stop; messages still queued then are failed with `ShuttingDown`.
    ///
    /// Returns what did not finish in time (all zero for a clean shutdown).
    pub fn shutdown(mut self) -> ShutdownReport {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> ShutdownReport {
        let n = self.threads.len();
        if n == 0 {
            return ShutdownReport::default();
        }
        let timeout = self.shared.config.shutdown_timeout;
        let mut report = ShutdownReport::default();
        self.shared.set_phase(Phase::Draining);
        report.shards_not_drained =
            self.wait_for(n, timeout, |e| matches!(e, ShardEvent::Drained(_)));
        self.shared.set_phase(Phase::Deactivating);
        report.shards_not_deactivated =
            self.wait_for(n, timeout, |e| matches!(e, ShardEvent::Deactivated(_)));
        self.shared.set_phase(Phase::Stopped);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                report.shard_threads_panicked += 1;
            }
        }
        if report != ShutdownReport::default() {
            tracing::warn!(?report, "shutdown did not complete cleanly");
        }
        report
    }

    fn wait_for(&self, n: usize, timeout: Duration, want: impl Fn(&ShardEvent) -> bool) -> usize {
        let deadline = Instant::now() + timeout;
        let mut got = 0;
        while got < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if want(&e) => {
                    if let ShardEvent::Drained(s) | ShardEvent::Deactivated(s) = e {
                        tracing::debug!(shard = s, "shard reached the shutdown step");
                    }
                    got += 1;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        n - got
    }
}

/// The start-up exchange with the shard threads (see [`Engine::start`]).
struct Startup<'a> {
    events: &'a mpsc::Receiver<ShardEvent>,
    threads: Vec<JoinHandle<()>>,
    producer_txs: Vec<mpsc::Sender<Vec<Option<Producer<CrossBox>>>>>,
}

impl Startup<'_> {
    /// Two rounds: each shard builds its inbound rings (first touch by the consumer) and sends
    /// the producer ends, which go to their sending shards; then each shard reports that it
    /// runs. Every shard thread reports a failure, or at least its exit (a drop guard), so this
    /// never waits for a shard that is gone: the first failure ends the start.
    fn exchange(&mut self, n: usize) -> Result<Vec<ShardInfo>, StartError> {
        let mut outgoing: Vec<Vec<Option<Producer<CrossBox>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut ready = 0;
        while ready < n {
            match self.next_event()? {
                ShardEvent::Ready(consumer_shard, producers) => {
                    // producers[j] is the producer for ring j -> consumer_shard (skipping self).
                    let mut it = producers.into_iter();
                    for (from, out) in outgoing.iter_mut().enumerate() {
                        if from != usize::from(consumer_shard) {
                            out[usize::from(consumer_shard)] =
                                Some(it.next().expect("one producer per other shard"));
                        }
                    }
                    ready += 1;
                }
                ShardEvent::Started(_) => unreachable!("a shard starts after the exchange"),
                _ => {}
            }
        }
        for (shard, (tx, out)) in self.producer_txs.drain(..).zip(outgoing).enumerate() {
            if tx.send(out).is_err() {
                return Err(StartError::ShardExited {
                    shard: shard as ShardId,
                });
            }
        }
        let mut info: Vec<Option<ShardInfo>> = (0..n).map(|_| None).collect();
        let mut started = 0;
        while started < n {
            if let ShardEvent::Started(i) = self.next_event()? {
                let slot = &mut info[usize::from(i.shard)];
                assert!(slot.is_none(), "a shard starts once");
                *slot = Some(i);
                started += 1;
            }
        }
        Ok(info
            .into_iter()
            .map(|i| i.expect("every shard reported"))
            .collect())
    }

    /// The next event, or the start-up error a failure or an exit stands for.
    fn next_event(&self) -> Result<ShardEvent, StartError> {
        match self.events.recv() {
            Ok(ShardEvent::LogFailed(shard, source)) => Err(StartError::Log { shard, source }),
            Ok(ShardEvent::Failed(shard, cause)) => Err(cause.into_error(shard)),
            Ok(ShardEvent::Exited(shard)) => Err(StartError::ShardExited { shard }),
            Ok(e) => Ok(e),
            // Every thread exited (each sends `Exited` first, so this is not reached in
            // practice).
            Err(mpsc::RecvError) => Err(StartError::ShardExited { shard: 0 }),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// Why [`Engine::stats`] returned no snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    /// A shard did not answer in time: its thread is blocked (a handler that blocks instead of
    /// awaiting) or has stopped.
    #[error("shard {shard} did not report its counters within {waited:?}")]
    NoAnswer {
        /// The shard.
        shard: ShardId,
        /// How long the call waited.
        waited: Duration,
    },
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

/// A `Send + Clone` handle to a node's shards, usable from any thread (from [`Engine::handle`]
/// or [`crate::Context::engine`]): runs work on a chosen shard, where that shard's actors and
/// log live.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) shared: Arc<NodeShared>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EngineHandle({} shards)", self.shared.shard_count())
    }
}

impl EngineHandle {
    /// Number of shards.
    pub fn shard_count(&self) -> u16 {
        self.shared.shard_count()
    }

    /// True until the node starts shutting down (background tasks stop when it turns false).
    pub fn is_running(&self) -> bool {
        self.shared.phase() == Phase::Running
    }

    /// The shard of this node that owns `id` (the placement function).
    pub fn shard_of(&self, id: &quark_placement::ActorId) -> ShardId {
        quark_placement::shard_for(id, self.shared.shard_count())
    }

    /// A reference to actor `(A, key)`.
    pub fn actor_ref<A: Actor>(&self, key: impl Into<ActorKey>) -> ActorRef<A> {
        ActorRef::new(self.shared.clone(), key.into())
    }

    /// Runs `make()` on shard `shard` and spawns the future it returns there; the returned
    /// handle resolves with its output, or a [`JoinError`](crate::JoinError) if it panicked
    /// (`make` or the future) or the shard stopped first. `make` runs on
    /// the shard's thread, so the future need not be `Send` (it may use [`current_shard_log`]).
    pub fn spawn_on<F, Fut>(&self, shard: ShardId, make: F) -> SpawnHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.shared.inject(
            shard,
            Box::new(RunMsg(Box::new(move |core| {
                core.exec.spawn(crate::executor::run_caught(make, tx));
            }))),
        );
        SpawnHandle::new(shard, rx)
    }
}

/// The durable log of the shard the calling thread runs, if it is a shard thread of a node
/// with a log (for code spawned with [`EngineHandle::spawn_on`]).
pub fn current_shard_log() -> Option<crate::ShardLog> {
    CURRENT.with(|c| c.get().and_then(|core| core.log.clone()))
}

/// Stops the shards of a node whose start failed, and waits for them.
fn self_stop(shared: &Arc<NodeShared>, threads: Vec<JoinHandle<()>>) {
    shared.set_phase(Phase::Stopped);
    for t in threads {
        let _ = t.join();
    }
}

/// Sends [`ShardEvent::Exited`] when a shard thread ends, however it ends (a panic too), so
/// that the start-up exchange never waits for a thread that is gone.
struct ExitNotice {
    shard: ShardId,
    events: mpsc::Sender<ShardEvent>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.events.send(ShardEvent::Exited(self.shard));
    }
}

fn pin_shard(id: ShardId, core_id: usize, pin: bool) -> Pinning {
    if !pin {
        return Pinning::Off;
    }
    match pin_current_thread(core_id) {
        Ok(()) => Pinning::Pinned,
        Err(e) => {
            tracing::warn!(shard = id, core = core_id, error = %crate::ErrorChain(&e), "could not pin the shard thread; it runs unpinned");
            let os_error = match &e {
                crate::affinity::PinError::Refused { source, .. } => source.raw_os_error(),
                _ => None,
            };
            Pinning::Failed { os_error }
        }
    }
}

fn shard_main(
    id: ShardId,
    core_id: usize,
    shared: Arc<NodeShared>,
    bell_rx: std::os::unix::net::UnixStream,
    events: mpsc::Sender<ShardEvent>,
    producers_rx: mpsc::Receiver<Vec<Option<Producer<CrossBox>>>>,
) {
    let _exit = ExitNotice {
        shard: id,
        events: events.clone(),
    };
    let n = shared.shards.len();
    let fault = shared
        .config
        .start_fault
        .filter(|f| f.shard == id)
        .map(|f| f.step);
    let fail = |cause: StartFailure| {
        let _ = events.send(ShardEvent::Failed(id, cause));
    };
    let pinning = pin_shard(id, core_id, shared.config.pin_threads);
    let running_on = current_cpu();
    let built = if fault == Some(StartStep::Runtime) {
        Err(std::io::Error::other(
            "injected runtime failure (test hook)",
        ))
    } else {
        crate::rt::build_runtime(
            shared.config.uring_entries,
            shared.config.force_legacy_driver,
        )
    };
    let mut rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot build the shard's runtime");
            return fail(StartFailure::Runtime(e));
        }
    };
    let driver = if crate::rt::is_uring(&rt) {
        IoDriver::IoUring
    } else {
        IoDriver::Epoll
    };
    tracing::info!(
        shard = id,
        core = core_id,
        numa_node = ?numa_node_of(core_id),
        io_uring = crate::rt::is_uring(&rt),
        "shard started"
    );
    // The doorbell is registered before the shard reports ready: a shard that could not be
    // woken would look started and never take a message.
    let bell = rt.block_on(async {
        if fault == Some(StartStep::Doorbell) {
            return Err(std::io::Error::other(
                "injected doorbell failure (test hook)",
            ));
        }
        BellReceiver::new(bell_rx)
    });
    let bell = match bell {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot register the doorbell");
            return fail(StartFailure::Doorbell(e));
        }
    };
    // The durable log: recovered before the shard takes any message.
    let log = match &shared.config.log {
        None => None,
        Some(template) => {
            let mut config = template.clone();
            config.dir = template.dir.join(format!("shard-{id}"));
            config.shard_id = u32::from(id);
            match rt.block_on(crate::rt::log_io::open_log(config)) {
                Ok((log, report)) => {
                    tracing::info!(
                        shard = id,
                        segments = report.segments,
                        batches = report.batches,
                        records = report.records,
                        bytes_read = report.bytes_read,
                        truncated_tails = report.truncated.len(),
                        quarantined = report.quarantined.len(),
                        "log recovered"
                    );
                    Some(Rc::new(log))
                }
                Err(e) => {
                    tracing::error!(shard = id, error = %e, "cannot open the shard's log");
                    let _ = events.send(ShardEvent::LogFailed(id, e));
                    return;
                }
            }
        }
    };
    // Shard 0 accepts the node's incoming connections.
    let listener = match shared.config.net.as_ref().and_then(|n| n.listener.as_ref()) {
        Some(l) if id == 0 => match l.try_clone() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(shard = id, error = %e, "cannot take the listening socket");
                return fail(StartFailure::Listener(e));
            }
        },
        _ => None,
    };
    // Inbound rings are allocated here, after pinning: first touch by the consumer.
    let cap = shared.config.ring_capacity;
    let mut consumers: Vec<Consumer<CrossBox>> = Vec::with_capacity(n.saturating_sub(1));
    let mut producers = Vec::with_capacity(n.saturating_sub(1));
    for from in 0..n {
        if from != usize::from(id) {
            let (p, c) = ring::<CrossBox>(cap);
            producers.push(p);
            consumers.push(c);
        }
    }
    if events.send(ShardEvent::Ready(id, producers)).is_err() {
        return;
    }
    // A closed channel: another shard failed to start; this one exits.
    let Ok(outgoing) = producers_rx.recv() else {
        return;
    };
    if fault == Some(StartStep::PanicAfterReady) {
        panic!("shard {id}: injected panic after the ready exchange (test hook)");
    }
    let outboxes = outgoing
        .into_iter()
        .map(|p| p.map(|p| RefCell::new(Outbox::new(p))))
        .collect();
    let core = Rc::new(ShardCore::new(id, shared.clone(), outboxes, consumers, log));
    CURRENT.with(|c| {
        let _ = c.set(core.clone());
    });
    let info = ShardInfo {
        shard: id,
        core: core_id,
        running_on,
        pinning,
        driver,
        idle_spin: shared.config.idle_spin,
    };
    rt.block_on(async move {
        crate::net::start(&core, listener);
        if events.send(ShardEvent::Started(info)).is_err() {
            return;
        }
        let pump = crate::rt::spawn_joined(crate::core::pump(core, bell, events));
        pump.await;
    });
}
