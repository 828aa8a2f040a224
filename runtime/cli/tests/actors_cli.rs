//! `quark actors list|counts` against running nodes: the table, the JSON, paging with
//! `--all` and `--cursor`, per-type counts added up over a two-node cluster, and the errors.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use quark::admin::ActorsPage;
use quark::builtin::{Add, Counter};
use quark::{ActorQuery, Node, NodeConfig};

#[path = "../../tests/ports/mod.rs"]
mod ports;

fn quark(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(args)
        .output()
        .expect("run the quark binary")
}

fn stdout(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Two clustered nodes of 2 shards, each with an admin endpoint.
fn cluster() -> Vec<Node> {
    let addrs = ports::free_addrs(2);
    let mut members = String::new();
    for (i, a) in addrs.iter().enumerate() {
        members.push_str(&format!(
            "[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    (1..=2)
        .map(|id| {
            let text = format!(
                "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\
                 [cluster]\ncluster_id = \"actors-cli\"\nnode_id = {id}\n{members}",
            );
            let config = NodeConfig::from_toml(&text, "actors.toml").unwrap();
            quark::builtin::register_builtin(Node::builder().config(config))
                .start()
                .unwrap()
        })
        .collect()
}

#[test]
fn quark_actors_lists_pages_and_counts_across_the_cluster() {
    let nodes = cluster();
    // Every counter key 0..40 from node 1: each lands on its owner node (asks to node 2 are
    // retried until its link is up).
    let deadline = Instant::now() + Duration::from_secs(20);
    for k in 0..40u64 {
        let r = nodes[0].actor_ref::<Counter>(k);
        while quark::block_on(r.ask(Add(1))).is_err() {
            assert!(Instant::now() < deadline, "key {k} never answered");
            std::thread::yield_now();
        }
    }
    let per_node: Vec<u64> = nodes
        .iter()
        .map(|n| n.stats().unwrap().iter().map(|s| s.live_activations).sum())
        .collect();
    assert_eq!(per_node.iter().sum::<u64>(), 40, "{per_node:?}");
    assert!(
        per_node.iter().all(|n| *n > 0),
        "both nodes own keys: {per_node:?}"
    );
    let a1 = nodes[0].admin_addr().unwrap().to_string();
    let a2 = nodes[1].admin_addr().unwrap().to_string();

    // The table of node 1: a header, one row per activation, the end line.
    let text = stdout(&quark(&["actors", "list", "--addr", &a1]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("shard  type"), "{text}");
    let want = nodes[0].actors(&ActorQuery::default()).unwrap().rows;
    assert_eq!(lines.len(), want.len() + 2, "{text}");
    for (line, row) in lines[1..].iter().zip(&want) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            (cells[0], cells[1], cells[2]),
            (
                row.shard.to_string().as_str(),
                "counter",
                row.key.to_string().as_str()
            ),
            "{text}"
        );
        assert_eq!((cells[4], cells[5], cells[6]), ("0", "1", "no"), "{text}");
    }
    assert_eq!(
        *lines.last().unwrap(),
        format!("({} rows, end of listing)", want.len())
    );

    // Pages of 3: the first page prints the cursor, `--cursor` continues, `--all` follows
    // every cursor; JSON with `--json`.
    let text = stdout(&quark(&["actors", "list", "--addr", &a1, "--limit", "3"]));
    let next = text
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("next: --cursor "))
        .unwrap_or_else(|| panic!("no cursor line in {text}"))
        .to_owned();
    let out = quark(&[
        "actors", "list", "--addr", &a1, "--limit", "3", "--cursor", &next, "--json",
    ]);
    let second: ActorsPage = serde_json::from_str(stdout(&out).trim()).unwrap();
    let keys =
        |rows: &[quark::admin::ActorEntry]| rows.iter().map(|r| r.key.clone()).collect::<Vec<_>>();
    let want_keys: Vec<String> = want.iter().map(|r| r.key.to_string()).collect();
    assert_eq!(keys(&second.rows), want_keys[3..6].to_vec());
    let out = quark(&[
        "actors", "list", "--addr", &a1, "--limit", "4", "--all", "--json",
    ]);
    let pages: Vec<ActorsPage> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One row more is read than a page holds, so an exact multiple ends without an empty page.
    assert_eq!(pages.len(), want.len().div_ceil(4).max(1));
    let every: Vec<String> = pages.iter().flat_map(|p| keys(&p.rows)).collect();
    assert_eq!(every, want_keys, "--all lists every row once, in order");

    // A filter: shard 1 of node 2.
    let out = quark(&[
        "actors", "list", "--addr", &a2, "--shard", "1", "--json", "--limit", "1000",
    ]);
    let page: ActorsPage = serde_json::from_str(stdout(&out).trim()).unwrap();
    let want2: Vec<String> = nodes[1]
        .actors(&ActorQuery {
            shard: Some(1),
            ..ActorQuery::default()
        })
        .unwrap()
        .rows
        .iter()
        .map(|r| r.key.to_string())
        .collect();
    assert_eq!(keys(&page.rows), want2);
    assert!(page.rows.iter().all(|r| r.shard == 1));

    // Counts over both nodes: per type, per shard, summed.
    let out = quark(&["actors", "counts", "--addr", &a1, "--addr", &a2, "--json"]);
    let merged: quark::admin::ActorCounts = serde_json::from_str(&stdout(&out)).unwrap();
    let counter = merged
        .types
        .iter()
        .find(|t| t.actor_type == "counter")
        .unwrap();
    assert_eq!(counter.total, 40);
    let mut by_shard: BTreeMap<usize, u64> = BTreeMap::new();
    for n in &nodes {
        for s in n.stats().unwrap() {
            let live = s
                .live_per_type
                .iter()
                .find(|(t, _)| *t == "counter")
                .unwrap()
                .1;
            *by_shard.entry(usize::from(s.shard)).or_default() += live;
        }
    }
    assert_eq!(
        counter.per_shard,
        by_shard.values().copied().collect::<Vec<_>>()
    );
    let text = stdout(&quark(&["actors", "counts", "--addr", &a1, "--addr", &a2]));
    assert!(text.starts_with("nodes 2\ntype"), "{text}");
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("counter"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "40", "{text}");

    // Refusals: the node's message, exit 1.
    let out = quark(&["actors", "list", "--addr", &a1, "--type", "cart"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 400") && err.contains("actor type \"cart\" is not registered"),
        "{err}"
    );
    let out = quark(&["actors", "list", "--addr", &a1, "--cursor", "nonsense"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad actor cursor"));
    for n in nodes {
        n.shutdown();
    }
    let out = quark(&["actors", "counts", "--addr", &a1, "--timeout-ms", "2000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&a1));
}

/// A counter whose activations may move between shards (docs/MIGRATION.md).
struct Movable(u64);
impl quark::Actor for Movable {
    const TYPE_NAME: &'static str = "cli-movable";
}
struct Inc;
impl quark::Message for Inc {
    type Reply = u64;
}
impl quark::Handler<Inc> for Movable {
    async fn handle(&mut self, _: Inc, _: &quark::Context<Self>) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// `quark actors where` and `quark actors move` against a running node: the actor moves to
/// the shard asked for with its state, `where` follows it, and a type that cannot move (or
/// an unknown one) is refused with the node's message and exit code 1.
#[test]
fn quark_actors_where_and_move() {
    let text = "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
                [admin]\nlisten = \"127.0.0.1:0\"\n";
    let config = NodeConfig::from_toml(text, "move.toml").unwrap();
    let node = quark::builtin::register_builtin(Node::builder().config(config))
        .register(quark::ActorType::new(|_| Movable(0)).movable())
        .start()
        .unwrap();
    let addr = node.admin_addr().unwrap().to_string();
    let r = node.actor_ref::<Movable>(5u64);
    assert_eq!(quark::block_on(r.ask(Inc)), Ok(1));
    let home = r.owner_shard();
    let away = 1 - home;
    let out = stdout(&quark(&[
        "actors",
        "where",
        "cli-movable",
        "5",
        "--addr",
        &addr,
    ]));
    assert_eq!(out, format!("cli-movable/5: shard {home} (its home)\n"));
    let to = away.to_string();
    let out = stdout(&quark(&[
        "actors",
        "move",
        "cli-movable",
        "5",
        "--to-shard",
        &to,
        "--addr",
        &addr,
    ]));
    assert!(
        out.starts_with(&format!(
            "cli-movable/5: moved from shard {home} to shard {away} in "
        )),
        "{out}"
    );
    let out = stdout(&quark(&[
        "actors",
        "where",
        "cli-movable",
        "5",
        "--addr",
        &addr,
        "--json",
    ]));
    let p: quark::admin::PlacementEntry = serde_json::from_str(&out).unwrap();
    assert_eq!((p.home, p.shard, p.moving), (home, away, false));
    assert_eq!(
        quark::block_on(r.ask(Inc)),
        Ok(2),
        "the count moved with it"
    );
    assert_eq!(node.placement(r.id()).unwrap().shard, away);
    for (args, want) in [
        (
            vec!["actors", "move", "counter", "5", "--to-shard", "1"],
            "cannot migrate",
        ),
        (
            vec!["actors", "where", "nope", "5"],
            "no actor type \"nope\"",
        ),
        (
            vec!["actors", "move", "cli-movable", "5", "--to-shard", "9"],
            "there is no shard 9",
        ),
    ] {
        let mut args = args;
        args.extend(["--addr", &addr]);
        let out = quark(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    node.shutdown();
}
