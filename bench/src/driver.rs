//! `loadgen`'s request loops, the open-loop pacer and the hard stop, generic over the request
//! so that they can be tested without a node.
//!
//! A shard runs `loops` request loops. Closed loop: each loop sends its next request when the
//! previous one completed, until the window's end; latency is measured from the send. Open
//! loop: request `i` of the shard is due at `start + i * interval`; one free loop at a time
//! takes the next slot and waits for it (the others queue behind it), sends, and the latency
//! is measured from the *scheduled* time (coordinated-omission correction): when every loop
//! is busy the schedule slips, and the slip shows in the latency. No request is sent before
//! its scheduled time. What counts is decided by [`crate::window`]; at the window's hard stop
//! the loops stop waiting, and the requests still in flight (or due in the window and never
//! sent) are recorded as late.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::Either;

use crate::window::{Recorder, Sample, Window, LATENCY_NS_MAX};

/// How the open loop waits for a request's scheduled time.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pacer {
    /// The executor's timer, then yield until due (precise sends; the yielding perturbs the shard).
    Spin,
    /// The executor's timer only (millisecond resolution; sends up to ~1 ms late).
    Timer,
}

/// What one shard's loops do.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// When the schedule (and the warm-up) starts.
    pub start: Instant,
    /// The measured window.
    pub window: Window,
    /// Nanoseconds between scheduled requests on this shard; `None` = closed loop.
    pub interval_ns: Option<f64>,
    /// Open loop: how to wait for a scheduled time.
    pub pacer: Pacer,
    /// Request loops (requests in flight at most).
    pub loops: usize,
}

/// What one shard's loops measured.
#[derive(Debug)]
pub struct Outcome {
    /// The counted requests.
    pub rec: Recorder,
    /// The longest latency of any request of the run (warm-up and tail included), and when
    /// that request's latency started.
    pub max_any: Option<(u64, Instant)>,
    /// Completed requests of the whole run.
    pub completed: u64,
    /// Failed requests of the whole run.
    pub errors_total: u64,
    /// The first failure's text.
    pub first_error: Option<String>,
}

/// Waits until `t`: the executor's timer for the coarse part (it has millisecond resolution),
/// then (`Pacer::Spin`) yields to the shard's other tasks until `t` passes. Never returns
/// before `t`.
pub async fn wait_until(t: Instant, pacer: Pacer) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let left = t - now;
        if pacer == Pacer::Timer {
            monoio::time::sleep(left).await;
        } else if left > Duration::from_millis(2) {
            monoio::time::sleep(left - Duration::from_millis(1)).await;
        } else {
            YieldNow(false).await;
        }
    }
}

/// Returns `Pending` once (after waking itself), so other tasks of the shard run.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Fired at the run's hard stop: request loops stop waiting for their request.
struct Stop {
    fired: Cell<bool>,
    /// One slot per request loop (bounded by the loop count): the loop's waker while it waits.
    wakers: RefCell<Vec<Option<Waker>>>,
}

impl Stop {
    fn fire(&self) {
        self.fired.set(true);
        let woken: Vec<Waker> = self
            .wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in woken {
            w.wake();
        }
    }
}

/// Resolves when `Stop` fires (for request loop `slot`).
struct StopWait<'a> {
    stop: &'a Stop,
    slot: usize,
}

impl Future for StopWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stop.fired.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.stop.wakers.borrow_mut();
        match &mut wakers[self.slot] {
            Some(w) => w.clone_from(cx.waker()),
            empty => *empty = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Shard-local state shared by the shard's request loops.
struct Shared<'a> {
    plan: Plan,
    /// Open loop: index of the next request to schedule.
    next: Cell<u64>,
    /// Open loop: held by the loop waiting for the next scheduled time.
    turn: futures::lock::Mutex<()>,
    rec: RefCell<Recorder>,
    max_any: Cell<Option<(u64, Instant)>>,
    completed: Cell<u64>,
    errors_total: Cell<u64>,
    first_error: RefCell<Option<String>>,
    stop: Stop,
    on_complete: &'a dyn Fn(u64),
}

