//! The memory monitor: a thread of the node that samples the shards' memory every
//! `sample_interval`, logs threshold crossings, refuses new activations on shards (or the
//! node) at the reject threshold, and moves activations off shards over the critical
//! threshold to the node's shards with room (docs/MEMORY.md, "What the monitor does").

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use quark_placement::NodeId;
use quark_shard::memory::{set_leak_policy, set_refuse_activations, ActorMemory};
use quark_shard::{ActorId, ShardId};

use super::{node_limit, resident_bytes, shard_limit, Level, MoveCooldown, RebalanceMove};
use crate::admin::EngineSlot;
use crate::config::{MemoryConfig, VictimStrategy};

/// How long bytes moved to another node count as shed from the node's RSS.
const OFF_NODE_CREDIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Moves kept in [`MonitorState::recent`].
const RECENT_MAX: usize = 64;

/// What the monitor knows between samples (read by `Node::memory`).
#[derive(Debug, Clone, Default)]
pub(crate) struct MonitorState {
    pub(crate) growth_bytes_per_sec: f64,
    pub(crate) moves: u64,
    pub(crate) move_failures: u64,
    pub(crate) moved_bytes: u64,
    pub(crate) node_moves: u64,
    pub(crate) deactivations: u64,
    pub(crate) recent: VecDeque<RebalanceMove>,
    /// Per shard: new activations refused now.
    pub(crate) refusing: Vec<bool>,
    levels: Vec<Level>,
    node_level: Level,
}

/// The running monitor; stopped (and joined) by [`Monitor::stop`] or on drop.
pub(crate) struct Monitor {
    state: Arc<Mutex<MonitorState>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    slots: Arc<Mutex<Vec<u32>>>,
}

impl Monitor {
    /// Starts the monitor thread over the engine in `engine`.
    pub(crate) fn start(
        config: MemoryConfig,
        engine: EngineSlot,
        cooldown: MoveCooldown,
        peers: Vec<NodeId>,
    ) -> std::io::Result<Monitor> {
        set_leak_policy(
            config.leak_samples,
            config.leak_growth_bytes,
            config.sample_interval,
        );
        let state = Arc::new(Mutex::new(MonitorState::default()));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let slots = Arc::new(Mutex::new(Vec::new()));
        let (st, sp, sl) = (state.clone(), stop.clone(), slots.clone());
        let thread = std::thread::Builder::new()
            .name("quark-memory".into())
            .spawn(move || run(config, engine, cooldown, peers, st, sp, sl))?;
        Ok(Monitor {
            state,
            stop,
            thread: Some(thread),
            slots,
        })
    }

    /// Its state, shared (the admin endpoint reads it at each scrape).
    pub(crate) fn state_handle(&self) -> Arc<Mutex<MonitorState>> {
        self.state.clone()
    }

    /// A copy of what it knows now.
    pub(crate) fn state(&self) -> MonitorState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the thread and waits for it; admits activations again on every shard it refused.
    pub(crate) fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        {
            let (flag, cv) = &*self.stop;
            *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the memory monitor thread panicked");
            }
        }
        for slot in self.slots.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            set_refuse_activations(*slot, false);
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Token buckets bounding the moves per second and the bytes moved per second (a burst of
/// at most one second's worth).
pub(crate) struct Budget {
    moves: f64,
    bytes: f64,
    last: Instant,
}

impl Budget {
    pub(crate) fn new(c: &MemoryConfig, now: Instant) -> Self {
        Budget {
            moves: f64::from(c.moves_per_sec_max),
            bytes: c.move_bytes_per_sec_max as f64,
            last: now,
        }
    }

    fn refill(&mut self, c: &MemoryConfig, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let mcap = f64::from(c.moves_per_sec_max);
        let bcap = c.move_bytes_per_sec_max as f64;
        self.moves = (self.moves + mcap * dt).min(mcap);
        self.bytes = (self.bytes + bcap * dt).min(bcap);
    }

    /// Takes one move of `bytes` if the buckets allow it (an actor larger than a whole
    /// second's bytes moves when the bucket is full).
    fn take(&mut self, c: &MemoryConfig, bytes: u64) -> bool {
        let b = bytes as f64;
        let bcap = c.move_bytes_per_sec_max as f64;
        if self.moves < 1.0 || (self.bytes < b && self.bytes < bcap) {
            return false;
        }
        self.moves -= 1.0;
        self.bytes -= b;
        true
    }
}

/// One shard as the planner sees it.
pub(crate) struct ShardView {
    pub(crate) shard: ShardId,
    pub(crate) bytes: u64,
    pub(crate) candidates: Vec<ActorMemory>,
}

/// A move the planner chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedMove {
    pub(crate) actor: ActorId,
    pub(crate) from: ShardId,
    /// The shard of this node it goes to (unused when `to_node` is set).
    pub(crate) to: ShardId,
    /// Another node it goes to (`Engine::migrate_to_node`).
    pub(crate) to_node: Option<NodeId>,
    pub(crate) bytes: u64,
    /// Not a move: an idle durable activation deactivated (`to` = `from`).
    pub(crate) deactivate: bool,
}

/// Per candidate actor, the sampled messages it exchanges with actors on each shard of the
/// node (the locality sampler's edges, both directions), for [`VictimStrategy::Locality`].
#[derive(Debug, Default)]
pub(crate) struct Affinity {
    by_actor: HashMap<ActorId, Vec<(ShardId, f64)>>,
}

impl Affinity {
    /// Messages `actor` exchanges with actors on `shard`.
    pub(crate) fn with(&self, actor: &ActorId, shard: ShardId) -> f64 {
        self.by_actor
            .get(actor)
            .and_then(|v| v.iter().find(|(s, _)| *s == shard))
            .map_or(0.0, |(_, w)| *w)
    }

    /// Messages `actor` exchanges with actors on any shard of this node.
    fn total(&self, actor: &ActorId) -> f64 {
        self.by_actor
            .get(actor)
            .map_or(0.0, |v| v.iter().map(|(_, w)| w).sum())
    }

