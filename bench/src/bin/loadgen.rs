//! `loadgen`: end-to-end load against an in-process Quark node, or over TCP against a cluster.
//!
//! In-process (the default): starts a node (from `--config quark.toml`, or the default
//! configuration) with the built-in `echo` actor, and drives it from inside its own shards:
//! each shard runs `--inflight` concurrent request loops that pick a random actor among
//! `--actors` (so most requests cross shards, as in production) and send it a `Ping` of
//! `--msg-bytes`.
//!
//! Over TCP (`--target host:port[,host:port...]`, every node of the cluster, e.g. nodes started
//! with `quark serve`): the same request loops run inside the shards of a `quark::Client`
//! (`--client-shards`, default 1), which sends each request straight to the node that owns the
//! actor. `--cluster-id` and `--secret-env` must match the nodes' `[cluster]` settings;
//! against nodes with `[cluster.tls]`, give the client's certificate files with `--tls-ca`,
//! `--tls-cert` and `--tls-key` (and `--tls-server-name` when the certificates name hosts).
//! `--serve ADDR` runs the other side instead: one node with the built-in actors (as `quark
//! serve` registers them) until stdin closes, the target `scripts/net_targets.sh` uses.
//!
//! - Closed loop (`--rate 0`, the default): each loop sends its next request when the previous
//!   one completed. Latency is measured from the actual send.
//! - Open loop (`--rate R`): each shard schedules R/shards requests per second; request i of a
//!   shard is due at `t0 + i / rate_per_shard` and its latency is measured from that *scheduled*
//!   time (coordinated-omission correction). At most `--inflight` requests per shard are in
//!   flight: when every slot is busy the schedule slips, and the slip shows in the latency.
//!   The pacer is one task per shard. `--pacer spin` (default) yields in a loop for the last 2 ms
//!   before a request is due (the executor's timer has millisecond resolution): sends are on
//!   time, but a task that keeps yielding changes how the shard's executor waits, and raised the
//!   service time of cross-shard asks in our runs. `--pacer timer` only sleeps on the executor's
//!   timer: the shard is left alone, but sends are up to ~1 ms late, and that lateness counts in
//!   the latency. `send_slip` in the output is the pacer's own lateness.
//! - `--op tell`: latency is the time until the `tell` future resolved (the message was admitted:
//!   mailbox room or cross-shard credit), not until it was handled.
//!
//! Which requests count (`quark_bench::window`): those whose latency starts in the measured
//! window, i.e. scheduled (open loop) or sent (closed loop) after `--warmup-s` and before the
//! end, however late they complete. After the end the run waits up to `--grace-s` for them;
//! a counted request still incomplete then is *late*: it enters the percentiles at the
//! latency it had reached (a lower bound) and is counted in `late`. Requests of the warm-up
//! never count, but the longest latency of the whole run is reported apart
//! (`max_whole_run_ns`, with the time its request started), so a request starved since the
//! warm-up is not hidden. Throughput is the counted successful requests over the time from
//! the window's start to the last counted completion (at least the window).
//!
//! Prints the machine line (cores, kernel, CPU, commit) on stderr, then a table (or one JSON
//! object with `--json`, which includes it); progress goes to stderr once per second.
//!
//! `cargo run --release -p quark-bench --bin loadgen -- --duration-s 5`

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, ValueEnum};
use quark::builtin::{Echo, Ping};
use quark::{ActorRef, ActorType, Client, Node, ShardStatsSnapshot};
use quark_bench::driver::{self, Pacer};
use quark_bench::machine::Machine;
use quark_bench::window::{Recorder, Window};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    /// Request and wait for the reply.
    Ask,
    /// Fire and forget (latency = until the send was admitted).
    Tell,
}

