//! Memory attribution with the counting allocator (issue 18, docs/MEMORY.md): per-actor
//! live-byte estimates against the bytes each actor holds, per-shard sums against the
//! allocator's own count, frees of memory allocated on another shard, estimates that move
//! with a migrated actor, the `memory_size` override, refused activations and leak reports.
//!
//! This binary installs `CountingAlloc` as its global allocator (a test binary needs its own),
//! so every test here runs with counting on.

use std::alloc::System;
use std::time::Duration;

use quark_shard::memory::{self, ActorMemory, MemorySnapshot};
use quark_shard::{
    Actor, ActorId, ActorKey, ActorType, CallError, Context, CountingAlloc, Engine, EngineBuilder,
    EngineConfig, Handler, Message, OverloadCause, PlacementPolicy, ShardSpec,
};

#[global_allocator]
static ALLOC: CountingAlloc<System> = CountingAlloc::new(System);

fn engine(types: impl FnOnce(EngineBuilder) -> EngineBuilder) -> Engine {
    let config = EngineConfig {
        shards: ShardSpec::Count(2),
        idle_spin: Duration::from_micros(20),
        ask_timeout: Duration::from_secs(10),
        ..EngineConfig::default()
    };
    types(EngineBuilder::new(config))
        .start()
        .expect("engine starts")
}

fn id_of<A: Actor>(key: impl Into<ActorKey>) -> ActorId {
    ActorId {
        type_name: A::TYPE_NAME,
        key: key.into(),
    }
}

/// Keys `0..` whose home is shard `shard`, `n` of them.
fn keys_on<A: Actor>(e: &Engine, shard: u16, n: usize) -> Vec<u64> {
    (0u64..)
        .filter(|k| e.placement(&id_of::<A>(*k)).expect("placement").home == shard)
        .take(n)
        .collect()
}

fn memory(e: &Engine) -> Vec<MemorySnapshot> {
    e.stats()
        .expect("stats")
        .into_iter()
        .map(|s| s.load.memory)
        .collect()
}

fn figure(snaps: &[MemorySnapshot], id: &ActorId) -> Option<ActorMemory> {
    snaps
        .iter()
        .flat_map(|s| s.top.iter().chain(s.candidates.iter()))
        .find(|a| &a.actor == id)
        .cloned()
}

fn within(got: u64, want: u64, frac: f64) -> bool {
    (got as f64 - want as f64).abs() <= want as f64 * frac
}

// ---- an actor holding a buffer of a known size, or a growing vector

#[derive(Default)]
struct Blob {
    data: Vec<u8>,
    grow: Vec<u64>,
}
impl Actor for Blob {
    const TYPE_NAME: &'static str = "blob";
}

/// Replaces the buffer with one of exactly this many bytes; replies the bytes held.
struct Fill(usize);
impl Message for Fill {
    type Reply = usize;
}
impl Handler<Fill> for Blob {
    async fn handle(&mut self, m: Fill, _: &Context<Self>) -> usize {
        self.data = vec![7u8; m.0];
        self.held()
    }
}

/// Pushes this many `u64`s on the growing vector; replies the bytes held.
struct Push(usize);
impl Message for Push {
    type Reply = usize;
}
impl Handler<Push> for Blob {
    async fn handle(&mut self, m: Push, _: &Context<Self>) -> usize {
        for i in 0..m.0 {
            self.grow.push(i as u64);
        }
        self.held()
    }
}

impl Blob {
    fn held(&self) -> usize {
        self.data.capacity() + self.grow.capacity() * 8
    }
}

/// Sends a buffer of this many bytes to `Sink` `key` (which drops it or keeps it).
struct Give {
    to: u64,
    bytes: usize,
    keep: bool,
}
impl Message for Give {
    type Reply = ();
}
impl Handler<Give> for Blob {
    async fn handle(&mut self, m: Give, ctx: &Context<Self>) {
        let buf = vec![1u8; m.bytes];
        ctx.actor_ref::<Sink>(m.to)
            .ask(Take(buf, m.keep))
            .await
            .expect("sink takes");
    }
}

