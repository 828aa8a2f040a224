//! Quick measurement: replaying one key's records with `Log::read` in a loop vs one
//! `Log::read_many`, on the StdIo backend (page cache warm after the first pass).
//!
//! `cargo run --release -p quark-persist --example read_many_bench -- [records] [dir] [runs]`
//! (defaults: 100000 records of 100 B, one record per batch, a temp dir, 3 runs).

use std::time::Instant;

use quark_persist::{block_on, Batch, FsyncPolicy, Log, LogConfig, StdIo};

fn main() {
    let mut args = std::env::args().skip(1);
    let records: u64 = args
        .next()
        .map_or(100_000, |a| a.parse().expect("records: a number"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args
        .next()
        .map_or_else(|| tmp.path().join("log"), std::path::PathBuf::from);
    let runs: usize = args
        .next()
        .map_or(3, |a| a.parse().expect("runs: a number"));
    let mut config = LogConfig::new(&dir, 0);
    config.fsync = FsyncPolicy::Never;
    block_on(async {
        let (log, _) = Log::open(StdIo, config).await.expect("open");
        let payload = [7u8; 100];
        for i in 0..records {
            let mut b = Batch::new();
            b.event(b"actor/replayed", &payload);
            if i % 4 == 0 {
                b.event(b"actor/other", &payload); // another key interleaved
            }
            log.append(&b).await.expect("append");
        }
        log.sync().await.expect("sync");
        let lsns = log.key_lsns(b"actor/replayed");
        assert_eq!(lsns.len() as u64, records);
        let mut loop_s = Vec::new();
        let mut many_s = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let mut n = 0usize;
            for &lsn in &lsns {
                n += log
                    .read(lsn)
                    .await
                    .expect("read")
                    .expect("present")
                    .payload
                    .len();
            }
            loop_s.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let got = log.read_many(&lsns).await.expect("read_many");
            many_s.push(t.elapsed().as_secs_f64());
            assert_eq!(n, got.iter().map(|r| r.payload.len()).sum::<usize>());
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let (l, lmin, lmax) = med(&mut loop_s);
        let (m, mmin, mmax) = med(&mut many_s);
        println!(
            "records={records} runs={runs}\nread loop : median {:.1} ms [{:.1} .. {:.1}]\nread_many : median {:.1} ms [{:.1} .. {:.1}]\nratio {:.0}x",
            l * 1e3,
            lmin * 1e3,
            lmax * 1e3,
            m * 1e3,
            mmin * 1e3,
            mmax * 1e3,
            l / m
        );
        log.close().await.expect("close");
    });
}
