//! Durable jobs: lifecycle, retries on an injected clock, timeouts, cancellation, dead
//! letters, unique keys, per-key concurrency, priorities with aging, bad input, restarts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quark::jobs::{
    EnqueueError, Job, JobContext, JobFailure, JobId, JobOptions, JobState, JobStatus,
    JobTypeConfig, Jobs, JobsConfig, JobsError, ListQuery, ManualClock, NewJob, RetryPolicy,
};
use quark::{block_on, Node, NodeBuilder, NodeConfig};
use serde::{Deserialize, Serialize};

const T0: u64 = 1_700_000_000_000;

fn builder(dir: &Path, shards: u16) -> NodeBuilder {
    let text = format!(
        "[node]\nshards = {shards}\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n",
        dir.to_str().expect("temp dir path is UTF-8")
    );
    Node::builder().config(NodeConfig::from_toml(&text, "test.toml").expect("valid test config"))
}

fn manual(clock: &ManualClock) -> JobsConfig {
    JobsConfig {
        clock: Arc::new(clock.clone()),
        aging: Duration::from_millis(100),
        idle_poll: Duration::from_millis(5),
        ..JobsConfig::default()
    }
}

/// Polls `f` until it returns `Some`, failing after 10 s (the condition is the
/// synchronisation; the loop only yields).
fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn status_until(jobs: &Jobs, id: JobId, what: &str, f: impl Fn(&JobStatus) -> bool) -> JobStatus {
    until(what, || block_on(jobs.status(id)).ok().filter(|s| f(s)))
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Work {
    n: u64,
    tag: String,
}

impl Job for Work {
    const TYPE_NAME: &'static str = "work";
}

fn work(n: u64) -> Work {
    Work {
        n,
        tag: format!("w{n}"),
    }
}

#[test]
fn a_job_runs_once_and_completes_with_its_result() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let node = builder(tmp.path(), 2)
        .register_job::<Work, _, _>(JobTypeConfig::default(), move |w: Work, ctx: JobContext| {
            let s = Arc::clone(&s);
            async move {
                s.lock().unwrap().push((w.clone(), ctx.attempt()));
                ctx.progress(100);
                ctx.set_result(format!("done {}", w.n).into_bytes());
                Ok(())
            }
        })
        .start()
        .unwrap();
    let jobs = node.jobs();
    let id = block_on(jobs.enqueue(&work(7), JobOptions::default())).unwrap();
    let st = block_on(jobs.wait(id)).unwrap();
    assert_eq!(st.state, JobState::Completed);
    assert_eq!(st.attempt, 1);
    assert_eq!(st.result.as_deref(), Some(&b"done 7"[..]));
    assert_eq!(*seen.lock().unwrap(), vec![(work(7), 1)]);
    let done = block_on(jobs.list(ListQuery {
        state: Some(JobState::Completed),
        ..ListQuery::default()
    }))
    .unwrap();
    assert_eq!(done.iter().map(|s| s.id).collect::<Vec<_>>(), vec![id]);
    node.shutdown();
}