#[derive(Default)]
struct Sink {
    kept: Vec<Vec<u8>>,
}
impl Actor for Sink {
    const TYPE_NAME: &'static str = "sink";
}
struct Take(Vec<u8>, bool);
impl Message for Take {
    type Reply = ();
}
impl Handler<Take> for Sink {
    async fn handle(&mut self, m: Take, _: &Context<Self>) {
        if m.1 {
            self.kept.push(m.0);
        }
    }
}

#[test]
fn per_actor_estimates_match_the_bytes_held_and_shards_match_the_allocator() {
    assert!(memory::counting(), "this binary counts");
    let e = engine(|b| b.register(ActorType::new(|_| Blob::default())));
    let sizes: [usize; 5] = [1 << 10, 10 << 10, 100 << 10, 1 << 20, 10 << 20];
    let before = memory(&e);
    let keys = keys_on::<Blob>(&e, 0, sizes.len() + 3);
    let mut truth = Vec::new();
    for (k, n) in keys.iter().zip(sizes) {
        let held = e.actor_ref::<Blob>(*k).ask_blocking(Fill(n)).expect("fill");
        assert_eq!(held, n);
        truth.push((*k, held));
    }
    // Growing vectors: many turns each, reallocations on the way.
    for (i, k) in keys[sizes.len()..].iter().enumerate() {
        let r = e.actor_ref::<Blob>(*k);
        let mut held = 0;
        for _ in 0..(50 * (i + 1)) {
            held = r.ask_blocking(Push(100 * (i + 1))).expect("push");
        }
        truth.push((*k, held));
    }
    let after = memory(&e);
    let s0 = &after[0];
    assert!(s0.slot != 0, "shard 0 has an accounting slot");
    let mut sum_truth = 0u64;
    for (k, held) in &truth {
        let id = id_of::<Blob>(*k);
        let f = figure(&after, &id).unwrap_or_else(|| panic!("{id} has a figure"));
        assert!(!f.deep, "no hook: an estimate");
        assert!(
            within(f.bytes, *held as u64, 0.10),
            "{id}: estimate {} bytes, holds {held} (more than 10% apart)",
            f.bytes
        );
        sum_truth += *held as u64;
    }
    // Per shard: the sum of the per-actor figures against the allocator's count of the bytes
    // allocated in turns (live - other), and the growth of the allocator's live count
    // against what the actors hold.
    let attributed = s0.live_bytes - s0.other_bytes;
    assert!(
        within(s0.actor_bytes, attributed, 0.02),
        "shard 0: actors {} bytes, allocator {} bytes in turns",
        s0.actor_bytes,
        attributed
    );
    let grown = s0.live_bytes.saturating_sub(before[0].live_bytes);
    assert!(
        within(grown, sum_truth, 0.02),
        "shard 0: the allocator's live count grew by {grown}, the actors hold {sum_truth}"
    );
    let t = s0
        .per_type
        .iter()
        .find(|t| t.type_name == "blob")
        .expect("per type");
    assert_eq!(t.activations, truth.len() as u64);
    assert_eq!(t.bytes, s0.actor_bytes);
    assert_eq!(s0.top[0].actor, id_of::<Blob>(truth[4].0), "10 MiB first");
    e.shutdown();
}

