//! Compaction keeps disk use bounded and preserves every live record and its order.

mod common;

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

#[test]
fn overwriting_the_same_keys_keeps_disk_use_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    // Durability per append is not what this test is about (compaction syncs before it
    // deletes anything); `Never` keeps it fast on a slow disk.
    cfg.fsync = quark_persist::FsyncPolicy::Never;
    let keys: Vec<Vec<u8>> = (0..8).map(|k| format!("actor-{k}").into_bytes()).collect();
    let mut latest = vec![Vec::new(); keys.len()];
    let mut max_segments = 0;
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for i in 0..20_000u64 {
            let k = (i % keys.len() as u64) as usize;
            let p = payload(i, 300);
            let mut b = Batch::new();
            b.event(&keys[k], b"delta").snapshot(&keys[k], &p);
            log.append(&b).await.expect("append");
            latest[k] = p;
            if i % 100 == 99 {
                log.compact(CompactionPolicy::default())
                    .await
                    .expect("compact");
                max_segments = max_segments.max(seg_files(&cfg.dir));
            }
        }
        // ~7 MB were written through 16 KiB segments; only a handful may remain.
        assert!(log.stats().next_lsn > 40_000);
        assert!(max_segments <= 4, "disk grew to {max_segments} segments");
        assert_eq!(log.stats().segment_count, seg_files(&cfg.dir));
        // Deleted segments were kept as spares and reused instead of zero-filling new ones.
        let stats = log.stats();
        assert!(stats.segments_recycled > 100, "{stats:?}");
        assert!(stats.spare_count <= cfg.recycle_segments_max);
        let all_files = std::fs::read_dir(&cfg.dir).expect("read_dir").count();
        assert!(
            all_files <= 4 + cfg.recycle_segments_max,
            "{all_files} files"
        );
        log.close().await.expect("close");
    });
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        // Stale batches in reused segments are neither data nor damage.
        assert!(report.truncated.is_empty(), "{report:?}");
        assert!(!report.spares.is_empty());
        for (k, key) in keys.iter().enumerate() {
            let lsns = log.key_lsns(key);
            assert_eq!(lsns.len(), 1, "only the latest snapshot is live");
            let r = log.read(lsns[0]).await.expect("read").expect("present");
            assert_eq!(r.kind, RecordKind::Snapshot);
            assert_eq!(r.payload, latest[k]);
        }
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
        while let Some(r) = scan.next().await.expect("scan") {
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
