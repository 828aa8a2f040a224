//! One repartitioning round: from the communication graph, the actors' places and the loads of
//! the places, the moves that cut the most cross-node, then cross-shard, traffic under a
//! balance constraint (pairwise exchanges where a lone move would break the balance).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Where an activation runs: its zone (a topology label from the configuration), node and
/// shard. Ordered by zone, node, shard (the tie-break order of the decisions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// Zone label (`0` when the topology has none).
    pub zone: u32,
    /// Node id.
    pub node: u64,
    /// Shard of that node.
    pub shard: u16,
}

/// The cost of one message between two places: `0` on the same shard, `shard` between shards
/// of one node, `node` between nodes of one zone, `zone` between zones. The defaults (1, 10,
/// 30) weigh a network hop (tens of µs) against a ring hop (~1 µs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Costs {
    /// Between two shards of one node.
    pub shard: f64,
    /// Between two nodes of one zone.
    pub node: f64,
    /// Between two zones.
    pub zone: f64,
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            shard: 1.0,
            node: 10.0,
            zone: 30.0,
        }
    }
}

impl Costs {
    /// The cost of one message from `a` to `b`.
    pub fn between(&self, a: Location, b: Location) -> f64 {
        if a.zone != b.zone {
            self.zone
        } else if a.node != b.node {
            self.node
        } else if a.shard != b.shard {
            self.shard
        } else {
            0.0
        }
    }
}

/// The knobs of a round (see docs/LOCALITY.md).
#[derive(Clone, Debug, PartialEq)]
pub struct RoundConfig {
    /// Each place's load must stay within `mean × (1 ± balance_tolerance)` (at least ± 1
    /// activation); a move that would leave that band is made only as one half of an exchange.
    /// A move that narrows the gap between an over-loaded and an under-loaded place is allowed.
    pub balance_tolerance: f64,
    /// Moves per round, at most (an exchange counts two).
    pub max_moves: usize,
    /// Rounds an actor is left alone after it moved; doubled (up to 64 times) for each further
    /// move that comes within twice the previous cooldown.
    pub cooldown_rounds: u64,
    /// An actor with at least this fraction of its traffic on its own shard is anchored: not
    /// considered this round.
    pub anchor_local_fraction: f64,
    /// Hysteresis: a move is proposed only if its gain is at least this fraction of the
    /// actor's traffic times the cost of the hop it makes (so noise never moves an actor, and
    /// a move never undoes the previous one for a gain of nothing).
    pub min_gain_fraction: f64,
    /// Moves between nodes are allowed (else only between shards of the actor's node).
    pub across_nodes: bool,
    /// What one sample of the edges weighs (the engine samples one turn in 64 and counts a
    /// sampled message as 64: 64). With `min_samples_z`, a move must also save more than the
    /// noise of the sampling: `min_samples_z × sqrt(traffic × sample_weight)` (a Poisson
    /// count's standard deviation), so that a few samples spread at random over partners
    /// never move an actor.
    pub sample_weight: f64,
    /// See `sample_weight` (0: no noise bound).
    pub min_samples_z: f64,
    /// Groups: an edge whose weight is at least this fraction of the lighter end's traffic
    /// binds its two actors into a group (a community, a pair, a pipeline), which may move to
    /// one place as a whole; 0 disables group moves.
    pub group_edge_fraction: f64,
    /// Groups larger than this are not moved as a whole (their actors still move one by one).
    pub group_size_max: usize,
    /// Message costs by distance.
    pub costs: Costs,
    /// The zone of each node (a topology label from the configuration, as a number): a
    /// location on a node listed here is in that zone, whatever its `Location::zone` says;
    /// other nodes keep theirs. Empty: the locations' own zones. With zones, the preference
    /// is same shard > same node > same zone ([`Costs::zone`] for a hop between zones).
    pub zones: BTreeMap<u64, u32>,
}

impl RoundConfig {
    /// `l` with its node's zone from [`RoundConfig::zones`].
    pub fn zoned(&self, l: Location) -> Location {
        match self.zones.get(&l.node) {
            Some(&zone) => Location { zone, ..l },
            None => l,
        }
    }
}

impl Default for RoundConfig {
    fn default() -> Self {
        RoundConfig {
            balance_tolerance: 0.1,
            max_moves: 256,
            cooldown_rounds: 5,
            anchor_local_fraction: 0.75,
            min_gain_fraction: 0.25,
            across_nodes: true,
            sample_weight: 1.0,
            min_samples_z: 3.0,
            group_edge_fraction: 0.2,
            group_size_max: 128,
            costs: Costs::default(),
            zones: BTreeMap::new(),
        }
    }
}

