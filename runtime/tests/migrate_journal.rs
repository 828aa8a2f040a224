//! Journaled (event-sourced) actors move (docs/MIGRATION.md, "Journaled actors"): their
//! events and snapshots travel as log records, durably at the new place before the home
//! records it; a restart finds one copy with every event once, the hash chain verifies from
//! genesis at the new place (a dry replay), and a projection counts every event once (the
//! copies are not fed again).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

mod ports;
use ports::free_addrs;

use quark::journal::{
    EventMeta, EventSourced, Journal, JournalError, JournalEvent, JournalPolicy, LogPosition,
    Persist, Projection, ProjectionConfig, Subscriptions,
};
use quark::{block_on, Actor, ActorId, ActorKey, Context, Handler, Message, Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(Default)]
struct Tally {
    n: i64,
}
impl Actor for Tally {
    const TYPE_NAME: &'static str = "mj-tally";
}

#[derive(Serialize, Deserialize)]
struct Added(i64);
impl JournalEvent for Added {
    fn type_name(&self) -> &'static str {
        "Added"
    }
}

impl EventSourced for Tally {
    type Event = Added;
    type Snapshot = i64;
    fn initial(_: &ActorKey) -> Self {
        Tally::default()
    }
    fn apply(&mut self, e: &Added) {
        self.n += e.0;
    }
    fn snapshot(&self) -> i64 {
        self.n
    }
    fn restore(_: &ActorKey, n: i64) -> Self {
        Tally { n }
    }
}

/// Persists `Added(.0)`; replies `(version, shard, lsn)` of the write.
#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Add(i64);
impl Message for Add {
    type Reply = Result<(u64, u64, u64), String>;
}
impl quark::WireMessage for Add {
    const WIRE_NAME: &'static str = "migrate-journal.Add";
}
impl Handler<Add> for Tally {
    async fn handle(&mut self, m: Add, ctx: &Context<Self>) -> Result<(u64, u64, u64), String> {
        let p = ctx
            .persist(self, [Added(m.0)])
            .await
            .map_err(|e| e.to_string())?;
        Ok((p.version, u64::from(p.position.shard), p.position.lsn))
    }
}
/// The state.
#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Get;
impl Message for Get {
    type Reply = i64;
}
impl quark::WireMessage for Get {
    const WIRE_NAME: &'static str = "migrate-journal.Get";
}
impl Handler<Get> for Tally {
    async fn handle(&mut self, _: Get, _: &Context<Self>) -> i64 {
        self.n
    }
}

/// Sum per key and events seen.
struct Sums;
impl Projection for Sums {
    const NAME: &'static str = "mj-sums";
    type State = (BTreeMap<String, i64>, u64);
    fn subscriptions() -> Subscriptions<Self> {
        Subscriptions::new().on::<Tally>(
            |s: &mut (BTreeMap<String, i64>, u64), meta: &EventMeta, e: &Added| {
                *s.0.entry(meta.key.to_string()).or_default() += e.0;
                s.1 += 1;
            },
        )
    }
}

fn node(text: String) -> Node {
    Node::builder()
        .config(NodeConfig::from_toml(&text, "mj.toml").expect("config"))
        .register_journaled::<Tally>(JournalPolicy::snapshot_every(4))
        .register_projection::<Sums>(ProjectionConfig::default())
        .remote::<Tally, Add>()
        .remote::<Tally, Get>()
        .start()
        .expect("node starts")
}

fn single(dir: &Path) -> Node {
    node(format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
         [log]\ndata_dir = {:?}\nsegment_bytes = 4194304\n",
        dir.to_str().expect("a UTF-8 temp path")
    ))
}

fn id(key: u64) -> ActorId {
    ActorId::new(Tally::TYPE_NAME, key)
}

fn add(node: &Node, key: u64, n: i64) -> (u64, LogPosition) {
    let (v, shard, lsn) = block_on(node.actor_ref::<Tally>(key).ask(Add(n)))
        .unwrap_or_else(|e| panic!("key {key}: ask: {e}"))
        .unwrap_or_else(|e| panic!("key {key}: persist: {e}"));
    let position = LogPosition {
        shard: shard as u16,
        lsn,
    };
    (v, position)
}

fn get(node: &Node, key: u64) -> i64 {
    block_on(node.actor_ref::<Tally>(key).ask(Get)).unwrap_or_else(|e| panic!("key {key}: {e}"))
}

