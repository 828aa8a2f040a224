//! The locality repartitioner's simulator (issue 19; docs/LOCALITY.md): the decision code of
//! `quark_placement::locality` run round by round on synthetic communication graphs, without
//! a cluster. Deterministic: the same `--seed` gives the same output.
//!
//! Each graph's actors start hash-placed on `--nodes` x `--shards` places. Every round, each
//! edge's messages are sampled one in `--sample-every` (a seeded Poisson draw) into the
//! sending actor's place's Space-Saving sketch (`--top-k` edges per place, decayed by
//! `--decay` per round), as the engine's shards do; the merged sketches, the actors' places
//! and the places' loads go to `Repartitioner::round`, whose moves are applied. Reported per
//! graph: cross-node and cross-shard fractions of the true traffic before and after, actors
//! moved, the worst place's load off the mean, the rounds until moves stopped; and the same
//! fractions for an offline reference partition of the true graph (greedy graph growing +
//! boundary refinement, nodes first, then shards within each node) as the best achievable.
//!
//! Graphs: `clustered` (communities of power-law sizes grown by preferential attachment:
//! power-law degrees; 5% of the traffic between random actors), `hot-pairs` (fixed partners,
//! light noise), `chains` (pipelines of 8 to 32 stages), `random` (uniformly random traffic:
//! every message between two actors drawn at random; the reference is the hash placement
//! itself, as no placement does better), `sparse-random` (eight fixed random partners per
//! actor: a random graph with some structure an offline partition exploits).
//!
//! `cargo run --release -p quark-bench --bin repartsim -- --help`

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use anyhow::{bail, Result};
use clap::Parser;
use quark_bench::machine::Machine;
use quark_placement::locality::{
    ActorPlace, EdgeSketch, Load, Location, Repartitioner, RoundConfig, RoundInput,
};

#[derive(Parser, Debug)]
#[command(about = "Locality repartitioning simulator (deterministic, seeded)")]
struct Args {
    /// Graphs to run: all, clustered, hot-pairs, chains, random, sparse-random
    /// (comma-separated).
    #[arg(long, default_value = "all")]
    graph: String,
    /// Actors per graph.
    #[arg(long, default_value_t = 8192)]
    actors: u32,
    /// Nodes.
    #[arg(long, default_value_t = 4)]
    nodes: u64,
    /// Shards per node.
    #[arg(long, default_value_t = 4)]
    shards: u16,
    /// Zones: the nodes are split into this many zones of consecutive nodes (node `n` in zone
    /// `n × zones / nodes`), given to the decision code as its node → zone map; a hop between
    /// zones costs 30 (a node hop 10, a shard hop 1).
    #[arg(long, default_value_t = 1)]
    zones: u64,
    /// Rounds to run.
    #[arg(long, default_value_t = 60)]
    rounds: u32,
    /// Seed of the graphs, the placement and the sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Edges kept per place (Space-Saving K).
    #[arg(long, default_value_t = 4096)]
    top_k: usize,
    /// One message in this many is sampled.
    #[arg(long, default_value_t = 64)]
    sample_every: u64,
    /// Messages per unit of edge weight per round (the sampling draws from weight x this).
    #[arg(long, default_value_t = 640.0)]
    messages_per_weight: f64,
    /// Decay factor of the sketches per round.
    #[arg(long, default_value_t = 0.5)]
    decay: f64,
    /// Balance tolerance (each place within mean x (1 +- this)).
    #[arg(long, default_value_t = 0.1)]
    tolerance: f64,
    /// Moves per round, at most.
    #[arg(long, default_value_t = 1024)]
    max_moves: usize,
    /// Cooldown, rounds.
    #[arg(long, default_value_t = 5)]
    cooldown: u64,
    /// Hysteresis: a move must save this fraction of the actor's traffic x the hop's cost.
    #[arg(long, default_value_t = RoundConfig::default().min_gain_fraction)]
    min_gain: f64,
    /// Anchoring: actors with this fraction of their traffic local are skipped.
    #[arg(long, default_value_t = RoundConfig::default().anchor_local_fraction)]
    anchor: f64,
    /// Group binding: an edge of at least this fraction of its lighter end's traffic.
    #[arg(long, default_value_t = RoundConfig::default().group_edge_fraction)]
    group_edge: f64,
    /// Largest group moved as a whole.
    #[arg(long, default_value_t = RoundConfig::default().group_size_max)]
    group_max: usize,
    /// Print each round's moves count.
    #[arg(long)]
    verbose: bool,
}

