//! Data-safety holes of recovery: a shortened or emptied segment, a sealed segment cut at a
//! batch boundary, a whole segment lost from the middle or the start of the log. Each must
//! refuse to open (naming the file and what is missing) unless the operator accepts the loss,
//! and an accepted loss never makes LSNs be reused. Removals by compaction and scrub are not
//! losses.

mod common;

use std::path::{Path, PathBuf};

use common::payload;
use quark_persist::{
    block_on, Batch, CompactionPolicy, Log, LogConfig, OpenError, Preallocate, RecoverError,
    RecoveryMode, StdIo, GAPS_FILE, QUARANTINE_DIR, SEGMENT_HEADER_BYTES,
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
    b
}

/// Appends `n` batches; returns the segment paths in order and the last acknowledged LSN.
fn fill(cfg: &LogConfig, n: u64) -> (Vec<PathBuf>, u64) {
    let last = block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        let mut last = 0;
        for i in 0..n {
            last = log.append(&batch(i)).await.expect("append").end - 1;
        }
        log.close().await.expect("close");
        last
    });
    (segments(&cfg.dir), last)
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

fn base_of(path: &Path) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("segment name")
}

fn open_err(cfg: &LogConfig) -> OpenError {
    match block_on(Log::open(StdIo, cfg.clone())) {
        Ok(_) => panic!("open must refuse"),
        Err(e) => e,
    }
}

/// Every (lsn, payload) readable by a scan from LSN 1.
fn all_records(cfg: &LogConfig) -> Vec<(u64, Vec<u8>)> {
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

/// Offsets of the batch boundaries of a segment written by `fill` (one record per batch).
fn boundaries(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).expect("read");
    let mut at = SEGMENT_HEADER_BYTES;
    let mut out = vec![at as u64];
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        if len == 0 {
            break;
        }
        at += len as usize;
        out.push(at as u64);
    }
    out
}

#[test]
fn a_shortened_last_segment_is_refused_then_accepted_on_request_without_reusing_lsns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let (segs, last_acked) = fill(&cfg, 200);
    let last = segs.last().expect("segments");
    let len = std::fs::metadata(last).expect("meta").len();
    assert_eq!(len, cfg.segment_bytes);
    let batches_in_last = boundaries(last).len() as u64 - 1;
    assert!(
        batches_in_last > 10,
        "the cut must lose acknowledged records"
    );
    // Cut in the middle of the data: what an fs losing the file's tail leaves.
    let cut = boundaries(last)[3] + 100;
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .and_then(|f| f.set_len(cut))
        .expect("truncate");

    let err = open_err(&cfg);
    match &err {
        OpenError::Recover(RecoverError::ShortSegment {
            file,
            expected_bytes,
            actual_bytes,
        }) => {
            assert_eq!(file, last);
            assert_eq!(*expected_bytes, cfg.segment_bytes);
            assert_eq!(*actual_bytes, cut);
        }
        other => panic!("expected ShortSegment, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("accept_short_segments"), "{text}");
    assert!(text.contains(&last.display().to_string()), "{text}");

    // The operator accepts the loss for one open.
    let mut accept = cfg.clone();
    accept.accept_short_segments = true;
    let new = block_on(async {
        let (log, report) = Log::open(StdIo, accept.clone()).await.expect("accepted");
        assert_eq!(report.short_segments.len(), 1, "{report:?}");
        let s = &report.short_segments[0];
        assert_eq!(s.file, *last);
        assert_eq!(s.expected_bytes, Some(cfg.segment_bytes));
        assert_eq!(s.actual_bytes, cut);
        let kept_end = base_of(last) + 3;
        assert_eq!(
            s.lost_lsns.0, kept_end,
            "three batches before the cut are kept"
        );
        assert!(
            s.lost_lsns.1 > last_acked,
            "the lost range covers every acknowledged LSN"
        );
        let r = log
            .append(&batch(9_999))
            .await
            .expect("append after accept");
        assert!(
            r.first > last_acked,
            "LSN {} reused (last acknowledged {last_acked})",
            r.first
        );
        log.close().await.expect("close");
        r.first
    });
    // The accepted loss is recorded: a normal open succeeds and keeps what was kept.
    let recs = all_records(&cfg);
    assert!(recs.iter().any(|(l, _)| *l == new));
    assert!(recs.iter().any(|(l, _)| *l == base_of(last) + 2));
    assert!(!recs.iter().any(|(l, _)| *l == base_of(last) + 3));
}

#[test]
fn an_emptied_last_segment_is_refused_and_its_lsns_are_never_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let (segs, last_acked) = fill(&cfg, 200);
    let last = segs.last().expect("segments").clone();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .and_then(|f| f.set_len(0))
        .expect("truncate to 0");

    let err = open_err(&cfg);
    assert!(
        matches!(&err, OpenError::Recover(RecoverError::NoHeader { file, actual_bytes: 0 }) if *file == last),
        "{err}"
    );
    assert!(err.to_string().contains("accept_short_segments"), "{err}");
    assert!(last.exists(), "a refused open changes nothing");

    let mut accept = cfg.clone();
    accept.accept_short_segments = true;
    block_on(async {
        let (log, report) = Log::open(StdIo, accept).await.expect("accepted");
        let s = &report.short_segments[0];
        assert_eq!(s.file, last);
        assert_eq!(s.expected_bytes, None);
        assert_eq!(
            s.moved_to.as_deref(),
            Some(
                cfg.dir
                    .join(QUARANTINE_DIR)
                    .join(last.file_name().expect("name"))
                    .as_path()
            )
        );
        let r = log.append(&batch(1)).await.expect("append");
        assert!(r.first > last_acked, "LSN {} reused", r.first);
        log.close().await.expect("close");
    });
    // Recorded: a normal open works and LSNs still go up.
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        let r = log.append(&batch(2)).await.expect("append");
        assert!(r.first > last_acked);
    });
}

