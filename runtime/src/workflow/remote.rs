//! Workflows from a [`crate::Client`]: [`RemoteWorkflows`].
//!
//! An instance is an actor (`quark.wf`) placed by its id, so every operation is a wire message
//! to the instance's actor on the node the cluster's placement puts it on; no gateway is
//! involved. Inputs, event payloads and outputs cross as JSON and are converted on the owning
//! node with the types registered there (`NodeBuilder::register_workflow`,
//! `register_workflow_event`), so a client needs none of the orchestration's code.
//!
//! ```no_run
//! # fn f(client: &quark::Client) -> Result<(), quark::workflow::WorkflowError> {
//! let wf = client.workflows();
//! let started = quark::block_on(wf.start("greet", "g-1", &"ann".to_string()))?;
//! assert!(!started.existed);
//! let out: String = quark::block_on(wf.result("g-1", std::time::Duration::from_secs(30)))?;
//! # Ok(()) }
//! ```
//!
//! Waiting for the end ([`RemoteWorkflows::wait`]) polls the instance's status with a growing
//! interval (1 ms doubling to 100 ms): a remote reply cannot be held open across the instance's
//! turns without blocking them.

use std::time::{Duration, Instant};

use quark_net::rkyv;
use quark_net::WireMessage;
use quark_shard::{CallError, EngineHandle, Message};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::history::InstanceState;
use super::instance::WorkflowInstance;
use super::{StartOutcome, WorkflowError};

/// Starts an instance (the actor's key is the instance id) of orchestration `name`: version
/// `version`, or the newest one registered on the owning node.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct WfStart {
    /// The orchestration.
    pub name: String,
    /// Its version; `None`: the newest registered on the owning node.
    pub version: Option<u32>,
    /// The input as JSON, converted with the orchestration's input type on the owner.
    pub input_json: String,
}

impl Message for WfStart {
    type Reply = Result<WfStarted, RemoteWorkflowError>;
}
impl WireMessage for WfStart {
    const WIRE_NAME: &'static str = "quark.wf.Start";
}

/// What a [`WfStart`] did.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct WfStarted {
    /// The orchestration the instance runs (an existing instance's own).
    pub name: String,
    /// Its version.
    pub version: u32,
    /// True if the id existed: nothing was started.
    pub existed: bool,
}
impl WireMessage for WfStarted {
    const WIRE_NAME: &'static str = "quark.wf.Started";
}

/// Asks for an instance's status.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct WfStatusQuery;
impl Message for WfStatusQuery {
    type Reply = Result<WfStatus, RemoteWorkflowError>;
}
impl WireMessage for WfStatusQuery {
    const WIRE_NAME: &'static str = "quark.wf.Status";
}

/// An instance's status as it crosses the wire: [`super::WorkflowStatus`] with the output as
/// JSON.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct WfStatus {
    /// The instance id.
    pub instance: String,
    /// Its orchestration.
    pub name: String,
    /// The version it runs.
    pub version: u32,
    /// The run (1, then one more per `continue_as_new`).
    pub run: u64,
    /// Its state ([`InstanceState::name`]: `running`, `completed`, ...).
    pub state: String,
    /// The parent instance of a sub-orchestration.
    pub parent: Option<String>,
    /// When the current run started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// The output as JSON, once it completed.
    pub output_json: Option<String>,
    /// The error message, once it ended otherwise.
    pub error: Option<String>,
    /// Records in the current run's history.
    pub history_events: u64,
    /// Bytes of the current run's history records.
    pub history_bytes: u64,
    /// Steps issued and not yet done.
    pub pending_steps: u64,
}
impl WireMessage for WfStatus {
    const WIRE_NAME: &'static str = "quark.wf.StatusReply";
}

impl WfStatus {
    /// The state, parsed.
    pub fn state(&self) -> Option<InstanceState> {
        InstanceState::parse(&self.state)
    }

    /// True once the instance ended (completed, failed, cancelled, ...).
    pub fn is_finished(&self) -> bool {
        self.state().is_some_and(InstanceState::is_finished)
    }
}

