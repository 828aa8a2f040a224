//! Durable-state actors move between the shards of a node (docs/MIGRATION.md, "Durable
//! actors"): their saved state goes to the new shard's log before the home records the new
//! place, so a restart finds each actor on one shard with its latest state, also after a
//! crash in the middle of a move.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quark::outbox::{DurableState, Save};
use quark::{block_on, Actor, ActorId, ActorKey, Context, Handler, Message, Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Wallet {
    balance: i64,
}
impl Actor for Wallet {
    const TYPE_NAME: &'static str = "md-wallet";
}
impl DurableState for Wallet {
    fn initial(_: &ActorKey) -> Self {
        Wallet::default()
    }
}

/// A type placed on its first caller's shard (`PlacementPolicy::PreferCaller`).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Till {
    balance: i64,
}
impl Actor for Till {
    const TYPE_NAME: &'static str = "md-till";
}
impl DurableState for Till {
    fn initial(_: &ActorKey) -> Self {
        Till::default()
    }
}

/// A second type, for the crash test alone (its seam is per type).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Purse {
    balance: i64,
}
impl Actor for Purse {
    const TYPE_NAME: &'static str = "md-purse";
}
impl DurableState for Purse {
    fn initial(_: &ActorKey) -> Self {
        Purse::default()
    }
}

/// Adds and saves; replies (version, shard).
struct Put(i64);
impl Message for Put {
    type Reply = Result<(u64, u16), String>;
}
impl Handler<Put> for Wallet {
    async fn handle(&mut self, m: Put, ctx: &Context<Self>) -> Result<(u64, u16), String> {
        self.balance += m.0;
        let v = ctx.save(self).await.map_err(|e| e.to_string())?;
        Ok((v, ctx.shard()))
    }
}
impl Handler<Put> for Till {
    async fn handle(&mut self, m: Put, ctx: &Context<Self>) -> Result<(u64, u16), String> {
        self.balance += m.0;
        let v = ctx.save(self).await.map_err(|e| e.to_string())?;
        Ok((v, ctx.shard()))
    }
}
impl Handler<Look> for Till {
    async fn handle(&mut self, _: Look, ctx: &Context<Self>) -> (i64, u16) {
        (self.balance, ctx.shard())
    }
}
impl Handler<Put> for Purse {
    async fn handle(&mut self, m: Put, ctx: &Context<Self>) -> Result<(u64, u16), String> {
        self.balance += m.0;
        let v = ctx.save(self).await.map_err(|e| e.to_string())?;
        Ok((v, ctx.shard()))
    }
}
/// (balance, shard)
struct Look;
impl Message for Look {
    type Reply = (i64, u16);
}
impl Handler<Look> for Wallet {
    async fn handle(&mut self, _: Look, ctx: &Context<Self>) -> (i64, u16) {
        (self.balance, ctx.shard())
    }
}
impl Handler<Look> for Purse {
    async fn handle(&mut self, _: Look, ctx: &Context<Self>) -> (i64, u16) {
        (self.balance, ctx.shard())
    }
}

/// A type with timers (its own type: the crash seam is per type).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Meter {
    /// Sum of the ticks handled.
    total: i64,
    /// Ticks handled on each shard.
    on_shard: [u64; 2],
    /// The shard the one-shot timer fired on (`None`: not yet).
    once_on: Option<u16>,
}
impl Actor for Meter {
    const TYPE_NAME: &'static str = "md-meter";
}
impl DurableState for Meter {
    fn initial(_: &ActorKey) -> Self {
        Meter::default()
    }
}
/// Arms a one-shot timer (`Tick(100)` after `.0` ms) and an interval (`Tick(1)` every `.1` ms).
struct Arm(u64, u64);
impl Message for Arm {
    type Reply = ();
}
impl Handler<Arm> for Meter {
    async fn handle(&mut self, m: Arm, ctx: &Context<Self>) {
        ctx.set_timer(Duration::from_millis(m.0), Tick(100));
        ctx.set_interval(Duration::from_millis(m.1), Tick(1));
    }
}
#[derive(Clone)]
struct Tick(i64);
impl Message for Tick {
    type Reply = ();
}
impl Handler<Tick> for Meter {
    async fn handle(&mut self, m: Tick, ctx: &Context<Self>) {
        self.total += m.0;
        self.on_shard[usize::from(ctx.shard())] += 1;
        if m.0 == 100 {
            self.once_on = Some(ctx.shard());
        }
        ctx.save(self).await.expect("a tick saves");
    }
}
/// The state as saved.
struct Read;
impl Message for Read {
    type Reply = Meter;
}
impl Handler<Read> for Meter {
    async fn handle(&mut self, _: Read, _: &Context<Self>) -> Meter {
        self.clone()
    }
}

