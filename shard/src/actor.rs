//! The programming model: [`Actor`], [`Message`], [`Handler`] and the per-activation
//! [`Context`].

use std::cell::RefCell;
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_placement::{ActorId, ActorKey, ShardId};

use crate::activation::Activation;
use crate::actor_ref::ActorRef;
use crate::envelope::{Deliver, Origin, ReplyTo};
use crate::shard::Shard;
use crate::timers::TimerId;

/// A message an actor can handle, and the type of its reply.
///
/// Messages are `Send`: an [`ActorRef`] may be used from any shard or thread, and the message
/// travels to the owner's shard.
pub trait Message: Send + 'static {
    /// The handler's reply (`()` for fire-and-forget messages).
    type Reply: Send + 'static;
}

/// A virtual actor type.
///
/// An actor exists logically forever: it is *activated* (built by its registered factory, then
/// [`Actor::on_activate`]) on its owning shard when a message arrives, handles one message at a
/// time (a *turn*, including the handler's awaits), and is *deactivated*
/// ([`Actor::on_deactivate`], then dropped) after its type's idle timeout or at node shutdown.
/// The state need not be `Send`: an activation never leaves its shard thread.
pub trait Actor: Sized + 'static {
    /// The stable name this type is registered and addressed under (stored in logs, sent over
    /// the wire): never rename a type that has data.
    const TYPE_NAME: &'static str;

    /// Runs once per activation, before its first message.
    fn on_activate(&mut self, ctx: &Context<Self>) -> impl Future<Output = ()> {
        let _ = ctx;
        async {}
    }

    /// Runs once when the activation is deactivated (idle timeout, request, or node shutdown);
    /// not after a handler panicked (the state may be inconsistent then).
    fn on_deactivate(&mut self, ctx: &Context<Self>) -> impl Future<Output = ()> {
        let _ = ctx;
        async {}
    }
}

/// Handling of message type `M` by actor `Self`: one turn per message.
///
/// ```
/// use quark_shard::{Actor, Context, Handler, Message};
/// struct Counter { n: u64 }
/// impl Actor for Counter { const TYPE_NAME: &'static str = "counter"; }
/// struct Add(u64);
/// impl Message for Add { type Reply = u64; }
/// impl Handler<Add> for Counter {
///     async fn handle(&mut self, msg: Add, _ctx: &Context<Self>) -> u64 {
///         self.n += msg.0;
///         self.n
///     }
/// }
/// ```
pub trait Handler<M: Message>: Actor {
    /// Handles one message. The activation handles nothing else until this future completes
    /// (turns are not reentrant). A panic here fails this call with
    /// [`CallError::ActorPanicked`](crate::CallError::ActorPanicked) and discards the activation.
    fn handle(&mut self, msg: M, ctx: &Context<Self>) -> impl Future<Output = M::Reply>;
}

/// A timer of an activation: its id on the shard, and its export to another shard (`None` once
/// a one-shot has fired: its message is gone).
pub(crate) struct ActTimer<A: Actor> {
    id: TimerId,
    export: Export<A>,
}

/// With no registry: the timer as a [`Rearm`] (another shard of the node). With the node's
/// registry: the timer's wire form (another node, `migrate::timers`).
type Export<A> = Box<dyn FnMut(Option<&crate::net::Registry>) -> Option<Carry<A>>>;

