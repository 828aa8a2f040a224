//! A projection survives SIGKILL: a child process runs a node with a projection and writes
//! events until it is killed at a random moment (after a random number of acknowledged
//! writes), over several rounds. After the last restart the read model holds, for every
//! actor, exactly the versions `1..=v` of its journal, each applied once, and the totals they
//! imply; no acknowledged write is missing.
//!
//! The child is this test binary re-executed with `QUARK_PROJECTION_KILL_DIR` set: it then
//! runs `kill_child_entry` only (which does nothing in a normal test run).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quark::journal::{
    EventMeta, EventSourced, JournalEvent, JournalPolicy, Persist, PersistError, Persisted,
    Projection, ProjectionConfig, Subscriptions,
};
use quark::{block_on, Actor, ActorKey, Context, Handler, Message, Node, NodeConfig};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const DIR_VAR: &str = "QUARK_PROJECTION_KILL_DIR";
const ROUNDS: usize = 8;
const KEYS: u64 = 12;

#[derive(Default)]
struct Counter {
    n: i64,
    version: u64,
}

impl Actor for Counter {
    const TYPE_NAME: &'static str = "kcounter";
}

#[derive(Serialize, Deserialize)]
struct Added(i64);

impl JournalEvent for Added {
    fn type_name(&self) -> &'static str {
        "Added"
    }
}

impl EventSourced for Counter {
    type Event = Added;
    type Snapshot = (i64, u64);
    fn initial(_: &ActorKey) -> Self {
        Counter::default()
    }
    fn apply(&mut self, e: &Added) {
        self.n += e.0;
        self.version += 1;
    }
    fn snapshot(&self) -> (i64, u64) {
        (self.n, self.version)
    }
    fn restore(_: &ActorKey, (n, version): (i64, u64)) -> Self {
        Counter { n, version }
    }
}

/// The amount of the event at `version` of counter `key`: the read model's totals are then
/// known from the versions alone.
fn amount(key: u64, version: u64) -> i64 {
    ((key + 1) * version) as i64
}

/// Adds `amount(key, next version)`.
struct Bump;
impl Message for Bump {
    type Reply = Result<Persisted, PersistError>;
}
impl Handler<Bump> for Counter {
    async fn handle(&mut self, _: Bump, ctx: &Context<Self>) -> Result<Persisted, PersistError> {
        let ActorKey::U64(key) = ctx.id().key else {
            panic!("counters have u64 keys");
        };
        let e = Added(amount(key, self.version + 1));
        ctx.persist(self, [e]).await
    }
}

/// Per counter key: the total, and every version applied, in the order applied.
type Model = BTreeMap<u64, (i64, Vec<u64>)>;

/// Events applied by the projection in this process.
static APPLIED: AtomicU64 = AtomicU64::new(0);

struct Applied;
impl Projection for Applied {
    const NAME: &'static str = "applied";
    type State = Model;
    fn subscriptions() -> Subscriptions<Self> {
        Subscriptions::new().on::<Counter>(|s: &mut Model, meta: &EventMeta, e: &Added| {
            let ActorKey::U64(key) = meta.key else {
                panic!("counters have u64 keys");
            };
            let entry = s.entry(key).or_default();
            entry.0 += e.0;
            entry.1.push(meta.version);
            APPLIED.fetch_add(1, Ordering::Relaxed);
        })
    }
}

fn start(dir: &Path) -> Node {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"always\"\n",
        dir.to_str().expect("temp dir path is UTF-8")
    );
    Node::builder()
        .config(NodeConfig::from_toml(&text, "test.toml").expect("valid test config"))
        .register_journaled::<Counter>(JournalPolicy::snapshot_every(8))
        .register_projection::<Applied>(ProjectionConfig::default())
        .start()
        .expect("the node starts")
}

