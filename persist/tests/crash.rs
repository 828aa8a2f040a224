//! Crash tests with real processes: a child process appends batches with
//! `FsyncPolicy::Always` and prints each acknowledged LSN range with a content hash; the parent
//! SIGKILLs it at random moments, always after the child printed that its log is open (so
//! every round crashes a running log, not its recovery), reopens the log, and checks that every
//! acknowledged batch is recovered bit-exact, that every batch present is whole, and that
//! nothing that was never written appears.
//!
//! A SIGKILL does not discard the page cache: these tests check atomicity and recovery after
//! a process crash, not durability (`fdatasync` could be a no-op and they would pass). Power
//! loss is tested by `power_loss.rs` on a simulated disk.
//!
//! `acknowledged_batches_survive_sigkill` flushes each batch in one `pwrite`, which a kill
//! practically never tears (a write is cut short by a fatal signal only between pages, and a
//! batch here is mostly smaller than a page), so it asserts no truncation count.
//! `torn_flushes_are_truncated_after_sigkill` writes large batches through a backend that
//! issues each flush as 4 KiB `pwrite`s on a write-through (`O_DSYNC`) file, so kills land
//! inside flushes and leave torn batches: it asserts that recovery truncated torn tails.
//!
//! The child is this test binary re-executed with `QUARK_CRASH_CHILD_DIR` (or
//! `QUARK_CRASH_TORN_CHILD_DIR`) set. Content is a pure function of the LSN, so the parent can
//! verify any record it finds. `QUARK_CRASH_SEED` replays a run's kill moments.

mod common;
#[path = "common/kill.rs"]
mod kill;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::payload;
use kill::{KillPlan, SplitIo, READY};
use quark_persist::{block_on, Batch, FsyncPolicy, Log, LogConfig, LogIo, Preallocate, StdIo};

const CHILD_ENV: &str = "QUARK_CRASH_CHILD_DIR";
const TORN_CHILD_ENV: &str = "QUARK_CRASH_TORN_CHILD_DIR";
const ROUNDS: u64 = 60;
const TORN_ROUNDS: u64 = 30;

fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir, 9);
    c.segment_bytes = 64 * 1024;
    c.fsync = FsyncPolicy::Always;
    c.preallocate = Preallocate::ZeroFill;
    c
}

/// The torn variant: 1 MiB segments, write-through, batches of 16-60 KiB.
fn torn_config(dir: &Path) -> LogConfig {
    let mut c = config(dir);
    c.segment_bytes = 1 << 20;
    c.write_through = true;
    c
}

/// The batch layout and record contents of one test (pure functions of the LSN).
#[derive(Copy, Clone)]
struct Shape {
    /// Records in the batch that starts at `first`.
    batch_len: fn(u64) -> u64,
    payload_of: fn(u64) -> Vec<u8>,
}

const SMALL: Shape = Shape {
    batch_len: |first| 1 + first % 4,
    // Mostly small records; every 13th LSN carries 6 KiB so segments roll often.
    payload_of: |lsn| {
        let len = if lsn % 13 < 1 {
            6 * 1024
        } else {
            (lsn * 7919 % 300) as usize
        };
        payload(lsn, len)
    },
};

const LARGE: Shape = Shape {
    batch_len: |first| 4 + first % 8,
    payload_of: |lsn| payload(lsn, 4 * 1024 + (lsn * 7919 % 1024) as usize),
};

fn key_of(lsn: u64) -> Vec<u8> {
    format!("k{}", lsn % 5).into_bytes()
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

fn content_hash(shape: Shape, first: u64, end: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325;
    for lsn in first..end {
        fnv(&mut h, &key_of(lsn));
        fnv(&mut h, &(shape.payload_of)(lsn));
    }
    h
}

/// The child: open, print `READY`, then append forever, printing `ACK first end hash` after
/// each acknowledgement.
fn child<IO: LogIo>(io: IO, config: LogConfig, shape: Shape) {
    block_on(async {
        let (log, _) = Log::open(io, config).await.expect("child open");
        let mut out = std::io::stdout().lock();
        writeln!(out, "\n{READY}").expect("stdout");
        out.flush().expect("stdout");
        loop {
            let first = log.stats().next_lsn;
            let mut b = Batch::new();
            for lsn in first..first + (shape.batch_len)(first) {
                b.event(&key_of(lsn), &(shape.payload_of)(lsn));
            }
            let r = log.append(&b).await.expect("child append");
            assert_eq!(r.first, first);
            writeln!(
                out,
                "ACK {} {} {}",
                r.first,
                r.end,
                content_hash(shape, r.first, r.end)
            )
            .expect("stdout");
            out.flush().expect("stdout");
        }
    });
}

#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // run normally: nothing to do
    };
    child(StdIo, config(Path::new(&dir)), SMALL);
}

