//! A failed start returns an error naming the shard and the cause, within a bounded time, and
//! leaves no shard thread running (the started ones are stopped and joined).
//!
//! Failures are injected with the `EngineConfig::start_fault` test hook (runtime, doorbell, a
//! panic after the ring exchange), and for the log with a real obstacle (a file where a shard's
//! log directory should be).

use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use quark_shard::{
    Actor, ActorType, Engine, EngineBuilder, EngineConfig, ShardSpec, StartError, StartFault,
    StartStep,
};

struct Nop;
impl Actor for Nop {
    const TYPE_NAME: &'static str = "nop";
}

/// Tests here count the process's shard threads, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn config(shards: usize) -> EngineConfig {
    EngineConfig {
        shards: ShardSpec::Count(shards),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        ..EngineConfig::default()
    }
}

/// Starts an engine on another thread; fails the test if `start` does not return within 5 s.
fn start_within_5s(config: EngineConfig) -> Result<Engine, StartError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = EngineBuilder::new(config)
            .register(ActorType::new(|_| Nop))
            .start();
        let _ = tx.send(r);
    });
    let t0 = Instant::now();
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("Engine::start returned within 5 s");
    assert!(t0.elapsed() < Duration::from_secs(5));
    r
}

/// Threads of this process named `quark-shard-*` (from /proc/self/task/*/comm).
fn shard_threads_now() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("procfs")
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.starts_with("quark-shard"))
        .count()
}

/// The shard threads once the joined ones have left /proc: a joined thread's task entry goes
/// a moment after `join` returns (the kernel wakes the joiner before it releases the task),
/// so this looks again for up to 5 s while the count is above `want`.
fn shard_threads(want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = shard_threads_now();
        if n <= want || Instant::now() >= deadline {
            return n;
        }
        std::thread::yield_now();
    }
}

fn fault(shard: u16, step: StartStep) -> EngineConfig {
    EngineConfig {
        start_fault: Some(StartFault { shard, step }),
        ..config(3)
    }
}

fn expect_failure(config: EngineConfig) -> StartError {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(
        shard_threads(0),
        0,
        "no shard thread left over before the start"
    );
    let err = match start_within_5s(config) {
        Ok(_) => panic!("start succeeded although a shard failed"),
        Err(e) => e,
    };
    assert_eq!(
        shard_threads(0),
        0,
        "every shard thread is joined when start fails ({err})"
    );
    err
}

#[test]
fn runtime_failure_fails_the_start() {
    let err = expect_failure(fault(1, StartStep::Runtime));
    assert!(
        matches!(&err, StartError::Runtime { shard: 1, source } if source.to_string().contains("injected")),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "shard 1: cannot build its runtime");
}

#[test]
fn doorbell_failure_fails_the_start() {
    let err = expect_failure(fault(2, StartStep::Doorbell));
    assert!(
        matches!(&err, StartError::Doorbell { shard: 2, source } if source.to_string().contains("injected")),
        "{err:?}"
    );
}

#[test]
fn a_shard_dying_after_the_ring_exchange_fails_the_start() {
    let err = expect_failure(fault(0, StartStep::PanicAfterReady));
    assert!(
        matches!(err, StartError::ShardExited { shard: 0 }),
        "{err:?}"
    );
}

#[test]
fn log_failure_fails_the_start() {
    let dir = std::env::temp_dir().join(format!("quark-startup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    // A regular file where shard 1's log directory belongs.
    std::fs::write(dir.join("shard-1"), b"not a directory").expect("blocker file");
    let err = expect_failure(EngineConfig {
        log: Some(quark_persist::LogConfig::new(&dir, 0)),
        ..config(3)
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, StartError::Log { shard: 1, .. }), "{err:?}");
}

#[test]
fn a_clean_start_still_starts_and_stops() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A previous test's joined threads may linger in /proc for a moment: wait them out first.
    assert_eq!(
        shard_threads(0),
        0,
        "no shard thread left over before the start"
    );
    let engine = start_within_5s(config(3)).expect("a clean start");
    // Named threads appear in /proc a moment after they run: look until all 3 are seen.
    let deadline = Instant::now() + Duration::from_secs(5);
    while shard_threads_now() != 3 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(shard_threads_now(), 3);
    assert_eq!(engine.info().len(), 3);
    assert_eq!(engine.shutdown(), Default::default());
    assert_eq!(shard_threads(0), 0);
}
