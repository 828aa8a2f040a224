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

// ---- Online commands against a running node (`--addr`, the admin endpoint). ----

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use quark::admin::{JobView, JobsPage};
use quark::jobs::JobId;

#[derive(Serialize, Deserialize)]
struct Report(u32);
impl Job for Report {
    const TYPE_NAME: &'static str = "report";
}

fn quark(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quark"))
        .args(args)
        .output()
        .expect("run the quark binary")
}

/// Runs `quark jobs ARGS --addr ADDR --json`, expects success, parses the JSON.
fn json<T: serde::de::DeserializeOwned>(addr: &str, args: &[&str]) -> T {
    let mut all = vec!["jobs"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--addr", addr, "--json"]);
    let out = quark(&all);
    assert!(
        out.status.success(),
        "quark {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "quark {all:?}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ids(page: &JobsPage) -> Vec<String> {
    page.jobs.iter().map(|j| j.id.clone()).collect()
}

fn strs(ids: &[JobId]) -> Vec<String> {
    ids.iter().map(|i| i.to_string()).collect()
}

#[test]
fn online_commands_list_page_cancel_pause_and_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"never\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        tmp.path().to_str().unwrap()
    );
    // Mail(2) fails fatally until `fixed`; every started report is recorded.
    let fixed = Arc::new(AtomicBool::new(false));
    let reports: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (f, r) = (fixed.clone(), reports.clone());
    let node = Node::builder()
        .config(NodeConfig::from_toml(&text, "t.toml").unwrap())
        .register_job::<Mail, _, _>(JobTypeConfig::default(), move |m: Mail, _| {
            let fail = m.0 == 2 && !f.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(JobFailure::fatal("mailbox full"))
                } else {
                    Ok(())
                }
            }
        })
        .register_job::<Report, _, _>(JobTypeConfig::default(), move |x: Report, _| {
            r.lock().unwrap().push(x.0);
            async { Ok::<(), JobFailure>(()) }
        })
        .start()
        .unwrap();
    let addr = node.admin_addr().unwrap().to_string();
    let addr = addr.as_str();
    let jobs = node.jobs();

    // Five scheduled jobs (an hour away: their state does not change during the test).
    let later = |key: &str| {
        JobOptions::default()
            .after(Duration::from_secs(3600))
            .concurrency(key, 1)
    };
    let mut scheduled = Vec::new();
    for (i, key) in ["cust-a", "cust-b", "cust-a", "cust-b", "cust-a"]
        .iter()
        .enumerate()
    {
        scheduled.push(block_on(jobs.enqueue(&Mail(100 + i as u32), later(key))).unwrap());
    }
    scheduled.sort();
    let all: JobsPage = json(addr, &["list", "--state", "scheduled"]);
    assert_eq!(ids(&all), strs(&scheduled));
    assert_eq!(all.next_cursor, None);
    assert!(all
        .jobs
        .iter()
        .all(|j| j.state == "scheduled" && j.type_name == "mail"));
    let a: JobsPage = json(addr, &["list", "--key", "cust-a"]);
    assert_eq!(a.jobs.len(), 3);
    assert!(a
        .jobs
        .iter()
        .all(|j| j.concurrency_key.as_deref() == Some("cust-a")));
    let none: JobsPage = json(addr, &["list", "--type", "report"]);
    assert!(none.jobs.is_empty());

    // Paging: 2 + 2 + 1, each page naming the next, the last naming none.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["list", "--state", "scheduled", "--limit", "2"];
        if let Some(c) = &cursor {
            args.extend_from_slice(&["--cursor", c]);
        }
        let p: JobsPage = json(addr, &args);
        pages += 1;
        assert!(
            pages <= 3,
            "more pages than 5 jobs in pages of 2 make: {paged:?}"
        );
        assert!(p.jobs.len() <= 2);
        paged.extend(ids(&p));
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, strs(&scheduled));

    // The table: a header, a row per job, the paging line.
    let out = quark(&["jobs", "list", "--addr", addr, "--key", "cust-b"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID "), "{table}");
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[1].contains("scheduled") && lines[1].contains("cust-b"),
        "{table}"
    );
    assert_eq!(lines[3], "2 jobs; last page", "{table}");

    // Pause "report": its jobs stay queued; one is cancelled while queued.
    let p: serde_json::Value = json(addr, &["pause", "report"]);
    assert_eq!(p["types"], serde_json::json!(["report"]));
    assert_eq!(p["all"], false);
    let r1 = block_on(jobs.enqueue(&Report(1), JobOptions::default())).unwrap();
    let r2 = block_on(jobs.enqueue(&Report(2), JobOptions::default())).unwrap();
    // A mail job enqueued after them runs to completion on both shards' queues meanwhile.
    let m = block_on(jobs.enqueue(&Mail(7), JobOptions::default())).unwrap();
    let m2 = block_on(jobs.enqueue(&Mail(8), JobOptions::default())).unwrap();
    assert_eq!(block_on(jobs.wait(m)).unwrap().state, JobState::Completed);
    assert_eq!(block_on(jobs.wait(m2)).unwrap().state, JobState::Completed);
    let queued: JobsPage = json(addr, &["list", "--type", "report"]);
    assert_eq!(ids(&queued), strs(&[r1.min(r2), r1.max(r2)]));
    assert!(
        queued.jobs.iter().all(|j| j.state == "queued"),
        "{queued:?}"
    );
    assert!(
        reports.lock().unwrap().is_empty(),
        "a paused type's job started"
    );
    let c: JobView = json(addr, &["cancel", &r1.to_string()]);
    assert_eq!(c.state, "cancelled");
    let s: JobView = json(addr, &["status", &r1.to_string()]);
    assert_eq!(s.state, "cancelled");
    let p: serde_json::Value = json(addr, &["resume", "report"]);
    assert_eq!(p["types"], serde_json::json!([]));
    assert_eq!(block_on(jobs.wait(r2)).unwrap().state, JobState::Completed);
    assert_eq!(
        *reports.lock().unwrap(),
        vec![2],
        "the cancelled report never ran"
    );
    let out = quark(&["jobs", "status", &r2.to_string(), "--addr", addr]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("state       completed"), "{text}");

    // Dead letters: two dead mails; one replayed (and completes), one purged.
    let d1 = block_on(jobs.enqueue(&Mail(2), JobOptions::default())).unwrap();
    let d2 = block_on(jobs.enqueue(&Mail(2), JobOptions::default())).unwrap();
    assert_eq!(block_on(jobs.wait(d1)).unwrap().state, JobState::Dead);
    assert_eq!(block_on(jobs.wait(d2)).unwrap().state, JobState::Dead);
    let dead: JobsPage = json(addr, &["dead-letters", "list"]);
    assert_eq!(ids(&dead), strs(&[d1.min(d2), d1.max(d2)]));
    assert!(dead
        .jobs
        .iter()
        .all(|j| j.last_error.as_deref() == Some("mailbox full")));
    fixed.store(true, Ordering::SeqCst);
    let r: JobView = json(addr, &["dead-letters", "replay", &d1.to_string()]);
    assert_ne!(r.state, "dead");
    let done = block_on(jobs.wait(d1)).unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.attempt, 2, "the replay is the second attempt");
    let out = quark(&[
        "jobs",
        "dead-letters",
        "purge",
        &d2.to_string(),
        "--addr",
        addr,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dead: JobsPage = json(addr, &["dead-letters", "list"]);
    assert!(dead.jobs.is_empty(), "{dead:?}");

    // Errors: an unknown (purged) job is exit 1 naming it; a bad state name exit 2.
    let out = quark(&["jobs", "status", &d2.to_string(), "--addr", addr]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("job {d2} is not known")) && err.contains("HTTP 404"),
        "{err}"
    );
    let out = quark(&["jobs", "list", "--state", "sleeping", "--addr", addr]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad state \"sleeping\"") && err.contains("HTTP 400"),
        "{err}"
    );
    node.shutdown();
}

