//! Activations: an actor's mailbox, its lifecycle, and the task that runs its turns one at a
//! time. The per-type tables that hold them are in `tables`.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use quark_placement::{ActorId, ActorKey};

use crate::actor::{Actor, Context};
use crate::calls::CallId;
use crate::envelope::{fail_reply, MailItem, Origin, ReplyTo};
use crate::error::CallError;
use crate::shard::Shard;
use crate::turn::{RunTurn, TurnSlot};

pub(crate) use crate::tables::{ActorTables, ErasedType, TypeInfo, TypeTable};

/// Turns an activation runs before it lets other tasks of the shard run.
const TURN_BUDGET: u32 = 64;
/// Time after which an activation lets the pump run (flush replies, take new mail) even
/// before `TURN_BUDGET` turns: measured at the start of asks, against the shard's clock as
/// asks refresh it (so at the resolution of the coarse clock, a few ms).
const TURN_TIME_BUDGET: Duration = Duration::from_millis(1);

/// How actors of one type are built and managed; registered on the node builder.
///
/// ```
/// use quark_shard::{Actor, ActorType};
/// use std::time::Duration;
/// struct Cart { items: Vec<u64> }
/// impl Actor for Cart { const TYPE_NAME: &'static str = "cart"; }
/// let t = ActorType::new(|_id| Cart { items: Vec::new() }).idle_timeout(Duration::from_secs(60));
/// ```
pub struct ActorType<A: Actor> {
    pub(crate) factory: Factory<A>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) stateless_workers: Option<usize>,
    /// How the state moves between shards (`movable`/`migratable`, in `migrate`).
    pub(crate) migration: Option<crate::migrate::Mover<A>>,
    /// The deep size of a state (`memory_size`), if the type has the hook.
    pub(crate) memory_size: Option<MemorySize<A>>,
    /// Where a first activation goes (`placement`, in `migrate`).
    pub(crate) placement: crate::directory::PlacementPolicy,
}

/// An [`ActorType::memory_size`] hook.
pub(crate) type MemorySize<A> = Box<dyn Fn(&A) -> usize + Send + Sync>;

impl<A: Actor> ActorType<A> {
    /// An actor type whose activations are built by `factory` (called on the owning shard's
    /// thread, once per activation).
    pub fn new(factory: impl Fn(&ActorId) -> A + Send + Sync + 'static) -> Self {
        ActorType {
            factory: Factory::Plain(Box::new(factory)),
            idle_timeout: None,
            stateless_workers: None,
            migration: None,
            memory_size: None,
            placement: crate::directory::PlacementPolicy::Hash,
        }
    }

    /// An actor type whose activations are *loaded*: `loader` runs on the owning shard, once per
    /// activation and before [`Actor::on_activate`], and may await (read the shard's log, say).
    /// The activation's first message waits for it. If it fails (or panics), every call queued
    /// for the activation fails with [`CallError::ActivationFailed`] and the activation is
    /// discarded; the next message tries again.
    ///
    /// This is how event-sourced actors rebuild their state from the journal.
    pub fn loaded(
        loader: impl for<'a> Fn(&'a Context<A>) -> LoadFuture<'a, A> + Send + Sync + 'static,
    ) -> Self {
        ActorType {
            factory: Factory::Loaded(Box::new(loader)),
            idle_timeout: None,
            stateless_workers: None,
            migration: None,
            memory_size: None,
            placement: crate::directory::PlacementPolicy::Hash,
        }
    }

    /// Deactivate an activation after this long without a message (default: the node's
    /// `idle_timeout_ms`).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Makes this a *stateless worker* type: a message is handled on the sender's shard (no
    /// cross-shard hop; a sender outside the node uses the shard its key hashes to), by one of
    /// up to `max_local_workers` activations per key and shard: an idle one if any, else a new
    /// one while under the limit, else the one with the shortest queue. Never migrated.
    pub fn stateless(mut self, max_local_workers: usize) -> Self {
        self.stateless_workers = Some(max_local_workers.max(1));
        self
    }

    /// Gives the type a *deep size*: `size(&state)` returns the bytes the state owns,
    /// heap included (vectors, maps, strings), as the user counts them. The engine calls it
    /// only at the end of a *sampled* turn (one in 64 of the type on each shard) to rank the
    /// shard's largest actors (`LoadSnapshot::top_memory`, `/quark/load`, `/metrics`), and on
    /// idle activations when an actor query is answered (`ActorRow::state_bytes`); a type
    /// without the hook costs nothing and is shown by its shallow size (`size_of`). Keep it
    /// cheap (it runs on the shard's thread) and free of panics.
    pub fn memory_size(mut self, size: impl Fn(&A) -> usize + Send + Sync + 'static) -> Self {
        self.memory_size = Some(Box::new(size));
        self
    }

    /// True if this is a stateless worker type.
    pub fn is_stateless(&self) -> bool {
        self.stateless_workers.is_some()
    }
}

/// The future an [`ActorType::loaded`] loader returns.
pub type LoadFuture<'a, A> = Pin<Box<dyn Future<Output = Result<A, LoadError>> + 'a>>;

/// Why a loader could not build an activation (shown to callers as
/// [`CallError::ActivationFailed`]).
pub type LoadError = Box<dyn std::error::Error + Send + Sync>;

type Loader<A> = Box<dyn for<'a> Fn(&'a Context<A>) -> LoadFuture<'a, A> + Send + Sync>;

/// How an activation's state is built.
pub(crate) enum Factory<A: Actor> {
    /// Synchronously, from the id.
    Plain(Box<dyn Fn(&ActorId) -> A + Send + Sync>),
    /// By an async loader that may fail.
    Loaded(Loader<A>),
}