    /// Adds `w` messages between `actor` and an actor on `shard`.
    pub(crate) fn add(&mut self, actor: ActorId, shard: ShardId, w: f64) {
        let v = self.by_actor.entry(actor).or_default();
        match v.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, x)) => *x += w,
            None => v.push((shard, w)),
        }
    }

    /// Builds it from the edges of every shard (`samples[s]` is shard `s`'s: each edge's
    /// caller ran on `s`), for the actors in `candidates` (with their shard). A partner's
    /// shard is where it is a candidate, else where it last sent from, else `home(partner)`.
    pub(crate) fn from_edges(
        samples: &[Vec<(ActorId, ActorId, f64)>],
        candidates: &HashMap<ActorId, ShardId>,
        home: impl Fn(&ActorId) -> ShardId,
    ) -> Affinity {
        let mut at: HashMap<&ActorId, ShardId> = HashMap::new();
        for (s, edges) in samples.iter().enumerate() {
            for (from, _, _) in edges {
                at.entry(from).or_insert(s as ShardId);
            }
        }
        let loc = |a: &ActorId| -> ShardId {
            candidates
                .get(a)
                .copied()
                .or_else(|| at.get(a).copied())
                .unwrap_or_else(|| home(a))
        };
        let mut out = Affinity::default();
        for edges in samples {
            for (a, b, w) in edges {
                if a == b {
                    continue;
                }
                if candidates.contains_key(a) {
                    out.add(a.clone(), loc(b), *w);
                }
                if candidates.contains_key(b) {
                    out.add(b.clone(), loc(a), *w);
                }
            }
        }
        out
    }

    /// The locality `actor` loses moving from `from` to `to` (`None`: to another node, where
    /// it loses all of it): messages that were local and no longer are, less those that
    /// become local.
    fn lost(&self, actor: &ActorId, from: ShardId, to: Option<ShardId>) -> f64 {
        match to {
            Some(t) => self.with(actor, from) - self.with(actor, t),
            None => self.total(actor),
        }
    }
}

/// The moves that bring every shard at or over `critical` back under `warning`, to shards
/// that stay under `warning` with them, within the budget, skipping actors in their
/// cooldown. Pure but for the budget and the cooldown table it reads.
#[cfg(test)]
pub(crate) fn plan_moves(
    c: &MemoryConfig,
    views: &[ShardView],
    limit: u64,
    cooldown: &MoveCooldown,
    now: Instant,
    budget: &mut Budget,
) -> Vec<PlannedMove> {
    plan_moves_projected(c, views, limit, cooldown, now, budget, &Affinity::default()).0
}

/// Whether the policy deactivates `a` instead of moving it: durable and idle long enough.
fn deactivatable(c: &MemoryConfig, a: &ActorMemory) -> bool {
    c.deactivate_idle_durable
        && a.durable
        && a.bytes > 0
        && a.idle_ms
            .is_some_and(|ms| u128::from(ms) >= c.durable_idle.as_millis())
}

/// [`plan_moves`], and each shard's bytes once the plan is done. With
/// `deactivate_idle_durable`, a shard's idle durable activations are deactivated first (no
/// destination needed, no move budget taken), in the strategy's order; then it moves.
pub(crate) fn plan_moves_projected(
    c: &MemoryConfig,
    views: &[ShardView],
    limit: u64,
    cooldown: &MoveCooldown,
    now: Instant,
    budget: &mut Budget,
    affinity: &Affinity,
) -> (Vec<PlannedMove>, Vec<u64>) {
    budget.refill(c, now);
    let warn = (c.warning * limit as f64) as u64;
    let crit = (c.critical * limit as f64) as u64;
    let mut projected: Vec<u64> = views.iter().map(|v| v.bytes).collect();
    let mut order: Vec<usize> = (0..views.len()).filter(|i| projected[*i] >= crit).collect();
    order.sort_by(|a, b| projected[*b].cmp(&projected[*a]));
    let mut plan = Vec::new();
    for i in order {
        let v = &views[i];
        let mut dropped: Vec<&ActorMemory> = v
            .candidates
            .iter()
            .filter(|a| deactivatable(c, a) && cooldown.allows(&a.actor, now, c.cooldown))
            .collect();
        order_by_strategy(c, &mut dropped, affinity, v.shard, None);
        for a in dropped {
            if projected[i] < warn {
                break;
            }
            projected[i] = projected[i].saturating_sub(a.bytes);
            plan.push(PlannedMove {
                actor: a.actor.clone(),
                from: v.shard,
                to: v.shard,
                to_node: None,
                bytes: a.bytes,
                deactivate: true,
            });
        }
        let mut cands: Vec<&ActorMemory> = v
            .candidates
            .iter()
            .filter(|a| {
                a.movable
                    && a.bytes > 0
                    && !deactivatable(c, a)
                    && cooldown.allows(&a.actor, now, c.cooldown)
            })
            .collect();
        // The destination a candidate would take now (the strategy's order may depend on it).
        let room = |t: usize, bytes: u64, projected: &[u64]| t != i && projected[t] + bytes < warn;
        let dest_of = |a: &ActorMemory, projected: &[u64]| -> Option<usize> {
            let fits = (0..views.len()).filter(|t| room(*t, a.bytes, projected));
            match c.strategy {
                // The shard with room it talks to most (then the one with the most room).
                VictimStrategy::Locality => fits.max_by(|x, y| {
                    affinity
                        .with(&a.actor, views[*x].shard)
                        .total_cmp(&affinity.with(&a.actor, views[*y].shard))
                        .then(projected[*y].cmp(&projected[*x]))
                }),
                // The shard with the most room that stays under `warning` with the actor.
                _ => fits.min_by_key(|t| projected[*t]),
            }
        };
        if c.strategy == VictimStrategy::Locality {
            let best: HashMap<ActorId, ShardId> = cands
                .iter()
                .filter_map(|a| Some((a.actor.clone(), views[dest_of(a, &projected)?].shard)))
                .collect();
            cands.sort_by(|a, b| {
                let key = |x: &ActorMemory| {
                    let lost = affinity.lost(&x.actor, v.shard, best.get(&x.actor).copied());
                    (x.bytes as f64 / (1.0 + lost.max(0.0)), lost)
                };
                let (sa, la) = key(a);
                let (sb, lb) = key(b);
                sb.total_cmp(&sa)
                    .then(la.total_cmp(&lb))
                    .then(b.bytes.cmp(&a.bytes))
                    .then(a.actor.cmp(&b.actor))
            });
        } else {
            order_by_strategy(c, &mut cands, affinity, v.shard, None);
        }
        for a in cands {
            if projected[i] < warn {
                break;
            }
            let dest = dest_of(a, &projected);
            let Some(t) = dest else {
                continue; // too large for any shard's room; a smaller one may fit
            };
            if !budget.take(c, a.bytes) {
                return (plan, projected);
            }
            projected[i] = projected[i].saturating_sub(a.bytes);
            projected[t] += a.bytes;
            plan.push(PlannedMove {
                actor: a.actor.clone(),
                from: v.shard,
                to: views[t].shard,
                to_node: None,
                bytes: a.bytes,
                deactivate: false,
            });
        }
    }
    (plan, projected)
}

