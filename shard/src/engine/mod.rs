//! The engine of one node: its shard threads, their rings, start-up and shutdown.
//!
//! - `config`: the settings ([`EngineConfig`], [`ShardSpec`], the start-up test hook);
//! - `info`: what the engine reports (shard info, counters, the shutdown report);
//! - `shared`: the state every shard thread and handle share, and the shard thread-local;
//! - `events`: what shard threads report to the engine;
//! - `builder`: [`EngineBuilder`];
//! - `start`: [`Engine`]'s start-up (validation, shared state, threads, the ring exchange);
//! - `shard_thread`: the body of a shard thread up to its pump;
//! - `handle`: [`EngineHandle`];
//! - this file: [`Engine`] itself (queries, stats, shutdown) and its errors.

use std::future::Future;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quark_placement::{ActorKey, ShardId};

use crate::actor::Actor;
use crate::actor_ref::ActorRef;
use crate::envelope::CrossMsg;
use crate::scheduler::SpawnHandle;

mod builder;
mod config;
pub(crate) mod events;
mod handle;
mod info;
mod shard_thread;
pub(crate) mod shared;
mod start;

pub use builder::EngineBuilder;
pub use config::{EngineConfig, ShardSpec, StartFault, StartStep};
pub use handle::EngineHandle;
pub use info::{
    ActorCursor, ActorPage, ActorQuery, ActorRow, AskLatency, CursorError, IoDriver, MessageCounts,
    Pinning, ShardInfo, ShardStatsSnapshot, ShutdownReport, TypeStateBytes,
    ACTOR_QUERY_LIMIT_DEFAULT, ACTOR_QUERY_LIMIT_MAX,
};
pub use shared::current_shard_log;

use events::ShardEvent;
use shared::{NodeShared, Phase};

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
    /// A shard's thread or doorbell (`eventfd`) could not be created.
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

impl Engine {
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

    /// The node's view of the cluster's members now: each member's state (up, draining, left)
    /// and application version as its announcements and handshakes told (`None`: standalone).
    /// See docs/MIGRATION.md, "Rolling upgrades".
    pub fn members(&self) -> Option<quark_placement::LiveMembers> {
        self.shared.net.as_ref().map(|n| n.view.now())
    }

    /// This node's application version (`[node] app_version`; empty when not set).
    pub fn app_version(&self) -> &str {
        &self.shared.config.app_version
    }

