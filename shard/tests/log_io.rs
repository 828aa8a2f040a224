//! The io_uring backend of the log seam, driven by a real monoio runtime: appends, reads,
//! group commit across 64 concurrent tasks, and recovery through io_uring.

use std::path::PathBuf;
use std::rc::Rc;

use quark_persist::{Batch, FsyncPolicy, Log, LogConfig, Preallocate};
use quark_shard::rt::log_io::UringIo;

fn runtime() -> monoio::Runtime<monoio::IoUringDriver> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(256)
        .build()
        .expect("io_uring runtime (is io_uring available?)")
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("log_io-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::new(dir, 0);
    c.segment_bytes = 256 * 1024;
    c.fsync = FsyncPolicy::Always;
    c.preallocate = Preallocate::ZeroFill;
    c
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect()
}

#[test]
fn appends_reads_and_recovers_through_io_uring() {
    let dir = fresh_dir("basic");
    let cfg = config(&dir);
    let mut rt = runtime();
    let ranges = rt.block_on(async {
        let (log, report) = Log::open(UringIo, cfg.clone()).await.expect("open");
        assert_eq!(report.records, 0);
        let mut ranges = Vec::new();
        for i in 0..500u64 {
            let mut b = Batch::new();
            b.event(format!("k{}", i % 7).as_bytes(), &payload(i, 1000));
            ranges.push(log.append(&b).await.expect("append"));
        }
        assert!(log.stats().segment_count > 1, "rolled through io_uring");
        for (i, r) in ranges.iter().enumerate() {
            let rec = log.read(r.first).await.expect("read").expect("present");
            assert_eq!(rec.payload, payload(i as u64, 1000));
        }
        log.close().await.expect("close");
        ranges
    });
    rt.block_on(async {
        let (log, report) = Log::open(UringIo, cfg.clone()).await.expect("reopen");
        assert_eq!(report.records, 500);
        assert!(report.truncated.is_empty());
        let mut scan = log.scan(1);
        let mut n = 0u64;
        while let Some(rec) = scan.next().await.expect("scan") {
            assert_eq!(rec.lsn, ranges[n as usize].first);
            assert_eq!(rec.payload, payload(n, 1000));
            n += 1;
        }
        assert_eq!(n, 500);
        assert_eq!(log.key_lsns(b"k3").len(), 71);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_tasks_share_fdatasyncs() {
    let dir = fresh_dir("group");
    let cfg = config(&dir);
    let mut rt = runtime();
    rt.block_on(async {
        let (log, _) = Log::open(UringIo, cfg.clone()).await.expect("open");
        let log = Rc::new(log);
        let before = log.stats();
        let tasks: u64 = 64;
        let per_task: u64 = 20;
        let mut handles = Vec::new();
        for t in 0..tasks {
            let log = Rc::clone(&log);
            handles.push(monoio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..per_task {
                    let mut b = Batch::new();
                    b.event(format!("t{t}").as_bytes(), &payload(t * 1000 + i, 128));
                    got.push(log.append(&b).await.expect("append").first);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len() as u64, tasks * per_task, "distinct LSNs");
        let after = log.stats();
        let syncs = after.sync_count - before.sync_count;
        assert_eq!(
            after.synced_lsn, after.next_lsn,
            "everything acknowledged is synced"
        );
        assert!(
            syncs * 4 <= tasks * per_task,
            "{} appends took {syncs} fdatasyncs: group commit is not sharing",
            tasks * per_task
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Descriptors this process holds open on segment files (`*.seg`) of `dir`.
fn open_fds_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir) && p.extension().is_some_and(|x| x == "seg"))
        .count()
}

/// `direct_io = on` through io_uring: every flush is an aligned `O_DIRECT | O_DSYNC` write,
/// and every record reads back right after its append through the buffered descriptor (the
/// direct write invalidated the cached pages), and after reopening. Sealed segments close
/// their direct descriptor: one descriptor per sealed segment, two for the active one.
#[test]
fn direct_appends_read_back_at_once_through_io_uring() {
    let dir = fresh_dir("direct");
    let mut cfg = config(&dir);
    cfg.segment_bytes = 64 * 1024;
    cfg.segment_bytes_initial = 16 * 1024;
    cfg.direct_io = quark_persist::DirectIo::On;
    let sizes = [1usize, 60, 700, 4096, 5000, 13];
    let mut rt = runtime();
    let ranges = rt.block_on(async {
        let (log, _) = Log::open(UringIo, cfg.clone()).await.expect("open direct");
        let mut ranges = Vec::new();
        for i in 0..200u64 {
            let len = sizes[i as usize % sizes.len()];
            let mut b = Batch::new();
            b.event(format!("k{}", i % 7).as_bytes(), &payload(i, len));
            let r = log.append(&b).await.expect("append");
            let rec = log.read(r.first).await.expect("read").expect("present");
            assert_eq!(rec.payload, payload(i, len), "append {i} read back at once");
            ranges.push(r);
        }
        let s = log.stats();
        assert_eq!(s.direct_writes, s.flush_count, "every flush was direct");
        assert!(s.segment_count > 2, "rolled");
        assert_eq!(
            open_fds_in(&dir),
            s.segment_count + 1,
            "one descriptor per sealed segment, two for the active one"
        );
        for (i, r) in ranges.iter().enumerate() {
            let rec = log.read(r.first).await.expect("read").expect("present");
            assert_eq!(rec.payload, payload(i as u64, sizes[i % sizes.len()]));
        }
        log.close().await.expect("close");
        ranges
    });
    rt.block_on(async {
        let (log, report) = Log::open(UringIo, cfg.clone()).await.expect("reopen");
        assert!(report.truncated.is_empty());
        for (i, r) in ranges.iter().enumerate() {
            let rec = log.read(r.first).await.expect("read").expect("present");
            assert_eq!(rec.payload, payload(i as u64, sizes[i % sizes.len()]));
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
