//! Crash test with truncation, compaction and scrub running: a child process appends events
//! to three keys and, every few appends, truncates a key below its third-newest acknowledged
//! event (`FsyncPolicy::Always`, 16 KiB segments, compaction every 10 appends, a scrub every
//! 50); the parent SIGKILLs it at random moments once its log is open and checks after every
//! reopen that no record below an acknowledged truncate bound came back, that no acknowledged
//! event at or above the bounds that could have been written is lost, and that every live
//! record reads back exactly. A SIGKILL keeps the page cache: durability is tested by
//! `power_loss.rs`.

mod common;
#[path = "common/kill.rs"]
mod kill;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{payload, small_segments_config};
use kill::{KillPlan, READY};
use quark_persist::{block_on, Batch, CompactionPolicy, Log, LogConfig, RecordKind, StdIo};

const CHILD_ENV: &str = "QUARK_CRASH_TRUNCATE_CHILD_DIR";
const ROUNDS: u64 = 40;
const KEYS: u64 = 3;

fn config(dir: &Path) -> LogConfig {
    small_segments_config(dir, 5)
}

fn key_of(i: u64) -> Vec<u8> {
    format!("k{}", i % KEYS).into_bytes()
}

fn payload_of(lsn: u64) -> Vec<u8> {
    payload(lsn, 100 + (lsn * 7919 % 300) as usize)
}

/// The child. Output: `ACK E <key> <lsn>` for an event, `ACK T <key> <bound>` for a truncate.
#[test]
fn crash_truncate_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    block_on(async {
        let (log, _) = Log::open(StdIo, config(Path::new(&dir)))
            .await
            .expect("child open");
        // Acknowledged events per key, recovered from the log (live ones) and extended.
        let mut events: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
        for k in 0..KEYS {
            let key = key_of(k);
            let mut lsns = Vec::new();
            for lsn in log.key_lsns(&key) {
                let r = log.read(lsn).await.expect("read").expect("present");
                lsns.push(r.origin_lsn);
            }
            events.insert(key, lsns);
        }
        let mut out = std::io::stdout().lock();
        // The test harness prints "test crash_truncate_child ... " without a newline: end
        // that line so the marker and the acknowledgements start lines of their own.
        writeln!(out, "\n{READY}").expect("stdout");
        out.flush().expect("stdout");
        for i in 1u64.. {
            let key = key_of(i);
            let evs = events.get_mut(&key).expect("every key present");
            let mut b = Batch::new();
            if i % 4 == 0 && evs.len() >= 3 {
                let bound = evs[evs.len() - 3];
                b.truncate(&key, bound);
                log.append(&b).await.expect("child truncate");
                evs.retain(|&l| l >= bound);
                writeln!(out, "ACK T {} {bound}", i % KEYS).expect("stdout");
            } else {
                let lsn = log.stats().next_lsn;
                b.event(&key, &payload_of(lsn));
                let r = log.append(&b).await.expect("child append");
                assert_eq!(r.first, lsn);
                evs.push(lsn);
                writeln!(out, "ACK E {} {lsn}", i % KEYS).expect("stdout");
            }
            out.flush().expect("stdout");
            if i % 10 == 0 {
                log.compact(CompactionPolicy::default())
                    .await
                    .expect("child compact");
            }
            if i % 50 == 0 {
                log.scrub().await.expect("child scrub");
            }
        }
    });
}

#[test]
fn truncation_compaction_and_scrub_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("log");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x5EED, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("crash/truncate test seed {seed}");
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Per key: acknowledged events (origin LSNs) and the highest acknowledged bound.
    let mut events: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    let mut floor: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut truncates = 0u64;
    let mut torn_tails = 0;
    let mut acks_total = 0;
    for round in 0..ROUNDS {
        let plan = KillPlan {
            after_acks: rand() % 300,
            delay: Duration::from_micros(rand() % 3000),
        };
        let killed = kill::run_child_and_kill(
            "crash_truncate_child",
            CHILD_ENV,
            &log_dir,
            plan,
            round as u32,
            |rest| {
                let mut it = rest.split(' ');
                let what = it.next().expect("kind");
                let key = format!("k{}", it.next().expect("key")).into_bytes();
                let n: u64 = it.next().expect("lsn").parse().expect("a number");
                match what {
                    "E" => events.entry(key).or_default().push(n),
                    "T" => {
                        truncates += 1;
                        let f = floor.entry(key).or_insert(0);
                        *f = (*f).max(n);
                    }
                    other => panic!("unexpected ack {other}"),
                }
            },
        );
        acks_total += killed.acks;
        let max_acked = events.values().flatten().copied().max().unwrap_or(0);
        block_on(async {
            let (log, report) = Log::open(StdIo, config(&log_dir)).await.expect("reopen");
            torn_tails += report.truncated.len();
            for k in 0..KEYS {
                let key = key_of(k);
                let f = floor.get(&key).copied().unwrap_or(0);
                let live = log.read_many(&log.key_lsns(&key)).await.expect("read_many");
                let origins: Vec<u64> = live.iter().map(|r| r.origin_lsn).collect();
                for r in &live {
                    assert_eq!(r.kind, RecordKind::Event);
                    assert_eq!(r.key, key, "round {round}");
                    assert_eq!(r.payload, payload_of(r.origin_lsn), "round {round}");
                    assert!(
                        r.origin_lsn >= f,
                        "round {round}: {key:?} record {} came back below acknowledged bound {f}",
                        r.origin_lsn
                    );
                    let acked = events.get(&key).is_some_and(|e| e.contains(&r.origin_lsn));
                    assert!(
                        acked || r.origin_lsn > max_acked,
                        "round {round}: record {} (lsn {}) of {key:?} was never written (max acked {max_acked}, acked {:?}, live {origins:?})",
                        r.origin_lsn,
                        r.lsn,
                        events.get(&key)
                    );
                }
                // An unacknowledged truncate may have landed, but its bound is at most the
                // third-newest acknowledged event of its key: those stay.
                let evs = events.get(&key).cloned().unwrap_or_default();
                let keep_from = evs.len().saturating_sub(3);
                for &e in &evs[keep_from..] {
                    if e >= f {
                        assert!(
                            origins.contains(&e),
                            "round {round}: acknowledged event {e} of {key:?} lost (live {origins:?})"
                        );
                    }
                }
                assert!(origins.windows(2).all(|w| w[0] < w[1]), "logical order");
                // An unacknowledged event that landed is durable from now on.
                let evs = events.entry(key).or_default();
                for o in origins {
                    if o > max_acked && !evs.contains(&o) {
                        evs.push(o);
                    }
                }
            }
        });
    }
    assert!(truncates > 10, "the child truncated ({truncates})");
    // Every round killed a running log (the harness waits for READY). Torn tails are not
    // asserted: a flush here is one `pwrite` of a batch under a page, which a kill does not
    // tear (see `crash.rs`); `power_loss.rs` and `crash.rs`'s torn variant assert truncation.
    assert!(
        acks_total > ROUNDS * 10,
        "the child acknowledged appends in most rounds ({acks_total})"
    );
    eprintln!(
        "crash/truncate test: {ROUNDS} rounds, {acks_total} acknowledgements, {torn_tails} torn tails truncated, {:?}",
        started.elapsed()
    );
}
