//! The per-shard state and its pump: the task that moves messages between the rings, the
//! injection queue, timers and the activations of one shard.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use quark_placement::ShardId;

use crate::activation::{ErasedTable, TypeTable};
use crate::actor::Actor;
use crate::calls::{CallOutcome, CallTable};
use crate::engine::shared::{NodeShared, Phase};
use crate::envelope::{CreditMsg, CrossBox, Origin, ReplyTo};
use crate::log_tasks::LogTasks;
use crate::ring::{Consumer, Producer};
use crate::rt::BellReceiver;
use crate::timers::Timers;

/// Pump iterations between two forced trips through the executor's wait (which reaps I/O
/// completions and fires executor timers even when the shard never runs out of work).
const REAP_EVERY_ITERATIONS: u32 = 256;
/// The longest a busy pump goes without a trip through the executor's wait (a reap costs a
/// few system calls, so a busy shard makes them rarely; I/O completions wait at most this).
const REAP_INTERVAL_BUSY: Duration = Duration::from_micros(100);
/// The same for a spinning (idle) pump: reaps are cheap relative to idle time, and a shard
/// waiting for its own I/O should see the completion soon.
const REAP_INTERVAL_SPIN: Duration = Duration::from_micros(20);
/// How often a spinning pump of a node with network connections looks for completed socket
/// reads (a non-blocking trip through the executor: one system call).
const NET_POLL_SPIN: Duration = Duration::from_micros(2);
/// How often a busy pump of a node with network connections looks for socket readiness.
const NET_POLL_BUSY: Duration = Duration::from_micros(20);
/// Rounds of task polls after which a pump with connections stops early when a look at the
/// sockets is due (a task that keeps yielding makes many rounds; ordinary work makes few).
const NET_POLL_ROUNDS: u32 = 8;
/// Ready tasks polled per pump iteration before the pump looks at its rings again.
const RUN_BATCH: usize = 256;
/// How long a batch of task polls may run before the pump takes its turn (checked between
/// rounds, against the clock as refreshed by asks' turns).
const BATCH_TIME: Duration = Duration::from_millis(1);

thread_local! {
    /// True on a thread that runs a shard's pump (of any node in the process).
    static ON_SHARD: Cell<bool> = const { Cell::new(false) };
}

/// True if the calling thread is a shard thread (blocking calls are refused there).
pub(crate) fn on_shard_thread() -> bool {
    ON_SHARD.with(Cell::get)
}

/// The coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`) in ns: cheap, advances in ticks.
#[inline]
fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant Linux provides.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Two ticks of the coarse clock: while it shows the same value, less than one tick passed
/// (`None`: resolution unknown, never trust it).
fn coarse_slack() -> Option<Duration> {
    static SLACK: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *SLACK.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as in `coarse_ns`.
        let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0;
        let tick = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        (ok && tick > Duration::ZERO && tick <= Duration::from_millis(100)).then(|| 2 * tick)
    })
}

/// Per-shard counters (plain cells: only the shard's thread writes them; read through
/// [`crate::Engine::stats`], which asks each shard).
#[derive(Default)]
pub(crate) struct ShardStats {
    pub(crate) activations: Cell<u64>,
    pub(crate) deactivations: Cell<u64>,
    pub(crate) panics: Cell<u64>,
    pub(crate) replies_dropped: Cell<u64>,
    pub(crate) asks_expired_skipped: Cell<u64>,
    pub(crate) mailbox_waits: Cell<u64>,
    pub(crate) credit_waits: Cell<u64>,
    pub(crate) parks: Cell<u64>,
    pub(crate) iterations: Cell<u64>,
    pub(crate) reaps: Cell<u64>,
    pub(crate) task_polls: Cell<u64>,
    pub(crate) ring_msgs_in: Cell<u64>,
}

/// The outgoing side of one ring, with an overflow queue for when the ring is full. The
/// overflow is bounded by the credits of the peer (requests) and by the peer's credits for us
/// (replies), so it cannot grow without bound.
pub(crate) struct Outbox {
    producer: Producer<CrossBox>,
    overflow: VecDeque<CrossBox>,
}

impl Outbox {
    pub(crate) fn new(producer: Producer<CrossBox>) -> Self {
        Outbox {
            producer,
            overflow: VecDeque::new(),
        }
    }
}

