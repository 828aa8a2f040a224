//! [`Node`]: one Quark process's actor runtime, built from a [`NodeConfig`] and the registered
//! actor types.

use std::future::Future;

use quark_shard::{
    Actor, ActorKey, ActorRef, ActorType, Engine, EngineBuilder, EngineConfig, ShardId,
    ShardStatsSnapshot, ShutdownReport, SpawnHandle, StartError,
};

use crate::config::{ConfigError, NodeConfig};

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

/// Builds a [`Node`]: configuration (from a file or in code) and actor types.
pub struct NodeBuilder {
    config: NodeConfig,
    registrations: Vec<(&'static str, Registration)>,
    wire: Vec<WireRegistration>,
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
    pub fn register<A: Actor>(mut self, spec: ActorType<A>) -> Self {
        let name = A::TYPE_NAME;
        self.registrations.push((
            name,
            Box::new(move |builder, config| {
                let mut spec = spec;
                if let Some(t) = config.actors.get(name) {
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
        Ok(Node {
            engine: builder.start()?,
            config: self.config,
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
}

impl Node {
    /// A builder with the default configuration.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            config: NodeConfig::default(),
            registrations: Vec::new(),
            wire: Vec::new(),
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
