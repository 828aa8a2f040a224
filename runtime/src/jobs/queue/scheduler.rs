//! The scheduler task: one round = decide starts and outcomes, write them as one batch, apply them
//! once durable.

use super::*;

impl ShardQueue {
    /// The scheduler: each round builds one batch with the starts it decides and the outcomes
    /// of finished attempts, appends it, and applies it once durable.
    pub(super) async fn run_scheduler(self: Rc<Self>) {
        let idle = self.jobs.shared.config.idle_poll;
        loop {
            if !self.jobs.engine.is_running() {
                self.st.borrow_mut().stopped = true;
                self.runner.notify();
                return;
            }
            let now = self.now();
            let (batch, mut decisions) = self.build_round(now);
            if !batch.is_empty() {
                if self.jobs.shared.config.start_before_durable {
                    // The handlers start now; their outcomes go in a later round's batch, so
                    // the log still has every `Started` before its outcome.
                    let (starts, rest): (Vec<_>, Vec<_>) = decisions
                        .into_iter()
                        .partition(|d| matches!(d, Decision::Start(_)));
                    decisions = rest;
                    if !starts.is_empty() {
                        self.apply(starts, now);
                    }
                }
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

    pub(super) fn build_round(&self, now: u64) -> (Batch, Vec<Decision>) {
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
                        (_, crate::jobs::OnParentFailure::Fail) => {
                            (true, if dead { "is dead" } else { "was cancelled" })
                        }
                        (true, crate::jobs::OnParentFailure::Cancel) => (false, "is dead"),
                        (false, crate::jobs::OnParentFailure::Cancel) => (false, "was cancelled"),
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
            // The attempt ended: its context's later heartbeats are ignored, and its latest
            // details stay with the job (written below if the attempt failed).
            let mut unwritten_beat = None;
            if let Some(c) = &ctl {
                c.ended.set(true);
                let mut hb = c.beat.borrow_mut();
                if hb.dirty {
                    unwritten_beat = hb.latest.clone();
                }
                hb.dirty = false;
                let latest = hb.latest.clone();
                drop(hb);
                if let Some(e) = st.entries.get_mut(&id) {
                    if latest.is_some() {
                        e.heartbeat = latest;
                    }
                }
            }
            let Some(e) = st.entries.get(&id) else {
                continue;
            };
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
                Outcome::HeartbeatTimedOut(ms) => retry_or_dead(
                    e,
                    format!("attempt {a} timed out: no heartbeat for {ms} ms"),
                    true,
                    &mut rng_state,
                ),
                Outcome::Cancelled => Decision::Cancel(id),
            };
            drop(st);
            if let (Some(beat), Decision::Retry { .. } | Decision::Dead { .. }) =
                (unwritten_beat, &d)
            {
                b.event(
                    &key,
                    &record::encode(&JobRecord::Heartbeat {
                        attempt: beat.attempt,
                        at_ms: beat.at_ms,
                        details: beat.details,
                    }),
                );
            }
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

    pub(super) fn apply(self: &Rc<Self>, decisions: Vec<Decision>, now: u64) {
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
                        heartbeat_timeout_ms: e.job.heartbeat_timeout_ms,
                        beat: RefCell::new(AttemptBeat {
                            last: std::time::Instant::now(),
                            latest: e.heartbeat.clone(),
                            dirty: false,
                        }),
                        beat_notify: Notify::default(),
                        ended: Cell::new(false),
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
    pub(super) fn wake_node_waiters(&self) {
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
}
