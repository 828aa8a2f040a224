//! Locality-aware repartitioning on one node of two shards (issue 19; docs/LOCALITY.md):
//! pairs of actors that talk only to each other, placed apart by hash, are co-located by a
//! round (the engine's own cross-shard counters drop), and a uniformly random workload moves
//! almost nothing. Rounds are run on demand (`Node::locality_round`), never waited for.

use quark::{
    block_on, Actor, ActorType, Context, Handler, LocalityConfig, Message, Node, NodeConfig,
    ShardSpec,
};
use quark_placement::{keys_for_shard, ActorId};

// Counted memory per shard, for the memory-warning test (docs/LOCALITY.md, "Memory-hot
// destinations").
#[global_allocator]
static ALLOC: quark::CountingAlloc<std::alloc::System> =
    quark::CountingAlloc::new(std::alloc::System);

/// Memory ballast: holds what it is told to.
struct Ballast(Vec<u8>);
impl Actor for Ballast {
    const TYPE_NAME: &'static str = "loc.ballast";
}
struct Hold(usize);
impl Message for Hold {
    type Reply = u16;
}
impl Handler<Hold> for Caller {
    async fn handle(&mut self, m: Hold, ctx: &Context<Self>) -> u16 {
        self.0 = vec![7u8; m.0];
        ctx.shard()
    }
}
impl Handler<Hold> for Ballast {
    async fn handle(&mut self, m: Hold, ctx: &Context<Self>) -> u16 {
        self.0 = vec![7u8; m.0];
        ctx.shard()
    }
}

/// A caller; holds what `Hold` tells it to (memory that moves with it).
struct Caller(Vec<u8>);
impl Actor for Caller {
    const TYPE_NAME: &'static str = "loc.caller";
}
struct Callee(u64);
impl Actor for Callee {
    const TYPE_NAME: &'static str = "loc.callee";
}

/// Ask the callee `partner` (or `partners`, in turn) `n` times.
struct Go {
    partners: Vec<u64>,
    n: u32,
}
impl Message for Go {
    type Reply = u64;
}
impl Handler<Go> for Caller {
    async fn handle(&mut self, m: Go, ctx: &Context<Self>) -> u64 {
        let mut sum = 0;
        for i in 0..m.n as usize {
            let p = m.partners[i % m.partners.len()];
            sum += ctx
                .actor_ref::<Callee>(p)
                .ask(Ping)
                .await
                .expect("the callee answers");
        }
        sum
    }
}
struct Ping;
impl Message for Ping {
    type Reply = u64;
}
impl Handler<Ping> for Callee {
    async fn handle(&mut self, _: Ping, _: &Context<Self>) -> u64 {
        self.0 += 1;
        self.0
    }
}

fn node() -> Node {
    let mut config = NodeConfig::default();
    let mut l = LocalityConfig::default();
    l.enabled = true;
    // Rounds only on demand in these tests.
    l.interval = std::time::Duration::from_secs(3600);
    config.locality = l;
    config.admin = Some(quark::AdminConfig::new(
        "127.0.0.1:0".parse().expect("an address"),
    ));
    Node::builder()
        .config(config)
        .engine(|e| e.shards = ShardSpec::Count(2))
        .register(ActorType::new(|_| Caller(Vec::new())).movable())
        .register(ActorType::new(|_| Callee(0)).movable())
        .start()
        .expect("node starts")
}

/// 16 pairs: 8 callers on shard 0 with their callee on shard 1, 8 the other way round.
fn pairs() -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for (from, to) in [(0, 1), (1, 0)] {
        let callers = keys_for_shard(Caller::TYPE_NAME, from, 2).take(8);
        let callees = keys_for_shard(Callee::TYPE_NAME, to, 2).take(8);
        v.extend(callers.zip(callees));
    }
    v
}

/// Asks between shards made by the node's actors so far.
fn cross_shard_asks(node: &Node) -> u64 {
    node.stats()
        .expect("stats")
        .iter()
        .map(|s| s.messages_cross_shard.asks)
        .sum()
}