/// The load of one place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Live activations.
    pub activations: u64,
    /// Memory of its actors' states, bytes, if known (balanced as well when every place has
    /// it).
    pub memory_bytes: Option<u64>,
}

/// What the round knows of one actor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActorPlace {
    /// Where it runs now.
    pub location: Location,
    /// Where messages to it are routed first, if they are (an engine whose senders address an
    /// actor's home, which forwards to where it lives: a message to it then costs the hop to
    /// its home plus the hop from its home to its place). `None`: messages go straight to its
    /// place.
    pub home: Option<Location>,
    /// It may move (false: immovable types, stateless workers, actors of other nodes).
    pub movable: bool,
    /// Its state's size, bytes (0 if unknown).
    pub memory_bytes: u64,
    /// All its traffic (sent and received), in the edges' units, if known: the edges kept
    /// are only the heaviest, and an actor whose traffic is spread over many partners (none
    /// of them heavy) must not look as if its few kept edges were all it does. `0.0`: the
    /// sum of its kept edges.
    pub traffic: f64,
}

/// One proposed move, with why.
#[derive(Clone, Debug, PartialEq)]
pub struct Move<A> {
    /// The actor.
    pub actor: A,
    /// From.
    pub from: Location,
    /// To.
    pub to: Location,
    /// Cost saved (messages × [`Costs`]) per unit of the edge weights.
    pub gain: f64,
    /// Expected messages (in edge-weight units) no longer crossing nodes.
    pub saved_cross_node: f64,
    /// Expected messages no longer crossing shards of one node (negative: more cross-shard
    /// traffic, traded for less cross-node traffic).
    pub saved_cross_shard: f64,
    /// Expected messages no longer crossing zones (of those no longer crossing nodes).
    pub saved_cross_zone: f64,
    /// The other half of a pairwise exchange (it moves from `to` to `from`), if any.
    pub exchange_with: Option<A>,
    /// The group it moved with (named by the group's first actor), if it moved as part of a
    /// group: its own `gain` may then be negative, the group's is not.
    pub group: Option<A>,
}

/// What a round did.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundReport<A> {
    /// The round's number (from 1).
    pub round: u64,
    /// The moves, in the order they were decided.
    pub moves: Vec<Move<A>>,
    /// Actors with a move above the hysteresis at the start of the round.
    pub candidates: usize,
    /// Actors skipped: most of their traffic is already local.
    pub anchored: usize,
    /// Actors skipped: they moved less than `cooldown_rounds` ago.
    pub cooling: usize,
}

/// The round's input.
pub struct RoundInput<'a, A> {
    /// The communication graph: (caller, callee, weight), merged from every place's summary
    /// (an edge may appear more than once: the weights add up; both directions add up).
    pub edges: &'a [(A, A, f64)],
    /// The actors the round may reason about; edges to an actor not listed are ignored.
    pub actors: &'a HashMap<A, ActorPlace>,
    /// The places the round may move actors to, with their loads.
    pub loads: &'a BTreeMap<Location, Load>,
}

/// The repartitioner's state across rounds: the round counter and each actor's last move
/// (cooldown). Deterministic: the same inputs give the same moves.
#[derive(Debug, Clone)]
pub struct Repartitioner<A> {
    config: RoundConfig,
    round: u64,
    /// Actor -> (round of its last move, its moves in a row): the cooldown doubles with each
    /// move made before the previous cooldown had passed twice over (at most 2^6 times), so an
    /// actor that keeps being moved slows down geometrically: moves per round go to zero.
    last_moved: HashMap<A, (u64, u32)>,
}

struct Graph<A> {
    ids: Vec<A>,
    /// Both directions summed (groups, candidate places, traffic).
    adj: Vec<Vec<(u32, f64)>>,
    /// Messages sent (callee, weight) and received (caller, weight): the costs.
    out: Vec<Vec<(u32, f64)>>,
    inn: Vec<Vec<(u32, f64)>>,
    total: Vec<f64>,
    loc: Vec<Location>,
    home: Vec<Option<Location>>,
    movable: Vec<bool>,
    memory: Vec<u64>,
}

