//! `quark reminders list --actor TYPE/KEY --addr HOST:PORT [--json]`: one actor's durable
//! reminders on a running node, from its admin endpoint's `/quark/reminders` (see
//! `docs/JOBS.md`, "Durable reminders").
//!
//! KEY: decimal digits are a `u64` key, `"..."` a string key (no escapes), `0x` + hex digits a
//! byte key, anything else the string as typed.
//!
//! Exit codes: 0 printed; 1 the node could not be reached or refused (a type not registered
//! for reminders, a node without reminders); 2 a usage error.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use quark::admin::{encode_component, ActorReminders, ApiError};

/// `quark reminders` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: RemindersCommand,
}

#[derive(clap::Subcommand, Debug)]
enum RemindersCommand {
    /// List one actor's reminders on a running node.
    List(ListArgs),
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    /// The actor, `TYPE/KEY` (e.g. `alarm/7`, `invoice/"ann"`, `blob/0x00ff`).
    #[arg(long)]
    actor: String,
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

/// Runs `quark reminders …`.
pub fn run(args: Args) -> ExitCode {
    let RemindersCommand::List(a) = args.command;
    match list(&a) {
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

fn list(a: &ListArgs) -> Result<String, (u8, String)> {
    let (t, key, kind) = parse_actor(&a.actor).map_err(|e| (2, e))?;
    let addr: SocketAddr = a
        .addr
        .to_socket_addrs()
        .map_err(|e| (1, format!("--addr {}: {e}", a.addr)))?
        .next()
        .ok_or_else(|| (1, format!("--addr {}: resolves to no address", a.addr)))?;
    let path = format!(
        "/quark/reminders?type={}&key={}&kind={kind}",
        encode_component(t),
        encode_component(&key)
    );
    let timeout = Duration::from_millis(a.timeout_ms.max(1));
    let r = quark::admin::fetch(addr, &path, timeout).map_err(|e| (1, e.to_string()))?;
    if r.status != 200 {
        let msg = serde_json::from_str::<ApiError>(&r.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| r.body.trim().to_owned());
        let code = if r.status == 400 { 2 } else { 1 };
        return Err((code, format!("{msg} (HTTP {} from {addr})", r.status)));
    }
    if a.json {
        return Ok(r.body + "\n");
    }
    let v: ActorReminders = serde_json::from_str(&r.body).map_err(|e| {
        (
            1,
            format!("the node's answer is not the expected JSON: {e}"),
        )
    })?;
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
