//! Compaction keeps disk use bounded and preserves every live record and its order.

mod common;

use std::collections::HashMap;

use common::{payload, YieldIo};
use quark_persist::{
    block_on, Batch, CompactionPolicy, Log, LogConfig, NewRecord, Preallocate, RecordKind, StdIo,
    FLAG_FORWARDED,
};

fn config(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::new(dir.join("log"), 0);
    c.segment_bytes = 16 * 1024;
    c.preallocate = Preallocate::Fallocate;
    c
}

fn seg_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .filter(|e| {
            e.as_ref()
                .expect("entry")
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
}

/// What was appended at each LSN: key, kind and payload.
type Written = HashMap<u64, (Vec<u8>, RecordKind, Vec<u8>)>;

/// Scans the whole log and checks that it returns records in strictly increasing LSN order,
/// each exactly as it was appended (at its `origin_lsn`, for a copy made by compaction). A
/// stale batch left in a recycled segment and taken for data fails this: it repeats an LSN
/// (or goes back), and its payload carries another round's nonce.
async fn assert_scan_matches<I: quark_persist::LogIo>(log: &Log<I>, written: &Written) -> usize {
    let mut scan = log.scan(1);
    let mut prev = 0;
    let mut n = 0;
    while let Some(r) = scan.next().await.expect("scan") {
        assert!(
            r.lsn > prev,
            "scan went from LSN {prev} to {} (stale or repeated record)",
            r.lsn
        );
        prev = r.lsn;
        let origin = if r.flags & FLAG_FORWARDED != 0 {
            r.origin_lsn
        } else {
            r.lsn
        };
        let Some((key, kind, payload)) = written.get(&origin) else {
            panic!("LSN {} (origin {origin}) was never appended", r.lsn);
        };
        assert!(
            &r.key == key && r.kind == *kind && &r.payload == payload,
            "LSN {} (origin {origin}) is not what was appended there",
            r.lsn
        );
        n += 1;
    }
    n
}

#[test]
fn overwriting_the_same_keys_keeps_disk_use_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    // Durability per append is not what this test is about (compaction syncs before it
    // deletes anything); `Never` keeps it fast on a slow disk.
    cfg.fsync = quark_persist::FsyncPolicy::Never;
    let keys: Vec<Vec<u8>> = (0..8).map(|k| format!("actor-{k}").into_bytes()).collect();
    let mut latest = vec![Vec::new(); keys.len()];
    let mut written = Written::new();
    let mut max_segments = 0;
    let mut recycled = 0;
    let mut next_lsn = 1;
    // Rounds of (open, overwrite, compact, close): each round reopens a log whose spare
    // segments hold the bytes of earlier rounds. Every payload carries its round's nonce, so a
    // stale record taken for data cannot pass for a current one.
    const ROUNDS: u64 = 3;
    const PER_ROUND: u64 = 7_000;
    for round in 0..ROUNDS {
        let nonce = 0x6e6f_6e63_6500_0000 | (round + 1) << 16;
        block_on(async {
            let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("open");
            // Stale batches in reused segments are neither data nor damage.
            assert!(report.truncated.is_empty(), "round {round}: {report:?}");
            assert_eq!(
                log.stats().next_lsn,
                next_lsn,
                "round {round}: LSNs continue"
            );
            if round > 0 {
                assert!(!report.spares.is_empty(), "round {round}: {report:?}");
                assert_scan_matches(&log, &written).await;
            }
            for j in 0..PER_ROUND {
                let i = round * PER_ROUND + j;
                let k = (i % keys.len() as u64) as usize;
                let p = payload(nonce ^ i, 300);
                let mut b = Batch::new();
                b.event(&keys[k], b"delta").snapshot(&keys[k], &p);
                let lsns = log.append(&b).await.expect("append");
                assert_eq!(lsns.end - lsns.first, 2);
                written.insert(
                    lsns.first,
                    (keys[k].clone(), RecordKind::Event, b"delta".to_vec()),
                );
                written.insert(
                    lsns.first + 1,
                    (keys[k].clone(), RecordKind::Snapshot, p.clone()),
                );
                latest[k] = p;
                if j % 100 == 99 {
                    log.compact(CompactionPolicy::default())
                        .await
                        .expect("compact");
                    max_segments = max_segments.max(seg_files(&cfg.dir));
                }
            }
            assert_eq!(log.stats().segment_count, seg_files(&cfg.dir));
            // Deleted segments were kept as spares and reused instead of zero-filling new ones.
            let stats = log.stats();
            recycled += stats.segments_recycled;
            assert!(stats.spare_count <= cfg.recycle_segments_max);
            let all_files = std::fs::read_dir(&cfg.dir).expect("read_dir").count();
            assert!(
                all_files <= 4 + cfg.recycle_segments_max,
                "{all_files} files"
            );
            assert_scan_matches(&log, &written).await;
            next_lsn = log.stats().next_lsn;
            log.close().await.expect("close");
        });
    }
    // ~7 MB were written through 16 KiB segments; only a handful may remain.
    assert_eq!(written.len() as u64, 2 * ROUNDS * PER_ROUND);
    assert!(next_lsn > 2 * ROUNDS * PER_ROUND, "{next_lsn}");
    assert!(max_segments <= 4, "disk grew to {max_segments} segments");
    assert!(recycled > 100, "{recycled} segments recycled");
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        assert!(report.truncated.is_empty(), "{report:?}");
        assert!(!report.spares.is_empty());
        // Reopening continues the LSNs where the last round stopped (compaction's copies took
        // some too): never back into LSNs that stale bytes could carry.
        assert_eq!(log.stats().next_lsn, next_lsn);
        for (k, key) in keys.iter().enumerate() {
            let lsns = log.key_lsns(key);
            assert_eq!(lsns.len(), 1, "only the latest snapshot is live");
            let r = log.read(lsns[0]).await.expect("read").expect("present");
            assert_eq!(r.kind, RecordKind::Snapshot);
            assert_eq!(r.payload, latest[k]);
        }
        let scanned = assert_scan_matches(&log, &written).await;
        assert!(scanned >= keys.len(), "{scanned} records scanned");
    });
}

