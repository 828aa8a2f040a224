//! Recovery: a shard's jobs and schedules rebuilt from its log at start.

use super::*;

impl ShardQueue {
    pub(super) async fn recover(&self) -> Result<(), JobsStartError> {
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
            match record::decode_schedule(&r.payload)
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
    pub(super) fn rebuild(
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
            max_seq = max_seq.max(id & crate::jobs::SEQ_MASK);
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
}

/// Applies one stored record to the job being rebuilt.
pub(super) fn fold(e: &mut Option<Entry>, rec: JobRecord, jobs: &Jobs, now: u64) {
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
        JobRecord::Heartbeat {
            attempt,
            at_ms,
            details,
        } => {
            if let Some(e) = e {
                // Fenced by attempt: a late record of an older attempt never replaces a newer
                // attempt's details.
                if e.heartbeat.as_ref().is_none_or(|b| attempt >= b.attempt) {
                    e.heartbeat = Some(Beat {
                        attempt,
                        at_ms,
                        details,
                    });
                }
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

pub(super) fn placeholder() -> StoredJob {
    StoredJob {
        type_name: String::new(),
        payload: Vec::new(),
        priority: 0,
        run_at_ms: 0,
        enqueued_ms: 0,
        retry: crate::jobs::RetryPolicy::none(),
        timeout_ms: 0,
        unique_key: None,
        concurrency_key: None,
        concurrency_limit: 1,
        key_rate_limit: None,
        depends_on: Vec::new(),
        on_parent_failure: crate::jobs::OnParentFailure::Cancel,
        heartbeat_timeout_ms: 0,
    }
}