impl Shared<'_> {
    fn due(&self, i: u64, interval: f64) -> Instant {
        self.plan.start + Duration::from_nanos((i as f64 * interval) as u64)
    }

    /// Keeps the longest latency of the whole run (counted or not).
    fn note_latency(&self, from: Instant, done: Instant) {
        let ns = (done.saturating_duration_since(from).as_nanos() as u64).min(LATENCY_NS_MAX);
        if self.max_any.get().is_none_or(|(m, _)| ns > m) {
            self.max_any.set(Some((ns, from)));
        }
    }

    fn record(&self, s: Sample, error: Option<String>) {
        let n = self.completed.get() + 1;
        self.completed.set(n);
        (self.on_complete)(n);
        if let Some(e) = error {
            self.errors_total.set(self.errors_total.get() + 1);
            self.first_error.borrow_mut().get_or_insert(e);
        }
        self.note_latency(s.from, s.done);
        self.rec.borrow_mut().record(s);
    }

    /// A request measured from `from` still incomplete (or unsent) at the hard stop (`now`).
    fn record_late(&self, from: Instant, now: Instant) {
        self.note_latency(from, now);
        self.rec.borrow_mut().record_late(from, now);
    }

    /// The time the loop's next request's latency starts from, or `None` when the run is over.
    /// Open loop: waits until then.
    async fn next_due(&self) -> Option<Instant> {
        let Some(interval) = self.plan.interval_ns else {
            let now = Instant::now();
            return (now < self.plan.window.end && !self.stop.fired.get()).then_some(now);
        };
        // One free loop at a time takes the next slot of the schedule and waits for it; the
        // others queue behind it, so a shard has at most one waiter spinning.
        let _turn = self.turn.lock().await;
        let i = self.next.get();
        let due = self.due(i, interval);
        if due >= self.plan.window.end {
            return None;
        }
        let now = Instant::now();
        if self.stop.fired.get() || now >= self.plan.window.hard_stop() {
            // The hard stop passed before these scheduled requests could be sent: they are
            // late (never sent), not dropped.
            let mut j = i;
            while self.due(j, interval) < self.plan.window.end {
                self.record_late(self.due(j, interval), now);
                j += 1;
            }
            self.next.set(j);
            return None;
        }
        self.next.set(i + 1);
        wait_until(due, self.plan.pacer).await;
        Some(due)
    }
}

async fn request_loop<F, Fut, E>(d: &Shared<'_>, slot: usize, op: &F)
where
    F: Fn(usize, u64, Instant) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut k = 0;
    while let Some(from) = d.next_due().await {
        let sent = Instant::now();
        let stop = StopWait {
            stop: &d.stop,
            slot,
        };
        match futures::future::select(std::pin::pin!(op(slot, k, from)), stop).await {
            Either::Left((outcome, _)) => {
                let done = Instant::now();
                let error = outcome.err().map(|e| e.to_string());
                let ok = error.is_none();
                d.record(
                    Sample {
                        from,
                        sent,
                        done,
                        ok,
                    },
                    error,
                );
            }
            Either::Right(((), _)) => {
                d.record_late(from, Instant::now());
                return;
            }
        }
        k += 1;
    }
}

