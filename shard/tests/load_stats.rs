//! Load by actor type (`ShardStatsSnapshot::load`): exact turn counts per type, one turn in
//! `TURN_SAMPLE_EVERY` timed, the busiest actors, the communication graph between types, and
//! the requests sent to each shard.

use std::time::Duration;

use quark_placement::{ActorId, ActorKey};
use quark_shard::{
    block_on, Actor, ActorType, Context, Engine, EngineBuilder, EngineConfig, Handler, Message,
    ShardSpec, TURN_SAMPLE_EVERY,
};

struct Front;
impl Actor for Front {
    const TYPE_NAME: &'static str = "front";
}
struct Back;
impl Actor for Back {
    const TYPE_NAME: &'static str = "back";
}

/// Asks `Back(key)` once, or sleeps `sleep_ms` first.
struct Fwd {
    key: u64,
    sleep_ms: u64,
}
impl Message for Fwd {
    type Reply = u64;
}
impl Handler<Fwd> for Front {
    async fn handle(&mut self, m: Fwd, ctx: &Context<Self>) -> u64 {
        if m.sleep_ms > 0 {
            ctx.sleep(Duration::from_millis(m.sleep_ms)).await;
        }
        ctx.actor_ref::<Back>(m.key).ask(Get).await.unwrap_or(0)
    }
}

struct Get;
impl Message for Get {
    type Reply = u64;
}
impl Handler<Get> for Back {
    async fn handle(&mut self, _: Get, _: &Context<Self>) -> u64 {
        1
    }
}

fn engine() -> Engine {
    let config = EngineConfig {
        shards: ShardSpec::Count(2),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        ..EngineConfig::default()
    };
    EngineBuilder::new(config)
        .register(ActorType::new(|_| Front))
        .register(ActorType::new(|_| Back))
        .start()
        .expect("engine starts")
}

fn key_on<A: Actor>(e: &Engine, shard: u16) -> u64 {
    (0..10_000u64)
        .find(|k| {
            e.handle().shard_of(&ActorId {
                type_name: A::TYPE_NAME,
                key: ActorKey::from(*k),
            }) == shard
        })
        .expect("a key on every shard")
}

