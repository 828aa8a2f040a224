//! One shard's job queue: the in-memory state machine of the jobs the shard owns, rebuilt from
//! the shard's log at start, a scheduler task that writes every state change to the log (one
//! batch per round: the starts it decides and the outcomes of finished attempts), and a runner
//! task that polls the running handlers.
//!
//! Here: the types of the state machine and the shard's queue. Beside it: `recovery` (the
//! rebuild from the log), `ops` (what the `Jobs` handle asks of a shard), `schedules` (cron),
//! `scheduler` (the rounds), `runner` (the running handlers), `state` (placement, picking,
//! releasing slots).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use futures::future::{select, Either};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use quark_persist::{AppendError, Batch, NewRecord, RecordKind};
use quark_shard::{current_shard_log, EngineHandle, ShardId, ShardLog};

use super::cron::{CronExpr, TimeZone};
use super::record::{
    self, job_key, schedule_key, JobRecord, StoredJob, StoredPause, StoredSchedule, HW_KEY,
    JOB_KEY_PREFIX, PAUSE_KEY, SCHEDULE_KEY_PREFIX,
};
use super::{
    Dep, DynHandler, EnqueueError, JobFailure, JobId, JobState, JobStatus, Jobs, JobsError,
    JobsStartError, ListQuery, NewJob,
};

/// Jobs one `FireAll` schedule enqueues for its missed occurrences at most (the rest are
/// skipped).
const MAX_FIRE_ALL: usize = 1000;

/// Sequence numbers reserved per reservation record.
const RESERVE: u64 = 1 << 20;

mod ops;
mod recovery;
mod runner;
mod scheduler;
mod schedules;
mod state;

thread_local! {
    static QUEUE: RefCell<Option<Rc<ShardQueue>>> = const { RefCell::new(None) };
}

/// The calling shard's job queue (after its recovery finished).
pub(crate) fn local_queue() -> Option<Rc<ShardQueue>> {
    QUEUE.with(|q| q.borrow().clone())
}

/// A one-slot wake-up signal between tasks of one shard.
#[derive(Default)]
struct Notify {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        futures::future::poll_fn(move |cx| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// What a running attempt shares with its handler's [`JobContext`].
pub(crate) struct RunCtl {
    id: JobId,
    attempt: u32,
    shard: ShardId,
    cancelled: Cell<bool>,
    cancel_waker: RefCell<Option<Waker>>,
    progress: Cell<u8>,
    checkpoint: RefCell<Option<Vec<u8>>>,
    result: RefCell<Option<Vec<u8>>>,
    follow_ups: RefCell<Vec<StoredJob>>,
    parent_results: Vec<(u64, Option<Vec<u8>>)>,
    log: ShardLog,
    jobs: Jobs,
    /// The job's heartbeat timeout in ms (0 = none).
    heartbeat_timeout_ms: u64,
    /// This attempt's heartbeats (see [`JobContext::heartbeat`]).
    beat: RefCell<AttemptBeat>,
    /// Woken when a heartbeat has details to write.
    beat_notify: Notify,
    /// The attempt's outcome was taken: its heartbeats are ignored from now on.
    ended: Cell<bool>,
}

/// The latest heartbeat of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Beat {
    attempt: u32,
    at_ms: u64,
    details: Vec<u8>,
}

/// A running attempt's heartbeats: when it last beat, its latest details and whether they are
/// written yet.
struct AttemptBeat {
    /// The last heartbeat (or the attempt's start).
    last: std::time::Instant,
    /// The latest details (from this attempt, or the previous attempts' latest).
    latest: Option<Beat>,
    /// `latest` is newer than the last heartbeat record written.
    dirty: bool,
}

/// What a job handler can reach: its attempt, cancellation, progress, checkpoints, and
/// follow-up jobs written atomically with its completion. Lives on the owning shard.
#[derive(Clone)]
pub struct JobContext {
    ctl: Rc<RunCtl>,
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.ctl.id
    }

    /// This attempt's number: 1 for the first, increasing by one per attempt, also across
    /// restarts (an attempt interrupted by a crash counts).
    pub fn attempt(&self) -> u32 {
        self.ctl.attempt
    }

    /// True once the job was cancelled (the handler's future is dropped right after this turns
    /// true, at its next await).
    pub fn is_cancelled(&self) -> bool {
        self.ctl.cancelled.get()
    }

    /// Reports progress (0..=100, clamped), visible in [`super::Jobs::status`]. In memory only.
    pub fn progress(&self, percent: u8) {
        self.ctl.progress.set(percent.min(100));
    }

