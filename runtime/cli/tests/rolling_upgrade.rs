//! A rolling upgrade of a three-node cluster with real processes (docs/MIGRATION.md, "Rolling
//! upgrades"): three `quark serve` processes on loopback, a `Client` asking `Add(1)` of many
//! migratable counters (`tally`) without pause, and each node in turn stopped with SIGTERM
//! (it drains to the others), restarted with a newer `app_version`, and rejoining.
//!
//! Asserted: no request fails except with the error the docs name as retriable
//! (`ShuttingDown`: the call was not run), and only those are retried (and counted); every
//! reply is the count of acknowledged increments so far and every counter ends at that count
//! (no lost, no doubled effect); after the first node's upgrade, first messages for new ids
//! activate their actors on it (the only node of the newest version).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../../tests/ports/mod.rs"]
mod ports;
#[path = "procs/mod.rs"]
mod procs;
use ports::free_addrs;
use procs::Proc;

use quark::builtin::{Add, Tally};
use quark::{Actor, CallError, Client};

/// Counters the client drives (each owned by one driver thread, so each reply is checked
/// against an exact count): 240, or `QUARK_ROLLING_KEYS` (the heavier run on demand,
/// docs/BENCHMARKS.md, "Rolling upgrade").
fn keys() -> u64 {
    std::env::var("QUARK_ROLLING_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(240)
}
const DRIVERS: u64 = 4;

fn write_config(
    dir: &Path,
    id: u64,
    version: &str,
    addrs: &[SocketAddr],
    admin: SocketAddr,
) -> PathBuf {
    let mut text = format!(
        "[node]\nshards = 2\npin_threads = false\nidle_spin_us = 0\n\
         shutdown_timeout_ms = 10000\napp_version = \"{version}\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [cluster]\ncluster_id = \"roll\"\nnode_id = {id}\n\
         heartbeat_interval_ms = 20\nsuspect_after_ms = 200\ndead_after_ms = 600\n\
         reconnect_base_ms = 5\nreconnect_max_ms = 50\n"
    );
    for (i, a) in addrs.iter().enumerate() {
        text.push_str(&format!(
            "\n[[cluster.nodes]]\nid = {}\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    let path = dir.join(format!("node{id}-{version}.toml"));
    std::fs::write(&path, text).expect("write the config");
    path
}

/// Starts a node and waits (at most 10 s) for its ready line; `Err(stderr)` if it exits first.
fn try_serve(config: &Path) -> Result<Proc, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quark"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info");
    let mut p = Proc::spawn(cmd);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match p
            .stdout
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            Ok(line) if line.contains("listening on") => break,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = p.child.wait();
                std::thread::sleep(Duration::from_millis(50));
                return Err(p.log());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{config:?}: no ready line within 10 s; stderr:\n{}",
                p.log()
            ),
        }
    }
    Ok(p)
}

/// Starts a node, retrying while its ports are still held by the process it replaces.
fn serve(config: &Path) -> Proc {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match try_serve(config) {
            Ok(p) => return p,
            Err(e) if e.contains("in use") && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{config:?}: exited before it was ready; stderr:\n{e}"),
        }
    }
}

/// SIGTERM, then waits (at most 30 s) for "quark: stopped" and the exit; returns its log.
fn stop(mut p: Proc, id: u64) -> String {
    // SAFETY: kill(2) with the pid of a child this test spawned and has not reaped yet.
    let r = unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0, "SIGTERM to node {id}");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match p
            .stdout
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            Ok(line) if line.contains("quark: stopped") => break,
            Ok(_) => {}
            Err(e) => panic!(
                "node {id} did not stop after SIGTERM ({e}); stderr:\n{}",
                p.stderr.lock().expect("log")
            ),
        }
    }
    let status = p.child.wait().expect("wait");
    assert!(status.success(), "node {id} exited with {status}");
    let log = p.stderr.lock().expect("log").clone();
    assert!(
        log.contains("drained to the other nodes"),
        "node {id} did not drain:\n{log}"
    );
    log
}

fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True if tally `key` is active on the node whose admin endpoint is `admin`.
fn active_on(admin: SocketAddr, key: u64) -> bool {
    let q = quark::ActorQuery {
        actor_type: Some(Tally::TYPE_NAME.to_owned()),
        key_prefix: Some(key.to_string()),
        limit: 1000,
        ..quark::ActorQuery::default()
    };
    let page = quark::admin::fetch_actors(admin, &q, Duration::from_secs(5)).expect("actors");
    page.rows.iter().any(|r| r.key == key.to_string())
}

#[derive(Default)]
struct Tallies {
    acked: AtomicU64,
    retried: AtomicU64,
    failed: Mutex<Vec<String>>,
}