/// splitmix64: the simulator's only pseudo-random source (stable across platforms).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A Poisson draw of mean `lambda` (Knuth below 30, a rounded normal above).
    fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 30.0 {
            let (u1, u2) = (self.unit().max(1e-12), self.unit());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            return (lambda + z * lambda.sqrt()).round().max(0.0) as u64;
        }
        let l = (-lambda).exp();
        let (mut k, mut p) = (0u64, 1.0);
        loop {
            p *= self.unit();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
}

type Edges = Vec<(u32, u32, f64)>;

fn clustered(rng: &mut Rng, n: u32) -> Edges {
    let mut edges = Vec::new();
    let mut start = 0u32;
    while start < n {
        // Community sizes: a power law between 8 and 128 (P(size > s) ~ 8/s).
        let size = ((8.0 / rng.unit().max(1.0 / 16.0)) as u32).clamp(8, 128);
        let size = size.min(n - start);
        let mut ends: Vec<u32> = vec![start];
        for m in 1..size {
            let me = start + m;
            for _ in 0..2.min(m) {
                let to = ends[rng.below(ends.len() as u64) as usize];
                edges.push((me, to, (1 + rng.below(10)) as f64));
                ends.push(to);
                ends.push(me);
            }
        }
        start += size;
    }
    let inner: f64 = edges.iter().map(|e| e.2).sum();
    add_noise(rng, n, &mut edges, inner * 0.05);
    edges
}

fn hot_pairs(rng: &mut Rng, n: u32) -> Edges {
    let mut ids: Vec<u32> = (0..n).collect();
    // Partners drawn at random (not neighbours by id).
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut edges: Edges = ids
        .chunks_exact(2)
        .map(|p| (p[0], p[1], (10 + rng.below(90)) as f64))
        .collect();
    let inner: f64 = edges.iter().map(|e| e.2).sum();
    add_noise(rng, n, &mut edges, inner * 0.02);
    edges
}

fn chains(rng: &mut Rng, n: u32) -> Edges {
    let mut edges = Vec::new();
    let mut start = 0;
    while start < n {
        let len = (8 + rng.below(25) as u32).min(n - start);
        let w = (5 + rng.below(16)) as f64;
        for k in 1..len {
            edges.push((start + k - 1, start + k, w));
        }
        start += len;
    }
    edges
}

/// Eight random partners per actor, fixed: a random graph, whose structure an offline
/// partition can exploit (unlike uniformly random traffic).
fn sparse_random(rng: &mut Rng, n: u32) -> Edges {
    let mut edges = Vec::new();
    for a in 0..n {
        for _ in 0..8 {
            let b = rng.below(u64::from(n)) as u32;
            if b != a {
                edges.push((a, b, (1 + rng.below(3)) as f64));
            }
        }
    }
    edges
}

/// Light edges between random actors, `weight` in all (weight 1 each).
fn add_noise(rng: &mut Rng, n: u32, edges: &mut Edges, weight: f64) {
    for _ in 0..weight as u64 {
        let (a, b) = (
            rng.below(u64::from(n)) as u32,
            rng.below(u64::from(n)) as u32,
        );
        if a != b {
            edges.push((a, b, 1.0));
        }
    }
}

/// The zone of `node`: `zones` zones of consecutive nodes.
fn zone_of(node: u64, nodes: u64, zones: u64) -> u32 {
    (node * zones.max(1) / nodes.max(1)) as u32
}

fn grid(nodes: u64, shards: u16, zones: u64) -> Vec<Location> {
    (0..nodes)
        .flat_map(|node| {
            (0..shards).map(move |shard| Location {
                zone: zone_of(node, nodes, zones),
                node,
                shard,
            })
        })
        .collect()
}

