//! Each shard opens (and recovers) its durable log at start-up, and an actor's `ctx.log()` is
//! its own shard's log: what an actor appends is readable back through it at once, lands in
//! that shard's directory, and is read back after a restart.

use std::collections::BTreeMap;

use quark::log::Batch;
use quark::{
    block_on, Actor, ActorType, Context, Handler, Message, Node, NodeConfig, NodeError, ShardId,
    ShardSpec, StartError,
};

struct Nop;
impl Actor for Nop {
    const TYPE_NAME: &'static str = "nop";
}

/// Appends to and reads from its shard's log.
struct Scribe;
impl Actor for Scribe {
    const TYPE_NAME: &'static str = "scribe";
}

/// Appends one event record (key, payload); replies with the shard and the record's LSN.
struct Append(Vec<u8>, Vec<u8>);
impl Message for Append {
    type Reply = Result<(ShardId, u64), String>;
}
impl Handler<Append> for Scribe {
    async fn handle(&mut self, m: Append, ctx: &Context<Self>) -> Result<(ShardId, u64), String> {
        let log = ctx.log().ok_or("no log")?;
        let mut batch = Batch::new();
        batch.event(&m.0, &m.1);
        let range = log.append(&batch).await.map_err(|e| e.to_string())?;
        assert_eq!(range.len(), 1, "one record appended");
        Ok((ctx.shard(), range.first))
    }
}

/// Records as read back: (LSN, payload), in log order.
type Records = Vec<(u64, Vec<u8>)>;

/// Reads back every live record of a key.
struct ReadKey(Vec<u8>);
impl Message for ReadKey {
    type Reply = Result<Records, String>;
}
impl Handler<ReadKey> for Scribe {
    async fn handle(&mut self, m: ReadKey, ctx: &Context<Self>) -> Result<Records, String> {
        let log = ctx.log().ok_or("no log")?;
        let mut out = Vec::new();
        for lsn in log.key_lsns(&m.0) {
            let rec = log
                .read(lsn)
                .await
                .map_err(|e| e.to_string())?
                .ok_or(format!("LSN {lsn} listed but not readable"))?;
            assert_eq!(
                rec.key, m.0,
                "the record at LSN {lsn} has the key it is listed under"
            );
            out.push((rec.lsn, rec.payload));
        }
        Ok(out)
    }
}

fn start_scribes(c: &NodeConfig) -> Node {
    Node::builder()
        .config(c.clone())
        .register(ActorType::new(|_| Scribe))
        .start()
        .unwrap()
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
        let stats = node.stats().expect("stats");
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

#[test]
fn what_an_actor_appends_to_its_shard_log_reads_back_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    let node = start_scribes(&c);
    let before: Vec<u64> = node
        .stats()
        .expect("stats")
        .iter()
        .map(|s| s.log_next_lsn.unwrap())
        .collect();
    // Scribe k appends "<scribe k round i>" under key "k/<k>", i = 0..3.
    let mut written: BTreeMap<u64, (ShardId, Records)> = BTreeMap::new();
    for round in 0..3 {
        for k in 0..16u64 {
            let payload = format!("<scribe {k} round {round}>").into_bytes();
            let key = format!("k/{k}").into_bytes();
            let scribe = node.actor_ref::<Scribe>(k);
            let (shard, lsn) = block_on(scribe.ask(Append(key.clone(), payload.clone())))
                .unwrap()
                .unwrap();
            let entry = written.entry(k).or_insert((shard, Vec::new()));
            assert_eq!(entry.0, shard, "scribe {k} stays on its shard");
            entry.1.push((lsn, payload));
            // Readable at once, through the same shard's log.
            assert_eq!(
                block_on(scribe.ask(ReadKey(key))).unwrap().unwrap(),
                entry.1,
                "scribe {k} after round {round}"
            );
        }
    }
    let shards: std::collections::BTreeSet<ShardId> = written.values().map(|w| w.0).collect();
    assert_eq!(shards.len(), 2, "scribes on both shards");
    let after: Vec<u64> = node
        .stats()
        .expect("stats")
        .iter()
        .map(|s| s.log_next_lsn.unwrap())
        .collect();
    for shard in 0..2usize {
        let n = written
            .values()
            .filter(|w| usize::from(w.0) == shard)
            .count() as u64
            * 3;
        assert!(
            after[shard] >= before[shard] + n,
            "shard {shard}: next LSN {} -> {}, {n} records appended",
            before[shard],
            after[shard]
        );
    }
    node.shutdown();

    // Each record is in the directory of the shard that wrote it, and only there.
    for (k, (shard, records)) in &written {
        for (_, payload) in records {
            for s in 0..2u16 {
                let found = segments(&tmp.path().join(format!("shard-{s}")))
                    .iter()
                    .any(|p| contains(&std::fs::read(p).unwrap(), payload));
                assert_eq!(found, s == *shard, "scribe {k}'s record in shard-{s}");
            }
        }
    }

    // After a restart the records are read back from the recovered logs, at the same LSNs.
    let node = start_scribes(&c);
    for (k, (_, records)) in &written {
        let got = block_on(
            node.actor_ref::<Scribe>(*k)
                .ask(ReadKey(format!("k/{k}").into_bytes())),
        )
        .unwrap()
        .unwrap();
        assert_eq!(&got, records, "scribe {k} after the restart");
    }
    node.shutdown();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
