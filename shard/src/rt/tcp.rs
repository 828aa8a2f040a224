//! TCP glue over the executor (monoio, io_uring): what the cluster transport needs and nothing
//! more. Connections are split into a read half and a write half so that one shard task can
//! wait for bytes while another writes a batch. Bytes move with direct non-blocking
//! `recv`/`send` system calls; the executor is used only to wait for readiness (and for
//! connect/accept), see [`TcpReader::try_read`] and [`TcpWriter::try_write`]. TLS, when configured, sits
//! above these halves (`crate::net::stream`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use quark_net::OutBuf;

/// The read half of a connection.
pub(crate) struct TcpReader {
    stream: Rc<monoio::net::TcpStream>,
    fd: RawFd,
}

/// The write half of a connection.
pub(crate) struct TcpWriter {
    stream: Rc<monoio::net::TcpStream>,
    fd: RawFd,
}

/// A listening socket registered with the shard's executor.
pub(crate) struct Listener(monoio::net::TcpListener);

fn split(stream: monoio::net::TcpStream) -> io::Result<(TcpReader, TcpWriter, RawFd)> {
    stream.set_nodelay(true)?;
    let fd = stream.as_raw_fd();
    let stream = Rc::new(stream);
    Ok((
        TcpReader {
            stream: stream.clone(),
            fd,
        },
        TcpWriter { stream, fd },
        fd,
    ))
}

/// Connects to `addr` within `timeout`; TCP_NODELAY is set (frames are batched by the caller).
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<(TcpReader, TcpWriter, RawFd)> {
    match monoio::time::timeout(timeout, monoio::net::TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => split(s),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {timeout:?}"),
        )),
    }
}

impl Listener {
    /// Registers a bound std listener with the calling shard's executor.
    pub(crate) fn from_std(l: std::net::TcpListener) -> io::Result<Listener> {
        l.set_nonblocking(true)?;
        Ok(Listener(monoio::net::TcpListener::from_std(l)?))
    }

    /// The next incoming connection.
    pub(crate) async fn accept(&self) -> io::Result<(TcpReader, TcpWriter, RawFd, SocketAddr)> {
        let (s, addr) = self.0.accept().await?;
        let (r, w, fd) = split(s)?;
        Ok((r, w, fd, addr))
    }
}

impl TcpReader {
    /// One non-blocking `recv` into `buf`: `Ok(Some(n))` (0 at end of stream), or `Ok(None)`
    /// if the socket has nothing now.
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: `buf` is a valid, exclusively borrowed buffer for the call; the
            // descriptor belongs to this live connection.
            let n = unsafe {
                libc::recv(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// Waits until the socket is readable (an io_uring poll; the epoll driver's readiness).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.stream.readable(false).await
    }
}

impl TcpWriter {
    /// Writes what the socket takes now, without waiting: one non-blocking `send` system call
    /// (repeated only while the kernel takes everything offered and more is left). Returns
    /// `Ok(true)` if `out` is empty afterwards.
    ///
    /// Why not an io_uring write: a write to a TCP socket with room completes at once, and an
    /// io_uring write would then cost a completion (and a wake-up of a parked shard) on top of
    /// the submission; a direct send costs one system call and nothing more.
    pub(crate) fn try_write(&mut self, out: &mut OutBuf) -> io::Result<bool> {
        while !out.is_empty() {
            let (ptr, len) = (out.pending().as_ptr(), out.len());
            // SAFETY: `ptr..ptr+len` is `out.pending()`, valid and initialized, and `out` is not
            // touched during the call; the descriptor belongs to this live connection.
            let n = unsafe {
                libc::send(
                    self.fd,
                    ptr.cast(),
                    len,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(false),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            let n = n as usize;
            out.consume(n);
            if n < len {
                return Ok(out.is_empty());
            }
        }
        Ok(true)
    }
}

/// A non-blocking `io::Write` over a connection's write half: `WouldBlock` when the socket is
/// full (what a TLS session writes its records through, many records per `sendmsg`).
pub(crate) struct SendNow<'a>(&'a TcpWriter);

impl io::Write for SendNow<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        loop {
            // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; the slices are valid
            // and unchanged for the call; the descriptor belongs to this live connection.
            let n = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
                libc::sendmsg(self.0.fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TcpWriter {
    /// The non-blocking writer TLS records go through.
    pub(crate) fn send_now(&self) -> SendNow<'_> {
        SendNow(self)
    }

    /// Waits until the socket has room (an io_uring poll).
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.stream.writable(false).await
    }
}

/// Shuts a connection down in both directions, so that its pending read ends (used when the
/// failure detector declares the peer dead, and at shutdown).
pub(crate) fn shutdown(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor owned by a live connection half; an error (the
    // socket is already closed) is harmless.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Runs `fut` for at most `d`; `None` if the time ran out first.
pub(crate) async fn timeout<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    monoio::time::timeout(d, fut).await.ok()
}
