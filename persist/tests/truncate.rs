//! Truncate records: retention below a bound, erasure, and both surviving recovery and
//! compaction.

use quark_persist::{
    block_on, AppendError, Batch, CompactionPolicy, FsyncPolicy, Log, LogConfig, NewRecord,
    Preallocate, RecordKind, StdIo,
};

fn config(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::new(dir.join("log"), 0);
    c.segment_bytes = 8 * 1024;
    c.preallocate = Preallocate::Fallocate;
    c.fsync = FsyncPolicy::Never;
    c
}

/// Payload of event `i` of `key`: recognisable and unique.
fn event_payload(key: &[u8], i: u64) -> Vec<u8> {
    let mut p = key.to_vec();
    p.extend_from_slice(format!("-event-{i:06}-").as_bytes());
    p.resize(200, b'.');
    p
}

async fn payloads_of(log: &Log<StdIo>, key: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for lsn in log.key_lsns(key) {
        let r = log
            .read(lsn)
            .await
            .expect("read")
            .expect("a listed LSN is readable");
        assert_ne!(r.kind, RecordKind::Truncate, "truncates are never listed");
        assert_eq!(r.key, key);
        out.push(r.payload);
    }
    out
}

#[test]
fn truncate_keeps_the_events_after_its_bound_through_reopen_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let mut bound = 0;
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for i in 0..100u64 {
            let mut b = Batch::new();
            b.event(b"A", &event_payload(b"A", i));
            b.event(b"B", &event_payload(b"B", i));
            let r = log.append(&b).await.expect("append");
            if i == 60 {
                bound = r.first; // A's event 60 is the first kept
            }
        }
        let mut b = Batch::new();
        b.truncate(b"A", bound);
        log.append(&b).await.expect("truncate");
        let want_a: Vec<_> = (60..100).map(|i| event_payload(b"A", i)).collect();
        let want_b: Vec<_> = (0..100).map(|i| event_payload(b"B", i)).collect();
        assert_eq!(payloads_of(&log, b"A").await, want_a);
        assert_eq!(payloads_of(&log, b"B").await, want_b);
        log.close().await.expect("close");
    });
    let before = block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        let want_a: Vec<_> = (60..100).map(|i| event_payload(b"A", i)).collect();
        assert_eq!(
            payloads_of(&log, b"A").await,
            want_a,
            "recovery rebuilds the floor"
        );
        // Drop B everywhere too so whole segments become garbage, then compact with copying.
        let mut b = Batch::new();
        b.truncate(b"B", u64::MAX);
        log.append(&b).await.expect("erase B");
        assert!(log.key_lsns(b"B").is_empty());
        // Seal the segment holding the truncates (compaction never touches the active one).
        let sealed = log.stats().segment_count;
        let mut i = 0;
        while log.stats().segment_count == sealed {
            let mut b = Batch::new();
            b.event(b"C", &event_payload(b"C", i));
            log.append(&b).await.expect("filler");
            i += 1;
        }
        let segments_before = log.stats().segment_count;
        let policy = CompactionPolicy {
            live_ratio_max: 1.0,
            copy_bytes_max: u64::MAX,
            ..CompactionPolicy::default()
        };
        let report = log.compact(policy).await.expect("compact");
        assert!(report.segments_deleted > 0, "{report:?}");
        assert!(log.stats().segment_count < segments_before);
        assert_eq!(payloads_of(&log, b"A").await.len(), 40);
        log.close().await.expect("close");
        segments_before
    });
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone())
            .await
            .expect("reopen after compaction");
        assert!(log.stats().segment_count < before);
        let want_a: Vec<_> = (60..100).map(|i| event_payload(b"A", i)).collect();
        assert_eq!(
            payloads_of(&log, b"A").await,
            want_a,
            "order and content kept"
        );
        assert!(log.key_lsns(b"B").is_empty(), "erased key stays erased");
        // Superseded records are gone from the log: a full scan finds none of them.
        let mut scan = log.scan(0);
        while let Some(r) = scan.next().await.expect("scan") {
            if r.key == b"A" && r.kind == RecordKind::Event {
                assert!(
                    r.payload >= event_payload(b"A", 60),
                    "superseded A survived"
                );
            }
            assert!(
                !(r.key == b"B" && r.kind == RecordKind::Event),
                "B survived"
            );
        }
        // The key can be written again after its erasure.
        let mut b = Batch::new();
        b.event(b"B", b"reborn");
        let r = log.append(&b).await.expect("append");
        assert_eq!(log.key_lsns(b"B"), vec![r.first]);
        log.close().await.expect("close");
    });
}

#[test]
fn a_malformed_truncate_is_refused_before_queueing() {
    let dir = tempfile::tempdir().expect("tempdir");
    block_on(async {
        let (log, _) = Log::open(StdIo, config(dir.path())).await.expect("open");
        let mut b = Batch::new();
        b.event(b"k", b"ok").push(NewRecord {
            kind: RecordKind::Truncate,
            key: b"k".to_vec(),
            payload: vec![0; 4],
            expires_at_ms: None,
        });
        match log.append(&b).await {
            Err(AppendError::BadTruncate {
                index: 1,
                payload_bytes: 4,
            }) => {}
            other => panic!("expected BadTruncate, got {other:?}"),
        }
        assert_eq!(log.stats().next_lsn, 1, "nothing was queued");
    });
}
