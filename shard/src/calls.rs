//! The table of a shard's calls awaiting a reply, with their deadlines.
//!
//! A call is registered when an `ask` is sent and completed when its reply (or failure) comes
//! back, or when its deadline passes. Ids carry a generation, so a reply that arrives after its
//! caller gave up (timed out or dropped the future) finds a stale id and is dropped and counted,
//! never delivered to a newer call that reused the slot.
//!
//! Deadlines cost nothing per call beyond storing an `Instant`: the table remembers the
//! earliest deadline of its live calls and scans only when that moment has passed. With one
//! default timeout the scan happens about once per timeout period, and it is linear in the
//! number of calls in flight (which the cross-shard credits bound).

use std::any::Any;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::error::CallError;

/// Identifies a pending call on its shard: slot index and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CallId(u64);

impl CallId {
    /// The id as it travels in a frame's correlation field.
    pub(crate) fn to_u64(self) -> u64 {
        self.0
    }
    /// An id read back from a frame (checked against the table like any other id).
    pub(crate) fn from_u64(v: u64) -> Self {
        CallId(v)
    }
    fn new(index: u32, gen: u32) -> Self {
        CallId((u64::from(gen) << 32) | u64::from(index))
    }
    fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    fn gen(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// How a call ended.
pub(crate) enum CallOutcome {
    /// The returned message box with the reply inside (a `Deliver<A, M>`, downcast by the
    /// caller).
    Reply(Box<dyn Any + Send>),
    /// The callee failed the call.
    Failed(CallError),
    /// The deadline passed first.
    TimedOut,
    /// The reply to a call sent to another node.
    Remote(RemoteReply),
}

/// What came back from another node: the reply archive (a 16-aligned copy of the frame's body,
/// validated and decoded by the caller, which knows its type), or the callee's error.
pub(crate) enum RemoteReply {
    Value(quark_net::rkyv::util::AlignedVec<16>),
    Error(quark_net::RemoteError),
}

/// Who waits for a call: a task on this shard, or a forwarder (an external caller's channel).
pub(crate) enum Waiter {
    /// A local task, woken on completion.
    Task(Option<Waker>),
    /// Receives the outcome directly.
    Forward(Box<dyn Forward>),
}

/// Completes a call for a waiter that is not a task of this shard.
pub(crate) trait Forward {
    /// Delivers the outcome.
    fn complete(self: Box<Self>, outcome: CallOutcome);
    /// True if nobody will read the outcome any more (the caller gave up).
    fn abandoned(&self) -> bool {
        false
    }
}

enum State {
    Free,
    Waiting(Waiter),
    Done(CallOutcome),
}

struct Slot {
    gen: u32,
    deadline: Instant,
    state: State,
}

/// See the module doc.
pub(crate) struct CallTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    next_sweep: Option<Instant>,
}

impl CallTable {
    pub(crate) fn new() -> Self {
        CallTable {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_sweep: None,
        }
    }

    /// Number of calls registered and not yet taken.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// The earliest moment a deadline can pass, if any call is pending.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Registers a call that expires at `deadline`.
    pub(crate) fn register(&mut self, deadline: Instant, waiter: Waiter) -> CallId {
        self.live += 1;
        self.next_sweep = Some(match self.next_sweep {
            Some(t) if t <= deadline => t,
            _ => deadline,
        });
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            debug_assert!(matches!(slot.state, State::Free));
            slot.gen = slot.gen.wrapping_add(1);
            slot.deadline = deadline;
            slot.state = State::Waiting(waiter);
            CallId::new(index, slot.gen)
        } else {
            let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 calls in flight");
            self.slots.push(Slot {
                gen: 0,
                deadline,
                state: State::Waiting(waiter),
            });
            CallId::new(index, 0)
        }
    }

    fn slot_mut(&mut self, id: CallId) -> Option<&mut Slot> {
        match self.slots.get_mut(id.index()) {
            Some(slot) if slot.gen == id.gen() && !matches!(slot.state, State::Free) => Some(slot),
            _ => None,
        }
    }

    fn release(&mut self, id: CallId) {
        let slot = &mut self.slots[id.index()];
        slot.state = State::Free;
        self.free.push(id.index() as u32);
        self.live -= 1;
        if self.live == 0 {
            self.next_sweep = None;
        }
    }