impl<A: Clone + Eq + Hash + Ord> Repartitioner<A> {
    /// A repartitioner with `config`, before its first round.
    pub fn new(config: RoundConfig) -> Self {
        Repartitioner {
            config,
            round: 0,
            last_moved: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> u64 {
        self.round
    }

    /// Records that `actor` moved now for another reason (a memory rebalance, an operator):
    /// it then cools down as if this repartitioner had moved it, so the two never fight over
    /// it.
    pub fn note_moved(&mut self, actor: A) {
        self.moved_now(actor);
    }

    fn moved_now(&mut self, actor: A) {
        let round = self.round;
        let cool = self.config.cooldown_rounds;
        let e = self.last_moved.entry(actor).or_insert((round, 0));
        // A move soon after the previous one (within twice its cooldown) counts in the row.
        let streak = if e.1 > 0 && round < e.0 + 2 * backoff(cool, e.1) {
            (e.1 + 1).min(7)
        } else {
            1
        };
        *e = (round, streak);
    }

    /// Forgets the cooldown of actors that moved more than `cooldown_rounds` ago (bounds the
    /// state to the actors moved recently).
    fn expire(&mut self) {
        let (round, cool) = (self.round, self.config.cooldown_rounds);
        self.last_moved
            .retain(|_, (r, k)| *r + 2 * backoff(cool, *k) > round);
    }

    fn cooling(&self, a: &A) -> bool {
        self.last_moved
            .get(a)
            .is_some_and(|(r, k)| *r + backoff(self.config.cooldown_rounds, *k) > self.round)
    }

    /// Runs one round: proposes moves (the caller applies them), and counts them in each
    /// moved actor's cooldown.
    pub fn round(&mut self, input: &RoundInput<'_, A>) -> RoundReport<A> {
        self.round += 1;
        self.expire();
        let cfg = self.config.clone();
        let mut g = build_graph(input);
        for l in g.loc.iter_mut().chain(g.home.iter_mut().flatten()) {
            *l = cfg.zoned(*l);
        }
        let n = g.ids.len();
        let mut loads: BTreeMap<Location, (f64, f64)> = input
            .loads
            .iter()
            .map(|(l, x)| {
                (
                    cfg.zoned(*l),
                    (x.activations as f64, x.memory_bytes.unwrap_or(0) as f64),
                )
            })
            .collect();
        let with_memory =
            !input.loads.is_empty() && input.loads.values().all(|l| l.memory_bytes.is_some());
        let places = loads.len().max(1) as f64;
        let mean_count = loads.values().map(|x| x.0).sum::<f64>() / places;
        let mean_mem = loads.values().map(|x| x.1).sum::<f64>() / places;
        let band = |mean: f64, slack_min: f64| {
            let slack = (mean * cfg.balance_tolerance).max(slack_min);
            (mean - slack, mean + slack)
        };
        let (lo_c, hi_c) = band(mean_count, 1.0);
        let (lo_m, hi_m) = band(mean_mem, 0.0);
        let fits =
            |loads: &BTreeMap<Location, (f64, f64)>, from: Location, to: Location, mem: f64| {
                let (Some(f), Some(t)) = (loads.get(&from), loads.get(&to)) else {
                    return false;
                };
                let count_ok = (t.0 + 1.0 <= hi_c && f.0 - 1.0 >= lo_c) || f.0 - 1.0 >= t.0 + 1.0;
                let mem_ok = !with_memory
                    || (t.1 + mem <= hi_m && f.1 - mem >= lo_m)
                    || f.1 - mem >= t.1 + mem;
                count_ok && mem_ok
            };

        let mut members: BTreeMap<Location, Vec<u32>> = BTreeMap::new();
        for i in 0..n {
            members.entry(g.loc[i]).or_default().push(i as u32);
        }
        let mut report = RoundReport {
            round: self.round,
            moves: Vec::new(),
            candidates: 0,
            anchored: 0,
            cooling: 0,
        };
        let cooling: Vec<bool> = g.ids.iter().map(|a| self.cooling(a)).collect();
        let mut cands: Vec<(f64, u32, Location)> = Vec::new();
        for (i, &cool) in cooling.iter().enumerate() {
            if !g.movable[i] || g.total[i] <= 0.0 {
                continue;
            }
            if cool {
                report.cooling += 1;
                continue;
            }
            if local_fraction(&g, i) >= cfg.anchor_local_fraction {
                report.anchored += 1;
                continue;
            }
            if let Some((t, gain)) = best_target(&g, i, &cfg, &loads) {
                cands.push((gain, i as u32, t));
            }
        }
        report.candidates = cands.len();
        cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut moved = vec![false; n];
        if cfg.group_edge_fraction > 0.0 {
            let band = Band {
                lo: lo_c,
                hi: hi_c,
                mean: mean_count,
            };
            for group in groups(&g, &cfg) {
                if report.moves.len() >= cfg.max_moves {
                    break;
                }
                let mut ctx = GroupMove {
                    g: &mut g,
                    members: &mut members,
                    loads: &mut loads,
                    moved: &mut moved,
                    cooling: &cooling,
                    cfg: &cfg,
                    band,
                };
                if let Some(moves) = ctx.best(&group, cfg.max_moves - report.moves.len()) {
                    report.moves.extend(moves);
                }
            }
        }
        for &(_, i, _) in &cands {
            if report.moves.len() >= cfg.max_moves {
                break;
            }
            let i = i as usize;
            if moved[i] {
                continue;
            }
            // Re-evaluated: neighbours may have moved earlier in this round.
            let Some((t, gain)) = best_target(&g, i, &cfg, &loads) else {
                continue;
            };
            let from = g.loc[i];
            let mem_i = g.memory[i] as f64;
            if fits(&loads, from, t, mem_i) {
                let mv = explain(&g, i, t, gain, None);
                apply(&mut g, &mut members, &mut loads, i, t);
                moved[i] = true;
                report.moves.push(mv);
                continue;
            }
            if report.moves.len() + 2 > cfg.max_moves {
                continue;
            }
            // A pairwise exchange: the best actor of `t` to send back to `from`, judged with
            // `i` already at `t`.
            let mv_i = explain(&g, i, t, gain, None);
            apply(&mut g, &mut members, &mut loads, i, t);
            let mut best: Option<(f64, usize)> = None;
            for &j in members.get(&t).map(Vec::as_slice).unwrap_or(&[]) {
                let j = j as usize;
                if j == i || !g.movable[j] || moved[j] || cooling[j] {
                    continue;
                }
                let gj = gain_to(&g, j, from, &cfg.costs);
                if best.is_none_or(|(bg, _)| gj > bg) {
                    best = Some((gj, j));
                }
            }
            let thr = threshold(&cfg, g.total[i], cfg.costs.between(from, t));
            match best {
                Some((gj, j))
                    if gain + gj >= thr
                        && (!with_memory
                            || fits_exchange(
                                &loads,
                                from,
                                t,
                                mem_i,
                                g.memory[j] as f64,
                                (lo_m, hi_m),
                            )) =>
                {
                    let mv_j = explain(&g, j, from, gj, Some(g.ids[i].clone()));
                    apply(&mut g, &mut members, &mut loads, j, from);
                    moved[i] = true;
                    moved[j] = true;
                    report.moves.push(Move {
                        exchange_with: Some(g.ids[j].clone()),
                        ..mv_i
                    });
                    report.moves.push(mv_j);
                }
                _ => apply(&mut g, &mut members, &mut loads, i, from),
            }
        }
        for m in &report.moves {
            self.moved_now(m.actor.clone());
        }
        report
    }
}

/// An exchange (`out` went from `from` to `to`, `back` goes from `to` to `from`; `loads` has
/// the first half applied) keeps memory within the band, or narrows the gap it had.
fn fits_exchange(
    loads: &BTreeMap<Location, (f64, f64)>,
    from: Location,
    to: Location,
    out: f64,
    back: f64,
    (lo, hi): (f64, f64),
) -> bool {
    let (Some(f), Some(t)) = (loads.get(&from), loads.get(&to)) else {
        return false;
    };
    let (f0, t0) = (f.1 + out, t.1 - out);
    let (f1, t1) = (f.1 + back, t.1 - back);
    (lo <= f1 && f1 <= hi && lo <= t1 && t1 <= hi) || (f1 - t1).abs() <= (f0 - t0).abs()
}

/// The gain a move of an actor (or group) with `traffic` must clear, for a hop of cost
/// `hop`: the hysteresis, and the sampling noise (`min_samples_z` standard deviations of a
/// Poisson count of `traffic / sample_weight` samples).
fn threshold(cfg: &RoundConfig, traffic: f64, hop: f64) -> f64 {
    let hysteresis = cfg.min_gain_fraction * traffic * hop;
    let noise = cfg.min_samples_z * (traffic.max(0.0) * cfg.sample_weight).sqrt() * hop;
    hysteresis.max(noise)
}

/// The cooldown after the `streak`-th move in a row: `cool × 2^(streak - 1)`.
fn backoff(cool: u64, streak: u32) -> u64 {
    cool << streak.saturating_sub(1).min(6)
}

#[derive(Clone, Copy)]
struct Band {
    lo: f64,
    hi: f64,
    mean: f64,
}

/// The groups of a round. An edge binds its two actors when it carries at least
/// `group_edge_fraction` of its lighter end's traffic; the connected components of the binding
/// edges (a pair, a pipeline, a community) are the groups. A component larger than
/// `group_size_max` (light edges between communities, noise, chain them into one) is split
/// into its communities: label propagation over its binding edges (each actor takes the label
/// its binding edges weigh most, in actor order, until no label changes; ties keep the current
/// label, else the smallest), then the labels joined back while their links are heavy
/// ([`coarsen`]). Kept: groups larger than one actor, at most `group_size_max`, spread over
/// more than one place; in the order of their smallest member.
fn groups<A>(g: &Graph<A>, cfg: &RoundConfig) -> Vec<Vec<u32>> {
    let n = g.ids.len();
    let binding: Vec<Vec<(u32, f64)>> = (0..n)
        .map(|i| {
            g.adj[i]
                .iter()
                .copied()
                .filter(|&(j, w)| {
                    w >= cfg.group_edge_fraction * g.total[i].min(g.total[j as usize])
                })
                .collect()
        })
        .collect();
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn root(p: &mut [u32], mut x: u32) -> u32 {
        while p[x as usize] != x {
            p[x as usize] = p[p[x as usize] as usize];
            x = p[x as usize];
        }
        x
    }
    for (i, b) in binding.iter().enumerate() {
        for &(j, _) in b {
            let (a, b) = (root(&mut parent, i as u32), root(&mut parent, j));
            if a != b {
                parent[a.max(b) as usize] = a.min(b);
            }
        }
    }
    let mut size = vec![0usize; n];
    let mut label: Vec<u32> = (0..n as u32).map(|i| root(&mut parent, i)).collect();
    for &l in &label {
        size[l as usize] += 1;
    }
    // Actors of the oversized components: split by label propagation.
    let open: Vec<bool> = label
        .iter()
        .map(|&l| size[l as usize] > cfg.group_size_max)
        .collect();
    for (i, l) in label.iter_mut().enumerate() {
        if open[i] {
            *l = i as u32;
        }
    }
    let mut weights: BTreeMap<u32, f64> = BTreeMap::new();
    for _ in 0..LABEL_PASSES {
        let mut changed = false;
        for i in (0..n).filter(|&i| open[i]) {
            weights.clear();
            for &(j, w) in &binding[i] {
                *weights.entry(label[j as usize]).or_default() += w;
            }
            let own = weights.get(&label[i]).copied().unwrap_or(0.0);
            // The heaviest label, the smallest of equal ones (BTreeMap order).
            let (mut best, mut bw) = (label[i], own);
            for (&l, &w) in &weights {
                if w > bw {
                    (best, bw) = (l, w);
                }
            }
            if best != label[i] {
                label[i] = best;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    coarsen(g, cfg, &open, &mut label);
    let mut by_label: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for i in 0..n as u32 {
        by_label.entry(label[i as usize]).or_default().push(i);
    }
    let mut out: Vec<Vec<u32>> = by_label
        .into_values()
        .filter(|m| {
            m.len() > 1
                && m.len() <= cfg.group_size_max
                && m.iter().any(|&x| g.loc[x as usize] != g.loc[m[0] as usize])
        })
        .collect();
    out.sort_by_key(|m| m[0]);
    out
}

/// The second level of the groups: labels of the oversized components (communities found by
/// label propagation, often parts of one larger community) joined while the edges between two of them carry at least
/// `COARSEN_FRACTION × group_edge_fraction` of the lighter one's traffic and the two together
/// have at most `group_size_max` actors; heaviest (relative) links first.
fn coarsen<A>(g: &Graph<A>, cfg: &RoundConfig, open: &[bool], label: &mut [u32]) {
    let n = g.ids.len();
    // Labels are actor indices: per label, its size, traffic and links to other labels.
    let mut size = vec![0usize; n];
    let mut total = vec![0.0f64; n];
    let mut link: Vec<BTreeMap<u32, f64>> = vec![BTreeMap::new(); n];
    for i in 0..n {
        let a = label[i];
        size[a as usize] += 1;
        total[a as usize] += g.total[i];
        for &(j, w) in &g.adj[i] {
            let b = label[j as usize];
            if a != b && open[i] && open[j as usize] {
                *link[a as usize].entry(b).or_default() += w;
            }
        }
    }
    let mut order: Vec<(f64, u32, u32)> = link
        .iter()
        .enumerate()
        .flat_map(|(a, m)| {
            let total = &total;
            m.iter()
                .filter(move |(&b, _)| (a as u32) < b)
                .map(move |(&b, &w)| (w / total[a].min(total[b as usize]), a as u32, b))
        })
        .collect();
    order.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn root(p: &mut [u32], mut x: u32) -> u32 {
        while p[x as usize] != x {
            p[x as usize] = p[p[x as usize] as usize];
            x = p[x as usize];
        }
        x
    }
    let need = COARSEN_FRACTION * cfg.group_edge_fraction;
    for (_, a, b) in order {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        if ra == rb || size[ra as usize] + size[rb as usize] > cfg.group_size_max {
            continue;
        }
        // The link between the two groups as they are now (earlier joins included).
        let w = link[ra as usize].get(&rb).copied().unwrap_or(0.0);
        if w < need * total[ra as usize].min(total[rb as usize]) {
            continue;
        }
        let (keep, gone) = (ra.min(rb), ra.max(rb));
        parent[gone as usize] = keep;
        size[keep as usize] += size[gone as usize];
        total[keep as usize] += total[gone as usize];
        let moved = std::mem::take(&mut link[gone as usize]);
        link[keep as usize].remove(&gone);
        for (c, w) in moved {
            if c == keep {
                continue;
            }
            if let Some(x) = link[c as usize].remove(&gone) {
                *link[c as usize].entry(keep).or_default() += x;
            }
            *link[keep as usize].entry(c).or_default() += w;
        }
    }
    for l in label.iter_mut() {
        *l = root(&mut parent, *l);
    }
}

/// See [`coarsen`].
const COARSEN_FRACTION: f64 = 0.5;

/// Label propagation passes at most (it converges in a few on community graphs).
const LABEL_PASSES: usize = 20;

/// Moving one group to one place, with the exchanges its balance needs.
struct GroupMove<'a, A> {
    g: &'a mut Graph<A>,
    members: &'a mut BTreeMap<Location, Vec<u32>>,
    loads: &'a mut BTreeMap<Location, (f64, f64)>,
    moved: &'a mut [bool],
    cooling: &'a [bool],
    cfg: &'a RoundConfig,
    band: Band,
}

impl<A: Clone + PartialEq> GroupMove<'_, A> {
    /// Tries every place a member is at; keeps the best move of the group that clears the
    /// hysteresis and the balance, and returns its moves (`None`: the group stays).
    fn best(&mut self, group: &[u32], budget: usize) -> Option<Vec<Move<A>>> {
        let mut places: Vec<Location> = group.iter().map(|&x| self.g.loc[x as usize]).collect();
        places.sort();
        places.dedup();
        let mut best: Option<(f64, Location)> = None;
        for &t in &places {
            if !self.cfg.across_nodes
                && group.iter().any(|&x| self.g.loc[x as usize].node != t.node)
            {
                continue;
            }
            if let Some((gain, undo, _)) = self.try_move(group, t, budget) {
                if best.is_none_or(|(b, _)| gain > b) {
                    best = Some((gain, t));
                }
                self.revert(undo);
            }
        }
        let (_, t) = best?;
        let (_, undo, moves) = self.try_move(group, t, budget)?;
        for (i, _) in &undo {
            self.moved[*i] = true;
        }
        Some(moves)
    }

    /// Moves the group's movable members to `t` (evicting actors of `t` to the places the
    /// members left while `t` is above the band); `None` (and nothing changed) unless the
    /// gain clears the hysteresis and every place touched is in the band or closer to it.
    #[allow(clippy::type_complexity)]
    fn try_move(
        &mut self,
        group: &[u32],
        t: Location,
        budget: usize,
    ) -> Option<(f64, Vec<(usize, Location)>, Vec<Move<A>>)> {
        let before: BTreeMap<Location, f64> = self.loads.iter().map(|(l, x)| (*l, x.0)).collect();
        let mut undo: Vec<(usize, Location)> = Vec::new();
        let mut moves = Vec::new();
        let mut gain = 0.0;
        let (mut traffic, mut hop) = (0.0, 0.0f64);
        let mut sources: Vec<(Location, A)> = Vec::new();
        let name = Some(self.g.ids[group[0] as usize].clone());
        for &x in group {
            let i = x as usize;
            let from = self.g.loc[i];
            if from == t || !self.g.movable[i] || self.moved[i] || self.cooling[i] {
                continue;
            }
            let gi = gain_to(self.g, i, t, &self.cfg.costs);
            traffic += self.g.total[i];
            hop = hop.max(self.cfg.costs.between(from, t));
            gain += gi;
            moves.push(Move {
                group: name.clone(),
                ..explain(self.g, i, t, gi, None)
            });
            apply(self.g, self.members, self.loads, i, t);
            undo.push((i, from));
            sources.push((from, self.g.ids[i].clone()));
        }
        let in_group = |j: usize| group.contains(&(j as u32));
        let mut k = 0;
        while self.loads.get(&t).is_some_and(|x| x.0 > self.band.hi) && !sources.is_empty() {
            let (back, member) = sources[k % sources.len()].clone();
            k += 1;
            let mut partner: Option<(f64, usize)> = None;
            for &j in self.members.get(&t).map(Vec::as_slice).unwrap_or(&[]) {
                let j = j as usize;
                if in_group(j) || !self.g.movable[j] || self.moved[j] || self.cooling[j] {
                    continue;
                }
                let gj = gain_to(self.g, j, back, &self.cfg.costs);
                if partner.is_none_or(|(b, _)| gj > b) {
                    partner = Some((gj, j));
                }
            }
            let Some((gj, j)) = partner else { break };
            gain += gj;
            let partner = self.g.ids[j].clone();
            if let Some(m) = moves
                .iter_mut()
                .find(|m| m.actor == member && m.exchange_with.is_none())
            {
                m.exchange_with = Some(partner);
            }
            moves.push(explain(self.g, j, back, gj, Some(member)));
            apply(self.g, self.members, self.loads, j, back);
            undo.push((j, t));
        }
        let balanced = self.loads.iter().all(|(l, x)| {
            let b = before.get(l).copied().unwrap_or(x.0);
            (self.band.lo <= x.0 && x.0 <= self.band.hi)
                || (x.0 - self.band.mean).abs() <= (b - self.band.mean).abs()
        });
        // The movers' traffic among themselves moves with them (and each such edge was counted
        // at both ends): the hysteresis applies to the rest, what crosses the movers' boundary.
        let movers: Vec<usize> = undo
            .iter()
            .filter(|(i, _)| in_group(*i))
            .map(|(i, _)| *i)
            .collect();
        let inner: f64 = movers
            .iter()
            .map(|&i| {
                self.g.adj[i]
                    .iter()
                    .filter(|(j, _)| movers.contains(&(*j as usize)))
                    .map(|e| e.1)
                    .sum::<f64>()
            })
            .sum();
        // Evicted actors move against their interest: their traffic counts in full.
        let evicted: f64 = undo
            .iter()
            .filter(|(i, _)| !in_group(*i))
            .map(|(i, _)| self.g.total[*i])
            .sum();
        let boundary = (traffic - inner).max(0.0) + evicted;
        let thr = threshold(self.cfg, boundary, hop);
        if undo.is_empty() || gain <= 0.0 || gain < thr || !balanced || moves.len() > budget {
            self.revert(undo);
            return None;
        }
        Some((gain, undo, moves))
    }

    fn revert(&mut self, undo: Vec<(usize, Location)>) {
        for (i, from) in undo.into_iter().rev() {
            apply(self.g, self.members, self.loads, i, from);
        }
    }
}

fn build_graph<A: Clone + Eq + Hash + Ord>(input: &RoundInput<'_, A>) -> Graph<A> {
    let mut ids: Vec<A> = Vec::new();
    for (a, b, _) in input.edges {
        for x in [a, b] {
            if input.actors.contains_key(x) {
                ids.push(x.clone());
            }
        }
    }
    ids.sort();
    ids.dedup();
    let pos: HashMap<&A, u32> = ids.iter().enumerate().map(|(i, a)| (a, i as u32)).collect();
    let mut pairs: Vec<(u32, u32, f64)> = input
        .edges
        .iter()
        .filter_map(|(a, b, w)| {
            let (x, y) = (*pos.get(a)?, *pos.get(b)?);
            (x != y && w.is_finite() && *w > 0.0).then_some((x, y, *w))
        })
        .collect();
    pairs.sort_by(|p, q| (p.0, p.1).cmp(&(q.0, q.1)).then(p.2.total_cmp(&q.2)));
    let n = ids.len();
    let mut out: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
    let mut inn: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
    let mut undirected: Vec<(u32, u32, f64)> = Vec::with_capacity(pairs.len());
    let mut k = 0;
    while k < pairs.len() {
        let (x, y) = (pairs[k].0, pairs[k].1);
        let mut w = 0.0;
        while k < pairs.len() && pairs[k].0 == x && pairs[k].1 == y {
            w += pairs[k].2;
            k += 1;
        }
        out[x as usize].push((y, w));
        inn[y as usize].push((x, w));
        undirected.push((x.min(y), x.max(y), w));
    }
    undirected.sort_by_key(|p| (p.0, p.1));
    let mut adj: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
    let mut k = 0;
    while k < undirected.len() {
        let (x, y) = (undirected[k].0, undirected[k].1);
        let mut w = 0.0;
        while k < undirected.len() && undirected[k].0 == x && undirected[k].1 == y {
            w += undirected[k].2;
            k += 1;
        }
        adj[x as usize].push((y, w));
        adj[y as usize].push((x, w));
    }
    let place = |a: &A| input.actors[a];
    let total = adj
        .iter()
        .zip(&ids)
        .map(|(v, a)| v.iter().map(|e| e.1).sum::<f64>().max(place(a).traffic))
        .collect();
    Graph {
        loc: ids.iter().map(|a| place(a).location).collect(),
        home: ids.iter().map(|a| place(a).home).collect(),
        out,
        inn,
        movable: ids.iter().map(|a| place(a).movable).collect(),
        memory: ids.iter().map(|a| place(a).memory_bytes).collect(),
        ids,
        adj,
        total,
    }
}

/// Counts only the hops between nodes (or zones).
const NODE_HOPS: Costs = Costs {
    shard: 0.0,
    node: 1.0,
    zone: 1.0,
};
/// Counts only the hops between zones.
const ZONE_HOPS: Costs = Costs {
    shard: 0.0,
    node: 0.0,
    zone: 1.0,
};
/// Counts only the hops between shards of one node.
const SHARD_HOPS: Costs = Costs {
    shard: 1.0,
    node: 0.0,
    zone: 0.0,
};

/// The cost of a message sent from `from` to `j`, through `j`'s home if it has one.
fn route<A>(g: &Graph<A>, costs: &Costs, from: Location, j: usize) -> f64 {
    match g.home[j] {
        Some(h) => costs.between(from, h) + costs.between(h, g.loc[j]),
        None => costs.between(from, g.loc[j]),
    }
}

/// The cost of a message from `j` to `i`, were `i` at `at`.
fn route_in<A>(g: &Graph<A>, costs: &Costs, j: usize, i: usize, at: Location) -> f64 {
    let from = g.loc[j];
    match g.home[i] {
        Some(h) => costs.between(from, h) + costs.between(h, at),
        None => costs.between(from, at),
    }
}

/// The cost of `i`'s traffic were `i` at `at`.
fn cost_at<A>(g: &Graph<A>, i: usize, at: Location, costs: &Costs) -> f64 {
    let sent: f64 = g.out[i]
        .iter()
        .map(|&(j, w)| w * route(g, costs, at, j as usize))
        .sum();
    let received: f64 = g.inn[i]
        .iter()
        .map(|&(j, w)| w * route_in(g, costs, j as usize, i, at))
        .sum();
    sent + received
}

/// The fraction of `i`'s traffic that costs nothing where it is.
fn local_fraction<A>(g: &Graph<A>, i: usize) -> f64 {
    let here = g.loc[i];
    let c = Costs::default();
    let sent: f64 = g.out[i]
        .iter()
        .filter(|(j, _)| route(g, &c, here, *j as usize) == 0.0)
        .map(|e| e.1)
        .sum();
    let received: f64 = g.inn[i]
        .iter()
        .filter(|(j, _)| route_in(g, &c, *j as usize, i, here) == 0.0)
        .map(|e| e.1)
        .sum();
    (sent + received) / g.total[i]
}

/// The cost `i`'s traffic saves if `i` runs at `t` instead of where it is.
fn gain_to<A>(g: &Graph<A>, i: usize, t: Location, costs: &Costs) -> f64 {
    cost_at(g, i, g.loc[i], costs) - cost_at(g, i, t, costs)
}

/// The best place for `i` among its neighbours' places and homes (and its own home), if its
/// gain clears the hysteresis.
fn best_target<A>(
    g: &Graph<A>,
    i: usize,
    cfg: &RoundConfig,
    loads: &BTreeMap<Location, (f64, f64)>,
) -> Option<(Location, f64)> {
    let cur = g.loc[i];
    let mut places: Vec<Location> = g.adj[i]
        .iter()
        .flat_map(|&(j, _)| [Some(g.loc[j as usize]), g.home[j as usize]])
        .chain([g.home[i]])
        .flatten()
        .filter(|l| *l != cur && loads.contains_key(l) && (cfg.across_nodes || l.node == cur.node))
        .collect();
    places.sort();
    places.dedup();
    let mut best: Option<(Location, f64)> = None;
    for t in places {
        let gain = gain_to(g, i, t, &cfg.costs);
        let thr = threshold(cfg, g.total[i], cfg.costs.between(cur, t));
        if gain > 0.0 && gain >= thr && best.is_none_or(|(_, b)| gain > b) {
            best = Some((t, gain));
        }
    }
    best
}

fn explain<A: Clone>(g: &Graph<A>, i: usize, t: Location, gain: f64, with: Option<A>) -> Move<A> {
    Move {
        actor: g.ids[i].clone(),
        from: g.loc[i],
        to: t,
        gain,
        saved_cross_node: gain_to(g, i, t, &NODE_HOPS),
        saved_cross_shard: gain_to(g, i, t, &SHARD_HOPS),
        saved_cross_zone: gain_to(g, i, t, &ZONE_HOPS),
        exchange_with: with,
        group: None,
    }
}

fn apply<A>(
    g: &mut Graph<A>,
    members: &mut BTreeMap<Location, Vec<u32>>,
    loads: &mut BTreeMap<Location, (f64, f64)>,
    i: usize,
    t: Location,
) {
    let from = g.loc[i];
    if from == t {
        return;
    }
    if let Some(v) = members.get_mut(&from) {
        v.retain(|&x| x as usize != i);
    }
    members.entry(t).or_default().push(i as u32);
    let mem = g.memory[i] as f64;
    if let Some(f) = loads.get_mut(&from) {
        f.0 -= 1.0;
        f.1 -= mem;
    }
    if let Some(x) = loads.get_mut(&t) {
        x.0 += 1.0;
        x.1 += mem;
    }
    g.loc[i] = t;
}
