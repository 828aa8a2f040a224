//! Direct turns: a sender on an actor's own shard runs the actor's turn itself, in its own
//! poll, when the activation is idle with an empty mailbox, instead of queueing the message and
//! switching to the activation's task (and, for an ask, back). Turn semantics hold: the
//! activation is `Running` for the turn's whole length, so nothing else starts a turn on it
//! meanwhile; and it only runs directly when nothing is queued before it, so per-sender order
//! holds.
//!
//! A turn that does not finish in that first poll (its handler awaits) stays in its heap slot
//! (`turn::TurnSlot`) as the activation's *pending turn*, and the activation's task finishes it
//! before it takes more mail; a direct ask then waits for its reply through the call table like
//! any other local ask.
//!
//! Not taken (the sender queues the message as before): for stateless workers, for a sender
//! running in a trace (its turn needs the traced envelope's span), for a reply larger than
//! `turn::REPLY_INLINE_BYTES`, past `DIRECT_DEPTH` nested direct turns (a handler telling an
//! actor whose handler tells another...), and past `DIRECT_PER_POLL` direct turns in one task
//! poll, so that a task sending in a loop still yields to the shard's other work.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use quark_placement::ActorKey;

use crate::activation::{Activation, PendingTurn};
use crate::actor::{Actor, Handler, Message};
use crate::calls::{CallId, CallOutcome, Waiter};
use crate::envelope::{Deliver, MailItem, Origin, ReplyTo};
use crate::error::CallError;
use crate::shard::Shard;
use crate::turn::{TurnSlot, REPLY_INLINE_BYTES};

/// Direct turns one task poll may run; past it, messages are queued (and the sender yields
/// when it waits, as before).
const DIRECT_PER_POLL: u32 = 64;
/// Direct turns nested inside one another at most (each nests one handler's poll in the
/// sender's stack).
const DIRECT_DEPTH: u8 = 4;

/// A shard's count of direct turns: per task poll, and nested.
#[derive(Default)]
pub(crate) struct DirectBudget {
    /// The scheduler's poll count when `used` was last reset.
    epoch: Cell<u64>,
    used: Cell<u32>,
    depth: Cell<u8>,
}

/// What a direct tell came to.
pub(crate) enum DirectTell<M> {
    /// Handled: the turn ran (or awaits, finished by the activation's task), or the message
    /// was queued in the mailbox of a busy activation.
    Sent,
    /// The task used up its direct turns for this poll: yield, then try again.
    Yield(M),
    /// Not for this path (no live activation, a full mailbox, a stateless worker, a traced
    /// sender, nested too deep): send it the ordinary way.
    Refused(M),
}

/// What a direct ask came to.
pub(crate) enum DirectAsk<M: Message> {
    /// The turn ran to its end: the reply (or the panic, as `ActorPanicked`).
    Done(Result<M::Reply, CallError>),
    /// The turn awaits: the reply will complete this call (registered with the deadline).
    Pending(CallId),
    /// The task used up its direct turns for this poll: yield, then try again.
    Yield(M),
    /// Not run directly: the message, to be sent the ordinary way.
    Refused(M),
}

/// Whether a direct turn may run on the activation of `(A, key)`.
enum Admit<A: Actor> {
    /// Yes (one was taken from the budget).
    Run(Rc<Activation<A>>),
    /// The activation is live but busy or has mail queued.
    Busy(Rc<Activation<A>>),
    /// The budget of this task poll is used up.
    Yield,
    /// No (see [`DirectTell::Refused`]).
    No,
}

#[inline(always)]
fn admit<A: Actor>(core: &Shard, type_idx: u16, key: &ActorKey) -> Admit<A> {
    let b = &core.direct;
    let table = core.table::<A>(type_idx);
    if b.depth.get() >= DIRECT_DEPTH
        || table.info.spec.stateless_workers.is_some()
        || crate::trace::is_traced()
    {
        return Admit::No;
    }
    let Some(act) = table.lookup(key) else {
        return Admit::No;
    };
    if !act.can_run_direct() {
        return Admit::Busy(act);
    }
    if !take_budget(b, core) {
        return Admit::Yield;
    }
    Admit::Run(act)
}

