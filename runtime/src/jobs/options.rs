//! What a job is made of: options, retry and rate policies, type settings, states, and the
//! job a caller builds.

use super::*;

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

    pub(crate) fn check(&self) -> Result<(), String> {
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

    pub(crate) fn check(&self, what: &str) -> Result<(), String> {
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
    /// A running attempt whose handler does not call [`JobContext::heartbeat`] for this long
    /// (counted from its start, then from its last heartbeat) is timed out and retried under
    /// the retry policy, like an attempt that exceeded [`JobOptions::timeout`]. Stored with
    /// the job, so it holds after a restart. Default `None`: no heartbeat is expected.
    pub heartbeat_timeout: Option<Duration>,
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
    /// Sets the heartbeat timeout (see [`JobOptions::heartbeat_timeout`]).
    pub fn heartbeat_timeout(mut self, t: Duration) -> Self {
        self.heartbeat_timeout = Some(t);
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
#[derive(
    Copy,
    Clone,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    quark_net::rkyv::Archive,
    quark_net::rkyv::Serialize,
    quark_net::rkyv::Deserialize,
)]
#[rkyv(crate = quark_net::rkyv)]
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

/// What is known of one job (also the reply of the cluster's job operations,
/// [`super::cluster::ClusterJobs`]).
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    quark_net::rkyv::Archive,
    quark_net::rkyv::Serialize,
    quark_net::rkyv::Deserialize,
)]
#[rkyv(crate = quark_net::rkyv)]
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
    /// The details of the latest heartbeat ([`JobContext::heartbeat`]) of this or an earlier
    /// attempt: the running attempt's latest in memory, else the latest recorded.
    pub heartbeat_details: Option<Vec<u8>>,
    /// When that heartbeat was (ms, the jobs clock).
    pub heartbeat_at_ms: Option<u64>,
}

/// A job to enqueue (typed with [`NewJob::new`], or by name with [`NewJob::raw`] /
/// [`NewJob::json`], which are checked against the registered type).
#[derive(Clone, Debug)]
pub struct NewJob {
    pub(crate) type_name: String,
    pub(crate) payload: Payload,
    pub(crate) options: JobOptions,
}

#[derive(Clone, Debug)]
pub(crate) enum Payload {
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
