//! `quark data reshard`: moves every stream, snapshot and projection state to the shard that
//! owns it under a new shard count; a node then starts with that count and finds every
//! acknowledged event, and `quark journal verify` passes. The process is SIGKILLed after each
//! of its durable steps in turn (`QUARK_RESHARD_KILL_AFTER`): every kill leaves the old or the
//! new layout, a node starts on it, and a re-run finishes the job.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Output;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use quark::journal::{
    EventMeta, EventSourced, JournalEvent, JournalPolicy, Persist, PersistError, Persisted,
    Projection, ProjectionConfig, Subscriptions,
};
use quark::{block_on, Actor, ActorKey, Context, Handler, Message, Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[path = "../../tests/common/mod.rs"]
mod common;
use common::{Account, Deposit, Get};

#[derive(Default)]
struct Tally {
    sum: i64,
}

impl Actor for Tally {
    const TYPE_NAME: &'static str = "tally";
}

#[derive(Serialize, Deserialize)]
struct Added(i64);

impl JournalEvent for Added {
    fn type_name(&self) -> &'static str {
        "Added"
    }
}

impl EventSourced for Tally {
    type Event = Added;
    type Snapshot = i64;
    fn initial(_: &ActorKey) -> Self {
        Tally::default()
    }
    fn apply(&mut self, e: &Added) {
        self.sum += e.0;
    }
    fn snapshot(&self) -> i64 {
        self.sum
    }
    fn restore(_: &ActorKey, sum: i64) -> Self {
        Tally { sum }
    }
}

struct Add(i64);
impl Message for Add {
    type Reply = Result<Persisted, PersistError>;
}
impl Handler<Add> for Tally {
    async fn handle(&mut self, m: Add, ctx: &Context<Self>) -> Result<Persisted, PersistError> {
        ctx.persist(self, [Added(m.0)]).await
    }
}

struct Sum;
impl Message for Sum {
    type Reply = i64;
}
impl Handler<Sum> for Tally {
    async fn handle(&mut self, _: Sum, _: &Context<Self>) -> i64 {
        self.sum
    }
}

/// Counts every `Added` event and sums the amounts.
struct Totals;
impl Projection for Totals {
    const NAME: &'static str = "tally-totals";
    type State = (u64, i64);
    fn subscriptions() -> Subscriptions<Self> {
        Subscriptions::new().on::<Tally>(|s: &mut (u64, i64), _: &EventMeta, e: &Added| {
            s.0 += 1;
            s.1 += e.0;
        })
    }
}

const KEYS: u64 = 12;

fn start(dir: &Path, shards: u16) -> Result<Node> {
    start_with(dir, shards, true)
}

fn start_with(dir: &Path, shards: u16, projection: bool) -> Result<Node> {
    let text = format!(
        "[node]\nshards = {shards}\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"always\"\n",
        dir.to_str().context("temp dir path is UTF-8")?
    );
    let mut builder = Node::builder()
        .config(NodeConfig::from_toml(&text, "test.toml")?)
        .register_journaled::<Tally>(JournalPolicy::snapshot_every(3))
        .register_journaled::<Account>(JournalPolicy::snapshot_every(20));
    if projection {
        builder = builder.register_projection::<Totals>(ProjectionConfig::default());
    }
    builder
        .start()
        .with_context(|| format!("starting a node with {shards} shards on {}", dir.display()))
}

/// What was acknowledged: per tally (version, sum), per account (version, balance), and the
/// projection's (count, sum).
#[derive(Clone, Debug, Default)]
struct Expected {
    keys: BTreeMap<u64, (u64, i64)>,
    accounts: BTreeMap<u64, (u64, i64)>,
    totals: (u64, i64),
}

/// Accounts written with 8 KiB memos: several MiB in all, so that the old and the new logs
/// span several 1 MiB segments and a reshard appends many batches.
const ACCOUNTS: u64 = 8;
const DEPOSITS: u64 = 50;

