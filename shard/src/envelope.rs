//! Envelopes: what travels through mailboxes, rings and the external injection queue.
//!
//! A message to an actor is one allocation, [`Deliver`], from the sender to the handler: the
//! same box goes through the ring (as a [`CrossMsg`]) and into the mailbox (as a
//! [`MailItem`]); the handler's turn takes the message out of it. For an ask, the same box
//! then carries the reply back and the caller's shard stores it in its call table until the
//! caller takes the value: one allocation per call, freed by the thread that made it.

use std::any::Any;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::{Duration, Instant};

use quark_placement::{ActorId, ActorKey, ShardId};

use crate::actor::{Actor, Context, Handler, Message};
use crate::calls::{CallId, CallOutcome, Forward, Waiter};
use crate::error::CallError;
use crate::shard::Shard;
use crate::trace::TraceContext;
use crate::turn::Turn;

/// Where a turn's reply goes. `Copy`, so the activation keeps a copy to fail the call if the
/// turn panics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplyTo {
    /// A `tell`: no reply.
    None,
    /// A call registered in this shard's call table.
    Local(CallId),
    /// A call registered in another shard's call table.
    Shard(ShardId, CallId),
}

/// Who sent a message, for flow control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A task or actor of this shard (bounded by the mailbox capacity).
    Local,
    /// Another shard of this node (bounded by that shard's credits for us).
    Shard(ShardId),
    /// A thread outside the node's shards (bounded by the external in-flight count).
    External,
    /// A timer of the activation itself (does not count as activity).
    Timer,
}

/// A message that crosses to another shard (through a ring or the injection queue), by the
/// service of the receiving shard it is for (`Shard::receive` hands it over).
pub(crate) enum CrossMsg {
    /// A tell or ask for an actor of the receiving shard: handed to the actor host.
    Request(Box<dyn Request>),
    /// The reply to a call of the receiving shard: completes the call, returns a credit.
    Reply(Box<dyn ReplyMsg>),
    /// A call of the receiving shard failed (`err`), or expired before its turn (`None`).
    Fail {
        call: CallId,
        from: ShardId,
        err: Option<Box<CallError>>,
    },
    /// Credits for `count` tells that shard `from` finished handling.
    Credit { from: ShardId, count: u32 },
    /// A closure run on the receiving shard (spawning tasks, control messages).
    Run(OnShard),
}

impl CrossMsg {
    /// A closure to run on the receiving shard.
    pub(crate) fn run_on(f: impl FnOnce(&Rc<Shard>) + Send + 'static) -> Self {
        CrossMsg::Run(Box::new(f))
    }
}

/// A request for an actor, handed to the receiving shard's actor host.
pub(crate) trait Request: Send {
    fn deliver(self: Box<Self>, shard: &Rc<Shard>);
}

/// A reply on its way back to the calling shard: the handled message's own box.
pub(crate) trait ReplyMsg: Send {
    /// The call it answers (in the receiving shard's call table).
    fn call(&self) -> CallId;
    /// The shard that handled the call (its credit comes back with the reply).
    fn from(&self) -> ShardId;
    /// The box, for the call table (downcast by the caller, who knows its type).
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// A message in an activation's mailbox.
pub(crate) trait MailItem<A: Actor>: Send {
    fn reply_to(&self) -> ReplyTo;
    fn origin(&self) -> Origin;
    /// For an ask: the moment its caller stops waiting (absolute, set when the call was made).
    /// A turn is not started for an ask whose deadline has passed.
    fn deadline(&self) -> Option<Instant>;
    /// Starts the turn: moves the message into the handler's future, stored in `turn`.
    fn start<'a>(
        self: Box<Self>,
        actor: &'a mut A,
        ctx: &'a Context<A>,
        turn: std::pin::Pin<&mut Turn<'a>>,
    );
    /// Runs the turn as a direct turn of `act` (`direct::run_delivered`: the caller entered
    /// `Running`): its first poll, typed (`direct::first_poll_typed`), in `slot` (empty);
    /// the slot is empty again if the turn finished, and holds the turn if it awaits.
    fn run_first(
        self: Box<Self>,
        core: &Shard,
        act: &crate::activation::Activation<A>,
        slot: &mut crate::turn::TurnSlot,
        sampled: Option<Instant>,
    ) -> std::task::Poll<Result<(), String>>;
}

