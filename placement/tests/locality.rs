//! The repartitioner's rounds on seeded graphs: convergence (moves per round reach zero and
//! stay there), no ping-pong, balance kept, anchoring, cooldown, immovable actors.

use std::collections::{BTreeMap, HashMap};

use quark_placement::locality::{
    ActorPlace, EdgeSketch, Load, Location, Repartitioner, RoundConfig, RoundInput,
};

/// splitmix64: the tests' only source of pseudo-randomness (seeded, stable).
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
        self.next() % n
    }
}

/// `communities` groups of `size` actors, each grown by preferential attachment (every new
/// member links to two earlier ones, chosen by degree: power-law degrees), weights 1..=10;
/// plus `noise` light edges between random actors of any group.
fn clustered(seed: u64, communities: u32, size: u32, noise: u32) -> Vec<(u32, u32, f64)> {
    let mut rng = Rng(seed);
    let mut edges = Vec::new();
    for c in 0..communities {
        let base = c * size;
        let mut ends: Vec<u32> = vec![base, base + 1];
        edges.push((base, base + 1, 5.0));
        for m in 2..size {
            let me = base + m;
            for _ in 0..2 {
                let to = ends[rng.below(ends.len() as u64) as usize];
                let w = 1 + rng.below(10);
                edges.push((me, to, w as f64));
                ends.push(to);
                ends.push(me);
            }
        }
    }
    let n = u64::from(communities * size);
    for _ in 0..noise {
        let (a, b) = (rng.below(n) as u32, rng.below(n) as u32);
        if a != b {
            edges.push((a, b, 1.0));
        }
    }
    edges
}

fn hashed(n: u32, places: &[Location], seed: u64) -> HashMap<u32, ActorPlace> {
    (0..n)
        .map(|a| {
            let l =
                places[(Rng(seed ^ (u64::from(a) * 7919)).next() % places.len() as u64) as usize];
            (
                a,
                ActorPlace {
                    location: l,
                    home: None,
                    movable: true,
                    memory_bytes: 0,
                    traffic: 0.0,
                },
            )
        })
        .collect()
}

fn grid(nodes: u64, shards: u16) -> Vec<Location> {
    (0..nodes)
        .flat_map(|node| {
            (0..shards).map(move |shard| Location {
                zone: 0,
                node,
                shard,
            })
        })
        .collect()
}

fn loads(actors: &HashMap<u32, ActorPlace>, places: &[Location]) -> BTreeMap<Location, Load> {
    let mut m: BTreeMap<Location, Load> = places.iter().map(|l| (*l, Load::default())).collect();
    for a in actors.values() {
        if let Some(l) = m.get_mut(&a.location) {
            l.activations += 1;
        }
    }
    m
}

/// (cross-node, cross-shard) fractions of the traffic.
fn cut(edges: &[(u32, u32, f64)], actors: &HashMap<u32, ActorPlace>) -> (f64, f64) {
    let (mut node, mut shard, mut all) = (0.0, 0.0, 0.0);
    for (a, b, w) in edges {
        let (x, y) = (actors[a].location, actors[b].location);
        all += w;
        if x.node != y.node {
            node += w;
        } else if x.shard != y.shard {
            shard += w;
        }
    }
    (node / all, shard / all)
}

