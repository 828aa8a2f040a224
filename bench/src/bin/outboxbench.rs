//! Outbox benchmark (issue 15), `fsync = "always"`, with a same-run `fdatasync` baseline.
//!
//! 1. Baseline: `pwrite` + `fdatasync` of 256 bytes into a preallocated file in `--dir`: p50.
//! 2. Throughput: `--senders` sender actors and `--receivers` receiver actors on 2 shards; each
//!    sender, driven closed-loop by a task on its own shard, commits `--burst` durable messages
//!    per turn to receivers on the *other* shard; each receiver applies a message by saving
//!    its durable state (a counter) with the inbox receipt. A message counts when its
//!    acknowledgement reached the sender's dispatcher: sender commit + delivery + receiver
//!    commit with dedupe + ack. Messages/s over `--secs`.
//! 3. Latency: one sender, one receiver on the other shard, sequential: from the start of the
//!    sender's commit until the receiver's delivery batch (its state and the inbox receipt) is
//!    durable (`Durable::after_commit` in the receiver's handler, reported to the bench thread
//!    through a channel): p50, p99, and p50 in units of the baseline's `fdatasync` p50; and,
//!    for the whole round trip, until the sender's dispatcher counted the acknowledgement
//!    (`Outbox::wait_delivered`): p50.
//! 4. Inbox memory: bytes per remembered sender stream (a receiver remembers one entry per
//!    sender stream, not one per id: see docs/OUTBOX.md).
//!
//! 5. With `--cross-node`, instead of 2-4: two nodes in this process over loopback TCP (2 shards
//!    each), the senders on node 1 and the receivers on node 2; messages/s as in 2, and the
//!    wire requests node 2 received per message delivered.
//!
//! `cargo run --release -p quark-bench --bin outboxbench -- --secs 5`

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use quark::outbox::{
    Durable, DurableHandler, DurableMessage, DurableState, Outbox, OutboxConfig, Retry, Save,
};
use quark::{
    block_on, Actor, ActorId, ActorKey, ActorType, Context, Handler, Message, Node, NodeConfig,
};
use quark_bench::files::{pwrite_loop, zero_filled};
use serde::{Deserialize, Serialize};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Outbox benchmark with a same-run fdatasync baseline")]
struct Args {
    /// Scratch directory (on the disk under test, not tmpfs).
    #[arg(long, default_value = "target/outboxbench")]
    dir: PathBuf,
    /// `[log] direct_io` of the node: `auto` (default: aligned `O_DIRECT | O_DSYNC` appends),
    /// `on`, or `off` (buffered `O_DSYNC` appends, the behaviour before direct I/O).
    #[arg(long, default_value = "auto")]
    direct_io: String,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Sender actors.
    #[arg(long, default_value_t = 1000)]
    senders: u64,
    /// Receiver actors.
    #[arg(long, default_value_t = 1000)]
    receivers: u64,
    /// Messages a sender commits per turn.
    #[arg(long, default_value_t = 8)]
    burst: u32,
    /// Sequential messages of the latency run.
    #[arg(long, default_value_t = 2000)]
    latency_ops: u64,
    /// `OutboxConfig::batch_max`: messages to one receiver applied in one turn and one batch
    /// (1: one message per receiver turn, the delivery before batching).
    #[arg(long, default_value_t = OutboxConfig::default().batch_max)]
    batch_max: usize,
    /// `OutboxConfig::inflight_max`: messages in deliveries in flight per shard.
    #[arg(long, default_value_t = OutboxConfig::default().inflight_max)]
    inflight_max: usize,
    /// Run the cross-node throughput (two nodes over loopback) instead of runs 2-4.
    #[arg(long)]
    cross_node: bool,
}

struct Sender;
impl Actor for Sender {
    const TYPE_NAME: &'static str = "ob.sender";
}

#[derive(Serialize, Deserialize, Default)]
struct Receiver {
    applied: u64,
}
impl Actor for Receiver {
    const TYPE_NAME: &'static str = "ob.receiver";
}
impl DurableState for Receiver {
    fn initial(_key: &ActorKey) -> Self {
        Receiver::default()
    }
}

#[derive(Serialize, Deserialize)]
struct Ping {
    mark: bool,
}
impl DurableMessage for Ping {
    const NAME: &'static str = "ob.Ping";
}

/// Where the latency run's receiver reports the instant its effect became durable.
static EFFECT: Mutex<Option<SyncSender<Instant>>> = Mutex::new(None);

impl DurableHandler<Ping> for Receiver {
    async fn handle_durable(&mut self, m: Ping, ctx: &Context<Self>) -> Result<(), Retry> {
        self.applied += 1;
        ctx.save(self).await.map_err(|e| Retry {
            reason: e.to_string(),
        })?;
        if m.mark {
            // The delivery's batch (this state, the receipt) is durable.
            ctx.after_commit(|| {
                if let Some(tx) = EFFECT.lock().expect("not poisoned").as_ref() {
                    let _ = tx.send(Instant::now());
                }
            });
        }
        Ok(())
    }
}

