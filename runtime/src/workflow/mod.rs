//! Durable workflows: orchestrations with deterministic replay on the per-shard log.
//!
//! An *orchestration* is an `async fn(WorkflowContext, Input) -> Result<Output, E>` registered
//! by name and version on the node builder. Each *instance* (started with an id) is an actor
//! of type `quark.wf`, placed by its id, that runs one turn at a time; its **history** is its
//! records in the owning shard's log. Every step the code takes through its
//! [`WorkflowContext`] (an activity, a timer, an event, a child orchestration, a race) is
//! recorded; after a restart the code runs again against its history and the completed steps
//! return their recorded results without running again, until it reaches the first step not
//! yet done. A replay that asks for another step than the history holds stops the instance
//! with a [`NonDeterminism`] error. The guide is `docs/WORKFLOWS.md`.
//!
//! ```no_run
//! use quark::workflow::{ActivityContext, ActivityError, WorkflowContext, StepError};
//! use quark::{block_on, Node};
//!
//! async fn greet(ctx: WorkflowContext, name: String) -> Result<String, StepError> {
//!     let greeting: String = ctx.call_activity("format", &name).await?;
//!     ctx.timer(std::time::Duration::from_secs(1)).await;
//!     Ok(greeting)
//! }
//!
//! let node = Node::builder()
//!     .config_file("quark.toml").unwrap() // needs a [log] section
//!     .register_workflow("greet", 1, greet)
//!     .register_activity("format", |name: String, _: ActivityContext| async move {
//!         Ok::<_, ActivityError>(format!("hello {name}"))
//!     })
//!     .start()
//!     .unwrap();
//! let wf = node.workflows();
//! block_on(wf.start("greet", "g-1", &"ann".to_string())).unwrap();
//! let out: String = block_on(wf.result("g-1")).unwrap();
//! ```

mod activity;
mod call;
mod context;
mod handle;
pub mod history;
mod instance;
pub mod remote;
mod replay;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::jobs::RetryPolicy;

pub use activity::{ActivityContext, ActivityError};
pub(crate) use call::CallReply;
pub use call::{ActorCall, ActorCallHandler, WorkflowCall};
pub use context::{WhenAny, WorkflowContext};
pub use handle::{ListQuery, StartOutcome, WorkflowPage, WorkflowStatus, Workflows};
pub use history::{HistoryEvent, InstanceState, StepDesc, StepKind};
pub use instance::WorkflowInstance;
pub use remote::RemoteWorkflows;
pub use replay::{parse_history_json, replay_check, ReplayError, ReplayReport};

pub(crate) use activity::{run_job as run_activity_job, ActivityJob};

/// How one activity call runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityOptions {
    /// Attempts and backoff (the jobs feature's policy). Default: 3 attempts, 100 ms doubling
    /// up to 10 s, 20 % jitter.
    pub retry: RetryPolicy,
    /// One attempt's limit. Default 5 min.
    pub timeout: Duration,
    /// Run the activity on the instance's shard (retries and timeout applied in place)
    /// instead of as a durable job. A local activity costs no job records (one `fdatasync`
    /// per step instead of about three), but its attempts are not durable: after a crash it
    /// runs again from its first attempt. Default false.
    pub local: bool,
    /// An attempt that does not call [`ActivityContext::heartbeat`] for this long (from its
    /// start, then from its last heartbeat) is timed out and retried under `retry`, long
    /// before `timeout` if that is long. As a job, the job's heartbeat timeout (its records
    /// and deadline survive a restart: docs/JOBS.md, "Heartbeats"); locally, applied in place.
    /// Default `None`: no heartbeat expected.
    pub heartbeat_timeout: Option<Duration>,
}

impl Default for ActivityOptions {
    fn default() -> Self {
        ActivityOptions {
            retry: RetryPolicy {
                max_attempts: 3,
                base_ms: 100,
                factor: 2.0,
                cap_ms: 10_000,
                jitter: 0.2,
            },
            timeout: Duration::from_secs(300),
            local: false,
            heartbeat_timeout: None,
        }
    }
}

