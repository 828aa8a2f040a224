//! Durable-state actors move between nodes (docs/MIGRATION.md, "Durable actors between
//! nodes"): two real nodes (TOML configs, loopback, a data directory each). The records go to
//! the target node's log durably, then the home writes a place record naming that node, so a
//! restart of both nodes finds each actor on one node only, with its latest state.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod ports;
use ports::free_addrs;

use quark::outbox::{DurableState, Save};
use quark::{block_on, Actor, ActorId, ActorKey, Context, Handler, Message, Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Vault {
    balance: i64,
}
impl Actor for Vault {
    const TYPE_NAME: &'static str = "mdn-vault";
}
impl DurableState for Vault {
    fn initial(_: &ActorKey) -> Self {
        Vault::default()
    }
}

/// A second type, for the crash test alone (its seam is per type).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Safe {
    balance: i64,
}
impl Actor for Safe {
    const TYPE_NAME: &'static str = "mdn-safe";
}
impl DurableState for Safe {
    fn initial(_: &ActorKey) -> Self {
        Safe::default()
    }
}

/// Adds and saves; replies the saved version.
#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Put(i64);
impl Message for Put {
    type Reply = Result<u64, String>;
}
impl quark::WireMessage for Put {
    const WIRE_NAME: &'static str = "migrate-durable-nodes.Put";
}
/// The balance.
#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Look;
impl Message for Look {
    type Reply = i64;
}
impl quark::WireMessage for Look {
    const WIRE_NAME: &'static str = "migrate-durable-nodes.Look";
}

macro_rules! handlers {
    ($t:ty) => {
        impl Handler<Put> for $t {
            async fn handle(&mut self, m: Put, ctx: &Context<Self>) -> Result<u64, String> {
                self.balance += m.0;
                ctx.save(self).await.map_err(|e| e.to_string())
            }
        }
        impl Handler<Look> for $t {
            async fn handle(&mut self, _: Look, _: &Context<Self>) -> i64 {
                self.balance
            }
        }
    };
}
handlers!(Vault);
handlers!(Safe);
handlers!(Pulse);

/// A durable type with timers (its own type: the crash seam is per type).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Pulse {
    /// `ONE_SHOT` per one-shot firing plus 1 per interval tick.
    balance: i64,
}
impl Actor for Pulse {
    const TYPE_NAME: &'static str = "mdn-pulse";
}
impl DurableState for Pulse {
    fn initial(_: &ActorKey) -> Self {
        Pulse::default()
    }
}
const ONE_SHOT: i64 = 1_000_000;
/// When the one-shot fired (one process: both nodes write here).
static ONE_SHOT_AT: std::sync::Mutex<Vec<Instant>> = std::sync::Mutex::new(Vec::new());
/// Arms a one-shot (`Tick(ONE_SHOT)` after `.0` ms) and an interval (`Tick(1)` every `.1` ms);
/// answers the instant it armed them.
struct ArmPulse(u64, u64);
impl Message for ArmPulse {
    type Reply = Instant;
}
impl Handler<ArmPulse> for Pulse {
    async fn handle(&mut self, m: ArmPulse, ctx: &Context<Self>) -> Instant {
        ctx.set_timer(Duration::from_millis(m.0), Tick(ONE_SHOT));
        ctx.set_interval(Duration::from_millis(m.1), Tick(1));
        Instant::now()
    }
}
/// A timer's message: crosses nodes (a wire message the target handles for `Pulse`).
#[derive(Clone, quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Tick(i64);
impl Message for Tick {
    type Reply = ();
}
impl quark::WireMessage for Tick {
    const WIRE_NAME: &'static str = "migrate-durable-nodes.Tick";
}
impl Handler<Tick> for Pulse {
    async fn handle(&mut self, m: Tick, ctx: &Context<Self>) {
        if m.0 == ONE_SHOT {
            ONE_SHOT_AT.lock().expect("one-shot").push(Instant::now());
        }
        self.balance += m.0;
        ctx.save(self).await.expect("a tick saves");
    }
}

