//! The shard's own task scheduler: activations and tasks spawned on a shard run here, inside
//! the pump, not as executor tasks.
//!
//! Why not spawn them on the executor: monoio's run loop enters the kernel (`io_uring_enter`)
//! after every couple of task polls while tasks stay runnable, so a request that hops between
//! two tasks (a caller and an activation) paid about one system call per hop. Here a hop is a
//! push onto a `VecDeque`; the pump runs ready tasks in batches and returns to the executor
//! only to park or to reap I/O completions (see `core::pump`).
//!
//! Tasks are polled with a real [`Waker`] (an `Arc`, so it may be sent to other threads). A wake
//! on the owning shard's thread queues the task directly; a wake from any other thread is sent
//! to the owning shard as a message through its injection queue (rare: the engine's own wakes
//! all happen on the owning thread).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use quark_placement::ShardId;

/// Where the wake-up of a shard's task goes: the engine implements it (on the owning shard's
/// thread, into its scheduler; from any other thread, through the shard's injection queue).
/// The scheduler itself knows nothing of the engine.
pub(crate) trait WakeRoute: Send + Sync + 'static {
    fn wake(&self, shard: ShardId, task: TaskRef);
}

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

struct Task {
    future: RefCell<Option<BoxFuture>>,
    queued: Cell<bool>,
    waker: Waker,
}

struct Slot {
    gen: u32,
    task: Option<Rc<Task>>,
}

/// A task's identity on its shard: slot index and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TaskRef {
    index: u32,
    gen: u32,
}

/// The scheduler of one shard (see the module doc).
pub(crate) struct Scheduler<R: WakeRoute> {
    shard: ShardId,
    route: Arc<R>,
    ready: RefCell<VecDeque<TaskRef>>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    live: Cell<usize>,
    /// Task polls made so far: a task's poll is an epoch for budgets counted per poll (the
    /// direct turns a task may run before it must let other tasks run).
    polls: Cell<u64>,
}

/// Generic over the route (not `dyn`): a wake is on every ask's path, and the engine's route
/// inlines here.
struct TaskWaker<R: WakeRoute> {
    route: Arc<R>,
    shard: ShardId,
    task: TaskRef,
}

impl<R: WakeRoute> Wake for TaskWaker<R> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.route.wake(self.shard, self.task);
    }
}

impl<R: WakeRoute> Scheduler<R> {
    pub(crate) fn new(shard: ShardId, route: Arc<R>) -> Self {
        Scheduler {
            shard,
            route,
            ready: RefCell::new(VecDeque::new()),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            live: Cell::new(0),
            polls: Cell::new(0),
        }
    }

    /// Task polls made so far (see the field).
    #[inline]
    pub(crate) fn polls(&self) -> u64 {
        self.polls.get()
    }

