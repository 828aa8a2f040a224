//! Durable jobs on the per-shard log.
//!
//! A *job* is a registered job type's name, a serde payload, a priority, a schedule (now, at a
//! time, after a delay), a [`RetryPolicy`], a timeout, and optionally a unique key and a
//! concurrency key. Each job is owned by one shard (placed by its concurrency key, else its
//! unique key, else spread round-robin) and its every state change is a record in that shard's
//! log, so an acknowledged enqueue is durable under the log's fsync policy and the shard
//! rebuilds its queue from the log when the node restarts. Execution is *at least once*: a job
//! whose handler was running when the node died runs again after the restart, with the next
//! attempt number. The guide is `docs/JOBS.md`.
//!
//! ```no_run
//! use quark::jobs::{Job, JobContext, JobFailure, JobOptions, JobTypeConfig};
//! use quark::{block_on, Node};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendEmail { to: String }
//! impl Job for SendEmail { const TYPE_NAME: &'static str = "send_email"; }
//!
//! let node = Node::builder()
//!     .config_file("quark.toml").unwrap() // needs a [log] section
//!     .register_job::<SendEmail, _, _>(JobTypeConfig::default(), |job: SendEmail, ctx: JobContext| async move {
//!         println!("attempt {} of sending to {}", ctx.attempt(), job.to);
//!         Ok::<(), JobFailure>(())
//!     })
//!     .start()
//!     .unwrap();
//! let jobs = node.jobs();
//! let id = block_on(jobs.enqueue(&SendEmail { to: "ann@example.com".into() }, JobOptions::default())).unwrap();
//! let status = block_on(jobs.wait(id)).unwrap();
//! println!("{id}: {:?}", status.state);
//! ```

pub mod cron;
mod node_limit;
mod queue;
pub mod record;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quark_persist::AppendError;
use quark_shard::{EngineHandle, ShardId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use queue::JobContext;
use record::StoredJob;

/// A job type: its payload (serde) and its stable name (stored with every job: never rename a
/// type that has jobs queued).
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The registered name.
    const TYPE_NAME: &'static str;
}

/// A job's id: the owning shard in the top 16 bits, a per-shard sequence number below.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl JobId {
    /// The shard that owns the job.
    pub fn shard(self) -> ShardId {
        (self.0 >> 48) as ShardId
    }

    fn new(shard: ShardId, seq: u64) -> Self {
        JobId((u64::from(shard) << 48) | (seq & SEQ_MASK))
    }
}

const SEQ_MASK: u64 = (1 << 48) - 1;

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.shard(), self.0 & SEQ_MASK)
    }
}

impl std::str::FromStr for JobId {
    type Err = String;
    /// Parses `shard.seq` (as displayed) or the raw `u64`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((a, b)) = s.split_once('.') {
            let shard: ShardId = a.parse().map_err(|e| format!("job id {s:?}: shard: {e}"))?;
            let seq: u64 = b
                .parse()
                .map_err(|e| format!("job id {s:?}: sequence: {e}"))?;
            return Ok(JobId::new(shard, seq));
        }
        s.parse()
            .map(JobId)
            .map_err(|e| format!("job id {s:?}: {e}"))
    }
}

/// Retries of a failed attempt: exponential backoff with jitter and a cap.
///
/// The delay before attempt `n + 1` (after attempt `n` failed) is
/// `min(cap, base * factor^(n-1))`, then reduced by a random fraction up to `jitter`
/// (0.0 = exact, 1.0 = "full jitter": anywhere in `[0, delay]`).
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry). At least 1.
    pub max_attempts: u32,
    /// Delay after the first failure, in ms.
    pub base_ms: u64,
    /// Growth per attempt (≥ 1.0).
    pub factor: f64,
    /// Upper bound of a delay, in ms.
    pub cap_ms: u64,
    /// Random reduction of each delay, 0.0..=1.0.
    pub jitter: f64,
}

impl Eq for RetryPolicy {}

impl Default for RetryPolicy {
    /// 10 attempts, 1 s doubling up to 10 min, 20 % jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_ms: 1_000,
            factor: 2.0,
            cap_ms: 600_000,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// No retry: the first failure is final.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The delay (ms) before the attempt after failed attempt `attempt` (1-based), for a
    /// uniform random `r` in `[0, 1)`.
    pub fn delay_ms(&self, attempt: u32, r: f64) -> u64 {
        let exp = self
            .factor
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(1_000) as i32);
        let raw = (self.base_ms as f64 * exp).min(self.cap_ms as f64);
        let jitter = self.jitter.clamp(0.0, 1.0) * r.clamp(0.0, 1.0);
        (raw * (1.0 - jitter)).max(0.0) as u64
    }

    fn check(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(format!("retry.factor must be ≥ 1.0, got {}", self.factor));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "retry.jitter must be in 0..=1, got {}",
                self.jitter
            ));
        }
        Ok(())
    }
}

/// A rate limit: at most `tokens` starts per `interval` (a token bucket of `tokens`
/// capacity, refilled continuously), so bursts up to `tokens` are allowed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Starts per interval (and the burst size). At least 1.
    pub tokens: u32,
    /// The interval, in ms. At least 1.
    pub interval_ms: u64,
}

impl RateLimit {
    /// `tokens` starts per `interval`.
    pub fn per(tokens: u32, interval: Duration) -> Self {
        RateLimit {
            tokens,
            interval_ms: interval.as_millis() as u64,
        }
    }

    fn check(&self, what: &str) -> Result<(), String> {
        if self.tokens == 0 || self.interval_ms == 0 {
            return Err(format!("{what}: tokens and interval must be at least 1"));
        }
        Ok(())
    }
}

