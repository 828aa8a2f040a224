//! `EngineHandle::deactivate` (issue 18, docs/MEMORY.md "Deactivating idle durable actors"): a
//! normal deactivation of one named actor from outside its turns: the turn in progress
//! finishes first, `on_deactivate` runs, and the next message activates the actor again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use quark_shard::{
    Actor, ActorId, Context, DeactivateError, Deactivation, Engine, EngineBuilder, EngineConfig,
    Handler, Message, ShardSpec,
};

/// What happened, in order.
static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn note(e: impl Into<String>) {
    EVENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(e.into());
}

fn events() -> Vec<String> {
    EVENTS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

struct Slow {
    n: u64,
}
impl Actor for Slow {
    const TYPE_NAME: &'static str = "evict.slow";
    async fn on_activate(&mut self, _: &Context<Self>) {
        note("activate");
    }
    async fn on_deactivate(&mut self, _: &Context<Self>) {
        note(format!("deactivate n={}", self.n));
    }
}
/// Counts, after waiting `0` ms in the turn.
struct Bump(u64);
impl Message for Bump {
    type Reply = u64;
}
impl Handler<Bump> for Slow {
    async fn handle(&mut self, m: Bump, ctx: &Context<Self>) -> u64 {
        note("turn start");
        ctx.sleep(Duration::from_millis(m.0)).await;
        self.n += 1;
        note("turn end");
        self.n
    }
}

fn engine() -> Engine {
    EngineBuilder::new(EngineConfig {
        shards: ShardSpec::Count(2),
        idle_spin: Duration::from_micros(20),
        ask_timeout: Duration::from_secs(10),
        ..EngineConfig::default()
    })
    .register(quark_shard::ActorType::new(|_| Slow { n: 0 }))
    .start()
    .expect("engine starts")
}

fn wait_for(what: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&events()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", events());
        std::thread::yield_now();
    }
}

#[test]
fn a_named_actor_deactivates_after_its_turn_in_progress_and_its_next_message_reactivates_it() {
    let e = engine();
    let h = e.handle();
    let id = ActorId::new(Slow::TYPE_NAME, 7u64);
    assert_eq!(
        quark_shard::block_on(h.deactivate(&id)),
        Ok(Deactivation::NotActive),
        "not active yet"
    );
    assert!(matches!(
        quark_shard::block_on(h.deactivate(&ActorId::new("evict.nope", 1u64))),
        Err(DeactivateError::UnknownType { .. })
    ));
    let slow = e.actor_ref::<Slow>(7u64);
    assert_eq!(slow.ask_blocking(Bump(0)).expect("first"), 1);
    // A turn in progress (sleeping 200 ms) when the deactivation is asked for.
    let pending = std::thread::spawn({
        let slow = slow.clone();
        move || slow.ask_blocking(Bump(200))
    });
    wait_for("the second turn starts", |ev| {
        ev.iter().filter(|x| *x == "turn start").count() == 2
    });
    let asked = quark_shard::block_on(h.deactivate(&id)).expect("asked");
    assert_eq!(
        asked,
        Deactivation::Requested {
            shard: h.shard_of(&id)
        }
    );
    assert_eq!(
        pending
            .join()
            .expect("thread")
            .expect("the turn in progress finishes"),
        2
    );
    wait_for("deactivated", |ev| {
        ev.iter().any(|x| x.starts_with("deactivate"))
    });
    // The turn ended before the deactivation, which saw its effect.
    assert_eq!(
        events(),
        [
            "activate",
            "turn start",
            "turn end",
            "turn start",
            "turn end",
            "deactivate n=2"
        ]
    );
    // The next message activates it again (a plain factory: from scratch).
    assert_eq!(slow.ask_blocking(Bump(0)).expect("again"), 1);
    assert_eq!(events().iter().filter(|x| *x == "activate").count(), 2);
    e.shutdown();
}