/// Traffic fractions: (cross-node, cross-shard within a node, cross-zone (of the
/// cross-node)).
fn cut(edges: &Edges, place: &[Location]) -> (f64, f64, f64) {
    let (mut node, mut shard, mut zone, mut all) = (0.0, 0.0, 0.0, 0.0);
    for &(a, b, w) in edges {
        let (x, y) = (place[a as usize], place[b as usize]);
        all += w;
        if x.node != y.node {
            node += w;
            if x.zone != y.zone {
                zone += w;
            }
        } else if x.shard != y.shard {
            shard += w;
        }
    }
    (node / all, shard / all, zone / all)
}

/// The worst place's load off the mean, as a fraction of the mean.
fn imbalance(place: &[Location], places: &[Location]) -> f64 {
    let mut count: BTreeMap<Location, f64> = places.iter().map(|l| (*l, 0.0)).collect();
    for l in place {
        *count.entry(*l).or_default() += 1.0;
    }
    let mean = place.len() as f64 / places.len() as f64;
    count
        .values()
        .map(|c| (c - mean).abs() / mean)
        .fold(0.0, f64::max)
}

struct Outcome {
    before: (f64, f64, f64),
    after: (f64, f64, f64),
    reference: (f64, f64, f64),
    moved_actors: usize,
    moves: usize,
    imbalance: f64,
    ref_imbalance: f64,
    converged_round: Option<u32>,
    per_round: Vec<usize>,
    returns: usize,
}

/// Uniformly random traffic: every message between two actors drawn at random (a complete
/// graph of equal weights; no placement is better than another beyond balance). Its weight
/// per round: 16 units per actor, as the sparse graphs.
fn uniform_cut(place: &[Location]) -> (f64, f64, f64) {
    let n = place.len() as f64;
    let mut by_place: BTreeMap<Location, f64> = BTreeMap::new();
    let mut by_node: BTreeMap<u64, f64> = BTreeMap::new();
    let mut by_zone: BTreeMap<u32, f64> = BTreeMap::new();
    for l in place {
        *by_place.entry(*l).or_default() += 1.0;
        *by_node.entry(l.node).or_default() += 1.0;
        *by_zone.entry(l.zone).or_default() += 1.0;
    }
    let same_place: f64 = by_place.values().map(|c| (c / n) * (c / n)).sum();
    let same_node: f64 = by_node.values().map(|c| (c / n) * (c / n)).sum();
    let same_zone: f64 = by_zone.values().map(|c| (c / n) * (c / n)).sum();
    (1.0 - same_node, same_node - same_place, 1.0 - same_zone)
}

