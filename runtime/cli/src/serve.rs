//! `quark serve`: runs one node of a cluster with the built-in benchmark actors, until SIGINT
//! or SIGTERM, then drains and stops. The work is [`quark::serve`], which any program can call
//! with its own actor types (see `runtime/examples/my_node.rs`).

use std::path::PathBuf;

use anyhow::Result;

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
    /// How log lines are written to stderr: `text` (human-readable) or `json` (one JSON
    /// object per line, for log shippers; fields in docs/OPERATIONS.md, "Logs").
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The format of the log lines `quark serve` writes to stderr.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colours on a terminal).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`),
    /// `threadName`, and the enclosing spans.
    Json,
}

/// Runs the node.
pub fn run(args: Args) -> Result<()> {
    let options = quark::ServeOptions {
        config: args.config,
        node_id: args.node_id,
    };
    let builder = quark::builtin::register_builtin(quark::Node::builder());
    // The message names what failed; its sources say why, each once.
    quark::serve(builder, &options).map_err(|e| anyhow::anyhow!("{}", quark::ErrorChain(&e)))?;
    Ok(())
}