/// Moves to other nodes (after the node's own shards, [`plan_moves_projected`]): from each
/// shard still at or over `critical` once the in-node plan is done (`projected`), down to
/// `warning`; then, while the node's RSS is over its critical threshold, `node_need` bytes
/// of the node's largest activations. Only `migratable` (serializable) candidates, not in
/// `taken` nor in their cooldown; peers in turn (no peer's memory is known here: each peer's
/// own monitor keeps its shards in check). Within the same budget.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_node_moves(
    c: &MemoryConfig,
    views: &[ShardView],
    projected: &[u64],
    shard_limit: Option<u64>,
    mut node_need: u64,
    peers: &[NodeId],
    next_peer: &mut usize,
    cooldown: &MoveCooldown,
    now: Instant,
    budget: &mut Budget,
    taken: &HashSet<ActorId>,
    affinity: &Affinity,
) -> Vec<PlannedMove> {
    let mut plan = Vec::new();
    let mut chosen: HashSet<ActorId> = HashSet::new();
    // The node's RSS over critical: its idle durable activations (any shard) are dropped
    // first, as a shard over critical drops its own (`deactivate_idle_durable`): no peer
    // needed, no move budget taken; the largest first.
    if node_need > 0 {
        let mut idle: Vec<(ShardId, &ActorMemory)> = views
            .iter()
            .flat_map(|v| v.candidates.iter().map(move |a| (v.shard, a)))
            .filter(|(_, a)| {
                deactivatable(c, a)
                    && !taken.contains(&a.actor)
                    && cooldown.allows(&a.actor, now, c.cooldown)
            })
            .collect();
        idle.sort_by(|(_, a), (_, b)| b.bytes.cmp(&a.bytes).then(a.actor.cmp(&b.actor)));
        for (shard, a) in idle {
            if node_need == 0 {
                break;
            }
            chosen.insert(a.actor.clone());
            node_need = node_need.saturating_sub(a.bytes);
            plan.push(PlannedMove {
                actor: a.actor.clone(),
                from: shard,
                to: shard,
                to_node: None,
                bytes: a.bytes,
                deactivate: true,
            });
        }
    }
    if peers.is_empty() || !c.move_between_nodes {
        return plan;
    }
    let usable = |a: &&ActorMemory| {
        a.serializable
            && a.bytes > 0
            && !taken.contains(&a.actor)
            && cooldown.allows(&a.actor, now, c.cooldown)
    };
    let mut push = |a: &ActorMemory,
                    from: ShardId,
                    plan: &mut Vec<PlannedMove>,
                    budget: &mut Budget|
     -> bool {
        if !budget.take(c, a.bytes) {
            return false;
        }
        let to_node = peers[*next_peer % peers.len()];
        *next_peer += 1;
        plan.push(PlannedMove {
            actor: a.actor.clone(),
            from,
            to: from,
            to_node: Some(to_node),
            bytes: a.bytes,
            deactivate: false,
        });
        true
    };
    if let Some(limit) = shard_limit {
        let warn = (c.warning * limit as f64) as u64;
        let crit = (c.critical * limit as f64) as u64;
        for (i, v) in views.iter().enumerate() {
            let mut left = projected[i];
            if left < crit {
                continue;
            }
            let mut cands: Vec<&ActorMemory> = v.candidates.iter().filter(usable).collect();
            order_by_strategy(c, &mut cands, affinity, v.shard, Some(None));
            for a in cands {
                if left < warn {
                    break;
                }
                if !push(a, v.shard, &mut plan, budget) {
                    return plan;
                }
                chosen.insert(a.actor.clone());
                left = left.saturating_sub(a.bytes);
                node_need = node_need.saturating_sub(a.bytes);
            }
        }
    }
    if node_need > 0 {
        let mut all: Vec<(ShardId, &ActorMemory)> = views
            .iter()
            .flat_map(|v| {
                v.candidates
                    .iter()
                    .filter(usable)
                    .map(move |a| (v.shard, a))
            })
            .filter(|(_, a)| !chosen.contains(&a.actor))
            .collect();
        match c.strategy {
            // Bytes per unit of the node-local traffic it loses.
            VictimStrategy::Locality => all.sort_by(|(_, a), (_, b)| {
                let s = |x: &ActorMemory| x.bytes as f64 / (1.0 + affinity.total(&x.actor));
                s(b).total_cmp(&s(a)).then(a.actor.cmp(&b.actor))
            }),
            _ => all.sort_by_key(|(_, a)| std::cmp::Reverse(a.bytes)),
        }
        for (shard, a) in all {
            if node_need == 0 {
                break;
            }
            if !push(a, shard, &mut plan, budget) {
                return plan;
            }
            node_need = node_need.saturating_sub(a.bytes);
        }
    }
    plan
}