#[derive(Parser, Debug)]
#[command(about = "End-to-end load against an in-process Quark node")]
struct Args {
    /// Node configuration file (TOML); the default configuration when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Number of distinct actors (keys 0..N) the requests are spread over.
    #[arg(long, default_value_t = 1000)]
    actors: u64,
    /// Payload bytes of each `Ping`.
    #[arg(long, default_value_t = 64)]
    msg_bytes: usize,
    /// Request kind.
    #[arg(long, value_enum, default_value_t = Op::Ask)]
    op: Op,
    /// Concurrent request loops (requests in flight at most) per shard.
    #[arg(long, default_value_t = 100)]
    inflight: usize,
    /// Measured duration, in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Warm-up, in seconds: requests scheduled (open loop) or sent (closed loop) before its
    /// end are not counted.
    #[arg(long, default_value_t = 2.0)]
    warmup_s: f64,
    /// After the end, how long to wait for counted requests still in flight; those still
    /// incomplete then are counted as late, at the latency they had reached.
    #[arg(long, default_value_t = 1.0)]
    grace_s: f64,
    /// Total requests per second (open loop); 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Open loop: how to wait for each request's scheduled time.
    #[arg(long, value_enum, default_value_t = Pacer::Spin)]
    pacer: Pacer,
    /// Drive a cluster over TCP through a `Client`: every node's address, comma-separated.
    #[arg(long, value_delimiter = ',')]
    target: Vec<std::net::SocketAddr>,
    /// With `--target`: the cluster id of the nodes.
    #[arg(long, default_value = "local")]
    cluster_id: String,
    /// With `--target`: the environment variable holding the cluster secret (none: the nodes
    /// have no secret).
    #[arg(long)]
    secret_env: Option<String>,
    /// With `--target`: connect over TLS 1.3 with mutual certificates (the nodes' `[cluster.tls]`):
    /// the CA file. Needs `--tls-cert` and `--tls-key` too.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<std::path::PathBuf>,
    /// With `--tls-ca`: this client's certificate chain (PEM, signed by the CA).
    #[arg(long, requires = "tls_ca")]
    tls_cert: Option<std::path::PathBuf>,
    /// With `--tls-ca`: the private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_ca")]
    tls_key: Option<std::path::PathBuf>,
    /// With `--tls-ca`: the name the nodes' certificates carry (default: the dialed IP).
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// With `--target`: the client's shards (threads driving the load).
    #[arg(long, default_value_t = 1)]
    client_shards: usize,
    /// With `--target`: how long an idle client shard spins (and busy-polls its sockets)
    /// before it parks, µs. 0 by default: with the spin pacer the client shard is never idle,
    /// and busy-polling its sockets as well made it fall behind its schedule in our runs.
    #[arg(long, default_value_t = 0)]
    client_idle_spin_us: u64,
    /// Print one JSON object at the end instead of the table.
    #[arg(long)]
    json: bool,
    /// Seed of the actor choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Serve instead of load: run one node (the built-in actors, as `quark serve` registers
    /// them; node 1 of cluster `--cluster-id`, listening on this address, with `--config`'s
    /// settings or one shard on `--serve-cpu` spinning 50 µs) until stdin closes. The target of
    /// `--target` in `scripts/net_targets.sh` (no `quark` release build needed).
    #[arg(long)]
    serve: Option<std::net::SocketAddr>,
    /// With `--serve` and no `--config`: the core of the node's one shard.
    #[arg(long, default_value_t = 1)]
    serve_cpu: usize,
}

/// `--serve`: one node until stdin closes (see `Args::serve`).
fn serve(args: &Args, addr: std::net::SocketAddr) -> Result<()> {
    let config = match &args.config {
        Some(path) => quark::NodeConfig::from_file(path)?,
        None => quark::NodeConfig::from_toml(
            &format!(
                "[node]\nshards = [{}]\nidle_spin_us = 50\n\n[cluster]\ncluster_id = {:?}\n\
                 node_id = 1\n\n[[cluster.nodes]]\nid = 1\naddr = \"{addr}\"\n",
                args.serve_cpu, args.cluster_id
            ),
            "loadgen-serve.toml",
        )?,
    };
    let node = quark::builtin::register_builtin(Node::builder().config(config))
        .start()
        .context("starting the node")?;
    println!("listening on {addr}");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    node.shutdown();
    Ok(())
}

/// A small, fast PRNG (SplitMix64): enough to spread requests over actors.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// One shard's completion counter, written by that shard only, read by the progress printer.
/// Padded to its own cache lines so shards do not share a line.
#[repr(align(128))]
#[derive(Default)]
struct ShardProgress {
    completed: AtomicU64,
}

