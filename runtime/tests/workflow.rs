//! Durable workflows: replay after restarts at every step, timers and events across
//! restarts, event timeouts, continue_as_new, history limits, non-determinism detection,
//! patches and versions, cancellation of children, the API (start, list, history, purge).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quark::workflow::{
    ActivityContext, ActivityError, ActivityOptions, HistoryEvent, InstanceState, ListQuery,
    StepError, StepKind, WorkflowContext, WorkflowStatus, Workflows,
};
use quark::{block_on, Node, NodeBuilder, NodeConfig};

fn builder(dir: &Path, extra: &str) -> NodeBuilder {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n{extra}",
        dir.to_str().expect("temp dir path is UTF-8")
    );
    Node::builder().config(NodeConfig::from_toml(&text, "test.toml").expect("valid test config"))
}

/// Polls `f` until it returns `Some`, failing after 15 s.
fn until<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    until_within(Duration::from_secs(15), what, f)
}

/// Polls `f` until it returns `Some`, failing after `limit`.
fn until_within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The instance's output, once it finished (within the deadline of `until`).
fn result<O: serde::de::DeserializeOwned>(
    wf: &Workflows,
    id: &str,
) -> Result<O, quark::workflow::WorkflowError> {
    finished(wf, id);
    block_on(wf.result(id))
}

fn finished(wf: &Workflows, id: &str) -> WorkflowStatus {
    until(&format!("{id} to finish"), || {
        block_on(wf.status(id))
            .ok()
            .filter(|s| s.state.is_finished())
    })
}

/// Waits until the last step the instance asked for is a wait for `event` (its `Scheduled`
/// record is durable, so every step before it is done in a sequential orchestration).
fn waiting_for(wf: &Workflows, id: &str, event: &str) {
    until(&format!("{id} to wait for {event}"), || {
        let h = block_on(wf.history(id)).ok()?;
        let last = h.iter().rev().find_map(|e| match e {
            HistoryEvent::Scheduled { step, .. } => Some(step.clone()),
            _ => None,
        })?;
        (last.kind == StepKind::Event && last.name == event).then_some(())
    })
}

/// Executions of each activity call, by "instance:what".
static RUNS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn count(key: String) -> u32 {
    let mut g = RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let m = g.get_or_insert_with(HashMap::new);
    let n = m.entry(key).or_insert(0);
    *n += 1;
    *n
}

fn runs(key: &str) -> u32 {
    RUNS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(key).copied())
        .unwrap_or(0)
}

async fn step_activity(input: (String, u32), ctx: ActivityContext) -> Result<u32, ActivityError> {
    count(format!("{}:{}", ctx.instance, input.0));
    Ok(input.1 * 10)
}

/// Five activity steps, each followed by a wait for "go": the test restarts the node at every
/// wait.
async fn five_steps(ctx: WorkflowContext, _: ()) -> Result<Vec<u32>, StepError> {
    let mut out = Vec::new();
    for i in 0..5u32 {
        let r: u32 = ctx.call_activity("step", &(format!("s{i}"), i)).await?;
        out.push(r);
        let () = ctx.wait_event("go").await?;
    }
    Ok(out)
}

fn steps_node(dir: &Path) -> Node {
    builder(dir, "")
        .register_workflow("five", 1, five_steps)
        .register_activity("step", step_activity)
        .start()
        .expect("node starts")
}

#[test]
fn replay_after_a_restart_at_every_step_runs_each_activity_once() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "five-a";
    let node = steps_node(tmp.path());
    block_on(node.workflows().start("five", id, &())).unwrap();
    let mut node = node;
    for i in 0..5 {
        let wf = node.workflows();
        waiting_for(&wf, id, "go");
        node.shutdown();
        // Every completed step ran exactly once, including across the restarts before it.
        for j in 0..=i {
            assert_eq!(runs(&format!("{id}:s{j}")), 1, "step {j} after restart {i}");
        }
        node = steps_node(tmp.path());
        let wf = node.workflows();
        let st = block_on(wf.status(id)).unwrap();
        assert_eq!(st.state, InstanceState::Running);
        block_on(wf.raise_event(id, "go", &())).unwrap();
    }
    let wf = node.workflows();
    let st = finished(&wf, id);
    assert_eq!(st.state, InstanceState::Completed, "{st:?}");
    let out: Vec<u32> = result(&wf, id).unwrap();
    assert_eq!(out, vec![0, 10, 20, 30, 40]);
    for j in 0..5 {
        assert_eq!(runs(&format!("{id}:s{j}")), 1, "step {j}");
    }
    node.shutdown();
}

