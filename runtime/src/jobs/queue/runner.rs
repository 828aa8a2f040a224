//! The runner task: polls the running handlers and reports their outcomes to the scheduler.

use super::*;

impl ShardQueue {
    /// The runner: polls every running handler; records each outcome for the scheduler.
    pub(super) async fn run_runner(self: Rc<Self>) {
        let mut running = FuturesUnordered::new();
        let this = Rc::clone(&self);
        futures::future::poll_fn(move |cx| {
            loop {
                let new = std::mem::take(&mut this.st.borrow_mut().to_run);
                for (ctl, handler, payload, timeout) in new {
                    running.push(run_attempt(ctl, handler, payload, timeout));
                }
                let mut any = false;
                while let Poll::Ready(Some((id, outcome))) = running.poll_next_unpin(cx) {
                    this.st.borrow_mut().outcomes.push((id, outcome));
                    any = true;
                }
                if any {
                    this.sched.notify();
                }
                if this.st.borrow().stopped {
                    return Poll::Ready(());
                }
                // Register for new work, then check once more that none arrived meanwhile.
                if this.runner.flag.replace(false) || !this.st.borrow().to_run.is_empty() {
                    continue;
                }
                *this.runner.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
        })
        .await;
        drop(self);
    }
}

/// Runs one attempt: the handler against cancellation and the timeout.
pub(super) async fn run_attempt(
    ctl: Rc<RunCtl>,
    handler: DynHandler,
    payload: Vec<u8>,
    timeout_ms: u64,
) -> (u64, Outcome) {
    let id = ctl.id.0;
    let ctx = JobContext {
        ctl: Rc::clone(&ctl),
    };
    let work = std::panic::AssertUnwindSafe(handler(&payload, ctx)).catch_unwind();
    let c2 = Rc::clone(&ctl);
    let cancelled = futures::future::poll_fn(move |cx| {
        if c2.cancelled.get() {
            Poll::Ready(())
        } else {
            *c2.cancel_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    });
    let overall = async move {
        if timeout_ms == 0 {
            cancelled.await;
            None
        } else {
            match select(
                Box::pin(cancelled),
                Box::pin(quark_shard::sleep(Duration::from_millis(timeout_ms))),
            )
            .await
            {
                Either::Left(_) => None,
                Either::Right(_) => Some(Outcome::TimedOut(timeout_ms)),
            }
        }
    };
    let stop = select(
        Box::pin(overall),
        Box::pin(supervise_heartbeats(Rc::clone(&ctl))),
    )
    .map(|e| e.factor_first().0);
    let outcome = match select(Box::pin(work), Box::pin(stop)).await {
        Either::Left((Ok(Ok(())), _)) => Outcome::Ok,
        Either::Left((Ok(Err(f)), _)) => Outcome::Failed(f),
        Either::Left((Err(panic), _)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Outcome::Failed(JobFailure::retry(format!("the handler panicked: {msg}")))
        }
        Either::Right((None, _)) => Outcome::Cancelled,
        Either::Right((Some(timed_out), _)) => timed_out,
    };
    // A cancel that raced the end of the handler wins: the caller asked for it.
    let outcome = if ctl.cancelled.get() && !matches!(outcome, Outcome::Ok) {
        Outcome::Cancelled
    } else {
        outcome
    };
    (id, outcome)
}

/// The interval between two `Heartbeat` records of one attempt at least: a quarter of the
/// heartbeat timeout, or 1 s for a job without one.
fn heartbeat_write_interval(heartbeat_timeout_ms: u64) -> Duration {
    if heartbeat_timeout_ms == 0 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis((heartbeat_timeout_ms / 4).max(1))
    }
}

/// Watches an attempt's heartbeats: resolves with [`Outcome::HeartbeatTimedOut`] once the
/// handler has not heartbeated for the job's heartbeat timeout (never, without one), and
/// meanwhile writes the latest details, throttled (see `JobContext::heartbeat`). Dropped with
/// the attempt; an append dropped in flight is written whole or not at all.
async fn supervise_heartbeats(ctl: Rc<RunCtl>) -> Option<Outcome> {
    let timeout = Duration::from_millis(ctl.heartbeat_timeout_ms);
    let interval = heartbeat_write_interval(ctl.heartbeat_timeout_ms);
    // Before the first write, a heartbeat is written at once.
    let mut last_write: Option<std::time::Instant> = None;
    loop {
        let now = std::time::Instant::now();
        let (last_beat, dirty) = {
            let b = ctl.beat.borrow();
            (b.last, b.dirty)
        };
        if ctl.heartbeat_timeout_ms > 0 && now.duration_since(last_beat) >= timeout {
            return Some(Outcome::HeartbeatTimedOut(ctl.heartbeat_timeout_ms));
        }
        let write_at = last_write.map(|w| w + interval);
        if dirty && write_at.is_none_or(|t| t <= now) {
            let beat = {
                let mut b = ctl.beat.borrow_mut();
                b.dirty = false;
                b.latest.clone()
            };
            if let Some(beat) = beat {
                let mut batch = Batch::new();
                batch.event(
                    &job_key(ctl.id.0),
                    &record::encode(&JobRecord::Heartbeat {
                        attempt: beat.attempt,
                        at_ms: beat.at_ms,
                        details: beat.details,
                    }),
                );
                if let Err(e) = ctl.log.append(&batch).await {
                    // The details stay in memory; the next heartbeat tries again.
                    tracing::warn!(job = %ctl.id, error = %crate::ErrorChain(&e), "writing a heartbeat failed");
                }
            }
            last_write = Some(now);
            continue;
        }
        // Sleep until the heartbeat deadline, or the next write if details wait for one; a
        // heartbeat with details to write (and none waiting) wakes us early.
        let mut wake = if ctl.heartbeat_timeout_ms > 0 {
            Some(last_beat + timeout)
        } else {
            None
        };
        if dirty {
            if let Some(t) = write_at {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        }
        match wake {
            Some(t) => {
                let sleep = quark_shard::sleep(t.saturating_duration_since(now));
                if dirty {
                    sleep.await;
                } else {
                    let _ = select(Box::pin(sleep), Box::pin(ctl.beat_notify.wait())).await;
                }
            }
            None => ctl.beat_notify.wait().await,
        }
    }
}