/// Everything one shard owns. Lives in an `Rc` on the shard's thread.
pub(crate) struct ShardCore {
    pub(crate) id: ShardId,
    pub(crate) node: Arc<NodeShared>,
    now: Cell<Instant>,
    /// `coarse_ns()` read just after `now`.
    coarse_at_now: Cell<u64>,
    outboxes: Vec<Option<RefCell<Outbox>>>,
    inbound: RefCell<Vec<Consumer<CrossBox>>>,
    credits: Vec<Cell<u32>>,
    credit_waiters: RefCell<Vec<VecDeque<(u64, Waker)>>>,
    /// Per target shard: tickets of woken waiters a returned credit was handed to (already
    /// taken from `credits`), until they are polled. At most `cross_shard_inflight_max`.
    credit_granted: RefCell<Vec<Vec<u64>>>,
    next_credit_ticket: Cell<u64>,
    owed: Vec<Cell<u32>>,
    dirty: Cell<bool>,
    pub(crate) calls: RefCell<CallTable>,
    tables: Vec<Box<dyn ErasedTable>>,
    pub(crate) timers: RefCell<Timers>,
    pump_waker: RefCell<Option<Waker>>,
    parked: Cell<bool>,
    poked: Cell<bool>,
    pub(crate) stats: ShardStats,
    pub(crate) sched: crate::scheduler::Scheduler,
    /// The shard's durable log, if the node has a data directory.
    pub(crate) log: Option<Rc<quark_persist::Log<crate::rt::log_io::UringIo>>>,
    /// The shard's cluster transport, if the engine is part of a cluster (or a client).
    pub(crate) net: Option<crate::net::NetShard>,
    /// Set when a task queued network I/O: the pump makes a trip through the executor's wait
    /// at once (the submission happens there) instead of at its next periodic reap.
    io_kick: Cell<bool>,
}