/// splitmix64, seeded: the order of the callers changes every pass (a fixed order would
/// alias with the engine's 1-in-64 turn sampling: the same caller sampled every time).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// `passes` times, every caller (in a shuffled order) gets one `Go` of 8 asks to partners
/// drawn from its list.
fn run(node: &Node, work: &[(u64, Vec<u64>)], passes: u32, rng: &mut Rng) {
    let mut order: Vec<usize> = (0..work.len()).collect();
    for _ in 0..passes {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &k in &order {
            let (caller, partners) = &work[k];
            let go = Go {
                partners: (0..8)
                    .map(|_| partners[rng.below(partners.len() as u64) as usize])
                    .collect(),
                n: 8,
            };
            block_on(node.actor_ref::<Caller>(*caller).ask(go)).expect("go");
        }
    }
}

#[test]
fn pairs_placed_apart_are_co_located_and_cross_shard_asks_drop() {
    let node = node();
    let work: Vec<(u64, Vec<u64>)> = pairs().into_iter().map(|(a, b)| (a, vec![b])).collect();
    // Enough turns that every caller's turns are sampled (1 in 64 per type and shard).
    let rng = &mut Rng(19);
    run(&node, &work, 200, rng);
    let a0 = cross_shard_asks(&node);
    run(&node, &work, 50, rng);
    let before = cross_shard_asks(&node) - a0;
    assert!(
        before >= 16 * 50 * 8,
        "every inner ask crosses shards: {before}"
    );

    let round = node.locality_round().expect("a round");
    let moved: Vec<String> = round
        .moves
        .iter()
        .filter(|m| m.error.is_none())
        .map(|m| m.actor.to_string())
        .collect();
    assert!(round.moves.iter().all(|m| m.error.is_none()), "{round:?}");
    let callers_moved = round
        .moves
        .iter()
        .filter(|m| m.actor.type_name == Caller::TYPE_NAME)
        .count();
    assert!(
        callers_moved >= 12,
        "most pairs co-located in one round: {round:?}"
    );
    // Each caller's move is explained by what it saves (a callee may move back as the
    // other half of an exchange, at a small cost).
    for m in &round.moves {
        if m.actor.type_name == Caller::TYPE_NAME {
            assert!(m.saved_cross_shard > 0.0, "{m:?}");
        }
    }
    let saved: f64 = round.moves.iter().map(|m| m.saved_cross_shard).sum();
    assert!(saved > 0.0, "{round:?}");
    // The per-pair view: the round's heaviest pairs are caller -> callee edges placed apart
    // (as the round saw them, before its moves), in the API and on the admin endpoint.
    assert!(!round.top_pairs.is_empty(), "{round:?}");
    for p in &round.top_pairs {
        assert_eq!(
            (p.from.type_name, p.to.type_name),
            (Caller::TYPE_NAME, Callee::TYPE_NAME),
            "{p:?}"
        );
        assert!(
            p.from_shard.is_some() && p.from_shard != p.to_shard,
            "{p:?}"
        );
        assert!(p.messages_est > 0.0, "{p:?}");
    }
    let admin = node.admin_addr().expect("[admin] is configured");
    let t = std::time::Duration::from_secs(10);
    let load = quark::admin::fetch(admin, "/quark/load", t).expect("/quark/load");
    let load: quark::admin::LoadReport = serde_json::from_str(&load.body).expect("JSON");
    let l = load.locality.expect("locality is on");
    assert_eq!(l.rounds, 1);
    assert_eq!(l.moves, moved.len() as u64);
    assert_eq!(l.top_pairs.len(), round.top_pairs.len());
    assert_eq!(l.top_pairs[0].from, round.top_pairs[0].from.to_string());
    assert!(l.top_pairs.iter().all(|p| p.crossing), "{l:?}");
    let metrics = quark::admin::fetch(admin, "/metrics", t)
        .expect("/metrics")
        .body;
    for needle in [
        "quark_locality_rounds_total 1".to_owned(),
        format!(
            "quark_locality_moves_total{{result=\"moved\"}} {}",
            moved.len()
        ),
        format!(
            "quark_locality_pair_messages{{from=\"{}\",to=\"{}\"}}",
            round.top_pairs[0].from, round.top_pairs[0].to
        ),
    ] {
        assert!(
            metrics.contains(&needle),
            "missing {needle:?} in\n{metrics}"
        );
    }
    // Each moved caller now runs on its callee's home shard.
    for (caller, callee) in pairs() {
        let cid = ActorId::new(Caller::TYPE_NAME, caller);
        if moved.contains(&cid.to_string()) {
            let p = node.placement(&cid).expect("placement");
            let home_of_callee =
                quark_placement::shard_for(&ActorId::new(Callee::TYPE_NAME, callee), 2);
            assert_eq!(p.shard, home_of_callee, "{cid}");
        }
    }
    let a1 = cross_shard_asks(&node);
    run(&node, &work, 50, rng);
    let after = cross_shard_asks(&node) - a1;
    assert!(
        after * 4 <= before,
        "cross-shard asks per 50 rounds of work: {before} before, {after} after"
    );
    // Converged: a second round of the same workload moves nothing more than it did.
    run(&node, &work, 200, rng);
    let again = node.locality_round().expect("a second round");
    // At most what the first round's balance exchanges left (an actor sent back home).
    assert!(
        again.moves.len() <= 2,
        "the second round only finishes what the first left: {again:?}"
    );
    let stats = node.locality_stats().expect("locality is on");
    assert_eq!(stats.rounds, 2);
    node.shutdown();
}

