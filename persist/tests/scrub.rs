//! Scrub: after erasing a key and scrubbing, no file of the log directory holds its bytes.

mod common;

use common::{join_all, YieldIo};
use quark_persist::{
    block_on, Batch, CompactionPolicy, FsyncPolicy, Log, LogConfig, LogIo, Preallocate, StdIo,
};

fn config(dir: &std::path::Path) -> LogConfig {
    let mut c = LogConfig::new(dir.join("log"), 0);
    c.segment_bytes = 8 * 1024;
    c.preallocate = Preallocate::Fallocate;
    c.fsync = FsyncPolicy::Never;
    c.recycle_segments_max = 2;
    c
}

const SECRET: &[u8] = b"A-SECRET-PAYLOAD-";

fn a_payload(i: u64) -> Vec<u8> {
    let mut p = SECRET.to_vec();
    p.extend_from_slice(format!("{i:06}").as_bytes());
    p.resize(120, b'a');
    p
}

fn b_payload(i: u64) -> Vec<u8> {
    let mut p = format!("B-payload-{i:06}-").into_bytes();
    p.resize(120, b'b');
    p
}

/// Files under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read file");
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

async fn b_payloads<IO: LogIo>(log: &Log<IO>) -> Vec<Vec<u8>> {
    let lsns = log.key_lsns(b"B");
    let records = log.read_many(&lsns).await.expect("read_many");
    records.into_iter().map(|r| r.payload).collect()
}

/// Writes A and B events among overwritten C snapshots over several segments, and runs a
/// compaction so that A's bytes also sit in spares and behind the end marker of a reused one.
async fn populate<IO: LogIo>(log: &Log<IO>) {
    let policy = CompactionPolicy::default();
    for i in 0..120u64 {
        let mut b = Batch::new();
        if i % 3 == 0 {
            b.event(b"A", &a_payload(i));
        }
        b.event(b"B", &b_payload(i));
        b.snapshot(b"C", &[b'c'; 1000]);
        log.append(&b).await.expect("append");
        if i == 60 {
            log.compact(policy).await.expect("compact");
        }
    }
    log.compact(policy).await.expect("compact");
    let stats = log.stats();
    assert!(stats.segments_recycled > 0, "a spare was reused: {stats:?}");
    assert!(stats.spare_count > 0, "spares exist: {stats:?}");
}

#[test]
fn erased_key_bytes_leave_every_file_and_other_keys_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        populate(&log).await;
        assert!(
            files_containing(&cfg.dir, SECRET).len() > 1,
            "the test must start with A's bytes in several files"
        );
        let want_b = b_payloads(&log).await;
        assert_eq!(want_b.len(), 120);
        let mut b = Batch::new();
        b.truncate(b"A", u64::MAX);
        log.append(&b).await.expect("erase A");
        assert!(log.key_lsns(b"A").is_empty());
        // Roll into a reused spare and leave only live records in it: A's stale bytes then
        // sit behind its end marker in a segment the scrub keeps.
        let recycled = log.stats().segments_recycled;
        let mut i = 200;
        while log.stats().segments_recycled == recycled {
            let mut b = Batch::new();
            b.event(b"B", &b_payload(i));
            log.append(&b).await.expect("append B");
            i += 1;
        }
        let mut b = Batch::new();
        b.event(b"B", &b_payload(i));
        log.append(&b).await.expect("append B");
        let want_b = b_payloads(&log).await;
        let report = log.scrub().await.expect("scrub");
        assert!(report.segments_zeroed > 0, "{report:?}");
        assert!(report.segments_rewritten > 0, "{report:?}");
        assert!(report.records_copied > 0, "{report:?}");
        assert_eq!(log.stats().spare_count, 0);
        assert!(
            log.stats().segment_count >= 2,
            "the kept segment and the fresh active one"
        );
        let hits = files_containing(&cfg.dir, SECRET);
        assert!(hits.is_empty(), "A's bytes remain in {hits:?} ({report:?})");
        assert_eq!(b_payloads(&log).await, want_b, "B intact after scrub");
        // The log keeps working and a second scrub has little left to do.
        let mut b = Batch::new();
        b.event(b"B", &b_payload(1000));
        log.append(&b).await.expect("append after scrub");
        let again = log.scrub().await.expect("scrub again");
        assert_eq!(again.spares_deleted, 0, "{again:?}");
        assert_eq!(
            again.segments_zeroed, 0,
            "a zeroed tail stays known clean: {again:?}"
        );
        log.close().await.expect("close");
    });
    assert!(files_containing(&cfg.dir, SECRET).is_empty());
    block_on(async {
        let (log, report) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        assert!(report.truncated.is_empty(), "{report:?}");
        assert!(log.key_lsns(b"A").is_empty(), "A stays erased");
        let got = b_payloads(&log).await;
        assert_eq!(got.last(), Some(&b_payload(1000)));
        assert!(got.len() > 121);
        let mut scan = log.scan(0);
        while let Some(r) = scan.next().await.expect("scan") {
            assert!(!r.payload.starts_with(SECRET), "scan found A at {}", r.lsn);
        }
    });
}

