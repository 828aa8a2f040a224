//! The OOM-prevention run of issue 18 (docs/MEMORY.md, `scripts/memory_oom.sh`): node 1 holds
//! actors that grow until they hold `--total-mib` in all, past the node's limit
//! (`--limit-mib`). With `--memory` node 1 runs the `[memory]` monitor (limit = `--limit-mib`)
//! and moves actors to node 2 (a second process, `--role peer`); without it nothing stops the
//! growth. Node 1 writes its memory curve as CSV (`--csv`): one row per tick.
//!
//! `memhog --role peer --node-id 2 --addrs A1,A2 --run-secs 60`
//! `memhog --role driver --node-id 1 --addrs A1,A2 --limit-mib 256 --total-mib 512 --memory --csv out.csv`

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use quark::{Actor, ActorType, CallError, Context, Handler, Message, Node, NodeConfig};

#[global_allocator]
static ALLOC: quark::CountingAlloc<mimalloc::MiMalloc> =
    quark::CountingAlloc::new(mimalloc::MiMalloc);

#[derive(Parser, Debug)]
struct Args {
    /// `driver` (node 1: the growing actors and the CSV) or `peer` (node 2).
    #[arg(long)]
    role: String,
    #[arg(long)]
    node_id: u64,
    /// The two nodes' cluster addresses, `ip:port,ip:port` (node 1 first).
    #[arg(long)]
    addrs: String,
    /// Node 1's limit, MiB (`[memory] limit_bytes`).
    #[arg(long, default_value_t = 256)]
    limit_mib: u64,
    /// No `limit_bytes` in node 1's `[memory]`: the limit is its cgroup's (the process runs
    /// in a memory cgroup limited to `--limit-mib`; scripts/memory_oom.sh with CGROUP=1).
    #[arg(long)]
    limit_from_cgroup: bool,
    /// Node 1's `[memory] growth_lead_ms` (how far ahead it looks at its RSS's growth).
    #[arg(long, default_value_t = 1000)]
    growth_lead_ms: u64,
    /// The actors' state in all at the end, MiB.
    #[arg(long, default_value_t = 512)]
    total_mib: u64,
    /// Actors.
    #[arg(long, default_value_t = 128)]
    actors: u64,
    /// Tick, ms: every actor grows once per tick.
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Node 1 runs the memory monitor.
    #[arg(long)]
    memory: bool,
    /// `[memory]` thresholds of node 1 (fractions of the limit): the growth is fast, so the
    /// monitor starts early.
    #[arg(long, default_value_t = 0.6)]
    warning: f64,
    #[arg(long, default_value_t = 0.7)]
    critical: f64,
    #[arg(long, default_value_t = 0.9)]
    reject: f64,
    #[arg(long)]
    csv: Option<String>,
    /// The peer runs this long.
    #[arg(long, default_value_t = 60)]
    run_secs: u64,
}

struct Hog {
    data: Vec<u8>,
}
impl Actor for Hog {
    const TYPE_NAME: &'static str = "memhog";
}
#[derive(quark::rkyv::Archive, quark::rkyv::Serialize, quark::rkyv::Deserialize)]
#[rkyv(crate = quark::rkyv)]
struct Grow(u64);
impl Message for Grow {
    type Reply = u64;
}
impl quark::WireMessage for Grow {
    const WIRE_NAME: &'static str = "memhog.Grow";
}
impl Handler<Grow> for Hog {
    async fn handle(&mut self, m: Grow, _: &Context<Self>) -> u64 {
        // Exactly what it holds (no doubling of the capacity: all actors grow in step, and
        // doubling together would add half the node's memory in one tick).
        self.data.reserve_exact(m.0 as usize);
        self.data.resize(self.data.len() + m.0 as usize, 7);
        self.data.len() as u64
    }
}

