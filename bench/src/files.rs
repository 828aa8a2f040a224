//! Files for the disk baselines of `logbench` and `journalbench`: created the way the log
//! creates its segments, so that a baseline matches what it is compared with.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// A latency histogram in ns, from 1 ns to 60 s, 3 significant digits.
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// A new, empty file at `path` (truncated if it exists).
pub fn create_empty(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))
}

/// A file of `bytes` zeros, synced: the log's `Preallocate::ZeroFill` segments.
pub fn zero_filled(path: &Path, bytes: u64) -> Result<File> {
    let f = create_empty(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < bytes {
        f.write_all_at(&zeros, pos)?;
        pos += zeros.len() as u64;
    }
    f.sync_all()?;
    Ok(f)
}

/// Blocking `pwrite` + `fdatasync` of `size` bytes, each write after the previous one: the
/// latency histogram (ns) and the elapsed time.
pub fn pwrite_loop(f: &File, size: usize, count: u64) -> Result<(Histogram<u64>, Duration)> {
    pwrite_loop_from(f, size, 0, count)
}

/// [`pwrite_loop`] starting at write number `first` (offset `first * size`), so that blocks of
/// writes interleaved with other measurements continue at the end of the written data.
pub fn pwrite_loop_from(
    f: &File,
    size: usize,
    first: u64,
    count: u64,
) -> Result<(Histogram<u64>, Duration)> {
    let buf = vec![0xA5u8; size];
    let mut h = hist();
    let start = Instant::now();
    for i in first..first + count {
        let t = Instant::now();
        f.write_all_at(&buf, i * size as u64)?;
        f.sync_data()?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    Ok((h, start.elapsed()))
}

/// Evicts every file under `dir` from the page cache (`fdatasync`, then
/// `posix_fadvise(POSIX_FADV_DONTNEED)`; no root needed): the next reads of those files go to
/// the disk. Returns the number of files evicted.
pub fn evict_from_page_cache(dir: &Path) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let mut n = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            n += evict_from_page_cache(&path)?;
            continue;
        }
        let f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        f.sync_data()
            .with_context(|| format!("fdatasync {}", path.display()))?;
        // SAFETY: the descriptor is open for the duration of the call; offset 0, length 0
        // means the whole file.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        anyhow::ensure!(
            rc == 0,
            "posix_fadvise(DONTNEED) {}: error {rc}",
            path.display()
        );
        n += 1;
    }
    Ok(n)
}
