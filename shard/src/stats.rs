//! A shard's counters: plain cells, written only by the shard's thread, read through
//! [`crate::Engine::stats`] (which asks each shard for a snapshot).
//!
//! **Load by actor type** (see [`LoadSnapshot`]): every turn adds one to its type's
//! `handled` counter; one turn in [`TURN_SAMPLE_EVERY`] of each type is *sampled*: it is timed
//! (a turn-duration histogram per type), its actor is counted in a bounded top-k of the
//! busiest actors (space-saving, over two windows of [`TOP_WINDOW`]), and every message it
//! sends is counted as an edge of the communication graph (caller type -> callee type). The
//! sampled figures are estimates: each sampled event stands for [`TURN_SAMPLE_EVERY`] of its
//! kind. Requests sent to each other shard and to each other node are counted exactly.
//!
//! **Actor edges** (the locality repartitioner's input, docs/LOCALITY.md): when
//! [`actor_edges_enable`] was called on the shard's thread, every message a sampled turn sends
//! is also counted as an edge *caller actor -> callee actor* in a Space-Saving sketch
//! (`quark_placement::locality::EdgeSketch`), read and decayed by [`actor_edges_take`]. The
//! unsampled path pays nothing more than the callee key passed by reference to the check.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use quark_placement::locality::EdgeSketch;
use quark_placement::{ActorId, ActorKey, NodeId};

/// Index of a message kind in [`ShardStats::tells`], [`ShardStats::asks`] and (the first
/// three) [`ShardStats::ask_latency`]: to an actor of the same shard.
pub(crate) const LOCAL: usize = 0;
/// To an actor of another shard of this node.
pub(crate) const CROSS_SHARD: usize = 1;
// The senders index with `usize::from(target != this shard)`.
const _: () = assert!(LOCAL == 0 && CROSS_SHARD == 1);
/// To an actor of another node (counted by the sending shard).
pub(crate) const REMOTE: usize = 2;
/// From a thread outside the node (counted by the owner shard when it handles the message).
pub(crate) const EXTERNAL: usize = 3;

/// Why a park ended (index into `ShardStats::wakeups`): another thread's doorbell.
pub(crate) const WAKE_DOORBELL: usize = 0;
/// The shard's own deadline.
pub(crate) const WAKE_TIMER: usize = 1;
/// A waker on the shard's own thread.
pub(crate) const WAKE_LOCAL: usize = 2;

/// Buckets of an ask latency histogram: bucket `i` counts asks that took at most `2^i` µs
/// (1 µs … 2^24 µs ≈ 16.8 s); the last one, any longer ask.
pub const ASK_LATENCY_BUCKETS: usize = 26;

/// An ask latency histogram kept by one shard: power-of-two buckets of microseconds.
#[derive(Default)]
pub(crate) struct LatencyHistogram {
    buckets: [Cell<u64>; ASK_LATENCY_BUCKETS],
    sum_us: Cell<u64>,
}

impl LatencyHistogram {
    /// Counts one ask that took `us` µs.
    #[inline]
    pub(crate) fn record_us(&self, us: u64) {
        add(&self.buckets[latency_bucket(us)], 1);
        self.sum_us.set(self.sum_us.get().saturating_add(us));
    }

    /// The bucket counts (not cumulative) and the sum of the recorded latencies, µs.
    pub(crate) fn snapshot(&self) -> ([u64; ASK_LATENCY_BUCKETS], u64) {
        (
            std::array::from_fn(|i| self.buckets[i].get()),
            self.sum_us.get(),
        )
    }
}

/// The bucket of a latency of `us` microseconds: the smallest `i` with `us <= 2^i`, at most
/// the last bucket.
#[inline]
pub(crate) fn latency_bucket(us: u64) -> usize {
    let i = if us <= 1 {
        0
    } else {
        (u64::BITS - (us - 1).leading_zeros()) as usize
    };
    i.min(ASK_LATENCY_BUCKETS - 1)
}

