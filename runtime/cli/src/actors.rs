//! `quark actors list|counts`: live activations of running nodes, read from their admin
//! endpoints (`/quark/actors`, `/quark/actors/counts`; see `docs/OPERATIONS.md`, "Actor
//! queries").
//!
//! - `quark actors list --addr HOST:PORT [--type T] [--prefix P] [--shard N] [--idle-ms MS]
//!   [--min-bytes B] [--limit N] [--cursor C] [--all] [--json]`: one page (or, with `--all`, every page) of
//!   one node's activations as a table; the next page's cursor is printed last.
//! - `quark actors counts --addr A [--addr B ...] [--json]`: live activations per type and
//!   shard, added up over the nodes given (a cluster's counts when every node is given).
//!
//! - `quark actors where TYPE KEY --addr A [--json]`: the shard an actor lives on, its home
//!   shard, and whether a move is under way (`GET /quark/actors/where`).
//! - `quark actors move TYPE KEY --to-shard N --addr A [--json]`: moves the actor live to
//!   shard `N` of that node and prints the move (`POST /quark/actors/move`; docs/MIGRATION.md).
//!   `--to-node N` instead moves it to node `N` of the cluster (`A` is its home node).
//!
//! KEY reads as in `quark journal`: decimal digits are a u64 key, `"..."` a string key,
//! `0x..` a bytes key, anything else the string as typed.
//!
//! Exit codes: 0 printed; 1 a node could not be reached or refused the query (its message is
//! printed, e.g. an unknown actor type); 2 a usage error (from the argument parser).

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use quark::admin::{ActorCounts, ActorEntry};
use quark::{ActorCursor, ActorQuery};

/// Arguments of `quark actors`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// List a node's live activations (filters are ANDed).
    List(ListArgs),
    /// Live activations per actor type and shard, added up over the nodes given.
    Counts(CountsArgs),
    /// The shard an actor lives on (and its home shard).
    Where(WhereArgs),
    /// Move an actor live to another shard of its node.
    Move(MoveArgs),
}

