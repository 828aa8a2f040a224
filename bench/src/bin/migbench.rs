//! Live migration between two shards of one node (issue 17; docs/MIGRATION.md), `--runs`
//! times each, printing every run, the median and the spread:
//!
//! - **throughput**: `--actors` small actors (a `u64` of state, `ActorType::movable`), active,
//!   half of them at home on each shard; a driver task on each shard moves its half to the
//!   other shard and back, every move of a round in flight at once, for `--rounds` rounds.
//!   Migrations/s = moves / wall time (target: at least 20,000/s).
//! - **unavailability**: one actor with 1 KiB of state, moved back and forth `--moves` times
//!   (one move at a time) while a task on each shard asks it in a closed loop. A move's
//!   unavailability is `Moved::duration`: from the order at the actor's home (after which
//!   new messages wait at the home) to the new shard's answer there (after which they are
//!   sent on). p50 / p99 / max per run (target: p99 at most 200 µs). Twice: the state moved
//!   as a box (`movable`) and dehydrated to 1,024 bytes (`migratable`). The probes' ask
//!   latency p99 and max over the same run are printed beside it, with the same probes'
//!   figures without moves (same run) as the baseline.
//!
//! - **node-unavailability**: two nodes over loopback (one process, 2 shards each); one actor
//!   with 1 KiB of state (`migratable`) homed on node 1 moved to node 2 and back `--node-moves`
//!   times (one move at a time) while a thread on node 2 asks it in a closed loop. A move's
//!   unavailability is `Moved::duration` at the home shard (the order to the answer: messages
//!   wait meanwhile). p50 / p99 / max per run (target: p99 at most 2 ms).
//! - **drain**: three nodes; `--drain-actors` small actors (`migratable`, 8 bytes) homed on
//!   node 1 and active there; `Engine::drain` moves them to the two peers. Drain time and
//!   actors moved per run (target: 100 k in under 10 s).
//!
//! - **durable**: one durable-state actor (`quark::outbox::durable_state`, 1 KiB of saved
//!   state) moved `--durable-moves` times (one move at a time) between the two shards of a
//!   node with a log (`fsync` always), and between two nodes; beside each, the same-run
//!   baseline of an in-memory actor with 1 KiB of state (`migratable`) moved the same way.
//!   Per move: its `Moved::duration` (messages wait at the home meanwhile) and the first ask
//!   after it (the durable actor reloads from the log there): the caller-visible pause is
//!   their sum, reported p50/p99; moves/s = moves / wall time of the loop (move + ask).
//! - **journaled**: the same for a journaled actor (`quark::journal::journaled`, 1 KiB of
//!   state, 32 events of 32 bytes and a snapshot every 16 events: 2 snapshots and 32 events
//!   move each time), with its same-run in-memory baseline.
//!
//! Prints the machine line (cores, kernel, CPU, commit) first.
//! `cargo run --release -p quark-bench --bin migbench -- --runs 5`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use quark_bench::machine::Machine;
use quark_bench::summary::{format_runs, format_spread, spread};
use quark_shard::{
    Actor, ActorId, ActorType, Context, Engine, EngineBuilder, EngineConfig, Handler, Message,
    MigrateError, ShardSpec,
};

#[derive(Parser, Debug)]
#[command(about = "Live migration between two shards: moves/s and unavailability")]
struct Args {
    /// Runs of each measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Small actors moved in the throughput measurement (half at home on each shard).
    #[arg(long, default_value_t = 2_000)]
    actors: u64,
    /// Rounds of the throughput measurement (each moves every actor once).
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Moves of the 1 KiB actor per run of the unavailability measurement.
    #[arg(long, default_value_t = 2_000)]
    moves: u32,
    /// Moves of the 1 KiB actor between two nodes per run (node-unavailability).
    #[arg(long, default_value_t = 500)]
    node_moves: u32,
    /// Active actors drained to two peers per run (drain).
    #[arg(long, default_value_t = 100_000)]
    drain_actors: u64,
    /// Moves of the durable actor (and of the in-memory baseline) per run (durable).
    #[arg(long, default_value_t = 200)]
    durable_moves: u32,
    /// How long idle shards spin before parking, µs.
    #[arg(long, default_value_t = 50)]
    idle_spin_us: u64,
    /// Only the measurements whose name contains this (throughput, unavailability,
    /// node-unavailability, drain, durable).
    #[arg(long)]
    only: Option<String>,
}