pub(crate) struct ShardStats {
    /// Moves ordered by this shard as the actors' home (`migrate`).
    pub(crate) migrations_started: Cell<u64>,
    /// Moves that ended with the actor on its new shard.
    pub(crate) migrations_done: Cell<u64>,
    /// Moves aborted (deadline) or refused by the actor's place; the actor stayed.
    pub(crate) migrations_aborted: Cell<u64>,
    /// Bytes of dehydrated state moved (0 for states moved as a box).
    pub(crate) migration_bytes: Cell<u64>,
    /// Messages this shard forwarded to an actor of its that lives on another shard.
    pub(crate) migrate_forwarded: Cell<u64>,
    pub(crate) activations: Cell<u64>,
    pub(crate) deactivations: Cell<u64>,
    pub(crate) panics: Cell<u64>,
    pub(crate) replies_dropped: Cell<u64>,
    pub(crate) asks_expired_skipped: Cell<u64>,
    pub(crate) mailbox_waits: Cell<u64>,
    pub(crate) parks: Cell<u64>,
    /// Parks ended by another thread's doorbell, by the shard's own deadline (a timer), and
    /// by a local event (a poke from this thread's wakers).
    pub(crate) wakeups: [Cell<u64>; 3],
    pub(crate) iterations: Cell<u64>,
    pub(crate) reaps: Cell<u64>,
    pub(crate) task_polls: Cell<u64>,
    pub(crate) ring_msgs_in: Cell<u64>,
    /// Tells by kind ([`LOCAL`], [`CROSS_SHARD`], [`REMOTE`]: sent from this shard;
    /// [`EXTERNAL`]: from outside the node, handled here).
    pub(crate) tells: [Cell<u64>; 4],
    /// Asks by kind, as `tells`.
    pub(crate) asks: [Cell<u64>; 4],
    /// Latency of the asks made from this shard, by kind ([`LOCAL`], [`CROSS_SHARD`],
    /// [`REMOTE`]), measured with the shard clock (read once per pump iteration).
    pub(crate) ask_latency: [LatencyHistogram; 3],
    /// Turns by actor type (index: the type's registration index).
    pub(crate) by_type: Box<[TypeTurns]>,
    /// Requests (tells and asks) sent through the rings to each shard (index: shard id).
    pub(crate) to_shard: Box<[Cell<u64>]>,
    /// Requests sent to each other node.
    pub(crate) to_node: RefCell<Vec<(NodeId, u64)>>,
    /// The busiest actors, from sampled turns.
    top: RefCell<TopActors>,
    /// The largest actors (of types with a `memory_size` hook), from sampled turns.
    top_memory: RefCell<TopMemory>,
    /// The shard thread's memory accounting slot (`memory.rs`), if it has one.
    #[allow(dead_code)]
    memory_slot: Option<u32>,
}

/// The turns of one actor type on one shard.
#[derive(Default)]
pub(crate) struct TypeTurns {
    /// Turns run (every one).
    handled: Cell<u64>,
    /// Duration of the sampled turns (from the message's hand-over to the handler's return).
    duration: LatencyHistogram,
}

/// One turn in this many (of each actor type) is sampled. A power of two.
pub const TURN_SAMPLE_EVERY: u64 = 64;
const _: () = assert!(TURN_SAMPLE_EVERY.is_power_of_two());
/// The span of one window of the top-actors counter; the figures cover the current window and
/// the one before it (10 to 20 s).
pub const TOP_WINDOW: Duration = Duration::from_secs(10);
/// Actors tracked per window and shard (space-saving: an actor that sends more than 1/`K` of a
/// shard's sampled turns is always in it).
const TOP_TRACKED: usize = 32;
/// Actors reported per shard.
pub const TOP_ACTORS_PER_SHARD: usize = 10;
/// Edges of the communication graph kept per shard (further edges are counted in
/// `edges_dropped`).
const EDGES_MAX: usize = 1024;
/// `RunTurn::caller` of a turn that is not sampled.
pub(crate) const NO_CALLER: u16 = u16::MAX;

