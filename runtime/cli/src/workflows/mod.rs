//! `quark workflows`: a running node's workflow instances through its admin endpoint's
//! `/quark/workflows` routes (`start`, `status`, `history`, `raise`, `cancel`, `terminate`,
//! `purge`, `list`), and an instance's history read offline from a stopped node's data
//! directory (`history --data-dir`). Inputs, outputs and event payloads are JSON: the node
//! converts them with the codecs registered with the orchestration and the event
//! (`docs/WORKFLOWS.md`, "The quark workflows tool").
//!
//! Exit codes: 0 done; 1 the node could not be reached or refused the operation (unknown
//! instance or orchestration, a state that does not allow it), or the instance is not in the
//! data directory; 2 a usage error or input the node answered `400` to (JSON that does not fit
//! the type, a bad state name), or a data directory that cannot be read.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use quark::admin::{WorkflowHistory, WorkflowStarted, WorkflowView, WorkflowsPage};
use quark::workflow::history::{decode_record, instance_key, HistoryEvent};

use crate::jobs::online::{call, query, seg, Conn, Failure};

/// `quark workflows` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: WfCommand,
}

#[derive(clap::Subcommand, Debug)]
enum WfCommand {
    /// Start an instance (an id that exists is not started again: its instance is shown).
    Start(StartArgs),
    /// Show one instance (state, output as JSON, history size).
    Status(IdArgs),
    /// An instance's history: from a running node (`--addr`) or offline from a stopped
    /// node's data directory (`--data-dir`).
    History(HistoryArgs),
    /// Raise an event for a running instance, with a JSON payload.
    Raise(RaiseArgs),
    /// Cancel a running instance (and its children).
    Cancel(IdArgs),
    /// Terminate a running instance (its children keep running).
    Terminate(IdArgs),
    /// Remove a finished instance's history; its id can be started again.
    Purge(IdArgs),
    /// List instances, one page, by id (filters: state, orchestration name).
    List(ListArgs),
}

#[derive(clap::Args, Debug)]
struct IdArgs {
    #[command(flatten)]
    conn: Conn,
    /// The instance id.
    id: String,
}

#[derive(clap::Args, Debug)]
struct StartArgs {
    #[command(flatten)]
    conn: Conn,
    /// The orchestration's registered name.
    name: String,
    /// The instance id.
    id: String,
    /// The input as JSON (the orchestration's input type, converted by the node).
    #[arg(long, default_value = "null")]
    input: String,
    /// Run this registered version (default: the newest).
    #[arg(long)]
    version: Option<u32>,
}

#[derive(clap::Args, Debug)]
struct RaiseArgs {
    #[command(flatten)]
    conn: Conn,
    /// The instance id.
    id: String,
    /// The event name.
    event: String,
    /// The payload as JSON (the event's registered type, converted by the node).
    #[arg(long, default_value = "null")]
    payload: String,
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only instances in this state (running, completed, failed, non_deterministic,
    /// cancelled, terminated).
    #[arg(long)]
    state: Option<String>,
    /// Only instances of this orchestration.
    #[arg(long)]
    name: Option<String>,
    /// Page size (1 to 1000; the node's default is 100).
    #[arg(long)]
    limit: Option<usize>,
    /// Start after this instance id (the `next cursor` a previous page printed).
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(clap::Args, Debug)]
struct HistoryArgs {
    /// The node's admin endpoint (`[admin] listen`); or give `--data-dir`.
    #[arg(
        long,
        conflicts_with = "data_dir",
        required_unless_present = "data_dir"
    )]
    addr: Option<String>,
    /// A stopped node's data directory (its `[log] data_dir`), read-only.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// One JSON object per record (the export `replay_check` reads) instead of a table.
    #[arg(long)]
    json: bool,
    /// Deadline of the connect and of each read, in milliseconds (with `--addr`).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// The instance id.
    id: String,
}

