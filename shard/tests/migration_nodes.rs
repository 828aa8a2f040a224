//! Live migration between nodes (docs/MIGRATION.md, "Moves between nodes"): two real nodes
//! over loopback; senders on both nodes ask one actor while it moves back and forth between
//! them: nothing lost, nothing doubled, per-sender FIFO, state intact; a move to a stopped
//! node is refused and the actor keeps running where it was.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_shard::{
    Actor, ActorId, ActorType, Context, Engine, EngineBuilder, EngineConfig, Handler, Message,
    MigrateError, ShardSpec,
};

/// Checks each sender's sequence numbers; its state moves between nodes as bytes.
#[derive(Default)]
struct Ledger {
    last: HashMap<u32, u64>,
    total: u64,
    faults: u64,
}
impl Actor for Ledger {
    const TYPE_NAME: &'static str = "mig-ledger";
}
impl Ledger {
    fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.total.to_le_bytes());
        b.extend_from_slice(&self.faults.to_le_bytes());
        for (s, l) in &self.last {
            b.extend_from_slice(&u64::from(*s).to_le_bytes());
            b.extend_from_slice(&l.to_le_bytes());
        }
        b
    }
    fn from_bytes(b: &[u8]) -> Ledger {
        let w: Vec<u64> = b
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ledger {
            total: w[0],
            faults: w[1],
            last: w[2..]
                .chunks_exact(2)
                .map(|p| (p[0] as u32, p[1]))
                .collect(),
        }
    }
}

#[derive(quark_net::rkyv::Archive, quark_net::rkyv::Serialize, quark_net::rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Seq {
    sender: u32,
    seq: u64,
}
impl Message for Seq {
    /// (messages handled in all, faults seen: gaps, repeats, reorders)
    type Reply = (u64, u64);
}
impl quark_net::WireMessage for Seq {
    const WIRE_NAME: &'static str = "migration-nodes-test.Seq";
}
impl Handler<Seq> for Ledger {
    async fn handle(&mut self, m: Seq, _: &Context<Self>) -> (u64, u64) {
        if m.seq > 0 {
            let last = self.last.entry(m.sender).or_insert(0);
            if m.seq != *last + 1 {
                self.faults += 1;
            }
            *last = m.seq;
            self.total += 1;
        }
        (self.total, self.faults)
    }
}

/// A type whose state moves only as a box (same process).
struct Boxed;
impl Actor for Boxed {
    const TYPE_NAME: &'static str = "mig-boxed";
}

fn nodes(n: usize) -> Vec<Engine> {
    nodes_with_versions(&vec![""; n])
}

