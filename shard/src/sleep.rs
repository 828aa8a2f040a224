//! `quark_shard::sleep`: a task's wait on its shard's clock, to the microsecond.
//!
//! On a shard thread with the real clock, a sleep registers with the shard's sleepers
//! (`timers::Sleepers`); the pump wakes it when its deadline has passed, in the iteration that
//! sees it (a busy or spinning pump looks at least every `REAP_INTERVAL_SPIN`/`BATCH_TIME`), or
//! from its park, which sleeps on the shard's timerfd until the earliest deadline
//! (`rt::DeadlineTimer`). Elsewhere (another thread, or a shard under a `ManualClock`, whose
//! shard time a test moves) it is the executor's sleep, rounded up to the millisecond.
//!
//! Never early: the future completes only once `Instant::now()` has reached `start + d`,
//! whatever woke it. Cancel safety: dropping it forgets the sleeper; nothing else changes.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::shard::Shard;

/// The future of [`crate::sleep`].
pub(crate) enum Sleep {
    /// On the shard's sleepers.
    Shard {
        shard: Rc<Shard>,
        due: Instant,
        /// The sleeper's id once registered (at the first poll that finds it not yet due).
        id: Option<u64>,
    },
    /// On the executor's timer.
    Executor(Pin<Box<dyn Future<Output = ()>>>),
}

/// Sleeps for `d` (see the module doc).
pub(crate) fn sleep(d: Duration) -> Sleep {
    match crate::engine::shared::current_any() {
        Some(shard) if shard.node.config.clock.is_real() => Sleep::Shard {
            shard,
            due: Instant::now() + d,
            id: None,
        },
        _ => Sleep::Executor(Box::pin(crate::rt::sleep(d))),
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Sleep::Executor(f) => f.as_mut().poll(cx),
            Sleep::Shard { shard, due, id } => {
                if Instant::now() >= *due {
                    *id = None; // woken, or due before it was ever registered: nothing to forget
                    return Poll::Ready(());
                }
                let mut sleepers = shard.sleepers.borrow_mut();
                match id {
                    Some(i) if sleepers.set_waker(*i, cx.waker()) => {}
                    // Not registered yet, or woken early by another wake-up of this task (a
                    // woken sleeper is gone): register for the deadline.
                    _ => *id = Some(sleepers.add(*due, cx.waker().clone())),
                }
                // No poke needed: this runs on the shard's thread within a pump iteration, and
                // the pump reads its next deadline (this one included) when it parks.
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Sleep::Shard {
            shard,
            id: Some(id),
            ..
        } = self
        {
            // `try_borrow_mut`: a sleep dropped while the sleepers are borrowed (by nothing
            // today) leaves a stale entry whose waker is dropped when it comes due.
            if let Ok(mut s) = shard.sleepers.try_borrow_mut() {
                s.cancel(*id);
            }
        }
    }
}