    /// The data of the last [`JobContext::checkpoint`] of this job (from an earlier attempt
    /// too, also across restarts).
    pub fn checkpoint_data(&self) -> Option<Vec<u8>> {
        self.ctl.checkpoint.borrow().clone()
    }

    /// Stores intermediate data durably; later attempts read it with
    /// [`JobContext::checkpoint_data`].
    pub async fn checkpoint(&self, data: Vec<u8>) -> Result<(), AppendError> {
        let mut b = Batch::new();
        b.event(
            &job_key(self.ctl.id.0),
            &record::encode(&JobRecord::Checkpoint { data: data.clone() }),
        );
        self.ctl.log.append(&b).await?;
        *self.ctl.checkpoint.borrow_mut() = Some(data);
        Ok(())
    }

    /// Records a heartbeat with `details` (for example a checkpoint the next attempt resumes
    /// from). Not async, cheap: call it as often as the work allows.
    ///
    /// - A job with a heartbeat timeout ([`super::JobOptions::heartbeat_timeout`]) whose
    ///   handler does not heartbeat for that long is timed out: the handler's future is
    ///   dropped and the job retried under its retry policy (or dead after its last attempt).
    /// - The details are kept in memory at once (visible in [`super::Jobs::status`] as
    ///   `heartbeat_details`) and written to the log **throttled**: at most one `Heartbeat`
    ///   record per quarter of the heartbeat timeout (1 s when the job has none), each with
    ///   the latest details; details still unwritten when an attempt fails are written with its
    ///   failure record. So after a crash the next attempt sees details at most a quarter of
    ///   the timeout older than the last heartbeat.
    /// - Later attempts read the latest details with [`JobContext::heartbeat_details`].
    /// - A heartbeat of an attempt that has already ended (the context kept somewhere) is
    ///   ignored.
    pub fn heartbeat(&self, details: impl Into<Vec<u8>>) {
        if self.ctl.ended.get() {
            return;
        }
        let at_ms = self.ctl.jobs.shared.config.clock.now_ms();
        {
            let mut b = self.ctl.beat.borrow_mut();
            b.last = std::time::Instant::now();
            b.latest = Some(Beat {
                attempt: self.ctl.attempt,
                at_ms,
                details: details.into(),
            });
            b.dirty = true;
        }
        self.ctl.beat_notify.notify();
    }

    /// The details of the latest heartbeat of this job: this attempt's, else the previous
    /// attempts' latest recorded (also across restarts). `None` if it never heartbeated.
    pub fn heartbeat_details(&self) -> Option<Vec<u8>> {
        self.ctl
            .beat
            .borrow()
            .latest
            .as_ref()
            .map(|b| b.details.clone())
    }

    /// Sets the job's result (stored with its completion, visible in its status).
    pub fn set_result(&self, result: Vec<u8>) {
        *self.ctl.result.borrow_mut() = Some(result);
    }

    /// Enqueues `job` atomically with this attempt's completion: it is stored in the same log
    /// batch as the completion record, and only if the handler returns `Ok`. The follow-up is
    /// owned by this shard, so one whose concurrency or unique key belongs to another shard is
    /// refused ([`EnqueueError::BatchSpansShards`]; enqueue it with [`JobContext::jobs`]).
    pub fn enqueue_on_completion(&self, job: NewJob) -> Result<(), EnqueueError> {
        let now = self.ctl.jobs.shared.config.clock.now_ms();
        let p = self.ctl.jobs.prepare(job, now)?;
        if p.placed_by_key && p.shard != self.ctl.shard {
            return Err(EnqueueError::BatchSpansShards {
                first: self.ctl.shard,
                other: p.shard,
            });
        }
        self.ctl.follow_ups.borrow_mut().push(p.stored);
        Ok(())
    }

    /// The results of the jobs this one depends on ([`super::JobOptions::depends_on`]), in
    /// the order they completed.
    pub fn parent_results(&self) -> Vec<(JobId, Option<Vec<u8>>)> {
        self.ctl
            .parent_results
            .iter()
            .map(|(p, r)| (JobId(*p), r.clone()))
            .collect()
    }

    /// The node's jobs (to enqueue elsewhere, not atomically with this attempt).
    pub fn jobs(&self) -> Jobs {
        self.ctl.jobs.clone()
    }

    /// The node's engine (actor references, work on other shards).
    pub fn engine(&self) -> EngineHandle {
        self.ctl.jobs.engine.clone()
    }
}

/// How an attempt ended.
enum Outcome {
    Ok,
    Failed(JobFailure),
    TimedOut(u64),
    /// No heartbeat for this many ms.
    HeartbeatTimedOut(u64),
    Cancelled,
}

