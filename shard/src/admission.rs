//! Admission from outside a shard: the injection queue of one shard, the bound on messages
//! from outside the node in flight to it, the waiters for that bound, and how callers outside
//! the node wait (asynchronously, woken when room frees up, or by parking their thread),
//! always with their deadline.
//!
//! Nothing here ever spins and nothing here blocks a shard's pump:
//! - [`Injector::push`] never waits: a message that finds the lock-free queue full goes to a
//!   locked overflow list the owner drains after the queue. What bounds the messages of
//!   callers outside the node is `external_inflight_max` (an admission slot is taken before
//!   the push and returned when the message's turn is done); the engine's own injections
//!   (spawns, cross-thread wakes, stats requests) are bounded by their callers.
//! - [`Injector::admit`] is the wait for an admission slot: a future, FIFO among waiters,
//!   woken by the owner shard when one of its outside-the-node turns ends. A waiter registers
//!   and then re-checks (so a slot freed in between is never missed); a waiter woken for a
//!   slot it then does not take (dropped, timed out) passes the wake-up on.
//! - A caller outside any shard cannot rely on an executor's timer (it may be polled by tokio,
//!   `block_on`, anything), so [`DeadlineTimer`] wakes it at its deadline from one lazily
//!   started process-wide thread (`quark-deadlines`) that sleeps on a condition variable.
//! - [`block_on_until`] drives a future on a plain thread by parking it (the `*_blocking`
//!   calls of `ActorRef`).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

/// Locks `m`, ignoring poisoning (no code holding these locks can panic half-way).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One shard's door for messages `M` from other threads (see the module doc).
pub(crate) struct Injector<M> {
    queue: ArrayQueue<M>,
    overflow: Mutex<VecDeque<M>>,
    /// Length of `overflow`, readable without the lock.
    overflowed: AtomicUsize,
    /// Messages from callers outside the node admitted and not yet done.
    inflight: AtomicUsize,
    inflight_max: usize,
    waiters: Mutex<Waiters>,
    /// True while `waiters` is not empty (read without the lock by the releasing shard).
    has_waiters: AtomicBool,
    /// Tests only: messages [`Injector::pop`] pushes between its look at the queue and its
    /// look at the overflow, as another thread could (a deterministic interleaving).
    #[cfg(test)]
    between_looks: Mutex<Vec<M>>,
}

#[derive(Default)]
struct Waiters {
    next_ticket: u64,
    list: VecDeque<(u64, Waker)>,
}

impl<M> Injector<M> {
    pub(crate) fn new(queue_capacity: usize, inflight_max: usize) -> Self {
        Injector {
            queue: ArrayQueue::new(queue_capacity.max(1)),
            overflow: Mutex::new(VecDeque::new()),
            overflowed: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            inflight_max: inflight_max.max(1),
            waiters: Mutex::new(Waiters::default()),
            has_waiters: AtomicBool::new(false),
            #[cfg(test)]
            between_looks: Mutex::new(Vec::new()),
        }
    }

    /// Queues `msg` for the owner shard. Never waits (see the module doc); the caller rings
    /// the owner's doorbell.
    /// Order: one thread's messages are popped in the order it pushed them (once something
    /// overflowed, later messages follow it into the overflow until the owner emptied it).
    pub(crate) fn push(&self, mut msg: M) {
        if self.overflowed.load(Ordering::Acquire) == 0 {
            match self.queue.push(msg) {
                Ok(()) => return,
                Err(back) => msg = back,
            }
        }
        let mut o = lock(&self.overflow);
        o.push_back(msg);
        self.overflowed.store(o.len(), Ordering::Release);
    }

    /// The next message for the owner shard (the queue first, then the overflow).
    pub(crate) fn pop(&self) -> Option<M> {
        if let Some(m) = self.queue.pop() {
            return Some(m);
        }
        #[cfg(test)]
        for m in std::mem::take(&mut *lock(&self.between_looks)) {
            self.push(m);
        }
        if self.overflowed.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut o = lock(&self.overflow);
        // The queue again, under the lock: it may have been refilled since it was found
        // empty above, and what is in it now was pushed before the overflow's front (a
        // producer goes to the overflow only once the queue is full or something already
        // overflowed), so it comes first. Without this, a producer could fill the queue
        // (`i`, `i + 1`) and overflow (`i + 2`) between the two looks, and `i + 2` would
        // overtake the two queued before it.
        if let Some(m) = self.queue.pop() {
            return Some(m);
        }
        let m = o.pop_front();
        self.overflowed.store(o.len(), Ordering::Release);
        m
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.overflowed.load(Ordering::Acquire) == 0
    }

