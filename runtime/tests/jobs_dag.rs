//! Job DAGs: order, results from parents to children, cycle refusal, failure policies, and
//! waiting children across a restart.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quark::jobs::{
    Dep, EnqueueError, Job, JobContext, JobFailure, JobId, JobOptions, JobState, JobTypeConfig,
    Jobs, JobsConfig, ManualClock, NewJob, OnParentFailure,
};
use quark::{block_on, Node, NodeBuilder, NodeConfig};
use serde::{Deserialize, Serialize};

fn builder(dir: &Path, shards: u16) -> NodeBuilder {
    let text = format!(
        "[node]\nshards = {shards}\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n",
        dir.to_str().expect("temp dir path is UTF-8")
    );
    Node::builder().config(NodeConfig::from_toml(&text, "test.toml").expect("valid test config"))
}

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

/// A step: its name; the handler fails it if the name starts with "fail".
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Step(String);
impl Job for Step {
    const TYPE_NAME: &'static str = "step";
}

type Log = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// Runs steps; records (name, parent results as strings); the result is the name.
fn node(dir: &Path, log: &Log, gate: &Arc<AtomicBool>, clock: Option<&ManualClock>) -> Node {
    let (l, g) = (Arc::clone(log), Arc::clone(gate));
    let mut b = builder(dir, 2);
    if let Some(c) = clock {
        b = b.jobs_config(JobsConfig {
            clock: Arc::new(c.clone()),
            idle_poll: Duration::from_millis(5),
            ..JobsConfig::default()
        });
    }
    b.register_job::<Step, _, _>(JobTypeConfig::default(), move |s: Step, ctx: JobContext| {
        let (l, g) = (Arc::clone(&l), Arc::clone(&g));
        async move {
            while s.0.starts_with("gated") && !g.load(Ordering::SeqCst) {
                quark_shard::sleep(Duration::from_millis(1)).await;
            }
            let mut parents: Vec<String> = ctx
                .parent_results()
                .into_iter()
                .map(|(_, r)| String::from_utf8(r.unwrap_or_default()).unwrap())
                .collect();
            parents.sort();
            l.lock().unwrap().push((s.0.clone(), parents));
            if s.0.starts_with("fail") {
                return Err(JobFailure::fatal("step failed"));
            }
            ctx.set_result(s.0.into_bytes());
            Ok(())
        }
    })
    .start()
    .unwrap()
}

fn step(name: &str, deps: &[Dep]) -> NewJob {
    let mut o = JobOptions::default();
    for d in deps {
        o = o.depends_on(*d);
    }
    NewJob::new(&Step(name.into()), o)
}

fn names(log: &Log) -> Vec<String> {
    log.lock().unwrap().iter().map(|(n, _)| n.clone()).collect()
}

#[test]
fn a_diamond_runs_in_dependency_order_and_children_get_their_parents_results() {
    let tmp = tempfile::tempdir().unwrap();
    let log: Log = Arc::default();
    let node = node(tmp.path(), &log, &Arc::new(AtomicBool::new(true)), None);
    let jobs = node.jobs();
    // d waits for b and c, which wait for a; listed child-first to show the order is the DAG's.
    let ids = block_on(jobs.enqueue_batch(vec![
        step("d", &[Dep::InBatch(1), Dep::InBatch(2)]),
        step("b", &[Dep::InBatch(3)]),
        step("c", &[Dep::InBatch(3)]),
        step("a", &[]),
    ]))
    .unwrap();
    let st = block_on(jobs.wait(ids[0])).unwrap();
    assert_eq!(st.state, JobState::Completed);
    let l = log.lock().unwrap().clone();
    let pos = |n: &str| l.iter().position(|(x, _)| x == n).unwrap();
    assert_eq!(pos("a"), 0);
    assert_eq!(pos("d"), 3);
    assert_eq!(l[pos("b")].1, vec!["a".to_string()]);
    assert_eq!(l[pos("d")].1, vec!["b".to_string(), "c".to_string()]);
    node.shutdown();
}

#[test]
fn a_cycle_or_a_bad_dependency_is_refused_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let log: Log = Arc::default();
    let node = node(tmp.path(), &log, &Arc::new(AtomicBool::new(true)), None);
    let jobs = node.jobs();
    let before = block_on(jobs.counts()).unwrap();
    let e = block_on(jobs.enqueue_batch(vec![
        step("x", &[]),
        step("a", &[Dep::InBatch(3)]),
        step("b", &[Dep::InBatch(1)]),
        step("c", &[Dep::InBatch(2), Dep::InBatch(0)]),
    ]))
    .unwrap_err();
    match e {
        EnqueueError::DependencyCycle { mut jobs } => {
            jobs.sort();
            assert_eq!(jobs, vec![1, 2, 3]);
        }
        other => panic!("expected a cycle, got {other}"),
    }
    let e = block_on(jobs.enqueue_batch(vec![step("self", &[Dep::InBatch(0)])])).unwrap_err();
    assert!(
        matches!(e, EnqueueError::DependencyCycle { ref jobs } if jobs == &[0]),
        "{e}"
    );
    let e = block_on(jobs.enqueue_batch(vec![step("far", &[Dep::InBatch(5)])])).unwrap_err();
    assert!(
        matches!(e, EnqueueError::BadDependency { index: 0, .. }),
        "{e}"
    );
    let ghost = JobId::from_str_parts(0, 999_999);
    let e = block_on(jobs.enqueue_batch(vec![step("ghost", &[Dep::Job(ghost)])])).unwrap_err();
    assert!(e.to_string().contains("not known"), "{e}");
    assert_eq!(block_on(jobs.counts()).unwrap(), before);
    assert!(log.lock().unwrap().is_empty());
    node.shutdown();
}