/// Runs on a shard: the shard's request loops, until the run is over.
async fn drive_shard(
    plan: driver::Plan,
    refs: Vec<ActorRef<Echo>>,
    op: Op,
    msg_bytes: usize,
    seed: u64,
    progress: Arc<Vec<ShardProgress>>,
    shard: usize,
) -> driver::Outcome {
    let seed = seed ^ (shard as u64).wrapping_mul(0xA076_1D64_78BD_642F);
    let payload = vec![0xA5; msg_bytes];
    let (refs, payload) = (&refs, &payload);
    let n = refs.len();
    // Single writer per counter: a plain store, no read-modify-write.
    let on_complete = |done: u64| progress[shard].completed.store(done, Ordering::Relaxed);
    driver::drive(
        plan,
        move |slot: usize, k: u64, _from: Instant| {
            // Stateless choice: the same (seed, shard, loop, k) picks the same actor.
            let mut rng = SplitMix(
                seed ^ (slot as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB)
                    ^ k.wrapping_mul(0x8EBC_6AF0_9C88_C6E3),
            );
            let r = &refs[rng.below(n)];
            let msg = Ping(payload.clone());
            async move {
                match op {
                    Op::Ask => r.ask(msg).await.map(drop),
                    Op::Tell => r.tell(msg).await,
                }
            }
        },
        &on_complete,
    )
    .await
}

/// What drives the load: an in-process node, or a client of a remote cluster.
enum Runner {
    Node(Box<Node>),
    Client(Client),
}

impl Runner {
    fn shard_count(&self) -> u16 {
        match self {
            Runner::Node(n) => n.shard_count(),
            Runner::Client(c) => c.shard_count(),
        }
    }
    fn actor_ref(&self, key: u64) -> ActorRef<Echo> {
        match self {
            Runner::Node(n) => n.actor_ref(key),
            Runner::Client(c) => c.actor_ref(key),
        }
    }
    fn spawn_on<F, Fut>(&self, shard: u16, make: F) -> quark::SpawnHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        match self {
            Runner::Node(n) => n.spawn_on(shard, make),
            Runner::Client(c) => c.spawn_on(shard, make),
        }
    }
    fn stats(&self) -> Vec<ShardStatsSnapshot> {
        match self {
            Runner::Node(n) => n.stats().expect("every shard reports its counters"),
            Runner::Client(c) => c.stats().expect("every shard reports its counters"),
        }
    }
    fn shutdown(self) -> quark::ShutdownReport {
        match self {
            Runner::Node(n) => (*n).shutdown(),
            Runner::Client(c) => c.shutdown(),
        }
    }
}

fn start_runner(args: &Args) -> Result<(Runner, Vec<usize>, Duration)> {
    if args.target.is_empty() {
        let mut builder = Node::builder();
        if let Some(path) = &args.config {
            builder = builder.config_file(path)?;
        }
        let node = builder
            .register(ActorType::new(|_| Echo::default()))
            .start()
            .context("starting the node")?;
        let cores = node.cores().to_vec();
        let spin = node.config().engine.idle_spin;
        return Ok((Runner::Node(Box::new(node)), cores, spin));
    }
    let secret = match &args.secret_env {
        None => None,
        Some(var) => Some(
            quark::ClusterSecret::from_env(var)?
                .with_context(|| format!("environment variable {var} is not set"))?,
        ),
    };
    let mut b = Client::builder()
        .cluster_id(args.cluster_id.clone())
        .secret(secret)
        .message::<Ping>()
        .engine(|e| {
            e.shards = quark::ShardSpec::Count(args.client_shards.max(1));
            e.idle_spin = Duration::from_micros(args.client_idle_spin_us);
        });
    if let (Some(ca), Some(cert), Some(key)) = (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        let mut files = quark::tls::TlsFiles::new(ca, cert, key);
        files.server_name = args.tls_server_name.clone();
        b = b.tls_files(files);
    }
    for t in &args.target {
        b = b.target(*t);
    }
    let client = b.connect().context("connecting to the cluster")?;
    Ok((Runner::Client(client), Vec::new(), Duration::ZERO))
}