impl ShardStats {
    pub(crate) fn new(types: usize, shards: usize) -> ShardStats {
        ShardStats {
            activations: Cell::default(),
            deactivations: Cell::default(),
            panics: Cell::default(),
            replies_dropped: Cell::default(),
            asks_expired_skipped: Cell::default(),
            mailbox_waits: Cell::default(),
            parks: Cell::default(),
            wakeups: Default::default(),
            iterations: Cell::default(),
            reaps: Cell::default(),
            task_polls: Cell::default(),
            ring_msgs_in: Cell::default(),
            migrations_started: Cell::default(),
            migrations_done: Cell::default(),
            migrations_aborted: Cell::default(),
            migration_bytes: Cell::default(),
            migrate_forwarded: Cell::default(),
            tells: Default::default(),
            asks: Default::default(),
            ask_latency: Default::default(),
            by_type: (0..types).map(|_| TypeTurns::default()).collect(),
            to_shard: (0..shards).map(|_| Cell::new(0)).collect(),
            to_node: RefCell::default(),
            top: RefCell::default(),
            top_memory: RefCell::default(),
            memory_slot: crate::memory::register_thread(),
        }
    }

    /// Counts a turn of type `type_idx` about to run; `Some(start)` if it is sampled.
    #[inline]
    pub(crate) fn turn_begin(&self, type_idx: u16) -> Option<Instant> {
        let t = &self.by_type[usize::from(type_idx)];
        let n = t.handled.get() + 1;
        t.handled.set(n);
        if n & (TURN_SAMPLE_EVERY - 1) != 0 {
            return None;
        }
        Some(Instant::now())
    }

    /// Ends a sampled turn of `actor` that began at `start`; `bytes`: its state's deep size
    /// after the turn, if its type has the `memory_size` hook.
    #[cold]
    #[inline(never)]
    pub(crate) fn turn_sampled(
        &self,
        start: Instant,
        actor: &ActorId,
        type_idx: u16,
        bytes: Option<usize>,
    ) {
        let now = Instant::now();
        let us = now.saturating_duration_since(start).as_micros();
        self.by_type[usize::from(type_idx)]
            .duration
            .record_us(u64::try_from(us).unwrap_or(u64::MAX));
        self.top.borrow_mut().add(actor, now);
        if let Some(b) = bytes {
            self.top_memory.borrow_mut().add(actor, b, now);
        }
    }

    /// Counts a request sent through the rings to shard `to`.
    #[inline]
    pub(crate) fn sent_to_shard(&self, to: crate::ShardId) {
        if let Some(c) = self.to_shard.get(usize::from(to)) {
            add(c, 1);
        }
    }

    /// Counts a request sent to node `to`.
    pub(crate) fn sent_to_node(&self, to: NodeId) {
        let mut v = self.to_node.borrow_mut();
        match v.iter_mut().find(|(n, _)| *n == to) {
            Some((_, c)) => *c += 1,
            None => v.push((to, 1)),
        }
    }

    /// The load figures; `names[i]` is the name of type `i`.
    pub(crate) fn load_snapshot(&self, names: &[&'static str]) -> LoadSnapshot {
        let name = |i: u16| names.get(usize::from(i)).copied().unwrap_or("?");
        let now = Instant::now();
        let (top_actors, top_window_ms) = self.top.borrow().snapshot(now);
        let top_memory = self.top_memory.borrow().snapshot(now);
        let (edges, edges_dropped) = EDGES.with(|e| {
            let e = e.borrow();
            let list = e
                .list
                .iter()
                .map(|&(from, to, n)| CallEdge {
                    caller: name(from),
                    callee: name(to),
                    messages_est: n,
                })
                .collect();
            (list, e.dropped)
        });
        LoadSnapshot {
            sample_every: TURN_SAMPLE_EVERY,
            types: self
                .by_type
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let (buckets, sum_us) = t.duration.snapshot();
                    TypeLoad {
                        type_name: name(i as u16),
                        handled: t.handled.get(),
                        turn_duration: TurnDurations { buckets, sum_us },
                    }
                })
                .collect(),
            top_actors,
            top_window_ms,
            top_memory,
            edges,
            edges_dropped,
            to_shards: self.to_shard.iter().map(Cell::get).collect(),
            to_nodes: self.to_node.borrow().clone(),
            memory: crate::memory::snapshot(names),
        }
    }
}

