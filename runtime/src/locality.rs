//! Locality-aware repartitioning of one node (issue 19; docs/LOCALITY.md): periodic rounds
//! that gather the shards' sampled actor-to-actor edges, run the decision code of
//! [`quark_placement::locality`] and apply its moves between the node's shards through
//! [`quark_shard::Engine::migrate`].
//!
//! Off by default (`[locality] enabled = false`). When on, each shard keeps a Space-Saving
//! sketch of the edges of its sampled turns (one turn in 64; `top_k` edges); a thread of the
//! node (`quark-locality`) runs a round every `interval_ms` (plus up to `jitter_ms`), and
//! [`crate::Node::locality_round`] runs one at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quark_placement::locality::{
    ActorPlace, Load, Location, Repartitioner, RoundConfig, RoundInput,
};
use quark_shard::{ActorId, EngineHandle, MigrateError, ShardId, StatsError};

use crate::admin::EngineSlot;
use crate::config::MemoryConfig;
use crate::memory::MoveCooldown;

/// The decay of the shards' sketches per round: an edge's weight halves every round it is
/// not seen again, so a round sees the last few intervals' traffic, the last one most.
pub const DECAY_PER_ROUND: f64 = 0.5;

/// The `[locality]` settings (docs/CONFIG.md, docs/LOCALITY.md).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LocalityConfig {
    /// Sample actor-to-actor edges and run rounds (default `false`).
    pub enabled: bool,
    /// Time between two rounds (default 10 s).
    pub interval: Duration,
    /// Each wait is `interval` plus a pseudo-random part of up to this (default 1 s), so that
    /// the nodes of a cluster do not run their rounds in step.
    pub jitter: Duration,
    /// An actor moved is left alone this long (rounded up to whole rounds; doubled for each
    /// further move that comes soon after; default 60 s).
    pub cooldown: Duration,
    /// Edges (and actors) each shard keeps (Space-Saving K; default 1024).
    pub top_k: usize,
    /// Each shard's live activations stay within the mean ± this fraction (default 0.1).
    pub balance_tolerance: f64,
    /// Moves per round, at most (default 64).
    pub max_moves_per_round: usize,
    /// The zone of each node (`[locality.zones]`: node id → zone name; default none): a hop
    /// between zones costs more than one between nodes of a zone (same shard > same node >
    /// same zone). Until the member view carries each node's zone, this table is where the
    /// rounds learn it; nodes not listed share one unnamed zone.
    pub zones: BTreeMap<u64, String>,
}

impl Default for LocalityConfig {
    fn default() -> Self {
        LocalityConfig {
            enabled: false,
            interval: Duration::from_secs(10),
            jitter: Duration::from_secs(1),
            cooldown: Duration::from_secs(60),
            top_k: 1024,
            balance_tolerance: 0.1,
            max_moves_per_round: 64,
            zones: BTreeMap::new(),
        }
    }
}

impl LocalityConfig {
    /// The decision code's settings for this node (moves between its shards only; the zones
    /// numbered from 1 in name order, 0 for the nodes not listed).
    pub fn round_config(&self) -> RoundConfig {
        let interval_ms = self.interval.as_millis().max(1);
        RoundConfig {
            balance_tolerance: self.balance_tolerance,
            max_moves: self.max_moves_per_round,
            cooldown_rounds: u64::try_from(self.cooldown.as_millis().div_ceil(interval_ms))
                .unwrap_or(u64::MAX),
            across_nodes: false,
            sample_weight: quark_shard::TURN_SAMPLE_EVERY as f64,
            zones: zone_numbers(&self.zones),
            ..RoundConfig::default()
        }
    }
}

/// The decision code's node → zone map: each zone name numbered from 1 in name order (0 is the
/// zone of the nodes not listed).
pub(crate) fn zone_numbers(zones: &BTreeMap<u64, String>) -> BTreeMap<u64, u32> {
    let names: BTreeSet<&str> = zones.values().map(String::as_str).collect();
    let number = |z: &str| {
        names
            .iter()
            .position(|n| *n == z)
            .map_or(0, |i| i as u32 + 1)
    };
    zones.iter().map(|(node, z)| (*node, number(z))).collect()
}