async fn slow_activity(input: String, ctx: ActivityContext) -> Result<String, ActivityError> {
    let n = count(format!("{}:{input}", ctx.instance));
    if n == 1 {
        // The first execution never finishes: the node is stopped under it.
        std::future::pending::<()>().await;
    }
    Ok(format!("{input} done"))
}

async fn one_slow(ctx: WorkflowContext, _: ()) -> Result<String, StepError> {
    ctx.call_activity("slow", &"x".to_string()).await
}

#[test]
fn an_activity_interrupted_by_a_restart_runs_again_and_the_instance_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "slow-a";
    let start = |dir: &Path| {
        builder(dir, "")
            .register_workflow("slow", 1, one_slow)
            .register_activity("slow", slow_activity)
            .start()
            .expect("node starts")
    };
    let node = start(tmp.path());
    block_on(node.workflows().start("slow", id, &())).unwrap();
    until("the activity to start", || {
        (runs(&format!("{id}:x")) == 1).then_some(())
    });
    node.shutdown();
    let node = start(tmp.path());
    let wf = node.workflows();
    let st = finished(&wf, id);
    assert_eq!(st.state, InstanceState::Completed, "{st:?}");
    assert_eq!(result::<String>(&wf, id).unwrap(), "x done");
    // At least once: the interrupted execution and the one after the restart.
    assert_eq!(runs(&format!("{id}:x")), 2);
    node.shutdown();
}

async fn sleeper(ctx: WorkflowContext, ms: u64) -> Result<(u64, u64), StepError> {
    let t0 = ctx.now_ms();
    ctx.timer(Duration::from_millis(ms)).await;
    Ok((t0, ctx.now_ms()))
}

#[test]
fn a_durable_timer_fires_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let start = |dir: &Path| {
        builder(dir, "")
            .register_workflow("sleeper", 1, sleeper)
            .start()
            .expect("node starts")
    };
    let node = start(tmp.path());
    let began = Instant::now();
    block_on(node.workflows().start("sleeper", "t-1", &800u64)).unwrap();
    node.shutdown();
    let node = start(tmp.path());
    let wf = node.workflows();
    let st = finished(&wf, "t-1");
    assert_eq!(st.state, InstanceState::Completed);
    // A durable timer is due at a wall-clock time (it must survive a restart); the wall clock
    // may be slewed against the monotonic one by a few ms on a VM, so the monotonic check keeps
    // 10 ms of slack. The history's own times (below) are exact.
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(790),
        "the timer fired after {waited:?}"
    );
    let (t0, t1) = result::<(u64, u64)>(&wf, "t-1").unwrap();
    assert!(
        t1 >= t0 + 800,
        "deterministic time moved by the timer: {t0} -> {t1}"
    );
    let h = block_on(wf.history("t-1")).unwrap();
    assert!(h
        .iter()
        .any(|e| matches!(e, HistoryEvent::TimerFired { seq: 0, .. })));
    node.shutdown();
}

async fn two_events(ctx: WorkflowContext, _: ()) -> Result<(String, String), StepError> {
    let () = ctx.wait_event("gate").await?;
    let x: String = ctx.wait_event("x").await?;
    let y: String = ctx.wait_event("y").await?;
    Ok((x, y))
}

#[test]
fn events_raised_before_and_after_the_wait_starts_are_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "")
        .register_workflow("events", 1, two_events)
        .start()
        .unwrap();
    let wf = node.workflows();
    block_on(wf.start("events", "e-1", &())).unwrap();
    waiting_for(&wf, "e-1", "gate");
    // "x" arrives before its wait starts: it is kept.
    block_on(wf.raise_event("e-1", "x", &"early".to_string())).unwrap();
    block_on(wf.raise_event("e-1", "gate", &())).unwrap();
    waiting_for(&wf, "e-1", "y");
    block_on(wf.raise_event("e-1", "y", &"late".to_string())).unwrap();
    let st = finished(&wf, "e-1");
    assert_eq!(st.state, InstanceState::Completed);
    let out: (String, String) = result(&wf, "e-1").unwrap();
    assert_eq!(out, ("early".to_string(), "late".to_string()));
    node.shutdown();
}

