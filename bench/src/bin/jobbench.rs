//! Durable jobs benchmark (issue 14), with `fsync = "always"` and a same-run `fdatasync`
//! baseline.
//!
//! 1. Baseline: a blocking `pwrite` + `fdatasync` loop of `--baseline-bytes` writes on a
//!    zero-filled file (as the log's segments are), p50/p99.
//! 2. Throughput, end to end: `--threads` threads each enqueue batches of `--batch` no-op jobs
//!    (`enqueue_batch`, one atomic log batch each) until `--jobs` are enqueued; measured from
//!    the first enqueue until the last job's completion record is durable... as seen by the
//!    handler count and the queue counts (every job completed). Figures: jobs/s, fdatasyncs.
//! 3. Latency, open loop: a driver on shard 0 enqueues `--rate` jobs/s for `--rate-secs`
//!    seconds on a fixed schedule (each tick enqueues every job whose time has come as one
//!    batch, batches in flight concurrently); each handler records start − its scheduled
//!    enqueue time (so a late driver is measured, not hidden).
//!
//! 4. `latency-early`: part 3 with `JobsConfig::start_before_durable` (the handler starts while
//!    its `Started` record is being made durable), in the same run as part 3.
//! 5. `latency-two-syncs`: part 3 with `JobsConfig::start_on_enqueue = false` (the behaviour
//!    before it: the enqueue's append, then the scheduler's round with the `Started` records in
//!    a second append), in the same run as part 3.
//!
//! Repeated `--runs` times (each run: baseline, then the parts); the summary lines give the
//! median [min .. max] of the runs and the per-run ratio of start latency to the baseline.
//!
//! `cargo run --release -p quark-bench --bin jobbench -- --dir /tmp/jobbench`

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use quark::jobs::{Job, JobContext, JobOptions, JobState, JobTypeConfig, JobsConfig, NewJob};
use quark::{block_on, Node, NodeConfig};
use quark_bench::files::{hist, pwrite_loop, zero_filled};
use quark_bench::machine::Machine;
use quark_bench::summary::{format_runs, format_spread, per_run_ratios, spread};
use serde::{Deserialize, Serialize};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Durable jobs benchmark with a same-run fdatasync baseline")]
struct Args {
    /// Scratch directory (deleted and recreated).
    #[arg(long, default_value = "/tmp/quark-jobbench")]
    dir: PathBuf,
    /// Shards of the node.
    #[arg(long, default_value_t = 2)]
    shards: u16,
    /// Jobs in the throughput run.
    #[arg(long, default_value_t = 400_000)]
    jobs: u64,
    /// Jobs per enqueue batch in the throughput run.
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
    /// Enqueuing threads in the throughput run.
    #[arg(long, default_value_t = 4)]
    threads: u64,
    /// Open-loop rate, jobs/s.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Open-loop duration, s.
    #[arg(long, default_value_t = 3)]
    rate_secs: u64,
    /// Synced writes of the baseline.
    #[arg(long, default_value_t = 1_000)]
    baseline_ops: u64,
    /// Bytes per baseline write.
    #[arg(long, default_value_t = 4096)]
    baseline_bytes: usize,
    /// Idle spin of the shards, µs.
    #[arg(long, default_value_t = 50)]
    idle_spin_us: u64,
    /// `[log] segment_bytes_initial` (default: the log's, 1 MiB doubling to 64 MiB). Set it to
    /// 67108864 to see the open loop without segment rolls (each roll zero-fills and syncs the
    /// new segment on the append path).
    #[arg(long)]
    segment_bytes_initial: Option<u64>,
    /// Runs (each: baseline, then the parts).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Which parts to run (comma separated): baseline, throughput, latency, latency-early,
    /// latency-two-syncs.
    #[arg(long, default_value = "baseline,throughput,latency")]
    only: String,
}

#[derive(Serialize, Deserialize)]
struct Noop {
    /// Scheduled enqueue time, ns since the run's epoch (0 in the throughput run).
    due_ns: u64,
}

impl Job for Noop {
    const TYPE_NAME: &'static str = "noop";
}

static DONE: AtomicU64 = AtomicU64::new(0);

