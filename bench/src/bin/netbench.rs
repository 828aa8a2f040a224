//! `netbench`: the across-nodes targets (issue 5) with their same-run baseline.
//!
//! Two processes, two nodes of one cluster with one shard each: this process is node 1 (its
//! shard pinned to `--client-cpu`), and it starts itself again as node 2 (`--mode server`,
//! shard pinned to `--server-cpu`). Node 2's process also runs a plain blocking TCP echo
//! thread on the same core: the baseline is a blocking ping-pong of 64-byte messages between
//! the same two processes and cores, measured in the same run, just before the Quark figures.
//!
//! Each run measures:
//! 1. baseline: blocking 64 B ping-pong round trips (p50, p99);
//! 2. sequential remote ask: one `ask(Ping(64 B))` at a time from node 1's shard to an `echo`
//!    actor owned by node 2 (p50, p99);
//! 3. pipelined remote asks: `--inflight` asks in flight from node 1's shard, asks/s.
//!
//! `cargo build --release -p quark-bench --bins && target/release/netbench --runs 5`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use quark::builtin::{Echo, Ping};
use quark::{ActorType, Node};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MSG_BYTES: usize = 64;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Both,
    Server,
}

#[derive(Parser, Debug)]
#[command(about = "Remote ask latency and throughput between two nodes, with a TCP baseline")]
struct Args {
    #[arg(long, value_enum, default_value = "both")]
    mode: Mode,
    /// Node 1's cluster address (this process).
    #[arg(long)]
    node1: Option<SocketAddr>,
    /// Node 2's cluster address (the server process).
    #[arg(long)]
    node2: Option<SocketAddr>,
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// Shard idle spin of both nodes, µs (0: park at once).
    #[arg(long, default_value_t = 0)]
    idle_spin_us: u64,
    /// Round trips per run for the baseline and the sequential asks (after 10% warm-up).
    #[arg(long, default_value_t = 50_000)]
    round_trips: u64,
    /// Asks in flight for the pipelined measure.
    #[arg(long, default_value_t = 1000)]
    inflight: usize,
    /// Seconds of pipelined asks per run (after a warm-up of a quarter of it, at most 0.5 s).
    #[arg(long, default_value_t = 2.0)]
    pipelined_s: f64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Run both nodes on the epoll driver instead of io_uring.
    #[arg(long)]
    legacy: bool,
    /// Print one JSON line with every run at the end.
    #[arg(long)]
    json: bool,
}

fn pin(cpu: usize) {
    // A benchmark still runs unpinned, with a warning (its figures are then suspect).
    if let Err(e) = quark_shard::pin_current_thread(cpu) {
        eprintln!("warning: {}", quark_shard::ErrorChain(&e));
    }
}

fn start_node(
    id: u64,
    node1: SocketAddr,
    node2: SocketAddr,
    cpu: usize,
    spin: u64,
    legacy: bool,
) -> Result<Node> {
    let text = format!(
        "[node]\nshards = [{cpu}]\nidle_spin_us = {spin}\nforce_legacy_driver = {legacy}\n\n[cluster]\ncluster_id = \"netbench\"\n\
         node_id = {id}\n\n[[cluster.nodes]]\nid = 1\naddr = \"{node1}\"\n\n\
         [[cluster.nodes]]\nid = 2\naddr = \"{node2}\"\n"
    );
    let config = quark::NodeConfig::from_toml(&text, "netbench.toml")?;
    let node = Node::builder()
        .config(config)
        .register(ActorType::new(|_| Echo::default()))
        .remote::<Echo, Ping>()
        .start()?;
    Ok(node)
}

/// Node 2: the Quark node and the blocking echo thread; prints the echo address and waits
/// for stdin to close.
fn server(args: &Args) -> Result<()> {
    let (Some(n1), Some(n2)) = (args.node1, args.node2) else {
        bail!("--mode server needs --node1 and --node2");
    };
    let node = start_node(2, n1, n2, args.server_cpu, args.idle_spin_us, args.legacy)?;
    let echo = TcpListener::bind("127.0.0.1:0")?;
    let echo_addr = echo.local_addr()?;
    let cpu = args.server_cpu;
    std::thread::spawn(move || {
        pin(cpu);
        for s in echo.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; MSG_BYTES];
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        }
    });
    println!("ready {echo_addr}");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    node.shutdown();
    Ok(())
}

