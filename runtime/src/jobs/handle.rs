//! The `Jobs` handle: enqueue, inspect, cancel, replay, pause, schedules; each operation runs
//! on the shard that owns the job.

use super::*;

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
                heartbeat_timeout_ms: o
                    .heartbeat_timeout
                    .map_or(0, |t| (t.as_millis() as u64).max(1)),
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

    pub(crate) async fn on_owner<R: Send + 'static>(
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

    pub(crate) async fn on_every_shard<R: Send + 'static>(
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
pub(crate) fn check_batch_deps(prepared: &[Prepared]) -> Result<(), EnqueueError> {
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
    pub(crate) fn visit(
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
