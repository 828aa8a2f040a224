//! `quark jobs`: a running node's durable jobs through its admin endpoint (`list`, `status`,
//! `cancel`, `pause`, `resume`, `summary`, `dead-letters`; see `online.rs`), and the jobs in a
//! stopped node's data directory, offline (`inspect`).
//!
//! - `inspect`: every job the logs hold (state, attempt, type, keys, last error), as a table
//!   or as JSON lines (`--json`), then the counts per state.
//!
//! Files are opened read-only through `quark_persist::inspect_dir`; nothing is written. The
//! walk applies the log's liveness rules (snapshot and truncate barriers, compaction copies,
//! expiry) itself, so it shows what the node would recover.
//!
//! Exit codes of `inspect`: 0 success, 2 a usage error or a failure to run (the online
//! commands' are in `online.rs`).

pub mod online;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use quark::jobs::record::{self, JobRecord, JOB_KEY_PREFIX};
use quark::jobs::{JobId, JobState};
use quark_persist::{inspect_dir, RecordKind};
use serde::Serialize;

/// `quark jobs` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum JobsCommand {
    /// List the jobs in a stopped node's data directory.
    Inspect(InspectArgs),
    /// List a running node's jobs, one page (filters: state, type, concurrency key).
    List(online::ListArgs),
    /// Show one job of a running node.
    Status(online::IdArgs),
    /// Cancel a queued, scheduled, blocked or running job.
    Cancel(online::IdArgs),
    /// Pause starting jobs (of one type, or the whole queue), durably.
    Pause(online::PauseArgs),
    /// Resume starting jobs (of one type, or the whole queue).
    Resume(online::PauseArgs),
    /// Counts per state, the pause switches and the job types of a running node.
    Summary(online::SummaryArgs),
    /// A running node's dead jobs: list, replay, purge.
    #[command(subcommand)]
    DeadLetters(online::DeadCommand),
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    /// The node's data directory (its `[log] data_dir`, holding `shard-<N>/`), opened read-only.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Only jobs in this state (scheduled, queued, running, completed, cancelled, dead).
    #[arg(long)]
    state: Option<String>,
    /// Only jobs of this type.
    #[arg(long = "type", value_name = "TYPE")]
    type_name: Option<String>,
    /// One JSON object per job instead of a table.
    #[arg(long)]
    json: bool,
}

/// What the logs say about one job.
#[derive(Serialize, Debug, Default)]
struct Job {
    id: String,
    shard: u32,
    state: Option<JobState>,
    type_name: String,
    attempt: u32,
    priority: i32,
    run_at_ms: u64,
    concurrency_key: Option<String>,
    unique_key: Option<String>,
    last_error: Option<String>,
    /// Jobs it waits for.
    waiting_on: Vec<String>,
    records: usize,
}