async fn approval(ctx: WorkflowContext, ms: u64) -> Result<String, StepError> {
    match ctx
        .wait_event_timeout::<bool>("approve", Duration::from_millis(ms))
        .await
    {
        Ok(true) => Ok("approved".into()),
        Ok(false) => Ok("rejected".into()),
        Err(StepError::EventTimeout { .. }) => Ok("timed out".into()),
        Err(e) => Err(e),
    }
}

#[test]
fn an_event_wait_times_out_and_an_event_in_time_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "")
        .register_workflow("approval", 1, approval)
        .start()
        .unwrap();
    let wf = node.workflows();
    block_on(wf.start("approval", "ap-late", &100u64)).unwrap();
    block_on(wf.start("approval", "ap-ok", &60_000u64)).unwrap();
    waiting_for(&wf, "ap-ok", "approve");
    block_on(wf.raise_event("ap-ok", "approve", &true)).unwrap();
    finished(&wf, "ap-late");
    finished(&wf, "ap-ok");
    assert_eq!(result::<String>(&wf, "ap-late").unwrap(), "timed out");
    assert_eq!(result::<String>(&wf, "ap-ok").unwrap(), "approved");
    node.shutdown();
}

async fn counter(ctx: WorkflowContext, (n, end): (u64, u64)) -> Result<u64, StepError> {
    let n2: u64 = ctx
        .call_activity_with("inc", &n, ActivityOptions::local())
        .await?;
    if n2 >= end {
        return Ok(n2);
    }
    ctx.continue_as_new(&(n2, end)).await
}

/// 100,000 iterations of a run with one local activity (about 5 s in a debug build,
/// `fsync = "never"`).
fn continue_as_new_iterations(iterations: u64) {
    let tmp = tempfile::tempdir().unwrap();
    // A limit of 16 records: without continue_as_new resetting the history, the instance
    // would fail after a few iterations.
    let node = builder(tmp.path(), "[workflows]\nmax_history_events = 16\n")
        .register_workflow("counter", 1, counter)
        .register_activity("inc", |n: u64, _: ActivityContext| async move {
            Ok::<_, ActivityError>(n + 1)
        })
        .start()
        .unwrap();
    let wf = node.workflows();
    let began = Instant::now();
    block_on(wf.start("counter", "c-1", &(0u64, iterations))).unwrap();
    // The claim is a bounded history, not a speed: the 100k runs take ~14 s in a debug build
    // on a quiet machine, so the wait allows for a loaded one.
    let st = until_within(Duration::from_secs(120), "the counter to finish", || {
        block_on(wf.status("c-1"))
            .ok()
            .filter(|s| s.state.is_finished())
    });
    let took = began.elapsed();
    assert_eq!(st.state, InstanceState::Completed, "{st:?}");
    assert_eq!(result::<u64>(&wf, "c-1").unwrap(), iterations);
    assert_eq!(st.run, iterations);
    // The last run's history: started, scheduled, done, finished.
    assert!(st.history_events <= 4, "{st:?}");
    assert_eq!(block_on(wf.history("c-1")).unwrap().len(), 4);
    eprintln!("{iterations} continue_as_new iterations in {took:?}");
    node.shutdown();
}

#[test]
fn continue_as_new_keeps_the_history_bounded_over_100k_iterations() {
    continue_as_new_iterations(100_000);
}

async fn many_steps(ctx: WorkflowContext, n: u32) -> Result<u32, StepError> {
    for _ in 0..n {
        ctx.timer(Duration::ZERO).await;
    }
    Ok(n)
}

#[test]
fn an_instance_over_the_history_limit_fails_with_a_message_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "[workflows]\nmax_history_events = 16\n")
        .register_workflow("many", 1, many_steps)
        .start()
        .unwrap();
    let wf = node.workflows();
    block_on(wf.start("many", "m-1", &100u32)).unwrap();
    let st = finished(&wf, "m-1");
    assert_eq!(st.state, InstanceState::Failed);
    let err = result::<u32>(&wf, "m-1").unwrap_err().to_string();
    assert!(
        err.contains("max_history_events") && err.contains("continue_as_new"),
        "{err}"
    );
    // The run's records stay within the limit, plus the final `Finished` record.
    assert!(st.history_events <= 17, "{st:?}");
    node.shutdown();
}

