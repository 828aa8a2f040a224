//! `quark data`: offline maintenance of a stopped node's data directory.
//!
//! - `reshard --data-dir DIR --shards N`: moves every journal stream, snapshot and projection
//!   state to the shard that owns it under `N` shards, crash-safely (see `reshard.rs` and
//!   `docs/PERSIST.md`, "Manifest and locking").
//!
//! Takes the directory's exclusive lock: refused while a node or another tool holds it.
//! Exit codes: 0 success (or nothing to do), 2 a usage error or a failure to run (the message
//! names the directory, file or key).

use std::process::ExitCode;

mod reshard;

/// `quark data` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
enum DataCommand {
    /// Move every stream to the shard that owns it under a new shard count (offline,
    /// crash-safe: an interrupted run is finished or undone by the next run or node start).
    Reshard(reshard::ReshardArgs),
}

/// Runs `quark data …`.
pub fn run(args: Args) -> ExitCode {
    let result = match args.command {
        DataCommand::Reshard(a) => reshard::reshard(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
