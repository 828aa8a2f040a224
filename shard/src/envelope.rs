//! Envelopes: what travels through mailboxes, rings and the external injection queue.
//!
//! A message to an actor is one allocation, [`Deliver`], from the sender to the handler: the
//! same box goes through the ring (as a [`CrossMsg`]) and into the mailbox (as a
//! [`MailItem`]); the handler's turn takes the message out of it. A reply from another shard
//! is one more allocation, [`ReplyMsg`], which the caller's shard stores in its call table as
//! is until the caller takes the value.

use std::any::Any;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

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
    pub(crate) timeout: Duration,
}

/// A message for actor `(A, key)` with its reply address.
pub(crate) struct Deliver<A, M> {
    pub(crate) type_idx: u16,
    pub(crate) key: ActorKey,
    pub(crate) msg: M,
    pub(crate) reply: ReplyTo,
    pub(crate) origin: Origin,
    pub(crate) external: Option<External>,
    _actor: PhantomData<fn() -> A>,
}

impl<A, M> Deliver<A, M> {
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
            msg,
            reply,
            origin,
            external: None,
            _actor: PhantomData,
        }
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
    fn start<'a>(
        self: Box<Self>,
        actor: &'a mut A,
        ctx: &'a Context<A>,
        turn: std::pin::Pin<&mut Turn<'a>>,
    ) {
        let reply = self.reply;
        let msg = self.msg;
        turn.set(async move {
            let value = actor.handle(msg, ctx).await;
            send_reply(&ctx.core, reply, value);
        });
    }
}

impl<A, M> CrossMsg for Deliver<A, M>
where
    A: Handler<M>,
    M: Message,
{
    fn run(mut self: Box<Self>, core: &Rc<ShardCore>) {
        if let Some(ext) = self.external.take() {
            // An external caller waits on a channel: register the call here, on the owner
            // shard, so that its deadline is enforced by this shard's clock.
            let deadline = core.now() + ext.timeout;
            let call = core
                .calls
                .borrow_mut()
                .register(deadline, Waiter::Forward(ext.forward));
            self.reply = ReplyTo::Local(call);
        }
        crate::activation::deliver::<A>(core, self.type_idx, self);
    }
}

/// A reply travelling back to the caller's shard (and, as `Box<dyn Any>`, stored in its call
/// table until the caller takes it).
pub(crate) struct ReplyMsg<R> {
    pub(crate) call: CallId,
    pub(crate) from: ShardId,
    pub(crate) value: R,
}

impl<R: Send + 'static> CrossMsg for ReplyMsg<R> {
    fn run(self: Box<Self>, core: &Rc<ShardCore>) {
        core.return_credits(self.from, 1);
        let call = self.call;
        let any: Box<dyn Any + Send> = self;
        core.complete_call(call, CallOutcome::Reply(any));
    }
}

/// A failed call travelling back to the caller's shard.
pub(crate) struct FailMsg {
    call: CallId,
    from: ShardId,
    err: CallError,
}

impl CrossMsg for FailMsg {
    fn run(self: Box<Self>, core: &Rc<ShardCore>) {
        core.return_credits(self.from, 1);
        core.complete_call(self.call, CallOutcome::Failed(self.err));
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

/// Sends a turn's reply.
#[inline]
pub(crate) fn send_reply<R: Send + 'static>(core: &ShardCore, reply: ReplyTo, value: R) {
    match reply {
        ReplyTo::None => {}
        ReplyTo::Local(call) => {
            let msg = Box::new(ReplyMsg {
                call,
                from: core.id,
                value,
            });
            core.complete_call(call, CallOutcome::Reply(msg));
        }
        ReplyTo::Shard(shard, call) => core.send_to(
            shard,
            Box::new(ReplyMsg {
                call,
                from: core.id,
                value,
            }),
        ),
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
                err,
            }),
        ),
    }
}

/// Turns a call outcome into the caller's result.
pub(crate) fn outcome_into<R: Send + 'static>(
    outcome: CallOutcome,
    actor: impl FnOnce() -> ActorId,
    timeout: Duration,
) -> Result<R, CallError> {
    match outcome {
        CallOutcome::Reply(any) => match any.downcast::<ReplyMsg<R>>() {
            Ok(msg) => Ok(msg.value),
            Err(_) => unreachable!("a call's reply has the type its ask expects"),
        },
        CallOutcome::Failed(err) => Err(err),
        CallOutcome::TimedOut => Err(CallError::Timeout {
            actor: actor(),
            timeout,
        }),
    }
}

/// Forwards an outcome to an external caller's channel.
pub(crate) struct ExtForward<R> {
    pub(crate) tx: futures::channel::oneshot::Sender<Result<R, CallError>>,
    pub(crate) actor: ActorId,
    pub(crate) timeout: Duration,
}

impl<R: Send + 'static> Forward for ExtForward<R> {
    fn complete(self: Box<Self>, outcome: CallOutcome) {
        let ExtForward { tx, actor, timeout } = *self;
        // A closed channel means the caller stopped waiting; nothing to do.
        let _ = tx.send(outcome_into(outcome, || actor, timeout));
    }
}
