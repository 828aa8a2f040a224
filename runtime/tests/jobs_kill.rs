//! Jobs survive SIGKILL: a child process runs a node (fsync = "always") that enqueues batches
//! of jobs and runs them; each handler appends `<job number> <attempt>` to a sink file (an
//! idempotent sink: a set of numbers). The child is killed at a random moment in each of at
//! least 30 rounds. After the last restart every acknowledged job has run at least once, no
//! attempt number was used twice for one job, and the duplicate executions are reported.
//!
//! The child is this test binary re-executed with `QUARK_JOBS_KILL_DIR` set: it then runs
//! `kill_child_entry` only (which does nothing in a normal test run).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use quark::jobs::{Job, JobContext, JobOptions, JobState, JobTypeConfig, NewJob, RetryPolicy};
use quark::{block_on, Node, NodeConfig};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const DIR_VAR: &str = "QUARK_JOBS_KILL_DIR";
const BASE_VAR: &str = "QUARK_JOBS_KILL_BASE";
const ROUNDS: u64 = 32;
const BATCH: u64 = 250;

#[derive(Serialize, Deserialize)]
struct Record(u64);

impl Job for Record {
    const TYPE_NAME: &'static str = "record";
}

fn start(dir: &Path) -> Node {
    let text = format!(
        "[node]\nshards = 2\nidle_spin_us = 0\n[log]\ndata_dir = {:?}\nsegment_bytes = 8388608\nfsync = \"always\"\n",
        dir.join("node").to_str().expect("temp dir path is UTF-8")
    );
    let sink = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sink"))
        .expect("open the sink");
    let sink = Arc::new(Mutex::new(sink));
    Node::builder()
        .config(NodeConfig::from_toml(&text, "test.toml").expect("valid test config"))
        .register_job::<Record, _, _>(
            JobTypeConfig {
                retry: RetryPolicy {
                    max_attempts: 1_000,
                    base_ms: 1,
                    cap_ms: 10,
                    ..RetryPolicy::default()
                },
                ..JobTypeConfig::default()
            },
            move |r: Record, ctx: JobContext| {
                // One write(2) per line on an O_APPEND file: a line is whole or absent.
                let line = format!("{} {}\n", r.0, ctx.attempt());
                let ok = match sink.lock() {
                    Ok(mut f) => f.write_all(line.as_bytes()).is_ok(),
                    Err(_) => false,
                };
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err(quark::jobs::JobFailure::retry("sink write failed"))
                    }
                }
            },
        )
        .start()
        .expect("the node starts")
}

/// The child: starts the node, prints `READY`, then enqueues batches of `BATCH` jobs numbered
/// from `QUARK_JOBS_KILL_BASE` forever, printing `ACK <first> <last>` after each acknowledged
/// batch. Does nothing when the variable is not set (a normal test run).
#[test]
fn kill_child_entry() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let base: u64 = std::env::var(BASE_VAR).unwrap().parse().unwrap();
    let node = start(Path::new(&dir));
    println!("READY");
    std::io::stdout().flush().unwrap();
    let jobs = node.jobs();
    for b in 0u64.. {
        let first = base + b * BATCH;
        let batch = (first..first + BATCH)
            .map(|n| NewJob::new(&Record(n), JobOptions::default()))
            .collect();
        block_on(jobs.enqueue_batch(batch)).expect("the enqueue succeeds");
        let mut out = std::io::stdout().lock();
        writeln!(out, "ACK {first} {}", first + BATCH - 1).unwrap();
        out.flush().unwrap();
    }
}

struct Kid {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_child(dir: &Path, base: u64) -> Kid {
    let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--exact",
            "kill_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .env(BASE_VAR, base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Kid { child, lines: rx }
}

fn next_line(kid: &Kid, deadline: Instant, what: &str) -> String {
    let left = deadline.saturating_duration_since(Instant::now());
    kid.lines
        .recv_timeout(left)
        .unwrap_or_else(|e| panic!("waiting for {what}: {e:?}"))
}

/// Per job number: the attempt numbers its executions recorded, in sink order.
fn read_sink(dir: &Path) -> BTreeMap<u64, Vec<u32>> {
    let text = std::fs::read_to_string(dir.join("sink")).unwrap_or_default();
    let mut runs: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for line in text.lines() {
        let mut p = line.split(' ');
        if let (Some(Ok(n)), Some(Ok(a))) = (p.next().map(str::parse), p.next().map(str::parse)) {
            runs.entry(n).or_default().push(a);
        }
    }
    runs
}

#[test]
fn every_acknowledged_job_runs_at_least_once_across_sigkills() {
    let seed: u64 = std::env::var("QUARK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed {seed} (rerun with QUARK_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    for round in 0..ROUNDS {
        let base = round << 32;
        let kid = spawn_child(tmp.path(), base);
        // Generous: the shared 2-core machine can be very loaded (a round takes ~3 s idle).
        let deadline = Instant::now() + Duration::from_secs(180);
        // The harness prints "test kill_child_entry ... " before it, on the same line.
        while !next_line(&kid, deadline, "READY").ends_with("READY") {}
        // Kill after a random number of acknowledged batches (0: while the node recovers and
        // runs what the earlier rounds left).
        let kill_after: u64 = rng.gen_range(0..24);
        let mut acks = 0;
        while acks < kill_after {
            let line = next_line(&kid, deadline, "an ACK line");
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let mut parts = rest.split(' ').map(|p| p.parse::<u64>().unwrap());
            let (first, last) = (parts.next().unwrap(), parts.next().unwrap());
            acked.extend(first..=last);
            acks += 1;
        }
        drop(kid); // SIGKILL, then reap
        eprintln!("round {round}: killed after {kill_after} acknowledged batches");
    }

    // Last restart, in this process: every job left runs.
    let node = start(tmp.path());
    let jobs = node.jobs();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = block_on(jobs.counts()).unwrap();
        let open: u64 = [JobState::Scheduled, JobState::Queued, JobState::Running]
            .iter()
            .map(|s| counts.get(s).copied().unwrap_or(0))
            .sum();
        assert_eq!(
            counts.get(&JobState::Dead),
            None,
            "no job is dead: {counts:?}"
        );
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs still open: {counts:?}");
        std::thread::yield_now();
    }
    node.shutdown();

    let runs = read_sink(tmp.path());
    let missing: Vec<u64> = acked
        .iter()
        .filter(|n| !runs.contains_key(n))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged jobs never ran, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let executions: usize = runs.values().map(Vec::len).sum();
    let duplicated = runs.values().filter(|a| a.len() > 1).count();
    for (n, attempts) in &runs {
        let distinct: BTreeSet<_> = attempts.iter().collect();
        assert_eq!(
            distinct.len(),
            attempts.len(),
            "job {n} ran twice with the same attempt number: {attempts:?}"
        );
    }
    eprintln!(
        "{} acknowledged jobs over {ROUNDS} kills; {} jobs ran ({} executions, {} jobs ran more than once, {} duplicate executions)",
        acked.len(),
        runs.len(),
        executions,
        duplicated,
        executions - runs.len()
    );
    assert!(
        acked.len() as u64 >= ROUNDS * BATCH,
        "the test enqueued enough to mean something"
    );
}
