//! Directory entries are released when a placed or moved actor deactivates (docs/MIGRATION.md,
//! "Placement policies" and "How a move works"): the directory holds only actors that live
//! away from their home now, and a release never lets a second activation start.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use quark_shard::{
    block_on, Actor, ActorId, ActorKey, ActorType, Context, Engine, EngineBuilder, EngineConfig,
    Handler, Message, PlacementPolicy, ShardSpec,
};

const SHARDS: u16 = 3;
const KEYS: usize = 48;
/// The race test uses keys `HALF..KEYS`, the other test `0..HALF`.
const HALF: u64 = KEYS as u64 / 2;

/// Live activations per key (a second one at once is a violation).
static LIVE: [AtomicI32; KEYS] = [const { AtomicI32::new(0) }; KEYS];
static VIOLATIONS: AtomicU64 = AtomicU64::new(0);
static ACTIVATIONS: AtomicU64 = AtomicU64::new(0);

/// Placed on its first caller's shard; not movable.
struct Seat {
    key: usize,
}
impl Actor for Seat {
    const TYPE_NAME: &'static str = "dr-seat";
    async fn on_activate(&mut self, _: &Context<Self>) {
        ACTIVATIONS.fetch_add(1, Ordering::SeqCst);
        if LIVE[self.key].fetch_add(1, Ordering::SeqCst) != 0 {
            VIOLATIONS.fetch_add(1, Ordering::SeqCst);
        }
    }
    async fn on_deactivate(&mut self, _: &Context<Self>) {
        LIVE[self.key].fetch_sub(1, Ordering::SeqCst);
    }
}

/// Movable, moved away by the test.
struct Crate {
    n: u64,
}
impl Actor for Crate {
    const TYPE_NAME: &'static str = "dr-box";
}

struct Ping;
impl Message for Ping {
    /// (shard, calls so far)
    type Reply = (u16, u64);
}
impl Handler<Ping> for Seat {
    async fn handle(&mut self, _: Ping, ctx: &Context<Self>) -> (u16, u64) {
        (ctx.shard(), 0)
    }
}
impl Handler<Ping> for Crate {
    async fn handle(&mut self, _: Ping, ctx: &Context<Self>) -> (u16, u64) {
        self.n += 1;
        (ctx.shard(), self.n)
    }
}

fn engine(idle: Duration) -> Engine {
    let config = EngineConfig {
        shards: ShardSpec::Count(SHARDS as usize),
        pin_threads: false,
        idle_spin: Duration::from_micros(20),
        ask_timeout: Duration::from_secs(10),
        ..EngineConfig::default()
    };
    EngineBuilder::new(config)
        .register(
            ActorType::new(|id: &ActorId| Seat {
                key: match id.key {
                    ActorKey::U64(k) => k as usize % KEYS,
                    _ => 0,
                },
            })
            .placement(PlacementPolicy::PreferCaller)
            .idle_timeout(idle),
        )
        .register(
            ActorType::new(|_| Crate { n: 0 })
                .movable()
                .idle_timeout(idle),
        )
        .start()
        .expect("engine starts")
}

fn entries(engine: &Engine) -> u64 {
    engine
        .stats()
        .expect("stats")
        .iter()
        .map(|s| s.directory_entries)
        .sum()
}

/// Waits until `f` holds, at most 20 s.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < end, "{what}: not within 20 s");
        std::thread::yield_now();
    }
}

/// Runs `f` on a task of `shard` and waits for it.
fn on_shard<T: Send + 'static, F>(
    engine: &Engine,
    shard: u16,
    f: impl FnOnce() -> F + Send + 'static,
) -> T
where
    F: std::future::Future<Output = T> + 'static,
{
    let h = engine.spawn_on(shard, f);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.join());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("a shard task answered")
        .expect("the task ran")
}