fn start_node(
    args: &Args,
    dir: &Path,
    lat: Option<(Instant, Arc<Mutex<Histogram<u64>>>)>,
    early: bool,
    on_enqueue: bool,
) -> Result<Node> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut text = format!(
        "[node]\nshards = {}\nidle_spin_us = {}\n[log]\ndata_dir = {:?}\nfsync = \"always\"\n",
        args.shards,
        args.idle_spin_us,
        dir.to_str().context("data dir is UTF-8")?
    );
    if let Some(b) = args.segment_bytes_initial {
        text.push_str(&format!("segment_bytes_initial = {b}\n"));
    }
    let config = NodeConfig::from_toml(&text, "jobbench.toml")?;
    Ok(Node::builder()
        .config(config)
        .jobs_config(JobsConfig {
            finished_kept: 1_000,
            max_running_per_shard: 8_192,
            start_before_durable: early,
            start_on_enqueue: on_enqueue,
            ..JobsConfig::default()
        })
        .register_job::<Noop, _, _>(
            JobTypeConfig {
                max_running_per_shard: 8_192,
                ..JobTypeConfig::default()
            },
            move |n: Noop, _ctx: JobContext| {
                DONE.fetch_add(1, Ordering::Relaxed);
                if let Some((epoch, h)) = &lat {
                    let late = (epoch.elapsed().as_nanos() as u64).saturating_sub(n.due_ns);
                    let _ = h.lock().map(|mut h| h.record(late.max(1)));
                }
                async { Ok(()) }
            },
        )
        .start()?)
}

fn syncs(node: &Node) -> u64 {
    (0..node.shard_count())
        .filter_map(|s| {
            node.spawn_on(s, || async {
                quark_shard::current_shard_log().map(|l| l.stats().sync_count)
            })
            .join()
            .ok()
            .flatten()
        })
        .sum()
}

fn open_jobs(node: &Node) -> Result<u64> {
    let c = block_on(node.jobs().counts())?;
    Ok([JobState::Scheduled, JobState::Queued, JobState::Running]
        .iter()
        .map(|s| c.get(s).copied().unwrap_or(0))
        .sum())
}

/// Returns the end-to-end jobs/s.
fn throughput(args: &Args) -> Result<f64> {
    let node = start_node(args, &args.dir.join("throughput"), None, false, true)?;
    let jobs = node.jobs();
    DONE.store(0, Ordering::SeqCst);
    let per_thread = args.jobs / args.threads / args.batch;
    let total = per_thread * args.batch * args.threads;
    let syncs0 = syncs(&node);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.threads {
            let jobs = jobs.clone();
            s.spawn(move || {
                for _ in 0..per_thread {
                    let batch = (0..args.batch)
                        .map(|_| NewJob::new(&Noop { due_ns: 0 }, JobOptions::default()))
                        .collect();
                    block_on(jobs.enqueue_batch(batch)).expect("enqueue");
                }
            });
        }
    });
    let enqueued = start.elapsed();
    while DONE.load(Ordering::Relaxed) < total || open_jobs(&node)? > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    let syncs = syncs(&node) - syncs0;
    println!(
        "throughput: {total} no-op jobs (batches of {}, {} threads, {} shards, fsync=always): enqueued in {:.3} s ({:.0} jobs/s), all completed in {:.3} s => {:.0} jobs/s end to end; {} fdatasyncs ({:.0} jobs per sync)",
        args.batch,
        args.threads,
        args.shards,
        enqueued.as_secs_f64(),
        total as f64 / enqueued.as_secs_f64(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        syncs,
        total as f64 / syncs.max(1) as f64
    );
    node.shutdown();
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// Returns the enqueue-to-start p99, µs.
fn latency(args: &Args, early: bool, on_enqueue: bool) -> Result<f64> {
    let h = Arc::new(Mutex::new(hist()));
    let epoch = Instant::now();
    let node = start_node(
        args,
        &args.dir.join("latency"),
        Some((epoch, Arc::clone(&h))),
        early,
        on_enqueue,
    )?;
    DONE.store(0, Ordering::SeqCst);
    let segments_before = segment_count(&node);
    let jobs = node.jobs();
    let total = args.rate * args.rate_secs;
    let interval_ns = 1_000_000_000 / args.rate.max(1);
    // Starts 50 ms from now, so the driver is running at the first due time.
    let first_ns = epoch.elapsed().as_nanos() as u64 + 50_000_000;
    let driver = node.spawn_on(0, move || async move {
        let mut inflight = FuturesUnordered::new();
        let mut next = 0u64;
        while next < total || !inflight.is_empty() {
            let now = epoch.elapsed().as_nanos() as u64;
            let mut batch = Vec::new();
            while next < total && first_ns + next * interval_ns <= now {
                batch.push(NewJob::new(
                    &Noop {
                        due_ns: first_ns + next * interval_ns,
                    },
                    JobOptions::default(),
                ));
                next += 1;
            }
            if !batch.is_empty() {
                let jobs = jobs.clone();
                inflight.push(async move { jobs.enqueue_batch(batch).await });
            }
            let tick = Box::pin(quark_shard::sleep(Duration::from_micros(100)));
            if let futures::future::Either::Left((Some(r), _)) =
                futures::future::select(inflight.next(), tick).await
            {
                r.map_err(|e| e.to_string())?;
            }
        }
        Ok::<(), String>(())
    });
    driver
        .join()
        .context("driver stopped")?
        .map_err(anyhow::Error::msg)?;
    while DONE.load(Ordering::Relaxed) < total {
        std::thread::sleep(Duration::from_millis(1));
    }
    let h = h.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "latency{}: open loop {} jobs/s for {} s ({} jobs, fsync=always): enqueue-to-start p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
        match (early, on_enqueue) {
            (true, _) => " (start before durable)",
            (false, false) => " (two syncs: start_on_enqueue off)",
            (false, true) => "",
        },
        args.rate,
        args.rate_secs,
        h.len(),
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    );
    let p99 = us(0.99);
    drop(h);
    println!(
        "latency: segments created during the open loop (rolls, all shards): {}",
        segment_count(&node).saturating_sub(segments_before)
    );
    node.shutdown();
    Ok(p99)
}

