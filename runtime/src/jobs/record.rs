//! The job records stored in a shard's log, and their keys.
//!
//! Every record of job `id` has the key `jobs/j/<id: u64 big-endian>`; its payload is one
//! postcard-encoded [`JobRecord`] after a format byte ([`FORMAT`]). The reservation of job
//! sequence numbers is a snapshot record under [`HW_KEY`]. Terminal records (completed,
//! cancelled) are snapshots, so they supersede the job's earlier records; a purge is a
//! truncate of the key.

use serde::{Deserialize, Serialize};

use super::{OnParentFailure, RateLimit, RetryPolicy};

/// Prefix of every job record key.
pub const JOB_KEY_PREFIX: &[u8] = b"jobs/j/";
/// Prefix of the cron schedule records (`jobs/c/<name>`, snapshots of [`StoredSchedule`]).
pub const SCHEDULE_KEY_PREFIX: &[u8] = b"jobs/c/";
/// Key of the sequence reservation record (payload: the reserved bound, postcard `u64`).
pub const HW_KEY: &[u8] = b"jobs/hw";
/// Key of the shard's pause state (a snapshot of [`StoredPause`]).
pub const PAUSE_KEY: &[u8] = b"jobs/p";
/// The format byte in front of every record payload.
pub const FORMAT: u8 = 1;

/// The key of job `id`'s records.
pub fn job_key(id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(JOB_KEY_PREFIX.len() + 8);
    k.extend_from_slice(JOB_KEY_PREFIX);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The job id in a job record key.
pub fn id_of_key(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(JOB_KEY_PREFIX)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// Everything an enqueue stores about a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredJob {
    /// The registered job type's name.
    pub type_name: String,
    /// The payload (postcard of the job type).
    pub payload: Vec<u8>,
    /// Higher runs first.
    pub priority: i32,
    /// Not before this wall-clock time (ms since the epoch).
    pub run_at_ms: u64,
    /// When it was enqueued (ms since the epoch).
    pub enqueued_ms: u64,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Timeout of one attempt in ms (0 = none).
    pub timeout_ms: u64,
    /// Unique key.
    pub unique_key: Option<String>,
    /// Concurrency key.
    pub concurrency_key: Option<String>,
    /// Maximum running jobs with the same concurrency key.
    pub concurrency_limit: u32,
    /// Rate limit of the concurrency key.
    pub key_rate_limit: Option<RateLimit>,
    /// Jobs that must complete before this one runs.
    pub depends_on: Vec<u64>,
    /// What a cancelled or dead parent does to this job.
    pub on_parent_failure: OnParentFailure,
}

/// A cron schedule as stored (the latest snapshot of its key wins).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredSchedule {
    /// Its name.
    pub name: String,
    /// The cron expression.
    pub expr: String,
    /// The time zone name.
    pub time_zone: String,
    /// The job each occurrence enqueues.
    pub job: StoredJob,
    /// What to do with occurrences missed while the node was down or the schedule paused.
    pub missed: super::MissedTicks,
    /// Paused: no occurrence fires.
    pub paused: bool,
    /// The last occurrence handled (fired or skipped), Unix ms.
    pub last_ms: i64,
}

/// Which job types the shard does not start (durable: [`crate::jobs::Jobs::set_paused`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredPause {
    /// Every type is paused.
    pub all: bool,
    /// These types are paused (by name; a name no longer registered is kept).
    pub types: Vec<String>,
}