/// Commits `count` pings to `to[offset..]` (cyclic); replies with the instant the commit
/// started.
struct Burst {
    to: std::sync::Arc<Vec<u64>>,
    offset: usize,
    count: u32,
    mark: bool,
}
impl Message for Burst {
    /// The instants the commit started and ended (durable).
    type Reply = Result<(Instant, Instant), String>;
}
impl Handler<Burst> for Sender {
    async fn handle(
        &mut self,
        m: Burst,
        ctx: &Context<Self>,
    ) -> Result<(Instant, Instant), String> {
        for i in 0..m.count as usize {
            let to = m.to[(m.offset + i) % m.to.len()];
            ctx.send_durable::<Receiver, Ping>(to, Ping { mark: m.mark })
                .await
                .map_err(|e| e.to_string())?;
        }
        let t0 = Instant::now();
        ctx.commit().await.map_err(|e| e.to_string())?;
        Ok((t0, Instant::now()))
    }
}

fn start(dir: &std::path::Path, args: &Args) -> Result<Node> {
    start_with(dir, args, "")
}

/// A node whose config ends with `extra` (a `[cluster]` section, or nothing).
fn start_with(dir: &std::path::Path, args: &Args, extra: &str) -> Result<Node> {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 50\n[log]\ndata_dir = {:?}\nfsync = \"always\"\nsegment_bytes = 268435456\ndirect_io = {:?}\n{extra}",
        dir.to_str().context("utf-8 dir")?,
        args.direct_io
    );
    Ok(Node::builder()
        .config(NodeConfig::from_toml(&text, "outboxbench.toml")?)
        .register(ActorType::new(|_| Sender))
        .register(quark::outbox::durable_state::<Receiver>())
        .outbox(OutboxConfig {
            batch_max: args.batch_max,
            inflight_max: args.inflight_max,
            ..OutboxConfig::default()
        })
        .durable::<Receiver, Ping>()
        .start()?)
}

fn delivered(node: &Node) -> Result<u64> {
    let s = block_on(Outbox::new(node.handle()).stats())?;
    Ok(s.iter().map(|x| x.delivered).sum())
}

/// Every shard log's `fdatasync` and write counts, summed.
fn log_counts(node: &Node) -> Result<(u64, u64)> {
    let mut syncs = 0;
    let mut flushes = 0;
    for shard in 0..2u16 {
        let (s, f) = node
            .handle()
            .spawn_on(shard, || async {
                quark_shard::current_shard_log()
                    .map(|l| {
                        let st = l.stats();
                        (st.sync_count, st.flush_count)
                    })
                    .unwrap_or((0, 0))
            })
            .join()
            .map_err(|e| anyhow::anyhow!("shard {shard}: {e}"))?;
        syncs += s;
        flushes += f;
    }
    Ok((syncs, flushes))
}

/// CPU time (user + system) of the whole process so far.
fn cpu_time() -> Result<Duration> {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) };
    anyhow::ensure!(rc == 0, "getrusage: {}", std::io::Error::last_os_error());
    // SAFETY: initialised by the successful call above.
    let u = unsafe { u.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(tv(u.ru_utime) + tv(u.ru_stime))
}

