//! `quark`: the Quark command line.
//!
//! - `quark serve --config quark.toml`: runs a node (see `docs/CLUSTER.md`).
//!
//! Each subcommand lives in its own module next to this file; this file only dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod serve;

#[derive(Parser, Debug)]
#[command(
    name = "quark",
    about = "Quark: a thread-per-core virtual-actor runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node with the built-in benchmark actors (echo, counter, kv).
    Serve(serve::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quark: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
