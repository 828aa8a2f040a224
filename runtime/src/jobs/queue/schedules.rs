//! Cron schedules: stored as snapshots, fired by the scheduler's rounds.

use super::*;

impl ShardQueue {
    pub(super) fn schedule_record(s: &StoredSchedule) -> NewRecord {
        let payload = record::encode_schedule(s);
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

    pub(crate) fn schedules(&self) -> Vec<crate::jobs::ScheduleStatus> {
        self.st
            .borrow()
            .schedules
            .values()
            .map(Sched::status)
            .collect()
    }

    /// The cron occurrences due at `now`: per schedule, the jobs to enqueue under its policy
    /// and the new last occurrence; records go into `b`.
    pub(super) fn fire_due(&self, now: u64, b: &mut Batch, decisions: &mut Vec<Decision>) {
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
                crate::jobs::MissedTicks::FireAll => count.min(MAX_FIRE_ALL),
                crate::jobs::MissedTicks::FireOnce => 1,
                crate::jobs::MissedTicks::Skip => usize::from(on_time > 0),
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
}