fn simulate(args: &Args, name: &str, edges: &Edges, n: u32, seed: u64) -> Outcome {
    let uniform = edges.is_empty();
    let cut = |edges: &Edges, place: &[Location]| {
        if uniform {
            uniform_cut(place)
        } else {
            cut(edges, place)
        }
    };
    let places = grid(args.nodes, args.shards, args.zones);
    let mut place: Vec<Location> = (0..n)
        .map(|a| places[(Rng(seed ^ (u64::from(a) << 20)).next() % places.len() as u64) as usize])
        .collect();
    let before = cut(edges, &place);
    let reference = if uniform {
        place.clone()
    } else {
        reference_partition(edges, n, args)
    };
    let cfg = RoundConfig {
        balance_tolerance: args.tolerance,
        max_moves: args.max_moves,
        cooldown_rounds: args.cooldown,
        min_gain_fraction: args.min_gain,
        anchor_local_fraction: args.anchor,
        group_edge_fraction: args.group_edge,
        group_size_max: args.group_max,
        sample_weight: args.sample_every as f64,
        zones: (0..args.nodes)
            .map(|node| (node, zone_of(node, args.nodes, args.zones)))
            .collect(),
        ..RoundConfig::default()
    };
    let mut r = Repartitioner::new(cfg);
    let mut sketches: BTreeMap<Location, EdgeSketch<(u32, u32)>> = places
        .iter()
        .map(|l| (*l, EdgeSketch::new(args.top_k)))
        .collect();
    // Each place's sampled traffic per actor (sender and receiver), as the shards keep it.
    let mut traffic: BTreeMap<Location, EdgeSketch<u32>> = places
        .iter()
        .map(|l| (*l, EdgeSketch::new(args.top_k)))
        .collect();
    let mut rng = Rng(seed.wrapping_mul(31) ^ 0xABCD);
    let mut per_round = Vec::new();
    let mut moved = vec![false; n as usize];
    let mut left: HashMap<u32, Vec<Location>> = HashMap::new();
    let mut returns = 0;
    for round in 1..=args.rounds {
        for s in sketches.values_mut() {
            s.decay_and_trim(args.decay, 1.0);
        }
        for s in traffic.values_mut() {
            s.decay_and_trim(args.decay, 1.0);
        }
        let mut sample = |a: u32, b: u32, w: f64, place: &[Location]| {
            let at = place[a as usize];
            if let Some(s) = sketches.get_mut(&at) {
                s.add((a, b), w);
            }
            if let Some(s) = traffic.get_mut(&at) {
                s.add(a, w);
                s.add(b, w);
            }
        };
        if uniform {
            let k = rng
                .poisson(16.0 * f64::from(n) * args.messages_per_weight / args.sample_every as f64);
            for _ in 0..k {
                let (a, b) = (
                    rng.below(u64::from(n)) as u32,
                    rng.below(u64::from(n)) as u32,
                );
                if a != b {
                    sample(a, b, args.sample_every as f64, &place);
                }
            }
        }
        for &(a, b, w) in edges {
            let k = rng.poisson(w * args.messages_per_weight / args.sample_every as f64);
            if k > 0 {
                sample(a, b, (k * args.sample_every) as f64, &place);
            }
        }
        // Each kept edge at its guaranteed weight (count - error).
        let merged: Edges = sketches
            .values()
            .flat_map(|s| s.counters().map(|c| (c.key.0, c.key.1, c.count - c.error)))
            .collect();
        let mut sent: HashMap<u32, f64> = HashMap::new();
        for s in traffic.values() {
            for c in s.counters() {
                *sent.entry(c.key).or_default() += c.count;
            }
        }
        let actors: HashMap<u32, ActorPlace> = (0..n)
            .map(|a| {
                (
                    a,
                    ActorPlace {
                        location: place[a as usize],
                        home: None,
                        movable: true,
                        memory_bytes: 0,
                        traffic: sent.get(&a).copied().unwrap_or(0.0),
                    },
                )
            })
            .collect();
        let mut loads: BTreeMap<Location, Load> =
            places.iter().map(|l| (*l, Load::default())).collect();
        for l in &place {
            if let Some(x) = loads.get_mut(l) {
                x.activations += 1;
            }
        }
        let report = r.round(&RoundInput {
            edges: &merged,
            actors: &actors,
            loads: &loads,
        });
        for m in &report.moves {
            let seen = left.entry(m.actor).or_default();
            if seen.contains(&m.to) {
                returns += 1;
            }
            seen.push(m.from);
            place[m.actor as usize] = m.to;
            moved[m.actor as usize] = true;
        }
        if args.verbose {
            let (cn, cs, cz) = cut(edges, &place);
            println!(
                "  {name} round {round}: {} moves ({} candidates, {} anchored, {} cooling), cross-node {:.1}%, cross-shard {:.1}%, cross-zone {:.1}%",
                report.moves.len(),
                report.candidates,
                report.anchored,
                report.cooling,
                cn * 100.0,
                cs * 100.0,
                cz * 100.0
            );
        }
        per_round.push(report.moves.len());
    }
    // Converged: the first round from which no round moved anything.
    let converged_round = per_round
        .iter()
        .rposition(|&m| m > 0)
        .map(|i| i as u32 + 2)
        .or(Some(1))
        .filter(|&r| r <= args.rounds);
    Outcome {
        before,
        after: cut(edges, &place),
        reference: cut(edges, &reference),
        moved_actors: moved.iter().filter(|m| **m).count(),
        moves: per_round.iter().sum(),
        imbalance: imbalance(&place, &places),
        ref_imbalance: imbalance(&reference, &places),
        converged_round,
        per_round,
        returns,
    }
}

