//! Offline inspection lists every verified record with its file offset and reports damage
//! (file, offset) while still listing what follows it.

use quark_persist::{
    block_on, fuzz, inspect_dir, Batch, DamageKind, FsyncPolicy, Invalid, Log, LogConfig,
    Preallocate, RecordKind, StdIo,
};

fn config(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::new(dir.join("log"), 0);
    c.segment_bytes = 8 * 1024;
    c.preallocate = Preallocate::Fallocate;
    c.fsync = FsyncPolicy::Never;
    c
}

/// Writes 200 batches of two records (an event and, every 10th, a truncate) and closes.
fn write_log(cfg: &LogConfig) {
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        for i in 0..200u64 {
            let mut b = Batch::new();
            b.event(b"key", format!("payload-{i:04}").as_bytes());
            if i % 10 == 9 {
                b.truncate(b"key", i);
            } else {
                b.event(b"other", b"x");
            }
            log.append(&b).await.expect("append");
        }
        log.close().await.expect("close");
    });
}

#[test]
fn a_clean_log_lists_every_record_at_its_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    write_log(&cfg);
    let insp = inspect_dir(&cfg.dir).expect("inspect");
    assert!(insp.segment_files.len() > 2, "several segments");
    let mut lsn = 1;
    for seg in insp.segments() {
        let seg = seg.expect("readable");
        assert!(seg.damage.is_empty(), "{:?}", seg.damage);
        let header = seg.header.expect("header verified");
        assert_eq!(header.base_lsn, lsn);
        let bytes = std::fs::read(&seg.path).expect("read");
        for r in &seg.records {
            assert_eq!(r.lsn, lsn);
            lsn += 1;
            // The offsets point at the record: its LSN is at +8, its payload at the end.
            let at = r.record_offset as usize;
            assert_eq!(bytes[at + 8..at + 16], r.lsn.to_le_bytes());
            let end = at + 40 + r.key.len() + r.payload.len();
            assert_eq!(bytes[end - r.payload.len()..end], r.payload[..]);
            assert!(r.batch_offset < r.record_offset);
            if r.kind == RecordKind::Truncate {
                assert_eq!(r.payload.len(), 8);
            }
        }
    }
    assert_eq!(lsn, 401);
}

#[test]
fn a_corrupt_middle_batch_is_reported_and_the_records_around_it_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    write_log(&cfg);
    let insp = inspect_dir(&cfg.dir).expect("inspect");
    let victim_path = insp.segment_files[1].clone();
    let before = quark_persist::inspect_segment(&victim_path).expect("inspect");
    // A batch in the middle of the segment.
    let mut batch_offsets: Vec<u64> = before.records.iter().map(|r| r.batch_offset).collect();
    batch_offsets.dedup();
    let victim = batch_offsets[batch_offsets.len() / 2];
    let lost: Vec<u64> = before
        .records
        .iter()
        .filter(|r| r.batch_offset == victim)
        .map(|r| r.lsn)
        .collect();
    let mut bytes = std::fs::read(&victim_path).expect("read");
    bytes[victim as usize + 40] ^= 0x40; // a byte inside the first record's header
    std::fs::write(&victim_path, &bytes).expect("write");

    let after = quark_persist::inspect_segment(&victim_path).expect("inspect");
    assert_eq!(after.damage.len(), 1, "{:?}", after.damage);
    let d = &after.damage[0];
    assert_eq!(d.file, victim_path);
    assert_eq!(d.offset, victim);
    assert_eq!(d.what, DamageKind::Batch(Invalid::Checksum));
    let want: Vec<u64> = before
        .records
        .iter()
        .map(|r| r.lsn)
        .filter(|l| !lost.contains(l))
        .collect();
    let got: Vec<u64> = after.records.iter().map(|r| r.lsn).collect();
    assert_eq!(
        got, want,
        "records before and after the damage are still listed"
    );
    assert!(got.iter().any(|&l| l > lost[lost.len() - 1]));
    // The other segments are unaffected.
    for seg in insp.segments() {
        let seg = seg.expect("readable");
        if seg.path != victim_path {
            assert!(seg.damage.is_empty());
        }
    }

    // Deliberate tampering: edit a payload byte of another batch and reseal its checksum.
    let mut bytes = std::fs::read(&victim_path).expect("read");
    let target = after.records.last().expect("records");
    let payload_at = target.record_offset as usize + 40 + target.key.len();
    bytes[payload_at] = b'P';
    assert!(fuzz::reseal_batch_at(
        &mut bytes,
        target.batch_offset as usize
    ));
    assert!(
        !fuzz::reseal_batch_at(&mut bytes, 1),
        "no frame at offset 1"
    );
    std::fs::write(&victim_path, &bytes).expect("write");
    let tampered = quark_persist::inspect_segment(&victim_path).expect("inspect");
    assert_eq!(tampered.damage.len(), 1, "only the earlier corruption");
    let r = tampered.records.last().expect("records");
    assert_eq!(r.payload[0], b'P', "the resealed edit verifies");
}
