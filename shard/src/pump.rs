//! The pump: a shard's main loop, which drives its services (see `docs/ARCHITECTURE.md`).
//!
//! Each iteration reads the clock once, runs inbound messages, fires due timers and expired
//! call deadlines, runs ready tasks, flushes the outgoing rings, then follows the node's phase
//! (drain, deactivation, stop). With nothing to do it spins for `idle_spin`, then parks inside
//! the executor's wait until its doorbell rings, a local event pokes it, or its next deadline
//! passes.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::engine::events::ShardEvent;
use crate::engine::shared::Phase;
use crate::log_tasks::LogTasks;
use crate::rt::{Bell, BellReceiver, DeadlineTimer};
use crate::shard::Shard;
use crate::signal::PumpSignal;
use crate::stats::add;

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

/// Runs shard `shard` until the node stops, then fails what is left and closes its log.
pub(crate) async fn pump(shard: Rc<Shard>, bell: BellReceiver, events: Sender<ShardEvent>) {
    ON_SHARD.with(|s| s.set(true));
    let mut log_tasks = match &shard.log {
        Some(log) => LogTasks::start(log, shard.id, shard.node.config.log_compact_interval, |f| {
            shard.sched.spawn(f)
        }),
        None => LogTasks::none(),
    };
    let mut p = Pump::new(shard.clone(), bell, events);
    loop {
        let now = Instant::now();
        let work = p.iteration(now);
        if p.follow_phase(now, &mut log_tasks) {
            break;
        }
        p.since_reap += 1;
        if work > 0 {
            p.busy(now).await;
        } else if !p.spin(now).await {
            p.park().await;
        }
    }
    stop(&shard, &log_tasks).await;
}

/// The pump's own state between iterations.
struct Pump {
    shard: Rc<Shard>,
    bell: BellReceiver,
    /// The timerfd the parked pump sleeps on until its next deadline (`None`: it could not be
    /// created; the pump then sleeps on the executor's millisecond timer).
    alarm: Option<DeadlineTimer>,
    events: Sender<ShardEvent>,
    idle_spin: Duration,
    idle_every: Duration,
    next_idle_sweep: Instant,
    /// When the pump last found no work (`None` while busy).
    idle_since: Option<Instant>,
    since_reap: u32,
    last_reap: Instant,
    last_io_poll: Instant,
    /// A busy pump submits queued network writes only if it is still busy one iteration later
    /// (a pump about to park submits them in its park anyway).
    kick_seen: bool,
    has_net: bool,
    phase_seen: Phase,
    reported: Phase,
    next_deactivate_push: Instant,
}

