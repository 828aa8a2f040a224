//! Cron schedules on the jobs clock: on-time ticks, the missed-occurrence policies after a
//! simulated downtime (restart), durable pause/resume, and refusal of bad expressions.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quark::jobs::{
    CronSchedule, EnqueueError, Job, JobContext, JobOptions, JobTypeConfig, JobsConfig,
    ManualClock, MissedTicks, NewJob,
};
use quark::{block_on, Node, NodeConfig};
use serde::{Deserialize, Serialize};

/// 2027-01-15 08:00:00 UTC, on a 10-minute boundary.
const T0: u64 = 1_800_000_000_000;
const MIN: u64 = 60_000;

#[derive(Serialize, Deserialize)]
struct Tick(String);
impl Job for Tick {
    const TYPE_NAME: &'static str = "tick";
}

type Seen = Arc<Mutex<Vec<String>>>;

fn start(dir: &Path, clock: &ManualClock, seen: &Seen) -> Node {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nfsync = \"never\"\n",
        dir.to_str().unwrap()
    );
    let s = Arc::clone(seen);
    Node::builder()
        .config(NodeConfig::from_toml(&text, "t.toml").unwrap())
        .jobs_config(JobsConfig {
            clock: Arc::new(clock.clone()),
            idle_poll: Duration::from_millis(5),
            ..JobsConfig::default()
        })
        .register_job::<Tick, _, _>(
            JobTypeConfig::default(),
            move |t: Tick, _ctx: JobContext| {
                s.lock().unwrap().push(t.0);
                async { Ok(()) }
            },
        )
        .start()
        .unwrap()
}

fn count(seen: &Seen, tag: &str) -> usize {
    seen.lock().unwrap().iter().filter(|t| *t == tag).count()
}

/// Waits until the per-tag counts are exactly `want` (all, once, skip).
fn expect(seen: &Seen, want: [usize; 3]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = [count(seen, "all"), count(seen, "once"), count(seen, "skip")];
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "runs per schedule (all, once, skip): got {got:?}, want {want:?}"
        );
        std::thread::yield_now();
    }
}

/// Waits until no job is open (their completions are durable), so a restart re-runs none.
fn settle(jobs: &quark::jobs::Jobs) {
    use quark::jobs::JobState;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = block_on(jobs.counts()).unwrap();
        let open: u64 = [JobState::Scheduled, JobState::Queued, JobState::Running]
            .iter()
            .map(|s| c.get(s).copied().unwrap_or(0))
            .sum();
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "jobs still open: {c:?}");
        std::thread::yield_now();
    }
}

fn every_ten_minutes(tag: &str, missed: MissedTicks) -> CronSchedule {
    CronSchedule {
        name: format!("every-10-{tag}"),
        cron: "*/10 * * * *".into(),
        time_zone: "UTC".into(),
        job: NewJob::new(&Tick(tag.into()), JobOptions::default()),
        missed,
    }
}

#[test]
fn missed_occurrence_policies_apply_after_a_downtime_and_pause_is_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0 + MIN);
    let seen: Seen = Arc::default();
    let node = start(tmp.path(), &clock, &seen);
    let jobs = node.jobs();
    for (tag, p) in [
        ("all", MissedTicks::FireAll),
        ("once", MissedTicks::FireOnce),
        ("skip", MissedTicks::Skip),
    ] {
        block_on(jobs.schedule(every_ten_minutes(tag, p))).unwrap();
    }
    let list = block_on(jobs.schedules()).unwrap();
    assert_eq!(list.len(), 3);
    assert!(list
        .iter()
        .all(|s| s.next_ms == Some((T0 + 10 * MIN) as i64)));

    // On time: one run each.
    clock.set(T0 + 10 * MIN);
    jobs.poke();
    expect(&seen, [1, 1, 1]);
    settle(&jobs);
    node.shutdown();

    // Down from :10 to :45: the occurrences at :20, :30 and :40 were missed.
    clock.set(T0 + 45 * MIN);
    let node = start(tmp.path(), &clock, &seen);
    let jobs = node.jobs();
    expect(&seen, [4, 2, 1]);
    // The next on-time occurrence: one each (skip did not fire for the missed ones).
    clock.set(T0 + 50 * MIN);
    jobs.poke();
    expect(&seen, [5, 3, 2]);

    // Pause "once" (durably) across a restart; the others continue.
    block_on(jobs.pause_schedule("every-10-once", true)).unwrap();
    settle(&jobs);
    node.shutdown();
    let node = start(tmp.path(), &clock, &seen);
    let jobs = node.jobs();
    assert!(block_on(jobs.schedules())
        .unwrap()
        .iter()
        .any(|s| s.name == "every-10-once" && s.paused));
    clock.set(T0 + 60 * MIN);
    jobs.poke();
    expect(&seen, [6, 3, 3]);
    // Resumed: its occurrence at :60 is on time: one run.
    block_on(jobs.pause_schedule("every-10-once", false)).unwrap();
    expect(&seen, [6, 4, 3]);
    assert!(block_on(jobs.unschedule("every-10-all")).unwrap());
    assert!(!block_on(jobs.unschedule("every-10-all")).unwrap());
    clock.set(T0 + 70 * MIN);
    jobs.poke();
    expect(&seen, [6, 5, 4]);
    node.shutdown();
}

#[test]
fn a_bad_cron_expression_or_time_zone_is_refused_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let seen: Seen = Arc::default();
    let node = start(tmp.path(), &clock, &seen);
    let jobs = node.jobs();
    let mut s = every_ten_minutes("x", MissedTicks::Skip);
    s.cron = "*/10 * * *".into();
    let e = block_on(jobs.schedule(s.clone())).unwrap_err();
    assert!(matches!(e, EnqueueError::BadSchedule(_)), "{e}");
    assert!(e.to_string().contains("expected 5 fields"), "{e}");
    s.cron = "0 25 * * *".into();
    let e = block_on(jobs.schedule(s.clone())).unwrap_err();
    assert!(e.to_string().contains("hour field"), "{e}");
    s.cron = "0 9 * * *".into();
    s.time_zone = "Atlantis/Capital".into();
    let e = block_on(jobs.schedule(s)).unwrap_err();
    assert!(e.to_string().contains("Atlantis/Capital"), "{e}");
    assert!(block_on(jobs.schedules()).unwrap().is_empty());
    node.shutdown();
}