/// Segment files of the node's shard logs now.
fn segment_count(node: &Node) -> usize {
    (0..node.handle().shard_count())
        .map(|s| {
            node.spawn_on(s, || async {
                quark_shard::current_shard_log().map_or(0, |l| l.stats().segment_count)
            })
            .join()
            .unwrap_or(0)
        })
        .sum()
}

/// Returns the fdatasync p50, µs.
fn baseline(args: &Args) -> Result<f64> {
    let dir = args.dir.join("baseline");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bytes = (args.baseline_bytes as u64 * args.baseline_ops).max(1 << 20);
    let f = zero_filled(&dir.join("pre"), bytes)?;
    let (h, elapsed) = pwrite_loop(&f, args.baseline_bytes, args.baseline_ops)?;
    println!(
        "baseline: {} x pwrite {} B + fdatasync on a zero-filled file: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us => {:.0} syncs/s",
        args.baseline_ops,
        args.baseline_bytes,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        args.baseline_ops as f64 / elapsed.as_secs_f64()
    );
    Ok(h.value_at_quantile(0.5) as f64 / 1000.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("{}", Machine::describe().line());
    let only: Vec<&str> = args.only.split(',').map(str::trim).collect();
    let (mut base, mut thr, mut lat, mut early) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut two = Vec::new();
    // Each run: the baseline, then the parts, so every run has its own baseline.
    for run in 0..args.runs {
        println!("run {run}:");
        if only.contains(&"baseline") {
            base.push(baseline(&args)?);
        }
        if only.contains(&"throughput") {
            thr.push(throughput(&args)?);
        }
        if only.contains(&"latency") {
            lat.push(latency(&args, false, true)?);
        }
        if only.contains(&"latency-two-syncs") {
            two.push(latency(&args, false, false)?);
        }
        if only.contains(&"latency-early") {
            early.push(latency(&args, true, true)?);
        }
    }
    if !base.is_empty() {
        println!(
            "summary: baseline fdatasync p50 (us): {} (runs: {})",
            format_spread(&spread(&base), 0),
            format_runs(&base, 0)
        );
    }
    if !thr.is_empty() {
        println!(
            "summary: end to end (jobs/s): {} (runs: {})",
            format_spread(&spread(&thr), 0),
            format_runs(&thr, 0)
        );
    }
    if !lat.is_empty() {
        println!(
            "summary: enqueue-to-start p99 (us): {} (runs: {})",
            format_spread(&spread(&lat), 0),
            format_runs(&lat, 0)
        );
        if lat.len() == base.len() {
            let r = per_run_ratios(&lat, &base);
            println!(
                "summary: enqueue-to-start p99 / same-run fdatasync p50: {} (runs: {})",
                format_spread(&spread(&r), 2),
                format_runs(&r, 2)
            );
        }
    }
    if !two.is_empty() {
        println!(
            "summary: enqueue-to-start p99, two syncs (start_on_enqueue off) (us): {} (runs: {})",
            format_spread(&spread(&two), 0),
            format_runs(&two, 0)
        );
        if two.len() == base.len() {
            let r = per_run_ratios(&two, &base);
            println!(
                "summary: enqueue-to-start p99 (two syncs) / same-run fdatasync p50: {} (runs: {})",
                format_spread(&spread(&r), 2),
                format_runs(&r, 2)
            );
        }
    }
    if !early.is_empty() {
        println!(
            "summary: enqueue-to-start p99, start before durable (us): {} (runs: {})",
            format_spread(&spread(&early), 0),
            format_runs(&early, 0)
        );
        if early.len() == base.len() {
            let r = per_run_ratios(&early, &base);
            println!(
                "summary: enqueue-to-start p99 (start before durable) / same-run fdatasync p50: {} (runs: {})",
                format_spread(&spread(&r), 2),
                format_runs(&r, 2)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}