/// Runs `quark jobs …`.
pub fn run(args: Args) -> ExitCode {
    let inspect_args = match args.command {
        JobsCommand::Inspect(a) => a,
        JobsCommand::List(a) => return online::run(online::Online::List(a)),
        JobsCommand::Status(a) => return online::run(online::Online::Status(a)),
        JobsCommand::Cancel(a) => return online::run(online::Online::Cancel(a)),
        JobsCommand::Pause(a) => return online::run(online::Online::Pause(a, true)),
        JobsCommand::Resume(a) => return online::run(online::Online::Pause(a, false)),
        JobsCommand::Summary(a) => return online::run(online::Online::Summary(a)),
        JobsCommand::DeadLetters(c) => return online::run(online::Online::Dead(c)),
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = inspect(&inspect_args, &mut out).and_then(|()| Ok(out.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quark jobs: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn inspect(a: &InspectArgs, out: &mut impl Write) -> Result<()> {
    let state = match &a.state {
        None => None,
        Some(s) => match JobState::parse(s) {
            Some(st) => Some(st),
            None => bail!(
                "--state {s:?}: expected scheduled, queued, running, completed, cancelled or dead"
            ),
        },
    };
    let mut jobs = read_jobs(&a.data_dir)?;
    jobs.retain(|j| {
        state.is_none_or(|s| j.state == Some(s))
            && a.type_name.as_ref().is_none_or(|t| *t == j.type_name)
    });
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for j in &jobs {
        *counts.entry(state_name(j.state)).or_default() += 1;
    }
    if a.json {
        for j in &jobs {
            writeln!(out, "{}", serde_json::to_string(j)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<14} {:<10} {:>7} {:<16} {:>8} {:<16} {:<16} LAST ERROR",
        "ID", "STATE", "ATTEMPT", "TYPE", "PRIORITY", "CONCURRENCY KEY", "UNIQUE KEY"
    )?;
    for j in &jobs {
        writeln!(
            out,
            "{:<14} {:<10} {:>7} {:<16} {:>8} {:<16} {:<16} {}",
            j.id,
            state_name(j.state),
            j.attempt,
            j.type_name,
            j.priority,
            j.concurrency_key.as_deref().unwrap_or("-"),
            j.unique_key.as_deref().unwrap_or("-"),
            j.last_error.as_deref().unwrap_or("")
        )?;
    }
    writeln!(out, "{} jobs: {:?}", jobs.len(), counts)?;
    Ok(())
}

fn state_name(s: Option<JobState>) -> String {
    match s {
        // A job whose last record is `Started`: it was running when the node stopped.
        Some(s) => format!("{s:?}").to_lowercase(),
        None => "unknown".into(),
    }
}

/// The live job records of every shard, folded into one summary per job.
fn read_jobs(data_dir: &Path) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for (shard, key, live) in live_records(data_dir, |k| k.starts_with(JOB_KEY_PREFIX))? {
        let Some(id) = record::id_of_key(&key) else {
            continue;
        };
        let mut j = Job {
            id: JobId(id).to_string(),
            shard,
            records: live.len(),
            ..Job::default()
        };
        for payload in live.values() {
            match record::decode(payload) {
                Ok(rec) => fold(&mut j, rec),
                Err(e) => j.last_error = Some(format!("undecodable record: {e}")),
            }
        }
        jobs.push(j);
    }
    Ok(jobs)
}

/// One key's live payloads, by origin LSN.
pub(crate) type Live = BTreeMap<u64, Vec<u8>>;

/// The live records of every key `wanted` accepts, in every shard of a stopped node's data
/// directory: `(shard, key, payloads by origin LSN)`, by shard then key. The walk applies the
/// log's liveness rules (snapshot and truncate barriers, compaction copies, expiry) itself, so
/// it shows what the node would recover (also used by `quark workflows history --data-dir`).
pub(crate) fn live_records(
    data_dir: &Path,
    wanted: impl Fn(&[u8]) -> bool,
) -> Result<Vec<(u32, Vec<u8>, Live)>> {
    let mut shards = Vec::new();
    let entries = std::fs::read_dir(data_dir)
        .with_context(|| format!("cannot read the data directory {}", data_dir.display()))?;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("shard-")
            .and_then(|n| n.parse::<u32>().ok())
        {
            shards.push((n, e.path()));
        }
    }
    if shards.is_empty() {
        bail!(
            "{} holds no shard-<N> directory: not a node's data directory",
            data_dir.display()
        );
    }
    shards.sort();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut out = Vec::new();
    for (shard, path) in shards {
        // Per key: the floor, and the live payloads by origin LSN.
        let mut keys: HashMap<Vec<u8>, (u64, Live)> = HashMap::new();
        let dir = inspect_dir(&path).with_context(|| format!("cannot list {}", path.display()))?;
        for seg in dir.segments() {
            let seg =
                seg.with_context(|| format!("cannot read a segment of {}", path.display()))?;
            for r in seg.records {
                if !wanted(&r.key) {
                    continue;
                }
                let (floor, live) = keys.entry(r.key).or_default();
                let origin = r.origin_lsn;
                let raise = |floor: &mut u64, live: &mut BTreeMap<u64, Vec<u8>>, f: u64| {
                    if f > *floor {
                        *floor = f;
                        *live = live.split_off(&f);
                    }
                };
                match r.kind {
                    RecordKind::Truncate => {
                        let bound = r
                            .payload
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes)
                            .unwrap_or(0);
                        raise(floor, live, bound.min(origin));
                    }
                    kind => {
                        if origin < *floor || r.expires_at_ms.is_some_and(|x| x <= now) {
                            if kind == RecordKind::Snapshot {
                                raise(floor, live, origin);
                            }
                            continue;
                        }
                        live.insert(origin, r.payload);
                        if kind == RecordKind::Snapshot {
                            raise(floor, live, origin);
                        }
                    }
                }
            }
        }
        let mut sorted: Vec<(Vec<u8>, Live)> = keys
            .into_iter()
            .filter(|(_, (_, live))| !live.is_empty())
            .map(|(k, (_, live))| (k, live))
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(sorted.into_iter().map(|(k, live)| (shard, k, live)));
    }
    Ok(out)
}

fn fold(j: &mut Job, rec: JobRecord) {
    match rec {
        JobRecord::Enqueued(s) => {
            j.waiting_on = s.depends_on.iter().map(|p| JobId(*p).to_string()).collect();
            j.state = Some(if j.waiting_on.is_empty() {
                JobState::Scheduled
            } else {
                JobState::Blocked
            });
            j.type_name = s.type_name;
            j.priority = s.priority;
            j.run_at_ms = s.run_at_ms;
            j.concurrency_key = s.concurrency_key;
            j.unique_key = s.unique_key;
        }
        JobRecord::Started { attempt, .. } => {
            j.state = Some(JobState::Running);
            j.attempt = attempt;
        }
        JobRecord::Checkpoint { .. } | JobRecord::RerunRequested | JobRecord::Heartbeat { .. } => {}
        JobRecord::ParentDone { parent, .. } => {
            let p = JobId(parent).to_string();
            j.waiting_on.retain(|w| *w != p);
            if j.waiting_on.is_empty() && j.state == Some(JobState::Blocked) {
                j.state = Some(JobState::Scheduled);
            }
        }
        JobRecord::Failed {
            attempt,
            error,
            retry_at_ms,
        } => {
            j.attempt = j.attempt.max(attempt);
            j.last_error = Some(error);
            match retry_at_ms {
                Some(t) => {
                    j.state = Some(JobState::Scheduled);
                    j.run_at_ms = t;
                }
                None => j.state = Some(JobState::Dead),
            }
        }
        JobRecord::Completed { attempt, .. } => {
            j.state = Some(JobState::Completed);
            j.attempt = j.attempt.max(attempt);
        }
        JobRecord::Cancelled { attempt, .. } => {
            j.state = Some(JobState::Cancelled);
            j.attempt = j.attempt.max(attempt);
        }
        JobRecord::Requeued { base, run_at_ms } => {
            j.state = Some(JobState::Scheduled);
            j.attempt = j.attempt.max(base);
            j.run_at_ms = run_at_ms;
        }
    }
}
