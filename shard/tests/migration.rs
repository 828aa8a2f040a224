//! Live migration between the shards of one node (docs/MIGRATION.md): no message lost or
//! handled twice, per-sender FIFO and state kept across moves under traffic, a single
//! activation under concurrent first calls, and aborted moves at their deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use quark_shard::{
    block_on, Actor, ActorId, ActorKey, ActorType, Context, Engine, EngineBuilder, EngineConfig,
    Handler, Message, MigrateError, ShardSpec,
};

fn config() -> EngineConfig {
    EngineConfig {
        shards: ShardSpec::Count(2),
        idle_spin: Duration::from_micros(20),
        ask_timeout: Duration::from_secs(10),
        ..EngineConfig::default()
    }
}

fn id_of<A: Actor>(key: impl Into<ActorKey>) -> ActorId {
    ActorId {
        type_name: A::TYPE_NAME,
        key: key.into(),
    }
}

/// Waits for `rx` at most `limit` (a hung shard fails the test instead of hanging it).
fn within<T>(limit: Duration, what: &str, rx: mpsc::Receiver<T>) -> T {
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("{what}: no answer within {limit:?} ({e})"))
}

/// Polls `cond` until it holds; fails naming `what` after `limit`.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

// ---- a counter that checks every sender's sequence numbers

#[derive(Default)]
struct Counter {
    /// The last sequence number handled per sender.
    last: HashMap<u32, u64>,
    total: u64,
    /// Gaps, repeats and reorders seen (empty if FIFO held and nothing was lost or doubled).
    faults: Vec<String>,
}
impl Actor for Counter {
    const TYPE_NAME: &'static str = "mig-counter";
}
struct Step {
    sender: u32,
    seq: u64,
}
impl Message for Step {
    type Reply = u64;
}
impl Handler<Step> for Counter {
    async fn handle(&mut self, m: Step, ctx: &Context<Self>) -> u64 {
        let last = self.last.entry(m.sender).or_insert(0);
        if m.seq != *last + 1 && self.faults.len() < 20 {
            self.faults.push(format!(
                "sender {}: seq {} after {} (on shard {})",
                m.sender,
                m.seq,
                last,
                ctx.shard()
            ));
        }
        *last = m.seq;
        self.total += 1;
        self.total
    }
}
struct Report;
impl Message for Report {
    type Reply = (u64, HashMap<u32, u64>, Vec<String>);
}
impl Handler<Report> for Counter {
    async fn handle(
        &mut self,
        _: Report,
        _: &Context<Self>,
    ) -> (u64, HashMap<u32, u64>, Vec<String>) {
        (self.total, self.last.clone(), self.faults.clone())
    }
}

/// Moves `id` between shards 0 and 1 until it made `moves` moves; returns the `Busy` retries.
fn ping_pong(engine: &Engine, id: &ActorId, moves: u32) -> u32 {
    let mut place = engine.placement(id).expect("placement").shard;
    let (mut done, mut busy) = (0, 0);
    while done < moves {
        let to = 1 - place;
        match engine.migrate(id, to) {
            Ok(m) => {
                assert_eq!((m.from, m.to), (place, to), "move {done}");
                place = to;
                done += 1;
            }
            // Another move of the actor is under way (not with this single mover).
            Err(MigrateError::Busy { .. }) => {
                busy += 1;
                std::thread::yield_now();
            }
            Err(e) => panic!("move {done}: {e}"),
        }
    }
    busy
}

/// 100 senders (48 ask-only tasks and 48 mostly-tell tasks spread over both shards, and 4
/// threads outside the node) send numbered messages to one counter while it moves between
/// the two shards 1,000 times. Every message is handled exactly once, in each sender's
/// order, and the count survives every move.
#[test]
fn hundred_senders_while_the_actor_moves_a_thousand_times() {
    hundred_senders(config(), 1000);
}