#[test]
fn failed_attempts_are_retried_with_exponential_backoff_on_the_jobs_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = Arc::clone(&attempts);
    let node = builder(tmp.path(), 1)
        .jobs_config(manual(&clock))
        .register_job::<Work, _, _>(
            JobTypeConfig::default(),
            move |_w: Work, ctx: JobContext| {
                let a = Arc::clone(&a);
                async move {
                    a.lock().unwrap().push(ctx.attempt());
                    if ctx.attempt() < 3 {
                        Err(JobFailure::retry(format!("boom {}", ctx.attempt())))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let retry = RetryPolicy {
        max_attempts: 5,
        base_ms: 1_000,
        factor: 2.0,
        cap_ms: 60_000,
        jitter: 0.0,
    };
    let id = block_on(jobs.enqueue(&work(1), JobOptions::default().retry(retry))).unwrap();
    let st = status_until(&jobs, id, "the first failure", |s| {
        s.attempt == 1 && s.state == JobState::Scheduled
    });
    assert_eq!(st.run_at_ms, T0 + 1_000, "first retry after base");
    assert_eq!(st.last_error.as_deref(), Some("boom 1"));
    clock.advance(Duration::from_millis(1_000));
    jobs.poke();
    let st = status_until(&jobs, id, "the second failure", |s| {
        s.attempt == 2 && s.state == JobState::Scheduled
    });
    assert_eq!(
        st.run_at_ms,
        T0 + 1_000 + 2_000,
        "second retry after base * factor"
    );
    clock.advance(Duration::from_millis(2_000));
    jobs.poke();
    let st = block_on(jobs.wait(id)).unwrap();
    assert_eq!(st.state, JobState::Completed);
    assert_eq!(st.attempt, 3);
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3]);
    node.shutdown();
}

#[test]
fn backoff_delays_grow_are_capped_and_jitter_stays_in_bounds() {
    let p = RetryPolicy {
        max_attempts: 10,
        base_ms: 100,
        factor: 3.0,
        cap_ms: 2_000,
        jitter: 0.5,
    };
    assert_eq!(p.delay_ms(1, 0.0), 100);
    assert_eq!(p.delay_ms(2, 0.0), 300);
    assert_eq!(p.delay_ms(3, 0.0), 900);
    assert_eq!(p.delay_ms(4, 0.0), 2_000, "capped");
    assert_eq!(p.delay_ms(40, 0.0), 2_000, "capped, no overflow");
    for i in 0..100 {
        let r = i as f64 / 100.0;
        let d = p.delay_ms(2, r);
        assert!(
            (150..=300).contains(&d),
            "jittered delay {d} out of [150, 300]"
        );
    }
}

#[test]
fn an_attempt_past_its_timeout_is_cancelled_and_retried_then_dead() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let dropped = Arc::new(AtomicU32::new(0));
    let (r, d) = (Arc::clone(&runs), Arc::clone(&dropped));
    struct Guard(Arc<AtomicU32>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let node = builder(tmp.path(), 1)
        .register_job::<Work, _, _>(
            JobTypeConfig::default(),
            move |_w: Work, _ctx: JobContext| {
                r.fetch_add(1, Ordering::SeqCst);
                let g = Guard(Arc::clone(&d));
                async move {
                    let _g = g;
                    futures::future::pending::<()>().await;
                    Ok(())
                }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let retry = RetryPolicy {
        max_attempts: 2,
        base_ms: 0,
        jitter: 0.0,
        ..RetryPolicy::default()
    };
    let opts = JobOptions::default()
        .retry(retry)
        .timeout(Duration::from_millis(20));
    let id = block_on(jobs.enqueue(&work(1), opts)).unwrap();
    let st = block_on(jobs.wait(id)).unwrap();
    assert_eq!(st.state, JobState::Dead);
    assert_eq!(st.attempt, 2);
    assert!(
        st.last_error
            .as_deref()
            .unwrap()
            .contains("timed out after 20 ms"),
        "{:?}",
        st.last_error
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "each timed-out handler was dropped"
    );
    node.shutdown();
}

#[test]
fn cancel_stops_queued_and_running_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let (r, c) = (Arc::clone(&runs), Arc::clone(&saw_cancel));
    let node = builder(tmp.path(), 2)
        .register_job::<Work, _, _>(
            JobTypeConfig::default(),
            move |_w: Work, ctx: JobContext| {
                r.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                async move {
                    // Runs until cancelled (the future is dropped at this await).
                    struct Seen(JobContext, Arc<AtomicBool>);
                    impl Drop for Seen {
                        fn drop(&mut self) {
                            self.1.store(self.0.is_cancelled(), Ordering::SeqCst);
                        }
                    }
                    let _s = Seen(ctx, c);
                    futures::future::pending::<()>().await;
                    Ok(())
                }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let later = block_on(jobs.enqueue(
        &work(1),
        JobOptions::default().after(Duration::from_secs(3600)),
    ))
    .unwrap();
    let st = block_on(jobs.cancel(later)).unwrap();
    assert_eq!(st.state, JobState::Cancelled);
    assert_eq!(st.attempt, 0);

    let now = block_on(jobs.enqueue(&work(2), JobOptions::default())).unwrap();
    // Its handler runs (status says Running as soon as its start record is being written).
    until("the handler to run", || {
        (runs.load(Ordering::SeqCst) == 1).then_some(())
    });
    let st = block_on(jobs.cancel(now)).unwrap();
    assert_eq!(st.state, JobState::Cancelled);
    assert_eq!(st.attempt, 1);
    assert!(
        saw_cancel.load(Ordering::SeqCst),
        "the handler saw the cancellation"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the queued job never ran");
    assert!(matches!(
        block_on(jobs.cancel(now)),
        Err(JobsError::WrongState {
            state: JobState::Cancelled,
            ..
        })
    ));
    // Cancels racing the start (queued, start record in flight, handler running): every one
    // ends cancelled, none hangs.
    for i in 0..40 {
        let id = block_on(jobs.enqueue(&work(100 + i), JobOptions::default())).unwrap();
        let st = block_on(jobs.cancel(id)).unwrap();
        assert_eq!(st.state, JobState::Cancelled, "{st:?}");
    }
    node.shutdown();
}

#[test]
fn dead_letters_can_be_listed_replayed_and_purged() {
    let tmp = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&fail);
    let node = builder(tmp.path(), 2)
        .register_job::<Work, _, _>(
            JobTypeConfig::default(),
            move |_w: Work, _ctx: JobContext| {
                let fail = f.load(Ordering::SeqCst);
                async move {
                    if fail {
                        Err(JobFailure::fatal("bad input"))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let a = block_on(jobs.enqueue(&work(1), JobOptions::default())).unwrap();
    let b = block_on(jobs.enqueue(&work(2), JobOptions::default())).unwrap();
    for id in [a, b] {
        let st = block_on(jobs.wait(id)).unwrap();
        assert_eq!(st.state, JobState::Dead);
        assert_eq!(st.attempt, 1, "a fatal failure is not retried");
        assert_eq!(st.last_error.as_deref(), Some("bad input"));
    }
    let dead = block_on(jobs.list(ListQuery {
        state: Some(JobState::Dead),
        ..ListQuery::default()
    }))
    .unwrap();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(dead.iter().map(|s| s.id).collect::<Vec<_>>(), want);

    fail.store(false, Ordering::SeqCst);
    block_on(jobs.replay(a)).unwrap();
    let st = block_on(jobs.wait(a)).unwrap();
    assert_eq!(st.state, JobState::Completed);
    assert_eq!(
        st.attempt, 2,
        "attempt numbers keep increasing after a replay"
    );

    block_on(jobs.purge(b)).unwrap();
    assert!(matches!(
        block_on(jobs.status(b)),
        Err(JobsError::NotFound(_))
    ));
    assert!(matches!(
        block_on(jobs.replay(a)),
        Err(JobsError::WrongState { op: "replay", .. })
    ));
    node.shutdown();

    // After a restart: the purged job stays gone.
    let node = builder(tmp.path(), 2)
        .register_job::<Work, _, _>(
            JobTypeConfig::default(),
            |_w: Work, _ctx: JobContext| async { Ok(()) },
        )
        .start()
        .unwrap();
    assert!(matches!(
        block_on(node.jobs().status(b)),
        Err(JobsError::NotFound(_))
    ));
    node.shutdown();
}

#[test]
fn a_unique_key_dedups_while_queued_and_runs_once_more_after_a_running_job() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let (r, rel) = (Arc::clone(&runs), Arc::clone(&release));
    let node = builder(tmp.path(), 2)
        .register_job::<Work, _, _>(
            JobTypeConfig::default(),
            move |_w: Work, _ctx: JobContext| {
                r.fetch_add(1, Ordering::SeqCst);
                let rel = Arc::clone(&rel);
                async move {
                    while !rel.load(Ordering::SeqCst) {
                        quark_shard::sleep(Duration::from_millis(1)).await;
                    }
                    Ok(())
                }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    // While queued (scheduled for later): the same id, nothing new stored.
    let later = JobOptions::default()
        .unique("report-7")
        .after(Duration::from_secs(3600));
    let a = block_on(jobs.enqueue(&work(1), later.clone())).unwrap();
    let b = block_on(jobs.enqueue(&work(2), later)).unwrap();
    assert_eq!(a, b);
    block_on(jobs.cancel(a)).unwrap();

    // While running: the same id, and one more run after the current one.
    let now = JobOptions::default().unique("report-8");
    let c = block_on(jobs.enqueue(&work(3), now.clone())).unwrap();
    status_until(&jobs, c, "the first run", |s| s.state == JobState::Running);
    let d = block_on(jobs.enqueue(&work(4), now.clone())).unwrap();
    let e = block_on(jobs.enqueue(&work(5), now.clone())).unwrap();
    assert_eq!((c, c), (d, e));
    release.store(true, Ordering::SeqCst);
    let st = block_on(jobs.wait(c)).unwrap();
    assert_eq!(st.state, JobState::Completed);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the trigger during the run ran once more"
    );
    assert_eq!(st.attempt, 2);
    // Finished: a new enqueue makes a new job.
    let f = block_on(jobs.enqueue(&work(6), now)).unwrap();
    assert_ne!(f, c);
    block_on(jobs.wait(f)).unwrap();
    node.shutdown();
}

#[test]
fn per_key_concurrency_is_never_exceeded() {
    let tmp = tempfile::tempdir().unwrap();
    let running: Arc<Mutex<HashMap<String, (u32, u32)>>> = Arc::default();
    let r = Arc::clone(&running);
    let node = builder(tmp.path(), 2)
        .register_job::<Work, _, _>(
            JobTypeConfig::default(),
            move |w: Work, _ctx: JobContext| {
                let r = Arc::clone(&r);
                async move {
                    {
                        let mut m = r.lock().unwrap();
                        let e = m.entry(w.tag.clone()).or_default();
                        e.0 += 1;
                        e.1 = e.1.max(e.0);
                    }
                    quark_shard::sleep(Duration::from_millis(2)).await;
                    r.lock().unwrap().get_mut(&w.tag).unwrap().0 -= 1;
                    Ok(())
                }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let mut ids = Vec::new();
    for i in 0..160u64 {
        let key = format!("customer-{}", i % 4);
        let w = Work {
            n: i,
            tag: key.clone(),
        };
        ids.push(block_on(jobs.enqueue(&w, JobOptions::default().concurrency(key, 2))).unwrap());
    }
    for id in ids {
        assert_eq!(block_on(jobs.wait(id)).unwrap().state, JobState::Completed);
    }
    let m = running.lock().unwrap();
    assert_eq!(m.len(), 4);
    for (k, (now, max)) in m.iter() {
        assert_eq!(*now, 0);
        assert!(*max <= 2, "{k}: {max} ran at once, limit 2");
        assert_eq!(
            *max, 2,
            "{k}: the limit was reached (the test is meaningful)"
        );
    }
    node.shutdown();
}

/// One shard, one job at a time, paused while the jobs are enqueued: the order they run in.
fn run_order(enqueue: impl FnOnce(&Jobs, &ManualClock)) -> Vec<u64> {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = Arc::clone(&order);
    let node = builder(tmp.path(), 1)
        .jobs_config(manual(&clock))
        .register_job::<Work, _, _>(
            JobTypeConfig {
                max_running_per_shard: 1,
                ..JobTypeConfig::default()
            },
            move |w: Work, _ctx: JobContext| {
                o.lock().unwrap().push(w.n);
                async { Ok(()) }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    block_on(jobs.set_paused(None, true)).unwrap();
    enqueue(&jobs, &clock);
    let n = block_on(jobs.counts()).unwrap().values().sum::<u64>() as usize;
    block_on(jobs.set_paused(None, false)).unwrap();
    until("every job to run", || {
        (order.lock().unwrap().len() == n).then_some(())
    });
    node.shutdown();
    let v = order.lock().unwrap().clone();
    v
}

#[test]
fn higher_priority_runs_first_and_aging_prevents_starvation() {
    // Same time: by priority, then by enqueue order.
    let order = run_order(|jobs, _| {
        for (n, p) in [(1, 0), (2, 5), (3, 1), (4, 5), (5, -3)] {
            block_on(jobs.enqueue(&work(n), JobOptions::default().priority(p))).unwrap();
        }
    });
    assert_eq!(order, vec![2, 4, 3, 1, 5]);

    // Aging 100 ms per level: a priority-0 job that waited 1 s goes before priority-5 jobs
    // that arrived after it (5 levels = 500 ms < 1 s), however many there are...
    let order = run_order(|jobs, clock| {
        block_on(jobs.enqueue(&work(0), JobOptions::default())).unwrap();
        clock.advance(Duration::from_millis(1_000));
        for n in 1..=50 {
            block_on(jobs.enqueue(&work(n), JobOptions::default().priority(5))).unwrap();
        }
    });
    assert_eq!(
        order[0], 0,
        "the low-priority job was not starved: {order:?}"
    );
    assert_eq!(order.len(), 51);
    // ...but not before those that arrived less than 500 ms after it.
    let order = run_order(|jobs, clock| {
        block_on(jobs.enqueue(&work(0), JobOptions::default())).unwrap();
        clock.advance(Duration::from_millis(200));
        for n in 1..=3 {
            block_on(jobs.enqueue(&work(n), JobOptions::default().priority(5))).unwrap();
        }
    });
    assert_eq!(order, vec![1, 2, 3, 0]);
}

#[test]
fn bad_input_is_refused_at_enqueue_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), 2)
        .register_job::<Work, _, _>(
            JobTypeConfig::default(),
            |_w: Work, _ctx: JobContext| async { Ok(()) },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let kept = block_on(jobs.enqueue(
        &work(1),
        JobOptions::default().after(Duration::from_secs(3600)),
    ))
    .unwrap();
    let before = block_on(jobs.counts()).unwrap();
    let lsn_before: Vec<u64> = node_log_positions(&node);

    #[derive(Serialize, Deserialize)]
    struct Unregistered;
    impl Job for Unregistered {
        const TYPE_NAME: &'static str = "nope";
    }
    match block_on(jobs.enqueue(&Unregistered, JobOptions::default())) {
        Err(EnqueueError::UnknownJobType { name, registered }) => {
            assert_eq!(name, "nope");
            assert_eq!(registered, vec!["work".to_string()]);
        }
        other => panic!("expected UnknownJobType, got {other:?}"),
    }
    let e = block_on(jobs.enqueue_batch(vec![NewJob::raw(
        "work",
        vec![0xff, 0xff, 0xff],
        JobOptions::default(),
    )]))
    .unwrap_err();
    assert!(
        matches!(&e, EnqueueError::BadPayload { type_name, .. } if type_name == "work"),
        "{e}"
    );
    let e = block_on(jobs.enqueue_batch(vec![NewJob::json(
        "work",
        r#"{"n": "seven"}"#,
        JobOptions::default(),
    )]))
    .unwrap_err();
    assert!(matches!(e, EnqueueError::BadPayload { .. }), "{e}");
    // One bad job fails the whole (atomic) batch.
    let e = block_on(jobs.enqueue_batch(vec![
        NewJob::new(&work(2), JobOptions::default()),
        NewJob::raw("work", vec![], JobOptions::default()),
    ]))
    .unwrap_err();
    assert!(matches!(e, EnqueueError::BadPayload { .. }), "{e}");
    let bad_retry = RetryPolicy {
        max_attempts: 0,
        ..RetryPolicy::default()
    };
    let e = block_on(jobs.enqueue(&work(3), JobOptions::default().retry(bad_retry))).unwrap_err();
    assert!(e.to_string().contains("max_attempts"), "{e}");

    assert_eq!(block_on(jobs.counts()).unwrap(), before);
    assert_eq!(
        node_log_positions(&node),
        lsn_before,
        "nothing was appended"
    );
    assert_eq!(
        block_on(jobs.status(kept)).unwrap().state,
        JobState::Scheduled
    );
    // A JSON payload that fits is accepted.
    let ok = block_on(jobs.enqueue_batch(vec![NewJob::json(
        "work",
        r#"{"n": 7, "tag": "x"}"#,
        JobOptions::default(),
    )]))
    .unwrap();
    assert_eq!(
        block_on(jobs.wait(ok[0])).unwrap().state,
        JobState::Completed
    );
    node.shutdown();
}

/// Every shard's log end.
fn node_log_positions(node: &Node) -> Vec<u64> {
    (0..node.shard_count())
        .map(|s| {
            node.spawn_on(s, || async {
                quark_shard::current_shard_log()
                    .map(|l| l.stats().acked_lsn)
                    .unwrap_or(0)
            })
            .join()
            .unwrap()
        })
        .collect()
}

#[test]
fn jobs_survive_a_restart_and_an_interrupted_attempt_runs_again_with_the_next_number() {
    let tmp = tempfile::tempdir().unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let start = |hang_first: bool| {
        let a = Arc::clone(&attempts);
        builder(tmp.path(), 2)
            .register_job::<Work, _, _>(
                JobTypeConfig::default(),
                move |w: Work, ctx: JobContext| {
                    a.lock().unwrap().push((w.n, ctx.attempt()));
                    async move {
                        if hang_first && w.n == 1 {
                            futures::future::pending::<()>().await;
                        }
                        if w.n == 3 {
                            return Err(JobFailure::fatal("no"));
                        }
                        Ok(())
                    }
                },
            )
            .start()
            .unwrap()
    };
    let node = start(true);
    let jobs = node.jobs();
    let running = block_on(jobs.enqueue(&work(1), JobOptions::default())).unwrap();
    let later = block_on(
        jobs.enqueue(
            &work(2),
            JobOptions::default()
                .after(Duration::from_secs(3600))
                .priority(9),
        ),
    )
    .unwrap();
    let dead = block_on(jobs.enqueue(&work(3), JobOptions::default())).unwrap();
    block_on(jobs.wait(dead)).unwrap();
    status_until(&jobs, running, "job 1 to run", |s| {
        s.state == JobState::Running
    });
    node.shutdown();

    let node = start(false);
    let jobs = node.jobs();
    let st = block_on(jobs.wait(running)).unwrap();
    assert_eq!(st.state, JobState::Completed);
    assert_eq!(st.attempt, 2, "the interrupted attempt counts");
    let st = block_on(jobs.status(later)).unwrap();
    assert_eq!((st.state, st.priority), (JobState::Scheduled, 9));
    let st = block_on(jobs.status(dead)).unwrap();
    assert_eq!(
        (st.state, st.last_error.as_deref()),
        (JobState::Dead, Some("no"))
    );
    assert_eq!(
        attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| *n == 1)
            .collect::<Vec<_>>(),
        vec![&(1, 1), &(1, 2)]
    );
    // New ids do not reuse old ones.
    let fresh = block_on(jobs.enqueue(&work(4), JobOptions::default())).unwrap();
    assert!(![running, later, dead].contains(&fresh));
    node.shutdown();
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Parent(u64);
impl Job for Parent {
    const TYPE_NAME: &'static str = "parent";
}

#[test]
fn follow_up_jobs_are_stored_with_the_completion_only_if_it_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let children = Arc::new(Mutex::new(Vec::new()));
    let c = Arc::clone(&children);
    let node = builder(tmp.path(), 2)
        .register_job::<Parent, _, _>(
            JobTypeConfig::default(),
            |p: Parent, ctx: JobContext| async move {
                ctx.enqueue_on_completion(NewJob::new(&work(p.0 * 10), JobOptions::default()))
                    .map_err(|e| JobFailure::fatal(e.to_string()))?;
                if p.0 == 2 {
                    return Err(JobFailure::fatal("parent 2 fails"));
                }
                Ok(())
            },
        )
        .register_job::<Work, _, _>(
            JobTypeConfig::default(),
            move |w: Work, _ctx: JobContext| {
                c.lock().unwrap().push(w.n);
                async { Ok(()) }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let ok = block_on(jobs.enqueue(&Parent(1), JobOptions::default())).unwrap();
    let bad = block_on(jobs.enqueue(&Parent(2), JobOptions::default())).unwrap();
    assert_eq!(block_on(jobs.wait(ok)).unwrap().state, JobState::Completed);
    assert_eq!(block_on(jobs.wait(bad)).unwrap().state, JobState::Dead);
    // Parent 1 and its child complete (the child's completion is durable when it counts).
    until("the child to complete", || {
        let c = block_on(jobs.counts()).unwrap();
        (c.get(&JobState::Completed) == Some(&2)).then_some(())
    });
    let counts = block_on(jobs.counts()).unwrap();
    assert_eq!(counts.get(&JobState::Dead), Some(&1), "{counts:?}");
    assert_eq!(
        counts.values().sum::<u64>(),
        3,
        "no child of the failed parent: {counts:?}"
    );
    assert_eq!(*children.lock().unwrap(), vec![10]);
    node.shutdown();
}

fn completed_and_queued(jobs: &Jobs) -> (u64, u64) {
    let c = block_on(jobs.counts()).unwrap();
    let get = |s| c.get(&s).copied().unwrap_or(0);
    (
        get(JobState::Completed),
        get(JobState::Queued) + get(JobState::Scheduled),
    )
}

#[test]
fn rate_limits_per_type_and_per_key_pace_starts_on_the_jobs_clock() {
    use quark::jobs::RateLimit;
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let node = builder(tmp.path(), 1)
        .jobs_config(manual(&clock))
        .register_job::<Work, _, _>(
            JobTypeConfig {
                rate_limit: Some(RateLimit::per(10, Duration::from_secs(1))),
                ..JobTypeConfig::default()
            },
            |_w: Work, _ctx: JobContext| async { Ok(()) },
        )
        .register_job::<Parent, _, _>(
            JobTypeConfig::default(),
            |_p: Parent, _ctx: JobContext| async { Ok(()) },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    // Per type: a burst of 10, then 10 per second.
    for n in 0..35 {
        block_on(jobs.enqueue(&work(n), JobOptions::default())).unwrap();
    }
    until("the first burst", || {
        (completed_and_queued(&jobs) == (10, 25)).then_some(())
    });
    clock.advance(Duration::from_millis(500));
    jobs.poke();
    until("half a second of tokens", || {
        (completed_and_queued(&jobs) == (15, 20)).then_some(())
    });
    clock.advance(Duration::from_millis(1_000));
    jobs.poke();
    until("a second of tokens", || {
        (completed_and_queued(&jobs) == (25, 10)).then_some(())
    });
    clock.advance(Duration::from_millis(1_000));
    jobs.poke();
    until("the rest", || {
        (completed_and_queued(&jobs) == (35, 0)).then_some(())
    });

    // Per key: 2 per second per key, keys independent.
    let limit = RateLimit::per(2, Duration::from_secs(1));
    for n in 0..12u64 {
        let key = format!("k{}", n % 2);
        let opts = JobOptions::default().concurrency(key, 100).key_rate(limit);
        block_on(jobs.enqueue(&Parent(n), opts)).unwrap();
    }
    until("two per key", || {
        (completed_and_queued(&jobs) == (39, 8)).then_some(())
    });
    clock.advance(Duration::from_millis(1_000));
    jobs.poke();
    until("two more per key", || {
        (completed_and_queued(&jobs) == (43, 4)).then_some(())
    });
    clock.advance(Duration::from_millis(1_000));
    jobs.poke();
    until("the rest", || {
        (completed_and_queued(&jobs) == (47, 0)).then_some(())
    });
    // A key rate limit needs a key.
    let e = block_on(jobs.enqueue(&Parent(99), JobOptions::default().key_rate(limit))).unwrap_err();
    assert!(e.to_string().contains("needs a concurrency_key"), "{e}");
    node.shutdown();
}

/// `start_before_durable`: handlers start while their `Started` record is being written; each
/// job still runs once, its outcome is recorded after its start, and a restart (in the usual
/// mode) finds every job completed and runs none again; an attempt that was running at the
/// shutdown runs again with the next number, as in the usual mode.
#[test]
fn starting_before_the_start_record_is_durable_runs_each_job_once_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let start = |early: bool| {
        let r = Arc::clone(&runs);
        builder(tmp.path(), 2)
            .jobs_config(JobsConfig {
                start_before_durable: early,
                // Completed jobs stay known after the restart.
                finished_retention: Duration::from_secs(3600),
                ..JobsConfig::default()
            })
            .register_job::<Work, _, _>(
                JobTypeConfig::default(),
                move |w: Work, ctx: JobContext| {
                    r.lock().unwrap().push((w.n, ctx.attempt()));
                    async move {
                        if w.n == 0 {
                            // Hangs until the shutdown: the attempt is interrupted.
                            futures::future::pending::<()>().await;
                        }
                        Ok(())
                    }
                },
            )
            .start()
            .unwrap()
    };
    let node = start(true);
    let jobs = node.jobs();
    let hang = block_on(jobs.enqueue(&work(0), JobOptions::default())).unwrap();
    let batch: Vec<NewJob> = (1..=200)
        .map(|n| NewJob::new(&work(n), JobOptions::default()))
        .collect();
    let ids = block_on(jobs.enqueue_batch(batch)).unwrap();
    for id in &ids {
        // With a deadline: a start that never happens fails here instead of hanging.
        status_until(&jobs, *id, "the job to complete", |s| {
            s.state == JobState::Completed
        });
    }
    status_until(&jobs, hang, "job 0 to run", |s| {
        s.state == JobState::Running
    });
    node.shutdown();
    let mut first: Vec<(u64, u32)> = runs.lock().unwrap().clone();
    first.sort_unstable();
    let want: Vec<(u64, u32)> = (0..=200).map(|n| (n, 1)).collect();
    assert_eq!(first, want, "each job ran once, attempt 1");

    let node = start(false);
    let jobs = node.jobs();
    for id in &ids {
        assert_eq!(
            block_on(jobs.status(*id)).unwrap().state,
            JobState::Completed
        );
    }
    status_until(&jobs, hang, "job 0 to run again", |s| {
        s.state == JobState::Running && s.attempt == 2
    });
    let again: Vec<(u64, u32)> = runs.lock().unwrap()[first.len()..].to_vec();
    assert_eq!(again, vec![(0, 2)], "only the interrupted job ran again");
    node.shutdown();
}

/// The shard's log appends so far (its durable writes under `fsync = "always"`).
fn shard_appends(node: &Node, shard: u16) -> u64 {
    node.spawn_on(shard, || async {
        quark_shard::current_shard_log()
            .map(|l| l.stats().append_count)
            .unwrap_or(0)
    })
    .join()
    .unwrap()
}

/// `start_on_enqueue` (the default): a job that can run at once is started by the same log
/// append as its enqueue (its `Started` record rides in the enqueue's batch), so its handler
/// starts after one durable write, not two; switched off, the scheduler's next round writes the
/// start in a second append. The enqueue stays durable before it is acknowledged either way.
#[test]
fn a_job_that_can_run_at_once_starts_with_the_append_of_its_enqueue() {
    for (start_on_enqueue, appends_before_start) in [(true, 1), (false, 2)] {
        let tmp = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(4);
        let node = builder(tmp.path(), 1)
            .jobs_config(JobsConfig {
                start_on_enqueue,
                ..JobsConfig::default()
            })
            .register_job::<Work, _, _>(
                JobTypeConfig::default(),
                move |_w: Work, _ctx: JobContext| {
                    let tx = tx.clone();
                    async move {
                        let appends = quark_shard::current_shard_log()
                            .map(|l| l.stats().append_count)
                            .unwrap_or(0);
                        tx.send(appends).expect("the test waits for the count");
                        Ok(())
                    }
                },
            )
            .start()
            .unwrap();
        let jobs = node.jobs();
        for n in 0..3 {
            let before = shard_appends(&node, 0);
            let id = block_on(jobs.enqueue(&work(n), JobOptions::default())).unwrap();
            let at_start = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the handler starts");
            assert_eq!(
                at_start - before,
                appends_before_start,
                "start_on_enqueue = {start_on_enqueue}: log appends between the enqueue and the handler's start"
            );
            let st = block_on(jobs.wait(id)).unwrap();
            assert_eq!(st.state, JobState::Completed);
            assert_eq!(st.attempt, 1);
        }
        node.shutdown();
    }
}

/// An enqueue whose append fails after its jobs were started with it (`start_on_enqueue`)
/// undoes those starts: the failed batch's jobs are gone, and the type's only running slot
/// is free again, so the next job runs. The batch fails because it is larger than a log
/// segment (4 MiB here), which the log refuses without writing anything.
#[test]
fn a_failed_enqueue_undoes_the_starts_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), 1)
        .register_job::<Work, _, _>(
            JobTypeConfig {
                max_running_per_shard: 1,
                ..JobTypeConfig::default()
            },
            |_w: Work, _ctx: JobContext| async { Ok(()) },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let big = Work {
        n: 2,
        tag: "x".repeat(5 << 20),
    };
    let failed = block_on(jobs.enqueue_batch(vec![
        NewJob::new(&work(1), JobOptions::default()),
        NewJob::new(&big, JobOptions::default()),
    ]));
    assert!(
        matches!(failed, Err(EnqueueError::Append(_))),
        "a batch larger than a segment is refused: {failed:?}"
    );
    let id = block_on(jobs.enqueue(&work(3), JobOptions::default())).unwrap();
    let st = status_until(
        &jobs,
        id,
        "the next job completes (its type's slot was freed)",
        |s| s.state == JobState::Completed,
    );
    assert_eq!(st.attempt, 1);
    let all = block_on(jobs.list(ListQuery::default())).unwrap();
    assert_eq!(
        all.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![id],
        "nothing of the failed batch is left"
    );
    node.shutdown();
}