/// Sorts candidates in the strategy's order. For `locality`, `to` is the destination:
/// `Some(None)` another node (all local traffic is lost), `None` none (a deactivation: the
/// local traffic it has is lost, so the quietest first).
fn order_by_strategy(
    c: &MemoryConfig,
    cands: &mut [&ActorMemory],
    affinity: &Affinity,
    from: ShardId,
    to: Option<Option<ShardId>>,
) {
    match c.strategy {
        VictimStrategy::Locality => cands.sort_by(|a, b| {
            let score = |x: &ActorMemory| {
                let lost = match to {
                    Some(t) => affinity.lost(&x.actor, from, t),
                    None => affinity.total(&x.actor),
                };
                x.bytes as f64 / (1.0 + lost.max(0.0))
            };
            score(b).total_cmp(&score(a)).then(a.actor.cmp(&b.actor))
        }),
        VictimStrategy::Largest => cands.sort_by_key(|a| std::cmp::Reverse(a.bytes)),
        VictimStrategy::Lru => cands.sort_by(|a, b| {
            b.idle_ms
                .unwrap_or(0)
                .cmp(&a.idle_ms.unwrap_or(0))
                .then(b.bytes.cmp(&a.bytes))
        }),
    }
}

/// Bytes the node sheds to other nodes now: with its RSS as it will be `growth_lead` ahead
/// at `growth` bytes per second (never below the RSS now) at or over `critical`, what brings
/// that down to `warning`, less `credit` (bytes sent away lately whose pages have not left the
/// RSS yet); 0 otherwise.
pub(crate) fn node_need(
    c: &MemoryConfig,
    rss: Option<u64>,
    limit: Option<u64>,
    growth: f64,
    credit: u64,
) -> u64 {
    let (Some(r), Some(l)) = (rss, limit) else {
        return 0;
    };
    let ahead = r + (growth.max(0.0) * c.growth_lead.as_secs_f64()) as u64;
    if Level::of(ahead, Some(l), c) < Level::Critical {
        return 0;
    }
    let warn = (c.warning * l as f64) as u64;
    ahead.saturating_sub(warn).saturating_sub(credit)
}

/// The peers moves may go to now: the members of the live view that are up (a node that
/// joined through etcd after the start included; one draining, left or whose lease expired
/// excluded), or the configured peers when the node has no view.
fn peers_now(
    configured: &[NodeId],
    live: Option<&quark_placement::LiveMembers>,
    me: Option<NodeId>,
) -> Vec<NodeId> {
    match live {
        None => configured.to_vec(),
        Some(v) => v
            .members()
            .iter()
            .filter(|m| m.state == quark_placement::MemberState::Up && Some(m.id) != me)
            .map(|m| m.id)
            .collect(),
    }
}

