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
    let buf = vec![0xA5u8; size];
    let mut h = hist();
    let start = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        f.write_all_at(&buf, i * size as u64)?;
        f.sync_data()?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    Ok((h, start.elapsed()))
}