async fn plain(input: String, ctx: ActivityContext) -> Result<String, ActivityError> {
    count(format!("{}:{input}", ctx.instance));
    Ok(input)
}

async fn v_old(ctx: WorkflowContext, _: ()) -> Result<String, StepError> {
    let a: String = ctx.call_activity("plain", &"a".to_string()).await?;
    let () = ctx.wait_event("go").await?;
    let b: String = ctx.call_activity("plain", &"b".to_string()).await?;
    Ok(format!("{a},{b}"))
}

/// The old code changed without a guard: the first activity's input differs.
async fn v_changed(ctx: WorkflowContext, _: ()) -> Result<String, StepError> {
    let a: String = ctx.call_activity("plain", &"a-new".to_string()).await?;
    let () = ctx.wait_event("go").await?;
    let b: String = ctx.call_activity("plain", &"b".to_string()).await?;
    Ok(format!("{a},{b}"))
}

/// The same change behind a patch marker.
async fn v_patched(ctx: WorkflowContext, _: ()) -> Result<String, StepError> {
    let a: String = if ctx.is_patched("new-a") {
        ctx.call_activity("plain", &"a-new".to_string()).await?
    } else {
        ctx.call_activity("plain", &"a".to_string()).await?
    };
    let () = ctx.wait_event("go").await?;
    let b: String = ctx.call_activity("plain", &"b".to_string()).await?;
    Ok(format!("{a},{b}"))
}

#[test]
fn a_changed_orchestration_is_reported_as_non_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "")
        .register_workflow("order", 1, v_old)
        .register_activity("plain", plain)
        .start()
        .unwrap();
    block_on(node.workflows().start("order", "nd-1", &())).unwrap();
    waiting_for(&node.workflows(), "nd-1", "go");
    node.shutdown();
    let node = builder(tmp.path(), "")
        .register_workflow("order", 1, v_changed)
        .register_activity("plain", plain)
        .start()
        .unwrap();
    let wf = node.workflows();
    let st = finished(&wf, "nd-1");
    assert_eq!(st.state, InstanceState::NonDeterministic);
    let err = match st.output {
        Some(Err(e)) => e,
        other => panic!("no error: {other:?}"),
    };
    for part in [
        "\"nd-1\"",
        "step 0",
        "recorded activity \"plain\"",
        "requested activity \"plain\"",
        "input hash",
        "is_patched",
        "new version",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    // The two hashes differ and are both shown.
    let hashes: Vec<&str> = err
        .match_indices("input hash ")
        .map(|(i, _)| &err[i + 11..i + 27])
        .collect();
    assert_eq!(hashes.len(), 2);
    assert_ne!(hashes[0], hashes[1]);
    // Nothing ran again.
    assert_eq!(runs("nd-1:a-new"), 0);
    assert_eq!(runs("nd-1:a"), 1);
    node.shutdown();
}

#[test]
fn a_patched_change_replays_old_histories_and_runs_new_code_for_new_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "")
        .register_workflow("order", 1, v_old)
        .register_activity("plain", plain)
        .start()
        .unwrap();
    block_on(node.workflows().start("order", "p-old", &())).unwrap();
    waiting_for(&node.workflows(), "p-old", "go");
    node.shutdown();
    let node = builder(tmp.path(), "")
        .register_workflow("order", 1, v_patched)
        .register_activity("plain", plain)
        .start()
        .unwrap();
    let wf = node.workflows();
    block_on(wf.start("order", "p-new", &())).unwrap();
    waiting_for(&wf, "p-new", "go");
    block_on(wf.raise_event("p-old", "go", &())).unwrap();
    block_on(wf.raise_event("p-new", "go", &())).unwrap();
    assert_eq!(result::<String>(&wf, "p-old").unwrap(), "a,b");
    assert_eq!(result::<String>(&wf, "p-new").unwrap(), "a-new,b");
    assert_eq!(runs("p-old:a"), 1);
    assert_eq!(runs("p-old:a-new"), 0);
    assert_eq!(runs("p-new:a"), 0);
    let h = block_on(wf.history("p-new")).unwrap();
    assert!(h.contains(&HistoryEvent::Patched { id: "new-a".into() }));
    node.shutdown();
}

async fn ver1(ctx: WorkflowContext, _: ()) -> Result<String, StepError> {
    let () = ctx.wait_event("go").await?;
    Ok("v1".into())
}