fn run(
    c: MemoryConfig,
    engine: EngineSlot,
    cooldown: MoveCooldown,
    peers: Vec<NodeId>,
    state: Arc<Mutex<MonitorState>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    slots_out: Arc<Mutex<Vec<u32>>>,
) {
    let started = Instant::now();
    let mut budget = Budget::new(&c, started);
    let mut last_rss: Option<(Instant, u64)> = None;
    let mut warned_no_room = false;
    let mut next_peer = 0usize;
    // Bytes moved to other nodes lately: the RSS takes time to fall (or never falls, when the
    // allocator keeps the pages), so they count as shed for `OFF_NODE_CREDIT`.
    let mut off_node: VecDeque<(Instant, u64)> = VecDeque::new();
    loop {
        {
            let (flag, cv) = &*stop;
            let g = flag.lock().unwrap_or_else(|e| e.into_inner());
            let (g, _) = cv
                .wait_timeout_while(g, c.sample_interval, |stopped| !*stopped)
                .unwrap_or_else(|e| e.into_inner());
            if *g {
                return;
            }
        }
        let (stats, live_peers) = {
            let g = engine.lock().unwrap_or_else(|e| e.into_inner());
            match g.as_ref() {
                Some(e) => (
                    e.stats(),
                    peers_now(&peers, e.members().as_ref(), e.node_id()),
                ),
                None => return,
            }
        };
        let Ok(stats) = stats else {
            continue; // a shard did not answer in time: next sample
        };
        let now = Instant::now();
        let (limit, _) = node_limit(Some(&c));
        let rss = resident_bytes();
        let shard_lim = shard_limit(&c, limit, stats.len());
        let node_level = Level::of(rss.unwrap_or(0), limit, &c);
        let levels: Vec<Level> = stats
            .iter()
            .map(|s| Level::of(s.load.memory.shard_bytes, shard_lim, &c))
            .collect();
        *slots_out.lock().unwrap_or_else(|e| e.into_inner()) =
            stats.iter().map(|s| s.load.memory.slot).collect();
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let (Some(r), Some((t0, r0))) = (rss, last_rss) {
            let dt = now.saturating_duration_since(t0).as_secs_f64();
            if dt > 0.0 {
                let inst = (r as f64 - r0 as f64) / dt;
                st.growth_bytes_per_sec = 0.5 * st.growth_bytes_per_sec + 0.5 * inst;
            }
        }
        if let Some(r) = rss {
            last_rss = Some((now, r));
        }
        if node_level != st.node_level {
            log_level("node", None, node_level, rss.unwrap_or(0), limit);
        }
        st.refusing.resize(stats.len(), false);
        st.levels.resize(stats.len(), Level::Normal);
        for (i, s) in stats.iter().enumerate() {
            let level = levels[i];
            if level != st.levels[i] {
                log_level(
                    "shard",
                    Some(s.shard),
                    level,
                    s.load.memory.shard_bytes,
                    shard_lim,
                );
            }
            // Refuse at `reject`; admit again once back under `critical`.
            let refuse = level == Level::Reject
                || node_level == Level::Reject
                || (st.refusing[i] && (level >= Level::Critical || node_level >= Level::Critical));
            if refuse != st.refusing[i] && set_refuse_activations(s.load.memory.slot, refuse) {
                st.refusing[i] = refuse;
                if refuse {
                    tracing::warn!(shard = s.shard, "memory: refusing new activations");
                } else {
                    tracing::info!(shard = s.shard, "memory: admitting new activations again");
                }
            }
        }
        st.levels = levels;
        st.node_level = node_level;
        *state.lock().unwrap_or_else(|e| e.into_inner()) = st.clone();
        let views: Vec<ShardView> = stats
            .iter()
            .map(|s| ShardView {
                shard: s.shard,
                bytes: s.load.memory.shard_bytes,
                candidates: s.load.memory.candidates.clone(),
            })
            .collect();
        let pressed =
            st.levels.iter().any(|l| *l >= Level::Critical) || node_level >= Level::Critical;
        let affinity = if c.strategy == VictimStrategy::Locality && pressed {
            affinity_now(&engine, &views, &stats)
        } else {
            Affinity::default()
        };
        let (mut plan, projected) = match shard_lim {
            Some(limit_s) => {
                plan_moves_projected(&c, &views, limit_s, &cooldown, now, &mut budget, &affinity)
            }
            None => (Vec::new(), views.iter().map(|v| v.bytes).collect()),
        };
        // Then other nodes: what the node's shards could not take, and the node's own RSS.
        while off_node
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > OFF_NODE_CREDIT)
        {
            off_node.pop_front();
        }
        let credit: u64 = off_node.iter().map(|(_, b)| b).sum();
        let node_need = node_need(&c, rss, limit, st.growth_bytes_per_sec, credit);
        let taken: HashSet<ActorId> = plan.iter().map(|m| m.actor.clone()).collect();
        plan.extend(plan_node_moves(
            &c,
            &views,
            &projected,
            shard_lim,
            node_need,
            &live_peers,
            &mut next_peer,
            &cooldown,
            now,
            &mut budget,
            &taken,
            &affinity,
        ));
        let over = st.levels.iter().any(|l| *l >= Level::Critical) || node_need > 0;
        if over && plan.is_empty() && !warned_no_room {
            warned_no_room = true;
            tracing::warn!(peers = peers.len(), "memory: over a critical threshold and no activation can move (none movable, none fits on another shard of this node, and none migratable to another node)");
        }
        if plan.is_empty() {
            continue;
        }
        warned_no_room = false;
        for mv in plan {
            if mv.deactivate {
                let handle = {
                    let g = engine.lock().unwrap_or_else(|e| e.into_inner());
                    match g.as_ref() {
                        Some(e) => e.handle(),
                        None => return,
                    }
                };
                let asked = quark_shard::block_on(handle.deactivate(&mv.actor));
                let at = Instant::now();
                cooldown.moved(&mv.actor, at);
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                match asked {
                    Ok(quark_shard::Deactivation::Requested { .. }) => {
                        st.deactivations += 1;
                        tracing::info!(actor = %mv.actor, shard = mv.from, bytes = mv.bytes, "memory: deactivated an idle durable actor (its shard or the node over a critical threshold)");
                        if st.recent.len() >= RECENT_MAX {
                            st.recent.pop_front();
                        }
                        st.recent.push_back(RebalanceMove {
                            actor: mv.actor,
                            from: mv.from,
                            to: mv.to,
                            to_node: None,
                            bytes: mv.bytes,
                            at: at.saturating_duration_since(started),
                            deactivated: true,
                        });
                    }
                    Ok(_) => {} // it deactivated meanwhile
                    Err(e) => {
                        st.move_failures += 1;
                        tracing::debug!(actor = %mv.actor, error = %e, "memory: deactivation not asked");
                    }
                }
                continue;
            }
            let moved = {
                let g = engine.lock().unwrap_or_else(|e| e.into_inner());
                match (g.as_ref(), mv.to_node) {
                    (Some(e), None) => e.migrate(&mv.actor, mv.to),
                    (Some(e), Some(n)) => e.migrate_to_node(&mv.actor, n),
                    (None, _) => return,
                }
            };
            let at = Instant::now();
            cooldown.moved(&mv.actor, at);
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            match moved {
                Ok(_) => {
                    st.moves += 1;
                    st.moved_bytes += mv.bytes;
                    if mv.to_node.is_some() {
                        st.node_moves += 1;
                        off_node.push_back((at, mv.bytes));
                    }
                    tracing::info!(actor = %mv.actor, from = mv.from, to = mv.to, to_node = mv.to_node, bytes = mv.bytes, "memory: moved an actor off a shard or node over its critical threshold");
                    if st.recent.len() >= RECENT_MAX {
                        st.recent.pop_front();
                    }
                    st.recent.push_back(RebalanceMove {
                        actor: mv.actor,
                        from: mv.from,
                        to: mv.to,
                        to_node: mv.to_node,
                        bytes: mv.bytes,
                        at: at.saturating_duration_since(started),
                        deactivated: false,
                    });
                }
                Err(e) => {
                    st.move_failures += 1;
                    tracing::debug!(actor = %mv.actor, error = %e, "memory: move failed; the actor stays");
                }
            }
        }
    }
}

/// How long the monitor waits for the shards' edge samples.
const EDGES_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The locality sampler's edges now (read without decaying them: the locality rounds own the
/// decay), as an [`Affinity`] of the candidates. Empty when the sampler is off (no
/// `[locality]`) or a shard does not answer in time.
fn affinity_now(
    engine: &EngineSlot,
    views: &[ShardView],
    stats: &[quark_shard::ShardStatsSnapshot],
) -> Affinity {
    let Some(handle) = engine
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|e| e.handle())
    else {
        return Affinity::default();
    };
    let names: Vec<&'static str> = stats
        .first()
        .map(|s| s.load.types.iter().map(|t| t.type_name).collect())
        .unwrap_or_default();
    let (tx, rx) = std::sync::mpsc::channel();
    let shards = handle.shard_count();
    for s in 0..shards {
        let tx = tx.clone();
        // Detached: the answer comes through `tx` (dropped if the shard stopped).
        drop(handle.spawn_on(s, move || {
            let _ = tx.send((s, quark_shard::actor_edges_take(1.0)));
            std::future::ready(())
        }));
    }
    drop(tx);
    let deadline = Instant::now() + EDGES_WAIT;
    let mut samples: Vec<Vec<(ActorId, ActorId, f64)>> = vec![Vec::new(); usize::from(shards)];
    let id = |(t, key): quark_shard::ActorSlot| -> Option<ActorId> {
        Some(ActorId::new(names.get(usize::from(t)).copied()?, key))
    };
    for _ in 0..shards {
        let Ok((s, sample)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            return Affinity::default();
        };
        samples[usize::from(s)] = sample
            .edges
            .into_iter()
            .filter_map(|(a, b, w)| Some((id(a)?, id(b)?, w)))
            .collect();
    }
    let candidates: HashMap<ActorId, ShardId> = views
        .iter()
        .flat_map(|v| v.candidates.iter().map(move |a| (a.actor.clone(), v.shard)))
        .collect();
    Affinity::from_edges(&samples, &candidates, |a| handle.shard_of(a))
}