#[test]
fn frees_on_another_shard_are_charged_to_the_allocating_shard_and_actor() {
    let e = engine(|b| {
        b.register(ActorType::new(|_| Blob::default()))
            .register(ActorType::new(|_| Sink::default()))
    });
    let giver = keys_on::<Blob>(&e, 0, 1)[0];
    let sink = keys_on::<Sink>(&e, 1, 1)[0];
    let g = e.actor_ref::<Blob>(giver);
    g.ask_blocking(Fill(1)).expect("activate the giver");
    e.actor_ref::<Sink>(sink)
        .ask_blocking(Take(Vec::new(), false))
        .expect("activate the sink");
    let before = memory(&e);
    // 4 MiB allocated on shard 0 by the giver, freed on shard 1 by the sink.
    for _ in 0..4 {
        g.ask_blocking(Give {
            to: sink,
            bytes: 1 << 20,
            keep: false,
        })
        .expect("give");
    }
    let after = memory(&e);
    let drift0 = after[0].live_bytes as i64 - before[0].live_bytes as i64;
    let drift1 = after[1].live_bytes as i64 - before[1].live_bytes as i64;
    assert!(
        drift0.abs() < 64 << 10 && drift1.abs() < 64 << 10,
        "freed remotely: shard 0 drifted {drift0} bytes, shard 1 {drift1} (4 MiB went through)"
    );
    let gid = id_of::<Blob>(giver);
    let f = figure(&after, &gid).expect("giver");
    assert!(
        f.bytes < 64 << 10,
        "the giver's estimate is back down: {}",
        f.bytes
    );
    // Kept by the sink: still the giver's (it allocated it), still shard 0's.
    g.ask_blocking(Give {
        to: sink,
        bytes: 2 << 20,
        keep: true,
    })
    .expect("give");
    let kept = memory(&e);
    let f = figure(&kept, &gid).expect("giver");
    assert!(within(f.bytes, 2 << 20, 0.05), "kept: giver {}", f.bytes);
    let grown0 = kept[0].live_bytes as i64 - after[0].live_bytes as i64;
    assert!(
        within(grown0 as u64, 2 << 20, 0.05),
        "shard 0 grew {grown0}"
    );
    e.shutdown();
}

#[test]
fn a_moved_actor_takes_its_estimate_along() {
    let e = engine(|b| b.register(ActorType::new(|_| Blob::default()).movable()));
    let k = keys_on::<Blob>(&e, 0, 1)[0];
    let id = id_of::<Blob>(k);
    e.actor_ref::<Blob>(k)
        .ask_blocking(Fill(3 << 20))
        .expect("fill");
    let before = memory(&e);
    assert!(within(before[0].actor_bytes, 3 << 20, 0.05));
    e.migrate(&id, 1).expect("moves");
    // The next message runs on shard 1 (and the snapshot comes after it).
    e.actor_ref::<Blob>(k).ask_blocking(Push(0)).expect("ask");
    let after = memory(&e);
    let f = figure(&after, &id).expect("figure");
    assert!(
        within(f.bytes, 3 << 20, 0.05),
        "after the move: {}",
        f.bytes
    );
    assert!(
        after[1].actor_bytes >= 3 << 20 && after[0].actor_bytes < 64 << 10,
        "shard 0 {} bytes of actors, shard 1 {}",
        after[0].actor_bytes,
        after[1].actor_bytes
    );
    e.shutdown();
}

#[test]
fn the_memory_size_hook_overrides_the_estimate() {
    let e = engine(|b| {
        b.register(ActorType::new(|_| Blob::default()).memory_size(|b: &Blob| b.held() + 12_345))
    });
    e.actor_ref::<Blob>(1u64)
        .ask_blocking(Fill(1 << 20))
        .expect("fill");
    let f = figure(&memory(&e), &id_of::<Blob>(1u64)).expect("figure");
    assert!(f.deep);
    assert_eq!(f.bytes, (1 << 20) + 12_345);
    e.shutdown();
}