thread_local! {
    /// The type of the sampled turn being polled on this thread ([`NO_CALLER`] otherwise).
    static CALLER: Cell<u16> = const { Cell::new(NO_CALLER) };
    /// The key of the actor of the sampled turn being polled (null otherwise): valid while
    /// [`with_caller`] polls that turn (it borrows the key for the poll).
    static CALLER_KEY: Cell<*const ActorKey> = const { Cell::new(std::ptr::null()) };
    /// The actor-to-actor edges of this (shard) thread's sampled turns, when the locality
    /// repartitioner asked for them ([`actor_edges_enable`]).
    static ACTOR_EDGES: RefCell<Option<ActorEdges>> = const { RefCell::new(None) };
    /// The communication graph of this (shard) thread's sampled turns.
    static EDGES: RefCell<Edges> = const { RefCell::new(Edges { list: Vec::new(), dropped: 0 }) };
}

struct Edges {
    /// (caller type, callee type, estimated messages).
    list: Vec<(u16, u16, u64)>,
    dropped: u64,
}

/// Polls `f` with `caller` (a type index) and `key` as the current sampled caller (restored
/// after).
#[inline]
pub(crate) fn with_caller<R>(caller: u16, key: &ActorKey, f: impl FnOnce() -> R) -> R {
    struct Restore(u16, *const ActorKey);
    impl Drop for Restore {
        fn drop(&mut self) {
            CALLER.with(|c| c.set(self.0));
            CALLER_KEY.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(
        CALLER.with(|c| c.replace(caller)),
        CALLER_KEY.with(|c| c.replace(key)),
    );
    f()
}

/// Counts a message to the actor (`callee` type index, `key`) if a sampled turn is sending
/// it. Unsampled: one thread-local read and a compare, as before actor edges existed.
#[inline]
pub(crate) fn note_send(callee: u16, key: &ActorKey) {
    let caller = CALLER.with(Cell::get);
    if caller != NO_CALLER {
        record_edge(caller, callee, key);
    }
}

/// [`note_send`] for a message whose callee type index is found only if needed (remote sends).
#[inline]
pub(crate) fn note_send_by(callee: impl FnOnce() -> Option<u16>, key: &ActorKey) {
    let caller = CALLER.with(Cell::get);
    if caller != NO_CALLER {
        if let Some(t) = callee() {
            record_edge(caller, t, key);
        }
    }
}

#[cold]
#[inline(never)]
fn record_edge(caller: u16, callee: u16, key: &ActorKey) {
    ACTOR_EDGES.with(|a| {
        let mut a = a.borrow_mut();
        let Some(a) = a.as_mut() else { return };
        let ck = CALLER_KEY.with(Cell::get);
        if ck.is_null() {
            return;
        }
        // SAFETY: `with_caller` set the pointer from a borrowed key for the duration of the
        // poll that is running now (this call is inside it), and restores it after.
        let from: ActorSlot = (caller, unsafe { (*ck).clone() });
        let to: ActorSlot = (callee, key.clone());
        a.traffic.add(from.clone(), TURN_SAMPLE_EVERY as f64);
        a.traffic.add(to.clone(), TURN_SAMPLE_EVERY as f64);
        a.edges.add((from, to), TURN_SAMPLE_EVERY as f64);
    });
    EDGES.with(|e| {
        let mut e = e.borrow_mut();
        if let Some(x) = e.list.iter_mut().find(|x| x.0 == caller && x.1 == callee) {
            x.2 += TURN_SAMPLE_EVERY;
        } else if e.list.len() < EDGES_MAX {
            e.list.push((caller, callee, TURN_SAMPLE_EVERY));
        } else {
            e.dropped += TURN_SAMPLE_EVERY;
        }
    });
}

/// An actor as the sampled edges name it: its type's registration index (the order of
/// [`LoadSnapshot::types`]) and its key.
pub type ActorSlot = (u16, ActorKey);

/// The actor-to-actor edges of one shard's sampled turns (the locality repartitioner's input;
/// docs/LOCALITY.md): two Space-Saving sketches of `top_k` entries each.
struct ActorEdges {
    /// (caller, callee) -> estimated messages.
    edges: EdgeSketch<(ActorSlot, ActorSlot)>,
    /// Actor -> estimated messages sent and received.
    traffic: EdgeSketch<ActorSlot>,
}

/// What [`actor_edges_take`] returns: one shard's sampled actor-to-actor traffic since the
/// last take (decayed by the takes in between), estimated messages (each sampled send stands
/// for [`TURN_SAMPLE_EVERY`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActorEdgeSample {
    /// (caller, callee, messages): each edge at its guaranteed weight (the sketch's count
    /// minus its over-estimation bound), heaviest first.
    pub edges: Vec<(ActorSlot, ActorSlot, f64)>,
    /// (actor, messages sent and received), as counted by this shard.
    pub traffic: Vec<(ActorSlot, f64)>,
}

/// Starts keeping the actor-to-actor edges of this shard's sampled turns, `top_k` edges and
/// `top_k` actors at most (a Space-Saving sketch each). Call it on a shard's thread (through
/// `Engine::spawn_on`); elsewhere it has no effect on any shard. Idempotent: a second call
/// keeps what was counted (with the new bound if it differs, starting afresh).
pub fn actor_edges_enable(top_k: usize) {
    ACTOR_EDGES.with(|a| {
        let mut a = a.borrow_mut();
        if a.as_ref()
            .is_some_and(|x| x.edges.capacity() == top_k.max(1))
        {
            return;
        }
        *a = Some(ActorEdges {
            edges: EdgeSketch::new(top_k),
            traffic: EdgeSketch::new(top_k),
        });
    });
}

/// Stops keeping actor-to-actor edges on this shard (and forgets them).
pub fn actor_edges_disable() {
    ACTOR_EDGES.with(|a| *a.borrow_mut() = None);
}

/// This shard's sampled actor-to-actor traffic, then decays it by `decay` (in `0..=1`;
/// entries below one message are forgotten). Empty unless [`actor_edges_enable`] was called
/// on this thread. Call it on the shard's thread.
pub fn actor_edges_take(decay: f64) -> ActorEdgeSample {
    ACTOR_EDGES.with(|a| {
        let mut a = a.borrow_mut();
        let Some(a) = a.as_mut() else {
            return ActorEdgeSample::default();
        };
        let mut edges: Vec<(ActorSlot, ActorSlot, f64)> = a
            .edges
            .counters()
            .map(|c| (c.key.0.clone(), c.key.1.clone(), c.count - c.error))
            .filter(|e| e.2 > 0.0)
            .collect();
        edges.sort_by(|x, y| {
            y.2.total_cmp(&x.2)
                .then_with(|| (&x.0, &x.1).cmp(&(&y.0, &y.1)))
        });
        let traffic = a
            .traffic
            .counters()
            .map(|c| (c.key.clone(), c.count))
            .collect();
        a.edges.decay_and_trim(decay, 1.0);
        a.traffic.decay_and_trim(decay, 1.0);
        ActorEdgeSample { edges, traffic }
    })
}

/// A space-saving top-k of actors by sampled turns, over two windows.
#[derive(Default)]
struct TopActors {
    cur: Vec<(ActorId, u64)>,
    prev: Vec<(ActorId, u64)>,
    cur_start: Option<Instant>,
}

impl TopActors {
    fn add(&mut self, id: &ActorId, now: Instant) {
        let start = *self.cur_start.get_or_insert(now);
        let age = now.saturating_duration_since(start);
        if age >= TOP_WINDOW {
            // Two windows or more without a sample: the previous window is stale too.
            self.prev = if age >= 2 * TOP_WINDOW {
                Vec::new()
            } else {
                std::mem::take(&mut self.cur)
            };
            self.cur.clear();
            self.cur_start = Some(now);
        }
        if let Some(e) = self.cur.iter_mut().find(|e| e.0 == *id) {
            e.1 += TURN_SAMPLE_EVERY;
        } else if self.cur.len() < TOP_TRACKED {
            self.cur.push((id.clone(), TURN_SAMPLE_EVERY));
        } else if let Some(min) = self.cur.iter_mut().min_by_key(|e| e.1) {
            // Space-saving: the newcomer takes the smallest counter's place and count.
            min.0 = id.clone();
            min.1 += TURN_SAMPLE_EVERY;
        }
    }

    /// The busiest actors of the current and previous windows, and the time they cover (ms).
    fn snapshot(&self, now: Instant) -> (Vec<TopActor>, u64) {
        let Some(start) = self.cur_start else {
            return (Vec::new(), 0);
        };
        let age = now.saturating_duration_since(start);
        let (mut merged, span): (Vec<(ActorId, u64)>, Duration) = if age >= 2 * TOP_WINDOW {
            (Vec::new(), Duration::ZERO)
        } else if age >= TOP_WINDOW {
            (self.cur.clone(), age)
        } else {
            let mut m = self.prev.clone();
            for (id, n) in &self.cur {
                match m.iter_mut().find(|e| e.0 == *id) {
                    Some(e) => e.1 += n,
                    None => m.push((id.clone(), *n)),
                }
            }
            let span = if self.prev.is_empty() {
                age
            } else {
                age + TOP_WINDOW
            };
            (m, span)
        };
        merged.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
        });
        merged.truncate(TOP_ACTORS_PER_SHARD);
        let list = merged
            .into_iter()
            .map(|(actor, messages_est)| TopActor {
                actor,
                messages_est,
            })
            .collect();
        (list, u64::try_from(span.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The largest actors by their last sampled deep size: at most [`TOP_TRACKED`], each dropped
/// when it was not sampled for two windows (deactivated, moved or idle: the figure would be
/// stale).
#[derive(Default)]
struct TopMemory {
    /// (actor, bytes at its last sampled turn, when).
    list: Vec<(ActorId, usize, Instant)>,
}

impl TopMemory {
    fn add(&mut self, id: &ActorId, bytes: usize, now: Instant) {
        self.list
            .retain(|e| now.saturating_duration_since(e.2) < 2 * TOP_WINDOW);
        if let Some(e) = self.list.iter_mut().find(|e| e.0 == *id) {
            e.1 = bytes;
            e.2 = now;
        } else if self.list.len() < TOP_TRACKED {
            self.list.push((id.clone(), bytes, now));
        } else if let Some(min) = self.list.iter_mut().min_by_key(|e| e.1) {
            if bytes > min.1 {
                *min = (id.clone(), bytes, now);
            }
        }
    }

    /// The largest actors sampled in the last two windows, largest first.
    fn snapshot(&self, now: Instant) -> Vec<TopMemoryActor> {
        let mut l: Vec<TopMemoryActor> = self
            .list
            .iter()
            .filter(|e| now.saturating_duration_since(e.2) < 2 * TOP_WINDOW)
            .map(|e| TopMemoryActor {
                actor: e.0.clone(),
                bytes: e.1,
                age_ms: u64::try_from(now.saturating_duration_since(e.2).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect();
        l.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then_with(|| a.actor.to_string().cmp(&b.actor.to_string()))
        });
        l.truncate(TOP_ACTORS_PER_SHARD);
        l
    }
}

/// A shard's load by actor type, its busiest actors and its communication graph (see the
/// module docs of `stats`: the per-type `handled` and the `to_*` counts are exact, the rest is
/// estimated from one turn in [`LoadSnapshot::sample_every`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSnapshot {
    /// One turn in this many of each type is sampled ([`TURN_SAMPLE_EVERY`]).
    pub sample_every: u64,
    /// Per registered actor type, in registration order.
    pub types: Vec<TypeLoad>,
    /// The busiest actors of the last 10 to 20 s, most messages first (at most
    /// [`TOP_ACTORS_PER_SHARD`]).
    pub top_actors: Vec<TopActor>,
    /// The time `top_actors` covers, ms.
    pub top_window_ms: u64,
    /// The largest actors by deep size (types with an
    /// [`ActorType::memory_size`](crate::ActorType::memory_size) hook only), measured at the
    /// end of their sampled turns in the last 10 to 20 s, largest first (at most
    /// [`TOP_ACTORS_PER_SHARD`]).
    pub top_memory: Vec<TopMemoryActor>,
    /// Messages sent by actors of one type to actors of another (or the same), since start.
    pub edges: Vec<CallEdge>,
    /// Estimated messages not in `edges` because the graph reached its bound.
    pub edges_dropped: u64,
    /// Requests (tells and asks) sent through the rings to each shard, index = shard id (this
    /// shard's own entry stays 0), since start.
    pub to_shards: Vec<u64>,
    /// Requests sent to each other node, since start.
    pub to_nodes: Vec<(NodeId, u64)>,
    /// The shard's memory (with a [`CountingAlloc`](crate::memory::CountingAlloc) as the
    /// global allocator; docs/MEMORY.md).
    pub memory: crate::memory::MemorySnapshot,
}

/// The turns of one actor type on one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeLoad {
    /// The type name.
    pub type_name: &'static str,
    /// Turns run (messages and timer ticks handled), since start. Exact.
    pub handled: u64,
    /// Duration of the sampled turns (one in [`TURN_SAMPLE_EVERY`]): from the hand-over of
    /// the message to the handler's return, awaits included. Same buckets as the ask
    /// latencies.
    pub turn_duration: TurnDurations,
}

/// A histogram of turn durations: `buckets[i]` counts the turns that took at most `2^i` µs and
/// more than `2^(i-1)` µs (not cumulative); the last bucket, any longer turn. The buckets of
/// the ask latency histograms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnDurations {
    /// Counts per bucket.
    pub buckets: [u64; ASK_LATENCY_BUCKETS],
    /// Sum of the durations, µs.
    pub sum_us: u64,
}

/// One of the busiest actors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopActor {
    /// The actor.
    pub actor: ActorId,
    /// Estimated messages it handled in the window ([`LoadSnapshot::top_window_ms`]).
    pub messages_est: u64,
}

