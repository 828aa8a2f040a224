//! A node's data directory: one process at a time (the lock), and the layout it was written
//! with (the manifest): a second node, an offline reader while a node runs, and a changed
//! shard count are all refused with an error that names the directory and what to do.

use std::path::Path;
use std::process::Output;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use quark::journal::JournalPolicy;
use quark::{block_on, Node, NodeConfig, NodeError};

#[path = "../../tests/common/mod.rs"]
mod common;
use common::{Account, Deposit};
#[path = "../../tests/ports/mod.rs"]
mod ports;

fn config(dir: &Path, shards: u16) -> Result<NodeConfig> {
    let text = format!(
        "[node]\nshards = {shards}\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"always\"\n",
        dir.to_str().context("temp dir path is UTF-8")?
    );
    Ok(NodeConfig::from_toml(&text, "test.toml")?)
}

fn start(dir: &Path, shards: u16) -> Result<Node, NodeError> {
    Node::builder()
        .config(config(dir, shards).expect("valid test config"))
        .register_journaled::<Account>(JournalPolicy::snapshot_every(5))
        .start()
}

const KEYS: u64 = 16;

/// Deposits `k + 1` into account `k` for every k; returns nothing but panics on a failed ack.
fn deposit_all(node: &Node) -> Result<()> {
    for k in 0..KEYS {
        block_on(
            node.actor_ref::<Account>(k)
                .ask(Deposit(k as i64 + 1, format!("d{k}"))),
        )??;
    }
    Ok(())
}

/// Every account's version is `rounds` (one event per round): no stream forked or lost.
fn assert_versions(node: &Node, rounds: u64) -> Result<()> {
    let journal = node.journal();
    for k in 0..KEYS {
        let v = block_on(journal.version::<Account>(k))?;
        assert_eq!(v, rounds, "account {k}: version");
    }
    Ok(())
}

fn journal_verify(dir: &Path) -> Result<Output> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quark"));
    cmd.args(["journal", "verify", "--data-dir"]).arg(dir);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(cmd.output()));
    Ok(rx
        .recv_timeout(Duration::from_secs(30))
        .context("quark journal verify did not finish within 30 s")??)
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused_with_the_pid() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let first = start(&dir, 2)?;
    deposit_all(&first)?;
    let err = start(&dir, 2)
        .err()
        .context("a second node on the same data directory must not start")?;
    let msg = format!("{err:#}");
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("process {}", std::process::id())),
        "{msg}"
    );
    // The first node lost nothing and still writes.
    deposit_all(&first)?;
    assert_versions(&first, 2)?;
    first.shutdown();
    // Released at shutdown: the next node starts and sees every acknowledged event.
    let again = start(&dir, 2)?;
    assert_versions(&again, 2)?;
    again.shutdown();
    Ok(())
}

#[test]
fn journal_verify_is_refused_while_a_node_holds_the_dir() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let node = start(&dir, 2)?;
    deposit_all(&node)?;
    let out = journal_verify(&dir)?;
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("stop the node"), "{stderr}");
    assert!(
        stderr.contains(&format!("process {}", std::process::id())),
        "{stderr}"
    );
    node.shutdown();
    let out = journal_verify(&dir)?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_changed_shard_count_is_refused_with_was_and_now() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let node = start(&dir, 2)?;
    deposit_all(&node)?;
    node.shutdown();
    let manifest = std::fs::read_to_string(dir.join("MANIFEST"))?;
    assert!(manifest.contains("shards = 2"), "{manifest}");

    let err = start(&dir, 1)
        .err()
        .context("a node with 1 shard must refuse data written with 2")?;
    let msg = format!("{err:#}");
    assert!(
        msg.contains("written with 2 shards") && msg.contains("configured with 1"),
        "{msg}"
    );
    let hint = format!("quark data reshard --data-dir {} --shards 1", dir.display());
    assert!(msg.contains(&hint), "{msg}");
    // Nothing was changed: the same count still opens with every event.
    let node = start(&dir, 2)?;
    assert_versions(&node, 1)?;
    node.shutdown();
    Ok(())
}

#[test]
fn a_directory_without_manifest_is_adopted_only_with_its_shard_count() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let node = start(&dir, 2)?;
    deposit_all(&node)?;
    node.shutdown();
    // As written by a version without manifests.
    std::fs::remove_file(dir.join("MANIFEST"))?;
    for shards in [1, 3] {
        let err = start(&dir, shards)
            .err()
            .with_context(|| format!("{shards} shards must refuse shard-0 and shard-1"))?;
        let msg = format!("{err:#}");
        assert!(
            msg.contains("no manifest") && msg.contains("written with 2 shards"),
            "{msg}"
        );
        assert!(
            !dir.join("MANIFEST").exists(),
            "a refused start writes nothing"
        );
    }
    let node = start(&dir, 2)?;
    assert_versions(&node, 1)?;
    node.shutdown();
    let manifest = std::fs::read_to_string(dir.join("MANIFEST"))?;
    assert!(manifest.contains("shards = 2"), "adopted: {manifest}");
    Ok(())
}

const SECRET_VAR: &str = "QUARK_TEST_CLUSTER_SECRET";

/// A `quark serve` child, killed (SIGKILL) when dropped.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_command(config: &Path, id: u64) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quark"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .args(["--node-id", &id.to_string()])
        .env(SECRET_VAR, "test-secret-0123456789")
        .stdin(std::process::Stdio::null());
    cmd
}

/// Runs `quark serve` expecting it to fail at start-up; returns its stderr.
fn serve_refused(config: &Path, id: u64) -> Result<String> {
    let mut cmd = serve_command(config, id);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(cmd.output()));
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .context("a refused quark serve did not exit within 30 s")??;
    let stderr = String::from_utf8(out.stderr)?;
    anyhow::ensure!(!out.status.success(), "quark serve started: {stderr}");
    Ok(stderr)
}

#[test]
fn a_second_quark_serve_process_on_the_same_data_dir_is_refused() -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let addrs = ports::free_addrs(2);
    let mut text = format!(
        "[node]\nshards = 1\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\n\
         [cluster]\ncluster_id = \"lock\"\nnode_id = 1\nsecret_env = \"{SECRET_VAR}\"\n",
        dir.to_str().context("UTF-8 path")?
    );
    for (i, a) in addrs.iter().enumerate() {
        text.push_str(&format!(
            "\n[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    let config = tmp.path().join("cluster.toml");
    std::fs::write(&config, text)?;

    let mut first = serve_command(&config, 1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = first.stdout.take().context("piped stdout")?;
    let first = Serve(first);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .context("node 1 did not print its ready line within 10 s")?;
        if line.contains("listening on") {
            break;
        }
    }
    // Another process (node 2 of the same file, so another port) on the same directory.
    let stderr = serve_refused(&config, 2)?;
    assert!(
        stderr.contains(&format!("in use by process {}", first.0.id())),
        "{stderr}"
    );
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
    // The kernel drops a killed holder's lock; the data still belongs to node 1.
    drop(first);
    let stderr = serve_refused(&config, 2)?;
    assert!(
        stderr.contains("belongs to node 1") && stderr.contains("node 2"),
        "{stderr}"
    );
    Ok(())
}