/// A timer taken off its activation for a move.
pub(crate) enum Carry<A: Actor> {
    /// To another shard of the node.
    Rearm(Rearm<A>),
    /// To another node: its period and its message's wire name and bytes, or the message's
    /// Rust type name if it has no wire codec (the timer cannot cross nodes).
    Wire(
        Option<Duration>,
        Result<(&'static str, Vec<u8>), &'static str>,
    ),
}

/// A timer carried to another shard: arms it there on the activation's new context, first
/// due after the given time.
pub(crate) type Rearm<A> = Box<dyn FnOnce(&Context<A>, Duration) + Send>;

/// An activation's live timers on their way to another shard: each with the time it had left.
pub(crate) type CarriedTimers<A> = Vec<(Duration, Rearm<A>)>;

/// A one-shot timer's message: taken at the firing.
fn take_msg<M>(cell: &RefCell<Option<M>>) -> Option<M> {
    cell.borrow_mut().take()
}

/// An interval timer's message: a clone at each firing.
fn clone_msg<M: Clone>(cell: &RefCell<Option<M>>) -> Option<M> {
    cell.borrow().clone()
}

/// What a handler can reach besides its state: the actor's identity and shard, other actors,
/// timers and the shard's clock. One `Context` per activation.
pub struct Context<A: Actor> {
    pub(crate) id: ActorId,
    pub(crate) core: Rc<Shard>,
    pub(crate) type_idx: u16,
    pub(crate) this: Weak<Activation<A>>,
    /// What few activations use, allocated at first use (see [`Rare`]).
    pub(crate) rare: std::cell::OnceCell<Box<Rare<A>>>,
}

/// The parts of an activation that most never use: its timers, its extensions, senders
/// waiting for room in its mailbox, and a direct turn handed over to its task. One box,
/// allocated at the first use, so an activation without them carries one pointer for all
/// four (an activation's size is what a node with a million of them pays per actor).
pub(crate) struct Rare<A: Actor> {
    pub(crate) timers: RefCell<Vec<ActTimer<A>>>,
    pub(crate) extensions: RefCell<Vec<(std::any::TypeId, Box<dyn std::any::Any>)>>,
    pub(crate) space_waiters: RefCell<std::collections::VecDeque<std::task::Waker>>,
    pub(crate) pending: RefCell<Option<crate::activation::PendingTurn>>,
}

impl<A: Actor> Default for Rare<A> {
    fn default() -> Self {
        Rare {
            timers: RefCell::new(Vec::new()),
            extensions: RefCell::new(Vec::new()),
            space_waiters: RefCell::new(std::collections::VecDeque::new()),
            pending: RefCell::new(None),
        }
    }
}

impl<A: Actor> Context<A> {
    /// The rarely used parts, allocated now if they were not.
    pub(crate) fn rare(&self) -> &Rare<A> {
        self.rare.get_or_init(Box::default)
    }

    /// This actor's id.
    pub fn id(&self) -> &ActorId {
        &self.id
    }

    /// The shard this activation runs on.
    pub fn shard(&self) -> ShardId {
        self.core.id
    }

    /// The trace context of the running turn: `Some` when the message that started it
    /// carried one (see [`TraceContext`](crate::TraceContext)), with this turn's own span id.
    /// Messages this turn sends carry it, so their turns become children of this one; pass it
    /// on (as a `traceparent`, its `Display` form) to systems outside Quark.
    pub fn trace(&self) -> Option<crate::TraceContext> {
        crate::trace::current()
    }

    /// The shard's clock (read once per pump iteration; the time all timers and deadlines of
    /// this shard use).
    pub fn now(&self) -> Instant {
        self.core.now()
    }

    /// A reference to another actor of this node.
    pub fn actor_ref<B: Actor>(&self, key: impl Into<ActorKey>) -> ActorRef<B> {
        ActorRef::new(Arc::clone(&self.core.node), key.into())
    }

    /// A reference to this actor.
    pub fn self_ref(&self) -> ActorRef<A> {
        ActorRef::new(Arc::clone(&self.core.node), self.id.key.clone())
    }

    /// Waits for `d` without blocking the shard, to the microsecond (the shard's sleepers,
    /// never ending early; under a `ManualClock`, the executor's millisecond timer). The
    /// activation handles no other message meanwhile (the turn is still running).
    pub fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        crate::sleep::sleep(d)
    }

    /// Delivers `msg` to this activation once, after `delay`, as an ordinary turn (reply
    /// discarded). Timers belong to the activation: deactivation cancels them, and a tick does
    /// not keep an idle activation alive. A move to another shard of the node carries them
    /// (same id, the time left kept); a move to another node carries them if `M` is a wire
    /// message both nodes registered for the actor type (`EngineBuilder::remote`), else drops
    /// them with a `warn` line (docs/MIGRATION.md, "Timers").
    pub fn set_timer<M>(&self, delay: Duration, msg: M) -> TimerId
    where
        A: crate::Handler<M>,
        M: Message,
    {
        self.add_timer(
            delay,
            None,
            msg,
            take_msg::<M>,
            crate::trace::current(),
            None,
        )
    }

    /// Delivers a clone of `msg` every `period` (first after one period) until cancelled or the
    /// activation is deactivated. A slow turn delays the next tick; ticks do not pile up.
    pub fn set_interval<M>(&self, period: Duration, msg: M) -> TimerId
    where
        A: crate::Handler<M>,
        M: Message + Clone,
    {
        self.add_timer(
            period,
            Some(period),
            msg,
            clone_msg::<M>,
            crate::trace::current(),
            None,
        )
    }

