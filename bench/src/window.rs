//! Which requests of a load run count, and what they measured (`loadgen`'s recording logic).
//!
//! A request counts when the instant its latency is measured from lies in the measured window
//! `[warm_end, end)`: its scheduled send time in an open loop, its actual send time in a
//! closed loop. A request is never selected by its completion time: that would drop the
//! slowest requests of the window's end (they complete after it) and take in requests that
//! started during the warm-up, whose latency then exceeds anything the window could produce.
//! A counted request that has not completed by the run's hard stop (`end` + a grace period)
//! is *late*: it is recorded at the latency it had reached then (a lower bound) and counted
//! in [`Recorder::late`], so it still weighs in the percentiles.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency the histograms hold (60 s, in ns); above it a value is clamped.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// An empty latency histogram: 1 ns to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("constant bounds are valid")
}

/// The measured window of a run.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Start of the measured window (end of the warm-up).
    pub warm_end: Instant,
    /// End of the measured window: no request is scheduled (open loop) or sent (closed loop)
    /// at or after it.
    pub end: Instant,
    /// How long after `end` the run waits for counted requests still in flight.
    pub grace: Duration,
}

impl Window {
    /// The instant the run stops waiting for stragglers.
    pub fn hard_stop(&self) -> Instant {
        self.end + self.grace
    }

    /// Whether a request whose latency is measured from `from` counts.
    pub fn counts(&self, from: Instant) -> bool {
        self.warm_end <= from && from < self.end
    }

    /// The measured duration.
    pub fn duration(&self) -> Duration {
        self.end - self.warm_end
    }
}

/// What one request measured.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// What the latency is measured from: the scheduled send time (open loop) or the send
    /// (closed loop).
    pub from: Instant,
    /// The actual send (open loop: `sent - from` is the pacer's slip).
    pub sent: Instant,
    /// When the request completed (the reply arrived, or a tell was admitted).
    pub done: Instant,
    /// Whether it succeeded.
    pub ok: bool,
}

/// The counted requests of one shard (or of the whole run, after [`Recorder::merge`]).
#[derive(Debug, Clone)]
pub struct Recorder {
    window: Window,
    /// Latency of the counted requests (late ones at their lower bound), ns.
    pub hist: Histogram<u64>,
    /// Open loop: actual send - scheduled send of the counted requests, ns.
    pub slip: Histogram<u64>,
    /// Counted requests that failed.
    pub errors: u64,
    /// Counted requests still incomplete at the hard stop (recorded at a lower bound).
    pub late: u64,
    /// The last completion of a counted request (or the hard stop for a late one).
    pub last_done: Option<Instant>,
}

impl Recorder {
    /// An empty recorder for `window`.
    pub fn new(window: Window) -> Recorder {
        Recorder {
            window,
            hist: latency_histogram(),
            slip: latency_histogram(),
            errors: 0,
            late: 0,
            last_done: None,
        }
    }

    /// The window samples are selected by.
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Records `s` if it counts; returns whether it did.
    pub fn record(&mut self, s: Sample) -> bool {
        if !self.window.counts(s.from) {
            return false;
        }
        self.last_done = Some(self.last_done.map_or(s.done, |t| t.max(s.done)));
        if !s.ok {
            self.errors += 1;
            return true;
        }
        let ns = s.done.saturating_duration_since(s.from).as_nanos() as u64;
        self.hist.saturating_record(ns.clamp(1, LATENCY_NS_MAX));
        let slip = s.sent.saturating_duration_since(s.from).as_nanos() as u64;
        self.slip.saturating_record(slip.clamp(1, LATENCY_NS_MAX));
        true
    }

    /// Records a request measured from `from` that had not completed at `now` (the hard
    /// stop): its latency is at least `now - from`. Returns whether it counted.
    pub fn record_late(&mut self, from: Instant, now: Instant) -> bool {
        if !self.window.counts(from) {
            return false;
        }
        self.late += 1;
        self.last_done = Some(self.last_done.map_or(now, |t| t.max(now)));
        let ns = now.saturating_duration_since(from).as_nanos() as u64;
        self.hist.saturating_record(ns.clamp(1, LATENCY_NS_MAX));
        true
    }