/// `[[cluster.nodes]]` entries for nodes 1 and 2 on free loopback ports.
fn two_nodes_toml() -> String {
    let mut nodes_toml = String::new();
    for (i, a) in free_addrs(2).iter().enumerate() {
        nodes_toml.push_str(&format!(
            "[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    nodes_toml
}

fn start(id: u64, nodes_toml: &str, dir: &Path, version: &str) -> Node {
    let text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\nmigration_timeout_ms = 2000\n\
         app_version = \"{version}\"\n\
         [log]\ndata_dir = {:?}\nsegment_bytes = 4194304\n\
         [cluster]\ncluster_id = \"mdn\"\nnode_id = {id}\n{nodes_toml}",
        dir.to_str().expect("a UTF-8 temp path")
    );
    Node::builder()
        .config(NodeConfig::from_toml(&text, "mdn.toml").expect("config"))
        .register(quark::outbox::durable_state::<Vault>())
        .register(quark::outbox::durable_state::<Safe>())
        .remote::<Vault, Put>()
        .remote::<Vault, Look>()
        .remote::<Safe, Put>()
        .remote::<Safe, Look>()
        .register(quark::outbox::durable_state::<Pulse>())
        .remote::<Pulse, Look>()
        .remote::<Pulse, Tick>()
        .start()
        .expect("node starts")
}

/// Two nodes on their own data directories, with their links up (node 2 reached node 1 and
/// back).
struct Pair {
    n1: Node,
    n2: Node,
}

fn pair(toml: &str, d1: &Path, d2: &Path) -> Pair {
    pair_versions(toml, d1, d2, "1")
}

/// [`pair`] with node 1 of application version `v1` (node 2: "1").
fn pair_versions(toml: &str, d1: &Path, d2: &Path, v1: &str) -> Pair {
    let n1 = start(1, toml, d1, v1);
    let n2 = start(2, toml, d2, "1");
    let p = Pair { n1, n2 };
    // Every shard's link, both ways: a Look from each node, for an id of each shard homed on
    // the other node (each goes out through its hash shard's link).
    let end = Instant::now() + Duration::from_secs(20);
    for (from, other) in [(&p.n2, 1u64), (&p.n1, 2u64)] {
        for shard in 0..2u16 {
            let probe = (1_000_000..u64::MAX)
                .find(|k| {
                    from.actor_ref::<Vault>(*k).remote_node() == Some(other)
                        && from.handle().shard_of(&id::<Vault>(*k)) == shard
                })
                .expect("some id is homed there");
            while block_on(from.actor_ref::<Vault>(probe).ask(Look)).is_err() {
                assert!(Instant::now() < end, "the nodes never reached each other");
                std::thread::yield_now();
            }
        }
    }
    p
}

/// `n` keys whose static home is node 1 (seen from `node`).
fn keys_homed_on_1<A: Actor>(node: &Node, n: usize) -> Vec<u64> {
    (0..100_000u64)
        .filter(|k| node.actor_ref::<A>(*k).remote_node() == Some(1))
        .take(n)
        .collect()
}

/// `node.migrate_to_node`, retried while the link of the actor's home shard to the target is
/// not up yet (`NodeUnavailable`: nothing moved), for at most 20 s.
fn move_to(
    node: &Node,
    id: &ActorId,
    to: u64,
) -> Result<quark_shard::Moved, quark_shard::MigrateError> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match node.migrate_to_node(id, to) {
            Err(quark_shard::MigrateError::NodeUnavailable { .. }) if Instant::now() < end => {
                std::thread::yield_now()
            }
            r => return r,
        }
    }
}

fn id<A: Actor>(key: u64) -> ActorId {
    ActorId::new(A::TYPE_NAME, key)
}

fn put<A: Actor + Handler<Put>>(node: &Node, key: u64, n: i64) -> u64 {
    block_on(node.actor_ref::<A>(key).ask(Put(n)))
        .unwrap_or_else(|e| panic!("key {key}: ask: {e}"))
        .unwrap_or_else(|e| panic!("key {key}: save: {e}"))
}

fn look<A: Actor + Handler<Look>>(node: &Node, key: u64) -> i64 {
    block_on(node.actor_ref::<A>(key).ask(Look)).unwrap_or_else(|e| panic!("key {key}: {e}"))
}

