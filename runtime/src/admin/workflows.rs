//! The admin endpoint's `/quark/workflows` routes: the node's workflow instances, read and
//! operated online (`quark workflows …`, see `docs/WORKFLOWS.md`, "The quark workflows tool").
//!
//! As the `/quark/jobs` routes (whose helpers this reuses): reads are `GET`, operations `POST`
//! with everything in the path and the query (no body); inputs and payloads are JSON in a
//! query parameter, converted with the codecs registered with the orchestration and the event
//! (a value that does not fit the type is a `400` naming it). Answers are JSON: a
//! [`WorkflowView`], a [`WorkflowsPage`], a [`WorkflowHistory`], a [`WorkflowStarted`], or an
//! [`super::ApiError`] (`400` bad input, `404` unknown instance or orchestration or no
//! workflows on the node, `405` wrong method, `409` the instance's state does not allow it,
//! `503` the node is not running). Instance ids are percent-encoded path segments (a child's
//! id holds `/`).
//!
//! | route | does |
//! |---|---|
//! | `GET /quark/workflows?state=&name=&limit=&cursor=` | one page of instances, by id |
//! | `GET /quark/workflows/{id}` | one instance (its output as JSON) |
//! | `GET /quark/workflows/{id}/history` | the current run's records |
//! | `POST /quark/workflows/{id}/start?name=&input=&version=` | starts it (idempotent) |
//! | `POST /quark/workflows/{id}/raise?event=&payload=` | raises an event |
//! | `POST /quark/workflows/{id}/cancel` | cancels it and its children |
//! | `POST /quark/workflows/{id}/terminate` | terminates it |
//! | `POST /quark/workflows/{id}/purge` | removes a finished instance's history |

use serde::{Deserialize, Serialize};

use super::http::Request;
use super::jobs::{decode_component, fail, from_shard0, ok, parse_query, Answer};
use super::Shared;
use crate::workflow::{
    HistoryEvent, InstanceState, ListQuery, WorkflowError, WorkflowStatus, Workflows,
};

/// One instance as the `/quark/workflows` routes show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowView {
    /// The instance id.
    pub id: String,
    /// Its orchestration.
    pub name: String,
    /// The version it runs.
    pub version: u32,
    /// The run (1, then one more per `continue_as_new`).
    pub run: u64,
    /// Its state (`running`, `completed`, `failed`, `non_deterministic`, `cancelled`,
    /// `terminated`).
    pub state: String,
    /// The parent of a sub-orchestration.
    pub parent: Option<String>,
    /// When the current run started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// The output as JSON, once completed (`null` if the orchestration has no JSON codec).
    pub output: Option<serde_json::Value>,
    /// The error, once it ended without an output.
    pub error: Option<String>,
    /// Records of the current run.
    pub history_events: u64,
    /// Bytes of those records.
    pub history_bytes: u64,
    /// Steps issued and not yet done.
    pub pending_steps: u64,
}

impl WorkflowView {
    fn new(s: WorkflowStatus, wf: &Workflows) -> Self {
        let (output, error) = match &s.output {
            Some(Ok(bytes)) => (wf.output_json(&s.name, s.version, bytes).ok(), None),
            Some(Err(e)) => (None, Some(e.clone())),
            None => (None, None),
        };
        WorkflowView {
            id: s.instance,
            name: s.name,
            version: s.version,
            run: s.run,
            state: s.state.name().to_owned(),
            parent: s.parent,
            started_ms: s.started_ms,
            finished_ms: s.finished_ms,
            output,
            error,
            history_events: s.history_events,
            history_bytes: s.history_bytes,
            pending_steps: s.pending_steps,
        }
    }
}

/// One entry of a [`WorkflowsPage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowItem {
    /// The instance id.
    pub id: String,
    /// Its orchestration.
    pub name: String,
    /// Its state.
    pub state: String,
}

/// One page of `GET /quark/workflows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowsPage {
    /// The instances, by id.
    pub instances: Vec<WorkflowItem>,
    /// Pass as `cursor` for the next page; `None`: the last page.
    pub next_cursor: Option<String>,
}

/// `GET /quark/workflows/{id}/history`: the current run's records (the `HistoryEvent` serde
/// form, as `Workflows::history_json` writes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowHistory {
    /// The instance id.
    pub instance: String,
    /// The records, in order.
    pub events: Vec<HistoryEvent>,
}

/// `POST /quark/workflows/{id}/start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowStarted {
    /// The instance id.
    pub instance: String,
    /// Its orchestration.
    pub name: String,
    /// The version it runs.
    pub version: u32,
    /// The id existed: nothing was started.
    pub existed: bool,
}

fn wf_error(e: WorkflowError) -> Answer {
    let status = match &e {
        WorkflowError::NotFound { .. } | WorkflowError::UnknownOrchestration { .. } => 404,
        WorkflowError::Finished { .. } | WorkflowError::Running { .. } => 409,
        WorkflowError::Codec { .. } => 400,
        WorkflowError::ShardStopped { .. } => 503,
        _ => 500,
    };
    fail(status, crate::ErrorChain(&e).to_string())
}

