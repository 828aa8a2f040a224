//! Reading the time index: loading the near future, checking slots against their tables, spreading
//! coarse buckets into fine ones.

use super::*;

impl Service {
    /// Reads the buckets that entered the look-ahead window (or that recovery found due).
    pub(super) async fn load_due(&self, now: u64) -> Result<bool, WriterError> {
        let la = self.shared.config.lookahead_ms;
        let mut todo = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            // A fine bucket is read only once its coarse bucket was spread into fine ones.
            while todo.len() < 1024 {
                if st.loaded_to < st.recovered_to {
                    let next = st
                        .recovered_past
                        .range(st.loaded_to..st.recovered_to)
                        .next()
                        .copied();
                    let b = next.unwrap_or(st.recovered_to - 1);
                    if !st.expanded(b) {
                        break;
                    }
                    match next {
                        Some(b) => {
                            todo.push(b);
                            st.loaded_to = b + 1;
                        }
                        None => st.loaded_to = st.recovered_to,
                    }
                    continue;
                }
                let b = st.loaded_to;
                if (b * st.bucket_ms).saturating_sub(la) > now || !st.expanded(b) {
                    break;
                }
                todo.push(b);
                st.loaded_to += 1;
            }
        }
        if todo.is_empty() {
            return Ok(false);
        }
        let mut lsns = Vec::new();
        for b in &todo {
            lsns.extend(self.log.key_lsns(&bucket_key(*b)));
        }
        let records = self.log.read_many(&lsns).await.map_err(WriterError::Read)?;
        let slots = self
            .current_slots(records)
            .await
            .map_err(WriterError::Read)?;
        let mut st = self.st.borrow_mut();
        for s in slots {
            st.hold(s);
        }
        // Next occurrences fired but not yet written (their source bucket is not closed).
        let loaded: HashSet<u64> = todo.iter().copied().collect();
        let mut extra = Vec::new();
        for v in st.crossings.values() {
            for s in v {
                if loaded.contains(&(s.due_ms / st.bucket_ms))
                    && st.live.get(&s.rid) == Some(&s.due_ms)
                {
                    extra.push(s.clone());
                }
            }
        }
        for s in extra {
            st.hold(s);
        }
        drop(st);
        self.firer.notify();
        Ok(true)
    }

    /// Decodes time-index records and keeps the slots whose registration is still current:
    /// a slot written before a destructive change of its group is checked against the group's
    /// table (read 256 groups at a time, kept only as sets of registration ids).
    pub(super) async fn current_slots(
        &self,
        records: Vec<quark_persist::Record>,
    ) -> Result<Vec<Slot>, ReadError> {
        let mut slots: Vec<(u64, Slot)> = Vec::new();
        for r in records {
            match format::decode::<Vec<Slot>>(&r.payload) {
                Ok(v) => slots.extend(v.into_iter().map(|s| (r.origin_lsn, s))),
                Err(e) => {
                    tracing::warn!(shard = self.shard, lsn = r.lsn, error = %e, "skipping a reminder index record")
                }
            }
        }
        let mut check: Vec<u32> = {
            let st = self.st.borrow();
            let set: HashSet<u32> = slots
                .iter()
                .map(|(o, s)| (*o, self.group(&s.actor)))
                .filter(|(o, g)| needs_check(*o, st.groups[*g as usize]))
                .map(|(_, g)| g)
                .collect();
            set.into_iter().collect()
        };
        check.sort_unstable();
        let mut current: HashMap<u32, HashSet<u64>> = HashMap::new();
        for chunk in check.chunks(256) {
            let set: HashSet<u32> = chunk.iter().copied().collect();
            for (g, t) in self.read_groups(&set).await? {
                current.insert(g, t.into_iter().map(|e| e.rid).collect());
            }
        }
        let mut st = self.st.borrow_mut();
        let mut out = Vec::with_capacity(slots.len());
        for (origin, s) in slots {
            let g = self.group(&s.actor);
            let checked = current.get(&g);
            if (checked.is_some() || needs_check(origin, st.groups[g as usize]))
                && !checked.is_some_and(|rids| rids.contains(&s.rid))
            {
                st.counters.stale_dropped += 1;
                continue;
            }
            out.push(s);
        }
        Ok(out)
    }

    /// Spreads the coarse buckets that come within one coarse width (plus the look-ahead) of
    /// now into fine buckets; a big one over several rounds (about `EXPAND_SLOTS_MAX` slots per
    /// round, its records consumed in log order behind a truncate barrier).
    pub(super) async fn expand_due(&self, now: u64) -> Result<bool, WriterError> {
        let la = self.shared.config.lookahead_ms;
        let mut did = false;
        for _ in 0..10_000 {
            let (c, coarse_ms) = {
                let st = self.st.borrow();
                (st.expanded_to, st.coarse_ms())
            };
            if c.saturating_mul(coarse_ms) > now + la + coarse_ms {
                break;
            }
            let key = coarse_key(c);
            let lsns = self.log.key_lsns(&key);
            if lsns.is_empty() {
                // Nothing stored there: moving on needs no record (a restart looks again).
                self.st.borrow_mut().expanded_to = c + 1;
                did = true;
                continue;
            }
            // A chunk of the key's records, in log order (a slot is about 40 bytes).
            let mut records = Vec::new();
            let mut taken = 0usize;
            for l in &lsns {
                if taken >= EXPAND_SLOTS_MAX {
                    break;
                }
                if let Some(r) = self.log.read(*l).await.map_err(WriterError::Read)? {
                    taken += r.payload.len() / 40 + 1;
                    records.push(r);
                }
            }
            let whole = records.len() == lsns.len();
            let before = records.iter().map(|r| r.origin_lsn).max().unwrap_or(0) + 1;
            let slots = self
                .current_slots(records)
                .await
                .map_err(WriterError::Read)?;
            let mut batch = Batch::new();
            let mut fine: BTreeMap<u64, Vec<Slot>> = BTreeMap::new();
            {
                let st = self.st.borrow();
                for s in slots {
                    fine.entry(st.bucket(s.due_ms)).or_default().push(s);
                }
            }
            for (b, v) in &fine {
                batch.event(&bucket_key(*b), &format::encode(v));
            }
            if whole {
                batch.push(NewRecord {
                    kind: RecordKind::Snapshot,
                    key,
                    payload: format::encode(&Vec::<Slot>::new()),
                    expires_at_ms: Some(now),
                });
                batch.snapshot(EXPANDED_KEY, &format::encode(&(c + 1)));
            } else {
                batch.truncate(&key, before);
            }
            self.log
                .append(&batch)
                .await
                .map_err(|e| WriterError::Append(Arc::new(e)))?;
            let mut st = self.st.borrow_mut();
            for b in fine.keys() {
                if *b < st.recovered_to {
                    st.recovered_past.insert(*b);
                }
            }
            if whole {
                st.expanded_to = c + 1;
                st.expanded_durable = c + 1;
            }
            did = true;
        }
        Ok(did)
    }
}