/// Routes `item` to the activation of `(A, key)` on this shard (activating it if needed).
///
/// Deliveries from rings and timers never wait: their senders are bounded by credits. Local
/// senders wait for mailbox space *before* calling this (see [`wait_for_space`]).
pub(crate) fn deliver<A: Actor>(core: &Rc<Shard>, type_idx: u16, item: Box<dyn MailItemKeyed<A>>) {
    let table = core.table::<A>(type_idx);
    let Some(act) = table.route(core, item.key()) else {
        return crate::migrate::divert(core, type_idx, item);
    };
    let item = item.into_item();
    // An idle activation with nothing queued runs the message at once, in the pump's hands,
    // rather than through a wake and a poll of its task (see `direct.rs`).
    if act.can_run_direct() && table.info.spec.stateless_workers.is_none() {
        if let Err(item) = crate::direct::run_delivered(core, &act, item) {
            act.push(item);
        }
    } else {
        act.push(item);
    }
}

/// A mail item that knows its key (so routing needs no second allocation).
pub(crate) trait MailItemKeyed<A: Actor>: MailItem<A> {
    fn key(&self) -> &ActorKey;
    fn into_item(self: Box<Self>) -> Box<dyn MailItem<A>>;
    /// For the home shard of a moved actor (`migrate`): the item as a message to forward.
    fn into_relay(self: Box<Self>) -> Box<dyn crate::migrate::Relay>;
}

impl<A, M> MailItemKeyed<A> for crate::envelope::Deliver<A, M>
where
    A: crate::Handler<M>,
    M: crate::Message,
{
    #[inline]
    fn key(&self) -> &ActorKey {
        &self.key
    }
    #[inline]
    fn into_item(self: Box<Self>) -> Box<dyn MailItem<A>> {
        self
    }
    fn into_relay(self: Box<Self>) -> Box<dyn crate::migrate::Relay> {
        self
    }
}

/// Delivers `item` from a sender on this shard if the target is live and has room (the common
/// case: no future, no reference-count traffic); gives the item back otherwise.
#[inline]
pub(crate) fn try_send_local<A: Actor>(
    core: &Shard,
    type_idx: u16,
    item: Box<dyn MailItemKeyed<A>>,
) -> Result<(), Box<dyn MailItemKeyed<A>>> {
    let table = core.table::<A>(type_idx);
    if table.info.spec.stateless_workers.is_none() {
        if let Some(act) = table.lookup(item.key()) {
            if act.queue_len() < core.node.config.mailbox_capacity {
                act.push(item.into_item());
                return Ok(());
            }
        }
    }
    Err(item)
}

/// Delivers `item` from a sender on this shard at once: activates the target if needed;
/// gives the item back if its mailbox is at `mailbox_capacity`.
pub(crate) fn send_local_now<A: Actor>(
    core: &Rc<Shard>,
    type_idx: u16,
    item: Box<dyn MailItemKeyed<A>>,
) -> Result<(), Box<dyn MailItemKeyed<A>>> {
    let Some(act) = core.table::<A>(type_idx).route(core, item.key()) else {
        crate::migrate::divert(core, type_idx, item);
        return Ok(());
    };
    if act.queue_len() < core.node.config.mailbox_capacity {
        act.push(item.into_item());
        Ok(())
    } else {
        Err(item)
    }
}

/// Delivers `item` from a sender on this shard: activates the target if needed and waits
/// while its mailbox is at `mailbox_capacity`.
pub(crate) async fn send_local<A: Actor>(
    core: &Rc<Shard>,
    type_idx: u16,
    item: Box<dyn MailItemKeyed<A>>,
) {
    let cap = core.node.config.mailbox_capacity;
    let table = core.table::<A>(type_idx);
    loop {
        let Some(act) = table.route(core, item.key()) else {
            return crate::migrate::divert(core, type_idx, item);
        };
        if act.queue_len() < cap {
            act.push(item.into_item());
            return;
        }
        core.stats
            .mailbox_waits
            .set(core.stats.mailbox_waits.get() + 1);
        SpaceWait {
            act: &act,
            registered: false,
        }
        .await;
    }
}

struct SpaceWait<'a, A: Actor> {
    act: &'a Rc<Activation<A>>,
    registered: bool,
}

impl<A: Actor> Future for SpaceWait<'_, A> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.registered {
            return Poll::Ready(());
        }
        self.registered = true;
        self.act
            .ctx
            .rare()
            .space_waiters
            .borrow_mut()
            .push_back(cx.waker().clone());
        Poll::Pending
    }
}

/// Where an activation is in its life. Every change its task makes goes through
/// [`Activation::enter`], which asserts that the change is one of [`Life::allowed_from`].
///
/// ```text
/// New          -> Loading (loaded types) | Activating (plain factories)
/// Loading      -> Activating | Gone (the loader failed or panicked)
/// Activating   -> Idle | Gone (on_activate panicked)
/// Idle         -> Running (a turn) | Deactivating (asked to, mailbox empty)
/// Running      -> Idle | Gone (the handler panicked)
/// Deactivating -> Gone (mailbox empty) | New (mail arrived meanwhile: rebuild in place)
/// New          -> Idle (a migrated state arrived: no build, no on_activate)
/// Idle         -> Moved (its state was handed over to another shard; `migrate`)
/// any          -> Gone (shard shutdown, `Activation::discard_at_shutdown`, unchecked)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Life {
    /// Created (or about to be rebuilt in place); its task has not started building the state.
    New,
    /// The type's loader is running.
    Loading,
    /// `on_activate` is running.
    Activating,
    /// Between turns: the state is built and no turn runs (mail may be queued).
    Idle,
    /// A handler's turn is running.
    Running,
    /// `on_deactivate` is running; mail that arrives now is queued and, if any is left when it
    /// ends, the activation goes back to `New` and rebuilds in place.
    Deactivating,
    /// Discarded: out of its table, queued calls failed, timers cancelled. Final.
    Gone,
    /// Its state moved to another shard (`migrate`): out of its table, mailbox empty, timers
    /// cancelled, task ended. Final.
    Moved,
}

/// Panics naming a refused lifecycle transition (out of line: never taken).
#[cold]
#[inline(never)]
fn not_allowed(from: Life, to: Life, who: &dyn std::fmt::Display) -> ! {
    panic!("activation {who}: lifecycle transition {from:?} -> {to:?} is not allowed")
}

