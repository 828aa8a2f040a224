//! The shard clock: where a shard's *time* comes from (the `now` of timers, call deadlines and
//! idle sweeps, and [`crate::Context::now`]).
//!
//! By default it is the real monotonic clock. A test can give the engine a [`ManualClock`]
//! instead (`EngineConfig::clock`) and move shard time forward with [`ManualClock::advance`],
//! so timer, deadline and retry tests advance time instead of sleeping.
//!
//! Shard time under a manual clock is real time plus everything advanced so far: it still
//! flows, so a test picks periods long enough that real time alone cannot reach the next due
//! (a test that runs for milliseconds and uses one-hour intervals is exact). The pump's own
//! pacing (idle spin, reaps, socket polls) stays on real time whatever the clock.
//!
//! Advancing does not wake a parked shard: it sees the new time at its next pump iteration,
//! which any message to it starts (an `ask` or `tell`), and which happens anyway within the
//! shard's idle-sweep period (at most one second).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The clock shards read their time from (see the module doc). `Clock::default()` is the real
/// clock.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<ManualClock>,
}

impl Clock {
    /// The real monotonic clock (`Instant::now()`).
    pub fn real() -> Self {
        Clock { manual: None }
    }

    /// True if this is the real clock.
    pub fn is_real(&self) -> bool {
        self.manual.is_none()
    }

    /// Shard time now.
    pub fn now(&self) -> Instant {
        self.at(Instant::now())
    }

    /// Shard time at the real instant `real` (the pump reads the real clock once per iteration
    /// and maps it here).
    #[inline]
    pub(crate) fn at(&self, real: Instant) -> Instant {
        match &self.manual {
            None => real,
            Some(m) => real + m.advanced(),
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Self {
        Clock {
            manual: Some(manual),
        }
    }
}

/// A clock that a test moves forward (see the module doc). Clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    /// Nanoseconds advanced so far.
    advanced_ns: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock that reads real time until advanced.
    pub fn new() -> Self {
        ManualClock::default()
    }

    /// Moves time forward by `by` for every shard that uses this clock.
    ///
    /// # Panics
    /// If the total advanced exceeds `u64::MAX` nanoseconds (about 584 years).
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).expect("advance by less than 584 years");
        let before = self.advanced_ns.fetch_add(ns, Ordering::SeqCst);
        assert!(
            before.checked_add(ns).is_some(),
            "a manual clock advanced by more than 584 years in total"
        );
    }

    /// How far this clock has been advanced in total.
    pub fn advanced(&self) -> Duration {
        Duration::from_nanos(self.advanced_ns.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_clock_is_the_identity() {
        let c = Clock::default();
        assert!(c.is_real());
        let t = Instant::now();
        assert_eq!(c.at(t), t);
    }

    #[test]
    fn manual_clock_adds_what_was_advanced_for_every_clone() {
        let m = ManualClock::new();
        let c = Clock::from(m.clone());
        let t = Instant::now();
        assert_eq!(c.at(t), t);
        m.advance(Duration::from_secs(3));
        m.clone().advance(Duration::from_millis(500));
        assert_eq!(c.at(t), t + Duration::from_millis(3_500));
        assert_eq!(m.advanced(), Duration::from_millis(3_500));
        assert!(c.now() >= t + Duration::from_millis(3_500));
    }
}