/// Runs one shard's request loops on the current monoio runtime until the run is over:
/// `op(loop, k, from)` is loop `loop`'s `k`-th request, whose latency is measured from `from`
/// (the scheduled time in an open loop); `on_complete(n)` is called with the shard's count of
/// completed requests after each. Waits for the loops' last requests until the window's hard
/// stop, then records those still in flight as late.
pub async fn drive<F, Fut, E>(plan: Plan, op: F, on_complete: &dyn Fn(u64)) -> Outcome
where
    F: Fn(usize, u64, Instant) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    assert!(plan.loops > 0, "a shard runs at least one request loop");
    let d = Shared {
        plan,
        next: Cell::new(0),
        turn: futures::lock::Mutex::new(()),
        rec: RefCell::new(Recorder::new(plan.window)),
        max_any: Cell::new(None),
        completed: Cell::new(0),
        errors_total: Cell::new(0),
        first_error: RefCell::new(None),
        stop: Stop {
            fired: Cell::new(false),
            wakers: RefCell::new(vec![None; plan.loops]),
        },
        on_complete,
    };
    wait_until(plan.start, Pacer::Timer).await;
    {
        let (d, op) = (&d, &op);
        let all = futures::future::join_all((0..plan.loops).map(|i| request_loop(d, i, op)));
        let mut all = std::pin::pin!(all);
        let left = plan
            .window
            .hard_stop()
            .saturating_duration_since(Instant::now());
        let watchdog = std::pin::pin!(monoio::time::sleep(left));
        if let Either::Right(((), rest)) = futures::future::select(all.as_mut(), watchdog).await {
            d.stop.fire();
            rest.await;
        }
    }
    Outcome {
        rec: d.rec.into_inner(),
        max_any: d.max_any.get(),
        completed: d.completed.get(),
        errors_total: d.errors_total.get(),
        first_error: d.first_error.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a monoio runtime with a timer builds")
    }

    fn plan(interval_ms: Option<f64>, loops: usize, warm_ms: u64, window_ms: u64) -> Plan {
        let start = Instant::now() + Duration::from_millis(5);
        let warm_end = start + Duration::from_millis(warm_ms);
        Plan {
            start,
            window: Window {
                warm_end,
                end: warm_end + Duration::from_millis(window_ms),
                grace: Duration::from_millis(200),
            },
            interval_ns: interval_ms.map(|ms| ms * 1e6),
            pacer: Pacer::Spin,
            loops,
        }
    }

    fn ms(ns: u64) -> f64 {
        ns as f64 / 1e6
    }

    /// No request is sent before its scheduled time, and exactly the requests scheduled in
    /// the window count: 100 at 1 ms intervals in a 100 ms window, whatever the machine load.
    #[test]
    fn the_open_loop_never_sends_early_and_counts_exactly_the_window() {
        let p = plan(Some(1.0), 4, 30, 100);
        let early = Cell::new(0u32);
        let sent = Cell::new(0u64);
        let out = runtime().block_on(drive(
            p,
            |_, _, from| {
                sent.set(sent.get() + 1);
                if Instant::now() < from {
                    early.set(early.get() + 1);
                }
                async { Ok::<(), String>(()) }
            },
            &|_| {},
        ));
        assert_eq!(early.get(), 0, "requests sent before their scheduled time");
        // Scheduled: 0 .. 130 ms, one per ms (131 or 130 with float rounding at the end).
        assert!((130..=131).contains(&sent.get()), "sent {}", sent.get());
        assert_eq!(out.rec.hist.len() + out.rec.errors, 100);
        assert_eq!(out.rec.late, 0);
        assert_eq!(out.completed, sent.get());
    }

    /// One request stalls 50 ms with one loop: the requests scheduled during the stall are
    /// sent after it, and their latency (from the schedule) shows it — ~50 of them above
    /// 25 ms, not only the stalled one.
    #[test]
    fn a_stall_shows_in_the_latency_of_the_requests_scheduled_behind_it() {
        let p = plan(Some(1.0), 1, 10, 200);
        let stall_at = p.window.warm_end + Duration::from_millis(50);
        let stalled = Cell::new(false);
        let out = runtime().block_on(drive(
            p,
            |_, _, from| {
                let stall = from >= stall_at && !stalled.replace(true);
                async move {
                    if stall {
                        monoio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok::<(), String>(())
                }
            },
            &|_| {},
        ));
        let h = &out.rec.hist;
        assert!(ms(h.max()) >= 50.0, "max {} ms", ms(h.max()));
        let behind = h.count_between(25_000_000, LATENCY_NS_MAX);
        assert!(behind >= 20, "{behind} requests of >= 25 ms");
        assert_eq!(h.len(), 200);
    }

    /// The slowest requests of the window's end complete after it: they count.
    #[test]
    fn a_request_scheduled_at_the_end_of_the_window_counts_when_it_completes_after_it() {
        let p = plan(Some(1.0), 2, 10, 50);
        let last = p.window.end - Duration::from_millis(2);
        let out = runtime().block_on(drive(
            p,
            |_, _, from| async move {
                if from >= last {
                    monoio::time::sleep(Duration::from_millis(60)).await;
                }
                Ok::<(), String>(())
            },
            &|_| {},
        ));
        assert!(
            ms(out.rec.hist.max()) >= 60.0,
            "max {}",
            ms(out.rec.hist.max())
        );
        assert_eq!(out.rec.hist.len(), 50);
    }

    /// A request that never completes is late at the hard stop, and the run still ends.
    #[test]
    fn a_request_that_never_completes_is_late_at_the_hard_stop() {
        for interval in [None, Some(1.0)] {
            let p = plan(interval, 3, 10, 40);
            let hung = Cell::new(false);
            let t0 = Instant::now();
            let out = runtime().block_on(drive(
                p,
                |_, _, from| {
                    let hang = from >= p.window.warm_end && !hung.replace(true);
                    async move {
                        if hang {
                            futures::future::pending::<()>().await;
                        }
                        monoio::time::sleep(Duration::from_micros(200)).await;
                        Ok::<(), String>(())
                    }
                },
                &|_| {},
            ));
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the run did not stop"
            );
            assert_eq!(out.rec.late, 1, "interval {interval:?}");
            let lower = p.window.hard_stop() - p.window.warm_end;
            assert!(out.rec.hist.max() as u128 >= lower.as_nanos() * 9 / 10);
        }
    }
}
