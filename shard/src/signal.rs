//! How a shard's pump is woken on its own thread: a parked pump is poked (a local event needs
//! it: a flush, a changed deadline) or asked to submit queued network I/O at once.
//!
//! A leaf service: plain cells, used only on the shard's thread. Wake-ups from other threads
//! go through the shard's doorbell (`crate::rt::Bell`), not here.

use std::cell::{Cell, RefCell};
use std::task::Waker;

#[derive(Default)]
pub(crate) struct PumpSignal {
    waker: RefCell<Option<Waker>>,
    parked: Cell<bool>,
    poked: Cell<bool>,
    /// Set when a task queued network I/O: the pump makes a trip through the executor's wait
    /// at once (the submission happens there) instead of at its next periodic reap.
    io_kick: Cell<bool>,
}

impl PumpSignal {
    /// Wakes the pump if it is parked.
    #[inline]
    pub(crate) fn poke(&self) {
        if self.parked.get() && !self.poked.replace(true) {
            if let Some(w) = self.waker.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    /// Asks the pump to submit queued I/O now.
    #[inline]
    pub(crate) fn kick_io(&self) {
        self.io_kick.set(true);
    }

    /// True if I/O submission was asked for (and not yet taken).
    #[inline]
    pub(crate) fn io_kicked(&self) -> bool {
        self.io_kick.get()
    }

    /// Takes the I/O kick (true if there was one).
    #[inline]
    pub(crate) fn take_io_kick(&self) -> bool {
        self.io_kick.replace(false)
    }

    /// The pump is about to park (a poke from now on wakes it).
    pub(crate) fn park(&self) {
        self.parked.set(true);
    }

    /// The pump is running again (a poke it got is consumed).
    pub(crate) fn unpark(&self) {
        self.parked.set(false);
        self.poked.set(false);
    }

    /// True if the pump was poked since it announced its park.
    pub(crate) fn poked(&self) -> bool {
        self.poked.get()
    }

    /// Takes a poke (true if there was one).
    pub(crate) fn take_poke(&self) -> bool {
        self.poked.replace(false)
    }

    /// Remembers the parked pump's waker.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut w = self.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_poke_wakes_a_parked_pump_once_and_a_running_pump_never() {
        let s = PumpSignal::default();
        let c = Arc::new(Count(AtomicUsize::new(0)));
        s.register(&Waker::from(c.clone()));
        s.poke();
        assert_eq!(
            c.0.load(Ordering::Relaxed),
            0,
            "not parked: nothing to wake"
        );
        s.park();
        s.poke();
        s.poke();
        assert_eq!(c.0.load(Ordering::Relaxed), 1, "one wake per park");
        assert!(s.poked());
        s.unpark();
        assert!(!s.poked());
        s.kick_io();
        assert!(s.io_kicked());
        assert!(s.take_io_kick());
        assert!(!s.take_io_kick());
    }
}