#[test]
fn rounds_converge_without_ping_pong_and_keep_balance() {
    let places = grid(2, 2);
    let n = 16 * 24;
    let edges = clustered(42, 16, 24, 40);
    let mut actors = hashed(n, &places, 42);
    let (node0, shard0) = cut(&edges, &actors);
    let cfg = RoundConfig::default();
    let tol = cfg.balance_tolerance;
    let mut r = Repartitioner::new(cfg);
    let mut per_round = Vec::new();
    // Every place an actor has left: moving back there is a ping-pong.
    let mut left: HashMap<u32, Vec<Location>> = HashMap::new();
    let mut returns = 0;
    let mut back: HashMap<u32, u32> = HashMap::new();
    for _ in 0..60 {
        let l = loads(&actors, &places);
        let report = r.round(&RoundInput {
            edges: &edges,
            actors: &actors,
            loads: &l,
        });
        per_round.push(report.moves.len());
        for m in &report.moves {
            assert!(
                m.gain > 0.0 || m.exchange_with.is_some() || m.group.is_some(),
                "{m:?}"
            );
            let seen = left.entry(m.actor).or_default();
            if seen.contains(&m.to) {
                returns += 1;
                *back.entry(m.actor).or_default() += 1;
            }
            seen.push(m.from);
            actors.get_mut(&m.actor).expect("a known actor").location = m.to;
        }
    }
    let total: usize = per_round.iter().sum();
    assert!(total > 0, "the clustered graph must move actors");
    assert!(
        per_round[40..].iter().all(|&m| m == 0),
        "moves per round must reach zero and stay there: {per_round:?}"
    );
    // A move back to a place left is allowed once (a group consolidating elsewhere after the
    // actor's first move); twice is ping-pong.
    let ping_pong: Vec<_> = back.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        ping_pong.is_empty(),
        "ping-pong (actor, returns): {ping_pong:?}"
    );
    assert!(
        returns * 20 <= total,
        "{returns} moves went back to a place the actor had left, of {total}"
    );
    let (node1, shard1) = cut(&edges, &actors);
    assert!(
        node1 <= node0 * 0.5,
        "cross-node traffic {node0:.3} -> {node1:.3}: less than halved"
    );
    assert!(node1 + shard1 < node0 + shard0);
    let mean = f64::from(n) / places.len() as f64;
    for (l, load) in loads(&actors, &places) {
        let a = load.activations as f64;
        assert!(
            (a - mean).abs() <= (mean * tol).max(1.0) + 1.0,
            "{l:?} holds {a} actors, mean {mean}"
        );
    }
}

#[test]
fn same_inputs_same_moves() {
    let places = grid(2, 2);
    let edges = clustered(7, 8, 16, 10);
    let actors = hashed(128, &places, 7);
    let l = loads(&actors, &places);
    let run = || {
        let mut r = Repartitioner::new(RoundConfig::default());
        r.round(&RoundInput {
            edges: &edges,
            actors: &actors,
            loads: &l,
        })
    };
    let (a, b) = (run(), run());
    assert!(!a.moves.is_empty());
    assert_eq!(a, b);
}

fn place(node: u64, shard: u16) -> ActorPlace {
    ActorPlace {
        location: Location {
            zone: 0,
            node,
            shard,
        },
        home: None,
        movable: true,
        memory_bytes: 0,
        traffic: 0.0,
    }
}

fn two_shards(a: u64, b: u64) -> BTreeMap<Location, Load> {
    let mut l = BTreeMap::new();
    for (s, n) in [(0, a), (1, b)] {
        l.insert(
            Location {
                zone: 0,
                node: 0,
                shard: s,
            },
            Load {
                activations: n,
                memory_bytes: None,
            },
        );
    }
    l
}

#[test]
fn immovable_actors_never_move_and_the_pair_meets_on_their_side() {
    let edges = vec![(1u32, 2u32, 50.0)];
    let mut actors = HashMap::new();
    actors.insert(
        1,
        ActorPlace {
            movable: false,
            ..place(0, 0)
        },
    );
    actors.insert(2, place(0, 1));
    let mut r = Repartitioner::new(RoundConfig::default());
    let rep = r.round(&RoundInput {
        edges: &edges,
        actors: &actors,
        loads: &two_shards(10, 10),
    });
    assert_eq!(rep.moves.len(), 1);
    assert_eq!(rep.moves[0].actor, 2);
    assert_eq!(rep.moves[0].to.shard, 0);
}

#[test]
fn anchored_actors_are_skipped() {
    // 1 has 90% of its traffic on its own shard: anchored, though 10% goes to shard 1.
    let edges = vec![(1u32, 2u32, 90.0), (1, 3, 10.0)];
    let mut actors = HashMap::new();
    actors.insert(1, place(0, 0));
    actors.insert(2, place(0, 0));
    actors.insert(
        3,
        ActorPlace {
            movable: false,
            ..place(0, 1)
        },
    );
    let mut r = Repartitioner::new(RoundConfig::default());
    let rep = r.round(&RoundInput {
        edges: &edges,
        actors: &actors,
        loads: &two_shards(10, 10),
    });
    assert!(rep.moves.is_empty(), "{:?}", rep.moves);
    assert_eq!(rep.anchored, 2);
}

