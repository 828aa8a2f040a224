//! Directory entries naming another node are released when the actor deactivates there
//! (docs/MIGRATION.md, "The directory"): two real nodes over loopback; actors moved to node 2
//! idle out there, node 1's directory shrinks to zero, and each next call activates the actor
//! afresh at home; while callers on both nodes call and a mover moves actors to node 2 without
//! pause, no two activations of one id ever run turns at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quark_shard::{
    Actor, ActorId, ActorType, Context, Engine, EngineBuilder, EngineConfig, Handler, Message,
    MigrateError, ShardSpec,
};

/// Turns running now, by key (a second one at once is a double activation).
static IN_TURN: Mutex<Option<HashMap<u64, u32>>> = Mutex::new(None);
static OVERLAPS: AtomicU64 = AtomicU64::new(0);

struct Spot {
    node: u64,
    key: u64,
    hits: u64,
}
impl Actor for Spot {
    const TYPE_NAME: &'static str = "release-nodes-spot";
}

/// Replies `(node it runs on, hits of this activation)`.
#[derive(quark_net::rkyv::Archive, quark_net::rkyv::Serialize, quark_net::rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Hit;
impl Message for Hit {
    type Reply = (u64, u64);
}
impl quark_net::WireMessage for Hit {
    const WIRE_NAME: &'static str = "release-nodes-test.Hit";
}
impl Handler<Hit> for Spot {
    async fn handle(&mut self, _: Hit, ctx: &Context<Self>) -> (u64, u64) {
        {
            let mut g = IN_TURN.lock().expect("in turn");
            let n = g
                .get_or_insert_with(HashMap::new)
                .entry(self.key)
                .or_insert(0);
            if *n > 0 {
                OVERLAPS.fetch_add(1, Ordering::Relaxed);
            }
            *n += 1;
        }
        ctx.sleep(Duration::from_micros(300)).await;
        {
            let mut g = IN_TURN.lock().expect("in turn");
            *g.get_or_insert_with(HashMap::new)
                .entry(self.key)
                .or_insert(1) -= 1;
        }
        self.hits += 1;
        (self.node, self.hits)
    }
}

fn key_of(id: &ActorId) -> u64 {
    match id.key {
        quark_shard::ActorKey::U64(k) => k,
        _ => unreachable!("u64 keys"),
    }
}

fn nodes(idle: Duration) -> Vec<Engine> {
    use quark_net::{ClusterConfig, MemberAddr, Membership};
    let ls: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let members = Membership::from_config(&ClusterConfig {
        cluster_id: "release-nodes".into(),
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
            let id = i as u64 + 1;
            let mut net =
                quark_shard::NetConfig::new(id, quark_net::PeerRole::Member, members.clone());
            net.listener = Some(Arc::new(l));
            EngineBuilder::new(EngineConfig {
                shards: ShardSpec::Count(2),
                idle_spin: Duration::from_micros(20),
                ask_timeout: Duration::from_secs(10),
                pin_threads: false,
                net: Some(net),
                ..EngineConfig::default()
            })
            .register(
                ActorType::new(move |a| Spot {
                    node: id,
                    key: key_of(a),
                    hits: 0,
                })
                .migratable(
                    |s: &Spot| [s.key.to_le_bytes(), s.hits.to_le_bytes()].concat(),
                    move |_, b| {
                        let w = |i: usize| {
                            b.get(i * 8..i * 8 + 8)
                                .and_then(|s| s.try_into().ok())
                                .map(u64::from_le_bytes)
                                .ok_or("16 bytes")
                        };
                        Ok(Spot {
                            node: id,
                            key: w(0)?,
                            hits: w(1)?,
                        })
                    },
                )
                .idle_timeout(idle),
            )
            .remote::<Spot, Hit>()
            .start()
            .expect("engine starts")
        })
        .collect()
}

fn entries(node: &Engine) -> u64 {
    node.stats()
        .expect("stats")
        .iter()
        .map(|s| s.directory_entries)
        .sum()
}

fn hit(node: &Engine, key: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match node.actor_ref::<Spot>(key).ask_blocking(Hit) {
            Ok(r) => return r,
            // Links coming up at the start.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("key {key}: {e}"),
        }
    }
}

