//! `quark reminders list|cancel --addr HOST:PORT`: durable reminders of a running cluster,
//! through a node's admin endpoint (see `docs/JOBS.md`, "Durable reminders"):
//!
//! - `list --actor TYPE/KEY`: one actor's reminders on the node asked (`/quark/reminders?type&key`);
//! - `list [--type T] [--limit N] [--cursor C]`: every actor's reminders on every node of the
//!   cluster, one page (`/quark/reminders?type&limit&cursor`);
//! - `cancel --actor TYPE/KEY --name N`: cancels the reminder wherever it is stored
//!   (`POST /quark/reminders/cancel`).
//!
//! KEY: decimal digits are a `u64` key, `"..."` a string key (no escapes), `0x` + hex digits a
//! byte key, anything else the string as typed.
//!
//! Exit codes: 0 done; 1 the node could not be reached or refused (a type not registered for
//! reminders, a node without reminders, no such reminder to cancel); 2 a usage error.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use quark::admin::{encode_component, ActorReminders, ApiError, CancelledReminder, RemindersPage};

/// `quark reminders` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: RemindersCommand,
}

#[derive(clap::Subcommand, Debug)]
enum RemindersCommand {
    /// List one actor's reminders (`--actor`), or every actor's reminders in the cluster.
    List(ListArgs),
    /// Cancel one actor's reminder by name, wherever it is stored.
    Cancel(CancelArgs),
}

/// Where the node is, and how to print.
#[derive(clap::Args, Debug)]
struct Conn {
    /// The node's admin endpoint (`[admin] listen`), e.g. `127.0.0.1:9100`.
    #[arg(long)]
    addr: String,
    /// Print the endpoint's JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Deadline of the connect and of each read, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    conn: Conn,
    /// One actor, `TYPE/KEY` (e.g. `alarm/7`, `invoice/"ann"`, `blob/0x00ff`); without it,
    /// every actor of the cluster.
    #[arg(long, conflicts_with_all = ["type_name", "limit", "cursor"])]
    actor: Option<String>,
    /// Only actors of this type (the cluster-wide listing).
    #[arg(long = "type", value_name = "TYPE")]
    type_name: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[arg(long)]
    limit: Option<u32>,
    /// Where the page starts: the cursor a previous page printed.
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(clap::Args, Debug)]
struct CancelArgs {
    #[command(flatten)]
    conn: Conn,
    /// The actor, `TYPE/KEY`.
    #[arg(long)]
    actor: String,
    /// The reminder's name.
    #[arg(long)]
    name: String,
}

/// Runs `quark reminders …`.
pub fn run(args: Args) -> ExitCode {
    let r = match &args.command {
        RemindersCommand::List(a) => match &a.actor {
            Some(actor) => list_actor(&a.conn, actor),
            None => list_all(a),
        },
        RemindersCommand::Cancel(a) => cancel(a),
    };
    match r {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err((code, e)) => {
            eprintln!("quark reminders: error: {e}");
            ExitCode::from(code)
        }
    }
}

/// `(type, key, kind)` of `TYPE/KEY`.
fn parse_actor(s: &str) -> Result<(&str, String, &'static str), String> {
    let Some((t, k)) = s.split_once('/') else {
        return Err(format!("--actor {s:?}: expected TYPE/KEY"));
    };
    if t.is_empty() || k.is_empty() {
        return Err(format!("--actor {s:?}: expected TYPE/KEY"));
    }
    if let Some(q) = k.strip_prefix('"') {
        let inner = q
            .strip_suffix('"')
            .ok_or_else(|| format!("--actor {s:?}: the key has no closing quote"))?;
        return Ok((t, inner.to_owned(), "str"));
    }
    if k.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((t, k.to_owned(), "u64"));
    }
    if let Some(h) = k.strip_prefix("0x") {
        return Ok((t, h.to_owned(), "hex"));
    }
    Ok((t, k.to_owned(), "str"))
}

