//! Property tests for the decoder of outside bytes (segment images and batch frames).
//!
//! - Arbitrary bytes never panic (nor index out of bounds). Random bytes almost never carry a
//!   valid CRC-32C, so this is a robustness property only: it says nothing about what the
//!   decoder accepts.
//! - Mutated (bit-flipped, truncated) images of a real segment, and a real header or batch
//!   followed by garbage, yield only records that were written, each inside a verified frame,
//!   and offline inspection reports damage whenever records were lost.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use common::payload;
use proptest::prelude::*;
use quark_persist::{block_on, fuzz, Batch, Log, LogConfig, Preallocate, Record, StdIo};

fn crc_ok(frame: &[u8]) -> bool {
    frame.len() >= 8
        && crc32c::crc32c(&frame[8..])
            == u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]])
}

/// A real segment image written by the log, and its records by LSN.
fn valid_segment() -> &'static (Vec<u8>, HashMap<u64, Record>) {
    static SEG: OnceLock<(Vec<u8>, HashMap<u64, Record>)> = OnceLock::new();
    SEG.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = LogConfig::new(dir.path().join("log"), 0);
        cfg.segment_bytes = 8192;
        cfg.preallocate = Preallocate::ZeroFill;
        block_on(async {
            let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
            for i in 0..12u64 {
                let mut b = Batch::new();
                for j in 0..(i % 3 + 1) {
                    b.event(
                        format!("k{j}").as_bytes(),
                        &payload(i * 7 + j, (i * 37 % 200) as usize),
                    );
                }
                log.append(&b).await.expect("append");
            }
            log.close().await.expect("close");
        });
        let path = std::fs::read_dir(&cfg.dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .expect("segment");
        let bytes = std::fs::read(path).expect("read");
        let mut records = HashMap::new();
        for (_, _, recs) in fuzz::scan_segment(&bytes) {
            for r in recs {
                records.insert(r.lsn, r);
            }
        }
        assert!(records.len() >= 20, "the image holds real records");
        (bytes, records)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A no-panic property: random bytes almost never pass the checksum, so the checks on
    /// what was decoded run only in the rare case they do. What the decoder accepts is tested
    /// by `mutated_segments_yield_only_original_records` and `valid_header_then_arbitrary_bytes`.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Some((len, records)) = fuzz::decode_batch(&bytes) {
            prop_assert!(len <= bytes.len());
            prop_assert!(crc_ok(&bytes[..len]));
            prop_assert!(!records.is_empty());
        }
        let scanned = fuzz::scan_segment(&bytes);
        for (off, len, _) in scanned {
            prop_assert!(crc_ok(&bytes[off as usize..off as usize + len]));
        }
        for r in fuzz::inspect_image(&bytes).records {
            let off = r.batch_offset as usize;
            let len = u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]) as usize;
            prop_assert!(crc_ok(&bytes[off..off + len]));
        }
    }

    #[test]
    fn mutated_segments_yield_only_original_records(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (orig, records) = valid_segment();
        let mut bytes = orig.clone();
        // Mutate within the written part (the first 4 KiB) most of the time.
        for (idx, x) in &flips {
            let i = idx.index(4096.min(bytes.len()));
            bytes[i] ^= x;
        }
        if let Some(t) = truncate {
            bytes.truncate(t.index(bytes.len()));
        }
        for (off, len, recs) in fuzz::scan_segment(&bytes) {
            prop_assert!(crc_ok(&bytes[off as usize..off as usize + len]));
            for r in recs {
                prop_assert_eq!(Some(&r), records.get(&r.lsn), "a verified record differs from what was written");
            }
        }
        // Offline inspection resynchronises past damage: still only original records, each
        // at an offset inside a verified frame, and damage reported whenever it lost any.
        let insp = fuzz::inspect_image(&bytes);
        for r in &insp.records {
            let orig = records.get(&r.lsn);
            prop_assert!(orig.is_some_and(|o| o.payload == r.payload && o.key == r.key));
            let off = r.batch_offset as usize;
            let len = u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]) as usize;
            prop_assert!(crc_ok(&bytes[off..off + len]));
            prop_assert!(r.record_offset as usize + 40 <= off + len);
        }
        if insp.records.len() < records.len() {
            prop_assert!(!insp.damage.is_empty() || truncate.is_some(), "records lost without a report");
        }
    }

    #[test]
    fn valid_header_then_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..4096), splice in any::<bool>()) {
        let (orig, records) = valid_segment();
        let mut bytes = orig[..64].to_vec();
        if splice {
            // A real first batch, then garbage: the real one must come back intact.
            let len = u32::from_le_bytes([orig[64], orig[65], orig[66], orig[67]]) as usize;
            bytes.extend_from_slice(&orig[64..64 + len]);
        }
        bytes.extend_from_slice(&tail);
        let scanned = fuzz::scan_segment(&bytes);
        if splice {
            prop_assert!(!scanned.is_empty());
        }
        for (off, len, recs) in scanned {
            prop_assert!(crc_ok(&bytes[off as usize..off as usize + len]));
            for r in recs {
                prop_assert_eq!(Some(&r), records.get(&r.lsn));
            }
        }
    }
}
