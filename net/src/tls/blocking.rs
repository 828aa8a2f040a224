//! TLS over a blocking stream (the client's probe of a node, tools and tests).

use std::io::{self, Read, Write};

use super::session::{recv_from, PlainRead, TlsSession, TlsSessionError};

/// Why a [`TlsBlocking`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsIoError {
    /// The socket failed (or its read timeout passed).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// TLS failed (the message says which side is at fault).
    #[error(transparent)]
    Tls(#[from] TlsSessionError),
}

/// A [`TlsSession`] over a blocking stream `S` (a `TcpStream` with its own timeouts).
#[derive(Debug)]
pub struct TlsBlocking<S> {
    sess: TlsSession,
    io: S,
}

impl<S: Read + Write> TlsBlocking<S> {
    /// Wraps `io` (nothing is sent yet).
    pub fn new(sess: TlsSession, io: S) -> TlsBlocking<S> {
        TlsBlocking { sess, io }
    }

    /// Runs the TLS handshake to its end (on a client, the server's verdict on the client's
    /// certificate may still arrive with the first read after it).
    pub fn handshake(&mut self) -> Result<(), TlsIoError> {
        loop {
            self.flush()?;
            if !self.sess.is_handshaking() {
                return Ok(());
            }
            self.fill()?;
        }
    }

    /// Reads one socket read's worth of ciphertext and processes it.
    fn fill(&mut self) -> Result<(), TlsIoError> {
        recv_from(&mut self.sess, &mut self.io)?;
        match self.sess.process_received() {
            Ok(_) => Ok(()),
            Err(e) => {
                // Best effort: the alert tells the peer why.
                let _ = self.flush();
                Err(e.into())
            }
        }
    }

    /// Writes all pending ciphertext.
    fn flush(&mut self) -> io::Result<()> {
        while self.sess.wants_write() {
            self.sess.write_tls(&mut self.io)?;
        }
        self.io.flush()
    }

    /// Encrypts and writes all of `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), TlsIoError> {
        self.sess.write_plain(bytes)?;
        Ok(self.flush()?)
    }

    /// Reads plaintext into `buf` (non-empty); `Ok(0)` at the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsIoError> {
        loop {
            let r = self.sess.read_plain(buf);
            // Whatever processing queued (alerts, key updates) goes out now.
            let _ = self.flush();
            match r? {
                PlainRead::Data(n) => return Ok(n),
                PlainRead::Closed => return Ok(0),
                PlainRead::Empty => {
                    recv_from(&mut self.sess, &mut self.io)?;
                }
            }
        }
    }

    /// The session (e.g. for [`TlsSession::peer_certificate`]).
    pub fn session(&self) -> &TlsSession {
        &self.sess
    }

    /// The stream (e.g. to set its timeouts).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The stream, giving up the session.
    pub fn into_inner(self) -> S {
        self.io
    }

    /// Sends a `close_notify` alert (best effort): the peer reads the end of the stream.
    pub fn close(&mut self) {
        self.sess.send_close_notify();
        let _ = self.flush();
    }
}

/// A [`TlsBlocking`] as `std::io::Read` and `Write` (plaintext; a TLS failure is an
/// `InvalidData` error whose source is the [`TlsIoError`]), for code written against those
/// traits (the admin endpoint's HTTP server).
#[derive(Debug)]
pub struct TlsStream<S>(pub TlsBlocking<S>);

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(into_io)
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf).map_err(into_io)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn into_io(e: TlsIoError) -> io::Error {
    match e {
        TlsIoError::Io(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}
