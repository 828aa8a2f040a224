//! `quark outbox dead-letters list|replay|purge`: the outbox's dead-letter lists, of a
//! **running** node through its admin endpoint (`--addr`), or of a **stopped** node's data
//! directory (`--data-dir`, offline).
//!
//! - `list`: every shard's dead letters (shard, id, sender, target, message, attempts, times,
//!   cause), as a table or as JSON lines (`--json`). Offline it is read-only: segment files are
//!   read with `quark_persist::inspect_dir` under the directory's shared lock.
//! - `replay --shard N --id ID`: appends the message again to its sender's outbox, under its
//!   replay id (two replays of one dead letter are applied once), and removes it from the list,
//!   in one batch. A running node delivers it at once; offline, the node delivers it when it
//!   starts.
//! - `purge --shard N --id ID`: removes it from the list for good.
//!
//! Online, each command is one request to `/quark/outbox/dead-letters` (the node calls
//! `quark::outbox::Outbox::dead_letters` / `replay` / `purge`). Offline, `replay` and `purge`
//! take the data directory's exclusive lock and open the shard's log (`fsync = "always"`), so a
//! running node's directory is refused.
//!
//! Exit codes: 0 success, 1 no dead letter with that id on that shard (or, online, the node
//! could not be reached or refused), 2 a usage error or a failure to run.

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use quark::admin::{ApiError, DeadLetterDone, DeadLetterView, DeadLettersPage};
use quark::outbox::format::DEAD_LETTER_KEY;
use quark::outbox::offline::{self, OfflineError};
use quark::outbox::{DeadLetter, MessageId};
use quark_persist::{block_on, inspect_dir, Log, LogConfig, RecordKind, StdIo};
use serde::Serialize;

/// `quark outbox` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: OutboxCommand,
}

#[derive(clap::Subcommand, Debug)]
enum OutboxCommand {
    /// The dead-letter lists of a stopped node (list, replay, purge).
    #[command(name = "dead-letters", subcommand)]
    DeadLetters(DeadCommand),
}

#[derive(clap::Subcommand, Debug)]
enum DeadCommand {
    /// List every shard's dead letters.
    List(ListArgs),
    /// Send a dead letter again (when the node starts) and remove it from the list.
    Replay(OneArgs),
    /// Remove a dead letter for good.
    Purge(OneArgs),
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    /// A stopped node's data directory (its `[log] data_dir`, holding `shard-<N>/`), read-only.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "addr",
        conflicts_with = "addr"
    )]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    online: Online,
    /// One JSON object per dead letter instead of a table.
    #[arg(long)]
    json: bool,
}

/// A running node's admin endpoint.
#[derive(clap::Args, Debug)]
struct Online {
    /// A running node's admin endpoint (`[admin] listen`), e.g. `127.0.0.1:9100`.
    #[arg(long)]
    addr: Option<String>,
    /// Deadline of the connect and of each read (with `--addr`), in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(clap::Args, Debug)]
struct OneArgs {
    /// A stopped node's data directory (its `[log] data_dir`).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "addr",
        conflicts_with = "addr"
    )]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    online: Online,
    /// The shard whose list holds it (the `shard` column of `list`).
    #[arg(long)]
    shard: u16,
    /// The dead letter's id as `list` shows it (`<16 hex digits>-<sequence>`).
    #[arg(long)]
    id: MessageId,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// One dead letter, as printed.
#[derive(Serialize, Debug)]
struct Row {
    shard: u16,
    id: String,
    sender: String,
    target: String,
    message: String,
    attempts: u32,
    created_ms: u64,
    dead_ms: u64,
    cause: String,
}

impl From<DeadLetterView> for Row {
    fn from(d: DeadLetterView) -> Row {
        Row {
            shard: d.shard,
            id: d.id,
            sender: d.sender,
            target: d.target,
            message: d.message,
            attempts: d.attempts,
            created_ms: d.created_ms,
            dead_ms: d.dead_ms,
            cause: d.cause,
        }
    }
}

impl From<&DeadLetter> for Row {
    fn from(d: &DeadLetter) -> Row {
        Row {
            shard: d.shard,
            id: d.id.to_string(),
            sender: d.sender.clone(),
            target: d.target.clone(),
            message: d.message.clone(),
            attempts: d.attempts,
            created_ms: d.created_ms,
            dead_ms: d.dead_ms,
            cause: d.cause.clone(),
        }
    }
}

/// Why a run failed: `NotFound` and `Online` exit 1, the rest 2.
enum Failure {
    NotFound(OfflineError),
    /// The node could not be reached, or refused (its message).
    Online(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Other(e.into())
    }
}