#[derive(clap::Args, Debug)]
struct WhereArgs {
    /// The actor type (its `TYPE_NAME`).
    actor_type: String,
    /// The key (decimal = u64, "..." = string, 0x.. = bytes, else the string as typed).
    key: String,
    /// The node's admin endpoint (`[admin] listen`), e.g. `127.0.0.1:9100`.
    #[arg(long)]
    addr: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    /// Deadline of the connect and of the read, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(clap::Args, Debug)]
struct MoveArgs {
    /// The actor type (its `TYPE_NAME`; registered as movable or migratable).
    actor_type: String,
    /// The key (decimal = u64, "..." = string, 0x.. = bytes, else the string as typed).
    key: String,
    /// The shard of the node to move it to.
    #[arg(long, required_unless_present = "to_node", conflicts_with = "to_node")]
    to_shard: Option<u16>,
    /// The node of the cluster to move it to (its state moves as bytes: the type must be
    /// registered with `ActorType::migratable`). `--addr` names the actor's home node.
    #[arg(long)]
    to_node: Option<u64>,
    /// The node's admin endpoint (`[admin] listen`), e.g. `127.0.0.1:9100`.
    #[arg(long)]
    addr: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    /// Deadline of the connect and of the read, in milliseconds (the move itself may take up
    /// to the node's `migration_timeout_ms`).
    #[arg(long, default_value_t = 15000)]
    timeout_ms: u64,
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    /// The node's admin endpoint (`[admin] listen`), e.g. `127.0.0.1:9100`.
    #[arg(long)]
    addr: String,
    /// Only this actor type (its `TYPE_NAME`).
    #[arg(long = "type")]
    actor_type: Option<String>,
    /// Only keys whose display form starts with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Only this shard.
    #[arg(long)]
    shard: Option<u16>,
    /// Only activations idle for at least this many milliseconds.
    #[arg(long)]
    idle_ms: Option<u64>,
    /// Only activations whose state is at least this many bytes (the deep size for types with
    /// an `ActorType::memory_size` hook, else the shallow size).
    #[arg(long)]
    min_bytes: Option<usize>,
    /// Rows per page (1 ..= 1000).
    #[arg(long, default_value_t = quark::ACTOR_QUERY_LIMIT_DEFAULT)]
    limit: usize,
    /// Continue after this cursor (the `next` a previous page printed).
    #[arg(long)]
    cursor: Option<String>,
    /// Follow the cursors and print every page.
    #[arg(long)]
    all: bool,
    /// Print the pages as JSON (one document per page, one per line).
    #[arg(long)]
    json: bool,
    /// Deadline of the connect and of each read, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(clap::Args, Debug)]
struct CountsArgs {
    /// A node's admin endpoint; repeat for every node of the cluster.
    #[arg(long, required = true)]
    addr: Vec<String>,
    /// Print the merged counts as JSON.
    #[arg(long)]
    json: bool,
    /// Deadline of the connect and of each read, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// Runs `quark actors`.
pub fn run(args: Args) -> ExitCode {
    let result = match args.command {
        Command::List(a) => list(&a),
        Command::Counts(a) => counts(&a),
        Command::Where(a) => where_is(&a),
        Command::Move(a) => move_actor(&a),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quark actors: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("--addr {addr}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--addr {addr}: resolves to no address"))
}

fn list(args: &ListArgs) -> anyhow::Result<String> {
    let addr = resolve(&args.addr)?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let after = match &args.cursor {
        Some(c) => Some(c.parse::<ActorCursor>()?),
        None => None,
    };
    let mut q = ActorQuery {
        actor_type: args.actor_type.clone(),
        key_prefix: args.prefix.clone(),
        shard: args.shard,
        idle_at_least: args.idle_ms.map(Duration::from_millis),
        state_bytes_at_least: args.min_bytes,
        limit: args.limit,
        after,
    };
    let mut out = String::new();
    let mut rows: Vec<ActorEntry> = Vec::new();
    loop {
        let page = quark::admin::fetch_actors(addr, &q, timeout)?;
        if args.json {
            out.push_str(&serde_json::to_string(&page)?);
            out.push('\n');
        }
        rows.extend(page.rows);
        match page.next {
            Some(next) if args.all => q.after = Some(next.parse()?),
            next => {
                if !args.json {
                    out.push_str(&table(&rows));
                    match next {
                        Some(c) => {
                            let _ = writeln!(out, "next: --cursor {c}");
                        }
                        None => {
                            let _ = writeln!(out, "({} rows, end of listing)", rows.len());
                        }
                    }
                }
                return Ok(out);
            }
        }
    }
}

fn key_arg(key: &str) -> anyhow::Result<quark::ActorKey> {
    crate::journal::select::parse_key(key).map_err(|e| anyhow::anyhow!("KEY: {e}"))
}

fn where_is(args: &WhereArgs) -> anyhow::Result<String> {
    let addr = resolve(&args.addr)?;
    let key = key_arg(&args.key)?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let p = quark::admin::fetch_placement(addr, &args.actor_type, &key, timeout)?;
    if args.json {
        return Ok(serde_json::to_string(&p)? + "\n");
    }
    let home = if p.home == p.shard {
        "its home".to_owned()
    } else {
        format!("home shard {}", p.home)
    };
    let moving = if p.moving { ", moving" } else { "" };
    let node = if p.node == 0 {
        String::new()
    } else {
        format!("node {}, ", p.node)
    };
    Ok(format!(
        "{}/{}: {node}shard {} ({home}{moving})\n",
        p.actor_type, p.key, p.shard
    ))
}

fn move_actor(args: &MoveArgs) -> anyhow::Result<String> {
    let addr = resolve(&args.addr)?;
    let key = key_arg(&args.key)?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let to = match (args.to_shard, args.to_node) {
        (_, Some(n)) => quark::admin::MoveTarget::Node(n),
        (Some(s), None) => quark::admin::MoveTarget::Shard(s),
        (None, None) => anyhow::bail!("--to-shard N or --to-node N is required"),
    };
    let m = quark::admin::request_move(addr, &args.actor_type, &key, to, timeout)?;
    if args.json {
        return Ok(serde_json::to_string(&m)? + "\n");
    }
    if let quark::admin::MoveTarget::Node(_) = to {
        if m.from_node == m.to_node {
            return Ok(format!(
                "{}/{}: already on node {}\n",
                m.actor_type, m.key, m.to_node
            ));
        }
        return Ok(format!(
            "{}/{}: moved from node {} to node {} in {} µs ({} bytes of state sent)\n",
            m.actor_type, m.key, m.from_node, m.to_node, m.duration_us, m.bytes
        ));
    }
    if m.from == m.to {
        return Ok(format!(
            "{}/{}: already on shard {}\n",
            m.actor_type, m.key, m.to
        ));
    }
    Ok(format!(
        "{}/{}: moved from shard {} to shard {} in {} µs ({} bytes of state serialized)\n",
        m.actor_type, m.key, m.from, m.to, m.duration_us, m.bytes
    ))
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn table(rows: &[ActorEntry]) -> String {
    let head = [
        "shard",
        "type",
        "key",
        "idle_ms",
        "mailbox",
        "workers",
        "stateless",
        "bytes_shallow",
        "bytes",
    ];
    let mut cells: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        cells.push(vec![
            r.shard.to_string(),
            r.actor_type.clone(),
            r.key.clone(),
            opt(r.idle_ms),
            r.mailbox_len.to_string(),
            r.workers.to_string(),
            if r.stateless_worker { "yes" } else { "no" }.to_owned(),
            r.state_bytes_shallow.to_string(),
            if r.state_bytes_deep {
                format!("{} (deep)", r.state_bytes)
            } else {
                r.state_bytes.to_string()
            },
        ]);
    }
    columns(&cells)
}

fn counts(args: &CountsArgs) -> anyhow::Result<String> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let mut all = Vec::new();
    for a in &args.addr {
        let addr = resolve(a)?;
        all.push(quark::admin::fetch_actor_counts(addr, timeout)?);
    }
    let merged = ActorCounts::merge(&all);
    if args.json {
        return Ok(serde_json::to_string_pretty(&merged)? + "\n");
    }
    let shards = merged
        .types
        .iter()
        .map(|t| t.per_shard.len())
        .max()
        .unwrap_or(0);
    let mut cells: Vec<Vec<String>> = vec![["type", "total"]
        .iter()
        .map(|h| h.to_string())
        .chain((0..shards).map(|s| format!("shard{s}")))
        .collect()];
    for t in &merged.types {
        cells.push(
            [t.actor_type.clone(), t.total.to_string()]
                .into_iter()
                .chain((0..shards).map(|s| t.per_shard.get(s).copied().unwrap_or(0).to_string()))
                .collect(),
        );
    }
    let mut out = format!("nodes {}\n", args.addr.len());
    out.push_str(&columns(&cells));
    Ok(out)
}

/// Left-aligned columns, two spaces apart (the layout of `quark status`).
fn columns(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    crate::status::push_rows(&mut out, rows);
    out
}