    /// Cancels a timer of this activation; returns whether it was still pending.
    /// Only this activation's own timers can be cancelled (another id is ignored), and an id
    /// stays valid when the actor moves to another shard of its node.
    pub fn cancel_timer(&self, id: TimerId) -> bool {
        let Some(rare) = self.rare.get() else {
            return false;
        };
        let mut list = rare.timers.borrow_mut();
        let Some(i) = list.iter().position(|t| t.id == id) else {
            return false;
        };
        list.swap_remove(i);
        self.core.timers.borrow_mut().cancel(id)
    }

    /// The shard's durable log, if the node has a data directory (`[log]` in the config). Every
    /// actor of this shard appends to the same log; see `docs/PERSIST.md`.
    pub fn log(&self) -> Option<&crate::ShardLog> {
        self.core.log.as_ref()
    }

    /// A `Send` handle to this node's shards (to run work on another shard).
    pub fn engine(&self) -> crate::EngineHandle {
        crate::EngineHandle {
            shared: Arc::clone(&self.core.node),
        }
    }

    /// Runs `f` on this activation's value of type `T` (created with `T::default()` on first
    /// use): per-activation storage for runtime features such as the journal's version
    /// counter. Dropped with the activation. `f` must not call `extension` again (that would
    /// panic: the storage is borrowed).
    pub fn extension<T: Default + 'static, R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let tid = std::any::TypeId::of::<T>();
        let mut exts = self.rare().extensions.borrow_mut();
        let i = match exts.iter().position(|(t, _)| *t == tid) {
            Some(i) => i,
            None => {
                exts.push((tid, Box::new(T::default())));
                exts.len() - 1
            }
        };
        let value = exts[i]
            .1
            .downcast_mut::<T>()
            .expect("invariant: the slot of TypeId T holds a T");
        f(value)
    }

    /// Asks for this activation to be deactivated as soon as its mailbox is empty.
    pub fn deactivate_when_idle(&self) {
        if let Some(act) = self.this.upgrade() {
            act.request_deactivation();
        }
    }

    /// Arms a timer delivering `next(&msg)` first after `first`, then every `period` (if
    /// given), as a child of `trace`. The message is kept in a cell shared with the timer's
    /// export (`take_timers`), so that a move can carry it to another shard.
    fn add_timer<M>(
        &self,
        first: Duration,
        period: Option<Duration>,
        msg: M,
        next: fn(&RefCell<Option<M>>) -> Option<M>,
        trace: Option<crate::TraceContext>,
        moved: Option<TimerId>,
    ) -> TimerId
    where
        A: crate::Handler<M>,
        M: Message,
    {
        let this = self.this.clone();
        let key = self.id.key.clone();
        let type_idx = self.type_idx;
        let cell = Rc::new(RefCell::new(Some(msg)));
        let fired = Rc::clone(&cell);
        let fire = Box::new(move || {
            let Some(act) = this.upgrade() else {
                return false;
            };
            if act.is_gone() {
                return false;
            }
            let Some(msg) = next(&fired) else {
                return false;
            };
            // Set in a traced turn, every tick runs as a child of that turn.
            let tick = crate::trace::scoped(trace, || {
                Deliver::<A, M>::new(type_idx, key.clone(), msg, ReplyTo::None, Origin::Timer)
            });
            act.push(Box::new(tick));
            true
        });
        let due = self.core.now() + first;
        let id = match moved {
            None => self.core.timers.borrow_mut().add(due, period, fire),
            Some(id) => {
                self.core.timers.borrow_mut().insert(id, due, period, fire);
                id
            }
        };
        let export: Export<A> = Box::new(move |wire| {
            if let Some(reg) = wire {
                let bytes = reg.timers.bytes(cell.borrow().as_ref()?);
                return Some(Carry::Wire(period, bytes));
            }
            let msg = cell.borrow_mut().take()?;
            let rearm: Rearm<A> = Box::new(move |ctx: &Context<A>, first: Duration| {
                ctx.add_timer(first, period, msg, next, trace, Some(id));
            });
            Some(Carry::Rearm(rearm))
        });
        let mut list = self.rare().timers.borrow_mut();
        list.push(ActTimer { id, export });
        // Fired one-shots leave their entry here: prune them now and then, so an actor that
        // sets a timer in every turn keeps a list as long as its live timers (amortised O(1)).
        if list.len() >= 16 && list.len().is_power_of_two() {
            let timers = self.core.timers.borrow();
            list.retain(|t| timers.due(t.id).is_some());
        }
        drop(list);
        self.core.poke();
        id
    }

    /// Cancels every timer of this activation (at deactivation).
    pub(crate) fn cancel_all_timers(&self) {
        let Some(rare) = self.rare.get() else { return };
        let list = std::mem::take(&mut *rare.timers.borrow_mut());
        let mut timers = self.core.timers.borrow_mut();
        for t in list {
            timers.cancel(t.id);
        }
    }

    /// Cancels every timer of this activation and returns the live ones in a form that can
    /// move to another shard (a move between shards, `migrate`): each with the time left
    /// until it is next due, and how to arm it again there ([`Context::rearm_timers`]).
    pub(crate) fn take_timers(&self) -> CarriedTimers<A> {
        let Some(rare) = self.rare.get() else {
            return Vec::new();
        };
        let list = std::mem::take(&mut *rare.timers.borrow_mut());
        let now = self.core.now();
        let mut timers = self.core.timers.borrow_mut();
        list.into_iter()
            .filter_map(|mut t| {
                let due = timers.due(t.id)?;
                timers.cancel(t.id);
                let Carry::Rearm(rearm) = (t.export)(None)? else {
                    unreachable!("a timer exported without a registry is a Rearm")
                };
                Some((due.saturating_duration_since(now), rearm))
            })
            .collect()
    }

    /// Cancels every timer of this activation and returns the live ones in their wire form
    /// (a move to another node, `migrate::timers`): each with the time left until it is next
    /// due, its period, and its message's wire name and bytes (or, for a message type without
    /// a wire codec, its Rust type name).
    pub(crate) fn take_wire_timers(&self) -> Vec<(Duration, Carry<A>)> {
        let Some(rare) = self.rare.get() else {
            return Vec::new();
        };
        let list = std::mem::take(&mut *rare.timers.borrow_mut());
        let now = self.core.now();
        let reg = &self.core.node.registry;
        let mut timers = self.core.timers.borrow_mut();
        list.into_iter()
            .filter_map(|mut t| {
                let due = timers.due(t.id)?;
                timers.cancel(t.id);
                let carry = (t.export)(Some(reg))?;
                Some((due.saturating_duration_since(now), carry))
            })
            .collect()
    }

    /// Arms a timer that arrived from another node (`migrate::timers`): `msg` first after
    /// `first`, then every `period` if given (a clone each time), under a new id.
    pub(crate) fn arm_carried<M>(&self, first: Duration, period: Option<Duration>, msg: M)
    where
        A: crate::Handler<M>,
        M: Message + Clone,
    {
        let next = if period.is_some() {
            clone_msg::<M>
        } else {
            take_msg::<M>
        };
        self.add_timer(first, period, msg, next, None, None);
    }

    /// Arms timers carried from another shard (see [`Context::take_timers`]); each keeps its
    /// message, period, trace and the time it had left.
    pub(crate) fn rearm_timers(&self, carried: CarriedTimers<A>) {
        for (left, rearm) in carried {
            rearm(self, left);
        }
    }
}

