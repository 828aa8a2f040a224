//! The shard: a container of services, one per concern, owned by the shard's thread (in an
//! `Rc`). Each service keeps its state private behind narrow methods:
//!
//! | service | type | module |
//! |---|---|---|
//! | clock (time of timers and deadlines) | [`ShardClock`] | `clock` |
//! | cross-shard transport (rings, credits) | [`CrossShard`] | `cross` |
//! | call table (asks waiting for a reply) | [`CallTable`] | `calls` |
//! | actor tables and lifecycles | [`ActorTables`] | `tables`, `activation` |
//! | timers, and tasks sleeping (`quark_shard::sleep`) | [`Timers`], [`Sleepers`] | `timers` |
//! | scheduler (the shard's tasks) | [`Scheduler`] | `scheduler` |
//! | pump wake-ups | [`PumpSignal`] | `signal` |
//! | durable log | `quark_persist::Log` | `quark-persist`, `log_tasks` |
//! | network | [`crate::net::NetShard`] | `net` |
//! | counters | [`ShardStats`] | `stats` |
//!
//! The services do not know the container; the container's methods below are the glue that
//! needs two of them at once (a reply completes a call *and* returns a credit). The pump that
//! drives them is in `pump`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use quark_placement::ShardId;

use crate::activation::{ActorTables, TypeTable};
use crate::actor::Actor;
use crate::calls::{CallId, CallOutcome, CallTable};
use crate::clock::ShardClock;
use crate::cross::{CreditWait, CrossShard};
use crate::engine::shared::NodeShared;
use crate::envelope::{CrossMsg, Origin, ReplyTo};
use crate::ring::{Consumer, Producer};
use crate::scheduler::Scheduler;
use crate::signal::PumpSignal;
use crate::stats::{self, ShardStats};
use crate::timers::{Sleepers, Timers};
use crate::turn::TurnSlot;

/// Everything one shard owns (see the module doc).
/// Turn slots a shard keeps for reuse (each is a few hundred bytes).
const TURN_SLOTS_KEPT: usize = 256;

pub(crate) struct Shard {
    pub(crate) id: ShardId,
    pub(crate) node: Arc<NodeShared>,
    pub(crate) clock: ShardClock,
    pub(crate) cross: CrossShard<CrossMsg>,
    pub(crate) calls: RefCell<CallTable>,
    pub(crate) tables: ActorTables,
    pub(crate) timers: RefCell<Timers>,
    /// Tasks in `quark_shard::sleep` (woken with the timers).
    pub(crate) sleepers: RefCell<Sleepers>,
    pub(crate) signal: PumpSignal,
    pub(crate) stats: ShardStats,
    pub(crate) sched: Scheduler<NodeShared>,
    /// The shard's durable log, if the node has a data directory.
    pub(crate) log: Option<Rc<quark_persist::Log<crate::rt::log_io::UringIo>>>,
    /// The shard's cluster transport, if the engine is part of a cluster (or a client).
    pub(crate) net: Option<crate::net::NetShard>,
    /// Turn slots not in use (see `turn::TurnSlot`): an activation's task holds one while it
    /// has mail, a direct turn while it runs.
    turn_slots: RefCell<Vec<TurnSlot>>,
    spare_slot: std::cell::Cell<Option<TurnSlot>>,
    /// The budget of direct turns (`direct.rs`).
    pub(crate) direct: crate::direct::DirectBudget,
    /// Placement directory and moves (`migrate`, `directory`).
    pub(crate) migration: crate::migrate::Migrations,
}