#[test]
fn live_records_are_copied_forward_in_logical_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        let mut first = Batch::new();
        first
            .event(b"keep", b"e1")
            .event(b"keep", b"e2")
            .event(b"", b"unkeyed");
        let r0 = log.append(&first).await.expect("append");
        for i in 0..2_000u64 {
            let mut b = Batch::new();
            b.snapshot(b"churn", &payload(i, 200));
            log.append(&b).await.expect("append");
            if i == 1000 {
                let mut b = Batch::new();
                b.event(b"keep", b"e3");
                log.append(&b).await.expect("append");
            }
        }
        let report = log
            .compact(CompactionPolicy::default())
            .await
            .expect("compact");
        assert!(report.records_copied >= 3, "{report:?}");
        assert!(report.segments_deleted > 10, "{report:?}");
        let lsns = log.key_lsns(b"keep");
        assert_eq!(lsns.len(), 3);
        let mut payloads = Vec::new();
        for l in &lsns {
            payloads.push(log.read(*l).await.expect("read").expect("present"));
        }
        assert_eq!(
            payloads
                .iter()
                .map(|r| r.payload.as_slice())
                .collect::<Vec<_>>(),
            vec![&b"e1"[..], b"e2", b"e3"]
        );
        assert_eq!(payloads[0].flags & FLAG_FORWARDED, FLAG_FORWARDED);
        assert_eq!(payloads[0].origin_lsn, r0.first);
        assert_ne!(payloads[0].lsn, r0.first);
        assert_eq!(
            log.read(r0.first).await.expect("read"),
            None,
            "old copy gone"
        );
        log.close().await.expect("close");
    });
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        let lsns = log.key_lsns(b"keep");
        assert_eq!(lsns.len(), 3);
        let third = log.read(lsns[2]).await.expect("read").expect("present");
        assert_eq!(third.payload, b"e3");
        // The unkeyed record was copied too (never superseded).
        let mut scan = log.scan(1);
        let mut unkeyed = 0;
        let mut prev = 0;
        while let Some(r) = scan.next().await.expect("scan") {
            assert!(r.lsn > prev, "scan went from LSN {prev} to {}", r.lsn);
            prev = r.lsn;
            if r.key.is_empty() {
                assert_eq!(r.payload, b"unkeyed");
                unkeyed += 1;
            }
        }
        assert_eq!(unkeyed, 1);
    });
}

#[test]
fn expired_segments_are_deleted_by_the_injected_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let io = YieldIo::default();
    io.knobs.now_ms.set(1_000);
    let knobs = io.knobs.clone();
    block_on(async {
        let (log, _) = Log::open(io, cfg.clone()).await.expect("open");
        for i in 0..200u64 {
            let mut b = Batch::new();
            b.push(NewRecord {
                kind: RecordKind::Event,
                key: format!("job-{i}").into_bytes(),
                payload: payload(i, 200),
                expires_at_ms: Some(5_000),
            });
            log.append(&b).await.expect("append");
        }
        let segs = log.stats().segment_count;
        assert!(segs > 2);
        let none = log
            .compact(CompactionPolicy {
                live_ratio_max: 0.0,
                ..Default::default()
            })
            .await
            .expect("compact");
        assert_eq!(none.segments_deleted, 0, "nothing expired yet");
        knobs.now_ms.set(5_000);
        let r = log
            .compact(CompactionPolicy::default())
            .await
            .expect("compact");
        assert_eq!(r.segments_deleted, segs - 1, "all sealed segments expired");
        assert_eq!(r.records_copied, 0);
    });
}
