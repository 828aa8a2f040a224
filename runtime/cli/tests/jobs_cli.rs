//! `quark jobs inspect` over a stopped node's data directory shows what a restart recovers.

use std::process::Command;
use std::time::Duration;

use quark::jobs::{Job, JobContext, JobFailure, JobOptions, JobState, JobTypeConfig};
use quark::{block_on, Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Mail(u32);
impl Job for Mail {
    const TYPE_NAME: &'static str = "mail";
}

#[test]
fn inspect_lists_scheduled_dead_and_forgets_completed_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"never\"\n",
        tmp.path().to_str().unwrap()
    );
    let node = Node::builder()
        .config(NodeConfig::from_toml(&text, "t.toml").unwrap())
        .register_job::<Mail, _, _>(
            JobTypeConfig::default(),
            |m: Mail, _ctx: JobContext| async move {
                if m.0 == 2 {
                    Err(JobFailure::fatal("mailbox full"))
                } else {
                    Ok(())
                }
            },
        )
        .start()
        .unwrap();
    let jobs = node.jobs();
    let later = block_on(
        jobs.enqueue(
            &Mail(1),
            JobOptions::default()
                .after(Duration::from_secs(3600))
                .concurrency("cust-9", 1)
                .priority(3),
        ),
    )
    .unwrap();
    let dead = block_on(jobs.enqueue(&Mail(2), JobOptions::default())).unwrap();
    let done = block_on(jobs.enqueue(&Mail(3), JobOptions::default())).unwrap();
    assert_eq!(block_on(jobs.wait(dead)).unwrap().state, JobState::Dead);
    assert_eq!(
        block_on(jobs.wait(done)).unwrap().state,
        JobState::Completed
    );
    node.shutdown();

    let out = Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(["jobs", "inspect", "--json", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_id = |id: quark::jobs::JobId| lines.iter().find(|v| v["id"] == id.to_string()).cloned();
    let l = by_id(later).expect("the scheduled job is listed");
    assert_eq!(l["state"], "Scheduled");
    assert_eq!(l["concurrency_key"], "cust-9");
    assert_eq!(l["priority"], 3);
    let d = by_id(dead).expect("the dead job is listed");
    assert_eq!(d["state"], "Dead");
    assert_eq!(d["last_error"], "mailbox full");
    assert_eq!(d["attempt"], 1);
    assert!(
        by_id(done).is_none(),
        "a completed job with retention 0 is not recovered"
    );
    assert_eq!(lines.len(), 2);

    // Filters, and a clear error for a bad state.
    let out = Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(["jobs", "inspect", "--state", "dead", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("mailbox full") && !text.contains("cust-9"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(["jobs", "inspect", "--state", "sleeping", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state \"sleeping\""));
}