/// The offline reference: the true graph partitioned into the zones, then each zone's part
/// into its nodes, then each node's part into its shards, each level by greedy graph growing
/// then boundary refinement, every part within the balance tolerance.
fn reference_partition(edges: &Edges, n: u32, args: &Args) -> Vec<Location> {
    let adj = adjacency(edges, n);
    let all: Vec<u32> = (0..n).collect();
    let zones = args.zones.clamp(1, args.nodes.max(1));
    let by_zone = partition(&adj, &all, zones as usize, args.tolerance);
    let mut place = vec![
        Location {
            zone: 0,
            node: 0,
            shard: 0
        };
        n as usize
    ];
    for zone in 0..zones {
        let in_zone: Vec<u32> = all
            .iter()
            .copied()
            .filter(|&v| by_zone[v as usize] == zone as usize)
            .collect();
        let nodes: Vec<u64> = (0..args.nodes)
            .filter(|&node| u64::from(zone_of(node, args.nodes, zones)) == zone)
            .collect();
        let by_node = partition(&adj, &in_zone, nodes.len(), args.tolerance);
        for (k, &node) in nodes.iter().enumerate() {
            let members: Vec<u32> = in_zone
                .iter()
                .copied()
                .filter(|&v| by_node[v as usize] == k)
                .collect();
            let by_shard = partition(&adj, &members, usize::from(args.shards), args.tolerance);
            for &v in &members {
                place[v as usize] = Location {
                    zone: zone as u32,
                    node,
                    shard: by_shard[v as usize] as u16,
                };
            }
        }
    }
    place
}

fn adjacency(edges: &Edges, n: u32) -> Vec<Vec<(u32, f64)>> {
    let mut m: HashMap<(u32, u32), f64> = HashMap::new();
    for &(a, b, w) in edges {
        if a != b {
            *m.entry((a.min(b), a.max(b))).or_default() += w;
        }
    }
    let mut pairs: Vec<((u32, u32), f64)> = m.into_iter().collect();
    pairs.sort_by_key(|x| x.0);
    let mut adj = vec![Vec::new(); n as usize];
    for ((a, b), w) in pairs {
        adj[a as usize].push((b, w));
        adj[b as usize].push((a, w));
    }
    adj
}

/// Partitions `members` (vertices of `adj`) into `k` parts of about equal size: returns the
/// part of every vertex of `adj` (`usize::MAX` for non-members).
fn partition(adj: &[Vec<(u32, f64)>], members: &[u32], k: usize, tol: f64) -> Vec<usize> {
    const NONE: usize = usize::MAX;
    let mut part = vec![NONE; adj.len()];
    let inside: Vec<bool> = {
        let mut v = vec![false; adj.len()];
        for &m in members {
            v[m as usize] = true;
        }
        v
    };
    let cap = members.len().div_ceil(k);
    // Greedy graph growing: each part from the heaviest unassigned vertex, always taking the
    // unassigned vertex most connected to the part.
    let mut order: Vec<u32> = members.to_vec();
    let weight = |v: u32| adj[v as usize].iter().map(|e| e.1).sum::<f64>();
    order.sort_by(|a, b| weight(*b).total_cmp(&weight(*a)).then(a.cmp(b)));
    let mut next_seed = 0;
    let mut sizes = vec![0usize; k];
    for (p, size) in sizes.iter_mut().enumerate() {
        let mut conn: HashMap<u32, f64> = HashMap::new();
        let mut heap: BinaryHeap<(u64, u32)> = BinaryHeap::new();
        while *size < cap {
            let v = loop {
                match heap.pop() {
                    Some((_, v)) if part[v as usize] == NONE => break Some(v),
                    Some(_) => continue,
                    None => {
                        while next_seed < order.len() && part[order[next_seed] as usize] != NONE {
                            next_seed += 1;
                        }
                        break order.get(next_seed).copied();
                    }
                }
            };
            let Some(v) = v else { break };
            part[v as usize] = p;
            *size += 1;
            for &(u, w) in &adj[v as usize] {
                if inside[u as usize] && part[u as usize] == NONE {
                    let c = conn.entry(u).or_default();
                    *c += w;
                    heap.push(((*c * 1000.0) as u64, u));
                }
            }
        }
    }
    // Boundary refinement: move a vertex to the part it is most connected to while that
    // gains and the sizes stay within the tolerance; passes until nothing moves.
    let hi = ((members.len() as f64 / k as f64) * (1.0 + tol)).floor() as usize;
    let lo = ((members.len() as f64 / k as f64) * (1.0 - tol)).ceil() as usize;
    for _ in 0..30 {
        let mut changed = 0;
        for &v in members {
            let own = part[v as usize];
            let mut to_part = vec![0.0; k];
            for &(u, w) in &adj[v as usize] {
                if inside[u as usize] {
                    to_part[part[u as usize]] += w;
                }
            }
            let (best, bw) = to_part
                .iter()
                .enumerate()
                .fold(
                    (own, to_part[own]),
                    |b, (p, &w)| if w > b.1 { (p, w) } else { b },
                );
            if best != own && bw > to_part[own] && sizes[best] < hi && sizes[own] > lo {
                part[v as usize] = best;
                sizes[best] += 1;
                sizes[own] -= 1;
                changed += 1;
            }
        }
        if changed == 0 {
            break;
        }
    }
    part
}