impl ActivityOptions {
    /// The defaults, run locally (see [`ActivityOptions::local`]).
    pub fn local() -> Self {
        ActivityOptions {
            local: true,
            ..Self::default()
        }
    }

    /// With this retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// With this timeout per attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With this heartbeat timeout (see [`ActivityOptions::heartbeat_timeout`]).
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = Some(timeout);
        self
    }
}

/// Why a step of an orchestration did not give a value. Returned to the orchestration's
/// code, which may handle it (a compensation) or return it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The activity failed on its last attempt (or fatally), or timed out on it.
    #[error("activity {activity:?} failed: {error}")]
    ActivityFailed {
        /// The activity.
        activity: String,
        /// Its last error.
        error: String,
    },
    /// A `call_actor` step failed: its message could not be sent, or its reply did not
    /// decode.
    #[error("actor call {call:?} failed: {error}")]
    ActorCallFailed {
        /// The call (`<actor type>/<key>/<message name>`).
        call: String,
        /// Why.
        error: String,
    },
    /// The child orchestration did not complete.
    #[error("sub-orchestration {orchestration:?} did not complete: {error}")]
    ChildFailed {
        /// The child's orchestration name.
        orchestration: String,
        /// Why.
        error: String,
    },
    /// The event did not arrive within the timeout.
    #[error("event {event:?} did not arrive within {after_ms} ms")]
    EventTimeout {
        /// The event name.
        event: String,
        /// The timeout.
        after_ms: u64,
    },
    /// A step's input did not serialise.
    #[error("the input of step {step:?} did not serialise: {detail}")]
    Encode {
        /// The step's name.
        step: String,
        /// The serialiser's message.
        detail: String,
    },
    /// A step's output (or an event's payload) did not decode as the type asked for.
    #[error("the output of step {step:?} did not decode: {detail}")]
    Decode {
        /// The step's name.
        step: String,
        /// The decoder's message.
        detail: String,
    },
}

/// A replay that diverged from the history: the instance stops in state
/// [`InstanceState::NonDeterministic`] with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonDeterminism {
    /// The instance.
    pub instance: String,
    /// The history position (0-based step number in the run).
    pub position: u64,
    /// What the history holds there (`None`: nothing, the code asked for more steps).
    pub recorded: Option<StepDesc>,
    /// What the code asked for (`None`: the code finished before this recorded step).
    pub requested: Option<StepDesc>,
}

impl std::fmt::Display for NonDeterminism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |s: &Option<StepDesc>, none: &str| match s {
            Some(s) => s.to_string(),
            None => none.to_owned(),
        };
        write!(
            f,
            "workflow instance {:?}: non-deterministic replay at step {}: the history recorded {} \
             but the code requested {}. The orchestration's code changed in a way that alters \
             the steps of instances already running: guard the change with \
             `if ctx.is_patched(\"<change id>\") {{ new }} else {{ old }}`, or register the new \
             code as a new version (register_workflow with a higher version) so that running \
             instances finish on the version they started with",
            self.instance,
            self.position,
            show(
                &self.recorded,
                "nothing (the code asked for more steps than recorded)"
            ),
            show(&self.requested, "nothing (the code finished first)"),
        )
    }
}

impl std::error::Error for NonDeterminism {}

