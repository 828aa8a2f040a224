//! `quark outbox dead-letters list|replay|purge` over a stopped node's data directory: the
//! list shows what the node's `Outbox::dead_letters` showed, a purge removes one for good, a
//! replay is delivered (once) when the node starts again, an unknown id exits 1 and a running
//! node's directory is refused.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use quark::block_on;
use quark::outbox::Outbox;

#[path = "../../tests/outbox_common/mod.rs"]
mod outbox_common;
use outbox_common::*;

fn quark(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn list_purge_and_replay_dead_letters_of_a_stopped_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Three messages of a type the node has no durable handler for: dead-lettered at once.
    let (a, b);
    {
        let node = builder(dir, fast_retries()).start().unwrap();
        (a, b) = cross_shard_pair(&node, 60);
        for _ in 0..3 {
            block_on(node.actor_ref::<Account>(a).ask(SendUnrouted(b)))
                .unwrap()
                .unwrap();
        }
        eventually("3 dead letters", Duration::from_secs(20), || {
            (stats_sum(&node).dead_letters == 3).then_some(())
        });
        let expected = block_on(Outbox::new(node.handle()).dead_letters()).unwrap();
        // A running node's directory is refused.
        let out = quark(&["outbox", "dead-letters", "list"], dir);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("stop the node"),
            "{out:?}"
        );
        node.shutdown();

        let out = quark(&["outbox", "dead-letters", "list", "--json"], dir);
        assert!(out.status.success(), "{out:?}");
        let rows = json_lines(&out);
        assert_eq!(rows.len(), 3, "{rows:?}");
        for (row, d) in rows.iter().zip(&expected) {
            assert_eq!(row["id"], d.id.to_string());
            assert_eq!(row["shard"], d.shard);
            assert_eq!(row["sender"], format!("acct/{a}"));
            assert_eq!(row["target"], format!("acct/{b}"));
            assert_eq!(row["message"], "test.Unrouted");
            assert!(
                row["cause"]
                    .as_str()
                    .unwrap()
                    .contains("no durable handler"),
                "{row}"
            );
        }
        // The table form lists them too.
        let out = quark(&["outbox", "dead-letters", "list"], dir);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(&expected[0].id.to_string()), "{text}");
        assert!(text.ends_with("3 dead letters\n"), "{text}");
    }
    let rows = json_lines(&quark(&["outbox", "dead-letters", "list", "--json"], dir));
    let id = |i: usize| rows[i]["id"].as_str().unwrap().to_owned();
    let shard = rows[0]["shard"].to_string();

    // Purge the first.
    let out = quark(
        &[
            "outbox",
            "dead-letters",
            "purge",
            "--shard",
            &shard,
            "--id",
            &id(0),
        ],
        dir,
    );
    assert!(out.status.success(), "{out:?}");
    // Again: it is gone (exit 1).
    let out = quark(
        &[
            "outbox",
            "dead-letters",
            "purge",
            "--shard",
            &shard,
            "--id",
            &id(0),
        ],
        dir,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("has no dead letter {}", id(0))),
        "{out:?}"
    );

    // Replay the second.
    let out = quark(
        &[
            "outbox",
            "dead-letters",
            "replay",
            "--json",
            "--shard",
            &shard,
            "--id",
            &id(1),
        ],
        dir,
    );
    assert!(out.status.success(), "{out:?}");
    let done = &json_lines(&out)[0];
    assert_eq!(done["action"], "replayed");
    let replay_id = done["replay_id"].as_str().unwrap().to_owned();
    assert_ne!(replay_id, id(1));

    let left = json_lines(&quark(&["outbox", "dead-letters", "list", "--json"], dir));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], id(2).as_str());

    // The node, now with a handler for the message, delivers the replay once at start.
    let node = builder(dir, fast_retries())
        .durable::<Account, Unrouted>()
        .start()
        .unwrap();
    let s = eventually("the replay delivered", Duration::from_secs(20), || {
        let s = stats_sum(&node);
        (s.pending == 0 && s.delivered == 1).then_some(s)
    });
    assert_eq!(s.dead_letters, 1, "the third is still listed: {s:?}");
    let list = block_on(Outbox::new(node.handle()).dead_letters()).unwrap();
    assert_eq!(list[0].id.to_string(), id(2));
    node.shutdown();
}

