//! Errors keep their causes across nodes: a remote ask gets the same `CallError` variant a
//! local ask would (each has its own wire code; the full mapping is unit-tested in
//! `net/remote.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_net::rkyv;
use quark_net::{ClusterConfig, MemberAddr, Membership, PeerRole, WireMessage};
use quark_shard::{
    block_on, Actor, ActorKey, ActorType, CallError, Context, Engine, EngineBuilder, EngineConfig,
    Handler, Message, NetConfig, ShardSpec,
};

/// An actor whose loader fails for odd keys (as a journaled actor whose log is unreadable).
struct Fragile;
impl Actor for Fragile {
    const TYPE_NAME: &'static str = "fragile";
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Ping;
impl Message for Ping {
    type Reply = u64;
}
impl WireMessage for Ping {
    const WIRE_NAME: &'static str = "remote_errors.Ping";
}
impl Handler<Ping> for Fragile {
    async fn handle(&mut self, _: Ping, _: &Context<Self>) -> u64 {
        1
    }
}

fn fragile_type() -> ActorType<Fragile> {
    ActorType::loaded(|ctx| {
        let odd = matches!(ctx.id().key, ActorKey::U64(k) if k % 2 == 1);
        Box::pin(async move {
            if odd {
                Err("journal unreadable (odd key)".into())
            } else {
                Ok(Fragile)
            }
        })
    })
}

fn cluster() -> Vec<Engine> {
    let ls: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let m = Membership::from_config(&ClusterConfig {
        cluster_id: "remote-errors".into(),
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
            let mut net = NetConfig::new(i as u64 + 1, PeerRole::Member, m.clone());
            net.listener = Some(Arc::new(l));
            EngineBuilder::new(EngineConfig {
                shards: ShardSpec::Count(1),
                pin_threads: false,
                idle_spin: Duration::ZERO,
                ask_timeout: Duration::from_secs(2),
                shutdown_timeout: Duration::from_secs(2),
                net: Some(net),
                ..EngineConfig::default()
            })
            .register(fragile_type())
            .remote::<Fragile, Ping>()
            .start()
            .expect("engine starts")
        })
        .collect()
}

/// A key of `fragile` with parity `odd` owned by node 2, as seen from `e`.
fn key_on_node_2(e: &Engine, odd: bool) -> u64 {
    (0..10_000u64)
        .filter(|k| (k % 2 == 1) == odd)
        .find(|k| e.actor_ref::<Fragile>(*k).remote_node() == Some(2))
        .expect("some key lands on node 2")
}

#[test]
fn a_remote_activation_failure_is_activation_failed_not_overloaded() {
    let nodes = cluster();
    let healthy = nodes[0].actor_ref::<Fragile>(key_on_node_2(&nodes[0], false));
    // The first asks may race the link's handshake: wait until one gets through.
    let end = Instant::now() + Duration::from_secs(5);
    while block_on(healthy.ask(Ping)).is_err() {
        assert!(Instant::now() < end, "the link to node 2 came up");
        std::thread::yield_now();
    }
    let k = key_on_node_2(&nodes[0], true);
    let broken = nodes[0].actor_ref::<Fragile>(k);
    match block_on(broken.ask(Ping)) {
        Err(CallError::ActivationFailed { actor, detail }) => {
            assert_eq!(actor, *broken.id());
            assert!(detail.contains("journal unreadable"), "{detail}");
            assert!(detail.contains("node 2"), "{detail}");
        }
        other => panic!("expected ActivationFailed from node 2, got {other:?}"),
    }
    // The same failure locally, for comparison: the same variant.
    let local = nodes[1].actor_ref::<Fragile>(k);
    assert!(matches!(
        block_on(local.ask(Ping)),
        Err(CallError::ActivationFailed { .. })
    ));
}