/// True if `node` has a live activation of `A`'s `key`.
fn active<A: Actor>(node: &Node, key: u64) -> bool {
    let q = quark_shard::ActorQuery {
        actor_type: Some(A::TYPE_NAME.to_owned()),
        limit: 1000,
        ..Default::default()
    };
    let page = node.actors(&q).expect("actor listing");
    page.rows.iter().any(|r| r.key == ActorKey::from(key))
}

/// Actors homed on node 1 saved there, moved to node 2 (some of them back again), saved
/// again through both nodes; then both nodes restart on their directories: each actor answers
/// from both nodes with its latest state and version, is active on exactly one node (the one
/// it was moved to last), and keeps saving there. Node 1 comes back with a newer version, so
/// node 2's member view has changed and it checks where requests belong. Fails with the
/// home's node place record not written (after the restart the home activates its own older
/// copy: the balance of before the move) and with the forwarded-by-home marker ignored (node
/// 2 sends a message back to the static home, which sends it on again: the asks time out).
#[test]
fn a_durable_actor_moved_between_nodes_restarts_on_one_node_with_its_latest_state() {
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let toml = two_nodes_toml();
    // key -> (node it lives on, balance, version)
    let mut want = std::collections::HashMap::new();
    let keys;
    {
        let p = pair(&toml, d1.path(), d2.path());
        keys = keys_homed_on_1::<Vault>(&p.n2, 12);
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(put::<Vault>(&p.n1, k, 5), 1, "key {k}: first save");
            let m = move_to(&p.n1, &id::<Vault>(k), 2).expect("move to node 2");
            assert_eq!((m.from_node, m.to_node), (1, 2));
            assert!(m.bytes > 0, "key {k}: its records travelled: {m:?}");
            assert_eq!(
                put::<Vault>(&p.n2, k, 6),
                2,
                "key {k}: saved on node 2, sent from 2"
            );
            assert_eq!(put::<Vault>(&p.n1, k, 1), 3, "key {k}: sent from 1");
            let mut at = 2;
            if i % 3 == 0 {
                move_to(&p.n1, &id::<Vault>(k), 1).expect("move back");
                assert_eq!(put::<Vault>(&p.n2, k, 1), 4, "key {k}: back home");
                at = 1;
            }
            let (balance, version) = if at == 1 { (13, 4) } else { (12, 3) };
            want.insert(k, (at, balance, version));
            assert!(active::<Vault>(if at == 1 { &p.n1 } else { &p.n2 }, k));
            assert!(!active::<Vault>(if at == 1 { &p.n2 } else { &p.n1 }, k));
        }
        p.n1.shutdown();
        p.n2.shutdown();
    }
    // Node 1 comes back with a newer version: node 2's member view changes, so node 2 checks
    // where requests belong (a durable type's static node is node 1) and must recognise
    // what node 1 sends on to it.
    let p = pair_versions(&toml, d1.path(), d2.path(), "2");
    for &k in &keys {
        let (at, balance, version) = want[&k];
        assert_eq!(
            look::<Vault>(&p.n2, k),
            balance,
            "key {k} via node 2 after the restart"
        );
        assert_eq!(
            look::<Vault>(&p.n1, k),
            balance,
            "key {k} via node 1 after the restart"
        );
        let (here, other) = if at == 1 {
            (&p.n1, &p.n2)
        } else {
            (&p.n2, &p.n1)
        };
        assert!(active::<Vault>(here, k), "key {k}: active on node {at}");
        assert!(
            !active::<Vault>(other, k),
            "key {k}: active on the other node too"
        );
        assert_eq!(
            put::<Vault>(&p.n2, k, 1),
            version + 1,
            "key {k}: keeps saving"
        );
        let placed = p.n1.placement(&id::<Vault>(k)).expect("placement");
        assert_eq!(
            placed.node, at,
            "key {k}: the home's directory after the restart"
        );
    }
    p.n1.shutdown();
    p.n2.shutdown();
}

