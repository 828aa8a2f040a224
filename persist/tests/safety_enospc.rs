//! ENOSPC while preallocating a new segment (before anything of it was written) fails the
//! batches that needed it with `AppendError::NoSpace` naming the directory and the bytes
//! needed, without poisoning the log: appends resume once space is freed, and nothing of a
//! failed batch ever appears. A failed `fdatasync` still poisons (see `tests/log.rs`).

mod common;

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;

use common::{join_all, payload, yield_once};
use quark_persist::{
    block_on, AppendError, Batch, FsyncPolicy, Log, LogConfig, LogFile, LogIo, LsnRange,
    Preallocate, StdFile, StdIo,
};

/// How many ENOSPC failures are left to inject.
#[derive(Default)]
struct Disk {
    /// `allocate` (fallocate) of a new segment fails with ENOSPC this many more times.
    alloc_failures: Cell<u32>,
    /// Writes to a segment being created (`*.seg.tmp`: the zero-fill) fail this many more
    /// times.
    tmp_write_failures: Cell<u32>,
}

/// [`StdIo`] with a disk that runs out of space on demand; writes and syncs yield once so
/// that concurrent appends share chunks.
#[derive(Clone, Default)]
struct FullDiskIo(Rc<Disk>);

struct FullDiskFile {
    inner: StdFile,
    path: PathBuf,
    disk: Rc<Disk>,
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

fn take(c: &Cell<u32>) -> bool {
    let n = c.get();
    if n > 0 {
        c.set(n - 1);
    }
    n > 0
}

impl LogIo for FullDiskIo {
    type File = FullDiskFile;
    async fn open(&self, path: &Path, create: bool) -> io::Result<FullDiskFile> {
        Ok(FullDiskFile {
            inner: StdIo.open(path, create).await?,
            path: path.to_path_buf(),
            disk: Rc::clone(&self.0),
        })
    }
    async fn open_write_through(&self, path: &Path) -> io::Result<FullDiskFile> {
        Ok(FullDiskFile {
            inner: StdIo.open_write_through(path).await?,
            path: path.to_path_buf(),
            disk: Rc::clone(&self.0),
        })
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdIo.rename(from, to).await
    }
    async fn remove(&self, path: &Path) -> io::Result<()> {
        StdIo.remove(path).await
    }
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        StdIo.list_dir(dir).await
    }
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdIo.create_dir_all(dir).await
    }
    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdIo.sync_dir(dir).await
    }
}

impl LogFile for FullDiskFile {
    async fn write_all_at(&self, buf: Rc<Vec<u8>>, pos: u64) -> io::Result<()> {
        yield_once().await;
        if self.path.to_string_lossy().ends_with(".seg.tmp") && take(&self.disk.tmp_write_failures)
        {
            return Err(enospc());
        }
        self.inner.write_all_at(buf, pos).await
    }
    async fn read_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<usize>, Vec<u8>) {
        self.inner.read_at(buf, pos).await
    }
    async fn sync_data(&self) -> io::Result<()> {
        yield_once().await;
        self.inner.sync_data().await
    }
    async fn allocate(&self, len: u64) -> io::Result<()> {
        if take(&self.disk.alloc_failures) {
            return Err(enospc());
        }
        self.inner.allocate(len).await
    }
    async fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len).await
    }
    async fn file_len(&self) -> io::Result<u64> {
        self.inner.file_len().await
    }
}

type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<LsnRange, AppendError>> + 'a>>;

const SEGMENT_BYTES: u64 = 16 * 1024;
/// About 3 KiB encoded: five fit in a 16 KiB segment, the sixth needs a new one.
const PAYLOAD_BYTES: usize = 3000;

fn config(dir: &Path, preallocate: Preallocate) -> LogConfig {
    let mut c = LogConfig::new(dir.join("log"), 0);
    c.segment_bytes = SEGMENT_BYTES;
    c.segment_bytes_initial = SEGMENT_BYTES;
    c.preallocate = preallocate;
    c.fsync = FsyncPolicy::Always;
    c
}

fn batch(i: u64) -> Batch {
    let mut b = Batch::new();
    b.event(b"k", &payload(i, PAYLOAD_BYTES));
    b
}

