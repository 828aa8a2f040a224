//! [`HandshakeDriver`]: the one loop that runs a handshake over any transport. It owns the
//! handshake machine ([`Initiator`] or [`Acceptor`]), the frame decoder and the outgoing
//! buffer; the caller only moves bytes: it writes [`HandshakeDriver::out`] to the peer, feeds
//! what it reads to [`HandshakeDriver::on_bytes`], and calls [`HandshakeDriver::on_timeout`]
//! when its deadline passes. The engine's connections (async, on a shard) and the blocking
//! `quark::probe` both drive their handshakes through it.

use crate::decoder::FrameDecoder;
use crate::frame::{FrameError, OutBuf};
use crate::handshake::{
    Acceptor, HandshakeError, HandshakeStatus, Initiator, PeerInfo, HANDSHAKE_FRAME_BYTES_MAX,
};

/// Why a handshake driven by a [`HandshakeDriver`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    /// The handshake refused the peer or was refused (the source says why; a `Reject` for the
    /// peer may be in [`HandshakeDriver::out`]).
    #[error("handshake refused")]
    Handshake(#[source] HandshakeError),
    /// The peer sent bytes that are not a valid frame.
    #[error("invalid frame during the handshake")]
    Frame(#[source] FrameError),
    /// More bytes followed the last handshake frame than the connection's frame bound holds.
    #[error("{bytes} bytes after the handshake do not fit the connection's frame bound")]
    Overflow {
        /// The bytes that did not fit.
        bytes: usize,
    },
}

/// The handshake machine a [`HandshakeDriver`] runs.
enum Side {
    Dial(Initiator),
    Accept(Acceptor),
}

/// Runs one handshake, sans-IO (see the module docs).
pub struct HandshakeDriver {
    side: Side,
    dec: FrameDecoder,
    out: OutBuf,
    frame_bytes_max: u32,
}

impl HandshakeDriver {
    /// The dialing side: starts `init` (its first frame is then in [`out`](Self::out)).
    /// `frame_bytes_max` is the connection's frame bound once the peer is authenticated.
    pub fn dial(mut init: Initiator, frame_bytes_max: u32) -> Result<Self, DriveError> {
        let mut out = OutBuf::new();
        init.start(&mut out).map_err(DriveError::Handshake)?;
        Ok(Self::new(Side::Dial(init), out, frame_bytes_max))
    }

    /// The accepting side: it waits for the dialer's first frame.
    pub fn accept(acceptor: Acceptor, frame_bytes_max: u32) -> Self {
        Self::new(Side::Accept(acceptor), OutBuf::new(), frame_bytes_max)
    }

    fn new(side: Side, out: OutBuf, frame_bytes_max: u32) -> Self {
        HandshakeDriver {
            side,
            dec: FrameDecoder::new(HANDSHAKE_FRAME_BYTES_MAX),
            out,
            frame_bytes_max,
        }
    }

    /// Bytes to send to the peer now: write them all, then clear the buffer (also after an
    /// error or a timeout: a `Reject` tells the peer why).
    pub fn out(&mut self) -> &mut OutBuf {
        &mut self.out
    }

    /// Feeds bytes read from the peer. `Ok(Some(peer))` once the handshake completed: bytes of
    /// `input` after its last frame stay in the decoder, which
    /// [`into_decoder`](Self::into_decoder) hands over with the connection's frame bound.
    /// `Ok(None)`: read on.
    pub fn on_bytes(&mut self, input: &[u8]) -> Result<Option<PeerInfo>, DriveError> {
        let mut off = 0;
        while off < input.len() {
            let took = self.dec.feed(&input[off..]).map_err(DriveError::Frame)?;
            off += took;
            while let Some(frame) = self.dec.next_frame() {
                let status = match &mut self.side {
                    Side::Dial(i) => i.on_frame(&frame, &mut self.out),
                    Side::Accept(a) => a.on_frame(&frame, &mut self.out),
                };
                match status.map_err(DriveError::Handshake)? {
                    HandshakeStatus::Continue => {}
                    HandshakeStatus::Established(peer) => {
                        self.take_rest(&input[off..])?;
                        return Ok(Some(peer));
                    }
                }
            }
            if took == 0 {
                break;
            }
        }
        Ok(None)
    }

    /// After the handshake: raises the decoder to the connection's bound and keeps `rest`.
    fn take_rest(&mut self, mut rest: &[u8]) -> Result<(), DriveError> {
        self.dec.raise_frame_bytes_max(self.frame_bytes_max);
        while !rest.is_empty() {
            let took = self.dec.feed(rest).map_err(DriveError::Frame)?;
            if took == 0 {
                return Err(DriveError::Overflow { bytes: rest.len() });
            }
            rest = &rest[took..];
        }
        Ok(())
    }

    /// The deadline passed: the error to report (a `Reject` for the peer is in
    /// [`out`](Self::out)).
    pub fn on_timeout(&mut self) -> HandshakeError {
        match &mut self.side {
            Side::Dial(i) => i.on_timeout(&mut self.out),
            Side::Accept(a) => a.on_timeout(&mut self.out),
        }
    }

    /// The decoder, at the connection's frame bound, holding any frames that followed the
    /// handshake.
    pub fn into_decoder(mut self) -> FrameDecoder {
        self.dec.raise_frame_bytes_max(self.frame_bytes_max);
        self.dec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameHead, FrameKind};
    use crate::handshake::{HandshakeConfig, NONCE_BYTES};
    use crate::ClusterSecret;

    fn cfg(node: u64, secret: u8) -> HandshakeConfig {
        let s = ClusterSecret::new(vec![secret; 32], "test").expect("a 32-byte secret");
        HandshakeConfig::member("c", node, Some(s))
    }

    /// Moves `from`'s output to `to`, `chunk` bytes at a time; returns `to`'s first outcome.
    fn pass(
        from: &mut HandshakeDriver,
        to: &mut HandshakeDriver,
        chunk: usize,
    ) -> Result<Option<PeerInfo>, DriveError> {
        let bytes = from.out().pending().to_vec();
        from.out().clear();
        for c in bytes.chunks(chunk.max(1)) {
            if let Some(peer) = to.on_bytes(c)? {
                return Ok(Some(peer));
            }
        }
        Ok(None)
    }

    /// Runs both sides to the end; returns (dialer's peer, acceptor's peer).
    fn run(a: u8, b: u8, chunk: usize) -> (Result<PeerInfo, String>, Result<PeerInfo, String>) {
        let init = Initiator::new(cfg(1, a), [1; NONCE_BYTES], Some(2));
        let mut dial = HandshakeDriver::dial(init, 1 << 20).expect("start");
        let mut acc = HandshakeDriver::accept(Acceptor::new(cfg(2, b), [2; NONCE_BYTES]), 1 << 20);
        let (mut d, mut x) = (None, None);
        for _ in 0..8 {
            if x.is_none() {
                match pass(&mut dial, &mut acc, chunk) {
                    Ok(Some(p)) => x = Some(Ok(p)),
                    Ok(None) => {}
                    Err(e) => x = Some(Err(crate_chain(&e))),
                }
            }
            if d.is_none() {
                match pass(&mut acc, &mut dial, chunk) {
                    Ok(Some(p)) => d = Some(Ok(p)),
                    Ok(None) => {}
                    Err(e) => d = Some(Err(crate_chain(&e))),
                }
            }
        }
        (d.expect("dialer finished"), x.expect("acceptor finished"))
    }

    fn crate_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut next = e.source();
        while let Some(c) = next {
            s.push_str(&format!(": {c}"));
            next = c.source();
        }
        s
    }

    #[test]
    fn completes_whatever_the_chunking() {
        for chunk in [1, 3, 7, 64, 4096] {
            let (d, a) = run(7, 7, chunk);
            assert_eq!(d.expect("dialer").node_id, 2, "chunk {chunk}");
            assert_eq!(a.expect("acceptor").node_id, 1, "chunk {chunk}");
        }
    }

    #[test]
    fn a_wrong_secret_fails_with_the_cause_as_source() {
        let (d, a) = run(7, 8, 4096);
        let (d, a) = (
            d.expect_err("dialer refused"),
            a.expect_err("acceptor refused"),
        );
        assert!(d.starts_with("handshake refused: "), "{d}");
        assert!(a.starts_with("handshake refused: "), "{a}");
    }

    #[test]
    fn bytes_after_the_handshake_stay_in_the_decoder() {
        let init = Initiator::new(cfg(1, 7), [1; NONCE_BYTES], Some(2));
        let mut dial = HandshakeDriver::dial(init, 1 << 20).expect("start");
        let mut acc = HandshakeDriver::accept(Acceptor::new(cfg(2, 7), [2; NONCE_BYTES]), 1 << 20);
        assert!(pass(&mut dial, &mut acc, 4096).expect("hello").is_none());
        assert!(pass(&mut acc, &mut dial, 4096)
            .expect("challenge")
            .is_none());
        // The dialer's last handshake frame and 200 heartbeats in one read: more than the
        // handshake's frame bound holds, so part of them is taken after the handshake.
        let mut bytes = dial.out().pending().to_vec();
        dial.out().clear();
        let mut beats = OutBuf::new();
        for _ in 0..200 {
            beats
                .push_empty(FrameHead::new(FrameKind::Heartbeat))
                .expect("a heartbeat");
        }
        bytes.extend_from_slice(beats.pending());
        assert!(bytes.len() > HANDSHAKE_FRAME_BYTES_MAX as usize);
        let peer = acc.on_bytes(&bytes).expect("established");
        assert_eq!(peer.map(|p| p.node_id), Some(1));
        let mut dec = acc.into_decoder();
        let mut n = 0;
        while let Some(frame) = dec.next_frame() {
            assert_eq!(frame.header.head.kind, FrameKind::Heartbeat);
            n += 1;
        }
        assert_eq!(n, 200, "every frame after the handshake is kept");
    }

    #[test]
    fn a_timeout_reports_the_stage() {
        let init = Initiator::new(cfg(1, 7), [1; NONCE_BYTES], Some(2));
        let mut dial = HandshakeDriver::dial(init, 1 << 20).expect("start");
        dial.out().clear();
        let e = dial.on_timeout();
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(!dial.out().is_empty(), "a Reject tells the peer why");
    }
}
