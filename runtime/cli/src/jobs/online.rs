//! `quark jobs list|status|cancel|pause|resume|summary|dead-letters --addr HOST:PORT`: a
//! running node's durable jobs, through its admin endpoint's `/quark/jobs` routes (the node
//! needs an `[admin]` table; see `docs/JOBS.md`, "Operating jobs online").
//!
//! Exit codes: 0 done; 1 the node could not be reached, or refused the operation (unknown job
//! or type, a state that does not allow it, no job queue on the node); 2 a usage error
//! (from the argument parser, or input the node answered `400` to, such as a bad state name).

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use quark::admin::{encode_component, ApiError, JobView, JobsPage, JobsSummary, PauseState};

/// Where the node is, and how to print (shared by `quark jobs` and `quark workflows`).
#[derive(clap::Args, Debug)]
pub struct Conn {
    /// The node's admin endpoint (`[admin] listen`), e.g. `127.0.0.1:9100`.
    #[arg(long)]
    addr: String,
    /// Print the endpoint's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Deadline of the connect and of each read, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

impl Conn {
    /// A connection to `addr`.
    pub fn new(addr: String, json: bool, timeout_ms: u64) -> Self {
        Conn {
            addr,
            json,
            timeout_ms,
        }
    }
}

/// `quark jobs list` arguments.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only jobs in this state (blocked, scheduled, queued, running, completed, cancelled, dead).
    #[arg(long)]
    state: Option<String>,
    /// Only jobs of this type.
    #[arg(long = "type", value_name = "TYPE")]
    type_name: Option<String>,
    /// Only jobs with this concurrency key.
    #[arg(long)]
    key: Option<String>,
    /// Page size (1 to 1000; the node's default is 100).
    #[arg(long)]
    limit: Option<usize>,
    /// Start after this job id (the `next cursor` a previous page printed).
    #[arg(long)]
    cursor: Option<String>,
}

/// Arguments naming one job.
#[derive(clap::Args, Debug)]
pub struct IdArgs {
    #[command(flatten)]
    conn: Conn,
    /// The job's id, `shard.sequence` as `list` prints it.
    id: String,
}

/// `quark jobs pause|resume` arguments.
#[derive(clap::Args, Debug)]
pub struct PauseArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only this job type (without it: the whole queue; the two are separate switches).
    #[arg(value_name = "TYPE")]
    type_name: Option<String>,
}

/// `quark jobs summary` arguments.
#[derive(clap::Args, Debug)]
pub struct SummaryArgs {
    #[command(flatten)]
    conn: Conn,
}

/// `quark jobs dead-letters …`.
#[derive(clap::Subcommand, Debug)]
pub enum DeadCommand {
    /// List the dead jobs (filters and paging as `quark jobs list`, without `--state`).
    List(DeadListArgs),
    /// Queue a dead job again, with a fresh attempt budget.
    Replay(IdArgs),
    /// Remove a dead job from the node's log and memory.
    Purge(IdArgs),
}

/// `quark jobs dead-letters list` arguments.
#[derive(clap::Args, Debug)]
pub struct DeadListArgs {
    #[command(flatten)]
    conn: Conn,
    /// Only jobs of this type.
    #[arg(long = "type", value_name = "TYPE")]
    type_name: Option<String>,
    /// Only jobs with this concurrency key.
    #[arg(long)]
    key: Option<String>,
    /// Page size (1 to 1000).
    #[arg(long)]
    limit: Option<usize>,
    /// Start after this job id.
    #[arg(long)]
    cursor: Option<String>,
}

/// Why a command failed: a message and its exit code.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure { code: 1, message }
    }
}

impl From<quark::admin::FetchError> for Failure {
    fn from(e: quark::admin::FetchError) -> Self {
        Failure::from(e.to_string())
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::from(format!("the node's answer is not the expected JSON: {e}"))
    }
}

/// What a command does.
pub enum Online {
    List(ListArgs),
    Status(IdArgs),
    Cancel(IdArgs),
    Pause(PauseArgs, bool),
    Summary(SummaryArgs),
    Dead(DeadCommand),
}