impl Shard {
    pub(crate) fn new(
        id: ShardId,
        node: Arc<NodeShared>,
        outgoing: Vec<Option<Producer<CrossMsg>>>,
        incoming: Vec<Consumer<CrossMsg>>,
        log: Option<Rc<quark_persist::Log<crate::rt::log_io::UringIo>>>,
    ) -> Self {
        let config = &node.config;
        Shard {
            id,
            clock: ShardClock::new(config.clock.clone()),
            cross: CrossShard::new(id, outgoing, incoming, config.cross_shard_inflight_max),
            calls: RefCell::new(CallTable::new()),
            tables: ActorTables::new(&node.types, config.idle_timeout),
            timers: RefCell::new(Timers::new(id)),
            sleepers: RefCell::new(Sleepers::new()),
            signal: PumpSignal::default(),
            stats: ShardStats::new(node.types.len(), node.shards.len()),
            sched: Scheduler::new(id, node.clone()),
            log,
            net: config.net.as_ref().map(crate::net::NetShard::new),
            migration: crate::migrate::Migrations::new(id),
            node,
            turn_slots: RefCell::new(Vec::new()),
            spare_slot: std::cell::Cell::new(None),
            direct: Default::default(),
        }
    }

    /// A turn slot from the pool (a new one if the pool is empty).
    #[inline(always)]
    pub(crate) fn take_turn_slot(&self) -> TurnSlot {
        if let Some(slot) = self.spare_slot.take() {
            return slot;
        }
        self.turn_slots.borrow_mut().pop().unwrap_or_default()
    }

    /// Gives an empty turn slot back to the pool (kept up to `TURN_SLOTS_KEPT`).
    #[inline(always)]
    pub(crate) fn give_turn_slot(&self, slot: TurnSlot) {
        debug_assert!(slot.is_empty(), "a slot goes back to the pool empty");
        // One spare in a `Cell` first: a direct turn takes and gives back one per message.
        let Some(slot) = self.spare_slot.replace(Some(slot)) else {
            return;
        };
        let mut pool = self.turn_slots.borrow_mut();
        if pool.len() < TURN_SLOTS_KEPT {
            pool.push(slot);
        }
    }

    /// The shard's network service. Its tasks, links and connections are only started when
    /// the engine has a `NetConfig`, so the network code reaches it through here (one check
    /// of that invariant, not one per call site).
    #[inline]
    pub(crate) fn net(&self) -> &crate::net::NetShard {
        self.net
            .as_ref()
            .expect("the network service runs only with a NetConfig")
    }

    /// The shard's time, read once per pump iteration (and refreshed by every ask's turn).
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// True if `deadline` has passed (see [`ShardClock::deadline_passed`]).
    #[inline]
    pub(crate) fn deadline_passed(&self, deadline: Instant) -> bool {
        self.clock.deadline_passed(deadline)
    }

    /// True unless the caller of the ask that replies to `reply` is known to have stopped
    /// waiting (timed out, dropped its future, or gave up outside the node). A caller on
    /// another shard is not asked: its deadline, carried in the message, covers that case.
    #[inline]
    pub(crate) fn is_awaited(&self, reply: ReplyTo) -> bool {
        match reply {
            ReplyTo::Local(call) => self.calls.borrow().is_awaited(call),
            ReplyTo::Shard(..) | ReplyTo::None => true,
        }
    }

    /// This shard's injection queue and admission bound.
    #[inline]
    pub(crate) fn injector(&self) -> &crate::admission::Injector<CrossMsg> {
        &self.node.shards[usize::from(self.id)].inject
    }

    /// This shard's table of actor type `A` (registered at index `type_idx`).
    #[inline]
    pub(crate) fn table<A: Actor>(&self, type_idx: u16) -> &TypeTable<A> {
        self.tables.get::<A>(type_idx)
    }

    /// Wakes the pump if it is parked (something needs flushing or its deadline changed).
    #[inline]
    pub(crate) fn poke(&self) {
        self.signal.poke();
    }

    /// Asks the pump to submit queued I/O now.
    #[inline]
    pub(crate) fn kick_io(&self) {
        self.signal.kick_io();
    }

    /// Queues `msg` for shard `to`; it becomes visible to `to` at the pump's next flush.
    #[inline]
    pub(crate) fn send_to(&self, to: ShardId, msg: CrossMsg) {
        if let CrossMsg::Request(_) = msg {
            self.stats.sent_to_shard(to);
        }
        if self.cross.send(to, msg) {
            self.signal.poke();
        }
    }