struct Small(u64);
impl Actor for Small {
    const TYPE_NAME: &'static str = "bench-small";
}
struct Bump;
impl Message for Bump {
    type Reply = u64;
}
impl Handler<Bump> for Small {
    async fn handle(&mut self, _: Bump, _: &Context<Self>) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// 1 KiB of state, moved as a box.
struct Kib(Box<[u8; 1024]>);
impl Actor for Kib {
    const TYPE_NAME: &'static str = "bench-kib";
}
/// 1 KiB of state, dehydrated to bytes.
struct KibBytes(Vec<u8>);
impl Actor for KibBytes {
    const TYPE_NAME: &'static str = "bench-kib-bytes";
}
struct Touch(u8);
impl Message for Touch {
    type Reply = u8;
}
impl Handler<Touch> for Kib {
    async fn handle(&mut self, m: Touch, _: &Context<Self>) -> u8 {
        self.0[usize::from(m.0)] = self.0[usize::from(m.0)].wrapping_add(1);
        self.0[usize::from(m.0)]
    }
}
impl Handler<Touch> for KibBytes {
    async fn handle(&mut self, m: Touch, _: &Context<Self>) -> u8 {
        self.0[usize::from(m.0)] = self.0[usize::from(m.0)].wrapping_add(1);
        self.0[usize::from(m.0)]
    }
}

/// A message that crosses nodes (the probe of the node measurements).
#[derive(quark_net::rkyv::Archive, quark_net::rkyv::Serialize, quark_net::rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Poke(u8);
impl Message for Poke {
    type Reply = u16;
}
impl quark_net::WireMessage for Poke {
    const WIRE_NAME: &'static str = "migbench.Poke";
}
impl Handler<Poke> for KibBytes {
    async fn handle(&mut self, m: Poke, _: &Context<Self>) -> u16 {
        self.0[usize::from(m.0)] = self.0[usize::from(m.0)].wrapping_add(1);
        u16::from(self.0[usize::from(m.0)])
    }
}
/// A small actor whose 8 bytes of state cross nodes.
struct SmallBytes(u64);
impl Actor for SmallBytes {
    const TYPE_NAME: &'static str = "bench-small-bytes";
}
impl Handler<Poke> for SmallBytes {
    async fn handle(&mut self, m: Poke, _: &Context<Self>) -> u16 {
        self.0 += u64::from(m.0);
        u16::from(m.0)
    }
}

/// A durable-state actor with 1 KiB of saved state.
#[derive(serde::Serialize, serde::Deserialize)]
struct DurKib(Vec<u8>);
impl Actor for DurKib {
    const TYPE_NAME: &'static str = "bench-durable-kib";
}
impl quark::outbox::DurableState for DurKib {
    fn initial(_: &quark_placement::ActorKey) -> Self {
        DurKib(vec![0; 1024])
    }
}
impl Handler<Poke> for DurKib {
    async fn handle(&mut self, m: Poke, ctx: &Context<Self>) -> u16 {
        use quark::outbox::Save;
        self.0[usize::from(m.0)] = self.0[usize::from(m.0)].wrapping_add(1);
        if m.0 == 255 {
            // The write of the state (once, before the moves).
            ctx.save(self)
                .await
                .expect("bench: the durable actor saves");
        }
        u16::from(self.0[usize::from(m.0)])
    }
}

/// A journaled actor with 1 KiB of state, 32 events of 32 bytes and a snapshot every 16.
#[derive(Default)]
struct JourKib(Vec<u8>);
impl Actor for JourKib {
    const TYPE_NAME: &'static str = "bench-journaled-kib";
}
#[derive(serde::Serialize, serde::Deserialize)]
struct Wrote(u16, Vec<u8>);
impl quark::journal::JournalEvent for Wrote {
    fn type_name(&self) -> &'static str {
        "Wrote"
    }
}
impl quark::journal::EventSourced for JourKib {
    type Event = Wrote;
    type Snapshot = Vec<u8>;
    fn initial(_: &quark_placement::ActorKey) -> Self {
        JourKib(vec![0; 1024])
    }
    fn apply(&mut self, e: &Wrote) {
        let at = usize::from(e.0) % (1024 - 32);
        self.0[at..at + e.1.len()].copy_from_slice(&e.1);
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.clone()
    }
    fn restore(_: &quark_placement::ActorKey, s: Vec<u8>) -> Self {
        JourKib(s)
    }
}
impl Handler<Poke> for JourKib {
    async fn handle(&mut self, m: Poke, ctx: &Context<Self>) -> u16 {
        use quark::journal::Persist;
        if m.0 == 255 {
            // The journal (once, before the moves): 32 events, two snapshots.
            for i in 0..32u16 {
                ctx.persist(self, [Wrote(i * 32, vec![i as u8; 32])])
                    .await
                    .expect("bench: the journaled actor persists");
            }
        }
        u16::from(self.0[usize::from(m.0)])
    }
}

