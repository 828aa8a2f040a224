//! The shard engine's targets (foundation issue), each with a same-run baseline, and a
//! same-run comparison with a tokio actor.
//!
//! Measures, `--runs` times each, and prints every run, the median and the spread:
//! - baseline A: one boxed message through a `VecDeque` on one core (allocation + queue);
//! - baseline B: cross-core round trip of one cache line (two threads spinning on atomics);
//! - the targets, on a node whose shards spin for `--idle-spin-us` (1 s: always) when idle:
//!   same-shard `tell` to one actor (messages/s); same-shard sequential `ask` (asks/s);
//!   cross-shard `ask`, both shards calling actors on the other, `--inflight` per shard (asks/s
//!   in total); cross-shard sequential `ask` latency (p50/p99/p99.9);
//! - the tokio comparison, on a node whose shards park at once (`idle_spin_us = 0`): the same
//!   operations on Quark and on a tokio task fed by `tokio::sync::mpsc::channel(64)` with
//!   `oneshot` replies (`quark_bench::tokio_actor`), measured by the same code
//!   (`quark_bench::measure`), alternately, in the same run, on the same pinned cores:
//!   same-shard tell; same-shard sequential ask (rate and p99); 100 asks in flight to 100
//!   actors on one core; sequential ask across two cores (Quark: shard 0 to an actor of shard
//!   1; tokio: two current-thread runtimes on two threads pinned to the shards' cores). Each
//!   run prints the Quark / tokio ratio; the summary gives median [min .. max] of the per-run
//!   ratios.
//!
//! Prints the machine line (cores, kernel, CPU, commit) first.
//! `cargo run --release -p quark-bench --bin enginebench -- --runs 5`

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use hdrhistogram::Histogram;
use quark::{ActorRef, ActorType, Node, ShardSpec};
use quark_bench::actors::{Bump, Echo, Handled, Tiny};
use quark_bench::machine::Machine;
use quark_bench::summary::{format_runs, per_run_ratios, spread, Spread};
use quark_bench::{measure, tokio_actor};

// The same allocator for the engine and the baselines (glibc's malloc falls off its per-thread
// cache once more than a few blocks of one size are live, e.g. a full mailbox). With the
// `system-alloc` feature, both run on the system allocator (what a user gets by default).
// With `counting-alloc`, mimalloc under `quark::CountingAlloc` (its overhead, docs/MEMORY.md).
#[cfg(not(any(feature = "system-alloc", feature = "counting-alloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "counting-alloc", not(feature = "system-alloc")))]
#[global_allocator]
static GLOBAL: quark::CountingAlloc<mimalloc::MiMalloc> =
    quark::CountingAlloc::new(mimalloc::MiMalloc);

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
    /// Duration of each pipelined cross-shard run, in ms (and of each in-flight run of the
    /// tokio comparison).
    #[arg(long, default_value_t = 2_000)]
    pipelined_ms: u64,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 300_000)]
    latency_asks: u64,
    /// Round trips per cross-core sequential-ask run of the tokio comparison (parked: each
    /// one sleeps and wakes a core, ~10-50 µs).
    #[arg(long, default_value_t = 50_000)]
    cross_asks: u64,
    /// Idle spin of the shards, in µs, for the target measurements (the tokio comparison
    /// always runs with 0).
    #[arg(long, default_value_t = 1_000_000)]
    idle_spin_us: u64,
    /// Print one JSON object at the end.
    #[arg(long)]
    json: bool,
    /// Run only the measurements whose name contains this text (for profiling one of them);
    /// `tokio` selects the tokio comparison.
    #[arg(long)]
    only: Option<String>,
    /// `[locality] enabled` on the target measurements' node: every shard samples
    /// actor-to-actor edges (its rounds never run within a run): the sampling's overhead
    /// against a run without it (docs/BENCHMARKS.md, issue 19).
    #[arg(long)]
    locality: bool,
}

fn node(idle_spin_us: u64) -> Result<Node> {
    node_with(idle_spin_us, false)
}

