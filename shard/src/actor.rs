//! The programming model: [`Actor`], [`Message`], [`Handler`] and the per-activation
//! [`Context`].

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

/// What a handler can reach besides its state: the actor's identity and shard, other actors,
/// timers and the shard's clock. One `Context` per activation.
pub struct Context<A: Actor> {
    pub(crate) id: ActorId,
    pub(crate) core: Rc<Shard>,
    pub(crate) type_idx: u16,
    pub(crate) this: Weak<Activation<A>>,
    pub(crate) timers: std::cell::RefCell<Vec<TimerId>>,
    pub(crate) extensions: std::cell::RefCell<Vec<(std::any::TypeId, Box<dyn std::any::Any>)>>,
}

impl<A: Actor> Context<A> {
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

    /// Waits for `d` without blocking the shard. The activation handles no other message
    /// meanwhile (the turn is still running).
    pub fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        crate::rt::sleep(d)
    }

    /// Delivers `msg` to this activation once, after `delay`, as an ordinary turn (reply
    /// discarded). Timers belong to the activation: deactivation cancels them, and a tick does
    /// not keep an idle activation alive.
    pub fn set_timer<M>(&self, delay: Duration, msg: M) -> TimerId
    where
        A: crate::Handler<M>,
        M: Message,
    {
        let mut msg = Some(msg);
        self.add_timer(delay, None, move || msg.take())
    }

    /// Delivers a clone of `msg` every `period` (first after one period) until cancelled or the
    /// activation is deactivated. A slow turn delays the next tick; ticks do not pile up.
    pub fn set_interval<M>(&self, period: Duration, msg: M) -> TimerId
    where
        A: crate::Handler<M>,
        M: Message + Clone,
    {
        self.add_timer(period, Some(period), move || Some(msg.clone()))
    }

    /// Cancels a timer of this activation; returns whether it was still pending.
    pub fn cancel_timer(&self, id: TimerId) -> bool {
        self.timers.borrow_mut().retain(|t| *t != id);
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
        let mut exts = self.extensions.borrow_mut();
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

    fn add_timer<M>(
        &self,
        first: Duration,
        period: Option<Duration>,
        mut next: impl FnMut() -> Option<M> + 'static,
    ) -> TimerId
    where
        A: crate::Handler<M>,
        M: Message,
    {
        let this = self.this.clone();
        let key = self.id.key.clone();
        let type_idx = self.type_idx;
        // Set in a traced turn, every tick runs as a child of that turn.
        let trace = crate::trace::current();
        let fire = Box::new(move || {
            let Some(act) = this.upgrade() else {
                return false;
            };
            if act.is_gone() {
                return false;
            }
            let Some(msg) = next() else {
                return false;
            };
            let tick = crate::trace::scoped(trace, || {
                Deliver::<A, M>::new(type_idx, key.clone(), msg, ReplyTo::None, Origin::Timer)
            });
            act.push(Box::new(tick));
            true
        });
        let due = self.core.now() + first;
        let id = self.core.timers.borrow_mut().add(due, period, fire);
        self.timers.borrow_mut().push(id);
        self.core.poke();
        id
    }

    /// Cancels every timer of this activation (at deactivation).
    pub(crate) fn cancel_all_timers(&self) {
        let ids = std::mem::take(&mut *self.timers.borrow_mut());
        let mut timers = self.core.timers.borrow_mut();
        for id in ids {
            timers.cancel(id);
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
