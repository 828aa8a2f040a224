//! Per-shard actor timers: one-shot and interval, fired by the shard's pump from the shard's
//! clock. A firing does not run user code here: it enqueues a tick message into the owning
//! activation's mailbox, so the tick runs as an ordinary turn.
//!
//! Also the shard's *sleepers* ([`Sleepers`]): tasks waiting in `quark_shard::sleep`, woken by
//! the pump at their deadline to the microsecond (the parked pump sleeps on a `timerfd` until
//! the earliest deadline of both sets: see `rt::DeadlineTimer`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::task::Waker;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

/// Identifies a timer on its node: the shard that armed it first numbers it, in a range of its
/// own (the shard index in the top 16 bits), so an id stays valid and unique when its timer
/// moves to another shard with its actor (`migrate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

/// What a firing does; returns `false` when its target is gone (the timer is then dropped).
pub(crate) type Fire = Box<dyn FnMut() -> bool>;

struct Entry {
    due: Instant,
    period: Option<Duration>,
    fire: Fire,
}

/// Stale heap entries tolerated beyond the live timers before a cancel rebuilds the heap.
const HEAP_SLACK: usize = 64;

/// The shard's timers (see the module doc).
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    entries: FxHashMap<u64, Entry>,
    next_id: u64,
}

impl Timers {
    /// The timers of shard `shard` (its ids are `shard << 48 | n`, `n` from 1).
    pub(crate) fn new(shard: u16) -> Self {
        Timers {
            heap: BinaryHeap::new(),
            entries: FxHashMap::default(),
            next_id: (u64::from(shard) << 48) | 1,
        }
    }

    /// Adds a timer first due at `due`, repeating every `period` if given.
    pub(crate) fn add(&mut self, due: Instant, period: Option<Duration>, fire: Fire) -> TimerId {
        let id = TimerId(self.next_id);
        self.next_id += 1;
        self.insert(id, due, period, fire);
        id
    }

    /// Adds a timer under an id numbered by another shard (its actor moved here). Ids are
    /// unique on the node, so it cannot collide with one of this shard's.
    pub(crate) fn insert(
        &mut self,
        id: TimerId,
        due: Instant,
        period: Option<Duration>,
        fire: Fire,
    ) {
        debug_assert!(
            !self.entries.contains_key(&id.0),
            "timer ids are unique on the node"
        );
        self.heap.push(Reverse((due, id.0)));
        self.entries.insert(id.0, Entry { due, period, fire });
    }

    /// Cancels a timer; returns whether it existed. Its heap entry becomes stale; once stale
    /// entries outnumber live timers (plus a small slack), the heap is rebuilt from the live
    /// timers, so the heap holds at most about twice the live timers whatever the churn
    /// (amortised O(1) per cancel).
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let existed = self.entries.remove(&id.0).is_some();
        if existed && self.heap.len() > 2 * self.entries.len() + HEAP_SLACK {
            self.rebuild_heap();
        }
        existed
    }

    /// Drops the stale heap entries: one entry per live timer, at its due time.
    fn rebuild_heap(&mut self) {
        let live: Vec<Reverse<(Instant, u64)>> = self
            .entries
            .iter()
            .map(|(&id, e)| Reverse((e.due, id)))
            .collect();
        self.heap = BinaryHeap::from(live);
    }

    /// When a live timer is next due (`None`: fired and gone, or cancelled).
    pub(crate) fn due(&self, id: TimerId) -> Option<Instant> {
        self.entries.get(&id.0).map(|e| e.due)
    }

    /// Number of live timers.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Number of heap entries, live and stale (bounded by `2 * len() + HEAP_SLACK`).
    pub(crate) fn heap_len(&self) -> usize {
        self.heap.len()
    }

    /// The next due time, if any (may be a cancelled timer's: firing it is a no-op).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes the next timer due at or before `now`, if any. The caller runs it and hands it
    /// back with [`Timers::rearm`].
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(u64, Fire)> {
        while let Some(Reverse((due, id))) = self.heap.peek().copied() {
            if due > now {
                return None;
            }
            self.heap.pop();
            match self.entries.get_mut(&id) {
                Some(e) if e.due == due => {
                    let fire = std::mem::replace(&mut e.fire, Box::new(|| false));
                    return Some((id, fire));
                }
                _ => continue, // cancelled, or a stale heap entry
            }
        }
        None
    }

    /// Returns a fired timer: interval timers are rescheduled (from `now`, so a stalled shard
    /// does not fire a burst of catch-up ticks), one-shots and timers whose target is gone are
    /// removed.
    pub(crate) fn rearm(&mut self, id: u64, fire: Fire, alive: bool, now: Instant) {
        let Some(e) = self.entries.get_mut(&id) else {
            return; // cancelled by the tick's own turn? (cannot: ticks run later) or by a peer
        };
        match (alive, e.period) {
            (true, Some(period)) => {
                e.due = now + period;
                e.fire = fire;
                self.heap.push(Reverse((e.due, id)));
            }
            _ => {
                self.entries.remove(&id);
            }
        }
    }
}

/// Tasks sleeping until a deadline on this shard (`quark_shard::sleep`). Kept apart from the
/// actor timers: a sleeper only wakes a task, and it does not count as an actor timer in the
/// shard's statistics.
pub(crate) struct Sleepers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    wakers: FxHashMap<u64, Waker>,
    next_id: u64,
}

