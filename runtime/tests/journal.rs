//! Event-sourced actors on the shard log: persist, reload, snapshots, optimistic concurrency,
//! reading by version and time, time travel, dry-run replay, upcasting, retention, erasure.

use std::path::Path;
use std::time::Duration;

use quark::journal::{
    At, EventSourced, JournalError, JournalEvent, JournalPolicy, Persist, PersistError, UpcastError,
};
use quark::{block_on, Actor, ActorKey, CallError, Context, Handler, Message, Node, NodeConfig};
use serde::{Deserialize, Serialize};

mod common;
use common::{Account, AccountEvent, Deposit, Get};

fn config(dir: &Path, extra: &str) -> NodeConfig {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"always\"\n{extra}",
        dir.to_str().unwrap()
    );
    NodeConfig::from_toml(&text, "test.toml").unwrap()
}

fn start(dir: &Path, policy: JournalPolicy, extra: &str) -> Node {
    Node::builder()
        .config(config(dir, extra))
        .register_journaled::<Account>(policy)
        .start()
        .unwrap()
}

fn deposit(node: &Node, key: &str, amount: i64) -> u64 {
    block_on(
        node.actor_ref::<Account>(key)
            .ask(Deposit(amount, format!("memo-{key}-{amount}"))),
    )
    .unwrap()
    .unwrap()
}

#[test]
fn events_survive_a_restart_and_rebuild_the_state() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), JournalPolicy::default(), "");
    for i in 1..=20 {
        assert_eq!(deposit(&node, "ann", i), i as u64);
    }
    deposit(&node, "bob", 7);
    node.shutdown();

    let node = start(tmp.path(), JournalPolicy::default(), "");
    let ann = node.actor_ref::<Account>("ann");
    assert_eq!(block_on(ann.ask(Get)).unwrap(), (210, 20));
    assert_eq!(deposit(&node, "ann", 1), 21, "versions continue");
    assert_eq!(
        block_on(node.actor_ref::<Account>("bob").ask(Get)).unwrap(),
        (7, 1)
    );
    node.shutdown();
}

#[test]
fn activation_starts_from_the_latest_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = JournalPolicy::snapshot_every(10);
    let node = start(tmp.path(), policy, "");
    for i in 1..=25 {
        deposit(&node, "ann", i);
    }
    node.shutdown();
    let node = start(tmp.path(), policy, "");
    // Snapshots hold the state before the batch that found them due: versions 10 and 20.
    let (balance, applied) = block_on(node.actor_ref::<Account>("ann").ask(Get)).unwrap();
    assert_eq!(balance, (1..=25).sum::<i64>());
    assert_eq!(applied, 5, "only the events after the version-20 snapshot");
    node.shutdown();
}

#[test]
fn the_config_file_overrides_the_snapshot_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = "[actors.account]\nsnapshot_every_events = 4\n";
    let node = start(tmp.path(), JournalPolicy::default(), extra);
    for i in 1..=10 {
        deposit(&node, "k", i);
    }
    node.shutdown();
    let node = start(tmp.path(), JournalPolicy::default(), extra);
    let (balance, applied) = block_on(node.actor_ref::<Account>("k").ask(Get)).unwrap();
    assert_eq!((balance, applied), (55, 2));
    node.shutdown();
}

#[test]
fn a_failed_append_applies_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), JournalPolicy::default(), "");
    deposit(&node, "ann", 5);
    // A 2 MiB memo cannot fit a 1 MiB segment: the append is refused.
    let big = "x".repeat(2 << 20);
    let r = block_on(node.actor_ref::<Account>("ann").ask(Deposit(100, big))).unwrap();
    assert!(matches!(r, Err(PersistError::Append { .. })), "{r:?}");
    assert_eq!(
        block_on(node.actor_ref::<Account>("ann").ask(Get)).unwrap(),
        (5, 1)
    );
    assert_eq!(deposit(&node, "ann", 1), 2, "the version did not move");
    node.shutdown();
}

#[test]
fn external_appends_check_the_expected_version() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), JournalPolicy::default(), "");
    let journal = node.journal();
    deposit(&node, "ann", 5);
    let ev = || vec![AccountEvent::Withdrew { amount: 2 }];
    match block_on(journal.append::<Account>("ann", 0, ev())) {
        Err(PersistError::VersionConflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (0, 1)),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    let p = block_on(journal.append::<Account>("ann", 1, ev())).unwrap();
    assert_eq!((p.first_version, p.version), (2, 2));
    assert_eq!(block_on(journal.version::<Account>("ann")).unwrap(), 2);
    assert_eq!(
        block_on(node.actor_ref::<Account>("ann").ask(Get))
            .unwrap()
            .0,
        3
    );
    node.shutdown();
}

