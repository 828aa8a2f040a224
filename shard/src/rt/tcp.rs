//! TCP glue over the executor (monoio, io_uring): what the cluster transport needs and nothing
//! more. Connections are split into a read half and a write half so that one shard task can
//! wait for bytes while another writes a batch.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use quark_net::OutBuf;

/// The read half of a connection.
pub(crate) struct TcpReader(monoio::io::OwnedReadHalf<monoio::net::TcpStream>);
/// The write half of a connection.
pub(crate) struct TcpWriter(monoio::io::OwnedWriteHalf<monoio::net::TcpStream>);

/// A listening socket registered with the shard's executor.
pub(crate) struct Listener(monoio::net::TcpListener);

/// An [`OutBuf`] handed to the kernel for one write.
struct WriteBuf(OutBuf);

// SAFETY: `read_ptr`/`bytes_init` describe `OutBuf::pending`, which is not mutated while the
// buffer is owned by the write operation (monoio keeps it in place until the op completes and
// only then gives it back), so the pointer stays valid and the bytes initialized.
unsafe impl monoio::buf::IoBuf for WriteBuf {
    fn read_ptr(&self) -> *const u8 {
        self.0.pending().as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.0.len()
    }
}

fn split(stream: monoio::net::TcpStream) -> io::Result<(TcpReader, TcpWriter, RawFd)> {
    stream.set_nodelay(true)?;
    let fd = stream.as_raw_fd();
    let (r, w) = stream.into_split();
    Ok((TcpReader(r), TcpWriter(w), fd))
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
    /// Reads into `buf` (its whole length is offered); `Ok(0)` at end of stream.
    pub(crate) async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let mut buf = buf;
        // SAFETY: the vector's allocation is initialized up to its capacity by the caller
        // (it is created with `vec![0; n]` and never shrunk), so exposing it as length
        // `capacity` for the read is sound.
        let cap = buf.capacity();
        unsafe { buf.set_len(0) };
        let (res, mut buf) = self.0.read(buf).await;
        unsafe { buf.set_len(cap) };
        (res, buf)
    }
}

impl TcpWriter {
    /// Writes every pending byte of `out` (one write call unless the kernel takes less) and
    /// gives the buffer back, consumed.
    pub(crate) async fn write_all(&mut self, out: OutBuf) -> (io::Result<()>, OutBuf) {
        let (res, buf) = self.0.write_all(WriteBuf(out)).await;
        let mut out = buf.0;
        match res {
            Ok(n) => {
                out.consume(n.min(out.len()));
                (Ok(()), out)
            }
            Err(e) => (Err(e), out),
        }
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
