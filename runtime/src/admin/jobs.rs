//! The admin endpoint's `/quark/jobs` routes: the node's durable jobs, read and operated
//! online (`quark jobs list|status|cancel|pause|resume|dead-letters`, see `docs/JOBS.md`).
//!
//! Reads are `GET` (and `HEAD`), operations are `POST` (no body: everything is in the path
//! and the query). Each route takes the node's [`crate::jobs::Jobs`] handle from shard 0 and
//! calls it from the connection's thread, as an embedding program would; the answer is JSON:
//! a [`JobView`], a [`JobsPage`], a [`PauseState`], a [`JobsSummary`], or on failure an
//! [`ApiError`] with the status code saying which kind of failure it is (`400` bad input, `404`
//! unknown job or type or no job queue on the node, `405` wrong method, `409` the job's state
//! does not allow the operation, `503` the node is not running or a shard did not answer).
//!
//! | route | does |
//! |---|---|
//! | `GET /quark/jobs?state=&type=&key=&limit=&cursor=` | one page of jobs, by id |
//! | `GET /quark/jobs/summary` | counts per state, the pause switches, the job types |
//! | `GET /quark/jobs/{id}` | one job |
//! | `POST /quark/jobs/{id}/cancel` | cancels a queued, scheduled, blocked or running job |
//! | `POST /quark/jobs/pause[?type=T]` | pauses the queue (or type `T`), durably |
//! | `POST /quark/jobs/resume[?type=T]` | resumes it |
//! | `GET /quark/jobs/dead-letters?type=&key=&limit=&cursor=` | one page of dead jobs |
//! | `POST /quark/jobs/dead-letters/{id}/replay` | queues a dead job again |
//! | `POST /quark/jobs/dead-letters/{id}/purge` | removes a dead job |

use std::collections::BTreeMap;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::http::Request;
use super::probe::{job_state_name, JOB_STATES, PROBE_WAIT};
use super::{Phase, Shared};
use crate::jobs::{JobId, JobState, JobStatus, Jobs, JobsError, ListQuery};

/// Largest page `GET /quark/jobs` returns (`limit` above it is refused with `400`).
pub const JOBS_PAGE_MAX: usize = 1000;
/// Page size when the request names no `limit`.
pub const JOBS_PAGE_DEFAULT: usize = 100;

/// One job as the `/quark/jobs` routes show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// Its id, `shard.sequence` (as [`JobId`] displays and parses it).
    pub id: String,
    /// Its type.
    pub type_name: String,
    /// Its state, lower case (`blocked`, `scheduled`, `queued`, `running`, `completed`,
    /// `cancelled`, `dead`).
    pub state: String,
    /// Attempts started so far.
    pub attempt: u32,
    /// Priority.
    pub priority: i32,
    /// Progress the running attempt reported (0..=100).
    pub progress: u8,
    /// Next run time (ms since the Unix epoch) when scheduled.
    pub run_at_ms: u64,
    /// Concurrency key.
    pub concurrency_key: Option<String>,
    /// Unique key.
    pub unique_key: Option<String>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Size of the result the handler set, when completed with one.
    pub result_bytes: Option<usize>,
    /// The latest heartbeat's details (`JobContext::heartbeat`), as text when they are UTF-8,
    /// else as hex.
    #[serde(default)]
    pub heartbeat_details: Option<String>,
    /// When that heartbeat was (ms since the Unix epoch).
    #[serde(default)]
    pub heartbeat_at_ms: Option<u64>,
}

impl From<&JobStatus> for JobView {
    fn from(s: &JobStatus) -> Self {
        JobView {
            id: s.id.to_string(),
            type_name: s.type_name.clone(),
            state: job_state_name(s.state).to_owned(),
            attempt: s.attempt,
            priority: s.priority,
            progress: s.progress,
            run_at_ms: s.run_at_ms,
            concurrency_key: s.concurrency_key.clone(),
            unique_key: s.unique_key.clone(),
            last_error: s.last_error.clone(),
            result_bytes: s.result.as_ref().map(Vec::len),
            heartbeat_details: s.heartbeat_details.as_ref().map(|d| {
                String::from_utf8(d.clone())
                    .unwrap_or_else(|_| d.iter().map(|b| format!("{b:02x}")).collect())
            }),
            heartbeat_at_ms: s.heartbeat_at_ms,
        }
    }
}

/// One page of `GET /quark/jobs` (or `/quark/jobs/dead-letters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsPage {
    /// The jobs, by id.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; `None`: this was the last page.
    pub next_cursor: Option<String>,
}

/// The pause switches (after a `pause` or `resume`, or in the summary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseState {
    /// The whole queue is paused.
    pub all: bool,
    /// The paused job types.
    pub types: Vec<String>,
}

/// `GET /quark/jobs/summary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsSummary {
    /// Jobs per state (every state, lower case), all shards together.
    pub counts: BTreeMap<String, u64>,
    /// The pause switches.
    pub paused: PauseState,
    /// The registered job types.
    pub types: Vec<String>,
}

/// The body of every `/quark/jobs` answer that is not `200`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, naming the job, type or parameter.
    pub error: String,
}

