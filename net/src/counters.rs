//! Per-peer counters: plain data owned by one shard, merged on read.

use crate::frame::FrameError;

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed its side on a frame boundary.
    PeerClosed,
    /// The peer sent Goodbye (or we did).
    Goodbye,
    /// A frame exceeded `frame_bytes_max`.
    Oversized,
    /// The stream ended inside a frame.
    Truncated,
    /// Any other invalid header (magic, version, kind, flags, lengths, alignment).
    BadFrame,
    /// A control payload failed validation.
    BadPayload,
    /// The handshake failed (either side's cause).
    HandshakeFailed,
    /// The failure detector declared the peer dead.
    HeartbeatTimeout,
    /// A socket error.
    Io,
    /// This node is shutting down.
    Shutdown,
    /// The connection's outgoing bytes stayed over `out_bytes_max` for longer than
    /// `out_stall_timeout`: the peer does not read what it asked for.
    OutStalled,
}

impl CloseReason {
    /// Every reason, in counter order.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::PeerClosed,
        CloseReason::Goodbye,
        CloseReason::Oversized,
        CloseReason::Truncated,
        CloseReason::BadFrame,
        CloseReason::BadPayload,
        CloseReason::HandshakeFailed,
        CloseReason::HeartbeatTimeout,
        CloseReason::Io,
        CloseReason::Shutdown,
        CloseReason::OutStalled,
    ];

    /// The reason to count for a decoder error.
    pub fn from_frame_error(e: &FrameError) -> CloseReason {
        match e {
            FrameError::Oversized { .. } => CloseReason::Oversized,
            FrameError::Truncated { .. } => CloseReason::Truncated,
            _ => CloseReason::BadFrame,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters for one peer (or, merged, for a node). Plain `u64`s: one shard owns each instance
/// and a reader merges them with [`merge`](Self::merge); nothing here is atomic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received (frame bytes, padding included).
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Handshakes completed.
    pub handshakes_ok: u64,
    /// Connections opened (dialed or accepted).
    pub connects: u64,
    /// Reads of an established connection's socket without waiting (a non-blocking `recv`,
    /// through the TLS session with TLS).
    pub reads: u64,
    /// Of `reads`, those that found nothing to read (a system call spent for nothing: a
    /// parked shard should not make them; a spinning shard polls with them).
    pub reads_empty: u64,
    closed: [u64; CloseReason::ALL.len()],
}

impl PeerCounters {
    /// Counts one received frame of `bytes`.
    pub fn frame_in(&mut self, bytes: usize) {
        self.frames_in += 1;
        self.bytes_in += bytes as u64;
    }

    /// Counts `frames` frames totalling `bytes` sent.
    pub fn frames_out(&mut self, frames: u64, bytes: usize) {
        self.frames_out += frames;
        self.bytes_out += bytes as u64;
    }

    /// Counts one non-blocking read of a socket; `empty`: it found nothing.
    pub fn read(&mut self, empty: bool) {
        self.reads += 1;
        self.reads_empty += u64::from(empty);
    }

    /// Counts a closed connection.
    pub fn record_close(&mut self, reason: CloseReason) {
        self.closed[reason.index()] += 1;
    }

    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// Connections closed for any reason.
    pub fn closed_total(&self) -> u64 {
        self.closed.iter().sum()
    }

    /// Adds `other` into `self` (to report node totals from per-shard counters).
    pub fn merge(&mut self, other: &PeerCounters) {
        self.frames_in += other.frames_in;
        self.frames_out += other.frames_out;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.handshakes_ok += other.handshakes_ok;
        self.connects += other.connects;
        self.reads += other.reads;
        self.reads_empty += other.reads_empty;
        for (a, b) in self.closed.iter_mut().zip(other.closed.iter()) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_counted_separately_and_merge() {
        let mut a = PeerCounters::default();
        a.record_close(CloseReason::from_frame_error(&FrameError::Oversized {
            len: 9,
            max: 1,
        }));
        a.record_close(CloseReason::from_frame_error(&FrameError::UnknownKind(7)));
        a.record_close(CloseReason::from_frame_error(&FrameError::UnknownKind(8)));
        a.frame_in(64);
        a.frames_out(3, 96);
        assert_eq!(a.closed(CloseReason::Oversized), 1);
        assert_eq!(a.closed(CloseReason::BadFrame), 2);
        assert_eq!(a.closed(CloseReason::Truncated), 0);
        let mut b = PeerCounters::default();
        b.record_close(CloseReason::Truncated);
        b.frame_in(32);
        b.merge(&a);
        assert_eq!(b.closed_total(), 4);
        assert_eq!(
            (b.frames_in, b.bytes_in, b.frames_out, b.bytes_out),
            (2, 96, 3, 96)
        );
    }

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
