//! The byte stream of one connection: plain TCP, or TLS 1.3 over TCP. Reads give plaintext
//! (the frame decoder's input) and writes take plaintext (the frame encoder's output); with
//! TLS a `quark_net::tls::TlsSession` sits between those buffers and the socket, shared by
//! the two halves (one shard thread: an `Rc<RefCell<_>>`, never borrowed across an await).

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use quark_net::tls::{PlainRead, TlsSession, TlsSessionError};
use quark_net::OutBuf;

use crate::rt::tcp::{TcpReader, TcpWriter};

/// Why a read or write on a connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Tls(#[from] TlsSessionError),
}

type Shared = Rc<RefCell<TlsSession>>;

/// The read half: plaintext out.
pub(crate) struct ConnReader {
    tcp: TcpReader,
    tls: Option<Shared>,
}

/// The write half: plaintext in.
pub(crate) struct ConnWriter {
    tcp: TcpWriter,
    tls: Option<Shared>,
}

/// Wraps a connection's halves; `tls`: the session to run over it (`None`: plaintext).
pub(crate) fn wrap(
    rd: TcpReader,
    wr: TcpWriter,
    tls: Option<TlsSession>,
) -> (ConnReader, ConnWriter) {
    let tls = tls.map(|s| Rc::new(RefCell::new(s)));
    (
        ConnReader {
            tcp: rd,
            tls: tls.clone(),
        },
        ConnWriter { tcp: wr, tls },
    )
}

impl ConnReader {
    /// True if this connection runs TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Plaintext now, without waiting: `Ok(Some(n))` (0: the stream ended), or `Ok(None)` if
    /// the socket has nothing. With TLS, a read may leave records for the writer to send (an
    /// alert, a key update): check [`ConnWriter::tls_pending`].
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, StreamError> {
        let Some(tls) = &self.tls else {
            return Ok(self.tcp.try_read(buf)?);
        };
        let mut s = tls.borrow_mut();
        loop {
            match s.read_plain(buf)? {
                PlainRead::Data(n) => return Ok(Some(n)),
                PlainRead::Closed => return Ok(Some(0)),
                PlainRead::Empty => {}
            }
            let space = s.recv_space();
            debug_assert!(!space.is_empty(), "read_plain drains the ciphertext buffer");
            match self.tcp.try_read(space)? {
                None => return Ok(None),
                Some(n) => s.received(n),
            }
        }
    }

    /// True if the TLS session has records to send (the writer's to flush).
    pub(crate) fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.borrow().wants_write())
    }

    /// Waits until the socket is readable.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.tcp.readable().await
    }

    /// Reads plaintext into `buf`, waiting for the socket; `Ok(0)` at the end of the stream.
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        loop {
            if let Some(n) = self.try_read(buf)? {
                return Ok(n);
            }
            self.readable().await?;
        }
    }

    /// One socket read of ciphertext during the TLS handshake, processed.
    async fn fill(&mut self) -> Result<(), StreamError> {
        let tls = self.tls.clone().expect("fill runs on TLS connections only");
        loop {
            let got = {
                let mut s = tls.borrow_mut();
                match self.tcp.try_read(s.recv_space())? {
                    None => false,
                    Some(n) => {
                        s.received(n);
                        s.process_received()?;
                        true
                    }
                }
            };
            if got {
                return Ok(());
            }
            self.readable().await?;
        }
    }
}

impl ConnWriter {
    /// True if the TLS session has records to send that no flush of frames carried yet.
    pub(crate) fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.borrow().wants_write())
    }

    /// Writes `out` (all of it is taken: encrypted first with TLS) and what the socket takes
    /// now, without waiting. `Ok(true)`: nothing is left to send.
    pub(crate) fn try_write(&mut self, out: &mut OutBuf) -> Result<bool, StreamError> {
        let Some(tls) = &self.tls else {
            return Ok(self.tcp.try_write(out)?);
        };
        let mut s = tls.borrow_mut();
        if !out.is_empty() {
            s.write_plain(out.pending())?;
            out.clear();
        }
        match s.write_tls(&mut self.tcp.send_now()) {
            Ok(_) => Ok(!s.wants_write()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes all of `out`, waiting for room in the socket, and gives the buffer back
    /// (consumed).
    pub(crate) async fn write_all(&mut self, mut out: OutBuf) -> (Result<(), StreamError>, OutBuf) {
        loop {
            match self.try_write(&mut out) {
                Ok(true) => return (Ok(()), out),
                Ok(false) => {
                    if let Err(e) = self.tcp.writable().await {
                        return (Err(e.into()), out);
                    }
                }
                Err(e) => return (Err(e), out),
            }
        }
    }

    /// Sends what the TLS session has queued (handshake records, an alert).
    pub(crate) async fn flush_tls(&mut self) -> Result<(), StreamError> {
        let (res, _) = self.write_all(OutBuf::new()).await;
        res
    }
}

/// Runs the TLS handshake of a fresh connection to its end (nothing to do without TLS). On a
/// failure, the alert that tells the peer why is sent (best effort) before returning.
pub(crate) async fn tls_handshake(
    rd: &mut ConnReader,
    wr: &mut ConnWriter,
) -> Result<(), StreamError> {
    let Some(tls) = rd.tls.clone() else {
        return Ok(());
    };
    loop {
        wr.flush_tls().await?;
        if !tls.borrow().is_handshaking() {
            return Ok(());
        }
        if let Err(e) = rd.fill().await {
            let _ = crate::rt::tcp::timeout(std::time::Duration::from_millis(100), wr.flush_tls())
                .await;
            return Err(e);
        }
    }
}
