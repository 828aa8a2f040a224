//! Journaling benchmark (issue 4) with same-run `fdatasync` baselines.
//!
//! Each run measures, in one process, on the same filesystem and directory:
//! 1. Baselines: a plain blocking `pwrite` + `fdatasync` loop of `--baseline-bytes` writes at
//!    the end of the written data of a preallocated (zero-filled, like the log's segments) file
//!    and of a growing file; the same write + `fdatasync` through monoio/io_uring, and one
//!    `O_DSYNC` write through io_uring (what the log did before direct I/O); the single-actor
//!    group also interleaves (g), aligned `O_DIRECT | O_DSYNC` io_uring writes of the blocks a
//!    direct-I/O append writes (what the log does with `[log] direct_io`, the default), and
//!    `--direct-io off` runs the node with buffered `O_DSYNC` appends for comparison.
//! 2. One event-sourced actor persisting one 100-byte event per turn, `fsync = "always"`:
//!    sequential asks from a driver task on the actor's shard (`Node::spawn_on`) and from a
//!    thread outside the node. Latency of the handler's `persist` and of the whole ask.
//! 3. `--actors` actors on 2 shards, each driven closed-loop by its own task on its owner shard
//!    (all in flight): durable events/s, `fdatasync`s/s and events per sync (from the shard
//!    logs' counters), latency.
//! 4. Activation of one actor with `--stream-events` events (written 100 per turn, once), after
//!    a node restart, with a snapshot every `--snapshot-every` events and without snapshots,
//!    warm page cache and (as root) cold; time travel to the middle of the stream and a
//!    dry-run replay of the whole stream.
//!
//! Prints every run, then median [min .. max] per figure (and with `--json`, one JSON line).
//! `cargo run --release -p quark-bench --bin journalbench -- --runs 3 [--only NAME] [--json]`

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use quark::journal::{At, JournalPolicy};
use quark::{block_on, Node, NodeConfig};
use quark_bench::files::{
    create_empty, evict_from_page_cache, hist, pwrite_loop, pwrite_loop_from, zero_filled,
};
use quark_bench::journal_actors::{Balance, Deposit, DepositMany, Ledger, EVENT_BYTES};
use quark_bench::machine::Machine;
use quark_bench::summary::{format_runs, spread};
use quark_persist::LogStats;

// The same allocator as the other benchmarks (see enginebench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Journaling benchmark with same-run fdatasync baselines")]
struct Args {
    /// Scratch directory (must be on the disk under test, not tmpfs).
    #[arg(long, default_value = "target/journalbench")]
    dir: PathBuf,
    /// Repetitions of every measurement.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Run only the groups whose name contains this text (or one of these, comma-separated):
    /// baseline, single, concurrent, activation.
    #[arg(long)]
    only: Option<String>,
    /// Print one JSON array at the end.
    #[arg(long)]
    json: bool,
    /// Synced writes per baseline latency figure (the group `baseline`; the single-actor
    /// group measures its own baseline (a) interleaved with the persists, `--ops` writes).
    #[arg(long, default_value_t = 3000)]
    baseline_ops: u64,
    /// Bytes per baseline write (a persisted 100-byte event is ~250 bytes on disk).
    #[arg(long, default_value_t = 256)]
    baseline_bytes: usize,
    /// Sequential persists per single-actor latency figure (after 200 warm-up ones), in 10
    /// blocks interleaved with as many baseline writes.
    #[arg(long, default_value_t = 3000)]
    ops: u64,
    /// Actors in the concurrent measurement (all in flight).
    #[arg(long, default_value_t = 1000)]
    actors: u64,
    /// Measured time of the concurrent run, ms (after `--warmup-ms`).
    #[arg(long, default_value_t = 2000)]
    concurrent_ms: u64,
    /// Warm-up of the concurrent run, ms.
    #[arg(long, default_value_t = 300)]
    warmup_ms: u64,
    /// Events in the stream of the activation measurement.
    #[arg(long, default_value_t = 100_000)]
    stream_events: u64,
    /// Events persisted per turn while writing that stream.
    #[arg(long, default_value_t = 100)]
    events_per_turn: u64,
    /// Snapshot policy of the snapshotted stream.
    #[arg(long, default_value_t = 1000)]
    snapshot_every: u64,
    /// Idle spin of the shards, µs (the node's default is 50).
    #[arg(long, default_value_t = 50)]
    idle_spin_us: u64,
    /// Shards of the node.
    #[arg(long, default_value_t = 2)]
    shards: u16,
    /// Run the shard threads unpinned (`[node] pin_threads = false`), to see what pinning
    /// costs the io_uring worker that runs a write-through append.
    #[arg(long)]
    no_pin: bool,
    /// `[log] direct_io` of the node: `auto` (the default: aligned `O_DIRECT | O_DSYNC`
    /// appends), `on` or `off` (buffered `O_DSYNC`, the behaviour before direct I/O).
    #[arg(long, default_value = "auto")]
    direct_io: String,
}