/// Writes `DEPOSITS` large events to each of `ACCOUNTS` accounts, then 2 to 5 events to each
/// of `KEYS` tallies with a `shards`-shard node, and waits until the projection has read them
/// all.
fn populate(dir: &Path, shards: u16) -> Result<Expected> {
    let node = start(dir, shards)?;
    let mut exp = Expected::default();
    for k in 0..ACCOUNTS {
        let account = node.actor_ref::<Account>(k);
        for v in 1..=DEPOSITS {
            let amount = (100 * k + v) as i64;
            let memo = format!("{k}:{v}:").repeat(2048)[..8192].to_string();
            let version = block_on(account.ask(Deposit(amount, memo)))??;
            let e = exp.accounts.entry(k).or_default();
            *e = (version, e.1 + amount);
        }
    }
    let mut last = Vec::new();
    for k in 0..KEYS {
        let tally = node.actor_ref::<Tally>(k);
        for v in 1..=(k % 4 + 2) {
            let amount = (1000 * k + v) as i64;
            let p = block_on(tally.ask(Add(amount)))??;
            let e = exp.keys.entry(k).or_default();
            *e = (p.version, e.1 + amount);
            exp.totals = (exp.totals.0 + 1, exp.totals.1 + amount);
            last.push(p.position);
        }
    }
    let totals = node.projection::<Totals>();
    for pos in last {
        block_on(totals.wait_for(pos, Duration::from_secs(10)))?;
    }
    node.shutdown();
    Ok(exp)
}

/// Starts a node with `shards` shards on `dir`, checks every tally's version and sum and the
/// projection's totals, then appends one more event (to the `probe` tally) and checks the
/// projection counts it exactly once.
fn check(dir: &Path, shards: u16, exp: &mut Expected) -> Result<()> {
    let node = start(dir, shards)?;
    let journal = node.journal();
    for (&k, &(version, sum)) in &exp.keys {
        let got = block_on(journal.version::<Tally>(k))?;
        ensure!(
            got == version,
            "tally {k}: version {got}, expected {version}"
        );
        let got = block_on(node.actor_ref::<Tally>(k).ask(Sum))?;
        ensure!(got == sum, "tally {k}: sum {got}, expected {sum}");
    }
    for (&k, &(version, balance)) in &exp.accounts {
        let got = block_on(journal.version::<Account>(k))?;
        ensure!(
            got == version,
            "account {k}: version {got}, expected {version}"
        );
        let (got, _) = block_on(node.actor_ref::<Account>(k).ask(Get))?;
        ensure!(
            got == balance,
            "account {k}: balance {got}, expected {balance}"
        );
    }
    wait_totals(&node, exp.totals)?;
    block_on(node.actor_ref::<Tally>("probe").ask(Add(1)))??;
    exp.totals = (exp.totals.0 + 1, exp.totals.1 + 1);
    wait_totals(&node, exp.totals)?;
    node.shutdown();
    Ok(())
}

/// Waits (reading, up to 10 s) until the projection shows `want`; fails at once on an
/// overshoot (an event counted twice).
fn wait_totals(node: &Node, want: (u64, i64)) -> Result<()> {
    let totals = node.projection::<Totals>();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = block_on(totals.query(|s| *s))?;
        if got == want {
            return Ok(());
        }
        ensure!(
            got.0 <= want.0,
            "projection counted {got:?}, expected {want:?}: events counted twice"
        );
        if Instant::now() > deadline {
            bail!("projection stuck at {got:?}, expected {want:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn quark(args: &[&str], kill_after: Option<u64>) -> Result<Output> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quark"));
    cmd.args(args);
    if let Some(n) = kill_after {
        cmd.env("QUARK_RESHARD_KILL_AFTER", n.to_string());
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(cmd.output()));
    Ok(rx
        .recv_timeout(Duration::from_secs(60))
        .with_context(|| format!("quark {args:?} did not finish within 60 s"))??)
}

fn reshard(dir: &Path, shards: u16, kill_after: Option<u64>) -> Result<Output> {
    let d = dir.to_str().context("UTF-8 path")?;
    quark(
        &[
            "data",
            "reshard",
            "--data-dir",
            d,
            "--shards",
            &shards.to_string(),
        ],
        kill_after,
    )
}

fn verify(dir: &Path) -> Result<()> {
    let out = quark(
        &[
            "journal",
            "verify",
            "--data-dir",
            dir.to_str().context("UTF-8")?,
        ],
        None,
    )?;
    ensure!(
        out.status.success(),
        "quark journal verify on {}: {:?}\n{}{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn succeeded(out: &Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "reshard failed: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout.clone())?)
}