fn assert_no_space(r: &Result<LsnRange, AppendError>, dir: &Path) {
    match r {
        Err(
            e @ AppendError::NoSpace {
                dir: d,
                bytes_needed,
            },
        ) => {
            assert_eq!(d, dir);
            assert_eq!(*bytes_needed, SEGMENT_BYTES);
            let text = e.to_string();
            assert!(text.contains(&dir.display().to_string()), "{text}");
            assert!(text.contains(&SEGMENT_BYTES.to_string()), "{text}");
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
}

/// Every (lsn, payload) after a reopen with the std backend.
fn reopen_records(cfg: &LogConfig) -> Vec<(u64, Vec<u8>)> {
    block_on(async {
        let (log, _) = Log::open(StdIo, cfg.clone()).await.expect("reopen");
        let mut scan = log.scan(1);
        let mut out = Vec::new();
        while let Some(r) = scan.next().await.expect("scan") {
            out.push((r.lsn, r.payload));
        }
        out
    })
}

/// Fills the first segment (5 batches), then makes the next `failures` segment creations fail
/// (through `arm`) and checks that appends fail with NoSpace, then resume.
fn fails_then_resumes(preallocate: Preallocate, arm: impl Fn(&Disk)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), preallocate);
    let io = FullDiskIo::default();
    let mut expected = Vec::new();
    block_on(async {
        let (log, _) = Log::open(io.clone(), cfg.clone()).await.expect("open");
        for i in 0..5 {
            let r = log
                .append(&batch(i))
                .await
                .expect("fits in the first segment");
            expected.push((r.first, payload(i, PAYLOAD_BYTES)));
        }
        arm(&io.0);
        assert_no_space(&log.append(&batch(100)).await, &cfg.dir);
        assert_no_space(&log.append(&batch(101)).await, &cfg.dir);
        // Space is back: the log was not poisoned.
        let r = log.append(&batch(6)).await.expect("append resumes");
        assert_eq!(
            r.first, 6,
            "the failed batches' LSNs were never written: no hole"
        );
        expected.push((r.first, payload(6, PAYLOAD_BYTES)));
        let r = log.append(&batch(7)).await.expect("append");
        expected.push((r.first, payload(7, PAYLOAD_BYTES)));
        assert_eq!(log.stats().segment_count, 2);
        log.close().await.expect("close");
    });
    let leftovers: Vec<_> = std::fs::read_dir(&cfg.dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "partial segments left: {leftovers:?}");
    assert_eq!(reopen_records(&cfg), expected);
}

#[test]
fn enospc_at_fallocate_fails_the_append_and_appends_resume() {
    fails_then_resumes(Preallocate::Fallocate, |d| d.alloc_failures.set(2));
}

#[test]
fn enospc_at_zero_fill_fails_the_append_and_appends_resume() {
    fails_then_resumes(Preallocate::ZeroFill, |d| d.tmp_write_failures.set(2));
}

#[test]
fn every_batch_waiting_for_the_segment_fails_and_its_lsns_go_to_later_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), Preallocate::ZeroFill);
    let io = FullDiskIo::default();
    block_on(async {
        let (log, _) = Log::open(io.clone(), cfg.clone()).await.expect("open");
        for i in 0..5 {
            log.append(&batch(i)).await.expect("append");
        }
        io.0.alloc_failures.set(1);
        // Three appends that all need the new segment, queued while the first one leads.
        let (b0, b1, b2) = (batch(200), batch(201), batch(202));
        let futs: Vec<AppendFuture<'_>> = vec![
            Box::pin(log.append(&b0)),
            Box::pin(log.append(&b1)),
            Box::pin(log.append(&b2)),
        ];
        let results = join_all(futs).await;
        for r in &results {
            assert_no_space(r, &cfg.dir);
        }
        let st = log.stats();
        assert_eq!((st.next_lsn, st.acked_lsn), (6, 6), "{st:?}");
        let r = log.append(&batch(6)).await.expect("resumes");
        assert_eq!(r.first, 6);
        log.close().await.expect("close");
    });
    let recs = reopen_records(&cfg);
    assert_eq!(recs.len(), 6);
    assert_eq!(recs[5], (6, payload(6, PAYLOAD_BYTES)));
    for i in 200..203 {
        assert!(!recs.iter().any(|(_, p)| *p == payload(i, PAYLOAD_BYTES)));
    }
}

#[test]
fn enospc_on_a_roll_with_nothing_queued_keeps_appending_to_the_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), Preallocate::Fallocate);
    let io = FullDiskIo::default();
    block_on(async {
        let (log, _) = Log::open(io.clone(), cfg.clone()).await.expect("open");
        log.append(&batch(0)).await.expect("append");
        io.0.alloc_failures.set(1);
        assert!(matches!(log.roll().await, Err(AppendError::NoSpace { .. })));
        let r = log.append(&batch(1)).await.expect("not poisoned");
        assert_eq!(r.first, 2);
        assert_eq!(log.stats().segment_count, 1, "still in the active segment");
        log.roll().await.expect("roll once space is back");
        assert_eq!(log.stats().segment_count, 2);
        log.close().await.expect("close");
    });
    assert_eq!(reopen_records(&cfg).len(), 2);
}
