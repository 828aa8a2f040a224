//! The operations of the `Jobs` handle on one shard: enqueue, status, cancel, replay, purge, list,
//! pause.

use super::*;

impl ShardQueue {
    /// Stores new jobs; resolves with their ids once durable.
    ///
    /// With `JobsConfig::start_on_enqueue` (the default) the jobs that can start at once (and
    /// any others the scheduler would start now) get their `Started` records in the same batch,
    /// after the `Enqueued` ones: one `fdatasync` makes both durable, and the handlers start
    /// when it returns (never before: a start is durable before its handler runs, and the log
    /// is durable in order, so the job's `Enqueued` record is too).
    pub(crate) async fn enqueue(
        self: &Rc<Self>,
        jobs: Vec<(StoredJob, Vec<Dep>)>,
    ) -> Result<Vec<JobId>, EnqueueError> {
        let mut batch = Batch::new();
        let mut ids: Vec<u64> = Vec::with_capacity(jobs.len());
        let mut created: Vec<usize> = Vec::new();
        let mut reruns = Vec::new();
        let aging = self.aging_ms();
        let now = self.now();
        let start_now = self.jobs.shared.config.start_on_enqueue;
        let mut starts: Vec<(u64, u32)> = Vec::new();
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
            if start_now {
                // Placed now (still `pending`: invisible to status, list and cancel until
                // durable), so the scheduler's pick can start them in this batch.
                for &i in &created {
                    st.place(ids[i], aging);
                }
                starts = st.pick(now, &self.jobs, aging, self.shard);
                for &(id, attempt) in &starts {
                    batch.event(
                        &job_key(id),
                        &record::encode(&JobRecord::Started {
                            attempt,
                            at_ms: now,
                        }),
                    );
                }
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
                    if !start_now {
                        st.place(id, aging);
                    }
                }
                drop(st);
                if !starts.is_empty() {
                    let decisions = starts.iter().map(|&(id, _)| Decision::Start(id)).collect();
                    self.apply(decisions, now);
                }
                self.wake_node_waiters();
                self.sched.notify();
                Ok(out)
            }
            Err(err) => {
                // Undo the starts (nothing of this batch is durable): slots back, attempt
                // numbers back, and the jobs that were already queued go back to the queue.
                for &(id, _) in &starts {
                    st.release(id, &self.jobs);
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.attempt = e.attempt.saturating_sub(1);
                        e.state = JobState::Scheduled;
                    }
                    if !created.iter().any(|&i| ids[i] == id) {
                        st.place(id, aging);
                    }
                }
                for &i in &created {
                    let id = ids[i];
                    st.unplace(id);
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
                drop(st);
                self.wake_node_waiters();
                Err(EnqueueError::Append(err))
            }
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

    pub(super) fn apply_pause(&self, p: StoredPause) {
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
    pub(super) fn terminal(&self, b: &mut Batch, id: u64, rec: &JobRecord, now: u64) {
        let keep = self.jobs.shared.config.finished_retention.as_millis() as u64;
        b.push(NewRecord {
            kind: RecordKind::Snapshot,
            key: job_key(id),
            payload: record::encode(rec),
            expires_at_ms: Some(now.saturating_add(keep)),
        });
    }
}
