//! `quark status --addr`: the table and the JSON of a running node's admin endpoint.

use std::process::Command;
use std::time::Duration;

use quark::admin::Status;
use quark::builtin::{Add, Counter};
use quark::{AdminConfig, Node, NodeConfig};

fn quark(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(args)
        .output()
        .expect("run the quark binary")
}

#[test]
fn quark_status_prints_the_nodes_table_and_json() {
    let mut config = NodeConfig::default();
    config.admin = Some(AdminConfig::new("127.0.0.1:0".parse().unwrap()));
    let node = quark::builtin::register_builtin(Node::builder().config(config))
        .engine(|e| {
            e.shards = quark::ShardSpec::Count(2);
            e.pin_threads = false;
            e.idle_spin = Duration::ZERO;
        })
        .start()
        .unwrap();
    for key in 0..10u64 {
        quark::block_on(node.actor_ref::<Counter>(key).ask(Add(1))).unwrap();
    }
    let addr = node.admin_addr().unwrap().to_string();
    let live: Vec<u64> = node
        .stats()
        .unwrap()
        .iter()
        .map(|s| s.live_activations)
        .collect();
    assert_eq!(live.iter().sum::<u64>(), 10);

    let out = quark(&["status", "--addr", &addr]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("node -  version "), "{text}");
    assert!(text.contains("state ready"), "{text}");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(2)
        .take(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i.to_string(), "{text}");
        assert_eq!(
            row[5],
            live[i].to_string(),
            "live activations of shard {i}: {text}"
        );
    }

    let out = quark(&["status", "--addr", &addr, "--json"]);
    assert!(out.status.success());
    let status: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status.state, "ready");
    assert_eq!(
        status
            .shards
            .iter()
            .map(|s| s.live_activations)
            .collect::<Vec<_>>(),
        live
    );
    node.shutdown();

    // Nothing listens there any more: exit 1, naming the address.
    let out = quark(&["status", "--addr", &addr, "--timeout-ms", "2000"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr), "{err}");
}
