//! Activities: ordinary async functions registered by name, run either as durable jobs (the
//! default: the jobs feature's retry, backoff, timeout and dead letters) or locally on the
//! instance's shard.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{ActivityOptions, WfShared};
use crate::jobs::{Job, JobContext, JobFailure, JobId, JobOptions, JobState, JobsError};

/// What an activity knows of the call it serves.
#[derive(Clone, Debug)]
pub struct ActivityContext {
    /// The calling instance.
    pub instance: String,
    /// The step's position in the run (instance + run + seq identify the call: use them as an
    /// idempotency key for outside effects).
    pub seq: u64,
    /// The run number.
    pub run: u64,
    /// The attempt (1 for the first; with jobs it keeps growing across restarts).
    pub attempt: u32,
    /// Where heartbeats go.
    beat: Heartbeats,
}

/// Where an activity's heartbeats go: its job's context, or the local run's watchdog.
#[derive(Clone, Default)]
enum Heartbeats {
    /// Not under a runner (e.g. a context made by a test).
    #[default]
    None,
    Job(JobContext),
    Local(Rc<LocalBeat>),
}

impl std::fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Heartbeats::None => "none",
            Heartbeats::Job(_) => "job",
            Heartbeats::Local(_) => "local",
        })
    }
}

/// A local activity's heartbeats (in memory: a local activity is not durable).
struct LocalBeat {
    last: Cell<Instant>,
    details: RefCell<Option<Vec<u8>>>,
}

impl ActivityContext {
    /// A context for calling an activity function directly (tests, stubs): its heartbeats go
    /// nowhere and it has no heartbeat details.
    pub fn new(instance: impl Into<String>, run: u64, seq: u64, attempt: u32) -> Self {
        ActivityContext {
            instance: instance.into(),
            seq,
            run,
            attempt,
            beat: Heartbeats::None,
        }
    }

    /// Reports that the activity is alive, with `details` (serde; e.g. how far it got). With a
    /// heartbeat timeout ([`ActivityOptions::heartbeat_timeout`]) an attempt that stops
    /// heartbeating is timed out and retried; the next attempt reads the latest details with
    /// [`ActivityContext::heartbeat_details`] and can resume from them. For a job activity this
    /// is [`JobContext::heartbeat`]: the details are written to the log throttled (at most one
    /// record per quarter of the timeout) and survive a restart; a local activity keeps them in
    /// memory. Details that do not serialise are dropped (the heartbeat still counts).
    pub fn heartbeat<T: Serialize>(&self, details: &T) {
        let bytes = postcard::to_allocvec(details).ok();
        match &self.beat {
            Heartbeats::None => {}
            Heartbeats::Job(ctx) => match bytes {
                Some(b) => ctx.heartbeat(b),
                None => ctx.heartbeat(ctx.heartbeat_details().unwrap_or_default()),
            },
            Heartbeats::Local(l) => {
                l.last.set(Instant::now());
                if let Some(b) = bytes {
                    *l.details.borrow_mut() = Some(b);
                }
            }
        }
    }

    /// The details of the latest heartbeat of this call (an earlier attempt's, also across a
    /// restart for a job activity), decoded as `T`; `None` if there was none or it does not
    /// decode as `T`.
    pub fn heartbeat_details<T: DeserializeOwned>(&self) -> Option<T> {
        let bytes = match &self.beat {
            Heartbeats::None => None,
            Heartbeats::Job(ctx) => ctx.heartbeat_details(),
            Heartbeats::Local(l) => l.details.borrow().clone(),
        }?;
        postcard::from_bytes(&bytes).ok()
    }
}

/// An activity's failure: retried under the policy unless fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActivityError {
    /// The message, recorded in the history on the last attempt.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retry: bool,
}

impl ActivityError {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> Self {
        ActivityError {
            message: message.into(),
            retry: true,
        }
    }
    /// A failure no retry will fix: the step fails at once.
    pub fn fatal(message: impl Into<String>) -> Self {
        ActivityError {
            message: message.into(),
            retry: false,
        }
    }
}

/// The job that runs one activity call (type `quark.wf.activity`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct ActivityJob {
    pub instance: String,
    pub run: u64,
    pub seq: u64,
    pub name: String,
    pub input: Vec<u8>,
}

impl Job for ActivityJob {
    const TYPE_NAME: &'static str = "quark.wf.activity";
}

/// The job handler: runs the named activity and stores its output as the job's result.
pub(crate) async fn run_job(
    shared: Arc<WfShared>,
    job: ActivityJob,
    ctx: JobContext,
) -> Result<(), JobFailure> {
    let Some(f) = shared.activities.get(&job.name).cloned() else {
        return Err(JobFailure::fatal(format!(
            "activity {:?} is not registered on this node",
            job.name
        )));
    };
    let actx = ActivityContext {
        instance: job.instance,
        seq: job.seq,
        run: job.run,
        attempt: ctx.attempt(),
        beat: Heartbeats::Job(ctx.clone()),
    };
    match f(job.input, actx).await {
        Ok(out) => {
            ctx.set_result(out);
            Ok(())
        }
        Err(e) if e.retry => Err(JobFailure::retry(e.message)),
        Err(e) => Err(JobFailure::fatal(e.message)),
    }
}