/// The key of schedule `name`.
pub fn schedule_key(name: &str) -> Vec<u8> {
    let mut k = SCHEDULE_KEY_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// One state change of a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum JobRecord {
    /// Accepted (the first record of a job).
    Enqueued(StoredJob),
    /// Attempt `attempt` started (durable before the handler runs).
    Started {
        /// 1-based, increasing over the job's life (also across restarts).
        attempt: u32,
        /// Wall-clock ms.
        at_ms: u64,
    },
    /// Intermediate data saved by the handler; handed to the next attempt.
    Checkpoint {
        /// The data.
        data: Vec<u8>,
    },
    /// Attempt `attempt` failed (error, timeout, or interrupted by a restart).
    Failed {
        /// The attempt.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// When it is retried; `None` = no attempts left: dead letter.
        retry_at_ms: Option<u64>,
    },
    /// The job finished (terminal; a snapshot record).
    Completed {
        /// Wall-clock ms.
        at_ms: u64,
        /// The attempt that succeeded.
        attempt: u32,
        /// The handler's result, if it set one.
        result: Option<Vec<u8>>,
    },
    /// The job was cancelled (terminal; a snapshot record).
    Cancelled {
        /// Wall-clock ms.
        at_ms: u64,
        /// The attempt that was running, 0 if it was queued.
        attempt: u32,
    },
    /// The job was queued again (dead-letter replay, or the extra run a unique enqueue asked
    /// for while it ran): its attempt budget restarts after `base` attempts.
    Requeued {
        /// Attempts made before this requeue (attempt numbers keep increasing).
        base: u32,
        /// Not before this wall-clock time.
        run_at_ms: u64,
    },
    /// A unique enqueue arrived while the job ran: run it once more after the current run.
    RerunRequested,
    /// A job this one depends on completed (written with that job's completion when
    /// possible), with its result.
    ParentDone {
        /// The parent.
        parent: u64,
        /// Its result.
        result: Option<Vec<u8>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_enqueued_is_the_enqueued_record() {
        let job = StoredJob {
            type_name: "t".into(),
            payload: vec![1, 2, 3],
            priority: -4,
            run_at_ms: 5,
            enqueued_ms: 6,
            retry: RetryPolicy::default(),
            timeout_ms: 7,
            unique_key: Some("u".into()),
            concurrency_key: None,
            concurrency_limit: 1,
            key_rate_limit: None,
            depends_on: vec![9],
            on_parent_failure: OnParentFailure::Fail,
        };
        let direct = encode_enqueued(&job);
        assert_eq!(direct, encode(&JobRecord::Enqueued(job.clone())));
        assert_eq!(decode(&direct), Ok(JobRecord::Enqueued(job)));
    }
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The format byte is not one this build reads.
    #[error("job record format {0} is not supported (this build reads format {FORMAT})")]
    Format(u8),
    /// The payload is empty.
    #[error("empty job record")]
    Empty,
    /// The body did not decode.
    #[error("job record did not decode: {0}")]
    Decode(String),
}

/// Encodes a record's payload.
pub fn encode(r: &JobRecord) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Serialising plain data into a Vec cannot fail.
    let body = postcard::to_allocvec(r).unwrap_or_default();
    out.extend_from_slice(&body);
    out
}

/// Encodes `JobRecord::Enqueued(job)` without cloning the job (postcard writes an enum as
/// its variant index, a varint, then the fields; `Enqueued` is variant 0).
pub fn encode_enqueued(job: &StoredJob) -> Vec<u8> {
    let mut out = vec![FORMAT, 0];
    out.extend(postcard::to_allocvec(job).unwrap_or_default());
    out
}

/// Decodes a record's payload.
pub fn decode(bytes: &[u8]) -> Result<JobRecord, RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&FORMAT, body)) => {
            postcard::from_bytes(body).map_err(|e| RecordError::Decode(e.to_string()))
        }
        Some((&f, _)) => Err(RecordError::Format(f)),
    }
}

// Format: { FORMAT u8 | postcard(StoredPause) }
/// Encodes the pause state.
pub fn encode_pause(p: &StoredPause) -> Vec<u8> {
    let mut out = vec![FORMAT];
    out.extend(postcard::to_allocvec(p).unwrap_or_default());
    out
}

/// Decodes the pause state.
pub fn decode_pause(bytes: &[u8]) -> Result<StoredPause, RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&FORMAT, body)) => {
            postcard::from_bytes(body).map_err(|e| RecordError::Decode(e.to_string()))
        }
        Some((&f, _)) => Err(RecordError::Format(f)),
    }
}