#[test]
fn a_full_place_takes_an_actor_only_in_exchange() {
    // Shard 1 is at the top of the band: 1 -> shard 1 only if someone comes back.
    let edges = vec![(1u32, 2u32, 50.0), (3, 4, 1.0)];
    let mut actors = HashMap::new();
    actors.insert(1, place(0, 0));
    actors.insert(
        2,
        ActorPlace {
            movable: false,
            ..place(0, 1)
        },
    );
    actors.insert(3, place(0, 1));
    actors.insert(
        4,
        ActorPlace {
            movable: false,
            ..place(0, 1)
        },
    );
    let mut r = Repartitioner::new(RoundConfig::default());
    let rep = r.round(&RoundInput {
        edges: &edges,
        actors: &actors,
        loads: &two_shards(10, 11),
    });
    assert_eq!(rep.moves.len(), 2, "{:?}", rep.moves);
    assert_eq!((rep.moves[0].actor, rep.moves[0].to.shard), (1, 1));
    assert_eq!(rep.moves[0].exchange_with, Some(3));
    assert_eq!((rep.moves[1].actor, rep.moves[1].to.shard), (3, 0));
    assert_eq!(rep.moves[0].saved_cross_shard, 50.0);
    assert_eq!(rep.moves[1].saved_cross_shard, -1.0);
}

#[test]
fn an_actor_cools_down_after_a_move() {
    let edges = vec![(1u32, 2u32, 50.0)];
    let mut actors = HashMap::new();
    actors.insert(1, place(0, 0));
    actors.insert(
        2,
        ActorPlace {
            movable: false,
            ..place(0, 1)
        },
    );
    let cfg = RoundConfig {
        cooldown_rounds: 3,
        ..RoundConfig::default()
    };
    let mut r = Repartitioner::new(cfg);
    r.note_moved(1); // moved by someone else (a memory rebalance) just now
    for round in 1..=2 {
        let rep = r.round(&RoundInput {
            edges: &edges,
            actors: &actors,
            loads: &two_shards(10, 10),
        });
        assert!(rep.moves.is_empty(), "round {round}: cooling down");
        assert_eq!(rep.cooling, 1);
    }
    let rep = r.round(&RoundInput {
        edges: &edges,
        actors: &actors,
        loads: &two_shards(10, 10),
    });
    assert_eq!(rep.moves.len(), 1, "cooldown over after 3 rounds");
}

#[test]
fn moves_across_nodes_only_when_allowed() {
    let edges = vec![(1u32, 2u32, 50.0)];
    let mut actors = HashMap::new();
    actors.insert(1, place(0, 0));
    actors.insert(
        2,
        ActorPlace {
            movable: false,
            ..place(1, 0)
        },
    );
    let mut l = BTreeMap::new();
    for node in [0, 1] {
        l.insert(
            Location {
                zone: 0,
                node,
                shard: 0,
            },
            Load {
                activations: 10,
                memory_bytes: None,
            },
        );
    }
    let cfg = RoundConfig {
        across_nodes: false,
        ..RoundConfig::default()
    };
    let rep = Repartitioner::new(cfg).round(&RoundInput {
        edges: &edges,
        actors: &actors,
        loads: &l,
    });
    assert!(rep.moves.is_empty());
    let rep = Repartitioner::new(RoundConfig::default()).round(&RoundInput {
        edges: &edges,
        actors: &actors,
        loads: &l,
    });
    assert_eq!(rep.moves.len(), 1);
    assert_eq!(rep.moves[0].saved_cross_node, 50.0);
}