#[test]
fn a_sealed_segment_cut_at_a_batch_boundary_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let (segs, _) = fill(&cfg, 200);
    assert!(segs.len() >= 4);
    let victim = &segs[1];
    let b = boundaries(victim);
    let cut = b[b.len() / 2];

    // (a) The file is shorter: its header says how big it was created.
    let original = std::fs::read(victim).expect("read");
    std::fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .and_then(|f| f.set_len(cut))
        .expect("truncate");
    let err = open_err(&cfg);
    assert!(
        matches!(&err, OpenError::Recover(RecoverError::ShortSegment { file, actual_bytes, .. }) if file == victim && *actual_bytes == cut),
        "{err}"
    );

    // (b) Same length, but zeros from the boundary on: the scan ends cleanly there, and the
    // next segment's first LSN shows the records that are missing.
    let mut zeroed = original.clone();
    zeroed[cut as usize..].fill(0);
    std::fs::write(victim, &zeroed).expect("write");
    let kept = base_of(victim) + (b.len() / 2) as u64;
    let err = open_err(&cfg);
    match &err {
        OpenError::Recover(RecoverError::MissingLsns {
            first,
            end,
            before,
            file,
        }) => {
            assert_eq!(*first, kept);
            assert_eq!(*end, base_of(&segs[2]));
            assert_eq!(before.as_deref(), Some(victim.as_path()));
            assert_eq!(file, &segs[2]);
        }
        other => panic!("expected MissingLsns, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("[{kept}, {})", base_of(&segs[2]))) && text.contains("quarantine"),
        "{text}"
    );
    // The untouched file opens again.
    std::fs::write(victim, &original).expect("restore");
    assert_eq!(all_records(&cfg).len(), 200);
}

#[test]
fn a_lost_segment_is_refused_and_quarantine_reports_and_records_the_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let (segs, last_acked) = fill(&cfg, 200);
    assert!(segs.len() >= 4);

    // The first segment lost: the hole is before the first surviving one.
    let first = std::fs::read(&segs[0]).expect("read");
    std::fs::remove_file(&segs[0]).expect("rm");
    let err = open_err(&cfg);
    assert!(
        matches!(&err, OpenError::Recover(RecoverError::MissingLsns { first: 1, end, before: None, file }) if *end == base_of(&segs[1]) && *file == segs[1]),
        "{err}"
    );
    std::fs::write(&segs[0], first).expect("restore");

    // A middle segment lost.
    std::fs::remove_file(&segs[2]).expect("rm");
    let (lost_first, lost_end) = (base_of(&segs[2]), base_of(&segs[3]));
    let err = open_err(&cfg);
    assert!(
        matches!(&err, OpenError::Recover(RecoverError::MissingLsns { first, end, before: Some(b), file })
            if *first == lost_first && *end == lost_end && *b == segs[1] && *file == segs[3]),
        "{err}"
    );
    let mut strict = cfg.clone();
    strict.recovery = RecoveryMode::Strict;
    assert!(matches!(
        open_err(&strict),
        OpenError::Recover(RecoverError::MissingLsns { .. })
    ));

    // Quarantine accepts it, reports it, records it.
    let mut q = cfg.clone();
    q.recovery = RecoveryMode::Quarantine;
    block_on(async {
        let (log, report) = Log::open(StdIo, q).await.expect("quarantine opens");
        assert_eq!(report.missing.len(), 1, "{report:?}");
        assert_eq!(report.missing[0].lsns, (lost_first, lost_end));
        assert_eq!(report.missing[0].before.as_deref(), Some(segs[1].as_path()));
        assert_eq!(report.missing[0].file, segs[3]);
        let r = log.append(&batch(7)).await.expect("append");
        assert_eq!(r.first, last_acked + 1);
        log.close().await.expect("close");
    });
    // Recorded: the default mode opens now, without the lost records.
    let recs = all_records(&cfg);
    assert_eq!(recs.len() as u64, 200 - (lost_end - lost_first) + 1);
    assert!(!recs.iter().any(|(l, _)| (lost_first..lost_end).contains(l)));
}

