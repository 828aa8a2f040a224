//! [`Workflows`]: the node's handle on its workflow instances.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::history::{HistoryEvent, InstanceState};
use super::instance::{
    table_page, HistoryMsg, PurgeMsg, RaiseMsg, StartMsg, StatusMsg, StopMsg, WaitMsg,
    WorkflowInstance,
};
use super::{WfShared, WorkflowError};

/// What `start` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartOutcome {
    /// The instance id.
    pub instance: String,
    /// Its orchestration.
    pub name: String,
    /// The version it runs.
    pub version: u32,
    /// True if the id already existed: nothing was started and this describes the existing
    /// instance (whatever orchestration it runs).
    pub existed: bool,
}

/// An instance's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowStatus {
    /// The instance id.
    pub instance: String,
    /// Its orchestration.
    pub name: String,
    /// The registered version it runs.
    pub version: u32,
    /// The run (1, then one more per `continue_as_new`).
    pub run: u64,
    /// Its state.
    pub state: InstanceState,
    /// The parent instance of a sub-orchestration.
    pub parent: Option<String>,
    /// When the current run started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// The encoded output (`Ok`, postcard) or the error message, once finished.
    pub output: Option<Result<Vec<u8>, String>>,
    /// Records in the current run's history (the history-size metric; bounded by
    /// `[workflows] max_history_events`).
    pub history_events: u64,
    /// Bytes of the current run's history records.
    pub history_bytes: u64,
    /// Steps issued and not yet done.
    pub pending_steps: u64,
}

/// A `list` query: instances by state and orchestration name, ordered by id, paged.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only this state.
    pub state: Option<InstanceState>,
    /// Only this orchestration.
    pub name: Option<String>,
    /// Only ids above this one (the previous page's `next_cursor`).
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: usize,
}

/// One page of `list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowPage {
    /// `(instance id, orchestration, state)`, ordered by id.
    pub instances: Vec<(String, String, InstanceState)>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// The node's workflow instances: start, status, wait, history, raise events, cancel,
/// terminate, purge, list. `Send + Clone`; await its methods on a shard or use
/// [`crate::block_on`] elsewhere. Every per-instance call is a turn of the instance's actor
/// (on the shard its id places it on), so calls to one instance are ordered.
#[derive(Clone)]
pub struct Workflows {
    engine: quark_shard::EngineHandle,
    shared: Arc<WfShared>,
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows")
            .field("registered", &self.shared.registered())
            .finish()
    }
}

impl Workflows {
    pub(crate) fn new(engine: quark_shard::EngineHandle, shared: Arc<WfShared>) -> Self {
        Workflows { engine, shared }
    }

    fn actor(&self, instance: &str) -> quark_shard::ActorRef<WorkflowInstance> {
        self.engine
            .actor_ref::<WorkflowInstance>(instance.to_owned())
    }

