//! Connections: the dialed link to each peer node (connect, handshake, serve, reconnect with
//! backoff), the accept loop, and the tasks of one established connection (reader, writer,
//! heartbeat). Every task runs on the shard's own scheduler.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use quark_net::{
    Acceptor, Backoff, CloseReason, DriveError, FailureDetector, FrameDecoder, FrameError,
    FrameHead, FrameKind, HandshakeConfig, HandshakeDriver, HandshakeError, Initiator, Liveness,
    OutBuf, PeerInfo, PeerRole, PROTOCOL_VERSION, READ_CHUNK_BYTES,
};
use quark_placement::NodeId;
use rustc_hash::FxHashSet;

use super::stream::{self, ConnReader, ConnWriter, StreamError};
use crate::calls::{CallId, CallOutcome};
use crate::engine::shared::Phase;
use crate::error::{CallError, LinkDown};
use crate::rt::tcp;
use crate::shard::Shard;

/// The outgoing side of one connection (or one connection attempt): the frame buffer senders
/// append to, the writer's waker, and the calls waiting for a reply on it.
pub(crate) struct Outbound {
    pub(crate) out: RefCell<OutBuf>,
    writer: RefCell<Option<Waker>>,
    room: RefCell<Vec<Waker>>,
    /// Set once the handshake completed; frames queued before are flushed then.
    ready: Cell<bool>,
    closed: Cell<bool>,
    fd: Cell<Option<RawFd>>,
    /// Correlation ids of asks sent on this connection and not yet answered.
    pub(crate) pending: RefCell<FxHashSet<u64>>,
    pub(crate) frames_queued: Cell<u64>,
    /// Tells appended to `out` since the writer last took it.
    pub(crate) tells_queued: Cell<u64>,
    /// Tells in the flush the writer is carrying out (0 once it was written).
    tells_writing: Cell<u64>,
    detector: RefCell<Option<FailureDetector>>,
    pub(crate) out_bytes_max: usize,
    /// Requests from the peer being served (replies not yet queued).
    serving: Cell<usize>,
    /// Estimated bytes of one reply on this connection: the largest recent reply, decaying by
    /// 1/8 per reply. A request being served counts as this many bytes of backlog, so that
    /// the replies of requests admitted while the backlog was low cannot overshoot
    /// `out_bytes_max` by `requests_inflight_max` replies.
    reply_bytes_est: Cell<usize>,
    serving_max: usize,
    reader: RefCell<Option<Waker>>,
    /// Bytes of the flush the writer is carrying out (taken from `out`, not yet written).
    writing: Cell<usize>,
    /// True for a connection the peer sends requests on (accepted): it is not read while its
    /// backlog (`out` + `writing`) is at or over `out_bytes_max`. A dialed link is always
    /// read: what arrives there are replies, which free the senders.
    pause_reads_when_full: bool,
    /// Since when the backlog has been seen at or over `out_bytes_max` (`None`: under it).
    over_since: Cell<Option<Instant>>,
    /// Why the connection was closed from inside (heartbeat timeout, stalled peer).
    close_reason: Cell<Option<CloseReason>>,
}

impl Outbound {
    fn new(
        out_bytes_max: usize,
        requests_inflight_max: usize,
        pause_reads_when_full: bool,
    ) -> Outbound {
        Outbound {
            out: RefCell::new(OutBuf::with_capacity(64 * 1024)),
            writer: RefCell::new(None),
            room: RefCell::new(Vec::new()),
            ready: Cell::new(false),
            closed: Cell::new(false),
            fd: Cell::new(None),
            pending: RefCell::new(FxHashSet::default()),
            frames_queued: Cell::new(0),
            tells_queued: Cell::new(0),
            tells_writing: Cell::new(0),
            detector: RefCell::new(None),
            out_bytes_max,
            serving: Cell::new(0),
            // Until a reply was measured: at most 64 requests in flight per
            // `out_bytes_max` (the estimate decays quickly for small replies).
            reply_bytes_est: Cell::new(out_bytes_max / 64),
            serving_max: requests_inflight_max.max(1),
            reader: RefCell::new(None),
            writing: Cell::new(0),
            pause_reads_when_full,
            over_since: Cell::new(None),
            close_reason: Cell::new(None),
        }
    }

    /// Bytes queued for the peer and not yet written: the outgoing buffer plus the flush in
    /// progress.
    pub(crate) fn backlog(&self) -> usize {
        self.out.borrow().len() + self.writing.get()
    }

    /// Bytes the reader counts against `out_bytes_max`: the backlog plus the estimated
    /// replies of the requests being served.
    fn committed(&self) -> usize {
        self.backlog()
            + self
                .serving
                .get()
                .saturating_mul(self.reply_bytes_est.get())
    }

    /// True if the reader must not read now: the peer has not taken `out_bytes_max` bytes
    /// of what it was sent, counting the replies of the requests being served.
    fn reads_blocked(&self) -> bool {
        self.pause_reads_when_full && self.committed() >= self.out_bytes_max
    }