/// The reply channel of a caller outside the node's shards.
pub(crate) struct External {
    pub(crate) forward: Box<dyn Forward + Send>,
    /// When the caller stops waiting (from the moment it called, not from admission).
    pub(crate) deadline: Instant,
}

/// A message for actor `(A, key)` with its reply address, and, once handled, its reply.
///
/// For an `ask` the same box makes the round trip: the caller allocates it, the callee takes
/// the message out, writes the reply into it and sends it back (through the ring, or straight
/// into the call table for a local call), and the caller frees it. One allocation per call, and
/// it is freed by the thread that allocated it (no cross-thread free).
pub(crate) struct Deliver<A, M: Message> {
    pub(crate) type_idx: u16,
    pub(crate) key: ActorKey,
    msg: Option<M>,
    pub(crate) reply: ReplyTo,
    pub(crate) origin: Origin,
    /// Boxed: only a caller outside the node has one, and inline it would make every
    /// envelope 24 bytes larger (see `trace`).
    pub(crate) external: Option<Box<External>>,
    /// An ask's deadline (absolute; `None` for a tell).
    pub(crate) deadline: Option<Instant>,
    /// The handler's reply, on the way back.
    value: Option<M::Reply>,
    /// The sender's trace context (the current one when the message was made; `None` when
    /// the sender was not in a trace): the handler's turn runs as its child. Boxed: an
    /// untraced message pays for one null pointer. (A 26-byte inline field made the envelope
    /// too large to be built in its box without a `memcpy` call: ~30 instructions per tell,
    /// measured with callgrind; see docs/BENCHMARKS.md.)
    pub(crate) trace: Option<Box<TraceContext>>,
    /// The shard that handled the message (set on the way back; a home shard that relayed
    /// the reply of a moved actor sets itself, `migrate`).
    pub(crate) from: ShardId,
    _actor: PhantomData<fn() -> A>,
}

impl<A, M: Message> Deliver<A, M> {
    #[inline]
    pub(crate) fn new(
        type_idx: u16,
        key: ActorKey,
        msg: M,
        reply: ReplyTo,
        origin: Origin,
    ) -> Self {
        crate::stats::note_send(type_idx, &key);
        Deliver {
            type_idx,
            key,
            msg: Some(msg),
            reply,
            origin,
            external: None,
            deadline: None,
            value: None,
            trace: crate::trace::current_boxed(),
            from: 0,
            _actor: PhantomData,
        }
    }

    /// A box carrying only a reply (a direct ask whose turn was finished by the activation's
    /// task, completing the caller's call).
    pub(crate) fn with_value(value: M::Reply) -> Self {
        Deliver {
            type_idx: 0,
            key: ActorKey::U64(0),
            msg: None,
            reply: ReplyTo::None,
            origin: Origin::Local,
            external: None,
            deadline: None,
            value: Some(value),
            trace: None,
            from: 0,
            _actor: PhantomData,
        }
    }

    /// Takes the reply out of a box that came back.
    pub(crate) fn take_value(&mut self) -> Option<M::Reply> {
        self.value.take()
    }

    /// Takes the message out (a home forwarding it to another node encodes it).
    pub(crate) fn take_msg(&mut self) -> Option<M> {
        self.msg.take()
    }

    /// Sets the reply (a reply that came back from another node, `net::migrate`).
    pub(crate) fn set_value(&mut self, value: M::Reply) {
        self.msg = None;
        self.value = Some(value);
    }
}

