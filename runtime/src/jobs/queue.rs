//! One shard's job queue: the in-memory state machine of the jobs the shard owns, rebuilt from
//! the shard's log at start, a scheduler task that writes every state change to the log (one
//! batch per round: the starts it decides and the outcomes of finished attempts), and a runner
//! task that polls the running handlers.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::rc::Rc;
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

    /// Wakes the scheduler (new work, or the clock moved).
    pub(crate) fn wake(&self) {
        self.sched.notify();
    }

    async fn recover(&self) -> Result<(), JobsStartError> {
        let now = self.now();
        let keys = self.log.keys_with_prefix(JOB_KEY_PREFIX);
        let mut lsns = Vec::new();
        for k in &keys {
            lsns.extend(self.log.key_lsns(k));
        }
        let mut hw = 0u64;
        let hw_lsns = self.log.key_lsns(HW_KEY);
        lsns.extend(&hw_lsns);
        let records = self
            .log
            .read_many(&lsns)
            .await
            .map_err(|source| JobsStartError::Read {
                shard: self.shard,
                source,
            })?;
        // read_many returns records in LSN order; the per-key order is the same (the key's
        // snapshot, if any, comes before its later records).
        let mut by_key: HashMap<u64, Vec<(Option<u64>, JobRecord)>> = HashMap::new();
        let mut undecodable = 0u64;
        for r in records {
            if r.key == HW_KEY {
                if let Ok(v) = postcard::from_bytes::<u64>(&r.payload) {
                    hw = hw.max(v);
                }
                continue;
            }
            let Some(id) = record::id_of_key(&r.key) else {
                continue;
            };
            match record::decode(&r.payload) {
                Ok(rec) => by_key.entry(id).or_default().push((r.expires_at_ms, rec)),
                Err(e) => {
                    undecodable += 1;
                    tracing::warn!(shard = self.shard, job = %JobId(id), error = %e, "skipping a job record");
                }
            }
        }
        // Schedules: the latest snapshot of each.
        let skeys = self.log.keys_with_prefix(SCHEDULE_KEY_PREFIX);
        let mut slsns = Vec::new();
        for k in &skeys {
            slsns.extend(self.log.key_lsns(k));
        }
        let srecs = self
            .log
            .read_many(&slsns)
            .await
            .map_err(|source| JobsStartError::Read {
                shard: self.shard,
                source,
            })?;
        for r in srecs {
            let Some(body) = r.payload.strip_prefix(&[record::FORMAT]) else {
                continue;
            };
            match postcard::from_bytes::<StoredSchedule>(body)
                .map_err(|e| e.to_string())
                .and_then(|s| Sched::new(s).map_err(|e| e.to_string()))
            {
                Ok(s) => {
                    self.st
                        .borrow_mut()
                        .schedules
                        .insert(s.stored.name.clone(), s);
                }
                Err(e) => {
                    tracing::warn!(shard = self.shard, error = %e, "skipping a schedule record")
                }
            }
        }
        // The pause state: its latest snapshot.
        if let Some(&lsn) = self.log.key_lsns(PAUSE_KEY).last() {
            let r = self
                .log
                .read(lsn)
                .await
                .map_err(|source| JobsStartError::Read {
                    shard: self.shard,
                    source,
                })?;
            match r.map(|r| record::decode_pause(&r.payload)) {
                Some(Ok(p)) => self.apply_pause(p),
                Some(Err(e)) => {
                    return Err(JobsStartError::BadRecord {
                        shard: self.shard,
                        what: "the queue's pause state",
                        source: e,
                    })
                }
                None => {}
            }
        }
        let mut interrupted = Batch::new();
        let aging = self.aging_ms();
        self.rebuild(by_key, hw, now, aging, &mut interrupted);
        if undecodable > 0 {
            tracing::warn!(
                shard = self.shard,
                undecodable,
                "job records that did not decode were skipped"
            );
        }
        if !interrupted.is_empty() {
            self.log
                .append(&interrupted)
                .await
                .map_err(|source| JobsStartError::Append {
                    shard: self.shard,
                    source,
                })?;
        }
        Ok(())
    }

    /// Folds the recovered records into the jobs (sync: no borrow across an await); the
    /// interrupted attempts' failure records go into `interrupted`.
    fn rebuild(
        &self,
        mut by_key: HashMap<u64, Vec<(Option<u64>, JobRecord)>>,
        hw: u64,
        now: u64,
        aging: i64,
        interrupted: &mut Batch,
    ) {
        let mut st = self.st.borrow_mut();
        let mut max_seq = 0u64;
        let mut ids: Vec<u64> = by_key.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            max_seq = max_seq.max(id & super::SEQ_MASK);
            let recs = by_key.remove(&id).unwrap_or_default();
            let mut e: Option<Entry> = None;
            let mut expired = false;
            for (expires, rec) in recs {
                if let Some(x) = expires {
                    if x <= now {
                        expired = true;
                    }
                }
                fold(&mut e, rec, &self.jobs, now);
            }
            let Some(mut e) = e else { continue };
            if expired && e.state.is_final() && e.state != JobState::Dead {
                continue;
            }
            if e.state == JobState::Running {
                let a = e.attempt;
                let error = format!("interrupted: the node stopped while attempt {a} ran");
                let retry_at = (a - e.base < e.job.retry.max_attempts).then_some(now);
                interrupted.event(
                    &job_key(id),
                    &record::encode(&JobRecord::Failed {
                        attempt: a,
                        error: error.clone(),
                        retry_at_ms: retry_at,
                    }),
                );
                e.last_error = Some(error);
                match retry_at {
                    Some(t) => {
                        e.state = JobState::Scheduled;
                        e.run_at_ms = t;
                    }
                    None => e.state = JobState::Dead,
                }
            }
            st.insert_recovered(id, e, aging);
        }
        // Jobs waiting for parents: register them, or tell them now about parents that ended
        // before the notice was written (a crash between the two).
        let blocked: Vec<(u64, Vec<u64>)> = st
            .entries
            .iter()
            .filter(|(_, e)| e.state == JobState::Blocked)
            .map(|(id, e)| (*id, e.waiting_on.iter().copied().collect()))
            .collect();
        for (child, parents) in blocked {
            for parent in parents {
                let late = match st.entries.get(&parent).map(|e| (e.state, e.result.clone())) {
                    Some((JobState::Completed, result)) => Late::Done {
                        child,
                        parent,
                        result,
                    },
                    Some((JobState::Dead, _)) => Late::Failed {
                        child,
                        parent,
                        dead: true,
                    },
                    Some((JobState::Cancelled, _)) => Late::Failed {
                        child,
                        parent,
                        dead: false,
                    },
                    Some(_) => {
                        st.dependents.entry(parent).or_default().push(child);
                        continue;
                    }
                    None => {
                        tracing::warn!(shard = self.shard, job = %JobId(child), parent = %JobId(parent),
                            "a job's parent is no longer in the log; treating it as completed without a result");
                        Late::Done {
                            child,
                            parent,
                            result: None,
                        }
                    }
                };
                st.late.push(late);
            }
        }
        st.next_seq = hw.max(max_seq + 1);
        st.reserved = st.next_seq;
    }

    /// Stores new jobs; resolves with their ids once durable.
    pub(crate) async fn enqueue(
        &self,
        jobs: Vec<(StoredJob, Vec<Dep>)>,
    ) -> Result<Vec<JobId>, EnqueueError> {
        let mut batch = Batch::new();
        let mut ids: Vec<u64> = Vec::with_capacity(jobs.len());
        let mut created: Vec<usize> = Vec::new();
        let mut reruns = Vec::new();
        let aging = self.aging_ms();
        {
            let mut st = self.st.borrow_mut();
            // Dependencies on existing jobs: check them before anything changes.
            for (index, (_, deps)) in jobs.iter().enumerate() {
                for d in deps {
                    if let Dep::Job(p) = d {
                        match st.entries.get(&p.0).map(|e| e.state) {
                            None => {
                                return Err(EnqueueError::BadDependency {
                                    index,
                                    detail: format!("job {p} is not known (never existed, or finished and forgotten)"),
                                })
                            }
                            Some(state @ (JobState::Dead | JobState::Cancelled)) => {
                                return Err(EnqueueError::BadDependency {
                                    index,
                                    detail: format!("job {p} is {state:?}"),
                                })
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
            // Ids: an existing one for a unique key that is taken, else a new one.
            for (i, (job, _)) in jobs.iter().enumerate() {
                if let Some(uk) = &job.unique_key {
                    if let Some(&existing) = st.unique.get(uk) {
                        if let Some(e) = st.entries.get_mut(&existing) {
                            match e.state {
                                JobState::Queued | JobState::Scheduled | JobState::Blocked => {
                                    ids.push(existing);
                                    continue;
                                }
                                JobState::Running => {
                                    if !e.rerun {
                                        e.rerun = true;
                                        reruns.push(existing);
                                        batch.event(
                                            &job_key(existing),
                                            &record::encode(&JobRecord::RerunRequested),
                                        );
                                    }
                                    ids.push(existing);
                                    continue;
                                }
                                _ => {}
                            }
                        }
                    }
                }
                let id = st.alloc(self.shard, &mut batch);
                if let Some(uk) = &job.unique_key {
                    st.unique.insert(uk.clone(), id);
                }
                ids.push(id);
                created.push(i);
            }
            let mut jobs: Vec<Option<(StoredJob, Vec<Dep>)>> = jobs.into_iter().map(Some).collect();
            for &i in &created {
                let Some((mut job, deps)) = jobs[i].take() else {
                    continue;
                };
                let id = ids[i];
                job.depends_on = deps
                    .iter()
                    .map(|d| match d {
                        Dep::Job(p) => p.0,
                        Dep::InBatch(j) => ids[*j],
                    })
                    .filter(|p| *p != id)
                    .collect();
                job.depends_on.sort_unstable();
                job.depends_on.dedup();
                batch.event(&job_key(id), &record::encode_enqueued(&job));
                let ti = self.jobs.shared.type_index(&job.type_name);
                let mut e = Entry::new(job, ti);
                e.pending = true;
                for &p in &e.job.depends_on {
                    match st.entries.get(&p) {
                        Some(pe) if pe.state == JobState::Completed => {
                            // Already done: its result goes into this job's records.
                            batch.event(
                                &job_key(id),
                                &record::encode(&JobRecord::ParentDone {
                                    parent: p,
                                    result: pe.result.clone(),
                                }),
                            );
                            e.parent_results.push((p, pe.result.clone()));
                        }
                        _ => {
                            e.waiting_on.insert(p);
                        }
                    }
                }
                for &p in &e.waiting_on {
                    st.dependents.entry(p).or_default().push(id);
                }
                st.entries.insert(id, e);
            }
        }
        let out: Vec<JobId> = ids.iter().map(|&i| JobId(i)).collect();
        if batch.is_empty() {
            return Ok(out);
        }
        let res = self.log.append(&batch).await;
        let mut st = self.st.borrow_mut();
        match res {
            Ok(_) => {
                for &i in &created {
                    let id = ids[i];
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.pending = false;
                    }
                    st.place(id, aging);
                }
                drop(st);
                self.sched.notify();
                Ok(out)
            }
            Err(err) => {
                for &i in &created {
                    let id = ids[i];
                    if let Some(e) = st.entries.remove(&id) {
                        if let Some(uk) = e.job.unique_key {
                            st.unique.remove(&uk);
                        }
                        for p in e.waiting_on {
                            if let Some(c) = st.dependents.get_mut(&p) {
                                c.retain(|c| *c != id);
                            }
                        }
                    }
                }
                for id in reruns {
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.rerun = false;
                    }
                }
                Err(EnqueueError::Append(err))
            }
        }
    }

    fn schedule_record(s: &StoredSchedule) -> NewRecord {
        let mut payload = vec![record::FORMAT];
        payload.extend(postcard::to_allocvec(s).unwrap_or_default());
        NewRecord {
            kind: RecordKind::Snapshot,
            key: schedule_key(&s.name),
            payload,
            expires_at_ms: None,
        }
    }

    pub(crate) async fn put_schedule(&self, s: StoredSchedule) -> Result<(), EnqueueError> {
        let sched = Sched::new(s.clone())?;
        let mut b = Batch::new();
        b.push(Self::schedule_record(&s));
        self.log.append(&b).await.map_err(EnqueueError::Append)?;
        self.st.borrow_mut().schedules.insert(s.name.clone(), sched);
        self.sched.notify();
        Ok(())
    }

    pub(crate) async fn unschedule(&self, name: &str) -> Result<bool, JobsError> {
        if !self.st.borrow().schedules.contains_key(name) {
            return Ok(false);
        }
        let mut b = Batch::new();
        b.truncate(&schedule_key(name), u64::MAX);
        self.log.append(&b).await.map_err(JobsError::Append)?;
        self.st.borrow_mut().schedules.remove(name);
        Ok(true)
    }

    pub(crate) async fn pause_schedule(&self, name: &str, paused: bool) -> Result<bool, JobsError> {
        let Some(mut s) = self
            .st
            .borrow()
            .schedules
            .get(name)
            .map(|s| s.stored.clone())
        else {
            return Ok(false);
        };
        s.paused = paused;
        let mut b = Batch::new();
        b.push(Self::schedule_record(&s));
        self.log.append(&b).await.map_err(JobsError::Append)?;
        if let Some(x) = self.st.borrow_mut().schedules.get_mut(name) {
            x.stored.paused = paused;
        }
        self.sched.notify();
        Ok(true)
    }

    pub(crate) fn schedules(&self) -> Vec<super::ScheduleStatus> {
        self.st
            .borrow()
            .schedules
            .values()
            .map(Sched::status)
            .collect()
    }

    /// The cron occurrences due at `now`: per schedule, the jobs to enqueue under its policy
    /// and the new last occurrence; records go into `b`.
    fn fire_due(&self, now: u64, b: &mut Batch, decisions: &mut Vec<Decision>) {
        let grace = self.jobs.shared.config.cron_grace.as_millis() as i64;
        let now_i = now as i64;
        let mut st = self.st.borrow_mut();
        let due: Vec<String> = st
            .schedules
            .values()
            .filter(|s| !s.stored.paused && s.next_ms.is_some_and(|t| t <= now_i))
            .map(|s| s.stored.name.clone())
            .collect();
        for name in due {
            let Some(s) = st.schedules.get(&name) else {
                continue;
            };
            // Every occurrence up to now (a long downtime of a frequent schedule is counted,
            // not collected): how many, the last, and how many are on time.
            let (mut count, mut on_time, mut last) = (0usize, 0usize, None);
            let mut t = s.next_ms;
            while let Some(x) = t {
                if x > now_i {
                    break;
                }
                count += 1;
                if now_i - x <= grace {
                    on_time += 1;
                }
                last = Some(x);
                t = s.expr.next_after(&s.tz, x);
            }
            let Some(last) = last else {
                continue;
            };
            let n = match s.stored.missed {
                super::MissedTicks::FireAll => count.min(MAX_FIRE_ALL),
                super::MissedTicks::FireOnce => 1,
                super::MissedTicks::Skip => usize::from(on_time > 0),
            };
            let mut template = s.stored.job.clone();
            template.run_at_ms = now;
            template.enqueued_ms = now;
            let mut stored = s.stored.clone();
            stored.last_ms = last;
            let mut ids = Vec::new();
            for _ in 0..n {
                let id = st.alloc(self.shard, b);
                b.event(&job_key(id), &record::encode_enqueued(&template));
                let ti = self.jobs.shared.type_index(&template.type_name);
                let mut e = Entry::new(template.clone(), ti);
                e.pending = true;
                st.entries.insert(id, e);
                ids.push(id);
            }
            b.push(Self::schedule_record(&stored));
            decisions.push(Decision::Fire {
                name,
                last_ms: last,
                jobs: ids,
            });
        }
    }

    pub(crate) fn status(&self, id: JobId) -> Result<JobStatus, JobsError> {
        let st = self.st.borrow();
        st.entries
            .get(&id.0)
            .filter(|e| !e.pending)
            .map(|e| status_of(id.0, e))
            .ok_or(JobsError::NotFound(id))
    }

    pub(crate) fn waiter(
        &self,
        id: JobId,
    ) -> Result<futures::channel::oneshot::Receiver<JobStatus>, JobsError> {
        let mut st = self.st.borrow_mut();
        let (tx, rx) = futures::channel::oneshot::channel();
        let Some(e) = st.entries.get(&id.0) else {
            return Err(JobsError::NotFound(id));
        };
        if e.state.is_final() {
            let _ = tx.send(status_of(id.0, e));
        } else {
            st.waiters.entry(id.0).or_default().push(tx);
        }
        Ok(rx)
    }

    pub(crate) async fn cancel(&self, id: JobId) -> Result<JobStatus, JobsError> {
        let rx = {
            let mut st = self.st.borrow_mut();
            let Some(e) = st.entries.get_mut(&id.0) else {
                return Err(JobsError::NotFound(id));
            };
            match e.state {
                JobState::Running => {
                    match &e.ctl {
                        Some(ctl) => {
                            ctl.cancelled.set(true);
                            if let Some(w) = ctl.cancel_waker.borrow_mut().take() {
                                w.wake();
                            }
                        }
                        // Its start record is being written; the handler has not started.
                        None => e.cancel_requested = true,
                    }
                    let (tx, rx) = futures::channel::oneshot::channel();
                    st.waiters.entry(id.0).or_default().push(tx);
                    Some(rx)
                }
                JobState::Queued | JobState::Scheduled | JobState::Blocked if !e.pending => {
                    st.unplace(id.0);
                    None
                }
                state => {
                    return Err(JobsError::WrongState {
                        id,
                        state,
                        op: "cancel",
                        needs: "blocked, scheduled, queued or running",
                    })
                }
            }
        };
        if let Some(rx) = rx {
            // The runner drops the handler and the scheduler records the cancellation.
            return rx.await.map_err(|_| JobsError::ShardStopped);
        }
        let now = self.now();
        let mut b = Batch::new();
        self.terminal(
            &mut b,
            id.0,
            &JobRecord::Cancelled {
                at_ms: now,
                attempt: 0,
            },
            now,
        );
        // Mark it before the await so the scheduler never starts it.
        if let Some(e) = self.st.borrow_mut().entries.get_mut(&id.0) {
            e.state = JobState::Cancelled;
        }
        self.log.append(&b).await.map_err(JobsError::Append)?;
        let mut st = self.st.borrow_mut();
        st.finish(
            id.0,
            JobState::Cancelled,
            self.jobs.shared.config.finished_kept,
        );
        st.entries
            .get(&id.0)
            .map(|e| status_of(id.0, e))
            .ok_or(JobsError::NotFound(id))
    }

    pub(crate) async fn replay(&self, id: JobId) -> Result<JobStatus, JobsError> {
        let now = self.now();
        let base = {
            let st = self.st.borrow();
            let Some(e) = st.entries.get(&id.0) else {
                return Err(JobsError::NotFound(id));
            };
            if e.state != JobState::Dead {
                return Err(JobsError::WrongState {
                    id,
                    state: e.state,
                    op: "replay",
                    needs: "dead",
                });
            }
            e.attempt
        };
        let mut b = Batch::new();
        b.event(
            &job_key(id.0),
            &record::encode(&JobRecord::Requeued {
                base,
                run_at_ms: now,
            }),
        );
        self.log.append(&b).await.map_err(JobsError::Append)?;
        let mut st = self.st.borrow_mut();
        if let Some(e) = st.entries.get_mut(&id.0) {
            if e.state == JobState::Dead {
                e.state = JobState::Scheduled;
                e.base = base;
                e.run_at_ms = now;
                e.last_error = None;
                if let Some(uk) = e.job.unique_key.clone() {
                    st.unique.entry(uk).or_insert(id.0);
                }
                st.place(id.0, self.aging_ms());
            }
        }
        drop(st);
        self.sched.notify();
        self.status(id)
    }

    pub(crate) async fn purge(&self, id: JobId) -> Result<(), JobsError> {
        {
            let st = self.st.borrow();
            let Some(e) = st.entries.get(&id.0) else {
                return Err(JobsError::NotFound(id));
            };
            if !e.state.is_final() {
                return Err(JobsError::WrongState {
                    id,
                    state: e.state,
                    op: "purge",
                    needs: "dead, completed or cancelled",
                });
            }
        }
        let mut b = Batch::new();
        b.truncate(&job_key(id.0), u64::MAX);
        self.log.append(&b).await.map_err(JobsError::Append)?;
        self.st.borrow_mut().entries.remove(&id.0);
        Ok(())
    }

    pub(crate) fn list(&self, q: &ListQuery, limit: usize) -> Vec<JobStatus> {
        let st = self.st.borrow();
        let mut out: Vec<JobStatus> = st
            .entries
            .iter()
            .filter(|(id, e)| {
                !e.pending
                    && q.after.is_none_or(|a| **id > a.0)
                    && q.state.is_none_or(|s| s == e.state)
                    && q.type_name.as_ref().is_none_or(|t| *t == e.job.type_name)
                    && q.concurrency_key
                        .as_ref()
                        .is_none_or(|k| Some(k) == e.job.concurrency_key.as_ref())
            })
            .map(|(id, e)| status_of(*id, e))
            .collect();
        out.sort_by_key(|s| s.id);
        out.truncate(limit);
        out
    }

    pub(crate) fn counts(&self) -> HashMap<JobState, u64> {
        let st = self.st.borrow();
        let mut out = HashMap::new();
        for e in st.entries.values().filter(|e| !e.pending) {
            *out.entry(e.state).or_insert(0) += 1;
        }
        out
    }

    /// Pauses or resumes `type_name` (`None`: the whole queue), durably: resolves once the
    /// shard's new pause state is in its log.
    pub(crate) async fn set_paused(
        &self,
        type_name: Option<String>,
        paused: bool,
    ) -> Result<(), JobsError> {
        let mut next = self.st.borrow().pause.clone();
        match type_name {
            None => next.all = paused,
            Some(t) => {
                next.types.retain(|n| *n != t);
                if paused {
                    next.types.push(t);
                }
                next.types.sort();
            }
        }
        let mut b = Batch::new();
        b.snapshot(PAUSE_KEY, &record::encode_pause(&next));
        self.log.append(&b).await.map_err(JobsError::Append)?;
        self.apply_pause(next);
        self.sched.notify();
        Ok(())
    }

    /// The shard's pause state.
    pub(crate) fn pause_state(&self) -> StoredPause {
        self.st.borrow().pause.clone()
    }

    fn apply_pause(&self, p: StoredPause) {
        let mut st = self.st.borrow_mut();
        st.paused_all = p.all;
        st.paused = p
            .types
            .iter()
            .filter_map(|t| self.jobs.shared.type_index(t))
            .collect();
        st.pause = p;
    }

    /// Appends a terminal record of job `id` (a snapshot: supersedes its earlier records),
    /// expiring after the finished-job retention.
    fn terminal(&self, b: &mut Batch, id: u64, rec: &JobRecord, now: u64) {
        let keep = self.jobs.shared.config.finished_retention.as_millis() as u64;
        b.push(NewRecord {
            kind: RecordKind::Snapshot,
            key: job_key(id),
            payload: record::encode(rec),
            expires_at_ms: Some(now.saturating_add(keep)),
        });
    }

    /// The scheduler: each round builds one batch with the starts it decides and the outcomes
    /// of finished attempts, appends it, and applies it once durable.
    async fn run_scheduler(self: Rc<Self>) {
        let idle = self.jobs.shared.config.idle_poll;
        loop {
            if !self.jobs.engine.is_running() {
                self.st.borrow_mut().stopped = true;
                self.runner.notify();
                return;
            }
            let now = self.now();
            let (batch, decisions) = self.build_round(now);
            if !batch.is_empty() {
                match self.log.append(&batch).await {
                    Ok(_) => self.apply(decisions, now),
                    Err(e) => {
                        tracing::error!(shard = self.shard, error = %e, "job records could not be appended; the shard's job queue stops");
                        let mut st = self.st.borrow_mut();
                        st.stopped = true;
                        st.waiters.clear();
                        drop(st);
                        self.runner.notify();
                        return;
                    }
                }
                continue;
            }
            let next_due = self.st.borrow().next_wake(&self.jobs);
            let wait = match next_due {
                Some(t) => Duration::from_millis(t.saturating_sub(now).max(1)).min(idle),
                None => idle,
            };
            let sleep = Box::pin(quark_shard::sleep(wait));
            let _ = select(Box::pin(self.sched.wait()), sleep).await;
        }
    }

    fn build_round(&self, now: u64) -> (Batch, Vec<Decision>) {
        let mut b = Batch::new();
        let mut decisions = Vec::new();
        let late = std::mem::take(&mut self.st.borrow_mut().late);
        for l in late {
            let st = self.st.borrow();
            match l {
                Late::Done {
                    child,
                    parent,
                    result,
                } => {
                    if st.entries.get(&child).map(|e| e.state) != Some(JobState::Blocked) {
                        continue;
                    }
                    b.event(
                        &job_key(child),
                        &record::encode(&JobRecord::ParentDone {
                            parent,
                            result: result.clone(),
                        }),
                    );
                    decisions.push(Decision::ParentDone {
                        child,
                        parent,
                        result,
                    });
                }
                Late::Failed {
                    child,
                    parent,
                    dead,
                } => {
                    let Some(e) = st.entries.get(&child) else {
                        continue;
                    };
                    if e.state.is_final() || e.state == JobState::Running {
                        continue;
                    }
                    let (dead, what) = match (dead, e.job.on_parent_failure) {
                        (_, super::OnParentFailure::Fail) => {
                            (true, if dead { "is dead" } else { "was cancelled" })
                        }
                        (true, super::OnParentFailure::Cancel) => (false, "is dead"),
                        (false, super::OnParentFailure::Cancel) => (false, "was cancelled"),
                    };
                    let error = format!("job {} it depends on {what}", JobId(parent));
                    let attempt = e.attempt;
                    drop(st);
                    if dead {
                        b.event(
                            &job_key(child),
                            &record::encode(&JobRecord::Failed {
                                attempt,
                                error: error.clone(),
                                retry_at_ms: None,
                            }),
                        );
                    } else {
                        self.terminal(
                            &mut b,
                            child,
                            &JobRecord::Cancelled {
                                at_ms: now,
                                attempt,
                            },
                            now,
                        );
                    }
                    decisions.push(Decision::ParentFailed { child, error, dead });
                }
            }
        }
        let outcomes = std::mem::take(&mut self.st.borrow_mut().outcomes);
        let mut rng_state = rand::random::<u64>();
        for (id, outcome) in outcomes {
            let mut st = self.st.borrow_mut();
            let Some(e) = st.entries.get(&id) else {
                continue;
            };
            let a = e.attempt;
            let ctl = e.ctl.clone();
            let key = job_key(id);
            let retry_or_dead = |e: &Entry, error: String, retry: bool, rng: &mut u64| {
                let left = a.saturating_sub(e.base) < e.job.retry.max_attempts;
                if retry && left {
                    *rng ^= *rng << 13;
                    *rng ^= *rng >> 7;
                    *rng ^= *rng << 17;
                    let r = (*rng >> 11) as f64 / (1u64 << 53) as f64;
                    let at = now.saturating_add(e.job.retry.delay_ms(a - e.base, r));
                    Decision::Retry { id, at, error }
                } else {
                    Decision::Dead { id, error }
                }
            };
            let d = match outcome {
                Outcome::Ok if e.rerun => Decision::Requeue { id, run_at: now },
                Outcome::Ok => {
                    let result = ctl.as_ref().and_then(|c| c.result.borrow_mut().take());
                    let fus = ctl
                        .as_ref()
                        .map(|c| std::mem::take(&mut *c.follow_ups.borrow_mut()))
                        .unwrap_or_default();
                    let mut follow_ups = Vec::new();
                    for j in fus {
                        let fid = st.alloc(self.shard, &mut b);
                        follow_ups.push((fid, j));
                    }
                    let notified = st
                        .dependents
                        .get(&id)
                        .map(|c| {
                            c.iter()
                                .copied()
                                .filter(|c| {
                                    st.entries
                                        .get(c)
                                        .is_some_and(|e| e.state == JobState::Blocked)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Decision::Complete {
                        id,
                        result,
                        follow_ups,
                        notified,
                    }
                }
                Outcome::Failed(f) => retry_or_dead(e, f.message, f.retry, &mut rng_state),
                Outcome::TimedOut(ms) => retry_or_dead(
                    e,
                    format!("attempt {a} timed out after {ms} ms"),
                    true,
                    &mut rng_state,
                ),
                Outcome::Cancelled => Decision::Cancel(id),
            };
            drop(st);
            match &d {
                Decision::Complete {
                    result,
                    follow_ups,
                    notified,
                    ..
                } => {
                    for child in notified {
                        b.event(
                            &job_key(*child),
                            &record::encode(&JobRecord::ParentDone {
                                parent: id,
                                result: result.clone(),
                            }),
                        );
                    }
                    let mut st = self.st.borrow_mut();
                    for (fid, j) in follow_ups {
                        b.event(&job_key(*fid), &record::encode_enqueued(j));
                        if let Some(uk) = &j.unique_key {
                            st.unique.entry(uk.clone()).or_insert(*fid);
                        }
                        let ti = self.jobs.shared.type_index(&j.type_name);
                        let mut fe = Entry::new(j.clone(), ti);
                        fe.pending = true;
                        st.entries.insert(*fid, fe);
                    }
                    drop(st);
                    self.terminal(
                        &mut b,
                        id,
                        &JobRecord::Completed {
                            at_ms: now,
                            attempt: a,
                            result: result.clone(),
                        },
                        now,
                    );
                }
                Decision::Requeue { run_at, .. } => {
                    b.event(
                        &key,
                        &record::encode(&JobRecord::Requeued {
                            base: a,
                            run_at_ms: *run_at,
                        }),
                    );
                }
                Decision::Retry { at, error, .. } => {
                    b.event(
                        &key,
                        &record::encode(&JobRecord::Failed {
                            attempt: a,
                            error: error.clone(),
                            retry_at_ms: Some(*at),
                        }),
                    );
                }
                Decision::Dead { error, .. } => {
                    b.event(
                        &key,
                        &record::encode(&JobRecord::Failed {
                            attempt: a,
                            error: error.clone(),
                            retry_at_ms: None,
                        }),
                    );
                }
                Decision::Cancel(_) => {
                    self.terminal(
                        &mut b,
                        id,
                        &JobRecord::Cancelled {
                            at_ms: now,
                            attempt: a,
                        },
                        now,
                    );
                }
                Decision::Start(_)
                | Decision::Fire { .. }
                | Decision::ParentDone { .. }
                | Decision::ParentFailed { .. } => {}
            }
            decisions.push(d);
        }
        self.fire_due(now, &mut b, &mut decisions);
        // Starts.
        let starts = self
            .st
            .borrow_mut()
            .pick(now, &self.jobs, self.aging_ms(), self.shard);
        self.wake_node_waiters();
        for (id, attempt) in starts {
            b.event(
                &job_key(id),
                &record::encode(&JobRecord::Started {
                    attempt,
                    at_ms: now,
                }),
            );
            decisions.push(Decision::Start(id));
        }
        (b, decisions)
    }

    fn apply(self: &Rc<Self>, decisions: Vec<Decision>, now: u64) {
        let aging = self.aging_ms();
        let kept = self.jobs.shared.config.finished_kept;
        let mut st = self.st.borrow_mut();
        let mut started = false;
        for d in decisions {
            match d {
                Decision::Fire {
                    name,
                    last_ms,
                    jobs,
                } => {
                    if let Some(s) = st.schedules.get_mut(&name) {
                        s.stored.last_ms = last_ms;
                        s.next_ms = s.expr.next_after(&s.tz, last_ms);
                    }
                    for id in jobs {
                        if let Some(e) = st.entries.get_mut(&id) {
                            e.pending = false;
                        }
                        st.place(id, aging);
                    }
                }
                Decision::Start(id) => {
                    let Some(e) = st.entries.get_mut(&id) else {
                        continue;
                    };
                    if std::mem::take(&mut e.cancel_requested) {
                        st.outcomes.push((id, Outcome::Cancelled));
                        self.sched.notify();
                        continue;
                    }
                    let Some(ti) = e.type_idx else { continue };
                    let ctl = Rc::new(RunCtl {
                        id: JobId(id),
                        attempt: e.attempt,
                        shard: self.shard,
                        cancelled: Cell::new(false),
                        cancel_waker: RefCell::new(None),
                        progress: Cell::new(0),
                        checkpoint: RefCell::new(e.checkpoint.clone()),
                        result: RefCell::new(None),
                        follow_ups: RefCell::new(Vec::new()),
                        parent_results: e.parent_results.clone(),
                        log: Rc::clone(&self.log),
                        jobs: self.jobs.clone(),
                    });
                    e.ctl = Some(Rc::clone(&ctl));
                    let handler = Arc::clone(&self.jobs.shared.types[ti].handler);
                    let payload = e.job.payload.clone();
                    let timeout = e.job.timeout_ms;
                    st.to_run.push((ctl, handler, payload, timeout));
                    started = true;
                }
                Decision::ParentDone {
                    child,
                    parent,
                    result,
                } => {
                    st.parent_done(child, parent, result, aging);
                }
                Decision::ParentFailed { child, error, dead } => {
                    st.unplace(child);
                    if let Some(e) = st.entries.get_mut(&child) {
                        e.last_error = Some(error);
                    }
                    let state = if dead {
                        JobState::Dead
                    } else {
                        JobState::Cancelled
                    };
                    st.finish(child, state, kept);
                }
                Decision::Complete {
                    id,
                    result,
                    follow_ups,
                    notified,
                } => {
                    st.release(id, &self.jobs);
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.result = result.clone();
                    }
                    if let Some(children) = st.dependents.get_mut(&id) {
                        children.retain(|c| !notified.contains(c));
                    }
                    for child in notified {
                        st.parent_done(child, id, result.clone(), aging);
                    }
                    st.finish(id, JobState::Completed, kept);
                    for (fid, _) in follow_ups {
                        if let Some(e) = st.entries.get_mut(&fid) {
                            e.pending = false;
                        }
                        st.place(fid, aging);
                    }
                }
                Decision::Requeue { id, run_at } => {
                    st.release(id, &self.jobs);
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.rerun = false;
                        e.base = e.attempt;
                        e.run_at_ms = run_at;
                        e.state = JobState::Scheduled;
                    }
                    st.place(id, aging);
                }
                Decision::Retry { id, at, error } => {
                    st.release(id, &self.jobs);
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.last_error = Some(error);
                        e.run_at_ms = at;
                        e.state = JobState::Scheduled;
                    }
                    st.place(id, aging);
                }
                Decision::Dead { id, error } => {
                    st.release(id, &self.jobs);
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.last_error = Some(error);
                    }
                    st.finish(id, JobState::Dead, kept);
                }
                Decision::Cancel(id) => {
                    st.release(id, &self.jobs);
                    st.finish(id, JobState::Cancelled, kept);
                }
            }
        }
        let _ = now;
        drop(st);
        if started {
            self.runner.notify();
        }
        self.wake_node_waiters();
    }

    /// Wakes the schedulers of the shards waiting for a node slot this shard freed.
    fn wake_node_waiters(&self) {
        let mask = std::mem::take(&mut self.st.borrow_mut().node_wake);
        if mask == 0 {
            return;
        }
        for s in 0..self.jobs.engine.shard_count() {
            if mask & (1u64 << (s % 64)) != 0 {
                if s == self.shard {
                    self.sched.notify();
                    continue;
                }
                drop(self.jobs.engine.spawn_on(s, move || async move {
                    if let Some(q) = local_queue() {
                        q.wake();
                    }
                }));
            }
        }
    }

    /// The runner: polls every running handler; records each outcome for the scheduler.
    async fn run_runner(self: Rc<Self>) {
        let mut running = FuturesUnordered::new();
        let this = Rc::clone(&self);
        futures::future::poll_fn(move |cx| {
            loop {
                let new = std::mem::take(&mut this.st.borrow_mut().to_run);
                for (ctl, handler, payload, timeout) in new {
                    running.push(run_attempt(ctl, handler, payload, timeout));
                }
                let mut any = false;
                while let Poll::Ready(Some((id, outcome))) = running.poll_next_unpin(cx) {
                    this.st.borrow_mut().outcomes.push((id, outcome));
                    any = true;
                }
                if any {
                    this.sched.notify();
                }
                if this.st.borrow().stopped {
                    return Poll::Ready(());
                }
                // Register for new work, then check once more that none arrived meanwhile.
                if this.runner.flag.replace(false) || !this.st.borrow().to_run.is_empty() {
                    continue;
                }
                *this.runner.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
        })
        .await;
        drop(self);
    }
}

use std::sync::Arc;

/// Runs one attempt: the handler against cancellation and the timeout.
async fn run_attempt(
    ctl: Rc<RunCtl>,
    handler: DynHandler,
    payload: Vec<u8>,
    timeout_ms: u64,
) -> (u64, Outcome) {
    let id = ctl.id.0;
    let ctx = JobContext {
        ctl: Rc::clone(&ctl),
    };
    let work = std::panic::AssertUnwindSafe(handler(&payload, ctx)).catch_unwind();
    let c2 = Rc::clone(&ctl);
    let cancelled = futures::future::poll_fn(move |cx| {
        if c2.cancelled.get() {
            Poll::Ready(())
        } else {
            *c2.cancel_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    });
    let stop = async move {
        if timeout_ms == 0 {
            cancelled.await;
            None
        } else {
            match select(
                Box::pin(cancelled),
                Box::pin(quark_shard::sleep(Duration::from_millis(timeout_ms))),
            )
            .await
            {
                Either::Left(_) => None,
                Either::Right(_) => Some(timeout_ms),
            }
        }
    };
    let outcome = match select(Box::pin(work), Box::pin(stop)).await {
        Either::Left((Ok(Ok(())), _)) => Outcome::Ok,
        Either::Left((Ok(Err(f)), _)) => Outcome::Failed(f),
        Either::Left((Err(panic), _)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Outcome::Failed(JobFailure::retry(format!("the handler panicked: {msg}")))
        }
        Either::Right((None, _)) => Outcome::Cancelled,
        Either::Right((Some(ms), _)) => Outcome::TimedOut(ms),
    };
    // A cancel that raced the end of the handler wins: the caller asked for it.
    let outcome = if ctl.cancelled.get() && !matches!(outcome, Outcome::Ok) {
        Outcome::Cancelled
    } else {
        outcome
    };
    (id, outcome)
}

/// Applies one stored record to the job being rebuilt.
fn fold(e: &mut Option<Entry>, rec: JobRecord, jobs: &Jobs, now: u64) {
    match rec {
        JobRecord::Enqueued(job) => {
            let ti = jobs.shared.type_index(&job.type_name);
            let mut n = Entry::new(job, ti);
            n.waiting_on = n.job.depends_on.iter().copied().collect();
            *e = Some(n);
        }
        JobRecord::Started { attempt, .. } => {
            if let Some(e) = e {
                e.attempt = attempt;
                e.state = JobState::Running;
            }
        }
        JobRecord::Checkpoint { data } => {
            if let Some(e) = e {
                e.checkpoint = Some(data);
            }
        }
        JobRecord::Failed {
            attempt,
            error,
            retry_at_ms,
        } => {
            if let Some(e) = e {
                e.attempt = e.attempt.max(attempt);
                e.last_error = Some(error);
                match retry_at_ms {
                    Some(t) => {
                        e.state = JobState::Scheduled;
                        e.run_at_ms = t;
                    }
                    None => e.state = JobState::Dead,
                }
            }
        }
        JobRecord::Completed {
            attempt, result, ..
        } => {
            // A snapshot: the job's earlier records are gone; keep what the status needs.
            let mut done = e.take().unwrap_or_else(|| Entry::new(placeholder(), None));
            done.attempt = done.attempt.max(attempt);
            done.result = result;
            done.state = JobState::Completed;
            *e = Some(done);
        }
        JobRecord::Cancelled { attempt, .. } => {
            let mut done = e.take().unwrap_or_else(|| Entry::new(placeholder(), None));
            done.attempt = done.attempt.max(attempt);
            done.state = JobState::Cancelled;
            *e = Some(done);
        }
        JobRecord::Requeued { base, run_at_ms } => {
            if let Some(e) = e {
                e.base = base;
                e.attempt = e.attempt.max(base);
                e.run_at_ms = run_at_ms;
                e.state = JobState::Scheduled;
                e.rerun = false;
                e.last_error = None;
            }
        }
        JobRecord::RerunRequested => {
            if let Some(e) = e {
                e.rerun = true;
            }
        }
        JobRecord::ParentDone { parent, result } => {
            if let Some(e) = e {
                if e.waiting_on.remove(&parent) {
                    e.parent_results.push((parent, result));
                }
            }
        }
    }
    let _ = now;
}

fn placeholder() -> StoredJob {
    StoredJob {
        type_name: String::new(),
        payload: Vec::new(),
        priority: 0,
        run_at_ms: 0,
        enqueued_ms: 0,
        retry: super::RetryPolicy::none(),
        timeout_ms: 0,
        unique_key: None,
        concurrency_key: None,
        concurrency_limit: 1,
        key_rate_limit: None,
        depends_on: Vec::new(),
        on_parent_failure: super::OnParentFailure::Cancel,
    }
}

fn status_of(id: u64, e: &Entry) -> JobStatus {
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
    }
}

impl State {
    /// A new job id; adds a reservation record to `b` when the reserved range is used up.
    fn alloc(&mut self, shard: ShardId, b: &mut Batch) -> u64 {
        if self.next_seq >= self.reserved {
            self.reserved = self.next_seq + RESERVE;
            b.push(NewRecord {
                kind: RecordKind::Snapshot,
                key: HW_KEY.to_vec(),
                payload: postcard::to_allocvec(&self.reserved).unwrap_or_default(),
                expires_at_ms: None,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        JobId::new(shard, seq).0
    }

    fn insert_recovered(&mut self, id: u64, e: Entry, aging: i64) {
        let state = e.state;
        if let (Some(uk), false) = (&e.job.unique_key, state.is_final()) {
            self.unique.insert(uk.clone(), id);
        }
        self.entries.insert(id, e);
        match state {
            JobState::Completed | JobState::Cancelled => self.finished.push_back(id),
            JobState::Dead => {}
            _ => self.place(id, aging),
        }
    }

    /// Puts a scheduled or queued job where the scheduler finds it: the timer set if its time
    /// has not come, else the ready set of its type (or its key's waiting set).
    fn place(&mut self, id: u64, aging: i64) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if e.state.is_final() || e.state == JobState::Running {
            return;
        }
        if !e.waiting_on.is_empty() {
            e.state = JobState::Blocked;
            return;
        }
        e.state = JobState::Scheduled;
        self.scheduled.insert((e.run_at_ms, id));
        let _ = aging;
    }

    fn make_ready(&mut self, id: u64, aging: i64) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.state = JobState::Queued;
        e.order = e.run_at_ms as i64 - i64::from(e.job.priority) * aging;
        let Some(ti) = e.type_idx else {
            // Its type is not registered on this node: it stays queued, visible, never run.
            return;
        };
        self.ready[ti].insert((e.order, id));
    }

    /// Parent `parent` of `child` completed (durably recorded for the child).
    fn parent_done(&mut self, child: u64, parent: u64, result: Option<Vec<u8>>, aging: i64) {
        let Some(e) = self.entries.get_mut(&child) else {
            return;
        };
        if e.waiting_on.remove(&parent) {
            e.parent_results.push((parent, result));
        }
        if e.waiting_on.is_empty() && e.state == JobState::Blocked {
            self.place(child, aging);
        }
    }

    /// Removes a queued or scheduled job from the scheduler's sets.
    fn unplace(&mut self, id: u64) {
        let Some(e) = self.entries.get(&id) else {
            return;
        };
        self.scheduled.remove(&(e.run_at_ms, id));
        if let Some(t) = e.rate_wait_ms {
            self.rate_waiting.remove(&(t, id));
        }
        if let Some(ti) = e.type_idx {
            self.ready[ti].remove(&(e.order, id));
        }
        if let Some(k) = &e.job.concurrency_key {
            if let Some(w) = self.key_waiting.get_mut(k) {
                w.remove(&(e.order, id));
            }
        }
    }

    /// Promotes due jobs and picks the jobs to start now: per type in turn, in aged priority
    /// order, within the shard, type and key limits. Returns (id, attempt).
    fn pick(&mut self, now: u64, jobs: &Jobs, aging: i64, shard: ShardId) -> Vec<(u64, u32)> {
        while let Some(&(t, id)) = self.scheduled.first() {
            if t > now {
                break;
            }
            self.scheduled.pop_first();
            self.make_ready(id, aging);
        }
        while let Some(&(t, id)) = self.rate_waiting.first() {
            if t > now {
                break;
            }
            self.rate_waiting.pop_first();
            if let Some(e) = self.entries.get_mut(&id) {
                e.rate_wait_ms = None;
                if let Some(ti) = e.type_idx {
                    self.ready[ti].insert((e.order, id));
                }
            }
        }
        let mut out = Vec::new();
        if self.paused_all || self.stopped {
            return out;
        }
        let max = jobs.shared.config.max_running_per_shard;
        let n = self.ready.len();
        for k in 0..n {
            let t = (self.rr + k) % n;
            if self.paused.contains(&t) {
                continue;
            }
            let limit = jobs.shared.types[t].config.max_running_per_shard;
            let type_rate = jobs.shared.types[t].config.rate_limit;
            let node_slots = jobs.shared.types[t].node_slots.as_deref();
            if let Some(r) = &type_rate {
                self.type_buckets[t]
                    .get_or_insert_with(|| Bucket::full(r, now))
                    .refill(r, now);
            }
            while self.running < max && self.type_running[t] < limit {
                if self.type_buckets[t].is_some_and(|b| b.available < 1.0 - 1e-9) {
                    break;
                }
                let Some((order, id)) = self.ready[t].pop_first() else {
                    break;
                };
                let Some(e) = self.entries.get_mut(&id) else {
                    continue;
                };
                // The per-node limit: a refused shard is woken by the next release.
                if let Some(ns) = node_slots {
                    if !ns.try_acquire(shard) {
                        self.ready[t].insert((order, id));
                        break;
                    }
                }
                if let Some(key) = &e.job.concurrency_key {
                    let r = self.key_running.get(key).copied().unwrap_or(0);
                    if r >= e.job.concurrency_limit {
                        self.key_waiting
                            .entry(key.clone())
                            .or_default()
                            .insert((order, id));
                        if let Some(ns) = node_slots {
                            self.node_wake |= ns.release();
                        }
                        continue;
                    }
                    if let Some(limit) = &e.job.key_rate_limit {
                        let b = self
                            .key_buckets
                            .entry(key.clone())
                            .or_insert_with(|| Bucket::full(limit, now));
                        b.refill(limit, now);
                        if !b.take() {
                            let at = b.next_token_ms(limit);
                            e.rate_wait_ms = Some(at);
                            self.rate_waiting.insert((at, id));
                            if let Some(ns) = node_slots {
                                self.node_wake |= ns.release();
                            }
                            continue;
                        }
                    }
                    *self.key_running.entry(key.clone()).or_insert(0) += 1;
                }
                if let Some(b) = self.type_buckets[t].as_mut() {
                    b.take();
                }
                e.state = JobState::Running;
                e.attempt += 1;
                self.type_running[t] += 1;
                self.running += 1;
                out.push((id, e.attempt));
            }
        }
        self.rr = self.rr.wrapping_add(1);
        out
    }

    /// The earliest time something becomes startable without an event: a scheduled job, a
    /// key's next rate token, or the next token of a rate-limited type with ready jobs.
    fn next_wake(&self, jobs: &Jobs) -> Option<u64> {
        let mut t = self.scheduled.first().map(|&(t, _)| t);
        let mut consider = |x: u64| t = Some(t.map_or(x, |t| t.min(x)));
        for s in self.schedules.values() {
            if let (false, Some(n)) = (s.stored.paused, s.next_ms) {
                consider(n.max(0) as u64);
            }
        }
        if let Some(&(x, _)) = self.rate_waiting.first() {
            consider(x);
        }
        for (i, b) in self.type_buckets.iter().enumerate() {
            if let (Some(b), Some(r)) = (b, &jobs.shared.types[i].config.rate_limit) {
                if !self.ready[i].is_empty() && b.available < 1.0 {
                    consider(b.next_token_ms(r));
                }
            }
        }
        t
    }

    /// Frees the slots of a job whose attempt ended; readies one job waiting for its key.
    fn release(&mut self, id: u64, jobs: &Jobs) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.ctl = None;
        if let Some(ti) = e.type_idx {
            self.type_running[ti] = self.type_running[ti].saturating_sub(1);
            if let Some(ns) = &jobs.shared.types[ti].node_slots {
                self.node_wake |= ns.release();
            }
        }
        self.running = self.running.saturating_sub(1);
        if let Some(key) = e.job.concurrency_key.clone() {
            if let Some(r) = self.key_running.get_mut(&key) {
                *r = r.saturating_sub(1);
                if *r == 0 {
                    self.key_running.remove(&key);
                }
            }
            if let Some(w) = self.key_waiting.get_mut(&key) {
                if let Some((order, wid)) = w.pop_first() {
                    if let Some(ti) = self.entries.get(&wid).and_then(|e| e.type_idx) {
                        self.ready[ti].insert((order, wid));
                    }
                }
                if w.is_empty() {
                    self.key_waiting.remove(&key);
                }
            }
        }
    }

    /// Moves a job to a final state: wakes its waiters, frees its unique key, and forgets the
    /// oldest finished jobs beyond `kept`.
    fn finish(&mut self, id: u64, state: JobState, kept: usize) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.state = state;
        e.ctl = None;
        if state != JobState::Dead {
            e.job.payload = Vec::new();
        }
        let status = status_of(id, e);
        if let Some(uk) = &e.job.unique_key {
            if self.unique.get(uk) == Some(&id) {
                self.unique.remove(uk);
            }
        }
        for w in self.waiters.remove(&id).unwrap_or_default() {
            let _ = w.send(status.clone());
        }
        // Dependents not told in this job's own batch hear of it in the next round.
        for child in self.dependents.remove(&id).unwrap_or_default() {
            self.late.push(match state {
                JobState::Completed => Late::Done {
                    child,
                    parent: id,
                    result: status.result.clone(),
                },
                _ => Late::Failed {
                    child,
                    parent: id,
                    dead: state == JobState::Dead,
                },
            });
        }
        if state != JobState::Dead {
            self.finished.push_back(id);
            while self.finished.len() > kept {
                if let Some(old) = self.finished.pop_front() {
                    if self.entries.get(&old).is_some_and(|e| e.state.is_final()) {
                        self.entries.remove(&old);
                    }
                }
            }
        }
    }
}
