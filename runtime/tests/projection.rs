//! Projections: fed from every shard, checkpointed atomically with their read model, resumed
//! after a restart without double counting, and read-your-writes with a deadline.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quark::journal::{
    EventMeta, EventSourced, JournalEvent, JournalPolicy, LogPosition, Persist, PersistError,
    Persisted, Projection, ProjectionConfig, ProjectionError, Subscriptions,
};
use quark::{block_on, Actor, ActorKey, Context, Handler, Message, Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(Default)]
struct Counter {
    n: i64,
}

impl Actor for Counter {
    const TYPE_NAME: &'static str = "counter";
}

#[derive(Serialize, Deserialize)]
struct Added(i64);

impl JournalEvent for Added {
    fn type_name(&self) -> &'static str {
        "Added"
    }
}

impl EventSourced for Counter {
    type Event = Added;
    type Snapshot = i64;
    fn initial(_: &ActorKey) -> Self {
        Counter::default()
    }
    fn apply(&mut self, e: &Added) {
        self.n += e.0;
    }
    fn snapshot(&self) -> i64 {
        self.n
    }
    fn restore(_: &ActorKey, n: i64) -> Self {
        Counter { n }
    }
}

struct Add(i64);
impl Message for Add {
    type Reply = Result<Persisted, PersistError>;
}
impl Handler<Add> for Counter {
    async fn handle(&mut self, m: Add, ctx: &Context<Self>) -> Result<Persisted, PersistError> {
        ctx.persist(self, [Added(m.0)]).await
    }
}

/// A second journaled type the projection also consumes.
#[derive(Default)]
struct Penalty {
    n: i64,
}

impl Actor for Penalty {
    const TYPE_NAME: &'static str = "penalty";
}

#[derive(Serialize, Deserialize)]
struct Fined(i64);

impl JournalEvent for Fined {
    fn type_name(&self) -> &'static str {
        "Fined"
    }
}

impl EventSourced for Penalty {
    type Event = Fined;
    type Snapshot = i64;
    fn initial(_: &ActorKey) -> Self {
        Penalty::default()
    }
    fn apply(&mut self, e: &Fined) {
        self.n += e.0;
    }
    fn snapshot(&self) -> i64 {
        self.n
    }
    fn restore(_: &ActorKey, n: i64) -> Self {
        Penalty { n }
    }
}

struct Fine(i64);
impl Message for Fine {
    type Reply = Result<Persisted, PersistError>;
}
impl Handler<Fine> for Penalty {
    async fn handle(&mut self, m: Fine, ctx: &Context<Self>) -> Result<Persisted, PersistError> {
        ctx.persist(self, [Fined(m.0)]).await
    }
}

/// Events the `Totals` handlers have applied in this process (across node restarts): a
/// projection that replays from the start after a restart applies more than the new events.
/// Only `a_projection_sees_every_shard_and_resumes_after_a_restart` writes events.
static APPLIED: AtomicU64 = AtomicU64::new(0);

/// Sum per key, and the number of events seen.
struct Totals;
impl Projection for Totals {
    const NAME: &'static str = "totals";
    type State = (BTreeMap<String, i64>, u64);
    fn subscriptions() -> Subscriptions<Self> {
        Subscriptions::new()
            .on::<Counter>(
                |s: &mut (BTreeMap<String, i64>, u64), meta: &EventMeta, e: &Added| {
                    *s.0.entry(meta.key.to_string()).or_default() += e.0;
                    s.1 += 1;
                    APPLIED.fetch_add(1, Ordering::Relaxed);
                },
            )
            .on::<Penalty>(
                |s: &mut (BTreeMap<String, i64>, u64), meta: &EventMeta, e: &Fined| {
                    *s.0.entry(meta.key.to_string()).or_default() -= e.0;
                    s.1 += 1;
                    APPLIED.fetch_add(1, Ordering::Relaxed);
                },
            )
    }
}

fn start(dir: &Path) -> Node {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"always\"\n",
        dir.to_str().unwrap()
    );
    Node::builder()
        .config(NodeConfig::from_toml(&text, "test.toml").unwrap())
        .register_journaled::<Counter>(JournalPolicy::snapshot_every(8))
        .register_journaled::<Penalty>(JournalPolicy::default())
        .register_projection::<Totals>(ProjectionConfig::default())
        .start()
        .unwrap()
}

fn add(node: &Node, key: u64, n: i64) -> Persisted {
    block_on(node.actor_ref::<Counter>(key).ask(Add(n)))
        .unwrap()
        .unwrap()
}

#[test]
fn a_projection_sees_every_shard_and_resumes_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path());
    let totals = node.projection::<Totals>();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut shards_seen = std::collections::BTreeSet::new();
    for round in 0..5 {
        for key in 0..20u64 {
            let p = add(&node, key, round * 100 + key as i64);
            shards_seen.insert(p.position.shard);
            *expected.entry(key.to_string()).or_default() += round * 100 + key as i64;
            // Read-your-writes: the projection has this write once wait_for returns.
            block_on(totals.wait_for(p.position, Duration::from_secs(10))).unwrap();
            let seen = block_on(totals.query(move |s| s.0.get(&key.to_string()).copied())).unwrap();
            assert_eq!(seen, expected.get(&key.to_string()).copied());
        }
    }
    assert_eq!(shards_seen.len(), 2, "keys spread over both shards");
    assert_eq!(APPLIED.load(Ordering::Relaxed), 5 * 20);
    node.shutdown();

    // Restart: the projection resumes from its stored state and checkpoints: it applies only
    // the events written after the restart (a replay from the start would apply all again and,
    // with the stored state, double count; without it, the totals would come out the same).
    APPLIED.store(0, Ordering::Relaxed);
    let node = start(tmp.path());
    let totals = node.projection::<Totals>();
    let mut last = Vec::new();
    for key in 0..20u64 {
        last.push(add(&node, key, 1));
        *expected.entry(key.to_string()).or_default() += 1;
    }
    // Events of a second subscribed type, on both shards.
    for key in 0..10u64 {
        let p = block_on(node.actor_ref::<Penalty>(key).ask(Fine(3)))
            .unwrap()
            .unwrap();
        last.push(p);
        *expected.entry(key.to_string()).or_default() -= 3;
    }
    for p in &last {
        block_on(totals.wait_for(p.position, Duration::from_secs(10))).unwrap();
    }
    let (sums, events) = block_on(totals.query(|s| s.clone())).unwrap();
    assert_eq!(sums, expected);
    assert_eq!(events, 5 * 20 + 20 + 10, "every event applied exactly once");
    assert_eq!(
        APPLIED.load(Ordering::Relaxed),
        20 + 10,
        "after the restart only the new events were applied"
    );
    node.shutdown();
}

#[test]
fn waiting_for_a_position_never_reached_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path());
    let totals = node.projection::<Totals>();
    let far = LogPosition {
        shard: 0,
        lsn: u64::MAX,
    };
    let started = std::time::Instant::now();
    match block_on(totals.wait_for(far, Duration::from_millis(100))) {
        Err(ProjectionError::Timeout { position, .. }) => assert_eq!(position, far),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    node.shutdown();
}