fn nodes_with_versions(versions: &[&str]) -> Vec<Engine> {
    let n = versions.len();
    use quark_net::{ClusterConfig, MemberAddr, Membership};
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let members = Membership::from_config(&ClusterConfig {
        cluster_id: "migration-nodes".into(),
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
        .map(|(i, l)| node(i as u64 + 1, versions[i], &members, l))
        .collect()
}

/// Node `id` of `members`, listening on `l`, of application version `version`.
fn node(
    id: u64,
    version: &str,
    members: &quark_net::Membership,
    l: std::net::TcpListener,
) -> Engine {
    let mut net = quark_shard::NetConfig::new(id, quark_net::PeerRole::Member, members.clone());
    net.listener = Some(Arc::new(l));
    EngineBuilder::new(EngineConfig {
        shards: ShardSpec::Count(2),
        idle_spin: Duration::from_micros(20),
        ask_timeout: Duration::from_secs(10),
        pin_threads: false,
        net: Some(net),
        app_version: version.to_owned(),
        ..EngineConfig::default()
    })
    .register(
        ActorType::new(|_| Ledger::default())
            .migratable(|l: &Ledger| l.to_bytes(), |_, b| Ok(Ledger::from_bytes(b))),
    )
    .register(ActorType::new(|_| Boxed).movable())
    .remote::<Ledger, Seq>()
    .start()
    .expect("engine starts")
}

/// A node that drained and left restarts and joins under traffic from the peer
/// (docs/MIGRATION.md, "Rolling upgrades"): the peer ranks it at once and its senders address
/// it while the peer still hands the actors over; the joining node holds those first
/// messages until the hand-over ended, so no actor starts afresh there: every reply has no
/// fault (FIFO per sender, no gap, no repeat), and every actor's total is the count of its
/// acknowledged asks. Newer, it takes every actor; of the same version, its share (and when
/// it drains again, the peer forgets it had sent them there).
#[test]
fn a_joining_node_holds_first_messages_until_the_peers_handed_over() {
    join_under_traffic("2.0");
    join_under_traffic("1.0");
}

fn join_under_traffic(version: &str) {
    use quark_net::{ClusterConfig, MemberAddr, Membership};
    let ls: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let addrs: Vec<std::net::SocketAddr> =
        ls.iter().map(|l| l.local_addr().expect("bound")).collect();
    let members = Membership::from_config(&ClusterConfig {
        cluster_id: "migration-nodes".into(),
        nodes: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| MemberAddr {
                id: i as u64 + 1,
                addr: a.to_string(),
            })
            .collect(),
    })
    .expect("membership");
    let mut ls = ls.into_iter();
    let n1 = node(1, "1.0", &members, ls.next().expect("listener 1"));
    let n2 = node(2, "1.0", &members, ls.next().expect("listener 2"));
    const ACTORS: u64 = 200;
    let e1 = n1.handle();
    // Every actor active, on either node (the links come up meanwhile).
    let deadline = Instant::now() + Duration::from_secs(20);
    for k in 0..ACTORS {
        while e1
            .actor_ref::<Ledger>(k)
            .ask_blocking(Seq { sender: 0, seq: 0 })
            .is_err()
        {
            assert!(Instant::now() < deadline, "key {k}: no answer");
            std::thread::yield_now();
        }
    }
    // Node 2 drains and leaves: node 1 is the home of every actor, and holds them all.
    let report = n2.drain(Duration::from_secs(20));
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.moved > 50, "{report:?}");
    n2.shutdown();
    for k in 0..ACTORS {
        assert_eq!(n1.actor_ref::<Ledger>(k).remote_node(), None);
        assert_eq!(
            e1.actor_ref::<Ledger>(k)
                .ask_blocking(Seq { sender: 0, seq: 0 })
                .map(|r| r.1),
            Ok(0)
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    const SENDERS: u32 = 4;
    let handles: Vec<_> = (1..=SENDERS)
        .map(|s| {
            let (e, stop, done) = (n1.handle(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seq = vec![0u64; ACTORS as usize];
                let mut i = s as usize;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 1) % ACTORS as usize;
                    seq[i] += 1;
                    // A new reference per call: it follows the member set.
                    let (_, faults) = e
                        .actor_ref::<Ledger>(i as u64)
                        .ask_blocking(Seq {
                            sender: s,
                            seq: seq[i],
                        })
                        .unwrap_or_else(|e| panic!("sender {s} key {i}: {e}"));
                    assert_eq!(faults, 0, "key {i}: started afresh or reordered");
                    done.fetch_add(1, Ordering::Relaxed);
                }
                seq
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let wait = |n: u64| {
        let from = done.load(Ordering::Relaxed);
        while done.load(Ordering::Relaxed) < from + n {
            assert!(Instant::now() < deadline, "senders stalled");
            std::thread::yield_now();
        }
    };
    wait(500);
    // Node 2 comes back: it is a home again once node 1 processed its join.
    let n2 = loop {
        match std::net::TcpListener::bind(addrs[1]) {
            Ok(l) => break node(2, version, &members, l),
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind {}: {e}", addrs[1]);
                std::thread::yield_now();
            }
        }
    };
    while !(0..ACTORS).any(|k| n1.actor_ref::<Ledger>(k).remote_node() == Some(2)) {
        assert!(
            Instant::now() < deadline,
            "node 1 never ranked node 2 again"
        );
        std::thread::yield_now();
    }
    wait(500);
    stop.store(true, Ordering::Relaxed);
    let seqs: Vec<Vec<u64>> = handles
        .into_iter()
        .map(|h| h.join().expect("sender"))
        .collect();
    for k in 0..ACTORS {
        let sent: u64 = seqs.iter().map(|s| s[k as usize]).sum();
        assert_eq!(
            n1.actor_ref::<Ledger>(k)
                .ask_blocking(Seq { sender: 0, seq: 0 }),
            Ok((sent, 0)),
            "key {k}: its total is its acknowledged asks"
        );
    }
    if version == "1.0" {
        // Node 2 drains again: its actors come back to node 1, which forgets that it had sent
        // them to node 2 (an entry naming node 2 would send their next activation there).
        let report = n2.drain(Duration::from_secs(20));
        assert_eq!(report.failed, 0, "{report:?}");
        assert!(report.moved > 50, "{report:?}");
        for k in 0..ACTORS {
            let id = ActorId {
                type_name: Ledger::TYPE_NAME,
                key: k.into(),
            };
            assert_eq!(n1.placement(&id).expect("placement").node, 1, "key {k}");
        }
    }
    n2.shutdown();
    n1.shutdown();
}

/// A key node 1 owns (its home node).
fn key_on_node_1(nodes: &[Engine]) -> u64 {
    (0..10_000u64)
        .find(|k| nodes[1].actor_ref::<Ledger>(*k).remote_node() == Some(1))
        .expect("some key lands on node 1")
}

/// Waits until every link is up (a first ask from each node answers).
fn warm_up(nodes: &[Engine], key: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in nodes {
        let r = n.actor_ref::<Ledger>(key);
        loop {
            match r.ask_blocking(Seq { sender: 0, seq: 0 }) {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "no answer: {e}"),
            }
            std::thread::yield_now();
        }
    }
}

#[test]
fn senders_on_two_nodes_while_the_actor_moves_between_them() {
    let nodes = nodes(2);
    let key = key_on_node_1(&nodes);
    warm_up(&nodes, key);
    // The links from node 1 to node 2 are up on every shard once node 2's traffic flows.
    let id = ActorId {
        type_name: Ledger::TYPE_NAME,
        key: key.into(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    const SENDERS: u32 = 6;
    let handles: Vec<_> = (1..=SENDERS)
        .map(|s| {
            let r = nodes[(s % 2) as usize].actor_ref::<Ledger>(key);
            let stop = stop.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) || seq < 50 {
                    seq += 1;
                    let (_, faults) = r
                        .ask_blocking(Seq { sender: s, seq })
                        .unwrap_or_else(|e| panic!("sender {s} ask {seq}: {e}"));
                    assert_eq!(faults, 0, "sender {s} ask {seq}: FIFO broken");
                    done.fetch_add(1, Ordering::Relaxed);
                }
                seq
            })
        })
        .collect();
    const MOVES: u32 = 100;
    let mut moved = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while moved < MOVES {
        // Traffic between every two moves.
        let before = done.load(Ordering::Relaxed);
        while done.load(Ordering::Relaxed) < before + u64::from(SENDERS) {
            assert!(Instant::now() < deadline, "senders stalled at move {moved}");
            std::thread::yield_now();
        }
        let to = if moved % 2 == 0 { 2 } else { 1 };
        match nodes[0].migrate_to_node(&id, to) {
            Ok(m) => {
                assert_eq!((m.from_node, m.to_node), (3 - to, to));
                let p = nodes[0].placement(&id).expect("placement");
                assert_eq!(p.node, to, "the home's directory names the node");
                moved += 1;
            }
            // A link that reconnects under load: retried (the actor stays where it was).
            Err(MigrateError::NodeUnavailable { .. }) => {}
            Err(e) => panic!("move {moved} to node {to}: {e}"),
        }
        assert!(Instant::now() < deadline, "moves did not finish");
    }
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = handles.into_iter().map(|h| h.join().expect("sender")).sum();
    let (total, faults) = nodes[1]
        .actor_ref::<Ledger>(key)
        .ask_blocking(Seq { sender: 0, seq: 0 })
        .expect("final ask");
    assert_eq!(faults, 0, "no gap, repeat or reorder");
    assert_eq!(
        total, sent,
        "every message handled exactly once, state kept"
    );
    let forwarded: u64 = nodes[0]
        .stats()
        .expect("stats")
        .iter()
        .map(|s| s.migrate_forwarded)
        .sum();
    eprintln!(
        "{sent} asks from {SENDERS} senders, {MOVES} moves, {forwarded} forwarded by the home"
    );
    assert!(forwarded > 0, "messages went through the home to node 2");
    for n in nodes {
        n.shutdown();
    }
}

#[test]
fn a_move_to_a_stopped_node_is_refused_and_the_actor_stays() {
    let mut nodes = nodes(2);
    let key = key_on_node_1(&nodes);
    warm_up(&nodes, key);
    let id = ActorId {
        type_name: Ledger::TYPE_NAME,
        key: key.into(),
    };
    let r = nodes[0].actor_ref::<Ledger>(key);
    for seq in 1..=10 {
        r.ask_blocking(Seq { sender: 1, seq }).expect("ask");
    }
    // A type that moves only as a box is refused, naming the fix.
    let boxed = ActorId {
        type_name: Boxed::TYPE_NAME,
        key: key.into(),
    };
    let e = nodes[0].migrate_to_node(&boxed, 2).expect_err("boxed type");
    assert!(matches!(e, MigrateError::NotSerializable { .. }), "{e}");
    assert!(e.to_string().contains("ActorType::migratable"), "{e}");
    assert!(matches!(
        nodes[0].migrate_to_node(&id, 9),
        Err(MigrateError::NoSuchNode { node: 9, .. })
    ));
    nodes.pop().expect("node 2").shutdown();
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        match nodes[0].migrate_to_node(&id, 2) {
            Err(e @ MigrateError::NodeUnavailable { .. }) => break e,
            // The link has not noticed yet: the transfer is refused by the dead peer's socket.
            Err(MigrateError::NodeMoveAborted { runs_on: 1, .. }) => {}
            other => panic!("move to a stopped node: {other:?}"),
        }
        assert!(Instant::now() < deadline, "the link never went down");
        std::thread::yield_now();
    };
    assert!(e.to_string().contains("stays where it was"), "{e}");
    assert_eq!(nodes[0].placement(&id).expect("placement").node, 1);
    assert_eq!(
        r.ask_blocking(Seq { sender: 1, seq: 11 }),
        Ok((11, 0)),
        "the actor runs on node 1 with its state"
    );
    nodes.pop().expect("node 1").shutdown();
}

