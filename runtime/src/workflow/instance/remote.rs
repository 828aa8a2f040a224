//! The instance's turns for operations from clients and other nodes
//! ([`crate::workflow::remote`]): JSON converted with the types registered on this node, then
//! the same turns as the node's own `Workflows` handle runs.

use super::*;
use crate::workflow::remote::{
    RemoteWorkflowError, WfHistoryQuery, WfPurge, WfRaise, WfStart, WfStarted, WfStatus,
    WfStatusQuery, WfStop,
};

type Remote<T> = Result<T, RemoteWorkflowError>;

fn local(e: WorkflowError) -> RemoteWorkflowError {
    RemoteWorkflowError::from_local(e)
}

fn parse(what: &str, text: &str) -> Remote<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| RemoteWorkflowError::Codec {
        what: format!("parsing the JSON {what}"),
        detail: e.to_string(),
    })
}

impl WorkflowInstance {
    /// `st` as it crosses the wire: the output converted to JSON with the registered type.
    fn wire_status(&self, st: WorkflowStatus) -> Remote<WfStatus> {
        let (output_json, error) = match st.output {
            Some(Ok(bytes)) => {
                let codec = self
                    .shared
                    .json
                    .get(&(st.name.clone(), st.version))
                    .ok_or_else(|| RemoteWorkflowError::UnknownOrchestration {
                        name: st.name.clone(),
                        version: Some(st.version),
                        registered: self.shared.registered(),
                    })?;
                let v = (codec.output)(&bytes).map_err(|detail| RemoteWorkflowError::Codec {
                    what: "converting the output to JSON".to_owned(),
                    detail,
                })?;
                (Some(v.to_string()), None)
            }
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        Ok(WfStatus {
            instance: st.instance,
            name: st.name,
            version: st.version,
            run: st.run,
            state: st.state.name().to_owned(),
            parent: st.parent,
            started_ms: st.started_ms,
            finished_ms: st.finished_ms,
            output_json,
            error,
            history_events: st.history_events,
            history_bytes: st.history_bytes,
            pending_steps: st.pending_steps,
        })
    }
}

impl Handler<WfStart> for WorkflowInstance {
    async fn handle(&mut self, m: WfStart, ctx: &Context<Self>) -> Remote<WfStarted> {
        let unknown = |shared: &WfShared| RemoteWorkflowError::UnknownOrchestration {
            name: m.name.clone(),
            version: m.version,
            registered: shared.registered(),
        };
        let version = match m.version {
            Some(v) if self.shared.orchestration(&m.name, v).is_some() => v,
            Some(_) => return Err(unknown(&self.shared)),
            None => self
                .shared
                .newest(&m.name)
                .ok_or_else(|| unknown(&self.shared))?,
        };
        let codec = self
            .shared
            .json
            .get(&(m.name.clone(), version))
            .cloned()
            .ok_or_else(|| unknown(&self.shared))?;
        let input = (codec.input)(parse("input", &m.input_json)?).map_err(|detail| {
            RemoteWorkflowError::Codec {
                what: "converting the JSON input".to_owned(),
                detail,
            }
        })?;
        let start = StartMsg {
            name: m.name,
            version,
            input,
            parent: None,
        };
        let out = <Self as Handler<StartMsg>>::handle(self, start, ctx)
            .await
            .map_err(local)?;
        Ok(WfStarted {
            name: out.name,
            version: out.version,
            existed: out.existed,
        })
    }
}

impl Handler<WfStatusQuery> for WorkflowInstance {
    async fn handle(&mut self, _: WfStatusQuery, _: &Context<Self>) -> Remote<WfStatus> {
        let st = self.status().map_err(local)?;
        self.wire_status(st)
    }
}

impl Handler<WfRaise> for WorkflowInstance {
    async fn handle(&mut self, m: WfRaise, ctx: &Context<Self>) -> Remote<()> {
        let Some(codec) = self.shared.events.get(&m.name).cloned() else {
            return Err(RemoteWorkflowError::Codec {
                what: "converting the JSON payload".to_owned(),
                detail: format!(
                    "no payload type is registered for event {:?} on this node (NodeBuilder::register_workflow_event)",
                    m.name
                ),
            });
        };
        let payload = codec(parse("payload", &m.payload_json)?).map_err(|detail| {
            RemoteWorkflowError::Codec {
                what: "converting the JSON payload".to_owned(),
                detail,
            }
        })?;
        let raise = RaiseMsg {
            name: m.name,
            payload,
        };
        <Self as Handler<RaiseMsg>>::handle(self, raise, ctx)
            .await
            .map_err(local)
    }
}

impl Handler<WfStop> for WorkflowInstance {
    async fn handle(&mut self, m: WfStop, ctx: &Context<Self>) -> Remote<WfStatus> {
        let state = if m.terminate {
            InstanceState::Terminated
        } else {
            InstanceState::Cancelled
        };
        let st = <Self as Handler<StopMsg>>::handle(self, StopMsg { state }, ctx)
            .await
            .map_err(local)?;
        self.wire_status(st)
    }
}

impl Handler<WfHistoryQuery> for WorkflowInstance {
    async fn handle(&mut self, _: WfHistoryQuery, ctx: &Context<Self>) -> Remote<String> {
        let h = <Self as Handler<HistoryMsg>>::handle(self, HistoryMsg, ctx)
            .await
            .map_err(local)?;
        history::json_lines(&h).map_err(|e| RemoteWorkflowError::Codec {
            what: "writing the history as JSON".to_owned(),
            detail: e.to_string(),
        })
    }
}

impl Handler<WfPurge> for WorkflowInstance {
    async fn handle(&mut self, _: WfPurge, ctx: &Context<Self>) -> Remote<()> {
        <Self as Handler<PurgeMsg>>::handle(self, PurgeMsg, ctx)
            .await
            .map_err(local)
    }
}
