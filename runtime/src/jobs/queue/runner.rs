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
    let stop = async move {
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
                Either::Right(_) => Some(timeout_ms),
            }
        }
    };
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
        Either::Right((Some(ms), _)) => Outcome::TimedOut(ms),
    };
    // A cancel that raced the end of the handler wins: the caller asked for it.
    let outcome = if ctl.cancelled.get() && !matches!(outcome, Outcome::Ok) {
        Outcome::Cancelled
    } else {
        outcome
    };
    (id, outcome)
}