/// Raises event `name` with a JSON payload, converted with the payload type registered for
/// `name` on the owning node.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct WfRaise {
    /// The event's name.
    pub name: String,
    /// Its payload as JSON.
    pub payload_json: String,
}
impl Message for WfRaise {
    type Reply = Result<(), RemoteWorkflowError>;
}
impl WireMessage for WfRaise {
    const WIRE_NAME: &'static str = "quark.wf.Raise";
}

/// Cancels (children cancelled too) or terminates (children left running) an instance.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct WfStop {
    /// Terminate rather than cancel.
    pub terminate: bool,
}
impl Message for WfStop {
    type Reply = Result<WfStatus, RemoteWorkflowError>;
}
impl WireMessage for WfStop {
    const WIRE_NAME: &'static str = "quark.wf.Stop";
}

/// Asks for the current run's history as JSON lines (the export the replay check reads).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct WfHistoryQuery;
impl Message for WfHistoryQuery {
    type Reply = Result<String, RemoteWorkflowError>;
}
impl WireMessage for WfHistoryQuery {
    const WIRE_NAME: &'static str = "quark.wf.History";
}

/// Removes a finished instance's history.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
pub struct WfPurge;
impl Message for WfPurge {
    type Reply = Result<(), RemoteWorkflowError>;
}
impl WireMessage for WfPurge {
    const WIRE_NAME: &'static str = "quark.wf.Purge";
}

pub use wire_error::RemoteWorkflowError;

mod wire_error {
    // rkyv's archived form of the struct variants carries no docs; the type's own are below.
    #![allow(missing_docs)]
    use quark_net::rkyv;

    /// Why a workflow operation failed on the owning node; [`RemoteWorkflows`] turns it into the
    /// matching [`WorkflowError`].
    #[derive(
        Debug,
        Clone,
        PartialEq,
        Eq,
        thiserror::Error,
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
    )]
    #[rkyv(crate = quark_net::rkyv)]
    pub enum RemoteWorkflowError {
        /// The owner has no log.
        #[error("the owning node has no log")]
        NoLog,
        /// No such orchestration (version) on the owner; what is registered there.
        #[error("no orchestration {name:?}{} is registered there (registered: {registered})", version.map(|v| format!(" version {v}")).unwrap_or_default())]
        UnknownOrchestration {
            /// The name asked for.
            name: String,
            /// The version asked for.
            version: Option<u32>,
            /// What the owner registered.
            registered: String,
        },
        /// The instance does not exist.
        #[error("the instance does not exist")]
        NotFound,
        /// The instance is finished (its state's name).
        #[error("the instance is {0} (not running)")]
        Finished(String),
        /// The instance still runs (purge).
        #[error("the instance is still running")]
        Running,
        /// JSON that does not fit the registered type, or an output that does not convert.
        #[error("{what}: {detail}")]
        Codec {
            /// What was converted.
            what: String,
            /// The decoder's message.
            detail: String,
        },
        /// Another failure on the owner (the log, a shard), with its causes.
        #[error("{0}")]
        Failed(String),
    }
}

impl WireMessage for RemoteWorkflowError {
    const WIRE_NAME: &'static str = "quark.wf.Error";
}

impl RemoteWorkflowError {
    /// The owner's [`WorkflowError`] as it crosses the wire.
    pub(crate) fn from_local(e: WorkflowError) -> Self {
        match e {
            WorkflowError::NoLog { .. } => RemoteWorkflowError::NoLog,
            WorkflowError::UnknownOrchestration {
                name,
                version,
                registered,
            } => RemoteWorkflowError::UnknownOrchestration {
                name,
                version,
                registered,
            },
            WorkflowError::NotFound { .. } => RemoteWorkflowError::NotFound,
            WorkflowError::Finished { state, .. } => {
                RemoteWorkflowError::Finished(state.name().to_owned())
            }
            WorkflowError::Running { .. } => RemoteWorkflowError::Running,
            WorkflowError::Codec { what, detail, .. } => RemoteWorkflowError::Codec {
                what: what.to_owned(),
                detail,
            },
            other => RemoteWorkflowError::Failed(crate::ErrorChain(&other).to_string()),
        }
    }