    /// Number of tasks alive (spawned and not finished).
    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    /// True if some task is ready to run.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.borrow().is_empty()
    }

    /// Spawns `fut` on this shard; it first runs at the pump's next batch.
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                slots.push(Slot { gen: 0, task: None });
                u32::try_from(slots.len() - 1).expect("fewer than 2^32 tasks per shard")
            }
        };
        let slot = &mut slots[index as usize];
        slot.gen = slot.gen.wrapping_add(1);
        let task_ref = TaskRef {
            index,
            gen: slot.gen,
        };
        let waker = Waker::from(Arc::new(TaskWaker {
            route: self.route.clone(),
            shard: self.shard,
            task: task_ref,
        }));
        slot.task = Some(Rc::new(Task {
            future: RefCell::new(Some(Box::pin(fut))),
            queued: Cell::new(true),
            waker,
        }));
        drop(slots);
        self.live.set(self.live.get() + 1);
        self.ready.borrow_mut().push_back(task_ref);
    }

    /// Queues task `task_ref` (woken) to run at the next batch, unless it is queued or gone.
    pub(crate) fn schedule(&self, task_ref: TaskRef) {
        let slots = self.slots.borrow();
        let Some(Slot {
            gen,
            task: Some(task),
        }) = slots.get(task_ref.index as usize)
        else {
            return;
        };
        if *gen != task_ref.gen || task.queued.replace(true) {
            return;
        }
        drop(slots);
        self.ready.borrow_mut().push_back(task_ref);
    }

    /// Polls ready tasks in rounds (a round: the tasks ready when it starts; a task woken during
    /// a round runs in the next one) until none is ready, `budget` polls were made, or
    /// `interrupt()` says other work is waiting (checked between rounds). So a task that keeps
    /// waking itself gets one poll per round and cannot hold the pump away from its rings.
    /// Returns how many tasks were polled.
    pub(crate) fn run_ready(&self, budget: usize, mut interrupt: impl FnMut() -> bool) -> usize {
        let mut polled = 0;
        loop {
            let round = self.ready.borrow().len();
            if round == 0 || polled >= budget {
                return polled;
            }
            for _ in 0..round {
                let Some(task_ref) = self.ready.borrow_mut().pop_front() else {
                    break;
                };
                polled += 1;
                self.poll_one(task_ref);
            }
            if interrupt() {
                return polled;
            }
        }
    }

    fn poll_one(&self, task_ref: TaskRef) {
        let task = {
            let slots = self.slots.borrow();
            match slots.get(task_ref.index as usize) {
                Some(Slot {
                    gen,
                    task: Some(task),
                }) if *gen == task_ref.gen => task.clone(),
                _ => return,
            }
        };
        task.queued.set(false);
        self.polls.set(self.polls.get() + 1);
        let done = {
            let mut slot = task.future.borrow_mut();
            let Some(fut) = slot.as_mut() else { return };
            let mut cx = Context::from_waker(&task.waker);
            match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
                Ok(Poll::Ready(())) => true,
                Ok(Poll::Pending) => false,
                Err(payload) => {
                    tracing::error!(
                        shard = self.shard,
                        panic = %crate::turn::panic_message(&*payload),
                        "a task spawned on the shard panicked; it is dropped"
                    );
                    true
                }
            }
        };
        if done {
            self.finish(task_ref, &task);
        }
    }

    fn finish(&self, task_ref: TaskRef, task: &Rc<Task>) {
        // Drop the future outside of any borrow of the slots: its destructor may spawn or wake.
        let fut = task.future.borrow_mut().take();
        drop(fut);
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[task_ref.index as usize];
        if slot.gen == task_ref.gen && slot.task.is_some() {
            slot.task = None;
            self.free.borrow_mut().push(task_ref.index);
            self.live.set(self.live.get() - 1);
        }
    }

    /// Drops every task (at shard stop). Futures are dropped outside of the slot borrow.
    pub(crate) fn clear(&self) {
        let tasks: Vec<Rc<Task>> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(|s| s.task.take())
            .collect();
        self.ready.borrow_mut().clear();
        for t in tasks {
            let fut = t.future.borrow_mut().take();
            drop(fut);
        }
        self.live.set(0);
    }
}

/// Why a future spawned with [`EngineHandle::spawn_on`](crate::EngineHandle::spawn_on) produced
/// no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The future (or the closure that made it) panicked; the shard dropped it and runs on.
    #[error("the task spawned on shard {shard} panicked: {message}")]
    Panicked {
        /// The shard it ran on.
        shard: ShardId,
        /// The panic's message and, where known, its location (`"boom at src/lib.rs:7:9"`).
        message: String,
    },
    /// The shard stopped (node shutdown, or a stopped shard thread) before the future finished;
    /// it was dropped unfinished, or never started.
    #[error("shard {shard} stopped before the spawned task finished")]
    ShardStopped {
        /// The shard.
        shard: ShardId,
    },
}

/// Runs `make()` and awaits its future, sending the output, or the panic's message, to `tx`.
/// A dropped `tx` (the shard stopped first) tells the handle the shard stopped.
pub(crate) async fn run_caught<F, Fut>(
    make: F,
    tx: futures::channel::oneshot::Sender<Result<Fut::Output, String>>,
) where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    use futures::FutureExt;
    let out = match catch_unwind(AssertUnwindSafe(make)) {
        Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
        Err(payload) => Err(payload),
    };
    let out = out.map_err(|payload| crate::turn::caught_panic_message(&*payload));
    let _ = tx.send(out);
}