    /// Takes one credit to send a request to `to`, waiting while none is left.
    #[inline]
    pub(crate) fn acquire_credit(&self, to: ShardId) -> CreditWait<'_, CrossMsg> {
        self.cross.acquire_credit(to)
    }

    /// Takes one credit for `to` if one is free and nobody waits for one.
    #[inline]
    pub(crate) fn try_acquire_credit(&self, to: ShardId) -> bool {
        self.cross.try_acquire_credit(to)
    }

    /// Completes call `call` of this shard; a reply for a caller that stopped waiting is
    /// dropped and counted.
    pub(crate) fn complete_call(&self, call: CallId, outcome: CallOutcome) {
        if !self.calls.borrow_mut().complete(call, outcome) {
            let c = &self.stats.replies_dropped;
            c.set(c.get() + 1);
        }
    }

    /// Bookkeeping after a turn (or an aborted message): flow-control credits.
    #[inline]
    pub(crate) fn turn_done(&self, origin: Origin, reply: ReplyTo) {
        match origin {
            // A tell from another shard: owe it a credit (an ask's reply carries its own).
            Origin::Shard(from) if reply == ReplyTo::None && self.cross.owe_credit(from) => {
                self.signal.poke();
            }
            Origin::External => {
                let kind = if reply == ReplyTo::None {
                    &self.stats.tells
                } else {
                    &self.stats.asks
                };
                stats::add(&kind[stats::EXTERNAL], 1);
                self.injector().release()
            }
            _ => {}
        }
    }

    /// Runs one message that came from another shard (or from outside the node), handing it
    /// to the service it is for.
    #[inline]
    pub(crate) fn receive(self: &Rc<Self>, msg: CrossMsg) {
        match msg {
            CrossMsg::Request(req) => req.deliver(self),
            CrossMsg::Reply(reply) => {
                self.cross.return_credits(reply.from(), 1);
                let call = reply.call();
                self.complete_call(call, CallOutcome::Reply(reply.into_any()));
            }
            CrossMsg::Fail { call, from, err } => {
                self.cross.return_credits(from, 1);
                match err {
                    Some(err) => self.complete_call(call, CallOutcome::Failed(*err)),
                    // Expired unrun: the caller has most likely timed out already, so this is
                    // not a dropped reply.
                    None => {
                        self.calls
                            .borrow_mut()
                            .complete(call, CallOutcome::TimedOut);
                    }
                }
            }
            CrossMsg::Credit { from, count } => self.cross.return_credits(from, count),
            CrossMsg::Run(f) => f(self),
        }
    }

    /// Runs every message waiting in the inbound rings and the injection queue. Returns the
    /// number handled.
    pub(crate) fn drain_inbound(self: &Rc<Self>) -> usize {
        let cap = self.node.config.ring_capacity;
        let mut handled = self.cross.drain(cap, |msg| self.receive(msg));
        let inject = self.injector();
        for _ in 0..cap {
            let Some(msg) = inject.pop() else { break };
            self.receive(msg);
            handled += 1;
        }
        let st = &self.stats.ring_msgs_in;
        st.set(st.get() + handled as u64);
        handled
    }

    /// True if a message waits in an inbound ring or the injection queue.
    pub(crate) fn has_inbound(&self) -> bool {
        self.cross.has_incoming() || !self.injector().is_empty()
    }

    /// Publishes the outgoing rings and owed credits; rings the bell of parked peers.
    pub(crate) fn flush(&self) {
        let shards = &self.node.shards;
        self.cross.flush(
            |from, count| CrossMsg::Credit { from, count },
            |to| shards[to].bell.ring(),
        );
    }

    /// Fires the timers due at `now`, and wakes the sleepers due.
    pub(crate) fn fire_timers(&self, now: Instant) {
        let mut woken = Vec::new();
        self.sleepers.borrow_mut().take_due(now, &mut woken);
        woken.into_iter().for_each(std::task::Waker::wake);
        loop {
            let due = self.timers.borrow_mut().pop_due(now);
            let Some((id, mut fire)) = due else { break };
            let alive = fire();
            self.timers.borrow_mut().rearm(id, fire, alive, now);
        }
    }

    /// Times out the calls whose deadline passed.
    pub(crate) fn sweep_calls(&self, now: Instant) {
        let expired = self.calls.borrow_mut().sweep(now);
        for fwd in expired {
            fwd.complete(CallOutcome::TimedOut);
        }
    }

    /// True if no activation has work and no call waits.
    pub(crate) fn quiescent(&self) -> bool {
        self.tables.quiescent() && self.calls.borrow().live() == 0
    }

    /// The earliest moment the pump must wake up by itself.
    pub(crate) fn next_deadline(&self, next_idle_sweep: Instant) -> Instant {
        let mut t = next_idle_sweep;
        if let Some(c) = self.calls.borrow().next_deadline() {
            t = t.min(c);
        }
        if let Some(d) = self.timers.borrow().next_due() {
            t = t.min(d);
        }
        if let Some(d) = self.sleepers.borrow().next_due() {
            t = t.min(d);
        }
        t
    }

    /// The first `want` activations of this shard that match `q` (see
    /// [`crate::Engine::actors`]).
    pub(crate) fn actor_rows(
        &self,
        q: &crate::engine::ActorQuery,
        want: usize,
    ) -> Vec<crate::engine::ActorRow> {
        self.tables.rows(q, self.id, self.now(), want)
    }

    pub(crate) fn stats_snapshot(&self) -> crate::engine::ShardStatsSnapshot {
        let s = &self.stats;
        let (mailbox_depth, mailbox_depth_max) = self.tables.mailbox_depth();
        crate::engine::ShardStatsSnapshot {
            shard: self.id,
            live_activations: self.tables.live() as u64,
            activations: s.activations.get(),
            deactivations: s.deactivations.get(),
            panics: s.panics.get(),
            replies_dropped: s.replies_dropped.get(),
            asks_expired_skipped: s.asks_expired_skipped.get(),
            mailbox_waits: s.mailbox_waits.get(),
            credit_waits: self.cross.credit_waits(),
            parks: s.parks.get(),
            wakeups_doorbell: s.wakeups[crate::stats::WAKE_DOORBELL].get(),
            wakeups_timer: s.wakeups[crate::stats::WAKE_TIMER].get(),
            wakeups_local: s.wakeups[crate::stats::WAKE_LOCAL].get(),
            iterations: s.iterations.get(),
            reaps: s.reaps.get(),
            task_polls: s.task_polls.get(),
            ring_msgs_in: s.ring_msgs_in.get(),
            calls_in_flight: self.calls.borrow().live() as u64,
            timers: self.timers.borrow().len() as u64,
            timer_heap_entries: self.timers.borrow().heap_len() as u64,
            tasks: self.sched.live() as u64,
            log_next_lsn: self.log.as_ref().map(|l| l.stats().next_lsn),
            log_disk_bytes: self.log.as_ref().map(|l| l.stats().disk_bytes),
            net: self.net.as_ref().map(crate::net::NetShard::snapshot),
            messages_local: messages(s, stats::LOCAL),
            messages_cross_shard: messages(s, stats::CROSS_SHARD),
            messages_remote: messages(s, stats::REMOTE),
            messages_external: messages(s, stats::EXTERNAL),
            ask_latency_local: latency(s, stats::LOCAL),
            ask_latency_cross_shard: latency(s, stats::CROSS_SHARD),
            ask_latency_remote: latency(s, stats::REMOTE),
            live_per_type: self.tables.live_per_type(),
            state_bytes_per_type: self.tables.state_bytes_per_type(),
            mailbox_depth,
            mailbox_depth_max,
            ring_overflow: self.cross.overflow_len() as u64,
            ring_occupancy: self.cross.incoming_len() as u64,
            load: s.load_snapshot(&self.node.types.iter().map(|t| t.name()).collect::<Vec<_>>()),
            migrations_started: s.migrations_started.get(),
            migrations_done: s.migrations_done.get(),
            migrations_aborted: s.migrations_aborted.get(),
            migration_bytes: s.migration_bytes.get(),
            migrate_forwarded: s.migrate_forwarded.get(),
            directory_entries: self.migration.entries() as u64,
        }
    }
}

