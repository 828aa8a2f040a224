//! Callers outside the node wait for room without spinning, and their wait is covered by the
//! ask's deadline (issue 13 §2): real shard threads, a deliberately slow actor, a tiny
//! injection queue and admission bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_shard::{
    block_on, Actor, ActorType, CallError, Context, Engine, EngineBuilder, EngineConfig, Handler,
    Message, ShardSpec,
};

/// An actor whose every turn blocks its shard for `TURN` (a stand-in for a slow handler).
struct Slow {
    ran: Arc<AtomicU64>,
}
impl Actor for Slow {
    const TYPE_NAME: &'static str = "slow";
}

const TURN: Duration = Duration::from_millis(20);

struct Work;
impl Message for Work {
    type Reply = ();
}
impl Handler<Work> for Slow {
    async fn handle(&mut self, _: Work, _: &Context<Self>) {
        std::thread::sleep(TURN);
        self.ran.fetch_add(1, Ordering::SeqCst);
    }
}

fn slow_engine(ran: &Arc<AtomicU64>) -> Engine {
    let ran = ran.clone();
    EngineBuilder::new(EngineConfig {
        shards: ShardSpec::Count(1),
        idle_spin: Duration::ZERO,
        external_queue_capacity: 1,
        external_inflight_max: 2,
        mailbox_capacity: 2,
        ..EngineConfig::default()
    })
    .register(ActorType::new(move |_| Slow { ran: ran.clone() }))
    .start()
    .unwrap()
}

/// CPU time (user + system) the calling thread has used, in clock ticks, read from
/// `/proc/self/task/<tid>/stat`.
fn thread_cpu_ticks() -> u64 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .expect("/proc/self/task/<tid>/stat is readable");
    // Fields after the command name (which is in parentheses and may contain spaces):
    // state is field 3, utime field 14, stime field 15.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime is a number");
    let stime: u64 = fields[12].parse().expect("stime is a number");
    utime + stime
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100)
}

/// Generous bound on how late a caller may see its deadline on a shared CI machine (the
/// precise p99 bound is asserted in `tests/deadlines.rs`).
const LATE_MAX: Duration = Duration::from_millis(150);

#[test]
fn waiting_outside_callers_use_no_cpu_and_end_at_their_deadline() {
    let ran = Arc::new(AtomicU64::new(0));
    let engine = slow_engine(&ran);
    let target = engine.actor_ref::<Slow>(1u64);
    let timeout = Duration::from_millis(300);
    const THREADS: usize = 64;
    const ASKS: usize = 3;
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let t = target.clone();
            std::thread::spawn(move || {
                let cpu0 = thread_cpu_ticks();
                let mut results = Vec::new();
                for _ in 0..ASKS {
                    let start = Instant::now();
                    // Half the threads block (parked), half drive the async ask with a plain
                    // `block_on` (woken by the deadline thread).
                    let r = if i % 2 == 0 {
                        t.ask_timeout_blocking(Work, timeout)
                    } else {
                        block_on(t.ask_timeout(Work, timeout))
                    };
                    results.push((r, start.elapsed()));
                }
                (results, thread_cpu_ticks() - cpu0)
            })
        })
        .collect();
    let mut ok = 0;
    let mut timed_out = 0;
    let mut cpu_ticks = 0;
    let mut worst = Duration::ZERO;
    for h in threads {
        let (results, cpu) = h.join().unwrap();
        cpu_ticks += cpu;
        for (r, took) in results {
            match &r {
                Ok(()) => ok += 1,
                Err(CallError::Timeout { timeout: t, .. }) => {
                    assert_eq!(*t, timeout);
                    assert!(took >= timeout, "timed out early: {took:?}");
                    timed_out += 1;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
            worst = worst.max(took);
            if took > timeout + Duration::from_millis(30) {
                eprintln!(
                    "late: {took:?} {:?}",
                    r.as_ref().err().map(|e| e.to_string())
                );
            }
        }
    }
    // 192 calls of which most wait ~300 ms: spinning waiters would use the machine's cores
    // for the whole run (hundreds of ticks). Parked waiters use next to nothing.
    let hz = ticks_per_second();
    assert!(
        cpu_ticks * 1000 / hz <= 50,
        "waiting callers used {cpu_ticks} ticks ({} ms) of CPU",
        cpu_ticks * 1000 / hz
    );
    assert!(
        worst <= timeout + LATE_MAX,
        "a call ended {worst:?} after it was made (deadline {timeout:?})"
    );
    assert_eq!(ok + timed_out, THREADS * ASKS);
    assert!(ok > 0, "the actor answered some calls");
    assert!(
        timed_out > 0,
        "the scenario overloads the actor: some calls time out"
    );
    let skipped: u64 = engine
        .stats()
        .expect("stats")
        .iter()
        .map(|s| s.asks_expired_skipped)
        .sum();
    eprintln!(
        "ok {ok}, timed out {timed_out}, turns run {}, skipped {skipped}, waiters' cpu {cpu_ticks} \
         ticks, slowest call {worst:?}",
        ran.load(Ordering::SeqCst)
    );
    engine.shutdown();
}

/// Many asks driven by one executor thread: a wait for admission must not hold that thread
/// (the others' deadlines would pass unobserved, and their calls would queue behind it).
#[test]
fn one_executor_thread_keeps_every_waiting_ask_moving() {
    let ran = Arc::new(AtomicU64::new(0));
    let engine = slow_engine(&ran);
    let target = engine.actor_ref::<Slow>(1u64);
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let results = block_on(futures::future::join_all((0..64).map(|_| {
        let t = &target;
        async move {
            let r = t.ask_timeout(Work, timeout).await;
            (r, start.elapsed())
        }
    })));
    let mut ok = 0;
    for (r, took) in &results {
        match r {
            Ok(()) => ok += 1,
            Err(CallError::Timeout { .. }) => assert!(*took >= timeout),
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(
            *took <= timeout + LATE_MAX,
            "a call ended {took:?} after the batch started (deadline {timeout:?})"
        );
    }
    assert!(ok > 0 && ok < 64, "{ok} of 64 answered");
    engine.shutdown();
}

/// `tell` from outside waits for an admission slot too (without spinning), and loses nothing.
#[test]
fn outside_tells_wait_for_room_and_all_arrive() {
    let ran = Arc::new(AtomicU64::new(0));
    let engine = slow_engine(&ran);
    let target = engine.actor_ref::<Slow>(1u64);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let t = target.clone();
            std::thread::spawn(move || {
                for _ in 0..3 {
                    if i % 2 == 0 {
                        t.tell_blocking(Work).unwrap();
                    } else {
                        block_on(t.tell(Work)).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in threads {
        h.join().unwrap();
    }
    // An ask after every tell was admitted returns once they ran (FIFO per shard queue).
    target
        .ask_timeout_blocking(Work, Duration::from_secs(10))
        .unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 25);
    engine.shutdown();
}

#[test]
fn blocking_calls_are_refused_on_a_shard_thread() {
    let ran = Arc::new(AtomicU64::new(0));
    let engine = slow_engine(&ran);
    let target = engine.actor_ref::<Slow>(1u64);
    let message = engine
        .spawn_on(0, move || async move {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = target.ask_blocking(Work);
            }))
            .err()
            .and_then(|p| p.downcast_ref::<String>().cloned())
        })
        .join()
        .expect("the task ran")
        .expect("ask_blocking panics on a shard thread");
    assert!(message.contains("shard thread"), "{message}");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "nothing was sent");
    engine.shutdown();
}