/// A durable type that deactivates after 50 ms idle.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Cell {
    balance: i64,
}
impl Actor for Cell {
    const TYPE_NAME: &'static str = "md-cell";
}
impl DurableState for Cell {
    fn initial(_: &ActorKey) -> Self {
        Cell::default()
    }
}
impl Handler<Put> for Cell {
    async fn handle(&mut self, m: Put, ctx: &Context<Self>) -> Result<(u64, u16), String> {
        self.balance += m.0;
        let v = ctx.save(self).await.map_err(|e| e.to_string())?;
        Ok((v, ctx.shard()))
    }
}

fn start(dir: &Path) -> Node {
    let text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\n",
        dir.to_str().expect("a UTF-8 temp path")
    );
    Node::builder()
        .config(NodeConfig::from_toml(&text, "migrate-durable.toml").expect("config"))
        .register(quark::outbox::durable_state::<Wallet>())
        .register(quark::outbox::durable_state::<Purse>())
        .register(quark::outbox::durable_state::<Meter>())
        .register(quark::outbox::durable_state::<Cell>().idle_timeout(Duration::from_millis(50)))
        .register(
            quark::outbox::durable_state::<Till>().placement(quark::PlacementPolicy::PreferCaller),
        )
        .start()
        .expect("node starts")
}

fn id<A: Actor>(key: u64) -> ActorId {
    ActorId::new(A::TYPE_NAME, key)
}

fn put<A: Actor + Handler<Put>>(node: &Node, key: u64, n: i64) -> (u64, u16) {
    block_on(node.actor_ref::<A>(key).ask(Put(n)))
        .expect("ask")
        .expect("saved")
}

fn look<A: Actor + Handler<Look>>(node: &Node, key: u64) -> (i64, u16) {
    block_on(node.actor_ref::<A>(key).ask(Look)).expect("ask")
}

