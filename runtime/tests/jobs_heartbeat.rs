//! Job heartbeats: an attempt that stops heartbeating is timed out and retried long before its
//! overall timeout; one that heartbeats keeps running; the latest details reach the next
//! attempt and the status view; after a restart the heartbeat timeout and the details are
//! recovered from the log.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quark::jobs::{
    Job, JobContext, JobId, JobOptions, JobState, JobStatus, JobTypeConfig, Jobs, RetryPolicy,
};
use quark::{block_on, Node, NodeBuilder, NodeConfig};
use serde::{Deserialize, Serialize};

fn builder(dir: &Path) -> NodeBuilder {
    let text = format!(
        "[node]\nshards = 1\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n",
        dir.to_str().expect("temp dir path is UTF-8")
    );
    Node::builder().config(NodeConfig::from_toml(&text, "test.toml").expect("valid test config"))
}

/// Polls `f` until it returns `Some`, failing after `limit` (the condition is the
/// synchronisation; the loop only yields).
fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn status_until(
    jobs: &Jobs,
    id: JobId,
    what: &str,
    limit: Duration,
    f: impl Fn(&JobStatus) -> bool,
) -> JobStatus {
    until(what, limit, || {
        block_on(jobs.status(id)).ok().filter(|s| f(s))
    })
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Long(u32);
impl Job for Long {
    const TYPE_NAME: &'static str = "long";
}

fn retry(n: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: n,
        base_ms: 0,
        jitter: 0.0,
        ..RetryPolicy::default()
    }
}

/// Attempt 1 heartbeats once and then hangs; with a 200 ms heartbeat timeout and **no**
/// overall timeout it is retried (a build without the heartbeat deadline hangs forever: the
/// 20 s bound fails), and attempt 2 starts from attempt 1's details.
#[test]
fn a_job_that_stops_heartbeating_is_retried_and_the_next_attempt_gets_its_details() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let node = builder(tmp.path())
        .register_job::<Long, _, _>(
            JobTypeConfig::default(),
            move |_j: Long, ctx: JobContext| {
                let s = Arc::clone(&s);
                async move {
                    s.lock()
                        .unwrap()
                        .push((ctx.attempt(), ctx.heartbeat_details()));
                    if ctx.attempt() == 1 {
                        ctx.heartbeat(b"checkpoint-7".to_vec());
                        futures::future::pending::<()>().await;
                    }
                    Ok(())
                }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let opts = JobOptions::default()
        .retry(retry(3))
        .timeout(Duration::ZERO)
        .heartbeat_timeout(Duration::from_millis(200));
    let t0 = Instant::now();
    let id = block_on(jobs.enqueue(&Long(1), opts)).unwrap();
    let st = status_until(
        &jobs,
        id,
        "the retry to complete",
        Duration::from_secs(20),
        |s| s.state == JobState::Completed,
    );
    let took = t0.elapsed();
    assert_eq!(st.attempt, 2);
    assert!(took >= Duration::from_millis(200), "retried after {took:?}");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(1, None), (2, Some(b"checkpoint-7".to_vec()))],
        "attempt 2 resumes from attempt 1's heartbeat details"
    );
    assert_eq!(st.heartbeat_details.as_deref(), Some(&b"checkpoint-7"[..]));
    node.shutdown();
}