#[test]
fn uniformly_random_traffic_moves_almost_nothing() {
    let node = node();
    let callees: Vec<u64> = (0..32).collect();
    // Every caller asks callees drawn at random: no pair is heavier than another.
    let work: Vec<(u64, Vec<u64>)> = (0..32u64).map(|c| (c, callees.clone())).collect();
    let rng = &mut Rng(23);
    run(&node, &work, 200, rng);
    let mut moves = 0;
    for _ in 0..3 {
        let round = node.locality_round().expect("a round");
        moves += round.moves.len();
        run(&node, &work, 50, rng);
    }
    assert!(
        moves <= 1,
        "{moves} moves for 64 actors under uniform traffic"
    );
    node.shutdown();
}

#[test]
fn the_section_is_read_and_checked() {
    let c = NodeConfig::from_toml(
        "[locality]\nenabled = true\ninterval_ms = 500\njitter_ms = 0\ncooldown_ms = 2000\ntop_k = 256\nbalance_tolerance = 0.2\nmax_moves_per_round = 8\n",
        "q.toml",
    )
    .expect("valid");
    assert!(c.locality.enabled);
    assert_eq!(c.locality.interval, std::time::Duration::from_millis(500));
    assert_eq!(c.locality.top_k, 256);
    assert_eq!(c.locality.max_moves_per_round, 8);
    assert!(!NodeConfig::default().locality.enabled, "off by default");
    let e = NodeConfig::from_toml("[locality]\nbalance_tolerance = 2.5\n", "q.toml")
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("locality.balance_tolerance") && e.contains("2.5"),
        "{e}"
    );
    let e = NodeConfig::from_toml("[locality]\ntop_k = 3\n", "q.toml")
        .expect_err("refused")
        .to_string();
    assert!(e.contains("locality.top_k"), "{e}");
    // Zones: node id -> zone name.
    let c = NodeConfig::from_toml(
        "[locality.zones]\n1 = \"eu-1a\"\n2 = \"eu-1b\"\n3 = \"eu-1a\"\n",
        "q.toml",
    )
    .expect("valid");
    let zones: Vec<(u64, &str)> = c
        .locality
        .zones
        .iter()
        .map(|(n, z)| (*n, z.as_str()))
        .collect();
    assert_eq!(zones, [(1, "eu-1a"), (2, "eu-1b"), (3, "eu-1a")]);
    assert!(NodeConfig::default().locality.zones.is_empty());
    // The decision code's node -> zone map: zones numbered by name from 1 (0: not listed).
    let r = c.locality.round_config();
    let numbered: Vec<(u64, u32)> = r.zones.iter().map(|(n, z)| (*n, *z)).collect();
    assert_eq!(numbered, [(1, 1), (2, 2), (3, 1)]);
    let at = |node| quark_placement::locality::Location {
        zone: 0,
        node,
        shard: 0,
    };
    assert_eq!(r.zoned(at(2)).zone, 2);
    assert_eq!(r.zoned(at(5)).zone, 0);
    let e = NodeConfig::from_toml("[locality.zones]\nnode-a = \"eu-1a\"\n", "q.toml")
        .expect_err("refused")
        .to_string();
    assert!(e.contains("locality.zones") && e.contains("node id"), "{e}");
    let off = Node::builder().start().expect("node");
    assert!(matches!(
        off.locality_round(),
        Err(quark::LocalityError::NotEnabled)
    ));
    off.shutdown();
}

