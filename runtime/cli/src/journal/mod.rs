//! `quark journal`: reads the journals in a stopped node's data directory, offline.
//!
//! - `inspect`: a summary of every actor's stream, or one actor's events (`--actor`), as a
//!   table or as JSON lines (`--json`).
//! - `export`: every matching event as a JSON line (the format of `inspect --json`).
//! - `verify`: checks every stream's versions and hash chain, the snapshots' chain hashes, and
//!   reports log damage (checksum failures) with file and offset.
//!
//! Files are opened read-only through `quark_persist::inspect_dir`; nothing is written but the
//! directory's lock file: the walk holds a shared `quark_persist::DirLock` on the data
//! directory, so it is refused (with the holder's pid) while a node or `quark data reshard`
//! holds the directory, and readers never see a log a writer is changing.
//! The walk applies the log's liveness rules (snapshot and truncate barriers, compaction
//! copies) itself, so it shows what the runtime would load. Memory: the decoded records of
//! the selected actors (event data only when it is printed).
//!
//! Exit codes: 0 success, 1 `verify` found a broken stream or log damage, 2 a usage error or a
//! failure to run (the message names the directory, file, actor or argument).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};

mod inspect;
mod output;
mod scan;
pub(crate) mod select;
mod time;
mod verify;

use inspect::{ExportArgs, InspectArgs};
use scan::{ActorStream, Scan};
use select::ActorSel;
use verify::VerifyArgs;

/// `quark journal` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: JournalCommand,
}

#[derive(clap::Subcommand, Debug)]
enum JournalCommand {
    /// Summarise every actor's stream, or list one actor's events (`--actor`).
    Inspect(InspectArgs),
    /// Print every matching event as one JSON object per line (as `inspect --json`).
    Export(ExportArgs),
    /// Check versions, hash chains, snapshots and log checksums; exit 1 on any problem.
    Verify(VerifyArgs),
}

#[derive(clap::Args, Debug)]
struct Source {
    /// The node's data directory (its `[log] data_dir`, holding `shard-<N>/`), opened read-only
    /// under a shared lock (refused while a node holds it).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

/// The result of a command that ran to the end.
enum Outcome {
    Clean,
    /// Integrity problems were found and reported.
    Problems,
}

/// Runs `quark journal …` and maps the outcome to the exit code (0, 1 problems, 2 errors).
pub fn run(args: Args) -> ExitCode {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = match args.command {
        JournalCommand::Inspect(a) => inspect::inspect(&a, &mut out),
        JournalCommand::Export(a) => inspect::export(&a, &mut out),
        JournalCommand::Verify(a) => verify::verify(&a, &mut out),
    }
    .and_then(|o| {
        out.flush()?;
        Ok(o)
    });
    match result {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::from(1),
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS // the reader went away (`| head`)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn require_actor<'a>(scan: &'a Scan, sel: &ActorSel, dir: &Path) -> Result<Vec<&'a ActorStream>> {
    let found: Vec<_> = scan.actors.values().collect();
    if found.is_empty() {
        bail!(
            "actor {sel} has no journal records in {} (list the actors with `quark journal \
             inspect --data-dir {}`)",
            dir.display(),
            dir.display()
        );
    }
    Ok(found)
}