/// A function to run inside an actor's turn, sent as a message (`actor_ref.ask(Invoke::new(..))`).
///
/// Every actor type handles it (a blanket implementation), so runtime features can act on an
/// activation's state through its mailbox, in order with its other messages.
pub struct Invoke<A: Actor, R> {
    f: InvokeFn<A, R>,
}

type InvokeFn<A, R> =
    Box<dyn for<'a> FnOnce(&'a mut A, &'a Context<A>) -> InvokeFuture<'a, R> + Send>;

/// The future an [`Invoke`] function returns.
pub type InvokeFuture<'a, R> = std::pin::Pin<Box<dyn Future<Output = R> + 'a>>;

impl<A: Actor, R> Invoke<A, R> {
    /// Wraps `f`; it runs as one turn of the target activation.
    pub fn new(
        f: impl for<'a> FnOnce(&'a mut A, &'a Context<A>) -> InvokeFuture<'a, R> + Send + 'static,
    ) -> Self {
        Invoke { f: Box::new(f) }
    }
}

impl<A: Actor, R: Send + 'static> Message for Invoke<A, R> {
    type Reply = R;
}

impl<A: Actor, R: Send + 'static> Handler<Invoke<A, R>> for A {
    async fn handle(&mut self, msg: Invoke<A, R>, ctx: &Context<Self>) -> R {
        (msg.f)(self, ctx).await
    }
}
