//! The engine's figures in the exposition: messages by kind (local, cross-shard, remote,
//! external) counted exactly, ask latency histograms that count every ask, live activations
//! per actor type, and mailbox depth while an activation is busy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quark::admin::fetch;
use quark::builtin::{Add, Counter};
use quark::{Actor, ActorType, AdminConfig, Context, Handler, Message, Node, NodeConfig};

mod admin_common;
mod ports;
use ports::free_addrs;

const T: Duration = Duration::from_secs(10);

fn eventually<V>(what: &str, mut f: impl FnMut() -> Option<V>) -> V {
    let end = Instant::now() + T;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

type Samples = Vec<(String, BTreeMap<String, String>, f64)>;

fn scrape(addr: SocketAddr) -> Samples {
    let r = fetch(addr, "/metrics", T).expect("scrape");
    assert_eq!(r.status, 200);
    admin_common::samples(&r.body)
}

/// The sum of `name` over the series whose labels include `want`.
fn sum(s: &Samples, name: &str, want: &[(&str, &str)]) -> f64 {
    s.iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Two clustered nodes with the built-in actors; node 1 has an admin endpoint.
fn two_nodes() -> Vec<Node> {
    let addrs = free_addrs(2);
    let mut members = String::new();
    for (i, a) in addrs.iter().enumerate() {
        members.push_str(&format!(
            "[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    (1..=2)
        .map(|id| {
            let admin = if id == 1 {
                "[admin]\nlisten = \"127.0.0.1:0\"\n"
            } else {
                ""
            };
            let text = format!(
                "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n{admin}\
                 [cluster]\ncluster_id = \"engine-metrics\"\nnode_id = {id}\n{members}",
            );
            let config = NodeConfig::from_toml(&text, "engine.toml").unwrap();
            quark::builtin::register_builtin(Node::builder().config(config))
                .start()
                .unwrap()
        })
        .collect()
}

#[test]
fn messages_by_kind_and_ask_latency_count_every_call_exactly() {
    let nodes = two_nodes();
    let addr = nodes[0].admin_addr().unwrap();
    // The link to node 2 is up before counting (asks to it fail before).
    let remote_key = (0..1000u64)
        .find(|&k| nodes[0].actor_ref::<Counter>(k).remote_node().is_some())
        .expect("node 2 owns some key");
    eventually("node 2 to answer", || {
        quark::block_on(nodes[0].actor_ref::<Counter>(remote_key).ask(Add(0))).ok()
    });
    // What each key is from shard 0 of node 1.
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    let keys: Vec<u64> = (0..48).collect();
    for &k in &keys {
        let r = nodes[0].actor_ref::<Counter>(k);
        let kind = if r.remote_node().is_some() {
            "remote"
        } else if r.owner_shard() == 0 {
            "local"
        } else {
            "cross_shard"
        };
        *want.entry(kind).or_default() += 1;
    }
    assert!(
        want.len() == 3,
        "the keys cover every kind from shard 0: {want:?}"
    );
    let before = scrape(addr);
    // From a task on shard 0: one ask and two tells per key.
    let refs: Vec<_> = keys
        .iter()
        .map(|&k| nodes[0].actor_ref::<Counter>(k))
        .collect();
    let done = nodes[0].spawn_on(0, move || async move {
        for r in &refs {
            r.ask(Add(1)).await.expect("ask");
            r.tell(Add(1)).await.expect("tell");
            r.tell(Add(1)).await.expect("tell");
        }
    });
    quark::block_on(done).expect("the task ran");
    // External: asks and tells from this thread to keys of node 1 (owned by its shards).
    let local_keys: Vec<u64> = (0..200u64)
        .filter(|&k| nodes[0].actor_ref::<Counter>(k).remote_node().is_none())
        .take(10)
        .collect();
    for &k in &local_keys {
        quark::block_on(nodes[0].actor_ref::<Counter>(k).ask(Add(1))).unwrap();
    }
    // The tells are handled after the asks above (the same mailboxes), so once one more ask
    // to each key is answered, every tell was taken.
    for &k in &local_keys {
        nodes[0].actor_ref::<Counter>(k).tell_now(Add(1)).unwrap();
    }
    for &k in &local_keys {
        quark::block_on(nodes[0].actor_ref::<Counter>(k).ask(Add(0))).unwrap();
    }
    let after = scrape(addr);
    let delta = |kind: &str, call: &str, shard: Option<&str>| {
        let mut w = vec![("kind", kind), ("call", call)];
        if let Some(s) = shard {
            w.push(("shard", s));
        }
        sum(&after, "quark_messages_total", &w) - sum(&before, "quark_messages_total", &w)
    };
    for (kind, n) in &want {
        let n = *n as f64;
        assert_eq!(delta(kind, "ask", Some("0")), n, "{kind} asks from shard 0");
        assert_eq!(
            delta(kind, "tell", Some("0")),
            2.0 * n,
            "{kind} tells from shard 0"
        );
        // Every ask was timed once.
        let count = |s: &Samples| {
            sum(
                s,
                "quark_ask_latency_seconds_count",
                &[("kind", kind), ("shard", "0")],
            )
        };
        assert_eq!(count(&after) - count(&before), n, "{kind} asks timed");
        let inf = |s: &Samples| {
            sum(
                s,
                "quark_ask_latency_seconds_bucket",
                &[("kind", kind), ("shard", "0"), ("le", "+Inf")],
            )
        };
        assert_eq!(inf(&after) - inf(&before), n);
    }
    // Shard 1 sent nothing in this test.
    for kind in ["local", "cross_shard", "remote"] {
        assert_eq!(delta(kind, "ask", Some("1")), 0.0);
    }
    let ext = local_keys.len() as f64;
    assert_eq!(delta("external", "ask", None), 2.0 * ext);
    assert_eq!(delta("external", "tell", None), ext);
    // Live activations per type add up to the node's live activations.
    let live: u64 = nodes[0]
        .stats()
        .unwrap()
        .iter()
        .map(|s| s.live_activations)
        .sum();
    let now = scrape(addr);
    assert_eq!(
        sum(
            &now,
            "quark_activations_live_by_type",
            &[("actor_type", "counter")]
        ),
        live as f64
    );
    assert_eq!(
        sum(
            &now,
            "quark_activations_live_by_type",
            &[("actor_type", "echo")]
        ),
        0.0
    );
    for n in nodes {
        n.shutdown();
    }
}

/// Holds its turn (without blocking the shard thread) until released.
struct Gate;
impl Actor for Gate {
    const TYPE_NAME: &'static str = "gate";
}
struct Hold(std::sync::Mutex<Option<futures::channel::oneshot::Receiver<()>>>);
impl Message for Hold {
    type Reply = ();
}
impl Handler<Hold> for Gate {
    async fn handle(&mut self, m: Hold, _: &Context<Self>) {
        let rx = m.0.lock().unwrap().take().unwrap();
        let _ = rx.await;
    }
}
struct Knock;
impl Message for Knock {
    type Reply = ();
}
impl Handler<Knock> for Gate {
    async fn handle(&mut self, _: Knock, _: &Context<Self>) {}
}

#[test]
fn mailbox_depth_shows_the_messages_queued_behind_a_turn() {
    const QUEUED: u64 = 7;
    let mut config = NodeConfig::default();
    config.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap()));
    let node = Node::builder()
        .config(config)
        .engine(|e| {
            e.shards = quark::ShardSpec::Count(2);
            e.pin_threads = false;
            e.idle_spin = Duration::ZERO;
        })
        .register(ActorType::new(|_| Gate))
        .start()
        .unwrap();
    let addr = node.admin_addr().unwrap();
    let gate = node.actor_ref::<Gate>("g");
    let (release, rx) = futures::channel::oneshot::channel();
    gate.tell_now(Hold(std::sync::Mutex::new(Some(rx))))
        .unwrap();
    for _ in 0..QUEUED {
        gate.tell_now(Knock).unwrap();
    }
    let s = eventually("the knocks to queue behind the held turn", || {
        let s = scrape(addr);
        (sum(&s, "quark_mailbox_depth", &[]) == QUEUED as f64).then_some(s)
    });
    assert_eq!(sum(&s, "quark_mailbox_depth_max", &[]), QUEUED as f64);
    assert_eq!(
        sum(
            &s,
            "quark_activations_live_by_type",
            &[("actor_type", "gate")]
        ),
        1.0
    );
    assert_eq!(sum(&s, "quark_ring_overflow", &[]), 0.0);
    release.send(()).unwrap();
    quark::block_on(gate.ask(Knock)).unwrap();
    let s = scrape(addr);
    assert_eq!(sum(&s, "quark_mailbox_depth", &[]), 0.0);
    node.shutdown();
}