/// The same with two cross-shard credits per pair of shards: the home often has no credit
/// to forward a message at once, so messages wait at the home for credits (its flusher task
/// sends them on) and a move's pause command waits behind them. Before the command could
/// queue, a move was refused (`Busy`) while anything waited, and under this load the mover
/// never got through.
#[test]
fn hundred_senders_with_two_credits_while_the_actor_moves() {
    hundred_senders(
        EngineConfig {
            cross_shard_inflight_max: 2,
            ..config()
        },
        200,
    );
}

fn hundred_senders(config: EngineConfig, moves: u32) {
    let engine = EngineBuilder::new(config)
        .register(ActorType::new(|_| Counter::default()).movable())
        .start()
        .expect("engine starts");
    const KEY: u64 = 42;
    const MIN_PER_SENDER: u64 = 20;
    let id = id_of::<Counter>(KEY);
    let stop = Arc::new(AtomicBool::new(false));
    let sent_during_moves = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for sender in 0..96u32 {
        let r = engine.actor_ref::<Counter>(KEY);
        let stop = stop.clone();
        let during = sent_during_moves.clone();
        let shard = (sender % 2) as u16;
        tasks.push(engine.spawn_on(shard, move || async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) || seq < MIN_PER_SENDER {
                seq += 1;
                let m = Step { sender, seq };
                // Odd senders tell seven messages out of eight, then wait for an answer.
                let r = if sender % 2 == 1 && !seq.is_multiple_of(8) {
                    r.tell(m).await
                } else {
                    r.ask(m).await.map(drop)
                };
                r.map_err(|e| format!("sender {sender} seq {seq}: {e}"))?;
                if !stop.load(Ordering::Relaxed) {
                    during.fetch_add(1, Ordering::Relaxed);
                }
            }
            // A last ask: once answered, every earlier tell of this sender was handled
            // (per-sender FIFO), so the report below sees them all.
            seq += 1;
            r.ask(Step { sender, seq })
                .await
                .map_err(|e| format!("sender {sender} seq {seq}: {e}"))?;
            Ok::<(u32, u64), String>((sender, seq))
        }));
    }
    let mut threads = Vec::new();
    for sender in 96..100u32 {
        let r = engine.actor_ref::<Counter>(KEY);
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) || seq < MIN_PER_SENDER {
                seq += 1;
                r.ask_blocking(Step { sender, seq })
                    .map_err(|e| format!("sender {sender} seq {seq}: {e}"))?;
            }
            Ok::<(u32, u64), String>((sender, seq))
        }));
    }
    eventually(Duration::from_secs(30), "the first messages", || {
        sent_during_moves.load(Ordering::Relaxed) >= 100
    });
    let started = Instant::now();
    let busy = ping_pong(&engine, &id, moves);
    let moving_took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut sent: HashMap<u32, u64> = HashMap::new();
    for t in tasks {
        let (sender, n) = t.join().expect("sender task").expect("every message sent");
        sent.insert(sender, n);
    }
    for t in threads {
        let (sender, n) = t
            .join()
            .expect("sender thread")
            .expect("every ask answered");
        sent.insert(sender, n);
    }
    let r = engine.actor_ref::<Counter>(KEY);
    let (total, last, faults) = block_on(r.ask(Report)).expect("report");
    assert_eq!(
        faults,
        Vec::<String>::new(),
        "FIFO per sender, nothing lost or doubled"
    );
    assert_eq!(
        last, sent,
        "every sender's last message was handled, and no other"
    );
    assert_eq!(
        total,
        sent.values().sum::<u64>(),
        "the count survived the moves"
    );
    let stats = engine.stats().expect("stats");
    let sum = |f: fn(&quark_shard::ShardStatsSnapshot) -> u64| stats.iter().map(f).sum::<u64>();
    assert_eq!(sum(|s| s.migrations_done), u64::from(moves));
    assert_eq!(sum(|s| s.migrations_aborted), 0);
    assert!(
        sum(|s| s.migrate_forwarded) > 0,
        "the home forwarded messages"
    );
    let during = sent_during_moves.load(Ordering::Relaxed);
    eprintln!(
        "{moves} moves in {moving_took:?} ({busy} busy retries), {during} messages sent \
         meanwhile, {total} in all, {} forwarded",
        sum(|s| s.migrate_forwarded)
    );
    engine.shutdown();
}