    /// Adds `other`'s counts (same window) to this one.
    pub fn merge(&mut self, other: &Recorder) {
        self.hist
            .add(&other.hist)
            .expect("histograms of equal bounds merge");
        self.slip
            .add(&other.slip)
            .expect("histograms of equal bounds merge");
        self.errors += other.errors;
        self.late += other.late;
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Successful counted requests per second, over the time from the window's start to the
    /// last counted completion (at least the window): requests that complete after the
    /// window stretch the time they are divided by, so a run that fell behind its schedule
    /// does not report the offered rate.
    pub fn throughput_rps(&self) -> f64 {
        let span = self
            .last_done
            .map_or(self.window.end, |t| t.max(self.window.end))
            .duration_since(self.window.warm_end);
        (self.hist.len() - self.late) as f64 / span.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(t0: Instant) -> Window {
        Window {
            warm_end: t0 + Duration::from_secs(1),
            end: t0 + Duration::from_secs(4),
            grace: Duration::from_secs(1),
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// The bug of issue 11: a request started during the warm-up that completes in the window
    /// must not count, or the max exceeds anything the window (here 3 s) could measure.
    #[test]
    fn a_request_started_in_the_warm_up_does_not_count() {
        let t0 = Instant::now();
        let mut r = Recorder::new(window(t0));
        let slow = Sample {
            from: at(t0, 100),
            sent: at(t0, 100),
            done: at(t0, 3_900),
            ok: true,
        };
        assert!(!r.record(slow));
        let fast = Sample {
            from: at(t0, 2_000),
            sent: at(t0, 2_000),
            done: at(t0, 2_001),
            ok: true,
        };
        assert!(r.record(fast));
        assert_eq!(r.hist.len(), 1);
        assert!(r.hist.max() < 1_100_000, "max {} ns", r.hist.max());
    }

    /// The slowest requests of the window's end complete after it: they count.
    #[test]
    fn a_request_of_the_window_that_completes_after_it_counts() {
        let t0 = Instant::now();
        let mut r = Recorder::new(window(t0));
        let straggler = Sample {
            from: at(t0, 3_990),
            sent: at(t0, 3_990),
            done: at(t0, 4_490),
            ok: true,
        };
        assert!(r.record(straggler));
        let ms = r.hist.max() as f64 / 1e6;
        assert!((499.0..=501.0).contains(&ms), "max {ms} ms");
        assert_eq!(r.last_done, Some(at(t0, 4_490)));
        // Scheduled after the window: never counts, whenever it completes.
        let after = Sample {
            from: at(t0, 4_000),
            sent: at(t0, 4_000),
            done: at(t0, 4_001),
            ok: true,
        };
        assert!(!r.record(after));
    }

    #[test]
    fn a_late_request_counts_at_its_lower_bound() {
        let t0 = Instant::now();
        let mut r = Recorder::new(window(t0));
        for i in 0..98 {
            r.record(Sample {
                from: at(t0, 1_000 + i),
                sent: at(t0, 1_000 + i),
                done: at(t0, 1_001 + i),
                ok: true,
            });
        }
        assert!(r.record_late(at(t0, 3_000), r.window().hard_stop()));
        assert!(r.record_late(at(t0, 3_500), r.window().hard_stop()));
        assert!(!r.record_late(at(t0, 500), r.window().hard_stop()));
        assert_eq!((r.late, r.hist.len()), (2, 100));
        // Two of 100 never completed: the p99 is theirs, at least 1.5 s.
        assert!(r.hist.value_at_quantile(0.99) >= 1_499_000_000);
        // Throughput counts completed requests only, over the time to the hard stop.
        let tput = r.throughput_rps();
        assert!((tput - 98.0 / 4.0).abs() < 0.01, "{tput}");
    }

    #[test]
    fn throughput_is_spread_over_the_completions_after_the_window() {
        let t0 = Instant::now();
        let mut r = Recorder::new(window(t0));
        // 300 requests scheduled over the 3 s window, the last completing 3 s after it.
        for i in 0..300u64 {
            let from = at(t0, 1_000 + i * 10);
            r.record(Sample {
                from,
                sent: from,
                done: from + Duration::from_millis(1 + i * 10),
                ok: true,
            });
        }
        let tput = r.throughput_rps();
        assert!((tput - 300.0 / 5.981).abs() < 0.1, "{tput}");
        let mut merged = Recorder::new(window(t0));
        merged.merge(&r);
        merged.merge(&r);
        assert_eq!(merged.hist.len(), 600);
        assert_eq!(merged.last_done, r.last_done);
    }
}