// ---- `quark reminders list --actor TYPE/KEY` against a running node. ----

use quark::admin::ActorReminders;
use quark::reminders::{self, Reminder, ReminderError, ReminderTick};
use quark::{Actor, ActorType, Context, Handler, Message};

struct Alarm;
impl Actor for Alarm {
    const TYPE_NAME: &'static str = "alarm";
}
struct Set(&'static str, Reminder);
impl Message for Set {
    type Reply = Result<(), ReminderError>;
}
impl Handler<Set> for Alarm {
    async fn handle(&mut self, m: Set, ctx: &Context<Self>) -> Result<(), ReminderError> {
        reminders::register(ctx, m.0, m.1).await
    }
}
impl Handler<ReminderTick> for Alarm {
    async fn handle(&mut self, _: ReminderTick, _: &Context<Self>) {}
}

#[test]
fn reminders_list_shows_one_actors_reminders() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 1048576\nfsync = \"never\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        tmp.path().to_str().unwrap()
    );
    let node = Node::builder()
        .config(NodeConfig::from_toml(&text, "t.toml").unwrap())
        .register(ActorType::new(|_| Alarm))
        .register_reminders::<Alarm>()
        .start()
        .unwrap();
    let hour = Duration::from_secs(3600);
    let set = |key: quark::ActorKey, name, r| {
        block_on(node.actor_ref::<Alarm>(key).ask(Set(name, r)))
            .unwrap()
            .unwrap()
    };
    set(7u64.into(), "ping", Reminder::every(hour));
    set(7u64.into(), "bill", Reminder::once(2 * hour));
    set(8u64.into(), "other", Reminder::once(hour));
    set("7".into(), "string-key", Reminder::once(hour));
    let addr = node.admin_addr().unwrap().to_string();

    let v: ActorReminders = {
        let out = quark(&[
            "reminders",
            "list",
            "--actor",
            "alarm/7",
            "--addr",
            &addr,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(v.actor, "alarm/7");
    let names: Vec<(&str, u64)> = v
        .reminders
        .iter()
        .map(|r| (r.name.as_str(), r.period_ms))
        .collect();
    assert_eq!(names, vec![("bill", 0), ("ping", 3_600_000)]);
    // The string key "7" is another actor.
    let out = quark(&[
        "reminders",
        "list",
        "--actor",
        "alarm/\"7\"",
        "--addr",
        &addr,
    ]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        table.contains("string-key") && !table.contains("ping"),
        "{table}"
    );
    assert!(table.ends_with("alarm/\"7\": 1 reminders\n"), "{table}");
    // A type not registered for reminders, and a malformed actor.
    let out = quark(&["reminders", "list", "--actor", "mail/1", "--addr", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"mail\" is not registered for reminders") && err.contains("HTTP 404"),
        "{err}"
    );
    let out = quark(&["reminders", "list", "--actor", "alarm", "--addr", &addr]);
    assert_eq!(out.status.code(), Some(2));
    node.shutdown();
}