/// A job a new job depends on: it runs only after that one completed, and reads its result
/// ([`JobContext::parent_results`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Dep {
    /// An existing job (owned by the same shard: the new job is placed there when it has no
    /// key of its own).
    Job(JobId),
    /// The job at this index of the same [`Jobs::enqueue_batch`] call.
    InBatch(usize),
}

/// What happens to a job when a job it depends on is cancelled or dead.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OnParentFailure {
    /// It is cancelled (and so are its own dependents).
    #[default]
    Cancel,
    /// It is dead ("parent X failed"), so it can be inspected and replayed.
    Fail,
}

/// What a cron schedule does with occurrences it missed (node down, schedule paused): those
/// more than [`JobsConfig::cron_grace`] late.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MissedTicks {
    /// One job for all the missed occurrences.
    #[default]
    FireOnce,
    /// One job per missed occurrence (at most 1000).
    FireAll,
    /// None; the schedule continues with the next occurrence.
    Skip,
}

/// A recurring job: `job` is enqueued at every occurrence of `cron` in `time_zone`.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    /// Its name (unique per node; scheduling the same name again replaces it).
    pub name: String,
    /// Five-field cron expression (see [`cron::CronExpr`]).
    pub cron: String,
    /// Time zone name (e.g. `Europe/Paris`, `UTC`), from the system's zone database.
    pub time_zone: String,
    /// The job enqueued at each occurrence.
    pub job: NewJob,
    /// Missed-occurrence policy.
    pub missed: MissedTicks,
}

/// A stored schedule's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleStatus {
    /// Its name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The time zone.
    pub time_zone: String,
    /// Paused.
    pub paused: bool,
    /// The last occurrence handled (Unix ms).
    pub last_ms: i64,
    /// The next occurrence (Unix ms), if any.
    pub next_ms: Option<i64>,
}

/// When a job may first run.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Schedule {
    /// As soon as possible.
    #[default]
    Now,
    /// Not before this wall-clock time (ms since the Unix epoch, on the jobs [`Clock`]).
    AtMs(u64),
    /// Not before this long after the enqueue.
    After(Duration),
}

/// Per-job options of an enqueue. `None` fields take the job type's defaults
/// ([`JobTypeConfig`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// Higher runs first (see [`JobsConfig::aging`] for how waiting raises it). Default 0.
    pub priority: i32,
    /// When it may first run.
    pub schedule: Schedule,
    /// Retry policy (default: the type's).
    pub retry: Option<RetryPolicy>,
    /// Timeout of one attempt (default: the type's; `Some(Duration::ZERO)`: none).
    pub timeout: Option<Duration>,
    /// While a job with this unique key is queued, enqueueing another returns its id; while it
    /// runs, the new enqueue makes it run once more after the current run.
    pub unique_key: Option<String>,
    /// Jobs with the same concurrency key run at most [`JobOptions::concurrency_limit`] at a
    /// time; they are all owned by one shard (placed by this key).
    pub concurrency_key: Option<String>,
    /// Limit for the concurrency key (default 1).
    pub concurrency_limit: Option<u32>,
    /// Jobs that must complete first (a DAG; cycles are refused at enqueue).
    pub depends_on: Vec<Dep>,
    /// What a cancelled or dead parent does to this job.
    pub on_parent_failure: OnParentFailure,
    /// Rate limit of the concurrency key: starts of jobs with this key (needs
    /// `concurrency_key`; the bucket is per key, its size taken from the job being started).
    pub key_rate_limit: Option<RateLimit>,
}

impl JobOptions {
    /// Sets the priority.
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }
    /// Runs not before `delay` from now.
    pub fn after(mut self, delay: Duration) -> Self {
        self.schedule = Schedule::After(delay);
        self
    }
    /// Runs not before wall-clock `ms`.
    pub fn at_ms(mut self, ms: u64) -> Self {
        self.schedule = Schedule::AtMs(ms);
        self
    }
    /// Sets the retry policy.
    pub fn retry(mut self, r: RetryPolicy) -> Self {
        self.retry = Some(r);
        self
    }
    /// Sets the timeout of one attempt.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Sets the unique key.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
    /// Sets the concurrency key and its limit.
    pub fn concurrency(mut self, key: impl Into<String>, limit: u32) -> Self {
        self.concurrency_key = Some(key.into());
        self.concurrency_limit = Some(limit);
        self
    }
    /// Adds a dependency.
    pub fn depends_on(mut self, dep: Dep) -> Self {
        self.depends_on.push(dep);
        self
    }
    /// Sets what a failed parent does to this job.
    pub fn on_parent_failure(mut self, p: OnParentFailure) -> Self {
        self.on_parent_failure = p;
        self
    }
    /// Sets the rate limit of the concurrency key.
    pub fn key_rate(mut self, limit: RateLimit) -> Self {
        self.key_rate_limit = Some(limit);
        self
    }
}

/// Settings of one job type (given at registration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTypeConfig {
    /// Running jobs of this type per shard at most (default 1024).
    pub max_running_per_shard: u32,
    /// Running jobs of this type on the whole node at most, all shards together (default
    /// `None`: only the per-shard limits apply). A shard refused a slot is woken when another
    /// shard frees one.
    pub max_running_per_node: Option<u32>,
    /// Default retry policy.
    pub retry: RetryPolicy,
    /// Default timeout of one attempt (default 5 min; zero: none).
    pub timeout: Duration,
    /// Starts of this type per shard (default none).
    pub rate_limit: Option<RateLimit>,
}