    /// Wakes the tasks waiting for room in the backlog (senders of tells, and the reader).
    fn wake_room(&self) {
        for w in self.room.borrow_mut().drain(..) {
            w.wake();
        }
        if let Some(w) = self.reader.borrow_mut().take() {
            w.wake();
        }
    }

    /// Records a reply of `bytes` queued on this connection (updates the reply estimate).
    pub(crate) fn reply_queued(&self, bytes: usize) {
        let e = self.reply_bytes_est.get();
        self.reply_bytes_est.set(bytes.max(e - e / 8));
    }

    /// Waits until the reader may read again (see `reads_blocked`) or the connection closed.
    /// Woken by the writer when it takes the buffer and when a flush completes
    /// (`wake_room`), and by `request_done`.
    async fn backlog_room(&self) {
        poll_fn(|cx| {
            if self.closed.get() || !self.reads_blocked() {
                Poll::Ready(())
            } else {
                *self.reader.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Checks the stall bound at `now`: returns true if the backlog has been at or over
    /// `out_bytes_max` for at least `stall` (the caller closes the connection).
    fn stalled(&self, now: Instant, stall: Duration) -> bool {
        if self.backlog() < self.out_bytes_max {
            self.over_since.set(None);
            return false;
        }
        match self.over_since.get() {
            None => {
                self.over_since.set(Some(now));
                false
            }
            Some(t) => now.duration_since(t) >= stall,
        }
    }

    /// Closes the connection, recording why (the reader reports the first reason).
    fn close_for(&self, reason: CloseReason) {
        if !self.closed.get() {
            self.close_reason.set(Some(reason));
        }
        self.close();
    }

    pub(crate) fn request_started(&self) {
        self.serving.set(self.serving.get() + 1);
    }

    pub(crate) fn request_done(&self) {
        let n = self.serving.get().saturating_sub(1);
        self.serving.set(n);
        // The reader waits either for a request slot or for room in the backlog, which
        // counts the requests being served.
        if let Some(w) = self.reader.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits while `serving_max` requests from the peer are in progress (backpressure: the
    /// peer's writes then wait for TCP's window).
    async fn serving_room(&self) {
        poll_fn(|cx| {
            if self.closed.get() || self.serving.get() < self.serving_max {
                Poll::Ready(())
            } else {
                *self.reader.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Tells the writer there is something to send.
    pub(crate) fn wake_writer(&self) {
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until the outgoing buffer is under its bound (or the connection closed).
    pub(crate) async fn room(&self) {
        poll_fn(|cx| {
            if self.closed.get() || self.out.borrow().len() < self.out_bytes_max {
                Poll::Ready(())
            } else {
                self.room.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Appends an empty-payload frame (heartbeats).
    fn push_empty(&self, head: FrameHead) {
        if self.out.borrow_mut().push_empty(head).is_ok() {
            self.frames_queued.set(self.frames_queued.get() + 1);
            self.wake_writer();
        }
    }

    /// Closes the connection: the socket is shut down (its reader sees the end), the writer
    /// and everyone waiting for room wake up.
    pub(crate) fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        if let Some(fd) = self.fd.take() {
            tcp::shutdown(fd);
        }
        self.wake_writer();
        for w in self.room.borrow_mut().drain(..) {
            w.wake();
        }
        if let Some(w) = self.reader.borrow_mut().take() {
            w.wake();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// A connect and handshake are in progress: requests queue (bounded) and are sent once
    /// the handshake completes, or fail if it does not.
    Connecting,
    /// Established.
    Up,
    /// The last attempt failed; waiting for the next (backoff). Requests fail at once.
    Down,
}

/// This shard's dialed connection to one peer node, across reconnects.
pub(crate) struct Link {
    pub(crate) peer: NodeId,
    /// The peer's address: fixed with static membership; a dynamic membership may change it
    /// (a member re-registered from another address), read at each dial.
    addr: Cell<SocketAddr>,
    state: Cell<LinkState>,
    wire: RefCell<Option<Rc<Outbound>>>,
    pub(crate) last_drop_log: Cell<Option<Instant>>,
    /// The last connection or handshake error (or why the last connection closed); `None`
    /// while up or before the first attempt ended.
    last_error: RefCell<Option<LinkDown>>,
    pub(crate) dropped_since_log: Cell<u64>,
    /// The peer's application version, from its last handshake (empty: not set or unknown).
    peer_version: RefCell<String>,
}

impl Link {
    pub(crate) fn new(peer: NodeId, addr: SocketAddr) -> Link {
        Link {
            peer,
            addr: Cell::new(addr),
            state: Cell::new(LinkState::Connecting),
            wire: RefCell::new(None),
            last_drop_log: Cell::new(None),
            last_error: RefCell::new(None),
            dropped_since_log: Cell::new(0),
            peer_version: RefCell::new(String::new()),
        }
    }

    /// The peer's address (the next dial's).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr.get()
    }

    /// Sets the peer's address for the next dial (a dynamic membership saw it change).
    pub(crate) fn set_addr(&self, addr: SocketAddr) {
        self.addr.set(addr);
    }

    /// The peer's application version, from the handshake of the connection that is up now
    /// (empty while the link is not up: a restarted peer may run another version).
    pub(crate) fn peer_version(&self) -> String {
        if !self.is_up() {
            return String::new();
        }
        self.peer_version.borrow().clone()
    }

    /// Why the link is down, where known (the source of `NodeUnavailable`).
    pub(crate) fn cause(&self) -> Option<LinkDown> {
        self.last_error.borrow().clone()
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state.get() == LinkState::Up
    }

    /// The kernel's smoothed round-trip time of the link's TCP connection and its variation,
    /// µs (`TCP_INFO`: measured from the acknowledgements of what was sent, heartbeats
    /// included; no frame of Quark's own). `None` while the link is not up.
    pub(crate) fn tcp_rtt_us(&self) -> Option<(u32, u32)> {
        if !self.is_up() {
            return None;
        }
        let wire = self.wire.borrow();
        let w = wire.as_ref()?;
        if w.closed.get() {
            return None;
        }
        let fd = w.fd.get()?;
        // SAFETY: `tcp_info` is plain data (all-zero is a valid value); `getsockopt` writes at
        // most `len` bytes into it. `fd` is the open socket of this connection (not closed:
        // checked above, and closing happens on this thread).
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let r = libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                std::ptr::addr_of_mut!(info).cast(),
                &mut len,
            );
            (r == 0 && info.tcpi_rtt > 0).then_some((info.tcpi_rtt, info.tcpi_rttvar))
        }
    }

    /// The connection to send on, unless the peer is known to be unreachable.
    pub(crate) fn wire(&self) -> Option<Rc<Outbound>> {
        if self.state.get() == LinkState::Down {
            return None;
        }
        self.wire
            .borrow()
            .as_ref()
            .filter(|w| !w.is_closed())
            .cloned()
    }
}

/// Starts the shard's transport tasks: one link manager per peer, and the accept loop on the
/// shard that owns the listener.
pub(crate) fn start(core: &Rc<Shard>, listener: Option<std::net::TcpListener>) {
    let Some(net) = &core.net else { return };
    for link in net.links.values() {
        start_link(core, link);
    }
    if core.id == 0 && net.cfg.role == PeerRole::Member {
        core.sched.spawn(super::members::join(core.clone()));
    }
    if let Some(l) = listener {
        match tcp::Listener::from_std(l) {
            Ok(l) => {
                let core2 = core.clone();
                core.sched.spawn(async move { accept_loop(core2, l).await });
            }
            Err(e) => tracing::error!(shard = core.id, error = %e, "cannot register the listener"),
        }
    }
}

/// Starts the link manager of one peer.
fn start_link(core: &Rc<Shard>, link: Rc<Link>) {
    let net = core.net();
    // The first attempt's wire exists before the task runs, so that sends made right after
    // start-up queue instead of failing.
    *link.wire.borrow_mut() = Some(Rc::new(Outbound::new(
        net.cfg.out_bytes_max,
        net.cfg.requests_inflight_max,
        false,
    )));
    let core2 = core.clone();
    core.sched.spawn(async move { run_link(core2, link).await });
}

/// Adds a link to `peer` at `addr` (a member that joined a dynamic membership) and starts it;
/// a known peer's address is updated for its next dial instead.
pub(crate) fn add_peer(core: &Rc<Shard>, peer: NodeId, addr: SocketAddr) {
    let Some(net) = &core.net else { return };
    if peer == net.cfg.node_id {
        return;
    }
    if let Some(l) = net.links.get(&peer) {
        if l.addr() != addr {
            tracing::info!(shard = core.id, peer, old = %l.addr(), new = %addr,
                "peer address changed");
            l.set_addr(addr);
        }
        return;
    }
    if !running(core) {
        return;
    }
    let link = Rc::new(Link::new(peer, addr));
    net.links.insert(link.clone());
    tracing::info!(shard = core.id, peer, %addr, "dialing a new member");
    start_link(core, link);
}

fn handshake_config(core: &Shard) -> HandshakeConfig {
    let cfg = &core.net().cfg;
    HandshakeConfig {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: cfg.membership.cluster_id().to_owned(),
        node_id: cfg.node_id,
        role: cfg.role,
        secret: cfg.secret.clone(),
        shard: core.id,
        app_version: core.node.config.app_version.clone(),
    }
}

fn running(core: &Shard) -> bool {
    core.node.phase() == Phase::Running || core.node.phase() == Phase::Draining
}

/// Why a connection attempt or a connection ended (for logs and counters).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: HandshakeError,
    },
    #[error("handshake with {addr}: connection closed by the peer")]
    HandshakeClosed { addr: SocketAddr },
    #[error("connection to {addr} closed ({reason:?})")]
    Closed {
        addr: SocketAddr,
        reason: CloseReason,
    },
    #[error("handshake with {addr}")]
    HandshakeFrame {
        addr: SocketAddr,
        #[source]
        source: FrameError,
    },
    #[error("handshake with {addr}")]
    HandshakeIo {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {addr}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: quark_net::tls::TlsSessionError,
    },
    #[error(
        "handshake with {addr}: the peer speaks TLS (it sent a TLS record) and this side has no TLS configured ([cluster.tls])"
    )]
    TlsPeer { addr: SocketAddr },
}

impl LinkError {
    fn stream(addr: SocketAddr, e: StreamError) -> LinkError {
        match e {
            StreamError::Io(source) => LinkError::HandshakeIo { addr, source },
            StreamError::Tls(source) => LinkError::Tls { addr, source },
        }
    }

    fn close_reason(&self) -> CloseReason {
        match self {
            LinkError::Connect { .. } | LinkError::HandshakeIo { .. } => CloseReason::Io,
            LinkError::HandshakeFrame { source, .. } => CloseReason::from_frame_error(source),
            _ => CloseReason::HandshakeFailed,
        }
    }
}

/// The role the handshake plays.
enum Side {
    Dial(Initiator),
    Accept(Acceptor),
}

/// Runs a handshake on a fresh connection, through the sans-IO driver `quark::probe` uses
/// too. On success, returns the peer and the decoder, raised to the connection's frame bound
/// (it may already hold frames that followed the handshake).
async fn handshake(
    side: Side,
    addr: SocketAddr,
    rd: &mut ConnReader,
    wr: &mut ConnWriter,
    frame_bytes_max: u32,
    timeout: Duration,
) -> Result<(PeerInfo, FrameDecoder), LinkError> {
    let drive_error = |e| match e {
        DriveError::Handshake(source) => LinkError::Handshake { addr, source },
        DriveError::Frame(source) => LinkError::HandshakeFrame { addr, source },
        DriveError::Overflow { bytes, .. } => LinkError::HandshakeFrame {
            addr,
            source: FrameError::Oversized {
                len: bytes as u64,
                max: frame_bytes_max,
            },
        },
        _ => LinkError::HandshakeClosed { addr },
    };
    let mut hs = match side {
        Side::Dial(init) => HandshakeDriver::dial(init, frame_bytes_max).map_err(drive_error)?,
        Side::Accept(acc) => HandshakeDriver::accept(acc, frame_bytes_max),
    };
    let run = async {
        // TLS first (when configured): the Quark handshake runs inside it.
        stream::tls_handshake(rd, wr)
            .await
            .map_err(|e| LinkError::stream(addr, e))?;
        let mut buf = vec![0u8; 4096];
        let mut first = true;
        loop {
            send_handshake(wr, hs.out(), addr).await?;
            let n = rd
                .read(&mut buf)
                .await
                .map_err(|e| LinkError::stream(addr, e))?;
            if n == 0 {
                return Err(LinkError::HandshakeClosed { addr });
            }
            if std::mem::take(&mut first)
                && !rd.is_tls()
                && quark_net::tls::looks_like_tls(&buf[..n])
            {
                // A TLS peer on a plaintext connection: say so instead of "invalid frame".
                return Err(LinkError::TlsPeer { addr });
            }
            match hs.on_bytes(&buf[..n]) {
                Ok(None) => {}
                Ok(Some(peer)) => {
                    send_handshake(wr, hs.out(), addr).await?;
                    return Ok(peer);
                }
                Err(e) => {
                    // Best effort: the Reject tells the peer why.
                    let _ = send_handshake(wr, hs.out(), addr).await;
                    return Err(drive_error(e));
                }
            }
        }
    };
    match tcp::timeout(timeout, run).await {
        Some(Ok(peer)) => Ok((peer, hs.into_decoder())),
        Some(Err(e)) => Err(e),
        None => {
            let source = hs.on_timeout();
            let out = std::mem::take(hs.out());
            let _ = tcp::timeout(Duration::from_millis(100), wr.write_all(out)).await;
            Err(LinkError::Handshake { addr, source })
        }
    }
}

/// Writes what the handshake has to send.
async fn send_handshake(
    wr: &mut ConnWriter,
    out: &mut OutBuf,
    addr: SocketAddr,
) -> Result<(), LinkError> {
    if out.is_empty() {
        return Ok(());
    }
    let (res, mut back) = wr.write_all(std::mem::take(out)).await;
    back.clear();
    *out = back;
    res.map_err(|e| LinkError::stream(addr, e))
}

fn nonce() -> [u8; quark_net::NONCE_BYTES] {
    rand::random()
}

/// The link manager of one peer: connect, handshake, serve until the connection ends, then
/// fail what waited on it and reconnect after a backoff with jitter. Runs until the shard
/// stops.
async fn run_link(core: Rc<Shard>, link: Rc<Link>) {
    let cfg = core.net().cfg.clone();
    let mut backoff = Backoff::new(cfg.backoff);
    let mut last_log: Cell<Option<Instant>> = Cell::new(None);
    let mut was_up = false;
    while running(&core) {
        let wire = link_wire(&link, &cfg);
        link.state.set(LinkState::Connecting);
        let cause = match dial(&core, &link, &cfg).await {
            Ok((rd, wr, fd, dec)) => {
                backoff.reset();
                link_up(&core, &link, was_up);
                was_up = true;
                let reason = serve(&core, &wire, rd, wr, fd, dec, link.peer, link.addr()).await;
                tracing::warn!(shard = core.id, peer = link.peer, addr = %link.addr(),
                    ?reason, "link to peer closed; reconnecting");
                *last_log.get_mut() = None;
                LinkDown::new(LinkError::Closed {
                    addr: link.addr(),
                    reason,
                })
            }
            Err(e) => {
                let net = core.net();
                net.stats.peers.borrow_mut().record_close(e.close_reason());
                let quiet = matches!(e, LinkError::Connect { .. })
                    && !super::log_due(&last_log, Instant::now(), Duration::from_secs(5));
                if !quiet {
                    tracing::warn!(shard = core.id, peer = link.peer,
                        error = %crate::error::ErrorChain(&e),
                        attempt = backoff.attempts(), "cannot reach peer");
                }
                LinkDown::new(e)
            }
        };
        *link.last_error.borrow_mut() = Some(cause.clone());
        link.state.set(LinkState::Down);
        wire.close();
        fail_pending(&core, &wire, link.peer, Some(cause));
        if !running(&core) {
            break;
        }
        let delay = backoff
            .next_delay(rand::random())
            .unwrap_or(cfg.backoff.max);
        crate::rt::sleep(delay.max(Duration::from_millis(1))).await;
    }
}

/// The link's outbound side for the next connection: the current one if it is still open
/// (senders may have queued frames on it while the link was down), else a new one.
fn link_wire(link: &Link, cfg: &super::NetConfig) -> Rc<Outbound> {
    let mut slot = link.wire.borrow_mut();
    match slot.as_ref() {
        Some(w) if !w.is_closed() => w.clone(),
        _ => {
            let w = Rc::new(Outbound::new(
                cfg.out_bytes_max,
                cfg.requests_inflight_max,
                false,
            ));
            *slot = Some(w.clone());
            w
        }
    }
}

/// Connects to the link's peer and runs the handshake as the dialing side.
async fn dial(
    core: &Rc<Shard>,
    link: &Link,
    cfg: &super::NetConfig,
) -> Result<(ConnReader, ConnWriter, RawFd, FrameDecoder), LinkError> {
    let (rd, wr, fd) = tcp::connect(link.addr(), cfg.connect_timeout)
        .await
        .map_err(|source| LinkError::Connect {
            addr: link.addr(),
            source,
        })?;
    let tls = match &cfg.tls {
        Some(t) => Some(
            t.client_session(link.addr().ip())
                .map_err(|source| LinkError::Tls {
                    addr: link.addr(),
                    source,
                })?,
        ),
        None => None,
    };
    let (mut rd, mut wr) = stream::wrap(rd, wr, tls);
    let init = Initiator::new(handshake_config(core), nonce(), Some(link.peer));
    let (peer, dec) = handshake(
        Side::Dial(init),
        link.addr(),
        &mut rd,
        &mut wr,
        cfg.frame_bytes_max,
        cfg.handshake_timeout,
    )
    .await?;
    *link.peer_version.borrow_mut() = peer.app_version;
    Ok((rd, wr, fd, dec))
}

/// Counts and logs an established link.
fn link_up(core: &Shard, link: &Link, reconnect: bool) {
    let net = core.net();
    {
        let mut peers = net.stats.peers.borrow_mut();
        peers.connects += 1;
        peers.handshakes_ok += 1;
    }
    tracing::info!(shard = core.id, peer = link.peer, addr = %link.addr(),
        reconnect, "link to peer established");
    *link.last_error.borrow_mut() = None;
    link.state.set(LinkState::Up);
}

/// Fails every ask still waiting for a reply on `wire` with `NodeUnavailable`, and counts the
/// tells that were queued on it but not written (or whose write failed) as dropped.
fn fail_pending(core: &Shard, wire: &Outbound, peer: NodeId, cause: Option<LinkDown>) {
    let pending: Vec<u64> = wire.pending.borrow_mut().drain().collect();
    let net = core.net();
    let lost = wire.tells_queued.replace(0) + wire.tells_writing.replace(0);
    if lost > 0 {
        let s = &net.stats.tells_dropped;
        s.set(s.get() + lost);
        tracing::warn!(
            shard = core.id,
            peer,
            lost,
            dropped_total = s.get(),
            "tells queued for the peer were not written before its connection closed"
        );
    }
    for corr in pending {
        net.stats
            .asks_unavailable
            .set(net.stats.asks_unavailable.get() + 1);
        core.complete_call(
            CallId::from_u64(corr),
            CallOutcome::Failed(CallError::NodeUnavailable {
                node: peer,
                actor: None,
                cause: cause.clone(),
            }),
        );
    }
}

async fn accept_loop(core: Rc<Shard>, listener: tcp::Listener) {
    let net = core.net();
    let cfg = net.cfg.clone();
    while running(&core) {
        let (rd, wr, fd, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(shard = core.id, error = %e, "accept failed");
                crate::rt::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let core2 = core.clone();
        let cfg = cfg.clone();
        core.sched.spawn(async move {
            let core = core2;
            let net = core.net();
            net.stats.peers.borrow_mut().connects += 1;
            let tls = match cfg.tls.as_ref().map(|t| t.server_session()).transpose() {
                Ok(t) => t,
                Err(source) => {
                    let e = LinkError::Tls { addr, source };
                    tracing::error!(shard = core.id, %addr, error = %crate::error::ErrorChain(&e),
                        "refused an incoming connection");
                    return;
                }
            };
            let (mut rd, mut wr) = stream::wrap(rd, wr, tls);
            let acc = Acceptor::new(handshake_config(&core), nonce());
            let (peer, dec) = match handshake(
                Side::Accept(acc),
                addr,
                &mut rd,
                &mut wr,
                cfg.frame_bytes_max,
                cfg.handshake_timeout,
            )
            .await
            {
                Ok(p) => p,
                Err(e) => {
                    net.stats.peers.borrow_mut().record_close(e.close_reason());
                    tracing::warn!(shard = core.id, %addr, error = %crate::error::ErrorChain(&e),
                        "refused an incoming connection");
                    return;
                }
            };
            if peer.role == PeerRole::Member
                && !cfg.dynamic_members
                && !cfg.membership.contains(peer.node_id)
            {
                net.stats
                    .peers
                    .borrow_mut()
                    .record_close(CloseReason::HandshakeFailed);
                tracing::warn!(shard = core.id, %addr, peer = peer.node_id,
                    "refused an incoming connection: node id is not a member of the cluster");
                return;
            }
            net.stats.peers.borrow_mut().handshakes_ok += 1;
            tracing::debug!(shard = core.id, %addr, peer = peer.node_id, role = ?peer.role,
                "accepted a connection");
            let wire = Rc::new(Outbound::new(
                cfg.out_bytes_max,
                cfg.requests_inflight_max,
                true,
            ));
            net.accepted.borrow_mut().retain(|w| w.strong_count() > 0);
            net.accepted.borrow_mut().push(Rc::downgrade(&wire));
            super::members::greet(&core, &wire);
            let reason = serve(&core, &wire, rd, wr, fd, dec, peer.node_id, addr).await;
            wire.close();
            tracing::debug!(shard = core.id, %addr, peer = peer.node_id, ?reason,
                "incoming connection closed");
        });
    }
}

/// Serves one established connection until it ends: this task reads and dispatches frames;
/// a writer task flushes `wire` (one write per flush); a heartbeat task watches the peer.
#[allow(clippy::too_many_arguments)]
async fn serve(
    core: &Rc<Shard>,
    wire: &Rc<Outbound>,
    mut rd: ConnReader,
    wr: ConnWriter,
    fd: RawFd,
    mut dec: FrameDecoder,
    peer: NodeId,
    addr: SocketAddr,
) -> CloseReason {
    let net = core.net();
    start_conn_tasks(core, wire, wr, fd, peer, addr);
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut last_data = Instant::now();
    let mut drained = false;
    // Frames that arrived together with the end of the handshake first.
    let mut ended = dispatch_decoded(core, wire, &mut dec, peer, addr).await;
    while ended.is_ok() {
        if wire.is_closed() {
            ended = Err(closed_reason(core, wire));
            break;
        }
        if wire.serving.get() >= wire.serving_max {
            wire.serving_room().await;
            continue;
        }
        // Backpressure: the peer has not read its replies; it may send more once it has
        // (the heartbeat task closes the connection if it stays so past out_stall_timeout).
        if wire.reads_blocked() {
            wire.backlog_room().await;
            continue;
        }
        ended = match read_chunk(
            core,
            wire,
            &mut rd,
            &mut buf,
            &mut last_data,
            &mut drained,
            peer,
            addr,
        )
        .await
        {
            Ok(None) => continue,
            Ok(Some(0)) => Err(end_of_stream(core, &mut dec, peer, addr)),
            Ok(Some(n)) => feed(core, wire, &mut dec, &buf[..n], peer, addr).await,
            Err(r) => Err(r),
        };
    }
    let reason = ended.expect_err("the loop ends with a reason");
    net.stats.peers.borrow_mut().record_close(reason);
    wire.close();
    reason
}

/// Marks `wire` ready on socket `fd` and starts the connection's writer and heartbeat tasks.
fn start_conn_tasks(
    core: &Rc<Shard>,
    wire: &Rc<Outbound>,
    wr: ConnWriter,
    fd: RawFd,
    peer: NodeId,
    addr: SocketAddr,
) {
    let cfg = &core.net().cfg;
    wire.fd.set(Some(fd));
    *wire.detector.borrow_mut() = Some(FailureDetector::new(cfg.detector, Instant::now()));
    wire.ready.set(true);
    let (core2, wire2) = (core.clone(), wire.clone());
    core.sched
        .spawn(async move { writer(core2, wire2, wr).await });
    let (core2, wire2) = (core.clone(), wire.clone());
    let beat = cfg.detector.heartbeat_interval;
    let stall = cfg.out_stall_timeout;
    core.sched
        .spawn(async move { heartbeat(core2, wire2, beat, stall, peer, addr).await });
    wire.wake_writer();
}

/// Reads what the socket has: `Some(n)` bytes (0: the peer closed), or `None` after waiting
/// for readiness (or yielding, while the shard would spin anyway: a shard configured to spin
/// (`idle_spin_us`) that received bytes within that time retries `recv` from the task, with
/// no io_uring round trip).
///
/// `drained`: the previous read was short (it took everything the socket had). A shard that
/// would not spin then waits for readiness at once instead of asking with a `recv` that
/// would find the socket empty: one system call fewer per wake-up of a parked shard (the
/// readiness poll, level-triggered, completes at once if bytes arrived meanwhile). Not with
/// TLS, whose session may hold decrypted bytes the socket no longer shows.
#[allow(clippy::too_many_arguments)]
async fn read_chunk(
    core: &Rc<Shard>,
    wire: &Outbound,
    rd: &mut ConnReader,
    buf: &mut [u8],
    last_data: &mut Instant,
    drained: &mut bool,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<Option<usize>, CloseReason> {
    let spin = core.node.config.idle_spin;
    let spinning = !spin.is_zero() && core.now().duration_since(*last_data) < spin;
    let skip = std::mem::take(drained) && !spinning && !rd.is_tls();
    let got = if skip {
        Ok(None)
    } else {
        let got = rd.try_read(buf);
        if let Ok(read) = &got {
            core.net().stats.peers.borrow_mut().read(read.is_none());
        }
        got
    };
    match got {
        Ok(None) => {
            if spinning {
                crate::rt::yield_now().await;
            } else if let Err(e) = rd.readable().await {
                tracing::debug!(shard = core.id, peer, %addr, error = %e, "poll failed");
                return Err(CloseReason::Io);
            }
            Ok(None)
        }
        Ok(Some(n)) => {
            if rd.tls_pending() {
                // Records the session must answer (a key update): the writer sends them.
                wire.wake_writer();
            }
            *last_data = core.now();
            *drained = n < buf.len();
            if let Some(d) = wire.detector.borrow_mut().as_mut() {
                d.on_heard(Instant::now());
            }
            Ok(Some(n))
        }
        Err(e) => {
            if wire.is_closed() {
                Err(closed_reason(core, wire))
            } else if let StreamError::Tls(e) = &e {
                // A corrupt or forged record, or an alert from the peer: not an ordinary
                // network error.
                tracing::warn!(shard = core.id, peer, %addr, error = %e,
                    "TLS failure on an established connection; closing it");
                Err(CloseReason::BadFrame)
            } else {
                tracing::debug!(shard = core.id, peer, %addr, error = %e, "read failed");
                Err(CloseReason::Io)
            }
        }
    }
}

/// The peer closed its side: a clean end between frames, or an error inside one.
fn end_of_stream(
    core: &Shard,
    dec: &mut FrameDecoder,
    peer: NodeId,
    addr: SocketAddr,
) -> CloseReason {
    match dec.finish() {
        Ok(()) => CloseReason::PeerClosed,
        Err(e) => {
            tracing::warn!(shard = core.id, peer, %addr, error = %e,
                "connection ended inside a frame");
            CloseReason::from_frame_error(&e)
        }
    }
}

/// Feeds received bytes to the decoder and dispatches the frames they complete.
async fn feed(
    core: &Rc<Shard>,
    wire: &Rc<Outbound>,
    dec: &mut FrameDecoder,
    mut bytes: &[u8],
    peer: NodeId,
    addr: SocketAddr,
) -> Result<(), CloseReason> {
    while !bytes.is_empty() {
        match dec.feed(bytes) {
            Ok(took) => bytes = &bytes[took..],
            Err(e) => {
                tracing::warn!(shard = core.id, peer, %addr, error = %e,
                    "invalid frame; closing the connection");
                return Err(CloseReason::from_frame_error(&e));
            }
        }
        dispatch_decoded(core, wire, dec, peer, addr).await?;
    }
    Ok(())
}

/// Dispatches every complete frame in the decoder. Frames left in the decoder while the
/// reply backlog is full are dispatched once the peer has read enough (one read's worth of
/// requests at most is in the decoder).
async fn dispatch_decoded(
    core: &Rc<Shard>,
    wire: &Rc<Outbound>,
    dec: &mut FrameDecoder,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<(), CloseReason> {
    loop {
        match drain_frames(core, wire, dec, peer, addr)? {
            Drained::All => return Ok(()),
            Drained::Paused => {
                wire.backlog_room().await;
                if wire.is_closed() {
                    return Err(closed_reason(core, wire));
                }
            }
        }
    }
}

/// Why a connection closed from inside ended (heartbeat timeout, stalled peer, shutdown).
fn closed_reason(core: &Shard, wire: &Outbound) -> CloseReason {
    if !running(core) {
        CloseReason::Shutdown
    } else {
        wire.close_reason
            .get()
            .unwrap_or(CloseReason::HeartbeatTimeout)
    }
}

/// Whether [`drain_frames`] emptied the decoder.
enum Drained {
    All,
    /// Stopped because the connection's backlog is full; frames remain in the decoder.
    Paused,
}

/// Dispatches every complete frame in the decoder, or stops early while the connection's
/// backlog is at its bound (so that one read cannot queue replies without limit).
fn drain_frames(
    core: &Rc<Shard>,
    wire: &Rc<Outbound>,
    dec: &mut FrameDecoder,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<Drained, CloseReason> {
    let net = core.net();
    loop {
        if wire.reads_blocked() && !wire.is_closed() {
            return Ok(Drained::Paused);
        }
        let Some(frame) = dec.next_frame() else { break };
        net.stats.peers.borrow_mut().frame_in(frame.raw.len());
        let head = frame.header.head;
        match head.kind {
            FrameKind::Request | FrameKind::OneWay => {
                super::remote::dispatch(core, wire, &frame);
            }
            FrameKind::Response | FrameKind::ErrorReply => {
                super::remote::complete(core, wire, &frame, peer);
            }
            FrameKind::Heartbeat => wire.push_empty(head.reply(FrameKind::HeartbeatAck)),
            FrameKind::HeartbeatAck => {}
            FrameKind::Goodbye => return Err(CloseReason::Goodbye),
            kind => {
                tracing::warn!(shard = core.id, peer, %addr, ?kind,
                    "handshake frame after the handshake; closing the connection");
                return Err(CloseReason::BadFrame);
            }
        }
    }
    Ok(Drained::All)
}

/// Flushes the wire: takes everything queued, writes it with one call, repeats.
async fn writer(core: Rc<Shard>, wire: Rc<Outbound>, mut wr: ConnWriter) {
    let net = core.net();
    let mut spare = OutBuf::with_capacity(64 * 1024);
    loop {
        poll_fn(|cx| {
            if wire.is_closed()
                || (wire.ready.get() && (!wire.out.borrow().is_empty() || wr.tls_pending()))
            {
                Poll::Ready(())
            } else {
                *wire.writer.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if wire.is_closed() {
            break;
        }
        std::mem::swap(&mut *wire.out.borrow_mut(), &mut spare);
        wire.wake_room();
        let bytes = spare.len();
        wire.writing.set(bytes);
        let frames = wire.frames_queued.replace(0);
        wire.tells_writing.set(wire.tells_queued.replace(0));
        net.stats.peers.borrow_mut().frames_out(frames, bytes);
        if let Some(d) = wire.detector.borrow_mut().as_mut() {
            d.on_sent(Instant::now());
        }
        // Usually the socket takes it all at once; otherwise the rest goes through the
        // executor, which waits for room.
        let res = match wr.try_write(&mut spare) {
            Ok(true) => Ok(()),
            Ok(false) => {
                core.kick_io();
                let (res, back) = wr.write_all(spare).await;
                spare = back;
                res
            }
            Err(e) => Err(e),
        };
        spare.clear();
        wire.writing.set(0);
        wire.wake_room();
        if res.is_ok() {
            wire.tells_writing.set(0);
        }
        if let Err(e) = res {
            tracing::debug!(shard = core.id, error = %e, "write failed; closing the connection");
            wire.close();
            break;
        }
    }
}

/// Sends heartbeats when the connection is quiet, closes it when the peer is silent for
/// `dead_after`, and closes it when its outgoing bytes stay at or over `out_bytes_max` for
/// `stall` (a peer that does not read).
async fn heartbeat(
    core: Rc<Shard>,
    wire: Rc<Outbound>,
    every: Duration,
    stall: Duration,
    peer: NodeId,
    addr: SocketAddr,
) {
    let tick = (every / 2).max(Duration::from_millis(1));
    while !wire.is_closed() {
        crate::rt::sleep(tick).await;
        if wire.is_closed() || !running(&core) {
            break;
        }
        let now = Instant::now();
        if wire.stalled(now, stall) {
            tracing::warn!(shard = core.id, peer, %addr, backlog = wire.backlog(),
                out_bytes_max = wire.out_bytes_max, ?stall,
                "peer does not read what it was sent: closing the connection");
            wire.close_for(CloseReason::OutStalled);
            break;
        }
        let (due, transition) = {
            let mut d = wire.detector.borrow_mut();
            let Some(d) = d.as_mut() else { break };
            if wire.reads_blocked() {
                // Not reading is this node's choice (backpressure); the peer's bytes wait in
                // the socket. The stall bound above decides, not the failure detector.
                d.on_heard(now);
            }
            let t = d.tick(now);
            (d.heartbeat_due(now), t)
        };
        if let Some(t) = transition {
            match t.to {
                Liveness::Dead => {
                    tracing::warn!(shard = core.id, peer, %addr, silent_for = ?t.silent_for,
                        "peer silent for too long: declared dead, closing the connection");
                    wire.close_for(CloseReason::HeartbeatTimeout);
                    break;
                }
                Liveness::Suspect => tracing::info!(shard = core.id, peer, %addr,
                    silent_for = ?t.silent_for, "peer suspected"),
                Liveness::Alive => tracing::info!(shard = core.id, peer, %addr, "peer alive again"),
            }
        }
        if due {
            wire.push_empty(FrameHead {
                source_shard: core.id,
                ..FrameHead::new(FrameKind::Heartbeat)
            });
        }
    }
}

/// Closes every connection of the shard (at shutdown).
pub(crate) fn close_all(core: &Shard) {
    let Some(net) = &core.net else { return };
    for link in net.links.values() {
        if let Some(w) = link.wire.borrow().as_ref() {
            w.close();
        }
    }
    for w in net
        .accepted
        .borrow()
        .iter()
        .filter_map(std::rc::Weak::upgrade)
    {
        w.close();
    }
}