impl<A, M> MailItem<A> for Deliver<A, M>
where
    A: Handler<M>,
    M: Message,
{
    #[inline]
    fn reply_to(&self) -> ReplyTo {
        self.reply
    }

    #[inline]
    fn origin(&self) -> Origin {
        self.origin
    }

    #[inline]
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    #[inline]
    fn start<'a>(
        mut self: Box<Self>,
        actor: &'a mut A,
        ctx: &'a Context<A>,
        turn: std::pin::Pin<&mut Turn<'a>>,
    ) {
        let msg = self.msg.take().expect("a message is handled once");
        if let Some(parent) = self.trace.as_deref().copied() {
            // A traced call: the turn runs inside its span, its context current (the cold
            // path; an untraced call pays only the test above).
            return start_traced(self, msg, parent, actor, ctx, turn);
        }
        if self.reply == ReplyTo::None {
            drop(self);
            turn.set(async move {
                actor.handle(msg, ctx).await;
            });
        } else {
            turn.set(async move {
                let value = actor.handle(msg, ctx).await;
                self.value = Some(value);
                send_back(&ctx.core, self);
            });
        }
    }

    #[inline]
    fn run_first(
        self: Box<Self>,
        core: &Shard,
        act: &crate::activation::Activation<A>,
        slot: &mut crate::turn::TurnSlot,
        sampled: Option<Instant>,
    ) -> std::task::Poll<Result<(), String>> {
        self.run_first_typed(core, act, slot, sampled)
    }
}

impl<A, M> Deliver<A, M>
where
    A: Handler<M>,
    M: Message,
{
    /// `MailItem::run_first`, monomorphic.
    #[inline(always)]
    fn run_first_typed(
        mut self: Box<Self>,
        core: &Shard,
        act: &crate::activation::Activation<A>,
        slot: &mut crate::turn::TurnSlot,
        sampled: Option<Instant>,
    ) -> std::task::Poll<Result<(), String>> {
        use crate::direct::{first_poll_set, first_poll_typed};
        // SAFETY: the state is the activation's, `Running` for this turn alone (the caller's
        // contract); the future is dropped, or handed to the activation that owns what it
        // borrows (as in `direct::try_tell`).
        let actor: &'static mut A = unsafe { &mut *(act.state_mut() as *mut A) };
        let ctx: &'static Context<A> = unsafe { &*(&act.ctx as *const _) };
        if self.trace.is_some() {
            // A traced call (its span around the turn): through the type-erased turn.
            self.start(actor, ctx, unsafe { slot.turn() });
            return first_poll_set(core, act, slot, sampled);
        }
        let msg = self.msg.take().expect("a message is handled once");
        // The blocks own nothing once finished (`first_poll_typed`'s contract): the message
        // goes into the handler's call, the box into `send_back`.
        if self.reply == ReplyTo::None {
            drop(self);
            first_poll_typed(core, act, slot, sampled, async move {
                actor.handle(msg, ctx).await;
            })
        } else {
            first_poll_typed(core, act, slot, sampled, async move {
                let value = actor.handle(msg, ctx).await;
                self.value = Some(value);
                send_back(&ctx.core, self);
            })
        }
    }
}

/// `MailItem::start` for a message that carries a trace context.
#[inline(never)]
fn start_traced<'a, A, M>(
    mut d: Box<Deliver<A, M>>,
    msg: M,
    parent: TraceContext,
    actor: &'a mut A,
    ctx: &'a Context<A>,
    turn: std::pin::Pin<&mut Turn<'a>>,
) where
    A: Handler<M>,
    M: Message,
{
    let (id, shard, node) = (
        &ctx.id,
        ctx.core.id,
        ctx.core.node.net.as_ref().map(|n| n.node_id),
    );
    let message = std::any::type_name::<M>();
    if d.reply == ReplyTo::None {
        drop(d);
        let fut = async move {
            actor.handle(msg, ctx).await;
        };
        turn.set(crate::trace::turn(parent, id, message, shard, node, fut));
    } else {
        let fut = async move {
            let value = actor.handle(msg, ctx).await;
            d.value = Some(value);
            send_back(&ctx.core, d);
        };
        turn.set(crate::trace::turn(parent, id, message, shard, node, fut));
    }
}

/// Returns a handled ask's box, reply inside, to its caller.
#[inline]
fn send_back<A, M>(core: &Shard, mut d: Box<Deliver<A, M>>)
where
    A: Handler<M>,
    M: Message,
{
    d.from = core.id;
    match d.reply {
        ReplyTo::None => {}
        ReplyTo::Local(call) => core.complete_call(call, CallOutcome::Reply(d)),
        ReplyTo::Shard(shard, _) => core.send_to(shard, CrossMsg::Reply(d)),
    }
}