/// Runs `quark workflows …`.
pub fn run(args: Args) -> ExitCode {
    match run_inner(args.command) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("quark workflows: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run_inner(cmd: WfCommand) -> Result<String, Failure> {
    match cmd {
        WfCommand::Start(a) => {
            let q = query(&[
                ("name", Some(a.name)),
                ("input", Some(a.input)),
                ("version", a.version.map(|v| v.to_string())),
            ]);
            let body = call(
                &a.conn,
                "POST",
                &format!("/quark/workflows/{}/start{q}", seg(&a.id)),
            )?;
            if a.conn.json {
                return Ok(body + "\n");
            }
            let s: WorkflowStarted = serde_json::from_str(&body)?;
            Ok(format!(
                "{} {} ({} v{})\n",
                if s.existed { "exists" } else { "started" },
                s.instance,
                s.name,
                s.version
            ))
        }
        WfCommand::Status(a) => view(&a.conn, "GET", &format!("/quark/workflows/{}", seg(&a.id))),
        WfCommand::Cancel(a) => view(
            &a.conn,
            "POST",
            &format!("/quark/workflows/{}/cancel", seg(&a.id)),
        ),
        WfCommand::Terminate(a) => view(
            &a.conn,
            "POST",
            &format!("/quark/workflows/{}/terminate", seg(&a.id)),
        ),
        WfCommand::Purge(a) => {
            let body = call(
                &a.conn,
                "POST",
                &format!("/quark/workflows/{}/purge", seg(&a.id)),
            )?;
            if a.conn.json {
                return Ok(body + "\n");
            }
            Ok(format!("purged {}\n", a.id))
        }
        WfCommand::Raise(a) => {
            let q = query(&[
                ("event", Some(a.event.clone())),
                ("payload", Some(a.payload)),
            ]);
            let body = call(
                &a.conn,
                "POST",
                &format!("/quark/workflows/{}/raise{q}", seg(&a.id)),
            )?;
            if a.conn.json {
                return Ok(body + "\n");
            }
            Ok(format!("raised {} for {}\n", a.event, a.id))
        }
        WfCommand::List(a) => {
            let q = query(&[
                ("state", a.state),
                ("name", a.name),
                ("limit", a.limit.map(|n| n.to_string())),
                ("cursor", a.cursor),
            ]);
            let body = call(&a.conn, "GET", &format!("/quark/workflows{q}"))?;
            if a.conn.json {
                return Ok(body + "\n");
            }
            let p: WorkflowsPage = serde_json::from_str(&body)?;
            let mut out = String::new();
            let _ = writeln!(out, "{:<32} {:<20} STATE", "ID", "ORCHESTRATION");
            for i in &p.instances {
                let _ = writeln!(out, "{:<32} {:<20} {}", i.id, i.name, i.state);
            }
            match &p.next_cursor {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "{} instances; next page: --cursor {c}",
                        p.instances.len()
                    );
                }
                None => {
                    let _ = writeln!(out, "{} instances; last page", p.instances.len());
                }
            }
            Ok(out)
        }
        WfCommand::History(a) => {
            let events: Vec<HistoryEvent> = match (&a.addr, &a.data_dir) {
                (Some(addr), _) => {
                    let conn = Conn::new(addr.clone(), true, a.timeout_ms);
                    let body = call(
                        &conn,
                        "GET",
                        &format!("/quark/workflows/{}/history", seg(&a.id)),
                    )?;
                    let h: WorkflowHistory = serde_json::from_str(&body)?;
                    h.events
                }
                (None, Some(dir)) => offline_history(dir, &a.id)?,
                (None, None) => {
                    return Err(Failure {
                        code: 2,
                        message: "give --addr or --data-dir".into(),
                    })
                }
            };
            let mut out = String::new();
            if a.json {
                for e in &events {
                    let _ = writeln!(out, "{}", serde_json::to_string(e)?);
                }
            } else {
                for (i, e) in events.iter().enumerate() {
                    let _ = writeln!(out, "{i:>5} {}", describe(e));
                }
            }
            Ok(out)
        }
    }
}