/// Enqueues the job of one activity call. The unique key makes an enqueue repeated after a
/// crash (before the `ActivityJob` record was durable) find the job while it is still queued.
pub(crate) async fn enqueue_job(
    shared: &WfShared,
    instance: &str,
    run: u64,
    seq: u64,
    name: &str,
    input: Vec<u8>,
    options: &ActivityOptions,
) -> Result<JobId, String> {
    let Some(jobs) = shared.jobs.get() else {
        return Err("the node's job queue is not running".to_owned());
    };
    let job = ActivityJob {
        instance: instance.to_owned(),
        run,
        seq,
        name: name.to_owned(),
        input,
    };
    let mut opts = JobOptions::default()
        .retry(options.retry)
        .timeout(options.timeout)
        .unique(format!("wf/{instance}/{run}/{seq}"));
    opts.heartbeat_timeout = options.heartbeat_timeout;
    jobs.enqueue(&job, opts).await.map_err(|e| {
        format!(
            "enqueueing activity {name:?} failed: {}",
            crate::ErrorChain(&e)
        )
    })
}

/// Waits for an activity's job: `None` if the queue does not know the job (it finished
/// before a restart and was forgotten), else its output or last error.
pub(crate) async fn wait_job(
    shared: &WfShared,
    name: &str,
    id: JobId,
) -> Option<Result<Vec<u8>, String>> {
    let jobs = shared.jobs.get()?;
    let status = match jobs.wait(id).await {
        Ok(s) => s,
        Err(JobsError::NotFound(_)) => return None,
        Err(e) => {
            return Some(Err(format!(
                "waiting for activity {name:?} (job {id}) failed: {e}"
            )))
        }
    };
    Some(match status.state {
        JobState::Completed => Ok(status.result.unwrap_or_default()),
        JobState::Cancelled => Err(format!("activity {name:?} (job {id}) was cancelled")),
        _ => Err(status
            .last_error
            .unwrap_or_else(|| format!("activity {name:?} (job {id}) is dead"))),
    })
}

/// Runs one activity call locally (on the instance's shard) under its retry policy and
/// timeout; returns its output or last error.
pub(crate) async fn run_local(
    shared: &WfShared,
    instance: String,
    run: u64,
    seq: u64,
    name: &str,
    input: Vec<u8>,
    options: &ActivityOptions,
) -> Result<Vec<u8>, String> {
    let Some(f) = shared.activities.get(name).cloned() else {
        return Err(format!("activity {name:?} is not registered on this node"));
    };
    let max = options.retry.max_attempts.max(1);
    let mut attempt = 1;
    // Shared by the attempts, so that an attempt reads the previous one's details.
    let beat = Rc::new(LocalBeat {
        last: Cell::new(Instant::now()),
        details: RefCell::new(None),
    });
    loop {
        beat.last.set(Instant::now());
        let actx = ActivityContext {
            instance: instance.clone(),
            seq,
            run,
            attempt,
            beat: Heartbeats::Local(Rc::clone(&beat)),
        };
        let call = f(input.clone(), actx);
        let timeout = std::pin::pin!(crate::sleep(options.timeout));
        let silent = std::pin::pin!(local_heartbeat_deadline(&beat, options.heartbeat_timeout));
        let stop = futures::future::select(timeout, silent);
        let r = match futures::future::select(call, stop).await {
            futures::future::Either::Left((r, _)) => r,
            futures::future::Either::Right((futures::future::Either::Left(_), _)) => {
                Err(ActivityError::retry(format!(
                    "attempt {attempt} timed out after {} ms",
                    options.timeout.as_millis()
                )))
            }
            futures::future::Either::Right((futures::future::Either::Right(_), _)) => {
                Err(ActivityError::retry(format!(
                    "attempt {attempt} timed out: no heartbeat for {} ms",
                    options.heartbeat_timeout.unwrap_or_default().as_millis()
                )))
            }
        };
        match r {
            Ok(out) => return Ok(out),
            Err(e) if !e.retry || attempt >= max => return Err(e.message),
            Err(_) => {
                let r = (super::history::fnv1a(&[attempt as u8, seq as u8]) % 1000) as f64 / 1000.0;
                crate::sleep(std::time::Duration::from_millis(
                    options.retry.delay_ms(attempt, r),
                ))
                .await;
                attempt += 1;
            }
        }
    }
}

/// Resolves once a local attempt has not heartbeated for `timeout` (never without one).
async fn local_heartbeat_deadline(beat: &LocalBeat, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return futures::future::pending().await;
    };
    loop {
        let deadline = beat.last.get() + timeout;
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        crate::sleep(deadline - now).await;
    }
}