async fn ver2(ctx: WorkflowContext, _: ()) -> Result<String, StepError> {
    let t: String = ctx.call_activity("plain", &"v2-step".to_string()).await?;
    let () = ctx.wait_event("go").await?;
    Ok(format!("v2 {t}"))
}

#[test]
fn new_instances_run_the_newest_version_and_old_ones_finish_on_theirs() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "")
        .register_workflow("ver", 1, ver1)
        .register_activity("plain", plain)
        .start()
        .unwrap();
    block_on(node.workflows().start("ver", "ver-old", &())).unwrap();
    waiting_for(&node.workflows(), "ver-old", "go");
    node.shutdown();
    let node = builder(tmp.path(), "")
        .register_workflow("ver", 1, ver1)
        .register_workflow("ver", 2, ver2)
        .register_activity("plain", plain)
        .start()
        .unwrap();
    let wf = node.workflows();
    let s = block_on(wf.start("ver", "ver-new", &())).unwrap();
    assert_eq!(s.version, 2);
    waiting_for(&wf, "ver-new", "go");
    block_on(wf.raise_event("ver-old", "go", &())).unwrap();
    block_on(wf.raise_event("ver-new", "go", &())).unwrap();
    assert_eq!(result::<String>(&wf, "ver-old").unwrap(), "v1");
    assert_eq!(result::<String>(&wf, "ver-new").unwrap(), "v2 v2-step");
    assert_eq!(block_on(wf.status("ver-old")).unwrap().version, 1);
    node.shutdown();
}

async fn parent(ctx: WorkflowContext, _: ()) -> Result<String, StepError> {
    ctx.sub_orchestration("child", &()).await
}

async fn child(ctx: WorkflowContext, _: ()) -> Result<String, StepError> {
    ctx.wait_event("never").await
}

#[test]
fn cancelling_an_instance_cancels_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "")
        .register_workflow("parent", 1, parent)
        .register_workflow("child", 1, child)
        .start()
        .unwrap();
    let wf = node.workflows();
    block_on(wf.start("parent", "par", &())).unwrap();
    waiting_for(&wf, "par/1.0", "never");
    assert_eq!(
        block_on(wf.status("par/1.0")).unwrap().parent.as_deref(),
        Some("par")
    );
    let st = block_on(wf.cancel("par")).unwrap();
    assert_eq!(st.state, InstanceState::Cancelled);
    let c = finished(&wf, "par/1.0");
    assert_eq!(c.state, InstanceState::Cancelled);
    // Terminate leaves children alone.
    block_on(wf.start("parent", "par2", &())).unwrap();
    waiting_for(&wf, "par2/1.0", "never");
    block_on(wf.terminate("par2")).unwrap();
    assert_eq!(
        block_on(wf.status("par2")).unwrap().state,
        InstanceState::Terminated
    );
    assert_eq!(
        block_on(wf.status("par2/1.0")).unwrap().state,
        InstanceState::Running
    );
    node.shutdown();
}

async fn fan(
    ctx: WorkflowContext,
    _: (),
) -> Result<(Vec<String>, usize, String, String), StepError> {
    let id = ctx.new_id();
    let calls = ["p1", "p2", "p3"]
        .iter()
        .map(|p| ctx.call_activity::<_, String>("plain", &p.to_string()))
        .collect();
    let all: Result<Vec<String>, StepError> = ctx.join_all(calls).await.into_iter().collect();
    let race = vec![
        Box::pin(async { ctx.wait_event::<String>("a").await })
            as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>,
        Box::pin(async {
            ctx.timer(Duration::from_secs(3600)).await;
            Ok("timer".to_string())
        }),
    ];
    let (winner, out) = ctx.when_any(race).await;
    let () = ctx.wait_event("go").await?;
    Ok((all?, winner, out?, id))
}