impl Life {
    /// The states from which `self` may be entered (shutdown's discard, allowed from any
    /// state, does not go through this table).
    const fn allowed_from(self) -> &'static [Life] {
        use Life::*;
        match self {
            New => &[Deactivating],
            Loading => &[New],
            Activating => &[New, Loading],
            Idle => &[Activating, Running, New],
            Running => &[Idle],
            Deactivating => &[Idle],
            Gone => &[Loading, Activating, Running, Deactivating],
            Moved => &[Idle],
        }
    }

    /// Checks that moving from `self` to `to` is allowed and returns `to`; panics naming the
    /// transition (and `who`) otherwise.
    #[inline]
    fn step(self, to: Life, who: &dyn std::fmt::Display) -> Life {
        // The table as bit sets, built at compile time: the check is on every turn's path
        // (twice), and a slice scan cost ~20 instructions a turn.
        const ALLOWED: [u8; 8] = {
            let all = [
                Life::New,
                Life::Loading,
                Life::Activating,
                Life::Idle,
                Life::Running,
                Life::Deactivating,
                Life::Gone,
                Life::Moved,
            ];
            let mut table = [0u8; 8];
            let mut i = 0;
            while i < all.len() {
                let from = all[i].allowed_from();
                let mut j = 0;
                while j < from.len() {
                    table[all[i] as usize] |= 1 << from[j] as u8;
                    j += 1;
                }
                i += 1;
            }
            table
        };
        if ALLOWED[to as usize] & (1 << self as u8) == 0 {
            not_allowed(self, to, who);
        }
        to
    }

    /// Whether a turn (loader, `on_activate`, a handler, `on_deactivate`) is running.
    fn is_busy(self) -> bool {
        matches!(
            self,
            Life::Loading | Life::Activating | Life::Running | Life::Deactivating
        )
    }
}

/// One live activation.
pub(crate) struct Activation<A: Actor> {
    pub(crate) ctx: Context<A>,
    pub(crate) mailbox: RefCell<VecDeque<Box<dyn MailItem<A>>>>,
    pub(crate) waker: RefCell<Option<Waker>>,
    /// The task is parked in [`MailWait`] with its waker stored (a wake-up optimisation, not a
    /// lifecycle state: it is only ever true in `Idle`).
    pub(crate) waiting: Cell<bool>,
    life: Cell<Life>,
    /// Deactivation was asked for (idle sweep or shutdown); the task deactivates once its
    /// mailbox is empty. A request, not a state: it may arrive in any state and is consumed
    /// when `on_deactivate` ends.
    pub(crate) stop_requested: Cell<bool>,
    /// When its last message turn began: shard time in µs (`ShardClock::now_us`; 8 bytes
    /// where an `Instant` takes 16).
    pub(crate) last_active: Cell<u64>,
    /// The actor's state from `activate` to `deactivate` (`None` outside). Touched only by
    /// whoever runs the current turn, the task or a sender's direct turn (`direct.rs`); the
    /// lifecycle makes that one at a time (a turn starts only from `Idle`).
    state: UnsafeCell<Option<A>>,
    // Rarely used parts (timers, extensions, senders waiting for room, a direct turn that
    // awaited in its sender's poll and is handed to the task, which finishes it before it
    // takes more mail) are in `ctx.rare`.
    /// Its memory cell (`memory.rs`): current around its turns.
    pub(crate) mem: crate::memory::ActorMem,
}

/// A direct turn handed to the activation's task (see `direct.rs`).
pub(crate) struct PendingTurn {
    slot: TurnSlot,
    /// For a direct ask: the caller's call, and how to complete it with the reply the turn
    /// wrote into the slot.
    ask: Option<(CallId, FinishAsk)>,
    /// For a delivered message (from a ring, a timer or outside the node): its origin and
    /// reply address, for the bookkeeping when the turn ends (`Shard::turn_done`, a panic's
    /// reply).
    delivered: Option<(Origin, ReplyTo)>,
    /// When the turn began, if it is one of the sampled (timed) turns of its type.
    sampled: Option<Instant>,
}

/// Completes a direct ask's call from its finished turn's slot (unsafe: the slot must hold the
/// finished turn of the ask the function was made for).
pub(crate) type FinishAsk = unsafe fn(&mut TurnSlot, &Shard, CallId);

impl PendingTurn {
    pub(crate) fn new(slot: TurnSlot, ask: Option<(CallId, FinishAsk)>) -> Self {
        PendingTurn {
            slot,
            ask,
            delivered: None,
            sampled: None,
        }
    }

    pub(crate) fn delivered(slot: TurnSlot, origin: Origin, reply: ReplyTo) -> Self {
        PendingTurn {
            slot,
            ask: None,
            delivered: Some((origin, reply)),
            sampled: None,
        }
    }

    /// Marks the turn as a sampled one that began at `start` (see `ShardStats::turn_begin`).
    pub(crate) fn sampled(mut self, start: Option<Instant>) -> Self {
        self.sampled = start;
        self
    }

    fn reply(&self) -> ReplyTo {
        match (self.ask, self.delivered) {
            (Some((call, _)), _) => ReplyTo::Local(call),
            (None, Some((_, reply))) => reply,
            (None, None) => ReplyTo::None,
        }
    }
}

impl<A: Actor> Drop for Activation<A> {
    fn drop(&mut self) {
        // A pending turn borrows the state: it goes first.
        if let Some(rare) = self.ctx.rare.get_mut() {
            drop(rare.pending.get_mut().take());
        }
    }
}

impl<A: Actor> Activation<A> {
    /// A new activation of `id` on shard `core`, its task spawned (it builds the actor at its
    /// first poll).
    pub(crate) fn start(
        core: &Rc<Shard>,
        id: ActorId,
        type_idx: u16,
        info: Arc<TypeInfo<A>>,
    ) -> Rc<Self> {
        Self::start_with_state(core, id, type_idx, info, None)
    }

    /// A new activation of `id` whose state arrived from another shard (`migrate`): its task
    /// starts at its turn loop (no factory, no `on_activate`).
    pub(crate) fn start_with(
        core: &Rc<Shard>,
        id: ActorId,
        type_idx: u16,
        info: Arc<TypeInfo<A>>,
        actor: A,
    ) -> Rc<Self> {
        Self::start_with_state(core, id, type_idx, info, Some(actor))
    }