fn log_level(what: &str, shard: Option<ShardId>, level: Level, bytes: u64, limit: Option<u64>) {
    let limit = limit.unwrap_or(0);
    match level {
        Level::Normal => {
            tracing::info!(
                what,
                shard,
                bytes,
                limit,
                "memory: back under the warning threshold"
            )
        }
        Level::Warning => {
            tracing::warn!(
                what,
                shard,
                bytes,
                limit,
                "memory: over the warning threshold"
            )
        }
        Level::Critical => tracing::warn!(
            what,
            shard,
            bytes,
            limit,
            "memory: over the critical threshold: rebalancing"
        ),
        Level::Reject => tracing::error!(
            what,
            shard,
            bytes,
            limit,
            "memory: over the reject threshold: refusing new activations"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_go_to_the_members_up_now_not_the_start_time_peers() {
        use quark_placement::{LiveMembers, MemberState};
        // Started with peer 2; node 3 joined (etcd), node 2 then drains.
        let mut v = LiveMembers::new([1, 2]);
        assert!(v.insert(3, MemberState::Up, None));
        assert!(v.set(2, MemberState::Draining, None));
        assert_eq!(peers_now(&[2], Some(&v), Some(1)), vec![3]);
        // Without a view (no cluster engine): the configured peers.
        assert_eq!(peers_now(&[2], None, Some(1)), vec![2]);
    }

    fn actor(k: u64, bytes: u64, idle_ms: Option<u64>) -> ActorMemory {
        ActorMemory {
            actor: ActorId::new("t", k),
            bytes,
            deep: false,
            idle_ms,
            movable: true,
            serializable: true,
            durable: false,
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn moves_the_largest_off_a_critical_shard_until_under_warning_and_no_further() {
        let c = MemoryConfig::default(); // warning 0.8, critical 0.9
        let now = Instant::now();
        let mut b = Budget::new(&c, now);
        let views = vec![
            ShardView {
                shard: 0,
                bytes: 95 * MIB,
                candidates: vec![
                    actor(1, 10 * MIB, None),
                    actor(2, 5 * MIB, Some(10)),
                    actor(3, 20 * MIB, None),
                ],
            },
            ShardView {
                shard: 1,
                bytes: 10 * MIB,
                candidates: vec![],
            },
        ];
        let plan = plan_moves(&c, &views, 100 * MIB, &MoveCooldown::new(), now, &mut b);
        // 95 -> 75 MiB with the 20 MiB actor: under 80 MiB, done.
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!(plan[0].actor, ActorId::new("t", 3u64));
        assert_eq!((plan[0].from, plan[0].to), (0, 1));
        // LRU picks the idle one first.
        let c = MemoryConfig {
            strategy: VictimStrategy::Lru,
            ..MemoryConfig::default()
        };
        let plan = plan_moves(&c, &views, 100 * MIB, &MoveCooldown::new(), now, &mut b);
        assert_eq!(plan[0].actor, ActorId::new("t", 2u64));
    }

    #[test]
    fn no_move_under_critical_none_in_cooldown_none_past_the_budget() {
        let c = MemoryConfig {
            moves_per_sec_max: 2,
            ..MemoryConfig::default()
        };
        let now = Instant::now();
        let many: Vec<ActorMemory> = (0..10).map(|k| actor(k, MIB, None)).collect();
        let under = vec![
            ShardView {
                shard: 0,
                bytes: 85 * MIB,
                candidates: many.clone(),
            },
            ShardView {
                shard: 1,
                bytes: 0,
                candidates: vec![],
            },
        ];
        let mut b = Budget::new(&c, now);
        assert!(plan_moves(&c, &under, 100 * MIB, &MoveCooldown::new(), now, &mut b).is_empty());
        let over = vec![
            ShardView {
                shard: 0,
                bytes: 99 * MIB,
                candidates: many,
            },
            ShardView {
                shard: 1,
                bytes: 0,
                candidates: vec![],
            },
        ];
        let plan = plan_moves(&c, &over, 100 * MIB, &MoveCooldown::new(), now, &mut b);
        assert_eq!(plan.len(), 2, "2 moves per second at most: {plan:?}");
        // In cooldown: skipped.
        let cd = MoveCooldown::new();
        for k in 0..10u64 {
            cd.moved(&ActorId::new("t", k), now);
        }
        let mut b = Budget::new(&c, now);
        assert!(plan_moves(&c, &over, 100 * MIB, &cd, now, &mut b).is_empty());
    }

    #[test]
    fn a_destination_is_never_filled_past_warning() {
        let c = MemoryConfig::default();
        let now = Instant::now();
        let mut b = Budget::new(&c, now);
        let views = vec![
            ShardView {
                shard: 0,
                bytes: 95 * MIB,
                candidates: vec![actor(1, 30 * MIB, None)],
            },
            ShardView {
                shard: 1,
                bytes: 60 * MIB,
                candidates: vec![],
            },
        ];
        assert!(plan_moves(&c, &views, 100 * MIB, &MoveCooldown::new(), now, &mut b).is_empty());
    }

    #[test]
    fn a_fast_growing_node_sheds_before_it_crosses_critical() {
        let mut c = MemoryConfig::default(); // warning 0.8, critical 0.9
        let limit = Some(1000);
        // 850 now, growing 100/s: 1 s ahead 950, over critical: shed down to 800.
        assert_eq!(node_need(&c, Some(850), limit, 100.0, 0), 150);
        // Less what was sent away lately.
        assert_eq!(node_need(&c, Some(850), limit, 100.0, 100), 50);
        // Not growing fast enough to cross within the lead: nothing yet.
        assert_eq!(node_need(&c, Some(850), limit, 25.0, 0), 0);
        // Shrinking counts as no growth: the RSS now decides.
        assert_eq!(node_need(&c, Some(920), limit, -500.0, 0), 120);
        // Without the lead, only the RSS now.
        c.growth_lead = std::time::Duration::ZERO;
        assert_eq!(node_need(&c, Some(850), limit, 200.0, 0), 0);
        assert_eq!(node_need(&c, Some(900), limit, 200.0, 0), 100);
        // No limit, no RSS: nothing.
        assert_eq!(node_need(&c, Some(900), None, 200.0, 0), 0);
        assert_eq!(node_need(&c, None, limit, 200.0, 0), 0);
    }

    #[test]
    fn what_the_node_cannot_hold_goes_to_peers_in_turn_and_movable_only_types_stay() {
        let c = MemoryConfig::default();
        let now = Instant::now();
        let mut b = Budget::new(&c, now);
        let mut boxed = actor(9, 8 * MIB, None);
        boxed.serializable = false; // `movable` only: cannot leave the process
        let views = vec![
            ShardView {
                shard: 0,
                bytes: 99 * MIB,
                candidates: vec![
                    boxed,
                    actor(1, 8 * MIB, None),
                    actor(2, 8 * MIB, None),
                    actor(3, 8 * MIB, None),
                ],
            },
            ShardView {
                shard: 1,
                bytes: 99 * MIB,
                candidates: vec![],
            },
        ];
        let (local, projected) = plan_moves_projected(
            &c,
            &views,
            100 * MIB,
            &MoveCooldown::new(),
            now,
            &mut b,
            &Affinity::default(),
        );
        assert!(local.is_empty(), "no room on the node: {local:?}");
        let mut next = 0;
        let plan = plan_node_moves(
            &c,
            &views,
            &projected,
            Some(100 * MIB),
            0,
            &[2, 3],
            &mut next,
            &MoveCooldown::new(),
            now,
            &mut b,
            &HashSet::new(),
            &Affinity::default(),
        );
        // 99 -> under 80 MiB: three 8 MiB actors, to nodes 2, 3, 2; never the boxed one.
        assert_eq!(plan.len(), 3, "{plan:?}");
        assert_eq!(
            plan.iter().map(|m| m.to_node).collect::<Vec<_>>(),
            vec![Some(2), Some(3), Some(2)]
        );
        assert!(plan.iter().all(|m| m.actor != ActorId::new("t", 9u64)));
        // Without peers, or with moves between nodes off: nothing.
        assert!(plan_node_moves(
            &c,
            &views,
            &projected,
            Some(100 * MIB),
            0,
            &[],
            &mut next,
            &MoveCooldown::new(),
            now,
            &mut b,
            &HashSet::new(),
            &Affinity::default()
        )
        .is_empty());
        let off = MemoryConfig {
            move_between_nodes: false,
            ..MemoryConfig::default()
        };
        assert!(plan_node_moves(
            &off,
            &views,
            &projected,
            Some(100 * MIB),
            0,
            &[2],
            &mut next,
            &MoveCooldown::new(),
            now,
            &mut b,
            &HashSet::new(),
            &Affinity::default()
        )
        .is_empty());
    }

    #[test]
    fn idle_durable_actors_are_deactivated_first_and_busy_or_plain_ones_moved() {
        let c = MemoryConfig::default(); // durable_idle 1 s
        let now = Instant::now();
        let mut b = Budget::new(&c, now);
        let durable = |k, idle_ms| ActorMemory {
            durable: true,
            movable: false,
            serializable: false,
            ..actor(k, 10 * MIB, idle_ms)
        };
        let views = vec![
            ShardView {
                shard: 0,
                bytes: 95 * MIB,
                candidates: vec![
                    durable(1, Some(5_000)),
                    durable(2, Some(10)), // idle too briefly: not dropped
                    actor(3, 20 * MIB, None),
                    durable(4, Some(2_000)),
                ],
            },
            ShardView {
                shard: 1,
                bytes: 10 * MIB,
                candidates: vec![],
            },
        ];
        let plan = plan_moves(&c, &views, 100 * MIB, &MoveCooldown::new(), now, &mut b);
        // 95 -> 75 MiB by dropping actors 1 and 4 (no move, no destination needed).
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert!(plan
            .iter()
            .all(|m| m.deactivate && m.from == 0 && m.to == 0));
        let dropped: HashSet<ActorId> = plan.iter().map(|m| m.actor.clone()).collect();
        assert!(
            dropped.contains(&ActorId::new("t", 1u64))
                && dropped.contains(&ActorId::new("t", 4u64))
        );
        // With the policy off, the same shard moves its movable actor instead.
        let off = MemoryConfig {
            deactivate_idle_durable: false,
            ..MemoryConfig::default()
        };
        let plan = plan_moves(&off, &views, 100 * MIB, &MoveCooldown::new(), now, &mut b);
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(!plan[0].deactivate);
        assert_eq!(plan[0].actor, ActorId::new("t", 3u64));
    }

    #[test]
    fn a_node_over_its_rss_threshold_drops_idle_durable_actors_before_moving_any() {
        let c = MemoryConfig::default(); // durable_idle 1 s, moves between nodes on
        let now = Instant::now();
        let mut b = Budget::new(&c, now);
        let durable = |k, bytes, idle_ms| ActorMemory {
            durable: true,
            movable: false,
            serializable: false,
            ..actor(k, bytes, idle_ms)
        };
        let views = vec![
            ShardView {
                shard: 0,
                bytes: 40 * MIB,
                candidates: vec![
                    durable(1, 6 * MIB, Some(5_000)),
                    durable(2, 8 * MIB, Some(10)), // idle too briefly: kept
                    actor(3, 20 * MIB, None),
                ],
            },
            ShardView {
                shard: 1,
                bytes: 30 * MIB,
                candidates: vec![durable(4, 9 * MIB, Some(3_000)), actor(5, 4 * MIB, None)],
            },
        ];
        let projected: Vec<u64> = views.iter().map(|v| v.bytes).collect();
        let plan_for = |c: &MemoryConfig, need: u64, peers: &[NodeId], b: &mut Budget| {
            plan_node_moves(
                c,
                &views,
                &projected,
                None,
                need,
                peers,
                &mut 0,
                &MoveCooldown::new(),
                now,
                b,
                &HashSet::new(),
                &Affinity::default(),
            )
        };
        // 12 MiB needed: actor 4 (9 MiB, the largest idle durable one), then actor 1 (6 MiB)
        // are dropped; nothing moves, with or without peers.
        for peers in [&[][..], &[2u64][..]] {
            let plan = plan_for(&c, 12 * MIB, peers, &mut b);
            let got: Vec<(ActorId, bool, Option<NodeId>)> = plan
                .iter()
                .map(|m| (m.actor.clone(), m.deactivate, m.to_node))
                .collect();
            assert_eq!(
                got,
                vec![
                    (ActorId::new("t", 4u64), true, None),
                    (ActorId::new("t", 1u64), true, None)
                ],
                "peers {peers:?}"
            );
        }
        // 20 MiB needed with a peer: the two drops, then the rest moves to the peer.
        let plan = plan_for(&c, 20 * MIB, &[2], &mut b);
        assert_eq!(plan.iter().filter(|m| m.deactivate).count(), 2, "{plan:?}");
        assert!(plan
            .iter()
            .filter(|m| !m.deactivate)
            .all(|m| m.to_node == Some(2) && m.actor != ActorId::new("t", 2u64)));
        assert!(plan.iter().any(|m| !m.deactivate), "{plan:?}");
        // With the policy off, nothing is dropped: the node moves (with a peer) or waits.
        let off = MemoryConfig {
            deactivate_idle_durable: false,
            ..MemoryConfig::default()
        };
        assert!(plan_for(&off, 12 * MIB, &[], &mut b).is_empty());
        assert!(plan_for(&off, 12 * MIB, &[2], &mut b)
            .iter()
            .all(|m| !m.deactivate));
    }

    #[test]
    fn the_locality_strategy_moves_first_the_actor_whose_traffic_stays_local_at_its_destination() {
        let c = MemoryConfig {
            strategy: VictimStrategy::Locality,
            ..MemoryConfig::default()
        };
        let now = Instant::now();
        // Two actors of equal size on shard 0 (95 of 100 MiB: one 16 MiB move is enough).
        // Actor 1 talks to an actor on shard 2, actor 2 to one on its own shard 0.
        let views = vec![
            ShardView {
                shard: 0,
                bytes: 95 * MIB,
                candidates: vec![actor(1, 16 * MIB, None), actor(2, 16 * MIB, None)],
            },
            ShardView {
                shard: 1,
                bytes: 10 * MIB,
                candidates: vec![],
            },
            ShardView {
                shard: 2,
                bytes: 20 * MIB,
                candidates: vec![],
            },
        ];
        let partner_2 = ActorId::new("p", 20u64);
        let partner_0 = ActorId::new("p", 0u64);
        // Shard 2's sample: its partner sent to actor 1; shard 0's: actor 2 sent to its
        // partner, and that partner answered from shard 0.
        let samples = vec![
            vec![
                (ActorId::new("t", 2u64), partner_0.clone(), 50.0),
                (partner_0.clone(), ActorId::new("t", 2u64), 50.0),
            ],
            vec![],
            vec![(partner_2.clone(), ActorId::new("t", 1u64), 80.0)],
        ];
        let cands: HashMap<ActorId, ShardId> = [1u64, 2]
            .into_iter()
            .map(|k| (ActorId::new("t", k), 0))
            .collect();
        let aff = Affinity::from_edges(&samples, &cands, |_| 1);
        assert_eq!(aff.with(&ActorId::new("t", 1u64), 2), 80.0);
        assert_eq!(aff.with(&ActorId::new("t", 2u64), 0), 100.0);
        let mut b = Budget::new(&c, now);
        let (plan, _) = plan_moves_projected(
            &c,
            &views,
            100 * MIB,
            &MoveCooldown::new(),
            now,
            &mut b,
            &aff,
        );
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!(plan[0].actor, ActorId::new("t", 1u64), "{plan:?}");
        assert_eq!(
            plan[0].to, 2,
            "to the shard it talks to, not the emptiest: {plan:?}"
        );
        // `largest` (equal sizes: by id here) would have taken actor 1 to the emptiest shard;
        // with the traffic the other way round, locality takes actor 2 first.
        let swapped = vec![
            vec![(partner_0.clone(), ActorId::new("t", 1u64), 100.0)],
            vec![],
            vec![(partner_2, ActorId::new("t", 2u64), 80.0)],
        ];
        let aff = Affinity::from_edges(&swapped, &cands, |_| 1);
        let mut b = Budget::new(&c, now);
        let (plan, _) = plan_moves_projected(
            &c,
            &views,
            100 * MIB,
            &MoveCooldown::new(),
            now,
            &mut b,
            &aff,
        );
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!(plan[0].actor, ActorId::new("t", 2u64), "{plan:?}");
        assert_eq!(plan[0].to, 2);
        // Without edges (no `[locality]`): bytes decide, to the shard with the most room.
        let mut b = Budget::new(&c, now);
        let (plan, _) = plan_moves_projected(
            &c,
            &views,
            100 * MIB,
            &MoveCooldown::new(),
            now,
            &mut b,
            &Affinity::default(),
        );
        assert_eq!(plan[0].to, 1, "{plan:?}");
    }
}
