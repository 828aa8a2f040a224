//! Durable workflows benchmark (issue 16), `fsync = "always"`, with a same-run `fdatasync`
//! baseline. On demand only (not in CI).
//!
//! 1. Baseline: a blocking `pwrite` of `--baseline-bytes` (256) + `fdatasync` loop on a
//!    zero-filled file; p50.
//! 2. Throughput, per activity mode (`--modes local,job`): `--instances` (1,000) instances run
//!    at once, each `--steps` sequential activity steps (a step = one activity call scheduled,
//!    executed and its result recorded durably). Measured from the first start until every
//!    instance finished; steps/s.
//! 3. Latency: a 3-step sequential workflow (local activities), started and awaited one at a
//!    time from a driver on shard 0, `--latency-n` times: start-to-result p50, and its ratio to
//!    the run's fdatasync p50.
//! 4. Replay: an instance with `--replay-events` (10,000) history records (built with
//!    `fsync = "never"`); `quark::workflow::replay_check` times the replay of its history (the
//!    code re-run against it, decoding excluded), and a restart times `Node::start` + the first
//!    `status` of the instance (reading the records from the log, decoding, replaying).
//!
//! `cargo run --release -p quark-bench --bin wfbench -- --dir /tmp/wfbench`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use quark::workflow::{
    replay_check, ActivityContext, ActivityError, ActivityOptions, InstanceState, StepError,
    WorkflowContext,
};
use quark::{block_on, Node, NodeConfig};
use quark_bench::files::{hist, pwrite_loop, zero_filled};
use quark_bench::machine::Machine;
use quark_bench::summary::{format_runs, format_spread, per_run_ratios, spread};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(about = "Durable workflows benchmark with a same-run fdatasync baseline")]
struct Args {
    /// Scratch directory (deleted and recreated).
    #[arg(long, default_value = "/tmp/quark-wfbench")]
    dir: PathBuf,
    /// Shards of the node.
    #[arg(long, default_value_t = 2)]
    shards: u16,
    /// Concurrent instances in the throughput part.
    #[arg(long, default_value_t = 1_000)]
    instances: u32,
    /// Sequential steps per instance in the throughput part.
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Activity modes of the throughput part (comma separated): local, job.
    #[arg(long, default_value = "local,job")]
    modes: String,
    /// Sequential workflows in the latency part.
    #[arg(long, default_value_t = 300)]
    latency_n: u32,
    /// Steps of the latency part's workflow (the target is for 3; 0 shows the cost of the
    /// start and finish records alone).
    #[arg(long, default_value_t = 3)]
    latency_steps: u32,
    /// History records of the replayed instance.
    #[arg(long, default_value_t = 10_000)]
    replay_events: u32,
    /// Synced writes of the baseline.
    #[arg(long, default_value_t = 1_000)]
    baseline_ops: u64,
    /// Bytes per baseline write.
    #[arg(long, default_value_t = 256)]
    baseline_bytes: usize,
    /// Idle spin of the shards, µs.
    #[arg(long, default_value_t = 50)]
    idle_spin_us: u64,
    /// Runs (each: baseline, then the parts).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Parts (comma separated): baseline, throughput, latency, replay.
    #[arg(long, default_value = "baseline,throughput,latency,replay")]
    only: String,
}

fn options(local: bool) -> ActivityOptions {
    let o = ActivityOptions::default();
    if local {
        ActivityOptions::local()
    } else {
        o
    }
}

/// `steps` sequential activity calls.
async fn chain(ctx: WorkflowContext, (steps, local): (u32, bool)) -> Result<u32, StepError> {
    let mut sum = 0u32;
    for i in 0..steps {
        let r: u32 = ctx.call_activity_with("noop", &i, options(local)).await?;
        sum = sum.wrapping_add(r);
    }
    Ok(sum)
}

/// `steps` local steps, then a wait for "end": a history of about 2 * steps + 2 records.
async fn long(ctx: WorkflowContext, steps: u32) -> Result<u32, StepError> {
    for i in 0..steps {
        let _: u32 = ctx
            .call_activity_with("noop", &i, ActivityOptions::local())
            .await?;
    }
    let () = ctx.wait_event("end").await?;
    Ok(steps)
}

