//! Placement policies per actor type (docs/MIGRATION.md, "Placement policies"): hash (the
//! default), the caller's shard, a fixed shard, a fixed node; and a single activation per id
//! under concurrent first calls from every shard and from outside the node.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use quark_shard::{
    block_on, Actor, ActorId, ActorKey, ActorType, Context, Engine, EngineBuilder, EngineConfig,
    Handler, Message, PlacementPolicy, ShardSpec,
};

const SHARDS: u16 = 3;

fn config() -> EngineConfig {
    EngineConfig {
        shards: ShardSpec::Count(SHARDS as usize),
        pin_threads: false,
        idle_spin: Duration::from_micros(20),
        ask_timeout: Duration::from_secs(10),
        ..EngineConfig::default()
    }
}

fn id_of<A: Actor>(key: impl Into<ActorKey>) -> ActorId {
    ActorId {
        type_name: A::TYPE_NAME,
        key: key.into(),
    }
}

/// Waits for `rx` at most `limit` (a hung shard fails the test instead of hanging it).
fn within<T>(limit: Duration, what: &str, rx: mpsc::Receiver<T>) -> T {
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("{what}: no answer within {limit:?} ({e})"))
}

// ---- an actor that says where it runs

/// Generic over a marker so each test registers a type of its own name.
struct Where<const P: u8> {
    /// The node it was built on (set by each node's factory).
    node: u64,
    n: u64,
}
impl Actor for Where<0> {
    const TYPE_NAME: &'static str = "pp-hash";
}
impl Actor for Where<1> {
    const TYPE_NAME: &'static str = "pp-caller";
}
impl Actor for Where<2> {
    const TYPE_NAME: &'static str = "pp-shard";
}
impl Actor for Where<3> {
    const TYPE_NAME: &'static str = "pp-node";
}
#[derive(quark_net::rkyv::Archive, quark_net::rkyv::Serialize, quark_net::rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Here;
impl Message for Here {
    /// (node, shard, calls so far)
    type Reply = (u64, u16, u64);
}
impl quark_net::WireMessage for Here {
    const WIRE_NAME: &'static str = "placement-test.Here";
}
macro_rules! where_handler {
    ($($p:literal),*) => {$(
        impl Handler<Here> for Where<$p> {
            async fn handle(&mut self, _: Here, ctx: &Context<Self>) -> (u64, u16, u64) {
                self.n += 1;
                (self.node, ctx.shard(), self.n)
            }
        }
    )*};
}
where_handler!(0, 1, 2, 3);

fn where_type<const P: u8>(node: u64) -> ActorType<Where<P>>
where
    Where<P>: Actor,
{
    ActorType::new(move |_| Where::<P> { node, n: 0 })
}

fn one_node() -> Engine {
    EngineBuilder::new(config())
        .register(where_type::<0>(0))
        .register(where_type::<1>(0).placement(PlacementPolicy::PreferCaller))
        .register(where_type::<2>(0).placement(PlacementPolicy::Shard(2)))
        .start()
        .expect("engine starts")
}

/// Asks `Here` of `key` from a task on `shard`.
fn ask_from<const P: u8>(engine: &Engine, shard: u16, key: u64) -> (u64, u16, u64)
where
    Where<P>: Actor + Handler<Here>,
{
    let r = engine.actor_ref::<Where<P>>(key);
    let h = engine.spawn_on(shard, move || async move { r.ask(Here).await });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.join());
    });
    within(Duration::from_secs(20), "an ask from a shard task", rx)
        .expect("the task ran")
        .expect("the ask was answered")
}