#[derive(serde::Serialize)]
struct Report {
    /// Where and from what commit the figures were measured.
    machine: Machine,
    shards: u16,
    cores: Vec<usize>,
    idle_spin_us: u64,
    idle_spin_effective_us: u64,
    op: Op,
    mode: &'static str,
    /// `in-process`, or the `--target` addresses.
    target: String,
    latency_measured: &'static str,
    inflight_per_shard: usize,
    msg_bytes: usize,
    actors: u64,
    rate: f64,
    /// Open loop only: how sends were paced.
    pacer: Option<Pacer>,
    seed: u64,
    allocator: &'static str,
    warmup_s: f64,
    duration_s: f64,
    grace_s: f64,
    /// Counted requests that completed (successfully).
    ops: u64,
    /// Counted requests still incomplete `grace_s` after the end (in the percentiles at the
    /// latency they had reached then).
    late: u64,
    /// `ops` over the time from the window's start to the last counted completion.
    throughput_rps: f64,
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
    mean_ns: f64,
    /// Open loop: p50 of (actual send - scheduled send), part of the latency above.
    send_slip_p50_ns: u64,
    /// Open loop: p99 of (actual send - scheduled send).
    send_slip_p99_ns: u64,
    /// The longest latency of any request of the run, counted or not (warm-up included).
    max_whole_run_ns: u64,
    /// When that request started, seconds after the run's start (the warm-up is
    /// `0..warmup_s`).
    max_whole_run_started_s: f64,
    errors: u64,
    errors_total: u64,
    first_error: Option<String>,
    /// The engine's counters summed over the shards, for the whole run (warm-up included).
    engine: EngineCounters,
}

/// Engine counters summed over the shards (see `quark::ShardStatsSnapshot`).
#[derive(Default, serde::Serialize)]
struct EngineCounters {
    activations: u64,
    parks: u64,
    mailbox_waits: u64,
    credit_waits: u64,
    ring_msgs_in: u64,
    replies_dropped: u64,
}

fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns} ns"),
        10_000..=999_999 => format!("{:.1} µs", ns as f64 / 1e3),
        _ => format!("{:.2} ms", ns as f64 / 1e6),
    }
}

