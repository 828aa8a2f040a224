//! The log's periodic work on a shard, as tasks on the shard's scheduler: the interval sync
//! (under `fsync = { interval_ms = N }` the log syncs only when asked, so ask every N ms) and a
//! compaction pass every `log_compact_interval`.
//!
//! At shard stop the pump stops them explicitly ([`LogTasks::stop`]: a stop signal that also
//! wakes a sleeping loop) and keeps running until both have ended ([`LogTasks::finished`]);
//! only then does it close the log. A sync or compaction pass under way finishes; none starts
//! after the stop, so none runs against a closed log and none is dropped half-way.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, Either};

use crate::ShardLog;

/// What the loops report (shared with [`LogTasks`]).
#[derive(Default)]
struct Counters {
    /// Loops alive (spawned and not ended; a drop guard counts a loop dropped or panicked).
    live: Cell<usize>,
    /// Passes (syncs and compactions) begun.
    passes_started: Cell<u64>,
    /// Passes ended (with success or an error).
    passes_done: Cell<u64>,
}

/// Decrements `live` however its loop ends.
struct LiveGuard(Rc<Counters>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() - 1);
    }
}

/// The running periodic tasks of one shard's log (none without a log).
pub(crate) struct LogTasks {
    /// One per loop: dropping it (or sending) tells the loop to end.
    stops: Vec<oneshot::Sender<()>>,
    counters: Rc<Counters>,
}

impl LogTasks {
    /// No periodic work (a shard without a log).
    pub(crate) fn none() -> LogTasks {
        LogTasks {
            stops: Vec::new(),
            counters: Rc::default(),
        }
    }

    /// Starts the loops `log`'s configuration and `compact_every` ask for, each as a future
    /// handed to `spawn` (the shard's scheduler).
    pub(crate) fn start(
        log: &ShardLog,
        shard: quark_placement::ShardId,
        compact_every: Option<Duration>,
        spawn: impl Fn(std::pin::Pin<Box<dyn Future<Output = ()>>>),
    ) -> LogTasks {
        let mut tasks = LogTasks::none();
        if let quark_persist::FsyncPolicy::IntervalMs(ms) = log.config().fsync {
            let log = log.clone();
            spawn(tasks.periodic(Duration::from_millis(ms.max(1)), move || {
                let log = log.clone();
                async move {
                    if let Err(e) = log.sync().await {
                        tracing::error!(shard, error = %e, "periodic log sync failed");
                    }
                }
            }));
        }
        if let Some(every) = compact_every {
            let log = log.clone();
            spawn(tasks.periodic(every, move || {
                let log = log.clone();
                async move {
                    match log
                        .compact(quark_persist::CompactionPolicy::default())
                        .await
                    {
                        Ok(report) => tracing::debug!(shard, ?report, "log compaction pass"),
                        Err(e) => tracing::error!(shard, error = %e, "log compaction failed"),
                    }
                }
            }));
        }
        tasks
    }

    /// A loop that runs `pass()` every `every` until stopped; the stop wakes it while it
    /// sleeps, and is looked at before each pass (never during one).
    fn periodic<F, Fut>(
        &mut self,
        every: Duration,
        mut pass: F,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()>>>
    where
        F: FnMut() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        self.stops.push(stop_tx);
        let counters = self.counters.clone();
        counters.live.set(counters.live.get() + 1);
        let guard = LiveGuard(counters.clone());
        Box::pin(async move {
            let _guard = guard;
            loop {
                // The stop first: a loop told to stop never begins another pass.
                let sleep = std::pin::pin!(crate::rt::sleep(every));
                if let Either::Left(_) = select(&mut stop_rx, sleep).await {
                    return;
                }
                counters
                    .passes_started
                    .set(counters.passes_started.get() + 1);
                pass().await;
                counters.passes_done.set(counters.passes_done.get() + 1);
            }
        })
    }

    /// Tells every loop to end (waking those asleep). A pass under way finishes first; see
    /// [`LogTasks::finished`].
    pub(crate) fn stop(&mut self) {
        // A dropped sender completes its receiver, which wakes the loop.
        self.stops.clear();
    }

    /// True once every loop has ended (at once when there are none).
    pub(crate) fn finished(&self) -> bool {
        self.counters.live.get() == 0
    }

    #[cfg(test)]
    fn passes(&self) -> (u64, u64) {
        (
            self.counters.passes_started.get(),
            self.counters.passes_done.get(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("quark-log-tasks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Yields to the runtime until `done()` or a generous bound of yields (the loops sleep on
    /// the runtime's timer, so this waits for real time to pass).
    async fn until(mut done: impl FnMut() -> bool) -> bool {
        let limit = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            if std::time::Instant::now() > limit {
                return false;
            }
            crate::rt::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// Stopped loops end after their pass in progress, and none runs after the log is closed:
    /// the order the pump relies on (stop, wait for `finished`, then close the log).
    #[test]
    fn stopped_loops_end_before_the_log_closes_and_never_run_after() {
        let dir = fresh_dir("stop");
        let mut config = quark_persist::LogConfig::new(&dir, 0);
        config.fsync = quark_persist::FsyncPolicy::IntervalMs(1);
        let mut rt = crate::rt::build_runtime(64, false).expect("runtime");
        rt.block_on(async {
            let (log, _) = crate::rt::log_io::open_log(config).await.expect("open");
            let log: ShardLog = Rc::new(log);
            let mut tasks = LogTasks::start(&log, 0, Some(Duration::from_millis(1)), |fut| {
                drop(crate::rt::spawn_joined(fut));
            });
            assert!(!tasks.finished(), "two loops run");
            // Some appends for the syncs and compactions to work on.
            for i in 0..50u32 {
                let mut b = quark_persist::Batch::new();
                b.event(b"k", &i.to_le_bytes());
                log.append(&b).await.expect("append");
            }
            assert!(until(|| tasks.passes().1 >= 4).await, "passes ran");
            tasks.stop();
            assert!(until(|| tasks.finished()).await, "the loops ended");
            let (started, done) = tasks.passes();
            assert_eq!(started, done, "no pass was cut short");
            log.close().await.expect("close");
            // Time for several more periods: no pass begins after the stop.
            crate::rt::sleep(Duration::from_millis(20)).await;
            assert_eq!(tasks.passes(), (started, done), "no pass after the stop");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