fn node_with(idle_spin_us: u64, locality: bool) -> Result<Node> {
    let mut config = quark::NodeConfig::default();
    if locality {
        config.locality.enabled = true;
        config.locality.interval = Duration::from_secs(86_400);
    }
    Ok(Node::builder()
        .config(config)
        .engine(move |e| {
            e.shards = ShardSpec::Count(2);
            e.idle_spin = Duration::from_micros(idle_spin_us);
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
    // A benchmark still runs unpinned, with a warning (its figures are then suspect).
    if let Err(e) = quark_shard::pin_current_thread(core) {
        eprintln!("warning: {}", quark_shard::ErrorChain(&e));
    }
}

/// Runs `f` on a new thread pinned to `core` (the caller's affinity is left alone: threads
/// inherit their creator's).
fn on_core<T: Send + 'static>(core: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        pin(core);
        f()
    })
    .join()
    .expect("benchmark thread")
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
    let (p50, p99) = on_core(0, move || {
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
    (p50, p99)
}

// ---- Quark ----

fn same_shard_tell(node: &Node, n: u64) -> f64 {
    let key = key_on(node, 0, 1);
    let r = node.actor_ref::<Echo>(key);
    node.spawn_on(0, move || async move {
        let before = r.ask(Handled).await.expect("echo answers");
        let rate = measure::stream(n, |_| async {
            r.tell(Bump(Vec::new())).await.expect("tell")
        })
        .await;
        let after = r.ask(Handled).await.expect("echo answers");
        assert_eq!(after - before, n, "every tell was handled");
        rate
    })
    .join()
    .expect("bench task finished")
}

/// Sequential asks from shard 0 to an actor of `to_shard`: rate and latency.
fn sequential_ask(node: &Node, to_shard: u16, warmup: u64, n: u64) -> measure::Sequential {
    let r = node.actor_ref::<Echo>(key_on(node, to_shard, 1));
    node.spawn_on(0, move || async move {
        measure::sequential(warmup, n, |i| {
            let r = &r;
            async move {
                let v = r.ask(Tiny(i)).await.expect("ask");
                debug_assert_eq!(v, i + 1);
            }
        })
        .await
    })
    .join()
    .expect("bench task finished")
}

/// `actors` request loops on shard 0, loop j asking its own actor (also on shard 0).
fn same_shard_inflight(node: &Node, actors: usize, run: Duration) -> f64 {
    let mut refs: Vec<ActorRef<Echo>> = Vec::new();
    let mut k = 1;
    while refs.len() < actors {
        k = key_on(node, 0, k) + 1;
        refs.push(node.actor_ref::<Echo>(k - 1));
    }
    node.spawn_on(0, move || async move {
        let refs = Rc::new(refs);
        measure::inflight(actors, run / 4, run, |j, k| {
            let refs = refs.clone();
            async move {
                refs[j].ask(Tiny(k)).await.expect("ask");
            }
        })
        .await
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

// ---- tokio baseline (same measuring code) ----

fn tokio_tell(core: usize, n: u64) -> f64 {
    on_core(core, move || {
        let rt = tokio_actor::current_thread();
        rt.block_on(async move {
            let (r, actor) = tokio_actor::actor();
            let task = tokio::task::spawn(actor);
            let before = r.handled().await;
            let rate = measure::stream(n, |_| r.tell()).await;
            let after = r.handled().await;
            assert_eq!(after - before - 1, n, "every tell was handled");
            drop(r);
            task.await.expect("actor task");
            rate
        })
    })
}

fn tokio_same_thread_ask(core: usize, warmup: u64, n: u64) -> measure::Sequential {
    on_core(core, move || {
        let rt = tokio_actor::current_thread();
        rt.block_on(async move {
            let (r, actor) = tokio_actor::actor();
            let task = tokio::task::spawn(actor);
            let s = measure::sequential(warmup, n, |i| {
                let r = &r;
                async move {
                    let v = r.ask(i).await;
                    debug_assert_eq!(v, i + 1);
                }
            })
            .await;
            drop(r);
            task.await.expect("actor task");
            s
        })
    })
}

fn tokio_inflight(core: usize, actors: usize, run: Duration) -> f64 {
    on_core(core, move || {
        let rt = tokio_actor::current_thread();
        rt.block_on(async move {
            let mut refs = Vec::new();
            let mut tasks = Vec::new();
            for _ in 0..actors {
                let (r, actor) = tokio_actor::actor();
                refs.push(r);
                tasks.push(tokio::task::spawn(actor));
            }
            let refs = Rc::new(refs);
            let rate = measure::inflight(actors, run / 4, run, |j, k| {
                let refs = refs.clone();
                async move {
                    refs[j].ask(k).await;
                }
            })
            .await;
            drop(refs);
            for t in tasks {
                t.await.expect("actor task");
            }
            rate
        })
    })
}

/// Sequential asks from a current-thread runtime on `client_core` to an actor on another
/// current-thread runtime on `actor_core`.
fn tokio_cross_thread_ask(
    client_core: usize,
    actor_core: usize,
    warmup: u64,
    n: u64,
) -> measure::Sequential {
    let (r, actor) = tokio_actor::actor();
    let server = std::thread::spawn(move || {
        pin(actor_core);
        tokio_actor::current_thread().block_on(actor);
    });
    let s = on_core(client_core, move || {
        tokio_actor::current_thread().block_on(async move {
            measure::sequential(warmup, n, |i| {
                let r = &r;
                async move {
                    let v = r.ask(i).await;
                    debug_assert_eq!(v, i + 1);
                }
            })
            .await
        })
    });
    server.join().expect("actor thread");
    s
}

// ---- reporting ----

#[derive(serde::Serialize)]
struct Row {
    name: String,
    unit: &'static str,
    runs: Vec<f64>,
    spread: Spread,
}

#[derive(Default)]
struct Rows(Vec<Row>);

impl Rows {
    fn record(&mut self, name: &str, unit: &'static str, runs: Vec<f64>) {
        if runs.is_empty() {
            return;
        }
        let s = spread(&runs);
        // Nanoseconds are whole numbers; rates and ratios keep three decimals.
        let d = if unit == "ns" { 0 } else { 3 };
        println!(
            "{name:<62} median {:>10.d$} {unit:<8} [{:.d$} .. {:.d$}]  runs: {}",
            s.median,
            s.min,
            s.max,
            format_runs(&runs, d)
        );
        self.0.push(Row {
            name: name.to_owned(),
            unit,
            runs,
            spread: s,
        });
    }
}

fn q(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64
}

/// Quark's figure of every run, and tokio's.
type Pair = (Vec<f64>, Vec<f64>);

/// One run of the tokio comparison: Quark's figure, tokio's, alternately, per measure.
#[derive(Default)]
struct Comparison {
    tell: Pair,
    ask_rate: Pair,
    ask_p99: Pair,
    inflight: Pair,
    cross_p50: Pair,
    cross_p99: Pair,
}

fn compare_once(args: &Args, run: usize, c: &mut Comparison) -> Result<()> {
    let node = node(0)?;
    let cores = node.cores().to_vec();
    let (c0, c1) = (cores[0], cores[cores.len() - 1]);
    let run_len = Duration::from_millis(args.pipelined_ms);
    let warm = args.asks / 10;

    let (qt, tt) = (
        same_shard_tell(&node, args.tells) / 1e6,
        tokio_tell(c0, args.tells) / 1e6,
    );
    let qa = sequential_ask(&node, 0, warm, args.asks);
    let ta = tokio_same_thread_ask(c0, warm, args.asks);
    let (qi, ti) = (
        same_shard_inflight(&node, 100, run_len) / 1e6,
        tokio_inflight(c0, 100, run_len) / 1e6,
    );
    let cw = args.cross_asks / 10;
    let qx = sequential_ask(&node, 1, cw, args.cross_asks);
    let tx = tokio_cross_thread_ask(c0, c1, cw, args.cross_asks);
    node.shutdown();

    println!(
        "tokio comparison run {run} (Quark / tokio, idle_spin_us = 0, cores {c0} and {c1}): \
         same-shard tell {qt:.2} / {tt:.2} M/s = {:.2}x; sequential ask {:.2} / {:.2} M/s = \
         {:.2}x, p99 {:.0} / {:.0} ns = {:.2}x; 100 in flight to 100 actors {qi:.2} / {ti:.2} \
         M/s = {:.2}x; cross-core sequential ask p50 {:.0} / {:.0} ns = {:.2}x, p99 {:.0} / \
         {:.0} ns = {:.2}x",
        qt / tt,
        qa.per_s / 1e6,
        ta.per_s / 1e6,
        qa.per_s / ta.per_s,
        q(&qa.hist, 0.99),
        q(&ta.hist, 0.99),
        q(&qa.hist, 0.99) / q(&ta.hist, 0.99),
        qi / ti,
        q(&qx.hist, 0.5),
        q(&tx.hist, 0.5),
        q(&qx.hist, 0.5) / q(&tx.hist, 0.5),
        q(&qx.hist, 0.99),
        q(&tx.hist, 0.99),
        q(&qx.hist, 0.99) / q(&tx.hist, 0.99),
    );
    let push = |pair: &mut Pair, a: f64, b: f64| {
        pair.0.push(a);
        pair.1.push(b);
    };
    push(&mut c.tell, qt, tt);
    push(&mut c.ask_rate, qa.per_s / 1e6, ta.per_s / 1e6);
    push(&mut c.ask_p99, q(&qa.hist, 0.99), q(&ta.hist, 0.99));
    push(&mut c.inflight, qi, ti);
    push(&mut c.cross_p50, q(&qx.hist, 0.5), q(&tx.hist, 0.5));
    push(&mut c.cross_p99, q(&qx.hist, 0.99), q(&tx.hist, 0.99));
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let machine = Machine::describe();
    println!("{}", machine.line());
    println!(
        "enginebench: --runs {} --tells {} --asks {} --inflight {} --pipelined-ms {} \
         --latency-asks {} --cross-asks {} --idle-spin-us {} (targets; the tokio comparison \
         runs with 0); allocator: {}",
        args.runs,
        args.tells,
        args.asks,
        args.inflight,
        args.pipelined_ms,
        args.latency_asks,
        args.cross_asks,
        args.idle_spin_us,
        if cfg!(feature = "system-alloc") {
            "system (glibc malloc)"
        } else if cfg!(feature = "counting-alloc") {
            "mimalloc under quark::CountingAlloc"
        } else {
            "mimalloc"
        }
    );
    let mut rows = Rows::default();

    let want = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let runs_of = |name: &str| if want(name) { args.runs } else { 0 };
    let tells = args.tells;
    let base_a: Vec<f64> = (0..runs_of("baseline boxed"))
        .map(|_| on_core(0, move || baseline_boxed_queue(tells)) / 1e6)
        .collect();
    let rtts: Vec<(f64, f64)> = (0..runs_of("baseline cache-line"))
        .map(|_| baseline_cacheline_rtt(200_000))
        .collect();
    rows.record(
        "baseline A: boxed msg via VecDeque, 1 core",
        "M msg/s",
        base_a,
    );
    rows.record(
        "baseline B: cache-line RTT core0<->core1 p50",
        "ns",
        rtts.iter().map(|r| r.0).collect(),
    );
    rows.record(
        "baseline B: cache-line RTT core0<->core1 p99",
        "ns",
        rtts.iter().map(|r| r.1).collect(),
    );

    let mut tell = Vec::new();
    let mut ask = Vec::new();
    let mut pipe = Vec::new();
    let mut lat = Vec::new();
    for _ in 0..args.runs {
        if !["tell", "sequential ask", "inflight", "latency"]
            .iter()
            .any(|n| want(n))
        {
            break;
        }
        let node = node_with(args.idle_spin_us, args.locality)?;
        if want("tell") {
            tell.push(same_shard_tell(&node, args.tells) / 1e6);
        }
        if want("sequential ask") {
            ask.push(sequential_ask(&node, 0, 0, args.asks).per_s / 1e6);
        }
        if want("inflight") {
            let before = node.stats().expect("stats");
            pipe.push(
                cross_shard_pipelined(
                    &node,
                    args.inflight,
                    Duration::from_millis(args.pipelined_ms),
                ) / 1e6,
            );
            for (b, a) in before.iter().zip(node.stats().expect("stats")) {
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
            let s = sequential_ask(&node, 1, args.latency_asks / 10, args.latency_asks);
            eprintln!(
                "latency: n={} mean={:.0}ns max={}ns",
                s.hist.len(),
                s.hist.mean(),
                s.hist.max()
            );
            lat.push((q(&s.hist, 0.5), q(&s.hist, 0.99), q(&s.hist, 0.999)));
        }
        node.shutdown();
    }
    let spin = args.idle_spin_us;
    rows.record("same-shard tell, 1 actor", "M msg/s", tell.clone());
    rows.record("same-shard sequential ask", "M ask/s", ask);
    rows.record(
        &format!(
            "cross-shard ask, 2 shards, {} in flight per shard",
            args.inflight
        ),
        "M ask/s",
        pipe,
    );
    for (i, tag) in [(0, "p50"), (1, "p99"), (2, "p99.9")] {
        rows.record(
            &format!("cross-shard sequential ask {tag} (idle_spin_us {spin})"),
            "ns",
            lat.iter().map(|l| [l.0, l.1, l.2][i]).collect::<Vec<f64>>(),
        );
    }
    // Same-run ratios against the baselines (per run: run i of each figure).
    let base_a_runs = rows
        .0
        .iter()
        .find(|r| r.name.starts_with("baseline A"))
        .map(|r| r.runs.clone());
    if let Some(a) = base_a_runs.filter(|a| a.len() == tell.len()) {
        rows.record(
            "ratio: same-shard tell / baseline A",
            "x",
            per_run_ratios(&tell, &a),
        );
    }
    let base_b: Vec<f64> = rtts.iter().map(|r| r.0).collect();
    if !lat.is_empty() && base_b.len() == lat.len() {
        let p50: Vec<f64> = lat.iter().map(|l| l.0).collect();
        rows.record(
            "ratio: cross-shard sequential ask p50 / baseline B p50",
            "x",
            per_run_ratios(&p50, &base_b),
        );
    }

    if want("tokio") {
        let mut c = Comparison::default();
        for run in 0..args.runs {
            compare_once(&args, run, &mut c)?;
        }
        println!(
            "\ntokio comparison, median [min .. max] over {} runs (ratio = Quark / tokio, per run):",
            args.runs
        );
        let pairs: [(&str, &'static str, &Pair); 6] = [
            ("same-shard tell", "M msg/s", &c.tell),
            ("same-shard sequential ask", "M ask/s", &c.ask_rate),
            ("same-shard sequential ask p99", "ns", &c.ask_p99),
            (
                "100 asks in flight to 100 actors, one core",
                "M ask/s",
                &c.inflight,
            ),
            ("cross-core sequential ask p50 (parked)", "ns", &c.cross_p50),
            ("cross-core sequential ask p99 (parked)", "ns", &c.cross_p99),
        ];
        for (name, unit, (quark, tokio)) in pairs {
            rows.record(&format!("quark: {name}"), unit, quark.clone());
            rows.record(&format!("tokio: {name}"), unit, tokio.clone());
            rows.record(
                &format!("ratio quark / tokio: {name}"),
                "x",
                per_run_ratios(quark, tokio),
            );
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"machine": machine, "rows": rows.0})
        );
    }
    Ok(())
}