// ---- single activation

/// Turns of each key in progress right now, over all shards (a second one means two
/// activations ran turns at once).
static IN_TURN: [AtomicU32; ROUNDS] = [const { AtomicU32::new(0) }; ROUNDS];
static OVERLAPS: AtomicU64 = AtomicU64::new(0);
const ROUNDS: usize = 100;

struct Solo {
    n: u64,
}
impl Actor for Solo {
    const TYPE_NAME: &'static str = "mig-solo";
}
struct Hit(usize);
impl Message for Hit {
    type Reply = u64;
}
impl Handler<Hit> for Solo {
    async fn handle(&mut self, m: Hit, _: &Context<Self>) -> u64 {
        if IN_TURN[m.0].fetch_add(1, Ordering::SeqCst) != 0 {
            OVERLAPS.fetch_add(1, Ordering::SeqCst);
        }
        // A turn long enough for a second activation on the other core to overlap it.
        let until = Instant::now() + Duration::from_micros(30);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        IN_TURN[m.0].fetch_sub(1, Ordering::SeqCst);
        self.n += 1;
        self.n
    }
}

/// Round after round, a fresh actor gets its first calls from tasks on both shards and from
/// a thread outside the node while it is moved away from its home and back: no two turns of
/// it ever overlap, and its count is the number of calls (one activation saw them all).
#[test]
fn concurrent_first_calls_from_every_shard_while_the_actor_moves() {
    let engine = EngineBuilder::new(config())
        .register(ActorType::new(|_| Solo { n: 0 }).movable())
        .start()
        .expect("engine starts");
    const PER_CALLER: u64 = 5;
    for round in 0..ROUNDS {
        let key = round as u64;
        let id = id_of::<Solo>(key);
        let home = engine.placement(&id).expect("placement").home;
        let mut calls = Vec::new();
        for shard in [0u16, 1, 0, 1] {
            let r = engine.actor_ref::<Solo>(key);
            calls.push(engine.spawn_on(shard, move || async move {
                for _ in 0..PER_CALLER {
                    r.ask(Hit(round)).await.expect("hit");
                }
            }));
        }
        let r = engine.actor_ref::<Solo>(key);
        let outside = std::thread::spawn(move || {
            for _ in 0..PER_CALLER {
                r.ask_blocking(Hit(round)).expect("hit");
            }
        });
        let away = 1 - home;
        engine.migrate(&id, away).expect("move away");
        engine.migrate(&id, home).expect("move back");
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            for c in calls {
                c.join().expect("caller");
            }
            outside.join().expect("outside caller");
            let _ = done_tx.send(());
        });
        within(Duration::from_secs(30), "the callers", done);
        let n = block_on(engine.actor_ref::<Solo>(key).ask(Hit(round))).expect("count");
        assert_eq!(
            n,
            5 * PER_CALLER + 1,
            "round {round}: one activation saw every call"
        );
    }
    assert_eq!(
        OVERLAPS.load(Ordering::SeqCst),
        0,
        "two activations ran turns at once"
    );
    engine.shutdown();
}

// ---- abort at the deadline

struct Sloth {
    n: u64,
}
impl Actor for Sloth {
    const TYPE_NAME: &'static str = "mig-sloth";
}
/// Holds the turn (awaiting, the shard keeps running) after saying it started.
struct Nap {
    started: mpsc::Sender<()>,
    hold: Duration,
}
impl Message for Nap {
    type Reply = ();
}
impl Handler<Nap> for Sloth {
    async fn handle(&mut self, m: Nap, _: &Context<Self>) {
        m.started.send(()).expect("the test waits");
        quark_shard::sleep(m.hold).await;
    }
}
struct Inc;
impl Message for Inc {
    type Reply = u64;
}
impl Handler<Inc> for Sloth {
    async fn handle(&mut self, _: Inc, _: &Context<Self>) -> u64 {
        self.n += 1;
        self.n
    }
}

