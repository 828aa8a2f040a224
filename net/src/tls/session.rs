//! One connection's TLS state, sans-IO: the I/O layer puts received ciphertext in
//! ([`TlsSession::recv_space`] / [`TlsSession::received`]), takes plaintext out
//! ([`TlsSession::read_plain`]), puts plaintext in ([`TlsSession::write_plain`]) and writes the
//! ciphertext out ([`TlsSession::write_tls`]) whenever [`TlsSession::wants_write`].

use std::io::{self, Read, Write};

use rustls::{AlertDescription, CertificateError};

use crate::frame::MAGIC;

/// Bytes of ciphertext one socket read may bring in (as for plaintext connections).
const RECV_BYTES: usize = 64 * 1024;

/// What [`TlsSession::read_plain`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainRead {
    /// This many plaintext bytes were copied out.
    Data(usize),
    /// No plaintext now: read more ciphertext from the socket.
    Empty,
    /// The peer closed the TLS stream (close_notify, or end of the socket after
    /// [`TlsSession::received`] with 0).
    Closed,
}

/// Why a TLS session failed. The messages say which side is at fault and what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSessionError {
    /// The session could not be created.
    #[error("cannot start a TLS session")]
    Setup(#[source] rustls::Error),
    /// The peer sent a plaintext Quark frame where a TLS record was expected.
    #[error(
        "the peer speaks plaintext (it sent a Quark frame, not TLS): this side requires TLS; configure [cluster.tls] on the peer"
    )]
    PlaintextPeer,
    /// The peer closed the connection before the TLS handshake completed.
    #[error(
        "the peer closed the connection during the TLS handshake (a node without TLS closes TLS peers: is [cluster.tls] configured on both sides?)"
    )]
    ClosedInHandshake,
    /// The peer presented no certificate.
    #[error(
        "the peer presented no certificate (mutual TLS: both sides need tls.cert and tls.key)"
    )]
    NoPeerCertificate,
    /// The peer's certificate does not verify against this side's CA (or names another host).
    #[error("the peer's certificate is refused: {verdict}{}", cert_hint(verdict))]
    PeerCertificate {
        /// rustls's verdict (`InvalidCertificate(..)`).
        verdict: rustls::Error,
    },
    /// The peer refused the handshake (it sent a fatal alert).
    #[error("the peer refused the TLS handshake with alert {alert:?}{}", alert_hint(*alert))]
    AlertReceived {
        /// The alert.
        alert: AlertDescription,
    },
    /// Any other TLS failure (corrupt record, decryption failure, protocol violation).
    #[error("TLS failure")]
    Protocol(#[source] rustls::Error),
}

fn cert_hint(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (not signed by the CA in this side's tls.ca)"
        }
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
            " (revoked: its serial number is in a certificate revocation list of this side's tls.crls)"
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            " (its subject alternative names must include the dialed IP address, or tls.server_name)"
        }
        _ => "",
    }
}

fn alert_hint(a: AlertDescription) -> &'static str {
    match a {
        AlertDescription::CertificateRequired => " (this side presented no certificate)",
        AlertDescription::UnknownCA | AlertDescription::BadCertificate => {
            " (the peer does not trust this side's certificate: signed by another CA?)"
        }
        AlertDescription::CertificateExpired => " (this side's certificate has expired)",
        AlertDescription::CertificateRevoked => {
            " (this side's certificate is revoked: the peer's revocation list names it)"
        }
        AlertDescription::DecodeError | AlertDescription::UnexpectedMessage => {
            " (the peer could not read what this side sent: plaintext against TLS?)"
        }
        _ => "",
    }
}

impl TlsSessionError {
    fn classify(e: rustls::Error) -> TlsSessionError {
        match e {
            rustls::Error::AlertReceived(alert) => TlsSessionError::AlertReceived { alert },
            rustls::Error::NoCertificatesPresented => TlsSessionError::NoPeerCertificate,
            e @ rustls::Error::InvalidCertificate(_) => {
                TlsSessionError::PeerCertificate { verdict: e }
            }
            e => TlsSessionError::Protocol(e),
        }
    }
}

/// True if `bytes` start like a TLS record (handshake or alert, TLS 1.0–1.3 record version):
/// what a plaintext side sees when its peer speaks TLS.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, 0x01..=0x04, ..])
}

/// One connection's TLS session (see the module docs).
pub struct TlsSession {
    conn: rustls::Connection,
    /// Received ciphertext not yet given to rustls: `inbuf[start..end]`.
    inbuf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The first bytes ever received (to recognize a plaintext peer), and how many.
    first: [u8; 2],
    first_len: usize,
    eof: bool,
    /// An error met after plaintext was returned (reported by the next read).
    failed: Option<TlsSessionError>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field(
                "server",
                &matches!(self.conn, rustls::Connection::Server(_)),
            )
            .field("handshaking", &self.conn.is_handshaking())
            .finish()
    }
}