#[test]
fn a_rolling_upgrade_under_traffic_loses_and_doubles_nothing() {
    let started = Instant::now();
    let n_keys = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let addrs = free_addrs(3);
    let admins = free_addrs(3);
    let config =
        |id: u64, v: &str| write_config(dir.path(), id, v, &addrs, admins[id as usize - 1]);
    let mut procs: Vec<Option<Proc>> = (1..=3).map(|id| Some(serve(&config(id, "1.0")))).collect();
    let mut b = Client::builder().cluster_id("roll").transport(|n| {
        n.backoff.base = Duration::from_millis(5);
        n.backoff.max = Duration::from_millis(50);
    });
    for (i, a) in addrs.iter().enumerate() {
        b = b.node(i as u64 + 1, *a);
    }
    let client = quark::builtin::builtin_messages(b)
        .connect()
        .expect("client");
    for k in 0..n_keys {
        let r = client.actor_ref::<Tally>(k);
        eventually("a first answer", Duration::from_secs(10), || {
            quark::block_on(r.ask(Add(0))).ok()
        });
    }

    let stats = Arc::new(Tallies::default());
    let stop_flag = Arc::new(AtomicBool::new(false));
    let drivers: Vec<_> = (0..DRIVERS)
        .map(|d| {
            let (client, stats, stop_flag) = (client.handle(), stats.clone(), stop_flag.clone());
            let t0 = started;
            std::thread::spawn(move || {
                let keys: Vec<u64> = (0..n_keys).filter(|k| k % DRIVERS == d).collect();
                let mut acked = vec![0i64; keys.len()];
                let mut i = 0;
                while !stop_flag.load(Ordering::Relaxed) {
                    i = (i + 1) % keys.len();
                    loop {
                        // A new reference per call: it picks the node by the view now.
                        let r = client.actor_ref::<Tally>(keys[i]);
                        match quark::block_on(r.ask(Add(1))) {
                            Ok(v) => {
                                acked[i] += 1;
                                stats.acked.fetch_add(1, Ordering::Relaxed);
                                if v != acked[i] {
                                    stats.failed.lock().expect("failed").push(format!(
                                        "tally {}: answered {v} after {} acknowledged increments \
                                         (sent to node {:?}, at {:?})",
                                        keys[i],
                                        acked[i],
                                        r.remote_node(),
                                        t0.elapsed()
                                    ));
                                    acked[i] = v;
                                }
                                break;
                            }
                            // Documented as retriable: the call was not run.
                            Err(CallError::ShuttingDown { .. }) => {
                                stats.retried.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                stats
                                    .failed
                                    .lock()
                                    .expect("failed")
                                    .push(format!("tally {}: {e}", keys[i]));
                                break;
                            }
                        }
                    }
                }
                keys.into_iter().zip(acked).collect::<Vec<_>>()
            })
        })
        .collect();
    let progress = |what: &str| {
        let from = stats.acked.load(Ordering::Relaxed);
        eventually(what, Duration::from_secs(20), || {
            (stats.acked.load(Ordering::Relaxed) >= from + 500).then_some(())
        });
    };
    progress("traffic before the upgrade");

    let mut logs: Vec<(String, String)> = Vec::new();
    let mut fresh = n_keys + 1000;
    for id in 1..=3u64 {
        let t = Instant::now();
        let log = stop(procs[id as usize - 1].take().expect("running"), id);
        logs.push((format!("node {id} (1.0)"), log));
        let stopped = t.elapsed();
        progress("traffic while a node is down");
        procs[id as usize - 1] = Some(serve(&config(id, "2.0")));
        // It joined once the client sends it its share (it sent the client its version).
        eventually(
            "the client ranks the upgraded node",
            Duration::from_secs(20),
            || {
                (0..n_keys)
                    .any(|k| client.actor_ref::<Tally>(k).remote_node() == Some(id))
                    .then_some(())
            },
        );
        eprintln!(
            "node {id}: drained and stopped in {stopped:?}, back and ranked after {:?} (at {:?})",
            t.elapsed(),
            started.elapsed()
        );
        progress("traffic after the node rejoined");
        if id == 1 {
            // Node 1 is the only node of the newest version: first messages for new ids
            // activate their actors there.
            let new: Vec<u64> = (fresh..fresh + 20).collect();
            fresh += 20;
            for k in &new {
                assert_eq!(
                    quark::block_on(client.actor_ref::<Tally>(*k).ask(Add(1))),
                    Ok(1)
                );
            }
            for k in &new {
                assert!(
                    active_on(admins[0], *k),
                    "tally {k} was not activated on the upgraded node 1"
                );
            }
        }
    }
    progress("traffic after the upgrade");
    stop_flag.store(true, Ordering::Relaxed);
    let counts: Vec<(u64, i64)> = drivers
        .into_iter()
        .flat_map(|h| h.join().expect("driver"))
        .collect();
    let failed = stats.failed.lock().expect("failed").clone();
    if !failed.is_empty() {
        for (i, p) in procs.iter().enumerate() {
            if let Some(p) = p {
                let log = p.stderr.lock().expect("log").clone();
                logs.push((format!("node {} (2.0)", i + 1), log));
            }
        }
        for (name, log) in &logs {
            for l in log.lines().filter(|l| {
                ["drain", "member view", "joined", "hand", "WARN", "ERROR"]
                    .iter()
                    .any(|w| l.contains(w))
            }) {
                eprintln!("{name}: {l}");
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed requests: {failed:#?}",
        failed.len()
    );
    for (k, n) in &counts {
        assert_eq!(
            quark::block_on(client.actor_ref::<Tally>(*k).ask(Add(0))),
            Ok(*n),
            "tally {k}: its final value is not its acknowledged increments"
        );
    }
    // Every node runs the new version now: a new id activates on its home.
    eprintln!(
        "rolling upgrade: {} requests acknowledged, {} retried (ShuttingDown), 0 failed, {:?} in all",
        stats.acked.load(Ordering::Relaxed),
        stats.retried.load(Ordering::Relaxed),
        started.elapsed()
    );
    drop(procs);
}
