//! Durable reminders benchmark (issue 14), with `fsync = "always"` and a same-run `fdatasync`
//! baseline.
//!
//! 1. Baseline: a blocking `pwrite` + `fdatasync` loop (as in jobbench).
//! 2. `due`: `--due` reminders (one per actor, on `--actors-due` actors) due within the same
//!    second, spread evenly over it; lateness of each tick = the wall-clock time its turn ran
//!    − its due time (µs). Repeated `--runs` times on a fresh node; p50/p99/max per run, then
//!    median and spread of the runs' p99.
//! 3. `periodic`: `--periodic` reminders every `--period-ms` for `--periodic-secs`: lateness
//!    (jitter) of every tick.
//! 4. `rss` (run first, in a fresh process): resident memory of the process before and after registering `--registered`
//!    reminders due over `--rss-spread-s` seconds from one hour ahead (`--per-actor` per actor,
//!    so actor activations are not what is measured); the same-run figure of the node with its
//!    actors active is the "before".
//!
//! `cargo run --release -p quark-bench --bin reminderbench -- --dir /tmp/reminderbench`

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use quark::reminders::{self, Reminder, ReminderTick, RemindersConfig};
use quark::{block_on, Actor, ActorType, Context, Handler, Message, Node, NodeConfig};
use quark_bench::files::{hist, pwrite_loop, zero_filled};
use quark_bench::machine::Machine;
use quark_bench::summary::{format_runs, format_spread, spread};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Durable reminders benchmark with a same-run fdatasync baseline")]
struct Args {
    /// Scratch directory (deleted and recreated).
    #[arg(long, default_value = "/tmp/quark-reminderbench")]
    dir: PathBuf,
    /// Shards of the node.
    #[arg(long, default_value_t = 2)]
    shards: u16,
    /// Reminders due within the same second.
    #[arg(long, default_value_t = 100_000)]
    due: u64,
    /// Actors those are spread over (one reminder name per actor and index).
    #[arg(long, default_value_t = 100_000)]
    actors_due: u64,
    /// Runs of the `due` part.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Periodic reminders of the `periodic` part.
    #[arg(long, default_value_t = 1_000)]
    periodic: u64,
    /// Their period, ms.
    #[arg(long, default_value_t = 10)]
    period_ms: u64,
    /// How long the periodic part runs, s.
    #[arg(long, default_value_t = 5)]
    periodic_secs: u64,
    /// Reminders registered for the `rss` part.
    #[arg(long, default_value_t = 1_000_000)]
    registered: u64,
    /// The `rss` part's reminders are due over this many seconds, from one hour ahead
    /// (default 30 days: mostly distinct seconds, so mostly distinct time buckets).
    #[arg(long, default_value_t = 2_592_000)]
    rss_spread_s: u64,
    /// Reminders per actor in the `rss` part.
    #[arg(long, default_value_t = 100)]
    per_actor: u64,
    /// Registrations in flight from the driver.
    #[arg(long, default_value_t = 2_000)]
    inflight: usize,
    /// Synced writes of the baseline.
    #[arg(long, default_value_t = 1_000)]
    baseline_ops: u64,
    /// Bytes per baseline write.
    #[arg(long, default_value_t = 4096)]
    baseline_bytes: usize,
    /// Idle spin of the shards, µs.
    #[arg(long, default_value_t = 50)]
    idle_spin_us: u64,
    /// Which parts to run (comma separated): baseline, due, periodic, rss.
    #[arg(long, default_value = "baseline,due,periodic,rss")]
    only: String,
}

static TICKS: AtomicU64 = AtomicU64::new(0);
static LATE: Mutex<Option<Histogram<u64>>> = Mutex::new(None);

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct Bell;

impl Actor for Bell {
    const TYPE_NAME: &'static str = "bell";
}

/// Registers reminders `first..first+count` of this actor: reminder `i` once at
/// `due_ms[i - first]`, or every `period_ms` if it is not 0.
struct Arm {
    first: u64,
    due_ms: Vec<u64>,
    period_ms: u64,
}

impl Message for Arm {
    type Reply = Result<(), String>;
}

