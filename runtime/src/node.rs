//! [`Node`]: one Quark process's actor runtime, built from a [`NodeConfig`] and the registered
//! actor types.

use std::future::Future;

use quark_shard::{
    Actor, ActorKey, ActorRef, ActorType, Engine, EngineBuilder, EngineConfig, ShardId,
    ShardStatsSnapshot, ShutdownReport, SpawnHandle, StartError,
};

use crate::config::{ActorTypeConfig, ConfigError, NodeConfig};
use crate::journal::{
    journaled, projection_type, start_feeders, start_retention_sweeps, EventSourced, Journal,
    JournalPolicy, Projection, ProjectionConfig, ProjectionHandle,
};

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine could not start (cores, threads, io_uring).
    #[error(transparent)]
    Start(#[from] StartError),
    /// `[actors.<name>]` names a type that is not registered.
    #[error("config section [actors.{name}] names an actor type that is not registered")]
    UnknownActorType {
        /// The name in the config.
        name: String,
    },
    /// A journal key (`snapshot_every_*`, `retention_age_ms`) is set for a type that is not
    /// registered as journaled.
    #[error("config section [actors.{name}] sets journal keys, but {name:?} is not registered with register_journaled")]
    NotJournaled {
        /// The type name.
        name: String,
    },
    /// The node has no cluster secret and its listen address is not loopback.
    #[error(transparent)]
    Listen(#[from] quark_net::ListenError),
    /// The cluster listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `max_local_workers` is set for a type that is not a stateless worker.
    #[error("config key actors.{name}.max_local_workers is set, but {name:?} is not registered as a stateless worker")]
    NotStateless {
        /// The type name.
        name: String,
    },
}

type Registration = Box<dyn FnOnce(EngineBuilder, &NodeConfig) -> Result<EngineBuilder, NodeError>>;

/// Work to start once the engine runs (projection feeders).
type AfterStart = Box<dyn FnOnce(&quark_shard::EngineHandle, &NodeConfig)>;

/// Builds a [`Node`]: configuration (from a file or in code) and actor types.
pub struct NodeBuilder {
    config: NodeConfig,
    registrations: Vec<(&'static str, Registration)>,
    after_start: Vec<AfterStart>,
    wire: Vec<WireRegistration>,
    jobs: crate::jobs::JobsSetup,
}

type WireRegistration = Box<dyn FnOnce(EngineBuilder) -> EngineBuilder>;

impl NodeBuilder {
    /// Uses `config` (replacing what was set before).
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Reads the configuration from a TOML file (see `docs/CONFIG.md`).
    pub fn config_file(self, path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        Ok(self.config(NodeConfig::from_file(path)?))
    }

    /// Changes engine settings in code (applied after the file, so code wins).
    pub fn engine(mut self, f: impl FnOnce(&mut EngineConfig)) -> Self {
        f(&mut self.config.engine);
        self
    }

    /// Registers actor type `A`. Settings in `[actors.<A::TYPE_NAME>]` override the ones given
    /// here.
    pub fn register<A: Actor>(self, spec: ActorType<A>) -> Self {
        self.register_spec(move |_| spec, false)
    }

    /// Registers event-sourced actor type `A` (see [`crate::journal`]): its activations are
    /// loaded from the journal. `snapshot_every_events`, `snapshot_every_bytes` and
    /// `retention_age_ms` in `[actors.<A::TYPE_NAME>]` override `policy`. With a retention age,
    /// each shard also runs a retention sweep (every quarter of the age, between 100 ms and
    /// 15 min) that applies it to actors that are not active.
    pub fn register_journaled<A: EventSourced>(mut self, policy: JournalPolicy) -> Self {
        fn merged(policy: JournalPolicy, t: Option<&ActorTypeConfig>) -> JournalPolicy {
            let mut policy = policy;
            if let Some(t) = t {
                policy.snapshot_every_events =
                    t.snapshot_every_events.or(policy.snapshot_every_events);
                policy.snapshot_every_bytes =
                    t.snapshot_every_bytes.or(policy.snapshot_every_bytes);
                policy.retention_age = t.retention_age.or(policy.retention_age);
            }
            policy
        }
        self.after_start.push(Box::new(move |engine, config| {
            let policy = merged(policy, config.actors.get(A::TYPE_NAME));
            if let Some(age) = policy.retention_age {
                start_retention_sweeps::<A>(engine, age);
            }
        }));
        self.register_spec(move |t| journaled::<A>(merged(policy, t)), true)
    }

    /// Registers projection `P` (see [`crate::journal::Projection`]): its actor, and a feeder
    /// per shard started with the node. Needs a log (`[log]`).
    pub fn register_projection<P: Projection>(mut self, config: ProjectionConfig) -> Self {
        self = self.register_spec(|_| projection_type::<P>(), false);
        self.after_start.push(Box::new(move |engine, _| {
            start_feeders::<P>(engine, config)
        }));
        self
    }

    fn register_spec<A: Actor>(
        mut self,
        make: impl FnOnce(Option<&ActorTypeConfig>) -> ActorType<A> + 'static,
        journaled: bool,
    ) -> Self {
        let name = A::TYPE_NAME;
        self.registrations.push((
            name,
            Box::new(move |builder, config| {
                let t = config.actors.get(name);
                let mut spec = make(t);
                if let Some(t) = t {
                    if t.has_journal_keys() && !journaled {
                        return Err(NodeError::NotJournaled {
                            name: name.to_owned(),
                        });
                    }
                    if let Some(idle) = t.idle_timeout {
                        spec = spec.idle_timeout(idle);
                    }
                    if let Some(workers) = t.max_local_workers {
                        if !spec.is_stateless() {
                            return Err(NodeError::NotStateless {
                                name: name.to_owned(),
                            });
                        }
                        spec = spec.stateless(workers);
                    }
                }
                Ok(builder.register(spec))
            }),
        ));
        self
    }

    /// Lets actors of type `A` on this node receive `M` from other nodes and from clients, and
    /// lets this node send `M` to actors of other nodes. `M` and its reply travel as rkyv
    /// archives under `M::WIRE_NAME` (see `docs/CLUSTER.md`).
    pub fn remote<A, M>(mut self) -> Self
    where
        A: quark_shard::Handler<M>,
        M: quark_shard::Message + quark_net::WireOwned,
        M::Reply: quark_net::WireOwned,
    {
        self.wire.push(Box::new(|b| b.remote::<A, M>()));
        self
    }

    /// Registers job type `J` with its handler (see [`crate::jobs`]). Jobs run when the node
    /// has a log (`[log]`); each shard recovers its jobs before `start` returns.
    pub fn register_job<J, F, Fut>(mut self, config: crate::jobs::JobTypeConfig, handler: F) -> Self
    where
        J: crate::jobs::Job,
        F: Fn(J, crate::jobs::JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), crate::jobs::JobFailure>> + 'static,
    {
        self.jobs.register::<J, F, Fut>(config, handler);
        self
    }

    /// Node-wide job settings (clock, aging, limits; see [`crate::jobs::JobsConfig`]).
    pub fn jobs_config(mut self, config: crate::jobs::JobsConfig) -> Self {
        self.jobs.config(config);
        self
    }

    /// Starts the node's shards; returns when every shard is ready (and, in a cluster, listens
    /// on its cluster address).
    pub fn start(mut self) -> Result<Node, NodeError> {
        if let Some(c) = &mut self.config.cluster {
            let mode = quark_net::check_listen_addr(c.listen, c.net.secret.as_ref())?;
            let l = std::net::TcpListener::bind(c.listen).map_err(|source| NodeError::Bind {
                addr: c.listen,
                source,
            })?;
            let addr = l.local_addr().unwrap_or(c.listen);
            if mode == quark_net::ListenMode::LoopbackOnly {
                tracing::warn!(%addr, "{}", quark_net::ListenMode::NO_SECRET_NOTICE);
            }
            c.net.listener = Some(std::sync::Arc::new(l));
            self.config.engine.net = Some(c.net.clone());
        }
        for name in self.config.actors.keys() {
            if !self.registrations.iter().any(|(n, _)| n == name) {
                return Err(NodeError::UnknownActorType { name: name.clone() });
            }
        }
        let mut builder = EngineBuilder::new(self.config.engine.clone());
        for (_, register) in self.registrations {
            builder = register(builder, &self.config)?;
        }
        for wire in self.wire {
            builder = wire(builder);
        }
        let engine = builder.start()?;
        let handle = engine.handle();
        for start in self.after_start {
            start(&handle, &self.config);
        }
        let jobs = self.jobs.start(&handle, self.config.engine.log.is_some());
        Ok(Node {
            engine,
            config: self.config,
            jobs,
        })
    }
}

/// A running Quark node: its shard threads and actor types.
///
/// ```
/// use quark::{Actor, ActorType, Context, Handler, Message, Node};
/// struct Greeter;
/// impl Actor for Greeter { const TYPE_NAME: &'static str = "greeter"; }
/// struct Hello(String);
/// impl Message for Hello { type Reply = String; }
/// impl Handler<Hello> for Greeter {
///     async fn handle(&mut self, m: Hello, ctx: &Context<Self>) -> String {
///         format!("hello {} from {}", m.0, ctx.id())
///     }
/// }
/// let node = Node::builder()
///     .engine(|e| e.shards = quark::ShardSpec::Count(2))
///     .register(ActorType::new(|_| Greeter))
///     .start()
///     .unwrap();
/// let g = node.actor_ref::<Greeter>("ann");
/// assert_eq!(quark::block_on(g.ask(Hello("bob".into()))).unwrap(), "hello bob from greeter/\"ann\"");
/// node.shutdown();
/// ```
pub struct Node {
    engine: Engine,
    config: NodeConfig,
    jobs: crate::jobs::Jobs,
}

impl Node {
    /// A builder with the default configuration.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            config: NodeConfig::default(),
            registrations: Vec::new(),
            after_start: Vec::new(),
            wire: Vec::new(),
            jobs: Default::default(),
        }
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u16 {
        self.engine.shard_count()
    }

    /// The core each shard is pinned to.
    pub fn cores(&self) -> &[usize] {
        self.engine.cores()
    }

    /// A reference to actor `(A, key)`.
    pub fn actor_ref<A: Actor>(&self, key: impl Into<ActorKey>) -> ActorRef<A> {
        self.engine.actor_ref(key)
    }

    /// Runs `make()` on `shard` and spawns its future there (see [`Engine::spawn_on`]).
    pub fn spawn_on<F, Fut>(&self, shard: ShardId, make: F) -> SpawnHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        self.engine.spawn_on(shard, make)
    }

    /// The journals of this node's event-sourced actors (reads, time travel, external
    /// appends, erasure).
    pub fn journal(&self) -> Journal {
        Journal::new(self.engine.handle())
    }

    /// The handle of projection `P` (registered with [`NodeBuilder::register_projection`]).
    pub fn projection<P: Projection>(&self) -> ProjectionHandle<P> {
        ProjectionHandle::new(self.engine.handle())
    }

    /// This node's durable jobs (see [`crate::jobs`]).
    pub fn jobs(&self) -> crate::jobs::Jobs {
        self.jobs.clone()
    }

    /// A `Send + Clone` handle to this node's shards.
    pub fn handle(&self) -> quark_shard::EngineHandle {
        self.engine.handle()
    }

    /// This node's id in its cluster (`None`: standalone).
    pub fn node_id(&self) -> Option<u64> {
        self.engine.node_id()
    }

    /// The address the node accepts cluster connections on (`None`: standalone).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.engine.listen_addr()
    }

    /// Every shard's counters.
    pub fn stats(&self) -> Vec<ShardStatsSnapshot> {
        self.engine.stats()
    }

    /// Drains and stops the node (see [`Engine::shutdown`]).
    pub fn shutdown(self) -> ShutdownReport {
        self.engine.shutdown()
    }
}
