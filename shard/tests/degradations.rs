//! Degradations are visible: a spawned task's panic is told apart from a stopped shard, the
//! engine reports how each shard runs (core, pinning, driver, idle spin), and a shard that does
//! not answer a stats request is an error naming it.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use quark_shard::{
    allowed_cores, Actor, ActorType, Engine, EngineBuilder, EngineConfig, IoDriver, JoinError,
    Pinning, ShardSpec, StatsError,
};

struct Nop;
impl Actor for Nop {
    const TYPE_NAME: &'static str = "nop";
}

fn engine(config: EngineConfig) -> Engine {
    EngineBuilder::new(config)
        .register(ActorType::new(|_| Nop))
        .start()
        .expect("engine starts")
}

fn unpinned(shards: usize) -> EngineConfig {
    EngineConfig {
        shards: ShardSpec::Count(shards),
        pin_threads: false,
        idle_spin: Duration::ZERO,
        ..EngineConfig::default()
    }
}

/// Joins on another thread; fails the test if the join does not return within 5 s.
fn join_within_5s<T: Send + 'static>(h: quark_shard::SpawnHandle<T>) -> Result<T, JoinError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.join());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("join returned within 5 s")
}

#[test]
fn join_tells_a_panicked_task_from_a_stopped_shard() {
    let e = engine(unpinned(2));
    let ok = e.spawn_on(1, || async { 7u32 });
    assert_eq!(join_within_5s(ok), Ok(7));

    let panicked = e.spawn_on(1, || async {
        if std::hint::black_box(true) {
            panic!("boom in a task");
        }
        0u32
    });
    match join_within_5s(panicked) {
        Err(JoinError::Panicked { shard: 1, message }) => {
            assert!(message.contains("boom in a task"), "{message}");
            assert!(message.contains("degradations.rs"), "location: {message}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }

    let make_panicked = e.spawn_on(0, || -> std::future::Ready<u32> { panic!("boom in make") });
    assert!(
        matches!(join_within_5s(make_panicked), Err(JoinError::Panicked { shard: 0, ref message }) if message.contains("boom in make"))
    );

    // The shard survives its task's panic.
    assert_eq!(join_within_5s(e.spawn_on(1, || async { 8u32 })), Ok(8));

    // A task that never finishes is dropped when the node stops.
    let forever = e.spawn_on(1, std::future::pending::<u32>);
    e.shutdown();
    assert_eq!(
        join_within_5s(forever),
        Err(JoinError::ShardStopped { shard: 1 })
    );
}

#[test]
fn info_reports_how_each_shard_runs() {
    let core = allowed_cores()[0];
    // Pinned, io_uring or epoll as the kernel allows, idle spin as configured.
    let e = engine(EngineConfig {
        shards: ShardSpec::Cores(vec![core]),
        pin_threads: true,
        idle_spin: Duration::from_micros(50),
        ..EngineConfig::default()
    });
    let info = e.info().to_vec();
    e.shutdown();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].shard, 0);
    assert_eq!(info[0].core, core);
    assert_eq!(info[0].idle_spin, Duration::from_micros(50));
    match info[0].pinning {
        Pinning::Pinned => assert_eq!(info[0].running_on, Some(core)),
        // A sandbox may refuse sched_setaffinity: then the report says so.
        Pinning::Failed { .. } => {}
        Pinning::Off => panic!("pinning was asked for"),
        _ => unreachable!(),
    }

    // Two shards on one core: spinning is turned off, and the report shows it; the epoll
    // driver when forced; no pinning when not asked for.
    let e = engine(EngineConfig {
        shards: ShardSpec::Cores(vec![core, core]),
        pin_threads: false,
        idle_spin: Duration::from_micros(50),
        force_legacy_driver: true,
        ..EngineConfig::default()
    });
    let info = e.info().to_vec();
    e.shutdown();
    assert_eq!(info.len(), 2);
    for (i, s) in info.iter().enumerate() {
        assert_eq!(usize::from(s.shard), i);
        assert_eq!(s.pinning, Pinning::Off);
        assert_eq!(s.driver, IoDriver::Epoll);
        assert_eq!(s.idle_spin, Duration::ZERO, "spinning off on a shared core");
    }
}

#[test]
fn stats_of_a_shard_that_does_not_answer_is_an_error_naming_it() {
    let e = engine(unpinned(2));
    assert_eq!(e.stats().expect("both shards answer").len(), 2);
    // Block shard 1's thread (a handler that blocks instead of awaiting).
    let (blocked_tx, blocked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocker = e.spawn_on(1, move || async move {
        blocked_tx.send(()).expect("the test waits");
        let _ = release_rx.recv();
    });
    blocked_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("shard 1 runs the blocker");
    let t0 = Instant::now();
    let err = e.stats().expect_err("shard 1 cannot answer");
    assert!(
        matches!(err, StatsError::NoAnswer { shard: 1, .. }),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    release_tx.send(()).expect("the blocker waits");
    assert_eq!(join_within_5s(blocker), Ok(()));
    let stats = e.stats().expect("shard 1 answers again");
    assert_eq!(stats[1].shard, 1);
    e.shutdown();
}
