//! `quark`: the Quark command line.
//!
//! - `quark serve --config quark.toml [--log-format json]`: runs a node (see `docs/CLUSTER.md`;
//!   the log format in `docs/OPERATIONS.md`).
//! - `quark journal inspect|export|verify --data-dir DIR`: reads a stopped node's journals (see
//!   `docs/JOURNALING.md`, "The quark journal tool").
//! - `quark data reshard --data-dir DIR --shards N`: moves a stopped node's data to a new shard
//!   count (see `docs/PERSIST.md`, "Manifest and locking").
//! - `quark status --addr HOST:PORT [--json]`: a running node's status from its admin endpoint
//!   (see `docs/OPERATIONS.md`); exit 1 when it cannot be read.
//! - `quark actors list --addr HOST:PORT [filters] [--json]` and `quark actors counts --addr A
//!   [--addr B ..]`: a running node's live activations, and per-type counts over several nodes
//!   (`docs/OPERATIONS.md`, "Actor queries"); exit 1 when a node cannot be read.
//! - `quark jobs inspect --data-dir DIR`: lists a stopped node's durable jobs; `quark jobs
//!   list|status|cancel|pause|resume|summary|dead-letters --addr HOST:PORT`: a running node's,
//!   through its admin endpoint (`docs/JOBS.md`).
//! - `quark reminders list [--actor TYPE/KEY] --addr HOST:PORT` and `quark reminders cancel`:
//!   one actor's reminders, every actor's reminders in the cluster, or a cancellation, on a
//!   running cluster (`docs/JOBS.md`).
//! - `quark outbox dead-letters list|replay|purge --data-dir DIR`: a stopped node's outbox
//!   dead letters (`docs/OUTBOX.md`); exit 1 when the named dead letter is not there.
//! - `quark workflows start|status|history|raise|cancel|terminate|purge|list --addr HOST:PORT`:
//!   a running node's workflow instances, JSON in and out; `quark workflows history --data-dir
//!   DIR ID`: an instance's history in a stopped node's data directory (`docs/WORKFLOWS.md`).
//!
//! Each subcommand lives in its own module next to this file; this file only dispatches.
//! Exit codes: 0 success; `serve` 1 on failure; `journal` 1 when an integrity problem was found,
//! 2 for a usage error or a failure to run (bad arguments, missing directory, unreadable file,
//! a directory locked by a running node); `data` 2 for any failure.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod actors;
mod data;
mod jobs;
mod journal;
mod outbox;
mod reminders;
mod serve;
mod status;
mod workflows;

#[derive(Parser, Debug)]
#[command(
    name = "quark",
    version,
    about = "Quark: a thread-per-core virtual-actor runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// HTTPS to the admin endpoint (`[admin] tls = true`): the CA certificate (PEM) its
    /// certificate must chain to (the cluster's `[cluster.tls] ca`). Also `QUARK_ADMIN_CA`.
    #[arg(long, global = true, value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    /// With `--ca`: this client's certificate (PEM, signed by the cluster's CA), for an
    /// endpoint with `admin.client_cert_required = true`. Also `QUARK_ADMIN_CERT`.
    #[arg(long, global = true, value_name = "PEM")]
    cert: Option<std::path::PathBuf>,
    /// The private key of `--cert` (PEM; not `--key`, which `quark jobs` uses for the
    /// concurrency key). Also `QUARK_ADMIN_KEY`.
    #[arg(long, global = true, value_name = "PEM")]
    cert_key: Option<std::path::PathBuf>,
}

/// `--ca`, `--cert`, `--cert-key` (or their environment variables): every admin request of
/// this process speaks HTTPS.
fn admin_tls(cli: &Cli) -> Result<(), String> {
    let pick = |arg: &Option<std::path::PathBuf>, var: &str| {
        arg.clone()
            .or_else(|| std::env::var_os(var).map(std::path::PathBuf::from))
    };
    let ca = pick(&cli.ca, "QUARK_ADMIN_CA");
    let cert = pick(&cli.cert, "QUARK_ADMIN_CERT");
    let key = pick(&cli.cert_key, "QUARK_ADMIN_KEY");
    let Some(ca) = ca else {
        if cert.is_some() || key.is_some() {
            return Err("--cert and --cert-key need --ca (HTTPS to the admin endpoint)".into());
        }
        return Ok(());
    };
    let identity = match (&cert, &key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => return Err("--cert and --cert-key go together".into()),
    };
    let tls = quark::tls::TlsClient::load(&ca, identity)
        .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
    quark::admin::set_client_tls(tls);
    Ok(())
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node with the built-in benchmark actors (echo, counter, kv).
    Serve(serve::Args),
    /// Inspect, export and verify the journals in a stopped node's data directory.
    Journal(journal::Args),
    /// Offline maintenance of a stopped node's data directory (`reshard`).
    Data(data::Args),
    /// Print a running node's status from its admin endpoint (`[admin]`).
    Status(status::Args),
    /// List a running node's live activations, or count them per type across nodes.
    Actors(actors::Args),
    /// A running node's durable jobs (via `[admin]`), or a stopped node's (`inspect`).
    Jobs(jobs::Args),
    /// The outbox's dead letters in a stopped node's data directory (list, replay, purge).
    Outbox(outbox::Args),
    /// A running cluster's durable reminders: list, cancel (via a node's `[admin]`).
    Reminders(reminders::Args),
    /// A running node's workflow instances (via `[admin]`), or an instance's history in a
    /// stopped node's data directory.
    Workflows(workflows::Args),
}

/// Installs the log subscriber: `RUST_LOG` filters (default `info`), lines go to stderr.
fn init_logs(format: serve::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        serve::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        serve::LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_thread_names(true)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => serve::LogFormat::Text,
    });
    if let Err(e) = admin_tls(&cli) {
        eprintln!("quark: error: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Serve(args) => match serve::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("quark: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Journal(args) => journal::run(args),
        Command::Data(args) => data::run(args),
        Command::Status(args) => status::run(args),
        Command::Actors(args) => actors::run(args),
        Command::Jobs(args) => jobs::run(args),
        Command::Outbox(args) => outbox::run(args),
        Command::Reminders(args) => reminders::run(args),
        Command::Workflows(args) => workflows::run(args),
    }
}
