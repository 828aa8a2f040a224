//! Timers move with their actor between nodes (docs/MIGRATION.md, "Timers"): two real nodes
//! over loopback; an interval and a one-shot set on node 1 fire on node 2 after a move, each
//! when it was due (not re-armed from the move), and never again on node 1; moved back, the
//! interval ticks on node 1 again. A timer whose message has no wire codec is dropped at the
//! move (logged), and fires nowhere.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quark_shard::{
    Actor, ActorId, ActorType, Context, Engine, EngineBuilder, EngineConfig, Handler, Message,
    MigrateError, ShardSpec,
};

/// What fired, where, when: `(key, kind, node, at)`.
static FIRES: Mutex<Vec<(u64, &'static str, u64, Instant)>> = Mutex::new(Vec::new());

fn fired(key: u64, kind: &'static str, node: u64) {
    FIRES
        .lock()
        .expect("fires")
        .push((key, kind, node, Instant::now()));
}

fn fires(key: u64, kind: &str) -> Vec<(u64, Instant)> {
    FIRES
        .lock()
        .expect("fires")
        .iter()
        .filter(|f| f.0 == key && f.1 == kind)
        .map(|f| (f.2, f.3))
        .collect()
}

/// Knows the node it runs on (set by its factory and its rehydrate on each node: the node is
/// not part of its moved state).
struct Clock {
    node: u64,
    key: u64,
}
impl Actor for Clock {
    const TYPE_NAME: &'static str = "timers-nodes-clock";
}

macro_rules! wire_msg {
    ($t:ident, $name:literal) => {
        #[derive(
            Clone,
            quark_net::rkyv::Archive,
            quark_net::rkyv::Serialize,
            quark_net::rkyv::Deserialize,
        )]
        #[rkyv(crate = quark_net::rkyv)]
        struct $t {
            tag: String,
        }
        impl Message for $t {
            type Reply = ();
        }
        impl quark_net::WireMessage for $t {
            const WIRE_NAME: &'static str = $name;
        }
    };
}
wire_msg!(Tick, "timers-nodes-test.Tick");
wire_msg!(Ring, "timers-nodes-test.Ring");

/// Sets the timers; answers the instant it set them.
#[derive(quark_net::rkyv::Archive, quark_net::rkyv::Serialize, quark_net::rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Arm {
    tick_ms: u64,
    ring_ms: u64,
    local_ms: u64,
}
impl Message for Arm {
    type Reply = u64;
}
impl quark_net::WireMessage for Arm {
    const WIRE_NAME: &'static str = "timers-nodes-test.Arm";
}

/// A timer message without a wire codec: it cannot cross nodes.
struct Local;
impl Message for Local {
    type Reply = ();
}

impl Handler<Arm> for Clock {
    async fn handle(&mut self, m: Arm, ctx: &Context<Self>) -> u64 {
        let t = "t".to_owned();
        ctx.set_interval(Duration::from_millis(m.tick_ms), Tick { tag: t.clone() });
        ctx.set_timer(Duration::from_millis(m.ring_ms), Ring { tag: t });
        ctx.set_timer(Duration::from_millis(m.local_ms), Local);
        fired(self.key, "armed", self.node);
        self.node
    }
}
impl Handler<Tick> for Clock {
    async fn handle(&mut self, m: Tick, _: &Context<Self>) {
        assert_eq!(m.tag, "t", "the message arrives whole");
        fired(self.key, "tick", self.node);
    }
}
impl Handler<Ring> for Clock {
    async fn handle(&mut self, m: Ring, _: &Context<Self>) {
        assert_eq!(m.tag, "t", "the message arrives whole");
        fired(self.key, "ring", self.node);
    }
}
impl Handler<Local> for Clock {
    async fn handle(&mut self, _: Local, _: &Context<Self>) {
        fired(self.key, "local", self.node);
    }
}

fn key_of(id: &ActorId) -> u64 {
    match id.key {
        quark_shard::ActorKey::U64(k) => k,
        _ => unreachable!("u64 keys"),
    }
}

fn nodes() -> Vec<Engine> {
    use quark_net::{ClusterConfig, MemberAddr, Membership};
    let ls: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let members = Membership::from_config(&ClusterConfig {
        cluster_id: "timers-nodes".into(),
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
                ActorType::new(move |a| Clock {
                    node: id,
                    key: key_of(a),
                })
                .migratable(
                    |c: &Clock| c.key.to_le_bytes().to_vec(),
                    move |_, b| {
                        let key = u64::from_le_bytes(b.try_into().map_err(|_| "8 bytes")?);
                        Ok(Clock { node: id, key })
                    },
                ),
            )
            .remote::<Clock, Arm>()
            .remote::<Clock, Tick>()
            .remote::<Clock, Ring>()
            .start()
            .expect("engine starts")
        })
        .collect()
}