/// Actors saved on their home shard, moved (some once, some away and back, some while not
/// active), saved again on their new shard: after a restart each runs on its last shard only,
/// with its latest state, and keeps saving there. Fails with the home's place record not
/// written (the actor restarts at home with the state from before the move).
#[test]
fn a_moved_durable_actor_restarts_on_its_last_shard_with_its_latest_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = 0..24u64;
    // key -> (expected shard, balance, version)
    let mut want = std::collections::HashMap::new();
    {
        let node = start(dir.path());
        for k in keys.clone() {
            let home = node.placement(&id::<Wallet>(k)).expect("placement").home;
            assert_eq!(
                put::<Wallet>(&node, k, 5),
                (1, home),
                "key {k}: first save at home"
            );
            let away = 1 - home;
            let m = node.migrate(&id::<Wallet>(k), away).expect("move away");
            assert_eq!((m.from, m.to), (home, away));
            let mut at = away;
            if k % 3 == 0 {
                // Away and back: the newest place record wins.
                node.migrate(&id::<Wallet>(k), home).expect("move back");
                at = home;
            }
            assert_eq!(
                put::<Wallet>(&node, k, 6),
                (2, at),
                "key {k}: saved after the move"
            );
            want.insert(k, (at, 11i64, 2u64));
        }
        node.shutdown();
    }
    {
        // Every actor inactive after the restart: moving one copies its records from its
        // place's log (no activation to pause).
        let node = start(dir.path());
        for k in keys.clone().filter(|k| k % 4 == 1) {
            let (at, ..) = want[&k];
            let to = 1 - at;
            let m = node
                .migrate(&id::<Wallet>(k), to)
                .expect("move while not active");
            assert_eq!(
                (m.from, m.to),
                (at, to),
                "key {k}: the restart kept its place"
            );
            assert_eq!(look::<Wallet>(&node, k), (11, to), "key {k}: state moved");
            want.insert(k, (to, 11, 2));
        }
        node.shutdown();
    }
    let node = start(dir.path());
    for k in keys {
        let (at, balance, version) = want[&k];
        assert_eq!(
            look::<Wallet>(&node, k),
            (balance, at),
            "key {k} after the restart"
        );
        assert_eq!(
            node.placement(&id::<Wallet>(k)).expect("placement").shard,
            at,
            "key {k}: the directory after the restart"
        );
        assert_eq!(
            put::<Wallet>(&node, k, 1),
            (version + 1, at),
            "key {k}: saves on where it lives"
        );
    }
    // One activation per actor, each on its last shard (none started at home beside it).
    let mut per_shard = vec![0u64; 2];
    for &(at, ..) in want.values() {
        per_shard[usize::from(at)] += 1;
    }
    let counts = node.actor_counts().expect("counts");
    let wallets = counts
        .types
        .iter()
        .find(|t| t.actor_type == Wallet::TYPE_NAME)
        .expect("the wallet type");
    assert_eq!(wallets.per_shard, per_shard, "activations per shard");
    node.shutdown();
}

/// Waits for `rx` at most `limit`.
fn within<T>(limit: Duration, what: &str, rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("{what}: no answer within {limit:?} ({e})"))
}

/// A move that stops between the new shard's durable write and the home's place record (the
/// crash seam), then an in-process restart on the same directory: the actor runs on its old
/// shard only, with its latest state (the copy on the new shard is never loaded); a later
/// move supersedes that copy, and its saves survive the next restart. Fails when the old
/// shard gives its records up (truncates them) before the move is recorded (the actor
/// restarts empty), and with the home's place record not written (the last restart finds
/// the state from before the second move).
#[test]
fn a_crash_between_the_copy_and_the_home_record_leaves_one_live_copy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = 100..108u64;
    let mut homes = std::collections::HashMap::new();
    {
        let node = start(dir.path());
        let before = quark_shard::stop_log_moves_after_copy(Some(Purse::TYPE_NAME));
        let (tx, rx) = mpsc::channel();
        for k in keys.clone() {
            let home = node.placement(&id::<Purse>(k)).expect("placement").home;
            homes.insert(k, home);
            assert_eq!(put::<Purse>(&node, k, 7), (1, home));
            assert_eq!(put::<Purse>(&node, k, 3), (2, home));
            // The move never ends (its home never hears back): run it on a thread of its own.
            let r = node.actor_ref::<Purse>(k);
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send(block_on(r.migrate(1 - home)));
            });
        }
        // Wait until every move stopped at the seam: its copy is durable on the new shard.
        let deadline = Instant::now() + Duration::from_secs(20);
        while quark_shard::stop_log_moves_after_copy(Some(Purse::TYPE_NAME)) < before + 8 {
            assert!(
                Instant::now() < deadline,
                "the moves never reached the seam"
            );
            std::thread::yield_now();
        }
        quark_shard::stop_log_moves_after_copy(None);
        // "Crash": stop the node with the moves in the middle.
        node.shutdown();
        for _ in keys.clone() {
            let r = within(Duration::from_secs(20), "a stopped move", &rx);
            assert!(
                r.is_err(),
                "a move stopped at the seam did not complete: {r:?}"
            );
        }
    }
    {
        let node = start(dir.path());
        for k in keys.clone() {
            let home = homes[&k];
            assert_eq!(
                look::<Purse>(&node, k),
                (10, home),
                "key {k}: on its old shard"
            );
        }
        // One activation each, on its old shard.
        let mut per_shard = vec![0u64; 2];
        for &h in homes.values() {
            per_shard[usize::from(h)] += 1;
        }
        let counts = node.actor_counts().expect("counts");
        let purses = counts
            .types
            .iter()
            .find(|t| t.actor_type == Purse::TYPE_NAME)
            .expect("the purse type");
        assert_eq!(purses.per_shard, per_shard, "activations per shard");
        for k in keys.clone() {
            let home = homes[&k];
            assert_eq!(
                put::<Purse>(&node, k, 1),
                (3, home),
                "key {k}: latest version"
            );
            // A real move now: its copy supersedes the one the crash left.
            node.migrate(&id::<Purse>(k), 1 - home).expect("move");
            assert_eq!(put::<Purse>(&node, k, 1), (4, 1 - home), "key {k}: moved");
        }
        node.shutdown();
    }
    let node = start(dir.path());
    for k in keys {
        let home = homes[&k];
        assert_eq!(
            look::<Purse>(&node, k),
            (12, 1 - home),
            "key {k} after the restart"
        );
    }
    node.shutdown();
}