#[test]
fn parallel_steps_and_a_recorded_race_replay_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let start = |dir: &Path| {
        builder(dir, "")
            .register_workflow("fan", 1, fan)
            .register_activity("plain", plain)
            .start()
            .unwrap()
    };
    let node = start(tmp.path());
    let wf = node.workflows();
    block_on(wf.start("fan", "fan-1", &())).unwrap();
    until("the race to wait", || {
        let h = block_on(wf.history("fan-1")).ok()?;
        h.iter()
            .any(|e| matches!(e, HistoryEvent::Scheduled { step, .. } if step.kind == StepKind::Select))
            .then_some(())
    });
    block_on(wf.raise_event("fan-1", "a", &"event".to_string())).unwrap();
    waiting_for(&wf, "fan-1", "go");
    let h = block_on(wf.history("fan-1")).unwrap();
    assert!(
        h.iter()
            .any(|e| matches!(e, HistoryEvent::Chosen { index: 0, .. })),
        "{h:?}"
    );
    node.shutdown();
    let node = start(tmp.path());
    let wf = node.workflows();
    block_on(wf.raise_event("fan-1", "go", &())).unwrap();
    let (all, winner, out, id) =
        result::<(Vec<String>, usize, String, String)>(&wf, "fan-1").unwrap();
    assert_eq!(all, vec!["p1", "p2", "p3"]);
    assert_eq!((winner, out.as_str()), (0, "event"));
    assert_eq!(id.len(), 32);
    for p in ["p1", "p2", "p3"] {
        assert_eq!(runs(&format!("fan-1:{p}")), 1, "{p}");
    }
    // new_id is deterministic: a replay of the same history gives the same id.
    let node2_id = id.clone();
    node.shutdown();
    let node = start(tmp.path());
    let (_, _, _, again) =
        result::<(Vec<String>, usize, String, String)>(&node.workflows(), "fan-1").unwrap();
    assert_eq!(again, node2_id);
    node.shutdown();
}