fn journaled_kib() -> ActorType<JourKib> {
    quark::journal::journaled::<JourKib>(quark::journal::JournalPolicy::snapshot_every(16))
}

/// A fresh log directory for one engine of a durable run (removed by the caller).
fn log_dir(what: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("migbench-{what}-{}-{n}", std::process::id()))
}

/// `n` nodes of one cluster over loopback, in this process.
fn cluster(args: &Args, n: usize) -> Result<Vec<Engine>> {
    cluster_logs(args, &vec![None; n])
}

/// [`cluster`] with a log per node where `logs` names a directory.
fn cluster_logs(args: &Args, logs: &[Option<std::path::PathBuf>]) -> Result<Vec<Engine>> {
    let n = logs.len();
    use quark_net::{ClusterConfig, MemberAddr, Membership, PeerRole};
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let members = Membership::from_config(&ClusterConfig {
        cluster_id: "migbench".into(),
        nodes: ls
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(MemberAddr {
                    id: i as u64 + 1,
                    addr: l.local_addr()?.to_string(),
                })
            })
            .collect::<std::io::Result<_>>()?,
    })?;
    ls.into_iter()
        .enumerate()
        .map(|(i, l)| {
            let mut net =
                quark_shard::NetConfig::new(i as u64 + 1, PeerRole::Member, members.clone());
            net.listener = Some(Arc::new(l));
            Ok(EngineBuilder::new(EngineConfig {
                shards: ShardSpec::Count(2),
                idle_spin: Duration::from_micros(args.idle_spin_us),
                pin_threads: false,
                migrations_per_sec_max: 0,
                net: Some(net),
                log: logs[i]
                    .as_ref()
                    .map(|d| quark_persist::LogConfig::new(d, 0)),
                ..EngineConfig::default()
            })
            .register(quark::outbox::durable_state::<DurKib>())
            .remote::<DurKib, Poke>()
            .register(journaled_kib())
            .remote::<JourKib, Poke>()
            .register(
                ActorType::new(|_| KibBytes(vec![0; 1024]))
                    .migratable(|a: &KibBytes| a.0.clone(), |_, b| Ok(KibBytes(b.to_vec()))),
            )
            .register(ActorType::new(|_| SmallBytes(0)).migratable(
                |a: &SmallBytes| a.0.to_le_bytes().to_vec(),
                |_, b| {
                    let b: [u8; 8] = b.try_into().map_err(|_| "not 8 bytes")?;
                    Ok(SmallBytes(u64::from_le_bytes(b)))
                },
            ))
            .remote::<KibBytes, Poke>()
            .remote::<SmallBytes, Poke>()
            .start()?)
        })
        .collect()
}

