//! API edges that used to fail silently: `tell_now` (a tell without a future), a handler's
//! panic message reaching the caller, keys displayed as written, and `NodeUnavailable` naming
//! why the node is unreachable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_net::{ClusterConfig, ClusterSecret, MemberAddr, Membership, PeerRole};
use quark_shard::{
    block_on, Actor, ActorType, CallError, Context, Engine, EngineBuilder, EngineConfig,
    ErrorChain, Handler, Message, NetConfig, ShardSpec,
};

#[derive(Default)]
struct Counter {
    n: u64,
}
impl Actor for Counter {
    const TYPE_NAME: &'static str = "counter";
}

struct Inc;
impl Message for Inc {
    type Reply = ();
}
impl Handler<Inc> for Counter {
    async fn handle(&mut self, _: Inc, _: &Context<Self>) {
        self.n += 1;
    }
}

struct Get;
impl Message for Get {
    type Reply = u64;
}
impl Handler<Get> for Counter {
    async fn handle(&mut self, _: Get, _: &Context<Self>) -> u64 {
        self.n
    }
}

struct Boom(u64);
impl Message for Boom {
    type Reply = u64;
}
impl Handler<Boom> for Counter {
    async fn handle(&mut self, m: Boom, _: &Context<Self>) -> u64 {
        if m.0 > self.n {
            panic!("overdrawn by {}", m.0 - self.n);
        }
        self.n
    }
}

/// Crosses nodes.
#[derive(quark_net::rkyv::Archive, quark_net::rkyv::Serialize, quark_net::rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Ping;
impl Message for Ping {
    type Reply = u64;
}
impl quark_net::WireMessage for Ping {
    const WIRE_NAME: &'static str = "edges.Ping";
}
impl Handler<Ping> for Counter {
    async fn handle(&mut self, _: Ping, _: &Context<Self>) -> u64 {
        self.n
    }
}

struct WhoAmI;
impl Message for WhoAmI {
    type Reply = (String, String);
}
impl Handler<WhoAmI> for Counter {
    async fn handle(&mut self, _: WhoAmI, ctx: &Context<Self>) -> (String, String) {
        (ctx.id().to_string(), ctx.id().key.to_string())
    }
}

fn engine(shards: usize, mailbox_capacity: usize) -> Engine {
    EngineBuilder::new(EngineConfig {
        shards: ShardSpec::Count(shards),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        mailbox_capacity,
        ask_timeout: Duration::from_secs(10),
        ..EngineConfig::default()
    })
    .register(ActorType::new(|_| Counter::default()))
    .start()
    .expect("engine starts")
}

#[test]
fn tell_now_sends_without_being_awaited() {
    let e = engine(2, 1024);
    // From outside the node (this thread).
    let c = e.actor_ref::<Counter>("c3");
    for _ in 0..3 {
        c.tell_now(Inc).expect("room in the injection queue");
    }
    assert_eq!(block_on(c.ask(Get)).unwrap(), 3);
    // From a shard: to an actor of the same shard and of the other shard.
    let same = (0..)
        .map(|k: u64| e.actor_ref::<Counter>(k))
        .find(|r| r.owner_shard() == 0)
        .unwrap();
    let other = (0..)
        .map(|k: u64| e.actor_ref::<Counter>(k))
        .find(|r| r.owner_shard() == 1)
        .unwrap();
    let (s2, o2) = (same.clone(), other.clone());
    let sent = e
        .spawn_on(0, move || async move {
            for _ in 0..3 {
                s2.tell_now(Inc).unwrap();
                o2.tell_now(Inc).unwrap();
            }
            (s2.ask(Get).await.unwrap(), o2.ask(Get).await.unwrap())
        })
        .join()
        .unwrap();
    assert_eq!(sent, (3, 3));
    e.shutdown();
}

