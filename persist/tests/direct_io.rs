//! Direct I/O appends (`[log] direct_io`, docs/PERSIST.md "Direct I/O"): each write-through
//! flush is one aligned `O_DIRECT | O_DSYNC` write that starts at the block holding the
//! previous end, rewritten with the same bytes. These tests check that the bytes read back
//! (through the buffered descriptor, in the same process and after reopening) are the ones
//! appended, that the file system's refusal falls back (`auto`) or fails (`on`), and, on the
//! simulated disk, that a direct write torn at any subset of its sectors never loses an
//! acknowledged batch. The power-loss property test (`power_loss.rs`) runs the same under
//! random crash points.

mod common;

use common::payload;
use quark_persist::sim::{LossMode, SimIo};
use quark_persist::{block_on, Batch, DirectIo, FsyncPolicy, Log, LogConfig, Preallocate, StdIo};

fn batch(seed: u64, len: usize) -> Batch {
    let mut b = Batch::new();
    b.event(format!("k{}", seed % 7).as_bytes(), &payload(seed, len));
    b
}

fn config(dir: &std::path::Path, direct: DirectIo) -> LogConfig {
    let mut c = LogConfig::new(dir, 5);
    c.segment_bytes = 64 * 1024;
    c.segment_bytes_initial = 16 * 1024;
    c.fsync = FsyncPolicy::Always;
    c.write_through = true;
    c.preallocate = Preallocate::ZeroFill;
    c.direct_io = direct;
    c
}

/// Sizes that make appends end inside a block, exactly on a block boundary and cross several
/// blocks, and that fill segments so they roll.
fn size_of(i: u64) -> usize {
    [1, 50, 100, 3000, 5000, 200, 9000, 7][(i % 8) as usize]
}

/// On a real file system (the test's temporary directory, which must accept `O_DIRECT`: ext4,
/// xfs, btrfs), every append is a direct write, every record reads back at once (the buffered
/// descriptor sees what the direct one wrote) and after reopening.
#[test]
fn direct_appends_read_back_at_once_and_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&dir.path().join("log"), DirectIo::On);
    let n = 120u64;
    let mut ranges = Vec::new();
    let refused = block_on(async {
        let (log, _) = match Log::open(StdIo, cfg.clone()).await {
            Ok(l) => l,
            // tmpfs as TMPDIR: nothing to test here (the simulated disk tests below still run).
            Err(e) if format!("{e:?}").contains("O_DIRECT") => return true,
            Err(e) => panic!("open: {e}"),
        };
        for i in 0..n {
            let r = log.append(&batch(i, size_of(i))).await.expect("append");
            let rec = log.read(r.first).await.expect("read").expect("present");
            assert_eq!(rec.payload, payload(i, size_of(i)), "append {i} read back");
            // And every earlier one (the rewritten partial block kept them).
            if i % 10 == 9 {
                for (j, r) in ranges.iter().enumerate() {
                    let rec = log.read(*r).await.expect("read").expect("present");
                    assert_eq!(rec.payload, payload(j as u64, size_of(j as u64)));
                }
            }
            ranges.push(r.first);
        }
        let stats = log.stats();
        assert_eq!(
            stats.direct_writes, stats.flush_count,
            "every flush was direct"
        );
        assert!(stats.segment_count > 2, "segments rolled");
        log.close().await.expect("close");
        false
    });
    if refused {
        eprintln!("the temporary directory refuses O_DIRECT: skipped");
        return;
    }
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg).await.expect("reopen");
        assert!(report.truncated.is_empty(), "{report:?}");
        for (i, lsn) in ranges.iter().enumerate() {
            let rec = log.read(*lsn).await.expect("read").expect("present");
            assert_eq!(rec.payload, payload(i as u64, size_of(i as u64)));
        }
        // The reopened active segment continues with direct writes (its partial block read
        // back from the file first).
        let r = log.append(&batch(1000, 33)).await.expect("append");
        assert_eq!(log.stats().direct_writes, 1);
        let rec = log.read(r.first).await.expect("read").expect("present");
        assert_eq!(rec.payload, payload(1000, 33));
        log.close().await.expect("close");
    });
}

/// `auto` on a file system that refuses `O_DIRECT` (the simulated disk made to act as tmpfs)
/// appends buffered write-through; `on` fails to open naming the cause.
#[test]
fn refused_direct_io_falls_back_under_auto_and_fails_under_on() {
    let io = SimIo::new(3);
    io.refuse_direct();
    block_on(async {
        let (log, _) = Log::open(io.clone(), config("/sim/a".as_ref(), DirectIo::Auto))
            .await
            .expect("auto opens");
        for i in 0..20 {
            log.append(&batch(i, 300)).await.expect("append");
        }
        let s = log.stats();
        assert_eq!(s.direct_writes, 0);
        assert_eq!(
            s.sync_count, s.flush_count,
            "write-through: every flush durable"
        );
        let err = match Log::open(io.clone(), config("/sim/b".as_ref(), DirectIo::On)).await {
            Ok(_) => panic!("direct_io = on opened where O_DIRECT is refused"),
            Err(e) => format!("{e:?}"),
        };
        assert!(err.contains("O_DIRECT"), "{err}");
    });
    // Off never tries.
    let io = SimIo::new(4);
    block_on(async {
        let (log, _) = Log::open(io, config("/sim/c".as_ref(), DirectIo::Off))
            .await
            .expect("open");
        log.append(&batch(1, 10)).await.expect("append");
        assert_eq!(log.stats().direct_writes, 0);
    });
}

/// The power is cut during the direct write of append `k` (each of its sectors then lands or
/// not, independently): every earlier, acknowledged batch survives, because the write's
/// bytes before the old end are the ones already on disk. Runs every crash point of a
/// workload whose appends mostly rewrite a partial block.
#[test]
fn a_direct_write_torn_at_any_sectors_keeps_every_acknowledged_batch() {
    let mut torn = 0;
    let mut points = 0;
    for crash_after in 1..60u64 {
        for loss_seed in 0..4u64 {
            let io = SimIo::new(crash_after * 10 + loss_seed);
            io.set_yield_permille(0);
            let cfg = config("/sim/t".as_ref(), DirectIo::On);
            let acked = block_on(async {
                let (log, _) = Log::open(io.clone(), cfg.clone()).await.expect("open");
                let mut acked = Vec::new();
                for i in 0..crash_after {
                    let r = log.append(&batch(i, size_of(i))).await.expect("append");
                    acked.push((r.first, i));
                }
                assert_eq!(log.stats().direct_writes, log.stats().flush_count);
                // The next operation (the next append's direct write) is cut.
                io.crash_at_op(io.ops() + 1);
                assert!(log.append(&batch(crash_after, 2000)).await.is_err());
                acked
            });
            points += 1;
            let survived = io.power_loss(LossMode::DropUnsynced, loss_seed);
            torn += survived.torn_direct_writes();
            block_on(async {
                let (log, _) = Log::open(survived, cfg).await.unwrap_or_else(|e| {
                    panic!("crash after {crash_after} appends, seed {loss_seed}: reopen: {e}")
                });
                for (lsn, i) in acked {
                    let rec = log.read(lsn).await.expect("read").unwrap_or_else(|| {
                        panic!("crash after {crash_after}: acknowledged append {i} lost")
                    });
                    assert_eq!(
                        rec.payload,
                        payload(i, size_of(i)),
                        "crash after {crash_after}: append {i}"
                    );
                }
            });
        }
    }
    assert!(
        torn > points / 3,
        "{torn} of {points} cut writes landed torn"
    );
}
