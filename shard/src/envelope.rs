//! Envelopes: what travels through mailboxes, rings and the external injection queue.
//!
//! A message to an actor is one allocation, [`Deliver`], from the sender to the handler: the
//! same box goes through the ring (as a [`CrossMsg`]) and into the mailbox (as a
//! [`MailItem`]); the handler's turn takes the message out of it. For an ask, the same box
//! then carries the reply back and the caller's shard stores it in its call table until the
//! caller takes the value: one allocation per call, freed by the thread that made it.

use std::marker::PhantomData;
use std::rc::Rc;
use std::time::{Duration, Instant};

use quark_placement::{ActorId, ActorKey, ShardId};

use crate::actor::{Actor, Context, Handler, Message};
use crate::calls::{CallId, CallOutcome, Forward, Waiter};
use crate::core::ShardCore;
use crate::error::CallError;
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

/// A message that crosses to another shard (through a ring or the injection queue). `run` is
/// called on the receiving shard's thread by its pump.
pub(crate) trait CrossMsg: Send {
    fn run(self: Box<Self>, core: &Rc<ShardCore>);
}

/// The box type every ring carries.
pub(crate) type CrossBox = Box<dyn CrossMsg>;

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
    pub(crate) external: Option<External>,
    /// An ask's deadline (absolute; `None` for a tell).
    pub(crate) deadline: Option<Instant>,
    /// The handler's reply, on the way back.
    value: Option<M::Reply>,
    /// The shard that handled the message (set on the way back).
    from: ShardId,
    _actor: PhantomData<fn() -> A>,
}

impl<A, M: Message> Deliver<A, M> {
    pub(crate) fn new(
        type_idx: u16,
        key: ActorKey,
        msg: M,
        reply: ReplyTo,
        origin: Origin,
    ) -> Self {
        Deliver {
            type_idx,
            key,
            msg: Some(msg),
            reply,
            origin,
            external: None,
            deadline: None,
            value: None,
            from: 0,
            _actor: PhantomData,
        }
    }

    /// Takes the reply out of a box that came back.
    pub(crate) fn take_value(&mut self) -> Option<M::Reply> {
        self.value.take()
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
}

/// Returns a handled ask's box, reply inside, to its caller.
#[inline]
fn send_back<A, M>(core: &ShardCore, mut d: Box<Deliver<A, M>>)
where
    A: Handler<M>,
    M: Message,
{
    d.from = core.id;
    match d.reply {
        ReplyTo::None => {}
        ReplyTo::Local(call) => core.complete_call(call, CallOutcome::Reply(d)),
        ReplyTo::Shard(shard, _) => core.send_to(shard, d),
    }
}

impl<A, M> CrossMsg for Deliver<A, M>
where
    A: Handler<M>,
    M: Message,
{
    fn run(mut self: Box<Self>, core: &Rc<ShardCore>) {
        if self.value.is_some() {
            // A reply coming back to the caller's shard.
            core.return_credits(self.from, 1);
            if let ReplyTo::Shard(_, call) = self.reply {
                core.complete_call(call, CallOutcome::Reply(self));
            }
            return;
        }
        if let Some(ext) = self.external.take() {
            // An external caller waits on a channel (and enforces its deadline itself): register
            // the call here, on the owner shard, so the reply finds its way to the channel.
            let call = core
                .calls
                .borrow_mut()
                .register(ext.deadline, Waiter::Forward(ext.forward));
            self.deadline = Some(ext.deadline);
            self.reply = ReplyTo::Local(call);
        }
        crate::activation::deliver::<A>(core, self.type_idx, self);
    }
}

/// A failed call travelling back to the caller's shard.
pub(crate) struct FailMsg {
    call: CallId,
    from: ShardId,
    /// `None`: the call's deadline passed before its turn (it was not run).
    err: Option<CallError>,
}

impl CrossMsg for FailMsg {
    fn run(self: Box<Self>, core: &Rc<ShardCore>) {
        core.return_credits(self.from, 1);
        match self.err {
            Some(err) => core.complete_call(self.call, CallOutcome::Failed(err)),
            // The caller has most likely timed out already: not a dropped reply.
            None => {
                core.calls
                    .borrow_mut()
                    .complete(self.call, CallOutcome::TimedOut);
            }
        }
    }
}

/// Credits for `tell`s that `from` finished handling.
pub(crate) struct CreditMsg {
    pub(crate) from: ShardId,
    pub(crate) count: u32,
}

impl CrossMsg for CreditMsg {
    fn run(self: Box<Self>, core: &Rc<ShardCore>) {
        core.return_credits(self.from, self.count);
    }
}

/// A closure run on a shard's thread with its core.
pub(crate) type OnShard = Box<dyn FnOnce(&Rc<ShardCore>) + Send>;

/// A closure to run on the receiving shard (spawning tasks, control messages).
pub(crate) struct RunMsg(pub(crate) OnShard);

impl CrossMsg for RunMsg {
    fn run(self: Box<Self>, core: &Rc<ShardCore>) {
        (self.0)(core)
    }
}

/// Fails a call without a typed value (panic, abort, shutdown).
pub(crate) fn fail_reply(core: &ShardCore, reply: ReplyTo, err: CallError) {
    match reply {
        ReplyTo::None => {}
        ReplyTo::Local(call) => core.complete_call(call, CallOutcome::Failed(err)),
        ReplyTo::Shard(shard, call) => core.send_to(
            shard,
            Box::new(FailMsg {
                call,
                from: core.id,
                err: Some(err),
            }),
        ),
    }
}

/// Fails an ask that was not run because its deadline passed: its caller sees `Timeout`
/// (the credit of a cross-shard ask goes back with the failure).
pub(crate) fn expire_reply(core: &ShardCore, reply: ReplyTo) {
    match reply {
        ReplyTo::None => {}
        ReplyTo::Local(call) => {
            core.calls
                .borrow_mut()
                .complete(call, CallOutcome::TimedOut);
        }
        ReplyTo::Shard(shard, call) => core.send_to(
            shard,
            Box::new(FailMsg {
                call,
                from: core.id,
                err: None,
            }),
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