/// Polls `f` until it is true, at most `within`.
fn wait(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn migrate(nodes: &[Engine], id: &ActorId, to: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match nodes[0].migrate_to_node(id, to) {
            Ok(m) => return assert_eq!(m.to_node, to),
            // A link still coming up: retried (the actor stays where it was).
            Err(MigrateError::NodeUnavailable { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("move to node {to}: {e}"),
        }
    }
}

const TICK: Duration = Duration::from_millis(100);
const RING: Duration = Duration::from_millis(1500);
const LOCAL: Duration = Duration::from_millis(1200);
/// How late a timer may fire on a loaded machine and still count as on time.
const LATE: Duration = Duration::from_millis(250);

#[test]
fn an_interval_and_a_one_shot_fire_on_the_node_the_actor_moved_to_when_they_were_due() {
    let nodes = nodes();
    let key = (0..10_000u64)
        .find(|k| nodes[1].actor_ref::<Clock>(*k).remote_node() == Some(1))
        .expect("some key lands on node 1");
    let id = ActorId {
        type_name: Clock::TYPE_NAME,
        key: key.into(),
    };
    // Links up: node 2 reaches node 1 (and node 1 node 2 through the first move's retries).
    let r2 = nodes[1].actor_ref::<Clock>(key);
    let armed_on = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let arm = Arm {
                tick_ms: TICK.as_millis() as u64,
                ring_ms: RING.as_millis() as u64,
                local_ms: LOCAL.as_millis() as u64,
            };
            match r2.ask_blocking(arm) {
                Ok(n) => break n,
                Err(e) => assert!(Instant::now() < deadline, "no answer: {e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert_eq!(armed_on, 1, "the actor runs on its home node");
    let t0 = fires(key, "armed")[0].1;
    wait(Duration::from_secs(10), "two ticks on node 1", || {
        fires(key, "tick").len() >= 2
    });
    migrate(&nodes, &id, 2);
    let moved_at = Instant::now();
    assert!(
        moved_at < t0 + LOCAL - Duration::from_millis(100),
        "the move ended {:?} after the timers were set: too late to tell a moved one-shot \
         from one that fired before the move (a very loaded machine; rerun)",
        moved_at - t0
    );
    let ticks_before = fires(key, "tick");
    assert!(
        ticks_before.iter().all(|t| t.0 == 1),
        "ticks before the move on node 1"
    );
    wait(Duration::from_secs(10), "the one-shot", || {
        !fires(key, "ring").is_empty()
    });
    // A few more ticks after the one-shot, so that a tick on the wrong node would show.
    let n = fires(key, "tick").len();
    wait(Duration::from_secs(10), "ticks after the one-shot", || {
        fires(key, "tick").len() >= n + 3
    });

    let ring = fires(key, "ring");
    assert_eq!(ring.len(), 1, "the one-shot fires once: {ring:?}");
    assert_eq!(
        ring[0].0, 2,
        "the one-shot fires on the node the actor moved to"
    );
    let at = ring[0].1 - t0;
    assert!(
        at + Duration::from_millis(1) >= RING && at <= RING + LATE,
        "the one-shot fires when it was due ({RING:?} after it was set), not re-armed at the \
         move: it fired after {at:?}"
    );
    let ticks = fires(key, "tick");
    let (on1, on2): (Vec<&(u64, Instant)>, Vec<_>) = ticks.iter().partition(|t| t.0 == 1);
    assert!(
        on1.iter().all(|t| t.1 <= moved_at),
        "no tick on node 1 after the move"
    );
    assert!(
        on2.len() >= 5,
        "the interval ticks on node 2: {}",
        on2.len()
    );
    // The interval keeps its period across the move: the first tick on node 2 is one period
    // after the last one on node 1 (not one period after the move's end plus its cost).
    let last1 = on1.last().expect("ticks on node 1").1;
    let first2 = on2[0].1;
    assert!(
        first2 + Duration::from_millis(1) >= last1 + TICK && first2 <= last1 + TICK + LATE,
        "first tick on node 2 {:?} after the last on node 1 (period {TICK:?})",
        first2 - last1
    );
    // By the one-shot (1.5 s), about 15 periods passed: no tick lost or doubled by the move.
    let by_ring = ticks.iter().filter(|t| t.1 <= ring[0].1).count();
    assert!(
        (12..=15).contains(&by_ring),
        "{by_ring} ticks by the one-shot's firing (15 periods)"
    );
    assert!(
        fires(key, "local").is_empty(),
        "a timer whose message has no wire codec is dropped at the move, never fired"
    );

    // Back home (the home asks node 2 for the state and its timers).
    migrate(&nodes, &id, 1);
    let back_at = Instant::now();
    let n = fires(key, "tick").len();
    wait(Duration::from_secs(10), "ticks back on node 1", || {
        fires(key, "tick").len() >= n + 3
    });
    let ticks = fires(key, "tick");
    let after: Vec<_> = ticks.iter().filter(|t| t.1 > back_at).collect();
    assert!(
        after.iter().all(|t| t.0 == 1),
        "after the move back the interval ticks on node 1 only"
    );
    assert_eq!(
        fires(key, "ring").len(),
        1,
        "the one-shot never fires again"
    );
    for n in nodes {
        n.shutdown();
    }
}
