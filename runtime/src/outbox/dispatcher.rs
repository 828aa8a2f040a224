//! The per-shard dispatcher: delivers committed outbox messages, one at a time per (sender,
//! receiver) pair in log order, retrying with exponential backoff until acknowledged; writes
//! acknowledgements as truncation records of the sender's outbox key; moves messages that
//! cannot be delivered to the shard's dead-letter list; recovers its queue from the log.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use quark_persist::Batch;
use quark_placement::{ActorId, ActorKey, ShardId};
use quark_shard::{current_shard_log, CallError, EngineHandle, Invoke, ShardLog};

use super::format::{self, OutboxRecord, Reader, Target, DEAD_LETTER_KEY, OUTBOX_PREFIX};
use super::{
    now_ms, remote, DurableHandler, DurableMessage, MessageId, OutboxConfig, Outcome, Registry,
};

/// How long a stopping dispatcher waits for its deliveries in flight before it writes its
/// last acknowledgements (a delivery cut short is sent again after the restart, and
/// deduplicated).
const STOP_DRAIN_MAX: Duration = Duration::from_secs(2);

/// Deliveries in flight at once per (sender, sink) pair.
const SINK_PAIR_WINDOW: usize = 512;

/// One delivery attempt's message, as the receiver's turn sees it.
pub(crate) struct Delivery {
    pub id: MessageId,
    pub message: String,
    pub data: Vec<u8>,
    pub timeout: Duration,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Dispatcher>>> = const { RefCell::new(None) };
}

/// This shard's dispatcher, if the node runs the outbox.
pub(crate) fn current() -> Option<Rc<Dispatcher>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// This shard's outbox counters, if the node runs the outbox (for the admin endpoint, which
/// reads them on the shard at scrape time).
pub(crate) fn local_stats() -> Option<OutboxStats> {
    current().map(|d| d.stats_now())
}

/// Bytes a message counts against `pending_bytes_max`.
pub(crate) fn record_bytes(r: &OutboxRecord) -> u64 {
    (64 + r.data.len() + r.message.len()) as u64
}

pub(crate) fn release(bytes: u64) {
    if let Some(d) = current() {
        d.release_bytes(bytes);
    }
}

pub(crate) fn enqueue(sender: Rc<[u8]>, lsn: u64, record: OutboxRecord, bytes: u64) {
    match current() {
        Some(d) => d.enqueue(sender, lsn, Rc::new(record), bytes),
        None => tracing::error!(
            lsn,
            "outbox message committed on a shard without a dispatcher; it is sent after a restart"
        ),
    }
}

pub(crate) fn count_evicted(n: u64) {
    if let Some(d) = current() {
        d.st.borrow_mut().stats.inbox_evicted += n;
    }
}

/// Counters of one shard's outbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// The shard.
    pub shard: ShardId,
    /// Messages acknowledged as applied.
    pub delivered: u64,
    /// Messages acknowledged as duplicates (the receiver had applied them already).
    pub duplicates: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Messages moved to the dead-letter list.
    pub dead_lettered: u64,
    /// Messages committed and not yet acknowledged (or dead-lettered).
    pub pending: u64,
    /// Bytes counted against `pending_bytes_max` (pending and staged messages).
    pub pending_bytes: u64,
    /// Sender streams receivers on this shard forgot because of `dedupe_count_max`.
    pub inbox_evicted: u64,
    /// Messages found in the log at start-up.
    pub recovered: u64,
    /// Dead letters on the list now.
    pub dead_letters: u64,
}

/// A message the dispatcher gave up on, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The shard whose log holds it.
    pub shard: ShardId,
    /// The message's id.
    pub id: MessageId,
    /// The sender (`type/key`).
    pub sender: String,
    /// The receiver (`type/key`, or `sink:name`).
    pub target: String,
    /// The message's durable name.
    pub message: String,
    /// Why it was given up.
    pub cause: String,
    /// Attempts made.
    pub attempts: u32,
    /// Wall-clock ms the sending turn staged it.
    pub created_ms: u64,
    /// Wall-clock ms it was dead-lettered.
    pub dead_ms: u64,
    sender_key: Vec<u8>,
    record: Vec<u8>,
}

// Format (dead-letter list payload, kind Snapshot, key "qd"): { format u8 = 1 | count u32 |
//   (sender_key_len u32 | sender key | id stream u64 | id seq u64 | attempts u32 | dead_ms u64 |
//    cause_len u32 | cause | record_len u32 | outbox record payload) * count |
//   [settled_count u32 | (id stream u64 | id seq u64) * settled_count] }
// The settled part (ids of dead letters replayed or purged whose outbox record may still be in
// the log) is optional: a list written before it existed has none.
pub(crate) fn encode_dead(list: &[DeadLetter], settled: &[MessageId]) -> Vec<u8> {
    let mut out = vec![format::RECORD_FORMAT];
    out.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for d in list {
        out.extend_from_slice(&(d.sender_key.len() as u32).to_le_bytes());
        out.extend_from_slice(&d.sender_key);
        out.extend_from_slice(&d.id.stream.to_le_bytes());
        out.extend_from_slice(&d.id.seq.to_le_bytes());
        out.extend_from_slice(&d.attempts.to_le_bytes());
        out.extend_from_slice(&d.dead_ms.to_le_bytes());
        out.extend_from_slice(&(d.cause.len() as u32).to_le_bytes());
        out.extend_from_slice(d.cause.as_bytes());
        out.extend_from_slice(&(d.record.len() as u32).to_le_bytes());
        out.extend_from_slice(&d.record);
    }
    out.extend_from_slice(&(settled.len() as u32).to_le_bytes());
    for id in settled {
        out.extend_from_slice(&id.stream.to_le_bytes());
        out.extend_from_slice(&id.seq.to_le_bytes());
    }
    out
}

/// The dead letters of a list record.
pub(crate) fn decode_dead(
    shard: ShardId,
    bytes: &[u8],
) -> Result<Vec<DeadLetter>, format::FormatError> {
    decode_dead_list(shard, bytes).map(|(list, _)| list)
}