/// A move whose actor is inside a long turn is aborted at its deadline, not when the turn
/// ends: the actor stays and runs where it was, with its state, and the messages sent to it
/// during the aborted move are handled. The next move succeeds.
#[test]
fn a_move_that_misses_its_deadline_is_aborted_and_the_actor_stays() {
    let timeout = Duration::from_millis(300);
    let hold = Duration::from_secs(3);
    let engine = EngineBuilder::new(EngineConfig {
        migration_timeout: timeout,
        ..config()
    })
    .register(ActorType::new(|_| Sloth { n: 0 }).movable())
    .start()
    .expect("engine starts");
    let key = quark_placement::key_for_shard(Sloth::TYPE_NAME, 0, 2);
    let id = id_of::<Sloth>(key);
    let r = engine.actor_ref::<Sloth>(key);
    assert_eq!(r.ask_blocking(Inc), Ok(1));
    let (started_tx, started) = mpsc::channel();
    let napper = {
        let r = r.clone();
        std::thread::spawn(move || {
            r.ask_timeout_blocking(
                Nap {
                    started: started_tx,
                    hold,
                },
                Duration::from_secs(30),
            )
        })
    };
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the nap began");
    // Tells sent while the move is under way wait at the home and are handled after it.
    let teller = {
        let r = r.clone();
        std::thread::spawn(move || {
            eventually(Duration::from_secs(10), "the move to start", || {
                block_on(r.placement()).expect("placement").moving
            });
            for _ in 0..5 {
                r.tell_blocking(Inc).expect("tell");
            }
        })
    };
    let t0 = Instant::now();
    let err = engine
        .migrate(&id, 1)
        .expect_err("the move cannot finish in time");
    let took = t0.elapsed();
    assert!(
        matches!(err, MigrateError::DeadlineExceeded { from: 0, to: 1, .. }),
        "{err}"
    );
    assert!(
        took >= timeout && took < hold,
        "aborted at the deadline ({timeout:?}), not at the end of the turn: {took:?}"
    );
    teller.join().expect("teller");
    let p = engine.placement(&id).expect("placement");
    assert_eq!(
        (p.shard, p.moving),
        (0, false),
        "the actor stays on shard 0"
    );
    napper
        .join()
        .expect("napper")
        .expect("the nap ends normally");
    assert_eq!(
        r.ask_blocking(Inc),
        Ok(7),
        "state kept, and the 5 tells handled"
    );
    let moved = engine.migrate(&id, 1).expect("the next move succeeds");
    assert_eq!((moved.from, moved.to, moved.bytes), (0, 1, 0));
    assert_eq!(engine.placement(&id).expect("placement").shard, 1);
    assert_eq!(r.ask_blocking(Inc), Ok(8));
    let stats = engine.stats().expect("stats");
    assert_eq!(stats[0].migrations_started, 2);
    assert_eq!(stats[0].migrations_aborted, 1);
    assert_eq!(stats[0].migrations_done, 1);
    assert_eq!(
        stats[0].directory_entries, 1,
        "the actor lives away from home"
    );
    engine.shutdown();
}

// ---- dehydrate / rehydrate, and refusals