fn spawn_server(args: &Args, n1: SocketAddr, n2: SocketAddr) -> Result<(Child, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--mode", "server"])
        .arg(format!("--node1={n1}"))
        .arg(format!("--node2={n2}"))
        .arg(format!("--server-cpu={}", args.server_cpu))
        .arg(format!("--idle-spin-us={}", args.idle_spin_us))
        .args(args.legacy.then_some("--legacy"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("ready ")
        .with_context(|| format!("unexpected server output {line:?}"))?
        .parse()?;
    Ok((child, addr))
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant bounds")
}

fn baseline(addr: SocketAddr, n: u64) -> Result<Histogram<u64>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut h = hist();
    let mut buf = [7u8; MSG_BYTES];
    let warm = n / 10;
    for i in 0..warm + n {
        let t0 = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        if i >= warm {
            h.saturating_record(t0.elapsed().as_nanos() as u64);
        }
    }
    Ok(h)
}

#[derive(Debug, Clone, serde::Serialize)]
struct RunResult {
    baseline_p50_ns: u64,
    baseline_p99_ns: u64,
    ask_p50_ns: u64,
    ask_p99_ns: u64,
    ask_p999_ns: u64,
    pipelined_asks_per_s: f64,
    pipelined_errors: u64,
}

/// Sequential asks from node 1's shard: `n` measured after `n / 10` warm-up.
fn sequential(node: &Node, key: u64, n: u64) -> Result<Histogram<u64>> {
    let r = node.actor_ref::<Echo>(key);
    let (h, errors) = node
        .spawn_on(0, move || async move {
            let mut h = hist();
            let payload = vec![0xA5u8; MSG_BYTES];
            let warm = n / 10;
            let mut errors = 0u64;
            for i in 0..warm + n {
                let t0 = Instant::now();
                let ok = r.ask(Ping(payload.clone())).await.is_ok();
                if i >= warm {
                    if ok {
                        h.saturating_record(t0.elapsed().as_nanos() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (h, errors)
        })
        .join()
        .context("node 1's shard stopped")?;
    if errors > 0 {
        bail!("{errors} sequential asks failed");
    }
    Ok(h)
}

fn run_once(args: &Args, node: &Node, key: u64, echo: SocketAddr) -> Result<RunResult> {
    // Baseline and Quark alternate in 10 blocks, so that both see the same machine load.
    let blocks = 10;
    let per = (args.round_trips / blocks).max(1);
    let mut b = hist();
    let mut q = hist();
    for _ in 0..blocks {
        b.add(baseline(echo, per)?).expect("same bounds");
        q.add(sequential(node, key, per)?).expect("same bounds");
    }
    let seq = (q, 0u64);
    let r = node.actor_ref::<Echo>(key);
    let inflight = args.inflight;
    let dur = Duration::from_secs_f64(args.pipelined_s);
    let (count, errors) = node
        .spawn_on(0, move || async move {
            let r = Rc::new(r);
            let start = Instant::now();
            let warm_end = start + (dur / 4).min(Duration::from_millis(500));
            let end = warm_end + dur;
            let counted = Rc::new(std::cell::Cell::new((0u64, 0u64)));
            let loops: Vec<_> = (0..inflight)
                .map(|_| {
                    let (r, counted) = (r.clone(), counted.clone());
                    async move {
                        let payload = vec![0xA5u8; MSG_BYTES];
                        loop {
                            let res = r.ask(Ping(payload.clone())).await;
                            let now = Instant::now();
                            if now >= end {
                                break;
                            }
                            if now >= warm_end {
                                let (c, e) = counted.get();
                                counted.set(if res.is_ok() { (c + 1, e) } else { (c, e + 1) });
                            }
                        }
                    }
                })
                .collect();
            futures::future::join_all(loops).await;
            counted.get()
        })
        .join()
        .context("node 1's shard stopped")?;
    Ok(RunResult {
        baseline_p50_ns: b.value_at_quantile(0.5),
        baseline_p99_ns: b.value_at_quantile(0.99),
        ask_p50_ns: seq.0.value_at_quantile(0.5),
        ask_p99_ns: seq.0.value_at_quantile(0.99),
        ask_p999_ns: seq.0.value_at_quantile(0.999),
        pipelined_asks_per_s: count as f64 / args.pipelined_s,
        pipelined_errors: errors,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if args.mode == Mode::Server {
        return server(&args);
    }
    let (n1, n2) = {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let b = TcpListener::bind("127.0.0.1:0")?;
        (a.local_addr()?, b.local_addr()?)
    };
    let (mut child, echo) = spawn_server(&args, n1, n2)?;
    let node = start_node(1, n1, n2, args.client_cpu, args.idle_spin_us, args.legacy)?;
    let key = (0..100_000u64)
        .find(|k| node.actor_ref::<Echo>(*k).remote_node() == Some(2))
        .context("no key placed on node 2")?;
    // Wait for the link (the first ask queues until the handshake is done).
    let r = node.actor_ref::<Echo>(key);
    let deadline = Instant::now() + Duration::from_secs(10);
    while quark::block_on(r.ask(Ping(vec![0; MSG_BYTES]))).is_err() {
        if Instant::now() > deadline {
            bail!("node 2 did not answer within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "netbench: 2 nodes x 1 shard, cores {} (node 1) and {} (node 2), idle_spin {} µs, \
         msg {MSG_BYTES} B, {} round trips, {} in flight for {} s",
        args.client_cpu,
        args.server_cpu,
        args.idle_spin_us,
        args.round_trips,
        args.inflight,
        args.pipelined_s
    );
    let mut runs = Vec::new();
    for i in 0..args.runs {
        let r = run_once(&args, &node, key, echo)?;
        println!(
            "run {i}: baseline p50 {:.1} µs p99 {:.1} µs | remote ask p50 {:.1} µs \
             ({:.2}x baseline) p99 {:.1} µs p99.9 {:.1} µs | pipelined {:.0} asks/s ({} errors)",
            r.baseline_p50_ns as f64 / 1e3,
            r.baseline_p99_ns as f64 / 1e3,
            r.ask_p50_ns as f64 / 1e3,
            r.ask_p50_ns as f64 / r.baseline_p50_ns as f64,
            r.ask_p99_ns as f64 / 1e3,
            r.ask_p999_ns as f64 / 1e3,
            r.pipelined_asks_per_s,
            r.pipelined_errors
        );
        runs.push(r);
    }
    let s = |f: &dyn Fn(&RunResult) -> f64| {
        quark_bench::summary::spread(&runs.iter().map(f).collect::<Vec<_>>())
    };
    let base = s(&|r| r.baseline_p50_ns as f64);
    let ask = s(&|r| r.ask_p50_ns as f64);
    let ratio = s(&|r| r.ask_p50_ns as f64 / r.baseline_p50_ns as f64);
    let tput = s(&|r| r.pipelined_asks_per_s);
    println!(
        "median [min .. max] over {} runs: baseline p50 {:.1} µs [{:.1} .. {:.1}], remote ask \
         p50 {:.1} µs [{:.1} .. {:.1}], ratio {:.2} [{:.2} .. {:.2}], pipelined {:.0} asks/s \
         [{:.0} .. {:.0}]",
        runs.len(),
        base.median / 1e3,
        base.min / 1e3,
        base.max / 1e3,
        ask.median / 1e3,
        ask.min / 1e3,
        ask.max / 1e3,
        ratio.median,
        ratio.min,
        ratio.max,
        tput.median,
        tput.min,
        tput.max
    );
    if args.json {
        println!("{}", serde_json::to_string(&runs)?);
    }
    let stats = node.stats().expect("stats");
    if let Some(net) = &stats[0].net {
        println!(
            "node 1 transport: {} frames out in {} writes-worth of bytes {}, {} frames in",
            net.peers.frames_out, net.peers.bytes_out, net.peers.bytes_out, net.peers.frames_in
        );
    }
    node.shutdown();
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}