fn print_table(r: &Report) {
    println!("{}", r.machine.line());
    println!(
        "loadgen: {} shards (cores {:?}), idle_spin {} µs (effective {} µs), op {}, {}, \
         inflight {}/shard, msg {} B, actors {}, rate {}, allocator {}",
        r.shards,
        r.cores,
        r.idle_spin_us,
        r.idle_spin_effective_us,
        match r.op {
            Op::Ask => "ask",
            Op::Tell => "tell",
        },
        r.mode,
        r.inflight_per_shard,
        r.msg_bytes,
        r.actors,
        if let Some(p) = r.pacer {
            format!("{} req/s ({p:?} pacer)", r.rate)
        } else {
            "0 (closed loop)".to_owned()
        },
        r.allocator,
    );
    println!("target: {}", r.target);
    println!("latency: {}", r.latency_measured);
    let rows: [(&str, String); 12] = [
        ("ops", r.ops.to_string()),
        (
            "late",
            format!(
                "{} (incomplete {:.1} s after the end; in the percentiles at a lower bound)",
                r.late, r.grace_s
            ),
        ),
        (
            "duration",
            format!("{:.3} s (after {:.3} s warm-up)", r.duration_s, r.warmup_s),
        ),
        ("throughput", format!("{:.0} req/s", r.throughput_rps)),
        ("p50", fmt_ns(r.p50_ns)),
        ("p90", fmt_ns(r.p90_ns)),
        ("p99", fmt_ns(r.p99_ns)),
        ("p99.9", fmt_ns(r.p999_ns)),
        ("max", fmt_ns(r.max_ns)),
        (
            "max (run)",
            format!(
                "{} (any request of the run, warm-up included; started at {:.3} s)",
                fmt_ns(r.max_whole_run_ns),
                r.max_whole_run_started_s
            ),
        ),
        ("mean", fmt_ns(r.mean_ns as u64)),
        (
            "errors",
            format!("{} ({} in the whole run)", r.errors, r.errors_total),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<11} {v}");
    }
    if r.rate > 0.0 {
        println!(
            "  send slip   p50 {}, p99 {} (actual send - scheduled send; included above)",
            fmt_ns(r.send_slip_p50_ns),
            fmt_ns(r.send_slip_p99_ns)
        );
    }
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
    let e = &r.engine;
    println!(
        "engine (whole run, all shards): {} activations, {} parks, {} mailbox waits, \
         {} credit waits, {} ring messages in, {} replies dropped",
        e.activations, e.parks, e.mailbox_waits, e.credit_waits, e.ring_msgs_in, e.replies_dropped
    );
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("loadgen: no request succeeded in the measured window");
            ExitCode::FAILURE
        }
        Err(e) => {
            // The cause chain, without the causes an outer message already quotes.
            let mut text = String::new();
            for cause in e.chain().map(ToString::to_string) {
                if !text.contains(&cause) {
                    if !text.is_empty() {
                        text.push_str(": ");
                    }
                    text.push_str(&cause);
                }
            }
            eprintln!("loadgen: {text}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the load and prints the report; `Ok(false)` if no request succeeded.
fn run(args: Args) -> Result<bool> {
    if args.actors == 0 {
        bail!("--actors must be at least 1");
    }
    if args.inflight == 0 {
        bail!("--inflight must be at least 1");
    }
    if !(args.duration_s > 0.0 && args.duration_s.is_finite()) {
        bail!("--duration-s must be a positive number of seconds");
    }
    if !(args.warmup_s >= 0.0 && args.warmup_s.is_finite()) {
        bail!("--warmup-s must be zero or a positive number of seconds");
    }
    if !(args.grace_s >= 0.0 && args.grace_s.is_finite()) {
        bail!("--grace-s must be zero or a positive number of seconds");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be zero (closed loop) or a positive number of requests per second");
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();

    if let Some(addr) = args.serve {
        serve(&args, addr)?;
        return Ok(true);
    }
    let machine = Machine::describe();
    eprintln!("{}", machine.line());
    let (node, cores, idle_spin) = start_runner(&args)?;
    let shards = node.shard_count();
    let mut distinct = cores.clone();
    distinct.sort_unstable();
    distinct.dedup();
    // The engine turns spinning off when shards share a core.
    let idle_spin_effective = if distinct.len() < cores.len() {
        Duration::ZERO
    } else {
        idle_spin
    };

    let refs: Vec<ActorRef<Echo>> = (0..args.actors).map(|k| node.actor_ref(k)).collect();
    if !args.target.is_empty() {
        // The client's links come up in the background: wait (up to 10 s) until one ask per
        // node succeeds, so that the run does not start with connection set-up.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = std::collections::BTreeSet::new();
        for r in &refs {
            if !seen.insert(r.remote_node()) {
                continue;
            }
            while let Err(e) = quark::block_on(r.ask(Ping(Vec::new()))) {
                if Instant::now() > deadline {
                    bail!("node {:?} does not answer: {e}", r.remote_node());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let progress: Arc<Vec<ShardProgress>> =
        Arc::new((0..shards).map(|_| ShardProgress::default()).collect());
    let interval_ns = (args.rate > 0.0).then(|| 1e9 * f64::from(shards) / args.rate);
    let warmup = Duration::from_secs_f64(args.warmup_s);
    let duration = Duration::from_secs_f64(args.duration_s);
    // A common start a little ahead, so every shard's schedule begins at the same instant.
    let start = Instant::now() + Duration::from_millis(20);
    let warm_end = start + warmup;
    let end = warm_end + duration;
    let window = Window {
        warm_end,
        end,
        grace: Duration::from_secs_f64(args.grace_s),
    };
    eprintln!(
        "loadgen: {shards} shards, op {:?}, inflight {}/shard, {} actors, {} B, {}; \
         warm-up {:.1} s, measuring {:.1} s",
        args.op,
        args.inflight,
        args.actors,
        args.msg_bytes,
        if args.rate > 0.0 {
            format!("open loop at {} req/s", args.rate)
        } else {
            "closed loop".to_owned()
        },
        args.warmup_s,
        args.duration_s,
    );

    let handles: Vec<_> = (0..shards)
        .map(|shard| {
            let plan = driver::Plan {
                start,
                window,
                interval_ns,
                pacer: args.pacer,
                loops: args.inflight,
            };
            let (refs, progress) = (refs.clone(), progress.clone());
            let (op, msg_bytes, seed) = (args.op, args.msg_bytes, args.seed);
            node.spawn_on(shard, move || {
                drive_shard(
                    plan,
                    refs,
                    op,
                    msg_bytes,
                    seed,
                    progress,
                    usize::from(shard),
                )
            })
        })
        .collect();
    drop(refs);

    // Progress, once per second, until the end of the run.
    let total = || -> u64 {
        progress
            .iter()
            .map(|p| p.completed.load(Ordering::Relaxed))
            .sum()
    };
    let mut last = (start, 0u64);
    let mut tick = start + Duration::from_secs(1);
    while tick <= end {
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        let done = total();
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        let phase = if tick <= warm_end {
            "warm-up"
        } else {
            "measure"
        };
        eprintln!(
            "[{:>5.1} s {phase}] completed {done}, {rate:.0} req/s",
            now.duration_since(start).as_secs_f64()
        );
        last = (now, done);
        tick += Duration::from_secs(1);
    }

    let mut rec = Recorder::new(window);
    let mut max_any: Option<(u64, Instant)> = None;
    let mut errors_total = 0;
    let mut first_error = None;
    for (shard, h) in handles.into_iter().enumerate() {
        let r = h
            .join()
            .with_context(|| format!("shard {shard} stopped before its driver finished"))?;
        rec.merge(&r.rec);
        if let Some(m) = r.max_any {
            if max_any.is_none_or(|a| m.0 > a.0) {
                max_any = Some(m);
            }
        }
        errors_total += r.errors_total;
        first_error = first_error.or(r.first_error);
    }
    let mut engine = EngineCounters::default();
    for st in node.stats() {
        engine.activations += st.activations;
        engine.parks += st.parks;
        engine.mailbox_waits += st.mailbox_waits;
        engine.credit_waits += st.credit_waits;
        engine.ring_msgs_in += st.ring_msgs_in;
        engine.replies_dropped += st.replies_dropped;
    }
    let report = node.shutdown();
    if report != quark::ShutdownReport::default() {
        eprintln!("loadgen: shutdown did not complete cleanly: {report:?}");
    }

    let (hist, slip) = (&rec.hist, &rec.slip);
    let ops = hist.len() - rec.late;
    let r = Report {
        machine,
        shards,
        cores,
        idle_spin_us: idle_spin.as_micros() as u64,
        idle_spin_effective_us: idle_spin_effective.as_micros() as u64,
        op: args.op,
        mode: if args.rate > 0.0 {
            "open loop"
        } else {
            "closed loop"
        },
        target: if args.target.is_empty() {
            "in-process".to_owned()
        } else {
            format!(
                "tcp{} {:?} via Client",
                if args.tls_ca.is_some() { "+tls" } else { "" },
                args.target
            )
        },
        latency_measured: match (args.op, args.rate > 0.0) {
            (Op::Ask, false) => "send to reply",
            (Op::Ask, true) => "scheduled send time to reply (coordinated-omission corrected)",
            (Op::Tell, false) => "send until the tell future resolved (admitted, not handled)",
            (Op::Tell, true) => {
                "scheduled send time until the tell future resolved (admitted, not handled)"
            }
        },
        inflight_per_shard: args.inflight,
        msg_bytes: args.msg_bytes,
        actors: args.actors,
        rate: args.rate,
        pacer: (args.rate > 0.0).then_some(args.pacer),
        seed: args.seed,
        allocator: "mimalloc",
        warmup_s: args.warmup_s,
        duration_s: args.duration_s,
        grace_s: args.grace_s,
        ops,
        late: rec.late,
        throughput_rps: rec.throughput_rps(),
        p50_ns: hist.value_at_quantile(0.5),
        p90_ns: hist.value_at_quantile(0.9),
        p99_ns: hist.value_at_quantile(0.99),
        p999_ns: hist.value_at_quantile(0.999),
        max_ns: hist.max(),
        mean_ns: hist.mean(),
        send_slip_p50_ns: slip.value_at_quantile(0.5),
        send_slip_p99_ns: slip.value_at_quantile(0.99),
        max_whole_run_ns: max_any.map_or(0, |m| m.0),
        max_whole_run_started_s: max_any
            .map_or(0.0, |m| m.1.saturating_duration_since(start).as_secs_f64()),
        errors: rec.errors,
        errors_total,
        first_error,
        engine,
    };
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_table(&r);
    }
    Ok(r.ops > 0)
}