/// Why a round did not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalityError {
    /// `[locality] enabled` is false: the shards do not sample actor edges.
    #[error("locality-aware repartitioning is off: set [locality] enabled = true")]
    NotEnabled,
    /// A shard did not hand its edges over within a second (stopped, or stuck in a handler
    /// that blocks its thread).
    #[error("shard {shard} did not hand its sampled edges over within 1 s (stopped or stuck)")]
    ShardStopped {
        /// The shard.
        shard: ShardId,
    },
    /// The shards' counters could not be read.
    #[error(transparent)]
    Stats(#[from] StatsError),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// One move a round made (or tried).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityMove {
    /// The actor.
    pub actor: ActorId,
    /// The shard it lived on.
    pub from: ShardId,
    /// The shard it was moved to.
    pub to: ShardId,
    /// Expected messages per interval no longer crossing shards (estimated from the sampled
    /// edges; negative for the other half of an exchange that costs a little).
    pub saved_cross_shard: f64,
    /// The move did not happen: why.
    pub error: Option<MigrateError>,
}

/// What one round saw and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalityRound {
    /// The round's number (from 1).
    pub round: u64,
    /// Actor-to-actor edges gathered from the shards.
    pub edges: usize,
    /// Actors of this node the round reasoned about.
    pub actors: usize,
    /// Actors skipped as anchored (their traffic mostly local already).
    pub anchored: usize,
    /// Actors skipped as cooling down after a move.
    pub cooling: usize,
    /// The moves, in order.
    pub moves: Vec<LocalityMove>,
    /// The heaviest actor-to-actor edges the round saw (at most [`TOP_PAIRS`]), heaviest
    /// first, with where each end ran when the round looked: the communication graph per
    /// actor pair (the per shard and per node pairs are counted exactly in the shards'
    /// stats: `LoadSnapshot::to_shards` / `to_nodes`).
    pub top_pairs: Vec<LocalityPair>,
}

/// Actor pairs kept in [`LocalityRound::top_pairs`].
pub const TOP_PAIRS: usize = 20;

/// One actor-to-actor edge of [`LocalityRound::top_pairs`].
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityPair {
    /// The sending actor.
    pub from: ActorId,
    /// The receiving actor.
    pub to: ActorId,
    /// Estimated messages from `from` to `to`: the sampled sends times the sampling rate,
    /// summed over the rounds with a weight halved each round (about twice the messages of
    /// one interval on a steady workload).
    pub messages_est: f64,
    /// The shard `from` ran on (`None`: not on this node, or not active).
    pub from_shard: Option<ShardId>,
    /// The shard `to` ran on (as `from_shard`).
    pub to_shard: Option<ShardId>,
}

/// The repartitioner's counters since the node started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalityStats {
    /// Rounds run.
    pub rounds: u64,
    /// Moves made.
    pub moves: u64,
    /// Moves refused by the engine (busy, not migratable, deadline).
    pub moves_failed: u64,
    /// Moves a round decided but did not make because another mover of the node (the memory
    /// monitor) had moved the actor within `cooldown` (docs/LOCALITY.md).
    pub moves_skipped_cooldown: u64,
    /// Moves a round decided but did not make because the destination shard was at or over
    /// its memory warning level (`[memory]`; docs/LOCALITY.md, "With memory rebalancing").
    pub moves_skipped_memory: u64,
    /// The last round.
    pub last_round: Option<LocalityRound>,
}

struct State {
    repartitioner: Repartitioner<ActorId>,
    /// Types the engine refused to move (`NotMigratable`: no mover, or stateless workers).
    immovable: BTreeSet<&'static str>,
    stats: LocalityStats,
}