#[test]
fn reading_by_version_and_time_and_time_travel() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = JournalPolicy::snapshot_every(3);
    let node = start(tmp.path(), policy, "");
    let journal = node.journal();
    for i in 1..=5 {
        deposit(&node, "ann", i);
    }
    // Make sure later events get a later millisecond than the first five.
    std::thread::sleep(Duration::from_millis(3));
    let mid = quark_now_ms();
    std::thread::sleep(Duration::from_millis(3));
    for i in 6..=10 {
        deposit(&node, "ann", i);
    }
    let evs = block_on(journal.events_by_version::<Account>("ann", 3..=4)).unwrap();
    assert_eq!(
        evs.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(evs[0].event_type, "Deposited");
    assert_eq!(
        evs[0].event,
        AccountEvent::Deposited {
            amount: 3,
            memo: "memo-ann-3".into()
        }
    );
    let early = block_on(journal.events_by_time::<Account>("ann", 0..=mid)).unwrap();
    assert_eq!(early.len(), 5);
    let late = block_on(journal.events_by_time::<Account>("ann", mid..=u64::MAX)).unwrap();
    assert_eq!(late.first().map(|e| e.version), Some(6));

    assert_eq!(
        block_on(journal.state_at::<Account>("ann", At::Version(4))).unwrap(),
        (10, 4)
    );
    assert_eq!(
        block_on(journal.state_at::<Account>("ann", At::Version(0))).unwrap(),
        (0, 0)
    );
    assert_eq!(
        block_on(journal.state_at::<Account>("ann", At::TimeMs(mid))).unwrap(),
        (15, 5)
    );
    assert_eq!(
        block_on(journal.state_at::<Account>("ann", At::Latest)).unwrap(),
        (55, 10)
    );
    assert!(matches!(
        block_on(journal.state_at::<Account>("ann", At::Version(11))),
        Err(JournalError::VersionUnavailable { version: 11, .. })
    ));
    // Time travel does not touch the live activation.
    assert_eq!(
        block_on(node.actor_ref::<Account>("ann").ask(Get))
            .unwrap()
            .0,
        55
    );

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let report = block_on(
        journal.replay::<Account>("ann", At::Version(7), move |p| s2.lock().unwrap().push(p)),
    )
    .unwrap();
    assert_eq!((report.state, report.version), (28, 7));
    assert_eq!(report.from_snapshot, 0, "a dry run starts from scratch");
    assert_eq!(report.events_applied, 7);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.last().map(|p| p.events_applied), Some(7));
    node.shutdown();
}

fn quark_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---- schema evolution: the same type name read by a newer version of the actor ----

#[derive(Default)]
struct AccountV2 {
    cents: i64,
}

impl Actor for AccountV2 {
    const TYPE_NAME: &'static str = "account";
}

#[derive(Debug, Serialize, Deserialize)]
enum AccountEventV2 {
    DepositedCents { cents: i64 },
}

impl JournalEvent for AccountEventV2 {
    const SCHEMA_VERSION: u16 = 2;
    fn type_name(&self) -> &'static str {
        "DepositedCents"
    }
    fn upcast(event_type: &str, schema_version: u16, data: &[u8]) -> Result<Self, UpcastError> {
        match (event_type, schema_version) {
            ("Deposited", 1) => {
                let old: AccountEvent = quark::journal::decode(event_type, data)?;
                match old {
                    AccountEvent::Deposited { amount, .. } => Ok(AccountEventV2::DepositedCents {
                        cents: amount * 100,
                    }),
                    AccountEvent::Withdrew { amount } => Ok(AccountEventV2::DepositedCents {
                        cents: -amount * 100,
                    }),
                }
            }
            _ => Err(UpcastError::Unsupported {
                what: event_type.into(),
                found: schema_version,
                current: 2,
            }),
        }
    }
}

impl EventSourced for AccountV2 {
    type Event = AccountEventV2;
    type Snapshot = i64;
    fn initial(_key: &ActorKey) -> Self {
        AccountV2::default()
    }
    fn apply(&mut self, e: &AccountEventV2) {
        let AccountEventV2::DepositedCents { cents } = e;
        self.cents += cents;
    }
    fn snapshot(&self) -> i64 {
        self.cents
    }
    fn restore(_key: &ActorKey, cents: i64) -> Self {
        AccountV2 { cents }
    }
}

