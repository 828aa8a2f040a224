//! One shard's reminder service.
//!
//! Two tasks share the state: the *writer* is the only one that reads or writes the log (it
//! loads time buckets of the near future, stores registrations and cancellations, and closes
//! delivered buckets), in rounds, one batch per round; the *firer* pops due occurrences and
//! delivers their ticks as turns. Neither holds a borrow across an await.
//!
//! The index (`format.rs`): every occurrence waits in the time bucket `due_ms / bucket_ms`
//! (key `qrb` + bucket). Bucket `b` is loaded into memory when `now + lookahead_ms` reaches its
//! start; it is *closed* once its time passed and every tick of it was delivered: one batch
//! then writes the next occurrences of its periodic reminders into their buckets, drops the
//! bucket's records (a truncate) and moves the watermark past it. A crash before the close
//! delivers the bucket's ticks again (at least once). The authoritative table of each actor's
//! reminders lives in groups (key `qrg` + group, actors hashed); a slot of the time index is
//! delivered only if its group still holds its registration id, checked against the table
//! when the group had a cancellation or replacement after the slot was written.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::stream::{FuturesUnordered, StreamExt};
use quark_persist::{Batch, NewRecord, ReadError, RecordKind};
use quark_shard::{current_shard_log, CallError, EngineHandle, ShardId, ShardLog};

use super::format::{
    self, bucket_key, bucket_of_key, coarse_key, group_key, group_of, Entry, GroupRecord, Slot,
    BUCKET_PREFIX, EXPANDED_KEY, RID_KEY, WATERMARK_KEY,
};
use super::{
    ReminderError, ReminderInfo, ReminderTick, RemindersStartError, ShardReminderStats, Shared,
};

/// Live records of a group after which its table is rewritten as one snapshot.
const SNAPSHOT_AT: usize = 32;
/// Registration ids reserved per reservation record.
const RID_RESERVE: u64 = 1 << 20;
/// Buckets closed per round at most (after a long downtime the rest follow in later rounds).
const CLOSE_PER_ROUND: u64 = 100_000;
/// Slots spread from a coarse bucket per round at most (about).
const EXPAND_SLOTS_MAX: usize = 50_000;
/// Longest sleep of either task between looks at the clock and the engine.
const IDLE_POLL: Duration = Duration::from_millis(100);

thread_local! {
    static SERVICE: RefCell<Option<Rc<Service>>> = const { RefCell::new(None) };
}