trait Parts {
    fn from_str_parts(shard: u16, seq: u64) -> JobId;
}
impl Parts for JobId {
    fn from_str_parts(shard: u16, seq: u64) -> JobId {
        format!("{shard}.{seq}").parse().unwrap()
    }
}

#[test]
fn a_failed_parent_cancels_or_fails_its_dependents_by_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let log: Log = Arc::default();
    let node = node(tmp.path(), &log, &Arc::new(AtomicBool::new(true)), None);
    let jobs = node.jobs();
    let fail_policy = JobOptions::default()
        .depends_on(Dep::InBatch(0))
        .on_parent_failure(OnParentFailure::Fail);
    let ids = block_on(jobs.enqueue_batch(vec![
        step("fail-root", &[]),
        step("cancelled-child", &[Dep::InBatch(0)]),
        step("cancelled-grandchild", &[Dep::InBatch(1)]),
        NewJob::new(&Step("dead-child".into()), fail_policy),
    ]))
    .unwrap();
    let sts: Vec<_> = ids
        .iter()
        .map(|id| block_on(jobs.wait(*id)).unwrap())
        .collect();
    assert_eq!(sts[0].state, JobState::Dead);
    assert_eq!(sts[1].state, JobState::Cancelled);
    assert_eq!(sts[2].state, JobState::Cancelled);
    assert_eq!(sts[3].state, JobState::Dead);
    assert!(sts[3]
        .last_error
        .as_deref()
        .unwrap()
        .contains(&format!("job {} it depends on is dead", ids[0])));
    assert_eq!(
        names(&log),
        vec!["fail-root".to_string()],
        "no dependent ran"
    );
    node.shutdown();
}

#[test]
fn a_job_can_wait_for_an_existing_job_and_cancelling_a_blocked_job_works() {
    let tmp = tempfile::tempdir().unwrap();
    let log: Log = Arc::default();
    let gate = Arc::new(AtomicBool::new(false));
    let node = node(tmp.path(), &log, &gate, None);
    let jobs = node.jobs();
    let parent = block_on(jobs.enqueue_batch(vec![step("gated-parent", &[])])).unwrap()[0];
    until("the parent to run", || {
        (block_on(jobs.status(parent)).unwrap().state == JobState::Running).then_some(())
    });
    let ids = block_on(jobs.enqueue_batch(vec![
        step("child", &[Dep::Job(parent)]),
        step("doomed", &[Dep::Job(parent)]),
    ]))
    .unwrap();
    assert_eq!(
        ids[0].shard(),
        parent.shard(),
        "placed on its parent's shard"
    );
    assert_eq!(
        block_on(jobs.status(ids[0])).unwrap().state,
        JobState::Blocked
    );
    assert_eq!(
        block_on(jobs.cancel(ids[1])).unwrap().state,
        JobState::Cancelled
    );
    gate.store(true, Ordering::SeqCst);
    assert_eq!(
        block_on(jobs.wait(ids[0])).unwrap().state,
        JobState::Completed
    );
    let l = log.lock().unwrap().clone();
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(
        l[1],
        ("child".to_string(), vec!["gated-parent".to_string()])
    );
    // A dependency on a finished job that is still known: satisfied at once, with its result.
    let late = block_on(jobs.enqueue_batch(vec![step("late", &[Dep::Job(parent)])])).unwrap()[0];
    assert_eq!(
        block_on(jobs.wait(late)).unwrap().state,
        JobState::Completed
    );
    assert_eq!(log.lock().unwrap()[2].1, vec!["gated-parent".to_string()]);
    node.shutdown();
}

#[test]
fn a_blocked_child_waits_across_a_restart_and_then_gets_its_parents_result() {
    let tmp = tempfile::tempdir().unwrap();
    let log: Log = Arc::default();
    let gate = Arc::new(AtomicBool::new(true));
    let clock = ManualClock::new(1_700_000_000_000);
    let n = node(tmp.path(), &log, &gate, Some(&clock));
    let later = JobOptions::default().after(Duration::from_secs(60));
    let ids = block_on(n.jobs().enqueue_batch(vec![
        NewJob::new(&Step("parent".into()), later),
        step("child", &[Dep::InBatch(0)]),
    ]))
    .unwrap();
    n.shutdown();

    let n = node(tmp.path(), &log, &gate, Some(&clock));
    let jobs: Jobs = n.jobs();
    assert_eq!(
        block_on(jobs.status(ids[1])).unwrap().state,
        JobState::Blocked
    );
    clock.advance(Duration::from_secs(60));
    jobs.poke();
    assert_eq!(
        block_on(jobs.wait(ids[1])).unwrap().state,
        JobState::Completed
    );
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            ("parent".to_string(), vec![]),
            ("child".to_string(), vec!["parent".to_string()])
        ]
    );
    n.shutdown();
}