/// Runs `quark outbox …`.
pub fn run(args: Args) -> ExitCode {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = match args.command {
        OutboxCommand::DeadLetters(DeadCommand::List(a)) => match (&a.data_dir, &a.online.addr) {
            (Some(dir), _) => list(dir, a.json, &mut out),
            (None, Some(addr)) => online_list(addr, &a, &mut out),
            (None, None) => unreachable!("clap requires --data-dir or --addr"),
        },
        OutboxCommand::DeadLetters(DeadCommand::Replay(a)) => one(&a, true, &mut out),
        OutboxCommand::DeadLetters(DeadCommand::Purge(a)) => one(&a, false, &mut out),
    }
    .and_then(|()| Ok(out.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NotFound(e)) => {
            eprintln!("quark outbox: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Online(e)) => {
            eprintln!("quark outbox: error: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Other(e)) => {
            eprintln!("quark outbox: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `shard-<N>` directories of `data_dir`, by shard.
fn shard_dirs(data_dir: &Path) -> Result<Vec<(u16, PathBuf)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(data_dir).with_context(|| {
        format!(
            "cannot list {} (the node's [log] data_dir)",
            data_dir.display()
        )
    })?;
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", data_dir.display()))?;
        let name = e.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_prefix("shard-")) else {
            continue;
        };
        if let Ok(shard) = n.parse::<u16>() {
            if e.path().is_dir() {
                out.push((shard, e.path()));
            }
        }
    }
    if out.is_empty() {
        bail!(
            "{} holds no shard-<N> directory: is it a node's [log] data_dir?",
            data_dir.display()
        );
    }
    out.sort();
    Ok(out)
}

/// The shard's dead-letter list, read from its segment files (the latest list record).
fn read_list(shard: u16, dir: &Path) -> Result<Vec<DeadLetter>> {
    let inspection = inspect_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut latest: Option<(u64, Vec<u8>)> = None;
    for seg in inspection.segments() {
        let seg = seg.with_context(|| format!("reading {}", dir.display()))?;
        for r in seg.records {
            if r.kind == RecordKind::Snapshot
                && r.key == DEAD_LETTER_KEY
                && latest.as_ref().is_none_or(|(l, _)| r.lsn > *l)
            {
                latest = Some((r.lsn, r.payload));
            }
        }
    }
    match latest {
        None => Ok(Vec::new()),
        Some((lsn, payload)) => offline::decode_dead_letters(shard, &payload).with_context(|| {
            format!(
                "{}: the dead-letter list at LSN {lsn} does not decode",
                dir.display()
            )
        }),
    }
}

fn list(data_dir: &Path, json: bool, out: &mut impl Write) -> Result<(), Failure> {
    let _lock = quark_persist::DirLock::shared(data_dir).with_context(|| {
        format!(
            "quark outbox reads only a stopped node's data directory: stop the node using {} and run it again",
            data_dir.display()
        )
    })?;
    let mut rows = Vec::new();
    for (shard, dir) in shard_dirs(data_dir)? {
        rows.extend(read_list(shard, &dir)?.iter().map(Row::from));
    }
    print_rows(&rows, json, out)
}

fn print_rows(rows: &[Row], json: bool, out: &mut impl Write) -> Result<(), Failure> {
    if json {
        for r in rows {
            writeln!(
                out,
                "{}",
                serde_json::to_string(r).map_err(anyhow::Error::from)?
            )?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:>5} {:<24} {:<20} {:<20} {:<20} {:>8} CAUSE",
        "SHARD", "ID", "SENDER", "TARGET", "MESSAGE", "ATTEMPTS"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:>5} {:<24} {:<20} {:<20} {:<20} {:>8} {}",
            r.shard, r.id, r.sender, r.target, r.message, r.attempts, r.cause
        )?;
    }
    writeln!(out, "{} dead letters", rows.len())?;
    Ok(())
}

/// The segment size of an existing log (the largest segment file), so that it opens as the
/// node wrote it.
fn segment_bytes_in(dir: &Path) -> Result<Option<u64>> {
    let mut best = None;
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        if e.file_name().to_string_lossy().ends_with(".seg") {
            let len = e
                .metadata()
                .with_context(|| format!("cannot stat {}", e.path().display()))?
                .len();
            best = best.max(Some(len));
        }
    }
    Ok(best)
}

fn one(a: &OneArgs, replay: bool, out: &mut impl Write) -> Result<(), Failure> {
    match (&a.data_dir, &a.online.addr) {
        (Some(dir), _) => change(dir, a, replay, out),
        (None, Some(addr)) => online_change(addr, a, replay, out),
        (None, None) => unreachable!("clap requires --data-dir or --addr"),
    }
}