fn start_node(args: &Args, dir: &Path, fsync: &str, fresh: bool) -> Result<Node> {
    if fresh {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::fs::create_dir_all(dir)?;
    let text = format!(
        "[node]\nshards = {}\nidle_spin_us = {}\n[log]\ndata_dir = {:?}\nfsync = \"{fsync}\"\n",
        args.shards,
        args.idle_spin_us,
        dir.to_str().context("data dir is UTF-8")?
    );
    Ok(Node::builder()
        .config(NodeConfig::from_toml(&text, "wfbench.toml")?)
        .jobs_config(quark::jobs::JobsConfig {
            finished_kept: 1_000,
            max_running_per_shard: 8_192,
            ..Default::default()
        })
        .register_workflow("chain", 1, chain)
        .register_workflow("long", 1, long)
        .register_activity("noop", |i: u32, _: ActivityContext| async move {
            Ok::<_, ActivityError>(i)
        })
        .start()?)
}

/// Returns the fdatasync p50, µs.
fn baseline(args: &Args) -> Result<f64> {
    let dir = args.dir.join("baseline");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bytes = (args.baseline_bytes as u64 * args.baseline_ops).max(1 << 20);
    let f = zero_filled(&dir.join("pre"), bytes)?;
    let (h, _) = pwrite_loop(&f, args.baseline_bytes, args.baseline_ops)?;
    let p50 = h.value_at_quantile(0.5) as f64 / 1000.0;
    println!(
        "baseline: {} x pwrite {} B + fdatasync: p50 {:.0} us, p99 {:.0} us",
        args.baseline_ops,
        args.baseline_bytes,
        p50,
        h.value_at_quantile(0.99) as f64 / 1000.0
    );
    Ok(p50)
}

/// Returns steps/s.
fn throughput(args: &Args, local: bool) -> Result<f64> {
    let node = start_node(args, &args.dir.join("thr"), "always", true)?;
    let wf = node.workflows();
    let (n, steps) = (args.instances, args.steps);
    let began = Instant::now();
    let failed = node
        .spawn_on(0, move || async move {
            let mut all = FuturesUnordered::new();
            for i in 0..n {
                let wf = wf.clone();
                all.push(async move {
                    let id = format!("t-{i}");
                    wf.start("chain", &id, &(steps, local)).await?;
                    wf.wait(&id).await
                });
            }
            let mut failed = 0u32;
            while let Some(r) = all.next().await {
                if !matches!(r, Ok(ref s) if s.state == InstanceState::Completed) {
                    failed += 1;
                }
            }
            failed
        })
        .join()
        .map_err(|e| anyhow::anyhow!("driver: {e:?}"))?;
    let took = began.elapsed();
    anyhow::ensure!(failed == 0, "{failed} instances did not complete");
    let total = u64::from(n) * u64::from(steps);
    let rate = total as f64 / took.as_secs_f64();
    println!(
        "throughput ({}): {n} instances x {steps} steps = {total} steps in {:.3} s => {:.0} steps/s (fsync=always)",
        if local { "local activities" } else { "job activities" },
        took.as_secs_f64(),
        rate
    );
    node.shutdown();
    Ok(rate)
}

/// Returns the start-to-result p50, µs.
fn latency(args: &Args) -> Result<f64> {
    let node = start_node(args, &args.dir.join("lat"), "always", true)?;
    let wf = node.workflows();
    let n = args.latency_n;
    let steps = args.latency_steps;
    let h = node
        .spawn_on(0, move || async move {
            let mut h = hist();
            for i in 0..n {
                let id = format!("l-{i}");
                let t = Instant::now();
                wf.start("chain", &id, &(steps, true)).await.ok();
                let st = wf.wait(&id).await;
                if matches!(st, Ok(ref s) if s.state == InstanceState::Completed) {
                    h.record(t.elapsed().as_nanos() as u64).ok();
                }
            }
            h
        })
        .join()
        .map_err(|e| anyhow::anyhow!("driver: {e:?}"))?;
    anyhow::ensure!(h.len() == u64::from(n), "only {} of {n} completed", h.len());
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "latency: {steps}-step workflow (local activities), start to result, {n} sequential: p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        us(0.5),
        us(0.99),
        h.max() as f64 / 1000.0
    );
    node.shutdown();
    Ok(us(0.5))
}