impl Sleepers {
    pub(crate) fn new() -> Self {
        Sleepers {
            heap: BinaryHeap::new(),
            wakers: FxHashMap::default(),
            next_id: 1,
        }
    }

    /// Registers a task to wake at `due`; returns the sleeper's id.
    pub(crate) fn add(&mut self, due: Instant, waker: Waker) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.heap.push(Reverse((due, id)));
        self.wakers.insert(id, waker);
        id
    }

    /// Replaces the waker of a sleeper still waiting (a re-poll from another task context);
    /// false if it was woken already (or cancelled).
    pub(crate) fn set_waker(&mut self, id: u64, waker: &Waker) -> bool {
        match self.wakers.get_mut(&id) {
            Some(w) => {
                if !w.will_wake(waker) {
                    w.clone_from(waker);
                }
                true
            }
            None => false,
        }
    }

    /// Forgets a sleeper (its future was dropped). Stale heap entries are bounded as for the
    /// timers: at most about twice the live sleepers plus a small slack.
    pub(crate) fn cancel(&mut self, id: u64) {
        if self.wakers.remove(&id).is_some() && self.heap.len() > 2 * self.wakers.len() + HEAP_SLACK
        {
            self.heap
                .retain(|Reverse((_, id))| self.wakers.contains_key(id));
        }
    }

    /// The earliest deadline, if any (may be a cancelled sleeper's).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes the wakers of the sleepers due at or before `now` (the caller wakes them once no
    /// borrow is held).
    pub(crate) fn take_due(&mut self, now: Instant, out: &mut Vec<Waker>) {
        while let Some(Reverse((due, id))) = self.heap.peek().copied() {
            if due > now {
                return;
            }
            self.heap.pop();
            if let Some(w) = self.wakers.remove(&id) {
                out.push(w);
            }
        }
    }

    /// Number of live sleepers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.wakers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn set_cancel_churn_keeps_the_heap_bounded() {
        let mut t = Timers::new(0);
        let t0 = Instant::now();
        let keep = t.add(t0 + Duration::from_secs(1), None, Box::new(|| true));
        for i in 0..1_000_000u64 {
            let id = t.add(t0 + Duration::from_secs(60 + i), None, Box::new(|| true));
            assert!(t.cancel(id));
            assert!(t.heap_len() <= 2 * t.len() + HEAP_SLACK + 1);
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_due(), Some(t0 + Duration::from_secs(1)));
        assert!(t.cancel(keep));
    }

    #[test]
    fn one_shot_interval_and_cancel() {
        let mut t = Timers::new(0);
        let t0 = Instant::now();
        let hits = Rc::new(Cell::new(0u32));
        let h = hits.clone();
        let once = t.add(
            t0 + Duration::from_millis(5),
            None,
            Box::new(move || {
                h.set(h.get() + 1);
                true
            }),
        );
        let h = hits.clone();
        let every = t.add(
            t0 + Duration::from_millis(10),
            Some(Duration::from_millis(10)),
            Box::new(move || {
                h.set(h.get() + 100);
                true
            }),
        );
        let run = |t: &mut Timers, now| {
            while let Some((id, mut f)) = t.pop_due(now) {
                let alive = f();
                t.rearm(id, f, alive, now);
            }
        };
        run(&mut t, t0 + Duration::from_millis(4));
        assert_eq!(hits.get(), 0);
        run(&mut t, t0 + Duration::from_millis(10));
        assert_eq!(hits.get(), 101);
        assert_eq!(t.len(), 1, "the one-shot is gone");
        assert!(!t.cancel(once));
        run(&mut t, t0 + Duration::from_millis(20));
        assert_eq!(hits.get(), 201);
        assert!(t.cancel(every));
        run(&mut t, t0 + Duration::from_millis(40));
        assert_eq!(hits.get(), 201, "a cancelled interval does not fire");
    }

    #[test]
    fn sleepers_wake_at_their_deadline_never_before() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut s = Sleepers::new();
        let t0 = Instant::now();
        let a = s.add(t0 + Duration::from_micros(300), waker.clone());
        let b = s.add(t0 + Duration::from_micros(100), waker.clone());
        let c = s.add(t0 + Duration::from_micros(200), waker.clone());
        assert_eq!(s.next_due(), Some(t0 + Duration::from_micros(100)));
        s.cancel(c);
        let mut out = Vec::new();
        s.take_due(t0 + Duration::from_micros(99), &mut out);
        assert!(out.is_empty(), "nothing is due a microsecond early");
        s.take_due(t0 + Duration::from_micros(250), &mut out);
        assert_eq!(
            out.len(),
            1,
            "the 100 us sleeper; the cancelled 200 us one is skipped"
        );
        assert!(!s.set_waker(b, &waker), "a woken sleeper is gone");
        assert!(s.set_waker(a, &waker));
        out.drain(..).for_each(Waker::wake);
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        s.take_due(t0 + Duration::from_micros(300), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn sleeper_churn_keeps_the_heap_bounded() {
        let waker = Waker::noop().clone();
        let mut s = Sleepers::new();
        let t0 = Instant::now();
        for i in 0..100_000u64 {
            let id = s.add(t0 + Duration::from_secs(60 + i), waker.clone());
            s.cancel(id);
            assert!(s.heap.len() <= 2 * s.len() + HEAP_SLACK + 1);
        }
    }
}
