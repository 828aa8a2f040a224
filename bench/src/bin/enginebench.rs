//! The shard engine's targets (foundation issue), each with a same-run baseline.
//!
//! Measures, `--runs` times each, and prints every run, the median and the spread:
//! - baseline A: one boxed message through a `VecDeque` on one core (allocation + queue);
//! - baseline B: cross-core round trip of one cache line (two threads spinning on atomics);
//! - same-shard `tell` to one actor (messages/s);
//! - same-shard sequential `ask` (asks/s);
//! - cross-shard `ask`, both shards calling actors on the other, `--inflight` per shard (asks/s
//!   in total);
//! - cross-shard sequential `ask` latency with spinning on (p50/p99/p99.9).
//!
//! `cargo run --release -p quark-bench --bin enginebench -- --runs 5`

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use hdrhistogram::Histogram;
use quark::{ActorType, Node, ShardSpec};
use quark_bench::actors::{Bump, Echo, Handled, Tiny};
use quark_bench::summary::{spread, Spread};

// The same allocator for the engine and the baselines (glibc's malloc falls off its per-thread
// cache once more than a few blocks of one size are live, e.g. a full mailbox).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Shard engine micro-benchmarks with same-run baselines")]
struct Args {
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Messages per tell run.
    #[arg(long, default_value_t = 10_000_000)]
    tells: u64,
    /// Asks per sequential-ask run.
    #[arg(long, default_value_t = 3_000_000)]
    asks: u64,
    /// Asks in flight per shard in the pipelined cross-shard run.
    #[arg(long, default_value_t = 100)]
    inflight: u64,
    /// Duration of each pipelined cross-shard run, in ms.
    #[arg(long, default_value_t = 2_000)]
    pipelined_ms: u64,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 300_000)]
    latency_asks: u64,
    /// Idle spin of the shards, in µs, for every engine measurement.
    #[arg(long, default_value_t = 1_000_000)]
    idle_spin_us: u64,
    /// Print one JSON object at the end.
    #[arg(long)]
    json: bool,
    /// Run only the measurements whose name contains this text (for profiling one of them).
    #[arg(long)]
    only: Option<String>,
}

fn node(args: &Args) -> Result<Node> {
    let idle_spin = Duration::from_micros(args.idle_spin_us);
    Ok(Node::builder()
        .engine(move |e| {
            e.shards = ShardSpec::Count(2);
            e.idle_spin = idle_spin;
        })
        .register(ActorType::new(|_| Echo::default()))
        .start()?)
}

/// A key whose `echo` actor lives on `shard`.
fn key_on(node: &Node, shard: u16, skip: u64) -> u64 {
    (skip..)
        .find(|k| node.actor_ref::<Echo>(*k).owner_shard() == shard)
        .expect("some key maps to every shard")
}

/// A boxed message, as the engine's envelopes are.
type BoxedMsg = Box<dyn FnOnce(&mut u64)>;

fn baseline_boxed_queue(n: u64) -> f64 {
    let mut q: VecDeque<BoxedMsg> = VecDeque::with_capacity(1024);
    let mut acc = 0u64;
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < n {
        for i in 0..256 {
            q.push_back(Box::new(move |a: &mut u64| *a = a.wrapping_add(i)));
        }
        sent += 256;
        while let Some(f) = q.pop_front() {
            f(&mut acc);
        }
    }
    std::hint::black_box(acc);
    n as f64 / t0.elapsed().as_secs_f64()
}

