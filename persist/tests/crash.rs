//! Crash test: a real child process appends batches with `FsyncPolicy::Always` and prints each
//! acknowledged LSN range with a content hash; the parent SIGKILLs it at random moments (60
//! rounds), reopens the log, and checks that every acknowledged batch is recovered bit-exact,
//! that every batch present is whole, and that nothing that was never written appears.
//!
//! The child is this test binary re-executed with `QUARK_CRASH_CHILD_DIR` set. Content is a
//! pure function of the LSN, so the parent can verify any record it finds.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use common::payload;
use quark_persist::{block_on, Batch, FsyncPolicy, Log, LogConfig, Preallocate, StdIo};

const CHILD_ENV: &str = "QUARK_CRASH_CHILD_DIR";
const ROUNDS: u64 = 60;

fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir, 9);
    c.segment_bytes = 64 * 1024;
    c.fsync = FsyncPolicy::Always;
    c.preallocate = Preallocate::ZeroFill;
    c
}

/// Records in the batch that starts at `first`.
fn batch_len(first: u64) -> u64 {
    1 + first % 4
}

fn key_of(lsn: u64) -> Vec<u8> {
    format!("k{}", lsn % 5).into_bytes()
}

fn payload_of(lsn: u64) -> Vec<u8> {
    // Mostly small records; every 13th LSN carries 6 KiB so segments roll often.
    let len = if lsn % 13 < 1 {
        6 * 1024
    } else {
        (lsn * 7919 % 300) as usize
    };
    payload(lsn, len)
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

fn content_hash(first: u64, end: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325;
    for lsn in first..end {
        fnv(&mut h, &key_of(lsn));
        fnv(&mut h, &payload_of(lsn));
    }
    h
}

/// The child: append forever, printing `ACK first end hash` after each acknowledgement.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // run normally: nothing to do
    };
    block_on(async {
        let (log, _) = Log::open(StdIo, config(Path::new(&dir)))
            .await
            .expect("child open");
        let mut out = std::io::stdout().lock();
        loop {
            let first = log.stats().next_lsn;
            let mut b = Batch::new();
            for lsn in first..first + batch_len(first) {
                b.event(&key_of(lsn), &payload_of(lsn));
            }
            let r = log.append(&b).await.expect("child append");
            assert_eq!(r.first, first);
            writeln!(
                out,
                "ACK {} {} {}",
                r.first,
                r.end,
                content_hash(r.first, r.end)
            )
            .expect("stdout");
            out.flush().expect("stdout");
        }
    });
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

#[test]
fn acknowledged_batches_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("log");
    let seed = std::env::var("QUARK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x5DEE_CE66, |d| d.as_nanos() as u64)
        });
    eprintln!("crash test seed {seed} (set QUARK_CRASH_SEED to replay)");
    let mut rng = Rng(seed | 1);
    // Every acknowledged batch ever: first -> (end, hash).
    let mut acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut truncations = 0;
    for round in 0..ROUNDS {
        let kill_after = match rng.next() % 4 {
            0 => 0, // kill during open/recovery or the first append
            _ => rng.next() % 120,
        };
        common::run_child_until_killed(
            "crash_child",
            CHILD_ENV,
            &log_dir,
            kill_after,
            round as u32,
            |rest| {
                let v: Vec<u64> = rest
                    .split(' ')
                    .map(|x| x.parse().expect("ACK fields are numbers"))
                    .collect();
                assert_eq!(v.len(), 3, "ACK line {rest:?}");
                acked.insert(v[0], (v[1], v[2]));
            },
        );

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
                    payload_of(r.lsn),
                    "round {round}: wrong payload at LSN {}",
                    r.lsn
                );
                found.insert(r.lsn, (r.key, r.payload));
            }
            // Contiguous from 1 and made of whole batches.
            let mut lsn = 1;
            while lsn < log.stats().next_lsn {
                let end = lsn + batch_len(lsn);
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
    let total_acked: u64 = acked.values().map(|_| 1).sum();
    eprintln!(
        "crash test: {ROUNDS} rounds, {total_acked} acknowledged batches verified, {truncations} tails truncated, {:?}",
        started.elapsed()
    );
    assert!(total_acked > ROUNDS, "the child made progress");
}