struct Cents;
impl Message for Cents {
    type Reply = i64;
}
impl Handler<Cents> for AccountV2 {
    async fn handle(&mut self, _: Cents, _: &Context<Self>) -> i64 {
        self.cents
    }
}

#[test]
fn old_events_are_upcast_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), JournalPolicy::default(), "");
    deposit(&node, "ann", 3);
    deposit(&node, "ann", 4);
    node.shutdown();
    let node = Node::builder()
        .config(config(tmp.path(), ""))
        .register_journaled::<AccountV2>(JournalPolicy::default())
        .start()
        .unwrap();
    assert_eq!(
        block_on(node.actor_ref::<AccountV2>("ann").ask(Cents)).unwrap(),
        700
    );
    let evs = block_on(node.journal().events_by_version::<AccountV2>("ann", 1..=2)).unwrap();
    assert_eq!(evs[0].schema_version, 1);
    assert!(matches!(
        evs[1].event,
        AccountEventV2::DepositedCents { cents: 400 }
    ));
    node.shutdown();
}

#[test]
fn an_unreadable_journal_fails_the_activation_with_the_cause() {
    // Events written as `account` v1 and read by a type that has no upcaster for them.
    #[derive(Default)]
    struct Strict;
    impl Actor for Strict {
        const TYPE_NAME: &'static str = "account";
    }
    #[derive(Serialize, Deserialize)]
    struct E;
    impl JournalEvent for E {
        const SCHEMA_VERSION: u16 = 9;
        fn type_name(&self) -> &'static str {
            "E"
        }
    }
    impl EventSourced for Strict {
        type Event = E;
        type Snapshot = ();
        fn initial(_: &ActorKey) -> Self {
            Strict
        }
        fn apply(&mut self, _: &E) {}
        fn snapshot(&self) {}
        fn restore(_: &ActorKey, _: ()) -> Self {
            Strict
        }
    }
    struct Ping;
    impl Message for Ping {
        type Reply = ();
    }
    impl Handler<Ping> for Strict {
        async fn handle(&mut self, _: Ping, _: &Context<Self>) {}
    }
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), JournalPolicy::default(), "");
    deposit(&node, "ann", 3);
    node.shutdown();
    let node = Node::builder()
        .config(config(tmp.path(), ""))
        .register_journaled::<Strict>(JournalPolicy::default())
        .start()
        .unwrap();
    match block_on(node.actor_ref::<Strict>("ann").ask(Ping)) {
        Err(CallError::ActivationFailed { detail, .. }) => {
            assert!(detail.contains("schema version 1"), "{detail}");
        }
        other => panic!("expected ActivationFailed, got {other:?}"),
    }
    // Other actors of the type are unaffected.
    block_on(node.actor_ref::<Strict>("bob").ask(Ping)).unwrap();
    node.shutdown();
}

#[test]
fn retention_drops_events_before_an_old_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = "[actors.account]\nsnapshot_every_events = 5\nretention_age_ms = 1\n";
    let node = start(tmp.path(), JournalPolicy::default(), extra);
    for i in 1..=22 {
        deposit(&node, "ann", i);
        // Let each snapshot age past the 1 ms retention before the next persist.
        std::thread::sleep(Duration::from_millis(2));
    }
    let journal = node.journal();
    let retained = block_on(journal.events_by_version::<Account>("ann", 0..=u64::MAX)).unwrap();
    let first = retained.first().unwrap().version;
    assert!(
        first > 1,
        "early events were dropped (first retained {first})"
    );
    assert_eq!(retained.last().unwrap().version, 22);
    assert!(matches!(
        block_on(journal.state_at::<Account>("ann", At::Version(1))),
        Err(JournalError::VersionUnavailable { .. })
    ));
    node.shutdown();
    let node = start(tmp.path(), JournalPolicy::default(), extra);
    assert_eq!(
        block_on(node.actor_ref::<Account>("ann").ask(Get))
            .unwrap()
            .0,
        (1..=22).sum::<i64>()
    );
    let after = block_on(
        node.journal()
            .events_by_version::<Account>("ann", 0..=u64::MAX),
    )
    .unwrap();
    assert_eq!(
        after.first().unwrap().version,
        first,
        "the truncation is durable"
    );
    node.shutdown();
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