/// The child: starts a node on the directory in `QUARK_PROJECTION_KILL_DIR`, prints `READY`,
/// then bumps counters from two threads forever, printing `ACK <key> <version>` after each
/// acknowledged write. Does nothing when the variable is not set (a normal test run).
#[test]
fn kill_child_entry() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let node = start(Path::new(&dir));
    println!("READY");
    std::io::stdout().flush().unwrap();
    let refs: Vec<_> = (0..KEYS).map(|k| node.actor_ref::<Counter>(k)).collect();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let refs = refs.clone();
            s.spawn(move || {
                for i in 0u64.. {
                    let key = (i * 2 + t) % KEYS;
                    let p = block_on(refs[key as usize].ask(Bump))
                        .expect("the call succeeds")
                        .expect("the persist succeeds");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {key} {}", p.version).unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}

struct Kid {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_child(dir: &Path) -> Kid {
    let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--exact",
            "kill_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Kid { child, lines: rx }
}

fn next_line(kid: &Kid, deadline: Instant, what: &str) -> String {
    let left = deadline.saturating_duration_since(Instant::now());
    kid.lines
        .recv_timeout(left)
        .unwrap_or_else(|e| panic!("waiting for {what}: {e:?}"))
}

#[test]
fn a_projection_applies_every_event_once_across_sigkills() {
    let seed: u64 = std::env::var("QUARK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed {seed} (rerun with QUARK_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    // The highest acknowledged version per counter.
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut total_acks = 0u64;
    for round in 0..ROUNDS {
        let kid = spawn_child(tmp.path());
        let deadline = Instant::now() + Duration::from_secs(30);
        // The harness prints "test kill_child_entry ... " before it, on the same line.
        while !next_line(&kid, deadline, "READY").ends_with("READY") {}
        // Kill after a random number of acknowledged writes (0: right after start-up, while
        // the feeders are catching up with what the earlier rounds wrote).
        let kill_after: u64 = rng.gen_range(0..300);
        let mut acks = 0;
        while acks < kill_after {
            let line = next_line(&kid, deadline, "an ACK line");
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let mut parts = rest.split(' ').map(|p| p.parse::<u64>().unwrap());
            let (key, version) = (parts.next().unwrap(), parts.next().unwrap());
            let a = acked.entry(key).or_default();
            assert!(
                version > *a,
                "round {round}: key {key} version {version} after {a}"
            );
            *a = version;
            acks += 1;
        }
        total_acks += kill_after;
        drop(kid); // SIGKILL, then reap
        eprintln!("round {round}: killed after {kill_after} acknowledged writes");
    }

    // Last restart, in this process: the projection resumes from its stored checkpoints.
    let node = start(tmp.path());
    let journal = node.journal();
    let projection = node.projection::<Applied>();
    let mut expected: Model = BTreeMap::new();
    let mut last = Vec::new();
    for key in 0..KEYS {
        let v = block_on(journal.version::<Counter>(key)).unwrap();
        let a = acked.get(&key).copied().unwrap_or(0);
        assert!(
            v >= a,
            "key {key}: version {v} is behind the acknowledged {a}"
        );
        // One more write per counter: its position is where the projection must get to.
        let p = block_on(node.actor_ref::<Counter>(key).ask(Bump))
            .unwrap()
            .unwrap();
        assert_eq!(p.version, v + 1);
        last.push(p.position);
        let versions: Vec<u64> = (1..=v + 1).collect();
        let total = versions.iter().map(|&x| amount(key, x)).sum();
        expected.insert(key, (total, versions));
    }
    for pos in last {
        block_on(projection.wait_for(pos, Duration::from_secs(30))).unwrap();
    }
    let model = block_on(projection.query(|m| m.clone())).unwrap();
    for (key, (total, versions)) in &expected {
        let (got_total, got_versions) = model
            .get(key)
            .unwrap_or_else(|| panic!("key {key} missing from the read model"));
        assert_eq!(
            got_versions, versions,
            "key {key}: every version applied exactly once, in order"
        );
        assert_eq!(got_total, total, "key {key}: total");
    }
    assert_eq!(
        model.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    let written: u64 = expected.values().map(|(_, v)| v.len() as u64).sum();
    let resumed = APPLIED.load(Ordering::Relaxed);
    eprintln!(
        "{written} events over {ROUNDS} kills ({total_acks} acknowledged); {resumed} applied after the last restart"
    );
    // The killed children stored batches of the read model; the last restart resumed from
    // them instead of replaying every event.
    assert!(
        resumed < written,
        "the last restart applied all {written} events again"
    );
    assert!(
        written >= KEYS + total_acks,
        "every acknowledged write is there"
    );
    node.shutdown();
}