/// Runs an online `quark jobs` command.
pub fn run(cmd: Online) -> ExitCode {
    match run_inner(cmd) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("quark jobs: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run_inner(cmd: Online) -> Result<String, Failure> {
    match cmd {
        Online::List(a) => {
            let q = query(&[
                ("state", a.state),
                ("type", a.type_name),
                ("key", a.key),
                ("limit", a.limit.map(|n| n.to_string())),
                ("cursor", a.cursor),
            ]);
            page(&a.conn, &format!("/quark/jobs{q}"))
        }
        Online::Dead(DeadCommand::List(a)) => {
            let q = query(&[
                ("type", a.type_name),
                ("key", a.key),
                ("limit", a.limit.map(|n| n.to_string())),
                ("cursor", a.cursor),
            ]);
            page(&a.conn, &format!("/quark/jobs/dead-letters{q}"))
        }
        Online::Status(a) => one(&a.conn, "GET", &format!("/quark/jobs/{}", seg(&a.id))),
        Online::Cancel(a) => one(
            &a.conn,
            "POST",
            &format!("/quark/jobs/{}/cancel", seg(&a.id)),
        ),
        Online::Dead(DeadCommand::Replay(a)) => one(
            &a.conn,
            "POST",
            &format!("/quark/jobs/dead-letters/{}/replay", seg(&a.id)),
        ),
        Online::Dead(DeadCommand::Purge(a)) => {
            let body = call(
                &a.conn,
                "POST",
                &format!("/quark/jobs/dead-letters/{}/purge", seg(&a.id)),
            )?;
            if a.conn.json {
                return Ok(body + "\n");
            }
            Ok(format!("purged {}\n", a.id))
        }
        Online::Pause(a, paused) => {
            let q = query(&[("type", a.type_name)]);
            let verb = if paused { "pause" } else { "resume" };
            let body = call(&a.conn, "POST", &format!("/quark/jobs/{verb}{q}"))?;
            if a.conn.json {
                return Ok(body + "\n");
            }
            let p: PauseState = serde_json::from_str(&body)?;
            Ok(pause_line(&p))
        }
        Online::Summary(a) => {
            let body = call(&a.conn, "GET", "/quark/jobs/summary")?;
            if a.conn.json {
                return Ok(body + "\n");
            }
            let s: JobsSummary = serde_json::from_str(&body)?;
            let mut out = String::new();
            for (state, n) in &s.counts {
                let _ = writeln!(out, "{state:<10} {n}");
            }
            out.push_str(&pause_line(&s.paused));
            let _ = writeln!(out, "types: {}", s.types.join(", "));
            Ok(out)
        }
    }
}

fn pause_line(p: &PauseState) -> String {
    let types = if p.types.is_empty() {
        "none".to_owned()
    } else {
        p.types.join(", ")
    };
    format!(
        "queue {}; paused types: {types}\n",
        if p.all { "paused" } else { "running" }
    )
}

/// `?k=v&…` of the values that are set (empty when none is).
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode_component(v))))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

pub fn seg(id: &str) -> String {
    encode_component(id)
}

/// `method path` on the node; the body of a `200`, else the node's error as a [`Failure`].
pub fn call(conn: &Conn, method: &str, path: &str) -> Result<String, Failure> {
    let addr: SocketAddr = conn
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("--addr {}: {e}", conn.addr))?
        .next()
        .ok_or_else(|| format!("--addr {}: resolves to no address", conn.addr))?;
    let timeout = Duration::from_millis(conn.timeout_ms.max(1));
    let r = quark::admin::request(addr, method, path, timeout)?;
    if r.status == 200 {
        return Ok(r.body);
    }
    let message = match serde_json::from_str::<ApiError>(&r.body) {
        Ok(e) => e.error,
        Err(_) => r.body.trim().to_owned(),
    };
    Err(Failure {
        code: if r.status == 400 { 2 } else { 1 },
        message: format!("{} (HTTP {} from {addr})", message, r.status),
    })
}

fn page(conn: &Conn, path: &str) -> Result<String, Failure> {
    let body = call(conn, "GET", path)?;
    if conn.json {
        return Ok(body + "\n");
    }
    let p: JobsPage = serde_json::from_str(&body)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<10} {:>7} {:<16} {:>8} {:>8} {:<16} {:<16} LAST ERROR",
        "ID", "STATE", "ATTEMPT", "TYPE", "PRIORITY", "PROGRESS", "CONCURRENCY KEY", "UNIQUE KEY"
    );
    for j in &p.jobs {
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:>7} {:<16} {:>8} {:>8} {:<16} {:<16} {}",
            j.id,
            j.state,
            j.attempt,
            j.type_name,
            j.priority,
            j.progress,
            j.concurrency_key.as_deref().unwrap_or("-"),
            j.unique_key.as_deref().unwrap_or("-"),
            j.last_error.as_deref().unwrap_or("")
        );
    }
    match &p.next_cursor {
        Some(c) => {
            let _ = writeln!(out, "{} jobs; next page: --cursor {c}", p.jobs.len());
        }
        None => {
            let _ = writeln!(out, "{} jobs; last page", p.jobs.len());
        }
    }
    Ok(out)
}

fn one(conn: &Conn, method: &str, path: &str) -> Result<String, Failure> {
    let body = call(conn, method, path)?;
    if conn.json {
        return Ok(body + "\n");
    }
    let j: JobView = serde_json::from_str(&body)?;
    let mut out = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let _ = writeln!(out, "id          {}", j.id);
    let _ = writeln!(out, "type        {}", j.type_name);
    let _ = writeln!(out, "state       {}", j.state);
    let _ = writeln!(out, "attempt     {}", j.attempt);
    let _ = writeln!(out, "priority    {}", j.priority);
    let _ = writeln!(out, "progress    {}%", j.progress);
    let _ = writeln!(out, "run_at_ms   {}", j.run_at_ms);
    let _ = writeln!(out, "concurrency {}", opt(&j.concurrency_key));
    let _ = writeln!(out, "unique      {}", opt(&j.unique_key));
    let _ = writeln!(out, "last_error  {}", opt(&j.last_error));
    if let Some(n) = j.result_bytes {
        let _ = writeln!(out, "result      {n} bytes");
    }
    if let Some(d) = &j.heartbeat_details {
        let at = j.heartbeat_at_ms.unwrap_or(0);
        let _ = writeln!(out, "heartbeat   {d} (at {at} ms)");
    }
    Ok(out)
}