/// Takes one direct turn from the budget of the current task poll (false if it is used up).
#[inline]
fn take_budget(b: &DirectBudget, core: &Shard) -> bool {
    let polls = core.sched.polls();
    if b.epoch.get() != polls {
        b.epoch.set(polls);
        b.used.set(0);
    }
    if b.used.get() >= DIRECT_PER_POLL {
        return false;
    }
    b.used.set(b.used.get() + 1);
    true
}

/// Polls the turn in `slot` once, for the first time, from the sender, with the activation
/// task's waker (if the turn awaits, what it waits for wakes the task that finishes it).
/// `sampled`: the turn is one of its type's sampled turns (see `ShardStats::turn_begin`): its
/// sends count in the communication graph.
#[inline]
fn first_poll<A: Actor>(
    core: &Shard,
    act: &Activation<A>,
    slot: &mut TurnSlot,
    sampled: Option<Instant>,
) -> Poll<Result<(), String>> {
    let depth = &core.direct.depth;
    depth.set(depth.get() + 1);
    let r = act.with_task_waker(|waker| {
        let mut cx = TaskContext::from_waker(waker);
        // SAFETY: the future in the slot borrows the activation's state and context; the
        // caller keeps the activation alive until the turn is cleared or handed to it.
        let mut poll = || unsafe { slot.turn() }.poll_catching(&mut cx);
        let _mem = crate::memory::enter(act.mem.cell());
        match sampled {
            None => poll(),
            Some(_) => crate::stats::with_caller(act.ctx.type_idx, &act.ctx.id.key, poll),
        }
    });
    depth.set(depth.get() - 1);
    r
}

/// Runs `fut` as the turn in `slot`, polling it once from the sender as [`first_poll`] does,
/// but typed: the future is placed in the slot without its function pointers and polled as
/// `F` (inlined), and a future that finishes in this poll is left as it is (it owns nothing
/// then: `fut` must be one of this module's turn blocks, whose captures all go into the
/// handler's call), so the common case makes no indirect call. One that awaits is handed to the slot's turn (adopted), so
/// the slot is then what [`first_poll`] would have left. A future too large for the slot's
/// storage takes [`first_poll`] (boxed by the turn).
#[inline]
pub(crate) fn first_poll_typed<A: Actor, F: Future<Output = ()>>(
    core: &Shard,
    act: &Activation<A>,
    slot: &mut TurnSlot,
    sampled: Option<Instant>,
    fut: F,
) -> Poll<Result<(), String>> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    if !TurnSlot::fits::<F>() {
        // SAFETY: as in `try_tell`.
        unsafe { slot.turn() }.set(fut);
        return first_poll_set(core, act, slot, sampled);
    }
    // SAFETY: it fits, the slot is empty (taken from the pool); it is dropped or adopted below.
    let p = unsafe { slot.place(fut) };
    let depth = &core.direct.depth;
    depth.set(depth.get() + 1);
    let r = act.with_task_waker(|waker| {
        let mut cx = TaskContext::from_waker(waker);
        let _mem = crate::memory::enter(act.mem.cell());
        // SAFETY: `p` is the live future placed above, pinned in the slot's box.
        let mut poll = || {
            catch_unwind(AssertUnwindSafe(|| {
                unsafe { std::pin::Pin::new_unchecked(&mut *p) }.poll(&mut cx)
            }))
        };
        match sampled {
            None => poll(),
            Some(_) => crate::stats::with_caller(act.ctx.type_idx, &act.ctx.id.key, poll),
        }
    });
    depth.set(depth.get() - 1);
    match r {
        Ok(Poll::Ready(())) => {
            // Not dropped: a finished direct-turn block owns nothing (what it captured went
            // into the handler's call, which ran to its end), and its drop glue would only
            // test its state. The slot is empty again.
            Poll::Ready(Ok(()))
        }
        Ok(Poll::Pending) => {
            // SAFETY: placed above, live.
            unsafe { slot.adopt::<F>() };
            Poll::Pending
        }
        Err(payload) => {
            // SAFETY: placed above, not adopted; not polled again.
            unsafe { slot.drop_placed(p) };
            Poll::Ready(Err(crate::turn::caught_panic_message(&*payload)))
        }
    }
}