#[test]
fn a_shard_refusing_activations_fails_new_ones_as_overloaded_by_memory() {
    let e = engine(|b| b.register(ActorType::new(|_| Blob::default())));
    let keys = keys_on::<Blob>(&e, 1, 2);
    e.actor_ref::<Blob>(keys[0])
        .ask_blocking(Fill(10))
        .expect("before");
    let slot = memory(&e)[1].slot;
    assert!(memory::set_refuse_activations(slot, true));
    let err = e
        .actor_ref::<Blob>(keys[1])
        .ask_blocking(Fill(10))
        .expect_err("refused");
    assert!(
        matches!(&err, CallError::Overloaded { cause: OverloadCause::Memory, actor } if *actor == id_of::<Blob>(keys[1])),
        "{err}"
    );
    assert!(err.to_string().contains("memory"), "{err}");
    // An actor already active keeps working.
    e.actor_ref::<Blob>(keys[0])
        .ask_blocking(Fill(20))
        .expect("active actors still run");
    memory::set_refuse_activations(slot, false);
    e.actor_ref::<Blob>(keys[1])
        .ask_blocking(Fill(10))
        .expect("admitted again");
    e.shutdown();
}

/// A placement policy that picks a shard (here `Shard(1)`, away from the actor's home) does
/// not fall back to another shard when that one refuses: the call fails as overloaded and the
/// actor is active nowhere; once admitted again it activates where the policy says.
#[test]
fn a_refusal_is_not_placed_elsewhere_whatever_the_placement_policy() {
    let e = engine(|b| {
        b.register(
            ActorType::new(|_| Blob::default())
                .movable()
                .placement(PlacementPolicy::Shard(1)),
        )
    });
    let key = keys_on::<Blob>(&e, 0, 1)[0];
    let id = id_of::<Blob>(key);
    let slot = memory(&e)[1].slot;
    let before: Vec<u64> = memory(&e).iter().map(|m| m.activations).collect();
    assert!(memory::set_refuse_activations(slot, true));
    let err = e
        .actor_ref::<Blob>(key)
        .ask_blocking(Fill(10))
        .expect_err("refused on the policy's shard");
    memory::set_refuse_activations(slot, false);
    assert!(
        matches!(
            &err,
            CallError::Overloaded {
                cause: OverloadCause::Memory,
                ..
            }
        ),
        "{err}"
    );
    let after: Vec<u64> = memory(&e).iter().map(|m| m.activations).collect();
    assert_eq!(
        after, before,
        "activated nowhere (not at its home shard 0 either)"
    );
    e.actor_ref::<Blob>(key)
        .ask_blocking(Fill(10))
        .expect("admitted again");
    assert_eq!(e.placement(&id).expect("placement").shard, 1);
    e.shutdown();
}

#[test]
fn an_actor_that_keeps_growing_is_reported() {
    // Every stats call is a sample (interval 0); 3 growing samples of 100 KiB at least.
    memory::set_leak_policy(3, 100 << 10, Duration::ZERO);
    let e = engine(|b| b.register(ActorType::new(|_| Blob::default())));
    let leaky = e.actor_ref::<Blob>(1u64);
    let steady = e.actor_ref::<Blob>(2u64);
    steady.ask_blocking(Fill(1 << 20)).expect("fill");
    let mut reports = Vec::new();
    for i in 0..6 {
        leaky
            .ask_blocking(Fill((i + 1) * (64 << 10)))
            .expect("grow");
        steady.ask_blocking(Push(0)).expect("touch");
        reports = memory(&e)
            .into_iter()
            .flat_map(|s| s.leaks)
            .collect::<Vec<_>>();
    }
    let leak = reports
        .iter()
        .find(|l| l.actor == id_of::<Blob>(1u64))
        .unwrap_or_else(|| panic!("the growing actor is reported: {reports:?}"));
    assert!(
        leak.samples >= 3 && leak.growth_bytes >= 100 << 10,
        "{leak:?}"
    );
    assert!(
        !reports.iter().any(|l| l.actor == id_of::<Blob>(2u64)),
        "the steady actor is not: {reports:?}"
    );
    memory::set_leak_policy(0, 0, Duration::ZERO);
    e.shutdown();
}