fn main() -> Result<()> {
    let args = Args::parse();
    let graphs: Vec<&str> = if args.graph == "all" {
        vec![
            "clustered",
            "hot-pairs",
            "chains",
            "random",
            "sparse-random",
        ]
    } else {
        args.graph.split(',').collect()
    };
    println!("{}", Machine::describe().line());
    println!(
        "repartsim: {} actors, {} nodes x {} shards in {} zone(s), {} rounds, seed {}, top-k {}, 1 in {} sampled, decay {}, tolerance {}, cooldown {} rounds",
        args.actors, args.nodes, args.shards, args.zones, args.rounds, args.seed, args.top_k, args.sample_every, args.decay, args.tolerance, args.cooldown
    );
    println!(
        "{:<10} {:>6} {:>17} {:>17} {:>17} {:>8} {:>9} {:>8} {:>8} {:>9} {:>10}",
        "graph",
        "edges",
        "x-node bef>aft",
        "x-shard bef>aft",
        "reference n/s",
        "cut",
        "ref cut",
        "moved",
        "imbal",
        "ref imbal",
        "converged"
    );
    for (i, g) in graphs.iter().enumerate() {
        let seed = args.seed.wrapping_mul(1000).wrapping_add(i as u64);
        let mut rng = Rng(seed);
        let edges = match *g {
            "clustered" => clustered(&mut rng, args.actors),
            "hot-pairs" => hot_pairs(&mut rng, args.actors),
            "chains" => chains(&mut rng, args.actors),
            "random" => Vec::new(),
            "sparse-random" => sparse_random(&mut rng, args.actors),
            other => bail!(
                "unknown graph {other:?} (clustered, hot-pairs, chains, random, sparse-random)"
            ),
        };
        let o = simulate(&args, g, &edges, args.actors, seed);
        let reduction = |b: f64, a: f64| if b > 0.0 { (1.0 - a / b) * 100.0 } else { 0.0 };
        println!(
            "{:<10} {:>6} {:>7.1}%>{:>6.1}% {:>7.1}%>{:>6.1}% {:>7.1}%/{:>6.1}% {:>7.1}% {:>8.1}% {:>7.2}% {:>7.1}% {:>8.1}% {:>10}",
            g,
            edges.len(),
            o.before.0 * 100.0,
            o.after.0 * 100.0,
            o.before.1 * 100.0,
            o.after.1 * 100.0,
            o.reference.0 * 100.0,
            o.reference.1 * 100.0,
            reduction(o.before.0, o.after.0),
            reduction(o.before.0, o.reference.0),
            o.moved_actors as f64 * 100.0 / f64::from(args.actors),
            o.imbalance * 100.0,
            o.ref_imbalance * 100.0,
            o.converged_round
                .map(|r| format!("round {r}"))
                .unwrap_or_else(|| "no".to_owned()),
        );
        if args.zones > 1 {
            println!(
                "           cross-zone {:.1}% > {:.1}% (cut {:.1}%), reference {:.1}%",
                o.before.2 * 100.0,
                o.after.2 * 100.0,
                reduction(o.before.2, o.after.2),
                o.reference.2 * 100.0
            );
        }
        println!(
            "           moves {} ({} back to a place left), per round: {:?}",
            o.moves, o.returns, o.per_round
        );
    }
    println!("cut: cross-node traffic cut from the hash placement (ref cut: the offline reference's); moved: actors moved at least once; imbal: the worst place's load off the mean");
    Ok(())
}