impl Default for JobTypeConfig {
    fn default() -> Self {
        JobTypeConfig {
            max_running_per_shard: 1024,
            max_running_per_node: None,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(300),
            rate_limit: None,
        }
    }
}

/// The jobs clock: wall-clock milliseconds. Schedules, backoff and aging read it; tests inject
/// a [`ManualClock`]. (Attempt timeouts run on the shard's timers.)
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::journal::now_ms()
    }
}

/// A clock that moves only when told (tests). After [`ManualClock::advance`], call
/// [`Jobs::poke`] so the shards look at their schedules again.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock showing `ms`.
    pub fn new(ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }
    /// Moves it forward.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// Sets it.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Node-wide job settings (`NodeBuilder::jobs_config`).
#[derive(Clone)]
pub struct JobsConfig {
    /// The clock of schedules, backoff and aging.
    pub clock: Arc<dyn Clock>,
    /// Priority aging: a ready job gains one priority level per `aging` of waiting, so a job
    /// of priority `p` waits at most `(p_max - p) * aging` behind jobs that became ready after
    /// it. Default 1 s.
    pub aging: Duration,
    /// Running jobs per shard at most, all types together (default 4096).
    pub max_running_per_shard: u32,
    /// Finished jobs (completed, cancelled) whose status stays queryable in memory per shard
    /// (default 10 000; the oldest are forgotten first).
    pub finished_kept: usize,
    /// How long the log keeps a finished job's terminal record (default 0: compaction may drop
    /// it at once; a restart then no longer knows the job).
    pub finished_retention: Duration,
    /// Longest wait of a shard's scheduler between looks at its schedule (default 100 ms).
    pub idle_poll: Duration,
    /// A cron occurrence later than this when the scheduler handles it counts as *missed*
    /// (its schedule's [`MissedTicks`] policy applies); default 60 s.
    pub cron_grace: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            clock: Arc::new(SystemClock),
            aging: Duration::from_secs(1),
            max_running_per_shard: 4096,
            finished_kept: 10_000,
            finished_retention: Duration::ZERO,
            idle_poll: Duration::from_millis(100),
            cron_grace: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for JobsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsConfig")
            .field("aging", &self.aging)
            .field("max_running_per_shard", &self.max_running_per_shard)
            .field("finished_kept", &self.finished_kept)
            .field("finished_retention", &self.finished_retention)
            .field("idle_poll", &self.idle_poll)
            .finish_non_exhaustive()
    }
}

/// How a handler attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    /// The message stored with the failure.
    pub message: String,
    /// False: do not retry (the job goes to the dead letters at once).
    pub retry: bool,
}

impl JobFailure {
    /// A failure that is retried under the job's policy.
    pub fn retry(message: impl Into<String>) -> Self {
        JobFailure {
            message: message.into(),
            retry: true,
        }
    }
    /// A failure that is final.
    pub fn fatal(message: impl Into<String>) -> Self {
        JobFailure {
            message: message.into(),
            retry: false,
        }
    }
}

impl<E: std::error::Error> From<E> for JobFailure {
    fn from(e: E) -> Self {
        JobFailure::retry(e.to_string())
    }
}

/// Where a job is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for the jobs it depends on.
    Blocked,
    /// Waiting for its time or its retry time.
    Scheduled,
    /// Ready, waiting for a slot (type, shard or concurrency key).
    Queued,
    /// Its handler runs.
    Running,
    /// Finished successfully.
    Completed,
    /// Cancelled.
    Cancelled,
    /// No attempts left (or a fatal failure): in the dead letters.
    Dead,
}

impl JobState {
    /// Completed, cancelled or dead.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Dead
        )
    }

    /// Parses the lower-case name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "blocked" => JobState::Blocked,
            "scheduled" => JobState::Scheduled,
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "completed" => JobState::Completed,
            "cancelled" => JobState::Cancelled,
            "dead" => JobState::Dead,
            _ => return None,
        })
    }
}

/// What is known of one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Its id.
    pub id: JobId,
    /// Its type.
    pub type_name: String,
    /// Its state.
    pub state: JobState,
    /// Attempts started so far (the running or last attempt's number).
    pub attempt: u32,
    /// Priority.
    pub priority: i32,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Progress reported by the running attempt (0..=100).
    pub progress: u8,
    /// Next run time (ms) when scheduled.
    pub run_at_ms: u64,
    /// Concurrency key.
    pub concurrency_key: Option<String>,
    /// Unique key.
    pub unique_key: Option<String>,
    /// The result the handler set, when completed.
    pub result: Option<Vec<u8>>,
}

