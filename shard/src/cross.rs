//! The cross-shard transport service of one shard: its outgoing rings (with an overflow queue
//! each), its incoming rings, and flow control (credits for requests it sends, credits it owes
//! for tells it handled).
//!
//! A leaf service: generic over the message type `M`, it knows nothing of actors, of the shard
//! container or of the engine. The shard container ([`crate::shard::Shard`]) pokes its pump when
//! [`CrossShard::send`] reports the transport became dirty, and hands [`CrossShard::flush`] a
//! way to ring a peer's doorbell and to make a credit message.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use quark_placement::ShardId;

use crate::ring::{Consumer, Producer};

/// The outgoing side of one ring, with an overflow queue for when the ring is full. The
/// overflow is bounded by the credits of the peer (requests) and by the peer's credits for us
/// (replies), so it cannot grow without bound.
pub(crate) struct Outgoing<M> {
    producer: Producer<M>,
    overflow: VecDeque<M>,
}

impl<M> Outgoing<M> {
    pub(crate) fn new(producer: Producer<M>) -> Self {
        Outgoing {
            producer,
            overflow: VecDeque::new(),
        }
    }
}

/// One shard's end of every ring (see the module doc).
pub(crate) struct CrossShard<M> {
    me: ShardId,
    /// Per target shard (`None` for this shard itself).
    outgoing: Vec<Option<RefCell<Outgoing<M>>>>,
    incoming: RefCell<Vec<Consumer<M>>>,
    /// Per target shard: requests this shard may still send to it.
    credits: Vec<Cell<u32>>,
    credit_waiters: RefCell<Vec<VecDeque<(u64, Waker)>>>,
    /// Per target shard: tickets of woken waiters a returned credit was handed to (already
    /// taken from `credits`), until they are polled. At most the credit count.
    credit_granted: RefCell<Vec<Vec<u64>>>,
    next_credit_ticket: Cell<u64>,
    /// Per source shard: tells handled whose credit has not been sent back yet.
    owed: Vec<Cell<u32>>,
    /// Something waits to be published (a message, overflow, or owed credits).
    dirty: Cell<bool>,
    /// Senders that had to wait for a credit (a counter for the shard's stats).
    credit_waits: Cell<u64>,
}

impl<M> CrossShard<M> {
    /// The transport of shard `me`: `outgoing[i]` is the producer of the ring to shard `i`
    /// (`None` at `me`), `incoming` the consumers of the rings to `me`; `credit` requests may be
    /// in flight to each peer.
    pub(crate) fn new(
        me: ShardId,
        outgoing: Vec<Option<Producer<M>>>,
        incoming: Vec<Consumer<M>>,
        credit: u32,
    ) -> Self {
        let n = outgoing.len();
        CrossShard {
            me,
            outgoing: outgoing
                .into_iter()
                .map(|p| p.map(|p| RefCell::new(Outgoing::new(p))))
                .collect(),
            incoming: RefCell::new(incoming),
            credits: (0..n).map(|_| Cell::new(credit)).collect(),
            credit_waiters: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            credit_granted: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            next_credit_ticket: Cell::new(0),
            owed: (0..n).map(|_| Cell::new(0)).collect(),
            dirty: Cell::new(false),
            credit_waits: Cell::new(0),
        }
    }

    /// Queues `msg` for shard `to`; it becomes visible to `to` at the next [`Self::flush`].
    /// Returns true if the transport just became dirty (the caller wakes its pump).
    #[inline]
    #[must_use]
    pub(crate) fn send(&self, to: ShardId, msg: M) -> bool {
        let cell = self.outgoing[usize::from(to)]
            .as_ref()
            .expect("a shard never sends to itself through a ring");
        let mut out = cell.borrow_mut();
        if out.overflow.is_empty() {
            if let Err(msg) = out.producer.try_push(msg) {
                out.overflow.push_back(msg);
            }
        } else {
            out.overflow.push_back(msg);
        }
        drop(out);
        !self.dirty.replace(true)
    }

    /// Notes one handled tell from `from` whose credit is owed (sent back at the next flush).
    /// Returns true if the transport just became dirty.
    #[inline]
    #[must_use]
    pub(crate) fn owe_credit(&self, from: ShardId) -> bool {
        let owed = &self.owed[usize::from(from)];
        owed.set(owed.get() + 1);
        !self.dirty.replace(true)
    }

