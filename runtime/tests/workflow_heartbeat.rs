//! Activity heartbeats: an activity (job or local) that stops heartbeating is retried long
//! before its 5-minute timeout and the next attempt resumes from its details; one that keeps
//! heartbeating runs on.

use std::path::Path;
use std::time::{Duration, Instant};

use quark::jobs::RetryPolicy;
use quark::workflow::{
    ActivityContext, ActivityError, ActivityOptions, InstanceState, StepError, WorkflowContext,
    Workflows,
};
use quark::{block_on, Node, NodeConfig};

fn node(dir: &Path) -> Node {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 4194304\nfsync = \"never\"\n",
        dir.to_str().expect("temp dir path is UTF-8")
    );
    Node::builder()
        .config(NodeConfig::from_toml(&text, "test.toml").expect("valid test config"))
        .register_workflow("resume", 1, resume)
        .register_workflow("steady", 1, steady)
        .register_activity("count_to", count_to)
        .register_activity("beat_for", beat_for)
        .start()
        .expect("node starts")
}

/// The instance's status once finished, failing after 20 s (the activities' overall timeout
/// is 5 min: only the heartbeat timeout can finish them in time).
fn finished(wf: &Workflows, id: &str) -> quark::workflow::WorkflowStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = block_on(wf.status(id)) {
            if s.state.is_finished() {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {id}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Counts to 10, heartbeating its position; the first attempt stops (hangs) at 4. Returns
/// the attempt that finished and the position it resumed from.
async fn count_to(_: (), ctx: ActivityContext) -> Result<(u32, u32), ActivityError> {
    let from: u32 = ctx.heartbeat_details().unwrap_or(0);
    for i in from..10 {
        if ctx.attempt == 1 && i == 4 {
            std::future::pending::<()>().await;
        }
        ctx.heartbeat(&(i + 1));
    }
    Ok((ctx.attempt, from))
}

async fn resume(ctx: WorkflowContext, local: bool) -> Result<(u32, u32), StepError> {
    let base = if local {
        ActivityOptions::local()
    } else {
        ActivityOptions::default()
    };
    let options = base
        .retry(RetryPolicy {
            max_attempts: 3,
            base_ms: 0,
            jitter: 0.0,
            ..RetryPolicy::default()
        })
        .timeout(Duration::from_secs(300))
        .heartbeat_timeout(Duration::from_millis(200));
    ctx.call_activity_with("count_to", &(), options).await
}

#[test]
fn an_activity_that_stops_heartbeating_is_retried_and_resumes_from_its_details() {
    let tmp = tempfile::tempdir().unwrap();
    let node = node(tmp.path());
    let wf = node.workflows();
    for (id, local) in [("hb-job", false), ("hb-local", true)] {
        block_on(wf.start("resume", id, &local)).unwrap();
        let st = finished(&wf, id);
        assert_eq!(st.state, InstanceState::Completed, "{id}: {st:?}");
        let out: (u32, u32) = block_on(wf.result(id)).unwrap();
        assert_eq!(out, (2, 4), "{id}: attempt 2 resumed at 4");
    }
    node.shutdown();
}

/// Heartbeats every 10 ms for `ms`, then returns its attempt.
async fn beat_for(ms: u64, ctx: ActivityContext) -> Result<u32, ActivityError> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(ms) {
        ctx.heartbeat(&());
        quark::sleep(Duration::from_millis(10)).await;
    }
    Ok(ctx.attempt)
}

async fn steady(ctx: WorkflowContext, local: bool) -> Result<u32, StepError> {
    let base = if local {
        ActivityOptions::local()
    } else {
        ActivityOptions::default()
    };
    let options = base
        .retry(RetryPolicy::none())
        .heartbeat_timeout(Duration::from_millis(100));
    ctx.call_activity_with("beat_for", &600u64, options).await
}

/// Six heartbeat timeouts of work, heartbeating: one attempt (no retry allowed: a build that
/// timed it out would fail the instance).
#[test]
fn an_activity_that_heartbeats_runs_past_its_heartbeat_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let node = node(tmp.path());
    let wf = node.workflows();
    for (id, local) in [("steady-job", false), ("steady-local", true)] {
        block_on(wf.start("steady", id, &local)).unwrap();
        let st = finished(&wf, id);
        assert_eq!(st.state, InstanceState::Completed, "{id}: {st:?}");
        assert_eq!(block_on(wf.result::<u32>(id)).unwrap(), 1, "{id}");
    }
    node.shutdown();
}