/// [`first_poll`] of the turn `set` in `slot`, leaving the slot empty if it finished (or
/// panicked), as [`first_poll_typed`] does.
#[inline(never)]
pub(crate) fn first_poll_set<A: Actor>(
    core: &Shard,
    act: &Activation<A>,
    slot: &mut TurnSlot,
    sampled: Option<Instant>,
) -> Poll<Result<(), String>> {
    let r = first_poll(core, act, slot, sampled);
    if r.is_ready() {
        slot.clear();
    }
    r
}

/// Ends a direct turn's sample, if it is a sampled one that finished in its first poll.
#[inline]
fn end_sample<A: Actor>(core: &Shard, act: &Activation<A>, sampled: Option<Instant>) {
    if let Some(start) = sampled {
        let bytes = crate::tables::sampled_memory(core, act);
        core.stats
            .turn_sampled(start, &act.ctx.id, act.ctx.type_idx, bytes);
    }
}

/// Runs `msg` as a direct tell if the activation allows it now; gives the message back
/// otherwise.
#[inline]
pub(crate) fn try_tell<A, M>(core: &Shard, type_idx: u16, key: &ActorKey, msg: M) -> DirectTell<M>
where
    A: Handler<M>,
    M: Message,
{
    let act = match admit::<A>(core, type_idx, key) {
        Admit::Run(act) => act,
        Admit::Busy(act) => {
            // Queued behind what is there, as the ordinary path would (same origin, same
            // envelope), without looking the activation up again.
            if act.queue_len() >= core.node.config.mailbox_capacity {
                return DirectTell::Refused(msg);
            }
            act.push(Box::new(Deliver::<A, M>::new(
                type_idx,
                key.clone(),
                msg,
                ReplyTo::None,
                Origin::Local,
            )));
            return DirectTell::Sent;
        }
        Admit::Yield => return DirectTell::Yield(msg),
        Admit::No => return DirectTell::Refused(msg),
    };
    crate::stats::note_send(type_idx, key);
    act.begin_direct(core);
    let mut slot = core.take_turn_slot();
    // SAFETY: the state is the activation's, now `Running` for this turn alone; the future is
    // dropped below, or handed to the activation that owns what it borrows.
    let actor: &mut A = unsafe { act.state_mut() };
    let ctx = &act.ctx;
    let ctx: &'static crate::actor::Context<A> = unsafe { &*(ctx as *const _) };
    let actor: &'static mut A = unsafe { &mut *(actor as *mut A) };
    let fut = async move {
        actor.handle(msg, ctx).await;
    };
    let sampled = core.stats.turn_begin(act.ctx.type_idx);
    match first_poll_typed(core, &act, &mut slot, sampled, fut) {
        Poll::Ready(Ok(())) => {
            core.give_turn_slot(slot);
            end_sample(core, &act, sampled);
            act.end_direct();
        }
        Poll::Ready(Err(panic)) => {
            slot.clear();
            core.give_turn_slot(slot);
            act.direct_panicked(ReplyTo::None, panic);
        }
        Poll::Pending => act.hand_over(PendingTurn::new(slot, None).sampled(sampled)),
    }
    DirectTell::Sent
}