#[test]
fn segments_removed_by_compaction_and_scrub_are_not_taken_for_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for round in 0..6u64 {
            for i in 0..150u64 {
                let mut b = Batch::new();
                // Key 0 is written once and stays live in the first segment; the others are
                // overwritten so the segments after it become garbage.
                if round == 0 && i == 0 {
                    b.snapshot(b"pinned", &payload(1, 100));
                } else {
                    b.snapshot(format!("k{}", i % 4).as_bytes(), &payload(i, 200));
                }
                log.append(&b).await.expect("append");
            }
            // No copying forward: the first segment (pinned) stays, garbage after it goes.
            let policy = CompactionPolicy {
                live_ratio_max: 0.0,
                ..CompactionPolicy::default()
            };
            log.compact(policy).await.expect("compact");
        }
        log.close().await.expect("close");
    });
    let segs = segments(&cfg.dir);
    let bases: Vec<u64> = segs.iter().map(|p| base_of(p)).collect();
    assert_eq!(bases[0], 1, "the pinned first segment stays");
    assert!(
        bases.windows(2).any(|w| w[1] - w[0] > 200),
        "compaction left holes between segments: {bases:?}"
    );
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone())
            .await
            .expect("reopen after compaction");
        assert!(report.missing.is_empty() && report.quarantined.is_empty());
        // Scrub rewrites and unlinks segments, the pinned one included.
        let mut b = Batch::new();
        b.truncate(b"k1", u64::MAX);
        log.append(&b).await.expect("truncate");
        log.compact(CompactionPolicy::default())
            .await
            .expect("compact");
        log.scrub().await.expect("scrub");
        log.close().await.expect("close");
    });
    let segs = segments(&cfg.dir);
    assert!(base_of(&segs[0]) > 1, "{segs:?}");
    assert!(cfg.dir.join(GAPS_FILE).exists());
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        assert!(report.missing.is_empty() && report.quarantined.is_empty());
        assert_eq!(log.key_lsns(b"pinned").len(), 1);
        log.close().await.expect("close");
    });
    // A surviving segment lost now is still detected.
    let victim = &segs[0];
    std::fs::remove_file(victim).expect("rm");
    assert!(matches!(
        open_err(&cfg),
        OpenError::Recover(RecoverError::MissingLsns { .. })
    ));
}

#[test]
fn a_log_without_the_gap_record_opens_only_if_it_predates_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let (segs, _) = fill(&cfg, 120);
    let gaps = cfg.dir.join(GAPS_FILE);
    std::fs::remove_file(&gaps).expect("rm lsn-gaps");
    // Written by this build (format version 2): the record is required.
    let err = open_err(&cfg);
    assert!(
        matches!(&err, OpenError::Recover(RecoverError::GapsMissing { file, .. }) if *file == gaps),
        "{err}"
    );
    // A log of format version 1 (before the record existed), with a hole its compaction left:
    // it opens, and the record starts from there.
    for s in &segs {
        let mut h = std::fs::read(s).expect("read");
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(s, h).expect("write");
    }
    std::fs::remove_file(&segs[1]).expect("rm");
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("v1 log opens");
        assert!(report.missing.is_empty());
        log.close().await.expect("close");
    });
    assert!(gaps.exists());
}