/// The process's resident set in bytes (Linux).
fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;

    println!("{}", quark_bench::machine::Machine::describe().line());

    // 1. Baseline.
    let f = zero_filled(&args.dir.join("baseline"), 64 << 20)?;
    let (h, _) = pwrite_loop(&f, 256, 2000)?;
    let sync_p50 = Duration::from_nanos(h.value_at_quantile(0.5));
    println!(
        "baseline: pwrite+fdatasync 256 B p50 {sync_p50:?} p99 {:?}",
        Duration::from_nanos(h.value_at_quantile(0.99))
    );

    if args.cross_node {
        return cross_node(&args);
    }

    // 2. Throughput.
    let node = start(&args.dir.join("node"), &args)?;
    let h = node.handle();
    let shard = |t: &'static str, k: u64| h.shard_of(&ActorId::new(t, k));
    let receivers: Vec<Vec<u64>> = (0..2u16)
        .map(|s| {
            (0..args.receivers)
                .filter(|k| shard("ob.receiver", *k) == s)
                .collect()
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(args.secs + 1);
    let mut handles = Vec::new();
    for s in 0..2u16 {
        let senders: Vec<u64> = (0..args.senders)
            .filter(|k| shard("ob.sender", *k) == s)
            .collect();
        // Receivers on the other shard: every message crosses shards.
        let to = std::sync::Arc::new(receivers[1 - s as usize].clone());
        let engine = node.handle();
        let burst = args.burst;
        handles.push(node.spawn_on(s, move || async move {
            let mut run = FuturesUnordered::new();
            for (i, k) in senders.into_iter().enumerate() {
                let engine = engine.clone();
                let to = to.clone();
                run.push(async move {
                    let r = engine.actor_ref::<Sender>(k);
                    let mut offset = i * 7;
                    let mut errors = 0u64;
                    while Instant::now() < end {
                        let b = Burst {
                            to: to.clone(),
                            offset,
                            count: burst,
                            mark: false,
                        };
                        if !matches!(r.ask(b).await, Ok(Ok(_))) {
                            errors += 1;
                        }
                        offset += burst as usize;
                    }
                    errors
                });
            }
            let mut errors = 0;
            while let Some(e) = run.next().await {
                errors += e;
            }
            errors
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let d0 = delivered(&node)?;
    let (syncs0, flushes0) = log_counts(&node)?;
    let cpu0 = cpu_time()?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.secs));
    let d1 = delivered(&node)?;
    let cpu1 = cpu_time()?;
    let (syncs1, flushes1) = log_counts(&node)?;
    let secs = t0.elapsed().as_secs_f64();
    let msgs = (d1 - d0).max(1) as f64;
    let errors: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let stats = node.stats()?;
    let syncs: u64 = stats.iter().filter_map(|s| s.log_next_lsn).sum();
    let rate = (d1 - d0) as f64 / secs;
    println!(
        "throughput: {} senders -> {} receivers (cross-shard), burst {}: {:.0} exactly-once messages/s ({} in {secs:.1} s; {errors} sender errors; log records written {syncs})",
        args.senders, args.receivers, args.burst, rate, d1 - d0
    );
    println!(
        "throughput cost: {:.0} messages per durable log write ({} durable writes, each one fdatasync or one O_DSYNC write, {} log writes in the window), {:.1} µs CPU per message (process user+sys {:.2} s over {secs:.1} s on {} cores; batch_max {}, inflight_max {})",
        msgs / (syncs1 - syncs0).max(1) as f64,
        syncs1 - syncs0,
        flushes1 - flushes0,
        (cpu1 - cpu0).as_secs_f64() * 1e6 / msgs,
        (cpu1 - cpu0).as_secs_f64(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.batch_max,
        args.inflight_max
    );
    node.shutdown();

    // 3. Latency.
    let node = start(&args.dir.join("latency"), &args)?;
    let h = node.handle();
    let a = (0..)
        .find(|k| h.shard_of(&ActorId::new("ob.sender", *k)) == 0)
        .unwrap_or(0);
    let b = (0..)
        .find(|k| h.shard_of(&ActorId::new("ob.receiver", *k)) == 1)
        .unwrap_or(0);
    let to = std::sync::Arc::new(vec![b]);
    let sender = node.actor_ref::<Sender>(a);
    let (tx, rx) = sync_channel(1);
    *EFFECT.lock().expect("not poisoned") = Some(tx);
    let outbox = Outbox::new(node.handle());
    let mut lat = Vec::with_capacity(args.latency_ops as usize);
    let mut lat_ack = Vec::with_capacity(args.latency_ops as usize);
    let mut lat_commit = Vec::with_capacity(args.latency_ops as usize);
    for i in 0..args.latency_ops + 100 {
        let b = Burst {
            to: to.clone(),
            offset: 0,
            count: 1,
            mark: true,
        };
        let (t0, tc) = block_on(sender.ask(b))?.map_err(anyhow::Error::msg)?;
        let t1 = rx
            .recv_timeout(Duration::from_secs(10))
            .context("no durable effect within 10 s")?;
        block_on(outbox.wait_delivered(0, i + 1))?;
        let t2 = Instant::now();
        if i >= 100 {
            lat_ack.push(t2 - t0);
        }
        if i >= 100 {
            lat.push(t1 - t0);
            lat_commit.push(tc - t0);
        }
    }
    let p50 = pct(&mut lat, 0.5);
    let p99 = pct(&mut lat, 0.99);
    let ack_p50 = pct(&mut lat_ack, 0.5);
    let commit_p50 = pct(&mut lat_commit, 0.5);
    println!(
        "latency: send-commit -> receiver effect durable, sequential, cross-shard: p50 {p50:?} p99 {p99:?} = {:.2}x the fdatasync p50; -> acknowledgement counted by the sender's dispatcher: p50 {ack_p50:?}",
        p50.as_secs_f64() / sync_p50.as_secs_f64()
    );
    println!(
        "latency parts (p50): the sender's commit {commit_p50:?} = {:.2}x the fdatasync p50; the rest (dispatch, cross-shard delivery, receiver turn and commit, report) about {:?}",
        commit_p50.as_secs_f64() / sync_p50.as_secs_f64(),
        p50.saturating_sub(commit_p50)
    );
    node.shutdown();

    // 4. Inbox memory: the resident-set growth of a table of the inbox's layout with 10 M
    // entries (one per remembered sender stream).
    let before = rss_bytes()?;
    let mut table: std::collections::HashMap<u64, (u64, u64)> = std::collections::HashMap::new();
    for i in 0..10_000_000u64 {
        table.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), (i, i));
    }
    let after = rss_bytes()?;
    println!(
        "inbox: 10 M remembered sender streams take {:.1} bytes each in memory (RSS growth; entry {} bytes + hash-table slack); ids themselves are not kept",
        (after.saturating_sub(before)) as f64 / table.len() as f64,
        quark::outbox::INBOX_BYTES_PER_ENTRY
    );
    drop(table);
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}

/// Wire requests received by `node` (every shard).
fn requests_in(node: &Node) -> Result<u64> {
    Ok(node
        .stats()?
        .iter()
        .filter_map(|s| s.net.as_ref().map(|n| n.requests_in))
        .sum())
}

/// 5. Senders on node 1, receivers on node 2, over loopback TCP.
fn cross_node(args: &Args) -> Result<()> {
    let ports: Vec<std::net::SocketAddr> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()
        })
        .collect::<std::io::Result<_>>()?;
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(i, a)| format!("[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n", i + 1))
        .collect();
    let cluster = |id: u64| format!("[cluster]\ncluster_id = \"ob\"\nnode_id = {id}\n{members}");
    let n1 = start_with(&args.dir.join("n1"), args, &cluster(1))?;
    let n2 = start_with(&args.dir.join("n2"), args, &cluster(2))?;
    let h = n1.handle();
    // Receivers node 2 owns; senders of node 1, per shard.
    let receivers: Vec<u64> = (0..)
        .filter(|k| n1.actor_ref::<Receiver>(*k).remote_node() == Some(2))
        .take(args.receivers as usize)
        .collect();
    let to = std::sync::Arc::new(receivers);
    // Wait for the link: one message through.
    let probe = n1.actor_ref::<Sender>(0u64);
    let up = Instant::now() + Duration::from_secs(10);
    loop {
        let b = Burst {
            to: to.clone(),
            offset: 0,
            count: 1,
            mark: false,
        };
        if matches!(block_on(probe.ask(b)), Ok(Ok(_))) && delivered(&n1)? >= 1 {
            break;
        }
        anyhow::ensure!(Instant::now() < up, "node 2 not reached within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let end = Instant::now() + Duration::from_secs(args.secs + 1);
    let mut handles = Vec::new();
    for s in 0..2u16 {
        let senders: Vec<u64> = (1..)
            .filter(|k| n1.actor_ref::<Sender>(*k).remote_node().is_none())
            .filter(|k| h.shard_of(&ActorId::new("ob.sender", *k)) == s)
            .take((args.senders / 2) as usize)
            .collect();
        let to = to.clone();
        let engine = n1.handle();
        let burst = args.burst;
        handles.push(n1.spawn_on(s, move || async move {
            let mut run = FuturesUnordered::new();
            for (i, k) in senders.into_iter().enumerate() {
                let engine = engine.clone();
                let to = to.clone();
                run.push(async move {
                    let r = engine.actor_ref::<Sender>(k);
                    let mut offset = i * 7;
                    let mut errors = 0u64;
                    while Instant::now() < end {
                        let b = Burst {
                            to: to.clone(),
                            offset,
                            count: burst,
                            mark: false,
                        };
                        if !matches!(r.ask(b).await, Ok(Ok(_))) {
                            errors += 1;
                        }
                        offset += burst as usize;
                    }
                    errors
                });
            }
            let mut errors = 0;
            while let Some(e) = run.next().await {
                errors += e;
            }
            errors
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let d0 = delivered(&n1)?;
    let w0 = requests_in(&n2)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.secs));
    let d1 = delivered(&n1)?;
    let w1 = requests_in(&n2)?;
    let secs = t0.elapsed().as_secs_f64();
    let errors: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    println!(
        "cross-node throughput: {} senders on node 1 -> {} receivers on node 2, burst {}: {:.0} exactly-once messages/s ({} in {secs:.1} s; {errors} sender errors); {:.3} wire requests per message ({} requests; batch_max {}, inflight_max {})",
        args.senders,
        args.receivers,
        args.burst,
        (d1 - d0) as f64 / secs,
        d1 - d0,
        (w1 - w0) as f64 / (d1 - d0).max(1) as f64,
        w1 - w0,
        args.batch_max,
        args.inflight_max
    );
    n1.shutdown();
    n2.shutdown();
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}
