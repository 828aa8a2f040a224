//! The executor seam: the only module of Quark's product crates that names the executor
//! (monoio). A later switch of executor (compio is the alternative we watch) touches this
//! module and nothing else.
//!
//! What the engine needs from an executor, and nothing more: build a per-thread runtime
//! (io_uring, falling back to the epoll driver with a warning), spawn a local task, yield,
//! sleep, and a *doorbell*: a wake-up that another thread can ring and that this thread can
//! await as an ordinary I/O readiness, so that a parked shard sleeps inside the executor's own
//! wait (io_uring_enter / epoll_wait) together with its file and socket I/O.

mod io_workers;
pub mod log_io;
pub(crate) mod tcp;

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::sync::{fence, AtomicBool, Ordering};

/// A shard thread's runtime.
pub(crate) type Runtime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

static LEGACY_WARNING: Once = Once::new();

/// Builds the runtime of one shard thread: io_uring with `entries` submission slots when the
/// kernel allows it (and `force_legacy` is false), else the legacy epoll driver (logged once per
/// process, loudly).
pub(crate) fn build_runtime(entries: u32, force_legacy: bool) -> io::Result<Runtime> {
    let rt: Runtime = if force_legacy {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .into()
    } else {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()?
    };
    if is_uring(&rt) {
        // A write-through log append runs on an io-wq worker; let it leave the shard's core
        // (see `io_workers`).
        if let Err(e) = io_workers::widen_io_workers() {
            tracing::debug!(error = %e, "io_uring workers stay on the shard's core");
        }
    }
    if matches!(rt, monoio::FusionRuntime::Legacy(_)) {
        LEGACY_WARNING.call_once(|| {
            tracing::warn!(
                forced = force_legacy,
                "shards run on the epoll fallback driver, not io_uring; \
                 expect lower throughput and higher latency for log and network I/O"
            );
        });
    }
    Ok(rt)
}

/// True if `rt` runs on io_uring.
pub(crate) fn is_uring(rt: &Runtime) -> bool {
    matches!(rt, monoio::FusionRuntime::Uring(_))
}

/// Spawns `fut` and returns a handle whose await yields its output.
pub(crate) fn spawn_joined<F>(fut: F) -> monoio::task::JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    monoio::spawn(fut)
}

/// Sleeps for `d` on the executor's timer (millisecond resolution: monoio's timer wheel rounds
/// a deadline up to its next millisecond tick). For sub-millisecond deadlines a shard uses its
/// own timers and [`DeadlineTimer`].
pub(crate) fn sleep(d: Duration) -> impl Future<Output = ()> {
    monoio::time::sleep(d)
}

/// Returns to the executor long enough for it to submit queued I/O operations and reap
/// completions without blocking (monoio's run loop does that, with one `io_uring_enter`, after
/// it has polled the ready tasks up to twice their number; the pump is the executor's only
/// task, so three yields in a row reach it).
pub(crate) async fn submit_io() {
    for _ in 0..3 {
        yield_now().await;
    }
}

/// Lets every other ready task of this thread run once, then resumes.
pub(crate) fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future of [`yield_now`].
pub(crate) struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The cross-thread half of a shard's doorbell: any thread may ring it.
///
/// The wake-up protocol lives in [`SleepFlag`]; the bell adds the `eventfd` write.
pub(crate) struct Bell {
    flag: SleepFlag,
    fd: OwnedFd,
}

impl Bell {
    /// Wakes the shard if it is parked (or about to park).
    ///
    /// Callers publish their messages first (see [`SleepFlag::claim_wake`]).
    #[inline]
    pub(crate) fn ring(&self) {
        if self.flag.claim_wake() {
            self.write();
        }
    }

    /// Unconditionally rings (used by the shard to force one trip through the executor's
    /// wait, which reaps I/O completions and expired timers).
    pub(crate) fn write(&self) {
        let one = 1u64;
        // SAFETY: writing 8 bytes from a valid stack buffer to an eventfd we own. The counter
        // cannot overflow in practice (it is read, and reset, at every wake-up); an error would
        // mean a wake-up is pending anyway.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Marks the shard as about to sleep. The caller must re-check its queues afterwards and
    /// call [`Bell::disarm`] if it finds work.
    #[inline]
    pub(crate) fn arm(&self) {
        self.flag.arm();
    }

    /// Marks the shard as awake.
    #[inline]
    pub(crate) fn disarm(&self) {
        self.flag.disarm();
    }
}

/// The doorbell's sleeping flag: the protocol that lets a shard park without losing a wake-up,
/// and lets senders skip the system call when the shard is awake.
///
/// `sleeping` is set by the shard just before it parks and cleared when it wakes. A ringer
/// writes the socket only when it is the one that clears `sleeping` (a `swap`), so a burst of
/// messages to a parked shard costs one system call, and messages to a running shard cost none.
///
/// It is a Dekker pair. The shard: `arm` (store `sleeping`, `SeqCst` fence), re-check the
/// rings, park only if they are empty. A sender: publish (a `Release` store of the ring's
/// tail), then [`SleepFlag::claim_wake`] (`SeqCst` fence, read `sleeping`). The two fences
/// order each side's store before its load, so at least one side sees the other's store:
/// either the shard's re-check sees the message, or the sender sees `sleeping` and rings. The
/// `loom_` model tests in this module check this with the real ring.
pub(crate) struct SleepFlag {
    sleeping: AtomicBool,
}

impl SleepFlag {
    pub(crate) fn new() -> Self {
        SleepFlag {
            sleeping: AtomicBool::new(false),
        }
    }