impl Pump {
    fn new(shard: Rc<Shard>, bell: BellReceiver, events: Sender<ShardEvent>) -> Self {
        let now = Instant::now();
        let idle_every = idle_sweep_interval(&shard);
        let alarm = match DeadlineTimer::new() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(shard = shard.id, error = %e, "no timerfd: the parked shard's deadlines round up to the millisecond");
                None
            }
        };
        Pump {
            alarm,
            idle_spin: shard.node.config.idle_spin,
            has_net: shard.net.is_some(),
            shard,
            bell,
            events,
            idle_every,
            next_idle_sweep: now + idle_every,
            idle_since: None,
            since_reap: 0,
            last_reap: now,
            last_io_poll: now,
            kick_seen: false,
            phase_seen: Phase::Running,
            reported: Phase::Running,
            next_deactivate_push: now,
        }
    }

    fn my_bell(&self) -> &Bell {
        &self.shard.node.shards[usize::from(self.shard.id)].bell
    }

    /// One round of work; returns how much was done (0: idle).
    fn iteration(&mut self, now: Instant) -> usize {
        let shard = &self.shard;
        let shard_now = shard.clock.refresh(now); // shard time: real unless a test moves it
                                                  // Deadlines first: a reply that comes in after its call's deadline finds the call timed
                                                  // out (the caller gets `Timeout`, never a late `Ok`).
        shard.sweep_calls(shard_now);
        let mut work = shard.drain_inbound();
        shard.fire_timers(shard.now());
        if now >= self.next_idle_sweep {
            shard.tables.sweep_idle(shard.now());
            self.next_idle_sweep = now + self.idle_every;
        }
        // With connections, also stop between rounds when a look at the sockets is due: a task
        // that keeps yielding (a pacer) would otherwise fill the whole batch of rounds and
        // hold received bytes back for tens of microseconds. Also stop once the batch has run
        // for BATCH_TIME (long turns): replies it produced are published at the flush below,
        // and deadlines are swept. `shard.now()` is refreshed by each ask's turn, so this costs
        // no clock read.
        let net_due = self.last_io_poll + NET_POLL_BUSY;
        let has_net = self.has_net;
        let mut rounds = 0u32;
        let batch_end = now + BATCH_TIME;
        let polled = shard.sched.run_ready(RUN_BATCH, || {
            rounds += 1;
            shard.has_inbound()
                || shard.now() >= batch_end
                || (has_net && rounds >= NET_POLL_ROUNDS && Instant::now() >= net_due)
        });
        work += polled;
        add(&shard.stats.task_polls, polled as u64);
        add(&shard.stats.iterations, 1);
        if shard.cross.is_dirty() {
            shard.flush();
            work += 1;
        }
        work
    }

    /// Follows the node's phase (drain, deactivation, stop); true once the pump must stop.
    fn follow_phase(&mut self, now: Instant, log_tasks: &mut LogTasks) -> bool {
        let shard = &self.shard;
        let phase = shard.node.phase();
        if phase != self.phase_seen {
            self.phase_seen = phase;
            // Callers outside the node waiting for admission look at the phase and give up.
            shard.injector().wake_all();
            if phase == Phase::Deactivating {
                self.next_deactivate_push = now;
            }
        }
        match phase {
            Phase::Running => false,
            Phase::Draining => {
                if self.reported != Phase::Draining && shard.quiescent() {
                    self.reported = Phase::Draining;
                    let _ = self.events.send(ShardEvent::Drained(shard.id));
                }
                false
            }
            Phase::Deactivating => {
                if now >= self.next_deactivate_push {
                    shard.tables.deactivate_all();
                    self.next_deactivate_push = now + Duration::from_millis(10);
                }
                if self.reported != Phase::Deactivating && shard.tables.live() == 0 {
                    self.reported = Phase::Deactivating;
                    let _ = self.events.send(ShardEvent::Deactivated(shard.id));
                }
                false
            }
            Phase::Stopped => {
                // The log's periodic tasks end (a pass under way finishes) before the shard
                // stops and closes the log; until then the pump keeps running them.
                log_tasks.stop();
                log_tasks.finished()
            }
        }
    }

    /// After an iteration that did work: hands queued I/O to the kernel and reaps completions
    /// when due, without parking.
    async fn busy(&mut self, now: Instant) {
        self.idle_since = None;
        let signal: &PumpSignal = &self.shard.signal;
        // Network writes queued: hand them to the kernel without waiting (one system call),
        // but only if this shard stays busy; a shard about to park submits them in its park.
        if signal.io_kicked() {
            if self.kick_seen {
                signal.take_io_kick();
                crate::rt::submit_io().await;
                self.last_io_poll = Instant::now();
                self.kick_seen = false;
            } else {
                self.kick_seen = true;
            }
        }
        // A busy shard with connections looks for socket readiness often (a non-blocking trip
        // through the executor), not only at its periodic reap.
        if self.has_net && now.duration_since(self.last_io_poll) >= NET_POLL_BUSY {
            crate::rt::submit_io().await;
            self.last_io_poll = Instant::now();
        }
        if self.since_reap >= REAP_EVERY_ITERATIONS
            || now.duration_since(self.last_reap) >= REAP_INTERVAL_BUSY
        {
            self.reap().await;
        }
    }

    /// An idle iteration: spins (watching the rings and local queues, without leaving the
    /// pump: a return to the executor costs a system call) while within `idle_spin`. Returns
    /// false when the pump should park instead.
    async fn spin(&mut self, now: Instant) -> bool {
        self.kick_seen = false;
        let spinning_since = *self.idle_since.get_or_insert(now);
        let shard = self.shard.clone();
        // Do not spin while this shard's own log write is in the kernel: a write-through or
        // synced write is run by an io_uring worker thread, which inherited this shard's core
        // until `rt/io_workers.rs` let it run on any core; spinning beside it was measured
        // (persist p99 2.6x the raw fdatasync with spinning, 1.3x parked; docs/BENCHMARKS.md,
        // journaling). Whether spinning pays now that the worker can leave the core is not
        // measured yet.
        let disk_wait = shard.log.as_ref().is_some_and(|l| l.flush_in_flight());
        if disk_wait || now.duration_since(spinning_since) >= self.idle_spin {
            return false;
        }
        if shard.signal.take_io_kick() {
            crate::rt::submit_io().await;
        }
        // First reap after REAP_INTERVAL_SPIN of idleness (not at once when the last reap is
        // old: a shard that waits a moment for its peer should not pay a reap for it).
        let slice_end = spinning_since.max(self.last_reap) + REAP_INTERVAL_SPIN;
        // With network connections, completions (bytes received) are only seen when the
        // executor looks at its completion queue: look every NET_POLL_SPIN while spinning.
        let poll_end = self.has_net.then(|| Instant::now() + NET_POLL_SPIN);
        let mut spins = 0u32;
        loop {
            if shard.has_inbound()
                || shard.sched.has_ready()
                || shard.cross.is_dirty()
                || shard.signal.io_kicked()
            {
                return true;
            }
            spins = spins.wrapping_add(1);
            // Reading the clock costs more than a look at the rings: do it 1 time in 32.
            if spins.is_multiple_of(32) {
                let t = Instant::now();
                if t >= slice_end {
                    self.reap().await;
                    return true;
                }
                if poll_end.is_some_and(|p| t >= p) {
                    crate::rt::submit_io().await;
                    return true;
                }
            }
            std::hint::spin_loop();
        }
    }

    /// Parks until the doorbell rings, a local event pokes the pump, or its next deadline.
    async fn park(&mut self) {
        let shard = self.shard.clone();
        // Announce the park, then re-check everything a waker could have changed. Queued
        // network writes are submitted by the park's own wait.
        shard.signal.take_io_kick();
        self.my_bell().arm();
        shard.signal.park();
        let woken = shard.has_inbound()
            || shard.cross.is_dirty()
            || shard.signal.poked()
            || shard.sched.has_ready();
        if !woken {
            let deadline = shard.next_deadline(self.next_idle_sweep);
            add(&shard.stats.parks, 1);
            // The deadline to the microsecond on the shard's timerfd; the executor's timer
            // (whole milliseconds) only if the timerfd is unavailable.
            let armed = self.alarm.as_mut().is_some_and(|a| a.arm(deadline).is_ok());
            let sleep = match self.alarm.as_mut() {
                Some(alarm) if armed => Wait::Alarm(alarm),
                _ => Wait::Sleep(Box::pin(crate::rt::sleep(
                    deadline.saturating_duration_since(Instant::now()),
                ))),
            };
            let why = Park {
                signal: &shard.signal,
                bell: &mut self.bell,
                sleep,
            }
            .await;
            add(&shard.stats.wakeups[why], 1);
            self.idle_since = None;
            self.since_reap = 0;
            self.last_reap = Instant::now();
            // The park's wait submitted queued I/O and reaped completions: it counts as the
            // look at the sockets, so the busy iteration after the wake-up does not make a
            // second (non-blocking) `io_uring_enter` before the next park (issue 22: one
            // system call fewer per wake-up of a parked shard with connections).
            self.last_io_poll = self.last_reap;
        }
        self.my_bell().disarm();
        shard.signal.unpark();
    }

    /// One trip through the executor's wait: ring our own bell and park on it, so the executor
    /// reaps I/O completions, fires its timers and handles cross-thread wakers.
    async fn reap(&mut self) {
        add(&self.shard.stats.reaps, 1);
        self.my_bell().write();
        Park {
            signal: &self.shard.signal,
            bell: &mut self.bell,
            sleep: Wait::Sleep(Box::pin(std::future::pending())),
        }
        .await;
        self.since_reap = 0;
        self.last_reap = Instant::now();
    }
}