/// The calling shard's reminder service (after its recovery).
pub(crate) fn local() -> Option<Rc<Service>> {
    SERVICE.with(|s| s.borrow().clone())
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wall-clock microseconds since the Unix epoch.
fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
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

/// A request of a handler, answered once its change is durable.
enum Op {
    Set {
        actor: Vec<u8>,
        name: String,
        first_due_ms: u64,
        period_ms: u64,
    },
    Del {
        actor: Vec<u8>,
        name: String,
    },
    List {
        actor: Vec<u8>,
    },
}

enum Reply {
    Done,
    Existed(bool),
    List(Vec<ReminderInfo>),
}

struct Cmd {
    op: Op,
    done: oneshot::Sender<Result<Reply, ReminderError>>,
}

/// What the shard knows of one group without reading it.
#[derive(Clone, Copy, Default)]
struct GroupMeta {
    /// Its members are in the filter and `marker` is exact.
    known: bool,
    /// The highest origin LSN of a destructive change (cancel, replacement) of the group: a
    /// slot written after it is current without a look at the table.
    marker: u64,
}

/// A filter of (actor, name) pairs that may have a reminder: a negative answer means a
/// registration is new (not destructive), so it needs no look at the table.
struct Filter {
    bits: Vec<u64>,
}

impl Filter {
    fn new(bits: u64) -> Self {
        Filter {
            bits: vec![0; (bits / 64).max(1) as usize],
        }
    }

    fn hashes(&self, actor: &[u8], name: &str) -> [usize; 3] {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in actor.iter().chain([0xffu8].iter()).chain(name.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let h2 = h.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let n = (self.bits.len() * 64) as u64;
        [0u64, 1, 2].map(|i| (h.wrapping_add(i.wrapping_mul(h2)) % n) as usize)
    }

    fn insert(&mut self, actor: &[u8], name: &str) {
        for i in self.hashes(actor, name) {
            self.bits[i / 64] |= 1 << (i % 64);
        }
    }

    fn may_contain(&self, actor: &[u8], name: &str) -> bool {
        self.hashes(actor, name)
            .iter()
            .all(|&i| self.bits[i / 64] & (1 << (i % 64)) != 0)
    }
}

#[derive(Default)]
struct Counters {
    fired: u64,
    failed: u64,
    undeliverable: u64,
    stale_dropped: u64,
}

struct State {
    bucket_ms: u64,
    /// Buckets below it are closed durably.
    watermark: u64,
    /// Buckets below it are closed or being closed (no new slot may go there).
    closing: u64,
    /// Buckets below it were read into memory.
    loaded_to: u64,
    /// Buckets with records found at recovery below `recovered_to` (the time then).
    recovered_past: BTreeSet<u64>,
    /// Fine buckets per coarse bucket.
    coarse_buckets: u64,
    /// Coarse buckets below it were spread into fine buckets (a slot due there is written to
    /// its fine bucket; a later one to its coarse bucket).
    expanded_to: u64,
    /// The `expanded_to` the log knows (`u64::MAX`: none yet).
    expanded_durable: u64,
    recovered_to: u64,
    next_rid: u64,
    reserved_rid: u64,
    /// Occurrences waiting for their time: (due, rid).
    heap: BTreeMap<(u64, u64), Slot>,
    /// rid → due of its current occurrence, for every reminder held in memory.
    live: HashMap<u64, u64>,
    /// Bucket → occurrences of it in `heap` or being delivered.
    pending: BTreeMap<u64, u32>,
    /// Bucket → next occurrences of periodic reminders that fired in it, written at its close.
    crossings: BTreeMap<u64, Vec<Slot>>,
    groups: Vec<GroupMeta>,
    filter: Filter,
    cmds: Vec<Cmd>,
    /// Ticks to deliver, handed from the firer's selection to its delivery set.
    stopped: bool,
    counters: Counters,
}

impl State {
    fn bucket(&self, due_ms: u64) -> u64 {
        due_ms / self.bucket_ms
    }

    fn coarse_ms(&self) -> u64 {
        self.bucket_ms.saturating_mul(self.coarse_buckets)
    }

    /// True if fine bucket `b` may be read: its coarse bucket was spread already.
    fn expanded(&self, b: u64) -> bool {
        b / self.coarse_buckets < self.expanded_to
    }

    /// Where a slot due at `due_ms` is written: its fine bucket, or its coarse bucket if that
    /// was not spread yet.
    fn index_key(&self, due_ms: u64) -> IndexKey {
        let b = self.bucket(due_ms);
        if b / self.coarse_buckets < self.expanded_to {
            IndexKey::Fine(b)
        } else {
            IndexKey::Coarse(b / self.coarse_buckets)
        }
    }

    /// Puts an occurrence into memory (if no other occurrence of its reminder is there).
    fn hold(&mut self, slot: Slot) -> bool {
        if let Some(&due) = self.live.get(&slot.rid) {
            if due != slot.due_ms || self.heap.contains_key(&(due, slot.rid)) {
                return false;
            }
        }
        let b = self.bucket(slot.due_ms);
        *self.pending.entry(b).or_default() += 1;
        self.live.insert(slot.rid, slot.due_ms);
        self.heap.insert((slot.due_ms, slot.rid), slot);
        true
    }

    /// Forgets reminder `rid` (cancelled or replaced).
    fn drop_rid(&mut self, rid: u64) {
        if let Some(due) = self.live.remove(&rid) {
            if self.heap.remove(&(due, rid)).is_some() {
                let b = self.bucket(due);
                let _ = self.unpend(b);
            }
        }
    }

    /// One occurrence of bucket `b` is done; returns whether the bucket has none left.
    fn unpend(&mut self, b: u64) -> bool {
        if let Some(n) = self.pending.get_mut(&b) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&b);
                return true;
            }
        }
        false
    }

    /// The bucket up to which (exclusive) buckets can be closed now.
    fn closable_upto(&self, now: u64) -> u64 {
        let now_b = now / self.bucket_ms; // buckets below it have ended
        let limit = now_b
            .min(self.loaded_to)
            .min(self.closing + CLOSE_PER_ROUND);
        let first_busy = self
            .pending
            .range(self.closing..)
            .next()
            .map(|(b, _)| *b)
            .unwrap_or(u64::MAX);
        limit.min(first_busy).max(self.closing)
    }
}

/// A key of the time index.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum IndexKey {
    Fine(u64),
    Coarse(u64),
}

