//! The in-memory state machine of a shard's jobs: placement in the ready, scheduled and waiting
//! sets, picking the starts, releasing slots.

use super::*;

impl State {
    /// A new job id; adds a reservation record to `b` when the reserved range is used up.
    pub(super) fn alloc(&mut self, shard: ShardId, b: &mut Batch) -> u64 {
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

    pub(super) fn insert_recovered(&mut self, id: u64, e: Entry, aging: i64) {
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
    pub(super) fn place(&mut self, id: u64, aging: i64) {
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

    pub(super) fn make_ready(&mut self, id: u64, aging: i64) {
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
    pub(super) fn parent_done(
        &mut self,
        child: u64,
        parent: u64,
        result: Option<Vec<u8>>,
        aging: i64,
    ) {
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
    pub(super) fn unplace(&mut self, id: u64) {
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
    pub(super) fn pick(
        &mut self,
        now: u64,
        jobs: &Jobs,
        aging: i64,
        shard: ShardId,
    ) -> Vec<(u64, u32)> {
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
    pub(super) fn next_wake(&self, jobs: &Jobs) -> Option<u64> {
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
    pub(super) fn release(&mut self, id: u64, jobs: &Jobs) {
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
    pub(super) fn finish(&mut self, id: u64, state: JobState, kept: usize) {
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