    /// The matching [`WorkflowError`] for `instance` on the caller's side.
    fn into_local(self, instance: &str) -> WorkflowError {
        let instance = instance.to_owned();
        match self {
            RemoteWorkflowError::NoLog => WorkflowError::NoLog { instance },
            RemoteWorkflowError::UnknownOrchestration {
                name,
                version,
                registered,
            } => WorkflowError::UnknownOrchestration {
                name,
                version,
                registered,
            },
            RemoteWorkflowError::NotFound => WorkflowError::NotFound { instance },
            RemoteWorkflowError::Finished(state) => match InstanceState::parse(&state) {
                Some(state) => WorkflowError::Finished { instance, state },
                None => WorkflowError::Remote {
                    instance,
                    detail: format!("finished in an unknown state {state:?}"),
                },
            },
            RemoteWorkflowError::Running => WorkflowError::Running { instance },
            RemoteWorkflowError::Codec { what, detail } => WorkflowError::Remote {
                instance,
                detail: format!("{what}: {detail}"),
            },
            RemoteWorkflowError::Failed(detail) => WorkflowError::Remote { instance, detail },
        }
    }
}

/// The cluster's workflow instances, from a [`crate::Client`] ([`crate::Client::workflows`]):
/// each call goes to the instance's actor on the node that owns its id.
#[derive(Clone, Debug)]
pub struct RemoteWorkflows {
    engine: EngineHandle,
}

/// Longest pause between two status polls of [`RemoteWorkflows::wait`].
const WAIT_POLL_MAX: Duration = Duration::from_millis(100);

impl RemoteWorkflows {
    pub(crate) fn new(engine: EngineHandle) -> Self {
        RemoteWorkflows { engine }
    }

    async fn ask<M>(&self, instance: &str, msg: M) -> Result<M::Reply, WorkflowError>
    where
        M: Message,
        WorkflowInstance: quark_shard::Handler<M>,
    {
        self.engine
            .actor_ref::<WorkflowInstance>(instance.to_owned())
            .ask(msg)
            .await
            .map_err(|source: CallError| WorkflowError::Call {
                instance: instance.to_owned(),
                source,
            })
    }

    /// Starts instance `instance` of the newest version of orchestration `name` registered on
    /// the owning node, with `input` (sent as JSON). If the id exists nothing is started
    /// (`existed = true`).
    pub async fn start<I: Serialize>(
        &self,
        name: &str,
        instance: &str,
        input: &I,
    ) -> Result<StartOutcome, WorkflowError> {
        let json = to_json(instance, "encoding the input as JSON", input)?;
        self.start_json(name, None, instance, &json).await
    }

    /// [`RemoteWorkflows::start`] on a given version (`None`: the newest), the input as JSON.
    pub async fn start_json(
        &self,
        name: &str,
        version: Option<u32>,
        instance: &str,
        input_json: &str,
    ) -> Result<StartOutcome, WorkflowError> {
        let msg = WfStart {
            name: name.to_owned(),
            version,
            input_json: input_json.to_owned(),
        };
        let s = self
            .ask(instance, msg)
            .await?
            .map_err(|e| e.into_local(instance))?;
        Ok(StartOutcome {
            instance: instance.to_owned(),
            name: s.name,
            version: s.version,
            existed: s.existed,
        })
    }

    /// The instance's status.
    pub async fn status(&self, instance: &str) -> Result<WfStatus, WorkflowError> {
        self.ask(instance, WfStatusQuery)
            .await?
            .map_err(|e| e.into_local(instance))
    }

    /// Waits until the instance finished, or `timeout` passed
    /// ([`WorkflowError::WaitTimeout`]), polling its status (see the module doc).
    pub async fn wait(&self, instance: &str, timeout: Duration) -> Result<WfStatus, WorkflowError> {
        // The pauses need a shard's timers: the loop runs on the caller's engine, shard 0.
        let this = self.clone();
        let id = instance.to_owned();
        self.engine
            .spawn_on(0, move || async move { this.wait_here(&id, timeout).await })
            .await
            .map_err(|_| WorkflowError::ShardStopped { shard: 0 })?
    }