/// One of the largest actors ([`LoadSnapshot::top_memory`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopMemoryActor {
    /// The actor.
    pub actor: ActorId,
    /// Its state's deep size (the type's hook) at the end of its last sampled turn, bytes.
    pub bytes: usize,
    /// How long ago that turn ended, ms.
    pub age_ms: u64,
}

/// An edge of the communication graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEdge {
    /// The sending actor's type.
    pub caller: &'static str,
    /// The receiving actor's type.
    pub callee: &'static str,
    /// Estimated messages sent (tells and asks).
    pub messages_est: u64,
}

/// Adds `n` to a counter.
#[inline]
pub(crate) fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_powers_of_two_of_microseconds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(4), 2);
        assert_eq!(latency_bucket(5), 3);
        assert_eq!(latency_bucket(1 << 24), 24);
        assert_eq!(latency_bucket((1 << 24) + 1), 25);
        assert_eq!(latency_bucket(u64::MAX), ASK_LATENCY_BUCKETS - 1);
        let h = LatencyHistogram::default();
        h.record_us(3);
        h.record_us(100);
        h.record_us(60_000_000);
        let (b, sum) = h.snapshot();
        assert_eq!(b[2], 1);
        assert_eq!(b[7], 1, "100 µs <= 128 µs");
        assert_eq!(b[ASK_LATENCY_BUCKETS - 1], 1);
        assert_eq!(b.iter().sum::<u64>(), 3);
        assert_eq!(sum, 3 + 100 + 60_000_000);
    }
}