impl Handler<Arm> for Bell {
    async fn handle(&mut self, m: Arm, ctx: &Context<Self>) -> Result<(), String> {
        let mut all = FuturesUnordered::new();
        for (i, due) in m.due_ms.iter().enumerate() {
            let name = format!("r{}", m.first + i as u64);
            let r = if m.period_ms > 0 {
                let first = due.saturating_sub(now_us() / 1000);
                Reminder::every_after(
                    Duration::from_millis(first),
                    Duration::from_millis(m.period_ms),
                )
            } else {
                Reminder::once_at_ms(*due)
            };
            all.push(async move { reminders::register(ctx, &name, r).await });
        }
        while let Some(r) = all.next().await {
            r.map_err(|e| quark::ErrorChain(&e).to_string())?;
        }
        Ok(())
    }
}

impl Handler<ReminderTick> for Bell {
    async fn handle(&mut self, t: ReminderTick, _: &Context<Self>) {
        let late = now_us().saturating_sub(t.due_ms * 1000);
        if let Ok(mut h) = LATE.lock() {
            if let Some(h) = h.as_mut() {
                let _ = h.record(late.max(1));
            }
        }
        TICKS.fetch_add(1, Ordering::Relaxed);
    }
}

fn start_node(args: &Args, dir: &Path) -> Result<Node> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let text = format!(
        "[node]\nshards = {}\nidle_spin_us = {}\n[log]\ndata_dir = {:?}\nfsync = \"always\"\n",
        args.shards,
        args.idle_spin_us,
        dir.to_str().context("data dir is UTF-8")?
    );
    let config = NodeConfig::from_toml(&text, "reminderbench.toml")?;
    Ok(Node::builder()
        .config(config)
        .register(ActorType::new(|_| Bell))
        .register_reminders::<Bell>()
        .reminders_config(RemindersConfig::default())
        .start()?)
}