/// Moves to node 2 that stop right after node 2's durable write (the crash seam: node 2
/// never answers, so the home never writes its place record and gives the move up at its
/// deadline), then both nodes stop and restart on their directories (on disk, the state a
/// crash of either node at that point leaves): each actor runs on node 1 only, with its
/// latest state (node 2's copy is never loaded); a real move then supersedes that copy and
/// survives the next restart. Fails with the home's node place record not written (the last
/// restart finds the state from before the real move).
#[test]
fn a_stop_in_the_middle_of_a_move_between_nodes_leaves_one_live_copy() {
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let toml = two_nodes_toml();
    let keys;
    {
        let p = pair(&toml, d1.path(), d2.path());
        keys = keys_homed_on_1::<Safe>(&p.n2, 4);
        let before = quark_shard::stop_log_moves_after_copy(Some(Safe::TYPE_NAME));
        for &k in &keys {
            assert_eq!(put::<Safe>(&p.n1, k, 7), 1);
            assert_eq!(put::<Safe>(&p.n2, k, 3), 2);
        }
        // The moves at once, each on a thread: each ends at its deadline (2 s) unanswered.
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = keys
                .iter()
                .map(|&k| {
                    let n1 = &p.n1;
                    s.spawn(move || move_to(n1, &id::<Safe>(k), 2))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("a move thread"))
                .collect()
        });
        for r in &results {
            assert!(r.is_err(), "a move stopped at the seam completed: {r:?}");
        }
        let stopped = quark_shard::stop_log_moves_after_copy(None) - before;
        assert_eq!(
            stopped,
            keys.len() as u64,
            "every move reached the seam: {results:?}"
        );
        // The actor was not given up: it still runs on node 1 with its state.
        for &k in &keys {
            assert_eq!(
                put::<Safe>(&p.n2, k, 0),
                3,
                "key {k}: on node 1 after the stop"
            );
        }
        p.n1.shutdown();
        p.n2.shutdown();
    }
    {
        let p = pair(&toml, d1.path(), d2.path());
        for &k in &keys {
            assert_eq!(look::<Safe>(&p.n2, k), 10, "key {k}: its latest state");
            assert!(active::<Safe>(&p.n1, k), "key {k}: on node 1");
            assert!(!active::<Safe>(&p.n2, k), "key {k}: also on node 2");
            assert_eq!(put::<Safe>(&p.n1, k, 1), 4, "key {k}: latest version");
            move_to(&p.n1, &id::<Safe>(k), 2).expect("a real move");
            assert_eq!(put::<Safe>(&p.n1, k, 1), 5, "key {k}: moved");
            assert!(active::<Safe>(&p.n2, k) && !active::<Safe>(&p.n1, k));
        }
        p.n1.shutdown();
        p.n2.shutdown();
    }
    let p = pair(&toml, d1.path(), d2.path());
    for &k in &keys {
        assert_eq!(look::<Safe>(&p.n1, k), 12, "key {k} after the restart");
        assert!(
            active::<Safe>(&p.n2, k) && !active::<Safe>(&p.n1, k),
            "key {k}: on node 2 only"
        );
    }
    p.n1.shutdown();
    p.n2.shutdown();
}