fn pin(core: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays inside it for core < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// p50 and p99 (ns) of a cache-line ping-pong between cores 0 and 1.
fn baseline_cacheline_rtt(n: u64) -> (f64, f64) {
    let flag = Arc::new(AtomicU64::new(0));
    let f2 = flag.clone();
    let peer = std::thread::spawn(move || {
        pin(1);
        for i in 0..n {
            while f2.load(Ordering::Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            f2.store(2 * i + 2, Ordering::Release);
        }
    });
    // Pin a helper thread, not the caller: threads inherit their creator's affinity.
    let me = std::thread::spawn(move || {
        pin(0);
        let mut h =
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram");
        for i in 0..n {
            let t0 = Instant::now();
            flag.store(2 * i + 1, Ordering::Release);
            while flag.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
            h.saturating_record(t0.elapsed().as_nanos() as u64);
        }
        (
            h.value_at_quantile(0.5) as f64,
            h.value_at_quantile(0.99) as f64,
        )
    });
    peer.join().expect("peer thread");
    me.join().expect("timing thread")
}

fn same_shard_tell(node: &Node, n: u64) -> f64 {
    let key = key_on(node, 0, 1);
    let r = node.actor_ref::<Echo>(key);
    node.spawn_on(0, move || async move {
        let before = r.ask(Handled).await.expect("echo answers");
        let t0 = Instant::now();
        for _ in 0..n {
            r.tell(Bump(Vec::new())).await.expect("tell");
        }
        let after = r.ask(Handled).await.expect("echo answers");
        assert_eq!(after - before, n, "every tell was handled");
        n as f64 / t0.elapsed().as_secs_f64()
    })
    .join()
    .expect("bench task finished")
}

fn same_shard_ask(node: &Node, n: u64) -> f64 {
    let key = key_on(node, 0, 1);
    let r = node.actor_ref::<Echo>(key);
    node.spawn_on(0, move || async move {
        let t0 = Instant::now();
        for i in 0..n {
            let v = r.ask(Tiny(i)).await.expect("ask");
            debug_assert_eq!(v, i + 1);
        }
        n as f64 / t0.elapsed().as_secs_f64()
    })
    .join()
    .expect("bench task finished")
}

fn cross_shard_pipelined(node: &Node, inflight: u64, run: Duration) -> f64 {
    // `inflight` independent tasks per shard, each asking actors on the other shard in a loop.
    let stop = Instant::now() + Duration::from_millis(200) + run;
    let mut handles = Vec::new();
    for shard in 0..2u16 {
        for i in 0..inflight {
            let r = node.actor_ref::<Echo>(key_on(node, 1 - shard, 1 + i * 7919));
            handles.push(node.spawn_on(shard, move || async move {
                let mut k = 0u64;
                let mut first = None;
                while !k.is_multiple_of(64) || Instant::now() < stop {
                    r.ask(Tiny(k)).await.expect("ask");
                    k += 1;
                    if k == 1 {
                        first = Some(Instant::now());
                    }
                }
                (k, first.expect("at least one ask"), Instant::now())
            }));
        }
    }
    let results: Vec<(u64, Instant, Instant)> = handles
        .into_iter()
        .map(|h| h.join().expect("bench task finished"))
        .collect();
    // Every ask over the span from the first task's first reply to the last task's end.
    let total: u64 = results.iter().map(|r| r.0).sum();
    let span = results.iter().map(|r| r.2).max().expect("tasks ran")
        - results.iter().map(|r| r.1).min().expect("tasks ran");
    total as f64 / span.as_secs_f64()
}

fn cross_shard_latency(node: &Node, n: u64) -> (f64, f64, f64) {
    let r = node.actor_ref::<Echo>(key_on(node, 1, 1));
    node.spawn_on(0, move || async move {
        for i in 0..n / 10 {
            r.ask(Tiny(i)).await.expect("ask");
        }
        let mut h =
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram");
        for i in 0..n {
            let t0 = Instant::now();
            r.ask(Tiny(i)).await.expect("ask");
            h.saturating_record(t0.elapsed().as_nanos() as u64);
        }
        eprintln!(
            "latency: n={} mean={:.0}ns max={}ns",
            h.len(),
            h.mean(),
            h.max()
        );
        (
            h.value_at_quantile(0.5) as f64,
            h.value_at_quantile(0.99) as f64,
            h.value_at_quantile(0.999) as f64,
        )
    })
    .join()
    .expect("bench task finished")
}

#[derive(serde::Serialize)]
struct Row {
    name: &'static str,
    unit: &'static str,
    runs: Vec<f64>,
    spread: Spread,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut rows: Vec<Row> = Vec::new();
    let mut record = |name, unit, runs: Vec<f64>| {
        if runs.is_empty() {
            return;
        }
        let s = spread(&runs);
        eprintln!(
            "{name:<44} median {:>12.3} {unit:<8} [{:.3} .. {:.3}]",
            s.median, s.min, s.max
        );
        rows.push(Row {
            name,
            unit,
            runs,
            spread: s,
        });
    };

    let want = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let runs_of = |name: &str| if want(name) { args.runs } else { 0 };
    let base_a: Vec<f64> = (0..runs_of("baseline boxed"))
        .map(|_| baseline_boxed_queue(args.tells) / 1e6)
        .collect();
    record(
        "baseline: boxed msg via VecDeque, 1 core",
        "M msg/s",
        base_a,
    );
    let rtts: Vec<(f64, f64)> = (0..runs_of("baseline cache-line"))
        .map(|_| baseline_cacheline_rtt(200_000))
        .collect();
    record(
        "baseline: cache-line RTT core0<->core1 p50",
        "ns",
        rtts.iter().map(|r| r.0).collect(),
    );
    record(
        "baseline: cache-line RTT core0<->core1 p99",
        "ns",
        rtts.iter().map(|r| r.1).collect(),
    );

    let mut tell = Vec::new();
    let mut ask = Vec::new();
    let mut pipe = Vec::new();
    let mut lat = Vec::new();
    for _ in 0..args.runs {
        let node = node(&args)?;
        if want("tell") {
            tell.push(same_shard_tell(&node, args.tells) / 1e6);
        }
        if want("sequential ask") {
            ask.push(same_shard_ask(&node, args.asks) / 1e6);
        }
        if want("inflight") {
            let before = node.stats();
            pipe.push(
                cross_shard_pipelined(
                    &node,
                    args.inflight,
                    Duration::from_millis(args.pipelined_ms),
                ) / 1e6,
            );
            for (b, a) in before.iter().zip(node.stats()) {
                let msgs = (a.ring_msgs_in - b.ring_msgs_in).max(1) as f64;
                eprintln!(
                    "  shard {}: {} ring msgs in, per msg: {:.3} pump iterations, {:.3} task polls, {:.4} reaps, {:.4} parks",
                    a.shard,
                    msgs,
                    (a.iterations - b.iterations) as f64 / msgs,
                    (a.task_polls - b.task_polls) as f64 / msgs,
                    (a.reaps - b.reaps) as f64 / msgs,
                    (a.parks - b.parks) as f64 / msgs,
                );
            }
        }
        if want("latency") {
            lat.push(cross_shard_latency(&node, args.latency_asks));
        }
        node.shutdown();
    }
    record("same-shard tell, 1 actor", "M msg/s", tell);
    record("same-shard sequential ask", "M ask/s", ask);
    record("cross-shard ask, 2 shards, inflight/shard", "M ask/s", pipe);
    record(
        "cross-shard sequential ask p50 (spinning)",
        "ns",
        lat.iter().map(|l| l.0).collect(),
    );
    record(
        "cross-shard sequential ask p99 (spinning)",
        "ns",
        lat.iter().map(|l| l.1).collect(),
    );
    record(
        "cross-shard sequential ask p99.9 (spinning)",
        "ns",
        lat.iter().map(|l| l.2).collect(),
    );
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
    }
    Ok(())
}
