//! Timers stay bounded under churn: cancelling a timer removes it from the shard's heap (not
//! only from the table of live timers), so set/cancel churn cannot grow the heap.

use std::time::Duration;

use quark_shard::{
    block_on, Actor, ActorType, Context, EngineBuilder, EngineConfig, Handler, Message, ShardSpec,
};

struct Churner;
impl Actor for Churner {
    const TYPE_NAME: &'static str = "churner";
}

#[derive(Clone)]
struct Tick;
impl Message for Tick {
    type Reply = ();
}
impl Handler<Tick> for Churner {
    async fn handle(&mut self, _: Tick, _: &Context<Self>) {}
}

/// Sets and cancels `n` timers, keeping one long timer live.
struct Churn(u32);
impl Message for Churn {
    type Reply = u32;
}
impl Handler<Churn> for Churner {
    async fn handle(&mut self, m: Churn, ctx: &Context<Self>) -> u32 {
        let mut cancelled = 0;
        for _ in 0..m.0 {
            let id = ctx.set_timer(Duration::from_secs(3600), Tick);
            cancelled += u32::from(ctx.cancel_timer(id));
        }
        cancelled
    }
}

struct KeepOne;
impl Message for KeepOne {
    type Reply = ();
}
impl Handler<KeepOne> for Churner {
    async fn handle(&mut self, _: KeepOne, ctx: &Context<Self>) {
        ctx.set_timer(Duration::from_secs(3600), Tick);
    }
}

#[test]
fn a_million_set_cancel_pairs_keep_the_timer_heap_bounded() {
    let engine = EngineBuilder::new(EngineConfig {
        shards: ShardSpec::Count(1),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        ..EngineConfig::default()
    })
    .register(ActorType::new(|_| Churner))
    .start()
    .expect("engine starts");
    let a = engine.actor_ref::<Churner>(1u64);
    block_on(a.ask(KeepOne)).expect("set one live timer");
    for _ in 0..10 {
        assert_eq!(block_on(a.ask(Churn(100_000))).expect("churn"), 100_000);
    }
    let stats = engine.stats().expect("the shard answers");
    assert_eq!(stats[0].timers, 1, "one live timer");
    assert!(
        stats[0].timer_heap_entries <= 2 + 64,
        "the heap holds {} entries for 1 live timer after 1 M set/cancel pairs",
        stats[0].timer_heap_entries
    );
    engine.shutdown();
}

/// `quark_shard::sleep` never ends before its deadline, whether the shard is parked (it sleeps
/// on its timerfd until the earliest sleeper) or woken earlier by other sleepers, and a sleep
/// dropped before its deadline neither fires nor keeps the others from firing.
#[test]
fn a_sleep_on_a_shard_never_ends_before_its_deadline() {
    let engine = EngineBuilder::new(EngineConfig {
        shards: ShardSpec::Count(1),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        ..EngineConfig::default()
    })
    .register(ActorType::new(|_| Churner))
    .start()
    .expect("engine starts");
    // Three tasks sleeping at once with interleaved deadlines (each wake-up of one is an early
    // wake-up of the pump for the others), 0 to 2.9 ms in steps of 37 us.
    let tasks: Vec<_> = (0..3u64)
        .map(|k| {
            engine.spawn_on(0, move || async move {
                let mut early = Vec::new();
                for i in 0..40u64 {
                    let d = Duration::from_micros((i * 3 + k) * 37 % 2_900);
                    let t0 = std::time::Instant::now();
                    quark_shard::sleep(d).await;
                    let took = t0.elapsed();
                    if took < d {
                        early.push((d, took));
                    }
                    // A sleep abandoned at once (its future dropped): no effect on the others.
                    let half = Duration::from_micros(d.as_micros() as u64 / 2 + 500);
                    let _ = futures::FutureExt::now_or_never(quark_shard::sleep(half));
                }
                early
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for t in tasks {
        let early = block_on(t).expect("the sleeping task finishes");
        assert!(
            early.is_empty(),
            "sleeps ended before their deadline: {early:?}"
        );
    }
    assert!(
        std::time::Instant::now() < deadline,
        "120 sleeps of at most 2.9 ms took more than 30 s"
    );
    engine.shutdown();
}
