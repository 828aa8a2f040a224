//! Durable jobs, operator side: a paused queue stays paused across a restart, a queue that
//! cannot be recovered is a start error, the per-node limit of a job type holds across
//! shards, and the admin endpoint's `/quark/jobs` routes refuse bad input with a status code
//! and a message naming the cause.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quark::jobs::{
    Job, JobContext, JobFailure, JobOptions, JobState, JobTypeConfig, JobsError, JobsStartError,
};
use quark::{block_on, Node, NodeBuilder, NodeConfig, NodeError};
use serde::{Deserialize, Serialize};

fn builder(dir: &Path, shards: u16) -> NodeBuilder {
    let text = format!(
        "[node]\nshards = {shards}\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n",
        dir.to_str().expect("temp dir path is UTF-8")
    );
    Node::builder().config(NodeConfig::from_toml(&text, "test.toml").expect("valid test config"))
}

/// Polls `f` until it returns `Some`, failing after 10 s.
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

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Task(u64);

impl Job for Task {
    const TYPE_NAME: &'static str = "task";
}

type Runs = Arc<Mutex<Vec<(u64, Instant)>>>;

fn with_task(b: NodeBuilder, runs: &Runs) -> NodeBuilder {
    let runs = Arc::clone(runs);
    b.register_job::<Task, _, _>(JobTypeConfig::default(), move |t: Task, _: JobContext| {
        runs.lock().unwrap().push((t.0, Instant::now()));
        async { Ok::<(), JobFailure>(()) }
    })
}