/// Resolves with the output of a future spawned by
/// [`EngineHandle::spawn_on`](crate::EngineHandle::spawn_on) (await it, or [`SpawnHandle::join`]
/// from a plain thread). Dropping it detaches the task: it still runs to completion.
pub struct SpawnHandle<T> {
    shard: ShardId,
    rx: futures::channel::oneshot::Receiver<Result<T, String>>,
}

impl<T> SpawnHandle<T> {
    pub(crate) fn new(
        shard: ShardId,
        rx: futures::channel::oneshot::Receiver<Result<T, String>>,
    ) -> Self {
        SpawnHandle { shard, rx }
    }

    /// Blocks the calling thread (not a shard thread) until the future finished: its output,
    /// or why there is none (it panicked, or its shard stopped first).
    pub fn join(self) -> Result<T, JoinError> {
        futures::executor::block_on(self)
    }

    fn outcome(
        shard: ShardId,
        r: Result<Result<T, String>, futures::channel::oneshot::Canceled>,
    ) -> Result<T, JoinError> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(message)) => Err(JoinError::Panicked { shard, message }),
            Err(futures::channel::oneshot::Canceled) => Err(JoinError::ShardStopped { shard }),
        }
    }
}

impl<T> Future for SpawnHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>> {
        let shard = self.shard;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| Self::outcome(shard, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::shared::NodeShared;
    use crate::{EngineBuilder, EngineConfig, ShardSpec};

    /// The log of a test: what ran, and `|` at each end of a round.
    type Log = Rc<RefCell<Vec<String>>>;

    /// A scheduler driven by the test, on the test thread. Its tasks never call their
    /// wakers (those would route to the engine's shard); a wake is `schedule(task_ref)`, which
    /// is what the waker does on the owning thread.
    fn with_scheduler(f: impl FnOnce(&Rc<Scheduler<NodeShared>>)) {
        let engine = EngineBuilder::new(EngineConfig {
            shards: ShardSpec::Count(1),
            pin_threads: false,
            idle_spin: std::time::Duration::ZERO,
            ..EngineConfig::default()
        })
        .start()
        .expect("the engine starts");
        let exec = Rc::new(Scheduler::new(0, engine.handle().shared.clone()));
        f(&exec);
        exec.clear();
        engine.shutdown();
    }

    /// Spawns a task and returns its identity (the task just queued).
    fn spawn(exec: &Scheduler<NodeShared>, fut: impl Future<Output = ()> + 'static) -> TaskRef {
        exec.spawn(fut);
        *exec
            .ready
            .borrow()
            .back()
            .expect("a spawned task is queued")
    }

    /// A task that logs `name#n` at its n-th poll, runs `on_poll(n)` and finishes at poll
    /// `polls` (never, for `u32::MAX`).
    fn task(
        log: &Log,
        name: &'static str,
        polls: u32,
        mut on_poll: impl FnMut(u32) + 'static,
    ) -> impl Future<Output = ()> + 'static {
        let log = log.clone();
        let mut n = 0;
        std::future::poll_fn(move |_| {
            n += 1;
            log.borrow_mut().push(format!("{name}#{n}"));
            on_poll(n);
            if n >= polls {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn run(exec: &Scheduler<NodeShared>, log: &Log, budget: usize) -> usize {
        exec.run_ready(budget, || {
            log.borrow_mut().push("|".into());
            false
        })
    }

    fn taken(log: &Log) -> Vec<String> {
        std::mem::take(&mut *log.borrow_mut())
    }

    #[test]
    fn ready_tasks_run_in_fifo_order() {
        with_scheduler(|exec| {
            let log = Log::default();
            for name in ["a", "b", "c"] {
                exec.spawn(task(&log, name, 1, |_| {}));
            }
            assert_eq!(exec.live(), 3);
            assert_eq!(run(exec, &log, 100), 3);
            assert_eq!(taken(&log), ["a#1", "b#1", "c#1", "|"]);
            assert_eq!(exec.live(), 0, "finished tasks are freed");
            assert!(!exec.has_ready());
        });
    }

    #[test]
    fn a_task_woken_during_a_round_runs_in_the_next_round() {
        with_scheduler(|exec| {
            let log = Log::default();
            let b = spawn(exec, task(&log, "b", 2, |_| {}));
            let waker = exec.clone();
            exec.spawn(task(&log, "a", 1, move |_| {
                // Wake b twice: it is queued once.
                waker.schedule(b);
                waker.schedule(b);
            }));
            assert_eq!(run(exec, &log, 100), 3);
            assert_eq!(taken(&log), ["b#1", "a#1", "|", "b#2", "|"]);
            assert_eq!(exec.live(), 0);
        });
    }

    #[test]
    fn a_self_waking_task_gets_one_poll_per_round() {
        with_scheduler(|exec| {
            let log = Log::default();
            let me = Rc::new(Cell::new(None));
            let (waker, slot) = (exec.clone(), me.clone());
            me.set(Some(spawn(
                exec,
                task(&log, "spin", u32::MAX, move |_| {
                    waker.schedule(slot.get().expect("set after spawn"))
                }),
            )));
            // The pump's interrupt (work in its rings) is consulted after every poll of the
            // spinning task: here the third look finds work.
            let mut looks = 0;
            let polled = exec.run_ready(100, || {
                looks += 1;
                log.borrow_mut().push("|".into());
                looks == 3
            });
            assert_eq!(polled, 3);
            assert_eq!(taken(&log), ["spin#1", "|", "spin#2", "|", "spin#3", "|"]);
            assert!(exec.has_ready(), "it runs again at the next batch");
        });
    }

    #[test]
    fn the_budget_is_checked_between_rounds() {
        with_scheduler(|exec| {
            let log = Log::default();
            for name in ["a", "b", "c"] {
                let me = Rc::new(Cell::new(None));
                let (waker, slot) = (exec.clone(), me.clone());
                me.set(Some(spawn(
                    exec,
                    task(&log, name, u32::MAX, move |_| {
                        waker.schedule(slot.get().expect("set after spawn"))
                    }),
                )));
            }
            // Budget 4 with rounds of 3: a second round starts (3 < 4) and is not cut short.
            assert_eq!(run(exec, &log, 4), 6);
            assert_eq!(
                taken(&log),
                ["a#1", "b#1", "c#1", "|", "a#2", "b#2", "c#2", "|"]
            );
            assert!(exec.has_ready(), "the tasks stay queued for the next batch");
            assert_eq!(run(exec, &log, 1), 3, "one more round");
            assert_eq!(
                exec.run_ready(0, || false),
                0,
                "a zero budget polls nothing"
            );
        });
    }

    #[test]
    fn an_interrupt_stops_between_rounds() {
        with_scheduler(|exec| {
            let log = Log::default();
            let b = spawn(exec, task(&log, "b", 2, |_| {}));
            let waker = exec.clone();
            exec.spawn(task(&log, "a", 1, move |_| waker.schedule(b)));
            assert_eq!(exec.run_ready(100, || true), 2, "one round, then stop");
            assert_eq!(taken(&log), ["b#1", "a#1"]);
            assert!(exec.has_ready(), "b waits for the next batch");
        });
    }

    #[test]
    fn a_stale_wake_does_not_reach_a_reused_slot() {
        with_scheduler(|exec| {
            let log = Log::default();
            let old = spawn(exec, task(&log, "old", 1, |_| {}));
            run(exec, &log, 100);
            let new = spawn(exec, task(&log, "new", 2, |_| {}));
            assert_eq!(new.index, old.index, "the slot is reused");
            assert_ne!(new.gen, old.gen);
            taken(&log);
            run(exec, &log, 100);
            exec.schedule(old);
            assert!(!exec.has_ready(), "a wake of the finished task is ignored");
            exec.schedule(new);
            run(exec, &log, 100);
            assert_eq!(taken(&log), ["new#1", "|", "new#2", "|"]);
        });
    }

    #[test]
    fn a_panicking_task_is_dropped_and_the_others_run() {
        with_scheduler(|exec| {
            let log = Log::default();
            exec.spawn(task(&log, "boom", 1, |_| panic!("task panic")));
            exec.spawn(task(&log, "ok", 1, |_| {}));
            assert_eq!(run(exec, &log, 100), 2);
            assert_eq!(taken(&log), ["boom#1", "ok#1", "|"]);
            assert_eq!(exec.live(), 0, "the panicked task was freed");
        });
    }
}