#[test]
fn erasure_removes_the_stream_from_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), JournalPolicy::snapshot_every(4), "");
    // Small segments hold many versions; both actors live on the same shard or not, either way.
    for i in 1..=10 {
        deposit(&node, "erase-me", i);
        deposit(&node, "keep-me", i);
    }
    let secret = b"memo-erase-me-7";
    assert!(!files_containing(tmp.path(), secret).is_empty());
    let report = block_on(node.journal().erase::<Account>("erase-me")).unwrap();
    assert!(report.records_erased >= 10, "{report:?}");
    assert_eq!(
        files_containing(tmp.path(), secret),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        block_on(node.actor_ref::<Account>("erase-me").ask(Get))
            .unwrap()
            .0,
        0
    );
    assert_eq!(
        deposit(&node, "erase-me", 1),
        1,
        "a new stream starts at version 1"
    );
    node.shutdown();
    let node = start(tmp.path(), JournalPolicy::snapshot_every(4), "");
    assert_eq!(
        block_on(node.actor_ref::<Account>("erase-me").ask(Get))
            .unwrap()
            .0,
        1
    );
    assert_eq!(
        block_on(node.actor_ref::<Account>("keep-me").ask(Get))
            .unwrap()
            .0,
        55
    );
    assert!(files_containing(tmp.path(), secret).is_empty());
    node.shutdown();
}

#[test]
fn without_a_log_persist_fails_clearly() {
    let node = Node::builder()
        .engine(|e| e.shards = quark::ShardSpec::Count(1))
        .register_journaled::<Account>(JournalPolicy::default())
        .start()
        .unwrap();
    let r = block_on(
        node.actor_ref::<Account>("a")
            .ask(Deposit(1, String::new())),
    )
    .unwrap();
    assert!(matches!(r, Err(PersistError::NoLog { .. })), "{r:?}");
    node.shutdown();
}

/// Polls a persist once, then drops it (a handler that raced it against something else).
struct Abandon(i64);
impl Message for Abandon {
    type Reply = bool;
}
impl Handler<Abandon> for Account {
    async fn handle(&mut self, m: Abandon, ctx: &Context<Self>) -> bool {
        use futures::FutureExt;
        let ev = AccountEvent::Deposited {
            amount: m.0,
            memo: String::new(),
        };
        ctx.persist(self, [ev]).now_or_never().is_some()
    }
}

#[test]
fn an_abandoned_persist_makes_the_activation_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), JournalPolicy::default(), "");
    deposit(&node, "ann", 5);
    let finished = block_on(node.actor_ref::<Account>("ann").ask(Abandon(100))).unwrap();
    assert!(!finished, "an fsync'd append cannot finish in one poll");
    let r = block_on(
        node.actor_ref::<Account>("ann")
            .ask(Deposit(1, String::new())),
    )
    .unwrap();
    assert!(matches!(r, Err(PersistError::Interrupted { .. })), "{r:?}");
    // The failed call flushed the abandoned batch; the next message finds a fresh activation
    // rebuilt from the log, abandoned event included, and versions go on without a gap.
    assert_eq!(
        block_on(node.actor_ref::<Account>("ann").ask(Get)).unwrap(),
        (105, 2)
    );
    assert_eq!(deposit(&node, "ann", 1), 3);
    node.shutdown();
}

#[test]
fn the_retention_sweep_covers_actors_that_stay_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = "[actors.account]\nsnapshot_every_events = 5\nretention_age_ms = 300\n";
    let node = start(tmp.path(), JournalPolicy::default(), extra);
    for i in 1..=12 {
        deposit(&node, "idle", i);
    }
    // No more writes to the actor: only the per-shard sweep (every 100 ms here) can drop its
    // events once its version-10 snapshot is older than 300 ms.
    let journal = node.journal();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let evs = block_on(journal.events_by_version::<Account>("idle", 0..=u64::MAX)).unwrap();
        let first = evs.first().unwrap().version;
        if first == 11 {
            assert_eq!(evs.last().unwrap().version, 12);
            break;
        }
        assert!(
            first == 1 || first == 6,
            "events are dropped only up to a snapshot (first retained {first})"
        );
        assert!(std::time::Instant::now() < deadline, "the sweep never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        block_on(journal.state_at::<Account>("idle", At::Latest)).unwrap(),
        ((1..=12).sum::<i64>(), 12)
    );
    node.shutdown();
}