impl ShardCore {
    pub(crate) fn new(
        id: ShardId,
        node: Arc<NodeShared>,
        outboxes: Vec<Option<RefCell<Outbox>>>,
        inbound: Vec<Consumer<CrossBox>>,
        log: Option<Rc<quark_persist::Log<crate::rt::log_io::UringIo>>>,
    ) -> Self {
        let n = node.shards.len();
        let default_idle = node.config.idle_timeout;
        let tables = node
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| t.clone().make_table(i as u16, default_idle))
            .collect();
        let credit = node.config.cross_shard_inflight_max;
        ShardCore {
            id,
            now: Cell::new(Instant::now()),
            coarse_at_now: Cell::new(coarse_ns()),
            outboxes,
            inbound: RefCell::new(inbound),
            credits: (0..n).map(|_| Cell::new(credit)).collect(),
            credit_waiters: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            credit_granted: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            next_credit_ticket: Cell::new(0),
            owed: (0..n).map(|_| Cell::new(0)).collect(),
            dirty: Cell::new(false),
            calls: RefCell::new(CallTable::new()),
            tables,
            timers: RefCell::new(Timers::new()),
            pump_waker: RefCell::new(None),
            parked: Cell::new(false),
            poked: Cell::new(false),
            stats: ShardStats::default(),
            sched: crate::scheduler::Scheduler::new(id, node.clone()),
            log,
            net: node.config.net.as_ref().map(crate::net::NetShard::new),
            io_kick: Cell::new(false),
            node,
        }
    }

    /// The shard's clock, read once per pump iteration (and refreshed by every ask's turn).
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        self.now.get()
    }

    /// Sets the shard's clock to `now` (just read), noting the coarse clock with it.
    #[inline]
    fn set_now(&self, now: Instant) {
        self.now.set(now);
        self.coarse_at_now.set(coarse_ns());
    }

    /// True if `deadline` has passed, judged with a clock fresh enough for it, cheaply: the
    /// shard's clock may be stale (read at the start of the pump's iteration), but if the
    /// coarse clock (about 8 ns to read, against about 25-70 ns for `Instant::now`) has not
    /// ticked since, it is stale by less than a tick; only a deadline within two ticks of it, or
    /// a tick since, costs a precise reading (which refreshes the shard's clock).
    #[inline]
    pub(crate) fn deadline_passed(&self, deadline: Instant) -> bool {
        if let Some(slack) = coarse_slack() {
            if coarse_ns() == self.coarse_at_now.get() && deadline > self.now.get() + slack {
                return false;
            }
        }
        let now = Instant::now();
        let shard_now = self.node.config.clock.at(now);
        if shard_now > self.now.get() {
            self.set_now(shard_now);
        }
        now >= deadline
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
    pub(crate) fn injector(&self) -> &crate::admission::Injector {
        &self.node.shards[usize::from(self.id)].inject
    }

    /// This shard's table of actor type `A` (registered at index `type_idx`).
    #[inline]
    pub(crate) fn table<A: Actor>(&self, type_idx: u16) -> &TypeTable<A> {
        self.tables[usize::from(type_idx)]
            .as_any()
            .downcast_ref::<TypeTable<A>>()
            .expect("type index and actor type come from the same registry")
    }

    /// Wakes the pump if it is parked (something needs flushing or its deadline changed).
    #[inline]
    pub(crate) fn poke(&self) {
        if self.parked.get() && !self.poked.replace(true) {
            if let Some(w) = self.pump_waker.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    /// Asks the pump to submit queued I/O now (see `io_kick`).
    #[inline]
    pub(crate) fn kick_io(&self) {
        self.io_kick.set(true);
    }

    /// Queues `msg` for shard `to`; it becomes visible to `to` at the pump's next flush.
    #[inline]
    pub(crate) fn send_to(&self, to: ShardId, msg: CrossBox) {
        let cell = self.outboxes[usize::from(to)]
            .as_ref()
            .expect("a shard never sends to itself through a ring");
        let mut out = cell.borrow_mut();
        if out.overflow.is_empty() {
            if let Err(msg) = out.producer.try_push(msg) {
                out.overflow.push_back(msg);
            }
        } else {
            out.overflow.push_back(msg);
        }
        drop(out);
        if !self.dirty.replace(true) {
            self.poke();
        }
    }

    /// Takes one credit to send a request to `to`, waiting while none is left.
    pub(crate) fn acquire_credit(&self, to: ShardId) -> CreditWait<'_> {
        CreditWait {
            core: self,
            to,
            ticket: None,
            done: false,
        }
    }

    /// Takes one credit for `to` if one is free and nobody waits for one (no future needed).
    #[inline]
    pub(crate) fn try_acquire_credit(&self, to: ShardId) -> bool {
        let cell = &self.credits[usize::from(to)];
        if cell.get() > 0 && self.credit_waiters.borrow()[usize::from(to)].is_empty() {
            cell.set(cell.get() - 1);
            true
        } else {
            false
        }
    }

    /// `count` requests to `from` are finished: their credits come back. Each goes to the
    /// first waiter, if any, directly (taken from the count on its behalf): a sender of this
    /// shard that runs before the woken waiter is polled cannot take it (issue 11: such a
    /// sender took every returned credit, and a waiter starved for seconds).
    pub(crate) fn return_credits(&self, from: ShardId, count: u32) {
        let to = usize::from(from);
        let cell = &self.credits[to];
        cell.set(cell.get() + count);
        let mut woken = Vec::new();
        {
            let mut waiters = self.credit_waiters.borrow_mut();
            let mut granted = self.credit_granted.borrow_mut();
            for _ in 0..count {
                match waiters[to].pop_front() {
                    Some((ticket, w)) => {
                        cell.set(cell.get() - 1);
                        granted[to].push(ticket);
                        woken.push(w);
                    }
                    None => break,
                }
            }
        }
        for w in woken {
            w.wake();
        }
    }

    /// Completes call `call` of this shard; a reply for a caller that stopped waiting is
    /// dropped and counted.
    pub(crate) fn complete_call(&self, call: crate::calls::CallId, outcome: CallOutcome) {
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
            Origin::Shard(from) if reply == ReplyTo::None => {
                let owed = &self.owed[usize::from(from)];
                owed.set(owed.get() + 1);
                if !self.dirty.replace(true) {
                    self.poke();
                }
            }
            Origin::External => self.injector().release(),
            _ => {}
        }
    }

    /// Runs every message waiting in the inbound rings and the injection queue. Returns the
    /// number handled.
    fn drain_inbound(self: &Rc<Self>) -> usize {
        let mut handled = 0;
        let cap = self.node.config.ring_capacity;
        let n = self.inbound.borrow().len();
        for i in 0..n {
            // Bounded per ring so one busy peer cannot starve the others.
            for _ in 0..cap {
                let msg = self.inbound.borrow_mut()[i].pop();
                let Some(msg) = msg else { break };
                msg.run(self);
                handled += 1;
            }
            self.inbound.borrow_mut()[i].release();
        }
        let inject = self.injector();
        for _ in 0..cap {
            let Some(msg) = inject.pop() else { break };
            msg.run(self);
            handled += 1;
        }
        self.stats
            .ring_msgs_in
            .set(self.stats.ring_msgs_in.get() + handled as u64);
        handled
    }

    fn has_inbound(&self) -> bool {
        self.inbound.borrow().iter().any(Consumer::has_pending) || !self.injector().is_empty()
    }

    /// Publishes every outbox and sends owed credits; rings the bell of parked peers.
    fn flush(&self) {
        if !self.dirty.replace(false) {
            return;
        }
        for (to, owed) in self.owed.iter().enumerate() {
            let count = owed.replace(0);
            if count > 0 {
                self.send_to(
                    to as ShardId,
                    Box::new(CreditMsg {
                        from: self.id,
                        count,
                    }),
                );
            }
        }
        self.dirty.set(false);
        for (to, cell) in self.outboxes.iter().enumerate() {
            let Some(cell) = cell else { continue };
            let mut out = cell.borrow_mut();
            while let Some(msg) = out.overflow.pop_front() {
                if let Err(msg) = out.producer.try_push(msg) {
                    out.overflow.push_front(msg);
                    break;
                }
            }
            if !out.overflow.is_empty() {
                // Retry at the next iteration.
                self.dirty.set(true);
            }
            if out.producer.publish() {
                self.node.shards[to].bell.ring();
            }
            debug_assert_eq!(out.producer.unpublished(), 0);
        }
    }

    fn fire_timers(&self, now: Instant) {
        loop {
            let due = self.timers.borrow_mut().pop_due(now);
            let Some((id, mut fire)) = due else { break };
            let alive = fire();
            self.timers.borrow_mut().rearm(id, fire, alive, now);
        }
    }

    fn sweep_calls(&self, now: Instant) {
        let expired = self.calls.borrow_mut().sweep(now);
        for fwd in expired {
            fwd.complete(CallOutcome::TimedOut);
        }
    }

    fn quiescent(&self) -> bool {
        self.tables.iter().all(|t| t.quiescent()) && self.calls.borrow().live() == 0
    }

    fn live_activations(&self) -> usize {
        self.tables.iter().map(|t| t.len()).sum()
    }

    /// The earliest moment the pump must wake up by itself.
    fn next_deadline(&self, next_idle_sweep: Instant) -> Instant {
        let mut t = next_idle_sweep;
        if let Some(c) = self.calls.borrow().next_deadline() {
            t = t.min(c);
        }
        if let Some(d) = self.timers.borrow().next_due() {
            t = t.min(d);
        }
        t
    }

    pub(crate) fn stats_snapshot(&self) -> crate::engine::ShardStatsSnapshot {
        let s = &self.stats;
        crate::engine::ShardStatsSnapshot {
            shard: self.id,
            live_activations: self.live_activations() as u64,
            activations: s.activations.get(),
            deactivations: s.deactivations.get(),
            panics: s.panics.get(),
            replies_dropped: s.replies_dropped.get(),
            asks_expired_skipped: s.asks_expired_skipped.get(),
            mailbox_waits: s.mailbox_waits.get(),
            credit_waits: s.credit_waits.get(),
            parks: s.parks.get(),
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
        }
    }
}