/// Four threads deposit into one durable actor without pause while it moves between the two
/// shards 40 times: every acknowledged save is kept (the balance and the version equal the
/// acknowledged deposits, also after a restart), so no second activation saved beside the
/// first and no activation loaded a copy older than the last save. Fails with the new shard
/// answering the home before its copy is written (the actor loads an older state there).
#[test]
fn saves_under_traffic_survive_forty_moves_and_a_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("temp dir");
    const KEY: u64 = 500;
    let acked = {
        let node = start(dir.path());
        let home = node.placement(&id::<Wallet>(KEY)).expect("placement").home;
        put::<Wallet>(&node, KEY, 0);
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..4)
            .map(|s| {
                let r = node.actor_ref::<Wallet>(KEY);
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut acked = 0u64;
                    let mut last = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (v, _) = block_on(r.ask(Put(1)))
                            .expect("ask")
                            .unwrap_or_else(|e| panic!("sender {s}: save failed: {e}"));
                        assert!(v > last, "sender {s}: version {v} after {last}");
                        last = v;
                        acked += 1;
                    }
                    acked
                })
            })
            .collect();
        for i in 0..40u16 {
            let to = if i % 2 == 0 { 1 - home } else { home };
            let m = node.migrate(&id::<Wallet>(KEY), to).expect("move");
            assert_eq!(m.to, to, "move {i}");
        }
        stop.store(true, Ordering::Relaxed);
        let acked: u64 = senders.into_iter().map(|h| h.join().expect("sender")).sum();
        assert!(acked > 0, "no deposit went through");
        let (balance, at) = look::<Wallet>(&node, KEY);
        assert_eq!(
            balance, acked as i64,
            "every acknowledged deposit counted once"
        );
        assert_eq!(at, home, "an even number of moves ends at home");
        node.shutdown();
        acked
    };
    let node = start(dir.path());
    assert_eq!(
        look::<Wallet>(&node, KEY).0,
        acked as i64,
        "after the restart"
    );
    assert_eq!(
        put::<Wallet>(&node, KEY, 1).0,
        acked + 2,
        "the version counts every save (the first one, the deposits, this one)"
    );
    node.shutdown();
}

/// A durable type placed by its policy on its first caller's shard (not its home): the home
/// records the place before the first message goes there, so after a restart a call from
/// outside the node (which the policy would place at home) finds the actor, and its state, on
/// the caller's shard. Fails with the place record not written (it starts afresh at home).
#[test]
fn a_durable_actor_placed_by_its_policy_is_found_there_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut placed = Vec::new();
    {
        let node = start(dir.path());
        for k in 0..16u64 {
            let home = node.placement(&id::<Till>(k)).expect("placement").home;
            let caller = 1 - home;
            let r = node.actor_ref::<Till>(k);
            let h = node
                .handle()
                .spawn_on(caller, move || async move { r.ask(Put(3)).await });
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(h.join());
            });
            let got = within(Duration::from_secs(20), "a first call from a shard", &rx)
                .expect("the task ran")
                .expect("ask")
                .expect("saved");
            assert_eq!(got, (1, caller), "key {k}: placed on the caller's shard");
            placed.push((k, caller));
        }
        node.shutdown();
    }
    let node = start(dir.path());
    for (k, at) in placed {
        assert_eq!(look::<Till>(&node, k), (3, at), "key {k} after the restart");
    }
    node.shutdown();
}