    fn start_with_state(
        core: &Rc<Shard>,
        id: ActorId,
        type_idx: u16,
        info: Arc<TypeInfo<A>>,
        arrived: Option<A>,
    ) -> Rc<Self> {
        let act = Rc::new_cyclic(|this: &Weak<Activation<A>>| Activation {
            mem: crate::memory::ActorMem::new(this.clone(), arrived.as_ref().map(|_| &id)),
            ctx: Context {
                id,
                core: core.clone(),
                type_idx,
                this: this.clone(),
                rare: std::cell::OnceCell::new(),
            },
            mailbox: RefCell::new(VecDeque::new()),
            waker: RefCell::new(None),
            waiting: Cell::new(false),
            life: Cell::new(Life::New),
            stop_requested: Cell::new(false),
            last_active: Cell::new(core.clock.now_us()),
            state: UnsafeCell::new(None),
        });
        // An arrived state goes straight into the activation (in the task's future it would
        // stay as large as the state for the activation's whole life).
        let has_state = arrived.is_some();
        act.set_state(arrived);
        core.sched
            .spawn(run_activation(act.clone(), info, has_state));
        act
    }

    #[inline]
    pub(crate) fn push(&self, item: Box<dyn MailItem<A>>) {
        self.mailbox.borrow_mut().push_back(item);
        if self.waiting.replace(false) {
            // The activation task's waker stays stored (it does not change between waits), so
            // a wake costs no reference-count traffic.
            if let Some(w) = self.waker.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    /// The actor's state.
    ///
    /// # Safety
    /// Only for the runner of the current turn (the activation is built, and the caller
    /// entered `Running` or is its task in a lifecycle step), and no other reference to the
    /// state may be live.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn state_mut(&self) -> &mut A {
        // SAFETY: per the contract.
        unsafe { (*self.state.get()).as_mut() }.expect("the activation's state is built")
    }

    /// Puts the built state in place (`activate`), or takes it out (`deactivate`, discards).
    fn set_state(&self, state: Option<A>) -> Option<A> {
        // SAFETY: called by the task between turns (no turn, direct or not, can be running:
        // the activation is not `Idle`).
        unsafe { std::mem::replace(&mut *self.state.get(), state) }
    }

    /// Whether a sender may run a direct turn now: idle, nothing queued, not asked to stop.
    #[inline]
    pub(crate) fn can_run_direct(&self) -> bool {
        self.life.get() == Life::Idle
            && self.mailbox.borrow().is_empty()
            && !self.stop_requested.get()
    }

    /// A direct turn starts (after [`Self::can_run_direct`]).
    #[inline]
    pub(crate) fn begin_direct(&self, core: &Shard) {
        self.enter(Life::Running);
        self.last_active.set(core.clock.now_us());
    }

    /// A direct turn ended in its first poll: back to `Idle`; the task takes over if mail
    /// arrived meanwhile (it was woken by the push) or a deactivation was asked for.
    #[inline]
    pub(crate) fn end_direct(&self) {
        self.enter(Life::Idle);
        if self.stop_requested.get() {
            self.wake_task();
        }
    }

    /// A direct turn awaited: the task finishes it.
    /// Runs `f` with the activation task's waker (stored at the task's first poll, before the
    /// activation can be idle).
    #[inline]
    pub(crate) fn with_task_waker<R>(&self, f: impl FnOnce(&Waker) -> R) -> R {
        let w = self.waker.borrow();
        f(w.as_ref().expect("an idle activation's task has polled"))
    }

    pub(crate) fn hand_over(&self, turn: PendingTurn) {
        *self.ctx.rare().pending.borrow_mut() = Some(turn);
        self.wake_task();
    }

    /// A direct turn panicked in its first poll: the activation is discarded as when a turn
    /// of its task panics (`reply`, if any, gets the panic; queued calls are aborted), and the
    /// task, woken, ends.
    pub(crate) fn direct_panicked(self: &Rc<Self>, reply: ReplyTo, panic: String) {
        turn_panicked(self, reply, panic);
        self.wake_task();
    }

    fn wake_task(&self) {
        if self.waiting.replace(false) {
            if let Some(w) = self.waker.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    pub(crate) fn queue_len(&self) -> usize {
        self.mailbox.borrow().len()
    }

    pub(crate) fn is_idle(&self) -> bool {
        !self.life.get().is_busy() && self.mailbox.borrow().is_empty()
    }

    /// How long since its last message turn began, if it is idle now.
    pub(crate) fn idle_for(&self, now: Instant) -> Option<Duration> {
        self.is_idle().then(|| self.since_active(now))
    }

    /// Time from its last message turn's beginning to shard time `now`.
    pub(crate) fn since_active(&self, now: Instant) -> Duration {
        let now_us = self.ctx.core.clock.us_at(now);
        Duration::from_micros(now_us.saturating_sub(self.last_active.get()))
    }

    /// The state, if the activation is between turns (`Idle`: built, no turn running or
    /// suspended); for reading it from the shard's thread (actor queries).
    pub(crate) fn between_turns_state(&self) -> Option<&A> {
        if self.life.get() != Life::Idle {
            return None;
        }
        // SAFETY: `Idle` means no turn (direct or not) holds the state, and none can start
        // while the caller, on the shard's thread, holds this borrow.
        unsafe { (*self.state.get()).as_ref() }
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.life.get() == Life::Gone
    }

    /// Gone, or its state moved to another shard.
    pub(crate) fn has_ended(&self) -> bool {
        matches!(self.life.get(), Life::Gone | Life::Moved)
    }

    /// `on_deactivate` is running (a move waits for the deactivation to end instead).
    pub(crate) fn is_deactivating(&self) -> bool {
        self.life.get() == Life::Deactivating
    }

    /// Its state was handed over to another shard (`migrate::hand_over`).
    pub(crate) fn moved_out(&self) {
        self.enter(Life::Moved);
    }

    /// Moves to `to`, asserting the move is allowed (see [`Life::allowed_from`]).
    #[inline(always)]
    fn enter(&self, to: Life) {
        self.life.set(self.life.get().step(to, &self.ctx.id));
    }

    /// The discard sequence of an activation's own task (its load failed, a turn panicked, or
    /// it deactivated with an empty mailbox): enters `Gone` (asserted), then [`Self::release`].
    /// The task then drops the state, if one was built, and takes the activation out of its
    /// table (see `end_activation`).
    pub(crate) fn discard(&self, core: &Shard, err: impl Fn(ActorId) -> CallError) {
        self.enter(Life::Gone);
        self.release(core, err);
    }

    /// Shutdown's discard: the shard stops and catches the activation in whatever state it is
    /// (the task is never polled again), so `Gone` is entered from any state. The caller clears
    /// the tables as a whole.
    pub(crate) fn discard_at_shutdown(&self, core: &Shard) {
        self.life.set(Life::Gone);
        self.release(core, |actor| CallError::ShuttingDown { actor });
    }

    /// What every discard does once `Gone`: fails every queued call with `err`, wakes the
    /// senders waiting for room and cancels the activation's timers.
    pub(crate) fn release(&self, core: &Shard, err: impl Fn(ActorId) -> CallError) {
        self.fail_queued(core, err);
        self.ctx.cancel_all_timers();
    }

    pub(crate) fn request_deactivation(&self) {
        self.stop_requested.set(true);
        self.wake_task();
    }

    /// Wakes the senders waiting for room once the mailbox is down to half its capacity (not
    /// at every free slot: a sender then refills in a batch instead of waking once per
    /// message).
    #[inline]
    pub(crate) fn wake_space_waiters(&self, cap: usize) {
        // Nobody waits, the common case, first: one look on every message taken.
        let Some(rare) = self.ctx.rare.get() else {
            return;
        };
        if rare.space_waiters.borrow().is_empty() || self.mailbox.borrow().len() > cap / 2 {
            return;
        }
        let mut waiters = rare.space_waiters.borrow_mut();
        let woken: Vec<Waker> = waiters.drain(..).collect();
        drop(waiters);
        for w in woken {
            w.wake();
        }
    }

    pub(crate) fn fail_queued(&self, core: &Shard, err: impl Fn(ActorId) -> CallError) {
        let items: Vec<_> = self.mailbox.borrow_mut().drain(..).collect();
        for item in items {
            fail_reply(core, item.reply_to(), err(self.ctx.id.clone()));
            core.turn_done(item.origin(), item.reply_to());
        }
        self.wake_all_space_waiters();
    }

    /// Wakes every sender waiting for room (the mailbox is gone or emptied for good).
    pub(crate) fn wake_all_space_waiters(&self) {
        let Some(rare) = self.ctx.rare.get() else {
            return;
        };
        let woken: Vec<Waker> = rare.space_waiters.borrow_mut().drain(..).collect();
        for w in woken {
            w.wake();
        }
    }
}

/// Waits for mail (or a deactivation request).
struct MailWait<'a, A: Actor> {
    act: &'a Activation<A>,
}

impl<A: Actor> Future for MailWait<'_, A> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let act = self.act;
        if !act.mailbox.borrow().is_empty()
            || act.stop_requested.get()
            || act
                .ctx
                .rare
                .get()
                .is_some_and(|r| r.pending.borrow().is_some())
            || act.life.get() == Life::Gone
        {
            return Poll::Ready(());
        }
        act.waiting.set(true);
        let mut slot = act.waker.borrow_mut();
        match &*slot {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// The task of one activation: activate, run turns one at a time, deactivate; reactivate in
/// place if mail arrived during deactivation.
async fn run_activation<A: Actor>(
    act: Rc<Activation<A>>,
    info: Arc<TypeInfo<A>>,
    mut arrived: bool,
) {
    // The mailbox loop stays in this function (not a nested async fn): it is on every
    // message's path, and an extra future layer costs instructions per turn.
    let core = act.ctx.core.clone();
    // The turn slot this task runs its turns in, held while it has mail (declared after
    // `act`, so dropped first if the shard drops the task mid-turn).
    let mut slot: Option<TurnSlot> = None;
    // The task's waker, kept from its first poll: a direct turn polls with it (some futures
    // keep the first waker they see: monoio's timers do), and `MailWait` finds it in place.
    std::future::poll_fn(|cx| {
        *act.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Ready(())
    })
    .await;
    loop {
        // The lifecycle steps and a handed-over direct turn are boxed: they are rare, and
        // inline they would make every activation's future (kept for its whole life) several
        // hundred bytes larger.
        let built = if std::mem::take(&mut arrived) {
            // The state arrived from another shard (`migrate`): no build, no `on_activate`.
            act.enter(Life::Idle);
            true
        } else {
            Box::pin(activate(&act, &info)).await
        };
        if !built {
            return;
        }
        let mailbox_cap = core.node.config.mailbox_capacity;
        let mut budget = TURN_BUDGET;
        let mut slice_start = core.now();
        loop {
            if act.is_gone() {
                // A sender's direct turn panicked: the activation was discarded.
                return;
            }
            let pending = act
                .ctx
                .rare
                .get()
                .and_then(|r| r.pending.borrow_mut().take());
            if let Some(turn) = pending {
                if !Box::pin(finish_direct(&act, turn)).await {
                    return;
                }
                continue;
            }
            let item = act.mailbox.borrow_mut().pop_front();
            let Some(item) = item else {
                if let Some(s) = slot.take() {
                    core.give_turn_slot(s);
                }
                if act.stop_requested.get() {
                    break;
                }
                MailWait { act: &act }.await;
                continue;
            };
            act.wake_space_waiters(mailbox_cap);
            let reply = item.reply_to();
            let origin = item.origin();
            let mut yield_after = false;
            if let Some(deadline) = item.deadline() {
                // An ask: not run if its caller stopped waiting (an overloaded actor catches up
                // instead of working for nobody). Judged with a clock fresh enough for this
                // deadline (see `Shard::deadline_passed`).
                if core.deadline_passed(deadline) || !core.is_awaited(reply) {
                    drop(item);
                    crate::envelope::expire_reply(&core, reply);
                    core.turn_done(origin, reply);
                    let s = &core.stats.asks_expired_skipped;
                    s.set(s.get() + 1);
                    continue;
                }
                let now = core.now();
                if now.saturating_duration_since(slice_start) >= TURN_TIME_BUDGET {
                    yield_after = true;
                    slice_start = now;
                }
            }
            if origin != Origin::Timer {
                act.last_active.set(core.clock.now_us());
            }
            act.enter(Life::Running);
            let sampled = core.stats.turn_begin(act.ctx.type_idx);
            let s = slot.get_or_insert_with(|| core.take_turn_slot());
            let result = {
                // SAFETY: this task runs the turn (`Running`); the turn borrows the state and
                // the context of `act`, which this task keeps alive, and is cleared below.
                let actor: &mut A = unsafe { act.state_mut() };
                let mut turn = unsafe { s.turn() };
                item.start(actor, &act.ctx, turn.as_mut());
                let run = RunTurn {
                    turn,
                    caller: crate::turn::caller(sampled, act.ctx.type_idx, &act.ctx.id.key),
                };
                crate::memory::attributed(act.mem.cell(), run).await
            };
            s.clear();
            core.turn_done(origin, reply);
            if let Some(start) = sampled {
                let bytes = crate::tables::sampled_memory(&core, &act);
                core.stats
                    .turn_sampled(start, &act.ctx.id, act.ctx.type_idx, bytes);
            }
            if let Err(panic) = result {
                turn_panicked(&act, reply, panic);
                return;
            }
            act.enter(Life::Idle);
            budget -= 1;
            if budget == 0 || yield_after {
                budget = TURN_BUDGET;
                crate::rt::yield_now().await;
            }
        }
        // Paused for a move: the state goes to the new shard and the task ends here (its
        // memory estimate goes with it, posted before the state leaves).
        act.mem.moved_out(&act.ctx.id);
        let actor = act
            .set_state(None)
            .expect("an activation between turns has its state");
        let Some(actor) = crate::migrate::hand_over(&act, &info, actor) else {
            return;
        };
        crate::memory::not_moved(&act.ctx.id, &act.mem);
        act.set_state(Some(actor));
        if !Box::pin(deactivate(&act)).await {
            crate::migrate::deactivated(&act);
            return;
        }
    }
}

/// Finishes a direct turn a sender handed over (`direct.rs`): polls it to its end and answers
/// its ask, if it is one. False if it panicked (the activation is then discarded).
async fn finish_direct<A: Actor>(act: &Rc<Activation<A>>, mut turn: PendingTurn) -> bool {
    let core = &act.ctx.core;
    // SAFETY: the sender stored a turn borrowing this activation's state and context, which
    // `act` keeps alive; it is cleared below.
    let run = RunTurn {
        turn: unsafe { turn.slot.turn() },
        caller: crate::turn::caller(turn.sampled, act.ctx.type_idx, &act.ctx.id.key),
    };
    let result = crate::memory::attributed(act.mem.cell(), run).await;
    if let Some(start) = turn.sampled {
        let bytes = crate::tables::sampled_memory(core, act);
        core.stats
            .turn_sampled(start, &act.ctx.id, act.ctx.type_idx, bytes);
    }
    let reply = turn.reply();
    if result.is_ok() {
        if let Some((call, finish)) = turn.ask {
            // SAFETY: the slot holds this ask's finished turn.
            unsafe { finish(&mut turn.slot, core, call) };
        }
    }
    turn.slot.clear();
    core.give_turn_slot(turn.slot);
    if let Some((origin, reply)) = turn.delivered {
        core.turn_done(origin, reply);
    }
    match result {
        Ok(()) => {
            act.enter(Life::Idle);
            true
        }
        Err(panic) => {
            turn_panicked(act, reply, panic);
            false
        }
    }
}

/// Builds the actor and runs `on_activate`; on failure, ends the activation (queued calls
/// fail with the cause) and returns false. On success the state is in place and the
/// activation `Idle`.
async fn activate<A: Actor>(act: &Rc<Activation<A>>, info: &Arc<TypeInfo<A>>) -> bool {
    let core = &act.ctx.core;
    let table = || core.table::<A>(act.ctx.type_idx);
    if crate::memory::refusing_activations() {
        // The shard is at its memory reject threshold (docs/MEMORY.md).
        act.enter(Life::Activating);
        end_activation(act, table(), None, |actor| CallError::Overloaded {
            actor,
            cause: crate::OverloadCause::Memory,
        });
        return false;
    }
    // The state goes straight into the activation (not into this task's future, which would
    // then be as large as the state for the activation's whole life).
    match build_actor(act, info).await {
        Ok(()) => {}
        Err(detail) => {
            tracing::error!(shard = core.id, actor = %act.ctx.id, %detail, "activation failed; failing queued calls");
            end_activation(act, table(), None, |actor| CallError::ActivationFailed {
                actor,
                detail: detail.clone(),
            });
            return false;
        }
    }
    act.enter(Life::Activating);
    // SAFETY: the task runs `on_activate` (`Activating`: no other turn can start).
    let actor: &mut A = unsafe { act.state_mut() };
    let on_activate = crate::memory::attributed(act.mem.cell(), actor.on_activate(&act.ctx));
    let activated = run_pooled(core, on_activate).await;
    if let Err(panic) = activated {
        tracing::error!(shard = core.id, actor = %act.ctx.id, panic = %panic, "on_activate panicked; failing queued calls");
        let state = act.set_state(None);
        end_activation(act, table(), state, |actor| CallError::ActorPanicked {
            actor,
            panic: panic.clone(),
        });
        return false;
    }
    act.enter(Life::Idle);
    true
}

/// Runs `fut` as one turn in a turn slot of the shard's pool (a lifecycle hook, a loader), so
/// that the awaiting task's future does not carry a turn's storage: `Err` carries the message
/// of a panic, caught.
async fn run_pooled<'a>(core: &Shard, fut: impl Future<Output = ()> + 'a) -> Result<(), String> {
    let mut slot = core.take_turn_slot();
    // SAFETY: the future borrows for 'a, which outlives this call; it is cleared before the
    // slot goes back (or dropped with the slot if this future is dropped mid-turn).
    unsafe { slot.turn() }.set(fut);
    let result = RunTurn {
        turn: unsafe { slot.turn() },
        caller: None,
    }
    .await;
    slot.clear();
    core.give_turn_slot(slot);
    result
}

/// A handler panicked: its caller (`reply`) gets `ActorPanicked`, queued calls
/// `ActivationAborted`, and the activation (whose state may be half-updated) is discarded.
fn turn_panicked<A: Actor>(act: &Rc<Activation<A>>, reply: ReplyTo, panic: String) {
    let core = &act.ctx.core;
    tracing::error!(shard = core.id, actor = %act.ctx.id, panic = %panic, "handler panicked; discarding the activation");
    core.stats.panics.set(core.stats.panics.get() + 1);
    fail_reply(
        core,
        reply,
        CallError::ActorPanicked {
            actor: act.ctx.id.clone(),
            panic,
        },
    );
    let state = act.set_state(None);
    end_activation(act, core.table::<A>(act.ctx.type_idx), state, |actor| {
        CallError::ActivationAborted { actor }
    });
}

/// Runs `on_deactivate` and drops the state. Returns true if mail arrived meanwhile (the
/// activation reactivates in place), false once it left its table.
async fn deactivate<A: Actor>(act: &Rc<Activation<A>>) -> bool {
    let core = &act.ctx.core;
    // Deactivation: the activation stays in the table (mail that arrives now is queued and
    // triggers a reactivation in place, so two activations of one actor never coexist).
    act.ctx.cancel_all_timers();
    act.enter(Life::Deactivating);
    // SAFETY: the task runs `on_deactivate` (`Deactivating`: no other turn can start).
    let actor: &mut A = unsafe { act.state_mut() };
    let on_deactivate = crate::memory::attributed(act.mem.cell(), actor.on_deactivate(&act.ctx));
    let deactivated = run_pooled(core, on_deactivate).await;
    if let Err(panic) = deactivated {
        tracing::error!(shard = core.id, actor = %act.ctx.id, panic = %panic, "on_deactivate panicked");
    }
    drop(act.set_state(None));
    core.stats
        .deactivations
        .set(core.stats.deactivations.get() + 1);
    act.stop_requested.set(false);
    if act.mailbox.borrow().is_empty() {
        // Nothing is queued, so nothing fails: the discard only leaves the table (and
        // cancels any timer `on_deactivate` set, which could never fire into a gone
        // activation anyway).
        end_activation(act, core.table::<A>(act.ctx.type_idx), None, |actor| {
            CallError::ActivationAborted { actor }
        });
        return false;
    }
    act.enter(Life::New);
    true
}

/// Ends an activation from its own task: the discard sequence ([`Activation::discard`]), then
/// drops the state (if one was built) and takes the activation out of its table.
fn end_activation<A: Actor>(
    act: &Rc<Activation<A>>,
    table: &TypeTable<A>,
    actor: Option<A>,
    err: impl Fn(ActorId) -> CallError,
) {
    act.discard(&act.ctx.core, err);
    drop(actor);
    table.remove(act);
}

/// Builds the state of a new activation with the type's factory or loader and puts it in
/// place; on a failed or panicking loader, returns what went wrong (the caller discards the
/// activation). Leaves the activation in `Loading` (loaded types) or `New` (plain factories).
async fn build_actor<A: Actor>(act: &Rc<Activation<A>>, info: &TypeInfo<A>) -> Result<(), String> {
    let loader = match &info.spec.factory {
        Factory::Plain(make) => {
            let actor = crate::memory::with(act.mem.cell(), || make(&act.ctx.id));
            act.set_state(Some(actor));
            return Ok(());
        }
        Factory::Loaded(loader) => loader,
    };
    let mut loaded: Option<Result<(), LoadError>> = None;
    act.enter(Life::Loading);
    let ran = {
        let slot = &mut loaded;
        let act2 = &**act;
        let ctx = &act.ctx;
        let load = async move {
            *slot = Some(loader(ctx).await.map(|actor| {
                act2.set_state(Some(actor));
            }));
        };
        run_pooled(
            &act.ctx.core,
            crate::memory::attributed(act.mem.cell(), load),
        )
        .await
    };
    match (ran, loaded) {
        (Ok(()), Some(Ok(()))) => Ok(()),
        // The whole chain: a loader's error names the thing, its sources say why.
        (Ok(()), Some(Err(e))) => Err(crate::ErrorChain(&*e).to_string()),
        (Ok(()), None) => Err("the loader did not finish".to_owned()),
        (Err(panic), _) => Err(format!("the loader panicked: {panic}")),
    }
}

// ---------------------------------------------------------------------------------------------
// What the memory walk reads of an activation (`memory.rs`).

impl<A: Actor> crate::memory::MemProbe for Activation<A> {
    fn actor_id(&self) -> &ActorId {
        &self.ctx.id
    }
    fn type_idx(&self) -> u16 {
        self.ctx.type_idx
    }
    fn ended(&self) -> bool {
        self.has_ended()
    }
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        Activation::idle_for(self, now)
    }
    fn movable(&self) -> bool {
        let spec = &self.ctx.core.table::<A>(self.ctx.type_idx).info.spec;
        spec.migration.is_some() && spec.stateless_workers.is_none()
    }
    fn serializable(&self) -> bool {
        let spec = &self.ctx.core.table::<A>(self.ctx.type_idx).info.spec;
        self.movable() && crate::migrate::moves_as_bytes(spec)
    }
    fn durable(&self) -> bool {
        let spec = &self.ctx.core.table::<A>(self.ctx.type_idx).info.spec;
        matches!(spec.factory, Factory::Loaded(_)) && spec.stateless_workers.is_none()
    }
    fn deep_bytes(&self) -> Option<u64> {
        let core = &self.ctx.core;
        let hook = core
            .table::<A>(self.ctx.type_idx)
            .info
            .spec
            .memory_size
            .as_ref()?;
        self.between_turns_state().map(|s| hook(s) as u64)
    }
    fn now(&self) -> Instant {
        self.ctx.core.now()
    }
}

#[cfg(test)]
mod tests {
    use super::Life::{self, *};

