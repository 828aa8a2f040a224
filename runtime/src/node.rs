//! [`Node`]: one Quark process's actor runtime, built from a [`NodeConfig`] and the registered
//! actor types.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use quark_shard::{
    Actor, ActorKey, ActorRef, ActorType, Engine, EngineBuilder, EngineConfig, ShardId,
    ShardStatsSnapshot, ShutdownReport, SpawnHandle, StartError,
};

use crate::admin::{AdminError, AdminServer, EngineSlot, NodeInfo};
use crate::config::{ActorTypeConfig, ConfigError, NodeConfig};
use crate::journal::{
    journaled, projection_type, start_feeders, start_retention_sweeps, EventSourced, Journal,
    JournalPolicy, Projection, ProjectionConfig, ProjectionHandle,
};

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The etcd membership (`[cluster.membership] provider = "etcd"`) could not register the
    /// node (etcd must be reachable when a node starts).
    #[cfg(feature = "etcd")]
    #[error("cannot join the cluster through etcd")]
    Etcd(#[from] crate::etcd::EtcdError),
    /// The memory monitor's thread (`[memory]`) could not be started.
    #[error("cannot start the memory monitor thread")]
    MemoryMonitor(#[source] std::io::Error),
    /// The engine could not start (cores, threads, io_uring).
    #[error(transparent)]
    Start(#[from] StartError),
    /// `[actors.<name>]` names a type that is not registered.
    #[error("{}config section [actors.{name}] names an actor type that is not registered (registered types: {})", in_file(file), names(registered))]
    UnknownActorType {
        /// The name in the config.
        name: String,
        /// The config file (`None`: a configuration built in code).
        file: Option<PathBuf>,
        /// The registered type names.
        registered: Vec<&'static str>,
    },
    /// A journal key (`snapshot_every_*`, `retention_age_ms`) is set for a type that is not
    /// registered as journaled.
    #[error("{}config section [actors.{name}] sets journal keys, but {name:?} is not registered with register_journaled", in_file(file))]
    NotJournaled {
        /// The type name.
        name: String,
        /// The config file (`None`: a configuration built in code).
        file: Option<PathBuf>,
    },
    /// The node has no cluster secret and its listen address is not loopback.
    #[error(transparent)]
    Listen(#[from] quark_net::ListenError),
    /// The cluster listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The admin endpoint (`[admin]`) could not start: a non-loopback address without
    /// `allow_remote`, or the address could not be bound.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A shard's jobs could not be recovered from its log (see `docs/JOBS.md`).
    #[error(transparent)]
    Jobs(#[from] crate::jobs::JobsStartError),
    /// A shard's reminders could not be recovered, or their settings are out of range.
    #[error(transparent)]
    Reminders(#[from] crate::reminders::RemindersStartError),
    /// The outbox configuration was refused (see `docs/OUTBOX.md`).
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxConfigError),
    /// Locality-aware repartitioning (`[locality]`) could not start.
    #[error(transparent)]
    Locality(#[from] crate::locality::LocalityError),
    /// The OTLP trace exporter (`[observability]`) could not start.
    #[cfg(feature = "otlp")]
    #[error(transparent)]
    Otlp(#[from] crate::otlp::OtlpStartError),
    /// `max_local_workers` is set for a type that is not a stateless worker.
    #[error("{}config key actors.{name}.max_local_workers is set, but {name:?} is not registered as a stateless worker", in_file(file))]
    NotStateless {
        /// The type name.
        name: String,
        /// The config file (`None`: a configuration built in code).
        file: Option<PathBuf>,
    },
}

/// `"file: "`, or nothing for a configuration built in code.
fn in_file(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!("{}: ", f.display()))
        .unwrap_or_default()
}

fn names(registered: &[&'static str]) -> String {
    if registered.is_empty() {
        "none".to_owned()
    } else {
        registered.join(", ")
    }
}

type Registration = Box<dyn FnOnce(EngineBuilder, &NodeConfig) -> Result<EngineBuilder, NodeError>>;

/// Work to start once the engine runs (projection feeders).
type AfterStart = Box<dyn FnOnce(&quark_shard::EngineHandle, &NodeConfig)>;

/// Builds a [`Node`]: configuration (from a file or in code) and actor types.
///
/// # Which setting wins
///
/// Settings are applied at [`NodeBuilder::start`] in one order, whatever the order of the
/// calls:
///
/// 1. the defaults ([`EngineConfig::default`]);
/// 2. the configuration file: [`NodeBuilder::config_file`] or [`NodeBuilder::config`] (if
///    both are called, or one twice, the last call wins: it replaces the whole file layer);
/// 3. the code overrides: every [`NodeBuilder::engine`] closure, in the order they were
///    given (so `.engine(..)` wins over `[node]` and `[log]` even when called before
///    `.config_file(..)`).
///
/// Actor types: what a registration gives in code (an [`ActorType`]'s idle timeout and
/// stateless workers, a [`JournalPolicy`]) is the type's default, and a key set in the file's
/// `[actors.<name>]` section overrides it, so an operator can tune a type without a rebuild.
pub struct NodeBuilder {
    /// The file layer (defaults when no file was given).
    config: NodeConfig,
    /// The code overrides, applied over the file layer at start, in call order.
    engine_overrides: Vec<EngineOverride>,
    registrations: Vec<(&'static str, Registration)>,
    after_start: Vec<AfterStart>,
    wire: Vec<WireRegistration>,
    jobs: crate::jobs::JobsSetup,
    reminders: crate::reminders::Setup,
    outbox: crate::outbox::Setup,
    workflows: crate::workflow::Setup,
}

type WireRegistration = Box<dyn FnOnce(EngineBuilder) -> EngineBuilder>;

type EngineOverride = Box<dyn FnOnce(&mut EngineConfig)>;

impl NodeBuilder {
    /// Uses `config` as the file layer (replacing an earlier `config` or `config_file`). The
    /// [`NodeBuilder::engine`] overrides, given before or after, still apply over it (see
    /// "Which setting wins" above).
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Reads the file layer from a TOML file (see `docs/CONFIG.md`); same as
    /// `.config(NodeConfig::from_file(path)?)`.
    pub fn config_file(self, path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        Ok(self.config(NodeConfig::from_file(path)?))
    }

    /// Changes engine settings in code. The closure runs at [`NodeBuilder::start`], after the
    /// file layer is in place, so what it sets wins over the file whatever the order of the
    /// calls; several closures run in the order given.
    pub fn engine(mut self, f: impl FnOnce(&mut EngineConfig) + 'static) -> Self {
        self.engine_overrides.push(Box::new(f));
        self
    }

    /// Registers actor type `A`. Keys set in `[actors.<A::TYPE_NAME>]` (`idle_timeout_ms`,
    /// `max_local_workers`) override what `spec` sets.
    pub fn register<A: Actor>(self, spec: ActorType<A>) -> Self {
        self.register_spec(move |_| spec, false)
    }

    /// Registers event-sourced actor type `A` (see [`crate::journal`]): its activations are
    /// loaded from the journal. `policy` is the type's default: each of
    /// `snapshot_every_events`, `snapshot_every_bytes` and `retention_age_ms` set in
    /// `[actors.<A::TYPE_NAME>]` overrides the matching field of `policy` (the file wins; a key
    /// the file does not set keeps the policy's value). With a retention age,
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
                            file: config.file().map(PathBuf::from),
                        });
                    }
                    if let Some(idle) = t.idle_timeout {
                        spec = spec.idle_timeout(idle);
                    }
                    if let Some(workers) = t.max_local_workers {
                        if !spec.is_stateless() {
                            return Err(NodeError::NotStateless {
                                name: name.to_owned(),
                                file: config.file().map(PathBuf::from),
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
        if !self.jobs.has_types() {
            // The gateway of enqueues from other nodes and clients (`jobs::remote`).
            use crate::jobs::remote as r;
            self = self
                .register(ActorType::new(|_| r::JobGateway))
                .remote::<r::JobGateway, r::RemoteEnqueue>()
                .remote::<r::JobGateway, r::RemoteJobStatus>()
                .remote::<r::JobGateway, r::RemoteJobCancel>()
                .remote::<r::JobGateway, r::RemoteJobList>()
                .remote::<r::JobGateway, r::RemoteJobPause>();
        }
        self.jobs.register::<J, F, Fut>(config, handler);
        self
    }

    /// Node-wide job settings (clock, aging, limits; see [`crate::jobs::JobsConfig`]).
    pub fn jobs_config(mut self, config: crate::jobs::JobsConfig) -> Self {
        self.jobs.config(config);
        self
    }

    /// Lets actors of type `A` have durable reminders (see [`crate::reminders`]): their ticks
    /// are delivered after a restart too. Reminders run when the node has a log (`[log]`);
    /// each shard recovers its reminders before `start` returns.
    pub fn register_reminders<A>(mut self) -> Self
    where
        A: quark_shard::Handler<crate::reminders::ReminderTick>,
    {
        if !self.reminders.has_types() {
            // The gateway of cluster-wide listings and cancellations (`reminders::remote`).
            use crate::reminders::remote as r;
            self = self
                .register(ActorType::new(|_| r::ReminderGateway))
                .remote::<r::ReminderGateway, r::RemoteReminderList>()
                .remote::<r::ReminderGateway, r::RemoteReminderCancel>();
        }
        self.reminders.register::<A>();
        self
    }

    /// Node-wide reminder settings (see [`crate::reminders::RemindersConfig`]).
    pub fn reminders_config(mut self, config: crate::reminders::RemindersConfig) -> Self {
        self.reminders.config(config);
        self
    }

    /// Runs the outbox on this node with `config` (the defaults otherwise; see
    /// `docs/OUTBOX.md`). Start-up refuses a config whose `give_up_after` is not below its
    /// `dedupe_window`.
    pub fn outbox(mut self, config: crate::outbox::OutboxConfig) -> Self {
        self.outbox.set_config(config);
        self
    }

    /// Lets actors of type `A` receive durable message `M` through the outbox, from this node
    /// and others (register it on every node that sends or receives it).
    pub fn durable<A, M>(mut self) -> Self
    where
        A: crate::outbox::DurableHandler<M>,
        M: crate::outbox::DurableMessage,
    {
        self.outbox.add_handler::<A, M>();
        self
    }

    /// Registers `P` as the payload type of workflow event `name`, so that
    /// `Workflows::raise_event_json` (and `quark workflows raise`) can convert a JSON payload.
    pub fn register_workflow_event<P>(mut self, name: &str) -> Self
    where
        P: serde::Serialize + serde::de::DeserializeOwned + 'static,
    {
        self.workflows.add_event::<P>(name);
        self
    }

    /// Registers actor `A` as the receiver of `call_actor` calls `M` from workflows
    /// ([`crate::workflow::ActorCallHandler`]), and the workflow instances as receivers of
    /// the replies. Register it on every node that sends or receives such calls (as with
    /// [`NodeBuilder::durable`]); it enables the outbox.
    pub fn register_actor_call<A, M>(mut self) -> Self
    where
        A: crate::workflow::ActorCallHandler<M>,
        M: crate::workflow::ActorCall,
    {
        self.outbox
            .add_handler::<A, crate::workflow::WorkflowCall<M>>();
        self.outbox
            .add_handler::<crate::workflow::WorkflowInstance, crate::workflow::CallReply>();
        self
    }

    /// Registers version `version` of orchestration `name` (see [`crate::workflow`]): an
    /// `async fn(WorkflowContext, I) -> Result<O, E>`. New instances run the newest registered
    /// version; an instance finishes on the version it started with, so keep registering an
    /// old version while instances of it run. Workflows need a log (`[log]`).
    pub fn register_workflow<I, O, E, F, Fut>(mut self, name: &str, version: u32, f: F) -> Self
    where
        I: serde::Serialize + serde::de::DeserializeOwned + 'static,
        O: serde::Serialize + serde::de::DeserializeOwned + 'static,
        E: std::fmt::Display + 'static,
        F: Fn(crate::workflow::WorkflowContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + 'static,
    {
        if self.workflows.is_empty() {
            // The instances' messages from clients and other nodes (`workflow::remote`).
            use crate::workflow::remote as r;
            use crate::workflow::WorkflowInstance as W;
            self = self
                .remote::<W, r::WfStart>()
                .remote::<W, r::WfStatusQuery>()
                .remote::<W, r::WfRaise>()
                .remote::<W, r::WfStop>()
                .remote::<W, r::WfHistoryQuery>()
                .remote::<W, r::WfPurge>();
        }
        self.workflows.add_orchestration(name, version, f);
        self
    }

    /// Registers activity `name` (see [`crate::workflow`]): an
    /// `async fn(I, ActivityContext) -> Result<O, ActivityError>` that orchestrations call with
    /// `ctx.call_activity(name, &input)`. Activities run as durable jobs (type
    /// `quark.wf.activity`) unless called with `ActivityOptions::local()`.
    pub fn register_activity<I, O, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        I: serde::de::DeserializeOwned + 'static,
        O: serde::Serialize + 'static,
        F: Fn(I, crate::workflow::ActivityContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, crate::workflow::ActivityError>> + 'static,
    {
        self.workflows.add_activity(name, f);
        self
    }

    /// Registers external sink `sink` under `name` (`ctx.send_to_sink(name, msg)`); it runs
    /// on its own thread.
    pub fn sink(mut self, name: &str, sink: impl crate::outbox::Sink) -> Self {
        self.outbox.add_sink(name, sink);
        self
    }

    /// Starts the node's shards; returns when every shard is ready (and, in a cluster, listens
    /// on its cluster address).
    pub fn start(mut self) -> Result<Node, NodeError> {
        for f in self.engine_overrides.drain(..) {
            f(&mut self.config.engine);
        }
        // The admin endpoint starts first, so that it answers (not ready) during recovery.
        let slot: EngineSlot = Arc::new(Mutex::new(None));
        let admin = match &self.config.admin {
            Some(a) => Some(AdminServer::start(a, slot.clone())?),
            None => None,
        };
        if let Some(c) = &mut self.config.cluster {
            let mode =
                quark_net::check_listen(c.listen, c.net.secret.as_ref(), c.net.tls.is_some())?;
            let l = std::net::TcpListener::bind(c.listen).map_err(|source| NodeError::Bind {
                addr: c.listen,
                source,
            })?;
            let addr = l.local_addr().unwrap_or(c.listen);
            if mode == quark_net::ListenMode::LoopbackOnly {
                tracing::warn!(%addr, "{}", quark_net::ListenMode::NO_SECRET_NOTICE);
            }
            c.net.listener = Some(std::sync::Arc::new(l));
        }
        #[cfg(feature = "etcd")]
        let etcd = match (&mut self.config.cluster, self.config.engine.net.is_none()) {
            (Some(c), true) => {
                let bound = c
                    .net
                    .listener
                    .as_ref()
                    .and_then(|l| l.local_addr().ok())
                    .unwrap_or(c.listen);
                crate::etcd::start_for_node(c, &self.config.engine.app_version, bound)?
            }
            _ => None,
        };
        if let Some(c) = &self.config.cluster {
            self.config.engine.net = Some(c.net.clone());
        }
        for name in self.config.actors.keys() {
            if !self.registrations.iter().any(|(n, _)| n == name) {
                return Err(NodeError::UnknownActorType {
                    name: name.clone(),
                    file: self.config.file().map(PathBuf::from),
                    registered: self.registrations.iter().map(|(n, _)| *n).collect(),
                });
            }
        }
        // The exporter starts before the shards, which take its sink.
        #[cfg(feature = "otlp")]
        let otlp = match &self.config.observability.otlp {
            Some(c) => {
                let e = crate::otlp::OtlpExporter::start(c.clone())?;
                self.config.engine.span_sink = Some(e.sink());
                Some(e)
            }
            None => None,
        };
        #[cfg(feature = "otlp")]
        if let (Some(a), Some(o)) = (&admin, &otlp) {
            a.set_otlp(o.stats_handle());
        }
        let mut builder = EngineBuilder::new(self.config.engine.clone());
        for (_, register) in self.registrations {
            builder = register(builder, &self.config)?;
        }
        // Workflows: the instance actor type, and the job type that runs activities.
        let workflows = if self.workflows.is_empty() {
            None
        } else {
            let shared = std::mem::take(&mut self.workflows).build(self.config.workflows.clone());
            builder = builder.register(crate::workflow::instance_type(Arc::clone(&shared)));
            let jobs_shared = Arc::clone(&shared);
            self.jobs.register::<crate::workflow::ActivityJob, _, _>(
                crate::jobs::JobTypeConfig::default(),
                move |job, ctx| {
                    crate::workflow::run_activity_job(Arc::clone(&jobs_shared), job, ctx)
                },
            );
            Some(shared)
        };
        for wire in self.wire {
            builder = wire(builder);
        }
        if let Some(section) = &self.config.outbox {
            self.outbox.apply_file(section);
        }
        let (builder, outbox) = self.outbox.register(builder)?;
        let engine = builder.start()?;
        let handle = engine.handle();
        #[cfg(feature = "etcd")]
        if let Some(e) = &etcd {
            e.attach(handle.clone());
        }
        let outbox_running = outbox.is_some();
        if let Some(outbox) = outbox {
            outbox.start(&handle, engine.node_id().unwrap_or(0));
        }
        for start in self.after_start {
            start(&handle, &self.config);
        }
        let has_log = self.config.engine.log.is_some();
        // A feature that cannot recover its records is a start error: stop the shards first.
        let jobs = match self.jobs.start(&handle, has_log) {
            Ok(j) => j,
            Err(e) => {
                let _report = engine.shutdown();
                return Err(e.into());
            }
        };
        let reminders = match self.reminders.start(&handle, has_log) {
            Ok(r) => r,
            Err(e) => {
                let _report = engine.shutdown();
                return Err(e.into());
            }
        };
        let workflows = workflows.map(|w| crate::workflow::start(&w, &handle, &jobs));
        let info = NodeInfo {
            node_id: engine.node_id(),
            cluster_listen: engine.listen_addr(),
            cores: engine.cores().to_vec(),
            shards: engine.info().to_vec(),
            peers: self
                .config
                .cluster
                .as_ref()
                .map(|c| {
                    c.net
                        .membership
                        .nodes()
                        .filter(|(id, _)| Some(*id) != engine.node_id())
                        .collect()
                })
                .unwrap_or_default(),
            app_version: engine.app_version().to_owned(),
        };
        let node_id = engine.node_id().unwrap_or(0);
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(engine);
        let move_cooldown = crate::memory::MoveCooldown::new();
        if let Some(a) = &admin {
            a.set_move_cooldown(move_cooldown.clone());
        }
        let memory = match self.config.memory.as_ref().filter(|m| m.enabled) {
            Some(m) => Some(
                crate::memory::Monitor::start(
                    m.clone(),
                    slot.clone(),
                    move_cooldown.clone(),
                    info.peers.iter().map(|(id, _)| *id).collect(),
                )
                .map_err(NodeError::MemoryMonitor)?,
            ),
            None => None,
        };
        let locality = if self.config.locality.enabled {
            match crate::locality::Locality::start(
                &self.config.locality,
                slot.clone(),
                handle.clone(),
                node_id,
                move_cooldown.clone(),
                self.config.memory.clone(),
            ) {
                Ok(l) => Some(l),
                Err(e) => {
                    let engine = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(engine) = engine {
                        let _report = engine.shutdown();
                    }
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        if let Some(a) = &admin {
            a.set_memory(crate::admin::MemorySource {
                config: self.config.memory.clone(),
                monitor: memory.as_ref().map(|m| m.state_handle()),
            });
            if let Some(l) = &locality {
                a.set_locality(l.stats_reader());
            }
            a.set_ready(info.clone());
        }
        Ok(Node {
            admin,
            #[cfg(feature = "otlp")]
            otlp,
            engine: slot,
            handle,
            info,
            config: self.config,
            jobs,
            outbox_running,
            reminders,
            workflows,
            memory,
            move_cooldown,
            locality,
            #[cfg(feature = "etcd")]
            etcd,
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
/// assert_eq!(quark::block_on(g.ask(Hello("bob".into()))).unwrap(), "hello bob from greeter/ann");
/// node.shutdown();
/// ```
pub struct Node {
    /// Dropped first: the endpoint stops before the engine does.
    admin: Option<AdminServer>,
    /// The OTLP exporter (`[observability] otlp_endpoint`); stopped after the engine, so
    /// that the spans of the drain are sent.
    #[cfg(feature = "otlp")]
    otlp: Option<crate::otlp::OtlpExporter>,
    /// The engine, shared with the admin endpoint's scrapes; `Some` until shutdown.
    engine: EngineSlot,
    handle: quark_shard::EngineHandle,
    info: NodeInfo,
    config: NodeConfig,
    jobs: crate::jobs::Jobs,
    /// The outbox's dispatchers run: `shutdown` stops them (and waits for their last
    /// acknowledgements) before the engine stops.
    outbox_running: bool,
    reminders: crate::reminders::Reminders,
    /// The workflow instances (`register_workflow`); `None` when none is registered.
    workflows: Option<crate::workflow::Workflows>,
    /// The memory monitor (`[memory]`); stopped before the engine.
    memory: Option<crate::memory::Monitor>,
    move_cooldown: crate::memory::MoveCooldown,
    /// Locality-aware repartitioning (`[locality] enabled`); stopped first at shutdown.
    locality: Option<crate::locality::Locality>,
    /// The etcd membership (`[cluster.membership] provider = "etcd"`); a drain marks the node
    /// draining there and then deletes its registration; stopped after the engine.
    #[cfg(feature = "etcd")]
    etcd: Option<crate::etcd::EtcdMembership>,
}

impl Node {
    /// A builder with the default configuration.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            config: NodeConfig::default(),
            engine_overrides: Vec::new(),
            registrations: Vec::new(),
            after_start: Vec::new(),
            wire: Vec::new(),
            jobs: Default::default(),
            reminders: Default::default(),
            outbox: crate::outbox::Setup::default(),
            workflows: Default::default(),
        }
    }

    /// The configuration the node runs with (the file layer with the code overrides applied).
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u16 {
        self.handle.shard_count()
    }

    /// The core each shard is pinned to.
    pub fn cores(&self) -> &[usize] {
        &self.info.cores
    }

    /// The OTLP trace exporter's counters (`None`: no `[observability] otlp_endpoint`).
    /// Only with the `otlp` feature.
    #[cfg(feature = "otlp")]
    pub fn otlp_stats(&self) -> Option<crate::otlp::OtlpStats> {
        self.otlp.as_ref().map(crate::otlp::OtlpExporter::stats)
    }

    /// The address the admin endpoint listens on (`None`: no `[admin]` table). With port 0 in
    /// `admin.listen`, this is the port the system picked.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(|a| a.addr())
    }

    /// A reference to actor `(A, key)`.
    pub fn actor_ref<A: Actor>(&self, key: impl Into<ActorKey>) -> ActorRef<A> {
        self.handle.actor_ref(key)
    }

    /// Runs `make()` on `shard` and spawns its future there (see [`Engine::spawn_on`]).
    pub fn spawn_on<F, Fut>(&self, shard: ShardId, make: F) -> SpawnHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        self.handle.spawn_on(shard, make)
    }

    /// The journals of this node's event-sourced actors (reads, time travel, external
    /// appends, erasure).
    pub fn journal(&self) -> Journal {
        Journal::new(self.handle.clone())
    }

    /// The handle of projection `P` (registered with [`NodeBuilder::register_projection`]).
    pub fn projection<P: Projection>(&self) -> ProjectionHandle<P> {
        ProjectionHandle::new(self.handle.clone())
    }

    /// The node's workflow instances (see [`crate::workflow`]).
    ///
    /// # Panics
    /// If no orchestration was registered (`NodeBuilder::register_workflow`).
    pub fn workflows(&self) -> crate::workflow::Workflows {
        self.workflows.clone().expect(
            "Node::workflows needs an orchestration registered with NodeBuilder::register_workflow",
        )
    }

    /// This node's durable jobs (see [`crate::jobs`]).
    pub fn jobs(&self) -> crate::jobs::Jobs {
        self.jobs.clone()
    }

    /// The jobs of the whole cluster, from this node: status, cancel, list and pause on any
    /// node, by [`crate::jobs::cluster::ClusterJobId`] (see [`crate::jobs::cluster`]).
    pub fn cluster_jobs(&self) -> crate::jobs::cluster::ClusterJobs {
        let mut members: Vec<u64> = self.info.peers.iter().map(|(id, _)| *id).collect();
        members.extend(self.info.node_id);
        crate::jobs::cluster::ClusterJobs::new(self.handle.clone(), self.info.node_id, members)
    }

    /// This node's durable reminders, seen from outside an actor (see [`crate::reminders`]).
    pub fn reminders(&self) -> crate::reminders::Reminders {
        self.reminders.clone()
    }

    /// A `Send + Clone` handle to this node's shards.
    pub fn handle(&self) -> quark_shard::EngineHandle {
        self.handle.clone()
    }

    /// This node's id in its cluster (`None`: standalone).
    pub fn node_id(&self) -> Option<u64> {
        self.info.node_id
    }

    /// The address the node accepts cluster connections on (`None`: standalone).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.info.cluster_listen
    }

    /// How each shard runs (index = shard id): the core it runs on, whether pinning worked, its
    /// I/O driver (io_uring or the epoll fallback) and its effective idle spin. See
    /// [`quark_shard::ShardInfo`].
    pub fn info(&self) -> &[quark_shard::ShardInfo] {
        &self.info.shards
    }

    /// Every shard's counters.
    /// Fails naming the first shard that did not answer within one second (see
    /// [`quark_shard::Engine::stats`]). Waits while an admin scrape reads them.
    pub fn stats(&self) -> Result<Vec<ShardStatsSnapshot>, quark_shard::StatsError> {
        self.engine()
            .as_ref()
            .expect("the engine is in its slot until shutdown consumes the node")
            .stats()
    }

    /// Lists this node's live activations that match `q`, in `(shard, type, key)` order, a
    /// page at a time (see [`quark_shard::Engine::actors`] for the filters, the paging
    /// guarantee and the cost to the shards). Waits while an admin scrape reads the counters.
    ///
    /// ```no_run
    /// # fn f(node: &quark::Node) -> Result<(), quark::ActorQueryError> {
    /// let q = quark::ActorQuery { actor_type: Some("cart".into()), ..Default::default() };
    /// for row in node.actors(&q)?.rows {
    ///     println!("shard {} key {} idle {:?}", row.shard, row.key, row.idle);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn actors(
        &self,
        q: &quark_shard::ActorQuery,
    ) -> Result<quark_shard::ActorPage, quark_shard::ActorQueryError> {
        self.engine()
            .as_ref()
            .expect("the engine is in its slot until shutdown consumes the node")
            .actors(q)
    }

    /// Moves `actor`'s activation live to shard `to` of this node (see
    /// [`quark_shard::Engine::migrate`] and docs/MIGRATION.md); blocks until the move ended
    /// (at most about `[node] migration_timeout_ms`). Never call it on a shard thread
    /// (`ActorRef::migrate(..).await` there).
    pub fn migrate(
        &self,
        actor: &quark_shard::ActorId,
        to: quark_shard::ShardId,
    ) -> Result<quark_shard::Moved, quark_shard::MigrateError> {
        let moved = self
            .engine()
            .as_ref()
            .expect("the engine is in its slot until shutdown consumes the node")
            .migrate(actor, to)?;
        // In the node's move table, so the automatic movers leave it there for a while.
        self.move_cooldown.moved(actor, std::time::Instant::now());
        Ok(moved)
    }

    /// Moves `actor` (homed on this node) live to node `to_node` of the cluster, its state
    /// as bytes (the type must be registered with `ActorType::migratable`), or, for a
    /// durable-state actor, its log records (durable on `to_node` before the home records
    /// the move: docs/MIGRATION.md, "Durable actors between nodes"); see
    /// [`quark_shard::Engine::migrate_to_node`] and docs/MIGRATION.md, "Moves between nodes".
    /// Blocks until the move ended. Never call it on a shard thread.
    pub fn migrate_to_node(
        &self,
        actor: &quark_shard::ActorId,
        to_node: quark_placement::NodeId,
    ) -> Result<quark_shard::Moved, quark_shard::MigrateError> {
        let moved = self
            .engine()
            .as_ref()
            .expect("the engine is in its slot until shutdown consumes the node")
            .migrate_to_node(actor, to_node)?;
        self.move_cooldown.moved(actor, std::time::Instant::now());
        Ok(moved)
    }

    /// Where `actor` lives on this node (asks its home shard).
    pub fn placement(
        &self,
        actor: &quark_shard::ActorId,
    ) -> Result<quark_shard::Placement, quark_shard::MigrateError> {
        self.engine()
            .as_ref()
            .expect("the engine is in its slot until shutdown consumes the node")
            .placement(actor)
    }

    /// This node's live activations per actor type and shard (from [`Node::stats`]). For a
    /// cluster, add up every node's with [`crate::admin::ActorCounts::merge`] (the nodes'
    /// counts are read through their admin endpoints: [`crate::admin::fetch_actor_counts`]).
    pub fn actor_counts(&self) -> Result<crate::admin::ActorCounts, quark_shard::StatsError> {
        Ok(crate::admin::ActorCounts::from_snapshots(&self.stats()?))
    }

    /// The node's memory (docs/MEMORY.md): RSS, limit, pressure and growth; per shard the
    /// counted bytes (with `quark::CountingAlloc` as the global allocator), their level and
    /// whether new activations are refused; the largest actors, per-type sums, leak reports
    /// and the monitor's moves. Fails like [`Node::stats`].
    pub fn memory(&self) -> Result<crate::memory::MemoryReport, quark_shard::StatsError> {
        let stats = self.stats()?;
        let state = self.memory.as_ref().map(|m| m.state());
        Ok(crate::memory::report(
            self.config.memory.as_ref(),
            &stats,
            state.as_ref(),
        ))
    }

    /// The node's per-actor move cooldown, shared by the movers of the node (docs/MEMORY.md,
    /// "With locality repartitioning").
    pub fn move_cooldown(&self) -> crate::memory::MoveCooldown {
        self.move_cooldown.clone()
    }

    /// Runs one locality round now (docs/LOCALITY.md): gathers the shards' sampled
    /// actor-to-actor edges, decides, and moves actors between this node's shards. Blocks
    /// until the moves ended; never call it on a shard thread. Needs `[locality] enabled`.
    pub fn locality_round(&self) -> Result<crate::LocalityRound, crate::LocalityError> {
        self.locality
            .as_ref()
            .ok_or(crate::LocalityError::NotEnabled)?
            .round()
    }

    /// The locality repartitioner's counters (`None` when `[locality] enabled` is false).
    pub fn locality_stats(&self) -> Option<crate::LocalityStats> {
        self.locality.as_ref().map(|l| l.stats())
    }

    /// Tells the locality repartitioner that `actor` was moved by someone else (a memory
    /// rebalance, an operator): it then leaves the actor alone for its cooldown, so the two
    /// never undo each other's moves. No effect when locality is off.
    pub fn locality_note_moved(&self, actor: quark_shard::ActorId) {
        if let Some(l) = &self.locality {
            l.note_moved(actor);
        }
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Option<Engine>> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drains the node to the other nodes of its cluster before a stop (docs/MIGRATION.md,
    /// "Drain"): the admin endpoint reports `draining` (`/quark/status`) and `/readyz` answers
    /// 503 from now on; new activations of `migratable` actors homed here are placed on the
    /// peers, and the active ones move there, the busiest first, for at most half of
    /// `[node] shutdown_timeout_ms` (the stop that follows has its own). Blocks; returns what
    /// moved. Call [`Node::shutdown`] after it. On a node without peers nothing moves.
    pub fn drain(&self) -> quark_shard::DrainReport {
        if let Some(a) = &self.admin {
            a.set_draining();
        }
        #[cfg(feature = "etcd")]
        if let Some(e) = &self.etcd {
            e.set_draining();
        }
        let slot = self.engine();
        let engine = slot
            .as_ref()
            .expect("the engine is in its slot until shutdown consumes the node");
        let report = engine.drain(engine.shutdown_timeout() / 2);
        // In the node's move table, as `Node::migrate` does (an actor drained away and sent
        // back by a hand-over is not moved again by the automatic movers for a while).
        let now = std::time::Instant::now();
        for a in &report.moved_actors {
            self.move_cooldown.moved(a, now);
        }
        #[cfg(feature = "etcd")]
        if let Some(e) = &self.etcd {
            e.leave();
        }
        report
    }

    /// The etcd membership's view (`None`: static membership): the registered members, seats,
    /// the last revision seen, the fence.
    #[cfg(feature = "etcd")]
    pub fn etcd_view(&self) -> Option<crate::etcd::EtcdView> {
        self.etcd.as_ref().map(crate::etcd::EtcdMembership::view)
    }

    /// Drains and stops the node (see [`Engine::shutdown`]). The admin endpoint, if any,
    /// answers `/readyz` with 503 from the start of the drain, and is stopped and joined once
    /// the shards have stopped.
    pub fn shutdown(mut self) -> ShutdownReport {
        if let Some(a) = &self.admin {
            a.set_draining();
        }
        if let Some(m) = self.memory.take() {
            m.stop();
        }
        // Before the engine: a round under way holds the engine's slot while it moves actors.
        if let Some(l) = self.locality.take() {
            l.stop();
        }
        if self.outbox_running {
            crate::outbox::stop(&self.handle);
        }
        // Taking the engine waits for a scrape in progress (it holds the slot's lock).
        let engine = self
            .engine()
            .take()
            .expect("the engine is in its slot until shutdown consumes the node");
        let report = engine.shutdown();
        // A graceful stop deletes the registration (peers drop the node at once).
        #[cfg(feature = "etcd")]
        if let Some(e) = self.etcd.take() {
            e.stop(true);
        }
        if let Some(a) = self.admin {
            a.stop();
        }
        #[cfg(feature = "otlp")]
        if let Some(o) = self.otlp {
            o.stop();
        }
        report
    }
}
