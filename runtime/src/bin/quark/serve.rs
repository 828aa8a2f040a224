//! `quark serve`: runs one node of a cluster with the built-in benchmark actors, until SIGINT
//! or SIGTERM, then drains and stops.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// Arguments of `quark serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The node's configuration file (TOML, with a `[cluster]` section).
    #[arg(long)]
    config: PathBuf,
    /// Run as this node of `[[cluster.nodes]]` (overrides `cluster.node_id` and listens on
    /// that node's address), so that one file can describe a whole cluster.
    #[arg(long)]
    node_id: Option<u64>,
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it starts), so
/// that they can be waited for with `sigwait` instead of killing the process.
fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialize it; pthread_sigmask
    // only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!(
                "pthread_sigmask failed: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` was initialized by `block_signals`; sigwait writes one int.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}

/// Runs the node.
pub fn run(args: Args) -> Result<()> {
    let signals = block_signals()?;
    let mut config = quark::NodeConfig::from_file(&args.config)?;
    let Some(cluster) = config.cluster.as_mut() else {
        bail!(
            "{}: `quark serve` needs a [cluster] section (see docs/examples/)",
            args.config.display()
        );
    };
    if let Some(id) = args.node_id {
        let Some(addr) = cluster.net.membership.addr(id) else {
            bail!(
                "--node-id {id}: {} has no such node in [[cluster.nodes]]",
                args.config.display()
            );
        };
        cluster.net.node_id = id;
        cluster.listen = addr;
    }
    let node = quark::builtin::register_builtin(quark::Node::builder().config(config))
        .start()
        .with_context(|| format!("starting the node from {}", args.config.display()))?;
    let addr = node
        .listen_addr()
        .context("the node does not listen (no [cluster] section?)")?;
    // The ready line: scripts and tests wait for it.
    println!(
        "quark: node {} listening on {} ({} shards)",
        node.node_id().unwrap_or(0),
        addr,
        node.shard_count()
    );
    let sig = wait_for_signal(&signals);
    tracing::info!(signal = sig, "signal received: draining");
    let report = node.shutdown();
    if report != quark::ShutdownReport::default() {
        eprintln!("quark: shutdown did not complete cleanly: {report:?}");
    }
    println!("quark: stopped");
    Ok(())
}