/// `(status, content type, body)`, as the router answers.
pub(super) type Answer = (u16, &'static str, Vec<u8>);

pub(super) fn fail(status: u16, error: impl Into<String>) -> Answer {
    let body = serde_json::to_vec(&ApiError {
        error: error.into(),
    })
    .unwrap_or_else(|_| b"{\"error\":\"cannot encode the error\"}".to_vec());
    (status, "application/json", body)
}

pub(super) fn ok<T: Serialize>(value: &T) -> Answer {
    match serde_json::to_vec(value) {
        Ok(body) => (200, "application/json", body),
        Err(e) => fail(500, format!("cannot encode the answer: {e}")),
    }
}

fn jobs_error(e: JobsError) -> Answer {
    let status = match &e {
        JobsError::NotFound(_) | JobsError::UnknownType(_) | JobsError::NoSchedule(_) => 404,
        JobsError::NotRunning => 404,
        JobsError::WrongState { .. } => 409,
        JobsError::ShardStopped => 503,
        _ => 500,
    };
    fail(status, crate::ErrorChain(&e).to_string())
}

/// Answers a request whose path is `/quark/jobs` or below it.
pub(super) fn route(req: &Request, shared: &Shared) -> Answer {
    let rest = req.path.strip_prefix("/quark/jobs").unwrap_or("");
    if !(rest.is_empty() || rest.starts_with('/')) {
        return fail(404, format!("no route {}", req.path));
    }
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let read = req.method == "GET" || req.method == "HEAD";
    let write = req.method == "POST";
    let query = match parse_query(&req.query) {
        Ok(q) => q,
        Err(e) => return fail(400, e),
    };
    enum Op<'a> {
        List { dead: bool },
        Summary,
        Status(&'a str),
        Cancel(&'a str),
        Pause(bool),
        Replay(&'a str),
        Purge(&'a str),
    }
    let (op, wants_post) = match segs.as_slice() {
        [] => (Op::List { dead: false }, false),
        ["summary"] => (Op::Summary, false),
        ["dead-letters"] => (Op::List { dead: true }, false),
        ["pause"] => (Op::Pause(true), true),
        ["resume"] => (Op::Pause(false), true),
        ["dead-letters", id, "replay"] => (Op::Replay(id), true),
        ["dead-letters", id, "purge"] => (Op::Purge(id), true),
        [id, "cancel"] => (Op::Cancel(id), true),
        [id] => (Op::Status(id), false),
        _ => return fail(404, format!("no route {}", req.path)),
    };
    if wants_post && !write {
        return fail(405, format!("{} needs POST", req.path));
    }
    if !wants_post && !read {
        return fail(405, format!("{} needs GET", req.path));
    }
    let allowed: &[&str] = match op {
        Op::List { dead: false } => &["state", "type", "key", "limit", "cursor"],
        Op::List { dead: true } => &["type", "key", "limit", "cursor"],
        Op::Pause(_) => &["type"],
        _ => &[],
    };
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
    // Inputs are checked before the node is asked, so bad input is a 400 on any node.
    let parsed_id = match &op {
        Op::Status(id) | Op::Cancel(id) | Op::Replay(id) | Op::Purge(id) => {
            match id.parse::<JobId>() {
                Ok(id) => Some(id),
                Err(e) => return fail(400, format!("bad job id: {e} (expected shard.sequence)")),
            }
        }
        _ => None,
    };
    let list_query = match &op {
        Op::List { dead } => match list_query(&query, *dead) {
            Ok(q) => Some(q),
            Err(e) => return fail(400, e),
        },
        _ => None,
    };
    let jobs = match jobs_of(shared) {
        Ok(j) => j,
        Err(a) => return a,
    };
    let id = parsed_id.unwrap_or(JobId(0));
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    match op {
        Op::List { .. } => {
            let (q, limit) = list_query.unwrap_or_default();
            list(&jobs, q, limit)
        }
        Op::Summary => summary(&jobs),
        Op::Status(_) => match crate::block_on(jobs.status(id)) {
            Ok(s) => ok(&JobView::from(&s)),
            Err(e) => jobs_error(e),
        },
        Op::Cancel(_) => match crate::block_on(jobs.cancel(id)) {
            Ok(s) => ok(&JobView::from(&s)),
            Err(e) => jobs_error(e),
        },
        Op::Replay(_) => match crate::block_on(jobs.replay(id)) {
            Ok(s) => ok(&JobView::from(&s)),
            Err(e) => jobs_error(e),
        },
        Op::Purge(_) => {
            // Only a dead letter: `dead-letters purge` must not remove a completed job.
            match crate::block_on(jobs.status(id)) {
                Ok(s) if s.state == JobState::Dead => {}
                Ok(s) => {
                    return fail(
                        409,
                        format!(
                            "job {id} is {}, not a dead letter; only dead jobs are purged here",
                            job_state_name(s.state)
                        ),
                    )
                }
                Err(e) => return jobs_error(e),
            }
            match crate::block_on(jobs.purge(id)) {
                Ok(()) => ok(&serde_json::json!({ "purged": id.to_string() })),
                Err(e) => jobs_error(e),
            }
        }
        Op::Pause(paused) => {
            if let Err(e) = crate::block_on(jobs.set_paused(get("type"), paused)) {
                return jobs_error(e);
            }
            match crate::block_on(jobs.paused()) {
                Ok((all, types)) => ok(&PauseState { all, types }),
                Err(e) => jobs_error(e),
            }
        }
    }
}

/// The list query of `query` (and its page size); `dead`: the dead-letters route.
fn list_query(query: &[(String, String)], dead: bool) -> Result<(ListQuery, usize), String> {
    let mut q = ListQuery::default();
    let mut limit = JOBS_PAGE_DEFAULT;
    if dead {
        q.state = Some(JobState::Dead);
    }
    for (k, v) in query {
        match k.as_str() {
            "state" => {
                q.state = Some(JobState::parse(v).ok_or_else(|| {
                    let names: Vec<&str> = JOB_STATES.iter().map(|&s| job_state_name(s)).collect();
                    format!("bad state {v:?} (one of {})", names.join(", "))
                })?)
            }
            "type" => q.type_name = Some(v.clone()),
            "key" => q.concurrency_key = Some(v.clone()),
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=JOBS_PAGE_MAX).contains(n))
                    .ok_or_else(|| format!("bad limit {v:?} (1 to {JOBS_PAGE_MAX})"))?
            }
            "cursor" => q.after = Some(v.parse::<JobId>().map_err(|e| format!("bad cursor: {e}"))?),
            _ => {}
        }
    }
    Ok((q, limit))
}

/// One page: asks for one job more than the page holds, to know whether another page follows.
fn list(jobs: &Jobs, mut q: ListQuery, limit: usize) -> Answer {
    q.limit = limit + 1;
    match crate::block_on(jobs.list(q)) {
        Ok(mut all) => {
            let more = all.len() > limit;
            all.truncate(limit);
            let next_cursor = if more {
                all.last().map(|s| s.id.to_string())
            } else {
                None
            };
            ok(&JobsPage {
                jobs: all.iter().map(JobView::from).collect(),
                next_cursor,
            })
        }
        Err(e) => jobs_error(e),
    }
}

fn summary(jobs: &Jobs) -> Answer {
    let counts = match crate::block_on(jobs.counts()) {
        Ok(c) => c,
        Err(e) => return jobs_error(e),
    };
    let (all, types) = match crate::block_on(jobs.paused()) {
        Ok(p) => p,
        Err(e) => return jobs_error(e),
    };
    ok(&JobsSummary {
        counts: JOB_STATES
            .iter()
            .map(|&s| {
                (
                    job_state_name(s).to_owned(),
                    counts.get(&s).copied().unwrap_or(0),
                )
            })
            .collect(),
        paused: PauseState { all, types },
        types: jobs.type_names(),
    })
}

/// The node's `Jobs` handle, taken from shard 0 (which has one when the node runs jobs).
fn jobs_of(shared: &Shared) -> Result<Jobs, Answer> {
    from_shard0(
        shared,
        crate::jobs::local_jobs,
        "this node runs no job queue (it needs a [log] data_dir and a registered job type)",
    )
}

/// A node-wide handle that shard 0 keeps (`get` runs there): 503 while the node is not ready
/// or shard 0 does not answer within `PROBE_WAIT`, 404 with `absent` when shard 0 has none.
pub(super) fn from_shard0<T: Send + 'static>(
    shared: &Shared,
    get: fn() -> Option<T>,
    absent: &str,
) -> Result<T, Answer> {
    let phase = shared.phase();
    if phase != Phase::Ready {
        return Err(fail(503, format!("the node is {}", phase.name())));
    }
    let handle = {
        let slot = shared.engine.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|e| e.handle())
    };
    let Some(handle) = handle else {
        return Err(fail(503, "the node is not running"));
    };
    let (tx, rx) = mpsc::sync_channel(1);
    drop(handle.spawn_on(0, move || async move {
        let _ = tx.try_send(get());
    }));
    match rx.recv_timeout(PROBE_WAIT) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(fail(404, absent)),
        Err(_) => Err(fail(
            503,
            format!("shard 0 did not answer within {PROBE_WAIT:?}"),
        )),
    }
}

/// `a=1&b=x%20y` as pairs (percent-decoded, `+` is a space); an empty query is no pair.
pub(super) fn parse_query(q: &str) -> Result<Vec<(String, String)>, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Percent-decodes a path segment or query component.
pub(super) fn decode_component(s: &str) -> Result<String, String> {
    decode(s)
}

fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// Percent-encodes `s` for a query value or a path segment (clients of these routes).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trip() {
        let v = "cust 9/ä&=+%";
        let q = format!("key={}&limit=3&flag", encode_component(v));
        let pairs = parse_query(&q).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("key".to_owned(), v.to_owned()),
                ("limit".to_owned(), "3".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert!(parse_query("key=%4").is_err());
        assert!(parse_query("key=%zz").is_err());
        assert_eq!(parse_query("").unwrap(), vec![]);
    }
}