/// The rounds and the memory monitor share the node's per-actor move table
/// (`Node::move_cooldown`): a round does not move actors another mover moved within the
/// cooldown, and records the moves it makes there for the other mover to respect.
#[test]
fn rounds_share_the_nodes_move_cooldown_with_the_memory_monitor() {
    let node = node();
    let work: Vec<(u64, Vec<u64>)> = pairs().into_iter().map(|(a, b)| (a, vec![b])).collect();
    let rng = &mut Rng(23);
    run(&node, &work, 200, rng);
    // As the memory monitor does for each of its moves: half the callers "just moved".
    let table = node.move_cooldown();
    let now = std::time::Instant::now();
    let held: Vec<ActorId> = pairs()
        .into_iter()
        .step_by(2)
        .map(|(c, _)| ActorId::new(Caller::TYPE_NAME, c))
        .collect();
    for id in &held {
        table.moved(id, now);
    }
    let round = node.locality_round().expect("a round");
    for m in &round.moves {
        assert!(!held.contains(&m.actor), "moved a held actor: {m:?}");
    }
    let stats = node.locality_stats().expect("locality is on");
    assert!(
        stats.moves_skipped_cooldown >= 4,
        "the held callers were wanted elsewhere: {stats:?}"
    );
    let made: Vec<&ActorId> = round
        .moves
        .iter()
        .filter(|m| m.error.is_none())
        .map(|m| &m.actor)
        .collect();
    assert!(made.len() >= 4, "the others moved: {round:?}");
    let cooldown = std::time::Duration::from_secs(30);
    for id in made {
        assert!(
            !table.allows(id, std::time::Instant::now(), cooldown),
            "{id}: the round's move is in the shared table"
        );
    }
    // A move through the API (an operator's) goes into the same table.
    // (An actor no round has seen.)
    block_on(node.actor_ref::<Callee>(1_000_000u64).ask(Ping)).expect("activate");
    let callee = ActorId::new(Callee::TYPE_NAME, 1_000_000u64);
    let to = 1 - node.placement(&callee).expect("placement").shard;
    assert!(table.allows(&callee, std::time::Instant::now(), cooldown));
    node.migrate(&callee, to).expect("move");
    assert!(!table.allows(&callee, std::time::Instant::now(), cooldown));
    node.shutdown();
}

const MIB: usize = 1 << 20;

/// A 2-shard node with locality rounds on demand and `[memory]` at 64 MiB per shard, the
/// thresholds set by `tune`; callers, callees (movable) and ballast (not movable).
fn memory_node(tune: impl FnOnce(&mut quark::MemoryConfig)) -> Node {
    let mut config = NodeConfig::default();
    let mut l = LocalityConfig::default();
    l.enabled = true;
    l.interval = std::time::Duration::from_secs(3600);
    config.locality = l;
    let mut m = quark::MemoryConfig::default();
    m.shard_limit_bytes = Some(64 * MIB as u64);
    tune(&mut m);
    config.memory = Some(m);
    Node::builder()
        .config(config)
        .engine(|e| e.shards = ShardSpec::Count(2))
        .register(ActorType::new(|_| Caller(Vec::new())).movable())
        .register(ActorType::new(|_| Callee(0)).movable())
        .register(ActorType::new(|_| Ballast(Vec::new())))
        .start()
        .expect("node starts")
}

#[test]
fn rounds_move_nothing_onto_a_shard_at_its_memory_warning_level() {
    // 64 MiB per shard, warning at a quarter (16 MiB); critical and reject far above what
    // the test holds, so the monitor only watches.
    let node = memory_node(|m| {
        m.warning = 0.25;
        m.critical = 0.9;
        m.reject = 0.95;
    });
    // 32 MiB of ballast on shard 1: at its warning level, shard 0 under it.
    let key = keys_for_shard(Ballast::TYPE_NAME, 1, 2)
        .next()
        .expect("a key");
    let on = block_on(node.actor_ref::<Ballast>(key).ask(Hold(32 * MIB))).expect("hold");
    assert_eq!(on, 1);
    let levels: Vec<_> = node
        .memory()
        .expect("memory")
        .shards
        .iter()
        .map(|s| s.level)
        .collect();
    assert_eq!(
        levels,
        vec![quark::memory::Level::Normal, quark::memory::Level::Warning],
        "the test needs shard 1 hot and shard 0 not"
    );
    // Pairs placed apart both ways: without the rule, callers move both ways.
    let work: Vec<(u64, Vec<u64>)> = pairs().into_iter().map(|(a, b)| (a, vec![b])).collect();
    run(&node, &work, 200, &mut Rng(7));
    let round = node.locality_round().expect("a round");
    let stats = node.locality_stats().expect("locality is on");
    assert!(
        stats.moves_skipped_memory > 0,
        "moves onto shard 1 were decided and left out: {stats:?}"
    );
    assert!(
        round.moves.iter().all(|m| m.to == 0),
        "nothing moved onto the hot shard: {round:?}"
    );
    assert!(
        round.moves.iter().any(|m| m.error.is_none()),
        "moves onto the cool shard are made: {round:?}"
    );
    node.shutdown();
}