/// Four threads (two per node) deposit into one durable actor without pause while it moves
/// between the nodes 20 times: every acknowledged save is kept (the balance and the version
/// equal the acknowledged deposits, also after a restart of both nodes).
#[test]
fn saves_under_traffic_survive_twenty_moves_between_nodes_and_a_restart() {
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let toml = two_nodes_toml();
    let key;
    let acked = Arc::new(AtomicU64::new(0));
    {
        let p = pair(&toml, d1.path(), d2.path());
        key = keys_homed_on_1::<Vault>(&p.n2, 1)[0];
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = if t % 2 == 0 {
                    p.n1.handle()
                } else {
                    p.n2.handle()
                };
                let (stop, acked) = (stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut last = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let v = block_on(h.actor_ref::<Vault>(key).ask(Put(1)))
                            .unwrap_or_else(|e| panic!("thread {t}: {e}"))
                            .unwrap_or_else(|e| panic!("thread {t}: save: {e}"));
                        assert!(v > last, "thread {t}: version {v} after {last}");
                        last = v;
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for i in 0..20 {
            let to = if i % 2 == 0 { 2 } else { 1 };
            let m = move_to(&p.n1, &id::<Vault>(key), to).expect("move");
            assert_eq!(m.to_node, to);
            // Some deposits between moves.
            let seen = acked.load(Ordering::Relaxed);
            let end = Instant::now() + Duration::from_secs(20);
            while acked.load(Ordering::Relaxed) < seen + 8 {
                assert!(Instant::now() < end, "deposits stalled after move {i}");
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("a depositing thread");
        }
        let n = acked.load(Ordering::Relaxed) as i64;
        assert_eq!(
            look::<Vault>(&p.n2, key),
            n,
            "every acknowledged deposit is kept"
        );
        p.n1.shutdown();
        p.n2.shutdown();
    }
    let p = pair(&toml, d1.path(), d2.path());
    let n = acked.load(Ordering::Relaxed);
    assert_eq!(look::<Vault>(&p.n2, key), n as i64, "after the restart");
    assert_eq!(
        put::<Vault>(&p.n1, key, 0),
        n + 1,
        "the version after the restart"
    );
    assert!(
        !active::<Vault>(&p.n2, key) && active::<Vault>(&p.n1, key),
        "back on node 1"
    );
    p.n1.shutdown();
    p.n2.shutdown();
}

/// A durable actor's timers move with it between nodes: a one-shot set on node 1 fires on node
/// 2 when it was due (1.5 s after it was set, not re-armed at the move), once; the interval
/// ticks on node 2 without a message to the actor (its timers activate it there), never again
/// on node 1; every tick is in the saved state once. Fails with the timers cancelled at a move
/// between nodes (the one-shot never fires).
#[test]
fn a_durable_actors_timers_move_with_it_between_nodes() {
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let toml = two_nodes_toml();
    let p = pair(&toml, d1.path(), d2.path());
    let k = keys_homed_on_1::<Pulse>(&p.n2, 1)[0];
    let due = Duration::from_millis(1500);
    let t0 = block_on(p.n1.actor_ref::<Pulse>(k).ask(ArmPulse(1500, 100))).expect("arm");
    let until = |what: &str, f: &dyn Fn(i64) -> bool| {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let b = look::<Pulse>(&p.n1, k);
            if f(b) {
                return b;
            }
            assert!(Instant::now() < end, "{what}: balance {b}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    until("two ticks on node 1", &|b| b >= 2);
    move_to(&p.n1, &id::<Pulse>(k), 2).expect("move to node 2");
    let moved_at = Instant::now();
    assert!(
        moved_at + Duration::from_millis(200) < t0 + due,
        "the move ended {:?} after the timers were set: too late to tell (rerun)",
        moved_at - t0
    );
    // No message to the actor: the timers alone activate it on node 2.
    let end = Instant::now() + Duration::from_secs(20);
    while !active::<Pulse>(&p.n2, k) {
        assert!(
            Instant::now() < end,
            "the timers never activated the actor on node 2"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let b = until("the one-shot", &|b| b >= ONE_SHOT);
    let at = ONE_SHOT_AT.lock().expect("one-shot").clone();
    assert_eq!(at.len(), 1, "the one-shot fires once");
    let late = at[0] - t0;
    assert!(
        late + Duration::from_millis(1) >= due && late <= due + Duration::from_millis(250),
        "the one-shot fires when it was due ({due:?} after it was set): after {late:?}"
    );
    // About 15 periods by the one-shot: no tick lost or doubled across the move.
    assert!(
        (12..=16).contains(&(b - ONE_SHOT)),
        "{} ticks by the one-shot",
        b - ONE_SHOT
    );
    let b = until("more ticks", &|x| x >= b + 3);
    assert!(active::<Pulse>(&p.n2, k), "active on node 2");
    assert!(!active::<Pulse>(&p.n1, k), "not active on node 1");
    assert_eq!(
        look::<Pulse>(&p.n2, k) / ONE_SHOT,
        1,
        "one one-shot in the state"
    );
    assert!(b > ONE_SHOT);
    p.n1.shutdown();
    p.n2.shutdown();
}