/// Answers a request whose path is `/quark/workflows` or below it.
pub(super) fn route(req: &Request, shared: &Shared) -> Answer {
    let rest = req.path.strip_prefix("/quark/workflows").unwrap_or("");
    if !(rest.is_empty() || rest.starts_with('/')) {
        return fail(404, format!("no route {}", req.path));
    }
    let mut segs = Vec::new();
    for s in rest.split('/').filter(|s| !s.is_empty()) {
        match decode_component(s) {
            Ok(s) => segs.push(s),
            Err(e) => return fail(400, e),
        }
    }
    let query = match parse_query(&req.query) {
        Ok(q) => q,
        Err(e) => return fail(400, e),
    };
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (verb, id, allowed): (&str, &str, &[&str]) = match segs.as_slice() {
        [] => ("list", "", &["state", "name", "limit", "cursor"]),
        [id] => ("status", id, &[]),
        [id, "history"] => ("history", id, &[]),
        [id, "start"] => ("start", id, &["name", "input", "version"]),
        [id, "raise"] => ("raise", id, &["event", "payload"]),
        [id, v @ ("cancel" | "terminate" | "purge")] => (v, id, &[]),
        _ => return fail(404, format!("no route {}", req.path)),
    };
    let wants_post = matches!(verb, "start" | "raise" | "cancel" | "terminate" | "purge");
    let read = req.method == "GET" || req.method == "HEAD";
    if wants_post && req.method != "POST" {
        return fail(405, format!("{} needs POST", req.path));
    }
    if !wants_post && !read {
        return fail(405, format!("{} needs GET", req.path));
    }
    if let Some((k, _)) = query.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return fail(
            400,
            format!(
                "unknown parameter {k:?} for {} (known: {})",
                req.path,
                allowed.join(", ")
            ),
        );
    }
    let wf = match workflows_of(shared) {
        Ok(w) => w,
        Err(a) => return a,
    };
    match verb {
        "list" => {
            let state = match get("state") {
                None => None,
                Some(s) => match InstanceState::parse(&s) {
                    Some(st) => Some(st),
                    None => return fail(400, format!("bad state {s:?} (running, completed, failed, non_deterministic, cancelled, terminated)")),
                },
            };
            let limit = match get("limit").map(|l| l.parse::<usize>()) {
                None => 0,
                Some(Ok(n)) if (1..=1000).contains(&n) => n,
                Some(_) => return fail(400, "bad limit (1 to 1000)"),
            };
            let q = ListQuery {
                state,
                name: get("name"),
                after: get("cursor"),
                limit,
            };
            match crate::block_on(wf.list(q)) {
                Ok(p) => ok(&WorkflowsPage {
                    instances: p
                        .instances
                        .into_iter()
                        .map(|(id, name, state)| WorkflowItem {
                            id,
                            name,
                            state: state.name().to_owned(),
                        })
                        .collect(),
                    next_cursor: p.next_cursor,
                }),
                Err(e) => wf_error(e),
            }
        }
        "status" => match crate::block_on(wf.status(id)) {
            Ok(s) => ok(&WorkflowView::new(s, &wf)),
            Err(e) => wf_error(e),
        },
        "history" => match crate::block_on(wf.history(id)) {
            Ok(events) => ok(&WorkflowHistory {
                instance: id.to_owned(),
                events,
            }),
            Err(e) => wf_error(e),
        },
        "start" => {
            let Some(name) = get("name") else {
                return fail(400, "start needs name=<orchestration>");
            };
            let version = match get("version").map(|v| v.parse::<u32>()) {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => return fail(400, format!("bad version: {e}")),
            };
            let input = get("input").unwrap_or_else(|| "null".to_owned());
            match crate::block_on(wf.start_json(&name, version, id, &input)) {
                Ok(s) => ok(&WorkflowStarted {
                    instance: s.instance,
                    name: s.name,
                    version: s.version,
                    existed: s.existed,
                }),
                Err(e) => wf_error(e),
            }
        }
        "raise" => {
            let Some(event) = get("event") else {
                return fail(400, "raise needs event=<name>");
            };
            let payload = get("payload").unwrap_or_else(|| "null".to_owned());
            match crate::block_on(wf.raise_event_json(id, &event, &payload)) {
                Ok(()) => ok(&serde_json::json!({ "raised": event })),
                Err(e) => wf_error(e),
            }
        }
        "cancel" | "terminate" => {
            let r = if verb == "cancel" {
                crate::block_on(wf.cancel(id))
            } else {
                crate::block_on(wf.terminate(id))
            };
            match r {
                Ok(s) => ok(&WorkflowView::new(s, &wf)),
                Err(e) => wf_error(e),
            }
        }
        _ => match crate::block_on(wf.purge(id)) {
            Ok(()) => ok(&serde_json::json!({ "purged": id })),
            Err(e) => wf_error(e),
        },
    }
}

/// The node's `Workflows` handle, taken from shard 0 (which has one when the node runs
/// workflows).
fn workflows_of(shared: &Shared) -> Result<Workflows, Answer> {
    from_shard0(
        shared,
        crate::workflow::local_workflows,
        "the node runs no workflows (no orchestration registered, or no [log])",
    )
}