    /// The address the node accepts cluster connections on, if it listens.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        let l = self.shared.config.net.as_ref()?.listener.as_ref()?;
        l.local_addr().ok()
    }

    /// Moves `actor`'s activation live to shard `to` of this node and waits for the outcome
    /// (at most about `migration_timeout`); see [`ActorRef::migrate`] and docs/MIGRATION.md.
    /// Blocks the calling thread: never call it on a shard thread (use
    /// `ActorRef::migrate(..).await` there).
    pub fn migrate(
        &self,
        actor: &quark_placement::ActorId,
        to: ShardId,
    ) -> Result<crate::Moved, crate::MigrateError> {
        crate::migrate::migrate_blocking(&self.shared, actor, to)
    }

    /// Moves `actor` (homed on this node) to node `to_node` of the cluster, live, its state
    /// as bytes ([`crate::ActorType::migratable`]); `to_node` may be this node (bring it
    /// back). Blocks until the move ended; see docs/MIGRATION.md, "Moves between nodes".
    pub fn migrate_to_node(
        &self,
        actor: &quark_placement::ActorId,
        to_node: quark_placement::NodeId,
    ) -> Result<crate::Moved, crate::MigrateError> {
        crate::migrate::migrate_node_blocking(&self.shared, actor, to_node)
    }

    /// The configured `shutdown_timeout`.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shared.config.shutdown_timeout
    }

    /// Drains this node to the other nodes of the cluster (docs/MIGRATION.md, "Drain"):
    /// from now on new activations of `migratable` actors homed here are placed on the peers,
    /// and the active ones move there (the busiest first), for at most `timeout`. What could
    /// not move stays, to be deactivated by [`Engine::shutdown`]. Blocks; never call it on a
    /// shard thread.
    pub fn drain(&self, timeout: Duration) -> crate::DrainReport {
        let mut rows = Vec::new();
        let mut q = ActorQuery {
            limit: ACTOR_QUERY_LIMIT_MAX,
            ..ActorQuery::default()
        };
        while let Ok(page) = self.actors(&q) {
            rows.extend(page.rows);
            match page.next {
                Some(next) => q.after = Some(next),
                None => break,
            }
        }
        crate::migrate::drain_blocking(&self.shared, rows, timeout)
    }

    /// The registered name of the actor type called `name`, if one is (for callers that read
    /// type names from outside, to build an [`quark_placement::ActorId`]).
    pub fn registered_type(&self, name: &str) -> Option<&'static str> {
        self.shared
            .types
            .iter()
            .map(|t| t.name())
            .find(|n| *n == name)
    }

    /// Where `actor` lives on this node (asks its home shard; blocks the calling thread).
    pub fn placement(
        &self,
        actor: &quark_placement::ActorId,
    ) -> Result<crate::Placement, crate::MigrateError> {
        crate::migrate::placement_blocking(&self.shared, actor)
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
            let msg: CrossMsg = crate::envelope::CrossMsg::run_on(move |core| {
                let _ = tx.send(core.stats_snapshot());
            });
            // Never waits: a full injection queue overflows (crate::admission).
            self.shared.inject(s, msg);
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

    /// Lists live activations that match `q`, in `(shard, actor type, key)` order, at most
    /// `q.limit` rows; [`ActorPage::next`] continues the listing (see [`ActorCursor`] for what
    /// paging guarantees while activations come and go).
    ///
    /// The shards are asked one after another from the cursor's shard on, each walking its
    /// actor tables on its own thread (between turns: a query of a shard with n activations
    /// costs that shard O(n log limit) time, and no work at all when nobody queries), until
    /// the page is full. Each shard has one second to answer.
    ///
    /// ```no_run
    /// # fn f(engine: &quark_shard::Engine) -> Result<(), quark_shard::ActorQueryError> {
    /// use quark_shard::ActorQuery;
    /// let mut q = ActorQuery { actor_type: Some("cart".into()), ..ActorQuery::default() };
    /// loop {
    ///     let page = engine.actors(&q)?;
    ///     for row in &page.rows {
    ///         println!("{} {} {} {:?}", row.shard, row.actor_type, row.key, row.idle);
    ///     }
    ///     match page.next {
    ///         Some(next) => q.after = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn actors(&self, q: &ActorQuery) -> Result<ActorPage, ActorQueryError> {
        let shards = self.shard_count();
        if q.limit == 0 || q.limit > ACTOR_QUERY_LIMIT_MAX {
            return Err(ActorQueryError::Limit {
                limit: q.limit,
                max: ACTOR_QUERY_LIMIT_MAX,
            });
        }
        if let Some(shard) = q.shard.filter(|s| *s >= shards) {
            return Err(ActorQueryError::UnknownShard { shard, shards });
        }
        if let Some(name) = &q.actor_type {
            let known: Vec<&'static str> = self.shared.types.iter().map(|t| t.name()).collect();
            if !known.contains(&name.as_str()) {
                return Err(ActorQueryError::UnknownType {
                    name: name.clone(),
                    known,
                });
            }
        }
        let first = q
            .after
            .as_ref()
            .map_or(0, |c| c.shard)
            .max(q.shard.unwrap_or(0));
        let last = q.shard.unwrap_or(shards.saturating_sub(1));
        let wait = Duration::from_secs(1);
        let mut rows: Vec<ActorRow> = Vec::new();
        // One row more than the page: it tells whether there is a next page.
        for s in first..=last.min(shards.saturating_sub(1)) {
            let want = q.limit + 1 - rows.len();
            let (tx, rx) = mpsc::channel();
            let shard_q = q.clone();
            let msg = CrossMsg::run_on(move |core| {
                let _ = tx.send(core.actor_rows(&shard_q, want));
            });
            // Never waits: a full injection queue overflows (crate::admission).
            self.shared.inject(s, msg);
            let got = rx
                .recv_timeout(wait)
                .map_err(|_| ActorQueryError::NoAnswer {
                    shard: s,
                    waited: wait,
                })?;
            debug_assert!(
                got.len() <= want,
                "a shard returns at most the rows asked for"
            );
            rows.extend(got);
            if rows.len() > q.limit {
                break;
            }
        }
        let next = if rows.len() > q.limit {
            rows.truncate(q.limit);
            rows.last().map(ActorRow::cursor)
        } else {
            None
        };
        Ok(ActorPage { rows, next })
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

/// Why [`Engine::actors`] returned no page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActorQueryError {
    /// The limit is 0 or above [`ACTOR_QUERY_LIMIT_MAX`].
    #[error("actor query limit {limit} is out of range (1 ..= {max})")]
    Limit {
        /// The limit asked for.
        limit: usize,
        /// The largest limit allowed.
        max: usize,
    },
    /// The shard filter names a shard the node does not have.
    #[error("shard {shard} does not exist (the node has {shards} shards)")]
    UnknownShard {
        /// The shard asked for.
        shard: ShardId,
        /// The node's shard count.
        shards: u16,
    },
    /// The type filter names a type that is not registered.
    #[error("actor type {name:?} is not registered (registered: {known:?})")]
    UnknownType {
        /// The name asked for.
        name: String,
        /// The registered type names.
        known: Vec<&'static str>,
    },
    /// A shard did not answer in time (its thread is blocked or has stopped).
    #[error("shard {shard} did not answer the actor query within {waited:?}")]
    NoAnswer {
        /// The shard.
        shard: ShardId,
        /// How long the query waited for it.
        waited: Duration,
    },
}