    fn call_err(instance: &str) -> impl Fn(crate::CallError) -> WorkflowError + '_ {
        move |source| WorkflowError::Call {
            instance: instance.to_owned(),
            source,
        }
    }

    /// Starts instance `instance` of the newest registered version of orchestration `name`
    /// with `input`; resolves once its `Started` record (and its first steps) are durable. If
    /// the id exists (running or finished, until purged) nothing is started and the existing
    /// instance is described (`existed = true`).
    pub async fn start<I: Serialize>(
        &self,
        name: &str,
        instance: &str,
        input: &I,
    ) -> Result<StartOutcome, WorkflowError> {
        let input = self.encode(instance, input)?;
        self.start_raw(name, None, instance, input, None).await
    }

    /// [`Workflows::start`] on a given registered version.
    pub async fn start_version<I: Serialize>(
        &self,
        name: &str,
        version: u32,
        instance: &str,
        input: &I,
    ) -> Result<StartOutcome, WorkflowError> {
        let input = self.encode(instance, input)?;
        self.start_raw(name, Some(version), instance, input, None)
            .await
    }

    fn encode<I: Serialize>(&self, instance: &str, v: &I) -> Result<Vec<u8>, WorkflowError> {
        postcard::to_allocvec(v).map_err(|e| WorkflowError::Codec {
            instance: instance.to_owned(),
            what: "encoding the input",
            detail: e.to_string(),
        })
    }

    pub(crate) async fn start_raw(
        &self,
        name: &str,
        version: Option<u32>,
        instance: &str,
        input: Vec<u8>,
        parent: Option<String>,
    ) -> Result<StartOutcome, WorkflowError> {
        let unknown = || WorkflowError::UnknownOrchestration {
            name: name.to_owned(),
            version,
            registered: self.shared.registered(),
        };
        let version = match version {
            Some(v) => {
                self.shared.orchestration(name, v).ok_or_else(unknown)?;
                v
            }
            None => self.shared.newest(name).ok_or_else(unknown)?,
        };
        self.actor(instance)
            .ask(StartMsg {
                name: name.to_owned(),
                version,
                input,
                parent,
            })
            .await
            .map_err(Self::call_err(instance))?
    }

    /// [`Workflows::start_version`] (or [`Workflows::start`] with `version: None`) with the
    /// input as JSON, converted with the orchestration's registered input type (the CLI and
    /// the admin routes use it). JSON that does not fit the type is a
    /// [`WorkflowError::Codec`] naming the type.
    pub async fn start_json(
        &self,
        name: &str,
        version: Option<u32>,
        instance: &str,
        input_json: &str,
    ) -> Result<StartOutcome, WorkflowError> {
        let v = version
            .or_else(|| self.shared.newest(name))
            .ok_or_else(|| WorkflowError::UnknownOrchestration {
                name: name.to_owned(),
                version,
                registered: self.shared.registered(),
            })?;
        let codec = self
            .shared
            .json
            .get(&(name.to_owned(), v))
            .cloned()
            .ok_or_else(|| WorkflowError::UnknownOrchestration {
                name: name.to_owned(),
                version: Some(v),
                registered: self.shared.registered(),
            })?;
        let input = parse_json(instance, input_json).and_then(|j| {
            (codec.input)(j).map_err(|detail| WorkflowError::Codec {
                instance: instance.to_owned(),
                what: "converting the JSON input",
                detail,
            })
        })?;
        self.start_raw(name, Some(v), instance, input, None).await
    }

    /// [`Workflows::raise_event`] with the payload as JSON, converted with the type registered
    /// for event `name` (`NodeBuilder::register_workflow_event`).
    pub async fn raise_event_json(
        &self,
        instance: &str,
        name: &str,
        payload_json: &str,
    ) -> Result<(), WorkflowError> {
        let Some(codec) = self.shared.events.get(name).cloned() else {
            return Err(WorkflowError::Codec {
                instance: instance.to_owned(),
                what: "converting the JSON payload",
                detail: format!(
                    "no payload type is registered for event {name:?} (NodeBuilder::register_workflow_event)"
                ),
            });
        };
        let payload = parse_json(instance, payload_json).and_then(|j| {
            codec(j).map_err(|detail| WorkflowError::Codec {
                instance: instance.to_owned(),
                what: "converting the JSON payload",
                detail,
            })
        })?;
        self.actor(instance)
            .ask(RaiseMsg {
                name: name.to_owned(),
                payload,
            })
            .await
            .map_err(Self::call_err(instance))?
    }

    /// An output of orchestration `name` version `version` (as in
    /// [`WorkflowStatus::output`]) as JSON, with the registered output type.
    pub fn output_json(
        &self,
        name: &str,
        version: u32,
        output: &[u8],
    ) -> Result<serde_json::Value, String> {
        let codec = self
            .shared
            .json
            .get(&(name.to_owned(), version))
            .ok_or_else(|| format!("orchestration {name:?} v{version} is not registered"))?;
        (codec.output)(output)
    }

    /// The instance's status.
    pub async fn status(&self, instance: &str) -> Result<WorkflowStatus, WorkflowError> {
        self.actor(instance)
            .ask(StatusMsg)
            .await
            .map_err(Self::call_err(instance))?
    }

    /// Waits until the instance finished (completed, failed, cancelled, terminated or stopped
    /// as non-deterministic); resolves with its status.
    pub async fn wait(&self, instance: &str) -> Result<WorkflowStatus, WorkflowError> {
        let rx = self
            .actor(instance)
            .ask(WaitMsg)
            .await
            .map_err(Self::call_err(instance))??;
        match rx.await {
            Ok(st) => Ok(st),
            // The activation went away (deactivated after a failed append, or the node stops):
            // ask again, which reloads it.
            Err(_) => Box::pin(self.status(instance)).await,
        }
    }

    /// Waits for the instance's output: `Ok` if it completed, else [`WorkflowError::Failed`]
    /// naming how it ended.
    pub async fn result<O: DeserializeOwned>(&self, instance: &str) -> Result<O, WorkflowError> {
        let st = self.wait(instance).await?;
        match (st.state, st.output) {
            (InstanceState::Completed, Some(Ok(bytes))) => {
                postcard::from_bytes(&bytes).map_err(|e| WorkflowError::Codec {
                    instance: instance.to_owned(),
                    what: "decoding the output",
                    detail: e.to_string(),
                })
            }
            (state, out) => Err(WorkflowError::Failed {
                instance: instance.to_owned(),
                state,
                error: match out {
                    Some(Err(e)) => e,
                    _ => "no output".to_owned(),
                },
            }),
        }
    }

    /// The current run's history records, in order.
    pub async fn history(&self, instance: &str) -> Result<Vec<HistoryEvent>, WorkflowError> {
        self.actor(instance)
            .ask(HistoryMsg)
            .await
            .map_err(Self::call_err(instance))?
    }

    /// The history as JSON lines (one record per line, the `HistoryEvent` serde form; byte
    /// fields are arrays of numbers). This is the export the replay check reads.
    pub async fn history_json(&self, instance: &str) -> Result<String, WorkflowError> {
        let h = self.history(instance).await?;
        super::history::json_lines(&h).map_err(|e| WorkflowError::Codec {
            instance: instance.to_owned(),
            what: "writing the history as JSON",
            detail: e.to_string(),
        })
    }

    /// Raises event `name` with `payload`; resolves once it is durable in the history. It is
    /// delivered to the instance's first `wait_event(name)` (now, or when the code gets there).
    pub async fn raise_event<P: Serialize>(
        &self,
        instance: &str,
        name: &str,
        payload: &P,
    ) -> Result<(), WorkflowError> {
        let payload = self.encode(instance, payload)?;
        self.actor(instance)
            .ask(RaiseMsg {
                name: name.to_owned(),
                payload,
            })
            .await
            .map_err(Self::call_err(instance))?
    }

    /// Cancels a running instance: it stops at once (state `Cancelled`, durable before this
    /// resolves) and its running child instances are cancelled too. Activities already
    /// running finish; their results are dropped.
    pub async fn cancel(&self, instance: &str) -> Result<WorkflowStatus, WorkflowError> {
        self.stop(instance, InstanceState::Cancelled).await
    }

    /// Terminates a running instance: like `cancel`, but its children are left running.
    pub async fn terminate(&self, instance: &str) -> Result<WorkflowStatus, WorkflowError> {
        self.stop(instance, InstanceState::Terminated).await
    }

    async fn stop(
        &self,
        instance: &str,
        state: InstanceState,
    ) -> Result<WorkflowStatus, WorkflowError> {
        self.actor(instance)
            .ask(StopMsg { state })
            .await
            .map_err(Self::call_err(instance))?
    }

    /// Removes a finished instance's history from the log (a truncate record); its id can be
    /// started again afterwards.
    pub async fn purge(&self, instance: &str) -> Result<(), WorkflowError> {
        self.actor(instance)
            .ask(PurgeMsg)
            .await
            .map_err(Self::call_err(instance))?
    }

    /// One page of instances (all shards), ordered by id.
    pub async fn list(&self, query: ListQuery) -> Result<WorkflowPage, WorkflowError> {
        let limit = if query.limit == 0 {
            100
        } else {
            query.limit.min(1000)
        };
        let mut all = Vec::new();
        for s in 0..self.engine.shard_count() {
            let q = query.clone();
            let page = self
                .engine
                .spawn_on(s, move || async move {
                    table_page(q.state, q.name.as_deref(), q.after.as_deref(), limit + 1)
                })
                .await
                .map_err(|_| WorkflowError::ShardStopped { shard: s })?;
            all.extend(page);
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let more = all.len() > limit;
        all.truncate(limit);
        let next_cursor = if more {
            all.last().map(|l| l.0.clone())
        } else {
            None
        };
        Ok(WorkflowPage {
            instances: all,
            next_cursor,
        })
    }
}

fn parse_json(instance: &str, text: &str) -> Result<serde_json::Value, WorkflowError> {
    serde_json::from_str(text).map_err(|e| WorkflowError::Codec {
        instance: instance.to_owned(),
        what: "parsing the JSON",
        detail: e.to_string(),
    })
}
