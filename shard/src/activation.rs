//! Activations: an actor's mailbox, its lifecycle, and the task that runs its turns one at a
//! time. The per-type tables that hold them are in `tables`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use quark_placement::{ActorId, ActorKey};

use crate::actor::{Actor, Context};
use crate::envelope::{fail_reply, MailItem, Origin, ReplyTo};
use crate::error::CallError;
use crate::shard::Shard;
use crate::turn::RunTurn;

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
}

impl<A: Actor> ActorType<A> {
    /// An actor type whose activations are built by `factory` (called on the owning shard's
    /// thread, once per activation).
    pub fn new(factory: impl Fn(&ActorId) -> A + Send + Sync + 'static) -> Self {
        ActorType {
            factory: Factory::Plain(Box::new(factory)),
            idle_timeout: None,
            stateless_workers: None,
            migration: None,
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
    act.push(item.into_item());
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
        if let Some(act) = table.actors.borrow().get(item.key()) {
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

impl Life {
    /// The states from which `self` may be entered (shutdown's discard, allowed from any
    /// state, does not go through this table).
    fn allowed_from(self) -> &'static [Life] {
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
    fn step(self, to: Life, who: &dyn std::fmt::Display) -> Life {
        assert!(
            to.allowed_from().contains(&self),
            "activation {who}: lifecycle transition {self:?} -> {to:?} is not allowed"
        );
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
    pub(crate) last_active: Cell<Instant>,
    pub(crate) space_waiters: RefCell<VecDeque<Waker>>,
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
            ctx: Context {
                id,
                core: core.clone(),
                type_idx,
                this: this.clone(),
                timers: RefCell::new(Vec::new()),
                extensions: RefCell::new(Vec::new()),
            },
            mailbox: RefCell::new(VecDeque::new()),
            waker: RefCell::new(None),
            waiting: Cell::new(false),
            life: Cell::new(Life::New),
            stop_requested: Cell::new(false),
            last_active: Cell::new(core.now()),
            space_waiters: RefCell::new(VecDeque::new()),
        });
        core.sched.spawn(run_activation(act.clone(), info, arrived));
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

    pub(crate) fn queue_len(&self) -> usize {
        self.mailbox.borrow().len()
    }

    pub(crate) fn is_idle(&self) -> bool {
        !self.life.get().is_busy() && self.mailbox.borrow().is_empty()
    }

    /// How long since its last message turn began, if it is idle now.
    pub(crate) fn idle_for(&self, now: Instant) -> Option<Duration> {
        self.is_idle()
            .then(|| now.saturating_duration_since(self.last_active.get()))
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.life.get() == Life::Gone
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
        if self.waiting.replace(false) {
            if let Some(w) = self.waker.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    /// Wakes the senders waiting for room once the mailbox is down to half its capacity (not
    /// at every free slot: a sender then refills in a batch instead of waking once per
    /// message).
    #[inline]
    pub(crate) fn wake_space_waiters(&self, cap: usize) {
        // Nobody waits, the common case, first: one look on every message taken.
        if self.space_waiters.borrow().is_empty() || self.mailbox.borrow().len() > cap / 2 {
            return;
        }
        let mut waiters = self.space_waiters.borrow_mut();
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
        for w in self.space_waiters.borrow_mut().drain(..) {
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
        if !act.mailbox.borrow().is_empty() || act.stop_requested.get() {
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
    mut arrived: Option<A>,
) {
    // The mailbox loop stays in this function (not a nested async fn): it is on every
    // message's path, and an extra future layer costs instructions per turn.
    let core = act.ctx.core.clone();
    loop {
        let built = match arrived.take() {
            Some(actor) => {
                act.enter(Life::Idle);
                Some(actor)
            }
            None => activate(&act, &info).await,
        };
        let Some(mut actor) = built else {
            return;
        };
        let mailbox_cap = core.node.config.mailbox_capacity;
        let mut budget = TURN_BUDGET;
        let mut slice_start = core.now();
        loop {
            let item = act.mailbox.borrow_mut().pop_front();
            let Some(item) = item else {
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
                act.last_active.set(core.now());
            }
            act.enter(Life::Running);
            let result = {
                let mut turn = std::pin::pin!(crate::turn::Turn::empty());
                item.start(&mut actor, &act.ctx, turn.as_mut());
                RunTurn {
                    turn: turn.as_mut(),
                }
                .await
            };
            core.turn_done(origin, reply);
            if let Err(panic) = result {
                turn_panicked(&act, actor, reply, panic);
                return;
            }
            act.enter(Life::Idle);
            budget -= 1;
            if budget == 0 || yield_after {
                budget = TURN_BUDGET;
                crate::rt::yield_now().await;
            }
        }
        // Paused for a move: the state goes to the new shard and the task ends here.
        let Some(actor) = crate::migrate::hand_over(&act, &info, actor) else {
            return;
        };
        if !deactivate(&act, actor).await {
            return;
        }
    }
}

/// Builds the actor and runs `on_activate`; on failure, ends the activation (queued calls
/// fail with the cause) and returns `None`.
async fn activate<A: Actor>(act: &Rc<Activation<A>>, info: &Arc<TypeInfo<A>>) -> Option<A> {
    let core = &act.ctx.core;
    let table = || core.table::<A>(act.ctx.type_idx);
    let mut actor = match build_actor(act, info).await {
        Ok(actor) => actor,
        Err(detail) => {
            tracing::error!(shard = core.id, actor = %act.ctx.id, %detail, "activation failed; failing queued calls");
            end_activation(act, table(), None, |actor| CallError::ActivationFailed {
                actor,
                detail: detail.clone(),
            });
            return None;
        }
    };
    act.enter(Life::Activating);
    let activated = crate::turn::run_turn(actor.on_activate(&act.ctx)).await;
    if let Err(panic) = activated {
        tracing::error!(shard = core.id, actor = %act.ctx.id, panic = %panic, "on_activate panicked; failing queued calls");
        end_activation(act, table(), Some(actor), |actor| {
            CallError::ActorPanicked {
                actor,
                panic: panic.clone(),
            }
        });
        return None;
    }
    act.enter(Life::Idle);
    Some(actor)
}

/// A handler panicked: its caller gets `ActorPanicked`, queued calls `ActivationAborted`, and
/// the activation (whose state may be half-updated) is discarded.
fn turn_panicked<A: Actor>(act: &Rc<Activation<A>>, actor: A, reply: ReplyTo, panic: String) {
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
    end_activation(
        act,
        core.table::<A>(act.ctx.type_idx),
        Some(actor),
        |actor| CallError::ActivationAborted { actor },
    );
}

/// Runs `on_deactivate` and drops the state. Returns true if mail arrived meanwhile (the
/// activation reactivates in place), false once it left its table.
async fn deactivate<A: Actor>(act: &Rc<Activation<A>>, mut actor: A) -> bool {
    let core = &act.ctx.core;
    // Deactivation: the activation stays in the table (mail that arrives now is queued and
    // triggers a reactivation in place, so two activations of one actor never coexist).
    act.ctx.cancel_all_timers();
    act.enter(Life::Deactivating);
    let deactivated = crate::turn::run_turn(actor.on_deactivate(&act.ctx)).await;
    if let Err(panic) = deactivated {
        tracing::error!(shard = core.id, actor = %act.ctx.id, panic = %panic, "on_deactivate panicked");
    }
    drop(actor);
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

/// Builds the state of a new activation with the type's factory or loader; on a failed or
/// panicking loader, returns what went wrong (the caller discards the activation). Leaves the
/// activation in `Loading` (loaded types) or `New` (plain factories).
async fn build_actor<A: Actor>(act: &Rc<Activation<A>>, info: &TypeInfo<A>) -> Result<A, String> {
    let loader = match &info.spec.factory {
        Factory::Plain(make) => return Ok(make(&act.ctx.id)),
        Factory::Loaded(loader) => loader,
    };
    let mut loaded: Option<Result<A, LoadError>> = None;
    act.enter(Life::Loading);
    let ran = {
        let slot = &mut loaded;
        let ctx = &act.ctx;
        crate::turn::run_turn(async move {
            *slot = Some(loader(ctx).await);
        })
        .await
    };
    match (ran, loaded) {
        (Ok(()), Some(Ok(actor))) => Ok(actor),
        // The whole chain: a loader's error names the thing, its sources say why.
        (Ok(()), Some(Err(e))) => Err(crate::ErrorChain(&*e).to_string()),
        (Ok(()), None) => Err("the loader did not finish".to_owned()),
        (Err(panic), _) => Err(format!("the loader panicked: {panic}")),
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