#[test]
fn bad_arguments_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = quark(&["outbox", "dead-letters", "list"], tmp.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no shard-<N> directory"),
        "{out:?}"
    );
    let out = quark(
        &[
            "outbox",
            "dead-letters",
            "purge",
            "--shard",
            "0",
            "--id",
            "nonsense",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `quark … --addr` runs the command on a running node (no data directory).
fn quark_online(args: &[&str], addr: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(args)
        .args(["--addr", addr])
        .output()
        .unwrap()
}

#[test]
fn list_purge_and_replay_dead_letters_of_a_running_node() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        tmp.path().to_str().unwrap()
    );
    let node = quark::Node::builder()
        .config(quark::NodeConfig::from_toml(&text, "t.toml").unwrap())
        .register(quark::outbox::durable_state::<Account>())
        .outbox(fast_retries())
        .durable::<Account, Credit>()
        .start()
        .unwrap();
    let addr = node.admin_addr().unwrap().to_string();
    let (a, b) = cross_shard_pair(&node, 160);
    for _ in 0..3 {
        block_on(node.actor_ref::<Account>(a).ask(SendUnrouted(b)))
            .unwrap()
            .unwrap();
    }
    eventually("3 dead letters", Duration::from_secs(20), || {
        (stats_sum(&node).dead_letters == 3).then_some(())
    });
    let outbox = Outbox::new(node.handle());
    let expected = block_on(outbox.dead_letters()).unwrap();
    // The list, as JSON lines and as a table.
    let out = quark_online(&["outbox", "dead-letters", "list", "--json"], &addr);
    assert!(out.status.success(), "{out:?}");
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, d) in rows.iter().zip(&expected) {
        assert_eq!(row["id"], d.id.to_string());
        assert_eq!(row["shard"], d.shard);
        assert_eq!(row["sender"], format!("acct/{a}"));
        assert_eq!(row["target"], format!("acct/{b}"));
        assert_eq!(row["message"], "test.Unrouted");
    }
    let out = quark_online(&["outbox", "dead-letters", "list"], &addr);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.ends_with("3 dead letters\n"), "{table}");
    let shard = expected[0].shard.to_string();
    let id = |i: usize| expected[i].id.to_string();
    // Purge the first: the node's list no longer has it; again: exit 1.
    let purge = ["outbox", "dead-letters", "purge", "--shard", &shard, "--id"];
    let out = quark_online(&[&purge[..], &[id(0).as_str()]].concat(), &addr);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("shard {shard}: dead letter {} purged\n", id(0))
    );
    let ids: Vec<String> = block_on(outbox.dead_letters())
        .unwrap()
        .iter()
        .map(|d| d.id.to_string())
        .collect();
    assert_eq!(ids, vec![id(1), id(2)]);
    let out = quark_online(&[&purge[..], &[id(0).as_str()]].concat(), &addr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("has no dead letter {}", id(0))) && err.contains("HTTP 404"),
        "{err}"
    );
    // Replay the second: the running node sends it at once (still unrouted: it is
    // dead-lettered again, under its replay id).
    let out = quark_online(
        &[
            "outbox",
            "dead-letters",
            "replay",
            "--json",
            "--shard",
            &shard,
            "--id",
            &id(1),
        ],
        &addr,
    );
    assert!(out.status.success(), "{out:?}");
    let done = &json_lines(&out)[0];
    assert_eq!(done["action"], "replayed");
    let rid = done["replay_id"].as_str().unwrap().to_owned();
    assert_ne!(rid, id(1));
    let ids = eventually(
        "the replay dead-lettered again",
        Duration::from_secs(20),
        || {
            let ids: Vec<String> = block_on(outbox.dead_letters())
                .unwrap()
                .iter()
                .map(|d| d.id.to_string())
                .collect();
            (ids.len() == 2).then_some(ids)
        },
    );
    assert_eq!(ids, vec![id(2), rid]);
    // Bad input: an id that does not parse (exit 2), a shard the node does not have (exit 1),
    // both --addr and --data-dir (exit 2).
    let out = quark_online(&[&purge[..], &["nonsense"]].concat(), &addr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = quark_online(
        &[
            "outbox",
            "dead-letters",
            "purge",
            "--shard",
            "9",
            "--id",
            &id(2),
        ],
        &addr,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no shard 9"));
    let out = Command::new(env!("CARGO_BIN_EXE_quark"))
        .args([
            "outbox",
            "dead-letters",
            "list",
            "--addr",
            &addr,
            "--data-dir",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    node.shutdown();
}