/// The dead letters and the settled ids of a list record.
pub(crate) fn decode_dead_list(
    shard: ShardId,
    bytes: &[u8],
) -> Result<(Vec<DeadLetter>, Vec<MessageId>), format::FormatError> {
    let mut r = Reader::new(bytes);
    r.format()?;
    let n = r.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let k = r.u32()? as usize;
        let sender_key = r.take(k)?.to_vec();
        let id = MessageId {
            stream: r.u64()?,
            seq: r.u64()?,
        };
        let attempts = r.u32()?;
        let dead_ms = r.u64()?;
        let c = r.u32()? as usize;
        let cause = String::from_utf8_lossy(r.take(c)?).into_owned();
        let l = r.u32()? as usize;
        let record = r.take(l)?.to_vec();
        out.push(dead_letter(
            shard, sender_key, id, &record, cause, attempts, dead_ms,
        ));
    }
    let mut settled = Vec::new();
    if r.remaining() > 0 {
        let m = r.u32()? as usize;
        settled.reserve(m.min(1 << 16));
        for _ in 0..m {
            settled.push(MessageId {
                stream: r.u64()?,
                seq: r.u64()?,
            });
        }
    }
    Ok((out, settled))
}

fn sender_name(key: &[u8]) -> String {
    match format::decode_actor(key.get(2..).unwrap_or_default()) {
        Ok((t, k)) => format!("{t}/{k}"),
        Err(_) => format!("{key:?}"),
    }
}

fn dead_letter(
    shard: ShardId,
    sender_key: Vec<u8>,
    id: MessageId,
    record: &[u8],
    cause: String,
    attempts: u32,
    dead_ms: u64,
) -> DeadLetter {
    let (target, message, created_ms) = match format::decode_outbox(record) {
        Ok(r) => (r.target.to_string(), r.message, r.created_ms),
        Err(e) => (format!("(undecodable: {e})"), String::new(), 0),
    };
    DeadLetter {
        shard,
        id,
        sender: sender_name(&sender_key),
        target,
        message,
        cause,
        attempts,
        created_ms,
        dead_ms,
        sender_key,
        record: record.to_vec(),
    }
}

/// `settled` with `id` added (once).
pub(crate) fn settle(settled: &[MessageId], id: MessageId) -> Vec<MessageId> {
    let mut out = settled.to_vec();
    if !out.contains(&id) {
        out.push(id);
    }
    out
}

/// The id a replay of `id` is sent under: derived, so replaying the same dead letter twice is
/// applied once, and distinct from the original's stream, whose receiver may have moved past it.
pub(crate) fn replay_id(id: MessageId) -> MessageId {
    let mut h = id.stream ^ 0x5245_504c_4159_0000 ^ id.seq.rotate_left(29);
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    MessageId { stream: h, seq: 1 }
}

