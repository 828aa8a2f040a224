//! The job records stored in a shard's log, and their keys.
//!
//! Every record of job `id` has the key `jobs/j/<id: u64 big-endian>`; its payload is one
//! postcard-encoded [`JobRecord`] after a format byte ([`FORMAT`]). Format 1 (written before
//! heartbeats) differs only in [`StoredJob`], which lacked `heartbeat_timeout_ms`; this build
//! reads both and writes format 2. The reservation of job
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
/// The format byte in front of every record payload this build writes.
pub const FORMAT: u8 = 2;
/// The format before heartbeats: [`StoredJob`] without `heartbeat_timeout_ms` (read, never
/// written).
pub const FORMAT_V1: u8 = 1;

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
    /// A running attempt that does not heartbeat for this long (ms) is timed out and retried
    /// (0 = no heartbeat timeout). Format 2.
    pub heartbeat_timeout_ms: u64,
}

/// [`StoredJob`] as format 1 wrote it (no heartbeat timeout).
#[derive(Deserialize)]
struct StoredJobV1 {
    type_name: String,
    payload: Vec<u8>,
    priority: i32,
    run_at_ms: u64,
    enqueued_ms: u64,
    retry: RetryPolicy,
    timeout_ms: u64,
    unique_key: Option<String>,
    concurrency_key: Option<String>,
    concurrency_limit: u32,
    key_rate_limit: Option<RateLimit>,
    depends_on: Vec<u64>,
    on_parent_failure: OnParentFailure,
}

impl From<StoredJobV1> for StoredJob {
    fn from(v: StoredJobV1) -> Self {
        StoredJob {
            type_name: v.type_name,
            payload: v.payload,
            priority: v.priority,
            run_at_ms: v.run_at_ms,
            enqueued_ms: v.enqueued_ms,
            retry: v.retry,
            timeout_ms: v.timeout_ms,
            unique_key: v.unique_key,
            concurrency_key: v.concurrency_key,
            concurrency_limit: v.concurrency_limit,
            key_rate_limit: v.key_rate_limit,
            depends_on: v.depends_on,
            on_parent_failure: v.on_parent_failure,
            heartbeat_timeout_ms: 0,
        }
    }
}

/// [`StoredSchedule`] as format 1 wrote it.
#[derive(Deserialize)]
struct StoredScheduleV1 {
    name: String,
    expr: String,
    time_zone: String,
    job: StoredJobV1,
    missed: super::MissedTicks,
    paused: bool,
    last_ms: i64,
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
    /// The running attempt heartbeated (throttled: at most one record per quarter of the
    /// job's heartbeat timeout, carrying the latest details; see `JobContext::heartbeat`).
    /// The latest details are handed to later attempts. Format 2.
    Heartbeat {
        /// The attempt that heartbeated (a record of an older attempt than one already
        /// folded is ignored).
        attempt: u32,
        /// Wall-clock ms (the jobs clock).
        at_ms: u64,
        /// The details the handler passed.
        details: Vec<u8>,
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
            heartbeat_timeout_ms: 8,
        };
        let direct = encode_enqueued(&job);
        assert_eq!(direct, encode(&JobRecord::Enqueued(job.clone())));
        assert_eq!(decode(&direct), Ok(JobRecord::Enqueued(job)));
    }

    #[test]
    fn format_1_records_still_decode() {
        let v1 = (
            "t".to_string(),
            vec![1u8, 2],
            -4i32,
            5u64,
            6u64,
            RetryPolicy::default(),
            7u64,
            Some("u".to_string()),
            None::<String>,
            1u32,
            None::<RateLimit>,
            vec![9u64],
            OnParentFailure::Fail,
        );
        let mut bytes = vec![FORMAT_V1, 0];
        bytes.extend(postcard::to_allocvec(&v1).unwrap());
        let Ok(JobRecord::Enqueued(job)) = decode(&bytes) else {
            panic!("a format-1 enqueue record must decode");
        };
        assert_eq!((job.timeout_ms, job.heartbeat_timeout_ms), (7, 0));
        assert_eq!(job.depends_on, vec![9]);
        // Other format-1 records have the format-2 layout.
        let mut started = vec![FORMAT_V1];
        started.extend(
            postcard::to_allocvec(&JobRecord::Started {
                attempt: 3,
                at_ms: 4,
            })
            .unwrap(),
        );
        assert_eq!(
            decode(&started),
            Ok(JobRecord::Started {
                attempt: 3,
                at_ms: 4
            })
        );
        let mut sched = vec![FORMAT_V1];
        sched.extend(
            postcard::to_allocvec(&(
                "n",
                "* * * * *",
                "UTC",
                v1,
                super::super::MissedTicks::Skip,
                true,
                11i64,
            ))
            .unwrap(),
        );
        let s = decode_schedule(&sched).expect("a format-1 schedule decodes");
        assert_eq!(
            (s.name.as_str(), s.job.heartbeat_timeout_ms, s.last_ms),
            ("n", 0, 11)
        );
        let s2 = StoredSchedule {
            name: "m".into(),
            ..s
        };
        assert_eq!(decode_schedule(&encode_schedule(&s2)), Ok(s2));
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

/// Decodes a record's payload (format 2, or format 1: see the module documentation).
pub fn decode(bytes: &[u8]) -> Result<JobRecord, RecordError> {
    let de = |e: postcard::Error| RecordError::Decode(e.to_string());
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&FORMAT, body)) => postcard::from_bytes(body).map_err(de),
        // Format 1: `Enqueued` (variant 0) holds the old StoredJob; every other variant has
        // the same layout in both formats.
        Some((&FORMAT_V1, [0, job @ ..])) => postcard::from_bytes::<StoredJobV1>(job)
            .map(|j| JobRecord::Enqueued(j.into()))
            .map_err(de),
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body).map_err(de),
        Some((&f, _)) => Err(RecordError::Format(f)),
    }
}

// Format: { FORMAT u8 | postcard(StoredSchedule) }
/// Encodes a schedule record's payload.
pub fn encode_schedule(s: &StoredSchedule) -> Vec<u8> {
    let mut out = vec![FORMAT];
    out.extend(postcard::to_allocvec(s).unwrap_or_default());
    out
}

/// Decodes a schedule record's payload (format 2 or 1).
pub fn decode_schedule(bytes: &[u8]) -> Result<StoredSchedule, RecordError> {
    let de = |e: postcard::Error| RecordError::Decode(e.to_string());
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&FORMAT, body)) => postcard::from_bytes(body).map_err(de),
        Some((&FORMAT_V1, body)) => postcard::from_bytes::<StoredScheduleV1>(body)
            .map(|v| StoredSchedule {
                name: v.name,
                expr: v.expr,
                time_zone: v.time_zone,
                job: v.job.into(),
                missed: v.missed,
                paused: v.paused,
                last_ms: v.last_ms,
            })
            .map_err(de),
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

/// Decodes the pause state (its layout is the same in formats 1 and 2).
pub fn decode_pause(bytes: &[u8]) -> Result<StoredPause, RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&(FORMAT | FORMAT_V1), body)) => {
            postcard::from_bytes(body).map_err(|e| RecordError::Decode(e.to_string()))
        }
        Some((&f, _)) => Err(RecordError::Format(f)),
    }
}