impl TlsSession {
    pub(crate) fn new(mut conn: rustls::Connection) -> TlsSession {
        // The caller bounds what it queues (the connection's out_bytes_max); rustls must take
        // all of it so that a flush is one write.
        conn.set_buffer_limit(None);
        TlsSession {
            conn,
            inbuf: vec![0u8; RECV_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            first: [0; 2],
            first_len: 0,
            eof: false,
            failed: None,
        }
    }

    /// True until the TLS handshake completed (on the client side: until its last flight is
    /// queued; the server's verdict on the client's certificate then arrives as an alert).
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// True if ciphertext waits to be written ([`write_tls`](Self::write_tls)).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Where to receive ciphertext: a socket read fills a prefix of this, then
    /// [`received`](Self::received) tells how much. Empty while earlier ciphertext is still
    /// to be processed: call [`read_plain`](Self::read_plain) first.
    pub fn recv_space(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.inbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.inbuf[self.end..]
    }

    /// `n` bytes were received into [`recv_space`](Self::recv_space); 0: the socket reached
    /// its end.
    pub fn received(&mut self, n: usize) {
        if n == 0 {
            self.eof = true;
            return;
        }
        let at = self.end;
        self.end += n;
        for &b in &self.inbuf[at..self.end] {
            if self.first_len == self.first.len() {
                break;
            }
            self.first[self.first_len] = b;
            self.first_len += 1;
        }
    }

    /// Moves plaintext into `buf` (non-empty), processing received ciphertext as needed, until
    /// `buf` is full or every received byte is processed. [`PlainRead::Empty`]: read the
    /// socket. After an error the session is dead; write what
    /// [`wants_write`](Self::wants_write) (an alert telling the peer why), then close. An error
    /// met after some plaintext was copied is returned by the next call.
    pub fn read_plain(&mut self, buf: &mut [u8]) -> Result<PlainRead, TlsSessionError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut got = 0;
        loop {
            if got == buf.len() {
                return Ok(PlainRead::Data(got));
            }
            match self.conn.reader().read(&mut buf[got..]) {
                Ok(0) => return Ok(Self::or(got, PlainRead::Closed)),
                Ok(n) => {
                    got += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket ended without close_notify: the end of the stream all the same
                // (Quark frames are self-delimiting; a cut frame is the decoder's to report).
                Err(_) => return Ok(Self::or(got, PlainRead::Closed)),
            }
            if self.start == self.end {
                if got > 0 {
                    return Ok(PlainRead::Data(got));
                }
                if self.eof {
                    if self.conn.is_handshaking() {
                        return Err(TlsSessionError::ClosedInHandshake);
                    }
                    return Ok(PlainRead::Closed);
                }
                return Ok(PlainRead::Empty);
            }
            if let Err(e) = self.pump() {
                if got == 0 {
                    return Err(e);
                }
                self.failed = Some(e);
                return Ok(PlainRead::Data(got));
            }
        }
    }

    /// `Data(got)` if something was copied, else `other`.
    fn or(got: usize, other: PlainRead) -> PlainRead {
        if got > 0 {
            PlainRead::Data(got)
        } else {
            other
        }
    }

    /// Gives received ciphertext to rustls and processes it, without taking plaintext out
    /// (during the handshake). At the end of the socket during the handshake:
    /// [`TlsSessionError::ClosedInHandshake`].
    pub fn process_received(&mut self) -> Result<(), TlsSessionError> {
        while self.start < self.end {
            if !self.pump()? {
                break;
            }
        }
        if self.eof && self.conn.is_handshaking() {
            return Err(TlsSessionError::ClosedInHandshake);
        }
        Ok(())
    }

    /// One `read_tls` from the received ciphertext and the processing of what it completed.
    /// `Ok(false)`: rustls took nothing (its plaintext buffer is full).
    fn pump(&mut self) -> Result<bool, TlsSessionError> {
        let mut input = &self.inbuf[self.start..self.end];
        let before = input.len();
        // Only "buffer full" can fail a read from a slice: nothing was taken then.
        let _ = self.conn.read_tls(&mut input);
        let took = before - input.len();
        self.start += took;
        if let Err(e) = self.conn.process_new_packets() {
            if self.first_len == 2 && self.first == MAGIC {
                return Err(TlsSessionError::PlaintextPeer);
            }
            return Err(TlsSessionError::classify(e));
        }
        Ok(took > 0)
    }

    /// Encrypts `bytes` (all of them; before the handshake completed they wait in the session
    /// and go out after it).
    pub fn write_plain(&mut self, bytes: &[u8]) -> Result<(), TlsSessionError> {
        self.conn
            .writer()
            .write_all(bytes)
            .map_err(|e| TlsSessionError::Protocol(rustls::Error::General(e.to_string())))
    }

    /// Writes pending ciphertext to `wr` (a socket: `WouldBlock` leaves the rest pending).
    /// Returns the bytes written by this call.
    pub fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize> {
        let mut total = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(wr)? {
                0 => break,
                n => total += n,
            }
        }
        Ok(total)
    }

    /// Queues a close_notify alert (write it with [`write_tls`](Self::write_tls)).
    pub fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// The peer's certificate (leaf, DER), once the handshake completed.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref())
    }
}

/// Reads ciphertext from `rd` into the session: one read. `Ok(0)`: end of stream.
pub(super) fn recv_from(sess: &mut TlsSession, rd: &mut dyn Read) -> io::Result<usize> {
    let n = rd.read(sess.recv_space())?;
    sess.received(n);
    Ok(n)
}
