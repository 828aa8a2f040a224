//! Durable log benchmark (issue 3) with its same-run baseline.
//!
//! Each run measures, on the same disk and directory:
//! 1. Baseline: a plain blocking `pwrite` + `fdatasync` loop (128 B, 4 KiB, 1 MiB writes) into
//!    a preallocated (zero-filled) file and into a growing file.
//! 2. `quark_persist::Log` on the io_uring backend (`quark_shard::rt::log_io::UringIo`) in a
//!    monoio runtime, `FsyncPolicy::Always`:
//!    - one appender, one 128-byte-payload record per batch: latency p50/p99;
//!    - N concurrent appender tasks (default 64), 128-byte records: durable records/s;
//!    - one appender, 1 MiB batches (8 records of 128 KiB): MB/s;
//! 3. Recovery: open of a ~1 GiB log (1 KiB records) through io_uring: seconds and MB/s.
//!
//! Prints the machine line (cores, kernel, CPU, commit), every run, then median [min .. max]
//! per measure with every run's value (ratios are taken per run, then summarised: every ratio
//! docs/BENCHMARKS.md cites is one of the `ratio` rows), then one JSON line.
//! `cargo run --release -p quark-bench --bin logbench -- --runs 3`

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use quark_bench::files::{create_empty, hist, pwrite_loop, zero_filled};
use quark_bench::machine::Machine;
use quark_bench::summary::{format_runs, spread};
use quark_persist::{Batch, FsyncPolicy, Log, LogConfig, Preallocate};
use quark_shard::rt::log_io::UringIo;

#[derive(Parser, Debug)]
#[command(about = "Durable log benchmark with a same-run pwrite+fdatasync baseline")]
struct Args {
    /// Scratch directory (must be on the disk under test, not tmpfs).
    #[arg(long, default_value = "target/logbench")]
    dir: PathBuf,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Synced writes per latency measurement (baseline 128 B / 4 KiB and single appender).
    #[arg(long, default_value_t = 3000)]
    ops: u64,
    /// Concurrent appender tasks.
    #[arg(long, default_value_t = 64)]
    appenders: u64,
    /// Records per appender task in the concurrent measurement.
    #[arg(long, default_value_t = 3000)]
    per_appender: u64,
    /// MiB written by the bandwidth measurements.
    #[arg(long, default_value_t = 256)]
    bandwidth_mib: u64,
    /// MiB of log for the recovery measurement (0 skips it).
    #[arg(long, default_value_t = 1024)]
    recovery_mib: u64,
    /// Write-through (`O_DSYNC`) active segments for the concurrent and bandwidth runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    write_through: bool,
    /// Segment size of the benchmarked log, MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
}

/// One named figure of one run.
#[derive(Clone, Debug)]
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn growing(path: &Path) -> Result<File> {
    let f = create_empty(path)?;
    f.sync_all()?;
    Ok(f)
}