/// Sends `method path` to the node; the body of a `200`, else the exit code and message.
fn call(c: &Conn, method: &str, path: &str) -> Result<String, (u8, String)> {
    let addr: SocketAddr = c
        .addr
        .to_socket_addrs()
        .map_err(|e| (1, format!("--addr {}: {e}", c.addr)))?
        .next()
        .ok_or_else(|| (1, format!("--addr {}: resolves to no address", c.addr)))?;
    let timeout = Duration::from_millis(c.timeout_ms.max(1));
    let r = quark::admin::request(addr, method, path, timeout).map_err(|e| (1, e.to_string()))?;
    if r.status != 200 {
        let msg = serde_json::from_str::<ApiError>(&r.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| r.body.trim().to_owned());
        let code = if r.status == 400 { 2 } else { 1 };
        return Err((code, format!("{msg} (HTTP {} from {addr})", r.status)));
    }
    Ok(r.body)
}

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, (u8, String)> {
    serde_json::from_str(body).map_err(|e| {
        (
            1,
            format!("the node's answer is not the expected JSON: {e}"),
        )
    })
}

fn list_actor(c: &Conn, actor: &str) -> Result<String, (u8, String)> {
    let (t, key, kind) = parse_actor(actor).map_err(|e| (2, e))?;
    let path = format!(
        "/quark/reminders?type={}&key={}&kind={kind}",
        encode_component(t),
        encode_component(&key)
    );
    let body = call(c, "GET", &path)?;
    if c.json {
        return Ok(body + "\n");
    }
    let v: ActorReminders = parse(&body)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>15} {:>12} {:>15}",
        "NAME", "NEXT DUE (ms)", "PERIOD (ms)", "FIRST DUE (ms)"
    );
    for r in &v.reminders {
        let _ = writeln!(
            out,
            "{:<24} {:>15} {:>12} {:>15}",
            r.name, r.next_due_ms, r.period_ms, r.first_due_ms
        );
    }
    let _ = writeln!(out, "{}: {} reminders", v.actor, v.reminders.len());
    Ok(out)
}

fn list_all(a: &ListArgs) -> Result<String, (u8, String)> {
    let mut q = Vec::new();
    if let Some(t) = &a.type_name {
        q.push(format!("type={}", encode_component(t)));
    }
    if let Some(n) = a.limit {
        q.push(format!("limit={n}"));
    }
    if let Some(c) = &a.cursor {
        q.push(format!("cursor={}", encode_component(c)));
    }
    let path = if q.is_empty() {
        "/quark/reminders".to_owned()
    } else {
        format!("/quark/reminders?{}", q.join("&"))
    };
    let body = call(&a.conn, "GET", &path)?;
    if a.conn.json {
        return Ok(body + "\n");
    }
    let v: RemindersPage = parse(&body)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5} {:<24} {:<24} {:>15} {:>12} {:>15}",
        "NODE", "ACTOR", "NAME", "NEXT DUE (ms)", "PERIOD (ms)", "FIRST DUE (ms)"
    );
    for r in &v.reminders {
        let _ = writeln!(
            out,
            "{:>5} {:<24} {:<24} {:>15} {:>12} {:>15}",
            r.node, r.actor, r.name, r.next_due_ms, r.period_ms, r.first_due_ms
        );
    }
    match &v.next_cursor {
        Some(c) => {
            let _ = writeln!(
                out,
                "{} reminders; next page: --cursor {c}",
                v.reminders.len()
            );
        }
        None => {
            let _ = writeln!(out, "{} reminders; last page", v.reminders.len());
        }
    }
    Ok(out)
}

fn cancel(a: &CancelArgs) -> Result<String, (u8, String)> {
    let (t, key, kind) = parse_actor(&a.actor).map_err(|e| (2, e))?;
    if a.name.is_empty() {
        return Err((2, "--name must not be empty".into()));
    }
    let path = format!(
        "/quark/reminders/cancel?type={}&key={}&kind={kind}&name={}",
        encode_component(t),
        encode_component(&key),
        encode_component(&a.name)
    );
    let body = call(&a.conn, "POST", &path)?;
    if a.conn.json {
        return Ok(body + "\n");
    }
    let v: CancelledReminder = parse(&body)?;
    Ok(format!("{}: reminder {:?} cancelled\n", v.actor, v.name))
}