/// Why an enqueue was refused. Nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// No job type of this name is registered on the node.
    #[error("job type {name:?} is not registered on this node (registered: {registered:?})")]
    UnknownJobType {
        /// The name given.
        name: String,
        /// The registered names.
        registered: Vec<String>,
    },
    /// The payload does not decode as the job type's payload.
    #[error("payload of job type {type_name:?} does not decode: {detail}")]
    BadPayload {
        /// The job type.
        type_name: String,
        /// The decoder's message.
        detail: String,
    },
    /// An option is invalid.
    #[error("invalid job options: {detail}")]
    BadOptions {
        /// What is wrong.
        detail: String,
    },
    /// The jobs of an atomic batch must all be owned by one shard, but their concurrency or
    /// unique keys place them on different shards.
    #[error("the batch's jobs are owned by different shards ({first} and {other}); an atomic batch needs one owner (split it)")]
    BatchSpansShards {
        /// The shard of the first job.
        first: ShardId,
        /// Another shard.
        other: ShardId,
    },
    /// The batch is empty.
    #[error("empty batch")]
    EmptyBatch,
    /// The dependencies within the batch form a cycle.
    #[error("the batch's dependencies form a cycle through jobs {jobs:?} (batch indices)")]
    DependencyCycle {
        /// The batch indices on the cycle.
        jobs: Vec<usize>,
    },
    /// A cron expression or time zone was refused.
    #[error("bad schedule: {0}")]
    BadSchedule(#[from] cron::CronError),
    /// A dependency is not usable: out of the batch, unknown, on another shard, or dead or
    /// cancelled.
    #[error("bad dependency of batch job {index}: {detail}")]
    BadDependency {
        /// The job's index in the batch.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// The node has no log (`[log]` section) or no job type registered: jobs are not running.
    #[error(
        "jobs are not running on this node (needs a [log] data_dir and a registered job type)"
    )]
    NotRunning,
    /// Appending the records failed (nothing acknowledged).
    #[error("appending the job records failed: {0}")]
    Append(#[source] AppendError),
    /// The owning shard stopped before answering.
    #[error("the owning shard stopped before answering")]
    ShardStopped,
}

/// Why the node's jobs did not start (a start error of the node: the node does not run with a
/// job queue it could not recover).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobsStartError {
    /// Reading a shard's job records failed.
    #[error("shard {shard}: reading the job records")]
    Read {
        /// The shard.
        shard: ShardId,
        /// Why.
        #[source]
        source: quark_persist::ReadError,
    },
    /// Recording the attempts the previous run left unfinished failed.
    #[error("shard {shard}: recording the interrupted job attempts")]
    Append {
        /// The shard.
        shard: ShardId,
        /// Why.
        #[source]
        source: AppendError,
    },
    /// A record the queue needs to start does not decode (written by a newer version, or
    /// damaged): the node refuses to run with a queue state it cannot read.
    #[error("shard {shard}: {what} does not decode")]
    BadRecord {
        /// The shard.
        shard: ShardId,
        /// Which record.
        what: &'static str,
        /// Why.
        #[source]
        source: record::RecordError,
    },
    /// A shard's recovery did not run (the shard stopped).
    #[error("shard {shard}: the job recovery did not run")]
    ShardStopped {
        /// The shard.
        shard: ShardId,
    },
}

/// Why a job operation (cancel, replay, purge, list) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobsError {
    /// No such job (never existed, or finished and forgotten).
    #[error("job {0} is not known")]
    NotFound(JobId),
    /// The job is not in a state that allows the operation.
    #[error("job {id} is {state:?}; {op} needs {needs}")]
    WrongState {
        /// The job.
        id: JobId,
        /// Its state.
        state: JobState,
        /// The operation.
        op: &'static str,
        /// The states it needs.
        needs: &'static str,
    },
    /// No schedule of this name.
    #[error("no schedule named {0:?}")]
    NoSchedule(String),
    /// No job type of this name is registered.
    #[error("no job type named {0:?} is registered")]
    UnknownType(String),
    /// See [`EnqueueError::NotRunning`].
    #[error(
        "jobs are not running on this node (needs a [log] data_dir and a registered job type)"
    )]
    NotRunning,
    /// Appending failed.
    #[error("appending the job records failed: {0}")]
    Append(#[source] AppendError),
    /// The owning shard stopped before answering.
    #[error("the owning shard stopped before answering")]
    ShardStopped,
}

/// A job to enqueue (typed with [`NewJob::new`], or by name with [`NewJob::raw`] /
/// [`NewJob::json`], which are checked against the registered type).
#[derive(Clone, Debug)]
pub struct NewJob {
    type_name: String,
    payload: Payload,
    options: JobOptions,
}

#[derive(Clone, Debug)]
enum Payload {
    Encoded(Vec<u8>),
    Raw(Vec<u8>),
    Json(String),
    EncodeFailed(String),
}

impl NewJob {
    /// A job of type `J`.
    pub fn new<J: Job>(job: &J, options: JobOptions) -> Self {
        NewJob {
            type_name: J::TYPE_NAME.to_owned(),
            payload: match postcard::to_allocvec(job) {
                Ok(b) => Payload::Encoded(b),
                Err(e) => Payload::EncodeFailed(e.to_string()),
            },
            options,
        }
    }

    /// A job of the type named `type_name` with an already encoded (postcard) payload; the
    /// enqueue decodes it with the registered type and refuses it if that fails.
    pub fn raw(type_name: impl Into<String>, payload: Vec<u8>, options: JobOptions) -> Self {
        NewJob {
            type_name: type_name.into(),
            payload: Payload::Raw(payload),
            options,
        }
    }

    /// A job of the type named `type_name` with a JSON payload (CLI, tools); the enqueue
    /// converts it with the registered type and refuses it if that fails.
    pub fn json(
        type_name: impl Into<String>,
        json: impl Into<String>,
        options: JobOptions,
    ) -> Self {
        NewJob {
            type_name: type_name.into(),
            payload: Payload::Json(json.into()),
            options,
        }
    }
}

/// Which jobs [`Jobs::list`] returns.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this type.
    pub type_name: Option<String>,
    /// Only jobs with this concurrency key.
    pub concurrency_key: Option<String>,
    /// Only ids above this one (paging: pass the last id of the previous page).
    pub after: Option<JobId>,
    /// Page size (0 = 100).
    pub limit: usize,
}

/// The handler of a job type, type-erased: decodes the payload and runs.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), JobFailure>>>>;
pub(crate) type DynHandler = Arc<dyn Fn(&[u8], JobContext) -> HandlerFuture + Send + Sync>;
type Validate = Arc<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;
type FromJson = Arc<dyn Fn(&str) -> Result<Vec<u8>, String> + Send + Sync>;