impl<A, M> Request for Deliver<A, M>
where
    A: Handler<M>,
    M: Message,
{
    fn deliver(mut self: Box<Self>, shard: &Rc<Shard>) {
        if let Some(ext) = self.external.take() {
            // An external caller waits on a channel (and enforces its deadline itself): register
            // the call here, on the owner shard, so the reply finds its way to the channel.
            let call = shard
                .calls
                .borrow_mut()
                .register(ext.deadline, Waiter::Forward(ext.forward));
            self.deadline = Some(ext.deadline);
            self.reply = ReplyTo::Local(call);
        }
        crate::activation::deliver::<A>(shard, self.type_idx, self);
    }
}

impl<A, M> ReplyMsg for Deliver<A, M>
where
    A: Handler<M>,
    M: Message,
{
    fn call(&self) -> CallId {
        match self.reply {
            ReplyTo::Shard(_, call) => call,
            ReplyTo::Local(_) | ReplyTo::None => {
                unreachable!("only a call from another shard is answered through a ring")
            }
        }
    }

    fn from(&self) -> ShardId {
        self.from
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// A closure run on a shard's thread with its shard.
pub(crate) type OnShard = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// Fails a call without a typed value (panic, abort, shutdown).
pub(crate) fn fail_reply(core: &Shard, reply: ReplyTo, err: CallError) {
    match reply {
        ReplyTo::None => {}
        ReplyTo::Local(call) => core.complete_call(call, CallOutcome::Failed(err)),
        ReplyTo::Shard(shard, call) => core.send_to(
            shard,
            CrossMsg::Fail {
                call,
                from: core.id,
                err: Some(Box::new(err)),
            },
        ),
    }
}

/// Fails an ask that was not run because its deadline passed: its caller sees `Timeout`
/// (the credit of a cross-shard ask goes back with the failure).
pub(crate) fn expire_reply(core: &Shard, reply: ReplyTo) {
    match reply {
        ReplyTo::None => {}
        ReplyTo::Local(call) => {
            core.calls
                .borrow_mut()
                .complete(call, CallOutcome::TimedOut);
        }
        ReplyTo::Shard(shard, call) => core.send_to(
            shard,
            CrossMsg::Fail {
                call,
                from: core.id,
                err: None,
            },
        ),
    }
}

/// Turns a call outcome into the caller's result.
pub(crate) fn outcome_into<A, M>(
    outcome: CallOutcome,
    actor: impl FnOnce() -> ActorId,
    timeout: Duration,
) -> Result<M::Reply, CallError>
where
    A: Handler<M>,
    M: Message,
{
    match outcome {
        CallOutcome::Reply(any) => match any.downcast::<Deliver<A, M>>() {
            Ok(mut d) => Ok(d
                .take_value()
                .expect("a returned message carries its reply")),
            Err(_) => unreachable!("a call's reply has the type its ask expects"),
        },
        CallOutcome::Failed(err) => Err(err),
        CallOutcome::Remote(_) => {
            unreachable!("only calls sent to another node are completed with a remote reply")
        }
        CallOutcome::TimedOut => Err(CallError::Timeout {
            actor: actor(),
            timeout,
        }),
    }
}

/// Forwards an outcome to an external caller's channel.
pub(crate) struct ExtForward<A, M: Message> {
    pub(crate) tx: futures::channel::oneshot::Sender<Result<M::Reply, CallError>>,
    pub(crate) actor: ActorId,
    pub(crate) timeout: Duration,
    /// The caller's deadline: an answer produced after it is a `Timeout` (the caller may be
    /// polled late; it then still never sees an answer that came after its deadline).
    pub(crate) deadline: Instant,
    pub(crate) _types: PhantomData<fn() -> (A, M)>,
}

impl<A, M> Forward for ExtForward<A, M>
where
    A: Handler<M>,
    M: Message,
{
    fn abandoned(&self) -> bool {
        self.tx.is_canceled()
    }

    fn complete(self: Box<Self>, outcome: CallOutcome) {
        let ExtForward {
            tx,
            actor,
            timeout,
            deadline,
            ..
        } = *self;
        if tx.is_canceled() {
            // The caller stopped waiting; nothing to do.
            return;
        }
        let outcome = match outcome {
            CallOutcome::Reply(_) if Instant::now() > deadline => CallOutcome::TimedOut,
            o => o,
        };
        let _ = tx.send(outcome_into::<A, M>(outcome, || actor, timeout));
    }
}
