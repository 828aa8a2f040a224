//! A shard with a log stops its log's periodic tasks (the interval sync and the compaction
//! pass) and waits for them to end before it closes the log: the shutdown is clean (the shard
//! thread checks the order, and a shard that closed its log with a pass still running would
//! panic in a debug build) and everything appended is recovered afterwards.

use std::time::Duration;

use quark_persist::{Batch, FsyncPolicy, Log, LogConfig};
use quark_shard::rt::log_io::UringIo;
use quark_shard::{
    current_shard_log, Actor, ActorType, EngineBuilder, EngineConfig, ShardSpec, ShutdownReport,
};

struct Nop;
impl Actor for Nop {
    const TYPE_NAME: &'static str = "nop";
}

const SHARDS: u16 = 2;
const APPENDS: u64 = 200;

#[test]
fn shutdown_ends_the_log_tasks_before_it_closes_the_log() {
    let dir = std::env::temp_dir().join(format!("quark-log-shutdown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut log = LogConfig::new(&dir, 0);
    // Both periodic loops, as often as they can run.
    log.fsync = FsyncPolicy::IntervalMs(1);
    let config = EngineConfig {
        shards: ShardSpec::Count(usize::from(SHARDS)),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        log: Some(log),
        log_compact_interval: Some(Duration::from_millis(1)),
        ..EngineConfig::default()
    };
    let engine = EngineBuilder::new(config)
        .register(ActorType::new(|_| Nop))
        .start()
        .expect("start");
    for shard in 0..SHARDS {
        let appended = engine
            .spawn_on(shard, || async {
                let log = current_shard_log().expect("a shard log");
                for i in 0..APPENDS {
                    let mut b = Batch::new();
                    b.event(format!("k{i}").as_bytes(), &i.to_le_bytes());
                    log.append(&b).await.expect("append");
                }
                // Let the periodic passes run against a busy log for a while.
                quark_shard::sleep(Duration::from_millis(20)).await;
                APPENDS
            })
            .join()
            .expect("the appending task");
        assert_eq!(appended, APPENDS);
    }
    assert_eq!(engine.shutdown(), ShutdownReport::default(), "a clean stop");

    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(64)
        .build()
        .expect("io_uring runtime");
    for shard in 0..SHARDS {
        let mut cfg = LogConfig::new(dir.join(format!("shard-{shard}")), u32::from(shard));
        cfg.fsync = FsyncPolicy::IntervalMs(1);
        let records = rt.block_on(async move {
            let (log, report) = Log::open(UringIo, cfg).await.expect("reopen");
            log.close().await.expect("close");
            report
        });
        assert!(
            records.truncated.is_empty() && records.quarantined.is_empty(),
            "shard {shard}: the log was closed cleanly ({records:?})"
        );
        assert_eq!(records.records, APPENDS, "shard {shard}: every append kept");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