#[test]
fn the_sketch_keeps_a_hot_pair_among_uniform_noise() {
    let mut s = EdgeSketch::new(64);
    let mut rng = Rng(3);
    for i in 0..20_000u32 {
        s.add((rng.below(1000) as u32, rng.below(1000) as u32), 1.0);
        if i % 8 == 0 {
            s.add((5, 6), 1.0);
        }
    }
    let hot = s.count(&(5, 6)).expect("the hot pair is held");
    assert!(hot >= 2500.0);
    assert!(s.len() <= 64);
}

#[test]
fn with_home_routing_the_caller_goes_to_the_callee_s_home() {
    // 1 calls 2 only. Messages to an actor go through its home first: moving 2 next to 1
    // would cost two hops per message (1 -> home of 2 -> 1's shard), moving 1 to 2's home
    // none.
    let edges = vec![(1u32, 2u32, 50.0)];
    let at = |shard| Location {
        zone: 0,
        node: 0,
        shard,
    };
    let mut actors = HashMap::new();
    for (a, s) in [(1, 0), (2, 1)] {
        actors.insert(
            a,
            ActorPlace {
                home: Some(at(s)),
                ..place(0, s)
            },
        );
    }
    let mut r = Repartitioner::new(RoundConfig {
        group_edge_fraction: 0.0,
        ..RoundConfig::default()
    });
    let rep = r.round(&RoundInput {
        edges: &edges,
        actors: &actors,
        loads: &two_shards(10, 10),
    });
    assert_eq!(rep.moves.len(), 1, "{:?}", rep.moves);
    assert_eq!((rep.moves[0].actor, rep.moves[0].to), (1, at(1)));
    assert_eq!(rep.moves[0].saved_cross_shard, 50.0);
    // The same with groups on: the group goes where its cost is least (2's home).
    let rep = Repartitioner::new(RoundConfig::default()).round(&RoundInput {
        edges: &edges,
        actors: &actors,
        loads: &two_shards(10, 10),
    });
    assert_eq!(rep.moves.len(), 1, "{:?}", rep.moves);
    assert_eq!((rep.moves[0].actor, rep.moves[0].to), (1, at(1)));
}

/// Communities that light edges between them (noise) chain into one component larger than
/// `group_size_max` are still found, each moved whole: the component is split by label
/// propagation and its parts joined back while their links are heavy. Without that split the
/// only groups are the components that fit, and communities split over places stay split.
#[test]
fn communities_chained_by_noise_still_move_as_groups() {
    let places = grid(2, 2);
    let n = 16 * 24;
    // Noise heavy enough to bind (a light actor's single noise edge is 1/3 of its traffic).
    let edges = clustered(5, 16, 24, 160);
    let mut actors = hashed(n, &places, 5);
    let (node0, _) = cut(&edges, &actors);
    let cfg = RoundConfig {
        group_size_max: 32,
        ..RoundConfig::default()
    };
    let mut r = Repartitioner::new(cfg);
    let mut per_round = Vec::new();
    for _ in 0..60 {
        let l = loads(&actors, &places);
        let report = r.round(&RoundInput {
            edges: &edges,
            actors: &actors,
            loads: &l,
        });
        per_round.push(report.moves.len());
        for m in &report.moves {
            actors.get_mut(&m.actor).expect("a known actor").location = m.to;
        }
    }
    let (node1, _) = cut(&edges, &actors);
    // Communities placed whole on a node: the cross-node traffic left is the noise's share.
    let noise: f64 = edges
        .iter()
        .filter(|e| e.2 == 1.0)
        .map(|e| e.2)
        .sum::<f64>()
        / edges.iter().map(|e| e.2).sum::<f64>();
    assert!(
        per_round[40..].iter().all(|&m| m == 0),
        "moves per round must reach zero and stay there: {per_round:?}"
    );
    // The noise lands at random: about half of it crosses the two nodes whatever the
    // placement. Communities whole on their nodes leave about that; split ones add more (the
    // code without the split of oversized components ends at 0.044 here, against 0.024).
    assert!(
        node1 <= noise * 0.6,
        "cross-node traffic {node0:.3} -> {node1:.3}: communities left split (noise {noise:.3})"
    );
}