/// The node's repartitioner: its state, and the thread running the periodic rounds.
pub(crate) struct Locality {
    state: Arc<Mutex<State>>,
    slot: EngineSlot,
    handle: EngineHandle,
    node_id: u64,
    /// The node's per-actor move cooldown, shared with the memory monitor: a round neither
    /// moves an actor another mover moved within `cooldown`, nor lets them undo its moves.
    moves: MoveCooldown,
    /// The `[memory]` thresholds: a round moves nothing onto a shard at or over its memory
    /// warning level (`None`: no `[memory]`, no such check).
    memory: Option<MemoryConfig>,
    cooldown: Duration,
    top_k: usize,
    stop: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Locality {
    /// Turns the shards' edge sampling on and starts the rounds' thread.
    pub(crate) fn start(
        cfg: &LocalityConfig,
        slot: EngineSlot,
        handle: EngineHandle,
        node_id: u64,
        moves: MoveCooldown,
        memory: Option<MemoryConfig>,
    ) -> Result<Locality, LocalityError> {
        let top_k = cfg.top_k;
        on_every_shard(&handle, move || quark_shard::actor_edges_enable(top_k))?;
        let state = Arc::new(Mutex::new(State {
            repartitioner: Repartitioner::new(cfg.round_config()),
            immovable: BTreeSet::new(),
            stats: LocalityStats::default(),
        }));
        let mut me = Locality {
            state,
            slot,
            handle,
            node_id,
            moves,
            memory,
            cooldown: cfg.cooldown,
            top_k,
            stop: None,
            thread: None,
        };
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let worker = me.clone_for_thread();
        let (interval, jitter) = (cfg.interval, cfg.jitter);
        let thread = std::thread::Builder::new()
            .name("quark-locality".into())
            .spawn(move || {
                let mut n: u64 = 0;
                loop {
                    n += 1;
                    let wait = interval + jitter_of(node_id, n, jitter);
                    match rx.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if let Err(e) = worker.round() {
                        tracing::warn!(error = %e, "locality round failed");
                    }
                }
            });
        match thread {
            Ok(t) => {
                me.stop = Some(tx);
                me.thread = Some(t);
            }
            // No thread: rounds still run on demand (`Node::locality_round`).
            Err(e) => tracing::error!(error = %e, "cannot start the quark-locality thread"),
        }
        Ok(me)
    }

    fn clone_for_thread(&self) -> Locality {
        Locality {
            state: self.state.clone(),
            slot: self.slot.clone(),
            handle: self.handle.clone(),
            node_id: self.node_id,
            moves: self.moves.clone(),
            memory: self.memory.clone(),
            cooldown: self.cooldown,
            top_k: self.top_k,
            stop: None,
            thread: None,
        }
    }

    /// The counters.
    pub(crate) fn stats(&self) -> LocalityStats {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats
            .clone()
    }

    /// A reader of the counters for the admin endpoint (valid as long as the node runs).
    pub(crate) fn stats_reader(&self) -> crate::admin::LocalityReader {
        let state = self.state.clone();
        Arc::new(move || {
            state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .stats
                .clone()
        })
    }

    /// Counts a move made by someone else (the memory rebalancer, an operator) in the actor's
    /// cooldown, so that the rounds leave it alone for a while.
    pub(crate) fn note_moved(&self, actor: ActorId) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .repartitioner
            .note_moved(actor);
    }

