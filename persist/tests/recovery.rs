//! Recovery: torn tails, corruption before the tail under each mode, bad headers, missing
//! and unreadable files.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::payload;
use quark_persist::{
    block_on, Batch, Invalid, Log, LogConfig, OpenError, Preallocate, RecoverError, RecoveryMode,
    StdIo, FORMAT_VERSION, QUARANTINE_DIR, SEGMENT_HEADER_BYTES,
};

fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir.join("log"), 1);
    c.segment_bytes = 16 * 1024;
    c.preallocate = Preallocate::ZeroFill;
    c
}

fn batch(i: u64) -> Batch {
    let mut b = Batch::new();
    b.event(format!("k{}", i % 3).as_bytes(), &payload(i, 200));
    b.event(b"", &payload(i + 10_000, 50));
    b
}

/// Writes `n` batches; returns (segment paths in order, encoded size of one batch).
fn fill(cfg: &LogConfig, n: u64) -> (Vec<PathBuf>, u64) {
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for i in 0..n {
            log.append(&batch(i)).await.expect("append");
        }
        log.close().await.expect("close");
    });
    (segments(&cfg.dir), batch(0).encoded_bytes() as u64)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(bytes, offset).expect("write");
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).expect("open");
    let mut b = vec![0; len];
    f.read_exact_at(&mut b, offset).expect("read");
    b
}

fn all_payloads(cfg: &LogConfig) -> Vec<(u64, Vec<u8>)> {
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        let mut scan = log.scan(1);
        let mut out = Vec::new();
        while let Some(r) = scan.next().await.expect("scan") {
            out.push((r.lsn, r.payload));
        }
        out
    })
}

#[test]
fn torn_tail_is_truncated_reported_and_not_reported_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let (segs, bsize) = fill(&cfg, 10);
    let last = segs.last().expect("a segment");
    let before = all_payloads(&cfg);
    // Data end of the last segment: find the first zero header after the header.
    let per_seg = (cfg.segment_bytes - SEGMENT_HEADER_BYTES as u64) / bsize;
    let in_last = 10 - per_seg * (segs.len() as u64 - 1);
    let end = SEGMENT_HEADER_BYTES as u64 + in_last * bsize;
    // A torn write: the first 100 bytes of a copy of a real batch land at the end.
    let real = read_at(last, SEGMENT_HEADER_BYTES as u64, 100);
    write_at(last, end, &real);

    let mut strict = cfg.clone();
    strict.recovery = RecoveryMode::Strict;
    let err = block_on(Log::open(StdIo, strict))
        .err()
        .expect("strict refuses a torn tail");
    match err {
        OpenError::Recover(RecoverError::Corrupt { file, offset, .. }) => {
            assert_eq!(&file, last);
            assert_eq!(offset, end);
        }
        other => panic!("unexpected {other}"),
    }

    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("open truncates");
        assert_eq!(report.truncated.len(), 1, "{report:?}");
        let t = &report.truncated[0];
        assert_eq!(&t.file, last);
        assert_eq!(t.offset, end);
        assert_eq!(
            t.bytes, bsize,
            "the torn frame (as long as it claims) is zeroed"
        );
        let r = log
            .append(&batch(99))
            .await
            .expect("append after truncation");
        assert_eq!(r.first, 21);
        log.close().await.expect("close");
    });
    let after = all_payloads(&cfg);
    assert_eq!(&after[..before.len()], &before[..]);
    assert_eq!(after.len(), before.len() + 2);
    block_on(async {
        let (_log, report) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        assert!(report.truncated.is_empty());
    });
}