/// Waits until `r` answers (the links come up).
fn reach<A: Handler<Poke>>(r: &quark_shard::ActorRef<A>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.ask_blocking(Poke(0)).is_err() {
        if Instant::now() > deadline {
            bail!("the cluster did not come up");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

struct NodeMoves {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    probe_p99_us: f64,
    probes: u64,
    base_p99_us: f64,
}

/// One node-unavailability run.
fn node_unavailability(args: &Args) -> Result<NodeMoves> {
    let nodes = cluster(args, 2)?;
    let key = (0..100_000u64)
        .find(|k| nodes[1].actor_ref::<KibBytes>(*k).remote_node() == Some(1))
        .expect("a key homed on node 1");
    let id = ActorId {
        type_name: KibBytes::TYPE_NAME,
        key: key.into(),
    };
    reach(&nodes[0].actor_ref::<KibBytes>(key))?;
    reach(&nodes[1].actor_ref::<KibBytes>(key))?;
    // Baseline, same run: the probe's asks from node 2 without moves (the actor at home).
    let mut base = Histogram::<u64>::new(3)?;
    let r2 = nodes[1].actor_ref::<KibBytes>(key);
    for i in 0..1000u32 {
        let t = Instant::now();
        r2.ask_blocking(Poke(i as u8))?;
        base.record(t.elapsed().as_nanos() as u64)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let r = nodes[1].actor_ref::<KibBytes>(key);
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<Histogram<u64>> {
            let mut h = Histogram::<u64>::new(3)?;
            let mut i = 0u8;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                r.ask_blocking(Poke(i))?;
                h.record(t.elapsed().as_nanos() as u64)?;
                i = i.wrapping_add(1);
            }
            Ok(h)
        })
    };
    let mut h = Histogram::<u64>::new(3)?;
    let mut done = 0;
    while done < args.node_moves {
        let to = if done % 2 == 0 { 2 } else { 1 };
        match nodes[0].migrate_to_node(&id, to) {
            Ok(m) => {
                h.record(m.duration.as_nanos() as u64)?;
                done += 1;
            }
            // A shard's link not up yet: the actor stays; retried.
            Err(MigrateError::NodeUnavailable { .. }) => std::thread::yield_now(),
            Err(e) => bail!("move {done}: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let ph = probe
        .join()
        .map_err(|_| anyhow::anyhow!("probe panicked"))??;
    for n in nodes {
        n.shutdown();
    }
    Ok(NodeMoves {
        p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        max_us: h.max() as f64 / 1e3,
        probe_p99_us: ph.value_at_quantile(0.99) as f64 / 1e3,
        probes: ph.len(),
        base_p99_us: base.value_at_quantile(0.99) as f64 / 1e3,
    })
}

/// One drain run: (seconds, actors moved).
fn drain(args: &Args) -> Result<(f64, u64)> {
    let nodes = cluster(args, 3)?;
    let keys: Vec<u64> = (0..u64::MAX)
        .filter(|k| nodes[1].actor_ref::<SmallBytes>(*k).remote_node() == Some(1))
        .take(args.drain_actors as usize)
        .collect();
    reach(&nodes[1].actor_ref::<SmallBytes>(keys[0]))?;
    reach(&nodes[2].actor_ref::<SmallBytes>(keys[0]))?;
    // Activate them all on node 1, 1,000 asks in flight.
    let refs: Vec<_> = keys
        .iter()
        .map(|k| nodes[0].actor_ref::<SmallBytes>(*k))
        .collect();
    quark_shard::block_on(async {
        let mut inflight = FuturesUnordered::new();
        for r in &refs {
            inflight.push(r.ask(Poke(1)));
            if inflight.len() >= 1000 {
                inflight.next().await.expect("in flight")?;
            }
        }
        while let Some(r) = inflight.next().await {
            r?;
        }
        Ok::<(), quark_shard::CallError>(())
    })?;
    let t = Instant::now();
    let report = nodes[0].drain(Duration::from_secs(60));
    let secs = t.elapsed().as_secs_f64();
    if report.moved != args.drain_actors {
        eprintln!("drain: {report:?}");
    }
    for n in nodes {
        n.shutdown();
    }
    Ok((secs, report.moved))
}

fn engine(args: &Args) -> Result<Engine> {
    engine_log(args, None)
}

fn engine_log(args: &Args, log: Option<&std::path::Path>) -> Result<Engine> {
    Ok(EngineBuilder::new(EngineConfig {
        shards: ShardSpec::Count(2),
        idle_spin: Duration::from_micros(args.idle_spin_us),
        migrations_per_sec_max: 0,
        log: log.map(|d| quark_persist::LogConfig::new(d, 0)),
        ..EngineConfig::default()
    })
    .register(quark::outbox::durable_state::<DurKib>())
    .register(journaled_kib())
    .register(ActorType::new(|_| Small(0)).movable())
    .register(ActorType::new(|_| Kib(Box::new([0; 1024]))).movable())
    .register(
        ActorType::new(|_| KibBytes(vec![0; 1024]))
            .migratable(|a: &KibBytes| a.0.clone(), |_, b| Ok(KibBytes(b.to_vec()))),
    )
    .start()?)
}

/// One throughput run: migrations/s.
fn throughput(args: &Args) -> Result<f64> {
    let engine = engine(args)?;
    let mut halves: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for k in 0..args.actors {
        let home = engine.actor_ref::<Small>(k).owner_shard();
        halves[usize::from(home)].push(k);
    }
    // Activate them all first (a move of an inactive actor only changes its place).
    for k in 0..args.actors {
        engine.actor_ref::<Small>(k).ask_blocking(Bump)?;
    }
    let rounds = args.rounds;
    let start = Instant::now();
    let drivers: Vec<_> = (0..2u16)
        .map(|shard| {
            let refs: Vec<_> = halves[usize::from(shard)]
                .iter()
                .map(|k| engine.actor_ref::<Small>(*k))
                .collect();
            engine.spawn_on(shard, move || async move {
                let mut moves = 0u64;
                for round in 0..rounds {
                    // Odd rounds move every actor away from home, even rounds back.
                    let to = if round % 2 == 0 { 1 - shard } else { shard };
                    let mut inflight: FuturesUnordered<_> =
                        refs.iter().map(|r| r.migrate(to)).collect();
                    while let Some(m) = inflight.next().await {
                        let m = m.map_err(|e| e.to_string())?;
                        if m.from == m.to {
                            return Err(format!("{} did not move", m.actor));
                        }
                        moves += 1;
                    }
                }
                Ok::<u64, String>(moves)
            })
        })
        .collect();
    let mut moves = 0;
    for d in drivers {
        match d.join() {
            Ok(Ok(n)) => moves += n,
            Ok(Err(e)) => bail!("a move failed: {e}"),
            Err(e) => bail!("a driver failed: {e}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = engine.stats()?;
    let done: u64 = stats.iter().map(|s| s.migrations_done).sum();
    if done != moves {
        bail!("{moves} moves reported, {done} counted by the shards");
    }
    engine.shutdown();
    Ok(moves as f64 / secs)
}

struct Unavailability {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    probe_p99_us: f64,
    probe_max_us: f64,
    base_p99_us: f64,
    base_max_us: f64,
    bytes: u64,
}

/// Closed-loop probes from both shards until `stop`: their ask latency histogram.
fn probes<A>(
    engine: &Engine,
    key: u64,
    stop: Arc<AtomicBool>,
) -> Vec<quark_shard::SpawnHandle<Histogram<u64>>>
where
    A: Handler<Touch>,
{
    (0..2u16)
        .map(|shard| {
            let r = engine.actor_ref::<A>(key);
            let stop = stop.clone();
            engine.spawn_on(shard, move || async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let mut i = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    r.ask(Touch(i)).await.expect("probe");
                    h.record(t.elapsed().as_nanos() as u64).expect("in range");
                    i = i.wrapping_add(1);
                }
                h
            })
        })
        .collect()
}

fn join_probes(p: Vec<quark_shard::SpawnHandle<Histogram<u64>>>) -> Result<Histogram<u64>> {
    let mut all = Histogram::<u64>::new(3)?;
    for h in p {
        match h.join() {
            Ok(h) => all.add(&h)?,
            Err(e) => bail!("a probe failed: {e}"),
        }
    }
    Ok(all)
}

/// One unavailability run for actor type `A`.
fn unavailability<A>(args: &Args) -> Result<Unavailability>
where
    A: Handler<Touch>,
{
    let engine = engine(args)?;
    let key = 7u64;
    let id = ActorId {
        type_name: A::TYPE_NAME,
        key: key.into(),
    };
    engine.actor_ref::<A>(key).ask_blocking(Touch(0))?;
    // Baseline: the same probes for a while without moves.
    let stop = Arc::new(AtomicBool::new(false));
    let p = probes::<A>(&engine, key, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let base = join_probes(p)?;
    let stop = Arc::new(AtomicBool::new(false));
    let p = probes::<A>(&engine, key, stop.clone());
    let mut moved = Histogram::<u64>::new(3)?;
    let mut place = engine.placement(&id)?.shard;
    let mut bytes = 0;
    let mut n = 0;
    while n < args.moves {
        match engine.migrate(&id, 1 - place) {
            Ok(m) => {
                moved.record(m.duration.as_nanos() as u64)?;
                place = m.to;
                bytes = m.bytes;
                n += 1;
            }
            Err(MigrateError::Busy { .. }) => std::thread::yield_now(),
            Err(e) => bail!("move {n}: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let probed = join_probes(p)?;
    engine.shutdown();
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    Ok(Unavailability {
        p50_us: us(&moved, 0.5),
        p99_us: us(&moved, 0.99),
        max_us: moved.max() as f64 / 1e3,
        probe_p99_us: us(&probed, 0.99),
        probe_max_us: probed.max() as f64 / 1e3,
        base_p99_us: us(&base, 0.99),
        base_max_us: base.max() as f64 / 1e3,
        bytes,
    })
}

/// One series of moves of one actor: per move its duration and the first ask after it.
struct Series {
    move_p50_us: f64,
    move_p99_us: f64,
    pause_p50_us: f64,
    pause_p99_us: f64,
    moves_per_s: f64,
}

/// Moves `id` `moves` times between `to(i)` places with `mv`, asking it once after each move
/// with `ask`; retries a move refused while a link comes up.
fn series(
    moves: u32,
    mut mv: impl FnMut(u32) -> Result<quark_shard::Moved, MigrateError>,
    mut ask: impl FnMut() -> Result<()>,
) -> Result<Series> {
    let (mut hm, mut hp) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    let t0 = Instant::now();
    let mut done = 0;
    while done < moves {
        let m = match mv(done) {
            Ok(m) => m,
            Err(MigrateError::NodeUnavailable { .. }) => {
                std::thread::yield_now();
                continue;
            }
            Err(e) => bail!("move {done}: {e}"),
        };
        let t = Instant::now();
        ask()?;
        let first = t.elapsed();
        hm.record(m.duration.as_nanos() as u64)?;
        hp.record((m.duration + first).as_nanos() as u64)?;
        done += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    Ok(Series {
        move_p50_us: us(&hm, 0.5),
        move_p99_us: us(&hm, 0.99),
        pause_p50_us: us(&hp, 0.5),
        pause_p99_us: us(&hp, 0.99),
        moves_per_s: f64::from(moves) / secs,
    })
}

/// One durable run between two shards of a node: (durable, in-memory baseline).
fn durable_shards<D: Handler<Poke>>(args: &Args) -> Result<(Series, Series)> {
    let dir = log_dir("shards");
    let engine = engine_log(args, Some(&dir))?;
    let d = engine.actor_ref::<D>(7u64);
    d.ask_blocking(Poke(255))?;
    let did = ActorId {
        type_name: D::TYPE_NAME,
        key: 7u64.into(),
    };
    let home = engine.handle().shard_of(&did);
    let dur = series(
        args.durable_moves,
        |i| engine.migrate(&did, if i % 2 == 0 { 1 - home } else { home }),
        || Ok(d.ask_blocking(Poke(1)).map(|_| ())?),
    )?;
    let m = engine.actor_ref::<KibBytes>(7u64);
    m.ask_blocking(Touch(1))?;
    let mid = ActorId {
        type_name: KibBytes::TYPE_NAME,
        key: 7u64.into(),
    };
    let mhome = engine.handle().shard_of(&mid);
    let mem = series(
        args.durable_moves,
        |i| engine.migrate(&mid, if i % 2 == 0 { 1 - mhome } else { mhome }),
        || Ok(m.ask_blocking(Touch(1)).map(|_| ())?),
    )?;
    engine.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((dur, mem))
}

/// One durable run between two nodes: (durable, in-memory baseline).
fn durable_nodes<D: Handler<Poke>>(args: &Args) -> Result<(Series, Series)> {
    let dirs = [log_dir("node1"), log_dir("node2")];
    let nodes = cluster_logs(args, &[Some(dirs[0].clone()), Some(dirs[1].clone())])?;
    let dkey = (0..100_000u64)
        .find(|k| nodes[1].actor_ref::<D>(*k).remote_node() == Some(1))
        .expect("a key homed on node 1");
    let mkey = (0..100_000u64)
        .find(|k| nodes[1].actor_ref::<KibBytes>(*k).remote_node() == Some(1))
        .expect("a key homed on node 1");
    reach(&nodes[1].actor_ref::<KibBytes>(mkey))?;
    let d = nodes[1].actor_ref::<D>(dkey);
    reach(&d)?;
    d.ask_blocking(Poke(255))?;
    let did = ActorId {
        type_name: D::TYPE_NAME,
        key: dkey.into(),
    };
    let dur = series(
        args.durable_moves,
        |i| nodes[0].migrate_to_node(&did, if i % 2 == 0 { 2 } else { 1 }),
        || Ok(d.ask_blocking(Poke(1)).map(|_| ())?),
    )?;
    let m = nodes[1].actor_ref::<KibBytes>(mkey);
    let mid = ActorId {
        type_name: KibBytes::TYPE_NAME,
        key: mkey.into(),
    };
    let mem = series(
        args.durable_moves,
        |i| nodes[0].migrate_to_node(&mid, if i % 2 == 0 { 2 } else { 1 }),
        || Ok(m.ask_blocking(Poke(1)).map(|_| ())?),
    )?;
    for n in nodes {
        n.shutdown();
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok((dur, mem))
}

fn durable_rows(what: &str, kind: &str, runs: &[(Series, Series)]) {
    println!("{what}:");
    for (i, name) in [kind, "in-memory baseline (migratable)"].iter().enumerate() {
        let col = |f: fn(&Series) -> f64| {
            runs.iter()
                .map(|r| f(if i == 0 { &r.0 } else { &r.1 }))
                .collect::<Vec<_>>()
        };
        report(
            &format!("  {name}: move p50"),
            "µs",
            &col(|s| s.move_p50_us),
            1,
        );
        report(
            &format!("  {name}: move p99"),
            "µs",
            &col(|s| s.move_p99_us),
            1,
        );
        report(
            &format!("  {name}: pause p50 (move + first ask)"),
            "µs",
            &col(|s| s.pause_p50_us),
            1,
        );
        report(
            &format!("  {name}: pause p99"),
            "µs",
            &col(|s| s.pause_p99_us),
            1,
        );
        report(
            &format!("  {name}: moves/s"),
            "moves/s",
            &col(|s| s.moves_per_s),
            0,
        );
    }
}

fn report(name: &str, unit: &str, values: &[f64], decimals: usize) {
    if values.is_empty() {
        return;
    }
    println!(
        "{name:<58} {unit:>10}  {}  runs: {}",
        format_spread(&spread(values), decimals),
        format_runs(values, decimals)
    );
}

fn unavailability_rows<A: Handler<Touch>>(args: &Args, what: &str) -> Result<()> {
    let runs: Vec<Unavailability> = (0..args.runs)
        .map(|_| unavailability::<A>(args))
        .collect::<Result<_>>()?;
    let col = |f: fn(&Unavailability) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    let bytes = runs.first().map_or(0, |r| r.bytes);
    println!("unavailability, 1 KiB state {what} ({bytes} bytes serialized per move):");
    report(
        "  move p50 (order at home -> answer at home)",
        "µs",
        &col(|r| r.p50_us),
        1,
    );
    report("  move p99", "µs", &col(|r| r.p99_us), 1);
    report("  move max", "µs", &col(|r| r.max_us), 1);
    report(
        "  probe ask p99 during moves",
        "µs",
        &col(|r| r.probe_p99_us),
        1,
    );
    report(
        "  probe ask p99 without moves (same run)",
        "µs",
        &col(|r| r.base_p99_us),
        1,
    );
    report(
        "  probe ask max during moves",
        "µs",
        &col(|r| r.probe_max_us),
        1,
    );
    report(
        "  probe ask max without moves (same run)",
        "µs",
        &col(|r| r.base_max_us),
        1,
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("{}", Machine::describe().line());
    println!(
        "migbench: --runs {} --actors {} --rounds {} --moves {} --idle-spin-us {}",
        args.runs, args.actors, args.rounds, args.moves, args.idle_spin_us
    );
    let want = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    if want("throughput") {
        let rates: Vec<f64> = (0..args.runs)
            .map(|_| throughput(&args))
            .collect::<Result<_>>()?;
        report(
            "throughput: small actors moved between two shards",
            "moves/s",
            &rates,
            0,
        );
    }
    if want("node-unavailability") {
        let runs: Vec<NodeMoves> = (0..args.runs)
            .map(|_| node_unavailability(&args))
            .collect::<Result<_>>()?;
        let col = |f: fn(&NodeMoves) -> f64| runs.iter().map(f).collect::<Vec<_>>();
        println!(
            "node-unavailability, 1 KiB state (migratable) between two nodes, {} moves/run:",
            args.node_moves
        );
        report(
            "  move p50 (order at home -> answer at home)",
            "µs",
            &col(|r| r.p50_us),
            1,
        );
        report("  move p99", "µs", &col(|r| r.p99_us), 1);
        report("  move max", "µs", &col(|r| r.max_us), 1);
        report(
            "  probe ask p99 (from node 2, during moves)",
            "µs",
            &col(|r| r.probe_p99_us),
            1,
        );
        report(
            "  probe ask p99 without moves (same run, 1,000 asks)",
            "µs",
            &col(|r| r.base_p99_us),
            1,
        );
        report(
            "  probe asks answered during moves",
            "asks",
            &col(|r| r.probes as f64),
            0,
        );
    }
    if want("drain") {
        let runs: Vec<(f64, u64)> = (0..args.runs)
            .map(|_| drain(&args))
            .collect::<Result<_>>()?;
        let secs: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let moved: Vec<f64> = runs.iter().map(|r| r.1 as f64).collect();
        report(
            &format!("drain: {} active actors to two peers", args.drain_actors),
            "s",
            &secs,
            2,
        );
        report("  actors moved", "actors", &moved, 0);
    }
    for (kind, what, shards, nodes) in [
        (
            "durable",
            "durable, 1 KiB saved state",
            durable_shards::<DurKib> as fn(&Args) -> Result<(Series, Series)>,
            durable_nodes::<DurKib> as fn(&Args) -> Result<(Series, Series)>,
        ),
        (
            "journaled",
            "journaled, 1 KiB state, 32 events and 2 snapshots",
            durable_shards::<JourKib>,
            durable_nodes::<JourKib>,
        ),
    ] {
        if !want(kind) {
            continue;
        }
        let runs: Vec<(Series, Series)> = (0..args.runs)
            .map(|_| shards(&args))
            .collect::<Result<_>>()?;
        durable_rows(
            &format!(
                "{what} between two shards, {} moves/run",
                args.durable_moves
            ),
            kind,
            &runs,
        );
        let runs: Vec<(Series, Series)> = (0..args.runs)
            .map(|_| nodes(&args))
            .collect::<Result<_>>()?;
        durable_rows(
            &format!("{what} between two nodes, {} moves/run", args.durable_moves),
            kind,
            &runs,
        );
    }
    if want("unavailability") && args.only.as_deref() != Some("node-unavailability") {
        unavailability_rows::<Kib>(&args, "moved as a box (movable)")?;
        unavailability_rows::<KibBytes>(&args, "dehydrated (migratable)")?;
    }
    Ok(())
}