/// The stop sequence: whatever is still here is failed, not silently lost; then the log
/// closes.
async fn stop(shard: &Rc<Shard>, log_tasks: &LogTasks) {
    shard.drain_inbound();
    crate::migrate::abort_all(shard);
    shard.tables.abort_all(shard);
    shard.flush();
    crate::net::close_all(shard);
    debug_assert!(
        log_tasks.finished(),
        "the log's tasks ended before the close"
    );
    shard.sched.clear();
    if let Some(log) = &shard.log {
        if let Err(e) = log.close().await {
            tracing::error!(shard = shard.id, error = %e, "closing the log failed");
        }
    }
}

/// What a park waits for besides its doorbell and pokes.
enum Wait<'a> {
    /// The pump's deadline on the shard's timerfd (to the microsecond).
    Alarm(&'a mut DeadlineTimer),
    /// The executor's timer (whole milliseconds), or nothing (`pending`).
    Sleep(Pin<Box<dyn Future<Output = ()>>>),
}

impl Wait<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Wait::Alarm(a) => a.poll_expired(cx),
            Wait::Sleep(f) => f.as_mut().poll(cx),
        }
    }
}

/// Waits until the doorbell rings, the pump is poked, or `sleep` ends.
struct Park<'a> {
    signal: &'a PumpSignal,
    bell: &'a mut BellReceiver,
    sleep: Wait<'a>,
}

/// Resolves to why the park ended: `stats::WAKE_LOCAL`, `WAKE_DOORBELL` or `WAKE_TIMER`.
impl Future for Park<'_> {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        if self.signal.take_poke() {
            return Poll::Ready(crate::stats::WAKE_LOCAL);
        }
        if self.bell.poll_rung(cx).is_ready() {
            return Poll::Ready(crate::stats::WAKE_DOORBELL);
        }
        if self.sleep.poll(cx).is_ready() {
            return Poll::Ready(crate::stats::WAKE_TIMER);
        }
        self.signal.register(cx.waker());
        Poll::Pending
    }
}

fn idle_sweep_interval(shard: &Shard) -> Duration {
    let min_idle = shard
        .tables
        .min_idle_timeout()
        .unwrap_or(Duration::from_secs(60));
    (min_idle / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
}
