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

/// A shard's reading of its [`Clock`]: the time read once per pump iteration (refreshed by
/// asks' turns), and a cheap test of whether a deadline has passed. Lives on the shard's
/// thread (plain cells).
pub(crate) struct ShardClock {
    clock: Clock,
    now: std::cell::Cell<Instant>,
    /// `now` as µs since `origin`: an integer for cheap differences (ask latencies).
    now_us: std::cell::Cell<u64>,
    origin: Instant,
    /// `coarse_ns()` read just after `now`.
    coarse_at_now: std::cell::Cell<u64>,
}

impl ShardClock {
    pub(crate) fn new(clock: Clock) -> Self {
        let now = clock.now();
        ShardClock {
            now: std::cell::Cell::new(now),
            now_us: std::cell::Cell::new(0),
            origin: now,
            coarse_at_now: std::cell::Cell::new(coarse_ns()),
            clock,
        }
    }

    /// Shard time as last read, in µs since the shard started (for differences: two readings
    /// subtract without `Instant` arithmetic).
    #[inline]
    pub(crate) fn now_us(&self) -> u64 {
        self.now_us.get()
    }

    /// Shard time as last read (see [`Self::refresh`]).
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        self.now.get()
    }

    /// Shard time `t` in µs since the shard started (the scale of [`Self::now_us`]).
    pub(crate) fn us_at(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.origin);
        since.as_secs() * 1_000_000 + u64::from(since.subsec_micros())
    }

    /// Reads the clock: `real` is the real instant just read; returns shard time at it.
    #[inline]
    pub(crate) fn refresh(&self, real: Instant) -> Instant {
        let now = self.clock.at(real);
        self.set(now);
        now
    }

    #[inline]
    fn set(&self, now: Instant) {
        self.now.set(now);
        let since = now.saturating_duration_since(self.origin);
        self.now_us
            .set(since.as_secs() * 1_000_000 + u64::from(since.subsec_micros()));
        self.coarse_at_now.set(coarse_ns());
    }

    /// True if the coarse clock ticked since the shard's time was last read: the shard has
    /// been busy for about a tick (1-4 ms) or more since (about 8 ns to find out).
    #[inline]
    pub(crate) fn ticked_since_read(&self) -> bool {
        coarse_ns() != self.coarse_at_now.get()
    }

    /// True if `deadline` (a real instant: deadlines are taken from the real clock) has passed,
    /// judged cheaply: the shard's reading may be stale, but if the coarse clock (about 8 ns
    /// to read, against about 25-70 ns for `Instant::now`) has not ticked since, it is stale by
    /// less than a tick; only a deadline within two ticks of it, or a tick since, costs a
    /// precise reading (which refreshes the shard's reading).
    #[inline]
    pub(crate) fn deadline_passed(&self, deadline: Instant) -> bool {
        if let Some(slack) = coarse_slack() {
            if coarse_ns() == self.coarse_at_now.get() && deadline > self.now.get() + slack {
                return false;
            }
        }
        let now = Instant::now();
        let shard_now = self.clock.at(now);
        if shard_now > self.now.get() {
            self.set(shard_now);
        }
        now >= deadline
    }
}

/// The coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`) in ns: cheap, advances in ticks.
#[inline]
fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant Linux provides.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Two ticks of the coarse clock: while it shows the same value, less than one tick passed
/// (`None`: resolution unknown, never trust it).
fn coarse_slack() -> Option<Duration> {
    static SLACK: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *SLACK.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as in `coarse_ns`.
        let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0;
        let tick = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        (ok && tick > Duration::ZERO && tick <= Duration::from_millis(100)).then(|| 2 * tick)
    })
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

    /// An interval timer driven by a manual clock: one-hour ticks, ten hours advanced in
    /// steps, exactly ten ticks, with no sleep and in milliseconds of real time.
    #[test]
    fn interval_ticks_follow_the_manual_clock() {
        use crate::{
            block_on, Actor, ActorType, Context, EngineBuilder, EngineConfig, Handler, Message,
            ShardSpec,
        };

        const HOUR: Duration = Duration::from_secs(3600);
        struct Ticker(u32);
        impl Actor for Ticker {
            const TYPE_NAME: &'static str = "clock-ticker";
        }
        #[derive(Clone)]
        struct Tick;
        impl Message for Tick {
            type Reply = ();
        }
        struct Start;
        impl Message for Start {
            type Reply = ();
        }
        struct Count;
        impl Message for Count {
            type Reply = u32;
        }
        impl Handler<Start> for Ticker {
            async fn handle(&mut self, _: Start, ctx: &Context<Self>) {
                ctx.set_interval(HOUR, Tick);
            }
        }
        impl Handler<Tick> for Ticker {
            async fn handle(&mut self, _: Tick, _: &Context<Self>) {
                self.0 += 1;
            }
        }
        impl Handler<Count> for Ticker {
            async fn handle(&mut self, _: Count, _: &Context<Self>) -> u32 {
                self.0
            }
        }

        let clock = ManualClock::new();
        let engine = EngineBuilder::new(EngineConfig {
            shards: ShardSpec::Count(1),
            pin_threads: false,
            idle_spin: Duration::ZERO,
            clock: clock.clone().into(),
            ..EngineConfig::default()
        })
        .register(ActorType::new(|_| Ticker(0)).idle_timeout(1000 * HOUR))
        .start()
        .expect("the engine starts");
        let ticker = engine.actor_ref::<Ticker>(1u64);
        block_on(ticker.ask(Start)).expect("start");
        let real_start = Instant::now();
        // Each ask wakes the shard, which reads the clock and fires due timers; the tick is
        // queued behind the ask that woke the shard, so ask until it shows (bounded).
        let count_until = |want: u32| loop {
            let got = block_on(ticker.ask(Count)).expect("count");
            assert!(got <= want, "{got} ticks with only {want} hours advanced");
            if got == want {
                return;
            }
            assert!(
                real_start.elapsed() < Duration::from_secs(20),
                "tick {want} did not come after the clock moved (have {got})"
            );
        };
        clock.advance(HOUR - Duration::from_secs(60));
        count_until(0);
        assert_eq!(
            block_on(ticker.ask(Count)),
            Ok(0),
            "not due one minute early"
        );
        for hour in 1..=10 {
            clock.advance(HOUR);
            count_until(hour);
        }
        for _ in 0..3 {
            assert_eq!(block_on(ticker.ask(Count)), Ok(10), "no tick without time");
        }
        assert!(real_start.elapsed() < HOUR, "no real hour went by");
        engine.shutdown();
    }
}