fn baseline(args: &Args, out: &mut Vec<Figure>) -> Result<()> {
    let dir = args.dir.join("baseline");
    std::fs::create_dir_all(&dir)?;
    for (size, label, count) in [
        (128usize, "128B", args.ops),
        (4096, "4KiB", args.ops),
        (1 << 20, "1MiB", args.bandwidth_mib),
    ] {
        let bytes = size as u64 * count;
        let fill_start = Instant::now();
        let pre = zero_filled(&dir.join("pre"), bytes.max(1 << 20))?;
        let fill = fill_start.elapsed();
        for (kind, f) in [("prealloc", pre), ("growing", growing(&dir.join("grow"))?)] {
            let (h, el) = pwrite_loop(&f, size, count)?;
            if size == 1 << 20 {
                out.push(Figure {
                    name: format!("baseline {label} {kind} bandwidth"),
                    value: bytes as f64 / 1e6 / el.as_secs_f64(),
                    unit: "MB/s",
                });
                if kind == "prealloc" {
                    out.push(Figure {
                        name: format!("baseline {label} prealloc bandwidth incl. zero-fill"),
                        value: bytes as f64 / 1e6 / (el + fill).as_secs_f64(),
                        unit: "MB/s",
                    });
                }
            } else {
                push_p50_p99(out, format!("baseline {label} {kind}"), &h);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Pushes the p50 and p99 (µs) of `h` as `<name> p50` and `<name> p99`.
fn push_p50_p99(out: &mut Vec<Figure>, name: String, h: &Histogram<u64>) {
    for (q, tag) in [(0.5, "p50"), (0.99, "p99")] {
        out.push(Figure {
            name: format!("{name} {tag}"),
            value: us(h, q),
            unit: "us",
        });
    }
}

fn log_config(args: &Args, dir: &Path, preallocate: Preallocate) -> LogConfig {
    let mut c = LogConfig::new(dir, 0);
    c.segment_bytes = args.segment_mib << 20;
    // Steady state: full-size segments from the start (the adaptive first sizes of a new log
    // would not become spares, which the recycled bandwidth warm-up relies on).
    c.segment_bytes_initial = c.segment_bytes;
    c.fsync = FsyncPolicy::Always;
    c.preallocate = preallocate;
    c.write_through = args.write_through;
    c.pending_bytes_max = 4 << 20;
    c
}

fn runtime() -> Result<monoio::Runtime<monoio::IoUringDriver>> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(256)
        .build()
        .context("io_uring runtime")
}

fn fresh(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// The executor's own cost: 128 B writes + `fdatasync` through monoio/io_uring on a
/// preallocated file, and the same with one `O_DSYNC` write instead of write + sync.
fn uring_raw(args: &Args, out: &mut Vec<Figure>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = args.dir.join("uring_raw");
    fresh(&dir)?;
    let ops = args.ops;
    for dsync in [false, true] {
        let path = dir.join(if dsync { "dsync" } else { "plain" });
        drop(zero_filled(&path, (ops * 128).max(1 << 20))?);
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if dsync {
            opts.custom_flags(libc::O_DSYNC);
        }
        let std_file = opts.open(&path)?;
        let h = runtime()?.block_on(async move {
            let file = monoio::fs::File::from_std(std_file)?;
            let mut h = hist();
            let mut buf = vec![0x77u8; 128];
            for i in 0..ops {
                let t = Instant::now();
                let (res, b) = file.write_all_at(buf, i * 128).await;
                buf = b;
                res?;
                if !dsync {
                    file.sync_data().await?;
                }
                h.record(t.elapsed().as_nanos() as u64)?;
            }
            anyhow::Ok(h)
        })?;
        let label = if dsync {
            "O_DSYNC write"
        } else {
            "write+fdatasync"
        };
        push_p50_p99(out, format!("uring raw 128B {label}"), &h);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn log_single(args: &Args, out: &mut Vec<Figure>, write_through: bool) -> Result<()> {
    let dir = args.dir.join("single");
    fresh(&dir)?;
    let mut cfg = log_config(args, &dir, Preallocate::ZeroFill);
    cfg.write_through = write_through;
    let mode = if write_through {
        "write-through"
    } else {
        "write+fdatasync"
    };
    let ops = args.ops;
    let h = runtime()?.block_on(async move {
        let (log, _) = Log::open(UringIo, cfg).await?;
        let payload = vec![0x5Au8; 128];
        let mut h = hist();
        for i in 0..ops + 200 {
            let mut b = Batch::new();
            b.event(b"actor-1", &payload);
            let t = Instant::now();
            log.append(&b).await?;
            if i >= 200 {
                h.record(t.elapsed().as_nanos() as u64)?;
            }
        }
        log.close().await?;
        anyhow::Ok(h)
    })?;
    push_p50_p99(out, format!("log 1 appender 128B Always ({mode})"), &h);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn log_concurrent(args: &Args, out: &mut Vec<Figure>) -> Result<()> {
    let dir = args.dir.join("concurrent");
    fresh(&dir)?;
    let cfg = log_config(args, &dir, Preallocate::ZeroFill);
    let (tasks, per) = (args.appenders, args.per_appender);
    let (rate, per_sync, p99) = runtime()?.block_on(async move {
        let (log, _) = Log::open(UringIo, cfg).await?;
        let log = Rc::new(log);
        let before = log.stats();
        let start = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let log = Rc::clone(&log);
            handles.push(monoio::spawn(async move {
                let payload = vec![t as u8; 128];
                let key = format!("actor-{t}");
                let mut h = hist();
                for _ in 0..per {
                    let mut b = Batch::new();
                    b.event(key.as_bytes(), &payload);
                    let s = Instant::now();
                    log.append(&b).await?;
                    h.record(s.elapsed().as_nanos() as u64)?;
                }
                anyhow::Ok(h)
            }));
        }
        let mut all = hist();
        for h in handles {
            all.add(h.await?)?;
        }
        let el = start.elapsed();
        let after = log.stats();
        let records = (tasks * per) as f64;
        let syncs = (after.sync_count - before.sync_count).max(1) as f64;
        log.close().await?;
        anyhow::Ok((records / el.as_secs_f64(), records / syncs, us(&all, 0.99)))
    })?;
    out.push(Figure {
        name: format!("log {tasks} appenders 128B Always throughput"),
        value: rate,
        unit: "records/s",
    });
    out.push(Figure {
        name: format!("log {tasks} appenders records per fdatasync"),
        value: per_sync,
        unit: "records",
    });
    out.push(Figure {
        name: format!("log {tasks} appenders append p99"),
        value: p99,
        unit: "us",
    });
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Large-batch bandwidth. `recycled`: first fill and compact enough segments that every
/// segment the measured writes need is a reused spare (the steady state of a log whose
/// compaction keeps up), so no segment is zero-filled during the measurement.
fn log_bandwidth(
    args: &Args,
    out: &mut Vec<Figure>,
    prealloc: Preallocate,
    recycled: bool,
    appenders: u64,
) -> Result<()> {
    let dir = args.dir.join("bandwidth");
    fresh(&dir)?;
    let mut cfg = log_config(args, &dir, prealloc);
    let batches = args.bandwidth_mib;
    let spares_needed = (args.bandwidth_mib / args.segment_mib + 2) as usize;
    if recycled {
        cfg.recycle_segments_max = spares_needed;
    }
    let mbs = runtime()?.block_on(async move {
        let (log, _) = Log::open(UringIo, cfg).await?;
        let payload = vec![0xC3u8; (128 << 10) - 64];
        if recycled {
            // Snapshots of one key: every sealed segment becomes garbage, then a spare.
            let mut s = Batch::new();
            for _ in 0..8 {
                s.snapshot(b"warm-up", &payload);
            }
            // Fill enough segments first (a roll would consume a spare), then compact once.
            while log.stats().segment_count <= spares_needed {
                log.append(&s).await?;
            }
            log.compact(quark_persist::CompactionPolicy::default())
                .await?;
            anyhow::ensure!(
                log.stats().spare_count == spares_needed,
                "warm-up left {} spares, wanted {spares_needed}",
                log.stats().spare_count
            );
        }
        let mut b = Batch::new();
        for i in 0..8 {
            b.event(format!("blob-{i}").as_bytes(), &payload);
        }
        let bytes = b.encoded_bytes() as f64 * batches as f64;
        let log = Rc::new(log);
        let b = Rc::new(b);
        let start = Instant::now();
        // `appenders` tasks share the batches: with more than one, encoding of the next
        // batches overlaps the write in flight and group commit merges them.
        let mut handles = Vec::new();
        for t in 0..appenders {
            let (log, b) = (Rc::clone(&log), Rc::clone(&b));
            let mine = batches / appenders + u64::from(t < batches % appenders);
            handles.push(monoio::spawn(async move {
                for _ in 0..mine {
                    log.append(&b).await?;
                }
                anyhow::Ok(())
            }));
        }
        for h in handles {
            h.await?;
        }
        let el = start.elapsed();
        if recycled {
            anyhow::ensure!(
                log.stats().segments_recycled as usize + 1 >= spares_needed - 1,
                "measured writes did not run on recycled segments"
            );
        }
        log.close().await?;
        anyhow::Ok(bytes / 1e6 / el.as_secs_f64())
    })?;
    let what = if recycled {
        format!("recycled segments, {appenders} appender(s)")
    } else {
        format!("new segments, {prealloc:?}, {appenders} appender(s)")
    };
    out.push(Figure {
        name: format!("log 1MiB batches Always bandwidth ({what})"),
        value: mbs,
        unit: "MB/s",
    });
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn drop_caches() -> bool {
    // Needs root; best effort (the figure says whether the cache was dropped).
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"3").is_ok()
}

fn recovery(args: &Args, out: &mut Vec<Figure>) -> Result<()> {
    if args.recovery_mib == 0 {
        return Ok(());
    }
    // The log is written once (first run) and recovered in every run: the runs measure
    // recovery, and rewriting 1 GiB per run only exhausts the virtual disk's burst budget.
    let dir = args.dir.join("recovery");
    let done = args.dir.join("recovery.complete");
    let mut cfg = log_config(args, &dir, Preallocate::Fallocate);
    cfg.fsync = FsyncPolicy::Never;
    let target = args.recovery_mib << 20;
    let mut rt = runtime()?;
    let cfg2 = cfg.clone();
    if !done.exists() {
        fresh(&dir)?;
    }
    let write = !done.exists();
    rt.block_on(async move {
        if !write {
            return anyhow::Ok(());
        }
        let (log, _) = Log::open(UringIo, cfg2).await?;
        let payload = vec![0x3Cu8; 1000];
        let mut written = 0u64;
        let mut n = 0u64;
        while written < target {
            let mut b = Batch::new();
            for _ in 0..256 {
                b.event(format!("actor-{}", n % 10_000).as_bytes(), &payload);
                n += 1;
            }
            written += b.encoded_bytes() as u64;
            log.append(&b).await?;
        }
        log.close().await?;
        anyhow::Ok(())
    })?;
    std::fs::write(&done, b"")?;
    for cold in [false, true] {
        let dropped = cold && drop_caches();
        if cold && !dropped {
            continue;
        }
        let cfg = cfg.clone();
        let (secs, bytes, records) = rt.block_on(async move {
            let start = Instant::now();
            let (log, report) = Log::open(UringIo, cfg).await?;
            let secs = start.elapsed().as_secs_f64();
            drop(log);
            anyhow::Ok((secs, report.bytes_read, report.records))
        })?;
        let label = if cold { "cold cache" } else { "warm cache" };
        out.push(Figure {
            name: format!(
                "recovery {} MiB ({records} records) {label} time",
                bytes >> 20
            ),
            value: secs,
            unit: "s",
        });
        out.push(Figure {
            name: format!("recovery {label} rate"),
            value: bytes as f64 / 1e6 / secs,
            unit: "MB/s",
        });
    }
    Ok(())
}

/// Same-run ratios (the comparable figures on a noisy machine): numerator / denominator,
/// both looked up by name prefix in this run's figures.
fn add_ratios(out: &mut Vec<Figure>) {
    const LOG_P50: &str = "log 1 appender 128B Always (write-through) p50";
    const LOG_P99: &str = "log 1 appender 128B Always (write-through) p99";
    const RECYCLED_1: &str = "log 1MiB batches Always bandwidth (recycled segments, 1 ";
    const RECYCLED_4: &str = "log 1MiB batches Always bandwidth (recycled segments, 4 ";
    const RATIOS: &[(&str, &str, &str)] = &[
        (
            "ratio log 1 appender p50 / baseline 128B prealloc p50",
            LOG_P50,
            "baseline 128B prealloc p50",
        ),
        (
            "ratio log 1 appender p50 / baseline 128B prealloc p99 [target < 1]",
            LOG_P50,
            "baseline 128B prealloc p99",
        ),
        (
            "ratio log 1 appender p50 / baseline 128B growing p50",
            LOG_P50,
            "baseline 128B growing p50",
        ),
        (
            "ratio log 1 appender p50 / uring raw O_DSYNC write p50",
            LOG_P50,
            "uring raw 128B O_DSYNC write p50",
        ),
        (
            "ratio log 1 appender p99 / uring raw O_DSYNC write p99",
            LOG_P99,
            "uring raw 128B O_DSYNC write p99",
        ),
        (
            "ratio bandwidth recycled, 1 appender / baseline 1MiB growing",
            RECYCLED_1,
            "baseline 1MiB growing bandwidth",
        ),
        (
            "ratio bandwidth recycled, 4 appenders / baseline 1MiB growing",
            RECYCLED_4,
            "baseline 1MiB growing bandwidth",
        ),
        (
            "ratio log 1 appender p99 / baseline 128B prealloc p99 [target <= 1.2]",
            LOG_P99,
            "baseline 128B prealloc p99",
        ),
        (
            "ratio log 1 appender p99 / baseline 128B growing p99",
            LOG_P99,
            "baseline 128B growing p99",
        ),
        (
            "ratio log 1 appender p99 / uring raw write+fdatasync p99",
            LOG_P99,
            "uring raw 128B write+fdatasync p99",
        ),
        (
            "ratio bandwidth recycled, 1 appender / baseline 1MiB prealloc [target >= 0.8]",
            RECYCLED_1,
            "baseline 1MiB prealloc bandwidth",
        ),
        (
            "ratio bandwidth recycled, 4 appenders / baseline 1MiB prealloc [target >= 0.8]",
            RECYCLED_4,
            "baseline 1MiB prealloc bandwidth",
        ),
        (
            "ratio bandwidth new ZeroFill / baseline 1MiB prealloc incl. zero-fill",
            "log 1MiB batches Always bandwidth (new segments, ZeroFill, 1 ",
            "baseline 1MiB prealloc bandwidth incl. zero-fill",
        ),
        (
            "ratio bandwidth new ZeroFill / baseline 1MiB growing",
            "log 1MiB batches Always bandwidth (new segments, ZeroFill, 1 ",
            "baseline 1MiB growing bandwidth",
        ),
    ];
    let find = |out: &[Figure], name: &str| {
        out.iter()
            .find(|f| f.name.starts_with(name))
            .map(|f| f.value)
    };
    for (name, num, den) in RATIOS {
        if let (Some(n), Some(d)) = (find(out, num), find(out, den)) {
            out.push(Figure {
                name: (*name).to_string(),
                value: n / d,
                unit: "x",
            });
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let machine = Machine::describe();
    println!("{}", machine.line());
    println!("logbench: {args:?}");
    std::fs::create_dir_all(&args.dir)?;
    let mut runs: Vec<Vec<Figure>> = Vec::new();
    for run in 0..args.runs {
        let mut out = Vec::new();
        baseline(&args, &mut out)?;
        uring_raw(&args, &mut out)?;
        log_single(&args, &mut out, true)?;
        log_single(&args, &mut out, false)?;
        log_concurrent(&args, &mut out)?;
        log_bandwidth(&args, &mut out, Preallocate::ZeroFill, false, 1)?;
        log_bandwidth(&args, &mut out, Preallocate::Fallocate, false, 1)?;
        log_bandwidth(&args, &mut out, Preallocate::ZeroFill, true, 1)?;
        log_bandwidth(&args, &mut out, Preallocate::ZeroFill, true, 4)?;
        recovery(&args, &mut out)?;
        add_ratios(&mut out);
        println!("run {run}:");
        for f in &out {
            println!("  {:<70} {:>12.2} {}", f.name, f.value, f.unit);
        }
        runs.push(out);
    }
    let _ = std::fs::remove_dir_all(args.dir.join("recovery"));
    let _ = std::fs::remove_file(args.dir.join("recovery.complete"));
    println!(
        "\nmedian [min .. max] over {} runs, then every run's value:",
        runs.len()
    );
    let mut json = Vec::new();
    for (i, f) in runs[0].iter().enumerate() {
        let vals: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.get(i).filter(|g| g.name == f.name).map(|g| g.value))
            .collect();
        let s = spread(&vals);
        println!(
            "  {:<70} {:>12.2} [{:.2} .. {:.2}] {} | {}",
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
    println!(
        "{}",
        serde_json::json!({"machine": machine, "figures": serde_json::Value::Array(json)})
    );
    Ok(())
}
