//! `quark`: the Quark command-line tool.
//!
//! A thin dispatcher: each subcommand lives in its own module with its own `Args` and `run`.
//!
//! - `quark journal inspect|export|verify --data-dir DIR`: read a stopped node's journals
//!   (see `docs/JOURNALING.md`, "The quark journal tool").
//!
//! Exit codes: 0 success, 1 an integrity problem was found (`journal verify`), 2 a usage error
//! or a failure to run (bad arguments, missing or foreign directory, unreadable file).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod journal;

#[derive(Parser, Debug)]
#[command(name = "quark", version, about = "Quark virtual-actor runtime tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect, export and verify the journals in a stopped node's data directory.
    Journal(journal::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Journal(args) => journal::run(args),
    }
}