/// One job the shard owns.
struct Entry {
    job: StoredJob,
    type_idx: Option<usize>,
    state: JobState,
    attempt: u32,
    /// Attempts made before the last requeue (the budget counts from here).
    base: u32,
    last_error: Option<String>,
    run_at_ms: u64,
    /// Aged priority order (smaller first); see `JobsConfig::aging`.
    order: i64,
    checkpoint: Option<Vec<u8>>,
    result: Option<Vec<u8>>,
    rerun: bool,
    ctl: Option<Rc<RunCtl>>,
    /// Not yet durable (its enqueue's append is in flight).
    pending: bool,
    /// When waiting for a token of its key's rate limit: the time in `rate_waiting`.
    rate_wait_ms: Option<u64>,
    /// Cancelled while its start was being written: the attempt ends as cancelled at once.
    cancel_requested: bool,
    /// Parents that have not completed yet.
    waiting_on: HashSet<u64>,
    /// Completed parents' results, in completion order.
    parent_results: Vec<(u64, Option<Vec<u8>>)>,
    /// The latest heartbeat of the job's attempts (recorded, or of a finished attempt).
    heartbeat: Option<Beat>,
}

impl Entry {
    fn new(job: StoredJob, type_idx: Option<usize>) -> Self {
        Entry {
            run_at_ms: job.run_at_ms,
            job,
            type_idx,
            state: JobState::Scheduled,
            attempt: 0,
            base: 0,
            last_error: None,
            order: 0,
            checkpoint: None,
            result: None,
            rerun: false,
            ctl: None,
            pending: false,
            rate_wait_ms: None,
            cancel_requested: false,
            waiting_on: HashSet::new(),
            parent_results: Vec::new(),
            heartbeat: None,
        }
    }
}

/// A live cron schedule.
struct Sched {
    stored: StoredSchedule,
    expr: CronExpr,
    tz: TimeZone,
    /// The next occurrence after `stored.last_ms`.
    next_ms: Option<i64>,
}

impl Sched {
    fn new(stored: StoredSchedule) -> Result<Self, super::cron::CronError> {
        let expr = CronExpr::parse(&stored.expr)?;
        let tz = TimeZone::load(&stored.time_zone)?;
        let next_ms = expr.next_after(&tz, stored.last_ms);
        Ok(Sched {
            stored,
            expr,
            tz,
            next_ms,
        })
    }

    fn status(&self) -> super::ScheduleStatus {
        super::ScheduleStatus {
            name: self.stored.name.clone(),
            cron: self.stored.expr.clone(),
            time_zone: self.stored.time_zone.clone(),
            paused: self.stored.paused,
            last_ms: self.stored.last_ms,
            next_ms: self.next_ms,
        }
    }
}

/// A notice to a dependent job, written by the next scheduler round.
enum Late {
    /// Its parent completed with this result.
    Done {
        child: u64,
        parent: u64,
        result: Option<Vec<u8>>,
    },
    /// Its parent was cancelled (or is dead).
    Failed { child: u64, parent: u64, dead: bool },
}

/// A decision made when building a round's batch, applied once the batch is durable.
enum Decision {
    Fire {
        name: String,
        last_ms: i64,
        jobs: Vec<u64>,
    },
    ParentDone {
        child: u64,
        parent: u64,
        result: Option<Vec<u8>>,
    },
    ParentFailed {
        child: u64,
        error: String,
        dead: bool,
    },
    Start(u64),
    Complete {
        id: u64,
        result: Option<Vec<u8>>,
        follow_ups: Vec<(u64, StoredJob)>,
        notified: Vec<u64>,
    },
    Requeue {
        id: u64,
        run_at: u64,
    },
    Retry {
        id: u64,
        at: u64,
        error: String,
    },
    Dead {
        id: u64,
        error: String,
    },
    Cancel(u64),
}

/// A token bucket (see [`super::RateLimit`]).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    available: f64,
    last_ms: u64,
}

impl Bucket {
    fn full(limit: &super::RateLimit, now: u64) -> Self {
        Bucket {
            available: f64::from(limit.tokens),
            last_ms: now,
        }
    }

    fn refill(&mut self, limit: &super::RateLimit, now: u64) {
        let cap = f64::from(limit.tokens);
        let dt = now.saturating_sub(self.last_ms) as f64;
        self.available = (self.available + dt * cap / limit.interval_ms as f64).min(cap);
        self.last_ms = self.last_ms.max(now);
    }

