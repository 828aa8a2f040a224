//! `quark status --addr HOST:PORT [--json]`: a running node's state, read from its admin
//! endpoint's `/quark/status` (the node needs an `[admin]` table; see `docs/OPERATIONS.md`).
//! Exit codes: 0 printed; 1 the node could not be reached or did not answer with a status;
//! 2 a usage error (from the argument parser).

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use quark::admin::Status;

/// Arguments of `quark status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The node's admin endpoint (`[admin] listen`), e.g. `127.0.0.1:9100`.
    #[arg(long)]
    addr: String,
    /// Print the status document as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Deadline of the connect and of each read, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// Runs `quark status`.
pub fn run(args: Args) -> ExitCode {
    match fetch(&args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quark status: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn fetch(args: &Args) -> anyhow::Result<String> {
    let addr: SocketAddr = args
        .addr
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("--addr {}: {e}", args.addr))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--addr {}: resolves to no address", args.addr))?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let status = quark::admin::fetch_status(addr, timeout)?;
    if args.json {
        return Ok(serde_json::to_string_pretty(&status)? + "\n");
    }
    Ok(table(&status))
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The status as text: a header line, a row per shard, a row per peer.
fn table(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {}  version {}  state {}  uptime {:.0}s  cluster {}",
        opt(s.node_id),
        s.version,
        s.state,
        s.uptime_seconds,
        opt(s.cluster_listen),
    );
    if let Some(e) = &s.stats_error {
        let _ = writeln!(out, "counters missing: {e}");
    }
    let head = [
        "shard",
        "core",
        "pinning",
        "driver",
        "spin_us",
        "live",
        "created",
        "deact",
        "tasks",
        "calls",
        "panics",
        "log_lsn",
        "log_bytes",
        "links_up",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    for sh in &s.shards {
        rows.push(vec![
            sh.shard.to_string(),
            opt(sh.core),
            sh.pinning.clone(),
            sh.driver.clone(),
            opt(sh.idle_spin_us),
            if sh.answered {
                sh.live_activations.to_string()
            } else {
                "?".to_owned()
            },
            sh.activations.to_string(),
            sh.deactivations.to_string(),
            sh.tasks.to_string(),
            sh.calls_in_flight.to_string(),
            sh.panics.to_string(),
            opt(sh.log_next_lsn),
            opt(sh.log_disk_bytes),
            opt(sh.links_up),
        ]);
    }
    push_rows(&mut out, &rows);
    if s.shards.is_empty() {
        let _ = writeln!(out, "(no shard figures while {})", s.state);
    }
    if !s.peers.is_empty() {
        let mut rows = vec![vec![
            "peer".to_owned(),
            "addr".to_owned(),
            "state".to_owned(),
            "app_version".to_owned(),
            "links_up".to_owned(),
        ]];
        for p in &s.peers {
            rows.push(vec![
                p.node_id.to_string(),
                p.addr.to_string(),
                p.state.clone().unwrap_or_else(|| "-".to_owned()),
                p.app_version.clone().unwrap_or_else(|| "-".to_owned()),
                opt(p.links_up),
            ]);
        }
        push_rows(&mut out, &rows);
    }
    out
}

/// Left-aligned columns, two spaces apart.
pub(crate) fn push_rows(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<w$}", w = widths[c]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}