    /// Takes an admission slot if one is free and nobody waits for one.
    pub(crate) fn try_admit(&self) -> bool {
        !self.has_waiters.load(Ordering::SeqCst) && self.take_slot()
    }

    fn take_slot(&self) -> bool {
        if self.inflight.fetch_add(1, Ordering::SeqCst) < self.inflight_max {
            true
        } else {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            false
        }
    }

    /// Waits for an admission slot (FIFO among waiters). Cancel safe.
    pub(crate) fn admit(&self) -> Admit<'_, M> {
        Admit {
            inj: self,
            ticket: None,
            done: false,
        }
    }

    /// A message admitted with [`Injector::admit`] is done: its slot goes to the first waiter.
    pub(crate) fn release(&self) {
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        // SeqCst on both sides: either this load sees a waiter that registered, or that
        // waiter's re-check (after it registered) sees the slot freed above.
        if self.has_waiters.load(Ordering::SeqCst) {
            self.wake_next();
        }
    }

    fn wake_next(&self) {
        let mut w = lock(&self.waiters);
        let next = w.list.pop_front();
        self.has_waiters.store(!w.list.is_empty(), Ordering::SeqCst);
        drop(w);
        if let Some((_, waker)) = next {
            waker.wake();
        }
    }

    /// Wakes every waiter (the node changed phase: they look at it and give up).
    pub(crate) fn wake_all(&self) {
        let mut w = lock(&self.waiters);
        let all: Vec<_> = w.list.drain(..).collect();
        self.has_waiters.store(false, Ordering::SeqCst);
        drop(w);
        for (_, waker) in all {
            waker.wake();
        }
    }

    /// Admission slots in use (for tests and stats).
    #[cfg(test)]
    fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }
}

/// The future of [`Injector::admit`]. Resolves once the caller holds a slot; the caller
/// returns it with [`Injector::release`] when the message is done.
pub(crate) struct Admit<'a, M> {
    inj: &'a Injector<M>,
    /// Our place in the waiter list, once we waited.
    ticket: Option<u64>,
    done: bool,
}

impl<M> Future for Admit<'_, M> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inj = self.inj;
        if self.ticket.is_none() && inj.try_admit() {
            self.done = true;
            return Poll::Ready(());
        }
        let mut w = lock(&inj.waiters);
        let pos = self
            .ticket
            .and_then(|t| w.list.iter().position(|(x, _)| *x == t));
        // Our turn: nobody waits, or we were woken (taken off the list), or we are first.
        let my_turn = match (self.ticket, pos) {
            (None, _) => w.list.is_empty(),
            (Some(_), None) | (Some(_), Some(0)) => true,
            (Some(_), Some(_)) => false,
        };
        if my_turn && inj.take_slot() {
            if let Some(i) = pos {
                w.list.remove(i);
            }
            inj.has_waiters.store(!w.list.is_empty(), Ordering::SeqCst);
            self.done = true;
            return Poll::Ready(());
        }
        match (pos, self.ticket) {
            (Some(i), _) => w.list[i].1.clone_from(cx.waker()),
            // Woken but beaten to the slot: back to the front, we were first.
            (None, Some(t)) => w.list.push_front((t, cx.waker().clone())),
            (None, None) => {
                let t = w.next_ticket;
                w.next_ticket += 1;
                self.ticket = Some(t);
                w.list.push_back((t, cx.waker().clone()));
            }
        }
        inj.has_waiters.store(true, Ordering::SeqCst);
        // Re-check after announcing ourselves: a slot freed before the releaser could see us
        // is taken now, not missed.
        if w.list.front().map(|(t, _)| Some(*t)) == Some(self.ticket) && inj.take_slot() {
            w.list.pop_front();
            inj.has_waiters.store(!w.list.is_empty(), Ordering::SeqCst);
            self.done = true;
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl<M> Drop for Admit<'_, M> {
    fn drop(&mut self) {
        let (Some(ticket), false) = (self.ticket, self.done) else {
            return;
        };
        let inj = self.inj;
        let mut w = lock(&inj.waiters);
        if let Some(i) = w.list.iter().position(|(x, _)| *x == ticket) {
            w.list.remove(i);
            inj.has_waiters.store(!w.list.is_empty(), Ordering::SeqCst);
        } else {
            // We were woken for a slot we will not take: wake the next waiter instead.
            drop(w);
            if inj.inflight.load(Ordering::SeqCst) < inj.inflight_max {
                inj.wake_next();
            }
        }
    }
}