/// Why a workflow API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// The node has no log (`[log]` section): instances cannot be durable.
    #[error("workflow instance {instance:?}: the node has no log (configure [log] data_dir)")]
    NoLog {
        /// The instance.
        instance: String,
    },
    /// No orchestration (or version) of that name is registered.
    #[error("no orchestration {name:?}{} is registered (registered: {registered})", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownOrchestration {
        /// The name asked for.
        name: String,
        /// The version asked for, if any.
        version: Option<u32>,
        /// The registered names and versions.
        registered: String,
    },
    /// No instance with that id (never started, or purged).
    #[error("workflow instance {instance:?} does not exist")]
    NotFound {
        /// The instance.
        instance: String,
    },
    /// The operation needs a running instance.
    #[error("workflow instance {instance:?} is {} (not running)", state.name())]
    Finished {
        /// The instance.
        instance: String,
        /// Its state.
        state: InstanceState,
    },
    /// Purge needs a finished instance.
    #[error(
        "workflow instance {instance:?} is still running: cancel or terminate it before purging"
    )]
    Running {
        /// The instance.
        instance: String,
    },
    /// The instance finished without an output: `result` reports how.
    #[error("workflow instance {instance:?} ended {}: {error}", state.name())]
    Failed {
        /// The instance.
        instance: String,
        /// Its state.
        state: InstanceState,
        /// The orchestration's error, the non-determinism or limit message, or how it was
        /// stopped.
        error: String,
    },
    /// An input, payload or output did not serialise or decode.
    #[error("workflow instance {instance:?}: {what}: {detail}")]
    Codec {
        /// The instance.
        instance: String,
        /// What was being encoded or decoded.
        what: &'static str,
        /// The codec's message.
        detail: String,
    },
    /// Appending to the log failed: nothing of the operation is durable.
    #[error("workflow instance {instance:?}: appending its history failed")]
    Append {
        /// The instance.
        instance: String,
        /// The log's error.
        #[source]
        source: quark_persist::AppendError,
    },
    /// Reading the history failed.
    #[error("workflow instance {instance:?}: reading its history failed: {detail}")]
    Read {
        /// The instance.
        instance: String,
        /// The log's or the decoder's message.
        detail: String,
    },
    /// The call to the instance's actor failed (shutdown, activation failure).
    #[error("workflow instance {instance:?}: the call to its actor failed")]
    Call {
        /// The instance.
        instance: String,
        /// The call's error.
        #[source]
        source: crate::CallError,
    },
    /// The owning node refused or failed the operation (a client's or another node's call,
    /// [`RemoteWorkflows`]): its message, with its causes.
    #[error("workflow instance {instance:?}: the owning node failed: {detail}")]
    Remote {
        /// The instance.
        instance: String,
        /// The owner's error.
        detail: String,
    },
    /// [`RemoteWorkflows::wait`] gave up: the instance still runs.
    #[error("workflow instance {instance:?} still runs after {waited:?}")]
    WaitTimeout {
        /// The instance.
        instance: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// A shard did not answer (the node is stopping).
    #[error("shard {shard} stopped before answering")]
    ShardStopped {
        /// The shard.
        shard: quark_placement::ShardId,
    },
}

/// History bounds and warnings (`[workflows]` in the config; docs/CONFIG.md).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowsConfig {
    /// Records per run at most; an instance that would exceed it fails with a history-limit
    /// error (use `continue_as_new`). Default 51 200.
    pub max_history_events: u64,
    /// Bytes of history records per run at most (payloads as stored). Default 50 MiB.
    pub max_history_bytes: u64,
    /// A warning is logged (once per run) when a run reaches this fraction of either limit.
    /// Default 0.8.
    pub history_warn_fraction: f64,
}

impl Default for WorkflowsConfig {
    fn default() -> Self {
        WorkflowsConfig {
            max_history_events: 51_200,
            max_history_bytes: 50 << 20,
            history_warn_fraction: 0.8,
        }
    }
}

