//! `quark workflows`: the online commands against a running node's admin endpoint (JSON in and
//! out, converted with the registered types), and `history --data-dir` over the stopped node's
//! data directory.

use std::process::{Command, Output};

use quark::workflow::{StepError, WorkflowContext};
use quark::{Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Greet {
    name: String,
    times: u32,
}

async fn greet(ctx: WorkflowContext, g: Greet) -> Result<String, StepError> {
    let approved: bool = ctx.wait_event("approve").await?;
    Ok(format!(
        "{} {} x{}",
        if approved { "hello" } else { "bye" },
        g.name,
        g.times
    ))
}

fn quark(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(args)
        .output()
        .expect("run the quark binary")
}

/// `quark workflows ARGS --addr ADDR --json`: expects success, parses the JSON.
fn json(addr: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["workflows"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--addr", addr, "--json"]);
    let out = quark(&all);
    assert!(
        out.status.success(),
        "quark {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "quark {all:?}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn workflows_cli_starts_raises_lists_stops_and_reads_histories_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"never\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        tmp.path().to_str().unwrap()
    );
    let node = Node::builder()
        .config(NodeConfig::from_toml(&text, "t.toml").unwrap())
        .register_workflow("greet", 1, greet)
        .register_workflow_event::<bool>("approve")
        .start()
        .unwrap();
    let addr = node.admin_addr().unwrap().to_string();
    let addr = addr.as_str();

    // start: JSON input; an existing id is not started again.
    let input = r#"{"name":"ann","times":2}"#;
    let s = json(addr, &["start", "greet", "w-1", "--input", input]);
    assert_eq!(
        (s["existed"].as_bool(), s["version"].as_u64()),
        (Some(false), Some(1))
    );
    let s = json(addr, &["start", "greet", "w-1", "--input", input]);
    assert_eq!(s["existed"].as_bool(), Some(true));

    // JSON that does not fit the input type: a usage error naming the type, nothing started.
    let out = quark(&[
        "workflows",
        "start",
        "greet",
        "w-bad",
        "--input",
        r#"{"nom":1}"#,
        "--addr",
        addr,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Greet") && err.contains("name"), "{err}");
    let out = quark(&["workflows", "status", "w-bad", "--addr", addr]);
    assert_eq!(out.status.code(), Some(1), "w-bad was not started");

    // raise (JSON payload), then the output is shown as JSON.
    let out = quark(&[
        "workflows",
        "raise",
        "w-1",
        "approve",
        "--payload",
        "17",
        "--addr",
        addr,
    ]);
    assert_eq!(out.status.code(), Some(2), "17 is not a bool");
    json(addr, &["raise", "w-1", "approve", "--payload", "true"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let st = loop {
        let st = json(addr, &["status", "w-1"]);
        if st["state"] != "running" {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "w-1 did not finish");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(st["state"], "completed", "{st}");
    assert_eq!(st["output"], "hello ann x2");
    let table = quark(&["workflows", "status", "w-1", "--addr", addr]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("output         \"hello ann x2\""));

    // history online: the records, the raised event among them.
    let online = quark(&["workflows", "history", "w-1", "--json", "--addr", addr]);
    assert!(online.status.success());
    let online = lines(&online);
    assert!(
        online.iter().any(|e| e.get("EventRaised").is_some()),
        "{online:?}"
    );
    assert!(online.last().unwrap().get("Finished").is_some());

    // cancel, terminate, purge, list.
    json(addr, &["start", "greet", "w-2", "--input", input]);
    json(addr, &["start", "greet", "w-3", "--input", input]);
    assert_eq!(json(addr, &["cancel", "w-2"])["state"], "cancelled");
    assert_eq!(json(addr, &["terminate", "w-3"])["state"], "terminated");
    let out = quark(&["workflows", "cancel", "w-3", "--addr", addr]);
    assert_eq!(out.status.code(), Some(1), "w-3 is not running");
    let page = json(addr, &["list", "--limit", "2"]);
    let ids: Vec<&str> = page["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["w-1", "w-2"]);
    assert_eq!(page["next_cursor"], "w-2");
    let page = json(addr, &["list", "--state", "terminated"]);
    assert_eq!(page["instances"][0]["id"], "w-3");
    json(addr, &["purge", "w-2"]);
    let out = quark(&["workflows", "status", "w-2", "--addr", addr]);
    assert_eq!(out.status.code(), Some(1), "w-2 was purged");
    node.shutdown();

    // Offline: the stopped node's log gives the same history.
    let dir = tmp.path().to_str().unwrap();
    let offline = quark(&["workflows", "history", "--data-dir", dir, "w-1", "--json"]);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    assert_eq!(lines(&offline), online);
    let human = quark(&["workflows", "history", "--data-dir", dir, "w-1"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("event_raised") && human.contains("finished"),
        "{human}"
    );
    let out = quark(&["workflows", "history", "--data-dir", dir, "w-2"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a purged instance is not in the log"
    );
}