    const ALL: [Life; 8] = [
        New,
        Loading,
        Activating,
        Idle,
        Running,
        Deactivating,
        Gone,
        Moved,
    ];

    /// The transitions the activation task makes (the diagram on [`Life`]), written out edge by
    /// edge rather than derived from `allowed_from`.
    const EDGES: [(Life, Life); 14] = [
        (New, Loading),
        (New, Activating),
        (Loading, Activating),
        (Loading, Gone),
        (Activating, Idle),
        (Activating, Gone),
        (Idle, Running),
        (Running, Idle),
        (Running, Gone),
        (Idle, Deactivating),
        (Deactivating, Gone),
        (Deactivating, New),
        (New, Idle),
        (Idle, Moved),
    ];

    #[test]
    fn allowed_transitions_pass() {
        for (from, to) in EDGES {
            assert_eq!(from.step(to, &"cart/1"), to, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn every_other_transition_panics_naming_it() {
        for from in ALL {
            for to in ALL {
                if EDGES.contains(&(from, to)) {
                    continue;
                }
                let err = std::panic::catch_unwind(|| from.step(to, &"cart/1"))
                    .expect_err(&format!("{from:?} -> {to:?} must be refused"));
                let msg = err
                    .downcast_ref::<String>()
                    .expect("a formatted panic message");
                assert_eq!(
                    msg,
                    &format!(
                        "activation cart/1: lifecycle transition {from:?} -> {to:?} is not allowed"
                    )
                );
            }
        }
    }

    #[test]
    #[should_panic(
        expected = "activation cart/1: lifecycle transition Idle -> Gone is not allowed"
    )]
    fn idle_cannot_be_discarded_by_its_own_task() {
        Idle.step(Gone, &"cart/1");
    }

    #[test]
    #[should_panic(expected = "lifecycle transition Gone -> New is not allowed")]
    fn gone_is_final() {
        Gone.step(New, &"cart/1");
    }

    // ---- end to end: mail that arrives during `on_deactivate` rebuilds the activation in place

    use crate::{
        block_on, Actor, Context, EngineBuilder, EngineConfig, Handler, Message, ShardSpec,
    };
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[derive(Default)]
    struct Counts {
        activations: AtomicU64,
        deactivations: AtomicU64,
    }

    /// Asks to be deactivated after `Push(1)`; its first `on_deactivate` tells itself
    /// `Push(2)`, so the mailbox is not empty when `on_deactivate` ends.
    struct Phoenix {
        seen: Vec<u64>,
        counts: Arc<Counts>,
    }
    impl Actor for Phoenix {
        const TYPE_NAME: &'static str = "phoenix";
        async fn on_activate(&mut self, _: &Context<Self>) {
            self.counts.activations.fetch_add(1, Ordering::SeqCst);
        }
        async fn on_deactivate(&mut self, ctx: &Context<Self>) {
            if self.counts.deactivations.fetch_add(1, Ordering::SeqCst) == 0 {
                ctx.self_ref().tell(Push(2)).await.expect("tell to self");
            }
        }
    }
    struct Push(u64);
    impl Message for Push {
        type Reply = ();
    }
    impl Handler<Push> for Phoenix {
        async fn handle(&mut self, m: Push, ctx: &Context<Self>) {
            self.seen.push(m.0);
            if m.0 == 1 {
                ctx.deactivate_when_idle();
            }
        }
    }
    struct Seen;
    impl Message for Seen {
        type Reply = Vec<u64>;
    }
    impl Handler<Seen> for Phoenix {
        async fn handle(&mut self, _: Seen, _: &Context<Self>) -> Vec<u64> {
            self.seen.clone()
        }
    }

    #[test]
    fn mail_during_deactivation_reactivates_in_place() {
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let engine = EngineBuilder::new(EngineConfig {
            shards: ShardSpec::Count(1),
            ask_timeout: Duration::from_secs(20),
            ..EngineConfig::default()
        })
        .register(crate::ActorType::new(move |_| Phoenix {
            seen: Vec::new(),
            counts: c.clone(),
        }))
        .start()
        .expect("engine starts");
        let r = engine.actor_ref::<Phoenix>(7u64);
        block_on(r.tell(Push(1))).expect("tell");
        // Polls the counters (the rebuild happens on the shard thread).
        let deadline = Instant::now() + Duration::from_secs(10);
        while counts.activations.load(Ordering::SeqCst) < 2 {
            assert!(
                Instant::now() < deadline,
                "the mail queued during on_deactivate never reactivated the actor"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // The rebuilt activation has fresh state and handled the mail queued meanwhile.
        assert_eq!(block_on(r.ask(Seen)).expect("ask"), vec![2]);
        assert_eq!(counts.deactivations.load(Ordering::SeqCst), 1);
        assert_eq!(counts.activations.load(Ordering::SeqCst), 2);
        assert_eq!(engine.shutdown(), Default::default());
        assert_eq!(counts.deactivations.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn busy_exactly_while_a_turn_runs() {
        let busy: Vec<Life> = ALL.into_iter().filter(|l| l.is_busy()).collect();
        assert_eq!(busy, [Loading, Activating, Running, Deactivating]);
    }
}

#[cfg(test)]
mod size_tests {
    /// An activation's own size is what a node with a million actors pays per actor (with its
    /// task, table entry and the allocator's rounding): rarely used parts stay in `ctx.rare`.
    #[test]
    fn a_small_actors_activation_fits_in_192_bytes_with_its_rc() {
        struct Small(#[allow(dead_code)] u64);
        impl crate::Actor for Small {
            const TYPE_NAME: &'static str = "small";
        }
        let own = std::mem::size_of::<super::Activation<Small>>();
        // `Rc`'s two counts come on top; 192 is one of the allocator's size classes.
        assert!(own + 16 <= 192, "Activation<Small> is {own} bytes");
    }
}