type DynRun = Arc<dyn Fn(WorkflowContext, Vec<u8>) -> context::RunFuture + Send + Sync>;
pub(crate) type DynActivity = Arc<
    dyn Fn(
            Vec<u8>,
            ActivityContext,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<u8>, ActivityError>>>>
        + Send
        + Sync,
>;

/// JSON → postcard with a registered type (the CLI's and the admin routes' inputs).
type FromJson = Arc<dyn Fn(serde_json::Value) -> Result<Vec<u8>, String> + Send + Sync>;
/// postcard → JSON with a registered type.
type ToJson = Arc<dyn Fn(&[u8]) -> Result<serde_json::Value, String> + Send + Sync>;

/// The JSON codec of one orchestration version: its input and its output type.
#[derive(Clone)]
pub(crate) struct JsonCodec {
    input: FromJson,
    output: ToJson,
}

fn from_json<T: Serialize + DeserializeOwned>() -> FromJson {
    Arc::new(|v: serde_json::Value| {
        let t: T = serde_json::from_value(v).map_err(|e| {
            format!(
                "the JSON does not fit type {}: {e}",
                std::any::type_name::<T>()
            )
        })?;
        postcard::to_allocvec(&t).map_err(|e| e.to_string())
    })
}

/// A shard's workflow figures (the admin probe's; `quark_workflow_*` on `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkflowFigures {
    /// Instances in the shard's table by state name (finished ones count until purged).
    pub instances: BTreeMap<String, u64>,
    /// Records in the current runs' histories of the running instances, summed.
    pub history_events: u64,
    /// The largest of those (the instance closest to `max_history_events`).
    pub history_events_max: u64,
    /// Bytes of those histories, summed.
    pub history_bytes: u64,
    /// The largest of those.
    pub history_bytes_max: u64,
}

/// This shard's workflow figures, if the node runs workflows.
pub(crate) fn local_figures() -> Option<WorkflowFigures> {
    local_workflows().map(|_| instance::table_figures())
}

thread_local! {
    /// This shard's `Workflows` handle, once the node started its workflows (the admin
    /// routes take it from shard 0).
    static LOCAL: std::cell::RefCell<Option<Workflows>> = const { std::cell::RefCell::new(None) };
}

/// The calling shard's `Workflows` handle, if the node runs workflows.
pub(crate) fn local_workflows() -> Option<Workflows> {
    LOCAL.with(|l| l.borrow().clone())
}

/// What the node's instances share: the registered code and the settings.
pub(crate) struct WfShared {
    pub orchestrations: HashMap<String, BTreeMap<u32, DynRun>>,
    /// JSON codecs per (orchestration, version).
    pub json: HashMap<(String, u32), JsonCodec>,
    /// JSON codecs of the registered event payload types, per event name.
    pub events: HashMap<String, FromJson>,
    pub activities: HashMap<String, DynActivity>,
    pub config: WorkflowsConfig,
    pub jobs: OnceLock<crate::jobs::Jobs>,
    pub engine: OnceLock<quark_shard::EngineHandle>,
}

impl WfShared {
    pub(crate) fn registered(&self) -> String {
        let mut v: Vec<String> = self
            .orchestrations
            .iter()
            .flat_map(|(n, vs)| vs.keys().map(move |v| format!("{n} v{v}")))
            .collect();
        v.sort();
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    }

    pub(crate) fn orchestration(&self, name: &str, version: u32) -> Option<DynRun> {
        self.orchestrations.get(name)?.get(&version).cloned()
    }

    pub(crate) fn newest(&self, name: &str) -> Option<u32> {
        self.orchestrations.get(name)?.keys().next_back().copied()
    }
}

/// Collects registrations for the node builder.
#[derive(Default)]
pub(crate) struct Setup {
    orchestrations: HashMap<String, BTreeMap<u32, DynRun>>,
    json: HashMap<(String, u32), JsonCodec>,
    events: HashMap<String, FromJson>,
    activities: HashMap<String, DynActivity>,
}

impl Setup {
    pub(crate) fn is_empty(&self) -> bool {
        self.orchestrations.is_empty()
    }