/// One record in a line: its kind and its fields (byte fields as sizes).
fn describe(e: &HistoryEvent) -> String {
    let res = |r: &Result<Vec<u8>, String>| match r {
        Ok(b) => format!("ok ({} bytes)", b.len()),
        Err(e) => format!("error: {e}"),
    };
    let detail = match e {
        HistoryEvent::Started {
            name,
            version,
            run,
            parent,
            ..
        } => format!(
            "{name} v{version} run {run}{}",
            parent
                .as_ref()
                .map(|p| format!(" (child of {p})"))
                .unwrap_or_default()
        ),
        HistoryEvent::Scheduled {
            seq,
            step,
            fire_at_ms,
            ..
        } => format!(
            "step {seq}: {step}{}",
            fire_at_ms
                .map(|t| format!(", fires at {t} ms"))
                .unwrap_or_default()
        ),
        HistoryEvent::ActivityDone { seq, result, .. }
        | HistoryEvent::ChildDone { seq, result, .. }
        | HistoryEvent::ActorReplied { seq, result, .. } => format!("step {seq}: {}", res(result)),
        HistoryEvent::ActivityJob { seq, job } => {
            format!("step {seq}: job {}", quark::jobs::JobId(*job))
        }
        HistoryEvent::TimerFired { seq, .. } => format!("step {seq}"),
        HistoryEvent::EventRaised { name, payload, .. } => {
            format!("{name:?} ({} bytes)", payload.len())
        }
        HistoryEvent::Chosen { seq, index } => format!("step {seq}: branch {index}"),
        HistoryEvent::Patched { id } => format!("{id:?}"),
        HistoryEvent::Finished { state, output, .. } => {
            format!("{}: {}", state.name(), res(output))
        }
    };
    format!("{:<14} {detail}", e.kind_name())
}

/// `method path`, then the answer as an instance view (a table, or the JSON with `--json`).
fn view(conn: &Conn, method: &str, path: &str) -> Result<String, Failure> {
    let body = call(conn, method, path)?;
    if conn.json {
        return Ok(body + "\n");
    }
    let v: WorkflowView = serde_json::from_str(&body)?;
    let mut out = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let _ = writeln!(out, "id             {}", v.id);
    let _ = writeln!(out, "orchestration  {} v{}", v.name, v.version);
    let _ = writeln!(out, "run            {}", v.run);
    let _ = writeln!(out, "state          {}", v.state);
    let _ = writeln!(out, "parent         {}", opt(&v.parent));
    let _ = writeln!(out, "started_ms     {}", v.started_ms);
    let _ = writeln!(
        out,
        "finished_ms    {}",
        v.finished_ms.map_or("-".to_owned(), |t| t.to_string())
    );
    if let Some(o) = &v.output {
        let _ = writeln!(out, "output         {o}");
    }
    let _ = writeln!(out, "error          {}", opt(&v.error));
    let _ = writeln!(
        out,
        "history        {} records, {} bytes",
        v.history_events, v.history_bytes
    );
    let _ = writeln!(out, "pending_steps  {}", v.pending_steps);
    Ok(out)
}

/// The current run's records of `id` in a stopped node's data directory (the log's liveness
/// rules applied: a purge's truncate and a `continue_as_new` snapshot hide what came before).
fn offline_history(dir: &std::path::Path, id: &str) -> Result<Vec<HistoryEvent>, Failure> {
    let key = instance_key(id);
    let usage = |e: anyhow::Error| Failure {
        code: 2,
        message: format!("{e:#}"),
    };
    let found = crate::jobs::live_records(dir, |k| k == key.as_slice()).map_err(usage)?;
    let mut by_key: HashMap<Vec<u8>, BTreeMap<u64, Vec<u8>>> = HashMap::new();
    for (_, k, live) in found {
        by_key.entry(k).or_default().extend(live);
    }
    let Some(live) = by_key.remove(key.as_slice()) else {
        return Err(Failure::from(format!(
            "workflow instance {id:?} is not in {} (never started, or purged)",
            dir.display()
        )));
    };
    live.into_values()
        .map(|p| {
            decode_record(&p).map_err(|e| {
                Failure::from(format!("a history record of {id:?} does not decode: {e}"))
            })
        })
        .collect()
}