impl IndexKey {
    fn key(self) -> Vec<u8> {
        match self {
            IndexKey::Fine(b) => bucket_key(b),
            IndexKey::Coarse(c) => coarse_key(c),
        }
    }
}

/// One shard's reminders.
pub(crate) struct Service {
    shard: ShardId,
    engine: EngineHandle,
    log: ShardLog,
    shared: Arc<Shared>,
    st: RefCell<State>,
    writer: Notify,
    firer: Notify,
}

/// Recovers the calling shard's reminders, then starts its writer and firer.
pub(crate) async fn start_shard(
    shared: Arc<Shared>,
    engine: EngineHandle,
    shard: ShardId,
) -> Result<(), RemindersStartError> {
    let Some(log) = current_shard_log() else {
        return Ok(());
    };
    let c = &shared.config;
    let st = State {
        bucket_ms: c.bucket_ms,
        watermark: 0,
        closing: 0,
        loaded_to: 0,
        recovered_past: BTreeSet::new(),
        coarse_buckets: c.coarse_buckets,
        expanded_to: 0,
        expanded_durable: 0,
        recovered_to: 0,
        next_rid: 1,
        reserved_rid: 1,
        heap: BTreeMap::new(),
        live: HashMap::new(),
        pending: BTreeMap::new(),
        crossings: BTreeMap::new(),
        groups: vec![GroupMeta::default(); c.groups_per_shard as usize],
        filter: Filter::new(c.filter_bits),
        cmds: Vec::new(),
        stopped: false,
        counters: Counters::default(),
    };
    let svc = Rc::new(Service {
        shard,
        engine: engine.clone(),
        log,
        shared,
        st: RefCell::new(st),
        writer: Notify::default(),
        firer: Notify::default(),
    });
    svc.recover()
        .await
        .map_err(|source| RemindersStartError::Recover { shard, source })?;
    SERVICE.with(|s| *s.borrow_mut() = Some(Rc::clone(&svc)));
    // The tasks find the service through the thread-local (spawned closures must be Send).
    drop(engine.spawn_on(shard, move || async move {
        if let Some(s) = local() {
            s.run_writer().await;
        }
    }));
    drop(engine.spawn_on(shard, move || async move {
        if let Some(s) = local() {
            s.run_firer().await;
        }
    }));
    Ok(())
}

impl Service {
    pub(crate) fn delivers(&self, type_name: &str) -> bool {
        self.shared.deliver.contains_key(type_name)
    }

    /// Reads the latest snapshot of a single-record key.
    async fn read_u64(&self, key: &[u8]) -> Result<Option<u64>, ReadError> {
        let lsns = self.log.key_lsns(key);
        let Some(&last) = lsns.last() else {
            return Ok(None);
        };
        Ok(self
            .log
            .read(last)
            .await?
            .and_then(|r| format::decode::<u64>(&r.payload).ok()))
    }

    async fn recover(&self) -> Result<(), ReadError> {
        let watermark = self.read_u64(WATERMARK_KEY).await?;
        let expanded = self.read_u64(EXPANDED_KEY).await?;
        let rid = self.read_u64(RID_KEY).await?.unwrap_or(1);
        let now = now_ms();
        let mut st = self.st.borrow_mut();
        let now_b = now / st.bucket_ms;
        let mut buckets: Vec<u64> = self
            .log
            .keys_with_prefix(BUCKET_PREFIX)
            .iter()
            .filter_map(|k| bucket_of_key(k))
            .collect();
        buckets.sort_unstable();
        let w = watermark.unwrap_or_else(|| buckets.first().copied().unwrap_or(now_b).min(now_b));
        st.watermark = w;
        st.closing = w;
        st.loaded_to = w;
        st.recovered_to = now_b.max(w);
        st.recovered_past = buckets
            .into_iter()
            .filter(|b| *b >= w && *b < now_b)
            .collect();
        st.next_rid = rid;
        st.reserved_rid = rid;
        // Without a record no coarse bucket was ever written: start at the watermark's.
        st.expanded_to = expanded.unwrap_or(w / st.coarse_buckets);
        // Unknown to the log (`MAX`): the first coarse record writes it in its batch.
        st.expanded_durable = expanded.unwrap_or(u64::MAX);
        tracing::debug!(
            shard = self.shard,
            watermark = w,
            past_buckets = st.recovered_past.len(),
            "reminders recovered"
        );
        Ok(())
    }

