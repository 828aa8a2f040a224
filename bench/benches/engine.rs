//! Criterion micro-benchmarks of the shard engine, driven from inside a shard.
//!
//! Each group starts one two-shard node (idle spin 100 ms, so neither shard parks between
//! samples); each sample runs `iters` operations in a task on shard 0 and times them there.
//!
//! `cargo bench -p quark-bench --bench engine -- --warm-up-time 1 --measurement-time 2`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quark::{ActorRef, ActorType, Node, ShardSpec};
use quark_bench::actors::{Bump, Echo, Handled, Tiny};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pipelined asks in flight in the `cross_shard_ask_pipelined_100` benchmark.
const PIPELINE_DEPTH: u64 = 100;

fn node() -> Node {
    Node::builder()
        .engine(|e| {
            e.shards = ShardSpec::Count(2);
            e.idle_spin = Duration::from_millis(100);
        })
        .register(ActorType::new(|_| Echo::default()))
        .start()
        .expect("a two-shard node starts")
}

/// A reference to an `echo` actor owned by `shard` (the `skip`-th such key or later).
fn echo_on(node: &Node, shard: u16, skip: u64) -> ActorRef<Echo> {
    (skip..)
        .map(|k| node.actor_ref::<Echo>(k))
        .find(|r| r.owner_shard() == shard)
        .expect("some key maps to every shard")
}

/// Runs `iters` tells of `Bump` from shard 0 to `target`, then one `ask` that returns once all of
/// them were handled (the actor handles its messages in order); returns the time it all took.
fn tell_stream(node: &Node, target: &ActorRef<Echo>, iters: u64) -> Duration {
    let r = target.clone();
    node.spawn_on(0, move || async move {
        let t0 = Instant::now();
        for _ in 0..iters {
            r.tell(Bump(Vec::new()))
                .await
                .expect("tell to a registered actor");
        }
        r.ask(Handled).await.expect("echo answers");
        t0.elapsed()
    })
    .join()
    .expect("shard 0 ran the benchmark task")
}

/// Runs `iters` sequential asks from shard 0 to `target`.
fn ask_sequential(node: &Node, target: &ActorRef<Echo>, iters: u64) -> Duration {
    let r = target.clone();
    node.spawn_on(0, move || async move {
        let t0 = Instant::now();
        for i in 0..iters {
            let v = r.ask(Tiny(i)).await.expect("echo answers");
            debug_assert_eq!(v, i.wrapping_add(1));
        }
        t0.elapsed()
    })
    .join()
    .expect("shard 0 ran the benchmark task")
}

fn same_shard(c: &mut Criterion) {
    let node = node();
    let target = echo_on(&node, 0, 1);
    let mut g = c.benchmark_group("same_shard");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tell", |b| {
        b.iter_custom(|iters| tell_stream(&node, &target, iters))
    });
    g.bench_function("ask", |b| {
        b.iter_custom(|iters| ask_sequential(&node, &target, iters))
    });
    g.finish();
    node.shutdown();
}

fn cross_shard(c: &mut Criterion) {
    let node = node();
    let target = echo_on(&node, 1, 1);
    let mut g = c.benchmark_group("cross_shard");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ask_sequential", |b| {
        b.iter_custom(|iters| ask_sequential(&node, &target, iters))
    });
    // Distinct actors on shard 1, so the pipelined asks are not serialised by one mailbox.
    let targets: Vec<ActorRef<Echo>> = (0..PIPELINE_DEPTH)
        .map(|i| echo_on(&node, 1, 1 + i * 7919))
        .collect();
    g.bench_function("ask_pipelined_100", |b| {
        b.iter_custom(|iters| {
            let targets = targets.clone();
            node.spawn_on(0, move || async move {
                let t0 = Instant::now();
                let loops = targets.into_iter().enumerate().map(|(i, r)| {
                    // Spread `iters` over the loops; the first `iters % depth` do one more.
                    let n = iters / PIPELINE_DEPTH + u64::from((i as u64) < iters % PIPELINE_DEPTH);
                    async move {
                        for k in 0..n {
                            r.ask(Tiny(k)).await.expect("echo answers");
                        }
                    }
                });
                futures::future::join_all(loops).await;
                t0.elapsed()
            })
            .join()
            .expect("shard 0 ran the benchmark task")
        })
    });
    g.finish();
    node.shutdown();
}

/// The cross-shard ring's throughput: a stream of `tell`s from shard 0 to one actor on shard 1
/// (the ring type is internal to `quark-shard`, so it is measured through the engine).
fn ring(c: &mut Criterion) {
    let node = node();
    let target = echo_on(&node, 1, 1);
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cross_shard_tell_stream", |b| {
        b.iter_custom(|iters| tell_stream(&node, &target, iters))
    });
    g.finish();
    node.shutdown();
}

criterion_group!(benches, same_shard, cross_shard, ring);
criterion_main!(benches);