/// The tells and asks of kind `kind` in `s`.
fn messages(s: &stats::ShardStats, kind: usize) -> crate::engine::MessageCounts {
    crate::engine::MessageCounts {
        tells: s.tells[kind].get(),
        asks: s.asks[kind].get(),
    }
}

/// The ask latency histogram of kind `kind` in `s`.
fn latency(s: &stats::ShardStats, kind: usize) -> crate::engine::AskLatency {
    let (buckets, sum_us) = s.ask_latency[kind].snapshot();
    crate::engine::AskLatency { buckets, sum_us }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use crate::{
        Actor, ActorType, Context, EngineBuilder, EngineConfig, Handler, Message, ShardSpec,
    };

    /// Blocks its shard thread until told to go, then reports the inbound ring occupancy.
    struct Gate;
    impl Actor for Gate {
        const TYPE_NAME: &'static str = "gate";
    }
    struct Hold {
        started: mpsc::Sender<()>,
        go: mpsc::Receiver<()>,
        want: u64,
    }
    impl Message for Hold {
        type Reply = (u64, u64);
    }
    impl Handler<Hold> for Gate {
        async fn handle(&mut self, m: Hold, ctx: &Context<Self>) -> (u64, u64) {
            m.started.send(()).expect("the test waits for the start");
            m.go.recv().expect("the test says go");
            // The senders' shard publishes at the end of its pump iteration: wait (bounded)
            // until the count is there; it must then be exactly `want`.
            let deadline = Instant::now() + Duration::from_secs(10);
            while (ctx.core.cross.incoming_len() as u64) < m.want && Instant::now() < deadline {
                std::thread::yield_now();
            }
            (
                ctx.core.cross.incoming_len() as u64,
                ctx.core.stats_snapshot().ring_occupancy,
            )
        }
    }
    struct Sink;
    impl Actor for Sink {
        const TYPE_NAME: &'static str = "sink";
    }
    struct Nop;
    impl Message for Nop {
        type Reply = ();
    }
    impl Handler<Nop> for Sink {
        async fn handle(&mut self, _: Nop, _: &Context<Self>) {}
    }

    /// Messages published into a shard's inbound ring while the shard is busy are its ring
    /// occupancy, in the snapshot taken then; once it drains them, the occupancy is zero.
    #[test]
    fn ring_occupancy_counts_published_messages_the_shard_has_not_consumed() {
        let engine = EngineBuilder::new(EngineConfig {
            shards: ShardSpec::Count(2),
            ask_timeout: Duration::from_secs(30),
            ..EngineConfig::default()
        })
        .register(ActorType::new(|_| Gate))
        .register(ActorType::new(|_| Sink))
        .start()
        .expect("engine starts");
        let gate = engine.actor_ref::<Gate>(quark_placement::key_for_shard("gate", 1, 2));
        let sink = engine.actor_ref::<Sink>(quark_placement::key_for_shard("sink", 1, 2));
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        const K: u64 = 10;
        let held = std::thread::spawn(move || {
            gate.ask_blocking(Hold {
                started: started_tx,
                go: go_rx,
                want: K,
            })
        });
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the gate's turn started on shard 1");
        // Shard 1 is blocked in the gate's turn: ten tells from shard 0 wait in ring 0 -> 1.
        engine
            .spawn_on(0, move || async move {
                for _ in 0..K {
                    sink.tell(Nop).await.expect("tell");
                }
            })
            .join()
            .expect("the tells were sent");
        go.send(()).expect("the gate waits");
        let (read, snapshot) = held.join().expect("no panic").expect("the gate answers");
        assert_eq!((read, snapshot), (K, K));
        let after = engine.stats().expect("stats");
        assert_eq!(after[1].ring_occupancy, 0, "drained once the turn ended");
    }
}