#[test]
fn appends_may_run_during_a_scrub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    // YieldIo keeps every write and sync in flight for a poll, so the appends below really
    // interleave with the scrub's roll, copies, zero-fills and unlinks.
    let io = YieldIo::default();
    block_on(async {
        let (log, _) = Log::open(io.clone(), cfg.clone()).await.expect("open");
        populate(&log).await;
        let mut b = Batch::new();
        b.truncate(b"A", u64::MAX);
        log.append(&b).await.expect("erase A");
        let want_b = b_payloads(&log).await;
        let scrub = Box::pin(async {
            log.scrub().await.expect("scrub");
        });
        let appends = Box::pin(async {
            for i in 0..40u64 {
                let mut b = Batch::new();
                b.event(b"D", format!("during-{i}").as_bytes());
                log.append(&b).await.expect("append during scrub");
            }
        });
        join_all(vec![scrub, appends]).await;
        assert!(files_containing(&cfg.dir, SECRET).is_empty());
        assert_eq!(b_payloads(&log).await, want_b);
        assert_eq!(log.key_lsns(b"D").len(), 40);
        log.close().await.expect("close");
    });
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        let d = log.read_many(&log.key_lsns(b"D")).await.expect("read D");
        let want: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("during-{i}").into_bytes())
            .collect();
        assert_eq!(d.into_iter().map(|r| r.payload).collect::<Vec<_>>(), want);
    });
}

#[test]
fn roll_starts_a_new_segment_and_is_a_no_op_on_an_empty_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        log.roll().await.expect("roll empty");
        assert_eq!(log.stats().segment_count, 1, "nothing to seal");
        let mut b = Batch::new();
        b.event(b"k", b"one");
        log.append(&b).await.expect("append");
        log.roll().await.expect("roll");
        assert_eq!(log.stats().segment_count, 2);
        let mut b = Batch::new();
        b.event(b"k", b"two");
        log.append(&b).await.expect("append");
        log.close().await.expect("close");
    });
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        assert_eq!(log.stats().segment_count, 2);
        let got = log.read_many(&log.key_lsns(b"k")).await.expect("read");
        assert_eq!(got[0].payload, b"one");
        assert_eq!(got[1].payload, b"two");
    });
}

#[test]
fn an_empty_active_segment_reused_from_a_spare_is_zeroed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("open");
        populate(&log).await;
        let mut b = Batch::new();
        b.truncate(b"A", u64::MAX);
        log.append(&b).await.expect("erase A");
        let recycled = log.stats().segments_recycled;
        log.roll().await.expect("roll");
        assert_eq!(
            log.stats().segments_recycled,
            recycled + 1,
            "rolled into a spare"
        );
        let want_b = b_payloads(&log).await;
        let report = log.scrub().await.expect("scrub");
        assert!(
            report.bytes_zeroed >= cfg.segment_bytes - 64,
            "the empty reused active segment was zeroed: {report:?}"
        );
        assert!(files_containing(&cfg.dir, SECRET).is_empty());
        assert_eq!(b_payloads(&log).await, want_b);
        log.close().await.expect("close");
    });
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        assert!(log.key_lsns(b"A").is_empty());
        assert_eq!(log.key_lsns(b"B").len(), 120);
    });
}
