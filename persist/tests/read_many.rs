//! read_many returns exactly what read returns, in the caller's order, with few reads.

use quark_persist::{
    block_on, Batch, CompactionPolicy, FsyncPolicy, Log, LogConfig, Preallocate, ReadError, StdIo,
};

fn config(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::new(dir.join("log"), 0);
    c.segment_bytes = 64 * 1024;
    c.preallocate = Preallocate::Fallocate;
    c.fsync = FsyncPolicy::Never;
    c
}

#[test]
fn read_many_matches_read_across_segments_batches_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for i in 0..3000u64 {
            let mut b = Batch::new();
            // Several records of the key per batch sometimes, other keys in between.
            for j in 0..(i % 3) + 1 {
                b.event(b"K", format!("k-{i}-{j}").as_bytes());
            }
            if i % 5 == 0 {
                b.snapshot(b"X", &vec![b'x'; 500]); // garbage for compaction
            }
            log.append(&b).await.expect("append");
        }
        let policy = CompactionPolicy {
            live_ratio_max: 0.9,
            ..CompactionPolicy::default()
        };
        log.compact(policy).await.expect("compact");
        let lsns = log.key_lsns(b"K");
        assert_eq!(lsns.len(), 6000);
        assert!(log.stats().segment_count > 3, "spans segments");
        let many = log.read_many(&lsns).await.expect("read_many");
        assert_eq!(many.len(), lsns.len());
        let mut want = Vec::new();
        for i in 0..3000u64 {
            for j in 0..(i % 3) + 1 {
                want.push(format!("k-{i}-{j}").into_bytes());
            }
        }
        let payloads: Vec<Vec<u8>> = many.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(payloads, want, "every record, in logical order");
        for (lsn, r) in lsns.iter().zip(&many).step_by(37) {
            let one = log.read(*lsn).await.expect("read").expect("present");
            assert_eq!(&one, r);
        }
        // Caller's order, repeats, a subset.
        let picked = vec![lsns[5000], lsns[3], lsns[5000], lsns[4999]];
        let got = log.read_many(&picked).await.expect("read_many");
        let got_lsns: Vec<u64> = got.iter().map(|r| r.lsn).collect();
        assert_eq!(got_lsns, picked);
        assert_eq!(got[0], got[2]);
        assert!(log.read_many(&[]).await.expect("empty").is_empty());
        // A missing LSN is an error naming it, never skipped.
        let next = log.stats().next_lsn;
        match log.read_many(&[lsns[0], next + 5]).await {
            Err(ReadError::NotFound { lsn }) => assert_eq!(lsn, next + 5),
            other => panic!("expected NotFound, got {other:?}"),
        }
        log.close().await.expect("close");
    });
}