    fn submit(&self, op: Op) -> oneshot::Receiver<Result<Reply, ReminderError>> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.st.borrow_mut();
        if st.stopped {
            drop(tx.send(Err(ReminderError::Stopped)));
        } else {
            st.cmds.push(Cmd { op, done: tx });
        }
        drop(st);
        self.writer.notify();
        rx
    }

    pub(crate) async fn set(
        &self,
        actor: Vec<u8>,
        name: String,
        first_due_ms: u64,
        period_ms: u64,
    ) -> Result<(), ReminderError> {
        let rx = self.submit(Op::Set {
            actor,
            name,
            first_due_ms,
            period_ms,
        });
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ReminderError::Stopped),
        }
    }

    pub(crate) async fn del(&self, actor: Vec<u8>, name: String) -> Result<bool, ReminderError> {
        match self.submit(Op::Del { actor, name }).await {
            Ok(Ok(Reply::Existed(e))) => Ok(e),
            Ok(Ok(_)) => Ok(false),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ReminderError::Stopped),
        }
    }

    pub(crate) async fn list(&self, actor: Vec<u8>) -> Result<Vec<ReminderInfo>, ReminderError> {
        match self.submit(Op::List { actor }).await {
            Ok(Ok(Reply::List(v))) => Ok(v),
            Ok(Ok(_)) => Ok(Vec::new()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ReminderError::Stopped),
        }
    }

    pub(crate) fn stats(&self) -> ShardReminderStats {
        let st = self.st.borrow();
        ShardReminderStats {
            loaded: st.pending.values().map(|n| u64::from(*n)).sum(),
            fired: st.counters.fired,
            failed: st.counters.failed,
            undeliverable: st.counters.undeliverable,
            stale_dropped: st.counters.stale_dropped,
        }
    }

    fn group(&self, actor: &[u8]) -> u32 {
        group_of(actor, self.shared.config.groups_per_shard)
    }

    /// Reads the tables of `groups`; marks them known and feeds the filter.
    async fn read_groups(
        &self,
        groups: &HashSet<u32>,
    ) -> Result<HashMap<u32, Vec<Entry>>, ReadError> {
        let mut lsns = Vec::new();
        let mut owner = HashMap::new();
        for &g in groups {
            for l in self.log.key_lsns(&group_key(g)) {
                owner.insert(l, g);
                lsns.push(l);
            }
        }
        let records = self.log.read_many(&lsns).await?;
        let mut tables: HashMap<u32, Vec<Entry>> =
            groups.iter().map(|g| (*g, Vec::new())).collect();
        let mut markers: HashMap<u32, u64> = HashMap::new();
        for r in records {
            let Some(&g) = owner.get(&r.lsn) else {
                continue;
            };
            let rec = match format::decode::<GroupRecord>(&r.payload) {
                Ok(rec) => rec,
                Err(e) => {
                    tracing::warn!(shard = self.shard, group = g, lsn = r.lsn, error = %e, "skipping a reminder table record");
                    continue;
                }
            };
            let m = markers.entry(g).or_default();
            if rec.is_destructive() {
                *m = (*m).max(r.origin_lsn).max(r.lsn);
            }
            let t = tables.entry(g).or_default();
            fold(t, rec, m);
        }
        let mut st = self.st.borrow_mut();
        for (&g, t) in &tables {
            for e in t {
                st.filter.insert(&e.actor, &e.name);
            }
            let meta = &mut st.groups[g as usize];
            meta.marker = meta.marker.max(markers.get(&g).copied().unwrap_or(0));
            meta.known = true;
        }
        Ok(tables)
    }

    /// Wakes the writer (a bucket may be closable, or a command waits).
    fn wake_writer(&self) {
        self.writer.notify();
    }

    async fn run_writer(self: Rc<Self>) {
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

    fn stop(&self) {
        let mut st = self.st.borrow_mut();
        st.stopped = true;
        for c in st.cmds.drain(..) {
            drop(c.done.send(Err(ReminderError::Stopped)));
        }
        drop(st);
        self.firer.notify();
    }

    /// How long the writer may sleep: until the next bucket to load or to close.
    fn writer_wait(&self, now: u64) -> Duration {
        let st = self.st.borrow();
        let la = self.shared.config.lookahead_ms;
        let load_at = (st.loaded_to * st.bucket_ms).saturating_sub(la);
        let close_at = (st.closing + 1) * st.bucket_ms;
        let at = load_at.min(close_at);
        Duration::from_millis(at.saturating_sub(now).max(1)).min(IDLE_POLL)
    }

    /// One round: load the near future, store the commands, close delivered buckets. Returns
    /// whether it did anything.
    async fn writer_round(&self) -> Result<bool, WriterError> {
        let now = now_ms();
        let expanded = self.expand_due(now).await?;
        let loaded = self.load_due(now).await? || expanded;
        let cmds = std::mem::take(&mut self.st.borrow_mut().cmds);
        // Tables the commands need.
        let mut need = HashSet::new();
        {
            let st = self.st.borrow();
            let mut added: HashMap<u32, usize> = HashMap::new();
            let mut seen: HashSet<(&[u8], &str)> = HashSet::new();
            for c in &cmds {
                match &c.op {
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

    /// Reads the buckets that entered the look-ahead window (or that recovery found due).
    async fn load_due(&self, now: u64) -> Result<bool, WriterError> {
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
    async fn current_slots(
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
    async fn expand_due(&self, now: u64) -> Result<bool, WriterError> {
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

    fn build_commands(
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
                                .filter(|e| {
                                    // A one-shot reminder is gone once fired.
                                    e.period_ms > 0
                                        || st.live.contains_key(&e.rid)
                                        || round.hold.iter().any(|h| h.rid == e.rid)
                                        || e.first_due_ms / bms >= st.loaded_to.max(closing)
                                })
                                .map(|e| info(e, now))
                                .collect();
                            v.sort_by(|a, b| a.name.cmp(&b.name));
                            v
                        })
                        .unwrap_or_default();
                    round.replies.push((done, Reply::List(v)));
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
    fn build_close(&self, upto: u64, round: &mut Round) -> bool {
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
    fn apply(&self, round: Round, upto: u64, end: u64) {
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

    async fn run_firer(self: Rc<Self>) {
        let mut inflight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        let max = self.shared.config.ticks_inflight_max;
        let timeout = self.shared.config.tick_timeout;
        loop {
            if self.st.borrow().stopped || !self.engine.is_running() {
                return;
            }
            let now_us = wall_us();
            let now = now_us / 1000;
            let mut next_due = None;
            {
                let mut st = self.st.borrow_mut();
                while inflight.len() < max {
                    let Some((&(due, rid), _)) = st.heap.first_key_value() else {
                        break;
                    };
                    if due > now {
                        next_due = Some(due);
                        break;
                    }
                    let slot = st
                        .heap
                        .remove(&(due, rid))
                        .expect("invariant: the first key is in the heap");
                    let b = st.bucket(due);
                    let mut missed = 0;
                    if let Some(periods) = (now - due).checked_div(slot.period_ms) {
                        let k = periods + 1;
                        missed = k - 1;
                        let next = Slot {
                            due_ms: due + k * slot.period_ms,
                            ..slot.clone()
                        };
                        let nb = st.bucket(next.due_ms);
                        st.live.insert(rid, next.due_ms);
                        if nb != b {
                            st.crossings.entry(b).or_default().push(next.clone());
                        }
                        if nb < st.loaded_to {
                            let nd = next.due_ms;
                            *st.pending.entry(nb).or_default() += 1;
                            st.heap.insert((nd, rid), next);
                        }
                    } else {
                        st.live.remove(&rid);
                    }
                    let tick = ReminderTick {
                        name: slot.name,
                        due_ms: due,
                        fired_ms: now,
                        period_ms: slot.period_ms,
                        missed,
                    };
                    let (type_name, key) = match crate::outbox::format::decode_actor(&slot.actor) {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(shard = self.shard, error = %e, "a reminder's actor does not decode; dropped");
                            st.counters.undeliverable += 1;
                            let _ = st.unpend(b);
                            continue;
                        }
                    };
                    let Some(deliver) = self.shared.deliver.get(&type_name) else {
                        tracing::warn!(shard = self.shard, actor_type = %type_name, "a reminder's actor type is not registered for reminders; tick dropped");
                        st.counters.undeliverable += 1;
                        let _ = st.unpend(b);
                        continue;
                    };
                    let fut = deliver(self.engine.clone(), key, tick, timeout);
                    inflight.push(Box::pin(async move {
                        let r = fut.await;
                        if let Err(e) = &r {
                            if !matches!(e, CallError::ShuttingDown { .. }) {
                                tracing::warn!(error = %e, "a reminder tick's turn failed");
                            }
                        }
                        (b, r.is_ok())
                    }));
                }
            }
            let wait = match next_due {
                // To the µs: the timer rounds up to its next millisecond tick, so a tick fires
                // within that millisecond instead of a whole one later.
                Some(t) => {
                    Duration::from_micros((t * 1000).saturating_sub(now_us).max(1)).min(IDLE_POLL)
                }
                None => IDLE_POLL,
            };
            let sleep = Box::pin(quark_shard::sleep(wait));
            let wake = Box::pin(self.firer.wait());
            let done = if inflight.is_empty() {
                let _ = select(wake, sleep).await;
                None
            } else {
                match select(inflight.next(), select(wake, sleep)).await {
                    Either::Left((d, _)) => d,
                    Either::Right(_) => None,
                }
            };
            let mut finished: Vec<(u64, bool)> = done.into_iter().collect();
            while let Some(Some(d)) = futures::FutureExt::now_or_never(inflight.next()) {
                finished.push(d);
            }
            if !finished.is_empty() {
                let mut st = self.st.borrow_mut();
                let mut emptied = false;
                for (b, ok) in finished {
                    if ok {
                        st.counters.fired += 1;
                    } else {
                        st.counters.failed += 1;
                    }
                    emptied |= st.unpend(b);
                }
                drop(st);
                if emptied {
                    self.wake_writer();
                }
            }
        }
    }
}

/// A tick being delivered; resolves with its bucket and whether the turn ran.
type Delivery = Pin<Box<dyn Future<Output = (u64, bool)>>>;

/// Adds a table record: a snapshot supersedes the group's earlier records.
fn put_group(batch: &mut Batch, g: u32, rec: &GroupRecord) {
    let payload = format::encode(rec);
    if matches!(rec, GroupRecord::Snapshot { .. }) {
        batch.snapshot(&group_key(g), &payload);
    } else {
        batch.event(&group_key(g), &payload);
    }
}

/// True if a slot written at `origin` must be checked against its group's table.
fn needs_check(origin: u64, m: GroupMeta) -> bool {
    !m.known || origin <= m.marker
}

/// Why the writer stopped.
#[derive(Debug, thiserror::Error)]
enum WriterError {
    #[error("appending reminder records")]
    Append(#[source] Arc<quark_persist::AppendError>),
    #[error("reading reminder records")]
    Read(#[source] ReadError),
}

/// A round's batch and what to do once it is durable.
#[derive(Default)]
struct Round {
    batch: Batch,
    replies: Vec<(oneshot::Sender<Result<Reply, ReminderError>>, Reply)>,
    /// Registrations cancelled or replaced.
    dropped: Vec<u64>,
    /// Groups with a destructive change in this round.
    destructive: HashSet<u32>,
    /// New occurrences whose bucket is already in memory.
    hold: Vec<Slot>,
    rid_hw: Option<u64>,
    /// The `expanded_to` this round records.
    expanded: Option<u64>,
}

/// Applies one table record.
fn fold(t: &mut Vec<Entry>, rec: GroupRecord, marker: &mut u64) {
    match rec {
        GroupRecord::Set { entry, .. } => {
            t.retain(|e| !(e.actor == entry.actor && e.name == entry.name));
            t.push(entry);
        }
        GroupRecord::Del { actor, name } => t.retain(|e| !(e.actor == actor && e.name == name)),
        GroupRecord::Snapshot {
            entries, marker: m, ..
        } => {
            *t = entries;
            *marker = (*marker).max(m);
        }
    }
}

/// The table as one record, without the one-shot reminders already delivered.
fn snapshot(
    t: &mut Vec<Entry>,
    destructive: bool,
    marker: u64,
    watermark: u64,
    bms: u64,
) -> GroupRecord {
    t.retain(|e| e.period_ms > 0 || e.first_due_ms / bms >= watermark);
    GroupRecord::Snapshot {
        entries: t.clone(),
        destructive,
        marker,
    }
}

fn info(e: &Entry, now: u64) -> ReminderInfo {
    let next = if e.period_ms == 0 || e.first_due_ms >= now {
        e.first_due_ms
    } else {
        let k = (now - e.first_due_ms).div_ceil(e.period_ms);
        e.first_due_ms + k * e.period_ms
    };
    ReminderInfo {
        name: e.name.clone(),
        first_due_ms: e.first_due_ms,
        period_ms: e.period_ms,
        next_due_ms: next,
    }
}