/// Sends `Arm` messages (`per_actor` reminders each) for `total` reminders, `inflight` at a
/// time; `due(i)` gives reminder `i`'s due time.
fn arm(
    args: &Args,
    node: &Node,
    total: u64,
    per_actor: u64,
    period_ms: u64,
    due: impl Fn(u64) -> u64,
) -> Result<Duration> {
    let t0 = Instant::now();
    let actors = total.div_ceil(per_actor.max(1));
    let refs: Vec<_> = (0..actors).map(|a| node.actor_ref::<Bell>(a)).collect();
    let mut next = 0u64;
    let mut inflight = FuturesUnordered::new();
    let window = (args.inflight as u64 / per_actor.max(1)).max(1) as usize;
    block_on(async {
        loop {
            while inflight.len() < window && next < actors {
                let first = next * per_actor;
                let n = per_actor.min(total - first);
                let dues = (first..first + n).map(&due).collect();
                inflight.push(refs[next as usize].ask(Arm {
                    first,
                    due_ms: dues,
                    period_ms,
                }));
                next += 1;
            }
            match inflight.next().await {
                Some(r) => r
                    .map_err(|e| anyhow::anyhow!("arm: {e}"))?
                    .map_err(anyhow::Error::msg)?,
                None => break,
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(t0.elapsed())
}

fn reset_hist() {
    if let Ok(mut h) = LATE.lock() {
        *h = Some(hist());
    }
}

fn take_hist() -> Histogram<u64> {
    LATE.lock()
        .ok()
        .and_then(|mut h| h.take())
        .unwrap_or_else(hist)
}

fn wait_ticks(n: u64, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while TICKS.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} ticks within {limit:?}",
            TICKS.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn due(args: &Args) -> Result<()> {
    let mut p99s = Vec::new();
    for run in 0..args.runs {
        let node = start_node(args, &args.dir.join("due"))?;
        TICKS.store(0, Ordering::SeqCst);
        reset_hist();
        let n = args.due;
        let per_actor = n.div_ceil(args.actors_due.max(1));
        // The second they are due in starts well after the registrations end.
        let now_ms = now_us() / 1000;
        let second = (now_ms / 1000 + 2 + n / 20_000) * 1000;
        let took = arm(args, &node, n, per_actor, 0, |i| second + i * 1000 / n)?;
        anyhow::ensure!(
            now_us() / 1000 + 200 < second,
            "registration took {took:?}: past the due second; use fewer reminders"
        );
        wait_ticks(n, Duration::from_secs(60))?;
        let h = take_hist();
        let us = |q: f64| h.value_at_quantile(q) as f64;
        println!(
            "due run {run}: {n} reminders due within one second (registered in {:.2} s = {:.0}/s durable, fsync=always, {} shards): lateness p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            args.shards,
            us(0.5),
            us(0.99),
            us(0.999),
            h.max() as f64
        );
        p99s.push(us(0.99) / 1000.0);
        node.shutdown();
    }
    println!(
        "due: p99 lateness over {} runs (ms): {} (runs: {})",
        args.runs,
        format_spread(&spread(&p99s), 2),
        format_runs(&p99s, 2)
    );
    Ok(())
}

fn periodic(args: &Args) -> Result<()> {
    let node = start_node(args, &args.dir.join("periodic"))?;
    TICKS.store(0, Ordering::SeqCst);
    let start = now_us() / 1000 + 500;
    arm(args, &node, args.periodic, 1, args.period_ms, |i| {
        start + i % args.period_ms
    })?;
    // Measure from the second period on (the first ticks may meet the registration's tail).
    while now_us() / 1000 < start + 1000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    reset_hist();
    let before = TICKS.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(args.periodic_secs));
    let ticks = TICKS.load(Ordering::Relaxed) - before;
    let h = take_hist();
    let expected = args.periodic * args.periodic_secs * 1000 / args.period_ms;
    println!(
        "periodic: {} reminders every {} ms for {} s: {} ticks ({:.1} % of the {} occurrences), jitter (turn − due) p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        args.periodic,
        args.period_ms,
        args.periodic_secs,
        ticks,
        ticks as f64 * 100.0 / expected as f64,
        expected,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    node.shutdown();
    Ok(())
}

fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

fn rss(args: &Args) -> Result<()> {
    let node = start_node(args, &args.dir.join("rss"))?;
    // Activate the actors first (an `Arm` with no reminder), so the "before" holds them and
    // the difference is the reminders'.
    let per_actor = args.per_actor.max(1);
    let actors = args.registered.div_ceil(per_actor);
    block_on(async {
        for a in 0..actors {
            node.actor_ref::<Bell>(a)
                .ask(Arm {
                    first: 0,
                    due_ms: Vec::new(),
                    period_ms: 0,
                })
                .await
                .map_err(|e| anyhow::anyhow!("activate: {e}"))?
                .map_err(anyhow::Error::msg)?;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let before = rss_bytes();
    let now_ms = now_us() / 1000;
    let n = args.registered;
    let spread_ms = args.rss_spread_s * 1000;
    let took = arm(args, &node, n, per_actor, 0, |i| {
        now_ms + 3_600_000 + i * spread_ms / n
    })?;
    let after = rss_bytes();
    let loaded: u64 = block_on(node.reminders().stats())?
        .iter()
        .map(|s| s.loaded)
        .sum();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "rss: {n} reminders ({per_actor} per actor on {actors} actors, due over {} s from 1 h ahead) registered in {:.1} s ({:.0}/s durable): RSS {:.1} MiB before, {:.1} MiB after => +{:.1} MiB ({:.0} B per reminder); {loaded} held in memory",
        args.rss_spread_s,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        mib(before),
        mib(after),
        mib(after.saturating_sub(before)),
        after.saturating_sub(before) as f64 / n as f64
    );
    node.shutdown();
    Ok(())
}

fn baseline(args: &Args) -> Result<()> {
    let dir = args.dir.join("baseline");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bytes = (args.baseline_bytes as u64 * args.baseline_ops).max(1 << 20);
    let f = zero_filled(&dir.join("pre"), bytes)?;
    let (h, elapsed) = pwrite_loop(&f, args.baseline_bytes, args.baseline_ops)?;
    println!(
        "baseline: {} x pwrite {} B + fdatasync on a zero-filled file: p50 {:.0} us, p99 {:.0} us => {:.0} syncs/s",
        args.baseline_ops,
        args.baseline_bytes,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        args.baseline_ops as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("{}", Machine::describe().line());
    let only: Vec<&str> = args.only.split(',').map(str::trim).collect();
    // First: the RSS figure is only meaningful in a process that has not run the others.
    if only.contains(&"rss") {
        rss(&args)?;
    }
    if only.contains(&"baseline") {
        baseline(&args)?;
    }
    if only.contains(&"due") {
        due(&args)?;
    }
    if only.contains(&"periodic") {
        periodic(&args)?;
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}