/// The future of [`ShardCore::acquire_credit`]: FIFO among waiters. Cancel safe: a waiter
/// dropped before it got its credit leaves the queue, and if it had been woken for a credit it
/// did not take, it passes the wake-up on.
pub(crate) struct CreditWait<'a> {
    core: &'a ShardCore,
    to: ShardId,
    /// Our place in the waiter queue, once we waited.
    ticket: Option<u64>,
    done: bool,
}

impl Future for CreditWait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let to = usize::from(self.to);
        let core = self.core;
        if let Some(t) = self.ticket {
            // A returned credit was handed to us (see `return_credits`).
            let mut granted = core.credit_granted.borrow_mut();
            if let Some(i) = granted[to].iter().position(|x| *x == t) {
                granted[to].swap_remove(i);
                self.done = true;
                return Poll::Ready(());
            }
        }
        let cell = &core.credits[to];
        let mut all = core.credit_waiters.borrow_mut();
        let queue = &mut all[to];
        let queued_at = self
            .ticket
            .and_then(|t| queue.iter().position(|(x, _)| *x == t));
        // Our turn: nobody waits, or we were woken (popped from the queue), or we are first.
        let my_turn = match (self.ticket, queued_at) {
            (None, _) => queue.is_empty(),
            (Some(_), None) | (Some(_), Some(0)) => true,
            (Some(_), Some(_)) => false,
        };
        if cell.get() > 0 && my_turn {
            cell.set(cell.get() - 1);
            if let Some(i) = queued_at {
                queue.remove(i);
            }
            self.done = true;
            return Poll::Ready(());
        }
        match (queued_at, self.ticket) {
            (Some(i), _) => queue[i].1.clone_from(cx.waker()),
            // Woken but beaten to the credit: back to the front, we were first.
            (None, Some(t)) => queue.push_front((t, cx.waker().clone())),
            (None, None) => {
                let s = &core.stats.credit_waits;
                s.set(s.get() + 1);
                let t = core.next_credit_ticket.get();
                core.next_credit_ticket.set(t + 1);
                self.ticket = Some(t);
                queue.push_back((t, cx.waker().clone()));
            }
        }
        Poll::Pending
    }
}