    /// True if something waits to be published.
    #[inline]
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.get()
    }

    /// Publishes every outgoing ring (overflow first) and the owed credits, as messages made by
    /// `credit(from, count)`; `ring_bell(to)` is called for each peer that may be parked and
    /// has new messages. What does not fit stays queued and the transport stays dirty.
    pub(crate) fn flush(&self, credit: impl Fn(ShardId, u32) -> M, ring_bell: impl Fn(usize)) {
        if !self.dirty.replace(false) {
            return;
        }
        for (to, owed) in self.owed.iter().enumerate() {
            let count = owed.replace(0);
            if count > 0 {
                let _ = self.send(to as ShardId, credit(self.me, count));
            }
        }
        self.dirty.set(false);
        for (to, cell) in self.outgoing.iter().enumerate() {
            let Some(cell) = cell else { continue };
            let mut out = cell.borrow_mut();
            while let Some(msg) = out.overflow.pop_front() {
                if let Err(msg) = out.producer.try_push(msg) {
                    out.overflow.push_front(msg);
                    break;
                }
            }
            if !out.overflow.is_empty() {
                // Retry at the next flush.
                self.dirty.set(true);
            }
            if out.producer.publish() {
                ring_bell(to);
            }
            debug_assert_eq!(out.producer.unpublished(), 0);
        }
    }

    /// Hands every message waiting in the incoming rings to `run`, at most `per_ring` from each
    /// ring (so one busy peer cannot starve the others). Returns the number handed.
    #[inline]
    pub(crate) fn drain(&self, per_ring: usize, mut run: impl FnMut(M)) -> usize {
        let mut handled = 0;
        let n = self.incoming.borrow().len();
        for i in 0..n {
            for _ in 0..per_ring {
                // The borrow ends before `run`, which may send (not receive) on this transport.
                let msg = self.incoming.borrow_mut()[i].pop();
                let Some(msg) = msg else { break };
                run(msg);
                handled += 1;
            }
            self.incoming.borrow_mut()[i].release();
        }
        handled
    }

    /// True if an incoming ring has a published message.
    #[inline]
    pub(crate) fn has_incoming(&self) -> bool {
        self.incoming.borrow().iter().any(Consumer::has_pending)
    }

    /// Takes one credit to send a request to `to`, waiting (FIFO) while none is left.
    pub(crate) fn acquire_credit(&self, to: ShardId) -> CreditWait<'_, M> {
        CreditWait {
            cross: self,
            to,
            ticket: None,
            done: false,
        }
    }

    /// Takes one credit for `to` if one is free and nobody waits for one (no future needed).
    #[inline]
    pub(crate) fn try_acquire_credit(&self, to: ShardId) -> bool {
        let cell = &self.credits[usize::from(to)];
        if cell.get() > 0 && self.credit_waiters.borrow()[usize::from(to)].is_empty() {
            cell.set(cell.get() - 1);
            true
        } else {
            false
        }
    }

    /// `count` requests to `from` are finished: their credits come back. Each goes to the
    /// first waiter, if any, directly (taken from the count on its behalf): a sender of this
    /// shard that runs before the woken waiter is polled cannot take it (issue 11: such a
    /// sender took every returned credit, and a waiter starved for seconds).
    pub(crate) fn return_credits(&self, from: ShardId, count: u32) {
        let to = usize::from(from);
        let cell = &self.credits[to];
        cell.set(cell.get() + count);
        let mut woken = Vec::new();
        {
            let mut waiters = self.credit_waiters.borrow_mut();
            let mut granted = self.credit_granted.borrow_mut();
            for _ in 0..count {
                match waiters[to].pop_front() {
                    Some((ticket, w)) => {
                        cell.set(cell.get() - 1);
                        granted[to].push(ticket);
                        woken.push(w);
                    }
                    None => break,
                }
            }
        }
        for w in woken {
            w.wake();
        }
    }

    /// Senders that had to wait for a credit so far.
    pub(crate) fn credit_waits(&self) -> u64 {
        self.credit_waits.get()
    }

    /// Messages waiting in this shard's inbound rings: published by their sender, not yet
    /// consumed here (read on this shard, for the stats snapshot).
    pub(crate) fn incoming_len(&self) -> usize {
        self.incoming
            .borrow()
            .iter()
            .map(Consumer::published_unread)
            .sum()
    }

    /// Messages waiting in the overflow queues (their ring was full when they were sent).
    pub(crate) fn overflow_len(&self) -> usize {
        self.outgoing
            .iter()
            .flatten()
            .map(|o| o.borrow().overflow.len())
            .sum()
    }

    #[cfg(test)]
    fn credits_free(&self, to: ShardId) -> u32 {
        self.credits[usize::from(to)].get()
    }
}