#[test]
fn turns_are_counted_by_type_sampled_and_followed_through_the_graph() {
    let e = engine();
    let front = key_on::<Front>(&e, 0);
    let back = key_on::<Back>(&e, 1);
    // 10 sampled turns' worth of asks to one front actor (shard 0), each asking a back actor
    // on shard 1; and a few to a second, quieter front actor.
    let n = 10 * TURN_SAMPLE_EVERY;
    let f = e.actor_ref::<Front>(front);
    for _ in 0..n {
        assert_eq!(
            block_on(f.ask(Fwd {
                key: back,
                sleep_ms: 0
            })),
            Ok(1)
        );
    }
    let quiet = (front + 1..)
        .find(|k| key_on_check(&e, *k, 0))
        .expect("another front key on shard 0");
    for _ in 0..TURN_SAMPLE_EVERY {
        block_on(e.actor_ref::<Front>(quiet).ask(Fwd {
            key: back,
            sleep_ms: 0,
        }))
        .unwrap();
    }
    let stats = e.stats().expect("stats");
    let (s0, s1) = (&stats[0].load, &stats[1].load);
    assert_eq!(s0.sample_every, TURN_SAMPLE_EVERY);
    let ty = |l: &quark_shard::LoadSnapshot, name: &str| {
        l.types
            .iter()
            .find(|t| t.type_name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no type {name}: {l:?}"))
    };
    let sampled = |t: &quark_shard::TypeLoad| t.turn_duration.buckets.iter().sum::<u64>();
    // Every turn counted where it ran; one in 64 of each type timed.
    assert_eq!(ty(s0, "front").handled, n + TURN_SAMPLE_EVERY);
    assert_eq!(ty(s1, "back").handled, n + TURN_SAMPLE_EVERY);
    assert_eq!(ty(s0, "back").handled, 0);
    assert_eq!(sampled(&ty(s0, "front")), 11);
    assert_eq!(sampled(&ty(s1, "back")), 11);
    // The busiest actor of shard 0 is `front`, then the quiet one.
    let top: Vec<(String, u64)> = s0
        .top_actors
        .iter()
        .map(|t| (t.actor.to_string(), t.messages_est))
        .collect();
    assert_eq!(
        top,
        vec![
            (format!("front/{front}"), n),
            (format!("front/{quiet}"), TURN_SAMPLE_EVERY)
        ]
    );
    assert!(s0.top_window_ms < 20_000, "{}", s0.top_window_ms);
    // The graph: front -> back, estimated from the sampled front turns (one ask each).
    let edges: Vec<_> = s0
        .edges
        .iter()
        .map(|e| (e.caller, e.callee, e.messages_est))
        .collect();
    assert_eq!(edges, vec![("front", "back", n + TURN_SAMPLE_EVERY)]);
    assert!(s1.edges.is_empty(), "back sends nothing: {:?}", s1.edges);
    // Exact requests per target shard: shard 0 sent every ask to shard 1.
    assert_eq!(s0.to_shards, vec![0, n + TURN_SAMPLE_EVERY]);
    assert_eq!(s1.to_shards, vec![0, 0]);
    e.shutdown();
}

fn key_on_check(e: &Engine, k: u64, shard: u16) -> bool {
    e.handle().shard_of(&ActorId {
        type_name: Front::TYPE_NAME,
        key: ActorKey::from(k),
    }) == shard
}

#[test]
fn a_sampled_turn_is_timed_across_its_awaits() {
    let e = engine();
    let front = key_on::<Front>(&e, 0);
    let back = key_on::<Back>(&e, 0);
    let f = e.actor_ref::<Front>(front);
    for _ in 0..TURN_SAMPLE_EVERY {
        block_on(f.ask(Fwd {
            key: back,
            sleep_ms: 3,
        }))
        .unwrap();
    }
    let stats = e.stats().unwrap();
    let t = stats[0]
        .load
        .types
        .iter()
        .find(|t| t.type_name == "front")
        .unwrap()
        .clone();
    assert_eq!(t.turn_duration.buckets.iter().sum::<u64>(), 1);
    // The sampled turn slept 3 ms: its bucket is above 2^11 µs = 2.048 ms.
    let bucket = t.turn_duration.buckets.iter().position(|&c| c > 0).unwrap();
    assert!(bucket >= 12, "a 3 ms turn in bucket {bucket}: {t:?}");
    assert!(t.turn_duration.sum_us >= 3_000, "{t:?}");
    e.shutdown();
}

/// An actor whose deep size is the bytes it holds (`ActorType::memory_size`).
struct Blob {
    data: Vec<u8>,
}
impl Actor for Blob {
    const TYPE_NAME: &'static str = "blob";
}
/// Makes the blob hold exactly `0` bytes.
struct Fill(usize);
impl Message for Fill {
    type Reply = ();
}
impl Handler<Fill> for Blob {
    async fn handle(&mut self, m: Fill, _: &Context<Self>) {
        self.data = vec![7; m.0];
    }
}

static HOOK_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
fn the_largest_actors_are_ranked_by_their_deep_size_from_sampled_turns_only() {
    use std::sync::atomic::Ordering;
    let config = EngineConfig {
        shards: ShardSpec::Count(1),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        ..EngineConfig::default()
    };
    let e = EngineBuilder::new(config)
        .register(ActorType::new(|_| Front))
        .register(ActorType::new(|_| Back))
        .register(
            ActorType::new(|_| Blob { data: Vec::new() }).memory_size(|b: &Blob| {
                HOOK_CALLS.fetch_add(1, Ordering::Relaxed);
                b.data.capacity()
            }),
        )
        .start()
        .expect("engine starts");
    // Three blobs, each sent exactly one sample period of messages (so each has exactly one
    // sampled turn, its last), and a type without the hook with as many turns.
    let sizes = [(1u64, 1000usize), (2, 5000), (3, 3000)];
    for (key, size) in sizes {
        let b = e.actor_ref::<Blob>(key);
        for _ in 0..TURN_SAMPLE_EVERY {
            block_on(b.ask(Fill(size))).expect("filled");
        }
    }
    for _ in 0..TURN_SAMPLE_EVERY {
        block_on(e.actor_ref::<Back>(9u64).ask(Get)).expect("answered");
    }
    // The hook ran in the sampled turns only: one in 64 of the blobs' 192 turns.
    assert_eq!(HOOK_CALLS.load(Ordering::Relaxed), 3);
    let stats = e.stats().expect("stats");
    let top: Vec<(String, usize)> = stats[0]
        .load
        .top_memory
        .iter()
        .map(|t| (t.actor.to_string(), t.bytes))
        .collect();
    // Largest first, exact deep sizes; `back` (no hook) is not ranked.
    assert_eq!(
        top,
        vec![
            ("blob/2".to_owned(), 5000),
            ("blob/3".to_owned(), 3000),
            ("blob/1".to_owned(), 1000),
        ]
    );
    assert!(stats[0].load.top_memory.iter().all(|t| t.age_ms < 20_000));
    e.shutdown();
}