    /// For a sender that has just published: true if the shard is parked (or about to park)
    /// and this caller must wake it. At most one of several concurrent callers gets true.
    #[inline]
    pub(crate) fn claim_wake(&self) -> bool {
        fence(Ordering::SeqCst);
        self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel)
    }

    /// Marks the shard as about to sleep (then it re-checks its queues before it parks).
    #[inline]
    pub(crate) fn arm(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Marks the shard as awake.
    #[inline]
    pub(crate) fn disarm(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

/// A finished 8-byte read: the descriptor back, and how much was read.
type CounterReadDone = (monoio::fs::File, io::Result<usize>);

/// An 8-byte read of a kernel counter descriptor (an `eventfd` or a `timerfd`: the read
/// returns the counter and resets it) through the executor, kept in flight across polls: a
/// dropped park does not cancel it, so a count that arrives while the shard is busy is
/// consumed by the next poll. Shared by the doorbell and the deadline timer.
struct CounterRead {
    file: Option<monoio::fs::File>,
    pending: Option<Pin<Box<dyn Future<Output = CounterReadDone>>>>,
}

impl CounterRead {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(CounterRead {
            file: Some(monoio::fs::File::from_std(std::fs::File::from(fd))?),
            pending: None,
        })
    }

    /// Ready with the read's result once a read completed; starts one if none is in flight.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            let Some(file) = self.file.take() else {
                return Poll::Pending;
            };
            self.pending = Some(Box::pin(async move {
                // A counter descriptor's read takes exactly 8 bytes.
                let buf = vec![0u8; 8];
                let (res, _buf) = file.read_at(buf, 0).await;
                (file, res)
            }));
        }
        let fut = self
            .pending
            .as_mut()
            .expect("a read is in flight (set just above)");
        match fut.as_mut().poll(cx) {
            Poll::Ready((file, res)) => {
                self.pending = None;
                self.file = Some(file);
                Poll::Ready(res)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The shard's end of its doorbell (an `eventfd`), handed to the shard's thread.
pub(crate) type BellEnd = OwnedFd;

/// The shard-side half of the doorbell: awaited by the parked shard.
pub(crate) struct BellReceiver {
    read: CounterRead,
}

/// A new doorbell: an `eventfd` (a counter: a ring is an 8-byte write, cheaper for the kernel
/// than a byte through a socket pair, which the doorbell was until issue 22), one descriptor
/// for the ringers and one for the shard. The receiver must be created on (and used from) the
/// shard's thread, inside its runtime.
pub(crate) fn bell_pair() -> io::Result<(Bell, BellEnd)> {
    // SAFETY: eventfd has no memory preconditions; the result is checked. Blocking mode: the
    // shard reads it through io_uring (which waits for it without blocking the thread), and
    // a write blocks only at a counter of 2^64 - 2.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let ring = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let end = ring.try_clone()?;
    Ok((
        Bell {
            flag: SleepFlag::new(),
            fd: ring,
        },
        end,
    ))
}

impl BellReceiver {
    /// Wraps the shard's end of the doorbell; call on the shard thread inside its runtime.
    pub(crate) fn new(end: BellEnd) -> io::Result<Self> {
        Ok(BellReceiver {
            read: CounterRead::new(end)?,
        })
    }

    /// Polls for a ring. Keeps one read in flight across calls (a dropped park does not cancel
    /// it), so a ring that arrives while the shard is busy is consumed by the next park.
    pub(crate) fn poll_rung(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.read.poll_read(cx) {
            Poll::Ready(res) => {
                if let Err(e) = res {
                    tracing::error!(error = %e, "doorbell read failed");
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A parked shard's alarm clock to the microsecond: a `timerfd` (`CLOCK_MONOTONIC`, the clock of
/// `Instant` on Linux) read through the executor like the doorbell, so the shard sleeps in the
/// executor's own wait until its next deadline. The executor's timer (monoio's wheel) rounds a
/// deadline up to its next millisecond; a timerfd is a kernel high-resolution timer with no
/// timer slack, so the shard wakes within the kernel's wake-up latency (tens of µs) of it.
///
/// Never early: [`DeadlineTimer::poll_expired`] reports expiry only once `Instant::now()` has
/// reached the deadline last armed (a read that completes for an older setting, while the
/// shard was busy, is discarded and a new one started).
pub(crate) struct DeadlineTimer {
    /// The timerfd (owned by `read`).
    raw: std::os::fd::RawFd,
    read: CounterRead,
    armed: Option<std::time::Instant>,
}

impl DeadlineTimer {
    /// A disarmed timer; call on the shard thread inside its runtime.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create has no memory preconditions; the result is checked. Blocking
        // mode, like the doorbell's eventfd: the executor waits for it without blocking.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(DeadlineTimer {
            raw: fd,
            read: CounterRead::new(owned)?,
            armed: None,
        })
    }

    /// Sets the alarm for `at` (replacing any earlier setting). Costs one system call unless
    /// `at` is already the armed deadline.
    pub(crate) fn arm(&mut self, at: std::time::Instant) -> io::Result<()> {
        if self.armed == Some(at) {
            return Ok(());
        }
        // Relative to now, read just before the call: the alarm goes off at or after `at`. A
        // zero value would disarm the timer, so a deadline already passed arms 1 ns.
        let left = at.saturating_duration_since(std::time::Instant::now());
        let left = left.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `raw` is the open timerfd owned by this struct (through `file` or the read
        // in flight); `spec` is a valid itimerspec on the stack, the old value is not wanted.
        let rc = unsafe { libc::timerfd_settime(self.raw, 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            self.armed = None;
            return Err(io::Error::last_os_error());
        }
        self.armed = Some(at);
        Ok(())
    }

    /// Ready once the armed deadline has passed (keeps one read in flight across calls, like
    /// the doorbell). Pending forever while disarmed.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(at) = self.armed else {
                return Poll::Pending;
            };
            match self.read.poll_read(cx) {
                Poll::Ready(Err(e)) => {
                    tracing::error!(error = %e, "deadline timer read failed");
                    self.armed = None;
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(_)) => {
                    if std::time::Instant::now() >= at {
                        self.armed = None;
                        return Poll::Ready(());
                    }
                    // An expiry of an older setting: read again for the current one.
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Model tests of the doorbell protocol with the real ring (run under loom: see `ring`'s).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::SleepFlag;
    use crate::ring::ring;
    use crate::sync::{Arc, AtomicUsize, Ordering};
    use loom::thread;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(3);
        }
        b.check(f);
    }

    /// A sender as the engine's flush does it: publish the ring's tail, then ring the bell;
    /// "ringing" (the socket write) is counted in `rings`.
    fn send(
        flag: &Arc<SleepFlag>,
        rings: &Arc<AtomicUsize>,
    ) -> impl FnOnce(crate::ring::Producer<u32>) + 'static {
        let (flag, rings) = (flag.clone(), rings.clone());
        move |mut p| {
            p.try_push(7).expect("the ring has room");
            p.publish();
            if flag.claim_wake() {
                rings.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// The shard parks while a sender publishes: either the shard's re-check after `arm`
    /// sees the message, or the sender sees `sleeping` and rings. Never neither.
    #[test]
    fn loom_no_lost_wakeup_when_a_shard_parks_while_a_sender_publishes() {
        model(|| {
            let (p, mut c) = ring::<u32>(2);
            let flag = Arc::new(SleepFlag::new());
            let rings = Arc::new(AtomicUsize::new(0));
            let sender = send(&flag, &rings);
            let sender = thread::spawn(move || sender(p));
            // The pump with nothing to do: arm, re-check the rings, park unless they have work.
            flag.arm();
            let found = c.has_pending();
            if found {
                flag.disarm();
            }
            sender.join().expect("the sender does not panic");
            if !found {
                // Parked: only the doorbell wakes the shard.
                assert_eq!(
                    rings.load(Ordering::Acquire),
                    1,
                    "lost wake-up: the shard parked with a message in its ring and nobody rang"
                );
                flag.disarm();
            }
            assert_eq!(c.pop(), Some(7), "the woken shard finds the message");
        });
    }

    /// Two senders (two rings) and one parking shard: the shard sees a message or is rung, and
    /// a burst costs at most one ring per park.
    #[test]
    fn loom_two_senders_one_parking_shard_at_most_one_ring() {
        model(|| {
            let (p1, mut c1) = ring::<u32>(2);
            let (p2, mut c2) = ring::<u32>(2);
            let flag = Arc::new(SleepFlag::new());
            let rings = Arc::new(AtomicUsize::new(0));
            let s1 = send(&flag, &rings);
            let s1 = thread::spawn(move || s1(p1));
            let s2 = send(&flag, &rings);
            let s2 = thread::spawn(move || s2(p2));
            flag.arm();
            let found = c1.has_pending() || c2.has_pending();
            if found {
                flag.disarm();
            }
            s1.join().expect("sender 1 does not panic");
            s2.join().expect("sender 2 does not panic");
            let rung = rings.load(Ordering::Acquire);
            assert!(rung <= 1, "one ring per park, got {rung}");
            if !found {
                assert_eq!(rung, 1, "lost wake-up with two senders");
            }
            assert_eq!((c1.pop(), c2.pop()), (Some(7), Some(7)));
        });
    }
}