/// A wake-up flag for the dispatcher's loop.
#[derive(Default)]
struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
    fn notified(&self) -> impl Future<Output = ()> + '_ {
        futures::future::poll_fn(move |cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

struct Msg {
    rec: Rc<OutboxRecord>,
    bytes: u64,
}

struct Pair {
    sender: Rc<[u8]>,
    queue: BTreeMap<u64, Msg>,
    /// LSNs of this pair's messages being delivered now (at most `window`).
    inflight: BTreeSet<u64>,
    /// Deliveries in flight at once: 1 for actors (order per pair), `SINK_PAIR_WINDOW` for
    /// sinks (which write batches in queue order and dedupe by id).
    window: usize,
    /// In the ready queue or the backoff list.
    scheduled: bool,
    attempts: u32,
}

#[derive(Default)]
struct SenderAcks {
    unacked: BTreeSet<u64>,
    max_seen: u64,
    floor: u64,
}

/// A message assigned to a delivery to its receiver.
struct Pending {
    pair: Rc<[u8]>,
    lsn: u64,
    id: MessageId,
    rec: Rc<OutboxRecord>,
}

/// The messages for one receiver (and message type): at most one delivery in flight; what
/// arrives meanwhile waits and goes in the next delivery (up to `batch_max` at once).
#[derive(Default)]
struct Group {
    busy: bool,
    queued: bool,
    waiting: VecDeque<Pending>,
}

#[derive(Default)]
struct DState {
    pairs: HashMap<Rc<[u8]>, Pair>,
    groups: HashMap<Rc<[u8]>, Group>,
    groups_ready: Vec<Rc<[u8]>>,
    /// Messages assigned to deliveries (waiting in a group or in flight).
    inflight_msgs: usize,
    /// `stop` was called: no new delivery starts.
    stopping: bool,
    stop_waiters: Vec<futures::channel::oneshot::Sender<()>>,
    /// Callers of [`Outbox::wait_delivered`]: (count awaited, waiter).
    delivered_waiters: Vec<(u64, futures::channel::oneshot::Sender<()>)>,
    ready: VecDeque<Rc<[u8]>>,
    backoff: Vec<(Instant, Rc<[u8]>)>,
    senders: HashMap<Rc<[u8]>, SenderAcks>,
    acks_due: HashSet<Rc<[u8]>>,
    pending_bytes: u64,
    space_waiters: VecDeque<futures::channel::oneshot::Sender<()>>,
    dead: Vec<DeadLetter>,
    /// Ids of dead letters replayed or purged whose outbox record may still be in the log
    /// (the sender's outbox is truncated only below its oldest unacknowledged message): a
    /// restart skips those records instead of delivering them again. Written with the list;
    /// pruned at recovery to the ids whose record is still there.
    settled: Vec<MessageId>,
    dead_dirty: bool,
    stats: OutboxStats,
    proxies: HashMap<u64, Vec<u64>>,
}

/// One shard's dispatcher.
pub(crate) struct Dispatcher {
    shard: ShardId,
    node_id: u64,
    engine: EngineHandle,
    config: OutboxConfig,
    registry: Arc<Registry>,
    log: ShardLog,
    st: RefCell<DState>,
    wake: Notify,
}

/// A finished delivery: its group (`None` for a sink) and each message's outcome.
type Event = (Option<Rc<[u8]>>, Vec<(Rc<[u8]>, u64, Outcome)>);
type EventFut = Pin<Box<dyn Future<Output = Event>>>;

/// Starts a dispatcher on every shard of a node with a log.
/// Retries due this close together are launched together (see [`Dispatcher::launch`]).
const RETRY_COALESCE: Duration = Duration::from_millis(1);

pub(crate) fn start(
    engine: &EngineHandle,
    config: OutboxConfig,
    registry: Arc<Registry>,
    node_id: u64,
) {
    // Every shard's dispatcher is installed and recovered before any of them delivers: a
    // delivery to an actor on a shard whose dispatcher is not installed yet fails ("the outbox
    // of ...'s shard is starting") and its pairs back off one by one, which splits a
    // receiver's waiting messages over several deliveries.
    let mut go = Vec::new();
    for shard in 0..engine.shard_count() {
        let e = engine.clone();
        let config = config.clone();
        let registry = registry.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let (go_tx, go_rx) = futures::channel::oneshot::channel::<()>();
        go.push(go_tx);
        drop(engine.spawn_on(shard, move || async move {
            let Some(log) = current_shard_log() else {
                tracing::warn!(shard, "the outbox needs a log ([log] data_dir): durable messages are refused on this node");
                let _ = tx.send(());
                return;
            };
            let d = Rc::new(Dispatcher {
                shard,
                node_id,
                engine: e,
                config,
                registry,
                log,
                st: RefCell::new(DState {
                    stats: OutboxStats {
                        shard,
                        ..OutboxStats::default()
                    },
                    ..DState::default()
                }),
                wake: Notify::default(),
            });
            // Installed before recovery: a turn that sends meanwhile (a message from another
            // node) is queued in LSN order with the recovered ones; nothing is delivered
            // before recovery finished, so the order per pair holds.
            CURRENT.with(|c| *c.borrow_mut() = Some(d.clone()));
            if let Err(e) = d.recover().await {
                tracing::error!(shard, error = %e, "outbox recovery failed; pending messages are sent after the next successful start");
            }
            // The node's start returns once every shard recovered (see the wait below).
            let _ = tx.send(());
            // Delivers once every shard recovered (a dropped sender: the start gave up on a
            // stopped shard; deliver anyway, the node is stopping or degraded).
            let _ = go_rx.await;
            d.run().await;
            CURRENT.with(|c| *c.borrow_mut() = None);
        }));
        // Wait until the dispatcher is installed (bounded: a shard that stopped drops tx).
        let _ = rx.recv_timeout(Duration::from_secs(120));
    }
    for g in go {
        let _ = g.send(());
    }
}

impl Dispatcher {
    /// This shard's counters now.
    fn stats_now(&self) -> OutboxStats {
        let st = self.st.borrow();
        let mut s = st.stats.clone();
        s.pending_bytes = st.pending_bytes;
        s.dead_letters = st.dead.len() as u64;
        s
    }

    pub(crate) fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// The id stream of messages sent by `id` from this shard of this node.
    pub(crate) fn stream_of(&self, id: &ActorId) -> u64 {
        let mut h = id.stable_hash()
            ^ self.node_id.rotate_left(32)
            ^ (self.shard as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }

    /// Takes `bytes` of the pending bound, waiting (or failing, by policy) while full.
    pub(crate) async fn reserve(&self, bytes: u64) -> Result<(), (u64, u64)> {
        loop {
            let rx = {
                let mut st = self.st.borrow_mut();
                // A message larger than the bound alone still goes when nothing is pending.
                if st.pending_bytes == 0
                    || st.pending_bytes + bytes <= self.config.pending_bytes_max
                {
                    st.pending_bytes += bytes;
                    return Ok(());
                }
                if self.config.full_policy == super::FullPolicy::Fail {
                    return Err((st.pending_bytes, self.config.pending_bytes_max));
                }
                let (tx, rx) = futures::channel::oneshot::channel();
                st.space_waiters.push_back(tx);
                rx
            };
            let _ = rx.await;
        }
    }

    fn release_bytes(&self, bytes: u64) {
        let mut st = self.st.borrow_mut();
        debug_assert!(st.pending_bytes >= bytes, "released more than reserved");
        st.pending_bytes = st.pending_bytes.saturating_sub(bytes);
        for w in st.space_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    fn enqueue(&self, sender: Rc<[u8]>, lsn: u64, rec: Rc<OutboxRecord>, bytes: u64) {
        let mut st = self.st.borrow_mut();
        let mut pair_key = sender.to_vec();
        pair_key.push(0xff);
        pair_key.extend_from_slice(&rec.target.encode());
        let pair_key: Rc<[u8]> = pair_key.into();
        let acks = st.senders.entry(sender.clone()).or_default();
        acks.unacked.insert(lsn);
        acks.max_seen = acks.max_seen.max(lsn);
        st.stats.pending += 1;
        let pair = st.pairs.entry(pair_key.clone()).or_insert_with(|| Pair {
            sender,
            queue: BTreeMap::new(),
            inflight: BTreeSet::new(),
            window: match rec.target {
                Target::Sink(_) => SINK_PAIR_WINDOW,
                Target::Actor(..) => 1,
            },
            scheduled: false,
            attempts: 0,
        });
        pair.queue.insert(lsn, Msg { rec, bytes });
        if pair.inflight.len() < pair.window && !pair.scheduled {
            pair.scheduled = true;
            st.ready.push_back(pair_key);
            drop(st);
            self.wake.notify();
        }
    }

    async fn recover(&self) -> Result<(), String> {
        if let Some(&lsn) = self.log.key_lsns(DEAD_LETTER_KEY).last() {
            if let Some(r) = self.log.read(lsn).await.map_err(|e| e.to_string())? {
                let (list, settled) = decode_dead_list(self.shard, &r.payload)
                    .map_err(|e| format!("dead-letter list at LSN {lsn}: {e}"))?;
                let mut st = self.st.borrow_mut();
                st.dead = list;
                st.settled = settled;
            }
        }
        // Ids of records that are done already: on the dead-letter list, or replayed or
        // purged from it. Their records are acknowledged, not delivered again.
        let done: HashSet<MessageId> = {
            let st = self.st.borrow();
            st.dead
                .iter()
                .map(|d| d.id)
                .chain(st.settled.iter().copied())
                .collect()
        };
        let mut settled_seen: HashSet<MessageId> = HashSet::new();
        let keys = self.log.keys_with_prefix(OUTBOX_PREFIX);
        let mut n = 0u64;
        for key in keys {
            let lsns = self.log.key_lsns(&key);
            let records = self.log.read_many(&lsns).await.map_err(|e| e.to_string())?;
            let sender: Rc<[u8]> = key.into();
            for r in records {
                let decoded = format::decode_outbox(&r.payload);
                let id = match &decoded {
                    Ok(rec) => rec
                        .id_override
                        .map(|(stream, seq)| MessageId { stream, seq })
                        .unwrap_or(MessageId {
                            stream: rec.stream,
                            seq: r.origin_lsn,
                        }),
                    Err(_) => MessageId {
                        stream: 0,
                        seq: r.origin_lsn,
                    },
                };
                if done.contains(&id) {
                    settled_seen.insert(id);
                    let mut st = self.st.borrow_mut();
                    let acks = st.senders.entry(sender.clone()).or_default();
                    acks.max_seen = acks.max_seen.max(r.origin_lsn);
                    st.acks_due.insert(sender.clone());
                    continue;
                }
                match decoded {
                    Ok(rec) => {
                        let bytes = record_bytes(&rec);
                        self.st.borrow_mut().pending_bytes += bytes;
                        self.enqueue(sender.clone(), r.origin_lsn, Rc::new(rec), bytes);
                        n += 1;
                    }
                    Err(e) => {
                        tracing::error!(shard = self.shard, lsn = r.lsn, error = %e, "undecodable outbox record: dead-lettered");
                        let mut st = self.st.borrow_mut();
                        let acks = st.senders.entry(sender.clone()).or_default();
                        acks.max_seen = acks.max_seen.max(r.origin_lsn);
                        let d = dead_letter(
                            self.shard,
                            sender.to_vec(),
                            id,
                            &r.payload,
                            format!("outbox record does not decode: {e}"),
                            0,
                            now_ms(),
                        );
                        st.dead.push(d);
                        st.dead_dirty = true;
                        st.acks_due.insert(sender.clone());
                    }
                }
            }
        }
        {
            // Settled ids whose record is gone need no remembering.
            let mut st = self.st.borrow_mut();
            let before = st.settled.len();
            st.settled.retain(|id| settled_seen.contains(id));
            if st.settled.len() != before {
                st.dead_dirty = true;
            }
        }
        self.st.borrow_mut().stats.recovered = n;
        if n > 0 {
            tracing::info!(
                shard = self.shard,
                messages = n,
                "outbox: resuming delivery of messages found in the log"
            );
        }
        Ok(())
    }

    async fn run(self: &Rc<Self>) {
        let mut inflight: FuturesUnordered<EventFut> = FuturesUnordered::new();
        let mut ack_flush: Option<Pin<Box<dyn Future<Output = ()>>>> = None;
        let mut last_flush = Instant::now();
        let interval = self.config.ack_flush_interval;
        while self.engine.is_running() && !self.st.borrow().stopping {
            let now = Instant::now();
            let next_due = self.launch(&mut inflight, now);
            // Acknowledgements are written at most every `ack_flush_interval`: one truncation
            // per sender per flush, however many of its messages were acknowledged meanwhile.
            // A new dead letter is written at once (they are rare, and the list must survive a
            // crash that comes before the next periodic flush).
            let flush_due = last_flush.elapsed() >= interval || self.st.borrow().dead_dirty;
            if ack_flush.is_none() && flush_due {
                last_flush = Instant::now();
                ack_flush = self.ack_batch().map(|b| {
                    let log = self.log.clone();
                    let shard = self.shard;
                    Box::pin(async move {
                        if let Err(e) = log.append(&b).await {
                            tracing::warn!(shard, error = %e, "outbox: writing acknowledgements failed; those messages are delivered again after a restart (and deduplicated)");
                        }
                    }) as Pin<Box<dyn Future<Output = ()>>>
                });
            }
            let mut sleep_for = next_due
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            if ack_flush.is_none() && self.acks_pending() {
                sleep_for = sleep_for.min(interval.saturating_sub(last_flush.elapsed()));
            }
            enum Woke {
                Event(Event),
                Acked,
                Other,
            }
            let woke = {
                let ev = async {
                    if inflight.is_empty() {
                        futures::future::pending::<()>().await;
                        unreachable!("pending never resolves")
                    }
                    match inflight.next().await {
                        Some(e) => Woke::Event(e),
                        None => Woke::Other,
                    }
                };
                let ack = async {
                    match ack_flush.as_mut() {
                        Some(f) => {
                            f.await;
                            Woke::Acked
                        }
                        None => futures::future::pending().await,
                    }
                };
                let other = async {
                    futures::future::select(
                        Box::pin(self.wake.notified()),
                        Box::pin(quark_shard::sleep(sleep_for)),
                    )
                    .await;
                    Woke::Other
                };
                let ev = std::pin::pin!(ev);
                let ack = std::pin::pin!(ack);
                let other = std::pin::pin!(other);
                match futures::future::select(ev, futures::future::select(ack, other)).await {
                    futures::future::Either::Left((w, _)) => w,
                    futures::future::Either::Right((futures::future::Either::Left((w, _)), _)) => w,
                    futures::future::Either::Right((futures::future::Either::Right((w, _)), _)) => {
                        w
                    }
                }
            };
            match woke {
                Woke::Event(ev) => {
                    self.finish_event(ev);
                    // Drain whatever else completed without waiting.
                    while let Some(Some(ev)) = futures::FutureExt::now_or_never(inflight.next()) {
                        self.finish_event(ev);
                    }
                }
                Woke::Acked => ack_flush = None,
                Woke::Other => {}
            }
        }
        // Stopping: let the deliveries in flight finish (bounded), then write every
        // acknowledgement and dead letter gathered so far.
        if let Some(f) = ack_flush {
            f.await;
        }
        let drain_until = Instant::now() + STOP_DRAIN_MAX;
        while !inflight.is_empty() {
            let left = drain_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(shard = self.shard, deliveries = inflight.len(), "outbox: deliveries still in flight at stop; they are sent again after the restart");
                break;
            }
            let next = std::pin::pin!(inflight.next());
            let woke = futures::future::select(next, Box::pin(quark_shard::sleep(left))).await;
            if let futures::future::Either::Left((Some(ev), _)) = woke {
                self.finish_event(ev);
            }
        }
        if let Some(b) = self.ack_batch() {
            if let Err(e) = self.log.append(&b).await {
                tracing::warn!(shard = self.shard, error = %e, "outbox: final acknowledgements not written; those messages are delivered again after the restart (and deduplicated)");
            }
        }
        let waiters = std::mem::take(&mut self.st.borrow_mut().stop_waiters);
        for w in waiters {
            let _ = w.send(());
        }
    }

    /// Stops this dispatcher: no new delivery starts, deliveries in flight finish (at most
    /// `STOP_DRAIN_MAX`), and the last acknowledgements are written; returns after that.
    pub(crate) async fn stop(&self) {
        let rx = {
            let mut st = self.st.borrow_mut();
            st.stopping = true;
            let (tx, rx) = futures::channel::oneshot::channel();
            st.stop_waiters.push(tx);
            rx
        };
        self.wake.notify();
        // Err: the dispatcher's task is gone (its shard is stopping), nothing left to wait for.
        let _ = rx.await;
    }

    fn finish_event(&self, (group, results): Event) {
        for (pk, lsn, outcome) in results {
            self.finish(pk, lsn, outcome);
        }
        {
            let mut st = self.st.borrow_mut();
            if !st.delivered_waiters.is_empty() {
                let delivered = st.stats.delivered;
                let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut st.delivered_waiters)
                    .into_iter()
                    .partition(|(n, _)| *n <= delivered);
                st.delivered_waiters = rest;
                for (_, w) in due {
                    let _ = w.send(());
                }
            }
        }
        if let Some(gk) = group {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            if let Some(g) = st.groups.get_mut(&gk) {
                g.busy = false;
                if g.waiting.is_empty() {
                    st.groups.remove(&gk);
                } else if !g.queued {
                    g.queued = true;
                    st.groups_ready.push(gk);
                }
            }
        }
    }

    /// Starts deliveries of ready pairs up to `inflight_max` messages: a sink's messages one
    /// delivery each, an actor's gathered per receiver and message type, one delivery (one
    /// receiver turn) per group at a time. Returns the earliest backoff due.
    fn launch(
        self: &Rc<Self>,
        inflight: &mut FuturesUnordered<EventFut>,
        now: Instant,
    ) -> Option<Instant> {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let mut next_due = None;
        let mut i = 0;
        // Pairs whose delivery failed together (one group, one receiver turn) got their retry
        // times a few microseconds apart; taking every retry due within the next millisecond
        // keeps them in one delivery again instead of splitting the group at a timer wake-up
        // that falls between them.
        let horizon = now + RETRY_COALESCE;
        while i < st.backoff.len() {
            if st.backoff[i].0 <= horizon {
                let (_, p) = st.backoff.swap_remove(i);
                st.ready.push_back(p);
            } else {
                next_due =
                    Some(next_due.map_or(st.backoff[i].0, |d: Instant| d.min(st.backoff[i].0)));
                i += 1;
            }
        }
        let max = self.config.inflight_max;
        while st.inflight_msgs < max {
            let Some(pk) = st.ready.pop_front() else {
                break;
            };
            let Some(pair) = st.pairs.get_mut(&pk) else {
                continue;
            };
            pair.scheduled = false;
            let room = pair
                .window
                .saturating_sub(pair.inflight.len())
                .min(max - st.inflight_msgs);
            let next: Vec<(u64, Rc<OutboxRecord>)> = pair
                .queue
                .iter()
                .filter(|(l, _)| !pair.inflight.contains(l))
                .take(room)
                .map(|(l, m)| (*l, m.rec.clone()))
                .collect();
            for (lsn, rec) in next {
                pair.inflight.insert(lsn);
                let id = rec
                    .id_override
                    .map(|(stream, seq)| MessageId { stream, seq })
                    .unwrap_or(MessageId {
                        stream: rec.stream,
                        seq: lsn,
                    });
                match &rec.target {
                    Target::Sink(_) => {
                        st.inflight_msgs += 1;
                        let sender = pair.sender.clone();
                        inflight.push(self.deliver_sink(pk.clone(), lsn, id, sender, rec));
                    }
                    Target::Actor(..) => {
                        let mut gk = rec.target.encode();
                        gk.push(0xff);
                        gk.extend_from_slice(rec.message.as_bytes());
                        let gk: Rc<[u8]> = gk.into();
                        let g = st.groups.entry(gk.clone()).or_default();
                        g.waiting.push_back(Pending {
                            pair: pk.clone(),
                            lsn,
                            id,
                            rec,
                        });
                        if !g.busy && !g.queued {
                            g.queued = true;
                            st.groups_ready.push(gk);
                        }
                    }
                }
            }
        }
        // Groups whose turn did not come (the in-flight bound) stay ready for the next round.
        let mut ready = std::mem::take(&mut st.groups_ready).into_iter();
        for gk in ready.by_ref() {
            if st.inflight_msgs >= max {
                st.groups_ready.push(gk);
                break;
            }
            let Some(g) = st.groups.get_mut(&gk) else {
                continue;
            };
            g.queued = false;
            if g.busy || g.waiting.is_empty() {
                continue;
            }
            let n = g
                .waiting
                .len()
                .min(self.config.batch_max)
                .min(max - st.inflight_msgs);
            let items: Vec<Pending> = g.waiting.drain(..n).collect();
            g.busy = true;
            st.inflight_msgs += n;
            inflight.push(self.deliver_group(gk, items));
        }
        st.groups_ready.extend(ready);
        next_due
    }

    /// One delivery of `items` (one receiver, one message type) as one turn of the receiver.
    fn deliver_group(self: &Rc<Self>, gk: Rc<[u8]>, items: Vec<Pending>) -> EventFut {
        let rec = items[0].rec.clone();
        let group = gk.clone();
        let reject = move |cause: String, items: Vec<Pending>| -> EventFut {
            let results = items
                .into_iter()
                .map(|p| (p.pair, p.lsn, Outcome::Rejected(cause.clone())))
                .collect();
            Box::pin(async move { (Some(group), results) })
        };
        let Target::Actor(t, key) = &rec.target else {
            return reject("a sink message in an actor delivery".into(), items);
        };
        let Some(f) = self.registry.handler(t, &rec.message) else {
            let cause = format!("no durable handler for message {} on actor type {t} (unknown receiver type or message)", rec.message);
            return reject(cause, items);
        };
        let deliveries: Vec<Delivery> = items
            .iter()
            .map(|p| Delivery {
                id: p.id,
                message: p.rec.message.clone(),
                data: p.rec.data.clone(),
                timeout: self.config.delivery_timeout,
            })
            .collect();
        let fut = f(self.engine.clone(), key.clone(), deliveries);
        Box::pin(async move {
            let mut outcomes = fut.await.into_iter();
            let results = items
                .into_iter()
                .map(|p| {
                    let o = outcomes.next().unwrap_or_else(|| {
                        Outcome::Failed("the receiver answered fewer outcomes than messages".into())
                    });
                    (p.pair, p.lsn, o)
                })
                .collect();
            (Some(gk), results)
        })
    }

    fn deliver_sink(
        self: &Rc<Self>,
        pair: Rc<[u8]>,
        lsn: u64,
        id: MessageId,
        sender: Rc<[u8]>,
        rec: Rc<OutboxRecord>,
    ) -> EventFut {
        let one = move |o: Outcome| (None, vec![(pair, lsn, o)]);
        let Target::Sink(name) = &rec.target else {
            return Box::pin(async move {
                one(Outcome::Rejected(
                    "an actor message in a sink delivery".into(),
                ))
            });
        };
        match self.registry.sinks.get(name) {
            Some(s) => {
                let fut = s.deliver(super::SinkMessage {
                    id,
                    sender: sender_name(&sender),
                    message: rec.message.clone(),
                    data: rec.data.clone(),
                });
                Box::pin(async move { one(fut.await) })
            }
            None => {
                let cause = format!("no sink named {name:?} is registered");
                Box::pin(async move { one(Outcome::Rejected(cause)) })
            }
        }
    }

    fn finish(&self, pk: Rc<[u8]>, lsn: u64, outcome: Outcome) {
        let mut st = self.st.borrow_mut();
        st.inflight_msgs = st.inflight_msgs.saturating_sub(1);
        let Some(pair) = st.pairs.get_mut(&pk) else {
            return;
        };
        pair.inflight.remove(&lsn);
        let duplicate = outcome == Outcome::Duplicate;
        let (done, cause) = match outcome {
            Outcome::Applied => (true, None),
            Outcome::Duplicate => (true, None),
            Outcome::Rejected(c) => (true, Some(c)),
            Outcome::Failed(c) => {
                pair.attempts += 1;
                let created = pair.queue.get(&lsn).map(|m| m.rec.created_ms).unwrap_or(0);
                let age = now_ms().saturating_sub(created);
                let give_up = pair.attempts >= self.config.attempts_max
                    || age >= self.config.give_up_after.as_millis() as u64;
                let room = st.dead.len() < self.config.dead_letters_max;
                if give_up && room {
                    (
                        true,
                        Some(format!("{c} (after {} attempts)", st.pairs[&pk].attempts)),
                    )
                } else {
                    st.stats.retries += 1;
                    let pair = st.pairs.get_mut(&pk).expect("invariant: looked up above");
                    let delay = self.config.backoff(pair.attempts);
                    tracing::debug!(shard = self.shard, lsn, error = %c, ?delay, "outbox delivery failed; retrying");
                    if !pair.scheduled {
                        pair.scheduled = true;
                        st.backoff.push((Instant::now() + delay, pk));
                    }
                    return;
                }
            }
        };
        debug_assert!(done, "only finished deliveries get here");
        let pair = st.pairs.get_mut(&pk).expect("invariant: looked up above");
        let attempts = pair.attempts.max(1);
        pair.attempts = 0;
        let Some(msg) = pair.queue.remove(&lsn) else {
            return;
        };
        let sender = pair.sender.clone();
        if pair.queue.is_empty() && pair.inflight.is_empty() {
            st.pairs.remove(&pk);
        } else if !pair.scheduled && pair.queue.len() > pair.inflight.len() {
            pair.scheduled = true;
            st.ready.push_back(pk.clone());
        }
        match cause {
            None if duplicate => st.stats.duplicates += 1,
            None => st.stats.delivered += 1,
            Some(cause) => {
                tracing::warn!(shard = self.shard, lsn, %cause, "outbox message moved to the dead-letter list");
                let id = msg
                    .rec
                    .id_override
                    .map(|(stream, seq)| MessageId { stream, seq })
                    .unwrap_or(MessageId {
                        stream: msg.rec.stream,
                        seq: lsn,
                    });
                let mut payload = Vec::new();
                format::encode_outbox(&mut payload, &msg.rec);
                // Already listed when its acknowledgement was lost in a crash: list it once.
                if !st.dead.iter().any(|d| d.id == id) {
                    let d = dead_letter(
                        self.shard,
                        sender.to_vec(),
                        id,
                        &payload,
                        cause,
                        attempts,
                        now_ms(),
                    );
                    st.dead.push(d);
                    st.dead_dirty = true;
                    st.stats.dead_lettered += 1;
                }
            }
        }
        st.stats.pending = st.stats.pending.saturating_sub(1);
        if let Some(a) = st.senders.get_mut(&sender) {
            a.unacked.remove(&lsn);
        }
        st.acks_due.insert(sender);
        drop(st);
        self.release_bytes(msg.bytes);
    }

    fn acks_pending(&self) -> bool {
        let st = self.st.borrow();
        !st.acks_due.is_empty() || st.dead_dirty
    }

    /// Builds the batch of acknowledgements (truncations of the senders' outbox keys below
    /// their lowest unacknowledged message) and the dead-letter list if it changed.
    fn ack_batch(&self) -> Option<Batch> {
        let mut st = self.st.borrow_mut();
        if st.acks_due.is_empty() && !st.dead_dirty {
            return None;
        }
        let mut batch = Batch::new();
        let due: Vec<Rc<[u8]>> = st.acks_due.drain().collect();
        for s in due {
            let Some(a) = st.senders.get_mut(&s) else {
                continue;
            };
            let floor = a.unacked.first().copied().unwrap_or(a.max_seen + 1);
            if floor > a.floor {
                a.floor = floor;
                batch.truncate(&s, floor);
            }
            if a.unacked.is_empty() {
                st.senders.remove(&s);
            }
        }
        if st.dead_dirty {
            st.dead_dirty = false;
            batch.snapshot(DEAD_LETTER_KEY, &encode_dead(&st.dead, &st.settled));
        }
        (!batch.is_empty()).then_some(batch)
    }

    pub(crate) fn registry_handler(&self, t: &str, m: &str) -> Option<super::DeliverFn> {
        self.registry.handler(t, m)
    }

    pub(crate) fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    fn proxy_key(&self, node: u64, salt: u64) -> Option<u64> {
        let mut st = self.st.borrow_mut();
        let keys = st
            .proxies
            .entry(node)
            .or_insert_with(|| remote::proxy_keys(&self.engine, node));
        if keys.is_empty() {
            return None;
        }
        Some(keys[(salt % keys.len() as u64) as usize])
    }
}

/// The proxy key to reach `node` for messages of `stream`.
pub(crate) fn proxy_key(node: u64, stream: u64) -> Option<u64> {
    current().and_then(|d| d.proxy_key(node, stream))
}

/// Delivers `ds` to actor `(A, key)`: as one turn of its activation on this node, or through
/// the inbound proxy of the node that owns it (one request for the batch, one turn there).
/// One outcome per message.
pub(crate) fn deliver_to<A, M>(
    engine: EngineHandle,
    key: ActorKey,
    ds: Vec<Delivery>,
) -> Pin<Box<dyn Future<Output = Vec<Outcome>>>>
where
    A: DurableHandler<M>,
    M: DurableMessage,
{
    Box::pin(async move {
        let r = engine.actor_ref::<A>(key);
        if let Some(node) = r.remote_node() {
            let key = r.id().key.clone();
            return remote::deliver_batch(node, A::TYPE_NAME, key, ds).await;
        }
        let n = ds.len();
        let timeout = ds.first().map(|d| d.timeout).unwrap_or_default();
        let call = r.ask_timeout(
            Invoke::new(move |a: &mut A, ctx| Box::pin(super::turn::apply::<A, M>(a, ctx, ds))),
            timeout,
        );
        match call.await {
            Ok(o) => o,
            Err(e @ CallError::UnknownActorType { .. }) => {
                vec![Outcome::Rejected(e.to_string()); n]
            }
            Err(e) => vec![Outcome::Failed(e.to_string()); n],
        }
    })
}

/// Stops the dispatcher of every shard of `engine` and waits for each to write its last
/// acknowledgements (see [`Dispatcher::stop`]). Shards without one answer at once.
pub(crate) fn stop_all(engine: &EngineHandle) {
    for shard in 0..engine.shard_count() {
        let h = engine.spawn_on(shard, || async {
            if let Some(d) = current() {
                d.stop().await;
            }
        });
        if h.join().is_err() {
            tracing::debug!(
                shard,
                "outbox: the shard stopped before its dispatcher's stop"
            );
        }
    }
}

/// Why an [`Outbox`] operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The shard does not run the outbox (no log, or no outbox on the node).
    #[error("shard {shard} runs no outbox dispatcher")]
    NoDispatcher {
        /// The shard.
        shard: ShardId,
    },
    /// The shard stopped before answering.
    #[error("shard {shard} stopped before answering")]
    ShardStopped {
        /// The shard.
        shard: ShardId,
    },
    /// No dead letter has this id on the shard.
    #[error("shard {shard} has no dead letter {id}")]
    NoSuchDeadLetter {
        /// The shard.
        shard: ShardId,
        /// The id asked for.
        id: MessageId,
    },
    /// Writing the change failed.
    #[error("shard {shard}: appending failed: {source}")]
    Append {
        /// The shard.
        shard: ShardId,
        /// The log's error.
        #[source]
        source: quark_persist::AppendError,
    },
}