#[test]
fn start_is_idempotent_and_list_history_purge_work() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "")
        .register_workflow("ver", 1, ver1)
        .start()
        .unwrap();
    let wf = node.workflows();
    for i in 0..5 {
        let s = block_on(wf.start("ver", &format!("l-{i}"), &())).unwrap();
        assert!(!s.existed);
    }
    assert!(block_on(wf.start("ver", "l-0", &())).unwrap().existed);
    assert!(matches!(
        block_on(wf.start("nope", "l-9", &())),
        Err(quark::workflow::WorkflowError::UnknownOrchestration { .. })
    ));
    waiting_for(&wf, "l-0", "go");
    block_on(wf.raise_event("l-0", "go", &())).unwrap();
    finished(&wf, "l-0");
    let p1 = block_on(wf.list(ListQuery {
        limit: 3,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(p1.instances.len(), 3);
    assert_eq!(p1.instances[0].0, "l-0");
    let p2 = block_on(wf.list(ListQuery {
        limit: 3,
        after: p1.next_cursor.clone(),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(
        p2.instances
            .iter()
            .map(|i| i.0.as_str())
            .collect::<Vec<_>>(),
        ["l-3", "l-4"]
    );
    assert_eq!(p2.next_cursor, None);
    let running = block_on(wf.list(ListQuery {
        state: Some(InstanceState::Running),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(running.instances.len(), 4);
    let json = block_on(wf.history_json("l-0")).unwrap();
    assert_eq!(json.lines().count(), 4, "{json}");
    assert!(json.lines().next().unwrap().contains("\"Started\""));
    assert!(matches!(
        block_on(wf.purge("l-1")),
        Err(quark::workflow::WorkflowError::Running { .. })
    ));
    block_on(wf.purge("l-0")).unwrap();
    assert!(matches!(
        block_on(wf.status("l-0")),
        Err(quark::workflow::WorkflowError::NotFound { .. })
    ));
    node.shutdown();
    // After a restart, the list comes from the log.
    let node = builder(tmp.path(), "")
        .register_workflow("ver", 1, ver1)
        .start()
        .unwrap();
    let all = block_on(node.workflows().list(ListQuery::default())).unwrap();
    assert_eq!(all.instances.len(), 4);
    node.shutdown();
}

#[test]
fn replay_check_accepts_the_code_that_wrote_a_history_and_names_a_change() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "")
        .register_workflow("order", 1, v_old)
        .register_activity("plain", plain)
        .start()
        .unwrap();
    let wf = node.workflows();
    block_on(wf.start("order", "rc-1", &())).unwrap();
    waiting_for(&wf, "rc-1", "go");
    block_on(wf.raise_event("rc-1", "go", &())).unwrap();
    finished(&wf, "rc-1");
    // The export a user keeps (JSON lines), read back.
    let export = block_on(wf.history_json("rc-1")).unwrap();
    node.shutdown();
    let history = quark::workflow::parse_history_json(&export).unwrap();
    let ok = quark::workflow::replay_check(v_old, &history).unwrap();
    assert!(ok.finished);
    assert_eq!(ok.steps, 3);
    assert_eq!(runs("rc-1:a"), 1, "the check runs no activity");
    let patched = quark::workflow::replay_check(v_patched, &history).unwrap();
    assert!(patched.finished);
    let err = quark::workflow::replay_check(v_changed, &history)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("step 0") && err.contains("is_patched"),
        "{err}"
    );
}

async fn slow_local(ctx: WorkflowContext, _: ()) -> Result<String, StepError> {
    ctx.call_activity_with("wait400", &"w".to_string(), ActivityOptions::local())
        .await
}

#[test]
fn a_running_instance_outlives_the_idle_timeout_and_runs_its_steps_once() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\nidle_timeout_ms = 20\n[log]\ndata_dir = {:?}\nfsync = \"never\"\n",
        tmp.path().to_str().unwrap()
    );
    let node = Node::builder()
        .config(NodeConfig::from_toml(&text, "test.toml").unwrap())
        .register_workflow("sleeper", 1, sleeper)
        .register_workflow("slow_local", 1, slow_local)
        .register_activity("wait400", |w: String, ctx: ActivityContext| async move {
            count(format!("{}:{w}", ctx.instance));
            quark::sleep(Duration::from_millis(400)).await;
            Ok::<_, ActivityError>(w)
        })
        .start()
        .unwrap();
    let wf = node.workflows();
    block_on(wf.start("sleeper", "idle-1", &400u64)).unwrap();
    block_on(wf.start("slow_local", "idle-2", &())).unwrap();
    // Twenty idle timeouts pass before the timer is due and the activity ends; the timer
    // fires and the activity ran once (a deactivated instance would be reloaded by the
    // activity's report and launch it again).
    assert_eq!(finished(&wf, "idle-1").state, InstanceState::Completed);
    assert_eq!(result::<String>(&wf, "idle-2").unwrap(), "w");
    assert_eq!(runs("idle-2:w"), 1);
    node.shutdown();
}

async fn echo(_: WorkflowContext, n: u64) -> Result<u64, StepError> {
    Ok(n)
}

async fn loop_parent(
    ctx: WorkflowContext,
    (n, mut acc): (u64, Vec<u64>),
) -> Result<Vec<u64>, StepError> {
    acc.push(ctx.sub_orchestration("echo", &n).await?);
    if n == 2 {
        return Ok(acc);
    }
    ctx.continue_as_new(&(n + 1, acc)).await
}

#[test]
fn each_run_starts_its_own_children() {
    let tmp = tempfile::tempdir().unwrap();
    let node = builder(tmp.path(), "")
        .register_workflow("loop_parent", 1, loop_parent)
        .register_workflow("echo", 1, echo)
        .start()
        .unwrap();
    let wf = node.workflows();
    block_on(wf.start("loop_parent", "lp", &(0u64, Vec::<u64>::new()))).unwrap();
    assert_eq!(result::<Vec<u64>>(&wf, "lp").unwrap(), vec![0, 1, 2]);
    assert_eq!(
        block_on(wf.status("lp/3.0")).unwrap().state,
        InstanceState::Completed
    );
    node.shutdown();
}

#[test]
fn the_workflows_section_is_read_and_checked() {
    let c = NodeConfig::from_toml(
        "[workflows]\nmax_history_events = 1000\nmax_history_bytes = 65536\nhistory_warn_fraction = 0.5\n",
        "q.toml",
    )
    .unwrap();
    assert_eq!(c.workflows.max_history_events, 1000);
    assert_eq!(c.workflows.max_history_bytes, 65536);
    assert_eq!(c.workflows.history_warn_fraction, 0.5);
    for (bad, key) in [
        ("max_history_events = 3", "workflows.max_history_events"),
        (
            "history_warn_fraction = 1.5",
            "workflows.history_warn_fraction",
        ),
        ("max_history_bytes = 10", "workflows.max_history_bytes"),
    ] {
        let err = NodeConfig::from_toml(&format!("[workflows]\n{bad}\n"), "q.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains("q.toml"), "{err}");
    }
    assert!(NodeConfig::from_toml("[workflows]\nmax_events = 5\n", "q.toml").is_err());
}