fn manifest_shards(dir: &Path) -> Result<u16> {
    let m = quark_shard::data_dir::read_manifest(dir)?.context("a manifest")?;
    Ok(m.shards)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

#[test]
fn reshard_moves_every_stream_both_ways() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let mut exp = populate(&dir, 2)?;
    for shards in [3u16, 1, 2] {
        let out = succeeded(&reshard(&dir, shards, None)?)?;
        assert!(
            out.contains("projection tally-totals: it had read every event; read model kept"),
            "{out}"
        );
        assert_eq!(manifest_shards(&dir)?, shards);
        let dirs: Vec<_> = quark_shard::data_dir::shard_dirs(&dir)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            dirs,
            (0..shards).collect::<Vec<_>>(),
            "shard-<N> directories"
        );
        assert!(!dir.join(".reshard-tmp").exists() && !dir.join(".reshard-old").exists());
        verify(&dir)?;
        check(&dir, shards, &mut exp)?;
    }
    // Same count again: nothing to do.
    let out = succeeded(&reshard(&dir, 2, None)?)?;
    assert!(out.contains("nothing to do"), "{out}");
    Ok(())
}

#[test]
fn a_projection_that_had_not_read_every_event_is_rebuilt() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let mut exp = populate(&dir, 2)?;
    // More events while the projection is not running: its stored checkpoints fall behind.
    let node = start_with(&dir, 2, false)?;
    for k in 0..KEYS {
        let p = block_on(node.actor_ref::<Tally>(k).ask(Add(7)))??;
        let e = exp.keys.get_mut(&k).context("populated key")?;
        *e = (p.version, e.1 + 7);
        exp.totals = (exp.totals.0 + 1, exp.totals.1 + 7);
    }
    node.shutdown();
    let out = succeeded(&reshard(&dir, 3, None)?)?;
    assert!(
        out.contains(
            "projection tally-totals: it had not read every event; its read model was dropped"
        ),
        "{out}"
    );
    verify(&dir)?;
    check(&dir, 3, &mut exp)?; // rebuilt from the journals: every event counted once
    Ok(())
}

#[test]
fn reshard_is_refused_while_a_node_runs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    let node = start(&dir, 2)?;
    let out = reshard(&dir, 1, None)?;
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("in use by process {}", std::process::id())),
        "{stderr}"
    );
    node.shutdown();
    assert_eq!(manifest_shards(&dir)?, 2, "nothing changed");
    Ok(())
}

#[test]
fn a_reshard_killed_at_any_step_leaves_the_old_or_the_new_layout() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let base = tmp.path().join("base");
    let base_exp = populate(&base, 2)?;
    let target = 1u16;
    let mut kills = 0;
    let mut saw = BTreeMap::new();
    for k in 1..=200u64 {
        let dir = tmp.path().join(format!("round-{k}"));
        copy_dir(&base, &dir)?;
        let mut exp = base_exp.clone();
        let out = reshard(&dir, target, Some(k))?;
        if out.status.success() {
            ensure!(kills >= 5, "only {kills} steps before the reshard finished");
            check(&dir, target, &mut exp)?;
            verify(&dir)?;
            break;
        }
        ensure!(
            out.status.signal() == Some(libc::SIGKILL),
            "round {k}: expected a SIGKILL, got {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        kills += 1;
        // Old or new layout: a node starts with the count the manifest names.
        let now = manifest_shards(&dir)?;
        *saw.entry(now).or_insert(0) += 1;
        check(&dir, now, &mut exp).with_context(|| format!("round {k}: after the kill"))?;
        // The start rolled the interrupted run back (uncommitted) or forward (committed).
        let m = quark_shard::data_dir::read_manifest(&dir)?.context("a manifest")?;
        assert_eq!(
            m.reshard,
            quark_shard::data_dir::ReshardPhase::Done,
            "round {k}"
        );
        assert!(
            !dir.join(".reshard-tmp").exists() && !dir.join(".reshard-old").exists(),
            "round {k}: a node start leaves no temporary layout"
        );
        verify(&dir).with_context(|| format!("round {k}: after the kill"))?;
        // A re-run finishes the job.
        succeeded(&reshard(&dir, target, None)?).with_context(|| format!("round {k}: re-run"))?;
        check(&dir, target, &mut exp).with_context(|| format!("round {k}: after the re-run"))?;
        verify(&dir)?;
        std::fs::remove_dir_all(&dir)?;
    }
    eprintln!(
        "reshard killed at {kills} steps; layouts seen after a kill (shards: rounds): {saw:?}"
    );
    ensure!(
        saw.contains_key(&2) && saw.contains_key(&1),
        "kills landed on both sides of the commit: {saw:?}"
    );
    Ok(())
}