/// The future of [`CrossShard::acquire_credit`]: FIFO among waiters. Cancel safe: a waiter
/// dropped before it got its credit leaves the queue, and if it had been woken for a credit it
/// did not take, it passes the wake-up on.
pub(crate) struct CreditWait<'a, M> {
    cross: &'a CrossShard<M>,
    to: ShardId,
    /// Our place in the waiter queue, once we waited.
    ticket: Option<u64>,
    done: bool,
}

impl<M> Future for CreditWait<'_, M> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let to = usize::from(self.to);
        let cross = self.cross;
        if let Some(t) = self.ticket {
            // A returned credit was handed to us (see `return_credits`).
            let mut granted = cross.credit_granted.borrow_mut();
            if let Some(i) = granted[to].iter().position(|x| *x == t) {
                granted[to].swap_remove(i);
                self.done = true;
                return Poll::Ready(());
            }
        }
        let cell = &cross.credits[to];
        let mut all = cross.credit_waiters.borrow_mut();
        let queue = &mut all[to];
        let queued_at = self
            .ticket
            .and_then(|t| queue.iter().position(|(x, _)| *x == t));
        // Our turn: nobody waits, or we were woken (popped from the queue), or we are first.
        let my_turn = match (self.ticket, queued_at) {
            (None, _) => queue.is_empty(),
            (Some(_), None) | (Some(_), Some(0)) => true,
            (Some(_), Some(_)) => false,
        };
        if cell.get() > 0 && my_turn {
            cell.set(cell.get() - 1);
            if let Some(i) = queued_at {
                queue.remove(i);
            }
            self.done = true;
            return Poll::Ready(());
        }
        match (queued_at, self.ticket) {
            (Some(i), _) => queue[i].1.clone_from(cx.waker()),
            // Woken but beaten to the credit: back to the front, we were first.
            (None, Some(t)) => queue.push_front((t, cx.waker().clone())),
            (None, None) => {
                cross.credit_waits.set(cross.credit_waits.get() + 1);
                let t = cross.next_credit_ticket.get();
                cross.next_credit_ticket.set(t + 1);
                self.ticket = Some(t);
                queue.push_back((t, cx.waker().clone()));
            }
        }
        Poll::Pending
    }
}