/// Hash (the default) activates on the home shard whoever sends; the caller's shard places
/// a first activation on the sender's shard (home from outside), and later calls from other
/// shards reach it there; a fixed shard places every id on that shard. `placement` reports
/// each place.
#[test]
fn each_policy_places_the_first_activation_as_documented() {
    let engine = one_node();
    let mut placed_away = 0;
    for key in 0..30u64 {
        let sender = (key % u64::from(SHARDS)) as u16;

        // Hash: the home, from a shard or from outside.
        let home = engine
            .placement(&id_of::<Where<0>>(key))
            .expect("placement")
            .home;
        assert_eq!(
            ask_from::<0>(&engine, sender, key).1,
            home,
            "hash, key {key}"
        );

        // The caller's shard, then the same activation from everywhere.
        let id = id_of::<Where<1>>(key);
        let (_, first, n) = ask_from::<1>(&engine, sender, key);
        assert_eq!((first, n), (sender, 1), "prefer-caller, key {key}");
        placed_away += u32::from(first != engine.placement(&id).expect("placement").home);
        for other in 0..SHARDS {
            let (_, at, _) = ask_from::<1>(&engine, other, key);
            assert_eq!(
                at, sender,
                "prefer-caller, key {key}, later call from {other}"
            );
        }
        let (_, at, n) = engine
            .actor_ref::<Where<1>>(key)
            .ask_blocking(Here)
            .expect("ask from outside");
        assert_eq!(
            (at, n),
            (sender, u64::from(SHARDS) + 2),
            "one activation, key {key}"
        );
        let p = engine.placement(&id).expect("placement");
        assert_eq!(
            p.shard, sender,
            "the directory records the place, key {key}"
        );

        // From outside the node: the caller's shard is the home.
        let fresh = 1_000 + key;
        let (_, at, _) = engine
            .actor_ref::<Where<1>>(fresh)
            .ask_blocking(Here)
            .expect("ask from outside");
        let home = engine
            .placement(&id_of::<Where<1>>(fresh))
            .expect("placement")
            .home;
        assert_eq!(at, home, "prefer-caller from outside, key {fresh}");

        // A fixed shard, from anywhere.
        assert_eq!(
            ask_from::<2>(&engine, sender, key).1,
            2,
            "fixed shard, key {key}"
        );
        let (_, at, _) = engine
            .actor_ref::<Where<2>>(fresh)
            .ask_blocking(Here)
            .expect("ask from outside");
        assert_eq!(at, 2, "fixed shard from outside, key {fresh}");
        assert_eq!(
            engine
                .placement(&id_of::<Where<2>>(key))
                .expect("placement")
                .shard,
            2
        );
    }
    assert!(
        placed_away >= 10,
        "the caller's shard differed from the home for {placed_away} of 30 keys"
    );
    engine.shutdown();
}

// ---- single activation under concurrent first calls

const ROUNDS: usize = 100;
/// Turns of each key in progress right now, over all shards.
static IN_TURN: [AtomicU32; ROUNDS] = [const { AtomicU32::new(0) }; ROUNDS];
static OVERLAPS: AtomicU64 = AtomicU64::new(0);
/// Activations built per key (the factory runs once per activation).
static BUILT: [AtomicU32; ROUNDS] = [const { AtomicU32::new(0) }; ROUNDS];

struct Solo {
    n: u64,
}
impl Actor for Solo {
    const TYPE_NAME: &'static str = "pp-solo";
}
struct Hit(usize);
impl Message for Hit {
    type Reply = (u64, u16);
}
impl Handler<Hit> for Solo {
    async fn handle(&mut self, m: Hit, ctx: &Context<Self>) -> (u64, u16) {
        if IN_TURN[m.0].fetch_add(1, Ordering::SeqCst) != 0 {
            OVERLAPS.fetch_add(1, Ordering::SeqCst);
        }
        // A turn long enough for a second activation on another core to overlap it.
        let until = Instant::now() + Duration::from_micros(30);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        IN_TURN[m.0].fetch_sub(1, Ordering::SeqCst);
        self.n += 1;
        (self.n, ctx.shard())
    }
}

/// Round after round, a fresh prefer-caller actor gets its first calls at once from tasks on
/// every shard and from a thread outside the node: it is activated once (on the shard of
/// whichever first call reached its home first), no two turns of it overlap, and its count
/// is the number of calls. Fails with the home's directory entry not made (each first call
/// activates the actor on its own sender's shard).
#[test]
fn concurrent_first_calls_from_every_shard_make_one_activation() {
    let engine = EngineBuilder::new(config())
        .register(
            ActorType::new(|id: &ActorId| {
                let k = match &id.key {
                    ActorKey::U64(k) => *k as usize,
                    other => panic!("unexpected key {other:?}"),
                };
                BUILT[k].fetch_add(1, Ordering::SeqCst);
                Solo { n: 0 }
            })
            .placement(PlacementPolicy::PreferCaller),
        )
        .start()
        .expect("engine starts");
    const PER_CALLER: u64 = 5;
    const TASKS: u64 = 6;
    #[allow(clippy::needless_range_loop)] // `round` is also the key and the message's index
    for round in 0..ROUNDS {
        let key = round as u64;
        let mut calls = Vec::new();
        for t in 0..TASKS {
            let r = engine.actor_ref::<Solo>(key);
            calls.push(
                engine.spawn_on((t % u64::from(SHARDS)) as u16, move || async move {
                    let mut at = Vec::new();
                    for _ in 0..PER_CALLER {
                        at.push(r.ask(Hit(round)).await.expect("hit").1);
                    }
                    at
                }),
            );
        }
        let r = engine.actor_ref::<Solo>(key);
        let outside = std::thread::spawn(move || {
            (0..PER_CALLER)
                .map(|_| r.ask_blocking(Hit(round)).expect("hit").1)
                .collect::<Vec<_>>()
        });
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut at: Vec<u16> = Vec::new();
            for c in calls {
                at.extend(c.join().expect("caller"));
            }
            at.extend(outside.join().expect("outside caller"));
            let _ = done_tx.send(at);
        });
        let at = within(Duration::from_secs(30), "the callers", done);
        assert!(
            at.windows(2).all(|w| w[0] == w[1]),
            "round {round}: every call ran on one shard, got {at:?}"
        );
        let (n, _) = block_on(engine.actor_ref::<Solo>(key).ask(Hit(round))).expect("count");
        assert_eq!(
            n,
            (TASKS + 1) * PER_CALLER + 1,
            "round {round}: one activation saw every call"
        );
        assert_eq!(
            BUILT[round].load(Ordering::SeqCst),
            1,
            "round {round}: activations built"
        );
    }
    assert_eq!(
        OVERLAPS.load(Ordering::SeqCst),
        0,
        "two activations ran turns at once"
    );
    engine.shutdown();
}

