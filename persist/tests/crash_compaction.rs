//! Crash test with compaction and segment reuse running: a child process overwrites three
//! keys with snapshots (`FsyncPolicy::Always`, 16 KiB segments, compaction every 10 appends, so
//! segments are constantly compacted into spares and reused); the parent SIGKILLs it at random
//! moments once its log is open (60 rounds) and checks after every reopen that each key's live
//! snapshot is at least as new as the last one acknowledged for it, that it and every other
//! record read back is exactly what was written at its original LSN, and that stale bytes of
//! reused segments never surface. A SIGKILL keeps the page cache: durability is tested by
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

const CHILD_ENV: &str = "QUARK_CRASH_COMPACT_CHILD_DIR";
const ROUNDS: u64 = 60;
const KEYS: u64 = 3;

fn config(dir: &Path) -> LogConfig {
    small_segments_config(dir, 4)
}

fn key_of(lsn: u64) -> Vec<u8> {
    format!("k{}", lsn % KEYS).into_bytes()
}

fn payload_of(lsn: u64) -> Vec<u8> {
    payload(lsn, 200 + (lsn * 7919 % 400) as usize)
}

/// The child: one snapshot per batch, LSN-determined content, compaction every 10 appends.
#[test]
fn crash_compaction_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    block_on(async {
        let (log, _) = Log::open(StdIo, config(Path::new(&dir)))
            .await
            .expect("child open");
        let mut out = std::io::stdout().lock();
        writeln!(out, "\n{READY}").expect("stdout");
        out.flush().expect("stdout");
        let mut until_compaction = 10u32;
        loop {
            let lsn = log.stats().next_lsn;
            let mut b = Batch::new();
            b.snapshot(&key_of(lsn), &payload_of(lsn));
            let r = log.append(&b).await.expect("child append");
            assert_eq!(r.first, lsn);
            writeln!(out, "ACK {lsn}").expect("stdout");
            out.flush().expect("stdout");
            until_compaction -= 1;
            if until_compaction == 0 {
                until_compaction = 10;
                log.compact(CompactionPolicy::default())
                    .await
                    .expect("child compact");
            }
        }
    });
}

#[test]
fn compaction_and_segment_reuse_survive_sigkill() {
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
    eprintln!("crash/compaction test seed {seed}");
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Last acknowledged LSN per key.
    let mut acked: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut recycled_seen = false;
    let mut truncations = 0;
    let mut acks_total = 0;
    for round in 0..ROUNDS {
        let plan = KillPlan {
            after_acks: rand() % 400,
            delay: Duration::from_micros(rand() % 3000),
        };
        let killed = kill::run_child_and_kill(
            "crash_compaction_child",
            CHILD_ENV,
            &log_dir,
            plan,
            round as u32,
            |rest| {
                let lsn: u64 = rest.parse().expect("ACK carries an LSN");
                let e = acked.entry(key_of(lsn)).or_insert(0);
                *e = (*e).max(lsn);
            },
        );

        acks_total += killed.acks;
        block_on(async {
            let (log, report) = Log::open(StdIo, config(&log_dir)).await.expect("reopen");
            recycled_seen |= !report.spares.is_empty();
            truncations += report.truncated.len();
            for (key, &last) in &acked {
                let lsns = log.key_lsns(key);
                assert_eq!(lsns.len(), 1, "round {round}: one live snapshot per key");
                let r = log.read(lsns[0]).await.expect("read").expect("present");
                assert_eq!(r.kind, RecordKind::Snapshot);
                assert!(
                    r.origin_lsn >= last,
                    "round {round}: key {key:?} went back from acknowledged LSN {last} to {}",
                    r.origin_lsn
                );
                assert_eq!(&r.key, key);
                assert_eq!(r.payload, payload_of(r.origin_lsn), "round {round}");
            }
            let mut scan = log.scan(1);
            while let Some(r) = scan.next().await.expect("scan") {
                assert_eq!(
                    r.key,
                    key_of(r.origin_lsn),
                    "round {round}: stale or foreign record"
                );
                assert_eq!(r.payload, payload_of(r.origin_lsn), "round {round}");
            }
        });
    }
    assert!(acked.len() as u64 == KEYS, "the child made progress");
    assert!(recycled_seen, "segments were reused during the test");
    // Every round killed a running log (the harness waits for READY), and most rounds after
    // some acknowledgements. Torn tails are not asserted: a flush here is one `pwrite` of
    // a batch under a page, which a kill does not tear (see `crash.rs`); `power_loss.rs` and
    // `crash.rs`'s torn variant assert truncation.
    assert!(
        acks_total > ROUNDS * 10,
        "the child acknowledged appends in most rounds ({acks_total})"
    );
    eprintln!(
        "crash/compaction test: {ROUNDS} rounds, {acks_total} acknowledgements, {truncations} tails truncated, {:?}",
        started.elapsed()
    );
}
