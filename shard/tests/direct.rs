//! Direct turns (`shard/src/direct.rs`): a sender on an actor's shard runs the turn itself when
//! the activation is idle with an empty mailbox. These tests hold the guarantees the mailbox
//! path gives: one turn at a time per activation (also while a direct turn awaits), per-sender
//! order, panics discard the activation, deadlines, and a sender in a loop still lets the
//! shard's other tasks run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quark_shard::{
    block_on, Actor, ActorType, CallError, Context, Engine, EngineBuilder, EngineConfig, Handler,
    Message, ShardSpec,
};

fn engine_with(a: ActorType<Probe>) -> Engine {
    EngineBuilder::new(EngineConfig {
        shards: ShardSpec::Count(1),
        ask_timeout: Duration::from_secs(20),
        ..EngineConfig::default()
    })
    .register(a)
    .start()
    .expect("engine starts")
}

/// Records what it handled, and fails loudly if two of its turns ever overlap.
struct Probe {
    in_turn: Arc<AtomicBool>,
    overlaps: Arc<AtomicU64>,
    /// (sender, seq) in handling order.
    seen: Vec<(u64, u64)>,
    generation: u64,
}

impl Actor for Probe {
    const TYPE_NAME: &'static str = "probe";
}

impl Probe {
    fn enter(&self) {
        if self.in_turn.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn leave(&self) {
        self.in_turn.store(false, Ordering::SeqCst);
    }
}

/// A message from `sender` with sequence number `seq`; the handler awaits (a real timer)
/// when `sleep_us > 0`, so some turns finish in their first poll and some do not.
struct Step {
    sender: u64,
    seq: u64,
    sleep_us: u64,
}
impl Message for Step {
    type Reply = u64;
}
impl Handler<Step> for Probe {
    async fn handle(&mut self, m: Step, ctx: &Context<Self>) -> u64 {
        self.enter();
        if m.sleep_us > 0 {
            ctx.sleep(Duration::from_micros(m.sleep_us)).await;
        }
        self.seen.push((m.sender, m.seq));
        self.leave();
        m.seq
    }
}

struct Seen;
impl Message for Seen {
    type Reply = (Vec<(u64, u64)>, u64);
}
impl Handler<Seen> for Probe {
    async fn handle(&mut self, _: Seen, _: &Context<Self>) -> (Vec<(u64, u64)>, u64) {
        (self.seen.clone(), self.generation)
    }
}

struct Boom;
impl Message for Boom {
    type Reply = ();
}
impl Handler<Boom> for Probe {
    async fn handle(&mut self, _: Boom, _: &Context<Self>) {
        panic!("boom in a direct turn");
    }
}

fn probe_type(overlaps: Arc<AtomicU64>) -> ActorType<Probe> {
    let generations = Arc::new(AtomicU64::new(0));
    ActorType::new(move |_| Probe {
        in_turn: Arc::new(AtomicBool::new(false)),
        overlaps: overlaps.clone(),
        seen: Vec::new(),
        generation: generations.fetch_add(1, Ordering::SeqCst),
    })
}

/// Eight tasks on the actor's shard send interleaved tells and asks, a third of which await a
/// timer inside the turn (so direct turns are handed to the activation's task while other
/// senders keep sending): no two turns overlap, nothing is lost, and each sender's messages
/// are handled in the order sent.
#[test]
fn senders_on_the_shard_keep_order_and_turns_never_overlap() {
    let overlaps = Arc::new(AtomicU64::new(0));
    let engine = engine_with(probe_type(overlaps.clone()));
    let r = engine.actor_ref::<Probe>(1u64);
    const SENDERS: u64 = 8;
    const PER_SENDER: u64 = 300;
    let handles: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let r = r.clone();
            engine.spawn_on(0, move || async move {
                for seq in 0..PER_SENDER {
                    let sleep_us = if (seq + sender) % 3 == 0 { 50 } else { 0 };
                    let m = Step {
                        sender,
                        seq,
                        sleep_us,
                    };
                    if seq % 2 == 0 {
                        r.tell(m).await.expect("tell");
                    } else {
                        assert_eq!(r.ask(m).await.expect("ask"), seq);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("sender finished");
    }
    let (seen, _) = block_on(r.ask(Seen)).expect("ask");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two turns overlapped");
    assert_eq!(
        seen.len() as u64,
        SENDERS * PER_SENDER,
        "every message handled once"
    );
    for sender in 0..SENDERS {
        let order: Vec<u64> = seen
            .iter()
            .filter(|(s, _)| *s == sender)
            .map(|(_, q)| *q)
            .collect();
        assert_eq!(
            order,
            (0..PER_SENDER).collect::<Vec<_>>(),
            "sender {sender}'s messages out of order"
        );
    }
    let stats = engine.stats().expect("stats");
    assert_eq!(stats[0].panics, 0);
    engine.shutdown();
}

/// A direct ask whose handler panics gets `ActorPanicked`; the activation is discarded (the
/// next message builds a fresh one), and a direct tell that panics does the same.
#[test]
fn a_panicking_direct_turn_discards_the_activation() {
    let overlaps = Arc::new(AtomicU64::new(0));
    let engine = engine_with(probe_type(overlaps));
    let r = engine.actor_ref::<Probe>(1u64);
    let r2 = r.clone();
    let (first_gen, panicked, second_gen, third_gen) = engine
        .spawn_on(0, move || async move {
            let (_, g1) = r2.ask(Seen).await.expect("ask");
            // Idle with an empty mailbox: this ask runs directly, and panics.
            let p = r2.ask(Boom).await;
            let (_, g2) = r2.ask(Seen).await.expect("ask after the panic");
            r2.tell(Boom).await.expect("a tell is sent");
            let (_, g3) = r2.ask(Seen).await.expect("ask after the second panic");
            (g1, p, g2, g3)
        })
        .join()
        .expect("task finished");
    assert!(
        matches!(&panicked, Err(CallError::ActorPanicked { actor, panic })
            if actor == r.id() && panic.contains("boom in a direct turn")),
        "{panicked:?}"
    );
    assert!(second_gen > first_gen, "a fresh activation after the panic");
    assert!(
        third_gen > second_gen,
        "a fresh activation after the tell's panic"
    );
    assert_eq!(engine.stats().expect("stats")[0].panics, 2);
    engine.shutdown();
}

/// A direct ask whose turn awaits past the caller's deadline: the caller gets `Timeout` at its
/// deadline (the turn goes on and finishes; its reply is dropped).
#[test]
fn a_direct_ask_that_awaits_keeps_its_deadline() {
    let overlaps = Arc::new(AtomicU64::new(0));
    let engine = engine_with(probe_type(overlaps));
    let r = engine.actor_ref::<Probe>(1u64);
    let r2 = r.clone();
    let (timed_out, after) = engine
        .spawn_on(0, move || async move {
            r2.ask(Seen).await.expect("activate");
            let slow = Step {
                sender: 0,
                seq: 1,
                sleep_us: 300_000,
            };
            let t = r2.ask_timeout(slow, Duration::from_millis(20)).await;
            // Queued behind the slow turn, answered once it ends.
            let (seen, _) = r2.ask(Seen).await.expect("ask");
            (t, seen)
        })
        .join()
        .expect("task finished");
    assert!(
        matches!(timed_out, Err(CallError::Timeout { .. })),
        "{timed_out:?}"
    );
    assert_eq!(after, vec![(0, 1)], "the turn ran to its end");
    engine.shutdown();
}

/// Returns to the scheduler once (wakes itself first).
struct YieldOnce(bool);
impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// A task asking in a loop, every ask a direct turn that finishes at once, still lets the
/// shard's other tasks run (it yields after a bounded number of direct turns): without that,
/// the other task would not run once before the loop ends.
#[test]
fn a_sender_in_a_loop_of_direct_turns_lets_other_tasks_run() {
    let overlaps = Arc::new(AtomicU64::new(0));
    let engine = engine_with(probe_type(overlaps));
    let r = engine.actor_ref::<Probe>(1u64);
    block_on(r.ask(Seen)).expect("activate");
    let ticks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (t, s) = (ticks.clone(), stop.clone());
    let other = engine.spawn_on(0, move || async move {
        while !s.load(Ordering::SeqCst) {
            t.fetch_add(1, Ordering::SeqCst);
            YieldOnce(false).await;
        }
    });
    // The other task is running before the loop starts.
    while ticks.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    let (t, s) = (ticks.clone(), stop.clone());
    let during = engine
        .spawn_on(0, move || async move {
            let before = t.load(Ordering::SeqCst);
            for seq in 0..10_000u64 {
                let m = Step {
                    sender: 0,
                    seq,
                    sleep_us: 0,
                };
                r.ask(m).await.expect("ask");
            }
            let during = t.load(Ordering::SeqCst) - before;
            s.store(true, Ordering::SeqCst);
            during
        })
        .join()
        .expect("task finished");
    other.join().expect("other task finished");
    // 10,000 asks, a yield every 64 direct turns: the other task ran about 150 times.
    assert!(during >= 100, "the other task ran only {during} times");
    engine.shutdown();
}

/// A message whose handler's future is larger than a turn slot's inline storage (256 bytes):
/// the direct path boxes it in the turn instead of placing it typed.
struct Big {
    seq: u64,
    sleep_us: u64,
}
impl Message for Big {
    type Reply = u64;
}
impl Handler<Big> for Probe {
    async fn handle(&mut self, m: Big, ctx: &Context<Self>) -> u64 {
        self.enter();
        // Held across the await, so it is part of the handler's future.
        let pad = [m.seq as u8; 512];
        if m.sleep_us > 0 {
            ctx.sleep(Duration::from_micros(m.sleep_us)).await;
        }
        self.seen.push((9, m.seq));
        self.leave();
        m.seq + u64::from(pad[511] == m.seq as u8)
    }
}

/// Direct tells and asks whose handler futures are too large for the slot's inline storage,
/// some finishing at once and some awaiting, one after the other on the same shard: each runs
/// once, in order, and the slots they ran in go back to the pool empty (a slot given back
/// still holding its finished future made the next turn in it panic: "a turn holds one
/// future"), and the same with small futures in between.
#[test]
fn direct_turns_with_futures_too_large_for_the_slot_run_and_free_their_slot() {
    let overlaps = Arc::new(AtomicU64::new(0));
    let engine = engine_with(probe_type(overlaps.clone()));
    let r = engine.actor_ref::<Probe>(1u64);
    let r2 = r.clone();
    engine
        .spawn_on(0, move || async move {
            r2.ask(Seen).await.expect("activate");
            for seq in 0..200u64 {
                let sleep_us = if seq % 10 == 9 { 50 } else { 0 };
                if seq % 2 == 0 {
                    r2.tell(Big { seq, sleep_us }).await.expect("tell");
                } else {
                    assert_eq!(r2.ask(Big { seq, sleep_us }).await.expect("ask"), seq + 1);
                }
                // A small turn in between, run in the same pooled slot.
                let step = Step {
                    sender: 1,
                    seq,
                    sleep_us: 0,
                };
                assert_eq!(r2.ask(step).await.expect("small ask"), seq);
            }
        })
        .join()
        .expect("sender finished");
    let (seen, generation) = block_on(r.ask(Seen)).expect("ask");
    let big: Vec<u64> = seen
        .iter()
        .filter(|(s, _)| *s == 9)
        .map(|(_, q)| *q)
        .collect();
    assert_eq!(
        big,
        (0..200).collect::<Vec<_>>(),
        "each large turn once, in order"
    );
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two turns overlapped");
    assert_eq!(generation, 0, "no activation was discarded");
    assert_eq!(engine.stats().expect("stats")[0].panics, 0);
    engine.shutdown();
}