#[test]
fn with_both_movers_on_a_static_workload_stops_moving() {
    both_movers_settle(quark::VictimStrategy::Largest);
}

/// The same with the memory monitor's `locality` strategy, which reads the sampler's edges
/// to choose its victims and their destination (docs/MEMORY.md).
#[test]
fn with_both_movers_and_the_locality_strategy_on_a_static_workload_stops_moving() {
    both_movers_settle(quark::VictimStrategy::Locality);
}

fn both_movers_settle(strategy: quark::VictimStrategy) {
    // The locality cooldown stays at its default (60 s): with 0, the rounds alone undo
    // each other's count-balancing exchanges (docs/LOCALITY.md, Limits). The monitor's is 0:
    // it would undo at once any locality move that brought a shard over critical.
    let node = memory_node(|m| {
        m.warning = 0.5;
        m.critical = 0.6;
        m.reject = 0.95;
        m.sample_interval = std::time::Duration::from_millis(50);
        m.cooldown = std::time::Duration::ZERO;
        m.strategy = strategy;
    });
    // 4 pairs on each shard (balanced counts), the callers of shard 0 holding 10 MiB each:
    // 40 MiB, over shard 0's critical level (38.4 MiB). The monitor moves a caller to shard
    // 1, which splits its pair: the locality rounds then want it back with its callee. The
    // two must settle, not fight.
    let mut work: Vec<(u64, Vec<u64>)> = Vec::new();
    for shard in [0, 1] {
        let callers = keys_for_shard(Caller::TYPE_NAME, shard, 2).take(4);
        let callees = keys_for_shard(Callee::TYPE_NAME, shard, 2).take(4);
        work.extend(callers.zip(callees).map(|(a, b)| (a, vec![b])));
    }
    if strategy == quark::VictimStrategy::Locality {
        // Traffic first: the monitor's first choice then has edges to weigh.
        run(&node, &work, 400, &mut Rng(7));
    }
    for (c, _) in &work[..4] {
        block_on(node.actor_ref::<Caller>(*c).ask(Hold(10 * MIB))).expect("hold");
    }
    let under_critical = |node: &Node| {
        let r = node.memory().expect("memory");
        r.shards
            .iter()
            .all(|s| s.level < quark::memory::Level::Critical)
            .then_some(r.moves)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let first = loop {
        if let Some(moves) = under_critical(&node).filter(|m| *m > 0) {
            break moves;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor moved nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let rng = &mut Rng(11);
    let mut per_round = Vec::new();
    let mut monitor_moves = first;
    let mut moved: std::collections::HashMap<String, u32> = Default::default();
    for _ in 0..6 {
        run(&node, &work, 100, rng);
        let round = node.locality_round().expect("a round");
        let made: Vec<_> = round.moves.iter().filter(|m| m.error.is_none()).collect();
        for m in &made {
            *moved.entry(m.actor.to_string()).or_default() += 1;
        }
        // A move that brought a shard over critical would make the monitor move again:
        // wait until every shard is under critical (at once when nothing did).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let now = loop {
            if let Some(moves) = under_critical(&node) {
                break moves;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a shard stays over critical"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        per_round.push(made.len() as u64 + (now - monitor_moves));
        monitor_moves = now;
    }
    for mv in node.memory().expect("memory").recent_moves {
        *moved.entry(mv.actor.to_string()).or_default() += 1;
    }
    assert!(
        per_round[3..].iter().all(|n| *n == 0),
        "moves per round (locality + monitor) decay to zero: {per_round:?}"
    );
    assert!(
        moved.values().all(|n| *n <= 2),
        "no actor goes back and forth: {moved:?} (moves per round {per_round:?})"
    );
    node.shutdown();
}