    /// Takes a token if there is one.
    fn take(&mut self) -> bool {
        if self.available >= 1.0 - 1e-9 {
            self.available -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there (ms).
    fn next_token_ms(&self, limit: &super::RateLimit) -> u64 {
        let missing = (1.0 - self.available).max(0.0);
        let ms = (missing * limit.interval_ms as f64 / f64::from(limit.tokens)).ceil() as u64;
        self.last_ms + ms.max(1)
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    /// Per type: ready jobs by (aged order, id).
    ready: Vec<BTreeSet<(i64, u64)>>,
    /// Jobs waiting for their time: (run at ms, id).
    scheduled: BTreeSet<(u64, u64)>,
    /// Ready jobs whose concurrency key is at its limit: (order, id).
    key_waiting: HashMap<String, BTreeSet<(i64, u64)>>,
    key_running: HashMap<String, u32>,
    /// Ready jobs whose key's rate limit has no token: (next token ms, id).
    rate_waiting: BTreeSet<(u64, u64)>,
    key_buckets: HashMap<String, Bucket>,
    /// Parent → the jobs waiting for it.
    dependents: HashMap<u64, Vec<u64>>,
    /// Notices to dependents, written by the next round.
    late: Vec<Late>,
    /// Cron schedules by name.
    schedules: HashMap<String, Sched>,
    /// Per type: its rate limit's bucket.
    type_buckets: Vec<Option<Bucket>>,
    type_running: Vec<u32>,
    running: u32,
    unique: HashMap<String, u64>,
    finished: VecDeque<u64>,
    waiters: HashMap<u64, Vec<futures::channel::oneshot::Sender<JobStatus>>>,
    outcomes: Vec<(u64, Outcome)>,
    to_run: Vec<(Rc<RunCtl>, DynHandler, Vec<u8>, u64)>,
    next_seq: u64,
    reserved: u64,
    paused_all: bool,
    paused: HashSet<usize>,
    /// Shards (bit `s % 64`) to wake: a node slot of a type they wait for was freed.
    node_wake: u64,
    /// The durable pause state (`paused_all` and `paused` are derived from it).
    pause: StoredPause,
    rr: usize,
    stopped: bool,
}

/// One shard's job queue.
pub(crate) struct ShardQueue {
    shard: ShardId,
    jobs: Jobs,
    log: ShardLog,
    st: RefCell<State>,
    sched: Notify,
    runner: Notify,
}

/// Recovers the calling shard's jobs from its log, then starts its scheduler and runner.
pub(crate) async fn start_shard(jobs: Jobs, shard: ShardId) -> Result<(), JobsStartError> {
    let Some(log) = current_shard_log() else {
        return Ok(());
    };
    let ntypes = jobs.shared.types.len();
    let q = Rc::new(ShardQueue {
        shard,
        jobs: jobs.clone(),
        log,
        st: RefCell::new(State {
            ready: vec![BTreeSet::new(); ntypes],
            type_running: vec![0; ntypes],
            type_buckets: vec![None; ntypes],
            ..State::default()
        }),
        sched: Notify::default(),
        runner: Notify::default(),
    });
    q.recover().await?;
    QUEUE.with(|slot| *slot.borrow_mut() = Some(Rc::clone(&q)));
    // The tasks find the queue through the thread-local (the spawned closures must be Send).
    drop(jobs.engine.spawn_on(shard, move || async move {
        if let Some(q) = local_queue() {
            q.run_runner().await;
        }
    }));
    drop(jobs.engine.spawn_on(shard, move || async move {
        if let Some(q) = local_queue() {
            q.run_scheduler().await;
        }
    }));
    Ok(())
}

impl ShardQueue {
    fn now(&self) -> u64 {
        self.jobs.shared.config.clock.now_ms()
    }

    fn aging_ms(&self) -> i64 {
        (self.jobs.shared.config.aging.as_millis() as i64).max(1)
    }

    /// The node's jobs handle.
    pub(crate) fn jobs(&self) -> Jobs {
        self.jobs.clone()
    }

    /// Wakes the scheduler (new work, or the clock moved).
    pub(crate) fn wake(&self) {
        self.sched.notify();
    }
}

fn status_of(id: u64, e: &Entry) -> JobStatus {
    let beat = match &e.ctl {
        Some(c) => c.beat.borrow().latest.clone(),
        None => e.heartbeat.clone(),
    };
    JobStatus {
        id: JobId(id),
        type_name: e.job.type_name.clone(),
        state: e.state,
        attempt: e.attempt,
        priority: e.job.priority,
        last_error: e.last_error.clone(),
        progress: e.ctl.as_ref().map(|c| c.progress.get()).unwrap_or(0),
        run_at_ms: e.run_at_ms,
        concurrency_key: e.job.concurrency_key.clone(),
        unique_key: e.job.unique_key.clone(),
        result: e.result.clone(),
        heartbeat_details: beat.as_ref().map(|b| b.details.clone()),
        heartbeat_at_ms: beat.as_ref().map(|b| b.at_ms),
    }
}