struct Note {
    text: String,
}
impl Actor for Note {
    const TYPE_NAME: &'static str = "mig-note";
}
struct Append(&'static str);
impl Message for Append {
    type Reply = String;
}
impl Handler<Append> for Note {
    async fn handle(&mut self, m: Append, ctx: &Context<Self>) -> String {
        self.text.push_str(m.0);
        format!("{}@{}", self.text, ctx.shard())
    }
}
struct Fixed;
impl Actor for Fixed {
    const TYPE_NAME: &'static str = "mig-fixed";
}

/// A state moved as bytes arrives whole (and its bytes are counted); an actor back at its
/// home leaves no directory entry; refusals name their cause.
#[test]
fn dehydrated_state_moves_as_bytes_and_refusals_say_why() {
    let engine = EngineBuilder::new(config())
        .register(
            ActorType::new(|_| Note {
                text: String::new(),
            })
            .migratable(
                |n: &Note| n.text.as_bytes().to_vec(),
                |_, b| {
                    Ok(Note {
                        text: String::from_utf8(b.to_vec())?,
                    })
                },
            ),
        )
        .register(ActorType::new(|_| Fixed))
        .start()
        .expect("engine starts");
    let key = quark_placement::key_for_shard(Note::TYPE_NAME, 0, 2);
    let id = id_of::<Note>(key);
    let r = engine.actor_ref::<Note>(key);
    assert_eq!(r.ask_blocking(Append("abc")).as_deref(), Ok("abc@0"));
    let m = engine.migrate(&id, 1).expect("move");
    assert_eq!((m.from, m.to, m.bytes), (0, 1, 3));
    assert_eq!(r.ask_blocking(Append("d")).as_deref(), Ok("abcd@1"));
    let m = block_on(r.migrate(0)).expect("move home");
    assert_eq!((m.from, m.to, m.bytes), (1, 0, 4));
    assert_eq!(r.ask_blocking(Append("e")).as_deref(), Ok("abcde@0"));
    let p = block_on(r.placement()).expect("placement");
    assert_eq!((p.home, p.shard, p.moving), (0, 0, false));
    let stats = engine.stats().expect("stats");
    assert_eq!(stats[0].directory_entries, 0, "back home: no entry");
    assert_eq!(stats[0].migration_bytes, 7);

    let fixed = id_of::<Fixed>(1u64);
    assert!(matches!(
        engine.migrate(&fixed, 1),
        Err(MigrateError::NotMigratable { .. })
    ));
    assert!(matches!(
        engine.migrate(&id, 2),
        Err(MigrateError::NoSuchShard {
            shard: 2,
            shards: 2,
            ..
        })
    ));
    let unknown = ActorId {
        type_name: "nope",
        key: 1u64.into(),
    };
    assert!(matches!(
        engine.migrate(&unknown, 1),
        Err(MigrateError::UnknownType { .. })
    ));
    engine.shutdown();
}

// ---- senders on another node

struct Tally {
    n: u64,
}
impl Actor for Tally {
    const TYPE_NAME: &'static str = "mig-tally";
}
#[derive(quark_net::rkyv::Archive, quark_net::rkyv::Serialize, quark_net::rkyv::Deserialize)]
#[rkyv(crate = quark_net::rkyv)]
struct Add(u64);
impl Message for Add {
    type Reply = (u64, u16);
}
impl quark_net::WireMessage for Add {
    const WIRE_NAME: &'static str = "migration-test.Add";
}
impl Handler<Add> for Tally {
    async fn handle(&mut self, m: Add, ctx: &Context<Self>) -> (u64, u16) {
        self.n += m.0;
        (self.n, ctx.shard())
    }
}

fn two_nodes() -> Vec<Engine> {
    use quark_net::{ClusterConfig, MemberAddr, Membership, PeerRole};
    let ls: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let members = Membership::from_config(&ClusterConfig {
        cluster_id: "migration".into(),
        nodes: ls
            .iter()
            .enumerate()
            .map(|(i, l)| MemberAddr {
                id: i as u64 + 1,
                addr: l.local_addr().expect("bound").to_string(),
            })
            .collect(),
    })
    .expect("membership");
    ls.into_iter()
        .enumerate()
        .map(|(i, l)| {
            let mut net =
                quark_shard::NetConfig::new(i as u64 + 1, PeerRole::Member, members.clone());
            net.listener = Some(Arc::new(l));
            EngineBuilder::new(EngineConfig {
                pin_threads: false,
                net: Some(net),
                ..config()
            })
            .register(ActorType::new(|_| Tally { n: 0 }).movable())
            .remote::<Tally, Add>()
            .start()
            .expect("engine starts")
        })
        .collect()
}

/// Asks from another node reach an actor moved away from its home shard (through the home,
/// which relays the replies), exactly once each and in order; a node refuses to move an actor
/// that another node owns.
#[test]
fn asks_from_another_node_follow_a_moved_actor() {
    let nodes = two_nodes();
    // A key node 1 owns, asked from node 2.
    let key = (0..10_000u64)
        .find(|k| nodes[1].actor_ref::<Tally>(*k).remote_node() == Some(1))
        .expect("some key lands on node 1");
    let id = id_of::<Tally>(key);
    let from_2 = nodes[1].actor_ref::<Tally>(key);
    let deadline = Instant::now() + Duration::from_secs(20);
    // The first ask waits for the link to come up.
    let (n, home) = loop {
        match from_2.ask_blocking(Add(1)) {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < deadline, "node 1 never answered: {e}"),
        }
        std::thread::yield_now();
    };
    assert_eq!(n, 1);
    let mut total = 1;
    for round in 0..20u64 {
        let to = if round % 2 == 0 { 1 - home } else { home };
        let m = nodes[0].migrate(&id, to).expect("move on node 1");
        assert_eq!(m.to, to);
        for _ in 0..10 {
            total += 1;
            assert_eq!(
                from_2.ask_blocking(Add(1)),
                Ok((total, to)),
                "round {round}"
            );
        }
    }
    assert!(matches!(
        nodes[1].migrate(&id, 0),
        Err(MigrateError::OtherNode { .. })
    ));
    let forwarded: u64 = nodes[0]
        .stats()
        .expect("stats")
        .iter()
        .map(|s| s.migrate_forwarded)
        .sum();
    assert_eq!(
        forwarded, 100,
        "every ask made while the actor was away went through its home"
    );
    for n in nodes {
        n.shutdown();
    }
}