/// A handler that heartbeats every 10 ms runs for many heartbeat timeouts (100 ms) without
/// being retried (one attempt allowed: a build that timed it out anyway makes it dead), and
/// its latest details are visible in its status while it runs.
#[test]
fn a_job_that_heartbeats_keeps_running_and_shows_its_details() {
    let tmp = tempfile::tempdir().unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&release);
    let node = builder(tmp.path())
        .register_job::<Long, _, _>(
            JobTypeConfig::default(),
            move |_j: Long, ctx: JobContext| {
                let r = Arc::clone(&r);
                async move {
                    let mut n = 0u32;
                    while !r.load(Ordering::SeqCst) {
                        n += 1;
                        ctx.heartbeat(n.to_be_bytes().to_vec());
                        quark::sleep(Duration::from_millis(10)).await;
                    }
                    ctx.set_result(n.to_be_bytes().to_vec());
                    Ok(())
                }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let opts = JobOptions::default()
        .retry(retry(1))
        .heartbeat_timeout(Duration::from_millis(100));
    let id = block_on(jobs.enqueue(&Long(2), opts)).unwrap();
    let t0 = Instant::now();
    // Wait until it has run for 5 heartbeat timeouts, still in its first attempt.
    let st = status_until(
        &jobs,
        id,
        "500 ms of heartbeats",
        Duration::from_secs(20),
        |s| t0.elapsed() >= Duration::from_millis(500) && s.heartbeat_details.is_some(),
    );
    assert_eq!((st.state, st.attempt), (JobState::Running, 1), "{st:?}");
    let n = u32::from_be_bytes(st.heartbeat_details.unwrap().try_into().unwrap());
    assert!(n >= 2, "the status shows the latest heartbeat ({n})");
    release.store(true, Ordering::SeqCst);
    let st = block_on(jobs.wait(id)).unwrap();
    assert_eq!((st.state, st.attempt), (JobState::Completed, 1), "{st:?}");
    node.shutdown();
}

/// The job's records in the calling shard's log.
fn job_records(node: &Node, id: JobId) -> usize {
    node.spawn_on(0, move || async move {
        quark_shard::current_shard_log()
            .map(|l| l.key_lsns(&quark::jobs::record::job_key(id.0)).len())
            .unwrap_or(0)
    })
    .join()
    .unwrap()
}

/// Attempt 1 heartbeats ("a") and the node stops while it runs. After the restart, attempt 2
/// sees "a" (recovered from the `Heartbeat` record), heartbeats "b" and hangs: it is retried
/// by the heartbeat timeout recovered with the job (no overall timeout: a build that lost it
/// hangs, and the 20 s bound fails), and attempt 3 sees "b".
#[test]
fn after_a_restart_the_heartbeat_timeout_and_details_are_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let start = || {
        let s = Arc::clone(&seen);
        builder(tmp.path())
            .register_job::<Long, _, _>(
                JobTypeConfig::default(),
                move |_j: Long, ctx: JobContext| {
                    let s = Arc::clone(&s);
                    async move {
                        let details = ctx.heartbeat_details();
                        s.lock().unwrap().push((ctx.attempt(), details));
                        match ctx.attempt() {
                            1 => ctx.heartbeat(b"a".to_vec()),
                            2 => ctx.heartbeat(b"b".to_vec()),
                            _ => return Ok(()),
                        }
                        futures::future::pending::<()>().await;
                        Ok(())
                    }
                },
            )
            .start()
            .unwrap()
    };
    let node = start();
    let jobs = node.jobs();
    let opts = JobOptions::default()
        .retry(retry(5))
        .timeout(Duration::ZERO)
        // Long enough that attempt 1 is still running when the node stops.
        .heartbeat_timeout(Duration::from_secs(2));
    let id = block_on(jobs.enqueue(&Long(3), opts)).unwrap();
    // Enqueued, Started, Heartbeat: the heartbeat is in the log.
    until(
        "attempt 1's heartbeat record",
        Duration::from_secs(20),
        || (job_records(&node, id) >= 3).then_some(()),
    );
    let st = block_on(jobs.status(id)).unwrap();
    assert_eq!((st.state, st.attempt), (JobState::Running, 1));
    node.shutdown();

    // Attempt 2 starts while the node starts: its deadline counts from before `start`
    // returns.
    let t0 = Instant::now();
    let node = start();
    let jobs = node.jobs();
    let st = status_until(
        &jobs,
        id,
        "attempt 3 to complete",
        Duration::from_secs(20),
        |s| s.state == JobState::Completed,
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "attempt 2 ran its heartbeat timeout"
    );
    assert_eq!(st.attempt, 3);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (1, None),
            (2, Some(b"a".to_vec())),
            (3, Some(b"b".to_vec()))
        ]
    );
    node.shutdown();
}