#[test]
fn crash_torn_child() {
    let Ok(dir) = std::env::var(TORN_CHILD_ENV) else {
        return;
    };
    child(
        SplitIo { piece_bytes: 4096 },
        torn_config(Path::new(&dir)),
        LARGE,
    );
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn seed(name: &str) -> u64 {
    let seed = std::env::var("QUARK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x5DEE_CE66, |d| d.as_nanos() as u64)
        });
    eprintln!("{name}: seed {seed} (set QUARK_CRASH_SEED to replay the kill moments)");
    seed
}

/// Runs `rounds` kill rounds of `child_test`; returns the tails truncated by the reopens and
/// the acknowledged batches verified.
fn kill_rounds(
    child_test: &str,
    env: &str,
    rounds: u64,
    config: fn(&Path) -> LogConfig,
    shape: Shape,
    max_acks: u64,
) -> (usize, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("log");
    let mut rng = Rng(seed(child_test) | 1);
    // Every acknowledged batch ever: first -> (end, hash).
    let mut acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut truncations = 0;
    for round in 0..rounds {
        let plan = KillPlan {
            after_acks: rng.next() % max_acks,
            delay: Duration::from_micros(rng.next() % 3000),
        };
        kill::run_child_and_kill(child_test, env, &log_dir, plan, round as u32, |rest| {
            let v: Vec<u64> = rest
                .split(' ')
                .map(|x| x.parse().expect("ACK fields are numbers"))
                .collect();
            assert_eq!(v.len(), 3, "ACK line {rest:?}");
            acked.insert(v[0], (v[1], v[2]));
        });

        // Reopen and verify everything.
        block_on(async {
            let (log, report) = Log::open(StdIo, config(&log_dir)).await.expect("reopen");
            truncations += report.truncated.len();
            let mut scan = log.scan(1);
            let mut found: BTreeMap<u64, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
            while let Some(r) = scan.next().await.expect("scan") {
                assert_eq!(
                    r.key,
                    key_of(r.lsn),
                    "round {round}: wrong key at LSN {}",
                    r.lsn
                );
                assert_eq!(
                    r.payload,
                    (shape.payload_of)(r.lsn),
                    "round {round}: wrong payload at LSN {}",
                    r.lsn
                );
                found.insert(r.lsn, (r.key, r.payload));
            }
            // Contiguous from 1 and made of whole batches.
            let mut lsn = 1;
            while lsn < log.stats().next_lsn {
                let end = lsn + (shape.batch_len)(lsn);
                for l in lsn..end {
                    assert!(
                        found.contains_key(&l),
                        "round {round}: batch at {lsn} is not whole (missing {l})"
                    );
                }
                lsn = end;
            }
            assert_eq!(lsn, log.stats().next_lsn);
            assert_eq!(
                found.len() as u64,
                lsn - 1,
                "round {round}: records outside batches"
            );
            for (&first, &(end, hash)) in &acked {
                let mut h = 0xcbf2_9ce4_8422_2325;
                for l in first..end {
                    let (k, p) = found
                        .get(&l)
                        .unwrap_or_else(|| panic!("round {round}: acknowledged LSN {l} lost"));
                    fnv(&mut h, k);
                    fnv(&mut h, p);
                }
                assert_eq!(h, hash, "round {round}: batch {first}..{end} not bit-exact");
            }
        });
    }
    (truncations, acked.len() as u64)
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() || std::env::var(TORN_CHILD_ENV).is_ok() {
        return;
    }
    let started = Instant::now();
    let (truncations, total_acked) =
        kill_rounds("crash_child", CHILD_ENV, ROUNDS, config, SMALL, 120);
    eprintln!(
        "crash test: {ROUNDS} rounds, {total_acked} acknowledged batches verified, {truncations} tails truncated, {:?}",
        started.elapsed()
    );
    assert!(total_acked > ROUNDS, "the child made progress");
}

#[test]
fn torn_flushes_are_truncated_after_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() || std::env::var(TORN_CHILD_ENV).is_ok() {
        return;
    }
    let started = Instant::now();
    let (truncations, total_acked) = kill_rounds(
        "crash_torn_child",
        TORN_CHILD_ENV,
        TORN_ROUNDS,
        torn_config,
        LARGE,
        20,
    );
    eprintln!(
        "torn crash test: {TORN_ROUNDS} rounds, {total_acked} acknowledged batches verified, {truncations} tails truncated, {:?}",
        started.elapsed()
    );
    assert!(total_acked > TORN_ROUNDS, "the child made progress");
    // A kill inside a flush leaves its first 4 KiB pieces in the file: a torn batch that
    // recovery must cut. Kills land inside flushes most of the time (each piece is a
    // write-through write), so over the rounds some must have torn one.
    assert!(
        truncations > 0,
        "no torn tail was truncated in {TORN_ROUNDS} kills inside large flushes"
    );
}