/// `Engine::drain` under traffic: senders on the peer keep asking actors homed on the draining
/// node; every active one moves to the peer with its state, a new activation during the drain
/// is placed on the peer, and every ask is answered (the home forwards while it runs).
#[test]
fn a_drain_moves_every_active_actor_to_the_peer_under_traffic() {
    let nodes = nodes(2);
    const ACTORS: u64 = 200;
    let keys: Vec<u64> = (0..100_000u64)
        .filter(|k| nodes[1].actor_ref::<Ledger>(*k).remote_node() == Some(1))
        .take(ACTORS as usize + 1)
        .collect();
    let (fresh, keys) = keys.split_last().expect("keys");
    let keys = Arc::new(keys.to_vec());
    warm_up(&nodes, keys[0]);
    // Every actor active on node 1.
    for k in keys.iter() {
        nodes[0]
            .actor_ref::<Ledger>(*k)
            .ask_blocking(Seq { sender: 0, seq: 0 })
            .expect("activate");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    const SENDERS: u32 = 4;
    let handles: Vec<_> = (1..=SENDERS)
        .map(|s| {
            let e = nodes[1].handle();
            let (stop, done, keys) = (stop.clone(), done.clone(), keys.clone());
            std::thread::spawn(move || {
                let mut seq = vec![0u64; keys.len()];
                let mut i = s as usize;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 1) % keys.len();
                    seq[i] += 1;
                    let (_, faults) = e
                        .actor_ref::<Ledger>(keys[i])
                        .ask_blocking(Seq {
                            sender: s,
                            seq: seq[i],
                        })
                        .unwrap_or_else(|e| panic!("sender {s} key {}: {e}", keys[i]));
                    assert_eq!(faults, 0, "FIFO broken for key {}", keys[i]);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                seq
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::Relaxed) < 200 {
        assert!(
            Instant::now() < deadline,
            "senders stalled before the drain"
        );
        std::thread::yield_now();
    }
    let report = nodes[0].drain(Duration::from_secs(30));
    assert_eq!(
        (report.moved, report.failed, report.left),
        (ACTORS, 0, 0),
        "{report:?}"
    );
    // After the drain node 1 has left (docs/MIGRATION.md, "Rolling upgrades"): a first message
    // for one of its ids activates the actor on the peer, now its home.
    let fresh_id = ActorId {
        type_name: Ledger::TYPE_NAME,
        key: (*fresh).into(),
    };
    assert_eq!(
        nodes[1]
            .actor_ref::<Ledger>(*fresh)
            .ask_blocking(Seq { sender: 9, seq: 1 }),
        Ok((1, 0))
    );
    assert_eq!(nodes[1].placement(&fresh_id).expect("placement").node, 2);
    assert_eq!(nodes[1].actor_ref::<Ledger>(*fresh).remote_node(), None);
    let after = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) < after + 200 {
        assert!(Instant::now() < deadline, "senders stalled after the drain");
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let seqs: Vec<Vec<u64>> = handles
        .into_iter()
        .map(|h| h.join().expect("sender"))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let id = ActorId {
            type_name: Ledger::TYPE_NAME,
            key: (*k).into(),
        };
        assert_eq!(
            nodes[0].placement(&id).expect("placement").node,
            2,
            "key {k}"
        );
        let sent: u64 = seqs.iter().map(|s| s[i]).sum();
        assert_eq!(
            nodes[1]
                .actor_ref::<Ledger>(*k)
                .ask_blocking(Seq { sender: 0, seq: 0 }),
            Ok((sent, 0)),
            "key {k}: every ask handled once, in order, state moved"
        );
    }
    for n in nodes {
        n.shutdown();
    }
}

/// Version-aware homes (docs/MIGRATION.md, "Rolling upgrades"): once the nodes joined (each
/// learned the other's `app_version`), every movable actor's home is the node of the newest
/// version, whichever node the sender is on; a move to the older node is refused with
/// `OlderVersion` (the version its handshake told), and the actor keeps running, with its
/// state, where it was.
#[test]
fn a_move_never_goes_to_an_older_version() {
    for (versions, newest) in [(["2.0", "2.10"], 2u64), (["3.1", "3.0.9"], 1)] {
        let nodes = nodes_with_versions(&versions);
        let older = 3 - newest;
        let home_of = |n: &Engine, k: u64| {
            let r = n.actor_ref::<Ledger>(k);
            r.remote_node().or(n.node_id()).expect("a cluster node")
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(0..50u64).all(|k| nodes.iter().all(|n| home_of(n, k) == newest)) {
            assert!(
                Instant::now() < deadline,
                "{versions:?}: homes never went to the newest node"
            );
            std::thread::yield_now();
        }
        let key = 7u64;
        let id = ActorId {
            type_name: Ledger::TYPE_NAME,
            key: key.into(),
        };
        let home = &nodes[(newest - 1) as usize];
        let r = nodes[(older - 1) as usize].actor_ref::<Ledger>(key);
        for seq in 1..=5 {
            r.ask_blocking(Seq { sender: 1, seq }).expect("ask");
        }
        match home.migrate_to_node(&id, older) {
            Err(e @ MigrateError::OlderVersion { .. }) => {
                let MigrateError::OlderVersion {
                    node,
                    ref version,
                    ref ran_on,
                    runs_on,
                    ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((node, runs_on), (older, newest), "{e}");
                assert_eq!(
                    (version.as_str(), ran_on.as_str()),
                    (
                        versions[(older - 1) as usize],
                        versions[(newest - 1) as usize]
                    )
                );
            }
            other => panic!("{versions:?}: move to the older node: {other:?}"),
        }
        assert_eq!(home.placement(&id).expect("placement").node, newest);
        assert_eq!(r.ask_blocking(Seq { sender: 1, seq: 6 }), Ok((6, 0)));
        for n in nodes {
            n.shutdown();
        }
    }
}

/// Three nodes: the actor (homed on node 1) moves between all of them, including from one
/// remote node straight to another (the home asks node 2 for the state and sends it to node
/// 3), while senders on every node ask it: nothing lost or doubled, FIFO, state intact.
#[test]
fn moves_among_three_nodes_under_traffic() {
    let nodes = nodes(3);
    let key = key_on_node_1(&nodes);
    warm_up(&nodes, key);
    let id = ActorId {
        type_name: Ledger::TYPE_NAME,
        key: key.into(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    const SENDERS: u32 = 6;
    let handles: Vec<_> = (1..=SENDERS)
        .map(|s| {
            let r = nodes[(s % 3) as usize].actor_ref::<Ledger>(key);
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let (_, faults) = r
                        .ask_blocking(Seq { sender: s, seq })
                        .unwrap_or_else(|e| panic!("sender {s} ask {seq}: {e}"));
                    assert_eq!(faults, 0, "sender {s} ask {seq}: FIFO broken");
                    done.fetch_add(1, Ordering::Relaxed);
                }
                seq
            })
        })
        .collect();
    // 2, 3, 1, 3, 2, 1, ...: every pair, both ways, remote to remote included.
    let path = [2u64, 3, 1, 3, 2, 1];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut moved = 0usize;
    while moved < 60 {
        let before = done.load(Ordering::Relaxed);
        while done.load(Ordering::Relaxed) < before + u64::from(SENDERS) {
            assert!(Instant::now() < deadline, "senders stalled at move {moved}");
            std::thread::yield_now();
        }
        let to = path[moved % path.len()];
        match nodes[0].migrate_to_node(&id, to) {
            Ok(m) => {
                assert_eq!(m.to_node, to);
                assert_eq!(nodes[0].placement(&id).expect("placement").node, to);
                moved += 1;
            }
            Err(MigrateError::NodeUnavailable { .. }) => {}
            Err(e) => panic!("move {moved} to node {to}: {e}"),
        }
        assert!(Instant::now() < deadline, "moves did not finish");
    }
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = handles.into_iter().map(|h| h.join().expect("sender")).sum();
    let (total, faults) = nodes[2]
        .actor_ref::<Ledger>(key)
        .ask_blocking(Seq { sender: 0, seq: 0 })
        .expect("final ask");
    assert_eq!(
        (total, faults),
        (sent, 0),
        "exactly once, in order, state kept"
    );
    for n in nodes {
        n.shutdown();
    }
}