#[test]
fn a_paused_queue_stays_paused_across_a_restart_until_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let runs: Runs = Arc::default();
    {
        let node = with_task(builder(tmp.path(), 2), &runs).start().unwrap();
        let jobs = node.jobs();
        block_on(jobs.set_paused(None, true)).unwrap();
        block_on(jobs.set_paused(Some("task".into()), true)).unwrap();
        assert!(matches!(
            block_on(jobs.set_paused(Some("nope".into()), true)),
            Err(JobsError::UnknownType(t)) if t == "nope"
        ));
        node.shutdown();
    }
    let node = with_task(builder(tmp.path(), 2), &runs).start().unwrap();
    let jobs = node.jobs();
    assert_eq!(
        block_on(jobs.paused()).unwrap(),
        (true, vec!["task".to_owned()]),
        "the pause state was recovered"
    );
    let ids: Vec<_> = (0..4)
        .map(|n| block_on(jobs.enqueue(&Task(n), JobOptions::default())).unwrap())
        .collect();
    // A bounded look (not a synchronisation): a paused queue starts nothing. The outcome that
    // proves it is checked below (every run happened after the resume).
    let look = Instant::now() + Duration::from_millis(300);
    while Instant::now() < look {
        jobs.poke();
        for id in &ids {
            assert_eq!(block_on(jobs.status(*id)).unwrap().state, JobState::Queued);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Resuming the queue leaves the paused type paused.
    block_on(jobs.set_paused(None, false)).unwrap();
    let look = Instant::now() + Duration::from_millis(200);
    while Instant::now() < look {
        jobs.poke();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(runs.lock().unwrap().is_empty(), "the type is still paused");
    let resumed = Instant::now();
    block_on(jobs.set_paused(Some("task".into()), false)).unwrap();
    for id in &ids {
        until("the job to complete after the resume", || {
            (block_on(jobs.status(*id)).ok()?.state == JobState::Completed).then_some(())
        });
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 4);
    assert!(
        runs.iter().all(|(_, at)| *at >= resumed),
        "no job ran before the resume"
    );
    assert_eq!(block_on(jobs.paused()).unwrap(), (false, vec![]));
    node.shutdown();
}

#[test]
fn a_queue_that_cannot_be_recovered_is_a_start_error() {
    let tmp = tempfile::tempdir().unwrap();
    // A node without jobs writes a pause record this build cannot read (format 9) on shard 1.
    {
        let node = builder(tmp.path(), 2).start().unwrap();
        node.spawn_on(1, || async {
            let log = quark::log::current_shard_log().expect("the node has a log");
            let mut b = quark::log::Batch::new();
            b.snapshot(b"jobs/p", &[9, 0, 0]);
            log.append(&b).await.expect("appended");
        })
        .join()
        .expect("ran on shard 1");
        node.shutdown();
    }
    let runs: Runs = Arc::default();
    match with_task(builder(tmp.path(), 2), &runs).start() {
        Err(NodeError::Jobs(JobsStartError::BadRecord { shard, .. })) => assert_eq!(shard, 1),
        Err(e) => panic!("expected a jobs start error, got {e}"),
        Ok(_) => panic!("a node started with a job queue it could not recover"),
    }
    // The failed start stopped its shards and released the data directory.
    let node = builder(tmp.path(), 2)
        .start()
        .expect("the directory is free again");
    node.shutdown();
}

#[test]
fn the_per_node_limit_of_a_type_holds_across_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU32::new(0));
    let max = Arc::new(AtomicU32::new(0));
    let (n2, m2) = (Arc::clone(&now), Arc::clone(&max));
    let node = builder(tmp.path(), 2)
        .register_job::<Task, _, _>(
            JobTypeConfig {
                max_running_per_shard: 100,
                max_running_per_node: Some(3),
                ..JobTypeConfig::default()
            },
            move |_: Task, _: JobContext| {
                let (now, max) = (Arc::clone(&n2), Arc::clone(&m2));
                async move {
                    let r = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(r, Ordering::SeqCst);
                    // The work: long enough that many jobs would overlap without the limit.
                    quark::sleep(Duration::from_millis(15)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok::<(), JobFailure>(())
                }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    // Spread over both shards (no key: round robin).
    let ids: Vec<_> = (0..40)
        .map(|n| block_on(jobs.enqueue(&Task(n), JobOptions::default())).unwrap())
        .collect();
    assert!(ids.iter().any(|i| i.shard() == 0) && ids.iter().any(|i| i.shard() == 1));
    for id in &ids {
        until("every job to complete", || {
            (block_on(jobs.status(*id)).ok()?.state == JobState::Completed).then_some(())
        });
    }
    let max = max.load(Ordering::SeqCst);
    assert!(max <= 3, "{max} ran at once on the node, limit 3");
    assert_eq!(max, 3, "the limit was reached (the test is meaningful)");
    node.shutdown();
}

#[test]
fn batches_without_keys_are_spread_over_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let runs: Runs = Arc::default();
    let node = with_task(builder(tmp.path(), 2), &runs).start().unwrap();
    let jobs = node.jobs();
    let mut per_shard = [0u32; 2];
    for b in 0..8u64 {
        // Even batch sizes: each job of a batch takes a round-robin turn.
        let batch = (0..2)
            .map(|i| quark::jobs::NewJob::new(&Task(b * 2 + i), JobOptions::default()))
            .collect();
        let ids = block_on(jobs.enqueue_batch(batch)).unwrap();
        assert!(
            ids.iter().all(|i| i.shard() == ids[0].shard()),
            "one batch, one shard"
        );
        per_shard[usize::from(ids[0].shard())] += 1;
    }
    assert_eq!(per_shard, [4, 4], "batches alternate between the shards");
    node.shutdown();
}

// ---- The admin endpoint's /quark/jobs routes: bad input and refused operations. ----

fn with_admin(dir: &Path, shards: u16) -> NodeBuilder {
    let text = format!(
        "[node]\nshards = {shards}\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        dir.to_str().expect("temp dir path is UTF-8")
    );
    Node::builder().config(NodeConfig::from_toml(&text, "test.toml").expect("valid test config"))
}

/// `method path` on the node's admin endpoint: (status, the `error` of a JSON error body or
/// the whole body).
fn call(node: &Node, method: &str, path: &str) -> (u16, String) {
    let r = quark::admin::request(
        node.admin_addr().expect("the node has an admin endpoint"),
        method,
        path,
        Duration::from_secs(5),
    )
    .expect("the endpoint answers");
    assert_eq!(r.content_type, "application/json", "{path}: {}", r.body);
    match serde_json::from_str::<quark::admin::ApiError>(&r.body) {
        Ok(e) if r.status != 200 => (r.status, e.error),
        _ => (r.status, r.body),
    }
}

#[test]
fn jobs_routes_refuse_bad_input_with_a_status_and_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let runs: Runs = Arc::default();
    let node = with_task(with_admin(tmp.path(), 2), &runs).start().unwrap();
    let jobs = node.jobs();
    let done = block_on(jobs.enqueue(&Task(1), JobOptions::default())).unwrap();
    assert_eq!(
        block_on(jobs.wait(done)).unwrap().state,
        JobState::Completed
    );
    let later = block_on(jobs.enqueue(
        &Task(2),
        JobOptions::default().after(Duration::from_secs(3600)),
    ))
    .unwrap();

    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "GET",
            "/quark/jobs?state=sleeping",
            400,
            "bad state \"sleeping\"",
        ),
        ("GET", "/quark/jobs?limit=0", 400, "bad limit \"0\""),
        ("GET", "/quark/jobs?limit=1001", 400, "bad limit \"1001\""),
        ("GET", "/quark/jobs?cursor=x.y", 400, "bad cursor"),
        (
            "GET",
            "/quark/jobs?colour=red",
            400,
            "unknown parameter \"colour\"",
        ),
        ("GET", "/quark/jobs?key=%zz", 400, "bad percent escape"),
        (
            "GET",
            "/quark/jobs/dead-letters?state=queued",
            400,
            "unknown parameter \"state\"",
        ),
        ("GET", "/quark/jobs/not-an-id", 400, "bad job id"),
        (
            "GET",
            "/quark/jobs/1.999999",
            404,
            "job 1.999999 is not known",
        ),
        ("GET", "/quark/jobs/77.1", 404, "job 77.1 is not known"),
        ("POST", "/quark/jobs/1.999999/cancel", 404, "is not known"),
        (
            "GET",
            &*format!("/quark/jobs/{done}/cancel"),
            405,
            "needs POST",
        ),
        ("POST", "/quark/jobs", 405, "needs GET"),
        ("DELETE", "/quark/jobs/summary", 405, "needs GET"),
        ("GET", "/quark/jobs/a/b/c/d", 404, "no route"),
        (
            "POST",
            "/quark/jobs/pause?type=nope",
            404,
            "no job type named \"nope\"",
        ),
        (
            "POST",
            &*format!("/quark/jobs/{done}/cancel"),
            409,
            "Completed",
        ),
        (
            "POST",
            &*format!("/quark/jobs/dead-letters/{later}/replay"),
            409,
            "Scheduled",
        ),
        (
            "POST",
            &*format!("/quark/jobs/dead-letters/{done}/purge"),
            409,
            "not a dead letter",
        ),
    ];
    for (method, path, status, needle) in cases {
        let (got, msg) = call(&node, method, path);
        assert_eq!(got, *status, "{method} {path}: {msg}");
        assert!(
            msg.contains(needle),
            "{method} {path}: {msg:?} lacks {needle:?}"
        );
    }
    // Nothing above changed a job: the completed one is still there, the scheduled one too.
    assert_eq!(
        block_on(jobs.status(done)).unwrap().state,
        JobState::Completed
    );
    assert_eq!(
        block_on(jobs.status(later)).unwrap().state,
        JobState::Scheduled
    );
    // The summary counts them.
    let (status, body) = call(&node, "GET", "/quark/jobs/summary");
    assert_eq!(status, 200, "{body}");
    let s: quark::admin::JobsSummary = serde_json::from_str(&body).unwrap();
    assert_eq!(s.counts["completed"], 1);
    assert_eq!(s.counts["scheduled"], 1);
    assert_eq!(s.counts.values().sum::<u64>(), 2);
    assert_eq!(s.types, vec!["task".to_owned()]);
    assert!(!s.paused.all && s.paused.types.is_empty());
    // Pausing the whole queue is reported, durably, and undone by resume.
    let (status, body) = call(&node, "POST", "/quark/jobs/pause");
    assert_eq!((status, body.as_str()), (200, r#"{"all":true,"types":[]}"#));
    assert_eq!(block_on(jobs.paused()).unwrap(), (true, vec![]));
    let (status, _) = call(&node, "POST", "/quark/jobs/resume");
    assert_eq!(status, 200);
    assert_eq!(block_on(jobs.paused()).unwrap(), (false, vec![]));
    node.shutdown();
}

#[test]
fn jobs_routes_on_a_node_without_a_job_queue_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    // An admin endpoint, a log, no job type.
    let node = with_admin(tmp.path(), 1).start().unwrap();
    for (method, path) in [
        ("GET", "/quark/jobs"),
        ("GET", "/quark/jobs/0.1"),
        ("POST", "/quark/jobs/pause"),
    ] {
        let (status, msg) = call(&node, method, path);
        assert_eq!(status, 404, "{path}: {msg}");
        assert!(msg.contains("this node runs no job queue"), "{path}: {msg}");
    }
    // Bad input is still a 400 (checked before the node is asked).
    assert_eq!(call(&node, "GET", "/quark/jobs?state=x").0, 400);
    node.shutdown();
}
