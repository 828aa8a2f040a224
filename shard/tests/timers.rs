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