fn node(args: &Args) -> Result<Node> {
    let addrs: Vec<&str> = args.addrs.split(',').collect();
    if addrs.len() != 2 {
        bail!("--addrs takes two addresses");
    }
    let mut text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
         [cluster]\ncluster_id = \"memhog\"\nnode_id = {}\nframe_bytes_max = 33554432\n\
         [[cluster.nodes]]\nid = 1\naddr = \"{}\"\n[[cluster.nodes]]\nid = 2\naddr = \"{}\"\n",
        args.node_id, addrs[0], addrs[1]
    );
    if args.memory && args.node_id == 1 {
        let limit = if args.limit_from_cgroup {
            String::new()
        } else {
            format!("limit_bytes = {}\n", args.limit_mib << 20)
        };
        text.push_str(&format!(
            "[memory]\n{limit}sample_interval_ms = 100\nleak_samples = 0\n\
             warning = {}\ncritical = {}\nreject = {}\ngrowth_lead_ms = {}\n",
            args.warning, args.critical, args.reject, args.growth_lead_ms
        ));
    }
    let config = NodeConfig::from_toml(&text, "memhog.toml")?;
    Ok(Node::builder()
        .config(config)
        .register(ActorType::new(|_| Hog { data: Vec::new() }).migratable(
            |h: &Hog| h.data.clone(),
            |_, b| Ok(Hog { data: b.to_vec() }),
        ))
        .remote::<Hog, Grow>()
        .start()?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let node = node(&args)?;
    if args.role == "peer" {
        println!("peer ready");
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_secs(args.run_secs));
        node.shutdown();
        return Ok(());
    }
    let keys: Vec<u64> = (0u64..)
        .filter(|k| node.actor_ref::<Hog>(*k).remote_node().is_none())
        .take(args.actors as usize)
        .collect();
    // Links up (a call to a key of node 2).
    let other = (0u64..)
        .find(|k| node.actor_ref::<Hog>(*k).remote_node() == Some(2))
        .context("a key of node 2")?;
    let end = Instant::now() + Duration::from_secs(20);
    while quark::block_on(node.actor_ref::<Hog>(other).ask(Grow(0))).is_err() {
        if Instant::now() > end {
            bail!("node 2 never answered");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = args.total_mib << 20;
    // The growth is spread over this many ticks.
    let ticks = 100u64;
    let per = total / args.actors / ticks;
    let limit = args.limit_mib << 20;
    let mut csv = match &args.csv {
        Some(p) => Some(std::fs::File::create(p).with_context(|| format!("create {p}"))?),
        None => None,
    };
    let header =
        "t_ms,rss_bytes,limit_bytes,counted_bytes,state_bytes,moves,node_moves,refused,failed";
    if let Some(f) = &mut csv {
        writeln!(f, "{header}")?;
    }
    let start = Instant::now();
    let (mut refused, mut failed, mut state, mut rss_max) = (0u64, 0u64, 0u64, 0u64);
    for tick in 0..ticks + 40 {
        if tick < ticks {
            for k in &keys {
                match quark::block_on(node.actor_ref::<Hog>(*k).ask(Grow(per))) {
                    Ok(_) => state += per,
                    Err(CallError::Overloaded { .. }) => refused += 1,
                    Err(e) => {
                        failed += 1;
                        eprintln!("ask failed: {e}");
                    }
                }
            }
        }
        let m = node.memory()?;
        let rss = m.node.rss_bytes.unwrap_or(0);
        rss_max = rss_max.max(rss);
        let counted: u64 = m.shards.iter().map(|s| s.memory.shard_bytes).sum();
        let row = format!(
            "{},{rss},{limit},{counted},{state},{},{},{refused},{failed}",
            start.elapsed().as_millis(),
            m.moves,
            m.node_moves
        );
        if let Some(f) = &mut csv {
            writeln!(f, "{row}")?;
        }
        std::thread::sleep(Duration::from_millis(args.tick_ms));
    }
    let m = node.memory()?;
    println!(
        "memhog: memory {} limit {} MiB (the node sees {} MiB, from {:?}) state {} MiB rss max {} MiB ({:.2} of the limit) moves {} to node 2 {} refused {refused} failed {failed}",
        if args.memory { "on" } else { "off" },
        args.limit_mib,
        m.node.limit_bytes.map_or(0, |l| l >> 20),
        m.node.limit_source,
        state >> 20,
        rss_max >> 20,
        rss_max as f64 / limit as f64,
        m.moves,
        m.node_moves
    );
    node.shutdown();
    Ok(())
}