    /// Stops the rounds' thread (waits for a round under way) and the shards' sampling.
    pub(crate) fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.try_send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = on_every_shard(&self.handle, quark_shard::actor_edges_disable);
    }

    /// Runs one round now: gathers, decides, moves. Blocks; never call it on a shard thread.
    pub(crate) fn round(&self) -> Result<LocalityRound, LocalityError> {
        // One round at a time (the periodic thread and callers of `Node::locality_round`).
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let samples = on_every_shard(&self.handle, || {
            quark_shard::actor_edges_take(DECAY_PER_ROUND)
        })?;
        let stats = {
            let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.as_ref().ok_or(LocalityError::ShuttingDown)?.stats()?
        };
        let names: Vec<&'static str> = stats
            .first()
            .map(|s| s.load.types.iter().map(|t| t.type_name).collect())
            .unwrap_or_default();
        let id = |(t, key): quark_shard::ActorSlot| -> Option<ActorId> {
            Some(ActorId::new(names.get(usize::from(t)).copied()?, key))
        };
        let mut edges: Vec<(ActorId, ActorId, f64)> = Vec::new();
        let mut traffic: HashMap<ActorId, f64> = HashMap::new();
        for s in samples {
            for (a, b, w) in s.edges {
                if let (Some(a), Some(b)) = (id(a), id(b)) {
                    edges.push((a, b, w));
                }
            }
            for (a, w) in s.traffic {
                if let Some(a) = id(a) {
                    *traffic.entry(a).or_default() += w;
                }
            }
        }
        // The actors of the heaviest edges, at most 4 K (one placement query each).
        edges.sort_by(|x, y| {
            y.2.total_cmp(&x.2)
                .then_with(|| (&x.0, &x.1).cmp(&(&y.0, &y.1)))
        });
        let mut wanted: BTreeMap<ActorId, ()> = BTreeMap::new();
        for (a, b, _) in &edges {
            if wanted.len() >= 4 * self.top_k {
                break;
            }
            wanted.insert(a.clone(), ());
            wanted.insert(b.clone(), ());
        }
        let at = |shard: ShardId| Location {
            zone: 0,
            node: self.node_id,
            shard,
        };
        let mut actors: HashMap<ActorId, ActorPlace> = HashMap::new();
        {
            let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            let engine = slot.as_ref().ok_or(LocalityError::ShuttingDown)?;
            for a in wanted.into_keys() {
                // Actors of other nodes (`OtherNode`) and unknown types are left out.
                let Ok(p) = engine.placement(&a) else {
                    continue;
                };
                if engine.node_id().is_some_and(|n| n != p.node) {
                    continue;
                }
                let movable = !p.moving && !state.immovable.contains(a.type_name);
                let place = ActorPlace {
                    location: at(p.shard),
                    home: Some(at(p.home)),
                    movable,
                    memory_bytes: 0,
                    traffic: traffic.get(&a).copied().unwrap_or(0.0),
                };
                actors.insert(a, place);
            }
        }
        let loads: BTreeMap<Location, Load> = stats
            .iter()
            .map(|s| {
                (
                    at(s.shard),
                    Load {
                        activations: s.live_activations,
                        memory_bytes: None,
                    },
                )
            })
            .collect();
        let report = state.repartitioner.round(&RoundInput {
            edges: &edges,
            actors: &actors,
            loads: &loads,
        });
        let shard_of = |a: &ActorId| actors.get(a).map(|p| p.location.shard);
        let top_pairs = edges
            .iter()
            .take(TOP_PAIRS)
            .map(|(a, b, w)| LocalityPair {
                from: a.clone(),
                to: b.clone(),
                messages_est: *w,
                from_shard: shard_of(a),
                to_shard: shard_of(b),
            })
            .collect();
        let mut round = LocalityRound {
            round: report.round,
            edges: edges.len(),
            actors: actors.len(),
            anchored: report.anchored,
            cooling: report.cooling,
            moves: Vec::new(),
            top_pairs,
        };
        // A shard takes no actor that would bring it to its memory warning level (the memory
        // monitor moves actors off such shards; a round must not fill them again), counting
        // the round's own moves as it goes.
        let mut room = self.memory.as_ref().map(|c| MemoryRoom::new(c, &stats));
        for m in report.moves {
            let now = Instant::now();
            let size = room.as_ref().map_or(0, |r| r.size(&m.actor));
            if room.as_ref().is_some_and(|r| !r.fits(m.to.shard, size)) {
                tracing::info!(
                    actor = %m.actor,
                    to = m.to.shard,
                    bytes = size,
                    "locality: move not made: the destination shard would be at its memory warning level"
                );
                state.stats.moves_skipped_memory += 1;
                continue;
            }
            if !self.moves.allows(&m.actor, now, self.cooldown) {
                // Another mover (the memory monitor) moved it recently: leave it where it is
                // and count the move in its cooldown here too.
                tracing::debug!(actor = %m.actor, "locality: moved recently by another mover");
                state.repartitioner.note_moved(m.actor.clone());
                state.stats.moves_skipped_cooldown += 1;
                continue;
            }
            let outcome = {
                let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
                let engine = slot.as_ref().ok_or(LocalityError::ShuttingDown)?;
                engine.migrate(&m.actor, m.to.shard)
            };
            let error = match outcome {
                Ok(_) => {
                    self.moves.moved(&m.actor, now);
                    if let Some(r) = room.as_mut() {
                        r.moved(m.from.shard, m.to.shard, size);
                    }
                    tracing::info!(
                        actor = %m.actor,
                        from = m.from.shard,
                        to = m.to.shard,
                        saved_cross_shard = m.saved_cross_shard,
                        exchange_with = ?m.exchange_with.as_ref().map(ToString::to_string),
                        "locality: actor moved"
                    );
                    state.stats.moves += 1;
                    None
                }
                Err(e) => {
                    if matches!(e, MigrateError::NotMigratable { .. }) {
                        state.immovable.insert(m.actor.type_name);
                    }
                    tracing::debug!(actor = %m.actor, error = %e, "locality: move not made");
                    state.stats.moves_failed += 1;
                    Some(e)
                }
            };
            round.moves.push(LocalityMove {
                actor: m.actor,
                from: m.from.shard,
                to: m.to.shard,
                saved_cross_shard: m.saved_cross_shard,
                error,
            });
        }
        state.stats.rounds += 1;
        state.stats.last_round = Some(round.clone());
        Ok(round)
    }
}