/// Returns (pure replay ms, restart-to-status ms).
fn replay(args: &Args) -> Result<(f64, f64)> {
    let dir = args.dir.join("replay");
    let node = start_node(args, &dir, "never", true)?;
    let wf = node.workflows();
    let steps = args.replay_events.saturating_sub(2) / 2;
    block_on(wf.start("long", "r-1", &steps))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let events = loop {
        let st = block_on(wf.status("r-1"))?;
        if st.pending_steps == 1 && st.history_events >= u64::from(steps) * 2 {
            break st.history_events;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the history was not built in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let history = block_on(wf.history("r-1"))?;
    let report = replay_check(long, &history)?;
    node.shutdown();
    let t = Instant::now();
    let node = start_node(args, &dir, "never", false)?;
    let st = block_on(node.workflows().status("r-1"))?;
    let restart = t.elapsed();
    anyhow::ensure!(st.state == InstanceState::Running && st.history_events == events);
    println!(
        "replay: {} history records ({} inputs): replay_check {:.2} ms; restart (Node::start + first status, reads and replays) {:.1} ms",
        report.events,
        report.inputs,
        report.took.as_secs_f64() * 1000.0,
        restart.as_secs_f64() * 1000.0
    );
    node.shutdown();
    Ok((
        report.took.as_secs_f64() * 1000.0,
        restart.as_secs_f64() * 1000.0,
    ))
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("{}", Machine::describe().line());
    let only: Vec<&str> = args.only.split(',').map(str::trim).collect();
    let modes: Vec<bool> = args.modes.split(',').map(|m| m.trim() == "local").collect();
    let (mut base, mut lat, mut rep, mut restart) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut thr: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for run in 0..args.runs {
        println!("run {run}:");
        if only.contains(&"baseline") {
            base.push(baseline(&args)?);
        }
        if only.contains(&"throughput") {
            for (i, &local) in modes.iter().enumerate() {
                thr[i].push(throughput(&args, local)?);
            }
        }
        if only.contains(&"latency") {
            lat.push(latency(&args)?);
        }
        if only.contains(&"replay") {
            let (a, b) = replay(&args)?;
            rep.push(a);
            restart.push(b);
        }
    }
    println!("summary (median [min .. max] of {} runs):", args.runs);
    if !base.is_empty() {
        println!(
            "  fdatasync p50 (us): {} ({})",
            format_spread(&spread(&base), 0),
            format_runs(&base, 0)
        );
    }
    for (i, &local) in modes.iter().enumerate() {
        if !thr[i].is_empty() {
            println!(
                "  steps/s, 1,000 instances, {} activities: {} ({})",
                if local { "local" } else { "job" },
                format_spread(&spread(&thr[i]), 0),
                format_runs(&thr[i], 0)
            );
        }
    }
    if !lat.is_empty() {
        println!(
            "  3-step start-to-result p50 (us): {} ({})",
            format_spread(&spread(&lat), 0),
            format_runs(&lat, 0)
        );
        if base.len() == lat.len() {
            let r = per_run_ratios(&lat, &base);
            println!(
                "  ... / same-run fdatasync p50: {} ({})",
                format_spread(&spread(&r), 2),
                format_runs(&r, 2)
            );
        }
    }
    if !rep.is_empty() {
        println!(
            "  replay of the history (ms): {} ({})",
            format_spread(&spread(&rep), 2),
            format_runs(&rep, 2)
        );
        println!(
            "  restart + first status (ms): {} ({})",
            format_spread(&spread(&restart), 1),
            format_runs(&restart, 1)
        );
    }
    Ok(())
}