    async fn wait_here(
        &self,
        instance: &str,
        timeout: Duration,
    ) -> Result<WfStatus, WorkflowError> {
        let end = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let st = self.status(instance).await?;
            if st.is_finished() {
                return Ok(st);
            }
            let now = Instant::now();
            if now >= end {
                return Err(WorkflowError::WaitTimeout {
                    instance: instance.to_owned(),
                    waited: timeout,
                });
            }
            quark_shard::sleep(pause.min(end - now)).await;
            pause = (pause * 2).min(WAIT_POLL_MAX);
        }
    }

    /// Waits (at most `timeout`) for the instance's output: `Ok` if it completed, else
    /// [`WorkflowError::Failed`] naming how it ended.
    pub async fn result<O: DeserializeOwned>(
        &self,
        instance: &str,
        timeout: Duration,
    ) -> Result<O, WorkflowError> {
        let st = self.wait(instance, timeout).await?;
        match (st.state(), st.output_json) {
            (Some(InstanceState::Completed), Some(json)) => {
                serde_json::from_str(&json).map_err(|e| WorkflowError::Codec {
                    instance: instance.to_owned(),
                    what: "decoding the JSON output",
                    detail: e.to_string(),
                })
            }
            (state, _) => Err(WorkflowError::Failed {
                instance: instance.to_owned(),
                state: state.unwrap_or(InstanceState::Failed),
                error: st.error.unwrap_or_else(|| "no output".to_owned()),
            }),
        }
    }

    /// Raises event `name` with `payload` (sent as JSON; the owning node must have its type
    /// registered with `register_workflow_event`); resolves once it is durable in the history.
    pub async fn raise_event<P: Serialize>(
        &self,
        instance: &str,
        name: &str,
        payload: &P,
    ) -> Result<(), WorkflowError> {
        let json = to_json(instance, "encoding the payload as JSON", payload)?;
        self.raise_event_json(instance, name, &json).await
    }

    /// [`RemoteWorkflows::raise_event`] with the payload as JSON.
    pub async fn raise_event_json(
        &self,
        instance: &str,
        name: &str,
        payload_json: &str,
    ) -> Result<(), WorkflowError> {
        let msg = WfRaise {
            name: name.to_owned(),
            payload_json: payload_json.to_owned(),
        };
        self.ask(instance, msg)
            .await?
            .map_err(|e| e.into_local(instance))
    }

    /// Cancels a running instance (its children too); resolves once it is durable.
    pub async fn cancel(&self, instance: &str) -> Result<WfStatus, WorkflowError> {
        self.ask(instance, WfStop { terminate: false })
            .await?
            .map_err(|e| e.into_local(instance))
    }

    /// Terminates a running instance (its children are left running).
    pub async fn terminate(&self, instance: &str) -> Result<WfStatus, WorkflowError> {
        self.ask(instance, WfStop { terminate: true })
            .await?
            .map_err(|e| e.into_local(instance))
    }

    /// The current run's history as JSON lines (see `Workflows::history_json`).
    pub async fn history_json(&self, instance: &str) -> Result<String, WorkflowError> {
        self.ask(instance, WfHistoryQuery)
            .await?
            .map_err(|e| e.into_local(instance))
    }

    /// Removes a finished instance's history; its id can be started again.
    pub async fn purge(&self, instance: &str) -> Result<(), WorkflowError> {
        self.ask(instance, WfPurge)
            .await?
            .map_err(|e| e.into_local(instance))
    }
}

fn to_json<T: Serialize>(
    instance: &str,
    what: &'static str,
    v: &T,
) -> Result<String, WorkflowError> {
    serde_json::to_string(v).map_err(|e| WorkflowError::Codec {
        instance: instance.to_owned(),
        what,
        detail: e.to_string(),
    })
}