/// One named figure of one run.
#[derive(Clone, Debug)]
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
}

struct Out(Vec<Figure>);

impl Out {
    fn push(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.0.push(Figure {
            name: name.into(),
            value,
            unit,
        });
    }

    /// p50, p99 and p99.9 of `h` (ns) in µs.
    fn latency(&mut self, name: &str, h: &Histogram<u64>) {
        for (q, tag) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
            self.push(format!("{name} {tag}"), us(h, q), "us");
        }
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|f| f.name == name).map(|f| f.value)
    }
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn fresh(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

// ---- baselines ----

/// Alignment of the raw direct baseline's writes (what `statx` reports on ext4 is 512; the
/// log uses `STATX_DIOALIGN` too, so this is the same figure where the disk's is 4096).
fn direct_align(path: &Path) -> Result<usize> {
    let f = OpenOptions::new()
        .read(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    Ok(quark_persist::dio_align(&f))
}

/// Raw io_uring `O_DIRECT | O_DSYNC` writes as the log issues them for `size`-byte appends:
/// append `i` writes `[i * size, (i + 1) * size)` rounded out to the alignment (the block
/// holding the previous end, rewritten with the same bytes, then the new ones and zero
/// padding), from an aligned buffer, into a zero-filled file.
fn direct_loop_from(path: &Path, size: usize, first: u64, count: u64) -> Result<Histogram<u64>> {
    use std::os::unix::fs::OpenOptionsExt;
    let align = direct_align(path)? as u64;
    let std_file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)
        .with_context(|| format!("open {} O_DIRECT", path.display()))?;
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(256)
        .build()
        .context("io_uring runtime")?;
    rt.block_on(async move {
        let file = monoio::fs::File::from_std(std_file)?;
        let mut h = hist();
        let max = (size as u64).next_multiple_of(align) + align;
        let mut block = std::rc::Rc::new(quark_persist::AlignedBuf::zeroed(
            max as usize,
            align as usize,
        ));
        for i in first..first + count {
            let start = (i * size as u64) / align * align;
            let end = ((i + 1) * size as u64).next_multiple_of(align);
            let b = std::rc::Rc::get_mut(&mut block).context("buffer returned")?;
            b.as_mut_slice().fill(0x77);
            let t = Instant::now();
            let buf = DirectBuf(std::rc::Rc::clone(&block), (end - start) as usize);
            let (res, _) = file.write_all_at(buf, start).await;
            res?;
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        anyhow::Ok(h)
    })
}

/// The first `.1` bytes of an aligned buffer, handed to io_uring.
struct DirectBuf(std::rc::Rc<quark_persist::AlignedBuf>, usize);

// SAFETY: the Rc keeps the allocation alive and unmoved until the write completes; the loop
// writes into it only between writes (`Rc::get_mut` succeeds only when no op holds a clone);
// `.1` never exceeds its length.
unsafe impl monoio::buf::IoBuf for DirectBuf {
    fn read_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.1
    }
}

/// The same through monoio/io_uring on a preallocated file: write + `fdatasync`, or (with
/// `dsync`) one write on an `O_DSYNC` descriptor.
fn uring_loop(path: &Path, size: usize, count: u64, dsync: bool) -> Result<Histogram<u64>> {
    uring_loop_from(path, size, 0, count, dsync)
}

/// [`uring_loop`] starting at write number `first` (offset `first * size`), so that blocks
/// interleaved with other measurements continue at the end of the written data.
fn uring_loop_from(
    path: &Path,
    size: usize,
    first: u64,
    count: u64,
    dsync: bool,
) -> Result<Histogram<u64>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if dsync {
        opts.custom_flags(libc::O_DSYNC);
    }
    let std_file = opts
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(256)
        .build()
        .context("io_uring runtime")?;
    rt.block_on(async move {
        let file = monoio::fs::File::from_std(std_file)?;
        let mut h = hist();
        let mut buf = vec![0x77u8; size];
        for i in first..first + count {
            let t = Instant::now();
            let (res, b) = file.write_all_at(buf, i * size as u64).await;
            buf = b;
            res?;
            if !dsync {
                file.sync_data().await?;
            }
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        anyhow::Ok(h)
    })
}

fn baselines(args: &Args, out: &mut Out) -> Result<()> {
    let dir = args.dir.join("baseline");
    fresh(&dir)?;
    let (size, n) = (args.baseline_bytes, args.baseline_ops);
    let bytes = (size as u64 * n).max(1 << 20);
    let label = format!("{size}B");
    let pre = zero_filled(&dir.join("pre"), bytes)?;
    out.latency(
        &format!("baseline {label} pwrite+fdatasync prealloc"),
        &pwrite_loop(&pre, size, n)?.0,
    );
    drop(pre);
    let grow = create_empty(&dir.join("grow"))?;
    grow.sync_all()?;
    out.latency(
        &format!("baseline {label} pwrite+fdatasync growing"),
        &pwrite_loop(&grow, size, n)?.0,
    );
    drop(grow);
    for dsync in [false, true] {
        let path = dir.join(if dsync { "dsync" } else { "uring" });
        drop(zero_filled(&path, bytes)?);
        let what = if dsync {
            "O_DSYNC write"
        } else {
            "write+fdatasync"
        };
        out.latency(
            &format!("baseline {label} io_uring {what} prealloc"),
            &uring_loop(&path, size, n, dsync)?,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

// ---- the node ----

fn start_node(args: &Args, data_dir: &Path, policy: JournalPolicy) -> Result<Node> {
    // Log defaults otherwise: 64 MiB zero-filled segments, write-through.
    let text = format!(
        "[node]\nshards = {}\nidle_spin_us = {}\npin_threads = {}\n[log]\ndata_dir = {:?}\nfsync = \"always\"\ndirect_io = {:?}\n",
        args.shards,
        args.idle_spin_us,
        !args.no_pin,
        data_dir.to_str().context("data dir is UTF-8")?,
        args.direct_io
    );
    let config = NodeConfig::from_toml(&text, "journalbench.toml")?;
    Ok(Node::builder()
        .config(config)
        .register_journaled::<Ledger>(policy)
        .start()?)
}

/// A key of a `Ledger` owned by `shard`, starting the search at `prefix-from`.
fn key_on(node: &Node, shard: u16, prefix: &str, from: u64) -> String {
    (from..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| node.actor_ref::<Ledger>(k.as_str()).owner_shard() == shard)
        .expect("some key maps to every shard")
}

/// The log counters of every shard.
fn log_stats(node: &Node) -> Result<Vec<LogStats>> {
    (0..node.shard_count())
        .map(|s| {
            node.spawn_on(s, || async {
                quark_shard::current_shard_log().map(|l| l.stats())
            })
            .join()
            .ok()
            .flatten()
            .context("shard log stats")
        })
        .collect()
}

// ---- 1. one actor, sequential ----

const SINGLE_WARMUP: u64 = 200;
/// Blocks the single-actor measurements and their baseline alternate in.
const SINGLE_BLOCKS: u64 = 10;

/// Name of the baseline measured interleaved with the single-actor persists.
fn interleaved_baseline(args: &Args) -> String {
    format!(
        "baseline {}B pwrite+fdatasync prealloc, interleaved with the persists",
        args.baseline_bytes
    )
}

/// Name of the io_uring `O_DSYNC` baseline measured interleaved with the single-actor persists
/// (issue 22's denominator: a raw io_uring `O_DSYNC` write of the same size into a
/// preallocated file).
fn interleaved_uring_baseline(args: &Args) -> String {
    format!(
        "baseline {}B io_uring O_DSYNC write prealloc, interleaved with the persists",
        args.baseline_bytes
    )
}

/// Name of the raw io_uring `O_DIRECT | O_DSYNC` baseline (what a direct-I/O append writes).
fn interleaved_direct_baseline(args: &Args) -> String {
    format!(
        "baseline {}B io_uring O_DIRECT|O_DSYNC aligned write prealloc, interleaved with the persists",
        args.baseline_bytes
    )
}

/// Name of the io_uring `O_DSYNC` baseline run from a thread pinned to the actor's shard
/// core (core 0): the same placement as the shard, whose io_uring worker and wake-ups then
/// cross the same cores.
fn interleaved_pinned_baseline(args: &Args) -> String {
    format!(
        "baseline {}B io_uring O_DSYNC write prealloc, thread pinned to the shard's core, interleaved",
        args.baseline_bytes
    )
}

/// [`uring_loop_from`] on a thread pinned to core `core` (as the shard is).
fn pinned_uring_loop_from(
    core: usize,
    path: &Path,
    size: usize,
    first: u64,
    count: u64,
) -> Result<Histogram<u64>> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        quark_shard::pin_current_thread(core).context("pin the baseline thread")?;
        uring_loop_from(&path, size, first, count, true)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("pinned baseline thread panicked"))?
}

/// One actor, sequential persists, interleaved with baselines (a), (e) and (f): the same
/// warm-up for each (`SINGLE_WARMUP` writes or persists, not measured), then `SINGLE_BLOCKS`
/// rounds of (a block of blocking baseline writes, a block of io_uring `O_DSYNC` baseline
/// writes from this thread (e) then from a thread pinned to the shard's core (f), a block of
/// persists from a driver on the actor's shard, a block from a caller outside the
/// node), the order rotated every round, so that disk stalls fall on the four evenly.
fn single(args: &Args, out: &mut Out) -> Result<()> {
    let dir = args.dir.join("single");
    fresh(&dir)?;
    std::fs::create_dir_all(dir.join("node"))?;
    let node = start_node(args, &dir.join("node"), JournalPolicy::default())?;
    let size = args.baseline_bytes;
    let per = (args.ops / SINGLE_BLOCKS).max(1);
    let total = SINGLE_WARMUP + per * SINGLE_BLOCKS;
    let pre = zero_filled(
        &dir.join("baseline-pre"),
        (size as u64 * total).max(1 << 20),
    )?;
    let uring_pre = dir.join("baseline-uring");
    drop(zero_filled(&uring_pre, (size as u64 * total).max(1 << 20))?);
    let direct_pre = dir.join("baseline-direct");
    drop(zero_filled(
        &direct_pre,
        (size as u64 * total).max(1 << 20) + 8192,
    )?);
    let pinned_pre = dir.join("baseline-uring-pinned");
    drop(zero_filled(
        &pinned_pre,
        (size as u64 * total).max(1 << 20),
    )?);
    let on_key = key_on(&node, 0, "solo", 0);
    let ext_key = key_on(&node, 0, "outside", 0);

    pwrite_loop_from(&pre, size, 0, SINGLE_WARMUP)?;
    uring_loop_from(&uring_pre, size, 0, SINGLE_WARMUP, true)?;
    direct_loop_from(&direct_pre, size, 0, SINGLE_WARMUP)?;
    pinned_uring_loop_from(0, &pinned_pre, size, 0, SINGLE_WARMUP)?;
    let mut base_next = SINGLE_WARMUP;
    let mut uring_next = SINGLE_WARMUP;
    let mut uring_base = hist();
    let mut pinned_base = hist();
    let mut direct_base = hist();
    on_shard_block(&node, &on_key, SINGLE_WARMUP)?;
    external_block(&node, &ext_key, SINGLE_WARMUP)?;

    let mut base = hist();
    let (mut on_persist, mut on_ask) = (hist(), hist());
    let (mut ext_persist, mut ext_ask) = (hist(), hist());
    let (mut on_last, mut ext_last) = (0, 0);
    for block in 0..SINGLE_BLOCKS {
        for step in 0..4 {
            match (block + step) % 4 {
                0 => {
                    base.add(pwrite_loop_from(&pre, size, base_next, per)?.0)?;
                    base_next += per;
                }
                3 => {
                    uring_base.add(uring_loop_from(&uring_pre, size, uring_next, per, true)?)?;
                    direct_base.add(direct_loop_from(&direct_pre, size, uring_next, per)?)?;
                    pinned_base.add(pinned_uring_loop_from(
                        0,
                        &pinned_pre,
                        size,
                        uring_next,
                        per,
                    )?)?;
                    uring_next += per;
                }
                1 => {
                    let (p, a, last) = on_shard_block(&node, &on_key, per)?;
                    on_persist.add(p)?;
                    on_ask.add(a)?;
                    on_last = last;
                }
                _ => {
                    let (p, a, last) = external_block(&node, &ext_key, per)?;
                    ext_persist.add(p)?;
                    ext_ask.add(a)?;
                    ext_last = last;
                }
            }
        }
    }
    drop(pre);
    for (key, last) in [(&on_key, on_last), (&ext_key, ext_last)] {
        ensure!(
            last == total,
            "{key}: version {last} after {total} persists"
        );
        let r = node.actor_ref::<Ledger>(key.as_str());
        let (balance, applied) = block_on(r.ask(Balance))?;
        ensure!(
            balance == total as i64 && applied == total,
            "{key}: balance {balance}, applied {applied}"
        );
    }
    out.latency(&interleaved_baseline(args), &base);
    out.latency(&interleaved_uring_baseline(args), &uring_base);
    out.latency(&interleaved_pinned_baseline(args), &pinned_base);
    out.latency(&interleaved_direct_baseline(args), &direct_base);
    out.latency("1 actor, driver on shard: persist", &on_persist);
    out.latency("1 actor, driver on shard: ask", &on_ask);
    out.latency("1 actor, external caller: persist", &ext_persist);
    out.latency("1 actor, external caller: ask", &ext_ask);
    node.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `n` sequential persists from a driver task on the actor's shard (no cross-thread hop in
/// the ask): persist and ask latency, and the version of the last one.
fn on_shard_block(node: &Node, key: &str, n: u64) -> Result<(Histogram<u64>, Histogram<u64>, u64)> {
    let r = node.actor_ref::<Ledger>(key);
    node.spawn_on(0, move || async move {
        let (mut persist, mut ask) = (hist(), hist());
        let mut last = 0;
        for _ in 0..n {
            let t = Instant::now();
            let d = r.ask(Deposit(1)).await??;
            ask.record(t.elapsed().as_nanos() as u64)?;
            persist.record(d.persist_ns)?;
            last = d.version;
        }
        anyhow::Ok((persist, ask, last))
    })
    .join()
    .context("driver task")?
}

/// `n` sequential persists from this thread, outside the node (two cross-thread hand-offs
/// per ask).
fn external_block(node: &Node, key: &str, n: u64) -> Result<(Histogram<u64>, Histogram<u64>, u64)> {
    let r = node.actor_ref::<Ledger>(key);
    let (mut persist, mut ask) = (hist(), hist());
    let mut last = 0;
    for _ in 0..n {
        let t = Instant::now();
        let d = block_on(r.ask(Deposit(1)))??;
        ask.record(t.elapsed().as_nanos() as u64)?;
        persist.record(d.persist_ns)?;
        last = d.version;
    }
    Ok((persist, ask, last))
}

// ---- 2. many actors, concurrent ----

fn concurrent(args: &Args, out: &mut Out) -> Result<()> {
    let dir = args.dir.join("concurrent");
    fresh(&dir)?;
    let node = start_node(args, &dir, JournalPolicy::default())?;
    let n = args.actors;
    let measure_from = Instant::now() + Duration::from_millis(args.warmup_ms + 100);
    let stop = measure_from + Duration::from_millis(args.concurrent_ms);
    let mut tasks = Vec::new();
    for i in 0..n {
        let key = format!("acct-{i}");
        let r = node.actor_ref::<Ledger>(key.as_str());
        let shard = r.owner_shard();
        tasks.push(node.spawn_on(shard, move || async move {
            let (mut persist, mut ask) = (hist(), hist());
            let (mut done, mut measured, mut last) = (0u64, 0u64, 0u64);
            loop {
                let t = Instant::now();
                if t >= stop {
                    break;
                }
                let d = r.ask(Deposit(1)).await??;
                let end = Instant::now();
                done += 1;
                last = d.version;
                if t >= measure_from && end <= stop {
                    measured += 1;
                    ask.record((end - t).as_nanos() as u64)?;
                    persist.record(d.persist_ns)?;
                }
            }
            anyhow::Ok((persist, ask, done, measured, last))
        }));
    }
    // Log counters at the window's edges (read on each shard; a few µs of skew).
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let before = log_stats(&node)?;
    std::thread::sleep(stop.saturating_duration_since(Instant::now()));
    let after = log_stats(&node)?;
    let (mut persist, mut ask) = (hist(), hist());
    let (mut done, mut measured) = (0u64, 0u64);
    for t in tasks {
        let (p, a, d, m, last) = t.join().context("driver task")??;
        ensure!(last == d, "an actor's version {last} after {d} persists");
        persist.add(p)?;
        ask.add(a)?;
        done += d;
        measured += m;
    }
    // Every persisted event was applied: the balances add up to the persists.
    let mut total = 0i64;
    for i in 0..n {
        let key = format!("acct-{i}");
        total += block_on(node.actor_ref::<Ledger>(key.as_str()).ask(Balance))?.0;
    }
    ensure!(
        total == done as i64,
        "balances add up to {total}, {done} persists"
    );
    let secs = args.concurrent_ms as f64 / 1e3;
    let records: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.next_lsn - b.next_lsn)
        .sum();
    let syncs: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.sync_count - b.sync_count)
        .sum();
    let name = format!("{n} actors, 2 shards");
    out.push(
        format!("{name}: durable events/s (acked asks)"),
        measured as f64 / secs,
        "events/s",
    );
    out.push(
        format!("{name}: log records/s"),
        records as f64 / secs,
        "records/s",
    );
    out.push(
        format!("{name}: durable writes (fdatasync or O_DSYNC) /s"),
        syncs as f64 / secs,
        "syncs/s",
    );
    out.push(
        format!("{name}: events per durable write"),
        records as f64 / syncs.max(1) as f64,
        "events",
    );
    out.latency(&format!("{name}: persist"), &persist);
    out.latency(&format!("{name}: ask"), &ask);
    node.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

// ---- 3. activation of a long stream ----

const BIG: &str = "big";

/// Writes `--stream-events` events to actor `BIG` under `policy` into `dir` once (kept for the
/// later runs, marked complete by a file); returns the write rate of this call, if it wrote.
fn write_stream(args: &Args, dir: &Path, policy: JournalPolicy) -> Result<Option<f64>> {
    let done = dir.with_extension("complete");
    if done.exists() {
        return Ok(None);
    }
    fresh(dir)?;
    let node = start_node(args, dir, policy)?;
    let r = node.actor_ref::<Ledger>(BIG);
    let (per, total) = (args.events_per_turn, args.stream_events);
    ensure!(
        total % per == 0,
        "--stream-events is a multiple of --events-per-turn"
    );
    let t = Instant::now();
    let version = node
        .spawn_on(r.owner_shard(), move || async move {
            let mut v = 0;
            for _ in 0..total / per {
                v = r.ask(DepositMany(per)).await??;
            }
            anyhow::Ok(v)
        })
        .join()
        .context("writer task")??;
    let rate = total as f64 / t.elapsed().as_secs_f64();
    ensure!(
        version == total,
        "stream at version {version}, wanted {total}"
    );
    node.shutdown();
    std::fs::write(&done, b"")?;
    Ok(Some(rate))
}

/// What the current rebuild's reads cost and what a sequential one would: on `BIG`'s shard,
/// (a) `Log::read` of each of the last `tail` event LSNs (what an activation after a snapshot
/// `tail` events back does, without decoding), and (b) one forward scan of the shard's log from
/// the stream's first LSN, decoding every event, checking the hash chain and applying it (a
/// lower bound for a rebuild of the whole stream). Returns (ms for (a), ms for (b)).
fn read_costs(node: &Node, total: u64, tail: usize) -> Result<(f64, f64)> {
    use quark::journal::format::{self, Stream};
    let shard = node.actor_ref::<Ledger>(BIG).owner_shard();
    node.spawn_on(shard, move || async move {
        let log = quark_shard::current_shard_log().context("the node has a log")?;
        let ek = format::stream_key(Stream::Events, "ledger", &quark::ActorKey::from(BIG));
        let lsns = log.key_lsns(&ek);
        ensure!(lsns.len() as u64 == total, "{} event LSNs", lsns.len());
        let t = Instant::now();
        for &lsn in &lsns[lsns.len() - tail.min(lsns.len())..] {
            let rec = log.read(lsn).await?.context("indexed record readable")?;
            std::hint::black_box(rec);
        }
        let reads = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let mut scan = log.scan(lsns[0]);
        let (mut hash, mut version, mut state) = (format::GENESIS, 0u64, Ledger::default());
        while let Some(rec) = scan.next().await? {
            if rec.key != ek {
                continue;
            }
            let ev = format::decode_event(&rec.payload)?;
            ensure!(
                ev.version == version + 1 && ev.prev_hash == hash,
                "chain at {version}"
            );
            hash = format::event_hash(&ek, &rec.payload);
            let e: quark_bench::journal_actors::LedgerEvent =
                quark::journal::decode(&ev.event_type, &ev.data)?;
            quark::journal::EventSourced::apply(&mut state, &e);
            version = ev.version;
        }
        let scan_ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(version == total, "scan reached version {version}");
        ensure!(
            quark::journal::EventSourced::snapshot(&state) == total as i64,
            "scan state"
        );
        anyhow::Ok((reads, scan_ms))
    })
    .join()
    .context("scan task")?
}

fn drop_caches() -> bool {
    // Needs root; best effort (the figure is left out when it fails).
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"3").is_ok()
}

fn activation(args: &Args, out: &mut Out) -> Result<()> {
    let total = args.stream_events;
    let k = total / 1000;
    for (tag, policy) in [
        (
            format!("snapshot every {}", args.snapshot_every),
            JournalPolicy::snapshot_every(args.snapshot_every),
        ),
        ("no snapshots".to_string(), JournalPolicy::default()),
    ] {
        let dir = args.dir.join(if policy == JournalPolicy::default() {
            "stream-plain"
        } else {
            "stream-snap"
        });
        if let Some(rate) = write_stream(args, &dir, policy)? {
            println!(
                "  (wrote {total} events, {} per turn, {tag}: {rate:.0} events/s)",
                args.events_per_turn
            );
        }
        for cold in [false, true] {
            // Cold: the page cache is dropped before the node starts (as root), and the
            // segments are evicted again after the node's start (its log recovery read them
            // back), so that the activation reads the disk.
            let dropped = cold && drop_caches();
            if cold && !dropped {
                println!(
                    "  (cannot drop the whole page cache: not root; cold = segments evicted \
                     with posix_fadvise, node start is then from a warm cache)"
                );
                evict_from_page_cache(&dir)?;
            }
            let cache = if cold { "cold" } else { "warm" };
            let t = Instant::now();
            let node = start_node(args, &dir, policy)?;
            out.push(
                format!(
                    "{k}k-event stream, {tag}, {cache}: node start (log recovery{})",
                    match (cold, dropped) {
                        (false, _) => "",
                        (true, true) => ", page cache dropped",
                        (true, false) => ", warm cache",
                    }
                ),
                t.elapsed().as_secs_f64() * 1e3,
                "ms",
            );
            if cold {
                evict_from_page_cache(&dir)?;
            }
            let r = node.actor_ref::<Ledger>(BIG);
            let t = Instant::now();
            // A replay of a long stream can outlast the default ask timeout (10 s).
            let (balance, applied) = block_on(r.ask_timeout(Balance, Duration::from_secs(300)))?;
            let el = t.elapsed();
            ensure!(
                balance == total as i64,
                "balance {balance} after activation"
            );
            if policy.snapshot_every_events.is_some() {
                ensure!(
                    applied <= args.snapshot_every,
                    "{applied} events replayed despite snapshots"
                );
            } else {
                ensure!(
                    applied == total,
                    "{applied} events replayed, wanted {total}"
                );
            }
            out.push(
                format!(
                    "{k}k-event stream, {tag}, {cache}: activation (first ask{})",
                    if cold {
                        ", segments evicted from the page cache"
                    } else {
                        ""
                    }
                ),
                el.as_secs_f64() * 1e3,
                "ms",
            );
            out.push(
                format!("{k}k-event stream, {tag}, {cache}: events replayed"),
                applied as f64,
                "events",
            );
            if !cold {
                let journal = node.journal();
                let mid = total / 2;
                let t = Instant::now();
                let (state, v) = block_on(journal.state_at::<Ledger>(BIG, At::Version(mid)))?;
                let el = t.elapsed();
                ensure!(
                    (state, v) == (mid as i64, mid),
                    "state_at({mid}) = {state} at {v}"
                );
                out.push(
                    format!("{k}k-event stream, {tag}, warm: state_at(version {mid})"),
                    el.as_secs_f64() * 1e3,
                    "ms",
                );
                let t = Instant::now();
                let rep = block_on(journal.replay::<Ledger>(BIG, At::Latest, |_| {}))?;
                let el = t.elapsed();
                ensure!(
                    rep.state == total as i64 && rep.events_applied == total,
                    "replay reached {} with {} events",
                    rep.state,
                    rep.events_applied
                );
                out.push(
                    format!("{k}k-event stream, {tag}, warm: dry-run replay of all"),
                    el.as_secs_f64() * 1e3,
                    "ms",
                );
                if policy == JournalPolicy::default() {
                    let tail = args.snapshot_every as usize;
                    let (reads, scan) = read_costs(&node, total, tail)?;
                    out.push(
                        format!("{k}k-event stream, warm: Log::read of the last {tail} event LSNs, no decode"),
                        reads,
                        "ms",
                    );
                    out.push(
                        format!("{k}k-event stream, warm: sequential Log::scan + decode + chain check + apply of all (lower bound)"),
                        scan,
                        "ms",
                    );
                }
            }
            node.shutdown();
        }
    }
    Ok(())
}

// ---- ratios and summary ----

/// Same-run ratios: (name, numerator, denominator), looked up in one run's figures. The
/// single-actor figures are divided by the baseline measured interleaved with them; the
/// ratios to the `baseline` group's figures (measured before, not interleaved) say so.
fn ratios(args: &Args, out: &mut Out) {
    let b = format!("baseline {}B", args.baseline_bytes);
    let il = interleaved_baseline(args);
    let ul = interleaved_uring_baseline(args);
    let pl = interleaved_pinned_baseline(args);
    let dl = interleaved_direct_baseline(args);
    let table = [
        (
            "ratio: persist p50 (driver on shard) / interleaved io_uring O_DIRECT|O_DSYNC baseline (g) p50".to_string(),
            "1 actor, driver on shard: persist p50".to_string(),
            format!("{dl} p50"),
        ),
        (
            "ratio: persist p99 (driver on shard) / interleaved io_uring O_DIRECT|O_DSYNC baseline (g) p99".to_string(),
            "1 actor, driver on shard: persist p99".to_string(),
            format!("{dl} p99"),
        ),
        (
            "ratio: persist p50 (driver on shard) / io_uring O_DSYNC baseline pinned to the shard's core (f) p50".to_string(),
            "1 actor, driver on shard: persist p50".to_string(),
            format!("{pl} p50"),
        ),
        (
            "ratio: persist p99 (driver on shard) / io_uring O_DSYNC baseline pinned to the shard's core (f) p99".to_string(),
            "1 actor, driver on shard: persist p99".to_string(),
            format!("{pl} p99"),
        ),
        (
            "ratio: persist p50 (driver on shard) / interleaved io_uring O_DSYNC baseline (e) p50 [target <= 1.15]".to_string(),
            "1 actor, driver on shard: persist p50".to_string(),
            format!("{ul} p50"),
        ),
        (
            "ratio: persist p99 (driver on shard) / interleaved io_uring O_DSYNC baseline (e) p99 [target <= 1.3]".to_string(),
            "1 actor, driver on shard: persist p99".to_string(),
            format!("{ul} p99"),
        ),
        (
            "ratio: persist p99 (driver on shard) / interleaved baseline (a) p99 [target <= 1.5]".to_string(),
            "1 actor, driver on shard: persist p99".to_string(),
            format!("{il} p99"),
        ),
        (
            "ratio: persist p50 (driver on shard) / interleaved baseline (a) p50".to_string(),
            "1 actor, driver on shard: persist p50".to_string(),
            format!("{il} p50"),
        ),
        (
            "ratio: ask p99 (driver on shard) / interleaved baseline (a) p99".to_string(),
            "1 actor, driver on shard: ask p99".to_string(),
            format!("{il} p99"),
        ),
        (
            "ratio: persist p99 (external caller) / interleaved baseline (a) p99".to_string(),
            "1 actor, external caller: persist p99".to_string(),
            format!("{il} p99"),
        ),
        (
            "ratio: ask p99 (external caller) / interleaved baseline (a) p99".to_string(),
            "1 actor, external caller: ask p99".to_string(),
            format!("{il} p99"),
        ),
        (
            "ratio: persist p99 (driver on shard) / baseline (b) growing p99 (not interleaved)".to_string(),
            "1 actor, driver on shard: persist p99".to_string(),
            format!("{b} pwrite+fdatasync growing p99"),
        ),
        (
            "ratio: persist p99 (driver on shard) / baseline (d) io_uring O_DSYNC p99 (not interleaved)".to_string(),
            "1 actor, driver on shard: persist p99".to_string(),
            format!("{b} io_uring O_DSYNC write prealloc p99"),
        ),
    ];
    for (name, num, den) in table {
        if let (Some(x), Some(y)) = (out.get(&num), out.get(&den)) {
            out.push(name, x / y, "x");
        }
    }
}

fn load_note() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let machine = Machine::describe();
    println!("{}", machine.line());
    println!("journalbench: {args:?}");
    std::fs::create_dir_all(&args.dir)?;
    let want = |group: &str| {
        args.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|o| group.contains(o)))
    };
    let mut runs: Vec<Vec<Figure>> = Vec::new();
    for run in 0..args.runs {
        let load_before = load_note();
        let mut out = Out(Vec::new());
        if want("baseline") {
            baselines(&args, &mut out)?;
        }
        if want("single") {
            single(&args, &mut out)?;
        }
        if want("concurrent") {
            concurrent(&args, &mut out)?;
        }
        if want("activation") {
            activation(&args, &mut out)?;
        }
        ratios(&args, &mut out);
        println!(
            "run {run} (load average before: {load_before}, after: {}):",
            load_note()
        );
        for f in &out.0 {
            println!("  {:<96} {:>12.2} {}", f.name, f.value, f.unit);
        }
        runs.push(out.0);
    }
    println!(
        "\nmedian [min .. max] over {} runs (event data {EVENT_BYTES} B), then every run's value:",
        runs.len()
    );
    let mut json = Vec::new();
    for f in &runs[0] {
        let vals: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.iter().find(|g| g.name == f.name).map(|g| g.value))
            .collect();
        let s = spread(&vals);
        println!(
            "  {:<96} {:>12.2} [{:.2} .. {:.2}] {} | {}",
            f.name,
            s.median,
            s.min,
            s.max,
            f.unit,
            format_runs(&vals, 2)
        );
        json.push(serde_json::json!({
            "name": f.name, "unit": f.unit, "median": s.median, "min": s.min, "max": s.max,
            "runs": vals,
        }));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"machine": machine, "figures": serde_json::Value::Array(json)})
        );
    }
    Ok(())
}
