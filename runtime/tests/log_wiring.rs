//! Each shard opens (and recovers) its durable log at start-up.

use quark::{Actor, ActorType, Node, NodeConfig, NodeError, ShardSpec, StartError};

struct Nop;
impl Actor for Nop {
    const TYPE_NAME: &'static str = "nop";
}

fn config(dir: &std::path::Path) -> NodeConfig {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = {{ interval_ms = 5 }}\n",
        dir.to_str().unwrap()
    );
    NodeConfig::from_toml(&text, "test.toml").unwrap()
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn shards_open_their_logs_and_reopen_them() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    assert_eq!(c.engine.shards, ShardSpec::Count(2));
    for round in 0..2 {
        let node = Node::builder()
            .config(c.clone())
            .register(ActorType::new(|_| Nop))
            .start()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let stats = node.stats();
        assert!(stats.iter().all(|s| s.log_next_lsn.is_some()), "{stats:?}");
        node.shutdown();
        for shard in 0..2 {
            let dir = tmp.path().join(format!("shard-{shard}"));
            assert_eq!(
                segments(&dir).len(),
                1,
                "round {round}: one segment in {dir:?}"
            );
        }
    }
}

#[test]
fn a_damaged_log_stops_start_up_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    let node = Node::builder()
        .config(c.clone())
        .register(ActorType::new(|_| Nop))
        .start()
        .unwrap();
    node.shutdown();
    let seg = segments(&tmp.path().join("shard-1")).remove(0);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[0] ^= 0xff; // break the segment magic
    std::fs::write(&seg, bytes).unwrap();
    let err = Node::builder()
        .config(c)
        .register(ActorType::new(|_| Nop))
        .start()
        .err()
        .expect("a segment with a bad magic refuses to open");
    match &err {
        NodeError::Start(StartError::Log { shard, .. }) => assert_eq!(*shard, 1),
        other => panic!("expected a log error, got {other}"),
    }
    // The message names the shard; its cause (the source chain) names the file.
    let msg = quark::ErrorChain(&err).to_string();
    assert!(
        msg.contains(seg.file_name().unwrap().to_str().unwrap()),
        "{msg}"
    );
}