// ---- deadlines for callers outside the node ----

/// The process-wide thread that wakes callers outside the node at their deadlines.
struct TimerThread {
    state: Mutex<TimerState>,
    cv: Condvar,
}

#[derive(Default)]
struct TimerState {
    next_id: u64,
    due: BTreeMap<(Instant, u64), Waker>,
}

fn timer_thread() -> &'static TimerThread {
    static TIMER: OnceLock<&'static TimerThread> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static TimerThread = Box::leak(Box::new(TimerThread {
            state: Mutex::new(TimerState::default()),
            cv: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("quark-deadlines".into())
            .spawn(move || timer_loop(t));
        if let Err(e) = spawned {
            // Without the thread, callers still see their deadline whenever they are polled
            // (and `*_blocking` callers park with a timeout); only the wake-up is missing.
            tracing::error!(error = %e, "cannot start the deadline thread");
        }
        t
    })
}

fn timer_loop(t: &'static TimerThread) {
    let mut st = lock(&t.state);
    loop {
        let now = Instant::now();
        let mut fire = Vec::new();
        while let Some(entry) = st.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            fire.push(entry.remove());
        }
        if !fire.is_empty() {
            drop(st);
            fire.into_iter().for_each(Waker::wake);
            st = lock(&t.state);
            continue;
        }
        st = match st.due.keys().next().map(|k| k.0) {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                t.cv.wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => t.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// A deadline for a future polled outside the node's shards: [`DeadlineTimer::poll_expired`]
/// is `Ready` once it passed, and the deadline thread wakes the task then.
pub(crate) struct DeadlineTimer {
    at: Instant,
    timeout: Duration,
    /// Wake through the deadline thread (false when the driver parks with a timeout itself).
    use_thread: bool,
    key: Option<(Instant, u64)>,
}

impl DeadlineTimer {
    /// A deadline `timeout` from now, woken through the deadline thread; or, with
    /// `parked_until`, that deadline, for a caller that parks until it by itself
    /// ([`block_on_until`] with the same deadline).
    pub(crate) fn new(timeout: Duration, parked_until: Option<Instant>) -> Self {
        DeadlineTimer {
            at: parked_until.unwrap_or_else(|| Instant::now() + timeout),
            timeout,
            use_thread: parked_until.is_none(),
            key: None,
        }
    }

    /// When it passes.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }

    /// The timeout it was made with.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `Ready` if the deadline passed; otherwise makes sure `cx` is woken at the deadline.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        if !self.use_thread {
            return Poll::Pending;
        }
        let t = timer_thread();
        let mut st = lock(&t.state);
        match self.key {
            Some(key) => {
                if let Some(w) = st.due.get_mut(&key) {
                    if !w.will_wake(cx.waker()) {
                        w.clone_from(cx.waker());
                    }
                } else {
                    // Fired between the clock read above and now: poll again.
                    cx.waker().wake_by_ref();
                }
            }
            None => {
                let key = (self.at, st.next_id);
                st.next_id += 1;
                let first = st.due.keys().next().is_none_or(|k| *k > key);
                st.due.insert(key, cx.waker().clone());
                self.key = Some(key);
                if first {
                    t.cv.notify_one();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            lock(&timer_thread().state).due.remove(&key);
        }
    }
}

/// Runs `fut` to completion on the calling thread, parking it (never spinning) between polls;
/// with `deadline`, it also wakes by itself at the deadline (the future must then resolve: the
/// `ActorRef` futures check their deadline on every poll).
pub(crate) fn block_on_until<F: Future>(fut: F, deadline: Option<Instant>) -> F::Output {
    struct Unpark {
        thread: std::thread::Thread,
        woken: AtomicBool,
    }
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.woken.store(true, Ordering::Release);
            self.thread.unpark();
        }
    }
    let unpark = Arc::new(Unpark {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let mut deadline = deadline;
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        // Park until woken (a spurious unpark only costs a poll).
        while !unpark.woken.swap(false, Ordering::Acquire) {
            match deadline {
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        // Poll once more at the deadline; after that, only wake-ups count
                        // (never a loop of polls).
                        deadline = None;
                        break;
                    }
                    std::thread::park_timeout(at - now);
                }
                None => std::thread::park(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> Context<'static> {
        Context::from_waker(futures::task::noop_waker_ref())
    }

    #[test]
    fn waiters_get_slots_in_order_and_a_dropped_woken_waiter_passes_it_on() {
        let inj = Injector::<u8>::new(4, 1);
        assert!(inj.try_admit());
        let mut a = Box::pin(inj.admit());
        let mut b = Box::pin(inj.admit());
        assert!(a.as_mut().poll(&mut noop()).is_pending());
        assert!(b.as_mut().poll(&mut noop()).is_pending());
        assert!(!inj.try_admit(), "no overtaking while others wait");
        inj.release();
        // `a` was woken for the slot; dropped without taking it, it hands it to `b`.
        drop(a);
        assert!(b.as_mut().poll(&mut noop()).is_ready());
        assert_eq!(inj.inflight(), 1);
        inj.release();
        assert_eq!(inj.inflight(), 0);
        assert!(inj.try_admit());
    }

    #[test]
    fn push_never_waits_and_pop_keeps_the_order_per_path() {
        let inj = Injector::<u8>::new(1, 1);
        for _ in 0..3 {
            inj.push(0u8);
        }
        assert!(!inj.is_empty());
        assert!(inj.pop().is_some() && inj.pop().is_some() && inj.pop().is_some());
        assert!(inj.pop().is_none() && inj.is_empty());
    }

    /// The interleaving that reordered one outside caller's tells (a failure of
    /// `tiny_rings_and_mailboxes_lose_nothing`, sender 2, two messages overtaken), made
    /// deterministic: the owner finds the queue empty; before it looks at the overflow, a
    /// producer pushes 0 and 1 (the queue, capacity 2, is then full) and 2 (the overflow).
    /// 0 must still come first.
    #[test]
    fn a_message_that_overflowed_does_not_overtake_the_queue_refilled_before_it() {
        let inj = Injector::<u64>::new(2, 1);
        lock(&inj.between_looks).extend([0, 1, 2]);
        let popped: Vec<u64> = std::iter::from_fn(|| inj.pop()).collect();
        assert_eq!(popped, [0, 1, 2]);
        assert!(inj.is_empty());
    }

    /// Per-producer order through a tiny queue while the owner pops concurrently: the
    /// queue fills and empties constantly, so messages take both paths (queue, overflow).
    /// Before `pop` re-checked the queue under the overflow lock, the owner could find the
    /// queue empty, a producer then fill it (messages `i`, `i + 1`) and overflow (`i + 2`),
    /// and the owner pop `i + 2` from the overflow ahead of the two in the queue.
    #[test]
    fn one_producers_messages_are_popped_in_the_order_pushed() {
        const PRODUCERS: u64 = 2;
        const PER: u64 = 50_000;
        let inj = Arc::new(Injector::<(u64, u64)>::new(2, 1));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let inj = inj.clone();
                std::thread::spawn(move || {
                    for i in 0..PER {
                        inj.push((p, i));
                        if i % 3 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = vec![0u64; PRODUCERS as usize];
        let mut got = 0;
        while got < PRODUCERS * PER {
            // The test's consumer polls (the owner shard waits on its doorbell instead).
            let Some((p, i)) = inj.pop() else {
                std::thread::yield_now();
                continue;
            };
            let want = &mut next[p as usize];
            assert_eq!(i, *want, "producer {p}: popped #{i} where #{want} was next");
            *want += 1;
            got += 1;
        }
        for h in producers {
            h.join().unwrap();
        }
        assert!(inj.pop().is_none() && inj.is_empty());
    }

    #[test]
    fn the_deadline_thread_wakes_a_blocked_poller() {
        let mut timer = DeadlineTimer::new(Duration::from_millis(20), None);
        let at = timer.at();
        futures::executor::block_on(std::future::poll_fn(|cx| timer.poll_expired(cx)));
        assert!(Instant::now() >= at);
    }
}