    /// Completes call `id`. Returns `false` if nobody waits for it any more (the reply is
    /// dropped; the caller of this counts it).
    pub(crate) fn complete(&mut self, id: CallId, outcome: CallOutcome) -> bool {
        let Some(slot) = self.slot_mut(id) else {
            return false;
        };
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Waiting(Waiter::Task(waker)) => {
                slot.state = State::Done(outcome);
                if let Some(w) = waker {
                    w.wake();
                }
                true
            }
            State::Waiting(Waiter::Forward(fwd)) => {
                self.release(id);
                fwd.complete(outcome);
                true
            }
            done @ State::Done(_) => {
                // A second completion (cannot happen: one reply per call); keep the first.
                slot.state = done;
                false
            }
            State::Free => unreachable!("slot_mut returns only occupied slots"),
        }
    }

    /// Polls call `id` for its outcome; on `Ready` the slot is freed.
    pub(crate) fn poll(&mut self, id: CallId, cx: &mut Context<'_>) -> Poll<CallOutcome> {
        let slot = self
            .slot_mut(id)
            .expect("a call's future holds its slot until it takes the outcome");
        match &mut slot.state {
            State::Waiting(Waiter::Task(w)) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Done(_) => {
                let State::Done(outcome) = std::mem::replace(&mut slot.state, State::Free) else {
                    unreachable!("matched Done just above")
                };
                self.release(id);
                Poll::Ready(outcome)
            }
            State::Waiting(Waiter::Forward(_)) | State::Free => {
                unreachable!("a polled call is a task-waited call")
            }
        }
    }

    /// True if call `id` still has a caller waiting for its outcome (not timed out, not
    /// cancelled, not abandoned by a caller outside the node).
    pub(crate) fn is_awaited(&self, id: CallId) -> bool {
        match self.slots.get(id.index()) {
            Some(slot) if slot.gen == id.gen() => match &slot.state {
                State::Waiting(Waiter::Task(_)) => true,
                State::Waiting(Waiter::Forward(f)) => !f.abandoned(),
                State::Done(_) | State::Free => false,
            },
            _ => false,
        }
    }

    /// Forgets call `id` (its future was dropped); a later reply is dropped.
    pub(crate) fn cancel(&mut self, id: CallId) {
        if self.slot_mut(id).is_some() {
            self.release(id);
        }
    }

    /// Times out every call whose deadline is `<= now`. Returns the forwarders to complete (the
    /// caller completes them after releasing its borrow of the table).
    pub(crate) fn sweep(&mut self, now: Instant) -> Vec<Box<dyn Forward>> {
        let mut forwards = Vec::new();
        match self.next_sweep {
            Some(t) if t <= now => {}
            _ => return forwards,
        }
        let mut next: Option<Instant> = None;
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if !matches!(slot.state, State::Waiting(_)) {
                continue;
            }
            if slot.deadline > now {
                next = Some(next.map_or(slot.deadline, |t| t.min(slot.deadline)));
                continue;
            }
            match std::mem::replace(&mut slot.state, State::Done(CallOutcome::TimedOut)) {
                State::Waiting(Waiter::Task(w)) => {
                    if let Some(w) = w {
                        w.wake();
                    }
                }
                State::Waiting(Waiter::Forward(f)) => {
                    let id = CallId::new(index as u32, slot.gen);
                    self.release(id);
                    forwards.push(f);
                }
                _ => unreachable!("matched Waiting just above"),
            }
        }
        self.next_sweep = if self.live == 0 { None } else { next };
        forwards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cx() -> Context<'static> {
        Context::from_waker(futures::task::noop_waker_ref())
    }

    #[test]
    fn reply_then_poll_frees_the_slot() {
        let mut t = CallTable::new();
        let now = Instant::now();
        let id = t.register(now + Duration::from_secs(1), Waiter::Task(None));
        assert!(t.poll(id, &mut cx()).is_pending());
        assert!(t.complete(
            id,
            CallOutcome::Failed(CallError::UnknownActorType { type_name: "x" })
        ));
        assert!(matches!(
            t.poll(id, &mut cx()),
            Poll::Ready(CallOutcome::Failed(_))
        ));
        assert_eq!(t.live(), 0);
        assert!(
            !t.complete(id, CallOutcome::TimedOut),
            "a stale id is not completed"
        );
    }

    #[test]
    fn stale_generation_does_not_hit_a_reused_slot() {
        let mut t = CallTable::new();
        let now = Instant::now();
        let old = t.register(now, Waiter::Task(None));
        t.cancel(old);
        let new = t.register(now, Waiter::Task(None));
        assert_eq!(old.index(), new.index(), "the slot is reused");
        assert!(!t.complete(old, CallOutcome::TimedOut));
        assert!(t.poll(new, &mut cx()).is_pending());
    }

    #[test]
    fn sweep_times_out_only_expired_calls() {
        let mut t = CallTable::new();
        let t0 = Instant::now();
        let a = t.register(t0 + Duration::from_millis(10), Waiter::Task(None));
        let b = t.register(t0 + Duration::from_millis(30), Waiter::Task(None));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert!(t.sweep(t0 + Duration::from_millis(5)).is_empty());
        t.sweep(t0 + Duration::from_millis(10));
        assert!(matches!(
            t.poll(a, &mut cx()),
            Poll::Ready(CallOutcome::TimedOut)
        ));
        assert!(t.poll(b, &mut cx()).is_pending());
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(30)));
    }
}
