//! The writer task: the only one that writes the log. A round stores the handlers' changes and
//! closes delivered buckets, in one batch.

use super::*;

impl Service {
    pub(super) async fn run_writer(self: Rc<Self>) {
        loop {
            if !self.engine.is_running() {
                self.stop();
                return;
            }
            match self.writer_round().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(shard = self.shard, error = %e, "reminder records could not be read or written; the shard's reminders stop");
                    self.stop();
                    return;
                }
            }
            let wait = self.writer_wait(now_ms());
            let sleep = Box::pin(quark_shard::sleep(wait));
            let _ = select(Box::pin(self.writer.wait()), sleep).await;
        }
    }

    pub(super) fn stop(&self) {
        let mut st = self.st.borrow_mut();
        st.stopped = true;
        for c in st.cmds.drain(..) {
            drop(c.done.send(Err(ReminderError::Stopped)));
        }
        drop(st);
        self.firer.notify();
    }

    /// How long the writer may sleep: until the next bucket to load or to close.
    pub(super) fn writer_wait(&self, now: u64) -> Duration {
        let st = self.st.borrow();
        let la = self.shared.config.lookahead_ms;
        let load_at = (st.loaded_to * st.bucket_ms).saturating_sub(la);
        let close_at = (st.closing + 1) * st.bucket_ms;
        let at = load_at.min(close_at);
        Duration::from_millis(at.saturating_sub(now).max(1)).min(IDLE_POLL)
    }

    /// One round: load the near future, store the commands, close delivered buckets. Returns
    /// whether it did anything.
    pub(super) async fn writer_round(&self) -> Result<bool, WriterError> {
        let now = now_ms();
        let expanded = self.expand_due(now).await?;
        let loaded = self.load_due(now).await? || expanded;
        let mut cmds = std::mem::take(&mut self.st.borrow_mut().cmds);
        // Tables the commands need.
        let mut need = HashSet::new();
        {
            let st = self.st.borrow();
            let mut added: HashMap<u32, usize> = HashMap::new();
            let mut seen: HashSet<(&[u8], &str)> = HashSet::new();
            for c in &mut cmds {
                match &mut c.op {
                    Op::Set { actor, name, .. } => {
                        let g = self.group(actor);
                        let n = added
                            .entry(g)
                            .or_insert_with(|| self.log.key_lsns(&group_key(g)).len());
                        *n += 1;
                        // A name set twice in one round replaces the first: look at the table.
                        let again = !seen.insert((actor.as_slice(), name.as_str()));
                        if !st.groups[g as usize].known
                            || again
                            || st.filter.may_contain(actor, name)
                            || *n >= SNAPSHOT_AT
                        {
                            need.insert(g);
                        }
                    }
                    Op::Del { actor, .. } | Op::List { actor } => {
                        need.insert(self.group(actor));
                    }
                    Op::ListAll { from, to_group, .. } => {
                        // The groups from the page's start on, until enough records.
                        let groups = self.shared.config.groups_per_shard;
                        let mut records = 0;
                        let mut g = from.group;
                        while g < groups && records < LIST_READ_RECORDS_MAX {
                            let n = self.log.key_lsns(&group_key(g)).len();
                            if n > 0 {
                                need.insert(g);
                                records += n;
                            }
                            g += 1;
                        }
                        *to_group = g.max(from.group);
                    }
                }
            }
        }
        let mut tables = if need.is_empty() {
            HashMap::new()
        } else {
            match self.read_groups(&need).await {
                Ok(t) => t,
                Err(e) => {
                    // The commands fail; the service goes on.
                    tracing::warn!(shard = self.shard, error = %e, "reading reminder tables failed");
                    let e = Arc::new(e);
                    for c in cmds {
                        drop(c.done.send(Err(ReminderError::Read(Arc::clone(&e)))));
                    }
                    return Ok(true);
                }
            }
        };
        let mut round = Round::default();
        let upto = {
            let st = self.st.borrow();
            st.closable_upto(now)
        };
        self.build_commands(cmds, &mut tables, upto, now, &mut round);
        let closes = self.build_close(upto, &mut round);
        if round.batch.is_empty() {
            // Nothing to write: closing empty buckets needs no record.
            self.apply(round, upto, 0);
            return Ok(loaded || closes);
        }
        match self.log.append(&round.batch).await {
            Ok(range) => {
                self.apply(round, upto, range.end);
                Ok(true)
            }
            Err(e) => {
                let e = Arc::new(e);
                for (tx, _) in round.replies {
                    drop(tx.send(Err(ReminderError::Append(Arc::clone(&e)))));
                }
                Err(WriterError::Append(e))
            }
        }
    }

    pub(super) fn build_commands(
        &self,
        cmds: Vec<Cmd>,
        tables: &mut HashMap<u32, Vec<Entry>>,
        upto: u64,
        now: u64,
        round: &mut Round,
    ) {
        let mut st = self.st.borrow_mut();
        let bms = st.bucket_ms;
        let mut adds: BTreeMap<IndexKey, Vec<Slot>> = BTreeMap::new();
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for Cmd { op, done } in cmds {
            match op {
                Op::Set {
                    actor,
                    name,
                    first_due_ms,
                    period_ms,
                } => {
                    let g = self.group(&actor);
                    let due = first_due_ms.max(now).max(upto * bms);
                    if st.next_rid >= st.reserved_rid {
                        st.reserved_rid = st.next_rid + RID_RESERVE;
                        round.rid_hw = Some(st.reserved_rid);
                    }
                    let rid = st.next_rid;
                    st.next_rid += 1;
                    let entry = Entry {
                        actor: actor.clone(),
                        name: name.clone(),
                        rid,
                        first_due_ms: due,
                        period_ms,
                    };
                    let n = counts
                        .entry(g)
                        .or_insert_with(|| self.log.key_lsns(&group_key(g)).len());
                    *n += 1;
                    let rec = match tables.get_mut(&g) {
                        Some(t) => {
                            let old = t.iter().position(|e| e.actor == actor && e.name == name);
                            let replaces = old.is_some();
                            if let Some(i) = old {
                                round.dropped.push(t.swap_remove(i).rid);
                            }
                            t.push(entry.clone());
                            if *n >= SNAPSHOT_AT {
                                *n = 1;
                                snapshot(
                                    t,
                                    replaces,
                                    st.groups[g as usize].marker,
                                    st.watermark,
                                    bms,
                                )
                            } else {
                                GroupRecord::Set { entry, replaces }
                            }
                        }
                        None => GroupRecord::Set {
                            entry,
                            replaces: false,
                        },
                    };
                    if rec.is_destructive() {
                        round.destructive.insert(g);
                    }
                    put_group(&mut round.batch, g, &rec);
                    st.filter.insert(&actor, &name);
                    let slot = Slot {
                        actor,
                        name,
                        rid,
                        due_ms: due,
                        period_ms,
                    };
                    if due / bms < st.loaded_to {
                        round.hold.push(slot.clone());
                    }
                    adds.entry(st.index_key(due)).or_default().push(slot);
                    round.replies.push((done, Reply::Done));
                }
                Op::Del { actor, name } => {
                    let g = self.group(&actor);
                    let t = tables.entry(g).or_default();
                    let Some(i) = t.iter().position(|e| e.actor == actor && e.name == name) else {
                        round.replies.push((done, Reply::Existed(false)));
                        continue;
                    };
                    round.dropped.push(t.swap_remove(i).rid);
                    let n = counts
                        .entry(g)
                        .or_insert_with(|| self.log.key_lsns(&group_key(g)).len());
                    *n += 1;
                    let rec = if *n >= SNAPSHOT_AT {
                        *n = 1;
                        snapshot(t, true, st.groups[g as usize].marker, st.watermark, bms)
                    } else {
                        GroupRecord::Del { actor, name }
                    };
                    round.destructive.insert(g);
                    put_group(&mut round.batch, g, &rec);
                    round.replies.push((done, Reply::Existed(true)));
                }
                Op::List { actor } => {
                    let g = self.group(&actor);
                    let closing = upto.max(st.closing);
                    let v = tables
                        .get(&g)
                        .map(|t| {
                            let mut v: Vec<ReminderInfo> = t
                                .iter()
                                .filter(|e| e.actor == actor)
                                .filter(|e| is_pending(e, &st, round, closing))
                                .map(|e| info(e, now))
                                .collect();
                            v.sort_by(|a, b| a.name.cmp(&b.name));
                            v
                        })
                        .unwrap_or_default();
                    round.replies.push((done, Reply::List(v)));
                }
                Op::ListAll {
                    from,
                    type_prefix,
                    limit,
                    to_group,
                } => {
                    let closing = upto.max(st.closing);
                    let mut items: Vec<ListedReminder> = (from.group..to_group)
                        .filter_map(|g| tables.get(&g).map(|t| (g, t)))
                        .flat_map(|(g, t)| t.iter().map(move |e| (g, e)))
                        .filter(|(_, e)| {
                            type_prefix.as_ref().is_none_or(|p| e.actor.starts_with(p))
                        })
                        .filter(|(_, e)| is_pending(e, &st, round, closing))
                        .map(|(group, e)| ListedReminder {
                            pos: ListPos {
                                group,
                                actor: e.actor.clone(),
                                name: e.name.clone(),
                            },
                            info: info(e, now),
                        })
                        .filter(|r| r.pos >= from)
                        .collect();
                    items.sort_by(|a, b| a.pos.cmp(&b.pos));
                    let next = if items.len() > limit {
                        items.truncate(limit);
                        items.last().map(|r| r.pos.successor())
                    } else if to_group < self.shared.config.groups_per_shard {
                        Some(ListPos {
                            group: to_group,
                            ..ListPos::default()
                        })
                    } else {
                        None
                    };
                    round
                        .replies
                        .push((done, Reply::Page(ShardPage { items, next })));
                }
            }
        }
        // The time index comes after the tables in the batch (its origins are larger).
        let mut coarse = false;
        for (k, slots) in adds {
            coarse |= matches!(k, IndexKey::Coarse(_));
            round.batch.event(&k.key(), &format::encode(&slots));
        }
        if coarse && st.expanded_durable != st.expanded_to {
            // A restart must not take this coarse bucket for an already spread one.
            round
                .batch
                .snapshot(EXPANDED_KEY, &format::encode(&st.expanded_to));
            round.expanded = Some(st.expanded_to);
        }
        if let Some(hw) = round.rid_hw {
            round.batch.snapshot(RID_KEY, &format::encode(&hw));
        }
    }

    /// Adds the close of buckets `closing..upto` to the round: the next occurrences of their
    /// periodic reminders, the truncation of their records, the new watermark.
    pub(super) fn build_close(&self, upto: u64, round: &mut Round) -> bool {
        let st = self.st.borrow();
        if upto <= st.closing {
            return false;
        }
        let mut next: BTreeMap<IndexKey, Vec<Slot>> = BTreeMap::new();
        for (_, v) in st.crossings.range(st.closing..upto) {
            for s in v {
                // Every crossing of a live reminder into a bucket that stays open is written,
                // even if the reminder fired again since (in memory): until that bucket closes
                // too, this record is the reminder's only durable occurrence. (A crossing into
                // a bucket closed by this batch is superseded at once, so it is left out.)
                if st.live.contains_key(&s.rid)
                    && !round.dropped.contains(&s.rid)
                    && st.bucket(s.due_ms) >= upto
                {
                    next.entry(st.index_key(s.due_ms))
                        .or_default()
                        .push(s.clone());
                }
            }
        }
        let mut wrote = false;
        for (k, slots) in next {
            if matches!(k, IndexKey::Coarse(_)) && st.expanded_durable != st.expanded_to {
                round
                    .batch
                    .snapshot(EXPANDED_KEY, &format::encode(&st.expanded_to));
                round.expanded = Some(st.expanded_to);
            }
            round.batch.event(&k.key(), &format::encode(&slots));
            wrote = true;
        }
        // A closed bucket's records are superseded by an empty snapshot that expires at once:
        // compaction then drops the key from the log and its index.
        let now = now_ms();
        let empty = format::encode(&Vec::<Slot>::new());
        for b in st.closing..upto {
            let key = bucket_key(b);
            if !self.log.key_lsns(&key).is_empty() {
                round.batch.push(NewRecord {
                    kind: RecordKind::Snapshot,
                    key,
                    payload: empty.clone(),
                    expires_at_ms: Some(now),
                });
                wrote = true;
            }
        }
        if wrote {
            round.batch.snapshot(WATERMARK_KEY, &format::encode(&upto));
        }
        true
    }

    /// Applies a durable round (`end` = one past its last LSN; 0 if nothing was written).
    pub(super) fn apply(&self, round: Round, upto: u64, end: u64) {
        let mut st = self.st.borrow_mut();
        for rid in &round.dropped {
            st.drop_rid(*rid);
        }
        for g in &round.destructive {
            let m = &mut st.groups[*g as usize];
            m.marker = m.marker.max(end);
        }
        for s in round.hold {
            st.hold(s);
        }
        if let Some(e) = round.expanded {
            st.expanded_durable = match st.expanded_durable {
                u64::MAX => e,
                d => d.max(e),
            };
        }
        if upto > st.closing {
            let keep = st.crossings.split_off(&upto);
            st.crossings = keep;
            st.closing = upto;
            if end > 0 {
                st.watermark = upto;
            }
        }
        drop(st);
        for (tx, reply) in round.replies {
            drop(tx.send(Ok(reply)));
        }
        self.firer.notify();
    }
}

/// Whether a table entry still has an occurrence to deliver (a one-shot reminder is gone once
/// fired).
fn is_pending(e: &Entry, st: &State, round: &Round, closing: u64) -> bool {
    e.period_ms > 0
        || st.live.contains_key(&e.rid)
        || round.hold.iter().any(|h| h.rid == e.rid)
        || e.first_due_ms / st.bucket_ms >= st.loaded_to.max(closing)
}