/// The node's outboxes: counters and the dead-letter lists (inspect, replay, purge).
#[derive(Clone, Debug)]
pub struct Outbox {
    engine: EngineHandle,
}

impl DeadLetter {
    /// The sender's outbox log key and the message's outbox record payload, for a replay.
    pub(crate) fn parts(&self) -> (&[u8], &[u8]) {
        (&self.sender_key, &self.record)
    }
}

impl Outbox {
    /// The outboxes of the node behind `engine` (`node.handle()`).
    pub fn new(engine: EngineHandle) -> Self {
        Outbox { engine }
    }

    async fn on_shard<T: Send + 'static>(
        &self,
        shard: ShardId,
        f: impl FnOnce(Rc<Dispatcher>) -> Pin<Box<dyn Future<Output = Result<T, OutboxError>>>>
            + Send
            + 'static,
    ) -> Result<T, OutboxError> {
        self.engine
            .spawn_on(shard, move || async move {
                match current() {
                    Some(d) => f(d).await,
                    None => Err(OutboxError::NoDispatcher { shard }),
                }
            })
            .await
            .map_err(|_| OutboxError::ShardStopped { shard })?
    }

    /// Every shard's counters.
    pub async fn stats(&self) -> Result<Vec<OutboxStats>, OutboxError> {
        let mut out = Vec::new();
        for shard in 0..self.engine.shard_count() {
            out.push(
                self.on_shard(shard, |d| Box::pin(async move { Ok(d.stats_now()) }))
                    .await?,
            );
        }
        Ok(out)
    }

    /// The counters of shard `shard`.
    pub async fn shard_stats(&self, shard: ShardId) -> Result<OutboxStats, OutboxError> {
        self.on_shard(shard, |d| Box::pin(async move { Ok(d.stats_now()) }))
            .await
    }

    /// Waits until shard `shard`'s dispatcher counted at least `count` messages as delivered
    /// (acknowledged as applied: the receiver's batch with the effect and the receipt is
    /// durable); returns the count then. For benchmarks and tests.
    pub async fn wait_delivered(&self, shard: ShardId, count: u64) -> Result<u64, OutboxError> {
        self.on_shard(shard, move |d| {
            Box::pin(async move {
                let rx = {
                    let mut st = d.st.borrow_mut();
                    if st.stats.delivered >= count {
                        return Ok(st.stats.delivered);
                    }
                    let (tx, rx) = futures::channel::oneshot::channel();
                    st.delivered_waiters.push((count, tx));
                    rx
                };
                rx.await.map_err(|_| OutboxError::ShardStopped { shard })?;
                let delivered = d.st.borrow().stats.delivered;
                Ok(delivered)
            })
        })
        .await
    }

    /// Every shard's dead letters, oldest first per shard.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, OutboxError> {
        let mut out = Vec::new();
        for shard in 0..self.engine.shard_count() {
            out.extend(
                self.on_shard(shard, |d| {
                    Box::pin(async move { Ok(d.st.borrow().dead.clone()) })
                })
                .await?,
            );
        }
        Ok(out)
    }

    /// Sends dead letter `id` of `shard` again, under a replay id derived from `id` (so two
    /// replays of it are applied once); removes it from the list in the same batch. Returns
    /// the replay's id. Ordering with the pair's other messages is not kept for a replay.
    pub async fn replay(&self, shard: ShardId, id: MessageId) -> Result<MessageId, OutboxError> {
        self.on_shard(shard, move |d| {
            Box::pin(async move {
                let (sender, mut rec, rest, settled) = {
                    let st = d.st.borrow();
                    let Some(i) = st.dead.iter().position(|x| x.id == id) else {
                        return Err(OutboxError::NoSuchDeadLetter { shard, id });
                    };
                    let dl = &st.dead[i];
                    let Ok(rec) = format::decode_outbox(&dl.record) else {
                        return Err(OutboxError::NoSuchDeadLetter { shard, id });
                    };
                    let mut rest = st.dead.clone();
                    rest.remove(i);
                    (dl.sender_key.clone(), rec, rest, settle(&st.settled, id))
                };
                let rid = replay_id(id);
                rec.id_override = Some((rid.stream, rid.seq));
                let mut payload = Vec::new();
                format::encode_outbox(&mut payload, &rec);
                // Pending acknowledgements go in the same batch, so that a dead letter removed
                // from the list never comes back from an unacknowledged outbox record.
                let mut batch = d.ack_batch().unwrap_or_default();
                batch.event(&sender, &payload);
                batch.snapshot(DEAD_LETTER_KEY, &encode_dead(&rest, &settled));
                let range = d
                    .log
                    .append(&batch)
                    .await
                    .map_err(|source| OutboxError::Append { shard, source })?;
                {
                    let mut st = d.st.borrow_mut();
                    st.dead.retain(|x| x.id != id);
                    st.settled = settled;
                }
                let bytes = record_bytes(&rec);
                d.st.borrow_mut().pending_bytes += bytes;
                d.enqueue(sender.into(), range.first, Rc::new(rec), bytes);
                Ok(rid)
            })
        })
        .await
    }

    /// Removes dead letter `id` of `shard` for good.
    pub async fn purge(&self, shard: ShardId, id: MessageId) -> Result<(), OutboxError> {
        self.on_shard(shard, move |d| {
            Box::pin(async move {
                let (rest, settled): (Vec<DeadLetter>, Vec<MessageId>) = {
                    let st = d.st.borrow();
                    if !st.dead.iter().any(|x| x.id == id) {
                        return Err(OutboxError::NoSuchDeadLetter { shard, id });
                    }
                    (
                        st.dead.iter().filter(|x| x.id != id).cloned().collect(),
                        settle(&st.settled, id),
                    )
                };
                let mut batch = d.ack_batch().unwrap_or_default();
                batch.snapshot(DEAD_LETTER_KEY, &encode_dead(&rest, &settled));
                d.log
                    .append(&batch)
                    .await
                    .map_err(|source| OutboxError::Append { shard, source })?;
                let mut st = d.st.borrow_mut();
                st.dead.retain(|x| x.id != id);
                st.settled = settled;
                Ok(())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_list_round_trips() {
        let rec = OutboxRecord {
            created_ms: 1,
            stream: 2,
            id_override: None,
            target: Target::Sink("pg".into()),
            message: "m".into(),
            data: vec![9],
        };
        let mut payload = Vec::new();
        format::encode_outbox(&mut payload, &rec);
        let d = dead_letter(
            3,
            b"qo\x01a\x00\x01\0\0\0\0\0\0\0".to_vec(),
            MessageId { stream: 2, seq: 5 },
            &payload,
            "why".into(),
            4,
            6,
        );
        let list = vec![d.clone(), d];
        let settled = vec![MessageId { stream: 8, seq: 1 }];
        assert_eq!(
            decode_dead_list(3, &encode_dead(&list, &settled)).unwrap(),
            (list.clone(), settled)
        );
        // A list written before the settled part existed.
        let mut old = encode_dead(&list, &[]);
        old.truncate(old.len() - 4);
        assert_eq!(decode_dead_list(3, &old).unwrap(), (list.clone(), vec![]));
        assert_eq!(list[0].target, "sink:pg");
        assert_eq!(list[0].sender, "a/1");
    }

    #[test]
    fn replay_ids_are_stable_and_leave_the_stream() {
        let id = MessageId { stream: 7, seq: 9 };
        assert_eq!(replay_id(id), replay_id(id));
        assert_ne!(replay_id(id).stream, id.stream);
        assert_ne!(replay_id(id), replay_id(MessageId { stream: 7, seq: 10 }));
    }
}