#[test]
fn a_new_log_starts_with_a_small_segment_and_doubles_up_to_segment_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Defaults: 64 MiB segments, the first one 1 MiB.
    let cfg = LogConfig::new(dir.path().join("log"), 0);
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for i in 0..14 {
            log.append(&batch(i)).await.expect("append");
        }
        assert_eq!(log.stats().disk_bytes, 1 << 20);
        log.close().await.expect("close");
    });
    let on_disk: u64 = std::fs::read_dir(&cfg.dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    assert!(on_disk < (1 << 20) + 4096, "{on_disk} bytes for 14 events");

    // Sizes double per new segment up to segment_bytes; a batch larger than the next size
    // gets a segment big enough for it.
    let mut cfg = LogConfig::new(dir.path().join("log2"), 0);
    cfg.segment_bytes = 256 * 1024;
    cfg.segment_bytes_initial = 16 * 1024;
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for i in 0..700 {
            log.append(&batch(i)).await.expect("append");
        }
        let mut big = Batch::new();
        big.event(b"big", &payload(3, 200 * 1024));
        let r = log
            .append(&big)
            .await
            .expect("a batch larger than the next size fits");
        assert_eq!(
            log.read(r.first)
                .await
                .expect("read")
                .expect("record")
                .payload
                .len(),
            200 * 1024
        );
        log.close().await.expect("close");
    });
    let sizes: Vec<u64> = segments(&cfg.dir)
        .iter()
        .map(|p| std::fs::metadata(p).expect("meta").len())
        .collect();
    assert_eq!(
        &sizes[..5],
        &[16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10]
    );
    assert!(sizes[5..].iter().all(|&s| s == 256 << 10), "{sizes:?}");
    // The log reopens with its segments of several sizes.
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        assert_eq!(log.stats().next_lsn, 702);
    });
}

#[test]
fn a_first_batch_larger_than_the_first_segment_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = LogConfig::new(dir.path().join("log"), 0);
    cfg.segment_bytes = 1 << 20;
    cfg.segment_bytes_initial = 4096;
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        let mut big = Batch::new();
        big.event(b"big", &payload(5, 100 * 1024));
        let r = log.append(&big).await.expect("append");
        assert_eq!(r.first, 1);
        log.close().await.expect("close");
    });
    let segs = segments(&cfg.dir);
    assert_eq!(segs.len(), 1);
    assert!(std::fs::metadata(&segs[0]).expect("meta").len() >= 100 * 1024);
    let recs = all_records(&cfg);
    assert_eq!(recs, vec![(1, payload(5, 100 * 1024))]);
}

#[test]
fn spares_are_recycled_once_segments_reach_full_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 64 * 1024;
    cfg.segment_bytes_initial = 16 * 1024;
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for round in 0..20u64 {
            for i in 0..100u64 {
                let mut b = Batch::new();
                b.snapshot(
                    format!("k{}", i % 4).as_bytes(),
                    &payload(round * 100 + i, 200),
                );
                log.append(&b).await.expect("append");
            }
            log.compact(CompactionPolicy::default())
                .await
                .expect("compact");
        }
        let st = log.stats();
        assert!(st.segments_recycled > 0, "{st:?}");
        log.close().await.expect("close");
    });
    for e in std::fs::read_dir(&cfg.dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.to_string_lossy().ends_with(".seg.free") {
            assert_eq!(
                std::fs::metadata(&p).expect("meta").len(),
                cfg.segment_bytes
            );
        }
    }
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        assert_eq!(log.key_lsns(b"k1").len(), 1);
    });
}

#[test]
fn a_sealed_segment_cut_inside_its_header_is_refused_then_accepted_up_to_the_next_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let (segs, last_acked) = fill(&cfg, 200);
    let victim = segs[1].clone();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .and_then(|f| f.set_len(30))
        .expect("truncate into the header");
    let err = open_err(&cfg);
    assert!(
        matches!(&err, OpenError::Recover(RecoverError::NoHeader { file, actual_bytes: 30 }) if *file == victim),
        "{err}"
    );
    let mut accept = cfg.clone();
    accept.accept_short_segments = true;
    block_on(async {
        let (log, report) = Log::open(StdIo, accept).await.expect("accepted");
        assert_eq!(
            report.short_segments[0].lost_lsns,
            (base_of(&victim), base_of(&segs[2]))
        );
        let r = log.append(&batch(1)).await.expect("append");
        assert_eq!(
            r.first,
            last_acked + 1,
            "only the lost segment's LSNs are skipped"
        );
        log.close().await.expect("close");
    });
    let recs = all_records(&cfg);
    let lost = base_of(&segs[2]) - base_of(&victim);
    assert_eq!(recs.len() as u64, 200 - lost + 1);
}