/// Actors placed away by their policy and actors moved away make directory entries; once
/// they deactivate (idle), every entry is gone (the directory shrinks back to zero), and a
/// later call still reaches each actor (placed again, or at home). Fails with the release
/// removed (the entries stay).
#[test]
fn entries_of_deactivated_actors_are_released() {
    let engine = engine(Duration::from_millis(100));
    let mut away = 0;
    // The first half of the keys (the other test counts the second half).
    let keys = 0..HALF;
    for k in keys.clone() {
        let home = engine.handle().shard_of(&ActorId::new(Seat::TYPE_NAME, k));
        let caller = (home + 1) % SHARDS;
        let r = engine.actor_ref::<Seat>(k);
        let (at, _) =
            on_shard(&engine, caller, move || async move { r.ask(Ping).await }).expect("ask");
        assert_eq!(at, caller, "key {k}: placed on its caller's shard");
        away += 1;
        let b = engine.actor_ref::<Crate>(k);
        block_on(b.ask(Ping)).expect("box ask");
        let bhome = engine.handle().shard_of(&ActorId::new(Crate::TYPE_NAME, k));
        engine
            .migrate(&ActorId::new(Crate::TYPE_NAME, k), (bhome + 1) % SHARDS)
            .expect("move");
        away += 1;
    }
    let n = entries(&engine);
    assert!(n > 0 && n <= away, "entries while they live away: {n}");
    until("every entry released", || entries(&engine) == 0);
    // Each still answers (a fresh activation, placed by its policy again / at home).
    for k in keys {
        block_on(engine.actor_ref::<Seat>(k).ask(Ping)).expect("seat after the release");
        let (_, n) = block_on(engine.actor_ref::<Crate>(k).ask(Ping)).expect("box after");
        assert_eq!(
            n, 1,
            "key {k}: a fresh activation after its idle deactivation"
        );
    }
    assert_eq!(VIOLATIONS.load(Ordering::SeqCst), 0);
    engine.shutdown();
}

/// Actors that deactivate after 1 ms idle and are called without pause from tasks on every
/// shard and from a thread outside: releases race with calls forwarded to the place; at no
/// moment are two activations of one id alive (counted in `on_activate`/`on_deactivate`).
/// Fails with the home dropping the entry at the notice without asking the place (a call it
/// forwarded before reactivates the actor there, the next one is placed afresh elsewhere: 3
/// double activations in one run).
#[test]
fn a_release_never_lets_a_second_activation_start() {
    let engine = engine(Duration::from_millis(1));
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in 0..SHARDS {
        let (stop, calls) = (stop.clone(), calls.clone());
        let refs: Vec<_> = (HALF..KEYS as u64)
            .map(|k| engine.actor_ref::<Seat>(k))
            .collect();
        tasks.push(engine.spawn_on(s, move || async move {
            let mut i = s as usize * 5;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 7) % refs.len();
                refs[i].ask(Ping).await.expect("ask from a shard");
                calls.fetch_add(1, Ordering::Relaxed);
                if i.is_multiple_of(3) {
                    quark_shard::sleep(Duration::from_millis(2)).await;
                }
            }
        }));
    }
    let outside = {
        let (stop, calls, e) = (stop.clone(), calls.clone(), engine.handle());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 11) % (KEYS - HALF as usize);
                let k = HALF + i as u64;
                block_on(e.actor_ref::<Seat>(k).ask(Ping)).expect("ask from outside");
                calls.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Until many activations came and went (each a release raced by calls).
    until("reactivations", || {
        ACTIVATIONS.load(Ordering::SeqCst) > 20 * KEYS as u64
    });
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(t.join());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a calling task ended")
            .expect("it ran");
    }
    outside.join().expect("the outside caller");
    assert_eq!(
        VIOLATIONS.load(Ordering::SeqCst),
        0,
        "two activations of one id at once ({} activations, {} calls)",
        ACTIVATIONS.load(Ordering::SeqCst),
        calls.load(Ordering::Relaxed)
    );
    until("entries released after the traffic", || {
        entries(&engine) == 0
    });
}