#[test]
fn tell_now_reports_a_full_mailbox_and_drops_nothing_silently() {
    let e = engine(1, 4);
    let c = e.actor_ref::<Counter>(1u64);
    let (c2, tries) = (c.clone(), 20);
    // On the owner shard, without yielding: the actor cannot run, so its mailbox fills.
    let results = e
        .spawn_on(0, move || async move {
            (0..tries).map(|_| c2.tell_now(Inc)).collect::<Vec<_>>()
        })
        .join()
        .unwrap();
    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
    assert!((1..tries).contains(&(ok as usize)), "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(
                r,
                Err(CallError::Full {
                    place: "mailbox",
                    ..
                })
            ),
            "{r:?}"
        );
    }
    // Every Ok was delivered; every refusal said so.
    assert_eq!(block_on(c.ask(Get)).unwrap(), ok);
    e.shutdown();
}

#[test]
fn a_panic_reaches_the_caller_with_its_message_and_location() {
    let e = engine(1, 1024);
    let c = e.actor_ref::<Counter>("acct");
    let err = block_on(c.ask(Boom(5))).unwrap_err();
    match &err {
        CallError::ActorPanicked { actor, panic } => {
            assert_eq!(actor, c.id());
            assert!(panic.starts_with("overdrawn by 5"), "{panic}");
            assert!(panic.contains("api_edges.rs:"), "location: {panic}");
        }
        other => panic!("expected ActorPanicked, got {other:?}"),
    }
    assert!(err.to_string().contains("overdrawn by 5"), "{err}");
    e.shutdown();
}

#[test]
fn keys_display_as_written_and_debug_quoted() {
    let e = engine(1, 1024);
    let c = e.actor_ref::<Counter>("c3");
    assert_eq!(c.id().key.to_string(), "c3");
    assert_eq!(format!("{:?}", c.id().key), "\"c3\"");
    assert_eq!(c.id().to_string(), "counter/c3");
    assert_eq!(format!("{:?}", c.id()), "counter/\"c3\"");
    let (id, key) = block_on(c.ask(WhoAmI)).unwrap();
    assert_eq!((id.as_str(), key.as_str()), ("counter/c3", "c3"));
    e.shutdown();
}

#[test]
fn node_unavailable_carries_the_handshake_refusal() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let m = Membership::from_config(&ClusterConfig {
        cluster_id: "edges".into(),
        nodes: vec![MemberAddr {
            id: 1,
            addr: addr.to_string(),
        }],
    })
    .unwrap();
    let secret = |s: &[u8]| Some(ClusterSecret::new(s.to_vec(), "test").unwrap());
    let mut server = NetConfig::new(1, PeerRole::Member, m.clone());
    server.listener = Some(Arc::new(listener));
    server.secret = secret(b"0123456789abcdef-one");
    let mut client = NetConfig::new(0x8000_0000_0000_0099, PeerRole::Client, m);
    client.secret = secret(b"0123456789abcdef-two");
    let start = |net: NetConfig| {
        EngineBuilder::new(EngineConfig {
            shards: ShardSpec::Count(1),
            pin_threads: false,
            idle_spin: Duration::ZERO,
            ask_timeout: Duration::from_secs(2),
            net: Some(net),
            ..EngineConfig::default()
        })
        .register(ActorType::new(|_| Counter::default()))
        .remote::<Counter, Ping>()
        .start()
        .unwrap()
    };
    let (server, client) = (start(server), start(client));
    let r = client.actor_ref::<Counter>(1u64);
    let end = Instant::now() + Duration::from_secs(10);
    // The first calls may wait for the attempt; once it failed, calls name its cause.
    let e = loop {
        match block_on(r.ask(Ping)) {
            Err(e @ CallError::NodeUnavailable { cause: Some(_), .. }) => break e,
            other => {
                assert!(
                    Instant::now() < end,
                    "no NodeUnavailable with a cause: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    let chain = ErrorChain(&e).to_string();
    assert!(std::error::Error::source(&e).is_some(), "{e:?}");
    assert!(chain.contains(&addr.to_string()), "names the peer: {chain}");
    assert!(chain.contains("secret"), "names the cause: {chain}");
    client.shutdown();
    server.shutdown();
}