/// The audit view through `node`: a dry replay from genesis (it checks the hash chain of every
/// event) reaches `version` with every event applied, and the events read back are versions
/// 1..=version once each, summing to `sum`.
fn audit(node: &Node, key: u64, version: u64, sum: i64) {
    let j = Journal::new(node.handle());
    let r = block_on(j.replay::<Tally>(key, quark::journal::At::Latest, |_| {}))
        .unwrap_or_else(|e| panic!("key {key}: replay: {e}"));
    assert_eq!(
        (r.version, r.state, r.events_applied, r.from_snapshot),
        (version, sum, version, 0),
        "key {key}: replay from genesis"
    );
    let evs = block_on(j.events_by_version::<Tally>(key, 1..=u64::MAX))
        .unwrap_or_else(|e| panic!("key {key}: events: {e}"));
    let versions: Vec<u64> = evs.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=version).collect::<Vec<_>>(),
        "key {key}: events once each"
    );
    assert_eq!(evs.iter().map(|e| e.event.0).sum::<i64>(), sum, "key {key}");
}

/// Between the shards of a node: 8 actors with 5 events each (a snapshot every 4), moved to
/// the other shard, 5 more events there, half of them moved back with 2 more; after each step
/// and after a restart: the state has every event once, the audit view reads them at the new
/// place (versions 1..=n, the chain verified from genesis), the projection counts each event
/// once (it fails with the move markers ignored: the copies are fed again), and the actor
/// keeps persisting there. Fails with journaled types registered without a mover
/// (`NotMigratable`).
#[test]
fn journaled_actors_move_between_shards_with_every_event_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = 0..8u64;
    // key -> (events, sum, shard)
    let mut want: BTreeMap<u64, (u64, i64, u16)> = BTreeMap::new();
    let mut last = Vec::new();
    {
        let n = single(dir.path());
        for k in keys.clone() {
            for i in 1..=5 {
                add(&n, k, i);
            }
            let home = n.placement(&id(k)).expect("placement").home;
            let m = n.migrate(&id(k), 1 - home).expect("move");
            assert!(m.bytes > 0, "key {k}: its journal travelled: {m:?}");
            let mut sum = 15;
            for i in 1..=5 {
                let (v, p) = add(&n, k, 10 * i);
                assert_eq!(v, 5 + i as u64, "key {k}: versions continue after the move");
                assert_eq!(p.shard, 1 - home, "key {k}: persisted on its new shard");
                last.push(p);
                sum += 10 * i;
            }
            let mut at = (10, sum, 1 - home);
            if k % 2 == 0 {
                n.migrate(&id(k), home).expect("move back");
                for _ in 0..2 {
                    let (_, p) = add(&n, k, 1);
                    assert_eq!(p.shard, home);
                    last.push(p);
                }
                at = (12, sum + 2, home);
            }
            want.insert(k, at);
            assert_eq!(get(&n, k), at.1, "key {k}: state");
            audit(&n, k, at.0, at.1);
        }
        let sums = n.projection::<Sums>();
        for p in &last {
            block_on(sums.wait_for(*p, Duration::from_secs(20))).expect("projection");
        }
        let (by_key, events) = block_on(sums.query(|s| s.clone())).expect("query");
        let total: u64 = want.values().map(|w| w.0).sum();
        assert_eq!(events, total, "every event once in the projection");
        for (k, w) in &want {
            assert_eq!(
                by_key.get(&k.to_string()),
                Some(&w.1),
                "key {k}: projected sum"
            );
        }
        n.shutdown();
    }
    let n = single(dir.path());
    for (&k, &(events, sum, shard)) in &want {
        assert_eq!(get(&n, k), sum, "key {k}: state after the restart");
        assert_eq!(
            n.placement(&id(k)).expect("placement").shard,
            shard,
            "key {k}"
        );
        audit(&n, k, events, sum);
        let (v, p) = add(&n, k, 1);
        assert_eq!(
            (v, p.shard),
            (events + 1, shard),
            "key {k}: keeps persisting there"
        );
        let sums = n.projection::<Sums>();
        block_on(sums.wait_for(p, Duration::from_secs(20))).expect("projection");
    }
    let (_, events) = block_on(n.projection::<Sums>().query(|s| s.clone())).expect("query");
    let total: u64 = want.values().map(|w| w.0 + 1).sum();
    assert_eq!(
        events, total,
        "every event once in the projection after the restart"
    );
    n.shutdown();
}

fn cluster_node(id: u64, nodes_toml: &str, dir: &Path) -> Node {
    node(format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\nmigration_timeout_ms = 2000\n\
         [log]\ndata_dir = {:?}\nsegment_bytes = 4194304\n\
         [cluster]\ncluster_id = \"mj\"\nnode_id = {id}\n{nodes_toml}",
        dir.to_str().expect("a UTF-8 temp path")
    ))
}