/// One registered job type.
pub(crate) struct JobType {
    pub name: String,
    pub config: JobTypeConfig,
    pub handler: DynHandler,
    /// The node-wide running count, if the type has a per-node limit.
    pub node_slots: Option<Arc<node_limit::NodeSlots>>,
    validate: Validate,
    from_json: FromJson,
}

/// The registered types and settings, shared by every shard and handle.
pub(crate) struct JobsShared {
    pub types: Vec<JobType>,
    pub by_name: HashMap<String, usize>,
    pub config: JobsConfig,
    pub started: bool,
    rr: AtomicU64,
}

impl JobsShared {
    pub(crate) fn type_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

/// Collects job type registrations for the node builder.
#[derive(Default)]
pub(crate) struct JobsSetup {
    types: Vec<JobType>,
    config: Option<JobsConfig>,
}

impl JobsSetup {
    pub(crate) fn register<J, F, Fut>(&mut self, config: JobTypeConfig, handler: F)
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobFailure>> + 'static,
    {
        let handler: DynHandler =
            Arc::new(
                move |bytes: &[u8], ctx: JobContext| match postcard::from_bytes::<J>(bytes) {
                    Ok(job) => Box::pin(handler(job, ctx)) as HandlerFuture,
                    Err(e) => {
                        let msg = format!("payload of {} does not decode: {e}", J::TYPE_NAME);
                        Box::pin(async move { Err(JobFailure::fatal(msg)) })
                    }
                },
            );
        let validate: Validate = Arc::new(|bytes: &[u8]| {
            postcard::from_bytes::<J>(bytes)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let from_json: FromJson = Arc::new(|json: &str| {
            let job: J = serde_json::from_str(json).map_err(|e| e.to_string())?;
            postcard::to_allocvec(&job).map_err(|e| e.to_string())
        });
        self.types.retain(|t| t.name != J::TYPE_NAME);
        let node_slots = config
            .max_running_per_node
            .map(|n| Arc::new(node_limit::NodeSlots::new(n)));
        self.types.push(JobType {
            name: J::TYPE_NAME.to_owned(),
            config,
            handler,
            node_slots,
            validate,
            from_json,
        });
    }

    pub(crate) fn config(&mut self, config: JobsConfig) {
        self.config = Some(config);
    }

    /// Starts the shard queues (when a type is registered and the node has a log) and waits
    /// until every shard recovered its jobs.
    pub(crate) fn start(
        self,
        engine: &EngineHandle,
        has_log: bool,
    ) -> Result<Jobs, JobsStartError> {
        let by_name = self
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let started = has_log && !self.types.is_empty();
        let shared = Arc::new(JobsShared {
            types: self.types,
            by_name,
            config: self.config.unwrap_or_default(),
            started,
            rr: AtomicU64::new(0),
        });
        let jobs = Jobs {
            engine: engine.clone(),
            shared: Arc::clone(&shared),
        };
        if started {
            let waits: Vec<_> = (0..engine.shard_count())
                .map(|s| {
                    let jobs = jobs.clone();
                    engine.spawn_on(s, move || queue::start_shard(jobs, s))
                })
                .collect();
            // Every shard's outcome is awaited (none is left running half-started); the first
            // failure is the start error.
            let mut first_error = None;
            for (shard, w) in waits.into_iter().enumerate() {
                let r = match w.join() {
                    Ok(r) => r,
                    Err(_) => Err(JobsStartError::ShardStopped {
                        shard: shard as ShardId,
                    }),
                };
                if let Err(e) = r {
                    tracing::error!(error = %crate::ErrorChain(&e), "a shard's job queue did not recover");
                    first_error.get_or_insert(e);
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        Ok(jobs)
    }
}

/// The jobs of a node: enqueue, inspect, cancel, replay. `Send + Clone`; every method may be
/// called from any thread (with [`crate::block_on`]) or awaited on a shard.
#[derive(Clone)]
pub struct Jobs {
    pub(crate) engine: EngineHandle,
    pub(crate) shared: Arc<JobsShared>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("types", &self.shared.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A job after validation: what will be stored, and its owner.
pub(crate) struct Prepared {
    pub stored: StoredJob,
    pub deps: Vec<Dep>,
    /// The owner when `placed_by_key`; otherwise 0 (the batch picks its shard).
    pub shard: ShardId,
    pub placed_by_key: bool,
}

impl Jobs {
    /// The names of the registered job types.
    pub fn type_names(&self) -> Vec<String> {
        self.shared.types.iter().map(|t| t.name.clone()).collect()
    }

    /// Validates `job` and computes what to store and where.
    pub(crate) fn prepare(&self, job: NewJob, now_ms: u64) -> Result<Prepared, EnqueueError> {
        let Some(ti) = self.shared.type_index(&job.type_name) else {
            return Err(EnqueueError::UnknownJobType {
                name: job.type_name,
                registered: self.type_names(),
            });
        };
        let t = &self.shared.types[ti];
        let bad = |detail: String| EnqueueError::BadPayload {
            type_name: job.type_name.clone(),
            detail,
        };
        let payload = match job.payload {
            Payload::Encoded(b) => b,
            Payload::Raw(b) => {
                (t.validate)(&b).map_err(bad)?;
                b
            }
            Payload::Json(j) => (t.from_json)(&j).map_err(bad)?,
            Payload::EncodeFailed(e) => return Err(bad(format!("did not serialise: {e}"))),
        };
        let o = job.options;
        let retry = o.retry.unwrap_or(t.config.retry);
        retry
            .check()
            .map_err(|detail| EnqueueError::BadOptions { detail })?;
        if let Some(r) = &o.key_rate_limit {
            r.check("key_rate_limit")
                .map_err(|detail| EnqueueError::BadOptions { detail })?;
            if o.concurrency_key.is_none() {
                return Err(EnqueueError::BadOptions {
                    detail: "key_rate_limit needs a concurrency_key".into(),
                });
            }
        }
        if o.concurrency_limit == Some(0) {
            return Err(EnqueueError::BadOptions {
                detail: "concurrency_limit must be at least 1".into(),
            });
        }
        let run_at_ms = match o.schedule {
            Schedule::Now => now_ms,
            Schedule::AtMs(t) => t,
            Schedule::After(d) => now_ms.saturating_add(d.as_millis() as u64),
        };
        let shards = self.engine.shard_count().max(1);
        let place_key = o.concurrency_key.as_ref().or(o.unique_key.as_ref());
        let (shard, placed_by_key) = match place_key {
            Some(k) => (shard_of_key(k, shards), true),
            // Placed by its batch (one round-robin turn per batch, in `enqueue_batch`).
            None => (0, false),
        };
        Ok(Prepared {
            stored: StoredJob {
                type_name: job.type_name,
                payload,
                priority: o.priority,
                run_at_ms,
                enqueued_ms: now_ms,
                retry,
                timeout_ms: o.timeout.unwrap_or(t.config.timeout).as_millis() as u64,
                unique_key: o.unique_key,
                concurrency_key: o.concurrency_key,
                concurrency_limit: o.concurrency_limit.unwrap_or(1),
                key_rate_limit: o.key_rate_limit,
                depends_on: Vec::new(),
                on_parent_failure: o.on_parent_failure,
            },
            deps: o.depends_on,
            shard,
            placed_by_key,
        })
    }

    /// Enqueues one job of type `J`; resolves with its id once it is durable. With a unique
    /// key that an unfinished job holds, resolves with that job's id instead (see
    /// [`JobOptions::unique_key`]).
    pub async fn enqueue<J: Job>(
        &self,
        job: &J,
        options: JobOptions,
    ) -> Result<JobId, EnqueueError> {
        let ids = self.enqueue_batch(vec![NewJob::new(job, options)]).await?;
        Ok(ids[0])
    }

    /// Enqueues `jobs` atomically (one log batch: after a crash all or none of them are
    /// there) on one shard. Jobs without a key go to the shard of the first keyed job, or to
    /// the next shard in turn; jobs whose keys place them elsewhere make the batch fail with
    /// [`EnqueueError::BatchSpansShards`]. Resolves with the ids in order.
    pub async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>, EnqueueError> {
        if !self.shared.started {
            return Err(EnqueueError::NotRunning);
        }
        if jobs.is_empty() {
            return Err(EnqueueError::EmptyBatch);
        }
        let now = self.shared.config.clock.now_ms();
        let mut prepared = Vec::with_capacity(jobs.len());
        for j in jobs {
            prepared.push(self.prepare(j, now)?);
        }
        check_batch_deps(&prepared)?;
        let owner = prepared
            .iter()
            .find(|p| p.placed_by_key)
            .map(|p| p.shard)
            .or_else(|| {
                prepared.iter().find_map(|p| {
                    p.deps.iter().find_map(|d| match d {
                        Dep::Job(id) => Some(id.shard()),
                        Dep::InBatch(_) => None,
                    })
                })
            })
            // One round-robin turn per batch. (Each job used to take a turn and the batch went to
            // its first job's shard: with an even batch size every batch landed on shard 0.)
            .unwrap_or_else(|| {
                let shards = u64::from(self.engine.shard_count().max(1));
                (self.shared.rr.fetch_add(1, Ordering::Relaxed) % shards) as ShardId
            });
        for (index, p) in prepared.iter().enumerate() {
            for d in &p.deps {
                if let Dep::Job(id) = d {
                    if id.shard() != owner {
                        return Err(EnqueueError::BadDependency {
                            index,
                            detail: format!(
                                "job {id} is owned by shard {}, this batch by shard {owner}; a job and its dependencies must share a shard (same concurrency key, or one batch)",
                                id.shard()
                            ),
                        });
                    }
                }
            }
        }
        if let Some(p) = prepared
            .iter()
            .find(|p| p.placed_by_key && p.shard != owner)
        {
            return Err(EnqueueError::BatchSpansShards {
                first: owner,
                other: p.shard,
            });
        }
        let stored: Vec<(StoredJob, Vec<Dep>)> =
            prepared.into_iter().map(|p| (p.stored, p.deps)).collect();
        self.engine
            .spawn_on(owner, move || async move {
                let Some(q) = queue::local_queue() else {
                    return Err(EnqueueError::NotRunning);
                };
                q.enqueue(stored).await
            })
            .await
            .unwrap_or(Err(EnqueueError::ShardStopped))
    }

    async fn on_owner<R: Send + 'static>(
        &self,
        id: JobId,
        f: impl FnOnce(
                std::rc::Rc<queue::ShardQueue>,
            ) -> Pin<Box<dyn Future<Output = Result<R, JobsError>>>>
            + Send
            + 'static,
    ) -> Result<R, JobsError> {
        if !self.shared.started {
            return Err(JobsError::NotRunning);
        }
        if id.shard() >= self.engine.shard_count() {
            return Err(JobsError::NotFound(id));
        }
        self.engine
            .spawn_on(id.shard(), move || async move {
                match queue::local_queue() {
                    Some(q) => f(q).await,
                    None => Err(JobsError::NotRunning),
                }
            })
            .await
            .unwrap_or(Err(JobsError::ShardStopped))
    }

    /// The job's status.
    pub async fn status(&self, id: JobId) -> Result<JobStatus, JobsError> {
        self.on_owner(id, move |q| Box::pin(async move { q.status(id) }))
            .await
    }

    /// Waits until the job is completed, cancelled or dead; resolves with its status.
    pub async fn wait(&self, id: JobId) -> Result<JobStatus, JobsError> {
        let rx = self
            .on_owner(id, move |q| Box::pin(async move { q.waiter(id) }))
            .await?;
        rx.await.map_err(|_| JobsError::ShardStopped)
    }

    /// Cancels a queued or scheduled job (it never runs), or a running one (its handler's
    /// future is dropped, [`JobContext::is_cancelled`] turns true first). Resolves with the
    /// status after the cancellation is durable.
    pub async fn cancel(&self, id: JobId) -> Result<JobStatus, JobsError> {
        self.on_owner(id, move |q| Box::pin(async move { q.cancel(id).await }))
            .await
    }

    /// Queues a dead job again with a fresh attempt budget (attempt numbers keep increasing).
    pub async fn replay(&self, id: JobId) -> Result<JobStatus, JobsError> {
        self.on_owner(id, move |q| Box::pin(async move { q.replay(id).await }))
            .await
    }

    /// Removes a dead, completed or cancelled job from the log and from memory.
    pub async fn purge(&self, id: JobId) -> Result<(), JobsError> {
        self.on_owner(id, move |q| Box::pin(async move { q.purge(id).await }))
            .await
    }

    /// Jobs matching `query`, by id, across all shards (one page).
    pub async fn list(&self, query: ListQuery) -> Result<Vec<JobStatus>, JobsError> {
        if !self.shared.started {
            return Err(JobsError::NotRunning);
        }
        let limit = if query.limit == 0 { 100 } else { query.limit };
        let mut all = Vec::new();
        for s in 0..self.engine.shard_count() {
            let q = query.clone();
            let page = self
                .engine
                .spawn_on(s, move || async move {
                    queue::local_queue().map(|queue| queue.list(&q, limit))
                })
                .await
                .map_err(|_| JobsError::ShardStopped)?
                .ok_or(JobsError::NotRunning)?;
            all.extend(page);
        }
        all.sort_by_key(|s| s.id);
        all.truncate(limit);
        Ok(all)
    }

    /// Counts of jobs per state on every shard.
    pub async fn counts(&self) -> Result<HashMap<JobState, u64>, JobsError> {
        if !self.shared.started {
            return Err(JobsError::NotRunning);
        }
        let mut out = HashMap::new();
        for s in 0..self.engine.shard_count() {
            let c = self
                .engine
                .spawn_on(s, move || async move {
                    queue::local_queue().map(|q| q.counts())
                })
                .await
                .map_err(|_| JobsError::ShardStopped)?
                .ok_or(JobsError::NotRunning)?;
            for (k, v) in c {
                *out.entry(k).or_insert(0) += v;
            }
        }
        Ok(out)
    }

    /// Pauses (true) or resumes (false) starting jobs of `type_name` (`None`: the whole
    /// queue) on every shard, durably: the state is a record in each shard's log and survives
    /// a restart. Running jobs continue; enqueues are still accepted. `None` and a type name
    /// are separate switches (resuming the queue does not resume a paused type). An unknown
    /// type name is refused. On an error, the shards before the failing one changed already:
    /// call again.
    pub async fn set_paused(
        &self,
        type_name: Option<String>,
        paused: bool,
    ) -> Result<(), JobsError> {
        if !self.shared.started {
            return Err(JobsError::NotRunning);
        }
        if let Some(t) = &type_name {
            if self.shared.type_index(t).is_none() {
                return Err(JobsError::UnknownType(t.clone()));
            }
        }
        for s in 0..self.engine.shard_count() {
            let t = type_name.clone();
            self.engine
                .spawn_on(s, move || async move {
                    match queue::local_queue() {
                        Some(q) => q.set_paused(t, paused).await,
                        None => Err(JobsError::NotRunning),
                    }
                })
                .await
                .map_err(|_| JobsError::ShardStopped)??;
        }
        Ok(())
    }

    /// Whether the whole queue is paused, and the paused job types (as shard 0 records them;
    /// every shard gets the same changes).
    pub async fn paused(&self) -> Result<(bool, Vec<String>), JobsError> {
        if !self.shared.started {
            return Err(JobsError::NotRunning);
        }
        let p = self
            .engine
            .spawn_on(0, || async move {
                queue::local_queue().map(|q| q.pause_state())
            })
            .await
            .map_err(|_| JobsError::ShardStopped)?
            .ok_or(JobsError::NotRunning)?;
        Ok((p.all, p.types))
    }

    /// Creates (or replaces) the cron schedule `s`, durably, on the shard that owns its job
    /// (its concurrency or unique key, else its name). Its first occurrence is the first one
    /// after now.
    pub async fn schedule(&self, s: CronSchedule) -> Result<(), EnqueueError> {
        if !self.shared.started {
            return Err(EnqueueError::NotRunning);
        }
        let expr = cron::CronExpr::parse(&s.cron)?;
        let tz = cron::TimeZone::load(&s.time_zone)?;
        let now = self.shared.config.clock.now_ms();
        let p = self.prepare(s.job, now)?;
        if !p.deps.is_empty() {
            return Err(EnqueueError::BadOptions {
                detail: "a scheduled job cannot have dependencies".into(),
            });
        }
        let shard = if p.placed_by_key {
            p.shard
        } else {
            shard_of_key(&s.name, self.engine.shard_count())
        };
        let stored = record::StoredSchedule {
            name: s.name,
            expr: s.cron,
            time_zone: s.time_zone,
            job: p.stored,
            missed: s.missed,
            paused: false,
            last_ms: now as i64,
        };
        drop((expr, tz));
        // Any shard may hold an older version of this name (another owner): remove it.
        for other in 0..self.engine.shard_count() {
            if other != shard {
                let name = stored.name.clone();
                self.engine
                    .spawn_on(other, move || async move {
                        match queue::local_queue() {
                            Some(q) => q.unschedule(&name).await.map(|_| ()),
                            None => Ok(()),
                        }
                    })
                    .await
                    .unwrap_or(Ok(()))
                    .map_err(|e| match e {
                        JobsError::Append(a) => EnqueueError::Append(a),
                        _ => EnqueueError::ShardStopped,
                    })?;
            }
        }
        self.engine
            .spawn_on(shard, move || async move {
                match queue::local_queue() {
                    Some(q) => q.put_schedule(stored).await,
                    None => Err(EnqueueError::NotRunning),
                }
            })
            .await
            .unwrap_or(Err(EnqueueError::ShardStopped))
    }

    async fn on_every_shard<R: Send + 'static>(
        &self,
        f: impl Fn(
                std::rc::Rc<queue::ShardQueue>,
            ) -> Pin<Box<dyn Future<Output = Result<R, JobsError>>>>
            + Send
            + Sync
            + Clone
            + 'static,
    ) -> Result<Vec<R>, JobsError> {
        if !self.shared.started {
            return Err(JobsError::NotRunning);
        }
        let mut out = Vec::new();
        for s in 0..self.engine.shard_count() {
            let f = f.clone();
            let r = self
                .engine
                .spawn_on(s, move || async move {
                    match queue::local_queue() {
                        Some(q) => f(q).await,
                        None => Err(JobsError::NotRunning),
                    }
                })
                .await
                .unwrap_or(Err(JobsError::ShardStopped))?;
            out.push(r);
        }
        Ok(out)
    }

    /// Removes a schedule (jobs it already enqueued stay). Resolves with whether it existed.
    pub async fn unschedule(&self, name: &str) -> Result<bool, JobsError> {
        let name = name.to_owned();
        let found = self
            .on_every_shard(move |q| {
                let name = name.clone();
                Box::pin(async move { q.unschedule(&name).await })
            })
            .await?;
        Ok(found.into_iter().any(|f| f))
    }

    /// Pauses (true) or resumes (false) a schedule, durably. Occurrences while paused are
    /// handled by its [`MissedTicks`] policy when it resumes.
    pub async fn pause_schedule(&self, name: &str, paused: bool) -> Result<(), JobsError> {
        let missing = name.to_owned();
        let name = name.to_owned();
        let found = self
            .on_every_shard(move |q| {
                let name = name.clone();
                Box::pin(async move { q.pause_schedule(&name, paused).await })
            })
            .await?;
        if found.into_iter().any(|f| f) {
            Ok(())
        } else {
            Err(JobsError::NoSchedule(missing))
        }
    }

    /// Every schedule of the node.
    pub async fn schedules(&self) -> Result<Vec<ScheduleStatus>, JobsError> {
        let all = self
            .on_every_shard(|q| Box::pin(async move { Ok(q.schedules()) }))
            .await?;
        let mut v: Vec<ScheduleStatus> = all.into_iter().flatten().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Makes every shard look at its schedule now (after moving a [`ManualClock`]).
    pub fn poke(&self) {
        if !self.shared.started {
            return;
        }
        for s in 0..self.engine.shard_count() {
            drop(self.engine.spawn_on(s, move || async move {
                if let Some(q) = queue::local_queue() {
                    q.wake();
                }
            }));
        }
    }
}

/// Refuses dependencies on batch indices that do not exist or form a cycle.
fn check_batch_deps(prepared: &[Prepared]) -> Result<(), EnqueueError> {
    let n = prepared.len();
    for (index, p) in prepared.iter().enumerate() {
        for d in &p.deps {
            if let Dep::InBatch(j) = d {
                if *j >= n {
                    return Err(EnqueueError::BadDependency {
                        index,
                        detail: format!("batch index {j} is out of the batch (size {n})"),
                    });
                }
            }
        }
    }
    // Depth-first search; 0 = new, 1 = on the path, 2 = done.
    let mut mark = vec![0u8; n];
    let mut path = Vec::new();
    fn visit(
        i: usize,
        prepared: &[Prepared],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Result<(), EnqueueError> {
        match mark[i] {
            2 => return Ok(()),
            1 => {
                let from = path.iter().position(|&p| p == i).unwrap_or(0);
                return Err(EnqueueError::DependencyCycle {
                    jobs: path[from..].to_vec(),
                });
            }
            _ => {}
        }
        mark[i] = 1;
        path.push(i);
        for d in &prepared[i].deps {
            if let Dep::InBatch(j) = d {
                visit(*j, prepared, mark, path)?;
            }
        }
        path.pop();
        mark[i] = 2;
        Ok(())
    }
    for i in 0..n {
        visit(i, prepared, &mut mark, &mut path)?;
    }
    Ok(())
}

/// The shard that owns a concurrency or unique key (FNV-1a over its bytes).
pub fn shard_of_key(key: &str, shards: u16) -> ShardId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as ShardId
}
