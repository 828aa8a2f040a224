//! The measuring loops `enginebench` runs on Quark and on its tokio baseline alike: the same
//! code times both, only the operation passed in differs.

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::window::latency_histogram;

/// Times `n` calls of `op(i)`, awaited one after the other: operations per second.
pub async fn stream<F, Fut>(n: u64, mut op: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let t0 = Instant::now();
    for i in 0..n {
        op(i).await;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// What a sequential measurement gives.
#[derive(Debug, Clone)]
pub struct Sequential {
    /// Operations per second over the measured calls.
    pub per_s: f64,
    /// Latency of each measured call, ns.
    pub hist: Histogram<u64>,
}

/// `warmup` calls of `op(i)`, then `n` timed ones, one after the other: each call's latency
/// and the rate.
pub async fn sequential<F, Fut>(warmup: u64, n: u64, mut op: F) -> Sequential
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..warmup {
        op(i).await;
    }
    let mut hist = latency_histogram();
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        op(i).await;
        hist.saturating_record(t.elapsed().as_nanos().max(1) as u64);
    }
    Sequential {
        per_s: n as f64 / t0.elapsed().as_secs_f64(),
        hist,
    }
}

/// `loops` request loops in one task (joined, not spawned, so the executor's spawn path is
/// not part of it), loop `j` calling `op(j, k)` for its k-th request until `warmup + run` has
/// passed: completed calls per second during `run` (calls completed in the warm-up are not
/// counted).
pub async fn inflight<F, Fut>(loops: usize, warmup: Duration, run: Duration, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    let (from, end) = (start + warmup, start + warmup + run);
    let op = &op;
    let counts = futures::future::join_all((0..loops).map(|j| async move {
        let mut counted = 0u64;
        let mut k = 0u64;
        loop {
            op(j, k).await;
            k += 1;
            let now = Instant::now();
            if now >= end {
                break;
            }
            if now >= from {
                counted += 1;
            }
        }
        counted
    }))
    .await;
    counts.iter().sum::<u64>() as f64 / run.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_times_every_measured_call_and_skips_the_warm_up() {
        let calls = std::cell::Cell::new(0u64);
        let s = futures::executor::block_on(sequential(5, 20, |_| {
            calls.set(calls.get() + 1);
            async {}
        }));
        assert_eq!(calls.get(), 25);
        assert_eq!(s.hist.len(), 20);
        assert!(s.per_s > 0.0);
    }

    #[test]
    fn inflight_counts_only_after_the_warm_up() {
        let calls = std::cell::Cell::new(0u64);
        let rate = futures::executor::block_on(inflight(
            4,
            Duration::from_millis(20),
            Duration::from_millis(20),
            |_, _| {
                calls.set(calls.get() + 1);
                async {}
            },
        ));
        // Whatever the timing, each loop's last call (the one that sees the end) and the
        // warm-up's calls are not counted: at most `calls - loops` are.
        let counted = (rate * 0.020).round() as u64;
        assert!(counted + 4 <= calls.get(), "{counted} of {}", calls.get());
    }
}
