//! The executor seam: the only module of Quark's product crates that names the executor
//! (monoio). A later switch of executor (compio is the alternative we watch) touches this
//! module and nothing else.
//!
//! What the engine needs from an executor, and nothing more: build a per-thread runtime
//! (io_uring, falling back to the epoll driver with a warning), spawn a local task, yield,
//! sleep, and a *doorbell*: a wake-up that another thread can ring and that this thread can
//! await as an ordinary I/O readiness, so that a parked shard sleeps inside the executor's own
//! wait (io_uring_enter / epoll_wait) together with its file and socket I/O.

pub mod log_io;
pub(crate) mod tcp;

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::task::{Context, Poll};
use std::time::Duration;

use monoio::io::AsyncReadRent;

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

/// Sleeps for `d` on the executor's timer (millisecond resolution).
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
/// `sleeping` is set by the shard just before it parks and cleared when it wakes. A ringer
/// writes the socket only when it is the one that clears `sleeping` (a `swap`), so a burst of
/// messages to a parked shard costs one system call, and messages to a running shard cost none.
pub(crate) struct Bell {
    sleeping: AtomicBool,
    fd: OwnedFd,
}

impl Bell {
    /// Wakes the shard if it is parked (or about to park).
    ///
    /// Callers publish their messages first; the `SeqCst` fence here pairs with the one in
    /// [`Bell::arm`] (a Dekker pair): either the shard sees the messages in its re-check, or we
    /// see `sleeping` and write.
    #[inline]
    pub(crate) fn ring(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.write();
        }
    }

    /// Unconditionally writes the socket (used by the shard to force one trip through the
    /// executor's wait, which reaps I/O completions and expired timers).
    pub(crate) fn write(&self) {
        let byte = 1u8;
        // SAFETY: writing one byte from a valid stack buffer to a socket we own. EAGAIN (a full
        // socket buffer) means a wake-up is already pending, which is all we want.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&byte as *const u8).cast(), 1) };
    }

    /// Marks the shard as about to sleep. The caller must re-check its queues afterwards and
    /// call [`Bell::disarm`] if it finds work.
    #[inline]
    pub(crate) fn arm(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Marks the shard as awake.
    #[inline]
    pub(crate) fn disarm(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

/// A finished read of the doorbell socket: the socket back, and how much was read.
type BellRead = (monoio::net::UnixStream, io::Result<usize>);

/// The shard-side half of the doorbell: awaited by the parked shard.
pub(crate) struct BellReceiver {
    stream: Option<monoio::net::UnixStream>,
    pending: Option<Pin<Box<dyn Future<Output = BellRead>>>>,
}

/// A new doorbell. The receiver must be created on (and used from) the shard's thread, inside
/// its runtime.
pub(crate) fn bell_pair() -> io::Result<(Bell, std::os::unix::net::UnixStream)> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((
        Bell {
            sleeping: AtomicBool::new(false),
            fd: OwnedFd::from(a),
        },
        b,
    ))
}

impl BellReceiver {
    /// Wraps the receiving socket; call on the shard thread inside its runtime.
    pub(crate) fn new(std_stream: std::os::unix::net::UnixStream) -> io::Result<Self> {
        Ok(BellReceiver {
            stream: Some(monoio::net::UnixStream::from_std(std_stream)?),
            pending: None,
        })
    }

    /// Polls for a ring. Keeps one read in flight across calls (a dropped park does not cancel
    /// it), so a ring that arrives while the shard is busy is consumed by the next park.
    pub(crate) fn poll_rung(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.is_none() {
            let Some(mut stream) = self.stream.take() else {
                return Poll::Pending;
            };
            self.pending = Some(Box::pin(async move {
                let buf = vec![0u8; 64];
                let (res, _buf) = stream.read(buf).await;
                (stream, res)
            }));
        }
        let fut = self
            .pending
            .as_mut()
            .expect("a read is in flight (set just above)");
        match fut.as_mut().poll(cx) {
            Poll::Ready((stream, res)) => {
                self.pending = None;
                self.stream = Some(stream);
                if let Err(e) = res {
                    tracing::error!(error = %e, "doorbell read failed");
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