    pub(crate) fn add_orchestration<I, O, E, F, Fut>(&mut self, name: &str, version: u32, f: F)
    where
        I: Serialize + DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        E: std::fmt::Display + 'static,
        F: Fn(WorkflowContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + 'static,
    {
        let output: ToJson = Arc::new(|bytes: &[u8]| {
            let o: O = postcard::from_bytes(bytes).map_err(|e| {
                format!(
                    "the output does not decode as {}: {e}",
                    std::any::type_name::<O>()
                )
            })?;
            serde_json::to_value(&o).map_err(|e| e.to_string())
        });
        self.json.insert(
            (name.to_owned(), version),
            JsonCodec {
                input: from_json::<I>(),
                output,
            },
        );
        let f = Arc::new(f);
        let run: DynRun = Arc::new(move |ctx: WorkflowContext, input: Vec<u8>| {
            let f = Arc::clone(&f);
            Box::pin(async move {
                let input: I = postcard::from_bytes(&input)
                    .map_err(|e| format!("the input does not decode: {e}"))?;
                match f(ctx, input).await {
                    Ok(o) => postcard::to_allocvec(&o)
                        .map_err(|e| format!("the output does not serialise: {e}")),
                    Err(e) => Err(e.to_string()),
                }
            })
        });
        self.orchestrations
            .entry(name.to_owned())
            .or_default()
            .insert(version, run);
    }

    /// Registers the payload type of event `name` (its JSON codec, for the CLI).
    pub(crate) fn add_event<P: Serialize + DeserializeOwned + 'static>(&mut self, name: &str) {
        self.events.insert(name.to_owned(), from_json::<P>());
    }

    pub(crate) fn add_activity<I, O, F, Fut>(&mut self, name: &str, f: F)
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(I, ActivityContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, ActivityError>> + 'static,
    {
        let f = Arc::new(f);
        let name_owned = name.to_owned();
        let run: DynActivity = Arc::new(move |input: Vec<u8>, ctx: ActivityContext| {
            let f = Arc::clone(&f);
            let name = name_owned.clone();
            Box::pin(async move {
                let input: I = postcard::from_bytes(&input).map_err(|e| {
                    ActivityError::fatal(format!(
                        "the input of activity {name:?} does not decode: {e}"
                    ))
                })?;
                let out = f(input, ctx).await?;
                postcard::to_allocvec(&out).map_err(|e| {
                    ActivityError::fatal(format!(
                        "the output of activity {name:?} does not serialise: {e}"
                    ))
                })
            })
        });
        self.activities.insert(name.to_owned(), run);
    }

    pub(crate) fn build(self, config: WorkflowsConfig) -> Arc<WfShared> {
        Arc::new(WfShared {
            orchestrations: self.orchestrations,
            json: self.json,
            events: self.events,
            activities: self.activities,
            config,
            jobs: OnceLock::new(),
            engine: OnceLock::new(),
        })
    }
}

/// Registers what the node needs for workflows (called by `NodeBuilder::start`): the instance
/// actor type and the activity job type.
pub(crate) fn instance_type(shared: Arc<WfShared>) -> quark_shard::ActorType<WorkflowInstance> {
    instance::actor_type(shared)
}

/// Resumes every unfinished instance of every shard and fills the shards' instance tables
/// (called once by `NodeBuilder::start`, after the job queues recovered).
pub(crate) fn start(
    shared: &Arc<WfShared>,
    engine: &quark_shard::EngineHandle,
    jobs: &crate::jobs::Jobs,
) -> Workflows {
    let _ = shared.jobs.set(jobs.clone());
    let _ = shared.engine.set(engine.clone());
    let wf = Workflows::new(engine.clone(), Arc::clone(shared));
    for s in 0..engine.shard_count() {
        let engine2 = engine.clone();
        let local = wf.clone();
        let w = engine.spawn_on(s, move || {
            LOCAL.with(|l| *l.borrow_mut() = Some(local));
            instance::resume_shard(engine2)
        });
        if w.join().is_err() {
            tracing::error!(shard = s, "resuming the shard's workflow instances failed");
        }
    }
    wf
}
