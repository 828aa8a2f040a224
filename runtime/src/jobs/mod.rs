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

pub mod cluster;
pub mod cron;
mod error;
mod handle;
mod node_limit;
mod options;
mod queue;
pub mod record;
pub mod remote;

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

pub use error::{EnqueueError, JobsError, JobsStartError};
pub use options::*;
pub use queue::JobContext;

/// This shard's job counts per state, if the node runs jobs (for the admin endpoint, which
/// reads them on the shard at scrape time).
pub(crate) fn local_counts() -> Option<HashMap<JobState, u64>> {
    queue::local_queue().map(|q| q.counts())
}

/// This shard's `Jobs` handle, if the node runs jobs (the admin endpoint's `/quark/jobs`
/// routes take it from shard 0).
pub(crate) fn local_jobs() -> Option<Jobs> {
    queue::local_queue().map(|q| q.jobs())
}
use record::StoredJob;

/// A job type: its payload (serde) and its stable name (stored with every job: never rename a
/// type that has jobs queued).
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The registered name.
    const TYPE_NAME: &'static str;
}

/// A job's id on its node: the owning shard in the top 16 bits, a per-shard sequence number
/// below. In a cluster, [`cluster::ClusterJobId`] adds the owning node.
#[derive(
    Copy,
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    quark_net::rkyv::Archive,
    quark_net::rkyv::Serialize,
    quark_net::rkyv::Deserialize,
)]
#[rkyv(crate = quark_net::rkyv)]
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
    /// Start a job's handler while its `Started` record is being made durable, instead of
    /// after (default `false`). It takes one `fdatasync` off the enqueue-to-start latency. The
    /// job's outcome is still written after the `Started` record (the next round's batch). The
    /// cost: after a crash that came before the `Started` record was durable, the job runs
    /// again **with the same attempt number** (a handler may see an attempt number twice;
    /// execution stays at least once). See `docs/JOBS.md`, "Guarantees".
    pub start_before_durable: bool,
    /// Start jobs that can run at once in the same durable write as their enqueue (default
    /// `true`): the enqueue's batch also carries their `Started` records, so one `fdatasync`
    /// covers both and the handler starts when it returns, instead of after a second
    /// `fdatasync` of the scheduler's next round. The guarantees are unchanged (the enqueue is
    /// acknowledged and the handler started only once both records are durable; limits,
    /// priorities and pauses apply as in a scheduler round). `false`: the enqueue writes only
    /// the `Enqueued` records and the scheduler starts the jobs in its next round.
    pub start_on_enqueue: bool,
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
            start_before_durable: false,
            start_on_enqueue: true,
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
            .field("start_before_durable", &self.start_before_durable)
            .field("start_on_enqueue", &self.start_on_enqueue)
            .finish_non_exhaustive()
    }
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

    /// True once a job type is registered.
    pub(crate) fn has_types(&self) -> bool {
        !self.types.is_empty()
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

/// The shard that owns a concurrency or unique key (FNV-1a over its bytes).
pub fn shard_of_key(key: &str, shards: u16) -> ShardId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as ShardId
}