#[test]
fn garbage_after_the_end_is_ignored_but_unsynced_pieces_after_a_lost_header_are_zeroed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    let (segs, bsize) = fill(&cfg, 1);
    let last = segs.last().expect("segment");
    // Unverifiable garbage beyond the end marker (e.g. stale bytes): not data, not damage.
    write_at(last, 4096, &[0xAB; 512]);
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("open");
        assert!(report.truncated.is_empty());
        assert_eq!(report.records, 2);
        assert_eq!(log.stats().next_lsn, 3);
    });
    // A write of three batches under `Never` whose first sector was lost: the first frame's
    // header reads as zeros (an end), but verifiable batches continue after it. They were
    // never synced, so this is a torn tail and they are zeroed.
    let dir2 = tempfile::tempdir().expect("tempdir");
    cfg = config(dir2.path());
    cfg.fsync = quark_persist::FsyncPolicy::Never;
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for i in 0..3 {
            log.append(&batch(i)).await.expect("append");
        }
    });
    let seg = segments(&cfg.dir).pop().expect("segment");
    let second = SEGMENT_HEADER_BYTES as u64 + bsize;
    write_at(&seg, second, &[0u8; 8]);
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("open");
        assert_eq!(report.truncated.len(), 1, "{report:?}");
        assert_eq!(report.truncated[0].offset, second);
        assert_eq!(report.truncated[0].bytes, 2 * bsize);
        assert_eq!(report.records, 2);
        assert_eq!(log.stats().next_lsn, 3);
    });
    assert!(read_at(&seg, second, 2 * bsize as usize)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn corruption_before_the_tail_fails_open_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let (segs, bsize) = fill(&cfg, 120);
    assert!(segs.len() >= 3);
    // Flip one payload byte of the second batch of the first segment.
    let victim = &segs[0];
    let off = SEGMENT_HEADER_BYTES as u64 + bsize + 100;
    let mut b = read_at(victim, off, 1);
    b[0] ^= 0x40;
    write_at(victim, off, &b);
    let err = block_on(Log::open(StdIo, cfg.clone()))
        .err()
        .expect("refused");
    let msg = err.to_string();
    match err {
        OpenError::Recover(RecoverError::Corrupt {
            file,
            offset,
            reason,
            ..
        }) => {
            assert_eq!(&file, victim);
            assert_eq!(offset, SEGMENT_HEADER_BYTES as u64 + bsize);
            assert_eq!(reason, Invalid::Checksum);
            assert!(msg.contains(&victim.display().to_string()), "{msg}");
            assert!(msg.contains(&offset.to_string()), "{msg}");
        }
        other => panic!("unexpected {other}"),
    }
    // Damage early in the last segment, with good batches after it, is not a torn tail.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let cfg2 = config(dir2.path());
    let (segs2, bsize2) = fill(&cfg2, 3);
    assert_eq!(segs2.len(), 1);
    let off = SEGMENT_HEADER_BYTES as u64 + bsize2 / 2;
    write_at(&segs2[0], off, &[0xFF; 8]);
    let err = block_on(Log::open(StdIo, cfg2)).err().expect("refused");
    assert!(
        matches!(
            err,
            OpenError::Recover(RecoverError::Corrupt { offset: 64, .. })
        ),
        "{err}"
    );
}

#[test]
fn quarantine_moves_the_damaged_segment_aside_and_reports_the_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    let (segs, bsize) = fill(&cfg, 120);
    let before = all_payloads(&cfg);
    let victim = segs[1].clone();
    write_at(
        &victim,
        SEGMENT_HEADER_BYTES as u64 + bsize + 8,
        &[0x55; 16],
    );
    cfg.recovery = RecoveryMode::Quarantine;
    let per_seg = (cfg.segment_bytes - SEGMENT_HEADER_BYTES as u64) / bsize;
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone())
            .await
            .expect("quarantine opens");
        assert_eq!(report.quarantined.len(), 1);
        let q = &report.quarantined[0];
        assert_eq!(q.file, victim);
        assert!(q.moved_to.starts_with(cfg.dir.join(QUARANTINE_DIR)));
        assert!(q.moved_to.exists() && !victim.exists());
        let lost_first = 1 + per_seg * 2;
        assert_eq!(q.lost_lsns, (lost_first, lost_first + per_seg * 2));
        // Records of other segments are intact; LSNs are not reused.
        let mut scan = log.scan(1);
        let mut got = Vec::new();
        while let Some(r) = scan.next().await.expect("scan") {
            got.push((r.lsn, r.payload));
        }
        let want: Vec<_> = before
            .iter()
            .filter(|(l, _)| *l < q.lost_lsns.0 || *l >= q.lost_lsns.1)
            .cloned()
            .collect();
        assert_eq!(got, want);
        let r = log.append(&batch(1)).await.expect("append");
        assert_eq!(r.first, 241);
    });
}

#[test]
fn bad_magic_newer_version_shard_mismatch_and_unreadable_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let (segs, _) = fill(&cfg, 1);
    let seg = &segs[0];
    let header = read_at(seg, 0, SEGMENT_HEADER_BYTES);

    write_at(seg, 0, b"NOTALOG!");
    let err = block_on(Log::open(StdIo, cfg.clone()))
        .err()
        .expect("bad magic");
    assert!(
        matches!(err, OpenError::Recover(RecoverError::BadMagic { ref file, .. }) if file == seg),
        "{err}"
    );

    let mut newer = header.clone();
    newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32c::crc32c(&newer[..60]);
    newer[60..64].copy_from_slice(&crc.to_le_bytes());
    write_at(seg, 0, &newer);
    let err = block_on(Log::open(StdIo, cfg.clone()))
        .err()
        .expect("newer version");
    assert!(
        matches!(err, OpenError::Recover(RecoverError::NewerVersion { found, .. }) if found == FORMAT_VERSION + 1),
        "{err}"
    );

    write_at(seg, 0, &header);
    let mut other_shard = cfg.clone();
    other_shard.shard_id = 2;
    let err = block_on(Log::open(StdIo, other_shard))
        .err()
        .expect("shard mismatch");
    assert!(
        matches!(
            err,
            OpenError::Recover(RecoverError::ShardMismatch {
                found: 1,
                expected: 2,
                ..
            })
        ),
        "{err}"
    );

    // A "segment" that cannot be opened for I/O (a directory) is an error, not a skip.
    let bogus = cfg.dir.join(format!("{:020}.seg", 500));
    std::fs::create_dir(&bogus).expect("mkdir");
    let err = block_on(Log::open(StdIo, cfg.clone()))
        .err()
        .expect("unreadable");
    assert!(
        matches!(err, OpenError::Recover(RecoverError::CannotOpen { ref file, .. }) if *file == bogus),
        "{err}"
    );
    // The open (read-write) failed: the message says so, and does not claim a read failed.
    let text = err.to_string();
    assert!(
        text.contains("cannot open") && text.contains("for reading and writing"),
        "{text}"
    );
    assert!(!text.contains("cannot read"), "{text}");
}

