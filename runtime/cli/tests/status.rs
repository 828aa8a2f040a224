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

#[path = "../../tests/ports/mod.rs"]
mod ports;

/// `quark serve --log-format json`: every stderr line is one JSON object with the documented
/// fields (docs/OPERATIONS.md, "Logs"), from start-up through the drain; the ready line stays
/// on stdout.
#[test]
fn quark_serve_writes_json_logs_with_log_format_json() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    use std::sync::mpsc;

    let dir = tempfile::tempdir().unwrap();
    let addr = ports::free_addrs(1)[0];
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nshards = 1\npin_threads = false\nidle_spin_us = 0\n\
             [log]\ndata_dir = \"{}\"\nfsync = \"never\"\n\
             [cluster]\ncluster_id = \"logs\"\nnode_id = 1\n\
             [[cluster.nodes]]\nid = 1\naddr = \"{addr}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quark serve");
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the ready line on stdout");
    assert!(ready.contains("listening on"), "{ready}");
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("quark serve exits within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    let log = err_reader.join().unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(events.len() >= 3, "{log}");
    for e in &events {
        for key in ["timestamp", "level", "target", "threadName"] {
            assert!(e[key].is_string(), "no {key} in {e}");
        }
        assert!(e["fields"]["message"].is_string(), "no message in {e}");
    }
    let find = |msg: &str| {
        events
            .iter()
            .find(|e| e["fields"]["message"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} event in\n{log}"))
    };
    let serving = find("serving");
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["fields"]["node"], 1);
    assert_eq!(serving["fields"]["shards"], 1);
    let recovered = find("log recovered");
    assert_eq!(recovered["threadName"], "quark-shard-0");
    assert_eq!(recovered["target"], "quark_persist::recovery");
    find("signal received: draining");
}
