//! Activities: ordinary async functions registered by name, run either as durable jobs (the
//! default: the jobs feature's retry, backoff, timeout and dead letters) or locally on the
//! instance's shard.

use std::sync::Arc;

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
    let opts = JobOptions::default()
        .retry(options.retry)
        .timeout(options.timeout)
        .unique(format!("wf/{instance}/{run}/{seq}"));
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
    loop {
        let actx = ActivityContext {
            instance: instance.clone(),
            seq,
            run,
            attempt,
        };
        let call = f(input.clone(), actx);
        let timeout = crate::sleep(options.timeout);
        let r = match futures::future::select(call, std::pin::pin!(timeout)).await {
            futures::future::Either::Left((r, _)) => r,
            futures::future::Either::Right(_) => Err(ActivityError::retry(format!(
                "attempt {attempt} timed out after {} ms",
                options.timeout.as_millis()
            ))),
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