#[test]
fn missing_directory_is_created_and_leftover_temp_files_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.dir = dir.path().join("a/b/c");
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("open creates");
        assert_eq!(report.segments, 0);
        assert_eq!(log.stats().segment_count, 1);
    });
    let tmp = cfg.dir.join(format!("{:020}.seg.tmp", 77));
    std::fs::write(&tmp, b"partial").expect("write");
    block_on(async {
        let (_log, report) = Log::open(StdIo, cfg.clone()).await.expect("open");
        assert_eq!(report.removed_incomplete, vec![tmp.clone()]);
    });
    assert!(!tmp.exists());
}

#[test]
fn damage_followed_only_by_unsynced_batches_is_a_torn_tail() {
    // Under `Never` nothing after the segment header was synced, so every batch records
    // synced_before = 64: damage in the middle of the tail with intact batches after it is an
    // interrupted write (power loss reordering sectors), not corruption of durable data.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.fsync = quark_persist::FsyncPolicy::Never;
    let bsize = batch(0).encoded_bytes() as u64;
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for i in 0..3 {
            log.append(&batch(i)).await.expect("append");
        }
        // Drop without close: nothing synced beyond the header.
    });
    let seg = segments(&cfg.dir).pop().expect("segment");
    let second = SEGMENT_HEADER_BYTES as u64 + bsize;
    write_at(&seg, second + 30, &[0xEE; 4]);
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("tail truncated");
        assert_eq!(report.truncated.len(), 1);
        assert_eq!(report.truncated[0].offset, second);
        assert_eq!(report.records, 2, "only the first batch survives");
        assert_eq!(log.stats().next_lsn, 3);
    });
    // The same damage under `Always` (the damaged batch had been synced) is corruption.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let cfg2 = config(dir2.path());
    let (segs, _) = fill(&cfg2, 3);
    write_at(&segs[0], second + 30, &[0xEE; 4]);
    let err = block_on(Log::open(StdIo, cfg2)).err().expect("refused");
    assert!(
        matches!(err, OpenError::Recover(RecoverError::Corrupt { offset, .. }) if offset == second),
        "{err}"
    );
}

#[test]
fn torn_tail_in_a_reused_segment_is_truncated_and_stale_bytes_stay_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.fsync = quark_persist::FsyncPolicy::Never;
    let mut last_first = 0;
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        // Overwrite one key until segments are compacted into spares and reused.
        let mut i = 0;
        while log.stats().segments_recycled < 3 {
            let mut b = Batch::new();
            b.snapshot(b"k", &payload(i, 300));
            last_first = log.append(&b).await.expect("append").first;
            i += 1;
            if i % 20 == 0 {
                log.compact(quark_persist::CompactionPolicy::default())
                    .await
                    .expect("compact");
            }
        }
        // Not closed: the last batch's bytes may be torn.
    });
    // Tear the last batch of the active (reused) segment: flip bytes inside its payload.
    let seg = segments(&cfg.dir).pop().expect("segment");
    let bytes = std::fs::read(&seg).expect("read");
    let lsn_bytes = last_first.to_le_bytes();
    let at = (0..bytes.len() - 8)
        .step_by(8)
        .find(|&o| bytes[o + 8..o + 16] == lsn_bytes && o >= SEGMENT_HEADER_BYTES)
        .expect("last batch found by its first_lsn");
    write_at(&seg, at as u64 + 100, &[0x42; 4]);
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("open");
        assert_eq!(report.truncated.len(), 1, "{report:?}");
        assert_eq!(report.truncated[0].offset, at as u64);
        assert_eq!(log.stats().next_lsn, last_first);
        let lsns = log.key_lsns(b"k");
        assert_eq!(lsns.len(), 1);
        assert_eq!(
            lsns[0],
            last_first - 1,
            "the previous snapshot is the latest again"
        );
    });
    block_on(async {
        let (_log, report) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        assert!(report.truncated.is_empty(), "{report:?}");
    });
}