impl Drop for CreditWait<'_> {
    fn drop(&mut self) {
        let (Some(ticket), false) = (self.ticket, self.done) else {
            return;
        };
        let to = usize::from(self.to);
        let mut all = self.core.credit_waiters.borrow_mut();
        let queue = &mut all[to];
        if let Some(i) = queue.iter().position(|(x, _)| *x == ticket) {
            queue.remove(i);
            return;
        }
        let mut granted = self.core.credit_granted.borrow_mut();
        if let Some(i) = granted[to].iter().position(|x| *x == ticket) {
            // We were handed a credit we will not use: it goes to the next waiter, or back.
            granted[to].swap_remove(i);
            drop((granted, all));
            self.core.return_credits(self.to, 1);
        } else if self.core.credits[to].get() > 0 {
            // We were woken for a credit we did not take: wake the next waiter instead.
            if let Some((_, w)) = queue.pop_front() {
                w.wake();
            }
        }
    }
}

/// Parks the pump until the doorbell rings, it is poked, or `deadline` passes.
struct Park<'a> {
    core: &'a ShardCore,
    bell: &'a mut BellReceiver,
    sleep: Pin<Box<dyn Future<Output = ()>>>,
}

impl Future for Park<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.core.poked.replace(false) {
            return Poll::Ready(());
        }
        if self.bell.poll_rung(cx).is_ready() {
            return Poll::Ready(());
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let mut w = self.core.pump_waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The pump: the shard's main loop (see `docs/ARCHITECTURE.md`).
///
/// Each iteration reads the clock once, runs inbound messages, fires due timers and expired
/// call deadlines, flushes the outboxes, then yields so that activations run. With nothing to
/// do it spins (yielding) for `idle_spin`, then parks inside the executor's wait until its
/// doorbell rings, a local event pokes it, or its next deadline passes.
pub(crate) async fn pump(
    core: Rc<ShardCore>,
    mut bell: BellReceiver,
    events: std::sync::mpsc::Sender<crate::engine::events::ShardEvent>,
) {
    let idle_spin = core.node.config.idle_spin;
    let idle_every = idle_sweep_interval(&core);
    let mut next_idle_sweep = Instant::now() + idle_every;
    let mut idle_since: Option<Instant> = None;
    let mut since_reap = 0u32;
    let mut last_reap = Instant::now();
    let mut phase_seen = Phase::Running;
    let mut reported = Phase::Running;
    let mut next_deactivate_push = Instant::now();
    let mut kick_seen = false;
    let has_net = core.net.is_some();
    let mut last_io_poll = Instant::now();
    let my_bell = &core.node.shards[usize::from(core.id)].bell;
    ON_SHARD.with(|s| s.set(true));
    let mut log_tasks = match &core.log {
        Some(log) => LogTasks::start(log, core.id, core.node.config.log_compact_interval, |f| {
            core.sched.spawn(f)
        }),
        None => LogTasks::none(),
    };
    loop {
        let now = Instant::now();
        core.set_now(core.node.config.clock.at(now)); // shard time: real unless a test moves it
                                                      // Deadlines first: a reply that comes in after its call's deadline finds the call timed
                                                      // out (the caller gets `Timeout`, never a late `Ok`).
        core.sweep_calls(core.now());
        let mut work = core.drain_inbound();
        core.fire_timers(core.now());
        if now >= next_idle_sweep {
            for t in &core.tables {
                t.sweep_idle(core.now());
            }
            next_idle_sweep = now + idle_every;
        }
        // With connections, also stop between rounds when a look at the sockets is due: a task
        // that keeps yielding (a pacer) would otherwise fill the whole batch of rounds and
        // hold received bytes back for tens of microseconds.
        let net_due = last_io_poll + NET_POLL_BUSY;
        let mut rounds = 0u32;
        // Also stop once the batch has run for BATCH_TIME (long turns): replies it produced are
        // published at the flush below, and deadlines are swept. `core.now()` is refreshed by
        // each ask's turn, so this costs no clock read.
        let batch_end = now + BATCH_TIME;
        let polled = core.sched.run_ready(RUN_BATCH, || {
            rounds += 1;
            core.has_inbound()
                || core.now() >= batch_end
                || (has_net && rounds >= NET_POLL_ROUNDS && Instant::now() >= net_due)
        });
        work += polled;
        let st = &core.stats;
        st.task_polls.set(st.task_polls.get() + polled as u64);
        st.iterations.set(st.iterations.get() + 1);
        if core.dirty.get() {
            core.flush();
            work += 1;
        }

        let phase = core.node.phase();
        if phase != phase_seen {
            phase_seen = phase;
            // Callers outside the node waiting for admission look at the phase and give up.
            core.injector().wake_all();
            if phase == Phase::Deactivating {
                next_deactivate_push = now;
            }
        }
        match phase {
            Phase::Running => {}
            Phase::Draining => {
                if reported != Phase::Draining && core.quiescent() {
                    reported = Phase::Draining;
                    let _ = events.send(crate::engine::events::ShardEvent::Drained(core.id));
                }
            }
            Phase::Deactivating => {
                if now >= next_deactivate_push {
                    for t in &core.tables {
                        t.deactivate_all();
                    }
                    next_deactivate_push = now + Duration::from_millis(10);
                }
                if reported != Phase::Deactivating && core.live_activations() == 0 {
                    reported = Phase::Deactivating;
                    let _ = events.send(crate::engine::events::ShardEvent::Deactivated(core.id));
                }
            }
            Phase::Stopped => {
                // The log's periodic tasks end (a pass under way finishes) before the shard
                // stops and closes the log; until then the pump keeps running them.
                log_tasks.stop();
                if log_tasks.finished() {
                    break;
                }
            }
        }

        since_reap += 1;
        if work > 0 {
            idle_since = None;
            // Network writes queued: hand them to the kernel without waiting (one system
            // call), but only if this shard stays busy; a shard about to park submits them in
            // its park anyway.
            if core.io_kick.get() {
                if kick_seen {
                    core.io_kick.set(false);
                    crate::rt::submit_io().await;
                    last_io_poll = Instant::now();
                    kick_seen = false;
                } else {
                    kick_seen = true;
                }
            }
            // A busy shard with connections looks for socket readiness often (a non-blocking
            // trip through the executor), not only at its periodic reap.
            if has_net && now.duration_since(last_io_poll) >= NET_POLL_BUSY {
                crate::rt::submit_io().await;
                last_io_poll = Instant::now();
            }
            if since_reap >= REAP_EVERY_ITERATIONS
                || now.duration_since(last_reap) >= REAP_INTERVAL_BUSY
            {
                reap(&core, &mut bell, my_bell).await;
                since_reap = 0;
                last_reap = Instant::now();
            }
            continue;
        }
        kick_seen = false;
        let spinning_since = *idle_since.get_or_insert(now);
        // Do not spin while this shard's own log write is in the kernel: a write-through or
        // synced write is run by an io_uring worker thread that inherits this shard's core, so
        // spinning here would only delay it (measured: persist p99 2.6x the raw fdatasync with
        // spinning, 1.3x parked; docs/BENCHMARKS.md, journaling).
        let disk_wait = core.log.as_ref().is_some_and(|l| l.flush_in_flight());
        if !disk_wait && now.duration_since(spinning_since) < idle_spin {
            if core.io_kick.replace(false) {
                crate::rt::submit_io().await;
            }
            // Spin without leaving the pump (a return to the executor costs a system call):
            // watch the rings and the local queues until something arrives or a reap is due.
            // First reap after REAP_INTERVAL_SPIN of idleness (not at once when the last reap
            // is old: a shard that waits a moment for its peer should not pay a reap for it).
            let slice_end = spinning_since.max(last_reap) + REAP_INTERVAL_SPIN;
            // With network connections, completions (bytes received) are only seen when the
            // executor looks at its completion queue: look every NET_POLL_SPIN while spinning.
            let poll_end = core.net.as_ref().map(|_| Instant::now() + NET_POLL_SPIN);
            let mut spins = 0u32;
            loop {
                if core.has_inbound()
                    || core.sched.has_ready()
                    || core.dirty.get()
                    || core.io_kick.get()
                {
                    break;
                }
                spins = spins.wrapping_add(1);
                // Reading the clock costs more than a look at the rings: do it 1 time in 32.
                if spins.is_multiple_of(32) {
                    let t = Instant::now();
                    if t >= slice_end {
                        reap(&core, &mut bell, my_bell).await;
                        since_reap = 0;
                        last_reap = Instant::now();
                        break;
                    }
                    if poll_end.is_some_and(|p| t >= p) {
                        crate::rt::submit_io().await;
                        break;
                    }
                }
                std::hint::spin_loop();
            }
            continue;
        }
        // Park: announce it, then re-check everything a waker could have changed. Queued
        // network writes are submitted by the park's own wait.
        core.io_kick.set(false);
        my_bell.arm();
        core.parked.set(true);
        if core.has_inbound() || core.dirty.get() || core.poked.get() || core.sched.has_ready() {
            my_bell.disarm();
            core.parked.set(false);
            core.poked.set(false);
            continue;
        }
        let deadline = core.next_deadline(next_idle_sweep);
        let sleep_for = deadline.saturating_duration_since(Instant::now());
        core.stats.parks.set(core.stats.parks.get() + 1);
        Park {
            core: &core,
            bell: &mut bell,
            sleep: Box::pin(crate::rt::sleep(sleep_for)),
        }
        .await;
        my_bell.disarm();
        core.parked.set(false);
        core.poked.set(false);
        idle_since = None;
        since_reap = 0;
        last_reap = Instant::now();
    }
    // Stopped: whatever is still here is failed, not silently lost.
    core.drain_inbound();
    for t in &core.tables {
        t.abort_all(&core);
    }
    core.flush();
    crate::net::close_all(&core);
    debug_assert!(
        log_tasks.finished(),
        "the log's tasks ended before the close"
    );
    core.sched.clear();
    if let Some(log) = &core.log {
        if let Err(e) = log.close().await {
            tracing::error!(shard = core.id, error = %e, "closing the log failed");
        }
    }
}

/// One trip through the executor's wait: ring our own bell and park on it, so the executor
/// reaps I/O completions, fires its timers and handles cross-thread wakers.
async fn reap(core: &Rc<ShardCore>, bell: &mut BellReceiver, my_bell: &crate::rt::Bell) {
    core.stats.reaps.set(core.stats.reaps.get() + 1);
    my_bell.write();
    Park {
        core,
        bell,
        sleep: Box::pin(std::future::pending()),
    }
    .await;
}

fn idle_sweep_interval(core: &ShardCore) -> Duration {
    let min_idle = core
        .tables
        .iter()
        .map(|t| t.idle_timeout())
        .min()
        .unwrap_or(Duration::from_secs(60));
    (min_idle / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
}