impl<M> Drop for CreditWait<'_, M> {
    fn drop(&mut self) {
        let (Some(ticket), false) = (self.ticket, self.done) else {
            return;
        };
        let to = usize::from(self.to);
        let mut all = self.cross.credit_waiters.borrow_mut();
        let queue = &mut all[to];
        if let Some(i) = queue.iter().position(|(x, _)| *x == ticket) {
            queue.remove(i);
            return;
        }
        let mut granted = self.cross.credit_granted.borrow_mut();
        if let Some(i) = granted[to].iter().position(|x| *x == ticket) {
            // We were handed a credit we will not use: it goes to the next waiter, or back.
            granted[to].swap_remove(i);
            drop((granted, all));
            self.cross.return_credits(self.to, 1);
        } else if self.cross.credits[to].get() > 0 {
            // We were woken for a credit we did not take: wake the next waiter instead.
            if let Some((_, w)) = queue.pop_front() {
                w.wake();
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::ring;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    #[derive(Debug, PartialEq)]
    enum Msg {
        Data(u32),
        Credit { from: ShardId, count: u32 },
    }

    /// Two shards' transports joined by real rings of capacity `cap`.
    fn pair(cap: usize, credit: u32) -> (CrossShard<Msg>, CrossShard<Msg>) {
        let (p01, c01) = ring(cap);
        let (p10, c10) = ring(cap);
        let a = CrossShard::new(0, vec![None, Some(p01)], vec![c10], credit);
        let b = CrossShard::new(1, vec![Some(p10), None], vec![c01], credit);
        (a, b)
    }

    fn credit(from: ShardId, count: u32) -> Msg {
        Msg::Credit { from, count }
    }

    fn drain_all(t: &CrossShard<Msg>) -> Vec<Msg> {
        let mut got = Vec::new();
        while t.drain(64, |m| got.push(m)) > 0 {}
        got
    }

    #[test]
    fn messages_arrive_in_order_after_flush_and_overflow_is_kept() {
        let (a, b) = pair(4, 100);
        assert!(
            a.send(1, Msg::Data(0)),
            "the first send makes the transport dirty"
        );
        for i in 1..10 {
            assert!(!a.send(1, Msg::Data(i)), "already dirty");
        }
        assert!(!b.has_incoming(), "nothing is visible before the flush");
        assert_eq!(
            b.incoming_len(),
            0,
            "unpublished messages are not in the ring yet"
        );
        let rung = AtomicUsize::new(0);
        a.flush(credit, |to| {
            assert_eq!(to, 1);
            rung.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(rung.load(Ordering::Relaxed), 1);
        assert!(a.is_dirty(), "six messages did not fit in the ring of four");
        assert_eq!(b.incoming_len(), 4, "the ring of four is full, unread");
        let mut got = drain_all(&b);
        assert_eq!(b.incoming_len(), 0, "drained");
        a.flush(credit, |_| {});
        got.extend(drain_all(&b));
        a.flush(credit, |_| {});
        got.extend(drain_all(&b));
        assert!(!a.is_dirty());
        assert_eq!(got, (0..10).map(Msg::Data).collect::<Vec<_>>());
    }

    #[test]
    fn owed_credits_travel_as_one_message_per_peer() {
        let (a, b) = pair(8, 100);
        assert!(b.owe_credit(0));
        assert!(!b.owe_credit(0));
        assert!(!b.owe_credit(0));
        b.flush(credit, |_| {});
        assert_eq!(drain_all(&a), vec![Msg::Credit { from: 1, count: 3 }]);
        b.flush(credit, |_| {});
        assert!(drain_all(&a).is_empty(), "owed credits are sent once");
    }

    struct Flag(AtomicUsize);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll<F: Future + Unpin>(f: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
        let waker = Waker::from(flag.clone());
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn credits_are_handed_to_waiters_in_order_and_a_dropped_waiter_passes_its_credit_on() {
        let (a, _b) = pair(8, 1);
        assert!(a.try_acquire_credit(1));
        assert!(!a.try_acquire_credit(1), "one credit only");
        let (f1, f2, f3) = (
            Arc::new(Flag(AtomicUsize::new(0))),
            Arc::new(Flag(AtomicUsize::new(0))),
            Arc::new(Flag(AtomicUsize::new(0))),
        );
        let mut w1 = a.acquire_credit(1);
        let mut w2 = a.acquire_credit(1);
        let mut w3 = a.acquire_credit(1);
        assert!(poll(&mut w1, &f1).is_pending());
        assert!(poll(&mut w2, &f2).is_pending());
        assert!(poll(&mut w3, &f3).is_pending());
        assert_eq!(a.credit_waits(), 3);
        // A later sender cannot jump the queue.
        a.return_credits(1, 1);
        assert!(
            !a.try_acquire_credit(1),
            "the credit went to the first waiter"
        );
        assert_eq!(
            f1.0.load(Ordering::Relaxed),
            1,
            "the first waiter was woken"
        );
        assert_eq!(f2.0.load(Ordering::Relaxed), 0);
        // The first waiter gives up: its credit goes to the second.
        drop(w1);
        assert_eq!(f2.0.load(Ordering::Relaxed), 1);
        assert!(poll(&mut w2, &f2).is_ready());
        assert!(poll(&mut w3, &f3).is_pending());
        drop(w2);
        a.return_credits(1, 1);
        assert!(poll(&mut w3, &f3).is_ready());
        drop(w3);
        a.return_credits(1, 1);
        assert_eq!(a.credits_free(1), 1, "every credit came back");
    }
}