/// The shards' memory against their warning level, for one round: their counted bytes at
/// the round's start, updated by the round's own moves, and the sizes of the actors the
/// shards list (their largest and their move candidates; an actor not listed counts 0).
struct MemoryRoom {
    bytes: Vec<u64>,
    /// `warning` times the shard's limit (`None`: no limit known, always room).
    warn_at: Vec<Option<f64>>,
    sizes: HashMap<ActorId, u64>,
}

impl MemoryRoom {
    fn new(c: &MemoryConfig, stats: &[quark_shard::ShardStatsSnapshot]) -> MemoryRoom {
        let r = crate::memory::report(Some(c), stats, None);
        let sizes = stats
            .iter()
            .flat_map(|s| s.load.memory.top.iter().chain(&s.load.memory.candidates))
            .map(|a| (a.actor.clone(), a.bytes))
            .collect();
        MemoryRoom {
            bytes: r.shards.iter().map(|s| s.memory.shard_bytes).collect(),
            warn_at: r
                .shards
                .iter()
                .map(|s| s.limit_bytes.map(|l| c.warning * l as f64))
                .collect(),
            sizes,
        }
    }

    fn size(&self, actor: &ActorId) -> u64 {
        self.sizes.get(actor).copied().unwrap_or(0)
    }

    /// `shard` stays under its warning level with `size` more bytes (the level is reached at
    /// `bytes >= warning * limit`, as `Level::of`).
    fn fits(&self, shard: ShardId, size: u64) -> bool {
        let i = usize::from(shard);
        match self.warn_at.get(i).copied().flatten() {
            Some(at) => ((self.bytes.get(i).copied().unwrap_or(0) + size) as f64) < at,
            None => true,
        }
    }

    fn moved(&mut self, from: ShardId, to: ShardId, size: u64) {
        if let Some(b) = self.bytes.get_mut(usize::from(from)) {
            *b = b.saturating_sub(size);
        }
        if let Some(b) = self.bytes.get_mut(usize::from(to)) {
            *b += size;
        }
    }
}

/// How long a round waits for the shards to hand their edges over (a shard stuck in a
/// handler that blocks its thread does not hold the round, nor the node's shutdown, forever).
const SHARD_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Runs `f` on every shard's thread and collects what it returns, in shard order; waits at
/// most [`SHARD_ANSWER_WAIT`] in all.
fn on_every_shard<T: Send + 'static>(
    handle: &EngineHandle,
    f: impl Fn() -> T + Send + Clone + 'static,
) -> Result<Vec<T>, LocalityError> {
    let shards = handle.shard_count();
    let (tx, rx) = mpsc::channel();
    for s in 0..shards {
        let (tx, f) = (tx.clone(), f.clone());
        // Detached: the answer comes through `tx` (a dropped `tx`: the shard stopped).
        drop(handle.spawn_on(s, move || {
            let _ = tx.send((s, f()));
            std::future::ready(())
        }));
    }
    drop(tx);
    let deadline = std::time::Instant::now() + SHARD_ANSWER_WAIT;
    let mut got: Vec<Option<T>> = (0..shards).map(|_| None).collect();
    for _ in 0..shards {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((s, v)) => got[usize::from(s)] = Some(v),
            Err(_) => break,
        }
    }
    got.into_iter()
        .enumerate()
        .map(|(s, v)| {
            v.ok_or(LocalityError::ShardStopped {
                shard: s as ShardId,
            })
        })
        .collect()
}

/// The pseudo-random part of the `n`-th wait (splitmix64 of the node id and `n`).
fn jitter_of(node_id: u64, n: u64, jitter: Duration) -> Duration {
    let max = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    if max == 0 {
        return Duration::ZERO;
    }
    let mut z = node_id
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(n.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    Duration::from_millis((z ^ (z >> 31)) % (max + 1))
}