// ---- rate limit, and a moved actor's later life

/// `migrations_per_sec_max` moves per home shard and second: the next one is refused until
/// the shard's clock enters the next second.
#[test]
fn moves_beyond_the_rate_limit_are_refused_until_the_next_second() {
    let clock = quark_shard::ManualClock::new();
    let engine = EngineBuilder::new(EngineConfig {
        migrations_per_sec_max: 2,
        clock: clock.clone().into(),
        ..config()
    })
    .register(ActorType::new(|_| Tally { n: 0 }).movable())
    .start()
    .expect("engine starts");
    // Keys of one home shard (the limit is per home shard).
    let keys: Vec<u64> = (0..100u64)
        .filter(|k| engine.actor_ref::<Tally>(*k).owner_shard() == 0)
        .take(4)
        .collect();
    let id = |i: usize| id_of::<Tally>(keys[i]);
    assert_eq!(engine.migrate(&id(0), 1).map(|m| m.to), Ok(1));
    assert_eq!(engine.migrate(&id(1), 1).map(|m| m.to), Ok(1));
    assert!(matches!(
        engine.migrate(&id(2), 1),
        Err(MigrateError::RateLimited {
            shard: 0,
            limit: 2,
            ..
        })
    ));
    assert_eq!(
        engine.placement(&id(2)).expect("placement").shard,
        0,
        "not moved"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(engine.migrate(&id(2), 1).map(|m| m.to), Ok(1));
    let stats = engine.stats().expect("stats");
    assert_eq!(
        stats[0].migrations_started, 3,
        "a refused move is not started"
    );
    engine.shutdown();
}

/// A moved actor that goes idle is deactivated on its new shard; its directory entry is
/// released then, so its next message activates it at home again, with fresh state
/// (docs/MIGRATION.md, "The directory").
#[test]
fn a_moved_actor_reactivates_where_it_was_moved() {
    let engine = EngineBuilder::new(config())
        .register(
            ActorType::new(|_| Tally { n: 0 })
                .movable()
                .idle_timeout(Duration::from_millis(50)),
        )
        .start()
        .expect("engine starts");
    let key = quark_placement::key_for_shard(Tally::TYPE_NAME, 0, 2);
    let r = engine.actor_ref::<Tally>(key);
    assert_eq!(r.ask_blocking(Add(5)), Ok((5, 0)));
    engine.migrate(&id_of::<Tally>(key), 1).expect("move");
    assert_eq!(r.ask_blocking(Add(1)), Ok((6, 1)));
    eventually(
        Duration::from_secs(20),
        "the idle deactivation on shard 1",
        || engine.stats().expect("stats")[1].deactivations >= 1,
    );
    eventually(Duration::from_secs(20), "the entry released", || {
        engine.stats().expect("stats")[0].directory_entries == 0
    });
    assert_eq!(r.ask_blocking(Add(1)), Ok((1, 0)), "fresh state, at home");
    assert_eq!(
        engine
            .placement(&id_of::<Tally>(key))
            .expect("placement")
            .shard,
        0
    );
    engine.shutdown();
}

/// A node that shuts down while a move waits for its actor's turn to end stops normally, and
/// the caller of the move gets an error (not a hang, and no move).
#[test]
fn shutdown_during_a_move_ends_it_with_an_error() {
    let engine = EngineBuilder::new(EngineConfig {
        migration_timeout: Duration::from_secs(60),
        shutdown_timeout: Duration::from_millis(500),
        ..config()
    })
    .register(ActorType::new(|_| Sloth { n: 0 }).movable())
    .start()
    .expect("engine starts");
    let key = quark_placement::key_for_shard(Sloth::TYPE_NAME, 0, 2);
    let r = engine.actor_ref::<Sloth>(key);
    let (started_tx, started) = mpsc::channel();
    let napper = {
        let r = r.clone();
        std::thread::spawn(move || {
            r.ask_timeout_blocking(
                Nap {
                    started: started_tx,
                    hold: Duration::from_secs(5),
                },
                Duration::from_secs(30),
            )
        })
    };
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the nap began");
    let (moved_tx, moved) = mpsc::channel();
    let mover = r.clone();
    std::thread::spawn(move || {
        let _ = moved_tx.send(block_on(mover.migrate(1)));
    });
    eventually(Duration::from_secs(10), "the move to start", || {
        block_on(r.placement()).expect("placement").moving
    });
    let t0 = Instant::now();
    engine.shutdown();
    let result = within(Duration::from_secs(10), "the move's outcome", moved);
    assert!(result.is_err(), "{result:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        napper.join().expect("napper").is_err(),
        "the nap was cut by the shutdown"
    );
}

// ---- timers move with the actor

/// Records on which shard each timer tick ran.
#[derive(Default)]
struct Clock {
    ticks: Vec<u16>,
    rings: Vec<u16>,
    interval: Option<quark_shard::TimerId>,
}
impl Actor for Clock {
    const TYPE_NAME: &'static str = "mig-clock";
}
struct Start;
impl Message for Start {
    type Reply = quark_shard::TimerId;
}
impl Handler<Start> for Clock {
    async fn handle(&mut self, _: Start, ctx: &Context<Self>) -> quark_shard::TimerId {
        let id = ctx.set_interval(Duration::from_millis(5), Tick);
        self.interval = Some(id);
        ctx.set_timer(Duration::from_millis(400), Ring);
        id
    }
}
struct CancelId(quark_shard::TimerId);
impl Message for CancelId {
    type Reply = bool;
}
impl Handler<CancelId> for Clock {
    async fn handle(&mut self, m: CancelId, ctx: &Context<Self>) -> bool {
        ctx.cancel_timer(m.0)
    }
}
#[derive(Clone)]
struct Tick;
impl Message for Tick {
    type Reply = ();
}
impl Handler<Tick> for Clock {
    async fn handle(&mut self, _: Tick, ctx: &Context<Self>) {
        self.ticks.push(ctx.shard());
    }
}
struct Ring;
impl Message for Ring {
    type Reply = ();
}
impl Handler<Ring> for Clock {
    async fn handle(&mut self, _: Ring, ctx: &Context<Self>) {
        self.rings.push(ctx.shard());
    }
}
/// Cancels the interval by the id it got before the move.
struct Stop;
impl Message for Stop {
    type Reply = bool;
}
impl Handler<Stop> for Clock {
    async fn handle(&mut self, _: Stop, ctx: &Context<Self>) -> bool {
        self.interval.take().is_some_and(|id| ctx.cancel_timer(id))
    }
}
struct Alarm;
impl Message for Alarm {
    type Reply = ();
}
impl Handler<Alarm> for Clock {
    async fn handle(&mut self, _: Alarm, ctx: &Context<Self>) {
        ctx.set_timer(Duration::from_millis(100), Ring);
    }
}
struct Seen;
impl Message for Seen {
    type Reply = (Vec<u16>, Vec<u16>);
}
impl Handler<Seen> for Clock {
    async fn handle(&mut self, _: Seen, _: &Context<Self>) -> (Vec<u16>, Vec<u16>) {
        (self.ticks.clone(), self.rings.clone())
    }
}

#[test]
fn timers_move_with_the_actor_between_shards() {
    let engine = EngineBuilder::new(config())
        .register(ActorType::new(|_| Clock::default()).movable())
        .start()
        .expect("engine starts");
    let key = quark_placement::key_for_shard(Clock::TYPE_NAME, 0, 2);
    let id = id_of::<Clock>(key);
    let r = engine.actor_ref::<Clock>(key);
    r.ask_blocking(Start).expect("start");
    eventually(Duration::from_secs(10), "ticks on shard 0", || {
        r.ask_blocking(Seen).expect("seen").0.len() >= 2
    });
    let m = engine.migrate(&id, 1).expect("move");
    assert_eq!((m.from, m.to), (0, 1));
    // The interval keeps ticking on the new shard, and the one-shot set before the move
    // fires there, once.
    eventually(
        Duration::from_secs(10),
        "ticks and the ring on shard 1",
        || {
            let (ticks, rings) = r.ask_blocking(Seen).expect("seen");
            ticks.iter().filter(|&&s| s == 1).count() >= 3 && !rings.is_empty()
        },
    );
    let (ticks, rings) = r.ask_blocking(Seen).expect("seen");
    assert_eq!(rings, vec![1], "the one-shot fired once, on the new shard");
    let moved_at = ticks
        .iter()
        .position(|&s| s == 1)
        .expect("a tick on shard 1");
    assert!(
        ticks[moved_at..].iter().all(|&s| s == 1),
        "no tick on the old shard after the move: {ticks:?}"
    );
    // The id handed out before the move still names the timer.
    assert!(
        r.ask_blocking(Stop).expect("stop"),
        "the interval is cancelled by its old id"
    );
    let after_stop = r.ask_blocking(Seen).expect("seen").0.len();
    // A one-shot set after the cancellation: by the time it has run, twenty periods of the
    // interval have passed, and not one of them ticked.
    r.ask_blocking(Alarm).expect("alarm");
    eventually(Duration::from_secs(10), "the second ring", || {
        r.ask_blocking(Seen).expect("seen").1.len() == 2
    });
    let (ticks, _) = r.ask_blocking(Seen).expect("seen");
    assert_eq!(
        ticks.len(),
        after_stop,
        "the cancelled interval stopped ticking"
    );
    // A timer id is its activation's own: another actor on the same shard cannot cancel it.
    let other = engine.actor_ref::<Clock>(quark_placement::key_for_shard(Clock::TYPE_NAME, 1, 2));
    let theirs = other.ask_blocking(Start).expect("other starts");
    let before = other.ask_blocking(Seen).expect("seen").0.len();
    assert!(
        !r.ask_blocking(CancelId(theirs)).expect("cancel"),
        "not ours to cancel"
    );
    eventually(Duration::from_secs(10), "the other actor's ticks", || {
        other.ask_blocking(Seen).expect("seen").0.len() > before + 2
    });
    engine.shutdown();
}