/// Runs `msg` as a direct ask if the activation allows it now (see [`DirectAsk`]); `deadline`
/// gives the call's deadline, asked for only if the turn awaits.
#[inline]
pub(crate) fn try_ask<A, M>(
    core: &Shard,
    type_idx: u16,
    key: &ActorKey,
    msg: M,
    deadline: impl FnOnce() -> Instant,
) -> DirectAsk<M>
where
    A: Handler<M>,
    M: Message,
{
    if size_of::<Option<M::Reply>>() > REPLY_INLINE_BYTES || align_of::<Option<M::Reply>>() > 16 {
        return DirectAsk::Refused(msg);
    }
    let act = match admit::<A>(core, type_idx, key) {
        Admit::Run(act) => act,
        Admit::Yield => return DirectAsk::Yield(msg),
        Admit::Busy(_) | Admit::No => return DirectAsk::Refused(msg),
    };
    crate::stats::note_send(type_idx, key);
    act.begin_direct(core);
    let mut slot = core.take_turn_slot();
    let out = slot.reply_ptr().cast::<Option<M::Reply>>();
    // SAFETY: as in `try_tell`; `out` is the slot's reply room, large and aligned enough
    // (checked above), in place while the slot lives.
    unsafe { out.write(None) };
    let actor: &'static mut A = unsafe { &mut *(act.state_mut() as *mut A) };
    let ctx: &'static crate::actor::Context<A> = unsafe { &*(&act.ctx as *const _) };
    let fut = async move {
        let value = actor.handle(msg, ctx).await;
        unsafe { out.write(Some(value)) };
    };
    let sampled = core.stats.turn_begin(act.ctx.type_idx);
    match first_poll_typed(core, &act, &mut slot, sampled, fut) {
        Poll::Ready(Ok(())) => {
            // SAFETY: written by the finished turn.
            let value = unsafe { (*out).take() };
            core.give_turn_slot(slot);
            end_sample(core, &act, sampled);
            act.end_direct();
            DirectAsk::Done(Ok(value.expect("a finished ask turn wrote its reply")))
        }
        Poll::Ready(Err(panic)) => {
            slot.clear();
            core.give_turn_slot(slot);
            let actor = act.ctx.id.clone();
            act.direct_panicked(ReplyTo::None, panic.clone());
            DirectAsk::Done(Err(CallError::ActorPanicked { actor, panic }))
        }
        Poll::Pending => {
            let call = core
                .calls
                .borrow_mut()
                .register(deadline(), Waiter::Task(None));
            act.hand_over(
                PendingTurn::new(slot, Some((call, finish_ask::<A, M>))).sampled(sampled),
            );
            DirectAsk::Pending(call)
        }
    }
}

/// Runs a message delivered from a ring or from outside the node as a direct turn on `act`
/// (idle, nothing queued: checked by the caller), from the pump; gives it back if it must go
/// through the mailbox: an ask whose deadline has passed (the task skips it and says so), a
/// timer tick, too deep a nesting, or when the pump has run turns long enough: the budget of
/// direct turns is used up, or the coarse clock ticked since the pump's iteration began (the
/// activation's task then runs it, and yields to the pump on its own time budget).
pub(crate) fn run_delivered<A: Actor>(
    core: &Shard,
    act: &Rc<Activation<A>>,
    item: Box<dyn MailItem<A>>,
) -> Result<(), Box<dyn MailItem<A>>> {
    let origin = item.origin();
    if core.direct.depth.get() >= DIRECT_DEPTH
        || origin == Origin::Timer
        || core.clock.ticked_since_read()
        || item.deadline().is_some_and(|d| core.deadline_passed(d))
        || !take_budget(&core.direct, core)
    {
        return Err(item);
    }
    let reply = item.reply_to();
    act.begin_direct(core);
    let mut slot = core.take_turn_slot();
    let sampled = core.stats.turn_begin(act.ctx.type_idx);
    // Typed inside the item (one virtual call): see `MailItem::run_first`.
    match item.run_first(core, act, &mut slot, sampled) {
        Poll::Ready(result) => {
            core.give_turn_slot(slot);
            end_sample(core, act, sampled);
            match result {
                Ok(()) => act.end_direct(),
                Err(panic) => act.direct_panicked(reply, panic),
            }
            core.turn_done(origin, reply);
        }
        Poll::Pending => {
            act.hand_over(PendingTurn::delivered(slot, origin, reply).sampled(sampled));
        }
    }
    Ok(())
}

/// Completes `call` with the reply a direct ask's turn wrote into `slot` once the activation's
/// task finished it.
///
/// # Safety
/// `slot` held a direct ask turn for `(A, M)` that ran to its end.
unsafe fn finish_ask<A, M>(slot: &mut TurnSlot, core: &Shard, call: CallId)
where
    A: Handler<M>,
    M: Message,
{
    let out = slot.reply_ptr().cast::<Option<M::Reply>>();
    // SAFETY: per the contract, the finished turn wrote its reply there.
    let value = unsafe { (*out).take() }.expect("a finished ask turn wrote its reply");
    let d = Deliver::<A, M>::with_value(value);
    core.complete_call(call, CallOutcome::Reply(Box::new(d)));
}
