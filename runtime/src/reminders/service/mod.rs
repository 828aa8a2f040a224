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
//!
//! Here: the state and the handlers' requests. Beside it: `writer` (the rounds), `index` (loading
//! and spreading the time index), `firer` (delivering ticks).

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

mod firer;
mod index;
mod writer;

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
    /// A page of every actor's reminders from `from` on (the writer sets `to_group`: the end
    /// of the groups it read for it).
    ListAll {
        from: ListPos,
        type_prefix: Option<Vec<u8>>,
        limit: usize,
        to_group: u32,
    },
}

enum Reply {
    Done,
    Existed(bool),
    List(Vec<ReminderInfo>),
    Page(ShardPage),
}

/// Group records read at most for one listing page (a round with a listing stays short: the
/// page ends early, with a cursor, when the groups it read hold no more).
const LIST_READ_RECORDS_MAX: usize = 4096;

/// A position in a shard's listing of every reminder, ordered by (group, actor, name); a page
/// starts at it (inclusive).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ListPos {
    pub group: u32,
    /// The actor, encoded as `outbox::format::encode_actor` writes it.
    pub actor: Vec<u8>,
    pub name: String,
}

impl ListPos {
    /// The first position after this one (`name` + NUL is the next string).
    pub(crate) fn successor(&self) -> ListPos {
        let mut next = self.clone();
        next.name.push('\0');
        next
    }
}

/// One reminder of a shard's listing.
#[derive(Clone, Debug)]
pub(crate) struct ListedReminder {
    pub pos: ListPos,
    pub info: ReminderInfo,
}

/// One page of a shard's listing; `next` is where the next page starts (`None`: the shard has
/// no more).
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardPage {
    pub items: Vec<ListedReminder>,
    pub next: Option<ListPos>,
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

    /// Up to `limit` reminders of every actor (of type `type_name`, if given) from `from` on,
    /// in (group, actor, name) order. A page may be short and still name a next position (the
    /// groups read for it ended).
    pub(crate) async fn list_all(
        &self,
        from: ListPos,
        type_name: Option<&str>,
        limit: usize,
    ) -> Result<ShardPage, ReminderError> {
        let type_prefix = type_name.map(|t| {
            let mut p = Vec::new();
            crate::outbox::format::encode_actor(&mut p, t, &quark_shard::ActorKey::U64(0));
            // Keep the length byte and the name: the key follows.
            let n = t.len().min(u8::MAX as usize);
            p.truncate(1 + n);
            p
        });
        let op = Op::ListAll {
            from,
            type_prefix,
            limit: limit.max(1),
            to_group: 0,
        };
        match self.submit(op).await {
            Ok(Ok(Reply::Page(p))) => Ok(p),
            Ok(Ok(_)) => Ok(ShardPage::default()),
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