// ---- a fixed node

fn two_nodes(policy_on_2: PlacementPolicy) -> Vec<Engine> {
    use quark_net::{ClusterConfig, MemberAddr, Membership, PeerRole};
    let ls: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let members = Membership::from_config(&ClusterConfig {
        cluster_id: "placement".into(),
        nodes: ls
            .iter()
            .enumerate()
            .map(|(i, l)| MemberAddr {
                id: i as u64 + 1,
                addr: l.local_addr().expect("bound").to_string(),
            })
            .collect(),
    })
    .expect("membership");
    ls.into_iter()
        .enumerate()
        .map(|(i, l)| {
            let node = i as u64 + 1;
            let mut net = quark_shard::NetConfig::new(node, PeerRole::Member, members.clone());
            net.listener = Some(Arc::new(l));
            let policy = if node == 2 {
                policy_on_2
            } else {
                PlacementPolicy::Node(2)
            };
            EngineBuilder::new(EngineConfig {
                net: Some(net),
                ..config()
            })
            .register(where_type::<3>(node).placement(policy))
            .remote::<Where<3>, Here>()
            .start()
            .expect("engine starts")
        })
        .collect()
}

/// Asks `Here` from outside `engine` until the link is up (the first ones may fail while it
/// connects).
fn ask_when_up(engine: &Engine, key: u64) -> (u64, u16, u64) {
    let r = engine.actor_ref::<Where<3>>(key);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match r.ask_blocking(Here) {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "key {key}: never answered: {e}"),
        }
        std::thread::yield_now();
    }
}

/// A type placed on node 2: every id runs there, whether asked on node 1 (its references
/// address node 2) or on node 2, and whichever node its hash names.
#[test]
fn a_fixed_node_runs_every_id_whoever_asks() {
    let nodes = two_nodes(PlacementPolicy::Node(2));
    for key in 0..40u64 {
        assert_eq!(nodes[0].actor_ref::<Where<3>>(key).remote_node(), Some(2));
        assert_eq!(nodes[1].actor_ref::<Where<3>>(key).remote_node(), None);
        let (node, _, n) = ask_when_up(&nodes[0], key);
        assert_eq!((node, n), (2, 1), "key {key}, asked on node 1");
        let (node, _, n) = ask_when_up(&nodes[1], key);
        assert_eq!((node, n), (2, 2), "key {key}, asked on node 2");
    }
    for n in nodes {
        n.shutdown();
    }
}

/// A message that reaches a node other than the fixed one (a sender that addresses by hash,
/// as a client does: here node 2's references, its type registered without the policy) is
/// sent on by the actor's home shard there, which records the place.
#[test]
fn a_fixed_node_type_is_sent_on_by_the_hash_home() {
    let nodes = two_nodes(PlacementPolicy::Hash);
    let keys: Vec<u64> = (0..2_000u64)
        .filter(|k| nodes[1].actor_ref::<Where<3>>(*k).remote_node() == Some(1))
        .take(20)
        .collect();
    assert_eq!(keys.len(), 20, "some keys hash to node 1");
    for &key in &keys {
        let (node, _, n) = ask_when_up(&nodes[1], key);
        assert_eq!((node, n), (2, 1), "key {key}: sent on to node 2 by node 1");
        let (node, _, n) = ask_when_up(&nodes[0], key);
        assert_eq!((node, n), (2, 2), "key {key}: node 1's own reference");
        let p = nodes[0]
            .placement(&id_of::<Where<3>>(key))
            .expect("placement");
        assert_eq!(p.node, 2, "key {key}: node 1's directory names node 2");
    }
    for n in nodes {
        n.shutdown();
    }
}
