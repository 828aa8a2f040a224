//! Reconnect backoff: exponential with full jitter, bounded.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling (delays never exceed it).
    pub max: Duration,
    /// Attempts before giving up; `None` retries forever (at most every `max`).
    pub attempt_count_max: Option<u32>,
}

impl Default for BackoffConfig {
    /// 50 ms base, 5 s cap, unbounded attempts.
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(50),
            max: Duration::from_secs(5),
            attempt_count_max: None,
        }
    }
}

/// Exponential backoff with full jitter ("AWS architecture blog" style): the n-th delay
/// (from 0) is uniform in `[0, min(max, base · 2ⁿ)]`, drawn from the caller's random `u64`.
///
/// Guarantees: every delay is ≤ `max`; the ceiling never decreases until
/// [`reset`](Self::reset); after `attempt_count_max` delays, [`next_delay`](Self::next_delay)
/// returns `None`.
#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(cfg: BackoffConfig) -> Backoff {
        Backoff { cfg, attempt: 0 }
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.cfg.base.saturating_mul(factor).min(self.cfg.max)
    }

    /// The delay before the next attempt, given a uniformly random `random`; `None` once the
    /// attempt bound is reached (report the peer unreachable).
    pub fn next_delay(&mut self, random: u64) -> Option<Duration> {
        if let Some(max) = self.cfg.attempt_count_max {
            if self.attempt >= max {
                return None;
            }
        }
        let ceiling = self.ceiling().as_nanos() as u64; // ≤ max, which fits u64 ns for sane configs
        let delay = random % (ceiling.saturating_add(1));
        self.attempt = self.attempt.saturating_add(1);
        Some(Duration::from_nanos(delay))
    }

    /// Call after a successful connection: the next delay starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_then_cap() {
        let mut b = Backoff::new(BackoffConfig {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
            attempt_count_max: None,
        });
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            // random = u64::MAX - 0: picks near the ceiling, never above.
            let d = b.next_delay(u64::MAX).unwrap();
            assert!(d <= Duration::from_millis(100));
        }
        assert_eq!(ceilings, vec![10, 20, 40, 80, 100, 100]);
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let cfg = BackoffConfig {
            base: Duration::from_nanos(1000),
            max: Duration::from_secs(1),
            attempt_count_max: None,
        };
        let mut b = Backoff::new(cfg);
        assert_eq!(b.next_delay(0), Some(Duration::ZERO));
        let mut b = Backoff::new(cfg);
        assert_eq!(b.next_delay(1000), Some(Duration::from_nanos(1000)));
        let mut b = Backoff::new(cfg);
        assert_eq!(b.next_delay(1001), Some(Duration::ZERO));
    }

    #[test]
    fn bounded_attempts_and_reset() {
        let mut b = Backoff::new(BackoffConfig {
            base: Duration::from_millis(1),
            max: Duration::from_millis(8),
            attempt_count_max: Some(3),
        });
        assert!(b.next_delay(5).is_some());
        assert!(b.next_delay(5).is_some());
        assert!(b.next_delay(5).is_some());
        assert_eq!(b.next_delay(5), None);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.ceiling(), Duration::from_millis(1));
        assert!(b.next_delay(5).is_some());
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(BackoffConfig {
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
            attempt_count_max: None,
        });
        for i in 0..200u64 {
            let d = b.next_delay(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).unwrap();
            assert!(d <= Duration::from_secs(30));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }
}