/// Sends `method path` to the node at `addr`; the body of a `200`, else why (a `404` of a
/// dead letter is `NotFound`, exit 1; a `400` a usage error, exit 2; anything else exit 1).
fn call(addr: &str, online: &Online, method: &str, path: &str) -> Result<String, Failure> {
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("--addr {addr}"))
        .map_err(|e| Failure::Online(format!("{e:#}")))?
        .next()
        .ok_or_else(|| Failure::Online(format!("--addr {addr}: resolves to no address")))?;
    let timeout = Duration::from_millis(online.timeout_ms.max(1));
    let r = quark::admin::request(sock, method, path, timeout)
        .map_err(|e| Failure::Online(e.to_string()))?;
    if r.status == 200 {
        return Ok(r.body);
    }
    let msg = serde_json::from_str::<ApiError>(&r.body)
        .map(|e| e.error)
        .unwrap_or_else(|_| r.body.trim().to_owned());
    let msg = format!("{msg} (HTTP {} from {sock})", r.status);
    Err(if r.status == 400 {
        Failure::Other(anyhow::anyhow!(msg))
    } else {
        Failure::Online(msg)
    })
}

fn online_list(addr: &str, a: &ListArgs, out: &mut impl Write) -> Result<(), Failure> {
    let body = call(addr, &a.online, "GET", "/quark/outbox/dead-letters")?;
    let page: DeadLettersPage = serde_json::from_str(&body)
        .map_err(|e| Failure::Online(format!("the node's answer is not the expected JSON: {e}")))?;
    let rows: Vec<Row> = page.dead_letters.into_iter().map(Row::from).collect();
    print_rows(&rows, a.json, out)
}

fn online_change(
    addr: &str,
    a: &OneArgs,
    replay: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let action = if replay { "replay" } else { "purge" };
    let path = format!("/quark/outbox/dead-letters/{}/{}/{action}", a.shard, a.id);
    let body = call(addr, &a.online, "POST", &path)?;
    let done: DeadLetterDone = serde_json::from_str(&body)
        .map_err(|e| Failure::Online(format!("the node's answer is not the expected JSON: {e}")))?;
    if a.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&done).map_err(anyhow::Error::from)?
        )?;
    } else if let Some(rid) = &done.replay_id {
        writeln!(
            out,
            "shard {}: dead letter {} replayed as {rid}",
            done.shard, done.id
        )?;
    } else {
        writeln!(out, "shard {}: dead letter {} purged", done.shard, done.id)?;
    }
    Ok(())
}

fn change(data_dir: &Path, a: &OneArgs, replay: bool, out: &mut impl Write) -> Result<(), Failure> {
    let _lock = quark_persist::DirLock::exclusive(data_dir).with_context(|| {
        format!(
            "quark outbox changes only a stopped node's data directory: stop the node using {} and run it again",
            data_dir.display()
        )
    })?;
    let dir = data_dir.join(format!("shard-{}", a.shard));
    if !dir.is_dir() {
        return Err(
            anyhow::anyhow!("{} does not exist (no shard {})", dir.display(), a.shard).into(),
        );
    }
    let mut config = LogConfig::new(dir.clone(), u32::from(a.shard));
    if let Some(seg) = segment_bytes_in(&dir)? {
        config.segment_bytes = seg;
    }
    let result = block_on(async {
        let (log, _) = Log::open(StdIo, config)
            .await
            .with_context(|| format!("cannot open the log {}", dir.display()))?;
        let r = if replay {
            offline::replay(&log, a.shard, a.id).await.map(Some)
        } else {
            offline::purge(&log, a.shard, a.id).await.map(|()| None)
        };
        let closed = log.close().await;
        let r = r?;
        closed.with_context(|| format!("closing the log {}", dir.display()))?;
        Ok::<_, anyhow::Error>(r)
    });
    let replay_id = match result {
        Ok(r) => r,
        Err(e) => {
            return Err(match e.downcast::<OfflineError>() {
                Ok(e @ OfflineError::NoSuchDeadLetter { .. }) => Failure::NotFound(e),
                Ok(e) => Failure::Other(e.into()),
                Err(e) => Failure::Other(e),
            })
        }
    };
    if a.json {
        #[derive(Serialize)]
        struct Done {
            shard: u16,
            id: String,
            action: &'static str,
            replay_id: Option<String>,
        }
        let done = Done {
            shard: a.shard,
            id: a.id.to_string(),
            action: if replay { "replayed" } else { "purged" },
            replay_id: replay_id.map(|r| r.to_string()),
        };
        writeln!(
            out,
            "{}",
            serde_json::to_string(&done).map_err(anyhow::Error::from)?
        )?;
    } else if let Some(rid) = replay_id {
        writeln!(
            out,
            "shard {}: dead letter {} replayed as {rid}; the node sends it when it starts",
            a.shard, a.id
        )?;
    } else {
        writeln!(out, "shard {}: dead letter {} purged", a.shard, a.id)?;
    }
    Ok(())
}