/// A durable actor with a pending one-shot timer and an interval moves to the other shard
/// (its records move, its memory does not): both timers are re-armed there, the one-shot
/// fires once, on the new shard, and the interval keeps ticking there and no more on the old
/// one; a second move carries them back. Fails with the timers cancelled at the move (the
/// one-shot never fires).
#[test]
fn a_durable_actors_timers_move_with_it_between_shards() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start(dir.path());
    let r = node.actor_ref::<Meter>(7u64);
    let home = node.placement(&id::<Meter>(7)).expect("placement").home;
    let away = 1 - home;
    block_on(r.ask(Arm(1500, 20))).expect("arm");
    node.migrate(&id::<Meter>(7), away).expect("move away");
    let read = || block_on(r.ask(Read)).expect("read");
    let until = |what: &str, f: &dyn Fn(&Meter) -> bool| {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let m = read();
            if f(&m) {
                return m;
            }
            assert!(Instant::now() < end, "{what}: {m:?}");
            std::thread::yield_now();
        }
    };
    let m = until("the one-shot fired", &|m| m.once_on.is_some());
    assert_eq!(m.once_on, Some(away), "the one-shot fired on the new shard");
    let before_home = m.on_shard[usize::from(home)];
    let m = until("the interval ticks on the new shard", &|x| {
        x.on_shard[usize::from(away)] >= m.on_shard[usize::from(away)] + 3
    });
    assert_eq!(
        m.on_shard[usize::from(home)],
        before_home,
        "no tick on the old shard"
    );
    // And back: the interval follows again.
    node.migrate(&id::<Meter>(7), home).expect("move back");
    let at_move = read();
    let m = until("the interval ticks at home again", &|x| {
        x.on_shard[usize::from(home)] >= at_move.on_shard[usize::from(home)] + 3
    });
    assert_eq!(
        m.total - 100,
        (m.on_shard[0] + m.on_shard[1] - 1) as i64,
        "one one-shot, every tick once"
    );
    node.shutdown();
}

fn entries(node: &Node) -> u64 {
    node.stats()
        .expect("stats")
        .iter()
        .map(|s| s.directory_entries)
        .sum()
}

/// Durable actors moved away from home deactivate (idle): their directory entries go (the
/// directory shrinks to zero), and each next message still finds the actor on the shard it
/// was moved to, with its state (the place records say where), once; so after a restart.
/// Fails with the entries kept after a log move (16 stay).
#[test]
fn a_durable_actors_entry_goes_when_it_deactivates_and_its_place_stays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = 0..16u64;
    let mut at = std::collections::HashMap::new();
    {
        let node = start(dir.path());
        for k in keys.clone() {
            let home = node.placement(&id::<Cell>(k)).expect("placement").home;
            assert_eq!(put::<Cell>(&node, k, 4), (1, home));
            node.migrate(&id::<Cell>(k), 1 - home).expect("move");
            at.insert(k, 1 - home);
        }
        let end = Instant::now() + Duration::from_secs(20);
        while entries(&node) != 0 {
            assert!(Instant::now() < end, "entries stay: {}", entries(&node));
            std::thread::yield_now();
        }
        for k in keys.clone() {
            assert_eq!(
                put::<Cell>(&node, k, 1),
                (2, at[&k]),
                "key {k}: on its shard"
            );
        }
        node.shutdown();
    }
    let node = start(dir.path());
    for k in keys {
        assert_eq!(
            put::<Cell>(&node, k, 1),
            (3, at[&k]),
            "key {k} after the restart"
        );
    }
    node.shutdown();
}