/// Both nodes, with every shard's link up both ways.
fn pair(toml: &str, d1: &Path, d2: &Path) -> (Node, Node) {
    let n1 = cluster_node(1, toml, d1);
    let n2 = cluster_node(2, toml, d2);
    let end = Instant::now() + Duration::from_secs(20);
    for (from, other) in [(&n2, 1u64), (&n1, 2u64)] {
        for shard in 0..2u16 {
            let probe = (1_000_000..u64::MAX)
                .find(|k| {
                    from.actor_ref::<Tally>(*k).remote_node() == Some(other)
                        && from.handle().shard_of(&id(*k)) == shard
                })
                .expect("some id is homed there");
            while block_on(from.actor_ref::<Tally>(probe).ask(Get)).is_err() {
                assert!(Instant::now() < end, "the nodes never reached each other");
                std::thread::yield_now();
            }
        }
    }
    (n1, n2)
}

fn move_to(node: &Node, id: &ActorId, to: u64) -> quark_shard::Moved {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match node.migrate_to_node(id, to) {
            Err(quark_shard::MigrateError::NodeUnavailable { .. }) if Instant::now() < end => {
                std::thread::yield_now()
            }
            r => return r.unwrap_or_else(|e| panic!("move to node {to}: {e}")),
        }
    }
}

fn active(node: &Node, key: u64) -> bool {
    let q = quark_shard::ActorQuery {
        actor_type: Some(Tally::TYPE_NAME.to_owned()),
        limit: 1000,
        ..Default::default()
    };
    let page = node.actors(&q).expect("actor listing");
    page.rows.iter().any(|r| r.key == ActorKey::from(key))
}

/// Between nodes: 6 actors homed on node 1 with 5 events each, moved to node 2, 5 more events
/// sent through both nodes; both nodes restart: each answers through both nodes with every
/// event once, is active on node 2 only, its audit view on node 2 reads versions 1..=10 with
/// the chain verified from genesis (node 1's journal API says it lives on node 2), and it
/// keeps persisting on node 2. (Projections are checked between shards only: in a cluster a
/// projection's actor is homed on one node, and its feeders on the other node fail to reach it
/// with `NotWireMessage`, with or without moves.)
#[test]
fn journaled_actors_move_between_nodes_and_restart_with_every_event_once() {
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut toml = String::new();
    for (i, a) in free_addrs(2).iter().enumerate() {
        toml.push_str(&format!(
            "[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    let keys: Vec<u64>;
    {
        let (n1, n2) = pair(&toml, d1.path(), d2.path());
        keys = (0..100_000u64)
            .filter(|k| n2.actor_ref::<Tally>(*k).remote_node() == Some(1))
            .take(6)
            .collect();
        for &k in &keys {
            for i in 1..=5 {
                add(&n1, k, i);
            }
            let m = move_to(&n1, &id(k), 2);
            assert_eq!((m.from_node, m.to_node), (1, 2));
            assert!(m.bytes > 0, "key {k}: its journal travelled");
            for i in 1..=5 {
                let via = if i % 2 == 0 { &n1 } else { &n2 };
                let (v, _) = add(via, k, 10 * i);
                assert_eq!(v, 5 + i as u64, "key {k}: versions continue on node 2");
            }
            assert_eq!(get(&n1, k), 165, "key {k}");
        }
        n1.shutdown();
        n2.shutdown();
    }
    let (n1, n2) = pair(&toml, d1.path(), d2.path());
    for &k in &keys {
        assert_eq!(get(&n1, k), 165, "key {k} via node 1 after the restart");
        assert_eq!(get(&n2, k), 165, "key {k} via node 2 after the restart");
        assert!(active(&n2, k), "key {k}: active on node 2");
        assert!(!active(&n1, k), "key {k}: not active on node 1");
        audit(&n2, k, 10, 165);
        match block_on(Journal::new(n1.handle()).replay::<Tally>(
            k,
            quark::journal::At::Latest,
            |_| {},
        )) {
            Err(JournalError::OnOtherNode { node: 2, .. }) => {}
            other => panic!(
                "key {k}: node 1's journal API: {:?}",
                other.map(|r| r.version)
            ),
        }
        let (v, _) = add(&n1, k, 1);
        assert_eq!(v, 11, "key {k}: keeps persisting on node 2");
    }
    n1.shutdown();
    n2.shutdown();
}