fn migrate(node: &Engine, key: u64, to: u64) -> Result<(), MigrateError> {
    let id = ActorId {
        type_name: Spot::TYPE_NAME,
        key: key.into(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match node.migrate_to_node(&id, to) {
            Ok(_) => return Ok(()),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
}

/// 12 actors homed on node 1, moved to node 2, idle out there (50 ms): node 1's directory
/// drops from 12 entries to zero, and each next call (from either node) activates the actor
/// afresh on node 1. Fails with the entries naming another node kept (12 stay).
#[test]
fn entries_naming_another_node_go_when_the_actor_deactivates_there() {
    let nodes = nodes(Duration::from_millis(50));
    let keys: Vec<u64> = (0..10_000u64)
        .filter(|k| nodes[1].actor_ref::<Spot>(*k).remote_node() == Some(1))
        .take(12)
        .collect();
    for &k in &keys {
        assert_eq!(hit(&nodes[1], k), (1, 1), "key {k}: at home");
        migrate(&nodes[0], k, 2).expect("move to node 2");
        assert!(entries(&nodes[0]) >= 1, "key {k}: an entry names node 2");
        assert_eq!(hit(&nodes[0], k), (2, 2), "key {k}: moved with its state");
    }
    let end = Instant::now() + Duration::from_secs(20);
    while entries(&nodes[0]) != 0 {
        assert!(
            Instant::now() < end,
            "entries stay after the actors idled out on node 2: {}",
            entries(&nodes[0])
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for &k in &keys {
        assert_eq!(
            hit(&nodes[1], k),
            (1, 1),
            "key {k}: afresh at home after its deactivation on node 2"
        );
    }
    for n in nodes {
        n.shutdown();
    }
}

/// Actors that idle out after 2 ms, called without pause from threads on both nodes while a
/// mover moves them to node 2 again and again: their entries are released and made again
/// all the time, and never do two activations of one id run turns at once; every call is
/// answered. Ends with the directory empty once they idle out (after one call each: an actor
/// moved while not active has its entry until it activated and idled out on node 2).
#[test]
fn releases_racing_calls_and_moves_never_start_a_second_activation() {
    let nodes = nodes(Duration::from_millis(2));
    // Keys of their own (the turn guard is per key, for the whole test process).
    let keys: Vec<u64> = (50_000..60_000u64)
        .filter(|k| nodes[1].actor_ref::<Spot>(*k).remote_node() == Some(1))
        .take(6)
        .collect();
    for &k in &keys {
        hit(&nodes[0], k);
        hit(&nodes[1], k);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..4)
        .map(|t| {
            let refs: Vec<_> = keys
                .iter()
                .map(|k| (*k, nodes[t % 2].actor_ref::<Spot>(*k)))
                .collect();
            let (stop, calls) = (stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let (k, r) = &refs[i % refs.len()];
                    r.ask_blocking(Hit)
                        .unwrap_or_else(|e| panic!("caller {t} key {k}: {e}"));
                    calls.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    // Gaps of a few ms let the actors idle out between calls.
                    std::thread::sleep(Duration::from_millis((i % 4) as u64));
                }
            })
        })
        .collect();
    let mut moves = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        for &k in &keys {
            match migrate(&nodes[0], k, 2) {
                Ok(()) => moves += 1,
                Err(MigrateError::DeadlineExceeded { .. }) => {}
                Err(e) => panic!("move of {k}: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.join().expect("caller");
    }
    eprintln!("{} calls, {moves} moves", calls.load(Ordering::Relaxed));
    assert!(moves > 20, "moves happened: {moves}");
    assert_eq!(
        OVERLAPS.load(Ordering::Relaxed),
        0,
        "two activations of one id ran turns at once"
    );
    // A last move of an actor that was not active only placed it (it activates on node 2 at
    // its next message): one call each, then they idle out.
    for &k in &keys {
        hit(&nodes[1], k);
    }
    let end = Instant::now() + Duration::from_secs(20);
    while entries(&nodes[0]) != 0 {
        assert!(Instant::now() < end, "entries stay: {}", entries(&nodes[0]));
        std::thread::sleep(Duration::from_millis(5));
    }
    for n in nodes {
        n.shutdown();
    }
}
